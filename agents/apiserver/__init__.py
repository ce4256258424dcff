"""The API server VM kind (``kind: apiserver``): a Kubernetes-style object store over sqlite.

Modules: ``resources`` (the served kinds), ``errors`` (Status errors), ``selectors``,
``store`` (sqlite WAL store, resourceVersion, watch history), ``validation``, ``rest``
(REST paths → store), ``controllers`` (node IPAM, node lifecycle, the ``kubernetes`` Service)
and ``vm`` (the VM kind: HTTP on :6443 over the emulated network, the ``api`` management verb).
Importing this package imports nothing heavy; node VMs never import it.
"""

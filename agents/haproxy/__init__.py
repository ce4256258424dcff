"""The HAProxy load-balancer VM of an AKS-HCI workload cluster (VM kind ``haproxy``).

``core`` is the sans-IO model (config, balance algorithms, health checks, stats CSV,
haproxy.cfg), ``proxy`` the ``mode tcp`` proxy over VM streams, ``lbagent`` the HTTP API MOC
programs it with (TCP 46000), ``vm`` the VM kind with its keepalived role.
"""

from .core import LBConfig, LBConfigError, LoadBalancer, parse_csv, render_cfg

__all__ = ["LBConfig", "LBConfigError", "LoadBalancer", "parse_csv", "render_cfg"]

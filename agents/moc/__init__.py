"""The MOC (Microsoft On-premises Cloud) cloud agent: networks, IP pools, VMs, load balancers.

Public surface:

* :mod:`agents.moc.pools` (sans-IO): network and cluster validation, node IP / VIP
  allocation (:class:`~agents.moc.pools.Ipam`) and the sizing rules of FACTS.md;
* :mod:`agents.moc.store`: the cloud agent's sqlite state (:class:`~agents.moc.store.Store`);
* :mod:`agents.moc.agent`: :class:`~agents.moc.agent.CloudAgent`, the management verbs, the HA
  watcher and the lbagent programming;
* :mod:`agents.moc.vm`: the VM kind ``moc`` (imported lazily by the VM runtime).

Nothing here is imported by other VM kinds: a node VM never loads sqlite or MOC's code.
"""

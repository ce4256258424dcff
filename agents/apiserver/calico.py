"""Calico's default IP pools, as ``calico-node`` creates them at first start (``projectcalico.org/v3``).

Calico's ``CALICO_IPV4POOL_CIDR`` / ``CALICO_IPV6POOL_CIDR`` become ``default-ipv4-ippool`` and
``default-ipv6-ippool`` when no pool exists yet.  Here the API server VM creates them from the
cluster's pod CIDR(s) at start: ``blockSize`` 26 (122 for IPv6), ``vxlanMode: Always`` (AKS on
Azure Stack HCI runs Calico in VXLAN mode), ``natOutgoing: true``, ``nodeSelector: all()``.
Existing pools are never touched (a user's edit survives a restart).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from .resources import BY_GROUP_KIND, CALICO_GROUP
from .rest import Router

__all__ = ["cluster_cidrs", "default_ippools", "ensure_ippools"]

IPPOOLS = BY_GROUP_KIND[(CALICO_GROUP, "IPPool")]
DEFAULT_CIDR = "10.244.0.0/16"


def cluster_cidrs(raw: Mapping[str, Any], default: str = DEFAULT_CIDR) -> list[str]:
    """The pod CIDRs from a VM config: ``cluster_cidrs`` (a list) or ``cluster_cidr`` (one, or
    comma-separated as kube-controller-manager's ``--cluster-cidr``), else ``default``."""
    value = raw.get("cluster_cidrs") or raw.get("cluster_cidr") or default
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else []
    out = []
    for item in items:
        text = str(item).strip()
        if text:
            out.append(str(ipaddress.ip_network(text, strict=False)))
    return out or [default]


def default_ippools(cidrs: Iterable[str]) -> list[dict[str, Any]]:
    """One pool per address family (the first CIDR of each)."""
    pools: dict[int, dict[str, Any]] = {}
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version in pools:
            continue
        pools[net.version] = {
            "apiVersion": IPPOOLS.api_version, "kind": "IPPool",
            "metadata": {"name": f"default-ipv{net.version}-ippool"},
            "spec": {"cidr": str(net), "blockSize": 26 if net.version == 4 else 122, "ipipMode": "Never",
                     "vxlanMode": "Always", "natOutgoing": True, "nodeSelector": "all()"},
        }
    return [pools[v] for v in sorted(pools)]


def ensure_ippools(router: Router, cidrs: Iterable[str]) -> list[str]:
    """Create the default pools that are absent; returns the names created."""
    created = []
    with router.store.batch():
        for pool in default_ippools(cidrs):
            name = pool["metadata"]["name"]
            if not router.store.exists(IPPOOLS, None, name):
                router.create(IPPOOLS, None, pool)
                created.append(name)
    return created

"""Flannel with the VXLAN backend, as AKS-HCI configures it.

* A /24 per node from the cluster CIDR: the Node's ``spec.podCIDR`` (kube-controller-manager
  allocates it; flannel's ``kube-subnet-mgr`` reads it).  host-local IPAM on it: the
  network address is the VXLAN device's (``flannel.4096`` holds ``10.244.x.0/32``), ``.1``
  is the gateway on the bridge (``cni0``), pods get ``.2`` .. ``.254`` handed out
  round-robin from the last one reserved (host-local's ``lastReservedIP``), so a released
  address is not reused at once.
* VXLAN VNI 4096 on UDP 4789 (the Windows-compatible settings every node of a cluster that
  may hold Windows nodes must share, FACTS.md), MTU 1450.
* No network policy, no IPv6 (refused with a clear error), retired in December 2023.
* Masquerade exceptions: Flannel's Windows CNI config (``OutBoundNAT`` ``ExceptionList``)
  lists the cluster CIDR, the service CIDR and the management (node) subnet — so a VM on the
  node's own network sees the pod's address and answers it through its gateway, which has
  no route to the pod CIDR.  docs/contracts-pod-network.md explains the consequence.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from .base import CniError, CniPlugin, IpamExhausted, PodAddress, register_cni, short_hash

RETIRED_WARNING = ("Flannel was retired in December 2023 (AKS hybrid); "
                   "new clusters should use -primaryNetworkPlugin calico")


def _no_ipv6(field: str, cidr: str) -> ipaddress.IPv4Network:
    net = ipaddress.ip_network(cidr, strict=False)
    if net.version == 6:
        raise CniError(f"{field}: flannel does not support IPv6 ({cidr}); "
                       "IPv6 pods need -primaryNetworkPlugin calico")
    return net


@register_cni
class FlannelPlugin(CniPlugin):
    name = "flannel"
    vxlan_device = "flannel.4096"
    supports_policy = False
    supports_ipv6 = False
    warning = RETIRED_WARNING

    def __init__(self, *, pod_cidr: str, **kwargs: Any) -> None:
        _no_ipv6("cluster_cidr", kwargs.get("cluster_cidr", "10.244.0.0/16"))
        super().__init__(**kwargs)
        net = _no_ipv6("pod_cidr", pod_cidr)
        if not net.subnet_of(ipaddress.IPv4Network(self.cluster_cidr)):
            raise CniError(f"pod_cidr: {net} is not inside the cluster CIDR {self.cluster_cidr}")
        if net.num_addresses < 4:
            raise CniError(f"pod_cidr: {net} is too small for a gateway and a pod")
        self.pod_cidr = str(net)
        self._net = net
        self.gateway = str(net.network_address + 1)
        self._first = int(net.network_address) + 2          # host-local's default rangeStart
        self._last = int(net.broadcast_address) - 1         # ... and rangeEnd
        self._last_reserved = self._last                    # so the first pod gets .2
        self._by_pod: dict[str, int] = {}
        self._used: set[int] = set()

    def default_exceptions(self) -> list[str]:
        out = [self.cluster_cidr, self.service_cidr]
        if self.node_subnet:
            out.append(self.node_subnet)
        return out

    # --- host-local IPAM -----------------------------------------------------------------------

    def allocate(self, pod_key: str, os: str | None = None) -> PodAddress:
        have = self._by_pod.get(pod_key)
        if have is None:
            have = self._next_free()
            self._by_pod[pod_key] = have
            self._used.add(have)
            self._last_reserved = have
        ip = str(ipaddress.IPv4Address(have))
        return PodAddress(addresses=(f"{ip}/{self._net.prefixlen}",), gateways={4: self.gateway})

    def _next_free(self) -> int:
        first, last = self._first, self._last
        span = last - first + 1
        for step in range(1, span + 1):
            cand = first + (self._last_reserved - first + step) % span
            if cand not in self._used:
                return cand
        raise IpamExhausted(f"ipam: no free address in {self.pod_cidr} on node {self.node_name} "
                            f"(host-local: {span} addresses in use)")

    def release(self, pod_key: str) -> list[str]:
        have = self._by_pod.pop(pod_key, None)
        if have is None:
            return []
        self._used.discard(have)
        return [str(ipaddress.IPv4Address(have))]

    def allocations(self) -> dict[str, str]:
        return {key: str(ipaddress.IPv4Address(v)) for key, v in self._by_pod.items()}

    def state(self) -> dict[str, Any]:
        """host-local's on-disk state, to persist across restarts of the node agent."""
        return {"pod_cidr": self.pod_cidr, "allocations": self.allocations(),
                "last_reserved": str(ipaddress.IPv4Address(self._last_reserved))}

    def load(self, state: Mapping[str, Any]) -> None:
        if state.get("pod_cidr") != self.pod_cidr:
            raise CniError(f"state.pod_cidr: {state.get('pod_cidr')} is not this node's {self.pod_cidr}")
        self._by_pod = {k: int(ipaddress.IPv4Address(v)) for k, v in state.get("allocations", {}).items()}
        self._used = set(self._by_pod.values())
        last = state.get("last_reserved")
        self._last_reserved = int(ipaddress.IPv4Address(last)) if last else self._last

    # --- the node's side ---------------------------------------------------------------------

    def local_cidrs(self) -> list[str]:
        return [self.pod_cidr]

    def vtep_address(self) -> str:
        return str(self._net.network_address)

    def bridge(self) -> tuple[str, str] | None:
        return ("cni0", f"{self.gateway}/{self._net.prefixlen}")

    def host_veth_name(self, pod_key: str) -> str:
        return "veth" + short_hash(pod_key, 8)  # the bridge plugin: "veth" + 4 random bytes

    def remote_cidrs(self, node: Mapping[str, Any]) -> list[str]:
        """Flannel's kube subnet manager: ``spec.podCIDRs`` (or ``spec.podCIDR``), IPv4 only."""
        spec = node.get("spec", {})
        cidrs = list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
        return [str(ipaddress.ip_network(c, strict=False)) for c in cidrs if ":" not in c]

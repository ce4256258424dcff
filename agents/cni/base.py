"""The CNI plugin seam: a small base class and a registry (like aioquic's congestion control).

A plugin instance belongs to one node.  It decides *what* the node's datapath looks like —
pod addresses (IPAM), the pod side of the veth (prefix, gateway), the host side's name, the
VXLAN device (name, VNI, port, MTU, VTEP address), the node's own pod networks, the remote
pod networks learned from Node objects, and the masquerade rule's settings — and
:class:`agents.node.datapath.NodeDatapath` makes it real.  Nothing outside a plugin branches
on a plugin's name: the Flannel / Calico difference toward VMs is only in the settings
(``masquerade_sources`` / ``masquerade_exceptions``), docs/contracts-pod-network.md.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from broker import packets as P

# Fixed on AKS-HCI (FACTS.md, "Cluster addressing").
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
# VXLAN: the Windows-compatible settings every node of an AKS-HCI cluster shares.
VXLAN_VNI = P.VXLAN_VNI      # 4096
VXLAN_PORT = P.VXLAN_PORT    # 4789
POD_MTU = 1450               # 1500 underlay - 50 bytes of VXLAN over IPv4

OSES = ("linux", "windows")


class CniError(Exception):
    """A CNI decision that cannot be made; the message names the field, one line."""


class IpamExhausted(CniError):
    """No free address (the node's range, or the pool's blocks, are used up)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PodAddress:
    """What CNI ADD returns for a pod: addresses as ``ip/len`` and the default gateway of
    each family (the pod's routes point at it through the veth)."""

    addresses: tuple[str, ...]
    gateways: Mapping[int, str]  # IP version -> gateway address

    def __post_init__(self) -> None:
        if not self.addresses:
            raise CniError("addresses: a pod needs at least one address")

    @property
    def ips(self) -> list[str]:
        return [a.split("/", 1)[0] for a in self.addresses]

    @property
    def ip(self) -> str:
        """The primary address (IPv4 first, as Kubernetes orders ``status.podIPs``)."""
        return self.ips[0]


def vtep_mac(node_ip: str) -> str:
    """A VXLAN device's MAC, derived from the node's address so every node can compute its
    peers' (real Flannel and Calico publish a random one in a Node annotation)."""
    packed = ipaddress.ip_address(node_ip).packed[-4:]
    return "0e:2a:" + ":".join(f"{b:02x}" for b in packed)


def pod_mac(ip: str) -> str:
    """A pod interface's MAC: ``0a:58`` + the IPv4 address, as the CNI bridge plugin does."""
    packed = ipaddress.ip_address(ip).packed[-4:]
    return "0a:58:" + ":".join(f"{b:02x}" for b in packed)


def short_hash(text: str, n: int) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def node_internal_ip(node: Mapping[str, Any]) -> str | None:
    """A Node object's ``status.addresses[type=InternalIP]`` (IPv4 first)."""
    ips = [a.get("address") for a in node.get("status", {}).get("addresses", [])
           if a.get("type") == "InternalIP" and a.get("address")]
    ips.sort(key=lambda ip: ":" in ip)
    return ips[0] if ips else None


class CniPlugin:
    """Base class: the settings and decisions of one CNI plugin on one node.

    Subclasses set the class attributes and implement :meth:`allocate`, :meth:`release`,
    :meth:`local_cidrs`, :meth:`vtep_address`, :meth:`host_veth_name` and
    :meth:`remote_cidrs`.  Register them with :func:`register_cni`.
    """

    name: ClassVar[str] = ""
    vxlan_device: ClassVar[str] = ""
    vni: ClassVar[int] = VXLAN_VNI
    vxlan_port: ClassVar[int] = VXLAN_PORT
    mtu: ClassVar[int] = POD_MTU
    supports_policy: ClassVar[bool] = False
    supports_ipv6: ClassVar[bool] = False
    warning: ClassVar[str | None] = None  # shown when a cluster is created with this plugin

    def __init__(self, *, node_name: str, node_ip: str, node_subnet: str | None = None,
                 os: str = "linux", cluster_cidr: str = CLUSTER_CIDR, service_cidr: str = SERVICE_CIDR,
                 masquerade_exceptions: Iterable[str] | None = None) -> None:
        if os not in OSES:
            raise CniError(f"os: expected linux|windows, got {os!r}")
        self.node_name = node_name
        self.node_ip = P.canonical_ip(node_ip, "node_ip")
        self.node_subnet = str(ipaddress.ip_network(node_subnet, strict=False)) if node_subnet else None
        self.os = os
        self.cluster_cidr = str(ipaddress.ip_network(cluster_cidr))
        self.service_cidr = str(ipaddress.ip_network(service_cidr))
        self.masquerade_exceptions: list[str] = (
            self.default_exceptions() if masquerade_exceptions is None
            else [str(ipaddress.ip_network(p, strict=False)) for p in masquerade_exceptions])

    # --- masquerade settings (the only place the plugins differ toward VMs) -------------------

    def default_exceptions(self) -> list[str]:
        raise NotImplementedError

    @property
    def masquerade_sources(self) -> list[str]:
        """Source prefixes whose traffic is masqueraded (the pod network)."""
        return [self.cluster_cidr]

    # --- IPAM ----------------------------------------------------------------------------------

    def allocate(self, pod_key: str, os: str | None = None) -> PodAddress:
        """CNI ADD: the pod's addresses (the same ones again for a pod that has them)."""
        raise NotImplementedError

    def release(self, pod_key: str) -> list[str]:
        """CNI DEL: give the pod's addresses back; returns them ([] if it had none)."""
        raise NotImplementedError

    # --- the node's side ----------------------------------------------------------------------

    def local_cidrs(self) -> list[str]:
        """This node's pod networks (Flannel: its /24; Calico: its affine blocks)."""
        raise NotImplementedError

    def vtep_address(self) -> str:
        """The VXLAN device's own address (the source of the node's packets into the overlay)."""
        raise NotImplementedError

    def vtep_address_v6(self) -> str | None:
        """The VXLAN device's IPv6 address (the source of routes to remote IPv6 pod
        networks), or None: the plugin has no IPv6 on this node."""
        return None

    def host_veth_name(self, pod_key: str) -> str:
        raise NotImplementedError

    def bridge(self) -> tuple[str, str] | None:
        """``(name, "ip/len")`` of a bridge that holds the pods' gateway, or None."""
        return None

    def vtep_mac(self, node_ip: str | None = None) -> str:
        return vtep_mac(node_ip or self.node_ip)

    # --- remote nodes -------------------------------------------------------------------------

    def remote_cidrs(self, node: Mapping[str, Any]) -> list[str]:
        """The pod networks of the node described by a Node object."""
        raise NotImplementedError

    def remote_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, list[str]]]:
        """``[(name, InternalIP, pod CIDRs)]`` for :meth:`NodeDatapath.set_remote_nodes`, from
        Node objects (this node and nodes without an address or CIDR are left out)."""
        out = []
        for node in nodes:
            name = node.get("metadata", {}).get("name", "")
            ip = node_internal_ip(node)
            if not name or name == self.node_name or ip is None:
                continue
            cidrs = self.remote_cidrs(node)
            if cidrs:
                out.append((name, ip, cidrs))
        return out

    def describe(self) -> dict[str, Any]:
        return {"plugin": self.name, "node": self.node_name, "vni": self.vni, "port": self.vxlan_port,
                "mtu": self.mtu, "device": self.vxlan_device, "policy": self.supports_policy,
                "ipv6": self.supports_ipv6, "masquerade_sources": self.masquerade_sources,
                "masquerade_exceptions": list(self.masquerade_exceptions)}


_REGISTRY: dict[str, type[CniPlugin]] = {}

C = TypeVar("C", bound=type[CniPlugin])


def register_cni(cls: C) -> C:
    """Class decorator: make a plugin available under ``cls.name``."""
    if not cls.name:
        raise ValueError("name: a CNI plugin needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def cni_plugins() -> list[str]:
    return sorted(_REGISTRY)


def cni_plugin(name: str) -> type[CniPlugin]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CniError(f"primaryNetworkPlugin: unknown plugin {name!r}; expected "
                       f"{'|'.join(cni_plugins())}") from None


def create_cni(name: str, **kwargs: Any) -> CniPlugin:
    return cni_plugin(name)(**kwargs)

"""Networks, IP pools and sizing of the MOC cloud agent (sans-IO: no sockets, no clock, no sqlite).

What AKS on Azure Stack HCI does (FACTS.md, "Networks, pools and who gets what"):

* Two network models.  **Static IP**: node VMs and the HAProxy VM take addresses from the
  network's node IP pool (``k8sNodeIpPoolStart..End``).  **DHCP**: they get leases from the
  datacenter's DHCP scope (``dhcpScopeStart..End``).  In both, the API server and every
  LoadBalancer Service take addresses from the **VIP pool** (``vipPoolStart..End``), which
  must lie in the same subnet and outside the DHCP scope.
* Sizing: a workload cluster needs 1 IP per control-plane node, 1 per worker, 5 spare for
  upgrades and 1 for its LB VM from the node pool; 1 VIP for its API server plus 1 per
  Service.  A cluster that does not fit is refused up front; pools cannot grow.
* ``New-AksHciCluster``: ``-name`` without hyphens, ``-nodeMaxPodCount`` > 50,
  ``-primaryNetworkPlugin calico|flannel`` (Flannel was retired in December 2023).

Every refusal is a :class:`PoolError` whose text is one line starting with the field it is
about, e.g. ``vipPoolStart: 172.16.0.50 lies inside the DHCP scope 172.16.0.10-172.16.0.99``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UPGRADE_SPARES = 5  # node pool addresses kept per cluster for rolling upgrades (FACTS.md)
APISERVER_PORT = 6443
FLANNEL_WARNING = "Flannel was retired in December 2023; Calico is the default and recommended network plugin"
DEFAULT_MTU = 1500
MAX_PODS_DEFAULT = 110
MAX_PODS_LIMIT = 250  # AKS's upper bound for max pods per node
VM_NAME_MAX = 63  # VM names are RFC 1123 labels (the host agent's rule)
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CLUSTER_RE = re.compile(r"^[a-z][a-z0-9]*$")


class PoolError(ValueError):
    """A refused network, cluster or allocation; one line that starts with the field."""


class SizingError(PoolError):
    """A cluster (or a scale-up) that does not fit its pools; names the pool and the shortfall."""


# --- address ranges ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpRange:
    """An inclusive range of addresses, ``start-end``."""

    start: IPAddress
    end: IPAddress

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) or ip.version != self.start.version:
            return False
        return int(self.start) <= int(ip) <= int(self.end)

    def overlaps(self, other: IpRange) -> bool:
        return (self.start.version == other.start.version
                and int(self.start) <= int(other.end) and int(other.start) <= int(self.end))

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


# --- networks ------------------------------------------------------------------------------

# (start key, end key, what) of the three pools a network may declare.
NODE_KEYS = ("k8sNodeIpPoolStart", "k8sNodeIpPoolEnd", "node IP pool")
DHCP_KEYS = ("dhcpScopeStart", "dhcpScopeEnd", "DHCP scope")
VIP_KEYS = ("vipPoolStart", "vipPoolEnd", "VIP pool")

NETWORK_KEYS = frozenset({
    "name", "vswitchName", "vlanID", "ipAddressPrefix", "gateway", "dnsServers",
    *NODE_KEYS[:2], *DHCP_KEYS[:2], *VIP_KEYS[:2], "mtu", "external", "vipAllocation",
})
# How Service VIPs are handed out on a network (an emulator option, not a product parameter):
# ``shared-ports`` as shipped (per IP-and-port: two clusters whose Services use different ports
# get the same VIP -- the known issue), ``exclusive`` a fixed product (an IP belongs to one cluster).
VIP_ALLOCATIONS = ("shared-ports", "exclusive")


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkSpec:
    """A validated ``New-AksHciClusterNetwork`` (or an external network with no pools)."""

    name: str
    vswitch: str
    vlan_id: int
    prefix: IPNetwork
    gateway: IPAddress
    dns_servers: tuple[str, ...]
    node_pool: IpRange | None
    dhcp_scope: IpRange | None
    vip_pool: IpRange | None
    mtu: int = DEFAULT_MTU
    external: bool = False
    vip_allocation: str = "shared-ports"

    @property
    def model(self) -> str:
        """``static`` (node IP pool), ``dhcp`` (leases) or ``external`` (no AKS pools)."""
        if self.external:
            return "external"
        return "static" if self.node_pool is not None else "dhcp"

    def pools(self) -> Iterator[tuple[tuple[str, str, str], IpRange]]:
        for keys, rng in ((NODE_KEYS, self.node_pool), (DHCP_KEYS, self.dhcp_scope), (VIP_KEYS, self.vip_pool)):
            if rng is not None:
                yield keys, rng

    def doc(self) -> dict[str, Any]:
        """The PowerShell-shaped document (``Get-AksHciClusterNetwork``); parses back to ``self``."""
        out: dict[str, Any] = {"name": self.name, "vswitchName": self.vswitch, "vlanID": self.vlan_id,
                               "ipAddressPrefix": str(self.prefix), "gateway": str(self.gateway),
                               "mtu": self.mtu}
        if self.dns_servers:
            out["dnsServers"] = list(self.dns_servers)
        if self.external:
            out["external"] = True
        if self.vip_allocation != "shared-ports":
            out["vipAllocation"] = self.vip_allocation
        for (start_key, end_key, _), rng in self.pools():
            out[start_key], out[end_key] = str(rng.start), str(rng.end)
        return out


def _prefix(obj: Mapping[str, Any]) -> IPNetwork:
    text = obj.get("ipAddressPrefix")
    if text is None:
        raise PoolError("ipAddressPrefix: required")
    if not isinstance(text, str):
        raise PoolError(f"ipAddressPrefix: expected a prefix string, got {type(text).__name__}")
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise PoolError(f"ipAddressPrefix: {text!r} is not a network prefix") from None
    raise PoolError(f"ipAddressPrefix: {text} has host bits set")


def _address(text: Any, key: str) -> IPAddress:
    if not isinstance(text, str):
        raise PoolError(f"{key}: expected an address string, got {type(text).__name__}")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise PoolError(f"{key}: {text!r} is not an IP address") from None


def _inside(obj: Mapping[str, Any], key: str, prefix: IPNetwork) -> IPAddress:
    """A required address of ``prefix`` that a host can use (not the subnet or broadcast address)."""
    if obj.get(key) is None:
        raise PoolError(f"{key}: required")
    ip = _address(obj[key], key)
    if ip not in prefix:
        raise PoolError(f"{key}: {ip} is outside ipAddressPrefix {prefix}")
    if prefix.num_addresses > 2 and ip == prefix.network_address:
        raise PoolError(f"{key}: {ip} is the subnet address of {prefix}")
    if prefix.version == 4 and prefix.num_addresses > 2 and ip == prefix.broadcast_address:
        raise PoolError(f"{key}: {ip} is the broadcast address of {prefix}")
    return ip


def _range(obj: Mapping[str, Any], keys: tuple[str, str, str], prefix: IPNetwork) -> IpRange | None:
    start_key, end_key, _ = keys
    if obj.get(start_key) is None and obj.get(end_key) is None:
        return None
    for key in (start_key, end_key):
        if obj.get(key) is None:
            other = end_key if key == start_key else start_key
            raise PoolError(f"{key}: required with {other}")
    start, end = _inside(obj, start_key, prefix), _inside(obj, end_key, prefix)
    if int(end) < int(start):
        raise PoolError(f"{end_key}: {end} is below {start_key} {start}")
    return IpRange(start, end)


def _int(obj: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = obj.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool):
        raise PoolError(f"{key}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise PoolError(f"{key}: expected {lo}..{hi}, got {value}")
    return value


def _disjoint(a: IpRange, a_keys: tuple[str, str, str], b: IpRange, b_what: str) -> None:
    """``a`` (named by its keys) must not share an address with ``b``."""
    start_key, end_key, a_what = a_keys
    if a.start in b:
        raise PoolError(f"{start_key}: {a.start} lies inside the {b_what} {b}")
    if a.end in b:
        raise PoolError(f"{end_key}: {a.end} lies inside the {b_what} {b}")
    if a.overlaps(b):
        raise PoolError(f"{start_key}: the {a_what} {a} encloses the {b_what} {b}")


def parse_network(obj: Any, others: Iterable[NetworkSpec] = (),
                  reserved: Mapping[str, str] | None = None) -> NetworkSpec:
    """Validate a network document against the networks that exist already.

    ``reserved`` maps addresses no pool may contain to who holds them (e.g. the cloud
    agent's own address).
    """
    if not isinstance(obj, Mapping):
        raise PoolError("network: expected an object")
    unknown = sorted(set(obj) - NETWORK_KEYS)
    if unknown:
        raise PoolError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(NETWORK_KEYS))})")
    name = obj.get("name")
    if not isinstance(name, str) or not _LABEL_RE.match(name) or len(name) > VM_NAME_MAX:
        raise PoolError("name: required, lower-case letters, digits and '-'" if name is None
                        else f"name: {name!r} is not a network name (lower-case letters, digits and '-')")
    others = list(others)
    if any(o.name == name for o in others):
        raise PoolError(f"name: network {name} already exists")
    external = obj.get("external", False)
    if not isinstance(external, bool):
        raise PoolError(f"external: expected true/false, got {external!r}")
    vswitch = obj.get("vswitchName", "External")
    if not isinstance(vswitch, str) or not vswitch:
        raise PoolError(f"vswitchName: expected a virtual switch name, got {vswitch!r}")
    prefix = _prefix(obj)
    gateway = _inside(obj, "gateway", prefix)
    vlan = _int(obj, "vlanID", 0, 0, 4094)  # IEEE 802.1Q: 0 = untagged, 4095 reserved
    mtu = _int(obj, "mtu", DEFAULT_MTU, 576 if prefix.version == 4 else 1280, 9000)
    node = _range(obj, NODE_KEYS, prefix)
    dhcp = _range(obj, DHCP_KEYS, prefix)
    vip = _range(obj, VIP_KEYS, prefix)
    dns = _dns(obj, required=node is not None)
    spec = NetworkSpec(name=name, vswitch=vswitch, vlan_id=vlan, prefix=prefix, gateway=gateway,
                       dns_servers=dns, node_pool=node, dhcp_scope=dhcp, vip_pool=vip, mtu=mtu,
                       external=external, vip_allocation=_vip_allocation(obj))
    _check_model(spec)
    for keys, rng in spec.pools():
        if gateway in rng:
            raise PoolError(f"{keys[0]}: the {keys[2]} {rng} contains the gateway {gateway}")
        for ip, who in (reserved or {}).items():
            if ipaddress.ip_address(ip) in rng:
                raise PoolError(f"{keys[0]}: the {keys[2]} {rng} contains {ip} ({who})")
    for other in others:
        _check_against(spec, other)
    return spec


def _vip_allocation(obj: Mapping[str, Any]) -> str:
    value = obj.get("vipAllocation", "shared-ports")
    if value not in VIP_ALLOCATIONS:
        raise PoolError(f"vipAllocation: expected one of {', '.join(VIP_ALLOCATIONS)}, got {value!r}")
    return str(value)


def _dns(obj: Mapping[str, Any], *, required: bool) -> tuple[str, ...]:
    raw = obj.get("dnsServers")
    if raw is None:
        if required:
            raise PoolError("dnsServers: required (1 to 3 addresses) with a static IP pool")
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list | tuple) or not 1 <= len(raw) <= 3:
        raise PoolError(f"dnsServers: expected 1 to 3 addresses, got {raw!r}")
    return tuple(str(_address(s, f"dnsServers[{i}]")) for i, s in enumerate(raw))


def _check_model(spec: NetworkSpec) -> None:
    if spec.external:
        for keys, _ in spec.pools():
            raise PoolError(f"{keys[0]}: an external network has no AKS pools")
        return
    if spec.node_pool is not None and spec.dhcp_scope is not None:
        raise PoolError("dhcpScopeStart: a network is either static (k8sNodeIpPoolStart/End) "
                        "or DHCP (dhcpScopeStart/End), not both")
    if spec.node_pool is None and spec.dhcp_scope is None:
        raise PoolError("k8sNodeIpPoolStart: required (static IP model), "
                        "or dhcpScopeStart/dhcpScopeEnd (DHCP model)")
    if spec.vip_pool is None:
        raise PoolError("vipPoolStart: required (the API server and LoadBalancer Services take their VIPs from it)")
    if spec.node_pool is not None:
        _disjoint(spec.vip_pool, VIP_KEYS, spec.node_pool, NODE_KEYS[2])
    if spec.dhcp_scope is not None:
        _disjoint(spec.vip_pool, VIP_KEYS, spec.dhcp_scope, DHCP_KEYS[2])


def _check_against(spec: NetworkSpec, other: NetworkSpec) -> None:
    """Networks on one subnet (one vSwitch segment) must not share pool addresses."""
    if spec.prefix.version != other.prefix.version or not spec.prefix.overlaps(other.prefix):
        return
    if spec.prefix != other.prefix:
        raise PoolError(f"ipAddressPrefix: {spec.prefix} overlaps network {other.name} ({other.prefix}) "
                        "without being the same subnet")
    if spec.vlan_id != other.vlan_id:
        raise PoolError(f"vlanID: {spec.vlan_id} differs from network {other.name} on the same subnet "
                        f"{spec.prefix} (vlanID {other.vlan_id})")
    if spec.gateway != other.gateway:
        raise PoolError(f"gateway: {spec.gateway} differs from network {other.name} on the same subnet "
                        f"({other.gateway})")
    for keys, rng in spec.pools():
        for (_, _, their_what), theirs in other.pools():
            if rng.overlaps(theirs):
                raise PoolError(f"{keys[0]}: the {keys[2]} {rng} overlaps the {their_what} {theirs} "
                                f"of network {other.name}")


def segment_of(spec: NetworkSpec, others: Iterable[tuple[NetworkSpec, str]]) -> str:
    """The broker network (L2 segment) a network's NICs attach to: one per subnet.

    Two network objects on one subnet (e.g. one per cluster, the fix for the shared-VIP known
    issue) are the same wire; the first one's name names the segment.
    """
    for other, segment in others:
        if other.prefix == spec.prefix and other.vlan_id == spec.vlan_id:
            return segment
    return spec.name


# --- clusters ------------------------------------------------------------------------------

CLUSTER_KEYS = frozenset({
    "name", "vnet", "primaryNetworkPlugin", "controlPlaneNodeCount", "loadBalancerSku",
    "nodeMaxPodCount", "nodePools", "nodePoolName", "nodeCount", "osType", "kubernetesVersion",
    "kubeProxyMode", "ipvsScheduler", "ipFamilies",
})
POOL_KEYS = frozenset({"name", "osType", "nodeCount"})
OS_TYPES = ("linux", "windows")
PLUGINS = ("calico", "flannel")
# kube-proxy's mode and IPVS scheduler per cluster (KubeProxyConfiguration ``mode`` and
# ``ipvs.scheduler``; kube-proxy's own defaults).  Not a New-AksHciCluster parameter: an
# emulator setting, handed to every node VM of the cluster.
PROXY_MODES = ("iptables", "ipvs")
IPVS_SCHEDULERS = ("rr", "lc")
SKUS = {"haproxy": "HAProxy", "none": "none"}
# The cluster's IP families (``ipFamilies``): IPv4, or dual stack IPv4 + IPv6 with Calico.
# The CIDRs of each family are kind's defaults for the IPv6 side (pods fd00:10:244::/56 in
# /122 Calico blocks, Services fd00:10:96::/112) and AKS-HCI's fixed ones for IPv4.
IP_FAMILIES = ("IPv4", "IPv6")
POD_CIDRS = {"IPv4": "10.244.0.0/16", "IPv6": "fd00:10:244::/56"}
SERVICE_CIDRS = {"IPv4": "10.96.0.0/12", "IPv6": "fd00:10:96::/112"}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePoolSpec:
    name: str
    os_type: str
    count: int

    def doc(self) -> dict[str, Any]:
        return {"name": self.name, "osType": self.os_type, "nodeCount": self.count}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSpec:
    """A validated ``New-AksHciCluster``."""

    name: str
    vnet: str
    network_plugin: str
    control_plane_count: int
    lb_sku: str  # "HAProxy" | "none"
    max_pods: int
    node_pools: tuple[NodePoolSpec, ...]
    kubernetes_version: str | None = None
    kube_proxy_mode: str = "iptables"
    ipvs_scheduler: str = "rr"
    ip_families: tuple[str, ...] = ("IPv4",)

    @property
    def dual_stack(self) -> bool:
        return len(self.ip_families) > 1

    @property
    def cluster_cidrs(self) -> list[str]:
        """The pod network of each family (``--cluster-cidr``), IPv4 first."""
        return [POD_CIDRS[f] for f in self.ip_families]

    @property
    def service_cidrs(self) -> list[str]:
        """The Service range of each family (``--service-cluster-ip-range``), IPv4 first."""
        return [SERVICE_CIDRS[f] for f in self.ip_families]

    @property
    def has_lb_vm(self) -> bool:
        return self.lb_sku == "HAProxy"

    @property
    def workers(self) -> int:
        return sum(p.count for p in self.node_pools)

    def pool(self, name: str) -> NodePoolSpec:
        for p in self.node_pools:
            if p.name == name:
                return p
        raise PoolError(f"name: cluster {self.name} has no node pool {name} "
                        f"(has: {', '.join(p.name for p in self.node_pools) or 'none'})")

    def with_pools(self, pools: Iterable[NodePoolSpec]) -> ClusterSpec:
        return ClusterSpec(name=self.name, vnet=self.vnet, network_plugin=self.network_plugin,
                           control_plane_count=self.control_plane_count, lb_sku=self.lb_sku,
                           max_pods=self.max_pods, node_pools=tuple(pools),
                           kubernetes_version=self.kubernetes_version, kube_proxy_mode=self.kube_proxy_mode,
                           ipvs_scheduler=self.ipvs_scheduler, ip_families=self.ip_families)

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "vnet": self.vnet, "primaryNetworkPlugin": self.network_plugin,
            "controlPlaneNodeCount": self.control_plane_count, "loadBalancerSku": self.lb_sku,
            "nodeMaxPodCount": self.max_pods, "nodePools": [p.doc() for p in self.node_pools],
            "kubeProxyMode": self.kube_proxy_mode, "ipvsScheduler": self.ipvs_scheduler,
            "ipFamilies": list(self.ip_families)}
        if self.kubernetes_version is not None:
            out["kubernetesVersion"] = self.kubernetes_version
        return out


def parse_node_pool(obj: Any, where: str, cluster: str) -> NodePoolSpec:
    """One node pool (``New-AksHciNodePool -name -osType -count``); ``where`` prefixes fields."""
    if not isinstance(obj, Mapping):
        raise PoolError(f"{where}: expected an object")
    unknown = sorted(set(obj) - POOL_KEYS)
    if unknown:
        raise PoolError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(POOL_KEYS))})")
    name = obj.get("name")
    if name is None:
        raise PoolError(f"{where}name: required")
    # VM names are <pool>-<i>: the pool name must leave room for "-<index>" in 63 characters.
    if not isinstance(name, str) or not _LABEL_RE.match(name) or len(name) > VM_NAME_MAX - 4:
        raise PoolError(f"{where}name: {name!r} is not a node pool name (lower-case letters, digits "
                        f"and '-', at most {VM_NAME_MAX - 4} characters)")
    os_type = obj.get("osType", "linux")
    if not isinstance(os_type, str) or os_type.lower() not in OS_TYPES:
        raise PoolError(f"{where}osType: expected linux or windows, got {os_type!r}")
    count = obj.get("nodeCount", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 1000:
        raise PoolError(f"{where}nodeCount: expected an integer 0..1000, got {count!r}")
    return NodePoolSpec(name=name, os_type=os_type.lower(), count=count)


def parse_cluster(obj: Any, networks: Collection[str]) -> tuple[ClusterSpec, list[str]]:
    """Validate a ``New-AksHciCluster``; return the spec and its warnings (Flannel)."""
    if not isinstance(obj, Mapping):
        raise PoolError("cluster: expected an object")
    unknown = sorted(set(obj) - CLUSTER_KEYS)
    if unknown:
        raise PoolError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(CLUSTER_KEYS))})")
    name = _cluster_name(obj.get("name"))
    vnet = obj.get("vnet")
    if vnet is None:
        if len(networks) != 1:
            raise PoolError(f"vnet: required (networks: {', '.join(sorted(networks)) or 'none yet'})")
        vnet = next(iter(networks))
    if not isinstance(vnet, str) or vnet not in networks:
        raise PoolError(f"vnet: no network named {vnet!r} (networks: {', '.join(sorted(networks)) or 'none yet'})")
    plugin = obj.get("primaryNetworkPlugin", "calico")
    if not isinstance(plugin, str) or plugin.lower() not in PLUGINS:
        raise PoolError(f"primaryNetworkPlugin: expected calico or flannel, got {plugin!r}")
    plugin = plugin.lower()
    cp = _int(obj, "controlPlaneNodeCount", 1, 1, 5)
    if cp > 1:
        raise PoolError(f"controlPlaneNodeCount: {cp} control-plane nodes are not supported yet (only 1)")
    sku = obj.get("loadBalancerSku", "HAProxy")
    if not isinstance(sku, str) or sku.lower() not in SKUS:
        raise PoolError(f"loadBalancerSku: expected HAProxy or none, got {sku!r}")
    max_pods = obj.get("nodeMaxPodCount", MAX_PODS_DEFAULT)
    if not isinstance(max_pods, int) or isinstance(max_pods, bool) or not 50 < max_pods <= MAX_PODS_LIMIT:
        raise PoolError(f"nodeMaxPodCount: must be greater than 50 and at most {MAX_PODS_LIMIT}, got {max_pods!r}")
    version = obj.get("kubernetesVersion")
    if version is not None and not isinstance(version, str):
        raise PoolError(f"kubernetesVersion: expected a string, got {version!r}")
    mode = _choice(obj, "kubeProxyMode", PROXY_MODES)
    scheduler = _choice(obj, "ipvsScheduler", IPVS_SCHEDULERS)
    families = _ip_families(obj.get("ipFamilies"), plugin)
    pools = _cluster_pools(obj, name)
    spec = ClusterSpec(name=name, vnet=vnet, network_plugin=plugin, control_plane_count=cp,
                       lb_sku=SKUS[sku.lower()], max_pods=max_pods, node_pools=pools,
                       kubernetes_version=version, kube_proxy_mode=mode, ipvs_scheduler=scheduler,
                       ip_families=families)
    warnings = [FLANNEL_WARNING] if plugin == "flannel" else []
    if spec.dual_stack:
        warnings += [f"ipFamilies: node pool {p.name} is Windows: its pods get IPv4 only (Calico for "
                     "Windows has no IPv6)" for p in pools if p.os_type == "windows"]
    if mode != "ipvs" and scheduler != IPVS_SCHEDULERS[0]:
        # kube-proxy reads ipvs.scheduler only in ipvs mode
        warnings.append(f"ipvsScheduler: {scheduler} has no effect with kubeProxyMode {mode} "
                        "(only the ipvs mode uses a scheduler)")
    return spec, warnings


def _ip_families(raw: Any, plugin: str) -> tuple[str, ...]:
    """``ipFamilies``: ``[IPv4]`` (the default) or ``[IPv4, IPv6]`` (dual stack, Calico only)."""
    if raw is None:
        return ("IPv4",)
    if isinstance(raw, str):
        raw = [f.strip() for f in raw.split(",")]
    if not isinstance(raw, list | tuple) or not raw or not all(isinstance(f, str) for f in raw):
        raise PoolError(f"ipFamilies: expected a list such as [IPv4] or [IPv4, IPv6], got {raw!r}")
    by_lower = {f.lower(): f for f in IP_FAMILIES}
    families: list[str] = []
    for i, text in enumerate(raw):
        fam = by_lower.get(text.lower())
        if fam is None:
            raise PoolError(f"ipFamilies[{i}]: expected IPv4 or IPv6, got {text!r}")
        if fam in families:
            raise PoolError(f"ipFamilies[{i}]: {fam} is listed twice")
        families.append(fam)
    if families == ["IPv6"]:
        raise PoolError("ipFamilies: IPv6-only clusters are not supported: AKS-HCI nodes are IPv4 "
                        "(use [IPv4, IPv6] for dual stack)")
    if families[0] != "IPv4":
        raise PoolError("ipFamilies: IPv4 must come first (the nodes' addresses are IPv4): use [IPv4, IPv6]")
    if len(families) > 1 and plugin != "calico":
        raise PoolError(f"ipFamilies: {plugin.capitalize()} does not support IPv6 (dual stack needs "
                        "primaryNetworkPlugin calico)")
    return tuple(families)


def _choice(obj: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    """A kube-proxy setting: one of ``choices`` (the first is the default), as written."""
    value = obj.get(key, choices[0])
    if not isinstance(value, str) or value not in choices:
        raise PoolError(f"{key}: expected {' or '.join(choices)}, got {value!r}")
    return value


def _cluster_name(name: Any) -> str:
    if name is None:
        raise PoolError("name: required")
    if not isinstance(name, str):
        raise PoolError(f"name: expected a string, got {type(name).__name__}")
    if "-" in name:
        raise PoolError(f"name: {name!r} must not contain hyphens (New-AksHciCluster)")
    # <name>-control-plane-<i> must still be a VM name (63 characters).
    limit = VM_NAME_MAX - len("-control-plane-0")
    if not _CLUSTER_RE.match(name) or len(name) > limit:
        raise PoolError(f"name: {name!r} is not a cluster name (a lower-case letter, then lower-case "
                        f"letters and digits, at most {limit} characters)")
    return name


def _cluster_pools(obj: Mapping[str, Any], cluster: str) -> tuple[NodePoolSpec, ...]:
    raw = obj.get("nodePools")
    if raw is None:  # New-AksHciCluster's flags: one pool, "<name>-linux" with one node by default
        flags = {"name": obj.get("nodePoolName") or f"{cluster}-{str(obj.get('osType') or 'linux').lower()}",
                 "osType": obj.get("osType") or "linux", "nodeCount": obj.get("nodeCount", 1)}
        return (parse_node_pool(flags, "", cluster),)
    if not isinstance(raw, list | tuple) or not raw:
        raise PoolError("nodePools: expected a non-empty list")
    pools = tuple(parse_node_pool(p, f"nodePools[{i}].", cluster) for i, p in enumerate(raw))
    seen: set[str] = set()
    for i, p in enumerate(pools):
        if p.name in seen:
            raise PoolError(f"nodePools[{i}].name: duplicate node pool {p.name}")
        seen.add(p.name)
    return pools


# --- sizing --------------------------------------------------------------------------------


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


@dataclass(frozen=True, slots=True)
class Demand:
    """Node-pool addresses a cluster (or a scale-up) needs (FACTS.md sizing)."""

    control_plane: int = 0
    workers: int = 0
    spares: int = 0
    lb_vms: int = 0

    @property
    def total(self) -> int:
        return self.control_plane + self.workers + self.spares + self.lb_vms

    def describe(self) -> str:
        parts = []
        if self.control_plane:
            parts.append(_n(self.control_plane, "control plane", "control planes"))
        if self.workers or self.control_plane or not parts:  # a cluster says "0 workers" too
            parts.append(_n(self.workers, "worker"))
        if self.spares:
            parts.append(_n(self.spares, "upgrade spare"))
        if self.lb_vms:
            parts.append(_n(self.lb_vms, "load balancer VM"))
        return " + ".join(parts)


def demand_of(spec: ClusterSpec) -> Demand:
    return Demand(control_plane=spec.control_plane_count, workers=spec.workers, spares=UPGRADE_SPARES,
                  lb_vms=1 if spec.has_lb_vm else 0)


# --- allocation ----------------------------------------------------------------------------


class AddressPool:
    """A node IP pool: lowest-free allocation, per-holder release, per-cluster reservations.

    A cluster reserves its whole demand (spares included) when it is created; its VMs then
    allocate inside that reservation.  ``available`` is what a *new* reservation can get:
    the pool minus every cluster's reservation (or its use, if larger) minus addresses held
    outside any reservation.
    """

    def __init__(self, rng: IpRange) -> None:
        self.range = rng
        self._held: dict[int, tuple[str | None, str]] = {}  # ip -> (cluster, holder)
        self.reservations: dict[str, int] = {}

    @property
    def size(self) -> int:
        return self.range.size

    @property
    def used(self) -> int:
        return len(self._held)

    @property
    def free(self) -> int:
        return self.size - self.used

    def used_by(self, cluster: str | None) -> int:
        return sum(1 for c, _ in self._held.values() if c == cluster)

    @property
    def available(self) -> int:
        taken = sum(max(n, self.used_by(c)) for c, n in self.reservations.items())
        taken += sum(1 for c, _ in self._held.values() if c is None or c not in self.reservations)
        return max(0, self.size - taken)

    def reserve(self, cluster: str, count: int) -> None:
        """Add ``count`` to ``cluster``'s reservation (callers check ``available`` first)."""
        self.reservations[cluster] = self.reservations.get(cluster, 0) + count

    def shrink(self, cluster: str, count: int) -> None:
        if cluster in self.reservations:
            self.reservations[cluster] = max(0, self.reservations[cluster] - count)

    def allocate(self, cluster: str | None, holder: str) -> IPAddress:
        """The lowest free address, inside ``cluster``'s reservation if it has room left."""
        in_reservation = cluster is not None and self.used_by(cluster) < self.reservations.get(cluster, 0)
        if not in_reservation and self.available < 1:
            raise PoolError(f"{holder}: the node IP pool {self.range} is exhausted")
        base = int(self.range.start)
        for offset in range(self.size):
            if base + offset not in self._held:
                self._held[base + offset] = (cluster, holder)
                return ipaddress.ip_address(base + offset)
        raise PoolError(f"{holder}: the node IP pool {self.range} is exhausted")

    def take(self, ip: IPAddress, cluster: str | None, holder: str) -> None:
        """Hold a given address (restoring state, or a fixed address)."""
        if ip not in self.range:
            raise PoolError(f"{holder}: {ip} is outside the pool {self.range}")
        current = self._held.get(int(ip))
        if current is not None and current[1] != holder:
            raise PoolError(f"{holder}: {ip} is already held by {current[1]}")
        self._held[int(ip)] = (cluster, holder)

    def release(self, ip: IPAddress) -> None:
        self._held.pop(int(ip), None)

    def release_holder(self, holder: str) -> list[IPAddress]:
        gone = [ip for ip, (_, h) in self._held.items() if h == holder]
        for ip in gone:
            del self._held[ip]
        return [ipaddress.ip_address(ip) for ip in gone]

    def release_cluster(self, cluster: str) -> None:
        for ip in [ip for ip, (c, _) in self._held.items() if c == cluster]:
            del self._held[ip]
        self.reservations.pop(cluster, None)

    def holder_of(self, ip: IPAddress) -> str | None:
        held = self._held.get(int(ip))
        return held[1] if held else None

    def held(self) -> dict[str, str]:
        return {str(ipaddress.ip_address(ip)): h for ip, (_, h) in sorted(self._held.items())}


@dataclass(frozen=True, slots=True)
class VipUse:
    cluster: str
    holder: str  # "apiserver" or a Service "ns/name"
    port: int | None  # None: the whole address (an API server VIP is exclusive to its cluster)


class VipPool:
    """A VIP pool.  An API server VIP is exclusive; Service VIPs are handed out per IP-and-port
    (FACTS.md known issue: two clusters whose Services use different ports can be given the
    *same* VIP), so an address is shared while the port differs."""

    def __init__(self, rng: IpRange) -> None:
        self.range = rng
        self._uses: dict[int, list[VipUse]] = {}

    @property
    def size(self) -> int:
        return self.range.size

    @property
    def used(self) -> int:
        return len(self._uses)

    @property
    def free(self) -> int:
        return self.size - self.used

    def _fits(self, ip: int, port: int | None) -> bool:
        uses = self._uses.get(ip)
        if not uses:
            return True
        if port is None:
            return False
        return all(u.port is not None and u.port != port for u in uses)

    def allocate(self, cluster: str, holder: str, port: int | None = None) -> IPAddress:
        base = int(self.range.start)
        for offset in range(self.size):
            if self._fits(base + offset, port):
                self._uses.setdefault(base + offset, []).append(VipUse(cluster, holder, port))
                return ipaddress.ip_address(base + offset)
        what = "free address" if port is None else f"address with port {port} free"
        raise PoolError(f"{holder}: the VIP pool {self.range} has no {what} left")

    def take(self, ip: IPAddress, cluster: str, holder: str, port: int | None = None) -> None:
        if ip not in self.range:
            raise PoolError(f"{holder}: {ip} is outside the VIP pool {self.range}")
        if not self._fits(int(ip), port):
            raise PoolError(f"{holder}: VIP {ip} is already in use")
        self._uses.setdefault(int(ip), []).append(VipUse(cluster, holder, port))

    def _fits_service(self, ip: int, cluster: str, holder: str, ports: Collection[int], exclusive: bool) -> bool:
        uses = [u for u in self._uses.get(ip, []) if not (u.cluster == cluster and u.holder == holder)]
        if exclusive and any(u.cluster != cluster for u in uses):
            return False  # the exclusive allocator: an address belongs to one cluster
        return all(u.port is not None and u.port not in ports for u in uses)

    def allocate_service(self, cluster: str, holder: str, ports: Collection[int], *, exclusive: bool = False,
                         ip: IPAddress | None = None, pool_name: str = "",
                         avoid: Collection[IPAddress] = ()) -> IPAddress:
        """A LoadBalancer Service's VIP: the lowest address whose ``(IP, port)`` mappings are
        free for every port (as shipped), or, ``exclusive``, whose other users are all of
        ``cluster``; ``ip`` (``spec.loadBalancerIP``) is taken if it fits, else refused.
        Re-ensuring keeps the holder's current address when it still fits; ``avoid``: addresses
        it must not share (an internal Service's with a public one's, and the reverse)."""
        where = f"VIP pool {pool_name + ' ' if pool_name else ''}{self.range}"
        current = [a for a, uses in self._uses.items() if any(u.cluster == cluster and u.holder == holder
                                                                for u in uses)]
        if ip is not None:
            if ip not in self.range:
                raise PoolError(f"loadBalancerIP: {ip} is outside the {where}")
            candidates = [int(ip)]
        else:
            base = int(self.range.start)
            candidates = current + [base + o for o in range(self.size) if base + o not in current]
        for cand in candidates:
            if self._fits_service(cand, cluster, holder, ports, exclusive) and ipaddress.ip_address(cand) not in avoid:
                self.release(cluster, holder)
                self._uses.setdefault(cand, []).extend(VipUse(cluster, holder, p) for p in sorted(set(ports)))
                return ipaddress.ip_address(cand)
        if ip is not None:
            raise PoolError(f"loadBalancerIP: {ip} is already in use (ports {', '.join(map(str, sorted(ports)))})")
        raise PoolError(f"{holder}: the {where} has no address with port(s) "
                        f"{', '.join(map(str, sorted(ports)))} free left ({self.used} of {self.size} addresses in use)")

    def release(self, cluster: str, holder: str) -> None:
        for ip in list(self._uses):
            kept = [u for u in self._uses[ip] if not (u.cluster == cluster and u.holder == holder)]
            if kept:
                self._uses[ip] = kept
            else:
                del self._uses[ip]

    def release_cluster(self, cluster: str) -> None:
        for ip in list(self._uses):
            kept = [u for u in self._uses[ip] if u.cluster != cluster]
            if kept:
                self._uses[ip] = kept
            else:
                del self._uses[ip]

    def uses(self) -> dict[str, list[VipUse]]:
        return {str(ipaddress.ip_address(ip)): list(u) for ip, u in sorted(self._uses.items())}


@dataclass(slots=True)
class NetworkPools:
    spec: NetworkSpec
    segment: str  # the broker network its NICs attach to
    node: AddressPool | None = None
    vip: VipPool | None = None
    clusters: set[str] = field(default_factory=set)


class Ipam:
    """Every network's pools; the cloud agent's address book (rebuilt from the store at start)."""

    def __init__(self) -> None:
        self.networks: dict[str, NetworkPools] = {}

    def add_network(self, spec: NetworkSpec, segment: str | None = None) -> NetworkPools:
        if segment is None:
            segment = segment_of(spec, ((n.spec, n.segment) for n in self.networks.values()))
        pools = NetworkPools(spec=spec, segment=segment,
                             node=AddressPool(spec.node_pool) if spec.node_pool is not None else None,
                             vip=VipPool(spec.vip_pool) if spec.vip_pool is not None else None)
        self.networks[spec.name] = pools
        return pools

    def remove_network(self, name: str) -> None:
        pools = self.get(name)
        if pools.clusters:
            raise PoolError(f"name: network {name} is used by cluster {', '.join(sorted(pools.clusters))}")
        del self.networks[name]

    def get(self, name: str) -> NetworkPools:
        try:
            return self.networks[name]
        except KeyError:
            known = ", ".join(sorted(self.networks)) or "none yet"
            raise PoolError(f"network: no network named {name!r} (networks: {known})") from None

    def specs(self) -> list[NetworkSpec]:
        return [n.spec for n in self.networks.values()]

    # -- sizing --

    def check_cluster(self, spec: ClusterSpec) -> None:
        """Refuse up front a cluster whose pools cannot hold it (SizingError names the pool)."""
        net = self.get(spec.vnet)
        if net.spec.external:
            raise PoolError(f"vnet: network {net.spec.name} is external: it has no AKS pools")
        if net.node is not None:
            self._check_fit(spec.name, net, demand_of(spec), "the cluster")
        assert net.vip is not None
        if net.vip.free < 1:
            raise SizingError(f"{spec.name}: VIP pool of network {net.spec.name} has {_n(net.vip.free, 'free address', 'free addresses')}, "
                              f"the cluster needs 1 (1 API server VIP): short by 1")

    def _check_fit(self, cluster: str, net: NetworkPools, demand: Demand, who: str) -> None:
        assert net.node is not None
        have = net.node.available
        if have < demand.total:
            raise SizingError(
                f"{cluster}: node IP pool of network {net.spec.name} has "
                f"{_n(have, 'free address', 'free addresses')}, {who} needs {demand.total} "
                f"({demand.describe()}): short by {demand.total - have}")

    def reserve_cluster(self, spec: ClusterSpec) -> None:
        self.check_cluster(spec)
        net = self.get(spec.vnet)
        if net.node is not None:
            net.node.reserve(spec.name, demand_of(spec).total)
        net.clusters.add(spec.name)

    def restore_cluster(self, name: str, network: str, reservation: int) -> None:
        net = self.get(network)
        if net.node is not None:
            net.node.reservations[name] = reservation
        net.clusters.add(name)

    def reservation(self, cluster: str, network: str) -> int:
        node = self.get(network).node
        return node.reservations.get(cluster, 0) if node is not None else 0

    def grow(self, cluster: str, network: str, workers: int, pool: str) -> None:
        """A scale-up of ``workers`` nodes: the pool must have that many more addresses."""
        net = self.get(network)
        if net.node is None or workers <= 0:
            return
        self._check_fit(cluster, net, Demand(workers=workers), f"node pool {pool}")
        net.node.reserve(cluster, workers)

    def shrink(self, cluster: str, network: str, workers: int) -> None:
        net = self.get(network)
        if net.node is not None and workers > 0:
            net.node.shrink(cluster, workers)

    # -- addresses --

    def allocate_node_ip(self, network: str, cluster: str | None, holder: str) -> IPAddress | None:
        """A node-pool address (static model), or None: the VM leases one (DHCP model)."""
        node = self.get(network).node
        return None if node is None else node.allocate(cluster, holder)

    def allocate_vip(self, network: str, cluster: str, holder: str, port: int | None = None) -> IPAddress:
        vip = self.get(network).vip
        if vip is None:
            raise PoolError(f"network: {network} has no VIP pool")
        return vip.allocate(cluster, holder, port)

    def release_vm(self, network: str, holder: str) -> None:
        node = self.get(network).node
        if node is not None:
            node.release_holder(holder)

    def release_cluster(self, cluster: str) -> None:
        for net in self.networks.values():
            if net.node is not None:
                net.node.release_cluster(cluster)
            if net.vip is not None:
                net.vip.release_cluster(cluster)
            net.clusters.discard(cluster)

    def pool_containing(self, network: str, ip: IPAddress) -> str | None:
        """Which pool of ``network`` an address lies in (a fixed address must avoid them)."""
        spec = self.get(network).spec
        for (_, _, what), rng in spec.pools():
            if ip in rng:
                return f"the {what} {rng}"
        return None

    def usage(self) -> list[dict[str, Any]]:
        """Pools used/free per network (``hcinet status``)."""
        out = []
        for net in self.networks.values():
            row: dict[str, Any] = {"name": net.spec.name, "model": net.spec.model, "segment": net.segment,
                                   "prefix": str(net.spec.prefix)}
            if net.node is not None:
                row["nodePool"] = {"range": str(net.node.range), "size": net.node.size, "used": net.node.used,
                                   "free": net.node.free, "reserved": sum(net.node.reservations.values()),
                                   "available": net.node.available}
            if net.spec.dhcp_scope is not None:
                row["dhcpScope"] = {"range": str(net.spec.dhcp_scope), "size": net.spec.dhcp_scope.size}
            if net.vip is not None:
                row["vipPool"] = {"range": str(net.vip.range), "size": net.vip.size, "used": net.vip.used,
                                  "free": net.vip.free}
            row["clusters"] = sorted(net.clusters)
            out.append(row)
        return out


# --- MAC addresses -------------------------------------------------------------------------


def mac_for(ip: IPAddress) -> str:
    """A locally administered unicast MAC from the address (the scenario loader's rule).

    IPv4: ``02:00`` + the four address bytes; IPv6: ``02`` + the last five bytes.
    """
    raw = ip.packed[-4:] if ip.version == 4 else ip.packed[-5:]
    octets = (b"\x02\x00" + raw) if ip.version == 4 else (b"\x02" + raw)
    return ":".join(f"{b:02x}" for b in octets)


def mac_for_name(name: str) -> str:
    """A MAC for a NIC whose address is leased (DHCP model): ``02:01`` + 4 bytes of its name's hash."""
    digest = hashlib.sha256(name.encode()).digest()[:4]
    return ":".join(f"{b:02x}" for b in b"\x02\x01" + digest)

"""Scenario files: load, validate, and turn into frozen dataclasses (v2: the control plane).

A scenario describes the datacenter as data (Mininet's topology-vs-network split): which
networks exist, which extra routes the gateway router has, which VMs sit where.  Bringing it
up is ``scenarios/runner.py``'s job.  Every error is one line naming the key path, e.g.
``networks[1].ipAddressPrefix: 10.0.0.0/33 is not a prefix``; unknown keys are errors too
(so a typo never silently does nothing).

Network keys use the parameter names of ``New-AksHciClusterNetwork`` (``ipAddressPrefix``,
``gateway``, ``vlanID``), so step 2 can add ``k8sNodeIpPoolStart`` / ``vipPoolStart`` and
friends to the same objects.

.. code-block:: yaml

    name: fabric-demo
    time_scale: 1.0              # > 0; later steps scale timers by it
    networks:
      - {name: dc, ipAddressPrefix: 172.16.0.0/24, gateway: 172.16.0.1, vlanID: 0, mtu: 1500}
      - {name: internet, ipAddressPrefix: 203.0.113.0/24, gateway: 203.0.113.1, external: true}
    routes:                      # extra routes of the gateway router (each network's own
      - {prefix: 198.51.100.0/24, network: dc, sources: [dc]}   # prefix is routed already)
    vms:
      - {name: vm-a, network: dc, ip: 172.16.0.10, apps: [{kind: udp-echo, port: 7}]}
      - name: vm-r
        nics: [{name: eth0, network: dc, ip: 172.16.0.20}, {name: eth1, network: internet, ip: 203.0.113.20}]

Version 2 (step 2) adds the AKS-HCI deployment, brought up through MOC (every key is
documented in docs/scenario.md; ``scenarios/default.yaml`` is the demo):

.. code-block:: yaml

    networks:                    # + New-AksHciNetworkSetting / New-AksHciClusterNetwork parameters
      - {name: aks-net, vswitchName: External, ipAddressPrefix: 172.16.0.0/24, gateway: 172.16.0.1,
         dnsServers: [172.16.0.2], vlanID: 0,
         k8sNodeIpPoolStart: 172.16.0.20, k8sNodeIpPoolEnd: 172.16.0.99,   # static IP model, or
         # dhcpScopeStart / dhcpScopeEnd                                   # the DHCP model
         vipPoolStart: 172.16.0.150, vipPoolEnd: 172.16.0.199}
    management: {network: aks-net, cloudAgentIp: 172.16.0.5}
    clusters:                    # New-AksHciCluster; only `name` is required
      - {name: cluster1, vnet: aks-net, primaryNetworkPlugin: calico, controlPlaneNodeCount: 1,
         loadBalancerSku: HAProxy, nodeMaxPodCount: 110,
         kubeProxyMode: iptables, ipvsScheduler: rr,     # kube-proxy on its nodes (ipvs: rr | lc)
         ipFamilies: [IPv4],                             # [IPv4, IPv6]: dual stack (Calico only)
         nodePools: [{name: cluster1-linux, osType: linux, nodeCount: 2}]}
    clients:                     # plain VMs created through MOC
      - {name: client-dc, network: aks-net, ip: 172.16.0.10, apps: [{kind: http, port: 8080}]}
    dns:                         # datacenter DNS servers (VM kind dns, through MOC), each at one of
      - name: dc-dns             # its network's dnsServers; every VM there resolves through them
        network: aks-net
        ip: 172.16.0.2
        records: [{name: db.corp.example, type: A, value: 172.16.0.10}]

Pool, cluster and sizing rules (inside the prefix, the gateway outside every pool, no overlap,
the VIP pool outside the DHCP scope; a cluster that does not fit its pools) are MOC's own
(``agents/moc/pools.py``), so a scenario and ``hcinet network create`` / ``cluster create``
refuse with the same message.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agents.dns.datacenter import StaticZone, StaticZoneError
from agents.moc import pools

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 1123 label, as Kubernetes requires of most names: it ends up in file names and NIC names.
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NIC_RE = re.compile(r"^[a-z][a-z0-9]{0,14}$")  # Linux IFNAMSIZ: at most 15 characters
# IEEE 802.1Q: VID 0 means "no VLAN" (priority tag only), 4095 is reserved.
VLAN_MAX = 4094
# Smallest MTU a link may have: RFC 791 (IPv4: 68), RFC 8200 section 5 (IPv6: 1280).
MTU_MIN = {4: 68, 6: 1280}
MTU_MAX = 9216  # the usual jumbo-frame ceiling of datacenter switches
RESERVED_VM_NAMES = frozenset({"broker", "hostagent", "moc-cloudagent"})
MOC_VM = "moc-cloudagent"  # the MOC cloud agent's VM (docs/contracts-control-plane.md)

# Sections of later steps: recognised, refused with a clear message until their step lands.
LATER_SECTIONS: tuple[str, ...] = ()


class ScenarioError(ValueError):
    """An invalid scenario; ``str()`` is one line: ``key.path: what is wrong``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True, slots=True, kw_only=True)
class IpRange:
    """An inclusive address range (``k8sNodeIpPoolStart..End`` and friends)."""

    start: IPAddress
    end: IPAddress

    def __contains__(self, ip: object) -> bool:
        return (isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
                and ip.version == self.start.version and self.start <= ip <= self.end)  # type: ignore[operator]

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1

    def overlaps(self, other: IpRange) -> bool:
        return (self.start.version == other.start.version
                and self.start <= other.end and other.start <= self.end)  # type: ignore[operator]

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    """A virtual network (Hyper-V switch + AKS-HCI network object).

    A network with a VIP pool is an AKS network (``New-AksHciClusterNetwork``): static IP
    model with a node IP pool, or DHCP model with the scope the datacenter router's DHCP
    service hands out.  Without one it is only fabric (e.g. the external network).
    """

    name: str
    prefix: IPNetwork  # ipAddressPrefix
    gateway: IPAddress
    vlan_id: int = 0  # vlanID; 0 = untagged
    mtu: int = 1500
    external: bool = False
    vswitch_name: str | None = None  # vswitchName
    dns_servers: tuple[IPAddress, ...] = ()  # dnsServers (1..3)
    node_pool: IpRange | None = None  # k8sNodeIpPoolStart..End: the static IP model
    dhcp_scope: IpRange | None = None  # dhcpScopeStart..End: the DHCP model
    vip_pool: IpRange | None = None  # vipPoolStart..End
    vip_allocation: str = "shared-ports"  # vipAllocation: shared-ports (as shipped) | exclusive

    @property
    def model(self) -> str | None:
        """``"static"``, ``"dhcp"`` or None (not an AKS network)."""
        return "static" if self.node_pool else "dhcp" if self.dhcp_scope else None

    def pools(self) -> list[tuple[str, IpRange]]:
        """``[(what, range)]``: every pool of the network, for error messages."""
        named = (("node IP pool", self.node_pool), ("DHCP scope", self.dhcp_scope), ("VIP pool", self.vip_pool))
        return [(what, r) for what, r in named if r is not None]

    def mgmt_args(self) -> dict[str, Any]:
        """The broker's ``add_network`` arguments (``dhcp_scope`` for the router's DHCP service)."""
        args: dict[str, Any] = {"name": self.name, "prefix": str(self.prefix), "gateway": str(self.gateway),
                                "vlan": self.vlan_id, "mtu": self.mtu, "external": self.external}
        if self.dhcp_scope is not None:
            args["dhcp_scope"] = [str(self.dhcp_scope.start), str(self.dhcp_scope.end)]
            args["dns"] = [str(d) for d in self.dns_servers if d.version == 4]
        return args

    def doc(self) -> dict[str, Any]:
        """The scenario keys (what MOC's ``network_create`` takes, and ``parse`` reads back)."""
        out: dict[str, Any] = {"name": self.name, "ipAddressPrefix": str(self.prefix),
                               "gateway": str(self.gateway), "vlanID": self.vlan_id, "mtu": self.mtu,
                               "external": self.external}
        if self.vswitch_name is not None:
            out["vswitchName"] = self.vswitch_name
        if self.dns_servers:
            out["dnsServers"] = [str(d) for d in self.dns_servers]
        for key, r in (("k8sNodeIpPool", self.node_pool), ("dhcpScope", self.dhcp_scope),
                       ("vipPool", self.vip_pool)):
            if r is not None:
                out[f"{key}Start"], out[f"{key}End"] = str(r.start), str(r.end)
        if self.vip_allocation != "shared-ports":
            out["vipAllocation"] = self.vip_allocation
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """An extra route of the gateway router: ``prefix`` is reached on ``network``."""

    prefix: IPNetwork
    network: str
    sources: tuple[str, ...] | None = None  # networks allowed to use it; None = all

    def mgmt_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"prefix": str(self.prefix), "network": self.network}
        if self.sources is not None:
            args["sources"] = list(self.sources)
        return args


@dataclass(frozen=True, slots=True, kw_only=True)
class Nic:
    name: str
    network: str
    ip: IPAddress
    mac: str


@dataclass(frozen=True, slots=True, kw_only=True)
class App:
    kind: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Vm:
    name: str
    kind: str = "plain"
    nics: tuple[Nic, ...]
    apps: tuple[App, ...] = ()

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(str(n.ip) for n in self.nics)


@dataclass(frozen=True, slots=True, kw_only=True)
class Management:
    """The AKS host network (``New-AksHciNetworkSetting``) and the MOC cloud agent's address."""

    network: str
    cloud_agent_ip: IPAddress

    def doc(self) -> dict[str, Any]:
        return {"network": self.network, "cloudAgentIp": str(self.cloud_agent_ip)}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePool:
    name: str
    os_type: str = "linux"  # linux | windows
    node_count: int = 1

    def doc(self) -> dict[str, Any]:
        return {"name": self.name, "osType": self.os_type, "nodeCount": self.node_count}

    def vm_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.node_count)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    """A workload cluster (``New-AksHciCluster``)."""

    name: str
    vnet: str
    network_plugin: str = "calico"  # primaryNetworkPlugin
    control_plane_count: int = 1  # controlPlaneNodeCount
    load_balancer_sku: str = "HAProxy"  # loadBalancerSku: HAProxy | none
    max_pods: int = 110  # nodeMaxPodCount
    node_pools: tuple[NodePool, ...] = ()
    kube_proxy_mode: str = "iptables"  # kubeProxyMode: iptables | ipvs
    ipvs_scheduler: str = "rr"  # ipvsScheduler: rr | lc (ipvs mode only)
    ip_families: tuple[str, ...] = ("IPv4",)  # ipFamilies: [IPv4] | [IPv4, IPv6] (dual stack, Calico)

    def doc(self) -> dict[str, Any]:
        """The scenario keys, which are also MOC's ``cluster_create`` arguments."""
        out = {"name": self.name, "vnet": self.vnet, "primaryNetworkPlugin": self.network_plugin,
               "controlPlaneNodeCount": self.control_plane_count, "loadBalancerSku": self.load_balancer_sku,
               "nodeMaxPodCount": self.max_pods, "nodePools": [p.doc() for p in self.node_pools],
               "kubeProxyMode": self.kube_proxy_mode, "ipvsScheduler": self.ipvs_scheduler}
        if self.ip_families != ("IPv4",):
            out["ipFamilies"] = list(self.ip_families)
        return out

    def vm_names(self) -> list[str]:
        """Every VM MOC creates for it (docs/contracts-control-plane.md, "VM names")."""
        names = [f"{self.name}-control-plane-{i}" for i in range(self.control_plane_count)]
        if self.load_balancer_sku == "HAProxy":
            names.append(f"{self.name}-lb")
        return names + [n for p in self.node_pools for n in p.vm_names()]

    @property
    def node_count(self) -> int:
        """Nodes that register with the API server: control plane + workers."""
        return self.control_plane_count + sum(p.node_count for p in self.node_pools)


@dataclass(frozen=True, slots=True, kw_only=True)
class Client:
    """A client VM created through MOC: a static address or a DHCP lease, and its apps."""

    name: str
    network: str
    ip: IPAddress | None = None  # None: DHCP
    apps: tuple[App, ...] = ()

    @property
    def dhcp(self) -> bool:
        return self.ip is None

    def doc(self) -> dict[str, Any]:
        """The scenario keys, which are also MOC's ``client_create`` arguments."""
        out: dict[str, Any] = {"name": self.name, "network": self.network}
        if self.ip is None:
            out["dhcp"] = True
        else:
            out["ip"] = str(self.ip)
        if self.apps:
            out["apps"] = [{"kind": a.kind, "port": a.port} for a in self.apps]
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsRecord:
    """One zone record of a datacenter DNS VM (``type`` A, AAAA, CNAME, PTR, TXT, MX, SRV, NS)."""

    name: str
    type: str
    value: str

    def doc(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type, "value": self.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsVm:
    """A datacenter DNS server (VM kind ``dns``, created through MOC like a client VM): it
    sits at one of its network's ``dnsServers`` addresses and answers from its records."""

    name: str
    network: str
    ip: IPAddress
    records: tuple[DnsRecord, ...] = ()
    zones: tuple[str, ...] | None = None  # None: each record name's last two labels

    def doc(self) -> dict[str, Any]:
        """The scenario keys."""
        out: dict[str, Any] = {"name": self.name, "network": self.network, "ip": str(self.ip),
                               "records": [r.doc() for r in self.records]}
        if self.zones is not None:
            out["zones"] = list(self.zones)
        return out

    def moc_args(self) -> dict[str, Any]:
        """MOC's ``client_create`` arguments: a client VM of kind ``dns``."""
        return {**self.doc(), "kind": "dns"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    time_scale: float = 1.0
    networks: tuple[Network, ...]
    routes: tuple[Route, ...] = ()
    vms: tuple[Vm, ...] = ()
    management: Management | None = None
    clusters: tuple[Cluster, ...] = ()
    clients: tuple[Client, ...] = ()
    dns: tuple[DnsVm, ...] = ()
    warnings: tuple[str, ...] = ()  # e.g. Flannel's retirement; printed to stderr
    manifests: tuple[ManifestSet, ...] = ()  # applied by `hcinet run` (not kept in doc())
    steps: tuple[Step, ...] = ()  # run by `hcinet run` (not kept in doc())

    @property
    def uses_moc(self) -> bool:
        """Does bringing it up need the MOC cloud agent? (clusters, clients or DNS VMs)"""
        return bool(self.clusters or self.clients or self.dns)

    def segment(self, name: str) -> str:
        """The broker network (wire) a network's NICs attach to: AKS network objects on one
        subnet share the first one's (as MOC's ``pools.segment_of``)."""
        net = self.network(name)
        for other in self.networks:
            if other.prefix == net.prefix and (other is net or (other.model and net.model)):
                return other.name
        return name

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

    def doc(self) -> dict[str, Any]:
        """The scenario as a document :func:`parse` accepts (state.json keeps it)."""
        out: dict[str, Any] = {
            "name": self.name, "time_scale": self.time_scale,
            "networks": [n.doc() for n in self.networks],
            "routes": [r.mgmt_args() for r in self.routes],
            "vms": [{"name": v.name, "kind": v.kind,
                     "nics": [{"name": n.name, "network": n.network, "ip": str(n.ip)} for n in v.nics],
                     "apps": [{"kind": a.kind, "port": a.port} for a in v.apps]} for v in self.vms],
        }
        if self.management is not None:
            out["management"] = self.management.doc()
        if self.clusters:
            out["clusters"] = [c.doc() for c in self.clusters]
        if self.clients:
            out["clients"] = [c.doc() for c in self.clients]
        if self.dns:
            out["dns"] = [d.doc() for d in self.dns]
        return out

    def network(self, name: str) -> Network:
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(name)

    def vm(self, name: str) -> Vm:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)


def mac_for(ip: IPAddress) -> str:
    """A deterministic, locally administered unicast MAC (IEEE 802: first octet 0x02).

    IPv4: ``02:00`` + the four address bytes (172.16.0.10 -> 02:00:ac:10:00:0a).
    IPv6: ``02`` + the last five address bytes.
    """
    raw = ip.packed[-4:] if ip.version == 4 else ip.packed[-5:]
    octets = (b"\x02\x00" + raw) if ip.version == 4 else (b"\x02" + raw)
    return ":".join(f"{b:02x}" for b in octets)


# --- loading --------------------------------------------------------------------------------

def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raise :class:`ScenarioError` (one line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError("", f"{path}: cannot read ({exc.strerror or exc})") from None
    return loads(text, path.parent)


def loads(text: str, base: Path | None = None) -> Scenario:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError("", f"not valid YAML{where}: {problem}") from None
    if doc is None:
        raise ScenarioError("", "the scenario is empty")
    return parse(doc, base)


def parse(doc: Any, base: Path | None = None) -> Scenario:
    """Validate a scenario document (the YAML as plain data); manifest paths are relative to
    ``base`` (the scenario file's directory; the working directory when None)."""
    for key in LATER_SECTIONS:
        if isinstance(doc, dict) and key in doc:
            raise ScenarioError(key, "not supported until a later step")
    doc, cluster_manifests = _split_cluster_manifests(doc)
    top = _mapping(doc, "", _TOP_KEYS, {"name", "networks"})
    name = _string(top["name"], "name")
    time_scale = _positive_float(top.get("time_scale", 1.0), "time_scale")
    networks = _networks(top["networks"])
    routes = _routes(top.get("routes") or [], networks)
    management = _management(top.get("management"), networks)
    owners: dict[IPAddress, str] = {}
    if management is not None:
        owners[management.cloud_agent_ip] = MOC_VM
    vms = _vms(top.get("vms") or [], networks, owners)
    clusters, warnings = _clusters(top.get("clusters") or [], networks, management, {v.name for v in vms})
    taken = {v.name for v in vms} | {n for c in clusters for n in c.vm_names()}
    dns = _dns_vms(top.get("dns") or [], networks, owners, taken)
    taken |= {d.name for d in dns}
    clients = _clients(top.get("clients") or [], networks, owners, taken)
    if (clusters or clients or dns) and management is None:
        raise ScenarioError("management", "required with clusters, clients or dns (where the MOC cloud agent "
                                          "runs: {network, cloudAgentIp})")
    manifest_sets = _manifests(cluster_manifests, top.get("manifests"), clusters, base)
    vm_names = [v.name for v in vms] + [n for c in clusters for n in c.vm_names()] + [d.name for d in dns] \
        + [c.name for c in clients]
    steps = _steps(top.get("steps"), vm_names, [c.name for c in clusters])
    return Scenario(name=name, time_scale=time_scale, networks=networks, routes=routes, vms=vms,
                    management=management, clusters=clusters, clients=clients, dns=dns, warnings=warnings,
                    manifests=manifest_sets, steps=steps)


_TOP_KEYS = {"name", "time_scale", "networks", "routes", "vms", "management", "clusters", "clients", "dns",
             "manifests", "steps"}


# --- sections -------------------------------------------------------------------------------

_NETWORK_KEYS = {"name", "ipAddressPrefix", "gateway", "vlanID", "mtu", "external", "vswitchName", "dnsServers",
                 "k8sNodeIpPoolStart", "k8sNodeIpPoolEnd", "dhcpScopeStart", "dhcpScopeEnd",
                 "vipPoolStart", "vipPoolEnd", "vipAllocation"}


def _networks(value: Any) -> tuple[Network, ...]:
    items = _list(value, "networks", nonempty=True)
    out: list[Network] = []
    for i, item in enumerate(items):
        out.append(_network(item, f"networks[{i}]", out))
    return tuple(out)


def _network(item: Any, path: str, earlier: list[Network]) -> Network:
    m = _mapping(item, path, _NETWORK_KEYS, {"name", "ipAddressPrefix", "gateway"})
    name = _label(m["name"], f"{path}.name")
    if any(n.name == name for n in earlier):
        raise ScenarioError(f"{path}.name", f"duplicate network name {name}")
    prefix = _prefix(m["ipAddressPrefix"], f"{path}.ipAddressPrefix")
    aks = any(m.get(k) is not None for k in _AKS_KEYS)
    for other in earlier:
        # Two AKS network objects on one subnet (one per cluster, the fix for the shared-VIP
        # known issue) are one wire; MOC's validator checks that their pools do not overlap.
        same_segment = aks and other.model is not None and other.prefix == prefix
        if other.prefix.version == prefix.version and other.prefix.overlaps(prefix) and not same_segment:
            raise ScenarioError(f"{path}.ipAddressPrefix",
                                f"{prefix} overlaps network {other.name} ({other.prefix})")
    gateway = _host_in(m["gateway"], f"{path}.gateway", prefix, f"network {name}")
    vlan = m.get("vlanID")
    vlan_id = 0 if vlan is None else _int(vlan, f"{path}.vlanID", 0, VLAN_MAX)
    mtu = _int(m.get("mtu", 1500), f"{path}.mtu", MTU_MIN[prefix.version], MTU_MAX)
    external = _bool(m.get("external", False), f"{path}.external")
    return Network(name=name, prefix=prefix, gateway=gateway, vlan_id=vlan_id, mtu=mtu, external=external,
                   **_aks_params(m, path, earlier))


_AKS_KEYS = ("vswitchName", "dnsServers", "k8sNodeIpPoolStart", "k8sNodeIpPoolEnd", "dhcpScopeStart",
             "dhcpScopeEnd", "vipPoolStart", "vipPoolEnd", "vipAllocation")


NETWORK_KEYS = frozenset(_NETWORK_KEYS)


def parse_network(item: Any, path: str, earlier: Iterable[Network] = ()) -> Network:
    """One network (``hcinet network create`` checks its flags with it)."""
    return _network(item, path, list(earlier))


def _aks_params(m: Mapping[str, Any], path: str, earlier: list[Network]) -> dict[str, Any]:
    """The AKS-HCI parameters, validated by MOC's own validator (``agents.moc.pools``), so a
    scenario and ``hcinet network create`` refuse a network with the same message."""
    if not any(m.get(k) is not None for k in _AKS_KEYS):
        return {}
    others = [_spec_of(n) for n in earlier if n.model is not None or n.external]
    spec = _pool_call(path, lambda: pools.parse_network(dict(m), others))
    return {"vswitch_name": spec.vswitch, "dns_servers": tuple(ipaddress.ip_address(d) for d in spec.dns_servers),
            "node_pool": _range_of(spec.node_pool), "dhcp_scope": _range_of(spec.dhcp_scope),
            "vip_pool": _range_of(spec.vip_pool), "vip_allocation": spec.vip_allocation}


def _spec_of(net: Network) -> pools.NetworkSpec:
    return pools.parse_network(net.doc())


def _range_of(r: pools.IpRange | None) -> IpRange | None:
    return None if r is None else IpRange(start=r.start, end=r.end)


T = TypeVar("T")


def _pool_call(path: str, fn: Callable[[], T]) -> T:
    """Run a MOC validator; its ``key: message`` errors get the scenario path in front."""
    try:
        return fn()
    except pools.SizingError as exc:  # "<cluster>: <pool> has N free addresses, ...": about the whole entry
        raise ScenarioError(path, str(exc)) from None
    except pools.PoolError as exc:
        key, sep, message = str(exc).partition(": ")
        if sep and " " not in key:
            raise ScenarioError(f"{path}.{key}" if path else key, message) from None
        raise ScenarioError(path, str(exc)) from None


def _routes(value: Any, networks: tuple[Network, ...]) -> tuple[Route, ...]:
    names = {n.name for n in networks}
    seen: set[tuple[IPNetwork, str]] = set()
    out = []
    for i, item in enumerate(_list(value, "routes")):
        path = f"routes[{i}]"
        m = _mapping(item, path, {"prefix", "network", "sources"}, {"prefix", "network"})
        prefix = _prefix(m["prefix"], f"{path}.prefix")
        network = _known(m["network"], f"{path}.network", names)
        sources = None
        if "sources" in m:
            sources = tuple(_known(s, f"{path}.sources[{j}]", names)
                            for j, s in enumerate(_list(m["sources"], f"{path}.sources", nonempty=True)))
        if (prefix, network) in seen:
            raise ScenarioError(f"{path}.prefix", f"duplicate route to {prefix} on network {network}")
        seen.add((prefix, network))
        out.append(Route(prefix=prefix, network=network, sources=sources))
    return tuple(out)


_VM_KEYS = {"name", "kind", "network", "ip", "nics", "apps"}


def _vms(value: Any, networks: tuple[Network, ...], owners: dict[IPAddress, str]) -> tuple[Vm, ...]:
    by_name = {n.name: n for n in networks}
    out: list[Vm] = []
    for i, item in enumerate(_list(value, "vms")):
        path = f"vms[{i}]"
        m = _mapping(item, path, _VM_KEYS, {"name"})
        name = _label(m["name"], f"{path}.name")
        if name in RESERVED_VM_NAMES:
            raise ScenarioError(f"{path}.name", f"{name} is reserved")
        if any(v.name == name for v in out):
            raise ScenarioError(f"{path}.name", f"duplicate VM name {name}")
        kind = _string(m.get("kind", "plain"), f"{path}.kind")
        nics = _vm_nics(m, path, name, by_name, owners)
        apps = _apps(m.get("apps") or [], f"{path}.apps")
        out.append(Vm(name=name, kind=kind, nics=nics, apps=apps))
    return tuple(out)


def _vm_nics(m: Mapping[str, Any], path: str, vm: str, networks: dict[str, Network],
             owners: dict[IPAddress, str]) -> tuple[Nic, ...]:
    if "nics" in m:
        for key in ("network", "ip"):
            if key in m:
                raise ScenarioError(f"{path}.{key}", "give either network and ip, or nics, not both")
        items = _list(m["nics"], f"{path}.nics", nonempty=True)
        specs = [(f"{path}.nics[{j}]", _mapping(it, f"{path}.nics[{j}]", {"name", "network", "ip"},
                                                  {"network", "ip"})) for j, it in enumerate(items)]
    else:
        for key in ("network", "ip"):
            if key not in m:
                raise ScenarioError(f"{path}.{key}", "required (or give nics)")
        specs = [(path, {"network": m["network"], "ip": m["ip"]})]  # one NIC, eth0
    nics: list[Nic] = []
    for j, (npath, spec) in enumerate(specs):
        nic_name = _nic_name(spec.get("name", f"eth{j}"), f"{npath}.name")
        if any(n.name == nic_name for n in nics):
            raise ScenarioError(f"{npath}.name", f"duplicate NIC name {nic_name}")
        net = networks[_known(spec["network"], f"{npath}.network", set(networks))]
        ip = _vm_ip(spec["ip"], f"{npath}.ip", net, owners)
        owners[ip] = f"{vm}/{nic_name}"
        nics.append(Nic(name=nic_name, network=net.name, ip=ip, mac=mac_for(ip)))
    return tuple(nics)


def _vm_ip(value: Any, path: str, net: Network, owners: dict[IPAddress, str]) -> IPAddress:
    ip = _host_in(value, path, net.prefix, f"network {net.name}")
    if ip == net.gateway:
        raise ScenarioError(path, f"{ip} is the gateway of network {net.name}")
    if ip in owners:
        raise ScenarioError(path, f"{ip} is already taken by {owners[ip]}")
    for what, r in net.pools():  # MOC hands these out: a fixed address there would collide
        if ip in r:
            raise ScenarioError(path, f"{ip} is inside the {what} of network {net.name} ({r})")
    return ip


def _management(value: Any, networks: tuple[Network, ...]) -> Management | None:
    if value is None:
        return None
    m = _mapping(value, "management", {"network", "cloudAgentIp"}, {"network", "cloudAgentIp"})
    by_name = {n.name: n for n in networks}
    net = by_name[_known(m["network"], "management.network", set(by_name))]
    if net.external:
        raise ScenarioError("management.network", f"{net.name} is the external network, not a datacenter one")
    ip = _vm_ip(m["cloudAgentIp"], "management.cloudAgentIp", net, {})
    return Management(network=net.name, cloud_agent_ip=ip)


_CLUSTER_KEYS = {"name", "vnet", "primaryNetworkPlugin", "controlPlaneNodeCount", "loadBalancerSku",
                 "nodeMaxPodCount", "nodePools", "kubeProxyMode", "ipvsScheduler", "ipFamilies"}


def _clusters(value: Any, networks: tuple[Network, ...], management: Management | None,
              vm_names: set[str]) -> tuple[tuple[Cluster, ...], tuple[str, ...]]:
    """Every cluster, validated and sized by MOC's rules (``agents.moc.pools``), as
    ``cluster_create`` would one after the other: a scenario that does not fit is refused
    before anything starts, naming the pool and the shortfall."""
    ipam = pools.Ipam()
    for net in networks:
        if net.model is not None:
            ipam.add_network(_spec_of(net))
    out: list[Cluster] = []
    warnings: list[str] = []
    owners = {n: f"VM {n}" for n in vm_names}  # VM name -> who made it, for collisions
    for i, item in enumerate(_list(value, "clusters")):
        path = f"clusters[{i}]"
        cluster, warned = parse_cluster(item, path, networks, None if management is None else management.network)
        if any(c.name == cluster.name for c in out):
            raise ScenarioError(f"{path}.name", f"duplicate cluster name {cluster.name}")
        for name in cluster.vm_names():
            if name in owners or name in RESERVED_VM_NAMES:
                raise ScenarioError(f"{path}.nodePools",
                                    f"VM name {name} of cluster {cluster.name} is already used by "
                                    f"{owners.get(name, 'the deployment')}")
            owners[name] = f"cluster {cluster.name}"
        spec, _ = pools.parse_cluster(cluster.doc(), list(ipam.networks))  # valid: parse_cluster said so
        _pool_call(path, partial(ipam.reserve_cluster, spec))
        _pool_call(path, partial(ipam.allocate_vip, cluster.vnet, cluster.name, "apiserver", pools.APISERVER_PORT))
        out.append(cluster)
        warnings += [f"{path}: {w}" for w in warned]
    return tuple(out), tuple(warnings)


def parse_cluster(item: Any, path: str, networks: Iterable[Network],
                  default_vnet: str | None) -> tuple[Cluster, list[str]]:
    """One ``clusters[]`` entry with New-AksHciCluster's defaults, validated by MOC's rules
    (also what ``hcinet cluster create`` sends); returns the cluster and its warnings."""
    m = dict(_mapping(item, path, _CLUSTER_KEYS, {"name"}))
    by_name = {n.name: n for n in networks}
    if m.get("vnet") is None and default_vnet is not None:
        m["vnet"] = default_vnet
    aks = [n for n, net in by_name.items() if net.model is not None]
    if isinstance(m.get("vnet"), str) and m["vnet"] in by_name and m["vnet"] not in aks:
        raise ScenarioError(f"{path}.vnet", f"network {m['vnet']} is not an AKS network (no VIP pool, no "
                                            "k8sNodeIpPool or DHCP scope)")
    spec, warnings = _pool_call(path, lambda: pools.parse_cluster(m, aks))
    node_pools = tuple(NodePool(name=p.name, os_type=p.os_type, node_count=p.count) for p in spec.node_pools)
    cluster = Cluster(name=spec.name, vnet=spec.vnet, network_plugin=spec.network_plugin,
                      control_plane_count=spec.control_plane_count, load_balancer_sku=spec.lb_sku,
                      max_pods=spec.max_pods, node_pools=node_pools, kube_proxy_mode=spec.kube_proxy_mode,
                      ipvs_scheduler=spec.ipvs_scheduler, ip_families=spec.ip_families)
    return cluster, list(warnings)


def parse_node_pool(item: Any, path: str, cluster: str) -> NodePool:
    """One node pool (``New-AksHciNodePool``), by MOC's rules."""
    p = _pool_call(path, lambda: pools.parse_node_pool(item, "", cluster))
    return NodePool(name=p.name, os_type=p.os_type, node_count=p.count)


def _clients(value: Any, networks: tuple[Network, ...], owners: dict[IPAddress, str],
             taken: set[str]) -> tuple[Client, ...]:
    by_name = {n.name: n for n in networks}
    out: list[Client] = []
    for i, item in enumerate(_list(value, "clients")):
        path = f"clients[{i}]"
        m = _mapping(item, path, {"name", "network", "ip", "dhcp", "apps"}, {"name", "network"})
        name = _label(m["name"], f"{path}.name")
        if name in RESERVED_VM_NAMES:
            raise ScenarioError(f"{path}.name", f"{name} is reserved")
        if name in taken or any(c.name == name for c in out):
            raise ScenarioError(f"{path}.name", f"duplicate VM name {name}")
        net = _moc_network(m["network"], f"{path}.network", by_name)
        dhcp = _bool(m.get("dhcp", False), f"{path}.dhcp")
        ip: IPAddress | None = None
        if dhcp:
            if m.get("ip") is not None:
                raise ScenarioError(f"{path}.ip", "give either ip or dhcp: true, not both")
            if net.dhcp_scope is None:
                raise ScenarioError(f"{path}.dhcp", f"network {net.name} has no DHCP scope (dhcpScopeStart/End)")
        else:
            if m.get("ip") is None:
                raise ScenarioError(f"{path}.ip", "required (or dhcp: true)")
            ip = _vm_ip(m["ip"], f"{path}.ip", net, owners)
            owners[ip] = name
        apps = _apps(m.get("apps") or [], f"{path}.apps")
        out.append(Client(name=name, network=net.name, ip=ip, apps=apps))
    return tuple(out)


def _moc_network(value: Any, path: str, by_name: dict[str, Network]) -> Network:
    net = by_name[_known(value, path, set(by_name))]
    if net.model is None and not net.external:
        raise ScenarioError(path, f"network {net.name} is neither an AKS network (pools) nor "
                                  "external: MOC, which creates client VMs, does not manage it")
    return net


def _dns_vms(value: Any, networks: tuple[Network, ...], owners: dict[IPAddress, str],
             taken: set[str]) -> tuple[DnsVm, ...]:
    """``dns``: the datacenter's DNS servers.  Each sits at an address its network lists in
    ``dnsServers`` (that is how VMs find it); its records are checked as the VM will load them."""
    by_name = {n.name: n for n in networks}
    out: list[DnsVm] = []
    for i, item in enumerate(_list(value, "dns")):
        path = f"dns[{i}]"
        m = _mapping(item, path, {"name", "network", "ip", "records", "zones"}, {"name", "network", "ip"})
        name = _label(m["name"], f"{path}.name")
        if name in RESERVED_VM_NAMES:
            raise ScenarioError(f"{path}.name", f"{name} is reserved")
        if name in taken or any(d.name == name for d in out):
            raise ScenarioError(f"{path}.name", f"duplicate VM name {name}")
        net = _moc_network(m["network"], f"{path}.network", by_name)
        ip = _vm_ip(m["ip"], f"{path}.ip", net, owners)
        if ip not in net.dns_servers:
            listed = ", ".join(str(d) for d in net.dns_servers) or "none"
            raise ScenarioError(f"{path}.ip", f"{ip} is not one of network {net.name}'s dnsServers ({listed}): "
                                              "no VM would ask it")
        owners[ip] = name
        records, zones = _dns_records(m, path)
        out.append(DnsVm(name=name, network=net.name, ip=ip, records=records, zones=zones))
    return tuple(out)


def _dns_records(m: Mapping[str, Any], path: str) -> tuple[tuple[DnsRecord, ...], tuple[str, ...] | None]:
    items = _list(m.get("records") or [], f"{path}.records")
    zones = None
    if m.get("zones") is not None:
        zones = tuple(_string(z, f"{path}.zones[{j}]") for j, z in enumerate(_list(m["zones"], f"{path}.zones")))
    try:  # the DNS VM's own loader: a record it would refuse is refused here, by the same words
        StaticZone(items, zones=zones, where=f"{path}.records")
    except StaticZoneError as exc:
        where, _, message = str(exc).partition(": ")
        raise ScenarioError(where, message) from None
    records = tuple(DnsRecord(name=str(r["name"]), type=str(r.get("type", "A")).upper(), value=str(r["value"]))
                    for r in items)
    return records, zones


def _apps(value: Any, path: str) -> tuple[App, ...]:
    out: list[App] = []
    for i, item in enumerate(_list(value, path)):
        m = _mapping(item, f"{path}[{i}]", {"kind", "port"}, {"kind", "port"})
        app = App(kind=_string(m["kind"], f"{path}[{i}].kind"), port=_int(m["port"], f"{path}[{i}].port", 1, 65535))
        if app in out:
            raise ScenarioError(f"{path}[{i}]", f"duplicate app {app.kind} on port {app.port}")
        out.append(app)
    return tuple(out)


# --- field validators (each raises ScenarioError naming the path) ---------------------------

def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "empty"}.get(type(value), type(value).__name__)


def _mapping(value: Any, path: str, known: set[str], required: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(path, f"expected a mapping, got {_type_name(value)}")
    prefix = f"{path}." if path else ""
    for key in value:
        if key not in known:
            raise ScenarioError(f"{prefix}{key}", f"unknown key (known: {', '.join(sorted(known))})")
    for key in sorted(required):
        if key not in value or value[key] is None:
            raise ScenarioError(f"{prefix}{key}", "required")
    return value


def _list(value: Any, path: str, nonempty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise ScenarioError(path, f"expected a list, got {_type_name(value)}")
    if nonempty and not value:
        raise ScenarioError(path, "must not be empty")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScenarioError(path, f"expected a non-empty string, got {_type_name(value)}")
    return value


def _label(value: Any, path: str) -> str:
    text = _string(value, path)
    if not _LABEL_RE.match(text):
        raise ScenarioError(path, f"{text!r} is not a valid name (RFC 1123 label: lower-case letters, "
                                  "digits and '-', at most 63)")
    return text


def _nic_name(value: Any, path: str) -> str:
    text = _string(value, path)
    if not _NIC_RE.match(text):
        raise ScenarioError(path, f"{text!r} is not a NIC name (a letter, then letters or digits, at most 15)")
    return text


def _known(value: Any, path: str, names: set[str]) -> str:
    text = _string(value, path)
    if text not in names:
        raise ScenarioError(path, f"no network named {text} (known: {', '.join(sorted(names))})")
    return text


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(path, f"expected an integer, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise ScenarioError(path, f"{value} is out of range ({lo}..{hi})")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(path, f"expected true or false, got {_type_name(value)}")
    return value


def _address(value: Any, path: str) -> IPAddress:
    text = _string(value, path)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ScenarioError(path, f"{text} is not an IP address") from None


def _positive_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ScenarioError(path, f"expected a number > 0, got {value!r}")
    return float(value)


def _prefix(value: Any, path: str) -> IPNetwork:
    text = _string(value, path)
    if "/" not in text:
        raise ScenarioError(path, f"{text} is not a prefix (expected address/length)")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ScenarioError(path, f"{text} is not a prefix") from None
    raise ScenarioError(path, f"{text} has host bits set (did you mean {loose}?)")


_CHECKERS: dict[int, Callable[[IPAddress, IPNetwork], str | None]] = {
    # RFC 919/922: the all-zeros and all-ones host numbers of an IPv4 subnet are not hosts;
    # /31 (RFC 3021) and /32 have no such addresses.
    4: lambda ip, net: ("the network address" if ip == net.network_address else
                        "the broadcast address" if ip == net.broadcast_address else None)
    if net.prefixlen < 31 else None,
    # RFC 4291 2.6.1: the all-zeros interface identifier is the subnet-router anycast address.
    6: lambda ip, net: "the subnet-router anycast address"
    if ip == net.network_address and net.prefixlen < 127 else None,
}


def _host_in(value: Any, path: str, prefix: IPNetwork, where: str) -> IPAddress:
    text = _string(value, path)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ScenarioError(path, f"{text} is not an IP address") from None
    if ip.version != prefix.version or ip not in prefix:
        raise ScenarioError(path, f"{ip} is outside {where} ({prefix})")
    bad = _CHECKERS[ip.version](ip, prefix)
    if bad:
        raise ScenarioError(path, f"{ip} is {bad} of {prefix}")
    return ip


# --- manifests and steps (step 4: `hcinet run`) -------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestSet:
    """Kubernetes documents to apply to one cluster: one file's, or one inline document."""

    cluster: str
    source: str  # the file's path, or the key path of an inline document
    documents: tuple[Any, ...]


STEP_KINDS = ("load", "wait", "stop", "start")
VIP_REF = re.compile(r"\$\{VIP:([^}]*)\}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One step of ``hcinet run``: ``load`` (the ``load`` tool on a VM), ``wait``, or the
    chaos steps ``stop`` / ``start`` (power a VM off / on, as ``hcinet vm stop|start``)."""

    kind: str
    name: str = ""  # load: the report's name
    vm: str = ""  # load: the VM it runs on (`from`); stop/start: the VM
    url: str = ""
    rps: float = 0.0
    duration: float = 0.0
    timeout: float = 2.0
    connections: str = "new"
    background: bool = False  # load: let the next steps run while it does
    seconds: float = 0.0  # wait

    def load_argv(self, url: str) -> list[str]:
        return ["load", url, "--rps", f"{self.rps:g}", "--duration", f"{self.duration:g}",
                "--timeout", f"{self.timeout:g}", "--connections", self.connections, "--json"]


def vip_refs(url: str) -> list[tuple[str | None, str, str]]:
    """``${VIP:[cluster/]namespace/service}`` references of a URL: (cluster, namespace, name)."""
    out: list[tuple[str | None, str, str]] = []
    for m in VIP_REF.finditer(url):
        parts = m.group(1).split("/")
        if len(parts) == 2 and all(parts):
            out.append((None, parts[0], parts[1]))
        elif len(parts) == 3 and all(parts):
            out.append((parts[0], parts[1], parts[2]))
        else:
            raise ValueError(f"${{VIP:{m.group(1)}}}: expected ${{VIP:namespace/service}} or "
                             "${VIP:cluster/namespace/service}")
    return out


def _split_cluster_manifests(doc: Any) -> tuple[Any, dict[int, Any]]:
    """Take ``clusters[i].manifests`` out (the cluster objects are MOC's ``cluster_create``
    arguments, which know no manifests)."""
    found: dict[int, Any] = {}
    if not (isinstance(doc, dict) and isinstance(doc.get("clusters"), list)):
        return doc, found
    clusters = []
    for i, item in enumerate(doc["clusters"]):
        if isinstance(item, dict) and "manifests" in item:
            item = dict(item)
            found[i] = item.pop("manifests")
        clusters.append(item)
    return {**doc, "clusters": clusters}, found


def _read_manifest(path_text: str, path: str, base: Path | None) -> tuple[str, tuple[Any, ...]]:
    file = Path(path_text)
    if not file.is_absolute() and base is not None:
        file = base / file
    try:
        docs = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d is not None]
    except OSError as exc:
        raise ScenarioError(path, f"{file}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(path, f"{file}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    for j, d in enumerate(docs):
        _manifest_doc(d, f"{path} ({file}, document {j + 1})")
    return str(file), tuple(docs)


def _manifest_doc(value: Any, path: str) -> Any:
    if not isinstance(value, dict) or not value.get("kind") or not value.get("apiVersion"):
        raise ScenarioError(path, "expected a Kubernetes object (a mapping with apiVersion and kind)")
    return value


def _manifest_item(item: Any, path: str, cluster: str, base: Path | None) -> ManifestSet:
    if isinstance(item, str):
        source, docs = _read_manifest(_string(item, path), path, base)
        return ManifestSet(cluster=cluster, source=source, documents=docs)
    return ManifestSet(cluster=cluster, source=path, documents=(_manifest_doc(item, path),))


def _manifests(per_cluster: dict[int, Any], top: Any, clusters: tuple[Cluster, ...],
               base: Path | None) -> tuple[ManifestSet, ...]:
    out: list[ManifestSet] = []
    for i, value in sorted(per_cluster.items()):
        path = f"clusters[{i}].manifests"
        out += [_manifest_item(item, f"{path}[{j}]", clusters[i].name, base)
                for j, item in enumerate(_list(value, path))]
    names = [c.name for c in clusters]
    for j, item in enumerate(_list(top, "manifests") if top is not None else []):
        path = f"manifests[{j}]"
        m = _mapping(item, path, {"cluster", "path", "document"}, set())
        if ("path" in m) == ("document" in m):
            raise ScenarioError(path, "give exactly one of path (a file, relative to the scenario) or document")
        if "cluster" in m:
            cluster = _string(m["cluster"], f"{path}.cluster")
            if cluster not in names:
                raise ScenarioError(f"{path}.cluster", f"no cluster named {cluster} "
                                                       f"(known: {', '.join(names) or 'none'})")
        elif len(names) == 1:
            cluster = names[0]
        else:
            raise ScenarioError(f"{path}.cluster", "required (the scenario has "
                                                   f"{len(names)} clusters)" if names else "no cluster to apply to")
        item_value = m["path"] if "path" in m else m["document"]
        out.append(_manifest_item(item_value, f"{path}.path" if "path" in m else f"{path}.document", cluster, base))
    return tuple(out)


_STEP_KEYS = {
    "load": ({"name", "from", "url", "rps", "duration", "timeout", "connections", "background"},
             {"from", "url", "rps", "duration"}),
    "wait": ({"seconds"}, {"seconds"}),
}


def _steps(value: Any, vm_names: list[str], clusters: list[str]) -> tuple[Step, ...]:
    out: list[Step] = []
    names: set[str] = set()
    for i, item in enumerate(_list(value, "steps") if value is not None else []):
        path = f"steps[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise ScenarioError(path, f"expected a mapping with one key ({', '.join(STEP_KINDS)})")
        ((kind, body),) = item.items()
        if kind not in STEP_KINDS:
            raise ScenarioError(f"{path}.{kind}", f"unknown step (known: {', '.join(STEP_KINDS)})")
        path = f"{path}.{kind}"
        if kind in ("stop", "start"):
            out.append(Step(kind=kind, vm=_vm_name(body, path, vm_names)))
            continue
        if kind == "wait" and not isinstance(body, dict):
            body = {"seconds": body}
        known, required = _STEP_KEYS[kind]
        m = _mapping(body, path, known, required)
        if kind == "wait":
            out.append(Step(kind="wait", seconds=_seconds(m["seconds"], f"{path}.seconds")))
            continue
        name = _label(m.get("name", f"load-{len(names)}"), f"{path}.name")
        if name in names:
            raise ScenarioError(f"{path}.name", f"duplicate load name {name}")
        names.add(name)
        url = _string(m["url"], f"{path}.url")
        if not url.startswith("http://"):
            raise ScenarioError(f"{path}.url", f"{url}: only http:// URLs")
        try:
            refs = vip_refs(url)
        except ValueError as exc:
            raise ScenarioError(f"{path}.url", str(exc)) from None
        for cluster, _, _ in refs:
            if cluster is None and len(clusters) != 1:
                raise ScenarioError(f"{path}.url", "${VIP:namespace/service} needs exactly one cluster; "
                                                   "name it: ${VIP:cluster/namespace/service}")
            if cluster is not None and cluster not in clusters:
                raise ScenarioError(f"{path}.url", f"no cluster named {cluster}")
        connections = m.get("connections", "new")
        if connections not in ("new", "keepalive"):
            raise ScenarioError(f"{path}.connections", f"expected new or keepalive, got {connections!r}")
        out.append(Step(kind="load", name=name, vm=_vm_name(m["from"], f"{path}.from", vm_names), url=url,
                        rps=_positive_float(m["rps"], f"{path}.rps"),
                        duration=_seconds(m["duration"], f"{path}.duration"),
                        timeout=_seconds(m.get("timeout", 2.0), f"{path}.timeout"),
                        connections=connections, background=_bool(m.get("background", False), f"{path}.background")))
    return tuple(out)


def _vm_name(value: Any, path: str, vm_names: list[str]) -> str:
    text = _string(value, path)
    if text not in vm_names:
        raise ScenarioError(path, f"no VM named {text} (known: {', '.join(sorted(vm_names))})")
    return text


def _seconds(value: Any, path: str) -> float:
    """A number of seconds, or a string like ``20s`` / ``500ms``."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))
        except ValueError:
            raise ScenarioError(path, f"expected seconds (e.g. 20, 20s, 500ms), got {text!r}") from None
    return _positive_float(value, path)

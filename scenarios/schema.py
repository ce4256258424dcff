"""Scenario files: load, validate, and turn into frozen dataclasses (step 1: the fabric).

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
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
RESERVED_VM_NAMES = frozenset({"broker", "hostagent"})


class ScenarioError(ValueError):
    """An invalid scenario; ``str()`` is one line: ``key.path: what is wrong``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    """A virtual network (Hyper-V switch + AKS-HCI network object)."""

    name: str
    prefix: IPNetwork  # ipAddressPrefix
    gateway: IPAddress
    vlan_id: int = 0  # vlanID; 0 = untagged
    mtu: int = 1500
    external: bool = False

    def mgmt_args(self) -> dict[str, Any]:
        """The broker's ``add_network`` arguments."""
        return {"name": self.name, "prefix": str(self.prefix), "gateway": str(self.gateway),
                "vlan": self.vlan_id, "mtu": self.mtu, "external": self.external}


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
class Scenario:
    name: str
    time_scale: float = 1.0
    networks: tuple[Network, ...]
    routes: tuple[Route, ...] = ()
    vms: tuple[Vm, ...] = ()

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
    return loads(text)


def loads(text: str) -> Scenario:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError("", f"not valid YAML{where}: {problem}") from None
    if doc is None:
        raise ScenarioError("", "the scenario is empty")
    return parse(doc)


def parse(doc: Any) -> Scenario:
    """Validate a scenario document (the YAML as plain data)."""
    top = _mapping(doc, "", {"name", "time_scale", "networks", "routes", "vms"}, {"name", "networks"})
    name = _string(top["name"], "name")
    time_scale = _positive_float(top.get("time_scale", 1.0), "time_scale")
    networks = _networks(top["networks"])
    routes = _routes(top.get("routes") or [], networks)
    vms = _vms(top.get("vms") or [], networks)
    return Scenario(name=name, time_scale=time_scale, networks=networks, routes=routes, vms=vms)


# --- sections -------------------------------------------------------------------------------

_NETWORK_KEYS = {"name", "ipAddressPrefix", "gateway", "vlanID", "mtu", "external"}


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
    for other in earlier:
        if other.prefix.version == prefix.version and other.prefix.overlaps(prefix):
            raise ScenarioError(f"{path}.ipAddressPrefix",
                                f"{prefix} overlaps network {other.name} ({other.prefix})")
    gateway = _host_in(m["gateway"], f"{path}.gateway", prefix, f"network {name}")
    vlan = m.get("vlanID")
    vlan_id = 0 if vlan is None else _int(vlan, f"{path}.vlanID", 0, VLAN_MAX)
    mtu = _int(m.get("mtu", 1500), f"{path}.mtu", MTU_MIN[prefix.version], MTU_MAX)
    external = _bool(m.get("external", False), f"{path}.external")
    return Network(name=name, prefix=prefix, gateway=gateway, vlan_id=vlan_id, mtu=mtu, external=external)


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


def _vms(value: Any, networks: tuple[Network, ...]) -> tuple[Vm, ...]:
    by_name = {n.name: n for n in networks}
    owners: dict[IPAddress, str] = {}
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
    return ip


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

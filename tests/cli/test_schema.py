"""Scenario validation: every error is one line that names the key path."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from scenarios import schema

DEMO = Path(schema.__file__).with_name("fabric-demo.yaml")

BASE: dict[str, Any] = {
    "name": "t",
    "networks": [
        {"name": "dc", "ipAddressPrefix": "172.16.0.0/24", "gateway": "172.16.0.1", "vlanID": 10},
        {"name": "ext", "ipAddressPrefix": "203.0.113.0/24", "gateway": "203.0.113.1", "external": True},
    ],
    "routes": [{"prefix": "198.51.100.0/24", "network": "dc", "sources": ["dc"]}],
    "vms": [
        {"name": "vm-a", "network": "dc", "ip": "172.16.0.10", "apps": [{"kind": "udp-echo", "port": 7}]},
        {"name": "vm-r", "nics": [{"network": "dc", "ip": "172.16.0.20"},
                                  {"name": "uplink", "network": "ext", "ip": "203.0.113.20"}]},
    ],
}


def doc_with(path: str, value: Any) -> dict[str, Any]:
    """BASE with one value replaced (``a.b[1].c``); value ``...`` deletes the key."""
    doc = copy.deepcopy(BASE)
    parts = path.replace("[", ".").replace("]", "").split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return doc


def test_the_demo_scenario_loads() -> None:
    s = schema.load(DEMO)
    assert s.name == "fabric-demo" and [n.name for n in s.networks] == ["dc", "internet"]
    assert s.network("internet").external and not s.network("dc").external
    vm_a = s.vm("vm-a")
    assert vm_a.ips == ("172.16.0.10",) and vm_a.nics[0].mac == "02:00:ac:10:00:0a"
    assert len({vm.nics[0].mac for vm in s.vms}) == len(s.vms)


def test_a_full_document_becomes_frozen_dataclasses() -> None:
    s = schema.parse(BASE)
    dc = s.network("dc")
    assert (dc.prefix, dc.gateway, dc.vlan_id, dc.mtu, dc.external) == (
        ipaddress.ip_network("172.16.0.0/24"), ipaddress.ip_address("172.16.0.1"), 10, 1500, False)
    assert dc.mgmt_args() == {"name": "dc", "prefix": "172.16.0.0/24", "gateway": "172.16.0.1",
                              "vlan": 10, "mtu": 1500, "external": False}
    assert s.routes[0].mgmt_args() == {"prefix": "198.51.100.0/24", "network": "dc", "sources": ["dc"]}
    r = s.vm("vm-r")
    assert [(n.name, n.network, str(n.ip)) for n in r.nics] == [("eth0", "dc", "172.16.0.20"),
                                                               ("uplink", "ext", "203.0.113.20")]
    assert s.vm("vm-a").apps == (schema.App(kind="udp-echo", port=7),)
    assert s.time_scale == 1.0
    with pytest.raises(AttributeError):
        dc.mtu = 9000  # type: ignore[misc]


def test_macs_are_locally_administered_and_derived_from_the_ip() -> None:
    assert schema.mac_for(ipaddress.ip_address("10.1.2.3")) == "02:00:0a:01:02:03"
    # IPv6: 02 + the last five bytes of the address (IEEE 802: 0x02 = locally administered, unicast).
    assert schema.mac_for(ipaddress.ip_address("fd00::1:2:3")) == "02:01:00:02:00:03"
    assert schema.mac_for(ipaddress.ip_address("fd00::a")) != schema.mac_for(ipaddress.ip_address("fd00::b"))


def test_ipv6_networks_are_accepted() -> None:
    doc = doc_with("networks[1]", {"name": "v6", "ipAddressPrefix": "fd00:10::/64", "gateway": "fd00:10::1"})
    doc["vms"] = [{"name": "vm-6", "network": "v6", "ip": "fd00:10::10"}]
    assert str(schema.parse(doc).vm("vm-6").nics[0].ip) == "fd00:10::10"


BAD = [
    ("networks[1].ipAddressPrefix", "10.0.0.0/33", "networks[1].ipAddressPrefix: 10.0.0.0/33 is not a prefix"),
    ("networks[1].ipAddressPrefix", "10.0.0.5/24",
     "networks[1].ipAddressPrefix: 10.0.0.5/24 has host bits set (did you mean 10.0.0.0/24?)"),
    ("networks[1].ipAddressPrefix", "10.0.0.0", "networks[1].ipAddressPrefix: 10.0.0.0 is not a prefix "
     "(expected address/length)"),
    ("networks[1].ipAddressPrefix", "172.16.0.128/25",
     "networks[1].ipAddressPrefix: 172.16.0.128/25 overlaps network dc (172.16.0.0/24)"),
    ("networks[1].name", "dc", "networks[1].name: duplicate network name dc"),
    ("networks[1].name", "Ext_1", "networks[1].name: 'Ext_1' is not a valid name (RFC 1123 label: "
     "lower-case letters, digits and '-', at most 63)"),
    ("networks[0].gateway", "172.16.1.1", "networks[0].gateway: 172.16.1.1 is outside network dc (172.16.0.0/24)"),
    ("networks[0].gateway", "172.16.0.255",
     "networks[0].gateway: 172.16.0.255 is the broadcast address of 172.16.0.0/24"),
    ("networks[0].gateway", "nope", "networks[0].gateway: nope is not an IP address"),
    ("networks[0].gateway", ..., "networks[0].gateway: required"),
    ("networks[0].vlanID", 4095, "networks[0].vlanID: 4095 is out of range (0..4094)"),
    ("networks[0].vlanID", "10", "networks[0].vlanID: expected an integer, got a string"),
    ("networks[0].mtu", 40, "networks[0].mtu: 40 is out of range (68..9216)"),
    ("networks[0].external", "yes", "networks[0].external: expected true or false, got a string"),
    ("networks[0].vlan", 3, "networks[0].vlan: unknown key (known: dhcpScopeEnd, dhcpScopeStart, dnsServers, "
     "external, gateway, ipAddressPrefix, k8sNodeIpPoolEnd, k8sNodeIpPoolStart, mtu, name, vipAllocation, vipPoolEnd, "
     "vipPoolStart, vlanID, vswitchName)"),
    ("networks", [], "networks: must not be empty"),
    ("networks", {"dc": {}}, "networks: expected a list, got a mapping"),
    ("time_scale", 0, "time_scale: expected a number > 0, got 0"),
    ("time_scale", True, "time_scale: expected a number > 0, got True"),
    ("impairments", [], "impairments: unknown key (known: clients, clusters, dns, management, manifests, name, "
     "networks, routes, steps, time_scale, vms)"),
    ("steps", [{"jump": 1}], "steps[0].jump: unknown step (known: load, wait, stop, start)"),
    ("steps", [{"stop": "vm-z"}], "steps[0].stop: no VM named vm-z (known: vm-a, vm-r)"),
    ("manifests", [{"path": "x.yaml"}], "manifests[0].cluster: no cluster to apply to"),
    ("name", ..., "name: required"),
    ("routes[0].network", "lab", "routes[0].network: no network named lab (known: dc, ext)"),
    ("routes[0].sources", ["dc", "nowhere"], "routes[0].sources[1]: no network named nowhere (known: dc, ext)"),
    ("routes[0].prefix", "300.0.0.0/8", "routes[0].prefix: 300.0.0.0/8 is not a prefix"),
    ("vms[0].ip", "172.16.1.10", "vms[0].ip: 172.16.1.10 is outside network dc (172.16.0.0/24)"),
    ("vms[0].ip", "172.16.0.1", "vms[0].ip: 172.16.0.1 is the gateway of network dc"),
    ("vms[0].ip", "172.16.0.0", "vms[0].ip: 172.16.0.0 is the network address of 172.16.0.0/24"),
    ("vms[0].ip", "172.16.0.20", "vms[1].nics[0].ip: 172.16.0.20 is already taken by vm-a/eth0"),
    ("vms[1].nics[0].ip", "172.16.0.10", "vms[1].nics[0].ip: 172.16.0.10 is already taken by vm-a/eth0"),
    ("vms[0].network", "lab", "vms[0].network: no network named lab (known: dc, ext)"),
    ("vms[0].network", ..., "vms[0].network: required (or give nics)"),
    ("vms[1].name", "vm-a", "vms[1].name: duplicate VM name vm-a"),
    ("vms[1].name", "broker", "vms[1].name: broker is reserved"),
    ("vms[1].nics[1].name", "eth0", "vms[1].nics[1].name: duplicate NIC name eth0"),
    ("vms[1].nics[1].name", "eth-uplink-0123456", "vms[1].nics[1].name: 'eth-uplink-0123456' is not a NIC name "
     "(a letter, then letters or digits, at most 15)"),
    ("vms[1].nics", [], "vms[1].nics: must not be empty"),
    ("vms[1].nics[0].mac", "02:00:00:00:00:01", "vms[1].nics[0].mac: unknown key (known: ip, name, network)"),
    ("vms[0].apps[0].port", 70000, "vms[0].apps[0].port: 70000 is out of range (1..65535)"),
    ("vms[0].apps[0].kind", ..., "vms[0].apps[0].kind: required"),
    ("vms[0].apps", [{"kind": "udp-echo", "port": 7}, {"kind": "udp-echo", "port": 7}],
     "vms[0].apps[1]: duplicate app udp-echo on port 7"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_each_error_names_its_key(path: str, value: Any, message: str) -> None:
    with pytest.raises(schema.ScenarioError) as info:
        schema.parse(doc_with(path, value))
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_network_and_nics_together_are_refused() -> None:
    doc = doc_with("vms[1].network", "dc")
    with pytest.raises(schema.ScenarioError, match=r"^vms\[1\].network: give either network and ip, or nics"):
        schema.parse(doc)


def test_yaml_problems_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnetworks: [\n  - a: b\n")
    with pytest.raises(schema.ScenarioError, match=r"^not valid YAML at line \d+, column \d+: ") as info:
        schema.load(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(schema.ScenarioError, match="^the scenario is empty$"):
        schema.loads("")
    with pytest.raises(schema.ScenarioError, match="^expected a mapping, got a list$"):
        schema.loads("- 1\n")
    with pytest.raises(schema.ScenarioError, match=r"nope.yaml: cannot read \(No such file or directory\)$"):
        schema.load(tmp_path / "nope.yaml")

"""The scenario's ``dns`` section (datacenter DNS VMs) and what the runner makes of it: the
DNS VM's MOC arguments, the ``dns`` key of the VMs it configures, the order of creation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from test_aks_cli import V2, v2_with

from scenarios import runner, schema

DEFAULT = Path(schema.__file__).with_name("default.yaml")
DNS_VM = {"name": "dc-dns", "network": "aks", "ip": "172.16.0.2",
          "records": [{"name": "db.corp.example", "type": "A", "value": "172.16.0.10"},
                      {"name": "www.corp.example", "type": "cname", "value": "db.corp.example"}]}


def with_dns(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(V2)
    doc["dns"] = [{**DNS_VM, **changes}]
    return doc


def test_the_default_scenario_has_a_dns_vm_at_its_networks_dns_server() -> None:
    s = schema.load(DEFAULT)
    (dns,) = s.dns
    net = s.network(dns.network)
    assert dns.name == "dc-dns" and dns.ip in net.dns_servers
    records = {(r.name, r.type): r.value for r in dns.records}
    client_dc = next(c for c in s.clients if c.name == "client-dc")
    assert records[("db.corp.example", "A")] == str(client_dc.ip)
    assert records[("www.corp.example", "CNAME")] == "db.corp.example"
    assert "dc-dns" in [e.vm for e in runner.Plan.of(s).items]


def test_a_dns_vm_parses_round_trips_and_becomes_a_kind_dns_client() -> None:
    s = schema.parse(with_dns(zones=["corp.example"]))
    (dns,) = s.dns
    assert dns.records[1] == schema.DnsRecord(name="www.corp.example", type="CNAME", value="db.corp.example")
    assert schema.parse(s.doc()) == s
    args = dns.moc_args()
    assert (args["kind"], args["ip"], args["zones"]) == ("dns", "172.16.0.2", ["corp.example"])
    assert args["records"][0] == {"name": "db.corp.example", "type": "A", "value": "172.16.0.10"}
    only_dns = copy.deepcopy(with_dns())
    del only_dns["clusters"], only_dns["clients"]
    assert schema.parse(only_dns).uses_moc


BAD = [
    (dict(ip="172.16.0.3"), "dns[0].ip: 172.16.0.3 is not one of network aks's dnsServers (172.16.0.2): "
                            "no VM would ask it"),
    (dict(network="lab"), "dns[0].ip: 172.16.0.2 is outside network lab (10.0.0.0/24)"),
    (dict(network="internet", ip="203.0.113.53"),
     "dns[0].ip: 203.0.113.53 is not one of network internet's dnsServers (none): no VM would ask it"),
    (dict(ip="172.16.0.5"), "dns[0].ip: 172.16.0.5 is already taken by moc-cloudagent"),
    (dict(name="web"), "clients[0].name: duplicate VM name web"),  # DNS VMs come first (MOC creates them so)
    (dict(name="c1-lb"), "dns[0].name: duplicate VM name c1-lb"),
    (dict(records=[{"name": "db.corp.example", "type": "A", "value": "172.16.0.300"}]),
     "dns[0].records[0].value: not an IP address: '172.16.0.300'"),
    (dict(records=[{"name": "db.corp.example", "type": "AAAA", "value": "172.16.0.10"}]),
     "dns[0].records[0].value: 172.16.0.10 is not an AAAA address"),
    (dict(records=[{"name": "db.corp.example"}]), "dns[0].records[0].value: expected a string, got None"),
    (dict(records={"db": "172.16.0.10"}), "dns[0].records: expected a list, got a mapping"),
    (dict(zones="corp.example"), "dns[0].zones: expected a list, got a string"),
    (dict(dhcp=True), "dns[0].dhcp: unknown key (known: ip, name, network, records, zones)"),
]


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_each_dns_error_names_its_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(schema.ScenarioError) as info:
        schema.parse(with_dns(**changes))
    assert str(info.value) == message


def test_a_client_cannot_take_the_dns_vms_name_or_address() -> None:
    doc = with_dns()
    doc["clients"][0]["ip"] = "172.16.0.2"
    with pytest.raises(schema.ScenarioError, match=r"^clients\[0\]\.ip: 172\.16\.0\.2 is already taken by dc-dns$"):
        schema.parse(doc)
    doc = with_dns()
    doc["clients"][0]["name"] = "dc-dns"
    with pytest.raises(schema.ScenarioError, match=r"^clients\[0\]\.name: duplicate VM name dc-dns$"):
        schema.parse(doc)


def test_vms_the_runner_configures_get_their_networks_dns_servers() -> None:
    doc = v2_with("vms", [{"name": "probe", "network": "aks", "ip": "172.16.0.9"},
                          {"name": "lab-probe", "network": "lab", "ip": "10.0.0.9"}])
    s = schema.parse(doc)
    assert runner.vm_config(s.vm("probe"), s)["dns"] == {"nameservers": ["172.16.0.2"]}
    assert "dns" not in runner.vm_config(s.vm("lab-probe"), s)  # lab lists no dnsServers

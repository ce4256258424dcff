"""MOC and the datacenter DNS: a ``kind: dns`` client VM with its records, the ``dns`` key
(the network's dnsServers) in every VM config MOC writes, and the status warning for a
dnsServers address no DNS VM holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_agent import CLUSTER, NETWORK, Harness, run

from agents.mgmt import MgmtError

RECORDS = [{"name": "db.corp.example", "type": "A", "value": "172.16.0.10"},
           {"name": "www.corp.example", "type": "CNAME", "value": "db.corp.example"}]
WARNING = "network aks-net: dnsServers 172.16.0.2 is no DNS VM of this deployment"


def test_every_vm_on_the_network_resolves_through_its_dns_servers(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(NETWORK))
        await moc.cluster_create(dict(CLUSTER))
        await moc.client_create({"name": "client-dc", "network": "aks-net", "ip": "172.16.0.10"})
        configs = {name: row["config"] for name, row in h.host.vms.items()}
        assert {"cluster1-control-plane-0", "cluster1-lb", "cluster1-linux-0", "client-dc"} <= set(configs)
        assert all(c["dns"] == {"nameservers": ["172.16.0.2"]} for c in configs.values()), configs
    run(test, tmp_path)


def test_a_network_without_dns_servers_gives_no_dns_key(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create({"name": "lab", "ipAddressPrefix": "10.0.0.0/24", "gateway": "10.0.0.1",
                                  "dhcpScopeStart": "10.0.0.100", "dhcpScopeEnd": "10.0.0.199",
                                  "vipPoolStart": "10.0.0.20", "vipPoolEnd": "10.0.0.29"})
        await moc.client_create({"name": "roamer", "network": "lab", "dhcp": True})
        assert "dns" not in h.host.vms["roamer"]["config"]  # its DHCP lease may name servers
        with pytest.raises(MgmtError, match=r"^dhcp: a DNS server needs a fixed ip \(the address its network's "):
            await moc.client_create({"name": "dc-dns", "network": "lab", "dhcp": True, "kind": "dns", "records": []})
    run(test, tmp_path)


def test_a_dns_vm_gets_its_records_and_silences_the_warning(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(NETWORK))
        assert any(w.startswith(WARNING) for w in (await moc.status({}))["warnings"])
        reply = await moc.client_create({"name": "dc-dns", "network": "aks-net", "ip": "172.16.0.2", "kind": "dns",
                                         "records": tuple(RECORDS), "zones": ("corp.example",)})
        assert reply["ips"] == ["172.16.0.2"]
        config = h.host.vms["dc-dns"]["config"]
        assert (config["kind"], config["records"], config["zones"]) == ("dns", RECORDS, ["corp.example"])
        status = await moc.status({})
        assert not any(w.startswith(WARNING) for w in status["warnings"])
        assert {v["name"]: v["kind"] for v in status["vms"]}["dc-dns"] == "dns"
    run(test, tmp_path)


@pytest.mark.parametrize(("args", "message"), [
    ({"records": [{"name": "db.corp.example", "type": "A", "value": "nope"}]},
     "records[0].value: not an IP address: 'nope'"),
    ({"records": [{"name": "db.corp.example", "type": "HINFO", "value": "x"}]},
     "records[0].type: expected one of A, AAAA, CNAME, PTR, TXT, MX, SRV, NS, got 'HINFO'"),
    ({"records": "db.corp.example"}, "records: expected a list, got str"),
    ({"kind": "plain", "records": RECORDS}, "records: only a VM of kind dns serves records"),
    ({"ip": None, "dhcp": True}, "dhcp: network aks-net has no DHCP scope (static IP model)"),
])
def test_bad_dns_vms_are_refused_before_anything_starts(tmp_path: Path, args: dict[str, object],
                                                        message: str) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(NETWORK))
        base: dict[str, object] = {"name": "dc-dns", "network": "aks-net", "ip": "172.16.0.2", "kind": "dns"}
        request = {k: v for k, v in {**base, **args}.items() if v is not None}
        with pytest.raises(MgmtError) as info:
            await moc.client_create(request)
        assert str(info.value) == message
        assert h.host.vms == {} and "dc-dns" not in moc.vms
    run(test, tmp_path)

"""The DNS server over the in-process fabric (tests/vm/vm_loopnet.py), with real wire-format
queries from dnspython: cluster names, ExternalName followed through the datacenter DNS,
NXDOMAIN, forwarding, SERVFAIL, truncation and TCP."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dns_objects import endpoint, endpoint_slice, port, service
from dns_world import COREDNS, DC_RECORDS, DCDNS, SILENT, World, run

from agents.dns.datacenter import StaticZone, StaticZoneError
from agents.dns.resolver import ResolvConf
from agents.dns.server import _exchange_udp, exchange, query, resolve
from agents.dns.zone import Zone
from agents.vm.runtime import ConfigError, VMConfig, vm_class
from broker import packets as P


def answer_text(msg: dns.message.Message) -> list[str]:
    return [f"{rr.name} {rr.ttl} {dns.rdatatype.to_text(rr.rdtype)} {rd}" for rr in msg.answer for rd in rr]


def test_cluster_names_over_udp() -> None:
    async def scenario(w: World) -> None:
        r = await query(w.client, COREDNS, "backend.prod.svc.cluster.local", "A", 1.0)
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and r.flags & dns.flags.RA
        assert answer_text(r) == ["backend.prod.svc.cluster.local. 5 A 10.96.0.15"]
        r = await query(w.client, COREDNS, "db.prod.svc.cluster.local", "A", 1.0)
        assert sorted(answer_text(r)) == ["db.prod.svc.cluster.local. 5 A 10.244.1.20",
                                          "db.prod.svc.cluster.local. 5 A 10.244.2.21"]
        r = await query(w.client, COREDNS, "_http._tcp.backend.prod.svc.cluster.local", "SRV", 1.0)
        assert answer_text(r) == ["_http._tcp.backend.prod.svc.cluster.local. 5 SRV 0 100 80 "
                                  "backend.prod.svc.cluster.local."]
        assert [str(rr) for rr in r.additional] == ["backend.prod.svc.cluster.local. 5 IN A 10.96.0.15"]
        r = await query(w.client, COREDNS, "15.0.96.10.in-addr.arpa", "PTR", 1.0)
        assert answer_text(r) == ["15.0.96.10.in-addr.arpa. 5 PTR backend.prod.svc.cluster.local."]
        assert w.coredns.counts["udp"] == 4 and w.coredns.counts["forwarded"] == 0
    run(scenario)


def test_nxdomain_and_nodata_carry_the_soa() -> None:
    async def scenario(w: World) -> None:
        r = await query(w.client, COREDNS, "nothere.prod.svc.cluster.local", "A", 1.0)
        assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA and not r.answer
        assert [dns.rdatatype.to_text(rr.rdtype) for rr in r.authority] == ["SOA"]
        assert str(r.authority[0].name) == "cluster.local."
        r = await query(w.client, COREDNS, "backend.prod.svc.cluster.local", "AAAA", 1.0)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer and len(r.authority) == 1
        assert w.coredns.counts["nxdomain"] == 1
    run(scenario)


def test_external_name_is_followed_through_the_datacenter_dns() -> None:
    async def scenario(w: World) -> None:
        r = await query(w.client, COREDNS, "ext.prod.svc.cluster.local", "A", 1.0)
        assert r.rcode() == dns.rcode.NOERROR
        assert answer_text(r) == ["ext.prod.svc.cluster.local. 5 CNAME db.corp.example.",
                                  "db.corp.example. 300 A 172.16.0.50"]
        assert w.coredns.counts["cname_followed"] == 1 and w.dc.counts["udp"] == 1
        r = await query(w.client, COREDNS, "ext.prod.svc.cluster.local", "CNAME", 1.0)
        assert answer_text(r) == ["ext.prod.svc.cluster.local. 5 CNAME db.corp.example."]
        assert w.dc.counts["udp"] == 1  # a CNAME question is answered without the upstream
    run(scenario)


def test_other_names_are_forwarded() -> None:
    async def scenario(w: World) -> None:
        r = await query(w.client, COREDNS, "www.corp.example", "A", 1.0)
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA  # the datacenter's own flags
        assert answer_text(r) == ["www.corp.example. 300 CNAME db.corp.example.", "db.corp.example. 300 A 172.16.0.50"]
        r = await query(w.client, COREDNS, "v6.corp.example", "AAAA", 1.0)
        assert answer_text(r) == ["v6.corp.example. 300 AAAA 2001:db8::50"]
        r = await query(w.client, COREDNS, "nothere.corp.example", "A", 1.0)
        assert r.rcode() == dns.rcode.NXDOMAIN and [str(rr.name) for rr in r.authority] == ["corp.example."]
        r = await query(w.client, COREDNS, "www.example.com", "A", 1.0)  # not the datacenter's: NXDOMAIN
        assert r.rcode() == dns.rcode.NXDOMAIN and not r.authority
        r = await query(w.client, COREDNS, "9.9.9.9.in-addr.arpa", "PTR", 1.0)  # reverse miss falls through
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert w.coredns.counts["forwarded"] == 5 and w.dc.counts["udp"] == 5
    run(scenario)


def test_servfail_when_the_upstream_does_not_answer() -> None:
    async def scenario(w: World) -> None:
        w.net.drop = lambda pkt: pkt[P.DST] == SILENT  # the upstream's packets vanish: a timeout
        loop = asyncio.get_running_loop()
        start = loop.time()
        r = await query(w.client, COREDNS, "www.corp.example", "A", 2.0)
        assert r.rcode() == dns.rcode.SERVFAIL and not r.answer
        assert 0.25 <= loop.time() - start < 1.5
        r = await query(w.client, COREDNS, "ext.prod.svc.cluster.local", "A", 2.0)
        assert r.rcode() == dns.rcode.SERVFAIL
        r = await query(w.client, COREDNS, "backend.prod.svc.cluster.local", "A", 2.0)  # cluster names still work
        assert r.rcode() == dns.rcode.NOERROR
        assert w.coredns.counts["upstream_timeouts"] == 2 and w.coredns.counts["servfail"] == 2
    run(scenario, upstream=(SILENT,))


def test_second_upstream_answers_when_the_first_is_down() -> None:
    async def scenario(w: World) -> None:
        r = await query(w.client, COREDNS, "db.corp.example", "A", 2.0)
        assert answer_text(r) == ["db.corp.example. 300 A 172.16.0.50"]
    run(scenario, upstream=("172.16.0.99", DCDNS))  # nobody there: ICMP net unreachable at once


def test_big_answers_are_truncated_over_udp_and_complete_over_tcp() -> None:
    zone = Zone()
    eps = [endpoint(f"10.244.{i // 200}.{i % 200 + 1}") for i in range(60)]
    zone.update(service("big", ip=None, ports=[port("http", 80)]), endpoint_slice("big", eps, [port("http", 80)]))

    async def scenario(w: World) -> None:
        req = dns.message.make_query("big.prod.svc.cluster.local", "A")
        udp = await _exchange_udp(w.client, COREDNS, req, 1.0, 53)
        assert udp.flags & dns.flags.TC and len(udp.to_wire()) <= 512
        full = await query(w.client, COREDNS, "big.prod.svc.cluster.local", "A", 2.0)  # retried over TCP
        assert not full.flags & dns.flags.TC and len(answer_text(full)) == 60
        assert w.coredns.counts["truncated"] == 2 and w.coredns.counts["tcp"] == 1
        # EDNS0 with a 4096-byte buffer: the whole answer fits in one datagram
        edns = dns.message.make_query("big.prod.svc.cluster.local", "A", use_edns=0, payload=4096)
        big = await _exchange_udp(w.client, COREDNS, edns, 1.0, 53)
        assert not big.flags & dns.flags.TC and len(answer_text(big)) == 60 and big.edns == 0
    run(scenario, zone=zone)


def test_malformed_and_odd_requests() -> None:
    async def scenario(w: World) -> None:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if not got.done():
                    got.set_result(data)
        transport, _ = await w.client.create_datagram_endpoint(Proto, remote_addr=(COREDNS, 53))
        transport.sendto(b"\x12\x34\x01\x00\x00\x01garbage")
        reply = await asyncio.wait_for(got, 1.0)
        transport.close()
        assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dns.rcode.FORMERR and reply[2] & 0x80
        # a CHAOS-class question: refused
        req = dns.message.make_query("version.bind", "TXT", "CH")
        r = await exchange(w.client, COREDNS, req, 1.0)
        assert r.rcode() == dns.rcode.REFUSED
    run(scenario)


def test_resolve_walks_the_search_list() -> None:
    async def scenario(w: World) -> None:
        conf = ResolvConf.for_pod("prod", cluster_dns=[COREDNS])
        res = await resolve(w.client, "backend", conf=conf)
        assert res.ok and res.addresses == ("10.96.0.15",) and res.queries == 1
        res = await resolve(w.client, "backend.prod", conf=conf)
        assert res.ok and res.qname == "backend.prod.svc.cluster.local." and res.queries == 2
        res = await resolve(w.client, "db.corp.example", conf=conf)  # 2 dots < ndots 5: searched first
        assert res.ok and res.addresses == ("172.16.0.50",) and res.queries == 4
        res = await resolve(w.client, "ext", conf=conf)
        assert res.ok and res.name == "db.corp.example" and res.addresses == ("172.16.0.50",)
        res = await resolve(w.client, "nothere", conf=conf)
        assert res.status == "nxdomain" and res.queries == 4
        vm_conf = ResolvConf(nameservers=(DCDNS,))  # a VM outside the cluster: its network's dnsServers
        res = await resolve(w.client, "www.corp.example", conf=vm_conf)
        assert res.ok and res.addresses == ("172.16.0.50",) and res.queries == 1
        res = await resolve(w.client, "backend.prod.svc.cluster.local", conf=vm_conf)
        assert res.status == "nxdomain"
        dead = ResolvConf(nameservers=(SILENT,), timeout=1, attempts=1)
        w.net.drop = lambda pkt: pkt[P.DST] == SILENT
        res = await resolve(w.client, "www.corp.example", conf=dead)
        assert res.status == "again"
    run(scenario)


def test_loadbalance_shuffles_addresses() -> None:
    async def orders(w: World) -> set[tuple[str, ...]]:
        seen = set()
        for _ in range(12):
            r = await query(w.client, COREDNS, "db.prod.svc.cluster.local", "A", 1.0)
            seen.add(tuple(answer_text(r)))
        return seen

    async def scenario(w: World) -> None:
        assert len(await orders(w)) == 1  # no loadbalance: the zone's order, every time
        w.coredns.rng = random.Random(7)
        assert len(await orders(w)) == 2
    run(scenario)


@pytest.mark.parametrize(("records", "error"), [
    ([{"name": "x", "type": "A", "value": "1.2.3"}], r"records\[0\].value: not an IP"),
    ([{"name": "x", "type": "AAAA", "value": "1.2.3.4"}], r"records\[0\].value: 1.2.3.4 is not an AAAA"),
    ([{"name": "x", "type": "HINFO", "value": "a"}], r"records\[0\].type"),
    ([{"type": "A", "value": "1.2.3.4"}], r"records\[0\].name"),
    ("x", "records: expected a list"),
])
def test_datacenter_records_are_validated(records: Any, error: str) -> None:
    with pytest.raises(StaticZoneError, match=error):
        StaticZone.from_config({"records": records})


def test_datacenter_zone_answers() -> None:
    z = StaticZone(DC_RECORDS)  # zones from the records: corp.example, example.org
    assert z.zones == ("corp.example.", "example.org.")
    got = z.answer("WWW.corp.example", "A")
    assert [(r.name, r.rtype, r.data) for r in got.answers] == [
        ("WWW.corp.example.", "CNAME", "db.corp.example."), ("db.corp.example.", "A", "172.16.0.50")]
    assert got.authoritative
    assert [r.rtype for r in z.answer("db.corp.example", "AAAA").authority] == ["SOA"]  # NODATA
    assert z.answer("nothere.corp.example", "A").rcode == 3
    out = z.answer("www.google.com", "A")
    assert out.rcode == 3 and not out.authority and not out.authoritative


def test_dns_vm_kind_is_found_lazily() -> None:
    cls = vm_class("dns")
    assert cls.__name__ == "DnsVM" and cls.kind == "dns"
    cfg = VMConfig.parse({"name": "dcdns", "kind": "dns", "run_dir": "/tmp", "broker": "tcp://127.0.0.1:1",
                          "nics": [{"name": "eth0", "network": "dc", "mac": "02:00:00:00:00:02",
                                    "addresses": ["172.16.0.2/24"]}], "records": DC_RECORDS})
    vm = cls(cfg)
    assert vm.zone.answer("db.corp.example", "A").answers[0].data == "172.16.0.50"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="records"):
        cls(VMConfig.parse({**cfg.raw, "records": [{"name": "x", "type": "A", "value": "nope"}]}))

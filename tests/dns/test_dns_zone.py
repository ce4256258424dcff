"""The cluster.local zone: CoreDNS kubernetes-plugin answers for every kind of name (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest
from dns_objects import cluster_objects, endpoint, endpoint_slice, namespace, pod, port, service
from hypothesis import given
from hypothesis import strategies as st

from agents.dns.zone import NOERROR, NXDOMAIN, Answer, Record, Zone, ZoneError

S = "svc.cluster.local."
SOA_NAME = "cluster.local."


@pytest.fixture(scope="module")
def zone() -> Zone:
    z = Zone(ns_ips=["10.96.0.10"])
    z.update(*cluster_objects(), serial=1700000000)
    return z


def rr(answer: Answer) -> list[tuple[str, str, str]]:
    return [(r.name, r.rtype, r.data) for r in answer.answers]


# (qname, qtype, rcode, [(owner, type, data)] answers, cname_target)
CASES = [
    # ClusterIP Services: A/AAAA of the family, whatever the endpoints
    ("backend.prod.svc.cluster.local", "A", NOERROR, [(f"backend.prod.{S}", "A", "10.96.0.15")], None),
    ("Backend.PROD.svc.cluster.local.", "A", NOERROR, [("Backend.PROD.svc.cluster.local.", "A", "10.96.0.15")], None),
    ("backend.prod.svc.cluster.local", "AAAA", NOERROR, [], None),                       # NODATA
    ("dual.prod.svc.cluster.local", "A", NOERROR, [(f"dual.prod.{S}", "A", "10.96.0.20")], None),
    ("dual.prod.svc.cluster.local", "AAAA", NOERROR, [(f"dual.prod.{S}", "AAAA", "fd00:10:96::20")], None),
    ("noports.prod.svc.cluster.local", "A", NOERROR, [(f"noports.prod.{S}", "A", "10.96.0.30")], None),
    ("kube-dns.kube-system.svc.cluster.local", "A", NOERROR,
     [(f"kube-dns.kube-system.{S}", "A", "10.96.0.10")], None),
    # headless: the ready endpoints (ready absent counts as ready), never the not-ready one
    ("db.prod.svc.cluster.local", "A", NOERROR,
     [(f"db.prod.{S}", "A", "10.244.1.20"), (f"db.prod.{S}", "A", "10.244.2.21")], None),
    ("db-0.db.prod.svc.cluster.local", "A", NOERROR, [(f"db-0.db.prod.{S}", "A", "10.244.1.20")], None),
    ("10-244-2-21.db.prod.svc.cluster.local", "A", NOERROR,
     [(f"10-244-2-21.db.prod.{S}", "A", "10.244.2.21")], None),
    ("10-244-3-22.db.prod.svc.cluster.local", "A", NXDOMAIN, [], None),                 # not ready
    ("lonely.prod.svc.cluster.local", "A", NXDOMAIN, [], None),                         # headless, no endpoints
    # endpoint names of a ClusterIP Service
    ("10-244-1-5.backend.prod.svc.cluster.local", "A", NOERROR,
     [(f"10-244-1-5.backend.prod.{S}", "A", "10.244.1.5")], None),
    # SRV for named ports: priority 0, weight 100/n, target the Service or each endpoint
    ("_http._tcp.backend.prod.svc.cluster.local", "SRV", NOERROR,
     [(f"_http._tcp.backend.prod.{S}", "SRV", f"0 100 80 backend.prod.{S}")], None),
    ("_syslog._udp.backend.prod.svc.cluster.local", "SRV", NOERROR,
     [(f"_syslog._udp.backend.prod.{S}", "SRV", f"0 100 514 backend.prod.{S}")], None),
    ("_http._udp.backend.prod.svc.cluster.local", "SRV", NXDOMAIN, [], None),           # no such port
    ("backend.prod.svc.cluster.local", "SRV", NOERROR,
     [(f"backend.prod.{S}", "SRV", f"0 50 80 backend.prod.{S}"),
      (f"backend.prod.{S}", "SRV", f"0 50 514 backend.prod.{S}")], None),
    ("_pg._tcp.db.prod.svc.cluster.local", "SRV", NOERROR,
     [(f"_pg._tcp.db.prod.{S}", "SRV", f"0 50 5432 db-0.db.prod.{S}"),
      (f"_pg._tcp.db.prod.{S}", "SRV", f"0 50 5432 10-244-2-21.db.prod.{S}")], None),
    ("noports.prod.svc.cluster.local", "SRV", NOERROR, [], None),                       # port -1: no SRV
    # ExternalName: a CNAME; outside the zone the server follows it, inside the zone we do
    ("ext.prod.svc.cluster.local", "A", NOERROR, [(f"ext.prod.{S}", "CNAME", "db.corp.example.")],
     "db.corp.example."),
    ("ext.prod.svc.cluster.local", "AAAA", NOERROR, [(f"ext.prod.{S}", "CNAME", "db.corp.example.")],
     "db.corp.example."),
    ("ext.prod.svc.cluster.local", "CNAME", NOERROR, [(f"ext.prod.{S}", "CNAME", "db.corp.example.")], None),
    ("alias.prod.svc.cluster.local", "A", NOERROR,
     [(f"alias.prod.{S}", "CNAME", f"backend.prod.{S}"), (f"backend.prod.{S}", "A", "10.96.0.15")], None),
    ("x.ext.prod.svc.cluster.local", "A", NXDOMAIN, [], None),                          # no endpoints
    # pods (pods insecure)
    ("10-244-1-5.prod.pod.cluster.local", "A", NOERROR, [("10-244-1-5.prod.pod.cluster.local.", "A", "10.244.1.5")],
     None),
    ("10-9-9-9.empty-ns.pod.cluster.local", "A", NOERROR,
     [("10-9-9-9.empty-ns.pod.cluster.local.", "A", "10.9.9.9")], None),
    ("10-244-1-5.nons.pod.cluster.local", "A", NXDOMAIN, [], None),
    ("web-1.prod.pod.cluster.local", "A", NXDOMAIN, [], None),
    ("fd00-10-244--5.prod.pod.cluster.local", "AAAA", NOERROR,
     [("fd00-10-244--5.prod.pod.cluster.local.", "AAAA", "fd00:10:244::5")], None),
    # names that are not there
    ("nothere.prod.svc.cluster.local", "A", NXDOMAIN, [], None),
    ("backend.nons.svc.cluster.local", "A", NXDOMAIN, [], None),
    ("a.b.c.backend.prod.svc.cluster.local", "A", NXDOMAIN, [], None),                  # too long
    ("foo.bar.cluster.local", "A", NXDOMAIN, [], None),                                 # neither svc nor pod
    ("backend.prod.cluster.local", "A", NXDOMAIN, [], None),
    # structure of the zone: NODATA
    ("prod.svc.cluster.local", "A", NOERROR, [], None),
    ("empty-ns.svc.cluster.local", "A", NOERROR, [], None),
    ("nons.svc.cluster.local", "A", NXDOMAIN, [], None),
    ("svc.cluster.local", "A", NOERROR, [], None),
    ("cluster.local", "A", NOERROR, [], None),
    ("backend.prod.svc.cluster.local", "TXT", NOERROR, [], None),
    ("backend.prod.svc.cluster.local", "MX", NOERROR, [], None),
    ("nothere.prod.svc.cluster.local", "MX", NXDOMAIN, [], None),
    # specials
    ("dns-version.cluster.local", "TXT", NOERROR, [("dns-version.cluster.local.", "TXT", '"1.1.0"')], None),
    ("cluster.local", "NS", NOERROR, [("cluster.local.", "NS", "ns.dns.cluster.local.")], None),
    ("ns.dns.cluster.local", "A", NOERROR, [("ns.dns.cluster.local.", "A", "10.96.0.10")], None),
    # reverse: ClusterIPs and endpoints
    ("15.0.96.10.in-addr.arpa", "PTR", NOERROR, [("15.0.96.10.in-addr.arpa.", "PTR", f"backend.prod.{S}")], None),
    ("5.1.244.10.in-addr.arpa", "PTR", NOERROR,
     [("5.1.244.10.in-addr.arpa.", "PTR", f"10-244-1-5.backend.prod.{S}")], None),
    ("20.1.244.10.in-addr.arpa", "PTR", NOERROR, [("20.1.244.10.in-addr.arpa.", "PTR", f"db-0.db.prod.{S}")], None),
    ("15.0.96.10.in-addr.arpa", "A", NOERROR, [], None),
]


@pytest.mark.parametrize(("qname", "qtype", "rcode", "answers", "target"), CASES,
                         ids=[f"{c[1]}:{c[0]}" for c in CASES])
def test_zone_answers(zone: Zone, qname: str, qtype: str, rcode: int, answers: list[Any], target: str | None) -> None:
    got = zone.answer(qname, qtype)
    assert not got.forward
    assert got.rcode == rcode
    assert rr(got) == answers
    assert got.cname_target == target
    assert got.authoritative
    assert all(r.ttl == 5 for r in got.answers)  # the kubernetes plugin's default TTL
    if not answers:  # NXDOMAIN and NODATA carry the zone's SOA (plugin.BackendError)
        assert [(r.name, r.rtype) for r in got.authority] == [(SOA_NAME, "SOA")]
    else:
        assert got.authority == ()


@pytest.mark.parametrize(("qname", "qtype"), [
    ("example.com", "A"), ("db.corp.example.", "AAAA"), ("local", "A"), ("cluster.local.evil.com", "A"),
    ("9.9.9.9.in-addr.arpa", "PTR"),  # fallthrough in-addr.arpa: not ours, forwarded
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR"),
])
def test_names_outside_the_zone_are_forwarded(zone: Zone, qname: str, qtype: str) -> None:
    got = zone.answer(qname, qtype)
    assert got.forward and got.answers == () and not got.authoritative


def test_srv_additional_section_carries_the_targets(zone: Zone) -> None:
    got = zone.answer("_pg._tcp.db.prod.svc.cluster.local", "SRV")
    assert [(r.name, r.rtype, r.data) for r in got.additional] == [
        (f"db-0.db.prod.{S}", "A", "10.244.1.20"), (f"10-244-2-21.db.prod.{S}", "A", "10.244.2.21")]
    got = zone.answer("_http._tcp.backend.prod.svc.cluster.local", "SRV")
    assert [(r.name, r.data) for r in got.additional] == [(f"backend.prod.{S}", "10.96.0.15")]
    ns = zone.answer("cluster.local", "NS")
    assert [(r.name, r.data) for r in ns.additional] == [("ns.dns.cluster.local.", "10.96.0.10")]


@pytest.mark.parametrize(("n", "weight"), [(1, 100), (2, 50), (3, 33), (4, 25), (6, 16), (7, 14), (200, 1)])
def test_srv_weight_is_coredns_share(n: int, weight: int) -> None:
    z = Zone()
    eps = [endpoint(f"10.244.{i // 250}.{i % 250 + 1}") for i in range(n)]
    z.update(service("h", ip=None, ports=[port("http", 80)]), endpoint_slice("h", eps, [port("http", 80)]))
    got = z.answer("_http._tcp.h.prod.svc.cluster.local", "SRV")
    assert len(got.answers) == n
    assert {r.data.split()[1] for r in got.answers} == {str(weight)}


def test_soa_as_coredns_writes_it(zone: Zone) -> None:
    soa = zone.answer("nothere.prod.svc.cluster.local", "A").authority[0]
    assert soa == Record("cluster.local.", "SOA", 5,
                         "ns.dns.cluster.local. hostmaster.cluster.local. 1700000000 7200 1800 86400 5")
    assert rr(zone.answer("cluster.local", "SOA")) == [("cluster.local.", "SOA", soa.data)]
    z = Zone(ttl=30)  # kubeadm's Corefile: ttl 30
    z.update(namespace("prod"))
    assert z.answer("x.prod.svc.cluster.local", "A").authority[0].ttl == 30


def test_changes_show_at_once() -> None:
    z = Zone()
    slice_ = endpoint_slice("db", [endpoint("10.244.1.20")], [port("pg", 5432)])
    z.update(slice_)  # the slice before its Service: kept until the Service comes
    assert z.answer("db.prod.svc.cluster.local", "A").rcode == NXDOMAIN
    z.update(service("db", ip=None, ports=[port("pg", 5432)]))
    assert rr(z.answer("db.prod.svc.cluster.local", "A")) == [(f"db.prod.{S}", "A", "10.244.1.20")]
    # the endpoint turns not ready (its node died): it leaves the answer
    z.apply({"type": "MODIFIED", "object": endpoint_slice("db", [endpoint("10.244.1.20", ready=False),
                                                                 endpoint("10.244.2.5")], [port("pg", 5432)])})
    assert rr(z.answer("db.prod.svc.cluster.local", "A")) == [(f"db.prod.{S}", "A", "10.244.2.5")]
    z.apply({"type": "DELETED", "object": slice_})
    assert z.answer("db.prod.svc.cluster.local", "A").rcode == NXDOMAIN
    z.remove(service("db", ip=None))
    assert z.answer("db.prod.svc.cluster.local", "A").rcode == NXDOMAIN
    assert z.answer("prod.svc.cluster.local", "A").rcode == NXDOMAIN  # nothing holds the namespace now


def test_pods_verified_and_disabled() -> None:
    verified = Zone(pods="verified")
    verified.update(namespace("prod"), pod("web-1", "10.244.1.5"))
    assert rr(verified.answer("10-244-1-5.prod.pod.cluster.local", "A"))[0][2] == "10.244.1.5"
    assert verified.answer("10-244-1-6.prod.pod.cluster.local", "A").rcode == NXDOMAIN
    disabled = Zone(pods="disabled")
    disabled.update(namespace("prod"))
    assert disabled.answer("10-244-1-5.prod.pod.cluster.local", "A").rcode == NXDOMAIN


def test_endpoint_pod_names_option() -> None:
    z = Zone(endpoint_pod_names=True)
    z.update(service("h", ip=None, ports=[port("p", 1)]),
             endpoint_slice("h", [endpoint("10.244.1.5", pod="web-1")], [port("p", 1)]))
    assert rr(z.answer("web-1.h.prod.svc.cluster.local", "A")) == [(f"web-1.h.prod.{S}", "A", "10.244.1.5")]


def test_external_name_chain_is_bounded() -> None:
    z = Zone()
    z.update(*(service(f"s{i}", external=f"s{i + 1}.prod.svc.cluster.local") for i in range(12)))
    got = z.answer("s0.prod.svc.cluster.local", "A")
    assert got.rcode == NOERROR and got.answers == () and got.cname_target is None
    z.update(service("loop", external="loop.prod.svc.cluster.local"))
    assert z.answer("loop.prod.svc.cluster.local", "A").answers == ()


def test_bad_objects_are_refused() -> None:
    z = Zone()
    with pytest.raises(ZoneError, match="kind"):
        z.update({"metadata": {"name": "x"}})
    with pytest.raises(ZoneError, match="metadata.name"):
        z.update({"kind": "Service", "metadata": {}})
    with pytest.raises(ZoneError, match="pods"):
        Zone(pods="sometimes")


@given(st.tuples(*[st.integers(0, 255)] * 4))
def test_any_dashed_pod_address_answers_itself(octets: tuple[int, int, int, int]) -> None:
    z = Zone()
    z.update(namespace("prod"))
    ip = ".".join(map(str, octets))
    got = z.answer(f"{ip.replace('.', '-')}.prod.pod.cluster.local", "A")
    assert rr(got) == [(f"{ip.replace('.', '-')}.prod.pod.cluster.local.", "A", ip)]

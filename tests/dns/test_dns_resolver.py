"""The stub resolver: resolv.conf, the search list with ndots (glibc and musl), server failover."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from agents.dns.resolver import Lookup, ResolvConf, ResolvConfError, StubResolver, resolv_conf_of
from agents.dns.zone import NOERROR, NXDOMAIN, SERVFAIL, Record

POD = ResolvConf.for_pod("prod")
P = ["prod.svc.cluster.local", "svc.cluster.local", "cluster.local"]


def test_pod_resolv_conf_is_the_kubelets() -> None:
    assert POD.render() == ("search prod.svc.cluster.local svc.cluster.local cluster.local\n"
                            "nameserver 10.96.0.10\noptions ndots:5\n")
    assert ResolvConf.parse(POD.render()) == POD
    with_host = ResolvConf.for_pod("prod", host_search=["corp.example"])
    assert with_host.search == (*P, "corp.example")


@pytest.mark.parametrize(("name", "ndots", "search", "flavor", "expected"), [
    # fewer dots than ndots: the search domains first, then the name as is
    ("backend", 5, P, "glibc", ["backend.prod.svc.cluster.local.", "backend.svc.cluster.local.",
                                "backend.cluster.local.", "backend."]),
    ("backend.prod", 5, P, "glibc", ["backend.prod.prod.svc.cluster.local.", "backend.prod.svc.cluster.local.",
                                     "backend.prod.cluster.local.", "backend.prod."]),
    ("www.example.com", 5, P, "glibc", ["www.example.com.prod.svc.cluster.local.",
                                        "www.example.com.svc.cluster.local.", "www.example.com.cluster.local.",
                                        "www.example.com."]),
    ("a.b.c.d.e", 5, P, "musl", ["a.b.c.d.e.prod.svc.cluster.local.", "a.b.c.d.e.svc.cluster.local.",
                                 "a.b.c.d.e.cluster.local.", "a.b.c.d.e."]),
    # ndots reached: as is first (glibc), as is only (musl)
    ("a.b.c.d.e.f", 5, P, "glibc", ["a.b.c.d.e.f.", "a.b.c.d.e.f.prod.svc.cluster.local.",
                                    "a.b.c.d.e.f.svc.cluster.local.", "a.b.c.d.e.f.cluster.local."]),
    ("a.b.c.d.e.f", 5, P, "musl", ["a.b.c.d.e.f."]),
    ("db.corp.example", 1, ["corp.example"], "glibc", ["db.corp.example.", "db.corp.example.corp.example."]),
    # a trailing dot: absolute, no search
    ("example.com.", 5, P, "glibc", ["example.com."]),
    # a VM without a search list
    ("intranet", 1, [], "glibc", ["intranet."]),
    ("db.corp.example", 1, [], "glibc", ["db.corp.example."]),
    # ndots:0 never searches first
    ("backend", 0, P, "glibc", ["backend.", "backend.prod.svc.cluster.local.", "backend.svc.cluster.local.",
                                "backend.cluster.local."]),
    # not a name
    ("", 5, P, "glibc", []), ("a..b", 5, P, "glibc", []), (".a", 5, P, "glibc", []),
])
def test_search_order(name: str, ndots: int, search: list[str], flavor: str, expected: list[str]) -> None:
    conf = ResolvConf(nameservers=("10.96.0.10",), search=tuple(search), ndots=ndots)
    assert StubResolver(conf, flavor=flavor).candidates(name) == expected


# --- the lookup state machine, driven by a table of what servers answer ----------------------

Table = dict[tuple[str, str, str], tuple[int, list[Record]] | None]  # None: the server is silent


def drive(lookup: Lookup, table: Table | Callable[..., tuple[int, list[Record]] | None]) -> list[tuple[str, str, str]]:
    asked = []
    while (q := lookup.next_query()) is not None:
        asked.append((q.server, q.name, q.qtype))
        reply = table(q.server, q.name, q.qtype) if callable(table) else table.get(
            (q.server, q.name, q.qtype), (NXDOMAIN, []))
        if reply is None:
            lookup.on_timeout(q)
        else:
            lookup.on_answer(q, *reply)
    return asked


def a(name: str, ip: str) -> Record:
    return Record(name, "A", 5, ip)


def test_found_on_the_second_search_domain() -> None:
    table: Table = {("10.96.0.10", "backend.prod.svc.cluster.local.", "A"):
                    (NOERROR, [a("backend.prod.svc.cluster.local.", "10.96.0.15")])}
    lookup = StubResolver(POD).lookup("backend.prod")
    asked = drive(lookup, table)
    assert [n for _, n, _ in asked] == ["backend.prod.prod.svc.cluster.local.", "backend.prod.svc.cluster.local."]
    res = lookup.result
    assert res is not None and res.ok and res.addresses == ("10.96.0.15",)
    assert res.qname == "backend.prod.svc.cluster.local." and res.queries == 2


def test_cname_chain_gives_the_canonical_name() -> None:
    ext = "ext.prod.svc.cluster.local."
    table: Table = {("10.96.0.10", ext, "A"): (NOERROR, [Record(ext, "CNAME", 5, "db.corp.example."),
                                                         a("db.corp.example.", "172.16.0.50")])}
    lookup = StubResolver(POD).lookup("ext")
    drive(lookup, table)
    res = lookup.result
    assert res is not None and res.ok
    assert res.name == "db.corp.example" and res.cnames == ((ext, "db.corp.example."),)
    assert res.addresses == ("172.16.0.50",)


def test_nothing_anywhere_is_nxdomain_after_every_name() -> None:
    lookup = StubResolver(POD).lookup("nothere")
    asked = drive(lookup, {})
    assert len(asked) == 4 and asked[-1][1] == "nothere."
    assert lookup.result is not None and lookup.result.status == "nxdomain"
    assert lookup.result.gai_error == "Name or service not known"
    assert lookup.result.tried[-1] == "nothere."


def test_nodata_wins_over_nxdomain() -> None:
    table: Table = {("10.96.0.10", "prod.svc.cluster.local.", "A"): (NOERROR, [])}
    lookup = StubResolver(POD).lookup("prod")
    drive(lookup, table)
    assert lookup.result is not None and lookup.result.status == "nodata"
    assert lookup.result.gai_error == "No address associated with hostname"


def test_servfail_goes_on_with_glibc_and_stops_with_musl() -> None:
    def table(server: str, name: str, qtype: str) -> tuple[int, list[Record]]:
        if name == "web.prod.svc.cluster.local.":
            return SERVFAIL, []
        if name == "web.":
            return NOERROR, [a("web.", "192.0.2.1")]
        return NXDOMAIN, []
    glibc = StubResolver(POD).lookup("web")
    # res_send asks the one server again on the second attempt, then res_search moves on
    assert [n for _, n, _ in drive(glibc, table)] == ["web.prod.svc.cluster.local."] * 2 + [
        "web.svc.cluster.local.", "web.cluster.local.", "web."]
    assert glibc.result is not None and glibc.result.ok and glibc.result.addresses == ("192.0.2.1",)
    musl = StubResolver(POD, flavor="musl").lookup("web")
    drive(musl, table)
    assert musl.result is not None and musl.result.status == "again"


def test_servfail_then_nothing_is_try_again() -> None:
    lookup = StubResolver(POD).lookup("web")
    drive(lookup, lambda s, n, t: (SERVFAIL, []) if n.startswith("web.prod") else (NXDOMAIN, []))
    assert lookup.result is not None and lookup.result.status == "again"
    assert lookup.result.gai_error == "Temporary failure in name resolution"


def test_timeouts_fail_over_then_end_the_search() -> None:
    conf = ResolvConf(nameservers=("10.0.0.1", "10.0.0.2"), search=("corp.example",), ndots=1, attempts=2)
    # the first server is down, the second answers
    lookup = StubResolver(conf).lookup("db")
    asked = drive(lookup, lambda s, n, t: None if s == "10.0.0.1" else (NOERROR, [a(n, "172.16.0.50")]))
    assert [s for s, _, _ in asked] == ["10.0.0.1", "10.0.0.2"]
    assert lookup.result is not None and lookup.result.ok
    # both down: servers x attempts tries of the first name, then TRY_AGAIN without the rest
    lookup = StubResolver(conf).lookup("db")
    asked = drive(lookup, lambda s, n, t: None)
    assert [s for s, _, _ in asked] == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]
    assert {n for _, n, _ in asked} == {"db.corp.example."}
    assert lookup.result is not None and lookup.result.status == "again"


def test_servfail_moves_to_the_next_server() -> None:
    conf = ResolvConf(nameservers=("10.0.0.1", "10.0.0.2"), ndots=1)
    lookup = StubResolver(conf).lookup("db.corp.example")
    asked = drive(lookup, lambda s, n, t: (SERVFAIL, []) if s == "10.0.0.1" else (NOERROR, [a(n, "172.16.0.50")]))
    assert [s for s, _, _ in asked] == ["10.0.0.1", "10.0.0.2"]
    assert lookup.result is not None and lookup.result.ok


def test_as_is_first_failure_is_the_one_reported() -> None:
    conf = ResolvConf(nameservers=("10.0.0.1",), search=("corp.example",), ndots=1)
    lookup = StubResolver(conf).lookup("x.y")
    drive(lookup, lambda s, n, t: (NOERROR, []) if n == "x.y." else (NXDOMAIN, []))
    assert lookup.result is not None and lookup.result.status == "nodata"


def test_a_and_aaaa() -> None:
    def table(s: str, n: str, t: str) -> tuple[int, list[Record]]:
        if n != "dual.prod.svc.cluster.local.":
            return NXDOMAIN, []
        return NOERROR, [Record(n, t, 5, "10.96.0.20" if t == "A" else "fd00:10:96::20")]
    lookup = StubResolver(POD).lookup("dual", ("A", "AAAA"))
    drive(lookup, table)
    assert lookup.result is not None and lookup.result.addresses == ("10.96.0.20", "fd00:10:96::20")


def test_literals_and_hosts_need_no_dns() -> None:
    r = StubResolver(POD, hosts={"localhost": ["127.0.0.1", "::1"], "web-1": ["10.244.1.5"]})
    for name, addrs in [("10.96.0.15", ("10.96.0.15",)), ("localhost", ("127.0.0.1",)), ("web-1", ("10.244.1.5",))]:
        lookup = r.lookup(name)
        assert lookup.next_query() is None and lookup.result is not None and lookup.result.addresses == addrs
    assert r.lookup("::1", ("AAAA",)).result is not None


def test_late_answers_are_ignored() -> None:
    lookup = StubResolver(POD).lookup("backend")
    q = lookup.next_query()
    assert q is not None
    lookup.on_timeout(q)
    lookup.on_answer(q, NOERROR, [a(q.name, "10.0.0.1")])  # too late: the same question was retried
    assert not lookup.done


def test_resolv_conf_parse_and_limits() -> None:
    conf = ResolvConf.parse("""# generated
domain corp.example
search a.example b.example   ; trailing comment
nameserver 10.0.0.1
nameserver 10.0.0.2
nameserver 10.0.0.3
nameserver 10.0.0.4
nameserver not-an-ip
options ndots:30 timeout:2 attempts:9 rotate
""")
    assert conf.search == ("a.example", "b.example") and conf.ndots == 15
    assert conf.timeout == 2 and conf.attempts == 5
    assert conf.servers == ("10.0.0.1", "10.0.0.2", "10.0.0.3")  # MAXNS
    assert ResolvConf().servers == ("127.0.0.1",)


@pytest.mark.parametrize(("obj", "error"), [
    ([], "dns: expected a mapping"),
    ({"nameservers": "10.0.0.1"}, "dns.nameservers: expected a list"),
    ({"nameservers": ["dns.corp"]}, r"dns.nameservers\[0\]: not an IP"),
    ({"ndots": -1}, "dns.ndots"), ({"ndots": True}, "dns.ndots"), ({"timeout": 0}, "dns.timeout"),
    ({"server": []}, "dns.server: unknown key"),
])
def test_vm_dns_config_errors_name_the_key(obj: object, error: str) -> None:
    with pytest.raises(ResolvConfError, match=error):
        ResolvConf.from_config(obj)


def test_which_resolv_conf_a_tool_uses() -> None:
    assert resolv_conf_of(SimpleNamespace(resolv_conf=POD)) is POD
    vm = SimpleNamespace(config=SimpleNamespace(raw={"dns": {"nameservers": ["172.16.0.2"], "search": ["corp.example"],
                                                             "ndots": 2}}))
    assert resolv_conf_of(vm) == ResolvConf(nameservers=("172.16.0.2",), search=("corp.example",), ndots=2)
    leased = SimpleNamespace(config=SimpleNamespace(raw={}), dhcp=[SimpleNamespace(ack={"dns": ["172.16.0.3"]})])
    assert resolv_conf_of(leased).nameservers == ("172.16.0.3",)
    assert resolv_conf_of(SimpleNamespace()) == ResolvConf()

"""The sans-IO HAProxy model: config validation, haproxy.cfg, balance algorithms, the health
check state machine on a hand-driven clock, session counters and the stats CSV."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from agents.haproxy.core import (
    BALANCERS,
    STAT_FIELDS,
    Backend,
    BackendSpec,
    CheckSpec,
    Defaults,
    HealthCheck,
    LBConfig,
    LBConfigError,
    LoadBalancer,
    ServerSpec,
    format_time,
    parse_csv,
    parse_proxy_v2,
    parse_time,
    proxy_v2_header,
    render_cfg,
)

VIP = "172.16.0.150"


def doc(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cluster": "cluster1",
        "vips": [VIP],
        "frontends": [{"name": "apiserver", "bind": f"{VIP}:6443", "default_backend": "apiserver"}],
        "backends": [{"name": "apiserver", "balance": "roundrobin",
                      "servers": [{"name": "s1", "address": "10.0.0.5", "port": 6443},
                                  {"name": "s2", "address": "10.0.0.6", "port": 6443}]}],
    }
    base.update(over)
    return base


def backend(*weights: int, balance: str = "roundrobin", rise: int = 2, fall: int = 3) -> Backend:
    servers = tuple(ServerSpec(name=f"s{i + 1}", address=f"10.0.0.{i + 1}", port=80, weight=w)
                    for i, w in enumerate(weights))
    spec = BackendSpec(name="be", balance=balance, check=CheckSpec(inter=2.0, rise=rise, fall=fall), servers=servers)
    return Backend(spec, 1, 0.0)


# --- config and haproxy.cfg ----------------------------------------------------------------


def test_parse_fills_defaults_and_round_trips() -> None:
    cfg = LBConfig.parse(doc(), Defaults(inter=0.2, timeout_connect=0.5))
    be = cfg.backends[0]
    assert be.check == CheckSpec(inter=0.2, rise=2, fall=3)  # the scaled default inter
    assert be.mode == "tcp" and be.servers[0].weight == 1 and be.servers[0].check
    assert cfg.frontends[0].address == VIP and cfg.frontends[0].port == 6443
    assert cfg.timeout_connect == 0.5 and cfg.retries == 3 and cfg.redispatch
    again = LBConfig.parse(cfg.to_json(), Defaults(inter=9.0))
    assert again == cfg


def test_backend_is_an_alias_of_default_backend() -> None:
    d = doc()
    d["frontends"][0]["backend"] = d["frontends"][0].pop("default_backend")
    assert LBConfig.parse(d) == LBConfig.parse(doc())
    d["frontends"][0]["default_backend"] = "other"
    with pytest.raises(LBConfigError, match=r"^frontends\[0\]\.backend: differs from default_backend"):
        LBConfig.parse(d)


def test_vips_default_to_the_frontend_addresses() -> None:
    d = doc()
    del d["vips"]
    assert LBConfig.parse(d).vips == (VIP,)


def test_render_cfg() -> None:
    d = doc()
    d["backends"][0]["servers"][1].update(weight=3, send_proxy_v2=True)
    text = render_cfg(LBConfig.parse(d, Defaults(inter=2.0, timeout_connect=5.0)))
    lines = text.splitlines()
    for section in ("global", "defaults", "frontend apiserver", "backend apiserver"):
        assert section in lines
    i = lines.index("frontend apiserver")
    assert lines[i + 1:i + 4] == [f"    bind {VIP}:6443", "    mode tcp", "    default_backend apiserver"]
    j = lines.index("backend apiserver")
    assert lines[j + 1:j + 5] == [
        "    mode tcp", "    balance roundrobin",
        "    server s1 10.0.0.5:6443 check inter 2s rise 2 fall 3",
        "    server s2 10.0.0.6:6443 check inter 2s rise 2 fall 3 weight 3 send-proxy-v2",
    ]
    d_idx = lines.index("defaults")
    assert "    mode tcp" in lines[d_idx:i] and "    timeout connect 5s" in lines[d_idx:i]
    assert "    option redispatch" in lines[d_idx:i] and "    retries 3" in lines[d_idx:i]
    scaled = render_cfg(LBConfig.parse(doc(), Defaults(inter=0.2, timeout_connect=0.5)))
    assert "    server s1 10.0.0.5:6443 check inter 200ms rise 2 fall 3" in scaled.splitlines()
    assert "    timeout connect 500ms" in scaled.splitlines()


def test_times() -> None:
    assert parse_time(2, "x") == 2.0 and parse_time("2s", "x") == 2.0 and parse_time("250ms", "x") == 0.25
    assert parse_time("1500", "x") == 1.5  # a bare number in haproxy.cfg is milliseconds
    assert [format_time(t) for t in (2.0, 0.2, 1.5, 60.0, 0.0001)] == ["2s", "200ms", "1500ms", "60s", "100us"]
    with pytest.raises(LBConfigError, match=r"^x: 'soon' is not a time"):
        parse_time("soon", "x")


def _set(path: str, value: Any) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        *parts, last = path.split(".")
        target: Any = d
        for p in parts:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return mutate


@pytest.mark.parametrize("mutate, message", [
    (_set("backends.0.servers.1.port", 0), "backends[0].servers[1].port: expected 1..65535, got 0"),
    (_set("backends.0.servers.0.address", "10.0.0.300"), "backends[0].servers[0].address: '10.0.0.300' is not an IP address"),
    (_set("backends.0.servers.0.weight", 257), "backends[0].servers[0].weight: expected 0..256, got 257"),
    (_set("backends.0.servers.0.wieght", 2), "backends[0].servers[0].wieght: unknown key"),
    (_set("backends.0.servers.1.name", "s1"), "backends[0].servers[1].name: duplicate server 's1'"),
    (_set("backends.0.balance", "random"), "backends[0].balance: unknown algorithm 'random' (known: leastconn, roundrobin, source)"),
    (_set("backends.0.mode", "http"), "backends[0].mode: 'http' not supported"),
    (_set("backends.0.check", {"inter": "2x"}), "backends[0].check.inter: '2x' is not a time"),
    (_set("backends.0.check", {"fall": 0}), "backends[0].check.fall: expected 1..1000, got 0"),
    (_set("backends.0.name", "bad name"), "backends[0].name: 'bad name' is not a valid name"),
    (_set("frontends.0.default_backend", "nope"), "frontends[0].default_backend: no backend named 'nope'"),
    (_set("frontends.0.bind", "172.16.0.151:6443"), "frontends[0].bind: 172.16.0.151 is not one of the vips"),
    (_set("frontends.0.bind", f"{VIP}:http"), "frontends[0].bind: 'http' is not a port number"),
    (_set("frontends.0.bind", KeyError), "frontends[0].bind: required"),
    (_set("vips", ["172.16.0.150", "172.16.0.150"]), "vips[1]: duplicate VIP '172.16.0.150'"),
    (_set("defaults", {"retries": -1}), "defaults.retries: expected 0..100, got -1"),
    (_set("backends", {}), "backends: expected list, got dict"),
    (_set("extra", 1), "extra: unknown key"),
])
def test_validation_errors_name_the_field(mutate: Any, message: str) -> None:
    d = copy.deepcopy(doc())
    mutate(d)
    with pytest.raises(LBConfigError) as info:
        LBConfig.parse(d)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_overlapping_binds_are_refused() -> None:
    d = doc(vips=[VIP])
    d["frontends"].append({"name": "other", "bind": "0.0.0.0:6443", "default_backend": "apiserver"})
    with pytest.raises(LBConfigError, match=r"^frontends\[1\]\.bind: 0\.0\.0\.0:6443 overlaps the bind of frontend 'apiserver'"):
        LBConfig.parse(d)
    with pytest.raises(LBConfigError, match=r"^config: expected an object"):
        LBConfig.parse([1, 2])


# --- balance algorithms --------------------------------------------------------------------


def picks(be: Backend, n: int, client: str = "192.0.2.1") -> list[str]:
    out = []
    for _ in range(n):
        s = be.select(client)
        assert s is not None
        out.append(s.name)
    return out


def test_registry() -> None:
    assert sorted(BALANCERS) == ["leastconn", "roundrobin", "source"]


def test_roundrobin_equal_and_weighted() -> None:
    assert picks(backend(1, 1, 1), 6) == ["s1", "s2", "s3", "s1", "s2", "s3"]
    be = backend(3, 1)
    seq = picks(be, 8)
    assert seq[:4] == ["s1", "s1", "s2", "s1"]  # interleaved, not s1 s1 s1 s2
    assert Counter(picks(be, 400)) == {"s1": 300, "s2": 100}
    assert be.server("s1").c.lbtot == 306 and be.c.lbtot == 408


def test_roundrobin_skips_down_and_zero_weight_servers() -> None:
    be = backend(1, 1, 0)
    assert set(picks(be, 10)) == {"s1", "s2"}
    hc = be.server("s1").check
    assert hc is not None
    be.report_check(be.server("s1"), "L4CON", 1.0)  # starts "UP, falls at the first failure"
    assert picks(be, 3) == ["s2", "s2", "s2"]
    be.report_check(be.server("s2"), "L4TOUT", 1.0)
    assert be.select("192.0.2.1") is None and be.up is False


def test_leastconn() -> None:
    be = backend(1, 1, 1, balance="leastconn")
    s1, s2, s3 = be.servers
    s1.c.scur, s2.c.scur, s3.c.scur = 5, 1, 3
    assert picks(be, 1) == ["s2"]
    s2.c.scur = 5
    assert picks(be, 1) == ["s3"]
    s1.c.scur = s2.c.scur = s3.c.scur = 0
    assert picks(be, 6) == ["s1", "s2", "s3", "s1", "s2", "s3"]  # equal load: take turns
    w = backend(1, 4, balance="leastconn")
    w.servers[0].c.scur, w.servers[1].c.scur = 1, 4  # (1+1)/1 = 2 > (4+1)/4 = 1.25
    assert picks(w, 1) == ["s2"]


def test_source_is_sticky_and_spreads() -> None:
    be = backend(1, 1, 1, balance="source")
    clients = [f"172.16.{i // 250}.{i % 250 + 1}" for i in range(900)]
    first = {c: picks(be, 1, c)[0] for c in clients}
    assert all(picks(be, 3, c) == [first[c]] * 3 for c in clients[:50])
    counts = Counter(first.values())
    assert set(counts) == {"s1", "s2", "s3"} and min(counts.values()) > 200, counts
    weighted = backend(1, 3, balance="source")
    wc = Counter(picks(weighted, 1, c)[0] for c in clients)
    assert 0.6 < wc["s2"] / len(clients) < 0.9, wc
    # A server going DOWN: its clients move to the remaining servers.
    be.report_check(be.server("s1"), "L4CON", 1.0)
    assert all(picks(be, 1, c)[0] != "s1" for c in clients[:100])


# --- health checks -------------------------------------------------------------------------


def test_health_state_machine_like_haproxy() -> None:
    hc = HealthCheck(CheckSpec(inter=2.0, rise=2, fall=3), now=0.0)
    # A new server is UP but "will fall down at first failure" (health = rise).
    assert hc.up and hc.health == 2 and hc.status == "INI" and hc.status_text() == "UP 1/3"
    assert hc.report("L4OK", 2.0) is False
    assert hc.health == 4 and hc.status_text() == "UP"  # reaching rise -> fully up at once
    # Fully UP: DOWN after exactly `fall` consecutive failures.
    assert hc.report("L4TOUT", 4.0) is False and hc.status_text() == "UP 2/3"
    assert hc.report("L4TOUT", 6.0) is False and hc.status_text() == "UP 1/3"
    assert hc.report("L4CON", 8.0, info="Connection refused") is True
    assert not hc.up and hc.status_text() == "DOWN" and hc.chkdown == 1 and hc.chkfail == 3
    assert hc.last_change == 8.0 and hc.last_chk == "Connection refused" and hc.status == "L4CON"
    # DOWN: failures are not counted in chkfail (health is 0), nothing moves.
    assert hc.report("L4CON", 10.0) is False and hc.chkfail == 3
    # Back UP after exactly `rise` consecutive successes.
    assert hc.report("L4OK", 12.0) is False and hc.status_text() == "DOWN 1/2"
    assert hc.report("L4OK", 14.0) is True and hc.up and hc.status_text() == "UP"
    assert hc.downtime(20.0) == pytest.approx(6.0) and hc.last_change == 14.0
    # A success in between resets the count of failures.
    hc.report("L4TOUT", 16.0)
    hc.report("L4TOUT", 18.0)
    hc.report("L4OK", 20.0)
    assert hc.status_text() == "UP"
    hc.report("L4TOUT", 22.0)
    hc.report("L4TOUT", 24.0)
    assert hc.up
    hc.report("L4TOUT", 26.0)
    assert not hc.up and hc.chkdown == 2 and hc.downtime(30.0) == pytest.approx(6.0 + 4.0)
    with pytest.raises(ValueError, match="status: not a check result"):
        hc.report("L6OK", 30.0)  # L7OK is one since httpchk


def test_a_new_server_falls_at_its_first_failure() -> None:
    hc = HealthCheck(CheckSpec(inter=1.0, rise=3, fall=5), now=0.0)
    assert hc.report("L4CON", 1.0) is True and not hc.up and hc.chkdown == 1
    for t in (2.0, 3.0):
        assert hc.report("L4OK", t) is False
    assert hc.status_text() == "DOWN 2/3"
    assert hc.report("L4OK", 4.0) is True and hc.health == 7


@pytest.mark.parametrize("rise, fall", [(1, 1), (2, 3), (3, 2), (5, 5)])
def test_fall_and_rise_counts(rise: int, fall: int) -> None:
    hc = HealthCheck(CheckSpec(inter=1.0, rise=rise, fall=fall), now=0.0)
    hc.report("L4OK", 0.5)
    t = 1.0
    for i in range(1, fall + 1):
        changed = hc.report("L4TOUT", t)
        t += 1
        assert changed == (i == fall) and hc.up == (i < fall)
    for i in range(1, rise + 1):
        changed = hc.report("L4OK", t)
        t += 1
        assert changed == (i == rise) and hc.up == (i == rise)


def test_backend_goes_down_with_its_last_server() -> None:
    be = backend(1, 1)
    s1, s2 = be.servers
    be.report_check(s1, "L4OK", 1.0)
    be.report_check(s2, "L4OK", 1.0)
    for t in (2.0, 3.0, 4.0):
        be.report_check(s1, "L4TOUT", t)
    assert not s1.up and be.up
    for t in (5.0, 6.0, 7.0):
        be.report_check(s2, "L4CON", t)
    assert not be.up and be.chkdown == 1 and be.last_change == 7.0
    be.report_check(s2, "L4OK", 8.0)
    be.report_check(s2, "L4OK", 9.0)
    assert be.up and be.downtime(10.0) == pytest.approx(2.0)


# --- sessions, apply, stats ----------------------------------------------------------------


def lb_with(d: dict[str, Any], now: float = 0.0) -> LoadBalancer:
    lb = LoadBalancer(now)
    lb.apply(LBConfig.parse(d, Defaults(inter=2.0)), now)
    return lb


def test_session_counters() -> None:
    lb = lb_with(doc())
    sess = lb.open_session("apiserver", "172.16.0.30", 1.0)
    server = sess.choose()
    assert server is not None and server.name == "s1"
    sess.connecting(1.0)
    sess.connect_failed()
    assert sess.redispatch() is not None and sess.server is not None and sess.server.name == "s2"
    sess.connecting(1.1)
    sess.established(1.1)
    sess.add_in(100)
    sess.add_out(250)
    be = lb.backends["apiserver"]
    fe = lb.frontends["apiserver"]
    assert (fe.c.scur, be.c.scur, be.server("s2").c.scur) == (1, 1, 1)
    sess.close()
    sess.close()  # idempotent
    s1, s2 = be.servers
    assert (fe.c.scur, fe.c.stot, fe.c.bin, fe.c.bout) == (0, 1, 100, 250)
    assert (be.c.scur, be.c.smax, be.c.stot, be.c.econ, be.c.wredis, be.c.lbtot) == (0, 1, 1, 1, 1, 2)
    assert (s1.c.econ, s1.c.wredis, s1.c.stot, s1.c.lbtot) == (1, 1, 0, 1)
    assert (s2.c.scur, s2.c.stot, s2.c.bin, s2.c.bout, s2.c.connect) == (0, 1, 100, 250, 1)
    # No usable server: the backend's econ counts it ("no active servers").
    for s in be.servers:
        be.report_check(s, "L4CON", 2.0)
    sess = lb.open_session("apiserver", "172.16.0.30", 3.0)
    assert sess.choose() is None
    sess.close()
    assert be.c.econ == 2 and fe.c.stot == 2


def test_apply_keeps_unchanged_servers_and_plans_the_changes() -> None:
    lb = lb_with(doc())
    be = lb.backends["apiserver"]
    s1, s2 = be.servers
    be.report_check(s2, "L4CON", 1.0)
    assert not s2.up
    s1.c.stot = 7
    d = doc(vips=[VIP, "172.16.0.151"])
    d["backends"][0]["servers"] = [{"name": "s1", "address": "10.0.0.5", "port": 6443, "weight": 2},
                                   {"name": "s2", "address": "10.0.0.9", "port": 6443}]
    d["frontends"].append({"name": "web", "bind": "172.16.0.151:80", "default_backend": "apiserver"})
    new = LBConfig.parse(d)
    plan = lb.plan(new)
    assert [f.name for f in plan.start] == ["web"] and plan.stop == ()
    assert plan.claim == ("172.16.0.151",) and plan.release == ()
    lb.apply(new, 2.0)
    assert lb.backends["apiserver"] is be
    n1, n2 = be.servers
    assert n1 is s1 and n1.c.stot == 7 and n1.spec.weight == 2  # same address: state kept
    assert n2 is not s2 and n2.up  # new address: a new server, UP
    plan = lb.plan(LBConfig.parse(doc()))
    assert [f.name for f in plan.stop] == ["web"] and plan.release == ("172.16.0.151",)


def test_stats_csv() -> None:
    lb = lb_with(doc())
    be = lb.backends["apiserver"]
    be.report_check(be.server("s1"), "L4OK", 1.0, 0.003)
    for t in (2.0, 4.0, 6.0):
        be.report_check(be.server("s2"), "L4TOUT", t, 2.0)
    sess = lb.open_session("apiserver", "172.16.0.30", 7.0)
    sess.choose()
    sess.connecting(7.0)
    sess.established(7.0)
    sess.add_in(10)
    sess.add_out(20)
    text = lb.csv(10.0)
    lines = text.splitlines()
    assert lines[0].startswith(
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
        "status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,"
        "type,rate,rate_lim,rate_max,check_status,check_code,check_duration,")
    assert lines[0].endswith(",uweight,")
    assert all(len(line.split(",")) == len(STAT_FIELDS) + 1 for line in lines[1:])
    rows = parse_csv(text)
    assert [(r["pxname"], r["svname"]) for r in rows] == [
        ("apiserver", "FRONTEND"), ("apiserver", "s1"), ("apiserver", "s2"), ("apiserver", "BACKEND")]
    fe, s1, s2, back = rows
    assert (fe["status"], fe["scur"], fe["stot"], fe["bin"], fe["bout"], fe["type"]) == ("OPEN", "1", "1", "10", "20", "0")
    assert (s1["status"], s1["check_status"], s1["check_duration"], s1["scur"], s1["lbtot"]) == ("UP", "L4OK", "3", "1", "1")
    assert (s1["type"], s1["sid"], s1["addr"], s1["check_rise"], s1["check_fall"]) == ("2", "1", "10.0.0.5:6443", "2", "3")
    assert s2["status"] == "DOWN" and s2["check_status"] == "L4TOUT" and s2["check_desc"] == "Layer4 timeout"
    # s2 started with health = rise: its first failure already took it down, the next two
    # found it DOWN (not counted in chkfail).
    assert (s2["chkfail"], s2["chkdown"], s2["lastchg"], s2["downtime"]) == ("1", "1", "8", "8")
    assert (back["status"], back["act"], back["weight"], back["algo"], back["type"]) == ("UP", "1", "1", "roundrobin", "1")
    assert (back["stot"], back["bin"], back["bout"], back["mode"]) == ("1", "10", "20", "tcp")
    assert rows[0]["pid"] == "1" and s1["iid"] == back["iid"] != fe["iid"]


def test_proxy_v2_header_round_trip() -> None:
    hdr = proxy_v2_header(("203.0.113.10", 40000), (VIP, 443))
    assert hdr.startswith(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c") and len(hdr) == 28
    assert parse_proxy_v2(hdr + b"GET /") == (28, ("203.0.113.10", 40000), (VIP, 443))
    assert parse_proxy_v2(hdr[:20]) is None and parse_proxy_v2(b"GET / HTTP/1.1\r\n") is None
    v6 = proxy_v2_header(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert parse_proxy_v2(v6) == (52, ("2001:db8::1", 1), ("2001:db8::2", 2))

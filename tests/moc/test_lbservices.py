"""LoadBalancer Service VIP allocation at MOC (sans-IO): the shipped per-(IP, port) allocator,
the exclusive one, ``loadBalancerIP``, release, and the lbagent document."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.haproxy.core import Defaults, LBConfig
from agents.moc import lbservices as L
from agents.moc import pools as P

RANGE = P.IpRange(ipaddress.ip_address("172.16.0.150"), ipaddress.ip_address("172.16.0.153"))


def svc(cluster: str, name: str, *ports: int, ns: str = "default", **extra: Any) -> L.ServiceLb:
    doc = {"cluster": cluster, "namespace": ns, "name": name,
           "ports": [{"port": p, "protocol": "TCP", "nodePort": 30000 + p} for p in ports], **extra}
    return L.parse_ensure(doc)


def pool_with_apiservers(*clusters: str) -> P.VipPool:
    pool = P.VipPool(RANGE)
    for c in clusters:
        pool.allocate(c, "apiserver")
    return pool


def test_same_cluster_different_ports_share_a_vip() -> None:
    pool = pool_with_apiservers("c1")
    a = L.allocate(pool, svc("c1", "web", 80))
    b = L.allocate(pool, svc("c1", "api", 8080))
    assert a == b == "172.16.0.151"  # .150 is the API server's, exclusive


def test_shipped_two_clusters_different_ports_get_the_same_vip() -> None:
    pool = pool_with_apiservers("c1", "c2")
    a = L.allocate(pool, svc("c1", "web", 80))
    b = L.allocate(pool, svc("c2", "web", 8080))
    assert a == b == "172.16.0.152"  # the known issue


def test_shipped_two_clusters_same_port_get_different_vips() -> None:
    pool = pool_with_apiservers("c1", "c2")
    assert L.allocate(pool, svc("c1", "web", 80)) != L.allocate(pool, svc("c2", "web", 80))


def test_exclusive_keeps_clusters_apart_but_shares_within_one() -> None:
    pool = pool_with_apiservers("c1", "c2")
    a = L.allocate(pool, svc("c1", "web", 80), mode="exclusive")
    b = L.allocate(pool, svc("c2", "web", 8080), mode="exclusive")
    c = L.allocate(pool, svc("c1", "api", 8080), mode="exclusive")
    assert a != b and a == c


def test_every_port_must_be_free() -> None:
    pool = pool_with_apiservers("c1")
    L.allocate(pool, svc("c1", "web", 80))
    assert L.allocate(pool, svc("c1", "both", 443, 80)) == "172.16.0.152"


def test_load_balancer_ip_honoured_outside_and_taken_refused() -> None:
    pool = pool_with_apiservers("c1")
    assert L.allocate(pool, svc("c1", "web", 80, loadBalancerIP="172.16.0.153")) == "172.16.0.153"
    with pytest.raises(P.PoolError, match=r"^loadBalancerIP: 172.16.0.153 is already in use"):
        L.allocate(pool, svc("c1", "other", 80, loadBalancerIP="172.16.0.153"))
    with pytest.raises(P.PoolError, match=r"^loadBalancerIP: 172.16.0.200 is outside the VIP pool"):
        L.allocate(pool, svc("c1", "far", 80, loadBalancerIP="172.16.0.200"))
    with pytest.raises(P.PoolError, match="already in use"):  # the API server's VIP is exclusive
        L.allocate(pool, svc("c1", "api", 81, loadBalancerIP="172.16.0.150"))


def test_exhaustion_names_the_pool() -> None:
    pool = pool_with_apiservers("c1")
    for i in range(3):
        L.allocate(pool, svc("c1", f"s{i}", 80))
    with pytest.raises(P.PoolError, match=r"the VIP pool aks-net 172.16.0.150-172.16.0.153 has no address"):
        L.allocate(pool, svc("c1", "s9", 80), pool_name="aks-net")


def test_reensure_is_idempotent_and_moves_when_ports_change() -> None:
    pool = pool_with_apiservers("c1")
    L.allocate(pool, svc("c1", "a", 80))
    assert L.allocate(pool, svc("c1", "b", 81)) == "172.16.0.151"
    assert L.allocate(pool, svc("c1", "b", 81)) == "172.16.0.151"  # again: same answer, no double use
    assert L.allocate(pool, svc("c1", "b", 80)) == "172.16.0.152"  # now clashes with a: moves
    assert {u.holder for u in pool.uses()["172.16.0.151"]} == {"default/a"}


def test_internal_and_public_services_never_share_a_vip() -> None:
    pool = pool_with_apiservers("c1")
    pub = svc("c1", "pub", 80)
    a = L.allocate(pool, pub)
    internal = svc("c1", "int", 8080, internal=True)
    b = L.allocate(pool, internal, others=[(pub, a)])
    assert a != b
    assert L.allocate(pool, svc("c1", "int2", 9090, internal=True), others=[(pub, a), (internal, b)]) == b
    with pytest.raises(P.PoolError, match="already in use"):
        L.allocate(pool, svc("c1", "x", 443, internal=True, loadBalancerIP=a), others=[(pub, a)])


def test_parse_refusals_name_the_field() -> None:
    with pytest.raises(P.PoolError, match=r"^ports\[0\].protocol: 'UDP' not supported"):
        L.parse_ensure({"cluster": "c", "namespace": "d", "name": "n",
                        "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30053}]})
    with pytest.raises(P.PoolError, match=r"^balance: "):
        svc("c", "n", 80, balance="random")
    with pytest.raises(P.PoolError, match=r"^healthCheckNodePort: required"):
        svc("c", "n", 80, externalTrafficPolicy="Local")


def test_service_parts_build_a_valid_lbagent_config() -> None:
    web = svc("c1", "web", 80, balance="leastconn", proxyProtocol="v2")
    local = svc("c1", "loc", 81, externalTrafficPolicy="Local", healthCheckNodePort=32000)
    vips, fes, bes = L.service_parts([(web, "172.16.0.151"), (local, "172.16.0.151")],
                                     [("n1", "172.16.0.21"), ("n0", "172.16.0.20")],
                                     {"inter": 0.1, "rise": 2, "fall": 3})
    assert vips == ["172.16.0.151"]
    assert [f["bind"] for f in fes] == ["172.16.0.151:81", "172.16.0.151:80"]
    cfg = LBConfig.parse({"vips": vips, "frontends": fes, "backends": bes}, Defaults())
    loc, w = cfg.backends
    assert w.balance == "leastconn" and all(s.send_proxy_v2 for s in w.servers)
    assert [(s.address, s.port) for s in w.servers] == [("172.16.0.20", 30080), ("172.16.0.21", 30080)]
    assert loc.check.http == "/healthz" and all(s.check_port == 32000 for s in loc.servers)
    assert w.check.http is None and all(s.check_port is None for s in w.servers)


# --- properties -----------------------------------------------------------------------------

CLUSTERS = ("c1", "c2", "c3")
op = st.one_of(
    st.tuples(st.just("ensure"), st.sampled_from(CLUSTERS), st.integers(0, 3),
              st.lists(st.sampled_from([80, 443, 8080]), min_size=1, max_size=2, unique=True),
              st.none() | st.integers(0, 6)),
    st.tuples(st.just("delete"), st.sampled_from(CLUSTERS), st.integers(0, 3)),
)


def run_ops(ops: list[tuple[Any, ...]], mode: str) -> tuple[P.VipPool, dict[tuple[str, int], str]]:
    pool = pool_with_apiservers("c1")
    live: dict[tuple[str, int], str] = {}
    for o in ops:
        if o[0] == "ensure":
            _, c, n, ports, ip_off = o
            extra = {} if ip_off is None else {"loadBalancerIP": str(RANGE.start + ip_off)}
            try:
                live[(c, n)] = L.allocate(pool, svc(c, f"s{n}", *ports, **extra), mode=mode)
            except P.PoolError:
                pass  # refused: nothing of it may stay (checked below via the holders)
        else:
            _, c, n = o
            pool.release(c, f"default/s{n}")
            live.pop((c, n), None)
    return pool, live


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=25))
def test_exclusive_never_two_owners_never_outside_nothing_leaked(ops: list[tuple[Any, ...]]) -> None:
    pool, live = run_ops(ops, "exclusive")
    seen: dict[tuple[str, int | None], str] = {}
    for ip, uses in pool.uses().items():
        assert ipaddress.ip_address(ip) in RANGE
        assert len({u.cluster for u in uses}) == 1  # one IP belongs to one cluster
        for u in uses:
            assert (ip, u.port) not in seen  # never two live owners of one VIP:port
            seen[(ip, u.port)] = u.holder
    holders = {(u.cluster, u.holder) for uses in pool.uses().values() for u in uses}
    assert holders == {("c1", "apiserver")} | {(c, f"default/s{n}") for c, n in live}  # nothing leaked
    for (c, n), ip in live.items():
        assert any(u.cluster == c and u.holder == f"default/s{n}" for u in pool.uses()[ip])
    for c, n in list(live):
        pool.release(c, f"default/s{n}")
    assert set(pool.uses()) == {"172.16.0.150"}


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=25))
def test_shipped_conflict_exactly_when_two_clusters_use_different_ports(ops: list[tuple[Any, ...]]) -> None:
    pool, live = run_ops(ops, "shared-ports")
    for ip, uses in pool.uses().items():
        assert ipaddress.ip_address(ip) in RANGE
        ports = [u.port for u in uses]
        assert len(ports) == len(set(ports))  # one (IP, port) mapping has one owner
        clusters = {u.cluster for u in uses}
        # a VIP shared by two clusters: only ever on different ports (the known issue) ...
        if len(clusters) > 1:
            assert None not in ports


port_sets = st.lists(st.sampled_from([80, 443, 8080, 9000]), min_size=1, max_size=3, unique=True)


@settings(max_examples=200, deadline=None)
@given(port_sets, port_sets, st.sampled_from(["shared-ports", "exclusive"]))
def test_conflict_exactly_when_two_clusters_use_different_ports(a: list[int], b: list[int], mode: str) -> None:
    pool = pool_with_apiservers("c1", "c2")
    va = L.allocate(pool, svc("c1", "x", *a), mode=mode)
    vb = L.allocate(pool, svc("c2", "y", *b), mode=mode)
    conflict = va == vb
    assert conflict == (mode == "shared-ports" and not set(a) & set(b))

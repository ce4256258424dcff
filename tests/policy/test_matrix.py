"""The reachability matrix: JSON shape, externals, what-if pods without addresses, and scale."""

from __future__ import annotations

import json
import random
from typing import Any

from agents.policy.engine import Endpoint, PolicyEngine
from agents.policy.matrix import reachability
from agents.policy.model import from_kubernetes


def knp(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("podSelector", {})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def small() -> PolicyEngine:
    e = PolicyEngine()
    e.set_namespace("prod", {})
    e.set_namespace("dev", {})
    e.set_endpoint(Endpoint("prod/web", "prod", {"app": "web"}, ["10.0.1.10"]))
    e.set_endpoint(Endpoint("prod/client", "prod", {"app": "client"}, []))   # a what-if pod
    e.set_endpoint(Endpoint("dev/client", "dev", {"app": "client"}, ["10.0.2.12"]))
    e.set_policy(from_kubernetes(knp("web", "prod", podSelector={"matchLabels": {"app": "web"}}, ingress=[{
        "from": [{"podSelector": {"matchLabels": {"app": "client"}}}, {"ipBlock": {"cidr": "10.0.2.0/24"}}],
        "ports": [{"port": 80}]}])))
    return e


def test_shape_order_and_verdicts() -> None:
    e = small()
    pods = ["prod/web", "prod/client", "dev/client"]
    m = reachability(e, pods, [(80, "TCP"), (53, "udp")], ["8.8.8.8"])
    assert json.loads(json.dumps(m)) == m
    assert m["pods"] == pods
    parts = [*pods, "ip:8.8.8.8"]
    expect_pairs = [(s, d, p) for s in parts for d in parts if s != d for p in (80, 53)]
    assert [(v["src"], v["dst"], v["port"]) for v in m["verdicts"]] == expect_pairs
    assert set(m["verdicts"][0]) == {"src", "dst", "port", "protocol", "allowed"}
    got = {(v["src"], v["dst"], v["port"], v["protocol"]): v["allowed"] for v in m["verdicts"]}
    assert got[("prod/client", "prod/web", 80, "TCP")] is True      # selector matches an addressless pod
    assert got[("dev/client", "prod/web", 80, "TCP")] is True       # ipBlock matches its address
    assert got[("ip:8.8.8.8", "prod/web", 80, "TCP")] is False
    assert got[("prod/client", "prod/web", 53, "UDP")] is False
    assert got[("prod/web", "ip:8.8.8.8", 80, "TCP")] is True        # no egress policy
    assert got[("ip:8.8.8.8", "dev/client", 53, "UDP")] is True


def test_addressless_pod_not_matched_by_ipblock() -> None:
    e = PolicyEngine()
    e.set_endpoint(Endpoint("prod/web", "prod", {"app": "web"}, []))
    e.set_endpoint(Endpoint("prod/client", "prod", {"app": "client"}, []))
    e.set_policy(from_kubernetes(knp("web", "prod", podSelector={"matchLabels": {"app": "web"}},
                                     ingress=[{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}])))
    m = reachability(e, ["prod/web", "prod/client"], [(80, "TCP")], ["0.0.0.0", "255.255.255.255", "fd00::1"])
    got = {(v["src"], v["dst"]): v["allowed"] for v in m["verdicts"]}
    assert got[("prod/client", "prod/web")] is False
    assert got[("ip:0.0.0.0", "prod/web")] is True
    assert got[("ip:255.255.255.255", "prod/web")] is True
    assert got[("ip:fd00::1", "prod/web")] is False
    assert got[("ip:0.0.0.0", "ip:fd00::1")] is True                 # no endpoint on either side


def test_unknown_pod_rejected() -> None:
    e = small()
    try:
        reachability(e, ["prod/nope"], [(80, "TCP")])
    except ValueError as err:
        assert "prod/nope" in str(err)
    else:
        raise AssertionError("no error")


def generated(seed: int = 1, pods: int = 100, namespaces: int = 10, policies: int = 50) -> tuple[PolicyEngine, list[str]]:
    rnd = random.Random(seed)
    e = PolicyEngine()
    keys = []
    for n in range(namespaces):
        e.set_namespace(f"ns{n}", {"team": f"t{n % 3}"})
    for i in range(pods):
        ns = f"ns{i % namespaces}"
        e.set_endpoint(Endpoint(f"{ns}/pod{i}", ns, {"app": f"a{i % 7}", "tier": f"t{i % 3}"},
                                [f"10.{i // 250}.{i % 250}.2"], [("http", "TCP", 8080)]))
        keys.append(f"{ns}/pod{i}")
    for j in range(policies):
        ns = f"ns{j % namespaces}"
        peer = rnd.choice([
            {"podSelector": {"matchLabels": {"app": f"a{rnd.randrange(7)}"}}},
            {"namespaceSelector": {"matchLabels": {"team": f"t{rnd.randrange(3)}"}}},
            {"ipBlock": {"cidr": "10.0.0.0/24"}},
        ])
        e.set_policy(from_kubernetes(knp(f"p{j}", ns, podSelector={"matchLabels": {"tier": f"t{j % 3}"}},
                                         policyTypes=rnd.choice([["Ingress"], ["Ingress", "Egress"]]),
                                         ingress=[{"from": [peer], "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}],
                                         egress=[{"to": [peer]}])))
    return e, keys


def test_matrix_agrees_with_verdict_at_scale() -> None:
    e, keys = generated()
    m = reachability(e, keys, [(80, "TCP"), (53, "UDP")])
    assert len(m["verdicts"]) == 100 * 99 * 2
    allowed = sum(v["allowed"] for v in m["verdicts"])
    assert 0 < allowed < len(m["verdicts"])
    fresh = PolicyEngine()  # the same state loaded in another order: no caches shared
    for n in range(10):
        fresh.set_namespace(f"ns{n}", {"team": f"t{n % 3}"})
    for pol in e.policies():
        fresh.set_policy(pol)
    for ep in reversed(e.endpoints()):
        fresh.set_endpoint(ep)
    for v in m["verdicts"][::97]:
        proto = 6 if v["protocol"] == "TCP" else 17
        assert fresh.verdict(v["src"], v["dst"], proto, v["port"]).allowed is v["allowed"]

"""Table-driven tests of the policy engine: Kubernetes NetworkPolicy and Calico semantics."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.policy.engine import Decision, Endpoint, PolicyEngine
from agents.policy.model import PortRange, from_calico, from_kubernetes, policy_from_object

TCP, UDP, SCTP, ICMP, ICMP6 = 6, 17, 132, 1, 58

PODS = [
    # key, labels, ips, named ports
    ("prod/web", {"app": "web"}, ["10.0.1.10", "fd00::10"], [("http", "TCP", 8080), ("dns", "UDP", 5353)]),
    ("prod/db", {"app": "db", "tier": "data"}, ["10.0.1.11"], []),
    ("prod/client", {"app": "client"}, ["10.0.1.12", "fd00::12"], []),
    ("dev/client", {"app": "client"}, ["10.0.2.12", "fd00:2::12"], []),
    ("dev/web", {"app": "web"}, ["10.0.2.10"], [("http", "TCP", 9090)]),
    ("kube-system/dns", {"k8s-app": "kube-dns"}, ["10.0.3.53"], [("dns", "UDP", 53)]),
]
NAMESPACES = {"prod": {"team": "a", "env": "prod"}, "dev": {"team": "b"}, "kube-system": {}}


def make_engine(*objs: dict[str, Any]) -> PolicyEngine:
    e = PolicyEngine()
    for ns, labels in NAMESPACES.items():
        e.set_namespace(ns, labels)
    for key, labels, ips, ports in PODS:
        ns = key.split("/")[0]
        e.set_endpoint(Endpoint(key, ns, dict(labels), list(ips), list(ports), node="node1"))
    e.set_endpoint(Endpoint("host:node1", None, {"role": "node"}, ["192.168.0.4"], node="node1", host=True))
    for obj in objs:
        e.set_policy(policy_from_object(obj))
    return e


def knp(name: str, ns: str = "prod", **spec: Any) -> dict[str, Any]:
    spec.setdefault("podSelector", {})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def cnp(name: str, ns: str = "prod", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def gnp(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


WEB = {"matchLabels": {"app": "web"}}
DENY_ALL_IN = knp("deny-in", policyTypes=["Ingress"])

# (id, policies, src, dst, proto, port, allowed)
K8S_CASES: list[tuple[str, list[dict[str, Any]], str, str, int, int, bool]] = [
    ("no-policy", [], "prod/client", "prod/web", TCP, 80, True),
    ("default-deny-ingress", [DENY_ALL_IN], "prod/client", "prod/web", TCP, 80, False),
    ("default-deny-other-ns-untouched", [DENY_ALL_IN], "dev/client", "dev/web", TCP, 80, True),
    ("default-deny-egress-of-client", [knp("deny-eg", policyTypes=["Egress"])], "prod/client", "dev/web", TCP, 80, False),
    ("default-deny-egress-ingress-ok", [knp("deny-eg", policyTypes=["Egress"])], "dev/client", "prod/web", TCP, 80, True),
    ("podSelector-same-ns", [knp("a", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}])],
     "prod/client", "prod/web", TCP, 80, True),
    ("podSelector-alone-is-own-ns", [knp("a", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}])],
     "dev/client", "prod/web", TCP, 80, False),
    ("nsSelector", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}])],
     "dev/client", "prod/web", TCP, 80, True),
    ("nsSelector-other-ns-denied", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}])],
     "prod/client", "prod/web", TCP, 80, False),
    ("nsSelector-empty-all-ns", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {}}]}])],
     "kube-system/dns", "prod/web", TCP, 80, True),
    ("nsSelector-empty-not-external", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {}}]}])],
     "ip:8.8.8.8", "prod/web", TCP, 80, False),
    ("metadata-name-label", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]}])],
     "kube-system/dns", "prod/web", TCP, 80, True),
    ("and-in-one-peer", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}, "podSelector": {"matchLabels": {"app": "client"}}}]}])],
     "dev/client", "prod/web", TCP, 80, True),
    ("and-in-one-peer-fails", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}, "podSelector": {"matchLabels": {"app": "client"}}}]}])],
     "dev/web", "prod/web", TCP, 80, False),
    ("or-across-peers-1", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}, {"podSelector": {"matchLabels": {"app": "db"}}}]}])],
     "dev/web", "prod/web", TCP, 80, True),
    ("or-across-peers-2", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}, {"podSelector": {"matchLabels": {"app": "db"}}}]}])],
     "prod/db", "prod/web", TCP, 80, True),
    ("or-across-peers-3", [knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}, {"podSelector": {"matchLabels": {"app": "db"}}}]}])],
     "prod/client", "prod/web", TCP, 80, False),
    ("matchExpressions-In", [knp("a", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "x"]}]}}]}])],
     "prod/db", "prod/web", TCP, 80, True),
    ("matchExpressions-NotIn", [knp("a", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}}]}])],
     "prod/db", "prod/web", TCP, 80, False),
    ("matchExpressions-Exists", [knp("a", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}]}])],
     "prod/db", "prod/web", TCP, 80, True),
    ("matchExpressions-DoesNotExist", [knp("a", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}}]}])],
     "prod/db", "prod/web", TCP, 80, False),
    ("ipBlock", [knp("a", podSelector=WEB, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}])],
     "prod/client", "prod/web", TCP, 80, True),
    ("ipBlock-except", [knp("a", podSelector=WEB, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}])],
     "dev/client", "prod/web", TCP, 80, False),
    ("ipBlock-external", [knp("a", podSelector=WEB, ingress=[{"from": [{"ipBlock": {"cidr": "8.8.8.0/24"}}]}])],
     "ip:8.8.8.8", "prod/web", TCP, 80, True),
    ("ipBlock-external-outside", [knp("a", podSelector=WEB, ingress=[{"from": [{"ipBlock": {"cidr": "8.8.8.0/24"}}]}])],
     "ip:8.8.4.4", "prod/web", TCP, 80, False),
    ("egress-ipBlock", [knp("a", podSelector={"matchLabels": {"app": "client"}}, policyTypes=["Egress"], egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["8.8.8.8/32"]}}]}])],
     "prod/client", "ip:8.8.8.8", TCP, 443, False),
    ("egress-ipBlock-ok", [knp("a", podSelector={"matchLabels": {"app": "client"}}, policyTypes=["Egress"], egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["8.8.8.8/32"]}}]}])],
     "prod/client", "ip:1.1.1.1", TCP, 443, True),
    ("port", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 80, "protocol": "TCP"}]}])], "prod/client", "prod/web", TCP, 80, True),
    ("port-other", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 80, "protocol": "TCP"}]}])], "prod/client", "prod/web", TCP, 81, False),
    ("port-udp-vs-tcp", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 80, "protocol": "TCP"}]}])], "prod/client", "prod/web", UDP, 80, False),
    ("port-default-tcp", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 80}]}])], "prod/client", "prod/web", TCP, 80, True),
    ("port-default-tcp-not-udp", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 80}]}])], "prod/client", "prod/web", UDP, 80, False),
    ("udp", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 53, "protocol": "UDP"}]}])], "prod/client", "prod/web", UDP, 53, True),
    ("sctp", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 3868, "protocol": "SCTP"}]}])], "prod/client", "prod/web", SCTP, 3868, True),
    ("sctp-not-tcp", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 3868, "protocol": "SCTP"}]}])], "prod/client", "prod/web", TCP, 3868, False),
    ("protocol-only", [knp("a", podSelector=WEB, ingress=[{"ports": [{"protocol": "UDP"}]}])], "prod/client", "prod/web", UDP, 9999, True),
    ("endPort-in", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 8000, "endPort": 8100}]}])], "prod/client", "prod/web", TCP, 8100, True),
    ("endPort-out", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": 8000, "endPort": 8100}]}])], "prod/client", "prod/web", TCP, 8101, False),
    ("named-port", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": "http"}]}])], "prod/client", "prod/web", TCP, 8080, True),
    ("named-port-number-differs", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": "http"}]}])], "prod/client", "prod/web", TCP, 80, False),
    ("named-port-per-pod", [knp("a", "dev", podSelector=WEB, ingress=[{"ports": [{"port": "http"}]}])], "dev/client", "dev/web", TCP, 9090, True),
    ("named-port-protocol-mismatch", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": "dns", "protocol": "TCP"}]}])], "prod/client", "prod/web", TCP, 5353, False),
    ("named-port-udp", [knp("a", podSelector=WEB, ingress=[{"ports": [{"port": "dns", "protocol": "UDP"}]}])], "prod/client", "prod/web", UDP, 5353, True),
    ("egress-named-port-on-destination", [knp("a", podSelector={"matchLabels": {"app": "client"}}, policyTypes=["Egress"], egress=[{"ports": [{"port": "dns", "protocol": "UDP"}]}])],
     "prod/client", "kube-system/dns", UDP, 53, True),
    ("egress-named-port-wrong-number", [knp("a", podSelector={"matchLabels": {"app": "client"}}, policyTypes=["Egress"], egress=[{"ports": [{"port": "dns", "protocol": "UDP"}]}])],
     "prod/client", "kube-system/dns", UDP, 5353, False),
    ("egress-named-port-external", [knp("a", podSelector={"matchLabels": {"app": "client"}}, policyTypes=["Egress"], egress=[{"ports": [{"port": "dns", "protocol": "UDP"}]}])],
     "prod/client", "ip:8.8.8.8", UDP, 53, False),
    ("egress-dns-via-ns-label", [knp("a", podSelector={}, policyTypes=["Egress"], egress=[{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}], "ports": [{"port": 53, "protocol": "UDP"}]}])],
     "prod/client", "kube-system/dns", UDP, 53, True),
    ("egress-dns-via-ns-label-other", [knp("a", podSelector={}, policyTypes=["Egress"], egress=[{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}], "ports": [{"port": 53, "protocol": "UDP"}]}])],
     "prod/client", "dev/web", UDP, 53, False),
    ("allow-all-ingress-empty-rule", [DENY_ALL_IN, knp("all", ingress=[{}])], "dev/client", "prod/web", TCP, 1234, True),
    ("additive-1", [knp("a", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]),
                    knp("b", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}])],
     "prod/db", "prod/web", TCP, 80, True),
    ("additive-2", [knp("a", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]),
                    knp("b", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}])],
     "prod/client", "prod/web", TCP, 80, True),
    ("types-inferred-egress-present", [knp("a", podSelector=WEB, egress=[{}])], "prod/client", "prod/web", TCP, 80, False),
    ("types-egress-only-ingress-open", [knp("a", podSelector=WEB, policyTypes=["Egress"])], "prod/client", "prod/web", TCP, 80, True),
    ("both-ends-enforced", [knp("deny-eg", "dev", policyTypes=["Egress"])], "dev/client", "prod/web", TCP, 80, False),
]


@pytest.mark.parametrize("case", K8S_CASES, ids=[c[0] for c in K8S_CASES])
def test_kubernetes_semantics(case: tuple[Any, ...]) -> None:
    _, objs, src, dst, proto, port, allowed = case
    e = make_engine(*objs)
    d = e.verdict(src, dst, proto, port)
    assert d.allowed is allowed, d


ORCH = "projectcalico.org/orchestrator == 'k8s'"
CALICO_CASES: list[tuple[str, list[dict[str, Any]], str, str, int, int, bool, str | None]] = [
    # order: a GNP (order 10) Deny beats the Kubernetes policy (order 1000)
    ("order-gnp-first", [gnp("deny-client", order=10, selector="app == 'web'", ingress=[{"action": "Deny", "source": {"selector": "app == 'client'"}}]),
                         knp("allow", podSelector=WEB, ingress=[{}])],
     "prod/client", "prod/web", TCP, 80, False, "deny-client"),
    ("order-knp-first", [gnp("deny-client", order=2000, selector="app == 'web'", ingress=[{"action": "Deny", "source": {"selector": "app == 'client'"}}]),
                         knp("allow", podSelector=WEB, ingress=[{}])],
     "prod/client", "prod/web", TCP, 80, True, "knp.default.allow"),
    ("order-name-tiebreak-a", [gnp("a-deny", order=5, ingress=[{"action": "Deny"}]), gnp("b-allow", order=5, ingress=[{"action": "Allow"}])],
     "prod/client", "prod/web", TCP, 80, False, "a-deny"),
    ("order-name-tiebreak-b", [gnp("b-deny", order=5, ingress=[{"action": "Deny"}]), gnp("a-allow", order=5, ingress=[{"action": "Allow"}])],
     "prod/client", "prod/web", TCP, 80, True, "a-allow"),
    ("order-none-last", [gnp("allow-noorder", ingress=[{"action": "Allow"}]), gnp("z-deny", order=5000, ingress=[{"action": "Deny"}])],
     "prod/client", "prod/web", TCP, 80, False, "z-deny"),
    ("pass-skips-to-profile", [gnp("pass", order=10, selector="app == 'web'", ingress=[{"action": "Pass", "source": {"selector": "app == 'client'"}}]),
                               DENY_ALL_IN],
     "prod/client", "prod/web", TCP, 80, True, "pass"),
    ("pass-not-matching-falls-through", [gnp("pass", order=10, selector="app == 'web'", ingress=[{"action": "Pass", "source": {"selector": "app == 'client'"}}]),
                                         DENY_ALL_IN],
     "prod/db", "prod/web", TCP, 80, False, None),
    ("log-continues", [gnp("log", order=1, ingress=[{"action": "Log"}]), gnp("deny", order=2, ingress=[{"action": "Deny", "protocol": "TCP"}])],
     "prod/client", "prod/web", TCP, 80, False, "deny"),
    ("log-alone-default-deny", [gnp("log", order=1, ingress=[{"action": "Log"}])], "prod/client", "prod/web", TCP, 80, False, None),
    ("calico-default-deny", [cnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"selector": "app == 'db'"}}])],
     "prod/client", "prod/web", TCP, 80, False, None),
    ("calico-selector-in", [cnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"selector": "app in {'client', 'db'}"}}])],
     "prod/client", "prod/web", TCP, 80, True, "web"),
    ("calico-selector-has-not", [cnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"selector": "has(app) && !has(tier)"}}])],
     "prod/db", "prod/web", TCP, 80, False, None),
    ("calico-notSelector", [cnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"notSelector": "app == 'db'"}}])],
     "prod/client", "prod/web", TCP, 80, True, "web"),
    ("calico-notSelector-excluded", [cnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"notSelector": "app == 'db'"}}])],
     "prod/db", "prod/web", TCP, 80, False, None),
    ("calico-ns-selector-rule", [cnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"namespaceSelector": "team == 'b'", "selector": "app == 'client'"}}])],
     "dev/client", "prod/web", TCP, 80, True, "web"),
    ("calico-namespaced-selector-scoped", [cnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"selector": "app == 'client'"}}])],
     "dev/client", "prod/web", TCP, 80, False, None),
    ("gnp-selector-any-namespace", [gnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"selector": "app == 'client'"}}])],
     "dev/client", "prod/web", TCP, 80, True, "web"),
    ("gnp-selector-no-external", [gnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"selector": "all()"}}])],
     "ip:8.8.8.8", "prod/web", TCP, 80, False, None),
    ("gnp-notSelector-external-ok", [gnp("web", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"notSelector": "app == 'db'"}}])],
     "ip:8.8.8.8", "prod/web", TCP, 80, True, "web"),
    ("gnp-spec-namespaceSelector", [gnp("prod-only", namespaceSelector="env == 'prod'", ingress=[{"action": "Deny"}])],
     "prod/client", "dev/web", TCP, 80, True, None),
    ("gnp-spec-namespaceSelector-hit", [gnp("prod-only", namespaceSelector="env == 'prod'", ingress=[{"action": "Deny"}])],
     "dev/client", "prod/web", TCP, 80, False, "prod-only"),
    ("nets-notNets", [gnp("n", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"nets": ["10.0.0.0/8"], "notNets": ["10.0.2.0/24"]}}])],
     "prod/client", "prod/web", TCP, 80, True, "n"),
    ("nets-notNets-excluded", [gnp("n", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"nets": ["10.0.0.0/8"], "notNets": ["10.0.2.0/24"]}}])],
     "dev/client", "prod/web", TCP, 80, False, None),
    ("nets-and-selector", [gnp("n", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"nets": ["10.0.2.0/24"], "selector": "app == 'web'"}}])],
     "dev/client", "prod/web", TCP, 80, False, None),
    ("destination-ports-range", [gnp("p", selector="app == 'web'", ingress=[{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["8000:8080"]}}])],
     "prod/client", "prod/web", TCP, 8080, True, "p"),
    ("destination-notPorts", [gnp("p", selector="app == 'web'", ingress=[{"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [22]}}])],
     "prod/client", "prod/web", TCP, 22, False, None),
    ("notProtocol", [gnp("p", selector="app == 'web'", ingress=[{"action": "Allow", "notProtocol": "UDP"}])],
     "prod/client", "prod/web", UDP, 53, False, None),
    ("notProtocol-ok", [gnp("p", selector="app == 'web'", ingress=[{"action": "Allow", "notProtocol": "UDP"}])],
     "prod/client", "prod/web", TCP, 53, True, "p"),
    ("egress-gnp-deny-external", [gnp("no-8", order=1, egress=[{"action": "Deny", "destination": {"nets": ["8.8.8.8/32"]}}, {"action": "Allow"}])],
     "prod/client", "ip:8.8.8.8", UDP, 53, False, "no-8"),
    ("egress-destination-selector", [gnp("eg", selector="app == 'client'", egress=[{"action": "Allow", "destination": {"selector": "app == 'db'"}}])],
     "prod/client", "prod/db", TCP, 5432, True, "eg"),
    ("ingress-destination-side-local", [gnp("loc", selector="all()", ingress=[{"action": "Allow", "destination": {"selector": "app == 'db'"}}])],
     "prod/client", "prod/web", TCP, 80, False, None),
]


@pytest.mark.parametrize("case", CALICO_CASES, ids=[c[0] for c in CALICO_CASES])
def test_calico_semantics(case: tuple[Any, ...]) -> None:
    _, objs, src, dst, proto, port, allowed, policy = case
    e = make_engine(*objs)
    d = e.verdict(src, dst, proto, port)
    assert d.allowed is allowed, d
    if policy is not None:
        assert d.policy == policy, d
    else:
        assert d.policy is None or d.allowed, d


def test_default_decisions_are_named() -> None:
    e = make_engine()
    assert e.decide("prod/web", "ingress", "10.0.1.12", TCP, 80) == Decision(True, None, "no-policy")
    # a host endpoint no policy applies to is denied (Calico's default; failsafe ports are the node's)
    assert make_engine().decide("host:node1", "ingress", "10.0.1.12", TCP, 80) == \
        Decision(False, None, "host-endpoint-default-deny")
    e.set_policy(from_kubernetes(DENY_ALL_IN))
    assert e.decide("prod/web", "ingress", "10.0.1.12", TCP, 80) == Decision(False, None, "default-deny")
    e.set_policy(from_calico(gnp("pass", order=1, ingress=[{"action": "Pass"}])))
    assert e.decide("prod/web", "ingress", "10.0.1.12", TCP, 80) == Decision(True, "pass", "profile")
    assert e.decide("nobody/x", "ingress", "10.0.1.12", TCP, 80).allowed


def test_log_hits_counted() -> None:
    e = make_engine(gnp("log", order=1, ingress=[{"action": "Log"}]), gnp("allow", order=2, ingress=[{"action": "Allow"}]))
    for _ in range(3):
        assert e.decide("prod/web", "ingress", "10.0.1.12", TCP, 80).policy == "allow"
    assert e.log_hits == {("log", "ingress[0]"): 3}


def test_policies_for_ordering_and_types() -> None:
    e = make_engine(gnp("z", order=1, ingress=[{"action": "Allow"}]), knp("k", ingress=[{}]),
                    gnp("none", egress=[{"action": "Allow"}], types=["Egress"]), gnp("a", order=1000))
    assert e.policies_for("prod/web") == {"ingress": ["z", "a", "knp.default.k"], "egress": ["none"]}
    assert e.policies_for("dev/web")["ingress"] == ["z", "a"]
    assert e.policies_for("host:node1") == {"ingress": ["z", "a"], "egress": ["none"]}


def test_ipv6_cidrs() -> None:
    e = make_engine(knp("v6", podSelector=WEB, ingress=[{"from": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::12/128"]}}]}]))
    assert not e.decide("prod/web", "ingress", "fd00::12", TCP, 80).allowed
    assert e.decide("prod/web", "ingress", "fd00::99", TCP, 80).allowed
    assert not e.decide("prod/web", "ingress", "fd00:2::12", TCP, 80).allowed
    assert not e.decide("prod/web", "ingress", "10.0.1.12", TCP, 80).allowed  # v4 never in a v6 block


def test_ip_version_rule() -> None:
    e = make_engine(gnp("v6only", selector="app == 'web'", ingress=[{"action": "Allow", "ipVersion": 6}]))
    assert e.decide("prod/web", "ingress", "fd00::12", TCP, 80).allowed
    assert not e.decide("prod/web", "ingress", "10.0.1.12", TCP, 80).allowed


def test_icmp_type_and_code() -> None:
    e = make_engine(gnp("ping", selector="app == 'web'", ingress=[
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
        {"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128}},
        {"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 13}, "source": {"nets": ["10.0.2.0/24"]}},
    ]))
    assert e.decide("prod/web", "ingress", "10.0.1.12", ICMP, 0, (8, 0)).allowed
    assert not e.decide("prod/web", "ingress", "10.0.1.12", ICMP, 0, (8, 1)).allowed
    assert not e.decide("prod/web", "ingress", "10.0.1.12", ICMP, 0, (13, 0)).allowed
    assert e.decide("prod/web", "ingress", "fd00::12", ICMP6, 0, (128, 0)).allowed
    assert not e.decide("prod/web", "ingress", "fd00::12", ICMP6, 0, (129, 0)).allowed
    assert e.decide("prod/web", "ingress", "10.0.2.12", ICMP, 0, (14, 0)).allowed
    assert not e.decide("prod/web", "ingress", "10.0.2.12", ICMP, 0, (13, 0)).allowed
    assert not e.decide("prod/web", "ingress", "10.0.1.12", TCP, 80).allowed


def test_source_ports() -> None:
    e = make_engine(gnp("sp", selector="app == 'web'", ingress=[{"action": "Allow", "protocol": "UDP", "source": {"ports": [53]}}]))
    assert e.decide("prod/web", "ingress", "8.8.8.8", UDP, 40000, sport=53).allowed
    assert not e.decide("prod/web", "ingress", "8.8.8.8", UDP, 40000, sport=54).allowed


def test_host_endpoint_policies() -> None:
    e = make_engine(gnp("node", selector="role == 'node'", ingress=[{"action": "Deny", "source": {"nets": ["8.8.8.0/24"]}}, {"action": "Allow"}]),
                    knp("all-pods", ingress=[]), cnp("ns", selector="all()", ingress=[]))
    assert e.policies_for("host:node1")["ingress"] == ["node"]  # namespaced policies never apply to hosts
    assert not e.decide("host:node1", "ingress", "8.8.8.8", TCP, 22).allowed
    assert e.decide("host:node1", "ingress", "10.0.1.12", TCP, 22).allowed
    # a rule selector matches the host endpoint when the peer is a node address
    e2 = make_engine(gnp("from-nodes", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"selector": "role == 'node'"}}]))
    assert e2.decide("prod/web", "ingress", "192.168.0.4", TCP, 80).allowed
    assert not e2.decide("prod/web", "ingress", "192.168.0.5", TCP, 80).allowed
    e3 = make_engine(gnp("hosts-ns", selector="app == 'web'", ingress=[{"action": "Allow", "source": {"namespaceSelector": "global()"}}]))
    assert e3.decide("prod/web", "ingress", "192.168.0.4", TCP, 80).allowed
    assert not e3.decide("prod/web", "ingress", "10.0.1.12", TCP, 80).allowed


def test_changes_recompute() -> None:
    e = make_engine(knp("a", podSelector=WEB, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]))
    g0 = e.generation
    assert not e.verdict("kube-system/dns", "prod/web", TCP, 80).allowed
    e.set_namespace("kube-system", {"team": "b"})
    assert e.generation > g0
    assert e.verdict("kube-system/dns", "prod/web", TCP, 80).allowed
    # a pod relabelled out of the source selector's set, and a new pod into it
    e.set_endpoint(Endpoint("dev/client", "dev", {"app": "client"}, ["10.0.2.12"]))
    assert e.verdict("dev/client", "prod/web", TCP, 80).allowed
    e.delete_namespace("dev")  # the namespace's labels are gone: only kubernetes.io/metadata.name is left
    assert not e.verdict("dev/client", "prod/web", TCP, 80).allowed
    e.set_namespace("dev", {"team": "b"})
    e.set_endpoint(Endpoint("dev/new", "dev", {}, ["10.0.2.99"]))
    assert e.decide("prod/web", "ingress", "10.0.2.99", TCP, 80).allowed
    e.delete_endpoint("dev/new")
    assert not e.decide("prod/web", "ingress", "10.0.2.99", TCP, 80).allowed  # now an unknown address
    # the policy's own selector: relabel the target away
    e.set_endpoint(Endpoint("prod/web", "prod", {"app": "other"}, ["10.0.1.10"]))
    assert e.decide("prod/web", "ingress", "8.8.8.8", TCP, 80).allowed
    e.delete_policy(("NetworkPolicy", "prod", "knp.default.a"))
    assert e.policies_for("prod/web") == {"ingress": [], "egress": []}


def test_addressless_pods_match_selectors_not_nets() -> None:
    e = PolicyEngine()
    e.set_endpoint(Endpoint("prod/web", "prod", {"app": "web"}, []))
    e.set_endpoint(Endpoint("prod/client", "prod", {"app": "client"}, []))
    e.set_policy(from_kubernetes(knp("a", podSelector=WEB, ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}])))
    assert e.verdict("prod/client", "prod/web", TCP, 80).allowed
    e.set_policy(from_kubernetes(knp("a", podSelector=WEB, ingress=[{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}])))
    assert not e.verdict("prod/client", "prod/web", TCP, 80).allowed
    assert e.verdict("ip:1.2.3.4", "prod/web", TCP, 80).allowed


def test_many_policies_only_last_matches() -> None:
    """The benchmark's shape: 1000 applicable policies, the last one matching, new sources."""
    e = make_engine()
    for i in range(1000):
        src = {"nets": ["0.0.0.0/0"]} if i == 999 else {"selector": f"app == 'x{i}'"}
        e.set_policy(from_calico(gnp(f"p{i:04d}", order=i, selector="app == 'web'",
                                     ingress=[{"action": "Allow", "protocol": "TCP", "source": src,
                                               "destination": {"ports": [80]}}])))
    for i in range(50):
        d = e.decide("prod/web", "ingress", f"172.16.{i}.1", TCP, 80)
        assert d == Decision(True, "p0999", "ingress[0]")
        assert not e.decide("prod/web", "ingress", f"172.16.{i}.1", TCP, 81).allowed


# --------------------------------------------------------------------------- reference model

def _ref_entity(e: PolicyEngine, pol: Any, ent: Any, ep: Endpoint | None, ip: str | None) -> bool:
    """A direct, uncompiled reading of Calico's EntityRule (selectors, nets)."""
    sel, notsel, nsel = ent.selector, ent.not_selector, ent.namespace_selector
    if sel is not None or notsel is not None or nsel is not None:
        scoped = nsel is None and pol.namespace is not None
        if ep is None:
            if sel is not None or nsel is not None or scoped:
                return False
        else:
            labels = e._ep_labels[ep.key]
            if nsel is not None:
                if nsel.is_global:
                    if ep.namespace is not None:
                        return False
                elif ep.namespace is None or not nsel.matches(e.namespace_labels(ep.namespace)):
                    return False
            elif scoped and ep.namespace != pol.namespace:
                return False
            if sel is not None and not sel.matches(labels):
                return False
            if notsel is not None and notsel.matches(labels):
                return False
    if ent.nets or ent.not_nets:
        if ip is None:
            return False
        addr = ipaddress.ip_address(ip)
        nets = [ipaddress.ip_network(n) for n in ent.nets]
        if ent.nets and not any(addr.version == n.version and addr in n for n in nets):
            return False
        if any(addr.version == n.version and addr in n for n in map(ipaddress.ip_network, ent.not_nets)):
            return False
    return True


def _ref_ports(ports: Any, value: int, proto: int, ep: Endpoint | None) -> bool:
    for pr in ports:
        if isinstance(pr, PortRange):
            if pr.lo <= value <= pr.hi:
                return True
        elif ep is not None and any(n == pr and {"TCP": 6, "UDP": 17, "SCTP": 132}[p] == proto and num == value
                                    for n, p, num in ep.ports):
            return True
    return False


def ref_decide(e: PolicyEngine, key: str, direction: str, peer_ip: str, proto: int, port: int) -> tuple[bool, str | None]:
    ep = e.endpoint(key)
    assert ep is not None
    peer = e.endpoint_by_ip(peer_ip)
    fam = 6 if ":" in peer_ip else 4
    local_ip = next((i for i in ep.ips if (6 if ":" in i else 4) == fam), None)
    pols = [p for p in e.policies() if e._applies(p, ep, direction)]
    if not pols:
        return not ep.host, None  # a host endpoint without policy: Calico denies (failsafes aside)
    for pol in pols:
        for rule in (pol.ingress if direction == "ingress" else pol.egress):
            if rule.protocol is not None and rule.protocol != proto:
                continue
            if rule.not_protocol is not None and rule.not_protocol == proto:
                continue
            if rule.ip_version is not None and rule.ip_version != fam:
                continue
            peer_ent, local_ent = ((rule.source, rule.destination) if direction == "ingress"
                                   else (rule.destination, rule.source))
            if not _ref_entity(e, pol, peer_ent, peer, peer_ip):
                continue
            if not _ref_entity(e, pol, local_ent, ep, local_ip):
                continue
            dst_ep = ep if direction == "ingress" else peer
            if rule.destination.ports and not _ref_ports(rule.destination.ports, port, proto, dst_ep):
                continue
            if rule.destination.not_ports and _ref_ports(rule.destination.not_ports, port, proto, dst_ep):
                continue
            if rule.action == "Log":
                continue
            if rule.action == "Pass":
                return True, pol.name
            return rule.action == "Allow", pol.name
    return False, None



_sel = st.sampled_from(["", "app == 'web'", "app in {'client', 'db'}", "has(tier)", "!has(tier)",
                        "app != 'client'", "role == 'node'"])
_nets = st.lists(st.sampled_from(["10.0.0.0/16", "10.0.1.0/24", "10.0.2.12/32", "0.0.0.0/0", "fd00::/64",
                                  "8.8.8.0/24", "192.168.0.0/16"]), max_size=2)
_ports = st.lists(st.sampled_from([80, 53, "8000:8100", "http", "dns", 5353]), max_size=2)
_entity = st.fixed_dictionaries({}, optional={
    "selector": _sel, "notSelector": _sel, "namespaceSelector": st.sampled_from(["team == 'b'", "all()", "global()"]),
    "nets": _nets, "notNets": _nets})
_crule = st.builds(
    lambda action, proto, src, dst, ports, notports: {
        "action": action, **({"protocol": proto} if proto else {}), "source": src,
        "destination": {**dst, **({"ports": ports} if ports and proto in ("TCP", "UDP") else {}),
                        **({"notPorts": notports} if notports and proto in ("TCP", "UDP") else {})}},
    st.sampled_from(["Allow", "Deny", "Log", "Pass"]), st.sampled_from([None, "TCP", "UDP"]),
    _entity, _entity, _ports, _ports)
_cpol = st.builds(
    lambda glob, name, order, sel, ing, eg: (gnp(name, **({"order": order} if order is not None else {}), selector=sel, ingress=ing, egress=eg)
                                             if glob else cnp(name, "prod", **({"order": order} if order is not None else {}), selector=sel, ingress=ing, egress=eg)),
    st.booleans(), st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([None, 1, 1000, 2000]), _sel,
    st.lists(_crule, max_size=3), st.lists(_crule, max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.lists(_cpol, max_size=5, unique_by=lambda o: (o["kind"], o["metadata"]["name"])),
       st.sampled_from([k for k, *_ in PODS] + ["host:node1"]), st.sampled_from(["ingress", "egress"]),
       st.sampled_from(["10.0.1.12", "10.0.2.12", "fd00::12", "fd00:2::12", "8.8.8.8", "192.168.0.4", "10.0.3.53"]),
       st.sampled_from([6, 17]), st.sampled_from([80, 53, 5353, 8080, 8050, 9090]))
def test_compiled_engine_matches_reference(objs: list[dict[str, Any]], key: str, direction: str, peer_ip: str,
                                           proto: int, port: int) -> None:
    e = make_engine(*objs)
    d = e.decide(key, direction, peer_ip, proto, port)
    assert (d.allowed, d.policy) == ref_decide(e, key, direction, peer_ip, proto, port), d


def test_calicos_automatic_namespace_label_and_ports_of_unknown_protocols() -> None:
    """Calico labels every namespace ``projectcalico.org/name`` (docs: "Calico automatic
    labels"); a named port of a protocol no rule can name never matches and never raises."""
    e = PolicyEngine()
    for ns in ("foo", "baz", "qux"):
        e.set_namespace(ns, {})
    e.set_endpoint(Endpoint("foo/x", "foo", {"color": "red"}, ["10.0.9.1"], ports=[("http", "FOO", 80)]))
    e.set_endpoint(Endpoint("baz/y", "baz", {}, ["10.0.9.2"]))
    e.set_endpoint(Endpoint("qux/z", "qux", {}, ["10.0.9.3"]))
    e.set_policy(from_calico(gnp("ns-scoped", selector="color == 'red'",
                                 namespaceSelector='projectcalico.org/name in {"foo", "bar"}',
                                 ingress=[{"action": "Allow", "source": {"namespaceSelector": 'projectcalico.org/name == "baz"'}}])))
    assert e.verdict("baz/y", "foo/x", TCP, 8080).allowed
    assert not e.verdict("qux/z", "foo/x", TCP, 8080).allowed
    e.set_policy(from_kubernetes(knp("named", "foo", ingress=[{"ports": [{"port": "http"}]}])))
    assert not e.decide("foo/x", "ingress", "10.0.9.3", TCP, 80).allowed  # the named port cannot match

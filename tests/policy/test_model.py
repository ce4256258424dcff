"""Policy model: Kubernetes NetworkPolicy and Calico (Global)NetworkPolicy → Policy (agents/policy/model.py)."""

from __future__ import annotations

from typing import Any

import pytest

from agents.policy.model import (
    ACTIONS,
    EntityRule,
    Policy,
    PolicyError,
    PortRange,
    Rule,
    from_calico,
    from_kubernetes,
    policy_from_object,
    policy_key,
    protocol_number,
    workload_labels,
)
from agents.policy.selector import ALL, parse_selector

ORCH = "projectcalico.org/orchestrator == 'k8s'"


def knp(spec: dict[str, Any], name: str = "np", namespace: str | None = "prod") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}


def sel(text: str) -> Any:
    return parse_selector(text)


# --------------------------------------------------------------------- Kubernetes: the policy itself


def test_k8s_identity_order_and_selector() -> None:
    p = from_kubernetes(knp({"podSelector": {"matchLabels": {"app": "web"}}}, name="allow-web"))
    assert isinstance(p, Policy)
    assert p.kind == "NetworkPolicy"
    assert p.name == "knp.default.allow-web"
    assert p.namespace == "prod"
    assert p.order == 1000
    assert p.key == ("NetworkPolicy", "prod", "knp.default.allow-web")
    assert p.selector == sel(f"{ORCH} && app == 'web'")
    assert p.selector.matches(workload_labels({"app": "web"}, "prod"))
    assert not p.selector.matches({"app": "web"})  # a host endpoint / non-pod never
    assert policy_key(knp({}, name="allow-web")) == p.key


def test_k8s_empty_pod_selector_selects_all_pods_and_default_namespace() -> None:
    p = from_kubernetes(knp({"podSelector": {}}, namespace=None))
    assert p.namespace == "default"
    assert p.selector == sel(ORCH)
    assert p.selector.matches(workload_labels({}, "default"))
    p2 = from_kubernetes(knp({}))  # podSelector absent = {} (Go zero value)
    assert p2.selector == sel(ORCH)


@pytest.mark.parametrize(
    "spec,types",
    [
        ({"podSelector": {}}, {"Ingress"}),
        ({"podSelector": {}, "ingress": [{}]}, {"Ingress"}),
        ({"podSelector": {}, "egress": [{}]}, {"Ingress", "Egress"}),
        ({"podSelector": {}, "egress": []}, {"Ingress"}),  # API server defaulting: len(egress) != 0
        ({"podSelector": {}, "policyTypes": ["Egress"]}, {"Egress"}),
        ({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, {"Ingress", "Egress"}),
        ({"podSelector": {}, "policyTypes": [], "egress": [{}]}, {"Ingress", "Egress"}),
        ({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}, {"Egress"}),
    ],
)
def test_k8s_policy_types(spec: dict[str, Any], types: set[str]) -> None:
    assert from_kubernetes(knp(spec)).types == frozenset(types)


def test_k8s_default_deny_vs_allow_all() -> None:
    deny = from_kubernetes(knp({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    assert deny.ingress == () and deny.egress == ()
    deny2 = from_kubernetes(knp({"podSelector": {}, "ingress": []}))
    assert deny2.ingress == () and deny2.types == {"Ingress"}
    allow = from_kubernetes(knp({"podSelector": {}, "ingress": [{}], "egress": [{}]}))
    assert allow.ingress == (Rule("Allow"),)
    assert allow.egress == (Rule("Allow"),)
    assert allow.ingress[0].source == EntityRule() and allow.ingress[0].protocol is None


# --------------------------------------------------------------------- Kubernetes: peers

PEER_CASES = [
    # (peer, expected EntityRule for the peer side)
    ({"podSelector": {"matchLabels": {"role": "fe"}}},
     EntityRule(selector=sel(f"{ORCH} && role == 'fe'"), namespace_selector=None)),
    ({"podSelector": {}}, EntityRule(selector=sel(ORCH), namespace_selector=None)),
    ({"namespaceSelector": {"matchLabels": {"team": "a"}}},
     EntityRule(selector=sel(ORCH), namespace_selector=sel("team == 'a'"))),
    ({"namespaceSelector": {}}, EntityRule(selector=sel(ORCH), namespace_selector=ALL)),
    ({"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                                  "values": ["x", "y"]}]},
      "podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}},
     EntityRule(selector=sel(f"{ORCH} && app not in {{'db'}}"),
                namespace_selector=sel("kubernetes.io/metadata.name in {'x', 'y'}"))),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"},
                                           {"key": "b", "operator": "DoesNotExist"}]}},
     EntityRule(selector=sel(f"{ORCH} && has(a) && !has(b)"))),
    ({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.0/24"]}},
     EntityRule(nets=("10.0.0.0/8",), not_nets=("10.1.0.0/16", "10.2.3.0/24"))),
    ({"ipBlock": {"cidr": "10.0.0.5/8"}}, EntityRule(nets=("10.0.0.0/8",))),  # normalized as Calico
    ({"ipBlock": {"cidr": "fd00:10::/48", "except": ["fd00:10:0:1::/64"]}},
     EntityRule(nets=("fd00:10::/48",), not_nets=("fd00:10:0:1::/64",))),
    ({"ipBlock": {"cidr": "0.0.0.0/0"}}, EntityRule(nets=("0.0.0.0/0",))),
]


@pytest.mark.parametrize("peer,expected", PEER_CASES)
def test_k8s_ingress_peer(peer: dict[str, Any], expected: EntityRule) -> None:
    p = from_kubernetes(knp({"podSelector": {}, "ingress": [{"from": [peer]}]}))
    assert p.ingress == (Rule("Allow", source=expected),)


@pytest.mark.parametrize("peer,expected", PEER_CASES)
def test_k8s_egress_peer(peer: dict[str, Any], expected: EntityRule) -> None:
    p = from_kubernetes(knp({"podSelector": {}, "egress": [{"to": [peer], "ports": [{"port": 53, "protocol": "UDP"}]}]}))
    want = EntityRule(nets=expected.nets, not_nets=expected.not_nets, selector=expected.selector,
                      namespace_selector=expected.namespace_selector, ports=(PortRange(53, 53),))
    assert p.egress == (Rule("Allow", protocol=17, destination=want),)
    assert p.types == {"Ingress", "Egress"}


def test_k8s_peers_are_ored_one_rule_each_and_rules_additive() -> None:
    p = from_kubernetes(knp({"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"a": "1"}}}, {"ipBlock": {"cidr": "192.168.0.0/16"}}]},
        {"from": [{"namespaceSelector": {}}]},
    ]}))
    assert [r.source for r in p.ingress] == [
        EntityRule(selector=sel(f"{ORCH} && a == '1'")),
        EntityRule(nets=("192.168.0.0/16",)),
        EntityRule(selector=sel(ORCH), namespace_selector=ALL),
    ]
    assert all(r.action == "Allow" for r in p.ingress)


# --------------------------------------------------------------------- Kubernetes: ports

PORT_CASES = [
    # (ports, [(protocol, ports tuple)] in rule order)
    ([{"port": 80}], [(6, (PortRange(80, 80),))]),
    ([{"port": 80, "protocol": "TCP"}], [(6, (PortRange(80, 80),))]),
    ([{"port": 53, "protocol": "UDP"}], [(17, (PortRange(53, 53),))]),
    ([{"port": 9000, "protocol": "SCTP"}], [(132, (PortRange(9000, 9000),))]),
    ([{"port": "http"}], [(6, ("http",))]),
    ([{"port": "dns", "protocol": "UDP"}], [(17, ("dns",))]),
    ([{"port": 32000, "endPort": 32768}], [(6, (PortRange(32000, 32768),))]),
    ([{"protocol": "UDP"}], [(17, ())]),  # every UDP port
    ([{}], [(6, ())]),  # an empty port entry = every TCP port
    # one rule per protocol, in protocol name order; ports of one protocol merged
    ([{"port": 53, "protocol": "UDP"}, {"port": 80}, {"port": 81}, {"port": 53}],
     [(6, (PortRange(53, 53), PortRange(80, 81))), (17, (PortRange(53, 53),))]),
    ([{"port": 80}, {"port": "http"}, {"port": 82, "endPort": 85}],
     [(6, ("http", PortRange(80, 80), PortRange(82, 85)))]),
    ([{"port": 80}, {"protocol": "TCP"}], [(6, ())]),  # all TCP ports wins
    ([{"port": 1, "protocol": "SCTP"}, {"port": 2, "protocol": "UDP"}, {"port": 3}],
     [(132, (PortRange(1, 1),)), (6, (PortRange(3, 3),)), (17, (PortRange(2, 2),))]),
]


@pytest.mark.parametrize("ports,expected", PORT_CASES)
def test_k8s_ports(ports: list[dict[str, Any]], expected: list[tuple[int, tuple[Any, ...]]]) -> None:
    p = from_kubernetes(knp({"podSelector": {}, "ingress": [{"ports": ports}]}))
    assert [(r.protocol, r.destination.ports) for r in p.ingress] == expected
    assert all(r.source == EntityRule() for r in p.ingress)


def test_k8s_ports_times_peers() -> None:
    p = from_kubernetes(knp({"podSelector": {}, "ingress": [{
        "from": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}],
        "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}]}))
    assert [(r.protocol, r.source.nets) for r in p.ingress] == [(6, ()), (6, ("10.0.0.0/8",)),
                                                                (17, ()), (17, ("10.0.0.0/8",))]


# --------------------------------------------------------------------- Kubernetes: errors

K8S_ERRORS = [
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr", "invalid CIDR '10.0.0.0/33'"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr", "invalid CIDR"),
    ({"ingress": [{"from": [{"ipBlock": {}}]}]}, "spec.ingress[0].from[0].ipBlock.cidr", "required"),
    ({"ingress": [{}, {"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]},
     "spec.ingress[1].from[0].ipBlock.except[0]", "strict subset"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]", "strict subset"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["fd00::/64"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]", "strict subset"),
    ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "spec.egress[0].to[0]", "both ipBlock and another peer"),
    ({"egress": [{"to": [{}]}]}, "spec.egress[0].to[0]", "must specify a peer"),
    ({"ingress": [{"ports": [{"port": 80, "endPort": 79}]}]}, "spec.ingress[0].ports[0].endPort",
     "greater than or equal to port"),
    ({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort",
     "named port"),
    ({"ingress": [{"ports": [{"endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort", "port is not specified"),
    ({"ingress": [{"ports": [{"port": 0}]}]}, "spec.ingress[0].ports[0].port", "between 1 and 65535"),
    ({"ingress": [{"ports": [{"port": 70000}]}]}, "spec.ingress[0].ports[0].port", "between 1 and 65535"),
    ({"ingress": [{"ports": [{"port": 80, "endPort": 65536}]}]}, "spec.ingress[0].ports[0].endPort",
     "between 1 and 65535"),
    ({"ingress": [{"ports": [{"port": "80"}]}]}, "spec.ingress[0].ports[0].port", "invalid port name"),
    ({"ingress": [{"ports": [{"port": "Http_X"}]}]}, "spec.ingress[0].ports[0].port", "invalid port name"),
    ({"ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}, "spec.ingress[0].ports[0].protocol",
     "expected TCP, UDP or SCTP"),
    ({"ingress": [{"ports": [{"port": 80, "protocol": "tcp"}]}]}, "spec.ingress[0].ports[0].protocol",
     "expected TCP, UDP or SCTP"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}},
     "spec.podSelector.matchExpressions[0].values", "non-empty"),
    ({"ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}]}]},
     "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator", "invalid operator"),
    ({"policyTypes": ["Ingres"]}, "spec.policyTypes[0]", "expected Ingress or Egress"),
    ({"ingres": []}, "spec.ingres", "unknown field"),
    ({"ingress": {"from": []}}, "spec.ingress", "expected a list"),
]


@pytest.mark.parametrize("spec,path,fragment", K8S_ERRORS)
def test_k8s_errors_name_the_path(spec: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        from_kubernetes(knp(spec))
    assert info.value.path == path, str(info.value)
    assert str(info.value).startswith(path + ": ")
    assert fragment in str(info.value)


def test_k8s_missing_name() -> None:
    with pytest.raises(PolicyError, match=r"^metadata\.name: required"):
        from_kubernetes({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "spec": {}})


# --------------------------------------------------------------------- Calico


def cnp(spec: dict[str, Any], *, kind: str = "NetworkPolicy", name: str = "p", namespace: str | None = "prod"
        ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None and kind == "NetworkPolicy":
        meta["namespace"] = namespace
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec}


def test_calico_network_policy_identity() -> None:
    p = from_calico(cnp({"order": 10, "selector": "app == 'web'", "ingress": [{"action": "Allow"}]}))
    assert p.kind == "CalicoNetworkPolicy"
    assert p.name == "p" and p.namespace == "prod"
    assert p.order == 10.0
    assert p.selector == sel("app == 'web'")
    assert p.key == ("CalicoNetworkPolicy", "prod", "p")
    assert p.namespace_selector is None
    assert policy_key(cnp({})) == p.key


def test_calico_defaults() -> None:
    p = from_calico(cnp({}, namespace=None))
    assert p.namespace == "default"
    assert p.order is None
    assert p.selector == ALL
    assert p.types == {"Ingress"}


def test_global_network_policy() -> None:
    obj = cnp({"order": 5.5, "selector": "has(host)", "namespaceSelector": "team == 'a'",
               "egress": [{"action": "Deny"}]}, kind="GlobalNetworkPolicy", name="g")
    p = from_calico(obj)
    assert p.kind == "GlobalNetworkPolicy"
    assert p.namespace is None
    assert p.order == 5.5
    assert p.key == ("GlobalNetworkPolicy", "", "g")
    assert p.namespace_selector == sel("team == 'a'")
    assert p.types == {"Egress"}
    assert policy_key(obj) == p.key


@pytest.mark.parametrize(
    "spec,types",
    [
        ({}, {"Ingress"}),
        ({"ingress": [{"action": "Allow"}]}, {"Ingress"}),
        ({"egress": [{"action": "Allow"}]}, {"Egress"}),
        ({"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}, {"Ingress", "Egress"}),
        ({"types": ["Egress"], "ingress": [{"action": "Allow"}]}, {"Egress"}),
        ({"types": ["Ingress", "Egress"]}, {"Ingress", "Egress"}),
    ],
)
def test_calico_types_inference(spec: dict[str, Any], types: set[str]) -> None:
    assert from_calico(cnp(spec)).types == frozenset(types)


@pytest.mark.parametrize("action", ACTIONS)
def test_calico_actions(action: str) -> None:
    assert from_calico(cnp({"ingress": [{"action": action}]})).ingress[0].action == action


CALICO_RULES = [
    ({"action": "Allow", "protocol": "TCP"}, Rule("Allow", protocol=6)),
    ({"action": "Allow", "protocol": "udp"}, Rule("Allow", protocol=17)),
    ({"action": "Allow", "protocol": 132}, Rule("Allow", protocol=132)),
    ({"action": "Allow", "protocol": "47"}, Rule("Allow", protocol=47)),
    ({"action": "Deny", "notProtocol": "UDP"}, Rule("Deny", not_protocol=17)),
    ({"action": "Allow", "ipVersion": 6}, Rule("Allow", ip_version=6)),
    ({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
     Rule("Allow", protocol=1, ip_version=4, icmp=(8, 0))),
    ({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}},
     Rule("Allow", protocol=1, ip_version=4, icmp=(8, None))),
    ({"action": "Allow", "protocol": "ICMPv6", "notICMP": {"type": 128}},
     Rule("Allow", protocol=58, ip_version=6, not_icmp=(128, None))),
    ({"action": "Allow", "source": {"nets": ["10.0.0.0/8", "192.168.1.7"], "notNets": ["10.1.0.0/16"]}},
     Rule("Allow", source=EntityRule(nets=("10.0.0.0/8", "192.168.1.7/32"), not_nets=("10.1.0.0/16",)))),
    ({"action": "Allow", "source": {"selector": "role == 'fe'", "notSelector": "has(quarantine)",
                                    "namespaceSelector": "team in {'a', 'b'}"}},
     Rule("Allow", source=EntityRule(selector=sel("role == 'fe'"), not_selector=sel("has(quarantine)"),
                                     namespace_selector=sel("team in {'a','b'}")))),
    ({"action": "Allow", "source": {"namespaceSelector": "global()"}},
     Rule("Allow", source=EntityRule(namespace_selector=sel("global()")))),
    ({"action": "Allow", "protocol": "TCP", "destination": {"ports": [80, "8000:8080", "http", "443"],
                                                           "notPorts": [8005]}},
     Rule("Allow", protocol=6, destination=EntityRule(
         ports=(PortRange(80, 80), PortRange(8000, 8080), "http", PortRange(443, 443)),
         not_ports=(PortRange(8005, 8005),)))),
    ({"action": "Allow", "protocol": "UDP", "source": {"ports": ["1000:2000"]}},
     Rule("Allow", protocol=17, source=EntityRule(ports=(PortRange(1000, 2000),)))),
    ({"action": "Allow", "ipVersion": 6, "destination": {"nets": ["fd00::/8"]}},
     Rule("Allow", ip_version=6, destination=EntityRule(nets=("fd00::/8",)))),
    ({"action": "Log", "metadata": {"annotations": {"x": "y"}}}, Rule("Log")),
]


@pytest.mark.parametrize("rule,expected", CALICO_RULES)
def test_calico_rule_fields(rule: dict[str, Any], expected: Rule) -> None:
    p = from_calico(cnp({"ingress": [rule], "egress": [rule]}))
    assert p.ingress == (expected,)
    assert p.egress == (expected,)


CALICO_ERRORS = [
    ({"selector": "app == "}, "spec.selector", "position 7: expected a string literal"),
    ({"ingress": [{"action": "Allow", "source": {"selector": "a == 'x' && (b"}}]},
     "spec.ingress[0].source.selector", "position 14: expected an operator"),
    ({"egress": [{"action": "Allow"}, {"action": "Allow", "destination": {"notSelector": "has(a"}}]},
     "spec.egress[1].destination.notSelector", "position 5: expected ')'"),
    ({"ingress": [{"action": "Allow", "source": {"namespaceSelector": "a in {'x'"}}]},
     "spec.ingress[0].source.namespaceSelector", "position 9"),
    ({"ingress": [{"action": "Accept"}]}, "spec.ingress[0].action", "invalid action 'Accept'"),
    ({"ingress": [{}]}, "spec.ingress[0].action", "invalid action None"),
    ({"ingress": [{"action": "Allow", "protocol": "GRE"}]}, "spec.ingress[0].protocol", "invalid protocol"),
    ({"ingress": [{"action": "Allow", "protocol": 256}]}, "spec.ingress[0].protocol", "1-255"),
    ({"ingress": [{"action": "Allow", "notProtocol": "nope"}]}, "spec.ingress[0].notProtocol", "invalid protocol"),
    ({"ingress": [{"action": "Allow", "ipVersion": 5}]}, "spec.ingress[0].ipVersion", "expected 4 or 6"),
    ({"ingress": [{"action": "Allow", "icmp": {"type": 8}}]}, "spec.ingress[0].icmp", "requires protocol ICMP"),
    ({"ingress": [{"action": "Allow", "protocol": "ICMP", "icmp": {"code": 1}}]}, "spec.ingress[0].icmp.code",
     "without type"),
    ({"ingress": [{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 255}}]}, "spec.ingress[0].icmp.type",
     "0-254"),
    ({"ingress": [{"action": "Allow", "protocol": "ICMP", "ipVersion": 6}]}, "spec.ingress[0].ipVersion",
     "requires ipVersion 4"),
    ({"ingress": [{"action": "Allow", "destination": {"ports": [80]}}]}, "spec.ingress[0].destination.ports",
     "requires protocol TCP"),
    ({"ingress": [{"action": "Allow", "protocol": "ICMP", "source": {"notPorts": [80]}}]},
     "spec.ingress[0].source.notPorts", "requires protocol TCP"),
    ({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["90:80"]}}]},
     "spec.ingress[0].destination.ports[0]", "minimum is greater than maximum"),
    ({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [70000]}}]},
     "spec.ingress[0].destination.ports[0]", "between 0 and 65535"),
    ({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["a b"]}}]},
     "spec.ingress[0].destination.ports[0]", "invalid port"),
    ({"ingress": [{"action": "Allow", "source": {"nets": ["10.0.0.0/40"]}}]}, "spec.ingress[0].source.nets[0]",
     "invalid CIDR"),
    ({"ingress": [{"action": "Allow", "ipVersion": 4, "source": {"nets": ["fd00::/8"]}}]},
     "spec.ingress[0].ipVersion", "another IP version"),
    ({"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["x"]}}}]},
     "spec.ingress[0].source.serviceAccounts", "not supported"),
    ({"ingress": [{"action": "Allow", "http": {"methods": ["GET"]}}]}, "spec.ingress[0].http", "not supported"),
    ({"serviceAccountSelector": "role == 'x'"}, "spec.serviceAccountSelector", "not supported"),
    ({"namespaceSelector": "a == 'b'"}, "spec.namespaceSelector", "unknown field"),  # only on GNP
    ({"order": "first"}, "spec.order", "expected a number"),
    ({"types": ["Forward"]}, "spec.types[0]", "expected Ingress or Egress"),
    ({"ingress": [{"action": "Allow", "source": {"selektor": "x"}}]}, "spec.ingress[0].source.selektor",
     "unknown field"),
    ({"tier": "security"}, "spec.tier", "only the default tier"),
]


@pytest.mark.parametrize("spec,path,fragment", CALICO_ERRORS)
def test_calico_errors_name_the_path(spec: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        from_calico(cnp(spec))
    assert info.value.path == path, str(info.value)
    assert str(info.value).startswith(path + ": ")
    assert fragment in str(info.value)


def test_gnp_errors() -> None:
    with pytest.raises(PolicyError, match=r"^spec\.namespaceSelector: position 2: expected '=='"):
        from_calico(cnp({"namespaceSelector": "a = 'b'"}, kind="GlobalNetworkPolicy"))
    with pytest.raises(PolicyError, match=r"^spec\.doNotTrack: not supported"):
        from_calico(cnp({"doNotTrack": True}, kind="GlobalNetworkPolicy"))


# --------------------------------------------------------------------- dispatch / helpers


def test_policy_from_object_dispatch() -> None:
    assert policy_from_object(knp({})).kind == "NetworkPolicy"
    assert policy_from_object(cnp({})).kind == "CalicoNetworkPolicy"
    assert policy_from_object(cnp({}, kind="GlobalNetworkPolicy")).kind == "GlobalNetworkPolicy"
    with pytest.raises(PolicyError, match=r"^apiVersion: not a policy"):
        policy_from_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})
    with pytest.raises(PolicyError, match=r"^apiVersion: not a policy"):
        policy_from_object({"apiVersion": "networking.k8s.io/v1", "kind": "GlobalNetworkPolicy"})


def test_policies_are_hashable_values() -> None:
    a = from_kubernetes(knp({"podSelector": {"matchLabels": {"x": "y"}}, "ingress": [{"ports": [{"port": 80}]}]}))
    b = from_kubernetes(knp({"podSelector": {"matchLabels": {"x": "y"}}, "ingress": [{"ports": [{"port": 80}]}]}))
    assert a == b and hash(a) == hash(b)
    c = from_kubernetes(knp({"podSelector": {"matchLabels": {"x": "y"}}, "ingress": [{"ports": [{"port": 81}]}]}))
    assert a != c


@pytest.mark.parametrize("value,number", [("TCP", 6), ("udp", 17), ("ICMP", 1), ("icmpv6", 58), ("SCTP", 132),
                                          (6, 6), ("17", 17)])
def test_protocol_number(value: Any, number: int) -> None:
    assert protocol_number(value) == number


def test_port_range_contains() -> None:
    r = PortRange(80, 90)
    assert 80 in r and 90 in r and 85 in r
    assert 79 not in r and 91 not in r
    assert str(r) == "80:90" and str(PortRange(5, 5)) == "5"

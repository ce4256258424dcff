"""Felix's translation layer (agents/node/felix.py): API objects → policy engine → enforcer."""

from __future__ import annotations

from typing import Any

from agents.node.felix import FLANNEL_VERB, Felix, pod_endpoint
from broker import packets as P


class FakePod:
    def __init__(self, key: str, ips: list[str]) -> None:
        self.key, self.ips = key, ips


def pod(name: str, ns: str, ip: str, labels: dict[str, str], node: str = "n0") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                                                       "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}}


def deny_all(ns: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": ns}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def syn(src: str, dst: str, dport: int = 8080) -> tuple[Any, ...]:
    return P.tcp(src, dst, 40000, dport, P.SYN, 1, 0, 65535)


def felix() -> Felix:
    f = Felix("n0", local_ips=["172.16.0.20"], clock=lambda: 100.0)
    f.handle("Namespace", {"metadata": {"name": "shop"}})
    f.handle("Pod", pod("web", "shop", "10.244.0.5", {"app": "web"}))
    f.handle("Pod", pod("client", "shop", "10.244.1.7", {"role": "client"}, node="n1"))
    return f


def test_pod_endpoint_reads_labels_ips_named_ports_and_node() -> None:
    ep = pod_endpoint(pod("web", "shop", "10.244.0.5", {"app": "web"}))
    assert ep is not None and ep.key == "shop/web" and ep.ips == ["10.244.0.5"] and ep.node == "n0"
    assert ep.ports == [("http", "TCP", 8080)] and ep.labels == {"app": "web"}
    assert pod_endpoint({**pod("h", "shop", "172.16.0.20", {}), "spec": {"hostNetwork": True}}) is None


def test_policy_takes_effect_at_once_and_deletion_lifts_it() -> None:
    f = felix()
    web = FakePod("shop/web", ["10.244.0.5"])
    assert f.enforcer is not None
    assert f.enforcer.hook(web, "ingress", syn("10.244.1.7", "10.244.0.5"), 1.0) is not None
    f.handle("NetworkPolicy", deny_all("shop"), committed_at=99.5)
    assert f.enforcer.hook(web, "ingress", syn("10.244.1.7", "10.244.0.5", 8081), 1.0) is None
    # the node itself may always reach its pods (kubelet probes)
    assert f.enforcer.hook(web, "ingress", syn("172.16.0.20", "10.244.0.5", 8082), 1.0) is not None
    st = f.stats(["shop/web"])
    assert st["enforcing"] and st["endpoints"]["shop/web"]["ingress"] == ["knp.default.deny"]
    assert st["latency"]["count"] == 1 and abs(st["latency"]["max_ms"] - 500.0) < 1e-6
    f.handle("NetworkPolicy", deny_all("shop"), deleted=True)
    assert f.enforcer.hook(web, "ingress", syn("10.244.1.7", "10.244.0.5", 8083), 1.0) is not None
    assert f.stats(["shop/web"])["endpoints"]["shop/web"]["ingress"] == []


def test_malformed_objects_are_skipped_and_counted() -> None:
    f = felix()
    bad = deny_all("shop")
    bad["spec"]["podSelector"] = {"matchExpressions": [{"key": "a", "operator": "Sometimes"}]}
    f.handle("NetworkPolicy", bad)
    f.handle("GlobalNetworkPolicy", {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                                     "metadata": {"name": "g"}, "spec": {"selector": "app == "}})
    f.handle("Pod", {"metadata": {}, "spec": "nonsense"})
    st = f.stats()
    assert st["counts"]["malformed"] == 3 and st["counts"]["policies"] == 0, st
    assert any("position" in why for why in st["malformed"].values()), st["malformed"]


def test_calico_gnp_with_lower_order_overrides_kubernetes_allow() -> None:
    f = felix()
    web = FakePod("shop/web", ["10.244.0.5"])
    allow = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "allow", "namespace": "shop"},
             "spec": {"podSelector": {}, "ingress": [{}]}}
    gnp = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "block"},
           "spec": {"order": 10, "selector": "app == 'web'", "types": ["Ingress"],
                    "ingress": [{"action": "Deny", "source": {"selector": "role == 'client'"}}]}}
    f.handle("NetworkPolicy", allow)
    f.handle("GlobalNetworkPolicy", gnp)
    assert f.enforcer is not None
    assert f.enforcer.hook(web, "ingress", syn("10.244.1.7", "10.244.0.5"), 1.0) is None
    assert f.stats(["shop/web"])["endpoints"]["shop/web"]["ingress"][0] == "block"


def test_host_endpoints_follow_nodes_and_heps() -> None:
    f = felix()
    f.handle("Node", {"metadata": {"name": "n0"}, "status": {"addresses": [{"type": "InternalIP",
                                                                            "address": "172.16.0.20"}]}})
    f.handle("HostEndpoint", {"metadata": {"name": "n0-eth0", "labels": {"role": "node"}},
                              "spec": {"node": "n0", "interfaceName": "eth0"}})
    ep = f.engine.endpoint("host:n0")
    assert ep is not None and ep.host and ep.ips == ["172.16.0.20"] and ep.labels == {"role": "node"}
    f.handle("HostEndpoint", {"metadata": {"name": "n0-eth0"}, "spec": {"node": "n0"}}, deleted=True)
    assert f.engine.endpoint("host:n0") is None


def test_flannel_verb_says_it_does_not_enforce() -> None:
    assert FLANNEL_VERB == {"enforcing": False, "reason": "flannel does not enforce network policy"}
    f = Felix("n0", local_ips=[], clock=lambda: 0.0, enforce=False)
    assert f.enforcer is None and f.stats()["enforcing"] is False and f.next_deadline() is None


def test_host_endpoint_guard_polices_the_nodes_own_traffic() -> None:
    from agents.node.felix import HostEndpointGuard

    f = felix()
    f.handle("Node", {"metadata": {"name": "n0"},
                      "status": {"addresses": [{"type": "InternalIP", "address": "172.16.0.20"}]}})
    hooks: dict[str, list[Any]] = {"INPUT": [], "OUTPUT": []}
    guard = HostEndpointGuard(f, lambda ip: ip == "10.244.0.5", hooks)
    remote = "172.16.0.21"
    echo = P.echo(remote, "172.16.0.20", True, 1, 1)
    assert hooks == {"INPUT": [], "OUTPUT": []} and not guard.attached  # no HostEndpoint: nothing policed, no cost
    hep = {"metadata": {"name": "n0-eth0", "labels": {"host-endpoint": "n0"}},
           "spec": {"node": "n0", "interfaceName": "eth0"}}
    f.handle("HostEndpoint", hep)
    assert hooks == {"INPUT": [guard.input], "OUTPUT": [guard.output]} and guard.attached
    assert guard.input(echo, 1.0) is None  # a host endpoint without policy: denied
    assert guard.input(syn(remote, "172.16.0.20", 6443), 1.0) is not None  # failsafe inbound
    assert guard.input(P.udp(remote, "172.16.0.20", 50000, 4789, b""), 1.0) is not None  # the overlay
    assert guard.input(syn("10.244.0.5", "172.16.0.20", 10250), 1.0) is not None  # this node's pod
    assert guard.output(syn("172.16.0.20", "8.8.8.8", 80), 1.0) is None
    assert guard.output(P.udp("172.16.0.20", "172.16.0.2", 40000, 53, b""), 1.0) is not None  # failsafe out
    f.handle("GlobalNetworkPolicy", {
        "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "ping"},
        "spec": {"selector": "has(host-endpoint)", "types": ["Ingress"],
                 "ingress": [{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}}]}})
    assert guard.input(P.echo(remote, "172.16.0.20", True, 2, 1), 1.0) is not None
    reply = P.echo("172.16.0.20", remote, False, 2, 1)
    assert guard.output(reply, 1.0) is not None  # the reply of an allowed flow (conntrack)
    assert guard.counters["dropped"] == 2 and guard.counters["failsafe"] == 2, guard.counters
    f.handle("HostEndpoint", hep, deleted=True)
    assert hooks == {"INPUT": [], "OUTPUT": []} and not guard.attached

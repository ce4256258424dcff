"""The policy enforcer: conntrack of policed flows, drops and counters, and a property test that
no packet is delivered for a flow whose first packet the engine denied."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.policy.enforcer import PolicyEnforcer
from agents.policy.engine import Endpoint, PolicyEngine
from agents.policy.model import from_calico, from_kubernetes
from broker import packets as P

NODE_IP = "192.168.0.4"


@dataclass
class Pod:
    key: str
    ips: list[str] = field(default_factory=list)


WEB = Pod("prod/web", ["10.0.1.10"])
CLIENT = Pod("prod/client", ["10.0.1.12"])
OTHER = Pod("dev/client", ["10.0.2.12"])
EXTERNAL = "8.8.8.8"


def knp(name: str, ns: str = "prod", **spec: Any) -> dict[str, Any]:
    spec.setdefault("podSelector", {})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


WEB_FROM_CLIENT = knp("web", podSelector={"matchLabels": {"app": "web"}},
                      ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"},
                                          {"port": 9, "protocol": "SCTP"}]}])
DENY_ALL = knp("deny-all", policyTypes=["Ingress", "Egress"])


def make(*policies: dict[str, Any], timeouts: Any = None) -> tuple[PolicyEngine, PolicyEnforcer]:
    e = PolicyEngine()
    for pod, labels in ((WEB, {"app": "web"}), (CLIENT, {"app": "client"}), (OTHER, {"app": "client"})):
        e.set_endpoint(Endpoint(pod.key, pod.key.split("/")[0], labels, list(pod.ips)))
    for obj in policies:
        e.set_policy(from_kubernetes(obj))
    return e, PolicyEnforcer(e, local_ips=[NODE_IP], timeouts=timeouts)


def syn(src: str, dst: str, sport: int = 40000, dport: int = 80) -> tuple[Any, ...]:
    return P.tcp(src, dst, sport, dport, P.SYN, 1, 0, 65535)


def seg(src: str, dst: str, sport: int, dport: int, flags: int) -> tuple[Any, ...]:
    return P.tcp(src, dst, sport, dport, flags, 2, 2, 65535)


def local_path(enf: PolicyEnforcer, src: Pod, dst: Pod, pkt: tuple[Any, ...], now: float) -> bool:
    """Two pods of the node: the sender's egress hook, then the receiver's ingress hook."""
    out = enf.hook(src, "egress", pkt, now)
    if out is None:
        return False
    return enf.hook(dst, "ingress", out, now) is not None


def test_allowed_tcp_flow_and_replies_between_local_pods() -> None:
    _, enf = make(WEB_FROM_CLIENT)
    c, w = CLIENT.ips[0], WEB.ips[0]
    assert local_path(enf, CLIENT, WEB, syn(c, w), 0.0)
    assert local_path(enf, WEB, CLIENT, seg(w, c, 80, 40000, P.SYN | P.ACK), 0.1)
    assert local_path(enf, CLIENT, WEB, seg(c, w, 40000, 80, P.ACK), 0.2)
    assert local_path(enf, WEB, CLIENT, seg(w, c, 80, 40000, P.ACK | P.PSH), 0.3)
    s = enf.stats()
    assert s["flows"] == 1 and s["allowed"] == 1 and s["denied"] == 0
    assert enf.flows()[0]["state"] == "ESTABLISHED"
    assert enf.flows()[0]["egress_pod"] == "prod/client" and enf.flows()[0]["ingress_pod"] == "prod/web"


def test_denied_first_packet_dropped_and_counted() -> None:
    _, enf = make(WEB_FROM_CLIENT)
    o, w = OTHER.ips[0], WEB.ips[0]
    assert enf.hook(WEB, "ingress", syn(o, w), 0.0) is None        # other namespace: denied
    assert enf.hook(WEB, "ingress", syn(o, w), 1.0) is None        # the retransmission too
    assert enf.hook(WEB, "ingress", syn(CLIENT.ips[0], w, dport=81), 1.0) is None  # wrong port
    s = enf.stats()
    assert s["denied"] == 3 and s["denied_by_endpoint"] == {"prod/web": 3} and s["flows"] == 0
    assert enf.last_denied is not None and enf.last_denied["rule"] == "default-deny"
    # the reply direction of a denied flow does not exist either
    assert enf.hook(WEB, "egress", seg(w, o, 80, 40000, P.SYN | P.ACK), 1.1) is None


def test_second_local_pod_side_still_checked() -> None:
    """A flow admitted by the client's egress is still checked by the server's ingress."""
    _, enf = make(knp("web-deny", podSelector={"matchLabels": {"app": "web"}}, policyTypes=["Ingress"]))
    c, w = CLIENT.ips[0], WEB.ips[0]
    assert enf.hook(CLIENT, "egress", syn(c, w), 0.0) is not None
    assert enf.hook(WEB, "ingress", syn(c, w), 0.0) is None
    assert enf.hook(WEB, "egress", seg(w, c, 80, 40000, P.SYN | P.ACK), 0.1) is None  # no spoofed reply


def test_non_syn_without_entry_is_invalid() -> None:
    _, enf = make()
    w = WEB.ips[0]
    for flags in (P.ACK, P.SYN | P.ACK, P.FIN | P.ACK, P.RST, P.ACK | P.PSH):
        assert enf.hook(WEB, "ingress", seg(EXTERNAL, w, 1234, 80, flags), 0.0) is None
    assert enf.stats()["invalid"] == 5 and enf.stats()["denied"] == 0
    assert enf.hook(WEB, "ingress", syn(EXTERNAL, w), 0.0) is not None


def test_established_flow_survives_policy_change_new_flows_do_not() -> None:
    engine, enf = make()
    c = CLIENT.ips[0]
    assert enf.hook(CLIENT, "egress", syn(c, EXTERNAL, 40000, 443), 0.0) is not None
    assert enf.hook(CLIENT, "ingress", seg(EXTERNAL, c, 443, 40000, P.SYN | P.ACK), 0.1) is not None
    engine.set_policy(from_kubernetes(DENY_ALL))
    assert enf.hook(CLIENT, "egress", seg(c, EXTERNAL, 40000, 443, P.ACK), 0.2) is not None
    assert enf.hook(CLIENT, "ingress", seg(EXTERNAL, c, 443, 40000, P.ACK), 0.3) is not None
    assert enf.hook(CLIENT, "egress", syn(c, EXTERNAL, 40001, 443), 0.4) is None


def test_udp_expiry_then_reevaluated() -> None:
    engine, enf = make()
    c = CLIENT.ips[0]
    q = P.udp(c, EXTERNAL, 5000, 53, b"q")
    assert enf.hook(CLIENT, "egress", q, 0.0) is not None
    assert enf.hook(CLIENT, "ingress", P.udp(EXTERNAL, c, 53, 5000, b"a"), 1.0) is not None
    # UDP: 30 s after the last packet (nf_conntrack_udp_timeout)
    assert enf.next_deadline() == 30.0
    engine.set_policy(from_kubernetes(DENY_ALL))
    # still tracked; replied and older than 2 s: a stream now, 120 s (nf_conntrack_udp_timeout_stream)
    assert enf.hook(CLIENT, "egress", q, 20.0) is not None
    enf.expire(139.0)
    assert enf.stats()["flows"] == 1
    enf.expire(140.5)
    assert enf.stats()["flows"] == 0 and enf.next_deadline() is None
    assert enf.hook(CLIENT, "ingress", P.udp(EXTERNAL, c, 53, 5000, b"a"), 141.0) is None
    assert enf.hook(CLIENT, "egress", q, 141.0) is None              # a new flow: denied now


def test_expired_entry_not_used_before_reaping() -> None:
    engine, enf = make(timeouts={P.UDP: {"UNREPLIED": 5.0}})
    c = CLIENT.ips[0]
    assert enf.hook(CLIENT, "egress", P.udp(c, EXTERNAL, 5000, 53, b""), 0.0) is not None
    engine.set_policy(from_kubernetes(DENY_ALL))
    assert enf.hook(CLIENT, "ingress", P.udp(EXTERNAL, c, 53, 5000, b""), 6.0) is None


def test_icmp_echo_and_related_errors() -> None:
    _, enf = make(knp("deny-in", policyTypes=["Ingress"]))
    c = CLIENT.ips[0]
    req = P.echo(c, EXTERNAL, True, 7, 1)
    assert enf.hook(CLIENT, "egress", req, 0.0) is not None
    assert enf.hook(CLIENT, "ingress", P.echo(EXTERNAL, c, False, 7, 1), 0.1) is not None
    assert enf.hook(CLIENT, "ingress", P.echo(EXTERNAL, c, False, 8, 1), 0.1) is None   # no such request
    assert enf.hook(CLIENT, "ingress", P.echo(EXTERNAL, c, True, 9, 1), 0.1) is None    # ingress denied
    u = P.udp(c, EXTERNAL, 5000, 53, b"q")
    assert enf.hook(CLIENT, "egress", u, 0.2) is not None
    err = P.port_unreachable(EXTERNAL, u)
    assert enf.hook(CLIENT, "ingress", err, 0.3) is not None                          # RELATED
    stray = P.port_unreachable(EXTERNAL, P.udp(c, EXTERNAL, 5001, 53, b"q"))
    assert enf.hook(CLIENT, "ingress", stray, 0.3) is None
    assert enf.stats()["related"] == 1


def test_icmpv6_echo() -> None:
    e = PolicyEngine()
    pod = Pod("prod/v6", ["fd00::5"])
    e.set_endpoint(Endpoint(pod.key, "prod", {}, pod.ips))
    e.set_policy(from_calico({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                              "metadata": {"name": "ping"},
                              "spec": {"ingress": [{"action": "Allow", "protocol": "ICMPv6",
                                                    "icmp": {"type": 128}}]}}))
    enf = PolicyEnforcer(e)
    assert enf.hook(pod, "ingress", P.echo("fd00::9", "fd00::5", True, 1, 1), 0.0) is not None
    assert enf.hook(pod, "egress", P.echo("fd00::5", "fd00::9", False, 1, 1), 0.0) is not None
    assert enf.hook(pod, "ingress", P.udp("fd00::9", "fd00::5", 1, 2, b""), 0.0) is None


def test_sctp_and_udp_first_packet_opens() -> None:
    _, enf = make(WEB_FROM_CLIENT)
    c, w = CLIENT.ips[0], WEB.ips[0]
    assert enf.hook(WEB, "ingress", P.sctp(c, w, 5000, 9, P.SCTP_INIT, 0), 0.0) is not None
    assert enf.hook(WEB, "egress", P.sctp(w, c, 9, 5000, P.SCTP_INIT_ACK, 1), 0.0) is not None
    assert enf.hook(WEB, "ingress", P.sctp(c, w, 5000, 10, P.SCTP_INIT, 0), 0.0) is None
    assert enf.hook(WEB, "ingress", P.udp(c, w, 5000, 53, b""), 0.0) is not None
    assert enf.hook(WEB, "ingress", P.udp(OTHER.ips[0], w, 5000, 53, b""), 0.0) is None


def test_node_local_traffic_always_allowed() -> None:
    _, enf = make(DENY_ALL)
    c = CLIENT.ips[0]
    assert enf.hook(CLIENT, "ingress", syn(NODE_IP, c, 40000, 8080), 0.0) is not None   # kubelet probe
    assert enf.hook(CLIENT, "egress", seg(c, NODE_IP, 8080, 40000, P.SYN | P.ACK), 0.0) is not None
    assert enf.hook(CLIENT, "egress", syn(c, "192.168.0.5", 40001, 22), 0.0) is None    # another node
    assert enf.stats()["node_local"] == 1


def test_a_flow_snated_to_the_node_is_judged_by_the_node_address_not_exempted() -> None:
    """kube-proxy SNATs an externalTrafficPolicy: Cluster flow to the node: the packet comes from
    a node address but is not the node's own traffic, so the policy judges that address."""
    e, _ = make(DENY_ALL)
    snated = {(6, NODE_IP, 31000)}  # (proto, src, sport) of flows kube-proxy SNATed
    enf = PolicyEnforcer(e, local_ips=[NODE_IP], forwarded_snat=lambda pkt: (pkt[2], pkt[0], pkt[4]) in snated)
    c = CLIENT.ips[0]
    assert enf.hook(CLIENT, "ingress", syn(NODE_IP, c, 31000, 8080), 0.0) is None       # SNATed: denied
    assert enf.hook(CLIENT, "ingress", syn(NODE_IP, c, 40000, 8080), 0.0) is not None   # the node's own
    e.set_policy(from_kubernetes(knp("from-node", ingress=[{"from": [{"ipBlock": {"cidr": f"{NODE_IP}/32"}}]}])))
    assert enf.hook(CLIENT, "ingress", syn(NODE_IP, c, 31000, 8081), 0.0) is not None   # allowed as the node


def test_tcp_reopen_after_close_reevaluates() -> None:
    engine, enf = make()
    c = CLIENT.ips[0]
    assert enf.hook(CLIENT, "egress", syn(c, EXTERNAL, 40000, 443), 0.0) is not None
    assert enf.hook(CLIENT, "ingress", seg(EXTERNAL, c, 443, 40000, P.RST), 0.1) is not None  # refused
    engine.set_policy(from_kubernetes(DENY_ALL))
    assert enf.hook(CLIENT, "egress", syn(c, EXTERNAL, 40000, 443), 0.5) is None      # same tuple, new flow


# --------------------------------------------------------------------------- property

PODS = [Pod("a/p0", ["10.0.0.1"]), Pod("a/p1", ["10.0.0.2"]), Pod("b/p2", ["10.0.1.1"])]
EXT = ["8.8.8.8", "10.9.9.9"]
LABELS = [{"app": "x"}, {"app": "y"}, {"app": "x", "role": "db"}]

_peer = st.sampled_from([
    {"podSelector": {"matchLabels": {"app": "x"}}},
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}},
    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.1.0/24"]}},
    {"ipBlock": {"cidr": "8.8.8.8/32"}},
    {"podSelector": {}},
])
_rule = st.fixed_dictionaries({}, optional={
    "peers": st.lists(_peer, min_size=1, max_size=2),
    "ports": st.lists(st.fixed_dictionaries({"port": st.sampled_from([80, 53]),
                                             "protocol": st.sampled_from(["TCP", "UDP"])}), min_size=1, max_size=2),
})
_policy = st.fixed_dictionaries({
    "ns": st.sampled_from(["a", "b"]),
    "sel": st.sampled_from([{}, {"matchLabels": {"app": "x"}}, {"matchLabels": {"role": "db"}}]),
    "types": st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
    "ingress": st.lists(_rule, max_size=2),
    "egress": st.lists(_rule, max_size=2),
})


def _k8s(i: int, p: dict[str, Any]) -> dict[str, Any]:
    def rules(rs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        out = []
        for r in rs:
            o: dict[str, Any] = {}
            if "peers" in r:
                o[key] = r["peers"]
            if "ports" in r:
                o["ports"] = r["ports"]
            out.append(o)
        return out
    return knp(f"p{i}", p["ns"], podSelector=p["sel"], policyTypes=p["types"],
               ingress=rules(p["ingress"], "from"), egress=rules(p["egress"], "to"))


_step = st.one_of(
    st.tuples(st.just("pkt"), st.integers(0, 4), st.integers(0, 4), st.sampled_from(["syn", "ack", "udp"]),
              st.sampled_from([80, 53]), st.integers(1000, 1002), st.booleans()),
    st.tuples(st.just("policy"), _policy),
    st.tuples(st.just("delete"), st.integers(0, 5)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_policy, max_size=3), st.lists(_step, min_size=1, max_size=40))
def test_never_delivers_a_flow_the_engine_denied(policies: list[dict[str, Any]], steps: list[Any]) -> None:
    engine = PolicyEngine()
    for pod, labels in zip(PODS, LABELS, strict=True):
        engine.set_endpoint(Endpoint(pod.key, pod.key.split("/")[0], labels, list(pod.ips)))
    keys = []
    for i, p in enumerate(policies):
        pol = from_kubernetes(_k8s(i, p))
        keys.append(pol.key)
        engine.set_policy(pol)
    enf = PolicyEnforcer(engine)
    ends: list[Pod | str] = [*PODS, *EXT]
    opened: set[tuple[Any, ...]] = set()
    now = 0.0
    for n, step in enumerate(steps):
        now += 0.5
        if step[0] == "policy":
            pol = from_kubernetes(_k8s(100 + n, step[1]))
            keys.append(pol.key)
            engine.set_policy(pol)
            continue
        if step[0] == "delete":
            if keys:
                engine.delete_policy(keys[step[1] % len(keys)])
            continue
        _, si, di, kind, port, sport, reverse = step
        src, dst = ends[si], ends[di]
        if src is dst or (isinstance(src, str) and isinstance(dst, str)):
            continue
        sip = src.ips[0] if isinstance(src, Pod) else src
        dip = dst.ips[0] if isinstance(dst, Pod) else dst
        sp, dp = (port, sport) if reverse else (sport, port)
        if kind == "udp":
            pkt = P.udp(sip, dip, sp, dp, b"")
        else:
            pkt = seg(sip, dip, sp, dp, P.SYN if kind == "syn" else P.ACK)
        out: tuple[Any, ...] | None = pkt
        if isinstance(src, Pod):
            out = enf.hook(src, "egress", pkt, now)
        if out is not None and isinstance(dst, Pod):
            out = enf.hook(dst, "ingress", out, now)
        if out is None:
            continue
        key = (pkt[2], sip, sp, dip, dp)
        if key in opened or (pkt[2], dip, dp, sip, sp) in opened:
            continue
        # the first delivered packet of a flow: the engine must allow it now, and TCP needs a SYN
        verdict = engine.verdict(src.key if isinstance(src, Pod) else f"ip:{src}",
                                 dst.key if isinstance(dst, Pod) else f"ip:{dst}", pkt[2], dp)
        assert verdict.allowed, (pkt, verdict)
        assert pkt[2] != P.TCP or pkt[6][0] == P.SYN
        opened.add(key)

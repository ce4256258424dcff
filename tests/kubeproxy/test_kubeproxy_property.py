"""Property: whatever the Services, endpoints, policies and mode, the reply to a NATed flow comes
back un-NATed to exactly the address and port the client sent to, and the client's packets of
that flow keep going to the same endpoint."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubeproxy_helpers import NODE, NODE_IPS, endpoint_slice, ep, service

from agents.kubeproxy import Proxier
from agents.timers import Timers
from broker import packets as P

POD_IPS = ["10.244.0.2", "10.244.0.3", "10.244.1.2", "10.244.1.3", "10.244.2.2"]
CLIENTS = POD_IPS + ["172.16.0.50", "192.168.5.5", NODE_IPS[0]]
VIPS = ["10.96.0.10", "10.96.0.11", "10.96.0.12"]
CLIENT_PORTS = [1000, 1001, 40000]
TARGET_PORTS = [8080, 9090]

endpoint_st = st.builds(
    lambda ip, ready, term: ep(ip, node=NODE if ip.startswith("10.244.0.") else "node-b",
                               ready=ready, serving=True, terminating=term),
    st.sampled_from(POD_IPS), st.sampled_from([True, True, True, False]), st.sampled_from([False, False, True]))

service_st = st.fixed_dictionaries({
    "proto": st.sampled_from(["TCP", "UDP", "SCTP"]),
    "port": st.sampled_from([53, 80]),
    "target": st.sampled_from(TARGET_PORTS),
    "nodeport": st.none() | st.sampled_from([30080, 30081]),
    "etp": st.sampled_from(["Cluster", "Local"]),
    "itp": st.sampled_from(["Cluster", "Local"]),
    "affinity": st.booleans(),
    "endpoints": st.lists(endpoint_st, max_size=4) | st.lists(endpoint_st, min_size=1, max_size=4),
})

flow_st = st.tuples(st.sampled_from(CLIENTS), st.sampled_from(CLIENT_PORTS), st.integers(0, 20), st.booleans())


def first_packet(proto: int, src: str, sport: int, dst: str, dport: int) -> tuple:
    if proto == P.TCP:
        return P.tcp(src, dst, sport, dport, P.SYN, 1, 0, 65535)
    if proto == P.UDP:
        return P.udp(src, dst, sport, dport, b"q")
    return P.sctp(src, dst, sport, dport, P.SCTP_INIT, 0)


def answer(pkt: tuple) -> tuple:
    src, dst, sport, dport = pkt[P.DST], pkt[P.SRC], pkt[P.DPORT], pkt[P.SPORT]
    if pkt[P.PROTO] == P.TCP:
        return P.tcp(src, dst, sport, dport, P.SYN | P.ACK, 9, 2, 65535)
    if pkt[P.PROTO] == P.UDP:
        return P.udp(src, dst, sport, dport, b"a")
    return P.sctp(src, dst, sport, dport, P.SCTP_INIT_ACK, 1)


def build(kp: Proxier, services: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    frontends: list[tuple[str, int, int]] = []
    nodeports: set[tuple[int, str]] = set()
    for i, s in enumerate(services):
        name = f"svc{i}"
        port: dict[str, Any] = {"name": "p", "protocol": s["proto"], "port": s["port"], "targetPort": s["target"]}
        proto = {"TCP": P.TCP, "UDP": P.UDP, "SCTP": P.SCTP}[s["proto"]]
        svc_type = "ClusterIP"
        if s["nodeport"] is not None and (s["nodeport"], s["proto"]) not in nodeports:
            nodeports.add((s["nodeport"], s["proto"]))
            port["nodePort"] = s["nodeport"]
            svc_type = "NodePort"
            frontends += [(ip, s["nodeport"], proto) for ip in NODE_IPS]
        spec: dict[str, Any] = {"externalTrafficPolicy": s["etp"], "internalTrafficPolicy": s["itp"]}
        if s["affinity"]:
            spec["sessionAffinity"] = "ClientIP"
        kp.update_service(service(name, cluster_ip=VIPS[i], ports=[port], type=svc_type, **spec), 0.0, 0.0)
        kp.update_slice(endpoint_slice(name, s["endpoints"], ports=[("p", s["target"], s["proto"])]), 0.0, 0.0)
        frontends.append((VIPS[i], s["port"], proto))
    return frontends


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from([("iptables", "rr"), ("ipvs", "rr"), ("ipvs", "lc")]),
    services=st.lists(service_st, min_size=1, max_size=3),
    flows=st.lists(flow_st, min_size=5, max_size=40),
    order=st.randoms(use_true_random=False),
    seed=st.integers(0, 1000),
)
def test_replies_are_unnated_to_what_the_client_sent(
    mode: tuple[str, str], services: list[dict[str, Any]], flows: list[tuple[str, int, int, bool]],
    order: Any, seed: int,
) -> None:
    kp = Proxier(NODE, NODE_IPS, mode=mode[0], scheduler=mode[1], rng=seed, timers=Timers(1.0),
                 cluster_cidrs=["10.244.0.0/16"])
    frontends = build(kp, services)
    sent: list[tuple[tuple, tuple]] = []  # (what the client sent, what the endpoint received)
    for client, cport, which, local in flows:
        vip, vport, proto = frontends[which % len(frontends)]
        local = local and client in NODE_IPS  # only the node's own traffic takes OUTPUT
        pkt = first_packet(proto, client, cport, vip, vport)
        out = kp.output(pkt, 1.0) if local else kp.prerouting(pkt, 1.0)
        if out is None or out[P.PROTO] not in (P.TCP, P.UDP, P.SCTP):
            continue  # dropped or rejected: no flow
        out = kp.postrouting(out, 1.0)
        assert out is not None
        sent.append((pkt, out))
    order.shuffle(sent)
    for pkt, out in sent:
        reply = kp.prerouting(answer(out), 2.0)
        assert reply is not None
        reply = kp.postrouting(reply, 2.0)
        assert reply is not None
        assert (reply[P.SRC], reply[P.SPORT], reply[P.DST], reply[P.DPORT]) == \
            (pkt[P.DST], pkt[P.DPORT], pkt[P.SRC], pkt[P.SPORT])
    # The same client tuple still reaches the endpoint its flow was given.
    for pkt, out in sent:
        again = kp.prerouting(pkt, 3.0)
        assert again is not None and (again[P.DST], again[P.DPORT]) == (out[P.DST], out[P.DPORT])
        kp.postrouting(again, 3.0)

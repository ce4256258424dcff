"""API objects and packets for the kube-proxy tests: dicts shaped as the API server returns them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from agents.kubeproxy import Proxier
from agents.timers import Timers
from broker import packets as P

NODE = "node-a"
NODE_IPS = ("172.16.0.11", "172.16.1.11")  # two NICs: NodePorts answer on each
VIP = "10.96.0.15"
CLIENT = "10.244.0.7"      # a pod on this node
OUTSIDE = "172.16.0.50"    # a client VM on the node network

Packet = tuple[Any, ...]


def service(name: str = "web", *, ns: str = "default", cluster_ip: str | None = VIP,
            ports: Sequence[dict[str, Any]] | None = None, type: str = "ClusterIP",
            lb_ips: Iterable[str] = (), **spec: Any) -> dict[str, Any]:
    if ports is None:
        ports = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}]
    body: dict[str, Any] = {"type": type, "ports": [dict(p) for p in ports], **spec}
    if cluster_ip is not None:
        body["clusterIP"] = cluster_ip
        body["clusterIPs"] = [cluster_ip]
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": name, "namespace": ns}, "spec": body}
    lb = list(lb_ips)
    if lb:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb]}}
    return obj


def ep(ip: str, node: str = "node-b", ready: bool | None = True, serving: bool | None = None,
       terminating: bool | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    if ready is not None:
        cond["ready"] = ready
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    return {"addresses": [ip], "conditions": cond, "nodeName": node}


def endpoint_slice(svc: str = "web", endpoints: Sequence[dict[str, Any]] = (), *,
                   ports: Sequence[tuple[str, int, str]] = (("http", 8080, "TCP"),),
                   name: str | None = None, ns: str = "default", address_type: str = "IPv4") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name or f"{svc}-abc12", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": address_type,
        "endpoints": [dict(e) for e in endpoints],
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }


def proxier(mode: str = "iptables", scheduler: str = "rr", seed: int = 1, time_scale: float = 1.0,
            **kw: Any) -> Proxier:
    return Proxier(NODE, NODE_IPS, mode=mode, scheduler=scheduler, rng=seed, timers=Timers(time_scale), **kw)


def syn(src: str, sport: int, dst: str, dport: int) -> Packet:
    return P.tcp(src, dst, sport, dport, P.SYN, 1000, 0, 65535, mss=1460)


def synack(src: str, sport: int, dst: str, dport: int) -> Packet:
    return P.tcp(src, dst, sport, dport, P.SYN | P.ACK, 5000, 1001, 65535, mss=1460)


def ack(src: str, sport: int, dst: str, dport: int, flags: int = P.ACK, payload: bytes = b"") -> Packet:
    return P.tcp(src, dst, sport, dport, flags, 1001, 5001, 65535, payload)


def addrs(pkt: Packet | None) -> tuple[str, int, str, int]:
    assert pkt is not None, "packet dropped"
    return (pkt[P.SRC], pkt[P.SPORT], pkt[P.DST], pkt[P.DPORT])


def forward(kp: Proxier, pkt: Packet, now: float) -> Packet | None:
    """A forwarded packet through the node: PREROUTING then POSTROUTING."""
    out = kp.prerouting(pkt, now)
    if out is None or out[P.PROTO] in (P.ICMP, P.ICMPV6) and pkt[P.PROTO] not in (P.ICMP, P.ICMPV6):
        return out
    return kp.postrouting(out, now)


def local_out(kp: Proxier, pkt: Packet, now: float) -> Packet | None:
    """A locally generated packet: OUTPUT then POSTROUTING."""
    out = kp.output(pkt, now)
    if out is None:
        return out
    return kp.postrouting(out, now)


def reply_to(pkt: Packet | None, flags: int = P.SYN | P.ACK) -> Packet:
    """The endpoint's answer to a (translated) packet: swap the addresses."""
    assert pkt is not None, "packet dropped"
    if pkt[P.PROTO] == P.TCP:
        return P.tcp(pkt[P.DST], pkt[P.SRC], pkt[P.DPORT], pkt[P.SPORT], flags, 5000, 1001, 65535)
    if pkt[P.PROTO] == P.UDP:
        return P.udp(pkt[P.DST], pkt[P.SRC], pkt[P.DPORT], pkt[P.SPORT], b"pong")
    return P.sctp(pkt[P.DST], pkt[P.SRC], pkt[P.DPORT], pkt[P.SPORT], P.SCTP_INIT_ACK, 7)

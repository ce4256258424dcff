"""The node datapath's ``policy`` hook (sans-IO): Felix's per-workload chains plus conntrack.

Calico programs, per workload interface, a ``cali-tw-<iface>`` chain (to the workload: its
ingress policy) and a ``cali-fw-<iface>`` chain (from the workload: its egress policy), each
starting with conntrack matches: ``--ctstate RELATED,ESTABLISHED -j ACCEPT`` and
``--ctstate INVALID -j DROP``.  So:

* a packet of a tracked flow (either direction) passes on one dict lookup, without
  evaluating policy, and a policy change does not cut established flows;
* the first packet of a flow asks the engine (:meth:`PolicyEngine.decide` for the pod's side);
  allowed → the flow is tracked both ways, denied → dropped and counted (the client times out);
* only a packet that may open a connection opens one: a TCP SYN (without ACK), any UDP / SCTP
  packet, an ICMP / ICMPv6 echo request; a TCP segment or echo reply without an entry is
  INVALID and dropped; an ICMP error quoting a tracked flow is RELATED and passes, one quoting
  nothing tracked is dropped; ICMPv6 neighbour / router discovery and MLD always pass (as
  Felix's workload chains accept them); other ICMP types are evaluated per packet, untracked;
* traffic between a pod and its own node's addresses (``local_ips``) is always allowed
  (Kubernetes: "traffic to and from the node where a Pod is running is always allowed").

One table serves every pod of the node, so a flow between two local pods passes two hooks
(the client's egress, the server's ingress); the flow remembers which pod's side admitted it
(``egress_pod`` / ``ingress_pod``) and a hook still runs the other pod's policy on the first
packet.  States and timeouts are :mod:`agents.kubeproxy.conntrack`'s (the kernel's
``nf_conntrack`` tables and sysctl defaults; a table of timeouts may be passed in); a flow's
state advances once per packet (at the egress hook, or at the ingress hook when the sender is
not a local pod).  Nothing reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agents.kubeproxy.conntrack import INVALID, ORIGINAL, Conntrack, Flow
from agents.policy.engine import PolicyEngine
from broker import packets as P

__all__ = ["PolicyEnforcer", "PolicyFlow"]

INGRESS = "ingress"
EGRESS = "egress"

_ECHO_REQUEST = {P.ICMP: P.ICMP_ECHO_REQUEST, P.ICMPV6: P.ICMP6_ECHO_REQUEST}
_ECHO_REPLY = {P.ICMP: P.ICMP_ECHO_REPLY, P.ICMPV6: P.ICMP6_ECHO_REPLY}
_ICMP_ERRORS = {P.ICMP: frozenset((P.ICMP_DEST_UNREACH, 4, 5, P.ICMP_TIME_EXCEEDED, 12)),
                P.ICMPV6: frozenset((P.ICMP6_DEST_UNREACH, P.ICMP6_PACKET_TOO_BIG,
                                     P.ICMP6_TIME_EXCEEDED, 4))}
_TCP_OPEN_MASK = P.SYN | P.ACK | P.FIN | P.RST
_PORT_PROTOS = (P.TCP, P.UDP, P.SCTP)


class PolicyFlow(Flow):
    """A conntrack entry plus which pods' policy admitted it (None: not checked here)."""

    __slots__ = ("egress_pod", "ingress_pod")

    def __init__(self, orig: tuple[Any, ...], reply: tuple[Any, ...]) -> None:
        super().__init__(orig, reply)
        self.egress_pod: str | None = None
        self.ingress_pod: str | None = None


def _key(pkt: tuple[Any, ...]) -> tuple[Any, ...]:
    """The conntrack tuple of a packet: (proto, src, sport, dst, dport); for ICMP echo the
    identifier takes the request's source-port slot and the reply's destination-port slot."""
    proto = pkt[2]
    if proto == P.ICMP or proto == P.ICMPV6:
        typ = pkt[4]
        ident = pkt[6][0] if isinstance(pkt[6], tuple) else 0
        if typ == _ECHO_REQUEST[proto]:
            return (proto, pkt[0], ident, pkt[1], 0)
        if typ == _ECHO_REPLY[proto]:
            return (proto, pkt[0], 0, pkt[1], ident)
        return (proto, pkt[0], pkt[4], pkt[1], pkt[5])
    return (proto, pkt[0], pkt[4], pkt[1], pkt[5])


class PolicyEnforcer:
    """``NodeDatapath.policy``: ``hook(pod, direction, pkt, now) -> pkt | None``."""

    def __init__(self, engine: PolicyEngine, *, local_ips: Iterable[str] = (),
                 timeouts: Mapping[int, Mapping[str, float]] | None = None,
                 forwarded_snat: Callable[[tuple[Any, ...]], bool] | None = None) -> None:
        self.engine = engine
        self.local_ips = frozenset(local_ips)
        # A packet from a node address is the node's own (always allowed) unless the node
        # only SNATed a forwarded flow to its address (kube-proxy, externalTrafficPolicy:
        # Cluster): then the policy judges it by that address, the one the pod sees.
        self.forwarded_snat = forwarded_snat
        self.ct = Conntrack({k: v for k, v in (timeouts or {}).items() if k in _PORT_PROTOS})
        # ICMP echo: nf_conntrack_icmp_timeout / nf_conntrack_icmpv6_timeout (the kube-proxy
        # table applies a fixed 30 s to protocols it has no table for)
        for proto in (P.ICMP, P.ICMPV6):
            self.ct.timeouts[proto] = {"NONE": 30.0}
        self._table = self.ct.table
        self._local_pods: dict[str, str] = {}   # pod IP -> pod key (pods seen on this node)
        self.counters: dict[str, int] = dict.fromkeys(
            ("allowed", "denied", "invalid", "related", "node_local", "untracked"), 0)
        self.denied_by_endpoint: dict[str, int] = {}
        self.last_denied: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the hook

    def hook(self, pod: Any, direction: str, pkt: tuple[Any, ...], now: float) -> tuple[Any, ...] | None:
        proto = pkt[2]
        if proto == P.TCP or proto == P.UDP or proto == P.SCTP:
            key = (proto, pkt[0], pkt[4], pkt[1], pkt[5])
        else:
            key = _key(pkt)
        ent = self._table.get(key)
        if ent is not None:
            flow: PolicyFlow = ent[0]  # type: ignore[assignment]
            d = ent[1]
            if flow.expires >= now:
                egress = direction == EGRESS
                pkey = pod.key
                if (flow.egress_pod if egress == (d == ORIGINAL) else flow.ingress_pod) == pkey:
                    if egress or pkt[0] not in self._local_pods:
                        state = self.ct.update(flow, d, pkt, now)
                        if state == INVALID:
                            self.counters["invalid"] += 1
                            return None
                        if state == "REOPEN":
                            return self._new(pod, direction, pkt, key, now)
                    return pkt
                if d == ORIGINAL:
                    # tracked, but this pod's side has not checked it yet (two local pods)
                    return self._check_side(flow, pod, direction, pkt, now)
                self.counters["invalid"] += 1
                return None
            self.ct.remove(flow)
        return self._new(pod, direction, pkt, key, now)

    # ------------------------------------------------------------------ new packets

    def _new(self, pod: Any, direction: str, pkt: tuple[Any, ...], key: tuple[Any, ...],
             now: float) -> tuple[Any, ...] | None:
        proto = pkt[2]
        egress = direction == EGRESS
        self._register(pod)
        track = True
        if proto == P.TCP:
            if pkt[6][0] & _TCP_OPEN_MASK != P.SYN:
                self.counters["invalid"] += 1
                return None
        elif proto == P.ICMP or proto == P.ICMPV6:
            typ = pkt[4]
            if typ in _ICMP_ERRORS[proto]:
                return self._related(pod, pkt)
            if proto == P.ICMPV6 and 130 <= typ <= 137:
                return pkt  # MLD / router and neighbour discovery: Felix's workload chains accept them
            if typ == _ECHO_REPLY[proto]:
                self.counters["invalid"] += 1
                return None
            track = typ == _ECHO_REQUEST[proto]
        if not self._allowed(pod, direction, pkt):
            return None
        if not track:
            self.counters["untracked"] += 1
            return pkt
        reply = (key[0], key[3], key[4], key[1], key[2])
        if reply in self._table:  # a stale reply tuple (e.g. from a reopened flow): replace it
            self.ct.remove(self._table[reply][0])
        flow = PolicyFlow(key, reply)
        if egress:
            flow.egress_pod = pod.key
        else:
            flow.ingress_pod = pod.key
        self.ct.add(flow, now)
        self.ct.start(flow, pkt, now)
        self.counters["allowed"] += 1
        return pkt

    def _check_side(self, flow: PolicyFlow, pod: Any, direction: str, pkt: tuple[Any, ...],
                    now: float) -> tuple[Any, ...] | None:
        self._register(pod)
        if not self._allowed(pod, direction, pkt):
            return None
        if direction == EGRESS:
            flow.egress_pod = pod.key
        else:
            flow.ingress_pod = pod.key
        return pkt

    def _allowed(self, pod: Any, direction: str, pkt: tuple[Any, ...]) -> bool:
        src, dst, proto = pkt[0], pkt[1], pkt[2]
        peer_ip = dst if direction == EGRESS else src
        if peer_ip in self.local_ips and (self.forwarded_snat is None or not self.forwarded_snat(pkt)):
            self.counters["node_local"] += 1
            return True
        if proto == P.ICMP or proto == P.ICMPV6:
            d = self.engine.decide(pod.key, direction, peer_ip, proto, 0, (pkt[4], pkt[5]))
        else:
            d = self.engine.decide(pod.key, direction, peer_ip, proto, pkt[5], sport=pkt[4])
        if d.allowed:
            return True
        self._deny(pod.key)
        self.last_denied = {"pod": pod.key, "direction": direction, "src": src, "dst": dst,
                            "proto": proto, "policy": d.policy, "rule": d.rule}
        return False

    def _related(self, pod: Any, pkt: tuple[Any, ...]) -> tuple[Any, ...] | None:
        info = pkt[6]
        quoted = info[1] if isinstance(info, tuple) and len(info) > 1 else None
        if isinstance(quoted, tuple) and len(quoted) >= 6:
            ent = self._table.get(_key(quoted))
            if ent is not None and not ent[0].dead:
                self.counters["related"] += 1
                return pkt
        self.counters["invalid"] += 1
        return None

    def _register(self, pod: Any) -> None:
        local = self._local_pods
        for ip in pod.ips:
            if local.get(ip) != pod.key:
                local[ip] = pod.key

    def forget_pod(self, key: str) -> None:
        """A pod left this node: its addresses are no longer local senders."""
        for ip in [ip for ip, k in self._local_pods.items() if k == key]:
            del self._local_pods[ip]

    def _deny(self, key: str) -> None:
        self.counters["denied"] += 1
        self.denied_by_endpoint[key] = self.denied_by_endpoint.get(key, 0) + 1

    # ------------------------------------------------------------------ timers and stats

    def expire(self, now: float) -> None:
        self.ct.expire(now)

    def next_deadline(self) -> float | None:
        return self.ct.next_deadline()

    def flows(self) -> list[dict[str, Any]]:
        out = []
        for flow in self.ct.flows():
            desc = flow.describe()
            if isinstance(flow, PolicyFlow):
                desc["egress_pod"] = flow.egress_pod
                desc["ingress_pod"] = flow.ingress_pod
            out.append(desc)
        return out

    def stats(self) -> dict[str, Any]:
        return {"flows": len(self.ct), **self.counters,
                "denied_by_endpoint": dict(self.denied_by_endpoint),
                "generation": self.engine.generation,
                "log_hits": {f"{p}/{r}": n for (p, r), n in self.engine.log_hits.items()}}

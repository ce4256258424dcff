"""kube-proxy, sans-IO: Services and EndpointSlices in, NAT decisions on packets out.

:class:`Proxier` is one node's kube-proxy.  It is fed the API objects from watches
(:meth:`Proxier.update_service`, :meth:`~Proxier.delete_service`, :meth:`~Proxier.update_slice`,
:meth:`~Proxier.delete_slice`, each with the change's ``committed_at`` and ``now``: the rules
are in force when the call returns, which is recorded as network programming latency) and
its four hooks are installed in the node's root NetStack (:meth:`Proxier.install`):

=============  ====================================================================
PREROUTING     DNAT of a new flow to a Service frontend (ClusterIP:port, a node IP's
               NodePort, a LoadBalancer ingress IP or externalIP) to a chosen endpoint;
               un-SNAT of replies; REJECT / DROP when there is no endpoint to use
OUTPUT         the same for locally generated packets
POSTROUTING    SNAT (masquerade) of flows that need it; un-DNAT of replies
INPUT          the same as POSTROUTING for packets delivered to the node itself
=============  ====================================================================

That is where Linux applies them (destination NAT in PREROUTING / OUTPUT, source NAT in
POSTROUTING / INPUT), so a FORWARD hook in between (Calico policy) sees the endpoint's
address as netfilter's filter table does.  The packet's conntrack entry is handed from the
first hook to the second in ``_cur_flow`` (the stack runs one packet through its hooks at a
time, as the kernel does with ``skb->_nfct``), checked against the packet's addresses.

Decisions, as kube-proxy makes them (pkg/proxy/iptables/proxier.go, pkg/proxy/topology.go):

* Endpoints come from EndpointSlices labelled ``kubernetes.io/service-name``; the port of a
  Service port is the slice port with the same name and protocol, so named ``targetPort``\\ s
  resolve per endpoint (the EndpointSlice controller puts endpoints whose names resolve
  differently into different slices).  The first address of an endpoint is used; ``ready``
  and ``serving`` missing mean true, ``terminating`` missing means false; an endpoint is
  local when its ``nodeName`` is this node.
* ``CategorizeEndpoints``: cluster endpoints are the ready ones; when none is ready, the
  serving-and-terminating ones (``ProxyTerminatingEndpoints``, GA in 1.28).  Local endpoints:
  the local ready ones, else the local serving-terminating ones.
* ClusterIP traffic uses the local endpoints with ``internalTrafficPolicy: Local`` and the
  cluster endpoints otherwise.  External traffic (NodePort, LoadBalancer ingress IP,
  externalIPs) uses the cluster endpoints with SNAT to the node for
  ``externalTrafficPolicy: Cluster``; with ``Local`` it uses the local endpoints and keeps the
  client's address, except traffic from the node itself (masqueraded, cluster endpoints) and,
  when ``cluster_cidrs`` is given, from pods (cluster endpoints: kube-proxy's short-circuit).
* No endpoint to use: REJECT (ICMP port unreachable, the client sees ECONNREFUSED at once)
  when the Service has no usable endpoint anywhere, DROP (the client times out) when it has
  some but the Local policy finds none on this node.
* Masquerade also for hairpin (the chosen endpoint is the client itself:
  ``-A KUBE-SEP-... -s <ep> -j KUBE-MARK-MASQ``) and, when ``cluster_cidrs`` is given, for
  ClusterIP traffic from outside the pod network (``! -s <clusterCIDR> -j KUBE-MARK-MASQ``).
  MASQUERADE uses ``--random-fully``: the source port is random in 1024..65535.  When a new
  flow's reply tuple is taken by another flow the source port is remapped even without
  masquerade (the kernel's NAT null binding).
* ``iptables`` mode picks an endpoint as the ``statistic --mode random --probability
  1/(n-i)`` chain does (uniform, no retry).  ``ipvs`` mode runs one virtual server per
  frontend with the ``rr`` (cycles in order) or ``lc`` (least ``active*256 + inactive``
  connections, ``ip_vs_dest_conn_overhead``, first on ties) scheduler.
* ``sessionAffinity: ClientIP``: a client IP is sent to the endpoint it last used while that
  endpoint is still usable and its last new flow was less than the (scaled) timeout ago
  (iptables ``-m recent --rcheck --seconds T --reap`` / ``--set``; per Service port in
  iptables mode, per virtual server in ipvs mode).
* When a UDP endpoint stops being usable its conntrack entries are deleted (kube-proxy's
  ``conntrack -D`` of stale UDP flows), so the next datagram picks a live endpoint.

REJECT is *inline*: the PREROUTING/OUTPUT hook returns the ICMP port-unreachable packet in
place of the rejected one (from the address the client dialled, to the client), and the
stack forwards or loops it back like any packet, so nothing else has to move it.  With
``reject="outbox"`` the hook returns None instead and appends the ICMP to :attr:`rejects` for
the datapath to send.  Both are counted (``counters["rejected"]``).

Not modelled: ``loadBalancerSourceRanges``, topology-aware hints, NodePorts on 127.0.0.1
and on addresses other than ``node_ips``, IPVS weights / graceful termination, ClusterIPs
bound to ``kube-ipvs0`` (ping to a ClusterIP), ICMP echo to Services.
"""

from __future__ import annotations

import ipaddress
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from agents.timers import Timers
from broker import packets as P

from .conntrack import INVALID, IPVS_TIMEOUTS, ORIGINAL, Conntrack, Flow
from .latency import ProgrammingLatency

__all__ = [
    "MODES", "PROTOCOLS", "SCHEDULERS", "SERVICE_NAME_LABEL", "Frontend", "Proxier", "Scheduler",
    "ServicePort", "register_scheduler",
]

Packet = tuple[Any, ...]
Endpoint = tuple[str, int]  # (ip, port)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PROTOCOLS: dict[str, int] = {"TCP": P.TCP, "UDP": P.UDP, "SCTP": P.SCTP}
MODES = ("iptables", "ipvs")
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds (core/v1 DefaultClientIPServiceAffinitySeconds)
MASQ_PORTS = (1024, 65535)

_NAT_PROTOS = frozenset((P.TCP, P.UDP, P.SCTP))
_TCP_SFR = P.SYN | P.FIN | P.RST


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


# --- schedulers --------------------------------------------------------------------------


class Scheduler(ABC):
    """Picks an endpoint for a new flow at one frontend.  ``eps`` is never empty."""

    name: ClassVar[str]
    counts: ClassVar[bool] = False  # needs per-endpoint connection counters

    @abstractmethod
    def pick(self, fe: Frontend, eps: Sequence[Endpoint], rng: random.Random) -> Endpoint: ...


SCHEDULERS: dict[str, type[Scheduler]] = {}


def register_scheduler(cls: type[Scheduler]) -> type[Scheduler]:
    SCHEDULERS[cls.name] = cls
    return cls


@register_scheduler
class RandomChain(Scheduler):
    """iptables mode: rule i of n matches with probability 1/(n-i), the last always."""

    name = "random"

    def pick(self, fe: Frontend, eps: Sequence[Endpoint], rng: random.Random) -> Endpoint:
        n = len(eps)
        rand = rng.random
        for i in range(n - 1):
            if rand() < 1.0 / (n - i):
                return eps[i]
        return eps[n - 1]


@register_scheduler
class RoundRobin(Scheduler):
    """IPVS ``rr``: the next real server after the last one chosen, in order."""

    name = "rr"

    def pick(self, fe: Frontend, eps: Sequence[Endpoint], rng: random.Random) -> Endpoint:
        fe.rr = (fe.rr + 1) % len(eps)
        return eps[fe.rr]


@register_scheduler
class LeastConnection(Scheduler):
    """IPVS ``lc``: the least ``activeconns * 256 + inactconns``; the first one on ties."""

    name = "lc"
    counts = True

    def pick(self, fe: Frontend, eps: Sequence[Endpoint], rng: random.Random) -> Endpoint:
        counters = fe.counters
        best = eps[0]
        best_load = -1
        for ep in eps:
            c = counters.get(ep)
            load = 0 if c is None else (c[0] << 8) + c[1]
            if best_load < 0 or load < best_load:
                best, best_load = ep, load
        return best


# --- the service table -------------------------------------------------------------------


class ServicePort:
    """One ``ns/name:port`` of a Service with its endpoints, per address family."""

    __slots__ = ("key", "svc", "proto", "itp_local", "etp_local", "affinity", "health_port",
                 "cluster", "local", "has_any", "usable")

    def __init__(self, key: tuple[str, str, str, int]) -> None:
        self.key = key
        self.svc = (key[0], key[1])
        self.proto = key[3]
        self.itp_local = False
        self.etp_local = False
        self.affinity: float | None = None  # scaled timeout, or None without affinity
        self.health_port = 0
        self.cluster: dict[int, tuple[Endpoint, ...]] = {4: (), 6: ()}
        self.local: dict[int, tuple[Endpoint, ...]] = {4: (), 6: ()}
        self.has_any: dict[int, bool] = {4: False, 6: False}
        self.usable: frozenset[Endpoint] = frozenset()

    def name(self) -> str:
        ns, svc, port, _ = self.key
        return f"{ns}/{svc}" + (f":{port}" if port else "")


class Frontend:
    """One address a Service answers on: ``(ip, port, proto)``.  In ipvs mode, a virtual server
    with its own scheduler state (rr position, per-endpoint connection counters)."""

    __slots__ = ("key", "sp", "external", "family", "rr", "counters", "affinity_key")

    def __init__(self, key: tuple[str, int, int], sp: ServicePort, external: bool, per_frontend: bool) -> None:
        self.key = key
        self.sp = sp
        self.external = external
        self.family = _family(key[0])
        self.rr = -1
        self.counters: dict[Endpoint, list[int]] = {}
        self.affinity_key: Any = key if per_frontend else sp.key

    def __repr__(self) -> str:
        kind = "external" if self.external else "cluster"
        return f"<Frontend {self.key[0]}:{self.key[1]}/{P.PROTO_NAMES[self.key[2]]} {kind} {self.sp.name()}>"


class _Slice:
    __slots__ = ("svc", "ports", "endpoints")

    def __init__(self, svc: tuple[str, str], ports: dict[tuple[str, int], int],
                 endpoints: list[tuple[str, bool, bool, bool, bool]]) -> None:
        self.svc = svc
        self.ports = ports          # (name, proto) -> port
        self.endpoints = endpoints  # (ip, ready, serving, terminating, local)


class _Service:
    __slots__ = ("key", "ports", "frontends")

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.ports: dict[tuple[str, str, str, int], ServicePort] = {}
        self.frontends: dict[tuple[str, int, int], Frontend] = {}


def _meta_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "default", meta.get("name") or "")


# --- the proxier -------------------------------------------------------------------------


class Proxier:
    """One node's kube-proxy.  See the module docstring."""

    def __init__(
        self,
        node_name: str,
        node_ips: Iterable[str],
        mode: str = "iptables",
        scheduler: str = "rr",
        rng: random.Random | int | None = None,
        timers: Timers | None = None,
        *,
        cluster_cidrs: Iterable[str] = (),
        masquerade_source: Callable[[str], str | None] | None = None,
        conntrack_timeouts: Mapping[int, Mapping[str, float]] | None = None,
        reject: str = "inline",
        latency_window: int = 10_000,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if mode == "ipvs" and scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: expected one of {', '.join(sorted(SCHEDULERS))}, got {scheduler!r}")
        if reject not in ("inline", "outbox"):
            raise ValueError(f"reject: expected 'inline' or 'outbox', got {reject!r}")
        self.node_name = node_name
        self.mode = mode
        self.scheduler: Scheduler = SCHEDULERS["random" if mode == "iptables" else scheduler]()
        self.rng = rng if isinstance(rng, random.Random) else random.Random(node_name if rng is None else rng)
        self.timers = timers or Timers()
        self.cluster_cidrs = tuple(ipaddress.ip_network(c) for c in cluster_cidrs)
        self._masq_source = masquerade_source
        base = IPVS_TIMEOUTS if mode == "ipvs" else None
        merged: dict[int, dict[str, float]] = {p: dict(t) for p, t in (base or {}).items()}
        for proto, table in (conntrack_timeouts or {}).items():
            merged.setdefault(proto, {}).update(table)
        self.conntrack = Conntrack(merged)
        self._table = self.conntrack.table
        self._t_est = self.conntrack.timeouts[P.TCP]["ESTABLISHED"]
        self.reject_inline = reject == "inline"
        self.rejects: list[Packet] = []
        self.latency = ProgrammingLatency(latency_window)
        self.counters: dict[str, int] = dict.fromkeys(
            ("new_flows", "rejected", "dropped_no_local_endpoints", "invalid", "masqueraded",
             "port_remaps", "affinity_hits", "stale_udp_flows_cleared", "changes"), 0)
        self._services: dict[tuple[str, str], _Service] = {}
        self._service_objs: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._slices: dict[tuple[str, str], _Slice] = {}            # (ns, slice name) -> slice
        self._slices_by_svc: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._vips: dict[tuple[str, int, int], Frontend] = {}
        self._affinity: dict[tuple[Any, str], list[Any]] = {}  # (key, client) -> [ep, last, timeout]
        self._health: dict[int, ServicePort] = {}
        self.node_ips: tuple[str, ...] = ()
        self._node_ip_set: frozenset[str] = frozenset()
        self._node_ip_by_family: dict[int, str] = {}
        self._cur_flow: Flow | None = None
        self._cur_dir = ORIGINAL
        self.set_node_ips(node_ips)

    # --- hooks -----------------------------------------------------------------------------

    def install(self, stack: Any) -> None:
        """Put the hooks first in the node's root NetStack (kube-proxy inserts its jumps at the
        top of the nat chains)."""
        from agents.netstack import INPUT, OUTPUT, POSTROUTING, PREROUTING

        for point, fn in ((PREROUTING, self.prerouting), (OUTPUT, self.output),
                          (POSTROUTING, self.postrouting), (INPUT, self.input)):
            stack.hooks[point].insert(0, fn)

    def output(self, pkt: Packet, now: float) -> Packet | None:
        """OUTPUT: :meth:`prerouting` for a packet the node itself sends."""
        return self.prerouting(pkt, now, True)

    def prerouting(self, pkt: Packet, now: float, local: bool = False) -> Packet | None:
        """Destination NAT: a tracked flow's packet is translated (a reply's destination
        un-SNATed), a new flow to a frontend gets an endpoint, or is rejected / dropped."""
        proto = pkt[2]
        if proto not in _NAT_PROTOS:
            pending = self._cur_flow if self._cur_dir == ORIGINAL else None
            self._cur_flow = None
            if proto == P.ICMP or proto == P.ICMPV6:
                return self._icmp_related(pkt, pending)
            return pkt
        self._cur_flow = None
        hit = self._table.get((proto, pkt[0], pkt[4], pkt[1], pkt[5]))
        if hit is not None:
            flow, d = hit
            if flow.expires > now:
                if proto == P.TCP and flow.state == "ESTABLISHED" and not pkt[6][0] & _TCP_SFR:
                    flow.expires = now + self._t_est
                    state = "ESTABLISHED"
                else:
                    state = self.conntrack.update(flow, d, pkt, now)
                if state == INVALID:
                    self.counters["invalid"] += 1
                    return None
                if state != "REOPEN":
                    if d == ORIGINAL:
                        if flow.snat:
                            self._cur_flow = flow
                            self._cur_dir = ORIGINAL
                        ep = flow.ep
                        return (pkt[0], ep[0], proto, pkt[3], pkt[4], ep[1], pkt[6], pkt[7], pkt[8])
                    self._cur_flow = flow
                    self._cur_dir = 1
                    if flow.snat:
                        o = flow.orig
                        return (pkt[0], o[1], proto, pkt[3], pkt[4], o[2], pkt[6], pkt[7], pkt[8])
                    return pkt
            else:
                self.conntrack.remove(flow)
                self.conntrack.stats["expired"] += 1
        fe = self._vips.get((pkt[1], pkt[5], proto))
        if fe is None:
            return pkt
        return self._new_flow(fe, pkt, now, local)

    def postrouting(self, pkt: Packet, now: float) -> Packet | None:
        """Source NAT: masquerade an original-direction packet, un-DNAT a reply."""
        flow = self._cur_flow
        if flow is None:
            return pkt
        self._cur_flow = None
        o = flow.orig
        r = flow.reply
        if self._cur_dir == ORIGINAL:
            if pkt[1] == r[1] and pkt[5] == r[2] and pkt[0] == o[1] and pkt[4] == o[2]:
                return (r[3], pkt[1], pkt[2], pkt[3], r[4], pkt[5], pkt[6], pkt[7], pkt[8])
        elif pkt[0] == r[1] and pkt[4] == r[2] and pkt[1] == o[1] and pkt[5] == o[2]:
            return (o[3], pkt[1], pkt[2], pkt[3], o[4], pkt[5], pkt[6], pkt[7], pkt[8])
        return pkt

    input = postrouting  # nat INPUT: the source NAT of packets delivered to the node itself

    def _icmp_related(self, pkt: Packet, pending: Flow | None = None) -> Packet:
        """An ICMP error about a tracked flow (RELATED): translate the outer addresses and the
        quoted packet as ``nf_nat_icmp_reply_translation`` does, so the client's socket sees
        the error for the connection it made (to the Service address).

        ``pending`` is the flow whose packet is between this node's DNAT and SNAT: an error
        this node raises while forwarding it (no route, TTL, MTU) quotes it half-translated."""
        kind = pkt[4]
        if pkt[2] == P.ICMP:
            if kind != P.ICMP_DEST_UNREACH and kind != P.ICMP_TIME_EXCEEDED:
                return pkt
        elif kind >= 128:
            return pkt
        info = pkt[6]
        q = info[1]
        qproto = q[2]
        if qproto not in _NAT_PROTOS:
            return pkt
        hit = self._table.get((qproto, q[1], q[5], q[0], q[4]))
        if hit is None:
            if pending is None or not (q[0] == pending.orig[1] and q[4] == pending.orig[2]
                                       and (q[1], q[5]) == pending.ep and qproto == pending.proto):
                return pkt
            hit = (pending, 1)
        flow, d = hit
        o, r = flow.orig, flow.reply
        if d == ORIGINAL:  # quoting a reply (vip -> client) the client refused: to the endpoint
            nq = (r[1], r[3], qproto, q[3], r[2], r[4], q[6], q[7], q[8])
            src = r[3] if pkt[0] == o[1] else pkt[0]
            dst = r[1]
        else:              # quoting the client's packet after NAT: back to the client
            nq = (o[1], o[3], qproto, q[3], o[2], o[4], q[6], q[7], q[8])
            src = o[3] if pkt[0] == r[1] else pkt[0]
            dst = o[1]
        return (src, dst, pkt[2], pkt[3], pkt[4], pkt[5], (info[0], nq), pkt[7], pkt[8])

    # --- new flows -------------------------------------------------------------------------

    def _new_flow(self, fe: Frontend, pkt: Packet, now: float, local: bool) -> Packet | None:
        if not Conntrack.can_open(pkt):
            self.counters["invalid"] += 1
            return None
        sp = fe.sp
        fam = fe.family
        src = pkt[0]
        masq = False
        if fe.external:
            if not sp.etp_local or local or src in self._node_ip_set:
                eps = sp.cluster[fam]
                masq = True
            elif self._in_cluster(src):
                eps = sp.cluster[fam]
            else:
                eps = sp.local[fam]
        else:
            eps = sp.local[fam] if sp.itp_local else sp.cluster[fam]
            if self.cluster_cidrs and not self._in_cluster(src):
                masq = True
        if not eps:
            return self._no_endpoints(sp, fam, pkt)
        ep = self._choose(fe, eps, src, now)
        if ep[0] == src:
            masq = True  # hairpin
        elif not local and ep[0] in self._node_ip_set:
            masq = False  # delivered to the node itself: POSTROUTING never sees it
        return self._open(fe, ep, pkt, now, masq)

    def _no_endpoints(self, sp: ServicePort, fam: int, pkt: Packet) -> Packet | None:
        if sp.has_any[fam]:
            self.counters["dropped_no_local_endpoints"] += 1
            return None
        self.counters["rejected"] += 1
        icmp = P.port_unreachable(pkt[1], pkt)
        if self.reject_inline:
            return icmp
        self.rejects.append(icmp)
        return None

    def _choose(self, fe: Frontend, eps: Sequence[Endpoint], client: str, now: float) -> Endpoint:
        timeout = fe.sp.affinity
        if timeout is None:
            return self.scheduler.pick(fe, eps, self.rng)
        akey = (fe.affinity_key, client)
        rec = self._affinity.get(akey)
        if rec is not None and now - rec[1] < timeout and rec[0] in eps:
            rec[1] = now
            self.counters["affinity_hits"] += 1
            return rec[0]
        ep = self.scheduler.pick(fe, eps, self.rng)
        self._affinity[akey] = [ep, now, timeout]
        return ep

    def _open(self, fe: Frontend, ep: Endpoint, pkt: Packet, now: float, masq: bool) -> Packet:
        proto = pkt[2]
        client, cport = pkt[0], pkt[4]
        free = self.conntrack.free
        sip, sport = client, cport
        if masq:
            masq_ip = self._masquerade_ip(ep[0], fe.family)
            if masq_ip is not None:  # --random-fully: a random port even if the address stays
                sip = masq_ip
                sport = self._random_port(proto, ep, sip)
                self.counters["masqueraded"] += 1
        reply = (proto, ep[0], ep[1], sip, sport)
        if not free(reply):
            self.counters["port_remaps"] += 1
            self.conntrack.stats["clashes"] += 1
            sport = self._random_port(proto, ep, sip)
            reply = (proto, ep[0], ep[1], sip, sport)
        counter = None
        if self.scheduler.counts:
            counter = fe.counters.get(ep)
            if counter is None:
                counter = fe.counters[ep] = [0, 0]
        flow = Flow((proto, client, cport, pkt[1], pkt[5]), reply, fe, ep, counter)
        self.conntrack.add(flow, now)
        self.conntrack.start(flow, pkt, now)
        self.counters["new_flows"] += 1
        if flow.snat:
            self._cur_flow = flow
            self._cur_dir = ORIGINAL
        return (client, ep[0], proto, pkt[3], cport, ep[1], pkt[6], pkt[7], pkt[8])

    def _random_port(self, proto: int, ep: Endpoint, sip: str) -> int:
        free = self.conntrack.free
        lo, hi = MASQ_PORTS
        randint = self.rng.randint
        for _ in range(64):
            port = randint(lo, hi)
            if free((proto, ep[0], ep[1], sip, port)):
                return port
        for port in range(lo, hi + 1):
            if free((proto, ep[0], ep[1], sip, port)):
                return port
        raise RuntimeError(f"no free source port toward {ep[0]}:{ep[1]} from {sip}")

    def _masquerade_ip(self, dst: str, fam: int) -> str | None:
        if self._masq_source is not None:
            ip = self._masq_source(dst)
            if ip:
                return ip
        return self._node_ip_by_family.get(fam)

    def _in_cluster(self, ip: str) -> bool:
        if not self.cluster_cidrs:
            return False
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.cluster_cidrs)

    # --- watches ---------------------------------------------------------------------------

    def update_service(self, obj: Mapping[str, Any], committed_at: float | None, now: float) -> None:
        """ADDED / MODIFIED Service: its frontends and ports are in force on return."""
        key = _meta_key(obj)
        self._service_objs[key] = obj
        self._apply_service(key, obj, now)
        self._changed(committed_at, now)

    def delete_service(self, obj: Mapping[str, Any], committed_at: float | None, now: float) -> None:
        key = _meta_key(obj)
        self._service_objs.pop(key, None)
        svc = self._services.pop(key, None)
        if svc is not None:
            for fkey, fe in svc.frontends.items():
                if self._vips.get(fkey) is fe:
                    del self._vips[fkey]
            for sp in svc.ports.values():
                if self._health.get(sp.health_port) is sp:
                    del self._health[sp.health_port]
        self._changed(committed_at, now)

    def update_slice(self, obj: Mapping[str, Any], committed_at: float | None, now: float) -> None:
        """ADDED / MODIFIED EndpointSlice: the Service's endpoints are in force on return."""
        skey = _meta_key(obj)
        old = self._slices.get(skey)
        new = self._parse_slice(skey[0], obj)
        if old is not None and old.svc != (new.svc if new else None):
            self._slices_by_svc.get(old.svc, set()).discard(skey)
            self._slices.pop(skey, None)
            self._recompute(old.svc, now)
        if new is not None:
            self._slices[skey] = new
            self._slices_by_svc.setdefault(new.svc, set()).add(skey)
            self._recompute(new.svc, now)
        self._changed(committed_at, now)

    def delete_slice(self, obj: Mapping[str, Any], committed_at: float | None, now: float) -> None:
        skey = _meta_key(obj)
        old = self._slices.pop(skey, None)
        if old is not None:
            self._slices_by_svc.get(old.svc, set()).discard(skey)
            self._recompute(old.svc, now)
        self._changed(committed_at, now)

    def sync(self, services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]],
             now: float) -> None:
        """A full relist (after a watch broke): replace every Service and slice."""
        services, slices = list(services), list(slices)
        keep_svc = {_meta_key(o) for o in services}
        keep_sl = {_meta_key(o) for o in slices}
        for skey in [k for k in self._slices if k not in keep_sl]:
            self.delete_slice({"metadata": {"namespace": skey[0], "name": skey[1]}}, None, now)
        for key in [k for k in self._service_objs if k not in keep_svc]:
            self.delete_service({"metadata": {"namespace": key[0], "name": key[1]}}, None, now)
        for obj in services:
            self.update_service(obj, None, now)
        for obj in slices:
            self.update_slice(obj, None, now)

    def set_node_ips(self, node_ips: Iterable[str], now: float = 0.0) -> None:
        """This node's addresses (NodePorts answer on each)."""
        self.node_ips = tuple(P.canonical_ip(ip, "node_ips") for ip in node_ips)
        self._node_ip_set = frozenset(self.node_ips)
        self._node_ip_by_family = {}
        for ip in self.node_ips:
            self._node_ip_by_family.setdefault(_family(ip), ip)
        for key, obj in list(self._service_objs.items()):
            self._apply_service(key, obj, now)

    def _changed(self, committed_at: float | None, now: float) -> None:
        self.counters["changes"] += 1
        if committed_at is not None:
            self.latency.record(committed_at, now)

    # --- building the table ----------------------------------------------------------------

    def _apply_service(self, key: tuple[str, str], obj: Mapping[str, Any], now: float) -> None:
        spec = obj.get("spec") or {}
        svc_type = spec.get("type") or "ClusterIP"
        old = self._services.get(key)
        if old is not None:
            # Before the build: it reuses the ServicePorts and overwrites their health_port
            # (externalTrafficPolicy Local -> Cluster, or a new healthCheckNodePort).
            for sp in old.ports.values():
                if self._health.get(sp.health_port) is sp:
                    del self._health[sp.health_port]
        svc = _Service(key)
        if svc_type != "ExternalName":
            self._build_service(svc, obj, spec, svc_type, old)
        if old is not None:
            for fkey, fe in old.frontends.items():
                if fkey not in svc.frontends and self._vips.get(fkey) is fe:
                    del self._vips[fkey]
        self._services[key] = svc
        self._vips.update(svc.frontends)
        for sp in svc.ports.values():
            if sp.health_port:
                self._health[sp.health_port] = sp
        self._recompute(key, now)

    def _build_service(self, svc: _Service, obj: Mapping[str, Any], spec: Mapping[str, Any],
                       svc_type: str, old: _Service | None) -> None:
        cluster_ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"]
        external_ips = list(spec.get("externalIPs") or [])
        if svc_type == "LoadBalancer":
            ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            external_ips += [i["ip"] for i in ingress if i.get("ip") and i.get("ipMode", "VIP") == "VIP"]
        node_ports = svc_type in ("NodePort", "LoadBalancer")
        etp_local = spec.get("externalTrafficPolicy") == "Local"
        itp_local = spec.get("internalTrafficPolicy") == "Local"
        affinity: float | None = None
        if spec.get("sessionAffinity") == "ClientIP":
            cfg = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
            affinity = self.timers.scaled(float(cfg.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT))
        health = int(spec.get("healthCheckNodePort") or 0) if etp_local else 0
        per_frontend = self.mode == "ipvs"
        for port in spec.get("ports") or []:
            proto = PROTOCOLS.get(port.get("protocol") or "TCP")
            if proto is None or not port.get("port"):
                continue
            pkey = (svc.key[0], svc.key[1], port.get("name") or "", proto)
            sp = (old.ports.get(pkey) if old is not None else None) or ServicePort(pkey)
            sp.itp_local, sp.etp_local, sp.affinity = itp_local, etp_local, affinity
            sp.health_port = health
            svc.ports[pkey] = sp
            addrs = [(ip, int(port["port"]), False) for ip in cluster_ips]
            addrs += [(ip, int(port["port"]), True) for ip in external_ips]
            if node_ports and port.get("nodePort"):
                addrs += [(ip, int(port["nodePort"]), True) for ip in self.node_ips]
            for ip, number, external in addrs:
                fkey = (ip, number, proto)
                fe = old.frontends.get(fkey) if old is not None else None
                if fe is None or fe.sp is not sp or fe.external != external:
                    fe = Frontend(fkey, sp, external, per_frontend)
                svc.frontends[fkey] = fe

    def _parse_slice(self, ns: str, obj: Mapping[str, Any]) -> _Slice | None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        svc_name = labels.get(SERVICE_NAME_LABEL)
        if not svc_name or obj.get("addressType") == "FQDN":
            return None
        ports: dict[tuple[str, int], int] = {}
        for port in obj.get("ports") or []:
            proto = PROTOCOLS.get(port.get("protocol") or "TCP")
            if proto is not None and port.get("port"):
                ports[(port.get("name") or "", proto)] = int(port["port"])
        endpoints: list[tuple[str, bool, bool, bool, bool]] = []
        for ep in obj.get("endpoints") or []:
            addrs = ep.get("addresses") or []
            if not addrs:
                continue
            cond = ep.get("conditions") or {}
            ready = cond.get("ready") is not False          # nil means ready
            serving = cond.get("serving") is not False      # nil means serving
            terminating = cond.get("terminating") is True   # nil means not terminating
            local = ep.get("nodeName") == self.node_name
            endpoints.append((P.canonical_ip(addrs[0], "endpoints[].addresses"), ready, serving,
                              terminating, local))
        return _Slice((ns, svc_name), ports, endpoints)

    def _recompute(self, svc_key: tuple[str, str], now: float) -> None:
        svc = self._services.get(svc_key)
        if svc is None:
            return
        slices = [self._slices[k] for k in self._slices_by_svc.get(svc_key, ()) if k in self._slices]
        for sp in svc.ports.values():
            old_usable = sp.usable
            self._categorize(sp, slices)
            if sp.proto == P.UDP and old_usable - sp.usable:
                self._clear_stale_udp(sp, old_usable - sp.usable)

    @staticmethod
    def _categorize(sp: ServicePort, slices: Sequence[_Slice]) -> None:
        """pkg/proxy/topology.go ``CategorizeEndpoints``, per address family."""
        merged: dict[Endpoint, tuple[bool, bool, bool, bool]] = {}
        pname, proto = sp.key[2], sp.proto
        for sl in slices:
            port = sl.ports.get((pname, proto))
            if port is None:
                continue
            for ip, ready, serving, terminating, local in sl.endpoints:
                ep = (ip, port)
                prev = merged.get(ep)
                if prev is None or (ready and not prev[0]):
                    merged[ep] = (ready, serving, terminating, local)
        usable: set[Endpoint] = set()
        for fam in (4, 6):
            eps = sorted(((ep, st) for ep, st in merged.items() if _family(ep[0]) == fam),
                         key=lambda item: (ipaddress.ip_address(item[0][0]), item[0][1]))
            ready_eps = tuple(ep for ep, st in eps if st[0])
            fallback = tuple(ep for ep, st in eps if st[1] and st[2])
            cluster = ready_eps or fallback
            local_ready = tuple(ep for ep, st in eps if st[0] and st[3])
            local_fallback = tuple(ep for ep, st in eps if st[1] and st[2] and st[3])
            local_eps = local_ready or local_fallback
            sp.cluster[fam] = cluster
            sp.local[fam] = local_eps
            sp.has_any[fam] = bool(ready_eps or fallback)
            usable.update(cluster)
            usable.update(local_eps)
        sp.usable = frozenset(usable)

    def _clear_stale_udp(self, sp: ServicePort, stale: frozenset[Endpoint]) -> None:
        n = self.conntrack.remove_where(
            lambda flow: flow.ep in stale and flow.owner is not None and flow.owner.sp is sp)
        self.counters["stale_udp_flows_cleared"] += n

    # --- time, health, introspection --------------------------------------------------------

    def expire(self, now: float) -> int:
        """Reap expired conntrack entries and session-affinity records; returns flows reaped."""
        gone = self.conntrack.expire(now)
        if self._affinity:
            stale = [k for k, rec in self._affinity.items() if now - rec[1] >= rec[2]]
            for k in stale:
                del self._affinity[k]
        return len(gone)

    def next_deadline(self) -> float | None:
        return self.conntrack.next_deadline()

    def health_check(self, port: int) -> tuple[int, dict[str, Any]] | None:
        """kube-proxy's per-Service health check server on ``healthCheckNodePort``
        (``externalTrafficPolicy: Local``): 200 with local endpoints, else 503; None if no
        Service has that port."""
        sp = self._health.get(port)
        if sp is None:
            return None
        n = len(sp.local[4]) + len(sp.local[6])
        body = {"service": {"namespace": sp.key[0], "name": sp.key[1]}, "localEndpoints": n,
                "serviceProxyHealthy": True}
        return (200 if n else 503), body

    def health_check_ports(self) -> list[int]:
        return sorted(self._health)

    def frontend(self, ip: str, port: int, protocol: str | int = "TCP") -> Frontend | None:
        proto = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
        return self._vips.get((ip, port, proto))

    def endpoints(self, namespace: str, name: str, port: str = "", protocol: str = "TCP",
                  family: int = 4) -> dict[str, list[Endpoint]]:
        """The endpoints a Service port uses: ``{"cluster": [...], "local": [...]}``."""
        svc = self._services.get((namespace, name))
        sp = svc.ports.get((namespace, name, port, PROTOCOLS[protocol])) if svc else None
        if sp is None:
            return {"cluster": [], "local": []}
        return {"cluster": list(sp.cluster[family]), "local": list(sp.local[family])}

    def stats(self) -> dict[str, Any]:
        return {
            "node": self.node_name,
            "mode": self.mode,
            "scheduler": self.scheduler.name,
            "services": len(self._services),
            "frontends": len(self._vips),
            "slices": len(self._slices),
            "conntrack": {"flows": len(self.conntrack), **self.conntrack.stats},
            "affinity_records": len(self._affinity),
            "counters": dict(self.counters),
            "programming_latency": self.latency.stats(),
        }

"""Source NAT with conntrack-style reverse mapping, and the CNI's masquerade rule built on it.

Two pieces, both sans-IO (``now`` passed in, no clock):

* :class:`SnatTable` — a small NAT table: ``snat(pkt, to_ip, now)`` rewrites a packet's
  source to ``to_ip`` (keeping the source port when the resulting tuple is free, as Linux's
  ``nf_nat`` does) and remembers the flow; ``unsnat(pkt, now)`` gives a reply (or an ICMP
  error about the flow, conntrack's RELATED) its original destination back.  Generic: the
  CNI's masquerade uses it, and kube-proxy's SNAT (externalTrafficPolicy: Cluster, hairpin)
  may share it.
* :class:`Masquerade` — the rule every CNI plugin installs on the node's root stack: *source
  in the pod network, destination not in the exceptions, leaving through a wire NIC → SNAT
  to the node's IP*.  The plugin only supplies the settings (sources, exceptions); nothing
  here knows a plugin's name.  Flannel's Windows ``OutBoundNAT`` ``ExceptionList`` (cluster
  CIDR, service CIDR, management subnet — the Kubernetes "Windows networking"
  troubleshooting page) and Calico's ``natOutgoing`` ("packets sent from Calico networked
  containers in this pool to destinations outside of all Calico IP pools will be
  masqueraded" — the IPPool reference) are both just lists here.  See
  docs/contracts-pod-network.md, "The Flannel / Calico pod → VM difference, by mechanism".

Hot path: the reply hook returns at once unless the packet is addressed to a NAT address;
the egress hook does one dict lookup for a known flow, and caches its per-address prefix
decisions (strings → bool), so :mod:`ipaddress` runs once per address, not per packet.
IPv4 and IPv6 flows are kept apart by their addresses; one ``to_ip`` per family.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from broker import packets as P

Packet = tuple[Any, ...]
FlowKey = tuple[Any, ...]

# Linux nf_conntrack defaults (net.netfilter.nf_conntrack_*_timeout), seconds.  A flow is
# forgotten after its timeout without traffic; the state decides which timeout applies.
TIMEOUTS: dict[str, float] = {
    "tcp_syn_sent": 120.0,          # nf_conntrack_tcp_timeout_syn_sent
    "tcp_established": 432000.0,    # nf_conntrack_tcp_timeout_established (5 days)
    "tcp_fin": 120.0,               # fin_wait / time_wait
    "tcp_close": 10.0,              # nf_conntrack_tcp_timeout_close (after a RST)
    "udp": 30.0,                    # nf_conntrack_udp_timeout (unreplied)
    "udp_stream": 120.0,            # nf_conntrack_udp_timeout_stream (seen both ways)
    "icmp": 30.0,                   # nf_conntrack_icmp_timeout
    "other": 600.0,                 # nf_conntrack_generic_timeout
}
SWEEP_INTERVAL = 10.0      # how often expired flows are collected (lookups also check expiry)
DECISION_CACHE_MAX = 4096  # cached per-address prefix decisions before the cache is reset
PORT_RANGE = (1024, 65535)  # nf_nat: a source port >= 1024 is remapped within 1024..65535
ID_RANGE = (1, 65535)       # ICMP echo identifiers

_ECHO_REQUESTS = {(P.ICMP, P.ICMP_ECHO_REQUEST), (P.ICMPV6, P.ICMP6_ECHO_REQUEST)}
_ECHO_REPLIES = {(P.ICMP, P.ICMP_ECHO_REPLY), (P.ICMPV6, P.ICMP6_ECHO_REPLY)}
_PORTS = (P.TCP, P.UDP, P.SCTP)


class NatFlow:
    """One NATed flow: the original source, the NAT source, timers, counters."""

    __slots__ = ("proto", "src", "sid", "dst", "did", "nat_ip", "nid", "expires", "replied",
                 "state", "packets", "orig_key", "reply_key")

    def __init__(self, proto: int, src: str, sid: int, dst: str, did: int, nat_ip: str, nid: int) -> None:
        self.proto = proto
        self.src = src
        self.sid = sid
        self.dst = dst
        self.did = did
        self.nat_ip = nat_ip
        self.nid = nid
        self.expires = 0.0
        self.replied = False
        self.state = ""
        self.packets = 0
        self.orig_key: FlowKey = (proto, src, sid, dst, did)
        self.reply_key: FlowKey = (proto, dst, did, nat_ip, nid)

    def as_dict(self) -> dict[str, Any]:
        return {"proto": P.PROTO_NAMES.get(self.proto, self.proto), "src": f"{self.src}:{self.sid}",
                "dst": f"{self.dst}:{self.did}", "nat": f"{self.nat_ip}:{self.nid}",
                "state": self.state, "replied": self.replied, "expires": self.expires,
                "packets": self.packets}


def _flow_ids(pkt: Packet) -> tuple[int, int] | None:
    """(source id, destination id) of a packet that can start a NATed flow: ports for
    TCP/UDP/SCTP, (echo identifier, 0) for an echo request; None for anything else."""
    proto = pkt[2]
    if proto in _PORTS:
        return pkt[4], pkt[5]
    if (proto, pkt[4]) in _ECHO_REQUESTS:
        return pkt[6][0], 0
    return None


def _tcp_state(flags: int, replied: bool) -> str:
    if flags & P.RST:
        return "tcp_close"
    if flags & P.FIN:
        return "tcp_fin"
    return "tcp_established" if replied else "tcp_syn_sent"


class SnatTable:
    """Source NAT flows, looked up both ways.  See the module docstring."""

    def __init__(self, timeouts: dict[str, float] | None = None) -> None:
        self.timeouts = dict(TIMEOUTS if timeouts is None else timeouts)
        self._orig: dict[FlowKey, NatFlow] = {}
        self._reply: dict[FlowKey, NatFlow] = {}
        self._nat_ips: set[str] = set()
        self._next_sweep: float | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("flows", "snat_packets", "unsnat_packets", "related_packets", "expired", "exhausted"), 0)

    # --- egress ------------------------------------------------------------------------------

    def lookup(self, pkt: Packet, now: float) -> NatFlow | None:
        """The live flow ``pkt`` (original direction) belongs to, if any."""
        ids = _flow_ids(pkt)
        if ids is None:
            return None
        flow = self._orig.get((pkt[2], pkt[0], ids[0], pkt[1], ids[1]))
        if flow is not None and flow.expires <= now:
            self._drop(flow)
            self.counters["expired"] += 1
            return None
        return flow

    def snat(self, pkt: Packet, to_ip: str, now: float) -> Packet:
        """``pkt`` with its source NATed to ``to_ip`` (a new flow unless one exists).  A packet
        that cannot start a flow (an ICMP error, an echo reply) passes unchanged."""
        flow = self.lookup(pkt, now)
        if flow is None:
            ids = _flow_ids(pkt)
            if ids is None:
                return pkt
            flow = self._new_flow(pkt[2], pkt[0], ids[0], pkt[1], ids[1], to_ip, now)
            if flow is None:
                return pkt
        self._touch(flow, pkt, now, original=True)
        self.counters["snat_packets"] += 1
        return self._rewrite_src(pkt, flow)

    def _new_flow(self, proto: int, src: str, sid: int, dst: str, did: int, to_ip: str,
                  now: float) -> NatFlow | None:
        nid = self._free_id(proto, dst, did, to_ip, sid)
        if nid is None:
            self.counters["exhausted"] += 1
            return None
        flow = NatFlow(proto, src, sid, dst, did, to_ip, nid)
        self._orig[flow.orig_key] = flow
        self._reply[flow.reply_key] = flow
        self._nat_ips.add(to_ip)
        self.counters["flows"] += 1
        if self._next_sweep is None:
            self._next_sweep = now + SWEEP_INTERVAL
        return flow

    def _free_id(self, proto: int, dst: str, did: int, to_ip: str, want: int) -> int | None:
        """Keep the original port/identifier when the reply tuple is free (nf_nat's rule),
        else the next free one in the range, deterministically."""
        reply = self._reply
        if (proto, dst, did, to_ip, want) not in reply:
            return want
        lo, hi = PORT_RANGE if proto in _PORTS else ID_RANGE
        span = hi - lo + 1
        start = want if lo <= want <= hi else lo
        for step in range(1, span):
            cand = lo + (start - lo + step) % span
            if (proto, dst, did, to_ip, cand) not in reply:
                return cand
        return None

    @staticmethod
    def _rewrite_src(pkt: Packet, flow: NatFlow) -> Packet:
        if flow.proto in _PORTS:
            return P.with_addresses(pkt, flow.nat_ip, pkt[1], flow.nid, pkt[5])
        ident, seq = pkt[6]
        return (flow.nat_ip,) + pkt[1:6] + ((flow.nid, seq),) + pkt[7:]

    # --- replies -----------------------------------------------------------------------------

    def is_nat_address(self, ip: str) -> bool:
        return ip in self._nat_ips

    def unsnat(self, pkt: Packet, now: float) -> Packet | None:
        """A reply (or an ICMP error about a flow) with the original destination restored;
        None when ``pkt`` belongs to no flow of this table."""
        proto = pkt[2]
        if proto in _PORTS:
            flow = self._reply.get((proto, pkt[0], pkt[4], pkt[1], pkt[5]))
            if flow is None or not self._alive(flow, now):
                return None
            self._touch(flow, pkt, now, original=False)
            self.counters["unsnat_packets"] += 1
            return P.with_addresses(pkt, pkt[0], flow.src, pkt[4], flow.sid)
        if (proto, pkt[4]) in _ECHO_REPLIES:
            ident, seq = pkt[6]
            flow = self._reply.get((proto, pkt[0], 0, pkt[1], ident))
            if flow is None or not self._alive(flow, now):
                return None
            self._touch(flow, pkt, now, original=False)
            self.counters["unsnat_packets"] += 1
            return (pkt[0], flow.src) + pkt[2:6] + ((flow.sid, seq),) + pkt[7:]
        if P.is_icmp_error(pkt):
            return self._unsnat_related(pkt, now)
        return None

    def _unsnat_related(self, pkt: Packet, now: float) -> Packet | None:
        """An ICMP error quoting a NATed packet (conntrack RELATED): fix the outer destination
        and the quoted source, so the original sender's socket hears about it."""
        mtu, quoted = pkt[6]
        qproto = quoted[2]
        if qproto in _PORTS:
            key: FlowKey = (qproto, quoted[1], quoted[5], quoted[0], quoted[4])
        elif (qproto, quoted[4]) in _ECHO_REQUESTS:
            key = (qproto, quoted[1], 0, quoted[0], quoted[6][0])
        else:
            return None
        flow = self._reply.get(key)
        if flow is None or not self._alive(flow, now):
            return None
        if qproto in _PORTS:
            fixed = P.with_addresses(quoted, flow.src, quoted[1], flow.sid, quoted[5])
        else:
            fixed = (flow.src,) + quoted[1:6] + ((flow.sid, quoted[6][1]),) + quoted[7:]
        self.counters["related_packets"] += 1
        return (pkt[0], flow.src) + pkt[2:6] + ((mtu, fixed),) + pkt[7:]

    # --- timers ------------------------------------------------------------------------------

    def _alive(self, flow: NatFlow, now: float) -> bool:
        if flow.expires > now:
            return True
        self._drop(flow)
        self.counters["expired"] += 1
        return False

    def _touch(self, flow: NatFlow, pkt: Packet, now: float, *, original: bool) -> None:
        flow.packets += 1
        if not original:
            flow.replied = True
        proto = flow.proto
        if proto == P.TCP:
            state = _tcp_state(pkt[6][0], flow.replied)
            # A FIN or RST is final: later ACKs do not reopen the flow.
            if flow.state in ("tcp_fin", "tcp_close") and state == "tcp_established":
                state = flow.state
        elif proto == P.UDP:
            state = "udp_stream" if flow.replied else "udp"
        elif proto in (P.ICMP, P.ICMPV6):
            state = "icmp"
        else:
            state = "other"
        flow.state = state
        flow.expires = now + self.timeouts[state]

    def next_deadline(self) -> float | None:
        return self._next_sweep

    def expire(self, now: float) -> int:
        """Forget flows whose timeout has passed; returns how many."""
        if self._next_sweep is None or now < self._next_sweep:
            return 0
        dead = [f for f in self._orig.values() if f.expires <= now]
        for flow in dead:
            self._drop(flow)
        self.counters["expired"] += len(dead)
        self._next_sweep = now + SWEEP_INTERVAL if self._orig else None
        return len(dead)

    def _drop(self, flow: NatFlow) -> None:
        if self._orig.get(flow.orig_key) is flow:
            del self._orig[flow.orig_key]
        if self._reply.get(flow.reply_key) is flow:
            del self._reply[flow.reply_key]

    def flows(self) -> list[NatFlow]:
        return list(self._orig.values())

    def __len__(self) -> int:
        return len(self._orig)

    def clear(self) -> None:
        self._orig.clear()
        self._reply.clear()
        self._next_sweep = None


class _PrefixSet:
    """Membership of address strings in a list of prefixes, cached per address."""

    __slots__ = ("prefixes", "_nets", "_cache")

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.prefixes = [str(ipaddress.ip_network(p, strict=False)) for p in prefixes]
        self._nets = [ipaddress.ip_network(p) for p in self.prefixes]
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is None:
            addr = ipaddress.ip_address(ip)
            hit = any(addr in net for net in self._nets)
            if len(self._cache) >= DECISION_CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = hit
        return hit


class Masquerade:
    """The CNI's outgoing NAT rule on a node's root stack (install :meth:`install`).

    ``POSTROUTING``: source in ``sources`` and destination not in ``exceptions`` and the
    packet leaves through a wire NIC (``egress(dst)`` is True) and it does not answer a flow
    opened toward the pod (noted in ``FORWARD``) → SNAT to the node's address of the family.  ``PREROUTING`` (first, before kube-proxy): replies to a NATed flow get
    their original destination back before routing, as conntrack does.
    """

    def __init__(self, node_ips: Iterable[str], sources: Iterable[str], exceptions: Iterable[str],
                 *, egress: Callable[[str], bool] | None = None, table: SnatTable | None = None) -> None:
        self.to_ip: dict[bool, str] = {":" in ip: ip for ip in node_ips}  # is_v6 -> address
        self.sources = _PrefixSet(sources)
        self.exceptions = _PrefixSet(exceptions)
        self.egress = egress
        self.table = table if table is not None else SnatTable()
        self._inbound: dict[FlowKey, float] = {}  # reply key of a flow a pod was sent -> expiry
        self.counters: dict[str, int] = dict.fromkeys(("masqueraded", "excepted", "replies_kept"), 0)

    def _inbound_key(self, pkt: Packet) -> FlowKey:
        return (pkt[2], pkt[1], pkt[5], pkt[0], pkt[4])

    def set_exceptions(self, prefixes: Iterable[str]) -> None:
        """Replace the exception list (existing flows keep their NAT until they expire, as
        conntrack entries outlive an iptables change)."""
        self.exceptions = _PrefixSet(prefixes)

    def set_sources(self, prefixes: Iterable[str]) -> None:
        self.sources = _PrefixSet(prefixes)

    def install(self, stack: Any) -> None:
        """Hook into a NetStack: reply un-NAT first in PREROUTING, inbound flows noted in
        FORWARD, SNAT in POSTROUTING."""
        stack.hooks["PREROUTING"].insert(0, self.prerouting)
        stack.hooks["FORWARD"].append(self.forward)
        stack.hooks["POSTROUTING"].append(self.postrouting)

    def uninstall(self, stack: Any) -> None:
        for point, fn in (("PREROUTING", self.prerouting), ("FORWARD", self.forward),
                          ("POSTROUTING", self.postrouting)):
            hooks = stack.hooks[point]
            if fn in hooks:
                hooks.remove(fn)

    def forward(self, pkt: Packet, now: float) -> Packet:
        """Note flows opened *toward* a pod from outside the pod network (a VM with a route
        to the pods, a NodePort with ``externalTrafficPolicy: Local``): their replies belong
        to an existing connection, and NAT rules only ever see a connection's first packet."""
        if pkt[2] not in _PORTS:
            return pkt
        sources = self.sources
        cache = sources._cache
        to_pod = cache.get(pkt[1])
        if to_pod is None:
            to_pod = pkt[1] in sources
        if not to_pod:
            return pkt
        from_pod = cache.get(pkt[0])
        if from_pod is None:
            from_pod = pkt[0] in sources
        if not from_pod:
            state = _tcp_state(pkt[6][0], True) if pkt[2] == P.TCP else "udp_stream"
            self._inbound[self._inbound_key(pkt)] = now + self.table.timeouts[state]
            if self.table._next_sweep is None:
                self.table._next_sweep = now + SWEEP_INTERVAL
        return pkt

    def postrouting(self, pkt: Packet, now: float) -> Packet:
        # Every NATed flow starts from a pod: anything else returns after one dict hit.
        from_pod = self.sources._cache.get(pkt[0])
        if from_pod is None:
            from_pod = pkt[0] in self.sources
        if not from_pod:
            return pkt
        table = self.table
        flow = table.lookup(pkt, now) if table._orig else None
        if flow is not None:
            table._touch(flow, pkt, now, original=True)
            table.counters["snat_packets"] += 1
            return table._rewrite_src(pkt, flow)
        if self._inbound:
            expires = self._inbound.get((pkt[2], pkt[0], pkt[4], pkt[1], pkt[5]))
            if expires is not None and expires > now:
                self.counters["replies_kept"] += 1
                return pkt
        dst = pkt[1]
        if dst in self.exceptions:
            self.counters["excepted"] += 1
            return pkt
        to_ip = self.to_ip.get(":" in dst)
        if to_ip is None or (self.egress is not None and not self.egress(dst)):
            return pkt
        out = table.snat(pkt, to_ip, now)
        if out is not pkt:
            self.counters["masqueraded"] += 1
        return out

    def prerouting(self, pkt: Packet, now: float) -> Packet:
        table = self.table
        if pkt[1] not in table._nat_ips:
            return pkt
        out = table.unsnat(pkt, now)
        return pkt if out is None else out

    def next_deadline(self) -> float | None:
        return self.table.next_deadline()

    def expire(self, now: float) -> int:
        due = self.table._next_sweep is not None and now >= self.table._next_sweep
        n = self.table.expire(now)
        if due and self._inbound:
            dead = [k for k, t in self._inbound.items() if t <= now]
            for key in dead:
                del self._inbound[key]
            n += len(dead)
            if self._inbound and self.table._next_sweep is None:
                self.table._next_sweep = now + SWEEP_INTERVAL
        return n

    def stats(self) -> dict[str, Any]:
        return {"sources": list(self.sources.prefixes), "exceptions": list(self.exceptions.prefixes),
                "flows": len(self.table), "inbound": len(self._inbound), **self.counters,
                **self.table.counters}

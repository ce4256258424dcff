"""Connection tracking for kube-proxy's NAT: flows keyed by 5-tuple both ways, states as tables.

A sans-IO model of the part of Linux's ``nf_conntrack`` that Service NAT relies on.  One
:class:`Flow` is one conntrack entry: its *original* tuple (what the client sent: client ->
Service VIP) and its *reply* tuple (what the endpoint sends back: endpoint -> client, or ->
the masquerade address when the flow is SNATed).  :class:`Conntrack` indexes both tuples in one
dict, ``(proto, src, sport, dst, dport) -> (flow, direction)``, so a packet of either direction
is one dict lookup; the reply direction is how replies get un-NATed.

Only flows that kube-proxy NATs are tracked (the emulated datapath has no other netfilter
users), so every entry carries its NAT: the endpoint it was DNATed to and, when masqueraded,
the source it was SNATed to.

States and timeouts are tables, like h11's ``_state.py``:

* TCP: :data:`TCP_TRANSITIONS` is the kernel's ``tcp_conntracks[dir][flags][state]`` table
  (``net/netfilter/nf_conntrack_proto_tcp.c``), flags classified as the kernel's
  ``get_conntrack_index`` does (RST, else SYN / SYN+ACK, else FIN, else ACK, else none).
  ``IGNORE`` packets pass without changing state or timer, ``INVALID`` ones are dropped (as
  kube-proxy's ``-m conntrack --ctstate INVALID -j DROP`` does for forwarded traffic), and an
  original-direction SYN on a TIME_WAIT / CLOSE entry kills it so the SYN opens a new flow
  (RFC 1122 reopen: the kernel's ``nf_ct_kill`` + ``NF_REPEAT``).  No window tracking.
* UDP: UNREPLIED until a reply is seen, then REPLIED; a REPLIED flow still active more than
  2 s after it was created gets the stream timeout (``nf_conntrack_udp_packet``).
* SCTP: the emulated SCTP has INIT, INIT_ACK, DATA and ABORT chunks only: INIT -> COOKIE_WAIT,
  INIT_ACK -> COOKIE_ECHOED (standing in for the COOKIE_ECHO/COOKIE_ACK exchange), DATA after
  that -> ESTABLISHED, ABORT -> CLOSED.

Timeouts (:data:`DEFAULT_TIMEOUTS`, seconds) are the kernel's ``nf_conntrack_*_timeout_*``
sysctl defaults (Documentation/networking/nf_conntrack-sysctl.rst) except the two kube-proxy
sets at start-up: ``--conntrack-tcp-timeout-established`` 24h (kernel: 5 days) and
``--conntrack-tcp-timeout-close-wait`` 1h (kernel: 60 s).  :data:`IPVS_TIMEOUTS` replaces the
established TCP and the UDP timeouts with IPVS's own defaults (``ipvsadm --set 900 120 300``),
which govern IPVS connections.  They are kernel settings, not Kubernetes timers, so they are
not scaled by ``time_scale``; pass a table to change them.

Expiry is driven by ``now``: a lookup never returns an expired flow's NAT (the caller checks
``flow.expires``), and :meth:`Conntrack.expire` reaps due flows from a heap (entries are
re-pushed lazily when a refresh moved the deadline), so :meth:`Conntrack.next_deadline` is the
time to call it again.

IPVS's least-connection scheduler counts each real server's connections: a flow may carry a
``counter`` (``[active, inactive]``, shared by every flow of one virtual server -> endpoint);
an ESTABLISHED TCP flow counts as active, any other tracked flow as inactive, as
``ip_vs_conn`` does, and the counts move when the state does and when the flow goes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from broker import packets as P

__all__ = [
    "DEFAULT_TIMEOUTS", "INVALID", "IGNORE", "IPVS_TIMEOUTS", "ORIGINAL", "REPLY", "TCP_STATES",
    "TCP_TRANSITIONS", "Conntrack", "Flow", "tcp_flag_class",
]

ORIGINAL = 0
REPLY = 1

Key = tuple[int, str, int, str, int]  # (proto, src, sport, dst, dport)

# --- TCP ---------------------------------------------------------------------------------

TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
IGNORE = "IGNORE"
INVALID = "INVALID"

_NO, _SS, _SR, _ES, _FW, _CW, _LA, _TW, _CL, _S2 = TCP_STATES
_IG, _IV = IGNORE, INVALID

# The kernel's table, one row per flag class, one column per current state in TCP_STATES'
# order (sNO sSS sSR sES sFW sCW sLA sTW sCL sS2).
_TCP_TABLE: dict[int, dict[str, tuple[str, ...]]] = {
    ORIGINAL: {
        "syn":    (_SS, _SS, _IG, _IG, _IG, _IG, _IG, _SS, _SS, _S2),
        "synack": (_IV, _IV, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _SR),
        "fin":    (_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),
        "ack":    (_ES, _IV, _ES, _ES, _CW, _CW, _TW, _TW, _CL, _IV),
        "rst":    (_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),
        "none":   (_IV,) * 10,
    },
    REPLY: {
        "syn":    (_IV, _S2, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _S2),
        "synack": (_IV, _SR, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _SR),
        "fin":    (_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),
        "ack":    (_IV, _IG, _SR, _ES, _CW, _CW, _TW, _TW, _CL, _IG),
        "rst":    (_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),
        "none":   (_IV,) * 10,
    },
}


def tcp_flag_class(flags: int) -> str:
    """The kernel's ``get_conntrack_index``: which row of the table a segment uses."""
    if flags & P.RST:
        return "rst"
    if flags & P.SYN:
        return "synack" if flags & P.ACK else "syn"
    if flags & P.FIN:
        return "fin"
    if flags & P.ACK:
        return "ack"
    return "none"


_FLAG_MASK = P.SYN | P.ACK | P.FIN | P.RST

# Flattened for the hot path: (direction, flags & mask, state) -> next state.
TCP_TRANSITIONS: dict[tuple[int, int, str], str] = {
    (d, flags, state): _TCP_TABLE[d][tcp_flag_class(flags)][i]
    for d in (ORIGINAL, REPLY)
    for flags in range(_FLAG_MASK + 1) if flags & ~_FLAG_MASK == 0
    for i, state in enumerate(TCP_STATES)
}

_REOPENABLE = frozenset((_TW, _CL))  # an original SYN here starts a new connection

# --- timeouts ----------------------------------------------------------------------------

DEFAULT_TIMEOUTS: dict[int, dict[str, float]] = {
    P.TCP: {
        "SYN_SENT": 120.0,        # nf_conntrack_tcp_timeout_syn_sent
        "SYN_RECV": 60.0,         # nf_conntrack_tcp_timeout_syn_recv
        "ESTABLISHED": 86400.0,   # kube-proxy --conntrack-tcp-timeout-established=24h (kernel 432000)
        "FIN_WAIT": 120.0,        # nf_conntrack_tcp_timeout_fin_wait
        "CLOSE_WAIT": 3600.0,     # kube-proxy --conntrack-tcp-timeout-close-wait=1h (kernel 60)
        "LAST_ACK": 30.0,         # nf_conntrack_tcp_timeout_last_ack
        "TIME_WAIT": 120.0,       # nf_conntrack_tcp_timeout_time_wait
        "CLOSE": 10.0,            # nf_conntrack_tcp_timeout_close
        "SYN_SENT2": 120.0,       # same as syn_sent
    },
    P.UDP: {
        "UNREPLIED": 30.0,        # nf_conntrack_udp_timeout
        "REPLIED": 30.0,          # replied but not yet a stream (< 2 s old): still udp_timeout
        "STREAM": 120.0,          # nf_conntrack_udp_timeout_stream
    },
    P.SCTP: {
        "CLOSED": 10.0,           # nf_conntrack_sctp_timeout_closed
        "COOKIE_WAIT": 3.0,       # nf_conntrack_sctp_timeout_cookie_wait
        "COOKIE_ECHOED": 3.0,     # nf_conntrack_sctp_timeout_cookie_echoed
        "ESTABLISHED": 210.0,     # nf_conntrack_sctp_timeout_established (Linux >= 6.3; was 5 days)
    },
}

IPVS_TIMEOUTS: dict[int, dict[str, float]] = {
    P.TCP: {**DEFAULT_TIMEOUTS[P.TCP], "ESTABLISHED": 900.0, "FIN_WAIT": 120.0},
    P.UDP: {"UNREPLIED": 300.0, "REPLIED": 300.0, "STREAM": 300.0},
    P.SCTP: dict(DEFAULT_TIMEOUTS[P.SCTP]),
}

UDP_STREAM_AFTER = 2.0  # seconds after creation a replied UDP flow counts as a stream

_FIRST_STATE = {P.TCP: "NONE", P.UDP: "UNREPLIED", P.SCTP: "CLOSED"}

_SCTP_NEXT: dict[tuple[int, str], str] = {
    # (chunk, state) -> next state; anything else keeps the state.
    (P.SCTP_INIT, "CLOSED"): "COOKIE_WAIT",
    (P.SCTP_INIT_ACK, "COOKIE_WAIT"): "COOKIE_ECHOED",
    (P.SCTP_DATA, "COOKIE_ECHOED"): "ESTABLISHED",
}


class Flow:
    """One conntrack entry with its NAT.

    ``orig``: (proto, client, cport, vip, vport) as the client sent it.
    ``reply``: (proto, endpoint, eport, rdst, rdport) as the endpoint answers; ``rdst/rdport``
    is the client unless the flow is SNATed (masquerade, or a source port remapped because the
    reply tuple was taken).  ``owner`` is the proxier's frontend, ``ep`` its endpoint.
    """

    __slots__ = ("orig", "reply", "proto", "state", "expires", "created", "owner", "ep",
                 "snat", "counter", "active", "timeouts", "dead", "sched")

    def __init__(self, orig: Key, reply: Key, owner: Any = None, ep: tuple[str, int] | None = None,
                 counter: list[int] | None = None) -> None:
        self.orig = orig
        self.reply = reply
        self.proto = orig[0]
        self.state = "NONE"
        self.expires = 0.0
        self.created = 0.0
        self.owner = owner
        self.ep = ep if ep is not None else (reply[1], reply[2])
        # SNAT: the original direction's source is rewritten to the reply's destination.
        self.snat = (reply[3], reply[4]) != (orig[1], orig[2])
        self.counter = counter
        self.active = False
        self.timeouts: Mapping[str, float] = {}
        self.dead = False
        self.sched = 0.0  # the deadline of this flow's live entry in the expiry heap

    def __repr__(self) -> str:
        o, r = self.orig, self.reply
        name = P.PROTO_NAMES.get(o[0], str(o[0]))
        return (f"<Flow {name} {o[1]}:{o[2]}->{o[3]}:{o[4]} | {r[1]}:{r[2]}->{r[3]}:{r[4]} "
                f"{self.state} expires={self.expires:.3f}>")

    def describe(self) -> dict[str, Any]:
        """``conntrack -L``-like, for stats and tests."""
        o, r = self.orig, self.reply
        return {"proto": P.PROTO_NAMES.get(o[0], str(o[0])), "state": self.state,
                "src": o[1], "sport": o[2], "dst": o[3], "dport": o[4],
                "reply_src": r[1], "reply_sport": r[2], "reply_dst": r[3], "reply_dport": r[4],
                "expires": self.expires}


class Conntrack:
    """The flow table.  ``table`` maps both tuples of every live flow to ``(flow, direction)``."""

    def __init__(self, timeouts: Mapping[int, Mapping[str, float]] | None = None) -> None:
        self.timeouts: dict[int, dict[str, float]] = {
            proto: dict(DEFAULT_TIMEOUTS[proto]) for proto in DEFAULT_TIMEOUTS}
        for proto, table in (timeouts or {}).items():
            self.timeouts[proto].update(table)
        self.table: dict[Key, tuple[Flow, int]] = {}
        self._heap: list[tuple[float, int, Flow]] = []
        self._seq = 0
        self.stats: dict[str, int] = dict.fromkeys(
            ("inserted", "expired", "removed", "invalid", "ignored", "reopened", "clashes"), 0)
        self._t_est = self.timeouts[P.TCP]["ESTABLISHED"]

    def __len__(self) -> int:
        return len(self.table) // 2

    def flows(self) -> Iterator[Flow]:
        for flow, d in self.table.values():
            if d == ORIGINAL:
                yield flow

    # --- insertion -----------------------------------------------------------------------

    def free(self, key: Key) -> bool:
        return key not in self.table

    @staticmethod
    def can_open(pkt: P.Packet) -> bool:
        """Whether ``pkt`` may create a flow: a TCP segment the kernel would call INVALID in
        state NONE (SYN/ACK, FIN, RST, no flags) may not (``nf_conntrack_tcp_loose`` = 1 lets
        a bare ACK pick up an established connection)."""
        if pkt[P.PROTO] != P.TCP:
            return True
        return TCP_TRANSITIONS[(ORIGINAL, pkt[P.INFO][0] & _FLAG_MASK, "NONE")] != INVALID

    def add(self, flow: Flow, now: float) -> Flow:
        """Insert a new flow (both tuples must be free: see :meth:`free`)."""
        flow.created = now
        flow.timeouts = self.timeouts[flow.proto]
        flow.state = _FIRST_STATE.get(flow.proto, "NONE")
        flow.expires = now
        self.table[flow.orig] = (flow, ORIGINAL)
        self.table[flow.reply] = (flow, REPLY)
        if flow.counter is not None:
            flow.counter[1] += 1
        self.stats["inserted"] += 1
        return flow

    # --- per packet ----------------------------------------------------------------------

    def update(self, flow: Flow, direction: int, pkt: P.Packet, now: float) -> str:
        """Advance ``flow``'s state for ``pkt`` and refresh its timer.

        Returns the new state, :data:`IGNORE` (pass, no change), :data:`INVALID` (drop), or
        ``"REOPEN"`` (the flow was killed: treat the packet as a new connection).
        """
        proto = flow.proto
        if proto == P.TCP:
            flags = pkt[P.INFO][0]
            state = flow.state
            if state == "ESTABLISHED" and not flags & (P.SYN | P.FIN | P.RST):
                flow.expires = now + self._t_est  # the common case, no table walk
                return state
            new = TCP_TRANSITIONS[(direction, flags & _FLAG_MASK, state)]
            if new == IGNORE:
                self.stats["ignored"] += 1
                return new
            if new == INVALID:
                self.stats["invalid"] += 1
                return new
            if new == "SYN_SENT" and direction == ORIGINAL and state in _REOPENABLE:
                self.stats["reopened"] += 1
                self.remove(flow)
                return "REOPEN"
            self._set_state(flow, new)
            flow.expires = now + flow.timeouts[new]
            if flow.expires < flow.sched:  # a shorter timer (FIN, RST): reschedule earlier
                self._schedule(flow)
            return new
        if proto == P.UDP:
            state = flow.state
            if direction == REPLY and state == "UNREPLIED":
                state = flow.state = "REPLIED"
            if state == "REPLIED" and now > flow.created + UDP_STREAM_AFTER:
                state = flow.state = "STREAM"
            flow.expires = now + flow.timeouts[state]
            return state
        if proto == P.SCTP:
            chunk = pkt[P.INFO][0]
            if chunk == P.SCTP_ABORT:
                new = "CLOSED"
            else:
                new = _SCTP_NEXT.get((chunk, flow.state), flow.state)
            flow.state = new
            flow.expires = now + flow.timeouts[new]
            if flow.expires < flow.sched:
                self._schedule(flow)
            return new
        flow.expires = now + 30.0
        return flow.state

    def start(self, flow: Flow, pkt: P.Packet, now: float) -> str:
        """The first packet of a new flow (already added): its state and timer."""
        state = self.update(flow, ORIGINAL, pkt, now)
        self._schedule(flow)
        return state

    def _set_state(self, flow: Flow, new: str) -> None:
        flow.state = new
        active = new == "ESTABLISHED"
        if active != flow.active:
            flow.active = active
            counter = flow.counter
            if counter is not None:
                if active:
                    counter[0] += 1
                    counter[1] -= 1
                else:
                    counter[0] -= 1
                    counter[1] += 1

    # --- removal and expiry ----------------------------------------------------------------

    def remove(self, flow: Flow) -> None:
        if flow.dead:
            return
        flow.dead = True
        table = self.table
        if table.get(flow.orig, (None,))[0] is flow:
            del table[flow.orig]
        if table.get(flow.reply, (None,))[0] is flow:
            del table[flow.reply]
        counter = flow.counter
        if counter is not None:
            counter[0 if flow.active else 1] -= 1
        self.stats["removed"] += 1

    def _schedule(self, flow: Flow) -> None:
        """Push the flow's deadline.  A refresh that moves it later pushes nothing (the old
        entry re-pushes itself when it comes due); one that moves it earlier pushes a new
        entry and the old one becomes stale (``sched`` no longer matches it)."""
        self._seq += 1
        flow.sched = flow.expires
        heapq.heappush(self._heap, (flow.expires, self._seq, flow))

    def expire(self, now: float) -> list[Flow]:
        """Reap every flow whose timer ran out; return them."""
        heap = self._heap
        gone: list[Flow] = []
        while heap and heap[0][0] <= now:
            when, _, flow = heapq.heappop(heap)
            if flow.dead or when != flow.sched:
                continue
            if flow.expires > now:  # refreshed since it was pushed
                self._schedule(flow)
                continue
            self.remove(flow)
            self.stats["expired"] += 1
            gone.append(flow)
        return gone

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and (heap[0][2].dead or heap[0][0] != heap[0][2].sched):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def remove_where(self, pred: Callable[[Flow], bool]) -> int:
        """Delete matching flows (``conntrack -D ...``); returns how many."""
        doomed = [flow for flow in self.flows() if pred(flow)]
        for flow in doomed:
            self.remove(flow)
        return len(doomed)

    def clear(self) -> None:
        for flow in list(self.flows()):
            self.remove(flow)
        self._heap.clear()

"""A TCP-like transport, sans-IO: RFC 9293 state machine, RFC 6298 timers, RFC 5681 congestion.

What it does (and cites): three-way handshake with the MSS option; RST for a closed port;
retransmission with RTO (RFC 6298: initial 1 s, Linux's 200 ms floor, SRTT/RTTVAR, Karn's
algorithm, exponential backoff); SYN retries like ``tcp_syn_retries``; segments never larger
than the MSS (path MTU aware, RFC 1191); in-order delivery with an out-of-order buffer;
cumulative and delayed ACKs (RFC 1122 4.2.3.2: every 2nd segment or 40 ms); a send window
honouring the peer's receive window and a congestion window (slow start, AIMD, fast
retransmit / NewReno recovery, RFC 5681 / RFC 6582); zero-window probes (RFC 9293 3.8.6.1);
FIN and half-close; TIME_WAIT; keepalive (RFC 1122 4.2.3.6); RFC 5961 RST/SYN checks.

Not done: SACK, timestamps, window scaling (windows are plain byte counts), Nagle.

Sequence numbers are unbounded ints internally (ISN + offset) and wrapped to 32 bits only
on the wire, so comparisons are plain ``<``; ``_unwrap`` maps a wire value back next to a
reference.  Sending keeps one ``bytearray`` from ``snd_una`` on (deleting from its front is
O(1) in CPython); segments are ``bytes`` cut through a memoryview.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.packets import ACK, FIN, IPV4_HEADER, IPV6_HEADER, PSH, RST, SYN, TCP_HEADER, tcp

from .errors import sock_error

if TYPE_CHECKING:
    from .stack import NetStack

Packet = tuple[Any, ...]

M32 = 0xFFFFFFFF
_HALF = 1 << 31
_MOD = 1 << 32

CLOCK_GRANULARITY = 0.001  # RFC 6298 "G"
DEFAULT_MSS_V4 = 536       # RFC 9293 3.7.1: no MSS option
DEFAULT_MSS_V6 = 1220      # RFC 8200 8.3


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpConfig:
    """Per-stack (or per-socket) TCP settings; defaults follow Linux where it matters."""

    rto_initial: float = 1.0     # RFC 6298 2.1
    rto_min: float = 0.2         # Linux TCP_RTO_MIN (RFC 6298 says 1 s; Linux uses 200 ms)
    rto_max: float = 120.0       # Linux TCP_RTO_MAX
    syn_retries: int = 6         # net.ipv4.tcp_syn_retries: 1+2+4+...+64 = 127 s
    synack_retries: int = 5      # net.ipv4.tcp_synack_retries
    retries2: int = 15           # net.ipv4.tcp_retries2: give up on an established connection
    user_timeout: float | None = None  # TCP_USER_TIMEOUT (RFC 5482)
    delack: float = 0.04         # Linux TCP_DELACK_MIN
    time_wait: float = 1.0       # Linux keeps 60 s (TCP_TIMEWAIT_LEN); short here, configurable
    fin_timeout: float = 60.0    # net.ipv4.tcp_fin_timeout: orphaned FIN_WAIT_2
    rcvbuf: int = 256 * 1024     # receive window (bytes; no window scaling needed here)
    write_high: int = 256 * 1024 # pause_writing() above this many unacknowledged bytes
    write_low: int = 64 * 1024   # resume_writing() at or below
    init_cwnd: int = 10          # segments, RFC 6928
    keepalive: tuple[float, float, int] | None = None  # (idle, interval, probes); None = off

    def __post_init__(self) -> None:
        if not 0 < self.rto_min <= self.rto_initial <= self.rto_max:
            raise ValueError("rto: expected 0 < rto_min <= rto_initial <= rto_max")
        if self.syn_retries < 0 or self.synack_retries < 0 or self.retries2 < 0:
            raise ValueError("retries: expected >= 0")
        if self.rcvbuf < 1 or self.write_low > self.write_high:
            raise ValueError("rcvbuf/write_low/write_high: expected rcvbuf >= 1 and low <= high")
        if self.keepalive is not None and (len(self.keepalive) != 3 or min(self.keepalive) <= 0):
            raise ValueError("keepalive: expected (idle > 0, interval > 0, probes > 0)")


def _unwrap(wire: int, ref: int) -> int:
    """The unbounded sequence number nearest ``ref`` whose low 32 bits are ``wire``."""
    d = (wire - ref) & M32
    return ref + d - _MOD if d >= _HALF else ref + d


# --- the state machine (RFC 9293 3.3.2, figure 5) ------------------------------------------
#
# Rules that keep it honest:
#  * only TcpConnection._transition assigns .state, and only along this table;
#  * events in ABORTING are valid in every state and lead to CLOSED;
#  * LISTEN is TcpListener: a SYN there creates a new connection in CLOSED and feeds it
#    PASSIVE_SYN, so a connection object never goes back to LISTEN.

CLOSED = "CLOSED"
SYN_SENT = "SYN_SENT"
SYN_RECEIVED = "SYN_RECEIVED"
ESTABLISHED = "ESTABLISHED"
FIN_WAIT_1 = "FIN_WAIT_1"
FIN_WAIT_2 = "FIN_WAIT_2"
CLOSE_WAIT = "CLOSE_WAIT"
CLOSING = "CLOSING"
LAST_ACK = "LAST_ACK"
TIME_WAIT = "TIME_WAIT"

# Events.
CONNECT = "connect"            # app: active open (SYN sent)
PASSIVE_SYN = "passive_syn"    # a listener got a SYN (SYN-ACK sent)
RCV_SYN = "rcv_syn"            # simultaneous open
RCV_SYN_ACK = "rcv_syn_ack"
RCV_ACK_OF_SYN = "rcv_ack_of_syn"
SHUTDOWN = "shutdown"          # app: close()/write_eof(): our FIN is queued
RCV_FIN = "rcv_fin"
RCV_ACK_OF_FIN = "rcv_ack_of_fin"
TW_EXPIRED = "tw_expired"
RESET = "reset"                # RST received
ABORT = "abort"                # app abort(), or the connection failed (timeout, ICMP)

TRANSITIONS: dict[tuple[str, str], str] = {
    (CLOSED, CONNECT): SYN_SENT,
    (CLOSED, PASSIVE_SYN): SYN_RECEIVED,
    (SYN_SENT, RCV_SYN_ACK): ESTABLISHED,
    (SYN_SENT, RCV_SYN): SYN_RECEIVED,
    (SYN_RECEIVED, RCV_ACK_OF_SYN): ESTABLISHED,
    (ESTABLISHED, SHUTDOWN): FIN_WAIT_1,
    (ESTABLISHED, RCV_FIN): CLOSE_WAIT,
    (FIN_WAIT_1, RCV_ACK_OF_FIN): FIN_WAIT_2,
    (FIN_WAIT_1, RCV_FIN): CLOSING,
    (FIN_WAIT_2, RCV_FIN): TIME_WAIT,
    (CLOSE_WAIT, SHUTDOWN): LAST_ACK,
    (CLOSING, RCV_ACK_OF_FIN): TIME_WAIT,
    (LAST_ACK, RCV_ACK_OF_FIN): CLOSED,
    (TIME_WAIT, TW_EXPIRED): CLOSED,
}
ABORTING = frozenset({RESET, ABORT})

# States in which the app may still queue data (before write_eof/close).
CAN_WRITE = frozenset({SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT})
# States in which the peer may still send data (it has not sent its FIN).
RECEIVES_DATA = frozenset({ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2})
# States in which queued data and our FIN are (re)transmitted.
SENDS_DATA = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK})
# Linux tcp_reset(): the error an RST gives, by state (default ECONNRESET).
RESET_ERRNO = {SYN_SENT: errno.ECONNREFUSED, CLOSE_WAIT: errno.EPIPE}


class LocalProtocolError(RuntimeError):
    """A transition the table does not allow: a bug in this module, not the peer's doing."""


class TcpListener:
    """A listening socket (the LISTEN state)."""

    __slots__ = ("_stack", "_factory", "local", "backlog", "config", "half_open", "closed")

    def __init__(self, stack: NetStack, factory: Callable[[], Any], local: tuple[str, int], backlog: int,
                 config: TcpConfig) -> None:
        self._stack = stack
        self._factory = factory
        self.local = local
        self.backlog = backlog
        self.config = config
        self.half_open: set[TcpConnection] = set()
        self.closed = False

    def segment(self, pkt: Packet, now: float) -> None:
        """RFC 9293 3.10.7.2: a segment for the LISTEN state."""
        flags = pkt[6][0]
        stack = self._stack
        if flags & RST:
            return
        if flags & ACK:
            stack.tcp_reset_reply(pkt, now)
            return
        if not flags & SYN:
            return
        if len(self.half_open) >= self.backlog:
            stack.drops["backlog"] += 1  # Linux drops the SYN when the queue is full
            return
        conn = stack._new_passive(self, pkt)
        conn._listener = self
        self.half_open.add(conn)
        conn.passive_open(pkt, now)

    def accept(self, conn: TcpConnection) -> Any:
        self.half_open.discard(conn)
        conn._listener = None
        return self._factory()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stack._unlisten(self)
        for conn in list(self.half_open):
            conn.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": self.local}.get(name, default)


class TcpConnection:
    """One connection; the app sees asyncio's ``Transport`` methods.

    Calls that send take ``now``; inside a protocol callback they may omit it (the time of
    the running entry point is used).  Callbacks: ``connection_made(conn)``,
    ``data_received(data)``, ``eof_received()`` (return True to keep writing, as in asyncio;
    otherwise the connection is closed), ``connection_lost(exc)``, and if present
    ``pause_writing()``/``resume_writing()``.
    """

    __slots__ = (
        "_stack", "protocol", "local", "remote", "_key", "_lip", "_lport", "_rip", "_rport",
        "_hdr", "state", "config", "_listener",
        # send side
        "_iss", "_snd_una", "_snd_nxt", "_snd_max", "_snd_wnd", "_wl1", "_wl2", "_buf", "_buf_seq",
        "_fin_seq", "_fin_acked", "_my_mss", "_peer_mss", "_mss", "_cwnd", "_ssthresh", "_dupacks",
        "_recover", "_una_since",
        # RTT and timers
        "_srtt", "_rttvar", "_rto", "_backoff", "_rtt_seq", "_rtt_time", "_retries", "_syn_rexmit",
        "_rto_at", "_delack_at", "_tw_at", "_connect_at", "_fin2_at", "_last_rx", "_ka_probes",
        "_probes", "_soft_err", "_timer_at", "_timer_seq",
        # receive side
        "_irs", "_rcv_nxt", "_chunks", "_pending", "_ooo", "_ooo_fin", "_fin_rcvd", "_eof_pending",
        "_paused", "_adv_wnd", "_segs_unacked", "_ack_now",
        # app
        "_made", "_lost", "_exc", "_closing", "_read_closed", "_write_paused", "_dirty",
        "_pause_writing", "_resume_writing",
    )

    def __init__(self, stack: NetStack, protocol: Any, local: tuple[str, int], remote: tuple[str, int],
                 config: TcpConfig, iss: int, mtu: int) -> None:
        self._stack = stack
        self.protocol = protocol
        self.local = local
        self.remote = remote
        self._lip, self._lport = local
        self._rip, self._rport = remote
        self._key = (self._lip, self._lport, self._rip, self._rport)
        v6 = ":" in self._rip
        self._hdr = (IPV6_HEADER if v6 else IPV4_HEADER) + TCP_HEADER
        self.state = CLOSED
        self.config = config
        self._listener: TcpListener | None = None
        self._iss = iss
        self._snd_una = self._snd_nxt = self._snd_max = iss
        self._snd_wnd = 0
        self._wl1 = self._wl2 = 0
        self._buf = bytearray()
        self._buf_seq = iss + 1  # sequence number of _buf[0]: data starts after the SYN
        self._fin_seq: int | None = None
        self._fin_acked = False
        self._my_mss = mtu - self._hdr
        self._peer_mss = DEFAULT_MSS_V6 if v6 else DEFAULT_MSS_V4
        self._mss = min(self._my_mss, stack.path_mtu(self._rip) - self._hdr)
        self._cwnd = config.init_cwnd * self._mss
        self._ssthresh = 1 << 62
        self._dupacks = 0
        self._recover: int | None = None
        self._una_since = 0.0
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = config.rto_initial
        self._backoff = 0
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._retries = 0
        self._syn_rexmit = False
        self._rto_at: float | None = None
        self._delack_at: float | None = None
        self._tw_at: float | None = None
        self._connect_at: float | None = None
        self._fin2_at: float | None = None
        self._last_rx = 0.0
        self._ka_probes = 0
        self._probes = 0
        self._soft_err = 0
        self._timer_at: float | None = None
        self._timer_seq = 0
        self._irs = 0
        self._rcv_nxt = 0
        self._chunks: list[bytes] = []
        self._pending = 0
        self._ooo: dict[int, bytes] = {}
        self._ooo_fin: int | None = None
        self._fin_rcvd = False
        self._eof_pending = False
        self._paused = False
        self._adv_wnd = config.rcvbuf
        self._segs_unacked = 0
        self._ack_now = False
        self._made = False
        self._lost = False
        self._exc: BaseException | None = None
        self._closing = False
        self._read_closed = False
        self._write_paused = False
        self._dirty = False
        self._pause_writing: Callable[[], Any] | None = None
        self._resume_writing: Callable[[], Any] | None = None

    def __repr__(self) -> str:
        return f"<TcpConnection {self._lip}:{self._lport} -> {self._rip}:{self._rport} {self.state}>"

    # --- state machine ------------------------------------------------------------------------

    def _transition(self, event: str) -> None:
        if event in ABORTING:
            self.state = CLOSED
            return
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(f"tcp: no transition from {self.state} on {event}") from None

    # --- app API (asyncio Transport names) ---------------------------------------------------

    def write(self, data: bytes, now: float | None = None) -> None:
        if not data:
            return
        if self.state not in CAN_WRITE or self._fin_seq is not None:
            if self._lost or self.state == CLOSED:
                return  # like asyncio after the connection is lost: connection_lost tells
            raise BrokenPipeError(errno.EPIPE, "write after write_eof()/close()")
        buf = self._buf
        buf += data
        if not self._write_paused and len(buf) > self.config.write_high and self._pause_writing:
            self._write_paused = True
            self._pause_writing()
        self._mark()
        self._kick(now)

    def writelines(self, chunks: Any, now: float | None = None) -> None:
        self.write(b"".join(chunks), now)

    def write_eof(self, now: float | None = None) -> None:
        """Half-close: our FIN goes after the queued data; we can still receive."""
        if self._fin_seq is not None or self.state not in CAN_WRITE:
            return
        self._fin_seq = self._buf_seq + len(self._buf)
        if self.state in (ESTABLISHED, CLOSE_WAIT):
            self._transition(SHUTDOWN)
        self._mark()
        self._kick(now)

    def can_write_eof(self) -> bool:
        return True

    def close(self, now: float | None = None) -> None:
        """Graceful close: FIN after the queued data, no more data_received.  Like Linux,
        closing with unread received data resets the connection instead (RFC 2525 2.17)."""
        if self._closing:
            return
        self._closing = True
        self._read_closed = True
        if self.state in (SYN_SENT, SYN_RECEIVED, CLOSED) or self._pending:
            self.abort(now)
            return
        self.write_eof(now)
        if self.state == FIN_WAIT_2:  # already half-closed: now an orphan (tcp_fin_timeout)
            self._fin2_at = (self._stack._now if now is None else now) + self.config.fin_timeout
        self._mark()
        self._kick(now)

    def abort(self, now: float | None = None) -> None:
        """RST now; the peer gets ConnectionResetError; we get connection_lost(None)."""
        if self.state == CLOSED:
            self._closing = True
            return
        self._closing = True
        self._read_closed = True
        now = self._stack._now if now is None else now
        if self.state not in (SYN_SENT, TIME_WAIT):
            self._send_rst(now)
        self._chunks.clear()
        self._pending = 0
        self._eof_pending = False
        self._finish(None)
        self._kick(now)

    def is_closing(self) -> bool:
        return self._closing or self.state == CLOSED

    def pause_reading(self) -> None:
        """Stop data_received; received data then fills the receive window, which shrinks, so
        the sender stops (flow control)."""
        self._paused = True

    def resume_reading(self, now: float | None = None) -> None:
        if self._paused:
            self._paused = False
            self._mark()
            self._kick(now)

    def is_reading(self) -> bool:
        return not self._paused and not self._read_closed

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet acknowledged by the peer."""
        return len(self._buf)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.config.write_low, self.config.write_high

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.remote, "sockname": self.local, "socket": None}.get(name, default)

    def info(self) -> dict[str, Any]:
        """``ss -ti``-like: state, windows, RTT estimates."""
        return {"state": self.state, "local": self.local, "remote": self.remote, "mss": self._mss,
                "cwnd": self._cwnd, "ssthresh": min(self._ssthresh, 1 << 31), "snd_wnd": self._snd_wnd,
                "rcv_wnd": self._adv_wnd, "srtt": self._srtt, "rto": self._cur_rto(),
                "unacked": self._snd_max - self._snd_una, "write_buffer": len(self._buf),
                "pending_read": self._pending}

    # --- plumbing ----------------------------------------------------------------------------

    def _mark(self) -> None:
        if not self._dirty:
            self._dirty = True
            self._stack._dirty.append(self)

    def _kick(self, now: float | None) -> None:
        stack = self._stack
        if not stack._busy:
            stack._run(stack._now if now is None else now)

    def _cur_rto(self) -> float:
        return min(self._rto * (1 << self._backoff), self.config.rto_max)

    def _update_mss(self) -> bool:
        """Effective MSS = min(ours, the peer's option, path MTU - headers); True if it fell."""
        mss = min(self._my_mss, self._peer_mss, self._stack.path_mtu(self._rip) - self._hdr)
        fell = mss < self._mss
        self._mss = mss
        return fell

    def _finish(self, exc: BaseException | None) -> None:
        """Enter CLOSED: leave the demux table, stop timers; connection_lost follows in flush."""
        if self.state != CLOSED:
            self._transition(ABORT)
        if exc is not None and self._exc is None:
            self._exc = exc
        self._rto_at = self._delack_at = self._tw_at = self._connect_at = self._fin2_at = None
        self._stack._unregister(self)
        if self._listener is not None:
            self._listener.half_open.discard(self)
            self._listener = None
        self._mark()

    def _fail(self, code: int) -> None:
        if code == errno.ETIMEDOUT and self._soft_err:
            code = self._soft_err  # Linux reports the last ICMP soft error instead (sk_err_soft)
        if code == errno.ETIMEDOUT:
            self._stack.tcp_stats["timeouts"] += 1
        self._stack.tcp_stats["failed"] += 1
        self._finish(sock_error(code))

    # --- opening -----------------------------------------------------------------------------

    def connect(self, now: float, timeout: float | None) -> None:
        self._transition(CONNECT)
        if timeout is not None:
            self._connect_at = now + timeout
        self._send_syn(now)
        self._rearm()

    def passive_open(self, pkt: Packet, now: float) -> None:
        flags, seq, _, wnd, mss = pkt[6]
        self._last_rx = now
        self._transition(PASSIVE_SYN)
        self._irs = seq
        self._rcv_nxt = seq + 1
        if mss:
            self._peer_mss = mss
        self._update_mss()
        self._cwnd = self.config.init_cwnd * self._mss
        self._snd_wnd = wnd
        self._wl1 = seq
        self._send_syn(now)
        self._rearm()

    def _send_syn(self, now: float) -> None:
        """SYN (active) or SYN-ACK (SYN_RECEIVED), with our MSS option."""
        with_ack = self.state == SYN_RECEIVED
        wnd = self._rcv_wnd()
        self._adv_wnd = wnd
        pkt = tcp(self._lip, self._rip, self._lport, self._rport, SYN | (ACK if with_ack else 0),
                  self._iss & M32, self._rcv_nxt & M32 if with_ack else 0, wnd, b"", self._my_mss)
        self._snd_nxt = self._snd_max = self._iss + 1
        if not self._syn_rexmit:
            self._rtt_time = now
        self._rto_at = now + self._cur_rto()
        self._stack.tcp_stats["segments_out"] += 1
        self._stack._output(pkt, now)

    def _established(self, now: float) -> None:
        stack = self._stack
        stack.tcp_stats["established"] += 1
        if not self._syn_rexmit:
            self._rtt_sample(now - self._rtt_time)
        elif self._srtt is None:
            self._rto = max(3.0, self.config.rto_min)  # RFC 6298 5.7
        self._rto_at = self._connect_at = None
        self._backoff = self._retries = 0
        self._una_since = now
        self._last_rx = now
        self._cwnd = self.config.init_cwnd * self._mss
        if self._listener is not None:
            self.protocol = self._listener.accept(self)
        if self._fin_seq is not None:  # write_eof() before the handshake completed
            self._transition(SHUTDOWN)
        self._made = True
        self._pause_writing = getattr(self.protocol, "pause_writing", None)
        self._resume_writing = getattr(self.protocol, "resume_writing", None)
        self._mark()
        self.protocol.connection_made(self)

    # --- receiving ---------------------------------------------------------------------------

    def segment(self, pkt: Packet, now: float) -> None:
        self._last_rx = now
        self._ka_probes = 0
        _RECEIVE[self.state](self, pkt, now)

    def _rcv_closed(self, pkt: Packet, now: float) -> None:
        self._stack.tcp_reset_reply(pkt, now)

    def _rcv_syn_sent(self, pkt: Packet, now: float) -> None:
        """RFC 9293 3.10.7.3."""
        flags, seq, ack, wnd, mss = pkt[6]
        if flags & ACK and ack != (self._iss + 1) & M32:
            if not flags & RST:
                self._send_rst_seq(ack, now)
            return
        if flags & RST:
            if flags & ACK:
                self._stack.tcp_stats["resets_received"] += 1
                self._fail(errno.ECONNREFUSED)
            return
        if not flags & SYN:
            return
        self._irs = seq
        self._rcv_nxt = seq + 1
        if mss:
            self._peer_mss = mss
        self._update_mss()
        self._snd_wnd = wnd
        self._wl1 = seq
        if flags & ACK:
            self._snd_una = self._iss + 1
            self._wl2 = self._snd_una
            self._transition(RCV_SYN_ACK)
            self._ack_now = True
            self._established(now)
        else:
            self._transition(RCV_SYN)  # simultaneous open: answer with a SYN-ACK
            self._send_syn(now)
            self._rearm()

    def _rcv_syn_received(self, pkt: Packet, now: float) -> None:
        flags, seq, ack, wnd, _ = pkt[6]
        if flags & RST:
            if _unwrap(seq, self._rcv_nxt) == self._rcv_nxt:
                self._stack.tcp_stats["resets_received"] += 1
                if self._listener is not None:
                    self._finish(None)  # back to LISTEN: the listener simply forgets it
                else:
                    self._fail(errno.ECONNREFUSED)
            return
        if flags & SYN and not flags & ACK:
            if seq == self._irs & M32:
                self._send_syn(now)  # the peer lost our SYN-ACK
                self._rearm()
            return
        if flags & SYN and seq != self._irs & M32:
            return
        # A plain ACK, or in a simultaneous open the peer's SYN-ACK (RFC 9293 figure 8).
        if not flags & ACK:
            return
        if ack != (self._iss + 1) & M32:
            self._send_rst_seq(ack, now)
            return
        self._snd_una = self._iss + 1
        self._snd_wnd = wnd
        self._wl1 = _unwrap(seq, self._rcv_nxt)
        self._wl2 = self._snd_una
        self._transition(RCV_ACK_OF_SYN)
        self._established(now)
        if self.state != CLOSED and (pkt[7] or flags & FIN):
            self._rcv_synchronized(pkt, now)

    def _rcv_synchronized(self, pkt: Packet, now: float) -> None:
        """ESTABLISHED and the closing states: RFC 9293 3.10.7.4, checks in its order."""
        flags, seq_w, ack_w, wnd, _ = pkt[6]
        nxt = self._rcv_nxt
        seq = _unwrap(seq_w, nxt)
        payload = pkt[7]
        if flags & (RST | SYN):
            self._rcv_rst_or_syn(flags, seq, now)
            return
        if seq < nxt and not payload and not flags & FIN:
            self._ack_now = True  # unacceptable (a keepalive or window probe): answer it
            self._mark()
            return
        if not flags & ACK:
            return
        if not self._rcv_ack(seq, ack_w, wnd, not payload and not flags & FIN, now):
            return
        if payload or flags & FIN:
            self._rcv_data(seq, payload, flags & FIN, now)

    def _rcv_rst_or_syn(self, flags: int, seq: int, now: float) -> None:
        """RFC 5961: a RST resets only at exactly RCV.NXT; in the window, or any SYN, earns a
        challenge ACK (so blind injection fails, and a stale peer learns where we are)."""
        nxt = self._rcv_nxt
        if flags & RST:
            if seq == nxt:
                self._stack.tcp_stats["resets_received"] += 1
                code = RESET_ERRNO.get(self.state, errno.ECONNRESET)
                if self.state in (CLOSING, LAST_ACK) or self._read_closed:
                    self._finish(None)
                else:
                    self._finish(sock_error(code))
                return
            if not nxt <= seq < nxt + max(self._adv_wnd, 1):
                return
        self._ack_now = True
        self._mark()

    def _rcv_ack(self, seq: int, ack_w: int, wnd: int, pure: bool, now: float) -> bool:
        """Process SEG.ACK; False if the segment must be dropped."""
        una = self._snd_una
        ack = _unwrap(ack_w, una)
        if ack > self._snd_max:
            self._ack_now = True  # acks something we never sent: re-sync, drop
            self._mark()
            return False
        old_wnd = self._snd_wnd
        if ack >= una:
            self._probes = 0  # the peer is alive (Linux tcp_ack: icsk_probes_out = 0)
            if seq > self._wl1 or (seq == self._wl1 and ack >= self._wl2):
                self._snd_wnd = wnd  # RFC 9293 SND.WL1/SND.WL2: only from newer segments
                self._wl1 = seq
                self._wl2 = ack
                if wnd > old_wnd:
                    if old_wnd == 0:
                        self._backoff = 0  # the window opened: stop the persist backoff
                    self._mark()
        if ack > una:
            self._new_ack(ack, now)
        elif ack == una and pure and una < self._snd_max and wnd == old_wnd:
            self._dupack(now)  # RFC 5681 section 2's five conditions
        return self.state != CLOSED

    def _new_ack(self, ack: int, now: float) -> None:
        acked = ack - self._snd_una
        self._snd_una = ack
        if ack > self._snd_nxt:
            self._snd_nxt = ack  # after a go-back-N the peer may ack past what we resent
        buf = self._buf
        n = min(ack, self._buf_seq + len(buf)) - self._buf_seq
        if n > 0:
            del buf[:n]
            self._buf_seq += n
        if self._rtt_seq is not None and ack >= self._rtt_seq:
            self._rtt_sample(now - self._rtt_time)
            self._rtt_seq = None
        self._backoff = self._retries = 0
        self._una_since = now
        mss = self._mss
        recover = self._recover
        if recover is not None:
            if ack >= recover:
                self._cwnd = self._ssthresh  # full ACK: leave fast recovery (RFC 6582 3.2 step 3)
                self._recover = None
            else:  # partial ACK: the next hole is lost too; resend it, deflate
                self._retransmit_head(now)
                self._cwnd = max(self._cwnd - acked + mss, mss)
        elif self._cwnd < self._ssthresh:
            self._cwnd += acked  # slow start (stretch ACKs count in full, like Linux)
        else:
            self._cwnd += max(1, mss * mss // self._cwnd)  # congestion avoidance: ~1 MSS per RTT
        self._dupacks = 0
        self._rto_at = None if ack >= self._snd_max else now + self._cur_rto()  # RFC 6298 5.2, 5.3
        fin = self._fin_seq
        if fin is not None and not self._fin_acked and ack > fin:
            self._fin_acked = True
            self._transition(RCV_ACK_OF_FIN)
            self._after_fin_state(now)
        if self._write_paused and len(buf) <= self.config.write_low:
            self._write_paused = False
            if self._resume_writing is not None:
                self._resume_writing()
        self._mark()

    def _dupack(self, now: float) -> None:
        self._dupacks += 1
        mss = self._mss
        if self._recover is not None:
            self._cwnd += mss  # inflate for each segment that left the network
            self._mark()
        elif self._dupacks == 3:  # RFC 5681 3.2 fast retransmit
            flight = self._snd_max - self._snd_una
            self._ssthresh = max(flight // 2, 2 * mss)
            self._cwnd = self._ssthresh + 3 * mss
            self._recover = self._snd_max
            self._stack.tcp_stats["fast_retransmits"] += 1
            self._retransmit_head(now)
            self._rto_at = now + self._cur_rto()

    def _rcv_data(self, seq: int, payload: bytes, fin: int, now: float) -> None:
        if self.state not in RECEIVES_DATA:
            self._ack_now = True  # the peer's FIN came already: a retransmission, re-ACK
            self._mark()
            return
        nxt = self._rcv_nxt
        n = len(payload)
        if self._read_closed and n and seq + n > nxt:
            # Data for a socket the app closed: Linux answers with a RST (tcp_rcv_state_process).
            self._send_rst(now)
            self._finish(None)
            return
        if seq != nxt:
            if seq > nxt:
                self._ooo_store(seq, payload, fin, now)
                return
            cut = nxt - seq
            if cut >= n and not (fin and cut == n):
                self._stack.tcp_stats["dup_segments"] += 1
                self._ack_now = True  # a duplicate: ACK at once (RFC 5681 4.2)
                self._mark()
                return
            payload = payload[cut:]
            n -= cut
        room = self.config.rcvbuf - self._pending
        if n > room:
            payload = payload[:max(room, 0)]
            n = len(payload)
            fin = 0  # the FIN lies beyond what we take
            self._ack_now = True
        if n:
            self._chunks.append(payload)
            self._pending += n
            nxt += n
            self._segs_unacked += 1
        self._rcv_nxt = nxt
        if self._ooo:
            self._ooo_pull()
        if fin or self._ooo_fin == self._rcv_nxt:
            self._rcv_fin(now)
        self._mark()

    def _ooo_store(self, seq: int, payload: bytes, fin: int, now: float) -> None:
        stats = self._stack.tcp_stats
        if seq < self._rcv_nxt + self.config.rcvbuf - self._pending:
            stats["ooo_segments"] += 1
            old = self._ooo.get(seq)
            if old is None or len(old) < len(payload):
                self._ooo[seq] = payload
            if fin:
                self._ooo_fin = seq + len(payload)
        # Out of order: a duplicate ACK right away, one per segment, even inside a batch (GRO
        # does not merge out-of-order segments): the sender counts them (RFC 5681 4.2, 3.2).
        self._send_ack(now)
        self._mark()

    def _ooo_pull(self) -> None:
        ooo = self._ooo
        nxt = self._rcv_nxt
        while ooo:
            seg = ooo.pop(nxt, None)
            if seg is None:  # not at a boundary we stored: look for an overlap
                for start in sorted(ooo):
                    if start > nxt:
                        break
                    data = ooo.pop(start)
                    if start + len(data) > nxt:
                        seg = data[nxt - start:]
                        break
                if seg is None:
                    break
            self._chunks.append(seg)
            self._pending += len(seg)
            nxt += len(seg)
        self._rcv_nxt = nxt
        self._ack_now = True  # a hole was filled: ACK at once (RFC 5681 4.2)

    def _rcv_fin(self, now: float) -> None:
        if self._fin_rcvd:
            return
        self._fin_rcvd = True
        self._ooo_fin = None
        self._rcv_nxt += 1
        self._eof_pending = True
        self._ack_now = True
        self._transition(RCV_FIN)
        self._after_fin_state(now)

    def _after_fin_state(self, now: float) -> None:
        state = self.state
        if state == TIME_WAIT:
            self._rto_at = self._delack_at = self._fin2_at = None
            self._tw_at = now + self.config.time_wait
        elif state == CLOSED:  # LAST_ACK got its ACK
            self._finish(None)
        elif state == FIN_WAIT_2 and self._closing:
            self._fin2_at = now + self.config.fin_timeout  # orphaned: tcp_fin_timeout

    def _rcv_time_wait(self, pkt: Packet, now: float) -> None:
        flags, seq_w, _, _, _ = pkt[6]
        if flags & RST:
            self._finish(None)  # Linux's default (RFC 1337 is net.ipv4.tcp_rfc1337=0)
            return
        if flags & SYN and not flags & ACK and _unwrap(seq_w, self._rcv_nxt) > self._rcv_nxt:
            # A new incarnation (RFC 9293 3.10.7.4 note / Linux TCP_TW_SYN): let a listener take it.
            self._finish(None)
            self._stack._tcp_input(pkt, now)
            return
        if flags & FIN:
            self._tw_at = now + self.config.time_wait  # our last ACK was lost: restart 2MSL
        self._ack_now = True
        self._mark()

    # --- sending -----------------------------------------------------------------------------

    def _rcv_wnd(self) -> int:
        wnd = self.config.rcvbuf - self._pending
        return wnd if wnd > 0 else 0

    def _xmit(self, flags: int, seq: int, payload: bytes, now: float) -> None:
        wnd = self.config.rcvbuf - self._pending
        if wnd < 0:
            wnd = 0
        self._adv_wnd = wnd
        stack = self._stack
        stack.tcp_stats["segments_out"] += 1
        stack._output(tcp(self._lip, self._rip, self._lport, self._rport, flags, seq & M32,
                          self._rcv_nxt & M32, wnd, payload), now)
        # Losing a segment to a hook, a missing route or the MTU is what the RTO is for.
        self._segs_unacked = 0
        self._ack_now = False
        self._delack_at = None

    def _send_rst(self, now: float) -> None:
        self._stack.tcp_stats["resets_sent"] += 1
        self._stack._output(tcp(self._lip, self._rip, self._lport, self._rport, RST | ACK,
                                self._snd_max & M32, self._rcv_nxt & M32, 0), now)

    def _send_rst_seq(self, seq_w: int, now: float) -> None:
        self._stack.tcp_stats["resets_sent"] += 1
        self._stack._output(tcp(self._lip, self._rip, self._lport, self._rport, RST, seq_w, 0, 0), now)

    def _send_data(self, now: float) -> None:
        """Send what the windows allow: data from SND.NXT, then the FIN."""
        nxt = self._snd_nxt
        una = self._snd_una
        bseq = self._buf_seq
        buf = self._buf
        end = bseq + len(buf)
        fin = self._fin_seq
        snd_max = self._snd_max
        start = nxt
        if nxt < end:
            mss = self._mss
            wnd = self._snd_wnd if self._snd_wnd < self._cwnd else self._cwnd
            limit = una + wnd
            xmit = self._xmit
            with memoryview(buf) as view:
                while nxt < end:
                    room = limit - nxt
                    if room <= 0:
                        break
                    n = end - nxt
                    if n > mss:
                        n = mss
                    if n > room:
                        if nxt > una:
                            break  # RFC 1122 4.2.3.4 sender SWS avoidance: an ACK will come
                        n = room
                    off = nxt - bseq
                    last = nxt + n == fin
                    xmit(ACK | PSH | FIN if last else ACK, nxt, bytes(view[off:off + n]), now)
                    nxt += n + 1 if last else n
        if fin is not None and nxt == fin:
            self._xmit(ACK | FIN, nxt, b"", now)
            nxt += 1
        if nxt == start:
            return
        if start < snd_max:
            self._stack.tcp_stats["retransmits"] += (min(nxt, snd_max) - start + self._mss - 1) // self._mss
        if nxt > snd_max:
            if self._rtt_seq is None and start >= snd_max:
                self._rtt_seq = nxt  # time one segment per RTT (Karn: only fresh data)
                self._rtt_time = now
            if una == snd_max:
                self._una_since = now
            self._snd_max = nxt
        self._snd_nxt = nxt
        if self._rto_at is None:
            self._rto_at = now + self._cur_rto()

    def _retransmit_head(self, now: float) -> None:
        """Resend the first unacknowledged segment (fast retransmit, partial ACK)."""
        una = self._snd_una
        bseq = self._buf_seq
        end = bseq + len(self._buf)
        n = min(self._mss, end - una)
        fin = self._fin_seq
        self._rtt_seq = None  # Karn: no sample across a retransmission
        self._stack.tcp_stats["retransmits"] += 1
        if n > 0:
            last = una + n == fin
            off = una - bseq
            self._xmit(ACK | PSH | FIN if last else ACK, una, bytes(self._buf[off:off + n]), now)
        elif fin is not None and una == fin:
            self._xmit(ACK | FIN, una, b"", now)

    def flush(self, now: float) -> None:
        """Once per entry point for each touched connection: deliver to the app, send what the
        windows allow, ACK, report the end, re-arm the timer."""
        if self.state == CLOSED and self._lost:
            return
        if not self._lost:
            self._deliver(now)
        state = self.state
        if state in SENDS_DATA:
            if self._snd_nxt < self._buf_seq + len(self._buf) or (
                    self._fin_seq is not None and self._snd_nxt == self._fin_seq):
                self._send_data(now)
            if self._ack_now or self._segs_unacked >= 2:
                self._send_ack(now)
        elif state in (FIN_WAIT_2, TIME_WAIT) and (self._ack_now or self._segs_unacked):
            self._send_ack(now)  # the peer waits on these: no delayed ACK
        if self._segs_unacked and self._delack_at is None:
            self._delack_at = now + self.config.delack
        if self._should_report_lost():
            self._report_lost()
        self._rearm()

    def _deliver(self, now: float) -> None:
        """Received data (one joined chunk per entry point) and the EOF, unless paused."""
        proto = self.protocol
        if self._chunks and not self._paused:
            chunks = self._chunks
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._pending = 0
            if self._adv_wnd < self.config.rcvbuf // 2:
                self._ack_now = True  # the window reopened: tell the sender (RFC 1122 4.2.3.3)
            if not self._read_closed:
                proto.data_received(data)
        if self._eof_pending and not self._chunks and not self._paused:
            self._eof_pending = False
            if not self._read_closed:
                keep = proto.eof_received()
                if not keep and not self._closing and self.state != CLOSED:
                    self.close(now)

    def _send_ack(self, now: float) -> None:
        self._xmit(ACK, self._snd_max, b"", now)

    def _should_report_lost(self) -> bool:
        if self._lost:
            return False
        state = self.state
        if state == CLOSED:
            return self._exc is not None or self._read_closed or (not self._chunks and not self._eof_pending)
        if state == TIME_WAIT:
            return not self._chunks and not self._eof_pending
        return state == FIN_WAIT_2 and self._closing  # after close(), the rest is the kernel's

    def _report_lost(self) -> None:
        self._lost = True
        self._chunks.clear()
        proto = self.protocol
        if proto is None:
            return  # a passive connection that never reached the app
        exc = self._exc
        proto.connection_lost(exc)

    # --- timers ------------------------------------------------------------------------------

    def _rearm(self) -> None:
        if self.state == CLOSED:
            return
        at = self._rto_at
        if at is None and self._snd_wnd == 0 and self._snd_una == self._snd_max and (
                self._snd_nxt < self._buf_seq + len(self._buf)) and self.state in SENDS_DATA:
            at = self._rto_at = self._stack._now + self._cur_rto()  # persist timer
        for t in (self._delack_at, self._tw_at, self._connect_at, self._fin2_at, self._ka_deadline()):
            if t is not None and (at is None or t < at):
                at = t
        if at is not None:
            self._stack._timers.arm(self, at)

    def _ka_deadline(self) -> float | None:
        ka = self.config.keepalive
        if ka is None or self.state not in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2):
            return None
        if self._snd_una != self._snd_max:
            return None  # data in flight: the retransmission timer watches the peer
        return self._last_rx + ka[0] + self._ka_probes * ka[1]

    def on_timer(self, now: float) -> None:
        if self.state == CLOSED:
            return
        if self._connect_at is not None and now >= self._connect_at and self.state in (SYN_SENT, SYN_RECEIVED):
            self._fail(errno.ETIMEDOUT)  # the connect timeout the app asked for
            return
        if self._tw_at is not None and now >= self._tw_at:
            self._transition(TW_EXPIRED)
            self._finish(None)
            return
        if self._fin2_at is not None and now >= self._fin2_at and self.state == FIN_WAIT_2:
            self._finish(None)
            return
        if self._rto_at is not None and now >= self._rto_at:
            self._rto_at = None
            self._on_rto(now)
            if self.state == CLOSED:
                return
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self._ack_now = True
            self._mark()
        ka = self._ka_deadline()
        if ka is not None and now >= ka:
            self._keepalive(now)
            if self.state == CLOSED:
                return
        self._rearm()

    def _on_rto(self, now: float) -> None:
        cfg = self.config
        stats = self._stack.tcp_stats
        state = self.state
        if state in (SYN_SENT, SYN_RECEIVED):
            if self._retries >= (cfg.syn_retries if state == SYN_SENT else cfg.synack_retries):
                if self._listener is not None:
                    self._finish(None)  # a half-open connection nobody has seen
                else:
                    self._fail(errno.ETIMEDOUT)
                return
            self._retries += 1
            self._backoff += 1
            self._syn_rexmit = True
            stats["retransmits"] += 1
            self._send_syn(now)
            return
        if state not in SENDS_DATA:
            return
        if self._snd_una == self._snd_max:
            if self._snd_wnd == 0 and self._snd_nxt < self._buf_seq + len(self._buf):
                self._window_probe(now)
            return
        if self._retries >= cfg.retries2 or (
                cfg.user_timeout is not None and now - self._una_since >= cfg.user_timeout):
            self._fail(errno.ETIMEDOUT)
            return
        self._retries += 1
        self._backoff += 1
        mss = self._mss
        self._ssthresh = max((self._snd_max - self._snd_una) // 2, 2 * mss)  # RFC 5681 (4)
        self._cwnd = mss
        self._recover = None
        self._dupacks = 0
        self._rtt_seq = None
        self._snd_nxt = self._snd_una  # go back N: no SACK, so resend from the first hole
        self._send_data(now)
        self._rto_at = now + self._cur_rto()

    def _window_probe(self, now: float) -> None:
        """RFC 9293 3.8.6.1: probe a zero window; backs off like the RTO, gives up like it."""
        self._probes += 1
        if self._probes > self.config.retries2:
            self._fail(errno.ETIMEDOUT)
            return
        self._stack.tcp_stats["window_probes"] += 1
        self._backoff += 1
        self._xmit(ACK, self._snd_una - 1, b"", now)  # an old sequence number forces an ACK
        self._rto_at = now + self._cur_rto()

    def _keepalive(self, now: float) -> None:
        ka = self.config.keepalive
        assert ka is not None
        if self._ka_probes >= ka[2]:
            self._fail(errno.ETIMEDOUT)
            return
        self._ka_probes += 1
        self._stack.tcp_stats["keepalive_probes"] += 1
        self._xmit(ACK, self._snd_una - 1, b"", now)

    def _rtt_sample(self, r: float) -> None:
        """RFC 6298 2.2-2.4."""
        if r < 0:
            return
        if self._srtt is None:
            self._srtt = r
            self._rttvar = r / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - r)
            self._srtt = 0.875 * self._srtt + 0.125 * r
        cfg = self.config
        self._rto = min(max(self._srtt + max(CLOCK_GRANULARITY, 4 * self._rttvar), cfg.rto_min), cfg.rto_max)

    # --- ICMP --------------------------------------------------------------------------------

    def icmp_error(self, code: int, too_big: bool, now: float) -> None:
        if too_big:
            self.pmtu_changed(now)
            return
        if self.state == SYN_SENT:
            self._fail(code)  # Linux tcp_v4_err: a hard error aborts a connect at once
        elif self.state == SYN_RECEIVED and self._listener is not None:
            self._finish(None)
        else:
            self._soft_err = code  # reported only if the connection later times out
        self._kick(now)

    def pmtu_changed(self, now: float) -> None:
        """A packet-too-big lowered the path MTU: shrink the MSS and resend what was cut
        (Linux tcp_simple_retransmit; no congestion response, RFC 1191 6.5)."""
        if self._update_mss() and self.state in SENDS_DATA and self._snd_una < self._snd_max:
            self._snd_nxt = self._snd_una
            self._rtt_seq = None
            self._mark()


_RECEIVE: dict[str, Callable[[TcpConnection, Packet, float], None]] = {
    CLOSED: TcpConnection._rcv_closed,
    SYN_SENT: TcpConnection._rcv_syn_sent,
    SYN_RECEIVED: TcpConnection._rcv_syn_received,
    ESTABLISHED: TcpConnection._rcv_synchronized,
    FIN_WAIT_1: TcpConnection._rcv_synchronized,
    FIN_WAIT_2: TcpConnection._rcv_synchronized,
    CLOSE_WAIT: TcpConnection._rcv_synchronized,
    CLOSING: TcpConnection._rcv_synchronized,
    LAST_ACK: TcpConnection._rcv_synchronized,
    TIME_WAIT: TcpConnection._rcv_time_wait,
}

"""asyncio over the sans-IO netstack: the loop glue and real ``asyncio`` transports.

:class:`AsyncStack` drives one :class:`~agents.netstack.NetStack` from an asyncio loop the way
aioquic's ``asyncio/protocol.py`` drives a ``QuicConnection``: every entry point (packets in,
an app call, the timer) ends in :meth:`AsyncStack.kick`, which schedules ONE service call per
loop iteration; that call hands the stack's output to the sink (the VM's broker port) and
re-arms the one timer at ``stack.next_deadline()``.  Two places hand output over sooner, still
batched: the end of a receive burst (:meth:`AsyncStack.burst_end`: the socket is drained, so
whatever the burst caused leaves at once instead of a loop iteration later) and an ICMP echo
request (:meth:`AsyncStack.push`: a ping socket's ``sendmsg`` transmits in the call).

On top of it sits the app API a program on a real VM would find in asyncio:
``open_connection``/``start_server`` (``asyncio.StreamReader``/``StreamWriter`` over
:class:`StackTransport`, a real ``asyncio.Transport``, so h11 and ``ssl`` run on top),
``create_datagram_endpoint`` (:class:`StackDatagramTransport`) and ``ping``.

Errors are the socket errors a kernel gives: ``ConnectionRefusedError``, ``TimeoutError``,
``ConnectionResetError``, ``OSError(EHOSTUNREACH / ENETUNREACH / EMSGSIZE)``; an ICMP error
about a ping is :class:`PingError` (the netstack's ``IcmpError``: who answered, type, code).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from agents.netstack.errors import IcmpError as PingError
from agents.netstack.errors import sock_error
from broker.packets import PacketError, canonical_ip

__all__ = [
    "AsyncStack", "NetAPI", "PingError", "PingReply", "Pinger", "StackDatagramTransport",
    "StackServer", "StackTransport",
]

Sink = Callable[[list[tuple[int, str, Any]]], None]
Address = tuple[str, int]

DEFAULT_HIGH_WATER = 256 * 1024
DEFAULT_LOW_WATER = 64 * 1024


class PingReply(NamedTuple):
    src: str
    seq: int
    ttl: int
    # seconds (perf_counter: uvloop's loop.time() has 1 ms resolution), from just before the
    # send to the reply's arrival at the stack (see Pinger.echo_reply)
    rtt: float
    size: int  # ICMP bytes (header + payload), what ping prints as "64 bytes from"


class NetAPI(Protocol):
    """What apps and tools may use: the asyncio-style network API of a VM."""

    async def open_connection(self, host: str, port: int, *, timeout: float | None = None,
                              limit: int = 2 ** 16) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    async def start_server(self, client_connected_cb: Any, host: str = "0.0.0.0", port: int = 0, *,
                           backlog: int = 128, limit: int = 2 ** 16) -> Any: ...

    async def create_datagram_endpoint(self, protocol_factory: Callable[[], Any], *,
                                       local_addr: Address | None = None,
                                       remote_addr: Address | None = None) -> Any: ...

    def pinger(self) -> Pinger: ...

    async def ping(self, dst: str, seq: int = 1, timeout: float = 1.0, *, size: int = 56,
                   ttl: int = 64) -> PingReply: ...


def _address(host: str, port: int) -> Address:
    """Step 1 has no resolver: hosts are addresses (a name fails as getaddrinfo would)."""
    try:
        ip = canonical_ip(host, "host")
    except PacketError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise OverflowError("port must be 0-65535.")
    return ip, port


# --- the loop glue -------------------------------------------------------------------------


class AsyncStack:
    """One NetStack on one asyncio loop: output flushing, the timer, the app API."""

    def __init__(self, stack: Any, sink: Sink, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.stack = stack
        self.loop = loop or asyncio.get_running_loop()
        self._sink = sink
        self._scheduled: asyncio.Handle | None = None  # the service call of this iteration
        self._in_burst = False  # a receive burst is running: its burst_end services the stack
        # perf_counter() when the packets now being received entered the stack: their
        # SO_TIMESTAMP (the kernel stamps an skb in netif_receive_skb, before IP input).
        self.rx_stamp = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self.paused_writers: set[StackTransport] = set()
        stack.on_output = self.kick

    # -- entry points --

    def receive(self, nic: int, pkts: Any) -> None:
        """Packets in; the output they cause leaves at the next loop iteration."""
        self.rx_stamp = time.perf_counter()
        self.stack.receive(nic, pkts, self.loop.time())
        self.kick()

    def receive_burst(self, nic: int, pkts: Any) -> None:
        """Packets in, one message of a receive burst: the output waits for :meth:`burst_end`,
        which the caller promises (one sink call for the whole burst)."""
        self._in_burst = True
        self.rx_stamp = time.perf_counter()
        self.stack.receive(nic, pkts, self.loop.time())

    def burst_end(self) -> None:
        """The receive burst is over (its socket is drained): service the stack now."""
        if self._in_burst:
            self._in_burst = False
            self._service_now()

    def kick(self) -> None:
        """Call after every entry point into the stack: one service call per loop iteration
        (inside a receive burst, the burst's end is that call)."""
        if self._scheduled is None and not self._in_burst:
            self._scheduled = self.loop.call_soon(self._on_scheduled)

    def push(self) -> None:
        """Service the stack now: the output leaves before this returns, like ``sendmsg(2)``
        on a ping socket, which transmits in the call.  Inside a receive burst the output
        leaves with the burst's (burst_end)."""
        if not self._in_burst:
            self._service_now()

    def now(self) -> float:
        return self.loop.time()

    def _on_scheduled(self) -> None:
        self._scheduled = None
        self._service()

    def _service_now(self) -> None:
        """Service now, in place of this iteration's scheduled call (none runs twice: after a
        send, a redundant pass would compete with the packet's flight for the CPU)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._service()

    def _service(self) -> None:
        if self._closed:
            return
        out = self.stack.take_output()
        if out:
            self._sink(out)
        if self.paused_writers:
            for transport in list(self.paused_writers):
                transport._maybe_resume_protocol()
        deadline = self.stack.next_deadline()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = None if deadline is None else self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        due = self._timer_at
        self._timer = None
        self._timer_at = None
        # uvloop's clock has 1 ms granularity and may fire a hair early: the timer is due
        # by the loop's own clock, so the stack sees at least the deadline it asked for.
        now = self.loop.time()
        self.stack.handle_timers(now if due is None or now >= due else due)
        self.kick()

    def flush(self) -> None:
        """Hand pending output to the sink now (shutdown: before the NICs detach)."""
        out = self.stack.take_output()
        if out:
            self._sink(out)

    def close(self) -> None:
        """The VM is going away: every connection is reset (the peers learn at once), the
        last output leaves, the timer stops."""
        if self._closed:
            return
        self.stack.close(self.loop.time())
        self.flush()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- interface addresses (claims) --

    def add_address(self, nic: int, ip: str) -> None:
        self.stack.add_address(nic, ip)
        self.kick()

    def remove_address(self, nic: int, ip: str) -> None:
        self.stack.remove_address(nic, ip)
        self.kick()

    def stack_stats(self) -> Any:
        stats = getattr(self.stack, "stats", None)
        return stats() if callable(stats) else {}

    # -- the app API --

    async def open_connection(self, host: str, port: int, *, timeout: float | None = None,
                              limit: int = 2 ** 16) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Like ``asyncio.open_connection``; ``timeout`` bounds the handshake."""
        remote = _address(host, port)
        loop = self.loop
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = await self.create_connection(lambda: protocol, remote, timeout=timeout)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def create_connection(self, protocol_factory: Callable[[], asyncio.Protocol], remote: Address, *,
                                timeout: float | None = None) -> StackTransport:
        """Like ``loop.create_connection`` for a netstack TCP connection."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        transport = StackTransport(self, protocol_factory(), waiter)
        conn = self.stack.tcp_connect(transport, remote, self.loop.time(), timeout=timeout)
        if transport._conn is None:
            transport._conn = conn  # not made yet: kept so that a cancelled connect can abort
        self.kick()
        try:
            await waiter
        except asyncio.CancelledError:
            transport.abort()
            raise
        return transport

    async def start_server(self, client_connected_cb: Any, host: str = "0.0.0.0", port: int = 0, *,
                           backlog: int = 128, limit: int = 2 ** 16) -> StackServer:
        """Like ``asyncio.start_server``: ``client_connected_cb(reader, writer)`` per connection."""
        loop = self.loop

        def factory() -> asyncio.Protocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(factory, host, port, backlog=backlog)

    async def create_server(self, protocol_factory: Callable[[], asyncio.Protocol], host: str = "0.0.0.0",
                            port: int = 0, *, backlog: int = 128) -> StackServer:
        local = _address(host, port)
        listener = self.stack.tcp_listen(lambda: StackTransport(self, protocol_factory()), local, backlog=backlog)
        return StackServer(self, listener, local)

    async def create_datagram_endpoint(self, protocol_factory: Callable[[], Any], *,
                                       local_addr: Address | None = None,
                                       remote_addr: Address | None = None) -> tuple[StackDatagramTransport, Any]:
        """Like ``loop.create_datagram_endpoint``; ``remote_addr`` makes it a connected socket."""
        local = _address(*local_addr) if local_addr else ("0.0.0.0", 0)
        remote = _address(*remote_addr) if remote_addr else None
        if remote is not None and local_addr is None and ":" in remote[0]:
            local = ("::", 0)
        src = None
        if remote is not None:  # connect(2): fails without a route, fixes the source address
            route = self.stack.route(remote[0])
            if route is None:
                raise sock_error(errno.ENETUNREACH)
            src = route["src"]
        protocol = protocol_factory()
        transport = StackDatagramTransport(self, protocol, remote)
        ep = transport._ep = self.stack.udp_open(transport, local=local)
        transport._sockname = (src if src and ep.local[0] in ("0.0.0.0", "::") else ep.local[0], ep.local[1])
        protocol.connection_made(transport)
        return transport, protocol

    def pinger(self) -> Pinger:
        return Pinger(self)

    async def ping(self, dst: str, seq: int = 1, timeout: float = 1.0, *, size: int = 56,
                   ttl: int = 64) -> PingReply:
        pinger = Pinger(self)
        try:
            return await pinger.ping(dst, seq, timeout, size=size, ttl=ttl)
        finally:
            pinger.close()


# --- TCP -----------------------------------------------------------------------------------


class StackTransport(asyncio.Transport):
    """A real ``asyncio.Transport`` over one netstack TCP connection.

    It is also the netstack-side protocol of that connection: the stack calls
    ``connection_made/data_received/eof_received/connection_lost`` on it and it forwards them
    to the asyncio protocol, adding what asyncio promises on top: flow control on both sides
    and ``connection_lost`` exactly once.
    """

    def __init__(self, host: AsyncStack, protocol: asyncio.BaseProtocol,
                 waiter: asyncio.Future[None] | None = None) -> None:
        super().__init__()
        self._host = host
        self._protocol: Any = protocol
        self._waiter = waiter
        self._conn: Any = None
        self._closing = False
        self._lost = False
        self._eof_written = False
        self._reading_paused = False
        self._writing_paused = False
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_LOW_WATER
        self._extra: dict[str, Any] = {}
        self._made = False

    # -- netstack protocol side --

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        self._extra = {"peername": tuple(conn.remote), "sockname": tuple(conn.local), "socket": None}
        self._made = True
        self._protocol.connection_made(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self._lost:
            self._protocol.data_received(data)

    def eof_received(self) -> bool:
        if not self._lost and not self._protocol.eof_received():
            self.close()  # asyncio: a protocol that returns false has the transport closed
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():  # the handshake failed
            waiter.set_exception(exc if exc is not None else sock_error(errno.ECONNRESET))
            self._lost = True
            return
        self._lose(exc)

    def _lose(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._host.paused_writers.discard(self)
        if self._made:  # only a protocol that heard connection_made hears connection_lost
            self._host.loop.call_soon(self._protocol.connection_lost, exc)

    # -- asyncio transport side: reading --

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        """The stack stops delivering; what arrives fills the receive window, which shrinks
        until the sender stops (TCP flow control does the rest)."""
        if self._reading_paused or self._closing:
            return
        self._reading_paused = True
        if self._conn is not None:
            self._conn.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused or self._closing:
            return
        self._reading_paused = False
        if self._conn is not None:
            self._conn.resume_reading(self._host.loop.time())
            self._host.kick()

    # -- asyncio transport side: writing --

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._conn is None or self._closing:
            return  # asyncio ignores writes after close (and logs); so do we, quietly
        self._conn.write(bytes(data), self._host.loop.time())
        self._host.kick()
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._eof_written or self._closing:
            return
        self._eof_written = True
        if self._conn is not None:
            self._conn.write_eof(self._host.loop.time())  # FIN after the buffered bytes
            self._host.kick()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        if self._conn is None or self._lost:
            return 0
        return int(self._conn.get_write_buffer_size())

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if not self._writing_paused and self.get_write_buffer_size() > self._high:
            self._writing_paused = True
            self._host.paused_writers.add(self)
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        """Called by AsyncStack after every service pass while writing is paused."""
        if self._writing_paused and (self._lost or self.get_write_buffer_size() <= self._low):
            self._writing_paused = False
            self._host.paused_writers.discard(self)
            if not self._lost:
                self._protocol.resume_writing()

    # -- closing --

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Graceful: the stack sends what is buffered, then FIN (like close(2) on a socket
        whose kernel buffer still holds data); the protocol hears connection_lost soon."""
        if self._closing:
            return
        self._closing = True
        if self._conn is not None:
            self._conn.close(self._host.loop.time())
            self._host.kick()
        self._lose(None)

    def abort(self) -> None:
        """RST now, buffered bytes discarded (SO_LINGER 0)."""
        if self._lost:
            return
        self._closing = True
        if self._conn is not None:
            self._conn.abort(self._host.loop.time())
            self._host.kick()
        self._lose(None)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


class StackServer:
    """What ``start_server`` returns: enough of ``asyncio.Server`` for apps."""

    def __init__(self, host: AsyncStack, listener: Any, local: Address) -> None:
        self._host = host
        self._listener = listener
        self._closed: asyncio.Event = asyncio.Event()
        self.sockname = tuple(getattr(listener, "local", local))

    def is_serving(self) -> bool:
        return not self._closed.is_set()

    def close(self) -> None:
        if not self._closed.is_set():
            self._listener.close()
            self._host.kick()
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> StackServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# --- UDP -----------------------------------------------------------------------------------


class StackDatagramTransport(asyncio.DatagramTransport):
    """``asyncio.DatagramTransport`` over a netstack UDP endpoint (the stack's protocol too)."""

    def __init__(self, host: AsyncStack, protocol: Any, remote: Address | None) -> None:
        super().__init__()
        self._host = host
        self._protocol = protocol
        self._remote = remote
        self._ep: Any = None
        self._sockname: Address = ("0.0.0.0", 0)
        self._closing = False

    # netstack side
    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self._remote is not None and tuple(addr) != self._remote:
            return  # a connected UDP socket only hears its peer (connect(2))
        self._protocol.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._protocol.error_received(exc)

    # asyncio side
    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if addr is None:
            addr = self._remote
            if addr is None:
                raise ValueError("Invalid address: must be set for an unconnected endpoint")
        elif self._remote is not None and tuple(addr) != self._remote:
            raise ValueError(f"Invalid address: must be None or {self._remote}")
        if self._closing:
            return
        try:
            self._ep.sendto(bytes(data), addr, self._host.loop.time())
        except OSError as exc:  # asyncio reports send errors to the protocol, not the caller
            self._protocol.error_received(exc)
            return
        self._host.kick()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._ep.close()
        self._host.loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sockname
        if name == "peername":
            return self._remote
        return default


# --- ICMP echo -----------------------------------------------------------------------------


class Pinger:
    """One ICMP echo endpoint (one ``ident``, like one ping process); probes by sequence."""

    def __init__(self, host: AsyncStack) -> None:
        self._host = host
        self._waiting: dict[int, tuple[asyncio.Future[PingReply], float]] = {}
        self._echo = host.stack.icmp_open(self)

    async def ping(self, dst: str, seq: int, timeout: float, *, size: int = 56, ttl: int = 64) -> PingReply:
        """One probe; raises TimeoutError, PingError (an ICMP error came back) or the local
        stack's OSError (no route, message too long)."""
        dst = _address(dst, 0)[0]
        loop = self._host.loop
        fut: asyncio.Future[PingReply] = loop.create_future()
        self._waiting[seq] = (fut, time.perf_counter())
        expiry = None
        try:
            self._echo.send(dst, seq=seq, payload=bytes(size), now=loop.time(), ttl=ttl)
            self._host.push()  # the probe leaves now: its RTT starts at the send (iputils)
            # One timer handle rather than asyncio.wait_for (an extra future, task and
            # callbacks per probe): the probe's CPU after the send competes with its flight.
            if timeout is not None:
                expiry = loop.call_later(timeout, _expire, fut)
            return await fut
        finally:
            if expiry is not None:
                expiry.cancel()
            self._waiting.pop(seq, None)

    def echo_reply(self, src: str, seq: int, payload: bytes, ttl: int, now: float) -> None:
        """The RTT ends when the reply reached the stack, as iputils measures it by default:
        the receive time is the socket's SO_TIMESTAMP, stamped where the packet entered the
        kernel's stack, not when ping got to read it (``ping -U`` would include that)."""
        entry = self._waiting.get(seq)
        if entry is not None and not entry[0].done():
            sent = entry[1]
            arrived = self._host.rx_stamp
            if arrived < sent:  # not from the wire (a loopback reply, made inside the send)
                arrived = time.perf_counter()
            entry[0].set_result(PingReply(src, seq, ttl, arrived - sent, len(payload) + 8))

    def error_received(self, exc: Exception) -> None:
        entry = self._waiting.get(getattr(exc, "seq", -1))
        if entry is not None and not entry[0].done():
            entry[0].set_exception(exc)

    def close(self) -> None:
        self._echo.close()
        for fut, _ in self._waiting.values():
            fut.cancel()
        self._waiting.clear()


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())

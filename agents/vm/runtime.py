"""The VM process core: config, the broker data port, the management server and the VM object.

A VM is one process: a sans-IO :class:`~agents.netstack.NetStack` driven by an asyncio (uvloop)
loop (:class:`~agents.vm.streams.AsyncStack`), one DEALER to the broker's data ROUTER for all
its NICs (:class:`DataPort`), and one management ROUTER (:class:`MgmtServer`).  Later VM kinds
(node, haproxy, moc, apiserver) subclass :class:`VM` and register under their config ``kind``.

The data port is the hot path.  Receiving drains the socket with non-blocking receives before
awaiting (LIMITS.md: an awaited ``recv_multipart`` costs ~20 µs); sending groups the stack's
output by ``(nic, dst, via)`` into batches of at most ``wire.MAX_BATCH`` packets, once per loop
iteration.  Nothing there logs per packet; bad frames are counted by reason and logged at most
once a second.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import zmq
import zmq.asyncio

from agents import mgmt
from agents.dns.resolver import ResolvConf, ResolvConfError
from agents.mgmt import MgmtError
from broker import wire
from broker.packets import PacketError, canonical_ip

from .streams import AsyncStack, Pinger, PingReply

log = logging.getLogger("hcinet.vm")

ATTACH_TIMEOUT = 10.0
DETACH_TIMEOUT = 2.0
APP_STOP_TIMEOUT = 2.0
DRAIN_BURST = 256  # frames received back to back before the loop gets a turn (flush, timers)
SEND_BACKLOG_MAX = 10_000  # frames held while the DEALER is at its HWM; beyond: queue_full drop
SOCKET_HWM = 10_000
CLOSE_LINGER_MS = 1000
# Plain ints: pyzmq's constants are enum members, and every ``|``/``&`` on them runs Python
# code in ``enum`` (~1.5 µs each); ``Socket.get(EVENTS)`` itself returns an int.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


class ConfigError(ValueError):
    """A VM config that does not validate; the message names the key."""


# --- config --------------------------------------------------------------------------------


def _need(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ConfigError(f"{where}{key}: required")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}{key}: expected {names}, got {type(value).__name__}")
    return value


def _ip(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected an address string")
    try:
        return canonical_ip(text, where)
    except PacketError as exc:
        raise ConfigError(str(exc)) from None


def _interface(text: Any, where: str) -> str:
    if not isinstance(text, str) or "/" not in text:
        raise ConfigError(f"{where}: expected address/prefixlen, got {text!r}")
    try:
        return str(ipaddress.ip_interface(text))
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not address/prefixlen") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class NicConfig:
    name: str
    network: str
    mac: str
    addresses: tuple[str, ...]  # "ip/prefixlen"
    gateway: str | None
    mtu: int
    dhcp: bool = False          # lease the address from the router's DHCP (agents/vm/dhcp.py)
    dhcp_timeout: float = 5.0   # seconds to get a lease before the VM fails to start

    @property
    def ips(self) -> list[str]:
        """The bare addresses this NIC claims at ATTACH."""
        return [a.split("/", 1)[0] for a in self.addresses]

    @classmethod
    def parse(cls, obj: Any, where: str) -> NicConfig:
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{where}: expected an object")
        dhcp = obj.get("dhcp", False)
        if not isinstance(dhcp, bool):
            raise ConfigError(f"{where}.dhcp: expected true/false, got {dhcp!r}")
        addrs = obj.get("addresses", []) if dhcp else _need(obj, "addresses", list, where + ".")
        if not isinstance(addrs, list):
            raise ConfigError(f"{where}.addresses: expected list, got {type(addrs).__name__}")
        dhcp_timeout = obj.get("dhcp_timeout_s", 5.0)
        if isinstance(dhcp_timeout, bool) or not isinstance(dhcp_timeout, int | float) or not dhcp_timeout > 0:
            raise ConfigError(f"{where}.dhcp_timeout_s: expected seconds > 0, got {dhcp_timeout!r}")
        gateway = obj.get("gateway")
        mtu = obj.get("mtu", 1500)
        if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
            raise ConfigError(f"{where}.mtu: expected 68..65535, got {mtu!r}")
        return cls(
            name=_need(obj, "name", str, where + "."),
            network=_need(obj, "network", str, where + "."),
            mac=_need(obj, "mac", str, where + "."),
            addresses=tuple(_interface(a, f"{where}.addresses[{i}]") for i, a in enumerate(addrs)),
            gateway=None if gateway in (None, "") else _ip(gateway, f"{where}.gateway"),
            mtu=mtu, dhcp=dhcp, dhcp_timeout=float(dhcp_timeout),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    prefix: str
    dev: str | None  # NIC name; None = the NIC on whose prefix ``via`` lies
    via: str | None

    @classmethod
    def parse(cls, obj: Any, where: str) -> RouteConfig:
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{where}: expected an object")
        prefix = _need(obj, "prefix", str, where + ".")
        try:
            prefix = str(ipaddress.ip_network(prefix))
        except ValueError:
            raise ConfigError(f"{where}.prefix: {prefix!r} is not a network prefix") from None
        via = obj.get("via")
        dev = obj.get("dev")
        if dev is not None and not isinstance(dev, str):
            raise ConfigError(f"{where}.dev: expected a NIC name")
        if via is None and dev is None:
            raise ConfigError(f"{where}: needs via or dev")
        return cls(prefix=prefix, dev=dev, via=None if via is None else _ip(via, f"{where}.via"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfig:
    kind: str
    port: int
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: Any, where: str) -> AppConfig:
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{where}: expected an object")
        port = _need(obj, "port", int, where + ".")
        if not 0 < port < 65536:
            raise ConfigError(f"{where}.port: expected 1..65535, got {port}")
        options = {k: v for k, v in obj.items() if k not in ("kind", "port")}
        return cls(kind=_need(obj, "kind", str, where + "."), port=port, options=options)


@dataclass(frozen=True, slots=True, kw_only=True)
class VMConfig:
    """The JSON config a VM process gets from the host agent (docs/contracts.md)."""

    name: str
    kind: str
    run_dir: str
    broker: str
    nics: tuple[NicConfig, ...]
    routes: tuple[RouteConfig, ...]
    apps: tuple[AppConfig, ...]
    raw: Mapping[str, Any]  # the whole object, for VM kinds with keys of their own

    @classmethod
    def parse(cls, obj: Any) -> VMConfig:
        if not isinstance(obj, Mapping):
            raise ConfigError("config: expected a JSON object")
        nics = tuple(NicConfig.parse(n, f"nics[{i}]") for i, n in enumerate(_need(obj, "nics", list, "")))
        names = [n.name for n in nics]
        if len(set(names)) != len(names):
            raise ConfigError(f"nics: duplicate NIC names {names}")
        routes = tuple(RouteConfig.parse(r, f"routes[{i}]") for i, r in enumerate(obj.get("routes", [])))
        for i, r in enumerate(routes):
            if r.dev is not None and r.dev not in names:
                raise ConfigError(f"routes[{i}].dev: no NIC named {r.dev!r}")
        apps = tuple(AppConfig.parse(a, f"apps[{i}]") for i, a in enumerate(obj.get("apps", [])))
        if "dns" in obj:  # the resolv.conf of the VM's tools: refused at boot, not at first use
            try:
                ResolvConf.from_config(obj["dns"])
            except ResolvConfError as exc:
                raise ConfigError(str(exc)) from None
        return cls(
            name=_need(obj, "name", str, ""),
            kind=obj.get("kind", "plain"),
            run_dir=_need(obj, "run_dir", str, ""),
            broker=_need(obj, "broker", str, ""),
            nics=nics, routes=routes, apps=apps, raw=dict(obj),
        )

    def nic_index(self, ref: Any) -> int:
        """A NIC by name or index (management verbs accept both)."""
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(self.nics):
            return ref
        for i, nic in enumerate(self.nics):
            if nic.name == ref:
                return i
        raise MgmtError(f"nic: no NIC {ref!r} (have {', '.join(n.name for n in self.nics)})")


# --- bad-frame accounting ------------------------------------------------------------------


class RateLimitedLog:
    """Log a recurring warning at most once per ``period`` seconds, with how many were muted."""

    __slots__ = ("logger", "period", "_next", "_muted")

    def __init__(self, logger: logging.Logger, period: float = 1.0) -> None:
        self.logger = logger
        self.period = period
        self._next = 0.0
        self._muted = 0

    def warning(self, msg: str, *args: Any) -> None:
        self._log(logging.WARNING, msg, args, False)

    def exception(self, msg: str, *args: Any) -> None:
        self._log(logging.ERROR, msg, args, True)

    def _log(self, level: int, msg: str, args: tuple[Any, ...], exc_info: bool) -> None:
        now = time.monotonic()
        if now < self._next:
            self._muted += 1
            return
        if self._muted:
            msg += " (%d similar muted)"
            args = (*args, self._muted)
        self._muted = 0
        self._next = now + self.period
        self.logger.log(level, msg, *args, exc_info=exc_info)


# --- the data port -------------------------------------------------------------------------


class AttachError(Exception):
    """The broker refused a NIC, or did not answer."""


Deliver = Callable[[int, Any], None]


def _nowhere(nic: int, pkts: Any) -> None:
    """Deliveries before a stack is bound are dropped (nothing can be addressed to us yet)."""


def _no_burst_end() -> None:
    """Nothing batches output across a receive burst until a stack is bound."""


class DataPort:
    """The VM's one DEALER to the broker's data ROUTER, shared by all its NICs.

    The socket is driven straight from the loop (``add_reader`` on ``zmq.FD``) rather than
    through ``zmq.asyncio``: its futures cost ~20 µs per awaited receive (LIMITS.md), and
    the FD is edge-triggered, so a reader that also sends on the socket must re-check
    ``zmq.EVENTS`` after sending or it misses wake-ups.  Here every send path ends in that
    check, and every wake-up receives, then drains while ``zmq.EVENTS`` says POLLIN (in
    bursts, so timers and other callbacks get their turn): asking EVENTS after a message
    costs ~2 µs, the ``zmq.Again`` that would end a drain-by-receiving ~6 µs, and here the
    end of a burst is on the latency path (the flush waits for it).

    A drained burst ends in ``burst_end()``: the stack's output from the whole burst leaves
    then, batched, rather than one loop iteration later (a ping's echo reply leaves as soon
    as the socket is empty).
    """

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, deliver: Deliver | None = None,
                 burst_end: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        self.deliver: Deliver = deliver or _nowhere
        self.burst_end: Callable[[], None] = burst_end or _no_burst_end
        sock: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.DEALER)
        for opt, value in ((zmq.SNDHWM, SOCKET_HWM), (zmq.RCVHWM, SOCKET_HWM), (zmq.LINGER, CLOSE_LINGER_MS)):
            sock.setsockopt(opt, value)
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._scheduled = False
        self._closed = False
        self._backlog: deque[list[bytes]] = deque()
        self._attach_waiters: dict[int, asyncio.Future[tuple[bool, str]]] = {}
        self._detach_waiters: dict[int, asyncio.Future[None]] = {}
        self._handlers: dict[int, Callable[[tuple[Any, ...], list[bytes]], None]] = {
            wire.DELIVER: self._on_deliver, wire.ATTACHED: self._on_attached,
            wire.DETACHED: self._on_detached, wire.NOTICE: self._on_notice,
        }
        self._bad_log = RateLimitedLog(log)
        self.notices: deque[dict[str, Any]] = deque(maxlen=32)
        self.counters: dict[str, int] = dict.fromkeys(
            ("frames_in", "frames_out", "batches_in", "batches_out", "packets_in", "packets_out",
             "bytes_in", "bytes_out", "ttl_drops", "queue_full_drops", "backlog_peak", "notices",
             "stack_errors", "wakeups"), 0)
        self.bad_frames: dict[str, int] = dict.fromkeys(wire.BAD_FRAME_REASONS, 0)

    # -- life cycle --

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock.connect(self.endpoint)
        self._fd = cast(int, self._sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._on_events)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
        self._sock.close(linger=CLOSE_LINGER_MS)

    async def attach(self, nic: int, spec: dict[str, Any], timeout: float = ATTACH_TIMEOUT) -> None:
        fut: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._attach_waiters[nic] = fut
        self._send(wire.attach(nic, spec))
        self._after_send()
        try:
            ok, reason = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AttachError(f"attach {spec.get('name')}: no answer from the broker at "
                              f"{self.endpoint} within {timeout:g} s") from None
        finally:
            self._attach_waiters.pop(nic, None)
        if not ok:
            raise AttachError(f"attach {spec.get('name')}: {reason}")

    async def detach(self, nics: Iterable[int], timeout: float = DETACH_TIMEOUT) -> bool:
        """DETACH each NIC and wait for every DETACHED: the broker has then processed every
        earlier frame of ours, so closing the socket loses nothing (LIMITS.md, libzmq 4660)."""
        loop = asyncio.get_running_loop()
        futs = []
        for nic in nics:
            fut: asyncio.Future[None] = loop.create_future()
            self._detach_waiters[nic] = fut
            futs.append(fut)
            self._send(wire.detach(nic))
        self._after_send()
        if not futs:
            return True
        done, pending = await asyncio.wait(futs, timeout=timeout)
        self._detach_waiters.clear()
        return not pending

    def claim(self, nic: int, ips: list[str]) -> None:
        self._send(wire.claim(nic, ips))
        self._after_send()

    def release(self, nic: int, ips: list[str]) -> None:
        self._send(wire.release(nic, ips))
        self._after_send()

    # -- send path --

    def send_output(self, out: list[tuple[int, str, Any]]) -> None:
        """Send the stack's output: one PACKETS frame per (nic, dst, via) and 64 packets."""
        if len(out) == 1:  # a lone packet (a probe, an echo reply, an ACK): no grouping
            nic, via, pkt = out[0]
            self._send(wire.packets(nic, pkt[1], via, (pkt,), pkt[8], pkt[3]))
            counters = self.counters
            counters["batches_out"] += 1
            counters["packets_out"] += 1
            counters["bytes_out"] += pkt[8]
            self._after_send()
            return
        groups: dict[tuple[int, str, str], list[Any]] = {}
        get = groups.get
        for nic, via, pkt in out:
            key = (nic, pkt[1], via)
            group = get(key)
            if group is None:
                groups[key] = [pkt]
            else:
                group.append(pkt)
        packets = wire.packets
        send = self._send
        batch = wire.MAX_BATCH
        nbytes_total = 0
        nbatches = 0
        for (nic, dst, via), pkts in groups.items():
            for start in range(0, len(pkts), batch):
                chunk = pkts[start:start + batch] if len(pkts) > batch else pkts
                nbytes = 0
                min_ttl = 255
                for pkt in chunk:
                    nbytes += pkt[8]
                    if pkt[3] < min_ttl:
                        min_ttl = pkt[3]
                send(packets(nic, dst, via, chunk, nbytes, min_ttl))
                nbytes_total += nbytes
                nbatches += 1
        counters = self.counters
        counters["batches_out"] += nbatches
        counters["packets_out"] += len(out)
        counters["bytes_out"] += nbytes_total
        self._after_send()

    def _send(self, frames: list[bytes]) -> None:
        if self._closed:
            return
        self.counters["frames_out"] += 1
        if not self._backlog:
            try:
                self._send_now(frames)
                return
            except zmq.Again:
                pass
        # Every peer queue is full (SNDHWM): hold the frame and send it when the socket says
        # POLLOUT; beyond SEND_BACKLOG_MAX it is a full txqueue: tail drop, counted.
        if len(self._backlog) >= SEND_BACKLOG_MAX:
            self.counters["queue_full_drops"] += 1
            return
        self._backlog.append(frames)
        if len(self._backlog) > self.counters["backlog_peak"]:
            self.counters["backlog_peak"] = len(self._backlog)
        self._poll_backlog()

    def _poll_backlog(self) -> None:
        """While frames are held, look at EVENTS every millisecond: POLLOUT comes on the same
        edge-triggered FD and may have been consumed by a receive."""
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_later(0.001, self._on_events)

    def _send_now(self, frames: list[bytes]) -> None:
        """Part by part with int flags: ``send_multipart`` type-checks every part and ORs enum
        flags in Python (~3x the cost).  Only the first part can raise ``zmq.Again``: ZeroMQ
        checks the high-water mark per message, and a started message is completed."""
        send = self._sock.send
        last = len(frames) - 1
        send(frames[0], _MORE if last else _NOBLOCK)
        for i in range(1, last):
            send(frames[i], _MORE)
        if last:
            send(frames[last], _NOBLOCK, copy=False)  # a large body leaves without a copy

    def _after_send(self) -> None:
        """Sending may have consumed the FD's edge: look at EVENTS and wake up if needed."""
        if not self._scheduled and not self._closed and cast(int, self._sock.get(_EVENTS)) & _POLLIN:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._on_events)

    def _flush_backlog(self) -> None:
        backlog = self._backlog
        send = self._send_now
        while backlog:
            try:
                send(backlog[0])
            except zmq.Again:
                return
            backlog.popleft()

    # -- receive path --

    def _on_events(self) -> None:
        """The FD fired (or a send saw POLLIN): drain up to a burst, flush what it caused,
        then yield the loop."""
        self._scheduled = False
        if self._closed:
            return
        self.counters["wakeups"] += 1
        get = cast(Callable[[int], int], self._sock.get)
        if self._backlog and get(_EVENTS) & _POLLOUT:
            self._flush_backlog()
        # Straight to the first receive (a wake-up brings a message: measured, wake-ups equal
        # messages in a ping run); a spurious one costs a zmq.Again.
        try:
            drained = self._drain(get)
        finally:
            self.burst_end()  # even if a receive raised: output must not wait for the next burst
        if not drained:  # more is queued: come back after the timers and callbacks waiting
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._on_events)
        elif self._backlog:
            self._poll_backlog()

    def _drain(self, get: Callable[[int], int]) -> bool:
        """Receive and handle up to DRAIN_BURST messages; True if the socket is empty."""
        recv = self._sock.recv
        handle = self._handle
        for _ in range(DRAIN_BURST):
            # Frames, not recv_multipart: ``Frame.more`` instead of a getsockopt(RCVMORE) per
            # part, and a body is decoded straight from ZeroMQ's buffer (no copy).  The whole
            # message is here once its first part is (ZeroMQ delivers messages atomically).
            try:
                part = recv(_NOBLOCK, False)
            except zmq.Again:  # a spurious wake-up (POLLOUT while frames are held)
                return True
            frames: list[Any] = [part.bytes]
            while part.more:
                part = recv(_NOBLOCK, False)
                frames.append(part)
            handle(frames)
            if not get(_EVENTS) & _POLLIN:
                return True
        return False

    def _handle(self, frames: list[bytes]) -> None:
        self.counters["frames_in"] += 1
        try:
            hdr = wire.decode(frames)
            handler = self._handlers.get(hdr[1])
            if handler is None:
                raise wire.WireError("kind", f"{wire.KIND_NAMES[hdr[1]]} is not for a VM")
            handler(hdr, frames)
        except wire.WireError as exc:
            self._bad(exc.reason, exc.detail)
        except (TypeError, ValueError, IndexError, KeyError, PacketError) as exc:
            # A body that decoded but is not what the header promised: count, never raise.
            self._bad("garbage", f"{type(exc).__name__}: {exc}")
        except Exception:  # a bug below us must not leave the VM deaf: count it, carry on
            self.counters["stack_errors"] += 1
            self._bad_log.exception("delivering a frame failed")

    def _bad(self, reason: str, detail: str) -> None:
        self.bad_frames[reason] = self.bad_frames.get(reason, 0) + 1
        self._bad_log.warning("bad frame from the broker (%s): %s", reason, detail)

    def _on_deliver(self, hdr: tuple[Any, ...], frames: list[bytes]) -> None:
        nic, hops, count, nbytes = hdr[2:]
        pkts = wire.unpack_body(frames[1])
        if type(pkts) is not tuple:
            raise wire.WireError("garbage", "body is not a list of packets")
        counters = self.counters
        counters["batches_in"] += 1
        counters["packets_in"] += len(pkts)
        counters["bytes_in"] += nbytes
        if hops:
            # The routers' TTL decrement, applied here where the batch is decoded anyway
            # (docs/contracts.md); an expired packet is dropped (RFC 1812 5.3.1).
            kept = [p[:3] + (p[3] - hops,) + p[4:] for p in pkts if p[3] > hops]
            counters["ttl_drops"] += len(pkts) - len(kept)
            self.deliver(nic, kept)
        else:
            self.deliver(nic, pkts)

    def _on_attached(self, hdr: tuple[Any, ...], frames: list[bytes]) -> None:
        _, _, nic, ok, reason = hdr
        fut = self._attach_waiters.get(nic)
        if fut is not None and not fut.done():
            fut.set_result((bool(ok), str(reason)))

    def _on_detached(self, hdr: tuple[Any, ...], frames: list[bytes]) -> None:
        fut = self._detach_waiters.get(hdr[2])
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_notice(self, hdr: tuple[Any, ...], frames: list[bytes]) -> None:
        _, _, nic, what, detail = hdr
        self.counters["notices"] += 1
        self.notices.append({"nic": nic, "what": what, "detail": detail})
        log.warning("broker notice for NIC %s: %s %s", nic, what, detail)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "backlog": len(self._backlog), "bad_frames": dict(self.bad_frames),
                "last_notices": list(self.notices)}


# --- the management server -----------------------------------------------------------------


class MgmtServer:
    """The process's management ROUTER: requests in, one reply each, handlers run as tasks
    (a long ``exec`` never blocks ``stats``)."""

    def __init__(self, ctx: zmq.asyncio.Context, handlers: Mapping[str, mgmt.Handler]) -> None:
        self.handlers = handlers
        self._sock = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._serve_task: asyncio.Task[None] | None = None
        self._bad_log = RateLimitedLog(log)
        self.bad_requests = 0
        self.endpoint = ""

    def bind(self, host: str = "127.0.0.1") -> str:
        self._sock.bind(f"tcp://{host}:0")
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._serve_task = asyncio.get_running_loop().create_task(self._serve(), name="mgmt")
        return self.endpoint

    async def _serve(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) < 2:
                continue
            try:
                req_id, verb, args = mgmt.parse_request(frames[1:])
            except wire.WireError as exc:
                self.bad_requests += 1
                self._bad_log.warning("bad management request (%s): %s", exc.reason, exc.detail)
                continue
            task = asyncio.get_running_loop().create_task(self._answer(frames[0], req_id, verb, args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, ident: bytes, req_id: int, verb: str, args: dict[str, Any]) -> None:
        ok, result = await mgmt.dispatch_async(self.handlers, verb, args)
        try:
            await self._sock.send_multipart([ident, *wire.reply(req_id, ok, result)])
        except (zmq.ZMQError, TypeError, ValueError) as exc:
            log.warning("management reply to %s failed: %s", verb, exc)

    async def close(self) -> None:
        if self._serve_task is not None:
            self._serve_task.cancel()
        # Let in-flight replies (the one to ``shutdown`` above all) leave first.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        self._sock.close(linger=200)


# --- the VM --------------------------------------------------------------------------------

VM_KINDS: dict[str, type[VM]] = {}


def register_kind(name: str) -> Callable[[type[VM]], type[VM]]:
    """Class decorator: make a VM class startable as config ``"kind": name``."""
    def deco(cls: type[VM]) -> type[VM]:
        VM_KINDS[name] = cls
        cls.kind = name
        return cls
    return deco


def vm_class(kind: str) -> type[VM]:
    if kind not in VM_KINDS and isinstance(kind, str) and kind.isidentifier():
        # Kinds are found lazily: ``kind: X`` imports ``agents.X.vm``, which registers X; a
        # node VM thus never imports another kind's code (docs/contracts-control-plane.md).
        import importlib

        try:
            importlib.import_module(f"agents.{kind}.vm")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"agents.{kind}", f"agents.{kind}.vm"):
                raise
    try:
        return VM_KINDS[kind]
    except KeyError:
        raise ConfigError(f"kind: unknown VM kind {kind!r} (known: {', '.join(sorted(VM_KINDS))})") from None


@register_kind("plain")
class VM:
    """A plain VM: NICs, a netstack, apps from its config, tools over ``exec``.

    Subclasses (later VM kinds) extend :meth:`build_stack`, :meth:`mgmt_handlers`,
    :meth:`start_services` and :meth:`stop_services`, and register with
    :func:`register_kind`.
    """

    kind = "plain"

    def __init__(self, config: VMConfig) -> None:
        self.config = config
        self.name = config.name
        self.ctx: zmq.asyncio.Context | None = None
        self.net: AsyncStack | None = None
        self.data: DataPort | None = None
        self.mgmt: MgmtServer | None = None
        self.apps: list[Any] = []
        self._stopping: asyncio.Event | None = None
        self._announcers: dict[tuple[int, tuple[str, ...]], asyncio.TimerHandle] = {}
        self._claimed: dict[int, list[str]] = {}
        self._attached: list[int] = []
        self.dhcp: list[Any] = []  # DhcpClients of the NICs with "dhcp": true
        self.started_at = 0.0

    # -- set-up --

    def build_stack(self) -> Any:
        """The NetStack with this VM's interfaces and routes (no I/O)."""
        from agents.netstack import NetStack

        stack = NetStack(self.name)
        default_done: set[str] = set()
        for index, nic in enumerate(self.config.nics):
            stack.add_interface(index=index, name=nic.name, mac=nic.mac, mtu=nic.mtu,
                                addresses=list(nic.addresses))
            if nic.gateway is not None:
                family = "::/0" if ":" in nic.gateway else "0.0.0.0/0"
                if family not in default_done:  # the first NIC with a gateway owns the default route
                    stack.add_route(family, dev=index, via=nic.gateway)
                    default_done.add(family)
        for route in self.config.routes:
            stack.add_route(route.prefix, dev=self._route_dev(route), via=route.via)
        return stack

    def _route_dev(self, route: RouteConfig) -> int:
        if route.dev is not None:
            return self.config.nic_index(route.dev)
        via = ipaddress.ip_address(route.via or "")
        for index, nic in enumerate(self.config.nics):
            if any(via in ipaddress.ip_interface(a).network for a in nic.addresses):
                return index
        raise ConfigError(f"routes: via {route.via} is on no NIC's prefix")

    async def start(self) -> str:
        """Attach NICs, bind the management socket, start apps; return the management endpoint."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.started_at = loop.time()
        self.ctx = zmq.asyncio.Context()
        self.data = DataPort(self.ctx, self.config.broker)
        self.net = AsyncStack(self.build_stack(), self.data.send_output, loop)
        # Bound directly: no layer between frame and stack; output leaves at each burst's end.
        self.data.deliver = self.net.receive_burst
        self.data.burst_end = self.net.burst_end
        self.mgmt = MgmtServer(self.ctx, self.mgmt_handlers())
        endpoint = self.mgmt.bind()
        self.data.open()
        for index, nic in enumerate(self.config.nics):
            spec = {"vm": self.name, "name": nic.name, "mac": nic.mac, "network": nic.network,
                    "ips": nic.ips, "mtu": nic.mtu}
            await self.data.attach(index, spec)
            self._attached.append(index)
            self._claimed[index] = list(nic.ips)
        for index, nic in enumerate(self.config.nics):
            if nic.dhcp:  # the lease comes before readiness (docs/contracts-control-plane.md)
                from .dhcp import DhcpClient

                client = DhcpClient(self, index, timeout=nic.dhcp_timeout)
                self.dhcp.append(client)
                await client.acquire()
                client.start()
        await self.start_services()
        log.info("VM %s (%s) up: %d NICs, management %s", self.name, self.kind, len(self.config.nics), endpoint)
        return endpoint

    async def start_services(self) -> None:
        """Start the apps of the config; VM kinds add their own services here."""
        from .apps import make_app

        for spec in self.config.apps:
            app = make_app(self, spec)
            await app.start()
            self.apps.append(app)

    async def stop_services(self) -> None:
        for app in reversed(self.apps):
            try:
                await asyncio.wait_for(app.stop(), APP_STOP_TIMEOUT)
            except Exception:
                log.exception("stopping app %s failed", getattr(app, "name", app))
        self.apps.clear()

    # -- running and stopping --

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def wait_stopped(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()

    async def stop(self) -> None:
        """Clean shutdown: apps, announcers, DETACH (acknowledged) before closing sockets."""
        log.info("VM %s stopping", self.name)
        await self.stop_services()
        for client in self.dhcp:
            await client.stop()
        for handle in self._announcers.values():
            handle.cancel()
        self._announcers.clear()
        if self.net is not None:
            self.net.close()  # the apps' last FINs and RSTs leave before the NICs detach
        if self.data is not None:
            if not await self.data.detach(self._attached):
                log.warning("broker did not acknowledge every DETACH within %g s", DETACH_TIMEOUT)
            await self.data.close()
        if self.mgmt is not None:
            await self.mgmt.close()
        if self.ctx is not None:
            self.ctx.term()
        log.info("VM %s stopped", self.name)

    # -- the app API (asyncio style; see streams.AsyncStack) --

    def _stack(self) -> AsyncStack:
        if self.net is None:
            raise RuntimeError("VM not started")
        return self.net

    async def open_connection(self, host: str, port: int, *, timeout: float | None = None,
                              limit: int = 2 ** 16) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._stack().open_connection(host, port, timeout=timeout, limit=limit)

    async def start_server(self, client_connected_cb: Any, host: str = "0.0.0.0", port: int = 0, *,
                           backlog: int = 128, limit: int = 2 ** 16) -> Any:
        return await self._stack().start_server(client_connected_cb, host, port, backlog=backlog, limit=limit)

    async def create_datagram_endpoint(self, protocol_factory: Callable[[], asyncio.DatagramProtocol], *,
                                       local_addr: tuple[str, int] | None = None,
                                       remote_addr: tuple[str, int] | None = None) -> Any:
        return await self._stack().create_datagram_endpoint(
            protocol_factory, local_addr=local_addr, remote_addr=remote_addr)

    def pinger(self) -> Pinger:
        return self._stack().pinger()

    async def ping(self, dst: str, seq: int = 1, timeout: float = 1.0, *, size: int = 56,
                   ttl: int = 64) -> PingReply:
        return await self._stack().ping(dst, seq, timeout, size=size, ttl=ttl)

    # -- claims --

    def claim(self, nic: int, ips: list[str]) -> None:
        assert self.data is not None and self.net is not None
        self.data.claim(nic, ips)
        held = self._claimed.setdefault(nic, [])
        for ip in ips:
            if ip not in held:
                held.append(ip)
                self.net.add_address(nic, ip)

    def release(self, nic: int, ips: list[str]) -> None:
        assert self.data is not None and self.net is not None
        self.data.release(nic, ips)
        held = self._claimed.setdefault(nic, [])
        for ip in ips:
            if ip in held:
                held.remove(ip)
                self.net.remove_address(nic, ip)
        for key in [k for k in self._announcers if k[0] == nic and set(k[1]) & set(ips)]:
            self._announcers.pop(key).cancel()

    def announce(self, nic: int, ips: list[str], interval: float) -> None:
        """keepalived's gratuitous ARP: claim now and every ``interval`` s (0 stops)."""
        key = (nic, tuple(sorted(ips)))
        old = self._announcers.pop(key, None)
        if old is not None:
            old.cancel()
        if interval > 0:
            self._announce_tick(key, interval)

    def _announce_tick(self, key: tuple[int, tuple[str, ...]], interval: float) -> None:
        self.claim(key[0], list(key[1]))
        self._announcers[key] = asyncio.get_running_loop().call_later(
            interval, self._announce_tick, key, interval)

    # -- management --

    def mgmt_handlers(self) -> dict[str, mgmt.Handler]:
        return {
            "ping": self._m_ping, "stats": self._m_stats, "exec": self._m_exec,
            "claim": self._m_claim, "release": self._m_release, "announce": self._m_announce,
            "shutdown": self._m_shutdown,
        }

    def _m_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"vm": self.name, "kind": self.kind, "pid": _pid()}

    def stats(self) -> dict[str, Any]:
        net = self._stack()
        assert self.data is not None
        return {
            "vm": self.name, "kind": self.kind,
            "uptime_s": round(asyncio.get_running_loop().time() - self.started_at, 3),
            "netstack": net.stack_stats(),
            "runtime": {**self.data.stats(), "bad_mgmt_requests": self.mgmt.bad_requests if self.mgmt else 0},
            "claims": {self.config.nics[i].name: list(ips) for i, ips in self._claimed.items()},
            "announcing": [{"nic": self.config.nics[k[0]].name, "ips": list(k[1])} for k in self._announcers],
            "apps": [app.stats() for app in self.apps],
            "dhcp": [client.stats() for client in self.dhcp],
        }

    def _m_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.stats()

    async def _m_exec(self, args: dict[str, Any]) -> dict[str, Any]:
        from .tools import run_tool

        argv = list(mgmt.require(args, "argv", (list, tuple)))
        if not argv or not all(isinstance(a, str) for a in argv):
            raise MgmtError("argv: expected a non-empty list of strings")
        stdin = args.get("input", "")
        if not isinstance(stdin, str):
            raise MgmtError("input: expected a string")
        rc, out, err = await run_tool(self, argv, stdin=stdin)
        return {"rc": rc, "stdout": out, "stderr": err}

    def _claim_args(self, args: dict[str, Any]) -> tuple[int, list[str]]:
        nic = self.config.nic_index(mgmt.require(args, "nic", (str, int)))
        ips = list(mgmt.require(args, "ips", (list, tuple)))
        if not ips:
            raise MgmtError("ips: expected at least one address")
        try:
            return nic, [canonical_ip(ip if isinstance(ip, str) else repr(ip), "ips") for ip in ips]
        except PacketError as exc:
            raise MgmtError(str(exc)) from None

    def _m_claim(self, args: dict[str, Any]) -> dict[str, Any]:
        nic, ips = self._claim_args(args)
        self.claim(nic, ips)
        return {"nic": self.config.nics[nic].name, "ips": ips}

    def _m_release(self, args: dict[str, Any]) -> dict[str, Any]:
        nic, ips = self._claim_args(args)
        self.release(nic, ips)
        return {"nic": self.config.nics[nic].name, "ips": ips}

    def _m_announce(self, args: dict[str, Any]) -> dict[str, Any]:
        nic, ips = self._claim_args(args)
        interval = mgmt.require(args, "interval_s", (int, float))
        if interval < 0 or 0 < interval < 0.01:
            raise MgmtError(f"interval_s: expected 0 (stop) or >= 0.01, got {interval}")
        self.announce(nic, ips, float(interval))
        return {"nic": self.config.nics[nic].name, "ips": ips, "interval_s": interval}

    def _m_shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        # Stop after this reply has left (MgmtServer.close waits for in-flight answers).
        asyncio.get_running_loop().call_soon(self.request_stop)
        return {"stopping": self.name}


def _pid() -> int:
    import os

    return os.getpid()


# --- the process ---------------------------------------------------------------------------


def set_pdeathsig() -> None:
    """PR_SET_PDEATHSIG = SIGKILL: a killed host agent takes its VMs along (prctl(2))."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the host agent's own clean-up must do
        log.warning("PR_SET_PDEATHSIG unavailable")


def setup_logging(config: VMConfig, level: int = logging.INFO) -> str:
    import os

    logs = os.path.join(config.run_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    path = os.path.join(logs, f"{config.name}.log")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return path


def write_ready(fd: int | None, payload: dict[str, Any]) -> None:
    """The one readiness line the host agent waits on; then the fd is closed."""
    import json
    import os

    if fd is None:
        print(json.dumps(payload), flush=True)
        return
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(payload) + "\n")
    except OSError as exc:
        log.warning("could not write readiness to fd %d: %s", fd, exc)


async def serve(vm: VM, ready_fd: int | None) -> int:
    """Start ``vm``, report readiness, run until SIGTERM/``shutdown``, stop cleanly."""
    import os
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, vm.request_stop)
    try:
        endpoint = await vm.start()
    except Exception as exc:
        reason = str(exc) if isinstance(exc, AttachError | ConfigError | OSError) else f"{type(exc).__name__}: {exc}"
        log.error("VM %s failed to start: %s", vm.name, reason, exc_info=not isinstance(exc, AttachError))
        write_ready(ready_fd, {"ready": False, "error": reason})
        try:
            await asyncio.wait_for(vm.stop(), DETACH_TIMEOUT + 2)
        except Exception:
            log.exception("clean-up after a failed start")
        return 1
    write_ready(ready_fd, {"ready": True, "mgmt": endpoint, "pid": os.getpid(), "vm": vm.name})
    await vm.wait_stopped()
    await vm.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    import uvloop

    parser = argparse.ArgumentParser(prog="python -m agents.vm", description="one hcinet VM process")
    parser.add_argument("--config", required=True, help="the VM's JSON config file")
    parser.add_argument("--ready-fd", type=int, default=None, help="fd for the readiness line")
    ns = parser.parse_args(argv)
    set_pdeathsig()
    try:
        with open(ns.config) as f:
            config = VMConfig.parse(json.load(f))
        cls = vm_class(config.kind)
        setup_logging(config)
    except (OSError, ValueError) as exc:
        write_ready(ns.ready_fd, {"ready": False, "error": f"config: {exc}" if isinstance(exc, OSError) else str(exc)})
        return 2
    return uvloop.run(serve(cls(config), ns.ready_fd))

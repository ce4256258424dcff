"""trio <-> pyzmq: awaitable send/receive on plain pyzmq sockets, a management client and server.

ZeroMQ exposes one file descriptor per socket (``zmq.FD``) that is **edge-triggered**: it
becomes readable when the socket's internal mailbox gets a command, and any call that
processes commands (``send``, ``recv``, ``getsockopt(zmq.EVENTS)``) drains it.  So:

* readability of the FD says nothing about which direction is ready — only
  ``getsockopt(zmq.EVENTS)`` does;
* one wake can stand for several messages, and a send or receive can swallow the edge that
  announced a pending message.  Whoever waits must re-check ``zmq.EVENTS`` after every wake,
  and every successful operation must make the waiters re-check (libzmq's zmq_getsockopt(3),
  "ZMQ_FD": "the ability to read from the returned file descriptor does not necessarily
  indicate that messages are available ... after every call to zmq_send/zmq_recv ... check
  ZMQ_EVENTS").

trio allows one task at a time in ``wait_readable`` per descriptor, so per socket one task
(the leader) waits on the FD while the others park; every wake, every successful operation
and the leader leaving make all of them re-check ``zmq.EVENTS``.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Mapping
from typing import Any

import trio
import zmq

from agents import mgmt
from broker import wire

log = logging.getLogger(__name__)

Socket = zmq.Socket[bytes]


class _Waiters:
    """Who waits on one socket: the FD leader's cancel scope and a lot for the rest."""

    __slots__ = ("leader", "lot")

    def __init__(self) -> None:
        self.leader: trio.CancelScope | None = None
        self.lot = trio.lowlevel.ParkingLot()


_waiters: weakref.WeakKeyDictionary[Any, _Waiters] = weakref.WeakKeyDictionary()


def _state(sock: Socket) -> _Waiters:
    st = _waiters.get(sock)
    if st is None:
        st = _waiters[sock] = _Waiters()
    return st


def _poke(sock: Socket) -> None:
    """After a successful operation: the FD edge may be gone, so every waiter re-checks."""
    st = _waiters.get(sock)
    if st is None:
        return
    if st.leader is not None:
        st.leader.cancel()
    if st.lot.statistics().tasks_waiting:
        st.lot.unpark_all()


async def wait_ready(sock: Socket, flag: int) -> None:
    """Wait until ``zmq.EVENTS`` has ``flag`` (``zmq.POLLIN`` or ``zmq.POLLOUT``)."""
    st = _state(sock)
    while not (int(sock.getsockopt(zmq.EVENTS)) & flag):
        if st.leader is not None:
            await st.lot.park()
            continue
        with trio.CancelScope() as scope:
            st.leader = scope
            try:
                await trio.lowlevel.wait_readable(sock.FD)
            finally:
                st.leader = None
                # Whoever parked behind us re-checks; one of them becomes the next leader.
                st.lot.unpark_all()


async def recv_multipart(sock: Socket) -> list[bytes]:
    """Receive one multipart message: a non-blocking try first, then wait on the FD."""
    await trio.lowlevel.checkpoint_if_cancelled()
    while True:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await wait_ready(sock, zmq.POLLIN)
            continue
        _poke(sock)
        # Not cancellable here: the message is already taken off the socket.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return frames


def drain(sock: Socket, limit: int = 256) -> list[list[bytes]]:
    """Take up to ``limit`` queued messages without waiting (LIMITS.md: drain before awaiting)."""
    out: list[list[bytes]] = []
    recv = sock.recv_multipart
    try:
        while len(out) < limit:
            out.append(recv(zmq.NOBLOCK))
    except zmq.Again:
        pass
    if out:
        _poke(sock)
    return out


async def send_multipart(sock: Socket, frames: list[bytes]) -> None:
    """Send one multipart message: a non-blocking try first, then wait on the FD."""
    await trio.lowlevel.checkpoint_if_cancelled()
    while True:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            await wait_ready(sock, zmq.POLLOUT)
            continue
        _poke(sock)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return


def close(sock: Socket, linger_ms: int = 0) -> None:
    """Close a socket some task may be waiting on (trio must hear of it before the FD goes)."""
    if sock.closed:
        return
    try:
        trio.lowlevel.notify_closing(sock.FD)
    except (RuntimeError, zmq.ZMQError):
        pass  # no trio run or socket already gone: nobody can be waiting on it
    sock.close(linger=linger_ms)


# --- management plane -----------------------------------------------------------------------

class TrioMgmtClient:
    """A management client (DEALER) for trio; calls may run concurrently from many tasks.

    Replies are matched to calls by request id.  One caller at a time receives (a fair
    lock); it files each reply under its id, so a caller that finds its reply already filed
    returns without touching the socket.  Late replies to timed-out calls are dropped.
    """

    def __init__(self, endpoint: str, *, context: zmq.Context[Any] | None = None) -> None:
        self.endpoint = endpoint
        ctx = context or zmq.Context.instance()
        self._sock: Socket = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._pending: dict[int, list[Any]] = {}  # req_id -> [done, ok, result]
        self._recv_lock = trio.Lock()

    async def __aenter__(self) -> TrioMgmtClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        close(self._sock)

    async def call(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Call ``verb``; raise :class:`agents.mgmt.RemoteError` if refused, TimeoutError if silent."""
        req_id = next(self._ids)
        slot: list[Any] = [False, False, None]
        self._pending[req_id] = slot
        try:
            with trio.move_on_after(timeout):
                await send_multipart(self._sock, wire.request(req_id, verb, args))
                while not slot[0]:
                    async with self._recv_lock:
                        if not slot[0]:
                            self._file(await recv_multipart(self._sock))
        finally:
            self._pending.pop(req_id, None)
        if not slot[0]:
            raise TimeoutError(f"{self.endpoint}: no answer to {verb!r} within {timeout:g} s")
        if not slot[1]:
            raise mgmt.RemoteError(str(slot[2]))
        return slot[2]

    def _file(self, frames: list[bytes]) -> None:
        try:
            hdr = wire.decode(frames)
        except wire.WireError as exc:
            log.warning("%s: dropped a malformed reply (%s)", self.endpoint, exc)
            return
        if hdr[1] != wire.REPLY:
            log.warning("%s: dropped a %s where a reply was due", self.endpoint, wire.KIND_NAMES[hdr[1]])
            return
        slot = self._pending.get(hdr[2])
        if slot is not None:  # else: the reply to a call that already timed out
            slot[0], slot[1], slot[2] = True, bool(hdr[3]), hdr[4]


async def serve_mgmt(sock: Socket, handlers: Mapping[str, mgmt.Handler], *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve management requests on a bound ROUTER until cancelled.

    Each request runs in its own task, so a slow verb (starting a VM waits for it to be
    ready) does not hold up ``ping`` or ``list``.  Malformed requests are logged and
    dropped: they never reach the handlers and never stop the loop.
    """
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            frames = await recv_multipart(sock)
            if len(frames) < 2:
                log.warning("management: dropped a message without a peer identity")
                continue
            try:
                req_id, verb, args = mgmt.parse_request(frames[1:])
            except wire.WireError as exc:
                log.warning("management: dropped a bad request (%s)", exc)
                continue
            nursery.start_soon(_answer, sock, handlers, frames[0], req_id, verb, args)


async def _answer(sock: Socket, handlers: Mapping[str, mgmt.Handler], peer: bytes, req_id: int,
                  verb: str, args: dict[str, Any]) -> None:
    ok, result = await mgmt.dispatch_async(handlers, verb, args)
    try:
        reply = wire.reply(req_id, ok, result)
    except (TypeError, ValueError) as exc:  # a handler returned something msgpack cannot carry
        reply = wire.reply(req_id, False, f"internal error: unencodable result ({exc})")
    # ROUTER without ROUTER_MANDATORY never blocks: a vanished peer's reply is dropped.
    await send_multipart(sock, [peer, *reply])

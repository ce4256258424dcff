"""Management-plane RPC, runtime-independent parts.

Every process (host agent, broker, VM) serves one management ROUTER socket; clients send
``wire.request(req_id, verb, args)`` and get ``wire.reply(req_id, ok, result)``.  This module
holds what the three runtimes share: parsing a request, dispatching it to a handler table,
turning failures into one-line error replies.  The runtimes (blocking, asyncio, trio) only
move frames.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from broker import wire

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Any]


class MgmtError(Exception):
    """A refused management command; the message is one line that names the field."""


class RemoteError(Exception):
    """A management call the remote process refused; carries its one-line reason."""


def parse_request(frames: list[bytes]) -> tuple[int, str, dict[str, Any]]:
    """Decode a REQUEST; raise ``wire.WireError`` for anything malformed."""
    hdr = wire.decode(frames)
    if hdr[1] != wire.REQUEST:
        raise wire.WireError("kind", f"expected a request, got {wire.KIND_NAMES[hdr[1]]}")
    _, _, req_id, verb, args = hdr
    if not isinstance(verb, str) or not isinstance(args, Mapping):
        raise wire.WireError("garbage", "request needs a verb string and an args map")
    return req_id, verb, dict(args)


def parse_reply(frames: list[bytes]) -> tuple[int, Any]:
    """Decode a REPLY into ``(req_id, result)``; a refused call raises ``RemoteError``."""
    hdr = wire.decode(frames)
    if hdr[1] != wire.REPLY:
        raise wire.WireError("kind", f"expected a reply, got {wire.KIND_NAMES[hdr[1]]}")
    _, _, req_id, ok, result = hdr
    if not ok:
        raise RemoteError(str(result))
    return req_id, result


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, MgmtError | ValueError | KeyError | TypeError):
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return text.splitlines()[0] if text else type(exc).__name__
    return f"internal error: {type(exc).__name__}: {exc}"


def dispatch(handlers: Mapping[str, Handler], verb: str, args: dict[str, Any]) -> tuple[bool, Any]:
    """Run a synchronous handler; return ``(ok, result_or_error_line)``."""
    handler = handlers.get(verb)
    if handler is None:
        return False, f"verb: unknown command {verb!r} (known: {', '.join(sorted(handlers))})"
    try:
        return True, handler(args)
    except Exception as exc:  # every failure becomes a reply; the server keeps running
        if not isinstance(exc, MgmtError | ValueError | KeyError | TypeError):
            log.exception("management verb %s failed", verb)
        return False, _error_text(exc)


async def dispatch_async(handlers: Mapping[str, Handler], verb: str,
                         args: dict[str, Any]) -> tuple[bool, Any]:
    """Like :func:`dispatch`, awaiting handlers that return awaitables (asyncio or trio)."""
    handler = handlers.get(verb)
    if handler is None:
        return False, f"verb: unknown command {verb!r} (known: {', '.join(sorted(handlers))})"
    try:
        result = handler(args)
        if inspect.isawaitable(result):
            result = await result
        return True, result
    except Exception as exc:
        if not isinstance(exc, MgmtError | ValueError | KeyError | TypeError):
            log.exception("management verb %s failed", verb)
        return False, _error_text(exc)


def require(args: Mapping[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    """Fetch a required argument or raise an error naming it."""
    if key not in args:
        raise MgmtError(f"{key}: required")
    value = args[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise MgmtError(f"{key}: expected {names}, got {type(value).__name__}")
    return value


AsyncHandler = Callable[[dict[str, Any]], Awaitable[Any]]


def call(endpoint: str, verb: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """One blocking management call (scripts, benchmarks); raises RemoteError or TimeoutError."""
    import zmq

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(wire.request(1, verb, args))
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"{endpoint}: no answer to {verb!r} within {timeout:g} s")
        _, result = parse_reply(sock.recv_multipart())
        return result
    finally:
        sock.close()


class AsyncMgmtClient:
    """A management client (DEALER) for asyncio processes (VMs: MOC calls the host agent).

    Calls may run concurrently from many tasks: one reader task files each reply under its
    request id; late replies to timed-out calls are dropped.  Close it before terminating
    its context.
    """

    def __init__(self, endpoint: str, *, context: Any = None) -> None:
        import zmq
        import zmq.asyncio

        self.endpoint = endpoint
        ctx = context if context is not None else zmq.asyncio.Context.instance()
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[bool, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def call(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Call ``verb``; raise :class:`RemoteError` if refused, TimeoutError if silent."""
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"mgmt-client {self.endpoint}")
        req_id = next(self._ids)
        fut: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            await self._sock.send_multipart(wire.request(req_id, verb, args))
            ok, result = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.endpoint}: no answer to {verb!r} within {timeout:g} s") from None
        finally:
            self._pending.pop(req_id, None)
        if not ok:
            raise RemoteError(str(result))
        return result

    async def _read(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            try:
                hdr = wire.decode(frames)
            except wire.WireError as exc:
                log.warning("%s: dropped a malformed reply (%s)", self.endpoint, exc)
                continue
            if hdr[1] != wire.REPLY:
                continue
            fut = self._pending.get(hdr[2])
            if fut is not None and not fut.done():
                fut.set_result((bool(hdr[3]), hdr[4]))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self._sock.close(linger=0)

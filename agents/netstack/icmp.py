"""ICMP echo endpoints (what ``ping`` opens: a datagram ICMP socket, keyed by identifier)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from broker.packets import DEFAULT_TTL, echo

from .errors import sock_error

if TYPE_CHECKING:
    from .stack import NetStack


class EchoEndpoint:
    """``protocol`` gets ``echo_reply(src, seq, payload, ttl, now)`` and
    ``error_received(exc)`` with an :class:`~.errors.IcmpError` naming the probe."""

    __slots__ = ("_stack", "protocol", "ident", "closed")

    def __init__(self, stack: NetStack, protocol: Any, ident: int) -> None:
        self._stack = stack
        self.protocol = protocol
        self.ident = ident
        self.closed = False

    def send(self, dst: str, seq: int, payload: bytes = b"", now: float | None = None,
             ident: int | None = None, ttl: int = DEFAULT_TTL) -> None:
        """Send an echo request; raises OSError(ENETUNREACH / EMSGSIZE / EPERM) like sendmsg."""
        stack = self._stack
        if self.closed:
            raise sock_error(errno.EBADF)
        route = stack._rcache.get(dst) or stack._route_slow(dst)
        if route is None:
            stack.drops["no_route"] += 1
            raise sock_error(errno.ENETUNREACH)
        if now is None:
            now = stack._now
        pkt = echo(route[2], dst, True, self.ident if ident is None else ident, seq & 0xFFFF, payload, ttl)
        err = stack._output(pkt, now)
        if err:
            raise sock_error(err)
        if stack._loop and not stack._busy:
            stack._run(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stack._echo.pop(self.ident, None)

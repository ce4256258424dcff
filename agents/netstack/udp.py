"""UDP endpoints (connection-less sockets, asyncio ``DatagramTransport`` method names)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from broker.packets import DEFAULT_TTL, udp

from .errors import sock_error

if TYPE_CHECKING:
    from .stack import NetStack

ANY4 = "0.0.0.0"
ANY6 = "::"
WILDCARDS = (ANY4, ANY6)


class UdpEndpoint:
    """A bound UDP socket.  ``protocol`` gets ``datagram_received(data, (ip, port))`` and
    ``error_received(exc)`` (ICMP errors, as a socket with ``IP_RECVERR`` reports them);
    with ``raw=True`` it gets ``packet_received(pkt, now)`` instead (VXLAN needs the VNI)."""

    __slots__ = ("_stack", "protocol", "local", "_ip", "_port", "_wild", "_v4only", "_raw", "_rx", "ttl", "closed")

    def __init__(self, stack: NetStack, protocol: Any, ip: str, port: int, raw: bool) -> None:
        self._stack = stack
        self.protocol = protocol
        self.local = (ip, port)
        self._ip = ip
        self._port = port
        self._wild = ip in WILDCARDS
        self._v4only = ip == ANY4
        self._raw = raw
        self._rx = protocol.packet_received if raw else protocol.datagram_received
        self.ttl = DEFAULT_TTL
        self.closed = False

    def sendto(self, data: bytes, addr: tuple[str, int], now: float | None = None) -> None:
        """Send one datagram; raises OSError(ENETUNREACH / EMSGSIZE / EPERM) like sendto(2)."""
        stack = self._stack
        if self.closed:
            raise sock_error(errno.EBADF)
        ip, port = addr
        src = self._ip
        if self._wild:
            route = stack._rcache.get(ip) or stack._route_slow(ip)
            if route is None:
                stack.drops["no_route"] += 1
                raise sock_error(errno.ENETUNREACH)
            src = route[2]
            if self._v4only and ":" in src:
                raise sock_error(errno.EAFNOSUPPORT)  # an AF_INET socket; "::" is dual-stack
        if now is None:
            now = stack._now
        err = stack._output(udp(src, ip, self._port, port, data, self.ttl), now)
        if err:
            raise sock_error(err)
        if stack._loop and not stack._busy:
            stack._run(now)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": self.local}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stack._udp_close(self)
            lost = getattr(self.protocol, "connection_lost", None)
            if lost is not None:
                lost(None)

    abort = close

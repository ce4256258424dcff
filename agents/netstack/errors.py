"""Socket errors as a real stack reports them, and the ICMP -> errno mapping.

Every error an app sees is an ``OSError`` with ``errno`` set; ``OSError(code, msg)`` picks
the builtin subclass itself (``ECONNREFUSED`` -> ``ConnectionRefusedError``, ``ETIMEDOUT`` ->
``TimeoutError``, ``ECONNRESET`` -> ``ConnectionResetError``, ...), so apps can catch either.
"""

from __future__ import annotations

import errno
import os

from broker import packets as P


def sock_error(code: int) -> OSError:
    """The OSError (subclass) a socket call fails with for ``code``."""
    return OSError(code, os.strerror(code))


class IcmpError(OSError):
    """An ICMP error about one of our echo requests (what ``ping`` prints as "From ...").

    ``errno`` is the code a socket would get (Linux ``icmp_err_convert``); the rest says who
    reported what about which probe: ``src`` (the router or host that answered), ``icmp_type``,
    ``icmp_code``, ``mtu`` (packet too big), ``v6``, and the probe's ``ident``/``seq``.
    """

    def __init__(self, code: int, *, src: str, icmp_type: int, icmp_code: int, mtu: int,
                 v6: bool, ident: int = 0, seq: int = 0) -> None:
        super().__init__(code, os.strerror(code))
        self.src = src
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.mtu = mtu
        self.v6 = v6
        self.ident = ident
        self.seq = seq


# Linux net/ipv4/icmp.c icmp_err_convert[] (destination unreachable codes).
_V4_UNREACH = {
    P.ICMP_NET_UNREACH: errno.ENETUNREACH,
    P.ICMP_HOST_UNREACH: errno.EHOSTUNREACH,
    P.ICMP_PROTO_UNREACH: errno.ENOPROTOOPT,
    P.ICMP_PORT_UNREACH: errno.ECONNREFUSED,
    P.ICMP_FRAG_NEEDED: errno.EMSGSIZE,
    P.ICMP_ADMIN_PROHIBITED: errno.EHOSTUNREACH,
}
# Linux net/ipv6/icmp.c tab_unreach[].
_V6_UNREACH = {
    P.ICMP6_NO_ROUTE: errno.ENETUNREACH,
    P.ICMP6_ADMIN_PROHIBITED: errno.EACCES,
    P.ICMP6_ADDR_UNREACH: errno.EHOSTUNREACH,
    P.ICMP6_PORT_UNREACH: errno.ECONNREFUSED,
}


def icmp_errno(proto: int, kind: int, code: int) -> int:
    """The errno an ICMP/ICMPv6 error (type ``kind``, ``code``) maps to."""
    if proto == P.ICMP:
        if kind == P.ICMP_DEST_UNREACH:
            return _V4_UNREACH.get(code, errno.EHOSTUNREACH)
        return errno.EHOSTUNREACH  # time exceeded (and anything else we accept as an error)
    if kind == P.ICMP6_DEST_UNREACH:
        return _V6_UNREACH.get(code, errno.EHOSTUNREACH)
    if kind == P.ICMP6_PACKET_TOO_BIG:
        return errno.EMSGSIZE
    return errno.EHOSTUNREACH

"""Sans-IO emulated IP stack: interfaces, routes, netfilter-like hooks, ICMP, UDP, TCP.

No asyncio, trio or zmq here and no clock: every entry point takes ``now``.  See
docs/contracts.md ("Netstack (sans-IO) API") and :mod:`agents.netstack.stack`.
"""

from .errors import IcmpError, icmp_errno, sock_error
from .icmp import EchoEndpoint
from .routes import LOOPBACK, Interface
from .stack import FORWARD, HOOK_POINTS, INPUT, OUTPUT, POSTROUTING, PREROUTING, NetStack
from .tcp import TcpConfig, TcpConnection, TcpListener
from .udp import UdpEndpoint

__all__ = [
    "FORWARD", "HOOK_POINTS", "INPUT", "LOOPBACK", "OUTPUT", "POSTROUTING", "PREROUTING",
    "EchoEndpoint", "IcmpError", "Interface", "NetStack", "TcpConfig", "TcpConnection",
    "TcpListener", "UdpEndpoint", "icmp_errno", "sock_error",
]

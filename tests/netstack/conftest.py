"""Topologies over the in-memory fabric (agents/netstack/fakenet.py), all on a manual clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agents.netstack import NetStack, TcpConfig
from agents.netstack.fakenet import FakeNet

HostFactory = Callable[..., NetStack]


def make_host(name: str, *nics: list[str], mtu: int = 1500, tcp: TcpConfig | None = None) -> NetStack:
    """A stack with one interface per address list (eth0, eth1, ...)."""
    stack = NetStack(name, tcp=tcp)
    for index, addresses in enumerate(nics):
        stack.add_interface(index, f"eth{index}", f"02:00:00:00:{len(name):02x}:{index:02x}", mtu, addresses)
    return stack


@pytest.fixture
def host() -> HostFactory:
    return make_host


@pytest.fixture
def lan() -> tuple[FakeNet, NetStack, NetStack]:
    """a (10.0.0.1, fd00::1) and b (10.0.0.2, fd00::2) on one segment, 0.5 ms apart."""
    net = FakeNet(seed=1)
    a = make_host("a", ["10.0.0.1/24", "fd00::1/64"])
    b = make_host("b", ["10.0.0.2/24", "fd00::2/64"])
    net.attach(a, 0)
    net.attach(b, 0)
    return net, a, b


@pytest.fixture
def routed() -> tuple[FakeNet, NetStack, NetStack, NetStack]:
    """a (10.1.0.10, fd01::10) -- r (forwarding) -- b (10.2.0.10, fd02::10).

    Two segments, r the default gateway of both ends.  The r-b segment's MTU is set by
    tests through ``r.set_mtu(1, ...)`` / ``b.set_mtu(0, ...)``.
    """
    net = FakeNet(seed=2)
    a = make_host("a", ["10.1.0.10/24", "fd01::10/64"])
    r = make_host("r", ["10.1.0.1/24", "fd01::1/64"], ["10.2.0.1/24", "fd02::1/64"])
    b = make_host("b", ["10.2.0.10/24", "fd02::10/64"])
    r.forwarding = True
    a.add_route("0.0.0.0/0", via="10.1.0.1")
    a.add_route("::/0", via="fd01::1")
    b.add_route("0.0.0.0/0", via="10.2.0.1")
    b.add_route("::/0", via="fd02::1")
    net.attach(a, 0, "left")
    net.attach(r, 0, "left")
    net.attach(r, 1, "right")
    net.attach(b, 0, "right")
    return net, a, r, b

"""An in-process fabric for AsyncStacks on one asyncio loop: the broker's delivery rules
(on-link by ``dst``, through the gateway with a hop and ICMP net-unreachable when nobody
owns the address, to ``via`` otherwise) without processes, so the stream adapter and the
tools are tested over the real netstack in milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from agents.netstack import NetStack
from agents.vm.streams import AsyncStack
from broker import packets as P


class LoopNet:
    def __init__(self) -> None:
        self.gateways: set[str] = set()
        self.owners: dict[str, tuple[AsyncStack, int]] = {}
        self.drop: Callable[[Any], bool] | None = None  # a partition / loss hook for tests
        self.delivered = 0
        self.batches: list[tuple[int, str, int]] = []  # (nic, via, packets) per sink call

    def add_vm(self, name: str, ip: str, prefixlen: int = 24, gateway: str | None = None) -> AsyncStack:
        """A VM with one NIC; its gateway defaults to .1 of its /24."""
        gateway = gateway or ip.rsplit(".", 1)[0] + ".1"
        self.gateways.add(gateway)
        stack = NetStack(name)
        last = int(ip.rsplit(".", 1)[1])
        stack.add_interface(index=0, name="eth0", mac=f"02:00:00:00:00:{last:02x}", mtu=1500,
                            addresses=[f"{ip}/{prefixlen}"])
        stack.add_route("0.0.0.0/0", dev=0, via=gateway)
        net = AsyncStack(stack, self._sink, asyncio.get_running_loop())
        self.owners[ip] = (net, 0)
        return net

    def _sink(self, out: list[tuple[int, str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        per_target: dict[tuple[int, int], tuple[AsyncStack, int, list[Any]]] = {}
        self.batches.append((out[0][0], out[0][1], len(out)))
        for _nic, via, pkt in out:
            if self.drop is not None and self.drop(pkt):
                continue
            routed = via in self.gateways
            owner = self.owners.get(pkt[P.DST] if routed or not via else via)
            if owner is None:
                if routed:
                    self._answer(P.net_unreachable(via, pkt), per_target)
                continue
            if routed:
                if pkt[P.TTL] <= 1:
                    self._answer(P.time_exceeded(via, pkt), per_target)
                    continue
                pkt = P.with_ttl(pkt, pkt[P.TTL] - 1)
            key = (id(owner[0]), owner[1])
            per_target.setdefault(key, (owner[0], owner[1], []))[2].append(pkt)
        for net, nic, pkts in per_target.values():
            self.delivered += len(pkts)
            loop.call_soon(net.receive, nic, pkts)

    def _answer(self, pkt: Any, per_target: dict[Any, Any]) -> None:
        owner = self.owners.get(pkt[P.DST])
        if owner is not None:
            per_target.setdefault((id(owner[0]), owner[1]), (owner[0], owner[1], []))[2].append(pkt)


def run_with_http_server(scenario: Callable[[LoopNet, AsyncStack, AsyncStack], Awaitable[Any]],
                         timeout: float = 10.0, a_ip: str = "172.16.0.10", b_ip: str = "172.16.0.11") -> Any:
    """``scenario(net, a, b)`` on a fresh LoopNet under uvloop, with an HTTP app on b:8080."""
    import uvloop

    from agents.vm.apps import make_app
    from agents.vm.runtime import AppConfig

    async def main() -> Any:
        net = LoopNet()
        a = net.add_vm("vm-a", a_ip)
        b = net.add_vm("vm-b", b_ip)
        app = make_app(b, AppConfig(kind="http", port=8080))
        await app.start()
        try:
            return await asyncio.wait_for(scenario(net, a, b), timeout)
        finally:
            await app.stop()
    return uvloop.run(main())

"""The VM's DHCP client over a real netstack, with the router's sans-IO DHCP server in the
loop (no processes): INIT, the address and default route on the NIC, renewals at T1, NAK ->
INIT again, and a clear failure when no offer comes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop

from agents.netstack import NetStack
from agents.vm.dhcp import DhcpClient, DhcpFailed
from agents.vm.runtime import NicConfig
from agents.vm.streams import AsyncStack
from broker import packets as P
from broker.dhcp import DhcpServer

MAC = "02:00:00:00:00:42"


class Router:
    """The broker's part: DHCP packets to the server, its answers back to the NIC."""

    def __init__(self, lease_s: float) -> None:
        self.server = self.fresh(lease_s)
        self.net: AsyncStack | None = None
        self.claims: list[str] = []
        self.released: list[str] = []
        self.sent: list[P.Packet] = []
        self.mute = False

    @staticmethod
    def fresh(lease_s: float) -> DhcpServer:
        return DhcpServer(network="dc", prefix="10.0.0.0/24", server_ip="10.0.0.1", start="10.0.0.100",
                          end="10.0.0.110", lease_s=lease_s)

    def send_output(self, out: list[tuple[int, str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        for nic, _via, pkt in out:
            if pkt[P.PROTO] == P.UDP and pkt[P.DPORT] == 67:
                self.sent.append(pkt)
                reply = None if self.mute else self.server.handle_packet(pkt, loop.time())
                if reply is not None and self.net is not None:
                    loop.call_soon(self.net.receive, nic, [reply])

    def claim(self, nic: int, ips: list[str]) -> None:
        self.claims += ips

    def release(self, nic: int, ips: list[str]) -> None:
        self.released += ips


def run(lease_s: float, scenario: Callable[[Router, DhcpClient, Any], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        router = Router(lease_s)
        stack = NetStack("dhcp-vm")
        stack.add_interface(index=0, name="eth0", mac=MAC, mtu=1500, addresses=[])
        net = AsyncStack(stack, router.send_output, asyncio.get_running_loop())
        router.net = net
        nic = NicConfig.parse({"name": "eth0", "network": "dc", "mac": MAC, "dhcp": True}, "nics[0]")
        vm = SimpleNamespace(name="dhcp-vm", net=net, data=router, _claimed={0: []},
                             config=SimpleNamespace(nics=[nic]))
        client = DhcpClient(vm, 0, timeout=1.0)
        try:
            return await asyncio.wait_for(scenario(router, client, vm), 10)
        finally:
            await client.stop()
    return uvloop.run(main())


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)  # polling a counter the client bumps


def test_init_puts_address_and_default_route_on_the_nic() -> None:
    async def scenario(router: Router, client: DhcpClient, vm: Any) -> None:
        ack = await client.acquire()
        assert ack["yiaddr"] == "10.0.0.100" and client.ip == "10.0.0.100"
        assert router.claims == ["10.0.0.100"] and vm._claimed[0] == ["10.0.0.100"]
        route = vm.net.stack.route("192.0.2.1")
        assert route is not None and route["via"] == "10.0.0.1" and route["src"] == "10.0.0.100"
        assert vm.net.stack.route("10.0.0.7")["via"] == ""  # the /24 is connected
        discover = router.sent[0]
        assert (discover[P.SRC], discover[P.DST], discover[P.SPORT]) == ("0.0.0.0", "255.255.255.255", 68)
        assert not vm.net.stack.hooks["PREROUTING"]  # the raw listener is gone after the exchange
    run(3600, scenario)


def test_renewals_at_t1_and_nak_sends_the_client_back_to_init() -> None:
    async def scenario(router: Router, client: DhcpClient, vm: Any) -> None:
        await client.acquire()
        client.start()
        await until(lambda: client.counts["renewals"] >= 2)  # T1 = 0.15 s
        renew = router.sent[-1]
        assert renew[P.SRC] == "10.0.0.100" and renew[P.DST] == "10.0.0.1"  # RENEWING is unicast
        assert client.ip == "10.0.0.100"
        router.server = Router.fresh(0.3)  # the server lost its leases: renewals are NAKed
        router.server.handle({"op": 1, "type": "DISCOVER", "xid": 1, "chaddr": "02:00:00:00:00:99"}, 0.0)
        await until(lambda: client.counts["naks"] >= 1 and client.ip is not None and client.ip != "10.0.0.100")
        assert router.released == ["10.0.0.100"] and vm._claimed[0] == [client.ip]
        assert vm.net.stack.route("192.0.2.1")["src"] == client.ip
    run(0.3, scenario)


def test_no_offer_is_a_clear_failure() -> None:
    async def scenario(router: Router, client: DhcpClient, vm: Any) -> None:
        router.mute = True
        with pytest.raises(DhcpFailed, match=r"^dhcp eth0: no DHCPOFFER from the router of network dc within 1 s"):
            await client.acquire()
        assert len(router.sent) >= 1 and client.ip is None
    run(60, scenario)

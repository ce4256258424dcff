"""``pod_probe``'s logic (agents/node/probe.py) over the real netstack on an in-process fabric:
what the sockets see decides — an answer (accepted, refused, a reply, an ICMP error from the
destination, an SCTP ABORT) is allowed, silence (a drop) is denied, within the timeout."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))

from vm_loopnet import LoopNet  # noqa: E402

from agents.node import probe  # noqa: E402
from agents.vm.streams import AsyncStack  # noqa: E402
from broker import packets as P  # noqa: E402

A, B = "172.16.0.10", "172.16.0.11"
DROPPED_PORT = 81  # the fabric drops everything to B on this port, as a policy drop would
TIMEOUT = 0.2


def run(scenario: Callable[[LoopNet, AsyncStack, AsyncStack], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        net = LoopNet()
        a = net.add_vm("vm-a", A)
        b = net.add_vm("vm-b", B)
        net.drop = lambda pkt: pkt[P.DST] == B and pkt[P.PROTO] in (P.TCP, P.UDP, P.SCTP) \
            and pkt[5] == DROPPED_PORT
        return await asyncio.wait_for(scenario(net, a, b), 10.0)
    return uvloop.run(main())


async def serve(b: AsyncStack) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    await b.start_server(handler, "0.0.0.0", 80)

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data, addr)

    await b.create_datagram_endpoint(Echo, local_addr=("0.0.0.0", 53))


def test_tcp_udp_and_sctp_verdicts_come_from_what_the_socket_saw() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> list[dict[str, Any]]:
        await serve(b)
        targets = [(B, 80, "TCP"), (B, 82, "TCP"), (B, DROPPED_PORT, "TCP"),
                   (B, 53, "UDP"), (B, 54, "UDP"), (B, DROPPED_PORT, "UDP"),
                   (B, 9000, "SCTP"), (B, DROPPED_PORT, "SCTP")]
        t0 = time.monotonic()
        out = await probe.probe_all(a, [A], targets, TIMEOUT)
        assert time.monotonic() - t0 < 1.0  # all at once: about one timeout, not eight
        return out

    got = {(r["port"], r["protocol"]): (r["allowed"], r["reason"]) for r in run(scenario)}
    assert got[(80, "TCP")] == (True, "connected")
    assert got[(82, "TCP")] == (True, "refused")
    assert got[(DROPPED_PORT, "TCP")] == (False, "timeout")
    assert got[(53, "UDP")] == (True, "reply")
    assert got[(54, "UDP")] == (True, "refused")       # ICMP port unreachable
    assert got[(DROPPED_PORT, "UDP")] == (False, "timeout")
    assert got[(9000, "SCTP")][0] is True               # no SCTP there: protocol unreachable
    assert got[(DROPPED_PORT, "SCTP")] == (False, "timeout")


def test_two_pods_probing_each_other_with_sctp_both_see_an_abort() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> tuple[Any, Any]:
        ra, rb = await asyncio.gather(probe.probe_all(a, [A], [(B, 9000, "SCTP")], TIMEOUT),
                                      probe.probe_all(b, [B], [(A, 9000, "SCTP")], TIMEOUT))
        # the handlers are gone afterwards: the stack says protocol unreachable again
        assert P.SCTP not in a.stack._dispatch and P.SCTP not in b.stack._icmp_error_sinks
        return ra, rb

    ra, rb = run(scenario)
    assert ra[0]["allowed"] and rb[0]["allowed"], (ra, rb)
    assert "abort" in (ra[0]["reason"], rb[0]["reason"])


@pytest.mark.parametrize(("raw", "needle"), [
    ("x", "expected a list"), ([["10.0.0.1", 80]], "targets[0]"), ([["nope", 80, "TCP"]], "targets[0].ip"),
    ([["10.0.0.1", 0, "TCP"]], "targets[0].port"), ([["10.0.0.1", 80, "ICMP"]], "targets[0].protocol"),
])
def test_bad_targets_are_refused_naming_the_field(raw: Any, needle: str) -> None:
    with pytest.raises(probe.ProbeError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        probe.parse_targets(raw)


def test_targets_are_canonical() -> None:
    assert probe.parse_targets([["2001:DB8::1", 53, "udp"]]) == [("2001:db8::1", 53, "UDP")]


def test_the_probe_module_knows_nothing_of_policy() -> None:
    text = Path(probe.__file__).read_text()
    assert "agents.policy" not in text and "from agents import policy" not in text

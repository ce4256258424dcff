"""The tools' command lines, output formats and exit codes, over a scripted network.

These pin down what scripts parse (iputils ping, OpenBSD nc); the same tools over the real
netstack are in test_vm_streams.py and, across processes, in test_vm_process.py.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest

from agents.netstack.errors import IcmpError, sock_error
from agents.vm.streams import PingReply
from agents.vm.tools import TOOLS, ping_time, run_tool


class ScriptedPinger:
    def __init__(self, script: dict[int, Any]) -> None:
        self.script = script
        self.sent: list[tuple[str, int, int, int]] = []
        self.closed = False

    async def ping(self, dst: str, seq: int, timeout: float, *, size: int = 56, ttl: int = 64) -> PingReply:
        self.sent.append((dst, seq, size, ttl))
        outcome = self.script.get(seq, TimeoutError())
        if isinstance(outcome, BaseException):
            raise outcome
        return PingReply(dst, seq, 63, outcome, size + 8)

    def close(self) -> None:
        self.closed = True


class ScriptedNet:
    """A NetAPI whose pings follow a script; connections are refused."""

    def __init__(self, script: dict[int, Any]) -> None:
        self.pingers: list[ScriptedPinger] = []
        self.script = script

    def pinger(self) -> ScriptedPinger:
        self.pingers.append(ScriptedPinger(self.script))
        return self.pingers[-1]

    async def open_connection(self, host: str, port: int, *, timeout: float | None = None,
                              limit: int = 2 ** 16) -> Any:
        raise sock_error(errno.ECONNREFUSED)

    async def start_server(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    async def create_datagram_endpoint(self, *a: Any, **k: Any) -> Any:
        raise sock_error(errno.ENETUNREACH)

    async def ping(self, *a: Any, **k: Any) -> PingReply:
        raise NotImplementedError


def run(net: Any, *argv: str) -> tuple[int, str, str]:
    return asyncio.run(run_tool(net, list(argv)))


def test_ping_all_replies_iputils_format() -> None:
    net = ScriptedNet({1: 0.000412, 2: 0.0015, 3: 0.0123})
    rc, out, err = run(net, "ping", "-c", "3", "-i", "0", "172.16.0.11")
    lines = out.splitlines()
    assert rc == 0 and err == ""
    assert lines[0] == "PING 172.16.0.11 (172.16.0.11) 56(84) bytes of data."
    assert lines[1:4] == [
        "64 bytes from 172.16.0.11: icmp_seq=1 ttl=63 time=0.412 ms",
        "64 bytes from 172.16.0.11: icmp_seq=2 ttl=63 time=1.50 ms",
        "64 bytes from 172.16.0.11: icmp_seq=3 ttl=63 time=12.3 ms",
    ]
    assert lines[4:6] == ["", "--- 172.16.0.11 ping statistics ---"]
    assert lines[6].startswith("3 packets transmitted, 3 received, 0% packet loss, time ")
    assert lines[6].endswith("ms")
    assert lines[7] == "rtt min/avg/max/mdev = 0.412/4.737/12.300/5.366 ms"
    assert net.pingers[0].closed


def test_ping_loss_errors_and_exit_codes() -> None:
    unreach = IcmpError(errno.ENETUNREACH, src="172.16.0.1", icmp_type=3, icmp_code=0, mtu=0, v6=False, seq=2)
    net = ScriptedNet({1: 0.001, 2: unreach})
    rc, out, _ = run(net, "ping", "-c", "3", "-i", "0", "-s", "100", "-t", "5", "172.16.0.11")
    assert rc == 0
    assert "PING 172.16.0.11 (172.16.0.11) 100(128) bytes of data." in out
    assert "108 bytes from 172.16.0.11: icmp_seq=1" in out
    assert "From 172.16.0.1 icmp_seq=2 Destination Net Unreachable\n" in out
    assert "3 packets transmitted, 1 received, +1 errors, 66.6667% packet loss" in out
    assert [s[2:] for s in net.pingers[0].sent] == [(100, 5)] * 3

    rc, out, _ = run(ScriptedNet({}), "ping", "-c", "2", "-i", "0", "-W", "0.1", "10.9.9.9")
    assert rc == 1 and "2 packets transmitted, 0 received, 100% packet loss" in out and "rtt" not in out

    texceeded = IcmpError(errno.EHOSTUNREACH, src="172.16.0.1", icmp_type=11, icmp_code=0, mtu=0, v6=False, seq=1)
    rc, out, _ = run(ScriptedNet({1: texceeded}), "ping", "-c", "1", "-t", "1", "10.1.1.1")
    assert rc == 1 and "From 172.16.0.1 icmp_seq=1 Time to live exceeded" in out


def test_ping_bad_input() -> None:
    # no DNS server answers (this net refuses every datagram): glibc's EAI_AGAIN
    rc, out, err = run(ScriptedNet({}), "ping", "-c", "1", "no-such-host")
    assert (rc, out, err) == (2, "", "ping: no-such-host: Temporary failure in name resolution\n")
    rc, _, err = run(ScriptedNet({}), "ping", "-t", "300", "10.0.0.1")
    assert rc == 2 and "out of range" in err
    rc, _, err = run(ScriptedNet({}), "ping", "-c", "x", "10.0.0.1")
    assert rc == 2 and err.startswith("usage: ping") and "ping: error: argument -c" in err
    rc, _, err = run(ScriptedNet({}), "ping")
    assert rc == 2 and "the following arguments are required: host" in err
    rc, out, _ = run(ScriptedNet({}), "ping", "-h")
    assert rc == 0 and out.startswith("usage: ping")


def test_ping_local_no_route() -> None:
    net = ScriptedNet({1: sock_error(errno.ENETUNREACH)})
    rc, out, err = run(net, "ping", "-c", "3", "10.9.9.9")
    assert rc == 2 and err == "ping: connect: Network is unreachable\n"
    assert len(net.pingers[0].sent) == 1  # gave up at once, like iputils


def test_ping_ipv6_header() -> None:
    rc, out, _ = run(ScriptedNet({1: 0.0002}), "ping", "-c", "1", "fd00::b")
    assert rc == 0 and out.startswith("PING fd00::b(fd00::b) 56 data bytes\n")


@pytest.mark.parametrize(("ms", "text"), [
    (0.0004, "0.000"), (0.412, "0.412"), (0.9999, "0.999"), (1.0, "1.00"), (9.994, "9.99"),
    (9.996, "10.0"), (12.34, "12.3"), (99.94, "99.9"), (99.96, "100"), (123.4, "123"), (1234.5, "1235"),
])
def test_ping_time_format(ms: float, text: str) -> None:
    assert ping_time(ms) == text


def test_nc_refused_and_unknown_tool() -> None:
    rc, out, err = run(ScriptedNet({}), "nc", "-z", "-v", "10.0.0.2", "80")
    assert (rc, out, err) == (1, "", "nc: connect to 10.0.0.2 port 80 (tcp) failed: Connection refused\n")
    rc, out, err = run(ScriptedNet({}), "nc", "-z", "10.0.0.2", "80")
    assert (rc, out, err) == (1, "", "")  # OpenBSD nc reports failures only with -v
    rc, _, err = run(ScriptedNet({}), "nc", "-z", "10.0.0.2", "70000")
    assert rc == 1 and "port number invalid" in err
    assert run(ScriptedNet({}), "telnet", "x") == (127, "", "sh: 1: telnet: not found\n")
    assert {"ping", "nc", "transfer", "udp-send"} <= set(TOOLS)

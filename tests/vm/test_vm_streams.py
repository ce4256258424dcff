"""The asyncio adapter over the real netstack, on uvloop, over an in-process fabric (vm_loopnet):
streams, flow control, errors, datagrams, ping, and the tools and apps on top."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from vm_loopnet import LoopNet

from agents.vm.apps import make_app
from agents.vm.runtime import AppConfig
from agents.vm.streams import AsyncStack, PingError, StackTransport
from agents.vm.tools import run_tool

A, B, FAR = "172.16.0.10", "172.16.0.11", "10.1.0.5"


def run(scenario: Callable[[LoopNet, AsyncStack, AsyncStack], Awaitable[Any]], timeout: float = 10.0) -> Any:
    async def main() -> Any:
        net = LoopNet()
        a = net.add_vm("vm-a", A)
        b = net.add_vm("vm-b", B)
        return await asyncio.wait_for(scenario(net, a, b), timeout)
    return uvloop.run(main())


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


def test_stream_round_trip_and_half_close() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        server = await b.start_server(echo, "0.0.0.0", 7)
        reader, writer = await a.open_connection(B, 7, timeout=2)
        assert writer.get_extra_info("peername") == (B, 7)
        local = writer.get_extra_info("sockname")
        assert local[0] == A and 1024 <= local[1] <= 65535
        assert isinstance(writer.transport, StackTransport)
        writer.write(b"hello ")
        writer.writelines([b"world", b"!"])
        await writer.drain()
        assert await reader.readexactly(12) == b"hello world!"
        assert writer.can_write_eof()
        writer.write_eof()
        assert await reader.read() == b""  # the echo server answered our FIN with its own
        with pytest.raises(RuntimeError):
            writer.write(b"late")
        writer.close()
        await writer.wait_closed()
        assert writer.transport.is_closing()
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await a.open_connection(B, 7, timeout=2)
    run(scenario)


def test_connect_errors_are_socket_errors() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        with pytest.raises(ConnectionRefusedError) as refused:
            await a.open_connection(B, 8, timeout=2)
        assert refused.value.errno == errno.ECONNREFUSED
        # Nobody owns 10.9.9.9: the gateway answers net unreachable (RFC 1122 4.2.3.9: a hard
        # error while connecting).
        with pytest.raises(OSError) as unreachable:
            await a.open_connection("10.9.9.9", 80, timeout=2)
        assert unreachable.value.errno == errno.ENETUNREACH
        with pytest.raises(OSError):
            await a.open_connection("no-such-host", 80)
        net.drop = lambda pkt: True  # a partition
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await a.open_connection(B, 7, timeout=0.3)
        assert 0.25 <= loop.time() - start < 2.0
        # A connect the app gives up on (cancelled) leaves no half-open connection behind.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.open_connection(B, 7), 0.05)
        await asyncio.sleep(0)
        assert a.stack.connections() == []
    run(scenario)


def test_abort_resets_the_peer() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        got: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()

        async def reader_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                got.set_result(await reader.read())
            except ConnectionResetError as exc:
                got.set_result(exc)

        await b.start_server(reader_side, "0.0.0.0", 9)
        _, writer = await a.open_connection(B, 9, timeout=2)
        writer.write(b"x")
        await writer.drain()
        writer.transport.abort()
        assert isinstance(await got, ConnectionResetError)
    run(scenario)


class Recording(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.resumed = asyncio.Event()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")
        self.resumed.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def test_write_backpressure_and_intact_megabytes() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        digests: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            h = hashlib.sha256()
            n = 0
            while data := await reader.read(65536):
                h.update(data)
                n += len(data)
            await digests.put((n, h.hexdigest()))
            writer.close()

        await b.start_server(sink, "0.0.0.0", 5001)
        proto = Recording()
        transport = await a.create_connection(lambda: proto, (B, 5001), timeout=2)
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        data = os.urandom(3 * 1024 * 1024)
        transport.write(data)
        assert proto.events == ["pause"] and transport.get_write_buffer_size() > 64 * 1024
        await proto.resumed.wait()
        assert transport.get_write_buffer_size() <= 16 * 1024
        transport.write_eof()
        assert await digests.get() == (len(data), hashlib.sha256(data).hexdigest())
        transport.close()
        assert await proto.lost is None
    run(scenario)


def test_reading_paused_by_a_slow_reader_loses_nothing() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        ready = asyncio.Event()
        result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await ready.wait()  # the StreamReader's buffer passes 2*limit: it pauses the transport
            result.set_result(await reader.read())
            writer.close()

        await b.start_server(slow, "0.0.0.0", 5002, limit=1024)
        _, writer = await a.open_connection(B, 5002, timeout=2)
        data = os.urandom(200_000)
        writer.write(data)
        writer.write_eof()
        await asyncio.sleep(0.05)
        ready.set()
        assert await result == data
        writer.close()
    run(scenario)


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.put_nowait(exc)


def test_datagram_endpoints() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        server_t, server = await b.create_datagram_endpoint(Datagrams, local_addr=("0.0.0.0", 53))
        client_t, client = await a.create_datagram_endpoint(Datagrams, remote_addr=(B, 53))
        assert client_t.get_extra_info("peername") == (B, 53)
        client_t.sendto(b"query")
        data, addr = await server.queue.get()
        assert data == b"query" and addr[0] == A and addr == client_t.get_extra_info("sockname")
        server_t.sendto(b"answer", addr)
        assert await client.queue.get() == (b"answer", (B, 53))
        with pytest.raises(ValueError):
            client_t.sendto(b"x", ("172.16.0.99", 53))
        # A connected socket only hears its peer (connect(2)).
        other_t, _ = await b.create_datagram_endpoint(Datagrams, local_addr=("0.0.0.0", 54))
        other_t.sendto(b"stranger", addr)
        server_t.sendto(b"peer", addr)
        assert await client.queue.get() == (b"peer", (B, 53))
        # ICMP port unreachable reaches a connected socket as ECONNREFUSED (RFC 1122 4.1.3.3).
        lonely_t, lonely = await a.create_datagram_endpoint(Datagrams, remote_addr=(B, 9999))
        lonely_t.sendto(b"anyone?")
        assert isinstance(await lonely.errors.get(), ConnectionRefusedError)
        for t in (server_t, client_t, other_t, lonely_t):
            t.close()
            assert t.is_closing()
    run(scenario)


def test_ping_replies_and_icmp_errors() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        net.add_vm("far", FAR)
        reply = await a.ping(B, 1, timeout=2)
        assert (reply.src, reply.seq, reply.ttl, reply.size) == (B, 1, 64, 64) and reply.rtt > 0
        reply = await a.ping(FAR, 2, timeout=2, size=100)
        assert (reply.src, reply.ttl, reply.size) == (FAR, 63, 108)  # one router hop
        with pytest.raises(PingError) as err:
            await a.ping("10.9.9.9", 3, timeout=2)
        assert (err.value.src, err.value.icmp_type, err.value.icmp_code) == ("172.16.0.1", 3, 0)
        with pytest.raises(PingError) as err:
            await a.ping(FAR, 4, timeout=2, ttl=1)
        assert (err.value.src, err.value.icmp_type) == ("172.16.0.1", 11)
        net.drop = lambda pkt: True
        with pytest.raises(TimeoutError):
            await a.ping(B, 5, timeout=0.1)
    run(scenario)


def test_tools_and_apps_over_the_netstack() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> dict[str, Any]:
        apps = [make_app(b, AppConfig(kind=kind, port=port)) for kind, port in
                (("tcp-sink", 5001), ("tcp-echo", 7), ("udp-echo", 7), ("udp-sink", 9))]
        for app in apps:
            await app.start()
        out: dict[str, Any] = {
            "ping": await run_tool(a, ["ping", "-c", "2", "-i", "0.01", "-W", "2", B]),
            "transfer": await run_tool(a, ["transfer", "--bytes", "1000000", B, "5001"]),
            "nc": await run_tool(a, ["nc", "-v", "-w", "2", B, "7"], stdin="line\n"),
            "nc_u": await run_tool(a, ["nc", "-u", "-w", "0.5", B, "7"], stdin="dgram"),
            "nc_uz_refused": await run_tool(a, ["nc", "-u", "-z", "-v", "-w", "1", B, "4444"]),
            "udp": await run_tool(a, ["udp-send", "--count", "500", "--size", "64", B, "9"]),
        }
        await asyncio.sleep(0.05)
        out["stats"] = {app.name: app.stats() for app in apps}
        for app in apps:
            await app.stop()
        return out

    out = run(scenario)
    rc, stdout, _ = out["ping"]
    assert rc == 0 and "2 packets transmitted, 2 received, 0% packet loss" in stdout
    rc, stdout, stderr = out["transfer"]
    assert rc == 0 and stdout.startswith(f"transfer: 1000000 bytes to {B}:5001 in ") and "sha256 match" in stdout
    assert out["nc"][0] == 0 and out["nc"][1] == "line\n"
    assert out["nc"][2].startswith(f"Connection to {B} 7 port [tcp/")
    assert out["nc_u"] == (0, "dgram", "")
    assert out["nc_uz_refused"] == (1, "", f"nc: connect to {B} port 4444 (udp) failed: Connection refused\n")
    assert out["udp"][0] == 0
    stats = out["stats"]
    assert stats["tcp-sink:5001"]["last_bytes"] == 1_000_000 and stats["tcp-sink:5001"]["connections"] == 1
    assert stats["udp-sink:9"]["datagrams"] == 500 and stats["udp-sink:9"]["bytes"] == 500 * 64
    assert stats["udp-echo:7"]["datagrams"] == 1 and stats["tcp-echo:7"]["bytes"] == 5


def test_one_flush_per_loop_iteration_batches_output() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        _, sink = await b.create_datagram_endpoint(Datagrams, local_addr=("0.0.0.0", 9))
        t, _ = await a.create_datagram_endpoint(Datagrams, remote_addr=(B, 9))
        net.batches.clear()
        for _ in range(100):
            t.sendto(b"x" * 10)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert net.batches == [(0, "", 100)]  # one sink call for 100 sends in one iteration
        for _ in range(100):
            await sink.queue.get()
    run(scenario)

"""HTTP/1.1 (h11) server and client over VM streams, on the in-process fabric (vm_loopnet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop
from vm_loopnet import LoopNet

from agents.vm.http import (
    HttpClient,
    Request,
    Response,
    http_request,
    json_response,
    parse_url,
    serve_http,
)
from agents.vm.streams import AsyncStack

A, B = "172.16.0.10", "172.16.0.11"


def run(scenario: Callable[[AsyncStack, AsyncStack], Awaitable[Any]], timeout: float = 10.0) -> Any:
    async def main() -> Any:
        net = LoopNet()
        a = net.add_vm("vm-a", A)
        b = net.add_vm("vm-b", B)
        return await asyncio.wait_for(scenario(a, b), timeout)
    return uvloop.run(main())


async def raw_exchange(net: AsyncStack, data: bytes) -> bytes:
    reader, writer = await net.open_connection(B, 80, timeout=2)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def test_keep_alive_reuse_and_request_fields() -> None:
    seen: list[Request] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        return json_response({"n": len(seen), "path": req.path, "q": req.query})

    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        server = await serve_http(b, "0.0.0.0", 80, handler, name="t")
        client = HttpClient(a, B, 80, timeout=2)
        for i in range(3):
            resp = await client.request("GET", f"/x/{i}?a=1&b=two", headers={"X-Test": "yes"})
            assert resp.status == 200 and resp.reason == "OK"
            assert resp.json() == {"n": i + 1, "path": f"/x/{i}", "q": {"a": "1", "b": "two"}}
            assert resp.headers["content-type"] == "application/json"
            assert int(resp.headers["content-length"]) == len(resp.body)
        assert client.connects == 1 and server.connections == 1 and server.requests == 3
        req = seen[0]
        assert req.method == "GET" and req.target == "/x/0?a=1&b=two"
        assert req.headers["host"] == B + ":80" or req.headers["host"] == B
        assert req.headers["x-test"] == "yes"
        assert req.client[0] == A and req.client[1] > 1024
        assert len({r.client for r in seen}) == 1  # the same connection throughout
        client.close()
        server.close()
        await server.wait_closed()
    run(scenario)


def test_content_length_bodies_both_ways() -> None:
    async def handler(req: Request) -> Response:
        return Response(status=201, headers={"Content-Type": "application/octet-stream"}, body=req.body[::-1])

    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        await serve_http(b, "0.0.0.0", 80, handler)
        client = HttpClient(a, B, 80, timeout=5)
        big = bytes(range(256)) * 1000  # 256 kB: several windows
        resp = await client.request("POST", "/up", body=big)
        assert resp.status == 201 and resp.reason == "Created" and resp.body == big[::-1]
        resp = await client.request("PUT", "/empty")
        assert resp.status == 201 and resp.body == b""
        assert client.connects == 1
        head = await client.request("HEAD", "/h")
        assert head.status == 201 and head.body == b""
        again = await client.request("POST", "/up", body=b"abc")
        assert again.body == b"cba" and client.connects == 1
    run(scenario)


def test_chunked_stream_is_flushed_per_chunk_and_read_by_lines() -> None:
    gate = asyncio.Event()
    closed = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b'{"type":"ADDED"}\n'
            await gate.wait()  # the second event exists only after the client saw the first
            yield b'{"type":"MODI'
            yield b'FIED"}\n'
        finally:
            closed.set()

    async def handler(req: Request) -> Response:
        return Response(headers={"Content-Type": "application/json"}, stream=events())

    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        await serve_http(b, "0.0.0.0", 80, handler)
        client = HttpClient(a, B, 80, timeout=2)
        async with client.stream("GET", "/watch") as resp:
            assert resp.status == 200 and resp.headers["transfer-encoding"] == "chunked"
            lines = resp.iter_lines(timeout=2)
            assert await anext(lines) == b'{"type":"ADDED"}'
            gate.set()
            assert await anext(lines) == b'{"type":"MODIFIED"}'
            with pytest.raises(StopAsyncIteration):
                await anext(lines)
        await asyncio.wait_for(closed.wait(), 2)
        # chunk boundaries survive: iter_chunks yields what the server flushed
        gate.clear()
        gate.set()
        async with client.stream("GET", "/watch") as resp:
            chunks = [c async for c in resp.iter_chunks(timeout=2)]
        assert chunks == [b'{"type":"ADDED"}\n', b'{"type":"MODI', b'FIED"}\n']
    run(scenario)


def test_client_going_away_ends_the_stream() -> None:
    closed = asyncio.Event()

    async def forever() -> AsyncIterator[bytes]:
        try:
            yield b"first\n"
            await asyncio.Event().wait()
            yield b"never\n"
        finally:
            closed.set()

    async def handler(req: Request) -> Response:
        return Response(stream=forever())

    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        server = await serve_http(b, "0.0.0.0", 80, handler)
        client = HttpClient(a, B, 80, timeout=2)
        async with client.stream("GET", "/w") as resp:
            assert await anext(resp.iter_lines(timeout=2)) == b"first"
        await asyncio.wait_for(closed.wait(), 3)  # the generator was closed by the server
        deadline = asyncio.get_running_loop().time() + 3
        while server.active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert server.active == 0
    run(scenario)


def test_garbage_gets_400_and_the_server_carries_on() -> None:
    async def handler(req: Request) -> Response:
        if req.path == "/boom":
            raise RuntimeError("handler bug")
        return Response(body=b"fine\n")

    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        server = await serve_http(b, "0.0.0.0", 80, handler)
        answer = await raw_exchange(a, b"GARBAGE\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"connection: close" in answer.lower()
        answer = await raw_exchange(a, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert server.bad_requests == 2
        client = HttpClient(a, B, 80, timeout=2)
        boom = await client.request("GET", "/boom")
        assert boom.status == 500 and boom.reason == "Internal Server Error"
        ok = await client.request("GET", "/")
        assert ok.status == 200 and ok.body == b"fine\n" and server.errors == 1
        # HTTP/1.0 without keep-alive: close-delimited answer, then the server closes
        answer = await raw_exchange(a, b"GET / HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"fine\n")
    run(scenario)


def test_server_closing_makes_the_client_reconnect() -> None:
    async def handler(req: Request) -> Response:
        headers = {"Connection": "close"} if req.path == "/last" else {}
        return Response(headers=headers, body=req.path.encode())

    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        await serve_http(b, "0.0.0.0", 80, handler, idle_timeout=0.2)
        client = HttpClient(a, B, 80, timeout=2)
        assert (await client.request("GET", "/last")).body == b"/last"
        assert (await client.request("GET", "/next")).body == b"/next"
        assert client.connects == 2
        await asyncio.sleep(0.5)  # the server's idle timeout closes the kept-alive connection
        assert (await client.request("GET", "/after-idle")).body == b"/after-idle"
        assert client.connects == 3
    run(scenario)


def test_one_shot_and_errors() -> None:
    async def handler(req: Request) -> Response:
        return Response(status=404, body=b"no\n")

    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        await serve_http(b, "0.0.0.0", 8080, handler)
        resp = await http_request(a, "GET", f"http://{B}:8080/nothing", timeout=2)
        assert resp.status == 404 and resp.reason == "Not Found" and resp.body == b"no\n"
        with pytest.raises(ConnectionRefusedError):
            await http_request(a, "GET", f"http://{B}:81/", timeout=2)
        with pytest.raises(ConnectionRefusedError):
            await HttpClient(a, B, 81, timeout=2).request("GET", "/")
    run(scenario)


def test_parse_url() -> None:
    assert parse_url("http://10.0.0.1:8080/a?b=c") == ("http", "10.0.0.1", 8080, "/a?b=c")
    assert parse_url("10.0.0.1") == ("http", "10.0.0.1", 80, "/")
    assert parse_url("https://h/") == ("https", "h", 443, "/")
    with pytest.raises(ValueError, match="url"):
        parse_url("http://:80/")

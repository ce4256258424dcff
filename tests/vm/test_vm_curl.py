"""curl (real HTTP/1.1 over h11) and the ``http`` app, over the in-process fabric (vm_loopnet):
curl 7.81's output, messages and exit codes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from vm_loopnet import LoopNet, run_with_http_server

from agents.vm.http import Request, Response, serve_http
from agents.vm.streams import AsyncStack
from agents.vm.tools import run_tool

A, B = "172.16.0.10", "172.16.0.11"


def run(scenario: Callable[[LoopNet, AsyncStack, AsyncStack], Awaitable[Any]], timeout: float = 10.0) -> Any:
    return run_with_http_server(scenario, timeout, A, B)


def test_http_app_answers_curl() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        assert await run_tool(a, ["curl", "-s", f"http://{B}:8080/"]) == (0, "hello from vm-b\n", "")
        assert await run_tool(a, ["curl", "-s", f"http://{B}:8080/hostname"]) == (0, "vm-b\n", "")
        rc, out, _ = await run_tool(a, ["curl", "-s", f"http://{B}:8080/clientip"])
        assert rc == 0 and re.fullmatch(rf"{A}:\d+\n", out)
        assert await run_tool(a, ["curl", "-s", f"{B}:8080/echo?msg=hi%20there"]) == (0, "hi there", "")
        rc, out, err = await run_tool(a, ["curl", "-s", f"http://{B}:8080/nope"])
        assert (rc, out, err) == (0, "404 page not found\n", "")
        rc, out, err = await run_tool(a, ["curl", "-sS", "-f", f"http://{B}:8080/nope"])
        assert (rc, out, err) == (22, "", "curl: (22) The requested URL returned error: 404\n")
    run(scenario)


def test_write_out_output_file_and_include() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        rc, out, _ = await run_tool(a, ["curl", "-s", "-o", "/dev/null", "-w",
                                        r"%{http_code} %{remote_ip}:%{remote_port} %{time_total}\n",
                                        f"http://{B}:8080/"])
        assert rc == 0
        m = re.fullmatch(rf"200 {B}:8080 (\d+\.\d{{6}})\n", out)
        assert m and float(m.group(1)) < 5
        rc, out, _ = await run_tool(a, ["curl", "-s", "-i", f"http://{B}:8080/hostname"])
        assert rc == 0 and out.startswith("HTTP/1.1 200 OK\r\n") and out.endswith("\r\n\r\nvm-b\n")
        assert "Content-Length: 5\r\n" in out
        rc, out, _ = await run_tool(a, ["curl", "-sI", f"http://{B}:8080/"])
        assert rc == 0 and out.startswith("HTTP/1.1 200 OK\r\n") and out.endswith("\r\n\r\n")
        rc, out, _ = await run_tool(a, ["curl", "-s", "-w", "%{http_code}", f"http://{B}:81/"])
        assert (rc, out) == (7, "000")
    run(scenario)


def test_connection_refused_and_silence() -> None:
    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        rc, out, err = await run_tool(a, ["curl", f"http://{B}:81/"])
        assert rc == 7 and out == ""
        assert re.fullmatch(rf"curl: \(7\) Failed to connect to {B} port 81 after \d+ ms: Connection refused\n", err)
        assert await run_tool(a, ["curl", "-s", f"http://{B}:81/"]) == (7, "", "")
        rc, _, err = await run_tool(a, ["curl", "-sS", f"http://{B}:81/"])
        assert rc == 7 and err.startswith("curl: (7) Failed to connect")
        assert await run_tool(a, ["curl", "https://x/"]) == (1, "", 'curl: (1) Protocol "https" not supported\n')
        assert await run_tool(a, ["curl", "http://web/"]) == (6, "", "curl: (6) Could not resolve host: web\n")
        rc, _, err = await run_tool(a, ["curl"])
        assert rc == 2 and err.startswith("curl: no URL specified!")
        rc, _, err = await run_tool(a, ["curl", "--bogus", "x"])
        assert rc == 2 and "curl --help" in err
    run(scenario)


def test_timeouts() -> None:
    async def stall(req: Request) -> Response:
        await asyncio.Event().wait()
        raise AssertionError

    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        await serve_http(b, "0.0.0.0", 9000, stall)
        rc, _, err = await run_tool(a, ["curl", "-m", "0.3", f"http://{B}:9000/"])
        assert rc == 28
        m = re.fullmatch(r"curl: \(28\) Operation timed out after (\d+) milliseconds with 0 bytes received\n", err)
        assert m and 280 <= int(m.group(1)) < 2000
        net.drop = lambda pkt: True  # every packet lost: the SYN goes unanswered
        rc, _, err = await run_tool(a, ["curl", "--connect-timeout", "0.2", f"http://{B}:8080/"])
        assert rc == 28
        assert re.fullmatch(r"curl: \(28\) Connection timed out after \d+ milliseconds\n", err)
    run(scenario)


def test_methods_headers_data_and_verbose() -> None:
    seen: list[Request] = []

    async def record(req: Request) -> Response:
        seen.append(req)
        return Response(status=201, headers={"Content-Type": "text/plain"}, body=b"ok\n")

    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        await serve_http(b, "0.0.0.0", 9001, record)
        rc, out, _ = await run_tool(a, ["curl", "-s", "-d", "a=1", "-d", "b=2", "-H", "X-One: 1",
                                        "-H", "Accept:", f"http://{B}:9001/p"])
        assert (rc, out) == (0, "ok\n")
        req = seen[-1]
        assert req.method == "POST" and req.body == b"a=1&b=2"
        assert req.headers["content-type"] == "application/x-www-form-urlencoded"
        assert req.headers["x-one"] == "1" and "accept" not in req.headers
        assert req.headers["user-agent"] == "curl/7.81.0" and req.headers["host"] == f"{B}:9001"
        rc, out, err = await run_tool(a, ["curl", "-sv", "-X", "PUT", f"http://{B}:9001/q"])
        assert rc == 0 and seen[-1].method == "PUT" and out == "ok\n"
        lines = err.splitlines()
        assert lines[0] == f"*   Trying {B}:9001..."
        assert lines[1] == f"* Connected to {B} ({B}) port 9001 (#0)"
        assert lines[2] == "> PUT /q HTTP/1.1"
        assert f"> Host: {B}:9001" in lines and "> Accept: */*" in lines and "> " in lines
        assert "< HTTP/1.1 201 Created" in lines and "< Content-Type: text/plain" in lines
        assert lines[-1] == f"* Connection #0 to host {B} left intact"
    run(scenario)


def test_empty_reply_and_reset() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async def scenario(net: LoopNet, a: AsyncStack, b: AsyncStack) -> None:
        await b.start_server(close_at_once, "0.0.0.0", 9002)
        await b.start_server(reset, "0.0.0.0", 9003)
        assert await run_tool(a, ["curl", f"http://{B}:9002/"]) == (52, "", "curl: (52) Empty reply from server\n")
        rc, out, err = await run_tool(a, ["curl", f"http://{B}:9003/"])
        assert (rc, out, err) == (18, "partial", "curl: (18) transfer closed with 93 bytes remaining to read\n")
    run(scenario)

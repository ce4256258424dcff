"""load: open-loop HTTP load, paced on a fixed timeline and each outcome classified, over the
in-process fabric with a real HTTP app, a closed port, a silent server and a resetting one."""

from __future__ import annotations

import asyncio
import errno
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from vm_loopnet import LoopNet

from agents.vm.apps import make_app
from agents.vm.http import ProtocolError, serve_http, text_response
from agents.vm.load import LoadStats, classify, schedule
from agents.vm.runtime import AppConfig
from agents.vm.streams import AsyncStack
from agents.vm.tools import run_tool

A, B = "172.16.0.10", "172.16.0.11"
SILENT, CLOSER = 9001, 9002


def run(scenario: Callable[[AsyncStack, AsyncStack], Awaitable[Any]], timeout: float = 15.0) -> Any:
    async def main() -> Any:
        net = LoopNet()
        a = net.add_vm("vm-a", A)
        b = net.add_vm("vm-b", B)
        app = make_app(b, AppConfig(kind="http", port=8080))
        await app.start()
        held: list[Any] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # accepts, reads, never answers

        async def closer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.close()  # closes before any response

        servers = [await b.start_server(silent, "0.0.0.0", SILENT), await b.start_server(closer, "0.0.0.0", CLOSER)]
        try:
            return await asyncio.wait_for(scenario(a, b), timeout)
        finally:
            for s in servers:
                s.close()
            await app.stop()
    return uvloop.run(main())


async def load_json(a: AsyncStack, *args: str) -> dict[str, Any]:
    rc, out, err = await run_tool(a, ["load", "--json", *args])
    assert (rc, err) == (0, ""), err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_healthy_server_every_request_ok_with_the_documented_keys() -> None:
    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        t0 = time.perf_counter()
        res = await load_json(a, "--rps", "100", "--duration", "2s", f"http://{B}:8080/hostname")
        took = time.perf_counter() - t0
        assert set(res) >= {"url", "requests", "failures", "failures_by_kind", "failure_rate", "success_rate",
                            "latency_ms", "per_second", "rps_target", "rps_achieved"}
        assert (res["requests"], res["failures"], res["failures_by_kind"]) == (200, 0, {})
        assert (res["failure_rate"], res["success_rate"], res["rps_target"]) == (0.0, 1.0, 100.0)
        assert [s["requests"] for s in res["per_second"]] == [100, 100]
        lat = res["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert 1.95 < took < 3.0  # paced over the duration, not as fast as possible
    run(scenario)


def test_open_loop_keeps_the_rate_while_the_server_stalls() -> None:
    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        t0 = time.perf_counter()
        res = await load_json(a, "--rps", "50", "--duration", "1", "--timeout", "0.4", f"http://{B}:{SILENT}/")
        took = time.perf_counter() - t0
        # a closed loop would have sent about 1 / 0.4 = 3 requests; the schedule sends 50
        assert res["requests"] == 50 and res["failures_by_kind"] == {"timeout": 50}
        assert res["success_rate"] == 0.0 and res["latency_ms"]["p50"] is None
        assert took < 1 + 0.4 + 0.5
    run(scenario)


def test_failures_are_classified_by_kind() -> None:
    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        res = await load_json(a, "--rps", "20", "--duration", "0.5", f"http://{B}:81/")
        assert res["failures_by_kind"] == {"refused": 10} and res["failures"] == 10
        res = await load_json(a, "--rps", "20", "--duration", "0.5", f"http://{B}:8080/nope")
        assert res["failures_by_kind"] == {"http_error": 10} and res["failure_rate"] == 1.0
        res = await load_json(a, "--rps", "20", "--duration", "0.5", f"http://{B}:{CLOSER}/")
        assert res["failures_by_kind"] == {"reset": 10}
        res = await load_json(a, "--rps", "20", "--duration", "0.5", "--timeout", "1", "http://10.9.9.9/")
        assert res["failures_by_kind"] == {"unreachable": 10}
    run(scenario)


def test_keepalive_reuses_connections_and_new_opens_one_per_request() -> None:
    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        async def handler(req: Any) -> Any:
            return text_response("ok\n")

        server = await serve_http(b, "0.0.0.0", 8081, handler)
        try:
            res = await load_json(a, "--rps", "40", "--duration", "0.5", f"http://{B}:8081/")
            assert res["requests"] == 20 and res["failures"] == 0
            assert server.connections == 20
            res = await load_json(a, "--rps", "40", "--duration", "0.5", "--connections", "keepalive",
                                  f"http://{B}:8081/")
            assert res["requests"] == 20 and res["failures"] == 0 and res["connections"] == "keepalive"
            assert server.connections - 20 < 5
        finally:
            server.close()
    run(scenario)


def test_text_report_and_bad_arguments() -> None:
    async def scenario(a: AsyncStack, b: AsyncStack) -> None:
        rc, out, _ = await run_tool(a, ["load", "--rps", "20", "--duration", "0.5", f"http://{B}:81/"])
        assert rc == 0  # failures are a measurement, not an error
        assert "SECOND" in out and "refused=10" in out and "success rate 0.00%" in out
        for bad in (["load", "--rps", "0", f"http://{B}/"], ["load", "--rps", "5", "https://x/"],
                    ["load", f"http://{B}/"], ["load", "--rps", "5", "--connections", "some", f"http://{B}/"],
                    ["load", "--rps", "5", "http://nosuchhost/"], ["load", "--rps", "5", "--duration", "x", "http://a/"]):
            assert (await run_tool(a, bad))[0] == 2, bad
    run(scenario)


def test_schedule_stats_and_classification_are_pure() -> None:
    assert schedule(4, 1) == [0, 0.25, 0.5, 0.75] and len(schedule(200, 20)) == 4000
    stats = LoadStats(2)
    stats.record(0.1, "ok", 0.010)
    stats.record(0.9, "refused")
    stats.record(1.5, "ok", 0.020)
    stats.record(2.3, "timeout")  # a late offset lands in the last second
    rep = stats.report("http://x/", 2, 2, 2.1)
    assert (rep["requests"], rep["failures"], rep["failures_by_kind"]) == (4, 2, {"refused": 1, "timeout": 1})
    assert rep["failure_rate"] == 0.5 and rep["latency_ms"] == {"p50": 10.0, "p90": 20.0, "p99": 20.0, "max": 20.0}
    assert [(s["requests"], s["failures"]) for s in rep["per_second"]] == [(2, 1), (2, 1)]
    assert classify(None, 302) == "ok" and classify(None, 503) == "http_error"
    assert classify(ConnectionRefusedError()) == "refused" and classify(TimeoutError()) == "timeout"
    assert classify(ConnectionResetError()) == "reset" and classify(ProtocolError("closed")) == "reset"
    assert classify(OSError(errno.EHOSTUNREACH, "x")) == "unreachable"
    assert classify(OSError(errno.ENETUNREACH, "x")) == "unreachable"
    assert classify(OSError(errno.EPERM, "x")) == "other"

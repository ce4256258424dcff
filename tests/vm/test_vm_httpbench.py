"""httpbench: closed-loop HTTP load on keep-alive connections, over the in-process fabric."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from vm_loopnet import run_with_http_server

from agents.vm.httpbench import summarize
from agents.vm.streams import AsyncStack
from agents.vm.tools import run_tool

A, B = "172.16.0.10", "172.16.0.11"


def run(scenario: Callable[[AsyncStack], Awaitable[Any]], timeout: float = 10.0) -> Any:
    return run_with_http_server(lambda _net, a, _b: scenario(a), timeout, A, B)


def test_one_keep_alive_connection_carries_every_request() -> None:
    async def scenario(a: AsyncStack) -> None:
        rc, out, err = await run_tool(a, ["httpbench", "--duration", "0.3", "--warmup", "0.05", "--json",
                                          f"http://{B}:8080/hostname"])
        assert (rc, err) == (0, ""), err
        res = json.loads(out)
        assert res["requests"] > 10 and res["errors"] == 0
        assert res["connects"] == 1 and res["statuses"] == {"200": res["requests"]}
        assert 0 < res["p50_us"] <= res["p99_us"] <= res["max_us"]
        assert abs(res["rps"] - res["requests"] / res["seconds"]) < 1
    run(scenario)


def test_new_connection_opens_one_connection_per_request() -> None:
    async def scenario(a: AsyncStack) -> None:
        rc, out, err = await run_tool(a, ["httpbench", "--duration", "0.3", "--warmup", "0", "--new-connection",
                                          "--json", f"http://{B}:8080/hostname"])
        assert (rc, err) == (0, ""), err
        res = json.loads(out)
        assert res["requests"] > 5 and res["errors"] == 0
        assert res["connects"] >= res["requests"]  # (the last one may be cut off by the deadline)
    run(scenario)


def test_several_connections_and_errors() -> None:
    async def scenario(a: AsyncStack) -> None:
        rc, out, _ = await run_tool(a, ["httpbench", "--duration", "0.2", "--warmup", "0", "--connections", "3",
                                        "--json", f"http://{B}:8080/"])
        assert rc == 0 and json.loads(out)["connects"] == 3
        rc, out, _ = await run_tool(a, ["httpbench", "--duration", "0.1", "--warmup", "0", "--json",
                                        f"http://{B}:8080/nope"])
        res = json.loads(out)
        assert rc == 1 and res["requests"] == 0 and res["errors"] > 0 and "404" in res["statuses"]
        rc, out, _ = await run_tool(a, ["httpbench", "--duration", "0.1", "--warmup", "0", "--json",
                                        f"http://{B}:81/"])
        res = json.loads(out)
        assert rc == 1 and res["errors"] > 0 and "refused" in res["first_error"].lower()
        assert (await run_tool(a, ["httpbench", "https://x/"]))[0] == 2
        assert (await run_tool(a, ["httpbench", "http://nosuchhost/"]))[0] == 2
        rc, out, _ = await run_tool(a, ["httpbench", "--duration", "0.1", f"http://{B}:8080/"])
        assert rc == 0 and "Requests/sec:" in out
    run(scenario)


def test_summary_percentiles_are_nearest_rank() -> None:
    res = summarize([i / 1e6 for i in range(1, 101)], 2.0, 0)
    assert (res["requests"], res["rps"], res["p50_us"], res["p99_us"], res["max_us"]) == (100, 50.0, 50, 99, 100)
    assert summarize([], 1.0, 3)["requests"] == 0


def test_host_header_keeps_ipv6_brackets_and_drops_the_default_port() -> None:
    from agents.vm.http import host_header

    assert host_header("web", 80) == "web" and host_header("web", 8080) == "web:8080"
    assert host_header("fd00:10:96::a", 80) == "[fd00:10:96::a]"
    assert host_header("fd00:10:96::a", 8080) == "[fd00:10:96::a]:8080"

"""``option httpchk`` on a separate ``check port`` (what MOC programs for a Service with
``externalTrafficPolicy: Local``: kube-proxy's healthCheckNodePort answers 200 with local
endpoints and 503 without): only servers answering 2xx/3xx stay UP and get traffic."""

from __future__ import annotations

import asyncio
from typing import Any

from test_haproxy_proxy import B1, B2, Env, config, exchange, run, until

from agents.haproxy.core import Defaults, LBConfig, LBConfigError, render_cfg

HC_PORT = 32001


async def health_server(stack: Any, status: list[int]) -> Any:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        code = status[0]
        writer.write(f"HTTP/1.1 {code} {'OK' if code == 200 else 'Service Unavailable'}\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()
    return await stack.start_server(serve, "0.0.0.0", HC_PORT)


def local_config() -> dict[str, Any]:
    doc = config(servers=[{"name": "s1", "address": B1, "port": 7, "check_port": HC_PORT},
                          {"name": "s2", "address": B2, "port": 7, "check_port": HC_PORT}])
    doc["backends"][0]["check"]["http"] = "/healthz"
    return doc


def test_http_check_on_the_check_port_takes_nodes_without_endpoints_down() -> None:
    b2_status = [503]

    async def scenario(env: Env) -> None:
        await health_server(env.b1.stack, [200])
        await health_server(env.b2.stack, b2_status)
        rows = await until(lambda: (r := env.rows())["s2"]["status"] == "DOWN" and r, "s2 DOWN")
        assert rows["s2"]["check_status"] == "L7STS" and rows["s1"]["check_status"] == "L7OK"
        assert rows["s1"]["status"] == "UP"
        for i in range(4):
            assert await exchange(env.client, b"x%d" % i) == b"x%d" % i
        assert env.b2.sessions == 0 and env.b1.sessions == 4
        b2_status[0] = 200  # an endpoint arrived on b2's node
        await until(lambda: env.rows()["s2"]["status"] == "UP", "s2 UP")
    run(scenario, local_config())


def test_check_port_and_httpchk_in_haproxy_cfg_and_validation() -> None:
    cfg = LBConfig.parse(local_config(), Defaults())
    text = render_cfg(cfg)
    assert "    option httpchk GET /healthz" in text
    assert f"server s1 {B1}:7 check inter" in text and f"port {HC_PORT}" in text
    bad = local_config()
    bad["backends"][0]["servers"][0]["check_port"] = 0
    try:
        LBConfig.parse(bad, Defaults())
    except LBConfigError as exc:
        assert str(exc).startswith("backends[0].servers[0].check_port:")
    else:
        raise AssertionError("check_port 0 accepted")

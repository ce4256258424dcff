"""The mode-tcp proxy, health checks and the lbagent over the real netstack on an in-process
fabric (vm_loopnet): round robin, the client address servers see, DOWN after fall x inter,
retries and redispatch, no server, PROXY v2, and PUT/GET of the lbagent over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvloop
from vm_loopnet import LoopNet

from agents.haproxy.core import Defaults, LBConfig, parse_csv, parse_proxy_v2
from agents.haproxy.lbagent import LBAGENT_PORT, LbAgent
from agents.haproxy.proxy import TcpProxy
from agents.vm.http import http_request, serve_http
from agents.vm.streams import AsyncStack

LB, CLIENT, B1, B2 = "172.16.0.5", "172.16.0.10", "172.16.0.11", "172.16.0.12"
VIP, VIP2 = "172.16.0.150", "172.16.0.151"
INTER = 0.05


class Vips:
    """The VM's keepalived role on the loop fabric: the LB stack answers for its VIPs."""

    def __init__(self, net: LoopNet, stack: AsyncStack) -> None:
        self.net, self.stack = net, stack
        self.held: list[str] = []

    def claim_vips(self, ips: list[str]) -> None:
        for ip in ips:
            self.stack.add_address(0, ip)
            self.net.owners[ip] = (self.stack, 0)
            self.held.append(ip)

    def release_vips(self, ips: list[str]) -> None:
        for ip in ips:
            self.stack.remove_address(0, ip)
            self.net.owners.pop(ip, None)
            self.held.remove(ip)


@dataclass
class Backend:
    """An echo server that remembers who connected (the address a backend sees)."""

    stack: AsyncStack
    port: int = 7
    peers: list[str] = field(default_factory=list)
    first_bytes: list[bytes] = field(default_factory=list)
    server: Any = None

    async def start(self) -> None:
        self.server = await self.stack.start_server(self._serve, "0.0.0.0", self.port)

    def stop(self) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])
        first = True
        try:
            while data := await reader.read(65536):
                if first:
                    self.first_bytes.append(data)
                    first = False
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    @property
    def sessions(self) -> int:
        return len(self.first_bytes)


@dataclass
class Env:
    net: LoopNet
    lb: AsyncStack
    client: AsyncStack
    b1: Backend
    b2: Backend
    proxy: TcpProxy
    vips: Vips

    def rows(self) -> dict[str, dict[str, str]]:
        return {r["svname"]: r for r in parse_csv(self.proxy.csv())}


def config(*, servers: list[dict[str, Any]] | None = None, balance: str = "roundrobin",
           inter: float = INTER, **extra: Any) -> dict[str, Any]:
    return {
        "vips": [VIP],
        "frontends": [{"name": "echo", "bind": f"{VIP}:7", "default_backend": "echo"}],
        "backends": [{"name": "echo", "balance": balance, "check": {"inter": inter},
                      "servers": servers or [{"name": "s1", "address": B1, "port": 7},
                                             {"name": "s2", "address": B2, "port": 7}]}],
        **extra,
    }


DEFAULTS = Defaults(inter=INTER, timeout_connect=0.3, turnaround=0.01)


def run(scenario: Callable[[Env], Awaitable[Any]], doc: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    async def main() -> Any:
        net = LoopNet()
        lb = net.add_vm("lb", LB)
        client = net.add_vm("client", CLIENT)
        b1, b2 = Backend(net.add_vm("b1", B1)), Backend(net.add_vm("b2", B2))
        await b1.start()
        await b2.start()
        vips = Vips(net, lb)
        proxy = TcpProxy(lb, DEFAULTS, vips=vips)
        await proxy.apply(LBConfig.parse(doc or config(), DEFAULTS))
        try:
            return await asyncio.wait_for(scenario(Env(net, lb, client, b1, b2, proxy, vips)), timeout)
        finally:
            await proxy.close()
    return uvloop.run(main())


async def exchange(stack: AsyncStack, payload: bytes, host: str = VIP, port: int = 7) -> bytes:
    """Send, half-close, read to EOF: an echo through the proxy returns ``payload``."""
    reader, writer = await stack.open_connection(host, port, timeout=2.0)
    writer.write(payload)
    writer.write_eof()
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 5.0)
    writer.close()
    return data


async def until(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # polling in-process state against a deadline


def test_round_robin_and_the_address_servers_see() -> None:
    async def scenario(env: Env) -> None:
        for i in range(4):
            assert await exchange(env.client, b"hello %d" % i) == b"hello %d" % i
        assert env.b1.sessions == 2 and env.b2.sessions == 2
        # A proxy, not NAT: every server saw the LB VM's own address (checks included).
        assert set(env.b1.peers) | set(env.b2.peers) == {LB}
        rows = await until(lambda: (r := env.rows())["FRONTEND"]["scur"] == "0" and r, "sessions closed")
        assert (rows["s1"]["lbtot"], rows["s2"]["lbtot"], rows["BACKEND"]["lbtot"]) == ("2", "2", "4")
        assert (rows["s1"]["bin"], rows["s1"]["bout"]) == ("14", "14")  # "hello 0" + "hello 2"
        assert (rows["FRONTEND"]["stot"], rows["FRONTEND"]["bin"], rows["BACKEND"]["bout"]) == ("4", "28", "28")
        assert rows["s1"]["status"] == "UP" and rows["s1"]["check_status"] == "L4OK"
    run(scenario)


def test_large_transfer_with_half_close() -> None:
    async def scenario(env: Env) -> None:
        blob = hashlib.sha256(b"x").digest() * 8192  # 256 KiB
        got = await exchange(env.client, blob)
        assert len(got) == len(blob) and got == blob
    run(scenario)


def test_a_stopped_server_goes_down_after_fall_checks_and_traffic_moves() -> None:
    async def scenario(env: Env) -> None:
        await until(lambda: env.rows()["s2"]["status"] == "UP" and env.rows()["s2"]["check_status"] == "L4OK",
                    "s2 checked")
        env.b2.stop()  # connection refused from now on
        stopped = time.monotonic()
        rows = await until(lambda: (r := env.rows())["s2"]["status"] == "DOWN" and r, "s2 DOWN")
        took = time.monotonic() - stopped
        assert 2 * INTER <= took <= 4 * INTER + 0.4, took  # fall (3) x inter, within a check
        s2 = rows["s2"]
        assert (s2["check_status"], s2["chkdown"], s2["chkfail"]) == ("L4CON", "1", "3")
        assert s2["last_chk"] == "Connection refused"
        assert (rows["BACKEND"]["status"], rows["BACKEND"]["act"]) == ("UP", "1")
        before = env.b1.sessions
        for i in range(4):
            assert await exchange(env.client, b"x%d" % i) == b"x%d" % i
        assert env.b1.sessions == before + 4 and env.rows()["s2"]["econ"] == "0"
        # Back: UP after rise (2) successful checks.
        await env.b2.start()
        back = time.monotonic()
        await until(lambda: env.rows()["s2"]["status"] == "UP", "s2 UP again")
        assert time.monotonic() - back <= 3 * INTER + 0.1
        assert env.rows()["s2"]["downtime"] == "0"  # int seconds
    run(scenario)


def test_a_blackholed_server_times_out() -> None:
    async def scenario(env: Env) -> None:
        await until(lambda: env.rows()["s2"]["check_status"] == "L4OK", "s2 checked")
        env.net.drop = lambda pkt: pkt[1] == B2  # a partition: nothing reaches b2
        rows = await until(lambda: (r := env.rows())["s2"]["status"] == "DOWN" and r, "s2 DOWN", timeout=5)
        assert rows["s2"]["check_status"] == "L4TOUT" and rows["s2"]["check_desc"] == "Layer4 timeout"
        env.net.drop = None
        await until(lambda: env.rows()["s2"]["status"] == "UP", "s2 UP after healing")
    run(scenario)


def test_connect_failures_retry_then_redispatch() -> None:
    async def scenario(env: Env) -> None:
        env.b2.stop()  # refused, but the checks (every 10 s) have not noticed yet
        for i in range(4):
            assert await exchange(env.client, b"r%d" % i) == b"r%d" % i
        rows = env.rows()
        assert env.b1.sessions == 4 and env.b2.sessions == 0
        # Two sessions were given s2: each tried it 1 + (retries - 1) times, then redispatched.
        assert (rows["s2"]["econ"], rows["s2"]["wretr"], rows["s2"]["wredis"]) == ("6", "4", "2")
            # Not checked yet: UP, "but will fall down at first failure" (health = rise).
        assert (rows["BACKEND"]["econ"], rows["BACKEND"]["wredis"], rows["s2"]["status"]) == ("6", "2", "UP 1/3")
    run(scenario, config(inter=10.0))


def test_no_server_closes_the_client_connection() -> None:
    async def scenario(env: Env) -> None:
        env.b1.stop()
        env.b2.stop()
        await until(lambda: env.rows()["BACKEND"]["status"] == "DOWN", "backend DOWN")
        started = time.monotonic()
        reader, writer = await env.client.open_connection(VIP, 7, timeout=2.0)
        assert await asyncio.wait_for(reader.read(-1), 2.0) == b""
        assert time.monotonic() - started < 0.5
        writer.close()
        rows = env.rows()
        assert rows["BACKEND"]["econ"] == "1" and rows["BACKEND"]["chkdown"] == "1"
    run(scenario)


def test_send_proxy_v2_carries_the_client() -> None:
    servers = [{"name": "s1", "address": B1, "port": 7, "send_proxy_v2": True}]
    async def scenario(env: Env) -> None:
        got = await exchange(env.client, b"payload")
        parsed = parse_proxy_v2(got)
        assert parsed is not None
        length, src, dst = parsed
        assert src is not None and src[0] == CLIENT and dst == (VIP, 7)
        assert got[length:] == b"payload"
    run(scenario, config(servers=servers))


def test_leastconn_through_the_proxy() -> None:
    async def scenario(env: Env) -> None:
        # A long session on s1; the next ones all go to s2 (fewer sessions).
        reader, writer = await env.client.open_connection(VIP, 7, timeout=2.0)
        writer.write(b"held")
        await until(lambda: env.b1.sessions + env.b2.sessions == 1, "first session")
        held = env.b1 if env.b1.sessions else env.b2
        other = env.b2 if held is env.b1 else env.b1
        for i in range(3):
            await exchange(env.client, b"%d" % i)
        assert other.sessions == 3 and held.sessions == 1
        writer.close()
    run(scenario, config(balance="leastconn"))


def test_lbagent_over_http() -> None:
    async def scenario(env: Env) -> None:
        saved: list[LBConfig] = []
        agent = LbAgent(env.proxy, DEFAULTS, on_applied=saved.append)
        server = await serve_http(env.lb, "0.0.0.0", LBAGENT_PORT, agent.handle, name="lbagent")
        base = f"http://{LB}:{LBAGENT_PORT}"
        try:
            r = await http_request(env.client, "GET", base + "/v1/config")
            assert r.status == 200 and r.json()["generation"] == 1
            # Move the frontend to a second VIP and switch the balance algorithm.
            new = config(vips=[VIP2], balance="source")
            new["frontends"][0]["bind"] = f"{VIP2}:7"
            r = await http_request(env.client, "PUT", base + "/v1/config", body=json.dumps(new).encode(),
                                   headers={"Content-Type": "application/json"})
            assert r.status == 200, r.text
            assert r.json() == {"generation": 2, "started": ["echo"], "stopped": ["echo"],
                                "claimed": [VIP2], "released": [VIP]}
            assert env.vips.held == [VIP2] and len(saved) == 1
            assert await exchange(env.client, b"via vip2", VIP2) == b"via vip2"
            # Unchanged servers kept their state and counters across the PUT.
            assert env.rows()["BACKEND"]["algo"] == "source"
            # A bad config: 400, one line naming the field, nothing changed.
            bad = config(vips=[VIP2])
            bad["backends"][0]["servers"][0]["port"] = 70000
            r = await http_request(env.client, "PUT", base + "/v1/config", body=json.dumps(bad).encode())
            assert r.status == 400
            assert r.json() == {"error": "backends[0].servers[0].port: expected 1..65535, got 70000"}
            r = await http_request(env.client, "PUT", base + "/v1/config", body=b"{nope")
            assert r.status == 400 and r.json()["error"].startswith("body: not JSON")
            # Valid but impossible: a frontend on the lbagent's own port.
            clash = config(vips=[VIP2])
            clash["frontends"] = [{"name": "x", "bind": f"0.0.0.0:{LBAGENT_PORT}", "default_backend": "echo"}]
            r = await http_request(env.client, "PUT", base + "/v1/config", body=json.dumps(clash).encode())
            assert r.status == 409 and "cannot bind 0.0.0.0:46000" in r.json()["error"], r.text
            r = await http_request(env.client, "GET", base + "/v1/config")
            assert r.json()["generation"] == 2 and r.json()["frontends"][0]["bind"] == f"{VIP2}:7"
            assert env.vips.held == [VIP2]
            r = await http_request(env.client, "GET", base + "/v1/haproxy.cfg")
            assert r.status == 200 and f"    bind {VIP2}:7" in r.text.splitlines()
            assert "    balance source" in r.text.splitlines()
            r = await http_request(env.client, "GET", base + "/v1/stats")
            assert r.text.startswith("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,")
            assert {row["svname"] for row in parse_csv(r.text)} == {"FRONTEND", "s1", "s2", "BACKEND"}
            r = await http_request(env.client, "GET", base + "/v1/stats?format=json")
            assert r.json()[0]["svname"] == "FRONTEND"
            r = await http_request(env.client, "DELETE", base + "/v1/config")
            assert r.status == 405 and r.headers["allow"] == "GET, PUT"
            r = await http_request(env.client, "GET", base + "/v2/nothing")
            assert r.status == 404
        finally:
            server.close()
    run(scenario)

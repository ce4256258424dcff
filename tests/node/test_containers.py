"""The emulated container apps over the in-process fabric (tests/vm/vm_loopnet.py): a pod
stack serving, a client stack asking, real HTTP/1.1 bytes and UDP datagrams between them."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))
from vm_loopnet import LoopNet  # noqa: E402

from agents.node.containers import (  # noqa: E402
    CONTAINER_APPS,
    ContainerApp,
    IncompleteProxyHeader,
    ProxyHeader,
    ProxyProtocolError,
    build_proxy_v1,
    build_proxy_v2,
    make_container_app,
    parse_proxy_header,
    probe_attempt,
)
from agents.node.images import ContainerPlan, plan_container  # noqa: E402
from agents.node.probes import ProbeSpec  # noqa: E402
from agents.vm.http import ClientResponse, http_request  # noqa: E402
from agents.vm.streams import AsyncStack  # noqa: E402

CLIENT, POD = "172.16.0.10", "172.16.0.20"
POD_NAME = "web-7c9f8-abcde"
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.43"


def make_plan(image: str, node_os: str = "linux", **spec: Any) -> ContainerPlan:
    result = plan_container({"name": "app", "image": image, **spec}, node_os)
    assert isinstance(result, ContainerPlan), result
    return result


Scenario = Callable[[AsyncStack, AsyncStack, ContainerApp], Awaitable[Any]]


def run(plan: ContainerPlan, scenario: Scenario, timeout: float = 10.0, **kwargs: Any) -> Any:
    async def main() -> Any:
        net = LoopNet()
        client = net.add_vm("client", CLIENT)
        pod = net.add_vm(POD_NAME, POD)
        app = make_container_app(pod, plan, hostname=POD_NAME, **kwargs)
        await app.start()
        try:
            return await asyncio.wait_for(scenario(client, pod, app), timeout)
        finally:
            await app.stop()
    return uvloop.run(main())


async def get(net: AsyncStack, port: int, path: str, **kwargs: Any) -> ClientResponse:
    return await http_request(net, kwargs.pop("method", "GET"), f"http://{POD}:{port}{path}", timeout=3, **kwargs)


async def raw(net: AsyncStack, port: int, *pieces: bytes, pause: float = 0.0) -> bytes:
    """Send ``pieces`` (a pause between them), half-close, read to EOF."""
    reader, writer = await net.open_connection(POD, port, timeout=2)
    for i, piece in enumerate(pieces):
        if i and pause:
            await asyncio.sleep(pause)
        writer.write(piece)
        await writer.drain()
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def udp(net: AsyncStack, port: int, payload: bytes, *, wait: float = 1.0) -> bytes | None:
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            answers.put_nowait(data)

    transport, _ = await net.create_datagram_endpoint(Proto, remote_addr=(POD, port))
    try:
        transport.sendto(payload)
        try:
            return await asyncio.wait_for(answers.get(), wait)
        except TimeoutError:
            return None
    finally:
        transport.close()


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


# --- PROXY protocol parsing (sans-IO) -------------------------------------------------------

V2_V4 = build_proxy_v2(("203.0.113.7", 40000), ("10.96.0.15", 80))
V2_V6 = build_proxy_v2(("2001:db8::7", 40001), ("2001:db8::1", 443))


@pytest.mark.parametrize("data, expected", [
    (V2_V4 + b"GET /", ProxyHeader("PROXY", ("203.0.113.7", 40000), ("10.96.0.15", 80), 28, 2)),
    (V2_V6, ProxyHeader("PROXY", ("2001:db8::7", 40001), ("2001:db8::1", 443), 52, 2)),
    (build_proxy_v2(None, None), ProxyHeader("LOCAL", None, None, 16, 2)),
    (build_proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=b"\x04\x00\x03abc"),  # a TLV, skipped
     ProxyHeader("PROXY", ("192.0.2.1", 1), ("192.0.2.2", 2), 34, 2)),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x00\x00\x00", ProxyHeader("PROXY", None, None, 16, 2)),  # AF_UNSPEC
    (build_proxy_v1(("198.51.100.9", 5555), ("10.0.0.1", 80)) + b"GET",
     ProxyHeader("PROXY", ("198.51.100.9", 5555), ("10.0.0.1", 80), 42, 1)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader("PROXY", None, None, 15, 1)),
    (b"GET / HTTP/1.1\r\n", None),
    (b"POST / HTTP/1.1\r\n", None),
    (b"\x16\x03\x01", None),
])
def test_parse_proxy_header(data: bytes, expected: ProxyHeader | None) -> None:
    assert parse_proxy_header(data) == expected


@pytest.mark.parametrize("data", [V2_V4[:1], V2_V4[:12], V2_V4[:15], V2_V4[:27], V2_V6[:40], b"PROX",
                                  b"PROXY TCP4 1.2.3.4"])
def test_parse_proxy_header_incomplete(data: bytes) -> None:
    with pytest.raises(IncompleteProxyHeader):
        parse_proxy_header(data)


@pytest.mark.parametrize("data", [
    V2_V4[:12] + b"\x11" + V2_V4[13:],                      # version 1 in a v2 header
    V2_V4[:12] + b"\x2f" + V2_V4[13:],                      # command 15
    V2_V4[:14] + b"\x00\x04" + V2_V4[16:20],                # INET with a 4-byte address block
    b"PROXY TCP4 1.2.3.4 5.6.7.8 x 80\r\n",
    b"PROXY TCP9 1.2.3.4 5.6.7.8 1 80\r\n",
    b"PROXY " + b"x" * 120,
])
def test_parse_proxy_header_malformed(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError) as info:
        parse_proxy_header(data)
    assert not isinstance(info.value, IncompleteProxyHeader)


# --- agnhost netexec -------------------------------------------------------------------------


def test_netexec_http_endpoints() -> None:
    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        r = await get(client, 8080, "/hostname")
        assert (r.status, r.text) == (200, POD_NAME)
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        r = await get(client, 8080, "/clientip")
        ip, port = r.text.rsplit(":", 1)
        assert ip == CLIENT and int(port) > 1024
        assert (await get(client, 8080, "/echo?msg=hello%20there")).text == "hello there"
        r = await get(client, 8080, "/echo?msg=teapot&code=418")
        assert (r.status, r.text) == (418, "teapot")
        assert (await get(client, 8080, "/healthz")).status == 200
        r = await get(client, 8080, "/shell?cmd=id")
        assert r.status == 403 and "refused" in r.text
        assert (await get(client, 8080, "/upload", method="POST")).status == 403
        r = await get(client, 8080, "/")
        assert r.status == 200 and r.text.startswith("NOW: 20") and " +0000 UTC m=+" in r.text
        assert (await get(client, 8080, "/no/such/path")).text.startswith("NOW: ")  # "/" catches all
        r = await get(client, 8080, "/header?key=X-Probe", headers={"X-Probe": "yes"})
        assert r.text == "yes"
        r = await get(client, 8080, "/redirect?location=/echo%3Fmsg%3Dx&code=307")
        assert (r.status, r.headers["location"]) == (307, "/echo?msg=x")
        assert app.stats()["requests"] == 11
    run(make_plan(AGNHOST, args=["netexec"]), scenario)


def test_netexec_clientip_behind_a_proxy_protocol_header() -> None:
    request = b"GET /clientip HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"

    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        assert body_of(await raw(client, 8080, V2_V4 + request)) == b"203.0.113.7:40000"
        assert body_of(await raw(client, 8080, V2_V6 + request)) == b"[2001:db8::7]:40001"
        # the header split over segments, then the request
        out = await raw(client, 8080, V2_V4[:10], V2_V4[10:20], V2_V4[20:], request, pause=0.05)
        assert body_of(out) == b"203.0.113.7:40000"
        v1 = build_proxy_v1(("198.51.100.9", 5555), (POD, 8080))
        assert body_of(await raw(client, 8080, v1 + request)) == b"198.51.100.9:5555"
        # LOCAL: the connection's own endpoints
        out = await raw(client, 8080, build_proxy_v2(None, None) + request)
        assert body_of(out).startswith(CLIENT.encode() + b":")
        # no header: as before
        assert body_of(await raw(client, 8080, request)).startswith(CLIENT.encode() + b":")
        # a malformed header: the connection is dropped, the server carries on
        assert await raw(client, 8080, V2_V4[:12] + b"\x11" + V2_V4[13:] + request) == b""
        assert (await get(client, 8080, "/hostname")).text == POD_NAME
    run(make_plan(AGNHOST, args=["netexec", "--http-port=8080"]), scenario)


def test_netexec_udp_commands() -> None:
    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        assert await udp(client, 8081, b"hostname") == POD_NAME.encode()
        assert await udp(client, 8081, b"  HostName\n") == POD_NAME.encode()
        assert await udp(client, 8081, b"echo Hello World") == b"hello world"  # lower-cased, as agnhost does
        answer = await udp(client, 8081, b"clientip")
        assert answer is not None and answer.decode().startswith(CLIENT + ":")
        assert await udp(client, 8081, b"what?", wait=0.3) is None  # unknown commands go unanswered
        assert app.stats()["datagrams"] == 5
    run(make_plan(AGNHOST, args=["netexec", "--udp-port=8081"]), scenario)


def test_netexec_without_udp_is_not_healthy_and_exit_ends_the_process() -> None:
    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        assert (await get(client, 9000, "/healthz")).status == 412  # serverReady never set
        assert await udp(client, 8081, b"hostname", wait=0.3) is None
        assert not app.exited
        assert (await get(client, 9000, "/exit?code=3")).status == 200
        assert await asyncio.wait_for(app.wait_exit(), 2) == 3
        with pytest.raises(ConnectionRefusedError):
            await get(client, 9000, "/hostname")
    run(make_plan(AGNHOST, args=["netexec", "--http-port=9000", "--udp-port=-1"]), scenario)


def test_netexec_dial_http_and_udp() -> None:
    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        r = await get(client, 8080, f"/dial?request=hostname&protocol=http&host={POD}&port=8080&tries=2")
        assert r.json() == {"responses": [POD_NAME, POD_NAME]}
        r = await get(client, 8080, f"/dial?request=hostname&protocol=udp&host={POD}&port=8081&tries=1")
        assert r.json() == {"responses": [POD_NAME]}
        r = await get(client, 8080, f"/dial?request=hostname&protocol=http&host={POD}&port=1")
        assert "errors" in r.json() and "connection refused" in r.json()["errors"][0]
        assert (await get(client, 8080, "/dial?host=x&port=1")).status == 400
    run(make_plan(AGNHOST, args=["netexec"]), scenario)


def test_serve_hostname_http_and_udp() -> None:
    async def http_only(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        r = await get(client, 9376, "/anything")
        assert (r.status, r.text) == (200, POD_NAME)
    run(make_plan(AGNHOST, args=["serve-hostname"]), http_only)

    async def udp_tcp(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        assert await udp(client, 9376, b"x") == POD_NAME.encode()
        assert await raw(client, 9376, b"") == POD_NAME.encode()
    run(make_plan(AGNHOST, args=["serve-hostname", "--udp", "--tcp", "--http=false"]), udp_tcp)


# --- web servers -----------------------------------------------------------------------------


def test_nginx_welcome_page() -> None:
    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        r = await get(client, 80, "/")
        assert r.status == 200 and "<title>Welcome to nginx!</title>" in r.text
        assert r.headers["server"].startswith("nginx/1.25.") and r.headers["content-type"] == "text/html"
        assert int(r.headers["content-length"]) == len(r.body) == 615
        r = await get(client, 80, "/missing")
        assert r.status == 404 and "<title>404 Not Found</title>" in r.text
        assert (await get(client, 80, "/", method="POST")).status == 405
        r = await get(client, 80, "/index.html", method="HEAD")
        assert r.status == 200 and r.body == b""
    run(make_plan("nginx:1.25"), scenario)


def test_http_echo_text() -> None:
    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        r = await get(client, 5678, "/")
        assert (r.status, r.text) == (200, "hello from echo\n")
        assert r.headers["x-app-name"] == "http-echo"
        assert (await get(client, 5678, "/any/path")).text == "hello from echo\n"
        assert (await get(client, 5678, "/health")).text == '{"status":"ok"}\n'
    run(make_plan("hashicorp/http-echo:1.0", args=["-text=hello from echo"]), scenario)

    async def listen(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        assert (await get(client, 8080, "/")).text == "other\n"
    run(make_plan("hashicorp/http-echo:1.0", args=["-listen=:8080", "-text", "other"]), listen)


def test_iis_start_page() -> None:
    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        r = await get(client, 80, "/")
        assert r.status == 200 and "<title>IIS Windows Server</title>" in r.text
        assert r.headers["server"] == "Microsoft-IIS/10.0"
        assert (await get(client, 80, "/nope")).status == 404
    run(make_plan("mcr.microsoft.com/windows/servercore/iis", "windows"), scenario)


# --- the generic responder -------------------------------------------------------------------


def test_generic_responder_http_echo_and_udp() -> None:
    plan = make_plan("foo/bar:1", ports=[{"containerPort": 8080}, {"containerPort": 7000},
                                         {"containerPort": 5353, "protocol": "UDP"}])

    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        r = await get(client, 8080, "/whatever")
        assert r.status == 200
        assert r.text == f"hcinet generic responder: pod {POD_NAME}, container app, image foo/bar:1, port 8080/TCP\n"
        assert "port 7000/TCP" in (await get(client, 7000, "/")).text
        assert await raw(client, 7000, b"hello\n", b"more bytes", pause=0.05) == b"hello\nmore bytes"
        assert await raw(client, 8080, b"\x00\x01binary") == b"\x00\x01binary"
        # a request line split over two segments is still HTTP (the responder waits for it)
        out = await raw(client, 8080, b"GE", b"T / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", pause=0.05)
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and body_of(out).startswith(b"hcinet generic responder")
        assert await raw(client, 8080, b"GE") == b"GE"  # too short to be HTTP, then EOF: echoed
        assert await udp(client, 5353, b"ping?") == b"ping?"
        with pytest.raises(ConnectionRefusedError):
            await get(client, 9999, "/")  # undeclared ports are closed
    run(plan, scenario)


# --- idle processes and CoreDNS's endpoints --------------------------------------------------


@pytest.mark.parametrize("image, spec, code", [
    ("busybox", {}, 0),
    ("curlimages/curl", {}, 2),
    ("busybox", {"command": ["sleep", "0.05"]}, 0),
    ("hashicorp/http-echo", {}, 127),
])
def test_processes_that_exit(image: str, spec: dict[str, Any], code: int) -> None:
    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        assert await asyncio.wait_for(app.wait_exit(), 2) == code
    run(make_plan(image, **spec), scenario)


def test_client_lives_until_stopped() -> None:
    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> Any:
        await asyncio.sleep(0.1)
        assert not app.exited
        await app.stop()
        return await app.wait_exit()
    assert run(make_plan("busybox", command=["sleep", "infinity"]), scenario) == 143


def test_coredns_health_and_ready() -> None:
    class FakeDns:
        closed = False

        def close(self) -> None:
            FakeDns.closed = True

    async def dns(net: Any, plan: ContainerPlan) -> FakeDns:
        return FakeDns()

    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        assert (await get(client, 8080, "/health")).text == "OK"
        assert (await get(client, 8181, "/ready")).text == "OK"
        assert "coredns_build_info" in (await get(client, 9153, "/metrics")).text
    run(make_plan("registry.k8s.io/coredns/coredns:v1.10.1"), scenario, dns=dns)
    assert FakeDns.closed

    async def not_ready(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        assert (await get(client, 8181, "/ready")).status == 503
    run(make_plan("coredns/coredns"), not_ready)


def test_every_plan_app_has_a_runner() -> None:
    apps = {"agnhost-netexec", "agnhost-serve-hostname", "pause", "nginx", "http-echo", "iis", "client",
            "coredns", "generic"}
    assert apps <= set(CONTAINER_APPS)
    with pytest.raises(ValueError, match="no emulated app"):
        make_container_app(None, make_plan("nginx").__class__(**{**_fields(make_plan("nginx")), "app": "x"}),
                           hostname="p")


def _fields(plan: ContainerPlan) -> dict[str, Any]:
    return {name: getattr(plan, name) for name in plan.__dataclass_fields__}


# --- probe attempts --------------------------------------------------------------------------


def test_probe_attempts_against_apps() -> None:
    container = {"name": "app", "ports": [{"containerPort": 80, "name": "web"}]}

    def action(probe: dict[str, Any]) -> Any:
        return ProbeSpec.from_k8s(probe, "readiness", container).action

    async def scenario(client: AsyncStack, pod: AsyncStack, app: ContainerApp) -> None:
        assert await probe_attempt(client, action({"httpGet": {"port": "web"}}), POD, 1.0) == (True, "")
        assert await probe_attempt(client, action({"httpGet": {"port": 80, "path": "/nope"}}), POD, 1.0) == (
            False, "HTTP probe failed with statuscode: 404")
        ok, detail = await probe_attempt(client, action({"httpGet": {"port": 81, "path": "/healthz"}}), POD, 1.0)
        assert not ok and detail == (f'Get "http://{POD}:81/healthz": dial tcp {POD}:81: connect: '
                                     "connection refused")
        assert await probe_attempt(client, action({"tcpSocket": {"port": 80}}), POD, 1.0) == (True, "")
        assert await probe_attempt(client, action({"tcpSocket": {"port": 81}}), POD, 1.0) == (
            False, f"dial tcp {POD}:81: connect: connection refused")
        assert await probe_attempt(client, action({"exec": {"command": ["true"]}}), POD, 1.0) == (True, "")
        ok, detail = await probe_attempt(client, action({"httpGet": {"port": "missing"}}), POD, 1.0)
        assert ok is None and "couldn't find port" in detail
        # a silent peer (nobody owns the address on the fabric): the attempt times out
        ok, detail = await probe_attempt(client, action({"httpGet": {"host": "172.16.0.99", "port": 80}}), POD, 0.2)
        assert (ok, detail) == (False, 'Get "http://172.16.0.99:80/": context deadline exceeded '
                                       "(Client.Timeout exceeded while awaiting headers)")
        ok, detail = await probe_attempt(client, action({"tcpSocket": {"host": "172.16.0.99", "port": 80}}), POD, 0.2)
        assert (ok, detail) == (False, "dial tcp 172.16.0.99:80: i/o timeout")
    run(make_plan("nginx"), scenario)

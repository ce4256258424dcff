"""The emulated container apps that pods run (asyncio, on a pod's NetAPI).

A :class:`~agents.node.images.ContainerPlan` names the app; :func:`make_container_app` builds
it on the pod's own network API (one :class:`~agents.vm.streams.AsyncStack` per pod
netstack), exactly as the program would use sockets in the pod's network namespace.  Every
app has ``start()``, ``stop()``, ``stats()`` and ``wait_exit()`` (the process ended: agnhost's
``/exit``, a ``sleep`` that ran out, a program that exits at once).  HTTP is real HTTP/1.1
(:mod:`agents.vm.http`, h11).

=========================  ===================================================================
app                        behaviour (after the real program)
=========================  ===================================================================
``agnhost-netexec``        HTTP on ``--http-port``: ``/hostname`` (and ``/hostName``) the pod's
                           hostname, ``/clientip`` the peer ``ip:port``, ``/echo?msg=&code=``,
                           ``/healthz`` (200 once the UDP server runs, else 412), ``/header?key=``,
                           ``/redirect``, ``/dial`` (http and udp), ``/exit``, ``/shutdown``,
                           ``/shell`` and ``/upload`` refused (403: nothing executes in an
                           emulated container), anything else ``NOW: <Go time>``.  UDP on
                           ``--udp-port``: the datagram is trimmed and lower-cased, then
                           ``hostname`` -> hostname, ``echo X`` -> ``x``, ``clientip`` ->
                           ``ip:port``, anything else no answer.  Emulator extension: a
                           connection that starts with a PROXY protocol header (v2 binary or
                           v1 text) has it stripped and ``/clientip`` reports the original
                           client (the load balancer of step 4 sends v2).
``agnhost-serve-hostname``  ``--port`` 9376: HTTP (default) answers the hostname; ``--tcp``
                           writes it and closes; ``--udp`` answers each datagram with it.
``nginx``                  port 80: the welcome page (``Server: nginx/1.25.3``), nginx's 404
                           and 405 pages.
``http-echo``              ``-listen`` (``:5678``): ``-text`` plus a newline on every path,
                           ``/health`` -> ``{"status":"ok"}``; ``X-App-Name``/``X-App-Version``.
``iis``                    port 80: the IIS start page (``Server: Microsoft-IIS/10.0``).
``generic``                each declared port: TCP answers HTTP (200, naming pod, image and
                           port) when the first bytes are an HTTP request line, else echoes;
                           UDP echoes.
``coredns``                the health (8080 ``/health``), ready (8181 ``/ready``) and metrics
                           (9153) endpoints; the DNS server itself (53) comes from
                           ``agents/dns`` through the ``dns`` hook.
``client``, ``pause``      nothing served; the process lives ``plan.lifetime`` (None: forever).
=========================  ===================================================================

:func:`probe_attempt` runs one readiness/liveness attempt (:mod:`.probes`) from the node's
network API, with the kubelet's failure messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import quote

from agents.node.images import ContainerPlan
from agents.node.probes import PROBE_USER_AGENT, ProbeAction, http_success
from agents.vm.http import HttpError, HttpServer, Request, Response, http_request, serve_http

__all__ = [
    "CONTAINER_APPS", "ContainerApp", "IncompleteProxyHeader", "ProxyHeader", "ProxyProtocolError",
    "build_proxy_v1", "build_proxy_v2", "make_container_app", "parse_proxy_header", "probe_attempt",
    "register_container_app",
]

log = logging.getLogger("hcinet.node.containers")

READ_SIZE = 65536
TEXT = "text/plain; charset=utf-8"  # what Go's net/http sniffs for a text body
SIGTERM_EXIT = 143                   # 128 + SIGTERM: a program that does not trap it
EXIT_GRACE = 0.01                    # /exit answers first, then the process ends
_MONO0 = time.monotonic()

# --- PROXY protocol (haproxy's proxy-protocol.txt) ------------------------------------------

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_HEAD = struct.Struct("!12sBBH")
_V2_ADDRESSES = {0x1: (4, struct.Struct("!4s4sHH")), 0x2: (16, struct.Struct("!16s16sHH"))}
V1_MAX = 107  # "the maximum line length is 107 bytes including the CRLF"


class ProxyProtocolError(ValueError):
    """A malformed PROXY protocol header."""


class IncompleteProxyHeader(ProxyProtocolError):
    """The data so far is the start of a header: read more."""


class ProxyHeader(NamedTuple):
    command: str                     # PROXY | LOCAL (v2); PROXY (v1)
    src: tuple[str, int] | None      # the original client; None: use the connection's own
    dst: tuple[str, int] | None
    length: int                      # bytes the header takes at the start of the stream
    version: int


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``; None when the stream does not start with
    one.  Raises :class:`IncompleteProxyHeader` (a prefix: read more) or
    :class:`ProxyProtocolError`."""
    if data[:12] == PROXY_V2_SIGNATURE[:len(data[:12])]:
        if len(data) < 16:
            raise IncompleteProxyHeader("PROXY v2: header incomplete")
        return _parse_v2(data)
    if data[:6] == b"PROXY "[:len(data[:6])]:
        if len(data) < 6:
            raise IncompleteProxyHeader("PROXY v1: header incomplete")
        return _parse_v1(data)
    return None


def _parse_v2(data: bytes) -> ProxyHeader:
    """16 bytes: signature, version|command, family|transport, address length; then the
    addresses (IPv4 12 bytes, IPv6 36) and TLVs, which are skipped."""
    _sig, ver_cmd, fam, length = _V2_HEAD.unpack_from(data)
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2: bad version {ver_cmd >> 4}")
    command = {0x0: "LOCAL", 0x1: "PROXY"}.get(ver_cmd & 0xF)
    if command is None:
        raise ProxyProtocolError(f"PROXY v2: bad command {ver_cmd & 0xF}")
    total = 16 + length
    if len(data) < total:
        raise IncompleteProxyHeader("PROXY v2: address block incomplete")
    family = _V2_ADDRESSES.get(fam >> 4)
    if command == "LOCAL" or family is None:  # LOCAL, AF_UNSPEC, AF_UNIX: keep the real endpoints
        return ProxyHeader(command, None, None, total, 2)
    size, layout = family
    if length < layout.size:
        raise ProxyProtocolError(f"PROXY v2: address block of {length} bytes is too short")
    src, dst, sport, dport = layout.unpack_from(data, 16)
    src_ip, dst_ip = (str(ipaddress.ip_address(a)) for a in (src, dst))
    return ProxyHeader(command, (src_ip, sport), (dst_ip, dport), total, 2)


def _parse_v1(data: bytes) -> ProxyHeader:
    """``PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n``."""
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) < V1_MAX:
            raise IncompleteProxyHeader("PROXY v1: line incomplete")
        raise ProxyProtocolError("PROXY v1: line too long")
    words = data[:end].decode("ascii", "replace").split(" ")
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader("PROXY", None, None, end + 2, 1)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("PROXY v1: malformed line")
    try:
        src, dst = (str(ipaddress.ip_address(w)) for w in words[2:4])
        sport, dport = int(words[4]), int(words[5])
    except ValueError:
        raise ProxyProtocolError("PROXY v1: bad address or port") from None
    return ProxyHeader("PROXY", (src, sport), (dst, dport), end + 2, 1)


def build_proxy_v2(src: tuple[str, int] | None, dst: tuple[str, int] | None, *, tlvs: bytes = b"") -> bytes:
    """A v2 header (``PROXY``/STREAM over IPv4 or IPv6; ``LOCAL`` when ``src`` is None)."""
    if src is None or dst is None:
        return _V2_HEAD.pack(PROXY_V2_SIGNATURE, 0x20, 0x00, len(tlvs)) + tlvs
    a, b = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if a.version != b.version:
        raise ValueError("PROXY v2: source and destination of different families")
    fam = 0x1 if a.version == 4 else 0x2
    body = _V2_ADDRESSES[fam][1].pack(a.packed, b.packed, src[1], dst[1]) + tlvs
    return _V2_HEAD.pack(PROXY_V2_SIGNATURE, 0x21, (fam << 4) | 0x1, len(body)) + body


def build_proxy_v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    proto = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {proto} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


# --- stream plumbing: look at the first bytes, then hand the connection on -------------------


class _Replay:
    """A StreamReader whose first reads return bytes already taken from it."""

    def __init__(self, prefix: bytes, reader: asyncio.StreamReader) -> None:
        self._prefix = prefix
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        if not self._prefix:
            return await self._reader.read(n)
        if n < 0:
            data, self._prefix = self._prefix + await self._reader.read(), b""
            return data
        data, self._prefix = self._prefix[:n], self._prefix[n:]
        return data

    def at_eof(self) -> bool:
        return not self._prefix and self._reader.at_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class _PeerWriter:
    """A StreamWriter that reports another peer (the client a PROXY header names)."""

    def __init__(self, writer: asyncio.StreamWriter, peer: tuple[str, int]) -> None:
        self._writer = writer
        self._peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        return self._writer.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


Sniffer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[tuple[Any, Any] | None]]


class _Intercept:
    """A NetAPI whose ``start_server`` lets ``sniff`` see each connection first: it returns
    the (reader, writer) to hand to the server's callback, or None when it dealt with the
    connection itself.  A connection cut short by the app's stop ends quietly.  Everything
    else is the pod's NetAPI."""

    def __init__(self, net: Any, sniff: Sniffer | None) -> None:
        self._net = net
        self._sniff = sniff

    async def start_server(self, cb: Any, host: str = "0.0.0.0", port: int = 0, **kwargs: Any) -> Any:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                handed = (reader, writer) if self._sniff is None else await self._sniff(reader, writer)
                if handed is None:
                    writer.close()
                    return
                await cb(*handed)
            except (OSError, TimeoutError, ProxyProtocolError) as exc:
                log.debug("connection dropped: %s", exc)
                writer.close()
            except asyncio.CancelledError:
                # the app stopped: asyncio's start_server would log a cancelled connection
                # task as "Unhandled exception in client_connected_cb" (Python 3.11)
                writer.close()

        return await self._net.start_server(accept, host, port, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._net, name)


async def _strip_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[Any, Any]:
    """Read until it is clear whether a PROXY header leads; strip it and report its client.
    A malformed header raises (the connection is dropped, as a server with accept-proxy does)."""
    data = b""
    while True:
        chunk = await reader.read(READ_SIZE)
        data += chunk
        try:
            header = parse_proxy_header(data)
        except IncompleteProxyHeader:
            if chunk:
                continue
            header = None  # EOF inside a would-be header: serve what came
        break
    if header is None:
        return _Replay(data, reader), writer
    rest = _Replay(data[header.length:], reader)
    return rest, (_PeerWriter(writer, header.src) if header.src is not None else writer)


# --- the app base ----------------------------------------------------------------------------


class ContainerApp:
    """One container's main process.  ``hostname`` is what ``os.Hostname()`` gives inside
    the pod (the pod's name, or ``spec.hostname``)."""

    app = ""

    def __init__(self, net: Any, plan: ContainerPlan, *, hostname: str) -> None:
        self.net = net
        self.plan = plan
        self.hostname = hostname
        self.options = plan.options
        self.started_at = 0.0
        self.http_servers: list[HttpServer] = []
        self.servers: list[Any] = []        # raw stream servers
        self.transports: list[Any] = []     # datagram endpoints
        self.datagrams = 0
        self._exit: asyncio.Future[int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        self.started_at = time.time()
        lifetime = self.plan.lifetime
        if lifetime != 0:  # a process that exits at once opens nothing
            await self.serve()
        if lifetime is not None:
            self._timer = loop.call_later(lifetime, self.exit, self.plan.exit_code)

    async def serve(self) -> None:
        """Open the listeners (subclasses)."""

    def exit(self, code: int) -> None:
        """The process ended with ``code`` (the kubelet sees it through :meth:`wait_exit`)."""
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)
            self._close_listeners()

    async def wait_exit(self) -> int:
        if self._exit is None:
            raise RuntimeError("not started")
        return await asyncio.shield(self._exit)

    @property
    def exited(self) -> bool:
        return self._exit is not None and self._exit.done()

    async def stop(self) -> None:
        """SIGTERM: listeners close, connections end; exit code 143 unless it exited already."""
        self.exit(SIGTERM_EXIT)
        for server in self.http_servers:
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    def _close_listeners(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for server in self.http_servers:
            server.close()
        for raw in self.servers:
            raw.close()
        for transport in self.transports:
            transport.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"app": self.app, "container": self.plan.name, "hostname": self.hostname,
                               "listens": [str(p) for p in self.plan.listens], "datagrams": self.datagrams,
                               "exited": self.exited}
        for key in ("requests", "bad_requests", "errors", "connections"):
            out[key] = sum(s.stats()[key] for s in self.http_servers)
        return out

    # -- helpers for subclasses --

    async def http(self, port: int, handler: Callable[[Request], Awaitable[Response]], *, host: str | None = None,
                   sniff: Sniffer | None = None) -> HttpServer:
        net = _Intercept(self.net, sniff)
        server = await serve_http(net, host or any_address(self.net), port, handler, name=f"{self.hostname}/{self.plan.name}:{port}")
        self.http_servers.append(server)
        return server

    async def udp(self, port: int, answer: Callable[[bytes, tuple[str, int]], bytes | None]) -> None:
        transport, _ = await self.net.create_datagram_endpoint(lambda: _Datagrams(self, answer),
                                                               local_addr=(any_address(self.net), port))
        self.transports.append(transport)

    async def tcp(self, port: int, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                await serve(reader, writer)
            except (OSError, TimeoutError) as exc:
                log.debug("%s: connection ended: %s", self.plan.name, exc)
            finally:
                writer.close()
                if task is not None:
                    self._tasks.discard(task)

        self.servers.append(await self.net.start_server(accept, any_address(self.net), port))


def any_address(net: Any) -> str:
    """Where an app's ``:port`` listens: ``::`` (dual stack, as Go's ``net.Listen(":8080")``
    and Linux's bindv6only=0 give) in a pod with an IPv6 address, else ``0.0.0.0``."""
    from agents.vm.tools import has_ipv6

    return "::" if has_ipv6(net) else "0.0.0.0"


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, app: ContainerApp, answer: Callable[[bytes, tuple[str, int]], bytes | None]) -> None:
        self.app = app
        self.answer = answer
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.app.datagrams += 1
        reply = self.answer(data, (str(addr[0]), int(addr[1])))
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


CONTAINER_APPS: dict[str, type[ContainerApp]] = {}


def register_container_app(name: str) -> Callable[[type[ContainerApp]], type[ContainerApp]]:
    def deco(cls: type[ContainerApp]) -> type[ContainerApp]:
        cls.app = name
        CONTAINER_APPS[name] = cls
        return cls
    return deco


def make_container_app(net: Any, plan: ContainerPlan, *, hostname: str, **kwargs: Any) -> ContainerApp:
    """The app of ``plan`` on the pod's ``net``; ``kwargs`` go to the app (``dns=`` for coredns)."""
    try:
        cls = CONTAINER_APPS[plan.app]
    except KeyError:
        raise ValueError(f"no emulated app {plan.app!r} (known: {', '.join(sorted(CONTAINER_APPS))})") from None
    return cls(net, plan, hostname=hostname, **kwargs)


def _host_port(addr: tuple[str, int]) -> str:
    """Go's ``net.JoinHostPort``: brackets around IPv6."""
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"


def _text(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status=status, headers={"Content-Type": TEXT, **(headers or {})}, body=body.encode())


def _go_now() -> str:
    """Go's ``time.Now().String()`` in a UTC container: nanoseconds trimmed, monotonic reading."""
    now = datetime.now(UTC)
    frac = f"{now.microsecond * 1000:09d}".rstrip("0")
    return f"{now:%Y-%m-%d %H:%M:%S}{'.' + frac if frac else ''} +0000 UTC m=+{time.monotonic() - _MONO0:.9f}"


# --- idle processes --------------------------------------------------------------------------


@register_container_app("client")
class ClientApp(ContainerApp):
    """busybox, curl, nanoserver...: nothing served; tools run through ``exec``."""


@register_container_app("pause")
class PauseApp(ContainerApp):
    """``pause``: sleeps until signalled, then exits 0."""

    async def stop(self) -> None:
        self.exit(0)
        await super().stop()


# --- agnhost ---------------------------------------------------------------------------------


@register_container_app("agnhost-netexec")
class NetexecApp(ContainerApp):
    """``agnhost netexec`` (test/images/agnhost/netexec/netexec.go)."""

    def __init__(self, net: Any, plan: ContainerPlan, *, hostname: str) -> None:
        super().__init__(net, plan, hostname=hostname)
        self.http_port = int(self.options.get("http_port", 8080))
        self.udp_port = int(self.options.get("udp_port", 8081))
        self.udp_ready = False
        self.routes: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/clientip": self._clientip, "/dial": self._dial, "/echo": self._echo, "/exit": self._exit_route,
            "/header": self._header, "/healthz": self._healthz, "/hostname": self._hostname,
            "/hostName": self._hostname, "/redirect": self._redirect, "/shell": self._refuse,
            "/shutdown": self._shutdown, "/upload": self._refuse,
        }

    async def serve(self) -> None:
        if self.udp_port != -1:
            await self.udp(self.udp_port, self.udp_answer)
            self.udp_ready = True  # serverReady: what /healthz reports
        await self.http(self.http_port, self.handle, sniff=_strip_proxy)

    async def handle(self, req: Request) -> Response:
        return await self.routes.get(req.path, self._root)(req)

    def udp_answer(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        text = data[:2048].decode("utf-8", "replace").strip().lower()
        if text == "hostname":
            return self.hostname.encode()
        if text.startswith("echo "):
            return text.split(" ", 1)[1].encode()
        if text == "clientip":
            return _host_port(addr).encode()
        return None  # "Unknown UDP command": logged, not answered

    async def _root(self, req: Request) -> Response:
        return _text(f"NOW: {_go_now()}")

    async def _clientip(self, req: Request) -> Response:
        return _text(_host_port(req.client))

    async def _hostname(self, req: Request) -> Response:
        return _text(self.hostname)

    async def _healthz(self, req: Request) -> Response:
        return Response(status=200 if self.udp_ready else 412)

    async def _header(self, req: Request) -> Response:
        return _text(req.headers.get(req.query.get("key", "").lower(), ""))

    async def _echo(self, req: Request) -> Response:
        msg, code = req.query.get("msg", ""), req.query.get("code", "")
        if not code:
            return _text(msg)
        try:
            return _text(msg, int(code))
        except ValueError:
            return _text(f"argument 'code' must be an integer or empty, got {json.dumps(code)}\n")

    async def _redirect(self, req: Request) -> Response:
        location, code = req.query.get("location", ""), req.query.get("code", "")
        try:
            status = int(code) if code else 302
        except ValueError:
            return _text(f"argument 'code' must be an integer or empty, got {json.dumps(code)}\n")
        return Response(status=status, headers={"Location": location, "Content-Type": "text/html; charset=utf-8"},
                        body=f'<a href="{location}">{status}</a>.\n\n'.encode())

    async def _refuse(self, req: Request) -> Response:
        body = {"error": f"{req.path} is refused: commands do not run in emulated containers (hcinet)"}
        return Response(status=403, headers={"Content-Type": TEXT}, body=json.dumps(body).encode())

    async def _exit_route(self, req: Request) -> Response:
        code = req.query.get("code", "")
        try:
            value = int(code) if code else 0
        except ValueError:
            return _text(f"argument 'code' must be an integer [0-127] or empty, got {json.dumps(code)}\n")
        asyncio.get_running_loop().call_later(EXIT_GRACE, self.exit, value)
        return _text("")

    async def _shutdown(self, req: Request) -> Response:
        asyncio.get_running_loop().call_later(EXIT_GRACE, self.exit, 0)
        return _text("")

    async def _dial(self, req: Request) -> Response:
        """``/dial?host=&port=&request=&protocol=http|udp&tries=``: JSON responses/errors."""
        q = req.query
        host, port, request = q.get("host", ""), q.get("port", ""), q.get("request", "")
        protocol = q.get("protocol", "http").lower() or "http"
        try:
            tries = int(q.get("tries") or 1)
        except ValueError:
            return _text(f"tries parameter is invalid. {q.get('tries')}\n", 400)
        if not request:
            return _text("request parameter not specified. <nil>\n", 400)
        if protocol not in ("http", "udp"):
            return _text(f"unsupported protocol. {protocol}\n", 400)
        if not port.isdigit():
            return _text(f"host and/or port param are invalid. address {port}: invalid port\n", 400)
        dial = self._dial_http if protocol == "http" else self._dial_udp
        responses: list[str] = []
        errors: list[str] = []
        last = ""
        for _ in range(tries):
            try:
                last = await dial(host, int(port), request)
                responses.append(last)
            except Exception as exc:  # every failure is reported, as the Go handler does
                last = ""
                errors.append(str(exc) or type(exc).__name__)
        out: dict[str, list[str]] = {}
        if last:
            out["responses"] = responses
        if errors:
            out["errors"] = errors
        return _text(json.dumps(out, separators=(",", ":")))

    async def _dial_http(self, host: str, port: int, request: str) -> str:
        url = f"http://{_host_port((host, port))}/{request.lstrip('/')}"
        try:
            resp = await http_request(self.net, "GET", url, timeout=5.0)
        except (OSError, TimeoutError, HttpError) as exc:
            raise RuntimeError(f'Get "{url}": {_go_error(exc, host, port)}') from None
        return resp.text

    async def _dial_udp(self, host: str, port: int, request: str) -> str:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if not answer.done():
                    answer.set_result(data)

        try:
            transport, _ = await self.net.create_datagram_endpoint(Client, remote_addr=(host, port))
        except OSError as exc:
            raise RuntimeError(f"udp dial failed. err:{_go_error(exc, host, port)}") from None
        try:
            transport.sendto(request.encode())
            data = await asyncio.wait_for(answer, 5.0)
        except TimeoutError:
            raise RuntimeError(f"reading from udp connection failed. err:'read udp {host}:{port}: "
                               "i/o timeout'") from None
        finally:
            transport.close()
        return data.decode("utf-8", "replace")


@register_container_app("agnhost-serve-hostname")
class ServeHostnameApp(ContainerApp):
    """``agnhost serve-hostname`` (test/images/agnhost/serve-hostname)."""

    async def serve(self) -> None:
        port = int(self.options.get("port", 9376))
        if self.options.get("http", True):
            await self.http(port, self.handle)
        if self.options.get("tcp"):
            await self.tcp(port, self._tcp)
        if self.options.get("udp"):
            await self.udp(port, lambda data, addr: self.hostname.encode())

    async def handle(self, req: Request) -> Response:
        extra = {"Connection": "close"} if self.options.get("close") else {}
        return _text(self.hostname, headers=extra)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.hostname.encode())
        await writer.drain()


# --- web servers -----------------------------------------------------------------------------

NGINX_VERSION = "nginx/1.25.3"
NGINX_WELCOME = b"""<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
"""
NGINX_50X = b"""<!DOCTYPE html>
<html>
<head>
<title>Error</title>
</head>
<body>
<h1>An error occurred.</h1>
<p>Sorry, the page you are looking for is currently unavailable.<br/>
Please try again later.</p>
</body>
</html>
"""


def _nginx_error(status: int, title: str) -> bytes:
    return (f"<html>\r\n<head><title>{status} {title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {title}</h1></center>\r\n<hr><center>{NGINX_VERSION}</center>\r\n"
            "</body>\r\n</html>\r\n").encode()


@register_container_app("nginx")
class NginxApp(ContainerApp):
    """The stock ``nginx`` image: ``/usr/share/nginx/html`` served on port 80."""

    files = {"/": NGINX_WELCOME, "/index.html": NGINX_WELCOME, "/50x.html": NGINX_50X}

    async def serve(self) -> None:
        await self.http(int(self.options.get("port", 80)), self.handle)

    async def handle(self, req: Request) -> Response:
        body = self.files.get(req.path)
        headers = {"Server": NGINX_VERSION, "Content-Type": "text/html"}
        if body is None:
            return Response(status=404, headers=headers, body=_nginx_error(404, "Not Found"))
        if req.method not in ("GET", "HEAD"):
            return Response(status=405, headers=headers, body=_nginx_error(405, "Not Allowed"))
        return Response(status=200, body=body, headers={
            **headers, "Last-Modified": "Tue, 24 Oct 2023 13:46:47 GMT",
            "ETag": f'"6537cac7-{len(body):x}"', "Accept-Ranges": "bytes"})


@register_container_app("http-echo")
class HttpEchoApp(ContainerApp):
    """``hashicorp/http-echo`` 1.0: the text and a newline on every path; ``/health``."""

    async def serve(self) -> None:
        await self.http(int(self.options["port"]), self.handle, host=str(self.options.get("host") or "0.0.0.0"))

    async def handle(self, req: Request) -> Response:
        headers = {"X-App-Name": "http-echo", "X-App-Version": "1.0.0"}
        if req.path == "/health":
            return _text('{"status":"ok"}\n', headers=headers)
        return _text(f"{self.options['text']}\n", headers=headers)


IIS_START = b"""<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1" />
<title>IIS Windows Server</title>
<style type="text/css">
<!--
body {
\tcolor:#000000;
\tbackground-color:#0072C6;
\tmargin:0;
}

#container {
\tmargin-left:auto;
\tmargin-right:auto;
\ttext-align:center;
\t}

a img {
\tborder:none;
}

-->
</style>
</head>
<body>
<div id="container">
<a href="http://go.microsoft.com/fwlink/?linkid=66138&amp;clcid=0x409"><img src="iisstart.png" alt="IIS" width="960" height="600" /></a>
</div>
</body>
</html>"""
IIS_404 = b"""<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"/>
<title>404 - File or directory not found.</title>
</head>
<body>
<div id="header"><h1>Server Error</h1></div>
<div id="content">
 <div class="content-container"><fieldset>
  <h2>404 - File or directory not found.</h2>
  <h3>The resource you are looking for might have been removed, had its name changed, or is temporarily unavailable.</h3>
 </fieldset></div>
</div>
</body>
</html>
"""


@register_container_app("iis")
class IisApp(ContainerApp):
    """``mcr.microsoft.com/windows/servercore/iis``: ``C:\\inetpub\\wwwroot`` on port 80."""

    async def serve(self) -> None:
        await self.http(int(self.options.get("port", 80)), self.handle)

    async def handle(self, req: Request) -> Response:
        headers = {"Server": "Microsoft-IIS/10.0", "X-Powered-By": "ASP.NET", "Content-Type": "text/html"}
        if req.path.lower() not in ("/", "/iisstart.htm"):
            return Response(status=404, headers=headers, body=IIS_404)
        return Response(status=200, body=IIS_START, headers={
            **headers, "Last-Modified": "Sat, 06 Jan 2024 07:13:27 GMT", "ETag": '"c0a3ef7e7a40da1:0"',
            "Accept-Ranges": "bytes"})


# --- the generic responder ---------------------------------------------------------------------

_HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")
SNIFF_WAIT = 0.5  # how long a generic TCP port waits for the rest of a would-be request line


def _http_verdict(data: bytes) -> bool | None:
    """True: an HTTP request line starts; False: not HTTP; None: too short to tell."""
    if data.startswith(_HTTP_METHODS):
        return True
    if any(m.startswith(data) for m in _HTTP_METHODS) and data:
        return None
    return False


@register_container_app("generic")
class GenericResponder(ContainerApp):
    """An image hcinet does not know: on each declared port, TCP answers HTTP when the
    client speaks it (200, naming pod, image and port) and echoes otherwise; UDP echoes."""

    async def serve(self) -> None:
        for p in self.plan.listens:
            if p.protocol == "UDP":
                await self.udp(p.port, lambda data, addr: data)
            else:
                await self.http(p.port, self._responder(p.port), sniff=self._sniff)

    def _responder(self, port: int) -> Callable[[Request], Awaitable[Response]]:
        text = (f"hcinet generic responder: pod {self.hostname}, container {self.plan.name}, "
                f"image {self.plan.image}, port {port}/TCP\n")

        async def handle(req: Request) -> Response:
            return _text(text)
        return handle

    async def _sniff(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[Any, Any] | None:
        data = await reader.read(READ_SIZE)
        while data and _http_verdict(data) is None:
            try:
                more = await asyncio.wait_for(reader.read(READ_SIZE), SNIFF_WAIT)
            except TimeoutError:
                break
            if not more:
                break
            data += more
        if _http_verdict(data):
            return _Replay(data, reader), writer
        await self._echo(data, reader, writer)
        return None

    async def _echo(self, data: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 862 over TCP, the peer's FIN echoed too."""
        while data:
            writer.write(data)
            await writer.drain()
            data = await reader.read(READ_SIZE)
        if writer.can_write_eof():
            writer.write_eof()
            await writer.drain()


# --- CoreDNS's side endpoints ------------------------------------------------------------------

DnsFactory = Callable[[Any, ContainerPlan], Awaitable[Any]]


@register_container_app("coredns")
class CoreDnsApp(ContainerApp):
    """The ``health`` (8080 ``/health``), ``ready`` (8181 ``/ready``) and ``prometheus``
    (9153 ``/metrics``) plugins of the stock Corefile.  ``dns`` (an async factory
    ``(net, plan) -> server`` with ``close()``) starts the DNS server itself (agents/dns);
    ``/ready`` answers 503 until it runs, as the ready plugin does until every plugin is."""

    def __init__(self, net: Any, plan: ContainerPlan, *, hostname: str, dns: DnsFactory | None = None) -> None:
        super().__init__(net, plan, hostname=hostname)
        self.dns_factory = dns
        self.dns: Any = None

    async def serve(self) -> None:
        await self.http(8080, self._health)
        await self.http(8181, self._ready)
        await self.http(9153, self._metrics)
        if self.dns_factory is not None:
            self.dns = await self.dns_factory(self.net, self.plan)

    def _close_listeners(self) -> None:
        super()._close_listeners()
        if self.dns is not None:
            with contextlib.suppress(Exception):
                self.dns.close()

    async def _health(self, req: Request) -> Response:
        return _text("OK") if req.path == "/health" else _text("404 page not found\n", 404)

    async def _ready(self, req: Request) -> Response:
        if req.path != "/ready":
            return _text("404 page not found\n", 404)
        # the ready plugin: 200 once every plugin is ready -- the kubernetes plugin when its
        # caches synced (a server without ``ready`` is ready once it runs)
        ready = self.dns is not None and getattr(self.dns, "ready", True)
        return _text("OK") if ready else _text("kubernetes", 503)

    async def _metrics(self, req: Request) -> Response:
        if req.path != "/metrics":
            return _text("404 page not found\n", 404)
        body = ("# HELP coredns_build_info A metric with a constant '1' value labeled by version, revision, "
                "and goversion from which CoreDNS was built.\n# TYPE coredns_build_info gauge\n"
                'coredns_build_info{goversion="go1.20",revision="055b2c3",version="1.10.1"} 1\n')
        return Response(headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}, body=body.encode())


# --- probes ----------------------------------------------------------------------------------


def _go_error(exc: BaseException, host: str, port: int) -> str:
    """A Go dial error as the kubelet and agnhost print them."""
    hp = _host_port((host, port))
    if isinstance(exc, TimeoutError):
        return f"dial tcp {hp}: i/o timeout"
    if isinstance(exc, OSError) and exc.errno:
        return f"dial tcp {hp}: connect: {os.strerror(exc.errno).lower()}"
    return str(exc) or type(exc).__name__


async def probe_attempt(net: Any, action: ProbeAction, pod_ip: str, timeout: float) -> tuple[bool | None, str]:
    """One probe attempt from the node (``net``: its network API) to the pod.  Returns
    ``(ok, detail)``: ok None is a prober error (the kubelet discards it); ``detail`` is the
    kubelet's failure text (``failure_event`` makes the Event).  HTTPS is tried as plain HTTP
    (the kubelet skips certificate checks; emulated apps speak no TLS); redirects are not
    followed (a 3xx is a success anyway)."""
    if action.error:
        return None, action.error
    if action.kind == "exec":
        return True, ""  # emulated containers run no commands: exec probes succeed
    host = action.host or pod_ip
    if action.kind != "httpGet":  # tcpSocket; grpc checked as a connection
        try:
            async with asyncio.timeout(timeout):
                _, writer = await net.open_connection(host, action.port, timeout=timeout)
            writer.close()
            return True, ""
        except (OSError, TimeoutError) as exc:
            return False, _go_error(exc, host, action.port)
    url = action.url(pod_ip)
    target = "http://" + _host_port((host, action.port)) + quote(action.path, safe="/?&=%:@!$'()*+,;~-._")
    headers = {"User-Agent": PROBE_USER_AGENT, "Accept": "*/*", **dict(action.headers)}
    try:
        resp = await http_request(net, "GET", target, headers=headers, timeout=timeout)
    except TimeoutError:
        return False, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    except (OSError, HttpError) as exc:
        return False, f'Get "{url}": {_go_error(exc, host, action.port)}'
    if http_success(resp.status):
        return True, ""
    return False, f"HTTP probe failed with statuscode: {resp.status}"


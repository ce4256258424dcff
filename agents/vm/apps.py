"""Apps a VM serves from its config (``"apps": [{"kind": ..., "port": ...}]``).

An app is a small object with ``start()``, ``stop()`` and ``stats()``, built by a factory
registered under its ``kind`` in :data:`APPS`; later steps register HTTP servers, DNS, the
API server and so on the same way.  Apps use only the VM's asyncio-style API
(:class:`~.streams.NetAPI`), exactly as a program on a real VM uses its sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .runtime import AppConfig, ConfigError
from .streams import NetAPI

log = logging.getLogger("hcinet.vm.apps")


class App:
    """Base class: one listening service on ``spec.port``."""

    kind = ""

    def __init__(self, net: NetAPI, spec: AppConfig) -> None:
        self.net = net
        self.spec = spec
        self.port = spec.port
        self.name = f"{self.kind}:{spec.port}"

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "port": self.port}


AppFactory = Callable[[NetAPI, AppConfig], App]
APPS: dict[str, AppFactory] = {}


def register_app(kind: str) -> Callable[[type[App]], type[App]]:
    def deco(cls: type[App]) -> type[App]:
        cls.kind = kind
        APPS[kind] = cls
        return cls
    return deco


def make_app(net: NetAPI, spec: AppConfig) -> App:
    try:
        factory = APPS[spec.kind]
    except KeyError:
        raise ConfigError(f"apps: unknown kind {spec.kind!r} (known: {', '.join(sorted(APPS))})") from None
    return factory(net, spec)


# --- UDP -----------------------------------------------------------------------------------


class _UdpApp(App, asyncio.DatagramProtocol):
    """A UDP service bound to ``0.0.0.0:port``."""

    def __init__(self, net: NetAPI, spec: AppConfig) -> None:
        super().__init__(net, spec)
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams = 0
        self.bytes = 0

    async def start(self) -> None:
        host = self.spec.options.get("host", "0.0.0.0")
        await self.net.create_datagram_endpoint(lambda: self, local_addr=(host, self.port))

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "datagrams": self.datagrams, "bytes": self.bytes}


@register_app("udp-echo")
class UdpEcho(_UdpApp):
    """RFC 862 echo over UDP: every datagram goes back to its sender."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams += 1
        self.bytes += len(data)
        assert self.transport is not None
        self.transport.sendto(data, addr)


@register_app("udp-sink")
class UdpSink(_UdpApp):
    """RFC 863 discard over UDP, counting what arrives (the ``udp_pps`` benchmark reads it,
    with the arrival times of the first and the latest datagram: ``time.perf_counter`` is
    CLOCK_MONOTONIC, comparable across the processes of one machine)."""

    first_at = 0.0
    last_at = 0.0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.datagrams:
            self.first_at = time.perf_counter()
        self.datagrams += 1
        self.bytes += len(data)
        self.last_at = time.perf_counter()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "first_at": self.first_at, "last_at": self.last_at}


# --- TCP -----------------------------------------------------------------------------------


class _TcpApp(App):
    """A TCP service: one handler task per connection."""

    def __init__(self, net: NetAPI, spec: AppConfig) -> None:
        super().__init__(net, spec)
        self.server: Any = None
        self.connections = 0
        self.active = 0
        self.bytes = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        host = self.spec.options.get("host", "0.0.0.0")
        self.server = await self.net.start_server(self._accept, host, self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.serve(reader, writer)
        except (OSError, TimeoutError) as exc:  # the peer went away: the service carries on
            log.debug("%s: connection ended: %s", self.name, exc)
        finally:
            self.active -= 1
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "connections": self.connections, "active": self.active, "bytes": self.bytes}


@register_app("tcp-echo")
class TcpEcho(_TcpApp):
    """RFC 862 echo over TCP; the peer's FIN is echoed too (half-close, then close)."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            self.bytes += len(data)
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()


@register_app("tcp-sink")
class TcpSink(_TcpApp):
    """Counts and hashes the stream; after the peer's FIN answers with the SHA-256 hex digest
    (``transfer`` compares it with its own)."""

    def __init__(self, net: NetAPI, spec: AppConfig) -> None:
        super().__init__(net, spec)
        self.last_digest = ""
        self.last_bytes = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256()
        received = 0
        while data := await reader.read(262144):
            digest.update(data)
            received += len(data)
        self.bytes += received
        self.last_bytes = received
        self.last_digest = digest.hexdigest()
        writer.write(self.last_digest.encode() + b"\n")
        writer.write_eof()
        await writer.drain()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "last_bytes": self.last_bytes, "last_sha256": self.last_digest}


# --- HTTP ----------------------------------------------------------------------------------


def _vm_name(net: Any) -> str:
    name = getattr(net, "name", None) or getattr(getattr(net, "stack", None), "name", None)
    return str(name or "vm")


@register_app("http")
class HttpApp(App):
    """A small web server for client VMs (HTTP/1.1 via h11, keep-alive):
    ``GET /`` -> ``hello from <vm>``, ``/hostname`` -> the VM's name, ``/clientip`` -> the
    client's ``ip:port`` as this VM sees it (what SNAT and proxies change), ``/echo?msg=X``
    -> X; anything else 404 (Go's ``404 page not found``, as most small servers in pods)."""

    def __init__(self, net: NetAPI, spec: AppConfig) -> None:
        super().__init__(net, spec)
        self.vm = _vm_name(net)
        self.server: Any = None

    async def start(self) -> None:
        from .http import serve_http

        host = self.spec.options.get("host", "0.0.0.0")
        self.server = await serve_http(self.net, host, self.port, self.handle, name=self.name)

    async def handle(self, req: Any) -> Any:
        from .http import Response, text_response

        if req.method not in ("GET", "HEAD"):
            return Response(status=405, headers={"Allow": "GET, HEAD", "Content-Type": "text/plain; charset=utf-8"},
                            body=b"Method Not Allowed\n")
        if req.path == "/":
            return text_response(f"hello from {self.vm}\n")
        if req.path == "/hostname":
            return text_response(f"{self.vm}\n")
        if req.path == "/clientip":
            return text_response(f"{req.client[0]}:{req.client[1]}\n")
        if req.path == "/echo":
            return text_response(req.query.get("msg", ""))
        return text_response("404 page not found\n", 404)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), **(self.server.stats() if self.server is not None else {})}

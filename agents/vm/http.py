"""HTTP/1.1 over VM streams, with h11 doing the protocol: a server and a client.

Every HTTP flow of the emulator (curl, the client VMs' web app, MOC -> lbagent, kubelets and
the CLI-free clients of the API server) speaks real HTTP/1.1 bytes over the netstack's TCP
(``net.open_connection`` / ``net.start_server`` of :class:`~.streams.NetAPI`).  h11 is
sans-IO (bytes in, events out); this module is only the asyncio glue around it.

Server: :func:`serve_http` runs ``handler(Request) -> Response`` per request on keep-alive
connections.  A :class:`Response` with a ``stream`` is sent with ``Transfer-Encoding: chunked``
(RFC 9112 7.1), one chunk per item, each flushed as it comes: the shape of a Kubernetes watch.
A request h11 cannot parse gets h11's status hint (400, 431, ...) and the connection is closed;
a handler that raises gets a 500 (logged); nothing a peer sends takes the server down.

Client: :class:`HttpConnection` is one connection (curl uses it for its fine-grained output);
:class:`HttpClient` keeps one keep-alive connection to one server and reconnects when the
server closed it; :meth:`HttpClient.stream` opens a dedicated connection for a long response
(a watch) so that ordinary requests are not queued behind it; :func:`http_request` is one-shot.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11

__all__ = [
    "ClientResponse", "HttpClient", "HttpConnection", "HttpError", "HttpServer", "ProtocolError",
    "Request", "Response", "ResponseHead", "StreamResponse", "http_request", "json_response", "parse_url",
    "reason_phrase", "serve_http", "text_response",
]

log = logging.getLogger("hcinet.vm.http")

READ_SIZE = 65536
MAX_HEADER_BYTES = 64 * 1024      # request/response head (h11's max_incomplete_event_size)
MAX_BODY_BYTES = 64 * 1024 * 1024  # a request body beyond this gets 413
SERVER_NAME = "hcinet"
USER_AGENT = "hcinet-http/1.0"

Headers = Mapping[str, str]
Handler = Callable[["Request"], Awaitable["Response"]]


class HttpError(Exception):
    """Base class of this module's errors."""


class ProtocolError(HttpError):
    """The peer broke HTTP/1.1 (h11's RemoteProtocolError), or closed before answering."""


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _header_dict(items: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case names; repeated fields joined with ", " (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    for name, value in items:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _encode_headers(headers: Headers | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), str(v)) for k, v in items]


def _has(headers: list[tuple[str, str]], name: str) -> bool:
    return any(k.lower() == name for k, _ in headers)


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    target: str               # as on the request line: path + "?" + query
    path: str
    query: dict[str, str]     # last value wins for a repeated key
    headers: dict[str, str]   # lower-case names
    body: bytes
    client: tuple[str, int]   # the peer's (ip, port) as this server sees it
    http_version: str = "1.1"

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True)
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None  # sent chunked, one chunk per item, flushed each


def json_response(obj: Any, status: int = 200, headers: Headers | None = None) -> Response:
    body = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    return Response(status=status, headers={"Content-Type": "application/json", **(headers or {})}, body=body)


def text_response(text: str, status: int = 200) -> Response:
    return Response(status=status, headers={"Content-Type": "text/plain; charset=utf-8"}, body=text.encode())


# --- server --------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


class HttpServer:
    """What :func:`serve_http` returns: counters, ``close()`` and ``wait_closed()``."""

    def __init__(self, net: Any, handler: Handler, *, name: str = "", idle_timeout: float | None = None,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.net = net
        self.handler = handler
        self.name = name or "http"
        self.idle_timeout = idle_timeout
        self.max_body = max_body
        self.server: Any = None
        self.sockname: tuple[Any, ...] = ()
        self.requests = 0
        self.bad_requests = 0
        self.errors = 0
        self.connections = 0
        self.active = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> None:
        self.server = await self.net.start_server(self._accept, host, port)
        self.sockname = tuple(getattr(self.server, "sockname", (host, port)))

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "bad_requests": self.bad_requests, "errors": self.errors,
                "connections": self.connections, "active": self.active}

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def __aenter__(self) -> HttpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- one connection --

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        self.active += 1
        try:
            await _ServerConn(self, reader, writer).run()
        except asyncio.CancelledError:
            # close() cancels the connection tasks: ending here is the intent, and letting the
            # cancellation escape makes asyncio log "Unhandled exception in client_connected_cb"
            return
        except Exception:  # never let one connection's bug escape into the stream machinery
            self.errors += 1
            log.exception("%s: connection handler failed", self.name)
        finally:
            self.active -= 1
            writer.close()
            if task is not None:
                self._tasks.discard(task)


class _ServerConn:
    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        peer = writer.get_extra_info("peername") or ("", 0)
        self.client = (str(peer[0]), int(peer[1]))

    async def run(self) -> None:
        conn = self.conn
        while True:
            try:
                request = await self._read_request()
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, str(exc))
                return
            except _TooLarge:
                await self._refuse(413, "request body too large")
                return
            except (OSError, TimeoutError):
                return
            if request is None:
                return
            self.server.requests += 1
            response = await self._call(request)
            try:
                await self._send(request, response)
            except (OSError, TimeoutError, h11.LocalProtocolError) as exc:
                log.debug("%s: sending to %s failed: %s", self.server.name, self.client, exc)
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # MUST_CLOSE (Connection: close, HTTP/1.0, an unread body) or an error
            conn.start_next_cycle()

    async def _receive(self) -> None:
        data = await asyncio.wait_for(self.reader.read(READ_SIZE), self.server.idle_timeout)
        self.conn.receive_data(data)

    async def _read_request(self) -> Request | None:
        conn = self.conn
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if head is not None and conn.they_are_waiting_for_100_continue:
                    self.writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                await self._receive()
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.server.max_body:
                    raise _TooLarge()
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return self._request(head, bytes(body))
            else:  # ConnectionClosed (or PAUSED, which cannot happen before the cycle ends)
                return None

    def _request(self, head: h11.Request, body: bytes) -> Request:
        target = head.target.decode("latin-1")
        parts = urlsplit(target)
        return Request(method=head.method.decode("ascii"), target=target, path=parts.path or "/",
                       query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                       headers=_header_dict(head.headers), body=body, client=self.client,
                       http_version=head.http_version.decode("ascii"))

    async def _call(self, request: Request) -> Response:
        try:
            response = await self.server.handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"handler returned {type(response).__name__}, not Response")
            return response
        except asyncio.CancelledError:
            raise
        except Exception:
            self.server.errors += 1
            log.exception("%s: %s %s from %s failed", self.server.name, request.method, request.target, self.client)
            return text_response("Internal Server Error\n", 500)

    def _head(self, response: Response, *, length: int | None, close: bool = False) -> h11.Response:
        headers = _encode_headers(response.headers)
        if not _has(headers, "date"):
            headers.append(("Date", email.utils.formatdate(usegmt=True)))
        if length is not None and not _has(headers, "content-length"):
            headers.append(("Content-Length", str(length)))
        if close:
            headers.append(("Connection", "close"))
        return h11.Response(status_code=response.status, headers=headers,
                            reason=reason_phrase(response.status).encode())

    async def _send(self, request: Request, response: Response) -> None:
        conn, writer = self.conn, self.writer
        no_body = request.method == "HEAD" or response.status in (204, 304) or response.status < 200
        if response.stream is not None and not no_body:
            await self._send_stream(response)
            return
        if response.stream is not None:
            await _aclose(response.stream)
        length = None if response.status in (204, 304) else len(response.body)
        writer.write(conn.send(self._head(response, length=length)))
        if response.body and not no_body:
            writer.write(conn.send(h11.Data(data=response.body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _send_stream(self, response: Response) -> None:
        """Chunked, each item flushed; a peer that goes away ends the stream (as Go's
        net/http cancels the request context when its background read sees EOF)."""
        conn, writer = self.conn, self.writer
        assert response.stream is not None
        writer.write(conn.send(self._head(response, length=None)))
        await writer.drain()
        watcher = asyncio.ensure_future(self._watch_peer())
        try:
            iterator = aiter(response.stream)
            while True:
                step = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait({step, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    step.cancel()
                    with contextlib.suppress(BaseException):
                        await step
                    raise ConnectionResetError("peer closed during a streamed response")
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    break
                if chunk:
                    writer.write(conn.send(h11.Data(data=bytes(chunk))))
                    await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        finally:
            watcher.cancel()
            await _aclose(response.stream)

    async def _watch_peer(self) -> None:
        """Returns when the peer closes; pipelined bytes are kept for the next cycle."""
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return
            self.conn.receive_data(data)

    async def _refuse(self, status: int, why: str) -> None:
        self.server.bad_requests += 1
        log.info("%s: bad request from %s: %s", self.server.name, self.client, why)
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        text = f"{status} {reason_phrase(status)}\n".encode()
        response = Response(status=status, headers={"Content-Type": "text/plain; charset=utf-8"}, body=text)
        try:
            self.writer.write(self.conn.send(self._head(response, length=len(text), close=True)))
            self.writer.write(self.conn.send(h11.Data(data=text)))
            self.writer.write(self.conn.send(h11.EndOfMessage()))
            await self.writer.drain()
        except (OSError, h11.LocalProtocolError):
            pass


async def _aclose(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


async def serve_http(net: Any, host: str, port: int, handler: Handler, *, name: str = "",
                     idle_timeout: float | None = None, max_body: int = MAX_BODY_BYTES) -> HttpServer:
    """Serve ``handler`` on ``host:port`` of ``net`` (a VM's app API); returns the server."""
    server = HttpServer(net, handler, name=name, idle_timeout=idle_timeout, max_body=max_body)
    await server.start(host, port)
    return server


# --- client --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientResponse:
    status: int
    reason: str
    headers: dict[str, str]   # lower-case names
    body: bytes
    http_version: str = "1.1"
    raw_headers: tuple[tuple[str, str], ...] = ()  # as sent (original case), for curl -v

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: dict[str, str]
    http_version: str
    raw_headers: tuple[tuple[str, str], ...]


def parse_url(url: str) -> tuple[str, str, int, str]:
    """``http://host[:port]/path?q`` -> (scheme, host, port, target); ValueError names the problem."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"url: no host in {url!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"url: bad port in {url!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, target


def host_header(host: str, port: int, default_port: int = 80) -> str:
    """The ``Host`` value for ``host:port``: the port only when not the scheme's default, an
    IPv6 literal in its brackets (RFC 7230 section 5.4)."""
    host = f"[{host}]" if ":" in host else host
    return host if port == default_port else f"{host}:{port}"


def split_http_url(url: str) -> tuple[str, int, str]:
    """``http://host[:port]/target`` -> ``(host, port, target)``; other schemes are refused
    as curl words it."""
    scheme, host, port, target = parse_url(url)
    if scheme != "http":
        raise ValueError(f'protocol "{scheme}" not supported')
    return host, port, target


class HttpConnection:
    """One client connection: send a request, read the head, then the body piece by piece."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.port = port
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.closed = False
        self.received_any = False  # a byte of this cycle's response arrived (retry logic)
        self._chunk = bytearray()

    @classmethod
    async def open(cls, net: Any, host: str, port: int, *, timeout: float | None = None) -> HttpConnection:
        reader, writer = await net.open_connection(host, port, timeout=timeout)
        return cls(reader, writer, host, port)

    @property
    def peername(self) -> tuple[str, int]:
        peer = self.writer.get_extra_info("peername") or (self.host, self.port)
        return str(peer[0]), int(peer[1])

    @property
    def sockname(self) -> tuple[str, int]:
        local = self.writer.get_extra_info("sockname") or ("", 0)
        return str(local[0]), int(local[1])

    def request_headers(self, method: str, headers: Headers | None, body: bytes) -> list[tuple[str, str]]:
        """Host first (as curl), then the caller's, then Content-Length when there is a body."""
        items = _encode_headers(headers or {})
        out: list[tuple[str, str]] = []
        if not _has(items, "host"):
            out.append(("Host", self.host if self.port == 80 else f"{self.host}:{self.port}"))
        out += items
        if not _has(out, "user-agent"):
            out.append(("User-Agent", USER_AGENT))
        if (body or method in ("POST", "PUT", "PATCH")) and not _has(out, "content-length") \
                and not _has(out, "transfer-encoding"):
            out.append(("Content-Length", str(len(body))))
        return out

    async def send_request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        conn = self.conn
        self.received_any = False
        try:
            data = conn.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise HttpError(f"request: {exc}") from None
        self.writer.write(data)
        await self.writer.drain()

    async def _next_event(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.close()
                raise ProtocolError(str(exc)) from None
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_SIZE)
            if data:
                self.received_any = True
            self.conn.receive_data(data)

    async def receive_head(self) -> ResponseHead:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends
            if isinstance(event, h11.Response):
                return ResponseHead(
                    status=event.status_code, reason=event.reason.decode("latin-1"),
                    headers=_header_dict(event.headers), http_version=event.http_version.decode("ascii"),
                    raw_headers=tuple((k.decode("latin-1"), v.decode("latin-1"))
                                      for k, v in event.headers.raw_items()))
            if isinstance(event, h11.ConnectionClosed):
                self.close()
                raise ProtocolError("server closed the connection without a response")
            raise ProtocolError(f"unexpected {type(event).__name__} before the response")

    async def next_data(self, *, whole_chunks: bool = True) -> bytes | None:
        """The next piece of the body (a whole chunk of a chunked body), None at its end."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                # h11 marks the pieces of a chunked body with chunk_start/chunk_end; a
                # Content-Length or close-delimited body has both False on every piece.
                if not whole_chunks or not (event.chunk_start or event.chunk_end or self._chunk):
                    return bytes(event.data)
                self._chunk += event.data
                if event.chunk_end:
                    piece = bytes(self._chunk)
                    self._chunk.clear()
                    return piece
                continue
            if isinstance(event, h11.EndOfMessage):
                self._end_cycle()
                if self._chunk:
                    piece = bytes(self._chunk)
                    self._chunk.clear()
                    return piece
                return None
            if isinstance(event, h11.ConnectionClosed):
                self.close()
                return None
            raise ProtocolError(f"unexpected {type(event).__name__} in a response body")

    def _end_cycle(self) -> None:
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self.close()

    async def read_body(self) -> bytes:
        body = bytearray()
        while (piece := await self.next_data(whole_chunks=False)) is not None:
            body += piece
        return bytes(body)

    @property
    def reusable(self) -> bool:
        return not self.closed and self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()

    async def exchange(self, method: str, target: str, headers: Headers | None, body: bytes) -> ClientResponse:
        await self.send_request(method, target, self.request_headers(method, headers, body), body)
        head = await self.receive_head()
        data = b"" if method == "HEAD" else await self.read_body()
        if method == "HEAD":
            self.skip_head_body()
        return ClientResponse(head.status, head.reason, head.headers, data, head.http_version, head.raw_headers)

    def skip_head_body(self) -> None:
        # h11 knows a HEAD response has no body: EndOfMessage is already parsed and waiting.
        event = self.conn.next_event()
        if isinstance(event, h11.EndOfMessage):
            self._end_cycle()
        else:
            self.close()


class StreamResponse:
    """A response being read: ``status``, ``headers``; the body by chunks or lines."""

    def __init__(self, conn: HttpConnection, head: ResponseHead) -> None:
        self._conn = conn
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.http_version = head.http_version
        self._buffer = b""

    async def iter_chunks(self, *, timeout: float | None = None) -> AsyncIterator[bytes]:
        """Each chunk of a chunked body as the server flushed it (pieces as they arrive for
        other bodies); ``timeout`` bounds each wait (TimeoutError)."""
        while True:
            piece = await asyncio.wait_for(self._conn.next_data(), timeout)
            if piece is None:
                return
            yield piece

    async def iter_lines(self, *, timeout: float | None = None) -> AsyncIterator[bytes]:
        """Complete lines without their ``\\n`` (a watch: one JSON event per line)."""
        async for chunk in self.iter_chunks(timeout=timeout):
            self._buffer += chunk
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                yield line.rstrip(b"\r")
        if self._buffer:
            line, self._buffer = self._buffer, b""
            yield line

    async def aread(self) -> bytes:
        return await self._conn.read_body()

    def close(self) -> None:
        self._conn.close()


class HttpClient:
    """Requests to one server over one keep-alive connection (reopened when it closed).

    Requests are serialized on that connection (HTTP/1.1 has no multiplexing); a request on a
    re-used connection that the server closed meanwhile is retried once on a fresh one, as
    Go's and urllib3's clients do.  Errors: the socket errors of ``open_connection``
    (``ConnectionRefusedError``, ``TimeoutError``, ...), :class:`ProtocolError`.
    """

    def __init__(self, net: Any, host: str, port: int, *, timeout: float | None = 10.0,
                 headers: Headers | None = None) -> None:
        self.net = net
        self.host = host
        self.port = port
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._conn: HttpConnection | None = None
        self._lock = asyncio.Lock()
        self.connects = 0  # connections opened (tests check keep-alive re-use)

    async def _connect(self) -> HttpConnection:
        self.connects += 1
        return await HttpConnection.open(self.net, self.host, self.port, timeout=self.timeout)

    def _headers(self, headers: Headers | None) -> dict[str, str]:
        return {**self.headers, **(headers or {})}

    async def request(self, method: str, path: str, *, headers: Headers | None = None, body: bytes = b"",
                      timeout: float | None = None) -> ClientResponse:
        limit = timeout if timeout is not None else self.timeout
        async with self._lock:
            async with asyncio.timeout(limit):
                return await self._request(method, path, self._headers(headers), body)

    async def _request(self, method: str, path: str, headers: Headers, body: bytes) -> ClientResponse:
        for attempt in (0, 1):
            conn = self._conn
            reused = conn is not None and conn.reusable
            if conn is None or not reused:
                if conn is not None:
                    conn.close()
                conn = self._conn = await self._connect()
            try:
                response = await conn.exchange(method, path, headers, body)
            except (ProtocolError, ConnectionError) as exc:
                conn.close()
                self._conn = None
                if reused and attempt == 0 and not conn.received_any:
                    log.debug("re-used connection to %s:%d was closed (%s); retrying", self.host, self.port, exc)
                    continue
                raise
            except BaseException:  # a timeout or cancellation mid-exchange: state unknown
                conn.close()
                self._conn = None
                raise
            if not conn.reusable:
                conn.close()
                self._conn = None
            return response
        raise AssertionError("unreachable")

    async def get_json(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = await self.request("GET", path, **kwargs)
        return response.status, (response.json() if response.body else None)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, *, headers: Headers | None = None, body: bytes = b"",
                     timeout: float | None = None) -> AsyncIterator[StreamResponse]:
        """A response read as it comes, on a connection of its own (closed on exit);
        ``timeout`` bounds the connect and the response head only."""
        limit = timeout if timeout is not None else self.timeout
        conn: HttpConnection | None = None
        try:
            async with asyncio.timeout(limit):
                conn = await self._connect()
                merged = self._headers(headers)
                await conn.send_request(method, path, conn.request_headers(method, merged, body), body)
                head = await conn.receive_head()
            yield StreamResponse(conn, head)
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def http_request(net: Any, method: str, url: str, *, headers: Headers | None = None, body: bytes = b"",
                       timeout: float | None = 10.0) -> ClientResponse:
    """One request on a fresh connection (closed afterwards); ``url`` is ``http://host:port/path``."""
    scheme, host, port, target = parse_url(url)
    if scheme != "http":
        raise HttpError(f'Protocol "{scheme}" not supported')
    async with asyncio.timeout(timeout):
        conn = await HttpConnection.open(net, host, port, timeout=timeout)
        try:
            return await conn.exchange(method, target, headers, body)
        finally:
            conn.close()

"""``curl`` inside a VM: real HTTP/1.1 bytes (h11, :mod:`agents.vm.http`) over the VM's TCP.

Flags, messages and exit codes are curl 7.81's (Ubuntu 22.04), the texts of its
``lib/connect.c``, ``lib/multi.c`` and ``lib/transfer.c``::

    curl: (6) Could not resolve host: NAME
    curl: (7) Failed to connect to HOST port P after N ms: Connection refused
    curl: (28) Failed to connect to HOST port P after N ms: Connection timed out   (SYN retries ran out)
    curl: (28) Connection timed out after N milliseconds                       (--connect-timeout / -m)
    curl: (28) Operation timed out after N milliseconds with B bytes received  (-m, after connecting)
    curl: (52) Empty reply from server ; curl: (56) Recv failure: Connection reset by peer
    curl: (22) The requested URL returned error: 404                           (-f)

Differences, forced by running without a terminal or a filesystem: no progress meter (as
if ``-s`` were always given for it; errors still follow ``-s``/``-S``); ``-o FILE`` other than
``-`` discards the body like ``/dev/null``; only ``http://`` (``https`` comes in a later step).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .http import HttpConnection, ProtocolError, ResponseHead, host_header, parse_url
from .tools import ToolContext, ToolExit, ToolParser, _strerror, register_tool, resolve_host

USER_AGENT = "curl/7.81.0"
UNKNOWN = -1


class CurlParser(ToolParser):
    """curl's own wording for a bad command line (rc 2)."""

    def error(self, message: str) -> NoReturn:
        self._ctx.err.write(f"curl: {message}\ncurl: try 'curl --help' or 'curl --manual' for more information\n")
        raise ToolExit(2)


class CurlFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Transfer:
    """What ``-w`` can print about one transfer."""

    url: str
    method: str = "GET"
    http_code: int = 0
    remote_ip: str = ""
    remote_port: int = 0
    local_ip: str = ""
    local_port: int = 0
    size_download: int = 0
    size_header: int = 0
    content_type: str = ""
    num_connects: int = 0
    time_connect: float = 0.0
    time_starttransfer: float = 0.0
    time_total: float = 0.0
    exitcode: int = 0
    errormsg: str = ""
    http_version: str = "0"
    head_lines: list[str] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)  # what arrived, written out even on failure
    include_head: bool = False
    start: float = field(default_factory=time.perf_counter)

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.start) * 1000)

    def variables(self) -> dict[str, str]:
        return {
            "http_code": f"{self.http_code:03d}", "response_code": f"{self.http_code:03d}",
            "remote_ip": self.remote_ip, "remote_port": str(self.remote_port) if self.remote_port else "",
            "local_ip": self.local_ip, "local_port": str(self.local_port) if self.local_port else "",
            "size_download": str(self.size_download), "size_header": str(self.size_header),
            "content_type": self.content_type, "num_connects": str(self.num_connects),
            "time_connect": f"{self.time_connect:.6f}", "time_starttransfer": f"{self.time_starttransfer:.6f}",
            "time_total": f"{self.time_total:.6f}", "exitcode": str(self.exitcode),
            "errormsg": self.errormsg, "url_effective": self.url, "url": self.url, "method": self.method,
            "http_version": self.http_version, "scheme": "HTTP",
        }


_WRITE_OUT = re.compile(r"%\{([a-z_]+)\}|%%|\\[nrt\\]")
_ESCAPES = {"\\n": "\n", "\\r": "\r", "\\t": "\t", "\\\\": "\\", "%%": "%"}


def write_out(fmt: str, transfer: Transfer, err: Any) -> str:
    """curl's ``-w``: ``%{var}`` (unknown ones warned about and left out), ``\\n`` escapes."""
    values = transfer.variables()

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return _ESCAPES[m.group(0)]
        if name not in values:
            err.write(f"curl: unknown --write-out variable: '{name}'\n")
            return ""
        return values[name]

    return _WRITE_OUT.sub(sub, fmt)


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


def _parser(ctx: ToolContext) -> CurlParser:
    p = CurlParser(ctx, "curl", description="transfer a URL (HTTP/1.1)", add_help=False)
    p.add_argument("--help", "-h", action="help", help="this help")
    p.add_argument("-s", "--silent", action="store_true", help="silent mode")
    p.add_argument("-S", "--show-error", action="store_true", help="show error even when -s is used")
    p.add_argument("-v", "--verbose", action="store_true", help="make the operation more talkative")
    p.add_argument("-f", "--fail", action="store_true", help="fail fast with no output on HTTP errors")
    p.add_argument("-i", "--include", action="store_true", help="include protocol response headers in the output")
    p.add_argument("-I", "--head", action="store_true", help="show document info only")
    p.add_argument("-m", "--max-time", type=_seconds, default=None, metavar="SECONDS",
                   help="maximum time allowed for the transfer")
    p.add_argument("--connect-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="maximum time allowed for connection")
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="write to file instead of stdout")
    p.add_argument("-w", "--write-out", default=None, metavar="FORMAT", help="use output FORMAT after completion")
    p.add_argument("-H", "--header", action="append", default=[], metavar="HEADER", help="pass custom header(s)")
    p.add_argument("-X", "--request", default=None, metavar="METHOD", help="specify request command to use")
    p.add_argument("-d", "--data", "--data-raw", "--data-binary", action="append", default=[], metavar="DATA",
                   help="HTTP POST data")
    p.add_argument("-A", "--user-agent", default=USER_AGENT, metavar="NAME", help="send User-Agent NAME")
    p.add_argument("-k", "--insecure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--http1.1", dest="http11", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("url", nargs="?")
    return p


@register_tool("curl")
async def curl(ctx: ToolContext, args: list[str]) -> int:
    """curl: rc 0 on a completed transfer (any HTTP status unless -f), curl's codes otherwise."""
    ns = _parser(ctx).parse(args)
    if not ns.url:
        ctx.err.write("curl: no URL specified!\ncurl: try 'curl --help' or 'curl --manual' for more information\n")
        return 2
    method = ns.request or ("HEAD" if ns.head else "POST" if ns.data else "GET")
    transfer = Transfer(url=ns.url, method=method)
    try:
        await _run(ctx, ns, transfer, method)
    except CurlFailure as failure:
        transfer.exitcode = failure.code
        transfer.errormsg = failure.message
        if ns.verbose:
            ctx.err.write("* Closing connection 0\n")
        if not ns.silent or ns.show_error:
            ctx.err.write(f"curl: ({failure.code}) {failure.message}\n")
    transfer.time_total = time.perf_counter() - transfer.start
    if ns.output == "-":
        head = _header_block(transfer) if transfer.include_head else b""
        ctx.out.write((head + bytes(transfer.body)).decode("utf-8", "replace"))
    if ns.write_out is not None:
        ctx.out.write(write_out(ns.write_out, transfer, ctx.err))
    return transfer.exitcode


def _request_headers(ns: argparse.Namespace, host: str, port: int, data: bytes) -> list[tuple[str, str]]:
    """curl's defaults, then -H: ``K: V`` replaces, ``K:`` removes, ``K;`` sends it empty."""
    headers: list[tuple[str, str]] = [("Host", host_header(host, port)),
                                      ("User-Agent", ns.user_agent), ("Accept", "*/*")]
    if ns.data:
        headers += [("Content-Length", str(len(data))), ("Content-Type", "application/x-www-form-urlencoded")]
    for raw in ns.header:
        if ":" in raw:
            name, value = raw.split(":", 1)
            value = value.strip()
        elif raw.endswith(";"):
            name, value = raw[:-1], ""
        else:
            continue  # curl ignores a header with neither ':' nor ';'
        headers = [(k, v) for k, v in headers if k.lower() != name.strip().lower()]
        if value or raw.endswith(";"):
            headers.append((name.strip(), value))
    return headers


async def _run(ctx: ToolContext, ns: argparse.Namespace, t: Transfer, method: str) -> None:
    try:
        scheme, host, port, target = parse_url(ns.url)
    except ValueError:
        raise CurlFailure(3, "URL using bad/illegal format or missing URL") from None
    if scheme != "http":
        raise CurlFailure(1, f'Protocol "{scheme}" not supported')
    # getaddrinfo with the VM's or pod's resolv.conf; an address literal asks no DNS
    ip = (await resolve_host(ctx.net, host)).ip
    if ip is None:
        if ns.verbose:
            ctx.err.write(f"* Could not resolve host: {host}\n")
        raise CurlFailure(6, f"Could not resolve host: {host}")
    conn = await _connect(ctx, ns, t, host, ip, port)
    try:
        await _exchange(ctx, ns, t, conn, method, host, port, target)
    finally:
        conn.close()


async def _connect(ctx: ToolContext, ns: argparse.Namespace, t: Transfer, host: str, ip: str,
                   port: int) -> HttpConnection:
    limits = [x for x in (ns.connect_timeout, ns.max_time) if x]
    verbose = ctx.err.write if ns.verbose else None
    if verbose:
        verbose(f"*   Trying {ip}:{port}...\n")
    try:
        async with asyncio.timeout(min(limits) if limits else None) as scope:
            conn = await HttpConnection.open(ctx.net, ip, port)
    except TimeoutError as exc:
        if scope.expired():
            raise CurlFailure(28, f"Connection timed out after {t.elapsed_ms()} milliseconds") from None
        _connect_failed(ctx, ns, t, host, ip, port, exc)
    except OSError as exc:
        _connect_failed(ctx, ns, t, host, ip, port, exc)
    t.num_connects = 1
    t.time_connect = time.perf_counter() - t.start
    t.remote_ip, t.remote_port = conn.peername
    t.local_ip, t.local_port = conn.sockname
    if verbose:
        verbose(f"* Connected to {host} ({ip}) port {port} (#0)\n")
    return conn


def _connect_failed(ctx: ToolContext, ns: argparse.Namespace, t: Transfer, host: str, ip: str, port: int,
                    exc: BaseException) -> NoReturn:
    why = _strerror(exc)
    if ns.verbose:
        ctx.err.write(f"* connect to {ip} port {port} failed: {why}\n")
    message = f"Failed to connect to {host} port {port} after {t.elapsed_ms()} ms: {why}"
    if ns.verbose:
        ctx.err.write(f"* {message}\n")
    # lib/connect.c: an ETIMEDOUT connect is CURLE_OPERATION_TIMEDOUT, the rest COULDNT_CONNECT
    raise CurlFailure(28 if isinstance(exc, TimeoutError) else 7, message)


async def _exchange(ctx: ToolContext, ns: argparse.Namespace, t: Transfer, conn: HttpConnection, method: str,
                    host: str, port: int, target: str) -> None:
    data = "&".join(ns.data).encode()
    headers = _request_headers(ns, host, port, data)
    left = None if ns.max_time is None else max(0.0, ns.max_time - (time.perf_counter() - t.start))
    expected = UNKNOWN
    body = t.body
    try:
        async with asyncio.timeout(left):
            await conn.send_request(method, target, headers, data)
            if ns.verbose:
                ctx.err.write("".join(f"> {line}\n" for line in
                                      [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers), ""]))
            head = await conn.receive_head()
            t.time_starttransfer = time.perf_counter() - t.start
            _record_head(ctx, ns, t, head)
            t.include_head = ns.include or ns.head
            expected = int(head.headers.get("content-length", UNKNOWN)) if method != "HEAD" else 0
            if ns.fail and head.status >= 400:
                raise CurlFailure(22, f"The requested URL returned error: {head.status}")
            if method != "HEAD":
                while (piece := await conn.next_data(whole_chunks=False)) is not None:
                    body += piece
                    t.size_download = len(body)
            else:
                conn.skip_head_body()
    except TimeoutError:
        if expected >= 0:
            raise CurlFailure(28, f"Operation timed out after {t.elapsed_ms()} milliseconds with "
                                  f"{len(body)} out of {expected} bytes received") from None
        raise CurlFailure(28, f"Operation timed out after {t.elapsed_ms()} milliseconds with "
                              f"{len(body)} bytes received") from None
    except ProtocolError:
        raise _protocol_failure(t, conn, expected, len(body)) from None
    except ConnectionResetError:
        raise CurlFailure(56, "Recv failure: Connection reset by peer") from None
    except OSError as exc:
        raise CurlFailure(56, f"Recv failure: {_strerror(exc)}") from None
    if ns.verbose:
        ctx.err.write(f"* Connection #0 to host {host} left intact\n" if conn.reusable
                      else "* Closing connection 0\n")


def _record_head(ctx: ToolContext, ns: argparse.Namespace, t: Transfer, head: ResponseHead) -> None:
    t.http_code = head.status
    t.http_version = head.http_version
    t.content_type = head.headers.get("content-type", "")
    lines = [f"HTTP/{head.http_version} {head.status} {head.reason}".rstrip(),
             *(f"{k}: {v}" for k, v in head.raw_headers), ""]
    t.size_header = sum(len(line) + 2 for line in lines)
    t.head_lines = lines
    if ns.verbose:
        ctx.err.write("* Mark bundle as not supporting multiuse\n")
        ctx.err.write("".join(f"< {line}\n" for line in lines))


def _header_block(t: Transfer) -> bytes:
    return "".join(f"{line}\r\n" for line in t.head_lines).encode("latin-1", "replace")


def _protocol_failure(t: Transfer, conn: HttpConnection, expected: int, got: int) -> CurlFailure:
    if not t.http_code:
        if not conn.received_any:
            return CurlFailure(52, "Empty reply from server")
        return CurlFailure(8, "Weird server reply")
    if expected >= 0:
        return CurlFailure(18, f"transfer closed with {expected - got} bytes remaining to read")
    return CurlFailure(18, "transfer closed with outstanding read data remaining")

"""Command-line tools that run inside a VM (management verb ``exec``).

Each tool behaves like the real one as far as a script or a person reading its output can
tell: the same flags, the same lines (iputils ``ping``, OpenBSD ``nc``) and the same exit
codes.  Tools are coroutines ``tool(ctx, args) -> rc`` registered by name in :data:`TOOLS`;
they reach the network only through the VM's asyncio-style API (:class:`~.streams.NetAPI`),
so later steps add more (``curl`` over h11) with :func:`register_tool`.  A host name is
resolved as getaddrinfo would (:func:`resolve_host`: an address literal as it is, a name over
DNS with the VM's or pod's resolv.conf), and a failure is reported in the real tool's words
(``ping: NAME: Name or service not known``).

Differences from the real tools, all forced by running without a terminal:
``ping`` without ``-c`` sends 4 probes (Windows' default) instead of running until Ctrl-C;
``nc -u`` waits ``-w`` seconds (default 1) for answers instead of forever; ``nc``'s standard
input is the ``input`` string of the ``exec`` request.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import io
import ipaddress
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

from agents.dns.resolver import DEFAULT_HOSTS
from agents.dns.server import resolve as dns_resolve
from broker.packets import PacketError, canonical_ip

from .streams import NetAPI, PingError

log = logging.getLogger("hcinet.vm.tools")


class ToolExit(Exception):
    """A tool ends early with this exit status (argparse errors, ``-h``)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(slots=True)
class ToolContext:
    net: NetAPI
    out: io.StringIO
    err: io.StringIO
    stdin: str = ""


Tool = Callable[[ToolContext, list[str]], Awaitable[int]]
TOOLS: dict[str, Tool] = {}


def register_tool(name: str) -> Callable[[Tool], Tool]:
    def deco(fn: Tool) -> Tool:
        TOOLS[name] = fn
        return fn
    return deco


class ToolParser(argparse.ArgumentParser):
    """argparse writing into the captured streams and raising instead of exiting."""

    def __init__(self, ctx: ToolContext, prog: str, **kwargs: Any) -> None:
        super().__init__(prog=prog, exit_on_error=False, **kwargs)
        self._ctx = ctx

    def _print_message(self, message: str, file: Any = None) -> None:
        if not message:
            return
        if file is sys.stderr:
            file = self._ctx.err
        elif not isinstance(file, io.StringIO):
            file = self._ctx.out  # sys.stdout (--help) or nothing
        file.write(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._ctx.err.write(message)
        raise ToolExit(status)

    def error(self, message: str) -> NoReturn:
        self.print_usage(self._ctx.err)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse(self, args: list[str]) -> argparse.Namespace:
        try:
            return self.parse_args(args)
        except argparse.ArgumentError as exc:
            self.error(str(exc))


async def run_tool(net: NetAPI, argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    """Run ``argv`` like a shell would; return ``(rc, stdout, stderr)``."""
    ctx = ToolContext(net=net, out=io.StringIO(), err=io.StringIO(), stdin=stdin)
    tool = TOOLS.get(argv[0]) if argv else None
    if tool is None:
        name = argv[0] if argv else ""
        return 127, "", f"sh: 1: {name}: not found\n"
    try:
        rc = await tool(ctx, list(argv[1:]))
    except ToolExit as exc:
        rc = exc.code
    except Exception as exc:  # a tool bug must not take the VM's management loop with it
        log.exception("tool %s failed", argv[0])
        ctx.err.write(f"{argv[0]}: {type(exc).__name__}: {exc}\n")
        rc = 1
    return rc, ctx.out.getvalue(), ctx.err.getvalue()


def _positive(kind: type) -> Callable[[str], Any]:
    def conv(text: str) -> Any:
        value = kind(text)
        if value <= 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(text)
        return value
    conv.__name__ = kind.__name__
    return conv


# getaddrinfo's address families (AF_UNSPEC with AI_ADDRCONFIG): A, and AAAA too when the
# caller has a non-link-local IPv6 address (a dual-stack cluster's Linux pods).
RESOLVE_QTYPES = ("A",)
RESOLVE_QTYPES_DUAL = ("A", "AAAA")
# RFC 6724 section 2.1's default policy table (musl's, as Alpine-based images sort): prefix,
# precedence.  ULA (fd00::/8, a dual-stack cluster's Services and pods) sorts after IPv4.
_PRECEDENCE = tuple((ipaddress.ip_network(p), n) for p, n in (
    ("::1/128", 50), ("::ffff:0:0/96", 35), ("2002::/16", 30), ("2001::/32", 5), ("fc00::/7", 3),
    ("::/96", 1), ("fec0::/10", 1), ("3ffe::/16", 1), ("::/0", 40)))


def has_ipv6(net: Any) -> bool:
    """AI_ADDRCONFIG: does ``net`` (a VM's or a pod's stack) hold an IPv6 address other than
    loopback and link-local?"""
    stack = getattr(net, "stack", None)
    local = getattr(stack, "local_addresses", None)
    if local is None:
        return False
    for ip in local():
        if ":" in ip:
            addr = ipaddress.ip_address(ip)
            if not (addr.is_loopback or addr.is_link_local):
                return True
    return False


def precedence(ip: str) -> int:
    """RFC 6724's precedence of a destination (IPv4 as its mapped form)."""
    addr = ipaddress.ip_address(ip)
    v6 = addr if isinstance(addr, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{addr}")
    return next(n for net, n in _PRECEDENCE if v6 in net)


def sort_addresses(ips: Sequence[str]) -> list[str]:
    """getaddrinfo's destination order (RFC 6724 rule 6, highest precedence first; stable)."""
    return sorted(ips, key=lambda ip: -precedence(ip))


def _resolve(host: str) -> str | None:
    """An address literal, canonical; None for a name (no DNS: see :func:`resolve_host`)."""
    try:
        return canonical_ip(host, "host")
    except PacketError:
        return None


class Resolved(NamedTuple):
    """What getaddrinfo gave a tool: the first address and the canonical name
    (``AI_CANONNAME``), or no address and the ``gai_strerror`` text."""

    ip: str | None
    canonical: str = ""
    error: str = ""


async def resolve_host(net: NetAPI, host: str) -> Resolved:
    """getaddrinfo as the tools call it.

    An address literal is taken as it is, with no DNS query (getaddrinfo parses numeric
    hosts first); a name goes through the stub resolver (hosts file, then DNS) with the
    resolv.conf of ``net`` (:func:`agents.dns.resolver.resolv_conf_of`: a pod's ClusterFirst
    file, the VM config's ``dns`` key, a DHCP lease's servers, else 127.0.0.1 as glibc).
    A name that does not exist gives ``Name or service not known`` (EAI_NONAME), no server
    answering ``Temporary failure in name resolution`` (EAI_AGAIN)."""
    ip = _resolve(host)
    if ip is not None:
        return Resolved(ip, host)
    result = await dns_resolve(net, host, RESOLVE_QTYPES_DUAL if has_ipv6(net) else RESOLVE_QTYPES)
    if result.ok and result.addresses:
        return Resolved(sort_addresses(result.addresses)[0], result.name or host)
    return Resolved(None, error=result.gai_error)


async def resolve_or_say(ctx: ToolContext, tool: str, host: str) -> str | None:
    """:func:`resolve_host` for a tool: the address, or None once ``tool: host: reason`` is
    on stderr (the tool then exits 2)."""
    ip, _, error = await resolve_host(ctx.net, host)
    if ip is None:
        ctx.err.write(f"{tool}: {host}: {error}\n")
    return ip


async def reverse_name(net: NetAPI, ip: str) -> str | None:
    """getnameinfo(NI_NAMEREQD): the hosts file's name of ``ip``, else its PTR name over
    DNS (nsswitch ``hosts: files dns``), or None."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for name, addrs in DEFAULT_HOSTS.items():
        if ip in addrs:
            return name
    qname = addr.reverse_pointer + "."
    result = await dns_resolve(net, qname, ("PTR",))
    return result.addresses[0].rstrip(".") if result.ok and result.addresses else None


def _strerror(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code:
        return os.strerror(code)
    if isinstance(exc, TimeoutError):
        return os.strerror(errno.ETIMEDOUT)
    return str(exc) or type(exc).__name__


# --- ping (iputils) ------------------------------------------------------------------------

# iputils' pr_icmph texts, keyed by (icmp type, code) for v4 and v6.
_ICMP_TEXT = {
    (3, 0): "Destination Net Unreachable", (3, 1): "Destination Host Unreachable",
    (3, 2): "Destination Protocol Unreachable", (3, 3): "Destination Port Unreachable",
    (3, 13): "Communication administratively prohibited", (11, 0): "Time to live exceeded",
}
_ICMP6_TEXT = {
    (1, 0): "Destination unreachable: No route", (1, 1): "Destination unreachable: Administratively prohibited",
    (1, 3): "Destination unreachable: Address unreachable", (1, 4): "Destination unreachable: Port unreachable",
    (3, 0): "Time exceeded: Hop limit",
}


def icmp_text(exc: PingError) -> str:
    if exc.v6:
        if exc.icmp_type == 2:
            return f"Packet too big: mtu={exc.mtu}"
        return _ICMP6_TEXT.get((exc.icmp_type, exc.icmp_code), f"Bad ICMP type: {exc.icmp_type}")
    if exc.icmp_type == 3 and exc.icmp_code == 4:
        return f"Frag needed and DF set (mtu = {exc.mtu})"
    return _ICMP_TEXT.get((exc.icmp_type, exc.icmp_code), f"Bad ICMP type: {exc.icmp_type}")


def ping_time(ms: float) -> str:
    """iputils' RTT format: three significant decimals below 1 ms, fewer above (ping_common.c)."""
    us = int(ms * 1000)
    if us >= 100000 - 50:
        return f"{(us + 500) // 1000}"
    if us >= 10000 - 5:
        return f"{(us + 50) // 1000}.{((us + 50) % 1000) // 100}"
    if us >= 1000:
        return f"{(us + 5) // 1000}.{((us + 5) % 1000) // 10:02d}"
    return f"{us // 1000}.{us % 1000:03d}"


class _PingRun:
    """State of one ping run: counts and the RTTs for the summary."""

    def __init__(self, ctx: ToolContext, host: str, ip: str, size: int, numeric: bool = True) -> None:
        self.ctx, self.host, self.ip, self.size = ctx, host, ip, size
        self.numeric = numeric
        self.transmitted = 0
        self.rtts: list[float] = []
        self.errors = 0
        self.fatal: OSError | None = None
        self._last = ("", "")  # pr_addr's static buffer: the last address and its text
        self._naming = asyncio.Lock()

    async def pr_addr(self, ip: str) -> str:
        """iputils' pr_addr: the bare address with -n or a numeric target; else ``NAME (IP)``,
        NAME from getnameinfo (the PTR name, or the address again when there is none).  The
        last answer is kept, as pr_addr's static buffer keeps it, so a run asks once."""
        if self.numeric:
            return ip
        async with self._naming:  # replies print in turn, as ping's one loop prints them
            if self._last[0] != ip:
                name = await reverse_name(self.ctx.net, ip)
                self._last = (ip, f"{name or ip} ({ip})")
            return self._last[1]

    async def probe(self, pinger: Any, seq: int, timeout: float, ttl: int) -> None:
        try:
            reply = await pinger.ping(self.ip, seq, timeout, size=self.size, ttl=ttl)
        except TimeoutError:
            return
        except PingError as exc:
            self.errors += 1
            self.ctx.out.write(f"From {await self.pr_addr(exc.src)} icmp_seq={seq} {icmp_text(exc)}\n")
            return
        except OSError as exc:  # the local stack refused to send (no route, message too long)
            self.fatal = self.fatal or exc
            return
        rtt = reply.rtt * 1000
        self.rtts.append(rtt)
        src = await self.pr_addr(reply.src)
        self.ctx.out.write(f"{reply.size} bytes from {src}: icmp_seq={seq} ttl={reply.ttl} "
                           f"time={ping_time(rtt)} ms\n")

    def summary(self, elapsed_ms: int) -> None:
        tx, rx = self.transmitted, len(self.rtts)
        loss = (tx - rx) * 100.0 / tx if tx else 0.0
        errors = f", +{self.errors} errors" if self.errors else ""
        out = self.ctx.out
        out.write(f"\n--- {self.host} ping statistics ---\n")
        out.write(f"{tx} packets transmitted, {rx} received{errors}, {loss:g}% packet loss, time {elapsed_ms}ms\n")
        if rx:
            avg = sum(self.rtts) / rx
            mdev = math.sqrt(max(0.0, sum(r * r for r in self.rtts) / rx - avg * avg))
            out.write(f"rtt min/avg/max/mdev = {min(self.rtts):.3f}/{avg:.3f}/{max(self.rtts):.3f}/{mdev:.3f} ms\n")


@register_tool("ping")
async def ping(ctx: ToolContext, args: list[str]) -> int:
    """iputils ping: rc 0 if any reply came back, 1 if none, 2 on error."""
    p = ToolParser(ctx, "ping", description="send ICMP ECHO_REQUEST to network hosts")
    p.add_argument("-c", dest="count", type=_positive(int), default=4, help="stop after COUNT replies/probes")
    p.add_argument("-i", dest="interval", type=float, default=1.0, help="seconds between probes")
    p.add_argument("-W", dest="timeout", type=_positive(float), default=10.0, help="seconds to wait for a reply")
    p.add_argument("-s", dest="size", type=int, default=56, help="payload bytes")
    p.add_argument("-t", dest="ttl", type=int, default=64, help="IP time to live")
    p.add_argument("-A", dest="adaptive", action="store_true",
                   help="adaptive: at most one unanswered probe; the next goes when the reply is in")
    p.add_argument("-n", dest="numeric", action="store_true", help="numeric output only (no reverse lookups)")
    p.add_argument("host")
    ns = p.parse(args)
    if not 1 <= ns.ttl <= 255:
        ctx.err.write(f"ping: invalid argument: '{ns.ttl}': out of range: 1 <= value <= 255\n")
        return 2
    if ns.interval < 0 or not 0 <= ns.size <= 65507:
        ctx.err.write("ping: invalid argument\n")
        return 2
    # iputils: a numeric target implies -n; a name is shown as its canonical name (AI_CANONNAME)
    numeric = ns.numeric or _resolve(ns.host) is not None
    ip, hostname, error = await resolve_host(ctx.net, ns.host)
    if ip is None:
        ctx.err.write(f"ping: {ns.host}: {error}\n")
        return 2
    if ":" in ip:
        ctx.out.write(f"PING {hostname}({ip}) {ns.size} data bytes\n")
    else:
        ctx.out.write(f"PING {hostname} ({ip}) {ns.size}({ns.size + 28}) bytes of data.\n")
    run = _PingRun(ctx, hostname, ip, ns.size, numeric)
    pinger = ctx.net.pinger()
    start = time.perf_counter()
    tasks = []
    try:
        for seq in range(1, ns.count + 1):
            run.transmitted += 1
            tasks.append(asyncio.ensure_future(run.probe(pinger, seq, ns.timeout, ns.ttl)))
            await asyncio.sleep(0)  # let the probe send before a local error is looked at
            if run.fatal is not None:
                break
            if ns.adaptive:
                await tasks[-1]
            if seq < ns.count and not (ns.adaptive and ns.interval == 0):
                await asyncio.sleep(ns.interval)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        pinger.close()
    if run.fatal is not None and not run.rtts:
        ctx.err.write(f"ping: connect: {_strerror(run.fatal)}\n")
        return 2
    run.summary(int((time.perf_counter() - start) * 1000))
    return 0 if run.rtts else 1


# --- nc (OpenBSD netcat) -------------------------------------------------------------------


def _service(port: int, proto: str) -> str:
    try:
        return socket.getservbyport(port, proto)
    except OSError:
        return "*"


@register_tool("nc")
async def nc(ctx: ToolContext, args: list[str]) -> int:
    """OpenBSD netcat: -z scans, -v reports, -u for UDP, -w for timeouts; rc 0 ok, 1 failed."""
    p = ToolParser(ctx, "nc", description="arbitrary TCP and UDP connections")
    p.add_argument("-z", dest="scan", action="store_true", help="only scan, send no data")
    p.add_argument("-v", dest="verbose", action="store_true", help="verbose")
    p.add_argument("-u", dest="udp", action="store_true", help="UDP instead of TCP")
    p.add_argument("-w", dest="wait", type=_positive(float), default=None, help="timeout in seconds")
    p.add_argument("host")
    p.add_argument("port", type=int)
    ns = p.parse(args)
    if not 0 < ns.port < 65536:
        ctx.err.write(f"nc: port number invalid: {ns.port}\n")
        return 1
    ip, _, error = await resolve_host(ctx.net, ns.host)
    if ip is None:
        ctx.err.write(f"nc: getaddrinfo for host \"{ns.host}\" port {ns.port}: {error}\n")
        return 1
    runner = _nc_udp if ns.udp else _nc_tcp
    return await runner(ctx, ns, ip)


def _nc_failed(ctx: ToolContext, ns: argparse.Namespace, proto: str, exc: BaseException) -> int:
    if ns.verbose:
        ctx.err.write(f"nc: connect to {ns.host} port {ns.port} ({proto}) failed: {_strerror(exc)}\n")
    return 1


def _nc_succeeded(ctx: ToolContext, ns: argparse.Namespace, proto: str) -> None:
    if ns.verbose:
        ctx.err.write(f"Connection to {ns.host} {ns.port} port [{proto}/{_service(ns.port, proto)}] succeeded!\n")


async def _nc_tcp(ctx: ToolContext, ns: argparse.Namespace, ip: str) -> int:
    try:
        reader, writer = await ctx.net.open_connection(ip, ns.port, timeout=ns.wait)
    except TimeoutError:
        if ns.wait is not None:
            # Debian's netcat-openbsd words its own -w expiry this way.
            if ns.verbose:
                ctx.err.write(f"nc: connect to {ns.host} port {ns.port} (tcp) timed out: "
                              f"{os.strerror(errno.EINPROGRESS)}\n")
            return 1
        return _nc_failed(ctx, ns, "tcp", TimeoutError(errno.ETIMEDOUT, "timed out"))
    except OSError as exc:
        return _nc_failed(ctx, ns, "tcp", exc)
    _nc_succeeded(ctx, ns, "tcp")
    try:
        if not ns.scan:
            if ctx.stdin:
                writer.write(ctx.stdin.encode())
            writer.write_eof()  # end of standard input: half-close, like nc -N
            await writer.drain()
            await _copy_out(ctx, reader, ns.wait)
    except (OSError, TimeoutError) as exc:
        ctx.err.write(f"nc: {_strerror(exc)}\n")
        return 1
    finally:
        writer.close()
    return 0


async def _copy_out(ctx: ToolContext, reader: asyncio.StreamReader, idle: float | None) -> None:
    """Copy the peer's bytes to stdout until EOF; ``-w`` is an idle timeout, as in nc."""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), idle)
        except TimeoutError:
            return
        if not chunk:
            return
        ctx.out.write(chunk.decode("utf-8", "replace"))


class _NcUdp(asyncio.DatagramProtocol):
    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.error: OSError | None = None
        self.got = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.ctx.out.write(data.decode("utf-8", "replace"))
        self.got.set()

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.error = exc
        self.got.set()


async def _nc_udp(ctx: ToolContext, ns: argparse.Namespace, ip: str) -> int:
    try:
        transport, proto = await ctx.net.create_datagram_endpoint(
            lambda: _NcUdp(ctx), remote_addr=(ip, ns.port))
    except OSError as exc:
        return _nc_failed(ctx, ns, "udp", exc)
    try:
        # OpenBSD nc -uz probes with "X" datagrams; an ICMP port unreachable comes back as
        # ECONNREFUSED on the connected socket (RFC 1122 4.1.3.3).
        transport.sendto(b"X" if ns.scan else ctx.stdin.encode())
        wait = ns.wait if ns.wait is not None else 1.0
        deadline = time.monotonic() + wait
        while proto.error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            proto.got.clear()
            try:
                await asyncio.wait_for(proto.got.wait(), left)
            except TimeoutError:
                break
            if ns.scan:
                break
        if proto.error is not None:
            return _nc_failed(ctx, ns, "udp", proto.error)
        _nc_succeeded(ctx, ns, "udp")
        return 0
    finally:
        transport.close()


# --- transfer / udp-send (hcinet's own) ----------------------------------------------------

CHUNK = 64 * 1024


@register_tool("transfer")
async def transfer(ctx: ToolContext, args: list[str]) -> int:
    """Send N bytes to a ``tcp-sink`` app, which answers with the SHA-256 of what it got."""
    p = ToolParser(ctx, "transfer", description="send bytes to a tcp-sink and check its SHA-256")
    p.add_argument("--bytes", dest="nbytes", type=int, required=True)
    p.add_argument("--chunk", type=_positive(int), default=CHUNK, help="bytes per write")
    p.add_argument("--timeout", type=_positive(float), default=60.0, help="seconds for the whole run")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a line")
    p.add_argument("host")
    p.add_argument("port", type=int)
    ns = p.parse(args)
    if ns.nbytes < 0:
        ctx.err.write("transfer: --bytes must be >= 0\n")
        return 2
    ip = await resolve_or_say(ctx, "transfer", ns.host)
    if ip is None:
        return 2
    try:
        result = await asyncio.wait_for(_send_stream(ctx.net, ip, ns.port, ns.nbytes, ns.chunk), ns.timeout)
    except (OSError, TimeoutError) as exc:
        ctx.err.write(f"transfer: {ns.host} port {ns.port}: {_strerror(exc)}\n")
        return 1
    if ns.json:
        ctx.out.write(json.dumps(result) + "\n")
    else:
        verdict = "sha256 match" if result["match"] else "sha256 MISMATCH"
        ctx.out.write(f"transfer: {result['bytes']} bytes to {ns.host}:{ns.port} in {result['seconds']:.3f} s, "
                      f"{result['mb_per_s']:.2f} MB/s, {verdict} ({result['sha256'][:16]})\n")
    return 0 if result["match"] else 1


async def _send_stream(net: NetAPI, ip: str, port: int, nbytes: int, chunk: int) -> dict[str, Any]:
    reader, writer = await net.open_connection(ip, port)
    try:
        start = time.perf_counter()
        digest = hashlib.sha256()
        left = nbytes
        while left > 0:
            data = os.urandom(min(chunk, left))
            digest.update(data)
            writer.write(data)
            left -= len(data)
            await writer.drain()
        writer.write_eof()
        answer = (await reader.read()).decode("ascii", "replace").strip()
        seconds = time.perf_counter() - start
    finally:
        writer.close()
    mine = digest.hexdigest()
    return {"bytes": nbytes, "seconds": round(seconds, 6),
            "mb_per_s": round(nbytes / seconds / 1e6, 3) if seconds > 0 else 0.0,
            "sha256": mine, "sink_sha256": answer, "match": answer == mine}


@register_tool("udp-send")
async def udp_send(ctx: ToolContext, args: list[str]) -> int:
    """Send COUNT datagrams of SIZE bytes (a ``udp-sink`` app counts them)."""
    p = ToolParser(ctx, "udp-send", description="send UDP datagrams")
    p.add_argument("--count", type=_positive(int), default=1)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between datagrams")
    p.add_argument("--json", action="store_true", help="one JSON object (with the start time "
                   "on this machine's monotonic clock) instead of a line")
    p.add_argument("host")
    p.add_argument("port", type=int)
    ns = p.parse(args)
    if not 0 <= ns.size <= 65507:
        ctx.err.write("udp-send: bad --size\n")
        return 2
    ip = await resolve_or_say(ctx, "udp-send", ns.host)
    if ip is None:
        return 2
    transport, proto = await ctx.net.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(ip, ns.port))
    payload = os.urandom(ns.size)
    start = time.perf_counter()
    try:
        for i in range(ns.count):
            transport.sendto(payload)
            if ns.interval > 0:
                await asyncio.sleep(ns.interval)
            elif i % 64 == 63:
                await asyncio.sleep(0)  # let the batch go out
        await asyncio.sleep(0)
    except OSError as exc:
        ctx.err.write(f"udp-send: {_strerror(exc)}\n")
        return 1
    finally:
        transport.close()
    seconds = time.perf_counter() - start
    pps = ns.count / seconds if seconds > 0 else 0.0
    if ns.json:
        ctx.out.write(json.dumps({"sent": ns.count, "size": ns.size, "start": start,
                                  "seconds": round(seconds, 6), "pps": round(pps)}) + "\n")
        return 0
    ctx.out.write(f"udp-send: {ns.count} datagrams of {ns.size} bytes to {ns.host}:{ns.port} "
                  f"in {seconds:.3f} s ({pps:.0f} pps)\n")
    return 0


# --- curl (agents/vm/curl.py: HTTP/1.1 over h11) and kwatch (agents/kube/kwatch.py: K watch
# streams with arrival times, for benchmarks): imported here so that they register ---------

from agents.dns import nslookup as _nslookup  # noqa: E402,F401
from agents.kube import kwatch as _kwatch  # noqa: E402,F401

from . import curl as _curl  # noqa: E402,F401
from . import httpbench as _httpbench  # noqa: E402,F401
from . import load as _load  # noqa: E402,F401

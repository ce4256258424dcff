"""``load`` inside a VM or pod: an open-loop HTTP load generator.

hcinet's own tool (the real-world equivalents are ``vegeta attack -rate N -duration S`` and
``wrk2 -R N``): requests are scheduled on a fixed timeline, ``i / rps`` seconds after the
start, whether or not earlier ones have completed, each in its own task, so a stalled server
shows up as timeouts and not as a lower request rate (no coordinated omission).  By default
every request opens a new TCP connection (``--connections new``): that is what sees a VIP
move from one owner to another; ``--connections keepalive`` re-uses idle connections from a
pool instead (a new one is opened when none is idle).

Each request ends in one outcome: ``ok`` (HTTP 2xx or 3xx), ``http_error`` (4xx or 5xx),
``refused`` (connection refused), ``timeout`` (no complete answer within ``--timeout``),
``reset`` (connection reset, or closed before a whole response), ``unreachable``
(EHOSTUNREACH / ENETUNREACH from an ICMP error) or ``other``.  Latency is measured from the
request's scheduled time to the end of its response body (``time.perf_counter`` inside the VM
or pod), for successful requests only.

    load http://192.168.0.150/ --rps 200 --duration 20 --json

Output: a table with one row per second of the schedule plus a summary, or with ``--json``
one object ``{url, requests, failures, failures_by_kind, failure_rate, success_rate,
latency_ms: {p50, p90, p99, max}, per_second: [...], rps_target, rps_achieved, duration_s,
connections}``.  Exit status 0 once the run is done, whatever failed (it is a measurement),
2 on a bad command line or a host that does not resolve.
"""

from __future__ import annotations

import asyncio
import errno
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .http import HttpConnection, HttpError, ProtocolError, host_header, split_http_url
from .tools import ToolContext, ToolParser, _positive, register_tool, resolve_or_say

__all__ = ["FAILURE_KINDS", "LoadStats", "classify", "load", "schedule"]

FAILURE_KINDS = ("http_error", "refused", "timeout", "reset", "unreachable", "other")


def nearest_rank(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..1) of a sorted list; NaN when empty."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q + 0.999999) - 1))]



def schedule(rps: float, duration: float) -> list[float]:
    """Offsets (seconds from the start) at which the requests of a run are sent."""
    n = int(round(rps * duration))
    return [i / rps for i in range(n)]


def classify(exc: BaseException | None, status: int = 0) -> str:
    """The outcome of one request: an exception raised by it, or else its HTTP status."""
    if exc is None:
        return "ok" if 200 <= status < 400 else "http_error"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ProtocolError,
                        asyncio.IncompleteReadError)):
        return "reset"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return "timeout"
    return "other"


def _latency(samples_s: Iterable[float]) -> dict[str, float | None]:
    ms = sorted(x * 1000 for x in samples_s)
    if not ms:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    return {"p50": round(nearest_rank(ms, 0.50), 3), "p90": round(nearest_rank(ms, 0.90), 3),
            "p99": round(nearest_rank(ms, 0.99), 3), "max": round(ms[-1], 3)}


@dataclass
class _Bucket:
    requests: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def add(self, kind: str, latency_s: float | None) -> None:
        self.requests += 1
        if kind == "ok":
            if latency_s is not None:
                self.latencies.append(latency_s)
        else:
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def summary(self) -> dict[str, Any]:
        failures = sum(self.by_kind.values())
        return {"requests": self.requests, "failures": failures,
                "failures_by_kind": dict(sorted(self.by_kind.items())),
                "failure_rate": round(failures / self.requests, 6) if self.requests else 0.0,
                "success_rate": round(1 - failures / self.requests, 6) if self.requests else 0.0,
                "latency_ms": _latency(self.latencies)}


class LoadStats:
    """Outcomes by the second of the schedule in which each request was sent (sans-IO)."""

    def __init__(self, duration: float) -> None:
        self.seconds = [_Bucket() for _ in range(max(1, int(duration + 0.999999)))]
        self.total = _Bucket()

    def record(self, offset_s: float, kind: str, latency_s: float | None = None) -> None:
        index = min(len(self.seconds) - 1, max(0, int(offset_s)))
        self.seconds[index].add(kind, latency_s)
        self.total.add(kind, latency_s)

    def report(self, url: str, rps: float, duration: float, elapsed: float) -> dict[str, Any]:
        out: dict[str, Any] = {"url": url, **self.total.summary()}
        out["per_second"] = [{"second": i, **b.summary()} for i, b in enumerate(self.seconds)]
        out["rps_target"] = rps
        out["rps_achieved"] = round(self.total.requests / duration, 1) if duration > 0 else 0.0
        out["duration_s"] = round(elapsed, 3)
        return out


class _Pool:
    """Idle keep-alive connections (``--connections keepalive``)."""

    def __init__(self) -> None:
        self.idle: list[HttpConnection] = []

    def take(self) -> HttpConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.reusable:
                return conn
            conn.close()
        return None

    def give(self, conn: HttpConnection) -> None:
        if conn.reusable:
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def _one(ctx: ToolContext, ip: str, port: int, target: str, headers: dict[str, str], timeout: float,
               pool: _Pool | None) -> int:
    conn: HttpConnection | None = None
    ok = False
    try:
        async with asyncio.timeout(timeout):
            conn = pool.take() if pool is not None else None
            if conn is None:
                conn = await HttpConnection.open(ctx.net, ip, port)
            if pool is None:
                headers = {**headers, "Connection": "close"}
            response = await conn.exchange("GET", target, headers, b"")
            ok = True
            return response.status
    finally:
        if conn is not None:
            if ok and pool is not None:
                pool.give(conn)
            else:
                conn.close()


async def run_load(ctx: ToolContext, ip: str, port: int, target: str, headers: dict[str, str], rps: float,
                   duration: float, timeout: float, keepalive: bool) -> tuple[LoadStats, float]:
    stats = LoadStats(duration)
    pool = _Pool() if keepalive else None
    clock = time.perf_counter

    async def request(offset: float, due: float) -> None:
        status = 0
        exc: BaseException | None = None
        try:
            status = await _one(ctx, ip, port, target, headers, timeout, pool)
        except (OSError, TimeoutError, HttpError, asyncio.IncompleteReadError) as e:
            exc = e
        kind = classify(exc, status)
        stats.record(offset, kind, clock() - due if kind == "ok" else None)

    tasks: set[asyncio.Task[None]] = set()
    start = clock()
    try:
        for offset in schedule(rps, duration):
            due = start + offset
            wait = due - clock()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(request(offset, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)  # each is bounded by --timeout
    finally:
        for task in tasks:
            task.cancel()
        if pool is not None:
            pool.close()
    return stats, clock() - start


def _table(res: dict[str, Any], url: str) -> str:
    lines = [f"load {url}: {res['rps_target']:g} req/s for {len(res['per_second'])} s, "
             f"{res['connections']} connections",
             f"{'SECOND':>6} {'REQUESTS':>8} {'FAILURES':>8} {'SUCCESS%':>8} {'P50_MS':>8} {'P90_MS':>8} "
             f"{'P99_MS':>8}  FAILURES_BY_KIND"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for row in res["per_second"]:
        lat = row["latency_ms"]
        kinds = ",".join(f"{k}={n}" for k, n in row["failures_by_kind"].items()) or "-"
        lines.append(f"{row['second']:>6} {row['requests']:>8} {row['failures']:>8} "
                     f"{row['success_rate'] * 100:>8.2f} {ms(lat['p50']):>8} {ms(lat['p90']):>8} "
                     f"{ms(lat['p99']):>8}  {kinds}")
    lat = res["latency_ms"]
    kinds = ", ".join(f"{k} {n}" for k, n in res["failures_by_kind"].items()) or "none"
    lines.append(f"Requests: {res['requests']} ({res['rps_achieved']:g}/s), failures: {res['failures']} "
                 f"({res['failure_rate'] * 100:.2f}%: {kinds}), success rate {res['success_rate'] * 100:.2f}%")
    lines.append(f"Latency ms: p50 {ms(lat['p50'])} p90 {ms(lat['p90'])} p99 {ms(lat['p99'])} max {ms(lat['max'])}")
    return "\n".join(lines) + "\n"


async def resolve_http_url(ctx: ToolContext, tool: str, url: str) -> tuple[str, int, str, str] | None:
    """An ``http://`` URL as the load tools take it: ``(ip, port, target, Host header)``, the host
    resolved as getaddrinfo would; None once the reason is written to stderr (exit status 2)."""
    try:
        host, port, target = split_http_url(url)
    except ValueError as exc:
        ctx.err.write(f"{tool}: {exc}\n")
        return None
    ip = await resolve_or_say(ctx, tool, host)
    return None if ip is None else (ip, port, target, host_header(host, port))


@register_tool("load")
async def load(ctx: ToolContext, args: list[str]) -> int:
    p = ToolParser(ctx, "load", description="open-loop HTTP load at a fixed request rate")
    p.add_argument("--rps", type=_positive(float), required=True, help="requests per second (scheduled)")
    p.add_argument("--duration", type=_duration, default=10.0, help="seconds (a trailing 's' is allowed)")
    p.add_argument("--timeout", type=_duration, default=2.0, help="seconds per request")
    p.add_argument("--connections", choices=("new", "keepalive"), default="new",
                   help="a new TCP connection per request (default) or re-used idle ones")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("url")
    ns = p.parse(args)
    resolved = await resolve_http_url(ctx, "load", ns.url)
    if resolved is None:
        return 2
    ip, port, target, host = resolved
    headers = {"Host": host, "User-Agent": "hcinet-load/1"}
    stats, elapsed = await run_load(ctx, ip, port, target, headers, ns.rps, ns.duration, ns.timeout,
                                    ns.connections == "keepalive")
    res = stats.report(ns.url, ns.rps, ns.duration, elapsed)
    res["connections"] = ns.connections
    ctx.out.write(json.dumps(res) + "\n" if ns.json else _table(res, ns.url))
    return 0


def _duration(text: str) -> float:
    return float(_positive(float)(text[:-1] if text.endswith("s") else text))


_duration.__name__ = "duration"

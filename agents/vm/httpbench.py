"""``httpbench`` inside a VM or pod: closed-loop HTTP/1.1 load on keep-alive connections.

hcinet's own tool, for benchmarks (the real-world equivalents are ``wrk -c N -d S`` and
``hey -c N -z S``): ``--connections`` workers, each one :class:`~.http.HttpClient` (one
keep-alive connection, reopened only if the server closes it; with ``--new-connection``
every request carries ``Connection: close`` and so opens its own connection), send ``GET`` requests back to
back for ``--duration`` seconds after an unmeasured ``--warmup``.  Each request's latency is
taken with ``time.perf_counter`` around the whole exchange (request written, response head
and body read), inside the VM or pod, so nothing of the management plane is in it.

    httpbench --duration 5 --connections 1 --json http://10.96.0.15/hostname

Output: a wrk-like summary, or with ``--json`` one object ``{requests, errors, seconds, rps,
p50_us, p90_us, p99_us, max_us, mean_us, connects, statuses, first_error}``.  Exit status 0
when every request got a 2xx answer, 1 when some failed, 2 on a bad command line or a host
that does not resolve.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from .http import HttpClient, HttpError
from .load import nearest_rank, resolve_http_url
from .tools import ToolContext, ToolParser, _positive, register_tool

__all__ = ["httpbench", "summarize"]


def summarize(latencies_s: list[float], seconds: float, errors: int) -> dict[str, Any]:
    """Counts, rate and nearest-rank percentiles (µs) of the measured requests."""
    ordered = sorted(latencies_s)
    us = [x * 1e6 for x in ordered]
    n = len(us)
    return {"requests": n, "errors": errors, "seconds": round(seconds, 6),
            "rps": round(n / seconds, 1) if seconds > 0 else 0.0,
            "p50_us": round(nearest_rank(us, 0.50), 1), "p90_us": round(nearest_rank(us, 0.90), 1),
            "p99_us": round(nearest_rank(us, 0.99), 1), "max_us": round(us[-1], 1) if us else float("nan"),
            "mean_us": round(sum(us) / n, 1) if n else float("nan")}


class _Worker:
    __slots__ = ("client", "latencies", "errors", "statuses", "first_error")

    def __init__(self, client: HttpClient) -> None:
        self.client = client
        self.latencies: list[float] = []
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.first_error = ""

    async def run(self, target: str, warm_until: float, stop_at: float) -> None:
        clock = time.perf_counter
        request = self.client.request
        record = self.latencies.append
        while True:
            t0 = clock()
            if t0 >= stop_at:
                return
            try:
                response = await request("GET", target)
            except (OSError, TimeoutError, HttpError) as exc:
                if t0 >= warm_until:
                    self.errors += 1
                    self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.01)  # a refused or reset connection: do not spin
                continue
            t1 = clock()
            if t0 < warm_until:
                continue
            self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            if 200 <= response.status < 300:
                record(t1 - t0)
            else:
                self.errors += 1


@register_tool("httpbench")
async def httpbench(ctx: ToolContext, args: list[str]) -> int:
    p = ToolParser(ctx, "httpbench", description="closed-loop HTTP/1.1 load on keep-alive connections")
    p.add_argument("--duration", type=_positive(float), default=5.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    p.add_argument("--connections", type=_positive(int), default=1, help="concurrent keep-alive connections")
    p.add_argument("--timeout", type=_positive(float), default=5.0, help="seconds per request")
    p.add_argument("--new-connection", action="store_true",
                   help="a new connection per request (sends Connection: close, as wrk -H 'Connection: close')")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("url")
    ns = p.parse(args)
    if ns.warmup < 0:
        ctx.err.write("httpbench: --warmup must be >= 0\n")
        return 2
    resolved = await resolve_http_url(ctx, "httpbench", ns.url)
    if resolved is None:
        return 2
    ip, port, target, host = resolved
    headers = {"Host": host}
    if ns.new_connection:
        headers["Connection"] = "close"
    workers = [_Worker(HttpClient(ctx.net, ip, port, timeout=ns.timeout, headers=headers))
               for _ in range(ns.connections)]
    start = time.perf_counter()
    warm_until = start + ns.warmup
    stop_at = warm_until + ns.duration
    try:
        await asyncio.gather(*(w.run(target, warm_until, stop_at) for w in workers))
    finally:
        for w in workers:
            w.client.close()
    seconds = max(time.perf_counter(), stop_at) - warm_until
    out = summarize([x for w in workers for x in w.latencies], seconds, sum(w.errors for w in workers))
    statuses: dict[int, int] = {}
    for w in workers:
        for code, n in w.statuses.items():
            statuses[code] = statuses.get(code, 0) + n
    out["connections"] = ns.connections
    out["connects"] = sum(w.client.connects for w in workers)
    out["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
    out["first_error"] = next((w.first_error for w in workers if w.first_error), "")
    if ns.json:
        ctx.out.write(json.dumps(out) + "\n")
    else:
        ctx.out.write(f"Running {ns.duration:g}s test @ {ns.url}\n  {ns.connections} connections\n"
                      f"  Latency p50 {out['p50_us']:.0f}us p99 {out['p99_us']:.0f}us max {out['max_us']:.0f}us\n"
                      f"  {out['requests']} requests in {seconds:.2f}s, {out['errors']} errors, "
                      f"{out['connects']} connects\nRequests/sec: {out['rps']:.2f}\n")
    return 0 if out["errors"] == 0 and out["requests"] > 0 else 1

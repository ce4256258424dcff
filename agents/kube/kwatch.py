"""``kwatch`` inside a VM: K watch streams on one Kubernetes path, with arrival times.

hcinet's own tool (the real-world equivalent is ``kubectl get RESOURCE --watch``, one stream):
it opens ``--streams`` independent watches through :class:`~agents.kube.client.KubeClient`
(each its own HTTP/1.1 connection, as K separate watchers would have) and records when each
event arrives on the machine's monotonic clock (``time.perf_counter`` is CLOCK_MONOTONIC on
Linux, so a benchmark in another process can compare it with the time it wrote the object).

    kwatch --server 172.16.0.150:6443 --streams 15 --count 200 --prefix w- \\
           --resource-version 1234 --timeout 30 --json /api/v1/namespaces/bench/configmaps

Output: one line per event ``TIME STREAM TYPE NAME RESOURCEVERSION`` (TIME in seconds on the
monotonic clock), or with ``--json`` one object ``{"streams", "connected": [t per stream],
"events": [[stream, type, name, rv, t], ...], "complete"}``.  ``--latency-of KEY``: the writer
put its own monotonic send time in ``data[KEY]`` of each object (a ConfigMap); the tool then
reports ``latency_ms`` = arrival − send per (event, stream) — a line's last field, or
``"latencies_ms": [...]`` instead of ``"events"`` in the JSON (which stays small enough for
one management reply with thousands of events).  Exit status 0 when every stream
saw ``--count`` events (or ran until ``--timeout`` without ``--count``), 1 when a stream fell
short or failed, 2 on a bad command line.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from agents.vm.tools import ToolContext, ToolParser, _positive, _resolve, register_tool

from .client import ApiError, KubeClient

DEFAULT_PORT = 6443


class _Stream:
    """One watcher: its events and when the watch connected."""

    __slots__ = ("index", "events", "matched", "connected", "error", "latencies")

    def __init__(self, index: int) -> None:
        self.index = index
        self.events: list[list[Any]] = []
        self.matched = 0
        self.connected: float | None = None
        self.error = ""
        self.latencies: list[float] = []


async def _watch(client: KubeClient, path: str, rv: str | None, s: _Stream, count: int | None,
                 prefix: str, stamp_key: str | None) -> None:
    def connected() -> None:
        if s.connected is None:
            s.connected = time.perf_counter()

    try:
        async for event in client.watch(path, rv, on_connect=connected):
            t = time.perf_counter()
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            name = str(meta.get("name", ""))
            row: list[Any] = [s.index, event.get("type"), name, meta.get("resourceVersion"), t]
            s.events.append(row)
            if name.startswith(prefix):
                if stamp_key is not None:
                    row.append(_latency_ms(obj, stamp_key, t))
                    s.latencies.append(row[-1])
                s.matched += 1
                if count is not None and s.matched >= count:
                    return
    except ApiError as exc:
        s.error = str(exc)


def _latency_ms(obj: dict[str, Any], key: str, arrived: float) -> float:
    try:
        return round((arrived - float((obj.get("data") or {})[key])) * 1000, 3)
    except (KeyError, TypeError, ValueError):
        return float("nan")  # no usable stamp: the event counts, its latency is NaN


def _server(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", str(DEFAULT_PORT))
    ip = _resolve(host)
    if ip is None or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return ip, int(port)


@register_tool("kwatch")
async def kwatch(ctx: ToolContext, args: list[str]) -> int:
    """Watch PATH on K streams; print every event with its arrival time."""
    p = ToolParser(ctx, "kwatch", description="watch a Kubernetes path on several streams, with arrival times")
    p.add_argument("--server", "-s", required=True, help="API server HOST[:PORT] (port 6443 by default)")
    p.add_argument("--streams", type=_positive(int), default=1, help="independent watch connections")
    p.add_argument("--count", type=_positive(int), help="stop a stream after this many matching events")
    p.add_argument("--prefix", default="", help="only names starting with this count towards --count")
    p.add_argument("--resource-version", default=None, help="watch from this resourceVersion")
    p.add_argument("--timeout", type=_positive(float), default=30.0, help="seconds for the whole run")
    p.add_argument("--latency-of", metavar="KEY", help="data[KEY] of each object is its send time "
                   "(time.perf_counter of the writer): report arrival - send in ms")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.add_argument("path", help="a Kubernetes REST collection path, e.g. /api/v1/namespaces/default/configmaps")
    ns = p.parse(args)
    server = _server(ns.server)
    if server is None:
        ctx.err.write(f"kwatch: --server: {ns.server!r} is not HOST[:PORT]\n")
        return 2
    if not ns.path.startswith("/"):
        ctx.err.write(f"kwatch: path: {ns.path!r} is not an API path (it starts with '/')\n")
        return 2
    streams = [_Stream(i) for i in range(ns.streams)]
    clients = [KubeClient(ctx.net, server[0], server[1], user_agent="kwatch/1.0") for _ in streams]
    tasks = [asyncio.ensure_future(_watch(c, ns.path, ns.resource_version, s, ns.count, ns.prefix, ns.latency_of))
             for c, s in zip(clients, streams, strict=True)]
    try:
        _, pending = await asyncio.wait(tasks, timeout=ns.timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for client in clients:
            try:
                await client.close()
            except OSError:
                pass
    return _report(ctx, ns, streams, server)


def _report(ctx: ToolContext, ns: Any, streams: list[_Stream], server: tuple[str, int]) -> int:
    events = sorted((e for s in streams for e in s.events), key=lambda e: e[4])
    short = [s for s in streams if s.error or (ns.count is not None and s.matched < ns.count)]
    if ns.json:
        doc: dict[str, Any] = {"streams": len(streams), "connected": [s.connected for s in streams],
                               "matched": [s.matched for s in streams], "complete": not short}
        if ns.latency_of is not None:
            doc["latencies_ms"] = [ms for s in streams for ms in s.latencies]
        else:
            doc["events"] = events
        ctx.out.write(json.dumps(doc) + "\n")
    else:
        for stream, etype, name, rv, t, *latency in events:
            tail = f" {latency[0]:.3f}ms" if latency else ""
            ctx.out.write(f"{t:.6f} {stream} {etype} {name} {rv}{tail}\n")
    for s in short:
        why = s.error or (f"{s.matched}/{ns.count} events within {ns.timeout:g} s" if s.connected is not None
                          else f"not connected to {server[0]}:{server[1]} within {ns.timeout:g} s")
        ctx.err.write(f"kwatch: stream {s.index}: {why}\n")
    return 1 if short else 0


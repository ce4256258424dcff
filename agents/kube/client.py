"""A Kubernetes API client over VM streams (real HTTP/1.1 via agents/vm/http.py), and an informer.

:class:`KubeClient` speaks the API server's REST paths with JSON bodies: ``get``, ``list``,
``create``, ``update``, ``update_status``, ``patch``, ``delete`` and ``watch``.  A refused call
raises :class:`ApiError` carrying the ``Status`` (code, reason, message); 410 Gone is the
subclass :class:`Gone`.

``watch(path, resource_version)`` yields events and survives the connection: when the stream
breaks (the API server restarted, the LB VM died, a partition healed) it reconnects and
resumes from the last resourceVersion it saw — the server sends exactly the missed events, so
there is no relist.  It asks for BOOKMARK events, which keep that resourceVersion fresh on
quiet watches and let a silent dead connection be detected (``idle_timeout``).  Only when the
server says the version is too old (410 Gone, "too old resource version") does it raise
:class:`Gone`: the caller relists, as client-go's reflector does.

:class:`Informer` is that reflector plus a cache: list, then watch from the list's
resourceVersion, apply events to a local store keyed ``namespace/name`` and call
``on_add/on_update/on_delete``; on Gone it relists and reconciles the cache with the new list.
Kubelets, kube-proxy and the later controllers use it.

This module imports neither sqlite nor the API server's code (node VMs stay small).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncGenerator, Callable
from typing import Any
from urllib.parse import quote, urlencode

from agents.vm.http import HttpClient, ProtocolError

__all__ = ["ApiError", "Gone", "Informer", "KubeClient", "api_path"]

log = logging.getLogger("hcinet.kube")

Obj = dict[str, Any]

# group/version of the kinds outside the core group (the server's table, for building paths)
_GROUPS = {
    "deployments": "apps/v1", "replicasets": "apps/v1", "leases": "coordination.k8s.io/v1",
    "endpointslices": "discovery.k8s.io/v1", "networkpolicies": "networking.k8s.io/v1",
    "ingresses": "networking.k8s.io/v1",
}

RETRY_MIN = 0.05
RETRY_MAX = 2.0
WATCH_IDLE_TIMEOUT = 5.0  # no byte (not even a 1 s BOOKMARK) for this long: the stream is dead


def api_path(resource: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
    """``api_path("pods", "default", "p")`` → ``/api/v1/namespaces/default/pods/p``."""
    gv = _GROUPS.get(resource)
    path = f"/apis/{gv}" if gv else "/api/v1"
    if namespace:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{resource}"
    if name:
        path += f"/{quote(name, safe='')}"
        if subresource:
            path += f"/{subresource}"
    return path


class ApiError(Exception):
    """The API server refused a request: ``status`` (HTTP code), ``reason``, ``message``."""

    def __init__(self, status: int, reason: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body

    @classmethod
    def from_status(cls, code: int, body: Any) -> ApiError:
        if isinstance(body, dict) and body.get("kind") == "Status":
            code = int(body.get("code") or code)
            reason, message = str(body.get("reason", "")), str(body.get("message", ""))
        else:
            reason, message = "", body if isinstance(body, str) else json.dumps(body)
        kind = Gone if code == 410 else ApiError
        return kind(code, reason, message, body)


class Gone(ApiError):
    """410: the resourceVersion is older than the server's history; relist."""


def _decode(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


class KubeClient:
    """Requests to one API server address (a VIP:6443 through the LB, or the node itself)."""

    def __init__(self, net: Any, host: str, port: int = 6443, *, timeout: float = 10.0,
                 user_agent: str = "hcinet-kube/1.0") -> None:
        self.net = net
        self.host = host
        self.port = port
        self.timeout = timeout
        self.http = HttpClient(net, host, port, timeout=timeout, headers={"User-Agent": user_agent,
                                                                         "Accept": "application/json"})
        self.requests = 0
        self.watch_reconnects = 0

    async def close(self) -> None:
        await self.http.aclose()

    # -- plain requests --

    async def request(self, method: str, path: str, *, body: Any = None, query: dict[str, Any] | None = None,
                      content_type: str = "application/json") -> Any:
        """One request; the decoded JSON answer, or ApiError.  Network errors propagate
        (ConnectionRefusedError, TimeoutError, ProtocolError...)."""
        target = path + ("?" + urlencode({k: v for k, v in query.items() if v is not None}) if query else "")
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": content_type} if body is not None else {}
        self.requests += 1
        resp = await self.http.request(method, target, headers=headers, body=data)
        decoded = _decode(resp.body)
        if resp.status >= 400:
            raise ApiError.from_status(resp.status, decoded)
        return decoded

    async def get(self, path: str) -> Obj:
        obj: Obj = await self.request("GET", path)
        return obj

    async def list(self, path: str, *, label_selector: str | None = None,
                   field_selector: str | None = None) -> Obj:
        obj: Obj = await self.request("GET", path, query={"labelSelector": label_selector,
                                                          "fieldSelector": field_selector})
        return obj

    async def create(self, path: str, obj: Obj) -> Obj:
        out: Obj = await self.request("POST", path, body=obj)
        return out

    async def update(self, path: str, obj: Obj) -> Obj:
        out: Obj = await self.request("PUT", path, body=obj)
        return out

    async def update_status(self, path: str, obj: Obj) -> Obj:
        return await self.update(path.rstrip("/") + "/status", obj)

    async def patch(self, path: str, patch: Any, *, patch_type: str = "merge") -> Obj:
        ctype = {"merge": "application/merge-patch+json", "strategic": "application/strategic-merge-patch+json",
                 "json": "application/json-patch+json"}[patch_type]
        out: Obj = await self.request("PATCH", path, body=patch, content_type=ctype)
        return out

    async def delete(self, path: str, *, preconditions: dict[str, str] | None = None) -> Any:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": preconditions} if preconditions else None
        return await self.request("DELETE", path, body=body)

    # -- watch --

    async def watch(self, path: str, resource_version: str | int | None = None, *,
                    label_selector: str | None = None, field_selector: str | None = None,
                    bookmarks: bool = False, idle_timeout: float = WATCH_IDLE_TIMEOUT,
                    on_connect: Callable[[], None] | None = None) -> AsyncGenerator[Obj, None]:
        """Events ``{"type", "object"}`` from ``resource_version`` on, forever, across
        reconnects (resuming from the last seen resourceVersion).  BOOKMARKs are consumed
        unless ``bookmarks``.  Raises :class:`Gone` (relist) or :class:`ApiError`."""
        rv = None if resource_version in (None, "", "0", 0) else str(resource_version)
        delay = RETRY_MIN
        first = True
        while True:
            if not first:
                self.watch_reconnects += 1
            first = False
            query = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": rv,
                     "labelSelector": label_selector, "fieldSelector": field_selector}
            target = path + "?" + urlencode({k: v for k, v in query.items() if v is not None})
            try:
                async with self.http.stream("GET", target) as resp:
                    if resp.status != 200:
                        raise ApiError.from_status(resp.status, _decode(await resp.aread()))
                    if on_connect is not None:
                        on_connect()
                    async for line in resp.iter_lines(timeout=idle_timeout):
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        etype = event.get("type")
                        obj = event.get("object") or {}
                        if etype == "ERROR":
                            raise ApiError.from_status(int(obj.get("code") or 500), obj)
                        new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if new_rv:
                            rv = str(new_rv)
                        delay = RETRY_MIN
                        if etype == "BOOKMARK" and not bookmarks:
                            continue
                        yield event
            except ApiError:
                raise
            except (OSError, ProtocolError, TimeoutError, ValueError) as exc:
                log.debug("watch %s broke (%s: %s); resuming from %s", path, type(exc).__name__, exc, rv)
            # the stream ended (server timeout, restart, partition): back off, then resume
            await asyncio.sleep(delay * (0.5 + random.random()))  # retry backoff, not synchronisation
            delay = min(delay * 2, RETRY_MAX)


def _key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


Callback = Callable[..., Any]


class Informer:
    """List + watch + resume with a local cache (client-go's reflector and indexer, small)."""

    def __init__(self, client: KubeClient, path: str, *, label_selector: str | None = None,
                 field_selector: str | None = None, on_add: Callback | None = None,
                 on_update: Callback | None = None, on_delete: Callback | None = None,
                 idle_timeout: float = WATCH_IDLE_TIMEOUT) -> None:
        self.client = client
        self.path = path
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.on_add = on_add
        self.on_update = on_update
        self.on_delete = on_delete
        self.idle_timeout = idle_timeout
        self.cache: dict[str, Obj] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.lists = 0
        self.events = 0
        self._task: asyncio.Task[None] | None = None

    def get(self, name: str, namespace: str | None = None) -> Obj | None:
        return self.cache.get(f"{namespace}/{name}" if namespace else name)

    def items(self) -> list[Obj]:
        return list(self.cache.values())

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"informer {self.path}")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.synced.wait(), timeout)

    async def run(self) -> None:
        delay = RETRY_MIN
        while True:
            try:
                await self._relist()
                delay = RETRY_MIN
                async for event in self.client.watch(self.path, self.resource_version,
                                                     label_selector=self.label_selector,
                                                     field_selector=self.field_selector,
                                                     bookmarks=True, idle_timeout=self.idle_timeout):
                    self._apply(event)
            except Gone:
                log.info("informer %s: resourceVersion %s too old; relisting", self.path, self.resource_version)
            except (OSError, ProtocolError, TimeoutError, ApiError, ValueError) as exc:
                log.debug("informer %s: %s; retrying", self.path, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))  # retry backoff
                delay = min(delay * 2, RETRY_MAX)

    async def _relist(self) -> None:
        listed = await self.client.list(self.path, label_selector=self.label_selector,
                                        field_selector=self.field_selector)
        self.lists += 1
        fresh = {_key(obj): obj for obj in listed.get("items") or []}
        old = self.cache
        self.cache = fresh
        self.resource_version = (listed.get("metadata") or {}).get("resourceVersion")
        for key, obj in old.items():
            if key not in fresh:
                self._call(self.on_delete, obj)
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None:
                self._call(self.on_add, obj)
            elif (prev.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get(
                    "resourceVersion"):
                self._call(self.on_update, prev, obj)
        self.synced.set()

    def _apply(self, event: Obj) -> None:
        etype, obj = event.get("type"), event.get("object") or {}
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if etype == "BOOKMARK":
            return
        self.events += 1
        key = _key(obj)
        if etype == "DELETED":
            prev = self.cache.pop(key, None)
            self._call(self.on_delete, prev or obj)
        elif etype in ("ADDED", "MODIFIED"):
            prev = self.cache.get(key)
            self.cache[key] = obj
            if prev is None:
                self._call(self.on_add, obj)
            else:
                self._call(self.on_update, prev, obj)

    def _call(self, fn: Callback | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # a handler's bug must not stop the informer
            log.exception("informer %s: handler failed", self.path)

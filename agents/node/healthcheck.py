"""kube-proxy's service health check server: one HTTP listener per ``healthCheckNodePort``.

A Service of type LoadBalancer with ``externalTrafficPolicy: Local`` gets a
``healthCheckNodePort`` (allocated from the NodePort range by the API server).  kube-proxy on
every node listens on it (all the node's addresses, as with the default
``nodePortAddresses``) and answers whether this node has a local endpoint of the Service, so
that a load balancer sends the Service's traffic only to nodes that can serve it without a
second hop (and so keep the client's address).  Upstream: pkg/proxy/healthcheck/
service_health.go (Kubernetes 1.26), whose handler answers any method and path with

* ``200`` when the Service has local endpoints, ``503`` when it has none;
* headers ``Content-Type: application/json`` and ``X-Content-Type-Options: nosniff``;
* a body produced by Go's ``dedent`` of a template: indented with one tab per level (shown
  here as spaces), without a final newline::

      {
          "service": {
              "namespace": "prod",
              "name": "web"
          },
          "localEndpoints": 2
      }

The decision (which ports, how many local endpoints) is :class:`agents.kubeproxy.Proxier`'s
(``health_check_ports()``, ``health_check(port)``); this module only keeps the listeners in
step with it: :meth:`ServiceHealthServers.sync` after every Service or EndpointSlice change
opens the ports that appeared and closes the ones that went away (coalesced: one
reconciliation runs at a time and repeats while changes keep coming).  A port that cannot be
bound (already in use on the node) is logged and counted, and tried again at the next change,
as kube-proxy's ``SyncServices`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from agents.vm.http import HttpServer, Request, Response, serve_http

__all__ = ["ServiceHealthServers", "health_body", "health_response"]

log = logging.getLogger("hcinet.node.healthcheck")

HEADERS = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}


def health_body(namespace: str, name: str, local_endpoints: int) -> bytes:
    """The body kube-proxy 1.26 writes (Go's ``%q`` of a DNS name is its JSON string)."""
    return (f'{{\n\t"service": {{\n\t\t"namespace": {json.dumps(namespace)},\n\t\t"name": {json.dumps(name)}\n'
            f'\t}},\n\t"localEndpoints": {local_endpoints}\n}}').encode()


def health_response(proxier: Any, port: int) -> Response:
    """The answer on ``port`` now: 200 with local endpoints, else 503.  A port no Service has
    any more (closed while a request was in flight) gets what Go's net/http sends for a
    handler that wrote nothing: 200 with an empty body."""
    answer = proxier.health_check(port)
    if answer is None:
        return Response(status=200)
    status, doc = answer
    svc = doc.get("service") or {}
    body = health_body(str(svc.get("namespace", "")), str(svc.get("name", "")), int(doc.get("localEndpoints", 0)))
    return Response(status=status, headers=dict(HEADERS), body=body)


class ServiceHealthServers:
    """The listeners of one node, kept in step with the proxier's health check ports."""

    def __init__(self, net: Any, proxier: Any, *, host: str = "0.0.0.0") -> None:
        self.net = net
        self.proxier = proxier
        self.host = host
        self.servers: dict[int, HttpServer] = {}
        self.failed: dict[int, str] = {}  # port -> why it could not be bound (until it can)
        self.counts = {"opened": 0, "closed": 0, "bind_failures": 0}
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def sync(self) -> None:
        """Services changed: reconcile the listeners soon (coalesced)."""
        if self._closing:
            return
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._reconcile())

    async def settled(self) -> None:
        """Until the listeners match the proxier (for tests and orderly shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _reconcile(self) -> None:
        while self._dirty and not self._closing:
            self._dirty = False
            want = set(self.proxier.health_check_ports())
            for port in sorted(set(self.servers) - want):
                self._close(port)
            for port in sorted(want - set(self.servers)):
                await self._open(port)
            for port in set(self.failed) - want:
                del self.failed[port]

    async def _open(self, port: int) -> None:
        async def handler(request: Request) -> Response:
            return health_response(self.proxier, port)

        try:
            self.servers[port] = await serve_http(self.net, self.host, port, handler, name=f"healthcheck:{port}")
        except OSError as exc:
            self.counts["bind_failures"] += 1
            if self.failed.get(port) != str(exc):
                log.warning("kube-proxy: health check server on port %d failed to start: %s", port, exc)
            self.failed[port] = str(exc)
            return
        self.failed.pop(port, None)
        self.counts["opened"] += 1
        log.info("kube-proxy: health check server for %s on port %d", self._service_of(port), port)

    def _close(self, port: int) -> None:
        server = self.servers.pop(port)
        server.close()
        self.counts["closed"] += 1
        log.info("kube-proxy: health check server on port %d closed", port)

    def _service_of(self, port: int) -> str:
        answer = self.proxier.health_check(port)
        svc = (answer[1].get("service") or {}) if answer else {}
        return f"{svc.get('namespace')}/{svc.get('name')}"

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for port in list(self.servers):
            self._close(port)

    def stats(self) -> dict[str, Any]:
        return {"ports": sorted(self.servers), "failed": {str(p): why for p, why in sorted(self.failed.items())},
                **self.counts, "requests": sum(s.requests for s in self.servers.values())}

"""The API server VM kind (``kind: apiserver``): the control-plane VM of one workload cluster.

A thin asyncio shell around the sans-IO parts: it opens the :class:`~.store.Store` at
``<state_dir>/apiserver.sqlite``, serves the :class:`~.rest.Router` over real HTTP/1.1 on
``0.0.0.0:6443`` of the emulated network (agents/vm/http.py; watches are chunked streams, one
JSON event per line) and over the management verb ``api {method, path, query, body}`` →
``{status, body}`` (the CLI's path: the same router), and runs the controllers.

Group commit: a request's writes go into the store's open transaction; the commit runs once
per loop iteration (``call_soon``) for every request that wrote in it, and each of them is
answered only after that commit — so concurrent clients share fsync-free WAL commits and no
client is ever told about a write that a crash could take back.

Config keys (docs/contracts-control-plane.md): ``cluster``, ``vip``, ``state_dir``,
``time_scale``, ``kube_vip`` (true: this VM claims the VIP on its first NIC and re-announces it
every ``Timers.keepalived_advert_int``, the kube-vip role of ``loadBalancerSku: none``),
``service_cidrs`` (one Service CIDR per IP family; a dual-stack cluster's MOC config gives
``[10.96.0.0/12, fd00:10:96::/112]``, default the IPv4 one alone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from agents import mgmt
from agents.mgmt import MgmtError
from agents.timers import Timers
from agents.vm.runtime import VM, ConfigError, VMConfig, register_kind

from .addons import ensure_addons
from .calico import cluster_cidrs, ensure_ippools
from .controllers import Informers, NodeIpam, NodeLifecycle, ensure_kubernetes_service, install_admission
from .endpointslices import EndpointSliceController
from .rest import Result, Router, Watch
from .scheduler import Scheduler
from .services import SERVICE_CIDR, ServiceAllocator
from .store import Event, Store
from .workloads import DeploymentController, ReplicaSetController

log = logging.getLogger("hcinet.apiserver")

API_PORT = 6443
BOOKMARK_INTERVAL = 1.0  # seconds between BOOKMARK events on watches that allow them


class GroupCommit:
    """Collects the writes of one loop iteration into one transaction; wakes the writers after."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self._held = False
        self._waiters: list[asyncio.Future[None]] = []
        self.commits = 0
        self.max_batch = 0

    def enter(self) -> None:
        """Before running a request: defer its commit to the end of this iteration."""
        if not self._held:
            self._held = True
            self.store.hold()
            self.loop.call_soon(self._flush)

    async def durable(self) -> None:
        """Return once everything written so far is committed."""
        if not self._held:
            return
        fut = self.loop.create_future()
        self._waiters.append(fut)
        await fut

    def _flush(self) -> None:
        self._held = False
        waiters, self._waiters = self._waiters, []
        try:
            self.store.flush()
        except Exception as exc:
            log.exception("group commit failed")
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.commits += 1
        self.max_batch = max(self.max_batch, len(waiters))
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class ApiService:
    """The serving half, without the VM: requests (HTTP or ``api``) → router → group commit →
    answer; watches → chunked streams.  Tests run it over an in-process network."""

    def __init__(self, store: Store, router: Router, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.router = router
        self.commit = GroupCommit(store, loop)
        self.watches: set[Watch] = set()
        self.http: Any = None
        self.closed = False

    async def serve(self, net: Any, host: str = "0.0.0.0", port: int = API_PORT) -> None:
        from agents.vm.http import serve_http

        self.http = await serve_http(net, host, port, self.handle_http, name="apiserver")

    async def close(self) -> None:
        self.closed = True
        for w in list(self.watches):
            w.close()
            if w.notify is not None:
                w.notify()
        if self.http is not None:
            self.http.close()
            try:
                await asyncio.wait_for(self.http.wait_closed(), 2.0)
            except (TimeoutError, Exception):
                pass

    def _run(self, method: str, path: str, query: Any, body: Any, ctype: str | None) -> Result:
        self.commit.enter()
        return self.router.handle(method, path, query, body, ctype)

    async def handle_http(self, req: Any) -> Any:
        from agents.vm.http import Response, json_response

        if self.closed:
            return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "code": 503, "reason": "ServiceUnavailable",
                                  "message": "the API server is shutting down"}, 503)
        result = self._run(req.method, req.path, req.query, req.body or None, req.headers.get("content-type"))
        await self.commit.durable()
        if result.watch is not None:
            return Response(status=200, headers={"Content-Type": "application/json",
                                                 "Cache-Control": "no-cache, private"},
                            stream=self._stream(result.watch, req.query))
        if isinstance(result.body, str):
            return Response(status=result.status, headers={"Content-Type": "text/plain; charset=utf-8"},
                            body=result.body.encode())
        return json_response(result.body, result.status)

    async def _stream(self, w: Watch, query: Any) -> AsyncIterator[bytes]:
        """A watch as chunks: each commit's events in one chunk; BOOKMARKs when allowed."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        w.notify = wake.set
        self.watches.add(w)
        q = query if isinstance(query, dict) else {}
        timeout = _float(q.get("timeoutSeconds"))
        deadline = None if timeout is None else loop.time() + timeout
        bookmarks = str(q.get("allowWatchBookmarks", "")).lower() in ("1", "true")
        try:
            while True:
                lines = w.take()
                if lines:
                    yield b"".join(lines)
                if w.finished:
                    return
                wake.clear()
                if w.queued:
                    continue
                wait = BOOKMARK_INTERVAL if bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        return
                    wait = left if wait is None else min(wait, left)
                try:
                    await asyncio.wait_for(wake.wait(), wait)
                except TimeoutError:
                    if bookmarks and not w.queued and not w.finished:
                        yield _bookmark(w, self.store.committed_rv)
        finally:
            w.close()
            self.watches.discard(w)

    async def handle_api(self, args: dict[str, Any]) -> dict[str, Any]:
        """``api {method, path, query?, body?, content_type?}`` → ``{status, body}``; a watch
        returns the events available now (``{"events": [...]}``) and ends."""
        method = mgmt.require(args, "method")
        path = mgmt.require(args, "path")
        query = args.get("query")
        if query is not None and not isinstance(query, str | dict):
            raise MgmtError("query: expected a query string or a map")
        ctype = args.get("content_type")
        if ctype is not None and not isinstance(ctype, str):
            raise MgmtError("content_type: expected a string")
        if "?" in path and query is None:
            path, query = path.split("?", 1)
        if self.closed:
            raise MgmtError("api: the API server is shutting down")
        result = self._run(method, path, query, args.get("body"), ctype)
        await self.commit.durable()
        if result.watch is not None:
            lines = result.watch.take()
            result.watch.close()
            return {"status": 200, "body": {"events": [json.loads(line) for line in lines]}}
        return {"status": result.status, "body": result.body}

    def stats(self) -> dict[str, Any]:
        return {"store": self.store.snapshot(), "requests": self.router.requests, "errors": self.router.errors,
                "group_commits": self.commit.commits, "max_group": self.commit.max_batch,
                "watches": len(self.watches), "http": self.http.stats() if self.http else None}


@register_kind("apiserver")
class ApiServerVM(VM):
    """See the module docstring."""

    def __init__(self, config: VMConfig) -> None:
        super().__init__(config)
        raw = config.raw
        self.cluster = str(raw.get("cluster", ""))
        self.vip = raw.get("vip") or None
        if self.vip is not None and not isinstance(self.vip, str):
            raise ConfigError("vip: expected an address string")
        scale = raw.get("time_scale", 1.0)
        if not isinstance(scale, int | float) or isinstance(scale, bool) or scale <= 0:
            raise ConfigError(f"time_scale: expected a number > 0, got {scale!r}")
        self.timers = Timers(float(scale))
        self.kube_vip = bool(raw.get("kube_vip", False))
        if self.kube_vip and not self.vip:
            raise ConfigError("vip: required when kube_vip is true")
        state_dir = raw.get("state_dir") or os.path.join(config.run_dir, "state", config.name)
        if not isinstance(state_dir, str):
            raise ConfigError("state_dir: expected a path string")
        self.state_dir = state_dir
        if not config.nics:
            raise ConfigError("nics: the API server needs a NIC")
        # Its address: static (known now) or leased over DHCP before start_services runs.
        self.node_ip = config.nics[0].ips[0] if config.nics[0].ips else ""
        self.store: Store | None = None
        self.service: ApiService | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ipam_pending = False
        self.ipam: NodeIpam | None = None
        self.lifecycle: NodeLifecycle | None = None
        self.allocator: ServiceAllocator | None = None
        self.informers: Informers | None = None
        self.controllers: list[Any] = []  # deployment, replicaset, scheduler, endpointslice (run in that order)
        self._pass_pending = False
        self.controller_passes = 0
        self.moc = raw.get("moc") or None  # "IP:55000": the cloud agent, for LoadBalancer Services
        if self.moc is not None and (not isinstance(self.moc, str) or not self.moc.rpartition(":")[2].isdigit()):
            raise ConfigError(f"moc: expected 'IP:port' of the MOC cloud agent, got {self.moc!r}")
        self.cloud: Any = None  # the cloud provider's service controller (with ``moc``)
        # ``service_cidrs``: --service-cluster-ip-range, one CIDR per family (dual stack: the
        # IPv4 one, then fd00:10:96::/112); default the IPv4 10.96.0.0/12 alone.
        cidrs = raw.get("service_cidrs") or [SERVICE_CIDR]
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise ConfigError(f"service_cidrs: expected a list of CIDRs, got {cidrs!r}")
        try:
            ServiceAllocator(cidrs)
        except ValueError as exc:
            raise ConfigError(f"service_cidrs: {exc}") from None
        self.service_cidrs = list(cidrs)

    # -- life cycle --

    async def start_services(self) -> None:
        await super().start_services()
        self.node_ip = self._first_address()
        loop = asyncio.get_running_loop()
        os.makedirs(self.state_dir, exist_ok=True)
        store = self.store = Store(os.path.join(self.state_dir, "apiserver.sqlite"))
        router = Router(store)
        router.bootstrap()
        self.allocator = ServiceAllocator(self.service_cidrs)
        self.allocator.install(store)  # ClusterIP / NodePort allocation on Service writes
        install_admission(store)  # DefaultTolerationSeconds on Pod creates
        ensure_kubernetes_service(store, self.node_ip, API_PORT)
        ensure_addons(router)  # CoreDNS: ConfigMap, Deployment, kube-dns Service (create if absent)
        ensure_ippools(router, cluster_cidrs(self.config.raw))  # Calico's default IPPool(s)
        self.ipam = NodeIpam(store)
        informers = self.informers = Informers(store)
        self.lifecycle = NodeLifecycle(store, self.timers, informers=informers)
        self.controllers = [DeploymentController(store, informers), ReplicaSetController(store, informers),
                            Scheduler(store, informers), EndpointSliceController(store, informers)]
        for plural in ("pods", "nodes", "services", "replicasets", "deployments", "endpointslices"):
            informers(plural).handlers.append(self._poke)
        store.watch("nodes", None, store.rv, self._on_node_event)
        self.ipam.sync()
        self._controllers_pass()
        self.service = ApiService(store, router, loop)
        await self.service.serve(self)
        if self.kube_vip and self.vip:
            self.announce(0, [self.vip], self.timers.keepalived_advert_int)
        if self.moc:
            from .cloudprovider import ServiceLbController, http_moc_call

            self.cloud = ServiceLbController(store, self.cluster, http_moc_call(self, self.moc),
                                             scale=self.timers.time_scale)
            self.cloud.start()
            self._tasks.append(loop.create_task(self.cloud.run(), name="service-lb-controller"))
        self._tasks.append(loop.create_task(self._lifecycle_loop(), name="node-lifecycle"))
        log.info("API server for cluster %s: %s:%d, store rv %d (%s)", self.cluster or "?", self.node_ip,
                 API_PORT, store.rv, store.path)

    def _first_address(self) -> str:
        """The first NIC's address: its static one, or the one its DHCP client leased (the
        runtime leases before ``start_services``); the ``kubernetes`` Service points at it."""
        held = self._claimed.get(0) or list(self.config.nics[0].ips)
        if not held:
            raise ConfigError(f"nics[0]: {self.config.nics[0].name} has no address (static or leased): "
                              "the API server needs one")
        return held[0]

    async def stop_services(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self.service is not None:
            await self.service.close()
        if self.informers is not None:
            self.informers.close()
            self.informers = None
        self.controllers = []
        if self.cloud is not None:
            self.cloud.close()
            self.cloud = None
        if self.store is not None:
            self.store.close()
            self.store = None
        await super().stop_services()

    # -- controllers --

    def _on_node_event(self, ev: Event) -> None:
        if ev.type == "ADDED" and not self._ipam_pending:
            self._ipam_pending = True
            asyncio.get_running_loop().call_soon(self._ipam_sync)

    def _ipam_sync(self) -> None:
        self._ipam_pending = False
        if self.ipam is not None and self.store is not None:
            try:
                self.ipam.sync()
            except Exception:
                log.exception("node IPAM pass failed")

    async def _lifecycle_loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timers.node_monitor_period
        while True:
            await asyncio.sleep(max(deadline - loop.time(), 0.0))  # the monitor period, or an eviction due
            if self.lifecycle is None or self.store is None:
                return
            try:
                self.lifecycle.tick(loop.time())
            except Exception:
                log.exception("node lifecycle pass failed")
            self._controllers_pass()  # also the periodic look (minReadySeconds, retries)
            deadline = self.lifecycle.next_deadline(loop.time())

    def _poke(self, *_: Any) -> None:
        """An informer changed: run the controllers once this loop iteration is done."""
        if not self._pass_pending:
            self._pass_pending = True
            asyncio.get_running_loop().call_soon(self._controllers_pass)

    def _controllers_pass(self) -> None:
        """Deployments → ReplicaSets → scheduler → EndpointSlices until none has work left
        (bounded: one change cascades through them within one pass)."""
        self._pass_pending = False
        if self.store is None:
            return
        self.controller_passes += 1
        for _ in range(8):
            busy = False
            for ctrl in self.controllers:
                if ctrl.pending():
                    busy = True
                    try:
                        ctrl.sync()
                    except Exception:
                        log.exception("%s pass failed", type(ctrl).__name__)
            if not busy:
                return

    # -- management --

    def mgmt_handlers(self) -> dict[str, mgmt.Handler]:
        handlers = super().mgmt_handlers()
        handlers["api"] = self._m_api
        return handlers

    async def _m_api(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.service is None:
            raise MgmtError("api: the API server is not running")
        return await self.service.handle_api(args)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["apiserver"] = {
            "cluster": self.cluster, "vip": self.vip, "kube_vip": self.kube_vip,
            **({"cloudprovider": self.cloud.stats()} if self.cloud is not None else {}),
            **(self.service.stats() if self.service else {}),
            "nodes_marked_unknown": self.lifecycle.marked_unknown if self.lifecycle else 0,
            "pod_cidr_exhausted": self.ipam.exhausted if self.ipam else 0,
            "pods_evicted": self.lifecycle.evicted if self.lifecycle else 0,
            "pods_marked_not_ready": self.lifecycle.marked_not_ready if self.lifecycle else 0,
            "service_allocation": self.allocator.stats() if self.allocator else None,
            "controller_passes": self.controller_passes,
            "controllers": {type(c).__name__: _ctrl_stats(c) for c in self.controllers},
        }
        return out


def _ctrl_stats(ctrl: Any) -> dict[str, int]:
    return {k: v for k in ("bound", "failed", "created", "deleted", "writes")
            if isinstance(v := getattr(ctrl, k, None), int)}


def _float(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _bookmark(w: Watch, rv: int) -> bytes:
    obj = {"kind": w.kind, "apiVersion": w.api_version, "metadata": {"resourceVersion": str(rv)}}
    return json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")).encode() + b"\n"

"""The cloud provider's service controller: LoadBalancer Services get their VIP from MOC.

As the cloud-controller-manager's service controller does on AKS-HCI, it watches Services of
``type: LoadBalancer`` (and their deletion) and asks the MOC cloud agent -- over the
*emulated* network, HTTP to ``<cloudAgentIp>:55000`` (the API server VM's ``moc`` config key)
-- to ``POST /v1/loadbalancers/ensure`` the Service's load balancer, and ``DELETE
/v1/loadbalancers/<cluster>/<namespace>/<name>`` when it is deleted or stops being a
LoadBalancer.  On success it sets ``status.loadBalancer.ingress: [{ip: VIP}]`` (the status
subresource) and records ``EnsuredLoadBalancer``; a refusal (pool exhausted, naming the pool;
``loadBalancerIP`` outside the pool or taken) records a Warning ``SyncLoadBalancerFailed``
Event with MOC's reason and leaves the Service pending; every failure is retried with
exponential backoff (upstream: 5 s doubling to 300 s, scaled by ``time_scale``).

Annotations (docs/contracts-control-plane.md): ``service.beta.kubernetes.io/
azure-load-balancer-internal: "true"`` (an internal VIP, not routed from the external
network), ``hcinet.io/balance: roundrobin|leastconn|source`` (HAProxy's ``balance``, default
roundrobin), ``hcinet.io/proxy-protocol: v2`` (the LB VM sends the PROXY protocol v2 header).

:func:`ensure_request` is the sans-IO mapping Service -> request; :class:`ServiceLbController`
sequences it with the store and a :data:`MocCall`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .controllers import EventRecorder
from .errors import StatusError
from .store import Event, Obj, Store

log = logging.getLogger("hcinet.apiserver.cloudprovider")

INTERNAL_ANNOTATION = "service.beta.kubernetes.io/azure-load-balancer-internal"
BALANCE_ANNOTATION = "hcinet.io/balance"
PROXY_PROTOCOL_ANNOTATION = "hcinet.io/proxy-protocol"
MIN_RETRY, MAX_RETRY = 5.0, 300.0  # the service controller's backoff (seconds, unscaled)


class LbRefused(Exception):
    """MOC answered with a refusal (4xx): its one-line reason."""


# (method, path, body or None) -> the JSON answer; raises LbRefused, or anything else when unreachable.
MocCall = Callable[[str, str, dict[str, Any] | None], Awaitable[Any]]


def is_lb(svc: Obj | None) -> bool:
    return svc is not None and (svc.get("spec") or {}).get("type") == "LoadBalancer"


def ensure_request(cluster: str, svc: Obj) -> dict[str, Any]:
    """The ensure document for a LoadBalancer Service (sans-IO)."""
    meta, spec = svc["metadata"], svc.get("spec") or {}
    ann = meta.get("annotations") or {}
    ports = [{"port": p.get("port"), "protocol": p.get("protocol", "TCP"), "nodePort": p.get("nodePort")}
             for p in spec.get("ports") or []]
    doc: dict[str, Any] = {
        "cluster": cluster, "namespace": meta.get("namespace") or "default", "name": meta["name"],
        "ports": ports, "internal": str(ann.get(INTERNAL_ANNOTATION, "")).lower() == "true",
        "externalTrafficPolicy": spec.get("externalTrafficPolicy") or "Cluster",
        "balance": ann.get(BALANCE_ANNOTATION) or "roundrobin"}
    if spec.get("loadBalancerIP"):
        doc["loadBalancerIP"] = spec["loadBalancerIP"]
    if spec.get("healthCheckNodePort"):
        doc["healthCheckNodePort"] = spec["healthCheckNodePort"]
    if ann.get(PROXY_PROTOCOL_ANNOTATION):
        doc["proxyProtocol"] = ann[PROXY_PROTOCOL_ANNOTATION]
    return doc


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace") or "default", meta["name"]


class ServiceLbController:
    """See the module docstring.  ``run()`` is its worker; Service events mark keys dirty."""

    def __init__(self, store: Store, cluster: str, call: MocCall, *, scale: float = 1.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.cluster = cluster
        self.call = call
        self.scale = scale
        self.recorder = EventRecorder(store, "service-controller")
        self.synced: dict[tuple[str, str], tuple[str, str]] = {}  # key -> (request JSON, VIP)
        self.dirty: set[tuple[str, str]] = set()
        self.retry_at: dict[tuple[str, str], float] = {}
        self.backoff: dict[tuple[str, str], float] = {}
        self.deleted: dict[tuple[str, str], Obj] = {}  # deleted LB Services whose LB is to go
        self.ensured = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._clock = clock
        self._sub: Any = None

    def start(self) -> None:
        items, _ = self.store.list("services")
        for svc in items:
            if is_lb(svc) or ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
                self.dirty.add(_key(svc))
        _, self._sub = self.store.watch("services", None, self.store.rv, self._on_event)
        self._wake.set()

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def _on_event(self, ev: Event) -> None:
        obj = ev.object()
        key = _key(obj)
        if ev.type == "DELETED":
            if is_lb(obj) or key in self.synced:
                self.deleted[key] = obj
            else:
                return
        elif not is_lb(obj) and key not in self.synced:
            return
        self.dirty.add(key)
        self.retry_at.pop(key, None)
        self._wake.set()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def run(self) -> None:
        while True:
            now = self._now()
            due = [k for k, t in self.retry_at.items() if t <= now]
            for k in due:
                del self.retry_at[k]
                self.dirty.add(k)
            keys, self.dirty = sorted(self.dirty), set()
            if keys:
                await asyncio.gather(*(self.sync(k) for k in keys))
                continue
            self._wake.clear()
            timeout = max(0.0, min(self.retry_at.values()) - now) if self.retry_at else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def sync(self, key: tuple[str, str]) -> None:
        """One reconciliation of one Service; failures are retried with backoff."""
        ns, name = key
        svc: Obj | None
        try:
            svc = self.store.get("services", ns, name)
        except StatusError:
            svc = None
        try:
            if is_lb(svc):
                assert svc is not None
                await self._ensure(key, svc)
            else:
                await self._delete(key, svc)
        except LbRefused as exc:
            self.failures += 1
            target = svc if svc is not None else self.deleted.get(key)
            if target is not None:
                verb = "ensure" if is_lb(svc) else "delete"
                self.recorder.event(target, "Warning", "SyncLoadBalancerFailed",
                                    f"Error syncing load balancer: failed to {verb} load balancer: {exc}")
            self._retry(key)
        except Exception as exc:  # MOC unreachable, timed out: try again later
            self.failures += 1
            log.info("load balancer %s/%s: %s", ns, name, exc or type(exc).__name__)
            self._retry(key)
        else:
            self.backoff.pop(key, None)

    def _retry(self, key: tuple[str, str]) -> None:
        delay = self.backoff.get(key, MIN_RETRY * self.scale)
        self.backoff[key] = min(delay * 2, MAX_RETRY * self.scale)
        self.retry_at[key] = self._now() + delay
        self._wake.set()

    async def _ensure(self, key: tuple[str, str], svc: Obj) -> None:
        request = ensure_request(self.cluster, svc)
        doc = json.dumps(request, sort_keys=True)
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        prev = self.synced.get(key)
        if prev is not None and prev[0] == doc and ingress == [{"ip": prev[1]}]:
            return
        if any(p.get("nodePort") in (None, 0) for p in request["ports"]):
            raise LbRefused("ports: a port has no nodePort (allocateLoadBalancerNodePorts false is not "
                            "supported by the HAProxy load balancer)")
        if prev is None:
            self.recorder.event(svc, "Normal", "EnsuringLoadBalancer", "Ensuring load balancer")
        answer = await self.call("POST", "/v1/loadbalancers/ensure", request)
        vip = str(answer["vip"])
        self.synced[key] = (doc, vip)
        if ingress != [{"ip": vip}]:
            self.store.patch("services", key[0], key[1], {"status": {"loadBalancer": {"ingress": [{"ip": vip}]}}},
                             subresource="status")
        self.ensured += 1
        self.recorder.event(svc, "Normal", "EnsuredLoadBalancer", "Ensured load balancer")

    async def _delete(self, key: tuple[str, str], svc: Obj | None) -> None:
        target = svc if svc is not None else self.deleted.get(key)
        if target is not None:
            self.recorder.event(target, "Normal", "DeletingLoadBalancer", "Deleting load balancer")
        await self.call("DELETE", f"/v1/loadbalancers/{self.cluster}/{key[0]}/{key[1]}", None)
        self.synced.pop(key, None)
        self.deleted.pop(key, None)
        if svc is not None and ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
            self.store.patch("services", key[0], key[1], {"status": {"loadBalancer": {"ingress": None}}},
                             subresource="status")
        if target is not None and svc is not None:
            self.recorder.event(target, "Normal", "DeletedLoadBalancer", "Deleted load balancer")

    def stats(self) -> dict[str, int]:
        return {"synced": len(self.synced), "ensured": self.ensured, "failures": self.failures,
                "retrying": len(self.retry_at)}


def http_moc_call(net: Any, endpoint: str, timeout: float = 10.0) -> MocCall:
    """A :data:`MocCall` over ``net`` (the API server VM's stack) to ``IP:55000``."""
    from agents.vm.http import HttpClient

    host, _, port = endpoint.rpartition(":")

    async def call(method: str, path: str, body: dict[str, Any] | None) -> Any:
        client = HttpClient(net, host, int(port), timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else b""
            response = await client.request(method, path, headers={"Content-Type": "application/json"},
                                            body=data)
        finally:
            client.close()
        try:
            answer = json.loads(response.body or b"{}")
        except ValueError:
            answer = {"error": response.text.strip()[:200]}
        if 400 <= response.status < 500:
            raise LbRefused(answer.get("error") if isinstance(answer, dict) else str(answer))
        if response.status != 200:
            raise RuntimeError(f"moc: {response.status} {response.reason}")
        return answer

    return call

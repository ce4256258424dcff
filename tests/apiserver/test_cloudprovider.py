"""The cloud provider's service controller against a fake MOC: status.loadBalancer.ingress on
success, SyncLoadBalancerFailed Events and a pending Service on refusal (retried with
backoff), DELETE on deletion and on a type change, and the request it sends."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from agents.apiserver.cloudprovider import LbRefused, ServiceLbController, ensure_request
from agents.apiserver.services import ServiceAllocator
from agents.apiserver.store import Store


class FakeMoc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []
        self.refuse: str | None = None
        self.down = False

    async def __call__(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        self.calls.append((method, path, body))
        if self.down:
            raise ConnectionRefusedError("172.16.0.5:55000")
        if self.refuse is not None:
            raise LbRefused(self.refuse)
        return {"vip": "172.16.0.151"}


def service(name: str, **spec: Any) -> dict[str, Any]:
    ann = spec.pop("annotations", {})
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "annotations": ann},
            "spec": {"type": "LoadBalancer", "selector": {"app": name},
                     "ports": [{"port": 80, "targetPort": 8080}], **spec}}


def make_store(tmp: Path) -> Store:
    store = Store(str(tmp / "api.sqlite"))
    ServiceAllocator(rng=random.Random(3)).install(store)
    return store


async def until(check: Any, what: str, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


def events(store: Store, reason: str) -> list[dict[str, Any]]:
    items, _ = store.list("events", "default")
    return [e for e in items if e["reason"] == reason]


def ingress(store: Store, name: str) -> Any:
    return (store.get("services", "default", name).get("status") or {}).get("loadBalancer", {}).get("ingress")


def test_ensure_request_maps_spec_and_annotations() -> None:
    svc = service("web", externalTrafficPolicy="Local", healthCheckNodePort=32001, loadBalancerIP="172.16.0.160",
                  annotations={"service.beta.kubernetes.io/azure-load-balancer-internal": "true",
                               "hcinet.io/balance": "leastconn", "hcinet.io/proxy-protocol": "v2"})
    svc["spec"]["ports"][0]["nodePort"] = 30080
    assert ensure_request("c1", svc) == {
        "cluster": "c1", "namespace": "default", "name": "web",
        "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}], "internal": True,
        "externalTrafficPolicy": "Local", "balance": "leastconn", "loadBalancerIP": "172.16.0.160",
        "healthCheckNodePort": 32001, "proxyProtocol": "v2"}


def test_controller_sets_ingress_records_failures_and_deletes(tmp_path: Path) -> None:
    async def main() -> None:
        store = make_store(tmp_path)
        moc = FakeMoc()
        ctrl = ServiceLbController(store, "c1", moc, scale=0.001)
        ctrl.start()
        task = asyncio.get_running_loop().create_task(ctrl.run())
        try:
            store.create("services", service("web"))
            await until(lambda: ingress(store, "web") == [{"ip": "172.16.0.151"}], "ingress set")
            method, path, body = moc.calls[0]
            assert (method, path) == ("POST", "/v1/loadbalancers/ensure")
            assert body is not None and body["ports"][0]["nodePort"] >= 30000
            assert events(store, "EnsuredLoadBalancer")
            # refused: an Event with MOC's reason, the Service stays pending, retried
            moc.refuse = "web2: the VIP pool aks-net 172.16.0.150-172.16.0.151 has no address with port(s) 80 free left"
            store.create("services", service("web2"))
            await until(lambda: len([c for c in moc.calls if c[2] and c[2]["name"] == "web2"]) >= 3, "retries")
            (ev,) = events(store, "SyncLoadBalancerFailed")
            assert ev["type"] == "Warning" and "the VIP pool aks-net" in ev["message"] and ev["count"] >= 2
            assert not ingress(store, "web2")
            moc.refuse = None
            await until(lambda: ingress(store, "web2") == [{"ip": "172.16.0.151"}], "ingress after the retry")
            # MOC unreachable, then back: retried without an Event
            moc.down = True
            store.delete("services", "default", "web2")
            await until(lambda: any(c[0] == "DELETE" for c in moc.calls), "a delete attempt")
            moc.down = False
            await until(lambda: ("DELETE", "/v1/loadbalancers/c1/default/web2", None) in moc.calls
                        and ("default", "web2") not in ctrl.synced, "the delete retried")
            # a type change to ClusterIP deletes the LB and clears the status
            svc = store.get("services", "default", "web")
            svc["spec"]["type"] = "ClusterIP"
            store.update("services", svc)
            await until(lambda: not ingress(store, "web"), "ingress cleared")
            assert ("DELETE", "/v1/loadbalancers/c1/default/web", None) in moc.calls
        finally:
            task.cancel()
            ctrl.close()
            store.close()
    asyncio.run(main())

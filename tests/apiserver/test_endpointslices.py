"""The EndpointSlice controller over a real Store: contents, conditions, named ports, 100 a slice."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.apiserver.controllers import Informers
from agents.apiserver.endpointslices import EndpointSliceController
from agents.apiserver.rest import Router
from agents.apiserver.services import ServiceAllocator
from agents.apiserver.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "eps.sqlite"))
    Router(s).bootstrap()
    ServiceAllocator(rng=random.Random(3)).install(s)
    yield s
    s.close()


def ctrl(store: Store) -> EndpointSliceController:
    return EndpointSliceController(store, Informers(store), rng=random.Random(5))


def service(store: Store, name: str = "web", ports: list[Any] | None = None, **spec: Any) -> None:
    spec.setdefault("selector", {"app": "web"})
    store.create("services", {"metadata": {"name": name, "namespace": "default", "labels": {"team": "a"}},
                              "spec": {"ports": ports or [{"name": "http", "port": 80, "targetPort": "http",
                                                           "protocol": "TCP"}], **spec}})


def pod(store: Store, name: str, ip: str | None = "10.244.1.5", ready: bool = True, port_name: str = "http",
        node: str = "n1", labels: dict[str, str] | None = None, phase: str = "Running") -> None:
    status: dict[str, Any] = {"phase": phase,
                              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    store.create("pods", {"metadata": {"name": name, "namespace": "default", "labels": labels or {"app": "web"}},
                          "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost", "ports": [
                              {"name": port_name, "containerPort": 8080, "protocol": "TCP"}]}]},
                          "status": status})


def slices(store: Store, svc: str = "web") -> list[dict[str, Any]]:
    return store.list("endpointslices", "default")[0] if svc == "*" else \
        [s for s in store.list("endpointslices", "default")[0]
         if s["metadata"]["labels"].get("kubernetes.io/service-name") == svc]


def endpoints(store: Store, svc: str = "web") -> dict[str, dict[str, Any]]:
    return {ep["targetRef"]["name"]: ep for s in slices(store, svc) for ep in s["endpoints"] or ()}


def test_slice_shape(store: Store) -> None:
    c = ctrl(store)
    service(store)
    pod(store, "a", "10.244.1.5")
    pod(store, "b", "10.244.2.7", node="n2")
    c.sync()
    [sl] = slices(store)
    svc = store.get("services", "default", "web")
    assert re.fullmatch(r"web-[a-z0-9]{5}", sl["metadata"]["name"]) and sl["metadata"]["generateName"] == "web-"
    assert sl["metadata"]["labels"] == {"team": "a", "kubernetes.io/service-name": "web",
                                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    assert sl["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                                  "uid": svc["metadata"]["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]
    assert sl["addressType"] == "IPv4"
    assert sl["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]  # the named targetPort, resolved
    a = store.get("pods", "default", "a")
    assert endpoints(store)["a"] == {
        "addresses": ["10.244.1.5"], "conditions": {"ready": True, "serving": True, "terminating": False},
        "targetRef": {"kind": "Pod", "namespace": "default", "name": "a", "uid": a["metadata"]["uid"]},
        "nodeName": "n1"}


@pytest.mark.parametrize(("kw", "publish", "expect"), [
    ({"ready": True}, False, {"ready": True, "serving": True, "terminating": False}),
    ({"ready": False}, False, {"ready": False, "serving": False, "terminating": False}),
    ({"ready": False}, True, {"ready": True, "serving": True, "terminating": False}),
    ({"ip": None}, False, None),                      # no IP: no endpoint
    ({"phase": "Failed"}, False, None),               # terminal: no endpoint
    ({"labels": {"app": "other"}}, False, None),      # not selected
])
def test_endpoint_conditions(store: Store, kw: dict[str, Any], publish: bool, expect: dict[str, bool] | None) -> None:
    c = ctrl(store)
    service(store, publishNotReadyAddresses=publish)
    pod(store, "p", **kw)
    c.sync()
    got = endpoints(store).get("p")
    assert (got["conditions"] if got else None) == expect


def test_terminating_and_readiness_changes(store: Store) -> None:
    c = ctrl(store)
    service(store)
    pod(store, "p")
    c.sync()
    store.patch("pods", "default", "p", {"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}})
    assert c.pending()
    c.sync()
    assert endpoints(store)["p"]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    store.delete("pods", "default", "p")
    c.sync()
    assert endpoints(store) == {}
    [placeholder] = slices(store)  # upstream keeps one empty slice
    assert placeholder["endpoints"] == [] and placeholder["ports"] == []
    pod(store, "q", ready=False)
    c.sync()
    [sl] = slices(store)  # the placeholder makes room for a real slice (upstream deletes it)
    assert sl["metadata"]["name"] != placeholder["metadata"]["name"] and len(sl["endpoints"]) == 1
    store.delete("pods", "default", "q")
    c.sync()
    [again] = slices(store)  # the last endpoint gone: its slice becomes the placeholder
    assert again["metadata"]["name"] == sl["metadata"]["name"] and again["endpoints"] == []
    pod(store, "q", ready=False)
    c.sync()
    store.patch("pods", "default", "q", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                subresource="status")
    c.sync()
    assert endpoints(store)["q"]["conditions"]["ready"] is True
    writes = c.writes
    store.patch("pods", "default", "q", {"metadata": {"annotations": {"x": "y"}}})  # irrelevant change
    assert not c.pending()
    c.sync()
    assert c.writes == writes


def test_named_ports_split_slices(store: Store) -> None:
    c = ctrl(store)
    service(store, ports=[{"name": "http", "port": 80, "targetPort": "http"},
                          {"name": "metrics", "port": 9090, "targetPort": 9090}])
    pod(store, "a", "10.244.1.5")
    pod(store, "b", "10.244.1.6", port_name="web")  # no container port named http
    c.sync()
    by_ports = {tuple((p["name"], p["port"]) for p in s["ports"]): [e["targetRef"]["name"] for e in s["endpoints"]]
                for s in slices(store)}
    assert by_ports == {(("http", 8080), ("metrics", 9090)): ["a"], (("metrics", 9090),): ["b"]}


def test_hundred_endpoints_per_slice_and_little_churn(store: Store) -> None:
    c = ctrl(store)
    service(store)
    for i in range(250):
        pod(store, f"p{i:03}", f"10.244.{i // 200}.{i % 200 + 1}")
    c.sync()
    sizes = sorted(len(s["endpoints"]) for s in slices(store))
    assert sizes == [50, 100, 100]
    before = {s["metadata"]["name"]: {e["targetRef"]["name"] for e in s["endpoints"]} for s in slices(store)}
    for i in range(0, 250, 5):  # 50 pods go
        store.delete("pods", "default", f"p{i:03}")
    c.sync()
    after = {s["metadata"]["name"]: {e["targetRef"]["name"] for e in s["endpoints"]} for s in slices(store)}
    assert set(after) == set(before)  # no slice created or deleted
    for name, members in after.items():
        assert members <= before[name]  # every endpoint stayed in its slice
    assert sum(len(m) for m in after.values()) == 200
    for i in range(0, 60, 5):  # 12 come back: they fill existing slices, no new one
        pod(store, f"p{i:03}", f"10.244.0.{i + 1}")
    c.sync()
    assert len(slices(store)) == 3 and sum(len(s["endpoints"]) for s in slices(store)) == 212
    assert all(len(s["endpoints"]) <= 100 for s in slices(store))


def test_services_without_selector_and_external_name_are_untouched(store: Store) -> None:
    c = ctrl(store)
    store.create("services", {"metadata": {"name": "manual", "namespace": "default"},
                              "spec": {"ports": [{"port": 80}]}})
    store.create("endpointslices", {"metadata": {"name": "manual-1", "namespace": "default",
                                                 "labels": {"kubernetes.io/service-name": "manual"}},
                                    "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"]}]})
    store.create("services", {"metadata": {"name": "ext", "namespace": "default"},
                              "spec": {"type": "ExternalName", "externalName": "db.example.com",
                                       "selector": {"app": "web"}}})
    pod(store, "a")
    c.sync()
    assert [s["metadata"]["name"] for s in slices(store, "manual")] == ["manual-1"]
    assert slices(store, "ext") == []


def test_service_changes_and_deletion(store: Store) -> None:
    c = ctrl(store)
    service(store, clusterIP="None")
    pod(store, "a")
    c.sync()
    [sl] = slices(store)
    assert sl["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    store.patch("services", "default", "web", {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8081}]}})
    c.sync()
    [sl] = slices(store)
    assert sl["ports"] == [{"name": "http", "port": 8081, "protocol": "TCP"}]
    store.delete("endpointslices", "default", sl["metadata"]["name"])  # someone deletes ours: put back
    c.sync()
    assert len(slices(store)) == 1
    store.delete("services", "default", "web")
    c.sync()
    assert slices(store, "*") == []

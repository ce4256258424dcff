"""Dual-stack Services on the API server (sans-IO): ClusterIPs from both configured CIDRs by
``ipFamilyPolicy`` / ``ipFamilies``, RequireDualStack refused on a single-stack cluster naming
the field, and EndpointSlices per address family (one slice set per family, as upstream)."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.apiserver.controllers import Informers
from agents.apiserver.endpointslices import EndpointSliceController
from agents.apiserver.rest import Router
from agents.apiserver.services import ServiceAllocator
from agents.apiserver.store import Store

DUAL = ["10.96.0.0/12", "fd00:10:96::/112"]
SVC = "/api/v1/namespaces/default/services"


def make(tmp_path: Path, name: str, cidrs: list[str]) -> Store:
    s = Store(str(tmp_path / f"{name}.sqlite"))
    Router(s).bootstrap()
    ServiceAllocator(cidrs, rng=random.Random(1)).install(s)
    return s


@pytest.fixture
def dual(tmp_path: Path) -> Iterator[Store]:
    s = make(tmp_path, "dual", DUAL)
    yield s
    s.close()


def post(store: Store, name: str, **spec: Any) -> tuple[int, dict[str, Any]]:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                     **spec}}
    r = Router(store).handle("POST", SVC, body=body)
    return r.status, r.body


@pytest.mark.parametrize(("spec", "families"), [
    ({}, ["IPv4"]),                                                   # SingleStack, the primary family
    ({"ipFamilyPolicy": "PreferDualStack"}, ["IPv4", "IPv6"]),
    ({"ipFamilyPolicy": "RequireDualStack"}, ["IPv4", "IPv6"]),
    ({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}, ["IPv6", "IPv4"]),
    ({"ipFamilies": ["IPv6"]}, ["IPv6"]),
])
def test_family_allocation(dual: Store, spec: dict[str, Any], families: list[str]) -> None:
    status, body = post(dual, "web", **spec)
    assert status == 201, body
    got = body["spec"]
    assert got["ipFamilies"] == families and len(got["clusterIPs"]) == len(families)
    assert got["clusterIP"] == got["clusterIPs"][0]
    for fam, ip, cidr in zip(families, got["clusterIPs"], [DUAL[0] if f == "IPv4" else DUAL[1] for f in families],
                             strict=True):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(cidr), (fam, ip)


def test_require_dual_stack_on_a_single_stack_cluster_is_422_naming_the_field(tmp_path: Path) -> None:
    single = make(tmp_path, "single", ["10.96.0.0/12"])
    try:
        status, body = post(single, "web", ipFamilyPolicy="RequireDualStack")
        assert status == 422 and body["reason"] == "Invalid"
        assert "spec.ipFamilyPolicy" in body["message"] and "not configured for dual-stack" in body["message"]
        status, body = post(single, "v6", ipFamilies=["IPv6"])
        assert status == 422 and "spec.ipFamilies[0]" in body["message"]
        status, body = post(single, "pref", ipFamilyPolicy="PreferDualStack")  # prefers: falls back to IPv4
        assert status == 201 and body["spec"]["ipFamilies"] == ["IPv4"]
    finally:
        single.close()


def pod(store: Store, name: str, ips: list[str], node: str = "n1") -> None:
    store.create("pods", {"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                          "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost"}]},
                          "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips],
                                     "conditions": [{"type": "Ready", "status": "True"}]}})


def test_endpoint_slices_per_address_family(dual: Store) -> None:
    c = EndpointSliceController(dual, Informers(dual), rng=random.Random(5))
    assert post(dual, "web", ipFamilyPolicy="PreferDualStack")[0] == 201
    assert post(dual, "v4only")[0] == 201
    pod(dual, "a", ["10.244.0.5", "fd00:10:244::5"])
    pod(dual, "w", ["10.244.1.7"], node="win")  # a Windows node's pod: IPv4 only
    c.sync()
    by_svc: dict[str, dict[str, list[str]]] = {}
    for sl in dual.list("endpointslices", "default")[0]:
        svc = sl["metadata"]["labels"]["kubernetes.io/service-name"]
        by_svc.setdefault(svc, {})[sl["addressType"]] = sorted(a for ep in sl["endpoints"] for a in ep["addresses"])
    assert by_svc["web"] == {"IPv4": ["10.244.0.5", "10.244.1.7"], "IPv6": ["fd00:10:244::5"]}
    assert by_svc["v4only"] == {"IPv4": ["10.244.0.5", "10.244.1.7"]}

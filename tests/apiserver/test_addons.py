"""The CoreDNS addon at bootstrap, over a real Store: the objects kubeadm makes, kube-dns on
10.96.0.10, idempotent across restarts, and a Deployment the controllers turn into 2 pods on
Linux nodes that the kubelet would run as the coredns app."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from agents.apiserver.addons import COREDNS_IMAGE, coredns_objects, ensure_addons
from agents.apiserver.controllers import Informers, ensure_kubernetes_service, install_admission
from agents.apiserver.errors import StatusError
from agents.apiserver.rest import Router
from agents.apiserver.scheduler import Scheduler
from agents.apiserver.services import ServiceAllocator
from agents.apiserver.store import Store
from agents.apiserver.workloads import DeploymentController, ReplicaSetController
from agents.dns.corefile import CorefileOptions
from agents.node.images import plan_container

ADDONS = ["configmaps/kube-system/coredns", "deployments/kube-system/coredns", "services/kube-system/kube-dns"]


def boot(path: Path) -> tuple[Store, Router, list[str]]:
    """What ApiServerVM.start_services does, in its order."""
    store = Store(str(path))
    router = Router(store)
    router.bootstrap()
    ServiceAllocator(rng=random.Random(7)).install(store)
    install_admission(store)
    ensure_kubernetes_service(store, "172.16.0.20")
    return store, router, ensure_addons(router)


def test_first_boot_creates_kubeadms_objects(tmp_path: Path) -> None:
    store, _, created = boot(tmp_path / "api.sqlite")
    assert created == ADDONS
    svc = store.get("services", "kube-system", "kube-dns")
    assert svc["spec"]["clusterIP"] == "10.96.0.10" and svc["spec"]["clusterIPs"] == ["10.96.0.10"]
    assert svc["spec"]["selector"] == {"k8s-app": "kube-dns"} and svc["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]] == [
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")]
    dep = store.get("deployments", "kube-system", "coredns")
    assert dep["spec"]["replicas"] == 2 and dep["metadata"]["labels"] == {"k8s-app": "kube-dns"}
    tspec = dep["spec"]["template"]["spec"]
    (c,) = tspec["containers"]
    assert c["image"] == "registry.k8s.io/coredns/coredns:v1.9.3" == COREDNS_IMAGE
    assert c["args"] == ["-conf", "/etc/coredns/Corefile"]
    assert [(p["name"], p["containerPort"], p["protocol"]) for p in c["ports"]] == [
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")]
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8181, "scheme": "HTTP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080, "scheme": "HTTP"}
    assert tspec["nodeSelector"] == {"kubernetes.io/os": "linux"} and tspec["dnsPolicy"] == "Default"
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"} in tspec["tolerations"]
    corefile = store.get("configmaps", "kube-system", "coredns")["data"]["Corefile"]
    opts = CorefileOptions.from_text(corefile)
    assert (opts.domain, opts.pods, opts.ttl, opts.reverse, opts.forward, opts.cache, opts.loadbalance) == (
        "cluster.local", "insecure", 30, True, ("/etc/resolv.conf",), 30, True)
    assert opts.fallthrough == ("in-addr.arpa", "ip6.arpa") and opts.prometheus == ":9153"
    assert {"health", "ready", "loop", "reload", "errors"} <= set(opts.plugins)
    store.close()


def test_idempotent_across_restarts_and_keeps_user_changes(tmp_path: Path) -> None:
    store, router, _ = boot(tmp_path / "api.sqlite")
    rv = store.rv
    assert ensure_addons(router) == [] and store.rv == rv  # nothing written the second time
    store.patch("deployments", "kube-system", "coredns", {"spec": {"replicas": 3}})
    store.delete("configmaps", "kube-system", "coredns")
    store.close()
    # the API server restarts: a new allocator rebuilt from the stored Services
    store, router, created = boot(tmp_path / "api.sqlite")
    assert created == ["configmaps/kube-system/coredns"]  # only what was missing
    assert store.get("deployments", "kube-system", "coredns")["spec"]["replicas"] == 3
    assert store.get("services", "kube-system", "kube-dns")["spec"]["clusterIP"] == "10.96.0.10"
    assert len(store.list("services", "kube-system")[0]) == 1
    store.close()
    store, router, created = boot(tmp_path / "api.sqlite")
    assert created == []
    store.close()


def test_dns_ip_is_reserved_for_kube_dns(tmp_path: Path) -> None:
    store, router, _ = boot(tmp_path / "api.sqlite")
    # nobody else gets 10.96.0.10, even after kube-dns is gone and comes back at the next boot
    store.delete("services", "kube-system", "kube-dns")
    with pytest.raises(StatusError) as e:
        store.create("services", {"metadata": {"name": "thief", "namespace": "default"},
                                  "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}})
    assert "provided IP is already allocated" in str(e.value.status())
    assert ensure_addons(router) == ["services/kube-system/kube-dns"]
    assert store.get("services", "kube-system", "kube-dns")["spec"]["clusterIP"] == "10.96.0.10"
    store.close()


def test_a_dns_service_someone_else_made_is_left_alone(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "api.sqlite"))
    router = Router(store)
    router.bootstrap()
    ServiceAllocator().install(store)
    store.create("services", {"metadata": {"name": "kube-dns", "namespace": "kube-system"},
                              "spec": {"ports": [{"port": 53, "protocol": "UDP"}], "selector": {"app": "mine"}}})
    created = ensure_addons(router)
    assert "services/kube-system/kube-dns" not in created
    svc = store.get("services", "kube-system", "kube-dns")
    assert svc["spec"]["selector"] == {"app": "mine"} and svc["spec"]["clusterIP"] == "10.96.0.10"
    store.close()


def _node(name: str, os_: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/os": os_, "kubernetes.io/hostname": name}},
            "status": {"allocatable": {"pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}}


def test_deployment_becomes_two_linux_pods_running_the_coredns_app(tmp_path: Path) -> None:
    store, _, _ = boot(tmp_path / "api.sqlite")
    for name, os_ in (("lin0", "linux"), ("win0", "windows"), ("lin1", "linux")):
        store.create("nodes", _node(name, os_))
    inf = Informers(store)
    ctrls: list[Any] = [DeploymentController(store, inf), ReplicaSetController(store, inf, rng=random.Random(1)),
             Scheduler(store, inf)]
    for _ in range(30):
        busy = [c for c in ctrls if c.pending()]
        if not busy:
            break
        for c in busy:
            c.sync()
    pods = store.list("pods", "kube-system")[0]
    assert len(pods) == 2
    assert all(p["metadata"]["labels"]["k8s-app"] == "kube-dns" for p in pods)
    assert {p["spec"]["nodeName"] for p in pods} <= {"lin0", "lin1"}  # never the Windows node
    plan = plan_container(pods[0]["spec"]["containers"][0], "linux")
    assert getattr(plan, "role", None) == "coredns"
    assert getattr(plan, "options", {}).get("conf") == "/etc/coredns/Corefile"
    # CoreDNS has no Windows build: on a Windows node the pull fails
    assert getattr(plan_container(pods[0]["spec"]["containers"][0], "windows"), "reason", "") == "ErrImagePull"
    inf.close()
    store.close()


def test_objects_are_fresh_copies() -> None:
    a, b = coredns_objects(), coredns_objects()
    a[1][1]["spec"]["replicas"] = 9
    assert b[1][1]["spec"]["replicas"] == 2
    assert coredns_objects(replicas=1, dns_ip="10.96.0.11")[2][1]["spec"]["clusterIP"] == "10.96.0.11"

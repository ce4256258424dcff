"""Node IPAM and node lifecycle with a manual clock; the kubernetes Service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.apiserver.controllers import (
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    NodeIpam,
    NodeLifecycle,
    ensure_kubernetes_service,
)
from agents.apiserver.rest import Router
from agents.apiserver.store import Store
from agents.timers import Timers


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "c.sqlite"))
    Router(s).bootstrap()
    yield s
    s.close()


def add_node(store: Store, name: str, ready: str = "True", beat: str = "2024-01-01T00:00:00Z") -> None:
    store.create("nodes", {"metadata": {"name": name}, "spec": {}, "status": {"conditions": [
        {"type": "Ready", "status": ready, "reason": "KubeletReady", "lastHeartbeatTime": beat},
        {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": beat}]}})


def renew(store: Store, name: str, stamp: str) -> None:
    if store.exists("leases", "kube-node-lease", name):
        store.patch("leases", "kube-node-lease", name, {"spec": {"renewTime": stamp}})
    else:
        store.create("leases", {"metadata": {"name": name, "namespace": "kube-node-lease"},
                                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": stamp}})


def cond(store: Store, name: str, ctype: str = "Ready") -> dict:
    node = store.get("nodes", None, name)
    return next(c for c in node["status"]["conditions"] if c["type"] == ctype)


def taints(store: Store, name: str) -> set[tuple[str, str]]:
    return {(t["key"], t["effect"]) for t in store.get("nodes", None, name)["spec"].get("taints") or []}


def test_ipam_unique_cidrs_and_release(store: Store) -> None:
    ipam = NodeIpam(store)
    for i in range(3):
        add_node(store, f"n{i}")
    assert ipam.sync() == {"n0": "10.244.0.0/24", "n1": "10.244.1.0/24", "n2": "10.244.2.0/24"}
    assert store.get("nodes", None, "n1")["spec"] == {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}
    assert ipam.sync() == {}
    store.delete("nodes", None, "n1")
    add_node(store, "n3")
    add_node(store, "n4")
    assert ipam.sync() == {"n3": "10.244.1.0/24", "n4": "10.244.3.0/24"}
    cidrs = [n["spec"]["podCIDR"] for n in store.list("nodes")[0]]
    assert len(cidrs) == len(set(cidrs)) == 4


def test_ipam_exhaustion(store: Store) -> None:
    ipam = NodeIpam(store, "10.244.0.0/23", 24)
    for i in range(3):
        add_node(store, f"n{i}")
    assert len(ipam.sync()) == 2 and ipam.exhausted == 1
    assert "podCIDR" not in store.get("nodes", None, "n2")["spec"]


def test_node_goes_unknown_after_grace_and_back(store: Store) -> None:
    timers = Timers(0.1)  # grace 4 s, period 0.5 s
    life = NodeLifecycle(store, timers, clock=lambda: 1_700_000_000.0)
    add_node(store, "n1")
    add_node(store, "n2")
    renew(store, "n1", "2024-01-01T00:00:01Z")
    renew(store, "n2", "2024-01-01T00:00:01Z")
    now = 100.0
    assert life.tick(now) == []
    # n1 keeps renewing, n2 stops
    for step in range(1, 10):
        now = 100.0 + step * 0.5
        renew(store, "n1", f"2024-01-01T00:00:{10 + step:02d}Z")
        changed = life.tick(now)
        if now - 100.0 <= timers.node_monitor_grace_period:
            assert changed == [] and cond(store, "n2")["status"] == "True", now
        else:
            assert changed == ["n2"]
    ready = cond(store, "n2")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
    assert cond(store, "n2", "MemoryPressure")["status"] == "Unknown"
    assert ready["lastHeartbeatTime"] == "2024-01-01T00:00:00Z"  # unchanged: the kubelet's last one
    assert taints(store, "n2") == {(TAINT_UNREACHABLE, "NoSchedule"), (TAINT_UNREACHABLE, "NoExecute")}
    assert cond(store, "n1")["status"] == "True" and taints(store, "n1") == set()
    rv = store.rv
    assert life.tick(now + 0.5) == [] and store.rv == rv  # no rewrite while it stays Unknown
    # the kubelet comes back and posts Ready: the controller removes the taints
    node = store.get("nodes", None, "n2")
    node["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                     "lastHeartbeatTime": "2024-01-01T00:01:00Z"}]
    store.update_status("nodes", node)
    renew(store, "n2", "2024-01-01T00:01:00Z")
    assert life.tick(now + 1.0) == ["n2"]
    assert taints(store, "n2") == set() and cond(store, "n2")["status"] == "True"


def test_not_ready_taint_and_never_posted(store: Store) -> None:
    life = NodeLifecycle(store, Timers(0.1))
    add_node(store, "n1", ready="False")
    store.create("nodes", {"metadata": {"name": "silent"}})
    life.tick(0.0)
    assert taints(store, "n1") == {(TAINT_NOT_READY, "NoSchedule"), (TAINT_NOT_READY, "NoExecute")}
    life.tick(10.0)
    ready = cond(store, "silent")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "Unknown", "NodeStatusNeverUpdated", "Kubelet never posted node status.")
    assert taints(store, "silent") == {(TAINT_UNREACHABLE, "NoSchedule"), (TAINT_UNREACHABLE, "NoExecute")}


def test_kubernetes_service(store: Store) -> None:
    ensure_kubernetes_service(store, "172.16.0.20")
    svc = store.get("services", "default", "kubernetes")
    assert svc["spec"]["clusterIP"] == "10.96.0.1" and svc["spec"]["ports"][0]["port"] == 443
    eps = store.get("endpoints", "default", "kubernetes")
    assert eps["subsets"][0]["addresses"] == [{"ip": "172.16.0.20"}]
    assert eps["subsets"][0]["ports"][0]["port"] == 6443
    rv = store.rv
    ensure_kubernetes_service(store, "172.16.0.20")
    assert store.rv == rv
    ensure_kubernetes_service(store, "172.16.0.21")
    assert store.get("endpointslices", "default", "kubernetes")["endpoints"][0]["addresses"] == ["172.16.0.21"]

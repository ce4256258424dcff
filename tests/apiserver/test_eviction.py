"""A node stops: its pods turn not ready, leave the EndpointSlices, are evicted after the scaled
toleration and come back on the other nodes (every controller of the VM, a manual clock)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.apiserver.controllers import (
    TAINT_UNREACHABLE,
    Informers,
    NodeLifecycle,
    install_admission,
    sync_until_idle,
)
from agents.apiserver.endpointslices import EndpointSliceController
from agents.apiserver.rest import Router
from agents.apiserver.scheduler import Scheduler
from agents.apiserver.services import ServiceAllocator
from agents.apiserver.store import Store, timestamp
from agents.apiserver.workloads import DeploymentController, ReplicaSetController
from agents.timers import Timers

T0 = 1_700_000_000.0
TIMERS = Timers(0.01)  # grace 0.4 s, period 0.05 s, toleration 3 s


class World:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.now = 0.0
        inf = Informers(store)
        clock = self.wall
        self.life = NodeLifecycle(store, TIMERS, clock=clock, informers=inf)
        self.ctrls: list[Any] = [DeploymentController(store, inf, clock=clock),
                                 ReplicaSetController(store, inf, clock=clock, rng=random.Random(2)),
                                 Scheduler(store, inf, clock=clock),
                                 EndpointSliceController(store, inf, rng=random.Random(4))]
        self.alive = {"n1", "n2", "n3"}
        self.ip = 0
        for n in sorted(self.alive):
            store.create("nodes", {"metadata": {"name": n, "labels": {"kubernetes.io/os": "linux"}},
                                   "status": {"allocatable": {"pods": "110"},
                                              "conditions": [{"type": "Ready", "status": "True",
                                                              "lastHeartbeatTime": timestamp(T0)}]}})

    def wall(self) -> float:
        return T0 + self.now

    def settle(self) -> None:
        sync_until_idle(self.ctrls)

    def kubelets(self) -> None:
        """Live nodes renew their Lease and start the pods bound to them."""
        for n in self.alive:
            stamp = f"{self.now:.6f}"
            if self.store.exists("leases", "kube-node-lease", n):
                self.store.patch("leases", "kube-node-lease", n, {"spec": {"renewTime": stamp}})
            else:
                self.store.create("leases", {"metadata": {"name": n, "namespace": "kube-node-lease"},
                                             "spec": {"holderIdentity": n, "renewTime": stamp}})
        for p in self.store.list("pods", "default")[0]:
            if p["spec"].get("nodeName") in self.alive and p["status"].get("phase") != "Running":
                self.ip += 1
                self.store.patch("pods", "default", p["metadata"]["name"], {"status": {
                    "phase": "Running", "podIP": f"10.244.9.{self.ip}",
                    "conditions": [{"type": "Ready", "status": "True"}]}}, subresource="status")

    def advance(self, seconds: float) -> None:
        """Time passes in node-monitor periods: kubelets, the lifecycle tick, the controllers."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.life.next_deadline(self.now))
            self.kubelets()
            self.life.tick(self.now)
            self.settle()

    def pods(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.store.list("pods", "default")[0]}

    def ready_endpoints(self) -> set[str]:
        return {ep["targetRef"]["name"] for s in self.store.list("endpointslices", "default")[0]
                for ep in s["endpoints"] or () if ep["conditions"]["ready"]}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    holder: list[World] = []
    s = Store(str(tmp_path / "ev.sqlite"), clock=lambda: holder[0].wall() if holder else T0)
    Router(s).bootstrap()
    install_admission(s)
    ServiceAllocator().install(s)
    holder.append(World(s))
    yield holder[0]
    s.close()


def deploy(world: World, replicas: int = 6, tolerations: list[Any] | None = None) -> None:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "agnhost", "ports": [{"containerPort": 80}]}]}
    if tolerations is not None:
        spec["tolerations"] = tolerations
    world.store.create("deployments", {"metadata": {"name": "web", "namespace": "default"},
                                       "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                                                "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}}})
    world.store.create("services", {"metadata": {"name": "web", "namespace": "default"},
                                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})


def test_default_tolerations_added_at_create(world: World) -> None:
    world.store.create("pods", {"metadata": {"name": "p", "namespace": "default"},
                                "spec": {"containers": [{"name": "c", "image": "x"}],
                                         "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                                          "effect": "NoExecute", "tolerationSeconds": 30}]}})
    tols = world.store.get("pods", "default", "p")["spec"]["tolerations"]
    assert tols == [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                     "tolerationSeconds": 30},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                     "tolerationSeconds": 300}]


def test_dead_node_pods_leave_endpoints_then_move(world: World) -> None:
    deploy(world)
    world.advance(0.2)
    pods = world.pods()
    assert len(pods) == 6 and len(world.ready_endpoints()) == 6
    on_n1 = {n for n, p in pods.items() if p["spec"]["nodeName"] == "n1"}
    assert len(on_n1) == 2
    world.alive.discard("n1")  # `vm stop` of the node: no more Lease renewals
    world.advance(0.3)  # within the grace period: nothing yet
    assert len(world.ready_endpoints()) == 6
    world.advance(0.2)  # past the 0.4 s grace: Unknown, tainted, its pods not ready
    node = world.store.get("nodes", None, "n1")
    assert {(t["key"], t["effect"]) for t in node["spec"]["taints"]} == {(TAINT_UNREACHABLE, "NoSchedule"),
                                                                          (TAINT_UNREACHABLE, "NoExecute")}
    for name in on_n1:
        ready = next(c for c in world.store.get("pods", "default", name)["status"]["conditions"]
                     if c["type"] == "Ready")
        assert ready["status"] == "False"
    assert world.ready_endpoints() == set(pods) - on_n1  # they left every EndpointSlice's ready set
    assert set(world.pods()) == set(pods)  # not evicted yet
    tainted_at = world.now
    world.advance(2.8)  # the 300 s toleration is 3 s at time_scale 0.01
    assert world.now - tainted_at < 3.0 and set(world.pods()) == set(pods)
    world.advance(0.3)
    now_pods = world.pods()
    assert on_n1.isdisjoint(now_pods) and len(now_pods) == 6  # evicted and recreated
    assert {p["spec"]["nodeName"] for p in now_pods.values()} == {"n2", "n3"}
    assert len(world.ready_endpoints()) == 6 and world.life.evicted == 2
    reasons = {e["reason"] for e in world.store.list("events", "default")[0]}
    assert {"TaintManagerEviction", "NodeNotReady"} <= reasons


@pytest.mark.parametrize(("toleration", "evicted_by", "kept_until"), [
    ({"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 50}, 1.0, 0.4),
    ({"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}, None, 10.0),  # forever
    ({"operator": "Exists"}, None, 10.0),                                                      # tolerates all
])
def test_pod_tolerations_decide_when(world: World, toleration: dict[str, Any], evicted_by: float | None,
                                     kept_until: float) -> None:
    deploy(world, replicas=3, tolerations=[toleration])
    world.advance(0.2)
    on_n1 = {n for n, p in world.pods().items() if p["spec"]["nodeName"] == "n1"}
    assert on_n1
    world.alive.discard("n1")
    world.advance(0.5)  # n1 is Unknown and tainted from here
    world.advance(kept_until - 0.05)
    assert on_n1 <= set(world.pods())
    if evicted_by is not None:
        world.advance(evicted_by)
        assert on_n1.isdisjoint(world.pods())


def test_untolerated_no_execute_taint_evicts_at_once(world: World) -> None:
    deploy(world, replicas=3)
    world.advance(0.2)
    on_n2 = {n for n, p in world.pods().items() if p["spec"]["nodeName"] == "n2"}
    world.store.patch("nodes", None, "n2", {"spec": {"taints": [{"key": "maintenance", "effect": "NoExecute"}]}})
    world.advance(TIMERS.node_monitor_period)
    assert on_n2.isdisjoint(world.pods()) and len(world.pods()) == 3
    assert all(p["spec"]["nodeName"] != "n2" for p in world.pods().values())


def test_node_back_before_the_toleration_keeps_its_pods(world: World) -> None:
    deploy(world, replicas=3)
    world.advance(0.2)
    before = set(world.pods())
    world.alive.discard("n1")
    world.advance(1.0)
    world.alive.add("n1")
    # the kubelet reports Ready again (the lifecycle controller then removes the taints)
    world.store.patch("nodes", None, "n1", {"status": {"conditions": [
        {"type": "Ready", "status": "True", "lastHeartbeatTime": timestamp(world.wall())}]}}, subresource="status")
    world.advance(5.0)
    assert set(world.pods()) == before and not world.store.get("nodes", None, "n1")["spec"].get("taints")


def test_pods_of_a_deleted_node_are_collected_and_replaced(world: World) -> None:
    deploy(world, replicas=3)
    world.advance(0.2)
    on_n3 = {n for n, p in world.pods().items() if p["spec"]["nodeName"] == "n3"}
    assert on_n3
    world.alive.discard("n3")
    world.store.delete("nodes", None, "n3")  # MOC removed the node VM
    world.advance(TIMERS.node_monitor_period / 2)
    assert on_n3 <= set(world.pods())  # not at the first look
    world.advance(TIMERS.node_monitor_period * 2)
    pods = world.pods()
    assert on_n3.isdisjoint(pods) and len(pods) == 3 and world.life.orphans_deleted == len(on_n3)
    assert {p["spec"]["nodeName"] for p in pods.values()} <= {"n1", "n2"}

"""Deployment → ReplicaSet → Pods over a real Store: create, scale, roll, recreate, collect."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.apiserver.controllers import Informers, install_admission, sync_until_idle
from agents.apiserver.errors import StatusError
from agents.apiserver.rest import Router
from agents.apiserver.scheduler import Scheduler
from agents.apiserver.store import Store
from agents.apiserver.workloads import (
    ALPHANUMS,
    DeploymentController,
    ReplicaSetController,
    pod_template_hash,
    resolve_fenceposts,
    safe_encode,
)

CLOCK = [1_700_000_000.0]


def clock() -> float:
    return CLOCK[0]


class Cluster:
    """The controllers of the control-plane VM, run to quiescence by hand, and a fake kubelet."""

    def __init__(self, store: Store, nodes: int = 3) -> None:
        self.store = store
        inf = Informers(store)
        self.deploys = DeploymentController(store, inf, clock=clock)
        self.rs = ReplicaSetController(store, inf, clock=clock, rng=random.Random(1))
        self.sched = Scheduler(store, inf, clock=clock)
        self.ctrls: list[Any] = [self.deploys, self.rs, self.sched]
        self.ip = 10
        for i in range(nodes):
            store.create("nodes", {"metadata": {"name": f"n{i}", "labels": {"kubernetes.io/os": "linux"}},
                                   "status": {"allocatable": {"pods": "110"},
                                              "conditions": [{"type": "Ready", "status": "True"}]}})

    def settle(self) -> None:
        sync_until_idle(self.ctrls)

    def kubelet(self, limit: int | None = None) -> int:
        """Start bound pods: IP, Running, Ready (at most ``limit`` of them)."""
        started = 0
        for p in self.pods():
            if limit is not None and started >= limit:
                break
            if p["spec"].get("nodeName") and p["status"].get("phase") != "Running":
                self.ip += 1
                self.store.patch("pods", "default", p["metadata"]["name"], {"status": {
                    "phase": "Running", "podIP": f"10.244.0.{self.ip}", "podIPs": [{"ip": f"10.244.0.{self.ip}"}],
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2023-11-14T22:13:20Z"}]}},
                    subresource="status")
                started += 1
        return started

    def run(self) -> None:
        """Controllers and kubelet until nothing changes."""
        for _ in range(50):
            self.settle()
            if not self.kubelet():
                self.settle()
                return
        raise AssertionError("did not converge")

    def pods(self) -> list[dict[str, Any]]:
        return self.store.list("pods", "default")[0]

    def replicasets(self) -> list[dict[str, Any]]:
        return self.store.list("replicasets", "default")[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "w.sqlite"), clock=clock)
    Router(s).bootstrap()
    install_admission(s)
    yield s
    s.close()


def deployment(name: str = "web", replicas: int = 3, image: str = "nginx", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": image,
                                                           "ports": [{"containerPort": 80}]}]}}, **spec}}


def test_deployment_creates_replicaset_and_pods(store: Store) -> None:
    c = Cluster(store)
    d = store.create("deployments", deployment())
    c.run()
    [rs] = c.replicasets()
    h = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{h}" and set(h) <= set(ALPHANUMS)
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": h}
    assert rs["metadata"]["ownerReferences"][0]["uid"] == d["metadata"]["uid"]
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    pods = c.pods()
    assert len(pods) == 3 and {p["spec"]["nodeName"] for p in pods} == {"n0", "n1", "n2"}
    for p in pods:
        assert re.fullmatch(rf"web-{h}-[{ALPHANUMS}]{{5}}", p["metadata"]["name"])
        assert p["metadata"]["labels"] == {"app": "web", "pod-template-hash": h}
        ref = p["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["controller"]) == ("ReplicaSet", rs["metadata"]["name"], True)
    st = store.get("replicasets", "default", rs["metadata"]["name"])["status"]
    assert (st["replicas"], st["readyReplicas"], st["availableReplicas"]) == (3, 3, 3)
    ds = store.get("deployments", "default", "web")["status"]
    assert {k: ds[k] for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")} == \
        {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3}
    conds = {x["type"]: x for x in ds["conditions"]}
    assert conds["Available"]["status"] == "True" and conds["Available"]["reason"] == "MinimumReplicasAvailable"
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
    assert any(e["reason"] == "ScalingReplicaSet" and e["message"] == f"Scaled up replica set web-{h} to 3"
               for e in store.list("events", "default")[0])


@pytest.mark.parametrize(("start", "to"), [(3, 5), (5, 2), (2, 0), (0, 4)])
def test_scale(store: Store, start: int, to: int) -> None:
    c = Cluster(store)
    store.create("deployments", deployment(replicas=start))
    c.run()
    assert len(c.pods()) == start
    store.patch("deployments", "default", "web", {"spec": {"replicas": to}})
    c.run()
    assert len(c.pods()) == to
    [rs] = c.replicasets()
    assert rs["spec"]["replicas"] == to and rs["status"]["replicas"] == to
    assert store.get("deployments", "default", "web")["status"].get("availableReplicas", 0) == to


def test_scale_down_deletes_not_ready_then_newest(store: Store) -> None:
    c = Cluster(store)
    store.create("deployments", deployment(replicas=3))
    c.run()
    old = {p["metadata"]["name"] for p in c.pods()}
    CLOCK[0] += 10
    store.patch("deployments", "default", "web", {"spec": {"replicas": 5}})
    c.settle()
    c.kubelet(limit=1)  # one new pod ready, one still starting
    c.settle()
    pods = {p["metadata"]["name"]: p for p in c.pods()}
    new_ready = next(n for n, p in pods.items() if n not in old and p["status"].get("phase") == "Running")
    store.patch("deployments", "default", "web", {"spec": {"replicas": 3}})
    c.settle()
    # the starting pod goes first; then, of two ready pods sharing a node, the newer one
    assert {p["metadata"]["name"] for p in c.pods()} == old
    assert new_ready not in old


def test_deleted_or_evicted_pods_are_recreated(store: Store) -> None:
    c = Cluster(store)
    store.create("deployments", deployment(replicas=3))
    c.run()
    victim = c.pods()[0]["metadata"]["name"]
    store.delete("pods", "default", victim)
    c.run()
    names = {p["metadata"]["name"] for p in c.pods()}
    assert len(names) == 3 and victim not in names
    assert sum(1 for e in store.list("events", "default")[0] if e["reason"] == "SuccessfulCreate") == 4


def rollout_invariants(c: Cluster, replicas: int, surge: int, unavailable: int) -> None:
    pods = c.pods()
    assert len(pods) <= replicas + surge
    ready = sum(1 for p in pods if any(x["type"] == "Ready" and x["status"] == "True"
                                       for x in p["status"].get("conditions") or ()))
    assert ready >= replicas - unavailable


@pytest.mark.parametrize(("replicas", "strategy", "surge", "unavailable"), [
    (4, None, 1, 1),                                                     # 25 % / 25 %
    (10, None, 3, 2),                                                    # surge rounds up, unavailable down
    (3, {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}, 0, 1),
    (3, {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0}}, 3, 0),
])
def test_rolling_update(store: Store, replicas: int, strategy: dict[str, Any] | None, surge: int,
                        unavailable: int) -> None:
    c = Cluster(store)
    extra: dict[str, Any] = {"strategy": strategy} if strategy else {}
    d = store.create("deployments", deployment(replicas=replicas, **extra))
    assert resolve_fenceposts(d) == (surge, unavailable)
    c.run()
    [old_rs] = c.replicasets()
    store.patch("deployments", "default", "web",
                {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}})
    steps = 0
    while True:  # one kubelet start at a time: the rollout must keep its bounds at every step
        c.settle()
        rollout_invariants(c, replicas, surge, unavailable)
        if not c.kubelet(limit=1):
            break
        steps += 1
        assert steps < 100
    c.settle()
    rss = {rs["metadata"]["name"]: rs for rs in c.replicasets()}
    new_name = next(n for n in rss if n != old_rs["metadata"]["name"])
    assert rss[old_rs["metadata"]["name"]]["spec"]["replicas"] == 0
    assert rss[new_name]["spec"]["replicas"] == replicas
    assert rss[new_name]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    pods = c.pods()
    assert len(pods) == replicas and all(p["spec"]["containers"][0]["image"] == "nginx:1.25" for p in pods)
    st = store.get("deployments", "default", "web")["status"]
    assert st["updatedReplicas"] == replicas and st["availableReplicas"] == replicas
    assert store.get("deployments", "default", "web")["metadata"]["annotations"][
        "deployment.kubernetes.io/revision"] == "2"


def test_recreate_strategy(store: Store) -> None:
    c = Cluster(store)
    store.create("deployments", deployment(replicas=3, strategy={"type": "Recreate"}))
    c.run()
    store.patch("deployments", "default", "web",
                {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}})
    c.settle()
    images = {p["spec"]["containers"][0]["image"] for p in c.pods()}
    assert images == {"nginx:2"}  # the old pods were gone before any new one
    c.run()
    assert len(c.pods()) == 3


def test_rollback_reuses_the_old_replicaset(store: Store) -> None:
    c = Cluster(store)
    store.create("deployments", deployment(replicas=2))
    c.run()
    [first] = c.replicasets()
    for image in ("nginx:2", "nginx"):
        store.patch("deployments", "default", "web",
                    {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image,
                                                                    "ports": [{"containerPort": 80}]}]}}}})
        c.run()
    rss = {rs["metadata"]["name"]: rs for rs in c.replicasets()}
    assert len(rss) == 2 and rss[first["metadata"]["name"]]["spec"]["replicas"] == 2
    assert rss[first["metadata"]["name"]]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_cascading_delete(store: Store) -> None:
    c = Cluster(store)
    store.create("deployments", deployment(replicas=3))
    c.run()
    store.delete("deployments", "default", "web")
    c.run()
    assert c.replicasets() == [] and c.pods() == []


def test_pod_template_hash_is_stable_and_template_dependent() -> None:
    t1 = deployment()["spec"]["template"]
    t2 = deployment(image="nginx:2")["spec"]["template"]
    assert pod_template_hash(t1) == pod_template_hash(t1) != pod_template_hash(t2)
    assert pod_template_hash(t1) != pod_template_hash(t1, 1)
    assert safe_encode("0123") == "".join(ALPHANUMS[ord(ch) % 27] for ch in "0123")


def test_deployment_validation(store: Store) -> None:
    bad = deployment()
    bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(StatusError) as e:
        store.create("deployments", bad)
    assert e.value.code == 422
    assert 'spec.template.metadata.labels: Invalid value: map[string]string{"app":"other"}: `selector` does not ' \
           "match template `labels`" in e.value.message
    bad = deployment(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}})
    with pytest.raises(StatusError) as e:
        store.create("deployments", bad)
    assert "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0" in \
        e.value.message
    store.create("deployments", deployment())
    with pytest.raises(StatusError) as e:
        store.patch("deployments", "default", "web", {"spec": {"selector": {"matchLabels": {"app": "x"}},
                                                               "template": {"metadata": {"labels": {"app": "x"}}}}})
    assert "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"x\"}, " \
           "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable" in e.value.message

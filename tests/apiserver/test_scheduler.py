"""The scheduler over a real Store: filters, spreading, FailedScheduling, retries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.apiserver.controllers import Informers, install_admission
from agents.apiserver.rest import Router
from agents.apiserver.scheduler import Scheduler, fit_error_message
from agents.apiserver.store import Store

CLOCK = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "sched.sqlite"), clock=lambda: CLOCK)
    Router(s).bootstrap()
    install_admission(s)
    yield s
    s.close()


def node(store: Store, name: str, os_: str = "linux", ready: str = "True", taints: list[Any] | None = None,
         pods: int = 110, unschedulable: bool = False) -> None:
    spec: dict[str, Any] = {"taints": taints} if taints else {}
    if unschedulable:
        spec["unschedulable"] = True
    store.create("nodes", {"metadata": {"name": name, "labels": {"kubernetes.io/os": os_,
                                                                 "kubernetes.io/hostname": name}},
                           "spec": spec,
                           "status": {"allocatable": {"pods": str(pods)},
                                      "conditions": [{"type": "Ready", "status": ready}]}})


def pod(store: Store, name: str, owner: str | None = None, **spec: Any) -> None:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": owner,
                                    "controller": True}]
    store.create("pods", {"metadata": meta, "spec": {"containers": [{"name": "c", "image": "nginx"}], **spec},
                          "status": {"phase": "Pending"}})


def placed(store: Store, name: str) -> str | None:
    result: str | None = store.get("pods", "default", name)["spec"].get("nodeName")
    return result


def cond(store: Store, name: str) -> dict[str, Any]:
    return next(c for c in store.get("pods", "default", name)["status"]["conditions"] if c["type"] == "PodScheduled")


def events(store: Store, reason: str) -> list[dict[str, Any]]:
    return [e for e in store.list("events", "default")[0] if e["reason"] == reason]


UNREACHABLE = [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
               {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]


@pytest.mark.parametrize(("spec", "expect"), [
    ({}, "lin-a"),                                                    # fewest pods, then name
    ({"nodeSelector": {"kubernetes.io/os": "windows"}}, "win-a"),
    ({"nodeSelector": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": "lin-b"}}, "lin-b"),
    ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["dead"]}]}]}}},
      "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]}, "dead"),
    ({"nodeSelector": {"kubernetes.io/os": "plan9"}}, None),
    ({"nodeSelector": {"kubernetes.io/hostname": "dead"}}, None),      # tainted
])
def test_filters(store: Store, spec: dict[str, Any], expect: str | None) -> None:
    node(store, "lin-a")
    node(store, "lin-b")
    node(store, "win-a", os_="windows")
    node(store, "dead", taints=UNREACHABLE)
    sched = Scheduler(store, Informers(store), clock=lambda: CLOCK)
    pod(store, "p", **spec)
    [decision] = sched.sync()
    assert decision.node == expect and placed(store, "p") == expect
    if expect:
        assert cond(store, "p")["status"] == "True"
        assert events(store, "Scheduled")[0]["message"] == f"Successfully assigned default/p to {expect}"


def test_failed_scheduling_message_and_event(store: Store) -> None:
    node(store, "n1", os_="windows")
    node(store, "n2", taints=UNREACHABLE)
    node(store, "n3", taints=UNREACHABLE)
    sched = Scheduler(store, Informers(store), clock=lambda: CLOCK)
    pod(store, "web", nodeSelector={"kubernetes.io/os": "linux"})
    sched.sync()
    msg = ("0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 node(s) had untolerated "
           "taint {node.kubernetes.io/unreachable: }. preemption: 0/3 nodes are available: 3 Preemption is not "
           "helpful for scheduling.")
    c = cond(store, "web")
    assert (c["status"], c["reason"], c["message"]) == ("False", "Unschedulable", msg)
    pod_obj = store.get("pods", "default", "web")
    assert pod_obj["status"]["phase"] == "Pending" and "nodeName" not in pod_obj["spec"]
    [ev] = events(store, "FailedScheduling")
    assert (ev["type"], ev["message"], ev["source"]["component"], ev["count"]) == \
        ("Warning", msg, "default-scheduler", 1)
    assert ev["involvedObject"]["name"] == "web" and ev["involvedObject"]["kind"] == "Pod"
    # retried when a node changes; the same failure bumps the event's count
    store.patch("nodes", None, "n1", {"metadata": {"labels": {"kubernetes.io/os": "windows", "x": "y"}}})
    assert sched.pending()
    sched.sync()
    assert events(store, "FailedScheduling")[0]["count"] == 2
    # a node that fits arrives: bound
    node(store, "n4")
    assert [d.node for d in sched.sync()] == ["n4"]
    assert cond(store, "web")["status"] == "True"


@pytest.mark.parametrize(("reasons", "total", "expect"), [
    ({}, 0, "no nodes available to schedule pods"),
    ({"a": "Too many pods", "b": "node(s) were unschedulable"}, 2,
     "0/2 nodes are available: 1 Too many pods, 1 node(s) were unschedulable. preemption: 0/2 nodes are available: "
     "1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."),
])
def test_fit_error_message(reasons: dict[str, str], total: int, expect: str) -> None:
    assert fit_error_message(reasons, {n: r == "Too many pods" for n, r in reasons.items()}, total) == expect


def test_max_pods_counted(store: Store) -> None:
    node(store, "small", pods=2)
    sched = Scheduler(store, Informers(store), clock=lambda: CLOCK)
    for i in range(3):
        pod(store, f"p{i}")
    decisions = sched.sync()
    assert [d.node for d in decisions] == ["small", "small", None]
    assert decisions[2].message.startswith("0/1 nodes are available: 1 Too many pods. preemption: 0/1 nodes are "
                                           "available: 1 No preemption victims found for incoming pod.")
    store.delete("pods", "default", "p0")  # capacity freed: the unschedulable pod is retried
    assert sched.pending()
    assert [d.node for d in sched.sync()] == ["small"]


def test_not_ready_and_unschedulable_nodes(store: Store) -> None:
    node(store, "flaky", ready="False")  # NotReady, not tainted yet: treated as not-ready tainted
    node(store, "cordoned", unschedulable=True)
    sched = Scheduler(store, Informers(store), clock=lambda: CLOCK)
    pod(store, "p")
    [d] = sched.sync()
    assert d.node is None
    assert d.message.startswith("0/2 nodes are available: 1 node(s) had untolerated taint "
                                "{node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable.")
    store.patch("nodes", None, "flaky", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                subresource="status")
    assert [d.node for d in sched.sync()] == ["flaky"]


def test_default_tolerations_do_not_admit_tainted_nodes_for_scheduling(store: Store) -> None:
    """DefaultTolerationSeconds tolerates NoExecute only: NoSchedule still keeps pods off."""
    node(store, "dead", taints=UNREACHABLE)
    sched = Scheduler(store, Informers(store), clock=lambda: CLOCK)
    pod(store, "p")
    tols = store.get("pods", "default", "p")["spec"]["tolerations"]
    assert {t["key"] for t in tols} == {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
    assert sched.sync()[0].node is None


def test_spreading(store: Store) -> None:
    for n in ("a", "b", "c"):
        node(store, n)
    pod(store, "other1", nodeName="a")
    pod(store, "other2", nodeName="a")
    sched = Scheduler(store, Informers(store), clock=lambda: CLOCK)
    for i in range(9):
        pod(store, f"rs-{i}", owner="rs1")
    sched.sync()
    per_node = Counter(placed(store, f"rs-{i}") for i in range(9))
    assert per_node == {"a": 3, "b": 3, "c": 3}  # one ReplicaSet spreads evenly despite a's other pods
    for i in range(3):
        pod(store, f"solo-{i}")
    sched.sync()
    assert {placed(store, f"solo-{i}") for i in range(3)} == {"b", "c"}  # fewest pods in total


def test_scheduler_name_and_bound_pods_are_left_alone(store: Store) -> None:
    node(store, "a")
    sched = Scheduler(store, Informers(store), clock=lambda: CLOCK)
    pod(store, "custom", schedulerName="my-scheduler")
    pod(store, "bound", nodeName="elsewhere")
    assert sched.sync() == [] and placed(store, "custom") is None


@pytest.mark.parametrize(("spec", "message"), [
    ({"containers": []}, "spec.containers: Required value"),
    ({"containers": [{"name": "c"}]}, "spec.containers[0].image: Required value"),
    ({"containers": [{"image": "x"}]}, "spec.containers[0].name: Required value"),
    ({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 0}]}]},
     "spec.containers[0].ports[0].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive"),
    ({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": "80"}]}]},
     'spec.containers[0].ports[0].containerPort: Invalid value: "80"'),
    ({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "protocol": "tcp"}]}]},
     'spec.containers[0].ports[0].protocol: Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP"'),
    ({"containers": [{"name": "c", "image": "x"}], "tolerations": [{"key": "k", "operator": "Maybe"}]},
     'spec.tolerations[0].operator: Unsupported value: "Maybe"'),
    ({"containers": [{"name": "c", "image": "x"}],
      "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]},
     "spec.tolerations[0].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` "
     "is set"),
])
def test_pod_validation(store: Store, spec: dict[str, Any], message: str) -> None:
    from agents.apiserver.errors import StatusError

    with pytest.raises(StatusError) as e:
        store.create("pods", {"metadata": {"name": "p", "namespace": "default"}, "spec": spec})
    assert e.value.code == 422 and message in e.value.message

"""The scheduler (kube-scheduler's default profile, reduced to what this emulator models), sans-IO.

Pods without ``spec.nodeName`` (and ``schedulerName`` unset or ``default-scheduler``) are bound
to a node.  Filters, in upstream's plugin order — the first one that rejects a node names the
reason for that node:

* NodeUnschedulable — ``spec.unschedulable`` → "node(s) were unschedulable"
* TaintToleration — a NoSchedule/NoExecute taint the pod does not tolerate → "node(s) had
  untolerated taint {key: value}".  A node whose Ready condition is not True but which has no
  ``not-ready``/``unreachable`` taint yet (the node lifecycle controller adds them within a
  monitor period) counts as tainted ``node.kubernetes.io/not-ready``, so a dying node gets no
  pods in that window either.
* NodeAffinity — ``spec.nodeSelector`` (e.g. ``kubernetes.io/os: windows``) and required node
  affinity terms → "node(s) didn't match Pod's node affinity/selector"
* NodeResourcesFit — ``status.allocatable.pods`` (AKS-HCI's ``nodeMaxPodCount``) → "Too many pods"

Scoring spreads: the fewest pods of the same owner (a ReplicaSet: what the default
PodTopologySpread constraint on ``kubernetes.io/hostname`` does), then the fewest pods in
total, then the node name (deterministic where upstream picks at random among equals).

No node fits → the pod stays Pending with ``PodScheduled=False`` reason ``Unschedulable`` and a
``FailedScheduling`` Warning event with upstream's message, e.g.
``0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 node(s) had
untolerated taint {node.kubernetes.io/unreachable: }. preemption: 0/3 nodes are available: 3
Preemption is not helpful for scheduling.``  Unschedulable pods are retried when a node is
added or changes, or when a bound pod goes away (capacity freed), as upstream's queue moves them.
Bound: ``PodScheduled=True`` and a ``Scheduled`` event ("Successfully assigned ns/pod to node").
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .controllers import TAINT_NOT_READY, TAINT_UNREACHABLE, EventRecorder, Informers, owner_uid, tolerates
from .errors import StatusError
from .store import Obj, Store, timestamp

log = logging.getLogger("hcinet.apiserver.scheduler")

SCHEDULER_NAME = "default-scheduler"
DEFAULT_MAX_PODS = 110

# Filter reasons (the plugins' status messages) and whether preemption could help.
R_UNSCHEDULABLE = "node(s) were unschedulable"
R_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
R_TOO_MANY_PODS = "Too many pods"
_UNRESOLVABLE = "Preemption is not helpful for scheduling"
_NO_VICTIMS = "No preemption victims found for incoming pod"


@dataclass(frozen=True, slots=True)
class Decision:
    namespace: str
    pod: str
    node: str | None      # None: unschedulable
    message: str = ""     # the FailedScheduling message when unschedulable


def fit_error_message(reasons: Mapping[str, str], resolvable: Mapping[str, bool], total: int) -> str:
    """``FitError.Error()``: "0/N nodes are available: <count reason>, ... ." + the
    preemption post-filter's own summary (every pod has the same priority here, so preemption
    never finds a victim)."""
    if total == 0:
        return "no nodes available to schedule pods"
    hist = Counter(reasons.values())
    msg = f"0/{total} nodes are available: " + ", ".join(sorted(f"{n} {r}" for r, n in hist.items())) + "."
    pre = Counter(_NO_VICTIMS if resolvable.get(node) else _UNRESOLVABLE for node in reasons)
    return msg + f" preemption: 0/{total} nodes are available: " + \
        ", ".join(sorted(f"{n} {r}" for r, n in pre.items())) + "."


def _labels(obj: Obj) -> Mapping[str, str]:
    labels = obj["metadata"].get("labels")
    return labels if isinstance(labels, dict) else {}


def _node_ready(node: Obj) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def node_taints(node: Obj) -> list[dict[str, Any]]:
    """The node's taints, plus the implicit not-ready one (see the module docstring)."""
    taints = [t for t in (node.get("spec") or {}).get("taints") or () if isinstance(t, dict)]
    if not _node_ready(node) and not any(t.get("key") in (TAINT_NOT_READY, TAINT_UNREACHABLE) for t in taints):
        taints.append({"key": TAINT_NOT_READY, "effect": "NoSchedule"})
    return taints


def max_pods(node: Obj) -> int:
    raw = ((node.get("status") or {}).get("allocatable") or {}).get("pods")
    try:
        return int(raw) if raw is not None else DEFAULT_MAX_PODS
    except (TypeError, ValueError):
        return DEFAULT_MAX_PODS


def _match_expression(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op = expr.get("key"), expr.get("operator")
    values = [str(v) for v in expr.get("values") or ()]
    has = key in labels
    value = labels.get(str(key))
    if op == "In":
        return has and value in values
    if op == "NotIn":
        return not has or value not in values
    if op == "Exists":
        return has
    if op == "DoesNotExist":
        return not has
    if op in ("Gt", "Lt") and has and values:
        try:
            a, b = int(str(value)), int(values[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def matches_node_selector(pod: Obj, node: Obj) -> bool:
    """``spec.nodeSelector`` (every pair) and required node affinity (any term, every
    expression of it) — the NodeAffinity filter."""
    spec = pod.get("spec") or {}
    labels = _labels(node)
    selector = spec.get("nodeSelector") or {}
    if isinstance(selector, dict) and any(labels.get(k) != v for k, v in selector.items()):
        return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") if isinstance(required, dict) else None
    if not terms:
        return True
    name = node["metadata"]["name"]
    for term in terms:
        if not isinstance(term, dict):
            continue
        exprs = term.get("matchExpressions") or []
        fields = term.get("matchFields") or []
        if not exprs and not fields:
            continue  # an empty term matches nothing
        if all(_match_expression(e, labels) for e in exprs) and \
                all(_match_expression(f, {"metadata.name": name}) for f in fields):
            return True
    return False


class Scheduler:
    """See the module docstring.  Feed it with the shared informers; call :meth:`sync`."""

    def __init__(self, store: Store, informers: Informers, *, clock: Callable[[], float] = time.time,
                 name: str = SCHEDULER_NAME) -> None:
        self.store = store
        self.name = name
        self.clock = clock
        self.pods = informers("pods")
        self.nodes = informers("nodes")
        self.events = EventRecorder(store, name, clock=clock)
        self.queue: set[tuple[str, str]] = set()
        self.unschedulable: set[tuple[str, str]] = set()
        self.bound = 0
        self.failed = 0
        # the scheduler cache: where each bound, non-terminal pod is (node, owner uid)
        self._where: dict[tuple[str, str], tuple[str, str | None]] = {}
        self.counts: Counter[str] = Counter()
        self.by_owner: Counter[tuple[str, str]] = Counter()
        self.pods.handlers.append(self._on_pod)
        self.nodes.handlers.append(self._on_node)
        for pod in self.pods.all():
            self._on_pod("ADDED", pod, None)

    # -- events --

    def _wants(self, pod: Obj) -> bool:
        spec = pod.get("spec") or {}
        return not spec.get("nodeName") and spec.get("schedulerName", self.name) in (self.name, None, "") and \
            not pod["metadata"].get("deletionTimestamp") and \
            (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")

    def _track(self, etype: str, key: tuple[str, str], pod: Obj) -> None:
        old = self._where.pop(key, None)
        if old is not None:
            self._count(old, -1)
        node = (pod.get("spec") or {}).get("nodeName")
        if etype != "DELETED" and node and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            where = (str(node), owner_uid(pod))
            self._where[key] = where
            self._count(where, 1)

    def _count(self, where: tuple[str, str | None], delta: int) -> None:
        node, uid = where
        self.counts[node] += delta
        if self.counts[node] <= 0:
            del self.counts[node]
        if uid:
            self.by_owner[(node, uid)] += delta
            if self.by_owner[(node, uid)] <= 0:
                del self.by_owner[(node, uid)]

    def _on_pod(self, etype: str, pod: Obj, prev: Obj | None) -> None:
        meta = pod["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        self._track(etype, key, pod)
        if etype == "DELETED":
            self.queue.discard(key)
            self.unschedulable.discard(key)
            if (pod.get("spec") or {}).get("nodeName"):
                self._retry_unschedulable()
            return
        if self._wants(pod):
            if key not in self.unschedulable:
                self.queue.add(key)
        else:
            self.queue.discard(key)
            self.unschedulable.discard(key)

    def _on_node(self, etype: str, node: Obj, prev: Obj | None) -> None:
        if etype == "DELETED":
            return
        if prev is None or _labels(node) != _labels(prev) or node.get("spec") != prev.get("spec") or \
                _node_ready(node) != _node_ready(prev) or max_pods(node) != max_pods(prev):
            self._retry_unschedulable()

    def _retry_unschedulable(self) -> None:
        if self.unschedulable:
            self.queue |= self.unschedulable
            self.unschedulable.clear()

    def pending(self) -> bool:
        return bool(self.queue)

    # -- scheduling --

    def sync(self, now: float | None = None) -> list[Decision]:
        """Try every queued pod (oldest first); returns the decisions made."""
        if not self.queue:
            return []
        nodes = sorted((n for n in self.nodes.all()), key=lambda n: n["metadata"]["name"])
        queue = [self.pods.get(*key) for key in self.queue]
        self.queue.clear()
        todo = sorted((p for p in queue if p is not None and self._wants(p)),
                      key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"].get("namespace", ""),
                                     p["metadata"]["name"]))
        decisions = []
        with self.store.batch():
            for pod in todo:
                decisions.append(self._schedule_one(pod, nodes, self.counts, self.by_owner))
        return decisions

    def _schedule_one(self, pod: Obj, nodes: list[Obj], counts: Counter[str],
                      by_owner: Counter[tuple[str, str]]) -> Decision:
        meta = pod["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        feasible, reasons, resolvable = self.filter(pod, nodes, counts)
        if not feasible:
            message = fit_error_message(reasons, resolvable, len(nodes))
            self._unschedulable(pod, message)
            return Decision(ns, name, None, message)
        uid = owner_uid(pod)
        best = min(feasible, key=lambda n: (by_owner[(n, uid)] if uid else 0, counts[n], n))
        if self._bind(pod, best):  # the informer's update moves the counts
            return Decision(ns, name, best)
        return Decision(ns, name, None, "binding failed")

    def filter(self, pod: Obj, nodes: Iterable[Obj], counts: Mapping[str, int]
               ) -> tuple[list[str], dict[str, str], dict[str, bool]]:
        """(feasible node names, {node: the first failing filter's reason}, {node: preemption
        could help})."""
        feasible: list[str] = []
        reasons: dict[str, str] = {}
        resolvable: dict[str, bool] = {}
        tolerations = (pod.get("spec") or {}).get("tolerations") or ()
        for node in nodes:
            n = node["metadata"]["name"]
            reason = self._reject(pod, node, tolerations, counts.get(n, 0))
            if reason is None:
                feasible.append(n)
            else:
                reasons[n] = reason
                resolvable[n] = reason == R_TOO_MANY_PODS
        return feasible, reasons, resolvable

    @staticmethod
    def _reject(pod: Obj, node: Obj, tolerations: Any, count: int) -> str | None:
        spec = node.get("spec") or {}
        if spec.get("unschedulable") and tolerates(tolerations, {"key": "node.kubernetes.io/unschedulable",
                                                                  "effect": "NoSchedule"}) is None:
            return R_UNSCHEDULABLE
        for taint in node_taints(node):
            if taint.get("effect") in ("NoSchedule", "NoExecute") and tolerates(tolerations, taint) is None:
                return f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"
        if not matches_node_selector(pod, node):
            return R_AFFINITY
        if count + 1 > max_pods(node):
            return R_TOO_MANY_PODS
        return None

    def _bind(self, pod: Obj, node: str) -> bool:
        meta = pod["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        try:
            status = self._set_condition(pod, {"type": "PodScheduled", "status": "True"})
            if status is not None:
                self.store.patch("pods", ns, name, {"status": status}, subresource="status")
            obj = self.store.patch("pods", ns, name, {"spec": {"nodeName": node}})
        except StatusError as exc:  # deleted meanwhile, or a conflicting write: requeue
            log.info("binding %s/%s to %s failed: %s", ns, name, node, exc.message)
            if exc.code != 404:
                self.queue.add((ns, name))
            return False
        self.pods.wrote(obj)
        self.bound += 1
        self.events.event(obj, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {node}")
        return True

    def _unschedulable(self, pod: Obj, message: str) -> None:
        meta = pod["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        self.failed += 1
        self.unschedulable.add((ns, name))
        status = self._set_condition(pod, {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                           "message": message})
        try:
            if status is not None:
                self.pods.wrote(self.store.patch("pods", ns, name, {"status": status}, subresource="status"))
        except StatusError as exc:
            log.info("pod %s/%s: recording Unschedulable failed: %s", ns, name, exc.message)
            return
        self.events.event(pod, "Warning", "FailedScheduling", message)

    def _set_condition(self, pod: Obj, cond: dict[str, Any]) -> dict[str, Any] | None:
        """The pod's status with ``cond`` merged in (upstream's UpdatePodCondition: the
        transition time changes only with the status); None when nothing changes."""
        status = dict(pod.get("status") or {})
        conditions = [dict(c) for c in status.get("conditions") or () if isinstance(c, dict)]
        cur = next((c for c in conditions if c.get("type") == cond["type"]), None)
        if cur is not None and all(cur.get(k) == v for k, v in cond.items()):
            return None
        stamp = timestamp(self.clock())
        new = {**cond, "lastTransitionTime": cur.get("lastTransitionTime") if cur and cur.get("status") == cond["status"]
               else stamp}
        if cur is None:
            conditions.append(new)
        else:
            conditions[conditions.index(cur)] = new
        status["conditions"] = conditions
        status.setdefault("phase", "Pending")
        return status

"""Controllers that need only the store (kube-controller-manager's, run in the API server VM).

Sans-IO-ish: plain classes over a :class:`~.store.Store`, driven by the VM's loop with ``now``
(monotonic seconds) passed in; wall-clock timestamps written into objects come from ``clock``.

* :class:`NodeIpam` — the node IPAM controller (``--allocate-node-cidrs``, range allocator):
  every Node gets ``spec.podCIDR``/``podCIDRs`` = the lowest free ``10.244.N.0/24`` of the
  cluster CIDR (FACTS.md: pod CIDR 10.244.0.0/16, a /24 per node).  The allocation lives in
  the Node object itself, so it survives restarts; a deleted Node's /24 is free again.
* :class:`NodeLifecycle` — the node lifecycle controller: every ``node_monitor_period`` it
  looks at each Node's Lease (``kube-node-lease/<node>``) and Ready condition heartbeat; a node
  whose heartbeat has not CHANGED for ``node_monitor_grace_period`` (measured on this
  controller's clock, as upstream does, so kubelet clock skew does not matter) gets all its
  conditions set to ``Unknown`` ("NodeStatusUnknown", "Kubelet stopped posting node status.")
  and the ``node.kubernetes.io/unreachable`` taints; a node the kubelet reports Ready=False gets
  ``node.kubernetes.io/not-ready``.  The kubelet flips Ready back; the taints then go.
  Its pods: at the Ready → not-Ready transition their ``Ready`` condition is set False
  (``MarkPodsNotReady``: they leave the EndpointSlices' ready endpoints); with a NoExecute taint
  they are deleted once their toleration runs out (the taint manager: ``tolerationSeconds``,
  scaled by ``time_scale``; 300 s from :func:`default_toleration_seconds` unless the pod says
  otherwise), so their ReplicaSets recreate them where the scheduler can put them.  Pods bound
  to a Node that no longer exists are deleted too (PodGC).
* :class:`Informers` — the controllers' shared caches of the store (see :class:`Informer`),
  :class:`EventRecorder` (core/v1 Events with count dedup), and the Pod admission plugin
  DefaultTolerationSeconds (:func:`install_admission`).
* :func:`ensure_kubernetes_service` — the ``kubernetes`` Service in ``default`` (10.96.0.1:443)
  with its Endpoints/EndpointSlice pointing at the control-plane node's address:6443.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from agents.timers import Timers

from .errors import StatusError
from .selectors import FieldRequirement
from .store import Event, Obj, Store, timestamp

log = logging.getLogger("hcinet.apiserver.controllers")

CLUSTER_CIDR = "10.244.0.0/16"
NODE_CIDR_MASK = 24
KUBERNETES_SERVICE_IP = "10.96.0.1"
LEASE_NAMESPACE = "kube-node-lease"

TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
OWNED_TAINTS = frozenset({TAINT_UNREACHABLE, TAINT_NOT_READY})


# --- node IPAM ------------------------------------------------------------------------------


class NodeIpam:
    """Range allocator of per-node pod CIDRs (see the module docstring)."""

    def __init__(self, store: Store, cluster_cidr: str = CLUSTER_CIDR, mask: int = NODE_CIDR_MASK) -> None:
        self.store = store
        self.network = ipaddress.ip_network(cluster_cidr)
        if mask < self.network.prefixlen:
            raise ValueError(f"mask: /{mask} is larger than the cluster CIDR {cluster_cidr}")
        self.subnets = list(self.network.subnets(new_prefix=mask))
        self.exhausted = 0  # nodes left without a CIDR because the range is full

    def used(self, nodes: list[Obj]) -> set[str]:
        return {c for n in nodes for c in (n.get("spec") or {}).get("podCIDRs") or
                ([n["spec"]["podCIDR"]] if (n.get("spec") or {}).get("podCIDR") else [])}

    def sync(self) -> dict[str, str]:
        """Give every Node without a pod CIDR the lowest free one; returns {node: cidr}."""
        nodes, _ = self.store.list("nodes")
        used = self.used(nodes)
        pending = sorted((n for n in nodes if not (n.get("spec") or {}).get("podCIDR")),
                         key=lambda n: (n["metadata"].get("creationTimestamp", ""), n["metadata"]["name"]))
        assigned: dict[str, str] = {}
        if not pending:
            return assigned
        free = (str(s) for s in self.subnets if str(s) not in used)
        with self.store.batch():
            for node in pending:
                cidr = next(free, None)
                name = node["metadata"]["name"]
                if cidr is None:
                    self.exhausted += 1
                    log.warning("node IPAM: no pod CIDR left in %s for node %s", self.network, name)
                    break
                try:
                    self.store.patch("nodes", None, name, {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
                except StatusError as exc:
                    log.warning("node IPAM: assigning %s to %s failed: %s", cidr, name, exc.message)
                    continue
                assigned[name] = cidr
        return assigned


# --- node lifecycle -------------------------------------------------------------------------


def _pod_key(pod: Obj) -> tuple[str, str]:
    return pod["metadata"].get("namespace", ""), pod["metadata"]["name"]


@dataclass
class _Probe:
    heartbeat: tuple[Any, Any]  # (lease renewTime, Ready lastHeartbeatTime) last seen
    observed: float             # when this controller saw it change (its own clock)


def _condition(node: Obj, ctype: str) -> dict[str, Any] | None:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None


class NodeLifecycle:
    """See the module docstring.  Call :meth:`tick` every ``timers.node_monitor_period``."""

    def __init__(self, store: Store, timers: Timers, *, clock: Callable[[], float] = time.time,
                 informers: Informers | None = None) -> None:
        self.store = store
        self.timers = timers
        self.clock = clock
        self._probes: dict[str, _Probe] = {}
        self.marked_unknown = 0
        # eviction (the NoExecute taint manager) and MarkPodsNotReady
        self.pods = informers("pods") if informers is not None else None
        self.events = EventRecorder(store, "node-controller", clock=clock)
        self._was_ready: dict[str, bool] = {}
        self._noexec_since: dict[tuple[str, str], float] = {}  # (node, taint key) -> first seen (now)
        self._evict_at: dict[tuple[str, str], float] = {}  # pod -> when its toleration runs out
        self.evicted = 0
        self.marked_not_ready = 0
        self._missing: dict[str, float] = {}  # node a pod is bound to but which does not exist -> since
        self.orphans_deleted = 0

    def next_deadline(self, now: float) -> float:
        """The next monitor pass, or an earlier pod eviction that falls due."""
        return min([now + self.timers.node_monitor_period, *self._evict_at.values()])

    def tick(self, now: float) -> list[str]:
        """One monitor pass; returns the nodes whose object it changed."""
        nodes, _ = self.store.list("nodes")
        leases = {lease["metadata"]["name"]: lease for lease in self.store.list("leases", LEASE_NAMESPACE)[0]}
        changed = []
        seen = set()
        final: list[Obj] = []
        with self.store.batch():
            for node in nodes:
                name = node["metadata"]["name"]
                seen.add(name)
                was, node = self._check(node, leases.get(name), now)
                final.append(node)
                if was:
                    changed.append(name)
            self._pods_of_failed_nodes(final, now)
            self._gc_orphaned(seen, now)
        for gone in set(self._probes) - seen:
            del self._probes[gone]
        for gone in set(self._was_ready) - seen:
            del self._was_ready[gone]
        return changed

    def _check(self, node: Obj, lease: Obj | None, now: float) -> tuple[bool, Obj]:
        name = node["metadata"]["name"]
        ready = _condition(node, "Ready")
        beat = ((lease or {}).get("spec", {}).get("renewTime"), (ready or {}).get("lastHeartbeatTime"))
        probe = self._probes.get(name)
        if probe is None or probe.heartbeat != beat:
            probe = self._probes[name] = _Probe(beat, now)
        changed = False
        if now - probe.observed > self.timers.node_monitor_grace_period and \
                (ready is None or ready.get("status") != "Unknown"):
            node = self._mark_unknown(node, ready is None)
            changed = True
        tainted = self._sync_taints(node)
        return tainted is not None or changed, tainted if tainted is not None else node

    # -- the pods of NotReady nodes --

    def _node_pods(self, node: str) -> list[Obj]:
        if self.pods is not None:
            return [p for p in self.pods.all() if (p.get("spec") or {}).get("nodeName") == node]
        return self.store.list("pods", fields=(FieldRequirement(("spec", "nodeName"), True, node),))[0]

    def _pods_of_failed_nodes(self, nodes: list[Obj], now: float) -> None:
        """MarkPodsNotReady at a node's Ready -> not Ready transition, and taint-based eviction:
        a pod on a node with a NoExecute taint it does not tolerate is deleted at once; one it
        tolerates for ``tolerationSeconds`` (scaled) is deleted when that much time has passed
        since the taint appeared; its owner then recreates it where the scheduler can put it."""
        due: dict[tuple[str, str], float] = {}
        for node in nodes:
            name = node["metadata"]["name"]
            ready = (_condition(node, "Ready") or {}).get("status") == "True"
            was = self._was_ready.get(name, True)
            self._was_ready[name] = ready
            noexec = [t for t in (node.get("spec") or {}).get("taints") or ()
                      if isinstance(t, dict) and t.get("effect") == "NoExecute"]
            keys = {str(t.get("key")) for t in noexec}
            for k in [k for k in self._noexec_since if k[0] == name and k[1] not in keys]:
                del self._noexec_since[k]
            if ready and not noexec:
                continue
            pods = self._node_pods(name)
            if not ready and was:
                self._mark_pods_not_ready(pods)
            for t in noexec:
                self._noexec_since.setdefault((name, str(t.get("key"))), now)
            for pod in pods:
                when = self._eviction_time(pod, name, noexec)
                if when is not None:
                    due[_pod_key(pod)] = when
        self._evict_at = due
        for key, when in sorted(due.items()):
            if when <= now:
                self._evict(key)
                del self._evict_at[key]

    def _gc_orphaned(self, nodes: set[str], now: float) -> None:
        """PodGC's ``gcOrphaned``: pods bound to a Node that no longer exists (a removed node
        VM) are deleted once it has been missing for a monitor period, so their owners
        replace them."""
        if self.pods is None:
            return
        missing = {str(node) for p in self.pods.all() if (node := (p.get("spec") or {}).get("nodeName"))
                   and node not in nodes}
        self._missing = {n: self._missing.get(n, now) for n in missing}
        due = {n for n, since in self._missing.items() if now - since >= self.timers.node_monitor_period}
        if not due:
            return
        for pod in [p for p in self.pods.all() if (p.get("spec") or {}).get("nodeName") in due]:
            self._evict(_pod_key(pod), reason=None)
            self.orphans_deleted += 1

    def _eviction_time(self, pod: Obj, node: str, noexec: list[dict[str, Any]]) -> float | None:
        """``getMinTolerationTime`` over the NoExecute taints: now for an untolerated one, the
        taint's start + the smallest tolerationSeconds (scaled), or None (tolerated forever)."""
        if not noexec or pod["metadata"].get("deletionTimestamp"):
            return None
        tolerations = (pod.get("spec") or {}).get("tolerations") or ()
        when: float | None = None
        for taint in noexec:
            start = self._noexec_since.get((node, str(taint.get("key"))), 0.0)
            matching = [t for t in tolerations if isinstance(t, dict) and
                        _tolerates(t, str(taint.get("key") or ""), "NoExecute", str(taint.get("value") or ""))]
            if not matching:
                return start  # not tolerated: evict now
            secs = [t["tolerationSeconds"] for t in matching
                    if isinstance(t.get("tolerationSeconds"), int | float) and not isinstance(t["tolerationSeconds"],
                                                                                            bool)]
            if not secs:
                continue  # tolerated forever
            at = start + self.timers.scaled(max(min(secs), 0))
            when = at if when is None else min(when, at)
        return when

    def _mark_pods_not_ready(self, pods: list[Obj]) -> None:
        stamp = timestamp(self.clock())
        for pod in pods:
            status = pod.get("status") or {}
            conds = [dict(c) for c in status.get("conditions") or () if isinstance(c, dict)]
            changed = False
            for c in conds:
                if c.get("type") == "Ready" and c.get("status") != "False":
                    c.update({"status": "False", "lastTransitionTime": stamp})
                    changed = True
            if not changed:
                continue
            ns, name = _pod_key(pod)
            try:
                obj = self.store.patch("pods", ns, name, {"status": {"conditions": conds}}, subresource="status")
            except StatusError as exc:
                log.info("marking pod %s/%s not ready: %s", ns, name, exc.message)
                continue
            if self.pods is not None:
                self.pods.wrote(obj)
            self.marked_not_ready += 1
            self.events.event(obj, "Warning", "NodeNotReady", "Node is not ready")

    def _evict(self, key: tuple[str, str], reason: str | None = "TaintManagerEviction") -> None:
        ns, name = key
        try:
            pod = self.store.get("pods", ns, name)
            gone = self.store.delete("pods", ns, name)
        except StatusError:
            return
        if self.pods is not None:
            self.pods.forget(gone)
        node = (pod.get("spec") or {}).get("nodeName")
        if reason is None:
            log.info("deleting orphaned pod %s/%s (node %s is gone)", ns, name, node)
            return
        self.evicted += 1
        log.info("evicting pod %s/%s from node %s", ns, name, node)
        self.events.event(pod, "Normal", reason, f"Marking for deletion Pod {ns}/{name}")

    def _mark_unknown(self, node: Obj, never: bool) -> Obj:
        stamp = timestamp(self.clock())
        status = node.setdefault("status", {})
        conditions = status.setdefault("conditions", [])
        if never:
            conditions.append({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                               "message": "Kubelet never posted node status.",
                               "lastHeartbeatTime": node["metadata"].get("creationTimestamp"),
                               "lastTransitionTime": stamp})
        for cond in conditions:
            if cond.get("status") != "Unknown":
                cond.update({"status": "Unknown", "reason": "NodeStatusUnknown",
                             "message": "Kubelet stopped posting node status.", "lastTransitionTime": stamp})
        self.marked_unknown += 1
        log.info("node %s: no heartbeat for %.1f s: Ready=Unknown", node["metadata"]["name"],
                 self.timers.node_monitor_grace_period)
        updated: Obj = self.store.update_status("nodes", node)
        return updated

    def _sync_taints(self, node: Obj) -> Obj | None:
        ready = _condition(node, "Ready")
        status = (ready or {}).get("status")
        key = TAINT_UNREACHABLE if status == "Unknown" else TAINT_NOT_READY if status == "False" else None
        spec = node.get("spec") or {}
        taints = [t for t in spec.get("taints") or [] if isinstance(t, dict)]
        kept = [t for t in taints if t.get("key") not in OWNED_TAINTS]
        current = {(t.get("key"), t.get("effect")) for t in taints if t.get("key") in OWNED_TAINTS}
        want = {(key, "NoSchedule"), (key, "NoExecute")} if key else set()
        if current == want:
            return None
        new = list(kept)
        stamp = timestamp(self.clock())
        for k, effect in sorted(want, key=lambda x: x[1], reverse=True):  # NoSchedule, then NoExecute
            taint: dict[str, Any] = {"key": k, "effect": effect}
            if effect == "NoExecute":
                taint["timeAdded"] = stamp
            new.append(taint)
        out: Obj = self.store.patch("nodes", None, node["metadata"]["name"], {"spec": {"taints": new or None}})
        return out


# --- shared informers (the controllers' caches of the store) --------------------------------


Handler = Callable[[str, Obj, "Obj | None"], None]  # (event type, object, previous cached object)


class Informer:
    """One resource's objects, kept from the store's committed events (a SharedInformer).

    ``objs[namespace][name]`` are parsed once and shared: handlers and controllers must not
    mutate them.  A controller that writes puts the store's answer back with :meth:`wrote`
    (and :meth:`forget` for its deletes), so its next pass sees its own writes before their
    events are published — upstream's "expectations"; an older event never replaces a newer
    object (resourceVersions are one global counter)."""

    def __init__(self, store: Store, plural: str) -> None:
        self.store = store
        self.plural = plural
        self.objs: dict[str, dict[str, Obj]] = {}
        self.handlers: list[Handler] = []
        self._gone: dict[tuple[str, str], int] = {}  # deleted by our own write: rv, until its event
        items, _ = store.list(plural)
        for obj in items:
            self._put(obj)
        _, self.sub = store.watch(plural, None, store.rv, self._on_event)

    @staticmethod
    def _rv(obj: Obj) -> int:
        return int(obj["metadata"].get("resourceVersion") or 0)

    def _put(self, obj: Obj) -> None:
        meta = obj["metadata"]
        self.objs.setdefault(meta.get("namespace", ""), {})[meta["name"]] = obj

    def get(self, ns: str, name: str) -> Obj | None:
        return self.objs.get(ns, {}).get(name)

    def namespace(self, ns: str) -> dict[str, Obj]:
        return self.objs.get(ns, {})

    def all(self) -> Iterator[Obj]:
        for objs in self.objs.values():
            yield from objs.values()

    def __len__(self) -> int:
        return sum(len(v) for v in self.objs.values())

    def _on_event(self, ev: Event) -> None:
        key = (ev.namespace, ev.name)
        prev = self.get(*key)
        if ev.type == "DELETED":
            gone = self._gone.pop(key, None)
            if (gone is not None and gone >= ev.rv) or (prev is not None and self._rv(prev) >= ev.rv):
                return  # our own delete, already applied; or re-created since (by us)
            obj = ev.object()
            if prev is not None:
                del self.objs[ev.namespace][ev.name]
            self._notify("DELETED", obj, prev)
            return
        if prev is not None and self._rv(prev) >= ev.rv:
            return  # we already hold this version (our own write) or a newer one
        if self._gone.get(key, -1) > ev.rv:
            return  # an older version of something we deleted since
        obj = ev.object()
        self._put(obj)
        self._notify(ev.type, obj, prev)

    def _notify(self, etype: str, obj: Obj, prev: Obj | None) -> None:
        for h in self.handlers:
            try:
                h(etype, obj, prev)
            except Exception:  # a broken handler must not cost the others (or the store's watch) events
                log.exception("%s informer: handler %r failed", self.plural, h)

    def wrote(self, obj: Obj) -> None:
        """Our own create/update/patch answered ``obj``: cache it now and tell the handlers."""
        meta = obj["metadata"]
        prev = self.get(meta.get("namespace", ""), meta["name"])
        if prev is not None and self._rv(prev) >= self._rv(obj):
            return
        self._put(obj)
        self._notify("ADDED" if prev is None else "MODIFIED", obj, prev)

    def forget(self, obj: Obj) -> None:
        """Our own delete answered ``obj`` (the object as deleted, with the delete's rv)."""
        meta = obj["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        prev = self.objs.get(ns, {}).pop(name, None)
        self._gone[(ns, name)] = self._rv(obj)
        if prev is not None:
            self._notify("DELETED", obj, prev)

    def close(self) -> None:
        self.sub.close()


class Informers:
    """One :class:`Informer` per resource, shared by every controller of the VM."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by: dict[str, Informer] = {}

    def __call__(self, plural: str) -> Informer:
        inf = self._by.get(plural)
        if inf is None:
            inf = self._by[plural] = Informer(self.store, plural)
        return inf

    def close(self) -> None:
        for inf in self._by.values():
            inf.close()
        self._by.clear()


def sync_until_idle(controllers: Iterable[Any], rounds: int = 30) -> None:
    """Run every controller with work pending (``pending()`` / ``sync()``) until none has any;
    what the API server VM's loop does turn by turn, done at once (tests, in-process tools).
    Raises RuntimeError if they still have work after ``rounds`` passes (a feedback loop)."""
    ctrls = list(controllers)
    for _ in range(rounds):
        busy = [c for c in ctrls if c.pending()]
        if not busy:
            return
        for c in busy:
            c.sync()
    raise RuntimeError(f"controllers did not settle in {rounds} rounds: "
                       + ", ".join(type(c).__name__ for c in ctrls if c.pending()))


def owner_uid(obj: Obj, kind: str | None = None) -> str | None:
    """The uid of ``obj``'s controller ownerReference (of ``kind``, if given)."""
    for ref in obj["metadata"].get("ownerReferences") or ():
        if isinstance(ref, dict) and ref.get("controller") and (kind is None or ref.get("kind") == kind):
            uid = ref.get("uid")
            return uid if isinstance(uid, str) else None
    return None


def pod_ready(pod: Obj) -> bool:
    """``podutil.IsPodReady``: the Ready condition is True."""
    cond = _condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def pod_active(pod: Obj) -> bool:
    """``controller.IsPodActive``: not terminal and not being deleted."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and \
        not pod["metadata"].get("deletionTimestamp")


class EventRecorder:
    """core/v1 Events (``kubectl describe`` shows them) with the correlator's dedup: the same
    (object, reason, message) again bumps ``count`` and ``lastTimestamp`` of one Event."""

    def __init__(self, store: Store, component: str, *, clock: Callable[[], float] = time.time,
                 host: str = "") -> None:
        self.store = store
        self.component = component
        self.clock = clock
        self.host = host
        self._seen: dict[tuple[str, str, str, str, str], str] = {}  # (ns, uid, reason, message, type) -> name
        self._n = 0
        self.recorded = 0

    def event(self, obj: Obj, etype: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        ns = meta.get("namespace") or "default"
        key = (ns, str(meta.get("uid", meta["name"])), reason, message, etype)
        stamp = timestamp(self.clock())
        name = self._seen.get(key)
        try:
            if name is not None and self.store.exists("events", ns, name):
                cur = self.store.get("events", ns, name)
                cur["count"] = int(cur.get("count") or 1) + 1
                cur["lastTimestamp"] = stamp
                self.store.update("events", cur)
                self.recorded += 1
                return
            self._n += 1
            name = f"{meta['name']}.{int(self.clock() * 1e9) + self._n:x}"
            self.store.create("events", {
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {"kind": obj.get("kind"), "namespace": meta.get("namespace"), "name": meta["name"],
                                   "uid": meta.get("uid"), "apiVersion": obj.get("apiVersion"),
                                   "resourceVersion": meta.get("resourceVersion")},
                "reason": reason, "message": message, "type": etype, "count": 1,
                "source": {"component": self.component, **({"host": self.host} if self.host else {})},
                "firstTimestamp": stamp, "lastTimestamp": stamp, "reportingComponent": self.component,
                "reportingInstance": self.host})
            self._seen[key] = name
            if len(self._seen) > 4096:  # the correlator's cache is an LRU too: forget the oldest
                del self._seen[next(iter(self._seen))]
            self.recorded += 1
        except StatusError as exc:  # an event is best effort, as upstream's recorder
            log.debug("event %s %s: %s", reason, meta["name"], exc.message)


# --- DefaultTolerationSeconds admission ------------------------------------------------------


DEFAULT_TOLERATION_SECONDS = 300  # --default-not-ready-toleration-seconds / -unreachable-


def default_toleration_seconds(op: str, res: Any, new: Obj | None, old: Obj | None) -> None:
    """The DefaultTolerationSeconds admission plugin: every Pod created tolerates
    ``not-ready`` and ``unreachable`` (NoExecute) for 300 s unless it says otherwise, which is
    what delays the eviction of a dead node's pods (the controller scales the seconds)."""
    if op != "CREATE" or new is None:
        return None
    spec = new.get("spec")
    if not isinstance(spec, dict):
        return None
    tolerations = spec.get("tolerations")
    if tolerations is None:
        tolerations = []
    if not isinstance(tolerations, list):
        return None
    for key in (TAINT_NOT_READY, TAINT_UNREACHABLE):
        if not any(isinstance(t, dict) and _tolerates(t, key, "NoExecute") for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS})
    spec["tolerations"] = tolerations
    return None


def _tolerates(t: dict[str, Any], key: str, effect: str, value: str = "") -> bool:
    """``Toleration.ToleratesTaint``."""
    if t.get("effect") and t.get("effect") != effect:
        return False
    if t.get("key") and t.get("key") != key:
        return False
    op = t.get("operator") or "Equal"
    if op == "Exists":
        return True
    return op == "Equal" and (t.get("value") or "") == value and bool(t.get("key"))


def tolerates(tolerations: Any, taint: dict[str, Any]) -> dict[str, Any] | None:
    """The first toleration of the list that tolerates ``taint``, or None."""
    for t in tolerations or ():
        if isinstance(t, dict) and _tolerates(t, str(taint.get("key") or ""), str(taint.get("effect") or ""),
                                              str(taint.get("value") or "")):
            return t
    return None


def install_admission(store: Store) -> None:
    """The Pod admission plugins of this API server (DefaultTolerationSeconds)."""
    store.add_admission("pods", default_toleration_seconds)


# --- the kubernetes Service ----------------------------------------------------------------


def ensure_kubernetes_service(store: Store, endpoint_ip: str, port: int = 6443) -> None:
    """The ``default/kubernetes`` Service (10.96.0.1:443) and its Endpoints/EndpointSlice
    (the API server's reconciler keeps them pointing at the control-plane address:6443)."""
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "kubernetes", "namespace": "default",
                        "labels": {"component": "apiserver", "provider": "kubernetes"}},
           "spec": {"type": "ClusterIP", "clusterIP": KUBERNETES_SERVICE_IP, "clusterIPs": [KUBERNETES_SERVICE_IP],
                    "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                    "internalTrafficPolicy": "Cluster",
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}}
    eps = {"apiVersion": "v1", "kind": "Endpoints",
           "metadata": {"name": "kubernetes", "namespace": "default",
                        "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
           "subsets": [{"addresses": [{"ip": endpoint_ip}],
                        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": "kubernetes", "namespace": "default",
                           "labels": {"kubernetes.io/service-name": "kubernetes"}},
              "addressType": "IPv4",
              "endpoints": [{"addresses": [endpoint_ip], "conditions": {"ready": True}}],
              "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}
    with store.batch():
        for res, obj, keys in (("services", svc, ("spec",)), ("endpoints", eps, ("subsets",)),
                               ("endpointslices", slice_, ("endpoints", "ports"))):
            if not store.exists(res, "default", "kubernetes"):
                store.create(res, obj)
                continue
            cur = store.get(res, "default", "kubernetes")
            if any(cur.get(k) != obj[k] for k in keys):
                cur.update({k: obj[k] for k in keys})
                store.update(res, cur)

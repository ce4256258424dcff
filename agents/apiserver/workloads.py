"""Deployment → ReplicaSet → Pods (kube-controller-manager's deployment and replicaset
controllers, plus the garbage collector's cascade for them), sans-IO.

* :class:`ReplicaSetController` keeps ``spec.replicas`` active Pods per ReplicaSet: missing
  ones are created as ``<rs>-<5 random chars>`` (upstream's generateName alphabet) with the
  template's labels and a controller ownerReference; surplus ones are deleted in upstream's
  order (``ActivePodsWithRanks``: unscheduled, then Pending, then not ready, then those sharing a
  node with more of their siblings, then the shorter ready, then the newest).  A Pod deleted or
  evicted is replaced at the next pass.  Status: replicas, fullyLabeledReplicas,
  readyReplicas, availableReplicas (ready for ``minReadySeconds``), observedGeneration.
* :class:`DeploymentController` owns one ReplicaSet per pod template, named
  ``<deployment>-<pod-template-hash>`` (FNV-32a of the template, encoded with
  ``rand.SafeEncodeString`` as upstream), the hash also a label of the RS, its selector and its
  pods.  RollingUpdate with maxSurge / maxUnavailable (25 % / 25 % by default; surge rounds up,
  unavailable down; both 0 → unavailable 1), Recreate, scaling, ``revisionHistoryLimit`` (10),
  revision annotations, ``ScalingReplicaSet`` events and status (replicas, updatedReplicas,
  readyReplicas, availableReplicas, unavailableReplicas, conditions Available / Progressing).
* Deleting a Deployment deletes its ReplicaSets, deleting a ReplicaSet its Pods (the garbage
  collector's background cascade over ownerReferences).

Both are level-driven from the shared informers: events mark keys dirty, :meth:`sync` works
them off; their own writes go back into the informers at once, so a pass never acts twice on
the same missing pod (upstream's "expectations").
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .controllers import EventRecorder, Informers, owner_uid, pod_active, pod_ready
from .errors import StatusError
from .store import Obj, Store, timestamp

log = logging.getLogger("hcinet.apiserver.workloads")

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand
BURST = 500  # pods one ReplicaSet pass may create or delete (upstream's burstReplicas)

Key = tuple[str, str]


def _key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def _spec(obj: Obj) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _replicas(obj: Obj) -> int:
    value = _spec(obj).get("replicas", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _status(obj: Obj, field: str) -> int:
    value = (obj.get("status") or {}).get(field, 0)
    return value if isinstance(value, int) else 0


def safe_encode(s: str) -> str:
    """``rand.SafeEncodeString``: each character to one of 27 unambiguous alphanumerics."""
    return "".join(ALPHANUMS[ord(ch) % len(ALPHANUMS)] for ch in s)


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def pod_template_hash(template: Any, collision_count: int | None = None) -> str:
    """``controller.ComputeHash``: FNV-32a over the template (here its canonical JSON; upstream
    hashes Go's printed form), plus the collision count, safe-encoded."""
    data = json.dumps(_strip_hash(template), sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += str(collision_count).encode()
    return safe_encode(str(fnv32a(data)))


def _strip_hash(template: Any) -> Any:
    if not isinstance(template, dict):
        return template
    out = json.loads(json.dumps(template))
    labels = (out.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return out


def selector_matches(selector: Any, labels: dict[str, str]) -> bool:
    """A ``metav1.LabelSelector`` (matchLabels + matchExpressions) against labels; an empty or
    missing selector matches nothing (what workloads' selectors mean)."""
    if not isinstance(selector, dict):
        return False
    ml = selector.get("matchLabels") or {}
    me = selector.get("matchExpressions") or []
    if not ml and not me:
        return False
    if any(labels.get(k) != v for k, v in ml.items()):
        return False
    for expr in me:
        key, op = expr.get("key"), expr.get("operator")
        values = expr.get("values") or []
        has = key in labels
        if (op == "In" and not (has and labels[key] in values)) or (op == "NotIn" and has and labels[key] in values) \
                or (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """``intstr.GetScaledValueFromIntOrPercent``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = int(value[:-1])
        except ValueError:
            return 0
        exact = pct * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return 0


def resolve_fenceposts(deploy: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) of a RollingUpdate Deployment (``ResolveFenceposts``)."""
    ru = (_spec(deploy).get("strategy") or {}).get("rollingUpdate") or {}
    replicas = _replicas(deploy)
    surge = scaled_value(ru.get("maxSurge", "25%"), replicas, True)
    unavailable = scaled_value(ru.get("maxUnavailable", "25%"), replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # "Validation should never allow the user to explicitly use zero values for both"
    return surge, unavailable


def _owner_ref(obj: Obj) -> dict[str, Any]:
    meta = obj["metadata"]
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
            "uid": meta.get("uid"), "controller": True, "blockOwnerDeletion": True}


def _cond(obj: Obj, ctype: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(c, dict) and c.get("type") == ctype:
            return c
    return None


def _parse_ts(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def status_patch(old: Any, new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning status ``old`` into ``new`` (keys ``new`` omits are removed)."""
    patch: dict[str, Any] = {k: None for k in (old if isinstance(old, dict) else {}) if k not in new}
    patch.update(new)
    return {"status": patch}


class _Owned:
    """An index owner uid → keys of the objects it controls, kept from informer events."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.by_owner: dict[str, set[Key]] = {}
        self._owner_of: dict[Key, str] = {}

    def update(self, etype: str, obj: Obj) -> tuple[str | None, str | None]:
        """Apply one event; returns (previous owner uid, current owner uid)."""
        key = _key(obj)
        old = self._owner_of.get(key)
        new = None if etype == "DELETED" else owner_uid(obj, self.kind)
        if old != new:
            if old is not None:
                keys = self.by_owner.get(old)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self.by_owner[old]
                del self._owner_of[key]
            if new is not None:
                self.by_owner.setdefault(new, set()).add(key)
                self._owner_of[key] = new
        return old, new

    def keys(self, uid: str) -> set[Key]:
        return self.by_owner.get(uid, set())


class _OwnerTracking:
    """What the ReplicaSet and Deployment controllers share: owners of one kind, the children
    they control, which owners need a pass (``dirty``) and which deleted owners left children
    behind (``orphaned``: uid -> namespace, for the garbage collection of those children)."""

    owned: _Owned
    uid_key: dict[str, Key]
    dirty: set[Key]
    orphaned: dict[str, str]

    def _track(self, owner_kind: str, owners: Any, children: Any) -> None:
        self.owned = _Owned(owner_kind)
        self.uid_key = {}
        self.dirty = set()
        self.orphaned = {}
        owners.handlers.append(self._on_owner)
        children.handlers.append(self._on_child)
        for obj in owners.all():
            self._on_owner("ADDED", obj, None)
        for obj in children.all():
            self._on_child("ADDED", obj, None)

    def _on_owner(self, etype: str, obj: Obj, prev: Obj | None) -> None:
        key, uid = _key(obj), obj["metadata"].get("uid", "")
        if etype == "DELETED":
            self.dirty.discard(key)
            self.uid_key.pop(uid, None)
            if self.owned.keys(uid):
                self.orphaned[uid] = key[0]
            return
        self.uid_key[uid] = key
        if prev is None or _spec(obj) != _spec(prev) or obj["metadata"].get("generation") != \
                prev["metadata"].get("generation"):
            self.dirty.add(key)

    def _on_child(self, etype: str, obj: Obj, prev: Obj | None) -> None:
        old, new = self.owned.update(etype, obj)
        for uid in {old, new} - {None}:
            assert uid is not None
            key = self.uid_key.get(uid)
            if key is not None:
                self.dirty.add(key)
            elif etype != "DELETED":
                self.orphaned.setdefault(uid, obj["metadata"].get("namespace", ""))


# --- ReplicaSets ---------------------------------------------------------------------------


class ReplicaSetController(_OwnerTracking):
    """See the module docstring."""

    def __init__(self, store: Store, informers: Informers, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, burst: int = BURST) -> None:
        self.store = store
        self.clock = clock
        self.rng = rng or random.Random()
        self.burst = burst
        self.pods = informers("pods")
        self.rs = informers("replicasets")
        self.events = EventRecorder(store, "replicaset-controller", clock=clock)
        self.wakeups: dict[Key, float] = {}  # minReadySeconds: when to look again (wall clock)
        self.created = 0
        self.deleted = 0
        self._track("ReplicaSet", self.rs, self.pods)  # orphaned: pods of deleted ReplicaSets

    def pending(self, now_wall: float | None = None) -> bool:
        if self.dirty or self.orphaned:
            return True
        wall = self.clock() if now_wall is None else now_wall
        return any(t <= wall for t in self.wakeups.values())

    def next_wakeup(self) -> float | None:
        """Wall-clock time of the earliest minReadySeconds re-check, if any."""
        return min(self.wakeups.values(), default=None)

    def sync(self, now: float | None = None) -> list[Key]:
        wall = self.clock()
        for key, t in list(self.wakeups.items()):
            if t <= wall:
                del self.wakeups[key]
                self.dirty.add(key)
        todo, self.dirty = sorted(self.dirty), set()
        orphaned, self.orphaned = self.orphaned, {}
        with self.store.batch():
            for uid, ns in orphaned.items():
                if uid not in self.uid_key:
                    self._collect(uid, ns)
            for key in todo:
                rs = self.rs.get(*key)
                if rs is not None:
                    self._sync_one(rs, wall)
        return todo

    def _collect(self, uid: str, ns: str) -> None:
        """The garbage collector: pods whose controller (a ReplicaSet) is gone."""
        for key in sorted(self.owned.keys(uid)):
            pod = self.pods.get(*key)
            if pod is not None:
                self._delete(pod, None)

    def _sync_one(self, rs: Obj, wall: float) -> None:
        uid = rs["metadata"].get("uid", "")
        pods = [p for p in (self.pods.get(*k) for k in sorted(self.owned.keys(uid))) if p is not None]
        active = [p for p in pods if pod_active(p)]
        diff = _replicas(rs) - len(active)
        if rs["metadata"].get("deletionTimestamp"):
            diff = 0
        if diff > 0:
            for _ in range(min(diff, self.burst)):
                pod = self._create(rs)
                if pod is not None:
                    active.append(pod)
        elif diff < 0:
            for pod in self.deletion_order(active)[:min(-diff, self.burst)]:
                if self._delete(pod, rs):
                    active.remove(pod)
        self._update_status(rs, active, wall)

    @staticmethod
    def deletion_order(pods: list[Obj]) -> list[Obj]:
        """Which pods go first on a scale-down (``ActivePodsWithRanks``, newest first last)."""
        on_node = Counter((p.get("spec") or {}).get("nodeName") for p in pods)
        phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}

        def rank(p: Obj) -> tuple[Any, ...]:
            node = (p.get("spec") or {}).get("nodeName")
            ready = pod_ready(p)
            since = (_cond(p, "Ready") or {}).get("lastTransitionTime") or "" if ready else ""
            restarts = sum(int(c.get("restartCount") or 0) for c in (p.get("status") or {}).get("containerStatuses")
                           or () if isinstance(c, dict))
            return (1 if node else 0, phase_rank.get((p.get("status") or {}).get("phase", "Pending"), 0),
                    1 if ready else 0, -(on_node[node] if node else 0), _neg(since), -restarts)

        newest_first = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
        return sorted(newest_first, key=rank)

    def _pod_name(self, rs_name: str) -> str:
        base = rs_name[:58]  # generateName is cut so the name stays a valid 63-char label
        return f"{base}-" + "".join(self.rng.choice(ALPHANUMS) for _ in range(5))

    def _create(self, rs: Obj) -> Obj | None:
        ns, rs_name = _key(rs)
        template = _spec(rs).get("template") or {}
        tmeta = template.get("metadata") or {}
        meta: dict[str, Any] = {"namespace": ns, "generateName": f"{rs_name[:58]}-",
                                "labels": dict(tmeta.get("labels") or {}),
                                "ownerReferences": [_owner_ref(rs)]}
        if tmeta.get("annotations"):
            meta["annotations"] = dict(tmeta["annotations"])
        spec = json.loads(json.dumps(template.get("spec") or {}))
        for _ in range(5):  # a clash of 5 random chars: try another name, as generateName does
            meta["name"] = self._pod_name(rs_name)
            try:
                pod = self.store.create("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": dict(meta),
                                                 "spec": spec, "status": {"phase": "Pending"}})
            except StatusError as exc:
                if exc.code == 409:
                    continue
                self.events.event(rs, "Warning", "FailedCreate", f"Error creating: {exc.message}")
                return None
            self.pods.wrote(pod)
            self.created += 1
            self.events.event(rs, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}")
            return pod
        return None

    def _delete(self, pod: Obj, rs: Obj | None) -> bool:
        ns, name = _key(pod)
        try:
            gone = self.store.delete("pods", ns, name)
        except StatusError as exc:
            if exc.code != 404:
                log.info("deleting pod %s/%s failed: %s", ns, name, exc.message)
                return False
            gone = pod
        self.pods.forget(gone)
        self.deleted += 1
        if rs is not None:
            self.events.event(rs, "Normal", "SuccessfulDelete", f"Deleted pod: {name}")
        return True

    def _update_status(self, rs: Obj, active: list[Obj], wall: float) -> None:
        template_labels = ((_spec(rs).get("template") or {}).get("metadata") or {}).get("labels") or {}
        min_ready = _spec(rs).get("minReadySeconds") or 0
        ready = [p for p in active if pod_ready(p)]
        available = 0
        wake = None
        for p in ready:
            since = _parse_ts((_cond(p, "Ready") or {}).get("lastTransitionTime"))
            if not min_ready or since is None or since + min_ready <= wall:
                available += 1
            else:
                wake = since + min_ready if wake is None else min(wake, since + min_ready)
        key = _key(rs)
        if wake is not None:
            self.wakeups[key] = wake
        else:
            self.wakeups.pop(key, None)
        status = dict(rs.get("status") or {})
        status.update({
            "replicas": len(active),
            "fullyLabeledReplicas": sum(1 for p in active if all(
                (p["metadata"].get("labels") or {}).get(k) == v for k, v in template_labels.items())),
            "readyReplicas": len(ready), "availableReplicas": available,
            "observedGeneration": rs["metadata"].get("generation", 1)})
        for k in ("readyReplicas", "availableReplicas", "fullyLabeledReplicas"):
            if not status[k]:
                status.pop(k)  # omitempty, as upstream serialises them
        if status != (rs.get("status") or {}):
            try:
                self.rs.wrote(self.store.patch("replicasets", *key, status_patch(rs.get("status"), status),
                                               subresource="status"))
            except StatusError as exc:
                log.info("replicaset %s/%s status: %s", *key, exc.message)


def _neg(text: str) -> str:
    """A key that sorts ISO timestamps newest first (for use inside an ascending sort)."""
    return "".join(chr(0x10FFFF - ord(c)) for c in text)


# --- Deployments ---------------------------------------------------------------------------


class DeploymentController(_OwnerTracking):
    """See the module docstring."""

    def __init__(self, store: Store, informers: Informers, *, clock: Callable[[], float] = time.time,
                 revision_history_limit: int = 10) -> None:
        self.store = store
        self.clock = clock
        self.history_limit = revision_history_limit
        self.deploys = informers("deployments")
        self.rs = informers("replicasets")
        self.events = EventRecorder(store, "deployment-controller", clock=clock)
        self._track("Deployment", self.deploys, self.rs)

    def pending(self) -> bool:
        return bool(self.dirty or self.orphaned)

    def sync(self, now: float | None = None) -> list[Key]:
        todo, self.dirty = sorted(self.dirty), set()
        orphaned, self.orphaned = self.orphaned, {}
        with self.store.batch():
            for uid in orphaned:
                if uid not in self.uid_key:
                    for key in sorted(self.owned.keys(uid)):
                        self._delete_rs(key)
            for key in todo:
                d = self.deploys.get(*key)
                if d is not None:
                    try:
                        self._sync_one(d)
                    except StatusError as exc:
                        log.info("deployment %s/%s: %s", *key, exc.message)
                        self.dirty.add(key)
        return todo

    def _delete_rs(self, key: Key) -> None:
        try:
            self.rs.forget(self.store.delete("replicasets", *key))
        except StatusError:
            pass

    # -- one Deployment --

    def _sync_one(self, d: Obj) -> None:
        uid = d["metadata"].get("uid", "")
        all_rs = [rs for rs in (self.rs.get(*k) for k in sorted(self.owned.keys(uid))) if rs is not None]
        template = _spec(d).get("template") or {}
        new_rs = next((rs for rs in all_rs if _strip_hash(_spec(rs).get("template")) == _strip_hash(template)), None)
        old_rs = [rs for rs in all_rs if rs is not new_rs]
        if _spec(d).get("paused"):
            self._sync_status(d, new_rs, all_rs)
            return
        if new_rs is None:
            new_rs = self._create_rs(d, all_rs)
            if new_rs is None:
                return
            all_rs.append(new_rs)
        else:
            new_rs = self._sync_revision(d, new_rs, old_rs)
        strategy = (_spec(d).get("strategy") or {}).get("type", "RollingUpdate")
        if strategy == "Recreate":
            self._recreate(d, new_rs, old_rs)
        else:
            self._rolling(d, new_rs, old_rs)
        all_rs = [self.rs.get(*_key(rs)) or rs for rs in [new_rs, *old_rs]]
        new_rs = all_rs[0]
        self._cleanup(d, [rs for rs in all_rs[1:]])
        self._sync_status(d, new_rs, all_rs)

    def _revision(self, rs: Obj) -> int:
        try:
            return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
        except ValueError:
            return 0

    def _create_rs(self, d: Obj, all_rs: list[Obj]) -> Obj | None:
        ns, dname = _key(d)
        template = json.loads(json.dumps(_spec(d).get("template") or {}))
        collisions = int((d.get("status") or {}).get("collisionCount") or 0)
        h = pod_template_hash(template, collisions)
        tmeta = template.setdefault("metadata", {})
        labels = dict(tmeta.get("labels") or {})
        labels[HASH_LABEL] = h
        tmeta["labels"] = labels
        selector = json.loads(json.dumps(_spec(d).get("selector") or {}))
        selector.setdefault("matchLabels", {})[HASH_LABEL] = h
        revision = max((self._revision(rs) for rs in all_rs), default=0) + 1
        replicas = self._new_rs_replicas(d, None, all_rs)
        surge, _ = resolve_fenceposts(d)
        rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
              "metadata": {"name": f"{dname}-{h}", "namespace": ns, "labels": labels,
                           "annotations": {DESIRED: str(_replicas(d)), MAX_REPLICAS: str(_replicas(d) + surge),
                                           REVISION: str(revision)},
                           "ownerReferences": [_owner_ref(d)]},
              "spec": {"replicas": replicas, "minReadySeconds": _spec(d).get("minReadySeconds", 0),
                       "selector": selector, "template": template}}
        try:
            created = self.store.create("replicasets", rs)
        except StatusError as exc:
            if exc.code == 409:  # a hash collision with an RS of another template: bump collisionCount
                st = dict(d.get("status") or {})
                st["collisionCount"] = collisions + 1
                self.deploys.wrote(self.store.patch("deployments", ns, dname, {"status": st}, subresource="status"))
                self.dirty.add((ns, dname))
            else:
                self.events.event(d, "Warning", "FailedCreate", f"Failed to create new replica set "
                                  f"\"{dname}-{h}\": {exc.message}")
            return None
        self.rs.wrote(created)
        if replicas > 0:
            self.events.event(d, "Normal", "ScalingReplicaSet", f"Scaled up replica set {dname}-{h} to {replicas}")
        self._annotate_revision(d, revision)
        return created

    def _sync_revision(self, d: Obj, new_rs: Obj, old_rs: list[Obj]) -> Obj:
        """The template went back to an older ReplicaSet's: it becomes the newest revision."""
        top = max((self._revision(rs) for rs in old_rs), default=0)
        rev = self._revision(new_rs)
        if rev <= top:
            rev = top + 1
            ann = {REVISION: str(rev)}
            new_rs = self.store.patch("replicasets", *_key(new_rs), {"metadata": {"annotations": ann}})
            self.rs.wrote(new_rs)
        self._annotate_revision(d, rev)
        return new_rs

    def _annotate_revision(self, d: Obj, revision: int) -> None:
        if (d["metadata"].get("annotations") or {}).get(REVISION) != str(revision):
            self.deploys.wrote(self.store.patch("deployments", *_key(d),
                                                {"metadata": {"annotations": {REVISION: str(revision)}}}))

    def _new_rs_replicas(self, d: Obj, new_rs: Obj | None, all_rs: Iterable[Obj]) -> int:
        """``NewRSNewReplicas``."""
        desired = _replicas(d)
        current_new = _replicas(new_rs) if new_rs is not None else 0
        if (_spec(d).get("strategy") or {}).get("type") == "Recreate":
            # Recreate: the new ReplicaSet grows only once every old pod is gone
            olds = [rs for rs in all_rs if rs is not new_rs]
            return desired if all(not _replicas(rs) and not _status(rs, "replicas") for rs in olds) else current_new
        surge, _ = resolve_fenceposts(d)
        current = sum(_replicas(rs) for rs in all_rs)
        max_total = desired + surge
        if current >= max_total:
            return current_new
        return current_new + min(max_total - current, max(desired - current_new, 0))

    def _scale(self, d: Obj, rs: Obj, n: int) -> Obj:
        cur = _replicas(rs)
        surge, _ = resolve_fenceposts(d)
        ann = {DESIRED: str(_replicas(d)), MAX_REPLICAS: str(_replicas(d) + surge)}
        same_ann = all((rs["metadata"].get("annotations") or {}).get(k) == v for k, v in ann.items())
        if cur == n and same_ann:
            return rs
        out = self.store.patch("replicasets", *_key(rs), {"spec": {"replicas": n}, "metadata": {"annotations": ann}})
        self.rs.wrote(out)
        if cur != n:
            word = "up" if n > cur else "down"
            self.events.event(d, "Normal", "ScalingReplicaSet",
                              f"Scaled {word} replica set {rs['metadata']['name']} to {n} from {cur}")
        return out

    def _rolling(self, d: Obj, new_rs: Obj, old_rs: list[Obj]) -> None:
        desired = _replicas(d)
        all_rs = [new_rs, *old_rs]
        # reconcileNewReplicaSet
        if _replicas(new_rs) > desired:
            new_rs = self._scale(d, new_rs, desired)
        elif _replicas(new_rs) < desired:
            new_rs = self._scale(d, new_rs, self._new_rs_replicas(d, new_rs, all_rs))
        else:
            new_rs = self._scale(d, new_rs, desired)  # keeps the annotations current
        # reconcileOldReplicaSets
        old_rs = [self.rs.get(*_key(rs)) or rs for rs in old_rs]
        if sum(_replicas(rs) for rs in old_rs) == 0:
            return
        all_rs = [new_rs, *old_rs]
        _, max_unavailable = resolve_fenceposts(d)
        min_available = desired - max_unavailable
        new_unavailable = _replicas(new_rs) - _status(new_rs, "availableReplicas")
        max_scaled_down = sum(_replicas(rs) for rs in all_rs) - min_available - new_unavailable
        if max_scaled_down <= 0:
            return
        # cleanupUnhealthyReplicas: old RSes' unavailable pods go first, free of the budget
        by_age = sorted(old_rs, key=lambda rs: rs["metadata"].get("creationTimestamp", ""))
        cleaned = 0
        for i, rs in enumerate(by_age):
            if cleaned >= max_scaled_down:
                break
            unhealthy = _replicas(rs) - _status(rs, "availableReplicas")
            if unhealthy <= 0 or _replicas(rs) == 0:
                continue
            down = min(unhealthy, max_scaled_down - cleaned, _replicas(rs))
            by_age[i] = self._scale(d, rs, _replicas(rs) - down)
            cleaned += down
        # scaleDownOldReplicaSetsForRollingUpdate
        available = sum(_status(rs, "availableReplicas") for rs in [new_rs, *by_age])
        if available <= min_available:
            return
        budget = min(available - min_available, max_scaled_down - cleaned)
        for rs in by_age:
            if budget <= 0:
                break
            if _replicas(rs) == 0:
                continue
            down = min(_replicas(rs), budget)
            self._scale(d, rs, _replicas(rs) - down)
            budget -= down

    def _recreate(self, d: Obj, new_rs: Obj, old_rs: list[Obj]) -> None:
        for rs in old_rs:
            if _replicas(rs):
                self._scale(d, rs, 0)
        if any(_status(rs, "replicas") for rs in (self.rs.get(*_key(r)) or r for r in old_rs)):
            self._scale(d, new_rs, _replicas(new_rs))  # wait for the old pods to be gone
            return
        self._scale(d, new_rs, _replicas(d))

    def _cleanup(self, d: Obj, old_rs: list[Obj]) -> None:
        """``cleanupDeployment``: keep ``revisionHistoryLimit`` scaled-down old ReplicaSets."""
        limit = _spec(d).get("revisionHistoryLimit", self.history_limit)
        if not isinstance(limit, int):
            return
        idle = sorted((rs for rs in old_rs if _replicas(rs) == 0 and not _status(rs, "replicas")),
                      key=self._revision)
        for rs in idle[:max(len(idle) - limit, 0)]:
            self._delete_rs(_key(rs))

    def _sync_status(self, d: Obj, new_rs: Obj | None, all_rs: list[Obj]) -> None:
        desired = _replicas(d)
        _, max_unavailable = resolve_fenceposts(d)
        available = sum(_status(rs, "availableReplicas") for rs in all_rs)
        status = dict(d.get("status") or {})
        status.update({
            "observedGeneration": d["metadata"].get("generation", 1),
            "replicas": sum(_status(rs, "replicas") for rs in all_rs),
            "updatedReplicas": _status(new_rs, "replicas") if new_rs is not None else 0,
            "readyReplicas": sum(_status(rs, "readyReplicas") for rs in all_rs),
            "availableReplicas": available,
            "unavailableReplicas": max(desired - available, 0)})
        for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"):
            if not status[k]:
                status.pop(k)
        stamp = timestamp(self.clock())
        conds = {c["type"]: c for c in status.get("conditions") or () if isinstance(c, dict) and "type" in c}
        if available >= desired - max_unavailable:
            _set_cond(conds, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.",
                      stamp)
        else:
            _set_cond(conds, "Available", "False", "MinimumReplicasUnavailable",
                      "Deployment does not have minimum availability.", stamp)
        if new_rs is not None:
            name = new_rs["metadata"]["name"]
            complete = _status(new_rs, "availableReplicas") >= desired and _replicas(new_rs) == desired and \
                sum(_status(rs, "replicas") for rs in all_rs) == _status(new_rs, "replicas")
            if complete:
                _set_cond(conds, "Progressing", "True", "NewReplicaSetAvailable",
                          f'ReplicaSet "{name}" has successfully progressed.', stamp)
            elif "Progressing" not in conds:
                _set_cond(conds, "Progressing", "True", "NewReplicaSetCreated", f'Created new replica set "{name}"',
                          stamp)
            elif conds["Progressing"].get("message") != f'ReplicaSet "{name}" is progressing.':
                _set_cond(conds, "Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{name}" is progressing.',
                          stamp)
        status["conditions"] = [conds[t] for t in ("Available", "Progressing") if t in conds]
        if status != (d.get("status") or {}):
            self.deploys.wrote(self.store.patch("deployments", *_key(d), status_patch(d.get("status"), status),
                                                subresource="status"))


def _set_cond(conds: dict[str, dict[str, Any]], ctype: str, status: str, reason: str, message: str,
              stamp: str) -> None:
    cur = conds.get(ctype)
    if cur is not None and cur.get("status") == status and cur.get("reason") == reason and \
            cur.get("message") == message:
        return
    transition = cur.get("lastTransitionTime") if cur is not None and cur.get("status") == status else stamp
    conds[ctype] = {"type": ctype, "status": status, "lastUpdateTime": stamp, "lastTransitionTime": transition,
                    "reason": reason, "message": message}

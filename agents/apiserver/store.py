"""The API server's object store: sqlite (WAL) underneath, etcd-like semantics on top.

* Objects are keyed ``(resource, namespace, name)`` (namespace ``""`` for cluster-scoped
  kinds) and held as JSON text; every write takes the next value of ONE global
  ``resourceVersion`` counter, like etcd's revision, persisted with the write.
* Durability: WAL mode with ``synchronous=NORMAL``.  A commit is in the WAL file (the OS page
  cache) when ``COMMIT`` returns, so it survives a crash of this process (kill -9); it is not
  fsynced per commit, so a power loss of the host may lose the last commits (the requirement
  is the process crash: sqlite.org/wal.html, "synchronous=NORMAL").  Callers reply only after
  the commit (:meth:`Store.flush`).
* Group commit: inside :meth:`Store.batch` (or between :meth:`hold` and :meth:`flush`) many
  writes share one transaction; watchers hear the events only after the commit, so nobody
  ever sees a write that a crash could take back.
* Watch history: the last ``history`` events (default 10 000) are kept, in the ``events``
  table and in memory, so a watcher resuming from resourceVersion N gets exactly the events
  after N; an N older than the retained history gets 410 Gone ("too old resource version"),
  and the client relists, as with Kubernetes' watch cache.
* Reads are served from an in-memory copy (loaded at open), never from sqlite.

No asyncio here: the VM kind drives it (and decides when to flush).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .resources import Resource, resource
from .selectors import FieldRequirement, Requirement, fields_match, labels_match

log = logging.getLogger("hcinet.apiserver.store")

HISTORY = 10_000
TRIM_EVERY = 500  # delete trimmed history rows from sqlite every this many events

Obj = dict[str, Any]
Validator = Callable[[Resource, Obj, "Obj | None"], None]
# Admission (the registry's BeginCreate/BeginUpdate + mutating admission): called with
# (operation CREATE|UPDATE|DELETE, resource, new object (mutable; None on DELETE), stored object
# (None on CREATE)) before validation; may mutate ``new`` or raise a StatusError; may return a
# ``finish(ok)`` the store calls once the write succeeded (True) or was refused later (False),
# so allocations are released when a create fails after them (k8s' transaction commit/revert).
Finish = Callable[[bool], None]
Admit = Callable[[str, Resource, "Obj | None", "Obj | None"], "Finish | None"]
FinishList = list[Finish]
ResLike = Resource | str

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    rv INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (resource, namespace, name));
CREATE TABLE IF NOT EXISTS events (
    rv INTEGER PRIMARY KEY, resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    type TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Event:
    """One change: ``type`` ADDED | MODIFIED | DELETED, the object's JSON text at ``rv``."""

    __slots__ = ("type", "rv", "resource", "namespace", "name", "body", "committed_at", "_line")

    def __init__(self, type: str, rv: int, resource: str, namespace: str, name: str, body: str) -> None:
        # The commit's time on the machine's monotonic clock (perf_counter: CLOCK_MONOTONIC,
        # shared by every process here), so a node can measure network programming latency
        # (docs/contracts-pod-network.md); None for events replayed from the history table.
        self.committed_at: float | None = None
        self.type = type
        self.rv = rv
        self.resource = resource
        self.namespace = namespace
        self.name = name
        self.body = body
        self._line: bytes | None = None

    def __repr__(self) -> str:
        return f"Event({self.type}, {self.rv}, {self.resource}, {self.namespace}/{self.name})"

    def object(self) -> Obj:
        obj: Obj = json.loads(self.body)
        return obj

    def line(self) -> bytes:
        """The watch stream's line ``{"type": ..., "object": ...}``: built once, without
        re-encoding the object, and shared by every watcher."""
        if self._line is None:
            extra = b"" if self.committed_at is None else b',"committedAt":%r' % self.committed_at
            self._line = b'{"type":"%s","object":%s%s}\n' % (self.type.encode(), self.body.encode(), extra)
        return self._line


EventList = list[Event]


@dataclass(eq=False)
class Subscription:
    """A live watch: matching events are passed to ``callback`` after each commit."""

    store: Store
    resource: str
    namespace: str | None
    labels: tuple[Requirement, ...]
    fields: tuple[FieldRequirement, ...]
    callback: Callable[[Event], None]
    delivered: int = 0

    def matches(self, ev: Event) -> bool:
        if ev.resource != self.resource or (self.namespace is not None and ev.namespace != self.namespace):
            return False
        if self.labels or self.fields:
            obj = ev.object()
            return labels_match(self.labels, obj) and fields_match(self.fields, obj)
        return True

    def close(self) -> None:
        self.store._subs.discard(self)


@dataclass
class StoreStats:
    commits: int = 0
    writes: int = 0
    max_batch: int = 0
    noop_updates: int = 0
    events_published: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _res(res: ResLike) -> Resource:
    return res if isinstance(res, Resource) else resource(res)


def _copy(obj: Any) -> Any:
    """A private deep copy of a JSON document (faster than copy.deepcopy; tuples become lists)."""
    return json.loads(json.dumps(obj))


def timestamp(t: float) -> str:
    """RFC 3339, seconds, UTC: ``metav1.Time``'s JSON form."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"path: JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test); ``ValueError`` naming the op."""
    if not isinstance(ops, list):
        raise ValueError("json patch: expected a list of operations")
    doc = copy.deepcopy(target)
    for i, op in enumerate(ops):
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if kind in ("move", "copy"):
                src = _pointer(op["from"])
                value = copy.deepcopy(_walk(doc, src))
                if kind == "move":
                    doc = _remove(doc, src)
                doc = _add(doc, parts, value)
            elif kind == "add":
                doc = _add(doc, parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                doc = _remove(doc, parts)
            elif kind == "replace":
                _walk(doc, parts)  # must exist
                doc = _add(_remove(doc, parts), parts, copy.deepcopy(op["value"]))
            elif kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise ValueError("test failed")
            else:
                raise ValueError(f"unknown op {kind!r}")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"json patch: operation {i}: {exc}") from None
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    else:
        parent[last] = value
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        del parent[last]
    return doc


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What ``metadata.generation`` counts changes of: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Store:
    """See the module docstring.  Not thread-safe: one owner (the VM's loop, or a test)."""

    def __init__(self, path: str, *, history: int = HISTORY, clock: Callable[[], float] = time.time,
                 validator: Validator | None = None) -> None:
        self.path = path
        self.history_size = history
        self.clock = clock
        self.commit_clock: Callable[[], float] = time.perf_counter  # stamps watch events (committedAt)
        self.validator = validator
        self.admission: dict[str, list[Admit]] = {}  # resource plural -> hooks, in order
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._objs: dict[str, dict[tuple[str, str], tuple[int, str]]] = {}
        self._history: deque[Event] = deque()
        self._subs: set[Subscription] = set()
        self._pending: list[Event] = []
        self._in_txn = False
        self._depth = 0
        self._since_trim = 0
        self.stats = StoreStats()
        self.rv = 0
        self.committed_rv = 0  # what watchers have been told about (bookmarks use it)
        self.compacted = 0
        self._load()

    # -- open / close --

    def _load(self) -> None:
        self._objs.clear()
        for res, ns, name, rv, body in self._db.execute("SELECT resource, namespace, name, rv, body FROM objects"):
            self._objs.setdefault(res, {})[(ns, name)] = (rv, body)
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        rows = self._db.execute(
            "SELECT rv, resource, namespace, name, type, body FROM events ORDER BY rv DESC LIMIT ?",
            (self.history_size,)).fetchall()
        self._history = deque(Event(t, rv, res, ns, name, body) for rv, res, ns, name, t, body in reversed(rows))
        self.rv = max(int(meta.get("rv", 0)), rows[0][0] if rows else 0)
        first_kept = self._history[0].rv if self._history else self.rv + 1
        self.compacted = max(int(meta.get("compacted", 0)), first_kept - 1)
        self.committed_rv = self.rv

    def close(self) -> None:
        if self._in_txn:
            self._commit()
        self._subs.clear()
        self._db.close()

    # -- transactions and group commit --

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Writes inside share one transaction, committed (and published) at the outermost exit."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._in_txn:
                self._commit()

    def hold(self) -> None:
        """Start deferring commits (the asyncio layer's group commit); :meth:`flush` ends it."""
        self._depth += 1

    def flush(self) -> None:
        """End one :meth:`hold`; the outermost commits what is pending and notifies watchers."""
        if self._depth > 0:
            self._depth -= 1
        if self._depth == 0 and self._in_txn:
            self._commit()

    @property
    def dirty(self) -> bool:
        return self._in_txn

    def apply_batch(self, ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Run ``[(method, args, kwargs), ...]`` in ONE transaction; each result is the method's
        return value or the :class:`~.errors.StatusError` it raised (the others still apply)."""
        results: list[Any] = []
        with self.batch():
            for method, args, kwargs in ops:
                if method not in ("create", "update", "update_status", "patch", "delete"):
                    raise ValueError(f"apply_batch: {method!r} is not a write")
                try:
                    results.append(getattr(self, method)(*args, **kwargs))
                except errors.StatusError as exc:
                    results.append(exc)
        return results

    def _begin(self) -> None:
        if not self._in_txn:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_txn = True

    def _commit(self) -> None:
        try:
            # The revision is also max(events.rv) (the newest event is always kept), so it is
            # written to meta only with a trim: one statement less per commit.
            if self._since_trim >= TRIM_EVERY or self.history_size == 0:
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rv', ?)", (self.rv,))
                self._since_trim = 0
                self._db.execute("DELETE FROM events WHERE rv <= ?", (self.compacted,))
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('compacted', ?)",
                                 (self.compacted,))
            self._db.execute("COMMIT")
        except sqlite3.Error:
            log.exception("commit failed: rolling back and reloading")
            self._in_txn = False
            self._pending.clear()
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._load()
            raise
        self._in_txn = False
        self.committed_rv = self.rv
        pending, self._pending = self._pending, []
        committed_at = self.commit_clock()
        for ev in pending:
            ev.committed_at = committed_at
        self.stats.commits += 1
        self.stats.max_batch = max(self.stats.max_batch, len(pending))
        self._publish(pending)

    def _publish(self, events: list[Event]) -> None:
        if not self._subs or not events:
            return
        for ev in events:
            for sub in list(self._subs):
                if sub.matches(ev):
                    sub.delivered += 1
                    self.stats.events_published += 1
                    try:
                        sub.callback(ev)
                    except Exception:  # one broken watcher must not stop the others
                        log.exception("watch callback failed; dropping the watcher")
                        self._subs.discard(sub)

    def _write(self, res: Resource, ns: str, name: str, etype: str, obj: Obj) -> Obj:
        """Stamp the next resourceVersion on ``obj`` and write it (and its event)."""
        self._begin()
        self.rv += 1
        rv = self.rv
        obj["metadata"]["resourceVersion"] = str(rv)
        body = json.dumps(obj, separators=(",", ":"))
        if etype == "DELETED":
            self._db.execute("DELETE FROM objects WHERE resource=? AND namespace=? AND name=?",
                             (res.store_key, ns, name))
            self._objs.get(res.store_key, {}).pop((ns, name), None)
        else:
            self._db.execute("INSERT OR REPLACE INTO objects (resource, namespace, name, rv, body) "
                             "VALUES (?, ?, ?, ?, ?)", (res.store_key, ns, name, rv, body))
            self._objs.setdefault(res.store_key, {})[(ns, name)] = (rv, body)
        self._db.execute("INSERT INTO events (rv, resource, namespace, name, type, body) VALUES (?, ?, ?, ?, ?, ?)",
                         (rv, res.store_key, ns, name, etype, body))
        ev = Event(etype, rv, res.store_key, ns, name, body)
        self._history.append(ev)
        while len(self._history) > self.history_size:
            self.compacted = self._history.popleft().rv
        self._since_trim += 1
        self._pending.append(ev)
        self.stats.writes += 1
        if self._depth == 0:
            self._commit()
        return obj

    # -- reads --

    def _key(self, res: Resource, ns: str | None, name: str) -> tuple[str, str]:
        return ("" if not res.namespaced else (ns or ""), name)

    def _current(self, res: Resource, ns: str | None, name: str) -> tuple[int, Obj]:
        entry = self._objs.get(res.store_key, {}).get(self._key(res, ns, name))
        if entry is None:
            raise errors.not_found(res, name)
        obj: Obj = json.loads(entry[1])
        return entry[0], obj

    def get(self, res: ResLike, ns: str | None, name: str) -> Obj:
        return self._current(_res(res), ns, name)[1]

    def exists(self, res: ResLike, ns: str | None, name: str) -> bool:
        r = _res(res)
        return self._key(r, ns, name) in self._objs.get(r.store_key, {})

    def list(self, res: ResLike, ns: str | None = None, *, labels: tuple[Requirement, ...] = (),
             fields: tuple[FieldRequirement, ...] = ()) -> tuple[list[Obj], int]:
        """Matching objects (sorted by namespace, name) and the list's resourceVersion."""
        r = _res(res)
        items = []
        table = self._objs.get(r.store_key, {})
        for key in sorted(table):
            if ns is not None and r.namespaced and key[0] != ns:
                continue
            obj = json.loads(table[key][1])
            if labels_match(labels, obj) and fields_match(fields, obj):
                items.append(obj)
        return items, self.rv

    def count(self, res: ResLike) -> int:
        return len(self._objs.get(_res(res).store_key, {}))

    # -- writes --

    def add_admission(self, res: ResLike, fn: Admit) -> None:
        self.admission.setdefault(_res(res).store_key, []).append(fn)

    def _admit(self, op: str, r: Resource, new: Obj | None, old: Obj | None) -> FinishList:
        finish: FinishList = []
        try:
            for fn in self.admission.get(r.store_key, ()):
                f = fn(op, r, new, old)
                if f is not None:
                    finish.append(f)
        except BaseException:
            self._finish(finish, False)
            raise
        return finish

    @staticmethod
    def _finish(finish: FinishList, ok: bool) -> None:
        for f in reversed(finish):
            f(ok)

    def create(self, res: ResLike, obj: Obj) -> Obj:
        r = _res(res)
        obj = _copy(obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata: expected an object")
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        if not r.namespaced:
            meta.pop("namespace", None)
        obj = {"apiVersion": r.api_version, "kind": r.kind, **obj}
        obj["apiVersion"], obj["kind"] = r.api_version, r.kind
        meta = obj["metadata"]
        finish = self._admit("CREATE", r, obj, None) if r.store_key in self.admission else []
        try:
            if self.validator is not None:
                self.validator(r, obj, None)
            name = meta.get("name")
            if not isinstance(name, str) or not name:
                raise errors.StatusError(422, "Invalid", f'{r.kind} "" is invalid: metadata.name: Required value: '
                                         "name or generateName is required")
            ns = meta.get("namespace", "") if r.namespaced else ""
            if self._key(r, ns, name) in self._objs.get(r.store_key, {}):
                raise errors.already_exists(r, name)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = timestamp(self.clock())
            meta["generation"] = 1
            meta.pop("deletionTimestamp", None)
            out = self._write(r, ns, name, "ADDED", obj)
        except BaseException:
            self._finish(finish, False)
            raise
        self._finish(finish, True)
        return out

    def update(self, res: ResLike, obj: Obj, *, subresource: str | None = None) -> Obj:
        """PUT: optimistic concurrency on ``metadata.resourceVersion`` (absent = unconditional)."""
        r = _res(res)
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise errors.bad_request("metadata.name: required on update")
        ns = meta.get("namespace", "") if r.namespaced else ""
        cur_rv, cur = self._current(r, ns, meta["name"])
        given = meta.get("resourceVersion")
        if given not in (None, "") and str(given) != str(cur_rv):
            raise errors.conflict(r, meta["name"])
        return self._replace(r, cur, _copy(obj), subresource)

    def update_status(self, res: ResLike, obj: Obj) -> Obj:
        return self.update(res, obj, subresource="status")

    def patch(self, res: ResLike, ns: str | None, name: str, patch: Any, *, patch_type: str = "merge",
              subresource: str | None = None) -> Obj:
        """PATCH: ``merge`` (RFC 7386; strategic merge is treated as merge) or ``json`` (RFC 6902).
        A ``metadata.resourceVersion`` inside the patch is a precondition, as in Kubernetes."""
        r = _res(res)
        cur_rv, cur = self._current(r, ns, name)
        try:
            new = json_patch(cur, patch) if patch_type == "json" else merge_patch(cur, patch)
        except ValueError as exc:
            raise errors.StatusError(422, "Invalid", str(exc)) from None
        if not isinstance(new, dict):
            raise errors.bad_request("patch: the result is not an object")
        meta = new.get("metadata")
        given = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if given not in (None, "") and str(given) != str(cur_rv):
            raise errors.conflict(r, name)
        return self._replace(r, cur, new, subresource)

    def _replace(self, r: Resource, cur: Obj, new: Obj, subresource: str | None) -> Obj:
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(cur)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif subresource is not None:
            raise errors.path_not_found()
        elif r.has_status:  # the main resource keeps status (status is written via /status)
            if "status" in cur:
                new["status"] = cur["status"]
            else:
                new.pop("status", None)
        new["apiVersion"], new["kind"] = r.api_version, r.kind
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata: expected an object")
        old_meta = cur["metadata"]
        if meta.get("name") != old_meta["name"]:
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not match the name "
                                     f"on the URL ({old_meta['name']})")
        if r.namespaced and meta.get("namespace", old_meta.get("namespace")) != old_meta.get("namespace"):
            raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                     "sent on the request")
        for key in ("uid", "creationTimestamp", "namespace"):  # immutable, server-owned
            if key in old_meta:
                meta[key] = old_meta[key]
        finish = self._admit("UPDATE", r, new, cur) if r.store_key in self.admission else []
        try:
            meta["generation"] = old_meta.get("generation", 1)
            if subresource is None and _spec_part(new) != _spec_part(cur):
                meta["generation"] += 1
            meta["resourceVersion"] = old_meta["resourceVersion"]
            if new == cur:  # a no-op update writes nothing and keeps the resourceVersion (k8s does too)
                self.stats.noop_updates += 1
                out = new
            else:
                if self.validator is not None:
                    self.validator(r, new, cur)
                ns = old_meta.get("namespace", "") if r.namespaced else ""
                out = self._write(r, ns, old_meta["name"], "MODIFIED", new)
        except BaseException:
            self._finish(finish, False)
            raise
        self._finish(finish, True)
        return out

    def delete(self, res: ResLike, ns: str | None, name: str, *,
               preconditions: Mapping[str, Any] | None = None) -> Obj:
        r = _res(res)
        cur_rv, cur = self._current(r, ns, name)
        if preconditions:
            want_uid = preconditions.get("uid")
            if want_uid and want_uid != cur["metadata"].get("uid"):
                raise errors.conflict(r, name, f"Precondition failed: UID in precondition: {want_uid}, "
                                      f"UID in object meta: {cur['metadata'].get('uid')}")
            want_rv = preconditions.get("resourceVersion")
            if want_rv and str(want_rv) != str(cur_rv):
                raise errors.conflict(r, name, f"Precondition failed: ResourceVersion in precondition: "
                                      f"{want_rv}, ResourceVersion in object meta: {cur_rv}")
        ns_key = self._key(r, ns, name)[0]
        finish = self._admit("DELETE", r, None, cur) if r.store_key in self.admission else []
        try:
            out = self._write(r, ns_key, name, "DELETED", cur)
        except BaseException:
            self._finish(finish, False)
            raise
        self._finish(finish, True)
        return out

    # -- watch --

    def watch(self, res: ResLike, ns: str | None, since: int | None, callback: Callable[[Event], None], *,
              labels: tuple[Requirement, ...] = (), fields: tuple[FieldRequirement, ...] = ()
              ) -> tuple[EventList, Subscription]:
        """Start a watch: the events to send first, and the live subscription.

        ``since=None`` (resourceVersion unset or "0"): one synthetic ADDED per current object,
        then live events.  ``since=N``: exactly the retained events with rv > N, then live ones;
        N older than the history raises 410 Gone, N newer than the store 504 (as Kubernetes).
        """
        r = _res(res)
        sub = Subscription(self, r.store_key, ns if r.namespaced else None, labels, fields, callback)
        if since is None:
            items, _ = self.list(r, ns, labels=labels, fields=fields)
            initial = []
            for obj in items:
                meta = obj["metadata"]
                initial.append(Event("ADDED", int(meta["resourceVersion"]), r.store_key, meta.get("namespace", ""),
                                     meta["name"], json.dumps(obj, separators=(",", ":"))))
        else:
            if since < self.compacted:
                raise errors.gone(since, self.compacted)
            if since > self.rv:
                raise errors.StatusError(504, "Timeout", f"Too large resource version: {since}, "
                                         f"current: {self.rv}")
            initial = [ev for ev in self._events_after(since) if sub.matches(ev)]
        self._subs.add(sub)
        return initial, sub

    def _events_after(self, since: int) -> EventList:
        hist = self._history
        if not hist or since >= hist[-1].rv:
            return []
        # rvs in the history are dense (one event per revision): index directly
        start = max(0, since - hist[0].rv + 1)
        return list(itertools.islice(hist, start, None))

    def history_window(self) -> tuple[int, int]:
        """(oldest resourceVersion a watch may resume from, current)."""
        return self.compacted, self.rv

    def snapshot(self) -> dict[str, Any]:
        return {"rv": self.rv, "compacted": self.compacted, "history": len(self._history),
                "objects": {k: len(v) for k, v in sorted(self._objs.items())}, "watchers": len(self._subs),
                "commits": self.stats.commits, "writes": self.stats.writes, "max_batch": self.stats.max_batch,
                "noop_updates": self.stats.noop_updates}

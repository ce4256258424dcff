"""The object store: CRUD, optimistic concurrency, status subresource, watch history, 410,
persistence across reopen and across a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.apiserver.errors import StatusError
from agents.apiserver.selectors import parse_field_selector, parse_label_selector
from agents.apiserver.store import Event, Store, json_patch, merge_patch

ROOT = Path(__file__).resolve().parents[2]


def node(name: str, **extra: object) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, **extra}


def cm(name: str, ns: str = "default", **data: str) -> dict:
    return {"metadata": {"name": name, "namespace": ns}, "data": dict(data)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "s.sqlite"))
    yield s
    s.close()


def test_create_get_conflicts_and_not_found(store: Store) -> None:
    a = store.create("nodes", node("n1", spec={}))
    assert a["metadata"]["resourceVersion"] == "1" and a["metadata"]["generation"] == 1
    assert a["metadata"]["uid"] and a["metadata"]["creationTimestamp"].endswith("Z")
    assert store.get("nodes", None, "n1") == a
    with pytest.raises(StatusError) as e:
        store.create("nodes", node("n1"))
    assert (e.value.code, e.value.reason, e.value.message) == (409, "AlreadyExists", 'nodes "n1" already exists')
    with pytest.raises(StatusError) as e:
        store.get("nodes", None, "nope")
    assert (e.value.code, e.value.message) == (404, 'nodes "nope" not found')
    with pytest.raises(StatusError) as e:
        store.get("deployments", "default", "d")
    assert e.value.message == 'deployments.apps "d" not found'
    with pytest.raises(StatusError, match="resourceVersion should not be set"):
        store.create("nodes", node("n2", metadata={"name": "n2", "resourceVersion": "5"}))


def test_update_optimistic_concurrency(store: Store) -> None:
    a = store.create("nodes", node("n1", spec={"unschedulable": False}))
    b = dict(a, spec={"unschedulable": True})
    b2 = store.update("nodes", b)
    assert b2["metadata"]["resourceVersion"] == "2" and b2["metadata"]["generation"] == 2
    assert b2["metadata"]["uid"] == a["metadata"]["uid"]
    stale = dict(a, spec={"unschedulable": False})  # still carries resourceVersion 1
    with pytest.raises(StatusError) as e:
        store.update("nodes", stale)
    assert e.value.code == 409 and e.value.reason == "Conflict"
    assert e.value.message == ('Operation cannot be fulfilled on nodes "n1": the object has been modified; '
                               "please apply your changes to the latest version and try again")
    # no resourceVersion: an unconditional update
    stale["metadata"] = {"name": "n1"}
    assert store.update("nodes", stale)["metadata"]["resourceVersion"] == "3"
    # a no-op update writes nothing and keeps the version
    cur = store.get("nodes", None, "n1")
    assert store.update("nodes", cur)["metadata"]["resourceVersion"] == "3"
    assert store.rv == 3 and store.stats.noop_updates == 1


def test_status_subresource(store: Store) -> None:
    store.create("nodes", node("n1", spec={"podCIDR": "10.244.0.0/24"}, status={"phase": "x"}))
    cur = store.get("nodes", None, "n1")
    # main PUT keeps status
    cur2 = dict(cur, status={"phase": "changed"}, spec={"podCIDR": "10.244.1.0/24"})
    out = store.update("nodes", cur2)
    assert out["status"] == {"phase": "x"} and out["spec"]["podCIDR"] == "10.244.1.0/24"
    # PUT /status changes only status, generation untouched
    cur3 = dict(out, status={"phase": "y"}, spec={"podCIDR": "10.244.9.0/24"})
    out = store.update_status("nodes", cur3)
    assert out["status"] == {"phase": "y"} and out["spec"]["podCIDR"] == "10.244.1.0/24"
    assert out["metadata"]["generation"] == 2
    # merge patch on status
    out = store.patch("nodes", None, "n1", {"status": {"capacity": {"pods": "110"}}}, subresource="status")
    assert out["status"] == {"phase": "y", "capacity": {"pods": "110"}}
    # a resource without a status subresource: PUT replaces everything
    store.create("configmaps", cm("c"))
    c = store.get("configmaps", "default", "c")
    c["status"] = {"odd": 1}
    assert store.update("configmaps", c)["status"] == {"odd": 1}


def test_merge_and_json_patch(store: Store) -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": None, "e": 3}, "d": [2]}) == \
        {"a": {"c": 2, "e": 3}, "d": [2]}
    assert json_patch({"a": [1, 2]}, [{"op": "add", "path": "/a/-", "value": 3},
                                      {"op": "replace", "path": "/a/0", "value": 0}]) == {"a": [0, 2, 3]}
    with pytest.raises(ValueError, match="operation 0: test failed"):
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
    store.create("configmaps", cm("c", k="v"))
    out = store.patch("configmaps", "default", "c", {"data": {"k": None, "x": "y"}, "metadata": {"labels": {"a": "b"}}})
    assert out["data"] == {"x": "y"} and out["metadata"]["labels"] == {"a": "b"}
    with pytest.raises(StatusError) as e:  # a resourceVersion in the patch is a precondition
        store.patch("configmaps", "default", "c", {"metadata": {"resourceVersion": "1"}, "data": {}})
    assert e.value.reason == "Conflict"


def test_list_selectors_and_delete(store: Store) -> None:
    for i, (app, tier) in enumerate([("web", "fe"), ("web", "be"), ("db", "be")]):
        store.create("configmaps", {"metadata": {"name": f"c{i}", "namespace": "default",
                                                 "labels": {"app": app, "tier": tier}}})
    store.create("configmaps", {"metadata": {"name": "other", "namespace": "kube-system"}})

    def names(label: str | None = None, field: str | None = None, ns: str | None = "default") -> list[str]:
        items, rv = store.list("configmaps", ns, labels=parse_label_selector(label),
                               fields=parse_field_selector(field))
        assert rv == store.rv
        return [i["metadata"]["name"] for i in items]

    assert names() == ["c0", "c1", "c2"]
    assert names(ns=None) == ["c0", "c1", "c2", "other"]
    assert names("app=web") == ["c0", "c1"]
    assert names("app==web,tier!=fe") == ["c1"]
    assert names("tier in (fe, be),app notin (db)") == ["c0", "c1"]
    assert names("!tier", ns=None) == ["other"]
    assert names("tier", ns=None) == ["c0", "c1", "c2"]
    assert names(field="metadata.name=c2") == ["c2"]
    assert names(field="metadata.namespace=kube-system", ns=None) == ["other"]
    assert names(field="metadata.name!=c2") == ["c0", "c1"]
    with pytest.raises(ValueError, match="unable to parse requirement"):
        parse_label_selector("a=b,")
    gone = store.delete("configmaps", "default", "c0")
    assert int(gone["metadata"]["resourceVersion"]) == store.rv
    assert names() == ["c1", "c2"]
    with pytest.raises(StatusError) as e:
        store.delete("configmaps", "default", "c0")
    assert e.value.code == 404
    with pytest.raises(StatusError, match="Precondition failed: UID"):
        store.delete("configmaps", "default", "c1", preconditions={"uid": "nope"})


def test_watch_history_resume_exactly_and_live(store: Store) -> None:
    for i in range(5):
        store.create("nodes", node(f"n{i}"))
    store.create("configmaps", cm("c"))
    live: list[Event] = []
    initial, sub = store.watch("nodes", None, 2, live.append)
    assert [(e.type, e.name, e.rv) for e in initial] == [("ADDED", "n2", 3), ("ADDED", "n3", 4), ("ADDED", "n4", 5)]
    store.patch("nodes", None, "n0", {"metadata": {"labels": {"x": "y"}}})
    store.delete("nodes", None, "n1")
    store.patch("configmaps", "default", "c", {"data": {"a": "b"}})  # another resource: not delivered
    assert [(e.type, e.name, e.rv) for e in live] == [("MODIFIED", "n0", 7), ("DELETED", "n1", 8)]
    assert live[1].object()["metadata"]["resourceVersion"] == "8"
    assert live[0].line().startswith(b'{"type":"MODIFIED","object":{"apiVersion":"v1","kind":"Node"')
    sub.close()
    store.delete("nodes", None, "n2")
    assert len(live) == 2
    # unset resourceVersion: synthetic ADDED of the current state
    initial, sub = store.watch("nodes", None, None, live.append)
    assert [e.name for e in initial] == ["n0", "n3", "n4"] and {e.type for e in initial} == {"ADDED"}
    with pytest.raises(StatusError) as e:
        store.watch("nodes", None, store.rv + 5, live.append)
    assert e.value.code == 504


def test_group_commit_publishes_after_commit(store: Store) -> None:
    live: list[Event] = []
    store.watch("nodes", None, 0, live.append)
    with store.batch():
        store.create("nodes", node("a"))
        results = store.apply_batch([("create", ("nodes", node("b")), {}), ("create", ("nodes", node("a")), {})])
        assert live == [] and store.dirty  # nothing is announced before the commit
    assert isinstance(results[1], StatusError) and results[1].reason == "AlreadyExists"
    assert [e.name for e in live] == ["a", "b"] and store.stats.commits == 1 and not store.dirty
    store.hold()
    store.create("nodes", node("c"))
    assert len(live) == 2 and store.committed_rv == 2
    store.flush()
    assert len(live) == 3 and store.committed_rv == 3


def test_history_trim_gives_410(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "h.sqlite"), history=10)
    for i in range(25):
        s.create("configmaps", cm(f"c{i}"))
    assert s.history_window() == (15, 25)
    initial, _ = s.watch("configmaps", "default", 15, lambda e: None)
    assert [e.rv for e in initial] == list(range(16, 26))
    with pytest.raises(StatusError) as e:
        s.watch("configmaps", "default", 14, lambda e: None)
    assert (e.value.code, e.value.reason, e.value.message) == (410, "Expired", "too old resource version: 14 (15)")
    s.close()
    s = Store(str(tmp_path / "h.sqlite"), history=10)  # the window survives a restart
    assert s.history_window() == (15, 25)
    with pytest.raises(StatusError):
        s.watch("configmaps", "default", 14, lambda e: None)
    s.close()


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "p.sqlite")
    s = Store(path)
    for i in range(3):
        s.create("nodes", node(f"n{i}"))
    s.patch("nodes", None, "n1", {"metadata": {"labels": {"a": "b"}}})
    s.delete("nodes", None, "n2")
    before = s.list("nodes")
    s.close()
    s = Store(path)
    assert s.list("nodes") == before and s.rv == 5
    initial, _ = s.watch("nodes", None, 3, lambda e: None)
    assert [(e.type, e.name) for e in initial] == [("MODIFIED", "n1"), ("DELETED", "n2")]
    assert s.create("nodes", node("n9"))["metadata"]["resourceVersion"] == "6"
    s.close()


WRITER = """
import sys
from agents.apiserver.store import Store
s = Store(sys.argv[1])
i = 0
while True:
    s.create("configmaps", {"metadata": {"name": f"c{i}", "namespace": "default"}, "data": {"i": str(i)}})
    print(i, flush=True)   # acknowledged: the commit has returned
    i += 1
"""


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    path = str(tmp_path / "k.sqlite")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    acked = -1
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 300:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # lines the child printed after our last read were acknowledged too: read them
    rest = proc.stdout.read()
    for line in rest.splitlines():
        if line.strip():
            acked = int(line)
    assert acked >= 300
    s = Store(path)
    names = {i["metadata"]["name"] for i in s.list("configmaps", "default")[0]}
    assert all(f"c{i}" in names for i in range(acked + 1)), acked
    assert s.rv >= acked + 1
    s.close()


def test_watch_events_carry_their_commit_time(store: Store) -> None:
    """committedAt (the commit on the shared monotonic clock) lets a node measure network
    programming latency; a Kubernetes client ignores the extra key."""
    import json

    stamps = iter([100.0, 200.0])
    store.commit_clock = lambda: next(stamps)
    live: list[Event] = []
    store.watch("nodes", None, 0, live.append)
    store.create("nodes", node("a"))
    with store.batch():  # one commit: one time for all its events
        store.create("nodes", node("b"))
        store.create("nodes", node("c"))
    lines = [json.loads(e.line()) for e in live]
    assert [(d["type"], d["object"]["metadata"]["name"], d["committedAt"]) for d in lines] == [
        ("ADDED", "a", 100.0), ("ADDED", "b", 200.0), ("ADDED", "c", 200.0)]

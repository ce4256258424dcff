"""REST routing: paths, methods, Status errors, lists, watches, namespaces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.apiserver.rest import Router
from agents.apiserver.store import Store


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Router]:
    store = Store(str(tmp_path / "r.sqlite"))
    router = Router(store)
    router.bootstrap()
    yield router
    store.close()


def pod(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}


def test_bootstrap_namespaces(api: Router, tmp_path: Path) -> None:
    r = api.handle("GET", "/api/v1/namespaces")
    assert r.status == 200 and r.body["kind"] == "NamespaceList" and r.body["apiVersion"] == "v1"
    assert [n["metadata"]["name"] for n in r.body["items"]] == ["default", "kube-node-lease", "kube-public",
                                                                 "kube-system"]
    assert r.body["items"][0]["status"] == {"phase": "Active"}
    assert r.body["metadata"]["resourceVersion"] == "4"
    api.bootstrap()  # idempotent
    assert api.store.rv == 4


def test_crud_through_paths(api: Router) -> None:
    r = api.handle("POST", "/api/v1/namespaces/default/pods", body=json.dumps(pod("p1", app="web")).encode())
    assert r.status == 201 and r.wrote and r.body["metadata"]["namespace"] == "default"
    assert r.body["status"] == {"phase": "Pending"}
    assert api.handle("GET", "/api/v1/namespaces/default/pods/p1").body["metadata"]["name"] == "p1"
    assert api.handle("GET", "/api/v1/namespaces/default/pods/p1/status").status == 200
    api.handle("POST", "/api/v1/namespaces/kube-system/pods", body=pod("p2", app="db"))
    r = api.handle("GET", "/api/v1/pods")
    assert r.body["kind"] == "PodList" and len(r.body["items"]) == 2
    r = api.handle("GET", "/api/v1/pods", query="labelSelector=app%3Dweb")
    assert [p["metadata"]["name"] for p in r.body["items"]] == ["p1"]
    r = api.handle("GET", "/api/v1/namespaces/kube-system/pods", query={"fieldSelector": "metadata.name=p2"})
    assert [p["metadata"]["name"] for p in r.body["items"]] == ["p2"]
    # PUT with a stale resourceVersion
    cur = api.handle("GET", "/api/v1/namespaces/default/pods/p1").body
    cur["metadata"]["labels"]["v"] = "2"
    assert api.handle("PUT", "/api/v1/namespaces/default/pods/p1", body=cur).status == 200
    r = api.handle("PUT", "/api/v1/namespaces/default/pods/p1", body=cur)
    assert r.status == 409 and r.body["reason"] == "Conflict" and r.body["kind"] == "Status"
    # status subresource via PUT and PATCH
    cur = api.handle("GET", "/api/v1/namespaces/default/pods/p1").body
    cur["status"] = {"phase": "Running", "podIP": "10.244.0.5"}
    r = api.handle("PUT", "/api/v1/namespaces/default/pods/p1/status", body=cur)
    assert r.status == 200 and r.body["status"]["podIP"] == "10.244.0.5"
    r = api.handle("PATCH", "/api/v1/namespaces/default/pods/p1", body={"metadata": {"labels": {"v": None}}},
                   content_type="application/merge-patch+json")
    assert r.status == 200 and r.body["metadata"]["labels"] == {"app": "web"}
    r = api.handle("PATCH", "/api/v1/namespaces/default/pods/p1",
                   body=[{"op": "add", "path": "/metadata/labels/j", "value": "1"}],
                   content_type="application/json-patch+json")
    assert r.body["metadata"]["labels"] == {"app": "web", "j": "1"}
    r = api.handle("PATCH", "/api/v1/namespaces/default/pods/p1", body={}, content_type="text/plain")
    assert r.status == 415
    r = api.handle("DELETE", "/api/v1/namespaces/default/pods/p1")
    assert r.status == 200 and r.body["metadata"]["name"] == "p1"
    r = api.handle("GET", "/api/v1/namespaces/default/pods/p1")
    assert r.status == 404 and r.body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                          "message": 'pods "p1" not found', "reason": "NotFound",
                                          "details": {"name": "p1", "kind": "pods"}, "code": 404}


def test_group_paths(api: Router) -> None:
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "node-1"}, "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}}
    r = api.handle("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body=lease)
    assert r.status == 201
    r = api.handle("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
    assert r.body["kind"] == "LeaseList" and r.body["apiVersion"] == "coordination.k8s.io/v1"
    r = api.handle("POST", "/apis/apps/v1/namespaces/default/deployments", body={
        "metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    assert r.status == 201 and r.body["apiVersion"] == "apps/v1" and r.body["kind"] == "Deployment"
    assert api.handle("GET", "/apis/apps/v1").body["groupVersion"] == "apps/v1"
    assert api.handle("GET", "/version").body["gitVersion"].startswith("v1.")
    assert api.handle("GET", "/healthz").body == "ok"


def test_errors(api: Router) -> None:
    def status(method: str, path: str, body: object = None, **kw: object) -> tuple[int, str, str]:
        r = api.handle(method, path, body=body, **kw)  # type: ignore[arg-type]
        return r.status, r.body.get("reason", ""), r.body.get("message", "")

    assert status("GET", "/api/v1/widgets")[:2] == (404, "NotFound")
    assert status("GET", "/nope")[0] == 404
    assert status("GET", "/api/v1/pods/p")[0] == 404  # a namespaced object needs its namespace
    assert status("POST", "/api/v1/namespaces/default/pods", b"{not json")[:2] == (400, "BadRequest")
    assert status("POST", "/api/v1/namespaces/nope/pods", pod("p")) == (404, "NotFound", 'namespaces "nope" not found')
    assert status("POST", "/api/v1/namespaces/default/pods", pod("p"))[0] == 201
    assert status("POST", "/api/v1/namespaces/default/pods", pod("p")) == \
        (409, "AlreadyExists", 'pods "p" already exists')
    code, reason, msg = status("POST", "/api/v1/nodes", {"metadata": {"name": "Bad_Name"}})
    assert (code, reason) == (422, "Invalid") and msg.startswith('Node "Bad_Name" is invalid: metadata.name: Invalid')
    body = pod("q")
    body["metadata"]["namespace"] = "kube-system"
    assert status("POST", "/api/v1/namespaces/default/pods", body)[:2] == (400, "BadRequest")
    assert status("PUT", "/api/v1/namespaces/default/pods/other", pod("p"))[:2] == (400, "BadRequest")
    assert status("PUT", "/api/v1/namespaces/default/pods/zz", pod("zz"))[0] == 404
    assert status("POST", "/api/v1/namespaces/default/pods/p", pod("p"))[0] == 405
    assert status("DELETE", "/api/v1/namespaces/default") == \
        (403, "Forbidden", 'namespaces "default" is forbidden: this namespace may not be deleted')
    assert status("GET", "/api/v1/pods", query={"labelSelector": "a in (b"})[:2] == (400, "BadRequest")
    assert status("POST", "/api/v1/namespaces/default/services", {"apiVersion": "v1", "kind": "Pod",
                                                                  "metadata": {"name": "s"}})[:2] == (400, "BadRequest")


def test_namespace_delete_cascades(api: Router) -> None:
    assert api.handle("POST", "/api/v1/namespaces", body={"metadata": {"name": "team"}}).status == 201
    api.handle("POST", "/api/v1/namespaces/team/configmaps", body={"metadata": {"name": "c"}})
    api.handle("POST", "/api/v1/namespaces/team/pods", body=pod("p"))
    assert api.handle("DELETE", "/api/v1/namespaces/team").status == 200
    assert api.handle("GET", "/api/v1/namespaces/team/configmaps").body["items"] == []
    assert api.handle("GET", "/api/v1/namespaces/team").status == 404


def test_generate_name_and_delete_collection(api: Router) -> None:
    r = api.handle("POST", "/api/v1/namespaces/default/configmaps", body={"metadata": {"generateName": "cfg-"}})
    assert r.status == 201 and r.body["metadata"]["name"].startswith("cfg-") and len(r.body["metadata"]["name"]) == 9
    api.handle("POST", "/api/v1/namespaces/default/configmaps", body={"metadata": {"name": "keep", "labels": {"k": "1"}}})
    r = api.handle("DELETE", "/api/v1/namespaces/default/configmaps", query={"labelSelector": "!k"})
    assert r.status == 200 and len(r.body["items"]) == 1
    assert [c["metadata"]["name"] for c in api.handle("GET", "/api/v1/configmaps").body["items"]] == ["keep"]


def test_watch_paths(api: Router) -> None:
    rv0 = api.store.rv
    api.handle("POST", "/api/v1/nodes", body={"metadata": {"name": "n1"}})
    api.handle("POST", "/api/v1/nodes", body={"metadata": {"name": "n2"}})
    r = api.handle("GET", "/api/v1/nodes", query={"watch": "1", "resourceVersion": str(rv0)})
    assert r.status == 200 and r.watch is not None
    assert r.watch is not None
    lines = [json.loads(x) for x in r.watch.take()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "n1"), ("ADDED", "n2")]
    woken = []
    r.watch.notify = lambda: woken.append(1)
    api.handle("DELETE", "/api/v1/nodes/n1")
    assert woken and json.loads(r.watch.take()[0])["type"] == "DELETED"
    r.watch.close()
    # the old /watch/ prefix on one object
    r2 = api.handle("GET", "/api/v1/watch/nodes/n2", query={"resourceVersion": str(rv0)})
    assert r2.watch is not None
    assert [json.loads(x)["object"]["metadata"]["name"] for x in r2.watch.take()] == ["n2"]
    # too old: 200 with one ERROR event carrying the 410 Status (what Kubernetes sends)
    api.store.compacted = api.store.rv - 1
    r3 = api.handle("GET", "/api/v1/nodes", query={"watch": "true", "resourceVersion": "1"})
    assert r3.status == 200 and r3.watch is not None and r3.watch.finished
    err = json.loads(r3.watch.take()[0])
    assert err["type"] == "ERROR" and err["object"]["code"] == 410 and err["object"]["reason"] == "Expired"
    assert err["object"]["message"] == f"too old resource version: 1 ({api.store.rv - 1})"
    r4 = api.handle("GET", "/api/v1/nodes", query={"watch": "1", "resourceVersion": "abc"})
    assert r4.status == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["metadata", "name", "namespace", "labels", "spec", "status", "data", "ports", "port",
                         "containers", "image", "selector", "matchLabels", "template", "subsets", "addresses",
                         "endpoints", "addressType", "taints", "effect", "key", "involvedObject", "resourceVersion",
                         "generateName", "annotations", "podCIDRs", "kind", "apiVersion", "x"]),
        children, max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["POST", "PUT", "PATCH"]), plural=st.sampled_from(
    ["nodes", "pods", "services", "endpoints", "endpointslices", "deployments", "leases", "secrets",
     "configmaps", "events", "networkpolicies", "ingresses", "namespaces", "globalnetworkpolicies",
     "ippools", "hostendpoints"]), body=json_values,
    named=st.booleans())
def test_bad_bodies_never_escape_as_exceptions(api: Router, method: str, plural: str, body: object,
                                               named: bool) -> None:
    from agents.apiserver.resources import resource

    res = resource(plural)
    base = f"/apis/{res.group}/{res.version}" if res.group else "/api/v1"
    path = base + ("/namespaces/default" if res.namespaced else "") + f"/{plural}"
    if method != "POST" or named:
        api.handle("POST", path, body={"metadata": {"name": "x"}})  # may fail validation: fine
        path += "/x"
    r = api.handle(method, path, body=body)
    assert 200 <= r.status < 500 and isinstance(r.body, dict), (r.status, r.body)


def test_a_spec_or_status_that_is_not_an_object_is_a_bad_request(api: Router) -> None:
    r = api.handle("POST", "/api/v1/namespaces", body={"metadata": {"name": "a"}, "spec": 0})
    assert r.status == 400 and "Namespace.spec" in r.body["message"], r.body
    r = api.handle("POST", "/api/v1/namespaces/default/pods", body={"metadata": {"name": "p"}, "status": []})
    assert r.status == 400 and "cannot unmarshal array" in r.body["message"], r.body
    r = api.handle("POST", "/api/v1/namespaces", body={"metadata": {"name": "b"}, "spec": None})
    assert r.status == 201 and r.body["spec"] == {"finalizers": ["kubernetes"]}, r.body

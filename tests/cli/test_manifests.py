"""kubectl's manifest verbs (scenarios/manifests.py) against the real API server router.

The REST :class:`~agents.apiserver.rest.Router` runs over a temporary sqlite store behind the
``api(method, path, query, body)`` callable the CLI uses, so apply/get/delete/describe see the
same answers (status codes, Status bodies, validation) as through a live API server VM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.apiserver.resources import BY_PLURAL
from agents.apiserver.rest import Router
from agents.apiserver.store import Store
from scenarios import aks, cli
from scenarios import manifests as m

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)


class FakeCluster:
    """The router behind ``api``; ``before_put`` lets a test act between apply's GET and PUT."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(str(tmp_path / "api.sqlite"), clock=lambda: T0.timestamp())
        self.router = Router(self.store)
        self.router.bootstrap()
        self.calls: list[tuple[str, str]] = []
        self.before_put: list[Any] = []

    async def api(self, method: str, path: str, query: Any, body: Any) -> tuple[int, Any]:
        self.calls.append((method, path))
        if method == "PUT" and self.before_put:
            self.before_put.pop(0)()
        res = self.router.handle(method, path, query, body)
        return res.status, json.loads(json.dumps(res.body))

    def do(self, method: str, path: str, body: Any = None) -> Any:
        res = self.router.handle(method, path, None, body)
        assert res.status < 400, res.body
        return res.body

    def get(self, path: str) -> Any:
        return self.do("GET", path)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    c = FakeCluster(tmp_path)
    yield c
    c.store.close()


def manifests_of(text: str, source: str = "app.yaml", namespace: str | None = None) -> list[m.Manifest]:
    docs, err = m.parse_documents(text, source)
    assert err is None
    out = [m.resolve(m.Document(source, item), namespace) for d in docs for item in m.expand_list(d)]
    assert all(isinstance(x, m.Manifest) for x in out), out
    return [x for x in out if isinstance(x, m.Manifest)]


DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  creationTimestamp: null
  labels: {app: web, tier: front}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx
        ports: [{containerPort: 80}]
        env: [{name: A, value: "1"}, {name: B, value: "2"}]
status: {}
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 80}]
"""
APP = DEPLOY + "---\n" + SERVICE


# --- reading manifests ---------------------------------------------------------------------------

def test_multi_document_streams_skip_empty_documents_and_expand_lists() -> None:
    text = ("# a comment only\n---\n" + SERVICE + "---\n---\n"
            "apiVersion: v1\nkind: List\nitems:\n"
            "- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}, data: {when: 2024-01-01}}\n"
            "- {apiVersion: v1, kind: List, items: [{apiVersion: v1, kind: Namespace, metadata: {name: prod}}]}\n"
            "---\napiVersion: v1\nkind: ConfigMapList\nitems: [{metadata: {name: b}}]\n")
    got = manifests_of(text)
    assert [(x.res.kind, x.name, x.namespace) for x in got] == [
        ("Service", "web", "default"), ("ConfigMap", "a", "default"), ("Namespace", "prod", None),
        ("ConfigMap", "b", "default")]
    assert got[1].obj["data"]["when"] == "2024-01-01"  # timestamps stay strings, as kubectl reads YAML
    assert [x.ref for x in got] == ["service/web", "configmap/a", "namespace/prod", "configmap/b"]


def test_directories_are_read_in_order_and_only_recursively_with_r(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name, cm in (("b.yaml", "b"), ("a.yml", "a"), ("c.json", "c"), ("notes.txt", "x"), ("sub/d.yaml", "d")):
        (tmp_path / name).write_text(json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cm}}))
    got, errors = m.load([str(tmp_path)], False, None)
    assert errors == [] and [x.name for x in got] == ["a", "b", "c"]
    assert got[0].source == str(tmp_path / "a.yml")
    got, _ = m.load([str(tmp_path)], True, None)
    assert [x.name for x in got] == ["a", "b", "c", "d"]
    got, _ = m.load([str(tmp_path / "notes.txt")], False, None)  # a file named explicitly: any extension
    assert [x.name for x in got] == ["x"]


def test_paths_that_fail_are_kubectl_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _, errors = m.load([str(tmp_path / "nope.yaml"), str(tmp_path / "empty")], False, None)
    assert errors == [f'error: the path "{tmp_path / "nope.yaml"}" does not exist',
                      f"error: error reading [{tmp_path / 'empty'}]: recognized file extensions are "
                      "[.json .yaml .yml]"]


def test_stdin_is_read_for_dash() -> None:
    got, errors = m.load(["-"], False, "prod", stdin=lambda: SERVICE)
    assert errors == [] and (got[0].source, got[0].namespace) == ("STDIN", "prod")


def test_a_yaml_syntax_error_keeps_the_documents_before_it() -> None:
    docs, err = m.parse_documents(SERVICE + "---\nkind: Service\nmetadata: {name: x\n", "app.yaml")
    assert len(docs) == 1
    assert err is not None and err.startswith(
        "error: error parsing app.yaml: error converting YAML to JSON: yaml: line 10: ")


BAD_DOCS = [
    ("[1, 2]", 'error: unable to decode "f.yaml": json: cannot unmarshal array into Go value of type '
               "map[string]interface {}"),
    ("apiVersion: v1\nmetadata: {name: a}", "error: unable to decode \"f.yaml\": Object 'Kind' is missing in "
                                            "'{\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"a\"}}'"),
    ("kind: Pod\nmetadata: {name: a}", "error: unable to decode \"f.yaml\": Object 'apiVersion' is missing in "
                                       "'{\"kind\":\"Pod\",\"metadata\":{\"name\":\"a\"}}'"),
    ("apiVersion: bar/v1\nkind: Foo\nmetadata: {name: x}",
     'error: resource mapping not found for name: "x" namespace: "" from "f.yaml": no matches for kind "Foo" '
     'in version "bar/v1"'),
    ("apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: x, namespace: a}",
     'error: resource mapping not found for name: "x" namespace: "a" from "f.yaml": no matches for kind '
     '"Deployment" in version "extensions/v1beta1"'),
    ("apiVersion: v1\nkind: Pod\nmetadata: {generateName: web-}", "error: from web-: cannot use generate name "
                                                                  "with apply"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}",
     'error: error when retrieving current configuration of: Resource: "v1, Resource=configmaps", '
     'GroupVersionKind: "v1, Kind=ConfigMap" Name: "", Namespace: "dev" from server for: "f.yaml": '
     "resource name may not be empty"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: prod}",
     'error: the namespace from the provided object "prod" does not match the namespace "dev". You must pass '
     "'--namespace=prod' to perform this operation."),
]


@pytest.mark.parametrize(("text", "error"), BAD_DOCS, ids=[e.split(":")[1][:30] for _, e in BAD_DOCS])
def test_bad_documents_are_one_kubectl_line(text: str, error: str) -> None:
    docs, err = m.parse_documents(text, "f.yaml")
    assert err is None
    assert m.resolve(m.Document("f.yaml", docs[0]), "dev") == error


@pytest.mark.parametrize(("meta_ns", "flag", "want"), [
    (None, None, "default"), (None, "dev", "dev"), ("prod", None, "prod"), ("prod", "prod", "prod")])
def test_namespace_comes_from_the_object_then_the_flag_then_default(meta_ns: str | None, flag: str | None,
                                                                     want: str) -> None:
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", **({"namespace": meta_ns} if meta_ns else {})}}
    got = m.resolve(m.Document("f.yaml", obj), flag)
    assert isinstance(got, m.Manifest) and got.namespace == want and got.obj["metadata"]["namespace"] == want
    node = m.resolve(m.Document("f.yaml", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": "x", "namespace": "y"}}), flag)
    assert isinstance(node, m.Manifest) and node.namespace is None and "namespace" not in node.obj["metadata"]


# --- three-way merge -------------------------------------------------------------------------------

def test_three_way_merge_removes_what_the_manifest_dropped_and_keeps_what_others_set() -> None:
    original = {"spec": {"a": 1, "b": 2, "list": [1, 2], "containers": [{"name": "c", "image": "x", "args": ["-v"]}]}}
    modified = {"spec": {"a": 5, "list": [3], "containers": [{"name": "c", "image": "y"}, {"name": "d", "image": "z"}]}}
    current = {"spec": {"a": 1, "b": 2, "server": "kept", "list": [1, 2],
                        "containers": [{"name": "c", "image": "x", "args": ["-v"], "imagePullPolicy": "Always"},
                                       {"name": "sidecar", "image": "s"}]},
               "status": {"x": 1}}
    assert m.three_way(original, modified, current) == {
        "spec": {"a": 5, "server": "kept", "list": [3],
                 "containers": [{"name": "c", "image": "y", "imagePullPolicy": "Always"}, {"name": "d", "image": "z"},
                                {"name": "sidecar", "image": "s"}]},
        "status": {"x": 1}}


def test_a_null_in_the_manifest_deletes_the_field() -> None:
    assert m.three_way(None, {"a": None, "b": {"c": None, "d": 1}}, {"a": 1, "e": 2}) == {"e": 2, "b": {"d": 1}}


# --- apply -------------------------------------------------------------------------------------

async def test_apply_creates_then_reports_unchanged_then_configured(cluster: FakeCluster) -> None:
    report = await m.apply(cluster.api, manifests_of(APP))
    assert (report.out, report.err, report.failed) == (["deployment.apps/web created", "service/web created"], [], False)
    dep = cluster.get("/apis/apps/v1/namespaces/default/deployments/web")
    text = dep["metadata"]["annotations"][m.LAST_APPLIED]
    assert text.endswith("}\n") and json.loads(text)["metadata"] == {
        "annotations": {}, "creationTimestamp": None, "labels": {"app": "web", "tier": "front"}, "name": "web",
        "namespace": "default"}
    # accepted as kubectl accepts it: creationTimestamp: null and status: {} change nothing on re-apply
    report = await m.apply(cluster.api, manifests_of(APP))
    assert report.out == ["deployment.apps/web unchanged", "service/web unchanged"]
    assert [c for c in cluster.calls[-4:] if c[0] == "PUT"] == []
    rv = cluster.get("/apis/apps/v1/namespaces/default/deployments/web")["metadata"]["resourceVersion"]
    assert rv == dep["metadata"]["resourceVersion"]
    report = await m.apply(cluster.api, manifests_of(APP.replace("replicas: 2", "replicas: 3")))
    assert report.out == ["deployment.apps/web configured", "service/web unchanged"]
    assert cluster.get("/apis/apps/v1/namespaces/default/deployments/web")["spec"]["replicas"] == 3


async def test_fields_removed_from_the_manifest_are_removed_and_others_fields_stay(cluster: FakeCluster) -> None:
    await m.apply(cluster.api, manifests_of(APP))
    path = "/apis/apps/v1/namespaces/default/deployments/web"
    # someone else (a controller, kubectl annotate) adds fields apply never set
    cluster.do("PATCH", path, {"metadata": {"annotations": {"deployment.kubernetes.io/revision": "1"}},
                               "spec": {"revisionHistoryLimit": 10}})
    cluster.do("PATCH", "/api/v1/namespaces/default/services/web", {"spec": {"clusterIP": "10.96.0.15"}})
    edited = (APP.replace("  labels: {app: web, tier: front}\n", "  labels: {app: web}\n")
                 .replace(', {name: B, value: "2"}', ""))
    report = await m.apply(cluster.api, manifests_of(edited))
    assert report.out == ["deployment.apps/web configured", "service/web unchanged"]
    dep = cluster.get(path)
    assert dep["metadata"]["labels"] == {"app": "web"}
    assert dep["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]
    assert dep["spec"]["revisionHistoryLimit"] == 10
    assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert cluster.get("/api/v1/namespaces/default/services/web")["spec"]["clusterIP"] == "10.96.0.15"
    # a port changed: the old one (from the last apply) goes; one someone else added stays
    cluster.do("PATCH", "/api/v1/namespaces/default/services/web",
               {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"},
                                   {"name": "extra", "port": 9090, "protocol": "TCP"}]}})
    report = await m.apply(cluster.api, manifests_of(SERVICE.replace("port: 80, targetPort: 80", "port: 8080")))
    assert report.out == ["service/web configured"]
    assert [p["port"] for p in cluster.get("/api/v1/namespaces/default/services/web")["spec"]["ports"]] == [
        8080, 9090]


async def test_apply_retries_when_the_object_changes_under_it(cluster: FakeCluster) -> None:
    await m.apply(cluster.api, manifests_of(DEPLOY))
    path = "/apis/apps/v1/namespaces/default/deployments/web/status"
    cluster.before_put.append(lambda: cluster.do("PATCH", path, {"status": {"replicas": 2}}))
    report = await m.apply(cluster.api, manifests_of(DEPLOY.replace("replicas: 2", "replicas: 4")))
    assert report.out == ["deployment.apps/web configured"]
    assert [c[0] for c in cluster.calls[-4:]] == ["GET", "PUT", "GET", "PUT"]  # a 409, read again, done
    dep = cluster.get("/apis/apps/v1/namespaces/default/deployments/web")
    assert (dep["spec"]["replicas"], dep["status"]["replicas"]) == (4, 2)


async def test_errors_are_one_line_per_object_and_the_others_are_applied(cluster: FakeCluster) -> None:
    bad = DEPLOY.replace("  selector: {matchLabels: {app: web}}\n", "")
    texts = [bad, SERVICE, SERVICE.replace("metadata: {name: web}", "metadata: {name: web, namespace: prod}")]
    ms = [x for t in texts for x in manifests_of(t)]
    report = await m.apply(cluster.api, ms, ['error: resource mapping not found for name: "x" namespace: "" from '
                                             '"f.yaml": no matches for kind "Foo" in version "bar/v1"'])
    assert report.out == ["service/web created"]
    assert report.err == [
        'The Deployment "web" is invalid: spec.selector: Required value',
        'Error from server (NotFound): error when creating "app.yaml": namespaces "prod" not found',
        'error: resource mapping not found for name: "x" namespace: "" from "f.yaml": no matches for kind "Foo" '
        'in version "bar/v1"']
    assert report.failed
    assert (await m.apply(cluster.api, [])).err == ["error: no objects passed to apply"]


async def test_a_namespace_first_in_the_file_is_there_for_the_objects_after_it(cluster: FakeCluster) -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---\n" + SERVICE
    report = await m.apply(cluster.api, manifests_of(text, namespace="prod"))
    assert report.out == ["namespace/prod created", "service/web created"]
    assert cluster.get("/api/v1/namespaces/prod/services/web")["metadata"]["namespace"] == "prod"


async def test_reapply_is_unchanged_with_the_api_servers_admission_and_controllers(cluster: FakeCluster) -> None:
    """The Service allocator (clusterIP, nodePort) and the workload controllers (revision
    annotation, ReplicaSets, status) write into the applied objects; apply leaves their fields."""
    import random

    from agents.apiserver.controllers import Informers, install_admission, sync_until_idle
    from agents.apiserver.endpointslices import EndpointSliceController
    from agents.apiserver.services import ServiceAllocator
    from agents.apiserver.workloads import DeploymentController, ReplicaSetController

    ServiceAllocator(rng=random.Random(1)).install(cluster.store)
    install_admission(cluster.store)
    informers = Informers(cluster.store)
    controllers: list[Any] = [DeploymentController(cluster.store, informers),
                              ReplicaSetController(cluster.store, informers),
                              EndpointSliceController(cluster.store, informers)]

    def settle() -> None:
        sync_until_idle(controllers)

    app = APP + "  type: NodePort\n"
    outs = []
    for text in (app, app, app.replace("replicas: 2", "replicas: 3"), app.replace("replicas: 2", "replicas: 3")):
        outs.append((await m.apply(cluster.api, manifests_of(text))).out)
        settle()
    assert outs == [["deployment.apps/web created", "service/web created"],
                    ["deployment.apps/web unchanged", "service/web unchanged"],
                    ["deployment.apps/web configured", "service/web unchanged"],
                    ["deployment.apps/web unchanged", "service/web unchanged"]]
    svc = cluster.get("/api/v1/namespaces/default/services/web")
    assert svc["spec"]["clusterIP"].startswith("10.") and 30000 <= svc["spec"]["ports"][0]["nodePort"] <= 32767
    pods = cluster.get("/api/v1/namespaces/default/pods")["items"]
    assert len(pods) == 3


# --- delete --------------------------------------------------------------------------------------

async def test_delete_by_manifest_and_by_name(cluster: FakeCluster) -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---\n" + APP
    ms = manifests_of(text, namespace="prod")
    await m.apply(cluster.api, ms)
    targets = [m.Target(x.res, x.namespace, x.name, x.source) for x in ms]
    report = await m.delete(cluster.api, targets)
    # the namespace is deleted last (its objects first), lines in file order
    assert report.out == ['namespace "prod" deleted', 'deployment.apps "web" deleted', 'service "web" deleted']
    report = await m.delete(cluster.api, targets[1:])
    assert report.err == ['Error from server (NotFound): error when deleting "app.yaml": deployments.apps "web" '
                          "not found",
                          'Error from server (NotFound): error when deleting "app.yaml": services "web" not found']
    assert (await m.delete(cluster.api, targets[1:], ignore_not_found=True)).err == []
    report = await m.delete_named(cluster.api, ["deployment", "web"], namespace="default")
    assert (report.out, report.err) == ([], ['Error from server (NotFound): deployments.apps "web" not found'])
    await m.apply(cluster.api, manifests_of(APP))
    report = await m.delete_named(cluster.api, ["deploy/web", "svc/web"], namespace="default")
    assert report.out == ['deployment.apps "web" deleted', 'service "web" deleted'] and not report.failed
    with pytest.raises(cli.CliError):
        await m.delete_named(cluster.api, ["pods"], namespace="default")


# --- tabwriter and get -----------------------------------------------------------------------------

def test_tabwriter_aligns_column_blocks_as_go_does() -> None:
    # A line without a tab ends a block; text after the last tab is not padded.
    lines = ["Name:\tweb", "Namespace:\tdefault", "IPs:", "  IP:\t10.0.0.1", "Controlled By:\tReplicaSet/x",
             "\tmore", "", "a\tb\tc", "aaa\tb\tc"]
    assert m.tabwrite(lines, 0, 2) == [
        "Name:       web", "Namespace:  default", "IPs:", "  IP:           10.0.0.1",
        "Controlled By:  ReplicaSet/x", "                more", "", "a    b  c", "aaa  b  c"]
    assert m.kubectl_table(["NAME", "IP"], [["a", "b"]]) == ["NAME   IP", "a      b"]
    assert m.tabwrite(["a\tb", "c\td"], 6, 3) == ["a     b", "c     d"]  # minwidth 6


def _pod(name: str, node: str, ip: str, ready: bool, phase: str = "Running", restarts: int = 0,
         waiting: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": {"reason": waiting}} if waiting else {
        "running": {"startedAt": "2024-01-01T12:00:05Z"}}
    status: dict[str, Any] = {
        "phase": phase, "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "172.16.0.22",
        "startTime": "2024-01-01T12:00:01Z",
        "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": str(ready)},
                       {"type": "ContainersReady", "status": str(ready)}, {"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{"name": "web", "ready": ready, "restartCount": restarts, "state": state,
                               "image": "nginx", "imageID": "", "containerID": "containerd://abc"}]}
    if restarts:
        status["containerStatuses"][0]["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error",
                                                                      "finishedAt": "2024-01-01T12:03:00Z"}}
    return {"status": status, "body": {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9",
                                          "uid": "u1", "controller": True}]},
        "spec": {"nodeName": node, "containers": [
            {"name": "web", "image": "nginx", "ports": [{"containerPort": 80, "protocol": "TCP"}],
             "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 5}}]}}}


@pytest.fixture
def workload(cluster: FakeCluster) -> FakeCluster:
    populate(cluster)
    return cluster


def populate(cluster: FakeCluster) -> None:
    """Pods, Services, an EndpointSlice, a Deployment and a ReplicaSet with status, and Events."""
    pods = [_pod("web-7c9-abcde", "node-1", "10.244.1.5", True),
            _pod("web-7c9-fghij", "node-2", "10.244.2.3", False, restarts=2),
            _pod("web-7c9-klmno", "node-2", "10.244.2.4", False, "Pending", waiting="ContainerCreating")]
    for p in pods:
        cluster.do("POST", "/api/v1/namespaces/default/pods", p["body"])
        cluster.do("PUT", f"/api/v1/namespaces/default/pods/{p['body']['metadata']['name']}/status",
                   {**p["body"], "status": p["status"]})
    cluster.do("POST", "/api/v1/namespaces/default/services", {
        "metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.15", "clusterIPs": ["10.96.0.15"],
                                              "selector": {"app": "web"},
                                              "ports": [{"name": "http", "port": 80, "targetPort": 80,
                                                         "nodePort": 30080}]}})
    cluster.do("POST", "/api/v1/namespaces/default/services", {
        "metadata": {"name": "db"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                                             "ports": [{"port": 5432}]}})
    cluster.do("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", {
        "metadata": {"name": "web-x7k2p", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}}
                      for ip, ready in (("10.244.1.5", True), ("10.244.2.3", False), ("10.244.2.4", False),
                                        ("10.244.3.9", True))]})
    dep = cluster.do("POST", "/apis/apps/v1/namespaces/default/deployments", {
        "metadata": {"name": "web"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                                              "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                                                  "containers": [{"name": "web", "image": "nginx"}]}}}})
    cluster.do("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/status", {"status": {
        "replicas": 3, "updatedReplicas": 3, "readyReplicas": 1, "availableReplicas": 1, "unavailableReplicas": 2,
        "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}]}})
    cluster.do("POST", "/apis/apps/v1/namespaces/default/replicasets", {
        "metadata": {"name": "web-7c9", "labels": {"app": "web", "pod-template-hash": "7c9"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                          "uid": dep["metadata"]["uid"], "controller": True}]},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "7c9"}},
                 "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "7c9"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
    cluster.do("PATCH", "/apis/apps/v1/namespaces/default/replicasets/web-7c9/status",
               {"status": {"replicas": 3, "readyReplicas": 1}})
    for i, (reason, message, source, first, count) in enumerate((
            ("Scheduled", "Successfully assigned default/web-7c9-abcde to node-1", "default-scheduler",
             "2024-01-01T12:00:01Z", 1),
            ("Unhealthy", "Readiness probe failed: connection refused", "kubelet", "2024-01-01T12:01:00Z", 3))):
        cluster.do("POST", "/api/v1/namespaces/default/events", {
            "metadata": {"name": f"web-7c9-abcde.{i}"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-7c9-abcde"},
            "reason": reason, "message": message, "type": "Warning" if count > 1 else "Normal",
            "source": {"component": source}, "count": count, "firstTimestamp": first,
            "lastTimestamp": "2024-01-01T12:04:00Z" if count > 1 else first})


async def test_get_pods_wide_golden(workload: FakeCluster) -> None:
    report = await m.get(workload.api, m.parse_targets(["po"]), namespace="default", output="wide", now=NOW)
    assert report.out == [
        "NAME            READY   STATUS              RESTARTS     AGE   IP           NODE     NOMINATED NODE   READINESS GATES",
        "web-7c9-abcde   1/1     Running             0            5m    10.244.1.5   node-1   <none>           <none>",
        "web-7c9-fghij   0/1     Running             2 (2m ago)   5m    10.244.2.3   node-2   <none>           <none>",
        "web-7c9-klmno   0/1     ContainerCreating   0            5m    10.244.2.4   node-2   <none>           <none>"]
    assert report.err == [] and not report.failed


async def test_get_several_kinds_prints_a_block_each_with_kind_names(workload: FakeCluster) -> None:
    targets = m.parse_targets(["svc,endpointslices,deploy,rs"])
    report = await m.get(workload.api, targets, namespace="default", now=NOW)
    assert "\n".join(report.out) == """\
NAME          TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)        AGE
service/db    ClusterIP   None         <none>        5432/TCP       5m
service/web   NodePort    10.96.0.15   <none>        80:30080/TCP   5m

NAME                                       ADDRESSTYPE   PORTS   ENDPOINTS                                      AGE
endpointslice.discovery.k8s.io/web-x7k2p   IPv4          80      10.244.1.5,10.244.2.3,10.244.2.4 + 1 more...   5m

NAME                  READY   UP-TO-DATE   AVAILABLE   AGE
deployment.apps/web   1/3     3            1           5m

NAME                      DESIRED   CURRENT   READY   AGE
replicaset.apps/web-7c9   3         3         1       5m"""


async def test_get_all_namespaces_names_json_selector_and_not_found(workload: FakeCluster) -> None:
    report = await m.get(workload.api, m.parse_targets(["svc"]), namespace=None, output="wide", now=NOW)
    assert report.out == [
        "NAMESPACE   NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)        AGE   SELECTOR",
        "default     db     ClusterIP   None         <none>        5432/TCP       5m    <none>",
        "default     web    NodePort    10.96.0.15   <none>        80:30080/TCP   5m    app=web"]
    report = await m.get(workload.api, m.parse_targets(["deploy,svc"]), namespace="default", output="name")
    assert report.out == ["deployment.apps/web", "service/db", "service/web"]
    report = await m.get(workload.api, m.parse_targets(["svc", "web"]), namespace="default", output="json")
    assert json.loads(report.out[0])["metadata"]["name"] == "web"
    report = await m.get(workload.api, m.parse_targets(["pods"]), namespace="default", output="json",
                         selector="app=nope")
    assert json.loads(report.out[0]) == {"apiVersion": "v1", "kind": "List", "items": [],
                                         "metadata": {"resourceVersion": ""}}
    report = await m.get(workload.api, m.parse_targets(["pods"]), namespace="prod")
    assert (report.out, report.err, report.failed) == ([], ["No resources found in prod namespace."], False)
    report = await m.get(workload.api, m.parse_targets(["pods,nodes"]), namespace="default", selector="app=nope")
    assert report.err == ["No resources found"]
    report = await m.get(workload.api, m.parse_targets(["svc", "web", "nope"]), namespace="default", now=NOW)
    assert report.out[1].split()[0] == "web" and report.failed
    assert report.err == ['Error from server (NotFound): services "nope" not found']


async def test_get_events_columns(workload: FakeCluster) -> None:
    report = await m.get(workload.api, m.parse_targets(["ev"]), namespace="default", now=NOW)
    assert report.out == [
        "LAST SEEN   TYPE      REASON      OBJECT              MESSAGE",
        "4m59s       Normal    Scheduled   pod/web-7c9-abcde   Successfully assigned default/web-7c9-abcde to node-1",
        "60s         Warning   Unhealthy   pod/web-7c9-abcde   Readiness probe failed: connection refused"]


def test_kinds_short_names_and_all() -> None:
    assert [r.plural for r in m.parse_kinds("po,svc,ep,deploy,rs,no,ns,netpol,ing,cm,ev")] == [
        "pods", "services", "endpoints", "deployments", "replicasets", "nodes", "namespaces", "networkpolicies",
        "ingresses", "configmaps", "events"]
    assert [r.plural for r in m.parse_kinds("all")] == ["pods", "services", "deployments", "replicasets"]
    assert m.parse_targets(["deployments.apps/web", "svc/x"]) == [(BY_PLURAL["deployments"], "web"),
                                                                  (BY_PLURAL["services"], "x")]
    with pytest.raises(cli.CliError):
        m.parse_kinds("frobs")


# --- describe ------------------------------------------------------------------------------------

async def test_describe_pod(workload: FakeCluster) -> None:
    report = await m.describe(workload.api, BY_PLURAL["pods"], ["web-7c9-abcde"], namespace="default", now=NOW)
    assert "  Ready             True " in report.out  # kubectl's trailing blanks, kept
    assert [line.rstrip() for line in report.out] == """\
Name:             web-7c9-abcde
Namespace:        default
Priority:         0
Service Account:  default
Node:             node-1/172.16.0.22
Start Time:       Mon, 01 Jan 2024 12:00:01 +0000
Labels:           app=web
Annotations:      <none>
Status:           Running
IP:               10.244.1.5
IPs:
  IP:           10.244.1.5
Controlled By:  ReplicaSet/web-7c9
Containers:
  web:
    Container ID:   containerd://abc
    Image:          nginx
    Image ID:
    Port:           80/TCP
    Host Port:      0/TCP
    State:          Running
      Started:      Mon, 01 Jan 2024 12:00:05 +0000
    Ready:          True
    Restart Count:  0
    Readiness:      http-get http://:80/ delay=0s timeout=1s period=5s #success=1 #failure=3
    Environment:    <none>
    Mounts:         <none>
Conditions:
  Type              Status
  Initialized       True
  Ready             True
  ContainersReady   True
  PodScheduled      True
Volumes:            <none>
QoS Class:          BestEffort
Node-Selectors:     <none>
Tolerations:        <none>
Events:
  Type     Reason     Age               From               Message
  ----     ------     ----              ----               -------
  Normal   Scheduled  4m59s             default-scheduler  Successfully assigned default/web-7c9-abcde to node-1
  Warning  Unhealthy  60s (x3 over 4m)  kubelet            Readiness probe failed: connection refused""".split("\n")
    assert not report.failed


async def test_describe_prefix_service_deployment_and_not_found(workload: FakeCluster) -> None:
    report = await m.describe(workload.api, BY_PLURAL["pods"], ["web-7c9"], namespace="default", now=NOW)
    assert [line for line in report.out if line.startswith("Name:")] == [
        "Name:             web-7c9-abcde", "Name:             web-7c9-fghij", "Name:             web-7c9-klmno"]
    assert "      Reason:       ContainerCreating" in report.out
    assert "    Last State:     Terminated" in report.out
    report = await m.describe(workload.api, BY_PLURAL["services"], ["web"], namespace="default", now=NOW)
    text = "\n".join(report.out)
    assert "Type:              NodePort\n" in text
    assert "Port:              http  80/TCP\nTargetPort:        80/TCP\nNodePort:          http  30080/TCP\n" \
           "Endpoints:         10.244.1.5:80,10.244.3.9:80\n" in text  # ready endpoints only
    assert text.endswith("Events:            <none>")
    report = await m.describe(workload.api, BY_PLURAL["deployments"], ["web"], namespace="default", now=NOW)
    text = "\n".join(report.out)
    assert "Replicas:               3 desired | 3 updated | 3 total | 1 available | 2 unavailable\n" in text
    assert "OldReplicaSets:  <none>\nNewReplicaSet:   web-7c9 (3/3 replicas created)\n" in text
    report = await m.describe(workload.api, BY_PLURAL["pods"], ["zzz"], namespace="default", now=NOW)
    assert report.err == ['Error from server (NotFound): pods "zzz" not found'] and report.failed


# --- through the CLI -----------------------------------------------------------------------------

@pytest.fixture
def cli_cluster(cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    async def cluster_api(ns: Any) -> Any:
        return cluster.api

    monkeypatch.setattr(aks, "cluster_api", cluster_api)
    return cluster


def test_the_cli_verbs_print_kubectl_lines_and_exit_codes(cli_cluster: FakeCluster, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "1-app.yaml").write_text(APP)
    (tmp_path / "app" / "2-bad.yaml").write_text("apiVersion: bar/v1\nkind: Foo\nmetadata: {name: x}\n")
    assert cli.main(["apply", "-f", str(tmp_path / "app")]) == 1
    out, err = capsys.readouterr()
    assert out == "deployment.apps/web created\nservice/web created\n"
    assert err == (f'error: resource mapping not found for name: "x" namespace: "" from '
                   f'"{tmp_path / "app" / "2-bad.yaml"}": no matches for kind "Foo" in version "bar/v1"\n')
    assert cli.main(["apply", "-f", str(tmp_path / "app" / "1-app.yaml")]) == 0
    assert capsys.readouterr().out == "deployment.apps/web unchanged\nservice/web unchanged\n"
    assert cli.main(["get", "deploy,svc", "-o", "name"]) == 0
    assert capsys.readouterr().out == "deployment.apps/web\nservice/web\n"
    assert cli.main(["get", "pods"]) == 0
    assert capsys.readouterr() == ("", "No resources found in default namespace.\n")
    assert cli.main(["delete", "-f", str(tmp_path / "app" / "1-app.yaml")]) == 0
    assert capsys.readouterr().out == 'deployment.apps "web" deleted\nservice "web" deleted\n'
    assert cli.main(["delete", "deployment", "web"]) == 1
    assert capsys.readouterr().err == 'Error from server (NotFound): deployments.apps "web" not found\n'

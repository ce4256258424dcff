"""``hcinet exec`` (scenarios/podexec.py): the Pod read from the real API server router, the
command run by the pod's node — a real PodManager over two in-process node datapaths (the
node VM's ``pod_exec`` verb minus the management socket) — and kubectl's wording for every
refusal, from the CLI's argv to its exit status."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "node"))
sys.path.insert(0, str(HERE.parent / "vm"))
from test_manifests import FakeCluster  # noqa: E402
from test_pods import World, netexec, sleeper  # noqa: E402

from agents import mgmt  # noqa: E402
from scenarios import aks, cli, podexec  # noqa: E402
from scenarios.podexec import NodeUnreachable, exec_in_pod, node_refusal, split_args, split_command  # noqa: E402


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    c = FakeCluster(tmp_path)
    for name, ip in (("node0", "172.16.0.11"), ("node1", "172.16.0.12")):
        c.do("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                                        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
    yield c
    c.store.close()


def api_pod(name: str, containers: list[dict[str, Any]], node: str | None = "node0", phase: str = "Running",
            ns: str = "default", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {"containers": containers}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": phase}}


def put(c: FakeCluster, obj: dict[str, Any]) -> dict[str, Any]:
    ns = obj["metadata"]["namespace"]
    created: dict[str, Any] = c.do("POST", f"/api/v1/namespaces/{ns}/pods", obj)
    c.do("PATCH", f"/api/v1/namespaces/{ns}/pods/{obj['metadata']['name']}/status", {"status": obj["status"]})
    return created


class Nodes:
    """``node_exec`` over in-process PodManagers, refusing as the node VM's verb does."""

    def __init__(self, world: World | None = None, down: tuple[str, ...] = ()) -> None:
        self.world, self.down = world, down
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, node: str, args: dict[str, Any]) -> Mapping[str, Any]:
        self.calls.append((node, args))
        if node in self.down:
            raise NodeUnreachable(node)
        if self.world is None:
            return {"rc": 0, "stdout": "ok\n", "stderr": ""}
        manager = self.world.nodes[node].manager
        try:  # agents/node/vm.py _m_pod_exec
            rc, out, err = await manager.exec(args["namespace"], args["name"], args["argv"], args.get("input", ""),
                                              args.get("container", ""))
        except (LookupError, RuntimeError) as exc:
            raise mgmt.RemoteError(str(exc)) from None
        return {"rc": rc, "stdout": out, "stderr": err}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- the pod, through the API server ------------------------------------------------------------


@pytest.mark.parametrize(("pod", "args", "stderr"), [
    (None, {}, 'Error from server (NotFound): pods "web" not found\n'),
    (api_pod("web", [sleeper()], phase="Succeeded"), {},
     "error: cannot exec into a container in a completed pod; current phase is Succeeded\n"),
    (api_pod("web", [sleeper()], phase="Failed"), {},
     "error: cannot exec into a container in a completed pod; current phase is Failed\n"),
    (api_pod("web", [sleeper()]), {"container": "nope"},
     "Error from server (BadRequest): container nope is not valid for pod web\n"),
    (api_pod("web", [sleeper()], node=None, phase="Pending"), {},
     "Error from server (BadRequest): pod web does not have a host assigned\n"),
    (api_pod("web", [sleeper()], node="node1"), {},
     "Error from server: error dialing backend: dial tcp 172.16.0.12:10250: connect: no route to host\n"),
])
def test_refusals_before_the_node_runs_anything(cluster: FakeCluster, pod: dict[str, Any] | None,
                                                args: dict[str, Any], stderr: str) -> None:
    if pod is not None:
        put(cluster, pod)
    nodes = Nodes(down=("node1",))
    result = run(exec_in_pod(cluster.api, nodes, "default", "web", ["true"], **args))
    assert (result.rc, result.stdout, result.stderr) == (1, "", stderr)
    assert all(node == "node1" for node, _ in nodes.calls)  # only the unreachable node was tried


def test_the_pod_is_looked_up_in_its_namespace_and_its_node_gets_the_call(cluster: FakeCluster) -> None:
    cluster.do("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}})
    put(cluster, api_pod("web", [sleeper()], node="node1", ns="prod"))
    nodes = Nodes()
    result = run(exec_in_pod(cluster.api, nodes, "prod", "web", ["nc", "-z", "10.96.0.15", "80"], stdin="hi"))
    assert (result.rc, result.stdout, result.stderr) == (0, "ok\n", "")
    assert nodes.calls == [("node1", {"namespace": "prod", "name": "web", "argv": ["nc", "-z", "10.96.0.15", "80"],
                                      "container": "client", "input": "hi"})]
    missing = run(exec_in_pod(cluster.api, nodes, "default", "web", ["true"]))
    assert missing.stderr == 'Error from server (NotFound): pods "web" not found\n'


def test_default_container_notice_and_annotation(cluster: FakeCluster) -> None:
    two = [dict(netexec(), name="app"), sleeper()]
    put(cluster, api_pod("multi", two))
    put(cluster, api_pod("picked", two, annotations={"kubectl.kubernetes.io/default-container": "client"}))
    nodes = Nodes()
    result = run(exec_in_pod(cluster.api, nodes, "default", "multi", ["true"]))
    assert result.stderr == 'Defaulted container "app" out of: app, client\n'
    assert nodes.calls[-1][1]["container"] == "app"
    assert run(exec_in_pod(cluster.api, nodes, "default", "multi", ["true"], quiet=True)).stderr == ""
    assert run(exec_in_pod(cluster.api, nodes, "default", "multi", ["true"], container="client")).stderr == ""
    assert nodes.calls[-1][1]["container"] == "client"
    assert run(exec_in_pod(cluster.api, nodes, "default", "picked", ["true"])).stderr == ""
    assert nodes.calls[-1][1]["container"] == "client"


@pytest.mark.parametrize(("message", "line"), [
    ('pods "web" not found on node node0', "error: unable to upgrade connection: pod does not exist"),
    ('unable to upgrade connection: container not found ("app")',
     'error: unable to upgrade connection: container not found ("app")'),
    ("cannot exec into a container in a completed pod; current phase is Failed",
     "error: cannot exec into a container in a completed pod; current phase is Failed"),
    ("container x is not valid for pod web", "Error from server (BadRequest): container x is not valid for pod web"),
    ("pods: node node0 has no pod network yet", "Error from server: pods: node node0 has no pod network yet"),
])
def test_node_refusals_read_as_kubectl_prints_the_kubelets(message: str, line: str) -> None:
    assert node_refusal(message) == line


# --- with real node datapaths --------------------------------------------------------------------


def test_exec_runs_the_tool_in_the_pods_namespace_on_its_node(tmp_path: Path) -> None:
    """curl from a pod on node1 to a pod on node0; the tool's exit code comes back as kubectl
    shows it; a pod the kubelet does not run (yet) is kubectl's 'unable to upgrade'."""
    c = FakeCluster(tmp_path)

    async def main() -> None:
        world = World("calico")
        try:
            await asyncio.wait_for(scenario(world), 15)
        finally:
            await world.close()

    async def scenario(w: World) -> None:
        web = api_pod("web", [netexec(readinessProbe={"httpGet": {"path": "/healthz", "port": 8080},
                                                      "periodSeconds": 1})], node="node0")
        client = api_pod("far", [sleeper()], node="node1")
        for obj in (web, client):
            put(c, obj)
            w.create({**obj, "metadata": {**obj["metadata"], "uid": f"uid-{obj['metadata']['name']}"},
                      "status": {"phase": "Pending"}})
        w.sync_routes()
        ip = (await w.ready("default/web"))["podIP"]
        await w.ready("default/far")
        w.sync_routes()
        nodes = Nodes(w)
        ok = await exec_in_pod(c.api, nodes, "default", "far", ["curl", "-s", f"http://{ip}:8080/hostname"])
        assert (ok.rc, ok.stdout, ok.stderr) == (0, "web", "")
        assert nodes.calls[-1][0] == "node1"
        refused = await exec_in_pod(c.api, nodes, "default", "far", ["curl", "-sS", "-m", "2", f"http://{ip}:81/"])
        assert refused.rc == 7 and refused.stdout == ""
        assert refused.stderr.startswith("curl: (7) Failed to connect to ")
        assert refused.stderr.endswith("\ncommand terminated with exit code 7\n")
        # The API says node0 runs "ghost" but node0's kubelet has no such pod.
        put(c, api_pod("ghost", [sleeper()], node="node0"))
        ghost = await exec_in_pod(c.api, nodes, "default", "ghost", ["true"])
        assert (ghost.rc, ghost.stderr) == (1, "error: unable to upgrade connection: pod does not exist\n")

    try:
        uvloop.run(main())
    finally:
        c.store.close()


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(("rest", "head", "command"), [
    (["--", "curl", "-s", "http://x/"], [], ["curl", "-s", "http://x/"]),
    (["-n", "prod", "-c", "app", "--", "ping", "-c", "3", "10.244.1.5"], ["-n", "prod", "-c", "app"],
     ["ping", "-c", "3", "10.244.1.5"]),
    (["--", "nc", "--", "x"], [], ["nc", "--", "x"]),
])
def test_split_command(rest: list[str], head: list[str], command: list[str]) -> None:
    assert split_command(rest) == (head, command)


@pytest.mark.parametrize(("rest", "message"), [
    (["sh"], "exec [POD] [COMMAND] is not supported anymore. Use exec [POD] -- [COMMAND] instead"),
    ([], "you must specify at least one command for the container"),
    (["-n", "prod", "--"], "you must specify at least one command for the container"),
    (["-n", "prod", "--timeout", "9"], "you must specify at least one command for the container"),
    (["-n", "prod", "ping", "x"], "exec [POD] [COMMAND] is not supported anymore"),
])
def test_split_command_refusals(rest: list[str], message: str) -> None:
    with pytest.raises(cli.CliError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        split_command(rest)


def test_split_args_needs_a_pod_first() -> None:
    assert split_args(["web", "--", "true"]) == ("web", [], ["true"])
    for args in ([], ["--", "web", "true"]):
        with pytest.raises(cli.CliError, match=r"^expected 'exec \(POD \| TYPE/NAME\) COMMAND"):
            split_args(args)


@pytest.fixture
def wired(cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> Nodes:
    cluster.do("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}})
    put(cluster, api_pod("web", [dict(netexec(), name="app"), sleeper()], ns="prod"))
    nodes = Nodes()
    replies: list[dict[str, Any]] = [{"rc": 0, "stdout": "PING 10.244.1.5\n", "stderr": ""}]

    async def fake(node: str, args: dict[str, Any]) -> Mapping[str, Any]:
        await nodes(node, args)
        return replies.pop(0) if replies else {"rc": 3, "stdout": "", "stderr": "nc: timed out\n"}

    async def cluster_api(ns: Any) -> Any:
        assert getattr(ns, "cluster", None) == "cluster1"
        return cluster.api

    async def node_exec(ns: Any, timeout: float) -> Any:
        nodes.timeout = timeout  # type: ignore[attr-defined]
        return fake

    monkeypatch.setattr(aks, "cluster_api", cluster_api)
    monkeypatch.setattr(podexec, "_node_exec", node_exec)
    monkeypatch.setattr(cli, "_stdin_text", lambda: "")
    return nodes


def test_the_cli_passes_options_after_the_pod_and_exits_with_the_tools_status(
        wired: Nodes, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["exec", "web", "-n", "prod", "-c", "client", "--cluster", "cluster1", "--timeout", "9", "--",
                   "ping", "-c", "3", "10.244.1.5"])
    out, err = capsys.readouterr()
    assert (rc, out, err) == (0, "PING 10.244.1.5\n", "")
    assert wired.calls[-1] == ("node0", {"namespace": "prod", "name": "web", "argv": ["ping", "-c", "3", "10.244.1.5"],
                                         "container": "client"})
    assert wired.timeout == 9.0  # type: ignore[attr-defined]
    rc = cli.main(["exec", "-n", "prod", "--cluster", "cluster1", "web", "--", "nc", "-z", "-v", "10.96.0.15", "80"])
    out, err = capsys.readouterr()
    assert rc == 3 and out == ""
    assert err == ('Defaulted container "app" out of: app, client\nnc: timed out\n'
                   "command terminated with exit code 3\n")
    rc = cli.main(["exec", "web", "--cluster", "cluster1", "--", "true"])  # namespace default: no such pod
    assert (rc, capsys.readouterr().err) == (1, 'Error from server (NotFound): pods "web" not found\n')
    rc = cli.main(["exec", "web", "-n", "prod", "--cluster", "cluster1", "sh"])
    assert rc == 1
    assert capsys.readouterr().err == ("hcinet: error: exec [POD] [COMMAND] is not supported anymore. "
                                       "Use exec [POD] -- [COMMAND] instead\n")


def test_stdin_is_passed_unless_it_is_a_terminal(wired: Nodes, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_stdin_text", lambda: "GET / HTTP/1.0\r\n\r\n")
    assert cli.main(["exec", "web", "-n", "prod", "--cluster", "cluster1", "-i", "--", "nc", "10.96.0.15", "80"]) == 0
    assert wired.calls[-1][1]["input"] == "GET / HTTP/1.0\r\n\r\n"
    assert cli.main(["exec", "web", "-n", "prod", "--cluster", "cluster1", "--no-stdin", "--", "true"]) == 3
    assert "input" not in wired.calls[-1][1]
    capsys.readouterr()


def test_exec_is_documented_in_the_cli_reference() -> None:
    text = (HERE.parents[1] / "docs" / "cli.md").read_text()
    assert "hcinet exec POD" in text and "command terminated with exit code" in text

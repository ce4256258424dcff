"""`hcinet run`: scenario manifests and steps (schema), and a real run: a load from one VM to
an HTTP app on another, healthy and with the server VM stopped mid-run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from scenarios import cli, rundir, schema

ROOT = Path(__file__).resolve().parents[2]

AKS = """
name: t
networks:
  - {name: aks-net, ipAddressPrefix: 172.16.0.0/24, gateway: 172.16.0.1, dnsServers: [172.16.0.2],
     k8sNodeIpPoolStart: 172.16.0.20, k8sNodeIpPoolEnd: 172.16.0.99,
     vipPoolStart: 172.16.0.150, vipPoolEnd: 172.16.0.199}
management: {network: aks-net, cloudAgentIp: 172.16.0.5}
clusters:
  - name: c1
    vnet: aks-net
    nodePools: [{name: c1-linux, nodeCount: 1}]
    manifests:
      - app.yaml
      - {apiVersion: v1, kind: Service, metadata: {name: web}, spec: {type: LoadBalancer, ports: [{port: 80}]}}
clients:
  - {name: client-dc, network: aks-net, ip: 172.16.0.10}
"""

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
"""


def test_manifests_are_read_relative_to_the_scenario_and_steps_parse(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(APP)
    steps = """
steps:
  - load: {name: web, from: client-dc, url: "http://${VIP:default/web}/", rps: 100, duration: 20s,
           background: true}
  - wait: 1.5
  - stop: c1-linux-0
  - wait: {seconds: 500ms}
  - start: c1-linux-0
manifests:
  - {path: app.yaml}
  - {cluster: c1, document: {apiVersion: v1, kind: Namespace, metadata: {name: x}}}
"""
    (tmp_path / "s.yaml").write_text(AKS + steps)
    sc = schema.load(tmp_path / "s.yaml")
    assert [(m.cluster, m.source, [d["kind"] for d in m.documents]) for m in sc.manifests] == [
        ("c1", str(tmp_path / "app.yaml"), ["Deployment", "ConfigMap"]),
        ("c1", "clusters[0].manifests[1]", ["Service"]),
        ("c1", str(tmp_path / "app.yaml"), ["Deployment", "ConfigMap"]),
        ("c1", "manifests[1].document", ["Namespace"])]
    load, wait, stop, wait2, start = sc.steps
    assert (load.kind, load.name, load.vm, load.rps, load.duration, load.background) == (
        "load", "web", "client-dc", 100.0, 20.0, True)
    assert load.load_argv("http://1.2.3.4/") == ["load", "http://1.2.3.4/", "--rps", "100", "--duration", "20",
                                                 "--timeout", "2", "--connections", "new", "--json"]
    assert (wait.seconds, wait2.seconds, stop.vm, start.kind) == (1.5, 0.5, "c1-linux-0", "start")
    assert "manifests" not in sc.doc() and "steps" not in sc.doc()  # MOC and state.json never see them
    assert schema.vip_refs("http://${VIP:c1/default/web}:8080/x") == [("c1", "default", "web")]


@pytest.mark.parametrize(("extra", "message"), [
    ("steps: [{load: {from: client-dc, url: 'http://x/', rps: 0, duration: 1}}]",
     "steps[0].load.rps: expected a number > 0, got 0"),
    ("steps: [{load: {from: nobody, url: 'http://x/', rps: 1, duration: 1}}]",
     "steps[0].load.from: no VM named nobody"),
    ("steps: [{load: {from: client-dc, url: 'https://x/', rps: 1, duration: 1}}]",
     "steps[0].load.url: https://x/: only http:// URLs"),
    ("steps: [{load: {from: client-dc, url: 'http://${VIP:web}/', rps: 1, duration: 1}}]",
     "steps[0].load.url: ${VIP:web}: expected ${VIP:namespace/service}"),
    ("steps: [{load: {from: client-dc, url: 'http://${VIP:c9/default/web}/', rps: 1, duration: 1}}]",
     "steps[0].load.url: no cluster named c9"),
    ("steps: [{load: {from: client-dc, url: 'http://x/', rps: 1}}]", "steps[0].load.duration: required"),
    ("steps: [{load: {name: a, from: client-dc, url: 'http://x/', rps: 1, duration: 1}},"
     " {load: {name: a, from: client-dc, url: 'http://x/', rps: 1, duration: 1}}]",
     "steps[1].load.name: duplicate load name a"),
    ("steps: [{wait: soon}]", "steps[0].wait.seconds: expected seconds (e.g. 20, 20s, 500ms), got 'soon'"),
    ("steps: [{wait: 1, stop: c1-lb}]", "steps[0]: expected a mapping with one key"),
    ("manifests: [{cluster: c2, path: app.yaml}]", "manifests[0].cluster: no cluster named c2 (known: c1)"),
    ("manifests: [{path: missing.yaml}]", "manifests[0].path: "),
    ("manifests: [{document: {kind: Service}}]",
     "manifests[0].document: expected a Kubernetes object (a mapping with apiVersion and kind)"),
    ("manifests: [{path: app.yaml, document: {}}]", "manifests[0]: give exactly one of path"),
])
def test_bad_manifests_and_steps_name_their_key(tmp_path: Path, extra: str, message: str) -> None:
    (tmp_path / "app.yaml").write_text(APP)
    (tmp_path / "s.yaml").write_text(AKS + extra + "\n")
    with pytest.raises(schema.ScenarioError) as info:
        schema.load(tmp_path / "s.yaml")
    assert str(info.value).startswith(message), str(info.value)


# --- a real run (plain VMs: no cluster needed for a load against a client VM's HTTP app) -------

FABRIC = """
name: run-test
networks:
  - {name: dc, ipAddressPrefix: 172.16.0.0/24, gateway: 172.16.0.1}
vms:
  - {name: server, network: dc, ip: 172.16.0.10, apps: [{kind: http, port: 8080}]}
  - {name: client, network: dc, ip: 172.16.0.11}
"""


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(rundir.ENV_STATE_DIR, str(tmp_path / "state"))
    monkeypatch.delenv("HCINET_DEPLOYMENT", raising=False)
    return tmp_path


def run_json(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, Any]:
    rc = cli.main(["run", str(path), "-o", "json", "--deployment", "runtest"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc: dict[str, Any] = json.loads(out)  # ONE JSON object on stdout; progress went to stderr
    return doc


def test_run_reports_a_healthy_load_then_failures_with_the_server_stopped(
        state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    healthy = state / "healthy.yaml"
    healthy.write_text(FABRIC + textwrap.dedent("""
        steps:
          - load: {name: web, from: client, url: "http://172.16.0.10:8080/", rps: 50, duration: 2}
        """))
    doc = run_json(capsys, healthy)
    assert set(doc) >= {"scenario", "loads", "conflict_events", "duration_s"}
    assert doc["scenario"] == "run-test" and doc["conflict_events"] == []
    (load,) = doc["loads"]
    assert set(load) >= {"name", "url", "requests", "failures", "failures_by_kind", "failure_rate"}
    assert (load["name"], load["url"], load["requests"], load["failures"]) == (
        "web", "http://172.16.0.10:8080/", 100, 0)
    assert isinstance(load["failures"], int) and load["failure_rate"] == 0.0 and load["failures_by_kind"] == {}
    assert not rundir.for_deployment("runtest").read_pids()  # torn down

    chaos = state / "chaos.yaml"
    chaos.write_text(FABRIC + textwrap.dedent("""
        steps:
          - load: {name: web, from: client, url: "http://172.16.0.10:8080/", rps: 50, duration: 3,
                   timeout: 0.5, background: true}
          - wait: 0.8
          - stop: server
          - wait: 0.8
          - start: server
        """))
    doc = run_json(capsys, chaos)
    (load,) = doc["loads"]
    assert load["requests"] == 150 and load["failures"] > 0
    assert load["failures"] == sum(load["failures_by_kind"].values())
    first = load["per_second"][0]
    assert first["failures"] < first["requests"]  # before the stop, requests succeeded
    assert set(load["failures_by_kind"]) <= {"timeout", "refused", "reset", "unreachable"}
    assert load["per_second"][-1]["failures"] < load["per_second"][-1]["requests"]  # back after the start


def test_run_table_and_errors(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = state / "empty.yaml"
    empty.write_text(FABRIC)
    assert cli.main(["run", str(empty)]) == 1
    assert capsys.readouterr().err == f"hcinet: error: {empty}: nothing to run (no manifests, no steps)\n"
    bad = state / "bad.yaml"
    bad.write_text(FABRIC + "steps: [{load: {from: client, url: 'http://nosuch.example/', rps: 5, duration: 1}}]\n")
    assert cli.main(["run", str(bad), "--deployment", "runtest"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("hcinet: error: load load-0 on client: load: nosuch.example:"), err
    assert not rundir.for_deployment("runtest").read_pids()
    ok = state / "ok.yaml"
    ok.write_text(FABRIC + "steps: [{load: {from: client, url: 'http://172.16.0.10:8080/', rps: 10, duration: 1}}]\n")
    assert cli.main(["run", str(ok), "--deployment", "runtest"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("scenario run-test: 1 loads, 0 conflict events") and "load-0" in out and "0.00%" in out


def test_vip_substitution_and_readiness_over_a_fake_api() -> None:
    import trio

    from scenarios import run as run_mod

    svc: dict[str, Any] = {"metadata": {"namespace": "default", "name": "web"}, "spec": {"type": "LoadBalancer"},
                           "status": {}}
    dep: dict[str, Any] = {"metadata": {"namespace": "default", "name": "web"}, "spec": {"replicas": 2},
                           "status": {"availableReplicas": 1}}
    calls = 0

    async def api(method: str, path: str, query: Any, body: Any) -> tuple[int, Any]:
        nonlocal calls
        calls += 1
        if calls == 3:  # the controllers catch up while the run waits
            svc["status"] = {"loadBalancer": {"ingress": [{"ip": "172.16.0.150"}]}}
            dep["status"]["availableReplicas"] = 2
        if path == "/apis/apps/v1/deployments":
            return 200, {"items": [dep]}
        if path == "/api/v1/services":
            return 200, {"items": [svc]}
        if path == "/api/v1/namespaces/default/services/web":
            return 200, svc
        return 404, {}

    async def main() -> str:
        assert await run_mod.pending(api) == ["deployment default/web not available",
                                              "service default/web has no EXTERNAL-IP"]
        await run_mod.wait_ready({"c1": api}, timeout=5)
        sc = schema.loads(AKS.replace("      - app.yaml\n", ""))
        return await run_mod.resolve_url("http://${VIP:default/web}:8080/x", sc, None, {"c1": api})

    assert trio.run(main) == "http://172.16.0.150:8080/x"

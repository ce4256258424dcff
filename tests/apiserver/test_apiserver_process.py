"""The API server as a VM process on the real broker: HTTP over the emulated network (curl
from a client VM), the ``api`` management verb, kill -9 and restart with nothing acknowledged
lost, and a watcher that resumes with exactly the events it missed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))
from test_vm_process import READY_TIMEOUT, VMProc, _read_line, vm_config  # noqa: E402

from agents import mgmt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
API_IP, CLIENT_IP = "172.16.0.20", "172.16.0.10"


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[dict[str, Any]]:
    rfd, wfd = os.pipe()
    broker = subprocess.Popen(
        [sys.executable, "-m", "broker", "--data", "tcp://127.0.0.1:0", "--mgmt", "tcp://127.0.0.1:0",
         "--ready-fd", str(wfd)], pass_fds=(wfd,), cwd=ROOT, stdout=subprocess.DEVNULL)
    os.close(wfd)
    try:
        ready = _read_line(rfd, READY_TIMEOUT)
        os.close(rfd)
        assert ready["ready"], ready
        mgmt.call(ready["mgmt"], "add_network", {"name": "dc", "prefix": "172.16.0.0/24", "gateway": "172.16.0.1",
                                                 "vlan": 0, "mtu": 1500, "external": False})
        yield ready
    finally:
        broker.kill()
        broker.wait(5)


def api_config(broker: str, run_dir: Path, **extra: Any) -> dict[str, Any]:
    cfg = vm_config("cluster1-control-plane-0", API_IP, broker, run_dir)
    cfg.update({"kind": "apiserver", "cluster": "cluster1", "vip": "172.16.0.150",
                "state_dir": str(run_dir / "state"), "time_scale": 0.1, "kube_vip": False, **extra})
    return cfg


def api(vm: VMProc, method: str, path: str, body: Any = None, query: Any = None) -> tuple[int, Any]:
    res = vm.call("api", {"method": method, "path": path, "body": body, "query": query})
    return res["status"], res["body"]


def curl(client: VMProc, *args: str) -> dict[str, Any]:
    return client.exec("curl", "-s", *args)


def test_apiserver_vm_end_to_end(fabric: dict[str, Any], tmp_path: Path) -> None:
    broker = fabric["data"]
    cfg = api_config(broker, tmp_path)
    apiserver = VMProc(cfg, tmp_path)
    client = VMProc(vm_config("client", CLIENT_IP, broker, tmp_path), tmp_path)
    procs = [apiserver, client]
    try:
        assert apiserver.ready["ready"], apiserver.ready
        assert client.ready["ready"], client.ready
        # bootstrap: the default namespaces and the kubernetes Service
        status, body = api(apiserver, "GET", "/api/v1/namespaces")
        assert status == 200 and {n["metadata"]["name"] for n in body["items"]} >= {"default", "kube-system",
                                                                                        "kube-node-lease"}
        status, svc = api(apiserver, "GET", "/api/v1/namespaces/default/services/kubernetes")
        assert svc["spec"]["clusterIP"] == "10.96.0.1"
        status, eps = api(apiserver, "GET", "/api/v1/namespaces/default/endpoints/kubernetes")
        assert eps["subsets"][0]["addresses"][0]["ip"] == API_IP

        # real HTTP over the emulated network: create, read, errors as Status objects
        res = curl(client, "-X", "POST", "-H", "Content-Type: application/json", "-d",
                   json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}),
                   f"http://{API_IP}:6443/api/v1/nodes")
        assert res["rc"] == 0, res
        created = json.loads(res["stdout"])
        assert created["metadata"]["name"] == "node-a"
        res = curl(client, "-w", "%{http_code}", f"http://{API_IP}:6443/api/v1/nodes/nope")
        assert res["stdout"].endswith("404") and '"reason":"NotFound"' in res["stdout"]
        # node IPAM gave it a pod CIDR
        deadline = time.monotonic() + 5
        while True:
            node = api(apiserver, "GET", "/api/v1/nodes/node-a")[1]
            if node.get("spec", {}).get("podCIDR") or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # polling the API for the controller's write
        assert node["spec"]["podCIDR"] == "10.244.0.0/24"
        # a stale update is refused
        status, body = api(apiserver, "PUT", "/api/v1/nodes/node-a", created)
        assert status == 409 and body["reason"] == "Conflict"

        # the watcher's position: a watch over HTTP (bounded by timeoutSeconds) from rv0
        rv0 = api(apiserver, "GET", "/api/v1/configmaps")[1]["metadata"]["resourceVersion"]
        for i in range(3):
            assert api(apiserver, "POST", "/api/v1/namespaces/default/configmaps",
                       {"metadata": {"name": f"c{i}"}, "data": {"i": str(i)}})[0] == 201
        res = curl(client, f"http://{API_IP}:6443/api/v1/configmaps?watch=1&resourceVersion={rv0}&timeoutSeconds=1")
        assert res["rc"] == 0, res
        seen = [json.loads(line) for line in res["stdout"].splitlines()]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen] == [
            ("ADDED", "c0"), ("ADDED", "c1"), ("ADDED", "c2")]
        last_rv = seen[-1]["object"]["metadata"]["resourceVersion"]

        # acknowledged writes, then kill -9
        assert api(apiserver, "PATCH", "/api/v1/namespaces/default/configmaps/c0", {"data": {"i": "zero"}})[0] == 200
        assert api(apiserver, "DELETE", "/api/v1/namespaces/default/configmaps/c1")[0] == 200
        apiserver.kill()
        apiserver = VMProc(cfg, tmp_path)  # MOC's HA restart, same config and state
        procs.append(apiserver)
        assert apiserver.ready["ready"], apiserver.ready
        assert api(apiserver, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c3"}})[0] == 201
        status, cms = api(apiserver, "GET", "/api/v1/namespaces/default/configmaps")
        assert {c["metadata"]["name"]: c.get("data") for c in cms["items"]} == {
            "c0": {"i": "zero"}, "c2": {"i": "2"}, "c3": None}
        # the watcher resumes from its last resourceVersion: exactly what it missed, in order
        res = curl(client, f"http://{API_IP}:6443/api/v1/namespaces/default/configmaps?watch=1"
                           f"&resourceVersion={last_rv}&timeoutSeconds=1")
        missed = [json.loads(line) for line in res["stdout"].splitlines()]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in missed] == [
            ("MODIFIED", "c0"), ("DELETED", "c1"), ("ADDED", "c3")]
        # the same through the management plane
        status, body = api(apiserver, "GET", "/api/v1/namespaces/default/configmaps",
                           query={"watch": "1", "resourceVersion": last_rv})
        assert [e["type"] for e in body["events"]] == ["MODIFIED", "DELETED", "ADDED"]
        stats = apiserver.call("stats")["apiserver"]
        # c0, c2, c3 and the CoreDNS addon's kube-system/coredns
        assert stats["store"]["objects"]["configmaps"] == 4 and stats["cluster"] == "cluster1"
        assert apiserver.terminate() == 0
    finally:
        for p in procs:
            p.kill()


def test_kube_vip_claims_the_vip(fabric: dict[str, Any], tmp_path: Path) -> None:
    broker = fabric["data"]
    apiserver = VMProc(api_config(broker, tmp_path, kube_vip=True), tmp_path)
    client = VMProc(vm_config("client", CLIENT_IP, broker, tmp_path), tmp_path)
    try:
        assert apiserver.ready["ready"] and client.ready["ready"]
        assert apiserver.call("stats")["announcing"] == ({"nic": "eth0", "ips": ("172.16.0.150",)},)
        res = curl(client, "http://172.16.0.150:6443/healthz")
        assert res == {"rc": 0, "stdout": "ok", "stderr": ""}, res
    finally:
        apiserver.kill()
        client.kill()

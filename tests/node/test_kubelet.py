"""The kubelet against a fake API server (an ``serve_http`` handler recording requests) over
the in-process fabric: registration body, Lease renewals at the scaled interval, retries
while the API server is away, Ready posted again after the lifecycle controller's Unknown."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))
from vm_loopnet import LoopNet  # noqa: E402

from agents.kube.client import KubeClient  # noqa: E402
from agents.node.kubelet import (  # noqa: E402
    LEASES,
    Kubelet,
    KubeletConfig,
    KubeletConfigError,
    lease_object,
    node_object,
    ready_status,
    user_agent,
)
from agents.vm.http import Request, Response, json_response, serve_http  # noqa: E402
from agents.vm.streams import AsyncStack  # noqa: E402

NODE_IP, API = "172.16.0.21", "172.16.0.150"
SCALE = 0.01  # lease renew 0.1 s, status update 0.1 s
MICRO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def config(**over: Any) -> KubeletConfig:
    raw = {"cluster": "cluster1", "pool": "cluster1-linux", "os": "linux", "apiserver": f"{API}:6443",
           "max_pods": 110, "time_scale": SCALE, **over}
    return KubeletConfig.parse("cluster1-linux-0", raw)


class FakeApi:
    """Nodes and Leases in dicts, with resourceVersions, 409s and a switch to fail."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, str, str, Any]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.down = False
        self.changed = asyncio.Event()
        self.agents: set[str] = set()

    def _status(self, code: int, reason: str, message: str) -> Response:
        return json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                              "reason": reason, "code": code}, code)

    def _store(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", f"uid-{self.rv}")
        self.objects[path] = obj
        return obj

    async def handle(self, req: Request) -> Response:
        body: Any = json.loads(req.body) if req.body else {}
        self.agents.add(req.headers.get("user-agent", ""))
        recorded = json.loads(req.body) if req.body else None  # as sent: the store mutates its copy
        self.requests.append((asyncio.get_running_loop().time(), req.method, req.path, recorded))
        self.changed.set()
        if self.down:
            return self._status(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        if req.method == "POST":
            path = f"{req.path}/{body['metadata']['name']}"
            if path in self.objects:
                return self._status(409, "AlreadyExists", f'"{body["metadata"]["name"]}" already exists')
            return json_response(self._store(path, body), 201)
        path = req.path.removesuffix("/status")
        current = self.objects.get(path)
        if current is None:
            return self._status(404, "NotFound", f'"{path.rsplit("/", 1)[1]}" not found')
        if req.method == "GET":
            return json_response(current)
        if req.method == "PUT":
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return self._status(409, "Conflict", "the object has been modified")
            body["metadata"]["uid"] = current["metadata"]["uid"]
            return json_response(self._store(path, body))
        if req.method == "PATCH":
            merged = {**current, "status": {**current.get("status", {}), **body.get("status", {})}}
            return json_response(self._store(path, merged))
        return self._status(405, "MethodNotAllowed", req.method)

    def of(self, method: str, prefix: str) -> list[tuple[float, str, str, Any]]:
        return [r for r in self.requests if r[1] == method and r[2].startswith(prefix)]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


def run(scenario: Callable[[AsyncStack, AsyncStack, FakeApi], Awaitable[Any]], *, listen: bool = True) -> Any:
    async def main() -> Any:
        net = LoopNet()
        node = net.add_vm("cluster1-linux-0", NODE_IP)
        api_vm = net.add_vm("api", API)
        api = FakeApi()
        server = await serve_http(api_vm, "0.0.0.0", 6443, api.handle) if listen else None
        try:
            return await asyncio.wait_for(scenario(node, api_vm, api), 15)
        finally:
            if server is not None:
                server.close()
    return uvloop.run(main())


def kubelet_on(node: AsyncStack, cfg: KubeletConfig | None = None) -> Kubelet:
    cfg = cfg or config()
    client = KubeClient(node, cfg.apiserver_host, cfg.apiserver_port, timeout=1.0, user_agent=user_agent("linux"))
    return Kubelet(cfg, client, lambda: NODE_IP)


def test_registration_body_and_lease_renewals() -> None:
    async def scenario(node: AsyncStack, api_vm: AsyncStack, api: FakeApi) -> None:
        kubelet = kubelet_on(node)
        kubelet.start()
        await api.wait_for(lambda: len(api.of("PUT", LEASES)) >= 4)
        await kubelet.stop()
        _, _, path, body = api.of("POST", "/api/v1/nodes")[0]
        assert path == "/api/v1/nodes"
        meta, status = body["metadata"], body["status"]
        assert meta["name"] == "cluster1-linux-0"
        assert meta["labels"]["kubernetes.io/os"] == "linux"
        assert meta["labels"]["kubernetes.io/hostname"] == "cluster1-linux-0"
        assert meta["labels"]["kubernetes.io/arch"] == "amd64"
        assert meta["labels"]["agentpool"] == "cluster1-linux"
        assert status["addresses"] == [{"type": "InternalIP", "address": NODE_IP},
                                       {"type": "Hostname", "address": "cluster1-linux-0"}]
        assert status["capacity"]["pods"] == "110" and status["capacity"]["cpu"] == "4"
        ready = [c for c in status["conditions"] if c["type"] == "Ready"][0]
        assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
        assert ready["message"] == "kubelet is posting ready status"
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "MemoryPressure": "False", "DiskPressure": "False", "PIDPressure": "False", "Ready": "True"}
        info = status["nodeInfo"]
        assert info["operatingSystem"] == "linux" and info["osImage"] == "CBL-Mariner/Linux"
        assert info["kubeletVersion"].startswith("v1.26.") and info["containerRuntimeVersion"].startswith("containerd://")
        # the Lease: created once, then renewed every lease_renew_interval (0.1 s here)
        created = api.of("POST", LEASES)
        assert len(created) == 1
        lease = created[0][3]
        assert lease["metadata"] == {"name": "cluster1-linux-0", "namespace": "kube-node-lease",
                                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                                          "name": "cluster1-linux-0", "uid": "uid-1"}]}
        assert lease["spec"]["holderIdentity"] == "cluster1-linux-0"
        assert lease["spec"]["leaseDurationSeconds"] == 40
        puts = api.of("PUT", LEASES)
        times = [created[0][0]] + [p[0] for p in puts]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(0.08 <= g <= 0.5 for g in gaps), gaps
        renew = [p[3]["spec"]["renewTime"] for p in puts]
        assert all(MICRO.fullmatch(r) for r in renew) and renew == sorted(renew) and len(set(renew)) == len(renew)
        assert kubelet.counts["lease_failures"] == 0
        assert api.agents == {"kubelet/v1.26.6 (linux/amd64) kubernetes/11902a8"}
    run(scenario)


def test_retries_until_the_api_server_answers_then_reposts_ready() -> None:
    async def scenario(node: AsyncStack, api_vm: AsyncStack, api: FakeApi) -> None:
        kubelet = kubelet_on(node)
        kubelet.start()  # nobody listens on :6443 yet: connection refused, again and again
        async with asyncio.timeout(5):
            while kubelet.counts["register_attempts"] < 2:
                await asyncio.sleep(0.01)
        assert not kubelet.registered.is_set()
        assert "ConnectionRefusedError" in kubelet.last_error
        api.down = True
        server = await serve_http(api_vm, "0.0.0.0", 6443, api.handle)
        await api.wait_for(lambda: len(api.of("POST", "/api/v1/nodes")) >= 2)  # 503s, retried
        assert not kubelet.registered.is_set()
        api.down = False
        await asyncio.wait_for(kubelet.registered.wait(), 5)
        await api.wait_for(lambda: len(api.of("PUT", LEASES)) >= 1)
        # the API server goes away: renewals fail and are retried, the kubelet carries on
        api.down = True
        failures = kubelet.counts["lease_failures"]
        await api.wait_for(lambda: kubelet.counts["lease_failures"] >= failures + 2)
        # meanwhile the node lifecycle controller marked the node Unknown
        path = "/api/v1/nodes/cluster1-linux-0"
        for cond in api.objects[path]["status"]["conditions"]:
            if cond["type"] == "Ready":
                cond.update(status="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.")
        assert ready_status(api.objects[path]) == "Unknown"
        renewals = kubelet.counts["lease_renewals"]
        api.down = False
        await api.wait_for(lambda: ready_status(api.objects[path]) == "True")
        await api.wait_for(lambda: kubelet.counts["lease_renewals"] > renewals)
        patch = api.of("PATCH", path)[-1]
        assert patch[2] == path + "/status"
        ready = [c for c in patch[3]["status"]["conditions"] if c["type"] == "Ready"][0]
        assert ready["reason"] == "KubeletReady"
        await kubelet.stop()
        server.close()
    run(scenario, listen=False)


def test_existing_node_is_taken_over_and_pod_cidr_learned() -> None:
    async def scenario(node: AsyncStack, api_vm: AsyncStack, api: FakeApi) -> None:
        cfg = config(os="windows", pool="cluster1-windows")
        old = node_object(cfg, NODE_IP, 0.0)
        old["spec"]["podCIDR"] = "10.244.3.0/24"
        old["status"]["conditions"][-1]["status"] = "Unknown"
        api._store("/api/v1/nodes/cluster1-linux-0", old)
        api._store(f"{LEASES}/cluster1-linux-0", lease_object(cfg, 0.0))
        kubelet = kubelet_on(node, cfg)
        kubelet.start()
        await asyncio.wait_for(kubelet.registered.wait(), 5)
        await api.wait_for(lambda: len(api.of("PUT", LEASES)) >= 1)
        await kubelet.stop()
        assert [r[1] for r in api.requests[:3]] == ["POST", "GET", "PATCH"]  # 409, read, status
        assert kubelet.pod_cidr == "10.244.3.0/24"
        assert ready_status(api.objects["/api/v1/nodes/cluster1-linux-0"]) == "True"
        assert not api.of("POST", LEASES)  # the existing Lease is renewed, not re-created
        labels = old["metadata"]["labels"]
        assert labels["kubernetes.io/os"] == "windows"
        assert old["status"]["nodeInfo"]["osImage"] == "Windows Server 2022 Datacenter"
    run(scenario)


@pytest.mark.parametrize(("raw", "key"), [
    ({"pool": "p", "os": "linux", "apiserver": "1.2.3.4:6443"}, "cluster"),
    ({"cluster": "c", "pool": "p", "os": "mac", "apiserver": "1.2.3.4:6443"}, "os"),
    ({"cluster": "c", "pool": "p", "os": "linux", "apiserver": "1.2.3.4"}, "apiserver"),
    ({"cluster": "c", "pool": "p", "os": "linux", "apiserver": "1.2.3.4:6443", "max_pods": 0}, "max_pods"),
    ({"cluster": "c", "pool": "p", "os": "linux", "apiserver": "1.2.3.4:6443", "time_scale": 0}, "time_scale"),
])
def test_config_errors_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(KubeletConfigError, match=f"^{key}: "):
        KubeletConfig.parse("n", raw)

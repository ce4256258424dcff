"""Pods through the real processes, for both CNI plugins: a small deployment (one cluster of two
Linux nodes) is brought up with ``scenarios.runner.up``; Pods are created with the API server
VM's ``api`` verb (``spec.nodeName`` set, so the test does not depend on the scheduler), the
node VMs' kubelets give them addresses and run their apps, and a pod on the other node (and
one on the same node) reaches the server pod over the overlay with ``curl`` run through the
node VM's ``pod_exec`` verb.  Deleting the pod releases its address and its traffic stops.

Synchronous like the other integration tests: every wait is a condition polled against a
deadline, never a bare sleep.
"""

from __future__ import annotations

import io
import ipaddress
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from integration_support import DeploymentHandles, one_cluster, wait_for

from scenarios import runner, schema

SETTLE = 20.0
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.43"
CLUSTER = "podc"
APISERVER = f"{CLUSTER}-control-plane-0"
NODE0, NODE1 = f"{CLUSTER}-linux-0", f"{CLUSTER}-linux-1"







class Deployment(DeploymentHandles):
    def __init__(self, hostagent: str) -> None:
        super().__init__(hostagent, APISERVER)

    def create_pod(self, name: str, node: str, container: dict[str, Any], app: str = "") -> None:
        self.ok("POST", "/api/v1/namespaces/default/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app or name}},
            "spec": {"nodeName": node, "containers": [container]}})

    def ready_pod(self, name: str) -> dict[str, Any] | None:
        status, obj = self.api("GET", f"/api/v1/namespaces/default/pods/{name}")
        if status != 200:
            return None
        st = obj.get("status") or {}
        ready = [c for c in st.get("conditions") or () if c.get("type") == "Ready"]
        return obj if ready and ready[0]["status"] == "True" and st.get("podIP") else None

    def pod_exec(self, node: str, pod: str, *argv: str) -> dict[str, Any]:
        result: dict[str, Any] = self.vm(node, "pod_exec", {"namespace": "default", "name": pod, "argv": list(argv)})
        return result


def netexec() -> dict[str, Any]:
    return {"name": "app", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}


def sleeper() -> dict[str, Any]:
    return {"name": "client", "image": "busybox:1.36", "command": ["sleep", "3600"]}


@pytest.fixture(scope="module", params=["calico", "flannel"])
def deployment(request: pytest.FixtureRequest, state_dir: Path) -> Iterator[tuple[str, Deployment]]:
    plugin = request.param
    name = f"pods-{plugin}"
    scenario = schema.loads(one_cluster(name, CLUSTER, time_scale=0.05, plugin=plugin))
    dep = trio.run(partial(runner.up, scenario, name, out=io.StringIO()))
    try:
        yield plugin, Deployment(dep.hostagent.mgmt)
    finally:
        trio.run(partial(runner.down, name, out=io.StringIO()))


def test_pods_get_addresses_become_ready_and_reach_each_other_over_vxlan(
        deployment: tuple[str, Deployment]) -> None:
    plugin, d = deployment
    wait_for(lambda: all(d.vm(n, "kubelet").get("network_ready") for n in (NODE0, NODE1)), SETTLE,
             "both nodes' pod networks")
    d.create_pod("web", NODE0, netexec())
    for name, node in (("far", NODE1), ("near", NODE0)):
        d.create_pod(name, node, sleeper())
    web = wait_for(lambda: d.ready_pod("web"), SETTLE, "pod web Ready")
    far = wait_for(lambda: d.ready_pod("far"), SETTLE, "pod far Ready")
    wait_for(lambda: d.ready_pod("near"), SETTLE, "pod near Ready")
    ip = web["status"]["podIP"]
    assert web["status"]["phase"] == "Running" and web["status"]["podIPs"] == [{"ip": ip}]
    assert web["status"]["hostIP"] == d.vm(NODE0, "stats")["claims"]["eth0"][0]
    # The address comes from the node's own pod network: its podCIDR (Flannel) or a /26 block
    # affine to it (Calico, shared through the API server).
    dp0 = d.vm(NODE0, "datapath")
    local = dp0["ipam"]["blocks"] if plugin == "calico" else [d.ok("GET", f"/api/v1/nodes/{NODE0}")["spec"]["podCIDR"]]
    assert any(ipaddress.ip_address(ip) in ipaddress.ip_network(c) for c in local), (ip, local)
    assert dp0["pods"]["default/web"]["ips"] == [ip]
    dp1 = d.vm(NODE1, "datapath")
    assert any(ipaddress.ip_address(ip) in ipaddress.ip_network(c)
               for r in dp1["remote"].values() for c in r["cidrs"]), dp1["remote"]
    # across nodes (VXLAN) and on one node (through the root namespace)
    r = d.pod_exec(NODE1, "far", "curl", "-s", "-S", "-m", "3", f"http://{ip}:8080/hostname")
    assert (r["rc"], r["stdout"]) == (0, "web"), r
    r = d.pod_exec(NODE0, "near", "curl", "-s", "-S", "-m", "3", f"http://{ip}:8080/hostname")
    assert (r["rc"], r["stdout"]) == (0, "web"), r
    r = d.pod_exec(NODE1, "far", "curl", "-s", "-m", "3", f"http://{ip}:8080/clientip")
    assert r["stdout"].split(":")[0] == far["status"]["podIP"], "pod to pod is not masqueraded"
    assert d.vm(NODE1, "datapath")["counters"]["vxlan_tx"] > 0
    assert d.vm(NODE0, "datapath")["counters"]["vxlan_rx"] > 0
    # the kubelet records events asynchronously (as its event broadcaster does): wait for the four
    def reasons() -> list[str] | None:
        events = d.ok("GET", "/api/v1/namespaces/default/events")["items"]
        got = [e["reason"] for e in events if e["involvedObject"]["name"] == "web"]
        return got if len(got) >= 4 else None
    assert wait_for(reasons, SETTLE, "web's four events")[:4] == ["Pulling", "Pulled", "Created", "Started"]
    # deletion: the kubelet stops the app and CNI DEL releases the address
    d.ok("DELETE", "/api/v1/namespaces/default/pods/web")
    wait_for(lambda: "default/web" not in d.vm(NODE0, "datapath")["pods"], SETTLE, "CNI DEL of web")
    r = d.pod_exec(NODE1, "far", "curl", "-s", "-S", "-m", "1", f"http://{ip}:8080/hostname")
    assert r["rc"] in (7, 28), r


def test_a_service_cluster_ip_spreads_over_ready_pods_on_both_nodes_through_kube_proxy(
        deployment: tuple[str, Deployment]) -> None:
    _, d = deployment
    for name, node in (("be0", NODE0), ("be1", NODE1)):
        d.create_pod(name, node, netexec(), app="backend")
    d.create_pod("svc-client", NODE1, sleeper())
    svc = d.ok("POST", "/api/v1/namespaces/default/services", {
        "metadata": {"name": "backend"},
        "spec": {"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    ip = svc["spec"]["clusterIP"]
    for name in ("be0", "be1", "svc-client"):
        wait_for(lambda name=name: d.ready_pod(name), SETTLE, f"pod {name} Ready")  # type: ignore[misc]

    def both_answer() -> bool:
        seen = set()
        for _ in range(12):
            r = d.pod_exec(NODE1, "svc-client", "curl", "-s", "-m", "2", f"http://{ip}/hostname")
            if r["rc"] == 0:
                seen.add(r["stdout"])
        return seen == {"be0", "be1"}

    wait_for(both_answer, SETTLE, f"both backends behind {ip}", interval=0.1)
    proxy = d.vm(NODE1, "datapath")["kube_proxy"]
    assert proxy["mode"] == "iptables" and proxy["counters"]["new_flows"] >= 12
    assert proxy["programming_latency"]["count"] > 0
    d.ok("DELETE", "/api/v1/namespaces/default/pods/be0")

    def only_be1() -> bool:
        outs = [d.pod_exec(NODE1, "svc-client", "curl", "-s", "-m", "2", f"http://{ip}/hostname")["stdout"]
                for _ in range(8)]
        return set(outs) == {"be1"}

    wait_for(only_be1, SETTLE, "be0 to leave the Service", interval=0.1)

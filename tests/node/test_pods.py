"""The kubelet's pod lifecycle (agents/node/pods.py) and the node's asyncio datapath glue
(agents/node/netapi.py).

The record's status is checked directly (table-driven); the workers run in-process: two node
datapaths (Flannel and Calico) under real AsyncStacks on one asyncio loop, joined by the
in-memory fabric of tests/vm/vm_loopnet.py, each with a PodManager talking to a fake API.
A pod's app serves on its own stack, a pod on the other node reaches it over VXLAN with
``curl`` run through ``PodManager.exec`` (the ``pod_exec`` verb), probes gate Ready.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))
from vm_loopnet import LoopNet  # noqa: E402

from agents.cni import BlockAllocator, create_cni  # noqa: E402
from agents.dns.resolver import ResolvConf  # noqa: E402
from agents.netstack import NetStack  # noqa: E402
from agents.node.datapath import NodeDatapath  # noqa: E402
from agents.node.netapi import DatapathStack, PodNetAPI  # noqa: E402
from agents.node.pods import (  # noqa: E402
    Container,
    PodManager,
    PodRecord,
    crash_backoff,
    pod_resolv_conf,
    pull_policy,
    qos_class,
)
from agents.timers import Timers  # noqa: E402
from agents.vm.streams import AsyncStack  # noqa: E402

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.43"
NODES = {"node0": "172.16.0.11", "node1": "172.16.0.12"}
FLANNEL_CIDRS = {"node0": "10.244.0.0/24", "node1": "10.244.1.0/24"}
SCALE = 0.01  # probe periods of 10 s take 0.1 s


# --- objects ----------------------------------------------------------------------------------


def pod(name: str, containers: list[dict[str, Any]], *, node: str = "node0", ns: str = "default",
        uid: str | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "resourceVersion": "1"},
            "spec": {"nodeName": node, "containers": containers, **spec}, "status": {"phase": "Pending"}}


def netexec(**extra: Any) -> dict[str, Any]:
    return {"name": "app", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
            "ports": [{"containerPort": 8080}], **extra}


def sleeper() -> dict[str, Any]:
    return {"name": "client", "image": "busybox:1.36", "command": ["sleep", "3600"]}


def node_object(name: str, plugin: str) -> dict[str, Any]:
    spec = {"podCIDR": FLANNEL_CIDRS[name], "podCIDRs": [FLANNEL_CIDRS[name]]} if plugin == "flannel" else {}
    return {"metadata": {"name": name}, "spec": spec,
            "status": {"addresses": [{"type": "InternalIP", "address": NODES[name]}]}}


def cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


# --- the record (sans-IO) --------------------------------------------------------------------


def record(containers: list[dict[str, Any]], **spec: Any) -> PodRecord:
    return PodRecord(pod("p", containers, **spec), node_ip="172.16.0.11", node_os="linux", now=1000.0)


@pytest.mark.parametrize(("states", "policy", "phase"), [
    ([("waiting", None)], "Always", "Pending"),
    ([("running", None)], "Always", "Running"),
    ([("running", None), ("waiting", None)], "Always", "Pending"),
    ([("terminated", 0)], "Always", "Running"),        # about to restart
    ([("terminated", 0)], "Never", "Succeeded"),
    ([("terminated", 1)], "Never", "Failed"),
    ([("terminated", 0), ("terminated", 2)], "Never", "Failed"),
    ([("terminated", 1)], "OnFailure", "Running"),
    ([("terminated", 0)], "OnFailure", "Succeeded"),
    ([("crashloop", 1)], "Always", "Running"),         # waiting with a last termination
    ([("running", None), ("terminated", 0)], "Never", "Running"),
])
def test_phase_follows_getphase(states: list[tuple[str, int | None]], policy: str, phase: str) -> None:
    r = record([{"name": f"c{i}", "image": "nginx"} for i in range(len(states))], restartPolicy=policy)
    for c, (state, code) in zip(r.containers, states, strict=True):
        if state in ("running", "terminated", "crashloop"):
            c.run(1000.0)
        if state in ("terminated", "crashloop"):
            c.terminate(code or 0, 1001.0)
        if state == "crashloop":
            c.crash_loop(10, r.label)
    assert r.phase() == phase


def test_status_conditions_addresses_and_container_statuses() -> None:
    r = record([netexec(readinessProbe={"httpGet": {"path": "/", "port": 8080}}), sleeper()])
    r.ips = ["10.244.0.2"]
    s = r.status(1000.0)
    assert s["phase"] == "Pending" and s["hostIP"] == "172.16.0.11" and s["qosClass"] == "BestEffort"
    assert s["podIP"] == "10.244.0.2" and s["podIPs"] == [{"ip": "10.244.0.2"}]
    assert [c["type"] for c in s["conditions"]] == ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
    ready = cond(s, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    assert ready["message"] == "containers with unready status: [app client]"
    assert s["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    for c in r.containers:
        c.run(1001.0)
    s = r.status(1002.0)
    app, client = s["containerStatuses"]
    assert not app["ready"] and client["ready"], "a readiness probe gates its container, none means ready"
    assert app["image"] == f"{AGNHOST}" and app["imageID"].startswith("registry.k8s.io/e2e-test-images/agnhost@sha256:")
    assert app["containerID"].startswith("containerd://") and app["started"] is True
    assert cond(s, "Ready")["message"] == "containers with unready status: [app]"
    since = cond(s, "Ready")["lastTransitionTime"]
    r.containers[0].ready = True
    s = r.status(1003.0)
    assert s["phase"] == "Running" and cond(s, "Ready")["status"] == "True" and "reason" not in cond(s, "Ready")
    assert cond(s, "Ready")["lastTransitionTime"] != since
    assert cond(s, "Initialized")["lastTransitionTime"] == cond(r.status(2000.0), "Initialized")["lastTransitionTime"]


def test_crash_loop_status_keeps_the_last_termination() -> None:
    r = record([{"name": "c", "image": "busybox"}])
    c = r.containers[0]
    c.run(1000.0)
    c.terminate(0, 1000.5)
    c.crash_loop(crash_backoff(1), r.label)
    st = r.status(1001.0)["containerStatuses"][0]
    assert st["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert st["state"]["waiting"]["message"] == "back-off 10s restarting failed container=c pod=p_default(uid-p)"
    assert st["lastState"]["terminated"]["reason"] == "Completed" and st["lastState"]["terminated"]["exitCode"] == 0
    c.restarting()
    assert c.restart_count == 1
    assert [crash_backoff(n) for n in (1, 2, 3, 5, 6, 9)] == [10, 20, 40, 160, 300, 300]


def test_image_error_and_admission_rejection_status() -> None:
    r = PodRecord(pod("w", [{"name": "web", "image": "nginx"}]), node_ip="1.1.1.1", node_os="windows", now=0.0)
    c = r.containers[0]
    assert c.plan is None and c.error is not None and c.error.reason == "ErrImagePull"
    assert isinstance(Container({"name": "x", "image": AGNHOST}, "windows").plan, object)
    r.rejected = ("OutOfpods", "Pod Node didn't have enough resource: pods")
    assert r.status(0.0)["phase"] == "Failed" and r.status(0.0)["reason"] == "OutOfpods"


@pytest.mark.parametrize(("container", "policy"), [
    ({"image": "nginx"}, "Always"), ({"image": "nginx:latest"}, "Always"), ({"image": "nginx:1.25"}, "IfNotPresent"),
    ({"image": "nginx@sha256:" + "a" * 64}, "IfNotPresent"), ({"image": "nginx", "imagePullPolicy": "Never"}, "Never"),
])
def test_pull_policy_defaults(container: dict[str, Any], policy: str) -> None:
    assert pull_policy(container) == policy


@pytest.mark.parametrize(("resources", "qos"), [
    ([{}], "BestEffort"),
    ([{"requests": {"cpu": "100m"}}], "Burstable"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}}], "Guaranteed"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}], "Burstable"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}}, {}], "Burstable"),
])
def test_qos_class(resources: list[dict[str, Any]], qos: str) -> None:
    assert qos_class({"containers": [{"name": str(i), "resources": r} for i, r in enumerate(resources)]}) == qos


def test_pod_resolv_conf_by_dns_policy() -> None:
    node = ResolvConf(nameservers=("172.16.0.2",), search=("corp.example",))
    first = pod_resolv_conf({}, "prod", node)
    assert first.nameservers == ("10.96.0.10",) and first.ndots == 5
    assert first.search == ("prod.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example")
    assert pod_resolv_conf({"hostNetwork": True}, "prod", node) == node
    assert pod_resolv_conf({"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}, "prod", node) == first
    assert pod_resolv_conf({"dnsPolicy": "Default"}, "prod", node) == node
    custom = pod_resolv_conf({"dnsPolicy": "None", "dnsConfig": {
        "nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}]}},
        "prod", node)
    assert (custom.nameservers, custom.search, custom.ndots) == (("1.1.1.1",), ("a.example",), 2)


# --- the datapath stack adapter ------------------------------------------------------------------


def test_datapath_stack_is_the_root_until_attached_then_pumps_the_datapath() -> None:
    root = NetStack("n")
    root.add_interface(0, "eth0", "02:00:00:00:00:0b", 1500, ["172.16.0.11/24"])
    clock = [5.0]
    ds = DatapathStack(root, lambda: clock[0])
    assert ds.receive == root.receive and ds.take_output == root.take_output
    fired: list[str] = []
    ds.on_output = lambda: fired.append("out")
    assert root.on_output is not None
    dp = NodeDatapath(root, create_cni("flannel", node_name="n", node_ip="172.16.0.11", pod_cidr="10.244.0.0/24"),
                      "172.16.0.11")
    ds.attach(dp)
    assert dp.on_output is ds.on_output and ds.receive == dp.receive
    pod_net = dp.add_pod("default/p")
    replies: list[str] = []

    class Echo:
        def echo_reply(self, src: str, seq: int, payload: bytes, ttl: int, now: float) -> None:
            replies.append(src)

    pod_net.stack.icmp_open(Echo()).send("10.244.0.1", 1, b"x", 5.0)
    assert fired == ["out"], "a pod's output wakes the node's service call"
    assert ds.take_output() == [] and dp.counters["pumps"] == 1  # the echo stays on the node
    assert replies == ["10.244.0.1"], "the pump moved the request to the root and the reply back"

    class Part:
        def __init__(self) -> None:
            self.expired: list[float] = []

        def next_deadline(self) -> float:
            return 1.0

        def expire(self, now: float) -> None:
            self.expired.append(now)

    part = Part()
    ds.add_timed(part)
    assert ds.next_deadline() == 1.0
    ds.handle_timers(2.0)
    assert part.expired == [2.0]
    assert ds.routes() == root.routes()  # the rest is the root's


# --- the workers over two in-process nodes --------------------------------------------------------


class FakeApi:
    def __init__(self) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []
        self.events: list[tuple[str, str, str, str, str]] = []
        self.deleted: list[tuple[str, str, str]] = []

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.statuses[f"{namespace}/{name}"] = status
        self.writes.append(f"{namespace}/{name}")
        return {"status": status}

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        self.deleted.append((namespace, name, uid))

    def event(self, pod: dict[str, Any], etype: str, reason: str, message: str, field_path: str = "") -> None:
        self.events.append((pod["metadata"]["name"], etype, reason, message, field_path))

    def reasons(self, name: str) -> list[str]:
        return [e[2] for e in self.events if e[0] == name]


class Node:
    def __init__(self, name: str, net: AsyncStack, dp: NodeDatapath, manager: PodManager, api: FakeApi) -> None:
        self.name, self.net, self.dp, self.manager, self.api = name, net, dp, manager, api


class World:
    """Two nodes on one segment (172.16.0.0/24, gateway .1), no router to the pod CIDR."""

    def __init__(self, plugin: str, oses: dict[str, str] | None = None) -> None:
        self.plugin = plugin
        self.fabric = LoopNet()
        self.fabric.gateways.add("172.16.0.1")
        self.allocator = BlockAllocator(["10.244.0.0/16"])
        self.nodes: dict[str, Node] = {}
        loop = asyncio.get_running_loop()
        for name, ip in NODES.items():
            os = (oses or {}).get(name, "linux")
            root = NetStack(name)
            root.add_interface(0, "eth0", f"02:00:ac:10:00:{ip.rsplit('.', 1)[1]}", 1500, [f"{ip}/24"])
            root.add_route("0.0.0.0/0", dev=0, via="172.16.0.1")
            ds = DatapathStack(root, loop.time)
            anet = AsyncStack(ds, self.fabric._sink, loop)
            self.fabric.owners[ip] = (anet, 0)
            kwargs: dict[str, Any] = {"node_name": name, "node_ip": ip, "node_subnet": "172.16.0.0/24", "os": os}
            if plugin == "flannel":
                kwargs["pod_cidr"] = FLANNEL_CIDRS[name]
            else:
                kwargs["allocator"] = self.allocator
            dp = NodeDatapath(root, create_cni(plugin, **kwargs), ip)
            ds.attach(dp)
            api = FakeApi()
            manager = PodManager(node_name=name, node_ip=ip, node_os=os, datapath=dp, node_net=anet, api=api,
                                 timers=Timers(SCALE), max_pods=3)
            manager.start()
            self.nodes[name] = Node(name, anet, dp, manager, api)
        self.sync_routes()

    def sync_routes(self) -> None:
        objs = [node_object(n, self.plugin) for n in NODES]
        for node in self.nodes.values():
            node.dp.set_remote_nodes(node.dp.plugin.remote_nodes(objs))
            node.net.kick()

    def create(self, obj: dict[str, Any]) -> None:
        self.nodes[obj["spec"]["nodeName"]].manager.sync(obj)

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.manager.close()

    def status(self, key: str) -> dict[str, Any]:
        for node in self.nodes.values():
            if key in node.api.statuses:
                return node.api.statuses[key]
        return {}

    async def ready(self, key: str, timeout: float = 5.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            s = self.status(key)
            return s if s.get("conditions") and cond(s, "Ready")["status"] == "True" and s.get("podIP") else None
        return await until(check, timeout, f"{key} Ready")

    async def exec(self, key: str, *argv: str) -> tuple[int, str, str]:
        ns, name = key.split("/")
        for node in self.nodes.values():
            if key in node.manager.workers:
                return await node.manager.exec(ns, name, list(argv))
        raise AssertionError(f"no pod {key}")


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run(plugin: str, scenario: Callable[[World], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        world = World(plugin, **kwargs)
        try:
            await asyncio.wait_for(scenario(world), 15)
        finally:
            await world.close()
    uvloop.run(main())


@pytest.mark.parametrize("plugin", ["flannel", "calico"])
def test_pod_gets_an_ip_becomes_ready_and_is_reached_across_nodes_and_on_its_node(plugin: str) -> None:
    async def scenario(w: World) -> None:
        w.create(pod("web", [netexec(readinessProbe={"httpGet": {"path": "/healthz", "port": 8080},
                                                     "periodSeconds": 1})]))
        w.create(pod("far", [sleeper()], node="node1"))
        w.create(pod("near", [sleeper()], node="node0"))
        if plugin == "calico":
            w.sync_routes()  # node1's block exists once its first pod has an address
        web = await w.ready("default/web")
        ip = web["podIP"]
        assert ip.startswith("10.244."), web
        if plugin == "flannel":
            assert ip == "10.244.0.2"
        assert web["phase"] == "Running" and cond(web, "ContainersReady")["status"] == "True"
        assert w.nodes["node0"].dp.pod_by_ip(ip) is not None
        await w.ready("default/far")
        await w.ready("default/near")
        for client in ("default/far", "default/near"):
            rc, out, err = await w.exec(client, "curl", "-s", "-S", "-m", "3", f"http://{ip}:8080/hostname")
            assert (rc, out) == (0, "web"), (client, rc, out, err)
        rc, out, _ = await w.exec("default/far", "curl", "-s", f"http://{ip}:8080/clientip")
        far_ip = w.status("default/far")["podIP"]
        assert rc == 0 and out.split(":")[0] == far_ip, "pod to pod keeps the client's address (no masquerade)"
        assert w.nodes["node1"].dp.counters["vxlan_tx"] > 0 and w.nodes["node0"].dp.counters["vxlan_rx"] > 0
        reasons = w.nodes["node0"].api.reasons("web")
        assert reasons[:4] == ["Pulling", "Pulled", "Created", "Started"], reasons
        # deletion: the app stops, CNI DEL gives the address back, the pod is gone from the node
        w.nodes["node0"].manager.forget(pod("web", []))
        await until(lambda: _true(not w.nodes["node0"].dp.pods.get("default/web")), 3, "CNI DEL")
        assert w.nodes["node0"].dp.pod_by_ip(ip) is None and "default/web" not in w.nodes["node0"].manager.workers
        rc, _, err = await w.exec("default/far", "curl", "-s", "-S", "-m", "0.5", f"http://{ip}:8080/hostname")
        assert rc in (7, 28), err
    run(plugin, scenario)


async def _true(value: bool) -> bool:
    return value


def test_readiness_probe_failures_keep_the_pod_unready_with_unhealthy_events() -> None:
    async def scenario(w: World) -> None:
        probe = {"httpGet": {"path": "/nope", "port": 9999}, "periodSeconds": 1, "failureThreshold": 1}
        w.create(pod("web", [netexec(readinessProbe=probe)]))
        api = w.nodes["node0"].api
        await until(lambda: _true("Unhealthy" in api.reasons("web")), 5, "an Unhealthy event")
        s = w.status("default/web")
        assert s["phase"] == "Running" and cond(s, "Ready")["status"] == "False"
        unhealthy = [e for e in api.events if e[2] == "Unhealthy"]
        assert unhealthy[0][3].startswith('Readiness probe failed: Get "http://10.244.0.2:9999/nope": dial tcp'), unhealthy
        assert unhealthy[0][1] == "Warning" and unhealthy[0][4] == "spec.containers{app}"
    run("flannel", scenario)


def test_image_without_a_build_for_the_os_waits_in_image_pull_backoff() -> None:
    async def scenario(w: World) -> None:
        w.create(pod("web", [{"name": "web", "image": "nginx"}], node="node1"))
        api = w.nodes["node1"].api

        async def backoff() -> bool:
            s = w.status("default/web")
            return bool(s) and s["containerStatuses"][0]["state"].get("waiting", {}).get("reason") == "ImagePullBackOff"
        await until(backoff, 5, "ImagePullBackOff")
        s = w.status("default/web")
        assert s["phase"] == "Pending" and s["podIP"], "the sandbox (network) is up even though the image is not"
        assert api.reasons("web")[:3] == ["Pulling", "Failed", "Failed"]
        assert "no matching manifest for windows/amd64" in api.events[1][3]
        assert "BackOff" in api.reasons("web")
    run("calico", scenario, oses={"node1": "windows"})


def test_a_container_that_exits_goes_into_crash_loop_back_off_and_restarts() -> None:
    async def scenario(w: World) -> None:
        w.create(pod("once", [{"name": "c", "image": "busybox"}]))  # sh without a terminal exits 0

        async def restarted() -> bool:
            s = w.status("default/once")
            return bool(s) and s["containerStatuses"][0]["restartCount"] >= 1
        await until(restarted, 5, "a restart")
        assert "BackOff" in w.nodes["node0"].api.reasons("once")
        assert w.nodes["node0"].manager.counts["container_restarts"] >= 1
    run("flannel", scenario)


def test_a_never_restarting_pod_succeeds_and_max_pods_rejects_the_extra_pod() -> None:
    async def scenario(w: World) -> None:
        w.create(pod("job", [{"name": "c", "image": "busybox"}], restartPolicy="Never"))
        await until(lambda: _true(w.status("default/job").get("phase") == "Succeeded"), 5, "Succeeded")
        assert cond(w.status("default/job"), "Ready")["reason"] == "PodCompleted"
        for i in range(4):  # max_pods 3: the finished job does not count, the fourth sleeper does not fit
            w.create(pod(f"s{i}", [sleeper()]))
        await until(lambda: _true(w.status("default/s3").get("phase") == "Failed"), 5, "OutOfpods")
        assert w.status("default/s3")["reason"] == "OutOfpods"
        assert "OutOfpods" in w.nodes["node0"].api.reasons("s3")
        await w.ready("default/s2")
    run("flannel", scenario)


def test_a_pod_marked_for_deletion_is_stopped_then_deleted_for_good() -> None:
    async def scenario(w: World) -> None:
        obj = pod("web", [netexec()])
        w.create(obj)
        await w.ready("default/web")
        gone = {**obj, "metadata": {**obj["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
        w.create(gone)
        api = w.nodes["node0"].api
        await until(lambda: _true(bool(api.deleted)), 3, "the final delete")
        assert api.deleted == [("default", "web", "uid-web")] and not w.nodes["node0"].dp.pods
        assert "Killing" in api.reasons("web")
    run("flannel", scenario)


def test_recreated_namesake_gets_a_fresh_sandbox_and_drifted_status_is_rewritten() -> None:
    async def scenario(w: World) -> None:
        w.create(pod("web", [netexec()]))
        first = (await w.ready("default/web"))["podIP"]
        manager = w.nodes["node0"].manager
        writes = len(w.nodes["node0"].api.writes)
        marked = pod("web", [netexec()])
        marked["status"] = {**w.status("default/web"), "conditions": [{"type": "Ready", "status": "False"}]}
        manager.sync(marked)  # the node lifecycle controller marked it not ready
        await until(lambda: _true(len(w.nodes["node0"].api.writes) > writes), 3, "a status rewrite")
        w.create(pod("web", [netexec()], uid="uid-web-2"))
        await until(lambda: _true(manager.workers.get("default/web") is not None
                                  and manager.workers["default/web"].record.uid == "uid-web-2"
                                  and bool(manager.workers["default/web"].record.ips)), 3, "the new pod")
        second = manager.workers["default/web"].record.ips[0]
        assert second != first, "host-local does not hand a released address out again at once"
        await until(lambda: _true(len(w.nodes["node0"].dp.pods) == 1), 3, "the old sandbox gone")
    run("flannel", scenario)


def test_pod_netapi_carries_the_pods_resolv_conf_and_kicks_the_node() -> None:
    async def scenario(w: World) -> None:
        w.create(pod("c", [sleeper()], ns="prod"))
        await w.ready("prod/c")
        net = w.nodes["node0"].manager.workers["prod/c"].net
        assert isinstance(net, PodNetAPI)
        assert net.resolv_conf.search[0] == "prod.svc.cluster.local" and net.loop is w.nodes["node0"].net.loop
        reply = await net.ping("10.244.0.1", timeout=1)  # the pod's gateway (cni0)
        assert reply.src == "10.244.0.1"
        rc, out, _ = await w.exec("prod/c", "ping", "-c", "1", "-W", "1", "172.16.0.12")
        assert rc == 0 and "1 received" in out, out
    run("flannel", scenario)


# --- the API side: Calico's shared block IPAM, the event spam filter -----------------------------


class FakeConfigMaps:
    """One ConfigMap with resourceVersion checks, as the API server keeps it (409 on a stale
    version or an existing name)."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.rv = 0
        self.writes = 0
        self.before_write: Callable[[], None] | None = None

    async def get(self, path: str) -> dict[str, Any]:
        from agents.kube.client import ApiError

        if self.obj is None:
            raise ApiError(404, "NotFound", "configmaps not found")
        return {**self.obj, "metadata": {**self.obj["metadata"], "resourceVersion": str(self.rv)}}

    async def _store(self, obj: dict[str, Any], expect: str | None) -> dict[str, Any]:
        from agents.kube.client import ApiError

        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        if (expect is None) != (self.obj is None) or (expect is not None and expect != str(self.rv)):
            raise ApiError(409, "Conflict", "the object has been modified")
        self.rv += 1
        self.writes += 1
        self.obj = obj
        return await self.get("")

    async def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return await self._store(obj, None)

    async def update(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return await self._store(obj, obj["metadata"].get("resourceVersion"))


def test_calico_ipam_claims_blocks_through_the_api_with_compare_and_swap() -> None:
    from agents.node.kubelet import CalicoIpamSync

    async def main() -> None:
        store = FakeConfigMaps()
        a, b = CalicoIpamSync(store, "a"), CalicoIpamSync(store, "b")
        await a.ensure_capacity(1)
        assert a.allocator.blocks_of("a") == ["10.244.0.0/26"] and store.writes == 1
        # b reads, then a claims again before b writes: b's write conflicts and b retries
        b_first = store.obj

        def a_claims() -> None:
            assert store.obj is b_first
            a.allocator.claim_block("a")
            store.obj = {"metadata": {"name": "x"}, "data": {"blocks": json.dumps(a.allocator.claimed_blocks())}}
            store.rv += 1
        store.before_write = a_claims
        await b.ensure_capacity(1)
        assert b.counts["conflicts"] == 1 and b.allocator.blocks_of("b") == ["10.244.0.128/26"]
        assert b.allocator.blocks_of("a") == ["10.244.0.0/26", "10.244.0.64/26"], "b learned a's blocks"
        # a node's own allocations stay its own when the ConfigMap changes
        ip = a.allocator.allocate("a", "default/p")
        a.apply(store.obj)
        assert a.allocator.addresses("default/p") == [ip]
        assert a.allocator.affinities()["10.244.0.128/26"] == "b"
        # a full block makes the next ensure_capacity claim another one
        b.allocator.allocate("b", "x")
        for i in range(63):
            b.allocator.allocate("b", f"p{i}")
        assert b.free() == 0
        await b.ensure_capacity(1)
        assert len(b.allocator.blocks_of("b")) == 2 and b.free() == 64
    uvloop.run(main())


def test_event_spam_filter_is_a_token_bucket_per_object() -> None:
    from agents.node.kubelet import SpamFilter

    clock = [0.0]
    spam = SpamFilter(Timers(0.01), clock=lambda: clock[0])  # a token back every 3 s
    assert all(spam.allow("pod-a") for _ in range(25))
    assert not spam.allow("pod-a") and spam.allow("pod-b")
    clock[0] = 3.1
    assert spam.allow("pod-a") and not spam.allow("pod-a")

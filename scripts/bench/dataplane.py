"""Data-plane benchmark: HTTP through a ClusterIP, network programming latency, pod start-up.

Every figure is measured in this run, the baseline included:

  raw_rtt_p50_us        the floor: a round trip between two uvloop endpoints through a plain
                        blocking pyzmq relay (scripts/bench/raw.py), three processes
  http_rps              the default scenario (scenarios/default.yaml, Calico): one client pod
  http_p50_us           (busybox) on cluster1-linux-0 runs the ``httpbench`` tool
  http_p99_us           (agents/vm/httpbench.py) against a Service's ClusterIP whose one
                        endpoint is an agnhost netexec pod on cluster1-linux-1: closed loop,
                        one keep-alive connection, GET /hostname; the latency of each request
                        is taken inside the client pod (perf_counter around the exchange), so
                        the path is pod -> kube-proxy DNAT -> VXLAN -> broker -> other node ->
                        pod and back.  For the decomposition the same run measures the pod's
                        IP directly (no kube-proxy) and an emulated ping between the two pods
  pods_ready_s_200      the default scenario: a 200-replica agnhost netexec Deployment with a
                        readiness probe (httpGet, upstream defaults: periodSeconds 10,
                        scaled by the scenario's time_scale 0.1) and its Service,
                        from the Deployment's POST to 200 ready endpoints in the Service's
                        EndpointSlices (polled every 50 ms over the management plane)
  prog_latency_p99_ms   a cluster of 20 Linux node VMs, 200 Services, 200 Deployments of 5
                        agnhost pause pods (1000 pods); once every endpoint is ready, changes
                        at 20 per second for 30 s (the churn Kubernetes' SLOs assume), taking
                        turns: scale a Deployment 5 -> 6, delete one of its pods, update a
                        Service (an annotation), scale it back 6 -> 5.  Latency per change and
                        node as kube-proxy records it (agents/kubeproxy/latency.py): from the
                        API server's commit of a Service / EndpointSlice change to the moment
                        that node's rules include it; every node's samples of the churn phase
                        (its ``datapath`` verb), pooled; p50 / p99 / max over all of them

Diagnostics beside the targets: HTTP to the pod IP (no kube-proxy) and pod-to-pod ping;
time to the first and the 100th ready endpoint; the churn cluster's setup (creation, every
endpoint ready, the programming latency of the setup's changes); during the churn, the cores
each VM role used (``prog_churn_cores``, ``machine`` = the whole machine, other work included),
the seconds per second each role sat runnable waiting for a core (``prog_churn_runqueue_wait``,
/proc/PID/task/*/schedstat), and the p50 / p99 / max round trip of a management ``ping`` to
the API server, the LB VM and one node (``prog_churn_*_ping_ms``: how long each event loop
took to get to a new message).  The workload's sizes are printed with the figures.

Targets on this 2-core machine: http_p50_us <= 10 x raw_rtt_p50_us, prog_latency_p99_ms <= 500,
pods_ready_s_200 <= 10.  Progress goes to stderr; ``--json`` prints only the JSON object.

    python scripts/bench/dataplane.py [--json] [--quick] [--profile-dir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchreport  # noqa: E402
import raw  # noqa: E402
import scenarios_bench  # noqa: E402

from agents import triozmq  # noqa: E402
from scenarios import runner, schema  # noqa: E402

DEFAULT_SCENARIO = ROOT / "scenarios" / "default.yaml"
CLUSTER = "cluster1"
NS = "bench"
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.43"
BUSYBOX = "busybox:1.36"
CLIENT_NODE, SERVER_NODE = f"{CLUSTER}-linux-0", f"{CLUSTER}-linux-1"

TARGETS: dict[str, tuple[str, float]] = {
    "http_p50_us / raw_rtt_p50_us": ("<=", 10.0),
    "prog_latency_p99_ms": ("<=", 500.0),
    "pods_ready_s_200": ("<=", 10.0),
}


def note(text: str) -> None:
    print(f"[dataplane] {text}", file=sys.stderr, flush=True)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest rank (as agents/kubeproxy/latency.py), ``q`` in 0..1; NaN when empty."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


# --- the API server over the management plane -----------------------------------------------

class Api:
    """Kubernetes REST through the API server VM's ``api`` verb (calls may run concurrently)."""

    def __init__(self, client: triozmq.TrioMgmtClient) -> None:
        self.client = client
        self.calls = 0

    async def __call__(self, method: str, path: str, body: Any = None, *, query: dict[str, str] | None = None,
                      want: tuple[int, ...] = (200, 201), timeout: float = 30.0) -> Any:
        args: dict[str, Any] = {"method": method, "path": path}
        if body is not None:
            args["body"] = body
        if query:
            args["query"] = query
        self.calls += 1
        reply = await self.client.call("api", args, timeout=timeout)
        if reply["status"] not in want:
            raise RuntimeError(f"{method} {path}: {reply['status']} {str(reply['body'])[:300]}")
        return reply["body"]


def deployment(name: str, replicas: int, container: dict[str, Any], node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 0}
    if node is not None:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}


def service(name: str, port: int = 80, target: int = 8080) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": target, "protocol": "TCP"}]}}


def netexec(probe: bool) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "app", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
                         "ports": [{"containerPort": 8080}]}
    if probe:
        # upstream defaults (periodSeconds 10, scaled by time_scale; the first probe at start)
        c["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}}
    return c


PAUSE = {"name": "app", "image": AGNHOST, "args": ["pause"], "ports": [{"containerPort": 8080}]}


async def ready_endpoints(api: Api, namespace: str, service_name: str | None = None) -> dict[str, int]:
    """Ready endpoints per Service (EndpointSlices of ``namespace``)."""
    query = {"labelSelector": f"kubernetes.io/service-name={service_name}"} if service_name else None
    slices = await api("GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", query=query)
    out: dict[str, int] = {}
    for s in slices.get("items") or ():
        svc = ((s.get("metadata") or {}).get("labels") or {}).get("kubernetes.io/service-name", "")
        n = sum(1 for e in s.get("endpoints") or () if (e.get("conditions") or {}).get("ready"))
        out[svc] = out.get(svc, 0) + n
    return out


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.perf_counter() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await trio.sleep(interval)


async def ensure_namespace(api: Api) -> None:
    await api("POST", "/api/v1/namespaces", {"metadata": {"name": NS}}, want=(201, 409))


# --- part 1: HTTP through a ClusterIP, on the default scenario --------------------------------

async def pod_exec(dep: runner.Deployment, node: str, pod: str, argv: list[str], timeout: float = 120.0) -> str:
    result = await runner.call(dep.vms[node]["mgmt"], "pod_exec", {"namespace": NS, "name": pod, "argv": argv},
                               timeout=timeout)
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv)} in {pod}: rc {result['rc']}: {result['stderr'] or result['stdout']}")
    return str(result["stdout"])


async def http_phase(dep: runner.Deployment, api: Api, seconds: float) -> dict[str, Any]:
    await api("POST", f"/api/v1/namespaces/{NS}/services", service("web"))
    await api("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment("web", 1, netexec(True), SERVER_NODE))
    await api("POST", f"/api/v1/namespaces/{NS}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": NS},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": CLIENT_NODE}, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "client", "image": BUSYBOX, "command": ["sleep", "3600"]}]}})

    async def ready() -> bool:
        client = await api("GET", f"/api/v1/namespaces/{NS}/pods/client")
        conds = (client.get("status") or {}).get("conditions") or ()
        client_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        return client_ready and (await ready_endpoints(api, NS, "web")).get("web", 0) == 1

    await wait_until(ready, 60.0, "the web endpoint and the client pod")
    svc = await api("GET", f"/api/v1/namespaces/{NS}/services/web")
    cluster_ip = svc["spec"]["clusterIP"]
    pods = await api("GET", f"/api/v1/namespaces/{NS}/pods", query={"labelSelector": "app=web"})
    server = pods["items"][0]
    if server["spec"]["nodeName"] != SERVER_NODE:
        raise RuntimeError(f"web pod on {server['spec']['nodeName']}, not {SERVER_NODE}")
    pod_ip = server["status"]["podIP"]
    # kube-proxy on the client's node has the Service once curl answers through it
    await wait_until(lambda: _answers(dep, f"http://{cluster_ip}/hostname"), 20.0, "the ClusterIP to answer")
    out: dict[str, Any] = {}
    bench = ["httpbench", "--json", "--connections", "1", "--warmup", "1", "--duration", str(seconds)]
    via_svc = json.loads(await pod_exec(dep, CLIENT_NODE, "client", [*bench, f"http://{cluster_ip}/hostname"]))
    note(f"http via ClusterIP {cluster_ip}: {via_svc}")
    direct = json.loads(await pod_exec(dep, CLIENT_NODE, "client", [*bench, f"http://{pod_ip}:8080/hostname"]))
    note(f"http to the pod IP {pod_ip}: {direct}")
    if via_svc["connects"] != 1 or via_svc["errors"]:
        raise RuntimeError(f"httpbench: {via_svc['connects']} connections, {via_svc['errors']} errors")
    text = await pod_exec(dep, CLIENT_NODE, "client", ["ping", "-A", "-c", "2000", "-i", "0", pod_ip])
    rtts = sorted(float(m) * 1000 for m in re.findall(r"time=([0-9.]+) ms", text))
    out.update({"http_rps": via_svc["rps"], "http_p50_us": via_svc["p50_us"], "http_p99_us": via_svc["p99_us"],
                "http_requests": via_svc["requests"], "http_connects": via_svc["connects"],
                "http_direct_rps": direct["rps"], "http_direct_p50_us": direct["p50_us"],
                "http_direct_p99_us": direct["p99_us"],
                "pod_ping_p50_us": statistics.median(rtts), "pod_ping_p99_us": percentile(rtts, 0.99)})
    for name in ("web",):
        await api("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/{name}")
    await api("DELETE", f"/api/v1/namespaces/{NS}/pods/client")
    return out


async def _answers(dep: runner.Deployment, url: str) -> bool:
    result = await runner.call(dep.vms[CLIENT_NODE]["mgmt"], "pod_exec",
                               {"namespace": NS, "name": "client", "argv": ["curl", "-s", "-m", "1", url]}, timeout=10)
    return bool(result["rc"] == 0)


# --- part 2: 200 pods to ready endpoints, on the default scenario ------------------------------

async def ready_phase(dep: runner.Deployment, api: Api, replicas: int, timeout: float) -> dict[str, Any]:
    name = "ready200"
    await api("POST", f"/api/v1/namespaces/{NS}/services", service(name))
    await trio.sleep(0.5)  # the Service is allocated and its (empty) slice written before the clock starts
    t0 = time.perf_counter()
    await api("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment(name, replicas, netexec(True)))
    marks: dict[int, float] = {}
    deadline = t0 + timeout
    while True:
        n = (await ready_endpoints(api, NS, name)).get(name, 0)
        now = time.perf_counter()
        for m in (1, replicas // 2, replicas):
            if n >= m and m not in marks:
                marks[m] = now - t0
        if n >= replicas:
            break
        if now > deadline:
            note(f"pods ready: only {n}/{replicas} endpoints after {timeout:g} s")
            break
        await trio.sleep(0.05)
    pods = await api("GET", f"/api/v1/namespaces/{NS}/pods", query={"labelSelector": f"app={name}"})
    per_node: dict[str, int] = {}
    for p in pods["items"]:
        node = (p.get("spec") or {}).get("nodeName") or "<unscheduled>"
        per_node[node] = per_node.get(node, 0) + 1
    note(f"pods ready: {marks} per node {per_node}")
    return {"pods_ready_s_200": marks.get(replicas, math.nan), "pods_ready_s_first": marks.get(1, math.nan),
            "pods_ready_s_half": marks.get(replicas // 2, math.nan), "pods_ready_replicas": replicas,
            "pods_ready_endpoints": n, "pods_ready_per_node": per_node}


async def default_scenario(opts: argparse.Namespace, profile: Profiler | None) -> dict[str, Any]:
    scenario = schema.load(DEFAULT_SCENARIO)
    name = f"bench-dp-{os.getpid()}-default"
    t0 = time.perf_counter()
    dep = await runner.up(scenario, name, out=io.StringIO())
    note(f"default scenario up in {time.perf_counter() - t0:.1f} s")
    try:
        async with triozmq.TrioMgmtClient(dep.vms[runner.apiserver_vm(CLUSTER)]["mgmt"]) as client:
            api = Api(client)
            await ensure_namespace(api)
            out: dict[str, Any] = {}
            if "http" in opts.phases:
                out.update(await http_phase(dep, api, opts.http_seconds))
            if "ready" in opts.phases:
                await _wait_gone(api, "client")
                if profile is not None:
                    profile.start({**dep.vms, "broker": dep.broker}, "ready", 10)
                out.update(await ready_phase(dep, api, 200, opts.ready_timeout))
            return out
    finally:
        await runner.down(name, out=io.StringIO())


async def _wait_gone(api: Api, pod: str) -> None:
    async def gone() -> bool:
        pods = await api("GET", f"/api/v1/namespaces/{NS}/pods")
        return not pods["items"]
    try:
        await wait_until(gone, 10.0, "the HTTP phase's pods to go")
    except RuntimeError as exc:
        note(str(exc))


# --- part 3: network programming latency under churn, 20 nodes ---------------------------------

async def datapaths(dep: runner.Deployment, nodes: list[str], samples: bool = False) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}

    async def one(node: str) -> None:
        out[node] = await runner.call(dep.vms[node]["mgmt"], "datapath", {"latency_samples": samples}, timeout=30.0)

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(one, node)
    return out


def changes_of(dp: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {n: int(d.get("kube_proxy", {}).get("programming_latency", {}).get("count", 0)) for n, d in dp.items()}


class Churn:
    """Changes at a fixed rate, taking turns over four kinds; failures counted, not fatal."""

    KINDS = ("scale_up", "delete_pod", "update_service", "scale_down")

    def __init__(self, api: Api, services: int, replicas: int, victims: dict[str, str]) -> None:
        self.api = api
        self.victims = victims  # Deployment -> one of its pods, listed before the churn
        self.services = services
        self.replicas = replicas
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.failures: list[str] = []
        self.late = 0
        self.sent = 0
        self._scaled: list[int] = []

    async def run(self, rate: float, seconds: float) -> float:
        interval = 1.0 / rate
        total = int(rate * seconds)
        start = next_at = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(total):
                now = time.perf_counter()
                if next_at > now:
                    await trio.sleep(next_at - now)
                elif now - next_at > interval:
                    self.late += 1
                nursery.start_soon(self.change, i)
                next_at += interval
            sent_for = time.perf_counter() - start
        self.sent = total
        return sent_for

    async def change(self, i: int) -> None:
        kind = self.KINDS[i % 4]
        d = (i // 4 * 7) % self.services  # the turns walk over the Deployments
        name = f"svc-{d:03d}"
        try:
            if kind == "scale_up":
                await self.api("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/{name}",
                               {"spec": {"replicas": self.replicas + 1}})
                self._scaled.append(d)
            elif kind == "scale_down":
                back = self._scaled.pop(0) if self._scaled else d
                await self.api("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/svc-{back:03d}",
                               {"spec": {"replicas": self.replicas}})
            elif kind == "delete_pod":
                # Each Deployment takes one turn, and its delete comes before its scale-down,
                # so the pod listed before the churn is still there (no list during the churn:
                # a list is the API server's dearest read and would load the measurement).
                victim = self.victims.pop(name, None)
                if victim is None:  # a second turn on this Deployment (a longer churn): list it
                    pods = await self.api("GET", f"/api/v1/namespaces/{NS}/pods",
                                          query={"labelSelector": f"app={name}"})
                    victim = pods["items"][0]["metadata"]["name"]
                await self.api("DELETE", f"/api/v1/namespaces/{NS}/pods/{victim}")
            else:
                await self.api("PATCH", f"/api/v1/namespaces/{NS}/services/{name}",
                               {"metadata": {"annotations": {"bench/rev": str(i)}}})
            self.counts[kind] += 1
        except Exception as exc:
            self.failures.append(f"{kind} {name}: {exc}")


async def churn_scenario(opts: argparse.Namespace, profile: Profiler | None) -> dict[str, Any]:
    nodes_n, services, replicas = opts.nodes, opts.services, opts.replicas
    scenario = schema.loads(scenarios_bench.one_cluster(nodes_n, time_scale=opts.time_scale, name="bench-dataplane"))
    name = f"bench-dp-{os.getpid()}-churn"
    out: dict[str, Any] = {"prog_nodes": nodes_n, "prog_services": services, "prog_pods": services * replicas,
                           "prog_time_scale": opts.time_scale}
    t0 = time.perf_counter()
    dep = await runner.up(scenario, name, out=io.StringIO())
    out["prog_boot_s"] = time.perf_counter() - t0
    note(f"{nodes_n}-node cluster up in {out['prog_boot_s']:.1f} s")
    nodes = runner.Plan.of(scenario).nodes(CLUSTER)
    try:
        async with triozmq.TrioMgmtClient(dep.vms[runner.apiserver_vm(CLUSTER)]["mgmt"]) as client:
            api = Api(client)
            await ensure_namespace(api)
            t0 = time.perf_counter()
            for i in range(services):
                await api("POST", f"/api/v1/namespaces/{NS}/services", service(f"svc-{i:03d}"))
            for i in range(services):
                await api("POST", f"/apis/apps/v1/namespaces/{NS}/deployments",
                          deployment(f"svc-{i:03d}", replicas, PAUSE))
            out["prog_create_s"] = time.perf_counter() - t0
            want = services * replicas
            last = [-1, time.perf_counter()]

            async def all_ready() -> bool:
                n = sum((await ready_endpoints(api, NS)).values())
                if n != last[0]:
                    note(f"  {n}/{want} endpoints ready after {time.perf_counter() - t0:.1f} s")
                    last[0] = n
                return n >= want

            await wait_until(all_ready, opts.setup_timeout, f"{want} ready endpoints", interval=1.0)
            out["prog_setup_ready_s"] = time.perf_counter() - t0
            if opts.renice_critical:
                # an experiment, off by default: the processes every change passes through
                # (API server, LB VM, broker) get a higher CPU priority than the node VMs
                for pid in (dep.vms[runner.apiserver_vm(CLUSTER)]["pid"], dep.vms[f"{CLUSTER}-lb"]["pid"],
                            dep.broker["pid"]):
                    for tid in os.listdir(f"/proc/{pid}/task"):  # every thread (zmq's I/O thread too)
                        os.setpriority(os.PRIO_PROCESS, int(tid), -opts.renice_critical)
                out["prog_renice_critical"] = -opts.renice_critical
            await _settled(dep, nodes)
            before = changes_of(await datapaths(dep, nodes))
            note(f"setup done in {out['prog_setup_ready_s']:.1f} s; churn: {opts.rate:g}/s for {opts.churn_seconds:g} s")
            if profile is not None:
                profile.start({**dep.vms, "broker": dep.broker}, "churn", int(opts.churn_seconds))
            victims: dict[str, str] = {}
            for p in (await api("GET", f"/api/v1/namespaces/{NS}/pods"))["items"]:
                victims.setdefault(p["metadata"]["labels"]["app"], p["metadata"]["name"])
            churn = Churn(api, services, replicas, victims)
            api_calls = api.calls
            cpu0, wait0, wall0 = cpu_by_role(dep), cpu_by_role(dep, runqueue_wait_seconds), time.perf_counter()
            lags: dict[str, list[float]] = {}
            async with trio.open_nursery() as nursery:
                for vm in (runner.apiserver_vm(CLUSTER), f"{CLUSTER}-lb", nodes[-1]):
                    nursery.start_soon(loop_lag, dep.vms[vm]["mgmt"], lags.setdefault(role_of(vm), []),
                                       opts.churn_seconds)
                out["prog_churn_send_s"] = await churn.run(opts.rate, opts.churn_seconds)
            cpu1, wait1, wall = cpu_by_role(dep), cpu_by_role(dep, runqueue_wait_seconds), time.perf_counter() - wall0
            # seconds per second each role spent runnable but waiting for one of the two cores
            out["prog_churn_runqueue_wait"] = {k: round((wait1[k] - wait0[k]) / wall, 3) for k in wait0}
            # how long each VM's event loop took to answer a management ping (every 50 ms)
            # during the churn: a busy loop delays every watch stream it serves
            for role, ms in lags.items():
                ms.sort()
                out[f"prog_churn_{role}_ping_ms"] = [round(percentile(ms, 0.5), 2), round(percentile(ms, 0.99), 2),
                                                     round(ms[-1] if ms else math.nan, 2)]
            # where the machine's two cores went during the churn (cores busy, per VM role)
            out["prog_churn_cores"] = {k: round((cpu1[k] - cpu0[k]) / wall, 3) for k in cpu0}
            out["prog_churn_api_calls"] = api.calls - api_calls
            t_end = time.perf_counter()

            async def converged() -> bool:
                return sum((await ready_endpoints(api, NS)).values()) >= want

            try:
                await wait_until(converged, 60.0, "the Deployments to converge after the churn", interval=0.5)
            except RuntimeError as exc:
                note(str(exc))
            out["prog_converge_s"] = time.perf_counter() - t_end
            await _settled(dep, nodes)
            after = await datapaths(dep, nodes, samples=True)
    finally:
        await runner.down(name, out=io.StringIO())
    churn_ms: list[float] = []
    setup_ms: list[float] = []
    per_node_p99: dict[str, float] = {}
    per_node_p50: dict[str, float] = {}
    truncated = 0
    for node, dp in after.items():
        samples = dp["kube_proxy"]["programming_latency_samples_ms"]
        count = dp["kube_proxy"]["programming_latency"]["count"]
        new = count - before[node]
        if new > len(samples):
            truncated += 1
        mine = samples[-new:] if new else []
        churn_ms += mine
        setup_ms += samples[:len(samples) - new]
        per_node_p99[node] = percentile(sorted(mine), 0.99)
        per_node_p50[node] = percentile(sorted(mine), 0.50)
    churn_ms.sort()
    setup_ms.sort()
    out.update({
        "prog_latency_p50_ms": percentile(churn_ms, 0.50), "prog_latency_p90_ms": percentile(churn_ms, 0.90),
        "prog_latency_p99_ms": percentile(churn_ms, 0.99), "prog_latency_max_ms": churn_ms[-1] if churn_ms else math.nan,
        "prog_latency_samples": len(churn_ms),
        "prog_latency_worst_node_p99_ms": max(per_node_p99.values(), default=math.nan),
        "prog_latency_best_node_p99_ms": min(per_node_p99.values(), default=math.nan),
        "prog_latency_node_p50_ms_range": [round(min(per_node_p50.values(), default=math.nan), 1),
                                           round(max(per_node_p50.values(), default=math.nan), 1)],
        "prog_setup_latency_p50_ms": percentile(setup_ms, 0.50), "prog_setup_latency_p99_ms": percentile(setup_ms, 0.99),
        "prog_setup_latency_samples": len(setup_ms),
        "prog_changes_requested": churn.sent, "prog_changes_done": sum(churn.counts.values()),
        "prog_changes_by_kind": churn.counts, "prog_change_failures": len(churn.failures),
        "prog_changes_late": churn.late, "prog_rate_per_s": opts.rate, "prog_churn_s": opts.churn_seconds,
        "prog_nodes_window_overflowed": truncated,
    })
    if churn.failures:
        note(f"churn failures ({len(churn.failures)}): {churn.failures[:5]}")
    note(f"programming latency under churn: p50 {out['prog_latency_p50_ms']:.1f} ms, "
         f"p99 {out['prog_latency_p99_ms']:.1f} ms over {len(churn_ms)} (change, node) samples")
    return out


async def loop_lag(endpoint: str, out: list[float], seconds: float, every: float = 0.05) -> None:
    """Round trips of the VM's cheapest management verb (``ping``), in ms, for ``seconds``."""
    stop = time.perf_counter() + seconds
    async with triozmq.TrioMgmtClient(endpoint) as client:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await client.call("ping", {}, timeout=10.0)
            out.append((time.perf_counter() - t0) * 1000)
            await trio.sleep(every)


async def _settled(dep: runner.Deployment, nodes: list[str], quiet: float = 1.0, timeout: float = 60.0) -> None:
    """Until no node's kube-proxy takes a change for ``quiet`` seconds."""
    last = changes_of(await datapaths(dep, nodes))
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        await trio.sleep(quiet)
        now = changes_of(await datapaths(dep, nodes))
        if now == last:
            return
        last = now
    note("kube-proxy kept taking changes; measuring anyway")


# --- profiling (diagnosis only) ----------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds the process's threads were runnable but waiting for a CPU (/proc/PID/task/*/schedstat)."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (/proc/stat: all but idle, iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def role_of(vm: str) -> str:
    if vm.endswith("-lb"):
        return "lb"
    if "-control-plane-" in vm:
        return "apiserver"
    if "-linux-" in vm or "-windows-" in vm:
        return "nodes"
    return "other"


def cpu_by_role(dep: runner.Deployment, of: Callable[[int], float] = cpu_seconds) -> dict[str, float]:
    out = {"apiserver": 0.0, "lb": 0.0, "nodes": 0.0, "broker": of(int(dep.broker["pid"])), "other": 0.0}
    for name, vm in dep.vms.items():
        out[role_of(name)] += of(int(vm["pid"]))
    if of is cpu_seconds:
        out["machine"] = machine_busy_seconds()  # everything, this deployment's and other work's
    return out


class Profiler:
    """``py-spy record`` attached to chosen VMs for one phase; flame data as raw (collapsed) text."""

    def __init__(self, directory: str, vms: list[str], fmt: str = "raw") -> None:
        self.directory = directory
        self.vms = vms
        self.fmt = fmt  # raw (collapsed stacks) or speedscope (samples in time order: stalls)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, vms: dict[str, dict[str, Any]], phase: str, seconds: int) -> None:
        os.makedirs(self.directory, exist_ok=True)
        spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
        for name in self.vms:
            if name not in vms:
                continue
            path = os.path.join(self.directory, f"{phase}-{name}.{'json' if self.fmt == 'speedscope' else 'txt'}")
            self.procs.append(subprocess.Popen(
                [spy if os.path.exists(spy) else "py-spy", "record", "--pid", str(vms[name]["pid"]), "--rate", "100",
                 "--format", self.fmt, "--output", path, "--duration", str(seconds),
                 *(("--idle",) if self.fmt == "speedscope" else ())],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def wait(self) -> None:
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


# --- the report --------------------------------------------------------------------------------

def ratios(res: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "http_p50_us" in res and "raw_rtt_p50_us" in res:
        out["http_p50_us / raw_rtt_p50_us"] = res["http_p50_us"] / res["raw_rtt_p50_us"]
    if "prog_latency_p99_ms" in res:
        out["prog_latency_p99_ms"] = res["prog_latency_p99_ms"]
    if "pods_ready_s_200" in res:
        out["pods_ready_s_200"] = res["pods_ready_s_200"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="shorter HTTP run and churn (a smoke test; sizes kept)")
    ap.add_argument("--phases", default="raw,http,ready,prog", help="comma-separated subset of raw,http,ready,prog")
    ap.add_argument("--http-seconds", type=float, default=5.0, help="measured seconds of the HTTP run")
    ap.add_argument("--ready-timeout", type=float, default=60.0, help="give up on the 200 endpoints after this")
    ap.add_argument("--nodes", type=int, default=20, help="node VMs of the churn cluster")
    ap.add_argument("--services", type=int, default=200, help="Services (and Deployments) of the churn cluster")
    ap.add_argument("--replicas", type=int, default=5, help="pods per Deployment of the churn cluster")
    ap.add_argument("--rate", type=float, default=20.0, help="changes per second during the churn")
    ap.add_argument("--churn-seconds", type=float, default=30.0, help="duration of the churn")
    ap.add_argument("--time-scale", type=float, default=0.1, help="the churn cluster's time_scale")
    ap.add_argument("--setup-timeout", type=float, default=240.0, help="seconds for every endpoint to be ready")
    ap.add_argument("--profile-format", choices=("raw", "speedscope"), default="raw",
                    help="py-spy's output: collapsed stacks, or samples in time order (to find stalls)")
    ap.add_argument("--renice-critical", type=int, default=0, metavar="N",
                    help="experiment: nice -N for the API server, LB VM and broker of the churn cluster")
    ap.add_argument("--profile-dir", help="py-spy record the API server, LB and two node VMs and the broker "
                                          "during the 200-pod and churn phases into this directory")
    opts = ap.parse_args()
    opts.phases = set(opts.phases.split(","))
    if opts.quick:
        opts.http_seconds, opts.churn_seconds = 2.0, 10.0
    os.environ.setdefault("HCINET_STATE_DIR", tempfile.mkdtemp(prefix="hcinet-bench-"))
    profile = None
    if opts.profile_dir:
        profile = Profiler(opts.profile_dir, [runner.apiserver_vm(CLUSTER), f"{CLUSTER}-lb", CLIENT_NODE,
                                              f"{CLUSTER}-linux-7", "broker"], opts.profile_format)
    t0 = time.monotonic()
    res: dict[str, Any] = {}
    if "raw" in opts.phases:
        res["raw_rtt_p50_us"], res["raw_rtt_p99_us"] = raw.raw_rtt_us()
        note(f"raw round trip p50 {res['raw_rtt_p50_us']:.0f} us")
    if opts.phases & {"http", "ready"}:
        res.update(trio.run(default_scenario, opts, profile))
    if "prog" in opts.phases:
        res.update(trio.run(churn_scenario, opts, profile))
    if profile is not None:
        profile.wait()
    res["seconds"] = time.monotonic() - t0
    res["targets"] = benchreport.targets_doc(TARGETS, ratios(res))
    print(json.dumps(res, indent=2) if opts.json else benchreport.report(res, TARGETS, ratios(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

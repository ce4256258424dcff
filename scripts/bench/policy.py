"""Network-policy benchmark (step 5): the policy hook's per-packet cost, a new flow's decision
with 1000 policies, the reachability matrix of a 100-pod corpus, and policy programming
latency over 20 node VMs.

Every figure is measured in this run, the baseline included:

  baseline_dict_ns          the floor of any per-packet work in CPython on this machine: one
                            dict lookup of a 5-tuple plus a call (what a conntrack hit cannot
                            go below)
  established_flow_us       ``PolicyEnforcer.hook`` (agents/policy/enforcer.py, what the node
                            datapath calls on every packet entering or leaving a pod) for
                            packets of an established, allowed TCP flow, alternating both
                            directions, in process; an endpoint with 100 policies applied
  new_flow_us_1000_policies the first packet (a SYN) of a flow to an endpoint selected by 1000
                            NetworkPolicies (``podSelector: {}``), whose ingress rules allow
                            from pods of other namespaces labelled ``app=client-N`` on port
                            8000+N, so none matches, and only the last (policy 999, in name
                            order) allows from ``ipBlock 10.0.0.0/8`` on port 80: the hook
                            evaluates every policy before the last one allows.  Every timed
                            flow comes from a new source address (10.x.y.z), so neither the
                            conntrack table nor any per-source state has seen it
  matrix_s_100pods          ``hcinet policy matrix -f DIR --port 80/TCP --port 53/UDP -o json``
                            as a user runs it (a new process, imports included) on a fixed
                            generated corpus (seed 1): 10 namespaces, 100 pods, 50 policies
                            (default denies, pod/namespace selectors, ipBlocks, named ports)
  policy_prog_latency_p99_ms a Calico cluster of 20 Linux node VMs with 40 pods; NetworkPolicies
                            created and updated at 5 per second for 20 s; the latency per change
                            and node as Felix records it (agents/node/felix.py): from the API
                            server's commit of the policy to the moment that node's engine
                            enforces it (the next packet is decided by the new set); every
                            node's samples of the churn, pooled

Targets: established_flow_us <= 5, new_flow_us_1000_policies <= 200, matrix_s_100pods <= 5,
policy_prog_latency_p99_ms <= 500.  Progress goes to stderr; ``--json`` prints only the JSON.

    python scripts/bench/policy.py [--json] [--quick] [--phases inproc,matrix,prog]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchreport  # noqa: E402
import scenarios_bench  # noqa: E402
from dataplane import PAUSE, Api, deployment, percentile, wait_until  # noqa: E402

from agents import triozmq  # noqa: E402
from agents.policy.enforcer import PolicyEnforcer  # noqa: E402
from agents.policy.engine import Endpoint, PolicyEngine  # noqa: E402
from agents.policy.model import from_kubernetes  # noqa: E402
from broker import packets as P  # noqa: E402
from scenarios import runner, schema  # noqa: E402

CLUSTER = "cluster1"
NS = "bench"
TARGETS: dict[str, tuple[str, float]] = {
    "established_flow_us": ("<=", 5.0),
    "new_flow_us_1000_policies": ("<=", 200.0),
    "matrix_s_100pods": ("<=", 5.0),
    "policy_prog_latency_p99_ms": ("<=", 500.0),
}


def note(text: str) -> None:
    print(f"[policy] {text}", file=sys.stderr, flush=True)


class Pod:
    """What the hook needs of a pod (agents.node.datapath.PodNet): its key."""

    __slots__ = ("key", "ips")

    def __init__(self, key: str, ips: list[str]) -> None:
        self.key = key
        self.ips = ips


def knp(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


# --- in process -----------------------------------------------------------------------------

def server_engine(policies: int) -> tuple[PolicyEngine, Pod]:
    engine = PolicyEngine()
    engine.set_namespace("srv", {})
    engine.set_namespace("clients", {})
    engine.set_endpoint(Endpoint(key="srv/server", namespace="srv", labels={"app": "server"},
                                 ips=["192.168.5.10"], node="node-0"))
    for i in range(policies - 1):
        engine.set_policy(from_kubernetes(knp(f"p{i:04d}", "srv", {
            "podSelector": {}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": f"client-{i}"}}}],
                         "ports": [{"port": 8000 + i}]}]})))
    engine.set_policy(from_kubernetes(knp(f"p{policies - 1:04d}", "srv", {
        "podSelector": {}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 80}]}]})))
    return engine, Pod("srv/server", ["192.168.5.10"])


def source(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def new_flow_us(flows: int) -> dict[str, Any]:
    engine, pod = server_engine(1000)
    enforcer = PolicyEnforcer(engine, local_ips=["172.16.0.20"])
    syn = P.SYN
    # warm: the endpoint's compiled chain (built once per policy change, not per flow)
    first = P.tcp(source(1), "192.168.5.10", 40000, 80, syn, 1, 0, 65535, b"")
    if enforcer.hook(pod, "ingress", first, 0.0) is None:
        raise RuntimeError("the last policy's ipBlock rule did not allow the first flow")
    denied = P.tcp(source(2), "192.168.5.10", 40000, 81, syn, 1, 0, 65535, b"")
    if enforcer.hook(pod, "ingress", denied, 0.0) is not None:
        raise RuntimeError("port 81 was allowed: no policy allows it")
    pkts = [P.tcp(source(10 + i), "192.168.5.10", 40000 + i % 20000, 80, syn, 1, 0, 65535, b"") for i in range(flows)]
    hook = enforcer.hook
    times: list[float] = []
    clock = time.perf_counter
    allowed = 0
    for pkt in pkts:
        t0 = clock()
        got = hook(pod, "ingress", pkt, 1.0)
        times.append(clock() - t0)
        allowed += got is not None
    if allowed != flows:
        raise RuntimeError(f"only {allowed}/{flows} new flows allowed")
    times.sort()
    us = [t * 1e6 for t in times]
    return {"new_flow_us_1000_policies": statistics_median(us), "new_flow_p99_us_1000_policies": percentile(us, 0.99),
            "new_flow_flows": flows}


def statistics_median(values: list[float]) -> float:
    return percentile(sorted(values), 0.5)


def established_us(packets: int) -> dict[str, Any]:
    engine, pod = server_engine(100)
    enforcer = PolicyEnforcer(engine, local_ips=["172.16.0.20"])
    client, server = "10.1.2.3", "192.168.5.10"
    syn = P.tcp(client, server, 40000, 80, P.SYN, 1, 0, 65535, b"", mss=1410)
    synack = P.tcp(server, client, 80, 40000, P.SYN | P.ACK, 100, 2, 65535, b"", mss=1410)
    hook = enforcer.hook
    if hook(pod, "ingress", syn, 0.0) is None or hook(pod, "egress", synack, 0.0) is None:
        raise RuntimeError("the handshake was dropped")
    data_in = P.tcp(client, server, 40000, 80, P.ACK | P.PSH, 2, 101, 65535, b"x" * 100)
    data_out = P.tcp(server, client, 80, 40000, P.ACK, 101, 102, 65535, b"")
    n = packets // 2
    clock = time.perf_counter
    best = math.inf
    for _ in range(5):
        t0 = clock()
        for _ in range(n):
            hook(pod, "ingress", data_in, 1.0)
            hook(pod, "egress", data_out, 1.0)
        best = min(best, (clock() - t0) / (2 * n))
    if hook(pod, "ingress", data_in, 1.0) is None:
        raise RuntimeError("an established flow's packet was dropped")
    # the floor: a dict lookup of a 5-tuple behind a call, as cheap as per-packet work gets
    table = {(6, client, 40000, server, 80): 1}

    def floor(pkt: tuple[Any, ...]) -> Any:
        return table.get((pkt[2], pkt[0], pkt[4], pkt[1], pkt[5]))
    base = math.inf
    for _ in range(5):
        t0 = clock()
        for _ in range(n):
            floor(data_in)
            floor(data_out)
        base = min(base, (clock() - t0) / (2 * n))
    return {"established_flow_us": best * 1e6, "baseline_dict_ns": base * 1e9, "established_packets": 2 * n}


# --- the matrix corpus (seed 1) ---------------------------------------------------------------

def corpus(seed: int = 1, namespaces: int = 10, pods: int = 100, policies: int = 50) -> list[dict[str, Any]]:
    """A fixed generated corpus: Namespaces, Pods (with addresses, labels, named ports) and
    NetworkPolicies of every shape the issue lists."""
    rnd = random.Random(seed)
    apps, tiers, teams = ["web", "api", "db", "cache", "dns"], ["front", "back"], ["a", "b", "c"]
    docs: list[dict[str, Any]] = []
    for n in range(namespaces):
        docs.append({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": f"ns-{n}", "labels": {"team": teams[n % 3], "env": rnd.choice(["prod", "dev"])}}})
    for i in range(pods):
        ns = f"ns-{i % namespaces}"
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"pod-{i}", "namespace": ns,
                                  "labels": {"app": rnd.choice(apps), "tier": rnd.choice(tiers)}},
                     "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/e2e-test-images/agnhost:2.43",
                                              "ports": [{"name": "http", "containerPort": 80},
                                                        {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                     "status": {"podIP": f"10.244.{i // 200}.{i % 200 + 2}"}})
    for p in range(policies):
        ns = f"ns-{rnd.randrange(namespaces)}"
        kind = p % 5
        sel = {} if rnd.random() < 0.3 else {"matchLabels": {"app": rnd.choice(apps)}}
        if kind == 0:
            spec: dict[str, Any] = {"podSelector": sel, "policyTypes": ["Ingress"]}
        elif kind == 1:
            spec = {"podSelector": sel, "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": rnd.choice(tiers)}}}],
                                                    "ports": [{"port": "http"}]}]}
        elif kind == 2:
            spec = {"podSelector": sel, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                {"key": "team", "operator": "In", "values": rnd.sample(teams, 2)}]},
                "podSelector": {"matchLabels": {"app": rnd.choice(apps)}}}]}]}
        elif kind == 3:
            spec = {"podSelector": sel, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [f"10.244.0.{rnd.randrange(2, 100)}/32"]}}],
                                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 80, "endPort": 90}]}]}
        else:
            spec = {"podSelector": sel, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]}],
                    "egress": [{}]}
        docs.append(knp(f"pol-{p}", ns, spec))
    return docs


def matrix_phase() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hcinet-policy-bench-") as tmp:
        path = Path(tmp) / "corpus.yaml"
        path.write_text(yaml.safe_dump_all(corpus(), sort_keys=False))
        cmd = [sys.executable, "-m", "scenarios.cli", "policy", "matrix", "-f", str(path),
               "--port", "80/TCP", "--port", "53/UDP", "-o", "json"]
        best = math.inf
        doc: dict[str, Any] = {}
        for _ in range(3):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
            took = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"policy matrix: rc {proc.returncode}: {proc.stderr.strip()[:400]}")
            doc = json.loads(proc.stdout)
            best = min(best, took)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import scenarios.cli"], cwd=ROOT, check=True, timeout=60)
        startup = time.perf_counter() - t0
    verdicts = doc["verdicts"]
    allowed = sum(1 for v in verdicts if v["allowed"])
    if len(doc["pods"]) != 100 or len(verdicts) != 100 * 99 * 2:
        raise RuntimeError(f"matrix: {len(doc['pods'])} pods, {len(verdicts)} verdicts")
    note(f"matrix: {len(verdicts)} verdicts, {allowed} allowed, best of 3 {best:.2f} s "
         f"(python + import scenarios.cli alone {startup:.2f} s)")
    return {"matrix_s_100pods": best, "matrix_verdicts": len(verdicts), "matrix_allowed": allowed,
            "matrix_cli_startup_s": startup}


# --- programming latency on 20 node VMs -----------------------------------------------------------

async def felix_stats(dep: runner.Deployment, nodes: list[str], samples: bool = False) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        out[node] = dict(await runner.call(dep.vms[node]["mgmt"], "policy", {"latency_samples": samples}, timeout=30.0))
    return out


async def prog_phase(opts: argparse.Namespace) -> dict[str, Any]:
    scenario = schema.loads(scenarios_bench.one_cluster(opts.nodes, time_scale=opts.time_scale, name="bench-policy"))
    name = f"bench-policy-{os.getpid()}"
    out: dict[str, Any] = {"policy_prog_nodes": opts.nodes}
    t0 = time.perf_counter()
    dep = await runner.up(scenario, name, out=io.StringIO())
    note(f"{opts.nodes}-node cluster up in {time.perf_counter() - t0:.1f} s")
    nodes = runner.Plan.of(scenario).nodes(CLUSTER)
    try:
        async with triozmq.TrioMgmtClient(dep.vms[runner.apiserver_vm(CLUSTER)]["mgmt"]) as client:
            api = Api(client)
            await api("POST", "/api/v1/namespaces", {"metadata": {"name": NS}}, want=(201, 409))
            for d in range(4):
                await api("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment(f"app-{d}", 10, PAUSE))

            async def running() -> bool:
                pods = (await api("GET", f"/api/v1/namespaces/{NS}/pods"))["items"]
                return sum(1 for p in pods if (p.get("status") or {}).get("podIP")) >= 40
            await wait_until(running, 120.0, "40 pods with addresses", interval=0.5)
            before = {n: s["latency"]["count"] for n, s in (await felix_stats(dep, nodes)).items()}
            changes, failures = int(opts.rate * opts.seconds), 0
            interval = 1.0 / opts.rate
            next_at = time.perf_counter()
            for i in range(changes):
                now = time.perf_counter()
                if next_at > now:
                    await trio.sleep(next_at - now)
                next_at += interval
                k = i % 10
                spec = {"podSelector": {"matchLabels": {"app": f"app-{k % 4}"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"app-{(k + i) % 4}"}}}],
                                     "ports": [{"port": 8000 + i}]}]}
                try:
                    if i < 10:
                        await api("POST", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies",
                                  knp(f"churn-{k}", NS, spec))
                    else:
                        await api("PATCH", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/churn-{k}",
                                  {"spec": spec})
                except Exception as exc:
                    failures += 1
                    note(f"change {i}: {exc}")

            async def settled() -> bool:
                stats = await felix_stats(dep, nodes)
                return all(s["latency"]["count"] - before[n] >= changes - failures for n, s in stats.items())
            try:
                await wait_until(settled, 60.0, "every node to see every change", interval=0.5)
            except RuntimeError as exc:
                note(str(exc))
            after = await felix_stats(dep, nodes, samples=True)
    finally:
        await runner.down(name, out=io.StringIO())
    pooled: list[float] = []
    missing = 0
    for node, s in after.items():
        new = s["latency"]["count"] - before[node]
        missing += max(0, changes - failures - new)
        pooled += s["latency_samples_ms"][-new:] if new else []
    pooled.sort()
    out.update({"policy_prog_latency_p50_ms": percentile(pooled, 0.5),
                "policy_prog_latency_p99_ms": percentile(pooled, 0.99),
                "policy_prog_latency_max_ms": pooled[-1] if pooled else math.nan,
                "policy_prog_samples": len(pooled), "policy_prog_changes": changes,
                "policy_prog_change_failures": failures, "policy_prog_missing_samples": missing})
    note(f"policy programming latency: p50 {out['policy_prog_latency_p50_ms']:.1f} ms, "
         f"p99 {out['policy_prog_latency_p99_ms']:.1f} ms over {len(pooled)} (change, node) samples")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="fewer flows and a shorter churn (a smoke test)")
    ap.add_argument("--phases", default="inproc,matrix,prog", help="comma-separated subset of inproc,matrix,prog")
    ap.add_argument("--nodes", type=int, default=20, help="node VMs of the programming-latency cluster")
    ap.add_argument("--rate", type=float, default=5.0, help="policy changes per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of policy changes")
    ap.add_argument("--time-scale", type=float, default=0.1, help="the cluster's time_scale")
    opts = ap.parse_args()
    phases = set(opts.phases.split(","))
    flows, packets = 20000, 400000
    if opts.quick:
        flows, packets, opts.seconds = 2000, 40000, 6.0
    os.environ.setdefault("HCINET_STATE_DIR", tempfile.mkdtemp(prefix="hcinet-bench-"))
    t0 = time.monotonic()
    res: dict[str, Any] = {}
    if "inproc" in phases:
        res.update(established_us(packets))
        note(f"established flow: {res['established_flow_us']:.2f} us per packet "
             f"(a bare dict lookup: {res['baseline_dict_ns']:.0f} ns)")
        res.update(new_flow_us(flows))
        note(f"new flow, 1000 policies: median {res['new_flow_us_1000_policies']:.1f} us")
    if "matrix" in phases:
        res.update(matrix_phase())
    if "prog" in phases:
        res.update(trio.run(prog_phase, opts))
    res["seconds"] = time.monotonic() - t0
    values = {k: res[k] for k in TARGETS if k in res}
    res["targets"] = benchreport.targets_doc(TARGETS, values)
    print(json.dumps(res, indent=2) if opts.json else benchreport.report(res, TARGETS, values, width=34))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

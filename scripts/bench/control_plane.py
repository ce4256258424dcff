"""Control-plane benchmark: boot times, VM memory, API writes and watch latency, with baselines.

Every figure is measured in this run, baselines included:

  raw_spawn_s_30          the floor of booting 30 VMs: 30 bare Python processes that import
                          zmq, msgpack and uvloop and each send one message back to this
                          process over zmq (wall time from the first spawn to the 30th message)
  boot_s_3_nodes          wall time of `up` (host agent, broker, MOC, control plane, HAProxy VM,
  boot_s_30_nodes         node VMs) until every Node is Ready, one cluster of 3 resp. 30 Linux
                          nodes on the default scenario's network (the scenario is built here)
  pss_mb_per_node_vm      mean PSS (/proc/PID/smaps_rollup) of scenarios/default.yaml's node VMs,
                          idle, with no pods
  api_writes_per_s        8 concurrent clients on the management plane (the API server VM's
                          `api` verb), one ConfigMap per request; each reply means the object
                          is committed (durable against a process crash)
  raw_sqlite_writes_per_s the same durability without an API: sqlite WAL, synchronous=NORMAL,
                          one INSERT + COMMIT per write (scripts/bench/apiserver_writes.py)
  watch_latency_p99_ms    write -> event delivered, 30 watchers over the emulated network: the
                          `kwatch` tool in the default scenario's two client VMs (15 streams
                          each, client-ext through the datacenter router) watching VIP:6443
                          through the HAProxy VM; writes over the management plane, paced; the
                          latency of each (event, watcher) pair is its arrival time in the
                          client VM minus the time the write was sent, both CLOCK_MONOTONIC

    python scripts/bench/control_plane.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import apiserver_writes  # noqa: E402
import benchreport  # noqa: E402
import scenarios_bench  # noqa: E402

from agents import triozmq  # noqa: E402
from scenarios import runner, schema  # noqa: E402

DEFAULT_SCENARIO = ROOT / "scenarios" / "default.yaml"
CLUSTER = "cluster1"
WATCH_NS = "bench-watch"
WRITE_NS = "bench-writes"
WATCHERS = {"client-dc": 15, "client-ext": 15}  # 30 watch streams, from both client VMs

TARGETS: dict[str, tuple[str, float]] = {
    "boot_s_3_nodes": ("<=", 3.0),
    "boot_s_30_nodes / raw_spawn_s_30": ("<=", 8.0),
    "pss_mb_per_node_vm": ("<=", 25.0),
    "api_writes_per_s": (">=", 2000.0),
    "watch_latency_p99_ms": ("<=", 100.0),
    # the same targets with HCINET_FORKSERVER=0 (every VM a fresh interpreter), for comparison
    "boot_s_3_nodes_no_forkserver": ("<=", 3.0),
    "boot_s_30_nodes_no_forkserver / raw_spawn_s_30": ("<=", 8.0),
    "pss_mb_per_node_vm_no_forkserver": ("<=", 25.0),
}


def note(text: str) -> None:
    print(f"[control_plane] {text}", file=sys.stderr, flush=True)


# --- the floor: 30 bare Python processes ----------------------------------------------------

CHILD = ("import sys, zmq, msgpack, uvloop\n"
         "ctx = zmq.Context()\n"
         "s = ctx.socket(zmq.DEALER)\n"
         "s.connect(sys.argv[1])\n"
         "s.send(msgpack.packb(int(sys.argv[2])))\n"
         "s.close(linger=-1)\n"
         "ctx.term()  # linger is honoured here: the message has left before the process exits\n")


def raw_spawn_s(n: int = 30) -> float:
    """Spawn ``n`` Python processes at once; seconds until all ``n`` have sent their message."""
    import msgpack
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:0")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, endpoint, str(i)]) for i in range(n)]
    seen: set[int] = set()
    while len(seen) < n:
        if not sock.poll(30_000):
            raise RuntimeError(f"raw spawn: only {len(seen)}/{n} processes reported within 30 s")
        _, payload = sock.recv_multipart()
        seen.add(msgpack.unpackb(payload))
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.wait(10)
    sock.close(linger=0)
    ctx.term()
    return elapsed


# --- boot ----------------------------------------------------------------------------------

async def boot_s(nodes: int) -> tuple[float, int]:
    """Seconds from `up` to every Node Ready, and how many registrations the kubelets retried
    (a first POST to the VIP before the LB VM claimed it is lost and times out)."""
    scenario = schema.loads(scenarios_bench.one_cluster(nodes, time_scale=0.1, name="bench-boot"))
    deployment = f"bench-cp-{os.getpid()}-boot{nodes}"
    t0 = time.perf_counter()
    try:
        dep = await runner.up(scenario, deployment, out=io.StringIO())
        elapsed = time.perf_counter() - t0
        retries = 0
        for e in runner.Plan.of(scenario).items:
            if e.role == "node":
                retries += (await runner.call(dep.vms[e.vm]["mgmt"], "kubelet"))["register_attempts"] - 1
        return elapsed, retries
    finally:
        await runner.down(deployment, out=io.StringIO())


def boots(nodes: int, repeat: int, forkserver: bool) -> list[tuple[float, int]]:
    with fork_server(forkserver):
        return [trio.run(boot_s, nodes) for _ in range(repeat)]


class fork_server:
    """HCINET_FORKSERVER for the host agents started inside (they inherit our environment)."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.old: str | None = None

    def __enter__(self) -> None:
        self.old = os.environ.pop("HCINET_FORKSERVER", None)
        os.environ["HCINET_FORKSERVER"] = "1" if self.on else "0"  # on is the default

    def __exit__(self, *exc: object) -> None:
        os.environ.pop("HCINET_FORKSERVER", None)
        if self.old is not None:
            os.environ["HCINET_FORKSERVER"] = self.old


# --- the default scenario: memory, watch latency, API writes ---------------------------------

def pss_mb(pid: int) -> tuple[float, float]:
    """(PSS, RSS) in MB from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("Pss:", "Rss:"):
                fields[parts[0][:-1]] = int(parts[1])
    return fields["Pss"] / 1024, fields["Rss"] / 1024


def forkserver_pid(run_dir: Path) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"agents.forkserver" in cmd and str(run_dir).encode() in cmd:
                return int(entry.name)
    return None


async def memory(dep: runner.Deployment, scenario: schema.Scenario) -> dict[str, Any]:
    """PSS of the node VMs (mean), and of every VM process (+ the fork server) together."""
    nodes = [e.vm for e in runner.Plan.of(scenario).items if e.role == "node"]
    # Idle: every Node is Ready; give the kubelets one status round before reading memory.
    await trio.sleep(1.0)
    mem = {n: pss_mb(int(dep.vms[n]["pid"])) for n in nodes}
    total = sum(pss_mb(int(vm["pid"]))[0] for vm in dep.vms.values())
    server = forkserver_pid(dep.run_dir.path)
    if server is not None:
        total += pss_mb(server)[0]
    return {"pss_mb_per_node_vm": statistics.mean(p for p, _ in mem.values()),
            "rss_mb_per_node_vm": statistics.mean(r for _, r in mem.values()),
            "pss_mb_all_vms": total, "vms": len(dep.vms), "node_vms": len(nodes)}


async def default_memory_only() -> dict[str, Any]:
    scenario = schema.load(DEFAULT_SCENARIO)
    deployment = f"bench-cp-{os.getpid()}-mem"
    dep = await runner.up(scenario, deployment, out=io.StringIO())
    try:
        return await memory(dep, scenario)
    finally:
        await runner.down(deployment, out=io.StringIO())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def api(client: triozmq.TrioMgmtClient, method: str, path: str, body: Any = None,
              want: tuple[int, ...] = (200, 201)) -> Any:
    args: dict[str, Any] = {"method": method, "path": path}
    if body is not None:
        args["body"] = body
    reply = await client.call("api", args, timeout=10.0)
    if reply["status"] not in want:
        raise RuntimeError(f"{method} {path}: {reply['status']} {reply['body']}")
    return reply["body"]


async def watch_latency(dep: runner.Deployment, vip: str, writes: int, interval: float) -> dict[str, Any]:
    cp = dep.vms[runner.apiserver_vm(CLUSTER)]["mgmt"]
    path = f"/api/v1/namespaces/{WATCH_NS}/configmaps"
    async with triozmq.TrioMgmtClient(cp) as client:
        await api(client, "POST", "/api/v1/namespaces", {"metadata": {"name": WATCH_NS}}, want=(201, 409))
        rv = (await api(client, "GET", path))["metadata"]["resourceVersion"]
        base = (await client.call("stats", {}, timeout=5.0))["apiserver"]["watches"]
        outputs: dict[str, dict[str, Any]] = {}
        sent: dict[str, float] = {}
        timeout = 20.0 + writes * interval * 3

        async def watcher(vm: str, streams: int) -> None:
            argv = ["kwatch", "--server", f"{vip}:6443", "--streams", str(streams), "--count", str(writes),
                    "--prefix", "w-", "--resource-version", str(rv), "--timeout", str(timeout),
                    "--latency-of", "sent", "--json", path]
            result = await runner.call(dep.vms[vm]["mgmt"], "exec", {"argv": argv}, timeout=timeout + 10)
            if result["rc"] != 0:
                raise RuntimeError(f"kwatch in {vm}: {result['stderr'].strip()}")
            outputs[vm] = json.loads(result["stdout"])

        async with trio.open_nursery() as nursery:
            for vm, streams in WATCHERS.items():
                nursery.start_soon(watcher, vm, streams)
            # Write only once every watch is connected (the API server counts its watches).
            want = base + sum(WATCHERS.values())
            with trio.fail_after(15.0):
                while (await client.call("stats", {}, timeout=5.0))["apiserver"]["watches"] < want:
                    await trio.sleep(0.05)
            next_at = time.perf_counter()
            for i in range(writes):
                await trio.sleep(max(0.0, next_at - time.perf_counter()))  # pacing the writes
                name = f"w-{i:05d}"
                sent[name] = time.perf_counter()  # CLOCK_MONOTONIC: the client VMs read the same clock
                await api(client, "POST", path, {"metadata": {"name": name}, "data": {"sent": repr(sent[name])}})
                next_at += interval
    lat = [ms for out in outputs.values() for ms in out["latencies_ms"]]
    expected = writes * sum(WATCHERS.values())
    if any(ms != ms for ms in lat):
        raise RuntimeError("watch: an event arrived without its send stamp")
    if len(lat) != expected:
        raise RuntimeError(f"watch: {len(lat)} of {expected} (event, watcher) deliveries arrived")
    return {"watch_latency_p50_ms": statistics.median(lat), "watch_latency_p99_ms": percentile(lat, 0.99),
            "watch_latency_max_ms": max(lat), "watch_deliveries": len(lat), "watch_writes": writes,
            "watch_write_interval_ms": interval * 1000}


async def default_scenario(opts: argparse.Namespace, profile: Callable[[dict[str, Any]], Any] | None) -> dict[str, Any]:
    scenario = schema.load(DEFAULT_SCENARIO)
    deployment = f"bench-cp-{os.getpid()}-default"
    dep = await runner.up(scenario, deployment, out=io.StringIO())
    try:
        out: dict[str, Any] = await memory(dep, scenario)
        moc = dep.vms[schema.MOC_VM]["mgmt"]
        lbs = await runner.call(moc, "loadbalancers")
        vip = next(lb["vip"] for lb in lbs if lb["cluster"] == CLUSTER)
        if profile is not None:
            profile(dep.vms)
        out.update(await watch_latency(dep, vip, opts.watch_writes, opts.watch_interval))
        cp = str(dep.vms[runner.apiserver_vm(CLUSTER)]["mgmt"])
        async with triozmq.TrioMgmtClient(cp) as client:
            await api(client, "POST", "/api/v1/namespaces", {"metadata": {"name": WRITE_NS}}, want=(201, 409))
            before = (await client.call("stats", {}, timeout=5.0))["apiserver"]
        out.update(await trio.to_thread.run_sync(apiserver_writes.api_writes, cp, opts.seconds, 8, WRITE_NS))
        after = (await runner.call(cp, "stats"))["apiserver"]
        commits = after["group_commits"] - before["group_commits"]
        out["api_writes_per_commit"] = out["api_writes"] / commits if commits else 0.0
        return out
    finally:
        await runner.down(deployment, out=io.StringIO())


# --- the report -----------------------------------------------------------------------------

def ratios(res: dict[str, Any]) -> dict[str, float]:
    out = {
        "boot_s_3_nodes": res["boot_s_3_nodes"],
        "boot_s_30_nodes / raw_spawn_s_30": res["boot_s_30_nodes"] / res["raw_spawn_s_30"],
        "pss_mb_per_node_vm": res["pss_mb_per_node_vm"],
        "api_writes_per_s": res["api_writes_per_s"],
        "watch_latency_p99_ms": res["watch_latency_p99_ms"],
        "api_writes_per_s / raw_sqlite_writes_per_s": res["api_writes_per_s"] / res["raw_sqlite_writes_per_s"],
    }
    if "boot_s_3_nodes_no_forkserver" in res:
        out["boot_s_3_nodes_no_forkserver"] = res["boot_s_3_nodes_no_forkserver"]
        out["boot_s_30_nodes_no_forkserver / raw_spawn_s_30"] = (res["boot_s_30_nodes_no_forkserver"]
                                                                 / res["raw_spawn_s_30"])
        out["pss_mb_per_node_vm_no_forkserver"] = res["pss_mb_per_node_vm_no_forkserver"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="one run of each boot, fewer writes (a smoke test)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of raw spawn and the 3-node boot (median)")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each write-rate measurement")
    ap.add_argument("--watch-writes", type=int, default=200, help="objects written while 30 watchers watch")
    ap.add_argument("--watch-interval", type=float, default=0.01, help="seconds between those writes")
    ap.add_argument("--no-comparison", action="store_true",
                    help="skip the comparison figures without the fork server (HCINET_FORKSERVER=0)")
    ap.add_argument("--profile-dir", help="py-spy record every VM of the default scenario into this dir")
    opts = ap.parse_args()
    if opts.quick:
        opts.repeat, opts.seconds, opts.watch_writes = 1, 1.0, 50
    state = tempfile.mkdtemp(prefix="hcinet-bench-")
    os.environ.setdefault("HCINET_STATE_DIR", state)
    t0 = time.monotonic()
    res: dict[str, Any] = {}
    runs: dict[str, list[float]] = {}
    runs["raw_spawn_s_30"] = [raw_spawn_s(30) for _ in range(opts.repeat)]
    note(f"raw spawn of 30: {runs['raw_spawn_s_30']}")
    retries: dict[str, int] = {}
    # As shipped (the fork server on: agents/forkserver.py), then without it for comparison.
    for suffix, on in (("", True), ("_no_forkserver", False)):
        if not on and opts.no_comparison:
            continue
        for nodes, repeat in ((3, opts.repeat), (30, 1)):
            key = f"boot_s_{nodes}_nodes{suffix}"
            results = boots(nodes, repeat, on)
            runs[key] = [t for t, _ in results]
            retries[f"kubelet_register_retries_{nodes}{suffix}"] = sum(r for _, r in results)
            note(f"boot, {nodes} nodes{'' if on else ' (no fork server)'}: {results}")
    for key, values in runs.items():
        res[key] = statistics.median(values)
    res.update(retries)
    profile = _profiler(opts.profile_dir) if opts.profile_dir else None
    with fork_server(True):
        res.update(trio.run(default_scenario, opts, profile))
    note("default scenario done")
    if not opts.no_comparison:
        with fork_server(False):
            mem = trio.run(default_memory_only)
        res["pss_mb_per_node_vm_no_forkserver"] = mem["pss_mb_per_node_vm"]
        res["rss_mb_per_node_vm_no_forkserver"] = mem["rss_mb_per_node_vm"]
        res["pss_mb_all_vms_no_forkserver"] = mem["pss_mb_all_vms"]
    res["raw_sqlite_writes_per_s"] = apiserver_writes.raw_sqlite(os.path.join(state, "raw.sqlite"), opts.seconds)
    res["seconds"] = time.monotonic() - t0
    res["runs"] = runs
    res["targets"] = benchreport.targets_doc(TARGETS, ratios(res))
    print(json.dumps(res, indent=2) if opts.json
          else benchreport.report(res, TARGETS, ratios(res), width=44, skip=("targets", "runs")))
    return 0


def _profiler(directory: str) -> Callable[[dict[str, Any]], Any]:
    """``py-spy record`` attached to every VM for the watch and write phases (diagnosis only)."""
    def start(vms: dict[str, Any]) -> None:
        os.makedirs(directory, exist_ok=True)
        for name, vm in vms.items():
            spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
            subprocess.Popen([spy if os.path.exists(spy) else "py-spy", "record", "--pid", str(vm["pid"]), "--rate", "200", "--format",
                              "raw", "--output", os.path.join(directory, f"{name}.txt"), "--duration", "15"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start


if __name__ == "__main__":
    raise SystemExit(main())

"""Step 2 through the real processes: host agent, broker, MOC, API server, HAProxy and node VMs.

One deployment of ``scenarios/default.yaml`` (with ``time_scale`` 0.05, so a 40 s grace period
is 2 s and MOC's 10 s HA delay 0.5 s) is shared by most tests, brought up with
``scenarios.runner.up`` as ``hcinet up`` does.  The tests put back what they break (a stopped
VM is started, a partition healed) and wait until every node is Ready again, so they do not
depend on each other; the ones that change the deployment for good (scaling a pool, taking it
down) come last.  The DHCP model boots a small deployment of its own.

Synchronous, like tests/integration/test_fabric.py: management verbs with the blocking
``agents.mgmt.call``, user commands through ``scenarios.cli.main``; every wait is a condition
polled against a deadline, never a bare sleep.

A "watcher" is a client VM's ``curl`` of ``/api/v1/namespaces/NS/configmaps?watch=1&
resourceVersion=N`` at the API server VIP, through the HAProxy VM, as a Kubernetes client
resuming from the last version it saw: it must get exactly the events written since N.
"""

from __future__ import annotations

import io
import ipaddress
import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from integration_support import plain, wait_for

from agents import mgmt
from agents.timers import Timers
from scenarios import cli, rundir, runner, schema

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "cp-it"
TIME_SCALE = 0.05
TIMERS = Timers(TIME_SCALE)

CLUSTER = "cluster1"
APISERVER = "cluster1-control-plane-0"
LB = "cluster1-lb"
MOC = schema.MOC_VM
NODES = ("cluster1-linux-0", "cluster1-linux-1", "cluster1-windows-0")
VIP = "172.16.0.150"
NODE_POOL = (ipaddress.IPv4Address("172.16.0.20"), ipaddress.IPv4Address("172.16.0.99"))
VIP_POOL = (ipaddress.IPv4Address("172.16.0.150"), ipaddress.IPv4Address("172.16.0.199"))
CLIENTS = {"client-dc": "172.16.0.10", "client-ext": "203.0.113.10"}
WATCHER = "client-dc"  # the client VM that watches through the VIP
SETTLE = 20.0  # generous deadline for anything to come back on a shared 2-core machine







def in_range(ip: str, pool: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]) -> bool:
    return pool[0] <= ipaddress.IPv4Address(ip) <= pool[1]


class Cp:
    """Handles on a running AKS-HCI deployment, looked up through its host agent (a VM that
    was restarted binds a new management endpoint, so every call looks it up afresh)."""

    def __init__(self, rd: rundir.RunDir, hostagent: str, broker: str, deployment: str) -> None:
        self.rd = rd
        self.hostagent = hostagent
        self.broker = broker
        self.deployment = deployment

    def agent(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> Any:
        return plain(mgmt.call(self.hostagent, verb, args, timeout))

    def processes(self) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in self.agent("list") if row["kind"] == "vm"}

    def vm(self, name: str, verb: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> Any:
        row = self.processes()[name]
        assert row["state"] == "running", f"{name} is {row['state']}"
        return plain(mgmt.call(row["mgmt"], verb, args, timeout))

    def moc(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        return self.vm(MOC, verb, args, timeout)

    def api(self, method: str, path: str, body: Any = None, cluster: str = CLUSTER) -> tuple[int, Any]:
        """The API server's ``api`` verb (the CLI's path, over the management plane)."""
        args: dict[str, Any] = {"method": method, "path": path}
        if body is not None:
            args["body"] = body
        reply = self.vm(f"{cluster}-control-plane-0", "api", args, 10.0)
        return int(reply["status"]), reply["body"]

    def ok(self, method: str, path: str, body: Any = None, cluster: str = CLUSTER) -> Any:
        status, doc = self.api(method, path, body, cluster)
        assert 200 <= status < 300, f"{method} {path}: {status} {doc}"
        return doc

    def nodes(self, cluster: str = CLUSTER) -> dict[str, dict[str, Any]]:
        return {n["metadata"]["name"]: n for n in self.ok("GET", "/api/v1/nodes", cluster=cluster)["items"]}

    def ready(self, cluster: str = CLUSTER) -> dict[str, str]:
        """Each Node's Ready condition status ("True" / "False" / "Unknown"); {} while the API
        server cannot answer."""
        try:
            return {name: runner.node_ready(n) for name, n in self.nodes(cluster).items()}
        except (mgmt.RemoteError, TimeoutError, KeyError, AssertionError):
            return {}

    def all_ready(self, names: tuple[str, ...] = NODES) -> bool:
        got = self.ready()
        return all(got.get(n) == "True" for n in names)

    def exec(self, name: str, *argv: str, timeout: float = 20.0) -> dict[str, Any]:
        result: dict[str, Any] = self.vm(name, "exec", {"argv": list(argv)}, timeout)
        return result

    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = cli.main([*argv, "--deployment", self.deployment])
        out, err = capsys.readouterr()
        return rc, out, err

    def all_pids(self) -> dict[str, int]:
        pids = {name: int(row["pid"]) for name, row in self.processes().items()
                if row["pid"] and row["state"] in ("starting", "running")}
        pids.update(self.rd.read_pids())
        return pids

    # -- the watcher --

    def _watch(self, ns: str, since: int) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
        path = (f"http://{VIP}:6443/api/v1/namespaces/{ns}/configmaps"
                f"?watch=1&resourceVersion={since}&timeoutSeconds=0.3")
        r = self.exec(WATCHER, "curl", "-s", "-S", "-f", "-m", "2", path)
        events = [json.loads(line) for line in r["stdout"].splitlines() if line.strip()] if r["rc"] == 0 else []
        return r, [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"])
                   for e in events]

    def watch(self, ns: str, since: int) -> list[tuple[str, str, str]]:
        """A client VM resumes a watch of ``ns``'s ConfigMaps at the VIP from ``since``:
        ``(type, name, resourceVersion)`` of every event it gets (the watch ends itself)."""
        r, events = self._watch(ns, since)
        assert r["rc"] == 0, f"watch through the VIP failed: rc {r['rc']}: {r.get('stderr')}"
        return events

    def watch_when_served(self, ns: str, since: int) -> list[tuple[str, str, str]]:
        """Like :meth:`watch`, retried until the path through the VIP answers again (after a
        restart the LB VM must claim the VIP and its health checks see the backend UP)."""
        got: list[list[tuple[str, str, str]]] = []

        def attempt() -> bool:
            r, events = self._watch(ns, since)
            if r["rc"] == 0:
                got.append(events)
            return bool(got)

        wait_for(attempt, SETTLE, f"a watch of {ns} through the VIP {VIP}:6443 to be served", interval=0.1)
        return got[0]


class Writer:
    """ConfigMap writes in one namespace, remembering the events a watcher should see."""

    def __init__(self, cp: Cp, ns: str) -> None:
        self.cp = cp
        self.ns = ns
        self.events: list[tuple[str, str, str]] = []
        cp.ok("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})

    def path(self, name: str | None = None) -> str:
        return f"/api/v1/namespaces/{self.ns}/configmaps" + (f"/{name}" if name else "")

    def create(self, name: str, **data: str) -> int:
        obj = self.cp.ok("POST", self.path(), {"metadata": {"name": name}, "data": data})
        rv = obj["metadata"]["resourceVersion"]
        self.events.append(("ADDED", name, rv))
        return int(rv)

    def update(self, name: str, **data: str) -> int:
        obj = self.cp.ok("GET", self.path(name))
        obj["data"] = data
        new = self.cp.ok("PUT", self.path(name), obj)
        rv = new["metadata"]["resourceVersion"]
        assert int(rv) > int(obj["metadata"]["resourceVersion"])
        self.events.append(("MODIFIED", name, rv))
        return int(rv)

    def delete(self, name: str) -> None:
        self.cp.ok("DELETE", self.path(name))
        self.events.append(("DELETED", name, "?"))

    def contents(self) -> dict[str, dict[str, str]]:
        return {o["metadata"]["name"]: o.get("data") or {} for o in self.cp.ok("GET", self.path())["items"]}


def missed(got: list[tuple[str, str, str]], want: list[tuple[str, str, str]]) -> None:
    """The watcher got exactly the events written, in order (a DELETED event's version is the
    deletion's, which the write's reply does not tell, so only its order is checked)."""
    assert [(t, n) for t, n, _ in got] == [(t, n) for t, n, _ in want], got
    for (_, _, g), (_, _, w) in zip(got, want, strict=True):
        assert w == "?" or g == w, (got, want)
    rvs = [int(rv) for _, _, rv in got]
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs), got


def up(scenario: schema.Scenario, deployment: str) -> runner.Deployment:
    return trio.run(partial(runner.up, scenario, deployment, out=io.StringIO()))


def down(deployment: str) -> bool:
    return trio.run(partial(runner.down, deployment, out=io.StringIO()))


def default_scenario() -> schema.Scenario:
    doc = yaml.safe_load((ROOT / "scenarios" / "default.yaml").read_text())
    doc["time_scale"] = TIME_SCALE
    return schema.parse(doc)


def cp_of(dep: runner.Deployment, deployment: str) -> Cp:
    return Cp(dep.run_dir, dep.hostagent.mgmt, str(dep.broker["mgmt"]), deployment)


@pytest.fixture(scope="module")
def cp(state_dir: Path) -> Iterator[Cp]:
    dep = up(default_scenario(), DEPLOYMENT)
    try:
        yield cp_of(dep, DEPLOYMENT)
    finally:
        down(DEPLOYMENT)  # a no-op once test_down_leaves_no_process took it down


def restarted(cp: Cp, name: str, old_pid: int) -> dict[str, Any] | None:
    row = cp.processes().get(name)
    if row and row["state"] == "running" and row["pid"] != old_pid:
        return row
    return None


def kill(cp: Cp, capsys: pytest.CaptureFixture[str], name: str) -> tuple[int, float]:
    """``hcinet vm kill NAME``: its old pid and when (wall clock, as the host agent's rows)."""
    old = cp.processes()[name]
    assert old["state"] == "running"
    killed_at = time.time()
    rc, out, err = cp.cli(capsys, "vm", "kill", name)
    assert rc == 0 and f"{name}: killed" in out, err
    assert not rundir.pid_alive(int(old["pid"]))
    return int(old["pid"]), killed_at


# --- boot ----------------------------------------------------------------------------------------

def test_boot_every_node_ready_with_addresses_from_the_right_pools(
        cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    # `up` returned: every node is Ready, as `hcinet get nodes -o json` shows (a List).
    rc, out, err = cp.cli(capsys, "get", "nodes", "-o", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["kind"] == "List" and sorted(n["metadata"]["name"] for n in doc["items"]) == sorted(NODES)
    nodes = {n["metadata"]["name"]: n for n in doc["items"]}
    assert all(runner.node_ready(n) == "True" for n in nodes.values()), nodes
    moc_vms = {row["name"]: row for row in cp.moc("vm_list")}

    # Node VMs: InternalIP from the node IP pool, the one MOC gave their VM, all distinct.
    node_ips = {}
    for name, node in nodes.items():
        ips = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert len(ips) == 1 and in_range(ips[0], NODE_POOL), (name, ips)
        assert moc_vms[name]["ips"] == ips
        node_ips[name] = ips[0]
        assert node["metadata"]["labels"]["kubernetes.io/os"] == ("windows" if "windows" in name else "linux")
        assert ipaddress.IPv4Network(node["spec"]["podCIDR"]).subnet_of(ipaddress.IPv4Network("10.244.0.0/16"))
    assert len(set(node_ips.values())) == len(NODES)
    assert len({n["spec"]["podCIDR"] for n in nodes.values()}) == len(NODES)

    # The control plane and the LB VM also take node-pool addresses; the API server's VIP
    # comes from the VIP pool and the LB VM claims it on the network.
    for vm in (APISERVER, LB):
        assert len(moc_vms[vm]["ips"]) == 1 and in_range(moc_vms[vm]["ips"][0], NODE_POOL), moc_vms[vm]
    all_ips = [moc_vms[v]["ips"][0] for v in (APISERVER, LB, *NODES)]
    assert len(set(all_ips)) == len(all_ips)
    lbs = cp.moc("loadbalancers")
    assert [(lb["cluster"], lb["vip"], lb["lbVm"], lb["programmed"]) for lb in lbs] == [(CLUSTER, VIP, LB, True)]
    assert in_range(VIP, VIP_POOL)
    lb_stats = cp.vm(LB, "stats")
    assert VIP in lb_stats["claims"]["eth0"] and moc_vms[LB]["ips"][0] in lb_stats["claims"]["eth0"]
    cfg = cp.vm(LB, "lb_config")["config"]
    assert cfg["frontends"][0]["bind"] == f"{VIP}:6443"
    assert [(s["address"], s["port"]) for s in cfg["backends"][0]["servers"]] == [(moc_vms[APISERVER]["ips"][0], 6443)]

    # Clients as given; MOC at its cloud-agent address.
    for name, ip in CLIENTS.items():
        assert moc_vms[name]["ips"] == [ip] and cp.vm(name, "stats")["claims"]["eth0"][0] == ip
    assert cp.vm(MOC, "stats")["claims"]["eth0"][0] == "172.16.0.5"

    # Kubelets reach the API server at the VIP, through the HAProxy VM.
    for name in NODES:
        kubelet = cp.vm(name, "kubelet")
        assert kubelet["apiserver"] == f"{VIP}:6443" and kubelet["registered"] and kubelet["lease_renewals"] > 0
    rows = {r["svname"]: r for r in cp.vm(LB, "lb_stats")["rows"] if r["pxname"] == "apiserver"}
    assert rows[APISERVER]["status"] == "UP" and rows["BACKEND"]["status"] == "UP"
    assert int(rows["FRONTEND"]["stot"]) >= len(NODES)

    # MOC's pool accounting matches: 5 node-pool addresses (cp, lb, 3 nodes), 1 VIP.
    usage = {n["name"]: n for n in cp.moc("status")["networks"]}["aks-net"]
    assert (usage["nodePool"]["used"], usage["vipPool"]["used"]) == (5, 1)


# --- validation, exhaustion, sizing ------------------------------------------------------------

def inventory(cp: Cp) -> tuple[Any, ...]:
    """What a refused request must not change: MOC's networks, pools, clusters and VMs, and
    the host agent's processes."""
    status = cp.moc("status")
    return (cp.moc("network_get"), status["networks"], [c["name"] for c in status["clusters"]],
            sorted(v["name"] for v in status["vms"]), sorted(cp.processes()))


BASE_NET = ["network", "create", "--name", "net2", "--vswitch-name", "External",
            "--ip-address-prefix", "172.16.1.0/24", "--gateway", "172.16.1.1", "--dns-servers", "172.16.1.2"]


@pytest.mark.parametrize(("flags", "field", "words"), [
    (["--k8s-node-ip-pool-start", "172.16.2.20", "--k8s-node-ip-pool-end", "172.16.1.99",
      "--vip-pool-start", "172.16.1.150", "--vip-pool-end", "172.16.1.199"],
     "--k8s-node-ip-pool-start", "outside"),
    (["--k8s-node-ip-pool-start", "172.16.1.20", "--k8s-node-ip-pool-end", "172.16.1.99",
      "--vip-pool-start", "172.16.1.90", "--vip-pool-end", "172.16.1.199"],
     "--vip-pool-start", "node IP pool"),
    (["--dhcp-scope-start", "172.16.1.20", "--dhcp-scope-end", "172.16.1.160",
      "--vip-pool-start", "172.16.1.150", "--vip-pool-end", "172.16.1.199"],
     "--vip-pool-start", "DHCP scope"),
    (["--k8s-node-ip-pool-start", "172.16.1.99", "--k8s-node-ip-pool-end", "172.16.1.20",
      "--vip-pool-start", "172.16.1.150", "--vip-pool-end", "172.16.1.199"],
     "--k8s-node-ip-pool-end", "below"),
])
def test_network_create_with_bad_pools_is_refused_in_one_line_naming_the_field(
        cp: Cp, capsys: pytest.CaptureFixture[str], flags: list[str], field: str, words: str) -> None:
    before = inventory(cp)
    rc, out, err = cp.cli(capsys, *BASE_NET, *flags)
    assert rc != 0 and out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and words in lines[0], err
    assert "Traceback" not in err
    assert inventory(cp) == before


def test_moc_validates_pools_itself(cp: Cp) -> None:
    """The same rules behind the CLI: MOC's own ``network_create`` names the key."""
    before = inventory(cp)
    doc = {"name": "net3", "vswitchName": "External", "ipAddressPrefix": "172.16.3.0/24",
           "gateway": "172.16.4.1", "dnsServers": ["172.16.3.2"],
           "k8sNodeIpPoolStart": "172.16.3.20", "k8sNodeIpPoolEnd": "172.16.3.99",
           "vipPoolStart": "172.16.3.150", "vipPoolEnd": "172.16.3.199"}
    with pytest.raises(mgmt.RemoteError, match=r"^gateway: .*outside"):
        cp.moc("network_create", doc)
    overlap = {**doc, "gateway": "172.16.3.1", "vipPoolStart": "172.16.3.50"}
    with pytest.raises(mgmt.RemoteError, match=r"^vipPoolStart: .*node IP pool"):
        cp.moc("network_create", overlap)
    inside = {**doc, "name": "aks-net2", "ipAddressPrefix": "172.16.0.0/24", "gateway": "172.16.0.1",
              "k8sNodeIpPoolStart": "172.16.0.50", "k8sNodeIpPoolEnd": "172.16.0.60",
              "vipPoolStart": "172.16.0.200", "vipPoolEnd": "172.16.0.210"}
    with pytest.raises(mgmt.RemoteError, match=r"^k8sNodeIpPoolStart: .* overlaps the node IP pool "
                                                r"172\.16\.0\.20-172\.16\.0\.99 of network aks-net$"):
        cp.moc("network_create", inside)  # a second network object on aks-net's subnet
    vips = {**inside, "k8sNodeIpPoolStart": "172.16.0.100", "k8sNodeIpPoolEnd": "172.16.0.110",
            "vipPoolStart": "172.16.0.160"}
    with pytest.raises(mgmt.RemoteError, match=r"^vipPoolStart: .* overlaps the VIP pool 172\.16\.0\.150-"):
        cp.moc("network_create", vips)
    with pytest.raises(mgmt.RemoteError, match=r"^vipPoolEnd: '172\.16\.3\.300' is not an IP address$"):
        cp.moc("network_create", {**doc, "gateway": "172.16.3.1", "vipPoolEnd": "172.16.3.300"})
    assert inventory(cp) == before


def test_a_cluster_too_big_is_refused_naming_the_pool_and_the_shortfall(
        cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cp.cli(capsys, "network", "create", "--name", "small", "--vswitch-name", "External",
                          "--ip-address-prefix", "172.16.1.0/24", "--gateway", "172.16.1.1",
                          "--dns-servers", "172.16.1.2", "--k8s-node-ip-pool-start", "172.16.1.20",
                          "--k8s-node-ip-pool-end", "172.16.1.29", "--vip-pool-start", "172.16.1.150",
                          "--vip-pool-end", "172.16.1.150")
    assert rc == 0, err
    before = inventory(cp)
    # 10 node-pool addresses; 5 workers need 1 + 5 + 5 spares + 1 LB VM = 12.
    rc, out, err = cp.cli(capsys, "cluster", "create", "--name", "big", "--vnet", "small", "--node-count", "5")
    assert rc != 0
    line = err.strip()
    assert "\n" not in line and "big" in line and "node IP pool" in line and "small" in line, err
    assert "short by 2" in line and "needs 12" in line and "10 free" in line, err
    assert inventory(cp) == before
    # Growing the running cluster's pool beyond aks-net's node pool is refused the same way.
    rc, out, err = cp.cli(capsys, "nodepool", "scale", "--cluster", CLUSTER, "--name", "cluster1-linux",
                          "--node-count", "200")
    assert rc != 0
    line = err.strip()
    assert "\n" not in line and "node IP pool" in line and "aks-net" in line and "short by" in line, err
    assert inventory(cp) == before
    assert {n["name"]: n["nodeCount"] for c in cp.moc("cluster_get") for n in c["nodePools"]
            if c["name"] == CLUSTER}["cluster1-linux"] == 2


# --- crashes: MOC's HA restarts, nothing lost, watchers resume ------------------------------------

def test_a_killed_api_server_is_restarted_by_moc_and_loses_nothing(
        cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    w = Writer(cp, "it-kill-apiserver")
    seen = w.create("a", v="1")  # the watcher saw everything up to here
    w.events.clear()
    w.create("b", v="1")
    w.update("a", v="2")
    restarts = cp.moc("status")["ha"]["restarts"]

    old_pid, killed_at = kill(cp, capsys, APISERVER)
    row = wait_for(lambda: restarted(cp, APISERVER, old_pid), SETTLE, f"MOC to restart {APISERVER}")
    # Restarted by MOC's HA watcher, after the (scaled) HA delay, not at once.
    assert row["started_at"] - killed_at >= TIMERS.ha_restart_delay * 0.9
    assert cp.moc("status")["ha"]["restarts"] == restarts + 1
    wait_for(lambda: cp.ready(), SETTLE, "the restarted API server to answer")

    # Every acknowledged write survived the SIGKILL.
    assert w.contents() == {"a": {"v": "2"}, "b": {"v": "1"}}
    assert sorted(cp.nodes()) == sorted(NODES)
    w.delete("b")
    w.create("c", v="1")
    assert w.contents() == {"a": {"v": "2"}, "c": {"v": "1"}}

    # A watcher resuming from its last version gets exactly what it missed (no relist).
    missed(cp.watch_when_served(w.ns, seen), w.events)
    wait_for(lambda: cp.all_ready(), SETTLE, "every node Ready again")


def test_a_killed_moc_is_restarted_by_the_host_agent_and_loses_nothing(
        cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    def snapshot() -> tuple[Any, ...]:
        vms = sorted((v["name"], v["role"], v["cluster"], v["pool"], tuple(v["ips"]), v["mac"], v["desired"])
                     for v in cp.moc("vm_list"))
        return (cp.moc("network_get"), cp.moc("cluster_get"), cp.moc("loadbalancers"),
                cp.moc("networkinterfaces"), vms, cp.moc("status")["networks"])

    before = snapshot()
    w = Writer(cp, "it-kill-moc")
    seen = w.create("a", v="1")
    w.events.clear()

    old_pid, killed_at = kill(cp, capsys, MOC)
    # The clusters do not need MOC to work: writes go on while it is down.
    w.create("b", v="1")
    w.update("a", v="2")
    row = wait_for(lambda: restarted(cp, MOC, old_pid), SETTLE, "the host agent to restart MOC")
    assert row["started_at"] - killed_at >= TIMERS.ha_restart_delay * 0.9
    assert any(e["kind"] == "vm-auto-restart" and e["name"] == MOC for e in cp.agent("events", {"limit": 1000}))
    wait_for(lambda: cp.moc("status")["vms"], SETTLE, "the restarted MOC to answer")
    assert snapshot() == before  # sqlite: networks, pools, clusters, VMs, LBs, NICs all back

    # The restarted MOC still does its job: it watches the host agent and restarts a crash.
    old_client, _ = kill(cp, capsys, "client-ext")
    wait_for(lambda: restarted(cp, "client-ext", old_client), SETTLE, "the restarted MOC to restart client-ext")

    missed(cp.watch_when_served(w.ns, seen), w.events)
    assert w.contents() == {"a": {"v": "2"}, "b": {"v": "1"}}


def test_a_killed_haproxy_vm_is_restarted_and_watchers_resume_through_it(
        cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    w = Writer(cp, "it-kill-lb")
    seen = w.create("a", v="1")
    w.events.clear()
    assert cp.watch(w.ns, seen) == []  # through the VIP: nothing new yet

    old_pid, killed_at = kill(cp, capsys, LB)
    # The API server is fine; only the path through the VIP is gone.  Writes go on.
    w.create("b", v="1")
    w.update("a", v="2")
    w.delete("b")
    row = wait_for(lambda: restarted(cp, LB, old_pid), SETTLE, f"MOC to restart {LB}")
    assert row["started_at"] - killed_at >= TIMERS.ha_restart_delay * 0.9

    missed(cp.watch_when_served(w.ns, seen), w.events)
    rows = {r["svname"]: r for r in cp.vm(LB, "lb_stats")["rows"] if r["pxname"] == "apiserver"}
    assert rows[APISERVER]["status"] == "UP"
    assert cp.vm(LB, "lb_config")["config"]["frontends"][0]["bind"] == f"{VIP}:6443"
    wait_for(lambda: cp.all_ready(), SETTLE, "every node Ready again (kubelets reconnect through the VIP)")
    wait_for(lambda: all(lb["programmed"] for lb in cp.moc("loadbalancers")), SETTLE, "MOC to reprogram the LB")


def test_haproxy_stats_show_the_control_plane_down_while_the_api_server_is_off(
        cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    def backend() -> dict[str, dict[str, str]]:
        return {r["svname"]: r for r in cp.vm(LB, "lb_stats")["rows"] if r["pxname"] == "apiserver"}

    assert backend()[APISERVER]["status"] == "UP"
    rc, out, err = cp.cli(capsys, "vm", "stop", APISERVER)
    assert rc == 0, err
    try:
        rows = wait_for(lambda: (lambda b: b if b[APISERVER]["status"] == "DOWN" else None)(backend()),
                        SETTLE, "HAProxy to mark the control plane DOWN")
        assert rows["BACKEND"]["status"] == "DOWN"
        assert int(rows[APISERVER]["chkdown"]) >= 1 and rows[APISERVER]["check_status"].startswith("L4")
        # Powered off, not crashed: MOC does not restart it, however long we look.
        deadline = time.monotonic() + 3 * TIMERS.ha_restart_delay
        while time.monotonic() < deadline:
            assert cp.processes()[APISERVER]["state"] == "stopped"
            assert backend()[APISERVER]["status"] == "DOWN"
            time.sleep(0.05)
        r = cp.exec(WATCHER, "curl", "-s", "-m", "1", f"http://{VIP}:6443/api/v1/nodes")
        assert r["rc"] != 0  # nobody behind the VIP
    finally:
        rc, out, err = cp.cli(capsys, "vm", "start", APISERVER)
    assert rc == 0, err
    wait_for(lambda: backend()[APISERVER]["status"] == "UP", SETTLE, "HAProxy to mark the control plane UP")
    assert backend()["BACKEND"]["status"] == "UP"
    wait_for(lambda: cp.all_ready(), SETTLE, "every node Ready again")


# --- nodes losing the API server -----------------------------------------------------------------

def wait_status(cp: Cp, node: str, status: str, timeout: float = SETTLE) -> float:
    """Wait until ``node``'s Ready condition is ``status``; return when (monotonic)."""
    wait_for(lambda: cp.ready().get(node) == status, timeout, f"{node} Ready={status}")
    return time.monotonic()


def test_a_stopped_node_goes_not_ready_after_the_grace_period_and_back_when_started(
        cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    node = "cluster1-linux-1"
    wait_for(lambda: cp.all_ready(), SETTLE, "every node Ready")
    before = {v["name"]: v["ips"] for v in cp.moc("vm_list")}
    t0 = time.monotonic()
    rc, out, err = cp.cli(capsys, "vm", "stop", node)
    assert rc == 0, err
    try:
        t1 = wait_status(cp, node, "Unknown")
        # Not before the grace period (less one lease renewal: the last beat may be that old),
        # and not much after it (one monitor period, plus a shared machine's slack).
        elapsed = t1 - t0
        grace = TIMERS.node_monitor_grace_period
        assert elapsed >= grace - TIMERS.lease_renew_interval - 0.1, elapsed
        assert elapsed <= grace + 2 * TIMERS.node_monitor_period + 5.0, elapsed
        cond = next(c for c in cp.nodes()[node]["status"]["conditions"] if c["type"] == "Ready")
        assert cond["reason"] == "NodeStatusUnknown"
        taints = {t["key"] for t in cp.nodes()[node]["spec"].get("taints") or []}
        assert "node.kubernetes.io/unreachable" in taints
        assert cp.processes()[node]["state"] == "stopped"  # MOC left it off
        others = cp.ready()
        assert all(others[n] == "True" for n in NODES if n != node), others
    finally:
        rc, out, err = cp.cli(capsys, "vm", "start", node)
    assert rc == 0, err
    wait_status(cp, node, "True")
    assert {v["name"]: v["ips"] for v in cp.moc("vm_list")}[node] == before[node]  # same address
    wait_for(lambda: not (cp.nodes()[node]["spec"].get("taints")), SETTLE, f"{node}'s taints to go")


def test_a_node_partitioned_from_the_haproxy_vm_goes_not_ready_and_heals(
        cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    node = "cluster1-linux-0"
    wait_for(lambda: cp.all_ready(), SETTLE, "every node Ready")
    t0 = time.monotonic()
    rc, out, err = cp.cli(capsys, "net", "partition", "--a", node, "--b", LB)
    assert rc == 0, err
    pid = out.strip()
    try:
        t1 = wait_status(cp, node, "Unknown")
        assert t1 - t0 >= TIMERS.node_monitor_grace_period - TIMERS.lease_renew_interval - 0.1
        assert cp.processes()[node]["state"] == "running"  # alive, just cut off
        assert cp.vm(node, "kubelet")["last_error"]
        others = cp.ready()
        assert all(others[n] == "True" for n in NODES if n != node), others
    finally:
        rc, out, err = cp.cli(capsys, "net", "heal", pid)
    assert rc == 0 and "healed" in out, (out, err)
    wait_status(cp, node, "True")


# --- scaling, then down --------------------------------------------------------------------------

def test_nodepool_scale_adds_and_removes_node_vms_through_moc(
        cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    new = "cluster1-linux-2"
    used = {n["name"]: n for n in cp.moc("status")["networks"]}["aks-net"]["nodePool"]["used"]
    rc, out, err = cp.cli(capsys, "nodepool", "scale", "--cluster", CLUSTER, "--name", "cluster1-linux",
                          "--node-count", "3")
    assert rc == 0, err
    assert f"{new}  Ready" in out, out
    vms = {v["name"]: v for v in cp.moc("vm_list")}
    assert vms[new]["state"] == "running" and vms[new]["pool"] == "cluster1-linux"
    assert in_range(vms[new]["ips"][0], NODE_POOL)
    taken = {ip for name, v in vms.items() if name != new for ip in v["ips"]}
    assert vms[new]["ips"][0] not in taken
    node = cp.nodes()[new]
    assert runner.node_ready(node) == "True"
    assert [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"] == vms[new]["ips"]
    assert {n["name"]: n for n in cp.moc("status")["networks"]}["aks-net"]["nodePool"]["used"] == used + 1
    pid = int(cp.processes()[new]["pid"])

    rc, out, err = cp.cli(capsys, "nodepool", "scale", "--cluster", CLUSTER, "--name", "cluster1-linux",
                          "--node-count", "2")
    assert rc == 0, err
    assert new not in {v["name"] for v in cp.moc("vm_list")}
    assert not rundir.pid_alive(pid)
    row = cp.processes().get(new)
    assert row is None or row["state"] != "running", row
    assert {n["name"]: n for n in cp.moc("status")["networks"]}["aks-net"]["nodePool"]["used"] == used
    # The removed node leaves the cluster, as Set-AksHciNodePool's scale-down drains and deletes it.
    wait_for(lambda: new not in cp.nodes(), SETTLE, f"the Node {new} to be deleted")
    assert cp.all_ready()


def test_down_leaves_no_process(cp: Cp, capsys: pytest.CaptureFixture[str]) -> None:
    """Last: ``hcinet down`` stops the shared deployment and nothing of it survives."""
    pids = cp.all_pids()
    assert {"hostagent", "broker", MOC, APISERVER, LB, *NODES, *CLIENTS} <= set(pids)
    rc, out, err = cp.cli(capsys, "down")
    assert rc == 0 and f"deployment {DEPLOYMENT} is down" in out, err
    assert not [name for name, pid in pids.items() if rundir.pid_alive(pid)]
    assert cp.rd.read_pids() == {} and not cp.rd.hostagent_json.exists()
    with pytest.raises(TimeoutError):
        mgmt.call(cp.hostagent, "ping", {}, timeout=0.3)


# --- the DHCP model: a deployment of its own -------------------------------------------------------

DHCP_SCENARIO = """
name: cp-dhcp
time_scale: 0.05
networks:
  - name: lab
    vswitchName: External
    ipAddressPrefix: 10.0.0.0/24
    gateway: 10.0.0.1
    dnsServers: [10.0.0.2]
    dhcpScopeStart: 10.0.0.100
    dhcpScopeEnd: 10.0.0.199
    vipPoolStart: 10.0.0.20
    vipPoolEnd: 10.0.0.29
management:
  network: lab
  cloudAgentIp: 10.0.0.5
clusters:
  - name: lab1
    vnet: lab
    nodePools:
      - {name: lab1-linux, osType: linux, nodeCount: 2}
clients:
  - {name: lab-client, network: lab, dhcp: true}
"""


def test_dhcp_model_nodes_lease_from_the_scope_and_the_vip_comes_from_the_vip_pool(state_dir: Path) -> None:
    scope = (ipaddress.IPv4Address("10.0.0.100"), ipaddress.IPv4Address("10.0.0.199"))
    vips = (ipaddress.IPv4Address("10.0.0.20"), ipaddress.IPv4Address("10.0.0.29"))
    dep = up(schema.loads(DHCP_SCENARIO), "cp-dhcp")
    lab = cp_of(dep, "cp-dhcp")
    try:
        vms = {v["name"]: v for v in lab.moc("vm_list")}
        nics = {n["vm"]: n for n in lab.moc("networkinterfaces")}
        dhcp = mgmt.call(lab.broker, "stats", {}, 10.0)["networks"]["lab"]["dhcp"]
        # The router's DHCP service leased every MOC VM's address to that VM's NIC (by MAC).
        leases = {lease["mac"]: lease["ip"] for lease in dhcp["leases"] if lease["state"] == "bound"}
        for name in ("lab1-control-plane-0", "lab1-lb", "lab1-linux-0", "lab1-linux-1", "lab-client"):
            assert nics[name]["dhcp"] is True and len(vms[name]["ips"]) == 1, (nics[name], vms[name])
            assert in_range(vms[name]["ips"][0], scope), vms[name]
            assert leases.get(nics[name]["mac"]) == vms[name]["ips"][0], (name, dhcp["leases"])
            assert [d["ip"] for d in lab.vm(name, "stats")["dhcp"]] == vms[name]["ips"]
        assert dhcp["counts"]["exhausted"] == 0
        nodes = lab.nodes("lab1")
        assert sorted(nodes) == ["lab1-linux-0", "lab1-linux-1"]
        for name, node in nodes.items():
            assert runner.node_ready(node) == "True"
            ips = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
            assert ips == vms[name]["ips"], (name, ips)
        all_ips = [vms[n]["ips"][0] for n in vms if n != MOC]
        assert len(set(all_ips)) == len(all_ips)
        # The `kubernetes` Service points at the control plane's leased address.
        eps = lab.ok("GET", "/api/v1/namespaces/default/endpoints/kubernetes", cluster="lab1")
        assert [a["ip"] for a in eps["subsets"][0]["addresses"]] == vms["lab1-control-plane-0"]["ips"]
        (lb,) = lab.moc("loadbalancers")
        assert in_range(lb["vip"], vips) and lb["lbVm"] == "lab1-lb"
        assert lb["vip"] in lab.vm("lab1-lb", "stats")["claims"]["eth0"]
        assert lab.vm("lab1-linux-0", "kubelet")["apiserver"] == f"{lb['vip']}:6443"
        usage = {n["name"]: n for n in lab.moc("status")["networks"]}["lab"]
        assert usage["model"] == "dhcp" and usage["vipPool"]["used"] == 1
    finally:
        down("cp-dhcp")

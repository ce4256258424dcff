"""Bring a scenario up and down through the deployment's host agent (trio).

``up`` is all or nothing: if any step fails (the host agent, the broker, a network, a route,
any VM), everything it started is torn down again before the error is raised, so a failed
``hcinet up`` never leaves half a datacenter running.  ``down`` asks the host agent to stop
everything, then checks the pid files for stragglers (a host agent killed with SIGKILL takes
its children along through PR_SET_PDEATHSIG, but we verify rather than trust).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import trio

from agents import mgmt, triozmq
from agents.timers import Timers
from scenarios import rundir, schema
from scenarios.rundir import AgentInfo, RunDir

VM_READY_TIMEOUT = 20.0
SHUTDOWN_TIMEOUT = 30.0
MOC_CALL_TIMEOUT = 60.0  # cluster_create starts VMs through the host agent before it answers
NODE_READY_TIMEOUT = 60.0  # + 1 s per node: from `up` to every node Ready
# What VMs persist under the run dir (MOC's sqlite, each cluster's API server store, VM disks,
# VM configs): a new `up` removes it.
PERSISTENT_DIRS = ("moc", "clusters", "disks", "state", "vms")
POLL_INTERVAL = 0.1  # how often `up` asks the host agent and the API servers how far they are


class RunnerError(Exception):
    """A deployment operation that failed; ``str()`` is one line for the user."""


# --- what the host agent is given -----------------------------------------------------------

def vm_config(vm: schema.Vm, scenario: schema.Scenario) -> dict[str, Any]:
    """The VM process config of docs/contracts.md (the host agent adds run_dir and broker)."""
    nics = []
    for nic in vm.nics:
        net = scenario.network(nic.network)
        nics.append({"name": nic.name, "network": net.name, "mac": nic.mac,
                     "addresses": [f"{nic.ip}/{net.prefix.prefixlen}"],
                     "gateway": str(net.gateway), "mtu": net.mtu})
    config = {"name": vm.name, "kind": vm.kind, "nics": nics, "routes": [],
              "apps": [{"kind": a.kind, "port": a.port} for a in vm.apps],
              "time_scale": scenario.time_scale}
    return {**config, **dns_config(scenario, [n.network for n in vm.nics])}


def dns_config(scenario: schema.Scenario, networks: Iterable[str]) -> dict[str, Any]:
    """``{"dns": {"nameservers": [...]}}`` from the networks' ``dnsServers`` (the VM's
    resolv.conf, as MOC writes it for the VMs it creates), or nothing when they list none."""
    servers = list(dict.fromkeys(str(d) for n in networks for d in scenario.network(n).dns_servers))
    return {"dns": {"nameservers": servers[:3]}} if servers else {}


# --- progress lines -------------------------------------------------------------------------

class Progress:
    """Per-VM progress: ``vm-a  starting… ready (172.16.0.10) 0.21s``.

    On a terminal every VM gets its line at once and the line is completed in place when
    the VM is ready; elsewhere (logs, pipes) one finished line per VM is printed.
    """

    def __init__(self, names: list[str], out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.names = names
        self.width = max((len(n) for n in names), default=0)
        self.tty = self.out.isatty()
        self._lines: dict[str, int] = {}

    def begin(self) -> None:
        if not self.tty:
            return
        for i, name in enumerate(self.names):
            self._lines[name] = i
            self.out.write(f"{name:<{self.width}}  starting…\n")
        self.out.flush()

    def done(self, name: str, text: str) -> None:
        line = f"{name:<{self.width}}  starting… {text}"
        if self.tty and name in self._lines:
            up = len(self.names) - self._lines[name]
            self.out.write(f"\x1b[{up}A\r\x1b[2K{line}\x1b[{up}B\r")
        else:
            self.out.write(line + "\n")
        self.out.flush()


def say(out: TextIO | None, text: str) -> None:
    stream = out if out is not None else sys.stdout
    stream.write(text + "\n")
    stream.flush()


# --- up ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Deployment:
    """What ``up`` brought up."""

    run_dir: RunDir
    hostagent: AgentInfo
    broker: dict[str, Any]
    vms: dict[str, dict[str, Any]]


async def up(scenario: schema.Scenario, deployment: str | None = None, *, source: str = "",
             out: TextIO | None = None, seed: int | None = None) -> Deployment:
    """Start the host agent, the broker, the networks, routes and VMs; all or nothing."""
    rd = rundir.for_deployment(deployment)
    running = await rundir.find_running(rd)
    if running is not None:
        raise RunnerError(f"deployment {rd.deployment} is already running (host agent pid {running.pid}); "
                          f"run 'hcinet down --deployment {rd.deployment}' first")
    await _clean_leftovers(rd, out)
    # A new deployment starts from nothing: the sqlite files and disks of an earlier one (MOC's
    # inventory, the API servers' objects) would resurrect it.
    for sub in PERSISTENT_DIRS:
        shutil.rmtree(rd.path / sub, ignore_errors=True)
    rd.ensure()
    rd.state_json.unlink(missing_ok=True)
    t0 = time.monotonic()
    try:
        agent = await rundir.start_hostagent(rd)
    except rundir.RunDirError as exc:
        raise RunnerError(str(exc)) from None
    say(out, f"host agent  ready (pid {agent.pid}) {time.monotonic() - t0:.2f}s")
    try:
        return await _populate(rd, agent, scenario, source, out, seed)
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            await _teardown(rd, agent)
        if isinstance(exc, (mgmt.RemoteError, TimeoutError)):
            raise RunnerError(str(exc)) from None
        raise


async def _populate(rd: RunDir, agent: AgentInfo, scenario: schema.Scenario, source: str,
                    out: TextIO | None, seed: int | None) -> Deployment:
    async with triozmq.TrioMgmtClient(agent.mgmt) as ha:
        t0 = time.monotonic()
        broker = await ha.call("start_broker", {} if seed is None else {"seed": seed}, timeout=20.0)
        say(out, f"broker  ready (pid {broker['pid']}, data {broker['data']}) {time.monotonic() - t0:.2f}s")
        async with triozmq.TrioMgmtClient(broker["mgmt"]) as br:
            for net in scenario.networks:
                if scenario.segment(net.name) == net.name:  # one broker network per wire
                    await _call(br, "add_network", net.mgmt_args(), f"network {net.name}")
            for route in scenario.routes:
                await _call(br, "add_route", route.mgmt_args(), f"route {route.prefix} -> {route.network}")
        say(out, f"networks  {', '.join(f'{n.name} ({n.prefix})' for n in scenario.networks)}")
        vms = await _start_vms(ha, scenario, out) if scenario.vms else {}
        if scenario.uses_moc:
            vms.update(await _bring_up_aks(ha, rd, agent, broker, scenario, out))
    state = {"deployment": rd.deployment, "source": source, "started_at": time.time(),
             "scenario": scenario_doc(scenario), "hostagent": {"mgmt": agent.mgmt, "pid": agent.pid},
             "broker": broker, "vms": vms, "moc": scenario.uses_moc}
    rd.write_state(state)
    return Deployment(rd, agent, broker, vms)


# --- the AKS-HCI deployment, through MOC --------------------------------------------------------

def moc_config(scenario: schema.Scenario, rd: RunDir, agent: AgentInfo, broker: dict[str, Any]) -> dict[str, Any]:
    """The cloud agent's VM config (docs/contracts-control-plane.md, "VM names and configs")."""
    assert scenario.management is not None
    net = scenario.network(scenario.management.network)
    ip = scenario.management.cloud_agent_ip
    return {"name": schema.MOC_VM, "kind": "moc",
            "nics": [{"name": "eth0", "network": scenario.segment(net.name), "mac": schema.mac_for(ip),
                      "addresses": [f"{ip}/{net.prefix.prefixlen}"], "gateway": str(net.gateway), "mtu": net.mtu}],
            "routes": [], "apps": [], "time_scale": scenario.time_scale,
            "state_dir": str(rd.path / "moc"), "hostagent": agent.mgmt, "broker_mgmt": str(broker["mgmt"]),
            "scenario": scenario.doc(), **dns_config(scenario, [net.name])}


def moc_restart(scenario: schema.Scenario) -> dict[str, Any]:
    """The host agent restarts the cloud agent after the HA delay (a failover-cluster role)."""
    return {"delay_s": Timers(scenario.time_scale).ha_restart_delay}


async def _bring_up_aks(ha: triozmq.TrioMgmtClient, rd: RunDir, agent: AgentInfo, broker: dict[str, Any],
                        scenario: schema.Scenario, out: TextIO | None) -> dict[str, dict[str, Any]]:
    """MOC VM, then MOC creates networks, DNS VMs, clusters and clients; wait until every node is Ready."""
    assert scenario.management is not None
    t0 = time.monotonic()
    try:
        reply = await ha.call("start_vm", {"config": moc_config(scenario, rd, agent, broker),
                                           "timeout": VM_READY_TIMEOUT, "restart": moc_restart(scenario)},
                              timeout=VM_READY_TIMEOUT + 10.0)
    except mgmt.RemoteError as exc:
        raise RunnerError(f"{schema.MOC_VM}: {exc}") from None
    moc_ip = str(scenario.management.cloud_agent_ip)
    say(out, f"{schema.MOC_VM}  ready ({moc_ip}, pid {reply['pid']}) {time.monotonic() - t0:.2f}s")
    vms = {schema.MOC_VM: {**reply, "ips": [moc_ip]}}
    plan = Plan.of(scenario)
    async with triozmq.TrioMgmtClient(str(reply["mgmt"])) as moc:

        async def create() -> None:
            for net in scenario.networks:
                if net.model is not None or net.external:  # plain fabric networks are not MOC's
                    await _call(moc, "network_create", net.doc(), f"network {net.name}", MOC_CALL_TIMEOUT)
            for dns in scenario.dns:  # first: the nodes' and CoreDNS's upstream
                await _call(moc, "client_create", dns.moc_args(), f"dns {dns.name}", MOC_CALL_TIMEOUT)
            for cluster in scenario.clusters:
                await _call(moc, "cluster_create", cluster.doc(), f"cluster {cluster.name}", MOC_CALL_TIMEOUT)
            for client in scenario.clients:
                await _call(moc, "client_create", client.doc(), f"client {client.name}", MOC_CALL_TIMEOUT)

        ready = await wait_ready(agent, plan, out, create=create, run_dir=rd.path)
    vms.update(ready)
    return vms


@dataclass(frozen=True, slots=True)
class Expect:
    """One VM ``up`` waits for: a node until its Node is Ready, others until they run."""

    vm: str
    role: str  # "node" | "apiserver" | "vm"
    cluster: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    items: tuple[Expect, ...]

    @classmethod
    def of(cls, scenario: schema.Scenario) -> Plan:
        return cls.of_clusters(scenario.clusters, [d.name for d in scenario.dns] + [c.name for c in scenario.clients])

    @classmethod
    def of_clusters(cls, clusters: Iterable[schema.Cluster], others: Iterable[str] = ()) -> Plan:
        items: list[Expect] = []
        for c in clusters:
            items += [Expect(n, "apiserver", c.name) for n in c.vm_names() if "-control-plane-" in n]
            if c.load_balancer_sku == "HAProxy":
                items.append(Expect(f"{c.name}-lb", "vm", c.name))
            items += [Expect(n, "node", c.name) for p in c.node_pools for n in p.vm_names()]
        items += [Expect(n, "vm") for n in others]
        return cls(tuple(items))

    def nodes(self, cluster: str) -> list[str]:
        return [e.vm for e in self.items if e.role == "node" and e.cluster == cluster]

    @property
    def clusters(self) -> list[str]:
        return list(dict.fromkeys(e.cluster for e in self.items if e.cluster is not None))


def apiserver_vm(cluster: str) -> str:
    return f"{cluster}-control-plane-0"


def node_ready(node: dict[str, Any]) -> str:
    """The ``Ready`` condition's status: "True", "False" or "Unknown" (no condition yet)."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status", "Unknown"))
    return "Unknown"


async def api(endpoint: str, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
              timeout: float = 10.0) -> tuple[int, Any]:
    """The API server's management ``api`` verb: Kubernetes REST over the management plane."""
    args: dict[str, Any] = {"method": method, "path": path}
    if body is not None:
        args["body"] = body
    if query:
        args["query"] = query
    reply = await call(endpoint, "api", args, timeout=timeout, what=f"{method} {path}")
    status, doc = int(reply.get("status", 500)), reply.get("body")
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except ValueError:
            pass
    return status, doc


async def wait_ready(agent: AgentInfo, plan: Plan, out: TextIO | None, *,
                     create: Callable[[], Awaitable[None]] | None = None,
                     timeout: float | None = None, run_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Run ``create`` (MOC calls) while printing a line per VM as it becomes ready.

    A node is ready when its Node's ``Ready`` condition is "True" on its cluster's API server
    (asked over the management plane); the API server VM when it answers; other VMs when the
    host agent reports them running.  A VM that crashes, or a deadline, fails the whole ``up``.
    """
    if timeout is None:
        timeout = NODE_READY_TIMEOUT + sum(1.0 for e in plan.items if e.role == "node")
    progress = Progress([e.vm for e in plan.items], out)
    progress.begin()
    t0 = time.monotonic()
    done: dict[str, dict[str, Any]] = {}
    created = create is None
    failure: list[BaseException] = []

    async def guarded(fn: Callable[[], Awaitable[None]], cancel: trio.CancelScope) -> None:
        # Errors are collected rather than raised in the nursery (no ExceptionGroup): the
        # user gets the first one as one line.
        try:
            await fn()
        except (RunnerError, mgmt.RemoteError, TimeoutError) as exc:
            failure.append(exc)
            cancel.cancel()

    async def run_create() -> None:
        nonlocal created
        assert create is not None
        await create()
        created = True

    async def poll() -> None:
        while len(done) < len(plan.items) or not created:
            await _poll_once(agent, plan, done, progress, t0, run_dir)
            if len(done) < len(plan.items) or not created:
                await trio.sleep(POLL_INTERVAL)

    with trio.move_on_after(timeout) as scope:
        async with trio.open_nursery() as nursery:
            if create is not None:
                nursery.start_soon(guarded, run_create, nursery.cancel_scope)
            await guarded(poll, nursery.cancel_scope)
            nursery.cancel_scope.cancel()
    if failure:
        raise RunnerError(str(failure[0])) from None
    if scope.cancelled_caught:
        pending = [e.vm for e in plan.items if e.vm not in done]
        what = "not Ready" if any(e.role == "node" for e in plan.items if e.vm in pending) else "not running"
        raise RunnerError(f"{', '.join(pending[:3])}{' …' if len(pending) > 3 else ''}: {what} within "
                          f"{timeout:g} s (see 'hcinet logs {pending[0] if pending else 'moc-cloudagent'}')")
    for cluster in plan.clusters:
        nodes = plan.nodes(cluster)
        say(out, f"{cluster}: {len(nodes)}/{len(nodes)} nodes Ready")
    return done


async def _poll_once(agent: AgentInfo, plan: Plan, done: dict[str, dict[str, Any]], progress: Progress,
                     t0: float, run_dir: Path | None) -> None:
    rows = {r["name"]: r for r in await list_processes(agent) if r.get("kind") == "vm"}
    for e in plan.items:
        row = rows.get(e.vm)
        if e.vm not in done and row is not None and row.get("state") == "crashed":
            progress.done(e.vm, "FAILED")
            tail = f": {row['signal']}" if row.get("signal") else (
                f": exited with code {row['exit_code']}" if row.get("exit_code") is not None else "")
            raise RunnerError(f"{e.vm}: crashed while starting{tail} (see 'hcinet logs {e.vm}')")
    ready_nodes: dict[str, dict[str, dict[str, Any]]] = {}
    for cluster in plan.clusters:
        row = rows.get(apiserver_vm(cluster))
        if row is None or row.get("state") != "running" or not row.get("mgmt"):
            continue
        try:
            status, doc = await api(str(row["mgmt"]), "GET", "/api/v1/nodes", timeout=2.0)
        except RunnerError:
            continue
        if status == 200 and isinstance(doc, dict):
            ready_nodes[cluster] = {n["metadata"]["name"]: n for n in doc.get("items", [])
                                    if isinstance(n, dict) and "metadata" in n}
    for e in plan.items:
        row = rows.get(e.vm)
        if e.vm in done or row is None or row.get("state") != "running":
            continue
        if e.role == "apiserver" and e.cluster not in ready_nodes:
            continue
        node = ready_nodes.get(e.cluster or "", {}).get(e.vm) if e.role == "node" else None
        if e.role == "node" and (node is None or node_ready(node) != "True"):
            continue
        ips = _node_ips(node) if node is not None else _config_ips(run_dir, e.vm)
        done[e.vm] = {"name": e.vm, "pid": row.get("pid"), "mgmt": row.get("mgmt"), "ips": ips}
        ip_text = f"({', '.join(ips)}) " if ips else ""
        progress.done(e.vm, f"{'ready' if e.role != 'node' else 'Ready'} {ip_text}{time.monotonic() - t0:.2f}s")


def _config_ips(run_dir: Path | None, name: str) -> list[str]:
    """A VM's static addresses from the config the host agent wrote (none for a DHCP NIC)."""
    if run_dir is None:
        return []
    try:
        config = json.loads((run_dir / "vms" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return []
    return [str(a).split("/")[0] for nic in config.get("nics") or [] for a in nic.get("addresses") or []]


def _node_ips(node: dict[str, Any]) -> list[str]:
    return [a["address"] for a in (node.get("status") or {}).get("addresses") or []
            if isinstance(a, dict) and a.get("type") == "InternalIP" and a.get("address")]


async def _call(client: triozmq.TrioMgmtClient, verb: str, args: dict[str, Any], what: str,
                timeout: float = 10.0) -> Any:
    try:
        return await client.call(verb, args, timeout=timeout)
    except mgmt.RemoteError as exc:
        raise RunnerError(f"{what}: {exc}") from None


async def _start_vms(ha: triozmq.TrioMgmtClient, scenario: schema.Scenario,
                     out: TextIO | None) -> dict[str, dict[str, Any]]:
    """Start every VM at once; the first failure cancels the rest (the caller tears down)."""
    progress = Progress([vm.name for vm in scenario.vms], out)
    progress.begin()
    started: dict[str, dict[str, Any]] = {}
    failure: list[str] = []

    async def one(vm: schema.Vm, cancel: trio.CancelScope) -> None:
        t0 = time.monotonic()
        try:
            reply = await ha.call("start_vm", {"config": vm_config(vm, scenario), "timeout": VM_READY_TIMEOUT},
                                  timeout=VM_READY_TIMEOUT + 10.0)
        except (mgmt.RemoteError, TimeoutError) as exc:
            progress.done(vm.name, "FAILED")
            failure.append(str(exc))
            cancel.cancel()
            return
        started[vm.name] = {**reply, "ips": list(vm.ips)}
        progress.done(vm.name, f"ready ({', '.join(vm.ips)}) {time.monotonic() - t0:.2f}s")

    async with trio.open_nursery() as nursery:
        for vm in scenario.vms:
            nursery.start_soon(one, vm, nursery.cancel_scope)
    if failure:
        raise RunnerError(failure[0])
    return started


def scenario_doc(scenario: schema.Scenario) -> dict[str, Any]:
    """The scenario as a document ``schema.parse`` accepts (for state.json)."""
    return scenario.doc()


# --- down -------------------------------------------------------------------------------------

async def down(deployment: str | None = None, *, out: TextIO | None = None) -> bool:
    """Stop the deployment; return False if nothing was running (leftovers are cleaned anyway)."""
    rd = rundir.for_deployment(deployment)
    agent = await rundir.find_running(rd)
    if agent is None:
        killed = await _clean_leftovers(rd, out)
        return bool(killed)
    await _teardown(rd, agent, out)
    return True


async def _teardown(rd: RunDir, agent: AgentInfo, out: TextIO | None = None) -> None:
    """Host agent ``shutdown`` (VMs, then broker, then itself), then verify nothing is left."""
    try:
        async with triozmq.TrioMgmtClient(agent.mgmt) as ha:
            reply = await ha.call("shutdown", {}, timeout=SHUTDOWN_TIMEOUT)
        stopped = reply.get("stopped", []) if isinstance(reply, dict) else []
        say(out, f"stopped {len(stopped)} processes" + (f" ({', '.join(stopped)})" if stopped else ""))
    except (mgmt.RemoteError, TimeoutError) as exc:
        say(out, f"host agent did not shut down cleanly ({exc}); terminating it")
        _signal(agent.pid, signal.SIGTERM)
    if not await rundir.wait_gone(agent.pid, 10.0):
        _signal(agent.pid, signal.SIGKILL)
        await rundir.wait_gone(agent.pid, 5.0)
    await _clean_leftovers(rd, out)


async def _clean_leftovers(rd: RunDir, out: TextIO | None) -> list[str]:
    """SIGKILL any process a pid file still names that belongs to this run dir; drop the files."""
    killed = []
    for name, pid in rd.read_pids().items():
        if rd.owns(pid):
            _signal(pid, signal.SIGKILL)
            await rundir.wait_gone(pid, 5.0)
            killed.append(f"{name} (pid {pid})")
    if killed:
        say(out, f"killed leftover processes: {', '.join(killed)}")
    rd.clear_pids()
    rd.hostagent_json.unlink(missing_ok=True)
    return killed


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- finding things in a running deployment ---------------------------------------------------

async def require_running(deployment: str | None = None) -> tuple[RunDir, AgentInfo]:
    rd = rundir.for_deployment(deployment)
    agent = await rundir.find_running(rd)
    if agent is None:
        raise RunnerError(f"deployment {rd.deployment} is not running (start it with 'hcinet up')")
    return rd, agent


async def list_processes(agent: AgentInfo) -> list[dict[str, Any]]:
    async with triozmq.TrioMgmtClient(agent.mgmt) as ha:
        rows = await ha.call("list", {}, timeout=5.0)
    return list(rows)


async def endpoint_of(agent: AgentInfo, name: str, kind: str = "vm") -> str:
    """The management endpoint of a running VM (or of the broker: ``kind="broker"``)."""
    rows = await list_processes(agent)
    for row in rows:
        if row["name"] == name and row["kind"] == kind:
            if row["state"] != "running" or not row.get("mgmt"):
                raise RunnerError(f"{name}: {row['state']}, not running")
            return str(row["mgmt"])
    if kind == "broker":
        raise RunnerError("broker: not running in this deployment")
    known = sorted(r["name"] for r in rows if r["kind"] == "vm")
    raise RunnerError(f"{name}: no such VM (known: {', '.join(known) or 'none'})")


async def broker_endpoint(agent: AgentInfo) -> str:
    return await endpoint_of(agent, "broker", kind="broker")


async def call(endpoint: str, verb: str, args: dict[str, Any] | None = None, timeout: float = 10.0,
               what: str = "") -> Any:
    """One management call; a refusal or silence becomes a one-line RunnerError."""
    try:
        async with triozmq.TrioMgmtClient(endpoint) as client:
            return await client.call(verb, args or {}, timeout=timeout)
    except mgmt.RemoteError as exc:
        raise RunnerError(f"{what + ': ' if what else ''}{exc}") from None
    except TimeoutError as exc:
        raise RunnerError(str(exc)) from None


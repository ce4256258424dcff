"""Bring a scenario up and down through the deployment's host agent (trio).

``up`` is all or nothing: if any step fails (the host agent, the broker, a network, a route,
any VM), everything it started is torn down again before the error is raised, so a failed
``hcinet up`` never leaves half a datacenter running.  ``down`` asks the host agent to stop
everything, then checks the pid files for stragglers (a host agent killed with SIGKILL takes
its children along through PR_SET_PDEATHSIG, but we verify rather than trust).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import trio

from agents import mgmt, triozmq
from scenarios import rundir, schema
from scenarios.rundir import AgentInfo, RunDir

VM_READY_TIMEOUT = 20.0
SHUTDOWN_TIMEOUT = 30.0


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
    return {"name": vm.name, "kind": vm.kind, "nics": nics, "routes": [],
            "apps": [{"kind": a.kind, "port": a.port} for a in vm.apps],
            "time_scale": scenario.time_scale}


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
                await _call(br, "add_network", net.mgmt_args(), f"network {net.name}")
            for route in scenario.routes:
                await _call(br, "add_route", route.mgmt_args(), f"route {route.prefix} -> {route.network}")
        say(out, f"networks  {', '.join(f'{n.name} ({n.prefix})' for n in scenario.networks)}")
        vms = await _start_vms(ha, scenario, out)
    state = {"deployment": rd.deployment, "source": source, "started_at": time.time(),
             "scenario": scenario_doc(scenario), "hostagent": {"mgmt": agent.mgmt, "pid": agent.pid},
             "broker": broker, "vms": vms}
    rd.write_state(state)
    return Deployment(rd, agent, broker, vms)


async def _call(client: triozmq.TrioMgmtClient, verb: str, args: dict[str, Any], what: str) -> Any:
    try:
        return await client.call(verb, args, timeout=10.0)
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
    return {
        "name": scenario.name, "time_scale": scenario.time_scale,
        "networks": [{"name": n.name, "ipAddressPrefix": str(n.prefix), "gateway": str(n.gateway),
                      "vlanID": n.vlan_id, "mtu": n.mtu, "external": n.external} for n in scenario.networks],
        "routes": [{"prefix": str(r.prefix), "network": r.network,
                    **({"sources": list(r.sources)} if r.sources is not None else {})} for r in scenario.routes],
        "vms": [{"name": v.name, "kind": v.kind,
                 "nics": [{"name": n.name, "network": n.network, "ip": str(n.ip)} for n in v.nics],
                 "apps": [{"kind": a.kind, "port": a.port} for a in v.apps]} for v in scenario.vms],
    }


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


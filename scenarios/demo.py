"""``hcinet demo``: boot the AKS-HCI demo and show it; ``--fabric``: the step-1 fabric tour.

Without ``--fabric``: boot ``scenarios/default.yaml`` (unless the deployment already runs),
show ``hcinet status``, ``hcinet get nodes -o wide`` and a curl from the external client to the
datacenter client's web server, and leave it running.

With ``--fabric``: brings the fabric demo up (unless that deployment already runs it), then shows, with the real
tools inside the VMs: pings on one network and across the gateway router, a 10 MB transfer
over the TCP-like transport with its rate and digest check, a 50 ms delay on a pair switched
on and off, 20 % loss, a partition and its healing, and the per-NIC counters.  Takes the
deployment down afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scenarios import cli, rundir, runner, schema

TRANSFER_BYTES = 10_000_000
_SUMMARY_RE = re.compile(r"(\d+) packets transmitted, (\d+) received.*?([\d.]+)% packet loss")
_RTT_RE = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


@dataclass(frozen=True, slots=True)
class Cast:
    """Who plays which part: two VMs on one network, one behind the gateway."""

    a: schema.Vm
    b: schema.Vm
    c: schema.Vm

    @classmethod
    def pick(cls, scenario: schema.Scenario) -> Cast:
        for a in scenario.vms:
            net = a.nics[0].network
            same = [v for v in scenario.vms if v is not a and v.nics[0].network == net]
            other = [v for v in scenario.vms if v.nics[0].network != net]
            if same and other:
                return cls(a, same[0], other[0])
        raise cli.CliError("demo: the scenario needs two VMs on one network and one VM on another")


def _sink_port(vm: schema.Vm) -> int:
    for app in vm.apps:
        if app.kind == "tcp-sink":
            return app.port
    raise cli.CliError(f"demo: {vm.name} runs no tcp-sink app for the transfer")


class Narrator:
    def __init__(self, agent: rundir.AgentInfo) -> None:
        self.agent = agent
        self.step = 0

    def title(self, text: str) -> None:
        self.step += 1
        print(f"\n== {self.step}. {text}")
        sys.stdout.flush()

    async def exec(self, vm: schema.Vm, argv: list[str], timeout: float = 120.0) -> dict[str, Any]:
        endpoint = await runner.endpoint_of(self.agent, vm.name)
        print(f"   $ hcinet vm exec {vm.name} -- {' '.join(argv)}")
        result = await runner.call(endpoint, "exec", {"argv": argv}, timeout=timeout, what=vm.name)
        return dict(result)

    async def ping(self, src: schema.Vm, dst: schema.Vm, count: int = 3, interval: float = 0.2,
                   wait: float = 2.0) -> tuple[int, int, float | None]:
        result = await self.exec(src, ["ping", "-c", str(count), "-i", str(interval), "-W", str(wait), dst.ips[0]],
                                 timeout=count * (interval + wait) + 30)
        out = result.get("stdout", "")
        summary = _SUMMARY_RE.search(out)
        rtt = _RTT_RE.search(out)
        tx, rx = (int(summary.group(1)), int(summary.group(2))) if summary else (count, 0)
        avg = float(rtt.group(2)) if rtt else None
        avg_text = f", rtt avg {avg:.2f} ms" if avg is not None else ""
        print(f"   {rx}/{tx} replies{avg_text}")
        return tx, rx, avg

    async def broker(self, verb: str, args: dict[str, Any]) -> Any:
        endpoint = await runner.broker_endpoint(self.agent)
        return await runner.call(endpoint, verb, args, what=f"broker {verb}")


async def run(ns: argparse.Namespace) -> int:
    if getattr(ns, "fabric", False):
        return await run_fabric(ns)
    return await run_aks(ns)


async def run_aks(ns: argparse.Namespace) -> int:
    """Boot the AKS-HCI scenario (unless it runs), then show it; it stays up."""
    from scenarios import aks

    rd = rundir.for_deployment(ns.deployment)
    agent = await rundir.find_running(rd)
    path = Path(ns.file) if ns.file else cli.default_scenario()
    if agent is None:
        scenario = cli._load(path)
        print(f"== bringing up {scenario.name} ({path})")
        for text in scenario.warnings:
            cli.warn(text)
        await runner.up(scenario, ns.deployment, source=str(path))
    else:
        running = (rd.read_state() or {}).get("scenario") or {}
        print(f"== deployment {rd.deployment} is already running (scenario {running.get('name', '?')})")
        try:
            scenario = schema.parse(running)
        except schema.ScenarioError as exc:
            raise cli.CliError(f"deployment {rd.deployment}: its state.json does not parse ({exc})") from None
    flag = _dep_flag(rd)
    print(f"\n== hcinet status{flag}")
    await cli.cmd_status(argparse.Namespace(deployment=ns.deployment, output="table"))
    if scenario.clusters:
        cluster = scenario.clusters[0].name
        print(f"\n== hcinet get nodes -o wide{flag}" + (f" --cluster {cluster}" if len(scenario.clusters) > 1 else ""))
        await aks.cmd_get(argparse.Namespace(deployment=ns.deployment, kind="nodes", name=None, namespace=None,
                                             all_namespaces=False, cluster=cluster, output="wide"))
    await _curl(rd, scenario)
    print(f"\nthe deployment is still running: 'hcinet status{flag}', 'hcinet get nodes{flag}', "
          f"'hcinet down{flag}'")
    return 0


async def _curl(rd: rundir.RunDir, scenario: schema.Scenario) -> None:
    """A curl from a client on an external network to an http app on a datacenter client."""
    server = next(((c, a) for c in scenario.clients if c.ip is not None
                   for a in c.apps if a.kind == "http"), None)
    client = next((c for c in scenario.clients if scenario.network(c.network).external), None)
    if server is None or client is None:
        return
    (srv, app), url = server, f"http://{server[0].ip}:{server[1].port}/"
    print(f"\n== from the internet to the datacenter: {client.name} -> {srv.name} ({app.kind} on port {app.port})")
    print(f"   $ hcinet vm exec {client.name} -- curl -s -i {url}")
    agent = await rundir.find_running(rd)
    if agent is None:
        raise cli.CliError(f"deployment {rd.deployment}: the host agent is gone")
    endpoint = await runner.endpoint_of(agent, client.name)
    result = await runner.call(endpoint, "exec", {"argv": ["curl", "-s", "-i", "-m", "10", url]}, timeout=30.0,
                               what=client.name)
    text = (result.get("stdout") or "") + (result.get("stderr") or "")
    for line in text.rstrip().splitlines()[:12]:
        print(f"   {line}")
    print(f"   (exit code {result.get('rc')})")


async def run_fabric(ns: argparse.Namespace) -> int:
    path = Path(ns.file) if ns.file else cli.fabric_scenario()
    scenario = cli._load(path)
    cast = Cast.pick(scenario)
    rd = rundir.for_deployment(ns.deployment)
    agent = await rundir.find_running(rd)
    started = agent is None
    if agent is None:
        print(f"== bringing up {scenario.name} ({path})")
        await runner.up(scenario, ns.deployment, source=str(path))
        agent = await rundir.find_running(rd)
        if agent is None:
            raise cli.CliError(f"deployment {rd.deployment}: the host agent vanished right after 'up'")
    else:
        running = ((rd.read_state() or {}).get("scenario") or {}).get("name")
        if running != scenario.name:
            raise cli.CliError(f"deployment {rd.deployment} runs scenario {running or '?'}, not {scenario.name}; "
                               "use --deployment NAME for the demo")
        print(f"== using the running deployment {rd.deployment}")
    try:
        await _tour(Narrator(agent), cast)
    finally:
        if started and not ns.keep:
            print("\n== taking the deployment down")
            await runner.down(ns.deployment)
        elif ns.keep or not started:
            flag = _dep_flag(rd)
            print(f"\nthe deployment is still running: 'hcinet status{flag}', 'hcinet down{flag}'")
    return 0


def _dep_flag(rd: rundir.RunDir) -> str:
    return "" if rd.deployment == rundir.DEFAULT_DEPLOYMENT else f" --deployment {rd.deployment}"


async def _tour(n: Narrator, cast: Cast) -> None:
    a, b, c = cast.a, cast.b, cast.c
    n.title(f"ping on one network: {a.name} -> {b.name} ({b.ips[0]}, network {b.nics[0].network})")
    await n.ping(a, b)
    n.title(f"ping across the gateway router: {a.name} -> {c.name} ({c.ips[0]}, network {c.nics[0].network})")
    await n.ping(a, c)

    n.title(f"a 10 MB transfer over the TCP-like transport: {a.name} -> {c.name}:{_sink_port(c)}")
    result = await n.exec(a, ["transfer", "--bytes", str(TRANSFER_BYTES), "--json", c.ips[0], str(_sink_port(c))])
    if result.get("rc") != 0:
        raise cli.CliError(f"demo: transfer failed: {(result.get('stderr') or result.get('stdout') or '').strip()}")
    t = json.loads(result["stdout"].strip().splitlines()[-1])
    verdict = "match" if t.get("match") else "MISMATCH"
    print(f"   {t['bytes'] / 1e6:.0f} MB in {t['seconds']:.2f} s = {t['mb_per_s']:.1f} MB/s, "
          f"sha256 {verdict} ({t['sha256'][:16]}…)")

    n.title(f"50 ms delay on the pair {a.name} <-> {b.name} (each direction: RTT ~ 100 ms)")
    await n.broker("impair", {"scope": "pair", "target": [a.name, b.name], "delay_ms": 50.0})
    print(f"   $ hcinet net impair --pair {a.name} {b.name} --delay 50ms")
    await n.ping(a, b, count=5)
    await n.broker("clear", {"scope": "pair", "target": [a.name, b.name]})
    print(f"   $ hcinet net clear --pair {a.name} {b.name}")
    await n.ping(a, b, count=3)

    n.title(f"20% loss on {a.name} <-> {b.name} (a ping needs both ways: ~36% of pings fail)")
    await n.broker("impair", {"scope": "pair", "target": [a.name, b.name], "loss": 20.0})
    print(f"   $ hcinet net impair --pair {a.name} {b.name} --loss 20%")
    tx, rx, _ = await n.ping(a, b, count=50, interval=0.02, wait=1.0)
    print(f"   lost {100.0 * (tx - rx) / tx:.0f}% of the pings")
    await n.broker("clear", {"scope": "pair", "target": [a.name, b.name]})

    n.title(f"a partition between {a.name} and {c.name}, then healing it")
    part = await n.broker("partition", {"a": [a.name], "b": [c.name], "one_way": False})
    print(f"   $ hcinet net partition --a {a.name} --b {c.name}   -> id {part['id']}")
    await n.ping(a, c, count=3, wait=0.5)
    await n.broker("heal", {"id": part["id"]})
    print(f"   $ hcinet net heal {part['id']}")
    await n.ping(a, c, count=3)

    n.title("the per-NIC counters (hcinet net counters)")
    stats = await n.broker("stats", {})
    print(cli.counters_table(stats))

"""hcinet: the operator's console for an emulated AKS-on-HCI datacenter.

The CLI is only a client: it finds a deployment through its run directory
(``scenarios/rundir.py``) and talks to the host agent, the broker and the VMs over their
management sockets.  Errors are one line on stderr with exit code 1 (2 for usage errors);
``-o json`` prints only the JSON document on stdout.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import trio
import yaml

from agents import mgmt
from scenarios import rundir, runner, schema
from scenarios.runner import RunnerError

Command = Callable[[argparse.Namespace], Awaitable[int]]


class CliError(Exception):
    """A one-line error for the user (exit code 1)."""


def default_scenario() -> Path:
    """The step-2 demo: an AKS-HCI deployment (``scenarios/default.yaml``)."""
    return Path(str(importlib.resources.files("scenarios").joinpath("default.yaml")))


def fabric_scenario() -> Path:
    """The step-1 fabric demo (``scenarios/fabric-demo.yaml``)."""
    return Path(str(importlib.resources.files("scenarios").joinpath("fabric-demo.yaml")))


# --- output helpers ---------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned columns, three spaces apart, upper-case headers (as kubectl prints them)."""
    cells = [[str(h).upper() for h in headers]] + [["-" if c is None or c == "" else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def emit_doc(doc: Any, output: str) -> None:
    """``-o json`` / ``-o yaml``: the document alone on stdout; a list becomes a kubectl ``List``."""
    from scenarios.aks import plain

    doc = plain(doc)  # management replies hold tuples (msgpack)
    if isinstance(doc, list):
        doc = {"apiVersion": "v1", "kind": "List", "items": doc, "metadata": {"resourceVersion": ""}}
    if output == "yaml":
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    else:
        emit_json(doc)


def warn(text: str) -> None:
    sys.stderr.write(f"Warning: {text}\n")


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# --- value parsers (tc-netem(8) syntax) -------------------------------------------------------

_UNIT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z%]*)\s*$")
_TIME_UNITS = {"": 1.0, "ms": 1.0, "msec": 1.0, "s": 1000.0, "sec": 1000.0, "us": 0.001, "usec": 0.001}
# tc(8): "kbit"/"mbit"/"gbit" are bits per second; "kbps"/"mbps"/"gbps" are BYTES per second.
_RATE_UNITS = {"bit": 1e-6, "kbit": 1e-3, "mbit": 1.0, "gbit": 1e3,
               "bps": 8e-6, "kbps": 8e-3, "mbps": 8.0, "gbps": 8e3}


def _split(text: str, what: str) -> tuple[float, str]:
    m = _UNIT_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what}")
    return float(m.group(1)), m.group(2).lower()


def duration_ms(text: str) -> float:
    """``50ms``, ``1.5s``, ``200us`` or a bare number of milliseconds."""
    value, unit = _split(text, "duration (e.g. 50ms, 1s)")
    if unit not in _TIME_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown time unit {unit!r} (use us, ms or s)")
    return value * _TIME_UNITS[unit]


def percent(text: str) -> float:
    """``20%`` or ``20``, 0..100."""
    value, unit = _split(text, "percentage (e.g. 20%)")
    if unit not in ("", "%") or not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage within 0..100%")
    return value


def fraction(text: str) -> float:
    """A correlation: ``0.25`` or ``25%``."""
    value, unit = _split(text, "correlation (e.g. 0.25 or 25%)")
    if unit == "%":
        value /= 100.0
    elif unit:
        raise argparse.ArgumentTypeError(f"{text!r} is not a correlation (0..1 or 0..100%)")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not within 0..1")
    return value


def rate_mbit(text: str) -> float:
    """``10mbit``, ``500kbit``, ``1gbit`` (bits/s) or ``mbps`` (bytes/s, as tc reads it)."""
    value, unit = _split(text, "rate (e.g. 10mbit)")
    if unit not in _RATE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown rate unit {unit!r} (use kbit, mbit, gbit)")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a rate must be > 0")
    return value * _RATE_UNITS[unit]


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        return value
    return parse


positive_int = int_at_least(1)


def names(text: str) -> list[str]:
    out = [n for n in (p.strip() for p in text.split(",")) if n]
    if not out:
        raise argparse.ArgumentTypeError("expected VM or NIC names, comma-separated")
    return out


# --- deployment access ------------------------------------------------------------------------

async def _agent(ns: argparse.Namespace) -> tuple[rundir.RunDir, rundir.AgentInfo]:
    return await runner.require_running(ns.deployment)


async def _broker(ns: argparse.Namespace) -> str:
    _, agent = await _agent(ns)
    return await runner.broker_endpoint(agent)


async def _broker_call(ns: argparse.Namespace, verb: str, args: dict[str, Any] | None = None) -> Any:
    return await runner.call(await _broker(ns), verb, args, what=f"broker {verb}")


async def _hostagent_call(ns: argparse.Namespace, verb: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
    _, agent = await _agent(ns)
    return await runner.call(agent.mgmt, verb, args, timeout=timeout)


# --- up / down / status -----------------------------------------------------------------------

async def cmd_up(ns: argparse.Namespace) -> int:
    path = Path(ns.file) if ns.file else default_scenario()
    scenario = _load(path)
    for text in scenario.warnings:
        warn(text)
    t0 = time.monotonic()
    dep = await runner.up(scenario, ns.deployment, source=str(path), seed=ns.seed)
    what = f"{len(dep.vms)} VMs, {len(scenario.networks)} networks"
    if scenario.clusters:
        what += f", {len(scenario.clusters)} cluster{'s' if len(scenario.clusters) > 1 else ''}"
    print(f"deployment {dep.run_dir.deployment} is up: {what} in {time.monotonic() - t0:.2f}s "
          f"(run dir {dep.run_dir.path})")
    return 0


def _load(path: Path) -> schema.Scenario:
    try:
        return schema.load(path)
    except schema.ScenarioError as exc:
        text = str(exc)  # a file that cannot be read is named by the error already
        raise CliError(text if text.startswith(f"{path}: ") else f"{path}: {text}") from None


async def cmd_down(ns: argparse.Namespace) -> int:
    rd = rundir.for_deployment(ns.deployment)
    if await runner.down(ns.deployment):
        print(f"deployment {rd.deployment} is down")
    else:
        print(f"deployment {rd.deployment} was not running")
    return 0


async def cmd_status(ns: argparse.Namespace) -> int:
    rd, agent = await _agent(ns)
    rows = await runner.list_processes(agent)
    state = rd.read_state() or {}
    stats = await _stats_or_none(rows)
    moc = await _moc_status(rows)
    vms = merged_vms(rows, state, moc)
    health = await _cluster_health(rows, moc)
    warnings = _warnings(vms, moc, stats, health)
    if getattr(ns, "output", "table") != "table":  # the table prints its warnings; a document keeps stdout clean
        for w in warnings:  # the shared-network duplicate VIP (MOC's status) on stderr too
            if w.startswith("VIP ") and " is used by load balancers of clusters " in w:
                sys.stderr.write(f"warning: {w}\n")
    doc = {"deployment": rd.deployment, "run_dir": str(rd.path), "hostagent": {"pid": agent.pid, "mgmt": agent.mgmt},
           "scenario": (state.get("scenario") or {}).get("name"), "source": state.get("source"),
           "hosts": [_host_row(agent, rows)], "processes": rows, "vms": vms,
           "networks": (stats or {}).get("networks", {}), "pools": (moc or {}).get("networks", []),
           "clusters": health, "conflicts": len((stats or {}).get("conflicts", [])), "warnings": warnings}
    if ns.output in ("json", "yaml"):
        emit_doc(doc, ns.output)
        return 0
    print(f"deployment {rd.deployment}: host agent pid {agent.pid}, scenario {doc['scenario'] or '-'}"
          f"{' (' + str(doc['source']) + ')' if doc['source'] else ''}\n")
    host = doc["hosts"][0]
    print(table(["host", "state", "processes", "running", "crashed", "stopped"],
                [[host["name"], host["state"], host["processes"], host["running"], host["crashed"], host["stopped"]]]))
    print()
    print(vm_table(vms, with_pid=False))
    print()
    print(_networks_table(state, stats))
    if moc is not None:
        print()
        print(_pools_table(doc["pools"]))
    if health:
        print()
        print(table(["cluster", "api-server", "api-vip", "nodes-ready", "health"],
                    [[h["name"], h["apiServer"], h.get("apiVip"), f"{h['ready']}/{h['nodes']}", h["health"]]
                     for h in health]))
    print(f"\nconflicts: {doc['conflicts'] if stats is not None else 'unknown (broker not running)'}")
    if warnings:
        print("\nwarnings:")
        for w in warnings:
            print(f"  - {w}")
    return 0


def _host_row(agent: rundir.AgentInfo, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The physical machine: its host agent (the MOC node-agent role) and what it runs."""
    count = {s: sum(1 for r in rows if r["state"] == s) for s in ("running", "crashed", "stopped")}
    return {"name": "host-0", "state": "up", "pid": agent.pid, "processes": len(rows), **count}


async def _moc_status(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    moc = next((r for r in rows if r["name"] == schema.MOC_VM and r["state"] == "running" and r.get("mgmt")), None)
    if moc is None:
        return None
    try:
        status = await runner.call(str(moc["mgmt"]), "status", {}, timeout=5.0)
    except RunnerError:
        return None
    return status if isinstance(status, dict) else None


def _items(value: Any) -> list[dict[str, Any]]:
    from scenarios.aks import items_of

    return items_of(value)


def merged_vms(rows: list[dict[str, Any]], state: dict[str, Any], moc: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every VM: the host agent's view (process state) joined with MOC's (kind, cluster, IPs)."""
    ips = _ips_by_vm(state)
    inventory = {v["name"]: v for v in _items((moc or {}).get("vms"))}
    out = []
    for r in rows:
        if r["kind"] != "vm":
            continue
        inv = inventory.get(r["name"], {})
        addrs = inv.get("ips") or inv.get("addresses") or ([inv["ip"]] if inv.get("ip") else None)
        out.append({"name": r["name"], "kind": inv.get("kind") or _kind_guess(r["name"], state),
                    "cluster": inv.get("cluster"), "state": r["state"], "desired": inv.get("desired"),
                    "pid": r["pid"] if r["state"] in ("running", "starting") else None,
                    "ips": [str(a).split("/")[0] for a in addrs] if addrs else
                           [i.split(" ")[0] for i in ips.get(r["name"], [])],
                    "exit": _exit_text(r), "mgmt": r.get("mgmt")})
    for name, inv in inventory.items():  # in MOC's inventory but not (yet / any more) a process
        if not any(v["name"] == name for v in out):
            out.append({"name": name, "kind": inv.get("kind"), "cluster": inv.get("cluster"), "state": "absent",
                        "desired": inv.get("desired"), "pid": None, "ips": inv.get("ips") or [], "exit": "",
                        "mgmt": None})
    return out


def _kind_guess(name: str, state: dict[str, Any]) -> str:
    if name == schema.MOC_VM:
        return "moc"
    for vm in (state.get("scenario") or {}).get("vms", []):
        if vm["name"] == name:
            return str(vm.get("kind", "plain"))
    return "vm"


def vm_table(vms: list[dict[str, Any]], with_pid: bool = True) -> str:
    headers = ["name", "kind", "cluster", "state", "ips"] + (["pid", "exit"] if with_pid else [])
    return table(headers, [[v["name"], v["kind"], v["cluster"], v["state"], ", ".join(v["ips"]),
                            *([v["pid"], v["exit"]] if with_pid else [])] for v in vms])


async def _cluster_health(rows: list[dict[str, Any]], moc: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    by_name = {r["name"]: r for r in rows}
    for c in _items((moc or {}).get("clusters")):
        name = c["name"]
        row = by_name.get(runner.apiserver_vm(name))
        entry: dict[str, Any] = {"name": name, "apiVip": c.get("apiServerVip") or c.get("vip"),
                                 "apiServer": "down", "nodes": 0, "ready": 0}
        if row is not None and row["state"] == "running" and row.get("mgmt"):
            try:
                status, body = await runner.api(str(row["mgmt"]), "GET", "/api/v1/nodes", timeout=3.0)
            except RunnerError:
                status, body = 0, None
            if status == 200 and isinstance(body, dict):
                nodes = _items(body)
                entry.update(apiServer="up", nodes=len(nodes),
                             ready=sum(1 for n in nodes if runner.node_ready(n) == "True"),
                             notReady=[n["metadata"]["name"] for n in nodes if runner.node_ready(n) != "True"])
        if entry["apiServer"] != "up":
            entry["health"] = "API server unreachable"
        elif entry["ready"] < entry["nodes"]:
            entry["health"] = f"degraded: {entry['nodes'] - entry['ready']} node(s) not Ready"
        else:
            entry["health"] = "healthy"
        out.append(entry)
    return out


def _warnings(vms: list[dict[str, Any]], moc: dict[str, Any] | None, stats: dict[str, Any] | None,
              health: list[dict[str, Any]]) -> list[str]:
    out = [str(w) for w in (moc or {}).get("warnings") or []]
    out += [f"VM {v['name']} is {v['state']}{' (' + v['exit'] + ')' if v['exit'] else ''}"
            for v in vms if v["state"] in ("crashed", "absent")]
    out += [f"cluster {h['name']}: {h['health']}" + (f" ({', '.join(h['notReady'])})" if h.get("notReady") else "")
            for h in health if h["health"] != "healthy"]
    conflicts = len((stats or {}).get("conflicts", []))
    if conflicts:
        out.append(f"{conflicts} IP conflict(s): see 'hcinet net conflicts'")
    return out


def _pools_table(pools: list[dict[str, Any]]) -> str:
    def used_free(p: Any) -> tuple[Any, Any, Any]:
        if not isinstance(p, dict):
            return None, None, None
        return p.get("range"), p.get("used"), p.get("free", p.get("available"))

    rows = []
    for n in pools:
        node = used_free(n.get("nodePool")) if n.get("nodePool") else used_free(n.get("dhcpScope"))
        vip = used_free(n.get("vipPool"))
        rows.append([n.get("name"), n.get("model"), n.get("prefix"), *node, *vip,
                     ", ".join(n.get("clusters") or [])])
    return table(["network", "model", "prefix", "node-pool/dhcp-scope", "used", "free", "vip-pool", "used",
                  "free", "clusters"], rows)


async def _stats_or_none(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    broker = next((r for r in rows if r["kind"] == "broker" and r["state"] == "running" and r.get("mgmt")), None)
    if broker is None:
        return None
    try:
        stats = await runner.call(str(broker["mgmt"]), "stats", {}, timeout=5.0)
    except RunnerError:
        return None
    return stats if isinstance(stats, dict) else None


def _ips_by_vm(state: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    management = (state.get("scenario") or {}).get("management")
    if management:
        out[schema.MOC_VM] = [f"{management['cloudAgentIp']} ({management['network']})"]
    for vm in (state.get("scenario") or {}).get("vms", []):
        out[vm["name"]] = [f"{n['ip']} ({n['network']})" for n in vm.get("nics", [])]
    return out


def _exit_text(row: dict[str, Any]) -> str:
    if row["state"] in ("running", "starting"):
        return ""
    if row.get("signal"):
        return str(row["signal"])
    return "" if row.get("exit_code") is None else f"code {row['exit_code']}"


def _networks_table(state: dict[str, Any], stats: dict[str, Any] | None) -> str:
    live = (stats or {}).get("networks", {})
    rows = []
    for net in (state.get("scenario") or {}).get("networks", []):
        claims = live.get(net["name"], {}).get("claims")
        rows.append([net["name"], net["ipAddressPrefix"], net["gateway"], net.get("vlanID", 0) or "untagged",
                     net.get("mtu", 1500), "yes" if net.get("external") else "no",
                     len(claims) if claims is not None else "?"])
    return table(["network", "prefix", "gateway", "vlan", "mtu", "external", "claims"], rows)


# --- vm ---------------------------------------------------------------------------------------

async def cmd_vm_list(ns: argparse.Namespace) -> int:
    rd, agent = await _agent(ns)
    rows = await runner.list_processes(agent)
    vms = merged_vms(rows, rd.read_state() or {}, await _moc_status(rows))
    if ns.output in ("json", "yaml"):
        emit_doc(vms, ns.output)
        return 0
    print(vm_table(vms))
    return 0


async def cmd_vm_kill(ns: argparse.Namespace) -> int:
    row = await _hostagent_call(ns, "kill_vm", {"name": ns.vm})
    print(f"{ns.vm}: killed ({_exit_text(row) or row['state']}); the broker detached its NICs")
    return 0


async def _moc_owns(ns: argparse.Namespace, name: str) -> str | None:
    """MOC's management endpoint if ``name`` is one of its VMs (stop/start go through it)."""
    _, agent = await _agent(ns)
    rows = await runner.list_processes(agent)
    moc = next((r for r in rows if r["name"] == schema.MOC_VM and r["state"] == "running" and r.get("mgmt")), None)
    if moc is None or name == schema.MOC_VM:
        return None
    inventory = await runner.call(str(moc["mgmt"]), "vm_list", {}, timeout=10.0, what="MOC vm_list")
    return str(moc["mgmt"]) if any(v.get("name") == name for v in _items(inventory)) else None


async def cmd_vm_stop(ns: argparse.Namespace) -> int:
    moc = await _moc_owns(ns, ns.vm)
    if moc is not None:  # powered off: MOC records the desired state and will not restart it
        await runner.call(moc, "vm_stop", {"name": ns.vm}, timeout=ns.timeout + 15, what=ns.vm)
        print(f"{ns.vm}: stopped (powered off through MOC; it stays down until 'hcinet vm start {ns.vm}')")
        return 0
    row = await _hostagent_call(ns, "stop_vm", {"name": ns.vm, "timeout": ns.timeout}, timeout=ns.timeout + 15)
    print(f"{ns.vm}: {row['state']} ({_exit_text(row) or 'exited'})")
    return 0


async def cmd_vm_start(ns: argparse.Namespace) -> int:
    t0 = time.monotonic()
    moc = await _moc_owns(ns, ns.vm)
    if moc is not None:
        await runner.call(moc, "vm_start", {"name": ns.vm}, timeout=40.0, what=ns.vm)
        print(f"{ns.vm}: started through MOC {time.monotonic() - t0:.2f}s")
        return 0
    reply = await _hostagent_call(ns, "start_vm", {"name": ns.vm}, timeout=40.0)
    print(f"{ns.vm}: running (pid {reply['pid']}) {time.monotonic() - t0:.2f}s")
    return 0


async def cmd_vm_exec(ns: argparse.Namespace) -> int:
    argv = list(ns.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError("vm exec: give the command after '--', e.g. hcinet vm exec vm-a -- ping -c 3 172.16.0.11")
    args: dict[str, Any] = {"argv": argv}
    data = "" if ns.no_stdin else _stdin_text()
    if data:
        args["input"] = data
    _, agent = await _agent(ns)
    endpoint = await runner.endpoint_of(agent, ns.vm)
    result = await runner.call(endpoint, "exec", args, timeout=ns.timeout, what=ns.vm)
    sys.stdout.write(result.get("stdout", ""))
    sys.stdout.flush()
    sys.stderr.write(result.get("stderr", ""))
    return int(result.get("rc", 1))


def _stdin_text() -> str:
    """Standard input for the tool (``echo hi | hcinet vm exec vm-a -- nc HOST PORT``); none
    from a terminal, as ``ssh`` and ``docker exec`` do without ``-t``/``-i``."""
    stdin = sys.stdin
    try:
        if stdin is None or stdin.isatty():
            return ""
        return stdin.buffer.read().decode("utf-8", "replace")
    except (OSError, ValueError, AttributeError):  # closed, or not a real file (pytest's)
        return ""


async def cmd_vm_claim(ns: argparse.Namespace) -> int:
    """Claim (and optionally keep re-announcing) addresses on a NIC: a gratuitous ARP."""
    nic: str | int = ns.nic if ns.nic is not None else 0
    _, agent = await _agent(ns)
    endpoint = await runner.endpoint_of(agent, ns.vm)
    if ns.announce_interval is None:
        reply = await runner.call(endpoint, "claim", {"nic": nic, "ips": ns.ips}, what=ns.vm)
        every = ""
    else:
        reply = await runner.call(endpoint, "announce", {"nic": nic, "ips": ns.ips,
                                                          "interval_s": ns.announce_interval / 1000.0}, what=ns.vm)
        every = f" (re-announced every {ns.announce_interval / 1000.0:g} s until 'hcinet vm release')"
    if ns.output in ("json", "yaml"):
        emit_doc(reply, ns.output)
        return 0
    print(f"{ns.vm}/{reply['nic']}: claimed {', '.join(reply['ips'])}{every}")
    return 0


async def cmd_vm_release(ns: argparse.Namespace) -> int:
    nic: str | int = ns.nic if ns.nic is not None else 0
    _, agent = await _agent(ns)
    endpoint = await runner.endpoint_of(agent, ns.vm)
    reply = await runner.call(endpoint, "release", {"nic": nic, "ips": ns.ips}, what=ns.vm)
    if ns.output in ("json", "yaml"):
        emit_doc(reply, ns.output)
        return 0
    print(f"{ns.vm}/{reply['nic']}: released {', '.join(reply['ips'])}")
    return 0


def announce_interval(text: str) -> float:
    """``1s``, ``500ms``: > 0 (a one-time claim: leave the option out)."""
    value = duration_ms(text)
    if value < 10:
        raise argparse.ArgumentTypeError(f"{text!r}: the interval must be at least 10ms")
    return value


# --- net --------------------------------------------------------------------------------------

_DROP_ORDER = ("no_route", "partition", "loss", "queue_full", "ttl", "mtu", "bad_frame", "conflict")


async def cmd_net_counters(ns: argparse.Namespace) -> int:
    stats = await _broker_call(ns, "stats")
    if ns.output in ("json", "yaml"):
        emit_doc(stats, ns.output)
        return 0
    print(counters_table(stats))
    return 0


def counters_table(stats: dict[str, Any]) -> str:
    nics = stats.get("nics", {})
    reasons = [r for r in _DROP_ORDER if any(c.get("drops", {}).get(r) for c in nics.values())]
    reasons += sorted({r for c in nics.values() for r, n in c.get("drops", {}).items() if n} - set(reasons))
    rows = []
    for name, c in nics.items():
        drops = c.get("drops", {})
        rows.append([name, c.get("network"), c.get("tx_packets", 0), c.get("tx_bytes", 0), c.get("rx_packets", 0),
                     c.get("rx_bytes", 0), *(drops.get(r, 0) for r in reasons)])
    text = table(["nic", "network", "tx-pkts", "tx-bytes", "rx-pkts", "rx-bytes",
                  *(f"drop-{r.replace('_', '-')}" for r in reasons)], rows)
    totals = stats.get("totals", {})
    if totals:
        text += (f"\n\nframes {totals.get('frames', 0)}, batches {totals.get('batches', 0)} "
                 f"(fast path {totals.get('fast_path', 0)}, slow path {totals.get('slow_path', 0)}), "
                 f"conflicts {totals.get('conflicts', 0)}")
    return text


def _scope(ns: argparse.Namespace) -> dict[str, Any]:
    if ns.nic:
        return {"scope": "nic", "target": ns.nic}
    if ns.pair:
        return {"scope": "pair", "target": list(ns.pair), "one_way": ns.one_way}
    return {"scope": "network", "target": ns.network}


_IMPAIR_FIELDS = (("delay", "delay_ms"), ("jitter", "jitter_ms"), ("correlation", "correlation"),
                  ("loss", "loss"), ("duplicate", "duplicate"), ("reorder", "reorder"),
                  ("rate", "rate_mbit"), ("queue", "queue_packets"))


async def cmd_net_impair(ns: argparse.Namespace) -> int:
    params = {key: getattr(ns, attr) for attr, key in _IMPAIR_FIELDS if getattr(ns, attr) is not None}
    if not params:
        raise CliError("net impair: give at least one of --delay --jitter --correlation --loss --duplicate "
                       "--reorder --rate --queue")
    result = await _broker_call(ns, "impair", {**_scope(ns), **params})
    if ns.output in ("json", "yaml"):
        emit_doc(result, ns.output)
        return 0
    shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    print(f"impaired {result.get('scope', '')} {_target_text(result.get('target'))}: {shown}")
    return 0


def _target_text(target: Any) -> str:
    return " <-> ".join(target) if isinstance(target, list | tuple) else str(target)


async def cmd_net_clear(ns: argparse.Namespace) -> int:
    args = {} if ns.all else _scope(ns)
    await _broker_call(ns, "clear", args)
    print("cleared every impairment" if ns.all else f"cleared {args['scope']} {_target_text(args['target'])}")
    return 0


async def cmd_net_partition(ns: argparse.Namespace) -> int:
    a = [n for group in ns.a for n in group]
    b = [n for group in ns.b for n in group]
    result = await _broker_call(ns, "partition", {"a": a, "b": b, "one_way": ns.one_way})
    if ns.output in ("json", "yaml"):
        emit_doc(result, ns.output)
    else:
        print(result["id"])
    return 0


async def cmd_net_heal(ns: argparse.Namespace) -> int:
    result = await _broker_call(ns, "heal", {} if ns.id is None else {"id": ns.id})
    healed = result.get("healed", [])
    print(f"healed {', '.join(map(str, healed))}" if healed else "no partition to heal")
    return 0


async def cmd_net_conflicts(ns: argparse.Namespace) -> int:
    events = await _broker_call(ns, "conflicts")
    if ns.output in ("json", "yaml"):
        emit_doc(events, ns.output)
        return 0
    if not events:
        print("no conflicts: every IP is claimed by one NIC")
        return 0
    print(table(["time", "network", "ip", "previous", "owner"],
                [[_clock(e.get("time")), e.get("network"), e.get("ip"), e.get("previous"), e.get("owner")]
                 for e in events]))
    return 0


async def cmd_net_routes(ns: argparse.Namespace) -> int:
    routes = await _broker_call(ns, "routes")
    if ns.output in ("json", "yaml"):
        emit_doc(routes, ns.output)
        return 0
    print(table(["prefix", "network", "sources"],
                [[r.get("prefix"), r.get("network"), ", ".join(r["sources"]) if r.get("sources") else "all"]
                 for r in routes]))
    return 0


def _clock(t: Any) -> str:
    if not isinstance(t, int | float):
        return "-"
    if t > 1e9:  # wall-clock seconds
        return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"
    return f"{t:.3f}"  # the broker's monotonic clock


# --- logs / events ----------------------------------------------------------------------------

async def cmd_logs(ns: argparse.Namespace) -> int:
    rd = rundir.for_deployment(ns.deployment)
    path = _log_path(rd, ns.name, ns.stdout)
    with open(path, "rb") as f:
        data = f.read()
        lines = data.splitlines(keepends=True)
        sys.stdout.buffer.write(b"".join(lines[-ns.tail:] if ns.tail else lines))
        sys.stdout.flush()
        if ns.follow:
            await _follow(f)
    return 0


def _log_path(rd: rundir.RunDir, name: str, stdout: bool) -> Path:
    candidates = [rd.logs / f"{name}.out"] if stdout else [rd.logs / f"{name}.log", rd.logs / f"{name}.out"]
    for path in candidates:
        if path.is_file():
            return path
    have = sorted({p.stem for p in rd.logs.glob("*")}) if rd.logs.is_dir() else []
    raise CliError(f"{name}: no log in {rd.logs} (have: {', '.join(have) or 'none'})")


async def _follow(f: Any) -> None:
    """``tail -f``: poll for growth (what tail does without inotify); Ctrl-C ends it."""
    while True:
        chunk = f.read()
        if chunk:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        else:
            await trio.sleep(0.25)


async def cmd_events(ns: argparse.Namespace) -> int:
    rd = rundir.for_deployment(ns.deployment)
    events = rd.read_events()[-ns.tail:] if ns.tail else rd.read_events()
    if ns.output in ("json", "yaml"):
        emit_doc(events, ns.output)
        return 0
    skip = {"seq", "time", "kind", "name"}
    print(table(["time", "event", "name", "detail"],
                [[_clock(e.get("time")), e.get("kind"), e.get("name"),
                  " ".join(f"{k}={v}" for k, v in e.items() if k not in skip and v is not None)] for e in events]))
    return 0


# --- demo -------------------------------------------------------------------------------------

async def cmd_demo(ns: argparse.Namespace) -> int:
    from scenarios import demo  # the narration lives apart: long, and only for this verb

    return await demo.run(ns)


# --- the parser -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) and help on bare group verbs."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--deployment", "-d", default=argparse.SUPPRESS, metavar="NAME",
                   help="which deployment (default: $HCINET_DEPLOYMENT or 'default'); each has its "
                        "own run directory under ${XDG_STATE_HOME:-~/.local/state}/hcinet/")
    return p


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   help="table (default), json or yaml: only the document on stdout "
                        "(a List with items for collections)")


def _verb(sub: Any, name: str, func: Command, help: str, description: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description, parents=[_common()],
                                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def _group(sub: Any, name: str, help: str, description: str) -> Any:
    p = sub.add_parser(name, help=help, description=description, parents=[_common()])
    p.set_defaults(func=None, group_parser=p)
    return p.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)


def _scope_args(p: argparse.ArgumentParser, with_all: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--nic", metavar="VM/NIC", help="a NIC (vm-a/eth0) or every NIC of a VM (vm-a)")
    g.add_argument("--pair", nargs=2, metavar=("A", "B"), help="the path between two VMs or NICs")
    g.add_argument("--network", metavar="NET", help="every NIC of a network")
    if with_all:
        g.add_argument("--all", action="store_true", help="every impairment everywhere")
    p.add_argument("--one-way", action="store_true", help="with --pair: only A -> B (default: both directions)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hcinet", description=__doc__.split("\n\n")[0] + "\n\n" + (
        "Start with 'hcinet demo', or 'hcinet up' then 'hcinet status'. Every command has --help."),
        parents=[_common()], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(deployment=None, func=None, group_parser=parser)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    p = _verb(sub, "up", cmd_up, "bring a scenario up (host agent, broker, networks, MOC, clusters, VMs)",
              "Start the deployment's host agent (detached from this terminal), the broker, the scenario's\n"
              "networks and routes, its plain VMs; then the MOC cloud agent VM, which creates the\n"
              "network objects, every cluster (control plane, HAProxy VM, node VMs) and the client\n"
              "VMs. A progress line per VM; returns when every node is Ready. All or nothing: on any\n"
              "failure everything started is stopped again. Refuses if the deployment is already\n"
              "running.")
    p.add_argument("file", nargs="?", help="scenario YAML (default: the packaged default.yaml)")
    p.add_argument("--seed", type=int, help="seed of the broker's random impairments (reproducible runs)")

    _verb(sub, "down", cmd_down, "stop a deployment (VMs, broker, host agent)",
          "Ask the host agent to stop every VM, then the broker, then itself; then make sure no\n"
          "process of the deployment is left (stragglers get SIGKILL).")

    p = _verb(sub, "status", cmd_status, "show hosts, VMs, IPs, pools, cluster health and warnings",
              "The deployment at a glance: the host and its processes, every VM (kind, cluster, state,\n"
              "IPs), the networks and their pools (used/free, from MOC), each cluster's API server and\n"
              "nodes Ready, the IP conflicts the broker recorded, and warnings.")
    _output(p)

    vm = _group(sub, "vm", "list, start, stop, kill VMs; run tools inside them", "VM commands.")
    p = _verb(vm, "list", cmd_vm_list, "list the VMs: kind, cluster, state, IPs",
              "Every VM: its kind (moc, apiserver, haproxy, node, plain...), cluster, state (running,\n"
              "stopped, crashed; 'absent' when MOC lists a VM that has no process), IPs, pid.")
    _output(p)
    for name, func, text in (
        ("kill", cmd_vm_kill, "SIGKILL a VM: a crash (MOC's HA restarts its VMs after the scaled delay)"),
        ("stop", cmd_vm_stop, "power a VM off (through MOC for its VMs: it stays down, no HA restart)"),
        ("start", cmd_vm_start, "start a stopped VM again (through MOC for its VMs)"),
    ):
        p = _verb(vm, name, func, text, text[0].upper() + text[1:] + ".")
        p.add_argument("vm", help="the VM's name")
        if name == "stop":
            p.add_argument("--timeout", type=float, default=5.0, help="seconds before SIGKILL (default 5)")
    p = _verb(vm, "exec", cmd_vm_exec, "run a tool inside a VM (ping, nc, curl, nslookup, transfer, udp-send)",
              "Run a tool inside the VM's network stack and print its output; the exit code is the\n"
              "tool's. Options of hcinet go before the VM name; everything after it is the tool's.\n"
              "Example:\n\n  hcinet vm exec --timeout 60 vm-a -- ping -c 3 172.16.0.11")
    p.add_argument("vm", help="the VM's name")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the tool (default 300)")
    p.add_argument("-n", "--no-stdin", action="store_true",
                   help="do not pass standard input to the tool (by default it is passed unless it is a terminal)")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    p = _verb(vm, "claim", cmd_vm_claim, "claim IPs on a VM's NIC (a gratuitous ARP), optionally re-announced",
              "Claim addresses on a NIC of a VM, as a gratuitous ARP does: the broker delivers them to\n"
              "this NIC from now on, and if another NIC held one it records a conflict ('hcinet net\n"
              "conflicts'); the latest claim wins. With --announce-interval the claim is repeated at\n"
              "that interval, as keepalived does, until 'hcinet vm release'. Example:\n\n"
              "  hcinet vm claim client-dc --nic eth0 172.16.0.150 --announce-interval 1s")
    p.add_argument("vm", help="the VM's name")
    p.add_argument("ips", nargs="+", metavar="IP", help="the addresses to claim")
    p.add_argument("--nic", help="the NIC's name (default: the VM's first NIC)")
    p.add_argument("--announce-interval", type=announce_interval, metavar="TIME",
                   help="re-announce every TIME (e.g. 1s, 500ms); default: claim once")
    _output(p)
    p = _verb(vm, "release", cmd_vm_release, "release IPs a VM's NIC claimed (stops re-announcing them)",
              "Release addresses of a NIC of a VM: the broker stops delivering them to it, and a\n"
              "re-announcement of them stops.")
    p.add_argument("vm", help="the VM's name")
    p.add_argument("ips", nargs="+", metavar="IP", help="the addresses to release")
    p.add_argument("--nic", help="the NIC's name (default: the VM's first NIC)")
    _output(p)

    net = _group(sub, "net", "the emulated network: counters, impairments, partitions, routes",
                 "Network commands: they talk to the broker, the datacenter network.")
    p = _verb(net, "counters", cmd_net_counters, "per-NIC packet/byte counters and drops by reason",
              "Per NIC: packets and bytes sent and received, drops by reason (no_route, partition, loss,\n"
              "queue_full, ttl, mtu, bad_frame, conflict); broker totals (fast and slow path).")
    _output(p)
    p = _verb(net, "impair", cmd_net_impair, "set delay, jitter, loss, duplication, reordering, rate",
              "Impair a NIC, a pair of VMs/NICs or a whole network, like tc-netem(8). Values take\n"
              "units: --delay 50ms --jitter 5ms --loss 20% --rate 10mbit. Replaces the earlier\n"
              "impairment of that target. Example:\n\n  hcinet net impair --pair vm-a vm-b --delay 50ms --jitter 5ms")
    _scope_args(p)
    p.add_argument("--delay", type=duration_ms, metavar="TIME", help="added one-way delay (e.g. 50ms)")
    p.add_argument("--jitter", type=duration_ms, metavar="TIME", help="delay variation (e.g. 5ms)")
    p.add_argument("--correlation", type=fraction, metavar="C", help="jitter correlation, 0..1 (e.g. 0.25)")
    p.add_argument("--loss", type=percent, metavar="PCT", help="packet loss (e.g. 20%%)")
    p.add_argument("--duplicate", type=percent, metavar="PCT", help="packet duplication (e.g. 1%%)")
    p.add_argument("--reorder", type=percent, metavar="PCT", help="packets sent early, out of order (e.g. 5%%)")
    p.add_argument("--rate", type=rate_mbit, metavar="RATE", help="bandwidth limit (e.g. 10mbit)")
    p.add_argument("--queue", type=positive_int, metavar="PKTS", help="queue length in packets (tail drop)")
    _output(p)
    p = _verb(net, "clear", cmd_net_clear, "remove impairments",
              "Remove the impairment of one target (same options as impair), or --all.")
    _scope_args(p, with_all=True)
    p = _verb(net, "partition", cmd_net_partition, "cut the network between two sets; prints its id",
              "Drop every packet between the VMs/NICs of --a and those of --b (both directions unless\n"
              "--one-way: then only a -> b). Prints the partition's id for 'hcinet net heal ID'.")
    p.add_argument("--a", type=names, action="append", required=True, metavar="NAMES",
                   help="VM or NIC names, comma-separated (repeatable)")
    p.add_argument("--b", type=names, action="append", required=True, metavar="NAMES",
                   help="VM or NIC names, comma-separated (repeatable)")
    p.add_argument("--one-way", action="store_true", help="only block a -> b")
    _output(p)
    p = _verb(net, "heal", cmd_net_heal, "remove a partition (or all of them)",
              "Heal the partition ID, or every partition when no ID is given.")
    p.add_argument("id", nargs="?", type=int, help="the id 'net partition' printed")
    p = _verb(net, "conflicts", cmd_net_conflicts, "duplicate IP claims the broker saw",
              "Every conflict event: two NICs claimed one IP on one network; the latest claim won\n"
              "(as a gratuitous ARP updates the neighbours' caches).")
    _output(p)
    p = _verb(net, "routes", cmd_net_routes, "the gateway router's routes",
              "The routes of the datacenter router: prefix, the network it is reached on, and which\n"
              "source networks may use it.")
    _output(p)

    p = _verb(sub, "logs", cmd_logs, "print a process's log (-f to follow)",
              "Print the log of a VM, 'broker' or 'hostagent' from the run directory.")
    p.add_argument("name", help="a VM name, broker or hostagent")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended (Ctrl-C ends)")
    p.add_argument("--tail", type=int, default=0, metavar="N", help="only the last N lines")
    p.add_argument("--stdout", action="store_true", help="the process's raw stdout/stderr instead of its log")

    p = _verb(sub, "events", cmd_events, "what happened to the processes (started, exited, failed)",
              "The host agent's event log (events.jsonl): processes started, exited (with code or\n"
              "signal), failed to start.")
    p.add_argument("--tail", type=int, default=0, metavar="N", help="only the last N events")
    _output(p)

    p = _verb(sub, "demo", cmd_demo, "boot the AKS-HCI demo and show it (--fabric: the fabric tour)",
              "Boot scenarios/default.yaml (unless the deployment already runs it), then show 'hcinet\n"
              "status', 'hcinet get nodes -o wide' and a curl from client-ext to client-dc, and leave it\n"
              "running ('hcinet down' stops it).\n\n"
              "With --fabric: the step-1 tour of fabric-demo.yaml: pings on one network and across the\n"
              "gateway, a 10 MB transfer, 50 ms delay switched on and off, 20% loss, a partition and\n"
              "its healing, and the counters; taken down afterwards unless --keep.")
    p.add_argument("file", nargs="?", help="scenario YAML (default: default.yaml; fabric-demo.yaml with --fabric)")
    p.add_argument("--fabric", action="store_true", help="the step-1 fabric tour instead")
    p.add_argument("--keep", action="store_true", help="with --fabric: leave the deployment running afterwards")

    from scenarios import aks  # the AKS verbs: get, network, cluster, nodepool

    aks.add_parsers(sub)
    from scenarios import run as scenario_run  # hcinet run FILE (step 4)

    scenario_run.add_parser(sub)
    from scenarios import policy  # policy matrix, probe, calicoctl (step 5)

    policy.add_parsers(sub)
    return parser


async def _run(ns: argparse.Namespace) -> int:
    func: Command = ns.func
    return await func(ns)


_ERRORS = (CliError, RunnerError, rundir.RunDirError, schema.ScenarioError, mgmt.RemoteError, TimeoutError, OSError)


def main(argv: list[str] | None = None) -> int:
    try:
        rc = _main(argv)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
    except BrokenPipeError:
        return _broken_pipe()
    except BaseExceptionGroup as group:  # from a nursery: quiet only if it is all broken pipes
        if group.split(BrokenPipeError)[1] is not None:
            raise
        return _broken_pipe()
    return rc


def _broken_pipe() -> int:
    """``hcinet status | head``: the reader left.  Exit quietly with the status of a process
    killed by SIGPIPE (128 + 13), as ``cat`` does; what is still buffered goes nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (tests): nothing to silence
        pass
    return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.func is None:  # `hcinet` or `hcinet net` alone: show what there is
        ns.group_parser.print_help()
        return 2
    try:
        rc = trio.run(_run, ns)
    except BrokenPipeError:
        raise
    except _ERRORS as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"hcinet: error: {text}\n")
        rc = 1
    except KeyboardInterrupt:
        sys.stderr.write("hcinet: interrupted\n")
        rc = 130
    return rc


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    # ``python -m scenarios.cli``: run the one importable module, so the verbs' modules (which
    # import scenarios.cli) and this entry share one CliError class
    from scenarios.cli import entry as _entry

    _entry()

"""``hcinet run FILE``: boot a scenario, apply its manifests, run its steps, report, tear down.

The verb of step 4's experiments (docs/scenario.md, "Manifests and steps"):

1. ``runner.up`` boots the scenario (progress on stderr, so ``-o json`` prints one object);
2. each cluster's ``manifests`` are applied as ``hcinet apply`` does (``manifests.apply`` over
   ``aks.cluster_api``), then it waits until every Deployment is available and every
   ``LoadBalancer`` Service has an ingress IP (``READY_TIMEOUT``);
3. the ``steps`` run in order: ``load`` runs the ``load --json`` tool on the named VM through
   its management verb ``exec`` (``background: true`` lets the next steps run meanwhile; the
   run waits for every load at the end), ``wait`` sleeps, ``stop`` / ``start`` power a VM off
   and on (through MOC for its VMs, as ``hcinet vm stop|start``); a URL's
   ``${VIP:[cluster/]namespace/service}`` is the Service's ``status.loadBalancer.ingress`` IP;
4. the broker's conflict events (``conflicts``: two NICs claimed one IP) whose time lies in
   the steps' window are collected;
5. the report: a table, or with ``-o json`` one object ``{scenario, loads: [{name, from, url,
   requests, failures, failures_by_kind, failure_rate, success_rate, latency_ms, per_second,
   rps_target, rps_achieved, ...}], conflict_events: [{t_s, time, network, ip, previous,
   owner}], duration_s}``; then ``runner.down`` unless ``--keep``.

Exit status 0 when the run completed (failures of a load are its measurement), 1 with one
error line when it could not (a manifest refused, a Deployment never available, a VM that
is not running).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from scenarios import aks, cli, manifests, runner, schema
from scenarios.runner import RunnerError

READY_TIMEOUT = 180.0  # seconds for Deployments to be available and LoadBalancer VIPs assigned
POLL = 0.25
EXEC_SLACK = 30.0  # seconds beyond a load's duration + timeout before its exec is given up

Api = Callable[[str, str, Mapping[str, str] | None, Any], Awaitable[tuple[int, Any]]]


class RunError(cli.CliError):
    """A run that could not complete: one line."""


def _ns(deployment: str | None, cluster: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(deployment=deployment, cluster=cluster)


async def apply_manifests(scenario: schema.Scenario, deployment: str | None, out: Any) -> dict[str, Api]:
    """Apply every cluster's manifests in order; the clusters' API callables."""
    apis: dict[str, Api] = {}
    for mset in scenario.manifests:
        if mset.cluster not in apis:
            apis[mset.cluster] = await aks.cluster_api(_ns(deployment, mset.cluster))
        resolved: list[manifests.Manifest] = []
        for obj in mset.documents:
            for item in manifests.expand_list(obj):
                m = manifests.resolve(manifests.Document(mset.source, item), None)
                if isinstance(m, str):
                    raise RunError(f"{mset.source}: {m.removeprefix('error: ')}")
                resolved.append(m)
        report = await manifests.apply(apis[mset.cluster], resolved)
        for line in report.out:
            runner.say(out, f"{mset.cluster}: {line}")
        if report.failed:
            raise RunError(f"{mset.cluster}: {report.err[0].removeprefix('error: ')}")
    return apis


def _available(dep: dict[str, Any]) -> bool:
    want = (dep.get("spec") or {}).get("replicas", 1)
    status = dep.get("status") or {}
    return int(status.get("availableReplicas") or 0) >= int(want if want is not None else 1)


def lb_ip(svc: dict[str, Any]) -> str | None:
    for ing in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        if isinstance(ing, dict) and ing.get("ip"):
            return str(ing["ip"])
    return None


def _items(doc: Any) -> list[dict[str, Any]]:
    return [i for i in (doc or {}).get("items") or [] if isinstance(i, dict)] if isinstance(doc, dict) else []


async def pending(api: Api) -> list[str]:
    """What is not ready yet: Deployments not available, LoadBalancer Services without an IP."""
    waiting: list[str] = []
    status, deps = await api("GET", "/apis/apps/v1/deployments", None, None)
    if status >= 400:
        raise RunError(f"listing deployments: HTTP {status}")
    for d in _items(deps):
        if not _available(d):
            meta = d.get("metadata") or {}
            waiting.append(f"deployment {meta.get('namespace')}/{meta.get('name')} not available")
    status, svcs = await api("GET", "/api/v1/services", None, None)
    if status >= 400:
        raise RunError(f"listing services: HTTP {status}")
    for s in _items(svcs):
        if (s.get("spec") or {}).get("type") == "LoadBalancer" and lb_ip(s) is None:
            meta = s.get("metadata") or {}
            waiting.append(f"service {meta.get('namespace')}/{meta.get('name')} has no EXTERNAL-IP")
    return waiting


async def wait_ready(apis: dict[str, Api], timeout: float = READY_TIMEOUT) -> None:
    deadline = trio.current_time() + timeout
    while True:
        waiting = [f"{c}: {w}" for c, api in apis.items() for w in await pending(api)]
        if not waiting:
            return
        if trio.current_time() >= deadline:
            more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
            raise RunError(f"not ready after {timeout:g}s: {waiting[0]}{more}")
        await trio.sleep(POLL)


async def resolve_url(url: str, scenario: schema.Scenario, deployment: str | None, apis: dict[str, Api],
                      timeout: float = READY_TIMEOUT) -> str:
    """Substitute ``${VIP:[cluster/]namespace/service}`` with the Service's ingress IP."""
    ips: list[str] = []
    for cluster, namespace, name in schema.vip_refs(url):
        cluster = cluster or scenario.clusters[0].name
        if cluster not in apis:
            apis[cluster] = await aks.cluster_api(_ns(deployment, cluster))
        ips.append(await service_vip(apis[cluster], cluster, namespace, name, timeout))
    found = iter(ips)
    return schema.VIP_REF.sub(lambda _m: next(found), url)


async def service_vip(api: Api, cluster: str, namespace: str, name: str, timeout: float) -> str:
    """The Service's ingress IP, waiting for it until ``timeout``."""
    deadline = trio.current_time() + timeout
    while True:
        status, svc = await api("GET", f"/api/v1/namespaces/{namespace}/services/{name}", None, None)
        ip = lb_ip(svc) if status == 200 and isinstance(svc, dict) else None
        if ip is not None:
            return ip
        if trio.current_time() >= deadline:
            why = "no such service" if status == 404 else "no ingress IP"
            raise RunError(f"${{VIP:{cluster}/{namespace}/{name}}}: {why} after {timeout:g}s")
        await trio.sleep(POLL)


async def run_load(agent: Any, step: schema.Step, url: str) -> dict[str, Any]:
    endpoint = await runner.endpoint_of(agent, step.vm)
    argv = step.load_argv(url)
    result = await runner.call(endpoint, "exec", {"argv": argv}, timeout=step.duration + step.timeout + EXEC_SLACK,
                               what=step.vm)
    if int(result.get("rc", 1)) != 0:
        err = (result.get("stderr") or "").strip().splitlines()
        raise RunError(f"load {step.name} on {step.vm}: {err[-1] if err else 'rc ' + str(result.get('rc'))}")
    try:
        res = json.loads(result.get("stdout") or "")
    except ValueError:
        raise RunError(f"load {step.name} on {step.vm}: no JSON report") from None
    return {"name": step.name, "from": step.vm, **res}


async def _moc_endpoint_for(agent: Any, name: str) -> str | None:
    rows = await runner.list_processes(agent)
    moc = next((r for r in rows if r["name"] == schema.MOC_VM and r["state"] == "running" and r.get("mgmt")), None)
    if moc is None or name == schema.MOC_VM:
        return None
    inventory = await runner.call(str(moc["mgmt"]), "vm_list", {}, timeout=10.0, what="MOC vm_list")
    items = inventory.get("items", inventory) if isinstance(inventory, dict) else inventory
    return str(moc["mgmt"]) if any(isinstance(v, dict) and v.get("name") == name for v in items or []) else None


async def power(agent: Any, step: schema.Step) -> None:
    """``stop``/``start``: through MOC for its VMs (it records the state), else the host agent."""
    moc = await _moc_endpoint_for(agent, step.vm)
    if moc is not None:
        await runner.call(moc, f"vm_{step.kind}", {"name": step.vm}, timeout=40.0, what=step.vm)
    elif step.kind == "stop":
        await runner.call(agent.mgmt, "stop_vm", {"name": step.vm, "timeout": 5.0}, timeout=20.0, what=step.vm)
    else:
        await runner.call(agent.mgmt, "start_vm", {"name": step.vm}, timeout=40.0, what=step.vm)


async def run_steps(scenario: schema.Scenario, deployment: str | None, agent: Any, apis: dict[str, Api],
                    out: Any) -> list[dict[str, Any]]:
    """Run the steps in order; the loads' reports in step order."""
    results: dict[int, dict[str, Any]] = {}
    t0 = trio.current_time()

    async def one_load(i: int, step: schema.Step, url: str) -> None:
        results[i] = await run_load(agent, step, url)
        r = results[i]
        runner.say(out, f"load {step.name}: {r['requests']} requests, {r['failures']} failures")

    try:
        async with trio.open_nursery() as nursery:
            await _steps(scenario, deployment, agent, apis, out, nursery, one_load, t0)
    except BaseExceptionGroup as group:  # a background load failed: its one-line error
        leaf = _first_error(group)
        if leaf is None:
            raise
        raise leaf from None
    return [results[i] for i in sorted(results)]


def _first_error(group: BaseExceptionGroup[Any]) -> Exception | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_error(exc)
            if found is not None:
                return found
        elif isinstance(exc, cli.CliError | RunnerError | TimeoutError):
            return exc
    return None


async def _steps(scenario: schema.Scenario, deployment: str | None, agent: Any, apis: dict[str, Api], out: Any,
                 nursery: trio.Nursery, one_load: Callable[[int, schema.Step, str], Awaitable[None]],
                 t0: float) -> None:
    for i, step in enumerate(scenario.steps):
        at = f"[{trio.current_time() - t0:6.2f}s]"
        if step.kind == "load":
            url = await resolve_url(step.url, scenario, deployment, apis)
            runner.say(out, f"{at} load {step.name} from {step.vm}: {url} at {step.rps:g}/s for "
                            f"{step.duration:g}s{' (background)' if step.background else ''}")
            if step.background:
                nursery.start_soon(one_load, i, step, url)
            else:
                await one_load(i, step, url)
        elif step.kind == "wait":
            runner.say(out, f"{at} wait {step.seconds:g}s")
            await trio.sleep(step.seconds)
        else:
            runner.say(out, f"{at} {step.kind} {step.vm}")
            await power(agent, step)


async def conflicts_between(agent: Any, start: float, end: float) -> list[dict[str, Any]]:
    """The broker's conflict events with ``start <= time <= end`` (``time.monotonic``, one
    clock for every process of the host), each with ``t_s`` from ``start``."""
    broker = await runner.broker_endpoint(agent)
    events = await runner.call(broker, "conflicts", {}, what="broker conflicts")
    out = []
    for e in events or []:
        if isinstance(e, dict) and start <= float(e.get("time", -1)) <= end:
            out.append({"t_s": round(float(e["time"]) - start, 3), **e})
    return out


async def run(scenario: schema.Scenario, *, deployment: str | None = None, source: str = "", keep: bool = False,
              out: Any = None) -> dict[str, Any]:
    """The whole run; the report document."""
    t_start = time.monotonic()
    dep = await runner.up(scenario, deployment, source=source, out=out)
    deployment = dep.run_dir.deployment
    try:
        apis = await apply_manifests(scenario, deployment, out)
        if apis:
            await wait_ready(apis)
            runner.say(out, "manifests applied: deployments available, load balancers assigned")
        t0 = time.monotonic()
        loads = await run_steps(scenario, deployment, dep.hostagent, apis, out)
        t1 = time.monotonic()
        events = await conflicts_between(dep.hostagent, t0, t1)
    finally:
        if not keep:
            with trio.CancelScope(shield=True):
                await runner.down(deployment, out=out)
    return {"scenario": scenario.name, "loads": loads, "conflict_events": events,
            "steps_s": round(t1 - t0, 3), "duration_s": round(time.monotonic() - t_start, 3)}


def report_text(doc: dict[str, Any]) -> str:
    def ms(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    rows = []
    for r in doc["loads"]:
        lat = r.get("latency_ms") or {}
        kinds = ",".join(f"{k}={n}" for k, n in (r.get("failures_by_kind") or {}).items()) or "-"
        rows.append([r["name"], r["from"], r["url"], r["requests"], r["failures"], f"{r['failure_rate'] * 100:.2f}%",
                     ms(lat.get("p50")), ms(lat.get("p99")), kinds])
    lines = [f"scenario {doc['scenario']}: {len(doc['loads'])} loads, {len(doc['conflict_events'])} conflict "
             f"events, {doc['duration_s']:.1f}s",
             cli.table(["load", "from", "url", "requests", "failures", "failure rate", "p50 ms", "p99 ms",
                        "failures by kind"], rows)]
    if doc["conflict_events"]:
        lines.append(cli.table(["t (s)", "network", "ip", "previous", "owner"],
                               [[f"{e['t_s']:.3f}", e.get("network"), e.get("ip"), e.get("previous"), e.get("owner")]
                                for e in doc["conflict_events"]]))
    return "\n".join(lines) + "\n"


async def cmd_run(ns: argparse.Namespace) -> int:
    path = Path(ns.file)
    scenario = cli._load(path)
    if not scenario.steps and not scenario.manifests:
        raise RunError(f"{path}: nothing to run (no manifests, no steps)")
    for text in scenario.warnings:
        cli.warn(text)
    doc = await run(scenario, deployment=ns.deployment, source=str(path), keep=ns.keep, out=sys.stderr)
    if ns.output == "json":
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(report_text(doc))
    return 0


def add_parser(sub: Any) -> None:
    p = cli._verb(sub, "run", cmd_run, "boot a scenario, apply its manifests, run its load steps, report",
                  "Boot the scenario (as 'hcinet up'), apply its manifests (as 'hcinet apply') and wait\n"
                  "until its Deployments are available and its LoadBalancer Services have an EXTERNAL-IP,\n"
                  "run its steps (load, wait, stop, start), collect the broker's conflict events, print a\n"
                  "report (-o json: one JSON object) and tear the deployment down (unless --keep).")
    p.add_argument("file", help="scenario YAML with manifests and steps")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="report format")
    p.add_argument("--keep", action="store_true", help="leave the deployment running afterwards")

"""``hcinet lb show CLUSTER`` and ``hcinet moc get loadbalancers|networkinterfaces``.

``lb show`` reads the cluster's load-balancer VM (``<cluster>-lb``, found through MOC's
``loadbalancers`` verb) over its management verbs ``lb_config`` (the rendered haproxy.cfg) and
``lb_stats`` (HAProxy's stats CSV).  ``moc get`` prints MOC's ``loadbalancers`` /
``networkinterfaces`` rows, like ``Get-MocLoadBalancer`` / ``Get-MocNetworkInterface``; for load
balancers it warns on stderr about a VIP held by two clusters (the shared-network known issue).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agents.moc.agent import duplicate_vip_warnings
from scenarios import aks, cli, runner

STATS_COLUMNS = ("pxname", "svname", "status", "scur", "stot", "chkfail", "check_status")
MOC_KINDS = {"loadbalancers": "loadbalancers", "loadbalancer": "loadbalancers", "lb": "loadbalancers",
             "networkinterfaces": "networkinterfaces", "networkinterface": "networkinterfaces",
             "nic": "networkinterfaces", "nics": "networkinterfaces"}


def warn(text: str) -> None:
    sys.stderr.write(f"warning: {text}\n")
    sys.stderr.flush()


async def vm_call(ns: argparse.Namespace, vm: str, verb: str) -> Any:
    """One management call on a VM of the running deployment."""
    _, agent = await runner.require_running(ns.deployment)
    return await runner.call(await runner.endpoint_of(agent, vm), verb, {}, timeout=10.0, what=vm)


async def lb_rows(ns: argparse.Namespace) -> list[dict[str, Any]]:
    return aks.items_of(await aks.moc_call(ns, "loadbalancers", timeout=10.0))


def lb_vm_of(rows: list[dict[str, Any]], cluster: str) -> str:
    """The cluster's LB VM, or a one-line error (unknown cluster, ``loadBalancerSku: none``)."""
    row = next((r for r in rows if r.get("cluster") == cluster), None)
    if row is None:
        names = sorted({str(r.get("cluster")) for r in rows if r.get("cluster")})
        raise cli.CliError(f"no cluster named {cluster} (clusters: {', '.join(names) or 'none'})")
    if not row.get("lbVm"):
        raise cli.CliError(f"cluster {cluster} has loadBalancerSku: {row.get('sku') or 'none'}: no load balancer VM "
                           "(kube-vip on the control plane serves its API server VIP)")
    return str(row["lbVm"])


def stats_table(rows: list[dict[str, Any]]) -> str:
    return cli.table(STATS_COLUMNS, [[r.get(c) for c in STATS_COLUMNS] for r in rows])


async def cmd_lb_show(ns: argparse.Namespace) -> int:
    vm = lb_vm_of(await lb_rows(ns), ns.cluster)
    config = aks.plain(await vm_call(ns, vm, "lb_config"))
    stats = aks.plain(await vm_call(ns, vm, "lb_stats"))
    cfg = str(config.get("cfg", "")) if isinstance(config, dict) else ""
    rows = [r for r in stats.get("rows") or [] if isinstance(r, dict)] if isinstance(stats, dict) else []
    if ns.output in ("json", "yaml"):
        aks.emit({"cfg": cfg, "rows": rows}, ns.output)
        return 0
    print(f"# haproxy.cfg of {vm} (cluster {ns.cluster})")
    print(cfg.rstrip("\n"))
    print(f"\n# stats of {vm}")
    if ns.csv:
        sys.stdout.write(str(stats.get("csv", "")) if isinstance(stats, dict) else "")
    else:
        print(stats_table(rows))
    return 0


def _lb_vips(row: dict[str, Any]) -> list[str]:
    vips = [str(row["vip"])] if row.get("vip") else []
    for s in row.get("services") or []:
        if isinstance(s, dict) and s.get("vip") and str(s["vip"]) not in vips:
            vips.append(str(s["vip"]))
    return vips


def _lb_ports(row: dict[str, Any]) -> list[int]:
    ports = set()
    for fe in row.get("frontends") or []:
        bind = str(fe.get("bind", "")) if isinstance(fe, dict) else ""
        if bind.rpartition(":")[2].isdigit():
            ports.add(int(bind.rpartition(":")[2]))
    for s in row.get("services") or []:
        if isinstance(s, dict):
            ports.update(int(p) for p in s.get("ports") or [])
    return sorted(ports)


def _services(row: dict[str, Any]) -> str:
    return ",".join(f"{s.get('service')}{' (internal)' if s.get('internal') else ''}"
                    for s in row.get("services") or [] if isinstance(s, dict))


def lb_table(rows: list[dict[str, Any]]) -> str:
    return cli.table(["name", "cluster", "network", "sku", "lb-vm", "vips", "ports", "services", "programmed"],
                     [[r.get("name"), r.get("cluster"), r.get("network"), r.get("sku"), r.get("lbVm"),
                       ",".join(_lb_vips(r)), ",".join(str(p) for p in _lb_ports(r)), _services(r),
                       "yes" if r.get("programmed") else "no"] for r in rows])


def nic_table(rows: list[dict[str, Any]]) -> str:
    return cli.table(["name", "ip", "mac", "network", "vm", "dhcp"],
                     [[r.get("name"), r.get("ip"), r.get("mac"), r.get("network"), r.get("vm"),
                       "yes" if r.get("dhcp") else "no"] for r in rows])


async def cmd_moc_get(ns: argparse.Namespace) -> int:
    verb = MOC_KINDS.get(ns.kind.lower())
    if verb is None:
        raise cli.CliError(f"moc get: unknown kind {ns.kind!r} (loadbalancers or networkinterfaces)")
    rows = aks.items_of(await aks.moc_call(ns, verb, timeout=10.0))
    if verb == "loadbalancers":
        for text in duplicate_vip_warnings(rows):
            warn(text)
    if ns.output in ("json", "yaml"):
        aks.emit(aks.k8s_list(rows), ns.output)
        return 0
    print(lb_table(rows) if verb == "loadbalancers" else nic_table(rows))
    return 0


def add_parsers(sub: Any) -> None:
    """``lb show`` and ``moc get``, added to ``hcinet``'s sub-parsers."""
    lb = cli._group(sub, "lb", "a cluster's HAProxy load-balancer VM", "Load-balancer VM commands.")
    p = cli._verb(lb, "show", cmd_lb_show, "the haproxy.cfg a cluster's LB VM runs and its stats",
                  "Print the haproxy.cfg the cluster's load-balancer VM (<cluster>-lb) runs, as MOC\n"
                  "programmed it, and HAProxy's stats: a table of pxname, svname, status, scur, stot,\n"
                  "chkfail, check_status (default), the raw stats CSV with HAProxy's '# pxname,...' header\n"
                  "(--csv), or -o json|yaml: {cfg, rows}. Examples:\n\n"
                  "  hcinet lb show cluster1\n  hcinet lb show cluster1 --csv\n  hcinet lb show cluster1 -o json")
    p.add_argument("cluster", help="the workload cluster")
    p.add_argument("--csv", action="store_true", help="print the stats as HAProxy's CSV")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   help="table (default), json or yaml ({cfg, rows} alone on stdout)")

    moc = cli._group(sub, "moc", "MOC's objects (Get-MocLoadBalancer, Get-MocNetworkInterface)", "MOC commands.")
    p = cli._verb(moc, "get", cmd_moc_get, "list MOC's load balancers or network interfaces",
                  "loadbalancers (lb): like Get-MocLoadBalancer: per cluster its VIPs, ports, LB VM and the\n"
                  "Services it fronts; warns on stderr when two clusters hold one VIP (the known issue of\n"
                  "clusters sharing a network with Services on different ports).\n"
                  "networkinterfaces (nic): like Get-MocNetworkInterface: name, IP, MAC, network, VM.\n"
                  "Examples:\n\n  hcinet moc get loadbalancers\n  hcinet moc get networkinterfaces -o json")
    p.add_argument("kind", help="loadbalancers (lb) or networkinterfaces (nic)")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   help="table (default), json or yaml (a List with items alone on stdout)")

"""hcinet verbs of the AKS-HCI deployment: ``get``, ``network``, ``cluster``, ``nodepool``.

They talk to the MOC cloud agent (networks, clusters, node pools: every VM creation goes
through it) and to each cluster's API server, over the management plane (its ``api`` verb:
Kubernetes REST paths).  Output imitates kubectl: aligned tables; ``-o json|yaml`` prints one
document on stdout (a ``List`` with ``items`` for collections) and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from agents.moc import pools
from scenarios import cli, runner, schema
from scenarios.runner import RunnerError

MOC_TIMEOUT = 60.0


# --- output ---------------------------------------------------------------------------------------

def k8s_list(items: Iterable[Any]) -> dict[str, Any]:
    """A kubectl-style collection document."""
    return {"apiVersion": "v1", "kind": "List", "items": list(items), "metadata": {"resourceVersion": ""}}


def emit(doc: Any, output: str) -> None:
    """The document alone on stdout, as JSON or YAML."""
    doc = plain(doc)
    if output == "yaml":
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    else:
        sys.stdout.write(json.dumps(doc, indent=4) + "\n")
    sys.stdout.flush()


def warn(text: str) -> None:
    sys.stderr.write(f"Warning: {text}\n")
    sys.stderr.flush()


def human_age(seconds: float) -> str:
    """kubectl's AGE column (k8s.io/apimachinery ``duration.HumanDuration``)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    y = h // (24 * 365)
    if y < 8:
        return f"{y}y{(h // 24) % 365}d"
    return f"{y}y"


def age_of(obj: dict[str, Any], now: datetime | None = None) -> str:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not isinstance(stamp, str):
        return "<unknown>"
    try:
        created = datetime.fromisoformat(stamp)
    except ValueError:
        return "<unknown>"
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return human_age(((now or datetime.now(UTC)) - created).total_seconds())


# --- deployment access --------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """Management replies decode arrays as tuples (msgpack ``use_list=False``): back to lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def items_of(value: Any) -> list[dict[str, Any]]:
    """Rows from a reply: a list, ``{"items": [...]}``, or ``{name: {...}}``."""
    value = plain(value)
    if isinstance(value, dict) and isinstance(value.get("items"), list):
        value = value["items"]
    if isinstance(value, dict):
        return [{"name": k, **v} if isinstance(v, dict) else {"name": k, "value": v} for k, v in value.items()]
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


async def moc_endpoint(ns: argparse.Namespace) -> str:
    rd, agent = await runner.require_running(ns.deployment)
    rows = await runner.list_processes(agent)
    if not any(r["name"] == schema.MOC_VM for r in rows):
        scenario = ((rd.read_state() or {}).get("scenario") or {}).get("name", "?")
        raise cli.CliError(f"deployment {rd.deployment} runs no MOC cloud agent (scenario {scenario} has no "
                           "management section, clusters or clients)")
    return await runner.endpoint_of(agent, schema.MOC_VM)


async def moc_call(ns: argparse.Namespace, verb: str, args: dict[str, Any] | None = None,
                   timeout: float = MOC_TIMEOUT) -> Any:
    return await runner.call(await moc_endpoint(ns), verb, args or {}, timeout=timeout)


async def cluster_names(ns: argparse.Namespace) -> list[str]:
    status = await moc_call(ns, "status", timeout=10.0)
    return [c["name"] for c in items_of(status.get("clusters") if isinstance(status, dict) else None)]


async def pick_cluster(ns: argparse.Namespace) -> str:
    """``--cluster``, or the only cluster; with several the user must say which."""
    names = await cluster_names(ns)
    if ns.cluster:
        if ns.cluster not in names:
            raise cli.CliError(f"--cluster: no cluster named {ns.cluster} "
                               f"(clusters: {', '.join(names) or 'none'})")
        return str(ns.cluster)
    if not names:
        raise cli.CliError("no cluster in this deployment (create one with 'hcinet cluster create')")
    if len(names) > 1:
        raise cli.CliError(f"--cluster is required: this deployment has {len(names)} clusters "
                           f"({', '.join(names)})")
    return names[0]


async def apiserver_endpoint(ns: argparse.Namespace, cluster: str) -> str:
    _, agent = await runner.require_running(ns.deployment)
    return await runner.endpoint_of(agent, runner.apiserver_vm(cluster))


async def cluster_api(ns: argparse.Namespace) -> Callable[[str, str, Mapping[str, str] | None, Any],
                                                           Awaitable[tuple[int, Any]]]:
    """``api(method, path, query, body) -> (status, body)`` on the chosen cluster's API server
    (``--cluster``, or the only one), over its management verb ``api``."""
    cluster = await pick_cluster(ns)
    endpoint = await apiserver_endpoint(ns, cluster)

    async def call(method: str, path: str, query: Mapping[str, str] | None, body: Any) -> tuple[int, Any]:
        status, doc = await runner.api(endpoint, method, path, body=body, query=dict(query) if query else None)
        return status, plain(doc)

    return call


# --- get --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Kind:
    """A resource kind the API server stores: its REST path and table columns."""

    plural: str
    group_version: str  # "v1" or "apps/v1", ...
    namespaced: bool
    aliases: tuple[str, ...] = ()

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        return f"{base}/{self.plural}" + (f"/{name}" if name else "")


KINDS = [
    Kind("nodes", "v1", False, ("node", "no")),
    Kind("namespaces", "v1", False, ("namespace", "ns")),
    Kind("pods", "v1", True, ("pod", "po")),
    Kind("services", "v1", True, ("service", "svc")),
    Kind("endpoints", "v1", True, ("endpoint", "ep")),
    Kind("secrets", "v1", True, ("secret",)),
    Kind("configmaps", "v1", True, ("configmap", "cm")),
    Kind("events", "v1", True, ("event", "ev")),
    Kind("leases", "coordination.k8s.io/v1", True, ("lease",)),
    Kind("deployments", "apps/v1", True, ("deployment", "deploy")),
    Kind("replicasets", "apps/v1", True, ("replicaset", "rs")),
    Kind("endpointslices", "discovery.k8s.io/v1", True, ("endpointslice",)),
    Kind("networkpolicies", "networking.k8s.io/v1", True, ("networkpolicy", "netpol")),
    Kind("ingresses", "networking.k8s.io/v1", True, ("ingress", "ing")),
]
_BY_NAME = {n: k for k in KINDS for n in (k.plural, *k.aliases)}


def kind_of(text: str) -> Kind:
    kind = _BY_NAME.get(text.lower().split(".")[0])
    if kind is None:
        raise cli.CliError(f'the server doesn\'t have a resource type "{text}" '
                           f"(known: {', '.join(k.plural for k in KINDS)})")
    return kind


def node_status(node: dict[str, Any]) -> str:
    """kubectl's STATUS: Ready / NotReady (condition False or Unknown) / Unknown (no condition)."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c.get("status") for c in conditions if isinstance(c, dict) and c.get("type") == "Ready"), None)
    text = "Unknown" if ready is None else "Ready" if ready == "True" else "NotReady"
    return text + (",SchedulingDisabled" if (node.get("spec") or {}).get("unschedulable") else "")


def node_roles(node: dict[str, Any]) -> str:
    labels = (node.get("metadata") or {}).get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/") and "/" in k)
    if labels.get("kubernetes.io/role"):
        roles.append(str(labels["kubernetes.io/role"]))
    return ",".join(r for r in roles if r) or "<none>"


def _address(node: dict[str, Any], kind: str) -> str:
    for a in (node.get("status") or {}).get("addresses") or []:
        if isinstance(a, dict) and a.get("type") == kind:
            return str(a.get("address"))
    return "<none>"


async def cmd_get(ns: argparse.Namespace) -> int:
    """kubectl get: the kinds, columns and printers are in :mod:`scenarios.manifests`."""
    from scenarios import manifests

    return await manifests.cmd_get(ns)


# --- network ------------------------------------------------------------------------------------

# (scenario key, flag, help): New-AksHciClusterNetwork's parameters.
NETWORK_FLAGS = (
    ("name", "--name", "the network object's name"),
    ("vswitchName", "--vswitch-name", "the Hyper-V virtual switch (default External)"),
    ("ipAddressPrefix", "--ip-address-prefix", "the subnet, e.g. 172.16.1.0/24"),
    ("gateway", "--gateway", "the subnet's gateway (the datacenter router)"),
    ("dnsServers", "--dns-servers", "1 to 3 DNS server addresses, comma-separated"),
    ("vlanID", "--vlan-id", "VLAN ID (0 or none: untagged)"),
    ("k8sNodeIpPoolStart", "--k8s-node-ip-pool-start", "static IP model: first node address"),
    ("k8sNodeIpPoolEnd", "--k8s-node-ip-pool-end", "static IP model: last node address"),
    ("dhcpScopeStart", "--dhcp-scope-start", "DHCP model: first address the router's DHCP service leases"),
    ("dhcpScopeEnd", "--dhcp-scope-end", "DHCP model: last leased address"),
    ("vipPoolStart", "--vip-pool-start", "first VIP (API servers, LoadBalancer Services)"),
    ("vipPoolEnd", "--vip-pool-end", "last VIP"),
)
_FLAG_OF = {key: flag for key, flag, _ in NETWORK_FLAGS}
CLUSTER_FLAGS = {"name": "--name", "vnet": "--vnet", "primaryNetworkPlugin": "--primary-network-plugin",
                 "controlPlaneNodeCount": "--control-plane-node-count", "loadBalancerSku": "--load-balancer-sku",
                 "nodeMaxPodCount": "--node-max-pod-count", "nodePools[0].name": "--node-pool-name",
                 "nodePools[0].osType": "--os-type", "nodePools[0].nodeCount": "--node-count",
                 "osType": "--os-type", "nodeCount": "--node-count", "kubeProxyMode": "--kube-proxy-mode",
                 "ipvsScheduler": "--ipvs-scheduler", "ipFamilies": "--ip-families"}


def flag_error(exc: Exception, flags: dict[str, str]) -> cli.CliError:
    """``key: message`` from a validator, with the key turned into the flag the user typed."""
    key, sep, message = str(exc).partition(": ")
    key = key.removeprefix("network.").removeprefix("cluster.")
    if sep and key in flags:
        return cli.CliError(f"{flags[key]}: {message}")
    return cli.CliError(str(exc))


async def moc_networks(ns: argparse.Namespace) -> list[dict[str, Any]]:
    return items_of(await moc_call(ns, "network_get", {}, timeout=10.0))


def _as_schema(docs: list[dict[str, Any]]) -> tuple[schema.Network, ...]:
    """MOC's network documents as scenario networks (for the cluster validator)."""
    out: list[schema.Network] = []
    for doc in docs:
        keys = schema.NETWORK_KEYS & set(doc)
        try:
            out.append(schema.parse_network({k: doc[k] for k in keys}, "network", out))
        except schema.ScenarioError:
            continue
    return tuple(out)


async def cmd_network_create(ns: argparse.Namespace) -> int:
    doc: dict[str, Any] = {}
    for key, flag, _ in NETWORK_FLAGS:
        value = getattr(ns, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            doc[key] = value
    if "dnsServers" in doc:
        doc["dnsServers"] = [d for part in doc["dnsServers"] for d in part.split(",") if d.strip()]
    existing = await moc_networks(ns)
    try:  # the same validator MOC runs: the same message, before anything changes
        spec = pools.parse_network(doc, [pools.parse_network({k: v for k, v in d.items() if k in pools.NETWORK_KEYS})
                                         for d in existing])
        net = schema.parse_network(doc, "network", ())
    except (pools.PoolError, schema.ScenarioError) as exc:
        raise flag_error(exc, _FLAG_OF) from None
    _, agent = await runner.require_running(ns.deployment)
    broker = await runner.broker_endpoint(agent)
    segment = pools.segment_of(spec, ((pools.parse_network({k: v for k, v in d.items() if k in pools.NETWORK_KEYS}),
                                       str(d.get("segment") or d["name"])) for d in existing))
    added = False
    if segment == spec.name:
        await runner.call(broker, "add_network", net.mgmt_args(), what=f"network {spec.name}")
        added = True
    try:
        result = await moc_call(ns, "network_create", spec.doc())
    except RunnerError:
        if added:
            await runner.call(broker, "remove_network", {"name": spec.name}, what=f"network {spec.name}")
        raise
    if ns.output in ("json", "yaml"):
        emit(result if isinstance(result, dict) else spec.doc(), ns.output)
    else:
        print(f"network {spec.name} created ({spec.model} model, {spec.prefix})")
    return 0


def _pool_text(d: dict[str, Any], key: str) -> str:
    start, end = d.get(f"{key}Start"), d.get(f"{key}End")
    return f"{start}-{end}" if start and end else ""


async def cmd_network_get(ns: argparse.Namespace) -> int:
    docs = items_of(await moc_call(ns, "network_get", {"name": ns.name} if ns.name else {}, timeout=10.0))
    if ns.name:
        docs = [d for d in docs if d.get("name") == ns.name]
        if not docs:
            raise cli.CliError(f"network {ns.name} not found")
    if ns.output in ("json", "yaml"):
        emit(docs[0] if ns.name else k8s_list(docs), ns.output)
        return 0
    print(cli.table(["name", "vswitch", "prefix", "gateway", "vlan", "dns-servers", "k8s-node-ip-pool",
                     "dhcp-scope", "vip-pool"],
                    [[d.get("name"), d.get("vswitchName"), d.get("ipAddressPrefix"), d.get("gateway"),
                      d.get("vlanID") or "untagged", ",".join(d.get("dnsServers") or []),
                      _pool_text(d, "k8sNodeIpPool"), _pool_text(d, "dhcpScope"), _pool_text(d, "vipPool")]
                     for d in docs]))
    return 0


# --- cluster ------------------------------------------------------------------------------------

async def _default_vnet(ns: argparse.Namespace) -> str | None:
    rd, _ = await runner.require_running(ns.deployment)
    mgmt = ((rd.read_state() or {}).get("scenario") or {}).get("management") or {}
    net = mgmt.get("network")
    return str(net) if net else None


async def cmd_cluster_create(ns: argparse.Namespace) -> int:
    doc: dict[str, Any] = {"name": ns.name, "primaryNetworkPlugin": ns.primary_network_plugin,
                           "controlPlaneNodeCount": ns.control_plane_node_count,
                           "loadBalancerSku": ns.load_balancer_sku, "nodeMaxPodCount": ns.node_max_pod_count,
                           "kubeProxyMode": ns.kube_proxy_mode, "ipvsScheduler": ns.ipvs_scheduler,
                           "ipFamilies": [f.strip() for f in str(ns.ip_families).split(",") if f.strip()],
                           "nodePools": [{"name": ns.node_pool_name or f"{ns.name}-{ns.os_type.lower()}",
                                          "osType": ns.os_type, "nodeCount": ns.node_count}]}
    if ns.vnet:
        doc["vnet"] = ns.vnet
    networks = _as_schema(await moc_networks(ns))
    try:
        cluster, warnings = schema.parse_cluster(doc, "", networks, await _default_vnet(ns))
    except schema.ScenarioError as exc:
        raise flag_error(exc, CLUSTER_FLAGS) from None
    for w in warnings:
        warn(w)
    await moc_call(ns, "cluster_create", cluster.doc())
    print(f"cluster {cluster.name}: created on network {cluster.vnet}; waiting for its nodes")
    if not ns.no_wait:
        rd, agent = await runner.require_running(ns.deployment)
        await runner.wait_ready(agent, runner.Plan.of_clusters([cluster]), sys.stdout, run_dir=rd.path)
    return 0


async def cmd_cluster_delete(ns: argparse.Namespace) -> int:
    await moc_call(ns, "cluster_delete", {"name": ns.name})
    print(f"cluster {ns.name}: deleted")
    return 0


async def clusters(ns: argparse.Namespace) -> list[dict[str, Any]]:
    status = await moc_call(ns, "status", timeout=10.0)
    return items_of(status.get("clusters") if isinstance(status, dict) else None)


def _pools_of(c: dict[str, Any]) -> list[dict[str, Any]]:
    return items_of(c.get("nodePools"))


def _proxy_text(c: dict[str, Any]) -> str:
    """``iptables``, or ``ipvs (rr)``: the scheduler matters only in ipvs mode."""
    mode = str(c.get("kubeProxyMode") or "iptables")
    return f"{mode} ({c.get('ipvsScheduler') or 'rr'})" if mode == "ipvs" else mode


async def cmd_cluster_list(ns: argparse.Namespace) -> int:
    rows = await clusters(ns)
    if ns.output in ("json", "yaml"):
        emit(k8s_list(rows), ns.output)
        return 0
    print(cli.table(["name", "vnet", "network-plugin", "kube-proxy", "control-plane", "load-balancer", "api-vip",
                     "node-pools"],
                    [[c.get("name"), c.get("vnet"), c.get("primaryNetworkPlugin"), _proxy_text(c),
                      c.get("controlPlaneNodeCount"), c.get("loadBalancerSku"), c.get("apiServerVip") or c.get("vip"),
                      ", ".join(f"{p.get('name')} ({p.get('osType')}, {p.get('nodeCount')})" for p in _pools_of(c))]
                     for c in rows]))
    return 0


# --- nodepool -----------------------------------------------------------------------------------

async def cmd_nodepool_create(ns: argparse.Namespace) -> int:
    cluster = await pick_cluster(ns)
    try:
        pool = schema.parse_node_pool({"name": ns.name, "osType": ns.os_type, "nodeCount": ns.node_count},
                                      "", cluster)
    except schema.ScenarioError as exc:
        raise flag_error(exc, {"name": "--name", "osType": "--os-type", "nodeCount": "--node-count"}) from None
    await moc_call(ns, "nodepool_create", {"cluster": cluster, **pool.doc()})
    print(f"node pool {pool.name} of cluster {cluster}: created ({pool.node_count} {pool.os_type} nodes)")
    if not ns.no_wait:
        await wait_pool(ns, cluster, pool.name, pool.node_count)
    return 0


async def cmd_nodepool_scale(ns: argparse.Namespace) -> int:
    cluster = await pick_cluster(ns)
    await moc_call(ns, "nodepool_scale", {"cluster": cluster, "name": ns.name, "nodeCount": ns.node_count})
    print(f"node pool {ns.name} of cluster {cluster}: scaling to {ns.node_count}")
    if not ns.no_wait:
        await wait_pool(ns, cluster, ns.name, ns.node_count)
    return 0


async def cmd_nodepool_delete(ns: argparse.Namespace) -> int:
    cluster = await pick_cluster(ns)
    await moc_call(ns, "nodepool_delete", {"cluster": cluster, "name": ns.name})
    print(f"node pool {ns.name} of cluster {cluster}: deleted")
    return 0


async def cmd_nodepool_list(ns: argparse.Namespace) -> int:
    cluster = await pick_cluster(ns)
    found = [c for c in await clusters(ns) if c.get("name") == cluster]
    rows = [{"cluster": cluster, **p} for c in found for p in _pools_of(c)]
    if ns.output in ("json", "yaml"):
        emit(k8s_list(rows), ns.output)
        return 0
    print(cli.table(["cluster", "name", "os-type", "node-count"],
                    [[r["cluster"], r.get("name"), r.get("osType"), r.get("nodeCount")] for r in rows]))
    return 0


async def wait_pool(ns: argparse.Namespace, cluster: str, pool: str, count: int, timeout: float | None = None) -> None:
    """Until the pool has ``count`` running VMs, each with a Ready Node (a line per new node)."""
    import trio

    _, agent = await runner.require_running(ns.deployment)
    pattern = re.compile(rf"^{re.escape(pool)}-\d+$")
    limit = timeout if timeout is not None else runner.NODE_READY_TIMEOUT + count
    announced: set[str] = set()
    with trio.move_on_after(limit):
        while True:
            rows = [r for r in await runner.list_processes(agent)
                    if r.get("kind") == "vm" and pattern.match(r["name"]) and r.get("state") in ("running", "starting")]
            status, doc = await runner.api(await runner.endpoint_of(agent, runner.apiserver_vm(cluster)),
                                           "GET", "/api/v1/nodes")
            nodes = {n["metadata"]["name"]: n for n in items_of(doc)} if status == 200 else {}
            ready = [r["name"] for r in rows if r["name"] in nodes and runner.node_ready(nodes[r["name"]]) == "True"]
            for name in sorted(set(ready) - announced):
                ips = ", ".join(runner._node_ips(nodes[name]))
                print(f"{name}  Ready ({ips})")
                announced.add(name)
            if len(rows) == count and len(ready) == count:
                print(f"{cluster}: node pool {pool} has {count}/{count} nodes Ready")
                return
            await trio.sleep(runner.POLL_INTERVAL)
    raise cli.CliError(f"node pool {pool} of cluster {cluster}: not {count} Ready nodes within {limit:g} s")


# --- the parser ---------------------------------------------------------------------------------

def _output(p: argparse.ArgumentParser, wide: bool = False) -> None:
    choices = ("table", "wide", "json", "yaml") if wide else ("table", "json", "yaml")
    p.add_argument("-o", "--output", choices=choices, default="table",
                   help=f"{'/'.join(choices)}: json and yaml print only the document on stdout "
                        "(a List with items for collections)")


def _cluster_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", metavar="NAME",
                   help="the workload cluster (may be omitted when the deployment has only one)")


_count = cli.int_at_least(0)


def add_parsers(sub: Any) -> None:
    """The AKS verbs, added to ``hcinet``'s sub-parsers."""
    verb, group = cli._verb, cli._group

    p = verb(sub, "get", cmd_get, "list Kubernetes objects of a cluster (nodes, pods, services, ...)",
             "Display objects from a cluster's API server, like kubectl get: kubectl's columns per kind\n"
             "(pods NAME READY STATUS RESTARTS AGE, services NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE,\n"
             "...; -o wide adds more), -o name (kind/name lines), or -o json|yaml: a List with items (one\n"
             "object when one NAME is given). Several kinds (pods,svc) print one block each with\n"
             "kind/name rows. -A adds a NAMESPACE column.\n"
             f"Kinds: {', '.join(k.plural for k in KINDS)}, all (and kubectl's short names).\n\n"
             "Examples:\n  hcinet get nodes -o wide\n  hcinet get pods,svc,endpointslices -o wide -A\n"
             "  hcinet get deploy web -n prod -o yaml\n  hcinet get pods -l app=web\n"
             "  hcinet get leases -n kube-node-lease --cluster cluster1")
    p.add_argument("kind", help="nodes, pods, svc, ... comma-separated (plural, singular or short name), "
                                "or KIND/NAME")
    p.add_argument("names", nargs="*", metavar="NAME", help="objects by name (or more KIND/NAME)")
    p.add_argument("-n", "--namespace", help="the namespace of namespaced kinds (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-l", "--selector", help="a label selector, e.g. app=web or 'tier in (web,api)'")
    _cluster_flag(p)
    p.add_argument("-o", "--output", choices=("table", "wide", "name", "json", "yaml"), default="table",
                   help="table (default), wide, name (kind/name lines), json or yaml (only the document on "
                        "stdout: a List with items for collections)")

    from scenarios import manifests  # apply, delete, describe

    manifests.add_parsers(sub)
    from scenarios import lb as lb_cli  # lb show, moc get

    lb_cli.add_parsers(sub)

    net = group(sub, "network", "AKS network objects (New/Get-AksHciClusterNetwork)",
                "Network objects of MOC: a subnet with a node IP pool (static IP model) or a DHCP scope\n"
                "(DHCP model), and a VIP pool.")
    p = verb(net, "create", cmd_network_create, "create a network object (New-AksHciClusterNetwork)",
             "Create a network object in MOC (and its wire on the broker), validated as MOC validates it:\n"
             "pools inside the prefix, the gateway outside every pool, no overlap, the VIP pool outside\n"
             "the DHCP scope. Static IP model: --k8s-node-ip-pool-start/end and --dns-servers; DHCP model:\n"
             "--dhcp-scope-start/end. Example:\n\n"
             "  hcinet network create --name net2 --vswitch-name External --ip-address-prefix 172.16.1.0/24 \\\n"
             "    --gateway 172.16.1.1 --dns-servers 172.16.1.2 --k8s-node-ip-pool-start 172.16.1.20 \\\n"
             "    --k8s-node-ip-pool-end 172.16.1.99 --vip-pool-start 172.16.1.150 --vip-pool-end 172.16.1.199")
    for key, flag, text in NETWORK_FLAGS:
        if key == "vlanID":
            p.add_argument(flag, type=_count, help=text)
        elif key == "dnsServers":
            p.add_argument(flag, action="append", metavar="IP[,IP...]", help=text)
        else:
            p.add_argument(flag, required=key in ("name", "ipAddressPrefix", "gateway"), help=text)
    _output(p)
    p = verb(net, "get", cmd_network_get, "show network objects (Get-AksHciClusterNetwork)",
             "Every network object MOC holds, or one by name: prefix, gateway, VLAN, DNS servers, pools.")
    p.add_argument("name", nargs="?", help="one network by name")
    _output(p)

    cl = group(sub, "cluster", "workload clusters (New/Remove-AksHciCluster)", "Workload cluster commands.")
    p = verb(cl, "create", cmd_cluster_create, "create a workload cluster (New-AksHciCluster)",
             "Ask MOC for a workload cluster: its control-plane VM (the API server), its HAProxy VM\n"
             "(unless --load-balancer-sku none) and a node pool, sized against the network's pools\n"
             "first (a cluster that does not fit is refused, naming the pool and the shortfall).\n"
             "Waits until every node is Ready unless --no-wait. With only --name: one control-plane\n"
             "node and a Linux pool <name>-linux with one node. Example:\n\n"
             "  hcinet cluster create --name cluster2 --vnet aks-net --primary-network-plugin calico \\\n"
             "    --node-pool-name cluster2-linux --node-count 2 --os-type linux")
    p.add_argument("--name", required=True, help="cluster name (lower-case letters and digits, no hyphens)")
    p.add_argument("--vnet", help="the network object (default: the management network)")
    p.add_argument("--primary-network-plugin", default="calico", type=str.lower, choices=("calico", "flannel"),
                   help="calico (default) or flannel (retired December 2023: warns)")
    p.add_argument("--node-pool-name", help="the first node pool's name (default <name>-<os-type>)")
    p.add_argument("--node-count", type=_count, default=1, help="nodes in the first pool (default 1)")
    p.add_argument("--os-type", default="linux", type=str.lower, choices=("linux", "windows"),
                   help="the first pool's OS (default linux)")
    p.add_argument("--control-plane-node-count", type=_count, default=1,
                   help="control-plane nodes (default 1; more is not supported yet)")
    p.add_argument("--load-balancer-sku", default="HAProxy", choices=("HAProxy", "none"),
                   help="HAProxy (default: an LB VM fronts the API server) or none (kube-vip)")
    p.add_argument("--node-max-pod-count", type=_count, default=110, help="max pods per node (> 50; default 110)")
    p.add_argument("--kube-proxy-mode", default="iptables", type=str.lower, choices=pools.PROXY_MODES,
                   help="kube-proxy's mode on every node: iptables (default: a random endpoint per new "
                        "connection) or ipvs (a scheduler, --ipvs-scheduler)")
    p.add_argument("--ipvs-scheduler", default="rr", type=str.lower, choices=pools.IPVS_SCHEDULERS,
                   help="the IPVS scheduler in ipvs mode: rr (round robin, default) or lc (least connection)")
    p.add_argument("--ip-families", default="IPv4", metavar="FAMILIES",
                   help="IPv4 (default) or IPv4,IPv6: dual stack (Calico only; Windows pods stay IPv4)")
    p.add_argument("--no-wait", action="store_true", help="return once MOC accepted it, without waiting")
    p = verb(cl, "delete", cmd_cluster_delete, "delete a workload cluster (Remove-AksHciCluster)",
             "Delete the cluster's VMs through MOC and give its addresses back to the pools.")
    p.add_argument("name", help="the cluster")
    p = verb(cl, "list", cmd_cluster_list, "list workload clusters (Get-AksHciCluster)",
             "Every cluster MOC holds: network, plugin, control-plane count, load balancer, API VIP, pools.")
    _output(p)

    np = group(sub, "nodepool", "node pools (New/Set/Remove-AksHciNodePool)", "Node pool commands.")
    p = verb(np, "create", cmd_nodepool_create, "add a node pool to a cluster (New-AksHciNodePool)",
             "Ask MOC for a new node pool (its VMs <pool>-0, <pool>-1, ...); waits until its nodes are\n"
             "Ready unless --no-wait.")
    _cluster_flag(p)
    p.add_argument("--name", required=True, help="the pool's name")
    p.add_argument("--node-count", type=_count, default=1, help="nodes (default 1)")
    p.add_argument("--os-type", default="linux", type=str.lower, choices=("linux", "windows"),
                   help="linux (default) or windows")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the nodes")
    p = verb(np, "scale", cmd_nodepool_scale, "change a pool's node count (Set-AksHciNodePool)",
             "MOC adds or removes the pool's node VMs (sized against the node IP pool first); waits\n"
             "until the pool has that many Ready nodes unless --no-wait.")
    _cluster_flag(p)
    p.add_argument("--name", required=True, help="the pool's name")
    p.add_argument("--node-count", type=_count, required=True, help="the new node count")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the nodes")
    p = verb(np, "delete", cmd_nodepool_delete, "delete a node pool (Remove-AksHciNodePool)",
             "MOC deletes the pool's node VMs and frees their addresses.")
    _cluster_flag(p)
    p.add_argument("--name", required=True, help="the pool's name")
    p = verb(np, "list", cmd_nodepool_list, "list a cluster's node pools (Get-AksHciNodePool)",
             "The node pools of a cluster: name, OS type, node count.")
    _cluster_flag(p)
    _output(p)

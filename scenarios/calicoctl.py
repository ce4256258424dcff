"""``hcinet calicoctl``: Calico's CLI against a cluster's API server (the Kubernetes datastore).

* ``apply -f FILE``: ``projectcalico.org/v3`` NetworkPolicy, GlobalNetworkPolicy, IPPool,
  HostEndpoint (and ``networking.k8s.io/v1`` NetworkPolicy, for convenience), created or
  updated as ``kubectl apply`` does (:func:`scenarios.manifests.apply_one`); calicoctl's
  ``Successfully applied 2 'GlobalNetworkPolicy' resource(s)``.
* ``get KIND [NAME]`` with calicoctl's columns (calicoctl's ``resourcemgr`` headings):
  networkpolicy ``NAME`` (wide ``NAME ORDER SELECTOR``; Kubernetes policies appear as
  ``knp.default.<name>``, order 1000, as Calico converts them), globalnetworkpolicy ``NAME``
  (wide ``NAME ORDER SELECTOR``), ippool ``NAME CIDR SELECTOR`` (wide ``NAME CIDR NAT IPIPMODE
  VXLANMODE DISABLED DISABLEBGPEXPORT SELECTOR``), workloadendpoint ``WORKLOAD NODE NETWORKS
  INTERFACE`` (wide ``NAME WORKLOAD NODE NETWORKS INTERFACE PROFILES NATS``), hostendpoint
  ``NAME NODE`` (wide ``NAME NODE INTERFACE IPS PROFILES``), node ``NAME`` (wide ``NAME ASN IPV4
  IPV6``).  ``-A`` prepends ``NAMESPACE`` for namespaced kinds.  Workload endpoints are derived
  from the Pods (interface: the ``cali`` veth of :meth:`agents.cni.calico.CalicoPlugin.host_veth_name`),
  Calico nodes from the Nodes; with no IPPool object the installation's default pool
  ``default-ipv4-ippool`` (the cluster CIDR, VXLAN, natOutgoing) is shown.
* ``ipam show [--show-blocks]``: calicoctl's ``| GROUPING | CIDR | IPS TOTAL | IPS IN USE | IPS
  FREE |`` table from the block IPAM the node VMs keep (the ``kube-system/calico-ipam-blocks``
  ConfigMap, refined by each node VM's own count of its blocks); ``--show-blocks`` adds a row
  per block and hcinet's ``AFFINITY`` column (the block's ``host:<node>``).

A Flannel cluster has no Calico: every verb says so in one line (exit 1).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

from scenarios import aks, cli, manifests

CALICO_API = "projectcalico.org/v3"
K8S_NETPOL = "networking.k8s.io/v1"
APPLY_KINDS = {(CALICO_API, "NetworkPolicy"), (CALICO_API, "GlobalNetworkPolicy"), (CALICO_API, "IPPool"),
               (CALICO_API, "HostEndpoint"), (K8S_NETPOL, "NetworkPolicy")}
DEFAULT_POOL = "default-ipv4-ippool"
DEFAULT_ASN = 64512

# kind -> (aliases, namespaced, headings, wide headings)
KINDS: dict[str, tuple[tuple[str, ...], bool, tuple[str, ...], tuple[str, ...]]] = {
    "networkpolicy": (("networkpolicy", "networkpolicies", "policy", "np", "policies", "pol", "pols"), True,
                      ("NAME",), ("NAME", "ORDER", "SELECTOR")),
    "globalnetworkpolicy": (("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps"), False,
                            ("NAME",), ("NAME", "ORDER", "SELECTOR")),
    "ippool": (("ippool", "ippools", "ipp", "ipps", "pool", "pools"), False, ("NAME", "CIDR", "SELECTOR"),
               ("NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR")),
    "workloadendpoint": (("workloadendpoint", "workloadendpoints", "wep", "weps"), True,
                         ("WORKLOAD", "NODE", "NETWORKS", "INTERFACE"),
                         ("NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES", "NATS")),
    "hostendpoint": (("hostendpoint", "hostendpoints", "hep", "heps"), False, ("NAME", "NODE"),
                     ("NAME", "NODE", "INTERFACE", "IPS", "PROFILES")),
    "node": (("node", "nodes", "no", "nos"), False, ("NAME",), ("NAME", "ASN", "IPV4", "IPV6")),
}
KIND_NAMES = {"networkpolicy": "NetworkPolicy", "globalnetworkpolicy": "GlobalNetworkPolicy", "ippool": "IPPool",
              "workloadendpoint": "WorkloadEndpoint", "hostendpoint": "HostEndpoint", "node": "Node"}
_ALIAS = {a: k for k, (aliases, *_rest) in KINDS.items() for a in aliases}

Api = Any


def kind_of(text: str) -> str:
    kind = _ALIAS.get(text.lower().split(".")[0])
    if kind is None:
        raise cli.CliError(f"resource type '{text}' is not supported")
    return kind


# --- derived resources --------------------------------------------------------------------------

def _meta(o: Mapping[str, Any]) -> dict[str, Any]:
    m = o.get("metadata")
    return m if isinstance(m, dict) else {}


def _spec(o: Mapping[str, Any]) -> dict[str, Any]:
    s = o.get("spec")
    return s if isinstance(s, dict) else {}


def wep_name(node: str, pod: str, iface: str = "eth0") -> str:
    """Calico's WorkloadEndpoint name: ``<node>-k8s-<pod>-<iface>``, each part's ``-`` doubled."""
    return "-".join(p.replace("-", "--") for p in (node, "k8s", pod, iface))


def host_veth(namespace: str, pod: str) -> str:
    from agents.cni.calico import CalicoPlugin

    return CalicoPlugin.host_veth_name(cast(Any, None), f"{namespace}/{pod}")  # self is not used


def workload_endpoint(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The WorkloadEndpoint Calico's CNI plugin writes for a pod."""
    meta, spec, status = _meta(pod), _spec(pod), pod.get("status") or {}
    ns, name, node = str(meta.get("namespace") or "default"), str(meta.get("name")), str(spec.get("nodeName") or "")
    ips = [str(e.get("ip")) for e in status.get("podIPs") or [] if isinstance(e, dict) and e.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    networks = [f"{ip}/{128 if ':' in ip else 32}" for ip in ips]
    sa = str(spec.get("serviceAccountName") or "default")
    labels = {**(meta.get("labels") or {}), "projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s",
              "projectcalico.org/serviceaccount": sa}
    return {"apiVersion": CALICO_API, "kind": "WorkloadEndpoint",
            "metadata": {"name": wep_name(node, name), "namespace": ns, "labels": labels},
            "spec": {"orchestrator": "k8s", "node": node, "pod": name, "endpoint": "eth0",
                     "interfaceName": host_veth(ns, name), "ipNetworks": networks,
                     "profiles": [f"kns.{ns}", f"ksa.{ns}.{sa}"], "serviceAccountName": sa,
                     "ports": [{"name": p.get("name"), "port": p.get("containerPort"),
                                "protocol": p.get("protocol") or "TCP"}
                               for c in spec.get("containers") or [] for p in c.get("ports") or []
                               if isinstance(p, dict) and p.get("name")]}}


def calico_node(node: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(node)
    addrs = [a for a in (node.get("status") or {}).get("addresses") or [] if isinstance(a, dict)]
    internal = [str(a.get("address")) for a in addrs if a.get("type") == "InternalIP"]
    v4 = next((a for a in internal if ":" not in a), "")
    v6 = next((a for a in internal if ":" in a), "")
    bgp = {k: v for k, v in (("ipv4Address", v4), ("ipv6Address", v6)) if v}
    return {"apiVersion": CALICO_API, "kind": "Node",
            "metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {}},
            "spec": {"bgp": bgp, "orchRefs": [{"nodeName": meta.get("name"), "orchestrator": "k8s"}]}}


def default_pool() -> dict[str, Any]:
    from agents.cni import CLUSTER_CIDR

    return {"apiVersion": CALICO_API, "kind": "IPPool", "metadata": {"name": DEFAULT_POOL},
            "spec": {"cidr": CLUSTER_CIDR, "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Always",
                     "natOutgoing": True, "nodeSelector": "all()", "allowedUses": ["Workload", "Tunnel"]}}


def knp_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A Kubernetes NetworkPolicy as Calico lists it: ``knp.default.<name>``, order 1000."""
    meta = _meta(obj)
    selector = ""
    try:
        from agents.policy.model import policy_from_object

        p = policy_from_object({**obj, "apiVersion": K8S_NETPOL, "kind": "NetworkPolicy"})
        name, selector, order = p.name, str(p.selector), p.order
    except Exception:  # the model is the other side's; a listing never fails on it
        name, order = f"knp.default.{meta.get('name')}", 1000.0
    return {"apiVersion": CALICO_API, "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": meta.get("namespace")},
            "spec": {"order": order, "selector": selector}}


def _fmt_order(v: Any) -> str:
    if v is None or v == "":
        return ""
    f = float(v)
    return str(int(f)) if f.is_integer() else str(f)


def _b(v: Any) -> str:
    return "true" if v else "false"


def row(kind: str, o: Mapping[str, Any], wide: bool) -> list[str]:
    m, s = _meta(o), _spec(o)
    name = str(m.get("name") or "")
    if kind in ("networkpolicy", "globalnetworkpolicy"):
        return [name, _fmt_order(s.get("order")), str(s.get("selector") or "")] if wide else [name]
    if kind == "ippool":
        if wide:
            return [name, str(s.get("cidr")), _b(s.get("natOutgoing")), str(s.get("ipipMode") or "Never"),
                    str(s.get("vxlanMode") or "Never"), _b(s.get("disabled")), _b(s.get("disableBGPExport")),
                    str(s.get("nodeSelector") or "")]
        return [name, str(s.get("cidr")), str(s.get("nodeSelector") or "")]
    if kind == "workloadendpoint":
        cells = [str(s.get("pod") or s.get("workload") or ""), str(s.get("node") or ""),
                 ",".join(s.get("ipNetworks") or []), str(s.get("interfaceName") or "")]
        return [name, *cells, ",".join(s.get("profiles") or []), ",".join(s.get("ipNATs") or [])] if wide else cells
    if kind == "hostendpoint":
        if wide:
            return [name, str(s.get("node") or ""), str(s.get("interfaceName") or ""),
                    ",".join(s.get("expectedIPs") or []), ",".join(s.get("profiles") or [])]
        return [name, str(s.get("node") or "")]
    bgp = s.get("bgp") or {}
    return [name, f"({DEFAULT_ASN})", str(bgp.get("ipv4Address") or ""), str(bgp.get("ipv6Address") or "")] \
        if wide else [name]


def render(kind: str, objs: Sequence[Mapping[str, Any]], wide: bool, all_namespaces: bool) -> str:
    from scenarios.manifests import kubectl_table

    namespaced = KINDS[kind][1]
    headers = list(KINDS[kind][3] if wide else KINDS[kind][2])
    rows = [row(kind, o, wide) for o in objs]
    if namespaced and all_namespaces:
        headers = ["NAMESPACE", *headers]
        rows = [[str(_meta(o).get("namespace") or ""), *r] for o, r in zip(objs, rows, strict=True)]
    return "\n".join(kubectl_table(headers, rows))


# --- API access ---------------------------------------------------------------------------------

async def _list(api: Api, path: str) -> list[dict[str, Any]]:
    from scenarios.manifests import status_error

    status, body = await api("GET", path, None, None)
    if status == 404:
        return []
    if status >= 400:
        raise cli.CliError(status_error(status, body))
    return aks.items_of(body)


def _ns_path(base: str, plural: str, namespace: str | None) -> str:
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


async def fetch(api: Api, kind: str, namespace: str | None) -> list[dict[str, Any]]:
    """The objects of a calicoctl kind (namespace None: every namespace)."""
    from scenarios.policy import live_pod_ok

    calico = f"/apis/{CALICO_API}"
    if kind == "networkpolicy":
        objs = await _list(api, _ns_path(calico, "networkpolicies", namespace))
        objs += [knp_view(o) for o in await _list(api, _ns_path(f"/apis/{K8S_NETPOL}", "networkpolicies", namespace))]
    elif kind == "globalnetworkpolicy":
        objs = await _list(api, f"{calico}/globalnetworkpolicies")
    elif kind == "ippool":
        objs = await _list(api, f"{calico}/ippools") or [default_pool()]
    elif kind == "hostendpoint":
        objs = await _list(api, f"{calico}/hostendpoints")
    elif kind == "workloadendpoint":
        objs = [workload_endpoint(p) for p in await _list(api, _ns_path("/api/v1", "pods", namespace))
                if live_pod_ok(p)]
    else:
        objs = [calico_node(n) for n in await _list(api, "/api/v1/nodes")]
    return sorted(objs, key=lambda o: (str(_meta(o).get("namespace") or ""), str(_meta(o).get("name") or "")))


async def require_calico(ns: argparse.Namespace) -> str:
    """The cluster (``--cluster`` or the only one); a one-line refusal when it runs Flannel."""
    from scenarios.policy import cluster_plugin

    cluster = await aks.pick_cluster(ns)
    ns.cluster = cluster
    plugin = await cluster_plugin(ns, cluster)
    if plugin != "calico":
        raise cli.CliError(f"cluster {cluster} does not run Calico (its network plugin is {plugin}): "
                           "there is no Calico datastore for calicoctl")
    return cluster


# --- ipam ---------------------------------------------------------------------------------------

def _pct(part: int, total: int) -> str:
    return f"{part} ({(100.0 * part / total) if total else 0:.0f}%)"


def ipam_rows(pools: Sequence[str], blocks: Sequence[Mapping[str, Any]], show_blocks: bool) -> list[list[str]]:
    """calicoctl ipam show's rows: per pool (then its blocks) GROUPING, CIDR, IPS TOTAL, IPS IN
    USE, IPS FREE (and the block's affinity)."""
    out: list[list[str]] = []
    for cidr in pools:
        pool = ipaddress.ip_network(cidr)
        mine = sorted((b for b in blocks if ipaddress.ip_network(str(b["cidr"])).subnet_of(pool)  # type: ignore[arg-type]
                       and ipaddress.ip_network(str(b["cidr"])).version == pool.version),
                      key=lambda b: ipaddress.ip_network(str(b["cidr"])))
        total = pool.num_addresses
        used = sum(int(b["in_use"]) for b in mine)
        out.append(["IP Pool", str(pool), str(total), _pct(used, total), _pct(total - used, total), ""])
        if show_blocks:
            for b in mine:
                size = ipaddress.ip_network(str(b["cidr"])).num_addresses
                used_b = int(b["in_use"])
                out.append(["Block", str(b["cidr"]), str(size), _pct(used_b, size), _pct(size - used_b, size),
                            str(b.get("affinity") or "")])
    return out


def boxed(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """tablewriter's boxed table, as calicoctl prints it: centred headings, ``|`` borders."""
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    def centre(text: str, w: int) -> str:  # tablewriter's Pad: the odd space goes right
        left = (w - len(text)) // 2
        return " " * left + text + " " * (w - len(text) - left)

    out = [line, "| " + " | ".join(centre(h, w) for h, w in zip(headers, widths, strict=True)) + " |", line]
    for r in rows:
        out.append("| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                     for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |")
    out.append(line)
    return "\n".join(out)


async def ipam_blocks(ns: argparse.Namespace, api: Api) -> list[dict[str, Any]]:
    """Every block with its affinity and addresses in use: the ConfigMap's view, refined by the
    count each node VM keeps of its own blocks (its allocations reach the ConfigMap with its
    next claim)."""
    from agents.node.kubelet import CALICO_IPAM_CONFIGMAP, CALICO_IPAM_NAMESPACE, CalicoIpamSync
    from scenarios import runner

    status, cm = await api("GET", f"/api/v1/namespaces/{CALICO_IPAM_NAMESPACE}/configmaps/{CALICO_IPAM_CONFIGMAP}",
                           None, None)
    raw = CalicoIpamSync.parse(cm if status == 200 else None)
    blocks: dict[str, dict[str, Any]] = {}
    for b in raw:
        alloc = b.get("allocations") or []
        blocks[str(b["cidr"])] = {"cidr": str(b["cidr"]), "affinity": str(b.get("affinity") or ""),
                                  "in_use": sum(1 for h in alloc if h is not None)}
    nodes = [str(_meta(n).get("name")) for n in await _list(api, "/api/v1/nodes")]
    _, agent = await runner.require_running(ns.deployment)
    for node in nodes:
        try:
            dp = await runner.call(await runner.endpoint_of(agent, node), "datapath", {}, timeout=5.0)
        except Exception:  # a node VM that is down: the ConfigMap's count stands
            continue
        ipam = aks.plain(dp).get("ipam") if isinstance(dp, dict) else None
        usage = (ipam or {}).get("block_usage") if isinstance(ipam, dict) else None
        for cidr, st in (usage or {}).items():
            if not isinstance(st, dict) or str(st.get("affinity")) != node:
                continue
            size = ipaddress.ip_network(cidr).num_addresses
            free = int(st.get("free") or 0)
            blocks[cidr] = {"cidr": cidr, "affinity": f"host:{node}", "in_use": size - free}
    return list(blocks.values())


# --- commands -----------------------------------------------------------------------------------

async def cmd_apply(ns: argparse.Namespace) -> int:
    from scenarios.manifests import apply_one, load

    if not ns.filename:
        raise cli.CliError("must specify -f FILE")
    manifests, errors = load(ns.filename, ns.recursive, None)
    if errors:
        raise cli.CliError(errors[0].removeprefix("error: "))
    for m in manifests:
        if (m.res.api_version, m.res.kind) not in APPLY_KINDS:
            raise cli.CliError(f"{m.source}: resource type '{m.res.kind}' ({m.res.api_version}) is not a Calico "
                               "resource (use 'hcinet apply' for Kubernetes objects)")
    if not manifests:
        raise cli.CliError("no resources specified in file")
    await require_calico(ns)
    api = await aks.cluster_api(ns)
    done = 0
    for m in manifests:
        _, err = await apply_one(api, m)
        if err:
            kind = m.res.kind
            if done:
                sys.stderr.write(f"Partial success: applied the first {done} out of {len(manifests)} resources:\n")
            sys.stderr.write(f"Failed to apply '{kind}' resource: {err}\n")
            return 1
        done += 1
    kinds = {m.res.kind for m in manifests}
    if len(kinds) == 1:
        print(f"Successfully applied {done} '{kinds.pop()}' resource(s)")
    else:
        print(f"Successfully applied {done} resource(s)")
    return 0


async def cmd_get(ns: argparse.Namespace) -> int:
    kind = kind_of(ns.kind)
    await require_calico(ns)
    api = await aks.cluster_api(ns)
    namespaced = KINDS[kind][1]
    namespace = None if (ns.all_namespaces or not namespaced) else (ns.namespace or "default")
    objs = await fetch(api, kind, namespace)
    if ns.name:
        objs = [o for o in objs if _meta(o).get("name") == ns.name]
        if not objs:
            where = f" in namespace {namespace}" if namespace else ""
            raise cli.CliError(f"resource does not exist: {KIND_NAMES[kind]}({ns.name}){where}")
    if ns.output in ("yaml", "json"):
        doc: Any = objs[0] if ns.name else {"apiVersion": CALICO_API, "kind": f"{KIND_NAMES[kind]}List",
                                            "items": objs, "metadata": {}}
        aks.emit(doc, ns.output)
        return 0
    if objs:
        print(render(kind, objs, ns.output == "wide", bool(ns.all_namespaces)))
    else:
        print(render(kind, [], ns.output == "wide", bool(ns.all_namespaces)))
    return 0


async def cmd_ipam_show(ns: argparse.Namespace) -> int:
    await require_calico(ns)
    api = await aks.cluster_api(ns)
    pools = [str(_spec(p).get("cidr")) for p in await fetch(api, "ippool", None) if _spec(p).get("cidr")]
    blocks = await ipam_blocks(ns, api)
    rows = ipam_rows(pools, blocks, ns.show_blocks)
    headers = ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
    if ns.show_blocks:
        print(boxed([*headers, "AFFINITY"], rows, right=(2,)))
    else:
        print(boxed(headers, [r[:5] for r in rows], right=(2,)))
    return 0


def add_parsers(sub: Any) -> None:
    """``calicoctl apply|get|ipam show``, added to ``hcinet``'s sub-parsers."""
    grp = cli._group(sub, "calicoctl", "Calico's CLI: Calico policies, pools, endpoints, IPAM",
                     "calicoctl against a Calico cluster's API server (Kubernetes datastore).")

    def cluster_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cluster", metavar="NAME", help="the workload cluster (may be omitted when there is one)")

    p = cli._verb(grp, "apply", cmd_apply, "create or update Calico resources from a file (calicoctl apply)",
                  "Apply projectcalico.org/v3 NetworkPolicy, GlobalNetworkPolicy, IPPool and HostEndpoint\n"
                  "objects (and networking.k8s.io/v1 NetworkPolicy) from YAML/JSON files or directories.\n"
                  "Selectors are validated by the API server: a bad one is refused naming the field and\n"
                  "the position. Prints \"Successfully applied N 'KIND' resource(s)\".\n\n"
                  "Example:\n  hcinet calicoctl apply -f gnp.yaml")
    manifests.filename_args(p, stdin=False)
    cluster_flag(p)
    p = cli._verb(grp, "get", cmd_get, "list Calico resources with calicoctl's columns (calicoctl get)",
                  "KIND: networkpolicy (np), globalnetworkpolicy (gnp), ippool, workloadendpoint (wep),\n"
                  "hostendpoint (hep), node. Namespaced kinds (networkpolicy, workloadendpoint) take -n or\n"
                  "-A. -o wide adds calicoctl's wide columns; -o yaml|json prints the objects.\n\n"
                  "Examples:\n  hcinet calicoctl get gnp -o wide\n  hcinet calicoctl get wep -A\n"
                  "  hcinet calicoctl get ippool -o yaml")
    p.add_argument("kind", help="networkpolicy, globalnetworkpolicy, ippool, workloadendpoint, hostendpoint, node")
    p.add_argument("name", nargs="?", help="one object by name")
    p.add_argument("-n", "--namespace", help="the namespace of namespaced kinds (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-o", "--output", choices=("ps", "table", "wide", "yaml", "json"), default="ps",
                   help="ps (default: calicoctl's columns), wide, yaml or json")
    cluster_flag(p)
    ipam = cli._group(grp, "ipam", "Calico IPAM", "Calico IP address management.")
    p = cli._verb(ipam, "show", cmd_ipam_show, "IP pool usage, and with --show-blocks every block and its owner",
                  "calicoctl ipam show: per IP pool its addresses in total, in use and free; --show-blocks adds\n"
                  "a row per IPAM block (a /26 a node claimed) with its affinity host:<node>.")
    p.add_argument("--show-blocks", action="store_true", help="a row per block, with its affinity")
    cluster_flag(p)

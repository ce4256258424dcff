"""``hcinet policy matrix`` (who may reach whom, by the policy engine) and ``hcinet probe``
(who does reach whom, through the data plane).

``policy matrix`` evaluates :class:`agents.policy.engine.PolicyEngine` — the engine the node
VMs' Felix runs — over Namespaces, Pods, workloads and policies, for the given ports:

* ``-f PATH`` (repeatable, files or directories, ``-R`` for sub-directories): manifests read as
  ``kubectl apply`` reads them (multi-document YAML or JSON, ``kind: List``, ``status: {}``,
  ``creationTimestamp: null``); no deployment is needed and Calico's semantics apply.  A
  Deployment (any workload with a pod template) is one representative pod named after it, with
  the template's labels and named ports, in the workload's namespace; a namespaced object
  without ``metadata.namespace`` is in ``default``; a namespace that is referenced but not
  declared exists with just its ``kubernetes.io/metadata.name`` label; a pod has an address
  only when ``status.podIP``/``status.podIPs`` gives one (so ipBlock rules match it only then).
* without ``-f``: the live cluster's Namespaces, Pods (``status.podIPs``), Kubernetes and Calico
  NetworkPolicies and GlobalNetworkPolicies, read through its API server.  A Flannel cluster
  stores policies but does not enforce them: every verdict is allowed and a line says why.

``probe`` opens real connections between every pair of live pods (the node VM verb
``pod_probe``, :mod:`agents.node.probe`) and reports what the sockets saw, in the same JSON
shape.  It never imports :mod:`agents.policy`: its verdicts come from the data plane alone.

``-o json`` prints only ``{"pods": [...], "verdicts": [{"src", "dst", "port", "protocol",
"allowed"}, ...]}`` on stdout (one verdict per ordered pair of distinct participants and port;
``--external IP`` adds ``ip:ADDR`` participants, not listed in ``pods``).
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scenarios import cli, manifests

PROTOCOLS = ("TCP", "UDP", "SCTP")
METADATA_NAME = "kubernetes.io/metadata.name"
K8S_POLICY = ("networking.k8s.io/v1", "NetworkPolicy")
CALICO_API = "projectcalico.org/v3"
CALICO_POLICY_KINDS = ("NetworkPolicy", "GlobalNetworkPolicy")
# Workloads whose pod template stands for their pods (one representative pod each).
WORKLOADS = {("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"), ("apps/v1", "StatefulSet"),
             ("apps/v1", "DaemonSet"), ("v1", "ReplicationController"), ("batch/v1", "Job"),
             ("batch/v1", "CronJob")}
FLANNEL_NOTE = "cluster {cluster} uses flannel: network policy is not enforced (every verdict is allowed)"


class LoadError(Exception):
    """A manifest that cannot be read: one line naming the file and the field."""


# --- argument types ---------------------------------------------------------------------------

def port_arg(text: str) -> tuple[int, str]:
    """``80/TCP``, ``53/udp``, ``9000/SCTP`` or ``80`` (TCP, as a policy port without protocol)."""
    number, _, proto = text.strip().partition("/")
    proto = (proto or "TCP").upper()
    if proto not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"{text!r}: protocol must be TCP, UDP or SCTP")
    try:
        port = int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PORT/PROTOCOL, e.g. 80/TCP") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be 1-65535")
    return port, proto


def ip_arg(text: str) -> str:
    """Any IP literal (``0.0.0.0``, ``255.255.255.255``, IPv6 included), canonical."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise argparse.ArgumentTypeError(f"{text!r}: a scoped address (%zone) is a link's, not a peer a "
                                         "policy can name; give the address alone")
    return str(ip)


# --- the inventory: what the matrix is computed over --------------------------------------------

@dataclass
class PodInfo:
    namespace: str
    name: str
    labels: dict[str, str]
    ips: list[str]
    ports: list[tuple[str, str, int]]  # named container ports (name, protocol, number)
    node: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Inventory:
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # declared ones: their labels
    pods: dict[str, PodInfo] = field(default_factory=dict)
    policies: dict[tuple[str, str, str], Any] = field(default_factory=dict)  # Policy by key

    def all_namespaces(self) -> dict[str, dict[str, str]]:
        """Declared namespaces, plus those pods and policies are in (just the name label)."""
        out = {ns: {**labels, METADATA_NAME: ns} for ns, labels in self.namespaces.items()}
        for ns in [p.namespace for p in self.pods.values()] + [k[1] for k in self.policies if k[1]]:
            out.setdefault(ns, {METADATA_NAME: ns})
        return out

    def pod_keys(self) -> list[str]:
        return sorted(self.pods)


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _labels(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LoadError(f"{where}: expected a map of labels")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(v, dict | list):
            raise LoadError(f"{where}.{k}: a label value must be a string")
        out[k] = "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
    return out


PROTOCOLS = ("TCP", "UDP", "SCTP")


def _list_of(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise LoadError(f"{where}: expected a list")
    return value


def _named_ports(pod_spec: Any, where: str) -> list[tuple[str, str, int]]:
    """The named container ports of a pod spec, checked as the API server checks them."""
    out: list[tuple[str, str, int]] = []
    if pod_spec is not None and not isinstance(pod_spec, dict):
        raise LoadError(f"{where}: expected an object")
    spec = pod_spec or {}
    for i, c in enumerate(_list_of(spec.get("containers"), f"{where}.containers")):
        if not isinstance(c, dict):
            raise LoadError(f"{where}.containers[{i}]: expected an object")
        for j, p in enumerate(_list_of(c.get("ports"), f"{where}.containers[{i}].ports")):
            at = f"{where}.containers[{i}].ports[{j}]"
            if not isinstance(p, dict):
                raise LoadError(f"{at}: expected an object")
            number = p.get("containerPort")
            if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
                raise LoadError(f"{at}.containerPort: expected an integer 1-65535, got {number!r}")
            protocol = p.get("protocol") or "TCP"
            if protocol not in PROTOCOLS:
                raise LoadError(f'{at}.protocol: Unsupported value: {protocol!r}: supported values: "SCTP", "TCP", "UDP"')
            if p.get("name"):
                out.append((str(p["name"]), protocol, number))
    return out


def _pod_ips(status: Any, where: str) -> list[str]:
    if status is not None and not isinstance(status, dict):
        raise LoadError(f"{where}: status: expected an object")
    st = status or {}
    raw: list[Any] = [e.get("ip") if isinstance(e, dict) else e
                      for e in _list_of(st.get("podIPs"), f"{where}: status.podIPs")]
    if not raw and st.get("podIP"):
        raw = [st["podIP"]]
    ips: list[str] = []
    for i, ip in enumerate(raw):
        try:
            text = str(ipaddress.ip_address(str(ip)))
        except ValueError:
            field_name = f"status.podIPs[{i}].ip" if st.get("podIPs") else "status.podIP"
            raise LoadError(f"{where}: {field_name}: {ip!r} is not an IP address") from None
        if text not in ips:
            ips.append(text)
    return ips


def _policy_of(obj: dict[str, Any], where: str) -> Any:
    from agents.policy.model import policy_from_object

    try:
        return policy_from_object(obj)
    except ValueError as exc:  # PolicyError, SelectorError: the field (and position) named
        raise LoadError(f"{where}: {exc}") from None


def add_object(inv: Inventory, obj: Any, source: str, *, live: bool = False) -> None:
    """One document of a manifest (or one live object) into the inventory."""
    if not isinstance(obj, dict):
        raise LoadError(f"{source}: a document must be a map (an object with apiVersion and kind)")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not kind or not isinstance(kind, str):
        raise LoadError(f"{source}: Object 'Kind' is missing")
    if not api_version or not isinstance(api_version, str):
        raise LoadError(f"{source}: {kind}: Object 'apiVersion' is missing")
    meta = _meta(obj)
    name = meta.get("name")
    gvk = (api_version, kind)
    relevant = (gvk in (("v1", "Namespace"), ("v1", "Pod"), K8S_POLICY) or gvk in WORKLOADS
                or (api_version == CALICO_API and kind in CALICO_POLICY_KINDS))
    if not relevant:
        return  # Services, ConfigMaps...: what kubectl applies but the matrix does not need
    if not isinstance(name, str) or not name:
        raise LoadError(f"{source}: {kind}: metadata.name: Required value")
    cluster_scoped = kind in ("Namespace", "GlobalNetworkPolicy")
    namespace = None if cluster_scoped else str(meta.get("namespace") or "default")
    where = f"{source}: {kind} {namespace + '/' if namespace else ''}{name}"
    if kind == "Namespace":
        inv.namespaces[name] = _labels(meta.get("labels"), f"{where}: metadata.labels")
    elif kind == "Pod":
        spec: dict[str, Any] = obj["spec"] if isinstance(obj.get("spec"), dict) else {}
        if live and spec.get("hostNetwork"):
            return  # a host-network pod is the node's endpoint, not a workload endpoint
        assert namespace is not None
        inv.pods[f"{namespace}/{name}"] = PodInfo(
            namespace, name, _labels(meta.get("labels"), f"{where}: metadata.labels"),
            _pod_ips(obj.get("status"), where), _named_ports(spec, f"{where}: spec"),
            node=str(spec.get("nodeName")) if spec.get("nodeName") else None)
    elif gvk in WORKLOADS:
        assert namespace is not None
        wspec: dict[str, Any] = obj["spec"] if isinstance(obj.get("spec"), dict) else {}
        path = "spec.template"
        if kind == "CronJob":
            job = wspec.get("jobTemplate") or {}
            if not isinstance(job, dict):
                raise LoadError(f"{where}: spec.jobTemplate: expected an object")
            wspec = job.get("spec") or {}
            if not isinstance(wspec, dict):
                raise LoadError(f"{where}: spec.jobTemplate.spec: expected an object")
            path = "spec.jobTemplate.spec.template"
        template: dict[str, Any] = wspec["template"] if isinstance(wspec.get("template"), dict) else {}
        inv.pods[f"{namespace}/{name}"] = PodInfo(
            namespace, name, _labels(_meta(template).get("labels"), f"{where}: {path}.metadata.labels"),
            [], _named_ports(template.get("spec"), f"{where}: {path}.spec"))
    else:  # a policy: Kubernetes or Calico
        body = copy.deepcopy(obj)
        body.setdefault("metadata", {})
        if namespace is not None:
            body["metadata"]["namespace"] = namespace
        policy = _policy_of(body, where)
        inv.policies[policy.key] = policy


def load_manifests(paths: Sequence[str], recursive: bool = False) -> Inventory:
    """``-f`` sources → an inventory; the first problem as a :class:`LoadError`."""
    from scenarios.manifests import read_sources

    docs, errors = read_sources(paths, recursive)
    if errors:
        raise LoadError(errors[0].removeprefix("error: "))
    inv = Inventory()
    for doc in docs:
        add_object(inv, doc.obj, doc.source)
    return inv


# --- the matrix ---------------------------------------------------------------------------------

def build_engine(inv: Inventory, *, enforce: bool = True) -> Any:
    """The policy engine over the inventory (``enforce`` False: no policies, as on Flannel)."""
    from agents.policy.engine import Endpoint, PolicyEngine

    engine = PolicyEngine()
    for ns, labels in inv.all_namespaces().items():
        engine.set_namespace(ns, labels)
    for pod in inv.pods.values():
        engine.set_endpoint(Endpoint(key=pod.key, namespace=pod.namespace, labels=dict(pod.labels),
                                     ips=list(pod.ips), ports=list(pod.ports), node=pod.node))
    if enforce:
        for policy in inv.policies.values():
            engine.set_policy(policy)
    return engine


def matrix(inv: Inventory, ports: Sequence[tuple[int, str]], externals: Sequence[str] = (), *,
           enforce: bool = True) -> dict[str, Any]:
    from agents.policy.matrix import reachability

    doc: dict[str, Any] = reachability(build_engine(inv, enforce=enforce), inv.pod_keys(), list(ports),
                                       list(externals))
    return doc


def render_table(doc: Mapping[str, Any], ports: Sequence[tuple[int, str]]) -> str:
    """A matrix per port: rows the source, columns the destination (by number)."""
    participants = list(doc.get("pods") or [])
    for v in doc.get("verdicts") or []:
        for p in (v["src"], v["dst"]):
            if p not in participants:
                participants.append(p)
    index = {p: i + 1 for i, p in enumerate(participants)}
    by = {(v["src"], v["dst"], int(v["port"]), str(v["protocol"])): bool(v["allowed"])
          for v in doc.get("verdicts") or []}
    out = ["legend: rows = source (from), columns = destination (to) by number; "
           "✓ allowed, ✗ denied, · same participant"]
    if not participants:
        return "\n".join([*out, "no pods"])
    num_w = len(str(len(participants)))
    label_w = max(len(f"{index[p]:>{num_w}} {p}") for p in participants)
    cell_w = max(2, num_w)
    for port, proto in ports:
        cells = [v for k, v in by.items() if k[2] == port and k[3] == proto]
        out.append("")
        out.append(f"{port}/{proto}: {sum(cells)} of {len(cells)} allowed")
        out.append(" " * label_w + "  " + " ".join(str(index[p]).rjust(cell_w) for p in participants))
        for src in participants:
            row = []
            for dst in participants:
                mark = "·" if src == dst else ("✓" if by.get((src, dst, port, proto)) else "✗")
                row.append(mark.rjust(cell_w))
            out.append(f"{index[src]:>{num_w}} {src}".ljust(label_w) + "  " + " ".join(row))
    return "\n".join(out)


def emit(doc: dict[str, Any], ports: Sequence[tuple[int, str]], output: str, notes: Iterable[str] = ()) -> None:
    notes = list(notes)
    if output == "json":
        for line in notes:
            sys.stderr.write(f"{line}\n")
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    for line in notes:
        sys.stdout.write(f"{line}\n")
    sys.stdout.write(render_table(doc, ports) + "\n")


# --- live cluster -------------------------------------------------------------------------------

LIVE_PATHS = (  # (path, apiVersion, kind, required)
    ("/api/v1/namespaces", "v1", "Namespace", True),
    ("/api/v1/pods", "v1", "Pod", True),
    ("/apis/networking.k8s.io/v1/networkpolicies", "networking.k8s.io/v1", "NetworkPolicy", True),
    # absent (404) where the Calico API is not served
    (f"/apis/{CALICO_API}/networkpolicies", CALICO_API, "NetworkPolicy", False),
    (f"/apis/{CALICO_API}/globalnetworkpolicies", CALICO_API, "GlobalNetworkPolicy", False),
)


async def _list(api: Any, path: str, required: bool) -> list[dict[str, Any]]:
    from scenarios.aks import items_of
    from scenarios.manifests import status_error

    status, body = await api("GET", path, None, None)
    if status == 404 and not required:
        return []
    if status >= 400:
        raise cli.CliError(f"GET {path}: {status_error(status, body)}")
    return items_of(body)


def live_pod_ok(obj: Mapping[str, Any]) -> bool:
    """A pod the live verbs consider: scheduled, with an address, not finished, not host network."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if spec.get("hostNetwork") or not spec.get("nodeName"):
        return False
    if status.get("phase") in ("Succeeded", "Failed") or (obj.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return bool(status.get("podIP") or status.get("podIPs"))


async def live_inventory(api: Any, namespace: str | None = None) -> Inventory:
    inv = Inventory()
    for path, api_version, kind, required in LIVE_PATHS:
        for obj in await _list(api, path, required):
            if kind == "Pod" and (not live_pod_ok(obj) or (namespace and _meta(obj).get("namespace") != namespace)):
                continue
            obj = {**obj, "apiVersion": obj.get("apiVersion") or api_version, "kind": obj.get("kind") or kind}
            try:
                add_object(inv, obj, f"the cluster's {kind} objects", live=True)
            except LoadError as exc:  # the API server validated it; one it cannot read is skipped, said
                sys.stderr.write(f"warning: {exc}\n")
    return inv


async def cluster_plugin(ns: argparse.Namespace, cluster: str) -> str:
    from scenarios import aks

    for c in await aks.clusters(ns):
        if c.get("name") == cluster:
            return str(c.get("primaryNetworkPlugin") or "calico").lower()
    return "calico"


# --- the live probe (never the policy engine: what the sockets saw) ---------------------------

PROBE_CALL_MARGIN = 15.0  # seconds on top of the probe's own wait for the management call


@dataclass(frozen=True)
class _Live:
    key: str
    node: str
    ip: str


async def probe_cluster(ns: argparse.Namespace, api: Any, ports: Sequence[tuple[int, str]], *,
                        namespace: str | None = None, timeout: float | None = None
                        ) -> tuple[dict[str, Any], list[str]]:
    """One ``pod_probe`` per source pod on its node VM, all at once; the matrix JSON shape."""
    import trio

    from agents import triozmq
    from scenarios import runner

    pods = []
    for obj in await _list(api, "/api/v1/pods", True):
        meta = _meta(obj)
        if not live_pod_ok(obj) or (namespace and meta.get("namespace") != namespace):
            continue
        status = obj.get("status") or {}
        ip = status.get("podIP") or ((status.get("podIPs") or [{}])[0] or {}).get("ip")
        pods.append(_Live(f"{meta.get('namespace')}/{meta.get('name')}", str(obj["spec"]["nodeName"]), str(ip)))
    pods.sort(key=lambda p: p.key)
    _, agent = await runner.require_running(ns.deployment)
    results: dict[str, list[bool]] = {}
    errors: list[str] = []

    async def one(src: _Live) -> None:
        targets = [[dst.ip, port, proto] for port, proto in ports for dst in pods if dst.key != src.key]
        if not targets:
            results[src.key] = []
            return
        namespace_, _, name = src.key.partition("/")
        args: dict[str, Any] = {"namespace": namespace_, "name": name, "targets": targets}
        if timeout is not None:
            args["timeout"] = timeout
        try:
            endpoint = await runner.endpoint_of(agent, src.node)
            async with triozmq.TrioMgmtClient(endpoint) as client:
                reply = await client.call("pod_probe", args, timeout=(timeout or 5.0) + PROBE_CALL_MARGIN)
        except Exception as exc:  # unreachable node VM, refused verb, timeout: one line for the user
            errors.append(f"probe from {src.key} (node {src.node}): {str(exc).splitlines()[0] if str(exc) else exc!r}")
            return
        results[src.key] = [bool(r.get("allowed")) if isinstance(r, dict) else bool(r)
                            for r in (reply.get("results") or [])]

    async with trio.open_nursery() as nursery:
        for src in pods:
            nursery.start_soon(one, src)
    if errors:
        raise cli.CliError(errors[0])
    verdicts = []
    for src in pods:
        got = iter(results.get(src.key) or [])  # in the order the targets were sent: port, then dst
        answered = {(port, proto, dst.key): next(got, False)
                    for port, proto in ports for dst in pods if dst.key != src.key}
        # listed as the matrix lists them: by source, destination, then port
        verdicts += [{"src": src.key, "dst": dst.key, "port": port, "protocol": proto,
                      "allowed": answered[(port, proto, dst.key)]}
                     for dst in pods if dst.key != src.key for port, proto in ports]
    return {"pods": [p.key for p in pods], "verdicts": verdicts}, []


# --- commands -----------------------------------------------------------------------------------

def _ports(ns: argparse.Namespace) -> list[tuple[int, str]]:
    return list(dict.fromkeys(ns.port))


async def cmd_matrix(ns: argparse.Namespace) -> int:
    ports = _ports(ns)
    externals = list(dict.fromkeys(ns.external or []))
    if ns.filename:
        if ns.cluster:
            raise cli.CliError("--cluster and -f exclude each other (-f computes from the manifests alone)")
        try:
            inv = load_manifests(ns.filename, ns.recursive)
            doc = matrix(inv, ports, externals)
        except LoadError as exc:
            raise cli.CliError(str(exc)) from None
        emit(doc, ports, ns.output)
        return 0
    from scenarios import aks

    cluster = await aks.pick_cluster(ns)
    ns.cluster = cluster
    api = await aks.cluster_api(ns)
    inv = await live_inventory(api, ns.namespace)
    plugin = await cluster_plugin(ns, cluster)
    notes = [FLANNEL_NOTE.format(cluster=cluster)] if plugin == "flannel" else []
    doc = matrix(inv, ports, externals, enforce=plugin != "flannel")
    emit(doc, ports, ns.output, notes)
    return 0


async def cmd_probe(ns: argparse.Namespace) -> int:
    from scenarios import aks

    ports = _ports(ns)
    cluster = await aks.pick_cluster(ns)
    ns.cluster = cluster
    api = await aks.cluster_api(ns)
    doc, notes = await probe_cluster(ns, api, ports, namespace=ns.namespace, timeout=ns.timeout)
    emit(doc, ports, ns.output, notes)
    return 0


def add_parsers(sub: Any) -> None:
    """``policy matrix`` and ``probe``, added to ``hcinet``'s sub-parsers."""
    grp = cli._group(sub, "policy", "network policy: the reachability matrix",
                     "Network policy commands.")
    p = cli._verb(grp, "matrix", cmd_matrix, "who may reach whom: the policy verdict per pod pair and port",
                  "Evaluate the policy engine the data plane uses (Calico's semantics: Kubernetes and\n"
                  "projectcalico.org/v3 policies, by order) for every ordered pair of pods and every --port:\n"
                  "the verdict for a new connection, whether or not anything listens there.\n\n"
                  "With -f: Namespaces, Pods, Deployments (one representative pod each, named after the\n"
                  "Deployment) and policies from manifests, as kubectl apply reads them; no deployment is\n"
                  "needed. A pod has an address only when status.podIP is given (ipBlock rules match only\n"
                  "then). Without -f: the live cluster's objects and pod IPs; a Flannel cluster does not\n"
                  "enforce policy, so every verdict is allowed (a line says so).\n\n"
                  "-o json prints only {\"pods\": [...], \"verdicts\": [{\"src\", \"dst\", \"port\", \"protocol\",\n"
                  "\"allowed\"}, ...]}; --external IP adds ip:IP as source and destination.\n\n"
                  "Examples:\n  hcinet policy matrix -f manifests/ --port 80/TCP --port 53/UDP\n"
                  "  hcinet policy matrix -f app.yaml -f policies/ --port 80/TCP --external 8.8.8.8 -o json\n"
                  "  hcinet policy matrix --cluster cluster1 --port 80/TCP")
    manifests.filename_args(p, stdin=False)
    p.add_argument("--port", type=port_arg, action="append", required=True, metavar="PORT/PROTO",
                   help="a destination port, e.g. 80/TCP, 53/UDP, 9000/SCTP (repeatable; no protocol: TCP)")
    p.add_argument("--external", type=ip_arg, action="append", metavar="IP",
                   help="an address outside the cluster, as source and destination (repeatable)")
    p.add_argument("-n", "--namespace", help="live: only the pods of this namespace (default: every namespace)")
    p.add_argument("--cluster", metavar="NAME", help="live: the workload cluster (may be omitted when there is one)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   help="table (default: a matrix per port) or json (only the document on stdout)")

    p = cli._verb(sub, "probe", cmd_probe, "who does reach whom: real connections between every pod pair",
                  "Open a real connection from every live pod to every other pod on each --port, through\n"
                  "the data plane (CNI, policy, VXLAN), all at once with a short timeout scaled by the\n"
                  "scenario's time_scale, and print what the sockets saw in the 'policy matrix' shape:\n"
                  "allowed = the destination answered (TCP accepted or refused; UDP a reply or an ICMP port\n"
                  "unreachable; SCTP INIT-ACK, ABORT or ICMP), denied = no answer before the timeout.\n"
                  "A UDP server that never replies to a datagram reads as denied (agnhost netexec\n"
                  "answers 'hostname'; hcinet's generic responder echoes).\n\n"
                  "Examples:\n  hcinet probe --port 80/TCP -n prod\n  hcinet probe --cluster cluster1 --port 8080/TCP "
                  "--port 8081/UDP -o json")
    p.add_argument("--port", type=port_arg, action="append", required=True, metavar="PORT/PROTO",
                   help="a destination port, e.g. 80/TCP (repeatable)")
    p.add_argument("-n", "--namespace", help="only the pods of this namespace (default: every namespace)")
    p.add_argument("--cluster", metavar="NAME", help="the workload cluster (may be omitted when there is one)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="per-connection wait (default: 2 s scaled by time_scale, at least 0.25 s)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   help="table (default) or json (only the document on stdout)")

    from scenarios import calicoctl

    calicoctl.add_parsers(sub)

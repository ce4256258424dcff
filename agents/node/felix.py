"""Felix's role in the node VM: the policy engine fed from the API server, enforced on the veths.

calico-node's Felix watches the policy model (Kubernetes NetworkPolicies through Calico's
conversion, ``projectcalico.org/v3`` NetworkPolicies and GlobalNetworkPolicies, HostEndpoints)
and the endpoints (every pod of the cluster: the IP sets of selectors need all of them;
Namespaces for namespaceSelectors and the profiles; Nodes for host endpoints), computes each
local workload's ordered policy list and programs ``cali-tw-*`` / ``cali-fw-*`` chains.  Here
the same objects feed :class:`agents.policy.engine.PolicyEngine` and the node datapath's
``policy`` hook is :meth:`agents.policy.enforcer.PolicyEnforcer.hook` (docs/contracts-policy.md).

:class:`Felix` is the translation layer (API objects → engine calls), synchronous and free
of I/O: each watch event is applied inside the informer's callback, so a decision taken by
the next packet — in the same event-loop turn — already follows it.  A malformed object is
logged and skipped (the previous version of that object, if any, is dropped: Felix never
enforces a policy it cannot read as written).  Programming latency is the API server's
``committedAt`` of a policy change to the moment the engine holds it, on one
``time.perf_counter`` clock (agents/kubeproxy/latency.py).

Flannel nodes run no Felix: Flannel does not enforce network policy (docs: "Flannel ... does
not support network policy"), which the node's ``policy`` verb says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from agents.kubeproxy.latency import ProgrammingLatency
from agents.policy.enforcer import PolicyEnforcer
from agents.policy.engine import Endpoint, PolicyEngine
from agents.policy.model import from_calico, from_kubernetes

log = logging.getLogger("hcinet.node.felix")

__all__ = ["FAILSAFE_INBOUND", "FAILSAFE_OUTBOUND", "FLANNEL_VERB", "WATCHES", "Felix", "HostEndpointGuard",
           "pod_endpoint"]

# (informer name, path, kind handled): what Felix watches (docs/contracts-policy.md)
WATCHES: tuple[tuple[str, str, str], ...] = (
    ("felix-namespaces", "/api/v1/namespaces", "Namespace"),
    ("felix-nodes", "/api/v1/nodes", "Node"),
    ("felix-pods", "/api/v1/pods", "Pod"),
    ("felix-hostendpoints", "/apis/projectcalico.org/v3/hostendpoints", "HostEndpoint"),
    ("felix-knp", "/apis/networking.k8s.io/v1/networkpolicies", "NetworkPolicy"),
    ("felix-cnp", "/apis/projectcalico.org/v3/networkpolicies", "CalicoNetworkPolicy"),
    ("felix-gnp", "/apis/projectcalico.org/v3/globalnetworkpolicies", "GlobalNetworkPolicy"),
)
FLANNEL_VERB = {"enforcing": False, "reason": "flannel does not enforce network policy"}
# Felix's FailsafeInboundHostPorts / FailsafeOutboundHostPorts defaults: (protocol, port) a host
# endpoint's policy can never block, so a node cannot be cut off from its datastore and SSH.
FAILSAFE_INBOUND = frozenset({(6, 22), (17, 68), (6, 179), (6, 2379), (6, 2380), (6, 5473), (6, 6443),
                              (6, 6666), (6, 6667)})
FAILSAFE_OUTBOUND = frozenset({(17, 53), (17, 67), (6, 179), (6, 2379), (6, 2380), (6, 5473), (6, 6443),
                               (6, 6666), (6, 6667)})
VXLAN_PORT = 4789
TERMINAL = ("Succeeded", "Failed")

Obj = Mapping[str, Any]


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _labels(obj: Obj) -> dict[str, str]:
    labels = _meta(obj).get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def _obj_key(obj: Obj) -> str:
    meta = _meta(obj)
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def pod_endpoint(pod: Obj) -> Endpoint | None:
    """A Pod → its workload endpoint; None for a pod that has none (host network: the node's
    own address; finished pods: their address is gone)."""
    meta, spec, status = _meta(pod), pod.get("spec") or {}, pod.get("status") or {}
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        raise ValueError("spec/status: expected objects")
    name, ns = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(ns, str) or not name or not ns:
        raise ValueError("metadata: a pod needs a name and a namespace")
    if spec.get("hostNetwork") or status.get("phase") in TERMINAL:
        return None
    ips = [str(p.get("ip")) for p in status.get("podIPs") or () if isinstance(p, Mapping) and p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    ports: list[tuple[str, str, int]] = []
    for c in spec.get("containers") or ():
        for p in (c.get("ports") or ()) if isinstance(c, Mapping) else ():
            if isinstance(p, Mapping) and p.get("name") and isinstance(p.get("containerPort"), int):
                ports.append((str(p["name"]), str(p.get("protocol") or "TCP"), int(p["containerPort"])))
    node = spec.get("nodeName")
    return Endpoint(key=f"{ns}/{name}", namespace=ns, labels=_labels(pod), ips=ips, ports=ports,
                    node=str(node) if node else None)


def node_addresses(node: Obj) -> list[str]:
    status = node.get("status") or {}
    return [str(a["address"]) for a in (status.get("addresses") or ()) if isinstance(a, Mapping)
            and a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")]


class Felix:
    """API objects → :class:`PolicyEngine`; the enforcer on Calico nodes (see the module docstring).

    ``clock``: ``time.perf_counter`` (the clock of the watch events' ``committedAt``).
    """

    def __init__(self, node: str, *, local_ips: Iterable[str], clock: Callable[[], float],
                 enforce: bool = True, forwarded_snat: Callable[[tuple[Any, ...]], bool] | None = None) -> None:
        self.node = node
        self.clock = clock
        self.local_ips = frozenset(local_ips)  # the node's own addresses
        self.engine = PolicyEngine()
        self.enforcer: PolicyEnforcer | None = (
            PolicyEnforcer(self.engine, local_ips=self.local_ips, forwarded_snat=forwarded_snat)
            if enforce else None)
        self.latency = ProgrammingLatency()
        self.counts: dict[str, int] = {"events": 0, "malformed": 0, "policies": 0, "endpoints": 0,
                                       "host_endpoints": 0, "namespaces": 0}
        self.errors: dict[str, str] = {}  # object key -> why it was skipped (the newest ones)
        self._policy_keys: dict[tuple[str, str], tuple[str, str, str]] = {}  # (kind, obj key) -> engine key
        self._pods: set[str] = set()
        self._namespaces: set[str] = set()
        self._nodes: dict[str, Obj] = {}
        self._heps: dict[str, Obj] = {}  # HostEndpoint name -> object
        self._hep_keys: set[str] = set()
        # called with whether this node has a host endpoint, after each change (HostEndpointGuard)
        self.on_host_endpoint: Callable[[bool], None] | None = None

    # -- the informers' callbacks ---------------------------------------------------------------

    def handle(self, kind: str, obj: Obj | None, *, deleted: bool = False, committed_at: float | None = None) -> None:
        """One watch event of ``kind`` (a name of :data:`WATCHES`); never raises."""
        if obj is None:
            return
        self.counts["events"] += 1
        try:
            if kind in ("NetworkPolicy", "CalicoNetworkPolicy", "GlobalNetworkPolicy"):
                self._policy(kind, obj, deleted)
                if committed_at is not None:
                    self.latency.record(committed_at, self.clock())
            elif kind == "Pod":
                self._pod(obj, deleted)
            elif kind == "Namespace":
                self._namespace(obj, deleted)
            elif kind == "Node":
                self._node(obj, deleted)
            elif kind == "HostEndpoint":
                self._hostendpoint(obj, deleted)
            else:
                raise ValueError(f"unknown kind {kind}")
        except Exception as exc:  # a malformed object is skipped, never the node's end
            self.counts["malformed"] += 1
            key = f"{kind} {_obj_key(obj) if isinstance(obj, Mapping) else '?'}"
            self.errors[key] = f"{type(exc).__name__}: {exc}"
            while len(self.errors) > 50:
                del self.errors[next(iter(self.errors))]
            log.warning("felix %s: skipping %s: %s", self.node, key, exc)

    def _policy(self, kind: str, obj: Obj, deleted: bool) -> None:
        okey = (kind, _obj_key(obj))
        old = self._policy_keys.pop(okey, None)
        if old is not None:
            self.engine.delete_policy(old)
        if deleted:
            self.errors.pop(f"{kind} {okey[1]}", None)
            self.counts["policies"] = len(self._policy_keys)
            return
        policy = from_kubernetes(obj) if kind == "NetworkPolicy" else from_calico(obj)
        self.engine.set_policy(policy)
        self._policy_keys[okey] = policy.key
        self.errors.pop(f"{kind} {okey[1]}", None)
        self.counts["policies"] = len(self._policy_keys)

    def _pod(self, obj: Obj, deleted: bool) -> None:
        key = _obj_key(obj)
        ep = None if deleted else pod_endpoint(obj)
        if ep is None:
            if key in self._pods:
                self._pods.discard(key)
                self.engine.delete_endpoint(key)
            if deleted and self.enforcer is not None:
                self.enforcer.forget_pod(key)
        else:
            self.engine.set_endpoint(ep)
            self._pods.add(key)
        self.counts["endpoints"] = len(self._pods)

    def _namespace(self, obj: Obj, deleted: bool) -> None:
        name = str(_meta(obj).get("name") or "")
        if not name:
            raise ValueError("metadata.name: required")
        if deleted:
            self.engine.delete_namespace(name)
        else:
            self.engine.set_namespace(name, _labels(obj))
        (self._namespaces.discard if deleted else self._namespaces.add)(name)
        self.counts["namespaces"] = len(self._namespaces)

    def _node(self, obj: Obj, deleted: bool) -> None:
        name = str(_meta(obj).get("name") or "")
        if deleted:
            self._nodes.pop(name, None)
        else:
            self._nodes[name] = obj
        self._sync_host_endpoints()

    def _hostendpoint(self, obj: Obj, deleted: bool) -> None:
        name = str(_meta(obj).get("name") or "")
        if not name:
            raise ValueError("metadata.name: required")
        spec = obj.get("spec") or {}
        if not deleted and (not isinstance(spec, Mapping) or not spec.get("node")):
            raise ValueError("spec.node: required")
        if deleted:
            self._heps.pop(name, None)
        else:
            self._heps[name] = obj
        self._sync_host_endpoints()

    def _sync_host_endpoints(self) -> None:
        """One engine endpoint ``host:<node>`` per node with HostEndpoints: their labels, their
        ``expectedIPs`` (or the node's addresses for an interface-only HostEndpoint), ports."""
        merged: dict[str, Endpoint] = {}
        for name in sorted(self._heps):
            hep = self._heps[name]
            spec = hep.get("spec") or {}
            node = str(spec.get("node"))
            ips = [str(ip) for ip in spec.get("expectedIPs") or ()]
            if not ips:
                ips = node_addresses(self._nodes.get(node) or {})
            ports = [(str(p["name"]), str(p.get("protocol") or "TCP"), int(p["port"]))
                     for p in spec.get("ports") or () if isinstance(p, Mapping) and p.get("name") and p.get("port")]
            ep = merged.setdefault(node, Endpoint(key=f"host:{node}", namespace=None, labels={}, ips=[],
                                                  ports=[], node=node, host=True))
            ep.labels.update(_labels(hep))
            ep.ips.extend(ip for ip in ips if ip not in ep.ips)
            ep.ports.extend(ports)
        for key in self._hep_keys - {ep.key for ep in merged.values()}:
            self.engine.delete_endpoint(key)
        for ep in merged.values():
            self.engine.set_endpoint(ep)
        self._hep_keys = {ep.key for ep in merged.values()}
        self.counts["host_endpoints"] = len(self._hep_keys)
        if self.on_host_endpoint is not None:
            self.on_host_endpoint(f"host:{self.node}" in self._hep_keys)

    # -- the enforcer's timers (conntrack expiry), driven by the datapath stack's timer -----------

    def next_deadline(self) -> float | None:
        return self.enforcer.next_deadline() if self.enforcer is not None else None

    def expire(self, now: float) -> None:
        if self.enforcer is not None:
            self.enforcer.expire(now)

    # -- the management verb -----------------------------------------------------------------

    def stats(self, local_pods: Iterable[str] = (), *, latency_samples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "enforcing": self.enforcer is not None, "generation": self.engine.generation,
            "counts": dict(self.counts), "latency": self.latency.stats(),
            "malformed": dict(self.errors),
        }
        if self.enforcer is not None:
            out["enforcer"] = self.enforcer.stats()
        endpoints: dict[str, Any] = {}
        for key in local_pods:
            try:
                endpoints[key] = self.engine.policies_for(key)
            except KeyError:
                endpoints[key] = None
        out["endpoints"] = endpoints
        if latency_samples:
            out["latency_samples_ms"] = self.latency.samples()
        return out


class _HostSide:
    """What the enforcer needs of the endpoint it polices: the host endpoint's key (its
    addresses are the node's own, never "local pod" senders)."""

    __slots__ = ("key", "ips")

    def __init__(self, key: str) -> None:
        self.key = key
        self.ips: list[str] = []


class HostEndpointGuard:
    """The node's own traffic under its host endpoint's policy (Calico's ``cali-INPUT`` /
    ``cali-OUTPUT`` host-endpoint chains), as root-stack ``INPUT`` / ``OUTPUT`` hooks.

    Nothing is policed until a HostEndpoint names this node: only then does the guard put its
    hooks in the root stack's ``INPUT`` / ``OUTPUT`` lists (Felix tells it when this node's host
    endpoint comes and goes), so a node without one pays nothing per packet.  Then, before any
    policy: traffic from or to this node's pods passes (Felix's
    ``DefaultEndpointToHostAction: ACCEPT``, and the host always reaches its workloads), so
    does the VXLAN overlay between nodes (Felix accepts VXLAN from the cluster's hosts) and the
    failsafe ports (inbound by destination port, outbound likewise, and their replies by
    source port).  The rest goes through the enforcer as the endpoint ``host:<node>``:
    conntrack, the engine's decision (a host endpoint no policy applies to is denied).
    Forwarded traffic (pods, NodePorts) is not a host endpoint's business here (no
    ``applyOnForward`` / ``preDNAT``).
    """

    def __init__(self, felix: Felix, pod_ips: Callable[[str], bool],
                 hooks: MutableMapping[str, list[Any]]) -> None:
        if felix.enforcer is None:
            raise ValueError("a host endpoint guard needs an enforcing Felix (Calico)")
        self.felix = felix
        self.key = f"host:{felix.node}"
        self._enforcer = felix.enforcer
        self._side = _HostSide(self.key)
        self._is_local_pod = pod_ips
        self._hooks = hooks
        self.attached = False
        self.counters = {"input_checked": 0, "output_checked": 0, "failsafe": 0, "dropped": 0}
        felix.on_host_endpoint = self._host_endpoint

    def _host_endpoint(self, present: bool) -> None:
        """This node's HostEndpoint appeared (hooks in) or went (hooks out)."""
        if present == self.attached:
            return
        for point, hook in (("INPUT", self.input), ("OUTPUT", self.output)):
            (self._hooks[point].append if present else self._hooks[point].remove)(hook)
        self.attached = present

    def _exempt(self, peer: str, pkt: tuple[Any, ...], own: frozenset[tuple[int, int]],
                other: frozenset[tuple[int, int]]) -> bool:
        proto = pkt[2]
        if proto == 6 or proto == 17:
            if (proto, pkt[5]) in own or (proto, pkt[4]) in other:
                self.counters["failsafe"] += 1
                return True
            if proto == 17 and (pkt[5] == VXLAN_PORT or pkt[4] == VXLAN_PORT):
                return True
        return self._is_local_pod(peer) or peer in self.felix.local_ips

    def input(self, pkt: tuple[Any, ...], now: float) -> tuple[Any, ...] | None:
        if self._exempt(pkt[0], pkt, FAILSAFE_INBOUND, FAILSAFE_OUTBOUND):
            return pkt
        self.counters["input_checked"] += 1
        out = self._enforcer.hook(self._side, "ingress", pkt, now)
        if out is None:
            self.counters["dropped"] += 1
        return out

    def output(self, pkt: tuple[Any, ...], now: float) -> tuple[Any, ...] | None:
        if self._exempt(pkt[1], pkt, FAILSAFE_OUTBOUND, FAILSAFE_INBOUND):
            return pkt
        self.counters["output_checked"] += 1
        out = self._enforcer.hook(self._side, "egress", pkt, now)
        if out is None:
            self.counters["dropped"] += 1
        return out

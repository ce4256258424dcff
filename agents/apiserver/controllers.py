"""Controllers that need only the store (kube-controller-manager's, run in the API server VM).

Sans-IO-ish: plain classes over a :class:`~.store.Store`, driven by the VM's loop with ``now``
(monotonic seconds) passed in; wall-clock timestamps written into objects come from ``clock``.

* :class:`NodeIpam` — the node IPAM controller (``--allocate-node-cidrs``, range allocator):
  every Node gets ``spec.podCIDR``/``podCIDRs`` = the lowest free ``10.244.N.0/24`` of the
  cluster CIDR (FACTS.md: pod CIDR 10.244.0.0/16, a /24 per node).  The allocation lives in
  the Node object itself, so it survives restarts; a deleted Node's /24 is free again.
* :class:`NodeLifecycle` — the node lifecycle controller: every ``node_monitor_period`` it
  looks at each Node's Lease (``kube-node-lease/<node>``) and Ready condition heartbeat; a node
  whose heartbeat has not CHANGED for ``node_monitor_grace_period`` (measured on this
  controller's clock, as upstream does, so kubelet clock skew does not matter) gets all its
  conditions set to ``Unknown`` ("NodeStatusUnknown", "Kubelet stopped posting node status.")
  and the ``node.kubernetes.io/unreachable`` taints; a node the kubelet reports Ready=False gets
  ``node.kubernetes.io/not-ready``.  The kubelet flips Ready back; the taints then go.
* :func:`ensure_kubernetes_service` — the ``kubernetes`` Service in ``default`` (10.96.0.1:443)
  with its Endpoints/EndpointSlice pointing at the control-plane node's address:6443.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.timers import Timers

from .errors import StatusError
from .store import Obj, Store, timestamp

log = logging.getLogger("hcinet.apiserver.controllers")

CLUSTER_CIDR = "10.244.0.0/16"
NODE_CIDR_MASK = 24
KUBERNETES_SERVICE_IP = "10.96.0.1"
LEASE_NAMESPACE = "kube-node-lease"

TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
OWNED_TAINTS = frozenset({TAINT_UNREACHABLE, TAINT_NOT_READY})


# --- node IPAM ------------------------------------------------------------------------------


class NodeIpam:
    """Range allocator of per-node pod CIDRs (see the module docstring)."""

    def __init__(self, store: Store, cluster_cidr: str = CLUSTER_CIDR, mask: int = NODE_CIDR_MASK) -> None:
        self.store = store
        self.network = ipaddress.ip_network(cluster_cidr)
        if mask < self.network.prefixlen:
            raise ValueError(f"mask: /{mask} is larger than the cluster CIDR {cluster_cidr}")
        self.subnets = list(self.network.subnets(new_prefix=mask))
        self.exhausted = 0  # nodes left without a CIDR because the range is full

    def used(self, nodes: list[Obj]) -> set[str]:
        return {c for n in nodes for c in (n.get("spec") or {}).get("podCIDRs") or
                ([n["spec"]["podCIDR"]] if (n.get("spec") or {}).get("podCIDR") else [])}

    def sync(self) -> dict[str, str]:
        """Give every Node without a pod CIDR the lowest free one; returns {node: cidr}."""
        nodes, _ = self.store.list("nodes")
        used = self.used(nodes)
        pending = sorted((n for n in nodes if not (n.get("spec") or {}).get("podCIDR")),
                         key=lambda n: (n["metadata"].get("creationTimestamp", ""), n["metadata"]["name"]))
        assigned: dict[str, str] = {}
        if not pending:
            return assigned
        free = (str(s) for s in self.subnets if str(s) not in used)
        with self.store.batch():
            for node in pending:
                cidr = next(free, None)
                name = node["metadata"]["name"]
                if cidr is None:
                    self.exhausted += 1
                    log.warning("node IPAM: no pod CIDR left in %s for node %s", self.network, name)
                    break
                try:
                    self.store.patch("nodes", None, name, {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
                except StatusError as exc:
                    log.warning("node IPAM: assigning %s to %s failed: %s", cidr, name, exc.message)
                    continue
                assigned[name] = cidr
        return assigned


# --- node lifecycle -------------------------------------------------------------------------


@dataclass
class _Probe:
    heartbeat: tuple[Any, Any]  # (lease renewTime, Ready lastHeartbeatTime) last seen
    observed: float             # when this controller saw it change (its own clock)


def _condition(node: Obj, ctype: str) -> dict[str, Any] | None:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None


class NodeLifecycle:
    """See the module docstring.  Call :meth:`tick` every ``timers.node_monitor_period``."""

    def __init__(self, store: Store, timers: Timers, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.timers = timers
        self.clock = clock
        self._probes: dict[str, _Probe] = {}
        self.marked_unknown = 0

    def next_deadline(self, now: float) -> float:
        return now + self.timers.node_monitor_period

    def tick(self, now: float) -> list[str]:
        """One monitor pass; returns the nodes whose object it changed."""
        nodes, _ = self.store.list("nodes")
        leases = {lease["metadata"]["name"]: lease for lease in self.store.list("leases", LEASE_NAMESPACE)[0]}
        changed = []
        seen = set()
        with self.store.batch():
            for node in nodes:
                name = node["metadata"]["name"]
                seen.add(name)
                if self._check(node, leases.get(name), now):
                    changed.append(name)
        for gone in set(self._probes) - seen:
            del self._probes[gone]
        return changed

    def _check(self, node: Obj, lease: Obj | None, now: float) -> bool:
        name = node["metadata"]["name"]
        ready = _condition(node, "Ready")
        beat = ((lease or {}).get("spec", {}).get("renewTime"), (ready or {}).get("lastHeartbeatTime"))
        probe = self._probes.get(name)
        if probe is None or probe.heartbeat != beat:
            probe = self._probes[name] = _Probe(beat, now)
        changed = False
        if now - probe.observed > self.timers.node_monitor_grace_period and \
                (ready is None or ready.get("status") != "Unknown"):
            node = self._mark_unknown(node, ready is None)
            changed = True
        return self._sync_taints(node) or changed

    def _mark_unknown(self, node: Obj, never: bool) -> Obj:
        stamp = timestamp(self.clock())
        status = node.setdefault("status", {})
        conditions = status.setdefault("conditions", [])
        if never:
            conditions.append({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                               "message": "Kubelet never posted node status.",
                               "lastHeartbeatTime": node["metadata"].get("creationTimestamp"),
                               "lastTransitionTime": stamp})
        for cond in conditions:
            if cond.get("status") != "Unknown":
                cond.update({"status": "Unknown", "reason": "NodeStatusUnknown",
                             "message": "Kubelet stopped posting node status.", "lastTransitionTime": stamp})
        self.marked_unknown += 1
        log.info("node %s: no heartbeat for %.1f s: Ready=Unknown", node["metadata"]["name"],
                 self.timers.node_monitor_grace_period)
        updated: Obj = self.store.update_status("nodes", node)
        return updated

    def _sync_taints(self, node: Obj) -> bool:
        ready = _condition(node, "Ready")
        status = (ready or {}).get("status")
        key = TAINT_UNREACHABLE if status == "Unknown" else TAINT_NOT_READY if status == "False" else None
        spec = node.get("spec") or {}
        taints = [t for t in spec.get("taints") or [] if isinstance(t, dict)]
        kept = [t for t in taints if t.get("key") not in OWNED_TAINTS]
        current = {(t.get("key"), t.get("effect")) for t in taints if t.get("key") in OWNED_TAINTS}
        want = {(key, "NoSchedule"), (key, "NoExecute")} if key else set()
        if current == want:
            return False
        new = list(kept)
        stamp = timestamp(self.clock())
        for k, effect in sorted(want, key=lambda x: x[1], reverse=True):  # NoSchedule, then NoExecute
            taint: dict[str, Any] = {"key": k, "effect": effect}
            if effect == "NoExecute":
                taint["timeAdded"] = stamp
            new.append(taint)
        self.store.patch("nodes", None, node["metadata"]["name"], {"spec": {"taints": new or None}})
        return True


# --- the kubernetes Service ----------------------------------------------------------------


def ensure_kubernetes_service(store: Store, endpoint_ip: str, port: int = 6443) -> None:
    """The ``default/kubernetes`` Service (10.96.0.1:443) and its Endpoints/EndpointSlice
    (the API server's reconciler keeps them pointing at the control-plane address:6443)."""
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "kubernetes", "namespace": "default",
                        "labels": {"component": "apiserver", "provider": "kubernetes"}},
           "spec": {"type": "ClusterIP", "clusterIP": KUBERNETES_SERVICE_IP, "clusterIPs": [KUBERNETES_SERVICE_IP],
                    "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                    "internalTrafficPolicy": "Cluster",
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}}
    eps = {"apiVersion": "v1", "kind": "Endpoints",
           "metadata": {"name": "kubernetes", "namespace": "default",
                        "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
           "subsets": [{"addresses": [{"ip": endpoint_ip}],
                        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": "kubernetes", "namespace": "default",
                           "labels": {"kubernetes.io/service-name": "kubernetes"}},
              "addressType": "IPv4",
              "endpoints": [{"addresses": [endpoint_ip], "conditions": {"ready": True}}],
              "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}
    with store.batch():
        for res, obj, keys in (("services", svc, ("spec",)), ("endpoints", eps, ("subsets",)),
                               ("endpointslices", slice_, ("endpoints", "ports"))):
            if not store.exists(res, "default", "kubernetes"):
                store.create(res, obj)
                continue
            cur = store.get(res, "default", "kubernetes")
            if any(cur.get(k) != obj[k] for k in keys):
                cur.update({k: obj[k] for k in keys})
                store.update(res, cur)

"""The EndpointSlice controller (kube-controller-manager's ``endpointslice-controller.k8s.io``), sans-IO.

For every Service with a selector (not ExternalName; selector-less Services are left to
whoever writes their slices, as upstream) it keeps ``discovery.k8s.io/v1`` EndpointSlices:

* named ``<service>-<5 random chars>`` (generateName), labels ``kubernetes.io/service-name``,
  ``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`` (+ the Service's
  labels, + ``service.kubernetes.io/headless`` for headless ones), a controller ownerReference
  to the Service;
* one group of slices per address type (``spec.ipFamilies``; IPv4 until step 5 adds IPv6)
  and per resolved port set — pods whose named ``targetPort`` resolves to different container
  ports (or not at all) land in different slices, as upstream; at most 100 endpoints a slice
  (``--max-endpoints-per-slice``);
* an endpoint per pod with an IP of the family that is not terminal (Succeeded/Failed):
  ``addresses``, ``conditions`` (``serving`` = the pod is Ready, ``terminating`` = it has a
  ``deletionTimestamp``, ``ready`` = serving and not terminating — or all true with
  ``publishNotReadyAddresses``), ``hostname`` (headless Services whose pods set
  hostname + subdomain), ``targetRef`` and ``nodeName``;
* a Service without endpoints keeps one empty placeholder slice (upstream does too);
* reconciling keeps endpoints in the slices they are in, fills slices that change anyway
  before creating new ones, and writes only slices whose content changed; a deleted Service's
  slices are deleted (the garbage collector's cascade).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
from collections.abc import Mapping
from typing import Any

from .controllers import Informers, pod_ready
from .errors import StatusError
from .store import Obj, Store

log = logging.getLogger("hcinet.apiserver.endpointslices")

MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"
HEADLESS = "service.kubernetes.io/headless"
MAX_ENDPOINTS = 100
_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"

Key = tuple[str, str]
PortsKey = tuple[tuple[str, int, str], ...]  # ((name, port, protocol), ...)
GroupKey = tuple[str, PortsKey]  # (addressType, ports)


def _spec(obj: Obj) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _labels(obj: Obj) -> dict[str, str]:
    labels = obj["metadata"].get("labels")
    return labels if isinstance(labels, dict) else {}


def selects(selector: Any, labels: Mapping[str, str]) -> bool:
    """A Service selector (a plain map; empty selects nothing here — such Services get no slices)."""
    return isinstance(selector, dict) and bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _managed(svc: Obj) -> bool:
    spec = _spec(svc)
    return spec.get("type") != "ExternalName" and isinstance(spec.get("selector"), dict) and \
        bool(spec.get("selector"))


def address_types(svc: Obj) -> list[str]:
    fams = _spec(svc).get("ipFamilies")
    if isinstance(fams, list) and fams:
        return [f for f in fams if f in ("IPv4", "IPv6")]
    cip = _spec(svc).get("clusterIP")
    if isinstance(cip, str) and cip not in ("", "None"):
        try:
            return ["IPv6" if ipaddress.ip_address(cip).version == 6 else "IPv4"]
        except ValueError:
            pass
    return ["IPv4"]


def pod_ips(pod: Obj, address_type: str) -> list[str]:
    status = pod.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or () if isinstance(p, dict)] or \
        ([status["podIP"]] if status.get("podIP") else [])
    version = 6 if address_type == "IPv6" else 4
    out = []
    for ip in ips:
        try:
            if isinstance(ip, str) and ipaddress.ip_address(ip).version == version:
                out.append(ip)
        except ValueError:
            continue
    return out[:1]


def find_port(pod: Obj, svc_port: Mapping[str, Any]) -> int | None:
    """``podutil.FindPort``: an int targetPort as is; a name → the container port of that
    name and protocol; None if the pod has none."""
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    if isinstance(target, str):
        if target.isdigit():
            return int(target)
        proto = svc_port.get("protocol") or "TCP"
        for c in _spec(pod).get("containers") or ():
            for p in (c.get("ports") or ()) if isinstance(c, dict) else ():
                if isinstance(p, dict) and p.get("name") == target and (p.get("protocol") or "TCP") == proto:
                    port = p.get("containerPort")
                    return port if isinstance(port, int) else None
    return None


def endpoint_ports(svc: Obj, pod: Obj) -> PortsKey:
    out = []
    for sp in _spec(svc).get("ports") or ():
        if not isinstance(sp, dict):
            continue
        port = find_port(pod, sp)
        if port is None:
            continue  # upstream logs "Failed to find port for service" and leaves the port out
        out.append((str(sp.get("name") or ""), port, str(sp.get("protocol") or "TCP")))
    return tuple(sorted(out))


def _port_objs(ports: PortsKey) -> list[dict[str, Any]]:
    return [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]


def pod_endpoint(svc: Obj, pod: Obj, address: str) -> dict[str, Any]:
    """``podToEndpoint``."""
    meta = pod["metadata"]
    spec = _spec(pod)
    publish = bool(_spec(svc).get("publishNotReadyAddresses"))
    serving = publish or pod_ready(pod)
    terminating = bool(meta.get("deletionTimestamp"))
    ready = publish or (serving and not terminating)
    ep: dict[str, Any] = {"addresses": [address],
                          "conditions": {"ready": ready, "serving": serving, "terminating": terminating}}
    if _spec(svc).get("clusterIP") == "None" and spec.get("hostname") and \
            spec.get("subdomain") == svc["metadata"]["name"]:
        ep["hostname"] = spec["hostname"]
    ep["targetRef"] = {"kind": "Pod", "namespace": meta.get("namespace", ""), "name": meta["name"],
                       "uid": meta.get("uid", "")}
    if spec.get("nodeName"):
        ep["nodeName"] = spec["nodeName"]
    return ep


def _svc_key(svc: Obj) -> Key:
    return svc["metadata"].get("namespace", ""), svc["metadata"]["name"]


def _ep_id(ep: Mapping[str, Any]) -> str:
    ref = ep.get("targetRef") or {}
    return str(ref.get("uid") or ref.get("name") or (ep.get("addresses") or [""])[0])


def _pod_view(pod: Obj) -> Any:
    """What of a pod can change its endpoints (other changes are ignored)."""
    spec, status = _spec(pod), pod.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or () if isinstance(c, dict)
                  and c.get("type") == "Ready"), None)
    ports = [c.get("ports") for c in spec.get("containers") or () if isinstance(c, dict)]
    return (json.dumps(_labels(pod), sort_keys=True), status.get("podIP"), json.dumps(status.get("podIPs")),
            ready, status.get("phase"), pod["metadata"].get("deletionTimestamp"), spec.get("nodeName"),
            spec.get("hostname"), spec.get("subdomain"), json.dumps(ports), pod["metadata"].get("uid"))


class EndpointSliceController:
    """See the module docstring.  Feed it with the shared informers; call :meth:`sync`."""

    def __init__(self, store: Store, informers: Informers, *, rng: random.Random | None = None,
                 max_endpoints: int = MAX_ENDPOINTS) -> None:
        self.store = store
        self.rng = rng or random.Random()
        self.max_endpoints = max_endpoints
        self.pods = informers("pods")
        self.services = informers("services")
        self.slices = informers("endpointslices")
        self.by_service: dict[Key, set[str]] = {}  # our slices per Service
        self.members: dict[Key, set[str]] = {}  # the pods each Service selects (names, same namespace)
        self.dirty: set[Key] = set()
        self._writing = False
        self.writes = 0
        self.services.handlers.append(self._on_service)
        self.pods.handlers.append(self._on_pod)
        self.slices.handlers.append(self._on_slice)
        for sl in self.slices.all():
            self._on_slice("ADDED", sl, None)
        for svc in self.services.all():
            self._on_service("ADDED", svc, None)

    # -- events --

    def _on_service(self, etype: str, svc: Obj, prev: Obj | None) -> None:
        meta = svc["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if etype == "DELETED":
            self.members.pop(key, None)
            if self.by_service.get(key):
                self.dirty.add(key)
            return
        selector = _spec(svc).get("selector")
        if prev is None or selector != _spec(prev).get("selector") or key not in self.members:
            self.members[key] = {name for name, pod in self.pods.namespace(key[0]).items()
                                 if selects(selector, _labels(pod))}
        if prev is None or _spec(svc) != _spec(prev) or _labels(svc) != _labels(prev):
            self.dirty.add(key)

    def _on_pod(self, etype: str, pod: Obj, prev: Obj | None) -> None:
        if etype == "MODIFIED" and prev is not None and _pod_view(pod) == _pod_view(prev):
            return
        ns, pod_name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
        labels = _labels(pod)
        for name, svc in self.services.namespace(ns).items():
            key = (ns, name)
            members = self.members.setdefault(key, set())
            if etype != "DELETED" and selects(_spec(svc).get("selector"), labels):
                members.add(pod_name)
                self.dirty.add(key)
            elif pod_name in members:
                members.discard(pod_name)
                self.dirty.add(key)

    def _on_slice(self, etype: str, sl: Obj, prev: Obj | None) -> None:
        labels = _labels(sl)
        if labels.get(MANAGED_BY) != CONTROLLER_NAME or not labels.get(SERVICE_NAME):
            return
        key = (sl["metadata"].get("namespace", ""), labels[SERVICE_NAME])
        names = self.by_service.setdefault(key, set())
        if etype == "DELETED":
            names.discard(sl["metadata"]["name"])
            if not names:
                del self.by_service[key]
        else:
            names.add(sl["metadata"]["name"])
        if not self._writing:
            self.dirty.add(key)  # someone else changed our slice: put it right

    def pending(self) -> bool:
        return bool(self.dirty)

    # -- reconcile --

    def sync(self, now: float | None = None) -> list[Key]:
        todo, self.dirty = sorted(self.dirty), set()
        self._writing = True
        try:
            with self.store.batch():
                for key in todo:
                    try:
                        self._sync_service(key)
                    except StatusError as exc:
                        log.info("endpointslices of %s/%s: %s", *key, exc.message)
                        self.dirty.add(key)
        finally:
            self._writing = False
        return todo

    def _current(self, key: Key) -> list[Obj]:
        return [sl for sl in (self.slices.get(key[0], n) for n in sorted(self.by_service.get(key, ())))
                if sl is not None]

    def _sync_service(self, key: Key) -> None:
        svc = self.services.get(*key)
        current = self._current(key)
        if svc is None:
            for sl in current:
                self._delete(sl)
            return
        if not _managed(svc):
            return  # left alone (upstream: no selector / ExternalName)
        desired = self.desired(svc)
        self._reconcile(svc, desired, current)

    def desired(self, svc: Obj) -> dict[GroupKey, dict[str, dict[str, Any]]]:
        """{(addressType, ports): {endpoint id: endpoint}} for the Service's pods now."""
        ns = svc["metadata"].get("namespace", "")
        selector = _spec(svc).get("selector")
        types = address_types(svc)
        groups: dict[GroupKey, dict[str, dict[str, Any]]] = {}
        in_ns = self.pods.namespace(ns)
        for name in sorted(self.members.get(_svc_key(svc), ())):
            pod = in_ns.get(name)
            if pod is None or not selects(selector, _labels(pod)):
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            ports = endpoint_ports(svc, pod)
            for atype in types:
                for ip in pod_ips(pod, atype):
                    ep = pod_endpoint(svc, pod, ip)
                    groups.setdefault((atype, ports), {})[_ep_id(ep)] = ep
        return groups

    def _reconcile(self, svc: Obj, desired: dict[GroupKey, dict[str, dict[str, Any]]], current: list[Obj]) -> None:
        by_group: dict[GroupKey, list[Obj]] = {}
        for sl in current:
            gk = (str(sl.get("addressType")), tuple(sorted((str(p.get("name") or ""), int(p.get("port") or 0),
                                                            str(p.get("protocol") or "TCP"))
                                                           for p in sl.get("ports") or () if isinstance(p, dict))))
            by_group.setdefault(gk, []).append(sl)
        keep: list[tuple[Obj | None, GroupKey, list[dict[str, Any]]]] = []  # (existing or None, group, endpoints)
        stale: list[Obj] = []
        for gk, eps in sorted(desired.items()):
            placed, emptied = self._place(gk, eps, by_group.pop(gk, []))
            keep += placed
            stale += emptied
        stale += [sl for slices in by_group.values() for sl in slices]
        if not keep:  # no endpoints at all: one placeholder slice, re-using an existing one
            atype = address_types(svc)[0]
            reuse = next((sl for sl in current if not sl.get("endpoints") and not sl.get("ports")), None)
            if reuse is None and stale:
                reuse = stale[0]
            keep = [(reuse, (atype, ()), [])]
            stale = [sl for sl in stale if sl is not reuse]
        for existing, group, endpoints in keep:
            self._write(svc, existing, group, endpoints)
        for sl in stale:
            self._delete(sl)

    def _place(self, gk: GroupKey, eps: dict[str, dict[str, Any]], slices: list[Obj]
               ) -> tuple[list[tuple[Obj | None, GroupKey, list[dict[str, Any]]]], list[Obj]]:
        """Endpoints into this group's slices: each stays where it is; the rest fill the slices
        that change anyway, then the others with room, then new slices.  Returns (slices to
        write, slices left empty)."""
        left = dict(eps)
        placed: list[tuple[Obj, list[dict[str, Any]]]] = []
        for sl in slices:
            mine: list[dict[str, Any]] = []
            for ep in sl.get("endpoints") or ():
                eid = _ep_id(ep)
                if eid in left and len(mine) < self.max_endpoints:
                    mine.append(left.pop(eid))
            placed.append((sl, mine))
        changed_first = sorted(range(len(placed)), key=lambda i: placed[i][1] == (placed[i][0].get("endpoints") or []))
        queue = [left[k] for k in sorted(left, key=lambda k: left[k]["targetRef"]["name"]
                                         if "targetRef" in left[k] else k)]
        for i in changed_first:
            sl, mine = placed[i]
            while queue and len(mine) < self.max_endpoints:
                mine.append(queue.pop(0))
        out: list[tuple[Obj | None, GroupKey, list[dict[str, Any]]]] = \
            [(sl, gk, mine) for sl, mine in placed if mine]
        for i in range(0, len(queue), self.max_endpoints):
            out.append((None, gk, queue[i:i + self.max_endpoints]))
        return out, [sl for sl, mine in placed if not mine]

    def _meta(self, svc: Obj) -> tuple[dict[str, str], list[dict[str, Any]]]:
        meta = svc["metadata"]
        labels = {k: v for k, v in _labels(svc).items() if k not in (SERVICE_NAME, MANAGED_BY, HEADLESS)}
        labels[SERVICE_NAME] = meta["name"]
        labels[MANAGED_BY] = CONTROLLER_NAME
        if _spec(svc).get("clusterIP") == "None":
            labels[HEADLESS] = ""
        owner = [{"apiVersion": "v1", "kind": "Service", "name": meta["name"], "uid": meta.get("uid", ""),
                  "controller": True, "blockOwnerDeletion": True}]
        return labels, owner

    def _write(self, svc: Obj, existing: Obj | None, gk: GroupKey, eps: list[dict[str, Any]]) -> None:
        labels, owner = self._meta(svc)
        atype, ports = gk
        body = {"addressType": atype, "endpoints": eps, "ports": _port_objs(ports)}
        if existing is not None:
            same = all(existing.get(k) == v for k, v in body.items()) and _labels(existing) == labels and \
                existing["metadata"].get("ownerReferences") == owner
            if same:
                return
            obj = json.loads(json.dumps(existing))
            obj.update(body)
            obj["metadata"]["labels"] = labels
            obj["metadata"]["ownerReferences"] = owner
            self.slices.wrote(self.store.update("endpointslices", obj))
            self.writes += 1
            return
        ns, name = svc["metadata"].get("namespace", ""), svc["metadata"]["name"]
        prefix = name[:57] + "-"  # upstream's getEndpointSlicePrefix keeps generateName short enough
        for _ in range(5):
            obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": prefix + "".join(self.rng.choice(_ALPHANUMS) for _ in range(5)),
                                "generateName": prefix, "namespace": ns, "labels": labels,
                                "ownerReferences": owner}, **body}
            try:
                self.slices.wrote(self.store.create("endpointslices", obj))
            except StatusError as exc:
                if exc.code == 409:
                    continue
                raise
            self.writes += 1
            return

    def _delete(self, sl: Obj) -> None:
        try:
            self.slices.forget(self.store.delete("endpointslices", sl["metadata"].get("namespace", ""),
                                                 sl["metadata"]["name"]))
            self.writes += 1
        except StatusError as exc:
            if exc.code != 404:
                raise

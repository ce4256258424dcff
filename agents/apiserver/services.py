"""Service ClusterIP and NodePort allocation (the Service registry's allocators), sans-IO.

Runs as a store admission hook on Services (``Store.add_admission``), before validation and
before the write, like the Service REST storage's ``BeginCreate``/``BeginUpdate``
(pkg/registry/core/service/storage/alloc.go): what it allocates for a write that is refused
later is released again (``finish(False)``); what an update or delete frees is released only
once the write succeeded.

* ClusterIPs: one :class:`IPAllocator` per IP family/CIDR (``10.96.0.0/12``; step 5 adds the
  IPv6 CIDR and dual-stack follows ``ipFamilyPolicy``/``ipFamilies`` as upstream).  Dynamic
  allocation picks a random free address in the *upper* band of the range and falls back to the
  lower band — the ``ServiceIPStaticSubrange`` behaviour (on by default since 1.25): the lower
  ``min(max(16, size/16), 256)`` addresses are left for static requests such as the DNS
  Service's 10.96.0.10.  ``10.96.0.1`` (``default/kubernetes``) and ``10.96.0.10``
  (``kube-system/kube-dns``) are reserved for their Services: anyone else asking for them gets
  "provided IP is already allocated"; those Services get them even when they ask for none.
  ``clusterIP: None`` is headless (no address); ``type: ExternalName`` gets none.
* NodePorts: 30000–32767, a random free one or the requested one; a Service port number used
  with two protocols shares one node port (upstream does the same); ``healthCheckNodePort``
  for ``type: LoadBalancer`` with ``externalTrafficPolicy: Local`` (``NeedsHealthCheck``).
* Errors are upstream's: ``spec.clusterIPs: Invalid value: []string{"10.96.0.15"}: failed to
  allocate IP 10.96.0.15: provided IP is already allocated`` (422), ``spec.ports[0].nodePort:
  Invalid value: 30080: provided port is already allocated`` (422), an exhausted range is 500
  ``Internal error occurred: failed to allocate a serviceIP: range is full``.

The allocation state is derived from the stored Services (:meth:`ServiceAllocator.rebuild` at
start), so it survives restarts without a table of its own.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import validation
from .errors import StatusError
from .resources import Resource, resource
from .store import Finish, Obj, Store

log = logging.getLogger("hcinet.apiserver.services")

SERVICE_CIDR = "10.96.0.0/12"
NODE_PORT_RANGE = (30000, 32767)
KUBERNETES_IP = "10.96.0.1"
DNS_IP = "10.96.0.10"
# address -> (namespace, name) of the one Service that may hold it
RESERVED: dict[str, tuple[str, str]] = {KUBERNETES_IP: ("default", "kubernetes"), DNS_IP: ("kube-system", "kube-dns")}

NODE_PORT_TYPES = frozenset({"NodePort", "LoadBalancer"})
_SERVICES = resource("services")


# --- errors (pkg/registry/core/service/ipallocator and portallocator) ----------------------


class AllocationError(Exception):
    """An allocator refused; ``str()`` is upstream's message."""


class AlreadyAllocated(AllocationError):
    def __init__(self, what: str = "IP") -> None:
        super().__init__(f"provided {what} is already allocated")


class NotInRange(AllocationError):
    def __init__(self, value: Any, valid: str, what: str = "IP") -> None:
        if what == "IP":
            super().__init__(f"the provided IP ({value}) is not in the valid range. "
                             f"The range of valid IPs is {valid}")
        else:
            super().__init__(f"provided port is not in the valid range. The range of valid ports is {valid}")


class RangeFull(AllocationError):
    def __init__(self) -> None:
        super().__init__("range is full")


# --- allocators ----------------------------------------------------------------------------


class _Range:
    """Offsets ``0..size-1`` with a used set; random scan with an optional reserved low band."""

    def __init__(self, size: int, low_band: int, rng: random.Random) -> None:
        self.size = size
        self.low_band = low_band
        self.rng = rng
        self.used: set[int] = set()

    def take_next(self, skip: Callable[[int], bool]) -> int:
        # upstream's randomScanStrategyWithOffset: a random start in the upper band, scanning
        # forward (wrapping within the band); then the lower band the same way
        for lo, hi in ((self.low_band, self.size), (0, self.low_band)):
            n = hi - lo
            if n <= 0:
                continue
            start = self.rng.randrange(n)
            for i in range(n):
                off = lo + (start + i) % n
                if off not in self.used and not skip(off):
                    self.used.add(off)
                    return off
        raise RangeFull()


def _static_band(size: int) -> int:
    """``calculateRangeOffset``: min(max(16, size/16), 256); 0 for ranges under 16."""
    if size < 16:
        return 0
    return max(16, min(size // 16, 256))


class IPAllocator:
    """One family's ClusterIP range (upstream's bitmap allocator: the network address, and the
    IPv4 broadcast address, are never handed out)."""

    def __init__(self, cidr: str, *, rng: random.Random | None = None,
                 reserved: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.network = ipaddress.ip_network(cidr)
        self.family = "IPv4" if self.network.version == 4 else "IPv6"
        self.cidr = str(self.network)
        host_bits = self.network.max_prefixlen - self.network.prefixlen
        size = (1 << min(host_bits, 20)) - 1  # without the network address (IPv6 capped at 2^20)
        if self.network.version == 4:
            size -= 1  # nor the broadcast address
        if size <= 0:
            raise ValueError(f"cidr: {cidr} is too small for Service IPs")
        self.base = int(self.network.network_address) + 1
        self._range = _Range(size, _static_band(size + 2 if self.network.version == 4 else size + 1),
                             rng or random.Random())
        self.reserved: dict[int, tuple[str, str]] = {}
        for ip, owner in (reserved or {}).items():
            addr = ipaddress.ip_address(ip)
            if addr.version == self.network.version and addr in self.network:
                self.reserved[int(addr) - self.base] = owner

    def _offset(self, ip: str) -> int:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise NotInRange(ip, self.cidr) from None
        off = int(addr) - self.base
        if addr.version != self.network.version or not 0 <= off < self._range.size:
            raise NotInRange(ip, self.cidr)
        return off

    def allocate(self, ip: str, owner: tuple[str, str] | None = None) -> str:
        off = self._offset(ip)
        held_for = self.reserved.get(off)
        if off in self._range.used or (held_for is not None and held_for != owner):
            raise AlreadyAllocated()
        self._range.used.add(off)
        return self.address(off)

    def allocate_next(self) -> str:
        return self.address(self._range.take_next(self.reserved.__contains__))

    def release(self, ip: str) -> None:
        try:
            self._range.used.discard(self._offset(ip))
        except NotInRange:
            pass

    def has(self, ip: str) -> bool:
        try:
            return self._offset(ip) in self._range.used
        except NotInRange:
            return False

    def address(self, off: int) -> str:
        return str(ipaddress.ip_address(self.base + off))

    def owner_ip(self, owner: tuple[str, str]) -> str | None:
        """The address reserved for ``owner`` (a (namespace, name) Service), if any."""
        for off, who in self.reserved.items():
            if who == owner:
                return self.address(off)
        return None

    @property
    def used(self) -> int:
        return len(self._range.used)

    @property
    def free(self) -> int:
        return self._range.size - len(self._range.used) - len(set(self.reserved) - self._range.used)


class PortAllocator:
    """The NodePort range (``--service-node-port-range``, default 30000-32767)."""

    def __init__(self, first: int = NODE_PORT_RANGE[0], last: int = NODE_PORT_RANGE[1], *,
                 rng: random.Random | None = None) -> None:
        if not 0 < first <= last <= 65535:
            raise ValueError(f"node port range: {first}-{last} is not a valid port range")
        self.first, self.last = first, last
        # the static subrange of node ports is alpha (off) in 1.26: no reserved band
        self._range = _Range(last - first + 1, 0, rng or random.Random())

    @property
    def valid(self) -> str:
        return f"{self.first}-{self.last}"

    def allocate(self, port: int) -> int:
        if not self.first <= port <= self.last:
            raise NotInRange(port, self.valid, what="port")
        if port - self.first in self._range.used:
            raise AlreadyAllocated("port")
        self._range.used.add(port - self.first)
        return port

    def allocate_next(self) -> int:
        return self.first + self._range.take_next(lambda off: False)

    def release(self, port: int) -> None:
        self._range.used.discard(port - self.first)

    def has(self, port: int) -> bool:
        return self.first <= port <= self.last and port - self.first in self._range.used

    @property
    def used(self) -> int:
        return len(self._range.used)


# --- the Service hook ----------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _stype(spec: Mapping[str, Any]) -> str:
    t = spec.get("type")
    return t if isinstance(t, str) and t else "ClusterIP"


def needs_cluster_ip(spec: Mapping[str, Any]) -> bool:
    return _stype(spec) != "ExternalName"


def needs_node_ports(spec: Mapping[str, Any]) -> bool:
    return _stype(spec) in NODE_PORT_TYPES


def needs_health_check(spec: Mapping[str, Any]) -> bool:
    """``apiservice.NeedsHealthCheck``: LoadBalancer with externalTrafficPolicy Local."""
    return _stype(spec) == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def _ports(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    ports = spec.get("ports")
    return [p for p in ports if isinstance(p, dict)] if isinstance(ports, list) else []


def _port_no(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _node_ports(spec: Mapping[str, Any]) -> set[int]:
    """Every node port a stored Service holds (``collectServiceNodePorts`` + health check)."""
    out = {_port_no(p.get("nodePort")) for p in _ports(spec)}
    hc = _port_no(spec.get("healthCheckNodePort"))
    if hc and needs_health_check(spec):
        out.add(hc)
    out.discard(0)
    return out


def _cluster_ips(spec: Mapping[str, Any]) -> list[str]:
    ips = spec.get("clusterIPs")
    if isinstance(ips, list) and ips:
        return [ip for ip in ips if isinstance(ip, str) and ip and ip != "None"]
    ip = spec.get("clusterIP")
    return [ip] if isinstance(ip, str) and ip and ip != "None" else []


def _is_headless(spec: Mapping[str, Any]) -> bool:
    ips = spec.get("clusterIPs")
    return spec.get("clusterIP") == "None" or (isinstance(ips, list) and bool(ips) and ips[0] == "None")


class _Txn:
    """What one write allocated (released if the write fails) and frees (released if it succeeds)."""

    def __init__(self, owner: ServiceAllocator) -> None:
        self.owner = owner
        self.allocated: list[tuple[str, Any]] = []  # ("ip", (family, ip)) | ("port", n)
        self.to_release: list[tuple[str, Any]] = []

    def finish(self, ok: bool) -> None:
        for item in (self.to_release if ok else self.allocated):
            self.owner._release(item)


def _invalid(name: str, errs: list[validation.FieldError]) -> StatusError:
    return validation.invalid_error(_SERVICES, name, errs)


def _internal(message: str) -> StatusError:
    return StatusError(500, "InternalError", f"Internal error occurred: {message}")


class ServiceAllocator:
    """ClusterIP + NodePort allocation for Services (see the module docstring).

    ``install(store)`` rebuilds the state from the stored Services and hooks the allocator into
    the store's Service writes."""

    def __init__(self, cidrs: Iterable[str] = (SERVICE_CIDR,), node_ports: tuple[int, int] = NODE_PORT_RANGE, *,
                 reserved: Mapping[str, tuple[str, str]] = RESERVED, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.ips: dict[str, IPAllocator] = {}
        for cidr in cidrs:
            alloc = IPAllocator(cidr, rng=self.rng, reserved=reserved)
            if alloc.family in self.ips:
                raise ValueError(f"cidrs: two {alloc.family} service CIDRs ({self.ips[alloc.family].cidr}, {cidr})")
            self.ips[alloc.family] = alloc
        if not self.ips:
            raise ValueError("cidrs: at least one service CIDR is needed")
        self.primary = next(iter(self.ips))
        self.ports = PortAllocator(*node_ports, rng=self.rng)

    # -- wiring --

    def install(self, store: Store) -> None:
        self.rebuild(store)
        store.add_admission(_SERVICES, self.admit)

    def rebuild(self, store: Store) -> None:
        """Mark what the stored Services hold (at start; after a store reload)."""
        for alloc in self.ips.values():
            alloc._range.used.clear()
        self.ports._range.used.clear()
        for svc in store.list(_SERVICES)[0]:
            spec = _dict(svc.get("spec"))
            meta = svc["metadata"]
            owner = (meta.get("namespace", ""), meta["name"])
            if needs_cluster_ip(spec):
                for ip in _cluster_ips(spec):
                    fam = _family(ip)
                    if fam in self.ips:
                        try:
                            self.ips[fam].allocate(ip, owner)
                        except AllocationError as exc:
                            log.warning("service %s/%s: clusterIP %s: %s", *owner, ip, exc)
            for port in _node_ports(spec):
                try:
                    self.ports.allocate(port)
                except AllocationError as exc:
                    log.warning("service %s/%s: nodePort %d: %s", *owner, port, exc)

    def stats(self) -> dict[str, Any]:
        return {"cluster_ips": {f: {"cidr": a.cidr, "used": a.used, "free": a.free} for f, a in self.ips.items()},
                "node_ports": {"range": self.ports.valid, "used": self.ports.used}}

    # -- the admission hook --

    def admit(self, op: str, res: Resource, new: Obj | None, old: Obj | None) -> Finish | None:
        txn = _Txn(self)
        if op == "DELETE":
            if old is not None:
                txn.to_release = self._held(_dict(old.get("spec")))
            return txn.finish
        if new is None or not isinstance(new.get("spec"), dict):
            return None  # validation reports it
        try:
            if op == "CREATE":
                self._create(new, txn)
            else:
                new["spec"] = json.loads(json.dumps(new["spec"]))  # a merge patch shares parts with ``old``
                self._update(new, old or {}, txn)
        except BaseException:
            txn.finish(False)
            raise
        return txn.finish

    def _held(self, spec: Mapping[str, Any]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if needs_cluster_ip(spec):
            out += [("ip", (_family(ip), ip)) for ip in _cluster_ips(spec)]
        out += [("port", p) for p in sorted(_node_ports(spec))]
        return out

    def _release(self, item: tuple[str, Any]) -> None:
        kind, value = item
        if kind == "ip":
            fam, ip = value
            if fam in self.ips:
                self.ips[fam].release(ip)
        else:
            self.ports.release(value)

    @staticmethod
    def _ident(svc: Obj) -> tuple[str, str]:
        meta = _dict(svc.get("metadata"))
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    def _create(self, svc: Obj, txn: _Txn) -> None:
        spec = svc["spec"]
        _default_policies(spec)
        if needs_cluster_ip(spec):
            self._alloc_cluster_ips(svc, spec, txn)
        if needs_node_ports(spec):
            self._alloc_node_ports(svc, spec, set(), txn)
        if needs_health_check(spec):
            self._alloc_health_check(spec, txn)

    def _update(self, svc: Obj, old: Obj, txn: _Txn) -> None:
        spec, ospec = svc["spec"], _dict(old.get("spec"))
        _default_policies(spec)
        _patch_allocated_values(spec, ospec)
        _drop_type_dependent_fields(spec, ospec)
        # cluster IPs (updateClusterIPs): ExternalName -> other allocates, other -> ExternalName releases
        if needs_cluster_ip(spec) and not needs_cluster_ip(ospec):
            self._alloc_cluster_ips(svc, spec, txn)
        elif needs_cluster_ip(ospec) and not needs_cluster_ip(spec):
            txn.to_release += [("ip", (_family(ip), ip)) for ip in _cluster_ips(ospec)]
        # node ports (txnUpdateNodePorts)
        old_ports = _node_ports(ospec) - ({_port_no(ospec.get("healthCheckNodePort"))}
                                          if needs_health_check(ospec) else set())
        if needs_node_ports(spec):
            self._alloc_node_ports(svc, spec, old_ports, txn)
        new_ports = {_port_no(p.get("nodePort")) for p in _ports(spec)} if needs_node_ports(spec) else set()
        txn.to_release += [("port", p) for p in sorted(old_ports - new_ports)]
        # health check node port (updateHealthCheckNodePort)
        old_hc = _port_no(ospec.get("healthCheckNodePort")) if needs_health_check(ospec) else 0
        if needs_health_check(spec):
            hc = _port_no(spec.get("healthCheckNodePort"))
            if not hc or hc != old_hc:
                self._alloc_health_check(spec, txn)
                if old_hc and old_hc != spec.get("healthCheckNodePort"):
                    txn.to_release.append(("port", old_hc))
        elif old_hc:
            spec.pop("healthCheckNodePort", None)
            txn.to_release.append(("port", old_hc))

    # -- cluster IPs --

    def _alloc_cluster_ips(self, svc: Obj, spec: dict[str, Any], txn: _Txn) -> None:
        name = self._ident(svc)[1]
        if _is_headless(spec):
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
            if not spec.get("ipFamilyPolicy"):
                # upstream: headless + selectorless defaults to RequireDualStack
                spec["ipFamilyPolicy"] = "SingleStack" if spec.get("selector") else "RequireDualStack"
            if not spec.get("ipFamilies"):
                spec["ipFamilies"] = list(self.ips) if spec["ipFamilyPolicy"] != "SingleStack" else [self.primary]
            return
        requested = self._requested(spec, name)
        policy = spec.get("ipFamilyPolicy") or "SingleStack"
        families = self._families(spec, requested, policy, name)
        owner = self._ident(svc)
        ips: list[str] = []
        for i, fam in enumerate(families):
            alloc = self.ips[fam]
            want = requested[i] if i < len(requested) else (alloc.owner_ip(owner) or "")
            if want:
                try:
                    ip = alloc.allocate(want, owner)
                except AllocationError as exc:
                    raise _invalid(name, [validation.invalid("spec.clusterIPs", requested or [want],
                                                             f"failed to allocate IP {want}: {exc}")]) from None
            else:
                try:
                    ip = alloc.allocate_next()
                except RangeFull as exc:
                    raise _internal(f"failed to allocate a serviceIP: {exc}") from None
            txn.allocated.append(("ip", (fam, ip)))
            ips.append(ip)
        spec["clusterIP"], spec["clusterIPs"] = ips[0], ips
        spec["ipFamilies"], spec["ipFamilyPolicy"] = families, policy

    @staticmethod
    def _requested(spec: dict[str, Any], name: str) -> list[str]:
        cip = spec.get("clusterIP")
        cips = spec.get("clusterIPs")
        requested = [ip for ip in cips if isinstance(ip, str)] if isinstance(cips, list) and cips else []
        if not requested and isinstance(cip, str) and cip:
            requested = [cip]
        errs = []
        if requested and isinstance(cip, str) and cip and cip != requested[0]:
            errs.append(validation.invalid("spec.clusterIPs[0]", requested, "must match `clusterIP`"))
        for i, ip in enumerate(requested):
            if ip:
                errs += validation._ip(ip, f"spec.clusterIPs[{i}]")
        if errs:
            raise _invalid(name, errs)
        return requested

    def _families(self, spec: dict[str, Any], requested: list[str], policy: str, name: str) -> list[str]:
        errs = []
        if policy not in ("SingleStack", "PreferDualStack", "RequireDualStack"):
            errs.append(validation.not_supported("spec.ipFamilyPolicy", policy,
                                                 ["PreferDualStack", "RequireDualStack", "SingleStack"]))
        raw = spec.get("ipFamilies")
        families = [f for f in raw if isinstance(f, str)] if isinstance(raw, list) else []
        for i, ip in enumerate(requested):  # infer the families of the requested IPs
            if ip and i >= len(families):
                fam = _family(ip)
                if fam not in self.ips:
                    errs.append(validation.invalid(f"spec.clusterIPs[{i}]", requested,
                                                   f"{fam} is not configured on this cluster"))
                families.append(fam)
        if policy == "RequireDualStack" and len(self.ips) < 2:
            errs.append(validation.invalid("spec.ipFamilyPolicy", policy,
                                           "this cluster is not configured for dual-stack services"))
        if policy == "SingleStack" and (len(families) > 1 or len(requested) > 1):
            errs.append(validation.invalid("spec.ipFamilyPolicy", policy,
                                           "must be 'RequireDualStack' or 'PreferDualStack' when multiple "
                                           "cluster IPs are specified"))
        for i, fam in enumerate(families):
            if fam not in self.ips and not any(e.field.startswith("spec.clusterIPs") for e in errs):
                errs.append(validation.invalid(f"spec.ipFamilies[{i}]", fam, "not configured on this cluster"))
        if errs:
            raise _invalid(name, errs)
        if not families:
            families = [self.primary]
        if policy != "SingleStack" and len(families) == 1 and len(self.ips) == 2:
            families.append(next(f for f in self.ips if f != families[0]))
        return families

    # -- node ports --

    def _alloc_node_ports(self, svc: Obj, spec: dict[str, Any], held: set[int], txn: _Txn) -> None:
        """``initNodePorts`` / ``updateNodePorts``: requested ports are reserved, missing ones
        picked at random; one Service port number on two protocols shares a node port;
        ``held``: the ports this Service already holds (an update keeps them)."""
        name = self._ident(svc)[1]
        allocate_new = _stype(spec) == "NodePort" or spec.get("allocateLoadBalancerNodePorts", True) is not False
        by_port: dict[int, int] = {}
        taken: set[int] = set()
        ports = _ports(spec)
        for i, p in enumerate(ports):
            np_ = _port_no(p.get("nodePort"))
            if not np_ and not allocate_new:
                continue
            if not np_:
                np_ = by_port.get(_port_no(p.get("port")), 0) or next(
                    (_port_no(q.get("nodePort")) for q in ports[i + 1:]
                     if _port_no(q.get("port")) == _port_no(p.get("port")) and _port_no(q.get("nodePort"))), 0)
            if np_:
                if np_ not in held and np_ not in taken:
                    try:
                        self.ports.allocate(np_)
                    except AllocationError as exc:
                        raise _invalid(name, [validation.invalid(f"spec.ports[{i}].nodePort", np_, str(exc))]) \
                            from None
                    txn.allocated.append(("port", np_))
                    taken.add(np_)
            else:
                try:
                    np_ = self.ports.allocate_next()
                except RangeFull as exc:
                    raise _internal(f"failed to allocate a nodePort: {exc}") from None
                txn.allocated.append(("port", np_))
                taken.add(np_)
            p["nodePort"] = np_
            by_port.setdefault(_port_no(p.get("port")), np_)

    def _alloc_health_check(self, spec: dict[str, Any], txn: _Txn) -> None:
        hc = _port_no(spec.get("healthCheckNodePort"))
        if hc:
            try:
                self.ports.allocate(hc)
            except AllocationError as exc:
                raise _internal(f"failed to allocate requested HealthCheck NodePort {hc}: {exc}") from None
        else:
            try:
                hc = self.ports.allocate_next()
            except RangeFull as exc:
                raise _internal(f"failed to allocate a HealthCheck NodePort 0: {exc}") from None
        txn.allocated.append(("port", hc))
        spec["healthCheckNodePort"] = hc


def _family(ip: str) -> str:
    try:
        return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
    except ValueError:
        return "IPv4"


def _default_policies(spec: dict[str, Any]) -> None:
    """Defaults of the Service type (SetDefaults_Service): traffic policies, LB node ports."""
    stype = _stype(spec)
    if stype != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if stype in NODE_PORT_TYPES:
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if stype == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = spec.setdefault("sessionAffinityConfig", {})
        if isinstance(cfg, dict):
            client = cfg.setdefault("clientIP", {})
            if isinstance(client, dict):
                client.setdefault("timeoutSeconds", 10800)


def _patch_allocated_values(spec: dict[str, Any], ospec: Mapping[str, Any]) -> None:
    """``patchAllocatedValues``: a PUT that omits allocated values keeps the old ones."""
    if needs_cluster_ip(ospec) and needs_cluster_ip(spec):
        if not spec.get("clusterIP") and ospec.get("clusterIP"):
            spec["clusterIP"] = ospec["clusterIP"]
        if not spec.get("clusterIPs") and ospec.get("clusterIPs"):
            spec["clusterIPs"] = list(ospec["clusterIPs"])
        for key in ("ipFamilies", "ipFamilyPolicy"):
            if not spec.get(key) and ospec.get(key):
                spec[key] = ospec[key]
    if needs_node_ports(ospec) and needs_node_ports(spec):
        used_old = {_port_no(p.get("nodePort")) for p in _ports(ospec)}
        used = used_old & {_port_no(p.get("nodePort")) for p in _ports(spec)}
        by_name = {str(p.get("name") or ""): _port_no(p.get("nodePort")) for p in _ports(ospec)}
        for p in _ports(spec):
            if not _port_no(p.get("nodePort")):
                old_val = by_name.get(str(p.get("name") or ""), 0)
                if old_val and old_val not in used:
                    p["nodePort"] = old_val
    if needs_health_check(ospec) and needs_health_check(spec) and not spec.get("healthCheckNodePort"):
        spec["healthCheckNodePort"] = ospec.get("healthCheckNodePort")


def _drop_type_dependent_fields(spec: dict[str, Any], ospec: Mapping[str, Any]) -> None:
    """``dropTypeDependentFields``: fields the new type does not use, left unchanged from the
    old object, are cleared (changing type ClusterIP -> ExternalName needs no manual cleanup)."""
    if not needs_cluster_ip(spec) and needs_cluster_ip(ospec):
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"):
            if key in spec and spec.get(key) == ospec.get(key):
                spec.pop(key)
    if not needs_node_ports(spec) and needs_node_ports(ospec):
        old_np = {_port_no(p.get("nodePort")) for p in _ports(ospec)}
        for p in _ports(spec):
            if _port_no(p.get("nodePort")) in old_np:
                p.pop("nodePort", None)
        if spec.get("externalTrafficPolicy") == ospec.get("externalTrafficPolicy"):
            spec.pop("externalTrafficPolicy", None)
    if not needs_health_check(spec) and spec.get("healthCheckNodePort") == ospec.get("healthCheckNodePort"):
        spec.pop("healthCheckNodePort", None)
    if _stype(spec) != "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") == \
            ospec.get("allocateLoadBalancerNodePorts"):
        spec.pop("allocateLoadBalancerNodePorts", None)

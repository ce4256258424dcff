"""The ``cluster.local`` zone as CoreDNS's *kubernetes* plugin answers it (sans-IO).

:class:`Zone` is fed the API objects CoreDNS watches (Services, EndpointSlices, Pods,
Namespaces: dicts as the API server returns them) and answers one question at a time with
an :class:`Answer` -- records in presentation format, an rcode, and two decisions the
server acts on: ``forward`` (the name is not ours: ask the upstream servers) and
``cname_target`` (an ExternalName's CNAME points outside the zone: resolve the target
through the upstream and append what it answers).  No sockets, no clock, no dnspython.

What it reproduces (plugin/kubernetes ``parse.go``, ``kubernetes.go``, ``handler.go`` and
plugin/``backend_lookup.go`` of CoreDNS; the Kubernetes DNS-Based Service Discovery spec):

* ``svc.ns.svc.cluster.local`` A/AAAA -> the ClusterIP(s) of that family, whether or not the
  Service has endpoints; a headless Service (``clusterIP: None``) -> the IPs of its *ready*
  endpoints (``conditions.ready`` absent counts as ready), NXDOMAIN when it has none;
* ``<hostname>.svc.ns.svc.cluster.local`` -> that endpoint (``hostname`` of the endpoint,
  else its IP with ``.``/``:`` turned into ``-``), for headless and ClusterIP Services;
* SRV ``_port._proto.svc.ns.svc.cluster.local`` (or the bare service name: every port):
  ``0 <weight> <port> <target>``; the weight is ``floor(100 / n)`` (at least 1) for the n
  records of the set, as ``plugin.SRV`` computes it for records that carry no weight of
  their own; the target is the Service's name (ClusterIP) or each endpoint's name
  (headless), whose A/AAAA records go in the additional section;
* ExternalName -> ``CNAME <spec.externalName>.``; a target inside the zone is followed here
  (at most 8 CNAMEs, as ``plugin.A`` does), one outside is left to the server;
* pods: ``1-2-3-4.ns.pod.cluster.local`` -> 1.2.3.4 (``pods insecure``, the mode of the
  kubeadm and AKS Corefiles: any well-formed address in an existing namespace; ``verified``
  asks for a Pod with that IP in that namespace; ``disabled`` answers none);
* PTR in ``in-addr.arpa`` / ``ip6.arpa`` for ClusterIPs and endpoint IPs; a miss there
  falls through to the upstream (``fallthrough in-addr.arpa ip6.arpa`` in those Corefiles);
* ``dns-version.cluster.local`` TXT ``"1.1.0"`` (the spec's schema version), SOA, NS at the
  apex (``ns.dns.cluster.local``);
* unknown names: NXDOMAIN; known names without records of the type: NOERROR/NODATA; both
  with the zone's SOA in the authority section (``plugin.BackendError``); answers are
  authoritative (AA).

TTL: 5 s, the kubernetes plugin's default (its ``ttl`` option; kubeadm's Corefile sets
``ttl 30``, AKS's keeps the default).  The SOA's TTL is ``min(ttl, 300)``, its minimum the
ttl, refresh/retry/expire 7200/1800/86400, mbox ``hostmaster.<zone>``, ns ``ns.dns.<zone>``.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "Record", "Zone", "ZoneError", "NOERROR", "SERVFAIL", "NXDOMAIN", "REFUSED",
           "DEFAULT_TTL", "DNS_SCHEMA_VERSION"]

# rcodes (RFC 1035 4.1.1): the wire values, so the server needs no table
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5

DEFAULT_TTL = 5           # CoreDNS kubernetes plugin: "ttl ... The default is 5 seconds"
DNS_SCHEMA_VERSION = "1.1.0"  # Kubernetes DNS-Based Service Discovery, section 2.2
MAX_CNAME_CHAIN = 8       # plugin.A stops adding CNAMEs after 8 (len(previousRecords) > 7)
_REVERSE_ZONES = ("in-addr.arpa.", "ip6.arpa.")
_SVC, _POD = "svc", "pod"
_NO_PORT = -1             # CoreDNS's sentinel port of a Service/endpoint without ports


class ZoneError(ValueError):
    """An object the zone cannot take (no kind, unknown kind, no name)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record: owner name (absolute, as asked), type, TTL, RDATA in
    presentation format (``10.96.0.15``, ``0 100 80 backend.prod.svc.cluster.local.``)."""

    name: str
    rtype: str
    ttl: int
    data: str

    def text(self) -> str:
        return f"{self.name} {self.ttl} IN {self.rtype} {self.data}"


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int = NOERROR
    answers: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    cname_target: str | None = None  # resolve this (absolute) name upstream, append its answers
    forward: bool = False            # not ours: the server forwards the query as it is
    authoritative: bool = True


_FORWARD = Answer(forward=True, authoritative=False)


class _NoItems(Exception):
    """The name does not exist (errNoItems / errNsNotExposed / errInvalidRequest)."""


@dataclass(slots=True)
class _Request:
    """plugin/kubernetes parse.go's recordRequest."""

    port: str = ""
    protocol: str = ""
    endpoint: str = ""
    service: str = ""
    namespace: str = ""
    pod_or_svc: str = ""


@dataclass(frozen=True, slots=True)
class _Endpoint:
    ip: str
    hostname: str       # endpoints[].hostname ("" if none)
    target_name: str    # targetRef.name (endpoint_pod_names mode)


@dataclass(slots=True)
class _Slice:
    service: str
    endpoints: tuple[_Endpoint, ...]
    ports: tuple[tuple[str, int, str], ...]   # (name, port, protocol)


@dataclass(slots=True)
class _Service:
    namespace: str
    name: str
    cluster_ips: tuple[str, ...]
    headless: bool
    external_name: str
    ports: tuple[tuple[str, int, str], ...]
    slices: dict[str, _Slice] = field(default_factory=dict)


# (target FQDN (msg.Domain of the key), host: an IP or a name, port)
_Svc = tuple[str, str, int]


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address literal (not a name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _family(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


def _ports(raw: Any) -> tuple[tuple[str, int, str], ...]:
    out = []
    for p in raw or ():
        port = p.get("port")
        out.append((str(p.get("name") or ""), int(port) if isinstance(port, int) else _NO_PORT,
                    str(p.get("protocol") or "TCP")))
    # object/service.go and object/endpoint.go: no ports -> one sentinel port -1
    return tuple(out) or (("", _NO_PORT, ""),)


def endpoint_hostname(ep: _Endpoint, endpoint_pod_names: bool = False) -> str:
    """plugin/kubernetes endpointHostname: hostname, else the pod's name (option), else the IP
    with its separators as dashes."""
    if ep.hostname:
        return ep.hostname
    if endpoint_pod_names and ep.target_name:
        return ep.target_name
    return ep.ip.replace(".", "-").replace(":", "-")


class Zone:
    """CoreDNS's ``kubernetes cluster.local in-addr.arpa ip6.arpa { pods insecure;
    fallthrough in-addr.arpa ip6.arpa }`` over the objects given to :meth:`update`."""

    def __init__(self, domain: str = "cluster.local", *, ttl: int = DEFAULT_TTL, pods: str = "insecure",
                 endpoint_pod_names: bool = False, ns_ips: Iterable[str] = (), reverse: bool = True) -> None:
        if pods not in ("insecure", "verified", "disabled"):
            raise ZoneError(f"pods: expected insecure, verified or disabled, got {pods!r}")
        if not 0 <= ttl <= 3600:
            raise ZoneError(f"ttl: expected 0..3600, got {ttl}")
        self.domain = _fqdn(domain.lower())
        self.ttl = ttl
        self.pods = pods
        self.endpoint_pod_names = endpoint_pod_names
        self.ns_ips = tuple(ns_ips)  # what ns.dns.<zone> resolves to (the DNS Service's IPs)
        self.reverse = reverse
        self.serial = 1
        self._services: dict[tuple[str, str], _Service] = {}
        # slices may arrive before their Service: kept here by (namespace, slice name)
        self._slices: dict[tuple[str, str], _Slice] = {}
        self._namespaces: set[str] = set()
        self._pod_ips: dict[tuple[str, str], tuple[str, ...]] = {}
        self._ns_cache: set[str] | None = None

    # -- feeding --------------------------------------------------------------------------

    def update(self, *objects: Mapping[str, Any], serial: int | None = None) -> None:
        """Add or replace objects (a watch's ADDED / MODIFIED)."""
        for obj in objects:
            self._dispatch(obj, self._PUT)
        self._bump(serial)

    def remove(self, *objects: Mapping[str, Any], serial: int | None = None) -> None:
        """Forget objects (a watch's DELETED); only kind, name and namespace are read."""
        for obj in objects:
            self._dispatch(obj, self._DEL)
        self._bump(serial)

    def apply(self, event: Mapping[str, Any]) -> None:
        """One watch event ``{"type": ADDED|MODIFIED|DELETED, "object": {...}}``."""
        kind = event.get("type")
        if kind == "DELETED":
            self.remove(event["object"])
        elif kind in ("ADDED", "MODIFIED"):
            self.update(event["object"])

    def _bump(self, serial: int | None) -> None:
        self._ns_cache = None
        # CoreDNS's SOA serial is the time of the last change; ours is given or counted
        self.serial = int(serial) if serial is not None else self.serial + 1

    def _dispatch(self, obj: Mapping[str, Any], table: Mapping[str, str]) -> None:
        kind = obj.get("kind")
        method = table.get(kind) if isinstance(kind, str) else None
        if method is None:
            raise ZoneError(f"kind: expected one of {', '.join(sorted(table))}, got {kind!r}")
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ZoneError(f"{kind}: metadata.name: required")
        getattr(self, method)(obj, str(meta.get("namespace") or "default").lower(), name.lower())

    _PUT = {"Service": "_put_service", "EndpointSlice": "_put_slice", "Pod": "_put_pod",
            "Namespace": "_put_namespace"}
    _DEL = {"Service": "_del_service", "EndpointSlice": "_del_slice", "Pod": "_del_pod",
            "Namespace": "_del_namespace"}

    def _put_service(self, obj: Mapping[str, Any], ns: str, name: str) -> None:
        spec = obj.get("spec") or {}
        ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip]
        external = spec.get("type") == "ExternalName"
        headless = not external and (not ips or ips[0] == "None")
        svc = _Service(namespace=ns, name=name, cluster_ips=() if headless or external else tuple(ips),
                       headless=headless, external_name=str(spec.get("externalName") or "") if external else "",
                       ports=_ports(spec.get("ports")))
        svc.slices = {key[1]: sl for key, sl in self._slices.items() if key[0] == ns and sl.service == name}
        self._services[(ns, name)] = svc

    def _del_service(self, obj: Mapping[str, Any], ns: str, name: str) -> None:
        self._services.pop((ns, name), None)

    def _put_slice(self, obj: Mapping[str, Any], ns: str, name: str) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        service = str(labels.get("kubernetes.io/service-name") or "").lower()
        self._del_slice(obj, ns, name)
        if not service:
            return  # not owned by a Service: CoreDNS ignores it too
        eps = []
        for ep in obj.get("endpoints") or ():
            # object/endpoint.go: only endpoints whose Ready condition is not false
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            ref = ep.get("targetRef") or {}
            for ip in ep.get("addresses") or ():
                eps.append(_Endpoint(str(ip), str(ep.get("hostname") or ""), str(ref.get("name") or "")))
        sl = _Slice(service=service, endpoints=tuple(eps), ports=_ports(obj.get("ports")))
        self._slices[(ns, name)] = sl
        svc = self._services.get((ns, service))
        if svc is not None:
            svc.slices[name] = sl

    def _del_slice(self, obj: Mapping[str, Any], ns: str, name: str) -> None:
        old = self._slices.pop((ns, name), None)
        if old is not None:
            svc = self._services.get((ns, old.service))
            if svc is not None:
                svc.slices.pop(name, None)

    def _put_pod(self, obj: Mapping[str, Any], ns: str, name: str) -> None:
        status = obj.get("status") or {}
        ips = [p.get("ip") for p in status.get("podIPs") or ()] or [status.get("podIP")]
        self._pod_ips[(ns, name)] = tuple(str(ip) for ip in ips if ip)

    def _del_pod(self, obj: Mapping[str, Any], ns: str, name: str) -> None:
        self._pod_ips.pop((ns, name), None)

    def _put_namespace(self, obj: Mapping[str, Any], ns: str, name: str) -> None:
        self._namespaces.add(name)

    def _del_namespace(self, obj: Mapping[str, Any], ns: str, name: str) -> None:
        self._namespaces.discard(name)

    def namespace_exists(self, ns: str) -> bool:
        """CoreDNS asks its Namespace cache; a namespace we were not told about but that holds
        a Service or a Pod exists all the same (the API server refuses objects otherwise)."""
        if self._ns_cache is None:
            self._ns_cache = (self._namespaces | {k[0] for k in self._services}
                              | {k[0] for k in self._pod_ips})
        return ns in self._ns_cache

    # -- answering ------------------------------------------------------------------------

    def answer(self, qname: str, qtype: str) -> Answer:
        """Answer one question (``qtype`` a type mnemonic: ``A``, ``AAAA``, ``SRV``...)."""
        name = _fqdn(qname.lower())
        qname = _fqdn(qname)
        qtype = qtype.upper()
        if name == self.domain or name.endswith("." + self.domain):
            return self._answer_forward_zone(name, qname, qtype)
        if self.reverse and any(name == z or name.endswith("." + z) for z in _REVERSE_ZONES):
            return self._answer_reverse(name, qname, qtype)
        return _FORWARD

    def soa(self) -> Record:
        minimum = self.ttl
        data = (f"ns.dns.{self.domain} hostmaster.{self.domain} {self.serial & 0xFFFFFFFF} "
                f"7200 1800 86400 {minimum}")
        return Record(self.domain, "SOA", min(self.ttl, 300), data)

    def _error(self, rcode: int) -> Answer:
        return Answer(rcode=rcode, authority=(self.soa(),))

    def _answer_forward_zone(self, name: str, qname: str, qtype: str) -> Answer:
        try:
            records, extra, target = self._lookup(name, qname, qtype)
        except _NoItems:
            return self._error(NXDOMAIN)
        if not records:
            return self._error(NOERROR)  # NODATA
        return Answer(answers=tuple(records), additional=tuple(extra), cname_target=target)

    def _lookup(self, name: str, qname: str, qtype: str) -> tuple[list[Record], list[Record], str | None]:
        """handler.go's switch on the type: (answers, additional, CNAME target to resolve)."""
        if qtype in ("A", "AAAA"):
            records, target = self._address(name, qname, qtype, 0)
            return records, [], target
        if qtype == "SRV":
            records, extra = self._srv(name, qname)
            return records, extra, None
        if qtype == "CNAME":
            services = self._services_for(name)
            if services and not is_ip(services[0][1]):
                return [Record(qname, "CNAME", self.ttl, _fqdn(services[0][1]))], [], None
            return [], [], None
        if qtype == "SOA":  # handler.go: the zone's SOA whatever the name
            return [self.soa()], [], None
        if qtype == "TXT" and name == "dns-version." + self.domain:
            return [Record(qname, "TXT", self.ttl, f'"{DNS_SCHEMA_VERSION}"')], [], None
        if qtype == "NS" and name == self.domain:
            ns = "ns.dns." + self.domain
            glue = [Record(ns, _family(ip), self.ttl, ip) for ip in self.ns_ips]
            return [Record(qname, "NS", self.ttl, ns)], glue, None
        # any other type: a fake A lookup tells NODATA from NXDOMAIN
        self._address(name, qname, "A", 0)
        return [], [], None

    def _address(self, name: str, qname: str, qtype: str, depth: int) -> tuple[list[Record], str | None]:
        if name == "ns.dns." + self.domain:
            return [Record(qname, qtype, self.ttl, ip) for ip in self.ns_ips if _family(ip) == qtype], None
        records: list[Record] = []
        seen: set[str] = set()
        target: str | None = None
        for _key, host, _port in self._services_for(name):
            if is_ip(host):
                if _family(host) == qtype and host not in seen:
                    seen.add(host)
                    records.append(Record(qname, qtype, self.ttl, host))
                continue
            cname = _fqdn(host)
            if cname.lower() == name or depth >= MAX_CNAME_CHAIN:
                continue  # x CNAME x, or a chain too long: not added (plugin.A)
            link = Record(qname, "CNAME", self.ttl, cname)
            inner = cname.lower()
            if inner == self.domain or inner.endswith("." + self.domain):
                try:
                    more, target = self._address(inner, cname, qtype, depth + 1)
                except _NoItems:
                    continue
                if more:
                    records += [link, *more]
                continue
            records.append(link)
            target = cname
        return records, target

    def _srv(self, name: str, qname: str) -> tuple[list[Record], list[Record]]:
        services = self._services_for(name)
        # plugin.SRV: records without a weight count 100 each; each gets 100*100/total
        total = 100 * len(services)
        weight = max(1, math.floor(100.0 / total * 100)) if total else 0
        records: list[Record] = []
        extra: list[Record] = []
        dup: set[tuple[str, str | int]] = set()
        for key, host, port in services:
            if port == _NO_PORT:
                continue
            if not is_ip(host):  # ExternalName: the target is the external name
                records.append(Record(qname, "SRV", self.ttl, f"0 {weight} {port} {_fqdn(host)}"))
                continue
            if (key, port) not in dup:
                dup.add((key, port))
                records.append(Record(qname, "SRV", self.ttl, f"0 {weight} {port} {key}"))
            if (key, host) not in dup:
                dup.add((key, host))
                extra.append(Record(key, _family(host), self.ttl, host))
        return records, extra

    # -- plugin/kubernetes: parse.go, Records, findServices, findPods ---------------------

    def _parse(self, name: str) -> _Request:
        base = name[: -len(self.domain)].rstrip(".")
        r = _Request()
        if base in ("", _SVC, _POD):
            return r
        segs = base.split(".")
        r.pod_or_svc = segs.pop()
        if r.pod_or_svc not in (_SVC, _POD):
            raise _NoItems
        if segs:
            r.namespace = segs.pop()
        if segs:
            r.service = segs.pop()
        if len(segs) == 1:
            r.endpoint = segs[0]
        elif len(segs) == 2:
            r.port, r.protocol = segs[0].removeprefix("_"), segs[1].removeprefix("_")
        elif segs:
            raise _NoItems  # too long to be anything
        return r

    def _services_for(self, name: str) -> list[_Svc]:
        """``[(target, host, port)]`` of the name; [] is NODATA, _NoItems NXDOMAIN."""
        r = self._parse(name)
        if not r.pod_or_svc or not r.namespace:
            return []
        if not self.namespace_exists(r.namespace):
            raise _NoItems
        if r.pod_or_svc == _POD:
            return self._find_pods(r)
        if not r.service:
            return []  # an existing namespace: NODATA
        svc = self._services.get((r.namespace, r.service))
        if svc is None:
            raise _NoItems
        out = self._find_service(svc, r)
        if not out:
            raise _NoItems
        return out

    def _find_service(self, svc: _Service, r: _Request) -> list[_Svc]:
        svc_name = f"{svc.name}.{svc.namespace}.{_SVC}.{self.domain}"
        if svc.external_name:
            if r.endpoint or is_ip(svc.external_name):
                return []
            return [(svc_name, svc.external_name, 0)]
        out: list[_Svc] = []
        if svc.headless or r.endpoint:
            for sl in svc.slices.values():
                for ep in sl.endpoints:
                    host = endpoint_hostname(ep, self.endpoint_pod_names)
                    if r.endpoint and host.lower() != r.endpoint:
                        continue
                    for pname, port, proto in sl.ports:
                        if _port_matches(r, pname, proto):
                            out.append((f"{host}.{svc_name}", ep.ip, port))
            return out
        for pname, port, proto in svc.ports:
            if _port_matches(r, pname, proto):
                out.extend((svc_name, ip, port) for ip in svc.cluster_ips)
        return out

    def _find_pods(self, r: _Request) -> list[_Svc]:
        if self.pods == "disabled":
            raise _NoItems
        pod = r.service
        if not pod:
            return []  # NODATA
        dashed = pod.count("-") == 3 and "--" not in pod
        ip = pod.replace("-", ".") if dashed else pod.replace("-", ":")
        if not is_ip(ip):
            raise _NoItems
        ip = str(ipaddress.ip_address(ip))
        key = f"{pod}.{r.namespace}.{_POD}.{self.domain}"
        if self.pods == "verified" and not any(
                k[0] == r.namespace and ip in ips for k, ips in self._pod_ips.items()):
            raise _NoItems
        return [(key, ip, _NO_PORT)]

    # -- reverse --------------------------------------------------------------------------

    def _answer_reverse(self, name: str, qname: str, qtype: str) -> Answer:
        ip = _reverse_ip(name)
        names = self._ptr_names(ip) if ip is not None else []
        if not names:
            return _FORWARD  # fallthrough in-addr.arpa ip6.arpa
        if qtype != "PTR":
            return self._error(NOERROR)
        return Answer(answers=tuple(Record(qname, "PTR", self.ttl, n) for n in names))

    def _ptr_names(self, ip: str) -> list[str]:
        """reverse.go: a Service whose ClusterIP it is, else the endpoints with that IP."""
        for svc in self._services.values():
            if ip in svc.cluster_ips:
                return [f"{svc.name}.{svc.namespace}.{_SVC}.{self.domain}"]
        out: list[str] = []
        for svc in self._services.values():
            for sl in svc.slices.values():
                for ep in sl.endpoints:
                    if ep.ip == ip:
                        n = f"{endpoint_hostname(ep, self.endpoint_pod_names)}.{svc.name}.{svc.namespace}.{_SVC}.{self.domain}"
                        if n not in out:
                            out.append(n)
        return out


def _port_matches(r: _Request, name: str, proto: str) -> bool:
    """matchPortAndProtocol: the request's parts are wildcards when empty; case-insensitive."""
    return (not r.port or r.port == name.lower()) and (not r.protocol or r.protocol == proto.lower())


def _reverse_ip(name: str) -> str | None:
    """``4.3.2.1.in-addr.arpa.`` -> ``1.2.3.4``; nibbles of ``ip6.arpa.`` -> the address."""
    labels = name.rstrip(".").split(".")
    try:
        if name.endswith("in-addr.arpa."):
            parts = labels[:-2]
            if len(parts) != 4:
                return None
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        nibbles = labels[:-2]
        if len(nibbles) != 32:
            return None
        text = "".join(reversed(nibbles))
        return str(ipaddress.IPv6Address(":".join(text[i:i + 4] for i in range(0, 32, 4))))
    except ValueError:
        return None

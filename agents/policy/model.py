"""The policy model: Kubernetes and Calico policies → :class:`Policy` / :class:`Rule` (sans-IO).

Two front ends produce the same model, the one Felix evaluates:

* :func:`from_kubernetes` — ``networking.k8s.io/v1`` NetworkPolicy, validated as the Kubernetes
  API server validates it (and defaulted as it defaults it: ``policyTypes``), then converted as
  libcalico-go's ``K8sNetworkPolicyToCalico`` converts it:

  - name ``knp.default.<name>``, order 1000, in the policy's namespace;
  - ``spec.podSelector`` → ``projectcalico.org/orchestrator == 'k8s' && <podSelector>`` (so it
    selects only pods — workload endpoints carry that label, see :func:`workload_labels` — and
    only in the policy's namespace, since the policy is namespaced);
  - every ingress/egress rule becomes one Allow :class:`Rule` per (protocol, peer): protocols in
    sorted name order (``SCTP`` < ``TCP`` < ``UDP``), no ``ports`` = one rule with protocol
    ``None`` (any); the numeric ports of one protocol are merged into ranges (Calico's
    ``SimplifyPorts``), named ports kept as ``str``; a port entry without ``port`` means every
    port of its protocol; a port without ``protocol`` is TCP; ``endPort`` → ``PortRange(port, endPort)``;
  - a peer maps to the *peer side* of the rule (``source`` for ingress, ``destination`` for
    egress; the ports always go to ``destination``):

    ============================================  ===============================================
    peer                                          EntityRule
    ============================================  ===============================================
    no ``from``/``to`` (or an empty list)         nothing: any peer
    ``ipBlock{cidr, except}``                     ``nets=(cidr,)``, ``not_nets=except`` (normalized)
    ``podSelector`` only                          ``selector=orchestrator && podSel``,
                                                  ``namespace_selector=None`` (= the policy's namespace)
    ``namespaceSelector`` only                    ``selector=orchestrator == 'k8s'``,
                                                  ``namespace_selector=nsSel`` (``{}`` → ``all()``)
    both                                          ``selector=orchestrator && podSel``,
                                                  ``namespace_selector=nsSel`` (AND)
    ============================================  ===============================================

    Peers of one rule are OR'ed (one Rule each), rules of one policy and policies are additive.

* :func:`from_calico` — ``projectcalico.org/v3`` NetworkPolicy (kind ``CalicoNetworkPolicy`` here)
  and GlobalNetworkPolicy, validated as Calico validates them.

``EntityRule.namespace_selector`` (over *namespace* labels; the engine adds
``kubernetes.io/metadata.name``): ``None`` means "the policy's own namespace" for a namespaced
policy (Kubernetes or Calico NetworkPolicy) and "any endpoint, namespaced or not (host endpoints
included)" for a GlobalNetworkPolicy, as Calico documents for a rule ``selector`` without
``namespaceSelector``. ``global()`` as a namespace selector means "endpoints without a
namespace" (host endpoints). A rule side with neither selector nor namespace_selector matches
any address (then only ``nets``/``not_nets`` restrict it).

``Policy.namespace_selector`` (an added field) holds a GlobalNetworkPolicy's own
``spec.namespaceSelector``: the policy applies to endpoints matching ``selector`` whose
namespace matches it (``None``: no restriction).

Every error is a :class:`PolicyError` whose ``str`` starts with the field path, e.g.
``spec.ingress[0].source.selector: position 5: expected a string literal``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.policy.selector import (
    ALL,
    Selector,
    SelectorError,
    and_selectors,
    label_selector,
    parse_selector,
)

__all__ = [
    "ACTIONS",
    "EntityRule",
    "K8S_POLICY_PREFIX",
    "NAMESPACE_LABEL",
    "ORCHESTRATOR_LABEL",
    "Policy",
    "PolicyError",
    "PortRange",
    "PROTOCOLS",
    "Rule",
    "from_calico",
    "from_kubernetes",
    "policy_from_object",
    "policy_key",
    "protocol_number",
    "workload_labels",
]

ACTIONS = ("Allow", "Deny", "Log", "Pass")

#: Protocol names the API accepts (case-insensitively) → IP protocol number.
PROTOCOLS: dict[str, int] = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}
_PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 132: "SCTP", 136: "UDPLite"}
_PORT_PROTOCOLS = frozenset({6, 17, 132, 136})

K8S_POLICY_PREFIX = "knp.default."
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
NAMESPACE_LABEL = "projectcalico.org/namespace"
_ORCHESTRATOR_K8S = parse_selector(f"{ORCHESTRATOR_LABEL} == 'k8s'")

KIND_K8S = "NetworkPolicy"
KIND_CALICO = "CalicoNetworkPolicy"
KIND_GLOBAL = "GlobalNetworkPolicy"


class PolicyError(ValueError):
    """A policy that does not validate. ``str``: ``"<path>: <message>"``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class PortRange:
    """An inclusive port range; a single port is ``PortRange(p, p)``."""

    lo: int
    hi: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"


@dataclass(frozen=True)
class EntityRule:
    """Calico's EntityRule: the source or the destination side of a rule (all fields AND'ed).

    ``nets``: the address must be in one of them (empty: any); ``not_nets``: in none of them;
    ``selector``/``not_selector``: over endpoint labels (a non-endpoint address never matches a
    ``selector`` and always passes a ``not_selector``); ``namespace_selector``: over the labels
    of the endpoint's namespace — see the module docstring for ``None``; ``ports``/``not_ports``:
    ``PortRange`` or a named port ``str`` (resolved on the destination endpoint's named ports).
    """

    nets: tuple[str, ...] = ()
    not_nets: tuple[str, ...] = ()
    selector: Selector | None = None
    not_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ports: tuple[PortRange | str, ...] = ()
    not_ports: tuple[PortRange | str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """One policy rule. ``protocol``/``not_protocol`` are IP protocol numbers; ``icmp`` /
    ``not_icmp`` are ``(type, code or None)``; ``ip_version`` 4 or 6 restricts the rule to that
    family."""

    action: str
    protocol: int | None = None
    not_protocol: int | None = None
    ip_version: int | None = None
    icmp: tuple[int, int | None] | None = None
    source: EntityRule = field(default_factory=EntityRule)
    destination: EntityRule = field(default_factory=EntityRule)
    not_icmp: tuple[int, int | None] | None = None


@dataclass(frozen=True)
class Policy:
    kind: str  # "NetworkPolicy" (k8s), "CalicoNetworkPolicy", "GlobalNetworkPolicy"
    name: str  # "knp.default.<name>" for a Kubernetes policy
    namespace: str | None  # None for a GlobalNetworkPolicy
    order: float | None  # Kubernetes policies: 1000; None sorts last
    selector: Selector
    types: frozenset[str]
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]
    key: tuple[str, str, str]  # (kind, namespace or "", name)
    namespace_selector: Selector | None = None  # GlobalNetworkPolicy spec.namespaceSelector


def workload_labels(labels: Mapping[str, str], namespace: str) -> dict[str, str]:
    """The labels Calico gives a pod's workload endpoint: the pod's labels plus
    ``projectcalico.org/orchestrator: k8s`` and ``projectcalico.org/namespace: <ns>`` (the
    Kubernetes policies' selectors include the orchestrator term)."""
    out = dict(labels)
    out[ORCHESTRATOR_LABEL] = "k8s"
    out[NAMESPACE_LABEL] = namespace
    return out


# --------------------------------------------------------------------------- helpers


def _map(value: Any, path: str, *, optional: bool = True) -> Mapping[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"expected an object, not {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(path, f"expected a list, not {type(value).__name__}")
    return value


def _unknown(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for k in obj:
        if k not in allowed:
            raise PolicyError(f"{path}.{k}" if path else str(k),
                              f"unknown field (expected one of {', '.join(sorted(allowed))})")


def _k8s_selector(obj: Any, path: str) -> Selector:
    if obj is not None and not isinstance(obj, Mapping):
        raise PolicyError(path, "expected a label selector object")
    try:
        return label_selector(obj)
    except SelectorError as e:
        raise PolicyError(f"{path}.{e.path}" if e.path else path, e.message) from None


def _calico_selector(text: Any, path: str) -> Selector:
    if not isinstance(text, str):
        raise PolicyError(path, f"expected a selector string, not {type(text).__name__}")
    try:
        return parse_selector(text)
    except SelectorError as e:
        raise PolicyError(path, f"position {e.position}: {e.message} (in {text!r})") from None


def protocol_number(value: Any, path: str = "protocol") -> int:
    """``TCP``/``udp``/``ICMPv6``/... or 1..255 → the IP protocol number."""
    if isinstance(value, bool):
        raise PolicyError(path, f"invalid protocol {value!r}")
    if isinstance(value, int):
        if 1 <= value <= 255:
            return value
        raise PolicyError(path, f"invalid protocol number {value}: expected 1-255")
    if isinstance(value, str):
        if value.isdigit():
            return protocol_number(int(value), path)
        num = PROTOCOLS.get(value.lower())
        if num is not None:
            return num
    raise PolicyError(path, f"invalid protocol {value!r}: expected TCP, UDP, SCTP, ICMP, ICMPv6, UDPLite or 1-255")


def _network(value: Any, path: str, *, allow_ip: bool) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str) or (not allow_ip and "/" not in value):
        raise PolicyError(path, f"invalid CIDR {value!r}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise PolicyError(path, f"invalid CIDR {value!r}") from None


_K8S_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_CALICO_PORT_NAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?$")


def _k8s_port_name(name: str, path: str) -> str:
    if (len(name) > 15 or not _K8S_PORT_NAME.match(name) or "--" in name
            or not any(c.isalpha() for c in name)):
        raise PolicyError(path, f"invalid port name {name!r}: must be 1-15 lowercase letters, digits "
                                "and '-', contain a letter, not start/end with '-' nor have '--'")
    return name


def _simplify_ports(ports: list[PortRange | str]) -> tuple[PortRange | str, ...]:
    """Calico's SimplifyPorts: named ports first (in order), then numeric ports merged into ranges."""
    if len(ports) <= 1:
        return tuple(ports)
    named = [p for p in ports if isinstance(p, str)]
    numeric = sorted({n for p in ports if isinstance(p, PortRange) for n in range(p.lo, p.hi + 1)})
    if len(numeric) <= 1:
        return tuple(ports)
    out: list[PortRange | str] = list(named)
    start = prev = numeric[0]
    for n in numeric[1:]:
        if n > prev + 1:
            out.append(PortRange(start, prev))
            start = n
        prev = n
    out.append(PortRange(start, prev))
    return tuple(out)


def _meta(obj: Mapping[str, Any], *, namespaced: bool) -> tuple[str, str | None]:
    meta = _map(obj.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError("metadata.name", "required")
    if not namespaced:
        return name, None
    ns = meta.get("namespace") or "default"
    if not isinstance(ns, str):
        raise PolicyError("metadata.namespace", "expected a string")
    return name, ns


# --------------------------------------------------------------------------- Kubernetes


def _k8s_peer(peer: Any, path: str) -> EntityRule:
    peer = _map(peer, path, optional=False)
    _unknown(peer, {"podSelector", "namespaceSelector", "ipBlock"}, path)
    present = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if peer.get(k) is not None]
    if not present:
        raise PolicyError(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    if "ipBlock" in present:
        if len(present) > 1:
            raise PolicyError(path, "may not specify both ipBlock and another peer")
        ib = _map(peer["ipBlock"], f"{path}.ipBlock", optional=False)
        _unknown(ib, {"cidr", "except"}, f"{path}.ipBlock")
        if "cidr" not in ib:
            raise PolicyError(f"{path}.ipBlock.cidr", "required")
        cidr = _network(ib["cidr"], f"{path}.ipBlock.cidr", allow_ip=False)
        excepts = []
        for j, ex in enumerate(_list(ib.get("except"), f"{path}.ipBlock.except")):
            p = f"{path}.ipBlock.except[{j}]"
            net = _network(ex, p, allow_ip=False)
            if (net.version != cidr.version or not net.subnet_of(cidr)  # type: ignore[arg-type]
                    or net.prefixlen <= cidr.prefixlen):
                raise PolicyError(p, f"must be a strict subset of cidr {str(cidr)!r}")
            excepts.append(str(net))
        return EntityRule(nets=(str(cidr),), not_nets=tuple(excepts))
    sel = _ORCHESTRATOR_K8S
    if peer.get("podSelector") is not None:
        sel = and_selectors(_ORCHESTRATOR_K8S, _k8s_selector(peer["podSelector"], f"{path}.podSelector"))
    ns_sel = None
    if peer.get("namespaceSelector") is not None:
        ns_sel = _k8s_selector(peer["namespaceSelector"], f"{path}.namespaceSelector")
    return EntityRule(selector=sel, namespace_selector=ns_sel)


def _k8s_port(port: Any, path: str) -> tuple[int, list[PortRange | str] | None]:
    """(protocol, ports or None = every port of that protocol)."""
    port = _map(port, path, optional=False)
    _unknown(port, {"protocol", "port", "endPort"}, path)
    proto_name = port.get("protocol", "TCP") or "TCP"
    if proto_name not in ("TCP", "UDP", "SCTP"):
        raise PolicyError(f"{path}.protocol", f"unsupported protocol {proto_name!r}: expected TCP, UDP or SCTP")
    proto = PROTOCOLS[proto_name.lower()]
    value = port.get("port")
    end = port.get("endPort")
    if value is None:
        if end is not None:
            raise PolicyError(f"{path}.endPort", "may not be specified when port is not specified")
        return proto, None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PolicyError(f"{path}.port", f"invalid port {value!r}")
    if isinstance(value, str):
        _k8s_port_name(value, f"{path}.port")
        if end is not None:
            raise PolicyError(f"{path}.endPort", "may not be specified when port is a named port")
        return proto, [value]
    if not 1 <= value <= 65535:
        raise PolicyError(f"{path}.port", f"invalid port {value}: must be between 1 and 65535")
    if end is None:
        return proto, [PortRange(value, value)]
    if isinstance(end, bool) or not isinstance(end, int) or not 1 <= end <= 65535:
        raise PolicyError(f"{path}.endPort", f"invalid endPort {end!r}: must be between 1 and 65535")
    if end < value:
        raise PolicyError(f"{path}.endPort", f"must be greater than or equal to port ({end} < {value})")
    return proto, [PortRange(value, end)]


def _k8s_rule(rule: Any, path: str, peers_key: str, ingress: bool) -> list[Rule]:
    rule = _map(rule, path)
    _unknown(rule, {peers_key, "ports"}, path)
    peers = [_k8s_peer(p, f"{path}.{peers_key}[{i}]")
             for i, p in enumerate(_list(rule.get(peers_key), f"{path}.{peers_key}"))]
    if not peers:
        peers = [EntityRule()]
    by_proto: dict[int | None, list[PortRange | str] | None] = {}
    raw_ports = _list(rule.get("ports"), f"{path}.ports")
    if not raw_ports:
        by_proto = {None: None}
    for i, p in enumerate(raw_ports):
        proto, ports = _k8s_port(p, f"{path}.ports[{i}]")
        if ports is None:
            by_proto[proto] = None
        elif proto not in by_proto:
            by_proto[proto] = list(ports)
        else:
            existing = by_proto[proto]
            if existing is not None:
                existing.extend(ports)
    rules: list[Rule] = []
    for pnum in sorted(by_proto, key=lambda p: "" if p is None else _PROTOCOL_NAMES[p]):
        plist = by_proto[pnum]
        ports_t = _simplify_ports(plist) if plist else ()
        for peer in peers:
            if ingress:
                rules.append(Rule("Allow", protocol=pnum, source=peer, destination=EntityRule(ports=ports_t)))
            else:
                dst = EntityRule(nets=peer.nets, not_nets=peer.not_nets, selector=peer.selector,
                                 namespace_selector=peer.namespace_selector, ports=ports_t)
                rules.append(Rule("Allow", protocol=pnum, destination=dst))
    return rules


def from_kubernetes(obj: Mapping[str, Any]) -> Policy:
    """A ``networking.k8s.io/v1`` NetworkPolicy → :class:`Policy` (see the module docstring).

    ``policyTypes`` absent or empty is defaulted as the API server does: ``Ingress``, plus
    ``Egress`` when ``spec.egress`` has at least one rule. ``ingress: []`` (or absent) with
    type Ingress = no rule = deny all ingress; ``ingress: [{}]`` = one rule allowing all.
    """
    obj = _map(obj, "", optional=False)
    name, ns = _meta(obj, namespaced=True)
    assert ns is not None
    spec = _map(obj.get("spec"), "spec")
    _unknown(spec, {"podSelector", "ingress", "egress", "policyTypes"}, "spec")
    pod_sel = and_selectors(_ORCHESTRATOR_K8S, _k8s_selector(spec.get("podSelector"), "spec.podSelector"))
    raw_in = _list(spec.get("ingress"), "spec.ingress")
    raw_eg = _list(spec.get("egress"), "spec.egress")
    ingress = [r for i, x in enumerate(raw_in) for r in _k8s_rule(x, f"spec.ingress[{i}]", "from", True)]
    egress = [r for i, x in enumerate(raw_eg) for r in _k8s_rule(x, f"spec.egress[{i}]", "to", False)]
    raw_types = _list(spec.get("policyTypes"), "spec.policyTypes")
    types: set[str] = set()
    for i, t in enumerate(raw_types):
        if t not in ("Ingress", "Egress"):
            raise PolicyError(f"spec.policyTypes[{i}]", f"unsupported value {t!r}: expected Ingress or Egress")
        if t in types:
            raise PolicyError(f"spec.policyTypes[{i}]", f"duplicate value {t!r}")
        types.add(t)
    if not types:
        types = {"Ingress", "Egress"} if raw_eg else {"Ingress"}
    cname = K8S_POLICY_PREFIX + name
    return Policy(kind=KIND_K8S, name=cname, namespace=ns, order=1000.0, selector=pod_sel,
                  types=frozenset(types), ingress=tuple(ingress), egress=tuple(egress),
                  key=(KIND_K8S, ns, cname))


# --------------------------------------------------------------------------- Calico v3


def _calico_ports(value: Any, path: str) -> tuple[PortRange | str, ...]:
    out: list[PortRange | str] = []
    for i, p in enumerate(_list(value, path)):
        pp = f"{path}[{i}]"
        if isinstance(p, bool):
            raise PolicyError(pp, f"invalid port {p!r}")
        if isinstance(p, int):
            if not 0 <= p <= 65535:
                raise PolicyError(pp, f"invalid port {p}: must be between 0 and 65535")
            out.append(PortRange(p, p))
            continue
        if not isinstance(p, str) or not p:
            raise PolicyError(pp, f"invalid port {p!r}")
        m = re.fullmatch(r"(\d+)(?::(\d+))?", p)
        if m:
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi > 65535 or lo > 65535:
                raise PolicyError(pp, f"invalid port {p!r}: must be between 0 and 65535")
            if lo > hi:
                raise PolicyError(pp, f"invalid port range {p!r}: minimum is greater than maximum")
            out.append(PortRange(lo, hi))
        elif len(p) <= 128 and _CALICO_PORT_NAME.match(p):
            out.append(p)
        else:
            raise PolicyError(pp, f"invalid port {p!r}: expected a number, 'lo:hi' or a port name")
    return tuple(out)


def _nets(value: Any, path: str) -> tuple[tuple[str, ...], set[int]]:
    out: list[str] = []
    versions: set[int] = set()
    for i, n in enumerate(_list(value, path)):
        net = _network(n, f"{path}[{i}]", allow_ip=True)
        out.append(str(net))
        versions.add(net.version)
    return tuple(out), versions


_ENTITY_FIELDS = {"nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts",
                  "serviceAccounts", "services"}


def _calico_entity(obj: Any, path: str) -> tuple[EntityRule, set[int]]:
    obj = _map(obj, path)
    _unknown(obj, _ENTITY_FIELDS, path)
    for unsupported in ("serviceAccounts", "services"):
        if obj.get(unsupported):
            raise PolicyError(f"{path}.{unsupported}", "not supported by this emulator")
    nets, v1 = _nets(obj.get("nets"), f"{path}.nets")
    not_nets, v2 = _nets(obj.get("notNets"), f"{path}.notNets")

    def sel(key: str) -> Selector | None:
        value = obj.get(key)
        if value is None or value == "":
            return None
        return _calico_selector(value, f"{path}.{key}")

    ent = EntityRule(nets=nets, not_nets=not_nets, selector=sel("selector"), not_selector=sel("notSelector"),
                     namespace_selector=sel("namespaceSelector"),
                     ports=_calico_ports(obj.get("ports"), f"{path}.ports"),
                     not_ports=_calico_ports(obj.get("notPorts"), f"{path}.notPorts"))
    return ent, v1 | v2


def _icmp(value: Any, path: str) -> tuple[int, int | None] | None:
    if value is None:
        return None
    obj = _map(value, path, optional=False)
    _unknown(obj, {"type", "code"}, path)
    t = obj.get("type")
    c = obj.get("code")
    if t is None:
        if c is not None:
            raise PolicyError(f"{path}.code", "may not be specified without type")
        return None
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 254:
        raise PolicyError(f"{path}.type", f"invalid ICMP type {t!r}: expected 0-254")
    if c is not None and (isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255):
        raise PolicyError(f"{path}.code", f"invalid ICMP code {c!r}: expected 0-255")
    return (t, c)


_RULE_FIELDS = {"action", "protocol", "notProtocol", "ipVersion", "icmp", "notICMP", "source",
                "destination", "http", "metadata"}


def _calico_rule(obj: Any, path: str) -> Rule:
    obj = _map(obj, path, optional=False)
    _unknown(obj, _RULE_FIELDS, path)
    if obj.get("http"):
        raise PolicyError(f"{path}.http", "HTTP match criteria are not supported by this emulator")
    action = obj.get("action")
    if action not in ACTIONS:
        raise PolicyError(f"{path}.action", f"invalid action {action!r}: expected one of {', '.join(ACTIONS)}")
    proto = protocol_number(obj["protocol"], f"{path}.protocol") if obj.get("protocol") is not None else None
    not_proto = (protocol_number(obj["notProtocol"], f"{path}.notProtocol")
                 if obj.get("notProtocol") is not None else None)
    ipv: int | None = obj.get("ipVersion")
    if ipv is not None and ipv not in (4, 6):
        raise PolicyError(f"{path}.ipVersion", f"invalid IP version {ipv!r}: expected 4 or 6")
    icmp = _icmp(obj.get("icmp"), f"{path}.icmp")
    not_icmp = _icmp(obj.get("notICMP"), f"{path}.notICMP")
    for key, val in (("icmp", icmp), ("notICMP", not_icmp)):
        if val is not None:
            if proto not in (1, 58):
                raise PolicyError(f"{path}.{key}", "requires protocol ICMP or ICMPv6")
    if proto == 1 and ipv == 6:
        raise PolicyError(f"{path}.ipVersion", "protocol ICMP requires ipVersion 4")
    if proto == 58 and ipv == 4:
        raise PolicyError(f"{path}.ipVersion", "protocol ICMPv6 requires ipVersion 6")
    src, vs = _calico_entity(obj.get("source"), f"{path}.source")
    dst, vd = _calico_entity(obj.get("destination"), f"{path}.destination")
    for side, ent in (("source", src), ("destination", dst)):
        for key, ports in (("ports", ent.ports), ("notPorts", ent.not_ports)):
            if ports and proto not in _PORT_PROTOCOLS:
                raise PolicyError(f"{path}.{side}.{key}", "requires protocol TCP, UDP, SCTP or UDPLite")
    versions = vs | vd
    if ipv is not None and versions - {ipv}:
        raise PolicyError(f"{path}.ipVersion", f"nets of another IP version than ipVersion {ipv}")
    if ipv is None and proto == 1:
        ipv = 4
    elif ipv is None and proto == 58:
        ipv = 6
    if proto == 1 and 6 in versions or proto == 58 and 4 in versions:
        raise PolicyError(f"{path}.protocol", "ICMP version does not match the IP version of the nets")
    return Rule(action=action, protocol=proto, not_protocol=not_proto, ip_version=ipv, icmp=icmp,
                not_icmp=not_icmp, source=src, destination=dst)


_SPEC_FIELDS = {"order", "selector", "types", "ingress", "egress", "serviceAccountSelector", "tier",
                "performanceHints"}
_GLOBAL_SPEC_FIELDS = _SPEC_FIELDS | {"namespaceSelector", "doNotTrack", "preDNAT", "applyOnForward"}


def from_calico(obj: Mapping[str, Any]) -> Policy:
    """A ``projectcalico.org/v3`` NetworkPolicy (→ kind ``CalicoNetworkPolicy``) or
    GlobalNetworkPolicy → :class:`Policy`.

    ``types`` absent or empty is inferred as Calico does: ``Egress`` only when there are egress
    rules and no ingress rules, both when there are both, otherwise ``Ingress``. Unsupported
    and refused: ``serviceAccountSelector``, rule ``http``, ``serviceAccounts``, ``services``,
    ``doNotTrack``/``preDNAT`` true, a tier other than ``default``.
    """
    obj = _map(obj, "", optional=False)
    kind = obj.get("kind")
    if kind not in ("NetworkPolicy", "GlobalNetworkPolicy"):
        raise PolicyError("kind", f"expected NetworkPolicy or GlobalNetworkPolicy, not {kind!r}")
    is_global = kind == "GlobalNetworkPolicy"
    name, ns = _meta(obj, namespaced=not is_global)
    spec = _map(obj.get("spec"), "spec")
    _unknown(spec, _GLOBAL_SPEC_FIELDS if is_global else _SPEC_FIELDS, "spec")
    if spec.get("serviceAccountSelector"):
        raise PolicyError("spec.serviceAccountSelector", "not supported by this emulator")
    for flag in ("doNotTrack", "preDNAT"):
        if spec.get(flag):
            raise PolicyError(f"spec.{flag}", "not supported by this emulator")
    tier = spec.get("tier")
    if tier not in (None, "", "default"):
        raise PolicyError("spec.tier", f"only the default tier is supported, not {tier!r}")
    order = spec.get("order")
    if order is not None:
        if isinstance(order, bool) or not isinstance(order, int | float):
            raise PolicyError("spec.order", f"expected a number, not {order!r}")
        order = float(order)
    selector = ALL
    if spec.get("selector") not in (None, ""):
        selector = _calico_selector(spec["selector"], "spec.selector")
    ns_sel = None
    if spec.get("namespaceSelector") not in (None, ""):
        ns_sel = _calico_selector(spec["namespaceSelector"], "spec.namespaceSelector")
    ingress = tuple(_calico_rule(r, f"spec.ingress[{i}]")
                    for i, r in enumerate(_list(spec.get("ingress"), "spec.ingress")))
    egress = tuple(_calico_rule(r, f"spec.egress[{i}]")
                   for i, r in enumerate(_list(spec.get("egress"), "spec.egress")))
    types: set[str] = set()
    for i, t in enumerate(_list(spec.get("types"), "spec.types")):
        if t not in ("Ingress", "Egress"):
            raise PolicyError(f"spec.types[{i}]", f"invalid type {t!r}: expected Ingress or Egress")
        types.add(t)
    if not types:
        if egress and not ingress:
            types = {"Egress"}
        elif egress:
            types = {"Ingress", "Egress"}
        else:
            types = {"Ingress"}
    pkind = KIND_GLOBAL if is_global else KIND_CALICO
    return Policy(kind=pkind, name=name, namespace=ns, order=order, selector=selector,
                  types=frozenset(types), ingress=ingress, egress=egress,
                  key=(pkind, ns or "", name), namespace_selector=ns_sel)


# --------------------------------------------------------------------------- dispatch


def _api_kind(obj: Mapping[str, Any]) -> tuple[str, str]:
    api = obj.get("apiVersion")
    kind = obj.get("kind")
    if api == "networking.k8s.io/v1" and kind == "NetworkPolicy":
        return api, kind
    if api == "projectcalico.org/v3" and kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
        return api, kind
    raise PolicyError("apiVersion", f"not a policy: apiVersion {api!r} kind {kind!r} (expected "
                                    "networking.k8s.io/v1 NetworkPolicy or projectcalico.org/v3 "
                                    "NetworkPolicy/GlobalNetworkPolicy)")


def policy_from_object(obj: Mapping[str, Any]) -> Policy:
    """Dispatch on ``apiVersion`` + ``kind``."""
    if not isinstance(obj, Mapping):
        raise PolicyError("", f"expected an object, not {type(obj).__name__}")
    api, _kind = _api_kind(obj)
    if api == "networking.k8s.io/v1":
        return from_kubernetes(obj)
    return from_calico(obj)


def policy_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """The :attr:`Policy.key` an object would get, without validating its spec (for deletes)."""
    api, kind = _api_kind(obj)
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    if api == "networking.k8s.io/v1":
        return (KIND_K8S, str(meta.get("namespace") or "default"), K8S_POLICY_PREFIX + name)
    if kind == "GlobalNetworkPolicy":
        return (KIND_GLOBAL, "", name)
    return (KIND_CALICO, str(meta.get("namespace") or "default"), name)

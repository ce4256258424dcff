"""The policy engine (sans-IO): Calico's policy evaluation, compiled the way Felix compiles it.

State: namespaces (labels), endpoints (pods = workload endpoints, nodes = host endpoints) and
policies (:class:`agents.policy.model.Policy`).  Evaluation follows Calico
(https://docs.tigera.io/calico/latest/network-policy/, "How policy is evaluated"):

* the policies that apply to an endpoint in a direction are those whose selector matches it (a
  namespaced policy: only workload endpoints of its own namespace; a GlobalNetworkPolicy:
  workload and host endpoints) and whose ``types`` hold the direction, ordered by ``order``
  (``None`` = infinite, last), then by name;
* their rules run in order: Allow / Deny end the evaluation, Log records (counted in
  :attr:`PolicyEngine.log_hits`) and continues, Pass ends the (single, default) tier and the
  endpoint's profile applies, which allows (Kubernetes namespace profiles allow);
* no applicable policy: allowed (``rule="no-policy"``); applicable policies and no rule
  decided: denied (``rule="default-deny"``).

A rule matches when every one of its conditions does: protocol / notProtocol, ipVersion,
icmp / notICMP, the *peer* side (the rule's source for ingress, its destination for egress:
nets / notNets against the peer address, selector / notSelector / namespaceSelector against the
peer endpoint), the *local* side (the other entity, against the endpoint the policy is
enforced on), destination ports / notPorts against the destination port (named ports resolved
on the destination endpoint: name and protocol) and source ports against the source port.

Selector scoping (as libcalico-go converts rules for Felix): in a namespaced policy an entity
with a selector or notSelector and no namespaceSelector only matches endpoints of the policy's
namespace; a namespaceSelector selects endpoints of the matching namespaces (``global()``:
endpoints without a namespace, i.e. host endpoints); any selector requires the peer to *be* an
endpoint (an address nobody holds matches no selector, but does match a lone notSelector of a
global policy).  Every namespace carries ``kubernetes.io/metadata.name``; workload endpoints
carry Calico's ``projectcalico.org/namespace`` and ``projectcalico.org/orchestrator`` labels.

Performance (Felix's design, in Python terms): nothing is matched per packet that can be
matched per change.  For each rule the set of endpoints its peer selector matches is computed
once (an "IP set", updated incrementally when an endpoint changes); for each endpoint and
direction the applicable rules are compiled into a :class:`_Chain` of bitmasks, one bit per
rule in evaluation order: a mask per protocol, per address family (ipVersion and the local side
folded in), per peer endpoint, per address interval of the rules' nets (a ``bisect`` over the
interval boundaries) and per destination-port interval.  A decision is a handful of dict
lookups, two bisects and ANDs of Python ints; the lowest set bit is the first matching rule.
Rules whose match depends on the packet in ways the masks do not cover (ICMP type, source
ports, named ports on the peer) are flagged and verified individually when their bit comes up.
Compiled chains are dropped on every change and rebuilt on the next decision for the endpoint.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.policy.model import EntityRule, Policy, PortRange, Rule

__all__ = ["Decision", "Endpoint", "PolicyEngine", "PROTOCOLS", "protocol_number"]

NS_NAME_LABEL = "kubernetes.io/metadata.name"
CALICO_NS_NAME_LABEL = "projectcalico.org/name"
CALICO_NS_LABEL = "projectcalico.org/namespace"
CALICO_ORCH_LABEL = "projectcalico.org/orchestrator"

INGRESS = "ingress"
EGRESS = "egress"
_TYPES = {INGRESS: "Ingress", EGRESS: "Egress"}

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPV6": 58, "UDPLITE": 136}
_ICMP_PROTOS = (1, 58)


def protocol_number(name: str | int) -> int:
    """``"TCP"`` / ``"tcp"`` / ``6`` / ``"6"`` → 6 (Calico accepts names in any case and numbers)."""
    if isinstance(name, int):
        return name
    text = str(name).strip()
    if text.isdigit():
        return int(text)
    try:
        return PROTOCOLS[text.upper()]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}") from None


@dataclass
class Endpoint:
    key: str                      # "ns/pod" for a workload, "host:<node>" for a host endpoint
    namespace: str | None         # None for a host endpoint
    labels: dict[str, str]
    ips: list[str]                # v4 and/or v6; may be empty (a what-if pod: no address)
    ports: list[tuple[str, str, int]] = field(default_factory=list)  # (name, protocol, number)
    node: str | None = None
    host: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy: str | None            # the policy whose rule decided (or passed), None for a default
    rule: str                     # "ingress[0]" / "default-deny" / "no-policy" / "profile" / ...


NO_POLICY = Decision(True, None, "no-policy")
# Calico: "If a host endpoint is added and network policy is not in place, the Calico default is
# to deny traffic to/from that endpoint (except for traffic allowed by failsafe rules)"; the
# failsafe ports are the node's business (agents/node/felix.py), not the engine's.
HOST_NO_POLICY = Decision(False, None, "host-endpoint-default-deny")
UNKNOWN_ENDPOINT = Decision(True, None, "unknown-endpoint")

_ALLOW, _DENY, _LOG, _PASS = "Allow", "Deny", "Log", "Pass"


# --------------------------------------------------------------------------- addresses


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _ip_int(ip: str) -> int:
    if ":" in ip:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
    try:
        return int.from_bytes(socket.inet_aton(ip), "big")
    except OSError:
        return int(ipaddress.ip_address(ip))


_NET_CACHE: dict[str, tuple[int, int, int]] = {}


def _net(text: str) -> tuple[int, int, int]:
    """CIDR (or bare address) → (family, first, last)."""
    got = _NET_CACHE.get(text)
    if got is None:
        net = ipaddress.ip_network(text, strict=False)
        got = (net.version, int(net.network_address), int(net.broadcast_address))
        _NET_CACHE[text] = got
    return got


def _in_nets(nets: Iterable[str], ip: str) -> bool:
    fam, x = _family(ip), _ip_int(ip)
    for n in nets:
        f, lo, hi = _net(n)
        if f == fam and lo <= x <= hi:
            return True
    return False


def _sweep(events: list[tuple[int, int, int, bool]], base: int) -> tuple[list[int], list[int]]:
    """Elementary intervals of a line (ports, addresses) from range events.

    ``events``: (position, +1/-1, bit, is_not).  Returns (bounds, masks): the mask for value
    ``x`` is ``masks[bisect_right(bounds, x)]``: rules without a positive range constraint
    (``base``) or with a range holding ``x``, minus rules with a negative range holding ``x``.
    """
    if not events:
        return [], [base]
    events.sort(key=lambda e: e[0])
    counts: dict[tuple[int, bool], int] = {}
    cur_in = 0
    cur_not = 0
    bounds: list[int] = []
    masks = [base]
    i = 0
    n = len(events)
    while i < n:
        pos = events[i][0]
        while i < n and events[i][0] == pos:
            _, delta, bit, neg = events[i]
            k = (bit, neg)
            c = counts.get(k, 0) + delta
            counts[k] = c
            if neg:
                cur_not = (cur_not | bit) if c > 0 else (cur_not & ~bit)
            else:
                cur_in = (cur_in | bit) if c > 0 else (cur_in & ~bit)
            i += 1
        bounds.append(pos)
        masks.append((base | cur_in) & ~cur_not)
    return bounds, masks


# --------------------------------------------------------------------------- the compiled chain


class _Chain:
    """One endpoint's applicable rules in one direction, compiled to bitmasks."""

    __slots__ = ("empty", "decisions", "rules", "log_mask", "complex_mask", "proto_masks",
                 "proto_other", "fam_masks", "any_mask", "nonep_mask", "ep_masks",
                 "net_bounds", "net_masks", "no_nets_mask", "no_addr_mask", "port_bounds", "port_masks",
                 "all_mask", "policies")

    def __init__(self) -> None:
        self.empty = True
        self.decisions: list[Decision] = []
        self.rules: list[tuple[Policy, Rule, str]] = []
        self.log_mask = 0
        self.complex_mask = 0
        self.proto_masks: dict[int, int] = {}
        self.proto_other: list[tuple[int, int | None, int | None]] = []
        self.fam_masks: dict[int, int] = {4: 0, 6: 0, 0: 0}
        self.any_mask = 0
        self.nonep_mask = 0
        self.ep_masks: dict[str, int] = {}
        self.net_bounds: dict[int, list[int]] = {4: [], 6: []}
        self.net_masks: dict[int, list[int]] = {4: [0], 6: [0]}
        self.no_nets_mask = 0
        self.no_addr_mask = 0     # rules with neither nets nor notNets: all a peer without an address can match
        self.port_bounds: list[int] = []
        self.port_masks: list[int] = [0]
        self.all_mask = 0
        self.policies: list[str] = []

    def proto_mask(self, proto: int) -> int:
        m = self.proto_masks.get(proto)
        if m is None:
            m = 0
            for bit, p, notp in self.proto_other:
                if (p is None or p == proto) and (notp is None or notp != proto):
                    m |= bit
            self.proto_masks[proto] = m
        return m


# --------------------------------------------------------------------------- the engine


class PolicyEngine:
    """Namespaces, endpoints and policies; decisions for one side (:meth:`decide`) or a
    connection (:meth:`verdict`).  See the module docstring for the semantics."""

    def __init__(self) -> None:
        self.generation = 0
        self._namespaces: dict[str, dict[str, str]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._ep_labels: dict[str, dict[str, str]] = {}
        self._by_ip: dict[str, str] = {}
        self._policies: dict[tuple[str, str, str], Policy] = {}
        self._sorted: list[Policy] | None = None
        # rule peer sets ("IP sets"): (scope ns, selector, notSelector, nsSelector) ->
        # None (matches every peer) or (non-endpoints match?, set of endpoint keys)
        self._peer_sets: dict[tuple[Any, ...], tuple[bool, set[str]] | None] = {}
        self._chains: dict[tuple[str, str], _Chain] = {}
        self.log_hits: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ state

    def _changed(self) -> None:
        self.generation += 1
        self._chains.clear()

    def set_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        new = dict(labels)
        new[NS_NAME_LABEL] = name
        new[CALICO_NS_NAME_LABEL] = name  # Calico's automatic namespace label
        if self._namespaces.get(name) == new:
            return
        self._namespaces[name] = new
        self._peer_sets.clear()  # namespace selectors: recompute lazily
        self._changed()

    def delete_namespace(self, name: str) -> None:
        if self._namespaces.pop(name, None) is not None:
            self._peer_sets.clear()
            self._changed()

    def namespace_labels(self, name: str) -> dict[str, str]:
        got = self._namespaces.get(name)
        return got if got is not None else {NS_NAME_LABEL: name}

    def set_endpoint(self, ep: Endpoint) -> None:
        # a named port of a protocol no rule can name (the API server refuses those) never matches
        ep.ports = [p for p in ep.ports if str(p[1]).upper() in PROTOCOLS or str(p[1]).isdigit()]
        old = self._endpoints.get(ep.key)
        if old is not None:
            for ip in old.ips:
                if self._by_ip.get(ip) == old.key:
                    del self._by_ip[ip]
        self._endpoints[ep.key] = ep
        labels = dict(ep.labels)
        if not ep.host and ep.namespace is not None:
            labels.setdefault(CALICO_NS_LABEL, ep.namespace)
            labels.setdefault(CALICO_ORCH_LABEL, "k8s")
        self._ep_labels[ep.key] = labels
        for ip in ep.ips:
            self._by_ip[ip] = ep.key
        # incremental IP-set update: re-test only this endpoint against every known set
        for skey, entry in self._peer_sets.items():
            if entry is None:
                continue
            if self._set_key_matches(skey, ep):
                entry[1].add(ep.key)
            else:
                entry[1].discard(ep.key)
        self._changed()

    def delete_endpoint(self, key: str) -> None:
        old = self._endpoints.pop(key, None)
        if old is None:
            return
        self._ep_labels.pop(key, None)
        for ip in old.ips:
            if self._by_ip.get(ip) == key:
                del self._by_ip[ip]
        for entry in self._peer_sets.values():
            if entry is not None:
                entry[1].discard(key)
        self._changed()

    def set_policy(self, policy: Policy) -> None:
        self._policies[policy.key] = policy
        self._sorted = None
        self._changed()

    def delete_policy(self, key: tuple[str, str, str]) -> None:
        if self._policies.pop(key, None) is not None:
            self._sorted = None
            self._prune_sets()
            self._changed()

    def _prune_sets(self) -> None:
        """Forget the IP sets no policy's rule refers to any more."""
        used = set()
        for pol in self._policies.values():
            for rule in (*pol.ingress, *pol.egress):
                for ent in (rule.source, rule.destination):
                    used.add(self._set_key(pol, ent))
        for skey in [k for k in self._peer_sets if k not in used]:
            del self._peer_sets[skey]

    def endpoint(self, key: str) -> Endpoint | None:
        return self._endpoints.get(key)

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def policies(self) -> list[Policy]:
        return list(self._ordered())

    def endpoint_by_ip(self, ip: str) -> Endpoint | None:
        key = self._by_ip.get(ip)
        return self._endpoints[key] if key is not None else None

    # ------------------------------------------------------------------ matching helpers

    def _ordered(self) -> list[Policy]:
        if self._sorted is None:
            self._sorted = sorted(
                self._policies.values(),
                key=lambda p: (p.order is None, p.order if p.order is not None else 0.0, p.name,
                               p.namespace or ""))
        return self._sorted

    def _applies(self, policy: Policy, ep: Endpoint, direction: str) -> bool:
        if _TYPES[direction] not in policy.types:
            return False
        if policy.namespace is not None and (ep.host or ep.namespace != policy.namespace):
            return False
        nsel = policy.namespace_selector  # a GlobalNetworkPolicy's
        if nsel is not None and not self._in_namespaces(nsel, ep):
            return False
        return policy.selector.matches(self._ep_labels[ep.key])

    def _in_namespaces(self, nsel: Any, ep: Endpoint) -> bool:
        """Does a namespaceSelector select ``ep``?  ``global()`` selects the endpoints without a
        namespace (host endpoints); any other expression the namespaces whose labels match."""
        if nsel.is_global:
            return ep.namespace is None
        return ep.namespace is not None and bool(nsel.matches(self.namespace_labels(ep.namespace)))

    def applicable(self, ep: Endpoint, direction: str) -> list[Policy]:
        return [p for p in self._ordered() if self._applies(p, ep, direction)]

    def policies_for(self, key: str) -> dict[str, list[str]]:
        ep = self._endpoints.get(key)
        if ep is None:
            return {INGRESS: [], EGRESS: []}
        return {d: [p.name for p in self.applicable(ep, d)] for d in (INGRESS, EGRESS)}

    @staticmethod
    def _set_key(policy: Policy, ent: EntityRule) -> tuple[Any, ...] | None:
        sel, notsel, nsel = ent.selector, ent.not_selector, ent.namespace_selector
        if sel is None and notsel is None and nsel is None:
            return None
        scope = policy.namespace if (nsel is None and (sel is not None or notsel is not None)) else None
        return (scope, sel, notsel, nsel)

    def _set_key_matches(self, skey: tuple[Any, ...], ep: Endpoint | None) -> bool:
        scope, sel, notsel, nsel = skey
        if ep is None:
            # a non-endpoint address: only a lone, unscoped notSelector matches it
            return sel is None and nsel is None and scope is None
        if nsel is not None:
            if not self._in_namespaces(nsel, ep):
                return False
        elif scope is not None and ep.namespace != scope:
            return False
        labels = self._ep_labels[ep.key]
        if sel is not None and not sel.matches(labels):
            return False
        return not (notsel is not None and notsel.matches(labels))

    def _peer_set(self, skey: tuple[Any, ...]) -> tuple[bool, set[str]]:
        entry = self._peer_sets.get(skey)
        if entry is None:
            keys = {k for k, ep in self._endpoints.items() if self._set_key_matches(skey, ep)}
            entry = (self._set_key_matches(skey, None), keys)
            self._peer_sets[skey] = entry
        return entry

    def _entity_matches(self, policy: Policy, ent: EntityRule, ep: Endpoint, ip: str | None) -> bool:
        """Full check of one entity against a known endpoint and address (the local side)."""
        skey = self._set_key(policy, ent)
        if skey is not None and not self._set_key_matches(skey, ep):
            return False
        if ent.nets or ent.not_nets:
            if ip is None:
                return False
            if ent.nets and not _in_nets(ent.nets, ip):
                return False
            if ent.not_nets and _in_nets(ent.not_nets, ip):
                return False
        return True

    # ------------------------------------------------------------------ compilation

    def _chain(self, key: str, direction: str) -> _Chain | None:
        ch = self._chains.get((key, direction))
        if ch is None:
            ep = self._endpoints.get(key)
            if ep is None:
                return None
            ch = self._compile(ep, direction)
            self._chains[(key, direction)] = ch
        return ch

    def compile_all(self) -> None:
        """Compile every endpoint's chains now (otherwise done on first use)."""
        for key in self._endpoints:
            self._chain(key, INGRESS)
            self._chain(key, EGRESS)

    def _compile(self, ep: Endpoint, direction: str) -> _Chain:
        ch = _Chain()
        pols = self.applicable(ep, direction)
        ch.policies = [p.name for p in pols]
        if not pols:
            return ch
        ch.empty = False
        ingress = direction == INGRESS
        local_ip: dict[int, str] = {}
        for ip in ep.ips:
            local_ip.setdefault(_family(ip), ip)
        proto_other = ch.proto_other
        fam = {4: 0, 6: 0, 0: 0}
        any_mask = nonep_mask = no_nets = no_addr = no_ports = log_mask = complex_mask = 0
        ep_masks: dict[str, int] = {}
        net_events: dict[int, list[tuple[int, int, int, bool]]] = {4: [], 6: []}
        port_events: list[tuple[int, int, int, bool]] = []
        bit = 1
        for pol in pols:
            for idx, rule in enumerate(pol.ingress if ingress else pol.egress):
                label = f"{direction}[{idx}]"
                ch.rules.append((pol, rule, label))
                action = rule.action
                if action == _ALLOW:
                    ch.decisions.append(Decision(True, pol.name, label))
                elif action == _PASS:
                    ch.decisions.append(Decision(True, pol.name, "profile"))
                elif action == _LOG:
                    ch.decisions.append(Decision(False, pol.name, label))
                    log_mask |= bit
                else:
                    ch.decisions.append(Decision(False, pol.name, label))
                proto_other.append((bit, rule.protocol, rule.not_protocol))
                peer = rule.source if ingress else rule.destination
                local = rule.destination if ingress else rule.source
                # family + local side (fixed for this endpoint)
                for f in (4, 6, 0):
                    if rule.ip_version is not None and rule.ip_version != (f or 4):
                        continue
                    if self._entity_matches(pol, local, ep, local_ip.get(f)):
                        fam[f] |= bit
                # peer selectors: the rule's IP set
                skey = self._set_key(pol, peer)
                if skey is None:
                    any_mask |= bit
                else:
                    nonep_ok, keys = self._peer_set(skey)
                    if nonep_ok:
                        nonep_mask |= bit
                    for k in keys:
                        ep_masks[k] = ep_masks.get(k, 0) | bit
                # peer nets
                if not peer.nets:
                    no_nets |= bit
                for nets, neg in ((peer.nets, False), (peer.not_nets, True)):
                    for n in nets:
                        f, lo, hi = _net(n)
                        net_events[f].append((lo, 1, bit, neg))
                        net_events[f].append((hi + 1, -1, bit, neg))
                if not peer.nets and not peer.not_nets:
                    no_addr |= bit
                # destination ports (named ones resolved on the local endpoint for ingress)
                dst = rule.destination
                cplx = bool(rule.icmp or rule.not_icmp or rule.source.ports or rule.source.not_ports)
                named = any(isinstance(p, str) for p in (*dst.ports, *dst.not_ports))
                if named and (not ingress or rule.protocol is None):
                    cplx = True
                if cplx:
                    complex_mask |= bit
                    no_ports |= bit  # verified in full when the bit comes up
                else:
                    if not dst.ports:
                        no_ports |= bit
                    for ports, neg in ((dst.ports, False), (dst.not_ports, True)):
                        for pr in ports:
                            for lo, hi in self._resolve_port(pr, rule.protocol, ep):
                                port_events.append((lo, 1, bit, neg))
                                port_events.append((hi + 1, -1, bit, neg))
                bit <<= 1
        ch.all_mask = bit - 1
        ch.log_mask = log_mask
        ch.complex_mask = complex_mask
        ch.fam_masks = fam
        ch.any_mask = any_mask
        ch.nonep_mask = nonep_mask
        ch.ep_masks = {k: m | any_mask for k, m in ep_masks.items()}
        ch.no_nets_mask = no_nets
        ch.no_addr_mask = no_addr
        # addresses: rules without positive nets are the base; v4/v6 swept separately
        for f in (4, 6):
            ch.net_bounds[f], ch.net_masks[f] = _sweep(net_events[f], no_nets)
        ch.port_bounds, ch.port_masks = _sweep(port_events, no_ports)
        return ch

    @staticmethod
    def _resolve_port(pr: PortRange | str, protocol: int | None, ep: Endpoint | None) -> list[tuple[int, int]]:
        if isinstance(pr, PortRange):
            return [(pr.lo, pr.hi)]
        if ep is None:
            return []
        out = []
        for name, proto, number in ep.ports:
            if name == pr and (protocol is None or protocol_number(proto) == protocol):
                out.append((number, number))
        return out

    def _verify(self, rule: Rule, ingress: bool, local: Endpoint, peer: Endpoint | None,
                proto: int, port: int, sport: int | None, icmp: tuple[int, int] | None) -> bool:
        """The conditions the masks do not cover, checked in full for a flagged rule."""
        for spec, neg in ((rule.icmp, False), (rule.not_icmp, True)):
            if spec is None:
                continue
            hit = (proto in _ICMP_PROTOS and icmp is not None and icmp[0] == spec[0]
                   and (spec[1] is None or icmp[1] == spec[1]))
            if hit == neg:
                return False
        src_ep, dst_ep = (peer, local) if ingress else (local, peer)
        for ent, value, ep in ((rule.source, sport, src_ep), (rule.destination, port, dst_ep)):
            if ent.ports:
                if value is None or not any(lo <= value <= hi for pr in ent.ports
                                            for lo, hi in self._resolve_port_proto(pr, proto, ep)):
                    return False
            if ent.not_ports and value is not None:
                if any(lo <= value <= hi for pr in ent.not_ports
                       for lo, hi in self._resolve_port_proto(pr, proto, ep)):
                    return False
        return True

    @staticmethod
    def _resolve_port_proto(pr: PortRange | str, proto: int, ep: Endpoint | None) -> list[tuple[int, int]]:
        if isinstance(pr, PortRange):
            return [(pr.lo, pr.hi)]
        if ep is None:
            return []
        return [(n, n) for name, p, n in ep.ports if name == pr and protocol_number(p) == proto]

    # ------------------------------------------------------------------ decisions

    def decide(self, ep_key: str, direction: str, peer_ip: str | None, proto: int, port: int,
               icmp: tuple[int, int] | None = None, *, peer: Endpoint | None = None,
               sport: int | None = None) -> Decision:
        """One side of a new flow: ``direction`` "ingress" (peer = source) or "egress" (peer =
        destination).  ``port`` is the destination port, ``sport`` the source port (only
        rules with source ports need it).  The peer is resolved from ``peer_ip`` unless given."""
        ch = self._chains.get((ep_key, direction))
        if ch is None:
            ch = self._chain(ep_key, direction)
            if ch is None:
                return UNKNOWN_ENDPOINT
        if ch.empty:
            return HOST_NO_POLICY if self._endpoints[ep_key].host else NO_POLICY
        if peer is None and peer_ip is not None:
            pkey = self._by_ip.get(peer_ip)
            if pkey is not None:
                peer = self._endpoints[pkey]
        if peer is not None:
            m = ch.ep_masks.get(peer.key, ch.any_mask)
        else:
            m = ch.any_mask | ch.nonep_mask
        pm = ch.proto_masks.get(proto)
        m &= pm if pm is not None else ch.proto_mask(proto)
        if peer_ip is not None:
            f = 6 if ":" in peer_ip else 4
            bounds = ch.net_bounds[f]
            m &= ch.fam_masks[f] & (ch.net_masks[f][bisect_right(bounds, _ip_int(peer_ip))] if bounds
                                    else ch.no_nets_mask)
        else:
            f = 0
            if peer is not None and peer.ips:
                f = 6 if ":" in peer.ips[0] else 4
            else:
                local = self._endpoints[ep_key]
                if local.ips:
                    f = 6 if ":" in local.ips[0] else 4
            m &= ch.fam_masks[f] & ch.no_addr_mask
        if not m:
            return Decision(False, None, "default-deny")
        pb = ch.port_bounds
        m &= ch.port_masks[bisect_right(pb, port)] if pb else ch.port_masks[0]
        return self._first(ch, m, ep_key, direction, peer, proto, port, sport, icmp)

    def _first(self, ch: _Chain, m: int, ep_key: str, direction: str, peer: Endpoint | None,
               proto: int, port: int, sport: int | None, icmp: tuple[int, int] | None) -> Decision:
        special = ch.log_mask | ch.complex_mask
        while m:
            low = m & -m
            if not low & special:
                return ch.decisions[low.bit_length() - 1]
            i = low.bit_length() - 1
            if low & ch.complex_mask:
                pol, rule, _ = ch.rules[i]
                if not self._verify(rule, direction == INGRESS, self._endpoints[ep_key], peer,
                                    proto, port, sport, icmp):
                    m ^= low
                    continue
            if low & ch.log_mask:
                d = ch.decisions[i]
                k = (d.policy or "", d.rule)
                self.log_hits[k] = self.log_hits.get(k, 0) + 1
                m ^= low
                continue
            return ch.decisions[i]
        return Decision(False, None, "default-deny")

    def _resolve(self, x: Endpoint | str) -> tuple[Endpoint | None, str | None]:
        if isinstance(x, Endpoint):
            return x, None
        if x.startswith("ip:"):
            ip = x[3:]
        else:
            ep = self._endpoints.get(x)
            if ep is not None:
                return ep, None
            ip = x
        return self.endpoint_by_ip(ip), ip

    def verdict(self, src: Endpoint | str, dst: Endpoint | str, proto: int, port: int,
                icmp: tuple[int, int] | None = None) -> Decision:
        """A new connection: egress of ``src`` (if an endpoint) and ingress of ``dst`` (if an
        endpoint).  Strings are endpoint keys, ``ip:ADDR`` or addresses (resolved to the
        endpoint holding them, as a live packet is).  Returns the denying side's decision,
        else the destination's unless only the source's came from a policy."""
        src_ep, src_ip = self._resolve(src)
        dst_ep, dst_ip = self._resolve(dst)
        if src_ip is None and src_ep is not None:
            src_ip = self._pick_ip(src_ep, dst_ip, dst_ep)
        if dst_ip is None and dst_ep is not None:
            dst_ip = self._pick_ip(dst_ep, src_ip, src_ep)
        result = NO_POLICY
        if src_ep is not None and src_ep.key in self._endpoints:
            result = self.decide(src_ep.key, EGRESS, dst_ip, proto, port, icmp, peer=dst_ep)
            if not result.allowed:
                return result
        if dst_ep is not None and dst_ep.key in self._endpoints:
            d = self.decide(dst_ep.key, INGRESS, src_ip, proto, port, icmp, peer=src_ep)
            if not d.allowed or d.policy is not None or result.policy is None:
                result = d
        return result

    @staticmethod
    def _pick_ip(ep: Endpoint, other_ip: str | None, other: Endpoint | None) -> str | None:
        """The address ``ep`` uses towards the other end: the other end's family, else v4 first."""
        if not ep.ips:
            return None
        if other_ip is not None:
            want = {_family(other_ip)}
        elif other is not None and other.ips:
            want = {_family(i) for i in other.ips}
        else:
            return ep.ips[0]
        for ip in ep.ips:
            if _family(ip) in want:
                return ip
        return None

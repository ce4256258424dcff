"""The emulated datacenter underlay, sans-IO: networks, the router, IP claims, partitions,
impairments and counters.  The broker process (``broker/process.py``) only moves frames.

Frames in, messages out: :meth:`Underlay.handle` takes one data-plane message
(``[header, body?]`` as received from the ROUTER, without the identity) and returns the
messages to send, each a complete ROUTER multipart ``[identity, header, body?]``.  Delayed
deliveries wait in a heap: :meth:`next_deadline` says when to wake, :meth:`due` returns what is
due.  No clock is read here; ``now`` (seconds, ``time.monotonic``) is passed in.

The fast path (no impairment on the pair, no TTL that would expire, no smaller MTU ahead)
routes a whole batch by its header — a few dict lookups — and forwards the body frame
untouched, counting packets and bytes from the header's ``count``/``nbytes``.  Anything else
takes the slow path, which decodes and validates the batch and looks at every packet.

Semantics enforced here (see docs/contracts.md, "Data plane wire"):

* Claims are an ARP cache: the latest claim (gratuitous ARP) wins; taking an address another
  attached NIC held records a conflict event.  Claims of the gateway, of the network or
  broadcast address (RFC 919/922; not on /31, RFC 3021) or outside the prefix are refused.
* The router forwards between networks by longest-prefix match (RFC 1812 §5.2.4.3) over the
  routes visible from the source network; it answers a missing route with ICMP net
  unreachable and an expiring TTL with ICMP time exceeded (RFC 1812 §5.3.1), an MTU that is too
  small with "fragmentation needed"/"packet too big" (RFC 1191, RFC 8201), never in answer to an
  ICMP error (RFC 1812 §4.3.2.7).  Nothing answers from an external network: the edge is silent.
* Drops are charged to the sending NIC, except deliveries the receiving VM's socket refused
  (:meth:`undeliverable`), which count on the receiving NIC like a NIC's ``rx_dropped``.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from agents.mgmt import MgmtError
from broker import packets as P
from broker import wire
from broker.dhcp import BROADCAST as _BROADCAST
from broker.dhcp import SERVER_PORT as _DHCP_PORT
from broker.dhcp import DhcpError, DhcpServer
from broker.impairments import Impairment, ImpairmentError, Link, send_through

log = logging.getLogger(__name__)

DROP_REASONS = ("no_route", "partition", "loss", "queue_full", "ttl", "mtu", "bad_frame", "conflict")
# Why a frame was refused at the edge: the wire's reasons, plus a PACKETS from a NIC that is
# not attached, an invalid packet inside a decoded batch, and our own bugs (never a crash).
BAD_REASONS = (*wire.BAD_FRAME_REASONS, "unattached", "packet", "internal")

Msg = list[Any]  # one ROUTER message: [identity, header, body?] (bytes or zmq frames)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_ROUTE_CACHE_MAX = 65536
_MAX_UNKNOWN_PEERS = 1024
_LOG_PER_SECOND = 20
_NOTICE_INTERVAL = 1.0  # seconds between "not-attached" notices to one peer NIC
_data_kinds = frozenset({wire.ATTACH, wire.ATTACHED, wire.CLAIM, wire.RELEASE, wire.DETACH,
                         wire.DETACHED, wire.PACKETS, wire.DELIVER, wire.NOTICE})

_decode = wire.decode
_unpackb = msgpack.unpackb
_VERSION, _PACKETS, _MAX_HEADER, _MAX_BODY = wire.VERSION, wire.PACKETS, wire.MAX_HEADER, wire.MAX_BODY
_deliver_header = wire.deliver_header
_pack = wire.pack
_headers: dict[tuple[int, int, int, int], bytes] = {}  # DELIVER headers of the fast path


class Network:
    """One virtual network (an L2 segment, one VLAN): up to one IPv4 and one IPv6 prefix."""

    __slots__ = ("name", "prefixes", "gateways", "gw", "vlan", "mtu", "external", "claims")

    def __init__(self, name: str, prefixes: tuple[IPNetwork, ...], gateways: tuple[str, ...],
                 vlan: int, mtu: int, external: bool) -> None:
        self.name = name
        self.prefixes = prefixes
        self.gateways = frozenset(gateways)
        self.gw = {ipaddress.ip_address(g).version: g for g in gateways}  # family -> gateway
        self.vlan = vlan
        self.mtu = mtu
        self.external = external
        self.claims: dict[str, Nic] = {}  # the ARP cache: ip -> the NIC that claimed it last

    def describe(self) -> dict[str, Any]:
        return {
            "prefix": str(self.prefixes[0]), "prefixes": [str(p) for p in self.prefixes],
            "gateway": min(self.gw.items())[1], "gateways": sorted(self.gateways),
            "vlan": self.vlan, "mtu": self.mtu, "external": self.external,
            "claims": {ip: nic.name for ip, nic in sorted(self.claims.items())},
        }


# The network of the "unknown:<peer>" entries that count bad frames of unattached peers.
_NOWHERE = Network("-", (), (), 0, 0, False)


class Nic:
    """An attached NIC: ``(router identity, index)`` on the wire, ``"vm/nic"`` to people."""

    __slots__ = ("name", "vm", "identity", "index", "mac", "network", "mtu", "ips", "attached",
                 "tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "drops")

    def __init__(self, vm: str, name: str, identity: bytes, index: int, mac: str,
                 network: Network, mtu: int) -> None:
        self.vm = vm
        self.name = f"{vm}/{name}"
        self.identity = identity
        self.index = index
        self.mac = mac
        self.network = network
        self.mtu = mtu
        self.ips: set[str] = set()
        self.attached = False
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0
        self.drops = dict.fromkeys(DROP_REASONS, 0)

    def take_counters(self, old: Nic) -> None:
        """A NIC re-attaching under the same name keeps its counters (like a switch port)."""
        self.tx_packets, self.tx_bytes = old.tx_packets, old.tx_bytes
        self.rx_packets, self.rx_bytes = old.rx_packets, old.rx_bytes
        self.drops = old.drops

    def counters(self) -> dict[str, Any]:
        return {
            "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes, "drops": dict(self.drops),
            "attached": self.attached, "network": self.network.name if self.network is not _NOWHERE else None,
            "mac": self.mac, "ips": sorted(self.ips),
        }


@dataclass(frozen=True, slots=True)
class Route:
    prefix: IPNetwork
    network: str
    sources: frozenset[str] | None  # networks allowed to use it; None = every network

    def describe(self) -> dict[str, Any]:
        sources = sorted(self.sources) if self.sources is not None else None
        return {"prefix": str(self.prefix), "network": self.network, "sources": sources}


@dataclass(frozen=True, slots=True)
class Partition:
    a: frozenset[str]
    b: frozenset[str]
    one_way: bool

    def describe(self, ident: int) -> dict[str, Any]:
        return {"id": ident, "a": sorted(self.a), "b": sorted(self.b), "one_way": self.one_way}


class Underlay:
    """The datacenter between the VMs.  See the module docstring."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random(0)
        self._networks: dict[str, Network] = {}
        self._routes: list[Route] = []  # longest prefix first; ties: the earliest added
        self._route_cache: dict[tuple[Network, str], Network | None] = {}
        self._nics: dict[tuple[bytes, int], Nic] = {}  # attached, by wire address
        self._by_name: dict[str, Nic] = {}  # attached, by "vm/nic"
        self._known: dict[str, Nic] = {}  # every NIC ever attached (keeps detached counters)
        self._unknown: dict[str, Nic] = {}  # bad frames from peers without an attached NIC
        self._partitions: dict[int, Partition] = {}
        self._next_partition = 1
        self._dhcp: dict[str, DhcpServer] = {}  # network name -> the router's DHCP service
        self._blocked: set[tuple[Nic, Nic]] = set()
        self._imp_nic: dict[str, tuple[Impairment, Link, Link]] = {}  # name -> (egress, ingress)
        self._imp_pair: dict[tuple[str, str], tuple[Impairment, Link]] = {}
        self._imp_net: dict[str, tuple[Impairment, Link]] = {}
        self._chains: dict[tuple[Nic, Nic], tuple[Link, ...]] = {}
        self._impaired = False
        self._heap: list[tuple[float, int, Nic, Nic, int, P.Packet]] = []
        self._seq = 0
        self._conflicts: deque[dict[str, Any]] = deque(maxlen=1000)
        self._nagged: dict[tuple[bytes, int], float] = {}
        self._log_window = 0.0
        self._log_count = 0
        # Totals; plain attributes because the hot path bumps them.
        self.frames = self.batches = self.fast = self.slow = 0
        self.conflict_events = 0
        self.bad_frames = dict.fromkeys(BAD_REASONS, 0)
        self.undelivered = {"queue_full": 0, "gone": 0}
        self._kinds: dict[int, Callable[[bytes, tuple[Any, ...], list[Any], float], list[Msg]]] = {
            wire.ATTACH: self._on_attach, wire.CLAIM: self._on_claim,
            wire.RELEASE: self._on_release, wire.DETACH: self._on_detach,
            wire.PACKETS: self._on_packets,
        }

    # --- data plane: entry points ------------------------------------------------------------

    def handle(self, identity: bytes, frames: list[Any], now: float) -> list[Msg]:
        """One message from a VM (without the identity frame): the messages to send now."""
        self.frames += 1
        try:
            if len(frames) == 2 and len(frames[0]) <= _MAX_HEADER and len(frames[1]) <= _MAX_BODY:
                # The hot path: a PACKETS batch, checked without wire.decode's generality.
                try:
                    hdr = _unpackb(frames[0], use_list=False)
                except Exception:
                    hdr = None  # wire.decode below says why
                if type(hdr) is tuple and len(hdr) == 8 and hdr[0] == _VERSION and hdr[1] == _PACKETS:
                    return self.route_batch(identity, hdr, frames[1], now)
            hdr = _decode(frames)
            handler = self._kinds.get(hdr[1])
            if handler is None:
                return self._bad(identity, frames, "kind", f"{wire.KIND_NAMES[hdr[1]]} is not for the broker", now)
            return handler(identity, hdr, frames, now)
        except wire.WireError as exc:
            return self._bad(identity, frames, exc.reason, exc.detail, now)
        except Exception:  # a bug of ours must not take the datacenter down: count, log, go on
            log.exception("internal error handling a frame from %s", identity.hex())
            return self._bad(identity, frames, "internal", "see the traceback above", now)

    def route_batch(self, identity: bytes, hdr: tuple[Any, ...], body: Any, now: float) -> list[Msg]:
        """Route one PACKETS batch (``hdr`` decoded, ``body`` not): the messages to send now."""
        _, _, index, dst, via, count, nbytes, min_ttl = hdr
        self.batches += 1
        if (type(index) is not int or type(dst) is not str or type(via) is not str or type(count) is not int
                or type(nbytes) is not int or type(min_ttl) is not int or count < 0 or nbytes < 0):
            return self._bad(identity, [hdr], "garbage", "packets header fields have the wrong types", now)
        src = self._nics.get((identity, index))
        if src is None:
            return self._unattached(identity, index, now)
        src.tx_packets += count
        src.tx_bytes += nbytes
        net = src.network
        dst_net: Network | None
        hops = 0
        if not via:
            dst_net = net
            target = net.claims.get(dst)
        elif via in net.gateways:
            key = (net, dst)
            try:
                dst_net = self._route_cache[key]
            except KeyError:
                dst_net = self._cache_route(key)
            if dst_net is None:
                return self._no_route(src, via, body, count)
            target = dst_net.claims.get(dst)
            hops = 1
        else:
            dst_net = net
            target = net.claims.get(via)
            if target is None:
                src.drops["no_route"] += count
                return []
        if target is None:
            if dst in dst_net.gateways or (dst == _BROADCAST and net.name in self._dhcp):
                return self._router_answers(src, dst, body, count, now)
            src.drops["no_route"] += count
            return []
        if self._blocked and (src, target) in self._blocked:
            src.drops["partition"] += count
            return []
        if min_ttl <= hops or dst_net.mtu < net.mtu or (self._impaired and self._chain(src, target)):
            return self._slow_path(src, target, dst_net, via, hops, body, count, now)
        self.fast += 1
        target.rx_packets += count
        target.rx_bytes += nbytes
        shape = (target.index, hops, count, nbytes)
        header = _headers.get(shape)
        if header is None:  # streams repeat their shapes: encode each header once
            if len(_headers) >= 4096:
                _headers.clear()
            header = _headers[shape] = _deliver_header(*shape)
        return [[target.identity, header, body]]

    def next_deadline(self) -> float | None:
        """When the earliest delayed delivery is due (``None``: nothing is waiting)."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[Msg]:
        """Pop the deliveries due at ``now``, re-batched per destination NIC and hop count."""
        heap = self._heap
        groups: dict[tuple[Nic, int], list[P.Packet]] = {}
        pop = heapq.heappop
        while heap and heap[0][0] <= now:
            _, _, src, dst, hops, pkt = pop(heap)
            if not dst.attached:  # it left while the packet was on the wire
                src.drops["no_route"] += 1
                continue
            groups.setdefault((dst, hops), []).append(pkt)
        out: list[Msg] = []
        for (dst, hops), pkts in groups.items():
            out.extend(self._deliver(dst, hops, pkts))
        return out

    def undeliverable(self, msg: Msg, reason: str) -> None:
        """The process could not hand ``msg`` to its VM (``queue_full``: its queue is at the
        high-water mark; ``gone``: the peer disconnected).  Charged to the receiving NIC."""
        self.undelivered[reason] = self.undelivered.get(reason, 0) + 1
        try:
            hdr = msgpack.unpackb(_frame_bytes(msg[1]), use_list=False)
            nic = self._nics.get((bytes(msg[0]), hdr[2]))
        except Exception:
            return
        if nic is not None and hdr[1] == wire.DELIVER:
            nic.rx_packets -= hdr[4]
            nic.rx_bytes -= hdr[5]
            nic.drops["queue_full" if reason == "queue_full" else "no_route"] += hdr[4]

    # --- data plane: control messages --------------------------------------------------------

    def _on_attach(self, identity: bytes, hdr: tuple[Any, ...], frames: list[Any], now: float) -> list[Msg]:
        _, _, index, spec = hdr
        if type(index) is not int:
            return self._bad(identity, frames, "garbage", "attach: nic index is not an integer", now)
        try:
            vm, name, mac, net, ips, mtu = self._check_spec(spec)
        except ValueError as exc:
            return [[identity, *wire.attached(index, False, str(exc))]]
        nic = Nic(vm, name, identity, index, mac, net, mtu)
        for old in (self._nics.get((identity, index)), self._by_name.get(nic.name)):
            if old is not None and old.attached:  # re-attach, or a restarted VM: the new one wins
                self._detach(old)
        previous = self._known.get(nic.name)
        if previous is not None:
            nic.take_counters(previous)
        nic.attached = True
        self._nics[(identity, index)] = nic
        self._by_name[nic.name] = self._known[nic.name] = nic
        self._nics_changed()
        return [[identity, *wire.attached(index, True, "")], *self._claim(nic, ips, now)]

    def _check_spec(self, spec: Any) -> tuple[Any, Any, str, Network, list[Any], int]:
        if not isinstance(spec, dict):
            raise ValueError("spec: expected a map {vm, name, mac, network, ips, mtu}")
        vm, name = spec.get("vm"), spec.get("name")
        for key, value in (("vm", vm), ("name", name)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise ValueError(f"spec.{key}: expected a name of letters, digits, '.', '_', '-', got {value!r}")
        mac = spec.get("mac")
        if not isinstance(mac, str) or not _MAC.match(mac):
            raise ValueError(f"spec.mac: expected xx:xx:xx:xx:xx:xx, got {mac!r}")
        network = spec.get("network")
        net = self._networks.get(network) if isinstance(network, str) else None
        if net is None:
            raise ValueError(f"spec.network: unknown network {spec.get('network')!r}")
        ips = spec.get("ips", [])
        if not isinstance(ips, list | tuple):
            raise ValueError("spec.ips: expected a list of addresses")
        mtu = spec.get("mtu", net.mtu)
        if type(mtu) is not int or not 68 <= mtu <= 65535:  # RFC 791: every link carries 68
            raise ValueError(f"spec.mtu: expected 68..65535, got {mtu!r}")
        return vm, name, mac.lower(), net, list(ips), mtu

    def _on_claim(self, identity: bytes, hdr: tuple[Any, ...], frames: list[Any], now: float) -> list[Msg]:
        _, _, index, ips = hdr
        nic = self._nics.get((identity, index)) if type(index) is int else None
        if nic is None:
            return self._unattached(identity, index, now)
        if not isinstance(ips, list | tuple):
            return self._bad(identity, frames, "garbage", "claim: ips is not a list", now)
        return self._claim(nic, ips, now)

    def _on_release(self, identity: bytes, hdr: tuple[Any, ...], frames: list[Any], now: float) -> list[Msg]:
        _, _, index, ips = hdr
        nic = self._nics.get((identity, index)) if type(index) is int else None
        if nic is None:
            return self._unattached(identity, index, now)
        if not isinstance(ips, list | tuple):
            return self._bad(identity, frames, "garbage", "release: ips is not a list", now)
        claims = nic.network.claims
        for ip in ips:
            ip = _canonical(ip)
            if ip is not None and claims.get(ip) is nic:
                del claims[ip]
                nic.ips.discard(ip)
        return []

    def _on_detach(self, identity: bytes, hdr: tuple[Any, ...], frames: list[Any], now: float) -> list[Msg]:
        index = hdr[2]
        nic = self._nics.get((identity, index)) if type(index) is int else None
        if nic is not None:
            self._detach(nic)
        # Acknowledged even when unknown: the VM waits for it before closing its socket.
        return [[identity, *wire.detached(index if type(index) is int else -1)]]

    def _on_packets(self, identity: bytes, hdr: tuple[Any, ...], frames: list[Any], now: float) -> list[Msg]:
        return self.route_batch(identity, hdr, frames[1], now)

    def _claim(self, nic: Nic, ips: Iterable[Any], now: float) -> list[Msg]:
        refused: list[Msg] = []
        for raw in ips:
            ip, reason = self._claimable(nic.network, raw)
            if reason:
                nic.drops["conflict"] += 1
                detail = {"ip": raw if isinstance(raw, str) else repr(raw), "reason": reason}
                refused.append([nic.identity, *wire.notice(nic.index, "claim-refused", detail)])
                continue
            self._take(nic, ip, now)
        return refused

    @staticmethod
    def _claimable(net: Network, raw: Any) -> tuple[str, str]:
        ip = _canonical(raw)
        if ip is None:
            return "", "not an IP address"
        if ip in net.gateways:
            return ip, f"{ip} is the gateway of network {net.name}"
        addr = ipaddress.ip_address(ip)
        for prefix in net.prefixes:
            if prefix.version == addr.version and addr in prefix:
                if prefix.version == 4 and prefix.prefixlen < 31 and addr in (
                        prefix.network_address, prefix.broadcast_address):
                    return ip, f"{ip} is the network or broadcast address of {prefix}"
                return ip, ""
        return ip, f"{ip} is outside network {net.name} ({', '.join(map(str, net.prefixes))})"

    def _take(self, nic: Nic, ip: str, now: float) -> None:
        claims = nic.network.claims
        previous = claims.get(ip)
        if previous is nic:
            return
        if previous is not None:  # a gratuitous ARP overrides the cache: record who lost it
            previous.ips.discard(ip)
            self.conflict_events += 1
            self._conflicts.append({"time": now, "network": nic.network.name,
                                    "ip": ip, "previous": previous.name, "owner": nic.name})
        claims[ip] = nic
        nic.ips.add(ip)

    def _detach(self, nic: Nic) -> None:
        nic.attached = False
        del self._nics[(nic.identity, nic.index)]
        if self._by_name.get(nic.name) is nic:
            del self._by_name[nic.name]
        claims = nic.network.claims
        for ip in nic.ips:
            if claims.get(ip) is nic:
                del claims[ip]
        nic.ips = set()
        self._nics_changed()

    def _nics_changed(self) -> None:
        self._chains.clear()
        self._recompute_blocked()

    # --- data plane: the router and the slow path --------------------------------------------

    def _cache_route(self, key: tuple[Network, str]) -> Network | None:
        if len(self._route_cache) >= _ROUTE_CACHE_MAX:
            self._route_cache.clear()
        found = self._lookup(key[0], key[1])
        self._route_cache[key] = found
        return found

    def _lookup(self, src: Network, dst: str) -> Network | None:
        """Longest-prefix match over the routes ``src`` may use (RFC 1812 §5.2.4.3)."""
        try:
            addr = ipaddress.ip_address(dst)
        except ValueError:
            return None
        for route in self._routes:
            if (route.prefix.version == addr.version and addr in route.prefix
                    and (route.sources is None or src.name in route.sources)):
                return self._networks[route.network]
        return None

    def _no_route(self, src: Nic, via: str, body: Any, count: int) -> list[Msg]:
        src.drops["no_route"] += count
        if src.network.external:  # the edge stays silent
            return []
        first = self._first_packet(body)
        if first is None or P.is_icmp_error(first):
            return []
        return self._deliver(src, 0, [P.net_unreachable(via, first)])

    def _router_answers(self, src: Nic, gateway: str, body: Any, count: int, now: float) -> list[Msg]:
        """Packets for a gateway address (or a broadcast on a network with DHCP): the router
        answers echo requests and DHCP (broker/dhcp.py, replies straight to the NIC), drops
        the rest."""
        batch = self._decode_batch(src, body, count)
        replies = []
        dhcp = self._dhcp.get(src.network.name)
        for pkt in batch:
            if pkt[P.PROTO] in (P.ICMP, P.ICMPV6) and pkt[P.SPORT] in (P.ICMP_ECHO_REQUEST, P.ICMP6_ECHO_REQUEST):
                if gateway == _BROADCAST:  # no answer to a broadcast ping (net.ipv4.icmp_echo_ignore_broadcasts)
                    src.drops["no_route"] += 1
                    continue
                ident, seq = pkt[P.INFO]
                replies.append(P.echo(gateway, pkt[P.SRC], False, ident, seq, pkt[P.PAYLOAD]))
            elif dhcp is not None and pkt[P.PROTO] == P.UDP and pkt[P.DPORT] == _DHCP_PORT:
                answer = dhcp.handle_packet(pkt, now)
                if answer is not None:
                    replies.append(answer)
            else:
                src.drops["no_route"] += 1
        return self._deliver(src, 0, replies) if replies else []

    def _slow_path(self, src: Nic, target: Nic, dst_net: Network, via: str, hops: int, body: Any,
                   count: int, now: float) -> list[Msg]:
        self.slow += 1
        batch = self._decode_batch(src, body, count)
        drops = src.drops
        mtu = dst_net.mtu if dst_net.mtu < src.network.mtu else 0
        chain = self._chain(src, target) if self._impaired else ()
        now_pkts: list[P.Packet] = []
        errors: list[P.Packet] = []
        for pkt in batch:
            if hops and pkt[P.TTL] <= hops:  # RFC 1812 §5.3.1: the router's decrement hits 0
                drops["ttl"] += 1
                if not P.is_icmp_error(pkt):
                    errors.append(P.time_exceeded(via, pkt))
            elif mtu and pkt[P.SIZE] > mtu:  # RFC 1191 / RFC 8201: DF is always set here
                drops["mtu"] += 1
                if not P.is_icmp_error(pkt):
                    errors.append(P.packet_too_big(via, pkt, mtu))
            elif chain:
                self._impair(src, target, hops, chain, pkt, now, now_pkts)
            else:
                now_pkts.append(pkt)
        out = self._deliver(target, hops, now_pkts) if now_pkts else []
        if errors:
            out.extend(self._deliver(src, 0, errors))
        return out

    def _impair(self, src: Nic, target: Nic, hops: int, chain: tuple[Link, ...], pkt: P.Packet,
                now: float, now_pkts: list[P.Packet]) -> None:
        got = send_through(chain, pkt[P.SIZE], now)
        if isinstance(got, str):
            src.drops[got] += 1
            return
        for when in got:
            if when <= now:
                now_pkts.append(pkt)
            else:
                self._seq += 1
                heapq.heappush(self._heap, (when, self._seq, src, target, hops, pkt))

    def _decode_batch(self, src: Nic, body: Any, count: int) -> list[P.Packet]:
        """The valid packets of a body; the rest are counted as ``bad_frame`` drops."""
        try:
            batch = wire.unpack_body(_frame_bytes(body))
        except wire.WireError as exc:
            self.bad_frames[exc.reason] += 1
            src.drops["bad_frame"] += count
            return []
        if not isinstance(batch, tuple):
            self.bad_frames["garbage"] += 1
            src.drops["bad_frame"] += count
            return []
        good = []
        for pkt in batch:
            try:
                good.append(P.validate(pkt))
            except P.PacketError:
                self.bad_frames["packet"] += 1
                src.drops["bad_frame"] += 1
        return good

    def _first_packet(self, body: Any) -> P.Packet | None:
        try:
            batch = wire.unpack_body(_frame_bytes(body))
            return P.validate(batch[0])
        except (wire.WireError, P.PacketError, TypeError, IndexError, KeyError):
            return None

    def _deliver(self, nic: Nic, hops: int, pkts: list[P.Packet]) -> list[Msg]:
        """DELIVER messages for packets going to ``nic`` now (at most MAX_BATCH per message)."""
        out: list[Msg] = []
        step = wire.MAX_BATCH
        for start in range(0, len(pkts), step):
            chunk = pkts[start:start + step]
            nbytes = sum(pkt[P.SIZE] for pkt in chunk)
            nic.rx_packets += len(chunk)
            nic.rx_bytes += nbytes
            out.append([nic.identity, _deliver_header(nic.index, hops, len(chunk), nbytes), _pack(chunk)])
        return out

    # --- bad frames ----------------------------------------------------------------------------

    def _bad(self, identity: bytes, frames: list[Any], reason: str, detail: str, now: float) -> list[Msg]:
        self.bad_frames[reason] += 1
        nic = self._blame(identity, frames)
        nic.drops["bad_frame"] += 1
        self._log_bad(now, "bad frame from %s (%s): %s: %s", nic.name, identity.hex(), reason, detail)
        return []

    def _blame(self, identity: bytes, frames: list[Any]) -> Nic:
        """The attached NIC named by a bad frame's header if it decodes that far, else the
        peer's "unknown" entry."""
        try:
            head = frames[0] if isinstance(frames[0], tuple) else msgpack.unpackb(
                _frame_bytes(frames[0])[:wire.MAX_HEADER], use_list=False)
            if head[0] == wire.VERSION and head[1] in _data_kinds:
                nic = self._nics.get((identity, head[2]))
                if nic is not None:
                    return nic
        except Exception:
            pass
        return self._unknown_peer(identity)

    def _unknown_peer(self, identity: bytes) -> Nic:
        name = f"unknown:{identity.hex()}"
        entry = self._unknown.get(name)
        if entry is None:
            if len(self._unknown) >= _MAX_UNKNOWN_PEERS:
                name = "unknown:*"
                entry = self._unknown.get(name)
            if entry is None:
                entry = self._unknown[name] = Nic("unknown", "*", identity, -1, "", _NOWHERE, 0)
                entry.name = name
        return entry

    def _unattached(self, identity: bytes, index: Any, now: float) -> list[Msg]:
        """A data frame from a NIC that is not attached (never was, or the broker restarted):
        counted, and the VM is told (at most once a second per NIC) so it can re-attach."""
        self.bad_frames["unattached"] += 1
        self._unknown_peer(identity).drops["bad_frame"] += 1
        self._log_bad(now, "frame from unattached nic %r of %s", index, identity.hex())
        if type(index) is not int:
            return []
        key = (identity, index)
        if now - self._nagged.get(key, -_NOTICE_INTERVAL) < _NOTICE_INTERVAL:
            return []
        if len(self._nagged) > 4096:
            self._nagged.clear()
        self._nagged[key] = now
        return [[identity, *wire.notice(index, "not-attached", {})]]

    def _log_bad(self, now: float, fmt: str, *args: Any) -> None:
        """Rate-limited warning: a flood of garbage must not become a flood of log lines."""
        if now - self._log_window >= 1.0:
            if self._log_count > _LOG_PER_SECOND:
                log.warning("%d more bad frames in the last second (not logged)", self._log_count - _LOG_PER_SECOND)
            self._log_window = now
            self._log_count = 0
        self._log_count += 1
        if self._log_count <= _LOG_PER_SECOND:
            log.warning(fmt, *args)

    # --- partitions and impairments ------------------------------------------------------------

    def _matches(self, names: frozenset[str]) -> list[Nic]:
        return [nic for nic in self._nics.values() if nic.name in names or nic.vm in names]

    def _recompute_blocked(self) -> None:
        """Precompute the blocked (src, dst) NIC pairs, so the fast path checks one set."""
        blocked: set[tuple[Nic, Nic]] = set()
        for part in self._partitions.values():
            side_a, side_b = self._matches(part.a), self._matches(part.b)
            for x in side_a:
                for y in side_b:
                    blocked.add((x, y))
                    if not part.one_way:
                        blocked.add((y, x))
        self._blocked = blocked

    def _chain(self, src: Nic, dst: Nic) -> tuple[Link, ...]:
        chain = self._chains.get((src, dst))
        if chain is None:
            chain = self._chains[(src, dst)] = self._build_chain(src, dst)
        return chain

    def _build_chain(self, src: Nic, dst: Nic) -> tuple[Link, ...]:
        """The links a packet from ``src`` to ``dst`` crosses, in order: the sender's NIC
        (egress), its network, the pair, the destination network, the receiver's NIC (ingress)."""
        links: list[Link] = []
        links += [self._imp_nic[n][1] for n in (src.vm, src.name) if n in self._imp_nic]
        src_net, dst_net = src.network, dst.network
        if src_net.name in self._imp_net:
            links.append(self._imp_net[src_net.name][1])
        pair = self._imp_pair
        links += [pair[(a, b)][1] for a in (src.vm, src.name) for b in (dst.vm, dst.name) if (a, b) in pair]
        if dst_net is not src_net and dst_net.name in self._imp_net:
            links.append(self._imp_net[dst_net.name][1])
        links += [self._imp_nic[n][2] for n in (dst.vm, dst.name) if n in self._imp_nic]
        return tuple(links)

    def _impairments_changed(self) -> None:
        self._chains.clear()
        self._impaired = bool(self._imp_nic or self._imp_pair or self._imp_net)

    # --- management plane ----------------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The broker's management verbs (the process adds ``ping`` and ``shutdown``)."""
        return {
            "stats": self.stats, "conflicts": lambda args: self.conflicts(),
            "add_network": self.add_network, "remove_network": self.remove_network,
            "add_route": self.add_route, "remove_route": self.remove_route,
            "routes": lambda args: self.routes(),
            "impair": self.impair, "clear": self.clear,
            "partition": self.partition, "heal": self.heal, "detach_vm": self.detach_vm,
        }

    def stats(self, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        nics = {name: nic.counters() for name, nic in sorted(self._known.items())}
        nics.update((name, nic.counters()) for name, nic in sorted(self._unknown.items()))
        return {
            "nics": nics,
            "networks": {name: self._describe(net) for name, net in self._networks.items()},
            "totals": self.totals(),
            "conflicts": self.conflicts(),
            "partitions": [part.describe(i) for i, part in self._partitions.items()],
            "impairments": self.impairments(),
        }

    def totals(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "batches": self.batches, "fast_path": self.fast,
            "slow_path": self.slow, "bad_frames": dict(self.bad_frames),
            "conflicts": self.conflict_events, "pending": len(self._heap),
            "undelivered": dict(self.undelivered),
        }

    def conflicts(self) -> list[dict[str, Any]]:
        return list(self._conflicts)

    def routes(self) -> list[dict[str, Any]]:
        return [route.describe() for route in self._routes]

    def impairments(self) -> dict[str, Any]:
        return {
            "nic": {name: imp.as_dict() for name, (imp, _, _) in self._imp_nic.items()},
            "pair": [{"a": a, "b": b, **imp.as_dict()} for (a, b), (imp, _) in self._imp_pair.items()],
            "network": {name: imp.as_dict() for name, (imp, _) in self._imp_net.items()},
        }

    def add_network(self, args: Mapping[str, Any]) -> dict[str, Any]:
        _only(args, "add_network", {"name", "prefix", "gateway", "vlan", "mtu", "external",
                                    "dhcp_scope", "lease_s", "dns"})
        name = _name(args, "name")
        if name in self._networks:
            raise MgmtError(f"name: network {name!r} already exists")
        prefixes = self._check_prefixes(args)
        gateways = _gateways(args.get("gateway"), prefixes)
        vlan = _int(args, "vlan", 0, 0, 4094)  # IEEE 802.1Q: 4095 is reserved; 0 = untagged
        for other in self._networks.values():
            if vlan and other.vlan == vlan:
                raise MgmtError(f"vlan: {vlan} is already used by network {other.name}")
        mtu = _int(args, "mtu", P.DEFAULT_MTU, 68, 65535)
        if mtu < 1280 and any(p.version == 6 for p in prefixes):
            raise MgmtError(f"mtu: {mtu} is below IPv6's minimum link MTU 1280 (RFC 8200 §5)")
        external = args.get("external", False)
        if not isinstance(external, bool):
            raise MgmtError(f"external: expected true/false, got {external!r}")
        dhcp = _dhcp_server(args, name, prefixes, gateways)
        net = Network(name, prefixes, gateways, vlan, mtu, external)
        self._networks[name] = net
        if dhcp is not None:
            self._dhcp[name] = dhcp
        for prefix in prefixes:  # the datacenter router reaches every network by default
            self._insert_route(Route(prefix, name, None))
        return self._describe(net)

    def _describe(self, net: Network) -> dict[str, Any]:
        out = net.describe()
        dhcp = self._dhcp.get(net.name)
        if dhcp is not None:
            out["dhcp"] = dhcp.stats(dhcp.now)
        return out

    def _check_prefixes(self, args: Mapping[str, Any]) -> tuple[IPNetwork, ...]:
        raw = args.get("prefix")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list | tuple) or not 1 <= len(texts) <= 2:
            raise MgmtError("prefix: expected a prefix, or a list of one IPv4 and one IPv6 prefix")
        prefixes = tuple(_prefix("prefix", text) for text in texts)
        if len(prefixes) == 2 and prefixes[0].version == prefixes[1].version:
            raise MgmtError("prefix: at most one IPv4 and one IPv6 prefix per network")
        for prefix in prefixes:
            for other in self._networks.values():
                for theirs in other.prefixes:
                    if prefix.version == theirs.version and prefix.overlaps(theirs):
                        raise MgmtError(f"prefix: {prefix} overlaps network {other.name} ({theirs})")
        return prefixes

    def remove_network(self, args: Mapping[str, Any]) -> dict[str, Any]:
        _only(args, "remove_network", {"name"})
        net = self._network(args, "name")
        users = sorted(nic.name for nic in self._nics.values() if nic.network is net)
        if users:
            raise MgmtError(f"name: network {net.name} still has attached NICs ({', '.join(users)})")
        del self._networks[net.name]
        self._dhcp.pop(net.name, None)
        routes = []
        for route in self._routes:
            if route.network == net.name:
                continue
            if route.sources is not None and net.name in route.sources:
                route = Route(route.prefix, route.network, route.sources - {net.name})
            routes.append(route)
        self._routes = routes
        self._imp_net.pop(net.name, None)
        self._impairments_changed()
        self._route_cache.clear()
        return {"removed": net.name}

    def add_route(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Add a route, or replace the one with the same prefix and network (``ip route replace``)."""
        _only(args, "add_route", {"prefix", "network", "sources"})
        prefix = _prefix("prefix", args.get("prefix"))
        net = self._network(args, "network")
        if not any(p.version == prefix.version for p in net.prefixes):
            raise MgmtError(f"prefix: network {net.name} has no IPv{prefix.version} prefix")
        sources = args.get("sources")
        if sources is not None:
            if not isinstance(sources, list | tuple) or not all(isinstance(s, str) for s in sources):
                raise MgmtError("sources: expected a list of network names")
            for source in sources:
                if source not in self._networks:
                    raise MgmtError(f"sources: unknown network {source!r}")
            sources = frozenset(sources)
        route = Route(prefix, net.name, sources)
        self._routes = [r for r in self._routes if (r.prefix, r.network) != (prefix, net.name)]
        self._insert_route(route)
        return route.describe()

    def remove_route(self, args: Mapping[str, Any]) -> dict[str, Any]:
        _only(args, "remove_route", {"prefix", "network"})
        prefix = _prefix("prefix", args.get("prefix"))
        name = _name(args, "network")
        kept = [r for r in self._routes if (r.prefix, r.network) != (prefix, name)]
        if len(kept) == len(self._routes):
            raise MgmtError(f"prefix: no route to {prefix} via network {name!r}")
        self._routes = kept
        self._route_cache.clear()
        return {"removed": {"prefix": str(prefix), "network": name}}

    def _insert_route(self, route: Route) -> None:
        self._routes.append(route)
        self._routes.sort(key=lambda r: -r.prefix.prefixlen)  # stable: ties keep their order
        self._route_cache.clear()

    def impair(self, args: Mapping[str, Any]) -> dict[str, Any]:
        params = {k: v for k, v in args.items() if k not in ("scope", "target", "one_way")}
        scope, keys = self._target(args)
        try:
            imp = Impairment.from_args(params)
        except (ImpairmentError, TypeError) as exc:
            raise MgmtError(str(exc).splitlines()[0]) from None
        rng = self.rng
        if scope == "nic":
            self._imp_nic[keys[0]] = (imp, Link(imp, rng), Link(imp, rng))
        elif scope == "pair":
            for key in keys:
                self._imp_pair[key] = (imp, Link(imp, rng))
        else:
            self._imp_net[keys[0]] = (imp, Link(imp, rng))
        self._impairments_changed()
        return {"scope": scope, "target": args["target"], **imp.as_dict()}

    def clear(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Clear one impairment (``scope`` + ``target``), or every one without arguments."""
        if not args:
            cleared = len(self._imp_nic) + len(self._imp_pair) + len(self._imp_net)
            self._imp_nic.clear()
            self._imp_pair.clear()
            self._imp_net.clear()
        else:
            _only(args, "clear", {"scope", "target", "one_way"})
            scope, keys = self._target(args)
            tables: dict[str, dict[Any, Any]] = {
                "nic": self._imp_nic, "pair": self._imp_pair, "network": self._imp_net}
            table = tables[scope]
            cleared = sum(table.pop(key, None) is not None for key in keys)
        self._impairments_changed()
        return {"cleared": cleared}

    def _target(self, args: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """Validate ``scope``/``target``: the impairment table keys they name."""
        scope = args.get("scope")
        target = args.get("target")
        one_way = args.get("one_way", False)
        if not isinstance(one_way, bool):
            raise MgmtError(f"one_way: expected true/false, got {one_way!r}")
        if scope == "nic":
            return scope, [self._endpoint("target", target)]
        if scope == "network":
            return scope, [self._network(args, "target").name]
        if scope == "pair":
            if not isinstance(target, list | tuple) or len(target) != 2:
                raise MgmtError("target: a pair is [a, b] (VM or NIC names)")
            a, b = (self._endpoint("target", name) for name in target)
            if a == b:
                raise MgmtError(f"target: a pair needs two different ends, got {a!r} twice")
            return scope, [(a, b)] if one_way else [(a, b), (b, a)]
        raise MgmtError(f"scope: expected nic, pair or network, got {scope!r}")

    def _endpoint(self, field: str, name: Any) -> str:
        """A VM or NIC name the broker knows (attached now or before)."""
        if not isinstance(name, str):
            raise MgmtError(f"{field}: expected a VM or NIC name, got {name!r}")
        if name not in self._known and not any(nic.vm == name for nic in self._known.values()):
            raise MgmtError(f"{field}: unknown VM or NIC {name!r}")
        return name

    def partition(self, args: Mapping[str, Any]) -> dict[str, Any]:
        _only(args, "partition", {"a", "b", "one_way"})
        sides = []
        for key in ("a", "b"):
            names = args.get(key)
            if not isinstance(names, list | tuple) or not names:
                raise MgmtError(f"{key}: expected a non-empty list of VM or NIC names")
            sides.append(frozenset(self._endpoint(key, name) for name in names))
        if sides[0] & sides[1]:
            raise MgmtError(f"b: {sorted(sides[0] & sides[1])[0]!r} is on both sides")
        one_way = args.get("one_way", False)
        if not isinstance(one_way, bool):
            raise MgmtError(f"one_way: expected true/false, got {one_way!r}")
        ident = self._next_partition
        self._next_partition += 1
        self._partitions[ident] = Partition(sides[0], sides[1], one_way)
        self._recompute_blocked()
        return {"id": ident}

    def heal(self, args: Mapping[str, Any]) -> dict[str, Any]:
        _only(args, "heal", {"id"})
        ident = args.get("id")
        if ident is None:
            healed = sorted(self._partitions)
            self._partitions.clear()
        elif type(ident) is int and ident in self._partitions:
            healed = [ident]
            del self._partitions[ident]
        else:
            raise MgmtError(f"id: no partition {ident!r}")
        self._recompute_blocked()
        return {"healed": healed}

    def detach_vm(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The host agent reports ``vm`` dead: detach its NICs (no DETACHED: nobody listens)."""
        _only(args, "detach_vm", {"vm"})
        vm = args.get("vm")
        if not isinstance(vm, str) or not any(nic.vm == vm for nic in self._known.values()):
            raise MgmtError(f"vm: unknown VM {vm!r}")
        gone = [nic for nic in self._nics.values() if nic.vm == vm]
        for nic in gone:
            self._detach(nic)
        return {"detached": sorted(nic.name for nic in gone)}

    def _network(self, args: Mapping[str, Any], key: str) -> Network:
        name = args.get(key)
        net = self._networks.get(name) if isinstance(name, str) else None
        if net is None:
            raise MgmtError(f"{key}: unknown network {name!r}")
        return net


# --- argument helpers (management edge) ------------------------------------------------------

def _frame_bytes(frame: Any) -> bytes:
    """A frame as bytes: the process hands bodies over as ``zmq.Frame`` (zero-copy)."""
    return frame if isinstance(frame, bytes) else bytes(frame)


def _canonical(raw: Any) -> str | None:
    if not isinstance(raw, str):
        return None
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


def _only(args: Mapping[str, Any], verb: str, allowed: set[str]) -> None:
    for key in args:
        if key not in allowed:
            raise MgmtError(f"{key}: unknown argument of {verb} (expected {', '.join(sorted(allowed))})")


def _name(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not _NAME.match(value):
        raise MgmtError(f"{key}: expected a name of letters, digits, '.', '_', '-', got {value!r}")
    return value


def _int(args: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = args.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise MgmtError(f"{key}: expected an integer {low}..{high}, got {value!r}")
    return value


def _prefix(field: str, text: Any) -> IPNetwork:
    if not isinstance(text, str):
        raise MgmtError(f"{field}: expected a prefix like 10.0.0.0/24, got {text!r}")
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        raise MgmtError(f"{field}: {text!r} is not a network prefix ({exc})") from None


def _dhcp_server(args: Mapping[str, Any], name: str, prefixes: tuple[IPNetwork, ...],
                 gateways: tuple[str, ...]) -> DhcpServer | None:
    """``dhcp_scope: [start, end]`` (+ ``lease_s``, ``dns``): the router serves DHCP there."""
    scope = args.get("dhcp_scope")
    if scope is None:
        for key in ("lease_s", "dns"):
            if key in args:
                raise MgmtError(f"{key}: only with dhcp_scope")
        return None
    if not isinstance(scope, list | tuple) or len(scope) != 2:
        raise MgmtError(f"dhcp_scope: expected [start, end], got {scope!r}")
    v4 = next((p for p in prefixes if p.version == 4), None)
    if v4 is None:
        raise MgmtError("dhcp_scope: the network has no IPv4 prefix (DHCPv4 only)")
    gateway = next(g for g in gateways if ":" not in g)
    lease = args.get("lease_s", 86400)
    if isinstance(lease, bool) or not isinstance(lease, int | float):
        raise MgmtError(f"lease_s: expected seconds > 0, got {lease!r}")
    dns = args.get("dns", [])
    if not isinstance(dns, list | tuple) or not all(_canonical(d) for d in dns) or len(dns) > 3:
        raise MgmtError(f"dns: expected up to 3 addresses, got {dns!r}")
    try:
        return DhcpServer(network=name, prefix=str(v4), server_ip=gateway, start=scope[0], end=scope[1],
                          lease_s=float(lease), router=gateway, dns=[str(_canonical(d)) for d in dns])
    except DhcpError as exc:
        raise MgmtError(str(exc)) from None


def _gateways(raw: Any, prefixes: tuple[IPNetwork, ...]) -> tuple[str, ...]:
    """One gateway per prefix, inside it and not its network/broadcast address; absent = the
    first host of the prefix (the usual .1)."""
    if raw is None:
        return tuple(str(next(iter(p.hosts()), p.network_address)) for p in prefixes)
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list | tuple) or len(texts) != len(prefixes):
        raise MgmtError("gateway: expected one gateway address per prefix")
    gateways = []
    for text in texts:
        ip = _canonical(text)
        if ip is None:
            raise MgmtError(f"gateway: {text!r} is not an IP address")
        addr = ipaddress.ip_address(ip)
        prefix = next((p for p in prefixes if p.version == addr.version and addr in p), None)
        if prefix is None:
            raise MgmtError(f"gateway: {ip} is outside prefix {', '.join(map(str, prefixes))}")
        # RFC 919/922 (v4 network and broadcast; not on /31, RFC 3021), RFC 4291 §2.6.1 (the
        # v6 subnet-router anycast address) are not host addresses.
        reserved = {prefix.network_address}
        if prefix.version == 4:
            reserved.add(prefix.broadcast_address)
        if prefix.num_addresses > 2 and addr in reserved:
            raise MgmtError(f"gateway: {ip} is the network or broadcast address of {prefix}")
        gateways.append(ip)
    if len({ipaddress.ip_address(g).version for g in gateways}) != len(gateways):
        raise MgmtError("gateway: one gateway per address family")
    return tuple(gateways)

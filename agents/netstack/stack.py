"""The sans-IO IP stack of one VM: interfaces, routes, hooks, ICMP, UDP and TCP demux.

Nothing here does I/O or reads a clock: packets come in through :meth:`NetStack.receive`
with the time, go out through :meth:`NetStack.take_output`, and the owner calls
:meth:`NetStack.handle_timers` at :meth:`NetStack.next_deadline`.

Packet paths (netfilter's hook points, in Linux's order):

* received: ``PREROUTING`` -> local? ``INPUT`` -> socket : ``FORWARD`` -> ``POSTROUTING`` -> NIC
* sent:     ``OUTPUT`` -> route -> ``POSTROUTING`` -> MTU -> NIC, or the loopback queue

Traffic between two sockets of the same stack takes the loopback queue and comes back in
through ``PREROUTING``/``INPUT``: never a shortcut around the hooks.  The queue is drained
by the entry point that filled it (:meth:`_run`), iteratively, so a reply to a reply does not
recurse.  TCP connections touched while a batch is processed are flushed once at the end of
it (:attr:`_dirty`), so a batch of segments yields one ACK (like GRO) and one
``data_received``.

Hot-path rules (LIMITS.md): the route is a dict hit keyed by destination string, local
delivery a set membership and a dict dispatch by protocol, empty hook lists are skipped.
"""

from __future__ import annotations

import errno
import ipaddress
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from broker import packets as P

from .errors import IcmpError, icmp_errno, sock_error
from .icmp import EchoEndpoint
from .routes import LOOPBACK, Interface, Route, RouteTable
from .tcp import TcpConfig, TcpConnection, TcpListener
from .timers import TimerQueue
from .udp import ANY4, ANY6, WILDCARDS, UdpEndpoint

Packet = tuple[Any, ...]
Hook = Callable[[Packet, float], "Packet | None"]
RouteEntry = tuple[int, str, str, Interface]  # (dev, via, preferred source, interface)

PREROUTING = "PREROUTING"
INPUT = "INPUT"
FORWARD = "FORWARD"
OUTPUT = "OUTPUT"
POSTROUTING = "POSTROUTING"
HOOK_POINTS = (PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING)

DROP_REASONS = ("no_route", "hook", "mtu", "ttl", "no_socket", "bad_packet", "not_local",
                "no_interface", "backlog", "proto")

EPHEMERAL = (32768, 60999)  # net.ipv4.ip_local_port_range
ROUTE_CACHE_MAX = 4096
PMTU_EXPIRES = 600.0  # net.ipv4.route.mtu_expires
MIN_PMTU_V4 = 68      # RFC 791: every host must take a 68-byte datagram
MIN_PMTU_V6 = 1280    # RFC 8200 section 5
SETTLE_ROUNDS = 10_000  # loopback rounds per entry point before yielding (a ping-pong loop)


class Hooks(dict[str, list[Hook]]):
    """The five hook lists.  The stack keeps references to these very lists (so an empty one
    costs one truth test per packet); assigning a point replaces the list's contents."""

    def __init__(self) -> None:
        super().__init__((point, []) for point in HOOK_POINTS)

    def __setitem__(self, point: str, hooks: list[Hook]) -> None:
        self[point][:] = hooks


class NetStack:
    """One VM's IP stack.  See docs/contracts.md, "Netstack (sans-IO) API"."""

    def __init__(self, name: str, *, seed: int | str | None = None, tcp: TcpConfig | None = None) -> None:
        self.name = name
        self.forwarding = False          # net.ipv4.ip_forward / net.ipv6.conf.all.forwarding
        self.icmp_echo_ignore = False    # net.ipv4.icmp_echo_ignore_all
        self.tcp_config = tcp or TcpConfig()
        self.hooks = Hooks()
        self._pre = self.hooks[PREROUTING]
        self._in = self.hooks[INPUT]
        self._fwd = self.hooks[FORWARD]
        self._outh = self.hooks[OUTPUT]
        self._post = self.hooks[POSTROUTING]
        self.on_output: Callable[[], None] | None = None
        self._out: list[tuple[int, str, Packet]] = []
        self._lo = Interface(LOOPBACK, "lo", "00:00:00:00:00:00", 65536)
        self._lo.add("127.0.0.1/8")
        self._lo.add("::1/128")
        self.interfaces: dict[int, Interface] = {LOOPBACK: self._lo}
        self._local: set[str] = {"127.0.0.1", "::1"}
        self._routes = RouteTable()
        self._rcache: dict[str, RouteEntry] = {}
        self._pmtu: dict[str, tuple[int, float]] = {}
        self._loop: deque[Packet] = deque()
        self._busy = False
        self._now = 0.0
        self._timers = TimerQueue()
        self._dirty: list[TcpConnection] = []
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.counters: dict[str, int] = dict.fromkeys(
            ("forwarded", "icmp_in", "icmp_errors_in", "icmp_errors_out", "echo_replies_out",
             "pmtu_updates"), 0)
        self.tcp_stats: dict[str, int] = dict.fromkeys(
            ("active_opens", "passive_opens", "established", "segments_in", "segments_out",
             "retransmits", "fast_retransmits", "timeouts", "resets_sent", "resets_received",
             "failed", "ooo_segments", "dup_segments", "window_probes", "keepalive_probes"), 0)
        self.last_error: BaseException | None = None
        self._udp: dict[tuple[str, int], UdpEndpoint] = {}
        self._echo: dict[int, EchoEndpoint] = {}
        self._tcp: dict[tuple[str, int, str, int], TcpConnection] = {}
        self._listeners: dict[tuple[str, int], TcpListener] = {}
        self._tcp_ports: dict[int, int] = {}
        self.random = random.Random(name if seed is None else seed)
        self._eph_next = self.random.randint(*EPHEMERAL)
        self._ident_next = self.random.randint(1, 0xFFFF)
        self._dispatch: dict[int, Callable[[Packet, float], None]] = {
            P.UDP: self._udp_input, P.TCP: self._tcp_input,
            P.ICMP: self._icmp_input, P.ICMPV6: self._icmp_input,
        }
        self._icmp_dispatch: dict[tuple[int, int], Callable[[Packet, float], None]] = {
            (P.ICMP, P.ICMP_ECHO_REQUEST): self._echo_request,
            (P.ICMPV6, P.ICMP6_ECHO_REQUEST): self._echo_request,
            (P.ICMP, P.ICMP_ECHO_REPLY): self._echo_reply,
            (P.ICMPV6, P.ICMP6_ECHO_REPLY): self._echo_reply,
            (P.ICMP, P.ICMP_DEST_UNREACH): self._icmp_error_input,
            (P.ICMP, P.ICMP_TIME_EXCEEDED): self._icmp_error_input,
            (P.ICMPV6, P.ICMP6_DEST_UNREACH): self._icmp_error_input,
            (P.ICMPV6, P.ICMP6_PACKET_TOO_BIG): self._icmp_error_input,
            (P.ICMPV6, P.ICMP6_TIME_EXCEEDED): self._icmp_error_input,
        }
        # Which socket hears about an ICMP error, by the quoted packet's protocol.
        self._icmp_error_sinks: dict[int, Callable[[Packet, Packet, int, float], None]] = {
            P.UDP: self._udp_error, P.TCP: self._tcp_error,
            P.ICMP: self._echo_error, P.ICMPV6: self._echo_error,
        }

    # --- configuration -----------------------------------------------------------------------

    def add_interface(self, index: int, name: str, mac: str, mtu: int = P.DEFAULT_MTU,
                      addresses: Iterable[str] = ()) -> Interface:
        if index < 0 or index in self.interfaces:
            raise ValueError(f"index: interface {index} exists or is negative")
        if not 68 <= mtu <= 65535:
            raise ValueError(f"mtu: expected 68..65535, got {mtu}")
        iface = Interface(index, name, mac, mtu)
        self.interfaces[index] = iface
        for text in addresses:
            self.add_address(index, text)
        return iface

    def add_address(self, index: int, text: str) -> None:
        """Add ``"ip/len"`` (a bare ip is a /32 or /128) and its connected route."""
        iface = self._iface(index)
        ip, net = iface.add(text)
        self._local.add(ip)
        if not any(r.network == net and r.dev == index and r.kind == "connected" for r in self._routes):
            self._routes.add(Route(net, index, "", 0, ip, "connected"))
        self._invalidate()

    def remove_address(self, index: int, ip: str) -> None:
        iface = self._iface(index)
        ip = str(ipaddress.ip_address(ip.split("/", 1)[0]))
        net = iface.remove(ip)
        if net is None:
            return
        if not any(ip in i.ips for i in self.interfaces.values()):
            self._local.discard(ip)
        if net not in iface.networks:
            self._routes.remove(net, index, "connected")
        self._invalidate()

    def set_mtu(self, index: int, mtu: int) -> None:
        self._iface(index).mtu = mtu
        self._invalidate()

    def add_route(self, prefix: str, dev: int | None = None, via: str | None = None, *,
                  metric: int = 0, src: str | None = None) -> None:
        """A static route; ``dev`` defaults to the interface whose subnet holds ``via``."""
        net = ipaddress.ip_network(prefix, strict=False)
        gw = str(ipaddress.ip_address(via)) if via else ""
        if dev is None:
            if not gw:
                raise ValueError("dev: needed for an on-link route (no via)")
            dev = self._routes.connected_dev(ipaddress.ip_address(gw))
            if dev is None:
                raise OSError(errno.ENETUNREACH, f"via: {gw} is not on a connected network")
        self._iface(dev)
        self._routes.add(Route(net, dev, gw, metric, src, "static"))
        self._invalidate()

    def remove_route(self, prefix: str, dev: int | None = None) -> int:
        removed = self._routes.remove(ipaddress.ip_network(prefix, strict=False), dev)
        self._invalidate()
        return removed

    def remove_interface(self, index: int) -> None:
        """``ip link del``: the interface, its addresses and every route through it."""
        iface = self._iface(index)
        if iface is self._lo:
            raise ValueError("dev: the loopback interface cannot be removed")
        del self.interfaces[index]
        self._routes.remove_dev(index)
        self._local.clear()
        self._local.update(ip for i in self.interfaces.values() for ip in i.ips)
        self._invalidate()

    def set_protocol_handler(self, proto: int, handler: Callable[[Packet, float], None] | None) -> None:
        """Deliver local packets of IP protocol ``proto`` (e.g. SCTP) to ``handler(pkt, now)``
        after the INPUT hooks; None removes it (then: protocol unreachable)."""
        if proto in (P.UDP, P.TCP, P.ICMP, P.ICMPV6):
            raise ValueError(f"proto: {proto} is built in")
        if handler is None:
            self._dispatch.pop(proto, None)
        else:
            self._dispatch[proto] = handler

    def routes(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self._routes]

    def local_addresses(self) -> set[str]:
        return set(self._local)

    def _iface(self, index: int) -> Interface:
        try:
            return self.interfaces[index]
        except KeyError:
            raise ValueError(f"dev: no interface {index}") from None

    def _invalidate(self) -> None:
        self._rcache.clear()

    # --- entry points ------------------------------------------------------------------------

    def receive(self, nic: int, packets: Iterable[Packet], now: float) -> None:
        """Packets from the wire on ``nic`` (TTL already lowered by the fabric's hops)."""
        self._now = now
        iface = self.interfaces.get(nic)
        if iface is None or nic == LOOPBACK:
            self.drops["no_interface"] += sum(1 for _ in packets)
            return
        if self._busy:  # called from a callback: process now, the outer entry point settles
            self._input(iface, packets, now)
            return
        self._busy = True
        try:
            self._input(iface, packets, now)
            self._settle(now)
        finally:
            self._busy = False

    def output_packet(self, pkt: Packet, now: float) -> int:
        """Send a packet built elsewhere (a tunnel device's encapsulation, a raw socket)
        through the local output path: OUTPUT -> route -> POSTROUTING -> MTU.  Returns 0 or
        the errno ``sendto(2)`` would give."""
        self._now = now
        err = self._output(pkt, now)
        if self._loop and not self._busy:
            self._run(now)
        return err

    def set_tap(self, nic: int, tap: Callable[[str, Packet, float], None] | None) -> None:
        """Install (or remove, with None) the NIC's tap point: every packet in or out of it
        passes there once, so a packet capture hooks in without touching the path."""
        self._iface(nic).tap = tap

    def take_output(self) -> list[tuple[int, str, Packet]]:
        """What to send: ``[(nic, via, pkt)]``, ``via`` "" on-link or the next-hop address."""
        out = self._out
        if not out:
            return out
        self._out = []
        return out

    def next_deadline(self) -> float | None:
        if self._loop or self._dirty:
            return self._now  # a settle that yielded (SETTLE_ROUNDS) has more to do
        return self._timers.next_deadline()

    def handle_timers(self, now: float) -> None:
        self._now = now
        if self._busy:
            return
        self._busy = True
        try:
            for owner in self._timers.pop_due(now):
                owner.on_timer(now)
            self._settle(now)
        finally:
            self._busy = False

    def close(self, now: float | None = None) -> None:
        """Abort every connection (RST) and close every socket: the VM is going away."""
        now = self._now if now is None else now
        for lst in list(self._listeners.values()):
            lst.close()
        for conn in list(self._tcp.values()):
            conn.abort(now)
        for ep in list(self._udp.values()):
            ep.close()
        for echo in list(self._echo.values()):
            echo.close()

    def _run(self, now: float) -> None:
        """Settle outside an entry point (an app call filled the loopback queue or dirtied a
        connection)."""
        self._busy = True
        try:
            self._settle(now)
        finally:
            self._busy = False

    def _settle(self, now: float) -> None:
        loop = self._loop
        lo = self._lo
        for _ in range(SETTLE_ROUNDS):
            if loop:
                batch = list(loop)
                loop.clear()
                self._input(lo, batch, now)
            elif self._dirty:
                dirty = self._dirty
                self._dirty = []
                for conn in dirty:
                    conn._dirty = False
                    conn.flush(now)
            else:
                return

    # --- input -------------------------------------------------------------------------------

    def _input(self, iface: Interface, packets: Iterable[Packet], now: float) -> None:
        local = self._local
        dispatch = self._dispatch
        pre = self._pre
        inp = self._in
        is_lo = iface is self._lo
        tap = iface.tap
        n = nbytes = 0
        for pkt in packets:
            n += 1
            try:
                nbytes += pkt[8]
                if tap is not None:
                    tap("in", pkt, now)
                if pre:
                    pkt = self._hook(pre, pkt, now)
                    if pkt is None:
                        continue
                if pkt[1] in local or is_lo:
                    if inp:
                        pkt = self._hook(inp, pkt, now)
                        if pkt is None:
                            continue
                    handler = dispatch.get(pkt[2])
                    if handler is None:
                        self._proto_unreachable(pkt, now)
                    else:
                        handler(pkt, now)
                elif self.forwarding:
                    self._forward(iface, pkt, now)
                else:
                    self.drops["not_local"] += 1
            except (IndexError, TypeError, ValueError) as exc:
                # The runtime validates packets at its edge; this is the last line of
                # defence, counted and kept for `stats` rather than raised into the loop.
                self.drops["bad_packet"] += 1
                self.last_error = exc
        iface.rx_packets += n
        iface.rx_bytes += nbytes

    def _hook(self, hooks: list[Hook], pkt: Packet, now: float) -> Any:  # Packet | None
        for fn in hooks:
            out = fn(pkt, now)
            if out is None:
                self.drops["hook"] += 1
                return None
            pkt = out
        return pkt

    def _proto_unreachable(self, pkt: Packet, now: float) -> None:
        self.drops["proto"] += 1
        if ":" not in pkt[1]:  # RFC 1122 3.2.2.1 (IPv6 would send a parameter problem)
            self._icmp_error(P.unreachable(pkt[1], pkt, P.ICMP_PROTO_UNREACH, 0), pkt, now)

    # --- output ------------------------------------------------------------------------------

    def _route_slow(self, dst: str) -> RouteEntry | None:
        if dst in self._local:
            entry: RouteEntry = (LOOPBACK, "", dst, self._lo)
        else:
            try:
                addr = ipaddress.ip_address(dst)
            except ValueError:
                return None
            if addr.is_loopback:  # all of 127/8 is local (Linux's local table)
                entry = (LOOPBACK, "", "::1" if addr.version == 6 else "127.0.0.1", self._lo)
            else:
                route = self._routes.lookup(addr)
                if route is None:
                    return None
                iface = self.interfaces[route.dev]
                src = route.src or iface.source_for(addr, route.via)
                if src is None:
                    return None
                entry = (route.dev, route.via, src, iface)
        cache = self._rcache
        if len(cache) >= ROUTE_CACHE_MAX:
            cache.clear()
        cache[dst] = entry
        return entry

    def route(self, dst: str) -> dict[str, Any] | None:
        """``ip route get``: where a packet to ``dst`` would go."""
        entry = self._rcache.get(dst) or self._route_slow(dst)
        if entry is None:
            return None
        dev, via, src, iface = entry
        return {"dev": dev, "name": iface.name, "via": via, "src": src, "mtu": self.path_mtu(dst)}

    def path_mtu(self, dst: str, now: float | None = None) -> int:
        entry = self._rcache.get(dst) or self._route_slow(dst)
        mtu = entry[3].mtu if entry is not None else P.DEFAULT_MTU
        learned = self._pmtu.get(dst)
        if learned is not None and learned[1] > (self._now if now is None else now) and learned[0] < mtu:
            return learned[0]
        return mtu

    def _output(self, pkt: Packet, now: float) -> int:
        """Send a locally generated packet; 0 or the errno the sending socket gets."""
        if self._outh:
            pkt = self._hook(self._outh, pkt, now)
            if pkt is None:
                return errno.EPERM  # what sendto(2) says when netfilter drops in OUTPUT
        dst = pkt[1]
        entry = self._rcache.get(dst) or self._route_slow(dst)
        if entry is None:
            self.drops["no_route"] += 1
            return errno.ENETUNREACH
        if self._post:
            pkt = self._hook(self._post, pkt, now)
            if pkt is None:
                return errno.EPERM
        dev, via, _, iface = entry
        size = pkt[8]
        if size > iface.mtu:
            self.drops["mtu"] += 1
            return errno.EMSGSIZE
        if self._pmtu:
            learned = self._pmtu.get(dst)
            if learned is not None and size > learned[0]:
                if learned[1] > now:
                    self.drops["mtu"] += 1  # we never fragment: like IP_PMTUDISC_DO
                    return errno.EMSGSIZE
                del self._pmtu[dst]
        iface.tx_packets += 1
        iface.tx_bytes += size
        if iface.tap is not None:
            iface.tap("out", pkt, now)
        if dev == LOOPBACK:
            self._loop.append(pkt)
            return 0
        out = self._out
        out.append((dev, via, pkt))
        if len(out) == 1 and self.on_output is not None:
            self.on_output()
        return 0

    def _forward(self, iface: Interface, pkt: Packet, now: float) -> None:
        """RFC 1812 5.3: route, TTL, MTU, then the FORWARD and POSTROUTING hooks."""
        dst = pkt[1]
        entry = self._rcache.get(dst) or self._route_slow(dst)
        if entry is None or entry[0] == LOOPBACK:
            self.drops["no_route"] += 1
            self._icmp_error(P.net_unreachable(self._reply_src(pkt, iface), pkt), pkt, now)
            return
        ttl = pkt[3]
        if ttl <= 1:
            self.drops["ttl"] += 1
            self._icmp_error(P.time_exceeded(self._reply_src(pkt, iface), pkt), pkt, now)
            return
        dev, via, _, out_iface = entry
        if pkt[8] > out_iface.mtu:
            self.drops["mtu"] += 1
            self._icmp_error(P.packet_too_big(self._reply_src(pkt, iface), pkt, out_iface.mtu), pkt, now)
            return
        pkt = P.with_ttl(pkt, ttl - 1)
        if self._fwd:
            pkt = self._hook(self._fwd, pkt, now)
            if pkt is None:
                return
        if self._post:
            pkt = self._hook(self._post, pkt, now)
            if pkt is None:
                return
        self.counters["forwarded"] += 1
        out_iface.tx_packets += 1
        out_iface.tx_bytes += pkt[8]
        if out_iface.tap is not None:
            out_iface.tap("out", pkt, now)
        out = self._out
        out.append((dev, via, pkt))
        if len(out) == 1 and self.on_output is not None:
            self.on_output()

    def _reply_src(self, pkt: Packet, iface: Interface) -> str:
        """The address a router answers from: its source toward the offender, else the
        receiving interface's first address of the family."""
        entry = self._rcache.get(pkt[0]) or self._route_slow(pkt[0])
        if entry is not None:
            return entry[2]
        v6 = ":" in pkt[0]
        for ip in iface.ips:
            if (":" in ip) == v6:
                return ip
        return pkt[1]

    def _icmp_error(self, err: Packet, offending: Packet, now: float) -> None:
        # RFC 1122 3.2.2: never an ICMP error about an ICMP error.
        if P.is_icmp_error(offending):
            return
        self.counters["icmp_errors_out"] += 1
        self._output(err, now)

    # --- ICMP --------------------------------------------------------------------------------

    def _icmp_input(self, pkt: Packet, now: float) -> None:
        self.counters["icmp_in"] += 1
        handler = self._icmp_dispatch.get((pkt[2], pkt[4]))
        if handler is not None:
            handler(pkt, now)

    def _echo_request(self, pkt: Packet, now: float) -> None:
        if self.icmp_echo_ignore:
            return
        ident, seq = pkt[6]
        self.counters["echo_replies_out"] += 1
        self._output(P.echo(pkt[1], pkt[0], False, ident, seq, pkt[7]), now)

    def _echo_reply(self, pkt: Packet, now: float) -> None:
        ident, seq = pkt[6]
        ep = self._echo.get(ident)
        if ep is None:
            self.drops["no_socket"] += 1
            return
        ep.protocol.echo_reply(pkt[0], seq, pkt[7], pkt[3], now)

    def _icmp_error_input(self, pkt: Packet, now: float) -> None:
        self.counters["icmp_errors_in"] += 1
        mtu, quoted = pkt[6]
        if quoted[0] not in self._local:
            return  # not about a packet of ours
        if P.is_packet_too_big(pkt):
            self._learn_pmtu(quoted[1], mtu, now)
        sink = self._icmp_error_sinks.get(quoted[2])
        if sink is not None:
            sink(pkt, quoted, icmp_errno(pkt[2], pkt[4], pkt[5]), now)

    def _learn_pmtu(self, dst: str, mtu: int, now: float) -> None:
        """RFC 1191 / RFC 8201: lower the path MTU to ``dst`` (never raise it from an ICMP)."""
        floor = MIN_PMTU_V6 if ":" in dst else MIN_PMTU_V4
        mtu = max(mtu, floor)
        if mtu >= self.path_mtu(dst, now):
            return
        if len(self._pmtu) >= ROUTE_CACHE_MAX:
            self._pmtu.clear()
        self._pmtu[dst] = (mtu, now + PMTU_EXPIRES)
        self.counters["pmtu_updates"] += 1
        for conn in list(self._tcp.values()):
            if conn._rip == dst:
                conn.pmtu_changed(now)

    def _udp_error(self, pkt: Packet, quoted: Packet, code: int, now: float) -> None:
        ep = self._udp_lookup(quoted[0], quoted[4])
        if ep is not None and not ep._raw:
            ep.protocol.error_received(sock_error(code))

    def _tcp_error(self, pkt: Packet, quoted: Packet, code: int, now: float) -> None:
        conn = self._tcp.get((quoted[0], quoted[4], quoted[1], quoted[5]))
        if conn is not None:
            conn.icmp_error(code, P.is_packet_too_big(pkt), now)

    def _echo_error(self, pkt: Packet, quoted: Packet, code: int, now: float) -> None:
        if quoted[4] not in (P.ICMP_ECHO_REQUEST, P.ICMP6_ECHO_REQUEST):
            return
        ident, seq = quoted[6]
        ep = self._echo.get(ident)
        if ep is None:
            return
        ep.protocol.error_received(IcmpError(
            code, src=pkt[0], icmp_type=pkt[4], icmp_code=pkt[5], mtu=pkt[6][0],
            v6=pkt[2] == P.ICMPV6, ident=ident, seq=seq))

    def icmp_open(self, protocol: Any) -> EchoEndpoint:
        """An echo socket with its own identifier (replies are matched on it)."""
        for _ in range(0x10000):
            ident = self._ident_next
            self._ident_next = ident % 0xFFFF + 1
            if ident not in self._echo:
                ep = EchoEndpoint(self, protocol, ident)
                self._echo[ident] = ep
                return ep
        raise sock_error(errno.EMFILE)

    # --- UDP ---------------------------------------------------------------------------------

    def _udp_lookup(self, ip: str, port: int) -> UdpEndpoint | None:
        udp = self._udp
        return udp.get((ip, port)) or udp.get((ANY6, port)) or (
            None if ":" in ip else udp.get((ANY4, port)))

    def _udp_input(self, pkt: Packet, now: float) -> None:
        dst = pkt[1]
        dport = pkt[5]
        udp = self._udp
        ep = udp.get((dst, dport))
        if ep is None:
            # "::" is dual-stack, as with Linux's default net.ipv6.bindv6only = 0.
            ep = udp.get((ANY6, dport)) or (None if ":" in dst else udp.get((ANY4, dport)))
            if ep is None:
                self.drops["no_socket"] += 1
                self._icmp_error(P.port_unreachable(dst, pkt), pkt, now)
                return
        if ep._raw:
            ep._rx(pkt, now)
        else:
            ep._rx(pkt[7], (pkt[0], pkt[4]))

    def udp_open(self, protocol: Any, local: tuple[str, int] = (ANY4, 0), *, raw: bool = False) -> UdpEndpoint:
        """bind(2) a UDP socket; port 0 picks an ephemeral port.  Calls
        ``protocol.connection_made(endpoint)`` like asyncio's datagram endpoints."""
        ip = self._bind_ip(local[0])
        port = local[1]
        wild = ANY6 if ":" in ip else ANY4

        def taken(p: int) -> bool:
            return (ip, p) in self._udp or (wild, p) in self._udp or (
                ip in WILDCARDS and any(k[1] == p and (":" in k[0]) == (":" in ip) for k in self._udp))

        if port == 0:
            port = self._ephemeral(taken)
        elif taken(port):
            raise sock_error(errno.EADDRINUSE)
        ep = UdpEndpoint(self, protocol, ip, port, raw)
        self._udp[(ip, port)] = ep
        made = getattr(protocol, "connection_made", None)
        if made is not None:
            made(ep)
        return ep

    def _udp_close(self, ep: UdpEndpoint) -> None:
        if self._udp.get(ep.local) is ep:
            del self._udp[ep.local]

    def _bind_ip(self, ip: str) -> str:
        ip = str(ipaddress.ip_address(ip or ANY4))
        if ip not in WILDCARDS and ip not in self._local:
            raise sock_error(errno.EADDRNOTAVAIL)
        return ip

    def _ephemeral(self, taken: Callable[[int], bool]) -> int:
        lo, hi = EPHEMERAL
        span = hi - lo + 1
        port = self._eph_next
        for _ in range(span):
            port = lo + (port - lo + 1) % span
            if not taken(port):
                self._eph_next = port
                return port
        raise sock_error(errno.EADDRNOTAVAIL)

    # --- TCP ---------------------------------------------------------------------------------

    def _tcp_input(self, pkt: Packet, now: float) -> None:
        self.tcp_stats["segments_in"] += 1
        conn = self._tcp.get((pkt[1], pkt[5], pkt[0], pkt[4]))
        if conn is not None:
            conn.segment(pkt, now)
            return
        listeners = self._listeners
        lst = listeners.get((pkt[1], pkt[5])) or listeners.get((ANY6, pkt[5]))
        if lst is None and ":" not in pkt[1]:
            lst = listeners.get((ANY4, pkt[5]))
        if lst is not None:
            lst.segment(pkt, now)
            return
        self.drops["no_socket"] += 1
        self.tcp_reset_reply(pkt, now)

    def tcp_reset_reply(self, pkt: Packet, now: float) -> None:
        """RFC 9293 3.10.7.1: answer a segment for no connection with a RST."""
        flags, seq, ack, _, _ = pkt[6]
        if flags & P.RST:
            return
        if flags & P.ACK:
            rst = P.tcp(pkt[1], pkt[0], pkt[5], pkt[4], P.RST, ack, 0, 0)
        else:
            seg_len = len(pkt[7]) + (1 if flags & P.SYN else 0) + (1 if flags & P.FIN else 0)
            rst = P.tcp(pkt[1], pkt[0], pkt[5], pkt[4], P.RST | P.ACK, 0, (seq + seg_len) & 0xFFFFFFFF, 0)
        self.tcp_stats["resets_sent"] += 1
        self._output(rst, now)

    def tcp_connect(self, protocol: Any, addr: tuple[str, int], now: float, timeout: float | None = None,
                    *, local: tuple[str, int] | None = None, config: TcpConfig | None = None) -> TcpConnection:
        """Open a connection.  ``protocol`` gets ``connection_made(conn)`` once established,
        or ``connection_lost(exc)`` alone if the connect fails (refused, timed out,
        unreachable).  Over loopback the handshake completes before this returns."""
        ip, port = addr
        entry = self._rcache.get(ip) or self._route_slow(ip)
        if entry is None:
            self.drops["no_route"] += 1
            raise sock_error(errno.ENETUNREACH)
        src = entry[2]
        lport = 0
        if local is not None:
            bound = self._bind_ip(local[0])
            if bound not in WILDCARDS:
                src = bound
            lport = local[1]
        if lport == 0:
            lport = self._ephemeral(lambda p: p in self._tcp_ports)
        elif (src, lport, ip, port) in self._tcp:
            raise sock_error(errno.EADDRINUSE)
        conn = TcpConnection(self, protocol, (src, lport), (ip, port), config or self.tcp_config,
                             self.random.getrandbits(32), entry[3].mtu)
        self._register(conn)
        self.tcp_stats["active_opens"] += 1
        self._now = now
        if self._busy:  # from a callback: the running entry point settles
            conn.connect(now, timeout)
            return conn
        self._busy = True
        try:
            conn.connect(now, timeout)
            self._settle(now)
        finally:
            self._busy = False
        return conn

    def tcp_listen(self, factory: Callable[[], Any], local: tuple[str, int] = (ANY4, 0),
                   backlog: int = 128, *, config: TcpConfig | None = None) -> TcpListener:
        """listen(2).  Each connection calls ``factory()`` once established and hands the new
        protocol ``connection_made(conn)``.  ``backlog`` bounds half-open connections."""
        ip = self._bind_ip(local[0])
        port = local[1]
        if port == 0:
            port = self._ephemeral(lambda p: p in self._tcp_ports)
        elif (ip, port) in self._listeners or (
                ip in WILDCARDS and any(k[1] == port for k in self._listeners)) or (
                (ANY6 if ":" in ip else ANY4, port) in self._listeners):
            raise sock_error(errno.EADDRINUSE)
        lst = TcpListener(self, factory, (ip, port), backlog, config or self.tcp_config)
        self._listeners[(ip, port)] = lst
        self._tcp_ports[port] = self._tcp_ports.get(port, 0) + 1
        return lst

    def _new_passive(self, listener: TcpListener, pkt: Packet) -> TcpConnection:
        entry = self._rcache.get(pkt[0]) or self._route_slow(pkt[0])
        mtu = entry[3].mtu if entry is not None else P.DEFAULT_MTU
        conn = TcpConnection(self, None, (pkt[1], pkt[5]), (pkt[0], pkt[4]), listener.config,
                             self.random.getrandbits(32), mtu)
        self._register(conn)
        self.tcp_stats["passive_opens"] += 1
        return conn

    def _register(self, conn: TcpConnection) -> None:
        self._tcp[conn._key] = conn
        port = conn.local[1]
        self._tcp_ports[port] = self._tcp_ports.get(port, 0) + 1

    def _unregister(self, conn: TcpConnection) -> None:
        if self._tcp.get(conn._key) is conn:
            del self._tcp[conn._key]
            self._release_port(conn.local[1])

    def _unlisten(self, lst: TcpListener) -> None:
        if self._listeners.get(lst.local) is lst:
            del self._listeners[lst.local]
            self._release_port(lst.local[1])

    def _release_port(self, port: int) -> None:
        left = self._tcp_ports.get(port, 0) - 1
        if left > 0:
            self._tcp_ports[port] = left
        else:
            self._tcp_ports.pop(port, None)

    # --- introspection -----------------------------------------------------------------------

    def connections(self) -> list[TcpConnection]:
        return list(self._tcp.values())

    def stats(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for conn in self._tcp.values():
            states[conn.state] = states.get(conn.state, 0) + 1
        return {
            "name": self.name,
            "forwarding": self.forwarding,
            "interfaces": {i.name: i.counters() for i in self.interfaces.values()},
            "drops": dict(self.drops),
            "ip": dict(self.counters),
            "tcp": {**self.tcp_stats, "states": states, "listeners": len(self._listeners)},
            "udp": {"endpoints": len(self._udp)},
            "icmp": {"echo_endpoints": len(self._echo)},
            "pmtu": {dst: mtu for dst, (mtu, _) in self._pmtu.items()},
            "last_error": None if self.last_error is None else repr(self.last_error),
        }

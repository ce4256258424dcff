"""Interfaces, routes, hooks, ICMP and UDP over the in-memory fabric, manual clock."""

from __future__ import annotations

import errno
import json

import pytest

from agents.netstack import FORWARD, INPUT, OUTPUT, POSTROUTING, PREROUTING, IcmpError, NetStack
from agents.netstack.fakenet import DatagramRecorder, EchoRecorder, FakeNet, StreamRecorder
from broker import packets as P


def udp_socket(stack: NetStack, port: int = 0, ip: str = "0.0.0.0") -> DatagramRecorder:
    rec = DatagramRecorder()
    stack.udp_open(rec, (ip, port))
    return rec


# --- ping --------------------------------------------------------------------------------


@pytest.mark.parametrize("dst", ["10.0.0.2", "fd00::2"])
def test_ping_is_answered_automatically(lan, dst):
    net, a, b = lan
    rec = EchoRecorder()
    echo = a.icmp_open(rec)
    echo.send(dst, 1, b"ping-payload", net.now)
    assert net.run(lambda: rec.replies, timeout=1)
    src, seq, payload, ttl, when = rec.replies[0]
    assert (src, seq, payload, ttl) == (dst, 1, b"ping-payload", 64)
    assert when == pytest.approx(0.001)  # two 0.5 ms hops
    assert b.counters["echo_replies_out"] == 1


def test_echo_ignore_all(lan):
    net, a, b = lan
    b.icmp_echo_ignore = True
    rec = EchoRecorder()
    a.icmp_open(rec).send("10.0.0.2", 1, b"", net.now)
    net.run_for(1)
    assert rec.replies == [] and b.counters["icmp_in"] == 1


def test_ping_own_address_passes_every_hook(host):
    a = host("a", ["10.0.0.1/24"])
    seen: list[tuple[str, int]] = []

    def watcher(point: str):
        def hook(pkt, now):
            seen.append((point, pkt[P.SPORT]))
            return pkt
        return hook

    for point in (OUTPUT, POSTROUTING, PREROUTING, INPUT):
        a.hooks[point].append(watcher(point))
    rec = EchoRecorder()
    a.icmp_open(rec).send("10.0.0.1", 7, b"me", 0.0)
    assert [r[:3] for r in rec.replies] == [("10.0.0.1", 7, b"me")]
    req, rep = P.ICMP_ECHO_REQUEST, P.ICMP_ECHO_REPLY
    assert seen == [(OUTPUT, req), (POSTROUTING, req), (PREROUTING, req), (INPUT, req),
                    (OUTPUT, rep), (POSTROUTING, rep), (PREROUTING, rep), (INPUT, rep)]
    assert a.take_output() == []


def test_ttl_exceeded_reported_to_the_pinger(routed):
    net, a, r, b = routed
    rec = EchoRecorder()
    a.icmp_open(rec).send("10.2.0.10", 3, b"", net.now, ttl=1)
    assert net.run(lambda: rec.errors, timeout=1)
    err = rec.errors[0]
    assert isinstance(err, IcmpError)
    assert (err.src, err.icmp_type, err.seq, err.errno) == ("10.1.0.1", P.ICMP_TIME_EXCEEDED, 3, errno.EHOSTUNREACH)
    assert r.drops["ttl"] == 1


def test_forwarding_decrements_ttl_both_ways(routed):
    net, a, r, b = routed
    rec = EchoRecorder()
    a.icmp_open(rec).send("10.2.0.10", 1, b"", net.now)
    a.icmp_open(rec).send("fd02::10", 2, b"", net.now)
    assert net.run(lambda: len(rec.replies) == 2, timeout=1)
    assert sorted((src, ttl) for src, _, _, ttl, _ in rec.replies) == [("10.2.0.10", 63), ("fd02::10", 63)]
    assert r.counters["forwarded"] == 4
    assert r.stats()["interfaces"]["eth1"]["tx_packets"] == 2


def test_hop_limit_exceeded_v6(routed):
    net, a, r, b = routed
    rec = EchoRecorder()
    a.icmp_open(rec).send("fd02::10", 1, b"", net.now, ttl=1)
    assert net.run(lambda: rec.errors, timeout=1)
    err = rec.errors[0]
    assert isinstance(err, IcmpError) and err.v6 and err.icmp_type == P.ICMP6_TIME_EXCEEDED
    assert err.src == "fd01::1"


def test_without_forwarding_a_transit_packet_is_dropped(routed):
    net, a, r, b = routed
    r.forwarding = False
    rec = EchoRecorder()
    a.icmp_open(rec).send("10.2.0.10", 1, b"", net.now)
    net.run_for(1)
    assert rec.replies == [] and rec.errors == [] and r.drops["not_local"] == 1


def test_forward_hook_drop_is_counted(routed):
    net, a, r, b = routed
    r.hooks[FORWARD].append(lambda pkt, now: None if pkt[P.PROTO] == P.UDP else pkt)
    got = udp_socket(b, 5000)
    ping = EchoRecorder()
    a.icmp_open(ping).send("10.2.0.10", 1, b"", net.now)
    udp_socket(a).endpoint.sendto(b"blocked", ("10.2.0.10", 5000), net.now)
    net.run_for(1)
    assert got.datagrams == [] and len(ping.replies) == 1
    assert r.drops["hook"] == 1


def test_router_without_route_sends_net_unreachable(routed):
    net, a, r, b = routed
    sock = udp_socket(a)
    sock.endpoint.sendto(b"x", ("10.9.9.9", 53), net.now)
    assert net.run(lambda: sock.errors, timeout=1)
    assert isinstance(sock.errors[0], OSError) and sock.errors[0].errno == errno.ENETUNREACH
    assert r.drops["no_route"] == 1 and r.counters["icmp_errors_out"] == 1


# --- UDP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dst", ["10.0.0.2", "fd00::2"])
def test_udp_roundtrip(lan, dst):
    net, a, b = lan
    server = udp_socket(b, 7, "::")  # "::" takes IPv4 too (bindv6only = 0)
    client = udp_socket(a, 0, "::")
    client.endpoint.sendto(b"hello", (dst, 7), net.now)
    assert net.run(lambda: server.datagrams, timeout=1)
    data, addr = server.datagrams[0]
    assert data == b"hello" and addr == (dst.replace("2", "1"), client.endpoint.local[1])
    server.endpoint.sendto(b"back", addr, net.now)
    assert net.run(lambda: client.datagrams, timeout=1)
    assert client.datagrams[0] == (b"back", (dst, 7))


@pytest.mark.parametrize("dst", ["10.0.0.2", "fd00::2"])
def test_udp_to_closed_port_is_refused(lan, dst):
    net, a, b = lan
    client = udp_socket(a, 0, "::")
    client.endpoint.sendto(b"anyone?", (dst, 9), net.now)
    assert net.run(lambda: client.errors, timeout=1)
    assert isinstance(client.errors[0], ConnectionRefusedError)
    assert b.drops["no_socket"] == 1


def test_oversize_udp_is_emsgsize(lan):
    net, a, b = lan
    client = udp_socket(a)
    client.endpoint.sendto(b"x" * 1472, ("10.0.0.2", 9), net.now)  # exactly 1500 bytes: fine
    with pytest.raises(OSError) as info:
        client.endpoint.sendto(b"x" * 1473, ("10.0.0.2", 9), net.now)
    assert info.value.errno == errno.EMSGSIZE
    assert a.drops["mtu"] == 1
    with pytest.raises(OSError) as info:
        client.endpoint.sendto(b"x", ("fd00::2", 9), net.now)
    assert info.value.errno == errno.EAFNOSUPPORT  # an IPv4 socket
    client6 = udp_socket(a, 0, "::")
    with pytest.raises(OSError) as info:
        client6.endpoint.sendto(b"x" * 1453, ("fd00::2", 9), net.now)  # 40 + 8 + 1453 > 1500
    assert info.value.errno == errno.EMSGSIZE


def test_forwarded_oversize_gets_packet_too_big(routed):
    net, a, r, b = routed
    r.set_mtu(1, 1000)
    client = udp_socket(a)
    client.endpoint.sendto(b"x" * 1200, ("10.2.0.10", 9), net.now)
    assert net.run(lambda: client.errors, timeout=1)
    assert isinstance(client.errors[0], OSError) and client.errors[0].errno == errno.EMSGSIZE
    assert r.drops["mtu"] == 1 and a.path_mtu("10.2.0.10") == 1000
    with pytest.raises(OSError) as info:  # the learned path MTU now applies locally
        client.endpoint.sendto(b"x" * 1200, ("10.2.0.10", 9), net.now)
    assert info.value.errno == errno.EMSGSIZE
    client.endpoint.sendto(b"x" * 972, ("10.2.0.10", 9), net.now)  # 1000 bytes on the wire


def test_no_route_is_enetunreach(host):
    a = host("a", ["10.0.0.1/24"])
    rec = DatagramRecorder()
    ep = a.udp_open(rec)
    with pytest.raises(OSError) as info:
        ep.sendto(b"x", ("192.0.2.1", 9), 0.0)
    assert info.value.errno == errno.ENETUNREACH
    with pytest.raises(OSError) as info:
        a.icmp_open(EchoRecorder()).send("192.0.2.1", 1, b"", 0.0)
    assert info.value.errno == errno.ENETUNREACH
    assert a.drops["no_route"] == 2


def test_output_hook_drop_is_eperm(host):
    a = host("a", ["10.0.0.1/24"])
    a.hooks[OUTPUT].append(lambda pkt, now: None)
    ep = a.udp_open(DatagramRecorder())
    with pytest.raises(PermissionError):
        ep.sendto(b"x", ("10.0.0.9", 9), 0.0)
    assert a.drops["hook"] == 1 and a.take_output() == []


def test_bind_rules(host):
    a = host("a", ["10.0.0.1/24"])
    ep = a.udp_open(DatagramRecorder())
    assert 32768 <= ep.local[1] <= 60999
    a.udp_open(DatagramRecorder(), ("10.0.0.1", 53))
    with pytest.raises(OSError) as info:
        a.udp_open(DatagramRecorder(), ("10.0.0.1", 53))
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as info:
        a.udp_open(DatagramRecorder(), ("0.0.0.0", 53))
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as info:
        a.udp_open(DatagramRecorder(), ("10.9.9.9", 53))
    assert info.value.errno == errno.EADDRNOTAVAIL


# --- same-stack traffic goes through the hooks ----------------------------------------------


def test_same_stack_udp_passes_hooks_and_a_hook_can_drop_it(host):
    a = host("a", ["10.0.0.1/24"])
    counted: dict[str, int] = {}

    def counter(point):
        def hook(pkt, now):
            counted[point] = counted.get(point, 0) + 1
            return pkt
        return hook

    for point in (PREROUTING, INPUT, OUTPUT, POSTROUTING, FORWARD):
        a.hooks[point].append(counter(point))
    server = udp_socket(a, 7)
    client = udp_socket(a)
    client.endpoint.sendto(b"one", ("10.0.0.1", 7), 0.0)
    assert server.datagrams == [(b"one", ("10.0.0.1", client.endpoint.local[1]))]
    assert counted == {OUTPUT: 1, POSTROUTING: 1, PREROUTING: 1, INPUT: 1}
    a.hooks[INPUT].append(lambda pkt, now: None if pkt[P.DPORT] == 7 else pkt)
    client.endpoint.sendto(b"two", ("10.0.0.1", 7), 0.0)
    assert len(server.datagrams) == 1 and a.drops["hook"] == 1
    assert a.stats()["interfaces"]["lo"]["rx_packets"] == 2


def test_same_stack_tcp_passes_hooks(host):
    a = host("a", ["10.0.0.1/24"])
    tcp_in: list[int] = []

    def watch(pkt, now):
        if pkt[P.PROTO] == P.TCP:
            tcp_in.append(pkt[P.INFO][0])
        return pkt

    a.hooks[INPUT].append(watch)
    accepted: list[StreamRecorder] = []

    def factory() -> StreamRecorder:
        accepted.append(StreamRecorder())
        return accepted[-1]

    a.tcp_listen(factory, ("0.0.0.0", 80))
    client = StreamRecorder()
    a.tcp_connect(client, ("10.0.0.1", 80), 0.0)
    assert client.made and accepted[0].made
    assert tcp_in[:3] == [P.SYN, P.SYN | P.ACK, P.ACK]


def test_udp_ping_pong_on_loopback_does_not_recurse(host):
    """Two sockets that answer each other forever: the stack yields (next_deadline = now)
    instead of recursing or spinning inside one call."""
    a = host("a", ["10.0.0.1/24"])

    class Bouncer(DatagramRecorder):
        def datagram_received(self, data, addr):
            self.datagrams.append((data, addr))
            self.endpoint.sendto(data, addr)

    left, right = Bouncer(), Bouncer()
    a.udp_open(left, ("10.0.0.1", 1000))
    a.udp_open(right, ("10.0.0.1", 2000))
    left.endpoint.sendto(b"ball", ("10.0.0.1", 2000), 0.0)
    bounces = len(left.datagrams) + len(right.datagrams)
    assert 1000 <= bounces <= 20_000
    assert a.next_deadline() == 0.0  # more to do: the owner comes back at once
    a.handle_timers(0.0)
    assert len(left.datagrams) + len(right.datagrams) > bounces


# --- routes, interfaces, output ------------------------------------------------------------


def test_longest_prefix_match_and_next_hops(host):
    a = host("a", ["10.0.0.1/24"], ["192.168.1.1/24"])
    a.add_route("10.0.0.0/8", via="192.168.1.254")
    a.add_route("10.20.0.0/16", via="10.0.0.254")
    a.add_route("0.0.0.0/0", dev=1, via="192.168.1.1")
    assert a.route("10.20.3.4")["via"] == "10.0.0.254" and a.route("10.20.3.4")["dev"] == 0
    assert a.route("10.30.3.4")["via"] == "192.168.1.254" and a.route("10.30.3.4")["src"] == "192.168.1.1"
    assert a.route("10.0.0.7") == {"dev": 0, "name": "eth0", "via": "", "src": "10.0.0.1", "mtu": 1500}
    assert a.route("8.8.8.8")["dev"] == 1
    assert a.route("fd00::1") is None
    ep = a.udp_open(DatagramRecorder())
    for dst in ("10.20.3.4", "10.30.3.4", "10.0.0.7"):
        ep.sendto(b"x", (dst, 9), 0.0)
    out = a.take_output()
    assert [(nic, via, pkt[P.SRC]) for nic, via, pkt in out] == [
        (0, "10.0.0.254", "10.0.0.1"), (1, "192.168.1.254", "192.168.1.1"), (0, "", "10.0.0.1")]
    assert a.take_output() == []
    a.remove_route("10.20.0.0/16")
    assert a.route("10.20.3.4")["via"] == "192.168.1.254"  # the cache was invalidated


def test_on_output_fires_when_output_becomes_non_empty(host):
    a = host("a", ["10.0.0.1/24"])
    calls = []
    a.on_output = lambda: calls.append(1)
    ep = a.udp_open(DatagramRecorder())
    ep.sendto(b"1", ("10.0.0.2", 9), 0.0)
    ep.sendto(b"2", ("10.0.0.2", 9), 0.0)
    assert len(calls) == 1
    assert len(a.take_output()) == 2
    ep.sendto(b"3", ("10.0.0.2", 9), 0.0)
    assert len(calls) == 2


def test_addresses_can_come_and_go(host):
    a = host("a", ["10.0.0.1/24"])
    a.add_address(0, "10.0.0.100")  # a VIP claimed later (bare address: a /32)
    assert "10.0.0.100" in a.local_addresses()
    rec = udp_socket(a, 80, "10.0.0.100")
    a.receive(0, [P.udp("10.0.0.5", "10.0.0.100", 1234, 80, b"to vip")], 0.0)
    assert rec.datagrams == [(b"to vip", ("10.0.0.5", 1234))]
    a.remove_address(0, "10.0.0.100")
    assert "10.0.0.100" not in a.local_addresses()
    assert a.route("10.0.0.9")["src"] == "10.0.0.1"


def test_counters_and_stats_are_plain_data(lan):
    net, a, b = lan
    server = udp_socket(b, 7)
    client = udp_socket(a)
    for _ in range(3):
        client.endpoint.sendto(b"x" * 10, ("10.0.0.2", 7), net.now)
    assert net.run(lambda: len(server.datagrams) == 3, timeout=1)
    stats = b.stats()
    assert json.loads(json.dumps(stats)) == stats
    assert stats["interfaces"]["eth0"]["rx_packets"] == 3
    assert stats["interfaces"]["eth0"]["rx_bytes"] == 3 * (20 + 8 + 10)
    assert a.stats()["interfaces"]["eth0"]["tx_bytes"] == 3 * 38
    assert set(stats["drops"]) >= {"no_route", "hook", "mtu", "ttl", "no_socket", "bad_packet"}


def test_garbage_packet_is_counted_not_raised(host):
    a = host("a", ["10.0.0.1/24"])
    a.receive(0, [("10.0.0.2", "10.0.0.1", P.TCP, 64, 1, 80, None, b"", 40)], 0.0)
    assert a.drops["bad_packet"] == 1


def test_fakenet_mtu_black_hole_and_no_route_are_counted(host):
    net = FakeNet()
    net.add_segment("thin", mtu=576)
    a = host("a", ["10.0.0.1/24"])
    b = host("b", ["10.0.0.2/24"])
    net.attach(a, 0, "thin")
    net.attach(b, 0, "thin")
    got = udp_socket(b, 9)
    ep = udp_socket(a).endpoint
    ep.sendto(b"x" * 1000, ("10.0.0.2", 9), net.now)
    ep.sendto(b"x" * 10, ("10.0.0.3", 9), net.now)
    ep.sendto(b"x" * 10, ("10.0.0.2", 9), net.now)
    net.run_for(1)
    assert len(got.datagrams) == 1
    assert net.counters["mtu"] == 1 and net.counters["no_route"] == 1


def test_unknown_protocol_is_unreachable_until_a_handler_registers(lan):
    net, a, b = lan
    sctp = P.sctp("10.0.0.1", "10.0.0.2", 5000, 38412, P.SCTP_INIT, 0)
    a._output(sctp, net.now)
    got: list[tuple] = []
    net.taps.append(lambda now, name, nic, via, pkt: got.append(pkt) if name == "b" else None)
    net.run_for(0.01)
    assert b.drops["proto"] == 1 and got and got[0][P.SPORT] == P.ICMP_DEST_UNREACH
    seen: list[tuple] = []
    b.set_protocol_handler(P.SCTP, lambda pkt, now: seen.append(pkt))
    a._output(sctp, net.now)
    net.run_for(0.01)
    assert seen == [sctp]


# --- the NIC tap point ---------------------------------------------------------------------


def test_a_nic_tap_sees_every_packet_in_and_out_of_that_nic_once(routed):
    """The tap is where a packet capture hooks in: a routed ping crosses the router's two
    NICs, so eth0's tap sees request in / reply out and eth1's request out / reply in."""
    net, a, r, b = routed
    seen: dict[int, list[tuple[str, str, int]]] = {0: [], 1: []}
    for nic in (0, 1):
        r.set_tap(nic, lambda d, pkt, now, nic=nic: seen[nic].append((d, pkt[P.DST], pkt[P.TTL])))
    rec = EchoRecorder()
    a.icmp_open(rec).send("10.2.0.10", 1, b"", net.now)
    assert net.run(lambda: rec.replies, timeout=1)
    assert seen[0] == [("in", "10.2.0.10", 64), ("out", "10.1.0.10", 63)]
    assert seen[1] == [("out", "10.2.0.10", 63), ("in", "10.1.0.10", 64)]
    r.set_tap(0, None)
    a.icmp_open(rec).send("10.2.0.10", 2, b"", net.now)
    assert net.run(lambda: len(rec.replies) == 2, timeout=1)
    assert len(seen[0]) == 2 and len(seen[1]) == 4

"""The sans-IO underlay: frames in, messages out, a hand-driven clock and a seeded generator."""

from __future__ import annotations

import copy
import random
from typing import Any

import msgpack
import pytest

from agents.mgmt import MgmtError
from broker import packets as P
from broker import wire
from broker.underlay import Underlay

A, B, C, X = b"vm-a", b"vm-b", b"vm-c", b"vm-x"


def fabric(**extra: Any) -> Underlay:
    """dc 172.16.0.0/24 (gw .1), lab 10.1.0.0/16 mtu 1400, edge 203.0.113.0/24 external."""
    u = Underlay(random.Random(1))
    u.add_network({"name": "dc", "prefix": ["172.16.0.0/24", "fd00:16::/64"],
                   "gateway": ["172.16.0.1", "fd00:16::1"], "vlan": 10})
    u.add_network({"name": "lab", "prefix": "10.1.0.0/16", "gateway": "10.1.0.1", "mtu": 1400})
    u.add_network({"name": "edge", "prefix": "203.0.113.0/24", "gateway": "203.0.113.1", "external": True})
    return u


def attach(u: Underlay, ident: bytes, vm: str, network: str, ips: list[str], nic: int = 0,
           name: str = "eth0", now: float = 0.0) -> list[Any]:
    spec = {"vm": vm, "name": name, "mac": "02:00:00:00:00:01", "network": network, "ips": ips, "mtu": 1500}
    out = u.handle(ident, wire.attach(nic, spec), now)
    assert decode(out[0])[:4] == (ident, wire.ATTACHED, nic, True)
    return out[1:]


def send(u: Underlay, ident: bytes, src: str, dst: str, via: str = "", n: int = 1, size: int = 100,
         ttl: int = 64, nic: int = 0, now: float = 0.0) -> list[Any]:
    pkts = [P.udp(src, dst, 1000 + i, 7, bytes(size), ttl=ttl) for i in range(n)]
    nbytes = sum(p[P.SIZE] for p in pkts)
    return u.handle(ident, wire.packets(nic, dst, via, pkts, nbytes, min(p[P.TTL] for p in pkts)), now)


def decode(msg: list[Any]) -> tuple[Any, ...]:
    """(identity, kind, nic, ...header fields)."""
    hdr = wire.decode(msg[1:])
    return (msg[0], *hdr[1:])


def delivered(msgs: list[Any]) -> list[tuple[bytes, int, int, list[P.Packet]]]:
    """(identity, nic, hops, packets) of every DELIVER; checks count/nbytes against the body."""
    out = []
    for msg in msgs:
        ident, kind, nic, hops, count, nbytes = decode(msg)
        assert kind == wire.DELIVER
        pkts = list(wire.unpack_body(msg[2]))
        assert count == len(pkts) and nbytes == sum(p[P.SIZE] for p in pkts)
        out.append((ident, nic, hops, pkts))
    return out


def counters(u: Underlay, name: str) -> dict[str, Any]:
    return u.stats()["nics"][name]


def drops(u: Underlay, name: str) -> dict[str, int]:
    return {k: v for k, v in counters(u, name)["drops"].items() if v}


def two_vms(u: Underlay) -> None:
    attach(u, A, "vm-a", "dc", ["172.16.0.10", "fd00:16::10"])
    attach(u, B, "vm-b", "dc", ["172.16.0.11", "fd00:16::11"])


# --- the fast path ---------------------------------------------------------------------------


def test_fast_path_forwards_the_body_untouched_with_exact_counters() -> None:
    u = fabric()
    two_vms(u)
    pkts = [P.udp("172.16.0.10", "172.16.0.11", 5000, 7, bytes(100)) for _ in range(64)]
    frames = wire.packets(0, "172.16.0.11", "", pkts, 64 * 128, 64)
    out = u.handle(A, frames, 0.0)
    assert len(out) == 1 and out[0][2] is frames[1]  # never decoded, never copied
    assert decode(out[0]) == (B, wire.DELIVER, 0, 0, 64, 64 * 128)
    a, b = counters(u, "vm-a/eth0"), counters(u, "vm-b/eth0")
    assert (a["tx_packets"], a["tx_bytes"], a["rx_packets"]) == (64, 8192, 0)
    assert (b["rx_packets"], b["rx_bytes"], b["tx_packets"]) == (64, 8192, 0)
    totals = u.stats()["totals"]
    assert (totals["frames"], totals["batches"], totals["fast_path"], totals["slow_path"]) == (3, 1, 1, 0)


def test_ipv6_on_link_and_via_a_neighbour() -> None:
    u = fabric()
    two_vms(u)
    assert delivered(send(u, A, "fd00:16::10", "fd00:16::11"))[0][:3] == (B, 0, 0)
    # via another NIC's address: delivered to that NIC (it forwards), whatever dst is
    assert delivered(send(u, A, "172.16.0.10", "10.244.1.5", via="172.16.0.11"))[0][:3] == (B, 0, 0)


def test_nobody_claims_the_target() -> None:
    u = fabric()
    two_vms(u)
    assert send(u, A, "172.16.0.10", "172.16.0.99", n=3) == []
    assert send(u, A, "172.16.0.10", "10.244.1.5", via="172.16.0.98", n=2) == []
    assert drops(u, "vm-a/eth0") == {"no_route": 5}
    assert counters(u, "vm-a/eth0")["tx_packets"] == 5


# --- claims and conflicts ------------------------------------------------------------------


def test_latest_claim_wins_and_re_announcing_alternates_ownership() -> None:
    u = fabric()
    two_vms(u)
    attach(u, C, "vm-c", "dc", ["172.16.0.12"])
    vip = "172.16.0.100"
    owners = []
    for t, ident in enumerate([A, B, B, A, B]):
        assert u.handle(ident, wire.claim(0, [vip]), float(t)) == []
        owners.append(delivered(send(u, C, "172.16.0.12", vip))[0][0])
    assert owners == [A, B, B, A, B]
    events = u.conflicts()
    assert [(e["previous"], e["owner"]) for e in events] == [
        ("vm-a/eth0", "vm-b/eth0"), ("vm-b/eth0", "vm-a/eth0"), ("vm-a/eth0", "vm-b/eth0")]
    assert events[0] == {"time": 1.0, "network": "dc", "ip": vip, "previous": "vm-a/eth0", "owner": "vm-b/eth0"}
    assert u.stats()["totals"]["conflicts"] == 3
    assert u.stats()["networks"]["dc"]["claims"][vip] == "vm-b/eth0"


@pytest.mark.parametrize(("ip", "why"), [
    ("172.16.0.1", "gateway"), ("10.9.9.9", "outside"), ("172.16.0.255", "broadcast"),
    ("172.16.0.0", "network"), ("fd00:99::1", "outside"), ("not-an-ip", "not an IP"),
])
def test_refused_claims_notice_and_count(ip: str, why: str) -> None:
    u = fabric()
    out = attach(u, A, "vm-a", "dc", ["172.16.0.10", ip])
    assert len(out) == 1
    ident, kind, nic, what, detail = decode(out[0])
    assert (ident, kind, nic, what, detail["ip"]) == (A, wire.NOTICE, 0, "claim-refused", ip)
    assert why in detail["reason"]
    assert drops(u, "vm-a/eth0") == {"conflict": 1}
    assert u.stats()["networks"]["dc"]["claims"] == {"172.16.0.10": "vm-a/eth0"}


def test_release_and_detach_give_addresses_up() -> None:
    u = fabric()
    two_vms(u)
    u.handle(B, wire.release(0, ["172.16.0.11"]), 0.0)
    assert send(u, A, "172.16.0.10", "172.16.0.11") == []
    u.handle(B, wire.claim(0, ["172.16.0.11"]), 0.0)
    assert decode(u.handle(B, wire.detach(0), 0.0)[0]) == (B, wire.DETACHED, 0)
    assert send(u, A, "172.16.0.10", "fd00:16::11") == []
    assert drops(u, "vm-a/eth0") == {"no_route": 2}
    assert counters(u, "vm-b/eth0")["attached"] is False
    assert u.stats()["networks"]["dc"]["claims"] == {"172.16.0.10": "vm-a/eth0", "fd00:16::10": "vm-a/eth0"}


def test_reattach_keeps_counters_and_a_new_process_takes_over_the_name() -> None:
    u = fabric()
    two_vms(u)
    send(u, A, "172.16.0.10", "172.16.0.11", n=4)
    attach(u, b"vm-b-restarted", "vm-b", "dc", ["172.16.0.11"])  # old one never detached
    assert delivered(send(u, A, "172.16.0.10", "172.16.0.11", n=2))[0][0] == b"vm-b-restarted"
    assert counters(u, "vm-b/eth0")["rx_packets"] == 6
    # the old process's frames are now from an unattached NIC
    out = send(u, B, "172.16.0.11", "172.16.0.10")
    assert decode(out[0])[1:4] == (wire.NOTICE, 0, "not-attached")
    assert u.stats()["totals"]["bad_frames"]["unattached"] == 1


# --- the router ----------------------------------------------------------------------------


def routed_fabric() -> Underlay:
    u = fabric()
    attach(u, A, "vm-a", "dc", ["172.16.0.10"])
    attach(u, B, "vm-b", "lab", ["10.1.2.3"])
    attach(u, X, "client", "edge", ["203.0.113.7"])
    return u


def test_routed_through_the_gateway_counts_one_hop() -> None:
    u = routed_fabric()
    got = delivered(send(u, A, "172.16.0.10", "10.1.2.3", via="172.16.0.1", n=3))
    assert [(i, h, len(p)) for i, _, h, p in got] == [(B, 1, 3)]
    assert delivered(send(u, X, "203.0.113.7", "172.16.0.10", via="203.0.113.1"))[0][:3] == (A, 0, 1)


def test_longest_prefix_match_and_route_sources() -> None:
    u = routed_fabric()
    attach(u, C, "vm-c", "lab", ["10.1.9.9"])
    u.add_network({"name": "other", "prefix": "10.2.0.0/24"})
    # a /24 to lab only for "edge", a /8 to "other" for everyone
    u.add_route({"prefix": "10.1.9.0/24", "network": "lab", "sources": ["edge"]})
    u.add_route({"prefix": "10.0.0.0/8", "network": "other"})
    assert delivered(send(u, A, "172.16.0.10", "10.1.9.9", via="172.16.0.1"))[0][0] == C  # the /16
    u.remove_route({"prefix": "10.1.0.0/16", "network": "lab"})
    # from dc: the /24 is not visible, the /8 wins and nobody on "other" has 10.1.9.9
    assert send(u, A, "172.16.0.10", "10.1.9.9", via="172.16.0.1") == []
    assert drops(u, "vm-a/eth0") == {"no_route": 1}
    # from edge the /24 is visible
    assert delivered(send(u, X, "203.0.113.7", "10.1.9.9", via="203.0.113.1"))[0][0] == C


def test_absent_route_drops_and_answers_net_unreachable_once_per_batch() -> None:
    u = routed_fabric()
    u.remove_route({"prefix": "10.1.0.0/16", "network": "lab"})
    out = send(u, A, "172.16.0.10", "10.1.2.3", via="172.16.0.1", n=5)
    [(ident, nic, hops, [icmp])] = delivered(out)
    assert (ident, hops) == (A, 0)
    assert (icmp[P.SRC], icmp[P.DST], icmp[P.SPORT], icmp[P.DPORT]) == (
        "172.16.0.1", "172.16.0.10", P.ICMP_DEST_UNREACH, P.ICMP_NET_UNREACH)
    assert icmp[P.INFO][1][P.DST] == "10.1.2.3"  # it quotes the offending packet
    assert drops(u, "vm-a/eth0") == {"no_route": 5}
    # the edge is silent
    assert send(u, X, "203.0.113.7", "10.1.2.3", via="203.0.113.1") == []
    assert drops(u, "client/eth0") == {"no_route": 1}


def test_router_answers_pings_to_its_gateway_addresses() -> None:
    u = routed_fabric()
    ping = P.echo("172.16.0.10", "10.1.0.1", True, 7, 1, b"hi")
    out = u.handle(A, wire.packets(0, "10.1.0.1", "172.16.0.1", [ping], ping[P.SIZE], 64), 0.0)
    [(ident, _, hops, [reply])] = delivered(out)
    assert (ident, reply[P.SRC], reply[P.DST], reply[P.SPORT], reply[P.INFO]) == (
        A, "10.1.0.1", "172.16.0.10", P.ICMP_ECHO_REPLY, (7, 1))


def test_ttl_expiring_at_the_router_takes_the_slow_path() -> None:
    u = routed_fabric()  # lab (mtu 1400) -> dc (mtu 1500): only the TTL sends it slow
    pkts = [P.udp("10.1.2.3", "172.16.0.10", 1, 2, b"x", ttl=1), P.udp("10.1.2.3", "172.16.0.10", 1, 2, b"y", ttl=2)]
    out = u.handle(B, wire.packets(0, "172.16.0.10", "10.1.0.1", pkts, sum(p[P.SIZE] for p in pkts), 1), 0.0)
    got = delivered(out)
    assert [(i, h, [p[P.PAYLOAD] for p in ps]) for i, _, h, ps in got[:1]] == [(A, 1, [b"y"])]
    icmp = got[1][3][0]
    assert (got[1][0], icmp[P.SRC], icmp[P.SPORT]) == (B, "10.1.0.1", P.ICMP_TIME_EXCEEDED)
    assert icmp[P.INFO][1][P.PAYLOAD] == b"x"
    assert drops(u, "vm-b/eth0") == {"ttl": 1}
    assert u.stats()["totals"]["slow_path"] == 1
    # on-link nothing decrements: TTL 1 is fine, and it stays on the fast path
    send(u, A, "172.16.0.10", "172.16.0.10", ttl=1)
    assert u.stats()["totals"]["fast_path"] == 1


def test_smaller_mtu_ahead_gives_packet_too_big() -> None:
    u = routed_fabric()
    big = P.udp("172.16.0.10", "10.1.2.3", 1, 2, bytes(1450))
    small = P.udp("172.16.0.10", "10.1.2.3", 1, 2, bytes(1000))
    out = u.handle(A, wire.packets(0, "10.1.2.3", "172.16.0.1", [big, small], big[P.SIZE] + small[P.SIZE], 64), 0.0)
    got = delivered(out)
    assert [p[P.SIZE] for p in got[0][3]] == [1028] and got[0][0] == B
    icmp = got[1][3][0]
    assert (got[1][0], icmp[P.SPORT], icmp[P.DPORT], icmp[P.INFO][0]) == (
        A, P.ICMP_DEST_UNREACH, P.ICMP_FRAG_NEEDED, 1400)
    assert drops(u, "vm-a/eth0") == {"mtu": 1}
    # lab -> dc goes to a bigger MTU: fast path
    send(u, B, "10.1.2.3", "172.16.0.10", via="10.1.0.1", size=1300)
    assert u.stats()["totals"]["fast_path"] == 1


# --- partitions ----------------------------------------------------------------------------


def test_partition_both_ways_by_vm_name_then_heal() -> None:
    u = fabric()
    two_vms(u)
    ident = u.partition({"a": ["vm-a"], "b": ["vm-b/eth0"]})["id"]
    assert send(u, A, "172.16.0.10", "172.16.0.11", n=3) == []
    assert send(u, B, "172.16.0.11", "172.16.0.10", n=2) == []
    assert drops(u, "vm-a/eth0") == {"partition": 3} and drops(u, "vm-b/eth0") == {"partition": 2}
    assert u.heal({"id": ident}) == {"healed": [ident]}
    assert delivered(send(u, A, "172.16.0.10", "172.16.0.11"))[0][0] == B


def test_one_way_partition_and_reattached_nics_stay_partitioned() -> None:
    u = fabric()
    two_vms(u)
    u.partition({"a": ["vm-a"], "b": ["vm-b"], "one_way": True})
    assert send(u, A, "172.16.0.10", "172.16.0.11") == []
    assert delivered(send(u, B, "172.16.0.11", "172.16.0.10"))[0][0] == A
    u.handle(B, wire.detach(0), 0.0)
    attach(u, b"vm-b-again", "vm-b", "dc", ["172.16.0.11"])
    assert send(u, A, "172.16.0.10", "172.16.0.11") == []
    assert drops(u, "vm-a/eth0") == {"partition": 2}


# --- impairments ---------------------------------------------------------------------------


def test_pair_delay_schedules_and_rebatches_deliveries() -> None:
    u = fabric()
    two_vms(u)
    u.impair({"scope": "pair", "target": ["vm-a", "vm-b"], "delay_ms": 50})
    assert send(u, A, "172.16.0.10", "172.16.0.11", n=3, now=1.0) == []
    assert send(u, A, "172.16.0.10", "172.16.0.11", n=2, now=1.0) == []
    assert u.next_deadline() == pytest.approx(1.05)
    assert u.due(1.049) == []
    got = delivered(u.due(1.05))
    assert [(i, h, len(p)) for i, _, h, p in got] == [(B, 0, 5)]  # two batches, one delivery
    assert [p[P.SPORT] for p in got[0][3]] == [1000, 1001, 1002, 1000, 1001]
    assert u.next_deadline() is None
    # both directions; the reply is delayed too
    send(u, B, "172.16.0.11", "172.16.0.10", now=2.0)
    assert u.next_deadline() == pytest.approx(2.05)
    assert counters(u, "vm-b/eth0")["rx_packets"] == 5
    assert u.stats()["totals"]["slow_path"] == 3


def test_one_way_pair_impairment_leaves_the_other_direction_on_the_fast_path() -> None:
    u = fabric()
    two_vms(u)
    u.impair({"scope": "pair", "target": ["vm-a/eth0", "vm-b/eth0"], "one_way": True, "delay_ms": 5})
    assert send(u, A, "172.16.0.10", "172.16.0.11") == []
    assert len(send(u, B, "172.16.0.11", "172.16.0.10")) == 1


def test_loss_is_counted_and_binomial() -> None:
    u = fabric()
    two_vms(u)
    u.impair({"scope": "nic", "target": "vm-b/eth0", "loss": 20})
    got = 0
    for _ in range(50):
        got += sum(len(p) for *_, p in delivered(send(u, A, "172.16.0.10", "172.16.0.11", n=40)))
    lost = drops(u, "vm-a/eth0")["loss"]
    assert got + lost == 2000
    assert 310 < lost < 490  # 400 +- 4.5 sigma


def test_duplicate_and_reorder() -> None:
    u = fabric()
    two_vms(u)
    u.impair({"scope": "network", "target": "dc", "duplicate": 100})
    [(_, _, _, pkts)] = delivered(send(u, A, "172.16.0.10", "172.16.0.11", n=3))
    assert [p[P.SPORT] for p in pkts] == [1000, 1000, 1001, 1001, 1002, 1002]
    assert counters(u, "vm-b/eth0")["rx_packets"] == 6
    u.impair({"scope": "network", "target": "dc", "delay_ms": 10, "reorder": 50})
    now_pkts = [p[P.SPORT] for *_, ps in delivered(send(u, A, "172.16.0.10", "172.16.0.11", n=40)) for p in ps]
    later = [p[P.SPORT] for *_, ps in delivered(u.due(0.01)) for p in ps]
    assert 5 < len(now_pkts) < 35 and sorted(now_pkts + later) == list(range(1000, 1040))


def test_rate_and_bounded_queue_tail_drop() -> None:
    u = fabric()
    two_vms(u)
    # 1 Mbit/s: a 1250-byte packet takes 10 ms to serialize; 3 fit in the queue
    u.impair({"scope": "nic", "target": "vm-a", "rate_mbit": 1, "queue_packets": 3})
    send(u, A, "172.16.0.10", "172.16.0.11", n=10, size=1250 - 28)
    assert drops(u, "vm-a/eth0") == {"queue_full": 7}
    times = []
    while (deadline := u.next_deadline()) is not None:
        times.append(deadline)
        assert len(delivered(u.due(deadline))[0][3]) == 1
    assert times == pytest.approx([0.01, 0.02, 0.03])


def test_nic_and_network_impairments_compose() -> None:
    u = fabric()
    two_vms(u)
    u.impair({"scope": "nic", "target": "vm-a/eth0", "delay_ms": 10})
    u.impair({"scope": "nic", "target": "vm-b/eth0", "delay_ms": 5})
    u.impair({"scope": "network", "target": "dc", "delay_ms": 1})
    send(u, A, "172.16.0.10", "172.16.0.11")
    assert u.next_deadline() == pytest.approx(0.016)
    assert u.clear({"scope": "nic", "target": "vm-a/eth0"}) == {"cleared": 1}
    assert u.clear({}) == {"cleared": 2}
    assert len(send(u, A, "172.16.0.10", "172.16.0.11")) == 1  # fast path again


def test_a_nic_that_leaves_while_packets_fly_counts_them_as_no_route() -> None:
    u = fabric()
    two_vms(u)
    u.impair({"scope": "pair", "target": ["vm-a", "vm-b"], "delay_ms": 10})
    send(u, A, "172.16.0.10", "172.16.0.11", n=4)
    u.handle(B, wire.detach(0), 0.005)
    assert u.due(0.01) == []
    assert drops(u, "vm-a/eth0") == {"no_route": 4}


# --- bad frames ----------------------------------------------------------------------------


def test_bad_frames_are_counted_by_reason_and_never_raise() -> None:
    u = fabric()
    two_vms(u)
    body = wire.pack([P.udp("172.16.0.10", "172.16.0.11", 1, 2, b"")])
    hdr = wire.packets_header(0, "172.16.0.11", "", 1, 28, 64)
    cases = [
        [b"\xc1"],  # garbage
        [b"hello world"],  # garbage
        [msgpack.packb((99, wire.PACKETS, 0))],  # version
        [hdr[:-3]],  # truncated
        [hdr],  # truncated: the body is missing
        [msgpack.packb((wire.VERSION, wire.PACKETS, 0, "x"))],  # truncated: fields missing
        [b"\x00" * (wire.MAX_HEADER + 1)],  # oversized
        [hdr, b"\x00" * (wire.MAX_BODY + 1)],  # oversized body
        [msgpack.packb((wire.VERSION, 77, 0))],  # kind
        [msgpack.packb((wire.VERSION, wire.DELIVER, 0, 0, 1, 28)), body],  # kind: wrong direction
        [msgpack.packb((wire.VERSION, wire.PACKETS, 0, {"x": 1}, "", 1, 28, 64)), body],  # garbage
        [],  # truncated: empty
    ]
    for frames in cases:
        assert u.handle(A, frames, 0.0) == []
    bad = u.stats()["totals"]["bad_frames"]
    assert {k: v for k, v in bad.items() if v} == {
        "garbage": 3, "version": 1, "truncated": 4, "oversized": 2, "kind": 2}
    # charged to the NIC when the header names an attached one, else to the peer
    assert drops(u, "vm-a/eth0") == {"bad_frame": 5}
    assert u.stats()["nics"][f"unknown:{A.hex()}"]["drops"]["bad_frame"] == 7


def test_invalid_packets_in_a_slow_path_batch_are_bad_frames() -> None:
    u = fabric()
    two_vms(u)
    u.impair({"scope": "pair", "target": ["vm-a", "vm-b"], "delay_ms": 1})
    good = P.udp("172.16.0.10", "172.16.0.11", 1, 2, b"ok")
    junk = [good, ("172.16.0.10", "172.16.0.11"), (1, 2, 3, 4, 5, 6, 7, 8, 9)]
    hdr = wire.packets_header(0, "172.16.0.11", "", 3, 90, 64)
    assert u.handle(A, [hdr, wire.pack(junk)], 0.0) == []
    assert u.handle(A, [hdr, b"\x93\x01"], 0.0) == []  # a body that does not decode
    assert len(delivered(u.due(0.001))[0][3]) == 1
    assert drops(u, "vm-a/eth0") == {"bad_frame": 5}
    assert u.stats()["totals"]["bad_frames"]["packet"] == 2


def test_bad_attach_specs_are_refused_with_the_field() -> None:
    u = fabric()
    for spec, field in [({"vm": "a"}, "spec.name"), ("nope", "spec"),
                        ({"vm": "a", "name": "e", "mac": "zz", "network": "dc"}, "spec.mac"),
                        ({"vm": "a", "name": "e", "mac": "02:00:00:00:00:01", "network": "x"}, "spec.network"),
                        ({"vm": "a/b", "name": "e"}, "spec.vm")]:
        [msg] = u.handle(A, wire.attach(0, spec), 0.0)
        _, kind, nic, ok, reason = decode(msg)
        assert (kind, ok) == (wire.ATTACHED, False) and reason.startswith(field + ":")
    assert u.stats()["nics"] == {}


# --- management: validation leaves everything unchanged -----------------------------------


def snapshot(u: Underlay) -> dict[str, Any]:
    state = copy.deepcopy(u.stats())
    state["routes"] = u.routes()
    return state


@pytest.mark.parametrize(("verb", "args", "field"), [
    ("add_network", {"name": "dup", "prefix": "172.16.0.128/25"}, "prefix"),
    ("add_network", {"name": "dc", "prefix": "10.9.0.0/24"}, "name"),
    ("add_network", {"name": "n", "prefix": "10.9.0.0/24", "gateway": "10.8.0.1"}, "gateway"),
    ("add_network", {"name": "n", "prefix": "10.9.0.0/24", "gateway": "10.9.0.255"}, "gateway"),
    ("add_network", {"name": "n", "prefix": "10.9.0.1/24"}, "prefix"),
    ("add_network", {"name": "n", "prefix": "10.9.0.0/24", "vlan": 4095}, "vlan"),
    ("add_network", {"name": "n", "prefix": "10.9.0.0/24", "vlan": 10}, "vlan"),
    ("add_network", {"name": "n", "prefix": "10.9.0.0/24", "mtu": 20}, "mtu"),
    ("add_network", {"name": "n", "prefix": "fd01::/64", "mtu": 1000}, "mtu"),
    ("add_network", {"name": "n", "prefix": "10.9.0.0/24", "external": "yes"}, "external"),
    ("add_network", {"name": "n", "prefix": "10.9.0.0/24", "colour": "red"}, "colour"),
    ("remove_network", {"name": "dc"}, "name"),
    ("remove_network", {"name": "nope"}, "name"),
    ("add_route", {"prefix": "10.0.0.0/8", "network": "nope"}, "network"),
    ("add_route", {"prefix": "10.0.0.0/33", "network": "dc"}, "prefix"),
    ("add_route", {"prefix": "10.0.0.0/8", "network": "dc", "sources": ["nope"]}, "sources"),
    ("add_route", {"prefix": "fd99::/16", "network": "lab"}, "prefix"),
    ("remove_route", {"prefix": "10.0.0.0/8", "network": "dc"}, "prefix"),
    ("impair", {"scope": "nic", "target": "vm-z/eth0", "delay_ms": 5}, "target"),
    ("impair", {"scope": "nic", "target": "vm-a/eth0", "delay_ms": -5}, "delay_ms"),
    ("impair", {"scope": "nic", "target": "vm-a/eth0", "loss": 150}, "loss"),
    ("impair", {"scope": "pair", "target": ["vm-a", "vm-a"], "loss": 5}, "target"),
    ("impair", {"scope": "pair", "target": ["vm-a", "ghost"], "loss": 5}, "target"),
    ("impair", {"scope": "network", "target": "nope", "loss": 5}, "target"),
    ("impair", {"scope": "planet", "target": "dc", "loss": 5}, "scope"),
    ("impair", {"scope": "network", "target": "dc", "correlation": 2}, "correlation"),
    ("impair", {"scope": "network", "target": "dc", "rate_mbit": 0}, "rate_mbit"),
    ("impair", {"scope": "network", "target": "dc", "queue_packets": 0}, "queue_packets"),
    ("clear", {"scope": "nic", "target": "ghost"}, "target"),
    ("partition", {"a": ["vm-a"], "b": ["ghost"]}, "b"),
    ("partition", {"a": [], "b": ["vm-a"]}, "a"),
    ("partition", {"a": ["vm-a"], "b": ["vm-a"]}, "b"),
    ("heal", {"id": 42}, "id"),
    ("heal", {"id": [1]}, "id"),
    ("detach_vm", {"vm": "ghost"}, "vm"),
])
def test_refused_management_commands_change_nothing(verb: str, args: dict[str, Any], field: str) -> None:
    u = fabric()
    two_vms(u)
    u.impair({"scope": "nic", "target": "vm-b", "delay_ms": 3})
    u.partition({"a": ["vm-a"], "b": ["vm-b"], "one_way": True})
    before = snapshot(u)
    with pytest.raises((MgmtError, ValueError)) as info:
        u.handlers()[verb](args)
    text = str(info.value)
    assert text.startswith(f"{field}:"), text
    assert "\n" not in text
    assert snapshot(u) == before


def test_remove_network_drops_its_routes_and_sources() -> None:
    u = fabric()
    u.add_route({"prefix": "0.0.0.0/0", "network": "edge", "sources": ["dc", "lab"]})
    u.remove_network({"name": "lab"})
    routes = u.routes()
    assert {"prefix": "0.0.0.0/0", "network": "edge", "sources": ["dc"]} in routes
    assert all(r["network"] != "lab" for r in routes)
    u.add_network({"name": "lab2", "prefix": "10.1.0.0/16"})  # the prefix is free again
    assert u.stats()["networks"]["lab2"]["gateway"] == "10.1.0.1"


def test_detach_vm_detaches_every_nic_of_it() -> None:
    u = fabric()
    attach(u, A, "vm-a", "dc", ["172.16.0.10"], nic=0)
    attach(u, A, "vm-a", "lab", ["10.1.0.10"], nic=1, name="eth1")
    attach(u, B, "vm-b", "dc", ["172.16.0.11"])
    assert u.detach_vm({"vm": "vm-a"}) == {"detached": ["vm-a/eth0", "vm-a/eth1"]}
    assert send(u, B, "172.16.0.11", "172.16.0.10", n=2) == []
    assert drops(u, "vm-b/eth0") == {"no_route": 2}

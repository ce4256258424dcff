"""Step 1 through the real processes: host agent, broker, VMs, the runner and the CLI.

One deployment (SCENARIO: networks dc, internet (external), dc6, internet6; VMs vm-a, vm-b,
vm-c, vm-d) is shared by the tests, brought up with ``scenarios.runner.up`` as ``hcinet up``
does; each test puts back what it changes (routes, impairments, partitions, claims, a killed
VM) and compares counters as differences, so they do not depend on each other's order (except
the last, which takes the deployment down).  Killing the host agent gets a deployment of its own.

The tests are synchronous: they talk to the processes over their management sockets with the
blocking ``agents.mgmt.call`` (what scripts use), or through ``scenarios.cli.main`` (what users
type).  Every wait is a condition polled against a deadline, never a bare sleep.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq
from integration_support import wait_for

from agents import mgmt
from broker import packets as P
from broker import wire
from scenarios import cli, rundir, runner, schema

DEPLOYMENT = "fabric-it"
SEED = 20240601  # the broker's impairment RNG: reproducible loss draws

# Two IPv4 networks (a datacenter one and an external one, joined by the gateway router) and
# two IPv6 networks laid out the same way; vm-a, vm-b and vm-c are dual-homed (eth0: IPv4,
# eth1: IPv6), vm-d only sits on dc.  The schema takes one prefix per network, so the IPv6
# side is separate networks rather than dual-stack ones.
SCENARIO = """
name: fabric-it
networks:
  - {name: dc, ipAddressPrefix: 172.16.0.0/24, gateway: 172.16.0.1}
  - {name: internet, ipAddressPrefix: 203.0.113.0/24, gateway: 203.0.113.1, external: true}
  - {name: dc6, ipAddressPrefix: "fd00:16::/64", gateway: "fd00:16::1"}
  - {name: internet6, ipAddressPrefix: "2001:db8:113::/64", gateway: "2001:db8:113::1", external: true}
vms:
  - name: vm-a
    nics: [{network: dc, ip: 172.16.0.10}, {network: dc6, ip: "fd00:16::a"}]
    apps: &apps [{kind: udp-echo, port: 7}, {kind: udp-sink, port: 9}, {kind: tcp-sink, port: 9000}]
  - name: vm-b
    nics: [{network: dc, ip: 172.16.0.11}, {network: dc6, ip: "fd00:16::b"}]
    apps: *apps
  - name: vm-c
    nics: [{network: internet, ip: 203.0.113.10}, {network: internet6, ip: "2001:db8:113::c"}]
    apps: *apps
  - name: vm-d
    network: dc
    ip: 172.16.0.12
    apps: *apps
"""

IP = {"vm-a": "172.16.0.10", "vm-b": "172.16.0.11", "vm-c": "203.0.113.10", "vm-d": "172.16.0.12"}
IP6 = {"vm-a": "fd00:16::a", "vm-b": "fd00:16::b", "vm-c": "2001:db8:113::c"}





@dataclass(frozen=True, slots=True)
class PingResult:
    rc: int
    out: str
    transmitted: int
    received: int
    rtts: list[float]
    ttls: list[int]


_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")
_REPLY = re.compile(r"bytes from \S+: icmp_seq=\d+ ttl=(\d+) time=([0-9.]+) ms")


class Fabric:
    """Handles on a running deployment, looked up through its host agent."""

    def __init__(self, rd: rundir.RunDir, hostagent: str, broker: str) -> None:
        self.rd = rd
        self.hostagent = hostagent
        self.broker = broker

    # -- management calls --

    def agent(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> Any:
        return mgmt.call(self.hostagent, verb, args, timeout)

    def br(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        return mgmt.call(self.broker, verb, args, timeout)

    def processes(self) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in self.agent("list")}

    def vm(self, name: str, verb: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """A VM's management verb; its endpoint comes fresh from the host agent (a restarted
        VM binds a new one)."""
        row = self.processes()[name]
        assert row["state"] == "running", f"{name} is {row['state']}"
        return mgmt.call(row["mgmt"], verb, args, timeout)

    def exec(self, name: str, *argv: str, timeout: float = 30.0) -> dict[str, Any]:
        result: dict[str, Any] = self.vm(name, "exec", {"argv": list(argv)}, timeout)
        return result

    def ping(self, name: str, dst: str, *opts: str) -> PingResult:
        r = self.exec(name, "ping", *opts, dst)
        m = _SUMMARY.search(r["stdout"])
        tx, rx = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        replies = _REPLY.findall(r["stdout"])
        return PingResult(r["rc"], r["stdout"], tx, rx, [float(t) for _, t in replies], [int(t) for t, _ in replies])

    # -- counters --

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.br("stats")
        return result

    def nic(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.stats()["nics"][name]
        return result

    def drops(self, name: str, reason: str) -> int:
        return int(self.nic(name)["drops"][reason])

    def app(self, vm: str, kind: str) -> dict[str, Any]:
        apps = self.vm(vm, "stats")["apps"]
        return next(a for a in apps if a["kind"] == kind)

    def all_pids(self) -> dict[str, int]:
        """Every process of the deployment: the host agent's children and the pid files."""
        pids = {name: int(row["pid"]) for name, row in self.processes().items()
                if row["pid"] and row["state"] in ("starting", "running")}
        pids.update(self.rd.read_pids())
        return pids


def up(yaml_text: str, deployment: str, seed: int | None = None) -> runner.Deployment:
    scenario = schema.loads(yaml_text)
    return trio.run(partial(runner.up, scenario, deployment, out=io.StringIO(), seed=seed))


def down(deployment: str) -> bool:
    return trio.run(partial(runner.down, deployment, out=io.StringIO()))


def fabric_of(dep: runner.Deployment) -> Fabric:
    return Fabric(dep.run_dir, dep.hostagent.mgmt, str(dep.broker["mgmt"]))


# --- the shared deployment -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fabric(state_dir: Path) -> Iterator[Fabric]:
    dep = up(SCENARIO, DEPLOYMENT, seed=SEED)
    try:
        yield fabric_of(dep)
    finally:
        down(DEPLOYMENT)  # a no-op if test_down_leaves_no_process already took it down


# --- the fabric ----------------------------------------------------------------------------------

def test_ping_on_one_network_and_across_the_gateway(fabric: Fabric) -> None:
    a0, b0 = fabric.nic("vm-a/eth0"), fabric.nic("vm-b/eth0")
    same = fabric.ping("vm-a", IP["vm-b"], "-c", "3", "-i", "0.05", "-W", "2")
    assert (same.rc, same.transmitted, same.received) == (0, 3, 3), same.out
    assert same.ttls == [64, 64, 64]  # on-link: no router on the way
    a1, b1 = fabric.nic("vm-a/eth0"), fabric.nic("vm-b/eth0")  # it went through the broker
    assert (a1["tx_packets"] - a0["tx_packets"], b1["rx_packets"] - b0["rx_packets"]) == (3, 3)
    assert (b1["tx_packets"] - b0["tx_packets"], a1["rx_packets"] - a0["rx_packets"]) == (3, 3)

    for src, dst in (("vm-a", "vm-c"), ("vm-c", "vm-a")):  # dc <-> internet, both ways
        routed = fabric.ping(src, IP[dst], "-c", "3", "-i", "0.05", "-W", "2")
        assert (routed.rc, routed.received) == (0, 3), routed.out
        assert routed.ttls == [63, 63, 63]  # the gateway router's decrement (RFC 1812 5.3.1)


def test_an_absent_route_blocks_and_restoring_it_heals(fabric: Fabric) -> None:
    to_internet = {"prefix": "203.0.113.0/24", "network": "internet"}
    to_dc = {"prefix": "172.16.0.0/24", "network": "dc"}
    fabric.br("remove_route", to_internet)
    fabric.br("remove_route", to_dc)
    try:
        assert {r["prefix"] for r in fabric.br("routes")}.isdisjoint({"203.0.113.0/24", "172.16.0.0/24"})
        before = fabric.drops("vm-a/eth0", "no_route")
        r = fabric.ping("vm-a", IP["vm-c"], "-c", "3", "-i", "0.05", "-W", "0.3")
        assert (r.rc, r.received) == (1, 0), r.out
        # An internal network's router answers (RFC 1812 5.2.7.1: ICMP net unreachable).
        assert r.out.count("From 172.16.0.1 icmp_seq=") == 3 and "Destination Net Unreachable" in r.out
        assert fabric.drops("vm-a/eth0", "no_route") - before == 3

        # From the external network the edge stays silent: no ICMP, just timeouts.
        before = fabric.drops("vm-c/eth0", "no_route")
        r = fabric.ping("vm-c", IP["vm-a"], "-c", "2", "-i", "0.05", "-W", "0.3")
        assert (r.rc, r.received) == (1, 0) and "From " not in r.out, r.out
        assert fabric.drops("vm-c/eth0", "no_route") - before == 2

        # The other directions' routes are untouched: dc still reaches dc.
        assert fabric.ping("vm-a", IP["vm-b"], "-c", "1", "-W", "2").received == 1
    finally:
        fabric.br("add_route", to_internet)
        fabric.br("add_route", to_dc)
    for src, dst in (("vm-a", "vm-c"), ("vm-c", "vm-a")):
        r = fabric.ping(src, IP[dst], "-c", "2", "-i", "0.05", "-W", "2")
        assert r.received == 2, r.out


def test_a_route_restricted_to_some_sources(fabric: Fabric) -> None:
    """``sources``: the route to dc serves dc itself only, not the external network (how an
    internal load balancer stays unreachable from outside).  The router keeps no state, so
    the replies to dc's own pings, which need that route too, are lost as well."""
    fabric.br("add_route", {"prefix": "172.16.0.0/24", "network": "dc", "sources": ["dc"]})
    try:
        before = fabric.nic("vm-c/eth0")
        assert fabric.ping("vm-c", IP["vm-a"], "-c", "2", "-i", "0.05", "-W", "0.3").received == 0
        assert fabric.ping("vm-a", IP["vm-c"], "-c", "2", "-i", "0.05", "-W", "0.3").received == 0
        after = fabric.nic("vm-c/eth0")
        assert after["rx_packets"] - before["rx_packets"] == 2  # vm-a's requests got through
        assert after["drops"]["no_route"] - before["drops"]["no_route"] == 4  # 2 requests + 2 replies
    finally:
        fabric.br("add_route", {"prefix": "172.16.0.0/24", "network": "dc"})  # replace: all sources
    assert fabric.ping("vm-c", IP["vm-a"], "-c", "1", "-W", "2").received == 1


def test_a_10mb_transfer_arrives_intact(fabric: Fabric) -> None:
    before = fabric.app("vm-c", "tcp-sink")
    r = fabric.exec("vm-a", "transfer", "--json", "--bytes", "10000000", IP["vm-c"], "9000", timeout=90)
    assert r["rc"] == 0, r["stderr"]
    result = json.loads(r["stdout"])
    assert result["bytes"] == 10_000_000
    assert result["match"] and result["sha256"] == result["sink_sha256"] and len(result["sha256"]) == 64
    after = fabric.app("vm-c", "tcp-sink")
    assert after["bytes"] - before["bytes"] == 10_000_000


def test_pair_delay_sets_the_rtt_and_clearing_removes_it(fabric: Fabric) -> None:
    pair = {"scope": "pair", "target": ["vm-a", "vm-b"]}
    fabric.br("impair", {**pair, "delay_ms": 50})
    try:
        r = fabric.ping("vm-a", IP["vm-b"], "-c", "5", "-i", "0.05", "-W", "2")
        assert r.received == 5, r.out
        # 50 ms each way: the RTT is 100 ms plus the fabric's own ~1 ms.
        assert all(100.0 <= rtt <= 130.0 for rtt in r.rtts), r.rtts
        # The pair only: vm-a -> vm-d is not delayed.
        other = fabric.ping("vm-a", IP["vm-d"], "-c", "2", "-i", "0.05", "-W", "2")
        assert other.received == 2 and max(other.rtts) < 50.0, other.out
    finally:
        fabric.br("clear", pair)
    r = fabric.ping("vm-a", IP["vm-b"], "-c", "5", "-i", "0.05", "-W", "2")
    assert r.received == 5, r.out
    assert max(r.rtts) < 50.0 and sum(r.rtts) / len(r.rtts) < 10.0, r.rtts


def binomial_interval(n: int, p: float, tail: float) -> tuple[int, int]:
    """The central interval [lo, hi] of Binomial(n, p) with at most ``tail`` probability on
    each side outside it (exact sums, no normal approximation)."""
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, acc = 0, 0.0
    while acc + pmf[lo] <= tail:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while acc + pmf[hi] <= tail:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


def test_pair_loss_loses_pings_within_binomial_bounds(fabric: Fabric) -> None:
    """20 % loss on vm-a <-> vm-b: a ping crosses the pair twice, so it succeeds with
    p = 0.8 ** 2 = 0.64.  With n = 200, the received count is Binomial(200, 0.64): mean 128,
    sigma 6.8.  We accept the central 99.99 % interval (5e-5 in each tail), computed exactly:
    [101, 154]; a fabric that ignored the loss (200) or applied it once (160) falls outside."""
    n, p = 200, 0.8 ** 2
    lo, hi = binomial_interval(n, p, 5e-5)
    assert (lo, hi) == (101, 154)
    pair = {"scope": "pair", "target": ["vm-a", "vm-b"]}
    loss_a, loss_b = fabric.drops("vm-a/eth0", "loss"), fabric.drops("vm-b/eth0", "loss")
    fabric.br("impair", {**pair, "loss": 20})
    try:
        r = fabric.ping("vm-a", IP["vm-b"], "-c", str(n), "-i", "0.005", "-W", "1")
    finally:
        fabric.br("clear", pair)
    assert r.transmitted == n, r.out
    assert lo <= r.received <= hi, f"{r.received} of {n} pings came back, expected {lo}..{hi}"
    # Every lost ping is one counted loss: its request (charged to vm-a) or its reply (vm-b).
    lost_requests = fabric.drops("vm-a/eth0", "loss") - loss_a
    lost_replies = fabric.drops("vm-b/eth0", "loss") - loss_b
    assert lost_requests + lost_replies == n - r.received
    assert lost_requests > 0 and lost_replies > 0
    assert fabric.ping("vm-a", IP["vm-b"], "-c", "20", "-i", "0.005", "-W", "2").received == 20


def test_a_partition_stops_traffic_and_healing_restores_it(fabric: Fabric) -> None:
    ident = fabric.br("partition", {"a": ["vm-a"], "b": ["vm-c"]})["id"]
    try:
        for src, dst in (("vm-a", "vm-c"), ("vm-c", "vm-a")):  # both directions are cut
            before = fabric.drops(f"{src}/eth0", "partition")
            r = fabric.ping(src, IP[dst], "-c", "3", "-i", "0.05", "-W", "0.3")
            assert (r.rc, r.received) == (1, 0), r.out
            assert fabric.drops(f"{src}/eth0", "partition") - before == 3
        # Only that pair: vm-b still reaches vm-c.
        assert fabric.ping("vm-b", IP["vm-c"], "-c", "1", "-W", "2").received == 1
        assert [p["id"] for p in fabric.stats()["partitions"]] == [ident]
    finally:
        assert list(fabric.br("heal", {"id": ident})["healed"]) == [ident]
    for src, dst in (("vm-a", "vm-c"), ("vm-c", "vm-a")):
        assert fabric.ping(src, IP[dst], "-c", "3", "-i", "0.05", "-W", "2").received == 3


def test_two_nics_announcing_one_ip_alternate_with_conflict_events(fabric: Fabric) -> None:
    """keepalived-style: vm-b and vm-d both re-announce 172.16.0.100, at 0.1 s and 0.15 s so
    their phases drift; the latest claim wins, so vm-a's datagrams land on both."""
    vip = "172.16.0.100"
    sinks = ("vm-b", "vm-d")
    base = {vm: fabric.app(vm, "udp-sink")["datagrams"] for vm in sinks}
    conflicts_before = len(fabric.br("conflicts"))
    fabric.vm("vm-b", "announce", {"nic": "eth0", "ips": [vip], "interval_s": 0.1})
    fabric.vm("vm-d", "announce", {"nic": "eth0", "ips": [vip], "interval_s": 0.15})
    try:
        sent = 0

        def got() -> dict[str, int]:
            return {vm: fabric.app(vm, "udp-sink")["datagrams"] - base[vm] for vm in sinks}

        def flips() -> list[dict[str, Any]]:
            return [e for e in fabric.br("conflicts")[conflicts_before:] if e["ip"] == vip]

        def alternated() -> bool:
            """Another round of datagrams; done when both got some and ownership flipped
            both ways at least twice."""
            nonlocal sent
            r = fabric.exec("vm-a", "udp-send", "--count", "20", "--interval", "0.01", vip, "9")
            assert r["rc"] == 0, r["stderr"]
            sent += 20
            ways = Counter((e["previous"], e["owner"]) for e in flips())
            return (min(got().values()) >= 5 and ways[("vm-b/eth0", "vm-d/eth0")] >= 2
                    and ways[("vm-d/eth0", "vm-b/eth0")] >= 2)

        wait_for(alternated, 15.0, "both announcers to receive datagrams and ownership to flip", interval=0)
        # Every datagram went to exactly one of them: the IP always had an owner.
        wait_for(lambda: sum(got().values()) == sent, 5.0, f"all {sent} datagrams to arrive")
        events = flips()
        assert all(e["network"] == "dc" and {e["previous"], e["owner"]} == {"vm-b/eth0", "vm-d/eth0"}
                   for e in events), events

        # vm-d stops announcing and gives the address up: ownership settles on vm-b.
        fabric.vm("vm-d", "announce", {"nic": "eth0", "ips": [vip], "interval_s": 0})
        fabric.vm("vm-d", "release", {"nic": "eth0", "ips": [vip]})
        wait_for(lambda: fabric.stats()["networks"]["dc"]["claims"].get(vip) == "vm-b/eth0", 5.0,
                 "vm-b to own the address alone")
        settled = len(fabric.br("conflicts"))
        before, d_rx = got(), fabric.nic("vm-d/eth0")["rx_packets"]
        r = fabric.exec("vm-a", "udp-send", "--count", "50", "--interval", "0.002", vip, "9")
        assert r["rc"] == 0, r["stderr"]
        wait_for(lambda: got()["vm-b"] - before["vm-b"] == 50, 5.0, "vm-b to receive all 50 datagrams")
        assert got()["vm-d"] == before["vm-d"]
        assert fabric.nic("vm-d/eth0")["rx_packets"] == d_rx
        assert len(fabric.br("conflicts")) == settled  # re-announcing what one owns is no conflict
    finally:
        for vm in sinks:
            fabric.vm(vm, "announce", {"nic": "eth0", "ips": [vip], "interval_s": 0})
            fabric.vm(vm, "release", {"nic": "eth0", "ips": [vip]})
    assert vip not in fabric.stats()["networks"]["dc"]["claims"]


# --- garbage on the data plane ------------------------------------------------------------------

def _dealer(ctx: zmq.Context[Any], endpoint: str, identity: bytes) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _until_detached(sock: zmq.Socket[bytes], nic: int, timeout: float = 5.0) -> list[tuple[Any, ...]]:
    """Receive until DETACHED(nic): the broker has processed every earlier frame of this
    socket (ZeroMQ keeps one connection's order).  Returns the messages before it."""
    seen: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            pytest.fail(f"no DETACHED({nic}) from the broker within {timeout:g} s (saw {seen})")
        hdr = wire.decode(sock.recv_multipart())
        if hdr[1] == wire.DETACHED and hdr[2] == nic:
            return seen
        seen.append(hdr)


def _valid_batch(src: str, dst: str) -> tuple[bytes, bytes, int]:
    pkt = P.echo(src, dst, True, 4242, 1, b"x" * 8)
    return wire.pack([pkt]), wire.packets_header(0, dst, "", 1, pkt[P.SIZE], pkt[P.TTL]), pkt[P.SIZE]


# Hand-made bad frames from a peer that never attached a NIC, by the reason the broker must
# count (wire.WireError reasons + "unattached").  Everything here is charged to the peer's
# "unknown:<identity>" entry.
_PK = wire.pack
_HDR = wire.packets_header(3, "172.16.0.11", "", 1, 84, 64)
BAD_FRAMES: dict[str, list[list[bytes]]] = {
    "garbage": [
        [b"\xc1 not msgpack"],                         # 0xc1 is never used (msgpack spec)
        [_PK(5)],                                      # decodes, but not a header list
        [_PK((wire.VERSION,))],                        # a list without a kind
        [_PK((wire.VERSION, wire.CLAIM, 0, [])), b"extra"],  # a body-less kind with a body
        [_PK((wire.VERSION, wire.PACKETS, "x", 1, 2, 3, 4, 5)), _PK([])],  # wrong field types
    ],
    "version": [
        [_PK((2, wire.CLAIM, 0, []))],
        [_PK((0, wire.PACKETS, 0, "172.16.0.11", "", 1, 84, 64)), _PK([])],
    ],
    "truncated": [
        [b""],                                         # an empty header frame
        [_HDR[:6], _PK([])],                           # header cut short (hot path first)
        [_PK((wire.VERSION, wire.CLAIM, 0, ["172.16.0.99"]))[:5]],
        [_PK((wire.VERSION, wire.CLAIM, 0))],          # a field missing
        [_HDR],                                        # PACKETS without its body
    ],
    "oversized": [
        [b"\x90" * (wire.MAX_HEADER + 1)],
        [_HDR, b"\x90" * (wire.MAX_BODY + 1)],
    ],
    "kind": [
        [_PK((wire.VERSION, 77, 0))],                  # no such kind
        [wire.deliver_header(0, 0, 0, 0), _PK([])],    # broker -> VM kinds are refused
        [_PK((wire.VERSION, wire.ATTACHED, 0, True, ""))],
        wire.request(1, "stats", {}),                  # management on the data socket
    ],
    "unattached": [
        [_HDR, _PK([P.echo("172.16.0.99", "172.16.0.11", True, 1, 1, b"")])],
        wire.claim(3, ["172.16.0.99"]),
        wire.release(3, ["172.16.0.99"]),
    ],
}


def test_garbage_frames_are_counted_by_reason_and_hurt_nobody(fabric: Fabric) -> None:
    data = fabric.processes()["broker"]["data"]
    ctx: zmq.Context[Any] = zmq.Context.instance()
    before = fabric.stats()
    identity = b"garbage-peer"
    unknown = f"unknown:{identity.hex()}"
    sock = _dealer(ctx, data, identity)
    try:
        # 1. Random bytes (seeded): each is one bad frame of some decoding reason.
        rng = random.Random(7)
        randoms = [[rng.randbytes(rng.randint(1, 300))] for _ in range(30)]
        randoms += [[rng.randbytes(40), rng.randbytes(100)] for _ in range(10)]
        for frames in randoms:
            sock.send_multipart(frames)
        sock.send_multipart(wire.detach(9))
        _until_detached(sock, 9)
        mid = fabric.stats()
        delta = {k: mid["totals"]["bad_frames"][k] - before["totals"]["bad_frames"][k]
                 for k in before["totals"]["bad_frames"]}
        assert sum(delta.values()) == len(randoms), delta
        assert set(k for k, v in delta.items() if v) <= {"garbage", "truncated", "version", "kind"}, delta
        assert mid["nics"][unknown]["drops"]["bad_frame"] == len(randoms)

        # 2. One of every hand-made kind: counted exactly by reason.
        for frames_list in BAD_FRAMES.values():
            for frames in frames_list:
                sock.send_multipart(frames)
        sock.send_multipart(wire.detach(9))
        replies = _until_detached(sock, 9)
    finally:
        sock.close()
    # The unattached NIC is told once (rate-limited to one notice a second per NIC).
    assert [(h[1], h[2], h[3]) for h in replies] == [(wire.NOTICE, 3, "not-attached")]
    after = fabric.stats()
    delta = {k: after["totals"]["bad_frames"][k] - mid["totals"]["bad_frames"][k]
             for k in after["totals"]["bad_frames"]}
    expected = {k: len(BAD_FRAMES.get(k, [])) for k in delta}
    assert delta == expected
    total = sum(len(v) for v in BAD_FRAMES.values())
    assert after["nics"][unknown]["drops"]["bad_frame"] - mid["nics"][unknown]["drops"]["bad_frame"] == total
    for name in ("vm-a/eth0", "vm-b/eth0", "vm-c/eth0", "vm-d/eth0"):  # nobody else was blamed
        assert after["nics"][name]["drops"]["bad_frame"] == before["nics"][name]["drops"]["bad_frame"]
    assert after["totals"]["frames"] - mid["totals"]["frames"] == total + 1  # + the DETACH

    # The management socket shrugs garbage off too: the request after it (same connection,
    # so processed after it) is answered, and its answer already counts both.
    msock = _dealer(ctx, fabric.broker, b"garbage-mgmt")
    try:
        msock.send_multipart([b"\xc1"])
        msock.send_multipart([_PK((wire.VERSION, wire.REQUEST, 1))])
        msock.send_multipart(wire.request(7, "stats"))
        assert msock.poll(5000), "the broker did not answer after garbage on its management socket"
        req_id, stats = mgmt.parse_reply(msock.recv_multipart())
    finally:
        msock.close()
    assert req_id == 7
    assert stats["totals"]["mgmt_bad_frames"] - after["totals"]["mgmt_bad_frames"] == 2

    assert fabric.br("ping")["pong"] is True
    for src, dst in (("vm-a", "vm-b"), ("vm-b", "vm-c"), ("vm-d", "vm-a")):
        assert fabric.ping(src, IP[dst], "-c", "2", "-i", "0.05", "-W", "2").received == 2


def test_an_attached_nic_sending_garbage_is_blamed_and_receivers_survive(fabric: Fabric) -> None:
    """A rogue peer attaches a NIC, then sends bad batches: those the broker decodes (to the
    gateway) are counted against that NIC; a garbage body on the fast path (not decoded
    there, by design) reaches vm-b, which counts it and carries on."""
    data = fabric.processes()["broker"]["data"]
    ctx: zmq.Context[Any] = zmq.Context.instance()
    before = fabric.stats()
    vm_b = fabric.vm("vm-b", "stats")
    sock = _dealer(ctx, data, b"rogue-peer")
    rogue, gw = "rogue/eth0", "172.16.0.1"
    try:
        sock.send_multipart(wire.attach(0, {"vm": "rogue", "name": "eth0", "mac": "02:00:ac:10:00:c8",
                                            "network": "dc", "ips": ["172.16.0.200"], "mtu": 1500}))
        assert sock.poll(5000), "no ATTACHED"
        assert wire.decode(sock.recv_multipart())[1:] == (wire.ATTACHED, 0, True, "")
        # Two invalid packets in a well-formed batch to the router: "packet", one per packet.
        sock.send_multipart([wire.packets_header(0, gw, "", 2, 100, 64), _PK([("bogus",), (1, 2, 3)])])
        # A body that does not decode, announced as 3 packets: one "garbage" frame, 3 drops.
        sock.send_multipart([wire.packets_header(0, gw, "", 3, 300, 64), b"\xc1\xc1"])
        # A claim whose ips is no list, naming the attached NIC: blamed on it.
        sock.send_multipart([_PK((wire.VERSION, wire.CLAIM, 0, "172.16.0.201"))])
        # A claim of the gateway: refused with a notice, counted as a conflict drop.
        sock.send_multipart(wire.claim(0, [gw]))
        # The fast path forwards bodies without decoding them: garbage reaches vm-b.
        sock.send_multipart([wire.packets_header(0, IP["vm-b"], "", 1, 84, 64), b"\xc1"])
        # ... and so does a well-formed batch holding a packet that is not one.
        sock.send_multipart([wire.packets_header(0, IP["vm-b"], "", 1, 84, 64), _PK([("bogus",)])])
        # One valid ping to vm-b from the rogue address: vm-b answers it.
        body, hdr, _ = _valid_batch("172.16.0.200", IP["vm-b"])
        sock.send_multipart([hdr, body])
        deadline = time.monotonic() + 5.0
        seen: list[tuple[Any, ...]] = []
        while not any(h[1] == wire.DELIVER for h in seen):
            left = deadline - time.monotonic()
            assert left > 0 and sock.poll(int(left * 1000)), f"no echo reply from vm-b (saw {seen})"
            frames = sock.recv_multipart()
            hdr_in = wire.decode(frames)
            seen.append(hdr_in)
            if hdr_in[1] == wire.DELIVER:
                (reply,) = wire.unpack_body(frames[1])
                assert reply[P.SRC] == IP["vm-b"] and reply[P.SPORT] == P.ICMP_ECHO_REPLY
        notices = [h for h in seen if h[1] == wire.NOTICE]
        assert [(h[3], h[4]["ip"]) for h in notices] == [("claim-refused", gw)]
        sock.send_multipart(wire.detach(0))
        _until_detached(sock, 0)
    finally:
        sock.close()
    after = fabric.stats()
    delta = {k: after["totals"]["bad_frames"][k] - before["totals"]["bad_frames"][k]
             for k in after["totals"]["bad_frames"]}
    assert delta == {**dict.fromkeys(delta, 0), "packet": 2, "garbage": 2}
    old = before["nics"].get(rogue, {"drops": {"bad_frame": 0, "conflict": 0}})["drops"]
    assert after["nics"][rogue]["drops"]["bad_frame"] - old["bad_frame"] == 2 + 3 + 1
    assert after["nics"][rogue]["drops"]["conflict"] - old["conflict"] == 1
    assert after["nics"][rogue]["attached"] is False
    # vm-b decoded both before it answered the ping that followed them on the same path.
    vm_b_after = fabric.vm("vm-b", "stats")
    assert vm_b_after["runtime"]["bad_frames"]["garbage"] - vm_b["runtime"]["bad_frames"]["garbage"] == 1
    assert vm_b_after["netstack"]["drops"]["bad_packet"] - vm_b["netstack"]["drops"]["bad_packet"] == 1
    for src, dst in (("vm-a", "vm-b"), ("vm-b", "vm-a")):
        assert fabric.ping(src, IP[dst], "-c", "2", "-i", "0.05", "-W", "2").received == 2


# --- processes dying ------------------------------------------------------------------------------

def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main([*argv, "--deployment", DEPLOYMENT])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_killed_vm_is_detached_and_its_traffic_counted_as_no_route(
        fabric: Fabric, capsys: pytest.CaptureFixture[str]) -> None:
    old_pid = fabric.processes()["vm-d"]["pid"]
    rc, out, err = _cli(capsys, "vm", "kill", "vm-d")
    assert rc == 0 and "vm-d: killed (SIGKILL)" in out, err
    try:
        row = fabric.processes()["vm-d"]
        assert (row["state"], row["signal"], row["exit_code"]) == ("crashed", "SIGKILL", None)
        assert not rundir.pid_alive(old_pid)
        exits = [e for e in fabric.agent("events", {"limit": 1000}) if e["kind"] == "vm-exited"
                 and e["name"] == "vm-d"]
        assert exits and exits[-1]["signal"] == "SIGKILL" and exits[-1]["expected"] is False
        assert any(e["kind"] == "vm-exited" and e["name"] == "vm-d" for e in fabric.rd.read_events())
        # The host agent told the broker: the NIC is detached and claims nothing.
        def detached() -> dict[str, Any] | None:
            nic = fabric.nic("vm-d/eth0")
            return None if nic["attached"] else nic

        nic = wait_for(detached, 5.0, "the broker to detach vm-d/eth0")
        assert not nic["ips"] and IP["vm-d"] not in fabric.stats()["networks"]["dc"]["claims"]

        before = fabric.drops("vm-a/eth0", "no_route")
        r = fabric.ping("vm-a", IP["vm-d"], "-c", "3", "-i", "0.05", "-W", "0.3")
        assert (r.rc, r.received) == (1, 0) and "From " not in r.out, r.out  # on-link: silence
        assert fabric.drops("vm-a/eth0", "no_route") - before == 3
    finally:
        rc, out, err = _cli(capsys, "vm", "start", "vm-d")
    assert rc == 0, err
    row = fabric.processes()["vm-d"]
    assert row["state"] == "running" and row["pid"] != old_pid
    assert fabric.nic("vm-d/eth0")["attached"] is True
    r = fabric.ping("vm-a", IP["vm-d"], "-c", "2", "-i", "0.05", "-W", "2")
    assert r.received == 2, r.out


def test_killing_the_host_agent_leaves_no_process_behind(fabric: Fabric) -> None:
    """A deployment of its own: SIGKILL its host agent; PR_SET_PDEATHSIG takes every child."""
    small = ("name: small\nnetworks:\n  - {name: lan, ipAddressPrefix: 10.9.0.0/24, gateway: 10.9.0.1}\n"
             "vms:\n  - {name: x1, network: lan, ip: 10.9.0.10}\n  - {name: x2, network: lan, ip: 10.9.0.11}\n")
    dep = up(small, "small")
    try:
        small_fab = fabric_of(dep)
        pids = small_fab.all_pids()
        assert set(pids) == {"hostagent", "broker", "x1", "x2"}
        assert pids["hostagent"] == dep.hostagent.pid
        assert all(rundir.pid_alive(pid) for pid in pids.values())
        assert small_fab.ping("x1", "10.9.0.11", "-c", "1", "-W", "2").received == 1
        os.kill(dep.hostagent.pid, signal.SIGKILL)
        wait_for(lambda: not any(rundir.pid_alive(pid) for pid in pids.values()), 10.0,
                 f"every process of {sorted(pids)} to be gone")
        # The other deployment did not notice.
        assert fabric.ping("vm-a", IP["vm-b"], "-c", "1", "-W", "2").received == 1
    finally:
        down("small")  # removes the stale pid files (and would kill stragglers)


def test_ping6_on_one_network_and_across_the_gateway(fabric: Fabric) -> None:
    same = fabric.ping("vm-a", IP6["vm-b"], "-c", "3", "-i", "0.05", "-W", "2")
    assert (same.rc, same.received) == (0, 3), same.out
    assert same.ttls == [64, 64, 64] and f"bytes from {IP6['vm-b']}:" in same.out
    routed = fabric.ping("vm-b", IP6["vm-c"], "-c", "3", "-i", "0.05", "-W", "2")
    assert (routed.rc, routed.received) == (0, 3), routed.out
    assert routed.ttls == [63, 63, 63]  # the router lowers the hop limit (RFC 8200 3)
    # An IPv6 route removed: the internal router answers ICMPv6 no route (RFC 4443 3.1).
    to6 = {"prefix": "2001:db8:113::/64", "network": "internet6"}
    fabric.br("remove_route", to6)
    try:
        r = fabric.ping("vm-a", IP6["vm-c"], "-c", "1", "-W", "0.5")
        assert r.received == 0 and "From fd00:16::1 icmp_seq=1 Destination unreachable: No route" in r.out, r.out
    finally:
        fabric.br("add_route", to6)
    assert fabric.ping("vm-a", IP6["vm-c"], "-c", "1", "-W", "2").received == 1


def test_down_leaves_no_process(fabric: Fabric, capsys: pytest.CaptureFixture[str]) -> None:
    """Last: ``hcinet down`` stops the shared deployment and nothing of it survives."""
    pids = fabric.all_pids()
    assert set(pids) == {"hostagent", "broker", "vm-a", "vm-b", "vm-c", "vm-d"}
    rc, out, err = _cli(capsys, "down")
    assert rc == 0 and f"deployment {DEPLOYMENT} is down" in out, err
    assert not [name for name, pid in pids.items() if rundir.pid_alive(pid)]
    assert fabric.rd.read_pids() == {} and not fabric.rd.hostagent_json.exists()
    assert fabric.rd.read_events()[-1]["kind"] == "hostagent-exited"
    with pytest.raises(TimeoutError):
        mgmt.call(fabric.hostagent, "ping", {}, timeout=0.3)

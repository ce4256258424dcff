"""The real broker process: readiness, forwarding, bad frames of every kind, management errors,
timed deliveries, clean exit and dying with its parent."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from broker_harness import ROOT, BrokerProcess, FakeVM, read_line

from agents.mgmt import RemoteError
from broker import packets as P
from broker import wire


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path / "broker.log")
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def vms(broker: BrokerProcess, ctx: zmq.Context[Any]) -> tuple[FakeVM, FakeVM]:
    broker.call("add_network", name="dc", prefix="172.16.0.0/24", gateway="172.16.0.1")
    a, b = FakeVM(ctx, broker.data, b"A"), FakeVM(ctx, broker.data, b"B")
    a.attach(0, "vm-a", "dc", ["172.16.0.10"])
    b.attach(0, "vm-b", "dc", ["172.16.0.11"])
    return a, b


def roundtrip(a: FakeVM, b: FakeVM, n: int = 1) -> None:
    """A packet a -> b: everything a sent before has been processed once it arrives."""
    a.packets(0, "172.16.0.10", "172.16.0.11", n)
    hdr = b.recv_header()
    assert hdr[1:5] == (wire.DELIVER, 0, 0, n)


def test_ready_report_and_forwarding(broker: BrokerProcess, ctx: zmq.Context[Any]) -> None:
    assert broker.ready["pid"] == broker.proc.pid
    assert broker.data.startswith("tcp://127.0.0.1:") and not broker.data.endswith(":0")
    a, b = vms(broker, ctx)
    a.packets(0, "172.16.0.10", "172.16.0.11", 64)
    _, kind, nic, hops, count, nbytes, body = b.recv_header()
    assert (kind, nic, hops, count, nbytes, len(body)) == (wire.DELIVER, 0, 0, 64, 64 * 128, 64)
    assert body[0] == P.udp("172.16.0.10", "172.16.0.11", 1000, 7, bytes(100))
    stats = broker.call("stats")
    assert stats["nics"]["vm-a/eth0"]["tx_packets"] == 64
    assert stats["nics"]["vm-b/eth0"]["rx_bytes"] == 64 * 128
    assert stats["totals"]["fast_path"] == 1
    a.send(wire.detach(0))
    assert a.recv_header()[1:3] == (wire.DETACHED, 0)


def test_bad_frames_of_every_kind_leave_it_running_and_counted(
        broker: BrokerProcess, ctx: zmq.Context[Any]) -> None:
    a, b = vms(broker, ctx)
    stranger = FakeVM(ctx, broker.data, b"S")
    hdr = wire.packets_header(0, "172.16.0.11", "", 1, 128, 64)
    body = wire.pack([P.udp("172.16.0.10", "172.16.0.11", 1, 7, bytes(100))])
    from_a = [
        [b"\xc1" + os.urandom(16)],  # random bytes after one msgpack never uses
        [msgpack.packb((7, wire.PACKETS, 0, "172.16.0.11", "", 1, 128, 64)), body],  # version
        [hdr[:5]],  # truncated header
        [hdr],  # body missing
        [b"\x00" * (wire.MAX_HEADER + 1)],  # oversized header
        [hdr, b"\x00" * (wire.MAX_BODY + 1)],  # oversized body
        [msgpack.packb((wire.VERSION, 99, 0))],  # unknown kind
        [hdr, body, body],  # an extra frame (counted as a malformed body: truncated)
        wire.request(1, "stats"),  # a management request on the data plane
        wire.packets(3, "172.16.0.11", "", [body], 128, 64),  # from a NIC index never attached
    ]
    for frames in from_a:
        a.send(frames)
    stranger.send([b"garbage"])
    stranger.send(wire.packets(0, "172.16.0.11", "", [body], 128, 64))  # from an unattached peer
    # the unattached senders are told, so they can re-attach
    assert a.recv_header()[1:4] == (wire.NOTICE, 3, "not-attached")
    assert stranger.recv_header()[1:4] == (wire.NOTICE, 0, "not-attached")
    roundtrip(a, b)
    assert broker.proc.poll() is None
    stats = broker.call("stats")
    bad = {k: v for k, v in stats["totals"]["bad_frames"].items() if v}
    assert bad == {"garbage": 2, "version": 1, "truncated": 3, "oversized": 2, "kind": 2, "unattached": 2}
    # charged to vm-a/eth0 when the header names it, otherwise to the peer's entry
    assert stats["nics"]["vm-a/eth0"]["drops"]["bad_frame"] == 3
    assert stats["nics"][f"unknown:{b'A'.hex()}"]["drops"]["bad_frame"] == 7
    assert stats["nics"][f"unknown:{b'S'.hex()}"]["drops"]["bad_frame"] == 2
    assert stats["nics"]["vm-a/eth0"]["tx_packets"] == 1  # only the good packet
    # and the log says so, rate-limited but present
    assert "bad frame from" in broker.log.read_text()


def test_garbage_on_the_management_socket_is_ignored(broker: BrokerProcess, ctx: zmq.Context[Any]) -> None:
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(broker.mgmt)
    for frames in ([b"\xc1"], [msgpack.packb((wire.VERSION, wire.REQUEST, 1, 5, {}))], [b"a", b"b"]):
        client.send_multipart(frames)
    client.send_multipart(wire.request(9, "ping"))
    assert client.poll(5000)
    _, _, req_id, ok, result = wire.decode(client.recv_multipart())
    assert (req_id, ok, result["pong"]) == (9, True, True)
    assert broker.call("stats")["totals"]["mgmt_bad_frames"] == 3
    client.close()


def test_management_errors_change_nothing(broker: BrokerProcess, ctx: zmq.Context[Any]) -> None:
    vms(broker, ctx)
    broker.call("partition", a=["vm-a"], b=["vm-b"], one_way=True)
    before = broker.call("stats")
    del before["totals"]
    for verb, args, field in [
        ("add_network", {"name": "x", "prefix": "172.16.0.0/16"}, "prefix"),
        ("add_network", {"name": "x", "prefix": "10.0.0.0/24", "gateway": "10.0.1.1"}, "gateway"),
        ("impair", {"scope": "nic", "target": "vm-a/eth0", "loss": 101}, "loss"),
        ("impair", {"scope": "nic", "target": "vm-q", "loss": 1}, "target"),
        ("detach_vm", {"vm": "vm-q"}, "vm"),
        ("partition", {"a": ["vm-a"], "b": ["nobody"]}, "b"),
        ("no_such_verb", {}, "verb"),
    ]:
        with pytest.raises(RemoteError) as info:
            broker.call(verb, **args)
        assert str(info.value).startswith(field + ":"), info.value
    after = broker.call("stats")
    del after["totals"]
    assert after == before


def test_delayed_delivery_wakes_the_loop_on_time(broker: BrokerProcess, ctx: zmq.Context[Any]) -> None:
    a, b = vms(broker, ctx)
    broker.call("impair", scope="pair", target=["vm-a", "vm-b"], delay_ms=40)
    start = time.monotonic()
    a.packets(0, "172.16.0.10", "172.16.0.11", 3)
    hdr = b.recv_header(timeout=5)
    elapsed = time.monotonic() - start
    assert hdr[1:5] == (wire.DELIVER, 0, 0, 3)
    assert 0.040 <= elapsed < 0.5
    broker.call("clear")
    roundtrip(a, b)


def test_partition_and_heal_through_management(broker: BrokerProcess, ctx: zmq.Context[Any]) -> None:
    a, b = vms(broker, ctx)
    part = broker.call("partition", a=["vm-a"], b=["vm-b"])
    a.packets(0, "172.16.0.10", "172.16.0.11", 5)
    a.send(wire.claim(0, ["8.8.8.8"]))  # refused: its NOTICE says the batch before was handled
    assert a.recv_header()[1:4] == (wire.NOTICE, 0, "claim-refused")
    assert list(broker.call("heal", id=part["id"])["healed"]) == [part["id"]]
    roundtrip(a, b)  # the partitioned batch never arrives: the first thing b sees is this one
    assert broker.call("stats")["nics"]["vm-a/eth0"]["drops"]["partition"] == 5


def test_a_vm_that_does_not_read_costs_counted_queue_full_drops(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    broker = BrokerProcess(tmp_path / "broker.log", extra=["--hwm", "50"])
    try:
        broker.call("add_network", name="dc", prefix="172.16.0.0/24", gateway="172.16.0.1")
        a, b = FakeVM(ctx, broker.data, b"A"), FakeVM(ctx, broker.data, b"B", rcvhwm=1)
        a.attach(0, "vm-a", "dc", ["172.16.0.10"])
        b.attach(0, "vm-b", "dc", ["172.16.0.11"])  # and then never reads
        n = 64 * 200
        for _ in range(n // 64):
            a.packets(0, "172.16.0.10", "172.16.0.11", 64, size=1200)
        a.send(wire.claim(0, ["8.8.8.8"]))  # its NOTICE: every batch before it was handled
        assert a.recv_header(timeout=20)[1:4] == (wire.NOTICE, 0, "claim-refused")
        stats = broker.call("stats")
        sent = n // 64 * 64
        rx, full = stats["nics"]["vm-b/eth0"]["rx_packets"], stats["nics"]["vm-b/eth0"]["drops"]["queue_full"]
        assert full > 0 and full % 64 == 0
        assert rx + full == sent == stats["nics"]["vm-a/eth0"]["tx_packets"]
        assert stats["totals"]["undelivered"]["queue_full"] == full // 64
        assert broker.proc.poll() is None
    finally:
        broker.kill()


def test_sigterm_and_shutdown_exit_cleanly(tmp_path: Path) -> None:
    first = BrokerProcess(tmp_path / "one.log")
    assert first.stop() == 0
    second = BrokerProcess(tmp_path / "two.log")
    assert second.call("shutdown") == {"stopping": True}
    assert second.proc.wait(5) == 0


def test_bind_failure_is_reported_on_the_ready_fd(tmp_path: Path, broker: BrokerProcess) -> None:
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "broker", "--ready-fd", str(w), "--data", broker.data, "--log", str(tmp_path / "x")]
    proc = subprocess.Popen(cmd, pass_fds=(w,), cwd=ROOT)
    os.close(w)
    line = read_line(r, 20.0)
    os.close(r)
    assert '"ready": false' in line and "bind" in line
    assert proc.wait(5) == 1


def test_dies_with_its_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: killing the parent (the host agent) takes the broker along."""
    parent_code = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'broker', '--log', {str(tmp_path / 'b.log')!r}],"
        " stdout=subprocess.PIPE)\n"
        "sys.stdout.write(p.stdout.readline().decode()); sys.stdout.flush()\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, cwd=ROOT)
    assert parent.stdout is not None
    line = read_line(parent.stdout.fileno(), 20.0)
    child = json.loads(line)["pid"]
    pidfd = os.pidfd_open(child)
    try:
        parent.kill()
        parent.wait(5)
        ready, _, _ = select.select([pidfd], [], [], 5.0)  # readable when the child exits
        assert ready, "the broker outlived its parent"
    finally:
        os.close(pidfd)

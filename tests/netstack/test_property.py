"""Property: a stream either arrives exactly, in order, in bounded time, or fails loudly.

Stated bounds (virtual time of the manual clock; the file runs in about a second):

* no partition, loss <= 30 % (each direction), duplication <= 20 %, reordering <= 30 %, up
  to 200 KB: every byte arrives, in order, exactly once, within ``DELIVERY_BOUND`` = 900 s.
  (With ``rto_max`` = 10 s the worst of 2000 sampled runs at 30 % loss took 346 s; the
  median is ~25 s.  30 % loss each way fails half the round trips, so recovery is mostly RTO
  backoff, as for a real TCP without SACK.)
* a partition that starts at any moment: within ``PARTITION_BOUND`` = 600 s the sender's
  connection ends, either cleanly (then everything was delivered) or with TimeoutError (then
  the receiver holds a prefix of what was sent).  Never corruption, never a hang: worst case
  is SYN retries (1+2+4+8+10+10+10 s), 16 RTOs of at most 10 s, or keepalive (120 + 5 x 10 s).
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.netstack import NetStack, TcpConfig
from agents.netstack.fakenet import FakeNet, StreamRecorder

DELIVERY_BOUND = 900.0
PARTITION_BOUND = 600.0
# Keepalive bounds the receiver's half when the sender is gone; its idle time must outlast
# a plausible run of lost retransmissions (at most rto_max = 10 s apart): 120 s is 12 in a
# row at 30 % loss (p ~ 5e-7), where 30 s was 3 (p ~ 3e-2: seen failing).
CONFIG = TcpConfig(rto_max=10.0, keepalive=(120.0, 10.0, 5))


def pair(seed: int) -> tuple[FakeNet, NetStack, NetStack]:
    net = FakeNet(seed=seed)
    a = NetStack("a", tcp=CONFIG, seed=seed)
    b = NetStack("b", tcp=CONFIG, seed=seed + 1)
    a.add_interface(0, "eth0", "02:00:00:00:00:01", 1500, ["10.0.0.1/24"])
    b.add_interface(0, "eth0", "02:00:00:00:00:02", 1500, ["10.0.0.2/24"])
    net.attach(a, 0)
    net.attach(b, 0)
    return net, a, b


def start_transfer(net: FakeNet, a: NetStack, b: NetStack, data: bytes) -> tuple[StreamRecorder, list[StreamRecorder]]:
    accepted: list[StreamRecorder] = []

    def factory() -> StreamRecorder:
        accepted.append(StreamRecorder(keep_open=False))  # the receiver closes on EOF
        return accepted[-1]

    b.tcp_listen(factory, ("0.0.0.0", 80))
    client = StreamRecorder()
    conn = a.tcp_connect(client, ("10.0.0.2", 80), net.now)
    conn.write(data, net.now)
    conn.write_eof(net.now)
    return client, accepted


# Hypothesis favours small values; the mixtures make sure the hard cases (the loss limit,
# streams of many windows) come up in every run of 30 examples.
impairments = st.fixed_dictionaries({
    "loss": st.one_of(st.just(0.3), st.floats(0.0, 0.3)),
    "duplicate": st.floats(0.0, 0.2),
    "reorder": st.one_of(st.just(0.3), st.floats(0.0, 0.3)),
    "jitter": st.sampled_from([0.0, 0.0005, 0.002]),
})
sizes = st.one_of(st.integers(1, 3000), st.integers(20_000, 200_000))


@settings(max_examples=30, deadline=None)
@given(imp=impairments, size=sizes, seed=st.integers(0, 2**32 - 1))
def test_stream_arrives_exactly_in_order_within_bound(imp, size, seed):
    net, a, b = pair(seed)
    net.impair(**imp)
    data = random.Random(seed).randbytes(size)
    client, accepted = start_transfer(net, a, b, data)
    assert net.run(lambda: client.lost and accepted and accepted[0].lost, timeout=DELIVERY_BOUND), (
        f"not done within {DELIVERY_BOUND} s: client {client.conn and client.conn.state}, "
        f"got {len(accepted[0].data) if accepted else 0}/{size} bytes")
    assert client.exc is None and accepted[0].exc is None
    assert bytes(accepted[0].data) == data
    assert accepted[0].eof


@settings(max_examples=30, deadline=None)
@given(imp=impairments, size=sizes, seed=st.integers(0, 2**32 - 1),
       cut_at=st.floats(0.0, 3.0), one_way=st.booleans())
def test_partition_ends_in_timeout_or_complete_delivery(imp, size, seed, cut_at, one_way):
    net, a, b = pair(seed)
    net.impair(**imp)
    data = random.Random(seed).randbytes(size)
    client, accepted = start_transfer(net, a, b, data)
    net.run(lambda: client.lost, timeout=cut_at)
    net.partition(["a"], ["b"], one_way=one_way)
    assert net.run(lambda: client.lost, timeout=PARTITION_BOUND), (
        f"sender still {client.conn and client.conn.state} after {PARTITION_BOUND} s of partition")
    got = bytes(accepted[0].data) if accepted else b""
    if client.exc is None:
        assert got == data  # a clean end means everything was acknowledged, hence delivered
    else:
        assert isinstance(client.exc, TimeoutError)
        assert data.startswith(got)  # a prefix: nothing reordered, duplicated or corrupted

"""Conntrack: the TCP state table, timeouts per state, expiry on a manual clock, counters."""

from __future__ import annotations

import pytest
from kubeproxy_helpers import (
    CLIENT,
    VIP,
    ack,
    addrs,
    endpoint_slice,
    ep,
    forward,
    proxier,
    reply_to,
    service,
    syn,
)

from agents.kubeproxy import (
    DEFAULT_TIMEOUTS,
    IPVS_TIMEOUTS,
    ORIGINAL,
    REPLY,
    TCP_TRANSITIONS,
    Conntrack,
    Flow,
)
from broker import packets as P

OG, RE = ORIGINAL, REPLY
S, SA, A, F, FA, RST = P.SYN, P.SYN | P.ACK, P.ACK, P.FIN, P.FIN | P.ACK, P.RST


def tcp_flow(ct: Conntrack, now: float = 0.0, counter: list[int] | None = None) -> Flow:
    flow = Flow((P.TCP, "10.0.0.1", 1000, "10.96.0.1", 80), (P.TCP, "10.0.0.9", 8080, "10.0.0.1", 1000),
                counter=counter)
    return ct.add(flow, now)


def seg(flags: int) -> tuple:
    return P.tcp("a", "b", 1, 2, flags, 0, 0, 0)


@pytest.mark.parametrize(
    ("packets", "state", "timeout"),
    [
        ([(OG, S)], "SYN_SENT", 120),
        ([(OG, S), (RE, SA)], "SYN_RECV", 60),
        ([(OG, S), (RE, SA), (OG, A)], "ESTABLISHED", 86400),  # kube-proxy's 24h, not the kernel's 5 days
        ([(OG, S), (RE, SA), (OG, A), (OG, FA)], "FIN_WAIT", 120),
        ([(OG, S), (RE, SA), (OG, A), (OG, FA), (RE, A)], "CLOSE_WAIT", 3600),  # kube-proxy's 1h
        ([(OG, S), (RE, SA), (OG, A), (OG, FA), (RE, FA)], "LAST_ACK", 30),
        ([(OG, S), (RE, SA), (OG, A), (OG, FA), (RE, FA), (OG, A)], "TIME_WAIT", 120),
        ([(OG, S), (RE, RST)], "CLOSE", 10),                    # refused by the endpoint
        ([(OG, S), (RE, SA), (OG, A), (RE, RST)], "CLOSE", 10),
        ([(OG, A)], "ESTABLISHED", 86400),                     # nf_conntrack_tcp_loose pick-up
        ([(OG, S), (RE, S)], "SYN_SENT2", 120),                 # simultaneous open
    ],
)
def test_tcp_state_and_timeout(packets: list[tuple[int, int]], state: str, timeout: float) -> None:
    ct = Conntrack()
    flow = tcp_flow(ct)
    t = 0.0
    for direction, flags in packets:
        t += 1.0
        assert ct.update(flow, direction, seg(flags), t) not in ("INVALID", "REOPEN")
    assert flow.state == state
    assert flow.expires == pytest.approx(t + timeout)


@pytest.mark.parametrize(
    ("packets", "result"),
    [
        ([(OG, S), (OG, A)], "INVALID"),          # ACK before the SYN/ACK
        ([(OG, S), (OG, F)], "INVALID"),
        ([(OG, S), (RE, SA), (OG, A), (OG, S)], "IGNORE"),   # SYN on an established flow
        ([(OG, S), (RE, SA), (RE, SA)], "IGNORE"),          # retransmitted SYN/ACK
        ([(OG, S), (RE, SA), (OG, A), (OG, FA), (RE, FA), (OG, A), (OG, S)], "REOPEN"),
    ],
)
def test_tcp_invalid_ignore_reopen(packets: list[tuple[int, int]], result: str) -> None:
    ct = Conntrack()
    flow = tcp_flow(ct)
    states = [ct.update(flow, d, seg(f), 1.0) for d, f in packets]
    assert states[-1] == result
    if result == "IGNORE":
        assert flow.state == states[-2]
    if result == "REOPEN":
        assert flow.dead and len(ct) == 0 and ct.stats["reopened"] == 1


def test_the_table_covers_every_state_direction_and_flag_combination() -> None:
    assert len(TCP_TRANSITIONS) == 2 * 16 * 10
    # The kernel's row for a flagless segment: always invalid.
    assert {TCP_TRANSITIONS[(d, 0, s)] for d in (OG, RE) for s in ("NONE", "ESTABLISHED")} == {"INVALID"}
    # PSH or URG do not change the row: only SYN/ACK/FIN/RST count.
    assert TCP_TRANSITIONS[(OG, P.ACK, "SYN_RECV")] == "ESTABLISHED"


@pytest.mark.parametrize(
    ("packets", "state", "timeout"),
    [
        ([(0.0, OG)], "UNREPLIED", 30),
        ([(0.0, OG), (0.5, RE)], "REPLIED", 30),              # a DNS query and its answer
        ([(0.0, OG), (0.5, RE), (2.5, OG)], "STREAM", 120),    # still talking after 2 s: a stream
        ([(0.0, OG), (3.0, OG)], "UNREPLIED", 30),            # one way only never becomes a stream
    ],
)
def test_udp_states(packets: list[tuple[float, int]], state: str, timeout: float) -> None:
    ct = Conntrack()
    flow = ct.add(Flow((P.UDP, "a", 1, "v", 53), (P.UDP, "e", 53, "a", 1)), 0.0)
    for t, d in packets:
        ct.update(flow, d, P.udp("a", "b", 1, 2, b""), t)
    assert flow.state == state
    assert flow.expires == pytest.approx(packets[-1][0] + timeout)


@pytest.mark.parametrize(
    ("chunks", "state", "timeout"),
    [
        ([P.SCTP_INIT], "COOKIE_WAIT", 3),
        ([P.SCTP_INIT, P.SCTP_INIT_ACK], "COOKIE_ECHOED", 3),
        ([P.SCTP_INIT, P.SCTP_INIT_ACK, P.SCTP_DATA], "ESTABLISHED", 210),
        ([P.SCTP_INIT, P.SCTP_INIT_ACK, P.SCTP_DATA, P.SCTP_ABORT], "CLOSED", 10),
    ],
)
def test_sctp_states(chunks: list[int], state: str, timeout: float) -> None:
    ct = Conntrack()
    flow = ct.add(Flow((P.SCTP, "a", 1, "v", 9), (P.SCTP, "e", 9, "a", 1)), 0.0)
    for chunk in chunks:
        ct.update(flow, OG, P.sctp("a", "b", 1, 2, chunk, 1), 5.0)
    assert flow.state == state and flow.expires == pytest.approx(5.0 + timeout)


def test_expiry_on_a_manual_clock_and_early_reschedule() -> None:
    ct = Conntrack()
    flow = tcp_flow(ct)
    ct.start(flow, seg(S), 0.0)
    assert ct.next_deadline() == pytest.approx(120.0)
    ct.update(flow, RE, seg(SA), 1.0)
    ct.update(flow, OG, seg(A), 2.0)                  # ESTABLISHED: 86400 s
    assert ct.expire(200.0) == [] and len(ct) == 1   # the old 120 s entry re-pushed itself
    ct.update(flow, RE, seg(RST), 300.0)              # CLOSE: 10 s, earlier than scheduled
    assert ct.next_deadline() == pytest.approx(310.0)
    assert ct.expire(309.9) == []
    assert ct.expire(310.0) == [flow] and len(ct) == 0 and ct.stats["expired"] == 1
    assert ct.next_deadline() is None


def test_counters_follow_the_state() -> None:
    ct = Conntrack()
    counter = [0, 0]
    flow = tcp_flow(ct, counter=counter)
    ct.start(flow, seg(S), 0.0)
    assert counter == [0, 1]
    ct.update(flow, RE, seg(SA), 0.1)
    ct.update(flow, OG, seg(A), 0.2)
    assert counter == [1, 0]
    ct.update(flow, OG, seg(FA), 0.3)
    assert counter == [0, 1]
    ct.remove(flow)
    ct.remove(flow)  # twice is harmless
    assert counter == [0, 0]


def test_timeout_tables_are_the_documented_defaults() -> None:
    assert DEFAULT_TIMEOUTS[P.UDP]["UNREPLIED"] == 30 and DEFAULT_TIMEOUTS[P.UDP]["STREAM"] == 120
    assert IPVS_TIMEOUTS[P.TCP]["ESTABLISHED"] == 900 and IPVS_TIMEOUTS[P.UDP]["UNREPLIED"] == 300
    ct = Conntrack({P.TCP: {"ESTABLISHED": 60.0}})
    assert ct.timeouts[P.TCP]["ESTABLISHED"] == 60.0 and ct.timeouts[P.TCP]["SYN_SENT"] == 120.0


def test_proxier_forgets_an_expired_flow_and_decides_again() -> None:
    kp = proxier(mode="ipvs", scheduler="rr")
    kp.update_service(service(ports=[{"name": "p", "protocol": "UDP", "port": 53}]), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5"), ep("10.244.2.6")], ports=[("p", 53, "UDP")]), None, 0.0)
    q = P.udp(CLIENT, VIP, 40000, 53, b"q")
    assert addrs(forward(kp, q, 0.0))[2] == "10.244.1.5"
    assert addrs(forward(kp, q, 299.9))[2] == "10.244.1.5"   # IPVS UDP timeout: 300 s from the last packet
    assert addrs(forward(kp, q, 599.8))[2] == "10.244.1.5"
    # 300 s of silence: gone even without a sweep, the next datagram is a new flow.
    assert addrs(forward(kp, q, 899.8))[2] == "10.244.2.6"
    assert kp.conntrack.stats["expired"] == 1


def test_proxier_expire_sweeps_and_reports_the_deadline() -> None:
    kp = proxier()
    kp.update_service(service(), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5")]), None, 0.0)
    out = forward(kp, syn(CLIENT, 1, VIP, 80), 0.0)
    forward(kp, reply_to(out, P.RST | P.ACK), 0.5)   # refused: CLOSE for 10 s
    assert kp.next_deadline() == pytest.approx(10.5)
    assert kp.expire(10.4) == 0 and kp.expire(10.5) == 1
    assert kp.next_deadline() is None and len(kp.conntrack) == 0
    # A reply after the flow is gone is not translated.
    late = reply_to(out, P.ACK)
    assert forward(kp, late, 11.0) == late
    assert addrs(forward(kp, ack(CLIENT, 2, VIP, 80, P.ACK), 11.0))[2] == "10.244.1.5"

"""The SNAT table and the masquerade rule, decision by decision (no stacks involved)."""

from __future__ import annotations

import pytest

from agents.cni import Masquerade, SnatTable
from agents.cni.masquerade import TIMEOUTS
from broker import packets as P

NODE = "172.16.0.11"
POD = "10.244.0.5"
POD2 = "10.244.0.6"
VM = "172.17.0.50"
EXCEPTIONS = ["10.244.0.0/16", "10.96.0.0/12", "172.16.0.0/24"]


def rule(exceptions: list[str] = EXCEPTIONS, *, wire: bool = True) -> Masquerade:
    return Masquerade([NODE], ["10.244.0.0/16"], exceptions, egress=lambda dst: wire)


DECISIONS = [
    # src, dst, leaves by the wire, exceptions, masqueraded?
    (POD, VM, True, EXCEPTIONS, True),                # another network: SNAT to the node
    (POD, "172.16.0.50", True, EXCEPTIONS, False),    # the node subnet is an exception (Flannel)
    (POD, "172.16.0.50", True, ["10.244.0.0/16"], True),   # Calico: only the pool is excepted
    (POD, "10.244.1.9", True, EXCEPTIONS, False),     # another pod
    (POD, "10.96.0.10", True, EXCEPTIONS, False),     # a Service (DNATed before anyway)
    (POD, VM, False, EXCEPTIONS, False),              # not leaving by eth0 (e.g. the VXLAN device)
    ("172.16.0.50", VM, True, EXCEPTIONS, False),     # not from a pod
    (POD, "8.8.8.8", True, [], True),
]


@pytest.mark.parametrize(("src", "dst", "wire", "exceptions", "natted"), DECISIONS)
def test_masquerade_decision(src: str, dst: str, wire: bool, exceptions: list[str], natted: bool) -> None:
    m = rule(exceptions, wire=wire)
    out = m.postrouting(P.udp(src, dst, 40000, 53, b"q"), 0.0)
    assert out[P.SRC] == (NODE if natted else src)
    assert out[P.SPORT] == 40000  # the port is kept when the tuple is free
    assert len(m.table) == (1 if natted else 0)


def test_reply_is_un_natted_and_unrelated_traffic_passes() -> None:
    m = rule()
    m.postrouting(P.udp(POD, VM, 40000, 53, b"q"), 0.0)
    reply = P.udp(VM, NODE, 53, 40000, b"a")
    assert m.prerouting(reply, 0.1)[:6] == (VM, POD, P.UDP, 64, 53, 40000)
    for other in (P.udp(VM, NODE, 53, 40001, b"a"), P.udp(VM, "172.16.0.12", 53, 40000, b"a"),
                  P.udp("172.17.0.51", NODE, 53, 40000, b"a")):
        assert m.prerouting(other, 0.1) is other


def test_two_pods_with_one_source_port_get_distinct_nat_ports() -> None:
    m = rule()
    a = m.postrouting(P.tcp(POD, VM, 40000, 80, P.SYN, 1, 0, 65535), 0.0)
    b = m.postrouting(P.tcp(POD2, VM, 40000, 80, P.SYN, 1, 0, 65535), 0.0)
    assert a[P.SPORT] == 40000 and b[P.SPORT] != 40000 and b[P.SRC] == NODE
    back = m.prerouting(P.tcp(VM, NODE, 80, b[P.SPORT], P.SYN | P.ACK, 9, 2, 65535), 0.1)
    assert (back[P.DST], back[P.DPORT]) == (POD2, 40000)
    # the same flow again keeps its mapping
    again = m.postrouting(P.tcp(POD2, VM, 40000, 80, P.ACK, 2, 10, 65535), 0.2)
    assert again[P.SPORT] == b[P.SPORT]


def test_echo_identifiers_are_natted() -> None:
    m = rule()
    t = SnatTable()
    m.table = t
    req1 = m.postrouting(P.echo(POD, VM, True, 7, 1), 0.0)
    req2 = m.postrouting(P.echo(POD2, VM, True, 7, 1), 0.0)
    assert req1[P.INFO] == (7, 1) and req2[P.INFO][0] != 7 and req2[P.SRC] == NODE
    rep = m.prerouting(P.echo(VM, NODE, False, req2[P.INFO][0], 1), 0.1)
    assert rep[P.DST] == POD2 and rep[P.INFO] == (7, 1)


def test_icmp_error_about_a_natted_packet_reaches_the_pod() -> None:
    m = rule()
    sent = m.postrouting(P.udp(POD, VM, 40000, 9, b"x"), 0.0)
    err = P.port_unreachable(VM, sent)
    assert err[P.DST] == NODE
    fixed = m.prerouting(err, 0.1)
    quoted = fixed[P.INFO][1]
    assert fixed[P.DST] == POD and (quoted[P.SRC], quoted[P.SPORT]) == (POD, 40000)
    assert m.table.counters["related_packets"] == 1


TIMEOUT_CASES = [
    # first packet, reply?, later packet flags, the flow's timeout
    (P.udp(POD, VM, 40000, 53, b"q"), False, None, TIMEOUTS["udp"]),
    (P.udp(POD, VM, 40000, 53, b"q"), True, None, TIMEOUTS["udp_stream"]),
    (P.echo(POD, VM, True, 3, 1), True, None, TIMEOUTS["icmp"]),
    (P.tcp(POD, VM, 40000, 80, P.SYN, 1, 0, 1000), False, None, TIMEOUTS["tcp_syn_sent"]),
    (P.tcp(POD, VM, 40000, 80, P.SYN, 1, 0, 1000), True, P.ACK, TIMEOUTS["tcp_established"]),
    (P.tcp(POD, VM, 40000, 80, P.SYN, 1, 0, 1000), True, P.FIN | P.ACK, TIMEOUTS["tcp_fin"]),
    (P.tcp(POD, VM, 40000, 80, P.SYN, 1, 0, 1000), True, P.RST, TIMEOUTS["tcp_close"]),
]


@pytest.mark.parametrize(("first", "replied", "later", "timeout"), TIMEOUT_CASES)
def test_flow_timeouts_follow_conntrack(first: tuple, replied: bool, later: int | None, timeout: float) -> None:
    m = rule()
    out = m.postrouting(first, 0.0)
    now = 0.0
    if replied:
        if first[P.PROTO] == P.ICMP:
            reply = P.echo(VM, NODE, False, out[P.INFO][0], 1)
        elif first[P.PROTO] == P.TCP:
            reply = P.tcp(VM, NODE, 80, out[P.SPORT], P.SYN | P.ACK, 5, 2, 1000)
        else:
            reply = P.udp(VM, NODE, 53, out[P.SPORT], b"a")
        now = 1.0
        assert m.prerouting(reply, now)[P.DST] == POD
    if later is not None:
        now = 2.0
        m.postrouting(P.tcp(POD, VM, 40000, 80, later, 2, 6, 1000), now)
    flow = m.table.flows()[0]
    assert flow.expires == pytest.approx(now + timeout)
    # just before: alive; after: gone, and the reply no longer finds its way
    m.expire(now + timeout - 0.001)
    assert len(m.table) == 1
    m.table._next_sweep = 0.0
    assert m.expire(now + timeout) == 1 and len(m.table) == 0
    assert m.table.next_deadline() is None


def test_expired_flow_is_not_used_even_before_the_sweep() -> None:
    m = rule()
    out = m.postrouting(P.udp(POD, VM, 40000, 53, b"q"), 0.0)
    late = P.udp(VM, NODE, 53, out[P.SPORT], b"a")
    assert m.prerouting(late, TIMEOUTS["udp"] + 1) is late


def test_changing_exceptions_flips_new_flows() -> None:
    m = rule(["10.244.0.0/16"])
    assert m.postrouting(P.udp(POD, "172.16.0.50", 1, 2, b""), 0.0)[P.SRC] == NODE
    m.set_exceptions(EXCEPTIONS)
    assert m.postrouting(P.udp(POD, "172.16.0.50", 3, 4, b""), 0.0)[P.SRC] == POD
    assert m.stats()["exceptions"] == EXCEPTIONS


def test_port_exhaustion_is_counted_not_raised() -> None:
    t = SnatTable()
    for port in range(1024, 65536):
        t._reply[(P.UDP, VM, 53, NODE, port)] = None  # type: ignore[assignment]
    out = t.snat(P.udp(POD, VM, 40000, 53, b""), NODE, 0.0)
    assert out[P.SRC] == POD and t.counters["exhausted"] == 1


def test_a_reply_to_a_flow_opened_toward_the_pod_is_not_masqueraded() -> None:
    m = rule()
    syn = P.tcp(VM, POD, 50000, 80, P.SYN, 1, 0, 1000)
    assert m.forward(syn, 0.0) is syn
    answer = P.tcp(POD, VM, 80, 50000, P.SYN | P.ACK, 7, 2, 1000)
    assert m.postrouting(answer, 0.1) is answer and m.counters["replies_kept"] == 1
    # the pod opening its own flow to the VM is still masqueraded
    assert m.postrouting(P.tcp(POD, VM, 40000, 80, P.SYN, 1, 0, 1000), 0.1)[P.SRC] == NODE
    # after the RST the note expires with conntrack's close timeout
    m.forward(P.tcp(VM, POD, 50000, 80, P.RST, 2, 0, 0), 1.0)
    m.table._next_sweep = 0.0
    m.expire(1.0 + TIMEOUTS["tcp_close"])
    assert m.stats()["inbound"] == 0
    assert m.postrouting(answer, 20.0)[P.SRC] == NODE

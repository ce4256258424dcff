"""The TCP-like transport over the in-memory fabric, manual clock."""

from __future__ import annotations

import errno

import pytest

from agents.netstack import NetStack, TcpConfig
from agents.netstack.fakenet import FakeNet, StreamRecorder
from broker import packets as P

Record = list[tuple[float, str, tuple]]


def tap_tcp(net: FakeNet) -> Record:
    """Every TCP segment any stack emits: (time, stack name, packet)."""
    seen: Record = []
    net.taps.append(lambda now, name, nic, via, pkt: seen.append((now, name, pkt)) if pkt[2] == P.TCP else None)
    return seen


def serve(stack: NetStack, port: int = 80, ip: str = "0.0.0.0", **recorder_args: bool) -> list[StreamRecorder]:
    accepted: list[StreamRecorder] = []

    def factory() -> StreamRecorder:
        accepted.append(StreamRecorder(**recorder_args))
        return accepted[-1]

    stack.tcp_listen(factory, (ip, port))
    return accepted


def connect(net: FakeNet, a: NetStack, dst: str, port: int = 80, timeout: float | None = None) -> StreamRecorder:
    client = StreamRecorder()
    a.tcp_connect(client, (dst, port), net.now, timeout)
    return client


def established(net: FakeNet, a: NetStack, b: NetStack, dst: str = "10.0.0.2", listen: str = "0.0.0.0"):
    accepted = serve(b, ip=listen)
    client = connect(net, a, dst)
    assert net.run(lambda: client.made and accepted and accepted[0].made, timeout=5)
    return client, accepted[0]


def flags_of(pkt: tuple) -> int:
    return pkt[P.INFO][0]


def test_three_way_handshake_with_mss(lan):
    net, a, b = lan
    seen = tap_tcp(net)
    client, server = established(net, a, b)
    kinds = [(name, flags_of(pkt) & (P.SYN | P.ACK | P.RST)) for _, name, pkt in seen[:3]]
    assert kinds == [("a", P.SYN), ("b", P.SYN | P.ACK), ("a", P.ACK)]
    syn, synack = seen[0][2], seen[1][2]
    assert syn[P.INFO][4] == 1460 and synack[P.INFO][4] == 1460  # MSS = MTU - 40
    assert synack[P.INFO][2] == (syn[P.INFO][1] + 1) & 0xFFFFFFFF  # SYN-ACK acks ISN + 1
    assert client.conn.state == server.conn.state == "ESTABLISHED"
    assert server.conn.get_extra_info("peername") == client.conn.get_extra_info("sockname")


def test_handshake_over_ipv6_uses_ipv6_mss(lan):
    net, a, b = lan
    seen = tap_tcp(net)
    client, server = established(net, a, b, "fd00::2", listen="::")
    assert seen[0][2][P.INFO][4] == 1440  # 1500 - 40 (IPv6) - 20 (TCP)
    client.conn.write(b"x" * 5000, net.now)
    assert net.run(lambda: len(server.data) == 5000, timeout=2)
    assert max(len(p[P.PAYLOAD]) for _, _, p in seen) == 1440


def test_closed_port_answers_rst_and_connect_is_refused(lan):
    net, a, b = lan
    seen = tap_tcp(net)
    client = connect(net, a, "10.0.0.2", 81)
    assert net.run(lambda: client.lost, timeout=1)
    assert isinstance(client.exc, ConnectionRefusedError) and client.exc.errno == errno.ECONNREFUSED
    assert not client.made
    rst = seen[1][2]
    assert seen[1][1] == "b" and flags_of(rst) == P.RST | P.ACK
    assert rst[P.INFO][2] == (seen[0][2][P.INFO][1] + 1) & 0xFFFFFFFF
    assert b.drops["no_socket"] == 1 and a.tcp_stats["resets_received"] == 1


def test_syn_retransmits_back_off_exponentially_then_time_out(lan):
    net, a, b = lan
    seen = tap_tcp(net)
    serve(b)
    net.partition(["a"], ["b"])
    client = connect(net, a, "10.0.0.2")
    assert net.run(lambda: client.lost, timeout=300)
    syn_times = [t for t, name, pkt in seen if name == "a" and flags_of(pkt) & P.SYN]
    # RFC 6298: initial RTO 1 s, doubled each time; tcp_syn_retries = 6 -> 7 SYNs, 127 s.
    assert syn_times == pytest.approx([0, 1, 3, 7, 15, 31, 63])
    assert net.now == pytest.approx(127)
    assert isinstance(client.exc, TimeoutError) and client.exc.errno == errno.ETIMEDOUT


def test_connect_timeout_parameter(lan):
    net, a, b = lan
    net.partition(["a"], ["b"])
    client = connect(net, a, "10.0.0.2", timeout=5.0)
    assert net.run(lambda: client.lost, timeout=60)
    assert isinstance(client.exc, TimeoutError)
    assert net.now == pytest.approx(5.0)


def test_data_retransmissions_double_and_give_up(host):
    net = FakeNet(seed=3)
    cfg = TcpConfig(retries2=6)
    a = host("a", ["10.0.0.1/24"], tcp=cfg)
    b = host("b", ["10.0.0.2/24"], tcp=cfg)
    net.attach(a, 0)
    net.attach(b, 0)
    seen = tap_tcp(net)
    client, server = established(net, a, b)
    net.run_for(1)
    net.partition(["a"], ["b"])
    start = net.now
    client.conn.write(b"hello", net.now)
    assert net.run(lambda: client.lost, timeout=600)
    sends = [t - start for t, name, pkt in seen if name == "a" and pkt[P.PAYLOAD] == b"hello"]
    gaps = [b_ - a_ for a_, b_ in zip(sends, sends[1:], strict=False)]
    assert len(sends) == 7  # the original + retries2 retransmissions
    assert gaps[0] == pytest.approx(0.2, rel=0.05)  # RTT ~1 ms: the RTO sits at Linux's 200 ms floor
    for earlier, later in zip(gaps, gaps[1:], strict=False):
        assert later == pytest.approx(2 * earlier, rel=1e-6)
    assert isinstance(client.exc, TimeoutError)
    assert a.tcp_stats["retransmits"] == 6 and a.tcp_stats["timeouts"] == 1


def test_established_stream_under_partition_times_out(lan):
    net, a, b = lan
    client, server = established(net, a, b)
    client.conn.write(b"a" * 100_000, net.now)
    net.run(lambda: len(server.data) > 20_000, timeout=1)
    net.partition(["a"], ["b"])
    # tcp_retries2 = 15 with a 200 ms RTO and a 120 s ceiling: ~925 s, as on Linux.
    assert net.run(lambda: client.lost, timeout=1200)
    assert isinstance(client.exc, TimeoutError)
    assert 600 < net.now < 1200
    assert bytes(server.data) == b"a" * len(server.data)


def test_reordering_delivers_in_order(lan):
    net, a, b = lan
    net.impair(reorder=0.3)
    client, server = established(net, a, b)
    data = bytes(range(256)) * 2000
    client.conn.write(data, net.now)
    assert net.run(lambda: len(server.data) == len(data), timeout=60)
    assert bytes(server.data) == data
    assert net.counters["reordered"] > 10 and b.tcp_stats["ooo_segments"] > 0


def test_duplication_is_detected(lan):
    net, a, b = lan
    net.impair(duplicate=0.3)
    client, server = established(net, a, b)
    data = bytes(range(256)) * 2000
    client.conn.write(data, net.now)
    assert net.run(lambda: len(server.data) == len(data), timeout=60)
    net.run_for(1)
    assert bytes(server.data) == data
    assert net.counters["duplicated"] > 10 and b.tcp_stats["dup_segments"] > 0


def test_loss_is_repaired_by_retransmission(lan):
    net, a, b = lan
    net.impair(loss=0.1)
    client, server = established(net, a, b)
    data = bytes(range(256)) * 4000
    client.conn.write(data, net.now)
    assert net.run(lambda: len(server.data) == len(data), timeout=120)
    assert bytes(server.data) == data
    assert a.tcp_stats["retransmits"] > 0


def test_fast_retransmit_on_three_dup_acks(lan):
    net, a, b = lan
    client, server = established(net, a, b)
    dropped: list[tuple] = []

    def drop_one(pkt, now):  # lose the 3rd data segment once, on b's way in
        if pkt[P.PROTO] == P.TCP and pkt[P.PAYLOAD] and pkt[P.INFO][1] == third and not dropped:
            dropped.append(pkt)
            return None
        return pkt

    isn = a.connections()[0]._snd_una
    third = (isn + 2 * 1460) & 0xFFFFFFFF
    b.hooks["PREROUTING"].append(drop_one)
    start = net.now
    data = b"z" * 30 * 1460
    client.conn.write(data, net.now)
    assert net.run(lambda: len(server.data) == len(data), timeout=5)
    assert dropped and a.tcp_stats["fast_retransmits"] == 1
    assert net.now - start < 0.2  # repaired before any RTO could fire
    assert b.drops["hook"] == 1


def test_segments_never_exceed_mss(lan):
    net, a, b = lan
    seen = tap_tcp(net)
    client, server = established(net, a, b)
    client.conn.write(b"q" * 100_000, net.now)
    assert net.run(lambda: len(server.data) == 100_000, timeout=10)
    sizes = [len(pkt[P.PAYLOAD]) for _, name, pkt in seen if name == "a"]
    assert max(sizes) == 1460
    assert all(pkt[P.SIZE] <= 1500 for _, _, pkt in seen)


def test_half_close_then_reply_then_close(lan):
    net, a, b = lan
    accepted = serve(b, keep_open=True)
    client = connect(net, a, "10.0.0.2")
    assert net.run(lambda: client.made and accepted, timeout=1)
    server = accepted[0]
    client.conn.write(b"request", net.now)
    client.conn.write_eof(net.now)
    assert net.run(lambda: server.eof and client.conn.state == "FIN_WAIT_2", timeout=1)
    assert bytes(server.data) == b"request"
    assert server.conn.state == "CLOSE_WAIT" and client.conn.state == "FIN_WAIT_2"
    server.conn.write(b"response after eof", net.now)  # half-close: the server can still write
    server.conn.close(net.now)
    assert net.run(lambda: client.lost and server.lost, timeout=1)
    assert bytes(client.data) == b"response after eof" and client.eof
    assert client.exc is None and server.exc is None
    assert client.conn.state == "TIME_WAIT" and server.conn.state == "CLOSED"
    tw_start = net.now
    assert net.run(lambda: client.conn.state == "CLOSED", timeout=5)
    assert net.now - tw_start == pytest.approx(a.tcp_config.time_wait, abs=0.01)
    assert a.connections() == [] and b.connections() == []


def test_eof_received_false_closes_like_asyncio(lan):
    net, a, b = lan
    accepted = serve(b, keep_open=False)
    client = connect(net, a, "10.0.0.2")
    assert net.run(lambda: accepted and accepted[0].made, timeout=1)
    client.conn.write_eof(net.now)
    assert net.run(lambda: client.lost and accepted[0].lost, timeout=1)
    assert client.eof and accepted[0].eof


def test_abort_resets_the_peer(lan):
    net, a, b = lan
    client, server = established(net, a, b)
    client.conn.write(b"partial", net.now)
    net.run_for(0.01)
    client.conn.abort(net.now)
    assert net.run(lambda: server.lost, timeout=1)
    assert isinstance(server.exc, ConnectionResetError) and server.exc.errno == errno.ECONNRESET
    assert client.lost and client.exc is None
    assert bytes(server.data) == b"partial"


def test_write_after_close_is_a_broken_pipe(lan):
    net, a, b = lan
    client, server = established(net, a, b)
    client.conn.write_eof(net.now)
    with pytest.raises(BrokenPipeError):
        client.conn.write(b"late", net.now)


def test_flow_control_paused_reader_shrinks_window(lan):
    net, a, b = lan
    client, server = established(net, a, b)
    server.conn.pause_reading()
    data = bytes(range(256)) * 4096  # 1 MiB, four times the receive window
    client.conn.write(data, net.now)
    net.run_for(5)
    rcvbuf = b.tcp_config.rcvbuf
    assert server.data == b""
    assert client.conn.get_write_buffer_size() == len(data) - rcvbuf  # only a window's worth left
    assert server.conn.info()["rcv_wnd"] == 0
    assert a.tcp_stats["window_probes"] > 0 and a.tcp_stats["timeouts"] == 0
    assert client.paused == 1  # above write_high: pause_writing
    server.conn.resume_reading(net.now)
    assert net.run(lambda: len(server.data) == len(data), timeout=30)
    assert bytes(server.data) == data
    net.run_for(1)
    assert client.conn.get_write_buffer_size() == 0 and client.resumed == 1


def test_keepalive_reports_a_dead_idle_peer(host):
    net = FakeNet(seed=4)
    cfg = TcpConfig(keepalive=(10.0, 2.0, 3))
    a = host("a", ["10.0.0.1/24"], tcp=cfg)
    b = host("b", ["10.0.0.2/24"])
    net.attach(a, 0)
    net.attach(b, 0)
    client, server = established(net, a, b)
    net.run_for(30)  # idle, probes answered: still up
    assert not client.lost and a.tcp_stats["keepalive_probes"] >= 2
    net.partition(["a"], ["b"])
    start = net.now
    assert net.run(lambda: client.lost, timeout=60)
    assert isinstance(client.exc, TimeoutError)
    assert net.now - start <= 10 + 3 * 2 + 0.1


def test_icmp_unreachable_fails_connect(routed):
    net, a, r, b = routed
    client = connect(net, a, "10.9.9.9")  # r has no route there: ICMP net unreachable
    assert net.run(lambda: client.lost, timeout=1)
    assert isinstance(client.exc, OSError) and client.exc.errno == errno.ENETUNREACH
    assert r.drops["no_route"] == 1


def test_no_local_route_raises_enetunreach(host):
    a = host("a", ["10.0.0.1/24"])
    with pytest.raises(OSError) as info:
        a.tcp_connect(StreamRecorder(), ("192.0.2.1", 80), 0.0)
    assert info.value.errno == errno.ENETUNREACH


def test_packet_too_big_shrinks_segments_and_delivery_completes(routed):
    net, a, r, b = routed
    r.set_mtu(1, 1000)  # only the router's side: b still advertises MSS 1460
    seen = tap_tcp(net)
    accepted = serve(b)
    client = connect(net, a, "10.2.0.10")
    assert net.run(lambda: client.made and accepted and accepted[0].made, timeout=1)
    data = bytes(range(256)) * 400
    client.conn.write(data, net.now)
    assert net.run(lambda: len(accepted[0].data) == len(data), timeout=10)
    assert bytes(accepted[0].data) == data
    assert r.drops["mtu"] >= 1 and a.counters["pmtu_updates"] == 1
    assert a.path_mtu("10.2.0.10") == 1000
    late = [pkt for _, name, pkt in seen if name == "a" and pkt[P.PAYLOAD]][-5:]
    assert all(pkt[P.SIZE] <= 1000 and len(pkt[P.PAYLOAD]) <= 960 for pkt in late)  # MSS = PMTU - 40


def test_packet_too_big_v6(routed):
    net, a, r, b = routed
    r.set_mtu(1, 1280)
    accepted = serve(b, ip="::")
    client = connect(net, a, "fd02::10")
    assert net.run(lambda: client.made and accepted, timeout=1)
    data = b"v6" * 20_000
    client.conn.write(data, net.now)
    assert net.run(lambda: len(accepted[0].data) == len(data), timeout=10)
    assert bytes(accepted[0].data) == data
    assert a.path_mtu("fd02::10") == 1280


def test_delayed_ack_for_a_lone_segment(lan):
    net, a, b = lan
    seen = tap_tcp(net)
    client, server = established(net, a, b)
    net.run_for(1)
    start = net.now
    client.conn.write(b"one", net.now)
    assert net.run(lambda: any(name == "b" and t > start for t, name, _ in seen), timeout=1)
    ack_time = [t for t, name, _ in seen if name == "b" and t > start][0]
    assert ack_time - start == pytest.approx(0.0005 + 0.04, abs=0.001)  # one way + TCP_DELACK_MIN


def test_loopback_connection_within_one_stack(host):
    a = host("a", ["10.0.0.1/24"])
    accepted = serve(a, 7)
    client = StreamRecorder()
    a.tcp_connect(client, ("10.0.0.1", 7), 0.0)
    assert client.made and accepted[0].made  # the handshake ran within the call
    client.conn.write(b"x" * 200_000, 0.0)
    assert bytes(accepted[0].data) == b"x" * 200_000
    assert a.take_output() == []
    assert a.interfaces[-1].rx_packets > 3


def test_ephemeral_ports_in_linux_range(lan):
    net, a, b = lan
    serve(b)
    ports = set()
    for _ in range(5):
        c = connect(net, a, "10.0.0.2")
        net.run(lambda c=c: c.made, timeout=1)
        ports.add(c.conn.local[1])
    assert len(ports) == 5 and all(32768 <= p <= 60999 for p in ports)


def test_tcp_state_table_rejects_undefined_transitions():
    from agents.netstack.tcp import TRANSITIONS, LocalProtocolError, TcpConnection

    conn = TcpConnection.__new__(TcpConnection)
    conn.state = "LISTEN_NEVER"
    with pytest.raises(LocalProtocolError):
        conn._transition("rcv_fin")
    assert TRANSITIONS[("ESTABLISHED", "rcv_fin")] == "CLOSE_WAIT"


def test_stats_are_plain_data(lan):
    import json

    net, a, b = lan
    client, server = established(net, a, b)
    stats = a.stats()
    json.dumps(stats)
    assert stats["tcp"]["states"] == {"ESTABLISHED": 1}
    assert stats["interfaces"]["eth0"]["tx_packets"] == 2



def test_receiver_takes_nothing_beyond_its_window(lan):
    net, a, b = lan
    client, server = established(net, a, b)
    server.conn.pause_reading()
    rcvbuf = b.tcp_config.rcvbuf
    client.conn.write(b"w" * (rcvbuf + 50_000), net.now)
    net.run_for(2)
    conn = server.conn
    assert conn.info()["pending_read"] == rcvbuf and conn.info()["rcv_wnd"] == 0
    # A misbehaving sender pushes past the advertised (zero) window: nothing is taken.
    nxt = conn._rcv_nxt
    rogue = P.tcp("10.0.0.1", "10.0.0.2", client.conn.local[1], 80, P.ACK, nxt & 0xFFFFFFFF,
                  client.conn._rcv_nxt & 0xFFFFFFFF, 65535, b"r" * 1000)
    b.receive(0, [rogue], net.now)
    assert conn._rcv_nxt == nxt and conn.info()["pending_read"] == rcvbuf
    server.conn.resume_reading(net.now)
    assert net.run(lambda: len(server.data) == rcvbuf + 50_000, timeout=10)
    assert b"r" not in server.data


def test_simultaneous_open(lan):
    net, a, b = lan
    left, right = StreamRecorder(), StreamRecorder()
    a.tcp_connect(left, ("10.0.0.2", 5555), net.now, local=("10.0.0.1", 4444))
    b.tcp_connect(right, ("10.0.0.1", 4444), net.now, local=("10.0.0.2", 5555))
    assert net.run(lambda: left.made and right.made, timeout=5)
    left.conn.write(b"ping", net.now)
    right.conn.write(b"pong", net.now)
    assert net.run(lambda: left.data == b"pong" and right.data == b"ping", timeout=1)


def test_syn_ack_loss_is_recovered(lan):
    net, a, b = lan
    drops: list[float] = []

    def drop_first_synack(pkt, now):
        if pkt[P.PROTO] == P.TCP and pkt[P.INFO][0] == P.SYN | P.ACK and not drops:
            drops.append(now)
            return None
        return pkt

    a.hooks["PREROUTING"].append(drop_first_synack)
    accepted = serve(b)
    client = connect(net, a, "10.0.0.2")
    assert net.run(lambda: client.made and accepted and accepted[0].made, timeout=5)
    assert drops and net.now == pytest.approx(1.0, abs=0.01)  # the client's SYN RTO, 1 s
    client.conn.write(b"after", net.now)
    assert net.run(lambda: accepted[0].data == b"after", timeout=1)


def test_data_for_a_closed_socket_is_reset(lan):
    """After close() the app is done (connection_lost); more data from the peer earns a RST."""
    net, a, b = lan
    client, server = established(net, a, b)
    client.conn.write_eof(net.now)
    assert net.run(lambda: client.conn.state == "FIN_WAIT_2", timeout=1)
    client.conn.close(net.now)
    assert net.run(lambda: client.lost, timeout=1) and client.exc is None
    server.conn.write(b"late reply", net.now)  # data for a closed socket: Linux resets
    assert net.run(lambda: server.lost, timeout=1)
    assert isinstance(server.exc, BrokenPipeError)  # Linux tcp_reset(): EPIPE in CLOSE_WAIT
    assert a.tcp_stats["resets_sent"] == 1


def test_orphan_fin_wait_2_ends_and_peer_fin_is_acked(lan):
    net, a, b = lan
    client, server = established(net, a, b)
    client.conn.close(net.now)
    assert net.run(lambda: client.lost and server.eof, timeout=1)
    assert client.conn.state == "FIN_WAIT_2"
    server.conn.close(net.now)
    assert net.run(lambda: server.lost, timeout=1)
    assert server.exc is None and server.conn.state == "CLOSED"  # our ACK of its FIN arrived
    assert net.run(lambda: client.conn.state == "CLOSED", timeout=a.tcp_config.time_wait + 0.1)
    assert b.tcp_stats["retransmits"] == 0

"""Dual stack on Calico (sans-IO): IPv6 pod blocks routed over the IPv4 VXLAN underlay,
ICMPv6 and TCP between pods across nodes, Windows nodes IPv4 only."""

from __future__ import annotations

import ipaddress

from cni_topology import NODES, Cluster, build_cluster

from agents.netstack.fakenet import DatagramRecorder, EchoRecorder, StreamRecorder
from agents.node.datapath import PodNet
from broker import packets as P

POOLS = ["10.244.0.0/16", "fd00:10:244::/56"]


def v6(pod: PodNet) -> str:
    return next(ip for ip in pod.ips if ":" in ip)


def dual() -> Cluster:
    return build_cluster("calico", pools=POOLS)


def test_linux_pods_get_both_families_and_the_node_a_v6_tunnel_address() -> None:
    c = dual()
    a = c.pod("node0", "default/a")
    assert [ipaddress.ip_address(ip).version for ip in a.ips] == [4, 6]  # podIP is the IPv4 one
    assert a.ip == a.ips[0] and ipaddress.ip_address(v6(a)) in ipaddress.ip_network("fd00:10:244::/56")
    dp0, dp1 = c.dps["node0"], c.dps["node1"]
    assert dp0.vtep_address_v6 and dp1.vtep_address_v6 and dp0.vtep_address_v6 != dp1.vtep_address_v6
    # each node routes the other's IPv6 /122 block over vxlan.calico, next hop its IPv4 VTEP
    v6_routes = {cidr: via for cidr, via in dp0.remote_routes().items() if ":" in cidr}
    assert c.allocator is not None
    assert v6_routes == {c.allocator.blocks_of("node1", 6)[0]: NODES["node1"]}
    assert all(cidr.endswith("/122") for cidr in v6_routes)
    route = dp0.root.route(dp1.vtep_address_v6)
    assert route is not None and route["name"] == "vxlan.calico" and route["src"] == dp0.vtep_address_v6


def test_icmpv6_and_udp_between_pods_across_nodes_ride_the_ipv4_vxlan() -> None:
    c = dual()
    a = c.pod("node0", "default/a")
    b = c.pod("node1", "default/b")
    rec = EchoRecorder()
    ep = a.stack.icmp_open(rec)
    ep.send(v6(b), 1, b"x" * 56, c.net.now)
    assert c.net.run(lambda: bool(rec.replies), timeout=2.0)
    assert rec.replies[0][0] == v6(b)
    udp = DatagramRecorder()
    b.stack.udp_open(udp, ("::", 9000))
    sender = a.stack.udp_open(DatagramRecorder(), ("::", 0))
    sender.sendto(b"six", (v6(b), 9000), c.net.now)
    assert c.net.run(lambda: bool(udp.datagrams), timeout=2.0)
    assert udp.datagrams[0][1][0] == v6(a)  # no NAT between pods
    outer = [p for _, src, _, _, p in c.wire if src == "node0" and P.is_vxlan(p)]
    inner = [p[P.PAYLOAD][2] for p in outer]
    assert any(i[P.PROTO] == P.UDP and (i[P.SRC], i[P.DST]) == (v6(a), v6(b)) for i in inner)
    assert all(":" not in p[P.DST] and p[P.DST] == NODES["node1"] for p in outer)  # IPv4 underlay
    assert any(i[P.PROTO] == P.ICMPV6 for i in inner)


def test_tcp_over_ipv6_across_nodes() -> None:
    c = dual()
    a = c.pod("node0", "default/a")
    b = c.pod("node1", "default/b")
    accepted: list[StreamRecorder] = []

    def factory() -> StreamRecorder:
        accepted.append(StreamRecorder())
        return accepted[-1]

    b.stack.tcp_listen(factory, ("::", 8080))
    rec = StreamRecorder()
    conn = a.stack.tcp_connect(rec, (v6(b), 8080), c.net.now, timeout=5.0)
    assert c.net.run(lambda: rec.made or rec.lost, timeout=10.0) and rec.made
    data = bytes(range(256)) * 100
    conn.write(data, c.net.now)
    assert c.net.run(lambda: bool(accepted) and len(accepted[0].data) >= len(data), timeout=10.0)
    assert bytes(accepted[0].data) == data and accepted[0].conn.remote[0] == v6(a)


def test_windows_node_pods_ipv4_only_and_no_ipv6_routes_there() -> None:
    c = build_cluster("calico", pools=POOLS, oses={"node1": "windows"})
    w = c.pod("node1", "default/w")
    a = c.pod("node0", "default/a")
    assert len(w.ips) == 1 and ":" not in w.ip
    assert c.dps["node1"].vtep_address_v6 is None
    assert not any(":" in cidr for cidr in c.dps["node1"].remote_routes())  # no IPv6 on Windows
    assert c.allocator is not None and c.allocator.blocks_of("node1", 6) == []
    assert not any(":" in cidr for cidr in c.dps["node0"].remote_routes())  # node1 has no v6 block
    assert len(a.ips) == 2

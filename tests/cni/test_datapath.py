"""NodeDatapath over the in-memory fabric: VXLAN between nodes, the root hooks on one node,
TCP, and the Flannel / Calico pod → VM difference by mechanism (and its flips)."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from cni_topology import NODES, VM_OTHER, VM_SAME, Cluster, build_cluster, plain_host

from agents.cni import BlockAllocator, CniError, create_cni
from agents.netstack import FORWARD, POSTROUTING, PREROUTING, NetStack
from agents.netstack.fakenet import DatagramRecorder, EchoRecorder, StreamRecorder
from agents.node.datapath import EGRESS, INGRESS, NodeDatapath, PodNet
from broker import packets as P


def ping(c: Cluster, pod: PodNet, dst: str, *, timeout: float = 2.0) -> bool:
    rec = EchoRecorder()
    ep = pod.stack.icmp_open(rec)
    ep.send(dst, 1, b"x" * 56, c.net.now)
    ok = c.net.run(lambda: bool(rec.replies), timeout=timeout)
    ep.close()
    return ok


class UdpEcho(DatagramRecorder):
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        super().datagram_received(data, addr)
        self.endpoint.sendto(data, addr)


def tcp_exchange(c: Cluster, client: NetStack, server: NetStack, server_ip: str, data: bytes,
                 *, timeout: float = 30.0) -> tuple[StreamRecorder, list[StreamRecorder]]:
    accepted: list[StreamRecorder] = []

    def factory() -> StreamRecorder:
        accepted.append(StreamRecorder())
        return accepted[-1]

    server.tcp_listen(factory, ("0.0.0.0", 8080))
    rec = StreamRecorder()
    conn = client.tcp_connect(rec, (server_ip, 8080), c.net.now, timeout=5.0)
    if c.net.run(lambda: rec.made or rec.lost, timeout=timeout) and rec.made:
        conn.write(data, c.net.now)
        c.net.run(lambda: bool(accepted) and len(accepted[0].data) >= len(data), timeout=timeout)
    return rec, accepted


def recorder(log: list[tuple[str, str]]) -> Any:
    def hook(pkt: Any, now: float) -> Any:
        log.append((pkt[0], pkt[1]))
        return pkt
    return hook


def source_recorder(log: list[str]) -> Any:
    def hook(pkt: Any, now: float) -> Any:
        log.append(pkt[0])
        return pkt
    return hook


def sent_by(c: Cluster, name: str) -> list[Any]:
    return [pkt for _, src, _, _, pkt in c.wire if src == name]


# --- pod to pod ---------------------------------------------------------------------------------


def test_pod_to_pod_across_nodes_is_vxlan_with_honest_sizes(cluster: Cluster) -> None:
    a = cluster.pod("node0", "default/a")
    b = cluster.pod("node1", "default/b")
    rec = DatagramRecorder()
    b.stack.udp_open(rec, ("0.0.0.0", 9000))
    sender = a.stack.udp_open(DatagramRecorder())
    payload = b"p" * (1450 - P.IPV4_HEADER - P.UDP_HEADER)  # a full 1450-byte pod packet
    sender.sendto(payload, (b.ip, 9000), cluster.net.now)
    assert cluster.net.run(lambda: bool(rec.datagrams), timeout=1.0)
    assert rec.datagrams[0] == (payload, (a.ip, sender.local[1]))  # pod IP kept: no NAT

    outer = [p for p in sent_by(cluster, "node0") if P.is_vxlan(p)]
    assert len(outer) == 1, [P.describe(p) for p in sent_by(cluster, "node0")]
    pkt = outer[0]
    src_mac, dst_mac, inner = pkt[P.PAYLOAD]
    assert (pkt[P.SRC], pkt[P.DST]) == (NODES["node0"], NODES["node1"])
    assert (pkt[P.PROTO], pkt[P.DPORT], pkt[P.INFO]) == (P.UDP, 4789, 4096)
    assert inner[P.SIZE] == 1450 and pkt[P.SIZE] == 1500  # 20 + 8 + 8 + 14 bytes of VXLAN
    assert (inner[P.SRC], inner[P.DST]) == (a.ip, b.ip)
    assert src_mac == cluster.dps["node0"].vtep_mac and dst_mac == cluster.dps["node1"].vtep_mac
    assert inner[P.TTL] == 63  # one forwarding hop (node0's root) before the tunnel
    assert cluster.dps["node1"].counters["vxlan_rx"] == 1


def test_a_pod_packet_over_the_pod_mtu_is_refused(cluster: Cluster) -> None:
    a = cluster.pod("node0", "default/a")
    b = cluster.pod("node1", "default/b")
    sender = a.stack.udp_open(DatagramRecorder())
    with pytest.raises(OSError) as err:
        sender.sendto(b"p" * (1451 - 28), (b.ip, 9000), cluster.net.now)
    assert err.value.errno == errno.EMSGSIZE


def test_pod_to_pod_on_one_node_passes_the_root_hooks(cluster: Cluster) -> None:
    a = cluster.pod("node0", "default/a")
    c = cluster.pod("node0", "default/c")
    root = cluster.dps["node0"].root
    seen: dict[str, list[tuple[str, str]]] = {PREROUTING: [], FORWARD: [], POSTROUTING: []}
    for point, log in seen.items():
        root.hooks[point].append(recorder(log))
    assert ping(cluster, a, c.ip)
    for point, log in seen.items():
        assert (a.ip, c.ip) in log and (c.ip, a.ip) in log, point
    assert sent_by(cluster, "node0") == []  # nothing touched the wire


def test_tcp_between_pods_across_nodes_and_on_one_node(cluster: Cluster) -> None:
    a = cluster.pod("node0", "default/a")
    b = cluster.pod("node1", "default/b")
    c = cluster.pod("node0", "default/c")
    data = bytes(range(256)) * 800  # 200 kB: many full-MSS segments over the 1450 MTU
    for server in (b, c):
        rec, accepted = tcp_exchange(cluster, a.stack, server.stack, server.ip, data)
        assert rec.made and bytes(accepted[0].data) == data
        assert accepted[0].conn.remote == (a.ip, rec.conn.local[1])
        assert rec.conn.info()["mss"] == 1450 - 40


def test_policy_slot_sees_every_packet_entering_and_leaving_a_pod(cluster: Cluster) -> None:
    a = cluster.pod("node0", "default/a")
    c = cluster.pod("node0", "default/c")
    b = cluster.pod("node1", "default/b")
    dp0 = cluster.dps["node0"]
    seen: list[tuple[str, str, str, str]] = []

    def policy(pod: PodNet, direction: str, pkt: Any, now: float) -> Any:
        seen.append((pod.key, direction, pkt[0], pkt[1]))
        return pkt

    dp0.policy = policy
    assert ping(cluster, a, c.ip) and ping(cluster, a, b.ip)
    assert ("default/a", EGRESS, a.ip, c.ip) in seen and ("default/c", INGRESS, a.ip, c.ip) in seen
    assert ("default/c", EGRESS, c.ip, a.ip) in seen and ("default/a", INGRESS, c.ip, a.ip) in seen
    assert ("default/a", INGRESS, b.ip, a.ip) in seen

    dp0.policy = lambda pod, direction, pkt, now: None if pod.key == "default/c" and direction == INGRESS else pkt
    assert not ping(cluster, a, c.ip, timeout=1.0)  # a policy drop: the client times out
    assert dp0.counters["policy_drops"] >= 1


# --- pod to VM: the Flannel / Calico difference, by mechanism ------------------------------------

CASES = [
    # plugin, exceptions (None: the plugin's defaults), nat_outgoing, VM, works
    ("flannel", None, True, VM_SAME, False),     # node subnet excepted: the VM answers the pod IP
    ("flannel", None, True, VM_OTHER, True),     # masqueraded to the node IP
    ("calico", None, True, VM_SAME, True),       # natOutgoing: all of it leaving the pool
    ("calico", None, True, VM_OTHER, True),
    # flips of the setting, no code branch on the plugin's name
    ("flannel", ["10.244.0.0/16", "10.96.0.0/12"], True, VM_SAME, True),
    ("calico", ["10.244.0.0/16", "172.16.0.0/24"], True, VM_SAME, False),
    ("calico", None, False, VM_OTHER, False),    # natOutgoing off
]


@pytest.mark.parametrize(("plugin", "exceptions", "nat_outgoing", "vm_ip", "works"), CASES)
def test_pod_to_vm(plugin: str, exceptions: list[str] | None, nat_outgoing: bool, vm_ip: str,
                   works: bool) -> None:
    c = build_cluster(plugin, exceptions=exceptions, nat_outgoing=nat_outgoing)
    pod = c.pod("node0", "default/client")
    vm = c.vm_same if vm_ip == VM_SAME else c.vm_other
    seen_sources: list[str] = []
    vm.hooks[PREROUTING].append(source_recorder(seen_sources))

    assert ping(c, pod, vm_ip) is works
    rec, accepted = tcp_exchange(c, pod.stack, vm, vm_ip, b"GET / HTTP/1.1\r\n\r\n", timeout=20.0)
    assert rec.made is works
    if works:
        assert bytes(accepted[0].data) == b"GET / HTTP/1.1\r\n\r\n"
        assert set(seen_sources) == {NODES["node0"]}  # the VM saw the node, never the pod
    else:
        assert isinstance(rec.exc, TimeoutError)  # no answer at all: a timeout, not a refusal
        assert pod.ip in seen_sources                 # the request did arrive, from the pod IP,
        assert c.router.drops["no_route"] > 0         # and the reply died at the router


def test_a_router_route_to_the_pod_cidr_flips_flannel_too() -> None:
    c = build_cluster("flannel")
    pod = c.pod("node0", "default/client")
    assert not ping(c, pod, VM_SAME, timeout=1.0)
    c.router.add_route("10.244.0.0/24", via=NODES["node0"])  # the return path, by hand
    assert ping(c, pod, VM_SAME)


def test_a_vm_with_a_route_to_the_pods_reaches_a_pod_and_its_replies_keep_the_pod_ip() -> None:
    c = build_cluster("calico")
    pod = c.pod("node0", "default/server")
    block = c.allocator.blocks_of("node0")[0] if c.allocator else ""
    c.router.add_route(block, via=NODES["node0"])
    rec, accepted = tcp_exchange(c, c.vm_other, pod.stack, pod.ip, b"hi")
    assert rec.made and bytes(accepted[0].data) == b"hi"
    assert rec.conn.remote == (pod.ip, 8080)
    assert c.dps["node0"].masquerade.counters["replies_kept"] > 0


def test_masquerade_replies_and_icmp_errors_reach_the_pod() -> None:
    c = build_cluster("calico")
    pod = c.pod("node0", "default/client")
    rec = DatagramRecorder()
    ep = pod.stack.udp_open(rec)
    c.vm_other.udp_open(UdpEcho(), ("0.0.0.0", 7))
    ep.sendto(b"hello", (VM_OTHER, 7), c.net.now)
    assert c.net.run(lambda: bool(rec.datagrams), timeout=1.0)
    assert rec.datagrams[0] == (b"hello", (VM_OTHER, 7))
    ep.sendto(b"anyone?", (VM_OTHER, 9), c.net.now)  # closed port: ICMP port unreachable
    assert c.net.run(lambda: bool(rec.errors), timeout=1.0)
    assert isinstance(rec.errors[0], ConnectionRefusedError)
    assert c.dps["node0"].masquerade.table.counters["related_packets"] == 1


# --- lifecycle, routes, VXLAN checks ----------------------------------------------------------


def test_remove_pod_releases_the_address_and_unplugs_it(cluster: Cluster) -> None:
    dp = cluster.dps["node0"]
    a = cluster.pod("node0", "default/a")
    b = cluster.pod("node1", "default/b")
    assert dp.add_pod("default/a") is a  # CNI ADD again: the same pod
    veth = a.veth
    assert dp.remove_pod("default/a", cluster.net.now) == [a.ip]
    assert veth not in dp.root.interfaces and dp.pod_by_ip(a.ip) is None
    assert not any(r["dev"] == veth for r in dp.root.routes())
    assert not ping(cluster, b, a.ip, timeout=1.0)
    again = dp.add_pod("default/a2")
    assert again.ip != a.ip  # neither host-local nor Calico hands a released address out at once


def test_remote_routes_follow_node_objects() -> None:
    c = build_cluster("flannel")
    dp0 = c.dps["node0"]
    assert dp0.remote_routes() == {"10.244.1.0/24": NODES["node1"]}
    route = dp0.root.route("10.244.1.7")
    assert route is not None and route["name"] == "flannel.4096" and route["via"] == NODES["node1"]
    assert route["mtu"] == 1450
    assert dp0.set_remote_nodes([]) == {"added": [], "removed": ["10.244.1.0/24"]}
    route = dp0.root.route("10.244.1.7")
    assert route is not None and route["name"] == "eth0"  # back to the default route


def test_calico_routes_per_block_and_a_second_block_when_full() -> None:
    c = build_cluster("calico")
    pods = [c.dps["node1"].add_pod(f"default/p{i}") for i in range(64)]
    c.sync_nodes()
    blocks1 = c.allocator.blocks_of("node1") if c.allocator else []
    assert len(blocks1) == 2  # the tunnel address + 63 pods fill a /26
    assert set(c.dps["node0"].remote_routes()) == set(blocks1)
    a = c.pod("node0", "default/a")
    last = pods[-1]
    assert last.ip.startswith(blocks1[1].rsplit(".", 1)[0]) and ping(c, a, last.ip)


def test_calico_windows_node_pods() -> None:
    c = build_cluster("calico", oses={"node1": "windows"})
    w = c.pod("node1", "default/win")
    block = c.allocator.blocks_of("node1")[0] if c.allocator else ""
    base = block.rsplit(".", 1)[0] + "." + str(int(block.split("/")[0].rsplit(".", 1)[1]) + 3)
    assert w.ip == base and w.address.addresses == (f"{w.ip}/26",)  # .0-.2 are reserved
    assert w.address.gateways[4].endswith("." + str(int(block.split("/")[0].rsplit(".", 1)[1]) + 1))
    a = c.pod("node0", "default/a")
    assert ping(c, a, w.ip)


def test_vxlan_with_another_vni_is_dropped() -> None:
    c = build_cluster("flannel")
    b = c.pod("node1", "default/b")
    dp1 = c.dps["node1"]
    inner = P.echo("10.244.0.9", b.ip, True, 1, 1)
    for vni, mac in ((1, dp1.vtep_mac), (4096, "02:00:00:00:00:99")):
        bad = P.vxlan(NODES["node0"], NODES["node1"], 40000, vni, "0e:2a:00:00:00:01", mac, inner)
        dp1.receive(0, [bad], c.net.now)
        assert dp1.pump(c.net.now) == []
    assert dp1.counters["vxlan_bad_vni"] == 1 and dp1.counters["vxlan_bad_mac"] == 1
    assert b.stack.counters["icmp_in"] == 0


def test_flannel_refuses_ipv6() -> None:
    with pytest.raises(CniError, match="IPv6"):
        create_cni("flannel", node_name="n", node_ip="172.16.0.11", pod_cidr="fd00:10:244:1::/64",
                   cluster_cidr="fd00:10:244::/56")
    with pytest.raises(CniError, match="IPv6"):
        create_cni("flannel", node_name="n", node_ip="172.16.0.11", pod_cidr="fd00:10:244:1::/64")


def test_calico_ipv6_pool_gives_linux_pods_both_families() -> None:
    alloc = BlockAllocator(["10.244.0.0/16", "fd00:10:244::/56"])
    root = plain_host("node0", "172.16.0.11", "172.16.0.1")
    dp = NodeDatapath(root, create_cni("calico", node_name="node0", node_ip="172.16.0.11",
                                       allocator=alloc), "172.16.0.11")
    a, b = dp.add_pod("default/a"), dp.add_pod("default/b")
    assert [":" in ip for ip in a.ips] == [False, True]
    rec = EchoRecorder()
    a.stack.icmp_open(rec).send(b.ips[1], 1, b"six", 0.0)
    assert dp.pump(0.0) == [] and rec.replies and rec.replies[0][0] == b.ips[1]
    w = create_cni("calico", node_name="win", node_ip="172.16.0.13", allocator=alloc, os="windows")
    assert len(w.allocate("default/w").ips) == 1  # Calico for Windows: no IPv6

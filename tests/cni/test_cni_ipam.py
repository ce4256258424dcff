"""IPAM and settings of the CNI plugins: Flannel's host-local /24, Calico's /26 blocks."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.cni import (
    RETIRED_WARNING,
    WINDOWS_RESERVED_HANDLE,
    BlockAllocator,
    CalicoPlugin,
    CniError,
    FlannelPlugin,
    IpamExhausted,
    cni_plugin,
    cni_plugins,
    create_cni,
)


def flannel(**kw: object) -> FlannelPlugin:
    args = {"node_name": "node0", "node_ip": "172.16.0.11", "node_subnet": "172.16.0.0/24",
            "pod_cidr": "10.244.3.0/24", **kw}
    return create_cni("flannel", **args)  # type: ignore[return-value]


# --- registry and settings ------------------------------------------------------------------


def test_registry() -> None:
    assert cni_plugins() == ["calico", "flannel"]
    assert cni_plugin("calico") is CalicoPlugin
    with pytest.raises(CniError, match="primaryNetworkPlugin: unknown plugin 'cilium'; expected calico|flannel"):
        cni_plugin("cilium")


SETTINGS = [
    # plugin, device, policy, ipv6, warning
    ("flannel", "flannel.4096", False, False, RETIRED_WARNING),
    ("calico", "vxlan.calico", True, True, None),
]


@pytest.mark.parametrize(("name", "device", "policy", "ipv6", "warning"), SETTINGS)
def test_plugin_settings(name: str, device: str, policy: bool, ipv6: bool, warning: str | None) -> None:
    cls = cni_plugin(name)
    assert (cls.vni, cls.vxlan_port, cls.mtu) == (4096, 4789, 1450)  # same on every node
    assert (cls.vxlan_device, cls.supports_policy, cls.supports_ipv6, cls.warning) == (device, policy, ipv6, warning)


def test_default_masquerade_exceptions() -> None:
    assert flannel().masquerade_exceptions == ["10.244.0.0/16", "10.96.0.0/12", "172.16.0.0/24"]
    calico = create_cni("calico", node_name="n", node_ip="172.16.0.11", node_subnet="172.16.0.0/24")
    assert calico.masquerade_exceptions == ["10.244.0.0/16"]
    assert calico.masquerade_sources == ["10.244.0.0/16"]
    off = create_cni("calico", node_name="n", node_ip="172.16.0.11", nat_outgoing=False)
    assert off.masquerade_sources == []
    assert flannel(masquerade_exceptions=["10.244.0.0/16"]).masquerade_exceptions == ["10.244.0.0/16"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pod_cidr": "fd00::/64"}, "pod_cidr: flannel does not support IPv6"),
    ({"pod_cidr": "10.245.0.0/24"}, "pod_cidr: 10.245.0.0/24 is not inside the cluster CIDR"),
    ({"os": "macos"}, "os: expected linux|windows"),
])
def test_flannel_refuses(kwargs: dict, message: str) -> None:
    with pytest.raises(CniError, match=message.replace("|", r"\|")):
        flannel(**kwargs)


# --- Flannel: host-local on the node's /24 ---------------------------------------------------


def test_flannel_host_local() -> None:
    f = flannel()
    assert f.bridge() == ("cni0", "10.244.3.1/24") and f.vtep_address() == "10.244.3.0"
    a = f.allocate("ns/a")
    assert a.addresses == ("10.244.3.2/24",) and a.gateways == {4: "10.244.3.1"}
    assert f.allocate("ns/a") == a  # idempotent
    assert f.allocate("ns/b").ip == "10.244.3.3"
    assert f.release("ns/a") == ["10.244.3.2"] and f.release("ns/a") == []
    assert f.allocate("ns/c").ip == "10.244.3.4"  # round robin from the last reserved
    state = f.state()
    g = flannel()
    g.load(state)
    assert g.allocate("ns/d").ip == "10.244.3.5" and g.allocations()["ns/b"] == "10.244.3.3"


def test_flannel_exhaustion_and_wrap() -> None:
    f = flannel(pod_cidr="10.244.3.0/29")  # .2 .. .6
    ips = [f.allocate(f"ns/p{i}").ip for i in range(5)]
    assert ips == [f"10.244.3.{i}" for i in range(2, 7)]
    with pytest.raises(IpamExhausted, match="no free address in 10.244.3.0/29"):
        f.allocate("ns/more")
    f.release("ns/p1")
    assert f.allocate("ns/more").ip == "10.244.3.3"


def test_flannel_learns_remote_cidrs_from_node_objects() -> None:
    f = flannel()
    nodes = [
        {"metadata": {"name": "node0"}, "spec": {"podCIDR": "10.244.3.0/24"},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.16.0.11"}]}},
        {"metadata": {"name": "node1"}, "spec": {"podCIDRs": ["10.244.4.0/24", "fd00::/64"]},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.16.0.12"}]}},
        {"metadata": {"name": "node2"}, "spec": {},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.16.0.13"}]}},
    ]
    assert f.remote_nodes(nodes) == [("node1", "172.16.0.12", ["10.244.4.0/24"])]


# --- Calico: blocks -------------------------------------------------------------------------


def test_calico_blocks_of_26_lowest_first_and_a_new_one_when_full() -> None:
    alloc = BlockAllocator(["10.244.0.0/16"])
    ips = [alloc.allocate("n1", f"ns/p{i}") for i in range(65)]
    assert alloc.blocks_of("n1") == ["10.244.0.0/26", "10.244.0.64/26"]
    assert ips[0] == "10.244.0.0" and ips[63] == "10.244.0.63" and ips[64] == "10.244.0.64"
    assert alloc.allocate("n2", "ns/q") == "10.244.0.128"  # the next free block, for n2
    assert alloc.affinities()["10.244.0.128/26"] == "n2"
    assert len(set(ips)) == 65


def test_calico_windows_block_reserves_four() -> None:
    alloc = BlockAllocator()
    got = [alloc.allocate("win", f"ns/p{i}", windows=True) for i in range(61)]
    block = alloc.block("10.244.0.0/26")
    reserved = [i for i, h in enumerate(block.handles) if h == WINDOWS_RESERVED_HANDLE]
    assert reserved == [0, 1, 2, 63]  # network, gateway, .2 and the last address
    assert got[0] == "10.244.0.3" and got[59] == "10.244.0.62"
    assert got[60] == "10.244.0.67"  # 60 per block: the 61st opens the next block after its own .0-.2
    with pytest.raises(CniError, match="reserved"):
        alloc.allocate("win", WINDOWS_RESERVED_HANDLE)


def test_calico_release_goes_to_the_back_of_the_queue() -> None:
    alloc = BlockAllocator()
    a = alloc.allocate("n1", "ns/a")
    b = alloc.allocate("n1", "ns/b")
    assert alloc.allocate("n1", "ns/b") == b  # idempotent per handle
    assert alloc.release("ns/a") == [a] and alloc.release("ns/a") == []
    assert alloc.allocate("n1", "ns/c") == "10.244.0.2"  # not the released .0
    assert alloc.blocks_of("n1") == ["10.244.0.0/26"]  # the block stays affine


def test_calico_pool_exhaustion_and_release_node() -> None:
    alloc = BlockAllocator(["10.244.0.0/25"])
    for i in range(128):
        alloc.allocate("n1" if i < 64 else "n2", f"ns/p{i}")
    with pytest.raises(IpamExhausted, match="no free /26 block"):
        alloc.allocate("n1", "ns/more")
    assert alloc.release_node("n1") == ["10.244.0.0/26"]
    assert alloc.addresses("ns/p0") == [] and alloc.allocate("n3", "ns/more") == "10.244.0.0"


def test_calico_persistence_round_trip() -> None:
    alloc = BlockAllocator(["10.244.0.0/16", "fd00:10:244::/56"])
    for i in range(70):
        alloc.allocate("n1", f"ns/p{i}")
    alloc.allocate("w1", "ns/w", windows=True)
    alloc.allocate("n1", "ns/p0", 6)
    alloc.release("ns/p3")
    again = BlockAllocator(["10.244.0.0/16", "fd00:10:244::/56"])
    again.load(alloc.claimed_blocks())
    assert again.claimed_blocks() == alloc.claimed_blocks()
    assert again.addresses("ns/p0") == alloc.addresses("ns/p0")
    assert again.allocate("n1", "ns/next") == alloc.allocate("n1", "ns/next")
    assert again.blocks_of("n1", 6) == ["fd00:10:244::/122"]


def test_calico_plugin_tunnel_address_and_veth_names() -> None:
    alloc = BlockAllocator()
    linux = create_cni("calico", node_name="n1", node_ip="172.16.0.11", allocator=alloc)
    assert linux.vtep_address() == "10.244.0.0"  # IPAM handle vxlan-tunnel-addr-n1
    assert alloc.addresses("vxlan-tunnel-addr-n1") == ["10.244.0.0"]
    pod = linux.allocate("default/web")
    assert pod.addresses == ("10.244.0.1/32",) and pod.gateways == {4: "169.254.1.1"}
    # cali + 11 hex digits of the SHA-1 of "<namespace>.<pod>" (Calico's VethNameForWorkload)
    assert linux.host_veth_name("default/web") == "cali" + __import__("hashlib").sha1(b"default.web").hexdigest()[:11]
    assert len(linux.host_veth_name("default/web")) <= 15  # IFNAMSIZ
    win = create_cni("calico", node_name="w1", node_ip="172.16.0.12", allocator=alloc, os="windows")
    assert win.vtep_address() == "10.244.0.65"  # the reserved gateway of its block
    assert win.allocate("default/iis").addresses == ("10.244.0.67/26",)
    assert linux.remote_nodes([{"metadata": {"name": "w1"}, "status": {
        "addresses": [{"type": "InternalIP", "address": "172.16.0.12"}]}}]) == [
        ("w1", "172.16.0.12", ["10.244.0.64/26"])]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["n1", "n2", "n3"]), st.integers(0, 40), st.booleans()),
                max_size=120))
def test_calico_addresses_are_unique_and_inside_their_nodes_blocks(ops: list[tuple[str, int, bool]]) -> None:
    alloc = BlockAllocator(["10.244.0.0/22"])
    held: dict[str, tuple[str, str]] = {}
    for node, pod, release in ops:
        handle = f"ns/p{pod}"
        if release:
            alloc.release(handle)
            held.pop(handle, None)
            continue
        if handle in held:
            node = held[handle][0]
        ip = alloc.allocate(node, handle, windows=node == "n3")
        assert held.setdefault(handle, (node, ip)) == (node, ip)
    ips = [ip for _, ip in held.values()]
    assert len(ips) == len(set(ips))
    for node, ip in held.values():
        blocks = [ipaddress.ip_network(c) for c in alloc.blocks_of(node)]
        assert any(ipaddress.ip_address(ip) in b for b in blocks)
        if node == "n3":  # never a Windows-reserved address
            assert int(ipaddress.ip_address(ip)) % 64 not in (0, 1, 2, 63)

"""MOC's sans-IO pools: network validation, cluster validation, sizing, allocation."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.moc import pools as P

STATIC: dict[str, Any] = {
    "name": "aks-net", "vswitchName": "External", "ipAddressPrefix": "172.16.0.0/24",
    "gateway": "172.16.0.1", "dnsServers": ["172.16.0.2"], "vlanID": 0,
    "k8sNodeIpPoolStart": "172.16.0.20", "k8sNodeIpPoolEnd": "172.16.0.99",
    "vipPoolStart": "172.16.0.150", "vipPoolEnd": "172.16.0.199",
}
DHCP: dict[str, Any] = {
    "name": "dhcp-net", "vswitchName": "External", "ipAddressPrefix": "172.16.0.0/24",
    "gateway": "172.16.0.1", "dhcpScopeStart": "172.16.0.10", "dhcpScopeEnd": "172.16.0.99",
    "vipPoolStart": "172.16.0.150", "vipPoolEnd": "172.16.0.199",
}


def net(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = {**base, **changes}
    return {k: v for k, v in doc.items() if v is not None}


def refused(doc: dict[str, Any], message: str, others: list[P.NetworkSpec] | None = None,
            reserved: dict[str, str] | None = None) -> None:
    with pytest.raises(P.PoolError) as info:
        P.parse_network(doc, others or [], reserved)
    assert str(info.value) == message


# --- networks ------------------------------------------------------------------------------


def test_a_static_and_a_dhcp_network_parse_and_round_trip() -> None:
    spec = P.parse_network(STATIC)
    assert spec.model == "static" and spec.node_pool is not None and spec.node_pool.size == 80
    assert str(spec.vip_pool) == "172.16.0.150-172.16.0.199" and spec.dns_servers == ("172.16.0.2",)
    assert P.parse_network(spec.doc()) == spec
    dhcp = P.parse_network(DHCP)
    assert dhcp.model == "dhcp" and dhcp.node_pool is None and dhcp.dns_servers == ()
    assert P.parse_network(dhcp.doc()) == dhcp


@pytest.mark.parametrize(("changes", "message"), [
    ({"ipAddressPrefix": None}, "ipAddressPrefix: required"),
    ({"ipAddressPrefix": "172.16.0.0/33"}, "ipAddressPrefix: '172.16.0.0/33' is not a network prefix"),
    ({"ipAddressPrefix": "172.16.0.5/24"}, "ipAddressPrefix: 172.16.0.5/24 has host bits set"),
    ({"gateway": None}, "gateway: required"),
    ({"gateway": "10.0.0.1"}, "gateway: 10.0.0.1 is outside ipAddressPrefix 172.16.0.0/24"),
    ({"gateway": "172.16.0.255"}, "gateway: 172.16.0.255 is the broadcast address of 172.16.0.0/24"),
    ({"gateway": "172.16.0.0"}, "gateway: 172.16.0.0 is the subnet address of 172.16.0.0/24"),
    ({"dnsServers": None}, "dnsServers: required (1 to 3 addresses) with a static IP pool"),
    ({"dnsServers": []}, "dnsServers: expected 1 to 3 addresses, got []"),
    ({"dnsServers": ["1.1.1.1", "8.8.8.8", "9.9.9.9", "1.0.0.1"]},
     "dnsServers: expected 1 to 3 addresses, got ['1.1.1.1', '8.8.8.8', '9.9.9.9', '1.0.0.1']"),
    ({"dnsServers": ["dns.local"]}, "dnsServers[0]: 'dns.local' is not an IP address"),
    ({"vlanID": 4095}, "vlanID: expected 0..4094, got 4095"),
    ({"vlanID": "7"}, "vlanID: expected an integer, got '7'"),
    ({"k8sNodeIpPoolEnd": None}, "k8sNodeIpPoolEnd: required with k8sNodeIpPoolStart"),
    ({"k8sNodeIpPoolStart": None, "k8sNodeIpPoolEnd": None},
     "k8sNodeIpPoolStart: required (static IP model), or dhcpScopeStart/dhcpScopeEnd (DHCP model)"),
    ({"k8sNodeIpPoolStart": "172.16.1.20"}, "k8sNodeIpPoolStart: 172.16.1.20 is outside ipAddressPrefix 172.16.0.0/24"),
    ({"k8sNodeIpPoolEnd": "172.16.0.19"}, "k8sNodeIpPoolEnd: 172.16.0.19 is below k8sNodeIpPoolStart 172.16.0.20"),
    ({"k8sNodeIpPoolStart": "172.16.0.1"},
     "k8sNodeIpPoolStart: the node IP pool 172.16.0.1-172.16.0.99 contains the gateway 172.16.0.1"),
    ({"vipPoolStart": None, "vipPoolEnd": None},
     "vipPoolStart: required (the API server and LoadBalancer Services take their VIPs from it)"),
    ({"vipPoolEnd": None}, "vipPoolEnd: required with vipPoolStart"),
    ({"vipPoolEnd": "172.17.0.9"}, "vipPoolEnd: 172.17.0.9 is outside ipAddressPrefix 172.16.0.0/24"),
    ({"vipPoolStart": "172.16.0.90"}, "vipPoolStart: 172.16.0.90 lies inside the node IP pool 172.16.0.20-172.16.0.99"),
    ({"vipPoolStart": "172.16.0.5", "vipPoolEnd": "172.16.0.25"},
     "vipPoolEnd: 172.16.0.25 lies inside the node IP pool 172.16.0.20-172.16.0.99"),
    ({"vipPoolStart": "172.16.0.5", "vipPoolEnd": "172.16.0.120"},
     "vipPoolStart: the VIP pool 172.16.0.5-172.16.0.120 encloses the node IP pool 172.16.0.20-172.16.0.99"),
    ({"dhcpScopeStart": "172.16.0.100", "dhcpScopeEnd": "172.16.0.110"},
     "dhcpScopeStart: a network is either static (k8sNodeIpPoolStart/End) or DHCP (dhcpScopeStart/End), not both"),
    ({"name": "Aks_Net"}, "name: 'Aks_Net' is not a network name (lower-case letters, digits and '-')"),
    ({"name": None}, "name: required, lower-case letters, digits and '-'"),
    ({"vipPool": "x"}, "vipPool: unknown key (known: dhcpScopeEnd, dhcpScopeStart, dnsServers, external, gateway, "
                       "ipAddressPrefix, k8sNodeIpPoolEnd, k8sNodeIpPoolStart, mtu, name, vipAllocation, "
                       "vipPoolEnd, vipPoolStart, "
                       "vlanID, vswitchName)"),
])
def test_static_network_rules(changes: dict[str, Any], message: str) -> None:
    refused(net(STATIC, **changes), message)


@pytest.mark.parametrize(("changes", "message"), [
    ({"vipPoolStart": "172.16.0.50"}, "vipPoolStart: 172.16.0.50 lies inside the DHCP scope 172.16.0.10-172.16.0.99"),
    ({"vipPoolStart": "172.16.0.2", "vipPoolEnd": "172.16.0.12"},
     "vipPoolEnd: 172.16.0.12 lies inside the DHCP scope 172.16.0.10-172.16.0.99"),
    ({"vipPoolStart": "172.16.0.2", "vipPoolEnd": "172.16.0.200"},
     "vipPoolStart: the VIP pool 172.16.0.2-172.16.0.200 encloses the DHCP scope 172.16.0.10-172.16.0.99"),
    ({"dhcpScopeEnd": None}, "dhcpScopeEnd: required with dhcpScopeStart"),
    ({"dhcpScopeStart": "172.16.0.1"},
     "dhcpScopeStart: the DHCP scope 172.16.0.1-172.16.0.99 contains the gateway 172.16.0.1"),
    ({"vipPoolStart": None, "vipPoolEnd": None},
     "vipPoolStart: required (the API server and LoadBalancer Services take their VIPs from it)"),
])
def test_dhcp_network_rules(changes: dict[str, Any], message: str) -> None:
    refused(net(DHCP, **changes), message)


def test_networks_on_one_subnet_must_not_share_pool_addresses() -> None:
    first = P.parse_network(STATIC)
    second = net(STATIC, name="aks-net2", k8sNodeIpPoolStart="172.16.0.100", k8sNodeIpPoolEnd="172.16.0.140",
                 vipPoolStart="172.16.0.200", vipPoolEnd="172.16.0.210")
    ok = P.parse_network(second, [first])
    assert P.segment_of(ok, [(first, "aks-net")]) == "aks-net"  # one wire for one subnet
    refused(net(second, vipPoolStart="172.16.0.190"),
            "vipPoolStart: the VIP pool 172.16.0.190-172.16.0.210 overlaps the VIP pool 172.16.0.150-172.16.0.199 "
            "of network aks-net", [first])
    refused(net(second, k8sNodeIpPoolStart="172.16.0.90"),
            "k8sNodeIpPoolStart: the node IP pool 172.16.0.90-172.16.0.140 overlaps the node IP pool "
            "172.16.0.20-172.16.0.99 of network aks-net", [first])
    refused(net(second, name="aks-net"), "name: network aks-net already exists", [first])
    refused(net(second, ipAddressPrefix="172.16.0.0/16"),
            "ipAddressPrefix: 172.16.0.0/16 overlaps network aks-net (172.16.0.0/24) without being the same subnet",
            [first])
    refused(net(second, vlanID=7),
            "vlanID: 7 differs from network aks-net on the same subnet 172.16.0.0/24 (vlanID 0)", [first])
    other_subnet = P.parse_network(net(STATIC, name="other", ipAddressPrefix="10.0.0.0/24", gateway="10.0.0.1",
                                       k8sNodeIpPoolStart="10.0.0.20", k8sNodeIpPoolEnd="10.0.0.99",
                                       vipPoolStart="10.0.0.150", vipPoolEnd="10.0.0.199"), [first])
    assert P.segment_of(other_subnet, [(first, "aks-net")]) == "other"


def test_no_pool_may_hold_the_cloud_agents_address() -> None:
    refused(net(STATIC), "k8sNodeIpPoolStart: the node IP pool 172.16.0.20-172.16.0.99 contains 172.16.0.30 "
                         "(the cloud agent's address)", reserved={"172.16.0.30": "the cloud agent's address"})
    assert P.parse_network(STATIC, [], {"172.16.0.5": "the cloud agent's address"}).name == "aks-net"


def test_external_networks_have_no_pools() -> None:
    ext = P.parse_network({"name": "internet", "ipAddressPrefix": "203.0.113.0/24", "gateway": "203.0.113.1",
                           "external": True})
    assert ext.model == "external"
    refused({"name": "internet", "ipAddressPrefix": "203.0.113.0/24", "gateway": "203.0.113.1", "external": True,
             "vipPoolStart": "203.0.113.10", "vipPoolEnd": "203.0.113.20"},
            "vipPoolStart: an external network has no AKS pools")


# --- clusters ------------------------------------------------------------------------------


def cluster(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "cluster1", "vnet": "aks-net",
                           "nodePools": [{"name": "cluster1-linux", "osType": "linux", "nodeCount": 2}]}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_cluster_defaults_follow_new_akshcicluster() -> None:
    spec, warnings = P.parse_cluster({"name": "mycluster"}, ["aks-net"])
    assert warnings == []
    assert (spec.vnet, spec.network_plugin, spec.control_plane_count, spec.lb_sku, spec.max_pods) == \
        ("aks-net", "calico", 1, "HAProxy", 110)
    assert spec.node_pools == (P.NodePoolSpec(name="mycluster-linux", os_type="linux", count=1),)
    flags, _ = P.parse_cluster({"name": "c2", "vnet": "aks-net", "nodePoolName": "win", "osType": "Windows",
                                "nodeCount": 3}, ["aks-net", "other"])
    assert flags.node_pools == (P.NodePoolSpec(name="win", os_type="windows", count=3),)


def test_flannel_is_accepted_with_a_warning() -> None:
    spec, warnings = P.parse_cluster(cluster(primaryNetworkPlugin="Flannel"), ["aks-net"])
    assert spec.network_plugin == "flannel"
    assert warnings == ["Flannel was retired in December 2023; Calico is the default and recommended network plugin"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "my-cluster"}, "name: 'my-cluster' must not contain hyphens (New-AksHciCluster)"),
    ({"name": None}, "name: required"),
    ({"name": "Cluster1"}, "name: 'Cluster1' is not a cluster name (a lower-case letter, then lower-case letters "
                           "and digits, at most 47 characters)"),
    ({"controlPlaneNodeCount": 3}, "controlPlaneNodeCount: 3 control-plane nodes are not supported yet (only 1)"),
    ({"controlPlaneNodeCount": 0}, "controlPlaneNodeCount: expected 1..5, got 0"),
    ({"nodeMaxPodCount": 50}, "nodeMaxPodCount: must be greater than 50 and at most 250, got 50"),
    ({"primaryNetworkPlugin": "cilium"}, "primaryNetworkPlugin: expected calico or flannel, got 'cilium'"),
    ({"loadBalancerSku": "F5"}, "loadBalancerSku: expected HAProxy or none, got 'F5'"),
    ({"vnet": "nope"}, "vnet: no network named 'nope' (networks: aks-net)"),
    ({"nodePools": []}, "nodePools: expected a non-empty list"),
    ({"nodePools": [{"name": "p", "osType": "macos"}]}, "nodePools[0].osType: expected linux or windows, got 'macos'"),
    ({"nodePools": [{"name": "p", "nodeCount": -1}]}, "nodePools[0].nodeCount: expected an integer 0..1000, got -1"),
    ({"nodePools": [{"name": "p"}, {"name": "p"}]}, "nodePools[1].name: duplicate node pool p"),
    ({"nodePools": [{"name": "P_1"}]},
     "nodePools[0].name: 'P_1' is not a node pool name (lower-case letters, digits and '-', at most 59 characters)"),
    ({"color": "blue"}, "color: unknown key (known: controlPlaneNodeCount, ipFamilies, ipvsScheduler, kubeProxyMode, "
                        "kubernetesVersion, loadBalancerSku, name, nodeCount, nodeMaxPodCount, nodePoolName, "
                        "nodePools, osType, primaryNetworkPlugin, vnet)"),
    ({"kubeProxyMode": "userspace"}, "kubeProxyMode: expected iptables or ipvs, got 'userspace'"),
    ({"kubeProxyMode": "IPVS"}, "kubeProxyMode: expected iptables or ipvs, got 'IPVS'"),
    ({"kubeProxyMode": "ipvs", "ipvsScheduler": "wrr"}, "ipvsScheduler: expected rr or lc, got 'wrr'"),
])
def test_cluster_rules(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(P.PoolError) as info:
        P.parse_cluster(cluster(**changes), ["aks-net"])
    assert str(info.value) == message


def test_vnet_is_required_with_several_networks() -> None:
    with pytest.raises(P.PoolError, match=r"^vnet: required \(networks: a, b\)$"):
        P.parse_cluster({"name": "c"}, ["b", "a"])


# --- sizing --------------------------------------------------------------------------------


def small_network(end: str) -> P.Ipam:
    ipam = P.Ipam()
    ipam.add_network(P.parse_network(net(STATIC, k8sNodeIpPoolEnd=end)))
    return ipam


def test_a_cluster_that_does_not_fit_is_refused_naming_the_pool_and_the_shortfall() -> None:
    ipam = small_network("172.16.0.25")  # 6 addresses
    spec, _ = P.parse_cluster(cluster(nodePools=[{"name": "cluster1-linux", "nodeCount": 3}]), ["aks-net"])
    with pytest.raises(P.SizingError) as info:
        ipam.reserve_cluster(spec)
    assert str(info.value) == ("cluster1: node IP pool of network aks-net has 6 free addresses, the cluster needs 10 "
                               "(1 control plane + 3 workers + 5 upgrade spares + 1 load balancer VM): short by 4")
    assert ipam.usage()[0]["nodePool"]["reserved"] == 0  # nothing held after a refusal


def test_sizing_counts_other_clusters_reservations_and_kube_vip_needs_no_lb_vm() -> None:
    ipam = small_network("172.16.0.34")  # 15 addresses
    one, _ = P.parse_cluster(cluster(name="one", nodePools=[{"name": "one-linux", "nodeCount": 1}]), ["aks-net"])
    ipam.reserve_cluster(one)  # 1 + 1 + 5 + 1 = 8
    two, _ = P.parse_cluster(cluster(name="two", nodePools=[{"name": "two-linux", "nodeCount": 1}],
                                     loadBalancerSku="none"), ["aks-net"])
    ipam.reserve_cluster(two)  # 1 + 1 + 5 = 7, exactly what is left
    three, _ = P.parse_cluster(cluster(name="three", nodePools=[{"name": "three-linux", "nodeCount": 0}]), ["aks-net"])
    with pytest.raises(P.SizingError, match=r"^three: node IP pool of network aks-net has 0 free addresses, the "
                                            r"cluster needs 7 \(1 control plane \+ 0 workers \+ 5 upgrade spares \+ "
                                            r"1 load balancer VM\): short by 7$"):
        ipam.check_cluster(three)
    with pytest.raises(P.SizingError, match=r"^one: node IP pool of network aks-net has 0 free addresses, node pool "
                                            r"one-linux needs 2 \(2 workers\): short by 2$"):
        ipam.grow("one", "aks-net", 2, "one-linux")
    ipam.release_cluster("two")
    ipam.grow("one", "aks-net", 2, "one-linux")
    assert ipam.reservation("one", "aks-net") == 10


def test_dhcp_model_skips_node_sizing_but_not_vips() -> None:
    ipam = P.Ipam()
    ipam.add_network(P.parse_network(net(DHCP, vipPoolStart="172.16.0.150", vipPoolEnd="172.16.0.151")))
    specs = [P.parse_cluster(cluster(name=f"c{i}", vnet="dhcp-net", nodePools=[{"name": f"c{i}-linux",
                                                                               "nodeCount": 50}]),
                             ["dhcp-net"])[0] for i in range(3)]
    for spec in specs[:2]:
        ipam.reserve_cluster(spec)
        assert ipam.allocate_node_ip("dhcp-net", spec.name, f"{spec.name}-lb") is None  # leased, not allocated
        ipam.allocate_vip("dhcp-net", spec.name, "apiserver")
    with pytest.raises(P.SizingError, match=r"^c2: VIP pool of network dhcp-net has 0 free addresses, the cluster "
                                            r"needs 1 \(1 API server VIP\): short by 1$"):
        ipam.reserve_cluster(specs[2])


def test_api_server_vips_are_exclusive_and_service_vips_share_by_port() -> None:
    pool = P.VipPool(P.IpRange(ipaddress.ip_address("172.16.0.150"), ipaddress.ip_address("172.16.0.152")))
    assert str(pool.allocate("c1", "apiserver")) == "172.16.0.150"
    assert str(pool.allocate("c2", "apiserver")) == "172.16.0.151"
    # The documented known issue: Services on different ports of two clusters get the same VIP.
    assert str(pool.allocate("c1", "default/web", 80)) == "172.16.0.152"
    assert str(pool.allocate("c2", "default/api", 8080)) == "172.16.0.152"
    with pytest.raises(P.PoolError, match=r"^default/web2: the VIP pool 172.16.0.150-172.16.0.152 has no "
                                          r"address with port 80 free left$"):
        pool.allocate("c2", "default/web2", 80)
    with pytest.raises(P.PoolError, match=r"^apiserver: the VIP pool 172.16.0.150-172.16.0.152 has no free address left$"):
        pool.allocate("c3", "apiserver")
    pool.release_cluster("c1")
    assert str(pool.allocate("c3", "apiserver")) == "172.16.0.150"
    assert set(pool.uses()) == {"172.16.0.150", "172.16.0.151", "172.16.0.152"}


def test_macs_are_locally_administered() -> None:
    assert P.mac_for(ipaddress.ip_address("172.16.0.10")) == "02:00:ac:10:00:0a"
    mac = P.mac_for_name("cluster1-linux-0")
    assert mac.startswith("02:01:") and mac == P.mac_for_name("cluster1-linux-0") != P.mac_for_name("x")


# --- allocation properties -----------------------------------------------------------------

OPS = st.lists(st.tuples(st.sampled_from(["alloc", "alloc", "release", "release_cluster"]),
                         st.integers(0, 2), st.integers(0, 30)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 24), reservations=st.lists(st.integers(0, 8), min_size=3, max_size=3), ops=OPS)
def test_node_pool_allocation_properties(size: int, reservations: list[int], ops: list[tuple[str, int, int]]) -> None:
    start = ipaddress.ip_address("10.0.0.10")
    rng = P.IpRange(start, ipaddress.ip_address(int(start) + size - 1))
    pool = P.AddressPool(rng)
    for i, n in enumerate(reservations):
        if pool.available >= n:
            pool.reserve(f"c{i}", n)
    held: dict[str, tuple[str, str]] = {}  # ip -> (cluster, holder): the model
    for op, c, h in ops:
        cluster, holder = f"c{c}", f"c{c}-vm-{h}"
        if op == "alloc":
            if holder in {v[1] for v in held.values()}:
                continue
            try:
                ip = pool.allocate(cluster, holder)
            except P.PoolError:
                assert len(held) == size or pool.used_by(cluster) >= pool.reservations.get(cluster, 0)
                continue
            assert ip in rng, "never an address outside its pool"
            assert str(ip) not in held, "never the same address twice while allocated"
            free_below = [a for a in range(int(rng.start), int(ip)) if str(ipaddress.ip_address(a)) not in held]
            assert not free_below, "the lowest free address"
            held[str(ip)] = (cluster, holder)
        elif op == "release":
            pool.release_holder(holder)
            held = {ip: v for ip, v in held.items() if v[1] != holder}
        else:
            pool.release_cluster(cluster)
            held = {ip: v for ip, v in held.items() if v[0] != cluster}
        assert pool.held() == {ip: v[1] for ip, v in sorted(held.items(), key=lambda kv: int(ipaddress.ip_address(kv[0])))}
        assert pool.used + pool.free == size and pool.available <= pool.free
    for cluster in ("c0", "c1", "c2"):
        pool.release_cluster(cluster)
    assert pool.used == 0 and pool.free == size and pool.available == size, "nothing leaked after release"


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 12),
       ops=st.lists(st.tuples(st.sampled_from(["api", "svc", "release"]), st.integers(0, 2), st.integers(0, 5),
                              st.sampled_from([80, 443, 8080])), max_size=60))
def test_vip_pool_allocation_properties(size: int, ops: list[tuple[str, int, int, int]]) -> None:
    start = ipaddress.ip_address("172.16.0.150")
    rng = P.IpRange(start, ipaddress.ip_address(int(start) + size - 1))
    pool = P.VipPool(rng)
    live: dict[tuple[str, str], tuple[str, int | None]] = {}  # (cluster, holder) -> (ip, port)
    for op, c, h, port in ops:
        cluster = f"c{c}"
        if op == "release":
            holder = "apiserver" if h == 0 else f"svc{h}"
            pool.release(cluster, holder)
            live.pop((cluster, holder), None)
            continue
        holder, want = ("apiserver", None) if op == "api" else (f"svc{h}", port)
        if (cluster, holder) in live:
            continue
        try:
            ip = pool.allocate(cluster, holder, want)
        except P.PoolError:
            continue
        assert ip in rng
        for oip, oport in live.values():
            if oip == str(ip):
                # An exclusive VIP is never shared; a shared one never twice on one port.
                assert want is not None and oport is not None and oport != want
        live[(cluster, holder)] = (str(ip), want)
    for c in range(3):
        pool.release_cluster(f"c{c}")
    assert pool.used == 0 and pool.free == size

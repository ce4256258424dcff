"""kube-proxy on a dual-stack node: a Service's IPv6 ClusterIP is DNATed to the IPv6
endpoints of its IPv6 EndpointSlice (never across families), replies un-NATed."""

from __future__ import annotations

from kubeproxy_helpers import addrs, endpoint_slice, ep, forward, proxier, reply_to, service, syn

from agents.kubeproxy import Proxier
from broker import packets as P

VIP4, VIP6 = "10.96.0.15", "fd00:10:96::a"
CLIENT4, CLIENT6 = "10.244.0.7", "fd00:10:244::7"
EP4, EP6 = "10.244.1.5", "fd00:10:244::45"


def dual_proxier() -> Proxier:
    kp = proxier(cluster_cidrs=["10.244.0.0/16", "fd00:10:244::/56"])
    svc = service(cluster_ip=VIP4, ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack")
    svc["spec"]["clusterIPs"] = [VIP4, VIP6]
    kp.update_service(svc, None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep(EP4)], name="web-v4"), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep(EP6)], name="web-v6", address_type="IPv6"), None, 0.0)
    return kp


def test_v6_cluster_ip_dnat_to_the_v6_endpoint_and_back() -> None:
    kp = dual_proxier()
    out = forward(kp, syn(CLIENT6, 40000, VIP6, 80), 1.0)
    assert addrs(out) == (CLIENT6, 40000, EP6, 8080)  # pod source kept: in the v6 cluster CIDR
    back = forward(kp, reply_to(out), 1.001)
    assert addrs(back) == (VIP6, 80, CLIENT6, 40000)
    out4 = forward(kp, syn(CLIENT4, 40001, VIP4, 80), 1.002)
    assert addrs(out4) == (CLIENT4, 40001, EP4, 8080)
    assert kp.counters["new_flows"] == 2 and kp.counters["masqueraded"] == 0


def test_v6_cluster_ip_without_v6_endpoints_rejects_with_icmpv6() -> None:
    kp = dual_proxier()
    kp.delete_slice(endpoint_slice("web", [ep(EP6)], name="web-v6", address_type="IPv6"), None, 0.5)
    out = forward(kp, syn(CLIENT6, 40000, VIP6, 80), 1.0)
    assert out is not None and out[P.PROTO] == P.ICMPV6 and out[P.DST] == CLIENT6  # ICMPv6 unreachable, to the client
    assert addrs(forward(kp, syn(CLIENT4, 40001, VIP4, 80), 1.1))[2] == EP4  # IPv4 unaffected

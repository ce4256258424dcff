"""kube-proxy NAT decisions, table-driven where the cases are alike, on a manual clock."""

from __future__ import annotations

import collections
from typing import Any

import pytest
from kubeproxy_helpers import (
    CLIENT,
    NODE,
    NODE_IPS,
    OUTSIDE,
    VIP,
    ack,
    addrs,
    endpoint_slice,
    ep,
    forward,
    local_out,
    proxier,
    reply_to,
    service,
    syn,
)

from agents.kubeproxy import Proxier
from broker import packets as P

EPS3 = [ep("10.244.1.5"), ep("10.244.2.6", node="node-c"), ep("10.244.3.7", node="node-d")]


def web(kp: Proxier, endpoints: list[dict[str, Any]] | None = None, now: float = 0.0, **spec: Any) -> None:
    kp.update_service(service(**spec), None, now)
    kp.update_slice(endpoint_slice("web", EPS3 if endpoints is None else endpoints), None, now)


# --- ClusterIP ---------------------------------------------------------------------------


def test_clusterip_dnat_and_reply_unnat_both_directions() -> None:
    kp = proxier()
    web(kp, [ep("10.244.1.5")])
    out = forward(kp, syn(CLIENT, 40000, VIP, 80), 1.0)
    assert addrs(out) == (CLIENT, 40000, "10.244.1.5", 8080)
    back = forward(kp, reply_to(out), 1.001)
    assert addrs(back) == (VIP, 80, CLIENT, 40000)
    # The established flow keeps its endpoint, with payload and flags untouched.
    data = forward(kp, ack(CLIENT, 40000, VIP, 80, P.ACK | P.PSH, b"GET /"), 1.002)
    assert addrs(data) == (CLIENT, 40000, "10.244.1.5", 8080)
    assert data is not None and data[P.PAYLOAD] == b"GET /" and data[P.INFO][0] == P.ACK | P.PSH
    flow = next(kp.conntrack.flows())
    assert flow.state == "ESTABLISHED"
    assert kp.counters["new_flows"] == 1


def test_traffic_not_for_a_service_passes_untouched() -> None:
    kp = proxier()
    web(kp)
    for pkt in (syn(CLIENT, 1, "10.244.1.5", 8080), syn(CLIENT, 1, VIP, 81),
                P.udp(CLIENT, VIP, 5, 80, b"x"), P.echo(CLIENT, VIP, True, 1, 1)):
        assert forward(kp, pkt, 0.0) == pkt
    assert len(kp.conntrack) == 0


def test_locally_generated_traffic_uses_output() -> None:
    kp = proxier()
    web(kp, [ep("10.244.1.5")])
    out = local_out(kp, syn(NODE_IPS[0], 50000, VIP, 80), 0.0)
    assert addrs(out) == (NODE_IPS[0], 50000, "10.244.1.5", 8080)
    back = forward(kp, reply_to(out), 0.1)
    assert addrs(back) == (VIP, 80, NODE_IPS[0], 50000)


# --- NodePort / LoadBalancer and externalTrafficPolicy -----------------------------------

NODEPORT: dict[str, Any] = dict(type="NodePort", ports=[{"name": "http", "protocol": "TCP", "port": 80,
                                                         "targetPort": 8080, "nodePort": 30080}])


@pytest.mark.parametrize("node_ip", NODE_IPS)
def test_nodeport_on_each_node_ip_snats_for_policy_cluster(node_ip: str) -> None:
    kp = proxier()
    web(kp, [ep("10.244.1.5")], **NODEPORT)
    out = forward(kp, syn(OUTSIDE, 41000, node_ip, 30080), 0.0)
    assert out is not None
    src, _, dst, dport = addrs(out)
    assert (src, dst, dport) == (NODE_IPS[0], "10.244.1.5", 8080)  # masqueraded to the node
    back = forward(kp, reply_to(out), 0.1)
    assert addrs(back) == (node_ip, 30080, OUTSIDE, 41000)
    assert kp.counters["masqueraded"] == 1


def test_nodeport_not_on_other_addresses() -> None:
    kp = proxier()
    web(kp, **NODEPORT)
    pkt = syn(OUTSIDE, 41000, "172.16.0.99", 30080)
    assert forward(kp, pkt, 0.0) == pkt


LOCAL_EPS = [ep("10.244.0.20", node=NODE), ep("10.244.1.5"), ep("10.244.2.6", node="node-c")]


@pytest.mark.parametrize(
    ("client", "local", "want_eps", "want_snat"),
    [
        (OUTSIDE, False, {"10.244.0.20"}, False),                                # external: local only, client kept
        (NODE_IPS[0], True, {"10.244.0.20", "10.244.1.5", "10.244.2.6"}, True),  # from the node: cluster + masq
        (CLIENT, False, {"10.244.0.20", "10.244.1.5", "10.244.2.6"}, False),     # from a pod: short-circuit
    ],
)
def test_external_policy_local(client: str, local: bool, want_eps: set[str], want_snat: bool) -> None:
    kp = proxier(cluster_cidrs=["10.244.0.0/16"])
    web(kp, LOCAL_EPS, externalTrafficPolicy="Local", **NODEPORT)
    seen: set[str] = set()
    for i in range(60):
        pkt = syn(client, 20000 + i, NODE_IPS[0], 30080)
        out = local_out(kp, pkt, 0.0) if local else forward(kp, pkt, 0.0)
        src, sport, dst, _ = addrs(out)
        seen.add(dst)
        assert ((src, sport) != (client, 20000 + i)) == want_snat  # MASQUERADE --random-fully
    assert seen == want_eps


def test_external_policy_local_without_local_endpoint_drops() -> None:
    kp = proxier()
    web(kp, [ep("10.244.1.5")], externalTrafficPolicy="Local", **NODEPORT)
    assert forward(kp, syn(OUTSIDE, 41000, NODE_IPS[0], 30080), 0.0) is None
    assert kp.counters["dropped_no_local_endpoints"] == 1
    assert kp.counters["rejected"] == 0
    # ClusterIP traffic is not affected by the external policy.
    assert addrs(forward(kp, syn(CLIENT, 41000, VIP, 80), 0.0))[2] == "10.244.1.5"


def test_loadbalancer_ingress_ip_and_external_ips_are_frontends() -> None:
    kp = proxier()
    lb = dict(NODEPORT, type="LoadBalancer")
    web(kp, [ep("10.244.1.5")], lb_ips=["172.16.0.200"], externalIPs=["192.168.9.9"], **lb)
    for dst, port in (("172.16.0.200", 80), ("192.168.9.9", 80), (NODE_IPS[1], 30080)):
        out = forward(kp, syn(OUTSIDE, 42000, dst, port), 0.0)
        src, _, epip, _ = addrs(out)
        assert epip == "10.244.1.5" and src == NODE_IPS[0]
        assert addrs(forward(kp, reply_to(out), 0.1)) == (dst, port, OUTSIDE, 42000)


def test_health_check_node_port() -> None:
    kp = proxier()
    lb = dict(NODEPORT, type="LoadBalancer")
    web(kp, [ep("10.244.1.5")], externalTrafficPolicy="Local", healthCheckNodePort=32000, **lb)
    assert kp.health_check_ports() == [32000]
    status, body = kp.health_check(32000) or (0, {})
    assert status == 503 and body["localEndpoints"] == 0
    kp.update_slice(endpoint_slice("web", [ep("10.244.0.20", node=NODE)]), None, 1.0)
    status, body = kp.health_check(32000) or (0, {})
    assert status == 200 and body == {"service": {"namespace": "default", "name": "web"},
                                      "localEndpoints": 1, "serviceProxyHealthy": True}
    assert kp.health_check(32001) is None


# --- internalTrafficPolicy, reject, drop ------------------------------------------------


@pytest.mark.parametrize(
    ("itp", "endpoints", "outcome"),
    [
        ("Cluster", [ep("10.244.1.5")], "dnat"),
        ("Local", [ep("10.244.1.5")], "drop"),                       # endpoints elsewhere only
        ("Local", [ep("10.244.0.20", node=NODE), ep("10.244.1.5")], "dnat-local"),
        ("Cluster", [], "reject"),
        ("Local", [], "reject"),                                     # none anywhere: REJECT wins
        ("Cluster", [ep("10.244.1.5", ready=False)], "reject"),      # not ready = no endpoint
    ],
)
def test_internal_policy_and_no_endpoints(itp: str, endpoints: list[dict[str, Any]], outcome: str) -> None:
    kp = proxier()
    web(kp, endpoints, internalTrafficPolicy=itp)
    pkt = syn(CLIENT, 40000, VIP, 80)
    out = forward(kp, pkt, 0.0)
    if outcome == "drop":
        assert out is None
        assert kp.counters["dropped_no_local_endpoints"] == 1 and kp.counters["rejected"] == 0
    elif outcome == "reject":
        assert out is not None
        assert out[P.PROTO] == P.ICMP and (out[P.SPORT], out[P.DPORT]) == (3, 3)  # port unreachable
        assert (out[P.SRC], out[P.DST]) == (VIP, CLIENT)
        assert addrs(out[P.INFO][1]) == (CLIENT, 40000, VIP, 80)  # the quoted SYN, as sent
        assert kp.counters["rejected"] == 1 and len(kp.conntrack) == 0
    else:
        assert addrs(out)[2] == ("10.244.0.20" if outcome == "dnat-local" else "10.244.1.5")


def test_reject_outbox_mode() -> None:
    kp = proxier(reject="outbox")
    web(kp, [])
    pkt = P.udp(CLIENT, VIP, 5353, 80, b"q")
    kp.update_service(service(ports=[{"name": "dns", "protocol": "UDP", "port": 80}]), None, 0.0)
    assert kp.prerouting(pkt, 0.0) is None
    assert len(kp.rejects) == 1 and kp.rejects[0][P.DST] == CLIENT and kp.counters["rejected"] == 1


def test_reject_ipv6() -> None:
    kp = Proxier(NODE, ["fd00::11"], rng=1)
    kp.update_service(service(cluster_ip="fd00:96::15"), None, 0.0)
    out = kp.prerouting(syn("fd00:244::7", 40000, "fd00:96::15", 80), 0.0)
    assert out is not None and out[P.PROTO] == P.ICMPV6 and (out[P.SPORT], out[P.DPORT]) == (1, 4)


# --- hairpin ----------------------------------------------------------------------------


def test_hairpin_is_masqueraded_and_comes_back() -> None:
    kp = proxier()
    me = "10.244.0.20"
    web(kp, [ep(me, node=NODE)])
    out = forward(kp, syn(me, 45000, VIP, 80), 0.0)
    src, sport, dst, dport = addrs(out)
    assert (dst, dport) == (me, 8080)
    assert src == NODE_IPS[0]  # not the pod itself, or it would answer itself directly
    back = forward(kp, reply_to(out), 0.1)
    assert addrs(back) == (VIP, 80, me, 45000)


def test_hairpin_uses_the_masquerade_source_callback() -> None:
    kp = proxier(masquerade_source=lambda dst: "10.244.0.1")  # e.g. cni0's address
    web(kp, [ep("10.244.0.20", node=NODE)])
    assert addrs(forward(kp, syn("10.244.0.20", 45000, VIP, 80), 0.0))[0] == "10.244.0.1"


def test_masquerade_of_off_cluster_sources_to_clusterip() -> None:
    kp = proxier(cluster_cidrs=["10.244.0.0/16"])
    web(kp, [ep("10.244.1.5")])
    assert addrs(forward(kp, syn(OUTSIDE, 1, VIP, 80), 0.0))[0] == NODE_IPS[0]
    assert addrs(forward(kp, syn(CLIENT, 1, VIP, 80), 0.0))[0] == CLIENT


# --- selection ------------------------------------------------------------------------------


def test_iptables_mode_spreads_uniformly_chi_square() -> None:
    kp = proxier(seed=7)
    web(kp)
    n = 3000
    counts = collections.Counter(addrs(kp.prerouting(syn(CLIENT, 10000 + i, VIP, 80), 0.0))[2] for i in range(n))
    assert set(counts) == {"10.244.1.5", "10.244.2.6", "10.244.3.7"}
    expected = n / 3
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 13.82, counts  # df = 2, p = 0.001


def test_iptables_mode_random_is_seeded() -> None:
    def picks(seed: int) -> list[str]:
        kp = proxier(seed=seed)
        web(kp)
        return [addrs(kp.prerouting(syn(CLIENT, 10000 + i, VIP, 80), 0.0))[2] for i in range(30)]

    assert picks(3) == picks(3)
    assert picks(3) != picks(4)


def test_ipvs_rr_cycles_exactly_per_virtual_server() -> None:
    kp = proxier(mode="ipvs", scheduler="rr")
    web(kp, **NODEPORT)
    got = [addrs(kp.prerouting(syn(CLIENT, 10000 + i, VIP, 80), 0.0))[2] for i in range(7)]
    assert got == ["10.244.1.5", "10.244.2.6", "10.244.3.7"] * 2 + ["10.244.1.5"]
    # The NodePort is another virtual server with its own position.
    assert addrs(kp.prerouting(syn(OUTSIDE, 1, NODE_IPS[0], 30080), 0.0))[2] == "10.244.1.5"


def test_ipvs_lc_picks_least_connections() -> None:
    kp = proxier(mode="ipvs", scheduler="lc")
    web(kp)
    flows = []
    # Two established connections: the first two picks go to .1.5 and .2.6 (ties: first).
    for i in range(2):
        out = forward(kp, syn(CLIENT, 10000 + i, VIP, 80), 0.0)
        forward(kp, reply_to(out), 0.0)
        forward(kp, ack(CLIENT, 10000 + i, VIP, 80), 0.0)
        flows.append(addrs(out)[2])
    assert flows == ["10.244.1.5", "10.244.2.6"]
    fe = kp.frontend(VIP, 80)
    assert fe is not None and fe.counters[("10.244.1.5", 8080)] == [1, 0]
    # The third goes to the idle one, then the tie-break order is by load (active*256+inactive).
    assert addrs(kp.prerouting(syn(CLIENT, 10002, VIP, 80), 0.0))[2] == "10.244.3.7"
    assert addrs(kp.prerouting(syn(CLIENT, 10003, VIP, 80), 0.0))[2] == "10.244.3.7"  # 1 inactive < 256
    # Closing .1.5's connection with RST makes it the least loaded again.
    forward(kp, ack(CLIENT, 10000, VIP, 80, P.RST), 0.1)
    assert fe.counters[("10.244.1.5", 8080)] == [0, 1]  # CLOSE: inactive until it expires
    kp.expire(0.1 + 10.0)
    assert fe.counters[("10.244.1.5", 8080)] == [0, 0]
    assert addrs(kp.prerouting(syn(CLIENT, 10004, VIP, 80), 11.0))[2] == "10.244.1.5"


def test_session_affinity_pins_until_timeout_then_may_move() -> None:
    kp = proxier(time_scale=0.01)  # timeoutSeconds 600 -> 6 s
    web(kp, sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    first = addrs(kp.prerouting(syn(CLIENT, 10000, VIP, 80), 0.0))[2]
    t = 0.0
    for i in range(1, 50):  # new flows every 5 s keep refreshing it
        t += 5.0
        assert addrs(kp.prerouting(syn(CLIENT, 10000 + i, VIP, 80), t))[2] == first
    # Another client is spread independently; after the timeout the pinned client may move.
    others = {addrs(kp.prerouting(syn(f"10.244.9.{i}", 1, VIP, 80), t))[2] for i in range(1, 40)}
    assert len(others) == 3
    moved = set()
    for i in range(40):
        t += 6.5  # past the timeout each time
        moved.add(addrs(kp.prerouting(syn(CLIENT, 20000 + i, VIP, 80), t))[2])
    assert len(moved) > 1


def test_session_affinity_default_timeout_is_scaled_10800() -> None:
    kp = proxier(time_scale=0.001)  # 10800 s -> 10.8 s
    web(kp, sessionAffinity="ClientIP")
    first = addrs(kp.prerouting(syn(CLIENT, 1, VIP, 80), 0.0))[2]
    assert addrs(kp.prerouting(syn(CLIENT, 2, VIP, 80), 10.7))[2] == first
    fe = kp.frontend(VIP, 80)
    assert fe is not None and fe.sp.affinity == pytest.approx(10.8)


def test_session_affinity_moves_when_endpoint_goes() -> None:
    kp = proxier()
    web(kp, [ep("10.244.1.5")], sessionAffinity="ClientIP")
    assert addrs(kp.prerouting(syn(CLIENT, 1, VIP, 80), 0.0))[2] == "10.244.1.5"
    kp.update_slice(endpoint_slice("web", [ep("10.244.2.6")]), None, 1.0)
    assert addrs(kp.prerouting(syn(CLIENT, 2, VIP, 80), 1.0))[2] == "10.244.2.6"


# --- endpoints from slices ------------------------------------------------------------------


def test_named_target_port_resolves_per_endpoint_slice() -> None:
    kp = proxier(mode="ipvs", scheduler="rr")
    kp.update_service(service(), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5")], ports=[("http", 8080, "TCP")], name="web-a"), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.2.6")], ports=[("http", 9090, "TCP")], name="web-b"), None, 0.0)
    got = {addrs(kp.prerouting(syn(CLIENT, i, VIP, 80), 0.0))[2:] for i in range(1, 5)}
    assert got == {("10.244.1.5", 8080), ("10.244.2.6", 9090)}


def test_multi_port_service_matches_ports_by_name_and_protocol() -> None:
    kp = proxier()
    ports = [{"name": "http", "protocol": "TCP", "port": 80}, {"name": "dns", "protocol": "UDP", "port": 53},
             {"name": "dns-tcp", "protocol": "TCP", "port": 53}]
    kp.update_service(service(ports=ports), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5")], ports=[
        ("http", 8080, "TCP"), ("dns", 5353, "UDP"), ("dns-tcp", 5354, "TCP")]), None, 0.0)
    assert addrs(kp.prerouting(syn(CLIENT, 1, VIP, 80), 0.0))[3] == 8080
    assert addrs(kp.prerouting(P.udp(CLIENT, VIP, 2, 53, b""), 0.0))[3] == 5353
    assert addrs(kp.prerouting(syn(CLIENT, 3, VIP, 53), 0.0))[3] == 5354


@pytest.mark.parametrize(
    ("endpoints", "want"),
    [
        ([ep("10.244.1.5"), ep("10.244.2.6", ready=False)], {"10.244.1.5"}),
        ([ep("10.244.1.5", ready=None)], {"10.244.1.5"}),  # missing ready means ready
        # Terminating endpoints are not used while a ready one exists ...
        ([ep("10.244.1.5"), ep("10.244.2.6", ready=False, serving=True, terminating=True)], {"10.244.1.5"}),
        # ... and are the fallback when none is ready (ProxyTerminatingEndpoints) ...
        ([ep("10.244.2.6", ready=False, serving=True, terminating=True),
          ep("10.244.3.7", ready=False, serving=False, terminating=True)], {"10.244.2.6"}),
        # ... but only serving ones.
        ([ep("10.244.3.7", ready=False, serving=False, terminating=True)], set()),
    ],
)
def test_endpoint_conditions(endpoints: list[dict[str, Any]], want: set[str]) -> None:
    kp = proxier()
    web(kp, endpoints)
    got = set()
    for i in range(40):
        out = kp.prerouting(syn(CLIENT, 10000 + i, VIP, 80), 0.0)
        assert out is not None
        got.add(out[P.DST] if out[P.PROTO] == P.TCP else "rejected")
    assert got == (want or {"rejected"})


def test_same_endpoint_in_two_slices_counts_once_ready_wins() -> None:
    kp = proxier()
    kp.update_service(service(), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5", ready=False)], name="a"), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5")], name="b"), None, 0.0)
    assert kp.endpoints("default", "web", "http")["cluster"] == [("10.244.1.5", 8080)]


def test_slice_before_service_and_service_deletion() -> None:
    kp = proxier()
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5")]), None, 0.0)
    kp.update_service(service(), None, 0.0)
    out = forward(kp, syn(CLIENT, 1, VIP, 80), 0.0)
    assert addrs(out)[2] == "10.244.1.5"
    kp.delete_service(service(), None, 1.0)
    pkt = syn(CLIENT, 2, VIP, 80)
    assert forward(kp, pkt, 1.0) == pkt  # no rule any more
    # An existing flow keeps its NAT until conntrack forgets it (as on Linux).
    assert addrs(forward(kp, reply_to(out), 1.0)) == (VIP, 80, CLIENT, 1)


def test_headless_and_external_name_services_have_no_rules() -> None:
    kp = proxier()
    kp.update_service(service(cluster_ip="None"), None, 0.0)
    kp.update_service(service("ext", cluster_ip=None, type="ExternalName", externalName="db.example.com"), None, 0.0)
    assert kp.stats()["frontends"] == 0


def test_sync_replaces_everything() -> None:
    kp = proxier()
    web(kp)
    kp.update_service(service("old", cluster_ip="10.96.0.99"), None, 0.0)
    kp.sync([service()], [endpoint_slice("web", [ep("10.244.2.6")])], 1.0)
    assert kp.frontend("10.96.0.99", 80) is None
    assert kp.endpoints("default", "web", "http")["cluster"] == [("10.244.2.6", 8080)]


# --- UDP and SCTP -------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["UDP", "SCTP"])
def test_udp_and_sctp_services(proto: str) -> None:
    kp = proxier()
    kp.update_service(service(ports=[{"name": "p", "protocol": proto, "port": 5000}]), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5")], ports=[("p", 6000, proto)]), None, 0.0)
    if proto == "UDP":
        pkt = P.udp(CLIENT, VIP, 33000, 5000, b"ping")
    else:
        pkt = P.sctp(CLIENT, VIP, 33000, 5000, P.SCTP_INIT, 0)
    out = forward(kp, pkt, 0.0)
    assert addrs(out) == (CLIENT, 33000, "10.244.1.5", 6000)
    assert addrs(forward(kp, reply_to(out), 0.1)) == (VIP, 5000, CLIENT, 33000)
    # The TCP port of the same number is not a frontend.
    tcp = syn(CLIENT, 1, VIP, 5000)
    assert forward(kp, tcp, 0.2) == tcp


def test_udp_flows_to_a_removed_endpoint_are_cleared() -> None:
    kp = proxier()
    kp.update_service(service(ports=[{"name": "dns", "protocol": "UDP", "port": 53}]), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5")], ports=[("dns", 53, "UDP")]), None, 0.0)
    pkt = P.udp(CLIENT, VIP, 33000, 53, b"q")
    assert addrs(forward(kp, pkt, 0.0))[2] == "10.244.1.5"
    kp.update_slice(endpoint_slice("web", [ep("10.244.2.6")], ports=[("dns", 53, "UDP")]), None, 1.0)
    assert kp.counters["stale_udp_flows_cleared"] == 1
    assert addrs(forward(kp, pkt, 1.1))[2] == "10.244.2.6"  # the same socket now reaches the live one


def test_tcp_flows_to_a_removed_endpoint_stay() -> None:
    kp = proxier()
    web(kp, [ep("10.244.1.5")])
    out = forward(kp, syn(CLIENT, 1, VIP, 80), 0.0)
    forward(kp, reply_to(out), 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.2.6")]), None, 1.0)
    assert addrs(forward(kp, ack(CLIENT, 1, VIP, 80), 1.1))[2] == "10.244.1.5"
    assert kp.counters["stale_udp_flows_cleared"] == 0


# --- ICMP related, invalid, reopen, port clashes ------------------------------------------


def test_icmp_error_from_the_endpoint_is_translated_for_the_client() -> None:
    kp = proxier()
    kp.update_service(service(ports=[{"name": "p", "protocol": "UDP", "port": 5000}]), None, 0.0)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5")], ports=[("p", 6000, "UDP")]), None, 0.0)
    out = forward(kp, P.udp(CLIENT, VIP, 33000, 5000, b"x"), 0.0)
    assert out is not None
    err = P.port_unreachable("10.244.1.5", out)
    back = forward(kp, err, 0.1)
    assert back is not None and (back[P.SRC], back[P.DST]) == (VIP, CLIENT)
    assert addrs(back[P.INFO][1]) == (CLIENT, 33000, VIP, 5000)  # what the client's socket sent


def test_icmp_error_from_a_router_keeps_its_source() -> None:
    kp = proxier(cluster_cidrs=["10.244.0.0/16"])
    web(kp, [ep("10.244.1.5")])
    out = forward(kp, syn(OUTSIDE, 1, VIP, 80), 0.0)  # masqueraded
    assert out is not None
    err = P.packet_too_big("172.16.0.1", out, 1400)
    back = forward(kp, err, 0.1)
    assert back is not None and (back[P.SRC], back[P.DST]) == ("172.16.0.1", OUTSIDE)
    assert addrs(back[P.INFO][1]) == (OUTSIDE, 1, VIP, 80) and back[P.INFO][0] == 1400


@pytest.mark.parametrize("flags", [P.ACK | P.SYN, P.FIN, P.RST, 0])
def test_invalid_first_segment_is_dropped(flags: int) -> None:
    kp = proxier()
    web(kp)
    assert kp.prerouting(ack(CLIENT, 1, VIP, 80, flags), 0.0) is None
    assert kp.counters["invalid"] == 1 and len(kp.conntrack) == 0


def test_bare_ack_picks_up_a_connection_loose() -> None:
    kp = proxier()
    web(kp, [ep("10.244.1.5")])
    assert addrs(kp.prerouting(ack(CLIENT, 1, VIP, 80), 0.0))[2] == "10.244.1.5"
    assert next(kp.conntrack.flows()).state == "ESTABLISHED"


def test_syn_after_time_wait_reopens_with_a_new_choice() -> None:
    kp = proxier(mode="ipvs", scheduler="rr")
    web(kp)
    out = forward(kp, syn(CLIENT, 1, VIP, 80), 0.0)
    first = addrs(out)[2]
    forward(kp, reply_to(out), 0.0)
    forward(kp, ack(CLIENT, 1, VIP, 80), 0.0)
    forward(kp, ack(CLIENT, 1, VIP, 80, P.FIN | P.ACK), 0.1)
    forward(kp, reply_to(out, P.FIN | P.ACK), 0.1)
    forward(kp, ack(CLIENT, 1, VIP, 80), 0.1)
    assert next(kp.conntrack.flows()).state == "TIME_WAIT"
    again = forward(kp, syn(CLIENT, 1, VIP, 80), 1.0)
    assert addrs(again)[2] != first and kp.conntrack.stats["reopened"] == 1


def test_reply_tuple_clash_remaps_the_source_port() -> None:
    kp = proxier()
    kp.update_service(service("a", cluster_ip="10.96.0.21"), None, 0.0)
    kp.update_service(service("b", cluster_ip="10.96.0.22"), None, 0.0)
    for name in ("a", "b"):
        kp.update_slice(endpoint_slice(name, [ep("10.244.1.5")]), None, 0.0)
    one = forward(kp, syn(CLIENT, 1, "10.96.0.21", 80), 0.0)
    two = forward(kp, syn(CLIENT, 1, "10.96.0.22", 80), 0.0)
    assert addrs(one) == (CLIENT, 1, "10.244.1.5", 8080)
    assert two is not None and two[P.SRC] == CLIENT and two[P.SPORT] != 1
    assert addrs(forward(kp, reply_to(two), 0.1)) == ("10.96.0.22", 80, CLIENT, 1)
    assert addrs(forward(kp, reply_to(one), 0.1)) == ("10.96.0.21", 80, CLIENT, 1)


def test_postrouting_ignores_a_packet_it_was_not_handed() -> None:
    kp = proxier()
    web(kp, [ep("10.244.1.5")])
    forward(kp, syn(OUTSIDE, 1, NODE_IPS[0], 30080), 0.0)  # not a frontend: nothing pending
    kp.update_service(service(**NODEPORT), None, 0.0)
    kp.prerouting(syn(OUTSIDE, 2, NODE_IPS[0], 30080), 0.0)  # pending SNAT ...
    other = syn("10.244.0.9", 3, "10.244.1.5", 8080)
    assert kp.postrouting(other, 0.0) == other  # ... is not applied to another packet


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="mode"):
        Proxier(NODE, NODE_IPS, mode="nftables")
    with pytest.raises(ValueError, match="scheduler"):
        Proxier(NODE, NODE_IPS, mode="ipvs", scheduler="wlc")


def test_stats_shape() -> None:
    kp = proxier()
    web(kp)
    kp.update_slice(endpoint_slice("web", EPS3), 10.0, 10.25)
    s = kp.stats()
    assert s["services"] == 1 and s["frontends"] == 1 and s["slices"] == 1
    assert s["programming_latency"]["count"] == 1
    assert s["programming_latency"]["p50_ms"] == pytest.approx(250.0)


def test_icmp_error_raised_by_the_node_between_dnat_and_snat() -> None:
    """The node cannot forward a masqueraded flow's packet (MTU): its error quotes the packet
    after DNAT but before SNAT, and still reaches the client in the client's terms."""
    kp = proxier()
    web(kp, [ep("10.244.1.5")], **NODEPORT)
    out = kp.prerouting(syn(OUTSIDE, 7, NODE_IPS[0], 30080), 0.0)  # DNAT done, SNAT pending
    assert out is not None
    err = kp.output(P.packet_too_big(NODE_IPS[0], out, 1400), 0.0)
    assert err is not None and err[P.DST] == OUTSIDE
    assert addrs(err[P.INFO][1]) == (OUTSIDE, 7, NODE_IPS[0], 30080)

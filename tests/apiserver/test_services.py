"""Service ClusterIP / NodePort allocation through the store's admission hook (real Store)."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.apiserver.controllers import ensure_kubernetes_service
from agents.apiserver.rest import Router
from agents.apiserver.services import IPAllocator, PortAllocator, RangeFull, ServiceAllocator
from agents.apiserver.store import Store

SVC = "/api/v1/namespaces/{ns}/services"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "svc.sqlite"))
    yield s
    s.close()


def setup(store: Store, **kw: Any) -> tuple[Router, ServiceAllocator]:
    router = Router(store)
    router.bootstrap()
    alloc = ServiceAllocator(rng=random.Random(7), **kw)
    alloc.install(store)
    return router, alloc


def svc(name: str, ns: str = "default", **spec: Any) -> dict[str, Any]:
    spec.setdefault("ports", [{"port": 80}])
    spec.setdefault("selector", {"app": name})
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def post(router: Router, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    r = router.handle("POST", SVC.format(ns=obj["metadata"]["namespace"]), body=obj)
    return r.status, r.body


def ok(router: Router, obj: dict[str, Any]) -> dict[str, Any]:
    status, body = post(router, obj)
    assert status == 201, body
    return body["spec"]


def test_cluster_ip_dynamic_avoids_the_static_band(store: Store) -> None:
    router, _ = setup(store)
    net = ipaddress.ip_network("10.96.0.0/12")
    ips = [ok(router, svc(f"s{i}"))["clusterIP"] for i in range(50)]
    assert len(set(ips)) == 50
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        assert addr in net and int(addr) - int(net.network_address) > 256  # upper band (static subrange)
    spec = ok(router, svc("x"))
    assert spec["clusterIPs"] == [spec["clusterIP"]] and spec["ipFamilies"] == ["IPv4"]
    assert spec["ipFamilyPolicy"] == "SingleStack" and spec["internalTrafficPolicy"] == "Cluster"


@pytest.mark.parametrize(("requested", "status", "message"), [
    ("10.96.0.15", 201, None),
    ("10.96.0.1", 422, 'Service "s" is invalid: spec.clusterIPs: Invalid value: []string{"10.96.0.1"}: '
                       "failed to allocate IP 10.96.0.1: provided IP is already allocated"),
    ("10.96.0.10", 422, 'Service "s" is invalid: spec.clusterIPs: Invalid value: []string{"10.96.0.10"}: '
                        "failed to allocate IP 10.96.0.10: provided IP is already allocated"),
    ("10.0.0.5", 422, 'Service "s" is invalid: spec.clusterIPs: Invalid value: []string{"10.0.0.5"}: failed to '
                      "allocate IP 10.0.0.5: the provided IP (10.0.0.5) is not in the valid range. The range of "
                      "valid IPs is 10.96.0.0/12"),
    ("10.111.255.255", 422, None),  # the broadcast address of the range
    ("nope", 422, 'Service "s" is invalid: spec.clusterIPs[0]: Invalid value: "nope": must be a valid IP address, '
                  "(e.g. 10.9.8.7 or 2001:db8::ffff)"),
])
def test_requested_cluster_ip(store: Store, requested: str, status: int, message: str | None) -> None:
    router, _ = setup(store)
    ensure_kubernetes_service(store, "172.16.0.21")
    got, body = post(router, svc("s", clusterIP=requested))
    assert got == status, body
    if status == 201:
        assert body["spec"]["clusterIP"] == requested
    elif message is not None:
        assert body["message"] == message


def test_requested_ip_conflict_and_release(store: Store) -> None:
    router, _ = setup(store)
    ok(router, svc("a", clusterIP="10.96.0.15"))
    status, body = post(router, svc("b", clusterIP="10.96.0.15"))
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["message"] == ('Service "b" is invalid: spec.clusterIPs: Invalid value: []string{"10.96.0.15"}: '
                               "failed to allocate IP 10.96.0.15: provided IP is already allocated")
    assert body["details"]["causes"][0]["field"] == "spec.clusterIPs"
    assert router.handle("DELETE", SVC.format(ns="default") + "/a").status == 200
    assert ok(router, svc("b", clusterIP="10.96.0.15"))["clusterIP"] == "10.96.0.15"


def test_reserved_addresses_go_to_their_services(store: Store) -> None:
    router, alloc = setup(store)
    ensure_kubernetes_service(store, "172.16.0.21")
    assert store.get("services", "default", "kubernetes")["spec"]["clusterIP"] == "10.96.0.1"
    assert alloc.ips["IPv4"].has("10.96.0.1")
    dns = ok(router, svc("kube-dns", ns="kube-system", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]))
    assert dns["clusterIP"] == "10.96.0.10"
    # restart: a new allocator rebuilds from the stored Services
    again = ServiceAllocator()
    again.rebuild(store)
    assert again.ips["IPv4"].has("10.96.0.10") and again.ips["IPv4"].has("10.96.0.1")


def test_headless_and_external_name_get_no_ip(store: Store) -> None:
    router, alloc = setup(store)
    spec = ok(router, svc("h", clusterIP="None"))
    assert spec["clusterIP"] == "None" and spec["clusterIPs"] == ["None"]
    spec = ok(router, {"metadata": {"name": "ext", "namespace": "default"},
                       "spec": {"type": "ExternalName", "externalName": "db.example.com"}})
    assert "clusterIP" not in spec
    assert alloc.ips["IPv4"].used == 0
    status, body = post(router, {"metadata": {"name": "ext2", "namespace": "default"},
                                 "spec": {"type": "ExternalName"}})
    assert status == 422 and "spec.externalName: Required value" in body["message"]


def test_exhaustion_and_no_leak_on_refused_create(store: Store) -> None:
    router, alloc = setup(store, cidrs=["10.96.0.0/29"], reserved={})  # 6 usable addresses
    for i in range(6):
        ok(router, svc(f"s{i}"))
    status, body = post(router, svc("s6"))
    assert status == 500 and body["message"] == ("Internal error occurred: failed to allocate a serviceIP: "
                                                 "range is full")
    router.handle("DELETE", SVC.format(ns="default") + "/s3")
    # allocated, then refused by validation: the address is released again
    status, body = post(router, svc("bad", ports=[{"port": 70000}]))
    assert status == 422 and alloc.ips["IPv4"].used == 5
    status, body = post(router, svc("s0"))  # AlreadyExists after allocation: released too
    assert status == 409 and alloc.ips["IPv4"].used == 5
    ok(router, svc("s7"))
    assert alloc.ips["IPv4"].used == 6


def test_node_ports(store: Store) -> None:
    router, alloc = setup(store)
    spec = ok(router, svc("np", type="NodePort", ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53,
                                                                                       "protocol": "UDP"}]))
    ports = [p["nodePort"] for p in spec["ports"]]
    assert all(30000 <= p <= 32767 for p in ports) and len(set(ports)) == 2
    assert spec["externalTrafficPolicy"] == "Cluster" and "healthCheckNodePort" not in spec
    ok(router, svc("fixed", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    status, body = post(router, svc("clash", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    assert status == 422
    assert body["message"] == ('Service "clash" is invalid: spec.ports[0].nodePort: Invalid value: 30080: '
                               "provided port is already allocated")
    status, body = post(router, svc("out", type="NodePort", ports=[{"port": 80, "nodePort": 29999}]))
    assert body["message"] == ('Service "out" is invalid: spec.ports[0].nodePort: Invalid value: 29999: provided '
                               "port is not in the valid range. The range of valid ports is 30000-32767")
    # one port number on TCP and UDP shares its node port (upstream)
    spec = ok(router, svc("dual", type="NodePort", ports=[{"name": "t", "port": 53}, {"name": "u", "port": 53,
                                                                                      "protocol": "UDP"}]))
    assert spec["ports"][0]["nodePort"] == spec["ports"][1]["nodePort"]
    used = alloc.ports.used
    router.handle("DELETE", SVC.format(ns="default") + "/fixed")
    assert alloc.ports.used == used - 1
    ok(router, svc("again", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))


def test_health_check_node_port_for_local_load_balancers(store: Store) -> None:
    router, alloc = setup(store)
    spec = ok(router, svc("lb", type="LoadBalancer", externalTrafficPolicy="Local"))
    hc = spec["healthCheckNodePort"]
    assert 30000 <= hc <= 32767 and hc != spec["ports"][0]["nodePort"] and alloc.ports.has(hc)
    spec = ok(router, svc("np", type="NodePort", externalTrafficPolicy="Local"))
    assert "healthCheckNodePort" not in spec  # upstream: LoadBalancer only (NeedsHealthCheck)
    # Local -> Cluster releases the health check port
    cur = store.get("services", "default", "lb")
    cur["spec"]["externalTrafficPolicy"] = "Cluster"
    cur["spec"].pop("healthCheckNodePort")
    assert router.handle("PUT", SVC.format(ns="default") + "/lb", body=cur).status == 200
    assert not alloc.ports.has(hc)
    status, body = post(router, svc("c", externalTrafficPolicy="Local"))
    assert status == 422 and body["message"] == ('Service "c" is invalid: spec.externalTrafficPolicy: Invalid value: '
                                                 '"Local": may only be set for externally-accessible services')


def test_updates_keep_release_and_refuse(store: Store) -> None:
    router, alloc = setup(store)
    spec = ok(router, svc("s", type="NodePort"))
    ip, np_ = spec["clusterIP"], spec["ports"][0]["nodePort"]
    # a PUT that omits the allocated values keeps them (patchAllocatedValues)
    body = svc("s", type="NodePort")
    r = router.handle("PUT", SVC.format(ns="default") + "/s", body=body)
    assert r.status == 200 and r.body["spec"]["clusterIP"] == ip and r.body["spec"]["ports"][0]["nodePort"] == np_
    # clusterIP is immutable
    cur = store.get("services", "default", "s")
    cur["spec"]["clusterIP"] = cur["spec"]["clusterIPs"][0] = "10.96.0.99"
    r = router.handle("PUT", SVC.format(ns="default") + "/s", body=cur)
    assert r.status == 422
    assert 'spec.clusterIPs[0]: Invalid value: []string{"10.96.0.99"}: may not change once set' in r.body["message"]
    assert not alloc.ips["IPv4"].has("10.96.0.99") and alloc.ips["IPv4"].has(ip)
    # NodePort -> ClusterIP releases the node port; -> ExternalName releases the address
    r = router.handle("PATCH", SVC.format(ns="default") + "/s", body={"spec": {"type": "ClusterIP"}})
    assert r.status == 200 and "nodePort" not in r.body["spec"]["ports"][0] and not alloc.ports.has(np_)
    r = router.handle("PATCH", SVC.format(ns="default") + "/s",
                      body={"spec": {"type": "ExternalName", "externalName": "x.example.com"}})
    assert r.status == 200, r.body
    assert "clusterIP" not in r.body["spec"] and not alloc.ips["IPv4"].has(ip)


def test_dual_stack_ready(store: Store) -> None:
    router, alloc = setup(store, cidrs=["10.96.0.0/12", "fd00:10:96::/108"])
    spec = ok(router, svc("d", ipFamilyPolicy="PreferDualStack"))
    assert spec["ipFamilies"] == ["IPv4", "IPv6"] and len(spec["clusterIPs"]) == 2
    assert ipaddress.ip_address(spec["clusterIPs"][1]) in ipaddress.ip_network("fd00:10:96::/108")
    spec = ok(router, svc("v6", ipFamilies=["IPv6"]))
    assert spec["clusterIP"].startswith("fd00:10:96::")
    router1, _ = setup(Store(str(Path(store.path).with_name("single.sqlite"))))
    status, body = post(router1, svc("req", ipFamilyPolicy="RequireDualStack"))
    assert status == 422 and "this cluster is not configured for dual-stack services" in body["message"]
    router1.store.close()


@pytest.mark.parametrize("seed", range(5))
def test_allocators_never_hand_out_twice(seed: int) -> None:
    rng = random.Random(seed)
    ips = IPAllocator("10.96.0.0/27", rng=rng)  # 30 addresses, a 16-address static band
    got = [ips.allocate_next() for _ in range(30)]
    assert len(set(got)) == 30 and "10.96.0.0" not in got and "10.96.0.31" not in got
    assert set(got[:14]) == {f"10.96.0.{i}" for i in range(17, 31)}  # upper band first
    with pytest.raises(RangeFull):
        ips.allocate_next()
    ports = PortAllocator(30000, 30009, rng=rng)
    taken = {ports.allocate_next() for _ in range(10)}
    assert taken == set(range(30000, 30010))
    ports.release(30004)
    assert ports.allocate_next() == 30004


@pytest.mark.parametrize(("spec", "message"), [
    ({"ports": []}, "spec.ports: Required value"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]},
     'spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"'),
    ({"type": "Magic"}, 'spec.type: Unsupported value: "Magic"'),
    ({"selector": {"app": "a b"}}, 'spec.selector: Invalid value: "a b": a valid label must be an empty string'),
    ({"selector": ["app"]}, "spec.selector: Invalid value"),
    ({"ports": [{"port": 80, "targetPort": "my_port"}]},
     'spec.ports[0].targetPort: Invalid value: "my_port": must contain only alpha-numeric characters'),
    ({"ports": [{"port": 80, "targetPort": 70000}]}, "spec.ports[0].targetPort: Invalid value: 70000"),
    ({"ports": [{"port": 80, "nodePort": 30001}]},
     "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
    ({"type": "NodePort", "externalTrafficPolicy": "Nearest"},
     'spec.externalTrafficPolicy: Unsupported value: "Nearest": supported values: "Cluster", "Local"'),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 90000}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 90000: must be greater than 0 and less "
     "than 86400"),
    ({"internalTrafficPolicy": "Somewhere"}, 'spec.internalTrafficPolicy: Unsupported value: "Somewhere"'),
])
def test_service_validation(store: Store, spec: dict[str, Any], message: str) -> None:
    router, alloc = setup(store)
    status, body = post(router, svc("v", **spec))
    assert status == 422 and message in body["message"], body
    assert alloc.ips["IPv4"].used == 0 and alloc.ports.used == 0  # nothing leaked

"""API objects for the DNS tests, shaped as the API server returns them."""

from __future__ import annotations

from typing import Any


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service(name: str, ns: str = "prod", *, ip: str | list[str] | None = "10.96.0.15",
            ports: list[dict[str, Any]] | None = None, external: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": ports if ports is not None else []}
    if external is not None:
        spec.update(type="ExternalName", externalName=external)
    else:
        ips = ip if isinstance(ip, list) else [ip or "None"]
        spec.update(type="ClusterIP", clusterIP=ips[0], clusterIPs=ips)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def port(name: str, number: int, proto: str = "TCP") -> dict[str, Any]:
    return {"name": name, "port": number, "protocol": proto}


def endpoint(ip: str, *, ready: bool | None = True, hostname: str | None = None,
             pod: str | None = None) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [ip], "conditions": {} if ready is None else {"ready": ready}}
    if hostname:
        ep["hostname"] = hostname
    if pod:
        ep["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "prod"}
    return ep


def endpoint_slice(svc: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]], ns: str = "prod",
                   name: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{svc}-abcde", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}


def pod(name: str, ip: str, ns: str = "prod") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}


def cluster_objects() -> list[dict[str, Any]]:
    """The cluster every DNS test uses."""
    return [
        namespace("prod"), namespace("kube-system"), namespace("empty-ns"),
        service("backend", ports=[port("http", 80), port("syslog", 514, "UDP")]),
        endpoint_slice("backend", [endpoint("10.244.1.5", pod="web-1"), endpoint("10.244.2.7"),
                                   endpoint("10.244.3.9", ready=False)],
                       [port("http", 8080), port("syslog", 5514, "UDP")]),
        service("db", ip=None, ports=[port("pg", 5432)]),
        endpoint_slice("db", [endpoint("10.244.1.20", hostname="db-0"), endpoint("10.244.2.21", ready=None),
                              endpoint("10.244.3.22", ready=False)], [port("pg", 5432)]),
        service("lonely", ip=None, ports=[port("http", 80)]),
        service("ext", external="db.corp.example"),
        service("alias", external="backend.prod.svc.cluster.local"),
        service("dual", ip=["10.96.0.20", "fd00:10:96::20"], ports=[port("http", 80)]),
        service("noports", ip="10.96.0.30", ports=[]),
        service("kube-dns", "kube-system", ip="10.96.0.10", ports=[port("dns", 53, "UDP"), port("dns-tcp", 53)]),
        pod("web-1", "10.244.1.5"),
    ]

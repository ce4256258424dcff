"""LoadBalancer Services at MOC, sans-IO: the ensure request, VIP allocation, the lbagent document.

The cloud-provider controller in a cluster's API server VM asks the cloud agent
(``POST /v1/loadbalancers/ensure`` on TCP 55000) for a Service's load balancer; this module
parses that request (:func:`parse_ensure`), allocates its VIP from the cluster network's VIP
pool (:func:`allocate`) and builds the frontends and backends the cluster's HAProxy VM runs
for it (:func:`service_parts`).

VIP allocation (the network's ``vipAllocation``, :data:`agents.moc.pools.VIP_ALLOCATIONS`):

* ``shared-ports`` (as shipped): the lowest VIP whose *(IP, port)* mappings are free on the
  network for every port of the Service.  Services of one cluster on different ports share
  a VIP; Services of two clusters sharing one network on different ports get the *same*
  VIP -- the documented known issue.
* ``exclusive``: an address belongs to one cluster; its Services still share it by port.

``spec.loadBalancerIP`` is honoured when it lies in the pool and fits; otherwise the request
is refused with one line naming the field.  An API server VIP is always exclusive.

Annotations read by the controller and carried in the request (docs/contracts-control-plane.md):

* ``service.beta.kubernetes.io/azure-load-balancer-internal: "true"`` -> ``internal``: the VIP
  is not routed from the external network;
* ``hcinet.io/balance: roundrobin|leastconn|source`` -> ``balance`` (default roundrobin);
* ``hcinet.io/proxy-protocol: v2`` -> ``proxyProtocol: "v2"`` (``send-proxy-v2`` on every server).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import pools as P

BALANCES = ("roundrobin", "leastconn", "source")
PROTOCOLS = ("TCP",)
POLICIES = ("Cluster", "Local")
ENSURE_KEYS = frozenset({"cluster", "namespace", "name", "ports", "loadBalancerIP", "internal",
                         "externalTrafficPolicy", "healthCheckNodePort", "balance", "proxyProtocol"})


@dataclass(frozen=True, slots=True)
class LbPort:
    port: int
    protocol: str
    node_port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceLb:
    """One ensure request: a Service's load balancer as MOC records it."""

    cluster: str
    namespace: str
    name: str
    ports: tuple[LbPort, ...]
    load_balancer_ip: str | None = None
    internal: bool = False
    policy: str = "Cluster"
    health_check_node_port: int | None = None
    balance: str = "roundrobin"
    proxy_protocol: str | None = None

    @property
    def holder(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def key(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"

    def doc(self) -> dict[str, Any]:
        """The request document; :func:`parse_ensure` gives ``self`` back."""
        out: dict[str, Any] = {
            "cluster": self.cluster, "namespace": self.namespace, "name": self.name,
            "ports": [{"port": p.port, "protocol": p.protocol, "nodePort": p.node_port} for p in self.ports],
            "internal": self.internal, "externalTrafficPolicy": self.policy, "balance": self.balance}
        if self.load_balancer_ip is not None:
            out["loadBalancerIP"] = self.load_balancer_ip
        if self.health_check_node_port is not None:
            out["healthCheckNodePort"] = self.health_check_node_port
        if self.proxy_protocol is not None:
            out["proxyProtocol"] = self.proxy_protocol
        return out


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise P.PoolError(f"{where}: expected a port 1..65535, got {value!r}")
    return value


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise P.PoolError(f"{key}: required, a non-empty string")
    return value


def parse_ensure(obj: Any) -> ServiceLb:
    """Validate an ensure request; every refusal is one line naming the field."""
    if not isinstance(obj, Mapping):
        raise P.PoolError("body: expected a JSON object")
    unknown = sorted(set(obj) - ENSURE_KEYS)
    if unknown:
        raise P.PoolError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(ENSURE_KEYS))})")
    raw_ports = obj.get("ports")
    if not isinstance(raw_ports, list | tuple) or not raw_ports:
        raise P.PoolError("ports: expected a non-empty list of {port, protocol, nodePort}")
    ports: list[LbPort] = []
    for i, item in enumerate(raw_ports):
        if not isinstance(item, Mapping):
            raise P.PoolError(f"ports[{i}]: expected an object")
        protocol = item.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            raise P.PoolError(f"ports[{i}].protocol: {protocol!r} not supported (the HAProxy VM is mode tcp: TCP)")
        port = _port(item.get("port"), f"ports[{i}].port")
        if any(p.port == port for p in ports):
            raise P.PoolError(f"ports[{i}].port: duplicate port {port}")
        ports.append(LbPort(port, protocol, _port(item.get("nodePort"), f"ports[{i}].nodePort")))
    lb_ip = obj.get("loadBalancerIP") or None
    if lb_ip is not None:
        try:
            lb_ip = str(ipaddress.ip_address(lb_ip))
        except ValueError:
            raise P.PoolError(f"loadBalancerIP: {lb_ip!r} is not an IP address") from None
    internal = obj.get("internal", False)
    if not isinstance(internal, bool):
        raise P.PoolError(f"internal: expected true/false, got {internal!r}")
    policy = obj.get("externalTrafficPolicy") or "Cluster"
    if policy not in POLICIES:
        raise P.PoolError(f"externalTrafficPolicy: expected Cluster or Local, got {policy!r}")
    hc = obj.get("healthCheckNodePort")
    hc = None if hc in (None, 0) else _port(hc, "healthCheckNodePort")
    if policy == "Local" and hc is None:
        raise P.PoolError("healthCheckNodePort: required with externalTrafficPolicy Local")
    balance = obj.get("balance") or "roundrobin"
    if balance not in BALANCES:
        raise P.PoolError(f"balance: expected one of {', '.join(BALANCES)}, got {balance!r}")
    proxy = obj.get("proxyProtocol") or None
    if proxy not in (None, "v2"):
        raise P.PoolError(f"proxyProtocol: only v2 is supported, got {proxy!r}")
    return ServiceLb(cluster=_str(obj, "cluster"), namespace=_str(obj, "namespace"), name=_str(obj, "name"),
                     ports=tuple(ports), load_balancer_ip=lb_ip, internal=internal, policy=policy,
                     health_check_node_port=hc if policy == "Local" else None, balance=balance,
                     proxy_protocol=proxy)


def allocate(pool: P.VipPool, svc: ServiceLb, *, mode: str = "shared-ports", pool_name: str = "",
             others: Iterable[tuple[ServiceLb, str]] = ()) -> str:
    """Allocate (or re-ensure) the Service's VIP in ``pool``; raises :class:`PoolError`.
    ``others``: the network's other Service load balancers -- an internal VIP is never shared
    with a public Service (its route restriction would hide the public one from outside)."""
    avoid = {ipaddress.ip_address(vip) for other, vip in others
             if other.key != svc.key and other.internal != svc.internal}
    if mode not in P.VIP_ALLOCATIONS:
        raise P.PoolError(f"vipAllocation: unknown allocator {mode!r}")
    ip = ipaddress.ip_address(svc.load_balancer_ip) if svc.load_balancer_ip else None
    return str(pool.allocate_service(svc.cluster, svc.holder, [p.port for p in svc.ports],
                                     exclusive=mode == "exclusive", ip=ip, pool_name=pool_name, avoid=avoid))


def _ident(svc: ServiceLb, port: LbPort) -> str:
    return f"{svc.namespace}.{svc.name}.{port.port}"[:64]


def service_parts(services: Iterable[tuple[ServiceLb, str]], nodes: Iterable[tuple[str, str]],
                  check: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(vips, frontends, backends) for a cluster's LoadBalancer Services: one frontend per
    VIP:port whose backend's servers are every node's IP:NodePort.  ``externalTrafficPolicy:
    Local`` health-checks the Service's healthCheckNodePort over HTTP (kube-proxy answers 200
    with local endpoints, 503 without), so only nodes with local endpoints stay UP."""
    nodes = sorted(nodes)
    vips: list[str] = []
    frontends: list[dict[str, Any]] = []
    backends: list[dict[str, Any]] = []
    for svc, vip in sorted(services, key=lambda sv: sv[0].key):
        if vip not in vips:
            vips.append(vip)
        for port in svc.ports:
            ident = _ident(svc, port)
            frontends.append({"name": ident, "bind": f"{vip}:{port.port}", "backend": ident})
            servers = []
            for name, ip in nodes:
                server: dict[str, Any] = {"name": name, "address": ip, "port": port.node_port,
                                          "send_proxy_v2": svc.proxy_protocol == "v2"}
                if svc.health_check_node_port is not None:
                    server["check_port"] = svc.health_check_node_port
                servers.append(server)
            chk = dict(check)
            if svc.health_check_node_port is not None:
                chk["http"] = "/healthz"
            backends.append({"name": ident, "balance": svc.balance, "check": chk, "servers": servers})
    return vips, frontends, backends

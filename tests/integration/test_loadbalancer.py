"""Step 4's core path through the real processes: a ``type: LoadBalancer`` Service gets a VIP
from its cluster network's pool (the cloud provider in the API server VM asks MOC over the
emulated network) and the cluster's HAProxy VM serves it, spreading connections over the
nodes' NodePorts; an internal load balancer is reachable from the datacenter but not from
the external network (a no-route drop at the datacenter router).

One deployment of the default scenario's shape (two Linux nodes, ``client-dc`` on
``aks-net``, ``client-ext`` on ``internet``), ``time_scale`` 0.05.  Every wait is a
condition polled against a deadline.
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
from integration_support import plain, wait_for
from test_pod_network import AGNHOST, CLUSTER, Cluster, lab_scenario, pod_ready

from agents import mgmt
from scenarios import runner, schema

TIME_SCALE = 0.05
SETTLE = 40.0
NS = "lbtest"
POOL = (ipaddress.IPv4Address("172.16.0.150"), ipaddress.IPv4Address("172.16.0.199"))
LB_VM = f"{CLUSTER}-lb"
NODES = (f"{CLUSTER}-linux-0", f"{CLUSTER}-linux-1")

MANIFESTS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: netexec
          image: {AGNHOST}
          args: [netexec, --http-port=8080]
          ports: [{{containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-lb, namespace: {NS}}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web-int
  namespace: {NS}
  annotations: {{service.beta.kubernetes.io/azure-load-balancer-internal: "true"}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: solo, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: solo}}}}
  template:
    metadata: {{labels: {{app: solo}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {NODES[0]}}}
      containers:
        - name: netexec
          image: {AGNHOST}
          args: [netexec, --http-port=8080]
          ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: solo-local, namespace: {NS}}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {{app: solo}}
  ports: [{{port: 8080, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web-pp
  namespace: {NS}
  annotations: {{hcinet.io/proxy-protocol: v2}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{port: 81, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: solo-pp
  namespace: {NS}
  annotations: {{hcinet.io/proxy-protocol: v2}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {{app: solo}}
  ports: [{{port: 8081, targetPort: 8080}}]
"""


@pytest.fixture(scope="module")
def deployment(state_dir: Path) -> Iterator[tuple[Cluster, str]]:
    name = "lbcore"
    scenario = schema.loads(lab_scenario(name, "calico", TIME_SCALE))
    dep = trio.run(partial(runner.up, scenario, name, out=io.StringIO()))
    try:
        yield Cluster("calico", name, dep.hostagent.mgmt), str(dep.broker["mgmt"])
    finally:
        trio.run(partial(runner.down, name, out=io.StringIO()))


def ingress_ip(c: Cluster, name: str) -> str | None:
    svc = c.ok("GET", f"/api/v1/namespaces/{NS}/services/{name}")
    ing = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return str(ing[0]["ip"]) if ing else None


@pytest.fixture(scope="module")
def vips(deployment: tuple[Cluster, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    c, _ = deployment
    path = tmp_path_factory.mktemp("lb") / "lb.yaml"
    path.write_text(MANIFESTS)
    rc, out, err = c.hcinet("apply", "-f", str(path))
    assert rc == 0 and "service/web-lb created" in out, (out, err)
    wait_for(lambda: len([p for p in c.pods(ns=NS) if pod_ready(p)]) == 5 or None, SETTLE, "5 pods Ready")
    got: dict[str, str] = {}
    for name in ("web-lb", "web-int", "solo-local", "web-pp", "solo-pp"):
        got[name] = wait_for(partial(ingress_ip, c, name), SETTLE, f"{name}'s EXTERNAL-IP")
    return got


def curl(c: Cluster, vm: str, url: str, m: float = 2.0) -> tuple[int, str, str]:
    return c.vm_exec(vm, "curl", "-s", "-S", "-m", f"{m:g}", url)


def test_get_svc_shows_an_external_ip_from_the_vip_pool(deployment: tuple[Cluster, str], vips: dict[str, str]) -> None:
    c, _ = deployment
    for vip in vips.values():
        assert POOL[0] <= ipaddress.IPv4Address(vip) <= POOL[1], vips
    assert vips["web-lb"] != vips["web-int"]  # both on port 80: one (IP, port) mapping each
    assert vips["solo-local"] == vips["web-lb"]  # port 8080 of the same cluster: the VIP is shared
    rc, out, _ = c.hcinet("get", "svc", "-n", NS)
    assert rc == 0
    row = next(line.split() for line in out.splitlines() if line.startswith("web-lb "))
    assert row[1] == "LoadBalancer" and row[3] == vips["web-lb"], out
    events = c.ok("GET", f"/api/v1/namespaces/{NS}/events")["items"]
    assert any(e["reason"] == "EnsuredLoadBalancer" and e["involvedObject"]["name"] == "web-lb" for e in events)


def test_external_client_reaches_the_public_vip_and_traffic_spreads_over_nodes(
        deployment: tuple[Cluster, str], vips: dict[str, str]) -> None:
    c, _ = deployment
    vip = vips["web-lb"]
    pods = {p["metadata"]["name"] for p in c.pods(ns=NS) if p["metadata"]["name"].startswith("web-")}
    wait_for(lambda: curl(c, "client-ext", f"http://{vip}/hostname")[0] == 0 or None, SETTLE, "the VIP answering")
    got: Counter[str] = Counter()
    for _ in range(16):
        rc, out, err = curl(c, "client-ext", f"http://{vip}/hostname")
        assert rc == 0, err
        got[out.strip()] += 1
    assert set(got) <= pods and len(got) > 1, got
    rows = plain(c.vm(LB_VM, "lb_stats"))["rows"]
    servers = {r["svname"]: int(r["lbtot"]) for r in rows
               if r["pxname"] == f"{NS}.web-lb.80" and r["svname"] not in ("FRONTEND", "BACKEND")}
    assert set(servers) == set(NODES) and all(n >= 4 for n in servers.values()), servers  # roundrobin


def test_internal_vip_reachable_from_the_datacenter_not_from_outside(
        deployment: tuple[Cluster, str], vips: dict[str, str]) -> None:
    c, broker = deployment
    vip = vips["web-int"]
    wait_for(lambda: curl(c, "client-dc", f"http://{vip}/hostname")[0] == 0 or None, SETTLE, "internal VIP from dc")

    def drops() -> int:
        return int(plain(mgmt.call(broker, "stats", {}, 10.0))["nics"]["client-ext/eth0"]["drops"]["no_route"])

    before = drops()
    rc, out, err = curl(c, "client-ext", f"http://{vip}/hostname", m=1.0)
    assert rc != 0 and ("timed out" in err.lower() or "timeout" in err.lower()), (rc, out, err)
    assert drops() > before


def server_rows(c: Cluster, backend: str) -> dict[str, dict[str, str]]:
    rows = plain(c.vm(LB_VM, "lb_stats"))["rows"]
    return {r["svname"]: r for r in rows if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}


def test_local_policy_checks_the_health_check_node_port_and_skips_nodes_without_endpoints(
        deployment: tuple[Cluster, str], vips: dict[str, str]) -> None:
    c, _ = deployment
    backend = f"{NS}.solo-local.8080"
    hc = c.ok("GET", f"/api/v1/namespaces/{NS}/services/solo-local")["spec"]["healthCheckNodePort"]
    cfg = plain(c.vm(LB_VM, "lb_config"))["cfg"]
    assert "option httpchk GET /healthz" in cfg and f"port {hc}" in cfg, cfg
    def settled() -> dict[str, dict[str, str]] | None:
        r = server_rows(c, backend)
        ok = r and r[NODES[1]]["status"] == "DOWN" and r[NODES[0]]["status"] == "UP"
        return r if ok else None

    rows = wait_for(settled, SETTLE, "the node without endpoints DOWN")
    assert rows[NODES[1]]["check_status"] == "L7STS" and rows[NODES[0]]["check_status"] == "L7OK", rows
    for _ in range(6):
        rc, out, err = curl(c, "client-ext", f"http://{vips['solo-local']}:8080/hostname")
        assert rc == 0 and out.strip().startswith("solo-"), err
    assert int(server_rows(c, backend)[NODES[1]]["lbtot"]) == 0


def clientip(c: Cluster, url: str) -> str:
    rc, out, err = curl(c, "client-ext", url)
    assert rc == 0, err
    return out.strip().rsplit(":", 1)[0]


def vm_ips(c: Cluster) -> dict[str, list[str]]:
    rc, out, err = c.hcinet("vm", "list", "-o", "json")
    assert rc == 0, err
    return {v["name"]: list(v.get("ips") or ()) for v in json.loads(out)["items"]}


def test_the_client_address_a_pod_sees_and_the_proxy_protocol_carrying_the_original(
        deployment: tuple[Cluster, str], vips: dict[str, str]) -> None:
    """HAProxy in mode tcp opens its own connection to the NodePort: under Cluster kube-proxy
    then SNATs to the node, under Local the pod sees the LB VM; ``send-proxy-v2`` (the
    ``hcinet.io/proxy-protocol: v2`` annotation) carries the external client in both."""
    c, _ = deployment
    ips = vm_ips(c)
    nodes = {ip for n in NODES for ip in ips[n]}
    client = ips["client-ext"][0]
    for name, port in (("web-pp", 81), ("solo-pp", 8081)):
        url = f"http://{vips[name]}:{port}/hostname"
        wait_for(lambda u=url: curl(c, "client-ext", u)[0] == 0 or None, SETTLE, f"{name} answering")
    cfg = plain(c.vm(LB_VM, "lb_config"))["cfg"]
    assert "send-proxy-v2" in cfg, cfg
    for _ in range(4):
        assert clientip(c, f"http://{vips['web-lb']}/clientip") in nodes
        assert clientip(c, f"http://{vips['solo-local']}:8080/clientip") in ips[LB_VM]
        assert clientip(c, f"http://{vips['web-pp']}:81/clientip") == client
        assert clientip(c, f"http://{vips['solo-pp']}:8081/clientip") == client


def only_from(name: str, app: str, port: int, cidrs: list[str]) -> str:
    peers = ", ".join(f"{{ipBlock: {{cidr: {c}}}}}" for c in cidrs)
    return f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: {app}}}}}
  ingress: [{{from: [{peers}], ports: [{{port: {port}}}]}}]
"""


def test_policy_sees_the_node_under_cluster_and_the_lb_vm_under_local(
        deployment: tuple[Cluster, str], vips: dict[str, str], tmp_path: Path) -> None:
    """What a pod's ingress policy judges is the address the data plane presents: under
    ``externalTrafficPolicy: Cluster`` the node that SNATed the flow (also when the pod is on
    that same node: a SNATed forwarded flow is not the node's own traffic), under ``Local``
    the LB VM (HAProxy's own connection).  Allowing the other address drops the traffic."""
    c, _ = deployment
    ips = vm_ips(c)
    lb = [f"{ip}/32" for ip in ips[LB_VM]]
    nodes = [f"{ip}/32" for n in NODES for ip in ips[n]]

    def apply(text: str) -> None:
        path = tmp_path / "policy.yaml"
        path.write_text(text)
        rc, out, err = c.hcinet("apply", "-f", str(path))
        assert rc == 0, (out, err)

    def answers(url: str) -> bool:
        return curl(c, "client-ext", url, m=1.0)[0] == 0

    web, solo = f"http://{vips['web-lb']}/hostname", f"http://{vips['solo-local']}:8080/hostname"
    try:
        apply(only_from("web-ingress", "web", 8080, lb) + "---" + only_from("solo-ingress", "solo", 8080, lb))
        wait_for(lambda: not answers(web) or None, SETTLE, "Cluster: the LB VM's address is not what the pods see")
        assert answers(solo)  # Local: the LB VM is the client the pod sees
        assert not any(answers(web) for _ in range(4))  # whichever node HAProxy picks
        apply(only_from("web-ingress", "web", 8080, nodes) + "---" + only_from("solo-ingress", "solo", 8080, nodes))
        wait_for(lambda: answers(web) or None, SETTLE, "Cluster: allowed from the nodes")
        wait_for(lambda: not answers(solo) or None, SETTLE, "Local: the nodes are not what the pod sees")
        assert all(answers(web) for _ in range(4))
    finally:
        for name in ("web-ingress", "solo-ingress"):
            c.api("DELETE", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{name}")
    wait_for(lambda: answers(solo) or None, SETTLE, "no policy: solo answering again")


def inter_s(c: Cluster, backend: str) -> tuple[float, int, int]:
    """``inter`` (wall seconds), ``rise`` and ``fall`` of the backend's servers, from the
    haproxy.cfg the LB VM runs (``check inter 100ms rise 2 fall 3``)."""
    cfg = plain(c.vm(LB_VM, "lb_config"))["cfg"]
    m = re.search(r"check inter (\d+)(ms|s) rise (\d+) fall (\d+)", cfg)
    assert m, cfg
    inter = int(m[1]) / (1000.0 if m[2] == "ms" else 1.0)
    return inter, int(m[3]), int(m[4])


def status_of(c: Cluster, backend: str, node: str) -> str:
    return str(server_rows(c, backend)[node]["status"])


def test_a_killed_node_goes_down_after_fall_checks_and_comes_back(
        deployment: tuple[Cluster, str], vips: dict[str, str]) -> None:
    """A node VM dies: its NodePort stops answering, the checks time out and after ``fall``
    of them (fall × inter) the server is DOWN; MOC's HA restarts the VM and after ``rise``
    good checks it is UP again; meanwhile HAProxy sends it nothing."""
    c, _ = deployment
    backend = f"{NS}.web-lb.80"
    inter, rise, fall = inter_s(c, backend)
    wait_for(lambda: all(status_of(c, backend, n) == "UP" for n in NODES) or None, SETTLE, "both nodes UP")
    node = NODES[1]
    t0 = time.monotonic()
    rc, out, err = c.hcinet("vm", "kill", node)
    assert rc == 0, err
    wait_for(lambda: status_of(c, backend, node).startswith("DOWN") or None, 10 * fall * inter, f"{node} DOWN",
             interval=0.005)
    took = time.monotonic() - t0
    # the check in flight at the kill may still succeed: the first failing one ends at most
    # one inter later, then fall of them, one inter each (timeout = inter)
    assert fall * inter * 0.9 <= took <= 1.5 * fall * inter + 0.25, (took, inter, fall)
    row = server_rows(c, backend)[node]
    assert int(row["chkdown"]) >= 1 and int(row["chkfail"]) >= fall, row
    # HAProxy sends nothing to a DOWN server (until kube-proxy drops the dead node's pods
    # from the Service, node 0 may still forward some of these to them: that is not the LB's doing)
    for _ in range(4):
        curl(c, "client-ext", f"http://{vips['web-lb']}/hostname", m=0.5)
    assert server_rows(c, backend)[node]["lbtot"] == row["lbtot"]
    wait_for(lambda: status_of(c, backend, node) == "UP" or None, 4 * SETTLE, f"{node} UP again after the HA restart")
    assert int(server_rows(c, backend)[node]["chkdown"]) == int(row["chkdown"])


def test_a_partitioned_node_goes_down_and_comes_back_after_rise_checks(
        deployment: tuple[Cluster, str], vips: dict[str, str]) -> None:
    c, _ = deployment
    backend = f"{NS}.web-lb.80"
    inter, rise, fall = inter_s(c, backend)
    node = NODES[0]
    wait_for(lambda: all(status_of(c, backend, n) == "UP" for n in NODES) or None, 4 * SETTLE, "both nodes UP")
    t0 = time.monotonic()
    rc, out, err = c.hcinet("net", "partition", "--a", LB_VM, "--b", node)
    assert rc == 0, err
    pid = int(out.strip())
    wait_for(lambda: status_of(c, backend, node).startswith("DOWN") or None, 10 * fall * inter, f"{node} DOWN",
             interval=0.005)
    took = time.monotonic() - t0
    assert fall * inter * 0.9 <= took <= 1.5 * fall * inter + 0.25, (took, inter, fall)
    t1 = time.monotonic()
    rc, out, err = c.hcinet("net", "heal", str(pid))
    assert rc == 0 and str(pid) in out, (out, err)
    wait_for(lambda: status_of(c, backend, node) == "UP" or None, 10 * rise * inter, f"{node} UP", interval=0.005)
    back = time.monotonic() - t1
    # the check in flight at the heal still times out (up to one inter), then rise good ones
    assert (rise - 1) * inter <= back <= (rise + 1) * inter + 0.25, (back, inter, rise)

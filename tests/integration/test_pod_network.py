"""Step 3's required behaviour through the real processes, for both CNI plugins.

One deployment per plugin (the module's fixture is parametrized over ``calico`` and
``flannel``): a workload cluster of two Linux node VMs on ``aks-net``, the client VMs
``client-dc`` (on the nodes' own network) and ``client-ext`` (behind the datacenter router),
both serving HTTP on 8080, and the datacenter DNS VM ``dc-dns`` — the default scenario's
shape without the Windows pool.  Real manifests (Deployments of agnhost ``netexec``, client
Pods, Services of every kind) go in with ``hcinet apply -f``; traffic is driven with the
tools inside the pods (the node VM's ``pod_exec`` verb, as ``hcinet exec`` does) and inside
the client VMs (``hcinet vm exec``).

``time_scale`` is 0.03: the 40 s node-monitor grace period is 1.2 s and the 300 s
not-ready/unreachable toleration 9 s.  Synchronous, like the other integration tests: every
wait is a condition polled against a deadline; the only timed pause is the one the
programming-latency test derives from the latency it measured.  The node-stop test changes
the deployment for good and comes last.
"""

from __future__ import annotations

import io
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from integration_support import DeploymentHandles, one_cluster, wait_for

from agents.timers import Timers
from scenarios import runner, schema

TIME_SCALE = 0.03
TIMERS = Timers(TIME_SCALE)
SETTLE = 30.0  # generous deadline for anything to converge on a shared 2-core machine
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.43"
NS = "shop"
CLUSTER = "pn"
APISERVER = f"{CLUSTER}-control-plane-0"
NODE0, NODE1 = f"{CLUSTER}-linux-0", f"{CLUSTER}-linux-1"
NODE_SUBNET = "172.16.0.0/24"
CLIENT_DC, CLIENT_EXT = "172.16.0.10", "203.0.113.10"
WEB_REPLICAS = 4

INTERNET = """\
  - name: internet
    ipAddressPrefix: 203.0.113.0/24
    gateway: 203.0.113.1
    external: true
"""
CLIENTS_AND_DNS = """\
clients:
  - name: client-dc
    network: aks-net
    ip: 172.16.0.10
    apps: [{kind: http, port: 8080}]
  - name: client-ext
    network: internet
    ip: 203.0.113.10
    apps: [{kind: http, port: 8080}]
dns:
  - name: dc-dns
    network: aks-net
    ip: 172.16.0.2
    records:
      - {name: db.corp.example, type: A, value: 172.16.0.10}
      - {name: www.corp.example, type: CNAME, value: db.corp.example}
    zones: [corp.example]
"""


def lab_scenario(name: str, plugin: str, time_scale: float = TIME_SCALE) -> str:
    """Two Linux nodes, ``client-dc`` on aks-net, ``client-ext`` on the internet, a datacenter DNS."""
    return one_cluster(name, CLUSTER, time_scale=time_scale, plugin=plugin, networks=INTERNET, rest=CLIENTS_AND_DNS)

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: netexec
          image: {agnhost}
          args: [netexec, --http-port=8080, --udp-port=8081]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1, timeoutSeconds: 10}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: solo, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: solo}}}}
  template:
    metadata: {{labels: {{app: solo}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node0}}}
      containers:
        - name: netexec
          image: {agnhost}
          args: [netexec, --http-port=8080]
          ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client-0, namespace: {ns}, labels: {{role: client}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node0}}}
  containers: [{{name: client, image: "busybox:1.36", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client-1, namespace: {ns}, labels: {{role: client}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node1}}}
  containers: [{{name: client, image: "busybox:1.36", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-sticky, namespace: {ns}}}
spec:
  selector: {{app: web}}
  sessionAffinity: ClientIP
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-np, namespace: {ns}}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-local, namespace: {ns}}}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-itp, namespace: {ns}}}
spec:
  internalTrafficPolicy: Local
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: solo-itp, namespace: {ns}}}
spec:
  internalTrafficPolicy: Local
  selector: {{app: solo}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: {ns}}}
spec:
  selector: {{app: nothing-has-this-label}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-headless, namespace: {ns}}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: corp, namespace: {ns}}}
spec:
  type: ExternalName
  externalName: www.corp.example
"""






def pod_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    ready = [c for c in st.get("conditions") or () if c.get("type") == "Ready"]
    return bool(ready and ready[0].get("status") == "True" and st.get("podIP")
                and not (pod.get("metadata") or {}).get("deletionTimestamp"))


class Cluster(DeploymentHandles):
    """One plugin's deployment: the handles plus the user's commands (hcinet ... --deployment)."""

    def __init__(self, plugin: str, deployment: str, hostagent: str) -> None:
        super().__init__(hostagent, APISERVER, deployment)
        self.plugin = plugin

    # -- cluster state --

    def pods(self, app: str | None = None, ns: str = NS) -> list[dict[str, Any]]:
        items = self.ok("GET", f"/api/v1/namespaces/{ns}/pods")["items"]
        return [p for p in items if app is None or (p["metadata"].get("labels") or {}).get("app") == app]

    def ready_pods(self, app: str, ns: str = NS) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.pods(app, ns) if pod_ready(p)}

    def ready_endpoints(self, service: str, ns: str = NS) -> set[str]:
        """The addresses of the Service's ready endpoints, from its EndpointSlices."""
        items = self.ok("GET", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")["items"]
        out: set[str] = set()
        for s in items:
            if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") != service:
                continue
            for ep in s.get("endpoints") or ():
                if (ep.get("conditions") or {}).get("ready", True):
                    out.update(ep.get("addresses") or ())
        return out

    def service(self, name: str, ns: str = NS) -> dict[str, Any]:
        svc: dict[str, Any] = self.ok("GET", f"/api/v1/namespaces/{ns}/services/{name}")
        return svc

    def node_ips(self) -> dict[str, str]:
        out = {}
        for n in self.ok("GET", "/api/v1/nodes")["items"]:
            ips = [a["address"] for a in n["status"].get("addresses") or () if a["type"] == "InternalIP"]
            out[n["metadata"]["name"]] = ips[0]
        return out

    # -- traffic --

    def pod_exec(self, pod: str, *argv: str, ns: str = NS, node: str | None = None) -> dict[str, Any]:
        """A tool in the pod's network namespace, through its node VM (as ``hcinet exec``)."""
        if node is None:
            node = self.ok("GET", f"/api/v1/namespaces/{ns}/pods/{pod}")["spec"]["nodeName"]
        result: dict[str, Any] = self.vm(node, "pod_exec", {"namespace": ns, "name": pod, "argv": list(argv)})
        return result

    def vm_exec(self, vm: str, *argv: str) -> tuple[int, str, str]:
        return self.hcinet("vm", "exec", vm, "--", *argv)


@dataclass
class App:
    """What the manifests produced: pods by node, Service addresses, node addresses."""

    cluster: Cluster
    node_of: dict[str, str]            # client pod -> node
    web: dict[str, str]                # web pod name -> node
    web_ip: dict[str, str]             # web pod name -> pod IP
    node_ip: dict[str, str]
    ip: dict[str, str] = field(default_factory=dict)        # Service -> ClusterIP
    node_port: dict[str, int] = field(default_factory=dict)  # Service -> nodePort

    def on(self, node: str) -> set[str]:
        return {name for name, n in self.web.items() if n == node}

    def curl(self, client: str, url: str, *flags: str, m: float = 2) -> dict[str, Any]:
        return self.cluster.pod_exec(client, "curl", "-s", "-S", "-m", f"{m:g}", *flags, url,
                                     node=self.node_of[client])


@pytest.fixture(scope="module", params=["calico", "flannel"])
def deployment(request: pytest.FixtureRequest, state_dir: Path) -> Iterator[Cluster]:
    plugin = request.param
    name = f"podnet-{plugin}"
    scenario = schema.loads(lab_scenario(name, plugin))
    dep = trio.run(partial(runner.up, scenario, name, out=io.StringIO()))
    try:
        yield Cluster(plugin, name, dep.hostagent.mgmt)
    finally:
        trio.run(partial(runner.down, name, out=io.StringIO()))


@pytest.fixture(scope="module")
def app(deployment: Cluster, tmp_path_factory: pytest.TempPathFactory) -> App:
    """``hcinet apply -f app.yaml`` and wait until every pod is Ready and every Service's
    endpoints are in its EndpointSlices."""
    c = deployment
    wait_for(lambda: all(c.vm(n, "kubelet").get("network_ready") for n in (NODE0, NODE1)), SETTLE,
             "both nodes' pod networks")
    path = tmp_path_factory.mktemp(f"manifests-{c.plugin}") / "app.yaml"
    path.write_text(MANIFESTS.format(ns=NS, replicas=WEB_REPLICAS, agnhost=AGNHOST, node0=NODE0, node1=NODE1))
    rc, out, err = c.hcinet("apply", "-f", str(path))
    assert rc == 0, (out, err)
    assert "deployment.apps/web created" in out and "service/corp created" in out, out
    web = wait_for(lambda: (lambda r: r if len(r) == WEB_REPLICAS else None)(c.ready_pods("web")), SETTLE,
                   f"{WEB_REPLICAS} web pods Ready")
    wait_for(lambda: c.ready_pods("solo"), SETTLE, "the solo pod Ready")
    clients = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
        {p["metadata"]["name"]: p for p in c.pods() if p["metadata"]["name"].startswith("client-") and pod_ready(p)}),
        SETTLE, "both client pods Ready")
    web_ips = {name: p["status"]["podIP"] for name, p in web.items()}
    wait_for(lambda: c.ready_endpoints("web") == set(web_ips.values()), SETTLE, "web's endpoints")
    a = App(c, {name: p["spec"]["nodeName"] for name, p in clients.items()},
            {name: p["spec"]["nodeName"] for name, p in web.items()}, web_ips, c.node_ips())
    assert a.node_of == {"client-0": NODE0, "client-1": NODE1}, a.node_of
    for name in ("web", "web-sticky", "web-np", "web-local", "web-itp", "solo-itp", "empty"):
        svc = c.service(name)
        a.ip[name] = svc["spec"]["clusterIP"]
        if svc["spec"].get("type") == "NodePort":
            a.node_port[name] = int(svc["spec"]["ports"][0]["nodePort"])
    return a


def answers(a: App, client: str, url: str, n: int) -> list[str]:
    """``n`` requests (each a new connection, so each a new kube-proxy decision)."""
    out = []
    for _ in range(n):
        r = a.curl(client, url)
        assert r["rc"] == 0, r
        out.append(r["stdout"])
    return out


def only_from(a: App, client: str, url: str, names: set[str], n: int) -> bool:
    """``n`` requests in a row all answered by pods of ``names`` (a failure ends the try)."""
    for _ in range(n):
        r = a.curl(client, url, m=0.5)
        if r["rc"] != 0 or r["stdout"] not in names:
            return False
    return True


# --- pod to pod ---------------------------------------------------------------------------------


def test_pod_to_pod_across_nodes_and_on_one_node(app: App) -> None:
    a = app
    # The scheduler spreads the Deployment, so both cases exist.
    assert a.on(NODE0) and a.on(NODE1), a.web
    for name, node in a.web.items():
        ip = a.web_ip[name]
        for client in ("client-0", "client-1"):
            r = a.curl(client, f"http://{ip}:8080/hostname")
            assert (r["rc"], r["stdout"]) == (0, name), (client, node, r)
        # the server sees the client pod's own address: pod -> pod is never masqueraded,
        # across the VXLAN overlay or through the root namespace of one node
        r = a.curl("client-1", f"http://{ip}:8080/clientip")
        client_ip = a.cluster.ok("GET", f"/api/v1/namespaces/{NS}/pods/client-1")["status"]["podIP"]
        assert r["stdout"].rsplit(":", 1)[0] == client_ip, r
    # ICMP too, across nodes
    far = next(iter(a.on(NODE1)))
    r = a.cluster.pod_exec("client-0", "ping", "-c", "2", "-W", "2", a.web_ip[far], node=NODE0)
    assert r["rc"] == 0 and "2 packets transmitted, 2 received" in r["stdout"], r
    dp0 = a.cluster.vm(NODE0, "datapath")
    assert dp0["counters"]["vxlan_tx"] > 0 and dp0["counters"]["vxlan_rx"] > 0, dp0["counters"]


# --- Services -----------------------------------------------------------------------------------

# Chi-square goodness of fit against a uniform choice: with k = 4 endpoints (3 degrees of
# freedom) the critical value at alpha = 0.001 is 16.27, so a correct random spread fails
# this test once in a thousand runs; a proxy that sticks to one endpoint, or never picks one
# of them, gives a statistic in the hundreds.
SPREAD_REQUESTS = 160
CHI2_CRIT_DF3_P001 = 16.27


def test_pod_to_cluster_ip_spreads_over_every_ready_endpoint(app: App) -> None:
    a = app
    got = Counter(answers(a, "client-1", f"http://{a.ip['web']}/hostname", SPREAD_REQUESTS))
    assert set(got) == set(a.web), f"every ready endpoint answers: {got}"
    k = len(a.web)
    expected = SPREAD_REQUESTS / k
    chi2 = sum((got[name] - expected) ** 2 / expected for name in a.web)
    assert k == 4 and chi2 < CHI2_CRIT_DF3_P001, f"chi-square {chi2:.1f} over {dict(got)}"
    proxy = a.cluster.vm(NODE1, "datapath")["kube_proxy"]
    assert proxy["mode"] == "iptables" and proxy["counters"]["new_flows"] >= SPREAD_REQUESTS, proxy


def test_session_affinity_client_ip_pins_each_client(app: App) -> None:
    a = app
    url = f"http://{a.ip['web-sticky']}/hostname"
    for client in ("client-0", "client-1"):
        got = set(answers(a, client, url, 16))
        assert len(got) == 1 and got <= set(a.web), (client, got)
    assert a.cluster.vm(NODE0, "datapath")["kube_proxy"]["affinity_records"] >= 1
    # the same number of requests without affinity does reach more than one endpoint
    assert len(set(answers(a, "client-0", f"http://{a.ip['web']}/hostname", 16))) > 1


def test_node_port_from_client_vms_with_external_traffic_policy_cluster(app: App) -> None:
    a = app
    port = a.node_port["web-np"]
    assert 30000 <= port <= 32767
    seen = set()
    for vm in ("client-dc", "client-ext"):
        for node in (NODE0, NODE1):
            rc, out, err = a.cluster.vm_exec(vm, "curl", "-s", "-S", "-m", "3",
                                             f"http://{a.node_ip[node]}:{port}/hostname")
            assert rc == 0 and out in a.web, (vm, node, rc, out, err)
            seen.add(out)
            # Cluster: SNAT to the node, so the pod does not see the client's address
            rc, out, err = a.cluster.vm_exec(vm, "curl", "-s", "-S", "-m", "3",
                                             f"http://{a.node_ip[node]}:{port}/clientip")
            assert rc == 0, (vm, rc, err)
            assert out.rsplit(":", 1)[0] not in (CLIENT_DC, CLIENT_EXT), (vm, node, out)
    assert seen


def test_external_traffic_policy_local_keeps_the_client_ip_and_local_endpoints(app: App) -> None:
    a = app
    port = a.node_port["web-local"]
    for node in (NODE0, NODE1):
        seen = set()
        for _ in range(10):
            rc, out, err = a.cluster.vm_exec("client-dc", "curl", "-s", "-S", "-m", "3",
                                             f"http://{a.node_ip[node]}:{port}/hostname")
            assert rc == 0, (node, rc, err)
            seen.add(out)
        assert seen <= a.on(node), f"{node} sent NodePort traffic to {seen - a.on(node)}, not local"
        rc, out, err = a.cluster.vm_exec("client-dc", "curl", "-s", "-S", "-m", "3",
                                         f"http://{a.node_ip[node]}:{port}/clientip")
        assert rc == 0 and out.rsplit(":", 1)[0] == CLIENT_DC, (node, rc, out, err)


def test_internal_traffic_policy_local(app: App) -> None:
    a = app
    for client, node in a.node_of.items():
        got = set(answers(a, client, f"http://{a.ip['web-itp']}/hostname", 10))
        assert got <= a.on(node), f"{client} on {node} reached {got - a.on(node)}, not local"
    # solo runs on NODE0 only: its node reaches it, the other one has no local endpoint
    r = a.curl("client-0", f"http://{a.ip['solo-itp']}/hostname")
    assert r["rc"] == 0 and r["stdout"].startswith("solo-"), r
    r = a.curl("client-1", f"http://{a.ip['solo-itp']}/hostname", m=0.5)
    assert r["rc"] == 28, f"internalTrafficPolicy Local without a local endpoint drops: {r}"


def test_refused_at_once_versus_timed_out(app: App) -> None:
    a = app
    # No endpoints: kube-proxy REJECTs (ICMP port unreachable) -> refused at once.
    t0 = time.monotonic()
    r = a.curl("client-1", f"http://{a.ip['empty']}/", m=5)
    refused_s = time.monotonic() - t0
    assert r["rc"] == 7 and "Connection refused" in r["stderr"], r
    assert re.match(rf"curl: \(7\) Failed to connect to {re.escape(a.ip['empty'])} port 80 after \d+ ms: "
                    r"Connection refused", r["stderr"]), r["stderr"]
    assert refused_s < 1.5, f"refused after {refused_s:.2f} s, not at once"
    # the same through hcinet exec, as a user sees it (kubectl's trailer, the tool's code)
    rc, out, err = a.cluster.hcinet("exec", "client-1", "-n", NS, "--", "curl", "-s", "-S", "-m", "5",
                                    f"http://empty.{NS}.svc.cluster.local/")
    if _kube_dns(a.cluster) is None:  # no CoreDNS: the name does not resolve
        assert rc == 6, (rc, out, err)
    else:
        assert rc == 7 and "Connection refused" in err and "command terminated with exit code 7" in err, (rc, err)
    # A black hole (internalTrafficPolicy Local with no endpoint on this node: dropped, no
    # answer at all) -> the client waits out -m.
    t0 = time.monotonic()
    r = a.curl("client-1", f"http://{a.ip['solo-itp']}/", m=1)
    waited = time.monotonic() - t0
    assert r["rc"] == 28 and "timed out" in r["stderr"], r
    assert waited >= 1.0, f"a drop must time out, got an answer after {waited:.2f} s"


# --- DNS ----------------------------------------------------------------------------------------


def _kube_dns(c: Cluster) -> dict[str, Any] | None:
    status, svc = c.api("GET", "/api/v1/namespaces/kube-system/services/kube-dns")
    return svc if status == 200 else None


def _addresses(stdout: str) -> list[str]:
    """The answer's ``Address:`` lines of nslookup (the server's own ``Address:\\tIP#53`` line
    left out)."""
    return [m.group(1) for m in re.finditer(r"^Address: (\S+)$", stdout, re.M)]


def _dns_ready(c: Cluster) -> None:
    kube_dns = _kube_dns(c)
    if kube_dns is None:
        pytest.skip("CoreDNS addon not deployed: no kube-system/kube-dns Service in the cluster")
    assert kube_dns["spec"]["clusterIP"] == "10.96.0.10"
    wait_for(lambda: c.ready_endpoints("kube-dns", "kube-system"), SETTLE, "kube-dns endpoints (CoreDNS Ready)")


def lookup(c: Cluster, *args: str) -> dict[str, Any]:
    """``nslookup ARGS`` in client-1 (pn-linux-1)."""
    return c.pod_exec("client-1", "nslookup", *args, node=NODE1)


def resolved(c: Cluster, name: str) -> dict[str, Any] | None:
    r = lookup(c, name)
    return r if r["rc"] == 0 else None


def test_dns_service_names_headless_srv_and_nxdomain(app: App) -> None:
    a = app
    c = a.cluster
    _dns_ready(c)
    web_ip = a.ip["web"]
    # FQDN, and shorter names through the pod's search path (ndots:5)
    for name in (f"web.{NS}.svc.cluster.local", "web", f"web.{NS}"):
        r = wait_for(partial(resolved, c, name), SETTLE, f"{name} to resolve")
        assert r["stdout"].startswith("Server:\t\t10.96.0.10\n"), r
        assert _addresses(r["stdout"]) == [web_ip], (name, r)
    # headless: the ready pods' addresses
    r = lookup(c, "web-headless")
    assert r["rc"] == 0 and set(_addresses(r["stdout"])) == set(a.web_ip.values()), r
    # SRV for the named port
    r = lookup(c, "-type=SRV", f"_http._tcp.web.{NS}.svc.cluster.local")
    assert r["rc"] == 0 and re.search(rf"service = 0 \d+ 80 web\.{NS}\.svc\.cluster\.local\.", r["stdout"]), r
    # nothing else
    r = lookup(c, "no-such-service")
    assert r["rc"] == 1 and "** server can't find no-such-service: NXDOMAIN" in r["stdout"], r
    # and the tools resolve the same names
    r = a.curl("client-0", "http://web/hostname")
    assert r["rc"] == 0 and r["stdout"] in a.web, r


def test_dns_external_name_is_a_cname_followed_through_the_datacenter_dns(app: App) -> None:
    a = app
    c = a.cluster
    _dns_ready(c)
    r = lookup(c, "corp")
    assert r["rc"] == 0, r
    assert f"corp.{NS}.svc.cluster.local\tcanonical name = www.corp.example." in r["stdout"], r
    assert "www.corp.example\tcanonical name = db.corp.example." in r["stdout"], r
    assert _addresses(r["stdout"]) == [CLIENT_DC], r
    # curl resolves the name the same way; whether the VM then answers the pod is the
    # masquerade's business (the pod -> VM test below): Flannel leaves the node subnet
    # un-NATed, so client-dc's reply goes to its gateway and the connection times out.
    excepted = NODE_SUBNET in c.vm(NODE0, "cni_masquerade")["exceptions"]
    r = a.curl("client-0", "http://corp:8080/hostname", m=1 if excepted else 2)
    assert (r["rc"], r["stdout"].strip()) == ((28, "") if excepted else (0, "client-dc")), r


# --- pod -> VM: the Flannel / Calico difference, by mechanism -----------------------------------


def test_pod_to_vm_difference_follows_the_masquerade_exceptions_and_flips(app: App) -> None:
    """Calico masquerades all traffic leaving the pool (natOutgoing); Flannel's exception
    list holds the node subnet, so a VM on it sees the pod address, answers through its
    gateway, which has no route to the pod CIDR: the connection times out.  A VM on another
    network is masqueraded by both.  Flipping the node subnet in or out of the exceptions
    flips the outcome (docs/contracts-pod-network.md)."""
    a = app
    c = a.cluster
    before = {n: c.vm(n, "cni_masquerade") for n in (NODE0, NODE1)}
    excepted = NODE_SUBNET in before[NODE0]["exceptions"]
    assert excepted == (c.plugin == "flannel"), before

    def to_vms(expect_dc: bool) -> None:
        r = a.curl("client-0", f"http://{CLIENT_DC}:8080/clientip", m=2 if expect_dc else 1)
        if expect_dc:
            assert r["rc"] == 0 and r["stdout"].strip().rsplit(":", 1)[0] == a.node_ip[NODE0], r
        else:
            assert r["rc"] == 28, f"a VM on the node network answers the pod IP via its gateway: {r}"
        r = a.curl("client-0", f"http://{CLIENT_EXT}:8080/clientip", m=2)
        assert r["rc"] == 0 and r["stdout"].strip().rsplit(":", 1)[0] == a.node_ip[NODE0], r

    to_vms(expect_dc=not excepted)
    try:
        for node in (NODE0, NODE1):
            flipped = [p for p in before[node]["exceptions"] if p != NODE_SUBNET] if excepted \
                else [*before[node]["exceptions"], NODE_SUBNET]
            assert c.vm(node, "cni_masquerade", {"exceptions": flipped})["exceptions"] == flipped
        to_vms(expect_dc=excepted)
    finally:
        for node in (NODE0, NODE1):
            c.vm(node, "cni_masquerade", {"exceptions": before[node]["exceptions"]})
    to_vms(expect_dc=not excepted)


# --- endpoints follow pods ----------------------------------------------------------------------


def test_a_deleted_pod_leaves_the_endpoints_within_the_programming_latency(app: App) -> None:
    a = app
    c = a.cluster
    victim = sorted(a.on(NODE0))[0]
    victim_ip = a.web_ip[victim]
    before = c.vm(NODE1, "datapath")["kube_proxy"]["programming_latency"]["count"]
    rc, out, err = c.hcinet("delete", "pod", victim, "-n", NS)
    assert rc == 0 and f'pod "{victim}" deleted' in out, (out, err)
    # the moment the API says the endpoint is gone (its change committed before this)
    wait_for(lambda: victim_ip not in c.ready_endpoints("web"), SETTLE, f"{victim} to leave web's endpoints",
             interval=0.01)
    left = time.monotonic()
    lat = wait_for(lambda: (lambda s: s if s["count"] > before else None)(
        c.vm(NODE1, "datapath")["kube_proxy"]["programming_latency"]), SETTLE, "kube-proxy to record the change")
    assert lat["p99_ms"] < 1000, f"programming latency p99 {lat['p99_ms']:.0f} ms on 2 nodes"
    # Within the node's recorded p99 of the commit, its rules no longer pick the pod.
    pause = left + lat["p99_ms"] / 1000 - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    survivors = set(a.web) - {victim}
    got: Counter[str] = Counter()
    for _ in range(24):
        r = a.curl("client-1", f"http://{a.ip['web']}/hostname")
        got[r["stdout"] if r["rc"] == 0 else f"rc {r['rc']}"] += 1
    assert victim not in got, f"{victim} still answered after the latency: {dict(got)}"
    assert all(k in survivors or k.startswith("web-") for k in got), dict(got)
    # The ReplicaSet replaces it; the Service comes back to the full count.
    wait_for(lambda: len(c.ready_endpoints("web")) == WEB_REPLICAS, SETTLE, "the replacement pod's endpoint")
    new = c.ready_pods("web")
    a.web = {name: p["spec"]["nodeName"] for name, p in new.items()}
    a.web_ip = {name: p["status"]["podIP"] for name, p in new.items()}


# --- node failure (last: it changes the deployment) ---------------------------------------------


def test_a_stopped_node_leaves_the_endpoints_and_its_pods_come_back_elsewhere(app: App) -> None:
    a = app
    c = a.cluster
    lost = {name for name, node in a.web.items() if node == NODE1}
    assert lost, a.web
    lost_ips = {a.web_ip[n] for n in lost}
    rc, out, err = c.hcinet("vm", "stop", NODE1)
    assert rc == 0, (out, err)
    stopped = time.monotonic()
    # NotReady after the (scaled) grace period: its pods turn not ready and leave the slices.
    wait_for(lambda: not (c.ready_endpoints("web") & lost_ips), SETTLE, f"{NODE1}'s pods to leave web's endpoints")
    left = time.monotonic() - stopped
    assert left < TIMERS.pod_eviction_toleration, f"endpoints left only after {left:.1f} s"
    # ... and NODE0's kube-proxy follows (within its programming latency): every request
    # reaches a pod on NODE0, none waits on a dead one.
    wait_for(lambda: only_from(a, "client-0", f"http://{a.ip['web']}/hostname", a.on(NODE0), 8), SETTLE,
             f"{NODE0}'s kube-proxy to stop picking {NODE1}'s pods", interval=0.1)

    # After the toleration they are evicted and the Deployment recreates them on NODE0.
    def back() -> dict[str, dict[str, Any]] | None:
        ready = c.ready_pods("web")
        on0 = {n: p for n, p in ready.items() if p["spec"]["nodeName"] == NODE0}
        return on0 if len(on0) == WEB_REPLICAS else None

    again = wait_for(back, TIMERS.pod_eviction_toleration + SETTLE, "web's pods to come back on " + NODE0,
                     interval=0.2)
    took = time.monotonic() - stopped
    assert took >= TIMERS.pod_eviction_toleration, f"pods rescheduled after {took:.1f} s, before the toleration"
    assert not (set(again) & lost)
    wait_for(lambda: c.ready_endpoints("web") == {p["status"]["podIP"] for p in again.values()}, SETTLE,
             "the recreated pods' endpoints")
    got = set(answers(a, "client-0", f"http://{a.ip['web']}/hostname", 12))
    assert got <= set(again) and len(got) > 1, got
    # Back on: the node registers Ready again and finishes deleting its evicted pods.
    rc, out, err = c.hcinet("vm", "start", NODE1)
    assert rc == 0, (out, err)
    wait_for(lambda: not ({p["metadata"]["name"] for p in c.pods("web")} & lost), SETTLE,
             f"{NODE1}'s evicted pods to be gone", interval=0.2)

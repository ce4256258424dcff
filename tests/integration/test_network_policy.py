"""Network policy through the real processes (issue 6, Parts 1, 2 and 4): one Calico deployment.

A workload cluster of two Linux node VMs; a ``web`` Deployment (agnhost netexec on 8080, an
HTTP readiness probe), a ClusterIP Service in front of it, a ``client`` pod labelled
``role=client`` and an ``other`` pod without it, on different nodes.  Policies go in with
``hcinet apply -f`` (Kubernetes and Calico objects alike); traffic is driven with curl inside
the pods (the node VM's ``pod_exec``), and the nodes' ``policy`` verb shows what Felix holds
and what it dropped.  A denied connection times out (curl's exit 28), never refused (7).
The Flannel side (stored, warned, not enforced) is covered by tests/apiserver/
test_calico_resources.py and tests/node/test_felix.py to keep this module under a minute.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from integration_support import DeploymentHandles, one_cluster, wait_for

from scenarios import runner, schema

TIME_SCALE = 0.05
SETTLE = 30.0
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.43"
NS = "np"
CLUSTER = "pol"
APISERVER = f"{CLUSTER}-control-plane-0"
NODE0, NODE1 = f"{CLUSTER}-linux-0", f"{CLUSTER}-linux-1"


APP = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {NODE0}}}
      containers:
        - name: netexec
          image: {AGNHOST}
          args: [netexec, --http-port=8080]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1, timeoutSeconds: 10}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{role: client}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {NODE1}}}
  containers: [{{name: c, image: "busybox:1.36", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: {NS}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {NODE1}}}
  containers: [{{name: c, image: "busybox:1.36", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: local, namespace: {NS}, labels: {{role: client}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {NODE0}}}
  containers: [{{name: c, image: "busybox:1.36", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
"""

DENY_INGRESS = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: default-deny-ingress, namespace: {NS}}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
"""
ALLOW_CLIENT = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-client, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]
      ports: [{{port: 8080, protocol: TCP}}]
"""
GNP_DENY = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: block-clients}
spec:
  order: 10
  selector: app == 'web'
  types: [Ingress]
  ingress:
    - action: Deny
      source: {selector: role == 'client'}
"""
DENY_EGRESS = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: default-deny-egress, namespace: {NS}}}
spec: {{podSelector: {{}}, policyTypes: [Egress]}}
"""


def pod_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    ready = [c for c in st.get("conditions") or () if c.get("type") == "Ready"]
    return bool(ready and ready[0].get("status") == "True" and st.get("podIP"))


class Cluster(DeploymentHandles):
    def __init__(self, deployment: str, hostagent: str, tmp: Path) -> None:
        super().__init__(hostagent, APISERVER, deployment)
        self.tmp = tmp

    def apply(self, text: str, name: str) -> str:
        path = self.tmp / f"{name}.yaml"
        path.write_text(text)
        rc, out, err = self.hcinet("apply", "-f", str(path))
        assert rc == 0, (out, err)
        return out + err

    def delete(self, text: str, name: str) -> None:
        path = self.tmp / f"{name}.yaml"
        path.write_text(text)
        rc, out, err = self.hcinet("delete", "-f", str(path))
        assert rc == 0, (out, err)

    def pod(self, name: str) -> dict[str, Any]:
        pod: dict[str, Any] = self.ok("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
        return pod

    def curl(self, client: str, url: str, m: float = 1.0) -> dict[str, Any]:
        node = self.pod(client)["spec"]["nodeName"]
        result: dict[str, Any] = self.vm(node, "pod_exec", {"namespace": NS, "name": client,
                                                             "argv": ["curl", "-s", "-S", "-m", f"{m:g}", url]})
        return result


@dataclass
class App:
    c: Cluster
    web_ip: str
    cluster_ip: str

    def reaches(self, client: str, url: str | None = None) -> bool:
        r = self.c.curl(client, url or f"http://{self.web_ip}:8080/hostname")
        if r["rc"] == 0:
            return True
        assert r["rc"] == 28 and "timed out" in r["stderr"], r  # dropped, not refused
        return False

    def eventually(self, client: str, want: bool, url: str | None = None) -> None:
        """Policy takes effect on the nodes in the watch event's loop turn; the test only
        waits for the apply to have reached the nodes (the watch delivery)."""
        wait_for(lambda: self.reaches(client, url) == want, SETTLE, f"{client} reaches={want} {url or ''}")


@pytest.fixture(scope="module")
def app(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    name = "netpol"
    scenario = schema.loads(one_cluster(name, CLUSTER, time_scale=TIME_SCALE))
    dep = trio.run(partial(runner.up, scenario, name, out=io.StringIO()))
    try:
        c = Cluster(name, dep.hostagent.mgmt, tmp_path_factory.mktemp("policies"))
        wait_for(lambda: all(c.vm(n, "kubelet").get("network_ready") for n in (NODE0, NODE1)), SETTLE,
                 "both nodes' pod networks")
        c.apply(APP, "app")
        for pod in ("client", "other", "local"):
            wait_for(lambda p=pod: pod_ready(c.pod(p)), SETTLE, f"{pod} Ready")
        web = wait_for(lambda: [p for p in c.ok("GET", f"/api/v1/namespaces/{NS}/pods")["items"]
                                if (p["metadata"].get("labels") or {}).get("app") == "web" and pod_ready(p)],
                       SETTLE, "web Ready")[0]
        svc = c.ok("GET", f"/api/v1/namespaces/{NS}/services/web")
        yield App(c, web["status"]["podIP"], svc["spec"]["clusterIP"])
    finally:
        trio.run(partial(runner.down, name, out=io.StringIO()))


def test_calico_default_pool_exists(app: App) -> None:
    pool = app.c.ok("GET", "/apis/projectcalico.org/v3/ippools/default-ipv4-ippool")
    assert pool["spec"]["cidr"] == "10.244.0.0/16" and pool["spec"]["vxlanMode"] == "Always", pool
    status = app.c.vm(NODE0, "policy")
    assert status["enforcing"] is True and status["ready"] is True, status


def test_default_deny_then_allow_from_clients(app: App) -> None:
    a, c = app, app.c
    assert a.reaches("other") and a.reaches("client")
    drops_before = c.vm(NODE0, "policy")["policy_drops"]
    c.apply(DENY_INGRESS, "deny-ingress")
    a.eventually("other", False)
    pol = c.vm(NODE0, "policy")
    web_key = next(k for k in pol["endpoints"] if k.startswith(f"{NS}/web-"))
    assert pol["endpoints"][web_key]["ingress"] == ["knp.default.default-deny-ingress"], pol["endpoints"]
    assert pol["policy_drops"] > drops_before and pol["enforcer"]["denied"] > 0, pol
    assert pol["latency"]["count"] >= 1, pol["latency"]
    assert c.vm(NODE0, "datapath")["counters"]["policy_drops"] == pol["policy_drops"]
    # the readiness probe (node -> local pod) keeps passing under default deny
    wait_for(lambda: c.vm(NODE0, "policy")["enforcer"].get("node_local", 0) > 0, SETTLE,
             "a probe passing as node-local traffic")
    assert all(pod_ready(p) for p in c.ok("GET", f"/api/v1/namespaces/{NS}/pods")["items"])
    c.apply(ALLOW_CLIENT, "allow-client")
    a.eventually("client", True)
    assert not a.reaches("other")
    # through the Service: the policy sees the pod behind the ClusterIP (after DNAT)
    assert a.reaches("client", f"http://{a.cluster_ip}/hostname")
    assert not a.reaches("other", f"http://{a.cluster_ip}/hostname")
    assert a.reaches("local")  # same node, labelled: allowed; replies of allowed flows pass


def test_calico_gnp_with_lower_order_overrides_the_kubernetes_allow(app: App) -> None:
    a, c = app, app.c
    a.eventually("client", True)
    out = c.apply(GNP_DENY, "gnp")
    assert "globalnetworkpolicy.projectcalico.org/block-clients created" in out, out
    a.eventually("client", False)
    pol = c.vm(NODE0, "policy")
    web_key = next(k for k in pol["endpoints"] if k.startswith(f"{NS}/web-"))
    assert pol["endpoints"][web_key]["ingress"][0] == "block-clients", pol["endpoints"]
    c.delete(GNP_DENY, "gnp")
    a.eventually("client", True)


def test_egress_default_deny(app: App) -> None:
    a, c = app, app.c
    a.eventually("client", True)
    c.apply(DENY_EGRESS, "deny-egress")
    a.eventually("client", False)
    assert c.vm(NODE1, "policy")["enforcer"]["denied"] > 0
    c.delete(DENY_EGRESS, "deny-egress")
    a.eventually("client", True)


HOST_ENDPOINT = f"""
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: {NODE0}-eth0, labels: {{host-endpoint: node0}}}}
spec: {{node: {NODE0}, interfaceName: eth0, expectedIPs: [{{node_ip}}]}}
"""
ALLOW_PING_TO_HOSTS = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-ping-to-hosts}
spec:
  selector: has(host-endpoint)
  types: [Ingress]
  ingress:
    - {action: Allow, protocol: ICMP, icmp: {type: 8}}
"""


def test_a_host_endpoint_polices_traffic_to_its_node(app: App) -> None:
    """A HostEndpoint for node 0 and no policy: Calico's default deny for host endpoints
    (failsafe ports, the VXLAN overlay and the node's own pods excepted): a ping from a pod
    of the other node (masqueraded to that node's address) is dropped, the overlay and the
    API server connection (failsafe 6443) keep working; a GlobalNetworkPolicy allowing ICMP
    echo to host endpoints lets the ping through."""
    a, c = app, app.c
    node = c.ok("GET", f"/api/v1/nodes/{NODE0}")
    node_ip = next(x["address"] for x in node["status"]["addresses"] if x["type"] == "InternalIP")

    def ping() -> bool:
        r = c.vm(NODE1, "pod_exec", {"namespace": NS, "name": "other", "argv": ["ping", "-c", "1", "-W", "1", node_ip]})
        return bool(r["rc"] == 0)

    assert ping()
    hep = HOST_ENDPOINT.replace("{node_ip}", node_ip)
    c.apply(hep, "hep")
    wait_for(lambda: not ping() or None, SETTLE, "the ping to node 0 dropped")
    status = c.vm(NODE0, "policy")["host_endpoint"]
    assert status["present"] and status["dropped"] > 0 and status["failsafe"] > 0, status
    a.eventually("client", True)  # pod traffic over VXLAN to node 0's pods is not the host's
    c.apply(ALLOW_PING_TO_HOSTS, "allow-ping")
    wait_for(lambda: ping() or None, SETTLE, "the ping to node 0 allowed")
    c.delete(ALLOW_PING_TO_HOSTS, "allow-ping")
    c.delete(hep, "hep")
    wait_for(lambda: ping() or None, SETTLE, "no host endpoint: nothing policed")


FLANNEL_APP = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NS}, labels: {{app: web}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {NODE0}}}
  containers:
    - {{name: netexec, image: "{AGNHOST}", args: [netexec, --http-port=8080], ports: [{{containerPort: 8080}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: {NS}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {NODE1}}}
  containers: [{{name: c, image: "busybox:1.36", command: [sleep, "3600"]}}]
"""


def test_flannel_stores_warns_and_does_not_enforce(state_dir: Path, tmp_path: Path) -> None:
    name = "netpol-flannel"
    scenario = schema.loads(one_cluster(name, CLUSTER, time_scale=TIME_SCALE, plugin="flannel"))
    dep = trio.run(partial(runner.up, scenario, name, out=io.StringIO()))
    try:
        c = Cluster(name, dep.hostagent.mgmt, tmp_path)
        wait_for(lambda: all(c.vm(n, "kubelet").get("network_ready") for n in (NODE0, NODE1)), SETTLE,
                 "both nodes' pod networks")
        c.apply(FLANNEL_APP, "app")
        for pod in ("server", "other"):
            wait_for(lambda p=pod: pod_ready(c.pod(p)), SETTLE, f"{pod} Ready")
        server_ip = c.pod("server")["status"]["podIP"]
        path = tmp_path / "deny.yaml"
        path.write_text(DENY_INGRESS)
        rc, out, err = c.hcinet("apply", "-f", str(path))
        assert rc == 0 and "networkpolicy.networking.k8s.io/default-deny-ingress created" in out, (out, err)
        assert err.strip() == (f"Warning: cluster {CLUSTER} uses flannel, which does not enforce network policy; "
                               "the policy is stored but not enforced"), err
        c.ok("GET", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/default-deny-ingress")
        assert c.vm(NODE0, "policy") == {"enforcing": False, "reason": "flannel does not enforce network policy"}
        r = c.curl("other", f"http://{server_ip}:8080/hostname")
        assert (r["rc"], r["stdout"]) == (0, "server"), r
        assert c.vm(NODE0, "datapath")["counters"]["policy_drops"] == 0
    finally:
        trio.run(partial(runner.down, name, out=io.StringIO()))

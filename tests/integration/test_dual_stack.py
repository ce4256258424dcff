"""Dual stack on Calico through the real processes (issue step 5, part 5).

One deployment: a ``ipFamilies: [IPv4, IPv6]`` Calico cluster of two Linux node VMs.  A
Deployment of agnhost ``netexec`` behind a ``PreferDualStack`` Service, and one busybox
client pod pinned to each node, go in with ``hcinet apply -f``.  Checked: pods carry an IPv4
and an IPv6 ``podIPs`` (``podIP`` the IPv4 one), the Service two ClusterIPs (the second from
``fd00:10:96::/112``) and an EndpointSlice per address family; ``hcinet exec POD -- curl
http://[v6 ClusterIP]/hostname`` reaches a web pod; pods ping each other over IPv6 across
nodes (ICMPv6 in the IPv4 VXLAN); CoreDNS answers AAAA for the Service.  A Flannel dual-stack
cluster is refused with one clear line, by the scenario validator and by ``hcinet cluster
create`` on the running deployment.
"""

from __future__ import annotations

import io
import ipaddress
from collections.abc import Iterator
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
NS = "ds"
CLUSTER = "dual"
APISERVER = f"{CLUSTER}-control-plane-0"
NODE0, NODE1 = f"{CLUSTER}-linux-0", f"{CLUSTER}-linux-1"
POD_V6 = ipaddress.ip_network("fd00:10:244::/56")
SVC_V6 = ipaddress.ip_network("fd00:10:96::/112")



def dual_stack(name: str, plugin: str) -> str:
    return one_cluster(name, CLUSTER, time_scale=TIME_SCALE, plugin=plugin, cluster_keys="    ipFamilies: [IPv4, IPv6]\n")


MANIFESTS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: netexec
          image: {AGNHOST}
          args: [netexec, --http-port=8080]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1, timeoutSeconds: 10}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client-0, namespace: {NS}, labels: {{role: client}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {NODE0}}}
  containers: [{{name: client, image: "busybox:1.36", command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client-1, namespace: {NS}, labels: {{role: client}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {NODE1}}}
  containers: [{{name: client, image: "busybox:1.36", command: [sleep, "3600"]}}]
"""


def ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    cond = [c for c in st.get("conditions") or () if c.get("type") == "Ready"]
    return bool(cond and cond[0].get("status") == "True" and st.get("podIP"))


def v6_of(pod: dict[str, Any]) -> str:
    return next(p["ip"] for p in pod["status"]["podIPs"] if ":" in p["ip"])


class Dual(DeploymentHandles):
    def __init__(self, deployment: str, hostagent: str) -> None:
        super().__init__(hostagent, APISERVER, deployment)

    def pods(self) -> dict[str, dict[str, Any]]:
        items = self.ok("GET", f"/api/v1/namespaces/{NS}/pods")["items"]
        return {p["metadata"]["name"]: p for p in items}

    def exec(self, pod: str, *argv: str) -> dict[str, Any]:
        node = self.pods()[pod]["spec"]["nodeName"]
        result: dict[str, Any] = self.vm(node, "pod_exec", {"namespace": NS, "name": pod, "argv": list(argv)})
        return result


@pytest.fixture(scope="module")
def dual(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dual]:
    name = "dualstack"
    scenario = schema.loads(dual_stack(name, "calico"))
    dep = trio.run(partial(runner.up, scenario, name, out=io.StringIO()))
    try:
        d = Dual(name, dep.hostagent.mgmt)
        path = tmp_path_factory.mktemp("ds") / "app.yaml"
        path.write_text(MANIFESTS)
        rc, out, err = d.hcinet("apply", "-f", str(path))
        assert rc == 0, err

        def all_ready() -> bool | None:
            pods = d.pods()
            web = [p for p in pods.values() if (p["metadata"].get("labels") or {}).get("app") == "web"]
            return (len(web) == 2 and all(ready(p) for p in pods.values())
                    and {"client-0", "client-1"} <= set(pods)) or None

        wait_for(all_ready, SETTLE, "every pod Ready")
        yield d
    finally:
        trio.run(partial(runner.down, name, out=io.StringIO()))


def test_pods_have_two_pod_ips_and_the_service_two_cluster_ips(dual: Dual) -> None:
    for name, pod in dual.pods().items():
        ips = [p["ip"] for p in pod["status"]["podIPs"]]
        assert len(ips) == 2 and pod["status"]["podIP"] == ips[0], (name, ips)
        assert ipaddress.ip_address(ips[0]).version == 4 and ipaddress.ip_address(ips[1]) in POD_V6
    spec = dual.ok("GET", f"/api/v1/namespaces/{NS}/services/web")["spec"]
    assert spec["ipFamilyPolicy"] == "PreferDualStack" and spec["ipFamilies"] == ["IPv4", "IPv6"]
    assert ipaddress.ip_address(spec["clusterIPs"][1]) in SVC_V6 and spec["clusterIP"] == spec["clusterIPs"][0]

    def by_family() -> dict[str, set[str]] | None:
        items = dual.ok("GET", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices")["items"]
        out: dict[str, set[str]] = {}
        for s in items:
            if s["metadata"]["labels"].get("kubernetes.io/service-name") == "web":
                out.setdefault(s["addressType"], set()).update(a for e in s["endpoints"] or () for a in e["addresses"])
        return out if len(out.get("IPv6", ())) == 2 and len(out.get("IPv4", ())) == 2 else None

    families = wait_for(by_family, SETTLE, "an EndpointSlice per family with both web pods")
    web_v6 = {v6_of(p) for p in dual.pods().values() if p["metadata"].get("labels", {}).get("app") == "web"}
    assert families["IPv6"] == web_v6


def test_curl_to_the_v6_cluster_ip_and_ping6_across_nodes(dual: Dual) -> None:
    v6_vip = dual.ok("GET", f"/api/v1/namespaces/{NS}/services/web")["spec"]["clusterIPs"][1]
    web = {n for n, p in dual.pods().items() if p["metadata"].get("labels", {}).get("app") == "web"}
    rc, out, err = dual.hcinet("exec", "client-0", "-n", NS, "--", "curl", "-s", "-S", "-m", "5",
                               f"http://[{v6_vip}]:80/hostname")
    assert rc == 0 and out.strip() in web, (rc, out, err)
    pods = dual.pods()
    assert pods["client-0"]["spec"]["nodeName"] != pods["client-1"]["spec"]["nodeName"]
    target = v6_of(pods["client-1"])
    r = dual.exec("client-0", "ping", "-c", "2", "-W", "2", target)
    assert r["rc"] == 0 and f"from {target}" in r["stdout"], r


def test_coredns_answers_aaaa_for_the_service(dual: Dual) -> None:
    v6_vip = dual.ok("GET", f"/api/v1/namespaces/{NS}/services/web")["spec"]["clusterIPs"][1]

    def answered() -> dict[str, Any] | None:
        r = dual.exec("client-0", "nslookup", "-type=AAAA", "web")
        return r if r["rc"] == 0 and v6_vip in r["stdout"] else None

    r = wait_for(answered, SETTLE, "an AAAA answer for web")
    assert f"web.{NS}.svc.cluster.local" in r["stdout"]


V6_ONLY_POLICY = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-from-v6-pods, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - from: [{{ipBlock: {{cidr: "fd00:10:244::/56"}}}}]
      ports: [{{port: http}}]
"""


def test_a_policy_with_an_ipv6_cidr_admits_v6_and_drops_v4(dual: Dual, tmp_path: Path) -> None:
    """An ipBlock of the IPv6 pod pool: a pod reaches web over IPv6, and its IPv4 connection
    (the same pods, the other family) is dropped: it times out, it is not refused."""
    pods = dual.pods()
    web = next(p for p in pods.values() if p["metadata"].get("labels", {}).get("app") == "web")
    v4, v6 = web["status"]["podIP"], v6_of(web)
    path = tmp_path / "v6-policy.yaml"
    path.write_text(V6_ONLY_POLICY)
    rc, out, err = dual.hcinet("apply", "-f", str(path))
    assert rc == 0, err
    try:
        def v4_dropped() -> dict[str, Any] | None:
            r = dual.exec("client-1", "curl", "-s", "-S", "-m", "1", f"http://{v4}:8080/hostname")
            return r if r["rc"] != 0 else None
        r = wait_for(v4_dropped, SETTLE, "the IPv4 connection dropped")
        assert r["rc"] == 28, r
        r = dual.exec("client-1", "curl", "-s", "-S", "-m", "3", f"http://[{v6}]:8080/hostname")
        assert r["rc"] == 0 and r["stdout"].strip() == web["metadata"]["name"], r
    finally:
        rc, out, err = dual.hcinet("delete", "-f", str(path))
        assert rc == 0, err


def test_flannel_dual_stack_is_refused_with_a_clear_error(dual: Dual) -> None:
    with pytest.raises(schema.ScenarioError) as exc:
        schema.loads(dual_stack("x", "flannel"))
    msg = str(exc.value)
    assert "\n" not in msg and "Flannel does not support IPv6" in msg and "clusters[0]" in msg
    rc, _, err = dual.hcinet("cluster", "create", "--name", "fl", "--primary-network-plugin", "flannel",
                             "--ip-families", "IPv4,IPv6", "--no-wait")
    assert rc != 0 and "--ip-families: Flannel does not support IPv6 (dual stack needs primaryNetworkPlugin " \
                       "calico)" in err, err

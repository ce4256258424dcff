"""Step 5's user-facing verbs on a live Calico cluster: ``calicoctl apply|get|ipam show``,
``policy matrix`` (no -f: the live objects) and ``probe`` (real connections), which must
agree; and ``probe`` never loads the policy engine.

One deployment for the module: a Calico cluster of two Linux node VMs, ``time_scale`` 0.05.
Four pods in namespace ``pol``: two agnhost netexec servers (``app=web``, HTTP 8080, UDP
8081), a client ``role=client`` and an ``role=other`` pod, spread over both nodes.  Every wait
is a condition polled against a deadline.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integration_support import DeploymentHandles, one_cluster, wait_for

from scenarios import runner, schema

TIME_SCALE = 0.05
SETTLE = 40.0
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.43"
NS = "pol"
CLUSTER = "pc"
APISERVER = f"{CLUSTER}-control-plane-0"
NODE0, NODE1 = f"{CLUSTER}-linux-0", f"{CLUSTER}-linux-1"
PORTS = ("--port", "8080/TCP", "--port", "8081/UDP", "--port", "9000/SCTP")

SCENARIO = one_cluster("polcli", CLUSTER, time_scale=TIME_SCALE)


def _server(name: str, node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{app: web}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers:
  - name: netexec
    image: {AGNHOST}
    args: [netexec, --http-port=8080, --udp-port=8081]
    ports: [{{name: http, containerPort: 8080}}, {{name: dns-ish, containerPort: 8081, protocol: UDP}}]
"""


def _client(name: str, role: str, node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{role: {role}}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers: [{{name: c, image: "busybox:1.36", command: [sleep, "3600"]}}]
"""


APP = "\n---\n".join([f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n",
                      _server("web-0", NODE0), _server("web-1", NODE1),
                      _client("client", "client", NODE0), _client("other", "other", NODE1)])

POLICIES = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: default-deny, namespace: {NS}}}
spec:
  podSelector: {{}}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-from-clients, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]
    ports: [{{port: http}}, {{port: 8081, protocol: UDP}}]
"""

GNP = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: log-nothing}
spec:
  order: 2000
  selector: app == 'never-matches'
  ingress: [{action: Allow}]
"""


class Cluster(DeploymentHandles):
    def __init__(self, deployment: str, hostagent: str) -> None:
        super().__init__(hostagent, APISERVER, deployment)

    def json_of(self, *argv: str) -> dict[str, Any]:
        rc, out, err = self.hcinet(*argv, "-o", "json")
        assert rc == 0, (out, err)
        doc: dict[str, Any] = json.loads(out)
        return doc


def ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    conds = [c for c in st.get("conditions") or () if c.get("type") == "Ready"]
    return bool(conds and conds[0].get("status") == "True" and st.get("podIP"))


def verdict_set(doc: dict[str, Any]) -> dict[tuple[str, str, int, str], bool]:
    return {(v["src"], v["dst"], v["port"], v["protocol"]): v["allowed"] for v in doc["verdicts"]}


@pytest.fixture(scope="module")
def cluster(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    scenario = schema.loads(SCENARIO)
    dep = trio.run(partial(runner.up, scenario, "polcli", out=io.StringIO()))
    try:
        c = Cluster("polcli", dep.hostagent.mgmt)
        wait_for(lambda: all(c.vm(n, "kubelet").get("network_ready") for n in (NODE0, NODE1)), SETTLE,
                 "both nodes' pod networks")
        path = tmp_path_factory.mktemp("polcli") / "app.yaml"
        path.write_text(APP)
        rc, out, err = c.hcinet("apply", "-f", str(path))
        assert rc == 0, (out, err)
        wait_for(lambda: len([p for p in c.ok("GET", f"/api/v1/namespaces/{NS}/pods")["items"] if ready(p)]) == 4,
                 SETTLE, "the four pods Ready")
        yield c
    finally:
        trio.run(partial(runner.down, "polcli", out=io.StringIO()))


def test_probe_without_policy_sees_everything_answer_quickly(cluster: Cluster) -> None:
    t0 = time.monotonic()
    doc = cluster.json_of("probe", "-n", NS, *PORTS)
    elapsed = time.monotonic() - t0
    assert doc["pods"] == [f"{NS}/client", f"{NS}/other", f"{NS}/web-0", f"{NS}/web-1"]
    assert len(doc["verdicts"]) == 4 * 3 * 3
    # servers answer, clients refuse (TCP RST, UDP port unreachable): all allowed
    assert all(v["allowed"] for v in doc["verdicts"]), [v for v in doc["verdicts"] if not v["allowed"]]
    assert elapsed < 10, elapsed


def test_calicoctl_apply_and_get(cluster: Cluster, tmp_path: Path) -> None:
    f = tmp_path / "gnp.yaml"
    f.write_text(GNP)
    rc, out, err = cluster.hcinet("calicoctl", "apply", "-f", str(f))
    assert (rc, out.strip()) == (0, "Successfully applied 1 'GlobalNetworkPolicy' resource(s)"), err
    rc, out, err = cluster.hcinet("calicoctl", "get", "gnp", "-o", "wide")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ORDER", "SELECTOR"]
    assert lines[1].split()[:2] == ["log-nothing", "2000"] and "never-matches" in lines[1]
    rc, out, err = cluster.hcinet("calicoctl", "get", "workloadendpoint", "-n", NS)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"client", "other", "web-0", "web-1"}
    pod = cluster.ok("GET", f"/api/v1/namespaces/{NS}/pods/client")
    assert rows["client"][1:3] == [NODE0, f"{pod['status']['podIP']}/32"]
    assert rows["client"][3].startswith("cali") and len(rows["client"][3]) == 15
    rc, out, err = cluster.hcinet("calicoctl", "get", "node", "-o", "wide")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ASN", "IPV4", "IPV6"]
    assert {line.split()[0] for line in lines[1:]} >= {NODE0, NODE1}
    rc, out, err = cluster.hcinet("calicoctl", "get", "ippool")
    assert rc == 0 and out.splitlines()[0].split() == ["NAME", "CIDR", "SELECTOR"], (out, err)
    assert "10.244.0.0/16" in out


def test_calicoctl_ipam_show_blocks_and_owners(cluster: Cluster) -> None:
    rc, out, err = cluster.hcinet("calicoctl", "ipam", "show", "--show-blocks")
    assert rc == 0, err
    assert "| GROUPING |" in out and "| IPS TOTAL |" in out and "IPS IN USE" in out
    pool = [line for line in out.splitlines() if line.startswith("| IP Pool")]
    assert len(pool) == 1 and "10.244.0.0/16" in pool[0] and "65536" in pool[0]
    blocks = [line for line in out.splitlines() if line.startswith("| Block")]
    owners = {line.split("|")[6].strip() for line in blocks}
    assert owners >= {f"host:{NODE0}", f"host:{NODE1}"}, out
    used = sum(int(line.split("|")[4].split()[0]) for line in blocks)
    assert used >= 4 + 2  # four pods and the two VXLAN tunnel addresses
    rc, out, err = cluster.hcinet("calicoctl", "ipam", "show")
    assert rc == 0 and "| Block" not in out and "| IP Pool" in out


def test_live_matrix_and_probe_agree_after_default_deny_and_allow(cluster: Cluster, tmp_path: Path) -> None:
    f = tmp_path / "pol.yaml"
    f.write_text(POLICIES)
    rc, out, err = cluster.hcinet("apply", "-f", str(f))
    assert rc == 0, (out, err)
    matrix = verdict_set(cluster.json_of("policy", "matrix", "-n", NS, *PORTS))
    assert matrix[(f"{NS}/client", f"{NS}/web-1", 8080, "TCP")] is True
    assert matrix[(f"{NS}/client", f"{NS}/web-0", 8081, "UDP")] is True
    assert matrix[(f"{NS}/other", f"{NS}/web-0", 8080, "TCP")] is False
    assert matrix[(f"{NS}/web-0", f"{NS}/client", 8080, "TCP")] is False
    # the data plane converges on the policies: probe until it says what the matrix says
    last: dict[str, Any] = {}

    def agree() -> bool:
        last["probe"] = verdict_set(cluster.json_of("probe", "-n", NS, *PORTS))
        return last["probe"] == matrix
    try:
        wait_for(agree, SETTLE, "probe verdicts equal to the live matrix", interval=0.2)
    finally:
        diff = {k: (v, last.get("probe", {}).get(k)) for k, v in matrix.items() if last.get("probe", {}).get(k) != v}
        print("matrix vs probe differences:", diff)
    rc, out, err = cluster.hcinet("calicoctl", "get", "networkpolicy", "-n", NS, "-o", "wide")
    assert rc == 0 and "knp.default.web-from-clients" in out, (out, err)


def test_probe_never_imports_the_policy_engine(cluster: Cluster) -> None:
    code = ("import sys\nfrom scenarios import cli\n"
            f"rc = cli.main(['probe', '-n', '{NS}', '--port', '8080/TCP', '-o', 'json', '--deployment', 'polcli'])\n"
            "loaded = sorted(m for m in sys.modules if m == 'agents.policy' or m.startswith('agents.policy.'))\n"
            "print('LOADED', loaded, file=sys.stderr)\nsys.exit(rc or (3 if loaded else 0))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stderr
    assert json.loads(proc.stdout)["pods"]


# --- Flannel: stored, not enforced --------------------------------------------------------------

FLANNEL_CLUSTER = "fc"
FLANNEL_NODE = f"{FLANNEL_CLUSTER}-linux-0"
DENY_ALL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"""


@pytest.fixture(scope="module")
def flannel(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    text = one_cluster("polcli-fl", FLANNEL_CLUSTER, time_scale=TIME_SCALE, plugin="flannel", nodes=1)
    dep = trio.run(partial(runner.up, schema.loads(text), "polcli-fl", out=io.StringIO()))
    try:
        c = Cluster("polcli-fl", dep.hostagent.mgmt)
        c.apiserver = f"{FLANNEL_CLUSTER}-control-plane-0"
        wait_for(lambda: c.vm(FLANNEL_NODE, "kubelet").get("network_ready"), SETTLE, "the node's pod network")
        path = tmp_path_factory.mktemp("polcli-fl") / "app.yaml"
        pods = [_server("web", FLANNEL_NODE), _client("client", "client", FLANNEL_NODE)]
        path.write_text("\n---\n".join(p.replace(f"namespace: {NS}", "namespace: default") for p in pods)
                        + "\n---\n" + DENY_ALL)
        rc, out, err = c.hcinet("apply", "-f", str(path))
        assert rc == 0, (out, err)
        wait_for(lambda: len([p for p in c.ok("GET", "/api/v1/namespaces/default/pods")["items"] if ready(p)]) == 2,
                 SETTLE, "both pods Ready")
        yield c
    finally:
        trio.run(partial(runner.down, "polcli-fl", out=io.StringIO()))


def test_flannel_matrix_says_everything_is_allowed_and_why_and_the_probe_agrees(flannel: Cluster) -> None:
    rc, out, err = flannel.hcinet("policy", "matrix", "-n", "default", *PORTS, "-o", "json")
    assert rc == 0, err
    assert f"cluster {FLANNEL_CLUSTER} uses flannel: network policy is not enforced" in err
    doc = json.loads(out)
    assert doc["pods"] == ["default/client", "default/web"] and len(doc["verdicts"]) == 6
    assert all(v["allowed"] for v in doc["verdicts"])
    rc, out, err = flannel.hcinet("policy", "matrix", "-n", "default", *PORTS)
    assert rc == 0 and out.startswith(f"cluster {FLANNEL_CLUSTER} uses flannel")
    assert verdict_set(flannel.json_of("probe", "-n", "default", *PORTS)) == verdict_set(doc)


def test_calicoctl_on_flannel_is_one_line(flannel: Cluster) -> None:
    rc, out, err = flannel.hcinet("calicoctl", "get", "ippool")
    assert (rc, out) == (1, "") and err.count("\n") == 1
    assert f"cluster {FLANNEL_CLUSTER} does not run Calico" in err


# --- randomized: the live matrix and the probe agree on whatever policy set is in force -----------

PEERS = {
    "clients": {"podSelector": {"matchLabels": {"role": "client"}}},
    "web": {"podSelector": {"matchLabels": {"app": "web"}}},
    "any-namespace": {"namespaceSelector": {}},
    "this-namespace-by-label": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
                                "podSelector": {"matchExpressions": [{"key": "role", "operator": "NotIn",
                                                                      "values": ["other"]}]}},
    "pod-network": {"ipBlock": {"cidr": "10.244.0.0/16"}},
}
PORT_CHOICES = {"none": None, "http": [{"port": "http"}], "udp": [{"port": 8081, "protocol": "UDP"}],
                "sctp": [{"port": 9000, "protocol": "SCTP"}], "range": [{"port": 8000, "endPort": 8090}]}
TARGETS = {"all": {}, "web": {"matchLabels": {"app": "web"}}, "clients": {"matchLabels": {"role": "client"}}}


@st.composite
def policy_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 3))):
        types = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
        spec: dict[str, Any] = {"podSelector": TARGETS[draw(st.sampled_from(sorted(TARGETS)))], "policyTypes": types}
        for t, key, peer_key in (("Ingress", "ingress", "from"), ("Egress", "egress", "to")):
            if t not in types:
                continue
            rules = []
            for _ in range(draw(st.integers(0, 2))):
                rule: dict[str, Any] = {}
                peers = draw(st.lists(st.sampled_from(sorted(PEERS)), max_size=2, unique=True))
                if peers:
                    rule[peer_key] = [PEERS[p] for p in peers]
                ports = PORT_CHOICES[draw(st.sampled_from(sorted(PORT_CHOICES)))]
                if ports:
                    rule["ports"] = ports
                rules.append(rule)
            spec[key] = rules
        out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": f"rnd-{i}", "namespace": NS}, "spec": spec})
    if draw(st.booleans()):  # a Calico policy ahead of them (order 10 < 1000)
        action = draw(st.sampled_from(["Deny", "Allow", "Pass"]))
        out.append({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                    "metadata": {"name": "rnd-gnp"},
                    "spec": {"order": 10, "selector": draw(st.sampled_from(["app == 'web'", "has(role)", "all()"])),
                             "types": ["Ingress"],
                             "ingress": [{"action": action, "protocol": draw(st.sampled_from(["TCP", "UDP"])),
                                          "source": {"selector": "role == 'client'"}}]}})
    return out


def _clear_policies(cluster: Cluster) -> None:
    for path in (f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies",
                 "/apis/projectcalico.org/v3/globalnetworkpolicies"):
        for item in cluster.ok("GET", path)["items"]:
            cluster.api("DELETE", f"{path}/{item['metadata']['name']}")


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(policies=policy_sets())
def test_live_matrix_and_probe_agree_on_random_policy_sets(cluster: Cluster, tmp_path: Path,
                                                           policies: list[dict[str, Any]]) -> None:
    """Whatever the set: the policy verdicts (the engine over the live objects) and what the
    sockets see (probe) are the same, once the nodes have the objects.  The probe reads no
    policy state, so the data plane is judged only by its packets."""
    _clear_policies(cluster)
    f = tmp_path / "rnd.yaml"
    f.write_text(yaml.safe_dump_all(policies, sort_keys=False))
    rc, out, err = cluster.hcinet("apply", "-f", str(f))
    assert rc == 0, (out, err)
    matrix = verdict_set(cluster.json_of("policy", "matrix", "-n", NS, *PORTS))
    last: dict[str, Any] = {}

    def agree() -> bool:
        last["probe"] = verdict_set(cluster.json_of("probe", "-n", NS, *PORTS))
        return last["probe"] == matrix
    try:
        wait_for(agree, SETTLE, "probe verdicts equal to the live matrix", interval=0.2)
    except BaseException:
        diff = {k: (v, last.get("probe", {}).get(k)) for k, v in matrix.items() if last.get("probe", {}).get(k) != v}
        print("policies:", policies, "\nmatrix vs probe differences:", diff)
        raise
    finally:
        _clear_policies(cluster)

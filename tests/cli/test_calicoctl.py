"""``hcinet calicoctl`` against the real API server router over a temporary store (the cluster
lookup and MOC's cluster list faked), and its pure parts: WorkloadEndpoint names, tables,
the IPAM rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.apiserver.rest import Router
from agents.apiserver.store import Store
from agents.cni.calico import BlockAllocator
from scenarios import aks, calicoctl, cli

GNPS = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-db}
spec:
  order: 10
  selector: role == 'db'
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-dns}
spec:
  order: 5.5
  selector: all()
  egress: [{action: Allow, protocol: UDP, destination: {ports: [53]}}]
"""

MIXED = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  selector: app == 'web'
  ingress: [{action: Allow, source: {selector: app == 'client'}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec: {podSelector: {matchLabels: {app: db}}}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: v6-pool}
spec: {cidr: "fd00:10:244::/56", vxlanMode: Always, natOutgoing: false, nodeSelector: all()}
"""


class Fake:
    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(str(tmp_path / "api.sqlite"), clock=lambda: 1.7e9)
        self.router = Router(self.store)
        self.router.bootstrap()
        self.plugin = "calico"

    async def api(self, method: str, path: str, query: Any, body: Any) -> tuple[int, Any]:
        res = self.router.handle(method, path, query, body)
        return res.status, json.loads(json.dumps(res.body))

    def do(self, method: str, path: str, body: Any = None) -> Any:
        res = self.router.handle(method, path, None, body)
        assert res.status < 400, res.body
        return res.body


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    f = Fake(tmp_path)

    async def cluster_api(ns: Any) -> Any:
        return f.api

    async def pick_cluster(ns: Any) -> str:
        return "c1"

    async def clusters(ns: Any) -> list[dict[str, Any]]:
        return [{"name": "c1", "primaryNetworkPlugin": f.plugin}]

    monkeypatch.setattr(aks, "cluster_api", cluster_api)
    monkeypatch.setattr(aks, "pick_cluster", pick_cluster)
    monkeypatch.setattr(aks, "clusters", clusters)
    yield f
    f.store.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["calicoctl", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def write(tmp_path: Path, text: str, name: str = "f.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --- apply and get ------------------------------------------------------------------------------

def test_apply_prints_calicoctls_line_and_get_shows_the_columns(fake: Fake, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, GNPS)
    assert run(capsys, "apply", "-f", f)[:2] == (0, "Successfully applied 2 'GlobalNetworkPolicy' resource(s)\n")
    assert run(capsys, "apply", "-f", f)[:2] == (0, "Successfully applied 2 'GlobalNetworkPolicy' resource(s)\n")
    rc, out, _ = run(capsys, "get", "gnp")
    assert rc == 0 and out.split() == ["NAME", "allow-dns", "deny-db"]
    rc, out, _ = run(capsys, "get", "globalnetworkpolicy", "-o", "wide")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ORDER", "SELECTOR"]
    assert lines[1].split()[:2] == ["allow-dns", "5.5"] and lines[2].split()[:2] == ["deny-db", "10"]
    assert "role == 'db'" in lines[2]
    rc, out, _ = run(capsys, "get", "gnp", "deny-db", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "GlobalNetworkPolicy" and doc["metadata"]["name"] == "deny-db"


def test_mixed_kinds_namespaced_policies_and_kubernetes_ones_as_knp(fake: Fake, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake.do("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    rc, out, err = run(capsys, "apply", "-f", write(tmp_path, MIXED))
    assert (rc, out) == (0, "Successfully applied 3 resource(s)\n"), err
    rc, out, _ = run(capsys, "get", "networkpolicy", "-n", "shop", "-o", "wide")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ORDER", "SELECTOR"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["knp.default.deny", "web"], out
    assert lines[1].split()[1] == "1000"
    rc, out, _ = run(capsys, "get", "networkpolicy")  # namespace default: nothing
    assert out.split() == ["NAME"]
    rc, out, _ = run(capsys, "get", "np", "-A")
    assert out.splitlines()[0].split() == ["NAMESPACE", "NAME"]
    rc, out, _ = run(capsys, "get", "ippool", "-o", "wide")
    assert out.splitlines()[0].split() == ["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED",
                                           "DISABLEBGPEXPORT", "SELECTOR"]
    assert out.splitlines()[1].split() == ["v6-pool", "fd00:10:244::/56", "false", "Never", "Always", "false",
                                           "false", "all()"]


def test_without_an_ippool_object_the_default_pool_shows(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "get", "ippool")
    assert out.splitlines() == ["NAME                  CIDR            SELECTOR",
                                "default-ipv4-ippool   10.244.0.0/16   all()"]


def test_workload_endpoints_and_nodes_are_derived(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    fake.do("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n-1"},
                                      "status": {"addresses": [{"type": "InternalIP", "address": "172.16.0.21"}]}})
    pod = fake.do("POST", "/api/v1/namespaces/default/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"nodeName": "n-1", "containers": [{"name": "c", "image": "nginx"}]}})
    pod["status"] = {"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}]}
    fake.do("PUT", "/api/v1/namespaces/default/pods/web-1/status", pod)
    rc, out, err = run(capsys, "get", "wep")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
    assert lines[1].split() == ["web-1", "n-1", "10.244.0.5/32", calicoctl.host_veth("default", "web-1")]
    rc, out, _ = run(capsys, "get", "workloadendpoints", "-o", "wide")
    assert out.splitlines()[0].split() == ["NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES", "NATS"]
    assert out.splitlines()[1].split()[0] == "n--1-k8s-web--1-eth0"
    assert "kns.default,ksa.default.default" in out
    rc, out, _ = run(capsys, "get", "node", "-o", "wide")
    assert [line.split() for line in out.splitlines()] == [["NAME", "ASN", "IPV4", "IPV6"],
                                                          ["n-1", "(64512)", "172.16.0.21"]]


def test_a_bad_selector_is_refused_naming_the_position(fake: Fake, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: bad}\n"
                        "spec: {selector: \"app == \"}\n")
    rc, out, err = run(capsys, "apply", "-f", f)
    assert rc == 1 and out == ""
    assert "Failed to apply 'GlobalNetworkPolicy' resource" in err and "position" in err, err


def test_non_calico_kinds_unknown_kinds_and_flannel_are_one_line_errors(fake: Fake, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    rc, _, err = run(capsys, "apply", "-f", f)
    assert rc == 1 and "ConfigMap" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "get", "bgppeer")
    assert rc == 1 and "resource type 'bgppeer' is not supported" in err
    fake.plugin = "flannel"
    for argv in (["get", "ippool"], ["ipam", "show"], ["apply", "-f", write(tmp_path, GNPS, "g.yaml")]):
        rc, out, err = run(capsys, *argv)
        assert (rc, out) == (1, ""), argv
        assert err.count("\n") == 1 and "cluster c1 does not run Calico" in err and "flannel" in err


# --- pure parts ---------------------------------------------------------------------------------

def test_wep_names_double_the_dashes() -> None:
    assert calicoctl.wep_name("aks-linux-0", "web-7c9") == "aks--linux--0-k8s-web--7c9-eth0"


def test_the_veth_name_is_the_cni_plugins() -> None:
    name = calicoctl.host_veth("shop", "web")
    assert name.startswith("cali") and len(name) == 15
    assert name != calicoctl.host_veth("shop", "web2")


def test_ipam_rows_count_pool_and_block_usage() -> None:
    alloc = BlockAllocator()
    for i in range(5):
        alloc.allocate("n0", f"pod-{i}")
    alloc.allocate("n1", "pod-x")
    blocks = [{"cidr": c, "affinity": f"host:{s['affinity']}", "in_use": s["in_use"]}
              for c, s in alloc.stats().items()]
    rows = calicoctl.ipam_rows(["10.244.0.0/16"], blocks, True)
    assert rows[0] == ["IP Pool", "10.244.0.0/16", "65536", "6 (0%)", "65530 (100%)", ""]
    assert rows[1] == ["Block", "10.244.0.0/26", "64", "5 (8%)", "59 (92%)", "host:n0"]
    assert rows[2] == ["Block", "10.244.0.64/26", "64", "1 (2%)", "63 (98%)", "host:n1"]
    assert len(calicoctl.ipam_rows(["10.244.0.0/16"], blocks, False)) == 1
    text = calicoctl.boxed(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
                           [r[:5] for r in rows[:1]], right=(2,))
    assert text.splitlines() == [
        "+----------+---------------+-----------+------------+--------------+",
        "| GROUPING |     CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |",
        "+----------+---------------+-----------+------------+--------------+",
        "| IP Pool  | 10.244.0.0/16 |     65536 | 6 (0%)     | 65530 (100%) |",
        "+----------+---------------+-----------+------------+--------------+",
    ]

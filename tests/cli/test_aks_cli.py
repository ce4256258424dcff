"""Scenario v2 (the AKS-HCI deployment) and the AKS verbs of the CLI, without processes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from scenarios import aks, cli, runner, schema

DEFAULT = Path(schema.__file__).with_name("default.yaml")

V2: dict[str, Any] = {
    "name": "v2",
    "time_scale": 0.5,
    "networks": [
        {"name": "aks", "vswitchName": "External", "ipAddressPrefix": "172.16.0.0/24", "gateway": "172.16.0.1",
         "dnsServers": ["172.16.0.2"], "k8sNodeIpPoolStart": "172.16.0.20", "k8sNodeIpPoolEnd": "172.16.0.99",
         "vipPoolStart": "172.16.0.150", "vipPoolEnd": "172.16.0.199"},
        {"name": "lab", "ipAddressPrefix": "10.0.0.0/24", "gateway": "10.0.0.1",
         "dhcpScopeStart": "10.0.0.100", "dhcpScopeEnd": "10.0.0.199",
         "vipPoolStart": "10.0.0.20", "vipPoolEnd": "10.0.0.29"},
        {"name": "internet", "ipAddressPrefix": "203.0.113.0/24", "gateway": "203.0.113.1", "external": True},
    ],
    "management": {"network": "aks", "cloudAgentIp": "172.16.0.5"},
    "clusters": [{"name": "c1", "vnet": "aks",
                  "nodePools": [{"name": "c1-linux", "osType": "linux", "nodeCount": 2}]}],
    "clients": [
        {"name": "web", "network": "aks", "ip": "172.16.0.10", "apps": [{"kind": "http", "port": 8080}]},
        {"name": "roamer", "network": "lab", "dhcp": True},
        {"name": "ext", "network": "internet", "ip": "203.0.113.10"},
    ],
}


def v2_with(path: str, value: Any) -> dict[str, Any]:
    """V2 with one value replaced (``a.b[1].c``); ``...`` deletes the key."""
    doc = copy.deepcopy(V2)
    parts = path.replace("[", ".").replace("]", "").split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return doc


# --- schema v2 -------------------------------------------------------------------------------

def test_the_default_scenario_is_the_step_2_demo() -> None:
    s = schema.load(DEFAULT)
    assert s.uses_moc and s.time_scale < 1
    net = s.network(s.clusters[0].vnet)
    assert net.model == "static" and len(net.dns_servers) >= 1
    (cluster,) = s.clusters
    assert (cluster.name, cluster.network_plugin, cluster.load_balancer_sku) == ("cluster1", "calico", "HAProxy")
    assert sorted((p.os_type, p.node_count) for p in cluster.node_pools) == [("linux", 2), ("windows", 1)]
    clients = {c.name: c for c in s.clients}
    assert s.network(clients["client-dc"].network).external is False
    assert any(a.kind == "http" and a.port == 8080 for a in clients["client-dc"].apps)
    assert s.network(clients["client-ext"].network).external is True
    assert s.warnings == ()


def test_a_v2_document_parses_and_round_trips() -> None:
    s = schema.parse(V2)
    aks_net, lab = s.network("aks"), s.network("lab")
    assert aks_net.model == "static" and str(aks_net.node_pool) == "172.16.0.20-172.16.0.99"
    assert lab.model == "dhcp" and lab.vswitch_name == "External"  # MOC's default vSwitch
    assert lab.mgmt_args()["dhcp_scope"] == ["10.0.0.100", "10.0.0.199"]
    assert "dhcp_scope" not in aks_net.mgmt_args()
    assert s.management == schema.Management(network="aks", cloud_agent_ip=schema.ipaddress.ip_address("172.16.0.5"))
    roamer = next(c for c in s.clients if c.name == "roamer")
    assert roamer.dhcp and roamer.doc() == {"name": "roamer", "network": "lab", "dhcp": True}
    assert schema.parse(s.doc()) == s


def test_a_cluster_with_only_a_name_gets_new_akshcicluster_defaults() -> None:
    doc = v2_with("clusters", [{"name": "solo"}])
    (c,) = schema.parse(doc).clusters
    assert c.vnet == "aks"  # the management (AKS host) network
    assert (c.network_plugin, c.control_plane_count, c.load_balancer_sku, c.max_pods) == ("calico", 1, "HAProxy", 110)
    assert c.node_pools == (schema.NodePool(name="solo-linux", os_type="linux", node_count=1),)
    assert c.vm_names() == ["solo-control-plane-0", "solo-lb", "solo-linux-0"]


def test_flannel_is_accepted_with_a_warning() -> None:
    s = schema.parse(v2_with("clusters[0].primaryNetworkPlugin", "Flannel"))
    assert s.clusters[0].network_plugin == "flannel"
    assert len(s.warnings) == 1 and s.warnings[0].startswith("clusters[0]: Flannel was retired in December 2023")


BAD = [
    ("clusters[0].name", "c-1", "clusters[0].name: 'c-1' must not contain hyphens (New-AksHciCluster)"),
    ("clusters[0].controlPlaneNodeCount", 3,
     "clusters[0].controlPlaneNodeCount: 3 control-plane nodes are not supported yet (only 1)"),
    ("clusters[0].nodeMaxPodCount", 50,
     "clusters[0].nodeMaxPodCount: must be greater than 50 and at most 250, got 50"),
    ("clusters[0].primaryNetworkPlugin", "cilium",
     "clusters[0].primaryNetworkPlugin: expected calico or flannel, got 'cilium'"),
    ("clusters[0].loadBalancerSku", "F5", "clusters[0].loadBalancerSku: expected HAProxy or none, got 'F5'"),
    ("clusters[0].vnet", "internet", "clusters[0].vnet: network internet is not an AKS network (no VIP pool, no "
                                     "k8sNodeIpPool or DHCP scope)"),
    ("clusters[0].vnet", "nowhere", "clusters[0].vnet: no network named 'nowhere' (networks: aks, lab)"),
    ("clusters[0].nodePools[0].osType", "bsd", "clusters[0].nodePools[0].osType: expected linux or windows, got 'bsd'"),
    ("clusters[0].nodePools[0].nodeCount", 75,
     "clusters[0]: c1: node IP pool of network aks has 80 free addresses, the cluster needs 82 (1 control plane "
     "+ 75 workers + 5 upgrade spares + 1 load balancer VM): short by 2"),
    ("clusters[0].kubernetesVersion", "1.26", "clusters[0].kubernetesVersion: unknown key (known: controlPlaneNodeCount, "
     "ipFamilies, ipvsScheduler, kubeProxyMode, loadBalancerSku, name, nodeMaxPodCount, nodePools, primaryNetworkPlugin, vnet)"),
    ("clusters[0].kubeProxyMode", "nftables",
     "clusters[0].kubeProxyMode: expected iptables or ipvs, got 'nftables'"),
    ("clusters[0].ipvsScheduler", "sh", "clusters[0].ipvsScheduler: expected rr or lc, got 'sh'"),
    ("networks[0].vipPoolStart", "172.16.0.90",
     "networks[0].vipPoolStart: 172.16.0.90 lies inside the node IP pool 172.16.0.20-172.16.0.99"),
    ("networks[1].vipPoolEnd", "10.0.0.120",
     "networks[1].vipPoolEnd: 10.0.0.120 lies inside the DHCP scope 10.0.0.100-10.0.0.199"),
    ("networks[0].k8sNodeIpPoolEnd", ..., "networks[0].k8sNodeIpPoolEnd: required with k8sNodeIpPoolStart"),
    ("networks[0].dnsServers", ..., "networks[0].dnsServers: required (1 to 3 addresses) with a static IP pool"),
    ("networks[0].dnsServers", ["1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"],
     "networks[0].dnsServers: expected 1 to 3 addresses, got ['1.1.1.1', '1.0.0.1', '8.8.8.8', '8.8.4.4']"),
    ("networks[0].k8sNodeIpPoolStart", "172.16.0.1",
     "networks[0].k8sNodeIpPoolStart: the node IP pool 172.16.0.1-172.16.0.99 contains the gateway 172.16.0.1"),
    ("networks[0].vipPoolStart", ..., "networks[0].vipPoolStart: required with vipPoolEnd"),
    ("management.cloudAgentIp", "172.16.0.30",
     "management.cloudAgentIp: 172.16.0.30 is inside the node IP pool of network aks (172.16.0.20-172.16.0.99)"),
    ("management.network", "internet", "management.network: internet is the external network, not a datacenter one"),
    ("management", ..., "management: required with clusters, clients or dns (where the MOC cloud agent runs: "
                        "{network, cloudAgentIp})"),
    ("clients[0].ip", "172.16.0.160",
     "clients[0].ip: 172.16.0.160 is inside the VIP pool of network aks (172.16.0.150-172.16.0.199)"),
    ("clients[0].ip", "172.16.0.5", "clients[0].ip: 172.16.0.5 is already taken by moc-cloudagent"),
    ("clients[0].ip", ..., "clients[0].ip: required (or dhcp: true)"),
    ("clients[0].dhcp", True, "clients[0].ip: give either ip or dhcp: true, not both"),
    ("clients[2].dhcp", True, "clients[2].ip: give either ip or dhcp: true, not both"),
    ("clients[1].network", "aks", "clients[1].dhcp: network aks has no DHCP scope (dhcpScopeStart/End)"),
    ("clients[0].name", "c1-linux-1", "clients[0].name: duplicate VM name c1-linux-1"),
    ("clients[0].name", "moc-cloudagent", "clients[0].name: moc-cloudagent is reserved"),
    ("manifests", [{"cluster": "c9", "document": {}}], "manifests[0].cluster: no cluster named c9 (known: c1)"),
    ("steps", [{"kill": "x"}], "steps[0].kill: unknown step (known: load, wait, stop, start)"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_each_v2_error_names_its_key(path: str, value: Any, message: str) -> None:
    with pytest.raises(schema.ScenarioError) as info:
        schema.parse(v2_with(path, value))
    assert str(info.value) == message


def test_clusters_are_sized_together_and_vm_names_must_not_collide() -> None:
    two = [{"name": "a", "nodePools": [{"name": "a-linux", "nodeCount": 30}]},
           {"name": "b", "nodePools": [{"name": "b-linux", "nodeCount": 40}]}]
    with pytest.raises(schema.ScenarioError, match=r"^clusters\[1\]: b: node IP pool of network aks has 43 free "
                                                   r"addresses, .*short by 4$"):
        schema.parse(v2_with("clusters", two))
    clash = [{"name": "a", "nodePools": [{"name": "p"}]}, {"name": "b", "nodePools": [{"name": "p"}]}]
    with pytest.raises(schema.ScenarioError, match=r"^clusters\[1\].nodePools: VM name p-0 of cluster b is already "
                                                   r"used by cluster a$"):
        schema.parse(v2_with("clusters", clash))


def test_two_network_objects_may_share_a_subnet_with_disjoint_pools() -> None:
    second = {"name": "aks2", "vswitchName": "External", "ipAddressPrefix": "172.16.0.0/24", "gateway": "172.16.0.1",
              "dnsServers": ["172.16.0.2"], "k8sNodeIpPoolStart": "172.16.0.100", "k8sNodeIpPoolEnd": "172.16.0.140",
              "vipPoolStart": "172.16.0.200", "vipPoolEnd": "172.16.0.210"}
    doc = copy.deepcopy(V2)
    doc["networks"].append(second)
    s = schema.parse(doc)
    assert s.segment("aks2") == "aks" and s.segment("lab") == "lab"
    second["vipPoolStart"] = "172.16.0.190"
    with pytest.raises(schema.ScenarioError, match=r"^networks\[3\].vipPoolStart: the VIP pool 172.16.0.190-"
                                                   r"172.16.0.210 overlaps the VIP pool .* of network aks$"):
        schema.parse(doc)


# --- kubectl-like output -----------------------------------------------------------------------

def node(name: str, ready: str | None, ip: str, role: str | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/os": "linux"} | ({f"node-role.kubernetes.io/{role}": ""} if role else {})
    conditions = [] if ready is None else [{"type": "Ready", "status": ready}]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels, "creationTimestamp": "2020-01-01T00:00:00Z"},
            "status": {"conditions": conditions, "addresses": [{"type": "InternalIP", "address": ip}],
                       "nodeInfo": {"kubeletVersion": "v1.26.6", "osImage": "CBL-Mariner/Linux",
                                    "kernelVersion": "5.15", "containerRuntimeVersion": "containerd://1.6.26"}}}


def test_node_status_and_age_read_as_kubectl_prints_them() -> None:
    assert aks.node_status(node("a", "True", "1.1.1.1")) == "Ready"
    assert aks.node_status(node("a", "False", "1.1.1.1")) == "NotReady"
    assert aks.node_status(node("a", "Unknown", "1.1.1.1")) == "NotReady"
    assert aks.node_status(node("a", None, "1.1.1.1")) == "Unknown"
    assert aks.node_roles(node("a", "True", "1.1.1.1", "control-plane")) == "control-plane"
    assert aks.node_roles(node("a", "True", "1.1.1.1")) == "<none>"
    assert [aks.human_age(s) for s in (5, 119, 150, 600, 7200, 30000, 100000, 200000, 3e7)] == [
        "5s", "119s", "2m30s", "10m", "120m", "8h", "27h", "2d7h", "347d"]


@pytest.fixture
def one_cluster(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A deployment with the given clusters whose API server holds two nodes."""
    names = ["cluster1"]

    async def cluster_names(ns: Any) -> list[str]:
        return names

    async def api_get(ns: Any, cluster: str, path: str) -> Any:
        assert path == "/api/v1/nodes"
        return {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                "items": (node(f"{cluster}-linux-0", "True", "172.16.0.22"),
                          node(f"{cluster}-linux-1", "Unknown", "172.16.0.23"))}

    async def cluster_api(ns: Any) -> Any:
        cluster = await aks.pick_cluster(ns)

        async def call(method: str, path: str, query: Any, body: Any) -> tuple[int, Any]:
            return 200, await api_get(ns, cluster, path)
        return call

    monkeypatch.setattr(aks, "cluster_names", cluster_names)
    monkeypatch.setattr(aks, "cluster_api", cluster_api)
    return names


def test_get_nodes_tables(one_cluster: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["get", "nodes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert lines[2].split()[:3] == ["cluster1-linux-1", "NotReady", "<none>"]
    assert cli.main(["get", "no", "-o", "wide"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP",
                                "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert lines[1].split()[5:7] == ["172.16.0.22", "<none>"]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_o_json_and_yaml_print_only_a_kubectl_list(one_cluster: list[str], fmt: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["get", "nodes", "-o", fmt]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "List")
    assert [n["metadata"]["name"] for n in doc["items"]] == ["cluster1-linux-0", "cluster1-linux-1"]
    assert err == ""


def test_cluster_is_required_with_several_clusters(one_cluster: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    one_cluster.append("cluster2")
    assert cli.main(["get", "nodes"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "hcinet: error: --cluster is required: this deployment has 2 clusters (cluster1, cluster2)\n"
    assert cli.main(["get", "nodes", "--cluster", "cluster2", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"][0]["metadata"]["name"] == "cluster2-linux-0"
    assert cli.main(["get", "nodes", "--cluster", "cluster9"]) == 1
    assert capsys.readouterr().err == ("hcinet: error: --cluster: no cluster named cluster9 "
                                       "(clusters: cluster1, cluster2)\n")


def test_an_unknown_kind_is_one_line(one_cluster: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["get", "frobs"]) == 1
    assert capsys.readouterr().err.startswith('hcinet: error: the server doesn\'t have a resource type "frobs"')


def test_collections_print_as_lists_and_tuples_become_lists(capsys: pytest.CaptureFixture[str]) -> None:
    cli.emit_doc(({"name": "a", "ips": ("1.2.3.4",)},), "yaml")
    assert yaml.safe_load(capsys.readouterr().out) == {
        "apiVersion": "v1", "kind": "List", "items": [{"name": "a", "ips": ["1.2.3.4"]}],
        "metadata": {"resourceVersion": ""}}


def test_the_plan_waits_for_nodes_and_runs_the_others() -> None:
    plan = runner.Plan.of(schema.load(DEFAULT))
    roles = {e.vm: e.role for e in plan.items}
    assert roles["cluster1-control-plane-0"] == "apiserver" and roles["cluster1-lb"] == "vm"
    assert plan.nodes("cluster1") == ["cluster1-linux-0", "cluster1-linux-1", "cluster1-windows-0"]
    assert roles["client-dc"] == "vm" and plan.clusters == ["cluster1"]


def test_the_moc_vm_config_follows_the_contract(tmp_path: Path) -> None:
    s = schema.load(DEFAULT)
    rd = runner.rundir.RunDir("t", tmp_path)
    config = runner.moc_config(s, rd, runner.rundir.AgentInfo("tcp://127.0.0.1:1", 1), {"mgmt": "tcp://127.0.0.1:2"})
    assert config["name"] == "moc-cloudagent" and config["kind"] == "moc"
    assert config["nics"][0]["addresses"] == ["172.16.0.5/24"] and config["nics"][0]["network"] == "aks-net"
    assert (config["hostagent"], config["broker_mgmt"], config["time_scale"]) == (
        "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 0.1)
    assert config["state_dir"] == str(tmp_path / "moc")
    assert runner.moc_restart(s) == {"delay_s": pytest.approx(1.0)}  # HA delay 10 s x time_scale 0.1

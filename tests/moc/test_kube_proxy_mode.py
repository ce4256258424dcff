"""kube-proxy's mode per cluster: ``kubeProxyMode`` / ``ipvsScheduler`` from the scenario or
``hcinet cluster create --kube-proxy-mode/--ipvs-scheduler``, through MOC (and its store) into
every node VM's config as ``kube_proxy_mode`` / ``ipvs_scheduler``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_agent import CLUSTER, NETWORK, Harness, fake_cluster_create_moc, run  # noqa: E402

from agents.moc import pools as P  # noqa: E402
from scenarios import cli, schema  # noqa: E402


def node_modes(h: Harness) -> dict[str, tuple[str, str]]:
    return {name: (row["config"]["kube_proxy_mode"], row["config"]["ipvs_scheduler"])
            for name, row in h.host.vms.items() if row["config"]["kind"] == "node"}


def test_moc_hands_the_clusters_mode_to_every_node_vm_also_after_a_restart(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(NETWORK))
        await moc.cluster_create(dict(CLUSTER, kubeProxyMode="ipvs", ipvsScheduler="lc"))
        assert node_modes(h) == {"cluster1-linux-0": ("ipvs", "lc"), "cluster1-linux-1": ("ipvs", "lc"),
                                 "cluster1-windows-0": ("ipvs", "lc")}
        # Not for the other VMs: they run no kube-proxy.
        assert all("kube_proxy_mode" not in row["config"] for n, row in h.host.vms.items()
                   if row["config"]["kind"] != "node")
        (row,) = moc.cluster_get({"name": "cluster1"})
        assert (row["kubeProxyMode"], row["ipvsScheduler"]) == ("ipvs", "lc")
        await h.stop()
        moc2 = await h.start()  # the setting lives in MOC's store: new nodes get it too
        up = await moc2.nodepool_scale({"cluster": "cluster1", "name": "cluster1-linux", "nodeCount": 3})
        assert moc2.vms[up["added"][0]].config["kube_proxy_mode"] == "ipvs"
        assert moc2.vms[up["added"][0]].config["ipvs_scheduler"] == "lc"
    run(test, tmp_path)


def test_the_default_is_iptables_with_rr(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(NETWORK))
        await moc.cluster_create(dict(CLUSTER))
        assert set(node_modes(h).values()) == {("iptables", "rr")}
    run(test, tmp_path)


@pytest.mark.parametrize(("changes", "spec", "warnings"), [
    ({}, ("iptables", "rr"), []),
    ({"kubeProxyMode": "ipvs"}, ("ipvs", "rr"), []),
    ({"kubeProxyMode": "ipvs", "ipvsScheduler": "lc"}, ("ipvs", "lc"), []),
    ({"ipvsScheduler": "lc"}, ("iptables", "lc"),
     ["ipvsScheduler: lc has no effect with kubeProxyMode iptables (only the ipvs mode uses a scheduler)"]),
])
def test_pools_parse_the_mode(changes: dict[str, Any], spec: tuple[str, str], warnings: list[str]) -> None:
    parsed, warned = P.parse_cluster({"name": "c1", **changes}, ["aks-net"])
    assert (parsed.kube_proxy_mode, parsed.ipvs_scheduler) == spec
    assert warned == warnings
    again, _ = P.parse_cluster(parsed.doc(), ["aks-net"])
    assert again == parsed


def test_a_scenario_cluster_carries_the_mode_and_round_trips() -> None:
    net = {"name": "aks", "vswitchName": "External", "ipAddressPrefix": "172.16.0.0/24", "gateway": "172.16.0.1",
           "dnsServers": ["172.16.0.2"], "k8sNodeIpPoolStart": "172.16.0.20", "k8sNodeIpPoolEnd": "172.16.0.99",
           "vipPoolStart": "172.16.0.150", "vipPoolEnd": "172.16.0.199"}
    doc = {"name": "s", "networks": [net], "management": {"network": "aks", "cloudAgentIp": "172.16.0.5"},
           "clusters": [{"name": "c1", "kubeProxyMode": "ipvs", "ipvsScheduler": "lc"}, {"name": "c2"}]}
    s = schema.parse(doc)
    assert [(c.kube_proxy_mode, c.ipvs_scheduler) for c in s.clusters] == [("ipvs", "lc"), ("iptables", "rr")]
    assert s.clusters[0].doc()["kubeProxyMode"] == "ipvs"  # what cluster_create gets
    assert schema.parse(s.doc()) == s


def test_cluster_create_flags_send_the_mode_to_moc(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    sent = fake_cluster_create_moc(monkeypatch)
    assert cli.main(["cluster", "create", "--name", "c2", "--kube-proxy-mode", "IPVS", "--ipvs-scheduler", "lc",
                     "--no-wait"]) == 0
    ((verb, args),) = sent
    assert verb == "cluster_create" and (args["kubeProxyMode"], args["ipvsScheduler"]) == ("ipvs", "lc")
    sent.clear()
    assert cli.main(["cluster", "create", "--name", "c3", "--no-wait"]) == 0
    assert (sent[0][1]["kubeProxyMode"], sent[0][1]["ipvsScheduler"]) == ("iptables", "rr")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["cluster", "create", "--name", "c4", "--kube-proxy-mode", "userspace"])
    assert "--kube-proxy-mode: invalid choice: 'userspace'" in capsys.readouterr().err

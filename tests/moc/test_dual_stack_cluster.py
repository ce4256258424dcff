"""``ipFamilies`` per cluster: validated by MOC's rules (scenario, ``hcinet cluster create
--ip-families``, ``cluster_create``), Flannel and IPv6-only refused, Windows pools warned; a
dual-stack cluster's API server VM gets both Service CIDRs and its node VMs both pod CIDRs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_agent import CLUSTER, NETWORK, Harness, fake_cluster_create_moc, run  # noqa: E402

from agents.mgmt import MgmtError  # noqa: E402
from agents.moc import pools as P  # noqa: E402
from scenarios import cli, schema  # noqa: E402


def test_default_is_ipv4_and_dual_stack_round_trips() -> None:
    single, _ = P.parse_cluster({"name": "c1"}, ["aks-net"])
    assert single.ip_families == ("IPv4",) and not single.dual_stack
    assert single.service_cidrs == ["10.96.0.0/12"] and single.cluster_cidrs == ["10.244.0.0/16"]
    dual, warned = P.parse_cluster({"name": "c1", "ipFamilies": ["ipv4", "IPv6"]}, ["aks-net"])
    assert dual.ip_families == ("IPv4", "IPv6") and warned == []
    assert dual.service_cidrs == ["10.96.0.0/12", "fd00:10:96::/112"]
    assert dual.cluster_cidrs == ["10.244.0.0/16", "fd00:10:244::/56"]
    again, _ = P.parse_cluster(dual.doc(), ["aks-net"])
    assert again == dual


@pytest.mark.parametrize(("changes", "error"), [
    ({"ipFamilies": ["IPv6"]}, "ipFamilies: IPv6-only clusters are not supported: AKS-HCI nodes are IPv4"),
    ({"ipFamilies": ["IPv6", "IPv4"]}, "ipFamilies: IPv4 must come first"),
    ({"ipFamilies": ["IPv4", "IPv4"]}, "ipFamilies[1]: IPv4 is listed twice"),
    ({"ipFamilies": ["IPv5"]}, "ipFamilies[0]: expected IPv4 or IPv6, got 'IPv5'"),
    ({"ipFamilies": []}, "ipFamilies: expected a list"),
    ({"ipFamilies": ["IPv4", "IPv6"], "primaryNetworkPlugin": "flannel"},
     "ipFamilies: Flannel does not support IPv6 (dual stack needs primaryNetworkPlugin calico)"),
])
def test_refused(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(P.PoolError) as exc:
        P.parse_cluster({"name": "c1", **changes}, ["aks-net"])
    assert str(exc.value).startswith(error), str(exc.value)


def test_windows_pools_are_warned_they_stay_ipv4() -> None:
    _, warned = P.parse_cluster(dict(CLUSTER, ipFamilies=["IPv4", "IPv6"]), ["aks-net"])
    assert warned == ["ipFamilies: node pool cluster1-windows is Windows: its pods get IPv4 only "
                      "(Calico for Windows has no IPv6)"]
    _, warned = P.parse_cluster(dict(CLUSTER), ["aks-net"])
    assert warned == []


NET = {"name": "aks", "vswitchName": "External", "ipAddressPrefix": "172.16.0.0/24", "gateway": "172.16.0.1",
       "dnsServers": ["172.16.0.2"], "k8sNodeIpPoolStart": "172.16.0.20", "k8sNodeIpPoolEnd": "172.16.0.99",
       "vipPoolStart": "172.16.0.150", "vipPoolEnd": "172.16.0.199"}


def scenario(*clusters: dict[str, Any]) -> dict[str, Any]:
    return {"name": "s", "networks": [NET], "management": {"network": "aks", "cloudAgentIp": "172.16.0.5"},
            "clusters": list(clusters)}


def test_a_scenario_carries_ip_families_and_refuses_flannel_dual_stack() -> None:
    s = schema.parse(scenario({"name": "c1", "ipFamilies": ["IPv4", "IPv6"]}, {"name": "c2"}))
    assert [c.ip_families for c in s.clusters] == [("IPv4", "IPv6"), ("IPv4",)]
    assert s.clusters[0].doc()["ipFamilies"] == ["IPv4", "IPv6"] and "ipFamilies" not in s.clusters[1].doc()
    assert schema.parse(s.doc()) == s
    with pytest.raises(schema.ScenarioError) as exc:
        schema.parse(scenario({"name": "c1", "primaryNetworkPlugin": "flannel", "ipFamilies": ["IPv4", "IPv6"]}))
    assert "clusters[0]" in str(exc.value) and "Flannel does not support IPv6" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_moc_wires_the_cidrs_into_the_api_server_and_node_vm_configs(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(NETWORK))
        out = await moc.cluster_create(dict(CLUSTER, ipFamilies=["IPv4", "IPv6"]))
        assert any("cluster1-windows" in w for w in out["warnings"])
        configs = {name: row["config"] for name, row in h.host.vms.items()}
        assert configs["cluster1-control-plane-0"]["service_cidrs"] == ["10.96.0.0/12", "fd00:10:96::/112"]
        # the API server's Calico default IPPools (default-ipv4-ippool, default-ipv6-ippool)
        assert configs["cluster1-control-plane-0"]["cluster_cidrs"] == ["10.244.0.0/16", "fd00:10:244::/56"]
        for name in ("cluster1-linux-0", "cluster1-linux-1", "cluster1-windows-0"):
            assert configs[name]["cluster_cidrs"] == ["10.244.0.0/16", "fd00:10:244::/56"]
        (row,) = moc.cluster_get({"name": "cluster1"})
        assert row["ipFamilies"] == ["IPv4", "IPv6"]
        with pytest.raises(MgmtError, match="Flannel does not support IPv6"):
            await moc.cluster_create({"name": "flan", "vnet": "aks-net", "primaryNetworkPlugin": "flannel",
                                      "ipFamilies": ["IPv4", "IPv6"]})
        await h.stop()
    run(test, tmp_path)


def test_cluster_create_ip_families_flag(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    sent = fake_cluster_create_moc(monkeypatch)
    assert cli.main(["cluster", "create", "--name", "c2", "--ip-families", "IPv4,IPv6", "--no-wait"]) == 0
    assert sent[0][1]["ipFamilies"] == ["IPv4", "IPv6"]
    sent.clear()
    assert cli.main(["cluster", "create", "--name", "c3", "--no-wait"]) == 0
    assert "ipFamilies" not in sent[0][1]
    capsys.readouterr()
    rc = cli.main(["cluster", "create", "--name", "c4", "--primary-network-plugin", "flannel",
                   "--ip-families", "IPv4,IPv6", "--no-wait"])
    err = capsys.readouterr().err
    assert rc != 0 and "--ip-families: Flannel does not support IPv6" in err, err

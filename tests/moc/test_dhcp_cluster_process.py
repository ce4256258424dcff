"""A DHCP-model deployment through the real runner, host agent, broker and VM processes:
it boots to Ready with leased addresses; a node pool scaled down loses its Node objects too;
a deleted cluster leaves no store behind, so re-creating it starts empty."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from test_moc_process import until

from scenarios import rundir, runner, schema

SCOPE = (ipaddress.IPv4Address("172.16.0.20"), ipaddress.IPv4Address("172.16.0.99"))

SCENARIO = """
name: dhcp
time_scale: 0.1
networks:
  - name: aks-net
    ipAddressPrefix: 172.16.0.0/24
    gateway: 172.16.0.1
    dhcpScopeStart: 172.16.0.20       # the DHCP model: node and LB VMs lease their addresses
    dhcpScopeEnd: 172.16.0.99
    vipPoolStart: 172.16.0.150
    vipPoolEnd: 172.16.0.159
management: {network: aks-net, cloudAgentIp: 172.16.0.5}
clusters:
  - name: c1
    vnet: aks-net
    nodePools: [{name: c1-linux, osType: linux, nodeCount: 1}]
"""


@pytest.fixture
def rd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> rundir.RunDir:
    monkeypatch.setenv("HCINET_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("HCINET_VM_COMMAND", raising=False)
    monkeypatch.delenv("HCINET_BROKER_COMMAND", raising=False)
    return rundir.for_deployment("dhcp-t")


@pytest.fixture
async def deployment(rd: rundir.RunDir) -> AsyncIterator[runner.Deployment]:
    quiet = open(os.devnull, "w")
    try:
        yield await runner.up(schema.loads(SCENARIO), rd.deployment, out=quiet)
    finally:
        with trio.CancelScope(shield=True):
            await runner.down(rd.deployment, out=quiet)
        quiet.close()


def leased(ip: str) -> bool:
    return SCOPE[0] <= ipaddress.IPv4Address(ip) <= SCOPE[1]


async def test_a_dhcp_cluster_boots_scales_and_is_deleted_cleanly(rd: rundir.RunDir,
                                                                  deployment: runner.Deployment) -> None:
    agent = deployment.hostagent

    async def rows() -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in await runner.list_processes(agent) if r["kind"] == "vm"}

    async def moc(verb: str, args: dict[str, Any] | None = None) -> Any:
        return await runner.call(str((await rows())["moc-cloudagent"]["mgmt"]), verb, args or {}, timeout=60.0)

    async def api(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await runner.api(str((await rows())["c1-control-plane-0"]["mgmt"]), method, path, body)

    async def nodes() -> dict[str, dict[str, Any]]:
        status, body = await api("GET", "/api/v1/nodes")
        assert status == 200, body
        return {n["metadata"]["name"]: n for n in body["items"]}

    # 1. Booted (runner.up returns once every node is Ready) with leased addresses; MOC learned
    #    each lease and programmed the LB with the control plane's.
    (node,) = (await nodes()).values()
    assert runner.node_ready(node) == "True"
    internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    assert len(internal) == 1 and leased(internal[0])
    inventory = {v["name"]: v for v in await moc("vm_list")}
    assert all(len(v["ips"]) == 1 and leased(v["ips"][0]) for n, v in inventory.items() if n.startswith("c1-"))
    assert list(inventory["c1-linux-0"]["ips"]) == internal
    (lb,) = await moc("loadbalancers")
    assert lb["programmed"] and lb["vip"] == "172.16.0.150"
    assert lb["backends"][0]["servers"][0]["address"] == inventory["c1-control-plane-0"]["ips"][0]

    # 2. Scaled up and down through MOC: the removed VM's Node is deleted through the API
    #    server (over the emulated network), and the host agent forgets the VM.
    await moc("nodepool_scale", {"cluster": "c1", "name": "c1-linux", "nodeCount": 2})

    async def two_ready() -> bool:
        found = await nodes()
        return len(found) == 2 and all(runner.node_ready(n) == "True" for n in found.values())
    await until(two_ready, "c1-linux-1 Ready", timeout=20.0)
    removed = await moc("nodepool_scale", {"cluster": "c1", "name": "c1-linux", "nodeCount": 1})
    assert list(removed["removed"]) == ["c1-linux-1"]
    assert sorted(await nodes()) == ["c1-linux-0"]
    assert "c1-linux-1" not in await rows() and not (rd.vms / "c1-linux-1.json").exists()

    # 3. Deleted: no VM, no store, no LB disk; created again under the same name it starts empty.
    status, _ = await api("POST", "/api/v1/namespaces/default/configmaps",
                          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "old"}, "data": {"a": "1"}})
    assert status == 201
    await moc("cluster_delete", {"name": "c1"})
    assert not [n for n in await rows() if n.startswith("c1-")]
    assert not (rd.path / "clusters" / "c1").exists() and not (rd.path / "disks" / "c1-lb").exists()
    await moc("cluster_create", {"name": "c1", "vnet": "aks-net",
                                 "nodePools": [{"name": "c1-linux", "osType": "linux", "nodeCount": 1}]})
    status, body = await api("GET", "/api/v1/namespaces/default/configmaps/old")
    assert status == 404, body

"""The MOC cloud agent as a real VM process under the real host agent and broker.

The API server and node VM kinds are replaced by plain VMs (the MOC config's ``kinds``
switch): this tests MOC, not them.  The LB VM is the real ``haproxy`` kind, so programming
it over the emulated network (HTTP PUT to :46000) is exercised end to end.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from agents import triozmq
from scenarios import rundir, runner

SCALE = 0.05  # ha_restart_delay 0.5 s
HA_DELAY = 10.0 * SCALE
MOC_IP = "172.16.0.5"
T = TypeVar("T")

NETWORK = {"name": "aks-net", "vswitchName": "External", "ipAddressPrefix": "172.16.0.0/24",
           "gateway": "172.16.0.1", "dnsServers": ["172.16.0.2"], "k8sNodeIpPoolStart": "172.16.0.20",
           "k8sNodeIpPoolEnd": "172.16.0.99", "vipPoolStart": "172.16.0.150", "vipPoolEnd": "172.16.0.199"}


@pytest.fixture
def rd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> rundir.RunDir:
    monkeypatch.setenv("HCINET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HCINET_VM_COMMAND", raising=False)
    monkeypatch.delenv("HCINET_BROKER_COMMAND", raising=False)
    return rundir.for_deployment("moc-t")


@pytest.fixture
async def agent(rd: rundir.RunDir) -> AsyncIterator[rundir.AgentInfo]:
    info = await rundir.start_hostagent(rd)
    try:
        yield info
    finally:
        with trio.CancelScope(shield=True):
            await runner.down(rd.deployment, out=open(os.devnull, "w"))


async def call(endpoint: str, verb: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    async with triozmq.TrioMgmtClient(endpoint) as client:
        return await client.call(verb, args or {}, timeout=timeout)


async def until(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 15.0) -> T:
    deadline = trio.current_time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if trio.current_time() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await trio.sleep(0.02)


class Deployment:
    def __init__(self, hostagent: str) -> None:
        self.hostagent = hostagent

    async def rows(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in await call(self.hostagent, "list")}

    async def moc(self, verb: str, args: dict[str, Any] | None = None) -> Any:
        row = (await self.rows())["moc-cloudagent"]
        assert row["state"] == "running", row
        return await call(str(row["mgmt"]), verb, args)

    async def running_pid(self, name: str, other_than: int | None = None) -> int | None:
        row = (await self.rows()).get(name)
        if row and row["state"] == "running" and row["pid"] != other_than:
            return int(row["pid"])
        return None


async def test_moc_creates_vms_restarts_crashes_and_survives_its_own_restart(rd: rundir.RunDir,
                                                                            agent: rundir.AgentInfo) -> None:
    d = Deployment(agent.mgmt)
    broker = await call(agent.mgmt, "start_broker")
    await call(broker["mgmt"], "add_network", {"name": "aks-net", "prefix": "172.16.0.0/24", "gateway": "172.16.0.1"})
    moc_config = {
        "name": "moc-cloudagent", "kind": "moc", "time_scale": SCALE, "hostagent": agent.mgmt,
        "broker_mgmt": broker["mgmt"], "state_dir": str(rd.path / "moc"),
        "kinds": {"apiserver": "plain", "node": "plain"},
        "nics": [{"name": "eth0", "network": "aks-net", "mac": "02:00:ac:10:00:05",
                  "addresses": [f"{MOC_IP}/24"], "gateway": "172.16.0.1"}],
    }
    await call(agent.mgmt, "start_vm", {"config": moc_config, "restart": {"delay_s": HA_DELAY}})

    # A network (also added to the datacenter fabric: it exists there already) and a cluster.
    await d.moc("network_create", NETWORK)
    created = await d.moc("cluster_create", {"name": "cluster1", "vnet": "aks-net", "nodePools": [
        {"name": "cluster1-linux", "osType": "linux", "nodeCount": 2}]})
    assert created["vip"] == "172.16.0.150"
    rows = await d.rows()
    names = ["cluster1-control-plane-0", "cluster1-lb", "cluster1-linux-0", "cluster1-linux-1"]
    for i, name in enumerate(names):
        assert rows[name]["state"] == "running", rows[name]
        config = json.loads((rd.vms / f"{name}.json").read_text())
        assert config["nics"][0]["addresses"] == [f"172.16.0.{20 + i}/24"]  # from the node IP pool
    assert json.loads((rd.vms / "cluster1-linux-0.json").read_text())["apiserver"] == "172.16.0.150:6443"

    # The LB VM gets its config from MOC over the emulated network, and claims the VIP.
    await d.moc("wait_ready", {"timeout_s": 15})
    lb_config = await call(rows["cluster1-lb"]["mgmt"], "lb_config")
    assert list(lb_config["config"]["vips"]) == ["172.16.0.150"]
    # MOC sits on the emulated network at its cloud agent address, listening on 55000.
    probe = await call(rows["cluster1-linux-0"]["mgmt"], "exec",
                       {"argv": ["curl", "-s", f"http://{MOC_IP}:55000/healthz"]})
    assert (probe["rc"], probe["stdout"]) == (0, "ok\n"), probe

    # A crash (the host agent's kill_vm): MOC restarts the VM after the scaled HA delay.
    node = "cluster1-linux-0"
    old_pid = rows[node]["pid"]
    t0 = time.monotonic()
    await call(agent.mgmt, "kill_vm", {"name": node})
    await until(lambda: d.running_pid(node, old_pid), "MOC's HA restart of the killed node")
    assert time.monotonic() - t0 >= HA_DELAY * 0.9

    # Powered off through MOC: it stays down.
    await d.moc("vm_stop", {"name": "cluster1-linux-1"})
    exited = [e for e in await call(agent.mgmt, "events", {"since": 0, "limit": 1000})
              if e["kind"] == "vm-exited" and e["name"] == "cluster1-linux-1"]
    seq = exited[-1]["seq"]

    async def moc_saw_it() -> bool:
        return bool((await d.moc("status"))["ha"]["event_cursor"] >= seq)
    await until(moc_saw_it, "MOC to see the stop")
    with trio.move_on_after(HA_DELAY * 2):  # longer than the HA delay: a restart would have happened
        await until(lambda: d.running_pid("cluster1-linux-1"), "", timeout=HA_DELAY * 4)
        pytest.fail("a VM stopped through MOC was restarted")
    assert (await d.rows())["cluster1-linux-1"]["state"] == "stopped"

    # MOC itself crashes; a node dies while it is down.  The host agent restarts MOC (its
    # restart policy), MOC reloads its sqlite state and handles the crash it missed.
    before = await d.moc("status")
    moc_pid = (await d.rows())["moc-cloudagent"]["pid"]
    await call(agent.mgmt, "kill_vm", {"name": "moc-cloudagent"})
    other_pid = (await d.rows())["cluster1-control-plane-0"]["pid"]
    await call(agent.mgmt, "kill_vm", {"name": "cluster1-control-plane-0"})
    await until(lambda: d.running_pid("moc-cloudagent", moc_pid), "the host agent to restart MOC")
    await until(lambda: d.running_pid("cluster1-control-plane-0", other_pid), "the missed crash handled")
    after = await d.moc("status")
    assert after["networks"] == before["networks"] and after["clusters"] == before["clusters"]
    assert {v["name"]: (v["ips"], v["desired"]) for v in after["vms"]} == \
        {v["name"]: (v["ips"], v["desired"]) for v in before["vms"]}
    kinds = [e["kind"] for e in await call(agent.mgmt, "events", {"since": 0, "limit": 1000})]
    assert "vm-auto-restart" in kinds

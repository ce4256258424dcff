"""The cloud agent's logic against an in-process host agent (asyncio, no processes): VM
configs, sizing refusals, HA restarts, scaling, deletion, and a restart of MOC on its store."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agents.mgmt import MgmtError, RemoteError
from agents.moc.agent import CloudAgent
from agents.moc.store import Store
from agents.timers import Timers

SCALE = 0.01  # ha_restart_delay 0.1 s, haproxy inter 0.02 s
T = TypeVar("T")

NETWORK = {"name": "aks-net", "vswitchName": "External", "ipAddressPrefix": "172.16.0.0/24",
           "gateway": "172.16.0.1", "dnsServers": ["172.16.0.2"], "k8sNodeIpPoolStart": "172.16.0.20",
           "k8sNodeIpPoolEnd": "172.16.0.39", "vipPoolStart": "172.16.0.150", "vipPoolEnd": "172.16.0.151"}
CLUSTER = {"name": "cluster1", "vnet": "aks-net", "nodePools": [
    {"name": "cluster1-linux", "osType": "linux", "nodeCount": 2},
    {"name": "cluster1-windows", "osType": "windows", "nodeCount": 1}]}


class FakeHostAgent:
    """The host agent's verbs MOC uses, with its event semantics (seq, expected, long poll)."""

    def __init__(self) -> None:
        self.vms: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._seq = itertools.count(1)
        self._pids = itertools.count(1000)
        self._new = asyncio.Event()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_start: set[str] = set()
        self.stop_s = 0.0  # how long stopping a VM takes (SIGTERM -> exit)

    def _event(self, kind: str, **fields: Any) -> None:
        self.events.append({"seq": next(self._seq), "kind": kind, **fields})
        self._new.set()
        self._new = asyncio.Event()

    def kill(self, name: str) -> None:
        self.vms[name]["state"] = "crashed"
        self._event("vm-exited", name=name, expected=False, signal="SIGKILL", code=None)

    async def call(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        args = args or {}
        self.calls.append((verb, args))
        await asyncio.sleep(0)
        result = getattr(self, f"_{verb}")(args)
        return await result if asyncio.iscoroutine(result) else result

    def _ping(self, args: dict[str, Any]) -> Any:
        return {"pid": 1}

    def _start_vm(self, args: dict[str, Any]) -> Any:
        config = args["config"]
        name = config["name"]
        if name in self.fail_start:  # as the real one: an exit before ready is not expected
            self.vms[name] = {"name": name, "kind": "vm", "state": "crashed", "pid": None, "config": config,
                              "mgmt": None}
            self._event("vm-exited", name=name, expected=False, signal=None, code=1, was="starting")
            raise RemoteError(f"{name}: exited with code 1 before it was ready")
        if self.vms.get(name, {}).get("state") == "running":
            raise RemoteError(f"name: VM {name} is already running")
        pid = next(self._pids)
        self.vms[name] = {"name": name, "kind": "vm", "state": "running", "pid": pid, "config": config, "mgmt": None}
        self._event("vm-started", name=name, pid=pid)
        return {"name": name, "pid": pid, "mgmt": None}

    def _restart_vm(self, args: dict[str, Any]) -> Any:
        row = self.vms.get(args["name"])
        if row is None:
            raise RemoteError(f"name: no VM named {args['name']}")
        return self._start_vm({"config": row["config"]})

    async def _stop_vm(self, args: dict[str, Any]) -> Any:
        row = self.vms.get(args["name"])
        if row is None:
            raise RemoteError(f"name: no VM named {args['name']}")
        if row["state"] == "running":
            await asyncio.sleep(self.stop_s)
            row["state"] = "stopped"
            self._event("vm-exited", name=row["name"], expected=True, signal=None, code=0)
        return {k: v for k, v in row.items() if k != "config"}

    async def _remove_vm(self, args: dict[str, Any]) -> Any:
        row = await self._stop_vm(args)
        del self.vms[args["name"]]
        self._event("vm-removed", name=args["name"])
        return {**row, "removed": True}

    def _list(self, args: dict[str, Any]) -> Any:
        return [{k: v for k, v in row.items() if k != "config"} for row in self.vms.values()]

    async def _events(self, args: dict[str, Any]) -> Any:
        since = args["since"]
        try:
            async with asyncio.timeout(args.get("wait_s", 0)):
                while not self.events or self.events[-1]["seq"] <= since:
                    await self._new.wait()
        except TimeoutError:
            pass
        return [e for e in self.events if e["seq"] > since][: args.get("limit", 100)]

    def starts(self, name: str) -> int:
        return sum(1 for verb, a in self.calls if verb in ("start_vm", "restart_vm")
                   and (a.get("config", {}).get("name") == name or a.get("name") == name))


class Harness:
    def __init__(self, tmp: Path, host: FakeHostAgent | None = None) -> None:
        self.tmp = tmp
        self.host = host or FakeHostAgent()
        self.programmed: list[tuple[str, dict[str, Any]]] = []
        self.lb_up = True
        self.agent: CloudAgent | None = None
        self.run_dir = "/run/hcinet"

    async def program(self, ip: str, doc: dict[str, Any]) -> None:
        if not self.lb_up:
            raise ConnectionRefusedError(f"{ip}:46000")
        self.programmed.append((ip, doc))

    async def start(self, **kw: Any) -> CloudAgent:
        self.agent = CloudAgent(store=Store(self.tmp / "moc.sqlite"), hostagent=self.host, timers=Timers(SCALE),
                                run_dir=self.run_dir, broker="tcp://127.0.0.1:5555", lb_programmer=self.program,
                                reserved={"172.16.0.5": "the cloud agent's address"}, **kw)
        await self.agent.start()
        return self.agent

    async def stop(self) -> None:
        assert self.agent is not None
        await self.agent.close()
        self.agent.store.close()


def run(test: Callable[[Harness], Coroutine[Any, Any, None]], tmp: Path) -> None:
    async def main() -> None:
        h = Harness(tmp)
        try:
            async with asyncio.timeout(20):
                await test(h)
        finally:
            if h.agent is not None:
                await h.stop()
    asyncio.run(main())


async def until(check: Callable[[], T | None | Awaitable[T | None]], what: str, timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got  # type: ignore[return-value]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def fake_cluster_create_moc(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """``hcinet cluster create`` against a fake MOC (one network, aks-net): the calls it sends."""
    from scenarios import aks

    sent: list[tuple[str, Any]] = []

    async def moc_call(ns: Any, verb: str, args: Any = None, timeout: float = 0) -> Any:
        sent.append((verb, args))
        return {}

    async def moc_networks(ns: Any) -> list[dict[str, Any]]:
        return [dict(NETWORK)]

    async def default_vnet(ns: Any) -> str:
        return "aks-net"

    monkeypatch.setattr(aks, "moc_call", moc_call)
    monkeypatch.setattr(aks, "moc_networks", moc_networks)
    monkeypatch.setattr(aks, "_default_vnet", default_vnet)
    return sent


def test_cluster_create_asks_the_host_agent_for_every_vm_with_contract_configs(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        net = await moc.network_create(dict(NETWORK))
        assert net["model"] == "static" and net["segment"] == "aks-net"
        result = await moc.cluster_create(dict(CLUSTER, primaryNetworkPlugin="flannel"))
        assert result["vip"] == "172.16.0.150"
        assert result["warnings"] == ["Flannel was retired in December 2023; Calico is the default and "
                                      "recommended network plugin"]
        configs = {name: row["config"] for name, row in h.host.vms.items()}
        assert sorted(configs) == ["cluster1-control-plane-0", "cluster1-lb", "cluster1-linux-0", "cluster1-linux-1",
                                   "cluster1-windows-0"]
        ips = {n: c["nics"][0]["addresses"][0] for n, c in configs.items()}
        # Lowest free addresses of the node IP pool, in creation order.
        assert ips == {"cluster1-control-plane-0": "172.16.0.20/24", "cluster1-lb": "172.16.0.21/24",
                       "cluster1-linux-0": "172.16.0.22/24", "cluster1-linux-1": "172.16.0.23/24",
                       "cluster1-windows-0": "172.16.0.24/24"}
        cp = configs["cluster1-control-plane-0"]
        assert (cp["kind"], cp["vip"], cp["kube_vip"], cp["state_dir"], cp["cluster"]) == \
            ("apiserver", "172.16.0.150", False, "/run/hcinet/clusters/cluster1", "cluster1")
        assert configs["cluster1-lb"]["kind"] == "haproxy"
        win = configs["cluster1-windows-0"]
        assert (win["kind"], win["os"], win["apiserver"], win["max_pods"], win["pool"]) == \
            ("node", "windows", "172.16.0.150:6443", 110, "cluster1-windows")
        for c in configs.values():
            assert (c["time_scale"], c["run_dir"], c["broker"]) == (SCALE, "/run/hcinet", "tcp://127.0.0.1:5555")
            nic = c["nics"][0]
            assert nic["network"] == "aks-net" and nic["gateway"] == "172.16.0.1" and nic["mac"].startswith("02:00:ac:10:00:")
        # The LB VM is programmed (over the emulated network in the real VM) once it started.
        await until(lambda: h.programmed, "the LB programmed")
        ip, doc = h.programmed[0]
        assert ip == "172.16.0.21"
        assert doc == {"vips": ["172.16.0.150"],
                       "frontends": [{"name": "apiserver", "bind": "172.16.0.150:6443", "backend": "apiserver"}],
                       "backends": [{"name": "apiserver", "balance": "roundrobin",
                                     "check": {"inter": pytest.approx(0.02), "rise": 2, "fall": 3},
                                     "servers": [{"name": "cluster1-control-plane-0", "address": "172.16.0.20",
                                                  "port": 6443}]}]}
        assert (await moc.wait_ready({"timeout_s": 5}))["ready"]
        status = await moc.status({})
        pool = status["networks"][0]["nodePool"]
        assert (pool["used"], pool["reserved"], pool["available"]) == (5, 10, 10)  # 1 + 3 + 5 + 1 reserved
        assert status["networks"][0]["vipPool"]["used"] == 1
        assert "cluster1: Flannel was retired in December 2023; Calico is the default and recommended network plugin" \
            in status["warnings"]
        nics = {n["vm"]: n for n in moc.networkinterfaces({})}
        assert nics["cluster1-lb"]["ip"] == "172.16.0.21" and nics["cluster1-lb"]["name"] == "cluster1-lb-eth0"
        (lb,) = moc.loadbalancers({})
        assert (lb["vip"], lb["lbVm"], lb["programmed"]) == ("172.16.0.150", "cluster1-lb", True)
    run(test, tmp_path)


def test_refusals_leave_nothing_behind(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        with pytest.raises(MgmtError, match=r"^vipPoolStart: 172.16.0.30 lies inside the node IP pool"):
            await moc.network_create(dict(NETWORK, vipPoolStart="172.16.0.30"))
        with pytest.raises(MgmtError, match=r"^k8sNodeIpPoolStart: the node IP pool 172.16.0.2-172.16.0.39 contains "
                                            r"172.16.0.5 \(the cloud agent's address\)$"):
            await moc.network_create(dict(NETWORK, k8sNodeIpPoolStart="172.16.0.2"))
        await moc.network_create(dict(NETWORK))
        big = dict(CLUSTER, nodePools=[{"name": "cluster1-linux", "nodeCount": 14}])
        with pytest.raises(MgmtError) as info:
            await moc.cluster_create(big)
        assert str(info.value) == ("cluster1: node IP pool of network aks-net has 20 free addresses, the cluster needs "
                                   "21 (1 control plane + 14 workers + 5 upgrade spares + 1 load balancer VM): short by 1")
        with pytest.raises(MgmtError, match=r"^controlPlaneNodeCount: 3 control-plane nodes are not supported yet"):
            await moc.cluster_create(dict(CLUSTER, controlPlaneNodeCount=3))
        with pytest.raises(MgmtError, match=r"^name: 'my-cluster' must not contain hyphens"):
            await moc.cluster_create(dict(CLUSTER, name="my-cluster"))
        h.host.fail_start.add("cluster1-linux-1")
        with pytest.raises(MgmtError, match=r"^cluster1: cluster1-linux-1: exited with code 1 before it was ready$"):
            await moc.cluster_create(dict(CLUSTER))
        assert moc.clusters == {} and moc.vms == {} and moc.store.vms() == []
        assert h.host.vms == {}  # the started ones and the failed one: removed from the host agent
        usage = moc.ipam.usage()[0]
        assert usage["nodePool"]["used"] == 0 and usage["vipPool"]["used"] == 0 and usage["nodePool"]["reserved"] == 0
        h.host.fail_start.clear()
        await moc.cluster_create(dict(CLUSTER))
        with pytest.raises(MgmtError, match=r"^name: cluster cluster1 already exists$"):
            await moc.cluster_create(dict(CLUSTER))
        with pytest.raises(MgmtError, match=r"^ip: 172.16.0.25 lies inside the node IP pool 172.16.0.20-172.16.0.39 "
                                            r"of network aks-net$"):
            await moc.client_create({"name": "client-dc", "network": "aks-net", "ip": "172.16.0.25"})
        client = await moc.client_create({"name": "client-dc", "network": "aks-net", "ip": "172.16.0.10",
                                          "apps": [{"kind": "http", "port": 8080}]})
        assert client["ips"] == ["172.16.0.10"]
        assert h.host.vms["client-dc"]["config"]["apps"] == [{"kind": "http", "port": 8080}]
        with pytest.raises(MgmtError, match=r"^ip: 172.16.0.10 is already used by VM client-dc$"):
            await moc.client_create({"name": "client2", "network": "aks-net", "ip": "172.16.0.10"})
    run(test, tmp_path)


def test_ha_restarts_a_crashed_vm_after_the_delay_but_not_a_stopped_one(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        delay = moc.timers.ha_restart_delay
        await moc.network_create(dict(NETWORK))
        await moc.cluster_create(dict(CLUSTER))
        node = "cluster1-linux-0"
        t0 = time.monotonic()
        h.host.kill(node)
        await until(lambda: h.host.vms[node]["state"] == "running", "the HA restart")
        assert time.monotonic() - t0 >= delay * 0.9
        assert h.host.starts(node) == 2 and moc.ha_restarts == 1

        # The LB VM restarted -> programmed again (its config may be gone with it).
        before = len(h.programmed)
        h.host.kill("cluster1-lb")
        await until(lambda: len(h.programmed) > before, "the LB reprogrammed after its restart")

        stopped = await moc.vm_stop({"name": node})
        assert stopped == {"name": node, "desired": "stopped", "state": "stopped"}
        seq = h.host.events[-1]["seq"]
        await until(lambda: moc.events_seen >= seq, "MOC saw the stop")
        await asyncio.sleep(delay * 3)
        assert h.host.vms[node]["state"] == "stopped" and h.host.starts(node) == 2
        assert f"{node}: stopped (desired running)" not in (await moc.status({}))["warnings"]
        started = await moc.vm_start({"name": node})
        assert started["state"] == "running" and h.host.vms[node]["state"] == "running"
        with pytest.raises(MgmtError, match=r"^name: no VM named nope in MOC's inventory"):
            await moc.vm_stop({"name": "nope"})
    run(test, tmp_path)


def test_scale_delete_and_kube_vip(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(NETWORK))
        await moc.cluster_create(dict(CLUSTER))
        up = await moc.nodepool_scale({"cluster": "cluster1", "name": "cluster1-linux", "nodeCount": 4})
        assert up["added"] == ["cluster1-linux-2", "cluster1-linux-3"]
        assert moc.vms["cluster1-linux-3"].ips == ["172.16.0.26"]
        down = await moc.nodepool_scale({"cluster": "cluster1", "name": "cluster1-linux", "nodeCount": 1})
        assert down["removed"] == ["cluster1-linux-1", "cluster1-linux-2", "cluster1-linux-3"]
        # Removed on the host agent (remove_vm), not merely stopped: `hcinet vm list` forgets them.
        assert "cluster1-linux-1" not in h.host.vms and "cluster1-linux-1" not in moc.vms
        # Freed addresses are handed out again, lowest first.
        created = await moc.nodepool_create({"cluster": "cluster1", "name": "extra", "osType": "windows",
                                             "nodeCount": 1})
        assert created["added"] == ["extra-0"] and moc.vms["extra-0"].ips == ["172.16.0.23"]
        assert moc.vms["extra-0"].config["os"] == "windows"
        with pytest.raises(MgmtError, match=r"^cluster1: node IP pool of network aks-net has 10 free addresses, node "
                                            r"pool extra needs 12 \(12 workers\): short by 2$"):
            await moc.nodepool_scale({"cluster": "cluster1", "name": "extra", "nodeCount": 13})
        await moc.nodepool_delete({"cluster": "cluster1", "name": "extra"})
        assert [p.name for p in moc.clusters["cluster1"].spec.node_pools] == ["cluster1-linux", "cluster1-windows"]

        deleted = await moc.cluster_delete({"name": "cluster1"})
        assert sorted(deleted["vms"]) == ["cluster1-control-plane-0", "cluster1-lb", "cluster1-linux-0",
                                          "cluster1-windows-0"]
        assert moc.vms == {} and moc.lbs == {} and h.host.vms == {}
        usage = moc.ipam.usage()[0]
        assert (usage["nodePool"]["used"], usage["nodePool"]["reserved"], usage["vipPool"]["used"]) == (0, 0, 0)

        # sku none: no LB VM, the control plane claims the VIP itself (kube-vip); one address fewer.
        await moc.cluster_create({"name": "kv", "vnet": "aks-net", "loadBalancerSku": "none",
                                  "nodePools": [{"name": "kv-linux", "nodeCount": 13}]})
        assert "kv-lb" not in moc.vms and moc.vms["kv-control-plane-0"].config["kube_vip"] is True
        (lb,) = moc.loadbalancers({})
        assert (lb["name"], lb["lbVm"], lb["programmed"]) == ("kv-kube-vip", None, True)
        assert (await moc.wait_ready({"timeout_s": 2}))["ready"]
        assert moc.ipam.usage()[0]["nodePool"]["available"] == 1
    run(test, tmp_path)


def test_a_restarted_cloud_agent_keeps_its_state_and_catches_up_on_events(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(NETWORK, name="net-a"))
        await moc.cluster_create(dict(CLUSTER, vnet="net-a"))
        await moc.vm_stop({"name": "cluster1-windows-0"})
        before = (await moc.status({}))
        await h.stop()  # MOC goes away ...
        h.host.kill("cluster1-linux-1")  # ... and a VM dies while it is down
        h.programmed.clear()

        moc2 = await h.start()
        after = await moc2.status({})
        assert after["networks"] == before["networks"] and after["clusters"] == before["clusters"]
        await until(lambda: h.host.vms["cluster1-linux-1"]["state"] == "running", "the missed crash handled")
        assert moc2.vms["cluster1-windows-0"].desired == "stopped"
        assert h.host.vms["cluster1-windows-0"]["state"] == "stopped"
        # New allocations continue after the restored ones.
        up = await moc2.nodepool_scale({"cluster": "cluster1", "name": "cluster1-linux", "nodeCount": 3})
        assert moc2.vms[up["added"][0]].ips == ["172.16.0.25"]
        with pytest.raises(MgmtError, match=r"^name: network net-a already exists$"):
            await moc2.network_create(dict(NETWORK, name="net-a"))
    run(test, tmp_path)


def test_dhcp_model_vms_lease_their_addresses_and_the_lb_waits_for_the_control_planes(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create({"name": "dhcp-net", "ipAddressPrefix": "172.16.0.0/24", "gateway": "172.16.0.1",
                                  "dhcpScopeStart": "172.16.0.100", "dhcpScopeEnd": "172.16.0.200",
                                  "vipPoolStart": "172.16.0.50", "vipPoolEnd": "172.16.0.60"})
        leases = {"cluster1-control-plane-0": "172.16.0.100", "cluster1-lb": "172.16.0.101"}
        learned: list[str] = []

        async def learn(vm: Any, endpoint: str) -> None:  # stands in for asking the VM its lease
            learned.append(vm.name)
            if vm.name in leases and vm.name in moc.vms:
                moc._put_vm(replace(moc.vms[vm.name], ips=[leases[vm.name]]))

        moc._learn_lease = learn  # type: ignore[method-assign]
        h.host._start_vm = _with_mgmt(h.host._start_vm)  # type: ignore[method-assign,assignment]
        # 200 nodes: no node-pool sizing in the DHCP model (leases), only the VIP.
        await moc.cluster_create({"name": "cluster1", "vnet": "dhcp-net",
                                  "nodePools": [{"name": "cluster1-linux", "nodeCount": 200}]})
        nic = h.host.vms["cluster1-linux-7"]["config"]["nics"][0]
        assert nic["dhcp"] is True and nic["addresses"] == [] and nic["mac"].startswith("02:01:")
        assert sorted(learned) == sorted(h.host.vms)
        await until(lambda: h.programmed, "the LB programmed")
        ip, doc = h.programmed[0]
        assert ip == "172.16.0.101" and doc["vips"] == ["172.16.0.50"]
        assert doc["backends"][0]["servers"][0]["address"] == "172.16.0.100"
        assert "nodePool" not in moc.ipam.usage()[0]
    run(test, tmp_path)


def _with_mgmt(start: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    def wrapped(args: dict[str, Any]) -> Any:
        return {**start(args), "mgmt": "tcp://127.0.0.1:1"}
    return wrapped


def test_a_failed_cluster_create_is_rolled_back_and_never_ha_restarted(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        delay = moc.timers.ha_restart_delay
        await moc.network_create(dict(NETWORK))
        # The control plane exits before it is ready (an unexpected exit, as the host agent
        # reports it); removing the others takes longer than the HA delay.
        h.host.fail_start.add("cluster1-control-plane-0")
        h.host.stop_s = delay * 3
        with pytest.raises(MgmtError, match=r"^cluster1: cluster1-control-plane-0: exited with code 1"):
            await moc.cluster_create(dict(CLUSTER))
        await asyncio.sleep(delay * 3)
        assert h.host.starts("cluster1-control-plane-0") == 1 and moc.ha_restarts == 0
        assert h.host.vms == {} and moc.vms == {} and not (await moc.status({}))["ha"]["pending"]
    run(test, tmp_path)


def test_removed_node_vms_have_their_node_objects_deleted_through_the_api_server(tmp_path: Path) -> None:
    deleted: list[tuple[str, str]] = []
    down = {"up": False}

    async def delete_node(vip: str, name: str) -> None:
        if not down["up"]:
            raise ConnectionRefusedError(f"{vip}:6443")
        deleted.append((vip, name))

    async def test(h: Harness) -> None:
        down["up"] = True
        moc = await h.start(node_deleter=delete_node)
        await moc.network_create(dict(NETWORK))
        await moc.cluster_create(dict(CLUSTER))
        await moc.nodepool_scale({"cluster": "cluster1", "name": "cluster1-linux", "nodeCount": 1})
        # Done by the time the scale-down answers (the VM first, then its Node).
        assert deleted == [("172.16.0.150", "cluster1-linux-1")]
        await moc.nodepool_delete({"cluster": "cluster1", "name": "cluster1-windows"})
        assert deleted[-1] == ("172.16.0.150", "cluster1-windows-0")

        # The API server unreachable: retried in the background, and after a restart of MOC.
        down["up"] = False
        await moc.nodepool_scale({"cluster": "cluster1", "name": "cluster1-linux", "nodeCount": 0})
        assert moc.store.get_meta("pending_node_deletions") == [["cluster1", "cluster1-linux-0"]]
        await h.stop()
        down["up"] = True
        moc = await h.start(node_deleter=delete_node)
        await until(lambda: ("172.16.0.150", "cluster1-linux-0") in deleted, "the pending deletion")
        await until(lambda: moc.store.get_meta("pending_node_deletions") == [], "the pending list emptied")

        # A node VM created again under a removed name keeps its Node: nothing pending deletes it.
        down["up"] = False
        await moc.nodepool_scale({"cluster": "cluster1", "name": "cluster1-linux", "nodeCount": 1})
        await moc.nodepool_scale({"cluster": "cluster1", "name": "cluster1-linux", "nodeCount": 0})
        await moc.nodepool_scale({"cluster": "cluster1", "name": "cluster1-linux", "nodeCount": 1})
        down["up"] = True
        await until(lambda: moc.store.get_meta("pending_node_deletions") == [], "the stale deletion dropped")
        assert deleted.count(("172.16.0.150", "cluster1-linux-0")) == 1
    run(test, tmp_path)


def test_cluster_delete_removes_its_store_and_lb_disk(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        run_dir = tmp_path / "run"
        h.run_dir = str(run_dir)
        moc = await h.start()
        await moc.network_create(dict(NETWORK))
        await moc.cluster_create(dict(CLUSTER))
        # What the VMs write: the API server's store, the LB VM's applied config.
        store = run_dir / "clusters" / "cluster1"
        disk = run_dir / "disks" / "cluster1-lb"
        for path in (store / "apiserver.sqlite", disk / "haproxy.json", run_dir / "disks" / "other" / "x",
                     run_dir / "moc" / "moc.sqlite"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
        await moc.cluster_delete({"name": "cluster1"})
        assert not store.exists() and not disk.exists()
        assert (run_dir / "disks" / "other" / "x").exists() and (run_dir / "moc" / "moc.sqlite").exists()
    run(test, tmp_path)


def test_the_leased_address_is_the_dhcp_clients_not_every_claim() -> None:
    from agents.moc.agent import leased_ips

    # A kube-vip control plane (sku none) claims the API server VIP on the NIC it leased on.
    stats = {"claims": {"eth0": ["172.16.0.21", "172.16.0.150"]},
             "dhcp": [{"nic": "eth0", "ip": "172.16.0.21", "prefixlen": 24}]}
    assert leased_ips(stats) == ["172.16.0.21"]
    assert leased_ips({"claims": {"eth0": ["172.16.0.22"]}, "dhcp": []}) == ["172.16.0.22"]
    assert leased_ips({"dhcp": [{"nic": "eth0", "ip": None}]}) == [] and leased_ips(None) == []


def test_node_vms_start_only_once_the_api_server_vip_is_served(tmp_path: Path) -> None:
    """A kubelet's first request must find the VIP claimed: control plane and LB VM first,
    LB programmed, then the nodes (a request to an unclaimed VIP waits for its timeout)."""
    async def test(h: Harness) -> None:
        started_when_programmed: list[list[str]] = []
        program = h.program

        async def watching(ip: str, doc: dict[str, Any]) -> None:
            started_when_programmed.append([a["config"]["name"] for verb, a in h.host.calls if verb == "start_vm"])
            await program(ip, doc)

        h.program = watching  # type: ignore[method-assign]
        moc = await h.start()
        await moc.network_create(dict(NETWORK))
        await moc.cluster_create(dict(CLUSTER))
        assert started_when_programmed and set(started_when_programmed[0]) == {"cluster1-control-plane-0",
                                                                               "cluster1-lb"}
        started = [a["config"]["name"] for verb, a in h.host.calls if verb == "start_vm"]
        assert len(started) == 5
    run(test, tmp_path)

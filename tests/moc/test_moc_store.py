"""MOC's sqlite store: what is written is what a reopened store reads back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agents.moc.store import ClusterRow, LbRecord, NodePoolRow, Store, VipRow, VmRecord


def vm(name: str, desired: str = "running", **kw: object) -> VmRecord:
    base: dict[str, object] = {"name": name, "kind": "node", "cluster": "c1", "pool": "c1-linux", "network": "aks-net",
                               "ips": ["172.16.0.21"], "mac": "02:00:ac:10:00:15", "desired": desired,
                               "config": {"name": name, "kind": "node", "nics": [{"name": "eth0"}]}}
    base.update(kw)
    return VmRecord(**base)  # type: ignore[arg-type]


def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "moc" / "moc.sqlite"
    store = Store(path)
    assert store.event_cursor == 0 and store.vms() == [] and store.networks() == []
    store.put_network("aks-net", "aks-net", {"name": "aks-net", "ipAddressPrefix": "172.16.0.0/24"})
    store.put_network("net2", "aks-net", {"name": "net2"})
    store.put_cluster(ClusterRow(name="c1", network="aks-net", spec={"name": "c1"}, reservation=9,
                                 vip="172.16.0.150", warnings=["flannel"]))
    store.put_nodepool(NodePoolRow(cluster="c1", name="c1-linux", os_type="linux", count=2))
    store.put_vm(vm("c1-linux-0"))
    store.put_vm(vm("c1-linux-1", ips=["172.16.0.22"]))
    store.set_desired("c1-linux-1", "stopped")
    store.put_vip(VipRow(network="aks-net", ip="172.16.0.150", cluster="c1", holder="apiserver", port=None))
    lb = LbRecord(name="c1-lb", cluster="c1", network="aks-net", vip="172.16.0.150", sku="HAProxy", lb_vm="c1-lb",
                  config={"vips": ["172.16.0.150"], "frontends": [], "backends": []}, programmed=False)
    store.put_lb(lb)
    store.set_programmed("c1-lb", True)
    store.set_reservation("c1", 10)
    store.set_event_cursor(42)
    store.close()

    again = Store(path)
    assert [n["name"] for n, _ in again.networks()] == ["aks-net", "net2"]
    assert again.networks()[1][1] == "aks-net"
    (cluster,) = again.clusters()
    assert (cluster.reservation, cluster.vip, cluster.warnings) == (10, "172.16.0.150", ["flannel"])
    assert again.nodepools("c1") == [NodePoolRow(cluster="c1", name="c1-linux", os_type="linux", count=2)]
    assert [(v.name, v.desired, v.ips) for v in again.vms()] == [
        ("c1-linux-0", "running", ["172.16.0.21"]), ("c1-linux-1", "stopped", ["172.16.0.22"])]
    assert again.vms()[0].config == vm("c1-linux-0").config
    assert again.vips() == [VipRow(network="aks-net", ip="172.16.0.150", cluster="c1", holder="apiserver", port=None)]
    (lb2,) = again.lbs()
    assert lb2.programmed and lb2.config == lb.config
    assert again.event_cursor == 42
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"

    again.delete_cluster("c1")  # and everything that hangs off it
    assert (again.clusters(), again.vms(), again.vips(), again.lbs(), again.nodepools()) == ([], [], [], [], [])
    again.close()


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(RuntimeError):
        with store.tx():
            store.put_vm(vm("a"))
            with store.tx():  # nested: joins the outer transaction
                store.put_vm(vm("b"))
            raise RuntimeError("boom")
    assert store.vms() == []
    with pytest.raises(ValueError, match="^desired: expected running or stopped, got 'paused'$"):
        store.put_vm(vm("c", desired="paused"))
    store.put_vm(vm("d"))
    store.put_vm(vm("d", ips=["172.16.0.30"]))  # a rewrite keeps its place
    store.put_vm(vm("e"))
    store.put_vm(vm("d", ips=["172.16.0.31"]))
    assert [(v.name, v.ips) for v in store.vms()] == [("d", ["172.16.0.31"]), ("e", ["172.16.0.21"])]

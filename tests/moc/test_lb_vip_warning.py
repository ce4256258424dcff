"""MOC's ``status`` warns about a VIP held by load balancers of two clusters on one network
(the shared-network known issue), and only then."""

from __future__ import annotations

from pathlib import Path

from test_agent import NETWORK, Harness, run

WIDE = {**NETWORK, "vipPoolEnd": "172.16.0.155"}


def cluster(name: str) -> dict[str, object]:
    return {"name": name, "vnet": "aks-net", "nodePools": [{"name": f"{name}-linux", "osType": "linux", "nodeCount": 1}]}


def ensure(cluster: str, name: str, port: int) -> dict[str, object]:
    return {"cluster": cluster, "namespace": "default", "name": name,
            "ports": [{"port": port, "protocol": "TCP", "nodePort": 30000 + port}]}


def vip_warnings(status: dict[str, object]) -> list[str]:
    return [w for w in status["warnings"] if isinstance(w, str) and w.startswith("VIP ")]  # type: ignore[attr-defined]


def test_status_names_the_shared_vip_and_both_clusters(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(WIDE))
        await moc.cluster_create(cluster("cluster1"))
        await moc.cluster_create(cluster("cluster2"))
        a = await moc.lb_ensure(ensure("cluster1", "web", 80))
        assert vip_warnings(await moc.status({})) == []  # one cluster's VIP: fine
        b = await moc.lb_ensure(ensure("cluster2", "web", 8080))
        assert a["vip"] == b["vip"]  # the shipped allocator: (IP, port) free -> the same VIP
        assert vip_warnings(await moc.status({})) == [
            f"VIP {a['vip']} is used by load balancers of clusters cluster1 and cluster2 on network aks-net "
            "(known issue: clusters sharing an AksHciClusterNetwork with workloads on different ports); "
            "redeploy on the same port or give each cluster its own network"]
        await moc.lb_delete({"cluster": "cluster2", "namespace": "default", "name": "web"})
        assert vip_warnings(await moc.status({})) == []
    run(test, tmp_path)

"""MOC's LoadBalancer Service verbs against a fake host agent and lbagent: ensure allocates
and programs the LB VM, refusals name the field, delete frees, internal VIPs are routed away
from the external network, and it all survives a restart of the cloud agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_agent import CLUSTER, NETWORK, Harness, run, until

from agents.mgmt import MgmtError

EXTERNAL = {"name": "internet", "ipAddressPrefix": "203.0.113.0/24", "gateway": "203.0.113.1", "external": True}
WIDE = {**NETWORK, "vipPoolEnd": "172.16.0.153"}


class FakeBroker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        self.calls.append((verb, dict(args or {})))
        return {}


def ensure(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"cluster": "cluster1", "namespace": "default", "name": name,
            "ports": [{"port": port, "protocol": "TCP", "nodePort": 30000 + port}], **extra}


def test_ensure_programs_frontends_and_node_backends_and_delete_frees(tmp_path: Path) -> None:
    broker = FakeBroker()

    async def test(h: Harness) -> None:
        moc = await h.start(broker_api=broker)
        await moc.network_create(dict(WIDE))
        await moc.network_create(dict(EXTERNAL))
        await moc.cluster_create(dict(CLUSTER))
        await until(lambda: h.programmed, "the LB programmed")
        got = await moc.lb_ensure(ensure("web", 80, balance="source"))
        assert (got["vip"], got["programmed"], got["internal"]) == ("172.16.0.151", True, False)
        doc = h.programmed[-1][1]
        assert doc["vips"] == ["172.16.0.150", "172.16.0.151"]
        assert [f["bind"] for f in doc["frontends"]] == ["172.16.0.150:6443", "172.16.0.151:80"]
        web = doc["backends"][1]
        assert web["balance"] == "source"
        assert sorted((s["name"], s["address"], s["port"]) for s in web["servers"]) == [
            ("cluster1-linux-0", "172.16.0.22", 30080), ("cluster1-linux-1", "172.16.0.23", 30080),
            ("cluster1-windows-0", "172.16.0.24", 30080)]
        # a second Service on another port shares the VIP; an internal one on port 80 does not
        assert (await moc.lb_ensure(ensure("api", 8080)))["vip"] == "172.16.0.151"
        internal = await moc.lb_ensure(ensure("int", 80, internal=True))
        assert internal["vip"] == "172.16.0.152"
        assert ("add_route", {"prefix": "172.16.0.152/32", "network": "internet", "sources": ["internet"]}) \
            in broker.calls
        with pytest.raises(MgmtError, match=r"^loadBalancerIP: 172.16.0.151 is already in use"):
            await moc.lb_ensure(ensure("clash", 80, loadBalancerIP="172.16.0.151"))
        with pytest.raises(MgmtError, match=r"loadBalancerIP: 10.0.0.1 is outside the VIP pool aks-net"):
            await moc.lb_ensure(ensure("far", 80, loadBalancerIP="10.0.0.1"))
        (row,) = moc.loadbalancers({})
        assert {s["service"]: s["vip"] for s in row["services"]} == {
            "default/web": "172.16.0.151", "default/api": "172.16.0.151", "default/int": "172.16.0.152"}
        await moc.lb_delete({"cluster": "cluster1", "namespace": "default", "name": "int"})
        assert ("remove_route", {"prefix": "172.16.0.152/32", "network": "internet"}) in broker.calls
        await until(lambda: "172.16.0.152" not in h.programmed[-1][1]["vips"], "the internal VIP unprogrammed")
        pool = moc.ipam.get("aks-net").vip
        assert pool is not None and set(pool.uses()) == {"172.16.0.150", "172.16.0.151"}
        # restart: the Service VIPs come back from sqlite
        await h.stop()
        moc = await h.start(broker_api=broker)
        assert set(moc.ipam.get("aks-net").vip.uses()) == {"172.16.0.150", "172.16.0.151"}  # type: ignore[union-attr]
        assert (await moc.lb_ensure(ensure("other", 80)))["vip"] == "172.16.0.152"
    run(test, tmp_path)


def test_pool_exhaustion_names_the_pool(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        moc = await h.start()
        await moc.network_create(dict(NETWORK))  # VIPs .150-.151: the API server's and one more
        await moc.cluster_create(dict(CLUSTER))
        assert (await moc.lb_ensure(ensure("a", 80)))["vip"] == "172.16.0.151"
        with pytest.raises(MgmtError, match=r"the VIP pool aks-net 172.16.0.150-172.16.0.151 has no address"):
            await moc.lb_ensure(ensure("b", 80))
    run(test, tmp_path)

"""kube-proxy's healthCheckNodePort listeners (agents/node/healthcheck.py): two nodes' real
Proxiers fed the same LoadBalancer Service with ``externalTrafficPolicy: Local``, each node's
listener reached over the in-process fabric with real HTTP from a client VM; the node with the
local endpoint answers 200, the other 503, with kube-proxy 1.26's headers and body; listeners
open and close as the Services change."""

from __future__ import annotations

import asyncio
import errno
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kubeproxy"))
from kubeproxy_helpers import endpoint_slice, ep, service  # noqa: E402
from vm_loopnet import LoopNet  # noqa: E402

from agents.kubeproxy import Proxier  # noqa: E402
from agents.node.healthcheck import ServiceHealthServers, health_body  # noqa: E402
from agents.vm.http import ClientResponse, Request, Response, http_request, serve_http  # noqa: E402
from agents.vm.streams import AsyncStack  # noqa: E402

NODES = {"node-a": "172.16.0.11", "node-b": "172.16.0.12"}
CLIENT = "172.16.0.50"
HC_PORT, NODE_PORT = 32000, 31000


def lb_service(policy: str = "Local", hc_port: int = HC_PORT, name: str = "web") -> dict[str, Any]:
    spec: dict[str, Any] = {"externalTrafficPolicy": policy}
    if policy == "Local":
        spec["healthCheckNodePort"] = hc_port
    ports = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": NODE_PORT}]
    return service(name, ns="prod", type="LoadBalancer", ports=ports, lb_ips=["172.16.0.150"], **spec)


class Node:
    def __init__(self, name: str, net: AsyncStack) -> None:
        self.name, self.net = name, net
        self.proxier = Proxier(name, [NODES[name]], cluster_cidrs=["10.244.0.0/16"])
        self.proxier.install(net.stack)
        self.health = ServiceHealthServers(net, self.proxier)

    async def apply(self, obj: dict[str, Any], *, deleted: bool = False) -> None:
        """What the node VM's watch handler does: the proxier, then the listeners."""
        p = self.proxier
        if obj["kind"] == "Service":
            (p.delete_service if deleted else p.update_service)(obj, None, 0.0)
        else:
            (p.delete_slice if deleted else p.update_slice)(obj, None, 0.0)
        self.health.sync()
        await self.health.settled()


class World:
    def __init__(self) -> None:
        self.fabric = LoopNet()
        self.nodes = {name: Node(name, self.fabric.add_vm(name, ip)) for name, ip in NODES.items()}
        self.client = self.fabric.add_vm("client", CLIENT)

    async def apply(self, obj: dict[str, Any], *, deleted: bool = False) -> None:
        for node in self.nodes.values():
            await node.apply(obj, deleted=deleted)

    async def get(self, node: str, port: int = HC_PORT, path: str = "/healthz") -> ClientResponse:
        return await http_request(self.client, "GET", f"http://{NODES[node]}:{port}{path}", timeout=3)

    async def refused(self, node: str, port: int = HC_PORT) -> bool:
        try:
            await self.get(node, port)
        except ConnectionRefusedError:
            return True
        except OSError as exc:
            return exc.errno == errno.ECONNREFUSED
        return False


def run(scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        world = World()
        try:
            await asyncio.wait_for(scenario(world), 10)
        finally:
            for node in world.nodes.values():
                await node.health.close()
    uvloop.run(main())


def test_body_is_kube_proxys_template() -> None:
    assert health_body("prod", "web", 2) == (b'{\n\t"service": {\n\t\t"namespace": "prod",\n\t\t"name": "web"\n\t},\n'
                                             b'\t"localEndpoints": 2\n}')


def test_the_node_with_a_local_endpoint_answers_200_the_other_503() -> None:
    async def scenario(w: World) -> None:
        await w.apply(lb_service())
        await w.apply(endpoint_slice("web", [ep("10.244.0.5", node="node-a"), ep("10.244.0.6", node="node-a")],
                                     ns="prod"))
        a, b = await w.get("node-a"), await w.get("node-b", path="/anything")  # any path, as upstream
        assert a.status == 200 and b.status == 503
        assert a.body == health_body("prod", "web", 2) and b.body == health_body("prod", "web", 0)
        for r in (a, b):
            assert r.headers["content-type"] == "application/json"
            assert r.headers["x-content-type-options"] == "nosniff"
        assert a.json() == {"service": {"namespace": "prod", "name": "web"}, "localEndpoints": 2}
        # The endpoints move to node-b: the answers follow, on the same listeners.
        await w.apply(endpoint_slice("web", [ep("10.244.1.7", node="node-b")], ns="prod"))
        assert ((await w.get("node-a")).status, (await w.get("node-b")).status) == (503, 200)
        # Not ready endpoints are not local endpoints.
        await w.apply(endpoint_slice("web", [ep("10.244.1.7", node="node-b", ready=False)], ns="prod"))
        assert (await w.get("node-b")).status == 503
        stats = w.nodes["node-a"].health.stats()
        assert (stats["ports"], stats["opened"], stats["closed"]) == ([HC_PORT], 1, 0)
        assert stats["requests"] == 2  # node-a was asked twice
    run(scenario)


def test_listeners_open_and_close_as_services_change() -> None:
    async def scenario(w: World) -> None:
        assert await w.refused("node-a")
        await w.apply(lb_service())
        assert (await w.get("node-a")).status == 503  # no endpoints yet
        await w.apply(lb_service(policy="Cluster"))  # no health check port with Cluster
        assert await w.refused("node-a") and await w.refused("node-b")
        await w.apply(lb_service(hc_port=32005))
        assert await w.refused("node-a", HC_PORT)
        assert (await w.get("node-a", 32005)).status == 503
        await w.apply(lb_service(hc_port=32005), deleted=True)
        assert await w.refused("node-a", 32005)
        assert w.nodes["node-a"].health.stats()["ports"] == []
    run(scenario)


def test_a_port_in_use_is_counted_and_taken_once_free() -> None:
    async def scenario(w: World) -> None:
        node = w.nodes["node-a"]

        async def other(request: Request) -> Response:
            return Response(status=418)

        squatter = await serve_http(node.net, "0.0.0.0", HC_PORT, other)
        await w.apply(lb_service())
        stats = node.health.stats()
        assert stats["ports"] == [] and stats["bind_failures"] == 1 and str(HC_PORT) in stats["failed"]
        assert (await w.get("node-a")).status == 418
        assert (await w.get("node-b")).status == 503  # the other node is not affected
        squatter.close()
        await squatter.wait_closed()
        await w.apply(endpoint_slice("web", [ep("10.244.0.5", node="node-a")], ns="prod"))  # the next change
        assert (await w.get("node-a")).status == 200
        assert node.health.stats()["failed"] == {}
    run(scenario)


def test_close_stops_every_listener() -> None:
    async def scenario(w: World) -> None:
        await w.apply(lb_service())
        await w.apply(lb_service(name="api", hc_port=32001))
        assert w.nodes["node-a"].health.stats()["ports"] == [HC_PORT, 32001]
        await w.nodes["node-a"].health.close()
        assert await w.refused("node-a", HC_PORT) and await w.refused("node-a", 32001)
        w.nodes["node-a"].health.sync()  # after close: ignored
        assert w.nodes["node-a"].health.stats()["ports"] == []
    run(scenario)


@pytest.mark.parametrize(("before", "after", "ports"), [
    (lb_service(), lb_service(policy="Cluster"), []),
    (lb_service(), lb_service(hc_port=32005), [32005]),
    (lb_service(policy="Cluster"), lb_service(), [HC_PORT]),
])
def test_the_proxier_forgets_a_services_old_health_check_port(before: dict[str, Any], after: dict[str, Any],
                                                              ports: list[int]) -> None:
    p = Proxier("node-a", [NODES["node-a"]])
    p.update_service(before, None, 0.0)
    p.update_service(after, None, 1.0)
    assert p.health_check_ports() == ports
    assert p.health_check(HC_PORT if HC_PORT not in ports else 32005) is None


def test_the_node_vm_wires_the_listeners() -> None:
    """agents/node/vm.py: a watch event goes to the proxier, then to the listeners."""
    source = (Path(__file__).resolve().parents[2] / "agents" / "node" / "vm.py").read_text()
    assert "ServiceHealthServers(self._stack(), self.proxier)" in source
    assert "self.health.sync()" in source and "await self.health.close()" in source

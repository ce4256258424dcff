"""KubeClient and Informer against the API service over real HTTP/1.1 on the in-process
netstack fabric (tests/vm/vm_loopnet.py): CRUD errors, a watch that resumes with exactly the
missed events after the API server restarts, 410 Gone → relist."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))
from vm_loopnet import LoopNet  # noqa: E402

from agents.apiserver.rest import Router  # noqa: E402
from agents.apiserver.store import Store  # noqa: E402
from agents.apiserver.vm import ApiService  # noqa: E402
from agents.kube.client import ApiError, Gone, Informer, KubeClient, api_path  # noqa: E402
from agents.vm.streams import AsyncStack  # noqa: E402

SERVER, CLIENT = "172.16.0.20", "172.16.0.10"


class Server:
    """An API service on the server stack that can be 'restarted' (store closed and reopened)."""

    def __init__(self, net: AsyncStack, path: str, history: int = 10_000) -> None:
        self.net, self.path, self.history = net, path, history
        self.store: Store | None = None
        self.service: ApiService | None = None

    async def start(self) -> ApiService:
        self.store = Store(self.path, history=self.history)
        router = Router(self.store)
        router.bootstrap()
        self.service = ApiService(self.store, router, asyncio.get_running_loop())
        await self.service.serve(self.net, port=6443)
        return self.service

    async def stop(self) -> None:
        assert self.service is not None and self.store is not None
        await self.service.close()
        self.store.close()


def run(tmp_path: Path, scenario: Callable[[Server, KubeClient], Awaitable[Any]], timeout: float = 15.0,
        history: int = 10_000) -> Any:
    async def main() -> Any:
        net = LoopNet()
        server = Server(net.add_vm("cp", SERVER), str(tmp_path / "api.sqlite"), history)
        client_net = net.add_vm("node", CLIENT)
        await server.start()
        client = KubeClient(client_net, SERVER, 6443, timeout=2.0)
        try:
            return await asyncio.wait_for(scenario(server, client), timeout)
        finally:
            await client.close()
            await server.stop()
    return uvloop.run(main())


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


async def next_events(it: Any, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        ev = await asyncio.wait_for(it.__anext__(), 5)
        out.append((ev["type"], ev["object"]["metadata"]["name"]))
    return out


def test_crud_and_errors(tmp_path: Path) -> None:
    async def scenario(server: Server, client: KubeClient) -> None:
        created = await client.create(api_path("nodes"), node("n1"))
        assert created["metadata"]["resourceVersion"]
        with pytest.raises(ApiError) as e:
            await client.create(api_path("nodes"), node("n1"))
        assert (e.value.status, e.value.reason) == (409, "AlreadyExists")
        with pytest.raises(ApiError) as e:
            await client.get(api_path("nodes", name="nope"))
        assert e.value.status == 404 and e.value.message == 'nodes "nope" not found'
        with pytest.raises(ApiError) as e:
            await client.create(api_path("nodes"), node("Bad_Name"))
        assert e.value.status == 422 and e.value.message.startswith('Node "Bad_Name" is invalid: metadata.name')
        stale = dict(created, spec={"unschedulable": True})
        await client.update(api_path("nodes", name="n1"), stale)
        with pytest.raises(ApiError) as e:
            await client.update(api_path("nodes", name="n1"), stale)
        assert e.value.reason == "Conflict"
        got = await client.patch(api_path("nodes", name="n1", subresource="status"),
                                 {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        assert got["status"]["conditions"][0]["status"] == "True"
        listed = await client.list(api_path("nodes"))
        assert listed["kind"] == "NodeList" and [n["metadata"]["name"] for n in listed["items"]] == ["n1"]
        lease = await client.create(api_path("leases", "kube-node-lease"), {
            "metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}})
        assert lease["kind"] == "Lease"
        await client.delete(api_path("nodes", name="n1"))
        assert (await client.list(api_path("nodes")))["items"] == []
        assert client.http.connects == 1  # one keep-alive connection for all of it

    run(tmp_path, scenario)


def test_watch_resumes_with_exactly_the_missed_events(tmp_path: Path) -> None:
    async def scenario(server: Server, client: KubeClient) -> None:
        rv = (await client.list(api_path("nodes")))["metadata"]["resourceVersion"]
        connects = []
        it = client.watch(api_path("nodes"), rv, on_connect=lambda: connects.append(1), idle_timeout=2.0)
        task = asyncio.ensure_future(next_events(it, 2))
        await client.create(api_path("nodes"), node("a"))
        await client.create(api_path("nodes"), node("b"))
        assert await task == [("ADDED", "a"), ("ADDED", "b")]
        # the API server goes away; writes happen while the watcher is disconnected
        await server.stop()
        store = Store(server.path)
        store.patch("nodes", None, "a", {"metadata": {"labels": {"x": "1"}}})
        store.delete("nodes", None, "b")
        store.create("nodes", node("c"))
        store.create("configmaps", {"metadata": {"name": "noise", "namespace": "default"}})
        store.close()
        await server.start()
        assert server.store is not None
        events = await next_events(it, 3)
        assert events == [("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "c")]  # exactly, in order
        assert len(connects) >= 2 and client.watch_reconnects >= 1
        await client.create(api_path("nodes"), node("d"))
        assert await next_events(it, 1) == [("ADDED", "d")]
        await it.aclose()

    run(tmp_path, scenario)


def test_gone_then_informer_relists(tmp_path: Path) -> None:
    async def scenario(server: Server, client: KubeClient) -> None:
        assert server.store is not None
        seen: dict[str, list[str]] = {"add": [], "update": [], "delete": []}
        informer = Informer(client, api_path("configmaps", "default"),
                            on_add=lambda o: seen["add"].append(o["metadata"]["name"]),
                            on_update=lambda old, new: seen["update"].append(new["metadata"]["name"]),
                            on_delete=lambda o: seen["delete"].append(o["metadata"]["name"]), idle_timeout=2.0)
        await client.create(api_path("configmaps", "default"), {"metadata": {"name": "first"}})
        informer.start()
        await informer.wait_synced(5)
        assert seen["add"] == ["first"] and informer.lists == 1
        # a plain watch from a version older than the 10-event history: 410
        for i in range(12):
            server.store.create("nodes", node(f"n{i}"))
        with pytest.raises(Gone) as e:
            async for _ in client.watch(api_path("nodes"), 1):
                pass
        assert e.value.status == 410 and e.value.message.startswith("too old resource version: 1 (")
        # the informer is disconnected while its version falls out of the history: it relists
        await server.stop()
        store = Store(server.path, history=10)
        store.delete("configmaps", "default", "first")
        store.create("configmaps", {"metadata": {"name": "second", "namespace": "default"}})
        for i in range(12):
            store.create("nodes", node(f"m{i}"))
        store.close()
        await server.start()
        deadline = asyncio.get_running_loop().time() + 5
        while informer.lists < 2 or "second" not in seen["add"]:
            assert asyncio.get_running_loop().time() < deadline, (informer.lists, seen)
            await asyncio.sleep(0.02)  # polling the informer's counters
        assert seen["delete"] == ["first"] and sorted(informer.cache) == ["default/second"]
        await informer.stop()

    run(tmp_path, scenario, history=10)

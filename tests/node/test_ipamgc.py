"""Calico IPAM clean-up of deleted Nodes (agents/node/ipamgc.py, CalicoIpamSync.release_node):
who acts (the first Ready node by name), orphan confirmation over two sweeps, and the
release itself against the real API server router — resourceVersion compare-and-swap
included, so a block claimed by another node meanwhile is never lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.apiserver.rest import Router
from agents.apiserver.store import Store
from agents.kube.client import ApiError
from agents.node.ipamgc import CalicoIpamGc, OrphanTracker, leader
from agents.node.kubelet import CALICO_IPAM_CONFIGMAP, CalicoIpamSync
from agents.timers import Timers


def node(name: str, ready: str | None = "True") -> dict[str, Any]:
    conds = [] if ready is None else [{"type": "Ready", "status": ready}]
    return {"metadata": {"name": name}, "status": {"conditions": conds}}


@pytest.mark.parametrize(("nodes", "exclude", "expected"), [
    ([node("b"), node("a"), node("c")], [], "a"),
    ([node("b"), node("a"), node("c")], ["a"], "b"),
    ([node("b"), node("a", "Unknown"), node("c")], [], "b"),
    ([node("b", "False"), node("a", None)], [], None),
    ([], [], None),
])
def test_the_leader_is_the_first_ready_node(nodes: list[dict[str, Any]], exclude: list[str],
                                            expected: str | None) -> None:
    assert leader(nodes, exclude) == expected


def test_orphans_are_confirmed_by_two_sweeps() -> None:
    t = OrphanTracker()
    blocks = {"10.244.0.0/26": "a", "10.244.0.64/26": "gone", "10.244.0.128/26": "new"}
    assert t.sweep(blocks, ["a"]) == []  # "gone" and "new" are suspects
    assert t.sweep(blocks, ["a", "new"]) == ["gone"]  # "new"'s Node arrived meanwhile
    assert t.suspects == set()
    assert t.sweep(blocks, ["a", "new"]) == []


# --- against the API server's router -------------------------------------------------------------


class RouterClient:
    """The KubeClient calls CalicoIpamSync makes, over the real REST router; ``before_write``
    runs once just before the next write (another node's write in between)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.before_write: Callable[[], Any] | None = None
        self.writes = 0

    async def _do(self, method: str, path: str, body: Any = None) -> Any:
        await asyncio.sleep(0)
        if method != "GET" and self.before_write is not None:
            hook, self.before_write = self.before_write, None
            await hook()
        res = self.router.handle(method, path, None, body)
        doc = json.loads(json.dumps(res.body))
        if res.status >= 400:
            raise ApiError.from_status(res.status, doc)
        if method != "GET":
            self.writes += 1
        return doc

    async def get(self, path: str) -> Any:
        return await self._do("GET", path)

    async def create(self, path: str, obj: Any) -> Any:
        return await self._do("POST", path, obj)

    async def update(self, path: str, obj: Any) -> Any:
        return await self._do("PUT", path, obj)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    store = Store(str(tmp_path / "api.sqlite"))
    r = Router(store)
    r.bootstrap()
    yield r
    store.close()


def configmap_blocks(client: RouterClient) -> dict[str, str]:
    res = client.router.handle("GET", f"/api/v1/namespaces/kube-system/configmaps/{CALICO_IPAM_CONFIGMAP}")
    return {b["cidr"]: b["affinity"] for b in json.loads(res.body["data"]["blocks"])}


async def three_nodes(client: RouterClient) -> dict[str, CalicoIpamSync]:
    nodes = {n: CalicoIpamSync(client, n) for n in ("a", "b", "c")}
    for sync in nodes.values():
        await sync.ensure_capacity(1)
    c = nodes["c"]
    for i in range(70):  # c fills its first block and claims a second
        await c.ensure_capacity(1)
        c.allocator.allocate("c", f"default/p{i}")
    await c.ensure_capacity(1)
    return nodes


def test_release_node_frees_a_deleted_nodes_blocks_once(router: Router) -> None:
    async def main() -> None:
        client = RouterClient(router)
        nodes = await three_nodes(client)
        assert configmap_blocks(client) == {"10.244.0.0/26": "host:a", "10.244.0.64/26": "host:b",
                                            "10.244.0.128/26": "host:c", "10.244.0.192/26": "host:c"}
        # a and b both see the deletion: the blocks are released once, the other finds none left
        got = await asyncio.gather(nodes["a"].release_node("c"), nodes["b"].release_node("c"))
        assert sorted(map(tuple, got)) == [(), ("10.244.0.128/26", "10.244.0.192/26")]
        assert configmap_blocks(client) == {"10.244.0.0/26": "host:a", "10.244.0.64/26": "host:b"}
        assert nodes["a"].counts["released_blocks"] + nodes["b"].counts["released_blocks"] == 2
        writes = client.writes
        assert await nodes["a"].release_node("c") == [] and client.writes == writes  # nothing to write
        # the freed block is the lowest free one again: the next node gets it
        d = CalicoIpamSync(client, "d")
        await d.ensure_capacity(1)
        assert d.allocator.blocks_of("d") == ["10.244.0.128/26"]
        with pytest.raises(ValueError, match="own blocks"):
            await d.release_node("d")
    asyncio.run(main())


def test_release_retries_on_conflict_and_keeps_a_block_claimed_meanwhile(router: Router) -> None:
    async def main() -> None:
        client = RouterClient(router)
        nodes = await three_nodes(client)
        late = CalicoIpamSync(client, "late")

        async def late_claims() -> None:
            client.before_write = None
            await late.ensure_capacity(1)  # between b's read and b's write

        client.before_write = late_claims
        released = await nodes["b"].release_node("c")
        assert released == ["10.244.0.128/26", "10.244.0.192/26"]
        assert nodes["b"].counts["conflicts"] == 1
        blocks = configmap_blocks(client)
        assert blocks["10.244.1.0/26"] == "host:late" and "host:c" not in blocks.values()
        # the others learn it from the ConfigMap's watch: c's blocks and routes are gone
        nodes["a"].apply(client.router.handle(
            "GET", f"/api/v1/namespaces/kube-system/configmaps/{CALICO_IPAM_CONFIGMAP}").body)
        assert nodes["a"].allocator.blocks_of("c") == [] and nodes["a"].allocator.blocks_of("late") == ["10.244.1.0/26"]
        assert nodes["a"].allocator.blocks_of("a") == ["10.244.0.0/26"]
    asyncio.run(main())


def test_only_the_leader_acts_on_a_deletion_and_on_confirmed_orphans(router: Router) -> None:
    async def main() -> None:
        client = RouterClient(router)
        syncs = await three_nodes(client)
        cluster = [node("a"), node("b"), node("c")]
        gcs = {n: CalicoIpamGc(syncs[n], lambda: list(cluster), Timers(0.0001)) for n in ("a", "b")}
        for sync in syncs.values():  # everyone's view of the ConfigMap
            sync.merge(await sync.read())
        # c is deleted while a is NotReady: b is the leader and releases; a does nothing
        cluster[:] = [node("a", "Unknown"), node("b")]
        writes = client.writes
        gcs["a"].node_deleted(node("c"))
        gcs["b"].node_deleted(node("c"))
        async with asyncio.timeout(5):  # the release runs as a task: wait for its write
            while "host:c" in configmap_blocks(client).values():
                await asyncio.sleep(0.005)
        assert (gcs["a"].counts["releases"], gcs["b"].counts["releases"]) == (0, 1)
        assert client.writes == writes + 1
        # a deletion nobody acted on (the leader was down): the sweeps catch it, twice seen
        cluster[:] = [node("a"), node("b")]
        ghost = CalicoIpamSync(client, "ghost")
        await ghost.ensure_capacity(1)
        for sync in syncs.values():
            sync.merge(await sync.read())
        assert await gcs["a"].sweep() == [] and await gcs["b"].sweep() == []  # first sighting
        assert "host:ghost" in configmap_blocks(client).values()
        assert await gcs["b"].sweep() == []  # confirmed, but b is not the leader
        assert await gcs["a"].sweep() == ["10.244.0.128/26"]
        assert "host:ghost" not in configmap_blocks(client).values()
        assert gcs["a"].stats()["leader"] == "a"
        # the periodic loop sweeps on its own
        task = asyncio.ensure_future(gcs["a"].run())  # every 0.03 s here
        async with asyncio.timeout(5):
            while gcs["a"].counts["sweeps"] <= 2:
                await asyncio.sleep(0.01)
        task.cancel()
    asyncio.run(main())


def test_the_node_vm_wires_the_clean_up() -> None:
    source = (Path(__file__).resolve().parents[2] / "agents" / "node" / "vm.py").read_text()
    assert "CalicoIpamGc(self.ipam, nodes.items, timers)" in source
    assert "on_delete=lambda obj: self._node_deleted(obj, nodes_changed)" in source
    assert "self.ipam_gc.node_deleted(obj)" in source

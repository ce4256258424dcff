"""Calico IPAM clean-up: the blocks of a deleted Node go back to the pool.

On the real product this is Calico's kube-controllers (its node controller: when a Kubernetes
Node is deleted, the node's block affinities and every address in its blocks are released;
a periodic reconciliation catches the deletions it missed).  Here the cluster's block IPAM is
the ConfigMap ``kube-system/calico-ipam-blocks`` that the nodes themselves write
(:class:`~.kubelet.CalicoIpamSync`), and there is no kube-controllers Deployment, so the nodes
do it, **once**: every Calico node watches the Nodes anyway (for its routes), and the one
that acts is the *leader* — the first by name among the Nodes whose ``Ready`` condition is
``True`` — which every node computes alike from the same Node list.  When node lists
disagree for a moment two nodes may both act; the write is the same compare-and-swap as a
block claim (a 409 re-reads), and a node finding no block of the deleted node left does
nothing, so the release still happens once.

Two triggers:

* the Node's ``DELETED`` watch event (MOC deletes the Node object when it removes a node VM
  on a scale-down or a node pool deletion): the leader releases its blocks at once;
* a sweep every :data:`RECONCILE_PERIOD` (scaled): blocks whose affine node has no Node object
  are released by the leader once they were already orphaned at the previous sweep (a
  deletion the leader missed: it was down, or became leader later).  Two sightings a period
  apart keep a new node's first block — claimed before its Node reached this node's watch —
  from being taken for an orphan, as Calico's leak confirmation does.

:class:`OrphanTracker` and :func:`leader` are sans-IO (node lists in, decisions out);
:class:`CalicoIpamGc` is the asyncio glue in the node VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agents.timers import Timers

__all__ = ["RECONCILE_PERIOD", "CalicoIpamGc", "OrphanTracker", "leader", "node_ready"]

log = logging.getLogger("hcinet.node.ipamgc")

RECONCILE_PERIOD = 300.0  # kube-controllers' node controller reconciler period (5 min), unscaled

Obj = Mapping[str, Any]


def node_ready(node: Obj) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _name(node: Obj) -> str:
    return str((node.get("metadata") or {}).get("name") or "")


def leader(nodes: Iterable[Obj], exclude: Iterable[str] = ()) -> str | None:
    """The node that cleans up: the first by name of the Ready Nodes (none: nobody)."""
    skip = set(exclude)
    ready = sorted(n for n in (_name(o) for o in nodes if node_ready(o)) if n and n not in skip)
    return ready[0] if ready else None


class OrphanTracker:
    """Nodes that hold blocks but have no Node object, confirmed over two sweeps."""

    def __init__(self) -> None:
        self.suspects: set[str] = set()

    def sweep(self, affinities: Mapping[str, str], nodes: Iterable[str]) -> list[str]:
        """``affinities`` (block CIDR -> node) and the Node names now: the nodes to release,
        those that were orphaned at the previous sweep too."""
        existing = set(nodes)
        orphaned = set(affinities.values()) - existing
        confirmed = sorted(orphaned & self.suspects)
        self.suspects = orphaned - set(confirmed)
        return confirmed


class CalicoIpamGc:
    """The clean-up in one Calico node VM (see the module docstring)."""

    def __init__(self, ipam: Any, nodes: Callable[[], list[Obj]], timers: Timers) -> None:
        self.ipam = ipam            # CalicoIpamSync: this node's view and the CAS writer
        self.nodes = nodes          # the Node informer's items
        self.period = timers.scaled(RECONCILE_PERIOD)
        self.tracker = OrphanTracker()
        self.counts = {"deletions_seen": 0, "releases": 0, "sweeps": 0, "failures": 0}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def me(self) -> str:
        return str(self.ipam.node)

    def is_leader(self, exclude: Iterable[str] = ()) -> bool:
        return leader(self.nodes(), exclude) == self.me

    def node_deleted(self, obj: Obj) -> None:
        """The Node informer's delete handler."""
        name = _name(obj)
        self.counts["deletions_seen"] += 1
        if name and name != self.me and self.is_leader(exclude=[name]):
            self._spawn(self.release(name))

    async def release(self, name: str) -> list[str]:
        try:
            released: list[str] = await self.ipam.release_node(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counts["failures"] += 1
            log.warning("calico ipam: releasing deleted node %s failed: %s", name, exc)
            return []
        if released:
            self.counts["releases"] += 1
        return released

    async def sweep(self) -> list[str]:
        """One reconciliation: release the confirmed orphans (the leader only)."""
        self.counts["sweeps"] += 1
        names = [_name(n) for n in self.nodes()]
        affinities = {c: n for c, n in self.ipam.allocator.affinities().items() if n != self.me}
        confirmed = self.tracker.sweep(affinities, names)
        if not self.is_leader():
            return []
        out: list[str] = []
        for name in confirmed:
            out += await self.release(name)
        return out

    async def run(self) -> None:
        """Sweep every period until cancelled."""
        while True:
            await asyncio.sleep(self.period)
            await self.sweep()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def stats(self) -> dict[str, Any]:
        return {"leader": leader(self.nodes()), "suspects": sorted(self.tracker.suspects), **self.counts}

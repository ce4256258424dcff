"""asyncio glue of a node VM's datapath: the stack the runtime drives, and one NetAPI per pod.

:class:`DatapathStack` is what a node VM hands the runtime in place of its bare root
:class:`~agents.netstack.NetStack` (``VM.build_stack``).  Until the CNI is configured it *is*
the root stack (its entry points are the root's bound methods, so the hot path has no extra
layer); :meth:`DatapathStack.attach` then switches them to the
:class:`~agents.node.datapath.NodeDatapath`: ``receive`` -> ``dp.receive``, ``take_output`` ->
``dp.pump(now)``, ``next_deadline`` / ``handle_timers`` -> the datapath's (every pod stack and
the NAT table) plus any extra timed parts (kube-proxy's conntrack), and ``on_output`` moves
to the datapath (which takes the root's for itself).  Everything else (sockets, routes,
stats) is the root stack's, so the node's own programs (kubelet, probes) run on it as before.

:class:`PodNetAPI` is the asyncio network API of one pod (its network namespace): the same
API a VM's programs use (:class:`~agents.vm.streams.NetAPI`), over the pod's own stack.  A pod
stack has no wire of its own: its output is moved by the datapath's pump, so every "kick"
goes to the node's :class:`~agents.vm.streams.AsyncStack`, which services the datapath; the
pod stacks' timers are the datapath's too.  It carries the pod's resolv.conf (the kubelet's
ClusterFirst file), so ``curl`` and ``nslookup`` inside the pod resolve cluster names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agents.vm.streams import AsyncStack

__all__ = ["DatapathStack", "PodNetAPI"]


class DatapathStack:
    """The node VM's stack as the runtime sees it: the root stack, then the datapath."""

    def __init__(self, root: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.datapath: Any = None
        self.clock = clock
        self.timed: list[Any] = []  # extra parts with next_deadline() and expire(now)
        self._on_output: Callable[[], None] | None = None
        # Before attach: the root's own bound methods (no layer on the hot path).
        self.receive = root.receive
        self.take_output = root.take_output
        self.next_deadline = root.next_deadline
        self.handle_timers = root.handle_timers

    # -- switching over ----------------------------------------------------------------------

    def attach(self, dp: Any) -> None:
        """The CNI is configured: from now on packets and timers go through ``dp``."""
        self.datapath = dp
        dp.on_output = self._on_output
        self.receive = dp.receive
        self.take_output = self._pump
        self.next_deadline = self._next_deadline
        self.handle_timers = self._handle_timers

    def add_timed(self, part: Any) -> None:
        """A part with ``next_deadline()`` and ``expire(now)`` that shares the node's timer."""
        self.timed.append(part)

    def _pump(self) -> list[tuple[int, str, Any]]:
        out: list[tuple[int, str, Any]] = self.datapath.pump(self.clock())
        return out

    def _next_deadline(self) -> float | None:
        deadline: float | None = self.datapath.next_deadline()
        for part in self.timed:
            d = part.next_deadline()
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        return deadline

    def _handle_timers(self, now: float) -> None:
        self.datapath.handle_timers(now)
        for part in self.timed:
            d = part.next_deadline()
            if d is not None and d <= now:
                part.expire(now)

    # -- the rest is the root stack's --------------------------------------------------------

    @property
    def on_output(self) -> Callable[[], None] | None:
        return self._on_output

    @on_output.setter
    def on_output(self, callback: Callable[[], None] | None) -> None:
        self._on_output = callback
        if self.datapath is not None:
            self.datapath.on_output = callback
        else:
            self.root.on_output = callback

    def close(self, now: float | None = None) -> None:
        if self.datapath is not None:
            self.datapath.close(now)
        self.root.close(now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.root, name)


class PodNetAPI(AsyncStack):
    """The asyncio network API inside one pod: sockets on ``pod.stack``, moved by the node.

    Built on :class:`~agents.vm.streams.AsyncStack`'s app API (``open_connection``,
    ``start_server``, ``create_datagram_endpoint``, ``ping``) with the loop glue redirected:
    :meth:`kick` and :meth:`push` service the node's stack (the datapath pump carries the pod's
    output to the root), paused writers are resumed by the node's service pass, and a ping's
    receive time is the node's (the packet entered the node there).
    """

    def __init__(self, node: AsyncStack, pod: Any, *, resolv_conf: Any = None, name: str = "") -> None:
        # Not AsyncStack.__init__: that would take the pod stack's on_output, which is the
        # datapath's (a pod's output wakes the pump).
        self.node = node
        self.pod = pod
        self.stack = pod.stack
        self.loop = node.loop
        self.paused_writers = node.paused_writers
        self.resolv_conf = resolv_conf
        self.name = name or pod.key
        self._closed = False

    @property
    def rx_stamp(self) -> float:
        return self.node.rx_stamp

    @rx_stamp.setter
    def rx_stamp(self, value: float) -> None:
        self.node.rx_stamp = value

    def kick(self) -> None:
        self.node.kick()

    def push(self) -> None:
        self.node.push()

    def receive(self, nic: int, pkts: Any) -> None:
        raise RuntimeError("a pod stack is fed by the node's datapath, not by a wire")

    receive_burst = receive

    def burst_end(self) -> None:
        self.node.burst_end()

    def flush(self) -> None:
        self.node.kick()

    def close(self) -> None:
        """The pod's sockets go with its namespace (``NodeDatapath.remove_pod``)."""
        self._closed = True

    async def resolve(self, host: str) -> str | None:
        """getaddrinfo with the pod's resolv.conf (curl's hook): the first address, or None."""
        from agents.dns.server import resolve

        result = await resolve(self, host, ("A",))
        addresses = getattr(result, "addresses", ()) or ()
        return str(addresses[0]) if getattr(result, "status", "") == "ok" and addresses else None

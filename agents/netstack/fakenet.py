"""An in-memory fabric for tests (like trio's ``FakeNet``): NetStacks, L2 segments, a clock.

Stacks attach NICs to named segments; a NIC answers for its interface's addresses on its
segment (as the broker's claims do).  Output ``(nic, via, pkt)`` goes to the NIC that claims
``via`` (or ``pkt``'s destination when on-link), after a delay, unless an impairment or a
partition says otherwise.  A router is just a NetStack with ``forwarding = True`` on two
segments.  Time only moves in :meth:`FakeNet.run`, from event to event, so a test of minutes
of TCP backoff takes milliseconds, and a seeded ``random.Random`` makes every impairment
reproducible.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .stack import NetStack

Packet = tuple[Any, ...]
Tap = Callable[[float, str, int, str, Packet], None]  # (now, stack name, nic, via, pkt)


@dataclass(slots=True, kw_only=True)
class Impairment:
    """netem-like knobs for one direction; probabilities are 0..1."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0          # chance a packet is held back by ``reorder_delay``
    reorder_delay: float = 0.003  # long enough for the packets behind it to overtake
    delay: float | None = None    # None: the fabric's default delay
    jitter: float = 0.0           # uniform extra delay 0..jitter

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a probability 0..1")
        if (self.delay is not None and self.delay < 0) or self.jitter < 0 or self.reorder_delay < 0:
            raise ValueError("delay/jitter/reorder_delay: expected >= 0")


class _Segment:
    __slots__ = ("name", "mtu", "claims")

    def __init__(self, name: str, mtu: int | None) -> None:
        self.name = name
        self.mtu = mtu
        self.claims: dict[str, tuple[str, int]] = {}


class FakeNet:
    def __init__(self, *, seed: int = 0, delay: float = 0.0005, strict: bool = True) -> None:
        self.now = 0.0
        self.delay = delay
        self.random = random.Random(seed)
        self.strict = strict  # raise if a stack counts a bad packet (a bug in the stack)
        self.stacks: dict[str, NetStack] = {}
        self._segments: dict[str, _Segment] = {}
        self._attached: dict[tuple[str, int], _Segment] = {}
        self._queue: list[tuple[float, int, str, int, Packet]] = []
        self._seq = 0
        self._impairments: dict[tuple[str | None, str | None], Impairment] = {}
        self._partitions: dict[int, set[tuple[str, str]]] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._next_partition = 1
        self.taps: list[Tap] = []
        self.counters: dict[str, int] = dict.fromkeys(
            ("sent", "delivered", "loss", "duplicated", "reordered", "partition", "mtu", "no_route"), 0)

    # --- topology ----------------------------------------------------------------------------

    def add_segment(self, name: str, mtu: int | None = None) -> None:
        """An L2 network; ``mtu`` drops bigger frames silently (a black hole: counted)."""
        if name in self._segments:
            raise ValueError(f"segment: {name} exists")
        self._segments[name] = _Segment(name, mtu)

    def attach(self, stack: NetStack, nic: int, segment: str = "lan") -> None:
        seg = self._segments.get(segment)
        if seg is None:
            self.add_segment(segment)
            seg = self._segments[segment]
        if self.stacks.setdefault(stack.name, stack) is not stack:
            raise ValueError(f"stack: another stack is named {stack.name}")
        self._attached[(stack.name, nic)] = seg
        for ip in stack.interfaces[nic].ips:
            seg.claims[ip] = (stack.name, nic)

    def claim(self, stack: NetStack, nic: int, ip: str) -> None:
        """A gratuitous ARP: ``ip`` on the NIC's segment now goes to this NIC."""
        self._attached[(stack.name, nic)].claims[ip] = (stack.name, nic)

    # --- impairments -------------------------------------------------------------------------

    def impair(self, src: str | None = None, dst: str | None = None, **params: Any) -> Impairment:
        """Impair packets from stack ``src`` to stack ``dst`` (None: any); one direction."""
        imp = Impairment(**params)
        self._impairments[(src, dst)] = imp
        return imp

    def clear_impairments(self) -> None:
        self._impairments.clear()

    def partition(self, a: Iterable[str], b: Iterable[str], *, one_way: bool = False) -> int:
        """Cut traffic from stacks ``a`` to stacks ``b`` (and back unless ``one_way``)."""
        a, b = list(a), list(b)
        pairs = {(x, y) for x in a for y in b}
        if not one_way:
            pairs |= {(y, x) for x in a for y in b}
        pid = self._next_partition
        self._next_partition += 1
        self._partitions[pid] = pairs
        self._rebuild_blocked()
        return pid

    def heal(self, pid: int | None = None) -> None:
        if pid is None:
            self._partitions.clear()
        else:
            self._partitions.pop(pid, None)
        self._rebuild_blocked()

    def _rebuild_blocked(self) -> None:
        self._blocked = set().union(*self._partitions.values()) if self._partitions else set()

    def _impairment(self, src: str, dst: str) -> Impairment | None:
        imps = self._impairments
        if not imps:
            return None
        return imps.get((src, dst)) or imps.get((src, None)) or imps.get((None, dst)) or imps.get((None, None))

    # --- running -----------------------------------------------------------------------------

    def run(self, until: Callable[[], object] | None = None, *, timeout: float, max_events: int = 2_000_000) -> bool:
        """Advance the clock event by event, at most ``timeout`` seconds; True as soon as
        ``until()`` holds (checked after every event), False at the end of the time."""
        end = self.now + timeout
        for _ in range(max_events):
            self._collect()
            if until is not None and until():
                return True
            t = self._next_event()
            if t is None or t > end:
                self.now = max(self.now, end)
                return bool(until()) if until is not None else False
            self.now = max(self.now, t)
            self._deliver_due()
            self._fire_timers()
        raise RuntimeError(f"fakenet: {max_events} events without reaching the end (a livelock?)")

    def run_for(self, seconds: float) -> None:
        self.run(None, timeout=seconds)

    def _next_event(self) -> float | None:
        t = self._queue[0][0] if self._queue else None
        for stack in self.stacks.values():
            d = stack.next_deadline()
            if d is not None and (t is None or d < t):
                t = d
        return t

    def _collect(self) -> None:
        for name, stack in self.stacks.items():
            out = stack.take_output()
            for nic, via, pkt in out:
                self._send(name, nic, via, pkt)

    def _send(self, src: str, nic: int, via: str, pkt: Packet) -> None:
        now = self.now
        counters = self.counters
        counters["sent"] += 1
        for tap in self.taps:
            tap(now, src, nic, via, pkt)
        seg = self._attached.get((src, nic))
        target = seg.claims.get(via or pkt[1]) if seg is not None else None
        if seg is None or target is None:
            counters["no_route"] += 1
            return
        dst = target[0]
        if (src, dst) in self._blocked:
            counters["partition"] += 1
            return
        if seg.mtu is not None and pkt[8] > seg.mtu:
            counters["mtu"] += 1
            return
        delay = self.delay
        imp = self._impairment(src, dst)
        if imp is not None:
            rnd = self.random.random
            if imp.loss and rnd() < imp.loss:
                counters["loss"] += 1
                return
            if imp.delay is not None:
                delay = imp.delay
            if imp.jitter:
                delay += rnd() * imp.jitter
            if imp.reorder and rnd() < imp.reorder:
                counters["reordered"] += 1
                delay += imp.reorder_delay
            if imp.duplicate and rnd() < imp.duplicate:
                counters["duplicated"] += 1
                self._push(now + delay + rnd() * imp.reorder_delay, target, pkt)
        self._push(now + delay, target, pkt)

    def _push(self, when: float, target: tuple[str, int], pkt: Packet) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, target[0], target[1], pkt))

    def _deliver_due(self) -> None:
        queue = self._queue
        now = self.now
        batches: dict[tuple[str, int], list[Packet]] = {}
        while queue and queue[0][0] <= now:
            _, _, name, nic, pkt = heapq.heappop(queue)
            batches.setdefault((name, nic), []).append(pkt)
        for (name, nic), pkts in batches.items():
            stack = self.stacks[name]
            bad = stack.drops["bad_packet"]
            stack.receive(nic, pkts, now)
            self.counters["delivered"] += len(pkts)
            if self.strict and stack.drops["bad_packet"] != bad:
                raise AssertionError(f"fakenet: {name} failed on a packet: {stack.last_error!r}") \
                    from stack.last_error

    def _fire_timers(self) -> None:
        now = self.now
        for stack in self.stacks.values():
            d = stack.next_deadline()
            if d is not None and d <= now:
                stack.handle_timers(now)


# --- recording protocols for tests ----------------------------------------------------------


class StreamRecorder:
    """A TCP protocol that records everything it is told."""

    def __init__(self, *, keep_open: bool = True) -> None:
        self.conn: Any = None
        self.data = bytearray()
        self.eof = False
        self.lost = False
        self.exc: BaseException | None = None
        self.made = False
        self.keep_open = keep_open  # eof_received's answer (True: we may still write)
        self.paused = 0
        self.resumed = 0

    def connection_made(self, conn: Any) -> None:
        self.conn = conn
        self.made = True

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return self.keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.exc = exc

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1


class DatagramRecorder:
    def __init__(self) -> None:
        self.endpoint: Any = None
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []
        self.errors: list[BaseException] = []

    def connection_made(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append((data, addr))

    def error_received(self, exc: BaseException) -> None:
        self.errors.append(exc)


class EchoRecorder:
    def __init__(self) -> None:
        self.replies: list[tuple[str, int, bytes, int, float]] = []
        self.errors: list[BaseException] = []

    def echo_reply(self, src: str, seq: int, payload: bytes, ttl: int, now: float) -> None:
        self.replies.append((src, seq, payload, ttl, now))

    def error_received(self, exc: BaseException) -> None:
        self.errors.append(exc)

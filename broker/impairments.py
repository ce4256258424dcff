"""Sans-IO link impairments, modelled on Linux netem (``tc qdisc ... netem``).

An :class:`Impairment` is the validated parameter set (what a user asked for); a
:class:`Link` is its running state on one direction of one link (the correlated-jitter
memory, the "busy until" time of the serializer and the packets in its queue).  A link never
reads a clock and never draws from the global random generator: ``now`` is passed in and the
``random.Random`` is injected, so tests are exact with a seed and a hand-driven clock.

Per packet, :meth:`Link.send` follows netem's enqueue order (``net/sched/sch_netem.c``):

1. ``loss`` %: the packet is dropped (``"loss"``);
2. the queue limit (netem ``limit``, here ``queue_packets``): a packet arriving while that many
   packets are still queued is tail-dropped (``"queue_full"``);
3. ``duplicate`` %: a second copy follows the same path;
4. ``reorder`` %: the packet is sent immediately, without the delay (netem: "a certain
   percentage of the packets get sent immediately, the rest are delayed"; ``gap`` 1);
5. otherwise it is delayed by ``delay_ms`` ± ``jitter_ms`` (uniform, as netem without a
   distribution table), the random term correlated with the previous one by ``correlation``
   (netem's ``get_crandom``: ``u = (1 - rho) * random + rho * last``);
6. ``rate_mbit``: the packet then waits for the link to be free and takes ``size * 8 / rate``
   to serialize (netem ``rate``: time_to_send = max(now + delay, last) + packet time).

Several scopes applying to one packet (the sender's NIC, its network, the pair, the receiving
network and NIC) are composed with :func:`send_through`: the packet crosses them one after
the other, so delays add, losses combine (1 - prod(1 - p)) and each link has its own queue.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

LOSS = "loss"
QUEUE_FULL = "queue_full"

# netem's default "limit" (packets queued in the qdisc) — tc-netem(8).
DEFAULT_QUEUE_PACKETS = 1000


class ImpairmentError(ValueError):
    """Impossible impairment parameters; the message is one line naming the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Impairment:
    """One impairment's parameters (validated on construction)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    correlation: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    rate_mbit: float | None = None
    queue_packets: int = DEFAULT_QUEUE_PACKETS

    def __post_init__(self) -> None:
        _number("delay_ms", self.delay_ms, 0.0, 3_600_000.0)
        _number("jitter_ms", self.jitter_ms, 0.0, 3_600_000.0)
        _number("correlation", self.correlation, 0.0, 1.0)
        for name in ("loss", "duplicate", "reorder"):
            _number(name, getattr(self, name), 0.0, 100.0)
        if self.rate_mbit is not None:
            _number("rate_mbit", self.rate_mbit, 0.0, 1e9)
            if self.rate_mbit <= 0:
                raise ImpairmentError(f"rate_mbit: must be > 0, got {self.rate_mbit!r}")
        if type(self.queue_packets) is not int or not 1 <= self.queue_packets <= 10_000_000:
            raise ImpairmentError(f"queue_packets: expected an integer >= 1, got {self.queue_packets!r}")

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Impairment:
        """Build from management-plane arguments; unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        for key in args:
            if key not in known:
                raise ImpairmentError(f"{key}: unknown impairment parameter (known: {', '.join(sorted(known))})")
        return cls(**dict(args))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(name: str, value: Any, low: float, high: float) -> None:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ImpairmentError(f"{name}: expected a finite number, got {value!r}")
    if not low <= value <= high:
        raise ImpairmentError(f"{name}: must be within {low:g}..{high:g}, got {value!r}")


class Link:
    """One direction of one impaired link: netem's state for that qdisc."""

    __slots__ = ("imp", "rng", "_last", "_busy_until", "_queue", "_delay", "_jitter",
                 "_loss", "_dup", "_reorder", "_bps", "_limit", "_rho")

    def __init__(self, imp: Impairment, rng: random.Random) -> None:
        self.imp = imp
        self.rng = rng
        self._last = rng.random()  # correlated-jitter memory (netem seeds it randomly too)
        self._busy_until = 0.0
        self._queue: list[float] = []  # heap of the queued packets' departure times
        self._delay = imp.delay_ms / 1000.0
        self._jitter = imp.jitter_ms / 1000.0
        self._rho = imp.correlation
        self._loss = imp.loss / 100.0
        self._dup = imp.duplicate / 100.0
        self._reorder = imp.reorder / 100.0
        self._bps = imp.rate_mbit * 1e6 if imp.rate_mbit is not None else 0.0
        self._limit = imp.queue_packets

    @property
    def queued(self) -> int:
        return len(self._queue)

    def send(self, size: int, now: float) -> tuple[float, ...] | str:
        """Offer a packet of ``size`` bytes at ``now``: its delivery times or a drop reason."""
        rand = self.rng.random
        if self._loss and rand() < self._loss:
            return LOSS
        queue = self._queue
        while queue and queue[0] <= now:
            heapq.heappop(queue)
        if len(queue) >= self._limit:
            return QUEUE_FULL
        if self._dup and rand() < self._dup:
            return (self._one(size, now), self._one(size, now))
        return (self._one(size, now),)

    def _one(self, size: int, now: float) -> float:
        if self._reorder and self.rng.random() < self._reorder:
            return now  # netem: reordered packets go to the head of the queue, undelayed
        when = now + self._delayed()
        if self._bps:
            when = max(when, self._busy_until) + size * 8 / self._bps
            self._busy_until = when
        heapq.heappush(self._queue, when)
        return when

    def _delayed(self) -> float:
        if not self._jitter:
            return self._delay
        value = self.rng.random()
        if self._rho:
            value = (1.0 - self._rho) * value + self._rho * self._last
            self._last = value
        return max(0.0, self._delay + (2.0 * value - 1.0) * self._jitter)


def send_through(links: Sequence[Link], size: int, now: float) -> tuple[float, ...] | str:
    """Send a packet across several links in turn; its delivery times or the drop reason.

    A duplicate is its own packet from there on; the packet counts as dropped only when no
    copy survives (the reason is the last copy's).
    """
    times: tuple[float, ...] = (now,)
    for link in links:
        out: list[float] = []
        reason = ""
        for t in times:
            got = link.send(size, t)
            if isinstance(got, str):
                reason = got
            else:
                out.extend(got)
        if not out:
            return reason
        times = tuple(out)
    return times

"""One timer heap for the whole stack, with lazy re-arming.

A TCP connection restarts its retransmission timer on nearly every ACK; pushing a heap entry
each time would grow the heap per segment.  Instead an owner keeps its real deadlines itself
and the heap holds at most one live entry per owner, at or before the owner's earliest
deadline.  When an entry fires the owner handles what is due and re-arms for what is left, so
heap work is per timer expiry, not per segment.  (A fired entry whose deadline moved later
costs one spurious wake-up: ``next_deadline()`` may be early, never late.)
"""

from __future__ import annotations

import heapq
from typing import Protocol


class TimerOwner(Protocol):
    _timer_at: float | None   # when the owner's live heap entry fires (None: no entry)
    _timer_seq: int           # which heap entry is live

    def on_timer(self, now: float) -> None: ...


class TimerQueue:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerOwner]] = []
        self._seq = 0

    def arm(self, owner: TimerOwner, when: float | None) -> None:
        """Make sure ``owner`` is woken at or before ``when``."""
        if when is None:
            return
        at = owner._timer_at
        if at is not None and at <= when:
            return
        self._seq += 1
        owner._timer_at = when
        owner._timer_seq = self._seq
        heapq.heappush(self._heap, (when, self._seq, owner))

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2]._timer_seq != heap[0][1]:
            heapq.heappop(heap)  # superseded by an earlier entry of the same owner
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[TimerOwner]:
        """Owners whose live entry is due; their entries are consumed."""
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            _, seq, owner = heapq.heappop(heap)
            if owner._timer_seq == seq:
                owner._timer_at = None
                owner._timer_seq = 0
                due.append(owner)
        return due

    def __len__(self) -> int:
        return len(self._heap)

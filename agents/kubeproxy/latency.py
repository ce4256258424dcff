"""Network programming latency: from the API server's commit of a change to rules in force.

Kubernetes' SLI (sig-scalability, "Network programming latency"; kube-proxy's
``kubeproxy_network_programming_duration_seconds``) measures, per change and node, the time
from the change of a Service or its endpoints to the moment that node's proxy programs it.
Here ``committed_at`` is the API server's commit time carried in the watch event
(``committedAt``, docs/contracts-pod-network.md) and ``applied_at`` the ``now`` the proxier
was given when its rules including the change were in force; both are
``time.perf_counter()`` values of one machine, in seconds.

Samples are kept in a bounded window (the newest ``window``) for exact percentiles, and in a
cumulative histogram with kube-proxy's buckets (seconds: 0.25, 0.5, 1..59, 60..115 by 5,
120..300 by 30, then +Inf) so long runs are summarised without growing.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

__all__ = ["BUCKETS_S", "ProgrammingLatency", "percentile"]

# kube-proxy's metric buckets (pkg/proxy/metrics): MergeBuckets(Linear(0.25, 0.25, 2),
# Linear(1, 1, 59), Linear(60, 5, 12), Linear(120, 30, 7)).
BUCKETS_S: tuple[float, ...] = (
    (0.25, 0.5)
    + tuple(float(s) for s in range(1, 60))
    + tuple(float(s) for s in range(60, 120, 5))
    + tuple(float(s) for s in range(120, 301, 30))
)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class ProgrammingLatency:
    """Per-change latency samples of one node's proxier."""

    def __init__(self, window: int = 10_000) -> None:
        if window < 1:
            raise ValueError(f"window: expected >= 1, got {window}")
        self._samples: deque[float] = deque(maxlen=window)  # milliseconds
        self.buckets: list[int] = [0] * (len(BUCKETS_S) + 1)  # last = +Inf
        self.count = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0
        self.negative = 0  # clock skew between processes: recorded as 0, counted

    def record(self, committed_at: float, applied_at: float) -> float:
        """One change in force; returns its latency in milliseconds."""
        ms = (applied_at - committed_at) * 1000.0
        if ms < 0:
            self.negative += 1
            ms = 0.0
        self._samples.append(ms)
        self.buckets[bisect.bisect_left(BUCKETS_S, ms / 1000.0)] += 1
        self.count += 1
        self.sum_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms
        return ms

    def samples(self) -> list[float]:
        """The window's samples in milliseconds, oldest first."""
        return list(self._samples)

    def stats(self) -> dict[str, Any]:
        """``{count, p50_ms, p99_ms, max_ms, mean_ms, window}``; percentiles over the window
        (NaN before the first sample)."""
        ordered = sorted(self._samples)
        return {
            "count": self.count,
            "p50_ms": percentile(ordered, 50),
            "p99_ms": percentile(ordered, 99),
            "max_ms": self.max_ms if self.count else math.nan,
            "mean_ms": self.sum_ms / self.count if self.count else math.nan,
            "window": len(ordered),
            "negative": self.negative,
        }

    def histogram(self) -> list[tuple[float, int]]:
        """Cumulative ``(upper bound in seconds, count)`` pairs, Prometheus style."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*BUCKETS_S, math.inf), self.buckets, strict=True):
            total += n
            out.append((bound, total))
        return out

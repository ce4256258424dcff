"""Network programming latency: per change, from commit to rules in force."""

from __future__ import annotations

import math

import pytest
from kubeproxy_helpers import endpoint_slice, ep, proxier, service

from agents.kubeproxy import ProgrammingLatency
from agents.kubeproxy.latency import BUCKETS_S, percentile


def test_percentiles_over_known_samples() -> None:
    lat = ProgrammingLatency()
    for i in range(1, 101):  # 1..100 ms
        assert lat.record(10.0, 10.0 + i / 1000.0) == pytest.approx(i)
    s = lat.stats()
    assert s["count"] == 100
    assert s["p50_ms"] == pytest.approx(50.0)
    assert s["p99_ms"] == pytest.approx(99.0)
    assert s["max_ms"] == pytest.approx(100.0)
    assert s["mean_ms"] == pytest.approx(50.5)


def test_empty_stats_are_nan() -> None:
    s = ProgrammingLatency().stats()
    assert s["count"] == 0 and math.isnan(s["p50_ms"]) and math.isnan(s["p99_ms"])


def test_window_is_bounded_but_count_and_histogram_keep_everything() -> None:
    lat = ProgrammingLatency(window=10)
    for i in range(100):
        lat.record(0.0, 2.0 if i < 90 else 0.001)  # 90 slow, then 10 fast
    s = lat.stats()
    assert s["count"] == 100 and s["window"] == 10
    assert s["p99_ms"] == pytest.approx(1.0)           # only the newest 10 are in the window
    assert s["max_ms"] == pytest.approx(2000.0)
    hist = dict(lat.histogram())
    assert hist[0.25] == 10 and hist[2.0] == 100 and hist[math.inf] == 100


def test_negative_latency_is_clamped_and_counted() -> None:
    lat = ProgrammingLatency()
    assert lat.record(5.0, 4.0) == 0.0
    assert lat.stats()["negative"] == 1


def test_buckets_are_kube_proxys() -> None:
    assert BUCKETS_S[:4] == (0.25, 0.5, 1.0, 2.0) and BUCKETS_S[-1] == 300.0
    assert 59.0 in BUCKETS_S and 65.0 in BUCKETS_S and 150.0 in BUCKETS_S
    assert percentile([1.0, 2.0, 3.0], 100) == 3.0 and percentile([7.0], 1) == 7.0


def test_proxier_records_every_change_with_a_commit_time() -> None:
    kp = proxier()
    kp.update_service(service(), 100.0, 100.004)
    kp.update_slice(endpoint_slice("web", [ep("10.244.1.5")]), 100.010, 100.030)
    kp.delete_slice(endpoint_slice("web"), 101.0, 101.5)
    kp.delete_service(service(), 102.0, 102.001)
    kp.update_service(service("relisted"), None, 103.0)  # no commit time (initial list): not a sample
    s = kp.latency.stats()
    assert s["count"] == 4
    assert sorted(kp.latency.samples()) == pytest.approx([1.0, 4.0, 20.0, 500.0])
    assert s["p50_ms"] == pytest.approx(4.0) and s["p99_ms"] == pytest.approx(500.0)
    assert kp.counters["changes"] == 5


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        ProgrammingLatency(0)

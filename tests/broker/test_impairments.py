"""The netem-like impairment model, with a seeded generator and a hand-driven clock."""

from __future__ import annotations

import random

import pytest

from broker.impairments import Impairment, ImpairmentError, Link, send_through


def link(seed: int = 1, **params: object) -> Link:
    return Link(Impairment.from_args(params), random.Random(seed))


@pytest.mark.parametrize(("params", "field"), [
    ({"delay_ms": -1}, "delay_ms"),
    ({"jitter_ms": -0.5}, "jitter_ms"),
    ({"correlation": 1.5}, "correlation"),
    ({"correlation": -0.1}, "correlation"),
    ({"loss": 101}, "loss"),
    ({"loss": -1}, "loss"),
    ({"duplicate": 200}, "duplicate"),
    ({"reorder": 100.5}, "reorder"),
    ({"rate_mbit": 0}, "rate_mbit"),
    ({"rate_mbit": -3}, "rate_mbit"),
    ({"queue_packets": 0}, "queue_packets"),
    ({"queue_packets": 2.5}, "queue_packets"),
    ({"delay_ms": "10"}, "delay_ms"),
    ({"delay_ms": float("nan")}, "delay_ms"),
    ({"loss": True}, "loss"),
    ({"latency": 5}, "latency"),
])
def test_impossible_values_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(ImpairmentError) as info:
        Impairment.from_args(params)
    text = str(info.value)
    assert text.startswith(f"{field}:")
    assert "\n" not in text


def test_constant_delay() -> None:
    lk = link(delay_ms=50)
    assert lk.send(100, 10.0) == (10.05,)
    assert lk.send(100, 11.0) == (11.05,)


def test_jitter_stays_within_bounds_and_varies() -> None:
    lk = link(delay_ms=50, jitter_ms=10, queue_packets=100_000)
    times = [lk.send(100, 0.0)[0] for _ in range(2000)]  # type: ignore[index]
    assert min(times) >= 0.040 and max(times) <= 0.060
    assert max(times) - min(times) > 0.018  # it really spreads over the whole range


def test_correlation_makes_successive_jitters_close() -> None:
    def mean_step(rho: float) -> float:
        lk = link(seed=7, delay_ms=50, jitter_ms=10, correlation=rho, queue_packets=100_000)
        times = [lk.send(100, 0.0)[0] for _ in range(2000)]  # type: ignore[index]
        return sum(abs(a - b) for a, b in zip(times, times[1:], strict=False)) / (len(times) - 1)

    assert mean_step(0.9) < mean_step(0.0) / 3


def test_jitter_never_makes_a_negative_delay() -> None:
    lk = link(delay_ms=1, jitter_ms=20, queue_packets=100_000)
    assert all(lk.send(100, 5.0)[0] >= 5.0 for _ in range(500))  # type: ignore[index]


@pytest.mark.parametrize("loss", [0, 100])
def test_loss_extremes(loss: int) -> None:
    lk = link(loss=loss)
    results = [lk.send(100, 0.0) for _ in range(200)]
    assert sum(r == "loss" for r in results) == 200 * loss // 100


def test_loss_rate_within_binomial_bounds() -> None:
    lk = link(seed=3, loss=30)
    lost = sum(lk.send(100, 0.0) == "loss" for _ in range(4000))
    # 4000 * 0.3 = 1200, sigma ~29: 5 sigma either side
    assert 1055 < lost < 1345


def test_duplicate_gives_two_deliveries() -> None:
    lk = link(delay_ms=10, duplicate=100)
    assert lk.send(100, 1.0) == (1.01, 1.01)


def test_reorder_sends_immediately() -> None:
    lk = link(delay_ms=10, reorder=100)
    assert lk.send(100, 2.0) == (2.0,)
    half = link(seed=5, delay_ms=10, reorder=50)
    times = [half.send(100, 0.0)[0] for _ in range(1000)]  # type: ignore[index]
    assert 400 < times.count(0.0) < 600
    assert times.count(0.0) + times.count(0.01) == 1000


def test_rate_serializes_back_to_back() -> None:
    lk = link(rate_mbit=1)  # 1250 bytes take 10 ms at 1 Mbit/s
    assert lk.send(1250, 0.0) == pytest.approx((0.01,))
    assert lk.send(1250, 0.0) == pytest.approx((0.02,))
    assert lk.send(1250, 0.5) == pytest.approx((0.51,))  # idle link: no waiting


def test_rate_adds_to_delay() -> None:
    lk = link(delay_ms=20, rate_mbit=1)
    assert lk.send(1250, 0.0) == pytest.approx((0.03,))
    assert lk.send(1250, 0.0) == pytest.approx((0.04,))


def test_bounded_queue_tail_drops_then_drains() -> None:
    lk = link(rate_mbit=1, queue_packets=3)
    got = [lk.send(1250, 0.0) for _ in range(5)]
    assert got[3:] == ["queue_full", "queue_full"]
    assert lk.queued == 3
    assert lk.send(1250, 0.015) != "queue_full"  # the first left at 10 ms
    assert lk.send(1250, 0.015) == "queue_full"


def test_chain_adds_delays_and_combines_losses() -> None:
    rng = random.Random(11)
    a = Link(Impairment(delay_ms=10), rng)
    b = Link(Impairment(delay_ms=5, rate_mbit=1), rng)
    assert send_through((a, b), 1250, 0.0) == pytest.approx((0.025,))
    l1 = Link(Impairment(loss=50, queue_packets=100_000), rng)
    l2 = Link(Impairment(loss=50, queue_packets=100_000), rng)
    delivered = sum(not isinstance(send_through((l1, l2), 100, 0.0), str) for _ in range(4000))
    assert 880 < delivered < 1120  # 25 %: 1000 +- 5 sigma (~27)


def test_chain_duplicate_survives_when_one_copy_is_lost() -> None:
    rng = random.Random(2)
    dup = Link(Impairment(duplicate=100), rng)
    results = [send_through((dup, Link(Impairment(loss=50), rng)), 100, 0.0) for _ in range(400)]
    lost = sum(r == "loss" for r in results)
    assert 50 < lost < 150  # both copies lost: 25 %
    assert any(isinstance(r, tuple) and len(r) == 2 for r in results)


def test_empty_chain_delivers_now() -> None:
    assert send_through((), 100, 3.0) == (3.0,)


def test_seeded_links_are_reproducible() -> None:
    def run() -> list[object]:
        lk = link(seed=42, delay_ms=5, jitter_ms=4, loss=10, duplicate=10, reorder=10)
        return [lk.send(500, i * 0.001) for i in range(300)]

    assert run() == run()

"""The probe worker's state machine on a manual clock (pkg/kubelet/prober/worker.go)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.node.probes import (
    Probe,
    ProbeAction,
    ProbeError,
    ProbeSpec,
    failure_event,
    http_success,
    probes_of,
)
from agents.timers import Timers

CONTAINER: dict[str, Any] = {"name": "web", "ports": [{"containerPort": 8080, "name": "http"},
                                                      {"containerPort": 8081, "protocol": "UDP", "name": "udp"}]}


def spec(kind: str = "readiness", **probe: Any) -> ProbeSpec:
    if not any(k in probe for k in ("httpGet", "tcpSocket", "exec", "grpc")):
        probe["httpGet"] = {"path": "/healthz", "port": 8080}
    return ProbeSpec.from_k8s(probe, kind, CONTAINER)


def ticks(probe: Probe, until: float, outcome: Any) -> list[tuple[float, bool]]:
    """Run the worker loop on a manual clock: every due attempt answered by ``outcome(t)``."""
    seen: list[tuple[float, bool]] = []
    while True:
        t = probe.next_deadline()
        if t is None or t > until:
            return seen
        assert probe.due(t) and not probe.due(t - 1e-6)
        probe.result(outcome(t), t)
        seen.append((t, probe.ready))


def test_defaults() -> None:
    s = spec()
    assert (s.initial_delay, s.period, s.timeout, s.success_threshold, s.failure_threshold) == (0, 10, 1, 1, 3)
    assert s.action == ProbeAction(kind="httpGet", port=8080, path="/healthz")
    assert spec(httpGet={"port": 80}).action.path == "/"
    assert spec(tcpSocket={"port": "http"}).action == ProbeAction(kind="tcpSocket", port=8080)
    assert spec(exec={"command": ["cat", "/tmp/healthy"]}).action.kind == "exec"


@pytest.mark.parametrize("probe, kind, message", [
    ({"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}, "readiness", "exactly one handler"),
    ({"exec": None}, "readiness", "exactly one handler"),
    ({"httpGet": {"port": 80}, "successThreshold": 2}, "liveness", "successThreshold: must be 1"),
    ({"httpGet": {"port": 80}, "periodSeconds": -1}, "readiness", "periodSeconds"),
    ({"httpGet": {"port": 0}}, "readiness", "port: Invalid value"),
    ({"httpGet": {"port": 70000}}, "readiness", "port: Invalid value"),
    ({"httpGet": {}}, "readiness", "port: Required value"),
    ({"httpGet": {"port": 80, "scheme": "FTP"}}, "readiness", "Unsupported value"),
    ({"httpGet": {"port": 80}}, "sideways", "kind"),
])
def test_invalid_probes(probe: dict[str, Any], kind: str, message: str) -> None:
    with pytest.raises(ProbeError, match=message):
        ProbeSpec.from_k8s(probe, kind, CONTAINER)


def test_named_port_missing_is_a_prober_error_that_keeps_the_state() -> None:
    s = spec(httpGet={"port": "metrics"})
    assert s.action.port == 0 and "couldn't find port: metrics in web" in s.action.error
    p = Probe(s)
    p.start(0.0)
    assert p.result(None, 0.0) is False and not p.ready and p.attempts == 0
    assert p.next_deadline() == 10.0  # the worker keeps ticking


def test_readiness_not_ready_until_first_success_then_failure_threshold() -> None:
    p = Probe(spec(periodSeconds=5))
    assert not p.ready and p.next_deadline() is None and not p.due(100.0)  # not started
    p.start(100.0)
    assert p.due(100.0)  # the worker probes at once
    assert p.result(True, 100.0) is True and p.ready
    fails = {115.0, 120.0, 125.0}
    seen = ticks(p, 140.0, lambda t: t not in fails)
    assert seen == [(105.0, True), (110.0, True), (115.0, True), (120.0, True), (125.0, False),
                    (130.0, True), (135.0, True), (140.0, True)]
    assert p.attempts == 9 and p.failures == 3


def test_failures_must_be_consecutive() -> None:
    p = Probe(spec(periodSeconds=1, failureThreshold=2))
    p.start(0.0)
    outcomes = iter([True, False, True, False, True, False, False, True])
    seen = ticks(p, 7.0, lambda t: next(outcomes))
    assert [r for _, r in seen] == [True, True, True, True, True, True, False, True]


def test_success_threshold() -> None:
    p = Probe(spec(periodSeconds=1, successThreshold=3))
    p.start(0.0)
    outcomes = iter([True, True, False, True, True, True, False, False, False])
    seen = ticks(p, 8.0, lambda t: next(outcomes))
    assert [r for _, r in seen] == [False, False, False, False, False, True, True, True, False]


@pytest.mark.parametrize("delay, period, first", [(0, 10, 0.0), (5, 10, 10.0), (10, 10, 10.0), (15, 10, 20.0),
                                                  (3, 1, 3.0)])
def test_initial_delay_skips_ticks(delay: int, period: int, first: float) -> None:
    p = Probe(spec(initialDelaySeconds=delay, periodSeconds=period))
    p.start(0.0)
    assert p.next_deadline() == first
    assert not p.due(first - 0.001) and p.due(first)


def test_time_scale_from_timers_or_factor() -> None:
    for scale in (Timers(0.1), 0.1):
        p = Probe(spec(initialDelaySeconds=5, periodSeconds=10, timeoutSeconds=2), scale)
        assert (p.period, p.timeout, p.initial_delay) == pytest.approx((1.0, 0.2, 0.5))
        p.start(0.0)
        assert p.next_deadline() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Probe(spec(), 0)


def test_liveness_starts_healthy_and_holds_after_failing() -> None:
    p = Probe(spec("liveness", periodSeconds=1))
    p.start(0.0)
    assert p.ready and not p.failed
    seen = ticks(p, 10.0, lambda t: t < 3)
    assert [t for t, _ in seen] == [0, 1, 2, 3, 4, 5]  # then on hold: no more attempts
    assert p.failed and p.on_hold and p.next_deadline() is None and not p.due(6.0)
    p.start(20.0)  # the container restarted
    assert p.ready and not p.failed and p.due(20.0)


def test_startup_probe_starts_unknown() -> None:
    p = Probe(spec("startup", periodSeconds=1, failureThreshold=30))
    p.start(0.0)
    assert not p.ready and p.state == "unknown"
    p.result(True, 0.0)
    assert p.ready


def test_slow_attempt_runs_the_next_at_once_then_back_on_the_grid() -> None:
    p = Probe(spec(periodSeconds=10))
    p.start(0.0)
    p.result(True, 25.0)          # the attempt due at 0 ended at 25: ticks 10 and 20 passed
    assert p.next_deadline() == 25.0
    p.result(True, 25.5)
    assert p.next_deadline() == 30.0


def test_probes_of_container_and_events() -> None:
    c = {**CONTAINER, "readinessProbe": {"httpGet": {"port": "http", "path": "healthz"}},
         "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 20}}
    found = probes_of(c)
    assert sorted(found) == ["liveness", "readiness"]
    assert found["readiness"].action.url("10.244.1.5") == "http://10.244.1.5:8080/healthz"
    assert found["liveness"].period == 20
    assert failure_event("readiness", "HTTP probe failed with statuscode: 503") == (
        "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503")
    assert [http_success(s) for s in (199, 200, 302, 399, 400, 500)] == [False, True, True, True, False, False]


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(1, 4), st.integers(1, 4))
def test_readiness_matches_a_consecutive_run_model(outcomes: list[bool], success: int, failure: int) -> None:
    """Ready flips to a result only after ``threshold`` of it in a row; otherwise unchanged."""
    p = Probe(spec(periodSeconds=1, successThreshold=success, failureThreshold=failure))
    p.start(0.0)
    ready, run, last = False, 0, None
    for i, ok in enumerate(outcomes):
        run = run + 1 if ok == last else 1
        last = ok
        if run >= (success if ok else failure):
            ready = ok
        p.result(ok, float(i))
        assert p.ready == ready
        assert p.next_deadline() == float(i + 1)

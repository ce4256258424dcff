"""Readiness, liveness and startup probes as the kubelet's probe worker keeps them (sans-IO).

After upstream's ``pkg/kubelet/prober/worker.go``:

* defaults (``SetDefaults_Probe``): ``periodSeconds`` 10, ``timeoutSeconds`` 1,
  ``successThreshold`` 1, ``failureThreshold`` 3, ``initialDelaySeconds`` 0; an httpGet's
  ``path`` defaults to ``/`` and its ``scheme`` to HTTP; ``successThreshold`` must be 1 for
  liveness and startup probes;
* the worker ticks every ``periodSeconds`` from the container's start (the first tick at the
  start itself) and skips ticks until ``initialDelaySeconds`` have passed;
* the initial result is *failure* for readiness (a pod is not ready until its first success)
  and *success* for liveness; ``startup`` starts unknown (not started);
* a result must repeat ``successThreshold`` / ``failureThreshold`` times in a row before the
  state flips (``resultRun``); a failed liveness or startup probe puts the worker on hold
  until the container restarts (:meth:`Probe.start` again);
* an attempt longer than ``timeoutSeconds`` is a failure; success of httpGet is a status
  in 200..399, of tcpSocket an accepted connection.  ``exec`` cannot run in an emulated
  container and always succeeds; ``grpc`` is checked like tcpSocket (documented
  emulations).  A named port that the container does not declare is a prober *error*: the
  kubelet throws the result away, so the state stays as it was (:attr:`ProbeSpec.error`).

Every duration is scaled by the scenario's ``time_scale`` (a :class:`~agents.timers.Timers`
or the bare factor).  Time is passed in.  The runtime loop (like the kubelet's worker
goroutine, one attempt at a time)::

    probe.start(now)
    while running:
        if probe.due(now):
            ok = await attempt(probe.action, timeout=probe.timeout)   # False on timeout/error
            probe.result(ok, clock())
        await sleep_until(probe.next_deadline())
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.timers import Timers

__all__ = [
    "KINDS", "PROBE_USER_AGENT", "Probe", "ProbeAction", "ProbeError", "ProbeSpec", "failure_event",
    "http_success", "probes_of",
]

KINDS = ("readiness", "liveness", "startup")
ACTIONS = ("httpGet", "tcpSocket", "exec", "grpc")
PROBE_USER_AGENT = "kube-probe/1.26"  # kubelet v1.26 (agents/node/kubelet.py)

SUCCESS, FAILURE, UNKNOWN = "success", "failure", "unknown"
_INITIAL = {"readiness": FAILURE, "liveness": SUCCESS, "startup": UNKNOWN}


class ProbeError(ValueError):
    """A probe the API server would reject (the message names the field)."""


def http_success(status: int) -> bool:
    """``pkg/probe/http``: 200 <= status < 400 is success."""
    return 200 <= status < 400


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeAction:
    """What one attempt does.  ``kind`` httpGet | tcpSocket | exec | grpc; ``host`` empty
    means the pod's IP; ``port`` is resolved (0 with ``error`` set when it cannot be)."""

    kind: str
    port: int = 0
    host: str = ""
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    error: str = ""

    def url(self, pod_ip: str) -> str:
        host = self.host or pod_ip
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme.lower()}://{host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSpec:
    """A container's probe with defaults applied; durations in (unscaled) seconds."""

    kind: str
    action: ProbeAction
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_k8s(cls, probe: Mapping[str, Any], kind: str, container: Mapping[str, Any]) -> ProbeSpec:
        if kind not in KINDS:
            raise ProbeError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        field = f"{kind}Probe"
        handlers = [a for a in ACTIONS if probe.get(a) is not None]
        if len(handlers) != 1:
            raise ProbeError(f"{field}: must specify exactly one handler type (got {len(handlers)})")

        def number(name: str, default: int, minimum: int) -> int:
            value = probe.get(name)
            if value is None or value == 0:
                return default
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ProbeError(f"{field}.{name}: must be an integer >= {minimum}, got {value!r}")
            return value

        success = number("successThreshold", 1, 1)
        if kind != "readiness" and success != 1:
            raise ProbeError(f"{field}.successThreshold: must be 1")
        return cls(kind=kind, action=_action(handlers[0], probe[handlers[0]], container, field),
                   initial_delay=float(number("initialDelaySeconds", 0, 0)), period=float(number("periodSeconds", 10, 1)),
                   timeout=float(number("timeoutSeconds", 1, 1)), success_threshold=success,
                   failure_threshold=number("failureThreshold", 3, 1))


def _action(kind: str, raw: Mapping[str, Any], container: Mapping[str, Any], field: str) -> ProbeAction:
    if kind == "exec":
        return ProbeAction(kind="exec")
    port, error = _resolve_port(raw.get("port"), container, f"{field}.{kind}.port")
    if kind != "httpGet":
        return ProbeAction(kind=kind, port=port, host=str(raw.get("host") or ""), error=error)
    scheme = str(raw.get("scheme") or "HTTP").upper()
    if scheme not in ("HTTP", "HTTPS"):
        raise ProbeError(f'{field}.httpGet.scheme: Unsupported value: "{scheme}": supported values: "HTTP", "HTTPS"')
    headers = tuple((str(h["name"]), str(h.get("value", ""))) for h in raw.get("httpHeaders") or ())
    path = str(raw.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    return ProbeAction(kind="httpGet", port=port, host=str(raw.get("host") or ""), path=path, scheme=scheme,
                       headers=headers, error=error)


def _resolve_port(port: Any, container: Mapping[str, Any], field: str) -> tuple[int, str]:
    """A number, or a name looked up in the container's ports (``findPortByName``)."""
    if isinstance(port, int) and not isinstance(port, bool):
        if not 1 <= port <= 65535:
            raise ProbeError(f"{field}: Invalid value: {port}: must be between 1 and 65535, inclusive")
        return port, ""
    if isinstance(port, str) and port:
        if port.isdigit():
            return _resolve_port(int(port), container, field)
        for p in container.get("ports") or ():
            if p.get("name") == port:
                return int(p["containerPort"]), ""
        return 0, f"couldn't find port: {port} in {container.get('name', '')}"
    raise ProbeError(f"{field}: Required value")


def probes_of(container: Mapping[str, Any]) -> dict[str, ProbeSpec]:
    """The probes a container declares, by kind."""
    return {kind: ProbeSpec.from_k8s(container[f"{kind}Probe"], kind, container)
            for kind in KINDS if container.get(f"{kind}Probe")}


def failure_event(kind: str, detail: str) -> tuple[str, str]:
    """The kubelet's Warning Event for a failed attempt: reason ``Unhealthy``."""
    return "Unhealthy", f"{kind.capitalize()} probe failed: {detail}"


class Probe:
    """One probe worker's state.  ``ready`` is the state the kubelet reports (for readiness:
    the container's ``ready``; for liveness: healthy; for startup: started)."""

    __slots__ = ("spec", "period", "timeout", "initial_delay", "state", "on_hold", "attempts", "failures",
                 "_last", "_run", "_grid", "_next")

    def __init__(self, spec: ProbeSpec, scale: Timers | float = 1.0) -> None:
        factor = scale.time_scale if isinstance(scale, Timers) else float(scale)
        if not factor > 0:
            raise ValueError(f"time_scale: must be > 0, got {factor!r}")
        self.spec = spec
        self.period = spec.period * factor
        self.timeout = spec.timeout * factor
        self.initial_delay = spec.initial_delay * factor
        self.state = _INITIAL[spec.kind]
        self.on_hold = False
        self.attempts = 0
        self.failures = 0
        self._last = UNKNOWN
        self._run = 0
        self._grid = math.inf  # the ticker's latest tick (ticks at start + k * period)
        self._next = math.inf

    @property
    def action(self) -> ProbeAction:
        return self.spec.action

    @property
    def ready(self) -> bool:
        return self.state == SUCCESS

    @property
    def failed(self) -> bool:
        """A liveness/startup probe crossed its failureThreshold: restart the container."""
        return self.spec.kind != "readiness" and self.state == FAILURE

    def start(self, now: float) -> None:
        """The container (re)started: state back to the initial one, ticks from ``now``."""
        self.state = _INITIAL[self.spec.kind]
        self.on_hold = False
        self._last, self._run = UNKNOWN, 0
        # the first tick at or after initialDelaySeconds (ticks at start + k * period)
        k = math.ceil(self.initial_delay / self.period - 1e-9) if self.initial_delay > 0 else 0
        self._grid = self._next = now + k * self.period

    def stop(self) -> None:
        self._grid = self._next = math.inf

    def due(self, now: float) -> bool:
        """An attempt should run now (pure: the owner then reports it with :meth:`result`)."""
        return not self.on_hold and now >= self._next

    def next_deadline(self) -> float | None:
        """When the next attempt is due (None: stopped or on hold)."""
        if self.on_hold or self._next == math.inf:
            return None
        return self._next

    def result(self, ok: bool | None, now: float) -> bool:
        """Report the attempt that was due; ``None`` is a prober error (thrown away).  Returns
        True when :attr:`state` changed."""
        self._advance(now)
        if ok is None or self.on_hold:
            return False
        self.attempts += 1
        outcome = SUCCESS if ok else FAILURE
        if not ok:
            self.failures += 1
        if outcome == self._last:
            self._run += 1
        else:
            self._last, self._run = outcome, 1
        threshold = self.spec.success_threshold if ok else self.spec.failure_threshold
        if self._run < threshold:
            return False
        changed = outcome != self.state
        self.state = outcome
        if not ok and self.spec.kind != "readiness":
            self.on_hold, self._run = True, 0  # until the container restarts
        return changed

    def _advance(self, now: float) -> None:
        """The next tick.  An attempt that outlasted a period is followed by another at once
        (Go's ticker channel keeps one missed tick, drops the rest), then the grid resumes."""
        if self._next == math.inf:
            return
        following = self._grid + self.period
        if following <= now:
            self._grid = following + math.floor((now - following) / self.period) * self.period
            self._next = now
        else:
            self._grid = self._next = following

"""Every Kubernetes, controller, HAProxy, keepalived and HA timer, scaled by ``time_scale``.

A scenario's ``time_scale`` multiplies these timers so an experiment that takes minutes on a
real cluster (a 40 s grace period, a 300 s eviction toleration) can run in seconds.  It never
touches link delays (the broker's impairments) or the TCP-like transport's timers: those are
physics, not configuration.  Code reads timers only from here, already scaled, in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# Unscaled defaults, in seconds, with where they come from (see ../shared/FACTS.md).
DEFAULTS: dict[str, float] = {
    # kube-controller-manager node lifecycle controller
    "node_monitor_period": 5.0,          # --node-monitor-period
    "node_monitor_grace_period": 40.0,   # --node-monitor-grace-period (1.24-1.27)
    "pod_eviction_toleration": 300.0,    # not-ready/unreachable tolerationSeconds (DefaultTolerationSeconds)
    # kubelet
    "lease_duration": 40.0,              # Lease.spec.leaseDurationSeconds
    "lease_renew_interval": 10.0,        # 25 % of the lease duration
    "node_status_update_frequency": 10.0,  # --node-status-update-frequency
    "node_status_report_frequency": 300.0,  # status posted at least this often when unchanged
    # HAProxy (check defaults: inter 2s rise 2 fall 3) and keepalived
    "haproxy_check_inter": 2.0,
    "keepalived_advert_int": 1.0,        # vrrp advert_int / gratuitous ARP re-announce
    # MOC / HCI failover cluster
    "ha_restart_delay": 10.0,            # a crashed VM is restarted by the failover cluster
    # kube-proxy
    "session_affinity_timeout": 10800.0,  # service.spec.sessionAffinityConfig.clientIP.timeoutSeconds
}


@dataclass(frozen=True, slots=True)
class Timers:
    """Scaled timers, in seconds.  ``Timers(0.1).node_monitor_grace_period == 4.0``."""

    time_scale: float = 1.0
    node_monitor_period: float = 0.0
    node_monitor_grace_period: float = 0.0
    pod_eviction_toleration: float = 0.0
    lease_duration: float = 0.0
    lease_renew_interval: float = 0.0
    node_status_update_frequency: float = 0.0
    node_status_report_frequency: float = 0.0
    haproxy_check_inter: float = 0.0
    keepalived_advert_int: float = 0.0
    ha_restart_delay: float = 0.0
    session_affinity_timeout: float = 0.0

    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale: must be > 0, got {time_scale!r}")
        object.__setattr__(self, "time_scale", float(time_scale))
        for f in fields(self):
            if f.name != "time_scale":
                object.__setattr__(self, f.name, DEFAULTS[f.name] * time_scale)

    def scaled(self, seconds: float) -> float:
        """A timer not listed here (e.g. a user's sessionAffinity timeout), scaled."""
        return seconds * self.time_scale

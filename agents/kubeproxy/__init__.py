"""kube-proxy, sans-IO: Service NAT with conntrack, and network programming latency.

See docs/contracts-pod-network.md and :mod:`agents.kubeproxy.proxier`.
"""

from .conntrack import DEFAULT_TIMEOUTS, IPVS_TIMEOUTS, ORIGINAL, REPLY, TCP_TRANSITIONS, Conntrack, Flow
from .latency import ProgrammingLatency
from .proxier import (
    MODES,
    SCHEDULERS,
    SERVICE_NAME_LABEL,
    Frontend,
    Proxier,
    Scheduler,
    ServicePort,
    register_scheduler,
)

__all__ = [
    "DEFAULT_TIMEOUTS", "IPVS_TIMEOUTS", "MODES", "ORIGINAL", "REPLY", "SCHEDULERS", "SERVICE_NAME_LABEL",
    "TCP_TRANSITIONS", "Conntrack", "Flow", "Frontend", "ProgrammingLatency", "Proxier", "Scheduler",
    "ServicePort", "register_scheduler",
]

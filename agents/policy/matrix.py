"""The reachability matrix (sans-IO): the policy verdict of a new connection for every pair.

``reachability(engine, pods, ports, externals)`` evaluates :meth:`PolicyEngine.verdict` — the
same engine the data plane's enforcer asks — for every ordered pair of distinct participants
(the pods, by ``"ns/name"`` key, then ``"ip:ADDR"`` for each external address) and every port,
and returns the ``hcinet policy matrix -o json`` shape::

    {"pods": ["ns/a", ...],
     "verdicts": [{"src": "ns/a", "dst": "ns/b", "port": 80, "protocol": "TCP", "allowed": true}, ...]}

Verdicts are ordered by source, then destination (participants in the order given), then port
(in the order given).  A pod without an address is matched by selectors but never by nets /
ipBlock rules (a what-if cannot know an ephemeral IP).  Externals are addresses: an external
that is some endpoint's address is that endpoint, as a live packet would be.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agents.policy.engine import Endpoint, PolicyEngine, protocol_number

__all__ = ["reachability"]


def reachability(engine: PolicyEngine, pods: list[str], ports: list[tuple[int, str]],
                 externals: Iterable[str] = ()) -> dict[str, Any]:
    parts: list[tuple[str, Endpoint | str]] = []
    for key in pods:
        ep = engine.endpoint(key)
        if ep is None:
            raise ValueError(f"reachability: unknown pod {key!r}")
        parts.append((key, ep))
    for ip in externals:
        parts.append((f"ip:{ip}", f"ip:{ip}"))
    port_specs = [(int(port), str(proto).upper(), protocol_number(proto)) for port, proto in ports]
    for port, name, _ in port_specs:
        if name not in ("TCP", "UDP", "SCTP"):
            raise ValueError(f"reachability: port {port}/{name}: protocol must be TCP, UDP or SCTP")
    verdict = engine.verdict
    out: list[dict[str, Any]] = []
    append = out.append
    for sname, src in parts:
        for dname, dst in parts:
            if sname == dname:
                continue
            for port, name, proto in port_specs:
                append({"src": sname, "dst": dname, "port": port, "protocol": name,
                        "allowed": verdict(src, dst, proto, port).allowed})
    return {"pods": list(pods), "verdicts": out}

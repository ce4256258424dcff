"""The benchmarks' report: every figure, then each target against its value in the same run.

``targets`` maps a figure (or a ratio of two, named ``a / b``) to ``(op, goal)`` with op
``<=`` or ``>=``; ``values`` holds the value of each targeted figure this run measured (and
informational ratios, shown with ``(info)``).  ``--json`` output carries the same verdicts as
``targets_doc``: ``{key: {value, op, target, met}}``.
"""

from __future__ import annotations

import json
from typing import Any

Targets = dict[str, tuple[str, float]]


def met(targets: Targets, key: str, value: float) -> bool:
    op, goal = targets[key]
    return value <= goal if op == "<=" else value >= goal


def targets_doc(targets: Targets, values: dict[str, float]) -> dict[str, dict[str, Any]]:
    return {k: {"value": v, "op": targets[k][0], "target": targets[k][1], "met": met(targets, k, v)}
            for k, v in values.items() if k in targets and v == v}  # (NaN: not measured)


def report(res: dict[str, Any], targets: Targets, values: dict[str, float], *, width: int = 36,
           skip: tuple[str, ...] = ("targets",)) -> str:
    lines = [f"{'figure':<{width}} {'value':>14}"]
    for key, value in res.items():
        if key in skip:
            continue
        if isinstance(value, float):
            text = f"{value:,.2f}"
        elif isinstance(value, dict | list):
            text = json.dumps(value)
        else:
            text = str(value)
        lines.append(f"{key:<{width}} {text:>14}")
    lines += ["", f"{'target (same run)':<{width}} {'value':>10}  {'target':>10}  met"]
    for key, value in values.items():
        if key in targets:
            op, goal = targets[key]
            verdict = "met" if met(targets, key, value) else "NO"
            lines.append(f"{key:<{width}} {value:>10.2f}  {op + ' ' + format(goal, 'g'):>10}  {verdict}")
        else:
            lines.append(f"{key:<{width}} {value:>10.2f}  {'(info)':>10}  -")
    return "\n".join(lines)

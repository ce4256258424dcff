"""``kwatch``'s command line (its watching is exercised end to end by scripts/bench/control_plane.py)."""

from __future__ import annotations

import math

from agents.kube import kwatch
from agents.vm.tools import run_tool


async def test_a_bad_command_line_is_refused_in_one_line_with_rc_2() -> None:
    rc, out, err = await run_tool(None, ["kwatch", "--server", "no such host!", "/api/v1/nodes"])  # type: ignore[arg-type]
    assert (rc, out) == (2, "") and err == "kwatch: --server: 'no such host!' is not HOST[:PORT]\n"
    rc, _, err = await run_tool(None, ["kwatch", "--server", "10.0.0.1", "api/v1/nodes"])  # type: ignore[arg-type]
    assert rc == 2 and "path: 'api/v1/nodes' is not an API path" in err
    rc, _, err = await run_tool(None, ["kwatch", "/api/v1/nodes"])  # type: ignore[arg-type]
    assert rc == 2 and "--server" in err


def test_latency_is_arrival_minus_the_writers_stamp() -> None:
    assert kwatch._latency_ms({"data": {"sent": "10.0"}}, "sent", 10.0125) == 12.5
    assert math.isnan(kwatch._latency_ms({"data": {}}, "sent", 1.0))
    assert kwatch._server("10.0.0.1") == ("10.0.0.1", 6443) and kwatch._server("10.0.0.1:80") == ("10.0.0.1", 80)

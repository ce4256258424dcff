"""What the host agent tests share (imported by module name: pytest puts this directory on
sys.path for the test modules beside it); the fixtures are in conftest.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from agents import triozmq
from scenarios import rundir

FAKE = Path(__file__).with_name("fake_child.py")  # stand-in broker and VM processes


async def call(agent: rundir.AgentInfo, verb: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    async with triozmq.TrioMgmtClient(agent.mgmt) as client:
        return await client.call(verb, args or {}, timeout=timeout)


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    """Wait for ``check()`` to return something truthy (a condition with a deadline)."""
    with trio.fail_after(timeout):
        while not (result := await check()):
            await trio.sleep(0.02)
    return result

"""Helpers the integration tests share (imported by module name: pytest puts this directory
on sys.path for the test modules beside it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline.
    A deadline, not a sleep: the condition is what the test waits on."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def plain(value: Any) -> Any:
    """msgpack hands arrays back as tuples: lists, so results compare with JSON-shaped data."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value

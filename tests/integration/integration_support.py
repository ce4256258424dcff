"""Helpers the integration tests share (imported by module name: pytest puts this directory
on sys.path for the test modules beside it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from agents import mgmt

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


class DeploymentHandles:
    """Handles on one running deployment, looked up through its host agent (a restarted VM
    binds a new management endpoint, so every call looks it up afresh)."""

    def __init__(self, hostagent: str, apiserver: str) -> None:
        self.hostagent = hostagent
        self.apiserver = apiserver  # the control-plane VM whose `api` verb the calls use

    def vm(self, name: str, verb: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> Any:
        rows = {r["name"]: r for r in mgmt.call(self.hostagent, "list", {}, 10.0)}
        return plain(mgmt.call(rows[name]["mgmt"], verb, args or {}, timeout))

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        args: dict[str, Any] = {"method": method, "path": path}
        if body is not None:
            args["body"] = body
        reply = self.vm(self.apiserver, "api", args, 10.0)
        return int(reply["status"]), reply["body"]

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = self.api(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {doc}"
        return doc

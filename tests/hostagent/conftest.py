"""A host agent started as users get it (detached, through its run directory), with stand-in
children (fake_child.py, chosen through HCINET_BROKER_COMMAND / HCINET_VM_COMMAND) so that the
tests are about the agent alone."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hostagent_support import FAKE

from scenarios import rundir, runner


@pytest.fixture
def rd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> rundir.RunDir:
    monkeypatch.setenv("HCINET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HCINET_VM_COMMAND", f"{sys.executable} {FAKE} vm")
    monkeypatch.setenv("HCINET_BROKER_COMMAND", f"{sys.executable} {FAKE} broker")
    return rundir.for_deployment("t")


@pytest.fixture
async def agent(rd: rundir.RunDir) -> AsyncIterator[rundir.AgentInfo]:
    info = await rundir.start_hostagent(rd)
    try:
        yield info
    finally:
        with trio.CancelScope(shield=True):
            await runner.down(rd.deployment, out=open(os.devnull, "w"))

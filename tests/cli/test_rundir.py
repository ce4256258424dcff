"""Where a deployment lives, and telling a live host agent from a stale pid file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios import rundir


def test_state_base_and_deployment_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HCINET_STATE_DIR", raising=False)
    monkeypatch.delenv("HCINET_DEPLOYMENT", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert rundir.for_deployment(None).path == tmp_path / "xdg" / "hcinet" / "default"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert rundir.state_base() == tmp_path / "home" / ".local" / "state" / "hcinet"
    monkeypatch.setenv("HCINET_STATE_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("HCINET_DEPLOYMENT", "lab")
    assert rundir.for_deployment(None).path == tmp_path / "s" / "lab"
    assert rundir.for_deployment("prod").path == tmp_path / "s" / "prod"  # the flag beats the env
    for bad in ("../x", "a b", "", "-x"):
        if bad:
            with pytest.raises(rundir.RunDirError, match="^deployment: "):
                rundir.for_deployment(bad)


async def test_stale_files_do_not_count_as_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCINET_STATE_DIR", str(tmp_path))
    rd = rundir.for_deployment("t")
    rd.ensure()
    assert await rundir.find_running(rd) is None
    # A pid file naming a live process that is not ours (pid reuse) is not a host agent.
    rd.hostagent_json.write_text(f'{{"mgmt": "tcp://127.0.0.1:1", "pid": {os.getpid()}}}')
    (rd.pids / "hostagent.pid").write_text(f"{os.getpid()}\n")
    assert not rd.owns(os.getpid())
    assert await rundir.find_running(rd) is None
    assert rd.read_pids() == {"hostagent": os.getpid()}
    rd.clear_pids()
    assert rd.read_pids() == {}


async def test_zombies_are_dead_and_wait_gone_needs_no_polling() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert await rundir.wait_gone(child.pid, 10)  # exited; a zombie until reaped
    assert not rundir.pid_alive(child.pid)
    child.wait()
    assert rundir.pid_alive(os.getpid())

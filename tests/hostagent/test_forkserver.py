"""The fork server (agents/forkserver.py): VMs forked from a process that pre-imported them.

The status-pipe half of ``ForkedProcess`` is checked directly; the rest runs real processes:
the server alone (a VM whose config is missing fails fast, which exercises fork, the passed
file descriptors and reaping without a broker), then a host agent with HCINET_FORKSERVER=1
running a real VM on a real broker through its whole life, and the agent's death.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agents import forkserver, triozmq
from scenarios import rundir, runner

ROOT = Path(__file__).resolve().parents[2]


def test_forked_process_reads_the_exit_status_from_its_pipe() -> None:
    r, w = os.pipe()
    proc = forkserver.ForkedProcess(12345, r)
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.05)
    os.write(w, b"-9\n")
    os.close(w)
    assert proc.wait(timeout=1) == -9 and proc.returncode == -9
    proc.kill()  # a known exit: nothing is signalled (the pid may belong to someone else now)


def test_a_server_that_dies_before_reporting_means_the_vm_died_with_it() -> None:
    r, w = os.pipe()
    proc = forkserver.ForkedProcess(12345, r)
    os.close(w)
    assert proc.poll() == -signal.SIGKILL


def test_enabled_by_default_unless_turned_off_or_overridden() -> None:
    assert forkserver.enabled({"HCINET_FORKSERVER": "1"})
    assert not forkserver.enabled({"HCINET_FORKSERVER": "0"})
    assert forkserver.enabled({})
    assert not forkserver.enabled({"HCINET_FORKSERVER": "1", "HCINET_VM_COMMAND": "x"})


def _read_line(fd: int, timeout: float = 10.0) -> dict[str, Any]:
    import select

    data = b""
    while not data.endswith(b"\n"):
        if not select.select([fd], [], [], timeout)[0]:
            raise TimeoutError("no line")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    result: dict[str, Any] = json.loads(data)
    return result


def test_the_server_forks_a_vm_passes_its_fds_and_reports_its_exit(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sready_r, sready_w = os.pipe()
    server = subprocess.Popen([sys.executable, "-m", "agents.forkserver", "--run-dir", str(tmp_path),
                               "--socket-fd", str(theirs.fileno()), "--ready-fd", str(sready_w)],
                              pass_fds=(theirs.fileno(), sready_w), cwd=ROOT)
    os.close(sready_w)
    theirs.close()
    try:
        assert _read_line(sready_r, 30)["ready"] is True
        # A bad request is refused in one line and the server keeps serving.
        ours.send(b"not json")
        assert "error" in json.loads(ours.recv(4096))
        log = tmp_path / "vm.out"
        ready_r, ready_w = os.pipe()
        status_r, status_w = os.pipe()
        with open(log, "ab") as f:
            args = json.dumps({"args": ["--config", str(tmp_path / "missing.json")]}).encode()
            socket.send_fds(ours, [args], [f.fileno(), ready_w, status_w])
        os.close(ready_w)
        os.close(status_w)
        pid = json.loads(ours.recv(4096))["pid"]
        proc = forkserver.ForkedProcess(pid, status_r)
        line = _read_line(ready_r)
        assert line["ready"] is False and "missing.json" in line["error"]
        assert proc.wait(timeout=10) == 2  # runtime.main's exit code for a bad config
        # The server exits when the host agent's end closes.
        ours.close()
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.fixture
async def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[rundir.RunDir, rundir.AgentInfo]]:
    monkeypatch.setenv("HCINET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HCINET_FORKSERVER", "1")
    for var in ("HCINET_VM_COMMAND", "HCINET_BROKER_COMMAND"):
        monkeypatch.delenv(var, raising=False)
    rd = rundir.for_deployment("fs")
    info = await rundir.start_hostagent(rd)
    try:
        yield rd, info
    finally:
        with trio.CancelScope(shield=True):
            await runner.down(rd.deployment, out=open(os.devnull, "w"))


async def call(endpoint: str, verb: str, args: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
    async with triozmq.TrioMgmtClient(endpoint) as client:
        return await client.call(verb, args or {}, timeout=timeout)


def _server_pid(rd: rundir.RunDir) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and "agents.forkserver" in rundir.cmdline(int(entry.name)) \
                and str(rd.path) in rundir.cmdline(int(entry.name)):
            return int(entry.name)
    raise AssertionError("no fork server process for this run dir")


async def test_a_vm_forked_through_the_host_agent_lives_like_a_spawned_one(
        agent: tuple[rundir.RunDir, rundir.AgentInfo]) -> None:
    rd, info = agent
    broker = await call(info.mgmt, "start_broker")
    await call(broker["mgmt"], "add_network", {"name": "dc", "prefix": "172.16.0.0/24", "gateway": "172.16.0.1",
                                               "vlan": 0, "mtu": 1500, "external": False})
    config = {"name": "vm-a", "kind": "plain", "apps": [], "routes": [],
              "nics": [{"name": "eth0", "network": "dc", "mac": "02:00:ac:10:00:0a",
                        "addresses": ["172.16.0.10/24"], "gateway": "172.16.0.1", "mtu": 1500}]}
    vm = await call(info.mgmt, "start_vm", {"config": config})
    server = _server_pid(rd)
    # Forked by the server (its child, not the agent's), named after the VM, owned by the run dir.
    assert Path(f"/proc/{vm['pid']}/status").read_text().split("PPid:")[1].split()[0] == str(server)
    assert Path(f"/proc/{vm['pid']}/comm").read_text().strip() == "vm-a"
    assert rd.owns(vm["pid"]) and rd.read_pids()["vm-a"] == vm["pid"]
    assert (await call(vm["mgmt"], "ping"))["pid"] == vm["pid"]
    assert (await call(vm["mgmt"], "exec", {"argv": ["ping", "-c", "1", "172.16.0.1"]}))["rc"] == 0
    # A crash is seen as one (SIGKILL), a restart forks again, a stop is clean.
    row = await call(info.mgmt, "kill_vm", {"name": "vm-a"})
    assert row["state"] == "crashed" and row["signal"] == "SIGKILL"
    again = await call(info.mgmt, "start_vm", {"name": "vm-a"})
    assert again["pid"] != vm["pid"]
    row = await call(info.mgmt, "stop_vm", {"name": "vm-a"})
    assert row["state"] == "stopped" and row["exit_code"] == 0
    # The agent's death takes the server and its VMs along.
    third = await call(info.mgmt, "start_vm", {"name": "vm-a"})
    os.kill(info.pid, signal.SIGKILL)
    for pid in (info.pid, server, third["pid"]):
        assert await rundir.wait_gone(pid, 5), f"pid {pid} outlived the host agent"

"""The host agent as users run it: detached, through its run directory and management socket.

Most tests use stand-ins for the broker and VM processes (fake_child.py, selected through
HCINET_BROKER_COMMAND / HCINET_VM_COMMAND) so that they test the agent alone; the last one
starts the real broker when broker/process.py exists.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from hostagent_support import call, until

from agents import mgmt, triozmq
from scenarios import rundir, runner

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 15.0








def vm_config(name: str, fake: str = "ready") -> dict[str, Any]:
    return {"name": name, "kind": "plain", "fake": fake, "apps": [], "routes": [],
            "nics": [{"name": "eth0", "network": "dc", "mac": "02:00:ac:10:00:0a",
                      "addresses": ["172.16.0.10/24"], "gateway": "172.16.0.1", "mtu": 1500}]}




def row(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["name"] == name)


async def test_run_dir_endpoints_and_a_vm_lifecycle(rd: rundir.RunDir, agent: rundir.AgentInfo) -> None:
    info = json.loads(rd.hostagent_json.read_text())
    assert info["mgmt"] == agent.mgmt and info["pid"] == agent.pid
    assert rd.read_pids()["hostagent"] == agent.pid
    assert await rundir.find_running(rd) == agent
    assert (await call(agent, "ping"))["pid"] == agent.pid
    # Detached: its own session, so the terminal's Ctrl-C and hang-up never reach it.
    assert os.getsid(agent.pid) == agent.pid

    broker = await call(agent, "start_broker", {"seed": 7})
    assert broker["data"] == "tcp://127.0.0.1:1" and rundir.pid_alive(broker["pid"])
    with pytest.raises(mgmt.RemoteError, match="^broker: already running"):
        await call(agent, "start_broker")

    vm = await call(agent, "start_vm", {"config": vm_config("vm-a")})
    assert vm["name"] == "vm-a" and rundir.pid_alive(vm["pid"]) and vm["mgmt"].startswith("tcp://")
    saved = json.loads((rd.vms / "vm-a.json").read_text())
    assert saved["broker"] == broker["data"] and saved["run_dir"] == str(rd.path)
    assert rd.read_pids()["vm-a"] == vm["pid"]
    assert row(await call(agent, "list"), "vm-a")["state"] == "running"
    with pytest.raises(mgmt.RemoteError, match="^name: VM vm-a is already running"):
        await call(agent, "start_vm", {"config": vm_config("vm-a")})

    stopped = await call(agent, "stop_vm", {"name": "vm-a"})
    assert (stopped["state"], stopped["exit_code"], stopped["signal"]) == ("stopped", 0, None)
    assert not rundir.pid_alive(vm["pid"]) and "vm-a" not in rd.read_pids()

    again = await call(agent, "start_vm", {"name": "vm-a"})  # its saved config
    assert again["pid"] != vm["pid"] and row(await call(agent, "list"), "vm-a")["state"] == "running"
    kinds = [e["kind"] for e in await call(agent, "events")]
    assert kinds.count("vm-started") == 2 and "vm-exited" in kinds and "broker-started" in kinds

    reply = await call(agent, "shutdown", timeout=20)
    assert sorted(reply["stopped"]) == ["broker", "vm-a"]
    assert await rundir.wait_gone(agent.pid, 10)
    for pid in (broker["pid"], again["pid"]):
        assert not rundir.pid_alive(pid)
    assert rd.read_pids() == {} and not rd.hostagent_json.exists()


async def test_failed_starts_name_the_vm_and_leave_nothing_running(rd: rundir.RunDir,
                                                                   agent: rundir.AgentInfo) -> None:
    with pytest.raises(mgmt.RemoteError, match="^broker: no broker is running"):
        await call(agent, "start_vm", {"config": vm_config("vm-a")})
    await call(agent, "start_broker")
    with pytest.raises(mgmt.RemoteError, match=r"^config.name: 'VM_A' is not a VM name"):
        await call(agent, "start_vm", {"config": vm_config("VM_A")})
    with pytest.raises(mgmt.RemoteError, match=r"^vm-f: nics\[0\]: attach refused$"):
        await call(agent, "start_vm", {"config": vm_config("vm-f", "fail")})
    with pytest.raises(mgmt.RemoteError,
                       match=r"^vm-e: exited with code 3 before it was ready \(last output: boom: bad config\)$"):
        await call(agent, "start_vm", {"config": vm_config("vm-e", "exit")})
    with pytest.raises(mgmt.RemoteError, match=r"^vm-h: not ready within 0.5 s"):
        await call(agent, "start_vm", {"config": vm_config("vm-h", "hang"), "timeout": 0.5})
    rows = await call(agent, "list")
    for name in ("vm-f", "vm-e", "vm-h"):
        r = row(rows, name)
        assert r["state"] == "crashed" and not rundir.pid_alive(r["pid"]), r
    assert set(rd.read_pids()) == {"hostagent", "broker"}
    failed = [e["name"] for e in await call(agent, "events") if e["kind"] == "start-failed"]
    assert failed == ["vm-f", "vm-e", "vm-h"]


async def test_a_dying_vm_is_reported_and_detached_from_the_broker(rd: rundir.RunDir,
                                                                    agent: rundir.AgentInfo) -> None:
    broker = await call(agent, "start_broker")
    vm = await call(agent, "start_vm", {"config": vm_config("vm-a")})
    os.kill(vm["pid"], signal.SIGKILL)  # a crash the agent did not cause

    async def exited() -> Any:
        return [e for e in await call(agent, "events") if e["kind"] == "vm-exited"]

    (event,) = await until(exited)
    assert (event["name"], event["code"], event["signal"], event["expected"]) == ("vm-a", None, "SIGKILL", False)
    assert isinstance(event["time"], float)
    assert row(await call(agent, "list"), "vm-a")["state"] == "crashed"
    on_disk = [e for e in rd.read_events() if e["kind"] == "vm-exited"]
    assert on_disk == [event]
    async with triozmq.TrioMgmtClient(broker["mgmt"]) as b:
        assert list(await until(lambda: b.call("detached"))) == ["vm-a"]

    # kill_vm is the same crash, on request; the reply comes after the agent noticed it.
    await call(agent, "start_vm", {"name": "vm-a"})
    killed = await call(agent, "kill_vm", {"name": "vm-a"})
    assert (killed["state"], killed["signal"]) == ("crashed", "SIGKILL")
    async with triozmq.TrioMgmtClient(broker["mgmt"]) as b:
        assert list(await b.call("detached")) == ["vm-a", "vm-a"]
    with pytest.raises(mgmt.RemoteError, match=r"^name: no VM named vm-z \(known: vm-a\)$"):
        await call(agent, "kill_vm", {"name": "vm-z"})


async def test_stop_escalates_to_sigkill(rd: rundir.RunDir, agent: rundir.AgentInfo) -> None:
    await call(agent, "start_broker")
    vm = await call(agent, "start_vm", {"config": vm_config("vm-s", "ignore-term")})
    stopped = await call(agent, "stop_vm", {"name": "vm-s", "timeout": 0.3})
    assert (stopped["state"], stopped["signal"]) == ("stopped", "SIGKILL")
    assert not rundir.pid_alive(vm["pid"])


async def _children(agent: rundir.AgentInfo) -> list[int]:
    await call(agent, "start_broker")
    async with trio.open_nursery() as nursery:
        for name in ("vm-a", "vm-b", "vm-c"):
            nursery.start_soon(call, agent, "start_vm", {"config": vm_config(name)})
    pids = [r["pid"] for r in await call(agent, "list")]
    assert len(pids) == 4 and all(rundir.pid_alive(p) for p in pids)
    return pids


async def test_killing_the_hostagent_leaves_no_process_behind(rd: rundir.RunDir, agent: rundir.AgentInfo) -> None:
    pids = await _children(agent)
    os.kill(agent.pid, signal.SIGKILL)
    assert await rundir.wait_gone(agent.pid, 5)
    for pid in pids:  # PR_SET_PDEATHSIG: each child got SIGKILL when the agent died
        assert await rundir.wait_gone(pid, 5), f"pid {pid} outlived the host agent"
        assert not Path(f"/proc/{pid}").exists() or not rundir.pid_alive(pid)
    assert await rundir.find_running(rd) is None


async def test_sigterm_stops_everything_cleanly(rd: rundir.RunDir, agent: rundir.AgentInfo) -> None:
    pids = await _children(agent)
    os.kill(agent.pid, signal.SIGTERM)
    assert await rundir.wait_gone(agent.pid, 15)
    assert not any(rundir.pid_alive(p) for p in pids)
    kinds = [e["kind"] for e in rd.read_events()]
    assert kinds.count("vm-exited") == 3 and kinds[-1] == "hostagent-exited"
    assert all(e["expected"] for e in rd.read_events() if e["kind"] == "vm-exited")
    assert rd.read_pids() == {}


async def test_a_second_agent_on_the_same_run_dir_is_refused(rd: rundir.RunDir, agent: rundir.AgentInfo) -> None:
    with pytest.raises(rundir.RunDirError, match=f"host agent: {rd.path} is owned by host agent pid {agent.pid}"):
        await rundir.start_hostagent(rd)
    assert (await call(agent, "ping"))["pid"] == agent.pid


@pytest.mark.skipif(not (ROOT / "broker" / "process.py").exists(),
                    reason="broker/process.py does not exist yet: the real broker cannot be started")
async def test_the_real_broker_through_the_agent(rd: rundir.RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HCINET_BROKER_COMMAND")
    info = await rundir.start_hostagent(rd)
    try:
        broker = await call(info, "start_broker")
        async with triozmq.TrioMgmtClient(broker["mgmt"]) as b:
            await b.call("ping")
            await b.call("add_network", {"name": "dc", "prefix": "172.16.0.0/24", "gateway": "172.16.0.1",
                                         "vlan": 0, "mtu": 1500, "external": False})
            stats = await b.call("stats")
        assert "dc" in stats["networks"]
        assert broker["data"].startswith("tcp://127.0.0.1:")
        assert (rd.logs / "broker.out").exists()
    finally:
        await runner.down(rd.deployment, out=open(os.devnull, "w"))
    assert not rundir.pid_alive(broker["pid"])

"""What MOC needs of the host agent: the ``events`` long poll with a cursor, a restart policy
(the cloud agent is a failover-cluster role) and ``restart_vm``.  Stand-in children
(tests/hostagent/fake_child.py) keep this about the agent alone."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from hostagent_support import call, until

from agents import mgmt
from scenarios import rundir


def config(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "plain", "apps": [], "routes": [],
            "nics": [{"name": "eth0", "network": "dc", "mac": "02:00:ac:10:00:05",
                      "addresses": ["172.16.0.5/24"], "gateway": "172.16.0.1", "mtu": 1500}]}




async def test_events_long_poll_from_a_cursor(agent: rundir.AgentInfo) -> None:
    last = (await call(agent, "events"))[-1]["seq"]
    t0 = time.monotonic()
    assert list(await call(agent, "events", {"since": last, "wait_s": 0.3})) == []
    assert time.monotonic() - t0 >= 0.25  # it waited for an event that did not come

    async def poll(into: list[Any]) -> None:
        into.extend(await call(agent, "events", {"since": last, "wait_s": 5}))

    got: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll, got)
        # Let the poll park on the agent first; the result is the same either way (the cursor
        # returns the event even if it came before the poll), only the wake-up is not tested.
        await trio.sleep(0.1)
        t1 = time.monotonic()
        await call(agent, "start_broker")
    assert time.monotonic() - t1 < 3 and [e["kind"] for e in got] == ["broker-started"]
    assert got[0]["seq"] == last + 1
    for n in range(3):
        await call(agent, "start_vm", {"config": config(f"vm-{n}")})
    # With a cursor: the *oldest* events after it, so a consumer never skips one.
    first_two = await call(agent, "events", {"since": last, "limit": 2})
    assert [e["seq"] for e in first_two] == [last + 1, last + 2]
    with pytest.raises(mgmt.RemoteError, match=r"^wait_s: expected seconds 0..600, got -1$"):
        await call(agent, "events", {"since": 0, "wait_s": -1})
    with pytest.raises(mgmt.RemoteError, match=r"^since: expected an event seq >= 0, got 'x'$"):
        await call(agent, "events", {"since": "x"})


async def test_a_vm_with_a_restart_policy_is_restarted_unless_stopped(agent: rundir.AgentInfo) -> None:
    await call(agent, "start_broker")
    with pytest.raises(mgmt.RemoteError, match=r'^restart: expected \{"delay_s": seconds\}, got 5$'):
        await call(agent, "start_vm", {"config": config("moc"), "restart": 5})
    with pytest.raises(mgmt.RemoteError, match=r"^restart.delay_s: expected seconds 0..3600, got -1$"):
        await call(agent, "start_vm", {"config": config("moc"), "restart": {"delay_s": -1}})
    first = await call(agent, "start_vm", {"config": config("moc"), "restart": {"delay_s": 0.3}})
    plain = await call(agent, "start_vm", {"config": config("other")})

    async def running(name: str, not_pid: int) -> int | None:
        row = next(r for r in await call(agent, "list") if r["name"] == name)
        return row["pid"] if row["state"] == "running" and row["pid"] != not_pid else None

    t0 = time.monotonic()
    await call(agent, "kill_vm", {"name": "moc"})
    await call(agent, "kill_vm", {"name": "other"})
    second = await until(lambda: running("moc", first["pid"]))
    assert time.monotonic() - t0 >= 0.25
    auto = [e for e in await call(agent, "events") if e["kind"] == "vm-auto-restart"]
    assert [(e["name"], e["delay_s"]) for e in auto] == [("moc", 0.3)]
    rows = {r["name"]: r for r in await call(agent, "list")}
    assert rows["other"]["state"] == "crashed" and rows["other"]["pid"] == plain["pid"]  # no policy, no restart

    # restart_vm keeps the policy; stop_vm is a deliberate stop: it stays down.
    third = await call(agent, "restart_vm", {"name": "moc"})
    assert third["pid"] != second
    await call(agent, "kill_vm", {"name": "moc"})
    await call(agent, "stop_vm", {"name": "moc"})  # while the restart is pending: cancels it
    await trio.sleep(0.6)  # twice the delay: a restart would have happened by now
    row = next(r for r in await call(agent, "list") if r["name"] == "moc")
    assert row["state"] == "crashed" and row["pid"] == third["pid"]
    assert len([e for e in await call(agent, "events") if e["kind"] == "vm-auto-restart"]) == 1


async def test_remove_vm_stops_forgets_and_deletes_the_config(agent: rundir.AgentInfo, rd: rundir.RunDir) -> None:
    await call(agent, "start_broker")
    running = await call(agent, "start_vm", {"config": config("gone"), "restart": {"delay_s": 0.2}})
    await call(agent, "start_vm", {"config": config("crashed")})
    await call(agent, "kill_vm", {"name": "crashed"})
    assert (rd.vms / "gone.json").exists()

    removed = await call(agent, "remove_vm", {"name": "gone"})
    assert (removed["name"], removed["state"], removed["removed"]) == ("gone", "stopped", True)
    assert not rundir.pid_alive(running["pid"]) and not (rd.vms / "gone.json").exists()
    await call(agent, "remove_vm", {"name": "crashed"})  # a dead VM is removed as well
    names = [r["name"] for r in await call(agent, "list")]
    assert "gone" not in names and "crashed" not in names
    await trio.sleep(0.4)  # twice its restart delay: the removed VM's policy went with it
    assert "gone" not in [r["name"] for r in await call(agent, "list")]
    events = [(e["kind"], e.get("name")) for e in await call(agent, "events")]
    assert ("vm-removed", "gone") in events and ("vm-auto-restart", "gone") not in events
    with pytest.raises(mgmt.RemoteError, match=r"^name: no VM named gone"):
        await call(agent, "remove_vm", {"name": "gone"})
    with pytest.raises(mgmt.RemoteError, match=r"^name: no VM named gone"):
        await call(agent, "restart_vm", {"name": "gone"})

"""The VM as a process: readiness, management verbs, tools over ``exec``, clean SIGTERM.

The first group runs against a minimal in-test broker (vm_fakebroker) so the VM's side of the
protocol can be asserted frame by frame; the last test runs two VMs against the real broker
process (skipped while ``broker/process.py`` does not exist).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vm_fakebroker import FakeBroker

from agents import mgmt
from broker import wire

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 15.0


def vm_config(name: str, ip: str, broker: str, run_dir: Path, apps: list[dict[str, Any]] | None = None,
              nic: str = "eth0") -> dict[str, Any]:
    last = int(ip.rsplit(".", 1)[1])
    return {"name": name, "kind": "plain", "run_dir": str(run_dir), "broker": broker,
            "nics": [{"name": nic, "network": "dc", "mac": f"02:00:ac:10:00:{last:02x}",
                      "addresses": [f"{ip}/24"], "gateway": "172.16.0.1", "mtu": 1500}],
            "routes": [], "apps": apps or []}


class VMProc:
    """A ``python -m agents.vm`` child with its readiness line."""

    def __init__(self, config: dict[str, Any], run_dir: Path) -> None:
        path = run_dir / f"{config['name']}.json"
        path.write_text(json.dumps(config))
        rfd, wfd = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents.vm", "--config", str(path), "--ready-fd", str(wfd)],
            pass_fds=(wfd,), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(wfd)
        try:
            self.ready = _read_line(rfd, READY_TIMEOUT)
        finally:
            os.close(rfd)
        self.mgmt = self.ready.get("mgmt", "")

    def call(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> Any:
        return mgmt.call(self.mgmt, verb, args, timeout=timeout)

    def exec(self, *argv: str, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.call("exec", {"argv": list(argv), **extra})
        return result

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _read_line(fd: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError("no readiness line")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    result: dict[str, Any] = json.loads(data)
    return result


@pytest.fixture
def two_vms(tmp_path: Path) -> Iterator[tuple[FakeBroker, VMProc, VMProc]]:
    with FakeBroker() as broker:
        apps = [{"kind": "tcp-sink", "port": 5001}, {"kind": "tcp-echo", "port": 7},
                {"kind": "udp-echo", "port": 7}, {"kind": "udp-sink", "port": 9}]
        a = VMProc(vm_config("vm-a", "172.16.0.10", broker.endpoint, tmp_path), tmp_path)
        b = VMProc(vm_config("vm-b", "172.16.0.11", broker.endpoint, tmp_path, apps), tmp_path)
        try:
            yield broker, a, b
        finally:
            a.kill()
            b.kill()


def test_ready_line_and_management(two_vms: tuple[FakeBroker, VMProc, VMProc], tmp_path: Path) -> None:
    broker, a, b = two_vms
    assert a.ready["ready"] is True and a.ready["pid"] == a.proc.pid
    assert a.mgmt.startswith("tcp://127.0.0.1:")
    assert a.call("ping")["vm"] == "vm-a"
    assert ("attach", "vm-b", "eth0", ("172.16.0.11",)) in broker.events
    assert (tmp_path / "logs" / "vm-a.log").exists()
    with pytest.raises(mgmt.RemoteError, match="verb: unknown command"):
        a.call("nope")
    with pytest.raises(mgmt.RemoteError, match="^argv: "):
        a.call("exec", {"argv": "ping"})


def test_tools_across_the_broker(two_vms: tuple[FakeBroker, VMProc, VMProc]) -> None:
    broker, a, b = two_vms
    res = a.exec("ping", "-c", "3", "-i", "0.05", "-W", "2", "172.16.0.11")
    assert res["rc"] == 0, res
    assert res["stdout"].startswith("PING 172.16.0.11 (172.16.0.11) 56(84) bytes of data.\n")
    assert res["stdout"].count("64 bytes from 172.16.0.11: icmp_seq=") == 3
    assert "3 packets transmitted, 3 received, 0% packet loss" in res["stdout"]

    res = a.exec("transfer", "--bytes", "2000000", "--json", "172.16.0.11", "5001")
    assert res["rc"] == 0, res
    result = json.loads(res["stdout"])
    assert result["match"] and result["bytes"] == 2_000_000

    res = a.exec("nc", "-z", "-v", "172.16.0.11", "7")
    assert res["rc"] == 0 and "Connection to 172.16.0.11 7 port [tcp/" in res["stderr"], res
    res = a.exec("nc", "-z", "-v", "172.16.0.11", "8")
    assert res["rc"] == 1
    assert res["stderr"] == "nc: connect to 172.16.0.11 port 8 (tcp) failed: Connection refused\n"
    res = a.exec("nc", "-w", "2", "172.16.0.11", "7", input="hello over tcp\n")
    assert res == {"rc": 0, "stdout": "hello over tcp\n", "stderr": ""}
    res = a.exec("nc", "-u", "-w", "1", "172.16.0.11", "7", input="hello over udp")
    assert res["rc"] == 0 and res["stdout"] == "hello over udp"

    res = a.exec("udp-send", "--count", "200", "--size", "100", "172.16.0.11", "9")
    assert res["rc"] == 0, res
    sink = _wait_app(b, "udp-sink", lambda app: app["datagrams"] >= 200)
    assert sink["datagrams"] == 200 and sink["bytes"] == 20_000

    stats = a.call("stats")
    runtime = stats["runtime"]
    assert runtime["batches_out"] >= 1 and runtime["packets_out"] >= runtime["batches_out"]
    assert runtime["bad_frames"] == {r: 0 for r in runtime["bad_frames"]}
    assert sum(1 for app in b.call("stats")["apps"] if app["kind"] == "tcp-sink" and app["last_bytes"] == 2_000_000)


def _wait_app(vm: VMProc, kind: str, pred: Any, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        app = next(x for x in vm.call("stats")["apps"] if x["kind"] == kind)
        if pred(app) or time.monotonic() > deadline:
            return app
        time.sleep(0.05)  # polling a counter over the management socket, not synchronising


def test_claims_and_announce(two_vms: tuple[FakeBroker, VMProc, VMProc]) -> None:
    broker, a, b = two_vms
    # (replies decode lists as tuples: msgpack with use_list=False)
    assert a.call("claim", {"nic": "eth0", "ips": ["172.16.0.100"]}) == {"nic": "eth0", "ips": ("172.16.0.100",)}
    assert broker.wait_for(lambda ev: any(e[0] == "claim" and e[3] == ("172.16.0.100",) for e in ev))
    # The VM answers for the claimed address: b pings it through the broker.
    res = b.exec("ping", "-c", "1", "-W", "2", "172.16.0.100")
    assert res["rc"] == 0 and "64 bytes from 172.16.0.100" in res["stdout"], res
    with pytest.raises(mgmt.RemoteError, match="^nic: no NIC 'eth9'"):
        a.call("claim", {"nic": "eth9", "ips": ["172.16.0.100"]})
    with pytest.raises(mgmt.RemoteError, match="^ips: "):
        a.call("claim", {"nic": "eth0", "ips": ["not-an-ip"]})

    b.call("announce", {"nic": 0, "ips": ["172.16.0.100"], "interval_s": 0.05})
    assert broker.wait_for(lambda ev: sum(1 for e in ev if e[0] == "claim" and e[3] == ("172.16.0.100",)) >= 4)
    assert b.call("stats")["announcing"] == ({"nic": "eth0", "ips": ("172.16.0.100",)},)
    b.call("announce", {"nic": 0, "ips": ["172.16.0.100"], "interval_s": 0})
    assert b.call("stats")["announcing"] == ()

    a.call("release", {"nic": "eth0", "ips": ["172.16.0.100"]})
    assert broker.wait_for(lambda ev: any(e[0] == "release" for e in ev))
    assert "172.16.0.100" not in a.call("stats")["claims"]["eth0"]


def test_bad_frames_are_counted_and_harmless(two_vms: tuple[FakeBroker, VMProc, VMProc]) -> None:
    broker, a, b = two_vms
    bad = {
        "garbage": [[b"\xc1"], [wire.deliver_header(0, 0, 1, 10), b"\xc1"], [wire.deliver_header(0, 0, 1, 10),
                                                                                wire.pack(7)]],
        "version": [[wire.pack((99, wire.DELIVER, 0, 0, 1, 1)), b""]],
        "truncated": [[wire.pack((wire.VERSION, wire.DELIVER, 0, 0))], [wire.deliver_header(0, 0, 1, 10)]],
        "oversized": [[b"\x00" * (wire.MAX_HEADER + 1)]],
        "kind": [[wire.pack((wire.VERSION, 77))], wire.claim(0, ["172.16.0.10"])],
    }
    for frames_list in bad.values():
        for frames in frames_list:
            broker.inject("vm-a", frames)
    # A well-formed frame whose packets are not packets: the frame is fine, the stack's last
    # line of defence counts each packet (no per-packet validation on the VM's hot path).
    broker.inject("vm-a", [wire.deliver_header(0, 0, 3, 30), wire.pack([1, 2, 3])])
    want = {reason: len(frames_list) for reason, frames_list in bad.items()}
    deadline = time.monotonic() + 5
    while True:
        stats = a.call("stats")
        got = (stats["runtime"]["bad_frames"], stats["netstack"]["drops"]["bad_packet"])
        if got == (want, 3) or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # polling counters over the management socket
    assert got == (want, 3)
    res = a.exec("ping", "-c", "1", "-W", "2", "172.16.0.11")
    assert res["rc"] == 0, res  # still on the network


def test_parent_death_takes_the_vm_along(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a VM whose parent (the host agent) is SIGKILLed dies with it."""
    with FakeBroker() as broker:
        cfg = tmp_path / "vm-p.json"
        cfg.write_text(json.dumps(vm_config("vm-p", "172.16.0.30", broker.endpoint, tmp_path)))
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(cfg)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert parent.stdout is not None
            ready = json.loads(parent.stdout.readline())
            assert ready["ready"], ready
            parent.kill()
            parent.wait(5)
            assert _wait_gone(ready["pid"], 5.0), "VM outlived its parent"
        finally:
            parent.kill()


PARENT = """
import os, subprocess, sys
r, w = os.pipe()
subprocess.Popen([sys.executable, "-m", "agents.vm", "--config", sys.argv[1], "--ready-fd", str(w)],
                 pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(w)
print(os.read(r, 4096).decode().strip(), flush=True)
import time
time.sleep(60)
"""


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return True  # dead, waiting for init to reap it
        except FileNotFoundError:
            return True
        time.sleep(0.02)  # watching /proc for the exit, not synchronising
    return False


def test_sigterm_detaches_before_closing(two_vms: tuple[FakeBroker, VMProc, VMProc]) -> None:
    broker, a, b = two_vms
    assert a.terminate() == 0
    assert any(e[0] == "detach" for e in broker.events)
    assert b.call("shutdown") == {"stopping": "vm-b"}
    assert b.proc.wait(10) == 0
    assert sum(1 for e in broker.events if e[0] == "detach") == 2


def test_refused_attach_reports_not_ready(tmp_path: Path) -> None:
    with FakeBroker(refuse=frozenset({"eth1"})) as broker:
        vm = VMProc(vm_config("vm-x", "172.16.0.20", broker.endpoint, tmp_path, nic="eth1"), tmp_path)
        try:
            assert vm.ready == {"ready": False, "error": "attach eth1: network: no network 'nowhere'"}
            assert vm.proc.wait(10) == 1
        finally:
            vm.kill()


def test_bad_config_reports_not_ready(tmp_path: Path) -> None:
    cfg = vm_config("vm-y", "172.16.0.21", "tcp://127.0.0.1:1", tmp_path)
    cfg["nics"][0]["addresses"] = ["172.16.0.21"]
    vm = VMProc(cfg, tmp_path)
    assert vm.ready["ready"] is False
    assert vm.ready["error"].startswith("nics[0].addresses[0]: expected address/prefixlen")
    assert vm.proc.wait(10) == 2


@pytest.mark.skipif(not (ROOT / "broker" / "process.py").exists(), reason="broker/process.py not written yet")
def test_two_vms_through_the_real_broker(tmp_path: Path) -> None:
    rfd, wfd = os.pipe()
    broker = subprocess.Popen(
        [sys.executable, "-m", "broker", "--data", "tcp://127.0.0.1:0", "--mgmt", "tcp://127.0.0.1:0",
         "--ready-fd", str(wfd)], pass_fds=(wfd,), cwd=ROOT, stdout=subprocess.DEVNULL)
    os.close(wfd)
    vms: list[VMProc] = []
    try:
        ready = _read_line(rfd, READY_TIMEOUT)
        assert ready["ready"], ready
        mgmt.call(ready["mgmt"], "add_network", {"name": "dc", "prefix": "172.16.0.0/24",
                                                 "gateway": "172.16.0.1", "vlan": 0, "mtu": 1500,
                                                 "external": False})
        a = VMProc(vm_config("vm-a", "172.16.0.10", ready["data"], tmp_path), tmp_path)
        vms.append(a)
        b = VMProc(vm_config("vm-b", "172.16.0.11", ready["data"], tmp_path,
                             [{"kind": "tcp-sink", "port": 5001}]), tmp_path)
        vms.append(b)
        assert a.ready["ready"] and b.ready["ready"], (a.ready, b.ready)
        res = a.exec("ping", "-c", "2", "-i", "0.05", "-W", "2", "172.16.0.11")
        assert res["rc"] == 0 and "2 received" in res["stdout"], res
        res = a.exec("transfer", "--bytes", "1000000", "--json", "172.16.0.11", "5001")
        assert res["rc"] == 0 and json.loads(res["stdout"])["match"], res
        assert a.terminate() == 0 and b.terminate() == 0
    finally:
        os.close(rfd)
        for vm in vms:
            vm.kill()
        broker.kill()
        broker.wait(5)

"""VM processes on the real broker: DHCP leases from the router's scope before readiness
(a second VM gets another address; an exhausted scope fails readiness with the reason),
and curl to another VM's ``http`` app across the broker."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_vm_process import READY_TIMEOUT, ROOT, VMProc, _read_line

from agents import mgmt

DC = {"name": "dc", "prefix": "172.16.0.0/24", "gateway": "172.16.0.1", "vlan": 0, "mtu": 1500,
      "external": False, "dhcp_scope": ["172.16.0.100", "172.16.0.101"], "lease_s": 3600}


@dataclass
class Broker:
    data: str
    mgmt: str


@contextlib.contextmanager
def start_broker(tmp_path: Path) -> Iterator[Broker]:
    rfd, wfd = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "--data", "tcp://127.0.0.1:0", "--mgmt", "tcp://127.0.0.1:0",
         "--ready-fd", str(wfd)], pass_fds=(wfd,), cwd=ROOT, stdout=subprocess.DEVNULL)
    os.close(wfd)
    try:
        ready = _read_line(rfd, READY_TIMEOUT)
        assert ready["ready"], ready
        yield Broker(ready["data"], ready["mgmt"])
    finally:
        os.close(rfd)
        proc.kill()
        proc.wait(5)


def config(name: str, run_dir: Path, mac_last: int, *, ip: str | None = None,
           apps: list[dict[str, Any]] | None = None, broker: str = "") -> dict[str, Any]:
    nic: dict[str, Any] = {"name": "eth0", "network": "dc", "mac": f"02:00:ac:10:00:{mac_last:02x}", "mtu": 1500}
    if ip is None:
        nic.update(dhcp=True, dhcp_timeout_s=1.0)
    else:
        nic.update(addresses=[f"{ip}/24"], gateway="172.16.0.1")
    return {"name": name, "kind": "plain", "run_dir": str(run_dir), "broker": broker, "nics": [nic],
            "routes": [], "apps": apps or []}


def test_dhcp_leases_and_curl_across_the_broker(tmp_path: Path) -> None:
    vms: list[VMProc] = []
    with start_broker(tmp_path) as broker:
        mgmt.call(broker.mgmt, "add_network", DC)
        try:
            web = VMProc(config("web", tmp_path, 0x20, apps=[{"kind": "http", "port": 8080}],
                                broker=broker.data), tmp_path)
            vms.append(web)
            other = VMProc(config("other", tmp_path, 0x21, broker=broker.data), tmp_path)
            vms.append(other)
            client = VMProc(config("client", tmp_path, 0x0a, ip="172.16.0.10", broker=broker.data), tmp_path)
            vms.append(client)
            assert web.ready["ready"] and other.ready["ready"] and client.ready["ready"], \
                (web.ready, other.ready, client.ready)
            [lease_web] = web.call("stats")["dhcp"]
            [lease_other] = other.call("stats")["dhcp"]
            assert lease_web["ip"] == "172.16.0.100" and lease_web["prefixlen"] == 24
            assert lease_web["router"] == "172.16.0.1" and lease_web["lease_left_s"] > 3500
            assert lease_other["ip"] == "172.16.0.101"
            assert list(web.call("stats")["claims"]["eth0"]) == ["172.16.0.100"]
            # the scope is exhausted: the third DHCP VM does not become ready, and says why
            late = VMProc(config("late", tmp_path, 0x22, broker=broker.data), tmp_path)
            vms.append(late)
            assert late.ready["ready"] is False
            assert "no DHCPOFFER" in late.ready["error"] and "scope exhausted" in late.ready["error"]
            assert late.proc.wait(10) == 1
            dhcp = mgmt.call(broker.mgmt, "stats", {})["networks"]["dc"]["dhcp"]
            assert dhcp["in_use"] == 2 and dhcp["counts"]["exhausted"] >= 1
            # curl from the static VM to the leased one, and back through the leased default route
            res = client.exec("curl", "-s", "http://172.16.0.100:8080/")
            assert res == {"rc": 0, "stdout": "hello from web\n", "stderr": ""}
            res = client.exec("curl", "-s", "http://172.16.0.100:8080/clientip")
            assert res["rc"] == 0 and re.fullmatch(r"172\.16\.0\.10:\d+\n", res["stdout"]), res
            res = client.exec("curl", "-s", "-w", "%{http_code}", "http://172.16.0.100:8080/x")
            assert res["rc"] == 0 and res["stdout"] == "404 page not found\n404"
            res = other.exec("curl", "-sS", "http://172.16.0.100:8081/")
            assert res["rc"] == 7 and res["stderr"].startswith(
                "curl: (7) Failed to connect to 172.16.0.100 port 8081 after "), res
            for vm in (web, other, client):
                assert vm.terminate() == 0
        finally:
            for vm in vms:
                vm.kill()


def test_node_vm_kubelet_reaches_its_apiserver_address(tmp_path: Path) -> None:
    """A ``node`` VM (kind found lazily) boots, and its kubelet talks HTTP to ``apiserver``:
    here a plain VM's ``http`` app on :6443, which answers 405 to a POST, so registration keeps
    retrying with the API server's answer as the last error."""
    vms: list[VMProc] = []
    with start_broker(tmp_path) as broker:
        mgmt.call(broker.mgmt, "add_network", DC)
        try:
            api = VMProc(config("fake-api", tmp_path, 0x96, ip="172.16.0.150",
                                apps=[{"kind": "http", "port": 6443}], broker=broker.data), tmp_path)
            vms.append(api)
            cfg = config("cluster1-linux-0", tmp_path, 0x21, broker=broker.data)
            cfg.update(kind="node", cluster="cluster1", pool="cluster1-linux", os="linux",
                       apiserver="172.16.0.150:6443", max_pods=110, time_scale=0.01)
            node = VMProc(cfg, tmp_path)
            vms.append(node)
            assert api.ready["ready"] and node.ready["ready"], (api.ready, node.ready)
            deadline = time.monotonic() + 10
            while True:
                state = node.call("kubelet")
                if state["register_attempts"] >= 2 and "405" in state["last_error"]:
                    break
                assert time.monotonic() < deadline, str(state)
                time.sleep(0.05)  # polling the VM's state, not synchronising
            assert state["registered"] is False and state["apiserver"] == "172.16.0.150:6443"
            assert api.call("stats")["apps"][0]["requests"] >= 2
            bad = dict(cfg, name="cluster1-linux-1", os="mac")
            bad["nics"] = [dict(cfg["nics"][0], mac="02:00:ac:10:00:33")]
            refused = VMProc(bad, tmp_path)
            vms.append(refused)
            assert refused.ready == {"ready": False, "error": "os: expected linux or windows, got 'mac'"}
            for vm in (api, node):
                assert vm.terminate() == 0
        finally:
            for vm in vms:
                vm.kill()

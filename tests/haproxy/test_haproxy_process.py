"""The HAProxy VM as a process on the real broker: programmed over the emulated network
through the lbagent (TCP 46000) from another VM, proxying a VIP to two backend VMs in round
robin, a killed backend going DOWN after fall x inter with traffic moving to the other, the
stats CSV showing it, and the config surviving a crash of the LB VM (its disk)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_vm_process import READY_TIMEOUT, ROOT, VMProc, _read_line, vm_config

from agents import mgmt
from agents.haproxy.core import parse_csv

LB, CLIENT, B1, B2 = "172.16.0.5", "172.16.0.10", "172.16.0.11", "172.16.0.12"
VIP = "172.16.0.150"
TIME_SCALE = 0.05  # inter 2 s -> 100 ms; keepalived 1 s -> 50 ms
INTER = 2.0 * TIME_SCALE

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)  # polling over the management socket against a deadline


class Fabric:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        rfd, wfd = os.pipe()
        self.broker = subprocess.Popen(
            [sys.executable, "-m", "broker", "--data", "tcp://127.0.0.1:0", "--mgmt", "tcp://127.0.0.1:0",
             "--ready-fd", str(wfd)], pass_fds=(wfd,), cwd=ROOT, stdout=subprocess.DEVNULL)
        os.close(wfd)
        self.vms: list[VMProc] = []
        try:
            self.ready = _read_line(rfd, READY_TIMEOUT)
        finally:
            os.close(rfd)
        assert self.ready["ready"], self.ready
        mgmt.call(self.ready["mgmt"], "add_network", {"name": "dc", "prefix": "172.16.0.0/24",
                                                      "gateway": "172.16.0.1", "vlan": 0, "mtu": 1500,
                                                      "external": False})

    def vm(self, name: str, ip: str, apps: list[dict[str, Any]] | None = None, **extra: Any) -> VMProc:
        config = vm_config(name, ip, self.ready["data"], self.tmp_path, apps)
        config.update(extra)
        vm = VMProc(config, self.tmp_path)
        self.vms.append(vm)
        assert vm.ready["ready"], vm.ready
        return vm

    def close(self) -> None:
        for vm in self.vms:
            vm.kill()
        self.broker.kill()
        self.broker.wait(5)


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    f = Fabric(tmp_path)
    try:
        yield f
    finally:
        f.close()


def http(client: VMProc, method: str, path: str, body: str = "", host: str = LB, port: int = 46000) -> tuple[int, str]:
    """One HTTP/1.1 exchange written by hand and sent with ``nc`` from ``client``."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    if body or method == "PUT":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n"
    res = client.exec("nc", "-w", "3", host, str(port), input=head + "\r\n" + body)
    assert res["rc"] == 0, res
    status_line, _, rest = res["stdout"].partition("\r\n")
    assert status_line.startswith("HTTP/1.1 "), res
    return int(status_line.split()[1]), rest.split("\r\n\r\n", 1)[1]


def lb_config() -> dict[str, Any]:
    servers = [{"name": "be-1", "address": B1, "port": 8080}, {"name": "be-2", "address": B2, "port": 8080}]
    return {"cluster": "cluster1", "vips": [VIP],
            "frontends": [{"name": "web", "bind": f"{VIP}:80", "default_backend": "web"}],
            "backends": [{"name": "web", "balance": "roundrobin", "servers": servers}]}


def rows(lb: VMProc) -> dict[str, dict[str, Any]]:
    return {r["svname"]: r for r in lb.call("lb_stats")["rows"]}


def get_via_vip(client: VMProc, path: str) -> str:
    status, body = http(client, "GET", path, host=VIP, port=80)
    assert status == 200, (status, body)
    return body


def test_haproxy_vm(fabric: Fabric) -> None:
    apps = [{"kind": "http", "port": 8080}]
    fabric.vm("be-1", B1, apps)
    b2 = fabric.vm("be-2", B2, apps)
    lb = fabric.vm("cluster1-lb", LB, kind="haproxy", cluster="cluster1", time_scale=TIME_SCALE)
    client = fabric.vm("client", CLIENT)
    assert lb.call("ping")["kind"] == "haproxy"

    # MOC's role: program the LB VM over the emulated network.
    status, body = http(client, "PUT", "/v1/config", json.dumps(lb_config()))
    assert status == 200, body
    assert json.loads(body) == {"generation": 1, "started": ["web"], "stopped": [], "claimed": [VIP],
                                "released": []}
    bad = lb_config()
    bad["backends"][0]["balance"] = "fastest"
    status, body = http(client, "PUT", "/v1/config", json.dumps(bad))
    assert status == 400
    assert json.loads(body)["error"].startswith("backends[0].balance: unknown algorithm 'fastest'")

    # keepalived: the VIP is claimed and re-announced.
    assert {"nic": "eth0", "ips": (VIP,)} in lb.call("stats")["announcing"]
    res = client.exec("ping", "-c", "1", "-W", "2", VIP)
    assert res["rc"] == 0, res

    # Round robin over the two backends; each sees the LB VM as its client.
    names = [get_via_vip(client, "/hostname").strip() for _ in range(4)]
    assert sorted(names) == ["be-1", "be-1", "be-2", "be-2"] and names[0] != names[1]
    assert get_via_vip(client, "/clientip").split(":")[0] == LB
    r = rows(lb)
    assert (r["be-1"]["lbtot"], r["be-2"]["lbtot"], r["FRONTEND"]["stot"]) == ("3", "2", "5")

    # The cfg it runs.
    cfg = lb.call("lb_config")
    assert f"    bind {VIP}:80" in cfg["cfg"].splitlines()
    assert f"    server be-1 {B1}:8080 check inter 100ms rise 2 fall 3" in cfg["cfg"].splitlines()
    assert cfg["config"]["backends"][0]["check"]["inter"] == pytest.approx(INTER)

    # A backend VM dies: its server goes DOWN after fall x inter; traffic goes to the other.
    wait_for(lambda: rows(lb)["be-2"]["status"] == "UP", "be-2 fully UP")
    b2.kill()
    killed = time.monotonic()
    down = wait_for(lambda: (r := rows(lb))["be-2"]["status"] == "DOWN" and r, "be-2 DOWN")
    took = time.monotonic() - killed
    assert 2 * INTER <= took < 25 * INTER, took  # fall (3) x inter nominal; slack for a busy machine
    assert down["be-2"]["check_status"] in ("L4TOUT", "L4CON") and down["be-2"]["chkdown"] == "1"
    assert (down["BACKEND"]["status"], down["BACKEND"]["act"]) == ("UP", "1")
    assert [get_via_vip(client, "/hostname").strip() for _ in range(3)] == ["be-1"] * 3
    # The stats CSV, over HTTP from another VM, shows it.
    status, csv = http(client, "GET", "/v1/stats")
    assert status == 200 and csv.startswith("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,")
    by_name = {row["svname"]: row for row in parse_csv(csv)}
    assert by_name["be-2"]["status"] == "DOWN" and by_name["be-2"]["lbtot"] == "2"
    assert by_name["be-1"]["lbtot"] == "6" and by_name["be-1"]["status"] == "UP"

    # The LB VM crashes and comes back: its disk still holds the config.
    lb.kill()
    lb2 = fabric.vm("cluster1-lb", LB, kind="haproxy", cluster="cluster1", time_scale=TIME_SCALE)
    assert lb2.call("lb_config")["generation"] == 1
    wait_for(lambda: get_via_vip(client, "/hostname").strip() == "be-1", "the VIP served again")

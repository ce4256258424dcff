"""Helpers the integration tests share (imported by module name: pytest puts this directory
on sys.path for the test modules beside it)."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from agents import mgmt

T = TypeVar("T")

# The AKS network most integration scenarios share (static IP model: node and VIP pools).
AKS_NET = """\
  - name: aks-net
    vswitchName: External
    ipAddressPrefix: 172.16.0.0/24
    gateway: 172.16.0.1
    dnsServers: [172.16.0.2]
    k8sNodeIpPoolStart: 172.16.0.20
    k8sNodeIpPoolEnd: 172.16.0.99
    vipPoolStart: 172.16.0.150
    vipPoolEnd: 172.16.0.199
"""


def one_cluster(name: str, cluster: str, *, time_scale: float, plugin: str = "calico", nodes: int = 2,
                cluster_keys: str = "", networks: str = "", rest: str = "") -> str:
    """A scenario: ``aks-net`` (plus ``networks``, YAML list items), MOC on it, and one workload
    cluster of ``nodes`` Linux nodes; ``cluster_keys`` are extra lines of the cluster (4-space
    indented), ``rest`` extra top-level sections (clients, dns)."""
    return (f"name: {name}\ntime_scale: {time_scale}\nnetworks:\n{AKS_NET}{networks}"
            "management:\n  network: aks-net\n  cloudAgentIp: 172.16.0.5\n"
            f"clusters:\n  - name: {cluster}\n    vnet: aks-net\n    primaryNetworkPlugin: {plugin}\n{cluster_keys}"
            f"    nodePools:\n      - {{name: {cluster}-linux, osType: linux, nodeCount: {nodes}}}\n{rest}")


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

    def __init__(self, hostagent: str, apiserver: str, deployment: str = "") -> None:
        self.hostagent = hostagent
        self.apiserver = apiserver  # the control-plane VM whose `api` verb the calls use
        self.deployment = deployment

    def hcinet(self, *argv: str) -> tuple[int, str, str]:
        """A user command, as ``hcinet ARGV --deployment NAME`` runs it (in process); for
        ``exec`` / ``vm exec`` hcinet's options go before the pod / VM name."""
        from scenarios import cli

        args = list(argv)
        at = 2 if args[:2] == ["vm", "exec"] else 1 if args[:1] == ["exec"] else len(args)
        args[at:at] = ["--deployment", self.deployment]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(args)
        return rc, out.getvalue(), err.getvalue()

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

"""A datacenter DNS VM from the scenario, through the real runner, host agent, broker, MOC and
VM processes: a client VM's tools resolve names through it (``hcinet vm exec``), unknown
names fail in the real tools' words, address literals ask it nothing, and ``hcinet status``
warns about a dnsServers address no DNS VM holds."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import trio

from scenarios import cli, rundir, runner, schema

DEPLOYMENT = "dns-t"
WEB, CLIENT, DNS, NO_DNS = "172.16.0.10", "172.16.0.11", "172.16.0.2", "172.16.0.3"
SCENARIO = f"""
name: dns
time_scale: 0.1
networks:
  - name: aks-net
    vswitchName: External
    ipAddressPrefix: 172.16.0.0/24
    gateway: 172.16.0.1
    dnsServers: [{DNS}, {NO_DNS}]     # the second is held by no DNS VM: "external"
    k8sNodeIpPoolStart: 172.16.0.20
    k8sNodeIpPoolEnd: 172.16.0.99
    vipPoolStart: 172.16.0.150
    vipPoolEnd: 172.16.0.199
management: {{network: aks-net, cloudAgentIp: 172.16.0.5}}
dns:
  - name: dc-dns
    network: aks-net
    ip: {DNS}
    records:
      - {{name: db.corp.example, type: A, value: {WEB}}}
      - {{name: www.corp.example, type: CNAME, value: db.corp.example}}
clients:
  - {{name: web, network: aks-net, ip: {WEB}, apps: [{{kind: http, port: 8080}}]}}
  - {{name: client, network: aks-net, ip: {CLIENT}}}
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[runner.Deployment]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(rundir.ENV_STATE_DIR, str(tmp_path_factory.mktemp("hcinet-state")))
        mp.delenv("HCINET_DEPLOYMENT", raising=False)
        mp.delenv("HCINET_VM_COMMAND", raising=False)
        mp.delenv("HCINET_BROKER_COMMAND", raising=False)
        dep = trio.run(partial(runner.up, schema.loads(SCENARIO), DEPLOYMENT, out=io.StringIO()))
        try:
            yield dep
        finally:
            trio.run(partial(runner.down, DEPLOYMENT, out=io.StringIO()))


def hcinet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["-d", DEPLOYMENT, *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def exec_(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return hcinet(capsys, "vm", "exec", "--no-stdin", "client", "--", *argv)


def dns_queries(dep: runner.Deployment) -> int:
    async def ask() -> Any:
        endpoint = await runner.endpoint_of(dep.hostagent, "dc-dns")
        return await runner.call(endpoint, "dns_stats", {})
    return int(trio.run(ask)["queries"])


def test_the_dns_vm_is_created_by_moc_and_every_vm_resolves_through_it(deployment: runner.Deployment) -> None:
    for name in ("web", "client", "dc-dns", schema.MOC_VM):
        config = json.loads((deployment.run_dir.vms / f"{name}.json").read_text())
        assert config["dns"] == {"nameservers": [DNS, NO_DNS]}, name
    config = json.loads((deployment.run_dir.vms / "dc-dns.json").read_text())
    assert config["kind"] == "dns" and config["records"][0] == {"name": "db.corp.example", "type": "A", "value": WEB}


def test_tools_reach_names_through_the_dns_vm(deployment: runner.Deployment,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert exec_(capsys, "curl", "-s", "http://db.corp.example:8080/hostname") == (0, "web\n", "")
    rc, out, err = exec_(capsys, "ping", "-c", "1", "db.corp.example")
    assert rc == 0, err
    assert out.startswith(f"PING db.corp.example ({WEB}) 56(84) bytes of data.\n")
    assert f"64 bytes from {WEB} ({WEB}): icmp_seq=1 ttl=64" in out  # no PTR record: getnameinfo's fallback
    rc, out, err = exec_(capsys, "nslookup", "www.corp.example")
    assert rc == 0, err
    assert out.startswith(f"Server:\t\t{DNS}\nAddress:\t{DNS}#53\n\n")
    assert "www.corp.example\tcanonical name = db.corp.example.\n" in out
    assert f"Name:\tdb.corp.example\nAddress: {WEB}\n" in out
    rc, _, err = exec_(capsys, "nc", "-z", "-v", "www.corp.example", "8080")
    assert rc == 0 and err.startswith("Connection to www.corp.example 8080 port [tcp/")


def test_unknown_names_fail_in_the_real_tools_words(deployment: runner.Deployment,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    name = "nope.corp.example"
    assert exec_(capsys, "curl", f"http://{name}:8080/") == (6, "", f"curl: (6) Could not resolve host: {name}\n")
    assert exec_(capsys, "ping", "-c", "1", name) == (2, "", f"ping: {name}: Name or service not known\n")
    assert exec_(capsys, "nc", "-z", name, "80") == (
        1, "", f'nc: getaddrinfo for host "{name}" port 80: Name or service not known\n')
    rc, out, _ = exec_(capsys, "nslookup", name)
    assert rc == 1 and f"** server can't find {name}: NXDOMAIN" in out


def test_address_literals_ask_no_dns(deployment: runner.Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    before = dns_queries(deployment)
    assert exec_(capsys, "curl", "-s", f"http://{WEB}:8080/hostname") == (0, "web\n", "")
    rc, out, _ = exec_(capsys, "ping", "-c", "1", WEB)
    assert rc == 0 and re.search(rf"^64 bytes from {WEB}: icmp_seq=1 ", out, re.M)
    assert exec_(capsys, "nc", "-z", WEB, "8080")[0] == 0
    assert dns_queries(deployment) == before
    exec_(capsys, "ping", "-c", "1", "db.corp.example")
    assert dns_queries(deployment) > before  # the counter does move for a name


def test_status_warns_about_a_dns_server_no_vm_holds(deployment: runner.Deployment,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = hcinet(capsys, "status")
    assert rc == 0, err
    warnings = out.split("\nwarnings:\n", 1)[1] if "\nwarnings:\n" in out else ""
    assert f"network aks-net: dnsServers {NO_DNS} is no DNS VM of this deployment" in warnings
    assert f"dnsServers {DNS} " not in warnings
    assert re.search(r"^dc-dns\s+dns\s", out, re.M)  # the VM table shows its kind


def test_a_scenario_dns_vm_must_sit_at_a_dns_server_address() -> None:
    doc = SCENARIO.replace(f"ip: {DNS}\n", "ip: 172.16.0.4\n")
    with pytest.raises(schema.ScenarioError, match=r"^dns\[0\]\.ip: 172\.16\.0\.4 is not one of network aks-net's "
                                                   rf"dnsServers \({DNS}, {NO_DNS}\): no VM would ask it$"):
        schema.loads(doc)

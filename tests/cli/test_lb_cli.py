"""``hcinet lb show`` and ``hcinet moc get``, with MOC's and the LB VM's management calls faked;
and the duplicate-VIP warning of MOC's ``status``."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from agents.haproxy.core import STAT_FIELDS
from agents.moc.agent import duplicate_vip_warnings
from scenarios import aks, cli, lb

CSV = ("# " + ",".join(STAT_FIELDS) + ",\n"
       + ",".join({"pxname": "svc-80", "svname": "FRONTEND", "status": "OPEN", "stot": "7"}.get(f, "")
                  for f in STAT_FIELDS) + ",\n")
STATS_ROWS = [
    {"pxname": "svc-80", "svname": "FRONTEND", "status": "OPEN", "scur": "0", "stot": "7", "chkfail": "",
     "check_status": ""},
    {"pxname": "svc-80", "svname": "cluster1-linux-0", "status": "UP", "scur": "1", "stot": "4", "chkfail": "0",
     "check_status": "L4OK"},
    {"pxname": "svc-80", "svname": "cluster1-linux-1", "status": "DOWN", "scur": "0", "stot": "3", "chkfail": "5",
     "check_status": "L4TOUT"},
]
CFG = "global\n    maxconn 4096\n\nfrontend svc-80\n    bind 172.16.0.152:80\n"


def lb_row(cluster: str, vip: str, svc_vip: str | None, port: int, network: str = "aks-net",
           sku: str = "HAProxy") -> dict[str, Any]:
    services = [{"service": "default/web", "vip": svc_vip, "ports": [port], "internal": False}] if svc_vip else []
    return {"name": f"{cluster}-lb", "cluster": cluster, "network": network, "sku": sku,
            "vip": vip, "lbVm": f"{cluster}-lb" if sku == "HAProxy" else None, "programmed": True, "services": services,
            "frontends": [{"name": "apiserver", "bind": f"{vip}:6443", "backend": "apiserver"}]
            + ([{"name": f"svc-{port}", "bind": f"{svc_vip}:{port}", "backend": f"svc-{port}"}] if svc_vip else []),
            "backends": []}


CONFLICT = [lb_row("cluster1", "172.16.0.150", "172.16.0.152", 80),
            lb_row("cluster2", "172.16.0.151", "172.16.0.152", 8080),
            lb_row("cluster3", "172.16.0.153", None, 0, sku="none")]
WARNING = ("VIP 172.16.0.152 is used by load balancers of clusters cluster1 and cluster2 on network aks-net "
           "(known issue: clusters sharing an AksHciClusterNetwork with workloads on different ports); redeploy "
           "on the same port or give each cluster its own network")
NICS = [{"name": "cluster1-linux-0-eth0", "vm": "cluster1-linux-0", "network": "aks-net", "segment": "aks-net",
         "ip": "172.16.0.22", "mac": "02:00:00:00:00:16", "dhcp": False}]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """MOC answers ``loadbalancers``/``networkinterfaces`` from CONFLICT/NICS; each LB VM
    answers ``lb_config``/``lb_stats``.  Records (target, verb)."""
    seen: list[tuple[str, str]] = []

    async def moc_call(ns: Any, verb: str, args: Any = None, timeout: float = 0) -> Any:
        seen.append(("moc", verb))
        return {"loadbalancers": CONFLICT, "networkinterfaces": NICS}[verb]

    async def vm_call(ns: Any, vm: str, verb: str) -> Any:
        seen.append((vm, verb))
        return {"lb_config": {"cfg": CFG, "config": {}, "generation": 3},
                "lb_stats": {"csv": CSV, "rows": STATS_ROWS}}[verb]

    monkeypatch.setattr(aks, "moc_call", moc_call)
    monkeypatch.setattr(lb, "vm_call", vm_call)
    return seen


def test_lb_show_prints_the_cfg_and_a_stats_table(calls: list[tuple[str, str]],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lb", "show", "cluster2"]) == 0
    out = capsys.readouterr().out
    assert ("cluster2-lb", "lb_config") in calls and ("cluster2-lb", "lb_stats") in calls
    assert "    bind 172.16.0.152:80\n" in out
    table = out.split("# stats of cluster2-lb\n")[1].splitlines()
    assert table[0].split() == ["PXNAME", "SVNAME", "STATUS", "SCUR", "STOT", "CHKFAIL", "CHECK_STATUS"]
    assert table[3].split() == ["svc-80", "cluster1-linux-1", "DOWN", "0", "3", "5", "L4TOUT"]
    assert table[1].split() == ["svc-80", "FRONTEND", "OPEN", "0", "7", "-", "-"]


def test_lb_show_csv_keeps_haproxys_header(calls: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lb", "show", "cluster1", "--csv"]) == 0
    out = capsys.readouterr().out
    assert out.endswith(CSV)
    assert "\n# pxname,svname,qcur,qmax,scur," in out


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_lb_show_json_is_cfg_and_rows(calls: list[tuple[str, str]], fmt: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lb", "show", "cluster1", "-o", fmt]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert doc == {"cfg": CFG, "rows": STATS_ROWS}
    assert err == ""


@pytest.mark.parametrize(("cluster", "text"), [
    ("nope", "hcinet: error: no cluster named nope (clusters: cluster1, cluster2, cluster3)\n"),
    ("cluster3", "hcinet: error: cluster cluster3 has loadBalancerSku: none: no load balancer VM "
                 "(kube-vip on the control plane serves its API server VIP)\n"),
])
def test_lb_show_errors_in_one_line(calls: list[tuple[str, str]], cluster: str, text: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lb", "show", cluster]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", text)
    assert not [c for c in calls if c[0] != "moc"]  # no LB VM asked


def test_moc_get_loadbalancers_table_and_duplicate_vip_warning(calls: list[tuple[str, str]],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["moc", "get", "loadbalancers"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "CLUSTER", "NETWORK", "SKU", "LB-VM", "VIPS", "PORTS", "SERVICES",
                                "PROGRAMMED"]
    assert lines[2].split() == ["cluster2-lb", "cluster2", "aks-net", "HAProxy", "cluster2-lb",
                                "172.16.0.151,172.16.0.152", "6443,8080", "default/web", "yes"]
    assert lines[3].split()[3:5] == ["none", "-"]
    assert err == f"warning: {WARNING}\n"


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_moc_get_json_is_a_list_and_the_warning_stays_on_stderr(calls: list[tuple[str, str]], fmt: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["moc", "get", "lb", "-o", fmt]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert doc["kind"] == "List" and doc["items"] == CONFLICT
    assert "VIP 172.16.0.152" in err


def test_moc_get_networkinterfaces(calls: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["moc", "get", "networkinterfaces"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "IP", "MAC", "NETWORK", "VM", "DHCP"]
    assert lines[1].split() == ["cluster1-linux-0-eth0", "172.16.0.22", "02:00:00:00:00:16", "aks-net",
                                "cluster1-linux-0", "no"]
    assert err == "" and calls == [("moc", "networkinterfaces")]
    assert cli.main(["moc", "get", "nics", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == NICS
    assert cli.main(["moc", "get", "pods"]) == 1
    assert "unknown kind 'pods'" in capsys.readouterr().err


def test_duplicate_vip_warnings_only_across_clusters_on_one_network() -> None:
    assert duplicate_vip_warnings(CONFLICT) == [WARNING]
    # one cluster sharing a VIP over ports: fine
    assert duplicate_vip_warnings([lb_row("cluster1", "172.16.0.150", "172.16.0.152", 80)]) == []
    # the same address on two different networks is two VIPs
    assert duplicate_vip_warnings([lb_row("cluster1", "172.16.0.150", "10.0.0.5", 80, network="a"),
                                   lb_row("cluster2", "172.16.1.150", "10.0.0.5", 81, network="b")]) == []
    three = CONFLICT[:2] + [lb_row("cluster0", "172.16.0.140", "172.16.0.152", 443)]
    assert duplicate_vip_warnings(three) == [WARNING.replace("cluster1 and cluster2", "cluster0, cluster1 and cluster2")]

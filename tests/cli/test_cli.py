"""The hcinet CLI: help for every verb, one-line errors with exit codes, up/down semantics."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scenarios import cli, rundir

ROOT = Path(__file__).resolve().parents[2]
FABRIC = str(ROOT / "scenarios" / "fabric-demo.yaml")
FAKE = ROOT / "tests" / "hostagent" / "fake_child.py"
REAL_BROKER = (ROOT / "broker" / "process.py").exists()


def verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser (``("net", "impair")``, ...)."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((*path, name))
                out += verbs(sub, (*path, name))
    return out


REQUIRED = {("up",), ("down",), ("status",), ("vm", "list"), ("vm", "kill"), ("vm", "stop"), ("vm", "start"),
            ("vm", "exec"), ("vm", "claim"), ("vm", "release"), ("net", "counters"), ("net", "impair"), ("net", "clear"), ("net", "partition"),
            ("net", "heal"), ("net", "conflicts"), ("net", "routes"), ("logs",), ("demo",),
            # step 2
            ("get",), ("network", "create"), ("network", "get"), ("cluster", "create"), ("cluster", "delete"),
            ("cluster", "list"), ("nodepool", "create"), ("nodepool", "scale"), ("nodepool", "delete")}


def test_every_required_verb_exists() -> None:
    assert REQUIRED <= set(verbs(cli.build_parser()))


@pytest.mark.parametrize("path", verbs(cli.build_parser()), ids=" ".join)
def test_every_verb_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([*path, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hcinet {' '.join(path)}")
    assert "--deployment" in out
    assert "%%" not in out  # argparse %-formats argument help, never descriptions
    # a description beyond the usage line: at least one sentence of explanation
    assert len([ln for ln in out.splitlines() if ln and not ln.startswith(("usage", " "))]) >= 2


def test_top_level_help_lists_the_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for verb in ("up", "down", "status", "vm", "net", "logs", "demo"):
        assert f"\n    {verb} " in out


def test_a_bare_group_shows_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["net"]) == 2
    out = capsys.readouterr().out
    assert "impair" in out and "partition" in out


@pytest.mark.parametrize("argv", [
    ["net", "impair", "--nic", "vm-a", "--delay", "fast"],
    ["net", "impair", "--nic", "vm-a", "--pair", "a", "b", "--loss", "1%"],
    ["net", "impair", "--loss", "120%", "--network", "dc"],
    ["net", "partition", "--a", "vm-a"],
    ["vm", "kill"],
    ["frobnicate"],
])
def test_usage_errors_are_one_line_with_exit_code_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def test_unit_parsers_follow_tc() -> None:
    assert cli.duration_ms("50ms") == 50 and cli.duration_ms("1.5s") == 1500 and cli.duration_ms("200us") == 0.2
    assert cli.duration_ms("7") == 7
    assert cli.percent("20%") == 20 and cli.percent("0.5") == 0.5
    assert cli.fraction("25%") == 0.25 and cli.fraction("0.3") == 0.3
    assert cli.rate_mbit("10mbit") == 10 and cli.rate_mbit("500kbit") == 0.5 and cli.rate_mbit("1mbps") == 8
    for parse, text in ((cli.duration_ms, "5 parsecs"), (cli.percent, "101%"), (cli.fraction, "2"),
                        (cli.rate_mbit, "0mbit"), (cli.rate_mbit, "10furlongs")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_table_aligns_columns_like_kubectl() -> None:
    text = cli.table(["name", "pid"], [["vm-a", 12], ["broker", None]])
    assert text.splitlines() == ["NAME     PID", "vm-a     12", "broker   -"]


# --- against a deployment -------------------------------------------------------------------

@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HCINET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HCINET_DEPLOYMENT", raising=False)
    return tmp_path / "state"


@pytest.fixture
def fakes(state: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HCINET_VM_COMMAND", f"{sys.executable} {FAKE} vm")
    monkeypatch.setenv("HCINET_BROKER_COMMAND", f"{sys.executable} {FAKE} broker")
    return state


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def alive_pids(rd: rundir.RunDir) -> list[int]:
    return [p for p in rd.read_pids().values() if rundir.pid_alive(p)]


def test_errors_are_one_line_with_exit_code_1(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["status"], ["vm", "list"], ["net", "counters"], ["vm", "kill", "vm-a"]):
        rc, out, err = run(capsys, *argv)
        assert (rc, out) == (1, "")
        assert err == "hcinet: error: deployment default is not running (start it with 'hcinet up')\n"
    rc, _, err = run(capsys, "up", str(state / "missing.yaml"))
    assert rc == 1 and err.count("\n") == 1 and "missing.yaml: cannot read" in err
    assert err.count("missing.yaml") == 1, err  # named once
    rc, _, err = run(capsys, "--deployment", "a/b", "status")
    assert (rc, err) == (1, "hcinet: error: deployment: 'a/b' is not a name (letters, digits, '-', '_', '.')\n")


def test_a_reader_that_goes_away_ends_hcinet_quietly(state: Path) -> None:
    """``hcinet status | head``: stdout's reader has gone (EPIPE); no error line, no traceback,
    the status of a process killed by SIGPIPE."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before hcinet writes a byte
    try:
        proc = subprocess.run([sys.executable, "-m", "scenarios.cli", "down"], stdout=w, stderr=subprocess.PIPE,
                              env={**os.environ, "HCINET_STATE_DIR": str(state)}, cwd=ROOT, timeout=30)
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr) == (141, b"")


def test_a_bad_scenario_is_refused_before_anything_starts(state: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnetworks:\n  - {name: dc, ipAddressPrefix: 10.0.0.0/33, gateway: 10.0.0.1}\n")
    rc, out, err = run(capsys, "up", str(bad))
    assert (rc, out) == (1, "")
    assert err == f"hcinet: error: {bad}: networks[0].ipAddressPrefix: 10.0.0.0/33 is not a prefix\n"
    assert not (state / "default").exists()


def test_up_twice_is_a_clear_error_and_down_leaves_nothing(fakes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd = rundir.for_deployment(None)
    rc, out, err = run(capsys, "up", FABRIC)
    try:
        assert rc == 0, err
        assert "vm-a  starting… ready (172.16.0.10)" in out and "deployment default is up: 3 VMs" in out
        agent_pid = rd.read_pids()["hostagent"]
        assert len(alive_pids(rd)) == 5  # host agent, broker, three VMs

        rc, out, err = run(capsys, "up", FABRIC)
        assert (rc, out) == (1, "")
        assert err == (f"hcinet: error: deployment default is already running (host agent pid {agent_pid}); "
                       "run 'hcinet down --deployment default' first\n")

        rc, out, _ = run(capsys, "status", "-o", "json")
        doc = json.loads(out)
        assert rc == 0 and doc["scenario"] == "fabric-demo"
        assert sorted((p["name"], p["state"]) for p in doc["processes"]) == [
            ("broker", "running"), ("vm-a", "running"), ("vm-b", "running"), ("vm-c", "running")]
        rc, out, _ = run(capsys, "status")
        assert rc == 0 and re.search(r"^vm-c +plain +- +running +203\.0\.113\.10$", out, re.M), out
        assert "conflicts: 0" in out

        rc, out, _ = run(capsys, "vm", "kill", "vm-b")
        assert rc == 0 and "vm-b: killed (SIGKILL)" in out
        rc, out, _ = run(capsys, "vm", "list", "-o", "json")
        assert {r["name"]: r["state"] for r in json.loads(out)["items"]}["vm-b"] == "crashed"
        rc, out, _ = run(capsys, "events", "-o", "json")
        assert any(e["kind"] == "vm-exited" and e["name"] == "vm-b" for e in json.loads(out)["items"])
    finally:
        pids = list(rd.read_pids().values())
        rc, out, _ = run(capsys, "down")
    assert rc == 0 and "deployment default is down" in out
    assert not any(rundir.pid_alive(p) for p in pids)
    assert rd.read_pids() == {}
    assert run(capsys, "down")[1] == "deployment default was not running\n"


def test_a_failed_up_tears_down_everything(fakes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: s\nnetworks:\n  - {name: dc, ipAddressPrefix: 10.0.0.0/24, gateway: 10.0.0.1}\n"
        "vms:\n  - {name: vm-a, network: dc, ip: 10.0.0.10}\n  - {name: broken-b, network: dc, ip: 10.0.0.11}\n")
    rd = rundir.for_deployment("other")
    rc, out, err = run(capsys, "up", str(scenario), "--deployment", "other")
    assert rc == 1
    assert err == ("hcinet: error: broken-b: exited with code 3 before it was ready "
                   "(last output: boom: bad config)\n")
    assert "broken-b  starting… FAILED" in out
    assert alive_pids(rd) == [] and rd.read_pids() == {}
    assert not rd.hostagent_json.exists() and not rd.state_json.exists()
    events = rd.read_events()
    started = {e.get("name", "hostagent") for e in events if e["kind"].endswith("-started")}
    exited = {e.get("name", "hostagent") for e in events if e["kind"].endswith("-exited")}
    # vm-a starts concurrently with broken-b, so it may or may not be ready before the failure
    # tears everything down; whatever started has exited, and broken-b never started.
    assert {"hostagent", "broker"} <= started <= {"hostagent", "broker", "vm-a"}
    assert exited >= started | {"broken-b"}


@pytest.mark.skipif(not REAL_BROKER, reason="broker/process.py does not exist yet: no real fabric to drive")
def test_the_real_fabric_end_to_end(state: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, err = run(capsys, "up", FABRIC)
    try:
        assert rc == 0, err
        rc, out, _ = run(capsys, "vm", "exec", "vm-a", "--", "ping", "-c", "2", "-i", "0.05", "203.0.113.10")
        assert rc == 0 and "2 received" in out
        # Standard input that is not a terminal goes to the tool: `echo ... | hcinet vm exec`.
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello echo\n")))
        rc, out, _ = run(capsys, "vm", "exec", "vm-a", "--", "nc", "-u", "-w", "0.5", "203.0.113.10", "7")
        assert (rc, out) == (0, "hello echo\n")
        # An IP conflict made from the CLI: vm-b claims vm-a's address, re-announcing it.
        rc, out, _ = run(capsys, "vm", "claim", "vm-b", "--nic", "eth0", "172.16.0.10", "--announce-interval", "50ms")
        assert (rc, out) == (0, "vm-b/eth0: claimed 172.16.0.10 (re-announced every 0.05 s until "
                                "'hcinet vm release')\n")
        rc, out, _ = run(capsys, "net", "conflicts", "-o", "json")
        assert [(e["ip"], e["previous"], e["owner"]) for e in json.loads(out)["items"]] == [
            ("172.16.0.10", "vm-a/eth0", "vm-b/eth0")]
        rc, out, _ = run(capsys, "vm", "release", "vm-b", "--nic", "eth0", "172.16.0.10")
        assert (rc, out) == (0, "vm-b/eth0: released 172.16.0.10\n")
        rc, out, _ = run(capsys, "vm", "claim", "vm-b", "172.16.0.99", "-o", "json")
        assert rc == 0 and json.loads(out) == {"nic": "eth0", "ips": ["172.16.0.99"]}
        rc, out, _ = run(capsys, "net", "partition", "--a", "vm-a", "--b", "vm-c")
        ident = out.strip()
        assert rc == 0 and ident.isdigit()
        rc, out, _ = run(capsys, "vm", "exec", "vm-a", "--", "ping", "-c", "1", "-W", "0.3", "203.0.113.10")
        assert rc == 1 and "0 received" in out
        assert run(capsys, "net", "heal", ident)[0] == 0
        rc, out, _ = run(capsys, "net", "counters", "-o", "json")
        counters: dict[str, Any] = json.loads(out)["nics"]
        assert counters["vm-a/eth0"]["drops"]["partition"] >= 1
        assert counters["vm-c/eth0"]["rx_packets"] >= 2
    finally:
        assert run(capsys, "down")[0] == 0

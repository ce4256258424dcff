"""The run directory of a deployment, and finding or starting its host agent.

Layout of ``${XDG_STATE_HOME:-~/.local/state}/hcinet/<deployment>/`` (``HCINET_STATE_DIR``
replaces ``.../hcinet`` for tests; the deployment name comes from ``--deployment``, else
``HCINET_DEPLOYMENT``, else ``default``)::

    hostagent.json   the host agent's management endpoint and pid (while it runs)
    state.json       what `hcinet up` brought up: the scenario document and every endpoint
    events.jsonl     one JSON event per line (VM started / exited, start failures, ...)
    pids/            <name>.pid for the host agent and each child it runs
    vms/             <vm>.json: each VM's config as given to the VM process
    logs/            <name>.out: stdout+stderr of each process; broker.log

The CLI is only a client: everything it knows about a running deployment comes from here
and from the host agent's management socket.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from agents import hostagent, mgmt, triozmq

ENV_STATE_DIR = "HCINET_STATE_DIR"
ENV_DEPLOYMENT = "HCINET_DEPLOYMENT"
DEFAULT_DEPLOYMENT = "default"
_NAME_RE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")

# Host agents this process started (pid -> Popen), so `down` can reap them: a test run that
# starts many deployments must not pile up zombies.
_spawned: dict[int, subprocess.Popen[bytes]] = {}


class RunDirError(Exception):
    """A deployment that cannot be found, named or started; one line."""


def state_base() -> Path:
    override = os.environ.get(ENV_STATE_DIR)
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "hcinet"


def deployment_name(name: str | None = None) -> str:
    name = name or os.environ.get(ENV_DEPLOYMENT) or DEFAULT_DEPLOYMENT
    if not _NAME_RE.match(name):
        raise RunDirError(f"deployment: {name!r} is not a name (letters, digits, '-', '_', '.')")
    return name


@dataclass(frozen=True, slots=True)
class RunDir:
    deployment: str
    path: Path

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def pids(self) -> Path:
        return self.path / "pids"

    @property
    def vms(self) -> Path:
        return self.path / "vms"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def hostagent_json(self) -> Path:
        return self.path / "hostagent.json"

    @property
    def state_json(self) -> Path:
        return self.path / "state.json"

    def log_of(self, name: str) -> Path:
        return self.logs / f"{name}.out"

    def ensure(self) -> None:
        for sub in (self.logs, self.pids, self.vms):
            sub.mkdir(parents=True, exist_ok=True)

    def read_pids(self) -> dict[str, int]:
        """``{name: pid}`` from ``pids/``; unreadable files are skipped."""
        out: dict[str, int] = {}
        for path in sorted(self.pids.glob("*.pid")) if self.pids.is_dir() else []:
            try:
                out[path.stem] = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        return out

    def clear_pids(self) -> None:
        for path in self.pids.glob("*.pid") if self.pids.is_dir() else []:
            path.unlink(missing_ok=True)

    def read_state(self) -> dict[str, Any] | None:
        return _read_json(self.state_json)

    def write_state(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.state_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_json)

    def read_events(self) -> list[dict[str, Any]]:
        events = []
        try:
            lines = self.events.read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def owns(self, pid: int) -> bool:
        """Is ``pid`` a live process of this deployment? (its command line names this run dir)

        Guards against pid reuse: a pid file left behind by a killed deployment may name an
        unrelated process by now.
        """
        return pid_alive(pid) and str(self.path) in cmdline(pid)


def for_deployment(name: str | None = None) -> RunDir:
    dep = deployment_name(name)
    return RunDir(dep, (state_base() / dep).absolute())


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True, slots=True)
class AgentInfo:
    mgmt: str
    pid: int


async def find_running(rd: RunDir, timeout: float = 2.0) -> AgentInfo | None:
    """The deployment's host agent if it is alive and answers ``ping``; else None."""
    info = _read_json(rd.hostagent_json)
    if not info or not isinstance(info.get("mgmt"), str) or not isinstance(info.get("pid"), int):
        return None
    if not rd.owns(info["pid"]):
        return None
    try:
        async with triozmq.TrioMgmtClient(info["mgmt"]) as client:
            reply = await client.call("ping", {}, timeout=timeout)
    except (TimeoutError, mgmt.RemoteError):
        return None
    if not isinstance(reply, dict) or reply.get("pid") != info["pid"]:
        return None
    return AgentInfo(info["mgmt"], info["pid"])


async def start_hostagent(rd: RunDir, timeout: float = 15.0) -> AgentInfo:
    """Start the deployment's host agent detached from this terminal; wait for its ready line.

    Its own session (no controlling terminal: closing the terminal or Ctrl-C does not reach
    it), stdin from /dev/null, output to ``logs/hostagent.out``.  It outlives this process.
    """
    rd.ensure()
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "agents.hostagent", "--run-dir", str(rd.path), "--ready-fd", str(write_fd)]
    log_path = rd.log_of("hostagent")
    try:
        popen = hostagent.spawn(argv, log_path, write_fd, die_with_parent=False, new_session=True)
    except OSError as exc:
        os.close(read_fd)
        raise RunDirError(f"host agent: cannot start ({exc})") from None
    finally:
        os.close(write_fd)
    _spawned[popen.pid] = popen
    try:
        ready = await hostagent.wait_ready(popen, read_fd, who="host agent", log_path=log_path,
                                           timeout=timeout)
    except hostagent.StartError as exc:
        raise RunDirError(str(exc)) from None
    return AgentInfo(str(ready["mgmt"]), popen.pid)


async def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` (any process, not only our child) has exited; True if it did."""
    popen = _spawned.pop(pid, None)
    if popen is not None:
        with trio.move_on_after(timeout):
            await hostagent.wait_exit(popen)
        return popen.returncode is not None
    if not pid_alive(pid):
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # A pidfd becomes readable when the process exits (pidfd_open(2)); no polling.
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)
    return not pid_alive(pid)

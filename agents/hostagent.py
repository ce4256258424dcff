"""The host agent: owns every broker and VM process of this machine.

This is the role MOC's node agent plays on a physical Azure Stack HCI host: it starts the VMs
of that host on request, watches them, reports the ones that die and stops them all cleanly.
It runs detached from any terminal (``scenarios/rundir.py`` starts it); the CLI is only a
client of its management socket.

    python -m agents.hostagent --run-dir DIR [--ready-fd N]

Run directory (``scenarios/rundir.py`` owns the layout): ``hostagent.json`` (endpoint, pid),
``pids/<name>.pid``, ``vms/<name>.json`` (each VM's config), ``logs/<name>.out`` (each
child's stdout and stderr), ``events.jsonl`` (one JSON event per line).

Children:

* are started with ``--ready-fd N`` and write one JSON line there when ready; the agent
  reads it from a pipe with a timeout, racing the process exiting early (no sleeps);
* die with the agent: ``PR_SET_PDEATHSIG=SIGKILL`` is set between fork and exec.  prctl(2)
  ties that signal to the *thread* that forked, so children are forked from the trio thread
  itself, never from a worker thread (``trio.run_process`` forks in a worker thread, which
  would kill the child when that idle thread retires);
* are watched through a pidfd (pidfd_open(2)): the exit wakes the trio loop, no polling.

``HCINET_VM_COMMAND`` / ``HCINET_BROKER_COMMAND`` (a command line, split like a shell would)
replace ``python -m agents.vm`` / ``python -m broker``: tests use them for stand-ins, and a
developer can run every VM under a profiler or another interpreter the same way.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import zmq

from agents import mgmt, triozmq

log = logging.getLogger("hcinet.hostagent")

READY_TIMEOUT = 15.0  # seconds a child may take to write its ready line
STOP_TIMEOUT = 5.0  # SIGTERM -> SIGKILL
DETACH_TIMEOUT = 2.0
MAX_EVENTS = 1000
AUTO_RESTART_TRIES = 5  # consecutive failed automatic restarts before the agent gives up
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # an RFC 1123 label, as Kubernetes names
BROKER = "broker"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _program(env_var: str, module: str) -> list[str]:
    override = os.environ.get(env_var)
    return shlex.split(override) if override else [sys.executable, "-m", module]


class StartError(Exception):
    """A child that did not become ready; the message names it and says why."""


# --- spawning a child and waiting for its ready line (shared with scenarios/rundir.py) -------

def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


def child_env() -> dict[str, str]:
    """The environment of a child: ours, with this source tree importable."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{PROJECT_ROOT}{os.pathsep}{path}" if path else str(PROJECT_ROOT)
    return env


def spawn(argv: list[str], log_path: Path, ready_w: int, *, die_with_parent: bool = True,
          new_session: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout+stderr to ``log_path`` and ``ready_w`` inherited."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            pass_fds=(ready_w,), env=child_env(), start_new_session=new_session,
            preexec_fn=_die_with(os.getpid()) if die_with_parent else None,
        )


async def wait_exit(popen: subprocess.Popen[bytes]) -> int:
    """Wait for a child to exit and reap it; return ``Popen.returncode`` (negative = signal)."""
    if popen.returncode is not None:  # reaped already: its pid may belong to someone else now
        return popen.returncode
    try:
        pidfd = os.pidfd_open(popen.pid)
    except ProcessLookupError:
        return popen.wait()
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)
    return popen.wait()


def log_tail(path: Path, limit: int = 200) -> str:
    """The last non-empty line of a child's log, to explain a failed start in one line."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


def exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


async def wait_ready(popen: subprocess.Popen[bytes], read_fd: int, *, who: str, log_path: Path,
                     timeout: float) -> dict[str, Any]:
    """Read the child's ready line from ``read_fd`` (taken over and closed), racing its exit.

    Returns the parsed line when it says ``ready: true``; otherwise kills the child and
    raises :class:`StartError` naming ``who`` and the reason.
    """
    buf = bytearray()
    exited: list[int] = []
    stream = trio.lowlevel.FdStream(read_fd)

    async def read_line(cancel: trio.CancelScope) -> None:
        while b"\n" not in buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            buf.extend(chunk)
        cancel.cancel()

    async def watch_exit(cancel: trio.CancelScope) -> None:
        exited.append(await wait_exit(popen))
        cancel.cancel()

    async with stream:
        with trio.move_on_after(timeout) as timer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_line, nursery.cancel_scope)
                nursery.start_soon(watch_exit, nursery.cancel_scope)
        if exited and b"\n" not in buf:
            # Everything the child wrote before exiting is in the pipe by now.
            buf.extend(_read_available(stream.fileno()))
    line = bytes(buf).split(b"\n", 1)[0].strip()
    if line:
        return await _accept(popen, line, who=who, log_path=log_path)
    if timer.cancelled_caught and not exited:
        await _kill(popen)
        raise StartError(f"{who}: not ready within {timeout:g} s{_hint(log_path)}")
    code = exited[0] if exited else await wait_exit(popen)
    raise StartError(f"{who}: {exit_text(code)} before it was ready{_hint(log_path)}")


def _read_available(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _hint(log_path: Path) -> str:
    tail = log_tail(log_path)
    return f" (last output: {tail})" if tail else f" (see {log_path})"


async def _accept(popen: subprocess.Popen[bytes], line: bytes, *, who: str, log_path: Path) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        await _kill(popen)
        raise StartError(f"{who}: unreadable ready line {line[:80]!r}")
    if msg.get("ready") is not True:
        await _kill(popen)
        raise StartError(f"{who}: {msg.get('error') or 'not ready'}")
    return msg


async def _kill(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.kill()
    with trio.move_on_after(STOP_TIMEOUT):
        await wait_exit(popen)


# --- the host agent -------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class Child:
    """One process the agent owns (the broker or a VM) and what became of it."""

    name: str
    kind: str  # "broker" | "vm"
    argv: list[str]
    config: dict[str, Any] | None = None
    popen: subprocess.Popen[bytes] | None = None
    state: str = "starting"  # starting | running | stopped | crashed
    mgmt: str | None = None
    data: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    stop_requested: bool = False
    started_at: float = 0.0
    exited: trio.Event = field(default_factory=trio.Event)

    @property
    def alive(self) -> bool:
        return self.popen is not None and not self.exited.is_set()

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "pid": self.popen.pid if self.popen else None,
                "state": self.state, "mgmt": self.mgmt, "data": self.data,
                "exit_code": self.exit_code, "signal": self.signal, "started_at": self.started_at}


class HostAgent:
    """The agent's state and its management verbs; processes run in ``nursery``."""

    def __init__(self, run_dir: Path, nursery: trio.Nursery) -> None:
        self.run_dir = run_dir
        self.nursery = nursery
        self.children: dict[str, Child] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._seq = itertools.count(1)
        self._new_event = trio.Event()  # set (and replaced) by every event: wakes `events` long polls
        self._restart_delay: dict[str, float] = {}  # VM name -> delay_s of its restart policy
        self.exit_requested = trio.Event()
        self._broker_client: triozmq.TrioMgmtClient | None = None
        # VMs are forked from a server that pre-imported the VM runtime (HCINET_FORKSERVER=0: off)
        # (agents/forkserver.py); `_forkserver_up` is set once it is ready (or failed to start).
        self.forkserver: Any = None
        self._forkserver_up: trio.Event | None = None
        self.handlers: dict[str, mgmt.Handler] = {
            "ping": self.ping, "start_broker": self.start_broker, "start_vm": self.start_vm,
            "restart_vm": self.restart_vm, "stop_vm": self.stop_vm, "kill_vm": self.kill_vm,
            "remove_vm": self.remove_vm, "list": self.list_children, "events": self.list_events, "shutdown": self.shutdown,
        }
        for sub in ("logs", "pids", "vms"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)

    # -- verbs --

    def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid(), "run_dir": str(self.run_dir)}

    async def start_broker(self, args: dict[str, Any]) -> dict[str, Any]:
        old = self.children.get(BROKER)
        if old is not None and old.alive:
            raise mgmt.MgmtError(f"broker: already running (pid {old.popen.pid if old.popen else '?'})")
        argv = [*_program("HCINET_BROKER_COMMAND", "broker"), "--data", "tcp://127.0.0.1:0",
                "--mgmt", "tcp://127.0.0.1:0", "--log", str(self.run_dir / "logs" / "broker.log")]
        seed = args.get("seed")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise mgmt.MgmtError(f"seed: expected an integer, got {seed!r}")
            argv += ["--seed", str(seed)]
        child = Child(name=BROKER, kind="broker", argv=argv)
        ready = await self._launch(child, _timeout(args))
        child.data = ready.get("data")
        if self._broker_client is not None:
            self._broker_client.close()
        self._broker_client = triozmq.TrioMgmtClient(str(child.mgmt))
        return {"data": child.data, "mgmt": child.mgmt, "pid": ready["pid"]}

    async def start_vm(self, args: dict[str, Any]) -> dict[str, Any]:
        if "config" not in args:
            return await self.restart_vm(args)
        config = mgmt.require(args, "config", dict)
        name = _vm_name(config.get("name"), "config.name")
        old = self.children.get(name)
        if old is not None and old.alive:
            raise mgmt.MgmtError(f"name: VM {name} is already {old.state} (pid {old.popen.pid if old.popen else '?'})")
        delay = _restart_policy(args.get("restart"))
        timeout = _timeout(args)
        if delay is None:
            self._restart_delay.pop(name, None)
        else:
            self._restart_delay[name] = delay
        return await self._start_vm(name, dict(config), timeout)

    async def restart_vm(self, args: dict[str, Any]) -> dict[str, Any]:
        """Start a stopped or crashed VM again with its saved config (a reboot if running)."""
        name = _vm_name(args.get("name"), "name")
        old = self.children.get(name)
        if old is None or old.kind != "vm" or old.config is None:
            raise mgmt.MgmtError(f"name: no VM named {name}{self._known()}")
        if old.alive:
            await self._stop(old, STOP_TIMEOUT)
        return await self._start_vm(name, old.config, _timeout(args))

    async def stop_vm(self, args: dict[str, Any]) -> dict[str, Any]:
        child = self._vm(args)
        timeout = args.get("timeout", STOP_TIMEOUT)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise mgmt.MgmtError(f"timeout: expected seconds > 0, got {timeout!r}")
        child.stop_requested = True  # also cancels a pending automatic restart of a crashed VM
        await self._stop(child, float(timeout))
        return child.row()

    async def remove_vm(self, args: dict[str, Any]) -> dict[str, Any]:
        """Delete a VM: stop it if it runs, forget it (no restart policy, gone from ``list``)
        and remove its config file.  Its log stays, as a deleted VM's logs do on the host."""
        child = self._vm(args)
        child.stop_requested = True  # also cancels a pending automatic restart
        self._restart_delay.pop(child.name, None)
        await self._stop(child, STOP_TIMEOUT)
        if self.children.get(child.name) is child:
            del self.children[child.name]
        _remove(self.run_dir / "vms" / f"{child.name}.json")
        row = child.row()
        self._event("vm-removed", name=child.name, was=row["state"])
        return {**row, "removed": True}

    async def kill_vm(self, args: dict[str, Any]) -> dict[str, Any]:
        """SIGKILL: the VM crashes as a powered-off machine would, with no clean detach."""
        child = self._vm(args)
        if child.alive and child.popen is not None:
            child.popen.kill()
            with trio.move_on_after(STOP_TIMEOUT + DETACH_TIMEOUT):
                await child.exited.wait()
        return child.row()

    def list_children(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [c.row() for c in self.children.values()]

    async def list_events(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """The last ``limit`` events; with ``since``, the first ``limit`` events after that seq
        (a cursor that never skips one), waiting up to ``wait_s`` for one to happen."""
        limit = args.get("limit", 100)
        if not isinstance(limit, int) or limit < 0:
            raise mgmt.MgmtError(f"limit: expected an integer >= 0, got {limit!r}")
        since = args.get("since")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
            raise mgmt.MgmtError(f"since: expected an event seq >= 0, got {since!r}")
        wait_s = args.get("wait_s", 0)
        if not isinstance(wait_s, int | float) or isinstance(wait_s, bool) or not 0 <= wait_s <= 600:
            raise mgmt.MgmtError(f"wait_s: expected seconds 0..600, got {wait_s!r}")
        if since is None:
            return list(self.events)[-limit:] if limit else []
        with trio.move_on_after(wait_s):
            while not self.events or self.events[-1]["seq"] <= since:
                await self._new_event.wait()
        return [e for e in self.events if e["seq"] > since][:limit]

    async def shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        stopped = await self.stop_all()
        self.exit_requested.set()
        return {"stopped": stopped}

    # -- process lifecycle --

    async def stop_all(self) -> list[str]:
        """Stop the VMs (concurrently), then the broker they are attached to."""
        vms = [c for c in self.children.values() if c.kind == "vm" and c.alive]
        async with trio.open_nursery() as nursery:
            for child in vms:
                nursery.start_soon(self._stop, child, STOP_TIMEOUT)
        names = [c.name for c in vms]
        broker = self.children.get(BROKER)
        if broker is not None and broker.alive:
            await self._stop(broker, STOP_TIMEOUT)
            names.append(BROKER)
        return names

    async def _start_vm(self, name: str, config: dict[str, Any], timeout: float) -> dict[str, Any]:
        broker = self.children.get(BROKER)
        if "broker" not in config:
            if broker is None or not broker.alive or broker.data is None:
                raise mgmt.MgmtError("broker: no broker is running (call start_broker first)")
            config["broker"] = broker.data
        config["run_dir"] = str(self.run_dir)
        path = self.run_dir / "vms" / f"{name}.json"
        _write_json(path, config)
        argv = [*_program("HCINET_VM_COMMAND", "agents.vm"), "--config", str(path)]
        child = Child(name=name, kind="vm", argv=argv, config=config)
        ready = await self._launch(child, timeout)
        return {"name": name, "mgmt": child.mgmt, "pid": ready["pid"]}

    async def _launch(self, child: Child, timeout: float) -> dict[str, Any]:
        """Spawn ``child``, start watching it, wait for its ready line; clean up on failure."""
        log_path = self.run_dir / "logs" / f"{child.name}.out"
        read_fd, write_fd = os.pipe()
        try:
            if child.kind == "vm" and self._forkserver_up is not None:
                await self._forkserver_up.wait()
            if child.kind == "vm" and self.forkserver is not None:
                args = child.argv[child.argv.index("--config"):]
                child.popen = await self.forkserver.spawn(args, log_path, write_fd)
            else:
                child.popen = spawn([*child.argv, "--ready-fd", str(write_fd)], log_path, write_fd)
        except OSError as exc:
            os.close(read_fd)
            raise mgmt.MgmtError(f"{child.name}: cannot start ({exc})") from None
        finally:
            os.close(write_fd)  # the child's copy is the only one left: its exit means EOF
        child.started_at = time.time()
        self.children[child.name] = child
        _write_pid(self.run_dir / "pids" / f"{child.name}.pid", child.popen.pid)
        self.nursery.start_soon(self._watch, child)
        try:
            ready = await wait_ready(child.popen, read_fd, who=child.name, log_path=log_path, timeout=timeout)
        except StartError as exc:
            child.stop_requested = True  # we killed it; its exit is not a crash of a running VM
            with trio.move_on_after(STOP_TIMEOUT):
                await child.exited.wait()
            child.state = "crashed"
            self._event("start-failed", name=child.name, kind_of=child.kind, reason=str(exc))
            raise mgmt.MgmtError(str(exc)) from None
        child.mgmt = ready.get("mgmt")
        child.state = "running"
        self._event(f"{child.kind}-started", name=child.name, pid=child.popen.pid, mgmt=child.mgmt)
        return {**ready, "pid": child.popen.pid}

    async def _watch(self, child: Child) -> None:
        """Reap the child when it exits, record why, and detach a dead VM from the broker."""
        assert child.popen is not None
        code = await wait_exit(child.popen)
        child.exit_code = code if code >= 0 else None
        child.signal = signal.Signals(-code).name if code < 0 else None
        was = child.state
        child.state = "stopped" if child.stop_requested else "crashed"
        _remove(self.run_dir / "pids" / f"{child.name}.pid")
        self._event(f"{child.kind}-exited", name=child.name, code=child.exit_code,
                    signal=child.signal, expected=child.stop_requested, was=was)
        if child.kind == "vm":
            await self._detach(child.name)
        child.exited.set()
        delay = self._restart_delay.get(child.name)
        if child.kind == "vm" and not child.stop_requested and delay is not None:
            self.nursery.start_soon(self._auto_restart, child, delay)

    async def _auto_restart(self, child: Child, delay: float, failures: int = 0) -> None:
        """A VM with a restart policy (the cloud agent: a failover-cluster role) that died
        without a `stop_vm` is started again after ``delay``, with its saved config; a failed
        start is retried (at least 1 s apart) up to AUTO_RESTART_TRIES times."""
        await trio.sleep(delay)
        if (self.exit_requested.is_set() or self.children.get(child.name) is not child or child.alive
                or child.stop_requested):
            return  # shutting down, started again or stopped meanwhile
        self._event("vm-auto-restart", name=child.name, delay_s=delay, attempt=failures + 1)
        assert child.config is not None
        try:
            await self._start_vm(child.name, child.config, READY_TIMEOUT)
        except mgmt.MgmtError as exc:
            log.warning("%s: automatic restart failed: %s", child.name, exc)
            latest = self.children.get(child.name)
            if latest is not None and failures + 1 < AUTO_RESTART_TRIES and child.name in self._restart_delay:
                self.nursery.start_soon(self._auto_restart, latest, max(delay, 1.0), failures + 1)

    async def _detach(self, name: str) -> None:
        """Tell the broker a VM is gone (its NICs stop claiming their IPs: traffic -> no_route)."""
        broker = self.children.get(BROKER)
        if self._broker_client is None or broker is None or not broker.alive:
            return
        try:
            await self._broker_client.call("detach_vm", {"vm": name}, timeout=DETACH_TIMEOUT)
        except (mgmt.RemoteError, TimeoutError) as exc:
            log.warning("broker: detach_vm %s: %s", name, exc)

    async def _stop(self, child: Child, timeout: float) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL (what `systemctl stop` does)."""
        if not child.alive or child.popen is None:
            return
        child.stop_requested = True
        child.popen.terminate()
        with trio.move_on_after(timeout):
            await child.exited.wait()
        if not child.exited.is_set():
            log.warning("%s: no exit %g s after SIGTERM, sending SIGKILL", child.name, timeout)
            child.popen.kill()
            with trio.move_on_after(STOP_TIMEOUT + DETACH_TIMEOUT):
                await child.exited.wait()

    # -- helpers --

    def _vm(self, args: dict[str, Any]) -> Child:
        name = mgmt.require(args, "name", str)
        child = self.children.get(name)
        if child is None or child.kind != "vm":
            raise mgmt.MgmtError(f"name: no VM named {name}{self._known()}")
        return child

    def _known(self) -> str:
        names = sorted(c.name for c in self.children.values() if c.kind == "vm")
        return f" (known: {', '.join(names)})" if names else " (no VMs)"

    def _event(self, kind: str, **fields: Any) -> None:
        event = {"seq": next(self._seq), "time": time.time(), "kind": kind, **fields}
        self.events.append(event)
        self._new_event.set()
        self._new_event = trio.Event()
        log.info("event %s", json.dumps(event))
        try:
            with open(self.run_dir / "events.jsonl", "a") as f:
                f.write(json.dumps(event) + "\n")
        except OSError as exc:
            log.warning("events.jsonl: %s", exc)

    async def start_forkserver(self) -> None:
        """Start the fork server in the background; VM starts wait for it (see __init__)."""
        from agents import forkserver

        assert self._forkserver_up is not None
        try:
            self.forkserver = await forkserver.start(self.run_dir)
        except forkserver.ForkServerError as exc:
            log.warning("%s; starting VMs without it", exc)
        self._forkserver_up.set()

    def close(self) -> None:
        if self._broker_client is not None:
            self._broker_client.close()
        if self.forkserver is not None:
            self.forkserver.close()  # the server exits when its socket closes


def _timeout(args: dict[str, Any]) -> float:
    value = args.get("timeout", READY_TIMEOUT)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise mgmt.MgmtError(f"timeout: expected seconds > 0, got {value!r}")
    return float(value)


def _restart_policy(policy: Any) -> float | None:
    """``restart: {"delay_s": X}`` of ``start_vm``: the delay, or None without a policy."""
    if policy is None:
        return None
    if not isinstance(policy, dict) or set(policy) != {"delay_s"}:
        raise mgmt.MgmtError(f'restart: expected {{"delay_s": seconds}}, got {policy!r}')
    delay = policy["delay_s"]
    if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay <= 3600:
        raise mgmt.MgmtError(f"restart.delay_s: expected seconds 0..3600, got {delay!r}")
    return float(delay)


def _vm_name(name: Any, key: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise mgmt.MgmtError(f"{key}: {name!r} is not a VM name (lower-case letters, digits and '-')")
    if name == BROKER:
        raise mgmt.MgmtError(f"{key}: {name!r} is reserved for the broker")
    return name


def _write_json(path: Path, obj: Any) -> None:
    """Write atomically (rename), so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _write_pid(path: Path, pid: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# --- the process ----------------------------------------------------------------------------

def _other_agent(run_dir: Path) -> int | None:
    """The pid of another live host agent owning ``run_dir``, if any."""
    try:
        pid = int((run_dir / "pids" / "hostagent.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and b"agents.hostagent" in cmdline else None


def _forkserver_enabled() -> bool:
    from agents import forkserver  # stdlib only at import; trio is imported when it is used

    return forkserver.enabled()


def _say_ready(ready_fd: int | None, msg: dict[str, Any]) -> None:
    if ready_fd is None:
        print(json.dumps(msg), flush=True)
        return
    with os.fdopen(ready_fd, "w") as f:
        f.write(json.dumps(msg) + "\n")


async def run(run_dir: Path, ready_fd: int | None) -> None:
    """The agent's life: bind, announce, serve until `shutdown` or SIGTERM/SIGINT, stop all."""
    run_dir.mkdir(parents=True, exist_ok=True)
    other = _other_agent(run_dir)
    if other is not None:
        _say_ready(ready_fd, {"ready": False, "error": f"{run_dir} is owned by host agent pid {other}"})
        raise SystemExit(1)
    sock: triozmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:0")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            agent = HostAgent(run_dir, nursery)
            await nursery.start(triozmq.serve_mgmt, sock, agent.handlers)
            nursery.start_soon(_on_signals, signals, agent)
            if _forkserver_enabled():
                agent._forkserver_up = trio.Event()  # before the ready line: no VM starts without it
                nursery.start_soon(agent.start_forkserver)
            _write_json(run_dir / "hostagent.json", {"mgmt": endpoint, "pid": os.getpid(),
                                                    "run_dir": str(run_dir), "started_at": time.time()})
            _write_pid(run_dir / "pids" / "hostagent.pid", os.getpid())
            agent._event("hostagent-started", pid=os.getpid(), mgmt=endpoint)
            _say_ready(ready_fd, {"ready": True, "mgmt": endpoint, "pid": os.getpid()})
            await agent.exit_requested.wait()
            await agent.stop_all()
            agent._event("hostagent-exited", pid=os.getpid())
            agent.close()
            nursery.cancel_scope.cancel()
    _remove(run_dir / "pids" / "hostagent.pid")
    _remove(run_dir / "hostagent.json")
    triozmq.close(sock, linger_ms=1000)  # lets the reply to `shutdown` reach its caller


async def _on_signals(signals: Any, agent: HostAgent) -> None:
    async for signum in signals:
        log.info("%s: stopping everything", signal.Signals(signum).name)
        agent.exit_requested.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.hostagent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="the deployment's run directory")
    parser.add_argument("--ready-fd", type=int, help="write one JSON ready line to this fd, then close it")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(run, opts.run_dir.resolve(), opts.ready_fd)


if __name__ == "__main__":
    main()

"""A fork server for VM processes: import the VM runtime once, fork a VM per request.

Every VM process otherwise pays Python's start-up and the import of the VM runtime, uvloop,
pyzmq, h11 and its kind's code (~0.25 s of CPU on this machine) and holds its own copy of all
those module objects (most of its ~18 MB PSS).  The fork server imports them once, freezes them
out of the garbage collector's reach (``gc.freeze()``: a collection in a child would otherwise
write to every object's header and un-share its page), and forks: a child starts in a few
milliseconds and shares the unchanged pages copy-on-write with the server and its siblings —
PSS divides a shared page among the processes that map it.

On by default: the host agent uses it for VMs unless ``HCINET_FORKSERVER=0`` (or a
``HCINET_VM_COMMAND`` override is set); it starts the server next to itself and keeps
everything else as it was — the run directory's files, ready lines, logs, pid files, events.

    python -m agents.forkserver --run-dir DIR --socket-fd N [--ready-fd M]

Protocol (a SOCK_SEQPACKET unix socket pair, one request in flight at a time): the host agent
sends ``{"args": ["--config", PATH]}`` (JSON) with three file descriptors attached (SCM_RIGHTS):
the VM's log file, the write end of its ready pipe, the write end of its *status pipe*.  The
server forks; the child runs ``agents.vm.runtime.main(args + ["--ready-fd", N])`` with stdout
and stderr on the log; the server answers ``{"pid": P}`` (or ``{"error": "..."}``).  When the
child exits, the server reaps it and writes its exit status to the status pipe as
``Popen.returncode`` would have it (``-9`` = SIGKILL), one line, then closes it.  The host
agent holds a :class:`ForkedProcess` — the slice of ``subprocess.Popen`` it uses (``pid``,
``returncode``, ``poll``, ``wait``, ``kill``, ``terminate``) — and watches the pid through a
pidfd as before (pidfd_open(2) works for any process, not only one's children).

Lifetimes: the server dies with the host agent (``PR_SET_PDEATHSIG``), and exits when the
host agent closes its end of the socket; every child dies with the server the same way, so
nothing outlives the host agent.  A child's ``/proc/PID/cmdline`` is the server's (it names
the run directory, which is what ``hcinet down`` checks before killing a leftover); its
``comm`` (``ps -o comm``) is the VM's name.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Any

ENV_FLAG = "HCINET_FORKSERVER"
PRELOAD = (
    "uvloop", "zmq", "zmq.asyncio", "msgpack", "h11",
    "agents.vm.runtime", "agents.vm.streams", "agents.vm.apps", "agents.vm.tools", "agents.vm.dhcp",
    "agents.vm.http", "agents.kube.client",
    "agents.node.vm", "agents.haproxy.vm", "agents.apiserver.vm", "agents.moc.vm",
)
MAX_REQUEST = 65536
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


class ForkServerError(OSError):
    """The fork server refused a request or is gone; the message says why in one line."""


def enabled(env: dict[str, str] | None = None) -> bool:
    """Is the fork server on (the default; ``HCINET_FORKSERVER=0`` turns it off) and not
    overridden by a ``HCINET_VM_COMMAND``?"""
    env = dict(os.environ) if env is None else env
    return env.get(ENV_FLAG, "1") != "0" and not env.get("HCINET_VM_COMMAND")


# --- the host agent's side -------------------------------------------------------------------

class ForkedProcess:
    """What the host agent needs of ``subprocess.Popen``, for a VM forked by the server."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._fd = status_fd
        os.set_blocking(status_fd, False)
        self._buf = b""

    def _read(self) -> None:
        while self.returncode is None:
            try:
                chunk = os.read(self._fd, 64)
            except BlockingIOError:
                return
            if not chunk:  # the server died before it could tell: its children die with it
                self._set(self._parse() if self._buf.endswith(b"\n") else -signal.SIGKILL)
                return
            self._buf += chunk
            if self._buf.endswith(b"\n"):
                self._set(self._parse())

    def _parse(self) -> int:
        try:
            return int(self._buf.strip())
        except ValueError:
            return -signal.SIGKILL

    def _set(self, code: int) -> None:
        self.returncode = code
        os.close(self._fd)
        self._fd = -1

    def poll(self) -> int | None:
        self._read()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            while self.poll() is None:
                if self._fd < 0:
                    break
                sel.register(self._fd, selectors.EVENT_READ)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not sel.select(left) and deadline is not None and time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
                sel.unregister(self._fd)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkClient:
    """The host agent's end of the socket; ``spawn`` is awaited from the trio thread."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.popen: subprocess.Popen[bytes] | None = None
        sock.setblocking(False)
        import trio

        self._lock = trio.Lock()

    async def spawn(self, args: list[str], log_path: Any, ready_w: int) -> ForkedProcess:
        import trio

        status_r, status_w = os.pipe()
        try:
            with open(log_path, "ab") as log:
                async with self._lock:
                    request = json.dumps({"args": list(args)}).encode()
                    await trio.lowlevel.wait_writable(self.sock)
                    socket.send_fds(self.sock, [request], [log.fileno(), ready_w, status_w])
                    while True:
                        try:
                            data = self.sock.recv(MAX_REQUEST)
                            break
                        except BlockingIOError:
                            await trio.lowlevel.wait_readable(self.sock)
        except OSError as exc:
            os.close(status_r)
            raise ForkServerError(f"fork server: {exc}") from None
        finally:
            os.close(status_w)
        if not data:
            os.close(status_r)
            raise ForkServerError("fork server: gone (see logs/forkserver.out)")
        reply = json.loads(data)
        if "pid" not in reply:
            os.close(status_r)
            raise ForkServerError(f"fork server: {reply.get('error', 'no pid in the reply')}")
        return ForkedProcess(int(reply["pid"]), status_r)

    def close(self) -> None:
        import trio

        try:
            trio.lowlevel.notify_closing(self.sock)
        except RuntimeError:  # not inside trio
            pass
        self.sock.close()


async def start(run_dir: Any, timeout: float = 15.0) -> ForkClient:
    """Start the server as the host agent's child: it dies with the agent (PR_SET_PDEATHSIG)
    and its start is checked like any child's (its ready line, raced with its exit)."""
    from pathlib import Path

    from agents import hostagent

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_fd, write_fd = os.pipe()
    log_path = Path(run_dir) / "logs" / "forkserver.out"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "agents.forkserver", "--run-dir", str(run_dir),
            "--socket-fd", str(theirs.fileno()), "--ready-fd", str(write_fd)]
    try:
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     pass_fds=(write_fd, theirs.fileno()), env=hostagent.child_env(),
                                     preexec_fn=hostagent._die_with(os.getpid()))
    except OSError as exc:
        os.close(read_fd)
        ours.close()
        raise ForkServerError(f"fork server: cannot start ({exc})") from None
    finally:
        os.close(write_fd)
        theirs.close()
    try:
        ready = await hostagent.wait_ready(popen, read_fd, who="fork server", log_path=log_path, timeout=timeout)
    except hostagent.StartError as exc:
        ours.close()
        raise ForkServerError(str(exc)) from None
    client = ForkClient(ours, int(ready["pid"]))
    client.popen = popen
    return client


# --- the server ------------------------------------------------------------------------------

class Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.children: dict[int, int] = {}  # pid -> status pipe write end
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.forks = 0
        self.pid = os.getpid()

    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            sel.register(self.wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self.sock:
                        if not self._request():
                            return
                    else:
                        try:
                            while os.read(self.wake_r, 512):
                                pass
                        except BlockingIOError:
                            pass
                self._reap()

    def _request(self) -> bool:
        try:
            msg, fds, _, _ = socket.recv_fds(self.sock, MAX_REQUEST, 3)
        except InterruptedError:
            return True
        if not msg:
            return False  # the host agent closed its end (or died)
        try:
            if len(fds) != 3:
                raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
            req = json.loads(msg)
            args = req.get("args") if isinstance(req, dict) else None
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise ValueError("args: expected a list of strings")
        except ValueError as exc:
            for fd in fds:
                os.close(fd)
            self.sock.send(json.dumps({"error": str(exc)}).encode())
            return True
        log_fd, ready_fd, status_fd = fds
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(args, log_fd, ready_fd, status_fd)
        self.forks += 1
        os.close(log_fd)
        os.close(ready_fd)
        self.children[pid] = status_fd
        self.sock.send(json.dumps({"pid": pid}).encode())
        return True

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            fd = self.children.pop(pid, None)
            if fd is not None:
                try:
                    os.write(fd, f"{os.waitstatus_to_exitcode(status)}\n".encode())
                except OSError:
                    pass
                os.close(fd)

    def _child(self, args: list[str], log_fd: int, ready_fd: int, status_fd: int) -> None:
        rc = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (self.wake_r, self.wake_w, status_fd, *self.children.values()):
                os.close(fd)
            self.sock.close()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(devnull)
            os.close(log_fd)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self.pid:  # the server died before prctl took effect
                os._exit(1)
            name = _vm_name(args)
            if name:
                libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
            from agents.vm.runtime import main

            rc = main([*args, "--ready-fd", str(ready_fd)])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(rc)


def _vm_name(args: list[str]) -> str:
    try:
        return os.path.basename(args[args.index("--config") + 1]).removesuffix(".json")
    except (ValueError, IndexError):
        return ""


def preload() -> list[str]:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()  # imported objects move to the permanent generation: no GC writes to their pages
    return list(PRELOAD)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.forkserver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="the deployment's run directory (names this process)")
    parser.add_argument("--socket-fd", type=int, required=True, help="the SOCK_SEQPACKET end of the host agent")
    parser.add_argument("--ready-fd", type=int, help="write one JSON ready line here, then close it")
    ns = parser.parse_args(argv)
    sock = socket.socket(fileno=ns.socket_fd)
    try:
        loaded = preload()
    except Exception as exc:
        line = {"ready": False, "error": f"fork server: preloading failed: {type(exc).__name__}: {exc}"}
    else:
        line = {"ready": True, "pid": os.getpid(), "preloaded": len(loaded)}
    if ns.ready_fd is None:
        print(json.dumps(line), flush=True)
    else:
        with os.fdopen(ns.ready_fd, "w") as f:
            f.write(json.dumps(line) + "\n")
    if not line["ready"]:
        return 1
    Server(sock).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

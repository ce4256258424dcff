"""Blocking helpers for tests that run the real broker process: start it with a ready pipe,
fake VMs as raw DEALER sockets, management calls."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import zmq

from agents import mgmt
from broker import packets as P
from broker import wire

ROOT = Path(__file__).resolve().parents[2]


def read_line(fd: int, timeout: float) -> str:
    """One line from ``fd``, waiting at most ``timeout`` seconds (select, no sleeps)."""
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no line on fd {fd} within {timeout} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


class BrokerProcess:
    """``python -m broker`` as a child, with its readiness report."""

    def __init__(self, log: Path, seed: int = 1, extra: list[str] | None = None) -> None:
        self.log = log
        r, w = os.pipe()
        cmd = [sys.executable, "-m", "broker", "--ready-fd", str(w), "--seed", str(seed), "--log", str(log)]
        self.proc = subprocess.Popen(cmd + (extra or []), pass_fds=(w,), cwd=ROOT)
        os.close(w)
        try:
            self.ready: dict[str, Any] = json.loads(read_line(r, 20.0))
        finally:
            os.close(r)
        assert self.ready["ready"] is True, self.ready
        self.data: str = self.ready["data"]
        self.mgmt: str = self.ready["mgmt"]

    def call(self, verb: str, **args: Any) -> Any:
        return mgmt.call(self.mgmt, verb, args, timeout=5.0)

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class FakeVM:
    """A VM reduced to its DEALER: sends frames, receives messages with a timeout."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, identity: bytes, rcvhwm: int = 1000) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.RCVBUF, 65536)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = 5.0) -> list[bytes]:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"nothing received within {timeout} s")
        return self.sock.recv_multipart()

    def recv_header(self, timeout: float = 5.0) -> tuple[Any, ...]:
        frames = self.recv(timeout)
        return wire.decode(frames) + ((wire.unpack_body(frames[1]),) if len(frames) == 2 else ())

    def attach(self, nic: int, vm: str, network: str, ips: list[str], name: str = "eth0") -> None:
        spec = {"vm": vm, "name": name, "mac": "02:00:00:00:00:0a", "network": network, "ips": ips, "mtu": 1500}
        self.send(wire.attach(nic, spec))
        hdr = self.recv_header()
        assert hdr[1:5] == (wire.ATTACHED, nic, True, ""), hdr

    def packets(self, nic: int, src: str, dst: str, n: int, via: str = "", size: int = 100) -> None:
        pkts = [P.udp(src, dst, 1000 + i, 7, bytes(size)) for i in range(n)]
        self.send(wire.packets(nic, dst, via, pkts, sum(p[P.SIZE] for p in pkts), 64))

    def close(self) -> None:
        self.sock.close(0)

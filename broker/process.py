"""The broker process: a plain blocking ``zmq.Poller`` loop around :class:`Underlay`.

    python -m broker --data tcp://127.0.0.1:0 --mgmt tcp://127.0.0.1:0 --ready-fd N \\
        [--log FILE] [--seed S]

Two ROUTER sockets: the data plane (one DEALER per VM) and the management plane.  The loop
waits in ``poll`` until a socket is readable or the next delayed delivery is due, then drains
each readable socket with non-blocking receives until ``zmq.Again`` (LIMITS.md: one poll per
message would cost more than the work), with a budget so a flood on one socket cannot starve
the other or the timers.

Sending to a VM: the data ROUTER has ``ROUTER_MANDATORY`` on and every send is
``NOBLOCK``, so a VM whose queue is at the high-water mark (or that vanished) raises instead of
being dropped silently; the broker counts that as the receiving NIC's ``queue_full`` (or
``no_route``) — an emulated full queue, counted, never a stall of the whole fabric.  The
high-water marks (20 000 messages per peer) absorb bursts: at 64 packets a message that is over
a million packets in flight per VM, while bounding the memory a stuck VM can pin.

Nothing a peer sends can stop the loop: every frame goes through ``Underlay.handle``, which
counts and logs (rate-limited) whatever does not decode.  SIGTERM or the ``shutdown`` verb end
the loop cleanly; the process also dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import zmq

from agents import mgmt
from broker import wire
from broker.underlay import Msg, Underlay

log = logging.getLogger("broker")

HWM = 20_000
DRAIN_BUDGET = 512  # messages per socket before the other socket and the timers get a turn (~5 ms)
PR_SET_PDEATHSIG = 1
# Plain ints: pyzmq's flags are enum.Flag members, and OR-ing those runs Python code per part.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class Broker:
    """The loop: moves frames between the sockets and the underlay, and re-arms one timer."""

    def __init__(self, underlay: Underlay, data: zmq.Socket[bytes], mgmt_sock: zmq.Socket[bytes],
                 wakeup_fd: int | None = None) -> None:
        self.underlay = underlay
        self.data = data
        self.mgmt = mgmt_sock
        self.wakeup_fd = wakeup_fd
        self.running = True
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            **underlay.handlers(), "ping": self._ping, "shutdown": self._shutdown, "stats": self._stats,
        }
        self.mgmt_bad = 0

    def _stats(self, args: dict[str, Any]) -> dict[str, Any]:
        stats = self.underlay.stats(args)
        stats["totals"]["mgmt_bad_frames"] = self.mgmt_bad
        return stats

    def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid()}

    def _shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        self.running = False
        return {"stopping": True}

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.data, zmq.POLLIN)
        poller.register(self.mgmt, zmq.POLLIN)
        if self.wakeup_fd is not None:
            poller.register(self.wakeup_fd, zmq.POLLIN)
        underlay = self.underlay
        while self.running:
            deadline = underlay.next_deadline()
            timeout = None
            if deadline is not None:
                timeout = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            ready = dict(poller.poll(timeout))
            if self.data in ready:
                self._drain_data()
            if self.mgmt in ready:
                self._drain_mgmt()
            if self.wakeup_fd is not None and self.wakeup_fd in ready:
                os.read(self.wakeup_fd, 512)  # the signal handler already set running = False
            if underlay.next_deadline() is not None:
                self._send(underlay.due(time.monotonic()))

    def _drain_data(self) -> None:
        """Drain until ``zmq.Again``, except that a lone message (the latency case: one ping
        in flight) ends with a look at ``zmq.EVENTS`` (~2 µs) rather than the raised Again
        (~6 µs of CPU the next hop's wake-up would compete with); a burst still pays one
        Again, not an EVENTS call per message."""
        recv = self.data.recv
        get = cast(Callable[[int], int], self.data.get)
        handle = self.underlay.handle
        send = self._send
        monotonic = time.monotonic
        for i in range(DRAIN_BUDGET):
            try:
                first = recv(_NOBLOCK, False)
            except zmq.Again:
                return
            # The rest of a multipart message is already here (ZeroMQ delivers it whole).
            # Frame.more instead of getsockopt(RCVMORE): a quarter of the cost per frame.
            frames: list[Any] = []
            part = first
            while part.more:
                part = recv(_NOBLOCK, False)
                frames.append(part)
            if frames:
                frames[0] = frames[0].bytes  # the header is decoded; a body stays a zmq.Frame
            out = handle(first.bytes, frames, monotonic())
            if out:
                send(out)
            if not i and not get(_EVENTS) & _POLLIN:
                return

    def _send(self, out: list[Msg]) -> None:
        """Send each message part by part with int flags: ``send_multipart`` costs ~3x more
        (it type-checks every part and ORs enum flags in Python).  A body that came in as a
        ``zmq.Frame`` leaves without a copy."""
        send = self.data.send
        for msg in out:
            try:
                send(msg[0], _MORE)
            except zmq.Again:  # the VM's queue is at the high-water mark
                self.underlay.undeliverable(msg, "queue_full")
                continue
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the VM disconnected without DETACH
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                self.underlay.undeliverable(msg, "gone")
                continue
            last = len(msg) - 1
            for i in range(1, last):
                send(msg[i], _MORE)
            send(msg[last], _NOBLOCK, copy=False)

    def _drain_mgmt(self) -> None:
        for _ in range(DRAIN_BUDGET):
            try:
                frames = self.mgmt.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._serve(frames)

    def _serve(self, frames: list[bytes]) -> None:
        identity, rest = frames[0], frames[1:]
        try:
            req_id, verb, args = mgmt.parse_request(rest)
        except Exception as exc:  # WireError, or a peer that is not a DEALER client
            self.mgmt_bad += 1
            log.warning("bad management frame from %s: %s", identity.hex(), exc)
            return
        ok, result = mgmt.dispatch(self.handlers, verb, args)
        try:
            self.mgmt.send_multipart([identity, *wire.reply(req_id, ok, result)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client left or is not reading: its loss
            log.warning("could not answer %s to %s: %s", verb, identity.hex(), exc)


# --- process set-up ------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG = SIGKILL (prctl(2)): a killed host agent takes the broker along."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the host agent's own clean-up must do
        log.warning("prctl(PR_SET_PDEATHSIG) unavailable")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m broker", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tcp://127.0.0.1:0", help="data-plane ROUTER endpoint")
    parser.add_argument("--mgmt", default="tcp://127.0.0.1:0", help="management ROUTER endpoint")
    parser.add_argument("--ready-fd", type=int, default=None, help="fd for the one-line JSON readiness report")
    parser.add_argument("--log", default=None, help="log file (default: stderr)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the impairments' random generator")
    parser.add_argument("--hwm", type=int, default=HWM, help="high-water mark per peer, in messages")
    return parser.parse_args(argv)


def _report(fd: int | None, info: dict[str, Any]) -> None:
    line = json.dumps(info) + "\n"
    if fd is None:
        sys.stdout.write(line)
        sys.stdout.flush()
        return
    with os.fdopen(fd, "w") as out:
        out.write(line)


def _router(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, hwm: int = HWM) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.bind(endpoint)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        filename=args.log, level=logging.INFO,
        format="%(asctime)s broker[%(process)d] %(levelname)s %(name)s: %(message)s")
    _die_with_parent()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        data = _router(ctx, args.data, args.hwm)
        mgmt_sock = _router(ctx, args.mgmt)
    except zmq.ZMQError as exc:
        _report(args.ready_fd, {"ready": False, "error": f"bind: {exc}"})
        ctx.destroy(linger=0)
        return 1
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    broker = Broker(Underlay(random.Random(args.seed)), data, mgmt_sock, wake_r)

    def on_term(signum: int, frame: Any) -> None:
        broker.running = False

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.set_wakeup_fd(wake_w)  # the signal's byte wakes the poll, which then sees running
    endpoints = {"data": data.getsockopt_string(zmq.LAST_ENDPOINT),
                 "mgmt": mgmt_sock.getsockopt_string(zmq.LAST_ENDPOINT)}
    _report(args.ready_fd, {"ready": True, **endpoints, "pid": os.getpid()})
    log.info("broker ready: data %s, mgmt %s", endpoints["data"], endpoints["mgmt"])
    try:
        broker.run()
    finally:
        # A short linger lets the last replies (the shutdown answer, DETACHED) leave.
        data.close(linger=500)
        mgmt_sock.close(linger=1000)
        ctx.term()
    log.info("broker stopped")
    return 0

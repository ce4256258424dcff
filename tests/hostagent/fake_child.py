"""Stand-ins for the broker and VM processes, to test the host agent on its own.

    python fake_child.py broker --data EP --mgmt EP --ready-fd N --log FILE [--seed N]
    python fake_child.py vm --config FILE --ready-fd N

The fake broker serves a real management socket (``ping``, ``add_network``, ``add_route``,
``stats``, ``detach_vm`` and ``detached``, which lists the VMs it was told to detach).  The
fake VM behaves as its config's ``"fake"`` key says (default: ``exit`` for a name starting
with "broken", else ``ready``): ``ready``, ``fail`` (ready line saying no), ``exit`` (dies
before ready), ``hang`` (never ready), ``ignore-term`` (ready, ignores SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from agents import mgmt  # noqa: E402
from broker import wire  # noqa: E402


def ready(fd: int, msg: dict[str, Any]) -> None:
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(msg) + "\n")


def broker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    for opt in ("--data", "--mgmt", "--log", "--seed"):
        p.add_argument(opt)
    p.add_argument("--ready-fd", type=int, required=True)
    ns = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(ns.mgmt)
    detached: list[str] = []
    networks: list[str] = []

    def remember(into: list[str], name: str) -> dict[str, Any]:
        into.append(name)
        return {}

    handlers: dict[str, mgmt.Handler] = {
        "ping": lambda a: "pong",
        "detach_vm": lambda a: remember(detached, mgmt.require(a, "vm")),
        "detached": lambda a: detached,
        "seed": lambda a: ns.seed,
        "add_network": lambda a: remember(networks, a["name"]),
        "add_route": lambda a: {},
        "stats": lambda a: {"nics": {}, "networks": {n: {"claims": {}} for n in networks}, "totals": {},
                            "conflicts": []},
    }
    ready(ns.ready_fd, {"ready": True, "mgmt": sock.getsockopt_string(zmq.LAST_ENDPOINT),
                        "data": "tcp://127.0.0.1:1"})
    while True:
        frames = sock.recv_multipart()
        req_id, verb, args = mgmt.parse_request(frames[1:])
        ok, result = mgmt.dispatch(handlers, verb, args)
        sock.send_multipart([frames[0], *wire.reply(req_id, ok, result)])


def vm(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--ready-fd", type=int, required=True)
    ns = p.parse_args(argv)
    with open(ns.config) as f:
        config = json.load(f)
    # A VM named "broken-*" dies before it is ready (for scenario-level tests).
    mode = config.get("fake", "exit" if config["name"].startswith("broken") else "ready")
    if mode == "exit":
        print("boom: bad config", file=sys.stderr)
        sys.exit(3)
    if mode == "fail":
        ready(ns.ready_fd, {"ready": False, "error": "nics[0]: attach refused"})
        sys.exit(1)
    if mode == "hang":
        while True:
            signal.pause()
    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore-term" else (lambda *_: sys.exit(0)))
    ready(ns.ready_fd, {"ready": True, "mgmt": f"tcp://127.0.0.1:{9000 + os.getpid() % 1000}"})
    while True:
        signal.pause()


if __name__ == "__main__":
    {"broker": broker, "vm": vm}[sys.argv[1]](sys.argv[2:])

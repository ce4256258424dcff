"""A minimal stand-in for the broker, enough to test a VM process on its own.

One flat network: ATTACH/CLAIM record who owns an IP (latest wins), PACKETS go to the owner of
``via`` (or of ``dst`` when ``via`` is "" or the gateway, which adds a hop), DETACH is
acknowledged.  It records every control frame so tests can assert the VM's side of the
protocol (e.g. DETACH before the socket closes).  The real broker is tested elsewhere.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import zmq

from broker import wire


class FakeBroker(threading.Thread):
    def __init__(self, gateway: str = "172.16.0.1", refuse: frozenset[str] = frozenset()) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.refuse = refuse  # NIC names whose ATTACH is refused
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.owners: dict[str, tuple[bytes, int]] = {}
        self.events: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.delivered = 0
        self.idents: dict[str, bytes] = {}  # VM name -> router identity
        self._inject: queue.SimpleQueue[tuple[str, list[bytes]]] = queue.SimpleQueue()
        self._halt = threading.Event()

    def __enter__(self) -> FakeBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(5)
        self.ctx.term()

    def wait_for(self, pred: Any, timeout: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: pred(self.events), timeout)

    def inject(self, vm: str, frames: list[bytes]) -> None:
        """Send raw frames to a VM from the broker's thread (sockets are not thread-safe)."""
        self._inject.put((vm, frames))

    def run(self) -> None:
        handlers = {wire.ATTACH: self._attach, wire.CLAIM: self._claim, wire.RELEASE: self._release,
                    wire.DETACH: self._detach, wire.PACKETS: self._packets}
        while not self._halt.is_set():
            while not self._inject.empty():
                vm, raw = self._inject.get()
                self.sock.send_multipart([self.idents[vm], *raw])
            if not self.sock.poll(20):
                continue
            while True:
                try:
                    ident, *frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                hdr = wire.decode(frames)
                handlers[hdr[1]](ident, hdr, frames)
        self.sock.close()

    def _record(self, *event: Any) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def _attach(self, ident: bytes, hdr: tuple[Any, ...], frames: list[bytes]) -> None:
        nic, spec = hdr[2], hdr[3]
        if spec["name"] in self.refuse:
            self.sock.send_multipart([ident, *wire.attached(nic, False, "network: no network 'nowhere'")])
            self._record("attach-refused", spec["vm"], spec["name"])
            return
        for ip in spec["ips"]:
            self.owners[ip] = (ident, nic)
        self.idents[spec["vm"]] = ident
        self.sock.send_multipart([ident, *wire.attached(nic, True)])
        self._record("attach", spec["vm"], spec["name"], tuple(spec["ips"]))

    def _claim(self, ident: bytes, hdr: tuple[Any, ...], frames: list[bytes]) -> None:
        for ip in hdr[3]:
            self.owners[ip] = (ident, hdr[2])
        self._record("claim", ident, hdr[2], tuple(hdr[3]))

    def _release(self, ident: bytes, hdr: tuple[Any, ...], frames: list[bytes]) -> None:
        for ip in hdr[3]:
            if self.owners.get(ip) == (ident, hdr[2]):
                del self.owners[ip]
        self._record("release", ident, hdr[2], tuple(hdr[3]))

    def _detach(self, ident: bytes, hdr: tuple[Any, ...], frames: list[bytes]) -> None:
        nic = hdr[2]
        for ip in [ip for ip, owner in self.owners.items() if owner == (ident, nic)]:
            del self.owners[ip]
        self.sock.send_multipart([ident, *wire.detached(nic)])
        self._record("detach", ident, nic)

    def _packets(self, ident: bytes, hdr: tuple[Any, ...], frames: list[bytes]) -> None:
        _, _, nic, dst, via, count, nbytes, min_ttl = hdr
        hops = 1 if via == self.gateway else 0
        owner = self.owners.get(dst if via in ("", self.gateway) else via)
        if owner is None or min_ttl <= hops:
            return
        self.sock.send_multipart([owner[0], wire.deliver_header(owner[1], hops, count, nbytes), frames[1]])
        self.delivered += count

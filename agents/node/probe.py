"""``pod_probe``: real connections from one pod to many destinations, all at once.

The node VM's management verb ``pod_probe {namespace, name, targets: [[ip, port, proto], ...],
timeout?}`` -> ``{results: [{ip, port, protocol, allowed, reason}, ...]}`` (agents/node/vm.py)
runs :func:`probe_all` on the pod's own network API, as a program in the pod's network
namespace would: every probe starts at once and waits at most ``timeout`` seconds.  The
verdict is only what the socket saw — this module knows nothing of network policy:

* TCP: connected or refused (RST) → allowed (the destination answered); no answer → denied;
* UDP: a datagram (``hostname``, which agnhost netexec answers and hcinet's generic responder
  echoes) → a reply or an ICMP port unreachable → allowed; nothing → denied.  A UDP server that
  never replies reads as denied: the probe cannot tell it from a drop;
* SCTP: an INIT chunk (sent through the pod stack's raw output) → INIT-ACK, ABORT or an ICMP
  error about it (the pod stacks have no SCTP: protocol unreachable) → allowed; nothing → denied.
  While probing, the pod answers other pods' INITs with an ABORT (as a kernel with SCTP and
  no listener does), so pods probing each other at once still see an answer.

Other ICMP errors (host or network unreachable from a router) are an answer too, but not the
destination's: they read as denied with their reason.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Sequence
from typing import Any

from broker import packets as P

PROTOCOLS = ("TCP", "UDP", "SCTP")
UDP_PROBE = b"hostname"
DEFAULT_TIMEOUT = 2.0   # seconds, scaled by the node's time_scale
MIN_TIMEOUT = 0.25      # a floor: a scheduling hiccup on a loaded machine is not a drop
MAX_TARGETS = 4096


class ProbeError(ValueError):
    """A bad request (the management verb's error)."""


def parse_targets(raw: Any) -> list[tuple[str, int, str]]:
    if not isinstance(raw, list | tuple):
        raise ProbeError("targets: expected a list of [ip, port, protocol]")
    if len(raw) > MAX_TARGETS:
        raise ProbeError(f"targets: at most {MAX_TARGETS}")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, list | tuple) or len(t) != 3:
            raise ProbeError(f"targets[{i}]: expected [ip, port, protocol]")
        ip, port, proto = t
        try:
            ip = P.canonical_ip(str(ip), f"targets[{i}].ip")
        except P.PacketError as exc:
            raise ProbeError(str(exc)) from None
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ProbeError(f"targets[{i}].port: expected 1-65535")
        proto = str(proto).upper()
        if proto not in PROTOCOLS:
            raise ProbeError(f"targets[{i}].protocol: expected TCP, UDP or SCTP")
        out.append((ip, port, proto))
    return out


async def probe_tcp(net: Any, ip: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        _, writer = await net.open_connection(ip, port, timeout=timeout)
    except TimeoutError:
        return False, "timeout"
    except ConnectionRefusedError:
        return True, "refused"
    except OSError as exc:
        return False, errno.errorcode.get(exc.errno or 0, str(exc)) if exc.errno else str(exc)
    writer.close()
    return True, "connected"


class _UdpProbe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.done: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.done.done():
            self.done.set_result((True, "reply"))

    def error_received(self, exc: Exception) -> None:
        if self.done.done():
            return
        if isinstance(exc, ConnectionRefusedError):
            self.done.set_result((True, "refused"))
        else:
            self.done.set_result((False, str(exc) or type(exc).__name__))


async def probe_udp(net: Any, ip: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        transport, proto = await net.create_datagram_endpoint(_UdpProbe, remote_addr=(ip, port))
    except OSError as exc:
        return False, str(exc)
    try:
        transport.sendto(UDP_PROBE)
        try:
            return await asyncio.wait_for(asyncio.shield(proto.done), timeout)
        except TimeoutError:
            return False, "timeout"
    finally:
        transport.close()


class SctpProber:
    """SCTP INITs from one pod stack: answers matched on (peer, ports, verification tag).

    The pod stack gets an SCTP protocol handler and an ICMP error sink for SCTP while probes
    are in flight (a pod has no SCTP socket of its own here); both are removed afterwards."""

    def __init__(self, net: Any, source_ips: Sequence[str]) -> None:
        self.net = net
        self.stack = net.stack
        self.source_ips = list(source_ips)
        self.waiting: dict[tuple[str, int, int], asyncio.Future[tuple[bool, str]]] = {}
        self.rng = random.Random()
        self._installed = False

    def _install(self) -> None:
        if self._installed:
            return
        self.stack.set_protocol_handler(P.SCTP, self._input)
        sinks = getattr(self.stack, "_icmp_error_sinks", None)
        if isinstance(sinks, dict):
            sinks[P.SCTP] = self._icmp_error
        self._installed = True

    def close(self) -> None:
        if not self._installed:
            return
        self.stack.set_protocol_handler(P.SCTP, None)
        sinks = getattr(self.stack, "_icmp_error_sinks", None)
        if isinstance(sinks, dict):
            sinks.pop(P.SCTP, None)
        self._installed = False

    def _answer(self, key: tuple[str, int, int], verdict: tuple[bool, str]) -> None:
        fut = self.waiting.get(key)
        if fut is not None and not fut.done():
            fut.set_result(verdict)

    def _input(self, pkt: Any, now: float) -> None:
        chunk = pkt[6][0] if isinstance(pkt[6], tuple) else None
        if chunk == P.SCTP_INIT:
            # While the handler is installed this pod "has SCTP": an INIT to it (another pod's
            # probe) gets what a kernel with SCTP gives for a port nobody listens on, an ABORT
            # (RFC 9260 8.4), instead of silence.
            self.stack.output_packet(P.sctp(pkt[1], pkt[0], pkt[5], pkt[4], P.SCTP_ABORT, pkt[6][1]), now)
            self.net.kick()
        elif chunk == P.SCTP_INIT_ACK:
            self._answer((pkt[0], pkt[4], pkt[5]), (True, "init-ack"))
        elif chunk == P.SCTP_ABORT:
            self._answer((pkt[0], pkt[4], pkt[5]), (True, "abort"))

    def _icmp_error(self, pkt: Any, quoted: Any, code: int, now: float) -> None:
        # The destination itself said it (protocol/port unreachable) -> it answered.
        own = pkt[0] == quoted[1]
        self._answer((quoted[1], quoted[5], quoted[4]), (own, "icmp " + errno.errorcode.get(code, str(code))))

    async def probe(self, ip: str, port: int, timeout: float) -> tuple[bool, str]:
        v6 = ":" in ip
        src = next((a for a in self.source_ips if (":" in a) == v6), None)
        if src is None:
            return False, f"no IPv{6 if v6 else 4} address"
        self._install()
        sport = self.rng.randint(32768, 60999)
        key = (ip, port, sport)
        fut: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self.waiting[key] = fut
        try:
            pkt = P.sctp(src, ip, sport, port, P.SCTP_INIT, 0, self.rng.getrandbits(32))
            err = self.stack.output_packet(pkt, self.net.now())
            self.net.kick()
            if err:
                return False, errno.errorcode.get(err, str(err))
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                return False, "timeout"
        finally:
            self.waiting.pop(key, None)


async def probe_all(net: Any, source_ips: Sequence[str], targets: Sequence[tuple[str, int, str]],
                    timeout: float) -> list[dict[str, Any]]:
    """Every target at once from the pod's network API; results in the targets' order."""
    sctp = SctpProber(net, source_ips) if any(t[2] == "SCTP" for t in targets) else None

    async def one(ip: str, port: int, proto: str) -> tuple[bool, str]:
        if proto == "TCP":
            return await probe_tcp(net, ip, port, timeout)
        if proto == "UDP":
            return await probe_udp(net, ip, port, timeout)
        assert sctp is not None
        return await sctp.probe(ip, port, timeout)

    try:
        verdicts = await asyncio.gather(*(one(*t) for t in targets))
    finally:
        if sctp is not None:
            sctp.close()
    return [{"ip": ip, "port": port, "protocol": proto, "allowed": ok, "reason": why}
            for (ip, port, proto), (ok, why) in zip(targets, verdicts, strict=True)]

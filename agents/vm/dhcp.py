"""The VM's DHCP client (RFC 2131 section 4.4) for a NIC configured ``"dhcp": true``.

Like dhclient, it sends on a raw socket: packets go straight to the broker port (no netfilter
hooks, source ``0.0.0.0`` before it has an address), and answers are taken off the wire by a
``PREROUTING`` hook installed only while an exchange is in flight.  The message format is
the compact one of :mod:`broker.dhcp` (a msgpack map of RFC 2131/2132 fields inside UDP
68 -> 67), served by the datacenter router.

INIT: DISCOVER (broadcast) -> OFFER -> REQUEST (selecting) -> ACK: the address and prefix go on
the NIC (claimed, like the kernel's gratuitous ARP), the default route via the ACK's router.
BOUND: at T1 (lease/2) a REQUEST with ``ciaddr`` is unicast to the server (RENEWING); from T2
(7/8) broadcast (REBINDING); when the lease runs out the address is dropped and INIT starts
again.  A NAK also sends the client back to INIT.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import msgpack

from agents.netstack.stack import PREROUTING
from broker import packets as P
from broker.dhcp import BROADCAST, CLIENT_PORT, SERVER_PORT

log = logging.getLogger("hcinet.vm.dhcp")

RETRY_S = 1.0          # retransmission interval (RFC 2131 4.1 says 4 s doubling; kept short here)
RENEW_RETRY_S = 1.0    # between renewal attempts while RENEWING / REBINDING
DEFAULT_TIMEOUT_S = 5.0


class DhcpFailed(OSError):
    """No lease: the message names the NIC and the likely reason."""


class DhcpClient:
    """One NIC's lease; ``await acquire()`` before the VM reports ready, then ``start()``."""

    def __init__(self, vm: Any, nic: int, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.vm = vm
        self.nic = nic
        cfg = vm.config.nics[nic]
        self.nic_name = cfg.name
        self.network = cfg.network
        self.mac = cfg.mac.lower()
        self.timeout = timeout
        self.ack: dict[str, Any] | None = None
        self.ip: str | None = None
        self.prefixlen = 32
        self.router: str | None = None
        self.server: str | None = None
        self.expires = 0.0
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._hooked = 0
        self.counts = {"sent": 0, "received": 0, "acks": 0, "naks": 0, "renewals": 0}

    # -- the raw socket --

    def _hook(self, pkt: P.Packet, now: float) -> P.Packet | None:
        if pkt[P.PROTO] != P.UDP or pkt[P.DPORT] != CLIENT_PORT or pkt[P.SPORT] != SERVER_PORT:
            return pkt
        try:
            msg = msgpack.unpackb(pkt[P.PAYLOAD])
        except Exception:
            return None
        if isinstance(msg, dict) and msg.get("op") == 2 and msg.get("chaddr") == self.mac:
            self.counts["received"] += 1
            self._replies.put_nowait(msg)
            return None
        return pkt  # another NIC's client may want it

    def _listen(self, on: bool) -> None:
        hooks = self.vm.net.stack.hooks[PREROUTING]
        if on:
            if not self._hooked:
                hooks.append(self._hook)
            self._hooked += 1
        else:
            self._hooked -= 1
            if not self._hooked and self._hook in hooks:
                hooks.remove(self._hook)

    def _send(self, kind: str, xid: int, *, dst: str = BROADCAST, ciaddr: str = "0.0.0.0", **fields: Any) -> None:
        body = {"op": 1, "type": kind, "xid": xid, "chaddr": self.mac, "ciaddr": ciaddr,
                "hostname": self.vm.name, **fields}
        src = ciaddr if ciaddr != "0.0.0.0" else "0.0.0.0"
        pkt = P.udp(src, dst, CLIENT_PORT, SERVER_PORT, msgpack.packb(body))
        self.counts["sent"] += 1
        self.vm.data.send_output([(self.nic, "", pkt)])

    async def _exchange(self, kind: str, xid: int, want: tuple[str, ...], wait: float, **fields: Any) -> dict[str, Any]:
        """Send (and resend every RETRY_S) until a reply of a wanted type with our xid."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            self._send(kind, xid, **fields)
            resend = min(deadline, loop.time() + RETRY_S)
            while True:
                left = resend - loop.time()
                if left <= 0:
                    break
                try:
                    msg = await asyncio.wait_for(self._replies.get(), left)
                except TimeoutError:
                    break
                if msg.get("xid") == xid and msg.get("type") in want:
                    return msg
            if loop.time() >= deadline:
                raise TimeoutError(kind)

    # -- INIT --

    async def acquire(self) -> dict[str, Any]:
        """DISCOVER .. ACK within ``timeout``; the address is on the NIC when this returns."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self._listen(True)
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                xid = random.getrandbits(32)
                try:
                    offer = await self._exchange("DISCOVER", xid, ("OFFER",), left)
                except TimeoutError:
                    raise DhcpFailed(f"dhcp {self.nic_name}: no DHCPOFFER from the router of network "
                                     f"{self.network} within {self.timeout:g} s (scope exhausted, or "
                                     f"no DHCP scope on that network)") from None
                reply = await self._exchange("REQUEST", xid, ("ACK", "NAK"), max(deadline - loop.time(), RETRY_S),
                                             requested_ip=offer["yiaddr"], server_id=offer["server_id"])
                if reply["type"] == "ACK":
                    self._bind(reply)
                    return reply
                self.counts["naks"] += 1
                log.warning("dhcp %s: NAK for %s (%s), back to INIT", self.nic_name, offer["yiaddr"],
                            reply.get("message", ""))
        except TimeoutError:
            raise DhcpFailed(f"dhcp {self.nic_name}: no DHCPACK from the router of network {self.network} "
                             f"within {self.timeout:g} s") from None
        finally:
            self._listen(False)

    def _bind(self, ack: dict[str, Any]) -> None:
        vm = self.vm
        ip, plen = str(ack["yiaddr"]), int(ack.get("prefixlen", 32))
        if self.ip is not None and self.ip != ip:
            self._unbind()
        self.counts["acks"] += 1
        self.ack = ack
        self.server = ack.get("server_id")
        self.expires = asyncio.get_running_loop().time() + float(ack.get("lease_s", 0))
        if self.ip != ip:
            self.ip, self.prefixlen = ip, plen
            vm.data.claim(self.nic, [ip])  # the kernel's gratuitous ARP on a new address
            vm._claimed.setdefault(self.nic, []).append(ip)
            vm.net.add_address(self.nic, f"{ip}/{plen}")
            log.info("dhcp %s: bound %s/%d from %s, lease %gs", self.nic_name, ip, plen, self.server,
                     float(ack.get("lease_s", 0)))
        router = ack.get("router")
        if router and router != self.router:
            stack = vm.net.stack
            if stack.route("0.0.0.0") is None or self.router is not None:
                if self.router is not None:
                    stack.remove_route("0.0.0.0/0", self.nic)
                stack.add_route("0.0.0.0/0", dev=self.nic, via=router)
                self.router = router
            vm.net.kick()

    def _unbind(self) -> None:
        vm, ip = self.vm, self.ip
        if ip is None:
            return
        log.warning("dhcp %s: lease on %s ended", self.nic_name, ip)
        if self.router is not None:
            vm.net.stack.remove_route("0.0.0.0/0", self.nic)
            self.router = None
        vm.data.release(self.nic, [ip])
        held = vm._claimed.get(self.nic, [])
        if ip in held:
            held.remove(ip)
        vm.net.remove_address(self.nic, ip)
        self.ip = None

    # -- BOUND: renewals --

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._renew_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: B036 - cancelled: done
                pass
            self._task = None

    async def _renew_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ack = self.ack or {}
            lease = float(ack.get("lease_s", 0)) or 3600.0
            bound_at = self.expires - lease
            t1 = bound_at + float(ack.get("t1", lease / 2))
            t2 = bound_at + float(ack.get("t2", lease * 7 / 8))
            await asyncio.sleep(max(t1 - loop.time(), 0))
            result = await self._renew(t2, unicast=True)
            if result == "timeout":
                result = await self._renew(self.expires, unicast=False)
            if result == "ack":
                continue
            self._unbind()
            while True:  # INIT again until a lease comes back
                try:
                    await self.acquire()
                    break
                except DhcpFailed as exc:
                    log.warning("%s", exc)

    async def _renew(self, until: float, *, unicast: bool) -> str:
        """RENEWING (unicast to the server) or REBINDING (broadcast) until ``until``."""
        loop = asyncio.get_running_loop()
        self._listen(True)
        try:
            while loop.time() < until:
                xid = random.getrandbits(32)
                dst = self.server if unicast and self.server else BROADCAST
                try:
                    reply = await self._exchange("REQUEST", xid, ("ACK", "NAK"),
                                                 max(min(RENEW_RETRY_S * 3, until - loop.time()), 0.05),
                                                 dst=dst, ciaddr=self.ip or "0.0.0.0")
                except TimeoutError:
                    continue
                if reply["type"] == "NAK":
                    self.counts["naks"] += 1
                    return "nak"
                self.counts["renewals"] += 1
                self._bind(reply)
                return "ack"
            return "timeout"
        finally:
            self._listen(False)

    def stats(self) -> dict[str, Any]:
        left = self.expires - asyncio.get_running_loop().time() if self.ip else 0.0
        return {"nic": self.nic_name, "ip": self.ip, "prefixlen": self.prefixlen, "router": self.router,
                "server": self.server, "lease_left_s": round(max(left, 0.0), 3), **self.counts}

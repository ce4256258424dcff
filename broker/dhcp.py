"""The datacenter router's DHCP service (RFC 2131), sans-IO: one :class:`DhcpServer` per
network that declares a DHCP scope (the DHCP model of AKS-HCI networks, FACTS.md).

Where it lives: in the broker's :class:`~broker.underlay.Underlay`, answering as the network's
gateway address, as a DHCP server (or relay) on the router would.  A VM sends its messages as
UDP ``0.0.0.0:68 -> 255.255.255.255:67`` (or to the gateway's address, unicast, when
renewing); the underlay hands them here and delivers the answers straight to that NIC.

The message inside the UDP payload is **not the BOOTP layout** (RFC 2131 section 2's fixed
236 bytes plus options): it is a compact msgpack map carrying the same fields and options,
named as in RFC 2131/2132, because nothing on the emulated wire parses raw BOOTP::

    request: {"op": 1, "type": "DISCOVER"|"REQUEST"|"RELEASE"|"DECLINE", "xid": int,
              "chaddr": "02:..", "ciaddr": "0.0.0.0", "requested_ip": ip?, "server_id": ip?,
              "hostname": str?}
    reply:   {"op": 2, "type": "OFFER"|"ACK"|"NAK", "xid", "chaddr", "yiaddr", "server_id",
              "lease_s" (option 51), "t1" (58), "t2" (59), "prefixlen" + "subnet_mask" (1),
              "router" (3), "dns" (6), "message" (56, NAK only)}

Server behaviour (RFC 2131 section 4.3): an offer is held for :data:`OFFER_HOLD` seconds; a
client gets its previous address again when it is still free (same MAC, same lease); a new
client gets the lowest never-used address, else the longest-free one; an exhausted scope
makes no offer (counted as ``exhausted``); a REQUEST naming another server withdraws our
offer; INIT-REBOOT requests for an address we do not know are ignored, wrong ones NAKed;
RENEWING/REBINDING with ``ciaddr`` extends a binding, or NAKs it when it is gone.
No clock is read here: ``now`` is passed in.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import msgpack

from broker import packets as P

SERVER_PORT = 67
CLIENT_PORT = 68
BROADCAST = "255.255.255.255"
DEFAULT_LEASE_S = 86400  # Windows Server DHCP's default scope lease: 8 days; 1 day is common on routers
OFFER_HOLD = 60.0        # seconds an offered address stays reserved for its client
DECLINE_HOLD = 3600.0    # an address a client DECLINEd (in use) is skipped this long
MAX_MESSAGE = 1024       # a request payload larger than this is not DHCP

REQUEST_TYPES = ("DISCOVER", "REQUEST", "RELEASE", "DECLINE", "INFORM")


class DhcpError(ValueError):
    """A scope that does not validate; the message names the key."""


@dataclass(slots=True)
class Lease:
    ip: str
    mac: str
    state: str        # offered | bound | free (released or expired: kept for the same MAC)
    expires: float
    since: float      # when it last changed hands (LRU for reuse)
    hostname: str = ""

    def held(self, now: float) -> bool:
        return self.state in ("offered", "bound") and self.expires > now

    def describe(self, now: float) -> dict[str, Any]:
        state = self.state if self.held(now) or self.state == "free" else "expired"
        return {"ip": self.ip, "mac": self.mac, "state": state, "expires_in_s": round(max(self.expires - now, 0), 3),
                "hostname": self.hostname}


class DhcpServer:
    """One scope ``start..end`` of one network; the server answers as ``server_ip``."""

    def __init__(self, *, network: str, prefix: str, server_ip: str, start: str, end: str,
                 lease_s: float = DEFAULT_LEASE_S, router: str | None = None,
                 dns: tuple[str, ...] | list[str] = ()) -> None:
        try:
            net = ipaddress.IPv4Network(prefix)
        except ValueError:
            raise DhcpError(f"prefix: {prefix!r} is not an IPv4 prefix (DHCPv4 only)") from None
        first, last = _addr("dhcp_scope[0]", start), _addr("dhcp_scope[1]", end)
        for key, addr in (("dhcp_scope[0]", first), ("dhcp_scope[1]", last)):
            if addr not in net or addr in (net.network_address, net.broadcast_address):
                raise DhcpError(f"{key}: {addr} is not a host address of {net}")
        if last < first:
            raise DhcpError(f"dhcp_scope: end {last} is before start {first}")
        if not lease_s > 0:
            raise DhcpError(f"lease_s: expected > 0, got {lease_s!r}")
        self.network = network
        self.prefix = net
        self.server_ip = server_ip
        self.router = router or server_ip
        self.dns = tuple(dns)
        self.lease_s = float(lease_s)
        skip = {server_ip, self.router}
        self.pool = [str(ipaddress.IPv4Address(i)) for i in range(int(first), int(last) + 1)
                     if str(ipaddress.IPv4Address(i)) not in skip]
        self._order = {ip: i for i, ip in enumerate(self.pool)}
        self.leases: dict[str, Lease] = {}       # ip -> lease (every address ever handed out)
        self.by_mac: dict[str, str] = {}         # mac -> its latest ip
        self.declined: dict[str, float] = {}     # ip -> until
        self.now = 0.0                           # the latest ``now`` seen (for stats between messages)
        self.counts = dict.fromkeys(
            ("discover", "offer", "request", "ack", "nak", "release", "decline", "inform",
             "exhausted", "ignored", "bad"), 0)

    # -- the wire edge --

    def handle_packet(self, pkt: P.Packet, now: float) -> P.Packet | None:
        """A UDP packet for port 67 from a client: the reply packet, or None."""
        payload = pkt[P.PAYLOAD]
        if not isinstance(payload, bytes) or len(payload) > MAX_MESSAGE:
            self.counts["bad"] += 1
            return None
        try:
            msg = msgpack.unpackb(payload)
        except Exception:
            self.counts["bad"] += 1
            return None
        reply = self.handle(msg, now)
        if reply is None:
            return None
        # RFC 2131 4.1: to ciaddr when the client has one, else broadcast (no ARP here).
        ciaddr = msg.get("ciaddr") if isinstance(msg, dict) else None
        dst = ciaddr if isinstance(ciaddr, str) and ciaddr not in ("", "0.0.0.0") and reply["type"] == "ACK" \
            else BROADCAST
        return P.udp(self.server_ip, dst, SERVER_PORT, CLIENT_PORT, msgpack.packb(reply))

    # -- the protocol --

    def handle(self, msg: Any, now: float) -> dict[str, Any] | None:
        """One client message: the reply message, or None (no answer)."""
        self.now = max(self.now, now)
        try:
            kind, mac, xid = self._check(msg)
        except ValueError:
            self.counts["bad"] += 1
            return None
        self.counts[kind.lower()] += 1
        handler = {"DISCOVER": self._discover, "REQUEST": self._request, "RELEASE": self._release,
                   "DECLINE": self._decline, "INFORM": self._inform}[kind]
        return handler(msg, mac, xid, now)

    @staticmethod
    def _check(msg: Any) -> tuple[str, str, int]:
        if not isinstance(msg, dict) or msg.get("op") != 1:
            raise ValueError("op: not a BOOTREQUEST")
        kind, mac, xid = msg.get("type"), msg.get("chaddr"), msg.get("xid")
        if kind not in REQUEST_TYPES:
            raise ValueError(f"type: {kind!r}")
        if not isinstance(mac, str) or len(mac) != 17:
            raise ValueError("chaddr")
        if type(xid) is not int:
            raise ValueError("xid")
        for key in ("ciaddr", "requested_ip", "server_id"):
            value = msg.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(key)
        return kind, mac.lower(), xid

    def _reply(self, kind: str, mac: str, xid: int, ip: str = "0.0.0.0", message: str = "") -> dict[str, Any]:
        self.counts[kind.lower()] += 1
        out: dict[str, Any] = {"op": 2, "type": kind, "xid": xid, "chaddr": mac, "yiaddr": ip,
                               "server_id": self.server_ip}
        if kind == "NAK":
            out["message"] = message
            return out
        lease = self.lease_s
        out.update(lease_s=lease, t1=lease / 2, t2=lease * 7 / 8, prefixlen=self.prefix.prefixlen,
                   subnet_mask=str(self.prefix.netmask), router=self.router, dns=list(self.dns))
        return out

    def _discover(self, msg: dict[str, Any], mac: str, xid: int, now: float) -> dict[str, Any] | None:
        ip = self._choose(mac, msg.get("requested_ip"), now)
        if ip is None:
            self.counts["exhausted"] += 1
            return None
        lease = self.leases.get(ip)
        if lease is None or lease.mac != mac or lease.state != "bound" or lease.expires <= now:
            self._set(ip, mac, "offered", now + OFFER_HOLD, now, msg.get("hostname"))
        return self._reply("OFFER", mac, xid, ip)

    def _request(self, msg: dict[str, Any], mac: str, xid: int, now: float) -> dict[str, Any] | None:
        server_id, requested = msg.get("server_id"), msg.get("requested_ip")
        ciaddr = msg.get("ciaddr") or "0.0.0.0"
        if server_id is not None:  # SELECTING: the client chose among the offers
            mine = self.by_mac.get(mac)
            if server_id != self.server_ip:
                if mine is not None and self.leases[mine].state == "offered":
                    self.leases[mine].state = "free"  # another server won: withdraw our offer
                self.counts["ignored"] += 1
                return None
            if requested and mine == requested and self._owned(requested, mac, now):
                return self._bind(requested, mac, xid, now, msg)
            return self._reply("NAK", mac, xid, message="requested address not offered")
        if requested and ciaddr == "0.0.0.0":  # INIT-REBOOT: verifying a remembered address
            if not self._in_scope(requested):
                return self._reply("NAK", mac, xid, message="wrong network")
            lease = self.leases.get(requested)
            if lease is None or lease.mac != mac:
                if lease is not None and lease.held(now):
                    return self._reply("NAK", mac, xid, message="address in use")
                self.counts["ignored"] += 1  # no record of this client: remain silent
                return None
            return self._bind(requested, mac, xid, now, msg)
        # RENEWING / REBINDING: the client holds ciaddr
        lease = self.leases.get(ciaddr)
        if lease is not None and lease.mac == mac and (lease.held(now) or not self._taken(ciaddr, mac, now)):
            return self._bind(ciaddr, mac, xid, now, msg)
        return self._reply("NAK", mac, xid, message="lease unknown or expired")

    def _release(self, msg: dict[str, Any], mac: str, xid: int, now: float) -> None:
        lease = self.leases.get(msg.get("ciaddr") or "")
        if lease is not None and lease.mac == mac and lease.state != "free":
            lease.state, lease.expires, lease.since = "free", now, now
        return None

    def _decline(self, msg: dict[str, Any], mac: str, xid: int, now: float) -> None:
        ip = msg.get("requested_ip") or ""
        lease = self.leases.get(ip)
        if lease is not None and lease.mac == mac:
            lease.state, lease.expires, lease.since = "free", now, now
            self.declined[ip] = now + DECLINE_HOLD
            self.by_mac.pop(mac, None)
        return None

    def _inform(self, msg: dict[str, Any], mac: str, xid: int, now: float) -> dict[str, Any]:
        reply = self._reply("ACK", mac, xid)
        del reply["lease_s"], reply["t1"], reply["t2"]  # RFC 2131 4.3.5: no lease time
        return reply

    # -- bookkeeping --

    def _bind(self, ip: str, mac: str, xid: int, now: float, msg: dict[str, Any]) -> dict[str, Any]:
        self._set(ip, mac, "bound", now + self.lease_s, now, msg.get("hostname"))
        return self._reply("ACK", mac, xid, ip)

    def _set(self, ip: str, mac: str, state: str, expires: float, now: float, hostname: Any) -> None:
        lease = self.leases.get(ip)
        if lease is None or lease.mac != mac:
            lease = self.leases[ip] = Lease(ip, mac, state, expires, now)
        lease.state, lease.expires = state, expires
        if isinstance(hostname, str):
            lease.hostname = hostname[:63]
        old = self.by_mac.get(mac)
        if old is not None and old != ip and self.leases[old].mac == mac and self.leases[old].state == "offered":
            self.leases[old].state = "free"
        self.by_mac[mac] = ip

    def _in_scope(self, ip: Any) -> bool:
        return isinstance(ip, str) and ip in self._order

    def _taken(self, ip: str, mac: str, now: float) -> bool:
        """Held by another client, or declined recently."""
        if self.declined.get(ip, 0.0) > now:
            return True
        lease = self.leases.get(ip)
        return lease is not None and lease.mac != mac and lease.held(now)

    def _owned(self, ip: str, mac: str, now: float) -> bool:
        lease = self.leases.get(ip)
        return lease is not None and lease.mac == mac and not self._taken(ip, mac, now)

    def _choose(self, mac: str, requested: Any, now: float) -> str | None:
        """RFC 2131 4.3.1: the client's current or previous address, else the requested one,
        else a free one (never-used first, then the one free for longest)."""
        previous = self.by_mac.get(mac)
        if previous is not None and not self._taken(previous, mac, now):
            return previous
        if self._in_scope(requested) and not self._taken(requested, mac, now):
            lease = self.leases.get(requested)
            if lease is None or lease.mac == mac or not lease.held(now):
                return str(requested)
        fresh = next((ip for ip in self.pool if ip not in self.leases and self.declined.get(ip, 0.0) <= now), None)
        if fresh is not None:
            return fresh
        reusable = [lease for lease in self.leases.values() if not self._taken(lease.ip, mac, now)]
        if not reusable:
            return None
        return min(reusable, key=lambda lease: (lease.since if lease.state == "free" else lease.expires,
                                                self._order[lease.ip])).ip

    def stats(self, now: float) -> dict[str, Any]:
        held = sum(1 for lease in self.leases.values() if lease.held(now))
        return {"network": self.network, "server": self.server_ip, "scope": [self.pool[0], self.pool[-1]]
                if self.pool else [], "size": len(self.pool), "in_use": held, "free": len(self.pool) - held,
                "lease_s": self.lease_s, "counts": dict(self.counts),
                "leases": [self.leases[ip].describe(now) for ip in sorted(self.leases, key=self._order.__getitem__)]}


def _addr(key: str, text: Any) -> ipaddress.IPv4Address:
    if not isinstance(text, str):
        raise DhcpError(f"{key}: expected an IPv4 address, got {text!r}")
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise DhcpError(f"{key}: {text!r} is not an IPv4 address") from None

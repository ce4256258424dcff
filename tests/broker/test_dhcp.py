"""The router's DHCP service: the sans-IO server (RFC 2131 exchanges, leases, exhaustion) and
the underlay hook (broadcast DISCOVER from 0.0.0.0:68 in, replies straight to the NIC)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from agents.mgmt import MgmtError
from broker import packets as P
from broker import wire
from broker.dhcp import BROADCAST, DhcpError, DhcpServer
from broker.underlay import Underlay

MAC1, MAC2, MAC3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"


def server(start: str = "10.0.0.100", end: str = "10.0.0.102", lease_s: float = 100.0) -> DhcpServer:
    return DhcpServer(network="dc", prefix="10.0.0.0/24", server_ip="10.0.0.1", start=start, end=end,
                      lease_s=lease_s, dns=["10.0.0.2"])


def msg(kind: str, mac: str, xid: int = 1, **fields: Any) -> dict[str, Any]:
    return {"op": 1, "type": kind, "xid": xid, "chaddr": mac, "ciaddr": "0.0.0.0", **fields}


def lease(s: DhcpServer, mac: str, now: float = 0.0, xid: int = 7) -> dict[str, Any]:
    """DISCOVER -> OFFER -> REQUEST -> ACK; returns the ACK."""
    offer = s.handle(msg("DISCOVER", mac, xid), now)
    assert offer is not None and offer["type"] == "OFFER" and offer["xid"] == xid
    ack = s.handle(msg("REQUEST", mac, xid, requested_ip=offer["yiaddr"], server_id=offer["server_id"]), now)
    assert ack is not None and ack["type"] == "ACK" and ack["yiaddr"] == offer["yiaddr"]
    return ack


def test_the_four_way_exchange_and_its_options() -> None:
    s = server()
    ack = lease(s, MAC1)
    assert ack == {"op": 2, "type": "ACK", "xid": 7, "chaddr": MAC1, "yiaddr": "10.0.0.100",
                   "server_id": "10.0.0.1", "lease_s": 100.0, "t1": 50.0, "t2": 87.5, "prefixlen": 24,
                   "subnet_mask": "255.255.255.0", "router": "10.0.0.1", "dns": ["10.0.0.2"]}
    assert lease(s, MAC2)["yiaddr"] == "10.0.0.101"
    assert s.stats(0.0)["in_use"] == 2


def test_same_mac_same_lease_even_after_release_and_expiry() -> None:
    s = server()
    first = lease(s, MAC1)["yiaddr"]
    assert lease(s, MAC1)["yiaddr"] == first  # a re-DISCOVER while bound
    s.handle(msg("RELEASE", MAC1, ciaddr=first), 1.0)
    assert s.stats(1.0)["in_use"] == 0
    assert lease(s, MAC2, now=2.0)["yiaddr"] != first  # never-used addresses go first
    assert lease(s, MAC1, now=3.0)["yiaddr"] == first
    assert lease(s, MAC1, now=500.0)["yiaddr"] == first  # expired, but nobody took it


def test_exhaustion_makes_no_offer_and_is_counted() -> None:
    s = server(end="10.0.0.101")
    lease(s, MAC1)
    lease(s, MAC2)
    assert s.handle(msg("DISCOVER", MAC3), 1.0) is None
    assert s.counts["exhausted"] == 1
    # an expired lease is reusable by someone else
    assert lease(s, MAC3, now=200.0)["yiaddr"] in ("10.0.0.100", "10.0.0.101")


def test_offers_are_held_then_lapse() -> None:
    s = server(end="10.0.0.100")
    offer = s.handle(msg("DISCOVER", MAC1), 0.0)
    assert offer is not None and offer["yiaddr"] == "10.0.0.100"
    assert s.handle(msg("DISCOVER", MAC2), 1.0) is None  # held for MAC1
    offer2 = s.handle(msg("DISCOVER", MAC2), 100.0)  # the hold lapsed
    assert offer2 is not None and offer2["yiaddr"] == "10.0.0.100"


def test_request_variants() -> None:
    s = server()
    ack = lease(s, MAC1)
    ip = ack["yiaddr"]
    # RENEWING: ciaddr set, extends the lease
    renew = s.handle(msg("REQUEST", MAC1, 9, ciaddr=ip), 60.0)
    assert renew is not None and renew["type"] == "ACK" and renew["yiaddr"] == ip
    assert s.leases[ip].expires == 160.0
    # SELECTING another server's offer withdraws ours
    offer = s.handle(msg("DISCOVER", MAC2), 61.0)
    assert offer is not None
    assert s.handle(msg("REQUEST", MAC2, requested_ip=offer["yiaddr"], server_id="10.0.0.254"), 61.0) is None
    assert s.leases[offer["yiaddr"]].state == "free"
    # SELECTING us for an address we did not offer: NAK
    nak = s.handle(msg("REQUEST", MAC3, requested_ip="10.0.0.102", server_id="10.0.0.1"), 62.0)
    assert nak is not None and nak["type"] == "NAK"
    # INIT-REBOOT: wrong network NAKed, unknown client ignored, own address ACKed
    nak = s.handle(msg("REQUEST", MAC1, requested_ip="192.168.1.5"), 63.0)
    assert nak is not None and nak["type"] == "NAK" and nak["message"] == "wrong network"
    assert s.handle(msg("REQUEST", MAC3, requested_ip="10.0.0.102"), 63.0) is None
    reboot = s.handle(msg("REQUEST", MAC1, requested_ip=ip), 64.0)
    assert reboot is not None and reboot["type"] == "ACK"
    # renewing an address held by someone else: NAK
    nak = s.handle(msg("REQUEST", MAC2, ciaddr=ip), 65.0)
    assert nak is not None and nak["type"] == "NAK"


@pytest.mark.parametrize("bad", [None, 5, {"op": 2}, {"op": 1, "type": "HELLO"},
                                 {"op": 1, "type": "DISCOVER", "xid": 1, "chaddr": 5},
                                 {"op": 1, "type": "DISCOVER", "xid": "1", "chaddr": MAC1},
                                 {"op": 1, "type": "REQUEST", "xid": 1, "chaddr": MAC1, "ciaddr": 7}])
def test_garbage_is_counted_not_answered(bad: Any) -> None:
    s = server()
    assert s.handle(bad, 0.0) is None
    assert s.counts["bad"] == 1
    assert s.handle_packet(P.udp("0.0.0.0", BROADCAST, 68, 67, b"\xc1\xc1"), 0.0) is None


@pytest.mark.parametrize(("kw", "key"), [
    ({"start": "10.0.1.5"}, "dhcp_scope[0]"), ({"end": "10.0.0.255"}, "dhcp_scope[1]"),
    ({"start": "10.0.0.50", "end": "10.0.0.40"}, "dhcp_scope"), ({"start": "x"}, "dhcp_scope[0]"),
    ({"lease_s": 0}, "lease_s"),
])
def test_scope_validation_names_the_key(kw: dict[str, Any], key: str) -> None:
    args = {"start": "10.0.0.100", "end": "10.0.0.102", "lease_s": 100.0, **kw}
    with pytest.raises(DhcpError, match=rf"^{key.replace('[', '.').replace(']', '.')}"):
        DhcpServer(network="dc", prefix="10.0.0.0/24", server_ip="10.0.0.1", **args)


# --- through the underlay ----------------------------------------------------------------------


def dhcp_fabric() -> Underlay:
    u = Underlay(random.Random(1))
    u.add_network({"name": "dc", "prefix": "10.0.0.0/24", "gateway": "10.0.0.1",
                   "dhcp_scope": ["10.0.0.100", "10.0.0.101"], "lease_s": 60, "dns": ["10.0.0.2"]})
    u.add_network({"name": "static", "prefix": "10.9.0.0/24", "gateway": "10.9.0.1"})
    return u


def attach(u: Underlay, ident: bytes, vm: str, mac: str, network: str = "dc") -> None:
    spec = {"vm": vm, "name": "eth0", "mac": mac, "network": network, "ips": [], "mtu": 1500}
    out = u.handle(ident, wire.attach(0, spec), 0.0)
    assert wire.decode(out[0][1:])[3] is True


def send_dhcp(u: Underlay, ident: bytes, body: dict[str, Any], src: str = "0.0.0.0", dst: str = BROADCAST,
              now: float = 0.0) -> list[dict[str, Any]]:
    pkt = P.udp(src, dst, 68, 67, msgpack.packb(body))
    out = u.handle(ident, wire.packets(0, dst, "", [pkt], pkt[P.SIZE], 64), now)
    replies = []
    for m in out:
        assert m[0] == ident
        hdr = wire.decode(m[1:])
        assert hdr[1] == wire.DELIVER and hdr[2] == 0
        for reply in wire.unpack_body(m[2]):
            assert reply[P.SRC] == "10.0.0.1" and reply[P.SPORT] == 67 and reply[P.DPORT] == 68
            replies.append(msgpack.unpackb(reply[P.PAYLOAD]))
    return replies


def test_underlay_serves_dhcp_to_the_asking_nic_only() -> None:
    u = dhcp_fabric()
    attach(u, b"a", "vm-a", MAC1)
    attach(u, b"b", "vm-b", MAC2)
    [offer] = send_dhcp(u, b"a", msg("DISCOVER", MAC1, 11))
    assert offer["type"] == "OFFER" and offer["yiaddr"] == "10.0.0.100" and offer["dns"] == ["10.0.0.2"]
    [ack] = send_dhcp(u, b"a", msg("REQUEST", MAC1, 11, requested_ip="10.0.0.100", server_id="10.0.0.1"))
    assert ack["type"] == "ACK" and ack["lease_s"] == 60
    # renewing is unicast to the server (the gateway address) from the leased address
    u.handle(b"a", wire.claim(0, ["10.0.0.100"]), 1.0)
    [renew] = send_dhcp(u, b"a", msg("REQUEST", MAC1, 12, ciaddr="10.0.0.100"), src="10.0.0.100",
                        dst="10.0.0.1", now=30.0)
    assert renew["type"] == "ACK"
    stats = u.stats()["networks"]["dc"]["dhcp"]
    assert stats["in_use"] == 1 and stats["counts"]["ack"] == 2
    assert stats["leases"][0]["ip"] == "10.0.0.100" and stats["leases"][0]["mac"] == MAC1
    # the second VM gets the other address; a third finds the scope exhausted
    [offer_b] = send_dhcp(u, b"b", msg("DISCOVER", MAC2, 13))
    assert offer_b["yiaddr"] == "10.0.0.101"
    attach(u, b"c", "vm-c", MAC3)
    assert send_dhcp(u, b"c", msg("DISCOVER", MAC3, 14)) == []
    assert u.stats()["networks"]["dc"]["dhcp"]["counts"]["exhausted"] == 1
    # the gateway still answers pings
    ping = P.echo("10.0.0.100", "10.0.0.1", True, 1, 1, b"")
    out = u.handle(b"a", wire.packets(0, "10.0.0.1", "", [ping], ping[P.SIZE], 64), 40.0)
    assert wire.unpack_body(out[0][2])[0][P.SPORT] == P.ICMP_ECHO_REPLY


def test_no_dhcp_on_a_static_network_and_scope_arguments() -> None:
    u = dhcp_fabric()
    attach(u, b"s", "vm-s", MAC1, network="static")
    assert send_dhcp(u, b"s", msg("DISCOVER", MAC1)) == []
    assert u.stats()["nics"]["vm-s/eth0"]["drops"]["no_route"] == 1
    assert "dhcp" not in u.stats()["networks"]["static"]
    with pytest.raises(MgmtError, match=r"^dhcp_scope\[0\]: 10.5.0.9 is not a host address"):
        u.add_network({"name": "n2", "prefix": "10.5.1.0/24", "dhcp_scope": ["10.5.0.9", "10.5.1.9"]})
    with pytest.raises(MgmtError, match="^lease_s: only with dhcp_scope"):
        u.add_network({"name": "n3", "prefix": "10.6.0.0/24", "lease_s": 5})
    with pytest.raises(MgmtError, match="^dhcp_scope: expected"):
        u.add_network({"name": "n4", "prefix": "10.7.0.0/24", "dhcp_scope": "10.7.0.5"})
    assert "n2" not in u.stats()["networks"]  # nothing changes on error

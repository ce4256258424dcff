"""Emulated packets: plain tuples with honest header sizes.

A packet is a 9-tuple, indexed by the constants below.  Tuples, not classes, because every
per-packet allocation and attribute lookup is paid on the hot path (see LIMITS.md); the
helpers here build them once where they enter the network and everything after that indexes.

    (src, dst, proto, ttl, sport, dport, info, payload, size)

* ``src``/``dst``: canonical IP address strings (IPv4 dotted quad or compressed IPv6).
* ``proto``: the IP protocol number (TCP 6, UDP 17, ICMP 1, ICMPv6 58, SCTP 132).
* ``ttl``: TTL (IPv4) or hop limit (IPv6).
* ``sport``/``dport``: L4 ports; for ICMP/ICMPv6 they carry (type, code).
* ``info``: protocol details —
    TCP   ``(flags, seq, ack, window, mss)`` (``mss`` 0 unless the SYN carries the option)
    UDP   ``None``; for VXLAN the VNI (an ``int``) and the payload is an inner frame
    ICMP  echo: ``(ident, seq)``; errors: ``(mtu_or_0, quoted_packet)`` where the quoted
          packet is the offending packet with its payload cut to 8 bytes (RFC 792/4443)
    SCTP  ``(chunk, vtag, tsn)``
* ``payload``: ``bytes``; for VXLAN an inner Ethernet frame ``(src_mac, dst_mac, packet)``.
* ``size``: the bytes the packet occupies on the wire from the IP header on, computed once
  when the packet is built, exactly as the real headers would add up (so MTU checks and
  bandwidth limits are honest).
"""

from __future__ import annotations

import ipaddress
from typing import Any

# Field indexes.
SRC, DST, PROTO, TTL, SPORT, DPORT, INFO, PAYLOAD, SIZE = range(9)

Packet = tuple[Any, ...]

# IP protocol numbers (IANA).
ICMP = 1
TCP = 6
UDP = 17
ICMPV6 = 58
SCTP = 132

PROTO_NAMES = {ICMP: "icmp", TCP: "tcp", UDP: "udp", ICMPV6: "icmpv6", SCTP: "sctp"}

# Header sizes in bytes.
IPV4_HEADER = 20
IPV6_HEADER = 40
TCP_HEADER = 20
TCP_MSS_OPTION = 4
UDP_HEADER = 8
ICMP_HEADER = 8
SCTP_COMMON_HEADER = 12
VXLAN_HEADER = 8
ETHERNET_HEADER = 14  # inner frame inside VXLAN: dst MAC, src MAC, ethertype (no FCS)

DEFAULT_TTL = 64
DEFAULT_MTU = 1500

# VXLAN on AKS-HCI: Windows-compatible VNI/port on every node (see FACTS.md).
VXLAN_PORT = 4789
VXLAN_VNI = 4096

# TCP flags (RFC 793 bit values).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

# ICMPv4 types/codes (RFC 792).
ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_NET_UNREACH = 0
ICMP_HOST_UNREACH = 1
ICMP_PROTO_UNREACH = 2
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4  # "packet too big" for IPv4: fragmentation needed and DF set
ICMP_ADMIN_PROHIBITED = 13

# ICMPv6 types/codes (RFC 4443).
ICMP6_DEST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
ICMP6_NO_ROUTE = 0
ICMP6_ADMIN_PROHIBITED = 1
ICMP6_ADDR_UNREACH = 3
ICMP6_PORT_UNREACH = 4

# SCTP chunk types (RFC 9260).
SCTP_DATA = 0
SCTP_INIT = 1
SCTP_INIT_ACK = 2
SCTP_ABORT = 6
SCTP_CHUNK_SIZES = {SCTP_DATA: 16, SCTP_INIT: 20, SCTP_INIT_ACK: 20, SCTP_ABORT: 4}


class PacketError(ValueError):
    """A packet that cannot be built or that arrived malformed; names the field."""


def is_v6(addr: str) -> bool:
    return ":" in addr


def ip_header(addr: str) -> int:
    return IPV6_HEADER if ":" in addr else IPV4_HEADER


def canonical_ip(text: str, field: str = "ip") -> str:
    """Validate and canonicalise an address at an edge (config, CLI, management)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise PacketError(f"{field}: {text!r} is not an IP address") from None


def icmp_proto(addr: str) -> int:
    return ICMPV6 if ":" in addr else ICMP


# --- builders ------------------------------------------------------------------------------


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes, ttl: int = DEFAULT_TTL) -> Packet:
    size = (IPV6_HEADER if ":" in dst else IPV4_HEADER) + UDP_HEADER + len(payload)
    return (src, dst, UDP, ttl, sport, dport, None, payload, size)


def tcp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: int,
    seq: int,
    ack: int,
    window: int,
    payload: bytes = b"",
    mss: int = 0,
    ttl: int = DEFAULT_TTL,
) -> Packet:
    size = (IPV6_HEADER if ":" in dst else IPV4_HEADER) + TCP_HEADER + len(payload)
    if mss:
        size += TCP_MSS_OPTION
    return (src, dst, TCP, ttl, sport, dport, (flags, seq, ack, window, mss), payload, size)


def sctp(
    src: str, dst: str, sport: int, dport: int, chunk: int, vtag: int, tsn: int = 0,
    payload: bytes = b"", ttl: int = DEFAULT_TTL,
) -> Packet:
    try:
        chunk_size = SCTP_CHUNK_SIZES[chunk]
    except KeyError:
        raise PacketError(f"sctp.chunk: unknown chunk type {chunk}") from None
    padded = (len(payload) + 3) & ~3
    size = ip_header(dst) + SCTP_COMMON_HEADER + chunk_size + padded
    return (src, dst, SCTP, ttl, sport, dport, (chunk, vtag, tsn), payload, size)


def echo(src: str, dst: str, request: bool, ident: int, seq: int, payload: bytes = b"",
         ttl: int = DEFAULT_TTL) -> Packet:
    if ":" in dst:
        proto, kind = ICMPV6, (ICMP6_ECHO_REQUEST if request else ICMP6_ECHO_REPLY)
    else:
        proto, kind = ICMP, (ICMP_ECHO_REQUEST if request else ICMP_ECHO_REPLY)
    size = ip_header(dst) + ICMP_HEADER + len(payload)
    return (src, dst, proto, ttl, kind, 0, (ident, seq), payload, size)


def quote(pkt: Packet) -> Packet:
    """The part of an offending packet an ICMP error carries: its header + 8 bytes of data."""
    payload = pkt[PAYLOAD]
    if not isinstance(payload, bytes):  # VXLAN inner frame: quote none of it
        payload = b""
    return pkt[:PAYLOAD] + (payload[:8], pkt[SIZE])


def icmp_error(src: str, offending: Packet, kind: int, code: int, mtu: int = 0,
               ttl: int = DEFAULT_TTL) -> Packet:
    """An ICMP/ICMPv6 error from ``src`` back to the offending packet's source."""
    dst = offending[SRC]
    quoted = quote(offending)
    size = ip_header(dst) + ICMP_HEADER + ip_header(dst) + 8
    return (src, dst, icmp_proto(dst), ttl, kind, code, (mtu, quoted), b"", size)


def unreachable(src: str, offending: Packet, code_v4: int, code_v6: int) -> Packet:
    if ":" in offending[SRC]:
        return icmp_error(src, offending, ICMP6_DEST_UNREACH, code_v6)
    return icmp_error(src, offending, ICMP_DEST_UNREACH, code_v4)


def port_unreachable(src: str, offending: Packet) -> Packet:
    return unreachable(src, offending, ICMP_PORT_UNREACH, ICMP6_PORT_UNREACH)


def net_unreachable(src: str, offending: Packet) -> Packet:
    return unreachable(src, offending, ICMP_NET_UNREACH, ICMP6_NO_ROUTE)


def time_exceeded(src: str, offending: Packet) -> Packet:
    kind = ICMP6_TIME_EXCEEDED if ":" in offending[SRC] else ICMP_TIME_EXCEEDED
    return icmp_error(src, offending, kind, 0)


def packet_too_big(src: str, offending: Packet, mtu: int) -> Packet:
    if ":" in offending[SRC]:
        return icmp_error(src, offending, ICMP6_PACKET_TOO_BIG, 0, mtu)
    return icmp_error(src, offending, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu)


def is_packet_too_big(pkt: Packet) -> bool:
    if pkt[PROTO] == ICMP:
        return pkt[SPORT] == ICMP_DEST_UNREACH and pkt[DPORT] == ICMP_FRAG_NEEDED
    return pkt[PROTO] == ICMPV6 and pkt[SPORT] == ICMP6_PACKET_TOO_BIG


def is_icmp_error(pkt: Packet) -> bool:
    proto = pkt[PROTO]
    if proto == ICMP:
        return pkt[SPORT] in (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED)
    if proto == ICMPV6:
        return pkt[SPORT] < 128
    return False


def vxlan(src: str, dst: str, sport: int, vni: int, src_mac: str, dst_mac: str,
          inner: Packet, ttl: int = DEFAULT_TTL) -> Packet:
    """VXLAN (RFC 7348): outer IP/UDP to port 4789, VXLAN header with the VNI, then the inner
    Ethernet frame.  The outer size adds 50 bytes (IPv4) to the inner packet, which is why
    overlay MTUs are 1450 on a 1500-byte underlay."""
    size = ip_header(dst) + UDP_HEADER + VXLAN_HEADER + ETHERNET_HEADER + inner[SIZE]
    return (src, dst, UDP, ttl, sport, VXLAN_PORT, vni, (src_mac, dst_mac, inner), size)


def is_vxlan(pkt: Packet) -> bool:
    return pkt[PROTO] == UDP and pkt[INFO] is not None


def with_ttl(pkt: Packet, ttl: int) -> Packet:
    return pkt[:TTL] + (ttl,) + pkt[SPORT:]


def with_addresses(pkt: Packet, src: str, dst: str, sport: int, dport: int) -> Packet:
    """The packet rewritten by NAT (address family unchanged, so the size stays)."""
    return (src, dst, pkt[PROTO], pkt[TTL], sport, dport, pkt[INFO], pkt[PAYLOAD], pkt[SIZE])


# --- validation at the edge ----------------------------------------------------------------

_INFO_LEN = {TCP: 5, ICMP: 2, ICMPV6: 2, SCTP: 3}


def validate(pkt: Any) -> Packet:
    """Check a packet decoded from a peer; raise PacketError naming the bad field.

    Used by the slow path (when the broker must look inside a batch) and by tests; the fast
    path trusts the sending VM's stack, which only ever builds packets with the helpers above.
    """
    if not isinstance(pkt, tuple) or len(pkt) != 9:
        raise PacketError("packet: expected a 9-field tuple")
    src, dst, proto, ttl, sport, dport, info, payload, size = pkt
    if not isinstance(src, str) or not isinstance(dst, str):
        raise PacketError("packet.src/dst: expected address strings")
    if (":" in src) != (":" in dst):
        raise PacketError("packet.dst: address family differs from src")
    if not isinstance(ttl, int) or not 0 <= ttl <= 255:
        raise PacketError("packet.ttl: expected 0..255")
    if not isinstance(size, int) or size < ip_header(dst):
        raise PacketError("packet.size: smaller than the IP header")
    if not isinstance(sport, int) or not isinstance(dport, int):
        raise PacketError("packet.sport/dport: expected integers")
    want = _INFO_LEN.get(proto)
    if want is not None and (not isinstance(info, tuple) or len(info) != want):
        raise PacketError(f"packet.info: {PROTO_NAMES[proto]} expects {want} fields")
    if proto == UDP and info is not None:
        if not isinstance(payload, tuple) or len(payload) != 3:
            raise PacketError("packet.payload: VXLAN expects (src_mac, dst_mac, inner)")
        validate(payload[2])
    elif not isinstance(payload, bytes):
        raise PacketError("packet.payload: expected bytes")
    return pkt


def describe(pkt: Packet) -> str:
    """One line, tcpdump-like, for logs and captures."""
    proto = pkt[PROTO]
    name = PROTO_NAMES.get(proto, str(proto))
    if proto in (ICMP, ICMPV6):
        return f"{pkt[SRC]} > {pkt[DST]}: {name} type {pkt[SPORT]} code {pkt[DPORT]}, length {pkt[SIZE]}"
    if is_vxlan(pkt):
        inner = pkt[PAYLOAD][2]
        return f"{pkt[SRC]}.{pkt[SPORT]} > {pkt[DST]}.{pkt[DPORT]}: VXLAN vni {pkt[INFO]}: {describe(inner)}"
    return f"{pkt[SRC]}.{pkt[SPORT]} > {pkt[DST]}.{pkt[DPORT]}: {name}, length {pkt[SIZE]}"

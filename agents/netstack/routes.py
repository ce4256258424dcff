"""Interfaces and the routing table (longest-prefix match), as plain objects.

The stack caches each lookup by destination string (``NetStack._route``), so the linear
longest-prefix scan here runs once per destination, not per packet.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = -1  # index of the implicit "lo" interface; never appears in take_output()


def parse_interface(text: str) -> tuple[str, IPNetwork]:
    """``"ip/len"`` (or a bare ip: a host route) -> (canonical ip, its connected network)."""
    iface = ipaddress.ip_interface(text)
    return str(iface.ip), iface.network


class Interface:
    """A NIC: addresses as ``"ip/len"`` strings, MTU and its counters."""

    __slots__ = ("index", "name", "mac", "mtu", "addresses", "ips", "networks",
                 "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tap")

    def __init__(self, index: int, name: str, mac: str, mtu: int) -> None:
        self.index = index
        self.name = name
        self.mac = mac
        self.mtu = mtu
        self.addresses: list[str] = []
        self.ips: list[str] = []
        self.networks: list[IPNetwork] = []
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        # The NIC's one tap point: ``tap(direction, pkt, now)`` sees every packet that
        # enters ("in", before PREROUTING) or leaves ("out", after POSTROUTING) this NIC, as
        # a capture on the interface would (tcpdump -i).  None: nothing to call.
        self.tap: Callable[[str, Any, float], None] | None = None

    def add(self, text: str) -> tuple[str, IPNetwork]:
        ip, net = parse_interface(text)
        if ip not in self.ips:
            self.addresses.append(f"{ip}/{net.prefixlen}")
            self.ips.append(ip)
            self.networks.append(net)
        return ip, net

    def remove(self, ip: str) -> IPNetwork | None:
        if ip not in self.ips:
            return None
        i = self.ips.index(ip)
        del self.addresses[i]
        del self.ips[i]
        return self.networks.pop(i)

    def source_for(self, dst: IPAddress, via: str) -> str | None:
        """RFC 6724-ish source selection: an address on the next hop's (or the destination's)
        subnet first, else the first address of the family."""
        target = ipaddress.ip_address(via) if via else dst
        fallback = None
        for ip, net in zip(self.ips, self.networks, strict=True):
            if net.version != dst.version:
                continue
            if target in net:
                return ip
            if fallback is None:
                fallback = ip
        return fallback

    def counters(self) -> dict[str, Any]:
        return {"index": self.index, "mac": self.mac, "mtu": self.mtu, "addresses": list(self.addresses),
                "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
                "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes}


class Route:
    __slots__ = ("network", "dev", "via", "metric", "src", "kind")

    def __init__(self, network: IPNetwork, dev: int, via: str, metric: int, src: str | None,
                 kind: str) -> None:
        self.network = network
        self.dev = dev
        self.via = via
        self.metric = metric
        self.src = src
        self.kind = kind  # "connected" (added with an address) or "static"

    def as_dict(self) -> dict[str, Any]:
        return {"prefix": str(self.network), "dev": self.dev, "via": self.via, "metric": self.metric,
                "src": self.src, "kind": self.kind}


class RouteTable:
    """Routes kept sorted longest prefix first, then lowest metric: the first match wins."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, route: Route) -> None:
        for r in self._routes:
            if r.network == route.network and r.dev == route.dev and r.metric == route.metric:
                raise FileExistsError(f"route {route.network} dev {route.dev}: exists")
        self._routes.append(route)
        self._routes.sort(key=lambda r: (-r.network.prefixlen, r.metric))

    def remove(self, network: IPNetwork, dev: int | None = None, kind: str | None = None) -> int:
        keep = [r for r in self._routes
                if not (r.network == network and (dev is None or r.dev == dev)
                        and (kind is None or r.kind == kind))]
        removed = len(self._routes) - len(keep)
        self._routes = keep
        return removed

    def remove_dev(self, dev: int) -> None:
        self._routes = [r for r in self._routes if r.dev != dev]

    def lookup(self, addr: IPAddress) -> Route | None:
        for r in self._routes:
            if addr in r.network:  # False across families, no exception
                return r
        return None

    def connected_dev(self, addr: IPAddress) -> int | None:
        for r in self._routes:
            if r.kind == "connected" and addr in r.network:
                return r.dev
        return None

    def __iter__(self) -> Any:
        return iter(self._routes)

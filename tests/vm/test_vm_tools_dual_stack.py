"""getaddrinfo in the tools on a dual-stack pod: AAAA asked too only when the caller has a
(non-link-local) IPv6 address (AI_ADDRCONFIG), RFC 6724 order (IPv4 before ULA); curl's Host
header keeps an IPv6 literal's brackets."""

from __future__ import annotations

import argparse
import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agents.dns.resolver import Resolution
from agents.vm import curl, tools


def net_with(*ips: str) -> Any:
    return SimpleNamespace(stack=SimpleNamespace(local_addresses=lambda: set(ips)))


def test_has_ipv6_ignores_loopback_and_link_local() -> None:
    assert not tools.has_ipv6(net_with("10.244.0.5", "::1", "fe80::ecee:eeff:feee:eeee"))
    assert tools.has_ipv6(net_with("10.244.0.5", "fd00:10:244::5"))
    assert not tools.has_ipv6(object())


def test_rfc6724_order() -> None:
    assert tools.sort_addresses(["fd00:10:96::a", "10.96.0.15"]) == ["10.96.0.15", "fd00:10:96::a"]
    # global IPv6 (precedence 40) before IPv4 (35), Teredo 2001::/32 (5) after it; stable otherwise
    assert tools.sort_addresses(["10.96.0.15", "2001:0:1::1", "2600::1", "2001:db8::1"]) == \
        ["2600::1", "2001:db8::1", "10.96.0.15", "2001:0:1::1"]
    assert tools.sort_addresses(["fd00::1"]) == ["fd00::1"]


@pytest.mark.parametrize(("ips", "qtypes"), [
    (("10.244.0.5",), ("A",)),
    (("10.244.0.5", "fd00:10:244::5"), ("A", "AAAA")),
])
def test_resolve_host_asks_aaaa_only_with_ipv6(monkeypatch: pytest.MonkeyPatch, ips: tuple[str, ...],
                                               qtypes: tuple[str, ...]) -> None:
    asked: list[tuple[str, ...]] = []

    async def fake(net: Any, host: str, q: Any) -> Resolution:
        asked.append(tuple(q))
        return Resolution("ok", host, "web.default.svc.cluster.local", "web.default.svc.cluster.local.",
                          ("fd00:10:96::a", "10.96.0.15") if "AAAA" in q else ("10.96.0.15",))

    monkeypatch.setattr(tools, "dns_resolve", fake)
    got = asyncio.run(tools.resolve_host(net_with(*ips), "web"))
    assert asked == [qtypes] and got.ip == "10.96.0.15"
    assert asyncio.run(tools.resolve_host(net_with(*ips), "fd00:10:96::a")).ip == "fd00:10:96::a"
    assert len(asked) == 1  # a literal asks no DNS


def test_curl_host_header_brackets_an_ipv6_literal() -> None:
    ns = argparse.Namespace(user_agent="curl/8", data=[], header=[])
    assert curl._request_headers(ns, "fd00:10:96::a", 80, b"")[0] == ("Host", "[fd00:10:96::a]")
    assert curl._request_headers(ns, "fd00:10:96::a", 8080, b"")[0] == ("Host", "[fd00:10:96::a]:8080")
    assert curl._request_headers(ns, "web", 80, b"")[0] == ("Host", "web")

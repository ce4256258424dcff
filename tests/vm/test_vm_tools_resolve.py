"""Names in the tools: ping, curl, nc, transfer and udp-send resolve through the VM's
resolv.conf over real DNS (a datacenter DNS server on the in-process fabric), print the real
tools' words when a name does not resolve, and ask no DNS for an address literal."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop
from vm_loopnet import LoopNet

from agents.dns.datacenter import StaticZone
from agents.dns.resolver import ResolvConf
from agents.dns.server import DnsServer, serve_dns
from agents.vm.apps import make_app
from agents.vm.runtime import AppConfig
from agents.vm.streams import AsyncStack
from agents.vm.tools import run_tool

DNS, WEB, CLIENT, MUTE = "172.16.0.2", "172.16.0.10", "172.16.0.20", "172.16.0.3"
RECORDS = [
    {"name": "db.corp.example", "type": "A", "value": WEB},
    {"name": "www.corp.example", "type": "CNAME", "value": "db.corp.example"},
    {"name": "v6only.corp.example", "type": "AAAA", "value": "2001:db8::10"},
    {"name": "mute.corp.example", "type": "A", "value": MUTE},
    {"name": "10.0.16.172.in-addr.arpa", "type": "PTR", "value": "db.corp.example"},
]


@dataclass
class World:
    client: AsyncStack
    dns: DnsServer

    def queries(self) -> int:
        return self.dns.counts["queries"]


def run(scenario: Callable[[World], Awaitable[Any]], conf: ResolvConf | None = None, timeout: float = 10.0) -> Any:
    async def main() -> Any:
        net = LoopNet()
        dns_vm = net.add_vm("dc-dns", DNS)
        web = net.add_vm("web", WEB)
        net.add_vm("mute", MUTE)  # a host with no DNS server: its port 53 is closed
        client = net.add_vm("client", CLIENT)
        # what resolv_conf_of finds first: the VM config's `dns` key would give the same
        client.resolv_conf = conf or ResolvConf(nameservers=(DNS,), search=("corp.example",))  # type: ignore[attr-defined]
        zone = StaticZone(RECORDS, zones=["corp.example", "16.172.in-addr.arpa"])
        server = await serve_dns(dns_vm, "0.0.0.0", 53, zone)
        apps = [make_app(web, AppConfig(kind=kind, port=port))
                for kind, port in (("http", 8080), ("tcp-sink", 9000), ("udp-sink", 9001))]
        for app in apps:
            await app.start()
        try:
            return await asyncio.wait_for(scenario(World(client, server)), timeout)
        finally:
            for app in apps:
                await app.stop()
            server.close()
    return uvloop.run(main())


def test_curl_nc_transfer_udp_send_reach_a_name() -> None:
    async def scenario(w: World) -> None:
        assert await run_tool(w.client, ["curl", "-s", "http://db.corp.example:8080/hostname"]) == (0, "web\n", "")
        rc, out, _ = await run_tool(w.client, ["curl", "-s", "-w", " %{remote_ip}", "http://www:8080/hostname"])
        assert (rc, out) == (0, f"web\n {WEB}")  # the search list, then the CNAME to db
        rc, _, err = await run_tool(w.client, ["nc", "-z", "-v", "www.corp.example", "8080"])
        assert rc == 0 and err.startswith("Connection to www.corp.example 8080 port [tcp/")  # nc names the host as given
        rc, out, _ = await run_tool(w.client, ["transfer", "--bytes", "1000", "db.corp.example", "9000"])
        assert rc == 0 and "sha256 match" in out
        rc, out, _ = await run_tool(w.client, ["udp-send", "--count", "2", "db", "9001"])
        assert rc == 0 and out.startswith("udp-send: 2 datagrams of 100 bytes to db:9001")
    run(scenario)


def test_ping_a_name_shows_the_canonical_name_and_the_ptr_name() -> None:
    async def scenario(w: World) -> None:
        rc, out, err = await run_tool(w.client, ["ping", "-c", "2", "-i", "0", "www.corp.example"])
        assert rc == 0 and err == "" and w.queries() == 2  # A (with the CNAME), then one PTR
        lines = out.splitlines()
        # the header and the summary name the canonical name (AI_CANONNAME), each reply the
        # PTR name of its source (getnameinfo), asked once for the run (pr_addr's buffer)
        assert lines[0] == f"PING db.corp.example ({WEB}) 56(84) bytes of data."
        assert all(re.fullmatch(rf"64 bytes from db\.corp\.example \({WEB}\): icmp_seq=\d ttl=64 time=\S+ ms", x)
                   for x in lines[1:3]), lines
        assert "--- db.corp.example ping statistics ---" in lines
        before = w.queries()
        rc, out, _ = await run_tool(w.client, ["ping", "-c", "1", "-n", "db"])
        assert rc == 0 and f"64 bytes from {WEB}: icmp_seq=1" in out
        assert w.queries() - before == 1  # db.corp.example (fewer dots than ndots: searched first), no PTR
    run(scenario)


def test_ping_a_name_without_ptr_shows_the_address_twice() -> None:
    async def scenario(w: World) -> None:
        rc, out, _ = await run_tool(w.client, ["ping", "-c", "1", "mute.corp.example"])
        assert rc == 0 and f"64 bytes from {MUTE} ({MUTE}): icmp_seq=1" in out  # getnameinfo's numeric fallback
        before = w.queries()
        rc, out, _ = await run_tool(w.client, ["ping", "-c", "1", "localhost"])  # the hosts file, both ways
        assert rc == 0 and out.startswith("PING localhost (127.0.0.1)")
        assert "64 bytes from localhost (127.0.0.1): icmp_seq=1" in out
        assert w.queries() == before
    run(scenario)


def test_address_literals_ask_no_dns() -> None:
    async def scenario(w: World) -> None:
        before = w.queries()
        assert (await run_tool(w.client, ["curl", "-s", f"http://{WEB}:8080/hostname"]))[0] == 0
        rc, out, _ = await run_tool(w.client, ["ping", "-c", "1", WEB])
        assert rc == 0 and f"64 bytes from {WEB}: icmp_seq=1" in out  # a numeric target implies -n
        assert (await run_tool(w.client, ["nc", "-z", WEB, "8080"]))[0] == 0
        assert (await run_tool(w.client, ["udp-send", WEB, "9001"]))[0] == 0
        assert w.queries() == before
    run(scenario)


# (argv with NAME, rc, stderr with NAME and ERR); NAME does not resolve
FAILURES = [
    (["ping", "-c", "1", "NAME"], 2, "ping: NAME: ERR\n"),
    (["curl", "http://NAME:8080/"], 6, "curl: (6) Could not resolve host: NAME\n"),
    (["curl", "-s", "http://NAME/"], 6, ""),
    (["nc", "-z", "NAME", "80"], 1, 'nc: getaddrinfo for host "NAME" port 80: ERR\n'),
    (["transfer", "--bytes", "10", "NAME", "9000"], 2, "transfer: NAME: ERR\n"),
    (["udp-send", "NAME", "9001"], 2, "udp-send: NAME: ERR\n"),
]
CAUSES = [  # (name, resolver config, gai_strerror)
    ("nothere.corp.example", None, "Name or service not known"),                  # NXDOMAIN
    ("v6only.corp.example", None, "No address associated with hostname"),       # no A record
    ("db.corp.example", ResolvConf(nameservers=(MUTE,), timeout=0.2, attempts=1),
     "Temporary failure in name resolution"),                                   # nobody answers
]


@pytest.mark.parametrize(("argv", "rc", "err"), FAILURES, ids=[f[0][0] + str(i) for i, f in enumerate(FAILURES)])
@pytest.mark.parametrize(("name", "conf", "why"), CAUSES, ids=["nxdomain", "nodata", "again"])
def test_a_name_that_does_not_resolve(argv: list[str], rc: int, err: str, name: str, conf: ResolvConf | None,
                                      why: str) -> None:
    async def scenario(w: World) -> None:
        got = await run_tool(w.client, [a.replace("NAME", name) for a in argv])
        assert got == (rc, "", err.replace("NAME", name).replace("ERR", why))
    run(scenario, conf)

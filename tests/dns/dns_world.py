"""The DNS test world: CoreDNS-like server, datacenter DNS and a client on the in-process fabric."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvloop
from dns_objects import cluster_objects
from vm_loopnet import LoopNet

from agents.dns.datacenter import StaticZone
from agents.dns.server import DnsServer, serve_dns
from agents.dns.zone import Zone
from agents.vm.streams import AsyncStack

COREDNS, DCDNS, CLIENT, SILENT = "10.96.0.10", "172.16.0.2", "172.16.0.20", "172.16.0.3"
DC_RECORDS = [
    {"name": "db.corp.example", "type": "A", "value": "172.16.0.50"},
    {"name": "www.corp.example", "type": "CNAME", "value": "db.corp.example"},
    {"name": "v6.corp.example", "type": "AAAA", "value": "2001:db8::50"},
    {"name": "ext.example.org", "type": "CNAME", "value": "db.corp.example"},
]


@dataclass
class World:
    net: LoopNet
    client: AsyncStack
    coredns: DnsServer
    dc: DnsServer


def run(scenario: Callable[[World], Awaitable[Any]], *, upstream: tuple[str, ...] = (DCDNS,),
        zone: Zone | None = None, timeout: float = 10.0) -> Any:
    async def main() -> Any:
        net = LoopNet()
        core_vm = net.add_vm("coredns", COREDNS)
        dc_vm = net.add_vm("dcdns", DCDNS)
        net.add_vm("silent", SILENT)
        client = net.add_vm("client", CLIENT)
        z = zone or Zone()
        if zone is None:
            z.update(*cluster_objects())
        dc = await serve_dns(dc_vm, "0.0.0.0", 53, StaticZone(DC_RECORDS, zones=["corp.example", "example.org"]))
        core = await serve_dns(core_vm, "0.0.0.0", 53, z, upstream=upstream, upstream_timeout=0.3)
        try:
            return await asyncio.wait_for(scenario(World(net, client, core, dc)), timeout)
        finally:
            core.close()
            dc.close()
    return uvloop.run(main())

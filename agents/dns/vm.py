"""VM kind ``dns``: the datacenter's DNS server (see :mod:`agents.dns.datacenter`).

Found lazily by the VM runtime (``kind: dns`` imports ``agents.dns.vm``).  On top of a plain
VM it serves :class:`~.datacenter.StaticZone` on UDP and TCP port 53 (config ``port``).
Management verb ``dns_stats`` -> the server's counters and its record count.
"""

from __future__ import annotations

from typing import Any

from agents import mgmt
from agents.vm.runtime import VM, ConfigError, VMConfig, register_kind

from .datacenter import StaticZone, StaticZoneError
from .server import DNS_PORT, DnsServer, serve_dns


@register_kind("dns")
class DnsVM(VM):
    def __init__(self, config: VMConfig) -> None:
        super().__init__(config)
        try:
            self.zone = StaticZone.from_config(config.raw)
        except StaticZoneError as exc:
            raise ConfigError(str(exc)) from None
        port = config.raw.get("port", DNS_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"port: expected 1..65535, got {port!r}")
        self.dns_port = port
        self.dns: DnsServer | None = None

    async def start_services(self) -> None:
        await super().start_services()
        self.dns = await serve_dns(self, "0.0.0.0", self.dns_port, self.zone)

    async def stop_services(self) -> None:
        if self.dns is not None:
            self.dns.close()
            self.dns = None
        await super().stop_services()

    def mgmt_handlers(self) -> dict[str, mgmt.Handler]:
        handlers = super().mgmt_handlers()
        handlers["dns_stats"] = self._m_dns_stats
        return handlers

    def _m_dns_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"records": len(self.zone.records()), "zones": [z.rstrip(".") for z in self.zone.zones],
                **(self.dns.stats() if self.dns is not None else {})}

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["dns"] = self._m_dns_stats({})
        return out

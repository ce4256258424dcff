"""The datacenter's DNS server: a plain VM serving zone records from the scenario.

On AKS-HCI the networks' ``dnsServers`` are the datacenter's own DNS servers (typically the
Active Directory DNS); the cluster's CoreDNS forwards everything outside ``cluster.local``
to them.  This VM kind plays that server: authoritative for its zones, answering from its
records, NXDOMAIN for everything else (it does not recurse).

VM config keys (besides the plain VM's)::

    "kind": "dns",
    "records": [{"name": "db.corp.example", "type": "A", "value": "172.16.0.50"},
                {"name": "www.corp.example", "type": "CNAME", "value": "db.corp.example"}],
    "zones": ["corp.example"],       # optional: default, each record name's last two labels
    "ttl": 300,                      # optional: the records' TTL (seconds)
    "port": 53                       # optional

``type`` is A, AAAA or CNAME (also PTR, TXT, MX, SRV, NS in presentation format);
``value`` is the address or the target name.  CNAMEs inside the server's records are
followed in the answer, as an authoritative server does for in-zone targets.
:class:`StaticZone` is the sans-IO part; :class:`DnsVM` (module ``agents.dns.vm``) runs it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from .zone import NOERROR, NXDOMAIN, Answer, Record

__all__ = ["StaticZone", "StaticZoneError", "RECORD_TYPES"]

RECORD_TYPES = ("A", "AAAA", "CNAME", "PTR", "TXT", "MX", "SRV", "NS")
DEFAULT_TTL = 300
MAX_CHAIN = 8


class StaticZoneError(ValueError):
    """A bad record or zone in the config; the message names the key."""


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _default_zone(name: str) -> str:
    """The zone a record is taken to live in when the config names none: its last two
    labels (``db.corp.example`` -> ``corp.example``), as a datacenter's zones usually are."""
    return ".".join(name.rstrip(".").split(".")[-2:]) + "."


class StaticZone:
    """Records by owner name; ``answer(qname, qtype)`` like :class:`~.zone.Zone`."""

    def __init__(self, records: Iterable[Mapping[str, Any]] = (), *, zones: Iterable[str] | None = None,
                 ttl: int = DEFAULT_TTL, where: str = "records") -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 2 ** 31 - 1:
            raise StaticZoneError(f"ttl: expected seconds 0..2147483647, got {ttl!r}")
        self.ttl = ttl
        self._records: dict[str, list[Record]] = {}
        for i, obj in enumerate(records):
            self.add(obj, f"{where}[{i}]")
        if zones is None:
            zones = {_default_zone(name) for name in self._records}
        self.zones = tuple(sorted((_fqdn(str(z).lower()) for z in zones), key=len, reverse=True))
        self.serial = 1

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> StaticZone:
        records = raw.get("records", [])
        if not isinstance(records, list):
            raise StaticZoneError(f"records: expected a list, got {type(records).__name__}")
        zones = raw.get("zones")
        if zones is not None and (not isinstance(zones, list) or not all(isinstance(z, str) for z in zones)):
            raise StaticZoneError(f"zones: expected a list of names, got {zones!r}")
        return cls(records, zones=zones, ttl=raw.get("ttl", DEFAULT_TTL))

    def add(self, obj: Mapping[str, Any], where: str = "record") -> None:
        if not isinstance(obj, Mapping):
            raise StaticZoneError(f"{where}: expected a mapping with name, type, value")
        name, rtype, value = obj.get("name"), obj.get("type", "A"), obj.get("value")
        if not isinstance(name, str) or not name.strip("."):
            raise StaticZoneError(f"{where}.name: expected a domain name, got {name!r}")
        if not isinstance(rtype, str) or rtype.upper() not in RECORD_TYPES:
            raise StaticZoneError(f"{where}.type: expected one of {', '.join(RECORD_TYPES)}, got {rtype!r}")
        rtype = rtype.upper()
        if not isinstance(value, str) or not value:
            raise StaticZoneError(f"{where}.value: expected a string, got {value!r}")
        data = self._data(rtype, value, where)
        owner = _fqdn(name.lower())
        self._records.setdefault(owner, []).append(Record(_fqdn(name), rtype, self.ttl, data))

    @staticmethod
    def _data(rtype: str, value: str, where: str) -> str:
        if rtype in ("A", "AAAA"):
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                raise StaticZoneError(f"{where}.value: not an IP address: {value!r}") from None
            if (ip.version == 6) != (rtype == "AAAA"):
                raise StaticZoneError(f"{where}.value: {value} is not an {rtype} address")
            return str(ip)
        if rtype in ("CNAME", "PTR", "NS"):
            return _fqdn(value)
        if rtype == "TXT" and not value.startswith('"'):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return value  # MX / SRV / quoted TXT: presentation format as given

    def zone_of(self, name: str) -> str | None:
        for zone in self.zones:
            if name == zone or name.endswith("." + zone):
                return zone
        return None

    def soa(self, zone: str) -> Record:
        return Record(zone, "SOA", self.ttl, f"ns1.{zone} hostmaster.{zone} {self.serial} 3600 600 86400 {self.ttl}")

    def answer(self, qname: str, qtype: str) -> Answer:
        name = _fqdn(qname.lower())
        qtype = qtype.upper()
        zone = self.zone_of(name)
        if zone is None:
            # not ours and no recursion: the scenario's contract is NXDOMAIN, without an SOA
            return Answer(rcode=NXDOMAIN, authoritative=False)
        if qtype == "SOA" and name == zone:
            return Answer(answers=(self.soa(zone),))
        out: list[Record] = []
        owner, asked = name, _fqdn(qname)
        for _ in range(MAX_CHAIN):
            recs = self._records.get(owner)
            if recs is None:
                if out:  # a CNAME into nothing: the chain as far as it goes (RFC 1034 4.3.2)
                    break
                return Answer(rcode=NXDOMAIN, authority=(self.soa(zone),))
            match = [Record(asked, r.rtype, r.ttl, r.data) for r in recs if r.rtype == qtype]
            if match:
                out += match
                break
            cname = next((r for r in recs if r.rtype == "CNAME"), None)
            if cname is None or qtype == "CNAME":
                break
            out.append(Record(asked, "CNAME", cname.ttl, cname.data))
            owner = asked = cname.data
            owner = owner.lower()
            if self.zone_of(owner) is None:
                break  # out of our zones: the resolver follows it
        if not out:
            return Answer(rcode=NOERROR, authority=(self.soa(zone),))
        return Answer(answers=tuple(out))

    def records(self) -> list[Record]:
        return [r for recs in self._records.values() for r in recs]

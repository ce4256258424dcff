"""DNS: the cluster's CoreDNS answers, the pods' and VMs' stub resolver, the datacenter DNS.

* :mod:`.zone` -- ``cluster.local`` as CoreDNS's kubernetes plugin answers it (sans-IO);
* :mod:`.resolver` -- resolv.conf, search list and ndots, the lookup state machine (sans-IO);
* :mod:`.datacenter` -- the datacenter DNS server's static zone (sans-IO);
* :mod:`.server` -- DNS over UDP/TCP on a VM's or pod's sockets, wire format via dnspython:
  ``serve_dns``, ``query``, ``resolve`` (asyncio);
* :mod:`.vm` -- VM kind ``dns``; :mod:`.nslookup` -- the ``nslookup`` tool;
* :mod:`.corefile` -- kubeadm's Corefile and the options read from one (sans-IO);
* :mod:`.coredns` -- CoreDNS in its pod: informers through the API server, the zone, DNS on
  port 53 (``coredns_dns_factory``, the coredns container's ``dns`` hook; asyncio).

Only the sans-IO parts are re-exported here, so importing the package pulls in no asyncio code.
"""

from .datacenter import StaticZone, StaticZoneError
from .resolver import Lookup, Query, Resolution, ResolvConf, ResolvConfError, StubResolver, resolv_conf_of
from .zone import NOERROR, NXDOMAIN, REFUSED, SERVFAIL, Answer, Record, Zone, ZoneError

__all__ = [
    "NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "Answer", "Lookup", "Query", "Record", "Resolution",
    "ResolvConf", "ResolvConfError", "StaticZone", "StaticZoneError", "StubResolver", "Zone", "ZoneError",
    "resolv_conf_of",
]

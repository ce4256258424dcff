"""The stub resolver of a pod or a VM (sans-IO): resolv.conf, the search list, ndots.

:class:`ResolvConf` is ``/etc/resolv.conf`` (resolv.conf(5)); :meth:`ResolvConf.for_pod` is
what the kubelet writes for a ``dnsPolicy: ClusterFirst`` pod::

    search <ns>.svc.cluster.local svc.cluster.local cluster.local
    nameserver 10.96.0.10
    options ndots:5

:class:`StubResolver` decides, like glibc's ``res_search`` (or musl's
``name_from_dns_search``), which absolute names to ask for in which order, and
:class:`Lookup` walks those questions over the nameservers as ``res_send`` does, fed the
answers (or timeouts) by whoever owns the sockets, and combines them into a
:class:`Resolution` -- the getaddrinfo result a tool reports.

The search order (glibc ``__res_context_search``):

* a name ending in a dot is asked as is, once;
* a name with at least ``ndots`` dots is asked as is first, then with each search domain;
* a name with fewer dots is asked with each search domain first, then as is;
* NXDOMAIN and NODATA go on to the next name; SERVFAIL goes on too (glibc counts it and
  reports TRY_AGAIN if nothing else answers); no answer at all (every server timed out)
  ends the search at once with TRY_AGAIN.

musl (Alpine, busybox images) differs: a name with ``ndots`` dots or more is asked as is
only, and any failure other than NXDOMAIN/NODATA ends the search.

Per question the nameservers are tried in order, ``attempts`` rounds of ``timeout`` seconds
each (defaults 2 and 5 s, resolv.conf(5)); SERVFAIL, REFUSED and NOTIMP move on to the next
server.  The hosts file (``files`` before ``dns`` in nsswitch.conf) is looked at first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .zone import NOERROR, NXDOMAIN, Record, is_ip

__all__ = ["Lookup", "Query", "Resolution", "ResolvConf", "ResolvConfError", "StubResolver", "resolv_conf_of",
           "CLUSTER_DNS", "CLUSTER_DOMAIN", "MAXNS"]

CLUSTER_DNS = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
MAXNS = 3            # glibc resolv.h: at most 3 nameservers are used
MAX_NDOTS = 15       # res_init caps ndots, timeout and attempts
MAX_TIMEOUT = 30
MAX_ATTEMPTS = 5
_RETRY_NEXT_SERVER = frozenset({2, 4, 5})  # SERVFAIL, NOTIMP, REFUSED: res_send tries the next one
DEFAULT_HOSTS: Mapping[str, tuple[str, ...]] = {"localhost": ("127.0.0.1", "::1")}


class ResolvConfError(ValueError):
    """A bad resolver configuration; the message names the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout: float = 5.0
    attempts: int = 2

    @property
    def servers(self) -> tuple[str, ...]:
        """The servers asked: the first three; none configured means the local host (glibc)."""
        return self.nameservers[:MAXNS] or ("127.0.0.1",)

    @classmethod
    def for_pod(cls, namespace: str, *, cluster_dns: Sequence[str] = (CLUSTER_DNS,),
                domain: str = CLUSTER_DOMAIN, host_search: Sequence[str] = (), ndots: int = 5) -> ResolvConf:
        """The kubelet's ClusterFirst resolv.conf; the node's search domains come after the
        cluster's (kubelet ``dns.go``)."""
        search = (f"{namespace}.svc.{domain}", f"svc.{domain}", domain, *host_search)
        return cls(nameservers=tuple(cluster_dns), search=search, ndots=ndots)

    @classmethod
    def parse(cls, text: str) -> ResolvConf:
        """resolv.conf(5): ``nameserver``, ``search`` / ``domain`` (the last one wins),
        ``options ndots:N timeout:N attempts:N``; unknown lines are ignored, as libc does."""
        servers: list[str] = []
        search: tuple[str, ...] = ()
        opts: dict[str, Any] = {}
        for line in text.splitlines():
            words = line.split("#", 1)[0].split(";", 1)[0].split()
            if not words:
                continue
            key, args = words[0], words[1:]
            if key == "nameserver" and args and is_ip(args[0]):
                servers.append(args[0])
            elif key in ("search", "domain") and args:
                search = tuple(args) if key == "search" else (args[0],)
            elif key == "options":
                for opt in args:
                    name, _, value = opt.partition(":")
                    if name in ("ndots", "timeout", "attempts") and value.isdigit():
                        opts[name] = int(value)
        return cls._clamped(servers, search, opts)

    @classmethod
    def from_config(cls, obj: Any, where: str = "dns") -> ResolvConf:
        """The VM config's ``dns: {nameservers: [...], search: [...], ndots: N, timeout: S,
        attempts: N}`` (every key optional); errors name the key."""
        if not isinstance(obj, Mapping):
            raise ResolvConfError(f"{where}: expected a mapping, got {type(obj).__name__}")
        unknown = set(obj) - {"nameservers", "search", "ndots", "timeout", "attempts"}
        if unknown:
            raise ResolvConfError(f"{where}.{sorted(unknown)[0]}: unknown key")
        servers = _strings(obj.get("nameservers", []), f"{where}.nameservers")
        for i, ip in enumerate(servers):
            if not is_ip(ip):
                raise ResolvConfError(f"{where}.nameservers[{i}]: not an IP address: {ip!r}")
        search = _strings(obj.get("search", []), f"{where}.search")
        opts: dict[str, Any] = {}
        for key, kind in (("ndots", int), ("timeout", (int, float)), ("attempts", int)):
            if key in obj:
                value = obj[key]
                if isinstance(value, bool) or not isinstance(value, kind) or value < (0 if key == "ndots" else 1):
                    raise ResolvConfError(f"{where}.{key}: expected a number >= {0 if key == 'ndots' else 1}, "
                                          f"got {value!r}")
                opts[key] = value
        return cls._clamped(servers, tuple(search), opts)

    @classmethod
    def _clamped(cls, servers: Iterable[str], search: tuple[str, ...], opts: Mapping[str, Any]) -> ResolvConf:
        return cls(nameservers=tuple(servers), search=tuple(s.rstrip(".") for s in search if s.strip(".")),
                   ndots=min(int(opts.get("ndots", 1)), MAX_NDOTS),
                   timeout=min(float(opts.get("timeout", 5.0)), MAX_TIMEOUT),
                   attempts=min(int(opts.get("attempts", 2)), MAX_ATTEMPTS))

    def render(self) -> str:
        lines = [f"search {' '.join(self.search)}"] if self.search else []
        lines += [f"nameserver {ip}" for ip in self.nameservers]
        opts = [f"ndots:{self.ndots}"] if self.ndots != 1 else []
        if self.timeout != 5.0:
            opts.append(f"timeout:{self.timeout:g}")
        if self.attempts != 2:
            opts.append(f"attempts:{self.attempts}")
        if opts:
            lines.append("options " + " ".join(opts))
        return "\n".join(lines) + "\n"


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ResolvConfError(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


# --- one lookup ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """One datagram to send: ask ``server`` for ``name`` (absolute) / ``qtype``."""

    name: str
    qtype: str
    server: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Resolution:
    """What getaddrinfo would return. ``status``: ``ok``, ``nxdomain`` (EAI_NONAME),
    ``nodata`` (EAI_NODATA) or ``again`` (EAI_AGAIN: timeouts, SERVFAIL)."""

    status: str
    host: str                              # what was asked
    name: str = ""                         # the canonical name (end of the CNAME chain)
    qname: str = ""                        # the absolute name that answered
    addresses: tuple[str, ...] = ()
    cnames: tuple[tuple[str, str], ...] = ()  # (alias, canonical), in chain order
    records: tuple[Record, ...] = ()
    queries: int = 0
    tried: tuple[str, ...] = ()            # the absolute names asked, in order

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def gai_error(self) -> str:
        """glibc's gai_strerror text, as ping/nc/curl print it."""
        return _GAI_TEXT[self.status]


_GAI_TEXT = {"ok": "Success", "nxdomain": "Name or service not known",
             "nodata": "No address associated with hostname", "again": "Temporary failure in name resolution"}


class Lookup:
    """One name -> addresses, as a state machine: ``next_query()`` -> send it;
    ``on_answer(query, rcode, records)`` or ``on_timeout(query)``; repeat until ``done``."""

    def __init__(self, host: str, candidates: Sequence[str], qtypes: Sequence[str], conf: ResolvConf,
                 *, flavor: str = "glibc", as_is_first: bool = False) -> None:
        self.host = host
        self.conf = conf
        self.flavor = flavor
        self._qtypes = tuple(q.upper() for q in qtypes)
        self._names = list(candidates)
        self._as_is_first = as_is_first
        self._name_i = 0
        self._qtype_i = 0
        self._try_i = 0   # index over servers x attempts of the current question
        self._pending: Query | None = None
        self._found: list[Record] = []   # answers of the current name, by qtype
        self._answered_name = False      # a qtype of the current name said NOERROR with data
        self._saved: str | None = None   # glibc saved_herrno: the as-is try's failure
        self._got_nodata = False
        self._got_servfail = False
        self._queries = 0
        self.result: Resolution | None = None
        if not self._names:
            self._finish("nxdomain")

    @property
    def done(self) -> bool:
        return self.result is not None

    def next_query(self) -> Query | None:
        if self.result is not None:
            return None
        if self._pending is None:
            servers = self.conf.servers
            server = servers[self._try_i % len(servers)]
            self._pending = Query(self._names[self._name_i], self._qtypes[self._qtype_i], server, self.conf.timeout)
            self._queries += 1
        return self._pending

    # -- events --

    def on_answer(self, query: Query, rcode: int, records: Sequence[Record]) -> None:
        if query != self._pending:
            return  # a late answer to a question already given up on
        self._pending = None
        if rcode in _RETRY_NEXT_SERVER and self._next_server():
            return
        if rcode == NOERROR:
            wanted = [r for r in records if r.rtype == query.qtype]
            if wanted:
                self._answered_name = True
            self._found.extend(records)
            self._next_qtype()
        elif rcode == NXDOMAIN:
            self._name_failed("nxdomain")
        else:  # SERVFAIL (and the like) from every server
            self._name_failed("servfail")

    def on_timeout(self, query: Query) -> None:
        if query != self._pending:
            return
        self._pending = None
        if not self._next_server():
            self._finish("again")  # no server answered: the search ends here (TRY_AGAIN)

    # -- transitions --

    def _next_server(self) -> bool:
        self._try_i += 1
        if self._try_i < len(self.conf.servers) * self.conf.attempts:
            return True
        self._try_i = 0
        return False

    def _next_qtype(self) -> None:
        self._try_i = 0
        self._qtype_i += 1
        if self._qtype_i < len(self._qtypes):
            return
        if self._answered_name:
            self._succeed()
        else:
            self._name_failed("nodata")

    def _name_failed(self, why: str) -> None:
        self._try_i = 0
        self._qtype_i = 0
        self._found = []
        self._answered_name = False
        if why == "nodata":
            self._got_nodata = True
        elif why == "servfail":
            self._got_servfail = True
            if self.flavor == "musl":
                self._finish("again")
                return
        if self._as_is_first and self._name_i == 0:
            self._saved = {"nxdomain": "nxdomain", "nodata": "nodata", "servfail": "again"}[why]
        self._name_i += 1
        if self._name_i < len(self._names):
            return
        if self._saved is not None:
            self._finish(self._saved)
        elif self._got_nodata:
            self._finish("nodata")
        elif self._got_servfail:
            self._finish("again")
        else:
            self._finish("nxdomain")

    def _succeed(self) -> None:
        qname = self._names[self._name_i]
        canonical, cnames = follow_cnames(qname, self._found)
        addresses: list[str] = []
        for rec in self._found:
            if rec.rtype in self._qtypes and rec.name.lower() == canonical.lower() and rec.data not in addresses:
                addresses.append(rec.data)
        self.result = Resolution("ok", self.host, canonical.rstrip("."), qname, tuple(addresses), cnames,
                                 tuple(self._found), self._queries, tuple(self._names[:self._name_i + 1]))

    def _finish(self, status: str) -> None:
        tried = tuple(self._names[:self._name_i + 1]) if self._names else ()
        self.result = Resolution(status, self.host, queries=self._queries, tried=tried)


def follow_cnames(qname: str, records: Iterable[Record]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The end of the CNAME chain starting at ``qname`` and its links (loops stop)."""
    by_owner = {r.name.lower(): r.data for r in records if r.rtype == "CNAME"}
    name, chain, seen = qname, [], {qname.lower()}
    while name.lower() in by_owner:
        target = by_owner[name.lower()]
        chain.append((name, target))
        if target.lower() in seen:
            break
        seen.add(target.lower())
        name = target
    return name, tuple(chain)


@dataclass(slots=True)
class StubResolver:
    """The libc resolver of one pod or VM: ``candidates`` in search order, ``lookup`` state
    machines, the hosts file first."""

    conf: ResolvConf
    hosts: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(DEFAULT_HOSTS))
    flavor: str = "glibc"  # or "musl"

    def __post_init__(self) -> None:
        if self.flavor not in ("glibc", "musl"):
            raise ResolvConfError(f"flavor: expected glibc or musl, got {self.flavor!r}")

    def candidates(self, name: str) -> list[str]:
        """The absolute names asked for ``name``, in order."""
        if not name or name.startswith(".") or ".." in name.rstrip(".") or len(name.rstrip(".")) > 253:
            return []
        if name.endswith("."):
            return [name]
        dots = name.count(".")
        as_is = name + "."
        searched = [f"{name}.{domain}." for domain in self.conf.search]
        if dots >= self.conf.ndots:
            return [as_is] if self.flavor == "musl" else [as_is, *searched]
        return [*searched, as_is]

    def lookup(self, name: str, qtypes: Sequence[str] = ("A",)) -> Lookup:
        """A :class:`Lookup` for ``name``; done at once for an address literal or a hosts entry."""
        cands = self.candidates(name)
        lookup = Lookup(name, cands, qtypes, self.conf, flavor=self.flavor,
                        as_is_first=bool(cands) and not name.endswith(".") and name.count(".") >= self.conf.ndots)
        local = self.local(name, qtypes)
        if local is not None:
            lookup.result = local
        return lookup

    def local(self, name: str, qtypes: Sequence[str] = ("A",)) -> Resolution | None:
        """An address literal or a hosts-file entry, without DNS; None: ask DNS."""
        bare = name.rstrip(".")
        wanted = {q.upper() for q in qtypes}
        if is_ip(bare):
            ip = str(ipaddress.ip_address(bare))
            return Resolution("ok", name, ip, "", (ip,))
        entry = self.hosts.get(bare.lower())
        if entry is None:
            return None
        addrs = tuple(a for a in entry if ("AAAA" if ":" in a else "A") in wanted)
        return Resolution("ok" if addrs else "nodata", name, bare, "", addrs)


def resolv_conf_of(net: Any) -> ResolvConf:
    """The resolv.conf a tool running on ``net`` (a VM or a pod's app API) uses:

    1. ``net.resolv_conf`` (a :class:`ResolvConf`): what a pod's stack carries (the kubelet's
       ClusterFirst file, :meth:`ResolvConf.for_pod`);
    2. the VM config's ``dns`` key (``config.raw["dns"]``: ``{nameservers, search, ndots,
       timeout, attempts}``, :meth:`ResolvConf.from_config`);
    3. the DNS servers of a DHCP lease (option 6), as dhclient writes them, no search list;
    4. none: glibc's default, the local host.
    """
    conf = getattr(net, "resolv_conf", None)
    if isinstance(conf, ResolvConf):
        return conf
    raw = getattr(getattr(net, "config", None), "raw", None)
    if isinstance(raw, Mapping) and "dns" in raw:
        return ResolvConf.from_config(raw["dns"])
    for client in getattr(net, "dhcp", None) or ():
        ack = getattr(client, "ack", None) or {}
        servers = [s for s in ack.get("dns") or () if isinstance(s, str) and is_ip(s)]
        if servers:
            return ResolvConf(nameservers=tuple(servers))
    return ResolvConf()

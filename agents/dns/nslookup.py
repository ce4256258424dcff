"""``nslookup`` inside a VM or a pod: BIND 9's nslookup (bin/dig/nslookup.c), over real DNS.

Output as BIND 9.16 prints it::

    Server:\t\t10.96.0.10
    Address:\t10.96.0.10#53
    <blank>
    backend.prod.svc.cluster.local\tcanonical name = db.corp.example.     (a CNAME)
    Name:\tbackend.prod.svc.cluster.local
    Address: 10.96.0.15
    <blank>

``Non-authoritative answer:`` precedes answers without the AA flag; a name that does not
exist prints ``** server can't find NAME: NXDOMAIN`` (the last name tried: the name as typed
when the search list was tried first) and exits 1; a name without addresses prints
``*** Can't find NAME: No answer``; no server answering prints ``;; connection timed out; no
servers could be reached`` and exits 1.  Without ``-type`` it asks A, then AAAA for the
canonical name, as nslookup does.  ``-type=`` / ``-query=`` SRV, PTR, CNAME, TXT, MX, NS,
SOA, ANY print nslookup's short forms (``service = 0 100 80 x.``, ``name = x.``...), with
``Authoritative answers can be found from:`` and the authority/additional sections after
a non-authoritative answer to any other type than A/AAAA.

The resolver configuration is the pod's or VM's (:func:`agents.dns.resolver.resolv_conf_of`:
a pod's resolv.conf, the VM config's ``dns: {nameservers, search, ndots}``, a DHCP lease's
servers); a second argument names the server instead.  Like nslookup, only an NXDOMAIN moves
on to the next search domain.  Options: ``-type=T`` (``-query``, ``-q``, ``-ty``),
``-timeout=S`` (5), ``-retry=N`` (3 tries per server), ``-port=P``, ``-ndots=N``,
``-[no]search``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename

from agents.vm.tools import ToolContext, register_tool

from .resolver import ResolvConfError, StubResolver, resolv_conf_of
from .server import DNS_PORT, query
from .zone import is_ip

__all__ = ["nslookup"]

_SHORT = {  # nslookup.c printrdata: "<owner>\t<text> <rdata>"
    "CNAME": "canonical name =", "PTR": "name =", "SRV": "service =", "MX": "mail exchanger =",
    "TXT": "text =", "NS": "nameserver =", "A": "internet address =", "AAAA": "has AAAA address",
}
_TYPES = ("A", "AAAA", "CNAME", "PTR", "SRV", "TXT", "MX", "NS", "SOA", "ANY")


@dataclass
class _Opts:
    qtype: str = "A"
    default_lookups: bool = True  # no -type: A, then AAAA of the canonical name
    timeout: float = 5.0
    tries: int = 3
    port: int = DNS_PORT
    search: bool = True
    ndots: int | None = None


class _NoServers(Exception):
    pass


def _parse(args: Sequence[str]) -> tuple[_Opts, list[str], str | None]:
    opts, rest = _Opts(), []
    for arg in args:
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            continue
        key, _, value = arg[1:].partition("=")
        key = key.lower()
        try:
            if key in ("type", "ty", "query", "q", "querytype"):
                if value.upper() not in _TYPES:
                    return opts, rest, f"unknown query type: {value}"
                opts.qtype, opts.default_lookups = value.upper(), False
            elif key in ("timeout", "t"):
                opts.timeout = max(1.0, float(value))
            elif key in ("retry", "ret"):
                opts.tries = max(1, int(value))
            elif key in ("port", "po"):
                opts.port = int(value)
            elif key == "ndots":
                opts.ndots = int(value)
            elif key in ("search", "sea"):
                opts.search = True
            elif key in ("nosearch", "nosea"):
                opts.search = False
            elif key in ("debug", "d2", "nodebug", "recurse", "norecurse", "vc", "novc", "fail", "nofail"):
                pass
            else:
                return opts, rest, f"invalid option: {arg}"
        except ValueError:
            return opts, rest, f"invalid value for {key}: {value}"
    return opts, rest, None


def _name(text: str) -> str:
    """dns_name_format: no trailing dot (the root stays ``.``)."""
    return text if text == "." else text.rstrip(".")


class _Run:
    def __init__(self, ctx: ToolContext, opts: _Opts, servers: Sequence[str]) -> None:
        self.ctx, self.opts, self.servers = ctx, opts, list(servers)
        self.header_done = False
        self.failed = False
        self.a_noanswer = False

    def out(self, text: str) -> None:
        self.ctx.out.write(text)

    async def ask(self, name: str, qtype: str) -> dns.message.Message:
        """The first server that answers, ``tries`` times ``timeout`` each (dighost)."""
        while self.servers:
            server = self.servers[0]
            for _ in range(self.opts.tries):
                try:
                    reply = await query(self.ctx.net, server, name, qtype, self.opts.timeout, port=self.opts.port)
                except (TimeoutError, OSError):
                    continue
                self._header(server)
                return reply
            self.servers.pop(0)
        raise _NoServers

    def _header(self, server: str) -> None:
        if not self.header_done:
            self.header_done = True
            addr = f"{server}#{self.opts.port}"
            self.out(f"Server:\t\t{server}\nAddress:\t{addr}\n\n")

    def print_message(self, reply: dns.message.Message, qtype: str, lookup_name: str) -> None:
        """nslookup.c printmessage."""
        rcode = reply.rcode()
        if rcode != dns.rcode.NOERROR:
            self.out(f"** server can't find {_name(lookup_name)}: {dns.rcode.to_text(rcode)}\n")
            self.failed = True
            return
        aa = bool(reply.flags & dns.flags.AA)
        if not aa and (not self.opts.default_lookups or qtype == "A"):
            self.out("Non-authoritative answer:\n")
        if reply.answer:
            self._section(reply.answer, answer=True)
        elif self.opts.default_lookups and qtype == "A":
            self.a_noanswer = True
        elif not self.opts.default_lookups or (qtype == "AAAA" and self.a_noanswer):
            self.out(f"*** Can't find {_name(lookup_name)}: No answer\n")
        if not aa and qtype not in ("A", "AAAA"):  # printed even when both sections are empty
            self.out("\nAuthoritative answers can be found from:\n")
            self._section(reply.authority, answer=False)
            self._section(reply.additional, answer=False)

    def _section(self, rrsets: Any, *, answer: bool) -> None:
        for rrset in rrsets:
            rtype = dns.rdatatype.to_text(rrset.rdtype)
            owner = _name(rrset.name.to_text())
            for rd in rrset:
                if rtype in ("A", "AAAA") and answer:
                    self.out(f"Name:\t{owner}\nAddress: {rd.to_text()}\n")
                elif rtype == "SOA":
                    self.out(f"{owner}\n\torigin = {_name(rd.mname.to_text())}\n\tmail addr = "
                             f"{_name(rd.rname.to_text())}\n\tserial = {rd.serial}\n\trefresh = {rd.refresh}\n"
                             f"\tretry = {rd.retry}\n\texpire = {rd.expire}\n\tminimum = {rd.minimum}\n")
                elif rtype in _SHORT:
                    self.out(f"{owner}\t{_SHORT[rtype]} {rd.to_text()}\n")
                else:
                    self.out(f"{owner}\trdata_{int(rrset.rdtype)} = {rd.to_text()}\n")


def _chase(reply: dns.message.Message, name: str) -> str:
    """chase_cnamechain: the end of the CNAME chain in the answer section."""
    by_owner = {rr.name.to_text().lower(): rr[0].target.to_text() for rr in reply.answer
                if rr.rdtype == dns.rdatatype.CNAME and len(rr)}
    for _ in range(16):
        nxt = by_owner.get(name.lower())
        if nxt is None:
            break
        name = nxt
    return name


def _reverse_if_address(host: str, qtype: str, default: bool) -> tuple[str, str, bool]:
    """``nslookup 10.96.0.15`` asks PTR for the in-addr.arpa name (nslookup's reverse mode)."""
    if not is_ip(host):
        return host, qtype, default
    return dns.reversename.from_address(host).to_text(), "PTR", False


@register_tool("nslookup")
async def nslookup(ctx: ToolContext, args: list[str]) -> int:
    opts, rest, error = _parse(args)
    if error is not None or not 1 <= len(rest) <= 2:
        ctx.err.write(f"{error or 'Usage: nslookup [-opt ...] host [server]'}\n")
        return 1
    try:
        conf = resolv_conf_of(ctx.net)
    except ResolvConfError as exc:
        ctx.err.write(f"nslookup: bad resolver configuration: {exc}\n")
        return 1
    if opts.ndots is not None:
        conf = replace(conf, ndots=opts.ndots)
    if not opts.search:
        conf = replace(conf, search=())
    if len(rest) == 2 and not is_ip(rest[1]):
        ctx.err.write(f"nslookup: couldn't get address for '{rest[1]}': not found\n")
        return 1
    servers = [rest[1]] if len(rest) == 2 else list(conf.servers)
    host, qtype, opts.default_lookups = _reverse_if_address(rest[0], opts.qtype, opts.default_lookups)
    run = _Run(ctx, opts, servers)
    try:
        await _lookup(run, StubResolver(conf), host, qtype)
    except _NoServers:
        ctx.out.write(";; connection timed out; no servers could be reached\n\n")
        return 1
    ctx.out.write("\n")
    return 1 if run.failed else 0


async def _lookup(run: _Run, resolver: StubResolver, host: str, qtype: str) -> None:
    names = resolver.candidates(host) or [host if host.endswith(".") else host + "."]
    reply = None
    for i, name in enumerate(names):
        reply = await run.ask(name, qtype)
        # dighost recv_done: only NXDOMAIN moves on to the next search domain
        if reply.rcode() != dns.rcode.NXDOMAIN or i == len(names) - 1:
            break
    assert reply is not None
    run.print_message(reply, qtype, name)
    if run.failed or not (run.opts.default_lookups and qtype == "A"):
        return
    canonical = _chase(reply, name)
    run.print_message(await run.ask(canonical, "AAAA"), "AAAA", canonical)


"""DNS over a VM's (or a pod's) sockets: the server, the client, the resolver driver.

Everything here speaks real DNS wire format (RFC 1035, dnspython) over the asyncio-style app
API of :class:`agents.vm.streams.NetAPI` (``create_datagram_endpoint``, ``start_server``,
``open_connection``), so it runs unchanged in a VM process and on a pod's stack.

* :func:`serve_dns` -- a server on UDP and TCP ``port`` (53) answering from a handler (a
  :class:`~.zone.Zone`, a :class:`~.datacenter.StaticZone`, or any ``answer(qname, qtype)``).
  What the handler does not own (``Answer.forward``) is forwarded to the ``upstream``
  servers in order, as CoreDNS's ``forward . /etc/resolv.conf`` does, and the upstream's
  reply goes back with the client's ID; an ExternalName's CNAME to an outside name
  (``Answer.cname_target``) is resolved through the upstream and its answers appended
  after the CNAME, as the kubernetes plugin does through its ``upstream``.  No upstream
  answer in time: SERVFAIL.  A UDP reply larger than 512 bytes (or the client's EDNS0 size)
  is truncated with TC set, and the client asks again over TCP.
* :func:`query` -- one question to one server, UDP first, TCP when truncated.
* :func:`resolve` -- getaddrinfo: a :class:`~.resolver.StubResolver` lookup driven over
  :func:`query` with the pod's or VM's resolv.conf.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .resolver import Resolution, ResolvConf, StubResolver, resolv_conf_of
from .zone import Answer, Record

__all__ = ["DnsServer", "DnsHandler", "query", "resolve", "serve_dns", "records_of", "rrsets_of",
           "DNS_PORT", "UDP_MAX"]

log = logging.getLogger("hcinet.dns")

DNS_PORT = 53
UDP_MAX = 512            # RFC 1035 4.2.1, without EDNS0
UPSTREAM_TIMEOUT = 2.0   # per upstream server and try (CoreDNS forward's dial+read budget is ~2 s)
TCP_IDLE = 10.0          # seconds a server keeps an idle TCP connection (CoreDNS: read timeout)
_ADDRESS_TYPES = ("A", "AAAA")


class DnsHandler(Protocol):
    def answer(self, qname: str, qtype: str) -> Answer: ...


# --- records <-> dnspython ----------------------------------------------------------------


def rrsets_of(records: Iterable[Record]) -> list[dns.rrset.RRset]:
    """Records -> RRsets (one per owner and type, in first-seen order)."""
    groups: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for rec in records:
        key = (rec.name.lower(), rec.rtype)
        if key not in groups:
            groups[key] = (rec.ttl, [])
        groups[key][1].append(rec.data)
    names = {(r.name.lower(), r.rtype): r.name for r in records}
    return [dns.rrset.from_text_list(names[k], ttl, "IN", k[1], data) for k, (ttl, data) in groups.items()]


def records_of(rrsets: Iterable[dns.rrset.RRset]) -> list[Record]:
    return [Record(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), rrset.ttl, rd.to_text())
            for rrset in rrsets for rd in rrset]


def _shuffled(records: Sequence[Record], rng: random.Random) -> list[Record]:
    """CoreDNS ``loadbalance`` (round_robin): address records in random order, CNAMEs first."""
    head = [r for r in records if r.rtype not in _ADDRESS_TYPES]
    tail = [r for r in records if r.rtype in _ADDRESS_TYPES]
    rng.shuffle(tail)
    return head + tail


# --- the client ---------------------------------------------------------------------------


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, request: dns.message.Message) -> None:
        self.request = request
        self.fut: asyncio.Future[dns.message.Message] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.fut.done():
            return
        try:
            msg = dns.message.from_wire(data)
        except Exception:
            return  # not a DNS message: keep waiting, as a resolver does
        if self.request.is_response(msg):
            self.fut.set_result(msg)

    def error_received(self, exc: Exception) -> None:
        if not self.fut.done():  # ICMP port unreachable: ECONNREFUSED on the connected socket
            self.fut.set_exception(exc)


async def query(net: Any, server: str, qname: str, qtype: str = "A", timeout: float = 5.0, *,
                port: int = DNS_PORT, tcp: bool = False, rd: bool = True) -> dns.message.Message:
    """Ask ``server`` once; raises TimeoutError, ConnectionRefusedError or OSError."""
    request = dns.message.make_query(qname, qtype)
    if not rd:
        request.flags &= ~dns.flags.RD
    return await exchange(net, server, request, timeout, port=port, tcp=tcp)


async def exchange(net: Any, server: str, request: dns.message.Message, timeout: float, *,
                   port: int = DNS_PORT, tcp: bool = False) -> dns.message.Message:
    """Send a prepared message; over UDP, a truncated reply is asked again over TCP."""
    if not tcp:
        reply = await _exchange_udp(net, server, request, timeout, port)
        if not reply.flags & dns.flags.TC:
            return reply
    return await _exchange_tcp(net, server, request, timeout, port)


async def _exchange_udp(net: Any, server: str, request: dns.message.Message, timeout: float,
                        port: int) -> dns.message.Message:
    transport, proto = await net.create_datagram_endpoint(lambda: _Reply(request), remote_addr=(server, port))
    try:
        transport.sendto(request.to_wire())
        return await asyncio.wait_for(proto.fut, timeout)
    finally:
        transport.close()


async def _exchange_tcp(net: Any, server: str, request: dns.message.Message, timeout: float,
                        port: int) -> dns.message.Message:
    async def run() -> dns.message.Message:
        reader, writer = await net.open_connection(server, port, timeout=timeout)
        try:
            writer.write(request.to_wire(prepend_length=True))  # RFC 1035 4.2.2: 2-byte length
            await writer.drain()
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                msg = dns.message.from_wire(await reader.readexactly(size))
                if request.is_response(msg):
                    return msg
        finally:
            writer.close()
    try:
        return await asyncio.wait_for(run(), timeout)
    except asyncio.IncompleteReadError:
        raise ConnectionResetError("DNS server closed the TCP connection") from None


async def resolve(net: Any, host: str, qtypes: Sequence[str] = ("A",), *, conf: ResolvConf | None = None,
                  resolver: StubResolver | None = None) -> Resolution:
    """getaddrinfo over DNS with the resolv.conf of ``net`` (or ``conf``): the search list,
    ndots, each server in turn, ``attempts`` rounds of ``timeout``."""
    if resolver is None:
        resolver = StubResolver(conf if conf is not None else resolv_conf_of(net))
    lookup = resolver.lookup(host, qtypes)
    while (q := lookup.next_query()) is not None:
        try:
            reply = await query(net, q.server, q.name, q.qtype, q.timeout)
        except (TimeoutError, OSError):
            lookup.on_timeout(q)  # refused / unreachable: glibc moves on as on a timeout
            continue
        lookup.on_answer(q, reply.rcode(), records_of(reply.answer))
    assert lookup.result is not None
    return lookup.result


# --- the server ---------------------------------------------------------------------------


@dataclass
class DnsServer:
    """Answers DNS messages from ``handler``, forwarding through ``upstream``."""

    handler: DnsHandler | Callable[[str, str], Answer]
    upstream: Sequence[str] = ()
    upstream_timeout: float = UPSTREAM_TIMEOUT
    upstream_port: int = DNS_PORT
    rng: random.Random | None = None   # set: CoreDNS's loadbalance plugin (address order shuffled)
    net: Any = None
    counts: dict[str, int] = field(default_factory=lambda: {
        "queries": 0, "udp": 0, "tcp": 0, "forwarded": 0, "cname_followed": 0, "nxdomain": 0,
        "servfail": 0, "truncated": 0, "formerr": 0, "upstream_timeouts": 0})
    _closers: list[Any] = field(default_factory=list)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def _answer(self, qname: str, qtype: str) -> Answer:
        fn = getattr(self.handler, "answer", None)
        return fn(qname, qtype) if fn is not None else self.handler(qname, qtype)  # type: ignore[operator]

    async def respond(self, data: bytes, max_size: int | None) -> bytes | None:
        """One request's wire bytes -> the reply's (None: drop it). ``max_size`` None: TCP."""
        self.counts["queries"] += 1
        try:
            request = dns.message.from_wire(data)
        except Exception:
            return self._formerr(data)
        if request.flags & dns.flags.QR:
            return None  # a response sent to us: never answer those (loops)
        reply = await self._reply(request)
        # want_shuffle=False: the records leave in the order decided here (dnspython would
        # shuffle each RRset; CoreDNS without ``loadbalance`` keeps its order)
        if max_size is None:
            return reply.to_wire(max_size=65535, want_shuffle=False)
        limit = max(UDP_MAX, request.payload) if request.edns >= 0 else UDP_MAX
        wire = reply.to_wire(max_size=min(limit, max_size), prefer_truncation=True, want_shuffle=False)
        if wire[2] & 0x02:  # TC bit of the header's flags
            self.counts["truncated"] += 1
        return wire

    def _formerr(self, data: bytes) -> bytes | None:
        self.counts["formerr"] += 1
        if len(data) < 12:
            return None
        # the ID and opcode back, QR set, RCODE FORMERR, nothing else (RFC 1035 4.1.1)
        flags = 0x8000 | (data[2] & 0x78) << 8 | dns.rcode.FORMERR
        return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)

    async def _reply(self, request: dns.message.Message) -> dns.message.Message:
        reply = dns.message.make_response(request, recursion_available=True)
        if request.opcode() != dns.opcode.QUERY:
            reply.set_rcode(dns.rcode.NOTIMP)
            return reply
        if len(request.question) != 1:
            reply.set_rcode(dns.rcode.FORMERR)
            self.counts["formerr"] += 1
            return reply
        q = request.question[0]
        if q.rdclass != dns.rdataclass.IN:
            reply.set_rcode(dns.rcode.REFUSED)
            return reply
        qname, qtype = q.name.to_text(), dns.rdatatype.to_text(q.rdtype)
        ans = self._answer(qname, qtype)
        if ans.forward:
            return await self._forward(request, reply)
        if ans.authoritative:
            reply.flags |= dns.flags.AA
        answers = list(ans.answers)
        rcode = dns.rcode.Rcode.make(ans.rcode)
        if ans.cname_target is not None:
            self.counts["cname_followed"] += 1
            upstream = await self._ask_upstream(dns.message.make_query(ans.cname_target, q.rdtype))
            if upstream is None or upstream.rcode() == dns.rcode.SERVFAIL:
                rcode = dns.rcode.SERVFAIL
            else:
                answers += records_of(upstream.answer)
        if self.rng is not None:
            answers = _shuffled(answers, self.rng)
        reply.set_rcode(rcode)
        if rcode == dns.rcode.SERVFAIL:
            self.counts["servfail"] += 1
            return reply
        if rcode == dns.rcode.NXDOMAIN:
            self.counts["nxdomain"] += 1
        reply.answer = rrsets_of(answers)
        reply.authority = rrsets_of(ans.authority)
        reply.additional = rrsets_of(ans.additional)
        return reply

    async def _forward(self, request: dns.message.Message, reply: dns.message.Message) -> dns.message.Message:
        """CoreDNS forward: the upstream's reply as it is, with the client's ID."""
        self.counts["forwarded"] += 1
        upstream = await self._ask_upstream(request)
        if upstream is None:
            reply.set_rcode(dns.rcode.SERVFAIL)
            self.counts["servfail"] += 1
            return reply
        upstream.id = request.id
        return upstream

    async def _ask_upstream(self, request: dns.message.Message) -> dns.message.Message | None:
        if self.net is None:
            return None
        q = request.question[0]
        outgoing = dns.message.make_query(q.name, q.rdtype, use_edns=0 if request.edns >= 0 else None,
                                          payload=request.payload if request.edns >= 0 else None)
        outgoing.flags = request.flags & ~dns.flags.QR | dns.flags.RD
        for server in self.upstream:
            try:
                reply = await exchange(self.net, server, outgoing, self.upstream_timeout, port=self.upstream_port)
            except (TimeoutError, OSError) as exc:
                self.counts["upstream_timeouts"] += 1
                log.debug("upstream %s: %s", server, exc)
                continue
            if reply.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED) and server != self.upstream[-1]:
                continue
            reply.question = request.question  # the client's spelling of the name
            return reply
        return None

    # -- sockets --

    async def start(self, net: Any, host: str = "0.0.0.0", port: int = DNS_PORT) -> DnsServer:
        self.net = net
        transport, _ = await net.create_datagram_endpoint(lambda: _UdpServer(self), local_addr=(host, port))
        self._closers.append(transport)
        self._closers.append(await net.start_server(self._serve_tcp, host, port))
        return self

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), TCP_IDLE)
                self.counts["tcp"] += 1
                wire = await self.respond(data, None)
                if wire is None:
                    continue
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        for closer in self._closers:
            closer.close()
        self._closers.clear()
        for task in self._tasks:
            task.cancel()

    def stats(self) -> dict[str, Any]:
        return dict(self.counts)


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.counts["udp"] += 1
        self.server.spawn(self._answer(data, addr))

    async def _answer(self, data: bytes, addr: Any) -> None:
        wire = await self.server.respond(data, 65535)
        if wire is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)


async def serve_dns(net: Any, host: str, port: int, zone_or_handler: DnsHandler | Callable[[str, str], Answer],
                    upstream: Sequence[str] = (), *, upstream_timeout: float = UPSTREAM_TIMEOUT,
                    rng: random.Random | None = None) -> DnsServer:
    """Serve DNS on ``host:port`` (UDP and TCP) of ``net``; ``close()`` the result to stop."""
    server = DnsServer(zone_or_handler, tuple(upstream), upstream_timeout, rng=rng)
    return await server.start(net, host, port)

"""HAProxy ``mode tcp`` over a VM's streams: listeners on VIP:port, proxying, health checks.

A thin asyncio shell around :class:`~agents.haproxy.core.LoadBalancer`: every decision
(which server, what counts, UP or DOWN) is the core's; this module only moves bytes and runs
one timer per checked server.

Proxying, as HAProxy in ``mode tcp``:

* each client connection accepted on a frontend's ``bind`` becomes a :class:`~.core.Session`;
  the backend's balance algorithm picks a server and the proxy opens its own connection to
  it, from the LB VM's address: the server sees the LB VM as its client (a proxy, not NAT),
  unless the server has ``send-proxy-v2``, which writes a PROXY v2 header carrying the
  original client first;
* bytes are piped both ways and counted (``bin`` from the client, ``bout`` to it); a FIN is
  passed on as a FIN (half-close), a reset as a reset;
* a failed connect (refused, unreachable, or no answer within ``timeout connect``) is retried
  as ``retries N`` + ``option redispatch`` do: up to N more attempts, on the same server after
  HAProxy's 1 s turn-around (scaled) except the last, which goes to another UP server
  (``wredis``); an attempt on a server that went DOWN meanwhile is redispatched at once;
* no usable server (all DOWN), or every attempt failed: the client connection is closed.

Health checks: a task per server with ``check`` connects to it every ``inter`` (a layer-4
check: the TCP handshake is the test, the connection is then reset), with ``inter`` as the
timeout (HAProxy's default when ``timeout check`` is unset).  First checks are spread over
one ``inter`` across the servers, as HAProxy spreads them at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from .core import (
    CHECK_DESC,
    Backend,
    Changes,
    Defaults,
    LBConfig,
    LoadBalancer,
    Server,
    Session,
    proxy_v2_header,
)

log = logging.getLogger("hcinet.haproxy")

READ_SIZE = 65536


class VipOwner(Protocol):
    """Who claims the VIPs on the NIC (the VM's keepalived role)."""

    def claim_vips(self, ips: list[str]) -> None: ...

    def release_vips(self, ips: list[str]) -> None: ...


class _NoVips:
    def claim_vips(self, ips: list[str]) -> None:
        pass

    def release_vips(self, ips: list[str]) -> None:
        pass


class ApplyError(Exception):
    """A config that validated but could not be put in place (e.g. a bind refused);
    nothing was changed."""


class TcpProxy:
    """The running HAProxy: :meth:`apply` a config, :meth:`csv` for the stats, :meth:`close`."""

    def __init__(self, net: Any, defaults: Defaults, *, vips: VipOwner | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.net = net
        self.defaults = defaults
        self.vips: VipOwner = vips or _NoVips()
        self.clock = clock or asyncio.get_running_loop().time
        self.lb = LoadBalancer(self.clock(), defaults)
        self._listeners: dict[str, Any] = {}  # frontend name -> StackServer
        self._checks: dict[Server, asyncio.Task[None]] = {}
        self._sessions: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        self.closed = False

    @property
    def config(self) -> LBConfig:
        return self.lb.config

    # -- configuration --

    async def apply(self, config: LBConfig) -> Changes:
        """Put ``config`` in place atomically: claim new VIPs, start new listeners (undoing
        both if one fails: ApplyError), then swap the state, stop removed listeners, release
        removed VIPs and reconcile the health checks.  Unchanged servers keep their state."""
        async with self._lock:
            if self.closed:
                raise ApplyError("config: the load balancer is shutting down")
            changes = self.lb.plan(config)
            if changes.claim:
                self.vips.claim_vips(list(changes.claim))
            started: dict[str, Any] = {}
            try:
                # A frontend whose bind moved: its old listener goes first, or the new bind
                # could collide with it.
                moving = {f.name for f in changes.stop} & {f.name for f in changes.start}
                for fspec in changes.start:
                    if fspec.name in moving:
                        continue
                    started[fspec.name] = await self._listen(fspec.name, fspec.address, fspec.port)
            except OSError as exc:
                for server in started.values():
                    server.close()
                if changes.claim:
                    self.vips.release_vips(list(changes.claim))
                bad = next(f for f in changes.start if f.name not in started)
                raise ApplyError(f"frontends.{bad.name}.bind: cannot bind {bad.bind}: "
                                 f"{exc.strerror or exc}") from None
            self.lb.apply(config, self.clock())
            for fspec in changes.stop:
                listener = self._listeners.pop(fspec.name, None)
                if listener is not None:
                    listener.close()
            for fspec in changes.start:
                if fspec.name in started:
                    self._listeners[fspec.name] = started[fspec.name]
                else:  # a moved bind, now that its old listener is closed
                    try:
                        self._listeners[fspec.name] = await self._listen(fspec.name, fspec.address, fspec.port)
                    except OSError as exc:
                        log.error("frontend %s: cannot bind %s: %s", fspec.name, fspec.bind, exc)
            if changes.release:
                self.vips.release_vips(list(changes.release))
            self._reconcile_checks()
            log.info("config generation %d applied: %d frontends, %d backends, VIPs %s",
                     self.lb.generation, len(config.frontends), len(config.backends),
                     ", ".join(config.vips) or "none")
            return changes

    async def _listen(self, name: str, address: str, port: int) -> Any:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._client(name, reader, writer)
        return await self.net.start_server(accept, address, port)

    def _reconcile_checks(self) -> None:
        wanted = self.lb.checked_servers()
        keep = {s for _, s in wanted}
        for server in [s for s in self._checks if s not in keep]:
            self._checks.pop(server).cancel()
        # HAProxy spreads the first checks over one interval (srvpos / nbcheck).
        fresh = [(b, s) for b, s in wanted if s not in self._checks]
        for pos, (backend, server) in enumerate(fresh):
            delay = backend.spec.check.inter * pos / max(1, len(fresh))
            task = asyncio.get_running_loop().create_task(
                self._check_loop(backend, server, delay), name=f"check {backend.name}/{server.name}")
            self._checks[server] = task

    # -- health checks --

    async def _check_loop(self, backend: Backend, server: Server, delay: float) -> None:
        await asyncio.sleep(delay)
        while True:
            inter = backend.spec.check.inter
            start = self.clock()
            port = server.spec.check_port or server.spec.port
            http = backend.spec.check.http
            status, info = await (self._probe(server.spec.address, port, inter) if http is None
                                  else self._probe_http(server.spec.address, port, http, inter))
            now = self.clock()
            if backend.report_check(server, status, now, now - start, info):
                self._log_change(backend, server, status, info, now - start)
            await asyncio.sleep(max(0.0, start + inter - self.clock()))

    async def _probe(self, address: str, port: int, timeout: float) -> tuple[str, str]:
        """One layer-4 check: (``L4OK`` | ``L4TOUT`` | ``L4CON`` | ``SOCKERR``, detail)."""
        try:
            async with asyncio.timeout(timeout * 1.5 + 0.05):  # the stack's own timeout fires first
                _, writer = await self.net.open_connection(address, port, timeout=timeout)
        except TimeoutError:
            return "L4TOUT", ""
        except OSError as exc:
            return "L4CON", exc.strerror or os.strerror(exc.errno or errno.EIO)
        except Exception as exc:  # a bug below must not kill the check loop
            log.exception("check of %s:%d failed oddly", address, port)
            return "SOCKERR", str(exc)
        writer.transport.abort()  # the handshake was the check; reset, as HAProxy does
        return "L4OK", ""

    async def _probe_http(self, address: str, port: int, path: str, timeout: float) -> tuple[str, str]:
        """``option httpchk GET path``: a 2xx/3xx status line passes (``L7OK``), another
        status fails (``L7STS``), as kube-proxy's healthCheckNodePort expects (200 / 503)."""
        writer = None
        try:
            async with asyncio.timeout(timeout * 1.5 + 0.05):
                reader, writer = await self.net.open_connection(address, port, timeout=timeout)
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
                await writer.drain()
                line = await reader.readline()
        except TimeoutError:
            return ("L7TOUT" if writer is not None else "L4TOUT"), ""
        except OSError as exc:
            return "L4CON", exc.strerror or os.strerror(exc.errno or errno.EIO)
        except Exception as exc:  # a bug below must not kill the check loop
            log.exception("http check of %s:%d failed oddly", address, port)
            return "SOCKERR", str(exc)
        finally:
            if writer is not None:
                writer.transport.abort()
        parts = line.decode("latin-1").split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return "L7RSP", line.decode("latin-1").strip()[:60]
        code = int(parts[1])
        return ("L7OK" if 200 <= code < 400 else "L7STS"), " ".join(parts[1:])

    def _log_change(self, backend: Backend, server: Server, status: str, info: str, duration: float) -> None:
        """HAProxy's own words for a state change (its log line, without the syslog prefix)."""
        left = sum(1 for s in backend.servers if s.usable)
        reason = CHECK_DESC[status] + (f", info: \"{info}\"" if info else "")
        head = (f"Server {backend.name}/{server.name} is {'UP' if server.up else 'DOWN'}, reason: {reason}, "
                f"check duration: {round(duration * 1000)}ms.")
        if server.up:
            log.warning("%s %d active and 0 backup servers online. 0 sessions requeued, 0 total in queue.",
                        head, left)
        else:
            log.warning("%s %d active and 0 backup servers left. %d sessions active, 0 requeued, "
                        "0 remaining in queue.", head, left, server.c.scur)
        if not backend.up:
            log.error("backend '%s' has no server available!", backend.name)

    # -- proxying --

    async def _client(self, frontend: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        local = writer.get_extra_info("sockname") or ("0.0.0.0", 0)
        session: Session | None = None
        try:
            if frontend not in self.lb.frontends:  # removed between accept and now
                writer.close()
                return
            session = self.lb.open_session(frontend, str(peer[0]), self.clock())
            upstream = await self._connect(session)
            if upstream is None:
                writer.close()  # no server: HAProxy closes the client connection
                return
            up_reader, up_writer = upstream
            assert session.server is not None
            if session.server.spec.send_proxy_v2:
                up_writer.write(proxy_v2_header((str(peer[0]), int(peer[1])), (str(local[0]), int(local[1]))))
            await self._splice(session, reader, writer, up_reader, up_writer)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:
            log.exception("session on frontend %s failed", frontend)
            writer.transport.abort()
        finally:
            if session is not None:
                session.close()
            if task is not None:
                self._sessions.discard(task)

    async def _connect(self, session: Session) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        config = self.lb.config
        server = session.choose()
        failures = 0
        while server is not None:
            session.connecting(self.clock())
            try:
                up = await self.net.open_connection(server.spec.address, server.spec.port,
                                                    timeout=config.timeout_connect)
            except (OSError, TimeoutError) as exc:
                session.connect_failed()
                failures += 1
                log.debug("connect to %s/%s failed (%d): %s", session.backend.name, server.name, failures, exc)
                if failures > config.retries:
                    return None
                last = failures == config.retries
                if config.redispatch and (last or not server.usable):
                    other = session.redispatch()
                    if other is not None:
                        server = other
                        continue
                session.retry()
                await asyncio.sleep(self.defaults.turnaround)
                continue
            session.established(self.clock())
            return up
        return None

    async def _splice(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        """Both directions until both ended; FIN passes as FIN, an error resets both sides."""
        to_server = asyncio.ensure_future(_pipe(reader, up_writer, session.add_in))
        to_client = asyncio.ensure_future(_pipe(up_reader, writer, session.add_out))
        try:
            pending: set[asyncio.Future[None]] = {to_server, to_client}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(f.exception() is not None for f in done):
                    for f in pending:
                        f.cancel()
                    writer.transport.abort()
                    up_writer.transport.abort()
                    return
            writer.close()
            up_writer.close()
        finally:
            unfinished = [f for f in (to_server, to_client) if not f.done()]
            for f in unfinished:
                f.cancel()
            if unfinished:  # cancelled (shutdown): reset both sides
                writer.transport.abort()
                up_writer.transport.abort()

    # -- stats and shutdown --

    def csv(self) -> str:
        return self.lb.csv(self.clock())

    def stats(self) -> list[dict[str, str]]:
        return self.lb.stats(self.clock())

    def render_cfg(self) -> str:
        return self.lb.render_cfg()

    def info(self) -> dict[str, Any]:
        return {"generation": self.lb.generation, "listeners": sorted(self._listeners),
                "checks": len(self._checks), "sessions": len(self._sessions)}

    async def close(self) -> None:
        self.closed = True
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
        tasks = [*self._checks.values(), *self._sessions]
        for task in tasks:
            task.cancel()
        self._checks.clear()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=1.0)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: Callable[[int], None]) -> None:
    while data := await reader.read(READ_SIZE):
        count(len(data))
        writer.write(data)
        await writer.drain()
    if not writer.is_closing():
        writer.write_eof()  # the peer's FIN, passed on: half-close

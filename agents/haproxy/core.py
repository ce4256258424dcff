"""HAProxy's layer-4 model, sans-IO: config, balance algorithms, health checks, stats, haproxy.cfg.

The AKS-HCI load-balancer VM runs HAProxy in ``mode tcp`` (FACTS.md).  This module holds
everything about it that is not I/O, with ``now`` (seconds, any monotonic clock) passed in:

* :class:`LBConfig` -- what the lbagent is given (``PUT /v1/config``): VIPs, frontends
  (``bind VIP:port``, ``default_backend``) and backends (``balance``, ``check inter/rise/fall``,
  servers).  :meth:`LBConfig.parse` validates a JSON object; errors are one line naming the
  field (``backends[0].servers[1].port: expected 1..65535, got 0``).
  :func:`render_cfg` turns it into the ``haproxy.cfg`` HAProxy would run.
* :class:`Balancer` and the :data:`BALANCERS` registry: ``roundrobin``, ``leastconn``,
  ``source`` (HAProxy configuration manual, "balance").
* :class:`HealthCheck` -- one server's check state, transition for transition HAProxy's
  (``src/check.c`` ``set_server_check_status``): a server starts UP with ``health = rise``
  ("up, but will fall down at first failure": the default ``init-state up``), a failure
  decrements ``health`` and anything below ``rise`` is 0 = DOWN, a success increments it and
  anything reaching ``rise`` jumps to ``rise + fall - 1`` = fully UP.  So a fully UP server
  goes DOWN after exactly ``fall`` consecutive failures and a DOWN one comes back after
  ``rise`` consecutive successes.
* :class:`LoadBalancer` -- the running state: frontends, backends, servers with HAProxy's
  counters (``scur smax stot bin bout econ wretr wredis lbtot chkfail chkdown lastchg
  downtime``), :class:`Session` accounting for one proxied connection, and the stats table
  as HAProxy prints it (``show stat`` / ``;csv``: management guide section 9.1).
* :func:`proxy_v2_header` / :func:`parse_proxy_v2` -- the PROXY protocol v2 header
  (haproxy ``doc/proxy-protocol.txt`` section 2.2) a ``send-proxy-v2`` server gets.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "BALANCERS", "CHECK_DESC", "Backend", "BackendSpec", "Balancer", "Changes", "CheckSpec", "Defaults", "Frontend",
    "FrontendSpec", "HealthCheck", "LBConfig", "LBConfigError", "LoadBalancer", "STAT_FIELDS",
    "Server", "ServerSpec", "Session", "format_time", "parse_csv", "parse_proxy_v2", "parse_time",
    "proxy_v2_header", "register_balancer", "render_cfg",
]


class LBConfigError(ValueError):
    """A load-balancer config that does not validate; one line naming the field."""


# --- time values ---------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TIME_RE = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?$")


def parse_time(value: Any, where: str) -> float:
    """A duration in seconds.  JSON numbers are seconds; strings use haproxy.cfg's units
    (``2s``, ``200ms``, ``1m``; a bare number in a string is milliseconds, as in HAProxy)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise LBConfigError(f"{where}: expected seconds or a time like '2s', got {type(value).__name__}")
    if isinstance(value, str):
        m = _TIME_RE.match(value.strip())
        if m is None:
            raise LBConfigError(f"{where}: {value!r} is not a time (e.g. '2s', '200ms')")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "ms"]
    else:
        seconds = float(value)
    if not seconds > 0 or seconds > 86400 * 24:
        raise LBConfigError(f"{where}: expected a time > 0, got {value!r}")
    return seconds


def format_time(seconds: float) -> str:
    """haproxy.cfg's notation: whole seconds as ``2s``, else ``200ms`` (``us`` below 1 ms)."""
    if seconds >= 1 and abs(seconds - round(seconds)) < 1e-9:
        return f"{round(seconds)}s"
    if seconds >= 1e-3:
        return f"{round(seconds * 1e3)}ms"
    return f"{max(1, round(seconds * 1e6))}us"


# --- the config model ----------------------------------------------------------------------

# HAProxy proxy and server names: "letters, digits, '-', '_', '.' and ':'" (configuration.txt).
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_WEIGHT = 256  # "weight <weight>: ... between 0 and 256"
MODES = ("tcp",)
WILDCARDS = ("0.0.0.0", "::")


@dataclass(frozen=True, slots=True, kw_only=True)
class Defaults:
    """Values a config may omit, already scaled by the VM's ``time_scale``."""

    inter: float = 2.0              # "check inter" (HAProxy: 2s)
    timeout_connect: float = 5.0    # "timeout connect"
    turnaround: float = 1.0         # delay before retrying the same server (HAProxy: 1 s)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckSpec:
    inter: float
    rise: int = 2
    fall: int = 3
    http: str | None = None  # "option httpchk GET <path>": a 2xx/3xx answer passes (L7OK), else L7STS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inter": self.inter, "rise": self.rise, "fall": self.fall}
        if self.http is not None:
            out["http"] = self.http
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSpec:
    name: str
    address: str
    port: int
    weight: int = 1
    check: bool = True
    send_proxy_v2: bool = False
    check_port: int | None = None  # "check port N": health-check this port instead of ``port``

    @property
    def addr(self) -> str:
        return _hostport(self.address, self.port)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "address": self.address, "port": self.port,
                               "weight": self.weight, "check": self.check, "send_proxy_v2": self.send_proxy_v2}
        if self.check_port is not None:
            out["check_port"] = self.check_port
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSpec:
    name: str
    balance: str
    check: CheckSpec
    servers: tuple[ServerSpec, ...]
    mode: str = "tcp"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "balance": self.balance, "check": self.check.to_json(),
                "servers": [s.to_json() for s in self.servers]}


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontendSpec:
    name: str
    address: str
    port: int
    default_backend: str
    mode: str = "tcp"

    @property
    def bind(self) -> str:
        return _hostport(self.address, self.port)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "bind": self.bind, "mode": self.mode, "default_backend": self.default_backend}


@dataclass(frozen=True, slots=True, kw_only=True)
class LBConfig:
    """What the lbagent runs; JSON shape in docs/contracts-control-plane.md (lbagent)."""

    vips: tuple[str, ...]
    frontends: tuple[FrontendSpec, ...]
    backends: tuple[BackendSpec, ...]
    timeout_connect: float
    retries: int = 3
    redispatch: bool = True
    cluster: str = ""

    @classmethod
    def empty(cls, defaults: Defaults = Defaults()) -> LBConfig:
        return cls(vips=(), frontends=(), backends=(), timeout_connect=defaults.timeout_connect)

    @classmethod
    def parse(cls, obj: Any, defaults: Defaults = Defaults()) -> LBConfig:
        return _parse_config(obj, defaults)

    def backend(self, name: str) -> BackendSpec:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "vips": list(self.vips),
            "defaults": {"timeout_connect": self.timeout_connect, "retries": self.retries,
                         "redispatch": self.redispatch},
            "frontends": [f.to_json() for f in self.frontends],
            "backends": [b.to_json() for b in self.backends],
        }


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# -- parsing helpers: each raises LBConfigError naming the field --


def _obj(value: Any, where: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise LBConfigError(f"{where or 'config'}: expected an object, got {type(value).__name__}")
    allowed = tuple(allowed)
    for key in value:
        if key not in allowed:
            raise LBConfigError(f"{where}{'.' if where else ''}{key}: unknown key (known: {', '.join(allowed)})")
    return value


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         default: Any = ...) -> Any:
    if key not in obj:
        if default is ...:
            raise LBConfigError(f"{_key(where, key)}: required")
        return default
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise LBConfigError(f"{_key(where, key)}: expected {names}, got {type(value).__name__}")
    return value


def _name(obj: Mapping[str, Any], where: str) -> str:
    name = _get(obj, "name", str, where)
    if not _NAME_RE.match(name):
        raise LBConfigError(f"{_key(where, 'name')}: {name!r} is not a valid name "
                            "(letters, digits, '-', '_', '.', ':'; at most 64)")
    return name


def _ip(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LBConfigError(f"{where}: expected an IP address, got {type(value).__name__}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise LBConfigError(f"{where}: {value!r} is not an IP address") from None


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LBConfigError(f"{where}: expected a port number, got {type(value).__name__}")
    if not 0 < value < 65536:
        raise LBConfigError(f"{where}: expected 1..65535, got {value}")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = _get(obj, key, int, where, default)
    if not lo <= value <= hi:
        raise LBConfigError(f"{_key(where, key)}: expected {lo}..{hi}, got {value}")
    return int(value)


def _mode(obj: Mapping[str, Any], where: str) -> str:
    mode = _get(obj, "mode", str, where, "tcp")
    if mode not in MODES:
        raise LBConfigError(f"{_key(where, 'mode')}: {mode!r} not supported: the AKS-HCI load balancer "
                            "is layer 4 (mode tcp)")
    return mode


def _bind(value: Any, where: str) -> tuple[str, int]:
    """``"VIP:port"`` (``"[v6]:port"``) or ``{"address": ..., "port": ...}``."""
    if isinstance(value, Mapping):
        _obj(value, where, ("address", "port"))
        return _ip(value.get("address"), f"{where}.address"), _port(value.get("port"), f"{where}.port")
    if not isinstance(value, str) or ":" not in value:
        raise LBConfigError(f"{where}: expected 'address:port', got {value!r}")
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit():
        raise LBConfigError(f"{where}: {port!r} is not a port number")
    return _ip(host, where), _port(int(port), where)


def _parse_check(value: Any, where: str, defaults: Defaults) -> CheckSpec:
    obj = _obj(value, where, ("inter", "rise", "fall", "http"))
    inter = parse_time(obj["inter"], f"{where}.inter") if "inter" in obj else defaults.inter
    http = obj.get("http")
    if http is not None and (not isinstance(http, str) or not http.startswith("/")):
        raise LBConfigError(f"{where}.http: expected a path starting with '/', got {http!r}")
    return CheckSpec(inter=inter, rise=_int(obj, "rise", where, 2, 1, 1000),
                     fall=_int(obj, "fall", where, 3, 1, 1000), http=http)


def _parse_server(value: Any, where: str) -> ServerSpec:
    obj = _obj(value, where, ("name", "address", "port", "weight", "check", "send_proxy_v2", "check_port"))
    check_port = obj.get("check_port")
    return ServerSpec(
        check_port=None if check_port is None else _port(check_port, f"{where}.check_port"),
        name=_name(obj, where), address=_ip(obj.get("address"), f"{where}.address"),
        port=_port(obj.get("port"), f"{where}.port"),
        weight=_int(obj, "weight", where, 1, 0, MAX_WEIGHT),
        check=_get(obj, "check", bool, where, True),
        send_proxy_v2=_get(obj, "send_proxy_v2", bool, where, False))


def _parse_backend(value: Any, where: str, defaults: Defaults) -> BackendSpec:
    obj = _obj(value, where, ("name", "mode", "balance", "check", "servers"))
    name = _name(obj, where)
    balance = _get(obj, "balance", str, where, "roundrobin")
    if balance not in BALANCERS:
        raise LBConfigError(f"{where}.balance: unknown algorithm {balance!r} (known: {', '.join(sorted(BALANCERS))})")
    check = _parse_check(obj.get("check", {}), f"{where}.check", defaults)
    raw = _get(obj, "servers", list, where, [])
    servers = tuple(_parse_server(s, f"{where}.servers[{i}]") for i, s in enumerate(raw))
    seen: dict[str, int] = {}
    for i, s in enumerate(servers):
        if s.name in seen:
            raise LBConfigError(f"{where}.servers[{i}].name: duplicate server {s.name!r} "
                                f"(also servers[{seen[s.name]}])")
        seen[s.name] = i
    return BackendSpec(name=name, mode=_mode(obj, where), balance=balance, check=check, servers=servers)


def _parse_frontend(value: Any, where: str) -> FrontendSpec:
    obj = _obj(value, where, ("name", "bind", "mode", "default_backend", "backend"))
    name = _name(obj, where)
    if "bind" not in obj:
        raise LBConfigError(f"{where}.bind: required")
    address, port = _bind(obj["bind"], f"{where}.bind")
    # "backend" is accepted as a short alias of "default_backend".
    key = "default_backend" if "default_backend" in obj or "backend" not in obj else "backend"
    if "backend" in obj and "default_backend" in obj and obj["backend"] != obj["default_backend"]:
        raise LBConfigError(f"{where}.backend: differs from default_backend (give one)")
    return FrontendSpec(name=name, address=address, port=port, mode=_mode(obj, where),
                        default_backend=_get(obj, key, str, where))


def _parse_config(obj: Any, defaults: Defaults) -> LBConfig:
    top = _obj(obj, "", ("cluster", "vips", "defaults", "frontends", "backends"))
    dflt = _obj(top.get("defaults", {}), "defaults", ("timeout_connect", "retries", "redispatch"))
    timeout_connect = (parse_time(dflt["timeout_connect"], "defaults.timeout_connect")
                       if "timeout_connect" in dflt else defaults.timeout_connect)
    retries = _int(dflt, "retries", "defaults", 3, 0, 100)
    redispatch = _get(dflt, "redispatch", bool, "defaults", True)
    backends = tuple(_parse_backend(b, f"backends[{i}]", defaults)
                     for i, b in enumerate(_get(top, "backends", list, "", [])))
    frontends = tuple(_parse_frontend(f, f"frontends[{i}]")
                      for i, f in enumerate(_get(top, "frontends", list, "", [])))
    _unique([b.name for b in backends], "backends", "backend")
    _unique([f.name for f in frontends], "frontends", "frontend")
    names = {b.name for b in backends}
    binds: dict[tuple[str, int], str] = {}
    for i, f in enumerate(frontends):
        if f.default_backend not in names:
            raise LBConfigError(f"frontends[{i}].default_backend: no backend named {f.default_backend!r}")
        clash = next((n for (a, p), n in binds.items() if p == f.port and _overlap(a, f.address)), None)
        if clash is not None:
            raise LBConfigError(f"frontends[{i}].bind: {f.bind} overlaps the bind of frontend {clash!r}")
        binds[(f.address, f.port)] = f.name
    raw_vips = _get(top, "vips", list, "", None)
    if raw_vips is None:  # omitted: the frontends' addresses are the VIPs
        vips = tuple(dict.fromkeys(f.address for f in frontends if f.address not in WILDCARDS))
    else:
        vips = tuple(_ip(v, f"vips[{i}]") for i, v in enumerate(raw_vips))
        _unique(list(vips), "vips", "VIP")
        for i, f in enumerate(frontends):
            if f.address not in vips and f.address not in WILDCARDS:
                raise LBConfigError(f"frontends[{i}].bind: {f.address} is not one of the vips "
                                    f"({', '.join(vips) or 'none'})")
    return LBConfig(vips=vips, frontends=frontends, backends=backends, timeout_connect=timeout_connect,
                    retries=retries, redispatch=redispatch, cluster=_get(top, "cluster", str, "", ""))


def _overlap(a: str, b: str) -> bool:
    """Two binds on one port clash when the addresses are equal or one is the wildcard."""
    return a == b or a in WILDCARDS or b in WILDCARDS


def _unique(names: list[str], where: str, what: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            field = f"{where}[{i}]" + (".name" if what != "VIP" else "")
            raise LBConfigError(f"{field}: duplicate {what} {name!r} (also {where}[{seen[name]}])")
        seen[name] = i


# --- haproxy.cfg ---------------------------------------------------------------------------


def render_cfg(config: LBConfig, *, header: str = "") -> str:
    """The haproxy.cfg HAProxy would run for ``config`` (only what the emulator enforces)."""
    lines = [f"# {line}" for line in (header or "haproxy.cfg rendered by the hcinet lbagent").splitlines()]
    if config.cluster:
        lines.append(f"# load balancer of workload cluster {config.cluster}")
    if config.vips:
        lines.append(f"# VIPs (keepalived): {', '.join(config.vips)}")
    lines += [
        "global",
        "    log /dev/log local0",
        "    stats socket /var/run/haproxy.sock mode 600 level admin",
        "    daemon",
        "",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        "    option redispatch" if config.redispatch else "    no option redispatch",
        f"    retries {config.retries}",
        f"    timeout connect {format_time(config.timeout_connect)}",
    ]
    for f in config.frontends:
        lines += ["", f"frontend {f.name}", f"    bind {f.bind}", f"    mode {f.mode}",
                  f"    default_backend {f.default_backend}"]
    for b in config.backends:
        lines += ["", f"backend {b.name}", f"    mode {b.mode}", f"    balance {b.balance}"]
        if b.check.http is not None:
            lines.append(f"    option httpchk GET {b.check.http}")
        for s in b.servers:
            words = [f"    server {s.name} {s.addr}"]
            if s.check:
                words.append(f"check inter {format_time(b.check.inter)} rise {b.check.rise} fall {b.check.fall}")
                if s.check_port is not None:
                    words.append(f"port {s.check_port}")
            if s.weight != 1:
                words.append(f"weight {s.weight}")
            if s.send_proxy_v2:
                words.append("send-proxy-v2")
            lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


# --- counters ------------------------------------------------------------------------------


class FreqCtr:
    """Events per second over the last elapsed second, as HAProxy's ``freq_ctr``: the current
    second's count plus the previous second's, weighted by what remains of the current one."""

    __slots__ = ("sec", "curr", "prev")

    def __init__(self) -> None:
        self.sec = 0
        self.curr = 0
        self.prev = 0

    def _rotate(self, now: float) -> None:
        sec = int(now)
        if sec != self.sec:
            self.prev = self.curr if sec == self.sec + 1 else 0
            self.curr = 0
            self.sec = sec

    def add(self, now: float, n: int = 1) -> int:
        self._rotate(now)
        self.curr += n
        return self.rate(now)

    def rate(self, now: float) -> int:
        self._rotate(now)
        return self.curr + int(self.prev * (1.0 - (now - self.sec)))


class Counters:
    """The session counters frontends, backends and servers share (stats columns)."""

    __slots__ = ("scur", "smax", "stot", "bin", "bout", "econ", "wretr", "wredis", "lbtot", "connect",
                 "last_sess", "rate", "rate_max")

    def __init__(self) -> None:
        self.scur = self.smax = self.stot = self.bin = self.bout = 0
        self.econ = self.wretr = self.wredis = self.lbtot = self.connect = 0
        self.last_sess: float | None = None
        self.rate = FreqCtr()
        self.rate_max = 0

    def session_start(self, now: float) -> None:
        self.scur += 1
        self.smax = max(self.smax, self.scur)
        self.stot += 1
        self.last_sess = now
        self.rate_max = max(self.rate_max, self.rate.add(now))

    def session_end(self) -> None:
        self.scur = max(0, self.scur - 1)


# --- health checks -------------------------------------------------------------------------

# check_status codes of a layer-4 check and their check_desc (HAProxy src/check.c).
CHECK_DESC = {
    "INI": "Initializing", "UNK": "Unknown", "SOCKERR": "Socket error",
    "L4OK": "Layer4 check passed", "L4TOUT": "Layer4 timeout", "L4CON": "Layer4 connection problem",
    "L7OK": "Layer7 check passed", "L7TOUT": "Layer7 timeout", "L7RSP": "Layer7 invalid response",
    "L7STS": "Layer7 wrong status",
}
FAILED = frozenset({"SOCKERR", "L4TOUT", "L4CON", "L7TOUT", "L7RSP", "L7STS"})


class HealthCheck:
    """One server's health, HAProxy's way: ``health`` in ``0 .. rise + fall - 1``.

    ``report(ok)`` is ``set_server_check_status``: a failure with ``health > 0`` counts in
    ``chkfail`` and decrements; below ``rise`` it drops to 0 (DOWN).  A success increments;
    reaching ``rise`` jumps to ``rise + fall - 1`` (fully UP).  A new server starts UP with
    ``health = rise`` ("up, but will fall down at first failure").
    """

    __slots__ = ("rise", "fall", "health", "up", "chkfail", "chkdown", "last_change", "down_since",
                 "downtime_acc", "status", "last_chk", "duration_ms", "checks")

    def __init__(self, spec: CheckSpec, now: float) -> None:
        self.rise = spec.rise
        self.fall = spec.fall
        self.health = spec.rise
        self.up = True
        self.chkfail = 0
        self.chkdown = 0
        self.last_change = now
        self.down_since: float | None = None
        self.downtime_acc = 0.0
        self.status = "INI"
        self.last_chk = ""
        self.duration_ms: int | None = None
        self.checks = 0

    @property
    def full(self) -> int:
        return self.rise + self.fall - 1

    def reconfigure(self, spec: CheckSpec) -> None:
        """New rise/fall: keep the state, clamp the health into the new range."""
        self.rise, self.fall = spec.rise, spec.fall
        if self.up:
            self.health = min(max(self.health, self.rise), self.full)
        else:
            self.health = min(self.health, self.rise - 1)

    def report(self, status: str, now: float, duration: float = 0.0, info: str = "") -> bool:
        """One check result (``L4OK``, ``L4TOUT``, ``L4CON``, ``SOCKERR``); True if the
        server changed state (UP <-> DOWN)."""
        if status not in CHECK_DESC or status in ("INI", "UNK"):
            raise ValueError(f"status: not a check result: {status!r}")
        self.checks += 1
        self.status = status
        self.last_chk = info
        self.duration_ms = max(0, round(duration * 1000))
        if status in FAILED:
            if self.health > 0:
                self.chkfail += 1
                self.health -= 1
                if self.health < self.rise:
                    self.health = 0
        elif self.health < self.full:
            self.health += 1
            if self.health >= self.rise:
                self.health = self.full  # "OK now"
        return self._settle(now)

    def _settle(self, now: float) -> bool:
        if self.up and self.health == 0:
            self.up = False
            self.chkdown += 1
            self.last_change = now
            self.down_since = now
            return True
        if not self.up and self.health >= self.rise:
            self.up = True
            self.last_change = now
            if self.down_since is not None:
                self.downtime_acc += now - self.down_since
            self.down_since = None
            return True
        return False

    def downtime(self, now: float) -> float:
        return self.downtime_acc + (now - self.down_since if self.down_since is not None else 0.0)

    def status_text(self) -> str:
        """The stats ``status`` column: ``UP``, ``UP 2/3`` (going down), ``DOWN``, ``DOWN 1/2``
        (going up), as HAProxy's ``srv_hlt_st``."""
        if self.up:
            if self.health < self.full:
                return f"UP {self.health - self.rise + 1}/{self.fall}"
            return "UP"
        if self.health > 0:
            return f"DOWN {self.health}/{self.rise}"
        return "DOWN"


# --- runtime objects -----------------------------------------------------------------------


class Server:
    """A server of a backend: its spec, its check state (None without ``check``), counters."""

    __slots__ = ("spec", "sid", "check", "c", "__weakref__")

    def __init__(self, spec: ServerSpec, sid: int, check: CheckSpec, now: float) -> None:
        self.spec = spec
        self.sid = sid
        self.check: HealthCheck | None = HealthCheck(check, now) if spec.check else None
        self.c = Counters()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def up(self) -> bool:
        return self.check is None or self.check.up

    @property
    def usable(self) -> bool:
        """Takes new sessions: UP with a weight above 0."""
        return self.up and self.spec.weight > 0

    def status_text(self) -> str:
        return "no check" if self.check is None else self.check.status_text()

    def __repr__(self) -> str:
        return f"<Server {self.spec.name} {self.spec.addr} {self.status_text()}>"


# -- balance algorithms --


class Balancer(ABC):
    """A balance algorithm: picks a server among the usable ones, in config order."""

    name: ClassVar[str] = ""

    @abstractmethod
    def pick(self, servers: Sequence[Server], client: str) -> Server | None:
        """``servers`` are the candidates (UP, weight > 0); None when there are none."""


BALANCERS: dict[str, type[Balancer]] = {}


def register_balancer(name: str) -> Callable[[type[Balancer]], type[Balancer]]:
    def deco(cls: type[Balancer]) -> type[Balancer]:
        cls.name = name
        BALANCERS[name] = cls
        return cls
    return deco


@register_balancer("roundrobin")
class RoundRobin(Balancer):
    """Weighted round robin, interleaved (HAProxy's ``fwrr`` spreads each server's turns over
    the cycle rather than sending them back to back): the smooth weighted round robin --
    every pick adds each candidate's weight to its credit, the highest credit wins and pays
    the total.  Over ``sum(weights)`` picks each server gets exactly its weight."""

    def __init__(self) -> None:
        self._credit: dict[str, int] = {}

    def pick(self, servers: Sequence[Server], client: str) -> Server | None:
        if not servers:
            return None
        credit = self._credit
        total = 0
        best: Server | None = None
        best_credit = 0
        for s in servers:
            w = s.spec.weight
            total += w
            c = credit[s.name] = credit.get(s.name, 0) + w
            if best is None or c > best_credit:
                best, best_credit = s, c
        assert best is not None
        credit[best.name] -= total
        if len(credit) > 4 * len(servers) + 16:  # forget servers long gone
            names = {s.name for s in servers}
            for name in [n for n in credit if n not in names]:
                del credit[name]
        return best


@register_balancer("leastconn")
class LeastConn(Balancer):
    """The server with the fewest current sessions relative to its weight (HAProxy's key is
    ``(served + 1) / eweight``); servers of equal load take turns (round robin)."""

    def __init__(self) -> None:
        self._last: str | None = None

    def pick(self, servers: Sequence[Server], client: str) -> Server | None:
        if not servers:
            return None
        keys = [(s.c.scur + 1) / s.spec.weight for s in servers]
        low = min(keys)
        tied = [s for s, k in zip(servers, keys, strict=True) if k == low]
        names = [s.name for s in servers]
        start = names.index(self._last) + 1 if self._last in names else 0
        order = {s.name: (names.index(s.name) - start) % len(servers) for s in tied}
        chosen = min(tied, key=lambda s: order[s.name])
        self._last = chosen.name
        return chosen


def sdbm(data: bytes) -> int:
    """HAProxy's default hash function (``hash-type ... sdbm``), 32 bits."""
    h = 0
    for byte in data:
        h = (byte + (h << 6) + (h << 16) - h) & 0xFFFFFFFF
    return h


@register_balancer("source")
class Source(Balancer):
    """``balance source`` with HAProxy's default ``hash-type map-based``: the client address is
    hashed and divided by the total weight of the running servers.  The same client always
    lands on the same server while the set of servers is unchanged; when a server goes DOWN
    or comes back, most clients move (map-based hashing is not consistent)."""

    def pick(self, servers: Sequence[Server], client: str) -> Server | None:
        total = sum(s.spec.weight for s in servers)
        if total <= 0:
            return None
        try:
            key = ipaddress.ip_address(client).packed
        except ValueError:
            key = client.encode()
        slot = sdbm(key) % total
        for s in servers:
            slot -= s.spec.weight
            if slot < 0:
                return s
        return servers[-1]


# -- frontends and backends --


class Frontend:
    __slots__ = ("spec", "iid", "c")

    def __init__(self, spec: FrontendSpec, iid: int) -> None:
        self.spec = spec
        self.iid = iid
        self.c = Counters()


class Backend:
    """A backend: its servers in config order, its balance algorithm, its counters and its
    own UP/DOWN history (the backend is DOWN when no server can take a session)."""

    __slots__ = ("spec", "iid", "servers", "balancer", "c", "up", "chkdown", "last_change",
                 "down_since", "downtime_acc")

    def __init__(self, spec: BackendSpec, iid: int, now: float) -> None:
        self.spec = spec
        self.iid = iid
        self.servers: list[Server] = [Server(s, i + 1, spec.check, now) for i, s in enumerate(spec.servers)]
        self.balancer: Balancer = BALANCERS[spec.balance]()
        self.c = Counters()
        self.up = self._any_usable()
        self.chkdown = 0
        self.last_change = now
        self.down_since: float | None = None if self.up else now
        self.downtime_acc = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    def server(self, name: str) -> Server:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(f"server: no server {name!r} in backend {self.name!r}")

    def _any_usable(self) -> bool:
        return any(s.usable for s in self.servers)

    def reconfigure(self, spec: BackendSpec, now: float) -> None:
        """Apply a new spec of the same backend: servers with the same name and address keep
        their counters and health; others start fresh (UP, as HAProxy's new servers do)."""
        old = {s.name: s for s in self.servers}
        servers = []
        for i, sspec in enumerate(spec.servers):
            prev = old.get(sspec.name)
            if prev is not None and (prev.spec.address, prev.spec.port) == (sspec.address, sspec.port):
                prev.spec = sspec
                prev.sid = i + 1
                if not sspec.check:
                    prev.check = None
                elif prev.check is None:
                    prev.check = HealthCheck(spec.check, now)
                else:
                    prev.check.reconfigure(spec.check)
                servers.append(prev)
            else:
                servers.append(Server(sspec, i + 1, spec.check, now))
        if spec.balance != self.spec.balance:
            self.balancer = BALANCERS[spec.balance]()
        self.spec = spec
        self.servers = servers
        self.refresh(now)

    def refresh(self, now: float) -> bool:
        """Re-derive the backend's state after a server changed; True if it flipped."""
        up = self._any_usable()
        if up == self.up:
            return False
        self.up = up
        self.last_change = now
        if up:
            if self.down_since is not None:
                self.downtime_acc += now - self.down_since
            self.down_since = None
        else:
            self.chkdown += 1
            self.down_since = now
        return True

    def downtime(self, now: float) -> float:
        return self.downtime_acc + (now - self.down_since if self.down_since is not None else 0.0)

    def candidates(self, exclude: Iterable[str] = ()) -> list[Server]:
        skip = set(exclude)
        return [s for s in self.servers if s.usable and s.name not in skip]

    def select(self, client: str, exclude: Iterable[str] = ()) -> Server | None:
        """The balance algorithm's choice for ``client``; counted in ``lbtot``."""
        server = self.balancer.pick(self.candidates(exclude), client)
        if server is not None:
            server.c.lbtot += 1
            self.c.lbtot += 1
        return server

    def report_check(self, server: Server, status: str, now: float, duration: float = 0.0,
                     info: str = "") -> bool:
        """A health-check result for ``server``; True if the server changed state."""
        if server.check is None:
            raise ValueError(f"server {server.name}: has no check")
        changed = server.check.report(status, now, duration, info)
        if changed:
            self.refresh(now)
        return changed


class Session:
    """One proxied connection's accounting: frontend -> backend -> server.

    The proxy calls :meth:`choose` (or :meth:`redispatch`), then for each attempt
    :meth:`connecting` and :meth:`connect_failed` or :meth:`established`, :meth:`add_in` /
    :meth:`add_out` as bytes flow, and :meth:`close` once.  ``bin`` counts bytes from the
    client, ``bout`` bytes to the client, at every level (as HAProxy does).
    """

    __slots__ = ("lb", "frontend", "backend", "client", "server", "tried", "_on_server", "_closed")

    def __init__(self, lb: LoadBalancer, frontend: Frontend, backend: Backend, client: str, now: float) -> None:
        self.lb = lb
        self.frontend = frontend
        self.backend = backend
        self.client = client
        self.server: Server | None = None
        self.tried: list[str] = []
        self._on_server = False
        self._closed = False
        frontend.c.session_start(now)
        backend.c.session_start(now)

    def choose(self) -> Server | None:
        """The first server, by the backend's algorithm; None (counted in the backend's
        ``econ``: "no active servers") when no server can take it."""
        self.server = self.backend.select(self.client)
        if self.server is None:
            self.backend.c.econ += 1
        return self.server

    def redispatch(self) -> Server | None:
        """``option redispatch``: another server than the ones tried; ``wredis`` is counted on
        the server switched away from.  None (and nothing counted) if there is no other."""
        other = self.backend.select(self.client, exclude=self.tried)
        if other is None:
            return None
        if self.server is not None:
            self.server.c.wredis += 1
        self.backend.c.wredis += 1
        self.server = other
        return other

    def retry(self) -> None:
        """Another attempt on the same server (``wretr``)."""
        assert self.server is not None
        self.server.c.wretr += 1
        self.backend.c.wretr += 1

    def connecting(self, now: float) -> None:
        assert self.server is not None and not self._on_server
        self._on_server = True
        if self.server.name not in self.tried:
            self.tried.append(self.server.name)
        self.server.c.connect += 1
        self.backend.c.connect += 1
        self.server.c.scur += 1
        self.server.c.smax = max(self.server.c.smax, self.server.c.scur)

    def connect_failed(self) -> None:
        assert self.server is not None and self._on_server
        self._on_server = False
        self.server.c.scur -= 1
        self.server.c.econ += 1
        self.backend.c.econ += 1

    def established(self, now: float) -> None:
        assert self.server is not None and self._on_server
        c = self.server.c
        c.stot += 1
        c.last_sess = now
        c.rate_max = max(c.rate_max, c.rate.add(now))

    def add_in(self, n: int) -> None:
        self.frontend.c.bin += n
        self.backend.c.bin += n
        if self.server is not None:
            self.server.c.bin += n

    def add_out(self, n: int) -> None:
        self.frontend.c.bout += n
        self.backend.c.bout += n
        if self.server is not None:
            self.server.c.bout += n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.frontend.c.session_end()
        self.backend.c.session_end()
        if self._on_server and self.server is not None:
            self._on_server = False
            self.server.c.session_end()


# --- the load balancer ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Changes:
    """What :meth:`LoadBalancer.apply` asks the I/O shell to do."""

    start: tuple[FrontendSpec, ...]    # frontends to start listening
    stop: tuple[FrontendSpec, ...]     # frontends to stop
    claim: tuple[str, ...]             # VIPs to claim (keepalived)
    release: tuple[str, ...]           # VIPs to give up


class LoadBalancer:
    """The running load balancer: the applied :class:`LBConfig` and its live state."""

    def __init__(self, now: float, defaults: Defaults = Defaults()) -> None:
        self.defaults = defaults
        self.config = LBConfig.empty(defaults)
        self.frontends: dict[str, Frontend] = {}
        self.backends: dict[str, Backend] = {}
        self.generation = 0
        self.started = now

    def plan(self, config: LBConfig) -> Changes:
        """What applying ``config`` would change (no state touched)."""
        old = {f.name: f for f in self.config.frontends}
        new = {f.name: f for f in config.frontends}
        start = tuple(f for f in config.frontends
                      if f.name not in old or (old[f.name].address, old[f.name].port) != (f.address, f.port))
        stop = tuple(f for f in self.config.frontends
                     if f.name not in new or (new[f.name].address, new[f.name].port) != (f.address, f.port))
        return Changes(start=start, stop=stop,
                       claim=tuple(v for v in config.vips if v not in self.config.vips),
                       release=tuple(v for v in self.config.vips if v not in config.vips))

    def apply(self, config: LBConfig, now: float) -> Changes:
        """Make ``config`` the running one.  Kept: frontends and backends by name, servers by
        name and address (their counters and health state)."""
        changes = self.plan(config)
        frontends: dict[str, Frontend] = {}
        backends: dict[str, Backend] = {}
        iid = 0
        for fspec in config.frontends:
            iid += 1
            fe = self.frontends.get(fspec.name)
            if fe is None:
                fe = Frontend(fspec, iid)
            fe.spec, fe.iid = fspec, iid
            frontends[fspec.name] = fe
        for bspec in config.backends:
            iid += 1
            be = self.backends.get(bspec.name)
            if be is None:
                be = Backend(bspec, iid, now)
            else:
                be.reconfigure(bspec, now)
            be.iid = iid
            backends[bspec.name] = be
        self.config = config
        self.frontends = frontends
        self.backends = backends
        self.generation += 1
        return changes

    def open_session(self, frontend: str, client: str, now: float) -> Session:
        fe = self.frontends[frontend]
        return Session(self, fe, self.backends[fe.spec.default_backend], client, now)

    def checked_servers(self) -> list[tuple[Backend, Server]]:
        return [(b, s) for b in self.backends.values() for s in b.servers if s.check is not None]

    # -- stats --

    def stats(self, now: float) -> list[dict[str, str]]:
        """``show stat`` rows (every value a string, "" where HAProxy prints nothing), in
        HAProxy's order: each frontend, then each backend's servers and its BACKEND row."""
        raw = [_frontend_row(fe, now) for fe in self.frontends.values()]
        for be in self.backends.values():
            raw += [_server_row(be, s, now) for s in be.servers]
            raw.append(_backend_row(be, now))
        return [{f: str(row.get(f, "")) for f in STAT_FIELDS} for row in raw]

    def csv(self, now: float) -> str:
        """The stats as HAProxy's CSV (``show stat`` / the stats page's ``;csv``)."""
        lines = ["# " + ",".join(STAT_FIELDS) + ","]
        for row in self.stats(now):
            lines.append(",".join(_csv_field(row[f]) for f in STAT_FIELDS) + ",")
        return "\n".join(lines) + "\n"

    def render_cfg(self) -> str:
        return render_cfg(self.config)


# The static fields of HAProxy's stats CSV, in order (management guide, 9.1 "CSV format").
STAT_FIELDS: tuple[str, ...] = (
    "pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot", "bin", "bout", "dreq", "dresp",
    "ereq", "econ", "eresp", "wretr", "wredis", "status", "weight", "act", "bck", "chkfail", "chkdown",
    "lastchg", "downtime", "qlimit", "pid", "iid", "sid", "throttle", "lbtot", "tracked", "type", "rate",
    "rate_lim", "rate_max", "check_status", "check_code", "check_duration", "hrsp_1xx", "hrsp_2xx",
    "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other", "hanafail", "req_rate", "req_rate_max", "req_tot",
    "cli_abrt", "srv_abrt", "comp_in", "comp_out", "comp_byp", "comp_rsp", "lastsess", "last_chk",
    "last_agt", "qtime", "ctime", "rtime", "ttime", "agent_status", "agent_code", "agent_duration",
    "check_desc", "agent_desc", "check_rise", "check_fall", "check_health", "agent_rise", "agent_fall",
    "agent_health", "addr", "cookie", "mode", "algo", "conn_rate", "conn_rate_max", "conn_tot",
    "intercepted", "dcon", "dses", "wrew", "connect", "reuse", "cache_lookups", "cache_hits", "srv_icur",
    "src_ilim", "qtime_max", "ctime_max", "rtime_max", "ttime_max", "eint", "idle_conn_cur",
    "safe_conn_cur", "used_conn_cur", "need_conn_est", "uweight",
)
PID = 1  # "process id (0 for first instance, 1 for second, ...)": HAProxy 2.x prints 1


def _csv_field(value: Any) -> str:
    text = str(value)
    if "," in text or '"' in text or "\n" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def parse_csv(text: str) -> list[dict[str, str]]:
    """HAProxy stats CSV -> one dict per row, keyed by the header's column names."""
    import csv as _csv

    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError("stats: no '# pxname,...' header line")
    header = lines[0][2:].split(",")
    rows = []
    for rec in _csv.reader(lines[1:]):
        if rec:
            rows.append({k: v for k, v in zip(header, rec, strict=False) if k})
    return rows


def _common(c: Counters, now: float) -> dict[str, Any]:
    return {"scur": c.scur, "smax": c.smax, "stot": c.stot, "bin": c.bin, "bout": c.bout,
            "pid": PID, "rate": c.rate.rate(now), "rate_max": c.rate_max, "mode": "tcp"}


def _frontend_row(fe: Frontend, now: float) -> dict[str, Any]:
    c = fe.c
    return {**_common(c, now), "pxname": fe.spec.name, "svname": "FRONTEND", "dreq": 0, "dresp": 0,
            "ereq": 0, "status": "OPEN", "iid": fe.iid, "sid": 0, "type": 0, "rate_lim": "",
            "conn_rate": c.rate.rate(now), "conn_rate_max": c.rate_max, "conn_tot": c.stot,
            "dcon": 0, "dses": 0, "wrew": 0, "eint": 0}


def _lastsess(c: Counters, now: float) -> int:
    return -1 if c.last_sess is None else int(now - c.last_sess)


def _server_row(be: Backend, s: Server, now: float) -> dict[str, Any]:
    c = s.c
    row = {**_common(c, now), "pxname": be.name, "svname": s.name, "qcur": 0, "qmax": 0, "dresp": 0,
           "econ": c.econ, "eresp": 0, "wretr": c.wretr, "wredis": c.wredis, "status": s.status_text(),
           "weight": s.spec.weight, "act": 1, "bck": 0, "iid": be.iid, "sid": s.sid,
           "lbtot": c.lbtot, "type": 2, "cli_abrt": 0, "srv_abrt": 0, "lastsess": _lastsess(c, now),
           "addr": s.spec.addr, "connect": c.connect, "reuse": 0, "wrew": 0, "eint": 0,
           "uweight": s.spec.weight, "used_conn_cur": c.scur}
    hc = s.check
    if hc is not None:
        row.update({
            "chkfail": hc.chkfail, "chkdown": hc.chkdown, "lastchg": int(now - hc.last_change),
            "downtime": int(hc.downtime(now)), "check_status": hc.status,
            "check_duration": "" if hc.duration_ms is None else hc.duration_ms,
            "last_chk": hc.last_chk, "check_desc": CHECK_DESC[hc.status], "check_rise": hc.rise,
            "check_fall": hc.fall, "check_health": hc.health,
        })
    return row


def _backend_row(be: Backend, now: float) -> dict[str, Any]:
    c = be.c
    usable = [s for s in be.servers if s.usable]
    return {**_common(c, now), "pxname": be.name, "svname": "BACKEND", "qcur": 0, "qmax": 0, "dreq": 0,
            "dresp": 0, "econ": c.econ, "eresp": 0, "wretr": c.wretr, "wredis": c.wredis,
            "status": "UP" if be.up else "DOWN", "weight": sum(s.spec.weight for s in usable),
            "act": len(usable), "bck": 0, "chkdown": be.chkdown, "lastchg": int(now - be.last_change),
            "downtime": int(be.downtime(now)), "iid": be.iid, "sid": 0, "lbtot": c.lbtot, "type": 1,
            "cli_abrt": 0, "srv_abrt": 0, "lastsess": _lastsess(c, now), "algo": be.spec.balance,
            "connect": c.connect, "reuse": 0, "wrew": 0, "eint": 0,
            "uweight": sum(s.spec.weight for s in be.servers)}


# --- PROXY protocol v2 ---------------------------------------------------------------------

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2_header(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """The PROXY v2 header HAProxy's ``send-proxy-v2`` writes first on the server connection:
    signature, version 2 + PROXY command, TCP over IPv4 or IPv6, addresses and ports."""
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version != d.version:  # mixed families: HAProxy sends the LOCAL command
        return PROXY_V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    fam = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
    return PROXY_V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def parse_proxy_v2(data: bytes) -> tuple[int, tuple[str, int] | None, tuple[str, int] | None] | None:
    """``(header length, src, dst)`` if ``data`` starts with a whole PROXY v2 header
    (``src``/``dst`` None for the LOCAL command); None if ``data`` does not (yet) hold one;
    ValueError if it starts with the signature but is malformed."""
    if len(data) < 16 or not data.startswith(PROXY_V2_SIGNATURE):
        return None
    ver_cmd, fam = data[12], data[13]
    (length,) = struct.unpack("!H", data[14:16])
    if ver_cmd >> 4 != 2:
        raise ValueError(f"proxy v2: bad version {ver_cmd >> 4}")
    if len(data) < 16 + length:
        return None
    body = data[16:16 + length]
    if ver_cmd & 0x0F == 0:
        return 16 + length, None, None
    if fam == 0x11 and length >= 12:
        src = (str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0])
        dst = (str(ipaddress.IPv4Address(body[4:8])), struct.unpack("!H", body[10:12])[0])
    elif fam == 0x21 and length >= 36:
        src = (str(ipaddress.IPv6Address(body[0:16])), struct.unpack("!H", body[32:34])[0])
        dst = (str(ipaddress.IPv6Address(body[16:32])), struct.unpack("!H", body[34:36])[0])
    else:
        raise ValueError(f"proxy v2: unsupported family 0x{fam:02x}")
    return 16 + length, src, dst

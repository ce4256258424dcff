"""The Corefile: kubeadm's default text and the options the emulated CoreDNS reads (sans-IO).

:data:`KUBEADM_COREFILE` is the ``Corefile`` key of the ``kube-system/coredns`` ConfigMap that
kubeadm 1.26 writes (``cmd/kubeadm/app/phases/addons/dns/manifests.go``, ``CoreDNSConfigMap``
with ``DNSDomain: cluster.local``); the API server's addon bootstrap stores it, and the
emulated CoreDNS falls back to it when no ConfigMap is there.

:func:`parse_corefile` splits a Corefile into server blocks and directives the way Caddy's
lexer does (whitespace-separated tokens, ``#`` comments, ``"quoted"`` tokens, a directive's
arguments end at the end of its line, ``{ ... }`` opens its block).
:meth:`CorefileOptions.from_text` picks the server block that serves the root zone on port 53
and reads what the emulation honours:

* ``kubernetes [ZONES...] { pods MODE; ttl N; endpoint_pod_names; fallthrough [ZONES...] }``
  -> the :class:`~agents.dns.zone.Zone` (``pods`` defaults to ``disabled`` and ``ttl`` to 5,
  the plugin's defaults; ``ttl`` 0..3600 as the plugin checks it);
* ``forward . TO...`` -> upstream servers (``/etc/resolv.conf`` means the pod's resolv.conf,
  which with the Deployment's ``dnsPolicy: Default`` is the node's: its network's dnsServers);
* ``loadbalance`` -> address records in random order; ``health``/``ready``/``prometheus``
  addresses; ``cache`` is parsed (its TTL kept) but the emulation answers uncached.

A Corefile the real CoreDNS refuses (unbalanced braces, a ``kubernetes`` block with a bad
``pods`` mode or ``ttl``) raises :class:`CorefileError`: CoreDNS exits at start, and so does
the emulated one.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CorefileError", "CorefileOptions", "Directive", "ServerBlock", "KUBEADM_COREFILE",
           "parse_corefile"]

KUBEADM_COREFILE = """\
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
"""

RESOLV_CONF = "/etc/resolv.conf"
_POD_MODES = ("disabled", "insecure", "verified")
_REVERSE_SUFFIXES = ("in-addr.arpa", "ip6.arpa")


class CorefileError(ValueError):
    """A Corefile CoreDNS would refuse to start with."""


@dataclass(frozen=True, slots=True)
class Directive:
    """One plugin line: its arguments and the lines of its ``{ }`` block (token tuples)."""

    name: str
    args: tuple[str, ...] = ()
    block: tuple[tuple[str, ...], ...] = ()
    line: int = 0


@dataclass(frozen=True, slots=True)
class ServerBlock:
    keys: tuple[str, ...]                 # ".:53", "cluster.local:53", "."
    directives: tuple[Directive, ...]

    def get(self, name: str) -> Directive | None:
        return next((d for d in self.directives if d.name == name), None)

    def serves(self, zone: str, port: int) -> bool:
        """Does a key of this block name ``zone`` (``.`` for the root) on ``port``?"""
        for key in self.keys:
            key = key.split("://", 1)[-1]
            name, _, port_text = key.rpartition(":") if ":" in key else (key, "", "")
            if name.rstrip(".").lower() == zone.rstrip(".").lower() and (not port_text or port_text == str(port)):
                return True
        return False


# --- lexing ---------------------------------------------------------------------------------


def _tokens(text: str) -> list[tuple[int, str]]:
    """(line number, token); ``{`` and ``}`` are tokens of their own."""
    out: list[tuple[int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        i, n = 0, len(raw)
        while i < n:
            ch = raw[i]
            if ch.isspace():
                i += 1
            elif ch == "#":
                break
            elif ch in "{}":
                out.append((lineno, ch))
                i += 1
            elif ch == '"':
                end = raw.find('"', i + 1)
                if end < 0:
                    raise CorefileError(f"Corefile:{lineno} - Error during parsing: unterminated quoted string")
                out.append((lineno, raw[i + 1:end]))
                i = end + 1
            else:
                j = i
                while j < n and not raw[j].isspace() and raw[j] not in "{}#":
                    j += 1
                out.append((lineno, raw[i:j]))
                i = j
    return out


def parse_corefile(text: str) -> list[ServerBlock]:
    """Server blocks in order.  Raises :class:`CorefileError` on unbalanced braces."""
    toks = _tokens(text)
    blocks: list[ServerBlock] = []
    i = 0
    while i < len(toks):
        if toks[i][1] == "import":  # a top-level snippet import (AKS's custom/*.server): skipped
            line = toks[i][0]
            while i < len(toks) and toks[i][0] == line:
                i += 1
            continue
        keys: list[str] = []
        while i < len(toks) and toks[i][1] != "{":
            if toks[i][1] == "}":
                raise CorefileError(f"Corefile:{toks[i][0]} - Error during parsing: Unexpected '}}' because no "
                                    "matching opening brace")
            keys.append(toks[i][1])
            i += 1
        if i >= len(toks):
            raise CorefileError(f"Corefile:{toks[-1][0]} - Error during parsing: expected a '{{' after "
                                f"{' '.join(keys)}")
        directives, i = _directives(toks, i + 1)
        blocks.append(ServerBlock(tuple(keys), tuple(directives)))
    return blocks


def _directives(toks: list[tuple[int, str]], i: int) -> tuple[list[Directive], int]:
    """Directives up to the ``}`` closing the server block; returns them and the index after it."""
    out: list[Directive] = []
    while i < len(toks):
        lineno, tok = toks[i]
        if tok == "}":
            return out, i + 1
        if tok == "{":
            raise CorefileError(f"Corefile:{lineno} - Error during parsing: Unexpected '{{'")
        args: list[str] = []
        i += 1
        while i < len(toks) and toks[i][0] == lineno and toks[i][1] not in "{}":
            args.append(toks[i][1])
            i += 1
        block: list[tuple[str, ...]] = []
        if i < len(toks) and toks[i][1] == "{" and toks[i][0] == lineno:
            block, i = _block(toks, i + 1)
        out.append(Directive(tok, tuple(args), tuple(block), lineno))
    raise CorefileError("Corefile: Error during parsing: Unexpected EOF: missing '}'")


def _block(toks: list[tuple[int, str]], i: int) -> tuple[list[tuple[str, ...]], int]:
    lines: dict[int, list[str]] = {}
    while i < len(toks):
        lineno, tok = toks[i]
        if tok == "}":
            return [tuple(v) for v in lines.values()], i + 1
        if tok == "{":
            raise CorefileError(f"Corefile:{lineno} - Error during parsing: Unexpected '{{' (nested blocks)")
        lines.setdefault(lineno, []).append(tok)
        i += 1
    raise CorefileError("Corefile: Error during parsing: Unexpected EOF: missing '}'")


# --- the options the emulation honours --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CorefileOptions:
    domain: str = "cluster.local"
    reverse: bool = True                       # in-addr.arpa / ip6.arpa among the plugin's zones
    pods: str = "disabled"                     # the kubernetes plugin's default
    ttl: int = 5
    endpoint_pod_names: bool = False
    fallthrough: tuple[str, ...] = ()
    forward: tuple[str, ...] = ()              # ``forward .`` targets ("/etc/resolv.conf" or IPs)
    cache: int | None = None
    loadbalance: bool = False
    health: str = ""                           # "" when the plugin is absent
    ready: str = ""
    prometheus: str = ""
    plugins: tuple[str, ...] = ()

    @classmethod
    def from_text(cls, text: str, *, port: int = 53) -> CorefileOptions:
        blocks = parse_corefile(text)
        block = next((b for b in blocks if b.serves(".", port)), None)
        if block is None:
            raise CorefileError(f"Corefile: no server block for the root zone on port {port}")
        return cls.from_block(block)

    @classmethod
    def from_block(cls, block: ServerBlock) -> CorefileOptions:
        fields: dict[str, object] = {"plugins": tuple(d.name for d in block.directives)}
        kube = block.get("kubernetes")
        if kube is not None:
            fields.update(_kubernetes(kube, block))
        fwd = block.get("forward")
        if fwd is not None:
            if not fwd.args[1:]:
                raise CorefileError(f"Corefile:{fwd.line} - Error during parsing: Wrong argument count or "
                                    "unexpected line ending after 'forward'")
            fields["forward"] = tuple(_upstream(a) for a in fwd.args[1:])
        cache = block.get("cache")
        if cache is not None:
            fields["cache"] = _int(cache.args[0], cache, "cache", 0, 2**31 - 1) if cache.args else 3600
        fields["loadbalance"] = block.get("loadbalance") is not None
        for name, default in (("health", ":8080"), ("ready", ":8181"), ("prometheus", "localhost:9153")):
            d = block.get(name)
            if d is not None:
                fields[name] = d.args[0] if d.args else default
        return cls(**fields)  # type: ignore[arg-type]


def _upstream(arg: str) -> str:
    """``dns://10.0.0.2:53`` -> ``10.0.0.2``; a resolv.conf path stays as it is."""
    host = arg.removeprefix("dns://")
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _int(text: str, d: Directive, what: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CorefileError(f"Corefile:{d.line} - Error during parsing: {what}: invalid integer {text!r}") from None
    if not lo <= value <= hi:
        raise CorefileError(f"plugin/{d.name}: {what} must be in range [{lo}, {hi}]: {value}")
    return value


def _kubernetes(d: Directive, block: ServerBlock) -> dict[str, object]:
    zones = [z.rstrip(".").lower() for z in d.args] or [k.split(":")[0].rstrip(".") for k in block.keys]
    forward_zones = [z for z in zones if not z.endswith(_REVERSE_SUFFIXES)]
    # a plugin serving the root zone (``kubernetes`` without zones in a ``.`` block) is taken
    # as cluster.local: the zone answers one domain
    forward_zones = [z for z in forward_zones if z]
    out: dict[str, object] = {"domain": forward_zones[0] if forward_zones else "cluster.local",
                              "reverse": any(z.endswith(_REVERSE_SUFFIXES) for z in zones),
                              "pods": "disabled", "ttl": 5, "endpoint_pod_names": False}
    for line in d.block:
        key, args = line[0], line[1:]
        if key == "pods":
            if len(args) != 1 or args[0] not in _POD_MODES:
                raise CorefileError(f"plugin/kubernetes: wrong value for pods: {' '.join(args)},  must be one of: "
                                    "disabled, verified, insecure")
            out["pods"] = args[0]
        elif key == "ttl":
            if len(args) != 1:
                raise CorefileError("plugin/kubernetes: Wrong argument count or unexpected line ending after 'ttl'")
            out["ttl"] = _int(args[0], d, "ttl", 0, 3600)
        elif key == "endpoint_pod_names":
            out["endpoint_pod_names"] = True
        elif key == "fallthrough":
            out["fallthrough"] = tuple(a.rstrip(".").lower() for a in args)
    return out

"""Container images -> the emulated apps that pods run, and which OS each image has a build for.

Sans-IO: :func:`resolve` turns a pod spec and the node's OS into one :class:`ContainerPlan`
(what to run: app kind, ports it listens on, options) or :class:`ImageError` (why the
container cannot start, with the kubelet's waiting reasons and Events) per container.
:mod:`agents.node.containers` runs the plans.

Image references are parsed as Docker/containerd do (``distribution/reference``'s
``ParseNormalizedNamed``): ``nginx`` is ``docker.io/library/nginx:latest``,
``hashicorp/http-echo:1.0`` is ``docker.io/hashicorp/http-echo:1.0``, a first component with a
``.`` or ``:`` (or ``localhost``) is a registry, ``@sha256:...`` pins a digest.

Known images (:data:`KNOWN_IMAGES`; everything else is *unknown*):

==========================================================  ===============  ==============================
repository (Docker Hub short names accepted)                OS builds        emulated as
==========================================================  ===============  ==============================
``registry.k8s.io/e2e-test-images/agnhost``                 linux, windows   agnhost ``<subcommand>``: ``netexec``
(also ``k8s.gcr.io/...``)                                                    (HTTP ``--http-port`` 8080, UDP
                                                                             ``--udp-port`` 8081), ``serve-hostname``
                                                                             (9376), ``pause``; other real
                                                                             subcommands -> generic responder
``nginx``, ``mcr.microsoft.com/oss/nginx/nginx``            linux            HTTP 80, the nginx welcome page
``hashicorp/http-echo``                                     linux            HTTP ``-listen`` (``:5678``), ``-text``
``busybox``, ``curlimages/curl``, ``curl``                  linux            no server (clients: ``sleep`` etc.)
``registry.k8s.io/coredns/coredns``, ``coredns/coredns``    linux            the CoreDNS role (``coredns``)
``registry.k8s.io/pause``                                   linux, windows   no server (``pause``)
``mcr.microsoft.com/windows/servercore/iis``                windows          HTTP 80, the IIS start page
``mcr.microsoft.com/windows/*`` (nanoserver, servercore)    windows          no server
any other image                                             linux            generic responder on each
                                                                             declared ``containerPort`` + an
                                                                             ``EmulatedImage`` Event
==========================================================  ===============  ==============================

An image with no build for the node's OS fails to pull, as containerd reports it
(``no matching manifest for windows/amd64 in the manifest list entries``): the container waits
with reason ``ErrImagePull``, then ``ImagePullBackOff``; a reference that does not parse waits
with ``InvalidImageName`` (kubelet's ``Failed to apply default image tag ...``).

What a container runs is the Kubernetes rule (``command`` replaces the image's ENTRYPOINT and
drops its CMD; ``args`` replace CMD): agnhost's ENTRYPOINT is ``/agnhost`` with CMD ``pause``,
so ``args: [netexec, --http-port=8080]`` runs netexec.  Processes that exit at once are
modelled, not hidden (``ContainerPlan.lifetime`` / ``exit_code``): busybox with no command runs
``sh`` without a terminal and exits 0 (the familiar CrashLoopBackOff of ``kubectl run
--image=busybox``), http-echo without ``-text`` exits 127, ``sleep 3600`` lives an hour
(program time: not scaled by ``time_scale``).  Shell scripts are not interpreted: any other
command of a client image runs until the container is stopped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AGNHOST_SUBCOMMANDS", "ARCH", "KNOWN_IMAGES", "ContainerPlan", "ContainerPort", "Event",
    "ImageError", "ImageRef", "InvalidImageName", "KnownImage", "OSES", "PULL_BACKOFF_INITIAL",
    "PULL_BACKOFF_MAX", "lookup", "parse_image", "plan_container", "pull_backoff", "resolve",
]

OSES = ("linux", "windows")
ARCH = "amd64"
DEFAULT_DOMAIN = "docker.io"
OFFICIAL_PREFIX = "library/"

# kubelet image pull back-off (pkg/kubelet/kuberuntime: backOffPeriod 10 s, MaxContainerBackOff 300 s)
PULL_BACKOFF_INITIAL = 10.0
PULL_BACKOFF_MAX = 300.0


def pull_backoff(failures: int) -> float:
    """Unscaled seconds before pull attempt ``failures + 1``: 10 s doubling to 300 s."""
    return min(PULL_BACKOFF_INITIAL * 2 ** max(failures - 1, 0), PULL_BACKOFF_MAX)


# --- image references --------------------------------------------------------------------

# distribution/reference's grammar (regexp.go)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_RE = re.compile(
    r"(?:localhost|\[[0-9A-Fa-f:.]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*)(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_HEX64_RE = re.compile(r"[a-f0-9]{64}")
NAME_TOTAL_LENGTH_MAX = 255


class InvalidImageName(ValueError):
    """A reference that does not parse; the message is reference's (``invalid reference format``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    domain: str   # "docker.io", "registry.k8s.io", "mcr.microsoft.com", "localhost:5000"
    path: str     # "library/nginx", "e2e-test-images/agnhost"
    tag: str      # "latest" when neither a tag nor a digest was given
    digest: str   # "sha256:..." or ""

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def familiar(self) -> str:
        """The short name Docker prints (``nginx``, ``hashicorp/http-echo``)."""
        if self.domain != DEFAULT_DOMAIN:
            return self.repository
        return self.path.removeprefix(OFFICIAL_PREFIX)

    def __str__(self) -> str:
        """The fully qualified reference containerd pulls (``docker.io/library/nginx:latest``)."""
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_image(image: str) -> ImageRef:
    """``ParseNormalizedNamed`` + the kubelet's default tag; raises :class:`InvalidImageName`."""
    if not image:
        raise InvalidImageName("invalid reference format")
    if _HEX64_RE.fullmatch(image):
        raise InvalidImageName(f"invalid repository name ({image}), cannot specify 64-byte hexadecimal strings")
    rest, _, digest = image.partition("@")
    if digest and not _DIGEST_RE.fullmatch(digest):
        raise InvalidImageName("invalid reference format")
    name, tag = rest, ""
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidImageName("invalid reference format")
    domain, path = _split_domain(name)
    if path.lower() != path:
        raise InvalidImageName("invalid reference format: repository name must be lowercase")
    if not _NAME_RE.fullmatch(path) or not _DOMAIN_RE.fullmatch(domain):
        raise InvalidImageName("invalid reference format")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidImageName(f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")
    return ImageRef(domain=domain, path=path, tag=tag or ("" if digest else "latest"), digest=digest)


def _split_domain(name: str) -> tuple[str, str]:
    """``splitDockerDomain``: a first component with ``.`` or ``:``, ``localhost``, or any upper
    case is a registry; otherwise Docker Hub (``library/`` for one-component names)."""
    first, slash, remainder = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain = first
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


# --- the table -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownImage:
    repositories: tuple[str, ...]   # normalized; a trailing "/*" matches everything below
    app: str                        # the planner (see _PLANNERS)
    oses: frozenset[str]
    entrypoint: tuple[str, ...] = ()  # the image's ENTRYPOINT and CMD
    cmd: tuple[str, ...] = ()
    note: str = ""


_LINUX = frozenset({"linux"})
_WINDOWS = frozenset({"windows"})
_BOTH = frozenset(OSES)
_CMD_EXE = ("c:\\windows\\system32\\cmd.exe",)

KNOWN_IMAGES: tuple[KnownImage, ...] = (
    KnownImage(repositories=("registry.k8s.io/e2e-test-images/agnhost", "k8s.gcr.io/e2e-test-images/agnhost"),
               app="agnhost", oses=_BOTH, entrypoint=("/agnhost",), cmd=("pause",),
               note="Kubernetes' e2e test image: netexec, serve-hostname, pause"),
    KnownImage(repositories=("docker.io/library/nginx", "mcr.microsoft.com/oss/nginx/nginx"),
               app="nginx", oses=_LINUX, entrypoint=("/docker-entrypoint.sh",), cmd=("nginx", "-g", "daemon off;"),
               note="HTTP 80, the welcome page"),
    KnownImage(repositories=("docker.io/hashicorp/http-echo",), app="http-echo", oses=_LINUX,
               entrypoint=("/http-echo",), note="-text, -listen (:5678)"),
    KnownImage(repositories=("docker.io/library/busybox",), app="client", oses=_LINUX, cmd=("sh",),
               note="no server"),
    KnownImage(repositories=("docker.io/curlimages/curl", "docker.io/library/curl"), app="client", oses=_LINUX,
               entrypoint=("/entrypoint.sh",), cmd=("curl",), note="no server"),
    KnownImage(repositories=("registry.k8s.io/coredns/coredns", "docker.io/coredns/coredns",
                             "k8s.gcr.io/coredns/coredns"),
               app="coredns", oses=_LINUX, entrypoint=("/coredns",), note="the cluster DNS (agents/dns)"),
    KnownImage(repositories=("registry.k8s.io/pause", "k8s.gcr.io/pause", "mcr.microsoft.com/oss/kubernetes/pause"),
               app="pause", oses=_BOTH, entrypoint=("/pause",), note="no server"),
    KnownImage(repositories=("mcr.microsoft.com/windows/servercore/iis",), app="iis", oses=_WINDOWS,
               entrypoint=("C:\\ServiceMonitor.exe", "w3svc"), note="HTTP 80, the IIS start page"),
    KnownImage(repositories=("mcr.microsoft.com/windows/*",), app="client", oses=_WINDOWS, cmd=_CMD_EXE,
               note="nanoserver, servercore, server: no server"),
)

_EXACT: dict[str, KnownImage] = {repo: img for img in KNOWN_IMAGES for repo in img.repositories
                                 if not repo.endswith("/*")}
_PREFIXES: tuple[tuple[str, KnownImage], ...] = tuple(
    (repo[:-1], img) for img in KNOWN_IMAGES for repo in img.repositories if repo.endswith("/*"))


def lookup(ref: ImageRef) -> KnownImage | None:
    """The table entry of an image (exact repository first, then ``/*`` prefixes); None: unknown."""
    found = _EXACT.get(ref.repository)
    if found is not None:
        return found
    for prefix, img in _PREFIXES:
        if ref.repository.startswith(prefix):
            return img
    return None


# --- plans and errors ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """A pod Event the kubelet records (``type`` Normal | Warning)."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str = ""

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerPlan:
    """What one container runs.  ``app`` keys :data:`agents.node.containers.CONTAINER_APPS`:
    ``agnhost-netexec``, ``agnhost-serve-hostname``, ``pause``, ``nginx``, ``http-echo``,
    ``iis``, ``client``, ``coredns``, ``generic``.  ``role`` is ``server``, ``client`` (no
    server), ``coredns``."""

    name: str                          # the container's name
    image: str                         # as written in the spec
    ref: ImageRef
    os: str                            # the node's OS
    app: str
    role: str
    argv: tuple[str, ...]              # command + args after the ENTRYPOINT/CMD rules
    listens: tuple[ContainerPort, ...]  # what the app serves
    ports: tuple[ContainerPort, ...]   # the spec's declared containerPorts
    options: Mapping[str, Any] = field(default_factory=dict)
    lifetime: float | None = None      # seconds until the process exits; None: until stopped
    exit_code: int = 0                 # its exit code when it does
    exit_message: str = ""             # what it prints before exiting (for logs)
    events: tuple[Event, ...] = ()     # extra Events (EmulatedImage)

    @property
    def port_names(self) -> dict[str, int]:
        """Named containerPorts (probes and Services refer to them)."""
        return {p.name: p.port for p in self.ports if p.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageError:
    """A container that cannot start because of its image.  ``reason`` is its first waiting
    reason (``ErrImagePull``, ``InvalidImageName``); ``backoff_reason`` the one after the first
    failed attempt (``ImagePullBackOff``; empty when the kubelet does not retry)."""

    name: str
    image: str
    reason: str
    message: str
    backoff_reason: str = ""
    backoff_message: str = ""
    events: tuple[Event, ...] = ()           # of the first attempt
    backoff_events: tuple[Event, ...] = ()   # of each back-off

    def waiting(self, failures: int = 1) -> tuple[str, str]:
        """``state.waiting`` (reason, message) after ``failures`` failed attempts."""
        if failures > 1 and self.backoff_reason:
            return self.backoff_reason, self.backoff_message
        return self.reason, self.message


def _pull_error(name: str, image: str, ref: ImageRef, node_os: str) -> ImageError:
    """containerd's answer when the manifest list has no entry for the node's platform."""
    detail = (f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
              f"no matching manifest for {node_os}/{ARCH} in the manifest list entries")
    backoff = f'Back-off pulling image "{image}"'
    return ImageError(
        name=name, image=image, reason="ErrImagePull", message=detail,
        backoff_reason="ImagePullBackOff", backoff_message=backoff,
        events=(Event("Normal", "Pulling", f'Pulling image "{image}"'),
                Event("Warning", "Failed", f'Failed to pull image "{image}": {detail}'),
                Event("Warning", "Failed", "Error: ErrImagePull")),
        backoff_events=(Event("Normal", "BackOff", backoff),
                        Event("Warning", "Failed", "Error: ImagePullBackOff")))


def _invalid_name(name: str, image: str, why: str) -> ImageError:
    message = f'Failed to apply default image tag "{image}": couldn\'t parse image reference "{image}": {why}'
    return ImageError(name=name, image=image, reason="InvalidImageName", message=message,
                      events=(Event("Warning", "InspectFailed", message),
                              Event("Warning", "Failed", "Error: InvalidImageName")))


# --- argv and flags ------------------------------------------------------------------------


def _argv(known: KnownImage | None, container: Mapping[str, Any]) -> tuple[str, ...]:
    """Kubernetes' rule (Define a Command and Arguments for a Container)."""
    command = [str(x) for x in container.get("command") or ()]
    args = [str(x) for x in container.get("args") or ()]
    entrypoint, cmd = (known.entrypoint, known.cmd) if known else ((), ())
    if command:
        return (*command, *args)
    return (*entrypoint, *(args or cmd))


def _flags(args: Iterable[str], bools: frozenset[str] = frozenset()) -> tuple[dict[str, str], list[str]]:
    """Go flags, both packages' spellings: ``-name=v``, ``--name=v``, ``--name v``, bool
    ``--name`` / ``--name=false``.  Unknown flags are kept (lenient: real programs may exit)."""
    values: dict[str, str] = {}
    positional: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        i += 1
        if arg == "--":
            positional += items[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if not eq:
            if name in bools:
                value = "true"
            elif i < len(items):
                value = items[i]
                i += 1
        values[name] = value
    return values, positional


def _int_flag(values: Mapping[str, str], name: str, default: int) -> int:
    raw = values.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f'invalid argument "{raw}" for "--{name}" flag: strconv.ParseInt: parsing '
                         f'"{raw}": invalid syntax') from None


def _bool_flag(values: Mapping[str, str], name: str, default: bool) -> bool:
    raw = values.get(name)
    return default if raw is None else raw.lower() in ("1", "t", "true")


def _duration(text: str) -> float | None:
    """``sleep``'s operand (busybox/coreutils: N[smhd], ``infinity``); None: forever."""
    if text == "infinity":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d*)?)([smhd]?)", text)
    if m is None:
        raise ValueError(text)
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _ports(container: Mapping[str, Any]) -> tuple[ContainerPort, ...]:
    out = []
    for p in container.get("ports") or ():
        out.append(ContainerPort(int(p["containerPort"]), str(p.get("protocol") or "TCP"), str(p.get("name") or "")))
    return tuple(out)


def _env(container: Mapping[str, Any], name: str) -> str:
    for item in container.get("env") or ():
        if item.get("name") == name:
            return str(item.get("value") or "")
    return ""


# --- planners: (context) -> fields of the plan ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ctx:
    name: str
    image: str
    ref: ImageRef
    os: str
    known: KnownImage | None
    argv: tuple[str, ...]
    ports: tuple[ContainerPort, ...]
    container: Mapping[str, Any]


def _plan(ctx: _Ctx, app: str, role: str, **fields: Any) -> ContainerPlan:
    return ContainerPlan(name=ctx.name, image=ctx.image, ref=ctx.ref, os=ctx.os, app=app, role=role,
                         argv=ctx.argv, ports=ctx.ports, listens=fields.pop("listens", ()), **fields)


def _exits(ctx: _Ctx, program: str, code: int, message: str) -> ContainerPlan:
    """A process that exits at once (bad flags, nothing to do): nothing is served."""
    return _plan(ctx, "client", "client", lifetime=0.0, exit_code=code, exit_message=message,
                 options={"program": program})


def _generic(ctx: _Ctx, why: str) -> ContainerPlan:
    """Unknown image (or an agnhost subcommand not emulated): a responder on each declared
    TCP/UDP containerPort, and an Event saying so."""
    served = tuple(p for p in ctx.ports if p.protocol in ("TCP", "UDP"))
    if served:
        what = "serving a generic responder on ports " + ", ".join(str(p) for p in served)
    else:
        what = "it declares no TCP or UDP containerPort, so nothing is served"
    return _plan(ctx, "generic", "server", listens=served,
                 events=(Event("Normal", "EmulatedImage", f"{why}: {what}"),))


def _plan_unknown(ctx: _Ctx) -> ContainerPlan:
    return _generic(ctx, f'image "{ctx.image}" is not known to hcinet')


# agnhost's subcommands (test/images/agnhost/agnhost.go); the emulated ones have planners.
AGNHOST_SUBCOMMANDS = frozenset({
    "audit-proxy", "connect", "crd-conversion-webhook", "dns-server-list", "dns-suffix", "eat-memory",
    "entrypoint-tester", "etc-hosts", "fake-gitserver", "grpc-health-checking", "guestbook",
    "inclusterclient", "liveness", "logs-generator", "mounttest", "net", "netexec", "nettest",
    "no-snat-test", "no-snat-test-proxy", "pause", "port-forward-tester", "porter",
    "resource-consumer-controller", "serve-hostname", "tcp-reset", "test-webserver", "webhook",
})


def _plan_agnhost(ctx: _Ctx) -> ContainerPlan:
    argv = ctx.argv
    if not argv or argv[0].rsplit("/", 1)[-1] not in ("agnhost", "agnhost-2"):
        return _plan_client(ctx)  # the image's shell tools (command: [sh, -c, ...])
    sub, rest = (argv[1], argv[2:]) if len(argv) > 1 else ("", ())
    planner = _AGNHOST.get(sub)
    if planner is not None:
        try:
            return planner(ctx, rest)
        except ValueError as exc:
            return _exits(ctx, f"agnhost-{sub}", 1, f"Error: {exc}")
    if sub in AGNHOST_SUBCOMMANDS:
        return _generic(ctx, f'agnhost subcommand "{sub}" is not emulated by hcinet')
    if not sub:
        return _exits(ctx, "agnhost", 0, "agnhost: a tool for testing Kubernetes (usage printed)")
    return _exits(ctx, "agnhost", 1, f'Error: unknown command "{sub}" for "agnhost"')


def _agnhost_netexec(ctx: _Ctx, args: tuple[str, ...]) -> ContainerPlan:
    values, _ = _flags(args)
    http_port = _int_flag(values, "http-port", 8080)
    udp_port = _int_flag(values, "udp-port", 8081)
    listens = [ContainerPort(http_port, "TCP")]
    if udp_port != -1:
        listens.append(ContainerPort(udp_port, "UDP"))
    return _plan(ctx, "agnhost-netexec", "server", listens=tuple(listens),
                 options={"http_port": http_port, "udp_port": udp_port})


def _agnhost_serve_hostname(ctx: _Ctx, args: tuple[str, ...]) -> ContainerPlan:
    values, _ = _flags(args, frozenset({"tcp", "udp", "http", "close"}))
    port = _int_flag(values, "port", 9376)
    tcp, udp = _bool_flag(values, "tcp", False), _bool_flag(values, "udp", False)
    http, close = _bool_flag(values, "http", True), _bool_flag(values, "close", False)
    if http and (tcp or udp):  # serve_hostname.go: log.Fatalf, exit 1
        return _exits(ctx, "agnhost-serve-hostname", 1, "Can't server TCP/UDP mode and HTTP mode at the same time")
    listens = [ContainerPort(port, proto) for proto, on in (("TCP", http or tcp), ("UDP", udp)) if on]
    return _plan(ctx, "agnhost-serve-hostname", "server", listens=tuple(listens),
                 options={"port": port, "tcp": tcp, "udp": udp, "http": http, "close": close})


def _agnhost_pause(ctx: _Ctx, args: tuple[str, ...]) -> ContainerPlan:
    return _plan(ctx, "pause", "client")


_AGNHOST: dict[str, Callable[[_Ctx, tuple[str, ...]], ContainerPlan]] = {
    "netexec": _agnhost_netexec,
    "serve-hostname": _agnhost_serve_hostname,
    "pause": _agnhost_pause,
}


def _plan_nginx(ctx: _Ctx) -> ContainerPlan:
    return _plan(ctx, "nginx", "server", listens=(ContainerPort(80, "TCP"),), options={"port": 80})


def _plan_iis(ctx: _Ctx) -> ContainerPlan:
    return _plan(ctx, "iis", "server", listens=(ContainerPort(80, "TCP"),), options={"port": 80})


def _plan_http_echo(ctx: _Ctx) -> ContainerPlan:
    values, positional = _flags(ctx.argv[1:], frozenset({"version"}))
    text = values.get("text") or _env(ctx.container, "ECHO_TEXT")
    if not text:  # main.go: exit 127
        return _exits(ctx, "http-echo", 127, "Missing -text option OR ENV var TEXT is empty!")
    if positional:
        return _exits(ctx, "http-echo", 127, "Too many arguments!")
    host, _, port_text = values.get("listen", ":5678").rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        return _exits(ctx, "http-echo", 1, f"[ERR] server exited with: listen tcp: address {values['listen']}: "
                                            "missing port in address")
    return _plan(ctx, "http-echo", "server", listens=(ContainerPort(port, "TCP"),),
                 options={"text": text, "host": host.strip("[]") or "0.0.0.0", "port": port})


def _plan_coredns(ctx: _Ctx) -> ContainerPlan:
    """The DNS itself is agents/dns; the plan lists the ports of the stock Deployment
    (53/UDP, 53/TCP, metrics 9153) and the health (8080) and ready (8181) plugins."""
    listens = (ContainerPort(53, "UDP"), ContainerPort(53, "TCP"), ContainerPort(9153, "TCP"),
               ContainerPort(8080, "TCP"), ContainerPort(8181, "TCP"))
    values, _ = _flags(ctx.argv[1:])
    return _plan(ctx, "coredns", "coredns", listens=listens, options={"conf": values.get("conf", "Corefile")})


def _plan_pause(ctx: _Ctx) -> ContainerPlan:
    return _plan(ctx, "pause", "client")


_SHELLS = frozenset({"sh", "ash", "bash", "cmd", "cmd.exe", "powershell", "powershell.exe", "pwsh"})


def _plan_client(ctx: _Ctx) -> ContainerPlan:
    """No server.  A bare shell exits 0 at once (no terminal); ``curl`` with no URL exits 2;
    ``sleep N`` (also as ``sh -c "sleep N"``) lives N seconds; anything else until stopped."""
    argv = [a.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].lower() if i == 0 else a for i, a in enumerate(ctx.argv)]
    if argv and argv[0] == "entrypoint.sh":
        argv = argv[1:]
    if not argv or (len(argv) == 1 and argv[0] in _SHELLS):
        return _exits(ctx, "client", 0, "")
    if argv == ["curl"]:
        return _exits(ctx, "client", 2, "curl: try 'curl --help' or 'curl --manual' for more information")
    words = argv
    if len(argv) == 3 and argv[0] in _SHELLS and argv[1] in ("-c", "/c"):
        words = argv[2].split()
    if len(words) == 2 and words[0] == "sleep":
        try:
            return _plan(ctx, "client", "client", lifetime=_duration(words[1]))
        except ValueError:
            return _exits(ctx, "client", 1, f"sleep: invalid number '{words[1]}'")
    return _plan(ctx, "client", "client")


_PLANNERS: dict[str, Callable[[_Ctx], ContainerPlan]] = {
    "agnhost": _plan_agnhost,
    "nginx": _plan_nginx,
    "http-echo": _plan_http_echo,
    "client": _plan_client,
    "coredns": _plan_coredns,
    "pause": _plan_pause,
    "iis": _plan_iis,
}


# --- resolve -------------------------------------------------------------------------------


def plan_container(container: Mapping[str, Any], node_os: str) -> ContainerPlan | ImageError:
    """One container of a pod spec on a node of ``node_os`` (``linux`` | ``windows``)."""
    if node_os not in OSES:
        raise ValueError(f"node_os: expected one of {', '.join(OSES)}, got {node_os!r}")
    name, image = str(container.get("name") or ""), str(container.get("image") or "")
    try:
        ref = parse_image(image)
    except InvalidImageName as exc:
        return _invalid_name(name, image, str(exc))
    known = lookup(ref)
    oses = known.oses if known is not None else _LINUX  # unknown images count as Linux
    if node_os not in oses:
        return _pull_error(name, image, ref, node_os)
    ctx = _Ctx(name, image, ref, node_os, known, _argv(known, container), _ports(container), container)
    planner = _PLANNERS[known.app] if known is not None else _plan_unknown
    return planner(ctx)


def resolve(pod_spec: Mapping[str, Any], node_os: str) -> list[ContainerPlan | ImageError]:
    """Every entry of ``spec.containers``, in order (init containers are the kubelet's to run
    first through :func:`plan_container`)."""
    return [plan_container(c, node_os) for c in pod_spec.get("containers") or ()]

"""Kubernetes REST paths → store operations, sans-IO.

:meth:`Router.handle` takes one request (method, path, query, body, content type) and returns a
:class:`Result`: a status code and a JSON-able body (a Kubernetes object, an ``XList``, or a
``Status`` for errors), or a started :class:`Watch` whose event lines the I/O layer streams
(HTTP chunked over the emulated network; the management verb ``api`` returns what is already
there).  The same router serves both paths, so a kubelet and the CLI see the same answers.

Paths (docs/contracts-control-plane.md "API server"):
``/api/v1/{nodes,namespaces}[/NAME[/status]]``, ``/api/v1/namespaces/NS/{pods,services,...}[/NAME[/status]]``,
``/apis/GROUP/VERSION/namespaces/NS/RESOURCE[/NAME[/status]]``, all-namespaces lists such as
``/api/v1/pods``, the old ``/api/v1/watch/...`` prefix, ``?watch=1&resourceVersion=N``,
``?labelSelector=``, ``?fieldSelector=``; plus ``/healthz``, ``/readyz``, ``/livez``, ``/version``,
``/api``, ``/apis`` and the group-version discovery documents.
"""

from __future__ import annotations

import json
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from . import errors, validation
from .errors import StatusError
from .resources import BY_PATH, GROUP_VERSIONS, RESOURCES, Resource, resource
from .selectors import parse_field_selector, parse_label_selector
from .store import Event, Obj, Store, Subscription

log = logging.getLogger("hcinet.apiserver.rest")

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = frozenset(DEFAULT_NAMESPACES)
KUBE_VERSION = {"major": "1", "minor": "26", "gitVersion": "v1.26.6", "platform": "linux/amd64",
                "goVersion": "go1.20.5", "compiler": "gc"}

# generateName suffixes: k8s.io/apimachinery/pkg/util/rand (no vowels, no confusable digits)
_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(eq=False)
class Watch:
    """A started watch: ``initial`` lines first, then live lines as the store commits them.

    The I/O layer sets ``notify`` (called when a line is queued) and drains :meth:`take`.
    ``finished`` means no line will follow the queued ones (e.g. a 410 ERROR event).
    """

    initial: list[bytes]
    sub: Subscription | None = None
    finished: bool = False
    notify: Callable[[], None] | None = None
    queued: deque[bytes] = field(default_factory=deque)
    peak: int = 0
    kind: str = ""  # of the watched resource (BOOKMARK objects carry it)
    api_version: str = ""

    def __post_init__(self) -> None:
        self.queued.extend(self.initial)
        self.peak = len(self.queued)

    def on_event(self, ev: Event) -> None:
        self.queued.append(ev.line())
        if len(self.queued) > self.peak:
            self.peak = len(self.queued)
        if self.notify is not None:
            self.notify()

    def take(self) -> list[bytes]:
        out = list(self.queued)
        self.queued.clear()
        return out

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        self.finished = True


@dataclass
class Result:
    status: int
    body: Any = None  # dict (JSON) or str (text/plain, e.g. /healthz)
    watch: Watch | None = None
    wrote: bool = False  # the request changed the store (the caller flushes before replying)


@dataclass(frozen=True, slots=True)
class Target:
    res: Resource
    namespace: str | None  # None: cluster-scoped, or a list across all namespaces
    name: str | None
    subresource: str | None
    watch_prefix: bool = False


def error_line(err: StatusError) -> bytes:
    return json.dumps({"type": "ERROR", "object": err.status()}, separators=(",", ":")).encode() + b"\n"


def _query(query: Any) -> dict[str, str]:
    if query is None:
        return {}
    if isinstance(query, str | bytes):
        text = query.decode() if isinstance(query, bytes) else query
        return {k: v[-1] for k, v in parse_qs(text.lstrip("?"), keep_blank_values=True).items()}
    if isinstance(query, Mapping):
        return {str(k): str(v[-1] if isinstance(v, list | tuple) and v else v) for k, v in query.items()}
    raise errors.bad_request("query: expected a query string or a map")


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


class Router:
    """Kubernetes REST semantics over a :class:`~.store.Store`."""

    def __init__(self, store: Store, *, rng: random.Random | None = None) -> None:
        self.store = store
        store.validator = validation.validate
        self.rng = rng or random.Random()
        self.defaulters: dict[str, list[Callable[[Obj], None]]] = {
            "Namespace": [_default_namespace], "Service": [_default_service], "Pod": [_default_pod]}
        self.requests = 0
        self.errors = 0

    # -- bootstrap --

    def bootstrap(self) -> None:
        """The namespaces every cluster has (created at first start only)."""
        with self.store.batch():
            for ns in DEFAULT_NAMESPACES:
                if not self.store.exists("namespaces", None, ns):
                    self.create(resource("namespaces"), None, {"metadata": {"name": ns}})

    # -- entry point --

    def handle(self, method: str, path: str, query: Any = None, body: Any = None,
               content_type: str | None = None) -> Result:
        self.requests += 1
        try:
            result = self._handle(method.upper(), path, _query(query), body, content_type)
        except StatusError as exc:
            self.errors += 1
            return Result(exc.code, exc.status())
        except Exception as exc:  # a bug of ours must not take the server down: 500, logged
            self.errors += 1
            log.exception("%s %s failed", method, path)
            err = StatusError(500, "InternalError", f"Internal error occurred: {type(exc).__name__}: {exc}")
            return Result(500, err.status())
        return result

    def _handle(self, method: str, path: str, query: dict[str, str], body: Any,
                content_type: str | None) -> Result:
        path = path.split("?", 1)[0]
        special = self._special(method, path)
        if special is not None:
            return special
        t = self._parse(path)
        if t.watch_prefix:
            query = {**query, "watch": "true"}
        if method == "GET":
            if t.name is not None and t.watch_prefix:
                query["fieldSelector"] = f"metadata.name={t.name}"
                return self.watch(t.res, t.namespace, query)
            if t.name is not None:
                if t.subresource not in (None, "status"):
                    raise errors.path_not_found()
                return Result(200, self.store.get(t.res, t.namespace, t.name))
            if _truthy(query.get("watch")):
                return self.watch(t.res, t.namespace, query)
            return Result(200, self.list(t.res, t.namespace, query))
        if method == "POST":
            if t.name is not None:
                raise errors.method_not_allowed(method)
            if t.res.namespaced and t.namespace is None:
                raise errors.method_not_allowed(method)
            return Result(201, self.create(t.res, t.namespace, self._body(body)), wrote=True)
        if method == "PUT":
            if t.name is None:
                raise errors.method_not_allowed(method)
            return self._wrote(self.update(t, self._body(body)))
        if method == "PATCH":
            if t.name is None:
                raise errors.method_not_allowed(method)
            return self._wrote(self.patch(t, self._body(body), content_type))
        if method == "DELETE":
            if t.name is None:
                return Result(200, self.delete_collection(t.res, t.namespace, query), wrote=True)
            opts = self._body(body) if body not in (None, b"", "") else {}
            pre = opts.get("preconditions") if isinstance(opts, dict) else None
            return Result(200, self.delete(t.res, t.namespace, t.name, pre), wrote=True)
        raise errors.method_not_allowed(method)

    def _wrote(self, obj: Obj) -> Result:
        return Result(200, obj, wrote=True)

    @staticmethod
    def _body(body: Any) -> Any:
        if isinstance(body, bytes | bytearray | str):
            try:
                return json.loads(body)
            except ValueError as exc:
                raise errors.bad_request(f"couldn't get version/kind; json parse error: {exc}") from None
        if body is None:
            raise errors.bad_request("the request body is empty: expected a JSON object")
        return json.loads(json.dumps(body))  # a private copy of what the caller passed

    # -- paths --

    def _special(self, method: str, path: str) -> Result | None:
        path = path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return Result(200, "ok")
        if method != "GET":
            return None
        if path == "/version":
            return Result(200, dict(KUBE_VERSION))
        if path == "/api":
            return Result(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                       "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                      for g, v in sorted(GROUP_VERSIONS.items())]
            return Result(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for group, version in [("", "v1"), *GROUP_VERSIONS.items()]:
            gv = f"{group}/{version}" if group else version
            if path == ("/api/v1" if not group else f"/apis/{gv}"):
                return Result(200, _discovery(group, version))
        return None

    def _parse(self, path: str) -> Target:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) >= 2 and parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.path_not_found()
        watch_prefix = bool(rest) and rest[0] == "watch"
        if watch_prefix:
            rest = rest[1:]
        if not rest or not all(rest):
            raise errors.path_not_found()

        def lookup(plural: str) -> Resource:
            res = BY_PATH.get((group, version, plural))
            if res is None:
                raise errors.path_not_found()
            return res

        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            # /namespaces/NS/RESOURCE[/NAME[/SUB]]
            res = lookup(rest[2])
            if not res.namespaced or len(rest) > 5:
                raise errors.path_not_found()
            return Target(res, rest[1], rest[3] if len(rest) > 3 else None, rest[4] if len(rest) > 4 else None,
                          watch_prefix)
        res = lookup(rest[0])
        if len(rest) > 3:
            raise errors.path_not_found()
        if res.namespaced and len(rest) > 1:
            raise errors.path_not_found()  # a namespaced resource needs /namespaces/NS/ for one object
        return Target(res, None, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None,
                      watch_prefix)

    # -- operations --

    def list(self, res: Resource, ns: str | None, query: Mapping[str, str]) -> Obj:
        labels, fields = self._selectors(query)
        items, rv = self.store.list(res, ns, labels=labels, fields=fields)
        return {"kind": res.list_kind, "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(rv)}, "items": items}

    def _selectors(self, query: Mapping[str, str]) -> tuple[Any, Any]:
        try:
            return (parse_label_selector(query.get("labelSelector")),
                    parse_field_selector(query.get("fieldSelector")))
        except ValueError as exc:
            raise errors.bad_request(str(exc)) from None

    def watch(self, res: Resource, ns: str | None, query: Mapping[str, str]) -> Result:
        labels, fields = self._selectors(query)
        since = self._since(query.get("resourceVersion"))
        w = Watch([], kind=res.kind, api_version=res.api_version)
        try:
            initial, sub = self.store.watch(res, ns, since, w.on_event, labels=labels, fields=fields)
        except StatusError as exc:
            # Kubernetes answers 200 and sends the error as the watch's one ERROR event.
            return Result(200, None, Watch([error_line(exc)], finished=True))
        w.sub = sub
        w.queued.extend(ev.line() for ev in initial)
        w.peak = max(w.peak, len(w.queued))
        return Result(200, None, w)

    @staticmethod
    def _since(text: str | None) -> int | None:
        if text in (None, "", "0"):
            return None
        try:
            value = int(text or "")
        except ValueError:
            raise errors.bad_request(f'resourceVersion: Invalid value: "{text}": must be an integer') from None
        if value < 0:
            raise errors.bad_request(f'resourceVersion: Invalid value: "{text}": must be non-negative')
        return value

    def create(self, res: Resource, ns: str | None, obj: Any) -> Obj:
        validation.check_type(res, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata: expected an object")
        if res.namespaced:
            if meta.get("namespace") and ns is not None and meta["namespace"] != ns:
                raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                         "sent on the request")
            meta["namespace"] = ns
            if ns and not self.store.exists("namespaces", None, ns):
                raise errors.not_found(resource("namespaces"), ns)
        if not meta.get("name") and isinstance(meta.get("generateName"), str) and meta["generateName"]:
            meta["name"] = meta["generateName"] + "".join(self.rng.choice(_ALPHANUMS) for _ in range(5))
        for fn in self.defaulters.get(res.kind, ()):
            fn(obj)
        return self.store.create(res, obj)

    def update(self, t: Target, obj: Any) -> Obj:
        validation.check_type(t.res, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata: expected an object")
        if meta.get("name") != t.name:
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not match the name "
                                     f"on the URL ({t.name})")
        if t.res.namespaced:
            if meta.get("namespace") not in (None, "", t.namespace):
                raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                         "sent on the request")
            meta["namespace"] = t.namespace
        if t.subresource not in (None, "status") or (t.subresource == "status" and not t.res.has_status):
            raise errors.path_not_found()
        return self.store.update(t.res, obj, subresource=t.subresource)

    def patch(self, t: Target, patch: Any, content_type: str | None) -> Obj:
        ctype = (content_type or "application/merge-patch+json").split(";", 1)[0].strip()
        kinds = {"application/merge-patch+json": "merge", "application/strategic-merge-patch+json": "merge",
                 "application/json-patch+json": "json", "application/json": "merge"}
        if ctype not in kinds:
            raise errors.unsupported_media_type(ctype)
        if t.subresource not in (None, "status") or (t.subresource == "status" and not t.res.has_status):
            raise errors.path_not_found()
        return self.store.patch(t.res, t.namespace, t.name or "", patch, patch_type=kinds[ctype],
                                subresource=t.subresource)

    def delete(self, res: Resource, ns: str | None, name: str, preconditions: Any = None) -> Obj:
        if res.plural == "namespaces":
            if name in PROTECTED_NAMESPACES:
                raise errors.forbidden(res, name, "this namespace may not be deleted")
            with self.store.batch():  # the namespace controller's work, done at once
                self.store.get(res, None, name)  # 404 before anything else
                for other in RESOURCES:
                    if other.namespaced:
                        for item in self.store.list(other, name)[0]:
                            self.store.delete(other, name, item["metadata"]["name"])
                return self.store.delete(res, None, name, preconditions=preconditions)
        return self.store.delete(res, ns, name, preconditions=preconditions)

    def delete_collection(self, res: Resource, ns: str | None, query: Mapping[str, str]) -> Obj:
        labels, fields = self._selectors(query)
        with self.store.batch():
            items, _ = self.store.list(res, ns, labels=labels, fields=fields)
            deleted = [self.delete(res, item["metadata"].get("namespace"), item["metadata"]["name"])
                       for item in items]
        return {"kind": res.list_kind, "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted}


# --- defaulting (the registry strategies' PrepareForCreate and the defaulters) ---------------


def _default_namespace(obj: Obj) -> None:
    if obj.get("spec") is None:
        obj["spec"] = {}
    if isinstance(obj["spec"], dict):  # anything else is validation's to refuse
        obj["spec"].setdefault("finalizers", ["kubernetes"])
    obj["status"] = {"phase": "Active"}


def _default_service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "targetPort" not in port and "port" in port:
                    port["targetPort"] = port["port"]


def _default_pod(obj: Obj) -> None:
    obj["status"] = {"phase": "Pending"}


def _discovery(group: str, version: str) -> Obj:
    gv = f"{group}/{version}" if group else version
    items = []
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        items.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                      "kind": r.kind, "verbs": verbs})
        if r.has_status:
            items.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                          "kind": r.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": items}

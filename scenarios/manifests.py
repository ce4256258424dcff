"""kubectl's manifest verbs on a live cluster: ``apply``, ``delete``, ``get``, ``describe``.

Everything here talks to the API server through one callable, :data:`Api`
(``api(method, path, query, body) -> (status, body)``): the CLI passes the API server VM's
management verb ``api``; tests pass the real :class:`agents.apiserver.rest.Router` over a
temporary store.  Output follows kubectl 1.26 (the version the API server reports):

* ``apply`` is kubectl's *client-side* apply: the object is created if absent; otherwise the
  last applied configuration (the ``kubectl.kubernetes.io/last-applied-configuration``
  annotation), the new manifest and the live object are merged three ways — fields the manifest
  sets win, fields removed from the manifest since the last apply are removed, fields nobody
  applied (server defaults, allocations, status) stay — and the result is PUT with the live
  ``metadata.resourceVersion`` (a 409 re-reads and retries, as kubectl's patch retry does).
  Lists with a strategic-merge key (containers by name, ports, env, volumes) merge item by item.
* Errors are kubectl's lines, one per object; the other objects go on; exit status 1.
* ``get`` prints kubectl's columns per kind (the printers of ``pkg/printers/internalversion``)
  through a port of Go's ``text/tabwriter``, so columns align as kubectl aligns them.
* ``describe`` prints kubectl's describers for pods (full), nodes, services and deployments
  (basic), Events included.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from agents.apiserver.resources import BY_PLURAL, CALICO_GROUP, RESOURCES, Resource
from scenarios import aks, cli

Api = Callable[[str, str, "Mapping[str, str] | None", Any], Awaitable[tuple[int, Any]]]
Obj = dict[str, Any]

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
EXTENSIONS = (".json", ".yaml", ".yml")
BY_GVK: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in RESOURCES}
CONFLICT_RETRIES = 5  # kubectl apply's maxPatchRetry


@dataclass
class Report:
    """What a verb printed: stdout lines, stderr lines, and whether it failed (exit 1)."""

    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    failed: bool = False

    def error(self, line: str) -> None:
        self.err.append(line)
        self.failed = True

    def extend(self, other: Report) -> None:
        self.out += other.out
        self.err += other.err
        self.failed = self.failed or other.failed

    def emit(self) -> int:
        for line in self.out:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        for line in self.err:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return 1 if self.failed else 0


# --- names kubectl prints -----------------------------------------------------------------------

def kind_ref(res: Resource) -> str:
    """``deployment.apps``, ``service``: how kubectl names a kind in ``created`` lines."""
    return res.kind.lower() + (f".{res.group}" if res.group else "")


def obj_ref(res: Resource, name: str) -> str:
    return f"{kind_ref(res)}/{name}"


def object_path(res: Resource, namespace: str | None, name: str | None = None) -> str:
    base = "/api/v1" if not res.group else f"/apis/{res.api_version}"
    if res.namespaced and namespace is not None:
        base += f"/namespaces/{namespace}"
    return f"{base}/{res.plural}" + (f"/{name}" if name else "")


def go_json(value: Any) -> str:
    """Go's ``encoding/json`` of an unstructured object: sorted keys, compact, HTML-escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def status_error(status: int, body: Any, verb: str = "", source: str = "") -> str:
    """A refused request as kubectl prints it (``cmdutil.CheckErr``)."""
    if not isinstance(body, dict) or body.get("kind") != "Status":
        return f"Error from server: {body if body not in (None, '') else f'status {status}'}"
    reason, message = str(body.get("reason") or ""), str(body.get("message") or "")
    details: dict[str, Any] = body["details"] if isinstance(body.get("details"), dict) else {}
    if reason == "Invalid" and (details.get("kind") or details.get("name")):
        # kubectl rewords Invalid from the details: The Deployment "web" is invalid: spec.selector: Required value
        causes = [f"{c['field']}: {c.get('message', '')}" if c.get("field") else str(c.get("message", ""))
                  for c in details.get("causes") or [] if isinstance(c, dict)]
        head = f'The {details.get("kind", "")} "{details.get("name", "")}" is invalid'
        if not causes:
            return head
        return f"{head}: {causes[0] if len(causes) == 1 else '[' + ', '.join(causes) + ']'}"
    if verb and source:
        message = f'error when {verb} "{source}": {message}'
    return f"Error from server ({reason or status}): {message}"


# --- reading manifests --------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """YAML as kubectl reads it (sigs.k8s.io/yaml): timestamps stay strings."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rules if tag != "tag:yaml.org,2002:timestamp"]
    for ch, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"yaml: line {mark.line + 1}: {problem}" if mark is not None else f"yaml: {problem}"


def parse_documents(text: str, source: str) -> tuple[list[Any], str | None]:
    """The non-empty documents of a YAML/JSON stream; at a syntax error, those before it and
    kubectl's error line."""
    docs: list[Any] = []
    try:
        for doc in yaml.load_all(text, Loader=_Loader):
            if doc is not None:
                docs.append(doc)
    except yaml.YAMLError as exc:
        return docs, f"error: error parsing {source}: error converting YAML to JSON: {_yaml_problem(exc)}"
    return docs, None


def expand_paths(paths: Sequence[str], recursive: bool) -> tuple[list[str], list[str]]:
    """``-f`` arguments → files in kubectl's order (a directory: its ``*.json|yaml|yml`` files in
    lexical order, sub-directories only with ``-R``), and error lines for paths that fail."""
    files: list[str] = []
    errors: list[str] = []
    for p in paths:
        if p == "-":
            files.append("-")
            continue
        path = Path(p)
        if not path.exists():
            errors.append(f'error: the path "{p}" does not exist')
        elif path.is_dir():
            found = _walk(path, recursive)
            if not found:
                errors.append(f"error: error reading [{p}]: recognized file extensions are "
                              f"[{' '.join(EXTENSIONS)}]")
            files += found
        else:
            files.append(p)  # a file named explicitly is read whatever its extension
    return files, errors


def _walk(path: Path, recursive: bool) -> list[str]:
    out: list[str] = []
    for entry in sorted(path.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            if recursive:
                out += _walk(entry, recursive)
        elif entry.suffix in EXTENSIONS:
            out.append(str(entry))
    return out


@dataclass(frozen=True, slots=True)
class Document:
    source: str  # the file as kubectl names it ("STDIN" for -)
    obj: Any


def read_sources(paths: Sequence[str], recursive: bool, stdin: Callable[[], str] | None = None
                 ) -> tuple[list[Document], list[str]]:
    """Every document of every ``-f`` source, ``List`` documents expanded, plus error lines."""
    files, errors = expand_paths(paths, recursive)
    docs: list[Document] = []
    for f in files:
        source = "STDIN" if f == "-" else f
        try:
            text = (stdin or sys.stdin.read)() if f == "-" else Path(f).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"error: error reading {source}: {exc}")
            continue
        parsed, err = parse_documents(text, source)
        docs += [Document(source, item) for doc in parsed for item in expand_list(doc)]
        if err:
            errors.append(err)
    return docs, errors


def expand_list(doc: Any) -> list[Any]:
    """``kind: List`` (and typed lists such as ``DeploymentList``) → their items, recursively."""
    if not (isinstance(doc, dict) and isinstance(doc.get("kind"), str) and doc["kind"].endswith("List")
            and isinstance(doc.get("items"), list)):
        return [doc]
    item_kind = doc["kind"][:-len("List")]
    out: list[Any] = []
    for item in doc["items"]:
        if isinstance(item, dict) and item_kind and not item.get("kind"):
            item = {"apiVersion": doc.get("apiVersion"), "kind": item_kind, **item}
        out += expand_list(item)
    return out


_GO_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "bool"}


@dataclass(frozen=True, slots=True)
class Manifest:
    """One object of a manifest, resolved: its resource, namespace and name."""

    source: str
    res: Resource
    namespace: str | None
    name: str
    obj: Obj  # as written, with metadata.namespace filled in for namespaced kinds

    @property
    def ref(self) -> str:
        return obj_ref(self.res, self.name)


def resolve(doc: Document, namespace_flag: str | None, *, for_apply: bool = True) -> Manifest | str:
    """A document → a :class:`Manifest`, or kubectl's error line for it."""
    obj, source = doc.obj, doc.source
    if not isinstance(obj, dict):
        kind = _GO_TYPES.get(type(obj), type(obj).__name__)
        return f'error: unable to decode "{source}": json: cannot unmarshal {kind} into Go value of type ' \
               "map[string]interface {}"
    if not obj.get("kind"):
        return f"error: unable to decode \"{source}\": Object 'Kind' is missing in '{go_json(obj)}'"
    if not obj.get("apiVersion"):
        return f"error: unable to decode \"{source}\": Object 'apiVersion' is missing in '{go_json(obj)}'"
    meta: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    name, given_ns = meta.get("name"), meta.get("namespace")
    res = BY_GVK.get((str(obj["apiVersion"]), str(obj["kind"])))
    if res is None:
        return (f'error: resource mapping not found for name: "{name or ""}" namespace: "{given_ns or ""}" '
                f'from "{source}": no matches for kind "{obj["kind"]}" in version "{obj["apiVersion"]}"')
    ns: str | None = None
    if res.namespaced:
        if given_ns and namespace_flag and given_ns != namespace_flag:
            return (f'error: the namespace from the provided object "{given_ns}" does not match the namespace '
                    f'"{namespace_flag}". You must pass \'--namespace={given_ns}\' to perform this operation.')
        ns = str(given_ns or namespace_flag or "default")
    if not isinstance(name, str) or not name:
        if for_apply and meta.get("generateName"):
            return f'error: from {meta["generateName"]}: cannot use generate name with apply'
        return (f'error: error when retrieving current configuration of: Resource: "{res.api_version}, '
                f'Resource={res.plural}", GroupVersionKind: "{res.api_version}, Kind={res.kind}" Name: "", '
                f'Namespace: "{ns or ""}" from server for: "{source}": resource name may not be empty')
    obj = copy.deepcopy(obj)
    if ns is not None:
        obj.setdefault("metadata", {})["namespace"] = ns
    else:  # the server drops it from cluster-scoped objects: so must apply's comparison
        obj["metadata"].pop("namespace", None)
    return Manifest(source, res, ns, name, obj)


def load(paths: Sequence[str], recursive: bool, namespace_flag: str | None, *, for_apply: bool = True,
         stdin: Callable[[], str] | None = None) -> tuple[list[Manifest], list[str]]:
    """``-f`` sources → manifests in order, and one error line per source or object that failed."""
    docs, errors = read_sources(paths, recursive, stdin)
    manifests: list[Manifest] = []
    for doc in docs:
        m = resolve(doc, namespace_flag, for_apply=for_apply)
        if isinstance(m, str):
            errors.append(m)
        else:
            manifests.append(m)
    return manifests, errors


# --- three-way merge (kubectl's client-side apply) ----------------------------------------------

# Lists that strategic merge patch merges item by item (the patchMergeKey of k8s.io/api types).
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
    "env": ("name",), "volumes": ("name",), "volumeMounts": ("mountPath",),
    "imagePullSecrets": ("name",), "hostAliases": ("ip",),
    "ports": ("containerPort", "port"),  # container ports / Service ports
}
# metadata the server owns: never part of what apply compares or sends as a change
SERVER_META = ("creationTimestamp", "uid", "generation", "managedFields", "selfLink")


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _merge_key(name: str, items: Iterable[Any]) -> str | None:
    keys = MERGE_KEYS.get(name)
    if not keys:
        return None
    items = list(items)
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    return next((k for k in keys if all(k in i for i in items)), None)


def three_way(original: Any, modified: Any, current: Any, name: str = "") -> Any:
    """The live object after applying ``modified`` over ``current`` given the previous apply
    ``original``: what the manifest sets wins, what it dropped since ``original`` goes, what
    nobody applied stays.  A ``null`` in the manifest deletes the field (merge-patch)."""
    if isinstance(modified, dict):
        if not isinstance(current, dict):
            return _strip_nulls(modified)
        orig = original if isinstance(original, dict) else {}
        out = dict(current)
        for k, v in modified.items():
            if v is None:
                out.pop(k, None)
            elif k in current:
                out[k] = three_way(orig.get(k), v, current[k], k)
            else:
                out[k] = _strip_nulls(v)
        for k in orig:
            if k not in modified:
                out.pop(k, None)
        return out
    if isinstance(modified, list) and isinstance(current, list):
        key = _merge_key(name, [*modified, *current])
        if key is not None:
            return _merge_list(original if isinstance(original, list) else [], modified, current, key)
    return _strip_nulls(modified)


def _merge_list(original: list[Any], modified: list[Any], current: list[Any], key: str) -> list[Any]:
    cur = {i[key]: i for i in current}
    orig = {i[key]: i for i in original if isinstance(i, dict) and key in i}
    wanted = {i[key] for i in modified}
    out = [three_way(orig.get(i[key]), i, cur[i[key]]) if i[key] in cur else _strip_nulls(i) for i in modified]
    # items nobody applied (added by someone else) stay; items dropped from the manifest go
    out += [i for i in current if i[key] not in wanted and i[key] not in orig]
    return out


def _for_merge(obj: Obj | None, res: Resource) -> Obj | None:
    """What apply compares: no server-owned metadata, no status (it has its own subresource)."""
    if obj is None:
        return None
    obj = copy.deepcopy(obj)
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for k in SERVER_META:
            meta.pop(k, None)
    if res.has_status:
        obj.pop("status", None)
    return obj


def with_last_applied(obj: Obj) -> Obj:
    """``obj`` carrying its own serialization as the last-applied annotation
    (kubectl's ``GetModifiedConfiguration``: ``annotations: {}`` appears in it when empty)."""
    obj = copy.deepcopy(obj)
    meta = obj.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(LAST_APPLIED, None)
    meta["annotations"] = annotations
    text = go_json(obj) + "\n"
    meta["annotations"] = {**annotations, LAST_APPLIED: text}
    return obj


def last_applied(live: Obj) -> Obj | None:
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def merged_object(m: Manifest, live: Obj) -> Obj:
    """The object apply PUTs over ``live`` (which it equals when nothing changes)."""
    modified = _for_merge(with_last_applied(m.obj), m.res)
    original = _for_merge(last_applied(live), m.res)
    out: Obj = three_way(original, modified, live)
    return out


# --- apply / delete -----------------------------------------------------------------------------

async def apply_one(api: Api, m: Manifest) -> tuple[str, str | None]:
    """(``created|configured|unchanged``, None) or ("", error line)."""
    path = object_path(m.res, m.namespace, m.name)
    for _ in range(CONFLICT_RETRIES):
        status, live = await api("GET", path, None, None)
        if status == 404:
            status, body = await api("POST", object_path(m.res, m.namespace), None, with_last_applied(m.obj))
            if status == 409 and isinstance(body, dict) and body.get("reason") == "AlreadyExists":
                continue  # created meanwhile: apply over it
            if status >= 400:
                return "", status_error(status, body, "creating", m.source)
            return "created", None
        if status >= 400:
            return "", status_error(status, live, f"retrieving current configuration of {m.ref}", m.source)
        merged = merged_object(m, live)
        if merged == live:
            return "unchanged", None
        merged.setdefault("metadata", {})["resourceVersion"] = live["metadata"].get("resourceVersion")
        status, body = await api("PUT", path, None, merged)
        if status == 409 and isinstance(body, dict) and body.get("reason") == "Conflict":
            continue  # the object changed under us (a controller wrote it): read it again
        if status >= 400:
            return "", status_error(status, body, f"applying patch to {m.ref}", m.source)
        return "configured", None
    return "", status_error(409, {"kind": "Status", "reason": "Conflict",
                                  "message": f"{m.ref}: the object kept changing; gave up after "
                                             f"{CONFLICT_RETRIES} attempts"}, "applying patch", m.source)


async def apply(api: Api, manifests: Sequence[Manifest], errors: Sequence[str] = ()) -> Report:
    """Apply each manifest in order: ``deployment.apps/web created``; errors at the end."""
    report = Report()
    for m in manifests:
        result, err = await apply_one(api, m)
        if err:
            report.error(err)
        else:
            report.out.append(f"{m.ref} {result}")
    for line in errors:
        report.error(line)
    if not manifests and not errors:
        report.error("error: no objects passed to apply")
    return report


@dataclass(frozen=True, slots=True)
class Target:
    res: Resource
    namespace: str | None
    name: str
    source: str = ""  # the file it came from (delete -f)


async def delete(api: Api, targets: Sequence[Target], *, ignore_not_found: bool = False) -> Report:
    """Delete each target: ``deployment.apps "web" deleted``.  Namespaces go last (the API
    server empties a namespace at once, where a real one lets its objects terminate), and the
    lines keep the given order."""
    order = sorted(range(len(targets)), key=lambda i: targets[i].res.plural == "namespaces")
    results: dict[int, tuple[str, bool]] = {}
    for i in order:
        t = targets[i]
        status, body = await api("DELETE", object_path(t.res, t.namespace, t.name), None, None)
        if status == 404 and ignore_not_found:
            continue
        if status >= 400:
            results[i] = (status_error(status, body, "deleting" if t.source else "", t.source), True)
        else:
            results[i] = (f'{kind_ref(t.res)} "{t.name}" deleted', False)
    report = Report()
    for i in range(len(targets)):
        if i in results:
            line, failed = results[i]
            report.error(line) if failed else report.out.append(line)
    return report


# --- kinds on the command line ------------------------------------------------------------------

def resource_of(kind: aks.Kind) -> Resource:
    return BY_PLURAL[kind.plural]


def resource_named(text: str) -> Resource:
    """A kind on the command line: kubectl's names and short names (``netpol``), or a
    qualified plural (``networkpolicies.projectcalico.org``: Calico's, as kubectl resolves
    it with the Calico API server), or a Calico plural/kind (``globalnetworkpolicies``)."""
    low = text.lower()
    if "." in low and low in BY_PLURAL:
        return BY_PLURAL[low]
    try:
        return resource_of(aks.kind_of(text))
    except cli.CliError:
        for r in RESOURCES:
            if low in (r.plural, r.kind.lower()) and r.group == CALICO_GROUP:
                return r
        raise


ALL = ("pods", "services", "deployments", "replicasets")  # kubectl's "all" category, as served here


def parse_kinds(text: str) -> list[Resource]:
    out: list[Resource] = []
    for part in text.split(","):
        if not part:
            continue
        for r in ([BY_PLURAL[p] for p in ALL] if part.lower() == "all" else [resource_named(part)]):
            if r not in out:
                out.append(r)
    if not out:
        raise cli.CliError("you must specify the type of resource to get")
    return out


def parse_targets(args: Sequence[str]) -> list[tuple[Resource, str | None]]:
    """``KIND[,KIND] [NAME...]`` or ``KIND/NAME...`` → (resource, name or None for all)."""
    if not args:
        raise cli.CliError("you must specify the type of resource (e.g. pods, svc, deployments)")
    if "/" in args[0]:
        out: list[tuple[Resource, str | None]] = []
        for a in args:
            kind, sep, name = a.partition("/")
            if not sep or not name:
                raise cli.CliError(f"there is no need to specify a resource type as a separate argument when "
                                   f"passing arguments in resource/name form (e.g. 'hcinet get {a}/NAME')")
            out.append((resource_named(kind), name))
        return out
    kinds = parse_kinds(args[0])
    names = list(args[1:])
    return [(r, n) for r in kinds for n in names] if names else [(r, None) for r in kinds]


# --- tables: Go's text/tabwriter ----------------------------------------------------------------

def tabwrite(lines: Sequence[str], minwidth: int, padding: int) -> list[str]:
    """Go's ``text/tabwriter`` (left-aligned, space padding): a column block is a run of lines
    that have a tab-terminated cell in that column; text after a line's last tab is not padded."""
    cells = [line.split("\t") for line in lines]
    widths: list[int] = []
    out: list[str] = []

    def write(a: int, b: int) -> None:
        for i in range(a, b):
            row = cells[i]
            text = []
            for j, c in enumerate(row):
                text.append(c.ljust(widths[j]) if j < len(widths) and j < len(row) - 1 else c)
            out.append("".join(text))

    def fmt(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(cells[this]) - 1:
                this += 1
                continue
            write(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(cells[this]) - 1:
                width = max(width, len(cells[this][column]) + padding)
                this += 1
            widths.append(width)
            fmt(line0, this)
            widths.pop()
            line0 = this
        write(line0, line1)

    fmt(0, len(cells))
    return out


def kubectl_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """``kubectl get``'s table (tabwriter minwidth 6, padding 3)."""
    lines = ["\t".join(h.upper() for h in headers)]
    lines += ["\t".join("" if c is None else str(c) for c in row) for row in rows]
    return tabwrite(lines, 6, 3)


# --- printers (k8s.io/kubernetes pkg/printers/internalversion) ----------------------------------

def _d(obj: Any, *keys: str) -> Any:
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else None
    return obj


def _ts(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def since(text: Any, now: datetime) -> str:
    """``translateTimestampSince``: ``<unknown>`` for no time."""
    t = _ts(text)
    return "<unknown>" if t is None else aks.human_age((now - t).total_seconds())


def format_labels(labels: Any) -> str:
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def format_selector(sel: Any) -> str:
    """``metav1.LabelSelectorAsSelector(...).String()``; an empty selector is ``<none>``."""
    if not isinstance(sel, dict):
        return "<none>"
    parts = [(k, f"{k}={v}") for k, v in (sel.get("matchLabels") or {}).items()]
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e.get("key", ""), e.get("operator", ""), sorted(e.get("values") or [])
        text = {"In": f"{k} in ({','.join(vals)})", "NotIn": f"{k} notin ({','.join(vals)})",
                "Exists": k, "DoesNotExist": f"!{k}"}.get(op, f"{k} {op}")
        parts.append((k, text))
    return ",".join(t for _, t in sorted(parts)) or "<none>"


def _more(items: list[str], count: int, limit: int = 3, empty: str = "<unset>") -> str:
    text = ",".join(items[:limit])
    if count > limit:
        return f"{text} + {count - limit} more..."
    return text or empty


def _lb_ingress(status: Any, wide: bool) -> str:
    ingress = _d(status, "loadBalancer", "ingress") or []
    text = ",".join(i.get("ip") or i.get("hostname") or "" for i in ingress if isinstance(i, dict))
    return text[:13] + "..." if not wide and len(text) > 16 else text


def pod_row(o: Obj, wide: bool, now: datetime) -> list[str]:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    statuses = status.get("containerStatuses") or []
    reason = status.get("reason") or status.get("phase") or "Pending"
    ready = restarts = 0
    last_restart: datetime | None = None
    has_running = False
    for c in reversed(statuses):
        restarts += int(c.get("restartCount") or 0)
        finished = _ts(_d(c, "lastState", "terminated", "finishedAt"))
        if finished and (last_restart is None or finished > last_restart):
            last_restart = finished
        state = c.get("state") or {}
        waiting, term = state.get("waiting"), state.get("terminated")
        if isinstance(waiting, dict) and waiting.get("reason"):
            reason = waiting["reason"]
        elif isinstance(term, dict) and term.get("reason"):
            reason = term["reason"]
        elif isinstance(term, dict):
            reason = f"Signal:{term['signal']}" if term.get("signal") else f"ExitCode:{term.get('exitCode', 0)}"
        elif c.get("ready") and state.get("running") is not None:
            has_running = True
            ready += 1
    if reason == "Completed" and has_running:
        ready_cond = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        reason = "Running" if ready_cond else "NotReady"
    if _d(o, "metadata", "deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    restarts_text = str(restarts)
    if last_restart is not None:
        restarts_text += f" ({aks.human_age((now - last_restart).total_seconds())} ago)"
    row = [f"{ready}/{len(spec.get('containers') or [])}", reason, restarts_text,
           since(_d(o, "metadata", "creationTimestamp"), now)]
    if wide:
        ips = status.get("podIPs") or []
        ip = (ips[0].get("ip") if ips and isinstance(ips[0], dict) else None) or status.get("podIP") or "<none>"
        gates = spec.get("readinessGates") or []
        gates_text = "<none>"
        if gates:
            conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
            gates_text = f"{sum(1 for g in gates if conds.get(g.get('conditionType')) == 'True')}/{len(gates)}"
        row += [ip, spec.get("nodeName") or "<none>", status.get("nominatedNodeName") or "<none>", gates_text]
    return row


def service_external_ip(o: Obj, wide: bool) -> str:
    spec = o.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    external = list(spec.get("externalIPs") or [])
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if kind == "LoadBalancer":
        lb = _lb_ingress(o.get("status"), wide)
        return ",".join([*(lb.split(",") if lb else []), *external]) or "<pending>"
    if kind == "ExternalName":
        return str(spec.get("externalName") or "")
    return "<unknown>"


def service_ports(spec: Obj) -> str:
    pieces = []
    for p in spec.get("ports") or []:
        proto = p.get("protocol") or "TCP"
        pieces.append(f"{p.get('port')}:{p['nodePort']}/{proto}" if p.get("nodePort") else f"{p.get('port')}/{proto}")
    return ",".join(pieces) or "<none>"


def service_row(o: Obj, wide: bool, now: datetime) -> list[str]:
    spec = o.get("spec") or {}
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    row = [spec.get("type") or "ClusterIP", ips[0] if ips else "<none>", service_external_ip(o, wide),
           service_ports(spec), since(_d(o, "metadata", "creationTimestamp"), now)]
    if wide:
        row.append(format_labels(spec.get("selector")))
    return row


def endpointslice_row(o: Obj, wide: bool, now: datetime) -> list[str]:
    ports = []
    for p in o.get("ports") or []:
        ports.append(str(p["port"]) if p.get("port") is not None else (p.get("name") or "*"))
    addrs = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    return [o.get("addressType") or "", _more(ports, len(ports)), _more(addrs, len(addrs)),
            since(_d(o, "metadata", "creationTimestamp"), now)]


def endpoints_row(o: Obj, wide: bool, now: datetime) -> list[str]:
    items: list[str] = []
    count = 0
    for ss in o.get("subsets") or []:
        addrs = [a.get("ip", "") for a in ss.get("addresses") or []]
        ports = ss.get("ports") or []
        if not ports:
            count += len(addrs)
            items += addrs
        for p in ports:
            count += len(addrs)
            items += [f"[{a}]:{p.get('port')}" if ":" in a else f"{a}:{p.get('port')}" for a in addrs]
    text = _more(items, count, empty="<none>")
    return [text, since(_d(o, "metadata", "creationTimestamp"), now)]


def _containers_cells(template_spec: Any) -> list[str]:
    containers = (template_spec or {}).get("containers") or []
    return [",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)]


def deployment_row(o: Obj, wide: bool, now: datetime) -> list[str]:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    row = [f"{status.get('readyReplicas') or 0}/{spec.get('replicas', 1)}", str(status.get("updatedReplicas") or 0),
           str(status.get("availableReplicas") or 0), since(_d(o, "metadata", "creationTimestamp"), now)]
    if wide:
        row += [*_containers_cells(_d(spec, "template", "spec")), format_selector(spec.get("selector"))]
    return row


def replicaset_row(o: Obj, wide: bool, now: datetime) -> list[str]:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    row = [str(spec.get("replicas", 1)), str(status.get("replicas") or 0), str(status.get("readyReplicas") or 0),
           since(_d(o, "metadata", "creationTimestamp"), now)]
    if wide:
        row += [*_containers_cells(_d(spec, "template", "spec")), format_selector(spec.get("selector"))]
    return row


def ingress_row(o: Obj, wide: bool, now: datetime) -> list[str]:
    spec = o.get("spec") or {}
    hosts = [str(r["host"]) for r in spec.get("rules") or [] if isinstance(r, dict) and r.get("host")]
    hosts_text = _more(hosts, len(hosts), limit=4, empty="*")
    ports = "80, 443" if spec.get("tls") else "80"
    return [spec.get("ingressClassName") or "<none>", hosts_text, _lb_ingress(o.get("status"), wide), ports,
            since(_d(o, "metadata", "creationTimestamp"), now)]


def event_row(o: Obj, wide: bool, now: datetime) -> list[str]:
    first = since(o.get("firstTimestamp") or o.get("eventTime"), now)
    last = since(o.get("lastTimestamp"), now) if o.get("lastTimestamp") else first
    inv = o.get("involvedObject") or {}
    kind = str(inv.get("kind", "")).lower()
    target = f"{kind}/{inv['name']}" if inv.get("name") else kind
    message = str(o.get("message") or "").strip()
    if not wide:
        return [last, o.get("type") or "", o.get("reason") or "", target, message]
    source = o.get("source") or {}
    src = ", ".join(x for x in (source.get("component") or o.get("reportingComponent") or "",
                                source.get("host") or o.get("reportingInstance") or "") if x)
    return [last, o.get("type") or "", o.get("reason") or "", target, inv.get("fieldPath") or "", src, message,
            first, str(o.get("count") or 1), _d(o, "metadata", "name") or ""]


def _age_only(fn: Callable[[Obj], list[str]]) -> Callable[[Obj, bool, datetime], list[str]]:
    def row(o: Obj, wide: bool, now: datetime) -> list[str]:
        return [*fn(o), since(_d(o, "metadata", "creationTimestamp"), now)]
    return row


def _node_row(o: Obj, wide: bool, now: datetime) -> list[str]:
    info = _d(o, "status", "nodeInfo") or {}
    row = [aks.node_status(o), aks.node_roles(o), since(_d(o, "metadata", "creationTimestamp"), now),
           info.get("kubeletVersion", "")]
    if wide:
        row += [aks._address(o, "InternalIP"), aks._address(o, "ExternalIP"), info.get("osImage", "<unknown>"),
                info.get("kernelVersion", "<unknown>"), info.get("containerRuntimeVersion", "<unknown>")]
    return row


@dataclass(frozen=True, slots=True)
class Printer:
    columns: tuple[str, ...]  # after NAME (events: no NAME column)
    wide: tuple[str, ...]
    row: Callable[[Obj, bool, datetime], list[str]]
    named: bool = True


PRINTERS: dict[str, Printer] = {
    "pods": Printer(("READY", "STATUS", "RESTARTS", "AGE"), ("IP", "NODE", "NOMINATED NODE", "READINESS GATES"),
                    pod_row),
    "services": Printer(("TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"), ("SELECTOR",), service_row),
    "endpointslices": Printer(("ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"), (), endpointslice_row),
    "endpoints": Printer(("ENDPOINTS", "AGE"), (), endpoints_row),
    "deployments": Printer(("READY", "UP-TO-DATE", "AVAILABLE", "AGE"), ("CONTAINERS", "IMAGES", "SELECTOR"),
                           deployment_row),
    "replicasets": Printer(("DESIRED", "CURRENT", "READY", "AGE"), ("CONTAINERS", "IMAGES", "SELECTOR"),
                           replicaset_row),
    "nodes": Printer(("STATUS", "ROLES", "AGE", "VERSION"),
                     ("INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"), _node_row),
    "namespaces": Printer(("STATUS", "AGE"), (), _age_only(lambda o: [_d(o, "status", "phase") or "Active"])),
    "networkpolicies": Printer(("POD-SELECTOR", "AGE"), (),
                               _age_only(lambda o: [format_selector(_d(o, "spec", "podSelector"))])),
    "ingresses": Printer(("CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"), (), ingress_row),
    "configmaps": Printer(("DATA", "AGE"), (),
                          _age_only(lambda o: [str(len(o.get("data") or {}) + len(o.get("binaryData") or {}))])),
    "secrets": Printer(("TYPE", "DATA", "AGE"), (),
                       _age_only(lambda o: [o.get("type") or "Opaque", str(len(o.get("data") or {}))])),
    "leases": Printer(("HOLDER", "AGE"), (), _age_only(lambda o: [_d(o, "spec", "holderIdentity") or ""])),
    "events": Printer(("LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"),
                      ("LAST SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "MESSAGE", "FIRST SEEN",
                       "COUNT", "NAME"), event_row, named=False),
}


def table_lines(res: Resource, objs: Sequence[Obj], *, wide: bool, with_namespace: bool, with_kind: bool,
                now: datetime) -> list[str]:
    """One kind's table.  ``with_kind``: NAME as ``kind/name`` (several kinds were asked)."""
    p = PRINTERS.get(res.store_key, Printer(("AGE",), (), _age_only(lambda o: [])))
    if p.named:
        headers = ["NAME", *p.columns, *(p.wide if wide else ())]
    else:  # events: the wide columns replace the narrow ones
        headers = list(p.wide if wide else p.columns)
    if with_namespace:
        headers.insert(0, "NAMESPACE")
    rows = []
    for o in objs:
        meta = o.get("metadata") or {}
        name = meta.get("name", "")
        row = ([f"{kind_ref(res)}/{name}" if with_kind else name] if p.named else []) + p.row(o, wide, now)
        rows.append(([meta.get("namespace", "")] if with_namespace else []) + row)
    return kubectl_table(headers, rows)


# --- get ----------------------------------------------------------------------------------------

async def get(api: Api, targets: Sequence[tuple[Resource, str | None]], *, namespace: str | None,
              selector: str | None = None, output: str = "table", now: datetime | None = None) -> Report:
    """``kubectl get``: ``namespace=None`` means every namespace (``-A``)."""
    now = now or datetime.now(UTC)
    report = Report()
    if namespace is None and any(n for _, n in targets):
        report.error("error: a resource cannot be retrieved by name across all namespaces")
        return report
    found: dict[str, tuple[Resource, list[Obj]]] = {}
    query = {"labelSelector": selector} if selector else None
    for res, name in targets:
        bucket = found.setdefault(res.store_key, (res, []))[1]
        status, body = await api("GET", object_path(res, namespace, name), None if name else query, None)
        if status >= 400:
            report.error(status_error(status, body))
        elif name:
            bucket.append(body)
        else:
            bucket.extend(aks.items_of(body))
    objs = [o for _, items in found.values() for o in items]
    if output in ("json", "yaml"):
        single = len(targets) == 1 and targets[0][1] is not None
        if objs or not report.failed:
            report.out.append(_dump(objs[0] if single and objs else aks.k8s_list(objs), output))
        return report
    if output == "name":
        report.out += [f"{kind_ref(r)}/{o['metadata']['name']}" for r, items in found.values() for o in items]
        return report
    blocks = [(r, items) for r, items in found.values() if items]
    for i, (res, items) in enumerate(blocks):
        if i:
            report.out.append("")
        report.out += table_lines(res, items, wide=output == "wide",
                                  with_namespace=namespace is None and res.namespaced,
                                  with_kind=len(found) > 1, now=now)
    if not objs and not report.failed:
        all_namespaced = namespace is not None and all(r.namespaced for r, _ in found.values())
        report.err.append(f"No resources found in {namespace} namespace." if all_namespaced else "No resources found")
    return report


def _dump(doc: Any, output: str) -> str:
    doc = aks.plain(doc)
    if output == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip("\n")
    return json.dumps(doc, indent=4)


# --- describe -----------------------------------------------------------------------------------

def rfc1123z(text: Any) -> str:
    t = _ts(text)
    return "" if t is None else t.strftime("%a, %d %b %Y %H:%M:%S %z")


def _multiline(title: str, pairs: Sequence[str], indent: str = "") -> list[str]:
    """``Labels:\\tk=v`` then ``\\tk2=v2`` (kubectl's printLabelsMultiline)."""
    if not pairs:
        return [f"{indent}{title}:\t<none>"]
    return [f"{indent}{title}:\t{pairs[0]}", *(f"{indent}\t{p}" for p in pairs[1:])]


def _labels(meta: Obj) -> list[str]:
    return [f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items())]


def _annotations(meta: Obj) -> list[str]:
    return [f"{k}: {v}" for k, v in sorted((meta.get("annotations") or {}).items()) if k != LAST_APPLIED]


def _duration(seconds: Any) -> str:
    """Go's ``time.Duration`` of whole seconds: 0s, 10s, 1m30s, 1h0m0s."""
    s = int(seconds or 0)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m}m{sec}s" if h else f"{m}m{sec}s" if m else f"{sec}s"


def describe_probe(p: Obj) -> str:
    attrs = (f"delay={_duration(p.get('initialDelaySeconds', 0))} timeout={_duration(p.get('timeoutSeconds', 1))} "
             f"period={_duration(p.get('periodSeconds', 10))} #success={p.get('successThreshold', 1)} "
             f"#failure={p.get('failureThreshold', 3)}")
    if isinstance(p.get("exec"), dict):
        return f"exec [{' '.join(p['exec'].get('command') or [])}] {attrs}"
    if isinstance(p.get("httpGet"), dict):
        h = p["httpGet"]
        host = f"{h.get('host', '')}:{h['port']}" if h.get("port") is not None else h.get("host", "")
        return f"http-get {str(h.get('scheme') or 'HTTP').lower()}://{host}{h.get('path', '')} {attrs}"
    if isinstance(p.get("tcpSocket"), dict):
        return f"tcp-socket {p['tcpSocket'].get('host', '')}:{p['tcpSocket'].get('port', '')} {attrs}"
    if isinstance(p.get("grpc"), dict):
        return f"grpc <pod>:{p['grpc'].get('port')} {p['grpc'].get('service', '')} {attrs}"
    return f"unknown {attrs}"


def _state(title: str, state: Any) -> list[str]:
    state = state if isinstance(state, dict) else {}
    if isinstance(state.get("running"), dict):
        return [f"    {title}:\tRunning", f"      Started:\t{rfc1123z(state['running'].get('startedAt'))}"]
    if isinstance(state.get("terminated"), dict):
        t = state["terminated"]
        out = [f"    {title}:\tTerminated"]
        out += [f"      Reason:\t{t['reason']}"] if t.get("reason") else []
        out += [f"      Message:\t{t['message']}"] if t.get("message") else []
        out.append(f"      Exit Code:\t{t.get('exitCode', 0)}")
        out += [f"      Signal:\t{t['signal']}"] if t.get("signal") else []
        return [*out, f"      Started:\t{rfc1123z(t.get('startedAt'))}",
                f"      Finished:\t{rfc1123z(t.get('finishedAt'))}"]
    waiting = state.get("waiting") if isinstance(state.get("waiting"), dict) else {}
    return [f"    {title}:\tWaiting", *([f"      Reason:\t{waiting['reason']}"] if waiting.get("reason") else [])]


def _container(c: Obj, st: Obj | None) -> list[str]:
    out = [f"  {c.get('name', '')}:"]
    if st is not None:
        out.append(f"    Container ID:\t{st.get('containerID', '')}")
    out.append(f"    Image:\t{c.get('image', '')}")
    if st is not None:
        out.append(f"    Image ID:\t{st.get('imageID', '')}")
    ports = [f"{p.get('containerPort')}/{p.get('protocol') or 'TCP'}" for p in c.get("ports") or []]
    host_ports = [f"{p.get('hostPort') or 0}/{p.get('protocol') or 'TCP'}" for p in c.get("ports") or []]
    out.append(f"    Ports:\t{','.join(ports)}" if len(ports) > 1 else f"    Port:\t{ports[0] if ports else '<none>'}")
    out.append(f"    Host Ports:\t{','.join(host_ports)}" if len(host_ports) > 1
               else f"    Host Port:\t{host_ports[0] if host_ports else '<none>'}")
    for key, title in (("command", "Command"), ("args", "Args")):
        if c.get(key):
            out += [f"    {title}:", *(f"      {a}" for a in c[key])]
    if st is not None:
        out += _state("State", st.get("state"))
        if any(isinstance(v, dict) for v in (st.get("lastState") or {}).values()):
            out += _state("Last State", st.get("lastState"))
        out.append(f"    Ready:\t{'True' if st.get('ready') else 'False'}")
        out.append(f"    Restart Count:\t{st.get('restartCount', 0)}")
    for key, title in (("livenessProbe", "Liveness"), ("readinessProbe", "Readiness"), ("startupProbe", "Startup")):
        if isinstance(c.get(key), dict):
            out.append(f"    {title}:\t{describe_probe(c[key])}")
    env = [e for e in c.get("env") or [] if isinstance(e, dict)]
    if env:
        out.append("    Environment:")
        out += [f"      {e.get('name')}:\t{e.get('value', '') if 'value' in e else '<set from a source>'}" for e in env]
    else:
        out.append("    Environment:\t<none>")
    mounts = [m for m in c.get("volumeMounts") or [] if isinstance(m, dict)]
    if mounts:
        out.append("    Mounts:")
        out += [f"      {v.get('mountPath')} from {v.get('name')} ({'ro' if v.get('readOnly') else 'rw'})"
                for v in mounts]
    else:
        out.append("    Mounts:\t<none>")
    return out


def events_lines(events: Sequence[Obj], now: datetime) -> list[str]:
    """The Events table of ``kubectl describe`` (``Events:  <none>`` when empty)."""
    if not events:
        return ["Events:\t<none>"]
    def key(e: Obj) -> datetime:
        t = _ts(e.get("lastTimestamp") or e.get("firstTimestamp") or e.get("eventTime"))
        return t or datetime.min.replace(tzinfo=UTC)
    out = ["Events:", "  Type\tReason\tAge\tFrom\tMessage", "  ----\t------\t----\t----\t-------"]
    for e in sorted(events, key=key):
        first = since(e.get("firstTimestamp") or e.get("eventTime"), now)
        count = int(e.get("count") or 1)
        age = f"{since(e.get('lastTimestamp'), now)} (x{count} over {first})" if count > 1 else first
        source = (e.get("source") or {}).get("component") or e.get("reportingComponent") or ""
        message = str(e.get("message") or "").strip()
        out.append(f"  {e.get('type', '')}\t{e.get('reason', '')}\t{age}\t{source}\t{message}")
    return out


def describe_pod(pod: Obj, events: Sequence[Obj], now: datetime) -> list[str]:
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    out = [f"Name:\t{meta.get('name', '')}", f"Namespace:\t{meta.get('namespace', '')}"]
    # admission sets both on every real pod (Priority, ServiceAccount admission plugins)
    out.append(f"Priority:\t{spec.get('priority') or 0}")
    if spec.get("priorityClassName"):
        out.append(f"Priority Class Name:\t{spec['priorityClassName']}")
    out.append(f"Service Account:\t{spec.get('serviceAccountName') or 'default'}")
    node = spec.get("nodeName")
    out.append(f"Node:\t{node}/{status.get('hostIP', '')}" if node else "Node:\t<none>")
    if status.get("startTime"):
        out.append(f"Start Time:\t{rfc1123z(status['startTime'])}")
    out += _multiline("Labels", _labels(meta))
    out += _multiline("Annotations", _annotations(meta))
    if meta.get("deletionTimestamp"):
        out.append(f"Status:\tTerminating (lasts {since(meta['deletionTimestamp'], now)})")
        out.append(f"Termination Grace Period:\t{meta.get('deletionGracePeriodSeconds', 30)}s")
    else:
        out.append(f"Status:\t{status.get('phase') or 'Pending'}")
    for key in ("reason", "message"):
        if status.get(key):
            out.append(f"{key.title()}:\t{status[key]}")
    out.append(f"IP:\t{status.get('podIP', '')}")
    ips = [p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, dict)]
    out += ["IPs:", *(f"  IP:\t{ip}" for ip in ips)] if ips else ["IPs:\t<none>"]
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    if owner:
        out.append(f"Controlled By:\t{owner.get('kind')}/{owner.get('name')}")
    if status.get("nominatedNodeName"):
        out.append(f"NominatedNodeName:\t{status['nominatedNodeName']}")
    statuses = {s.get("name"): s for s in status.get("containerStatuses") or [] if isinstance(s, dict)}
    out.append("Containers:")
    for c in spec.get("containers") or []:
        out += _container(c, statuses.get(c.get("name")))
    conds = status.get("conditions") or []
    if conds:
        out += ["Conditions:", "  Type\tStatus"] + [f"  {c.get('type')} \t{c.get('status')} " for c in conds]
    vols = [v for v in spec.get("volumes") or [] if isinstance(v, dict)]
    if vols:
        out.append("Volumes:")
        for v in vols:
            kind = next((k for k in v if k != "name"), "")
            out += [f"  {v.get('name')}:", f"    Type:\t{kind}"]
    else:
        out.append("Volumes:\t<none>")
    out.append(f"QoS Class:\t{status.get('qosClass') or 'BestEffort'}")
    out += _multiline("Node-Selectors", [f"{k}={v}" for k, v in sorted((spec.get("nodeSelector") or {}).items())])
    out += _multiline("Tolerations", [_toleration(t) for t in spec.get("tolerations") or []])
    return out + events_lines(events, now)


def _toleration(t: Obj) -> str:
    text = str(t.get("key", ""))
    if t.get("value"):
        text += f"={t['value']}"
    if t.get("effect"):
        text += f":{t['effect']}"
    if t.get("operator") == "Exists" and not t.get("value"):
        text += " op=Exists"
    if t.get("tolerationSeconds") is not None:
        text += f" for {t['tolerationSeconds']}s"
    return text


def describe_node(node: Obj, pods: Sequence[Obj], events: Sequence[Obj], now: datetime) -> list[str]:
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    out = [f"Name:\t{meta.get('name', '')}", f"Roles:\t{aks.node_roles(node)}"]
    out += _multiline("Labels", _labels(meta)) + _multiline("Annotations", _annotations(meta))
    out.append(f"CreationTimestamp:\t{rfc1123z(meta.get('creationTimestamp'))}")
    out += _multiline("Taints", [_toleration(t) for t in spec.get("taints") or []])
    out.append(f"Unschedulable:\t{'true' if spec.get('unschedulable') else 'false'}")
    conds = status.get("conditions") or []
    if conds:
        out += ["Conditions:", "  Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage",
                "  ----\t------\t-----------------\t------------------\t------\t-------"]
        out += [f"  {c.get('type')} \t{c.get('status')} \t{rfc1123z(c.get('lastHeartbeatTime'))} \t"
                f"{rfc1123z(c.get('lastTransitionTime'))} \t{c.get('reason', '')} \t{c.get('message', '')}"
                for c in conds]
    out.append("Addresses:")
    out += [f"  {a.get('type')}:\t{a.get('address')}" for a in status.get("addresses") or []]
    for key in ("capacity", "allocatable"):
        if status.get(key):
            out += [f"{key.title()}:", *(f"  {k}:\t{v}" for k, v in sorted(status[key].items()))]
    info = status.get("nodeInfo") or {}
    if info:
        out.append("System Info:")
        for k, title in (("machineID", "Machine ID"), ("systemUUID", "System UUID"), ("bootID", "Boot ID"),
                         ("kernelVersion", "Kernel Version"), ("osImage", "OS Image"),
                         ("operatingSystem", "Operating System"), ("architecture", "Architecture"),
                         ("containerRuntimeVersion", "Container Runtime Version"),
                         ("kubeletVersion", "Kubelet Version"), ("kubeProxyVersion", "Kube-Proxy Version")):
            out.append(f"  {title}:\t{info.get(k, '')}")
    if spec.get("podCIDR"):
        out.append(f"PodCIDR:\t{spec['podCIDR']}")
    out.append(f"PodCIDRs:\t{','.join(spec.get('podCIDRs') or ([spec['podCIDR']] if spec.get('podCIDR') else []))}")
    live = [p for p in pods if _d(p, "status", "phase") not in ("Succeeded", "Failed")]
    out.append(f"Non-terminated Pods:\t({len(live)} in total)")
    if live:
        out += ["  Namespace\tName\tAge", "  ---------\t----\t---"]
        out += [f"  {_d(p, 'metadata', 'namespace')}\t{_d(p, 'metadata', 'name')}\t"
                f"{since(_d(p, 'metadata', 'creationTimestamp'), now)}" for p in live]
    return out + events_lines(events, now)


def describe_service(svc: Obj, slices: Sequence[Obj], events: Sequence[Obj], now: datetime) -> list[str]:
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    out = [f"Name:\t{meta.get('name', '')}", f"Namespace:\t{meta.get('namespace', '')}"]
    out += _multiline("Labels", _labels(meta)) + _multiline("Annotations", _annotations(meta))
    out.append(f"Selector:\t{format_labels(spec.get('selector'))}")
    out.append(f"Type:\t{spec.get('type') or 'ClusterIP'}")
    if spec.get("ipFamilyPolicy"):
        out.append(f"IP Family Policy:\t{spec['ipFamilyPolicy']}")
    if spec.get("ipFamilies"):
        out.append(f"IP Families:\t{','.join(spec['ipFamilies'])}")
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    out.append(f"IP:\t{ips[0] if ips else ''}")
    out.append(f"IPs:\t{','.join(ips) or '<none>'}")
    if spec.get("externalIPs"):
        out.append(f"External IPs:\t{','.join(spec['externalIPs'])}")
    lb = _lb_ingress(svc.get("status"), True)
    if lb:
        out.append(f"LoadBalancer Ingress:\t{lb}")
    if spec.get("type") == "ExternalName":
        out.append(f"External Name:\t{spec.get('externalName', '')}")
    for p in spec.get("ports") or []:
        name, proto = p.get("name") or "<unset>", p.get("protocol") or "TCP"
        out.append(f"Port:\t{name}\t{p.get('port')}/{proto}")
        out.append(f"TargetPort:\t{p.get('targetPort', p.get('port'))}/{proto}")
        if p.get("nodePort"):
            out.append(f"NodePort:\t{name}\t{p['nodePort']}/{proto}")
        eps = [f"{a}:{sp.get('port')}" for s in slices for sp in s.get("ports") or []
               if (sp.get("name") or "") == (p.get("name") or "") and sp.get("port") is not None
               for e in s.get("endpoints") or [] if _d(e, "conditions", "ready") is not False
               for a in e.get("addresses") or []]
        out.append(f"Endpoints:\t{','.join(eps) or '<none>'}")
    out.append(f"Session Affinity:\t{spec.get('sessionAffinity') or 'None'}")
    if spec.get("externalTrafficPolicy"):
        out.append(f"External Traffic Policy:\t{spec['externalTrafficPolicy']}")
    if spec.get("internalTrafficPolicy"):
        out.append(f"Internal Traffic Policy:\t{spec['internalTrafficPolicy']}")
    return out + events_lines(events, now)


def describe_deployment(dep: Obj, replicasets: Sequence[Obj], events: Sequence[Obj], now: datetime) -> list[str]:
    meta, spec, status = dep.get("metadata") or {}, dep.get("spec") or {}, dep.get("status") or {}
    out = [f"Name:\t{meta.get('name', '')}", f"Namespace:\t{meta.get('namespace', '')}",
           f"CreationTimestamp:\t{rfc1123z(meta.get('creationTimestamp'))}"]
    out += _multiline("Labels", _labels(meta)) + _multiline("Annotations", _annotations(meta))
    out.append(f"Selector:\t{format_selector(spec.get('selector'))}")
    out.append(f"Replicas:\t{spec.get('replicas', 1)} desired | {status.get('updatedReplicas', 0)} updated | "
               f"{status.get('replicas', 0)} total | {status.get('availableReplicas', 0)} available | "
               f"{status.get('unavailableReplicas', 0)} unavailable")
    strategy = spec.get("strategy") or {}
    kind = strategy.get("type") or "RollingUpdate"
    out.append(f"StrategyType:\t{kind}")
    out.append(f"MinReadySeconds:\t{spec.get('minReadySeconds', 0)}")
    if kind == "RollingUpdate":
        ru = strategy.get("rollingUpdate") or {}
        out.append(f"RollingUpdateStrategy:\t{ru.get('maxUnavailable', '25%')} max unavailable, "
                   f"{ru.get('maxSurge', '25%')} max surge")
    template = spec.get("template") or {}
    out.append("Pod Template:")
    out += _multiline("Labels", _labels(template.get("metadata") or {}), "  ")
    out.append("  Containers:")
    for c in _d(template, "spec", "containers") or []:
        name, *details = _container(c, None)
        out += [" " + name, *details]  # kubectl: "   web:" then the details at four spaces
    vols = [v.get("name") for v in _d(template, "spec", "volumes") or [] if isinstance(v, dict)]
    out.append(f"  Volumes:\t{', '.join(map(str, vols)) or '<none>'}")
    conds = status.get("conditions") or []
    if conds:
        out += ["Conditions:", "  Type\tStatus\tReason", "  ----\t------\t------"]
        out += [f"  {c.get('type')} \t{c.get('status')}\t{c.get('reason', '')}" for c in conds]
    uid = meta.get("uid")
    owned = [r for r in replicasets if any(o.get("uid") == uid for o in _d(r, "metadata", "ownerReferences") or [])]
    new = next((r for r in owned if _unhashed(_d(r, "spec", "template")) == _unhashed(template)), None)
    old = [r for r in owned if r is not new and (_d(r, "spec", "replicas") or 0) > 0]

    def rs_text(r: Obj) -> str:
        return f"{_d(r, 'metadata', 'name')} ({_d(r, 'status', 'replicas') or 0}/{_d(r, 'spec', 'replicas') or 0} " \
               "replicas created)"
    out.append(f"OldReplicaSets:\t{', '.join(rs_text(r) for r in old) or '<none>'}")
    out.append(f"NewReplicaSet:\t{rs_text(new) if new else '<none>'}")
    return out + events_lines(events, now)


def _unhashed(template: Any) -> Any:
    """A ReplicaSet's pod template without the ``pod-template-hash`` label the controller adds."""
    template = copy.deepcopy(template) if isinstance(template, dict) else {}
    labels = _d(template, "metadata", "labels")
    if isinstance(labels, dict):
        labels.pop("pod-template-hash", None)
    return template


DESCRIBABLE = ("pods", "nodes", "services", "deployments")


async def _list(api: Api, res_plural: str, namespace: str | None, query: Mapping[str, str] | None = None
                ) -> list[Obj]:
    status, body = await api("GET", object_path(BY_PLURAL[res_plural], namespace), query, None)
    return aks.items_of(body) if status < 400 else []


async def _events_for(api: Api, obj: Obj) -> list[Obj]:
    meta = obj.get("metadata") or {}
    sel = f"involvedObject.kind={obj.get('kind', '')},involvedObject.name={meta.get('name', '')}"
    ns = meta.get("namespace")
    if ns:
        sel += f",involvedObject.namespace={ns}"
    return await _list(api, "events", ns, {"fieldSelector": sel})


async def describe_one(api: Api, res: Resource, obj: Obj, now: datetime) -> list[str]:
    events = await _events_for(api, obj)
    meta = obj.get("metadata") or {}
    if res.plural == "pods":
        lines = describe_pod(obj, events, now)
    elif res.plural == "nodes":
        pods = await _list(api, "pods", None, {"fieldSelector": f"spec.nodeName={meta.get('name')}"})
        lines = describe_node(obj, pods, events, now)
    elif res.plural == "services":
        slices = await _list(api, "endpointslices", meta.get("namespace"),
                             {"labelSelector": f"kubernetes.io/service-name={meta.get('name')}"})
        lines = describe_service(obj, slices, events, now)
    else:
        lines = describe_deployment(obj, await _list(api, "replicasets", meta.get("namespace")), events, now)
    return tabwrite(lines, 0, 2)


async def describe(api: Api, res: Resource, names: Sequence[str], *, namespace: str | None,
                   selector: str | None = None, now: datetime | None = None) -> Report:
    """``kubectl describe KIND [NAME...]``: a NAME that is not an object's exact name describes
    every object whose name starts with it, as kubectl does."""
    now = now or datetime.now(UTC)
    report = Report()
    if res.plural not in DESCRIBABLE:
        report.error(f"error: describe supports {', '.join(DESCRIBABLE)} here, not {res.plural}")
        return report
    ns = namespace if res.namespaced else None
    objs: list[Obj] = []
    if not names:
        objs = await _list(api, res.plural, ns, {"labelSelector": selector} if selector else None)
        if not objs:
            report.err.append(f"No resources found in {namespace} namespace." if ns else "No resources found")
    for name in names:
        status, body = await api("GET", object_path(res, ns, name), None, None)
        if status < 400:
            objs.append(body)
            continue
        prefixed = [o for o in await _list(api, res.plural, ns) if _d(o, "metadata", "name").startswith(name)]
        if status == 404 and prefixed:
            objs += prefixed
        else:
            report.error(status_error(status, body))
    for i, obj in enumerate(objs):
        if i:
            report.out += ["", ""]
        report.out += await describe_one(api, res, obj, now)
    return report


# --- the CLI ------------------------------------------------------------------------------------

def _namespace(ns: argparse.Namespace) -> str | None:
    return None if getattr(ns, "all_namespaces", False) else (getattr(ns, "namespace", None) or "default")


async def cmd_get(ns: argparse.Namespace) -> int:
    args = [ns.kind, *(getattr(ns, "names", None) or ([ns.name] if getattr(ns, "name", None) else []))]
    targets = parse_targets(args)  # unknown kinds fail before the cluster is asked
    api = await aks.cluster_api(ns)
    report = await get(api, targets, namespace=_namespace(ns), selector=getattr(ns, "selector", None),
                       output=ns.output)
    return report.emit()


async def cmd_apply(ns: argparse.Namespace) -> int:
    if not ns.filename:
        raise cli.CliError("must specify one of -f and -k")
    manifests, errors = load(ns.filename, ns.recursive, ns.namespace)
    api = await aks.cluster_api(ns) if manifests else _no_api
    report = await apply(api, manifests, errors)
    if any(is_policy(m.res) for m in manifests):
        cluster, plugin = await cluster_plugin(ns)
        warning = policy_warning(cluster, plugin)
        if warning:
            report.err.insert(0, warning)
    return report.emit()


POLICY_KINDS = frozenset({("networking.k8s.io", "NetworkPolicy"), (CALICO_GROUP, "NetworkPolicy"),
                          (CALICO_GROUP, "GlobalNetworkPolicy")})


def is_policy(res: Resource) -> bool:
    return (res.group, res.kind) in POLICY_KINDS


def policy_warning(cluster: str, plugin: str) -> str | None:
    """What ``apply`` of a network policy prints into a cluster that cannot enforce it."""
    if plugin != "flannel":
        return None
    return (f"Warning: cluster {cluster} uses flannel, which does not enforce network policy; "
            "the policy is stored but not enforced")


async def cluster_plugin(ns: argparse.Namespace) -> tuple[str, str]:
    """(the chosen cluster, its ``primaryNetworkPlugin``) from the MOC cloud agent's status."""
    name = await aks.pick_cluster(ns)
    status = await aks.moc_call(ns, "status", timeout=10.0)
    for c in aks.items_of(status.get("clusters") if isinstance(status, dict) else None):
        if c.get("name") == name:
            return name, str(c.get("primaryNetworkPlugin") or "calico")
    return name, "calico"


async def _no_api(method: str, path: str, query: Mapping[str, str] | None, body: Any) -> tuple[int, Any]:
    raise AssertionError("no object to send")


def named_targets(args: Sequence[str], selector: str | None, all_: bool) -> list[tuple[Resource, str | None]]:
    wanted = parse_targets(args)
    if not any(n for _, n in wanted) and not (all_ or selector):
        raise cli.CliError("resource(s) were provided, but no name was specified (give NAME, -l SELECTOR or --all)")
    return wanted


async def delete_named(api: Api, args: Sequence[str], *, namespace: str, selector: str | None = None,
                       all_: bool = False, ignore_not_found: bool = False) -> Report:
    """``delete KIND NAME...`` / ``KIND/NAME...`` / ``KIND -l SEL`` / ``KIND --all``."""
    wanted = named_targets(args, selector, all_)
    targets: list[Target] = []
    for res, name in wanted:
        ns = namespace if res.namespaced else None
        if name:
            targets.append(Target(res, ns, name))
            continue
        for o in await _list(api, res.plural, ns, {"labelSelector": selector} if selector else None):
            targets.append(Target(res, _d(o, "metadata", "namespace"), _d(o, "metadata", "name")))
    if not targets:
        return Report(err=["No resources found"])
    return await delete(api, targets, ignore_not_found=ignore_not_found)


async def cmd_delete(ns: argparse.Namespace) -> int:
    if not ns.filename:
        named_targets(ns.args, ns.selector, ns.all)  # a usage error before the cluster is asked
        api = await aks.cluster_api(ns)
        return (await delete_named(api, ns.args, namespace=ns.namespace or "default", selector=ns.selector,
                                   all_=ns.all, ignore_not_found=ns.ignore_not_found)).emit()
    if ns.args:
        raise cli.CliError("there is no need to specify a resource type as a separate argument when passing "
                           "objects with -f")
    manifests, errors = load(ns.filename, ns.recursive, ns.namespace, for_apply=False)
    report = Report()
    if manifests:
        targets = [Target(m.res, m.namespace, m.name, m.source) for m in manifests]
        report = await delete(await aks.cluster_api(ns), targets, ignore_not_found=ns.ignore_not_found)
    for line in errors:
        report.error(line)
    return report.emit()


async def cmd_describe(ns: argparse.Namespace) -> int:
    res = resource_of(aks.kind_of(ns.kind))
    names = list(ns.names or [])
    if "/" in ns.kind:
        kind, _, name = ns.kind.partition("/")
        res, names = resource_of(aks.kind_of(kind)), [name, *names]
    api = await aks.cluster_api(ns)
    report = await describe(api, res, names, namespace=ns.namespace or "default", selector=ns.selector)
    return report.emit()


def filename_args(p: argparse.ArgumentParser, *, stdin: bool = True) -> None:
    """kubectl's ``-f FILE|DIR`` (repeatable) and ``-R``, for every verb that reads manifests."""
    p.add_argument("-f", "--filename", action="append", default=[], metavar="FILE|DIR|-" if stdin else "FILE|DIR",
                   help="a manifest file, a directory of *.yaml|*.yml|*.json" + (", or - for stdin" if stdin else "")
                        + " (repeatable)")
    p.add_argument("-R", "--recursive", action="store_true", help="with a directory: its sub-directories too")


def add_parsers(sub: Any) -> None:
    """``apply``, ``delete`` and ``describe`` (``get`` is in :mod:`scenarios.aks`)."""
    verb = cli._verb

    def common(p: argparse.ArgumentParser, files: bool) -> None:
        if files:
            filename_args(p)
        p.add_argument("-n", "--namespace", help="the namespace of objects that name none (default: default)")
        p.add_argument("--cluster", metavar="NAME",
                       help="the workload cluster (may be omitted when the deployment has only one)")

    p = verb(sub, "apply", cmd_apply, "create or update objects from manifests (kubectl apply -f)",
             "Apply Kubernetes manifests to a cluster as 'kubectl apply' does: YAML or JSON, several\n"
             "documents per file, 'kind: List' expanded, a directory's *.yaml|*.yml|*.json files in\n"
             "order (-R: sub-directories too). Each object is created if absent, else merged three ways\n"
             "with its last applied configuration (fields removed from the manifest are removed) and\n"
             "updated; a line per object: 'deployment.apps/web created|configured|unchanged'.\n"
             "Errors are kubectl's, one line per object; the others are still applied; exit 1.\n\n"
             "Examples:\n  hcinet apply -f app.yaml\n  hcinet apply -f manifests/ -n prod\n"
             "  cat app.yaml | hcinet apply -f -")
    common(p, files=True)
    p = verb(sub, "delete", cmd_delete, "delete objects by manifest or by kind and name (kubectl delete)",
             "Delete the objects of manifests (-f, as for apply), or KIND NAME... (also KIND/NAME,\n"
             "KIND -l SELECTOR, KIND --all). Prints 'deployment.apps \"web\" deleted'; a missing object\n"
             "is 'Error from server (NotFound): ...' and exit 1 unless --ignore-not-found.\n\n"
             "Examples:\n  hcinet delete -f app.yaml\n  hcinet delete deployment web -n prod")
    p.add_argument("args", nargs="*", metavar="KIND NAME", help="a kind and names, or KIND/NAME")
    common(p, files=True)
    p.add_argument("-l", "--selector", help="a label selector (with KIND)")
    p.add_argument("--all", action="store_true", help="every object of KIND in the namespace")
    p.add_argument("--ignore-not-found", action="store_true", help="a missing object is not an error")
    p = verb(sub, "describe", cmd_describe, "show an object in detail with its events (kubectl describe)",
             "kubectl describe for pods (node, IPs, containers with image, ports, state, readiness,\n"
             "conditions), nodes, services (ports, endpoints) and deployments (replicas, strategy,\n"
             "replica sets), each followed by its Events. A NAME that matches no object describes\n"
             "every object whose name starts with it.\n\n"
             "Examples:\n  hcinet describe pod web-7c9\n  hcinet describe svc backend -n prod")
    p.add_argument("kind", help="pod, node, service or deployment (or KIND/NAME)")
    p.add_argument("names", nargs="*", metavar="NAME", help="objects by name or name prefix (default: all)")
    common(p, files=False)
    p.add_argument("-l", "--selector", help="a label selector (without NAME)")

    from scenarios import podexec  # exec: the pod's node runs the tool

    podexec.add_parser(sub)

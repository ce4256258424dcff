"""Field validation with Kubernetes' messages (k8s.io/apimachinery ``util/validation``).

A refused object becomes ``422 Invalid``: ``Node "A_b" is invalid: metadata.name: Invalid
value: "A_b": a lowercase RFC 1123 subdomain must consist of ...``; several errors are listed in
brackets, as the API server does.  Each kind has a list of checks in :data:`VALIDATORS`;
later steps append deeper ones (Pod, Service specs) with :func:`register_validator`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import errors
from .resources import BY_KIND, Resource

# --- messages (apimachinery/pkg/util/validation) -------------------------------------------

DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + r"(\." + DNS1123_LABEL_FMT + ")*"
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = "(" + QUALIFIED_NAME_FMT + ")?"
CONFIG_KEY_FMT = "[-._a-zA-Z0-9]+"

DNS1123_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                     "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
                     f"regex used for validation is '{DNS1123_LABEL_FMT}')")
DNS1123_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                         "'-' or '.', and must start and end with an alphanumeric character (e.g. "
                         f"'example.com', regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')")
DNS1035_LABEL_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
                     "an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
                     f"'abc-123', regex used for validation is '{DNS1035_LABEL_FMT}')")
QUALIFIED_NAME_MSG = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                      "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', "
                      f"regex used for validation is '{QUALIFIED_NAME_FMT}')")
LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                   "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value', "
                   f" or '12345', regex used for validation is '{LABEL_VALUE_FMT}')")
CONFIG_KEY_MSG = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
                  f"'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '{CONFIG_KEY_FMT}')")

_RE = {name: re.compile(f"^{fmt}$") for name, fmt in (
    ("label", DNS1123_LABEL_FMT), ("subdomain", DNS1123_SUBDOMAIN_FMT), ("dns1035", DNS1035_LABEL_FMT),
    ("qualified", QUALIFIED_NAME_FMT), ("value", LABEL_VALUE_FMT), ("configkey", CONFIG_KEY_FMT))}

# field.ErrorType -> (the reason in Status causes, the message prefix)
_TYPES = {
    "Required": ("FieldValueRequired", "Required value"),
    "Invalid": ("FieldValueInvalid", "Invalid value"),
    "NotSupported": ("FieldValueNotSupported", "Unsupported value"),
    "Forbidden": ("FieldValueForbidden", "Forbidden"),
    "TooLong": ("FieldValueTooLong", "Too long"),
    "Duplicate": ("FieldValueDuplicate", "Duplicate value"),
}


def _go_value(value: Any) -> str:
    """How field errors print a value (Go's %q for strings, %d for ints, map/slice literals)."""
    if type(value).__name__ == "_GoRepr":
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{json.dumps(str(k))}:{json.dumps(str(v))}" for k, v in value.items())
        return "map[string]string{" + inner + "}"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):  # Go's %#v of a []string
        return "[]string{" + ", ".join(json.dumps(v) for v in value) + "}" if value else "[]string(nil)"
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class FieldError:
    type: str  # Required | Invalid | NotSupported | Forbidden | TooLong | Duplicate
    field: str
    value: Any = None
    detail: str = ""

    def body(self) -> str:
        prefix = _TYPES[self.type][1]
        if self.type in ("Required", "Forbidden", "TooLong"):
            return f"{prefix}: {self.detail}" if self.detail else prefix
        text = f"{prefix}: {_go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, str]:
        return {"reason": _TYPES[self.type][0], "message": self.body(), "field": self.field}


def required(path: str, detail: str = "") -> FieldError:
    return FieldError("Required", path, None, detail)


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("Invalid", path, value, detail)


def not_supported(path: str, value: Any, supported: list[str]) -> FieldError:
    return FieldError("NotSupported", path, value, "supported values: " + ", ".join(f'"{s}"' for s in supported))


def invalid_error(res: Resource, name: str, errs: list[FieldError]) -> errors.StatusError:
    text = str(errs[0]) if len(errs) == 1 else "[" + ", ".join(str(e) for e in errs) + "]"
    details: dict[str, Any] = {"name": name, "kind": res.kind, "causes": [e.cause() for e in errs]}
    if res.group:
        details["group"] = res.group
    return errors.StatusError(422, "Invalid", f'{res.kind} "{name}" is invalid: {text}', details)


# --- names, labels -------------------------------------------------------------------------


def name_errors(rule: str, value: str, path: str) -> list[FieldError]:
    limit, msg = {"label": (63, DNS1123_LABEL_MSG), "dns1035": (63, DNS1035_LABEL_MSG),
                  "subdomain": (253, DNS1123_SUBDOMAIN_MSG)}[rule]
    out = []
    if len(value) > limit:
        out.append(invalid(path, value, f"must be no more than {limit} characters"))
    if not _RE[rule].match(value):
        out.append(invalid(path, value, msg))
    return out


def qualified_name_errors(key: str, path: str) -> list[FieldError]:
    prefix, _, name = key.rpartition("/")
    out = []
    if "/" in key and not prefix:
        out.append(invalid(path, key, "prefix part must be non-empty"))
    elif prefix:
        out.extend(invalid(path, key, "prefix part " + e.detail) for e in name_errors("subdomain", prefix, path))
    if not name:
        out.append(invalid(path, key, "name part must be non-empty"))
    else:
        if len(name) > 63:
            out.append(invalid(path, key, "name part must be no more than 63 characters"))
        if not _RE["qualified"].match(name):
            out.append(invalid(path, key, QUALIFIED_NAME_MSG))
    return out


def _labels(labels: Any, path: str) -> list[FieldError]:
    if labels is None:
        return []
    if not isinstance(labels, Mapping):
        return [invalid(path, labels, "must be a map of string keys to string values")]
    out = []
    for key, value in labels.items():
        out += qualified_name_errors(str(key), path)
        if not isinstance(value, str):
            out.append(invalid(f"{path}", value, "label values must be strings"))
            continue
        if len(value) > 63:
            out.append(invalid(path, value, "must be no more than 63 characters"))
        if not _RE["value"].match(value):
            out.append(invalid(path, value, LABEL_VALUE_MSG))
    return out


def metadata_errors(res: Resource, obj: Mapping[str, Any]) -> list[FieldError]:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return [required("metadata")]
    out: list[FieldError] = []
    name = meta.get("name")
    if not name:
        out.append(required("metadata.name", "name or generateName is required"))
    elif not isinstance(name, str):
        out.append(invalid("metadata.name", name, "must be a string"))
    else:
        out += name_errors(res.name_rule, name, "metadata.name")
    ns = meta.get("namespace")
    if res.namespaced:
        if not ns:
            out.append(required("metadata.namespace"))
        elif not isinstance(ns, str):
            out.append(invalid("metadata.namespace", ns, "must be a string"))
        else:
            out += name_errors("label", ns, "metadata.namespace")
    elif ns:
        out.append(FieldError("Forbidden", "metadata.namespace", ns, "not allowed on this type"))
    out += _labels(meta.get("labels"), "metadata.labels")
    ann = meta.get("annotations")
    if ann is not None:
        if not isinstance(ann, Mapping) or not all(isinstance(v, str) for v in ann.values()):
            out.append(invalid("metadata.annotations", ann, "must be a map of string keys to string values"))
        else:
            for key in ann:
                out += qualified_name_errors(str(key), "metadata.annotations")
    return out


# --- apiVersion / kind against the path ------------------------------------------------------


def check_type(res: Resource, obj: Any) -> None:
    """The body must be an object of the path's kind; missing apiVersion/kind default to it
    (the API server decodes with the endpoint's group-version-kind as the default)."""
    if not isinstance(obj, dict):
        raise errors.bad_request(f"the body of the request is not a {res.kind} object "
                                 f"(got {type(obj).__name__})")
    api_version = obj.get("apiVersion") or res.api_version
    kind = obj.get("kind") or res.kind
    if api_version != res.api_version:
        raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                 f"API version ({res.api_version})")
    if kind != res.kind:
        raise errors.bad_request(f"{kind} in version \"{res.version}\" cannot be handled as a {res.kind}: "
                                 f"the kind in the data ({kind}) does not match the expected kind ({res.kind})")
    for field in ("spec", "status"):  # structs in every kind that has them: JSON decoding refuses the rest
        value = obj.get(field)
        if value is not None and not isinstance(value, dict):
            raise errors.bad_request(f"{res.kind} in version \"{res.version}\" cannot be handled as a {res.kind}: "
                                     f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                                     f"{res.kind}.{field}")


def _json_type(value: Any) -> str:
    """Go's encoding/json names for a JSON value's type in unmarshal errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# --- per-kind checks -------------------------------------------------------------------------

Check = Callable[[Mapping[str, Any], "Mapping[str, Any] | None"], list[FieldError]]
GroupKind = tuple[str, str]


def group_kind(key: str | GroupKind) -> GroupKind:
    """``(group, kind)``; a bare kind is Kubernetes' own (``NetworkPolicy`` =
    networking.k8s.io: Calico's is ``("projectcalico.org", "NetworkPolicy")``)."""
    if isinstance(key, tuple):
        return key
    res = BY_KIND.get(key)
    return (res.group if res is not None else "", key)


class _Validators(dict[GroupKind, list[Check]]):
    """Checks keyed by (group, kind) -- both API groups have a NetworkPolicy; a bare kind
    still works as a key and means Kubernetes' resource of that kind."""

    def __getitem__(self, key: str | GroupKind) -> list[Check]:
        return super().__getitem__(group_kind(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str | tuple) and super().__contains__(group_kind(key))

    def get(self, key: str | GroupKind, default: Any = None) -> Any:
        return super().get(group_kind(key), default)

    def setdefault(self, key: str | GroupKind, default: Any = None) -> Any:
        return super().setdefault(group_kind(key), default)


VALIDATORS: _Validators = _Validators()


def register_validator(kind: str, group: str | None = None) -> Callable[[Check], Check]:
    """Append a check for ``kind`` of ``group`` (None: Kubernetes' resource of that kind)."""
    key = group_kind(kind) if group is None else (group, kind)

    def deco(fn: Check) -> Check:
        VALIDATORS.setdefault(key, []).append(fn)
        return fn
    return deco


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(obj: Mapping[str, Any], key: str, path: str, errs: list[FieldError]) -> list[Any]:
    """``obj[key]`` as a list (absent = empty); anything else is an error naming the field."""
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        errs.append(invalid(path, value, "must be a list"))
        return []
    return value


def _port(value: Any, path: str, *, required_: bool = True) -> list[FieldError]:
    if value is None:
        return [required(path)] if required_ else []
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        return [invalid(path, value, "must be between 1 and 65535, inclusive")]
    return []


def _containers(spec: Mapping[str, Any], path: str) -> list[FieldError]:
    containers = spec.get("containers")
    if not containers:
        return [required(f"{path}.containers")]
    if not isinstance(containers, list):
        return [invalid(f"{path}.containers", containers, "must be a list")]
    out, seen = [], set()
    for i, c in enumerate(containers):
        where = f"{path}.containers[{i}]"
        c = _obj(c)
        name = c.get("name")
        if not name:
            out.append(required(f"{where}.name"))
        elif isinstance(name, str):
            out += name_errors("label", name, f"{where}.name")
            if name in seen:
                out.append(FieldError("Duplicate", f"{where}.name", name))
            seen.add(name)
        if not c.get("image"):
            out.append(required(f"{where}.image"))
        for j, p in enumerate(c.get("ports") or []):
            out += _port(_obj(p).get("containerPort"), f"{where}.ports[{j}].containerPort")
            protocol = _obj(p).get("protocol")
            if protocol is not None and protocol not in PROTOCOLS:
                out.append(not_supported(f"{where}.ports[{j}].protocol", protocol, PROTOCOLS))
    return out


@register_validator("Pod")
def _pod(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return [required("spec")]
    return _containers(spec, "spec")


SERVICE_TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]


@register_validator("Service")
def _service(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    spec = _obj(obj.get("spec"))
    out: list[FieldError] = []
    stype = spec.get("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        out.append(not_supported("spec.type", stype, SERVICE_TYPES))
    ports = _items(spec, "ports", "spec.ports", out)
    if not spec.get("ports") and stype != "ExternalName" and spec.get("clusterIP") != "None":
        out.append(required("spec.ports"))
    names: set[str] = set()
    for i, p in enumerate(ports):
        p = _obj(p)
        out += _port(p.get("port"), f"spec.ports[{i}].port")
        proto = p.get("protocol", "TCP")
        if proto not in ("TCP", "UDP", "SCTP"):
            out.append(not_supported(f"spec.ports[{i}].protocol", proto, ["SCTP", "TCP", "UDP"]))
        if len(ports) > 1 and not p.get("name"):
            out.append(required(f"spec.ports[{i}].name"))
        pname = p.get("name")
        if pname is not None and not isinstance(pname, str):
            out.append(invalid(f"spec.ports[{i}].name", pname, "must be a string"))
        elif pname in names:
            out.append(FieldError("Duplicate", f"spec.ports[{i}].name", pname))
        elif pname:
            names.add(pname)
    affinity = spec.get("sessionAffinity", "None")
    if affinity not in ("ClientIP", "None"):
        out.append(not_supported("spec.sessionAffinity", affinity, ["ClientIP", "None"]))
    return out


def _selector_matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    for k, v in _obj(selector.get("matchLabels")).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        expr = _obj(expr)
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        has = key in labels
        key = str(key)
        if (op == "In" and not (has and labels[key] in values)) or (op == "NotIn" and has and labels[key] in values) \
                or (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def _workload(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    spec = _obj(obj.get("spec"))
    out: list[FieldError] = []
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        out.append(invalid("spec.replicas", replicas, "must be greater than or equal to 0"))
    selector = spec.get("selector")
    if not isinstance(selector, Mapping) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        out.append(required("spec.selector"))
        selector = None
    template = _obj(spec.get("template"))
    labels = _obj(_obj(template.get("metadata")).get("labels"))
    if selector is not None and not _selector_matches(selector, labels):
        out.append(invalid("spec.template.metadata.labels", dict(labels), "`selector` does not match template `labels`"))
    if not isinstance(template.get("spec"), Mapping):
        out.append(required("spec.template.spec.containers"))
    else:
        out += _containers(template["spec"], "spec.template.spec")
    return out


register_validator("Deployment")(_workload)
register_validator("ReplicaSet")(_workload)


@register_validator("EndpointSlice")
def _endpointslice(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    out: list[FieldError] = []
    atype = obj.get("addressType")
    if not atype:
        out.append(required("addressType"))
    elif atype not in ("IPv4", "IPv6", "FQDN"):
        out.append(not_supported("addressType", atype, ["FQDN", "IPv4", "IPv6"]))
    for i, ep in enumerate(_items(obj, "endpoints", "endpoints", out)):
        addrs = _obj(ep).get("addresses")
        if addrs is not None and not isinstance(addrs, list):
            out.append(invalid(f"endpoints[{i}].addresses", addrs, "must be a list"))
        elif not addrs:
            out.append(required(f"endpoints[{i}].addresses", "must contain at least 1 address"))
        elif len(addrs) > 100:
            out.append(FieldError("TooLong", f"endpoints[{i}].addresses", None, "may not be more than 100"))
        elif atype in ("IPv4", "IPv6"):
            for j, a in enumerate(addrs):
                out += _ip(a, f"endpoints[{i}].addresses[{j}]", 4 if atype == "IPv4" else 6)
    for i, p in enumerate(_items(obj, "ports", "ports", out)):
        out += _port(_obj(p).get("port"), f"ports[{i}].port", required_=False)
    return out


def _ip(value: Any, path: str, family: int | None = None) -> list[FieldError]:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return [invalid(path, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")]
    if family is not None and addr.version != family:
        return [invalid(path, value, f"must be an IPv{family} address")]
    return []


@register_validator("Endpoints")
def _endpoints(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    out: list[FieldError] = []
    for i, subset in enumerate(_items(obj, "subsets", "subsets", out)):
        subset = _obj(subset)
        for key in ("addresses", "notReadyAddresses"):
            for j, a in enumerate(_items(subset, key, f"subsets[{i}].{key}", out)):
                ip = _obj(a).get("ip")
                out += [required(f"subsets[{i}].{key}[{j}].ip")] if not ip else _ip(ip, f"subsets[{i}].{key}[{j}].ip")
        for j, p in enumerate(_items(subset, "ports", f"subsets[{i}].ports", out)):
            out += _port(_obj(p).get("port"), f"subsets[{i}].ports[{j}].port")
    return out


@register_validator("Lease")
def _lease(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    spec = _obj(obj.get("spec"))
    d = spec.get("leaseDurationSeconds")
    if d is not None and (not isinstance(d, int) or isinstance(d, bool) or d <= 0):
        return [invalid("spec.leaseDurationSeconds", d, "must be greater than 0")]
    return []


TAINT_EFFECTS = ["NoExecute", "NoSchedule", "PreferNoSchedule"]


@register_validator("Node")
def _node(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    spec = _obj(obj.get("spec"))
    out: list[FieldError] = []
    for i, cidr in enumerate(_items(spec, "podCIDRs", "spec.podCIDRs", out)):
        try:
            ipaddress.ip_network(cidr)
        except (TypeError, ValueError):
            out.append(invalid(f"spec.podCIDRs[{i}]", cidr, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or "
                                                             "2001:db8::/64)"))
    for i, taint in enumerate(_items(spec, "taints", "spec.taints", out)):
        taint = _obj(taint)
        if not taint.get("key"):
            out.append(required(f"spec.taints[{i}].key"))
        if not isinstance(taint.get("effect"), str) or taint.get("effect") not in TAINT_EFFECTS:
            out.append(not_supported(f"spec.taints[{i}].effect", taint.get("effect"), TAINT_EFFECTS))
    return out


@register_validator("NetworkPolicy")
def _netpol(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    out: list[FieldError] = []
    for i, t in enumerate(_items(_obj(obj.get("spec")), "policyTypes", "spec.policyTypes", out)):
        if t not in ("Ingress", "Egress"):
            out.append(not_supported(f"spec.policyTypes[{i}]", t, ["Egress", "Ingress"]))
    return out


@register_validator("Ingress")
def _ingress(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    spec = _obj(obj.get("spec"))
    if not spec.get("rules") and not spec.get("defaultBackend"):
        return [invalid("spec", spec, "either `defaultBackend` or `rules` must be specified")]
    return []


def _data_keys(data: Any, path: str) -> list[FieldError]:
    if data is not None and not isinstance(data, Mapping):
        return [invalid(path, data, "must be a map of string keys to string values")]
    out = []
    for key in _obj(data):
        if len(key) > 253:
            out.append(invalid(f"{path}[{key}]", key, "must be no more than 253 characters"))
        if not _RE["configkey"].match(key):
            out.append(invalid(f"{path}[{key}]", key, CONFIG_KEY_MSG))
    return out


@register_validator("ConfigMap")
def _configmap(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    return _data_keys(obj.get("data"), "data") + _data_keys(obj.get("binaryData"), "binaryData")


@register_validator("Secret")
def _secret(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    out = _data_keys(obj.get("data"), "data")
    for key, value in _obj(obj.get("data")).items():
        if not isinstance(value, str):
            out.append(invalid(f"data[{key}]", "<secret contents redacted>", "must be a base64 string"))
            continue
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            out.append(invalid(f"data[{key}]", "<secret contents redacted>", "illegal base64 data"))
    return out


@register_validator("Event")
def _event(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    inv = obj.get("involvedObject")
    if not isinstance(inv, Mapping):
        return [required("involvedObject")]
    ns = _obj(obj.get("metadata")).get("namespace")
    if inv.get("namespace") and inv.get("namespace") != ns:  # (a list never equals a string)
        return [invalid("involvedObject.namespace", inv.get("namespace"), "does not match event.namespace")]
    return []


# --- step 3: deeper Pod, Service and Deployment checks (k8s.io/kubernetes pkg/apis/core/validation)


PROTOCOLS = ["SCTP", "TCP", "UDP"]
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def port_name_errors(value: str, path: str) -> list[FieldError]:
    """``IsValidPortName`` (IANA_SVC_NAME): what a named targetPort / containerPort name must be."""
    out = []
    if len(value) > 15:
        out.append(invalid(path, value, "must be no more than 15 characters"))
    if not re.match(r"^[-a-z0-9]+$", value):
        out.append(invalid(path, value, "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"))
    if "--" in value:
        out.append(invalid(path, value, "must not contain consecutive hyphens"))
    if value and not re.search(r"[a-z]", value):
        out.append(invalid(path, value, "must contain at least one letter (a-z)"))
    if value.startswith("-") or value.endswith("-"):
        out.append(invalid(path, value, "must not begin or end with a hyphen"))
    return out


def _pod_spec(spec: Mapping[str, Any], path: str) -> list[FieldError]:
    out: list[FieldError] = []
    containers = spec.get("containers")
    for i, c in enumerate(containers if isinstance(containers, list) else []):
        for j, p in enumerate(_items(_obj(c), "ports", f"{path}.containers[{i}].ports", out)):
            p = _obj(p)
            proto = p.get("protocol", "TCP")
            if proto not in PROTOCOLS:
                out.append(not_supported(f"{path}.containers[{i}].ports[{j}].protocol", proto, PROTOCOLS))
            if p.get("name") is not None:
                out += port_name_errors(str(p["name"]), f"{path}.containers[{i}].ports[{j}].name")
    out += _labels(spec.get("nodeSelector"), f"{path}.nodeSelector")
    for i, t in enumerate(_items(spec, "tolerations", f"{path}.tolerations", out)):
        t = _obj(t)
        where = f"{path}.tolerations[{i}]"
        op = t.get("operator") or "Equal"
        if op not in ("Equal", "Exists"):
            out.append(not_supported(f"{where}.operator", op, ["Equal", "Exists"]))
        elif op == "Exists" and t.get("value"):
            out.append(invalid(f"{where}.operator", t.get("value"), "value must be empty when `operator` is 'Exists'"))
        effect = t.get("effect")
        if effect and effect not in TAINT_EFFECTS:
            out.append(not_supported(f"{where}.effect", effect, TAINT_EFFECTS))
        if t.get("tolerationSeconds") is not None and effect != "NoExecute":
            out.append(invalid(f"{where}.effect", effect or "",
                               "effect must be 'NoExecute' when `tolerationSeconds` is set"))
    return out


@register_validator("Pod")
def _pod_deep(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    spec = obj.get("spec")
    return _pod_spec(spec, "spec") if isinstance(spec, Mapping) else []


def _externally_accessible(spec: Mapping[str, Any]) -> bool:
    stype = spec.get("type") or "ClusterIP"
    return stype in ("NodePort", "LoadBalancer") or (stype == "ClusterIP" and bool(spec.get("externalIPs")))


@register_validator("Service")
def _service_deep(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    spec = _obj(obj.get("spec"))
    out: list[FieldError] = []
    stype = spec.get("type") or "ClusterIP"
    selector = spec.get("selector")
    if selector is not None and not isinstance(selector, Mapping):
        out.append(invalid("spec.selector", selector, "must be a map of string keys to string values"))
    else:
        out += _labels(selector, "spec.selector")
    if stype == "ExternalName" and not spec.get("externalName"):
        out.append(required("spec.externalName"))
    ports = spec.get("ports")
    for i, p in enumerate(ports if isinstance(ports, list) else []):
        p = _obj(p)
        target = p.get("targetPort")
        if isinstance(target, str):
            out += port_name_errors(target, f"spec.ports[{i}].targetPort")
        elif target is not None:
            out += _port(target, f"spec.ports[{i}].targetPort")
        if p.get("nodePort") not in (None, 0):
            out += _port(p.get("nodePort"), f"spec.ports[{i}].nodePort")
            if stype not in ("NodePort", "LoadBalancer"):
                out.append(FieldError("Forbidden", f"spec.ports[{i}].nodePort", None,
                                      f"may not be used when `type` is '{stype}'"))
    etp = spec.get("externalTrafficPolicy")
    if not _externally_accessible(spec):
        if etp:
            out.append(invalid("spec.externalTrafficPolicy", etp, "may only be set for externally-accessible services"))
    elif etp and etp not in ("Cluster", "Local"):
        out.append(not_supported("spec.externalTrafficPolicy", etp, ["Cluster", "Local"]))
    itp = spec.get("internalTrafficPolicy")
    if itp and itp not in ("Cluster", "Local"):
        out.append(not_supported("spec.internalTrafficPolicy", itp, ["Cluster", "Local"]))
    if spec.get("healthCheckNodePort") and not (stype == "LoadBalancer" and etp == "Local"):
        out.append(invalid("spec.healthCheckNodePort", spec.get("healthCheckNodePort"),
                           "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
    timeout = _obj(_obj(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 < timeout <= 86400):
        out.append(invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", timeout,
                           "must be greater than 0 and less than 86400"))
    cip = spec.get("clusterIP")
    if cip not in (None, "", "None"):
        out += _ip(cip, "spec.clusterIP")
    if old is not None:
        out += _service_update(spec, _obj(old.get("spec")))
    return out


def _service_update(spec: Mapping[str, Any], ospec: Mapping[str, Any]) -> list[FieldError]:
    """ClusterIPs cannot change once set, unless the type changes from/to ExternalName."""
    if "ExternalName" in (spec.get("type"), ospec.get("type")):
        return []
    new_ips = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
    old_ips = list(ospec.get("clusterIPs") or ([ospec["clusterIP"]] if ospec.get("clusterIP") else []))
    if len(new_ips) != len(old_ips):
        return []  # dual-stack upgrade/downgrade (step 5)
    return [invalid(f"spec.clusterIPs[{i}]", new_ips, "may not change once set")
            for i, (a, b) in enumerate(zip(old_ips, new_ips, strict=True)) if a != b]


_PERCENT = re.compile(r"^[0-9]+%$")


def _int_or_percent(value: Any, path: str) -> tuple[list[FieldError], int | None]:
    """(errors, value in percent or absolute; ``None`` if unset or invalid)."""
    if value is None:
        return [], None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            return [invalid(path, value, "must be greater than or equal to 0")], None
        return [], value
    if isinstance(value, str) and _PERCENT.match(value):
        return [], int(value[:-1])
    return [invalid(path, value, "a valid percent string must be a numeric string followed by an ending '%' "
                                 "(e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")], None


def _go_selector(sel: Mapping[str, Any]) -> str:
    labels = _obj(sel.get("matchLabels"))
    inner = ", ".join(f"{json.dumps(str(k))}:{json.dumps(str(v))}" for k, v in labels.items())
    ml = "map[string]string{" + inner + "}" if labels else "map[string]string(nil)"
    me = "[]v1.LabelSelectorRequirement(nil)" if not sel.get("matchExpressions") else \
        "[]v1.LabelSelectorRequirement{...}"
    return f"v1.LabelSelector{{MatchLabels:{ml}, MatchExpressions:{me}}}"


@register_validator("Deployment")
def _deployment_deep(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    spec = _obj(obj.get("spec"))
    out: list[FieldError] = []
    strategy = _obj(spec.get("strategy"))
    stype = strategy.get("type", "RollingUpdate")
    if stype not in ("Recreate", "RollingUpdate"):
        out.append(not_supported("spec.strategy.type", stype, ["Recreate", "RollingUpdate"]))
    ru = strategy.get("rollingUpdate")
    if stype == "Recreate" and ru is not None:
        out.append(FieldError("Forbidden", "spec.strategy.rollingUpdate", None,
                              "may not be specified when strategy `type` is 'Recreate'"))
    elif isinstance(ru, Mapping):
        path = "spec.strategy.rollingUpdate"
        e1, surge = _int_or_percent(ru.get("maxSurge"), f"{path}.maxSurge")
        e2, unavail = _int_or_percent(ru.get("maxUnavailable"), f"{path}.maxUnavailable")
        out += e1 + e2
        if surge == 0 and unavail == 0:
            out.append(invalid(f"{path}.maxUnavailable", ru.get("maxUnavailable"), "may not be 0 when `maxSurge` is 0"))
        if isinstance(ru.get("maxUnavailable"), str) and unavail is not None and unavail > 100:
            out.append(invalid(f"{path}.maxUnavailable", ru.get("maxUnavailable"), "must not be greater than 100%"))
    tspec = _obj(_obj(spec.get("template")).get("spec"))
    if tspec:
        rp = tspec.get("restartPolicy", "Always")
        if rp != "Always":
            out.append(not_supported("spec.template.spec.restartPolicy", rp, ["Always"]))
        out += _pod_spec(tspec, "spec.template.spec")
    if old is not None:
        osel = _obj(_obj(old.get("spec")).get("selector"))
        sel = spec.get("selector")
        if isinstance(sel, Mapping) and osel and dict(sel) != dict(osel):
            out.append(invalid("spec.selector", _GoRepr(_go_selector(sel)), "field is immutable"))
    return out


class _GoRepr(str):
    """A value already in Go's ``%#v`` form (printed as is)."""


# --- network policy: both groups, through the policy model (agents/policy/model.py) ----------

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _value_at(obj: Any, path: str) -> Any:
    """The value at a field path such as ``spec.ingress[0].from[1].ipBlock.cidr`` (None if absent)."""
    cur = obj
    for name, index in _PATH_PART.findall(path):
        if name:
            cur = cur.get(name) if isinstance(cur, Mapping) else None
        else:
            cur = cur[int(index)] if isinstance(cur, list) and int(index) < len(cur) else None
        if cur is None:
            return None
    return cur


def _policy_errors(obj: Mapping[str, Any], convert: Callable[[Mapping[str, Any]], Any],
                   skip: tuple[str, ...] = ()) -> list[FieldError]:
    """The policy model's verdict on ``obj`` as one field error naming the field (and, for a
    selector, the position in the expression)."""
    try:
        convert(obj)
    except NotImplementedError:
        return []
    except ValueError as exc:  # PolicyError | SelectorError: "<path>: <message>"
        path = str(getattr(exc, "path", "") or "spec")
        if any(path.startswith(p) for p in skip):
            return []  # reported by an earlier check, in upstream's words
        text = str(exc)
        detail = text[len(path) + 2:] if text.startswith(path + ": ") else text
        value = _value_at(obj, path)
        return [invalid(path, "" if value is None else value, detail)]
    return []


@register_validator("NetworkPolicy")
def _netpol_model(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    from agents.policy.model import from_kubernetes

    return _policy_errors(obj, from_kubernetes, skip=("spec.policyTypes",))


def _calico_policy(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    from agents.policy.model import from_calico

    return _policy_errors(obj, from_calico)


CALICO = "projectcalico.org"
register_validator("NetworkPolicy", CALICO)(_calico_policy)
register_validator("GlobalNetworkPolicy", CALICO)(_calico_policy)
ENCAP_MODES = ["Always", "CrossSubnet", "Never"]


@register_validator("IPPool", CALICO)
def _ippool(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    """Calico's IPPool checks: a CIDR, a block size that fits it (v4 20..32, v6 116..128),
    encapsulation modes, at most one of IPIP and VXLAN."""
    spec = _obj(obj.get("spec"))
    out: list[FieldError] = []
    cidr = spec.get("cidr")
    net = None
    if not cidr:
        out.append(required("spec.cidr"))
    else:
        try:
            net = ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            out.append(invalid("spec.cidr", cidr, "must be a valid CIDR"))
    size = spec.get("blockSize")
    if size is not None and net is not None:
        lo, hi = (20, 32) if net.version == 4 else (116, 128)
        if not isinstance(size, int) or isinstance(size, bool) or not lo <= size <= hi:
            out.append(invalid("spec.blockSize", size, f"must be between {lo} and {hi} for an IPv{net.version} pool"))
        elif size < net.prefixlen:
            out.append(invalid("spec.blockSize", size, f"must not be smaller than the pool's prefix /{net.prefixlen}"))
    for key in ("vxlanMode", "ipipMode"):
        mode = spec.get(key)
        if mode is not None and mode not in ENCAP_MODES:
            out.append(not_supported(f"spec.{key}", mode, ENCAP_MODES))
    if spec.get("vxlanMode") not in (None, "Never") and spec.get("ipipMode") not in (None, "Never"):
        out.append(invalid("spec.vxlanMode", spec.get("vxlanMode"), "IPIP and VXLAN cannot both be enabled"))
    for key in ("natOutgoing", "disabled"):
        if spec.get(key) is not None and not isinstance(spec.get(key), bool):
            out.append(invalid(f"spec.{key}", spec.get(key), "must be a boolean"))
    if spec.get("nodeSelector") is not None:
        out += _selector_field(spec.get("nodeSelector"), "spec.nodeSelector")
    return out


def _selector_field(text: Any, path: str) -> list[FieldError]:
    from agents.policy.selector import parse_selector

    if not isinstance(text, str):
        return [invalid(path, text, "must be a selector expression string")]
    try:
        parse_selector(text)
    except ValueError as exc:
        return [invalid(path, text, str(exc))]
    return []


@register_validator("HostEndpoint", CALICO)
def _hostendpoint(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    """Calico's HostEndpoint: ``node`` required; ``interfaceName`` or ``expectedIPs`` given."""
    spec = _obj(obj.get("spec"))
    out: list[FieldError] = []
    if not spec.get("node"):
        out.append(required("spec.node"))
    ips = _items(spec, "expectedIPs", "spec.expectedIPs", out)
    for i, ip in enumerate(ips):
        try:
            ipaddress.ip_address(str(ip))
        except ValueError:
            out.append(invalid(f"spec.expectedIPs[{i}]", ip, "must be a valid IP address"))
    if not spec.get("interfaceName") and not ips:
        out.append(required("spec.interfaceName", "at least one of interfaceName and expectedIPs must be specified"))
    for i, p in enumerate(_items(spec, "ports", "spec.ports", out)):
        out += _port(_obj(p).get("port"), f"spec.ports[{i}].port")
    return out


# --- entry point ---------------------------------------------------------------------------


def validate(res: Resource, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
    """Raise 422 Invalid listing every field error of ``obj`` (``old``: the stored object on update)."""
    errs = metadata_errors(res, obj)
    for check in VALIDATORS.get(res.group_kind, ()):
        errs += check(obj, old)
    if errs:
        name = _obj(obj.get("metadata")).get("name") or ""
        raise invalid_error(res, str(name), errs)

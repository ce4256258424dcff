"""Label and field selectors (k8s.io/apimachinery ``labels`` and ``fields``), sans-IO.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``,
joined by commas (every requirement must hold).  Field selectors: ``path=value``,
``path==value``, ``path!=value`` on dotted paths (``metadata.name``, ``spec.nodeName``).
A selector that does not parse raises ``ValueError`` with the apimachinery-like reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_KEY = re.compile(r"^([a-z0-9A-Z.\-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and value in self.values
        return not has or value not in self.values  # "!=" and "notin" match a missing key


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _check_key(key: str) -> str:
    if not key or not _KEY.match(key):
        raise ValueError(f"unable to parse requirement: invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise ValueError(f"unable to parse requirement: invalid label value: {value!r}")
    return value


_SET = re.compile(r"^(\S+)\s+(in|notin)\s*\((.*)\)$")


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    if not text or not text.strip():
        return ()
    reqs = []
    for part in _split_top(text):
        if not part:
            raise ValueError(f"unable to parse requirement: empty requirement in {text!r}")
        m = _SET.match(part)
        if m:
            values = tuple(_check_value(v.strip()) for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(_check_key(m.group(1)), m.group(2), values))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            reqs.append(Requirement(_check_key(key.strip()), "!=", (_check_value(value.strip()),)))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            reqs.append(Requirement(_check_key(key.strip()), "=", (_check_value(value.strip()),)))
        elif part.startswith("!"):
            reqs.append(Requirement(_check_key(part[1:].strip()), "!"))
        else:
            reqs.append(Requirement(_check_key(part), "exists"))
    return tuple(reqs)


def labels_match(reqs: tuple[Requirement, ...], obj: Mapping[str, Any]) -> bool:
    if not reqs:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: tuple[str, ...]
    equal: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        cur: Any = obj
        for step in self.path:
            cur = cur.get(step) if isinstance(cur, Mapping) else None
        text = "" if cur is None else (str(cur).lower() if isinstance(cur, bool) else str(cur))
        return (text == self.value) == self.equal


def parse_field_selector(text: str | None) -> tuple[FieldRequirement, ...]:
    if not text or not text.strip():
        return ()
    reqs = []
    for part in _split_top(text):
        if "!=" in part:
            key, value, equal = *part.split("!=", 1), False
        elif "==" in part:
            key, value, equal = *part.split("==", 1), True
        elif "=" in part:
            key, value, equal = *part.split("=", 1), True
        else:
            raise ValueError(f"invalid selector: '{part}'; can't understand '{part}'")
        key = key.strip()
        if not key or not all(key.split(".")):
            raise ValueError(f"invalid selector: '{part}'; field label not supported: {key}")
        reqs.append(FieldRequirement(tuple(key.split(".")), equal, value.strip()))
    return tuple(reqs)


def fields_match(reqs: tuple[FieldRequirement, ...], obj: Mapping[str, Any]) -> bool:
    return all(r.matches(obj) for r in reqs)

"""Calico's selector language and Kubernetes ``LabelSelector`` conversion (sans-IO).

Grammar (as libcalico-go's ``lib/selector`` tokenizer/parser accept it)::

    expr      := and_expr ( "||" and_expr )*          # lowest precedence
    and_expr  := operation ( "&&" operation )*
    operation := "!"* ( "(" expr ")" | "all()" | "global()" | "has(" LABEL ")"
                      | LABEL "==" STR | LABEL "!=" STR
                      | LABEL "in" "{" [STR ("," STR)*] "}" | LABEL "not in" "{" ... "}"
                      | LABEL "contains" STR | LABEL "starts with" STR | LABEL "ends with" STR )
    LABEL     := [a-zA-Z0-9_./-]+
    STR       := '...' | "..."                        # no escapes, as Calico

Semantics (Calico's): ``k != 'v'`` and ``k not in {...}`` also match when ``k`` is absent;
``==``, ``in``, ``contains``, ``starts with``, ``ends with`` need the label; ``""`` and
``all()`` match everything. ``global()`` evaluates true on any label set; as a rule's
``namespaceSelector`` Calico gives it the meaning "non-namespaced endpoints" (host endpoints,
network sets) — :attr:`Selector.is_global` lets the engine apply that.

A :class:`Selector` is immutable and hashable; equality is on the normalized tree (flattened
``&&``/``||``, sorted set literals), ``str()`` is canonical and re-parses to an equal selector.
:meth:`Selector.matches` runs a closure compiled once at parse time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "ALL",
    "NOTHING",
    "Selector",
    "SelectorError",
    "label_selector",
    "parse_selector",
]

Labels = Mapping[str, str]
Node = tuple[Any, ...]


class SelectorError(ValueError):
    """A selector that does not parse (or a LabelSelector that does not convert).

    ``str()``: ``selector 'app == ': position 7: expected a string literal`` — or, for a
    Kubernetes LabelSelector, ``<path>: <message>`` (``path`` like ``matchExpressions[0].values``).
    """

    def __init__(self, expression: str, position: int, message: str, *, path: str | None = None) -> None:
        self.expression = expression
        self.position = position
        self.message = message
        self.path = path
        if path is not None:
            text = f"{path}: {message}"
        else:
            text = f"selector {expression!r}: position {position}: {message}"
        super().__init__(text)


# --------------------------------------------------------------------------- tokenizer

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
_WS = " \t\n\r"

# token kinds
_LABEL, _STR, _LBRACE, _RBRACE, _COMMA, _EQ, _NE, _IN, _NOTIN, _NOT = range(10)
_CONTAINS, _STARTS, _ENDS, _ALLF, _HAS, _LPAREN, _RPAREN, _AND, _OR, _GLOBAL, _EOF = range(10, 21)

_BINARY_OPS = {_EQ: "eq", _NE: "ne", _CONTAINS: "contains", _STARTS: "starts", _ENDS: "ends"}


def _ident_end(text: str, i: int) -> int:
    n = len(text)
    j = i
    while j < n and text[j] in _LABEL_CHARS:
        j += 1
    return j


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _tokenize(text: str) -> list[tuple[int, str, int]]:
    """(kind, value, position) triples ending with an EOF token."""
    toks: list[tuple[int, str, int]] = []
    n = len(text)
    i = 0
    while True:
        i = _skip_ws(text, i)
        if i >= n:
            toks.append((_EOF, "", n))
            return toks
        c = text[i]
        last = toks[-1][0] if toks else None
        if c == "(":
            toks.append((_LPAREN, "", i))
            i += 1
        elif c == ")":
            toks.append((_RPAREN, "", i))
            i += 1
        elif c in "\"'":
            end = text.find(c, i + 1)
            if end < 0:
                raise SelectorError(text, i, f"unterminated string literal (no closing {c})")
            toks.append((_STR, text[i + 1 : end], i))
            i = end + 1
        elif c == "{":
            toks.append((_LBRACE, "", i))
            i += 1
        elif c == "}":
            toks.append((_RBRACE, "", i))
            i += 1
        elif c == ",":
            toks.append((_COMMA, "", i))
            i += 1
        elif c == "=":
            if text.startswith("==", i):
                toks.append((_EQ, "", i))
                i += 2
            else:
                raise SelectorError(text, i, "expected '=='")
        elif c == "!":
            if text.startswith("!=", i):
                toks.append((_NE, "", i))
                i += 2
            else:
                toks.append((_NOT, "", i))
                i += 1
        elif c == "&":
            if text.startswith("&&", i):
                toks.append((_AND, "", i))
                i += 2
            else:
                raise SelectorError(text, i, "expected '&&'")
        elif c == "|":
            if text.startswith("||", i):
                toks.append((_OR, "", i))
                i += 2
            else:
                raise SelectorError(text, i, "expected '||'")
        elif last == _LABEL:
            # after a label: an operator word
            i = _operator_word(text, i, toks)
        elif text.startswith("has(", i):
            j = _skip_ws(text, i + 4)
            k = _ident_end(text, j)
            if k == j:
                raise SelectorError(text, j, "expected a label name in has()")
            m = _skip_ws(text, k)
            if m >= n or text[m] != ")":
                raise SelectorError(text, m, "expected ')' to close has(")
            toks.append((_HAS, text[j:k], i))
            i = m + 1
        elif text.startswith("all(", i) or text.startswith("global(", i):
            word = "all" if text.startswith("all(", i) else "global"
            m = _skip_ws(text, i + len(word) + 1)
            if m >= n or text[m] != ")":
                raise SelectorError(text, m, f"expected ')' to close {word}(")
            toks.append((_ALLF if word == "all" else _GLOBAL, "", i))
            i = m + 1
        elif c in _LABEL_CHARS:
            k = _ident_end(text, i)
            toks.append((_LABEL, text[i:k], i))
            i = k
        else:
            raise SelectorError(
                text, i, f"unexpected character {c!r}: expected a label, '(', '!', has(), all() or global()"
            )


_OPERATOR_EXPECTED = "expected an operator (==, !=, in, not in, contains, starts with, ends with)"


def _operator_word(text: str, i: int, toks: list[tuple[int, str, int]]) -> int:
    def word_at(j: int, w: str) -> bool:
        # the word must not run on into a longer identifier ("inx" is not "in")
        return text.startswith(w, j) and (j + len(w) >= len(text) or text[j + len(w)] not in _LABEL_CHARS)

    if word_at(i, "contains"):
        toks.append((_CONTAINS, "", i))
        return i + len("contains")
    for first, kind in (("starts", _STARTS), ("ends", _ENDS)):
        if word_at(i, first):
            j = _skip_ws(text, i + len(first))
            if not word_at(j, "with"):
                raise SelectorError(text, j, f"expected 'with' after '{first}'")
            toks.append((kind, "", i))
            return j + 4
    if word_at(i, "not"):
        j = _skip_ws(text, i + 3)
        if not word_at(j, "in"):
            raise SelectorError(text, j, "expected 'in' after 'not'")
        toks.append((_NOTIN, "", i))
        return j + 2
    if word_at(i, "in"):
        toks.append((_IN, "", i))
        return i + 2
    raise SelectorError(text, i, _OPERATOR_EXPECTED)


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[int, str, int]:
        return self.toks[self.i]

    def error(self, message: str, tok: tuple[int, str, int] | None = None) -> SelectorError:
        tok = tok or self.peek()
        return SelectorError(self.text, tok[2], message)

    def parse(self) -> Node:
        if self.peek()[0] == _EOF:
            return ("all",)
        node = self.or_expr()
        if self.peek()[0] != _EOF:
            raise self.error("unexpected content at end of selector: expected '&&', '||' or the end")
        return node

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self.peek()[0] == _OR:
            self.i += 1
            parts.append(self.and_expr())
        return _mk("or", parts)

    def and_expr(self) -> Node:
        parts = [self.operation()]
        while self.peek()[0] == _AND:
            self.i += 1
            parts.append(self.operation())
        return _mk("and", parts)

    def operation(self) -> Node:
        negated = False
        while self.peek()[0] == _NOT:
            negated = not negated
            self.i += 1
        kind, value, _pos = tok = self.peek()
        node: Node
        if kind == _HAS:
            node = ("has", value)
            self.i += 1
        elif kind == _ALLF:
            node = ("all",)
            self.i += 1
        elif kind == _GLOBAL:
            node = ("global",)
            self.i += 1
        elif kind == _LPAREN:
            self.i += 1
            node = self.or_expr()
            if self.peek()[0] != _RPAREN:
                raise self.error("expected ')'")
            self.i += 1
        elif kind == _LABEL:
            self.i += 1
            op = self.peek()
            if op[0] in _BINARY_OPS:
                self.i += 1
                lit = self.peek()
                if lit[0] != _STR:
                    raise self.error("expected a string literal")
                self.i += 1
                node = (_BINARY_OPS[op[0]], value, lit[1])
            elif op[0] in (_IN, _NOTIN):
                self.i += 1
                if self.peek()[0] != _LBRACE:
                    raise self.error("expected '{' starting a set literal")
                self.i += 1
                values: list[str] = []
                while self.peek()[0] == _STR:
                    values.append(self.peek()[1])
                    self.i += 1
                    if self.peek()[0] == _COMMA:
                        self.i += 1
                        if self.peek()[0] != _STR:
                            raise self.error("expected a string literal after ','")
                    else:
                        break
                if self.peek()[0] != _RBRACE:
                    raise self.error("expected a string literal, ',' or '}'")
                self.i += 1
                node = ("in" if op[0] == _IN else "notin", value, tuple(sorted(set(values))))
            else:
                raise self.error(_OPERATOR_EXPECTED, op)
        elif kind == _EOF:
            raise self.error("unexpected end of selector: expected a label, '(', '!', has(), all() or global()")
        else:
            raise self.error("expected a label, '(', '!', has(), all() or global()", tok)
        return ("not", node) if negated else node


def _mk(op: str, parts: list[Node]) -> Node:
    if len(parts) == 1:
        return parts[0]
    flat: list[Node] = []
    for p in parts:
        if p[0] == op:
            flat.extend(p[1])
        else:
            flat.append(p)
    return (op, tuple(flat))


# --------------------------------------------------------------------------- compile / render


def _compile(node: Node) -> Callable[[Labels], bool]:
    op = node[0]
    if op in ("all", "global"):
        return lambda labels: True
    if op == "has":
        k = node[1]
        return lambda labels: k in labels
    if op == "eq":
        k, v = node[1], node[2]
        return lambda labels: labels.get(k) == v
    if op == "ne":
        k, v = node[1], node[2]
        return lambda labels: labels.get(k) != v
    if op == "in":
        k, vs = node[1], frozenset(node[2])
        return lambda labels: labels.get(k) in vs
    if op == "notin":
        k, vs = node[1], frozenset(node[2])
        return lambda labels: labels.get(k) not in vs
    if op in ("contains", "starts", "ends"):
        k, v = node[1], node[2]
        if op == "contains":
            def f(labels: Labels) -> bool:
                x = labels.get(k)
                return x is not None and v in x
        elif op == "starts":
            def f(labels: Labels) -> bool:
                x = labels.get(k)
                return x is not None and x.startswith(v)
        else:
            def f(labels: Labels) -> bool:
                x = labels.get(k)
                return x is not None and x.endswith(v)
        return f
    if op == "not":
        inner = _compile(node[1])
        return lambda labels: not inner(labels)
    if op in ("and", "or"):
        fns = tuple(_compile(c) for c in node[1])
        if len(fns) == 2:
            a, b = fns
            if op == "and":
                return lambda labels: a(labels) and b(labels)
            return lambda labels: a(labels) or b(labels)
        if op == "and":
            return lambda labels: all(fn(labels) for fn in fns)
        return lambda labels: any(fn(labels) for fn in fns)
    raise AssertionError(f"unknown selector node {node!r}")


def _quote(s: str) -> str:
    return f"'{s}'" if '"' in s else f'"{s}"'


_OP_TEXT = {"eq": " == ", "ne": " != ", "contains": " contains ", "starts": " starts with ", "ends": " ends with "}


def _render(node: Node) -> str:
    op = node[0]
    if op == "all":
        return "all()"
    if op == "global":
        return "global()"
    if op == "has":
        return f"has({node[1]})"
    if op in _OP_TEXT:
        return f"{node[1]}{_OP_TEXT[op]}{_quote(node[2])}"
    if op in ("in", "notin"):
        word = "in" if op == "in" else "not in"
        return f"{node[1]} {word} {{{', '.join(_quote(v) for v in node[2])}}}"
    if op == "not":
        inner = node[1]
        if inner[0] in ("has", "all", "global"):
            return "!" + _render(inner)
        return f"!({_render(inner)})"
    if op == "and":
        return " && ".join(f"({_render(c)})" if c[0] == "or" else _render(c) for c in node[1])
    if op == "or":
        return " || ".join(_render(c) for c in node[1])
    raise AssertionError(f"unknown selector node {node!r}")


class Selector:
    """A parsed selector: immutable, hashable, canonical ``str()``."""

    __slots__ = ("_node", "_fn", "_text", "_hash")
    _node: Node
    _fn: Callable[[Labels], bool]
    _text: str
    _hash: int

    def __init__(self, node: Node) -> None:
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_fn", _compile(node))
        object.__setattr__(self, "_text", _render(node))
        object.__setattr__(self, "_hash", hash(node))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Selector is immutable")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self._fn(labels)

    @property
    def node(self) -> Node:
        """The normalized tree (nested tuples), e.g. ``("and", (("eq", "a", "b"), ("has", "c")))``."""
        return self._node

    @property
    def is_all(self) -> bool:
        """True for ``""`` / ``all()`` (matches every label set)."""
        return self._node == ("all",)

    @property
    def is_global(self) -> bool:
        """True for ``global()``: as a namespaceSelector, "endpoints without a namespace"."""
        return self._node == ("global",)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Selector({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Selector):
            return NotImplemented
        return self._node == other._node

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        return (parse_selector, (self._text,))


ALL = Selector(("all",))
NOTHING = Selector(("not", ("all",)))

_CACHE: dict[str, Selector] = {}


def parse_selector(text: str) -> Selector:
    """Parse a Calico selector expression; raises :class:`SelectorError` with the position."""
    if not isinstance(text, str):
        raise SelectorError(repr(text), 0, f"expected a string, not {type(text).__name__}")
    sel = _CACHE.get(text)
    if sel is None:
        sel = Selector(_Parser(text).parse())
        if len(_CACHE) < 10000:
            _CACHE[text] = sel
    return sel


# --------------------------------------------------------------------------- Kubernetes LabelSelector

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _check_key(key: Any, path: str) -> str:
    if not isinstance(key, str) or not key:
        raise SelectorError("", 0, f"invalid label key {key!r}: must be a non-empty string", path=path)
    bad = [c for c in key if c not in _LABEL_CHARS]
    if bad:
        raise SelectorError("", 0, f"invalid label key {key!r}: character {bad[0]!r} not allowed", path=path)
    return key


def _check_value(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SelectorError("", 0, f"invalid label value {value!r}: must be a string", path=path)
    if '"' in value and "'" in value:
        raise SelectorError("", 0, f"invalid label value {value!r}: has both quote characters", path=path)
    return value


def label_selector(obj: Mapping[str, Any] | None) -> Selector:
    """Kubernetes ``LabelSelector`` → :class:`Selector` (``None`` or ``{}`` = everything).

    ``matchLabels`` → ``k == 'v'`` terms, ``matchExpressions`` → ``k in {..}`` (In),
    ``k not in {..}`` (NotIn: also matches when ``k`` is absent, as upstream), ``has(k)``
    (Exists), ``!has(k)`` (DoesNotExist); all AND'ed. In/NotIn need a non-empty ``values``,
    Exists/DoesNotExist must have none. Errors are :class:`SelectorError` with ``path``
    relative to the selector (``matchExpressions[0].operator``).
    """
    if obj is None:
        return ALL
    if not isinstance(obj, Mapping):
        raise SelectorError("", 0, f"expected a label selector object, not {type(obj).__name__}", path="")
    unknown = sorted(set(obj) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise SelectorError("", 0, f"unknown field {unknown[0]!r} (expected matchLabels, matchExpressions)",
                            path=unknown[0])
    terms: list[Node] = []
    ml = obj.get("matchLabels") or {}
    if not isinstance(ml, Mapping):
        raise SelectorError("", 0, "expected a map of label key to value", path="matchLabels")
    for k in sorted(ml):
        _check_key(k, f"matchLabels.{k}")
        terms.append(("eq", k, _check_value(ml[k], f"matchLabels.{k}")))
    me = obj.get("matchExpressions") or []
    if not isinstance(me, list):
        raise SelectorError("", 0, "expected a list", path="matchExpressions")
    for i, expr in enumerate(me):
        p = f"matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise SelectorError("", 0, "expected an object with key, operator, values", path=p)
        key = _check_key(expr.get("key"), f"{p}.key")
        op = expr.get("operator")
        values = expr.get("values")
        if op not in _OPERATORS:
            raise SelectorError("", 0, f"invalid operator {op!r}: expected one of {', '.join(_OPERATORS)}",
                                path=f"{p}.operator")
        if op in ("In", "NotIn"):
            if not values or not isinstance(values, list):
                raise SelectorError("", 0, f"operator {op} needs a non-empty list of values",
                                    path=f"{p}.values")
            vals = tuple(sorted({_check_value(v, f"{p}.values[{j}]") for j, v in enumerate(values)}))
            terms.append(("in" if op == "In" else "notin", key, vals))
        else:
            if values:
                raise SelectorError("", 0, f"operator {op} takes no values", path=f"{p}.values")
            terms.append(("has", key) if op == "Exists" else ("not", ("has", key)))
    if not terms:
        return ALL
    return Selector(_mk("and", terms))


def and_selectors(*selectors: Selector) -> Selector:
    """The conjunction of selectors (``all()`` terms dropped)."""
    parts = [s.node for s in selectors if not s.is_all]
    if not parts:
        return ALL
    return Selector(_mk("and", parts))

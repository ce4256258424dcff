"""Calico selector language and Kubernetes LabelSelector conversion (agents/policy/selector.py)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.policy.selector import (
    ALL,
    NOTHING,
    Selector,
    SelectorError,
    label_selector,
    parse_selector,
)

# (expression, labels, expected match)
MATCH_CASES = [
    ("", {}, True),
    ("all()", {"a": "b"}, True),
    ("global()", {}, True),
    ("app == 'web'", {"app": "web"}, True),
    ("app == 'web'", {"app": "db"}, False),
    ("app == 'web'", {}, False),
    ('app == "web"', {"app": "web"}, True),
    ("app != 'web'", {"app": "db"}, True),
    ("app != 'web'", {"app": "web"}, False),
    ("app != 'web'", {}, True),  # absent label matches !=
    ("app in {'a', 'b'}", {"app": "b"}, True),
    ("app in {'a', 'b'}", {"app": "c"}, False),
    ("app in {'a', 'b'}", {}, False),
    ("app in {}", {"app": ""}, False),
    ("app not in {'a', 'b'}", {"app": "c"}, True),
    ("app not in {'a', 'b'}", {"app": "a"}, False),
    ("app not in {'a', 'b'}", {}, True),  # absent label matches not in
    ("has(app)", {"app": ""}, True),
    ("has(app)", {"other": "x"}, False),
    ("!has(app)", {}, True),
    ("!has(app)", {"app": "x"}, False),
    ("! has( app )", {}, True),
    ("!!has(app)", {"app": "x"}, True),
    ("!app == 'x'", {"app": "x"}, False),
    ("!app == 'x'", {}, True),
    ("app contains 'eb'", {"app": "web"}, True),
    ("app contains 'zz'", {"app": "web"}, False),
    ("app contains ''", {}, False),
    ("app starts with 'we'", {"app": "web"}, True),
    ("app starts with 'eb'", {"app": "web"}, False),
    ("app ends with 'eb'", {"app": "web"}, True),
    ("app ends with 'we'", {"app": "web"}, False),
    ("app starts   with 'w'", {"app": "web"}, True),
    ("a == 'x' && b == 'y'", {"a": "x", "b": "y"}, True),
    ("a == 'x' && b == 'y'", {"a": "x", "b": "z"}, False),
    ("a == 'x' || b == 'y'", {"a": "q", "b": "y"}, True),
    ("a == 'x' || b == 'y'", {"a": "q", "b": "q"}, False),
    # precedence: && binds tighter than ||
    ("a == 'x' || b == 'y' && c == 'z'", {"a": "x"}, True),
    ("a == 'x' || b == 'y' && c == 'z'", {"b": "y"}, False),
    ("(a == 'x' || b == 'y') && c == 'z'", {"a": "x"}, False),
    ("(a == 'x' || b == 'y') && c == 'z'", {"a": "x", "c": "z"}, True),
    # ! binds tighter than && / ||
    ("!has(a) && has(b)", {"b": "1"}, True),
    ("!has(a) && has(b)", {"a": "1", "b": "1"}, False),
    ("!(has(a) && has(b))", {"a": "1"}, True),
    ("!(has(a) && has(b))", {"a": "1", "b": "1"}, False),
    # label keys with / . - _
    ("kubernetes.io/metadata.name == 'kube-system'", {"kubernetes.io/metadata.name": "kube-system"}, True),
    ("projectcalico.org/orchestrator == 'k8s' && my_key-1 == 'v'",
     {"projectcalico.org/orchestrator": "k8s", "my_key-1": "v"}, True),
    ("a == 'it\"s'", {"a": 'it"s'}, True),
    ('a == "it\'s"', {"a": "it's"}, True),
    ("\ta=='x'&&b!='y'", {"a": "x"}, True),
]


@pytest.mark.parametrize("expr,labels,expected", MATCH_CASES)
def test_matches(expr: str, labels: dict[str, str], expected: bool) -> None:
    sel = parse_selector(expr)
    assert sel.matches(labels) is expected
    # the canonical form means the same thing
    again = parse_selector(str(sel))
    assert again == sel
    assert again.matches(labels) is expected


CANONICAL = [
    ("", "all()"),
    ("  all( )  ", "all()"),
    ("app=='web'", 'app == "web"'),
    ("a in {'b','a','b'}", 'a in {"a", "b"}'),
    ("a not in { 'x' }", 'a not in {"x"}'),
    ("!has(a)", "!has(a)"),
    ("!a == 'x'", '!(a == "x")'),
    ("a == 'x' || (b == 'y' || c == 'z')", 'a == "x" || b == "y" || c == "z"'),
    ("(a == 'x' || b == 'y') && c == 'z'", '(a == "x" || b == "y") && c == "z"'),
    ("a == 'x' || b == 'y' && c == 'z'", 'a == "x" || b == "y" && c == "z"'),
    ("a == 'say \"hi\"'", "a == 'say \"hi\"'"),
    ("x starts with 'a' && y ends with 'b' && z contains 'c'",
     'x starts with "a" && y ends with "b" && z contains "c"'),
]


@pytest.mark.parametrize("expr,canonical", CANONICAL)
def test_canonical_str(expr: str, canonical: str) -> None:
    assert str(parse_selector(expr)) == canonical


def test_equality_hash_and_constants() -> None:
    a = parse_selector("a == 'x' && b in {'2', '1'}")
    b = parse_selector('a=="x"&&b in {"1","2"}')
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert parse_selector("a == 'x'") != parse_selector("a == 'y'")
    assert ALL == parse_selector("") == parse_selector("all()")
    assert ALL.is_all and not NOTHING.is_all
    assert not NOTHING.matches({}) and not NOTHING.matches({"a": "b"})
    assert parse_selector("global()").is_global and not ALL.is_global
    assert isinstance(a, Selector)
    with pytest.raises(AttributeError):
        a._text = "x"
    assert pickle.loads(pickle.dumps(a)) == a


# (expression, position, fragment of the message)
ERROR_CASES = [
    ("app == ", 7, "expected a string literal"),
    ("app ==", 6, "expected a string literal"),
    ("app == web", 7, "expected a string literal"),
    ("app = 'x'", 4, "expected '=='"),
    ("app", 3, "expected an operator"),
    ("app foo 'x'", 4, "expected an operator"),
    ("app in 'x'", 7, "expected '{'"),
    ("app in {'x'", 11, "expected a string literal, ',' or '}'"),
    ("app in {'x',}", 12, "expected a string literal after ','"),
    ("app not 'x'", 8, "expected 'in' after 'not'"),
    ("app starts 'x'", 11, "expected 'with'"),
    ("app == 'x", 7, "unterminated string"),
    ("(app == 'x'", 11, "expected ')'"),
    ("app == 'x')", 10, "unexpected content at end"),
    ("app == 'x' b == 'y'", 11, "unexpected content at end"),
    ("a == 'x' & b == 'y'", 9, "expected '&&'"),
    ("a == 'x' | b == 'y'", 9, "expected '||'"),
    ("a == 'x' &&", 11, "unexpected end of selector"),
    ("has()", 4, "expected a label name in has()"),
    ("has(a", 5, "expected ')' to close has("),
    ("all(x)", 4, "expected ')' to close all("),
    ("global(", 7, "expected ')' to close global("),
    ("!", 1, "unexpected end of selector"),
    ("a == 'x' && $b", 12, "unexpected character '$'"),
    ("&& a == 'x'", 0, "expected a label"),
    ("()", 1, "expected a label"),
]


@pytest.mark.parametrize("expr,position,fragment", ERROR_CASES)
def test_errors_name_position(expr: str, position: int, fragment: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(expr)
    err = info.value
    assert err.position == position, str(err)
    assert err.expression == expr
    assert fragment in err.message
    assert str(err).startswith(f"selector {expr!r}: position {position}: ")


def test_error_is_value_error_and_contract_text() -> None:
    with pytest.raises(ValueError) as info:
        parse_selector("app == ")
    assert str(info.value) == "selector 'app == ': position 7: expected a string literal"


# --------------------------------------------------------------------- LabelSelector

LABEL_SELECTOR_CASES = [
    (None, {}, True),
    ({}, {"x": "y"}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "1"}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
    ({"matchLabels": {"app": "web", "tier": "fe"}}, {"app": "web"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]}]}, {"env": "b"}, True),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]}]}, {}, False),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["a"]}]}, {"env": "c"}, True),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["a"]}]}, {"env": "a"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {"env": ""}, True),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist", "values": []}]}, {"env": "x"}, False),
    ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "Exists"}]},
     {"app": "web"}, False),
    ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "Exists"}]},
     {"app": "web", "env": "p"}, True),
]


@pytest.mark.parametrize("obj,labels,expected", LABEL_SELECTOR_CASES)
def test_label_selector(obj: dict | None, labels: dict[str, str], expected: bool) -> None:
    sel = label_selector(obj)
    assert sel.matches(labels) is expected
    assert parse_selector(str(sel)) == sel


def test_label_selector_text() -> None:
    sel = label_selector({"matchLabels": {"b": "2", "a": "1"},
                          "matchExpressions": [{"key": "c", "operator": "NotIn", "values": ["y", "x"]},
                                               {"key": "d", "operator": "DoesNotExist"}]})
    assert str(sel) == 'a == "1" && b == "2" && c not in {"x", "y"} && !has(d)'
    assert label_selector({}) == ALL


LABEL_SELECTOR_ERRORS = [
    ({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]},
     "matchExpressions[0].operator", "invalid operator"),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
     "matchExpressions[0].values", "non-empty"),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn"}]},
     "matchExpressions[0].values", "non-empty"),
    ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
     "matchExpressions[0].values", "takes no values"),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"},
                           {"key": "b", "operator": "DoesNotExist", "values": ["x"]}]},
     "matchExpressions[1].values", "takes no values"),
    ({"matchExpressions": [{"operator": "Exists"}]}, "matchExpressions[0].key", "invalid label key"),
    ({"matchLabels": {"a b": "x"}}, "matchLabels.a b", "invalid label key"),
    ({"matchLabels": {"a": 3}}, "matchLabels.a", "must be a string"),
    ({"matchLabel": {"a": "b"}}, "matchLabel", "unknown field"),
]


@pytest.mark.parametrize("obj,path,fragment", LABEL_SELECTOR_ERRORS)
def test_label_selector_errors(obj: dict, path: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as info:
        label_selector(obj)
    assert info.value.path == path
    assert fragment in info.value.message
    assert str(info.value).startswith(f"{path}: ")


# --------------------------------------------------------------------- properties

_KEYS = st.sampled_from(["a", "b", "k8s.io/c", "d-e_f"])
_VALS = st.sampled_from(["x", "y", "z", "", "x-y"])


def _atom() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda k, v: f"{k} == '{v}'", _KEYS, _VALS),
        st.builds(lambda k, v: f"{k} != '{v}'", _KEYS, _VALS),
        st.builds(lambda k, vs: f"{k} in {{{', '.join(repr(v) for v in vs)}}}", _KEYS, st.lists(_VALS, max_size=3)),
        st.builds(lambda k, vs: f"{k} not in {{{', '.join(repr(v) for v in vs)}}}", _KEYS,
                  st.lists(_VALS, max_size=3)),
        st.builds(lambda k: f"has({k})", _KEYS),
        st.builds(lambda k, v: f"{k} contains '{v}'", _KEYS, _VALS),
        st.builds(lambda k, v: f"{k} starts with '{v}'", _KEYS, _VALS),
        st.builds(lambda k, v: f"{k} ends with '{v}'", _KEYS, _VALS),
        st.just("all()"),
    )


_EXPR = st.recursive(
    _atom(),
    lambda inner: st.one_of(
        st.builds(lambda a: f"!({a})", inner),
        st.builds(lambda a: f"!{a}", _atom()),
        st.builds(lambda a, b: f"{a} && {b}", inner, inner),
        st.builds(lambda a, b: f"{a} || {b}", inner, inner),
        st.builds(lambda a: f"({a})", inner),
    ),
    max_leaves=8,
)


def _reference(expr: str, labels: dict[str, str]) -> bool:
    """An independent evaluator: translate the expression to Python and eval it."""
    import re

    py = expr
    py = re.sub(r"has\(([^)]+)\)", lambda m: f"({m.group(1)!r} in L)", py)
    py = py.replace("all()", "True")

    def binop(m: re.Match[str]) -> str:
        k, op, v = m.group(1), m.group(2), m.group(3)
        g = f"L.get({k!r})"
        if op == "==":
            return f"({g} == {v})"
        if op == "!=":
            return f"(not ({g} == {v}))"
        if op == "contains":
            return f"({g} is not None and {v} in {g})"
        if op == "starts with":
            return f"({g} is not None and {g}.startswith({v}))"
        return f"({g} is not None and {g}.endswith({v}))"

    py = re.sub(r"([\w./-]+) (==|!=|contains|starts with|ends with) ('[^']*')", binop, py)
    py = re.sub(r"([\w./-]+) not in \{([^}]*)\}", lambda m: f"(L.get({m.group(1)!r}) not in [{m.group(2)}])", py)
    py = re.sub(r"([\w./-]+) in \{([^}]*)\}", lambda m: f"(L.get({m.group(1)!r}) in [{m.group(2)}])", py)
    py = py.replace("&&", " and ").replace("||", " or ").replace("!", " not ")
    return bool(eval(py, {"L": labels}))


_LABELS = st.dictionaries(_KEYS, _VALS, max_size=4)


@settings(max_examples=300, deadline=None)
@given(_EXPR, st.lists(_LABELS, min_size=1, max_size=5))
def test_canonical_roundtrip_and_reference(expr: str, label_sets: list[dict[str, str]]) -> None:
    sel = parse_selector(expr)
    again = parse_selector(str(sel))
    assert again == sel
    assert str(again) == str(sel)
    for labels in label_sets:
        assert sel.matches(labels) == again.matches(labels) == _reference(expr, labels), (expr, labels)


def test_matches_is_fast() -> None:
    import time

    sel = parse_selector("projectcalico.org/orchestrator == 'k8s' && app in {'a', 'b'} && !has(x) || tier == 'fe'")
    labels = {"projectcalico.org/orchestrator": "k8s", "app": "b", "tier": "be"}
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        sel.matches(labels)
    per = (time.perf_counter() - t0) / n
    assert per < 20e-6, per  # a few hundred ns on a laptop; generous for a loaded CI box

"""Label and field selectors, parsed as the API server parses them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x,y)``, ``a``
(exists), ``!a`` (does not exist), comma-separated and all required. Field selectors:
``metadata.name``, ``metadata.namespace``, and for pods ``spec.nodeName`` and
``status.phase`` (``=``, ``==``, ``!=``), the fields the real server supports for
every type or for pods.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SelectorError", "field_selector", "label_selector", "match_label_selector_obj"]


class SelectorError(ValueError):
    """A selector the API server would reject (400 BadRequest)."""


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s+\((.*)\)$")
_EQ = re.compile(rf"^({_KEY})\s*(==|!=|=)\s*(.*)$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")

Matcher = Callable[[Mapping[str, str]], bool]


def _set_check(key: str, inside: bool, values: set[str]) -> Matcher:
    return lambda lb: (lb.get(key) in values) == inside


def _eq_check(key: str, equal: bool, value: str) -> Matcher:
    return lambda lb: (lb.get(key) == value) == equal


def _exists_check(key: str, exists: bool) -> Matcher:
    return lambda lb: (key in lb) == exists


def label_selector(selector: str | None) -> Matcher:
    """A predicate over a label map for ``selector`` (None or "" matches everything).

    Raises:
        SelectorError: The selector does not parse.
    """
    checks: list[Matcher] = []
    for term in _split(selector or ""):
        if m := _SET.match(term):
            values = {v.strip() for v in m.group(4).split(",") if v.strip()}
            checks.append(_set_check(m.group(1), m.group(3) == "in", values))
        elif m := _EQ.match(term):
            checks.append(_eq_check(m.group(1), m.group(3) != "!=", m.group(4).strip()))
        elif m := _EXISTS.match(term):
            checks.append(_exists_check(m.group(2), not m.group(1)))
        else:
            raise SelectorError(f"unable to parse requirement: {term!r}")
    return lambda labels: all(c(labels) for c in checks)


def match_label_selector_obj(selector: Mapping[str, Any] | None, labels: Mapping[str, str]
                             ) -> bool:
    """Whether ``labels`` match a structured ``LabelSelector`` (matchLabels/matchExpressions).

    An empty selector matches everything; None matches nothing (as for workloads).
    """
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if (op == "Exists") != (key in labels) and op in ("Exists", "DoesNotExist"):
            return False
    return True


_FIELDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "metadata.name": lambda o: o.get("metadata", {}).get("name", ""),
    "metadata.namespace": lambda o: o.get("metadata", {}).get("namespace", ""),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", ""),
    "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
    "involvedObject.name": lambda o: (o.get("involvedObject") or {}).get("name", ""),
    "involvedObject.kind": lambda o: (o.get("involvedObject") or {}).get("kind", ""),
    "involvedObject.uid": lambda o: (o.get("involvedObject") or {}).get("uid", ""),
    "type": lambda o: o.get("type", ""),
}


def _field_check(get: Callable[[Mapping[str, Any]], str], equal: bool, value: str
                 ) -> Callable[[Mapping[str, Any]], bool]:
    return lambda o: (get(o) == value) == equal


def field_selector(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over an object for a field selector.

    Raises:
        SelectorError: An unknown field or operator (the real server answers 400 too).
    """
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split(selector or ""):
        m = re.match(r"^([A-Za-z.]+)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            raise SelectorError(f"invalid field selector: {term!r}")
        name, op, value = m.group(1), m.group(2), m.group(3).strip()
        get = _FIELDS.get(name)
        if get is None:
            raise SelectorError(f'field label not supported: {name}')
        checks.append(_field_check(get, op != "!=", value))
    return lambda obj: all(c(obj) for c in checks)

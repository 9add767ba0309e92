"""How writes combine with what is stored: server-side apply and the three patch types.

Server-side apply keeps, per field manager, the configuration it last applied. A new
apply (1) removes from the live object the fields that manager applied before and
applies no longer (unless another apply manager also set them), then (2) merges the new
configuration in. Lists of the built-in types merge by their real merge keys
(containers, initContainers, env, volumes, imagePullSecrets by ``name``; volumeMounts by
``mountPath``; container ports by ``containerPort``; service ports by ``port``); every
other list, and every list of a custom resource, is atomic (replaced whole), which is
what the real schemas say for ``command``, ``args``, ``tolerations`` and CRDs without
list-type markers. Conflicts are detected between apply managers only (an ``Update``
manager's fields are not tracked); ``force=true`` takes them over as the real server does.

Strategic merge patch uses the same merge keys (``null`` deletes a key; ``$patch:
delete`` in a keyed list item removes it); JSON merge patch is RFC 7386; JSON patch is
RFC 6902 (add, remove, replace, test, copy, move).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "MergeError",
    "applied_conflicts",
    "apply_merge",
    "json_merge_patch",
    "json_patch",
    "strategic_merge_patch",
]

#: list field name -> merge key, for built-in types.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "volumeMounts": "mountPath",
    "imagePullSecrets": "name", "volumeClaimTemplates": None,
}
_PORT_KEYS = {"containerPort", "port"}


class MergeError(ValueError):
    """A patch the API server would reject (its message becomes the 4xx Status)."""


def _key_of(name: str, items: list[Any], builtin: bool) -> str | None:
    if not builtin or not items or not all(isinstance(i, dict) for i in items):
        return None
    if name == "ports":
        for k in ("containerPort", "port"):
            if all(k in i for i in items):
                return k
        return None
    key = MERGE_KEYS.get(name)
    if key and all(key in i for i in items):
        return key
    return None


def _merge_list(name: str, live: list[Any], new: list[Any], builtin: bool) -> list[Any]:
    key = _key_of(name, new + live, builtin)
    if key is None:
        return copy.deepcopy(new)
    out = [copy.deepcopy(i) for i in live]
    index = {i[key]: n for n, i in enumerate(out)}
    for item in new:
        if item[key] in index:
            out[index[item[key]]] = _merge(out[index[item[key]]], item, builtin)
        else:
            out.append(copy.deepcopy(item))
    return out


def _merge(live: Any, new: Any, builtin: bool, name: str = "") -> Any:
    if isinstance(live, dict) and isinstance(new, dict):
        out = dict(live)
        for k, v in new.items():
            out[k] = _merge(live[k], v, builtin, k) if k in live else copy.deepcopy(v)
        return out
    if isinstance(live, list) and isinstance(new, list):
        return _merge_list(name, live, new, builtin)
    return copy.deepcopy(new)


def _prune(live: Any, old: Any, new: Any, keep: list[Any], builtin: bool, name: str = ""
           ) -> Any:
    """``live`` less what ``old`` set and ``new`` does not (unless some ``keep`` sets it)."""
    if isinstance(live, dict) and isinstance(old, dict):
        new = new if isinstance(new, dict) else {}
        out = dict(live)
        for k, v in old.items():
            if k not in out:
                continue
            others = [kp[k] for kp in keep if isinstance(kp, dict) and k in kp]
            if k not in new:
                if not others:
                    del out[k]
                continue
            out[k] = _prune(out[k], v, new[k], others, builtin, k)
        return out
    if isinstance(live, list) and isinstance(old, list) and isinstance(new, list):
        key = _key_of(name, old + new + live, builtin)
        if key is None:
            return live
        new_by = {i[key]: i for i in new}
        kept: dict[Any, Any] = {i[key]: i for kp in keep if isinstance(kp, list) for i in kp
                if isinstance(i, dict) and key in i}
        old_by = {i[key]: i for i in old}
        items: list[Any] = []
        for item in live:
            k = item.get(key)
            if k in old_by and k not in new_by and k not in kept:
                continue
            if k in old_by and k in new_by:
                item = _prune(item, old_by[k], new_by[k], [kept[k]] if k in kept else [],
                              builtin)
            items.append(item)
        return items
    return live


def apply_merge(live: dict[str, Any], previous: dict[str, Any] | None, applied: dict[str, Any],
                others: list[dict[str, Any]], builtin: bool) -> dict[str, Any]:
    """The object after a manager applies ``applied`` having applied ``previous`` before.

    Args:
        live: The stored object.
        previous: What this manager applied last (None: never).
        applied: What it applies now.
        others: What the other apply managers applied last.
        builtin: Whether built-in merge keys hold (False for custom resources).
    """
    base = _prune(live, previous, applied, others, builtin) if previous else live
    result = _merge(base, applied, builtin)
    return result if isinstance(result, dict) else live


def _leaves(obj: Any, path: tuple[Any, ...], builtin: bool, name: str = ""
            ) -> dict[tuple[Any, ...], Any]:
    if isinstance(obj, dict) and obj:
        out: dict[tuple[Any, ...], Any] = {}
        for k, v in obj.items():
            out.update(_leaves(v, (*path, k), builtin, k))
        return out
    if isinstance(obj, list):
        key = _key_of(name, obj, builtin)
        if key is not None:
            out = {}
            for item in obj:
                out.update(_leaves(item, (*path, f"[{key}={item[key]}]"), builtin))
            return out
    return {path: obj}


def applied_conflicts(live: dict[str, Any], applied: dict[str, Any],
                      others: dict[str, dict[str, Any]], builtin: bool) -> list[str]:
    """Fields ``applied`` sets to another value than another apply manager owns them at."""
    mine = _leaves(applied, (), builtin)
    found = []
    for manager, cfg in others.items():
        theirs = _leaves(cfg, (), builtin)
        for path, value in mine.items():
            if path[:1] in (("metadata",), ("apiVersion",), ("kind",)) and len(path) < 3:
                continue
            if path in theirs and theirs[path] != value:
                found.append(f'conflict with "{manager}": .{".".join(map(str, path))}')
    return found


def strategic_merge_patch(live: Any, patch: Any, builtin: bool = True, name: str = "") -> Any:
    """``live`` with a strategic merge patch applied (``null`` deletes a key)."""
    if isinstance(live, dict) and isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        out = dict(live)
        for k, v in patch.items():
            if k.startswith("$"):
                continue
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge_patch(out[k], v, builtin, k)
            else:
                out[k] = _strip_nulls(copy.deepcopy(v))
        return out
    if isinstance(live, list) and isinstance(patch, list):
        key = _key_of(name, [p for p in patch if isinstance(p, dict)] + live, builtin)
        if key is None:
            return copy.deepcopy(patch)
        out_list = [copy.deepcopy(i) for i in live]
        for item in patch:
            idx = next((n for n, i in enumerate(out_list) if i.get(key) == item.get(key)), None)
            if item.get("$patch") == "delete":
                if idx is not None:
                    del out_list[idx]
            elif idx is None:
                out_list.append(_strip_nulls(copy.deepcopy(item)))
            else:
                out_list[idx] = strategic_merge_patch(out_list[idx], item, builtin)
        return out_list
    return copy.deepcopy(patch)


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return value


def json_merge_patch(live: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(live) if isinstance(live, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = json_merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise MergeError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        try:
            doc = doc[int(p)] if isinstance(doc, list) else doc[p]
        except (KeyError, IndexError, ValueError) as exc:
            raise MergeError(f"path not found: /{'/'.join(parts)}") from exc
    return doc


def json_patch(live: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 operations applied in order."""
    doc: Any = copy.deepcopy(live)
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        if kind in ("add", "replace", "remove", "copy", "move") and not parts:
            raise MergeError("the root of the object cannot be patched")
        if kind == "test":
            if _walk(doc, parts) != op.get("value"):
                raise MergeError(f"test failed at {op.get('path')}")
            continue
        if kind in ("copy", "move"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_walk(doc, src))
            if kind == "move":
                parent = _walk(doc, src[:-1])
                del parent[int(src[-1]) if isinstance(parent, list) else src[-1]]
            kind, op = "add", {"value": value}
        parent, last = _walk(doc, parts[:-1]), parts[-1]
        if kind == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), op.get("value"))
            else:
                parent[last] = op.get("value")
        elif kind == "replace":
            _walk(doc, parts)
            parent[int(last) if isinstance(parent, list) else last] = op.get("value")
        elif kind == "remove":
            _walk(doc, parts)
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise MergeError(f"unknown JSON patch operation {kind!r}")
    if not isinstance(doc, dict):
        raise MergeError("a JSON patch must leave an object")
    return doc

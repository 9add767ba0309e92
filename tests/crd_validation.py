"""Validate custom resources (Knative Service, RayCluster) as an API server would.

``kubernetes-validate`` knows only the built-in kinds. The CRDs' structural schemas (in
``tests/data/crd-schemas/``, see its README) are OpenAPI v3, which ``jsonschema`` checks
once it is read the way the API server reads it, with strict field validation
(``kubectl apply --validate=strict``):

- unknown fields are errors, except under ``x-kubernetes-preserve-unknown-fields``
  (everywhere else the server would prune them: strict makes that an error);
- a property with a ``default`` is filled in before ``required`` is checked, so it is
  not required of a manifest;
- ``x-kubernetes-int-or-string`` takes an integer or a string; ``nullable`` allows null;
- ``x-kubernetes-list-type: set`` lists have unique items, ``map`` lists unique keys
  (``x-kubernetes-list-map-keys``);
- ``metadata`` is checked as the server checks any object's: as an ObjectMeta (here with
  kubernetes-validate's own schema);
- CEL rules (``x-kubernetes-validations``) cannot be run here: a manifest that sets a
  field carrying one fails, so no rule is skipped silently.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
from jsonschema import validators

DATA = Path(__file__).parent / "data" / "crd-schemas"


class CRDValidationError(AssertionError):
    """A custom resource the API server would reject."""


def _structural(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (OpenAPI v3, structural) as JSON Schema with the server's reading."""
    s = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    s.pop("nullable", None)
    if schema.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    elif schema.get("nullable") and "type" in s:
        s["type"] = [s["type"], "null"]
    if "x-kubernetes-validations" in schema:
        s["celRules"] = [rule["rule"] for rule in schema["x-kubernetes-validations"]]
    props = schema.get("properties")
    if props is not None:
        s["properties"] = {k: _structural(v) for k, v in props.items()}
        s["required"] = [r for r in schema.get("required", [])
                         if "default" not in props.get(r, {})]
        if not s["required"]:
            del s["required"]
    if isinstance(schema.get("additionalProperties"), dict):
        s["additionalProperties"] = _structural(schema["additionalProperties"])
    elif (schema.get("type") == "object" and "additionalProperties" not in schema
          and not schema.get("x-kubernetes-preserve-unknown-fields")):
        s["additionalProperties"] = False  # pruned by the server; strict: an error
    if isinstance(schema.get("items"), dict):
        s["items"] = _structural(schema["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            s[key] = [_structural(sub) for sub in schema[key]]
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        s["uniqueItems"] = True
    elif list_type == "map":
        s["listMapKeys"] = list(schema.get("x-kubernetes-list-map-keys", []))
    return s


def _list_map_keys(validator: Any, keys: list[str], instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
        if key in seen:
            shown = dict(zip(keys, key, strict=True))
            yield jsonschema.ValidationError(f"duplicate entries for key {shown}")
        seen.add(key)


def _cel_rules(validator: Any, rules: list[str], instance: Any, schema: Any) -> Any:
    yield jsonschema.ValidationError(f"sets a field checked by CEL rules {rules}, which this "
                                     "test cannot evaluate")


_Validator = validators.extend(jsonschema.Draft7Validator,
                               {"listMapKeys": _list_map_keys, "celRules": _cel_rules})


@cache
def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(DATA.glob("*.json")):
        crd = json.loads(path.read_text())
        schema = _structural(crd["openAPIV3Schema"])
        schema["properties"].pop("metadata", None)  # an ObjectMeta: checked on its own
        schema["properties"]["apiVersion"] = {"const": f"{crd['group']}/{crd['version']}"}
        schema["properties"]["kind"] = {"const": crd["kind"]}
        schema["required"] = ["apiVersion", "kind", "metadata"]
        schema["additionalProperties"] = False
        schema["properties"]["metadata"] = {"type": "object"}
        out[(f"{crd['group']}/{crd['version']}", crd["kind"])] = schema
    return out


def known(obj: dict[str, Any]) -> bool:
    """Whether ``obj`` is of a custom resource kind whose schema is kept here."""
    return (obj.get("apiVersion"), obj.get("kind")) in _schemas()


def validate(obj: dict[str, Any], version: str = "1.37") -> None:
    """Raise CRDValidationError when the API server (at ``version``) would reject ``obj``."""
    schema = _schemas().get((obj.get("apiVersion"), obj.get("kind")))  # type: ignore[arg-type]
    if schema is None:
        raise CRDValidationError(f"no CRD schema for {obj.get('apiVersion')} {obj.get('kind')}")
    errors = sorted(_Validator(schema).iter_errors(copy.deepcopy(obj)), key=lambda e: e.path)
    if errors:
        first = errors[0]
        raise CRDValidationError(f"{obj['kind']} {'.'.join(map(str, first.absolute_path))}: "
                                 f"{first.message}")
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    try:
        kubernetes_validate.validate(meta, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise CRDValidationError(f"{obj['kind']} metadata: {exc.message}") from None

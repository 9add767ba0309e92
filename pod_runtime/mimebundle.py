"""MIME bundles on the pod: rich reprs without IPython, and bundles made JSON-safe.

Events travel as JSON, so binary formats (PNG, JPEG, PDF) are base64-encoded, as a
Jupyter kernel sends them; anything else that JSON cannot hold becomes its ``repr``.
"""

from __future__ import annotations

import base64
import inspect
import pprint
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["clean", "clean_bundle", "plain_format"]

REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
    ("application/pdf", "_repr_pdf_"),
)
BINARY_MIME = ("image/png", "image/jpeg", "image/gif", "application/pdf")


def plain_format(value: Any, figure_png: Callable[[Any], bytes | None]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A MIME bundle from the ``_repr_*_`` methods, for pods without IPython."""
    data: dict[str, Any] = {}
    md: dict[str, Any] = {}
    figure = sys.modules.get("matplotlib.figure")
    if figure is not None and isinstance(value, figure.Figure):
        png = figure_png(value)
        if png is not None:
            data["image/png"] = png
    elif not inspect.isclass(value):
        bundle = call_repr(value, "_repr_mimebundle_")
        if isinstance(bundle, tuple) and len(bundle) == 2:
            bundle, md = bundle[0], dict(bundle[1] or {})
        if isinstance(bundle, dict):
            data.update(bundle)
        for mime, method in REPR_METHODS:
            if mime in data:
                continue
            out = call_repr(value, method)
            if isinstance(out, tuple) and len(out) == 2:
                out, md[mime] = out
            if out is not None:
                data[mime] = out
    if "text/plain" not in data:
        try:
            data["text/plain"] = pprint.pformat(value, width=79, sort_dicts=False)
        except Exception as exc:  # noqa: BLE001 - a broken __repr__
            data["text/plain"] = f"<{type(value).__qualname__} (repr failed: {exc})>"
    return data, md


def call_repr(value: Any, name: str) -> Any:
    method = getattr(value, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception as exc:  # noqa: BLE001 - as IPython: report, show the other formats
        print(f"[kubetorch] {type(value).__qualname__}.{name}() failed: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def clean_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A MIME bundle as JSON: binary formats in base64, as Jupyter sends them."""
    out = {}
    for mime, value in (data or {}).items():
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if mime in BINARY_MIME:
                out[str(mime)] = base64.b64encode(raw).decode("ascii")
            else:
                out[str(mime)] = raw.decode("utf-8", errors="replace")
        else:
            out[str(mime)] = clean(value)
    return out


def clean(value: Any) -> Any:
    """Make ``value`` JSON-serializable (events are JSON)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [clean(v) for v in value]
    return repr(value)


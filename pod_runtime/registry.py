"""The table of call kinds a pod serves: ``kind`` -> how to run it.

A module that serves a kind registers it at import (``@register("cell")``); the server
imports those modules (:mod:`.executor` for ``fn``/``init``/``method``, :mod:`.cells`,
:mod:`.sync`), and the executor only looks kinds up here. So the executor imports no
handler module and no handler module is imported back by the executor: no cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .executor import CallRecord, Executor

__all__ = ["HANDLERS", "Handler", "register"]


@dataclass
class Handler:
    """How to run one kind of call."""

    run: Callable[[Executor, dict[str, Any], CallRecord], Any]
    main_thread: bool = False


HANDLERS: dict[str, Handler] = {}


def register(kind: str, *, main_thread: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """Register a call handler: ``@register("fn") def run(executor, msg, record): ...``."""

    def deco(fn: Callable[[Executor, dict[str, Any], CallRecord], Any]) -> Any:
        HANDLERS[kind] = Handler(fn, main_thread)
        return fn

    return deco

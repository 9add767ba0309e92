"""Scripted faults: rules a test sets on the double to make pods misbehave as in a cluster.

A rule matches pods by label selector and/or name prefix (None: every pod) and holds
until cleared. ``unschedulable`` keeps matching pods Pending with ``PodScheduled=False``
and the given scheduler message; ``hold`` keeps them at a stage: ``Pending`` (never
bound), ``ContainerCreating`` (bound, containers not started) or ``NotReady`` (running,
readiness never passes), which is how a launch timeout is tested. ``forbid`` refuses
requests of some verbs on a resource with 403 Forbidden, worded as RBAC words it (a user
whose role lacks that verb), before anything is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .selectors import label_selector

__all__ = ["Faults", "Rule"]

STAGES = ("Pending", "ContainerCreating", "NotReady")


@dataclass
class Rule:
    """One fault rule."""

    kind: str
    selector: str | None = None
    name_prefix: str | None = None
    stage: str | None = None
    message: str | None = None
    verbs: tuple[str, ...] = ()
    resource: str | None = None

    def matches(self, pod: dict[str, Any]) -> bool:
        """Whether the rule applies to ``pod``."""
        meta = pod.get("metadata") or {}
        if self.name_prefix and not str(meta.get("name", "")).startswith(self.name_prefix):
            return False
        return label_selector(self.selector)(meta.get("labels") or {})


@dataclass
class Faults:
    """The rules in force."""

    rules: list[Rule] = field(default_factory=list)

    def held(self, pod: dict[str, Any], stage: str) -> bool:
        """Whether a ``hold`` rule keeps ``pod`` at ``stage``."""
        return any(r.kind == "hold" and r.stage == stage and r.matches(pod) for r in self.rules)

    def forbidden(self, verb: str, resource: str) -> bool:
        """Whether a ``forbid`` rule refuses ``verb`` (``patch``, ``create``...) on ``resource``
        (a plural, such as ``cronjobs``)."""
        return any(r.kind == "forbid" and r.resource == resource and verb in r.verbs
                   for r in self.rules)

    def unschedulable(self, pod: dict[str, Any]) -> str | None:
        """The scheduler message an ``unschedulable`` rule gives ``pod``, or None."""
        for r in self.rules:
            if r.kind == "unschedulable" and r.matches(pod):
                return r.message
        return None

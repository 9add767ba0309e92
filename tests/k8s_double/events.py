"""Events the double's scheduler, kubelet and controllers record, as ``core/v1`` Events.

A repeat of the same reason and message about the same object bumps ``count`` and
``lastTimestamp`` of the existing Event, as the real event recorder aggregates them.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from .resources import resource
from .store import Store, now

__all__ = ["record_event"]

_EVENTS = resource("", "v1", "events")


def record_event(store: Store, obj: dict[str, Any], reason: str, message: str,
                 type_: str = "Normal", component: str = "kubelet") -> None:
    """Record (or count again) an event about ``obj``."""
    meta = obj["metadata"]
    ns = meta.get("namespace") or "default"
    for ev in store.items(_EVENTS, ns):
        inv = ev.get("involvedObject") or {}
        if inv.get("uid") == meta.get("uid") and ev.get("reason") == reason and ev.get(
                "message") == message:
            new = copy.deepcopy(ev)
            new["count"] = ev.get("count", 1) + 1
            new["lastTimestamp"] = now()
            store.commit(_EVENTS, new)
            return
    stamp = now()
    store.create(_EVENTS, ns, {
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": ns},
        "involvedObject": {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"),
                           "namespace": meta.get("namespace"), "name": meta["name"],
                           "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        "reason": reason, "message": message, "type": type_,
        "source": {"component": component}, "reportingComponent": component,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1})

"""The scheduler: binds pending pods to nodes, or says why not as the real one does.

Nodes are ``Node`` objects in the store (``list_node`` sees them) with ``capacity`` and
``allocatable``. Per node, the first failing filter counts, in the real plugin order:
TaintToleration (untolerated ``NoSchedule``/``NoExecute`` taints), NodeAffinity
(``nodeSelector`` and required node affinity), NodeResourcesFit (every resource whose
requests, plus those of the pods already bound there, exceed allocatable). A pod that
fits nowhere stays Pending with ``PodScheduled=False``, reason ``Unschedulable`` and the
scheduler's message, e.g. ``0/1 nodes are available: 1 Insufficient nvidia.com/gpu.
preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.``,
plus a ``FailedScheduling`` event. Preemption itself is not simulated.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

__all__ = ["fit", "node_object", "parse_quantity", "pod_requests"]

Obj = dict[str, Any]
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9,
           "T": 1e12, "P": 1e15, "E": 1e18}


def parse_quantity(value: Any) -> float:
    """A resource quantity (``500m``, ``2``, ``16Gi``, ``1e3``) as a number of base units.

    Raises:
        ValueError: It is not a quantity.
    """
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"quantities must match the regular expression: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def node_object(name: str, capacity: dict[str, str], labels: dict[str, str] | None,
                taints: list[Obj] | None) -> Obj:
    """A Ready ``Node`` with this capacity (allocatable the same)."""
    base = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {**base, **(labels or {})}},
            "spec": {"taints": taints} if taints else {},
            "status": {"capacity": dict(capacity), "allocatable": dict(capacity),
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                     {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True",
                                       "reason": "KubeletReady",
                                       "message": "kubelet is posting ready status"}],
                       "nodeInfo": {"kubeletVersion": "v1.37.0", "operatingSystem": "linux",
                                    "architecture": "amd64"}}}


def pod_requests(pod: Obj) -> dict[str, float]:
    """What a pod asks for: the sum over containers (init containers: their maximum).

    A limit with no request counts as the request (as the API server defaults it).
    """
    def of(c: Obj) -> dict[str, float]:
        res = c.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: parse_quantity(v) for k, v in merged.items()}

    spec = pod.get("spec") or {}
    total: dict[str, float] = {}
    for c in spec.get("containers") or []:
        for k, v in of(c).items():
            total[k] = total.get(k, 0) + v
    for c in spec.get("initContainers") or []:
        for k, v in of(c).items():
            total[k] = max(total.get(k, 0), v)
    total["pods"] = 1
    return total


def _tolerated(taint: Obj, tolerations: list[Obj]) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _affinity_ok(pod: Obj, labels: dict[str, str]) -> bool:
    from .selectors import match_label_selector_obj

    spec = pod.get("spec") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    na = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if not na:
        return True
    return any(match_label_selector_obj({"matchExpressions": term.get("matchExpressions", [])},
                                        labels)
               for term in na.get("nodeSelectorTerms") or [])


def _node_failures(pod: Obj, node: Obj, used: dict[str, float]) -> tuple[list[str], bool]:
    """Why the pod does not fit this node ([] if it does); and whether preemption could help."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(taint,
                                                                                  tolerations):
            value = f": {taint['value']}" if taint.get("value") else ""
            return [f"node(s) had untolerated taint {{{taint['key']}{value}}}"], False
    if not _affinity_ok(pod, node["metadata"].get("labels") or {}):
        return ["node(s) didn't match Pod's node affinity/selector"], False
    alloc = {k: parse_quantity(v) for k, v in node["status"].get("allocatable", {}).items()}
    short = []
    for res, amount in sorted(pod_requests(pod).items()):
        if amount <= 0:
            continue
        if used.get(res, 0) + amount > alloc.get(res, 0) + 1e-9:
            short.append("Too many pods" if res == "pods" else f"Insufficient {res}")
    return short, True


def fit(pod: Obj, nodes: list[Obj], bound: list[Obj]) -> tuple[str | None, str]:
    """(node name, "") for the first node the pod fits, else (None, the scheduler's message)."""
    reasons: Counter[str] = Counter()
    preempt: Counter[str] = Counter()
    for node in nodes:
        used: dict[str, float] = {}
        for other in bound:
            if (other.get("spec") or {}).get("nodeName") == node["metadata"]["name"]:
                for k, v in pod_requests(other).items():
                    used[k] = used.get(k, 0) + v
        failures, helps = _node_failures(pod, node, used)
        if not failures:
            return node["metadata"]["name"], ""
        reasons.update(failures)
        preempt["No preemption victims found for incoming pod" if helps
                else "Preemption is not helpful for scheduling"] += 1
    n = len(nodes)
    why = ", ".join(f"{c} {r}" for r, c in sorted(reasons.items()))
    pre = ", ".join(f"{c} {r}" for r, c in sorted(preempt.items()))
    if not nodes:
        return None, "no nodes available to schedule pods"
    return None, (f"0/{n} nodes are available: {why}. preemption: 0/{n} nodes are available: "
                  f"{pre}.")

"""Which compute an object belongs to: its labels and annotations, in one place.

Every object the Kubernetes backend creates for a compute carries :func:`labels`; a
listing selects by :func:`selector`, so ``kt list`` and ``kt teardown`` see exactly what
``.to()`` made and nothing else in a shared namespace. The spec and its hash ride in
annotations (:data:`SPEC_ANNOTATION`, :data:`SPEC_HASH_ANNOTATION`), which is how another
process learns what a running compute was started with, and how a changed spec is seen.
"""

from __future__ import annotations

__all__ = [
    "COMPONENT_LABEL", "COMPUTE_LABEL", "FIELD_MANAGER", "JOB_LABEL", "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "SPEC_ANNOTATION", "SPEC_HASH_ANNOTATION", "USER_LABEL", "labels", "selector",
]

#: The field manager of every server-side apply (one, so a re-apply owns its own fields).
FIELD_MANAGER = "kubetorch-jupyter"
#: The recommended ``app.kubernetes.io/managed-by`` label and its value.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubetorch-jupyter"
#: The user-facing compute name (not the ``{username}-{name}`` resource name).
COMPUTE_LABEL = "kubetorch.dev/compute"
#: ``KT_USERNAME`` of whoever created the compute.
USER_LABEL = "kubetorch.dev/user"
#: What the object is to the compute: ``pod`` (the workload and its pods), ``service``,
#: ``token`` (the Secret), ``runtime`` (the runtime ConfigMap), ``job`` (a CronJob),
#: ``scaler`` (the per-compute ServiceAccount/Role/RoleBinding that scales the workload).
COMPONENT_LABEL = "kubetorch.dev/component"
#: The exported notebook job an object belongs to (its CronJob, Jobs, notebook ConfigMap,
#: runs claim): ``kt jobs rm`` deletes by it, and a compute's teardown leaves them.
JOB_LABEL = "kubetorch.dev/job"
#: The compute's :meth:`~kubetorch_jupyter.core.spec.ComputeSpec.to_json`, as JSON.
SPEC_ANNOTATION = "kubetorch.dev/spec"
#: Its :meth:`~kubetorch_jupyter.core.spec.ComputeSpec.spec_hash`.
SPEC_HASH_ANNOTATION = "kubetorch.dev/spec-hash"


def labels(name: str, username: str, component: str | None = None) -> dict[str, str]:
    """The identity labels of compute ``name`` of ``username`` (and its ``component``)."""
    out = {MANAGED_BY_LABEL: MANAGED_BY, USER_LABEL: username, COMPUTE_LABEL: name}
    if component is not None:
        out[COMPONENT_LABEL] = component
    return out


def selector(username: str, name: str | None = None, component: str | None = None) -> str:
    """A label selector for the computes of ``username`` (one of them when ``name`` is given)."""
    parts = [f"{MANAGED_BY_LABEL}={MANAGED_BY}", f"{USER_LABEL}={username}"]
    if name is not None:
        parts.append(f"{COMPUTE_LABEL}={name}")
    if component is not None:
        parts.append(f"{COMPONENT_LABEL}={component}")
    return ",".join(parts)

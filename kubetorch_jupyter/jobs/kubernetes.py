"""A job on Kubernetes: a CronJob whose pod is the job's compute and runs the notebook.

``kt export --backend kubernetes`` renders (and :mod:`.cluster` applies), with the
renderer of :mod:`kubetorch_jupyter.backends.kubernetes.manifests` (``render_cronjob``),
in apply order:

1. the runtime's ConfigMap (shared by the user's computes; the bootstrap's),
2. ``{user}-{job}-notebook``: a ConfigMap with ``notebook.ipynb`` (outputs cleared: the
   run makes them again, and a ConfigMap holds 1 MiB) and ``job.json`` (its parameters,
   its compute),
3. ``{user}-{job}-runs``: a PersistentVolumeClaim the runs are written to (unless
   ``--runs-claim`` names one that exists),
4. the CronJob ``{user}-{job}``: the schedule and its ``timeZone``, ``concurrencyPolicy:
   Forbid``, history limits, a starting deadline; its pod has the compute spec's image,
   CPUs, memory and GPUs.

Each but the first carries the job's label (``kubetorch.dev/job``, also on the Jobs and
pods the CronJob makes; :func:`job_selector`); the runtime's ConfigMap carries no
compute label either: it is shared, and neither ``kt jobs rm`` nor a teardown deletes it.

The pod copies the notebook (``$KT_JOB_DIR``, ``/kt/job``) into
``$KT_STATE_DIR/jobs/<job>/`` on the claim (mounted at ``/kt/state``) and runs
``python3 -m kubetorch_jupyter.cli jobs run <job> --scheduled``: the same runner as
locally, so the claim holds ``runs/<run-id>/{output.ipynb, progress.log, run.json}``.
``KT_JOB_COMPUTE`` names the job's compute, so its ``%%kt`` cells run in the pod's own
kernel. The image must have ``kubetorch-jupyter`` (with papermill and ipykernel)
installed: this pod runs the client, not only the pod runtime.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import nbformat

from ..backends.kubernetes import identity
from ..backends.kubernetes.bootstrap import runtime_container
from ..backends.kubernetes.manifests import render_cronjob
from ..backends.kubernetes.options import KubernetesOptions
from ..backends.kubernetes.pods import resource_name
from ..core.names import pod_name
from ..core.spec import ComputeSpec
from ..exceptions import ConfigError
from .store import JobRecord

__all__ = ["CONFIGMAP_LIMIT", "JOB_DIR", "STATE_DIR", "TRIGGER_ANNOTATION", "is_shared_runtime",
           "job_selector",
           "namespace_of", "render_job"]

#: Where the job's ConfigMap and runs claim are mounted in its pod.
JOB_DIR = "/kt/job"
STATE_DIR = "/kt/state"
#: What a ConfigMap may hold (the API server's limit, less room for its metadata).
CONFIGMAP_LIMIT = 1024 * 1024 - 16 * 1024

#: The job container's script: the notebook from the ConfigMap to the claim, then a run.
_SCRIPT = ('set -e; d="$KT_STATE_DIR/jobs/{name}"; mkdir -p "$d"; '
           'cp "$KT_JOB_DIR/job.json" "$KT_JOB_DIR/notebook.ipynb" "$d/"; cd "$d"; '
           'exec python3 -m kubetorch_jupyter.cli jobs run {name} --scheduled '
           '--trigger "${{KT_JOB_TRIGGER:-schedule}}"')
#: The pod annotation a run by hand sets (``kt jobs run``): its record says ``manual``.
TRIGGER_ANNOTATION = "kubetorch.dev/trigger"


def _notebook_text(nb: nbformat.NotebookNode) -> str:
    clean = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell in clean.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return str(nbformat.writes(clean))


def namespace_of(spec: ComputeSpec, given: str | None, default: str = "default") -> str:
    """The namespace the job goes in: ``given``, else the compute's own, else ``default``."""
    options = KubernetesOptions.from_spec(spec)
    if given and options.namespace and given != options.namespace:
        raise ConfigError(f"--namespace {given!r}: the compute {spec.name!r} asks for "
                          f"namespace {options.namespace!r}")
    return given or options.namespace or default


def render_job(job: JobRecord, nb: nbformat.NotebookNode, *, username: str, namespace: str,
               runs_claim: str | None = None, runs_size: str = "1Gi",
               history_limit: int = 3, starting_deadline_seconds: int = 300
               ) -> list[dict[str, Any]]:
    """The objects of ``job`` on Kubernetes, in apply order (see the module docstring).

    Raises:
        ConfigError: No schedule, a notebook over a ConfigMap's size, or what the
            renderer refuses (a schedule, a namespace, a name).
    """
    if not job.schedule:
        raise ConfigError("--backend kubernetes needs --schedule: the schedule is what the "
                          "cluster keeps (kt jobs run runs a job by hand locally)")
    spec = ComputeSpec.from_json(job.compute) if job.compute else ComputeSpec(name=job.name)
    base = pod_name(job.name, username)
    config_name = resource_name(base, "-notebook")
    claim = runs_claim or resource_name(base, "-runs")
    record = dataclasses.asdict(job)
    record.update(cwd=f"{STATE_DIR}/jobs/{job.name}", notebook=f"{JOB_DIR}/notebook.ipynb",
                  env={}, crontab_line=None)
    data = {"notebook.ipynb": _notebook_text(nb),
            "job.json": json.dumps(record, indent=1, sort_keys=True)}
    size = sum(len(v.encode()) for v in data.values())
    if size > CONFIGMAP_LIMIT:
        raise ConfigError(f"the notebook is {size / 2**20:.1f} MiB without its outputs; a "
                          "ConfigMap holds 1 MiB: move data out of the notebook (read it "
                          "from a volume) and export again")
    labels = identity.labels(spec.name, username, "job")
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": config_name, "namespace": namespace, "labels": labels},
        "data": data,
    }]
    if runs_claim is None:
        objects.append({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace, "labels": labels},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": runs_size}}},
        })
    runtime = runtime_container(spec, username=username, namespace=namespace)
    runtime = dataclasses.replace(
        runtime,
        env=[*runtime.env,
             {"name": "KT_STATE_DIR", "value": STATE_DIR},
             {"name": "KT_JOB_DIR", "value": JOB_DIR},
             {"name": "KT_JOB_COMPUTE", "value": spec.name},
             {"name": "KT_JOB_SPEC", "value": json.dumps(spec.to_json(), sort_keys=True)},
             {"name": "KT_USERNAME", "value": username},
             {"name": "KT_JOB_TRIGGER", "valueFrom": {"fieldRef": {
                 "fieldPath": f"metadata.annotations['{TRIGGER_ANNOTATION}']"}}}],
        volumes=[*runtime.volumes,
                 {"name": "kt-job", "configMap": {"name": config_name, "defaultMode": 0o444}},
                 {"name": "kt-job-runs", "persistentVolumeClaim": {"claimName": claim}}],
        volume_mounts=[*runtime.volume_mounts,
                       {"name": "kt-job", "mountPath": JOB_DIR, "readOnly": True},
                       {"name": "kt-job-runs", "mountPath": STATE_DIR}],
        objects=[*runtime.objects, *objects],
    )
    try:
        rendered = render_cronjob(
            spec, runtime=runtime, username=username, namespace=namespace,
            schedule=job.schedule, timezone=job.timezone, name=job.name,
            command=["/bin/sh", "-c", _SCRIPT.format(name=job.name)],
            history_limit=history_limit, starting_deadline_seconds=starting_deadline_seconds)
    except ValueError as exc:  # the renderer's namespace check
        raise ConfigError(str(exc)) from None
    return [_with_job_label(obj, job.name) for obj in rendered]


def is_shared_runtime(obj: dict[str, Any]) -> bool:
    """Whether ``obj`` is the runtime's ConfigMap, shared by the user's computes and jobs."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(identity.COMPONENT_LABEL) == "runtime"


def _with_job_label(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """``obj`` labelled as job ``name``'s (its CronJob's Jobs and pods too).

    The runtime's ConfigMap is nobody's: it loses the compute label instead (as a
    compute's does), so neither ``kt jobs rm`` nor a compute's teardown deletes it.
    """
    obj = json.loads(json.dumps(obj))
    meta = obj.setdefault("metadata", {})
    labels = meta.setdefault("labels", {})
    if is_shared_runtime(obj):
        labels.pop(identity.COMPUTE_LABEL, None)
        return obj
    labels[identity.JOB_LABEL] = name
    if obj.get("kind") == "CronJob":
        template = obj["spec"]["jobTemplate"]
        template.setdefault("metadata", {}).setdefault("labels", {})[identity.JOB_LABEL] = name
        pod = template["spec"]["template"]
        pod.setdefault("metadata", {}).setdefault("labels", {})[identity.JOB_LABEL] = name
    return obj


def job_selector(username: str, name: str) -> str:
    """The label selector of job ``name``'s objects (never the shared runtime ConfigMap)."""
    return (f"{identity.selector(username, component='job')},"
            f"{identity.JOB_LABEL}={name}")

"""Scale the pod's own workload to zero when it stops for idleness (stdlib only).

In a cluster a pod that just exits is restarted by its Deployment and keeps holding its
GPUs; so before it stops for idleness it asks the API server to set its own workload's
``scale`` subresource to ``replicas: 0`` (a merge patch), as the per-compute Role of the
manifests allows (``resourceNames: [the workload]``, verbs get/patch/update on
``<plural>/scale`` and nothing else).

The manifests say which workload (``KT_K8S_WORKLOAD=<plural>/<name>``) and namespace
(``KT_K8S_NAMESPACE``); the service-account token and CA are the ones Kubernetes mounts
(``KT_K8S_SA_DIR``), the API the one ``KUBERNETES_SERVICE_HOST``/``_PORT`` name, or
``KT_K8S_API`` (a test double's ``http://`` base). A failure is returned as one line for
the pod's log, never raised: the pod then exits as it does outside a cluster.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from . import settings

__all__ = ["SCALABLE", "in_cluster", "scale_to_zero"]

#: The workloads with a ``scale`` subresource the pod may patch: plural -> API group path.
SCALABLE = {"deployments": "apis/apps/v1", "statefulsets": "apis/apps/v1"}

_TIMEOUT = 10.0


def in_cluster() -> bool:
    """Whether the manifests said which workload this pod belongs to."""
    return bool(settings.get("KT_K8S_WORKLOAD") and settings.get("KT_K8S_NAMESPACE"))


def _api_base() -> tuple[str, ssl.SSLContext | None] | str:
    """The API server's base URL and TLS context, or why there is none."""
    override = settings.get("KT_K8S_API")
    if override:
        return override.rstrip("/"), None
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return "KUBERNETES_SERVICE_HOST is not set (not in a cluster?)"
    ca = Path(settings.get("KT_K8S_SA_DIR")) / "ca.crt"
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        return f"cannot read the cluster CA {ca}: {exc}"
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{port}", context


def scale_to_zero() -> str | None:
    """PATCH ``replicas: 0`` onto this pod's own workload's ``scale`` subresource.

    Returns:
        ``None`` when the API server accepted it; otherwise one line saying why not
        (no workload named, no token, no RBAC, API unreachable). The token never
        appears in it.
    """
    workload = settings.get("KT_K8S_WORKLOAD")
    namespace = settings.get("KT_K8S_NAMESPACE")
    if not workload or not namespace:
        return "KT_K8S_WORKLOAD/KT_K8S_NAMESPACE are not set (not started by the manifests)"
    plural, _, name = workload.partition("/")
    if plural not in SCALABLE or not name:
        return (f"KT_K8S_WORKLOAD={workload!r}: only "
                f"{', '.join(sorted(SCALABLE))} are scaled by the pod")
    token_path = Path(settings.get("KT_K8S_SA_DIR")) / "token"
    try:
        token = token_path.read_text().strip()
    except OSError as exc:
        return f"no service-account token at {token_path} ({exc.strerror or exc})"
    base = _api_base()
    if isinstance(base, str):
        return base
    url, context = base
    path = f"{SCALABLE[plural]}/namespaces/{namespace}/{plural}/{name}/scale"
    request = urllib.request.Request(
        f"{url}/{path}", method="PATCH",
        data=json.dumps({"spec": {"replicas": 0}}).encode(),
        headers={"Content-Type": "application/merge-patch+json",
                 "Accept": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT, context=context):
            return None
    except urllib.error.HTTPError as exc:
        return f"the API server refused to scale {workload} to 0: HTTP {exc.code} " \
               f"{_status_message(exc)}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"cannot reach the API server at {url} to scale {workload} to 0: {reason}"


def _status_message(exc: urllib.error.HTTPError) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the HTTP reason."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason)

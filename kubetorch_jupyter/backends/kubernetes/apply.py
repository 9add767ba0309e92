"""Server-side apply, get, list and delete of plain-dict objects, through one ``ApiClient``.

The manifests are dicts (``manifests.render``); the generated typed API classes would
turn each kind into its own method and a CRD (Knative, RayCluster) into yet another
client. So the few requests the backend makes go through ``ApiClient.param_serialize`` /
``call_api`` (the same path the generated methods take, authentication included) by
REST path, and answers stay JSON dicts.

Every write is a server-side apply (``PATCH`` with ``application/apply-patch+yaml``),
one field manager (:data:`~.identity.FIELD_MANAGER`) and ``force=true``: applying the
same object twice changes nothing, a changed one updates in place, and fields another
manager set (an HPA's replicas, a mutating webhook's) are left to it unless we set them.

API failures become one-line :class:`~kubetorch_jupyter.ConfigError` messages saying
what to do (a 403 names the verb and resource RBAC must allow; a missing CRD names the
operator to install; an unreachable server names the host).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...exceptions import ConfigError
from . import identity
from .identity import FIELD_MANAGER

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = [
    "ALL_KINDS",
    "CRONJOB",
    "WORKLOAD_KINDS",
    "ApiFailure",
    "Kind",
    "Timeout",
    "apply",
    "apply_compute",
    "delete",
    "get",
    "kind_of",
    "list_objects",
    "owned",
    "request",
]


@dataclass(frozen=True)
class Kind:
    """A kind of object: where its REST collection lives.

    Attributes:
        api_version: ``v1``, ``apps/v1``, ``serving.knative.dev/v1``...
        kind: ``Deployment``...
        plural: The collection's path segment (``deployments``).
        operator: For a CRD, what a cluster needs installed to know it; "" for built-ins.
    """

    api_version: str
    kind: str
    plural: str
    operator: str = ""

    def path(self, namespace: str, name: str | None = None) -> str:
        """The REST path of the collection in ``namespace``, or of one object in it."""
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        out = f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{out}/{name}" if name else out


#: Workloads a compute can be, the most common first (a lookup by name tries them in order).
WORKLOAD_KINDS: tuple[Kind, ...] = (
    Kind("apps/v1", "Deployment", "deployments"),
    Kind("apps/v1", "StatefulSet", "statefulsets"),
    Kind("serving.knative.dev/v1", "Service", "services", "Knative Serving"),
    Kind("ray.io/v1", "RayCluster", "rayclusters", "KubeRay"),
)
#: Everything ``.to()`` may create, in the order teardown deletes it (workloads first).
ALL_KINDS: tuple[Kind, ...] = (
    *WORKLOAD_KINDS,
    Kind("batch/v1", "Job", "jobs"),
    Kind("v1", "Service", "services"),
    Kind("v1", "ConfigMap", "configmaps"),
    Kind("v1", "Secret", "secrets"),
    Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    # a compute with an inactivity_ttl: what lets its pod scale its own workload to 0
    Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    Kind("rbac.authorization.k8s.io/v1", "Role", "roles"),
    Kind("v1", "ServiceAccount", "serviceaccounts"),
)
#: An exported notebook's schedule (``kt export --backend kubernetes``); not a compute's.
CRONJOB = Kind("batch/v1", "CronJob", "cronjobs")
_BY_KIND = {(k.api_version, k.kind): k for k in (*ALL_KINDS, CRONJOB)}
#: A request's timeout: seconds in all, or (connect, read) seconds; None: none.
Timeout = float | tuple[float, float] | None


def kind_of(obj: dict[str, Any]) -> Kind:
    """The :class:`Kind` of a manifest.

    Raises:
        ConfigError: For a kind this backend does not manage.
    """
    key = (str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    found = _BY_KIND.get(key)
    if found is None:
        raise ConfigError(f"the kubernetes backend cannot apply {key[1]} ({key[0]}): not "
                          "a kind it manages")
    return found


class ApiFailure(ConfigError):
    """A Kubernetes API request failed; the message says what to do.

    Attributes:
        status: The HTTP status (0: the server could not be reached).
        reason: The API's reason (``Forbidden``, ``NotFound``, ``Conflict``...), or "".
    """

    def __init__(self, message: str, *, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def _failure(exc: Exception, method: str, path: str, host: str) -> ApiFailure:
    """One line for a failed request: what was asked, what the server said, what to do."""
    status = int(getattr(exc, "status", 0) or 0)
    body = getattr(exc, "body", None)
    message, reason = "", str(getattr(exc, "reason", "") or "")
    if body:
        try:
            data = json.loads(body)
            message = str(data.get("message") or "")
            reason = str(data.get("reason") or reason)
        except (ValueError, AttributeError):
            message = str(body)[:300]
    what = f"{method} {path}"
    if status == 0:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return ApiFailure(f"cannot reach the Kubernetes API server at {host} ({first}): check "
                          "KT_KUBECONFIG / KT_KUBE_CONTEXT and that the cluster is up",
                          status=0)
    if status == 401:
        return ApiFailure(f"the Kubernetes API server at {host} refused our credentials "
                          f"({message or 'Unauthorized'}): refresh your kubeconfig's login",
                          status=401, reason=reason)
    if status == 403:
        return ApiFailure(f"forbidden: {message or what}; your user needs RBAC for this "
                          "(apply deploy/'s kubetorch-user role, or ask the cluster's admin)",
                          status=403, reason=reason)
    return ApiFailure(f"the Kubernetes API answered {status} {reason or ''} to {what}: "
                      f"{message or 'no message'}".replace("  ", " "),
                      status=status, reason=reason)


def request(api: ApiClient, method: str, path: str, *, query: Iterable[tuple[str, Any]] = (),
            body: Any = None, content_type: str | None = None,
            timeout: Timeout = None) -> dict[str, Any]:
    """One API request; its JSON answer as a dict.

    Raises:
        ApiFailure: When the request fails (see :func:`_failure`).
    """
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    params = api.param_serialize(method=method, resource_path=path, query_params=list(query),
                                 header_params=headers, body=body,
                                 auth_settings=["BearerToken"])
    host = str(api.configuration.host)
    try:
        response = api.call_api(*params, _request_timeout=timeout)
        data = response.read()
    except Exception as exc:  # noqa: BLE001 - urllib3's errors and ApiException alike
        raise _failure(exc, method, path, host) from None
    if not 200 <= int(response.status) <= 299:
        from kubernetes.client.exceptions import ApiException

        raise _failure(ApiException(status=response.status, reason=response.reason,
                                    body=data.decode("utf-8", "replace") if data else None),
                       method, path, host) from None
    return json.loads(data) if data else {}


def apply(api: ApiClient, obj: dict[str, Any], namespace: str, *,
          timeout: Timeout = None) -> dict[str, Any]:
    """Server-side apply ``obj`` in ``namespace``; the object as the server now has it.

    Raises:
        ApiFailure: When the server refuses it; a 404 of a CRD kind says which operator
            the cluster lacks.
    """
    kind = kind_of(obj)
    name = obj["metadata"]["name"]
    body = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    try:
        return request(api, "PATCH", kind.path(namespace, name),
                       query=[("fieldManager", FIELD_MANAGER), ("force", "true")], body=body,
                       content_type="application/apply-patch+yaml", timeout=timeout)
    except ApiFailure as exc:
        if exc.status == 404 and kind.operator:
            raise ApiFailure(f"the cluster does not know {kind.kind} ({kind.api_version}): "
                             f"install {kind.operator} there, or use the default mode "
                             "(a Deployment)", status=404, reason=exc.reason) from None
        raise


def get(api: ApiClient, kind: Kind, namespace: str, name: str, *,
        timeout: Timeout = None) -> dict[str, Any] | None:
    """The object, or None when there is none (or its CRD is not installed)."""
    try:
        return request(api, "GET", kind.path(namespace, name), timeout=timeout)
    except ApiFailure as exc:
        if exc.status == 404:
            return None
        raise


def list_objects(api: ApiClient, kind: Kind, namespace: str, selector: str, *,
                 timeout: Timeout = None) -> tuple[list[dict[str, Any]], str]:
    """The objects of ``kind`` matching the label ``selector``, and the list's resourceVersion.

    A kind the cluster does not know (a CRD not installed) has none.
    """
    try:
        data = request(api, "GET", kind.path(namespace), query=[("labelSelector", selector)],
                       timeout=timeout)
    except ApiFailure as exc:
        if exc.status == 404 and kind.operator:
            return [], ""
        raise
    items = list(data.get("items") or [])
    for item in items:  # lists leave them out of each item
        item.setdefault("apiVersion", kind.api_version)
        item.setdefault("kind", kind.kind)
    return items, str((data.get("metadata") or {}).get("resourceVersion") or "")


def delete(api: ApiClient, kind: Kind, namespace: str, name: str, *,
           timeout: Timeout = None) -> bool:
    """Delete one object with foreground propagation; False when it was not there."""
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}
    try:
        request(api, "DELETE", kind.path(namespace, name), body=body,
                content_type="application/json", timeout=timeout)
    except ApiFailure as exc:
        if exc.status == 404:
            return False
        raise
    return True


def owned(api: ApiClient, namespace: str, selector: str, *,
          kinds: Iterable[Kind] = ALL_KINDS,
          timeout: Timeout = None) -> Iterator[tuple[Kind, dict[str, Any]]]:
    """Every object of ``kinds`` the label ``selector`` matches, kind by kind."""
    for kind in kinds:
        items, _ = list_objects(api, kind, namespace, selector, timeout=timeout)
        for item in items:
            yield kind, item


def apply_compute(api: ApiClient, secret: dict[str, Any], objects: list[dict[str, Any]],
                  namespace: str, *, name: str, annotations: dict[str, str],
                  timeout: Timeout = None) -> None:
    """Apply a compute: its token ``secret``, then ``objects`` in order (the renderer's).

    The workload (the first object of a workload kind) gets ``annotations`` (the spec,
    its hash, when it started); the objects labelled with compute ``name`` get the
    workload as their owner, so deleting the workload takes them too (the Secret and
    the Service; the runtime's shared ConfigMap carries no compute label: nobody's).
    """
    apply(api, secret, namespace, timeout=timeout)
    workload_kinds = {(k.api_version, k.kind) for k in WORKLOAD_KINDS}
    before: list[dict[str, Any]] = [secret]
    owner: dict[str, Any] | None = None
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in workload_kinds and owner is None:
            meta = {**obj.get("metadata", {})}
            meta["annotations"] = {**meta.get("annotations", {}), **annotations}
            applied = apply(api, {**obj, "metadata": meta}, namespace, timeout=timeout)
            got = applied.get("metadata") or {}
            owner = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                     "name": got.get("name", meta["name"]), "uid": got.get("uid", "")}
            continue
        if owner is not None and _owned(obj, name):
            obj = _with_owner(obj, owner)
        apply(api, obj, namespace, timeout=timeout)
        if owner is None:
            before.append(obj)
    if owner is not None and owner["uid"]:
        for obj in before:  # the token Secret (and any of the compute's own before it)
            if _owned(obj, name):
                apply(api, _with_owner(obj, owner), namespace, timeout=timeout)


def _owned(obj: dict[str, Any], name: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(identity.COMPUTE_LABEL) == name


def _with_owner(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    meta = dict(obj.get("metadata") or {})
    meta["ownerReferences"] = [{**owner, "blockOwnerDeletion": False}]
    return {**obj, "metadata": meta}

"""Service-account tokens and the part of RBAC the double checks for them.

The kubelet mounts a token per pod (:meth:`ServiceAccounts.mount`, as a projected
service-account token: ``token`` in a directory of its own, plus an empty ``ca.crt`` and
the ``namespace``), unless the pod or its ServiceAccount says
``automountServiceAccountToken: false``. The API server then knows two kinds of caller:
the kubeconfig's token (a cluster admin, as before) and a pod's token, which is
authorized by :func:`allowed` against the Roles bound to its ServiceAccount in the
namespace of the request.

Simplified, on purpose: Roles and RoleBindings only (no ClusterRoles, no groups, no
aggregation, no ``*`` in resourceNames); a rule matches on apiGroups, resources (with a
subresource spelt ``plural/sub``), verbs and, when given, resourceNames; ``*`` is honoured
in apiGroups, resources and verbs. Tokens never expire. The double serves plain HTTP, so
the kubelet also sets ``KT_K8S_API`` (the API's ``http://`` base) and ``KT_K8S_SA_DIR``
(where the token lies) in the container's environment, the variables pod_runtime reads
in place of ``KUBERNETES_SERVICE_HOST`` with TLS and the usual mount path.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any

from . import resources
from .store import Store

__all__ = ["ServiceAccounts", "allowed"]

Obj = dict[str, Any]


class ServiceAccounts:
    """The tokens the double issued, one per (namespace, service account)."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], str] = {}

    def token(self, namespace: str, account: str) -> str:
        """The token of ``namespace/account`` (made on first use)."""
        return self._tokens.setdefault((namespace, account), secrets.token_urlsafe(24))

    def who(self, bearer: str) -> tuple[str, str] | None:
        """The (namespace, account) whose token ``bearer`` is, compared in constant time."""
        found = None
        for key, token in self._tokens.items():
            if hmac.compare_digest(bearer.encode(), token.encode()):
                found = key
        return found

    def mount(self, store: Store, pod: Obj, target: Path) -> Path | None:
        """Write the pod's token under ``target``; the directory, or None (not mounted)."""
        ns = pod["metadata"].get("namespace", "default")
        spec = pod.get("spec") or {}
        account = spec.get("serviceAccountName") or "default"
        sa = store.find(resources.resource("", "v1", "serviceaccounts"), ns, account)
        automount = spec.get("automountServiceAccountToken")
        if automount is None and sa is not None:
            automount = sa.get("automountServiceAccountToken")
        if automount is False:
            return None
        target.mkdir(parents=True, exist_ok=True)
        (target / "token").write_text(self.token(ns, account))
        (target / "namespace").write_text(ns)
        (target / "ca.crt").write_text("")
        return target


def _matches(values: list[str] | None, value: str) -> bool:
    return values is not None and ("*" in values or value in values)


def allowed(store: Store, who: tuple[str, str], verb: str, group: str, resource: str,
            namespace: str | None, name: str | None) -> bool:
    """Whether service account ``who`` may ``verb`` ``resource`` (``plural[/sub]``).

    Only the Roles bound in the request's own namespace count (no ClusterRoles).
    """
    if namespace is None:
        return False
    rbac_bindings = resources.resource("rbac.authorization.k8s.io", "v1", "rolebindings")
    rbac_roles = resources.resource("rbac.authorization.k8s.io", "v1", "roles")
    sa_ns, sa_name = who
    for binding in store.items(rbac_bindings, namespace):
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name
                   and s.get("namespace", namespace) == sa_ns
                   for s in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        if ref.get("kind") != "Role":
            continue
        role = store.find(rbac_roles, namespace, ref.get("name", ""))
        for rule in (role or {}).get("rules") or []:
            names = rule.get("resourceNames")
            if (_matches(rule.get("apiGroups"), group)
                    and _matches(rule.get("resources"), resource)
                    and _matches(rule.get("verbs"), verb)
                    and (not names or (name is not None and name in names))):
                return True
    return False

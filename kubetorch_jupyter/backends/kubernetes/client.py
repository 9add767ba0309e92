"""Loading the ``kubernetes`` client and a cluster's configuration, lazily, with clear errors.

Nothing here runs at import: ``import kubetorch_jupyter`` must work on a machine without
the ``kubernetes`` package or a kubeconfig. :func:`load` is called when the Kubernetes
backend is first used; it raises a one-line :class:`~kubetorch_jupyter.ConfigError` that
says what to install or set when something is missing.

Where the configuration comes from, first match wins:

1. ``KT_KUBECONFIG`` (then ``KUBECONFIG``, then ``~/.kube/config``), with the context
   ``KT_KUBE_CONTEXT`` (else the file's current one);
2. in a pod, its service account (``load_incluster_config``).

The namespace is ``KT_NAMESPACE``, else the context's namespace, else the pod's own (in
the cluster), else ``default``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import config
from ...exceptions import ConfigError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

__all__ = ["Cluster", "load", "require_kubernetes"]

#: Where a pod's service account namespace is mounted.
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def require_kubernetes() -> Any:
    """The ``kubernetes`` package (imported now).

    Raises:
        ConfigError: When it is not installed, saying how to install it.
    """
    try:
        import kubernetes
    except ImportError:
        raise ConfigError("the kubernetes backend needs the official client: pip install "
                          "'kubetorch-jupyter[kubernetes]' (or pip install kubernetes)") from None
    return kubernetes


@dataclass(frozen=True)
class Cluster:
    """A loaded cluster configuration: the API client and the namespace to use.

    Attributes:
        api: The ``kubernetes.client.ApiClient`` every call goes through.
        namespace: The namespace computes go to.
        source: Where the configuration came from (a path, ``in-cluster`` or ``given``),
            for messages.
    """

    api: ApiClient
    namespace: str
    source: str

    @property
    def host(self) -> str:
        """The API server's URL."""
        return str(self.api.configuration.host)


def _kubeconfig_path() -> Path | None:
    for candidate in (config.get("kubeconfig"), os.environ.get("KUBECONFIG", "")):
        if candidate:
            first = candidate.split(os.pathsep)[0]
            return Path(first).expanduser()
    default = Path("~/.kube/config").expanduser()
    return default if default.exists() else None


def _context_namespace(path: Path, context: str | None) -> str | None:
    k8s = require_kubernetes()
    try:
        contexts, current = k8s.config.list_kube_config_contexts(str(path))
    except Exception:  # noqa: BLE001 - an odd file: the namespace falls back to default
        return None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return ((chosen or {}).get("context") or {}).get("namespace")


def load(configuration: Configuration | None = None, *, namespace: str | None = None) -> Cluster:
    """The cluster to talk to: ``configuration`` when given, else the kubeconfig or pod's.

    Args:
        configuration: A ``kubernetes.client.Configuration`` (tests pass their test
            server's); None loads one as the module docstring says.
        namespace: The namespace (default: ``KT_NAMESPACE``, else the context's).

    Raises:
        ConfigError: When the ``kubernetes`` package is missing, when there is neither a
            kubeconfig nor an in-cluster service account, or when the kubeconfig (or its
            context) cannot be used.
    """
    k8s = require_kubernetes()
    wanted_ns = namespace or config.get("namespace") or None
    if configuration is not None:
        return Cluster(k8s.client.ApiClient(configuration), wanted_ns or "default", "given")
    context = config.get("kube_context") or None
    path = _kubeconfig_path()
    if path is not None:
        if not path.exists():
            raise ConfigError(f"the kubeconfig {str(path)!r} does not exist: point "
                              "KT_KUBECONFIG (or KUBECONFIG) at your cluster's kubeconfig")
        conf = k8s.client.Configuration()
        try:
            k8s.config.load_kube_config(config_file=str(path), context=context,
                                        client_configuration=conf, persist_config=False)
        except Exception as exc:  # noqa: BLE001 - ConfigException, yaml errors, a bad context
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = ("set KT_KUBE_CONTEXT to one of its contexts" if context or "context"
                    in first.lower() else "check the file (kubectl config view)")
            raise ConfigError(f"the kubeconfig {str(path)!r} cannot be used ({first}): "
                              f"{hint}") from None
        ns = wanted_ns or _context_namespace(path, context) or "default"
        return Cluster(k8s.client.ApiClient(conf), ns, str(path))
    conf = k8s.client.Configuration()
    try:
        k8s.config.load_incluster_config(client_configuration=conf)
    except Exception:  # noqa: BLE001 - ConfigException: not in a pod
        raise ConfigError("the kubernetes backend found no cluster: set KT_KUBECONFIG (or "
                          "KUBECONFIG) to a kubeconfig, or run inside a pod with a service "
                          "account; KT_BACKEND=local runs pods on this machine") from None
    ns = wanted_ns
    if ns is None:
        try:
            ns = _SA_NAMESPACE.read_text().strip() or None
        except OSError:
            ns = None
    return Cluster(k8s.client.ApiClient(conf), ns or "default", "in-cluster")

"""Tests against a real Kubernetes cluster: they run when ``KUBECONFIG`` is set.

The cluster is the kubeconfig's (``KT_KUBECONFIG``, else ``$KUBECONFIG``;
``KT_KUBE_CONTEXT`` and ``KT_NAMESPACE`` as for users), the image ``KT_TEST_IMAGE``
(default ``python:3.11-slim``: it must have Python >= 3.11 and pip, and the cluster must
be able to pull it). ``KT_TEST_REAL_CLUSTER=0`` skips them anyway; ``=1`` runs them on
the default (or in-cluster) config. With neither, they are skipped, with the reason.

    KUBECONFIG=~/.kube/kind python -m pytest tests/k8s_real -p no:randomly
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from real_cluster import USER, skip_reason

from kubetorch_jupyter.backends.kubernetes.backend import KubernetesBackend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason()
    if reason is None:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here + os.sep):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def real_backend() -> Iterator[KubernetesBackend]:
    """The backend on the kubeconfig's cluster, with ``KT_BACKEND=kubernetes`` set (as a
    user sets it) for the session: ``kt.Compute(...)`` without ``backend=`` lands there."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KT_BACKEND", "kubernetes")
        mp.setenv("KT_USERNAME", USER)
        mp.setenv("KT_PROGRESS", "0")
        be = KubernetesBackend.from_environment()
        try:
            yield be
        finally:
            be.close()

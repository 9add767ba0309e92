"""Pytest fixtures for the Kubernetes double (registered from ``tests/conftest.py``).

- ``k8s_cluster``: a fresh double for one test.
- ``k8s_cluster_module``: one double shared by a test module (cheaper; tests must not
  rely on an empty cluster: use their own names or namespaces).

Both fail the test if a controller of the double raised (a bug in the double, reported
with its traceback) and leave no process behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .cluster import K8sDouble

__all__ = ["k8s_cluster", "k8s_cluster_module"]


def _run() -> Iterator[K8sDouble]:
    cluster = K8sDouble().start()
    try:
        yield cluster
    finally:
        errors = list(cluster.errors)
        cluster.stop()
    if errors:
        pytest.fail("the Kubernetes double failed:\n" + "\n".join(errors))


@pytest.fixture()
def k8s_cluster() -> Iterator[K8sDouble]:
    """A started Kubernetes double, stopped (every pod process killed) after the test."""
    yield from _run()


@pytest.fixture(scope="module")
def k8s_cluster_module() -> Iterator[K8sDouble]:
    """A started Kubernetes double shared by the test module."""
    yield from _run()

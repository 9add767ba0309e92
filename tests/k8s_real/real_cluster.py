"""What the real-cluster tests share: the image, the user, whether they run at all."""

from __future__ import annotations

import os
import secrets

__all__ = ["IMAGE", "SLOW", "USER", "fresh", "skip_reason"]

#: The image every compute of these tests runs.
IMAGE = os.environ.get("KT_TEST_IMAGE") or "python:3.11-slim"
#: The user the tests' computes belong to (their names and labels say so).
USER = os.environ.get("KT_TEST_USERNAME") or "kt-test"
#: A cluster pulls images and schedules pods: far slower than the double.
SLOW = 900


def skip_reason() -> str | None:
    """Why the folder is skipped, or None when a real cluster is there to run against.

    A set ``KUBECONFIG`` (or ``KT_KUBECONFIG``) runs it, as the Kubernetes issue asks;
    ``KT_TEST_REAL_CLUSTER=0`` skips it anyway (a kubeconfig of a cluster you would
    rather not create pods in), ``=1`` runs it with the in-cluster or default config.
    """
    flag = os.environ.get("KT_TEST_REAL_CLUSTER")
    if flag == "0":
        return "KT_TEST_REAL_CLUSTER=0: the real-cluster tests are switched off"
    if flag == "1" or os.environ.get("KUBECONFIG") or os.environ.get("KT_KUBECONFIG"):
        return None
    return "no real cluster: set KUBECONFIG (or KT_TEST_REAL_CLUSTER=1) to run them"


def fresh(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"

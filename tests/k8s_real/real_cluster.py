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
    """Why the folder is skipped, or None when a real cluster was asked for."""
    if os.environ.get("KT_TEST_REAL_CLUSTER") == "1":
        return None
    if os.environ.get("KUBECONFIG") or os.environ.get("KT_KUBECONFIG"):
        return ("KUBECONFIG is set but KT_TEST_REAL_CLUSTER=1 is not: set it to run the "
                "real-cluster tests against that cluster")
    return "no real cluster asked for: set KT_TEST_REAL_CLUSTER=1 (and KUBECONFIG) to run them"


def fresh(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"

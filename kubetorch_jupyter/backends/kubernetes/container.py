"""What the runtime bootstrap gives the manifest renderer: how the pod runtime starts.

The bootstrap (``bootstrap.py``) knows how this client's pod runtime gets into a
container of any image and starts there; the renderer (``manifests.py``) knows workloads.
This value is all that passes between them, so either can change on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RUNTIME_PORT", "RuntimeContainer"]

#: The port the pod runtime listens on inside its container (and the Service targets).
RUNTIME_PORT = 32300


@dataclass(frozen=True)
class RuntimeContainer:
    """The runtime's part of a pod's main container, and what must exist before it.

    Attributes:
        command: The container's ``command`` (the image's entrypoint is replaced).
        env: Entries of the container's ``env`` (``{"name": ..., "value": ...}`` or
            ``valueFrom``), the runtime's own; the renderer adds the compute's.
        volumes: Pod ``volumes`` the runtime needs (its ConfigMap, the install cache).
        volume_mounts: The main container's ``volumeMounts`` for those volumes.
        objects: Objects to apply before the workload (the runtime's ConfigMap), in order.
        port: The port the runtime listens on in the container.
        readiness_path: The HTTP path that answers 200 once the runtime takes calls.
    """

    command: list[str]
    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)
    port: int = RUNTIME_PORT
    readiness_path: str = "/ready"

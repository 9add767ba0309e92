"""Code sync: the project's files reach every pod of a compute (see :mod:`.session`)."""

from .session import (
    MAX_FILE_SIZE,
    PodSync,
    ReloadError,
    SyncError,
    SyncLimitError,
    SyncReport,
    ensure,
    find_project_root,
    pod_connections,
    shipping_to,
    sync,
    synced_module,
)

__all__ = [
    "MAX_FILE_SIZE",
    "PodSync",
    "ReloadError",
    "SyncError",
    "SyncLimitError",
    "SyncReport",
    "ensure",
    "find_project_root",
    "pod_connections",
    "shipping_to",
    "sync",
    "synced_module",
]

"""One manager of computes for every front end: the ``kt`` CLI, ``%kt``, the server extension.

:class:`ComputeManager` lists, finds, starts, stops and reads the logs and detached runs of
computes across every configured backend, with an async twin of each method for event
loops (a tornado handler). It answers with :class:`ComputeSummary` records, which never
carry a token.
"""

from .manager import ComputeManager, RunSummary
from .summary import ComputeSummary

__all__ = ["ComputeManager", "ComputeSummary", "RunSummary"]

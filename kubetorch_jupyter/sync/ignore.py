"""Which files of a project travel to pods: gitignore semantics for ``.gitignore``/``.ktignore``.

Rules come from, in increasing precedence (the last matching rule decides, as in git):

1. built-in defaults (caches and tool folders nobody wants on a pod, and secrets:
   ``.env``, ``*.pem``, ``id_rsa``..., :data:`SECRET_PATTERNS`; a ``!`` rule in a
   ``.ktignore`` can bring one back),
2. ``.git/info/exclude``, then every ``.gitignore`` from the project root down to the
   file's directory,
3. every ``.ktignore`` from the root down, so a ``.ktignore`` can re-include
   (``!data/small.csv``) what ``.gitignore`` leaves out.

Some things never travel, whatever the rules say: ``.git``, ``__pycache__`` and
virtual environments (a directory holding ``pyvenv.cfg`` or ``conda-meta``).

Pattern syntax is git's: ``#`` comments, ``!`` negation, a trailing ``/`` for
directories only, a pattern with a ``/`` before its end anchored at its file's
directory, ``*``, ``?``, ``[...]`` and ``**`` (``**/x``, ``x/**``, ``a/**/b``). As in git,
a file inside an ignored directory cannot be re-included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEFAULT_PATTERNS", "NEVER_DIRS", "SECRET_PATTERNS", "SECRET_RULES", "VENV_MARKERS",
           "Rule", "ignored", "parse"]

#: Directories that never travel.
NEVER_DIRS = frozenset({".git", "__pycache__"})
#: A directory holding one of these is a virtual environment and never travels.
VENV_MARKERS = ("pyvenv.cfg", "conda-meta")
#: Left out unless a rule re-includes them.
DEFAULT_PATTERNS = (
    "*.py[cod]",
    ".hg/",
    ".svn/",
    ".ipynb_checkpoints/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
    ".nox/",
    ".DS_Store",
)
#: Secrets, should a project (or a home directory) hold them: left out unless a ``!``
#: rule re-includes one (``!.env`` in .ktignore sends it on purpose), and named in the
#: sync report.
SECRET_PATTERNS = (
    ".ssh/",
    ".aws/",
    ".gnupg/",
    ".kube/",
    ".docker/",
    "/.config/gcloud/",
    ".netrc",
    ".git-credentials",
    ".pypirc",
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    "id_ecdsa_sk",
    "id_ed25519_sk",
    "credentials.json",
    "service-account*.json",
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern line, compiled.

    Attributes:
        base: The directory of the file it came from, relative to the root ("" for it).
        regex: Matches the name (unanchored rules) or the path below ``base``.
        negate: A ``!`` rule: re-include what it matches.
        dir_only: Matches directories only (the pattern ended with ``/``).
        anchored: Matched against the path below ``base``, not just the name.
    """

    base: str
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool

    def matches(self, rel: str, name: str, is_dir: bool) -> bool:
        """Whether the rule matches the root-relative path ``rel`` (named ``name``)."""
        if self.dir_only and not is_dir:
            return False
        if not self.anchored:
            return self.regex.match(name) is not None
        if self.base:
            rel = rel[len(self.base) + 1:]
        return self.regex.match(rel) is not None


def _translate(pattern: str) -> str:
    """A gitignore glob (without leading or trailing slash) as a regular expression."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                j = i + 2
                bounded = (i == 0 or pattern[i - 1] == "/") and (j == n or pattern[j] == "/")
                if bounded and j == n:
                    out.append(".*")  # "x/**": everything inside
                    i = j
                    continue
                if bounded:
                    out.append("(?:.*/)?")  # "**/": zero or more directories
                    i = j + 1
                    continue
                while i < n and pattern[i] == "*":
                    i += 1
                out.append("[^/]*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1: j].replace("\\", "\\\\")
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + r"\Z"


def parse(lines: Iterable[str], base: str = "") -> list[Rule]:
    """Compile the lines of an ignore file found in directory ``base`` (root-relative)."""
    rules = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line or line.startswith("#"):
            continue
        while line.endswith(" ") and not line.endswith("\\ "):
            line = line[:-1]
        negate = line.startswith("!")
        if negate or line.startswith(("\\!", "\\#")):
            line = line[1:]  # the rule's "!", or the escape of a literal "!" or "#"
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        try:
            regex = re.compile(_translate(line), re.DOTALL)
        except re.error:
            continue  # git ignores a pattern it cannot parse, so do we
        rules.append(Rule(base, regex, negate, dir_only, anchored))
    return rules


SECRET_RULES = tuple(parse(SECRET_PATTERNS))
DEFAULT_RULES = tuple(parse(DEFAULT_PATTERNS)) + SECRET_RULES


def ignored(rules: Iterable[Rule], rel: str, name: str, is_dir: bool) -> bool:
    """Whether ``rel`` is left out under ``rules`` (in precedence order, last wins)."""
    for rule in reversed(tuple(rules)):
        if rule.matches(rel, name, is_dir):
            return not rule.negate
    return False

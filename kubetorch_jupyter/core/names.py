"""The one rule for compute names, and the cluster-unique name a backend makes of one.

A compute name is a DNS-1123 label that starts with a letter: lowercase letters, digits
and ``-``, ending with a letter or digit. A backend that shares a namespace between users
names its resources :func:`pod_name` = ``{username}-{name}`` (``KT_USERNAME``), so the
name is short enough that the prefixed one stays within the 63 characters Kubernetes
allows. The user-facing name stays ``name`` everywhere (the local backend keeps its files
by it).
"""

from __future__ import annotations

import re

from .. import config
from ..exceptions import ConfigError

__all__ = ["MAX_RESOURCE_NAME", "check_name", "max_name_length", "pod_name", "suggest_name"]

#: The longest DNS-1123 label (a Kubernetes object name, a Service name).
MAX_RESOURCE_NAME = 63
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _username(username: str | None) -> str:
    user = config.get("username") if username is None else username
    if not isinstance(user, str) or not _LABEL.match(user):
        raise ConfigError(f"KT_USERNAME={user!r} is not valid: use lowercase letters, digits "
                          f"and '-', starting and ending with a letter or digit "
                          f"(e.g. {_clean(str(user)) or 'user'!r})")
    return user


def max_name_length(username: str | None = None) -> int:
    """The longest compute name for ``username`` (default ``KT_USERNAME``)."""
    return MAX_RESOURCE_NAME - len(_username(username)) - 1


def _clean(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", text.lower())).strip("-")


def suggest_name(name: object, username: str | None = None) -> str:
    """A valid compute name close to ``name`` ("My Pod" -> "my-pod")."""
    limit = max_name_length(username)
    text = _clean(str(name)) or "dev"
    if not text[0].isalpha():
        text = f"c-{text}"
    return text[:limit].rstrip("-") or "dev"


def check_name(name: object, username: str | None = None) -> str:
    """``name`` if it is a valid compute name, else a ConfigError suggesting one.

    Raises:
        ConfigError: For a name that is not a DNS-1123 label starting with a letter, or
            one too long for ``{username}-{name}`` to fit in 63 characters.
    """
    limit = max_name_length(username)
    if isinstance(name, str) and _NAME.match(name) and len(name) <= limit:
        return name
    raise ConfigError(
        f"compute name {name!r} is not valid: use lowercase letters, digits and '-', "
        f"starting with a letter and ending with a letter or digit, at most {limit} "
        f"characters (e.g. {suggest_name(name, username)!r})")


def pod_name(name: str, username: str | None = None) -> str:
    """The cluster-unique resource name of compute ``name``: ``{username}-{name}``.

    Raises:
        ConfigError: When ``name`` (or ``KT_USERNAME``) is not valid.
    """
    user = _username(username)
    return f"{user}-{check_name(name, user)}"

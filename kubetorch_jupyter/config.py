"""The one table of the client's settings: name, environment variable, default, parser.

Every setting is read lazily, when it is used, so ``KT_...`` variables set after import
still count. ``kubetorch_jupyter.config.get("start_timeout")`` reads one;
:func:`describe` lists them with this machine's defaults (``kt config`` prints that).

The README's "Configuration" table is generated from :data:`SETTINGS` (and its "Pod
variables" table from ``pod_runtime.settings.POD_SETTINGS``) by
``python -m kubetorch_jupyter.docs --write-readme README.md``; ``tests/test_docs.py``
fails when the README and this table drift apart. A new setting is one row below, then
that command.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

__all__ = ["SETTINGS", "Setting", "describe", "get"]


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{text!r} is not a boolean (use 1/0, true/false)")


def _float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a whole number > 0")
    return value


def _absolute_path(text: str) -> str:
    """A path made absolute: pods run in other directories and must find the same place."""
    return str(Path(text).expanduser().resolve())


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "kubetorch-jupyter")


def _default_username() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "user"
    return re.sub(r"[^a-z0-9-]", "-", user.lower()).strip("-") or "user"


def _k8s_name(text: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) or len(value) > 63:
        raise ValueError("not a Kubernetes namespace name (lowercase letters, digits and '-')")
    return value


def _connect_mode(text: str) -> str:
    value = text.strip().lower()
    if value not in {"port-forward", "url"}:
        raise ValueError("use 'port-forward' or 'url'")
    return value


def _url_template(text: str) -> str:
    value = text.strip()
    if not value.startswith(("ws://", "wss://")):
        raise ValueError("a pod URL starts with ws:// or wss://")
    try:
        value.format(service="s", namespace="n", name="x", username="u", port=1)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"unknown placeholder {exc}; use {{service}}, {{namespace}}, "
                         "{name}, {username}, {port}") from None
    return value


def _headers(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"{part.split(':')[0]!r} is not 'Name: value'")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Setting:
    """One setting: its environment variable, default, parser and meaning.

    Attributes:
        name: What :func:`get` is called with.
        env: The environment variable that sets it.
        default: Makes the value used when the variable is unset or empty.
        parse: Turns the variable's text into the value; raises ``ValueError`` if bad.
        help: One sentence for the docs and ``kt config``.
        shown: How the default reads in the docs (Markdown) when it depends on the
            machine (``"`$USER`"``); empty: the docs show ``default()`` itself.
    """

    name: str
    env: str
    default: Callable[[], Any]
    parse: Callable[[str], Any]
    help: str
    shown: str = ""


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("backend", "KT_BACKEND", lambda: "local", str,
                "Where pods run: 'local' (processes on this machine) or 'kubernetes'."),
        Setting("state_dir", "KT_STATE_DIR", _default_state_dir, _absolute_path,
                "Where the local backend records its pods and caches image environments.",
                shown="`$XDG_STATE_HOME/kubetorch-jupyter`, else "
                      "`~/.local/state/kubetorch-jupyter`"),
        Setting("username", "KT_USERNAME", _default_username, str,
                "Prefix of pod names on a shared cluster ({username}-{name}).",
                shown="`$USER` (lower case, other characters as `-`)"),
        Setting("start_timeout", "KT_START_TIMEOUT", lambda: 120.0, _float,
                "Seconds to wait for a new pod to answer."),
        Setting("connect_timeout", "KT_CONNECT_TIMEOUT", lambda: 10.0, _float,
                "Seconds to wait for a websocket connection to a pod."),
        Setting("reconnect_timeout", "KT_RECONNECT_TIMEOUT", lambda: 30.0, _float,
                "Seconds a dropped connection keeps retrying before in-flight calls fail."),
        Setting("shm", "KT_SHM", lambda: True, _bool,
                "Move large buffers through shared memory when client and pod share a host."),
        Setting("max_pending_events", "KT_MAX_PENDING_EVENTS", lambda: 10_000, _count,
                "Output events a call keeps while nobody reads it (a submit() never "
                "awaited); older ones are dropped with a note."),
        Setting("progress", "KT_PROGRESS", lambda: True, _bool,
                "Show progress bars for pod start, image builds and sync."),
        Setting("sync", "KT_SYNC", lambda: True, _bool,
                "Sync the project's files to pods before each call (%kt sync works either way)."),
        Setting("cell_stats", "KT_CELL_STATS", lambda: False, _bool,
                "Print what each %%kt cell cost (wall and CPU time, peak memory, GPUs) under "
                "its output, as %%kt --stats does."),
        Setting("python", "KT_PYTHON", lambda: "", str,
                "Python interpreter for local pods whose image has no install steps.",
                shown="the client's own"),
        Setting("namespace", "KT_NAMESPACE", lambda: "", _k8s_name,
                "Kubernetes namespace of new computes (and the one kt list looks in).",
                shown="the kubeconfig context's namespace, else `default`"),
        Setting("kubeconfig", "KT_KUBECONFIG", lambda: "", _absolute_path,
                "The kubeconfig file of the Kubernetes backend (without one, in a pod: its "
                "service account).", shown="`$KUBECONFIG`, else `~/.kube/config`"),
        Setting("kube_context", "KT_KUBE_CONTEXT", lambda: "", str,
                "The kubeconfig context the Kubernetes backend uses.",
                shown="the kubeconfig's current context"),
        Setting("k8s_connect", "KT_K8S_CONNECT", lambda: "port-forward", _connect_mode,
                "How the client reaches Kubernetes pods: 'port-forward' (through the API "
                "server) or 'url' (KT_K8S_URL: in the cluster, or an ingress)."),
        Setting("k8s_url", "KT_K8S_URL", lambda: "ws://{service}.{namespace}.svc:{port}",
                _url_template,
                "With KT_K8S_CONNECT=url: the pod's websocket base URL; {service}, "
                "{namespace}, {name}, {username} and {port} are filled in (wss:// checks "
                "the certificate)."),
        Setting("k8s_headers", "KT_K8S_HEADERS", dict, _headers,
                "With KT_K8S_CONNECT=url: extra upgrade headers for an ingress, as "
                "'Name: value; Name2: value2'.", shown="none"),
        Setting("crontab_file", "KT_CRONTAB_FILE", lambda: "", _absolute_path,
                "A crontab file local job schedules are written to instead of the user's "
                "crontab (for tests, and machines without the crontab command).",
                shown="(unset: the user's crontab)"),
        Setting("job_compute", "KT_JOB_COMPUTE", lambda: "", str,
                "Set in a scheduled job's pod: %%kt cells for the compute of this name run in "
                "the job's own kernel (the job runs on that compute).",
                shown="(unset)"),
        Setting("job_spec", "KT_JOB_SPEC", lambda: "", str,
                "Set by a job run for its kernel: the job's compute spec (JSON); cells that "
                "name that compute (or no compute) get this spec.",
                shown="(unset)"),
    ]
}


def get(name: str) -> Any:
    """Read a setting now: its environment variable if set, else its default.

    Raises:
        ConfigError: When the variable is set to something its parser rejects.
    """
    setting = SETTINGS[name]
    raw = os.environ.get(setting.env)
    if raw is None or raw == "":
        return setting.default()
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{setting.env}={raw!r}: {exc}") from None


def describe() -> list[tuple[str, str, str]]:
    """(environment variable, default, help) for every setting, for docs and ``kt config``."""
    rows = []
    for s in SETTINGS.values():
        try:
            default = str(s.default())
        except (KeyError, OSError, ValueError):
            default = "?"
        rows.append((s.env, default, s.help))
    return rows

"""A pod's log through the API: the last lines, or followed as it grows.

:func:`read_log` answers ``kt logs`` and the crash messages (the previous run's lines of
a container that restarted); :func:`follow_log` streams ``kt logs -f``. A streamed read
blocks in ``recv``: :func:`abort_stream` ends it from another thread by shutting the
socket down (closing the response there would wait for the reader's lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import apply as _apply

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["LOG_TAIL_LINES", "abort_stream", "follow_log", "plain_line", "read_log"]

logger = logging.getLogger(__name__)

#: Lines of a crashed container's log an error carries.
LOG_TAIL_LINES = 30


def plain_line(line: str) -> str:
    """A line of the pod's log as people read it.

    Pods on Kubernetes log JSON lines (``KT_POD_LOG_FORMAT=json``: for the cluster's log
    shipper); what they print is the ``text`` of each, prefixed with the call it came
    from when there is one. Any other line (the start script's, a crash's) is as it is.
    """
    body = line.rstrip("\n")
    if not body.startswith("{"):
        return line
    try:
        entry = json.loads(body)
    except ValueError:
        return line
    if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
        return line
    text = entry["text"]
    if entry.get("stream") == "log" and entry.get("level"):
        text = f"{str(entry['level']).upper()} {entry.get('logger') or ''}: {text}".replace(
            " : ", ": ")
    return text + ("\n" if line.endswith("\n") else "")


def _plain(text: str) -> str:
    return "".join(plain_line(line) for line in text.splitlines(keepends=True))


def _log_path(namespace: str, pod: str) -> str:
    return _apply.Kind("v1", "Pod", "pods").path(namespace, pod) + "/log"


def read_log(api: ApiClient, namespace: str, pod: str, *, tail: int = LOG_TAIL_LINES,
             previous: bool = False, container: str | None = None,
             timeout: _apply.Timeout = 10.0) -> str:
    """The last ``tail`` lines of a pod's log ("" when it cannot be read)."""
    query: list[tuple[str, Any]] = [("tailLines", tail)]
    if previous:
        query.append(("previous", "true"))
    if container:
        query.append(("container", container))
    params = api.param_serialize(method="GET", resource_path=_log_path(namespace, pod),
                                 query_params=query, header_params={"Accept": "text/plain"},
                                 auth_settings=["BearerToken"])
    try:
        response = api.call_api(*params, _request_timeout=timeout)
        data = response.read()
    except Exception:  # noqa: BLE001 - a log is a nicety in an error already being raised
        return ""
    if not 200 <= int(response.status) <= 299:
        return ""
    return _plain(data.decode("utf-8", "replace")) if data else ""


def abort_stream(response: Any) -> None:
    """Unblock a thread reading a streamed response (a followed log, a watch) from another.

    Closing the response from another thread would wait for the reader's lock (the reader
    is blocked in ``recv``); shutting the socket down makes that ``recv`` return at once,
    and the reader then closes the response itself.
    """
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def follow_log(api: ApiClient, namespace: str, pod: str, *, tail: int,
               container: str | None = None,
               stop: threading.Event | None = None) -> Iterator[str]:
    """The last ``tail`` lines of the pod's log, then each new one, until ``stop`` is set.

    Ends by itself when the log ends (the container stopped).
    """
    query: list[tuple[str, Any]] = [("follow", "true"), ("tailLines", tail)]
    if container:
        query.append(("container", container))
    params = api.param_serialize(method="GET", resource_path=_log_path(namespace, pod),
                                 query_params=query, header_params={"Accept": "text/plain"},
                                 auth_settings=["BearerToken"])
    response = api.call_api(*params, _request_timeout=None).response
    return _lines(response, stop or threading.Event())


def _lines(response: Any, stop: threading.Event) -> Iterator[str]:
    """The lines of a streamed log response until it ends or ``stop`` is set."""
    done = threading.Event()

    def closer() -> None:  # a blocked read ends only when its socket is shut down
        while not stop.wait(0.5):
            if done.is_set():
                return
        abort_stream(response)

    watcher = threading.Thread(target=closer, name="kt-follow-logs-close", daemon=True)
    watcher.start()
    try:
        pending = b""
        for chunk in response.stream(4096, decode_content=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield plain_line(line.decode("utf-8", "replace") + "\n")
            if stop.is_set():
                return
        if pending:
            yield plain_line(pending.decode("utf-8", "replace"))
    except Exception as exc:  # noqa: BLE001 - closed by stop, or the pod went
        logger.debug("log stream ended: %s", exc)
    finally:
        done.set()
        watcher.join(timeout=2.0)
        with contextlib.suppress(Exception):
            response.close()

"""Helpers for the tests that drive the Kubernetes double through the official client.

(Not a conftest: test modules import these by name, as they do kt_testing.)
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

from kt_testing import timeout
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward

__all__ = ["HTTP", "HTTP_PROBE", "POD_IP", "PY", "Forward", "deployment", "first_line",
           "namespace", "pods_of", "read_all", "ready", "status_of", "unused_port", "wait_for",
           "wait_gone"]

PY = sys.executable
NS_LABEL = "k8s-double-test"


@contextlib.contextmanager
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace (tests sharing one double keep to their own), deleted after."""
    name = f"t-{secrets.token_hex(4)}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {NS_LABEL: "1"}}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def wait_for(list_fn: Callable[..., Any], predicate: Callable[[Any], bool], *args: Any,
             seconds: float = 30, since: str | None = None, **kwargs: Any) -> Any:
    """List, then watch from the list's resourceVersion, until an item satisfies ``predicate``.

    With ``since``, only watch, from that resourceVersion (every change after it is seen).
    """
    if since is None:
        listed = list_fn(*args, **kwargs)
        for item in listed.items:
            if predicate(item):
                return item
        since = listed.metadata.resource_version
    w = watch.Watch()
    last = None
    for event in w.stream(list_fn, *args, resource_version=since,
                          timeout_seconds=int(timeout(seconds)), **kwargs):
        last = event["object"]
        if event["type"] != "DELETED" and predicate(last):
            w.stop()
            return last
    raise AssertionError(f"timed out; last seen: {last}")


def wait_gone(list_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """List, then watch, until nothing is listed."""
    listed = list_fn(*args, **kwargs)
    left = {o.metadata.name for o in listed.items}
    if left:
        for event in watch.Watch().stream(list_fn, *args,
                                          resource_version=listed.metadata.resource_version,
                                          timeout_seconds=int(timeout(30)), **kwargs):
            if event["type"] == "DELETED":
                left.discard(event["object"].metadata.name)
                if not left:
                    break
    assert list_fn(*args, **kwargs).items == []


def first_line(core: client.CoreV1Api, pod: str, ns: str) -> bytes:
    """The first line the pod's container prints (following its log until then)."""
    stream = core.read_namespaced_pod_log(pod, ns, follow=True, _preload_content=False)
    text = b""
    for chunk in stream.stream(1):
        text += chunk
        if text.endswith(b"\n"):
            break
    stream.close()  # the rest is never read: the connection is not reused
    stream.release_conn()
    return text


def deployment(name: str, command: list[str], *, replicas: int = 1, env: list[Any] | None = None,
               probe: dict[str, Any] | None = None, image: str = "python:3.11",
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "command": command,
                                 "env": env or []}
    if probe:
        container["readinessProbe"] = probe
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [container], **(extra or {})}}}}


POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
HTTP = [PY, "-u", "-m", "http.server", "8000", "--bind", "$(POD_IP)"]
HTTP_PROBE = {"httpGet": {"path": "/", "port": 8000}}


def pods_of(api: client.ApiClient, ns: str, app: str) -> list[client.V1Pod]:
    return list(client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"app={app}").items)


def ready(p: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])


class Forward:
    """``kubernetes.stream.portforward`` plus the clean-up the client leaves out.

    When the server ends a port-forward (the pod closed its side), the client's proxy
    thread returns without closing its websocket's socket (kubernetes 37, ws_client.py);
    ``close`` waits for that thread and then shuts the socket.
    """

    def __init__(self, core: client.CoreV1Api, pod: str, ns: str, ports: str) -> None:
        import threading

        before = set(threading.enumerate())
        self.pf = portforward(core.connect_get_namespaced_pod_portforward, pod, ns, ports=ports)
        self.threads = [t for t in threading.enumerate() if t not in before
                        and t.name.startswith("Kubernetes port forward proxy")]

    def close(self) -> None:
        self.pf.close()
        for t in self.threads:
            t.join(timeout(30))
        self.pf.websocket.shutdown()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def read_all(sock: Any) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data



"""How this client's pod runtime gets into a container of any image, with no image build.

A user names an image they already have (``pytorch/pytorch:...``, ``python:3.12-slim``).
Nothing is built and the pod needs no network: the client packs its own ``pod_runtime``
and its two dependencies into a zip (:mod:`.bundle`, ~300 KB) and applies it in a
ConfigMap; the container's command is a small POSIX ``sh`` script from that ConfigMap
(``start.sh``) that finds a Python >= 3.11 in the image and execs ``kt_start.py``, which
runs the ``Image``'s steps (cached per image hash on a volume), unpacks the runtime and
execs ``python -m pod_runtime``. :mod:`.kt_start`'s docstring tells the pod's side.

Why a ConfigMap of sources rather than wheels from an index or an init container: the
pod may have no network, an init container would need an image of ours (pulled from a
registry the cluster may not reach), and pure-Python sources run on any CPython >= 3.11
whatever its ABI or architecture. The bundle's hash names the ConfigMap, so each client
version has its own and pods of different versions coexist in one namespace.

Ownership: the ConfigMap ``{username}-kt-runtime-{version}-{hash8}`` is shared by all of
a user's computes of this client version. It carries the user's identity labels and
``kubetorch.dev/component=runtime`` but *no* compute label and no owner reference, so
tearing down one compute (selected by its compute label) never removes it. Nothing
removes it yet (``kt teardown --all`` would race another process's ``.to()``); its
labels select it for a clean-up. It is per user, not per namespace, so one user's
clean-up never removes what another's pods mount; it is
immutable (a different bundle is a different name), which also spares the kubelet
from watching it.

Phases for a progress display: the pod's log lines that start with :data:`LOG_PREFIX`
(:func:`log_phase` reads them; see there).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from ....core.names import pod_name
from ....core.spec import ComputeSpec
from ....exceptions import ConfigError
from ..container import RUNTIME_PORT, RuntimeContainer
from ..identity import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, USER_LABEL
from .bundle import CONFIGMAP_LIMIT, Bundle, build_bundle, runtime_bundle
from .kt_start import EXIT_RUNTIME, EXIT_SETUP, EXIT_STEP, PREFIX

__all__ = [
    "CACHE_DIR", "CONFIGMAP_LIMIT", "EXIT_RUNTIME", "EXIT_SETUP", "EXIT_STEP", "LOG_PREFIX",
    "RUNTIME_DIR", "RUNTIME_HASH_LABEL", "RUNTIME_VERSION_LABEL", "START_COMMAND", "Bundle",
    "build_bundle",
    "log_phase", "runtime_bundle", "runtime_configmap", "runtime_configmap_name",
    "runtime_container", "runtime_selector",
]

#: Where the runtime ConfigMap is mounted (``KT_RUNTIME_DIR``), read-only.
RUNTIME_DIR = "/opt/kt/runtime"
#: Where the install cache volume is mounted (``KT_CACHE_DIR``).
CACHE_DIR = "/var/cache/kt"
#: The prefix of every line the bootstrap prints (errors: ``kt-bootstrap: error: ...``).
LOG_PREFIX = PREFIX
#: Labels of the runtime ConfigMap beside the user's identity labels.
RUNTIME_VERSION_LABEL = "kubetorch.dev/runtime-version"
RUNTIME_HASH_LABEL = "kubetorch.dev/runtime-hash"
#: The container's ``sh -c`` script: run start.sh from the mount, or say it is missing.
START_COMMAND = (
    f'd="${{KT_RUNTIME_DIR:-{RUNTIME_DIR}}}"; '
    f'if [ ! -r "$d/start.sh" ]; then echo "{PREFIX} error: $d/start.sh is missing: the '
    f'runtime ConfigMap is not mounted at KT_RUNTIME_DIR ($d)" >&2; exit {EXIT_SETUP}; fi; '
    f'exec /bin/sh "$d/start.sh"')
#: Names of the pod volumes (DNS labels, unique within the pod).
RUNTIME_VOLUME = "kt-runtime"
CACHE_VOLUME = "kt-cache"
_USERNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def runtime_configmap_name(username: str, bundle: Bundle | None = None) -> str:
    """``{username}-kt-runtime-{version}-{hash8}``: one per user and client version.

    The dots of the version keep it apart from every compute's ``{username}-{name}``
    (a compute name is a DNS label, without dots).

    Raises:
        ConfigError: When ``username`` is not a DNS label.
    """
    if not isinstance(username, str) or not _USERNAME.match(username) or len(username) > 63:
        raise ConfigError(f"username {username!r} is not valid (KT_USERNAME): use lowercase "
                          f"letters, digits and '-', starting and ending with a letter or digit")
    return f"{username}-kt-runtime-{(bundle or runtime_bundle()).tag}"


def runtime_selector(username: str) -> str:
    """A label selector for ``username``'s runtime ConfigMaps (every client version)."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{USER_LABEL}={username},{COMPONENT_LABEL}=runtime"


def runtime_configmap(*, username: str, namespace: str,
                      bundle: Bundle | None = None) -> dict[str, Any]:
    """The ConfigMap holding the runtime bundle and the start scripts (see the module doc).

    Each key becomes a file where the pod mounts it: ``runtime.zip`` (binary),
    ``start.sh``, ``kt_start.py`` and ``bundle.json`` (version and hashes).
    """
    bundle = bundle or runtime_bundle()
    labels = {MANAGED_BY_LABEL: MANAGED_BY, USER_LABEL: username, COMPONENT_LABEL: "runtime",
              RUNTIME_VERSION_LABEL: bundle.tag.rsplit("-", 1)[0],
              RUNTIME_HASH_LABEL: bundle.hash[:16]}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": runtime_configmap_name(username, bundle), "namespace": namespace,
                     "labels": labels},
        "immutable": True,
        "data": dict(bundle.files),
        "binaryData": {"runtime.zip": base64.b64encode(bundle.zip).decode()},
    }


def runtime_container(spec: ComputeSpec, *, username: str, namespace: str,
                      cache_claim: str | None = None) -> RuntimeContainer:
    """The runtime's part of ``spec``'s main container: command, env, volumes, ConfigMap.

    Args:
        spec: The compute (its image steps and hash, its own env's names, its name).
        username: ``KT_USERNAME`` of the compute's owner (labels, names).
        namespace: Where the ConfigMap goes (the compute's namespace).
        cache_claim: A PersistentVolumeClaim to cache image installs on, shared by the
            pods that mount it (``ReadWriteMany`` for several nodes). Without one the
            cache is an ``emptyDir``: it survives container restarts within a pod (a
            crash or an OOM kill does not reinstall) but not a new pod.

    The manifest renderer adds the token (``KT_POD_TOKEN`` from the compute's Secret)
    and the compute's own env; the image's ``set_env_vars`` are applied by the start
    script, in step order, and never override the compute's own variables.
    """
    bundle = runtime_bundle()
    image = spec.build_image()
    steps = [[kind, list(payload)] for kind, payload in image.steps]
    env: list[dict[str, Any]] = [
        {"name": "KT_RUNTIME_DIR", "value": RUNTIME_DIR},
        {"name": "KT_CACHE_DIR", "value": CACHE_DIR},
        {"name": "KT_RUNTIME_PORT", "value": str(RUNTIME_PORT)},
        # Every interface of the pod: a port-forward dials the pod's localhost, a Service
        # its IP. Spelled out (not left to the start script's default) so that whatever
        # runs the container sees where it binds.
        {"name": "KT_POD_HOST", "value": "0.0.0.0"},
        {"name": "KT_IMAGE_STEPS", "value": json.dumps(steps, separators=(",", ":"))},
        {"name": "KT_IMAGE_HASH", "value": spec.image_hash},
        {"name": "KT_COMPUTE_ENV_NAMES", "value": ",".join(sorted(spec.env))},
        {"name": "KT_POD_NAME", "value": pod_name(spec.name, username)},
        # the `pod` label of metrics and logs: this pod's own name (downward API)
        {"name": "KT_POD_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # JSON lines on stdout, for the cluster's log shipper (Loki labels)
        {"name": "KT_POD_LOG_FORMAT", "value": "json"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.inactivity_ttl:
        # the pod stops itself after this long without calls, scaling its workload to 0
        env.append({"name": "KT_POD_INACTIVITY_TTL", "value": f"{spec.inactivity_ttl:g}"})
    cache: dict[str, Any] = ({"persistentVolumeClaim": {"claimName": cache_claim}}
                             if cache_claim else {"emptyDir": {}})
    volumes = [
        {"name": RUNTIME_VOLUME,
         "configMap": {"name": runtime_configmap_name(username, bundle), "defaultMode": 0o444}},
        {"name": CACHE_VOLUME, **cache},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": RUNTIME_VOLUME, "mountPath": RUNTIME_DIR, "readOnly": True},
        {"name": CACHE_VOLUME, "mountPath": CACHE_DIR},
    ]
    command = ["/bin/sh", "-c", START_COMMAND]
    return RuntimeContainer(
        command=command, env=env, volumes=volumes, volume_mounts=mounts,
        objects=[runtime_configmap(username=username, namespace=namespace, bundle=bundle)],
        port=RUNTIME_PORT, readiness_path="/ready")


def log_phase(log: str) -> tuple[str | None, str | None]:
    """The start phase a pod's log shows, and its bootstrap error if it printed one.

    Returns:
        ``(phase, error)``: phase is ``"installing"`` (the runtime or the image's
        steps), ``"starting runtime"`` (the runtime process is starting), or None
        before the bootstrap printed anything; error is the text after
        ``kt-bootstrap: error:`` (one line naming what failed), or None.
    """
    phase = error = None
    for line in log.splitlines():
        if not line.startswith(LOG_PREFIX):
            continue
        text = line[len(LOG_PREFIX):].strip()
        if text.startswith("error:"):
            error = text[len("error:"):].strip()
        elif text.startswith("starting runtime"):
            phase = "starting runtime"
        else:
            phase = "installing"
    return phase, error

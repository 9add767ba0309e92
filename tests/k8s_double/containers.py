"""What a container is made of here: its image, environment and volumes, from the pod spec.

- **Images** map to a Python environment on this machine (:class:`Image`: a ``bin``
  directory put first on ``PATH``, plus the image's own ``ENV``); by default every image
  is this interpreter's environment. An image marked missing fails to pull.
- **Environment**: ``envFrom`` (ConfigMaps, Secrets, with ``prefix``), then ``env`` with
  ``value`` (``$(VAR)`` expanded against the variables defined before it, ``$$``
  escaping), ``valueFrom.secretKeyRef``/``configMapKeyRef`` (``optional`` honoured) and
  ``fieldRef`` (name, namespace, uid, labels, annotations, nodeName, podIP, hostIP,
  serviceAccountName). A missing Secret or key is ``CreateContainerConfigError``.
- **Volumes** are directories under the double's root: configMap/secret (one file per
  key, ``items`` honoured), emptyDir (kept across container restarts of the pod),
  persistentVolumeClaim (one directory per claim, kept for the double's lifetime),
  hostPath (the path itself), projected configMap/secret sources and downwardAPI files.
  A container "mounts" them by **path rewriting**: every occurrence of a ``mountPath``
  (with ``subPath`` applied) in its command, args, env values and workingDir becomes
  the directory. A path the program builds itself (not spelled in those strings) is not
  rewritten: that is this double's limitation.
- **Network**: pods share the host's network namespace, each with its own loopback
  address; ``0.0.0.0`` spelled in command, args or env is rewritten to the pod's IP (an
  address a program defaults to in its own code is not: it binds every interface, as it
  would on a host, and a second such pod finds the port taken).
"""

from __future__ import annotations

import base64
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .resources import resource
from .store import Store

__all__ = ["ConfigError", "Image", "Images", "MountError", "container_env", "expand",
           "mount_volumes", "rewrite"]

Obj = dict[str, Any]
_SECRETS = resource("", "v1", "secrets")
_CONFIGMAPS = resource("", "v1", "configmaps")


class ConfigError(Exception):
    """The container cannot be configured (``CreateContainerConfigError``)."""


class MountError(Exception):
    """A volume cannot be set up (a ``FailedMount`` event; the pod stays ContainerCreating)."""


@dataclass
class Image:
    """What an image name stands for on this machine.

    Attributes:
        bin_dir: Directory put first on ``PATH`` (a venv's ``bin``); None: this interpreter's.
        env: The image's ``ENV`` (e.g. ``PYTHONPATH``).
        entrypoint: The command a container without ``command`` runs (its ``args`` follow).
        pull_secret: A private image: it pulls only with this ``imagePullSecrets`` name.
    """

    bin_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    pull_secret: str | None = None

    def path(self) -> str:
        """The container's ``PATH``."""
        first = self.bin_dir or os.path.dirname(sys.executable)
        return os.pathsep.join([first, "/usr/local/bin", "/usr/bin", "/bin"])


class Images:
    """The image map: exact names first, then the default; ``missing`` never pull."""

    def __init__(self, default: Image | None = None) -> None:
        self.default = default or Image()
        self.named: dict[str, Image] = {}
        self.missing: set[str] = set()

    def set(self, image: str, spec: Image) -> None:
        """Map ``image`` to ``spec``."""
        self.named[image] = spec
        self.missing.discard(image)

    def pull(self, image: str, pull_secrets: list[str]) -> Image:
        """The image, or an error message as the kubelet reports a failed pull.

        Raises:
            LookupError: The image cannot be pulled (message as ``ErrImagePull``'s).
        """
        ref = image if "/" in image.split(":")[0] else f"docker.io/library/{image}"
        if image in self.missing:
            raise LookupError(
                f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to '
                f'pull and unpack image "{ref}": failed to resolve reference "{ref}": '
                f"{ref}: not found")
        spec = self.named.get(image, self.default)
        if spec.pull_secret and spec.pull_secret not in pull_secrets:
            raise LookupError(
                f'Failed to pull image "{image}": rpc error: code = Unknown desc = failed to '
                f'pull and unpack image "{ref}": failed to resolve reference "{ref}": pull '
                "access denied, repository does not exist or may require authorization: "
                "authorization failed: no basic auth credentials")
        return spec


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names replaced, ``$$`` -> ``$``, rest kept."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REF.sub(sub, value)


def _decode(obj: Obj, kind: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if kind == "Secret":
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v)
        for k, v in (obj.get("stringData") or {}).items():
            out[k] = str(v).encode()
    else:
        for k, v in (obj.get("data") or {}).items():
            out[k] = str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = base64.b64decode(v)
    return out


def field_value(pod: Obj, path: str) -> str:
    """A ``fieldRef.fieldPath`` of the pod."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
              "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
              "status.podIPs": status.get("podIP")}
    if path not in simple:
        raise ConfigError(f'unsupported fieldPath "{path}"')
    return str(simple[path] or "")


def _ref(store: Store, kind: str, ns: str, ref: Obj) -> dict[str, bytes] | None:
    rt = _SECRETS if kind == "Secret" else _CONFIGMAPS
    obj = store.find(rt, ns, ref.get("name", ""))
    if obj is None:
        if ref.get("optional"):
            return None
        raise ConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
    return _decode(obj, kind)


def container_env(store: Store, pod: Obj, container: Obj) -> dict[str, str]:
    """The container's environment from ``envFrom`` and ``env`` (not the image's).

    Raises:
        ConfigError: A referenced Secret/ConfigMap or key is missing (and not optional).
    """
    ns = pod["metadata"].get("namespace", "")
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in src:
                found = _ref(store, kind, ns, src[key]) or {}
                env.update({prefix + k: v.decode(errors="replace") for k, v in found.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        vf = item["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            res = vf["resourceFieldRef"]["resource"]
            kind, _, rname = res.partition(".")
            env[name] = str(((container.get("resources") or {}).get(kind) or {}).get(rname, "0"))
        else:
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if key in vf:
                    ref = vf[key]
                    data = _ref(store, kind, ns, ref)
                    if data is None:
                        break
                    if ref["key"] not in data:
                        if ref.get("optional"):
                            break
                        raise ConfigError(f"couldn't find key {ref['key']} in {kind} "
                                          f"{ns}/{ref.get('name')}")
                    env[name] = data[ref["key"]].decode(errors="replace")
    return env


def _write_files(target: Path, data: dict[str, bytes], items: list[Obj] | None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    chosen = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    for key, rel in chosen.items():
        if key in data:
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])


def mount_volumes(store: Store, pod: Obj, root: Path) -> dict[str, Path]:
    """Set up every volume of the pod; returns volume name -> directory.

    Raises:
        MountError: A ConfigMap/Secret it needs is missing (message as the kubelet's event).
    """
    ns, uid = pod["metadata"].get("namespace", ""), pod["metadata"]["uid"]
    out: dict[str, Path] = {}
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name = vol["name"]
        target = root / "pods" / uid / "volumes" / name
        try:
            if "configMap" in vol or "secret" in vol:
                kind = "ConfigMap" if "configMap" in vol else "Secret"
                src = vol.get("configMap") or vol.get("secret") or {}
                ref = {"name": src.get("name") or src.get("secretName"),
                       "optional": src.get("optional")}
                _write_files(target, _ref(store, kind, ns, ref) or {}, src.get("items"))
            elif "projected" in vol:
                for s in vol["projected"].get("sources") or []:
                    for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                        if key in s:
                            _write_files(target, _ref(store, kind, ns, s[key]) or {},
                                         s[key].get("items"))
                target.mkdir(parents=True, exist_ok=True)
            elif "downwardAPI" in vol:
                data = {i["path"]: field_value(pod, i["fieldRef"]["fieldPath"]).encode()
                        for i in vol["downwardAPI"].get("items") or [] if "fieldRef" in i}
                _write_files(target, data, None)
            elif "emptyDir" in vol:
                target.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in vol:
                target = root / "pvcs" / ns / vol["persistentVolumeClaim"]["claimName"]
                target.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in vol:
                target = Path(vol["hostPath"]["path"])
            else:
                raise MountError(f'MountVolume.SetUp failed for volume "{name}" : this '
                                 "volume type is not served by the test double")
        except ConfigError as exc:
            raise MountError(f'MountVolume.SetUp failed for volume "{name}" : {exc}') from exc
        out[name] = target
    return out


def mounts_of(container: Obj, volumes: dict[str, Path]) -> list[tuple[str, str]]:
    """(mountPath, directory) of a container, longest mountPath first.

    Raises:
        MountError: A mount names no volume of the pod.
    """
    out = []
    for m in container.get("volumeMounts") or []:
        if m["name"] not in volumes:
            raise MountError(f'volume "{m["name"]}" not found in the pod\'s volumes')
        host = volumes[m["name"]] / m["subPath"] if m.get("subPath") else volumes[m["name"]]
        if m["mountPath"].rstrip("/"):
            out.append((m["mountPath"].rstrip("/"), str(host)))
    return sorted(out, key=lambda p: -len(p[0]))


_ANY = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])")


def rewrite(value: str, mounts: list[tuple[str, str]], pod_ip: str | None = None) -> str:
    """``value`` with every mountPath occurrence replaced by its directory.

    With ``pod_ip``, the address ``0.0.0.0`` becomes the pod's IP: pods here share the
    host's network namespace, so "every interface of the pod" is its own loopback address.
    """
    if pod_ip is not None:
        value = _ANY.sub(pod_ip, value)
    for mount, host in mounts:
        value = re.sub(rf"(?<![\w.-]){re.escape(mount)}(?=/|$|[^\w.-])",
                       host.replace("\\", "\\\\"), value)
    return value

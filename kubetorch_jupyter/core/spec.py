"""``ComputeSpec``: everything a backend needs to create a pod, as one frozen value.

A :class:`~kubetorch_jupyter.Compute` is what users write; its :attr:`~Compute.spec` is
what backends read and store. A spec goes to JSON and back (a pod record, a Kubernetes
annotation, a REST answer), has one canonical hash (:meth:`ComputeSpec.spec_hash`) and a
human diff (:meth:`ComputeSpec.diff`: ``"memory 4Gi -> 8Gi"``) that the restart policy
(:mod:`.policy`) names in its warnings and errors.

Fields can be added without breaking stored specs: :meth:`~ComputeSpec.from_json` ignores
keys it does not know (a newer client's), and a field left at its default is not part of
the hash, so adding one does not make every running pod look changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from .image import Image
from .resources import format_bytes

__all__ = ["ComputeSpec"]

#: Version of the JSON form; readers accept any and ignore what they do not know.
SCHEMA = 1


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


def _plain(value: Any) -> Any:
    """``value`` with read-only mappings turned back into dicts (JSON-able)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, eq=True)
class ComputeSpec:
    """What a pod is made from; frozen, JSON round-trip, one hash, a human diff.

    Attributes:
        name: The user-facing compute name (backends derive resource names from it,
            see :func:`.names.pod_name`).
        cpus: CPU cores, or None (the backend's default).
        memory: Memory in bytes, or None.
        gpus: Number of GPUs.
        image: The :class:`~kubetorch_jupyter.Image` as JSON (base and steps);
            :meth:`build_image` makes it again.
        env: The compute's own environment variables (the image's are in its steps).
        inactivity_ttl: Seconds without calls after which the pod stops, or None.
        backend: The backend's name.
        kubernetes: The Kubernetes fields (node selector, tolerations, volumes...) as
            :meth:`.backends.kubernetes.options.KubernetesOptions.to_json` writes them,
            only those not at their default; ignored by the local backend.
    """

    name: str
    cpus: float | None = None
    memory: int | None = None
    gpus: int = 0
    image: Mapping[str, Any] = field(default_factory=lambda: _frozen(Image().to_json()))
    env: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    inactivity_ttl: float | None = None
    backend: str = "local"
    kubernetes: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "image", _frozen(Image.from_json(dict(self.image)).to_json()))
        set_(self, "env", _frozen({str(k): str(v) for k, v in self.env.items()}))
        set_(self, "kubernetes", _frozen(_plain(self.kubernetes)))
        set_(self, "gpus", int(self.gpus))
        if self.cpus is not None:
            set_(self, "cpus", float(self.cpus))
        if self.memory is not None:
            set_(self, "memory", int(self.memory))
        if self.inactivity_ttl is not None:
            set_(self, "inactivity_ttl", float(self.inactivity_ttl))

    def __hash__(self) -> int:
        return hash(self.spec_hash())

    # ---- derived -----------------------------------------------------------------------

    def build_image(self) -> Image:
        """The :class:`~kubetorch_jupyter.Image` this spec's ``image`` describes."""
        return Image.from_json(dict(self.image))

    @property
    def image_hash(self) -> str:
        """The image's content hash (what an environment is cached by; env vars excluded)."""
        return self.build_image().content_hash()

    @property
    def pod_env(self) -> dict[str, str]:
        """The pod's environment variables: the image's, then the compute's own."""
        return {**self.build_image().env, **self.env}

    # ---- JSON --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_json` reads it back (``image_hash`` is for readers)."""
        out: dict[str, Any] = {"schema": SCHEMA}
        for f in fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        out["image_hash"] = self.image_hash
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ComputeSpec:
        """Inverse of :meth:`to_json`; keys it does not know (a newer client's) are ignored.

        Raises:
            ValueError: When ``data`` has no name.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise ValueError("a compute spec needs a name")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and v is not None}
        definition = data.get("definition")
        if not isinstance(kwargs.get("image", {}), Mapping):  # a record of an older client
            kwargs.pop("image")
            kwargs.pop("env", None)
            if isinstance(definition, Mapping):
                kwargs.update({k: definition[k] for k in ("image", "env") if k in definition})
        return cls(**kwargs)

    def _canonical(self) -> dict[str, Any]:
        """The JSON form without derived keys and without fields at their defaults."""
        default = ComputeSpec(name=self.name).to_json()
        data = self.to_json()
        return {k: v for k, v in data.items()
                if k not in ("schema", "image_hash") and (k == "name" or v != default[k])}

    def spec_hash(self) -> str:
        """One canonical hash (sorted-keys JSON, sha256, 16 hex digits).

        Equal specs hash equal in any process; a field at its default does not count,
        so adding a field to this class leaves existing hashes as they are.
        """
        blob = json.dumps(self._canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---- diff --------------------------------------------------------------------------

    def diff(self, other: ComputeSpec) -> list[str]:
        """What changes from this spec to ``other``, one human line per change.

        E.g. ``["memory 4Gi -> 8Gi", "gpus 0 -> 1", "env FOO added",
        "image changed (pip_install torch)"]``. Values of environment variables are not
        shown (they may be secrets). Empty when the two are equal.
        """
        out: list[str] = []
        for name, fmt in (("cpus", _cores), ("memory", format_bytes), ("gpus", str),
                          ("inactivity_ttl", _seconds), ("backend", str)):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name} {fmt(a) if a is not None else 'default'} -> "
                           f"{fmt(b) if b is not None else 'default'}")
        for key in sorted(set(self.env) | set(other.env)):
            if key not in self.env:
                out.append(f"env {key} added")
            elif key not in other.env:
                out.append(f"env {key} removed")
            elif self.env[key] != other.env[key]:
                out.append(f"env {key} changed")
        if self.image != other.image:
            out.append(_image_change(self.build_image(), other.build_image()))
        for key in sorted(set(self.kubernetes) | set(other.kubernetes)):
            if self.kubernetes.get(key) != other.kubernetes.get(key):
                out.append(f"kubernetes.{key} changed")
        if self.name != other.name:
            out.append(f"name {self.name} -> {other.name}")
        return out


def _cores(value: float) -> str:
    return f"{value:g}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _step(kind: str, payload: tuple[str, ...]) -> str:
    if kind == "pip":
        return "pip_install " + " ".join(payload[payload.index("--") + 1:])
    if kind == "env":
        return "set_env_vars " + ", ".join(item.partition("=")[0] for item in payload)
    return f"run_bash {payload[0]!r}" if payload else kind


def _image_change(old: Image, new: Image) -> str:
    parts = []
    if old.base != new.base:
        parts.append(f"base {old.base or 'default'} -> {new.base or 'default'}")
    parts += [_step(*s) for s in new.steps if s not in old.steps]
    parts += [f"without {_step(*s)}" for s in old.steps if s not in new.steps]
    if not parts:  # the same steps in another order
        parts.append("steps reordered")
    return f"image changed ({'; '.join(parts)})"

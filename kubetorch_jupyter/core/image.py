"""``Image``: what a pod's environment holds beyond the base Python.

An image is an immutable list of steps; each method returns a new image, so images
compose::

    base = kt.Image().pip_install(["numpy"])
    train_image = base.pip_install(["torch==2.13.0"]).set_env_vars({"HF_HOME": "/cache"})

On the local backend an image with ``pip_install`` or ``run_bash`` steps becomes a
cached virtual environment keyed by :meth:`Image.content_hash`; on Kubernetes the steps
run at pod start on top of ``base`` (a container image).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigError

__all__ = ["Image"]


@dataclass(frozen=True)
class Image:
    """A pod environment: a base container image plus install steps.

    Args:
        base: Container image for the Kubernetes backend: any image with Python 3.11+
            (default ``python:3.X-slim`` of this client's Python; ``deploy/Dockerfile``
            builds one with the pod runtime preinstalled). The local backend runs on
            this machine's Python and ignores it.
    """

    base: str | None = None
    steps: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def pip_install(self, packages: str | Iterable[str], *, args: Iterable[str] = ()) -> Image:
        """Install pip requirements (``["numpy", "torch==2.13.0"]`` or one string).

        ``args`` are extra pip options, e.g. ``["--index-url", URL]``.
        """
        pkgs = (packages,) if isinstance(packages, str) else tuple(packages)
        if not pkgs or not all(isinstance(p, str) and p.strip() for p in pkgs):
            raise ConfigError(f"pip_install needs package names, got {packages!r}")
        return self._add("pip", (*tuple(args), "--", *pkgs))

    def set_env_vars(self, env: Mapping[str, str]) -> Image:
        """Set environment variables in the pod."""
        if not isinstance(env, Mapping):
            example = {}
            for item in env if isinstance(env, list | tuple) else ():
                key, _, value = str(item).partition("=")
                example[key] = value
            raise ConfigError(f"set_env_vars takes a mapping of names to values, got a "
                              f"{type(env).__name__}: "
                              f"set_env_vars({example or {'NAME': 'value'}!r})")
        items: list[str] = []
        for key, value in env.items():
            if not isinstance(key, str) or not key or "=" in key:
                raise ConfigError(f"environment variable name {key!r} is not valid")
            items.append(f"{key}={value}")
        return self._add("env", tuple(items))

    def run_bash(self, command: str) -> Image:
        """Run a shell command while building the environment (e.g. ``apt-get``, a download)."""
        if not isinstance(command, str) or not command.strip():
            raise ConfigError(f"run_bash needs a command string, got {command!r}")
        return self._add("bash", (command,))

    def _add(self, kind: str, payload: tuple[str, ...]) -> Image:
        return Image(base=self.base, steps=(*self.steps, (kind, payload)))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (what a pod record keeps); :meth:`from_json` reads it back."""
        return {"base": self.base, "steps": [[kind, list(payload)] for kind, payload in self.steps]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Image:
        """Inverse of :meth:`to_json`."""
        steps = tuple((str(kind), tuple(map(str, payload)))
                      for kind, payload in data.get("steps") or [])
        return cls(base=data.get("base"), steps=steps)

    @property
    def env(self) -> dict[str, str]:
        """The environment variables the image sets, later steps winning."""
        out: dict[str, str] = {}
        for kind, payload in self.steps:
            if kind == "env":
                for item in payload:
                    key, _, value = item.partition("=")
                    out[key] = value
        return out

    @property
    def pip_packages(self) -> list[list[str]]:
        """Each ``pip_install`` step as its pip argument list."""
        return [list(p) for k, p in self.steps if k == "pip"]

    @property
    def needs_build(self) -> bool:
        """Whether the image has steps that install something (not only env vars)."""
        return any(kind != "env" for kind, _ in self.steps)

    def content_hash(self, *extra: str) -> str:
        """A short hash of what the environment contains (env vars excluded)."""
        build = [[k, list(p)] for k, p in self.steps if k != "env"]
        blob = json.dumps({"base": self.base, "steps": build, "extra": list(extra)})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        parts = [f"base={self.base!r}"] if self.base else []
        for kind, payload in self.steps:
            if kind == "pip":
                parts.append(f"pip_install({list(payload[payload.index('--') + 1:])!r})")
            elif kind == "env":
                parts.append(f"set_env_vars({len(payload)} vars)")
            else:
                parts.append(f"run_bash({payload[0]!r})")
        return f"Image({', '.join(parts)})"

"""The runtime bundle: this client's ``pod_runtime`` and its dependencies, as one zip.

What a container of any image needs to run the pod runtime, beside a Python >= 3.11:
the ``pod_runtime`` package this client was installed with, ``websockets``,
``cloudpickle`` and ``prometheus_client`` (what it imports beyond the standard library;
all pure Python), each with a minimal
``dist-info`` so that ``importlib.metadata`` on the pod reports the versions the client
compares with its own. Sources only, plus the client's compiled ``websockets.speedups``
when it has one: its file name carries the ABI tag, so an image whose Python differs
never loads it, and ``websockets`` falls back to its pure-Python ``apply_mask``.

The zip is deterministic (sorted entries, fixed timestamps and modes, one compression
level), so the same files give the same bytes and the same hash; the hash names the
ConfigMap, and pods of different client versions each mount their own. It is built once
per process (:func:`runtime_bundle`), and refused with a clear error when the ConfigMap
holding it would pass the API server's 1 MiB limit.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import io
import json
import re
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ....exceptions import KtError
from .kt_start import DEPENDENCIES, source_hash

__all__ = ["CONFIGMAP_LIMIT", "Bundle", "build_bundle", "runtime_bundle"]

#: Bytes a ConfigMap may hold in all (the API server's limit on one object's data).
CONFIGMAP_LIMIT = 1024 * 1024
#: Room kept under the limit for the object's metadata (name, labels, annotations).
METADATA_ROOM = 8 * 1024
#: File suffixes left out: bytecode, C sources and headers, type stubs.
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".c", ".h", ".pyi")
#: The zip entries' timestamp (zip's epoch) and permissions: fixed, for equal bytes.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_MODE = 0o644 << 16
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Bundle:
    """The runtime's files for a ConfigMap.

    Attributes:
        zip: The zip's bytes (``runtime.zip``).
        version: ``pod_runtime.__version__``.
        hash: sha256 of everything the ConfigMap holds (the zip and the start scripts).
        runtime_hash: sha256 of ``pod_runtime``'s sources (the preinstalled check).
        deps: The bundled dependencies' versions.
        files: The ConfigMap's text keys (``start.sh``, ``kt_start.py``, ``bundle.json``).
    """

    zip: bytes
    version: str
    hash: str
    runtime_hash: str
    deps: dict[str, str]
    files: dict[str, str]

    @property
    def size(self) -> int:
        """Bytes of the ConfigMap's data: the zip as base64 plus the text files."""
        return len(base64.b64encode(self.zip)) + sum(len(v.encode()) for v in self.files.values())

    @property
    def tag(self) -> str:
        """``<version>-<hash8>``, DNS-safe: the ConfigMap's name ends with it."""
        version = re.sub(r"[^a-z0-9.-]+", "-", self.version.lower()).strip(".-") or "dev"
        return f"{version}-{self.hash[:8]}"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise KtError(f"cannot build the pod runtime bundle: package {name!r} is not "
                      f"importable here; reinstall kubetorch-jupyter")
    return Path(next(iter(spec.submodule_search_locations)))


def _package_files(name: str) -> list[tuple[str, bytes]]:
    root = _package_dir(name)
    out = []
    for path in root.rglob("*"):
        if (path.is_file() and "__pycache__" not in path.parts
                and not path.name.endswith(SKIPPED_SUFFIXES)):
            out.append((f"{name}/{path.relative_to(root).as_posix()}", path.read_bytes()))
    return out


def _dist_info(name: str) -> list[tuple[str, bytes]]:
    """A minimal ``dist-info`` (name, version, top-level module) for ``importlib.metadata``."""
    version = metadata.version(name)
    base = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    return [(f"{base}/METADATA", meta.encode()), (f"{base}/top_level.txt", f"{name}\n".encode()),
            (f"{base}/INSTALLER", b"kubetorch-jupyter runtime bundle\n")]


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for arcname, data in sorted(entries):
            info = zipfile.ZipInfo(arcname, date_time=ZIP_TIME)
            info.external_attr = ZIP_MODE
            info.create_system = 3  # unix, whatever builds it
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def build_bundle(*, limit: int = CONFIGMAP_LIMIT) -> Bundle:
    """Pack this client's runtime (uncached: see :func:`runtime_bundle`).

    Raises:
        KtError: When the ConfigMap would be over ``limit`` bytes, or a package is missing.
    """
    import pod_runtime

    entries = _package_files("pod_runtime")
    deps = {}
    for name in DEPENDENCIES:
        entries += _package_files(name) + _dist_info(name)
        deps[name] = metadata.version(name)
    blob = _zip(entries)
    scripts = {"start.sh": (_HERE / "start.sh").read_text(),
               "kt_start.py": (_HERE / "kt_start.py").read_text()}
    digest = hashlib.sha256(blob)
    for key in sorted(scripts):
        digest.update(b"\0" + key.encode() + b"\0" + scripts[key].encode())
    version, runtime_hash = pod_runtime.__version__, source_hash(_package_dir("pod_runtime"))
    meta = {"version": version, "hash": digest.hexdigest(), "runtime_hash": runtime_hash,
            "zip_sha256": hashlib.sha256(blob).hexdigest(), "deps": deps}
    files = {**scripts, "bundle.json": json.dumps(meta, sort_keys=True, indent=1) + "\n"}
    bundle = Bundle(zip=blob, version=version, hash=digest.hexdigest(),
                    runtime_hash=runtime_hash, deps=deps, files=files)
    if bundle.size + METADATA_ROOM > limit:
        sizes = ", ".join(f"{n} {sum(len(d) for a, d in entries if a.startswith(n + '/'))} B"
                          for n in ("pod_runtime", *DEPENDENCIES))
        raise KtError(
            f"the pod runtime bundle is {bundle.size} bytes as a ConfigMap, over the "
            f"{limit - METADATA_ROOM} a ConfigMap can hold ({sizes} uncompressed): "
            f"install versions of these packages that fit, or leave files out in bundle.py")
    return bundle


@functools.cache
def runtime_bundle() -> Bundle:
    """This client's bundle, built on first use and kept for the process."""
    return build_bundle()

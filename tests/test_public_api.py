"""The package exports exactly what it documents, each with a docstring."""

from __future__ import annotations

import inspect
from pathlib import Path

import kubetorch_jupyter as kt

#: The reviewed contract: changing the public API means changing this list on purpose.
DOCUMENTED = {
    # describe and run
    "Compute", "Image", "fn", "cls", "Fn", "Cls", "RemoteFn", "RemoteInstance", "RemoteMethod",
    "CallHandle", "CallStats", "grow",
    # errors
    "KtError", "ConfigError", "ComputeNotFoundError", "ComputeInUseError",
    "ResourceUnavailableError", "ImageBuildError", "PodStartError", "BridgeError",
    "AuthenticationError",
    "PodUnreachableError", "PodDiedError", "PodOOMError", "CallLostError", "CallCancelledError",
    "SerializationError", "RemoteError",
    "SyncError", "SyncLimitError", "ReloadError", "VersionMismatchError", "VersionMismatchWarning",
    "__version__",
}
README = Path(__file__).resolve().parent.parent / "README.md"


def test_exports_exactly_the_documented_names() -> None:
    assert set(kt.__all__) == DOCUMENTED
    assert len(kt.__all__) == len(DOCUMENTED), "a name is listed twice in __all__"
    for name in kt.__all__:
        assert hasattr(kt, name), name


def test_dir_shows_the_public_api_and_nothing_else() -> None:
    # no typing helpers (Any), no submodules (calls, core, config...), no hooks
    assert dir(kt) == sorted(kt.__all__)
    assert "Any" not in vars(kt) and "TYPE_CHECKING" not in vars(kt)


def test_ipython_finds_its_extension_hooks() -> None:
    # not public API, but %load_ext looks them up by name
    assert callable(kt.load_ipython_extension) and callable(kt.unload_ipython_extension)
    assert inspect.getdoc(kt.load_ipython_extension)


def test_public_objects_have_docstrings() -> None:
    for name in kt.__all__:
        obj = getattr(kt, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_every_public_name_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    for name in kt.__all__:
        assert f"`kt.{name}`" in text, f"README.md does not mention kt.{name}"


def test_every_error_is_a_kt_error() -> None:
    for name in kt.__all__:
        obj = getattr(kt, name)
        if inspect.isclass(obj) and issubclass(obj, Exception) and not issubclass(obj, Warning):
            assert issubclass(obj, kt.KtError), name


def test_pod_runtime_never_imports_the_client_packages() -> None:
    import subprocess
    import sys

    code = ("import sys, pod_runtime.server, pod_runtime.__main__; "
            "print([m for m in sys.modules if m.split('.')[0] in "
            "('kernel_bridge', 'kubetorch_jupyter', 'IPython')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"

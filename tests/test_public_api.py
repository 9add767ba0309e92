"""The package exports exactly what it documents, each with a docstring."""

from __future__ import annotations

import inspect

import kubetorch_jupyter as kt

DOCUMENTED = {
    # describe and run
    "Compute", "Image", "fn", "cls", "Fn", "Cls", "RemoteFn", "RemoteInstance", "RemoteMethod",
    "CallHandle",
    # errors
    "KtError", "ConfigError", "ComputeNotFoundError", "ComputeInUseError",
    "ResourceUnavailableError", "ImageBuildError", "PodStartError", "BridgeError",
    "AuthenticationError",
    "PodUnreachableError", "PodDiedError", "CallLostError", "SerializationError", "RemoteError",
    "SyncError", "SyncLimitError", "ReloadError", "VersionMismatchError", "VersionMismatchWarning",
    "__version__",
}


def test_exports_exactly_the_documented_names() -> None:
    assert set(kt.__all__) >= DOCUMENTED
    extra = set(kt.__all__) - DOCUMENTED
    # The notebook extension adds its own documented names; nothing else may leak.
    assert extra <= {"load_ipython_extension", "unload_ipython_extension"}, extra
    for name in kt.__all__:
        assert hasattr(kt, name), name


def test_public_objects_have_docstrings() -> None:
    for name in kt.__all__:
        obj = getattr(kt, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


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

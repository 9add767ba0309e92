"""Shared fixtures: isolated state, real pod processes (helpers in kt_testing)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from _kernel import Kernel, start_kernel
from k8s_double.fixtures import k8s_cluster, k8s_cluster_module  # noqa: F401  (fixtures)
from kt_testing import RawPod, start_raw_pod
from tcp_proxy import TcpProxy


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                    ) -> None:
    """Every test gets its own local-backend state dir and no progress bars.

    Module-scoped fixtures that start pods set their own state dir (see ``compute``).
    """
    if "KT_STATE_DIR" not in os.environ or not os.environ.get("KT_TEST_SHARED_STATE"):
        monkeypatch.setenv("KT_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("KT_PROGRESS", "0")


@pytest.fixture(scope="module")
def raw_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawPod]:
    """One pod process per test module."""
    pod = start_raw_pod(tmp_path_factory.mktemp("rawpod"))
    yield pod
    pod.stop()


@pytest.fixture(scope="module")
def compute(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A warm local compute shared by one test module, torn down at its end."""
    import kubetorch_jupyter as kt

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KT_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        mp.setenv("KT_PROGRESS", "0")
        mp.setenv("KT_TEST_SHARED_STATE", "1")
        c = kt.Compute(name=f"t-{secrets.token_hex(3)}")
        c.up()
        try:
            yield c
        finally:
            c.teardown()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A state dir for pods that kernels start; every pod in it is stopped at the end."""
    from kubetorch_jupyter.backends.local.backend import LocalBackend

    path = tmp_path_factory.mktemp("kernel-state")
    yield path
    backend = LocalBackend(path)
    for pod in backend.list():
        backend.down(pod.name)


@pytest.fixture()
def proxied(tmp_path: Path) -> Iterator[tuple[RawPod, TcpProxy]]:
    """A pod process behind a TCP proxy the test can drop connections with."""
    pod = start_raw_pod(tmp_path)
    proxy = TcpProxy(pod.port)
    yield pod, proxy
    proxy.close()
    pod.stop()


@pytest.fixture(scope="module")
def kernel(state: Path) -> Iterator[Kernel]:
    """A real ipykernel with ``%load_ext kubetorch_jupyter`` done, for one test module."""
    k = start_kernel(state)
    try:
        yield k
    finally:
        k.shutdown()


@pytest.fixture(scope="module")
def kernels(state: Path) -> Iterator[list[Kernel]]:
    """Two kernels: the one that starts runs, and another that attaches to them."""
    ks: list[Kernel] = []
    try:
        ks.append(start_kernel(state))
        ks.append(start_kernel(state))
        yield ks
    finally:
        for k in ks:
            k.shutdown()

"""Kubernetes benchmark: calls through the API server's port-forward, beside the local backend.

    python bench/bench_k8s.py [--quick]

The Kubernetes side runs against the test double of tests/k8s_double (its kubelet runs
the pod as a local process started by the real bootstrap; the bytes go client ->
port-forward websocket -> the double's relay -> the pod over loopback TCP), so the
figures measure what this code adds (the port-forward framing and relay threads, the
official client's websocket), not a network. Each row is printed beside the same
measure through the local backend in the same run, with the ratio; the local backend is
measured twice: with shared memory (its default on one host) and without (every byte
over its websocket, as in a cluster). Latencies interleave the backends round by round
so that a busy machine's noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

MiB = 1024 * 1024


def noop() -> None:
    return None


def echo(a: Any) -> Any:
    return a


def _median_ms(fn: Callable[[], Any], n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


def _ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base > 0 else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds, n_noop, n_big = (3, 50, 2) if args.quick else (5, 200, 4)
    os.environ.setdefault("KT_STATE_DIR", tempfile.mkdtemp(prefix="kt-bench-k8s-"))
    os.environ.setdefault("KT_PROGRESS", "0")

    from k8s_double import K8sDouble

    import kubetorch_jupyter as kt
    from kubetorch_jupyter.backends.kubernetes.backend import KubernetesBackend

    table = Table()
    arr = np.random.default_rng(0).integers(0, 255, size=64 * MiB, dtype=np.uint8)
    with K8sDouble() as cluster:
        backend = KubernetesBackend(cluster.configuration(), username="bench")
        k8s = kt.Compute(name=f"bench-{os.getpid()}", backend=backend)
        local = kt.Compute(name=f"bench-k8s-local-{os.getpid()}", backend="local")
        os.environ["KT_SHM"] = "0"  # read when a connection is made
        local_tcp = kt.Compute(name=f"bench-k8s-tcp-{os.getpid()}", backend="local")
        try:
            t = time.perf_counter()
            k8s_noop, k8s_echo = kt.fn(noop).to(k8s), kt.fn(echo).to(k8s)
            k8s_start = time.perf_counter() - t
            tcp_noop, tcp_echo = kt.fn(noop).to(local_tcp), kt.fn(echo).to(local_tcp)
            os.environ.pop("KT_SHM")
            t = time.perf_counter()
            local_noop, local_echo = kt.fn(noop).to(local), kt.fn(echo).to(local)
            local_start = time.perf_counter() - t
            for f in (k8s_noop, tcp_noop, local_noop):
                f()  # warm: connected, first call done
            table.add("start (.to() of a new compute)", f"{k8s_start:.2f} s (kubernetes)",
                      f"{local_start:.2f} s (local)", _ratio(k8s_start, local_start))

            lat: dict[str, list[float]] = {"k8s": [], "tcp": [], "local": []}
            for _ in range(rounds):
                lat["k8s"].append(_median_ms(k8s_noop, n_noop))
                lat["tcp"].append(_median_ms(tcp_noop, n_noop))
                lat["local"].append(_median_ms(local_noop, n_noop))
            k, c, lo = (statistics.median(lat[x]) for x in ("k8s", "tcp", "local"))
            table.add("warm no-op call, port-forward vs local (no shm)", f"{k:.3f} ms",
                      f"{c:.3f} ms", _ratio(k, c))
            table.add("warm no-op call, port-forward vs local (shm)", f"{k:.3f} ms",
                      f"{lo:.3f} ms", _ratio(k, lo))

            assert np.array_equal(k8s_echo(arr), arr)  # correct before timed
            big: dict[str, list[float]] = {"k8s": [], "tcp": [], "local": []}
            for _ in range(n_big):
                big["k8s"].append(_median_ms(lambda: k8s_echo(arr), 1))
                big["tcp"].append(_median_ms(lambda: tcp_echo(arr), 1))
                big["local"].append(_median_ms(lambda: local_echo(arr), 1))
            k, c, lo = (statistics.median(big[x]) for x in ("k8s", "tcp", "local"))
            rate = 2 * 64 / (k / 1e3)
            table.add("64 MiB round trip, port-forward vs local (no shm)",
                      f"{k:.0f} ms ({rate:.0f} MiB/s)", f"{c:.0f} ms", _ratio(k, c))
            table.add("64 MiB round trip, port-forward vs local (shm)", f"{k:.0f} ms",
                      f"{lo:.0f} ms", _ratio(k, lo))
        finally:
            for compute in (k8s, local, local_tcp):
                try:
                    compute.teardown()
                except Exception as exc:  # noqa: BLE001 - report, go on tearing down
                    print(f"teardown of {compute.name}: {exc}", file=sys.stderr)
            backend.close()
    table.show()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

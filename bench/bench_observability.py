"""What observability costs: per-call stats on a warm call, and a /metrics scrape.

    python bench/bench_observability.py [--quick]

Rows, each beside a baseline measured in the same run:

- a warm no-op ``remote_fn()`` on pods that measure every call (the default) against
  the same call on pods with ``KT_POD_CALL_STATS=0`` (call counters and the duration
  histogram stay on in both): two pods of each, rounds in shuffled order, so that a
  shared machine's noise and a pod's place in the order hit both alike;
- a ``GET /metrics`` of a pod that has run calls of several kinds, against a
  ``GET /healthz`` of the same pod (the HTTP round trip without the metrics).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from _table import Table


def noop() -> None:
    return None


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def bench_call_stats(table: Table, kt: Any, rounds: int, n: int) -> Any:
    # Two pods of each kind, made in the order on, off, off, on: the first pod a
    # process starts measured up to 25% slower than an identical later one (A/A), so
    # each kind gets one early and one late pod, and rounds shuffle the order.
    kinds = ("on", "off", "off", "on")
    computes = [kt.Compute(name=f"obs-{k}{i}-{os.getpid()}",
                           env={"KT_POD_CALL_STATS": "0"} if k == "off" else None)
                for i, k in enumerate(kinds)]
    try:
        remotes = [kt.fn(noop).to(c) for c in computes]
        for f in remotes:
            _timed(f, 200)  # warm up
        samples: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(rounds):
            order = list(range(len(remotes)))
            random.shuffle(order)
            for i in order:
                samples[kinds[i]] += _timed(remotes[i], n)
        print(f"  stats on: {remotes[0].last_stats}")
        ka, kb = _us(samples["on"]), _us(samples["off"])
        table.add("warm no-op remote_fn(), per-call stats on (median)", f"{ka:.0f} us",
                  f"KT_POD_CALL_STATS=0: {kb:.0f} us", f"{ka / kb:.3f}x", "<= 1.05x")
        bench_scrape(table, computes[0], 100)
    finally:
        for c in computes:
            c.teardown()


def bench_scrape(table: Table, compute: Any, n: int) -> None:
    base = compute.pod.url.replace("ws://", "http://").split("?", 1)[0].rstrip("/")

    def get(path: str) -> Callable[[], None]:
        def once() -> None:
            with urllib.request.urlopen(base + path, timeout=10) as r:
                r.read()
        return once

    size = len(urllib.request.urlopen(base + "/metrics", timeout=10).read())
    scrape, probe = [], []
    for _ in range(5):
        scrape += _timed(get("/metrics"), n // 5)
        probe += _timed(get("/healthz"), n // 5)
    s, p = _us(scrape), _us(probe)
    table.add(f"GET /metrics ({size} bytes, median)", f"{s:.0f} us", f"GET /healthz {p:.0f} us",
              f"{s / p:.2f}x", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    os.environ.setdefault("KT_STATE_DIR", tempfile.mkdtemp(prefix="kt-bench-"))
    os.environ.setdefault("KT_PROGRESS", "0")
    import kubetorch_jupyter as kt

    rounds, n = (30, 20) if args.quick else (100, 25)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; measuring...")
    table = Table()
    bench_call_stats(table, kt, rounds, n)
    table.show()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

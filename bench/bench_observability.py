"""What observability costs: per-call stats on a warm call, and a /metrics scrape.

    python bench/bench_observability.py [--quick]

Rows, each beside a baseline measured in the same run:

- a warm no-op ``remote_fn()`` on a pod that measures every call (the default) against
  the same call on a pod with ``KT_POD_CALL_STATS=0`` (call counters and the duration
  histogram stay on in both): rounds interleave the two, so a shared machine's noise
  hits both alike;
- a ``GET /metrics`` of a pod that has run calls of several kinds, against a
  ``GET /healthz`` of the same pod (the HTTP round trip without the metrics).
"""

from __future__ import annotations

import argparse
import os
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
    on = kt.Compute(name=f"obs-on-{os.getpid()}")
    off = kt.Compute(name=f"obs-off-{os.getpid()}", env={"KT_POD_CALL_STATS": "0"})
    try:
        with_stats, without = kt.fn(noop).to(on), kt.fn(noop).to(off)
        for f in (with_stats, without):
            _timed(f, 200)  # warm up
        a: list[float] = []
        b: list[float] = []
        for _ in range(rounds):
            a += _timed(with_stats, n)
            b += _timed(without, n)
        print(f"  stats on: {with_stats.last_stats}")
        ka, kb = _us(a), _us(b)
        table.add("warm no-op remote_fn(), per-call stats on (median)", f"{ka:.0f} us",
                  f"KT_POD_CALL_STATS=0: {kb:.0f} us", f"{ka / kb:.3f}x", "<= 1.05x")
        bench_scrape(table, on, rounds * 20)
    finally:
        on.teardown()
        off.teardown()


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

    rounds, n = (50, 20) if args.quick else (200, 25)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; measuring...")
    table = Table()
    bench_call_stats(table, kt, rounds, n)
    table.show()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

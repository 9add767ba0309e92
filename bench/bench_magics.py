"""%%kt overhead: a cell running ``a = 1`` on a warm pod, measured through a real kernel.

    python bench/bench_magics.py [--rounds 200]

Each figure is what a notebook user waits for: the time from sending the cell's
``execute_request`` to receiving its ``execute_reply`` and the kernel's ``idle``,
measured from the frontend's side with jupyter_client. Three cells run in the same
kernel, interleaved round by round so that the noise of a shared machine hits all alike:

* local:  ``a = 1`` run by the kernel itself (the baseline);
* %%kt:   ``%%kt`` + ``a = 1`` on a warm local pod;
* %%px:   ipyparallel's ``%%px`` + ``a = 1`` on one engine (skipped if not installed).

Targets (issue 3): the %%kt round trip adds under 3 ms to the local cell, and is at
least 3x faster than %%px's. Both are printed as what each adds to the local cell (the
round trip), and the whole-cell ratio too, which the kernel's own per-cell cost dilutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from jupyter_client import KernelManager

CELLS = {
    "local": "a = 1",
    "%%kt": "%%kt --name bench\na = 1",
    "%%px": "%%px\na = 1",
}
SETUP_KT = "%load_ext kubetorch_jupyter\n"
SETUP_PX = """
import ipyparallel as ipp
cluster = ipp.Cluster(n=1, log_level=40)
rc = cluster.start_and_connect_sync(activate=True)
rc.wait_for_engines(1, timeout=120)
"""
TEARDOWN_PX = "cluster.stop_cluster_sync()"


class Kernel:
    """A real python3 ipykernel, driven as a frontend drives it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, **env})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 300.0) -> float:
        """Execute ``code``; seconds until the kernel is idle again. Raises if it failed.

        A kernel publishes ``idle`` after it has sent the cell's reply, so the wait
        ends on IOPub and the reply is then already there.
        """
        start = time.perf_counter()
        mid = self.kc.execute(code, store_history=True)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"cell did not finish within {timeout}s: {code!r}")
            msg = self.kc.get_iopub_msg(timeout=left)
            if (msg["parent_header"].get("msg_id") == mid and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"):
                elapsed = time.perf_counter() - start
                break
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == mid:
                break
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"cell failed: {code!r}: {reply['content'].get('ename')}: "
                               f"{reply['content'].get('evalue')}")
        return elapsed

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def measure(kernel: Kernel, names: list[str], rounds: int, warmup: int,
            progress: Callable[[str], None]) -> dict[str, list[float]]:
    for name in names:
        for _ in range(warmup):
            kernel.run(CELLS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]  # rotate who goes first
        for name in order:
            times[name].append(kernel.run(CELLS[name]))
        if (i + 1) % max(1, rounds // 4) == 0:
            progress(f"  {i + 1}/{rounds} rounds")
    return times


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="measured rounds (200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured cells first (20)")
    args = parser.parse_args()

    have_px = importlib.util.find_spec("ipyparallel") is not None
    names = ["local", "%%kt"] + (["%%px"] if have_px else [])
    state = tempfile.mkdtemp(prefix="kt-bench-")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; a real ipykernel, "
          f"{args.rounds} interleaved rounds of {', '.join(names)}", flush=True)
    kernel = Kernel({"KT_STATE_DIR": state, "KT_PROGRESS": "0"})
    try:
        kernel.run(SETUP_KT)
        kernel.run(CELLS["%%kt"])  # starts the pod: warm from here on
        if have_px:
            print("  starting an ipyparallel cluster (1 engine)...", flush=True)
            kernel.run(SETUP_PX)
        times = measure(kernel, names, args.rounds, args.warmup,
                        lambda line: print(line, flush=True))
        if have_px:
            kernel.run(TEARDOWN_PX)
        kernel.run("%kt teardown bench")
    finally:
        kernel.shutdown()
        from kubetorch_jupyter.backends.local.backend import LocalBackend

        backend = LocalBackend(state)
        for pod in backend.list():
            backend.down(pod.name)
        shutil.rmtree(state, ignore_errors=True)

    med = {n: statistics.median(t) for n, t in times.items()}
    p90 = {n: statistics.quantiles(t, n=10)[-1] for n, t in times.items()}
    print()
    print(f"{'cell':8} {'median':>10} {'p90':>10}")
    for n in names:
        print(f"{n:8} {_ms(med[n]):>10} {_ms(p90[n]):>10}")
    overhead = med["%%kt"] - med["local"]
    print()
    print(f"%%kt adds {_ms(overhead)} to the local cell (median; target < 3 ms): "
          f"{'met' if overhead < 0.003 else 'NOT met'}")
    print(f"%%kt / local = {med['%%kt'] / med['local']:.2f}x")
    if have_px:
        px_overhead = med["%%px"] - med["local"]
        ratio = px_overhead / overhead if overhead > 0 else float("inf")
        print(f"%%px adds {_ms(px_overhead)} to the local cell: its round trip costs "
              f"{ratio:.1f}x what %%kt's does (target >= 3x): {'met' if ratio >= 3 else 'NOT met'}")
        print(f"whole cells, kernel included: %%px / %%kt = {med['%%px'] / med['%%kt']:.2f}x "
              f"(the kernel's own {_ms(med['local'])} per cell is in both)")
    else:
        print("%%px: skipped (ipyparallel is not installed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

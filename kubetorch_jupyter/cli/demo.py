"""``kt demo``: a two-minute tour of kt.fn and kt.cls on the local backend.

It starts a warm local pod (a process on this machine), calls a function and a stateful
class on it, moves a large array, and tears the pod down again.
"""

from __future__ import annotations

import time

__all__ = ["main"]


def train(n: int, lr: float = 0.1) -> float:
    """A stand-in for a training step: prints while it runs, returns a number."""
    import os

    print(f"step {n} on pod process {os.getpid()}")
    return n * lr


class Counter:
    """State that lives on the pod between calls."""

    def __init__(self, start: int) -> None:
        self.n = start

    def add(self, k: int) -> int:
        """Add ``k`` and return the new total."""
        self.n += k
        return self.n


def main() -> int:
    """Run the tour; returns a process exit status."""
    import os

    import numpy as np

    import kubetorch_jupyter as kt

    print(f"client process {os.getpid()}")
    compute = kt.Compute(cpus="1", memory="1Gi", name="kt-demo")
    t0 = time.perf_counter()
    remote_train = kt.fn(train).to(compute)
    print(f"pod ready in {time.perf_counter() - t0:.2f}s: {compute}")
    try:
        print("remote_train(10, lr=0.5) ->", remote_train(10, lr=0.5))

        counter = kt.cls(Counter).to(compute, init_args={"start": 5})
        print("counter.add(2) ->", counter.add(2))
        print("counter.add(3) ->", counter.add(3), "(state lives on the pod)")

        arr = np.random.default_rng(0).random(64 * 1024 * 1024 // 8)
        t0 = time.perf_counter()
        back = kt.fn(np.negative).to(compute)(arr)
        dt = time.perf_counter() - t0
        assert np.array_equal(back, -arr)
        print(f"64 MiB array negated on the pod and returned in {dt * 1e3:.0f} ms")

        def fails() -> None:
            raise ValueError("remote errors keep their type")

        try:
            kt.fn(fails).to(compute)()
        except ValueError as exc:
            print(f"caught {type(exc).__name__} from the pod: {exc}")

        again = kt.Compute.from_name("kt-demo")
        print("found warm by name:", again, "pid", again.pod.pid)
    finally:
        compute.teardown()
        print("pod torn down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

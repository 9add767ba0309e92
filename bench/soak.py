"""Soak: many calls, many at once, with connection drops; nothing lost, nothing leaks.

    python bench/soak.py [--calls 100000] [--concurrency 100] [--duration 600]
                         [--drop-every 5] [--sample-every 5]

A real pod process (``python -m pod_runtime``) behind a TCP proxy (``tests/tcp_proxy.py``)
that drops every connection every ``--drop-every`` seconds; ``--concurrency`` threads
share one :class:`~kernel_bridge.PodConnection` and make calls until ``--calls`` are
done or ``--duration`` seconds pass (the calls are paced to spread over the duration).
Each call carries a unique key; the pod counts how often it ran each key.

It prints: calls made, lost (a call that raised or returned another key) and
duplicated (a key the pod ran more than once); and the pod's RSS and thread count and
the client's RSS, sampled every ``--sample-every`` seconds (first and last quarter,
and the growth). Not part of CI: it takes its duration.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tcp_proxy import TcpProxy  # noqa: E402  (a test helper: real sockets, real drops)

from kernel_bridge import BridgeError, PodConnection  # noqa: E402
from kubetorch_jupyter.calls.serialize import dump_callable  # noqa: E402
from pod_runtime import protocol  # noqa: E402


def tick(key: int, calls: int) -> int:
    """Count ``key`` on the pod (a byte per key, allocated once: RSS stays flat); return it."""
    import builtins

    table = builtins.__dict__.get("_kt_soak")
    if table is None:
        table = builtins.__dict__.setdefault("_kt_soak", bytearray(calls))
    table[key] = min(255, table[key] + 1)
    return key


def tally() -> tuple[int, int]:
    """(keys the pod ran, keys it ran more than once)."""
    import builtins

    table = builtins.__dict__.get("_kt_soak", b"")
    return sum(1 for n in table if n), sum(1 for n in table if n > 1)


def _body(fn: Any, *args: Any) -> tuple[bytes, list[memoryview]]:
    digest, blob = dump_callable(fn)
    return protocol.dumps({"kind": "fn", "fn_id": digest, "fn_blob": blob, "args": args,
                           "kwargs": {}})


def _start_pod(tmp: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    token = secrets.token_urlsafe(32)
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, KT_POD_TOKEN=token, PYTHONPATH=str(ROOT))
    with open(tmp / "pod.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pod_runtime", "--ready-fd",
                                 str(write_fd)], env=env, pass_fds=[write_fd], stdout=log,
                                stderr=subprocess.STDOUT)
    os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        line = ready.readline()
    if not line:
        raise SystemExit(f"the pod did not start: {(tmp / 'pod.log').read_text()}")
    return proc, int(protocol.load_json(line.encode())["port"]), token


def _quarters(values: list[float]) -> tuple[float, float]:
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def main() -> int:
    """Run the soak and print its figures; exit status 1 if a call was lost or duplicated."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds at most")
    parser.add_argument("--drop-every", type=float, default=5.0, help="seconds between drops")
    parser.add_argument("--sample-every", type=float, default=5.0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kt-soak-"))
    proc, port, token = _start_pod(tmp)
    proxy = TcpProxy(port)
    conn = PodConnection(proxy.url, token, name="soak", reconnect_timeout=60.0)
    pod = psutil.Process(proc.pid)
    me = psutil.Process()
    counter = iter(range(args.calls))
    lock = threading.Lock()
    lost: list[str] = []
    done = [0]
    unsent = [0]  # calls left when the duration ran out (never sent: not lost)
    begin = time.monotonic()
    deadline = begin + args.duration
    pace = args.duration / args.calls  # seconds per call, all threads together
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                key = next(counter, None)
            if key is None:
                return
            wait = begin + key * pace - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            if time.monotonic() > deadline:
                with lock:
                    unsent[0] += 1
                continue
            body, buffers = _body(tick, key, args.calls)
            try:
                got = conn.call(body, buffers, sink=lambda e: None).result(120)
            except BridgeError as exc:
                with lock:
                    lost.append(f"{key}: {type(exc).__name__}: {exc}")
                continue
            with lock:
                done[0] += 1
                if got != key:
                    lost.append(f"{key}: returned {got!r}")

    samples: dict[str, list[float]] = {"pod_rss": [], "pod_threads": [], "client_rss": []}
    drops = [0]

    def sample() -> None:
        samples["pod_rss"].append(pod.memory_info().rss / 2**20)
        samples["pod_threads"].append(pod.num_threads())
        samples["client_rss"].append(me.memory_info().rss / 2**20)

    def chaos() -> None:
        while not stop.wait(args.drop_every):
            proxy.cut()
            drops[0] += 1
            stop.wait(0.2)
            proxy.restore()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    monkey = threading.Thread(target=chaos, daemon=True)
    monkey.start()
    print(f"soak: {args.calls} calls, {args.concurrency} at once, at most {args.duration:g}s, "
          f"a drop every {args.drop_every:g}s", flush=True)
    sample()
    while any(t.is_alive() for t in threads):
        threads[0].join(args.sample_every) if threads[0].is_alive() else time.sleep(
            args.sample_every)
        sample()
        print(f"  {time.monotonic() - begin:6.0f}s  calls {done[0]:>7}  drops {drops[0]:>3}  "
              f"pod RSS {samples['pod_rss'][-1]:.0f} MiB, {samples['pod_threads'][-1]:.0f} "
              f"threads  client RSS {samples['client_rss'][-1]:.0f} MiB", flush=True)
    stop.set()
    elapsed = time.monotonic() - begin
    proxy.restore()
    body, buffers = _body(tally)
    ran, twice = conn.call(body, buffers, sink=lambda e: None).result(120)
    conn.close()
    proxy.close()
    proc.terminate()
    proc.wait(30)

    print()
    print(f"calls completed     {done[0]} in {elapsed:.0f}s ({done[0] / elapsed:.0f}/s), "
          f"{args.concurrency} at once, {drops[0]} connection drops"
          + (f"; {unsent[0]} not sent (the duration ran out)" if unsent[0] else ""))
    print(f"lost                {len(lost)}")
    print(f"duplicated          {twice} (the pod ran {ran} distinct calls)")
    for name, unit in (("pod_rss", "MiB"), ("pod_threads", ""), ("client_rss", "MiB")):
        first, last = _quarters(samples[name])
        print(f"{name:<19} first quarter {first:.1f}{unit}, last quarter {last:.1f}{unit} "
              f"({last - first:+.1f}), max {max(samples[name]):.1f}{unit}")
    for line in lost[:10]:
        print("  lost:", line)
    return 1 if lost or twice or ran != done[0] else 0


if __name__ == "__main__":
    raise SystemExit(main())

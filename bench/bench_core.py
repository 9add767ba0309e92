"""Core benchmark: kt.fn on the local backend against baselines measured in this run.

    python bench/bench_core.py [--quick]

Every figure is printed beside a baseline measured in the same run, with the ratio.
Latencies interleave ours and the baseline round by round, so that the noise of a
shared machine hits both alike. Baselines that need a package not installed here
(ipyparallel, ray, jupyter_client) are reported as skipped, not invented.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _table import Table

MiB = 1024 * 1024


def noop() -> None:
    return None


def echo(a: Any) -> Any:
    return a


# ----------------------------------------------------------------- baselines
def _tcp_echo_server(q: Any) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    q.put(srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 20)
    while True:
        n = conn.recv_into(buf)
        if not n:
            return
        conn.sendall(memoryview(buf)[:n])


def _tcp_sink_server(q: Any) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    q.put(srv.getsockname()[1])
    conn, _ = srv.accept()
    buf = bytearray(4 << 20)
    total = 0
    while n := conn.recv_into(buf):
        total += n
    conn.sendall(str(total).encode())


def _ws_echo_server(q: Any) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
            q.put(next(iter(server.sockets)).getsockname()[1])
            await asyncio.Future()

    asyncio.run(main())


def _spawn(target: Callable[[Any], None]) -> tuple[mp.Process, int]:
    q: Any = mp.Queue()
    proc = mp.Process(target=target, args=(q,), daemon=True)
    proc.start()
    return proc, q.get(timeout=30)


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------- benches
def bench_latency(table: Table, remote: Any, rounds: int, n: int) -> None:
    from websockets.sync.client import connect

    tcp_proc, tcp_port = _spawn(_tcp_echo_server)
    ws_proc, ws_port = _spawn(_ws_echo_server)
    sock = socket.create_connection(("127.0.0.1", tcp_port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"x" * 64

    def tcp_once() -> None:
        sock.sendall(payload)
        sock.recv(1024)

    tcp, ws_s, kt_s = [], [], []
    with connect(f"ws://127.0.0.1:{ws_port}", compression=None) as ws:
        def ws_once() -> None:
            ws.send(payload)
            ws.recv()

        for f in (tcp_once, ws_once, remote):  # warm up
            _timed(f, 50)
        for _ in range(rounds):
            tcp += _timed(tcp_once, n)
            ws_s += _timed(ws_once, n)
            kt_s += _timed(remote, n)
    sock.close()
    tcp_proc.kill()
    ws_proc.kill()
    t, w, k = _median_us(tcp), _median_us(ws_s), _median_us(kt_s)
    table.add("raw TCP echo (median)", "", f"{t:.0f} us")
    table.add("warm no-op remote_fn() (median)", f"{k:.0f} us", f"websockets echo {w:.0f} us",
              f"{k / w:.2f}x", "<= 2x websockets echo")
    return None


def bench_ipyparallel(table: Table, remote: Any, arr: np.ndarray, n: int) -> None:
    try:
        import ipyparallel as ipp
    except ImportError:
        table.add("ipyparallel", "", "skipped: not installed")
        return
    with ipp.Cluster(n=1, log_level=40) as rc:
        view = rc[:]
        direct = rc[0]
        direct.apply_sync(noop)
        ip = _median_us(_timed(lambda: direct.apply_sync(noop), n))
        k = _median_us(_timed(remote, n))
        table.add("no-op call vs ipyparallel apply_sync", f"{k:.0f} us", f"{ip:.0f} us",
                  f"{ip / k:.1f}x faster")
        t0 = time.perf_counter()
        view.push({"a": arr}, block=True)
        back = direct.pull("a", block=True)
        ipt = time.perf_counter() - t0
        assert np.array_equal(back, arr)
    del back
    table.add(f"{arr.nbytes // MiB} MiB push+pull, ipyparallel", "",
              f"{arr.nbytes / ipt / 1e9:.2f} GB/s ({ipt * 1e3:.0f} ms)")


def bench_ray(table: Table, arr: np.ndarray, n: int) -> None:
    try:
        import ray
    except ImportError:
        table.add("Ray actor call / put+get", "", "skipped: ray not installed")
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote
    class Actor:
        def noop(self) -> None:
            return None

        def echo(self, a: Any) -> Any:
            return a

    actor = Actor.remote()
    ray.get(actor.noop.remote())
    r = _median_us(_timed(lambda: ray.get(actor.noop.remote()), n))
    table.add("Ray actor call (median)", "", f"{r:.0f} us")
    t0 = time.perf_counter()
    back = ray.get(actor.echo.remote(arr))
    rt = time.perf_counter() - t0
    assert np.array_equal(back, arr)
    table.add(f"{arr.nbytes // MiB} MiB round trip, Ray actor", "",
              f"{arr.nbytes / rt / 1e9:.2f} GB/s ({rt * 1e3:.0f} ms)")
    ray.shutdown()


def bench_jupyter_client(table: Table, n: int) -> None:
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError:
        table.add("jupyter_client execute", "", "skipped: not installed")
        return
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.execute_interactive("pass", timeout=30)
        samples = _timed(
            lambda: kc.execute_interactive("pass", timeout=30, output_hook=lambda m: None), n)
        table.add("jupyter_client execute round trip (median)", "",
                  f"{_median_us(samples):.0f} us")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def bench_throughput(table: Table, remote_echo: Any, arr: np.ndarray, rounds: int) -> None:
    size = arr.nbytes
    copies = []
    for _ in range(3):
        t0 = time.perf_counter()
        c = arr.copy()
        copies.append(time.perf_counter() - t0)
        del c
    memcpy = size / min(copies) / 1e9
    proc, port = _spawn(_tcp_sink_server)
    sock = socket.create_connection(("127.0.0.1", port))
    view = memoryview(arr).cast("B")
    t0 = time.perf_counter()
    sock.sendall(view)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(64)
    tcp = size / (time.perf_counter() - t0) / 1e9
    sock.close()
    proc.join(5)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        back = remote_echo(arr)
        times.append(time.perf_counter() - t0)
        assert back.shape == arr.shape
        del back
    best, med = min(times), statistics.median(times)
    table.add("memcpy", "", f"{memcpy:.1f} GB/s")
    table.add("loopback TCP, one way", "", f"{tcp:.1f} GB/s")
    table.add(f"{size // MiB} MiB array sent and returned (median of {rounds})",
              f"{size / med / 1e9:.2f} GB/s ({med * 1e3:.0f} ms; best {best * 1e3:.0f} ms)",
              f"loopback TCP {tcp:.1f} GB/s", f"{size / med / 1e9 / tcp:.2f}x",
              ">= 1 GB/s (array size / round-trip time)")


def nbytes(a: Any) -> int:
    return int(a.nbytes)


def _tcp_one_way(view: memoryview) -> float:
    """Seconds to push ``view`` through a loopback TCP socket to a reader process."""
    proc, port = _spawn(_tcp_sink_server)
    sock = socket.create_connection(("127.0.0.1", port))
    t0 = time.perf_counter()
    sock.sendall(view)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(64)
    dt = time.perf_counter() - t0
    sock.close()
    proc.join(5)
    return dt


def bench_cluster_path(table: Table, arr: np.ndarray, rounds: int) -> None:
    """An argument over the websocket with shared memory off, as every call in a cluster.

    Only the argument travels (the function returns its size), so the figure compares
    with one loopback TCP push of the same bytes, measured in alternation with it.
    """
    import kubetorch_jupyter as kt

    old = os.environ.get("KT_SHM")
    os.environ["KT_SHM"] = "0"  # read when the connection is made
    compute = kt.Compute(name=f"bench-tcp-{os.getpid()}")
    try:
        remote = kt.fn(nbytes).to(compute)
        remote(arr[:1024])
        assert not compute.connection().shm_active
        view = memoryview(arr).cast("B")
        ours, tcp = [], []
        for _ in range(rounds):
            tcp.append(_tcp_one_way(view))
            t0 = time.perf_counter()
            assert remote(arr) == arr.nbytes
            ours.append(time.perf_counter() - t0)
    finally:
        compute.teardown()
        if old is None:
            os.environ.pop("KT_SHM", None)
        else:
            os.environ["KT_SHM"] = old
    size = arr.nbytes
    k, t = size / statistics.median(ours) / 1e9, size / statistics.median(tcp) / 1e9
    table.add(f"{size // MiB} MiB argument, shm off: websocket over TCP (median of {rounds})",
              f"{k:.2f} GB/s ({statistics.median(ours) * 1e3:.0f} ms)",
              f"loopback TCP push {t:.2f} GB/s", f"{k / t:.2f}x", "the cluster path")


def bench_cold_start(table: Table, runs: int) -> None:
    import kubetorch_jupyter as kt

    times = []
    for i in range(runs):
        compute = kt.Compute(name=f"bench-cold-{os.getpid()}-{i}")
        t0 = time.perf_counter()
        kt.fn(noop).to(compute)()
        times.append(time.perf_counter() - t0)
        compute.teardown()
    table.add(f"cold start -> first call answered (median of {runs})",
              f"{statistics.median(times) * 1e3:.0f} ms", "", "", "< 1 s")


def bench_concurrency(table: Table, compute: Any) -> None:
    import kubetorch_jupyter as kt

    def square(x: int) -> int:
        return x * x

    remote = kt.fn(square).to(compute)

    async def many() -> list[int]:
        return await asyncio.gather(*[remote.acall(i) for i in range(1000)])

    t0 = time.perf_counter()
    results = asyncio.run(many())
    dt = time.perf_counter() - t0
    lost = sum(1 for i, r in enumerate(results) if r != i * i)
    table.add("1,000 concurrent async calls on one connection",
              f"{dt * 1e3:.0f} ms, {1000 - lost} of 1000 correct", "", "", "none lost")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a 64 MiB array")
    args = parser.parse_args()
    os.environ.setdefault("KT_STATE_DIR", tempfile.mkdtemp(prefix="kt-bench-"))
    os.environ.setdefault("KT_PROGRESS", "0")
    import kubetorch_jupyter as kt

    n, rounds = (300, 3) if args.quick else (1000, 5)
    arr = np.random.default_rng(0).random((64 if args.quick else 256) * MiB // 4,
                                          dtype=np.float32)
    table = Table()
    compute = kt.Compute(name=f"bench-{os.getpid()}")
    try:
        remote_noop = kt.fn(noop).to(compute)
        remote_echo = kt.fn(echo).to(compute)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; measuring...")
        bench_latency(table, remote_noop, rounds, n // rounds)
        bench_throughput(table, remote_echo, arr, 3 if args.quick else 5)
        bench_cluster_path(table, arr, 3 if args.quick else 5)
        bench_concurrency(table, compute)
        bench_ipyparallel(table, remote_noop, arr, n // 2)
        bench_ray(table, arr, n // 2)
        bench_jupyter_client(table, n // 5)
    finally:
        compute.teardown()
    bench_cold_start(table, 3 if args.quick else 5)
    table.show()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

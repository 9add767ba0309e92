"""The pod's /metrics and each call's cost figures, from real pods after real calls.

Scrapes are parsed with prometheus_client's own parser. GPU series and figures run the
pod's real NVML code against ``tests/nvml_double`` (a double of ``pynvml``): no GPU here.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _kernel import Cell, Kernel
from kt_testing import RawPod, fn_call, start_raw_pod, timeout
from prometheus_client.parser import text_string_to_metric_families

import kubetorch_jupyter as kt
from kernel_bridge import CallStats, PodConnection, RemoteError
from pod_runtime import protocol

MiB = 1024 * 1024
NVML_DOUBLE = Path(__file__).parent / "nvml_double"
#: The only labels a series may carry: none grows with the number of calls.
ALLOWED_LABELS = {"compute", "pod", "kind", "outcome", "le", "gpu"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_port(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                timeout=timeout(10)) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def port_of(compute: Any) -> int:
    port = re.search(r":(\d+)", compute.pod.url.split("//", 1)[1])
    assert port is not None
    return int(port.group(1))


def scrape(compute: Any) -> Samples:
    return scrape_port(port_of(compute))


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


# ------------------------------------------------------------------- functions on the pod
def square(x: int) -> int:
    return x * x


def fails() -> None:
    raise ValueError("on purpose")


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def hold(mib: int) -> int:
    """Allocate ``mib`` MiB, touch every page, and keep it past the call's end."""
    import builtins

    block = bytearray(mib * MiB)
    block[::4096] = b"\1" * len(range(0, len(block), 4096))
    builtins._kt_test_hold = block  # type: ignore[attr-defined]
    return len(block)


def spike(mib: int) -> int:
    """Allocate ``mib`` MiB, wait until the pod's sampler has seen it, free it, return."""
    import gc

    from pod_runtime.callstats import CallSampler

    block = bytearray(mib * MiB)
    block[::4096] = b"\1" * len(range(0, len(block), 4096))
    [sampler] = [o for o in gc.get_objects() if isinstance(o, CallSampler)]
    mine = [r for r in list(sampler._running) if r.peak is not None]
    seen = {id(r): r.samples for r in mine}
    deadline = time.monotonic() + 60
    while not any(r.samples > seen[id(r)] + 1 for r in mine):  # a sample after the alloc
        assert time.monotonic() < deadline, "the sampler never sampled"
        time.sleep(0.01)
    size = len(block)
    del block
    return size


def gate(path: str) -> None:
    import os

    while not os.path.exists(path):
        time.sleep(0.01)


def rss_now() -> int:
    """The pod's resident memory now, read here (not through the stats code)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release() -> None:
    import builtins

    builtins.__dict__.pop("_kt_test_hold", None)


def nap(seconds: float) -> None:
    time.sleep(seconds)


# --------------------------------------------------------------------------- metrics
def test_counters_and_the_duration_histogram_move_with_real_calls(compute: Any) -> None:
    remote, failing = kt.fn(square).to(compute), kt.fn(fails).to(compute)
    remote(1)
    before = scrape(compute)
    for i in range(7):
        assert remote(i) == i * i
    with pytest.raises(ValueError, match="on purpose"):
        failing()
    after = scrape(compute)
    ok = dict(kind="fn", outcome="ok")
    assert value(after, "kt_calls_total", **ok) - value(before, "kt_calls_total", **ok) == 7
    err = dict(kind="fn", outcome="error")
    assert value(after, "kt_calls_total", **err) - value(before, "kt_calls_total", **err) == 1
    count = "kt_call_duration_seconds_count"
    assert value(after, count, kind="fn") - value(before, count, kind="fn") == 8
    assert (value(after, "kt_call_duration_seconds_sum", kind="fn")
            > value(before, "kt_call_duration_seconds_sum", kind="fn"))
    buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in after.items()
                      if n == "kt_call_duration_seconds_bucket" and dict(ls)["kind"] == "fn"))
    assert len(buckets) > 5 and buckets[-1][0] == float("inf")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert buckets[-1][1] == value(after, count, kind="fn")
    # the code sync before the first call is a call of its own kind
    assert value(after, "kt_calls_total", kind="sync") >= 1


def test_no_label_grows_with_calls(compute: Any) -> None:
    remote, failing = kt.fn(square).to(compute), kt.fn(fails).to(compute)
    remote(0)
    with pytest.raises(ValueError):
        failing()
    first = scrape(compute)
    for i in range(50):
        remote(i)
        remote.submit(i).result()
        with pytest.raises(ValueError):
            failing()
    after = scrape(compute)
    assert set(after) == set(first)  # the same series, only their values moved
    assert {k for _, ls in after for k, _ in ls} <= ALLOWED_LABELS
    assert value(after, "kt_calls_total", kind="fn") - value(first, "kt_calls_total",
                                                             kind="fn") == 150


def test_process_connection_and_activity_series(compute: Any) -> None:
    kt.fn(burn).to(compute)(100_000)
    samples = scrape(compute)
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 10 * MiB
    assert value(samples, "kt_connections") >= 1
    assert value(samples, "kt_calls_in_flight") == 0
    assert value(samples, "kt_seconds_since_last_activity") >= 0
    assert value(samples, "kt_last_activity_timestamp_seconds") <= time.time()
    assert value(samples, "kt_uptime_seconds") > 0
    labels = {ls for n, ls in samples if n == "process_resident_memory_bytes"}
    assert labels == {(("compute", compute.name), ("pod", compute.name))}


def test_without_a_readable_gpu_there_are_no_gpu_series(compute: Any) -> None:
    # nvidia-ml-py is installed (dev) but no driver is: NVML does not start, no error
    assert not {n for n in names(scrape(compute)) if n.startswith("kt_gpu_")}
    stats = kt.fn(nap).to(compute).submit(0.01)
    stats.result()
    assert stats.stats is not None and stats.stats.gpus == ()


def test_retained_results_and_synced_bytes(tmp_path: Path) -> None:
    pod = start_raw_pod(tmp_path, "--name", "retain")
    conn = PodConnection(pod.url, pod.token, name="retain", ack_delay=3600.0)
    try:
        before = scrape_port(pod.port)
        body, buffers = fn_call(bytes, 100_000)
        assert len(conn.call(body, buffers).result()) == 100_000
        data = secrets.token_bytes(3000)
        sync_call = {"kind": "sync", "op": "blobs", "data": data,
                     "index": [[hashlib.sha256(data).hexdigest(), 0, len(data)]]}
        assert conn.call(*protocol.dumps(sync_call)).result()["stored"] == 1
        after = scrape_port(pod.port)
    finally:
        conn.close()
        pod.stop()
    assert value(after, "kt_retained_results") - value(before, "kt_retained_results") == 2
    assert value(after, "kt_retained_result_bytes") >= 100_000
    assert value(after, "kt_sync_bytes_total") - value(before, "kt_sync_bytes_total") == 3000


def test_label_values_of_a_weird_compute_and_pod_name_escape(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, instance = 'a "quoted"\\name', 'pod\nwith "newline"\\'
    monkeypatch.setenv("KT_POD_INSTANCE", instance)
    pod = start_raw_pod(tmp_path, "--name", name)
    conn = PodConnection(pod.url, pod.token, name="weird")
    try:
        assert conn.call(*fn_call(square, 3)).result() == 9
        samples = scrape_port(pod.port)
    finally:
        conn.close()
        pod.stop()
    assert value(samples, "kt_calls_total", kind="fn", outcome="ok") == 1
    for _, labels in samples:
        assert dict(labels)["compute"] == name and dict(labels)["pod"] == instance


# ------------------------------------------------------------------------------ GPUs
@pytest.fixture()
def gpu_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RawPod, list]]:
    """A pod whose NVML is the double: three GPUs, of which it sees physical 2 and 1."""
    gpus = [
        {"uuid": "GPU-aaa", "util": 5, "used": 1 * 1024**3, "total": 80 * 1024**3,
         "power_mw": 60_000, "temp": 30},
        {"uuid": "GPU-bbb", "util": 40, "used": 3 * 1024**3, "total": 40 * 1024**3,
         "power_mw": None, "temp": 51},  # power: "not supported" on this one
        {"uuid": "GPU-ccc", "util": 87, "used": 11 * 1024**3, "total": 80 * 1024**3,
         "power_mw": 312_500, "temp": 66},
    ]
    state = tmp_path / "nvml.json"
    state.write_text(json.dumps({"gpus": gpus}))
    monkeypatch.setenv("KT_TEST_NVML_DOUBLE", str(state))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-bbb")
    monkeypatch.setenv("PYTHONPATH", str(NVML_DOUBLE) + ":" + ":".join(sys.path))
    pod = start_raw_pod(tmp_path, "--name", "gpu")
    try:
        yield pod, [gpus[2], gpus[1]]  # as the pod numbers them: cuda:0, cuda:1
    finally:
        pod.stop()


def test_gpu_series_through_nvml(gpu_pod: tuple[RawPod, list]) -> None:
    pod, seen = gpu_pod
    samples = scrape_port(pod.port)
    for index, gpu in enumerate(seen):
        g = str(index)
        assert value(samples, "kt_gpu_memory_used_bytes", gpu=g) == gpu["used"]
        assert value(samples, "kt_gpu_memory_total_bytes", gpu=g) == gpu["total"]
        assert value(samples, "kt_gpu_utilization_ratio", gpu=g) == gpu["util"] / 100
        assert value(samples, "kt_gpu_temperature_celsius", gpu=g) == gpu["temp"]
    assert value(samples, "kt_gpu_power_watts", gpu="0") == 312.5
    assert [ls for n, ls in samples if n == "kt_gpu_power_watts"] == [
        (("compute", "gpu"), ("gpu", "0"), ("pod", "gpu"))]  # GPU 1 has no power figure
    assert {dict(ls)["gpu"] for n, ls in samples if n == "kt_gpu_temperature_celsius"} == {
        "0", "1"}  # only the GPUs CUDA_VISIBLE_DEVICES gives the pod


def test_a_calls_gpu_figures(gpu_pod: tuple[RawPod, list]) -> None:
    pod, seen = gpu_pod
    conn = PodConnection(pod.url, pod.token, name="gpu")
    try:
        handle = conn.call(*fn_call(nap, 0.02))
        handle.result()
    finally:
        conn.close()
    stats = handle.stats
    assert stats is not None
    assert [(g.index, g.peak_memory_bytes, g.mean_utilization) for g in stats.gpus] == [
        (i, gpu["used"], gpu["util"]) for i, gpu in enumerate(seen)]
    assert stats.line().endswith("GPU0 peak 11 GiB, 87% util · GPU1 peak 3.0 GiB, 40% util")


# ---------------------------------------------------------------------------- stats
def test_stats_on_handles_and_remote_functions(compute: Any) -> None:
    remote = kt.fn(burn).to(compute)
    handle = remote.submit(300_000)
    assert handle.stats is None  # not before the result is here
    handle.result()
    stats = handle.stats
    assert isinstance(stats, CallStats)
    assert stats.cpu_s > 0 and stats.wall_s > 0
    assert stats.peak_rss_bytes is not None and stats.peak_rss_bytes >= max(
        stats.rss_end_bytes or 0, stats.rss_start_bytes or 0)
    assert remote.last_stats is None  # submit() has its own
    remote(1000)
    assert isinstance(remote.last_stats, CallStats)
    assert re.fullmatch(r"kt: \S+ \S+ wall · \S+ \S+ CPU · peak \S+ \S+ RSS",
                        remote.last_stats.line())


def test_peak_rss_covers_what_a_call_allocated(compute: Any) -> None:
    holder, free = kt.fn(hold).to(compute), kt.fn(release).to(compute)
    before = kt.fn(rss_now).to(compute)()
    try:
        handle = holder.submit(64)
        assert handle.result() == 64 * MiB
    finally:
        free()
    stats = handle.stats
    assert stats is not None and stats.peak_rss_bytes and stats.rss_end_bytes
    assert stats.peak_rss_bytes >= stats.rss_end_bytes  # read at its end: it ran >= 5 ms
    assert stats.peak_rss_bytes - before >= 0.95 * 64 * MiB


def test_peak_rss_covers_memory_freed_before_the_call_ended(compute: Any) -> None:
    before = kt.fn(rss_now).to(compute)()
    handle = kt.fn(spike).to(compute).submit(64)
    assert handle.result() == 64 * MiB
    stats = handle.stats
    assert stats is not None and stats.samples >= 2
    assert stats.peak_rss_bytes and stats.rss_end_bytes
    assert stats.peak_rss_bytes - before >= 0.95 * 64 * MiB
    assert stats.peak_rss_bytes - stats.rss_end_bytes >= 0.9 * 64 * MiB  # it was freed


def test_in_flight_and_cancelled_calls(tmp_path: Path) -> None:
    from kernel_bridge import CallCancelledError

    pod = start_raw_pod(tmp_path, "--name", "cancel")
    conn = PodConnection(pod.url, pod.token, name="cancel")
    try:
        handle = conn.call(*fn_call(gate, str(tmp_path / "never")))
        deadline = time.monotonic() + timeout(30)
        while value(scrape_port(pod.port), "kt_calls_in_flight") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        handle.cancel()
        with pytest.raises(CallCancelledError):
            handle.result(timeout(30))
        samples = scrape_port(pod.port)
    finally:
        conn.close()
        pod.stop()
    assert value(samples, "kt_calls_in_flight") == 0
    assert value(samples, "kt_calls_total", kind="fn", outcome="cancelled") == 1
    assert handle.stats is not None and handle.stats.wall_s > 0


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += burn(k) * 0 + k
        return self.n


async def aburn(n: int) -> int:
    return burn(n)


def test_failed_calls_instances_and_async_calls_have_stats(compute: Any) -> None:
    handle = kt.fn(fails).to(compute).submit()
    with pytest.raises(ValueError):
        handle.result()
    assert handle.stats is not None and handle.stats.wall_s > 0
    counter = kt.cls(Counter).to(compute)
    assert counter.last_stats is None
    assert counter.add(50_000) == 50_000
    assert counter.last_stats is not None and counter.last_stats.cpu_s > 0
    import asyncio

    remote = kt.fn(aburn).to(compute)
    assert asyncio.run(remote(10_000)) == burn(10_000)
    assert remote.last_stats is not None and remote.last_stats.wall_s > 0


def test_stats_off_on_the_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_POD_CALL_STATS", "0")
    pod = start_raw_pod(tmp_path, "--name", "nostats")
    conn = PodConnection(pod.url, pod.token, name="nostats")
    try:
        handle = conn.call(*fn_call(square, 4))
        assert handle.result() == 16
        samples = scrape_port(pod.port)
    finally:
        conn.close()
        pod.stop()
    assert handle.stats is None
    assert value(samples, "kt_call_duration_seconds_count", kind="fn") == 1  # still counted


def test_stats_line_format() -> None:
    stats = CallStats.from_wire({
        "wall_s": 2.314, "cpu_s": 2.05, "rss_start_bytes": 10, "rss_end_bytes": 20,
        "peak_rss_bytes": int(1.2 * 1024**3), "samples": 40,
        "gpus": [{"index": 0, "peak_memory_bytes": int(10.3 * 1024**3),
                  "mean_utilization": 87.2}]})
    assert str(stats) == ("kt: 2.31 s wall · 2.05 s CPU · peak 1.2 GiB RSS · GPU0 peak 10 GiB, "
                          "87% util")
    assert CallStats.from_wire(None) is None
    assert CallStats.from_wire({"wall_s": "not a number"}) is None  # a bad pod: no figures


# -------------------------------------------------------------------------- notebook
def ok(cell: Cell) -> Cell:
    assert cell.reply is not None and cell.reply["status"] == "ok", cell.error or cell.messages
    return cell


STATS_LINE = re.compile(r"^kt: [\d.]+ (µs|ms|s|min) wall · [\d.]+ (µs|ms|s|min) CPU · "
                        r"peak [\d.]+ (B|KiB|MiB|GiB) RSS$", re.M)


@pytest.fixture(scope="module")
def nb_pod() -> str:
    return f"st-{secrets.token_hex(3)}"


def test_kt_stats_prints_one_line_under_the_cells_output(kernel: Kernel, nb_pod: str) -> None:
    cell = ok(kernel.run(f"%%kt --name {nb_pod} --stats\nprint('out')\n"
                         "sum(i * i for i in range(300_000))", timeout=timeout(90)))
    assert cell.stdout.startswith("out\n")
    assert STATS_LINE.search(cell.stdout), cell.stdout
    assert cell.of_type("execute_result")  # the Out is still there
    plain = ok(kernel.run(f"%%kt --name {nb_pod}\n1 + 1"))
    assert not STATS_LINE.search(plain.stdout)
    failed = kernel.run(f"%%kt --name {nb_pod} --stats\nraise KeyError('x')")
    assert failed.error is not None and STATS_LINE.search(failed.stdout)  # also when it fails


def test_kt_cell_stats_setting_shows_it_always(kernel: Kernel, nb_pod: str) -> None:
    ok(kernel.run("import os; os.environ['KT_CELL_STATS'] = '1'"))
    try:
        cell = ok(kernel.run(f"%%kt --name {nb_pod}\nx = 1"))
    finally:
        ok(kernel.run("del os.environ['KT_CELL_STATS']"))
    assert STATS_LINE.search(cell.stdout), cell.stdout


def test_a_detached_run_keeps_its_stats(kernel: Kernel, nb_pod: str, state: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetorch_jupyter.manager import ComputeManager

    started = ok(kernel.run(f"%%kt --name {nb_pod} --detach\n"
                            "total = sum(i * i for i in range(300_000))"))
    rid = re.search(r"%kt attach (\S+)", started.stdout)
    assert rid is not None
    monkeypatch.setenv("KT_STATE_DIR", str(state))
    deadline = time.monotonic() + timeout(60)
    while True:
        [run] = [r for r in ComputeManager().runs(nb_pod) if r.id == rid.group(1)]
        if run.state == "ok":
            break
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    assert run.stats is not None and run.stats.wall_s > 0 and run.stats.cpu_s > 0
    assert run.to_json()["stats"]["wall_s"] == run.stats.wall_s
    listing = ok(kernel.run(f"%kt runs {nb_pod}")).stdout
    assert "COST" in listing and re.search(rf"{rid.group(1)} .* [\d.]+ s, peak \S+ \S+ ",
                                           listing), listing
    ok(kernel.run("import os; os.environ['KT_CELL_STATS'] = '1'"))
    try:
        attached = ok(kernel.run(f"%kt attach {rid.group(1)}"))
    finally:
        ok(kernel.run("del os.environ['KT_CELL_STATS']"))
    assert STATS_LINE.search(attached.stdout), attached.stdout


def test_remote_error_is_still_raised_with_stats_riding_along(compute: Any) -> None:
    handle = kt.fn(fails).to(compute).submit()
    with pytest.raises(RemoteError):
        handle.result()
    assert handle.stats is not None

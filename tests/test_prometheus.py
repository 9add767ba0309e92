"""A real Prometheus (Debian's ``prometheus``) scrapes a real pod's /metrics.

The server runs on 127.0.0.1 on a free port with a temporary TSDB, a 1 s scrape
interval and file-based service discovery (so a test could add pods). Prometheus 2.42
scrapes a new target first some seconds after it starts: the test polls its HTTP API,
it never sleeps a fixed time. Skipped, saying so, where the binary is not installed
(``.ci/run`` installs it with apt-get).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kt_testing import timeout
from test_metrics import port_of, square

import kubetorch_jupyter as kt

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="Debian's prometheus is not installed (apt-get install prometheus; .ci/run "
           "installs it): no real Prometheus to scrape a pod with")


class Prometheus:
    """A running Prometheus and its HTTP API."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, targets: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.targets = targets

    def scrape(self, job: str, *addresses: str) -> None:
        """Point service discovery at ``addresses`` (host:port) as job ``job``."""
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": list(addresses), "labels": {"job": job}}]))
        tmp.replace(self.targets)  # whole, never half written

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=timeout(10)) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait_for(self, promql: str, ok: Callable[[list[dict[str, Any]]], bool],
                 seconds: float = 60) -> list[dict[str, Any]]:
        """Poll ``promql`` until ``ok(result)``."""
        deadline = time.monotonic() + timeout(seconds)
        while True:
            result = self.query(promql)
            if ok(result):
                return result
            assert self.proc.poll() is None, "prometheus exited"
            assert time.monotonic() < deadline, f"{promql}: {result}"
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    config = tmp_path / "prometheus.yml"  # JSON is YAML
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "kt", "file_sd_configs": [
            {"files": [str(targets)], "refresh_interval": "1s"}]}]}))
    port = _free_port()
    assert PROMETHEUS is not None
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(proc, port, targets)
    try:
        deadline = time.monotonic() + timeout(30)
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=timeout(5)) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus not ready"
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout(20))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_prometheus_scrapes_a_pod(prometheus: Prometheus, compute: Any) -> None:
    remote = kt.fn(square).to(compute)
    for i in range(5):
        remote(i)
    prometheus.scrape("kt", f"127.0.0.1:{port_of(compute)}")
    up = prometheus.wait_for('up{job="kt"}', lambda r: bool(r) and r[0]["value"][1] == "1")
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{port_of(compute)}"
    calls = f'kt_calls_total{{job="kt",kind="fn",outcome="ok",compute="{compute.name}"}}'
    first = prometheus.wait_for(calls, lambda r: bool(r) and float(r[0]["value"][1]) >= 5)
    assert first[0]["metric"]["pod"] == compute.name
    for i in range(7):
        remote(i)
    done = float(first[0]["value"][1]) + 7
    prometheus.wait_for(calls, lambda r: bool(r) and float(r[0]["value"][1]) >= done)
    # the histogram is queryable the way a dashboard queries it
    quantile = prometheus.wait_for(
        'histogram_quantile(0.5, sum by (le) (kt_call_duration_seconds_bucket{kind="fn"}))',
        lambda r: bool(r) and r[0]["value"][1] not in ("NaN", "+Inf"))
    assert float(quantile[0]["value"][1]) > 0
    rss = prometheus.query(f'process_resident_memory_bytes{{compute="{compute.name}"}}')
    assert rss and float(rss[0]["value"][1]) > 0

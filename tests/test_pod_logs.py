"""The pod's log: its bounded history over the bridge (kt logs --call), and its stdout
as plain text (the local backend's log) or JSON lines (KT_POD_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kt_testing import fn_call, start_raw_pod, timeout

import kubetorch_jupyter as kt
from kernel_bridge import PodConnection
from kubetorch_jupyter.cli import main
from kubetorch_jupyter.manager import ComputeManager


def chatty(tag: str, n: int) -> str:
    for i in range(n):
        print(tag, i)
    return tag


def mixed() -> None:
    print("to", "stdout")  # print writes "to", " ", "stdout", "\n": one line
    print("to stderr", file=sys.stderr)
    logging.getLogger("user.code").warning("careful: %d left", 3)
    print("no newline at the end", end="")


def test_history_by_call_and_tail_over_the_bridge(compute: Any) -> None:
    first = kt.fn(chatty).to(compute).submit("A", 3)
    first.result()
    second = kt.fn(mixed).to(compute).submit()
    second.result()
    manager = ComputeManager()
    entries = manager.pod_logs(compute.name, call=second.call_id)
    assert [(e["stream"], e["level"], e["text"]) for e in entries] == [
        ("stdout", "info", "to stdout"),
        ("stderr", "error", "to stderr"),
        ("log", "warning", "careful: 3 left"),
        ("stdout", "info", "no newline at the end"),  # written when the call ended
    ]
    assert entries[2]["logger"] == "user.code"
    assert {e["call"] for e in entries} == {f"{second.call_id:016x}"}
    assert {(e["compute"], e["pod"]) for e in entries} == {(compute.name, compute.name)}
    assert [e["text"] for e in manager.pod_logs(compute.name, call=first.call_id)] == [
        "A 0", "A 1", "A 2"]
    last = manager.pod_logs(compute.name, call=first.call_id, tail=1)
    assert [e["text"] for e in last] == ["A 2"]
    newer = manager.pod_logs(compute.name, after=last[0]["seq"])
    assert [e["text"] for e in newer if e["call"] is not None][:1] == ["to stdout"]


def test_kt_logs_call(compute: Any, capsys: pytest.CaptureFixture[str]) -> None:
    handle = kt.fn(chatty).to(compute).submit("B", 4)
    handle.result()
    capsys.readouterr()  # what the call printed here, as it ran
    assert main(["logs", compute.name, "--call", f"{handle.call_id:x}"]) == 0
    assert capsys.readouterr().out == "B 0\nB 1\nB 2\nB 3\n"
    # the run-id form %kt runs shows, and --tail
    assert main(["logs", compute.name, "--call", f"{compute.name}:{handle.call_id:016x}",
                 "-n", "2"]) == 0
    assert capsys.readouterr().out == "B 2\nB 3\n"
    log = kt.fn(mixed).to(compute).submit()
    log.result()
    capsys.readouterr()
    assert main(["logs", compute.name, "--call", f"{log.call_id:x}"]) == 0
    assert "WARNING user.code: careful: 3 left\n" in capsys.readouterr().out


def test_kt_logs_call_errors_are_one_line(compute: Any, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["logs", compute.name, "--call", "not-hex!"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "is not a call id" in err and "Traceback" not in err
    assert main(["logs", compute.name, "--call", "1f", "--follow"]) == 1
    assert "drop --follow" in capsys.readouterr().err
    assert main(["logs", "no-such-pod", "--call", "1f"]) == 1
    assert capsys.readouterr().err.startswith("kt: ")


def test_the_history_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_POD_LOG_HISTORY", "5")
    pod = start_raw_pod(tmp_path, "--name", "bounded")
    conn = PodConnection(pod.url, pod.token, name="bounded")
    try:
        conn.call(*fn_call(chatty, "L", 20)).result()
        from pod_runtime import protocol

        entries = conn.call(*protocol.dumps({"kind": "logs"})).result()
    finally:
        conn.close()
        pod.stop()
    assert [e["text"] for e in entries] == [f"L {i}" for i in range(15, 20)]


def test_json_lines_on_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_POD_LOG_FORMAT", "json")
    monkeypatch.setenv("KT_POD_INSTANCE", "jl-7d4b9-x2x9q")
    pod = start_raw_pod(tmp_path, "--name", "jl")
    conn = PodConnection(pod.url, pod.token, name="jl")
    try:
        handle = conn.call(*fn_call(mixed))
        handle.result()
    finally:
        conn.close()
        pod.stop()
    lines = pod.log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "compute", "pod", "call", "stream", "level", "text"} <= r.keys()
               for r in records)
    assert all(r["time"].endswith("Z") and r["pod"] == "jl-7d4b9-x2x9q" for r in records)
    assert any(r["stream"] == "log" and "listening" in r["text"] and r["call"] is None
               for r in records)
    mine = [(r["stream"], r["level"], r["text"]) for r in records
            if r["call"] == f"{handle.call_id:016x}"]
    assert mine == [("stdout", "info", "to stdout"), ("stderr", "error", "to stderr"),
                    ("log", "warning", "careful: 3 left"),
                    ("stdout", "info", "no newline at the end")]


def test_the_plain_log_stays_what_was_printed(tmp_path: Path) -> None:
    pod = start_raw_pod(tmp_path, "--name", "plain")
    conn = PodConnection(pod.url, pod.token, name="plain")
    try:
        conn.call(*fn_call(mixed)).result()
    finally:
        conn.close()
        pod.stop()
    text = pod.log.read_text()
    assert "to stdout\nto stderr\n" in text
    assert " WARNING user.code: careful: 3 left\n" in text
    assert " INFO kubetorch.pod: pod plain listening on " in text
    assert "{" not in text


def test_a_bad_log_format_is_one_line(tmp_path: Path) -> None:
    env = {"KT_POD_TOKEN": "t" * 32, "KT_POD_LOG_FORMAT": "xml",
           "PYTHONPATH": ":".join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "pod_runtime"], env=env, capture_output=True,
                          text=True, timeout=timeout(30))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("pod_runtime: KT_POD_LOG_FORMAT='xml': must be 'plain' or "
                                   "'json'")


def long_line() -> None:
    print("x" * 10_000)


def test_a_long_line_is_cut_in_the_history(compute: Any) -> None:
    handle = kt.fn(long_line).to(compute).submit()
    handle.result()
    [entry] = ComputeManager().pod_logs(compute.name, call=handle.call_id)
    assert entry["text"].startswith("x" * 4096 + "... [5904 more characters cut]")

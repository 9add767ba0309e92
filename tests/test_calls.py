"""kt.fn and kt.cls against a real local pod: results, errors, streaming, big data."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kt_testing import timeout

import kubetorch_jupyter as kt


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


class Counter:
    def __init__(self, start: int) -> None:
        self.n = start

    def add(self, k: int) -> int:
        self.n += k
        return self.n


class Gate:
    """An instance whose one method waits until another releases it."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def wait(self) -> str:
        print("waiting for release", flush=True)
        if not self.event.wait(60):
            return "timed out"
        return "released"

    def release(self) -> None:
        self.event.set()


class CustomError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def raise_custom() -> None:
    raise CustomError("boom", 42)


def test_function_call_returns_its_result(compute: kt.Compute) -> None:
    remote = kt.fn(add).to(compute)
    assert remote(2, b=3) == 5
    assert remote(10) == 10


def test_output_streams_to_the_caller(compute: kt.Compute, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    def train(n: int, lr: float = 0.1) -> float:
        print("step", n)
        import sys

        print("warning!", file=sys.stderr)
        return n * lr

    assert kt.fn(train).to(compute)(10, lr=0.5) == 5.0
    out, err = capsys.readouterr()
    assert out == "step 10\n"
    assert err == "warning!\n"


def test_output_arrives_before_the_call_returns(compute: kt.Compute) -> None:
    gate = kt.cls(Gate).to(compute, name="gate")
    handle = gate.wait.submit()
    text = ""
    for event in handle.stream(timeout=timeout(30)):
        text += event["text"]
        if text.endswith("\n"):
            break
    assert text == "waiting for release\n"
    assert not handle.done()
    gate.release()
    assert handle.result(timeout(30)) == "released"


def test_remote_exception_keeps_its_type_and_traceback(compute: kt.Compute) -> None:
    with pytest.raises(ValueError, match="bad input") as info:
        kt.fn(fail).to(compute)("bad input")
    err = info.value
    assert isinstance(err, kt.RemoteError)
    assert err.remote_type == "ValueError"
    assert err.pod == compute.name
    assert 'raise ValueError(message)' in err.remote_traceback  # the source line, from here
    assert f'File "{__file__}"' in err.remote_traceback
    assert "pod_runtime" not in err.remote_traceback  # the runtime's own frames are hidden
    assert any("Remote traceback" in note for note in err.__notes__)
    rendered = "\n".join(err._render_traceback_())
    assert "raise ValueError(message)" in rendered


def test_custom_exception_comes_back_with_its_attributes(compute: kt.Compute) -> None:
    with pytest.raises(CustomError) as info:
        kt.fn(raise_custom).to(compute)()
    assert info.value.code == 42
    assert str(info.value) == "boom"


def test_exception_of_a_type_unknown_here_is_a_remote_error(compute: kt.Compute) -> None:
    def raise_foreign() -> None:
        import types

        mod = types.ModuleType("only_on_the_pod")
        exec("class Weird(Exception): pass", mod.__dict__)
        mod.Weird.__module__ = "only_on_the_pod"
        raise mod.Weird("strange")

    with pytest.raises(kt.RemoteError) as info:
        kt.fn(raise_foreign).to(compute)()
    assert info.value.remote_type == "only_on_the_pod.Weird"
    assert info.value.remote_message == "strange"


def test_class_instance_keeps_state_across_calls(compute: kt.Compute) -> None:
    counter = kt.cls(Counter).to(compute, init_args={"start": 5})
    assert counter.add(2) == 7
    assert counter.add(3) == 10
    assert counter.getattr("n") == 10
    fresh = kt.cls(Counter).to(compute, init_args={"start": 0}, name="other")
    assert fresh.add(1) == 1
    assert counter.add(0) == 10


def test_big_array_round_trip_is_bit_exact(compute: kt.Compute) -> None:
    raw = bytearray(np.random.default_rng(1).bytes(256 * 1024 * 1024))
    arr = np.frombuffer(raw, dtype=np.float32)  # writable, as most arrays are
    digest = hashlib.sha256(raw).hexdigest()

    def echo(a: np.ndarray) -> np.ndarray:
        return a

    out = kt.fn(echo).to(compute)(arr)
    assert out.dtype == np.float32 and out.shape == arr.shape
    assert hashlib.sha256(out.tobytes()).hexdigest() == digest
    assert out.flags.writeable


def test_big_bytes_without_shared_memory(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("KT_SHM", "0")
    c = kt.Compute(name="noshm")
    try:
        conn = c.connection()
        assert not conn.shm_active
        arr = np.random.default_rng(2).integers(0, 2**31, 8 * 1024 * 1024, dtype=np.int32)
        out = kt.fn(lambda a: a[::-1].copy()).to(c)(arr)
        np.testing.assert_array_equal(out, arr[::-1])
        out[0] = 1  # writable like a local array
    finally:
        c.teardown()


def test_unpicklable_argument_is_named(compute: kt.Compute) -> None:
    remote = kt.fn(add).to(compute)
    with pytest.raises(kt.SerializationError, match=r"argument 'b' \(a _thread.lock\)"):
        remote(1, b=threading.Lock())
    assert remote(1, b=1) == 2  # nothing was lost; the pod is fine


def test_unpicklable_result_is_explained(compute: kt.Compute) -> None:
    def make_lock() -> object:
        return threading.Lock()

    with pytest.raises(kt.SerializationError, match="cannot be pickled"):
        kt.fn(make_lock).to(compute)()


def test_many_concurrent_async_calls_none_lost(compute: kt.Compute) -> None:
    remote = kt.fn(add).to(compute)

    async def many() -> list[int]:
        return await asyncio.gather(*[remote.acall(i, b=1) for i in range(1000)])

    assert asyncio.run(many()) == [i + 1 for i in range(1000)]


def test_cancel_one_call_and_the_pod_lives_on(compute: kt.Compute) -> None:
    def spin() -> None:
        print("spinning", flush=True)
        while True:
            time.sleep(0.01)

    handle = kt.fn(spin).to(compute).submit()
    next(handle.stream(timeout=timeout(30)))
    other = kt.fn(add).to(compute).submit(1, b=1)  # concurrent, unaffected
    handle.cancel()
    with pytest.raises(kt.CallCancelledError):
        handle.result(timeout(30))
    assert other.result(timeout(30)) == 2


def test_result_timeout_leaves_the_call_running(compute: kt.Compute) -> None:
    gate = kt.cls(Gate).to(compute, name="gate2")
    handle = gate.wait.submit()
    with pytest.raises(TimeoutError, match="still running"):
        handle.result(timeout=0.2)
    gate.release()
    assert handle.result(timeout(30)) == "released"


def test_globals_are_sent_with_the_function(compute: kt.Compute) -> None:
    global SCALE
    SCALE = 3

    def scaled(x: int) -> int:
        return x * SCALE

    remote = kt.fn(scaled).to(compute)
    assert remote(2) == 6
    SCALE = 5  # a changed global reaches the pod, as it would locally
    assert remote(2) == 10


SCALE = 1


def test_pod_runs_with_the_pod_environment(compute: kt.Compute) -> None:
    def where() -> tuple[int, str | None]:
        return os.getpid(), os.environ.get("KT_POD_TOKEN")

    pid, token = kt.fn(where).to(compute)()
    assert pid == compute.pod.pid != os.getpid()
    assert token is None  # the token is not left in the pod's environment


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def test_an_exception_that_cannot_be_printed_still_ends_the_call(compute: kt.Compute) -> None:
    def raise_unprintable() -> None:
        raise Unprintable()

    with pytest.raises(kt.RemoteError) as info:
        kt.fn(raise_unprintable).to(compute)()
    assert "Unprintable" in info.value.remote_type
    assert kt.fn(add).to(compute)(1, b=1) == 2


def test_remote_sys_exit_does_not_end_the_caller(compute: kt.Compute) -> None:
    def leave() -> None:
        import sys

        sys.exit(3)

    with pytest.raises(kt.RemoteError) as info:
        kt.fn(leave).to(compute)()
    assert not isinstance(info.value, SystemExit)
    assert info.value.remote_type == "SystemExit"


def test_an_object_of_a_module_the_pod_cannot_import_is_explained(compute: kt.Compute) -> None:
    import sys
    import types

    mod = types.ModuleType("only_here_mod")
    exec("class Thing:\n    pass\n", mod.__dict__)
    sys.modules["only_here_mod"] = mod  # importable here, by name; not on the pod
    mod.Thing.__module__ = "only_here_mod"
    try:
        with pytest.raises(ModuleNotFoundError, match="'only_here_mod', which this pod cannot"):
            kt.fn(add).to(compute)([mod.Thing()], b=[])
    finally:
        del sys.modules["only_here_mod"]



def test_a_global_rebound_behind_a_helper_is_sent_again(compute: kt.Compute) -> None:
    """As in a notebook: helpers and globals of __main__ travel by value."""
    ns: dict[str, object] = {"__name__": "__main__"}
    exec("LR = 0.1\ndef helper():\n    return LR\ndef train():\n    return helper()\n", ns)
    remote = kt.fn(ns["train"]).to(compute)  # type: ignore[arg-type]
    assert remote() == 0.1
    ns["LR"] = 0.5  # rebound in a later cell
    assert remote() == 0.5


def test_an_instance_after_teardown_says_it_is_gone_and_starts_no_pod() -> None:
    from kubetorch_jupyter.backends.local.backend import LocalBackend
    from kubetorch_jupyter.calls.remote import InstanceGoneError

    c = kt.Compute(name="gone-inst")
    counter = kt.cls(Counter).to(c, {"start": 1})
    assert counter.add(1) == 2
    c.teardown()
    with pytest.raises(InstanceGoneError, match=r"^the Counter instance 'Counter' is gone "
                       r"with its pod: compute 'gone-inst' was torn down"):
        counter.add(1)
    with pytest.raises(InstanceGoneError):
        counter.getattr("n")
    assert "gone-inst" not in [p.name for p in LocalBackend().list()]  # none started

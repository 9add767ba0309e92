"""Typed wire messages: failures the client acts on are keyed by ErrorKind, not text."""

from __future__ import annotations

import pickle

from kt_testing import RawPod, timeout
from test_pod_runtime_limits import RawClient

import kubetorch_jupyter as kt
from kernel_bridge import PodConnection, RemoteError
from pod_runtime import protocol
from pod_runtime.protocol import FrameType, messages


def _uncached_call() -> bytes:
    msg: messages.FnCall = {"kind": "fn", "fn_id": "never-sent", "fn_blob": None,
                            "args": (), "kwargs": {}}
    return pickle.dumps(msg, protocol=5)


def test_a_call_whose_function_the_pod_lacks_fails_with_kind_not_cached(raw_pod: RawPod
                                                                         ) -> None:
    raw = RawClient(raw_pod)
    try:
        body = pickle.loads(_uncached_call())
        raw.send_call(7, body)
        frame = raw.read_frame()
        while frame.type != FrameType.RESULT:
            frame = raw.read_frame()
        result: messages.Result = protocol.loads(frame.body)
        assert result["ok"] is False
        assert result["error"]["category"] == messages.ErrorKind.NOT_CACHED
    finally:
        raw.close()
    conn = PodConnection(raw_pod.url, raw_pod.token, name="raw")
    try:
        try:
            conn.call(_uncached_call(), []).result(timeout(30))
        except messages.NotCachedError as exc:
            assert isinstance(exc, RemoteError)  # raised as the pod's type, remote too
            assert exc.kind is messages.ErrorKind.NOT_CACHED
            assert exc.key == "never-sent"
        else:
            raise AssertionError("the pod ran a function it was never sent")
    finally:
        conn.close()


def triple(x: int) -> int:
    return 3 * x


def test_kt_fn_resends_its_function_when_the_pod_says_not_cached(compute: kt.Compute
                                                                  ) -> None:
    remote = kt.fn(triple).to(compute)
    digest, _ = remote._blob()
    # This client believes the pod holds the function (as after the pod restarted
    # without this client noticing); the pod answers NOT_CACHED and it is resent.
    compute.connection().known.add(digest)
    assert remote(5) == 15
    assert digest in compute.connection().known

"""The wire protocol, without a network: framing, buffers, tokens, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pod_runtime import protocol
from pod_runtime.protocol import FrameType, ProtocolError, shm


def test_frame_round_trip_with_inline_and_shm_buffers() -> None:
    a = memoryview(b"a" * 10)
    b = memoryview(bytearray(b"b" * 5))
    parts = protocol.encode_frame(FrameType.CALL, 7, b"body", [a, b],
                                  shm_names=[None, "kt-1-" + "0" * 16],
                                  flags=protocol.FLAG_MAIN_THREAD)
    assert len(parts) == 2  # header+body, then the one inline buffer as its own fragment
    assert parts[1] is a  # not copied
    frame = protocol.decode_frame([bytes(p) for p in parts])
    assert frame.type is FrameType.CALL and frame.call_id == 7
    assert frame.flags == protocol.FLAG_MAIN_THREAD
    assert bytes(frame.body) == b"body"
    inline, shared = frame.buffers
    assert inline.kind == protocol.BUFFER_INLINE and bytes(inline.view) == b"a" * 10
    assert shared.kind == protocol.BUFFER_SHM and shared.name == "kt-1-" + "0" * 16
    assert shared.size == 5


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([b""], "shorter than its header"),
        ([b"XX" + b"\0" * 40], "bad magic"),
        ([], "empty message"),
    ],
)
def test_malformed_frames_are_refused(parts: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_frame(parts)


def test_wrong_version_names_the_fix() -> None:
    raw = bytearray(protocol.encode_frame(FrameType.ACK, 0, b"{}")[0])
    raw[2] = 99
    with pytest.raises(ProtocolError, match="upgrade kubetorch-jupyter"):
        protocol.decode_frame([bytes(raw)])


def test_missing_inline_buffer_is_refused() -> None:
    parts = protocol.encode_frame(FrameType.RESULT, 1, b"x", [memoryview(b"abc")])
    with pytest.raises(ProtocolError, match="inline buffer"):
        protocol.decode_frame(parts[:1])
    with pytest.raises(ProtocolError, match="more fragments"):
        protocol.decode_frame([*parts, b"extra"])


def test_numpy_arrays_travel_out_of_band_and_come_back_writable() -> None:
    arr = np.arange(100_000, dtype=np.float32)
    body, buffers = protocol.dumps({"a": arr})
    assert len(body) < 1000 and len(buffers) == 1
    frame = protocol.decode_frame([bytes(p) for p in protocol.encode_frame(
        FrameType.RESULT, 1, body, buffers)])
    out = protocol.loads(frame.body, protocol.resolve_buffers(frame.buffers, shm.map_claimed))
    np.testing.assert_array_equal(out["a"], arr)
    assert out["a"].flags.writeable


def test_small_buffers_stay_in_band() -> None:
    _, buffers = protocol.dumps(np.arange(10))
    assert buffers == []


def test_shared_memory_buffers_round_trip_and_are_unlinked() -> None:
    writer = shm.ShmWriter(threshold=1)
    data = np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8)
    (name,) = writer.place([memoryview(data)])
    assert name is not None and (shm.SHM_DIR / name).exists()
    view = shm.open_buffer(name, data.nbytes)
    assert not (shm.SHM_DIR / name).exists()
    np.testing.assert_array_equal(np.frombuffer(view, dtype=np.uint8), data)
    writer.cleanup()


def test_shared_memory_refuses_foreign_names() -> None:
    with pytest.raises(ValueError, match="refusing"):
        shm.claim("../../etc/passwd")
    assert shm.probe_check("/etc/passwd") is None


def test_unclaimed_shared_memory_is_cleaned_up() -> None:
    writer = shm.ShmWriter(threshold=1)
    (name,) = writer.place([memoryview(b"x" * 100)])
    writer.cleanup()
    assert name is not None and not (shm.SHM_DIR / name).exists()


def test_tokens_compare_in_constant_time_and_never_match_empty() -> None:
    assert protocol.check_token("abc", "abc")
    assert not protocol.check_token("abc", "abd")
    assert not protocol.check_token("abc", None)
    assert not protocol.check_token("", "")
    assert protocol.bearer("Bearer xyz") == "xyz"
    assert protocol.bearer("Basic xyz") is None
    assert protocol.token_proof("t", "n") != protocol.token_proof("t", "m")


def test_functions_by_value_keep_their_file_name() -> None:
    def broken() -> float:
        return 1 / 0

    body, _ = protocol.dumps(broken)
    clone = pickle.loads(body)
    assert clone.__code__.co_filename == __file__

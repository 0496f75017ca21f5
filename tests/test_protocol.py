"""The codec round-trips every message and turns anything malformed into one ProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecollab.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Error,
    FetchModel,
    FrameResults,
    Frames,
    Goodbye,
    Heartbeat,
    Hello,
    LinkProbe,
    Message,
    ModelChunk,
    ProtocolError,
    Ready,
    Result,
    Shard,
    ShardResult,
    SiteFront,
    Submit,
    Welcome,
    decode,
    decode_all,
    encode,
    encode_bundle,
)
from edgecollab.worker.protocol.codec import MAX_ARRAY_BYTES, MAX_HEADER_BYTES
from edgecollab.worker.protocol.messages import PackedFrameResults, PackedFrames

IMAGES = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 1, 28, 28)
MESSAGES: list[Message] = [
    Hello("rpi4", {"arch": "aarch64", "cores": 4, "providers": ["CPUExecutionProvider"], "max_opset": 21}),
    Welcome("rpi4", 1.0),
    Welcome("rpi4", 1.0, {"threads": 2, "variants": [{"id": "cnn-8", "input_shape": [1, 28, 28]}]}),
    FetchModel("ab" * 32, 1048576, 1048576),
    ModelChunk("ab" * 32, 0, 5, np.arange(5, dtype=np.uint8)),
    Ready("rpi4", ["cnn-8"], ["CPUExecutionProvider"], "f" * 32, 0.42, ["CUDA missing"], {"det-small": "opset 17"}),
    Heartbeat("rpi4"),
    SiteFront("north", {"cnn-8": {"ips": 900.0, "latency_ms": 4.0, "latencies": [[1, 4.0]]}}, 4, 2, 48.5),
    LinkProbe(3, 4096, np.zeros(0, np.uint8)),
    LinkProbe(3, 4096, np.zeros(4096, np.uint8)),
    Goodbye("rpi4", "stopping"),
    Shard("req", 7, 1, "cnn-8", IMAGES),
    ShardResult("req", 7, 1, np.array([3, 1, 4], dtype=np.int64), 0.012),
    Submit("req", IMAGES, 300.0, None, "equal"),
    Submit("req", IMAGES),
    Result(
        "req",
        np.array([1, 2, 3]),
        np.zeros((3, 2), np.int16),
        {"plan": [{"node": "rpi4", "inputs": 3}], "feasible": True, "x": None},
        {"boxes": np.zeros((3, 64, 4), np.float32), "labels/class": np.ones((3, 64), np.int64)},
        ["det-small"],
        ["rpi4"],
    ),
    ShardResult("req", 7, 1, np.full(2, -1), 0.01, {"scores": np.ones((2, 64), np.float16)}),
    Error("invalid_input", "expected uint8", "req", 2, 0),
    Cancel("req"),
]


def header(kind: str, fields: dict[str, object], arrays: list[object], version: int = PROTOCOL_VERSION) -> bytes:
    return msgpack.packb({"v": version, "k": kind, "f": fields, "a": arrays})


def shard_header(arrays: list[object]) -> bytes:
    return header("shard", {"request_id": "r", "shard_id": 0, "attempt": 0, "variant": "v"}, arrays)


def wire(message: Message) -> list[bytes]:
    return [bytes(f) for f in encode(message)]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_every_message_round_trips(message: Message) -> None:
    decoded = decode(wire(message))
    assert type(decoded) is type(message)
    for name, value in vars(message).items():
        got = getattr(decoded, name)
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and np.array_equal(got, value)
        elif isinstance(value, dict) and any(isinstance(v, np.ndarray) for v in value.values()):
            assert set(got) == set(value)
            assert all(got[k].dtype == v.dtype and np.array_equal(got[k], v) for k, v in value.items())
        else:
            assert got == value


def test_named_tensors_are_checked_like_arrays() -> None:
    fields = {"request_id": "r", "shard_id": 0, "attempt": 0, "busy_s": 0.1}
    predictions = ["predictions", "int64", [2]]
    one = np.zeros(2, np.int64).tobytes()
    with pytest.raises(ProtocolError, match="sent twice"):
        scores = ["outputs", "float32", [2], "s"]
        decode([header("shard_result", fields, [predictions, scores, scores]), one, one[:8], one[:8]])
    with pytest.raises(ProtocolError, match=r"\[field, dtype, shape, name\]"):
        decode([header("shard_result", fields, [predictions, ["nothing", "float32", [2], "s"]]), one, one[:8]])
    with pytest.raises(ProtocolError, match="promises 8 bytes"):
        decode([header("shard_result", fields, [predictions, ["outputs", "float32", [2], "s"]]), one, one])
    with pytest.raises(ProtocolError, match="up to 63 named tensors"):
        many = [["outputs", "uint8", [0], str(i)] for i in range(64)]
        decode([header("shard_result", fields, [predictions, *many]), one, *([b""] * 64)])


def test_arrays_travel_as_raw_frames_not_copies_in_the_header() -> None:
    frames = wire(Shard("r", 0, 0, "v", IMAGES))
    assert len(frames) == 2 and frames[1] == IMAGES.tobytes()
    assert len(frames[0]) < 200


GOOD_SHARD = wire(Shard("r", 0, 0, "v", IMAGES))
MALFORMED = {
    "no frames": [],
    "missing array frame": GOOD_SHARD[:1],
    "extra frame": [*GOOD_SHARD, b"x"],
    "not msgpack": [b"\xc1\xc1\xc1", GOOD_SHARD[1]],
    "trailing bytes after header": [GOOD_SHARD[0] + b"\x00", GOOD_SHARD[1]],
    "header not a map": [msgpack.packb([1, 2, 3])],
    "unknown kind": [header("launch_missiles", {}, [])],
    "kind not a string": [header(7, {}, [])],  # type: ignore[arg-type]
    "future version": [header("heartbeat", {"node": "a"}, [], version=PROTOCOL_VERSION + 1)],
    "int map keys": [msgpack.packb({"v": 1, "k": "heartbeat", "f": {1: "a"}, "a": []})],
    "missing field": [header("heartbeat", {}, [])],
    "unknown field": [header("heartbeat", {"node": "a", "evil": 1}, [])],
    "wrong field type": [header("heartbeat", {"node": 5}, [])],
    "bool for int": [header("error", {"code": "x", "message": "y", "shard_id": True}, [])],
    "deep nesting": [header("result", {"request_id": "r", "report": {"a": [[[[[[[[[[1]]]]]]]]]]}}, [["predictions", "int64", [0]]]), b""],
    "array header lies about size": [shard_header([["inputs", "uint8", [3, 1, 28, 28]]]), b"\x00" * 100],
    "object dtype": [shard_header([["inputs", "object", [1]]]), b"\x00" * 8],
    "negative dimension": [shard_header([["inputs", "uint8", [-1]]]), b""],
    "too many dimensions": [shard_header([["inputs", "uint8", [1] * 9]]), b"\x00"],
    "array named wrong": [shard_header([["other", "uint8", [1]]]), b"\x00"],
    "array above the size limit": [shard_header([["inputs", "uint8", [MAX_ARRAY_BYTES + 1]]]), b""],
    "oversized header": [header("heartbeat", {"node": "a" * (MAX_HEADER_BYTES + 1)}, [])],
}  # fmt: skip


@pytest.mark.parametrize("frames", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_messages_raise_one_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(frames)


def test_errors_say_what_was_expected() -> None:
    with pytest.raises(ProtocolError, match=r"header promises 2352 bytes, frame holds 100"):
        decode(MALFORMED["array header lies about size"])
    with pytest.raises(ProtocolError, match=r"protocol version 3 is not supported; this peer speaks 2"):
        decode(MALFORMED["future version"])
    with pytest.raises(ProtocolError, match=r"dtype 'object' is not allowed"):
        decode(MALFORMED["object dtype"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_fuzzed_frames_never_raise_anything_but_protocol_error(frames: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        decode(frames)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["shard", "submit", "result", "hello", "error", "heartbeat"]),
    fields=st.dictionaries(
        st.sampled_from(["request_id", "shard_id", "attempt", "variant", "node", "report", "code", "message"]),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
            max_leaves=10,
        ),
    ),
    payload=st.binary(max_size=32),
    shape=st.lists(st.integers(min_value=-2, max_value=40), max_size=4),
    dtype=st.sampled_from(["uint8", "int64", "float32", "object", "V8", "<U4"]),
)  # fmt: skip
def test_fuzzed_headers_never_raise_anything_but_protocol_error(
    kind: str, fields: dict[str, object], payload: bytes, shape: list[int], dtype: str
) -> None:
    array_name = {"shard": "inputs", "submit": "inputs", "result": "predictions"}.get(kind, "x")
    try:
        message = decode([header(kind, fields, [[array_name, dtype, shape]]), payload])
    except ProtocolError:
        return
    assert isinstance(message, Message)


def test_a_bundle_carries_several_messages_in_order_and_one_alone_is_itself() -> None:
    messages = [
        Heartbeat("a"),
        FrameResults("s", np.arange(3), np.array([4, 5, 6]), "cnn-8", "rpi4"),
        Error("busy", "try later", "r1"),
    ]
    decoded = decode_all(encode_bundle(messages))
    assert [type(m) for m in decoded] == [Heartbeat, FrameResults, Error]
    assert isinstance(decoded[1], FrameResults) and decoded[1].predictions.tolist() == [4, 5, 6]
    assert encode_bundle(messages[:1])[0] == encode(messages[0])[0]  # a bundle of one is the message
    with pytest.raises(ProtocolError, match="a bundle where one message was expected"):
        decode(encode_bundle(messages))


def test_a_malformed_bundle_is_named_and_a_bad_message_in_one_leaves_the_others() -> None:
    frames = encode_bundle([Heartbeat("a"), Heartbeat("b")])
    (wrong,) = decode_all([*frames, b"extra"])
    assert isinstance(wrong, ProtocolError) and "adding up to the 3 frame(s)" in str(wrong)
    header = msgpack.packb({"v": PROTOCOL_VERSION, "k": "bundle", "f": {"frames": [1, 1]}, "a": []})
    inner = msgpack.packb({"v": PROTOCOL_VERSION, "k": "heartbeat", "f": {"node": 7}, "a": []})
    first, second = decode_all([header, inner, encode(Heartbeat("ok"))[0]])
    assert isinstance(first, ProtocolError) and "heartbeat.node" in str(first)
    assert second == Heartbeat("ok")
    nested = decode_all([header, *encode_bundle([Heartbeat("x"), Heartbeat("y")])[:1], b""])
    assert all(isinstance(m, ProtocolError) for m in nested)


def _wire(message: Message) -> list[bytes]:
    return [bytes(frame) for frame in encode(message)]


FRAME = np.arange(28 * 28, dtype=np.uint8).reshape(1, 1, 28, 28)


def test_runs_of_stream_frames_and_of_one_batch_s_answers_travel_packed_and_arrive_as_they_were_sent() -> None:
    boxes = {"boxes": np.ones((1, 4, 4), np.float32)}
    messages: list[Message] = [
        Frames("a", 0, np.concatenate([FRAME, FRAME])),
        Frames("b", 7, FRAME),
        Frames("c", 0, np.zeros((1, 3, 8, 8), np.uint8)),  # another shape: a run of its own
        Cancel("r"),
        Frames("a", 2, FRAME),  # after the cancel: not packed with the first run
        FrameResults("a", np.array([0]), np.array([3]), "cnn-8", "rpi4", outputs=boxes),
        FrameResults(
            "b", np.array([7, 8]), np.array([1, 2]), "cnn-8", "rpi4", outputs={"boxes": np.zeros((2, 4, 4), np.float32)}
        ),
        FrameResults("c", np.array([0]), np.array([-1]), "", "", True, "refused"),  # dropped: another run
    ]
    frames = encode_bundle(messages)
    decoded = decode_all(frames)
    assert [_wire(m) for m in decoded] == [_wire(m) for m in messages]  # in order, every field and byte
    assert len(frames) < 1 + sum(len(encode(m)) for m in messages)
    heads, start = [], 1
    for count in msgpack.unpackb(bytes(frames[0]))["f"]["frames"]:  # each message's header opens its frames
        heads.append(msgpack.unpackb(bytes(frames[start]))["k"])
        start += count
    assert heads == ["frames_packed", "frames", "cancel", "frames", "frame_results_packed", "frame_results"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["frames", "results", "heartbeat"]), st.integers(1, 3)), max_size=12))
def test_packing_keeps_every_message_and_its_order(plan: list[tuple[str, int]]) -> None:
    messages: list[Message] = []
    for i, (kind, rows) in enumerate(plan):
        if kind == "frames":
            messages.append(Frames(f"s{i % 3}", i, np.repeat(FRAME, rows, axis=0)))
        elif kind == "results":
            messages.append(FrameResults(f"s{i % 3}", np.arange(rows), np.arange(rows) + i, "cnn-8", "rpi4"))
        else:
            messages.append(Heartbeat(f"n{i}"))
    if messages:
        assert [_wire(m) for m in decode_all(encode_bundle(messages))] == [_wire(m) for m in messages]


def test_a_packed_message_that_does_not_add_up_is_named_and_leaves_the_rest_of_its_bundle() -> None:
    def packed(counts: list[int], rows: int) -> list[bytes]:
        message = PackedFrames(["a", "b"], [0, 0], counts, np.repeat(FRAME, rows, axis=0))
        return _wire(message)

    header = msgpack.packb({"v": PROTOCOL_VERSION, "k": "bundle", "f": {"frames": [2, 1]}, "a": []})
    wrong, fine = decode_all([header, *packed([1, 2], 2), encode(Heartbeat("ok"))[0]])
    assert isinstance(wrong, ProtocolError) and "counts add up to 3; its inputs has 2 rows" in str(wrong)
    assert fine == Heartbeat("ok")
    (empty,) = decode_all(packed([1, 0], 1))
    assert isinstance(empty, ProtocolError) and "at least 1" in str(empty)
    lopsided = PackedFrameResults(["a"], [2], np.arange(2), np.arange(1), "cnn-8", "rpi4")
    (short,) = decode_all(_wire(lopsided))
    assert isinstance(short, ProtocolError) and "predictions must have a row per sequence number" in str(short)
    with pytest.raises(ProtocolError, match="a frames_packed where one message was expected"):
        decode(packed([1, 1], 2))

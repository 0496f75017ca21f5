"""Wire codec: one msgpack header frame, then one raw frame per ndarray field.

Header: ``{"v": version, "k": kind, "f": {scalar fields}, "a": [[field, dtype, shape], ...]}``.
A field typed ``dict[str, np.ndarray]`` (named tensors, e.g. a model's outputs) sends one
``[field, dtype, shape, key]`` entry and one frame per tensor.
Everything malformed — wrong frame count, not msgpack, trailing bytes, unknown kind or
version, wrong field types, an array header that lies about its size, a dtype outside
the allow-list — raises one ``ProtocolError``. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Union

import msgpack
import numpy as np

from ..errors import EdgecollabError
from .messages import MESSAGE_TYPES, PROTOCOL_VERSION, Message, PackedFrameResults, PackedFrames
from .packing import pack, unpack

MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAY_BYTES = 256 * 1024 * 1024
MAX_NDIM = 8
ALLOWED_DTYPES = frozenset({"uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"})
# Reports carry nested JSON-like data; deeper nesting is refused.
MAX_DEPTH = 8
# Array frames per message, named tensors included.
MAX_ARRAYS = 64
# A bundle: several messages for one peer in one ZeroMQ message; at most this many.
BUNDLE = "bundle"
MAX_BUNDLE = 1024


class ProtocolError(EdgecollabError):
    """A message could not be decoded; the sender is at fault."""


Frame = Union[bytes, memoryview]


# Per message type, computed once (encoding and decoding are on every message's path): every field's name
# in order, the fields sent as one raw frame each, and the fields of named tensors (a frame per tensor).
_FIELDS: dict[str, tuple[tuple[str, ...], list[str], list[str]]] = {}


def _fields(cls: type[Message]) -> tuple[tuple[str, ...], list[str], list[str]]:
    if cls.kind not in _FIELDS:
        fields = dataclasses.fields(cls)
        _FIELDS[cls.kind] = (
            tuple(f.name for f in fields),
            [f.name for f in fields if f.type in ("np.ndarray", np.ndarray)],
            [f.name for f in fields if f.type in ("dict[str, np.ndarray]", dict[str, np.ndarray])],
        )
    return _FIELDS[cls.kind]


def _field_names(cls: type[Message]) -> tuple[str, ...]:
    return _fields(cls)[0]


def _array_fields(cls: type[Message]) -> list[str]:
    """Fields sent as one raw frame each."""
    return _fields(cls)[1]


def _tensor_fields(cls: type[Message]) -> list[str]:
    """Fields of named tensors, sent as one raw frame per tensor."""
    return _fields(cls)[2]


# ``X | Y`` hints are types.UnionType from Python 3.10 on; the board worker runs on 3.9 too.
_UNION_TYPES = (typing.Union, getattr(types, "UnionType", typing.Union))

Checker = Callable[[Any, int], bool]  # (a decoded value, nesting depth) -> whether it fits
_SCALARS: dict[str, tuple[dict[str, Checker], frozenset[str], frozenset[str]]] = {}


def _scalar_fields(cls: type[Message]) -> tuple[dict[str, Checker], frozenset[str], frozenset[str]]:
    """Per message type, computed once: a checker per scalar field, the fields allowed, and those required."""
    if cls.kind not in _SCALARS:
        _SCALARS[cls.kind] = _describe(cls)
    return _SCALARS[cls.kind]


def _describe(cls: type[Message]) -> tuple[dict[str, Checker], frozenset[str], frozenset[str]]:
    arrays = set(_array_fields(cls)) | set(_tensor_fields(cls))
    allowed = frozenset(f.name for f in dataclasses.fields(cls)) - arrays
    required = frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.name in allowed and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    hints = typing.get_type_hints(cls)
    return {name: _checker(hints[name]) for name in allowed}, allowed, required


def encode(message: Message) -> list[Frame]:
    """Frames for ``message``: the header, then each array's buffer (not copied)."""
    scalars: dict[str, Any] = {}
    arrays: list[list[Any]] = []
    buffers: list[Frame] = []
    tensors = _tensor_fields(type(message))
    for name in _field_names(type(message)):
        value = getattr(message, name)
        if isinstance(value, np.ndarray):
            arrays.append([name, *_raw(value, buffers)])
        elif isinstance(value, dict) and name in tensors:
            arrays.extend([name, *_raw(tensor, buffers), key] for key, tensor in value.items())
        else:
            scalars[name] = value
    header = msgpack.packb({"v": PROTOCOL_VERSION, "k": message.kind, "f": scalars, "a": arrays}, use_bin_type=True)
    return [header, *buffers]


def _raw(value: np.ndarray, buffers: list[Frame]) -> tuple[str, list[int]]:
    """Append the array's bytes to ``buffers``; its dtype name and shape. The wire is little-endian."""
    if value.dtype.byteorder in _NOT_LITTLE or not value.flags.c_contiguous:
        value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
    buffers.append(value.reshape(-1).view(np.uint8).data)
    return _dtype_name(value.dtype), list(value.shape)


_NOT_LITTLE = (">", "=") if sys.byteorder == "big" else (">",)  # byte orders to swap before sending
_DTYPE_NAMES: dict[np.dtype[Any], str] = {}


def _dtype_name(dtype: np.dtype[Any]) -> str:
    # numpy computes ``dtype.name`` in Python each time: a tenth of encoding a small message.
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def encode_bundle(messages: Sequence[Message]) -> list[Frame]:
    """Several messages for one peer as one ZeroMQ message (one send, one receive): a ``bundle`` header
    with each message's frame count, then each message's frames. One message is sent as itself. Runs of
    stream frames or of one micro-batch's answers go packed (``packing``)."""
    messages = pack(messages)
    if len(messages) == 1:
        return encode(messages[0])
    parts = [encode(m) for m in messages]
    header = msgpack.packb(
        {"v": PROTOCOL_VERSION, "k": BUNDLE, "f": {"frames": [len(p) for p in parts]}, "a": []}, use_bin_type=True
    )
    return [header, *(frame for part in parts for frame in part)]


def decode_all(frames: Sequence[Frame]) -> list[Message | ProtocolError]:
    """The messages in ``frames``: the one message, or each message of a bundle in order. A malformed
    message is its ``ProtocolError`` in the list (the others stand); a malformed bundle is one."""
    try:
        header = _header(frames)
    except ProtocolError as exc:
        return [exc]
    if header["k"] != BUNDLE:
        try:
            return _unpacked(_message(header, frames))
        except ProtocolError as exc:
            return [exc]
    counts = header["f"].get("frames") if isinstance(header["f"], dict) else None
    if (
        not isinstance(counts, list)
        or not 0 < len(counts) <= MAX_BUNDLE
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts)
        or sum(counts) != len(frames) - 1
    ):
        return [
            ProtocolError(
                f"a bundle's header must list the frame count (≥ 1) of each of its 1..{MAX_BUNDLE} messages,"
                f" adding up to the {len(frames) - 1} frame(s) that follow it"
            )
        ]
    out: list[Message | ProtocolError] = []
    start = 1
    for count in counts:
        part = frames[start : start + count]
        start += count
        try:
            inner = _header(part)
            if inner["k"] == BUNDLE:
                raise ProtocolError("a bundle may not hold a bundle")
            out.extend(_unpacked(_message(inner, part)))
        except ProtocolError as exc:
            out.append(exc)
    return out


def _unpacked(message: Message) -> list[Message | ProtocolError]:
    try:
        return [*unpack(message)]
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def decode(frames: Sequence[Frame]) -> Message:
    """The message in ``frames``, or ``ProtocolError`` saying what was wrong."""
    header = _header(frames)
    if header["k"] in (BUNDLE, PackedFrames.kind, PackedFrameResults.kind):
        raise ProtocolError(f"a {header['k']} where one message was expected")
    return _message(header, frames)


def _header(frames: Sequence[Frame]) -> dict[str, Any]:
    if not frames:
        raise ProtocolError("empty message: expected a header frame")
    header_bytes = bytes(frames[0])
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header_bytes)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(header_bytes, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types (ExtraData, ValueError, ...)
        raise ProtocolError(f"header is not a single msgpack object: {type(exc).__name__}: {exc}") from None
    if not isinstance(header, dict) or set(header) != {"v", "k", "f", "a"}:
        raise ProtocolError("header must be a map with exactly the keys v, k, f, a")
    if header["v"] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header['v']!r} is not supported; this peer speaks {PROTOCOL_VERSION}")
    return header


def _message(header: dict[str, Any], frames: Sequence[Frame]) -> Message:
    cls = MESSAGE_TYPES.get(header["k"]) if isinstance(header["k"], str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {header['k']!r}; expected one of {', '.join(MESSAGE_TYPES)}")
    scalars, array_specs = header["f"], header["a"]
    if not isinstance(scalars, dict) or not isinstance(array_specs, list):
        raise ProtocolError("header fields 'f' must be a map and 'a' a list")
    values: dict[str, Any] = _arrays(cls, array_specs, frames)
    checkers, allowed, required = _scalar_fields(cls)
    if not set(scalars) <= allowed or not required <= set(scalars):
        raise ProtocolError(
            f"{cls.kind} fields must be {sorted(allowed)} (required {sorted(required)}); "
            f"got {sorted(map(str, scalars))}"
        )
    for name, value in scalars.items():
        if not checkers[name](value, 0):
            hint = typing.get_type_hints(cls)[name]
            raise ProtocolError(f"{cls.kind}.{name}: {type(value).__name__} does not fit {hint}")
        values[name] = value
    return cls(**values)


def _arrays(cls: type[Message], specs: list[Any], frames: Sequence[Frame]) -> dict[str, Any]:
    """The array fields: each plain one exactly once, in order; then any named tensors."""
    plain, named = _array_fields(cls), _tensor_fields(cls)
    if len(specs) > MAX_ARRAYS or len(frames) != 1 + len(specs) or len(specs) < len(plain):
        raise ProtocolError(
            f"{cls.kind} carries {len(plain)} array frame(s) and up to {MAX_ARRAYS - len(plain)} named tensors,"
            f" one frame per array header; got {len(frames) - 1} frame(s) and {len(specs)} array header(s)"
        )
    values: dict[str, Any] = {name: {} for name in named}
    for i, (spec, frame) in enumerate(zip(specs, frames[1:])):
        if i < len(plain):
            values[plain[i]] = _array(spec, frame, plain[i])
            continue
        if not (isinstance(spec, list) and len(spec) == 4 and spec[0] in values and isinstance(spec[3], str)):
            raise ProtocolError(f"{cls.kind}: a named tensor's header must be [field, dtype, shape, name] of {named}")
        tensors = values[spec[0]]
        if spec[3] in tensors:
            raise ProtocolError(f"{cls.kind}.{spec[0]}: tensor {spec[3]!r} sent twice")
        tensors[spec[3]] = _array(spec[:3], frame, spec[0])
    return values


def _array(spec: Any, frame: Frame, name: str) -> np.ndarray:
    if not (isinstance(spec, list) and len(spec) == 3 and spec[0] == name and isinstance(spec[1], str)):
        raise ProtocolError(f"array header for {name!r} must be [name, dtype, shape]")
    dtype_name, shape = spec[1], spec[2]
    if dtype_name not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"array {name!r}: dtype {dtype_name!r} is not allowed; expected one of {sorted(ALLOWED_DTYPES)}"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} non-negative ints")
    dtype = np.dtype(dtype_name)
    expected = math.prod(shape) * dtype.itemsize
    if expected > MAX_ARRAY_BYTES:
        raise ProtocolError(f"array {name!r}: {expected} bytes exceeds the limit of {MAX_ARRAY_BYTES}")
    buffer = memoryview(frame)
    if buffer.nbytes != expected:
        raise ProtocolError(f"array {name!r}: header promises {expected} bytes, frame holds {buffer.nbytes}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _checker(hint: Any) -> Checker:
    """A function that says whether a decoded msgpack value fits a field's type hint (the subset
    messages use); built once per field, so decoding does no type introspection."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return _plain_data
    if origin in _UNION_TYPES:
        options = [_checker(option) for option in typing.get_args(hint)]
        return lambda value, depth: any(fits(value, depth) for fits in options)
    if hint is type(None):
        return lambda value, depth: value is None
    if hint is float:
        return lambda value, depth: isinstance(value, (float, int)) and not isinstance(value, bool)
    if hint is int:
        return lambda value, depth: isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return lambda value, depth: isinstance(value, hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        fits_item = _checker(item)
        return lambda value, depth: (
            depth <= MAX_DEPTH and isinstance(value, list) and all(fits_item(v, depth + 1) for v in value)
        )
    if origin is dict:
        _, item = typing.get_args(hint)
        fits_value = _checker(item)
        return lambda value, depth: (
            depth <= MAX_DEPTH
            and isinstance(value, dict)
            and all(isinstance(k, str) and fits_value(v, depth + 1) for k, v in value.items())
        )
    return lambda value, depth: False


def _plain_data(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH:
        return False
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_plain_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v, depth + 1) for k, v in value.items())
    return False

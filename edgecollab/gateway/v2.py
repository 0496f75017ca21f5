"""The Open Inference Protocol (KServe v2, with Triton's extensions) mapped onto edgecollab. Pure: no I/O.

A v2 *model* is an edgecollab task and a *version* is one of its variants, pinned; with no version
the joint plan chooses per board. Both front doors (HTTP in ``http.py``, gRPC in ``grpc.py``) turn
what arrives into a ``V2Request``, and ``prepare`` checks it against the task's ``ModelInfo`` and
makes the ``InferCall`` the coordinator gets. ``respond`` turns the coordinator's answer into a
``V2Response``; documents (metadata, model configuration, statistics) are built here as the JSON
Triton serves, which is also the protobuf JSON form of the gRPC messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..worker.protocol.codec import MAX_ARRAY_BYTES

SERVER_NAME = "edgecollab"
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics", "parameters")

# v2 datatypes and numpy's; BYTES (strings) only ever leaves, as the classification extension's output.
NUMPY_OF = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPE_OF = {dtype.name: name for name, dtype in NUMPY_OF.items()}
OUTPUT_MODES = ("all", "predictions", "top5")
# ``priority`` 0 means the default level; 1 is the highest.
DEFAULT_PRIORITY = 5
MAX_PRIORITY = 2**32


class V2Error(Exception):
    """An answer other than success: the protocol's status (HTTP and gRPC) and edgecollab's message."""

    def __init__(self, http_status: int, grpc_code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code  # a grpc.StatusCode name
        self.message = message


def bad_request(message: str) -> V2Error:
    return V2Error(400, "INVALID_ARGUMENT", message)


def not_found(message: str) -> V2Error:
    return V2Error(404, "NOT_FOUND", message)


# edgecollab's error codes (``RequestFailed.code``) as the protocol's statuses.
_STATUS_OF_CODE = {
    "invalid_input": (400, "INVALID_ARGUMENT"),
    "unknown_variant": (400, "INVALID_ARGUMENT"),
    "infeasible": (422, "FAILED_PRECONDITION"),
    "busy": (503, "UNAVAILABLE"),
    "shutting_down": (503, "UNAVAILABLE"),
    "node_lost": (503, "UNAVAILABLE"),
    "request_lost": (503, "UNAVAILABLE"),
    "coordinator_unreachable": (503, "UNAVAILABLE"),
    "timeout": (504, "DEADLINE_EXCEEDED"),
}


def error_for_code(code: str, message: str) -> V2Error:
    http_status, grpc_code = _STATUS_OF_CODE.get(code, (500, "INTERNAL"))
    return V2Error(http_status, grpc_code, f"{code}: {message}")


# --- what the coordinator serves -------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # a v2 datatype
    shape: tuple[int, ...]  # the batch dimension first, -1 where open


@dataclass(frozen=True)
class ModelInfo:
    """A task as v2 clients see it, from the coordinator's ``models`` query."""

    name: str
    input: TensorInfo
    outputs: tuple[TensorInfo, ...]  # the model's own outputs
    top1: bool  # a classifier: ``predictions`` and ``top5`` outputs can be asked for too
    versions: dict[str, str]  # variant name -> the id a request pins, in the task's order
    accuracy: dict[str, float]  # variant name -> its measured quality
    loaded_on: dict[str, tuple[str, ...]]  # variant name -> ready boards that have it
    ready: bool
    stats: dict[str, int] = field(default_factory=dict)  # every request of the task
    version_stats: dict[str, dict[str, int]] = field(default_factory=dict)  # variant name -> what ran on it

    def version_named(self, version: str) -> str | None:
        """A version as a variant's name, or as its number (1 for the first variant: Triton's versions
        are numbers, and its tools pass them so); None when neither."""
        if version in self.versions:
            return version
        names = list(self.versions)
        return names[int(version) - 1] if version.isdigit() and 1 <= int(version) <= len(names) else None

    @property
    def max_batch_size(self) -> int:
        """The most inputs one request can carry: the coordinator's message size bounds it."""
        per_input = max(math.prod(self.input.shape[1:]), 1) * NUMPY_OF[self.input.datatype].itemsize
        return min(MAX_ARRAY_BYTES // per_input, 2**31 - 1)

    def version_ready(self, version: str) -> bool:
        return self.ready and bool(self.loaded_on.get(self.version_named(version) or ""))

    def outputs_for(self, mode: str) -> tuple[TensorInfo, ...]:
        """The outputs a request in ``mode`` gets back."""
        if mode == "predictions":
            return (TensorInfo("predictions", "INT64", (-1,)),)
        if mode == "top5":
            return TensorInfo("top5", "INT64", (-1, 5)), TensorInfo("top5_scores", "FP32", (-1, 5))
        return self.outputs


def catalogue(answer: Mapping[str, Any]) -> dict[str, ModelInfo]:
    """The coordinator's ``models`` answer as ``ModelInfo`` by task name."""
    models = {}
    for task in answer["tasks"]:
        variants = task["variants"]
        given = task["input"]
        models[task["name"]] = ModelInfo(
            task["name"],
            TensorInfo(given["name"], DATATYPE_OF[given["dtype"]], tuple(given["shape"])),
            tuple(TensorInfo(o["name"], DATATYPE_OF[o["dtype"]], tuple(o["shape"])) for o in task["outputs"]),
            task["quality"] == "top1",
            {v["name"]: v["id"] for v in variants},
            {v["name"]: float(v["accuracy"]) for v in variants},
            {v["name"]: tuple(v["nodes"]) for v in variants},
            bool(task["ready"]),
            {k: int(n) for k, n in task.get("stats", {}).items()},
            {v["name"]: {k: int(n) for k, n in v.get("stats", {}).items()} for v in variants},
        )
    return models


def find_model(models: Mapping[str, ModelInfo], name: str, version: str | None) -> ModelInfo:
    model = models.get(name)
    if model is None:
        served = ", ".join(sorted(models)) or "none yet"
        raise not_found(f"unknown model {name!r}; this cluster serves {served}")
    if version and model.version_named(version) is None:
        known = f"{', '.join(model.versions)}, or 1 to {len(model.versions)}"
        raise not_found(f"unknown version {version!r} of model {name!r}; its versions: {known}")
    return model


# --- requests ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview | None = None  # binary tensor data, or
    data: Any = None  # the JSON form: a flat or nested list


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's ``binary_data_output`` says
    classification: int = 0  # > 0: the top k classes as "score:index" strings (Triton's extension)


@dataclass(frozen=True)
class V2Request:
    model: str
    version: str  # "" when none is pinned
    id: str
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferCall:
    """A checked request, as the coordinator gets it (``Client.infer``) and the answer is shaped."""

    model: ModelInfo
    version: str
    id: str
    inputs: np.ndarray
    variant: str | None  # the pinned variant's id
    target_ips: float | None
    min_accuracy: float | None
    strict: bool
    policy: str | None
    mode: str  # what the coordinator sends back: one of OUTPUT_MODES
    outputs: tuple[RequestedOutput, ...]  # what the response carries, in order
    priority: int  # 1 highest
    timeout_s: float | None
    binary_default: bool

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Client.infer`` besides the inputs."""
        return {
            "target_ips": self.target_ips, "min_accuracy": self.min_accuracy, "strict": self.strict,
            "policy": self.policy, "outputs": self.mode, "task": self.model.name, "variant": self.variant,
        }  # fmt: skip


def _number(parameters: Mapping[str, Any], name: str, positive: bool = True) -> float | None:
    value = parameters.get(name)
    if value is None:
        return None
    if isinstance(value, str):  # a gRPC string_param, or a client that quotes numbers
        try:
            value = float(value)
        except ValueError:
            raise bad_request(f"parameter {name} must be a number; got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"parameter {name} must be a finite number; got {value!r}")
    if positive and value <= 0:
        raise bad_request(f"parameter {name} must be positive; got {value!r}")
    return float(value)


def _flag(parameters: Mapping[str, Any], name: str) -> bool | None:
    value = parameters.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise bad_request(f"parameter {name} must be true or false; got {value!r}")


def prepare(model: ModelInfo, request: V2Request, default_timeout_s: float) -> InferCall:
    """Check a request against its model and make the coordinator's call, or raise a 400 ``V2Error``
    that names what was wrong and what was expected."""
    expected = model.input
    if len(request.inputs) != 1 or request.inputs[0].name != expected.name:
        got = ", ".join(repr(t.name) for t in request.inputs) or "none"
        raise bad_request(f"model {model.name!r} takes one input, {expected.name!r}; got {got}")
    tensor = request.inputs[0]
    inputs = decode_input(tensor, expected)
    p = request.parameters
    mode = p.get("outputs", "all")
    modes = OUTPUT_MODES if model.top1 else ("all",)
    if mode not in modes:
        raise bad_request(f"parameter outputs must be one of {', '.join(modes)} for model {model.name!r}; got {mode!r}")
    available = {o.name: o for o in model.outputs_for(mode)}
    for wanted in request.outputs:
        if wanted.name not in available:
            raise bad_request(
                f"unknown output {wanted.name!r} of model {model.name!r}; its outputs: {', '.join(available)}"
            )
        if wanted.classification and (
            available[wanted.name].datatype not in ("FP16", "FP32", "FP64") or len(available[wanted.name].shape) != 2
        ):
            raise bad_request(f"output {wanted.name!r}: classification needs a (batch, classes) output of scores")
    outputs = request.outputs or tuple(RequestedOutput(name) for name in available)
    target_ips = _number(p, "target_ips")
    max_latency_ms = _number(p, "max_latency_ms")
    if max_latency_ms is not None:  # a request of N inputs answered within L is a rate of at least N / L
        target_ips = max(target_ips or 0.0, len(inputs) / (max_latency_ms / 1e3))
    priority = p.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority < MAX_PRIORITY:
        raise bad_request(f"parameter priority must be a whole number from 0 (the default level) up; got {priority!r}")
    timeout_us = _number(p, "timeout", positive=False)
    if timeout_us is not None and timeout_us < 0:
        raise bad_request(f"parameter timeout must be microseconds >= 0 (0: none); got {timeout_us!r}")
    policy = p.get("policy")
    if policy is not None and not isinstance(policy, str):
        raise bad_request(f"parameter policy must be a policy's name; got {policy!r}")
    return InferCall(
        model,
        request.version,
        request.id,
        inputs,
        model.versions[model.version_named(request.version) or ""] if request.version else None,
        target_ips,
        _number(p, "min_accuracy"),
        bool(_flag(p, "strict")),
        policy,
        mode,
        outputs,
        priority or DEFAULT_PRIORITY,
        timeout_us / 1e6 if timeout_us else default_timeout_s,
        bool(_flag(p, "binary_data_output")),
    )


def decode_input(tensor: InputTensor, expected: TensorInfo) -> np.ndarray:
    """The input as an array of the model's input shape and type, from binary or JSON data."""
    name = tensor.name
    if tensor.datatype != expected.datatype:
        raise bad_request(f"input {name!r}: expected datatype {expected.datatype}; got {tensor.datatype}")
    shape = tensor.shape
    wanted = ", ".join(["N", *map(str, expected.shape[1:])])
    if len(shape) != len(expected.shape) or list(shape[1:]) != list(expected.shape[1:]) or shape[0] < 1:
        raise bad_request(f"input {name!r}: expected shape [{wanted}] with N >= 1; got {list(shape)}")
    dtype = NUMPY_OF[expected.datatype]
    count = math.prod(shape)
    if tensor.raw is not None:
        if len(tensor.raw) != count * dtype.itemsize:
            raise bad_request(
                f"input {name!r}: shape {list(shape)} of {expected.datatype} needs {count * dtype.itemsize} bytes; "
                f"got {len(tensor.raw)}"
            )
        return np.frombuffer(tensor.raw, dtype).reshape(shape)
    if tensor.data is None:
        raise bad_request(f"input {name!r} has neither data nor binary data")
    try:
        values = np.asarray(tensor.data)
        if values.size != count or not (values.dtype.kind in "biuf" or values.size == 0):
            raise ValueError(f"{values.size} values of kind {values.dtype.kind!r}")
        cast = values.astype(dtype)
        if not np.array_equal(cast, values):  # 300 as UINT8, 1.5 as INT64: refused, not wrapped or cut
            raise ValueError(f"values outside {expected.datatype}")
    except (ValueError, TypeError, OverflowError) as exc:
        wanted_values = f"{count} {expected.datatype} values for shape {list(shape)}"
        raise bad_request(f"input {name!r}: data must hold {wanted_values}; {exc}") from None
    return cast.reshape(shape)


# --- answers -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray  # BYTES: an array of bytes objects
    binary: bool


@dataclass(frozen=True)
class V2Response:
    model: str
    version: str
    id: str
    outputs: tuple[OutputTensor, ...]
    parameters: dict[str, Any]


def respond(
    call: InferCall, outputs: Mapping[str, np.ndarray], predictions: np.ndarray, variants: Sequence[str],
    nodes: Sequence[str], report: Mapping[str, Any],
) -> V2Response:  # fmt: skip
    """The response to a call from the coordinator's answer; ``parameters`` carry per-input provenance
    (comma-separated, in input order: the variant and the board that answered each input)."""
    tensors = {"predictions": predictions, **outputs}
    answer = []
    for wanted in call.outputs:
        array = np.asarray(tensors[wanted.name])
        binary = call.binary_default if wanted.binary is None else wanted.binary
        if wanted.classification:
            classes = classify(array, wanted.classification)
            answer.append(OutputTensor(wanted.name, "BYTES", tuple(classes.shape), classes, binary))
            continue
        datatype = DATATYPE_OF.get(array.dtype.name)
        if datatype is None:
            array, datatype = array.astype(np.float32), "FP32"
        answer.append(OutputTensor(wanted.name, datatype, tuple(array.shape), array, binary))
    parameters = {
        "variants": ",".join(variants),
        "nodes": ",".join(nodes),
        "feasible": bool(report.get("feasible", True)),
        "achieved_ips": float(report.get("achieved_ips", 0.0)),
        "expected_accuracy": float(report.get("expected_accuracy", 0.0)),
    }
    return V2Response(call.model.name, call.version, call.id, tuple(answer), parameters)


def classify(scores: np.ndarray, k: int) -> np.ndarray:
    """Triton's classification extension: per input, its k highest scores as ``b"score:index"``."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(scores, top, 1)
    strings = [f"{v:f}:{i}".encode() for v, i in zip(values.ravel().tolist(), top.ravel().tolist(), strict=True)]
    return np.array(strings, dtype=object).reshape(len(scores), k)


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor's binary form: each element's length (4 bytes, little-endian) then its bytes."""
    parts = []
    for item in array.ravel().tolist():
        parts += [len(item).to_bytes(4, "little"), item]
    return b"".join(parts)


def tensor_bytes(tensor: OutputTensor) -> bytes:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.array)
    return np.ascontiguousarray(tensor.array).tobytes()


def json_data(tensor: OutputTensor) -> list[Any]:
    if tensor.datatype == "BYTES":
        return [item.decode() for item in tensor.array.ravel().tolist()]
    return list(tensor.array.ravel().tolist())


# --- HTTP bodies (the binary tensor extension) ---------------------------------------------------
def parse_http_body(body: bytes, header_length: int | None) -> tuple[dict[str, Any], memoryview]:
    """An infer request's JSON header and what follows it (the binary tensors, in input order)."""
    view = memoryview(body)
    if header_length is not None and not 0 < header_length <= len(body):
        limit = f"from 1 to the body's {len(body)} bytes"
        raise bad_request(f"Inference-Header-Content-Length must be {limit}; got {header_length}")
    size = len(body) if header_length is None else header_length
    try:
        document = json.loads(bytes(view[:size]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request's JSON header is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise bad_request("the request's JSON header must be an object with 'inputs'")
    return document, view[size:]


def request_from_json(model: str, version: str, document: Mapping[str, Any], binary: memoryview) -> V2Request:
    """A v2 request from its JSON header and binary tail."""
    inputs, offset = [], 0
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list):
        raise bad_request("the request needs 'inputs': a list of tensors")
    for given in raw_inputs:
        if not isinstance(given, dict):
            raise bad_request(f"every input must be an object with name, shape, datatype; got {given!r}"[:300])
        name, shape, datatype = given.get("name"), given.get("shape"), given.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str) or not _dims(shape):
            got = f"name={name!r} datatype={datatype!r} shape={shape!r}"[:300]
            raise bad_request(f"an input needs a name, a datatype and a shape of whole numbers; got {got}")
        size = _parameters(given).get("binary_data_size")
        raw = None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                left = len(binary) - offset
                raise bad_request(
                    f"input {name!r}: binary_data_size {size!r} does not fit the {left} bytes left in the body"
                )
            raw, offset = binary[offset : offset + size], offset + size
        inputs.append(InputTensor(name, datatype, tuple(shape or ()), raw, given.get("data")))
    if offset != len(binary):
        raise bad_request(f"the body has {len(binary) - offset} bytes after the inputs' binary data")
    outputs = []
    for given in document.get("outputs") or []:
        if not isinstance(given, dict) or not isinstance(given.get("name"), str):
            raise bad_request(f"every requested output must be an object with a name; got {given!r}"[:300])
        p = _parameters(given)
        binary_flag, classes = p.get("binary_data"), p.get("classification", 0)
        if binary_flag is not None and not isinstance(binary_flag, bool):
            raise bad_request(f"output {given['name']!r}: binary_data must be true or false; got {binary_flag!r}")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
            raise bad_request(f"output {given['name']!r}: classification must be a whole number >= 0; got {classes!r}")
        outputs.append(RequestedOutput(given["name"], binary_flag, classes))
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise bad_request(f"id must be a string; got {request_id!r}")
    return V2Request(model, version, request_id, tuple(inputs), tuple(outputs), _parameters(document))


def _dims(shape: Any) -> bool:
    return isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


def _parameters(holder: Mapping[str, Any]) -> dict[str, Any]:
    parameters = holder.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad_request(f"parameters must be an object; got {parameters!r}"[:300])
    return parameters


def http_body(response: V2Response) -> tuple[bytes, int | None]:
    """The response body and, when tensors follow the JSON in binary, the JSON's length (its header)."""
    outputs, tail = [], []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.binary:
            data = tensor_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
        else:
            entry["data"] = json_data(tensor)
        outputs.append(entry)
    document = {
        "model_name": response.model, "model_version": response.version, "outputs": outputs,
        "parameters": response.parameters, **({"id": response.id} if response.id else {}),
    }  # fmt: skip
    header = json.dumps(document, separators=(",", ":")).encode()
    return (b"".join([header, *tail]), len(header)) if tail else (header, None)


# --- documents -----------------------------------------------------------------------------------
def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def _tensor_metadata(tensor: TensorInfo) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def model_metadata(model: ModelInfo, version: str = "") -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [version] if version else list(model.versions),
        "platform": SERVER_NAME,
        "inputs": [_tensor_metadata(model.input)],
        "outputs": [_tensor_metadata(o) for o in model.outputs],
    }


def _config_dtype(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def model_config(model: ModelInfo) -> dict[str, Any]:
    """Triton's model configuration: dims leave out the batch dimension (``max_batch_size`` > 0)."""

    def entry(tensor: TensorInfo) -> dict[str, Any]:
        return {"name": tensor.name, "data_type": _config_dtype(tensor.datatype), "dims": list(tensor.shape[1:])}

    return {
        "name": model.name,
        "platform": SERVER_NAME,
        "backend": SERVER_NAME,
        "max_batch_size": model.max_batch_size,
        "input": [entry(model.input)],
        "output": [entry(o) for o in model.outputs],
        "parameters": {
            f"accuracy:{name}": {"string_value": f"{accuracy:.4f}"} for name, accuracy in model.accuracy.items()
        },
    }


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def model_statistics(model: ModelInfo, version: str, last_inference_ms: int) -> list[dict[str, Any]]:
    """Triton's statistics extension for a model, from the coordinator's counters. A version (a name or a
    number) gets what ran on that variant. With none, the entry is the task's as a whole, under version
    "0" (no variant pinned: the joint plan's choice). Triton's own versions start at 1, and a tool that
    asks for no version takes the entry with the highest number, which parses: perf_analyzer does."""
    if not version:
        return [_statistics(model.name, "0", model.stats, last_inference_ms)]
    name = model.version_named(version) or version
    return [_statistics(model.name, version, model.version_stats.get(name, {}), last_inference_ms)]


def _statistics(model: str, version: str, s: Mapping[str, int], last_inference_ms: int) -> dict[str, Any]:
    success, fail = s.get("success", 0), s.get("fail", 0)
    executions = s.get("executions", 0)
    return {
        "name": model,
        "version": version,
        "last_inference": last_inference_ms,
        "inference_count": s.get("inputs", 0),
        "execution_count": executions,
        "inference_stats": {
            "success": _duration(success, s.get("success_ns", 0)),
            "fail": _duration(fail, s.get("fail_ns", 0)),
            "queue": _duration(success, s.get("queue_ns", 0)),
            "compute_input": _duration(executions, 0),
            "compute_infer": _duration(executions, s.get("compute_ns", 0)),
            "compute_output": _duration(executions, 0),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [],
    }

"""Checks on every value a client sends, before anything acts on it. Pure: no I/O.

Each check returns ``None`` or one sentence that names the field, what it got and what was
expected; the coordinator answers it as an ``invalid_input`` error and carries on.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from ..planner import POLICIES
from ..protocol import BACKPRESSURE_POLICIES, OUTPUT_MODES, Frames, StreamOpen, Submit
from .events import ServedTask

# Rates above this are not a target any cluster of boards could mean; they are refused, not planned.
MAX_TARGET_IPS = 1e7
# A ``plan`` query may ask about at most this many inputs (a request is bounded by the message size).
MAX_PLAN_INPUTS = 10**9
MAX_REQUEST_ID_CHARS = 128
# A stream's latency bound may be at most this (ms); a stream sends at most this many frames per message.
MAX_LATENCY_MS = 60_000
MAX_FRAMES_PER_MESSAGE = 4096
PLAN_PARAMS = ("inputs", "target_ips", "min_accuracy", "policy", "task")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_target_ips(value: Any, field: str = "target_ips") -> str | None:
    expected = f"a positive finite number of inferences per second up to {MAX_TARGET_IPS:g}, or none"
    if value is None:
        return None
    if not _number(value) or not math.isfinite(value) or not 0 < value <= MAX_TARGET_IPS:
        return f"{field} must be {expected}; got {value!r}"
    return None


def check_min_accuracy(value: Any, field: str = "min_accuracy") -> str | None:
    if value is None:
        return None
    if not _number(value) or not math.isfinite(value) or not 0 < value <= 1:
        return f"{field} must be a fraction in (0, 1], or none; got {value!r}"
    return None


def check_policy(value: Any, field: str = "policy") -> str | None:
    if value is None or (isinstance(value, str) and value in POLICIES):
        return None
    return f"{field} must be one of {', '.join(POLICIES)}, or none; got {value!r}"


def check_submit(submit: Submit, input_shape: tuple[int, ...], input_dtype: np.dtype[Any]) -> str | None:
    """Why a request is invalid, or None."""
    problem = check_id(submit.request_id, "request_id")
    if problem is not None:
        return problem
    x = submit.inputs
    fits = x.dtype == input_dtype and x.ndim == 1 + len(input_shape) and x.shape[1:] == input_shape
    if not fits or len(x) == 0:  # the message only when it is needed: this runs per request
        expected = f"{input_dtype} inputs of shape (N, {', '.join(map(str, input_shape))}) with N >= 1"
        got = f"{x.dtype} of shape {tuple(x.shape)}" if not fits else "no inputs"
        return f"inputs: expected {expected}; got {got}"
    return check_target_ips(submit.target_ips) or check_min_accuracy(submit.min_accuracy) or check_policy(submit.policy)


def check_variant(value: Any, task: str, known: Collection[str]) -> str | None:
    """A pinned variant must be one of the task's."""
    if value is None or (isinstance(value, str) and value in known):
        return None
    return f"variant must be one of {', '.join(sorted(known))} (the variants of task {task!r}), or none; got {value!r}"


def check_id(value: str, field: str) -> str | None:
    # ':' is kept for the coordinator's own shards (profiling, micro-batches of frames).
    if not value or len(value) > MAX_REQUEST_ID_CHARS or ":" in value:
        shown = value[:MAX_REQUEST_ID_CHARS]
        return f"{field} must be 1 to {MAX_REQUEST_ID_CHARS} characters without ':'; got {shown!r}"
    return None


def check_stream_open(spec: StreamOpen) -> str | None:
    """Why a stream cannot be opened as asked, or None."""
    latency = spec.max_latency_ms
    if latency is not None and not (_number(latency) and math.isfinite(latency) and 0 < latency <= MAX_LATENCY_MS):
        return f"max_latency_ms must be a positive number of ms up to {MAX_LATENCY_MS}, or none; got {latency!r}"
    if spec.backpressure not in BACKPRESSURE_POLICIES:
        return f"backpressure must be one of {', '.join(BACKPRESSURE_POLICIES)}; got {spec.backpressure!r}"
    if spec.target_fps is None:
        return "target_fps must be a positive finite number of frames per second; got None"
    return (
        check_id(spec.stream_id, "stream_id")
        or check_target_ips(spec.target_fps, "target_fps")
        or check_min_accuracy(spec.min_accuracy)
    )


def check_frames(frames: Frames, next_seq: int, input_shape: tuple[int, ...], input_dtype: np.dtype[Any]) -> str | None:
    """Why frames cannot be queued on their stream, or None."""
    x = frames.inputs
    fits = x.dtype == input_dtype and x.ndim == 1 + len(input_shape) and x.shape[1:] == input_shape
    if not fits or not 1 <= len(x) <= MAX_FRAMES_PER_MESSAGE:  # the message only when it is needed: per frame
        shape = ", ".join(map(str, input_shape))
        expected = f"{input_dtype} frames of shape (N, {shape}) with 1 <= N <= {MAX_FRAMES_PER_MESSAGE}"
        got = f"{x.dtype} of shape {tuple(x.shape)}" if not fits else f"{len(x)} frames"
        return f"inputs: expected {expected}; got {got}"
    if frames.first_seq != next_seq:
        return f"first_seq must be {next_seq} (the frame after the last one sent); got {frames.first_seq}"
    return None


def check_plan_params(params: Mapping[str, Any]) -> str | None:
    """Why a ``plan`` query's parameters are invalid, or None."""
    unknown = sorted(set(params) - set(PLAN_PARAMS))
    if unknown:
        return f"unknown plan parameter(s) {', '.join(map(repr, unknown))}; expected {', '.join(PLAN_PARAMS)}"
    inputs = params.get("inputs")
    if not isinstance(inputs, int) or isinstance(inputs, bool) or not 1 <= inputs <= MAX_PLAN_INPUTS:
        return f"inputs must be a whole number from 1 to {MAX_PLAN_INPUTS:,}; got {inputs!r}"
    return (
        check_target_ips(params.get("target_ips"))
        or check_min_accuracy(params.get("min_accuracy"))
        or check_policy(params.get("policy"))
        or (
            None
            if params.get("task") is None or isinstance(params.get("task"), str)
            else f"task must be a task's name, or none; got {params.get('task')!r}"
        )
    )


def outputs_mode(task: ServedTask | None, asked: str | None) -> tuple[str, str | None]:
    """What a request's or stream's answers carry (none asked: predictions for a top1 task, else all
    outputs), or why it cannot have what it asked for."""
    top1 = task is None or task.quality == "top1"
    mode = asked or ("predictions" if top1 else "all")
    if task is not None and (mode not in OUTPUT_MODES or (mode != "all" and not top1)):
        modes = OUTPUT_MODES if top1 else ("all",)
        return mode, f"outputs must be one of {', '.join(modes)} for task {task.name!r}, or none; got {mode!r}"
    return mode, None

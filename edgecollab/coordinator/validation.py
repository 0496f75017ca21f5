"""Checks on every value a client sends, before anything acts on it. Pure: no I/O.

Each check returns ``None`` or one sentence that names the field, what it got and what was
expected; the coordinator answers it as an ``invalid_input`` error and carries on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..planner import POLICIES
from ..protocol import Submit

# Rates above this are not a target any cluster of boards could mean; they are refused, not planned.
MAX_TARGET_IPS = 1e7
# A ``plan`` query may ask about at most this many inputs (a request is bounded by the message size).
MAX_PLAN_INPUTS = 10**9
MAX_REQUEST_ID_CHARS = 128
PLAN_PARAMS = ("inputs", "target_ips", "min_accuracy", "policy")


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
    rid = submit.request_id
    if not rid or len(rid) > MAX_REQUEST_ID_CHARS:
        return f"request_id must be 1 to {MAX_REQUEST_ID_CHARS} characters; got {len(rid)}"
    expected = f"{input_dtype} inputs of shape (N, {', '.join(map(str, input_shape))}) with N >= 1"
    x = submit.inputs
    if x.dtype != input_dtype or x.ndim != 1 + len(input_shape) or tuple(x.shape[1:]) != input_shape:
        return f"inputs: expected {expected}; got {x.dtype} of shape {tuple(x.shape)}"
    if len(x) == 0:
        return f"inputs: expected {expected}; got no inputs"
    return check_target_ips(submit.target_ips) or check_min_accuracy(submit.min_accuracy) or check_policy(submit.policy)


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
    )

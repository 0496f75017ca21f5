"""ONNX Runtime sessions for manifest variants: opening, checking, scoring, timing."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import ModelError
from .dataset import load_labelled_set
from .manifest import Manifest, TaskSpec, Variant, sha256_of
from .scoring import DETECTION_OUTPUTS, TestSet, load_npz_set, score_session

log = logging.getLogger(__name__)

# ONNX Runtime's tensor types as numpy dtype names.
ORT_DTYPES = {
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(double)": "float64",
    "tensor(bool)": "bool",
}


def select_providers(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split requested execution providers into (available, in order) and missing.

    CPU is always appended as the last resort, so a session can always be made.
    """
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen, missing


def open_session(
    path: Path, task: TaskSpec, *, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 1
) -> ort.InferenceSession:
    """Open a model and check its single input and output against the task's spec."""
    chosen, missing = select_providers(providers)
    if missing:
        log.warning("execution provider(s) %s not available here; using %s", ", ".join(missing), ", ".join(chosen))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # ORT raises its own exception types for unreadable graphs
        raise ModelError(f"cannot load model {path}: {exc}") from exc
    check_session_spec(session, task, path)
    return session


def check_session_spec(session: ort.InferenceSession, task: TaskSpec, path: Path) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = f"one {task.input_dtype} input of shape (N, {', '.join(map(str, task.input_shape))})"
    if len(inputs) != 1:
        raise ModelError(f"{path}: model has {len(inputs)} inputs; task {task.name!r} expects {expected}")
    model_input = inputs[0]
    dtype = ORT_DTYPES.get(model_input.type, model_input.type)
    shape = list(model_input.shape)
    dynamic_batch = bool(shape) and not isinstance(shape[0], int)
    if dtype != task.input_dtype or not dynamic_batch or tuple(shape[1:]) != task.input_shape:
        raise ModelError(
            f"{path}: input {model_input.name!r} is {dtype} of shape {tuple(shape)}; "
            f"task {task.name!r} expects {expected} with a dynamic batch dimension N"
        )
    got = ", ".join(f"{o.name} {tuple(o.shape)}" for o in outputs)
    if task.quality == "top1" and task.classes is not None and list(outputs[0].shape[1:]) != [task.classes]:
        raise ModelError(
            f"{path}: outputs are [{got}]; task {task.name!r} is scored top1 and expects its first output"
            f" of shape (N, {task.classes})"
        )
    if task.quality == "map50" and sorted(o.name for o in outputs) != sorted(DETECTION_OUTPUTS):
        raise ModelError(
            f"{path}: outputs are [{got}]; task {task.name!r} is scored map50 and expects outputs"
            f" {', '.join(DETECTION_OUTPUTS)}"
        )


def predict(session: ort.InferenceSession, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    """Predicted class of every input (argmax of the first output), run in batches of ``batch``."""
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: inputs[i : i + batch]})[0].argmax(axis=1) for i in range(0, len(inputs), batch)]
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def measure_throughput(
    session: ort.InferenceSession, sample: np.ndarray, batch: int, min_seconds: float = 0.5
) -> float:
    """Inputs per second at a fixed batch size, timed over at least ``min_seconds``."""
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(np.resize(sample, (batch, *sample.shape[1:])))
    session.run(None, {name: x})  # warm-up: first run allocates
    runs, start = 0, time.perf_counter()
    while True:
        session.run(None, {name: x})
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and runs >= 3:
            return runs * batch / elapsed


def load_test_set(manifest: Manifest, task: TaskSpec) -> TestSet:
    """The task's test set: an IDX pair, or an ``.npz`` (the only form a detection set takes)."""
    if task.test_set is not None:
        return load_npz_set(manifest.resolve(task.test_set), task)
    if task.test_images is None or task.test_labels is None:
        raise ModelError(f"task {task.name!r} has no test set in {manifest.path}")
    images, labels = manifest.resolve(task.test_images), manifest.resolve(task.test_labels)
    return load_labelled_set(images, labels, task.input_shape, task.test_upscale)


@dataclass(frozen=True)
class VariantCheck:
    """What ``edgecollab models verify`` reports for one variant."""

    name: str
    accuracy_manifest: float
    accuracy_measured: float | None  # None: stated with its source, not measurable here
    sha256_ok: bool
    ips_b1: float
    ips_b32: float
    quality_source: str | None = None

    @property
    def accuracy_ok(self) -> bool:
        if self.accuracy_measured is None:
            return self.quality_source is not None
        return abs(self.accuracy_measured - self.accuracy_manifest) <= ACCURACY_TOLERANCE


# Re-scoring may differ from the manifest by at most 0.2 percentage points.
ACCURACY_TOLERANCE = 0.002


def verify_variant(
    manifest: Manifest, variant: Variant, test_set: TestSet | None, *, timing_seconds: float = 0.5
) -> VariantCheck:
    """Re-score a variant on its task's test set (None: its quality is stated) and time it."""
    path = manifest.resolve(variant.file)
    task = manifest.task_of(variant)
    session = open_session(path, task, threads=1)
    stated = test_set is None or variant.quality_source is not None
    accuracy = None if stated or test_set is None else score_session(session, task, test_set)
    if test_set is not None:
        sample = test_set.inputs[:32]
    else:  # timing only: random inputs of the task's shape
        shape = (32, *task.input_shape)
        sample = np.random.default_rng(0).integers(0, 256, shape).astype(task.input_dtype)
    return VariantCheck(
        name=manifest.id_of(variant),
        accuracy_manifest=variant.accuracy,
        accuracy_measured=accuracy,
        sha256_ok=sha256_of(path) == variant.sha256,
        ips_b1=measure_throughput(session, sample[:1], 1, timing_seconds),
        ips_b32=measure_throughput(session, sample, 32, timing_seconds),
        quality_source=variant.quality_source,
    )

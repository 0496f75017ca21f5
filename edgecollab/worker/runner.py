"""Runs shards on a board's loaded variants, with board emulation. No sockets here."""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Backend, Session
from .emulation import BOARD_PROFILES, BoardProfile
from .errors import EdgecollabError
from .protocol import OUTPUT_MODES
from .settings import NodeSettings, VariantSpec

log = logging.getLogger(__name__)

WARMUP_BATCHES = (1, 8)  # first runs allocate; a TensorRT engine is built per shape profile


class ShardRejected(EdgecollabError):
    """A shard cannot be run on this node; ``code`` is the protocol error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ShardOutcome:
    predictions: np.ndarray  # class per input (argmax of the first output; -1 for a task not scored top1)
    outputs: dict[str, np.ndarray]  # what the shard asked for, by name
    board_seconds: float  # how long the (emulated) board would take
    host_bound: bool = False  # emulated: the host's compute took longer than the board would have


@dataclass
class LoadedVariant:
    spec: VariantSpec
    session: Session


class ShardRunner:
    """The node's loaded, warmed-up variants and, when emulating, the board's cost model.

    ``files`` gives each variant's model file (from the cache); a variant that will not load or run
    is left out and named in ``failed`` with the reason, so the coordinator never plans on it.
    """

    def __init__(
        self, node: str, settings: NodeSettings, files: dict[str, Path], backend: Backend, engine_dir: Path
    ) -> None:
        self.name = node
        self.settings = settings
        self.backend = backend
        if settings.emulate is not None and settings.emulate not in BOARD_PROFILES:
            raise EdgecollabError(
                f"unknown board profile {settings.emulate!r}; expected one of {', '.join(BOARD_PROFILES)}"
            )
        self.board: BoardProfile | None = BOARD_PROFILES[settings.emulate] if settings.emulate else None
        self.speed = 1.0  # emulated speed factor; scheduled events change it
        # Cleared by the emulated ``stall``: inference waits (as on a stuck accelerator) while the loop runs.
        self._inference_free = threading.Event()
        self._inference_free.set()
        self.garbled = False  # emulated ``garble``: results come back malformed, as from failing memory
        self._closing = False
        self.variants: dict[str, LoadedVariant] = {}
        # Emulated only, for fleets larger than the host's cores can compute for: variant -> the cheapest
        # loaded variant of its task, which computes its outputs while the cost model alone sets the time.
        self.stand_ins: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.warnings: list[str] = []
        self.providers: list[str] = []
        started = time.perf_counter()
        for spec in settings.variants:
            try:
                self.variants[spec.id] = self._load(spec, files[spec.id], engine_dir)
            except Exception as exc:  # a runtime raises its own types for graphs it cannot run
                self.failed[spec.id] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                log.warning("node %s: variant %s left out: %s", node, spec.id, self.failed[spec.id])
        self.warmup_s = time.perf_counter() - started
        for warning in self.warnings:
            log.warning("node %s: %s", node, warning)

    def _load(self, spec: VariantSpec, path: Path, engine_dir: Path) -> LoadedVariant:
        s = self.settings
        session, warnings = self.backend.open(
            path, s.providers, s.threads, engine_dir if s.engine_cache else None, s.fp16
        )
        for warning in warnings:
            if warning not in self.warnings:
                self.warnings.append(warning)
        if not self.providers:
            self.providers = session.providers
        loaded = LoadedVariant(spec, session)
        for batch in WARMUP_BATCHES:  # warm-up, and the proof that this runtime runs the graph
            values = session.run(np.zeros((batch, *spec.input_shape), dtype=spec.input_dtype))
            if spec.top1 and (not values or values[0].ndim != 2 or len(values[0]) != batch):
                shapes = ", ".join(str(v.shape) for v in values)
                raise EdgecollabError(f"first output for a batch of {batch} is {shapes}; expected ({batch}, classes)")
        return loaded

    def use_stand_ins(self) -> None:
        """Compute every shard with the cheapest loaded variant of its task; the board's cost model for the
        variant asked for still sets how long it takes (emulated boards only: a real board computes)."""
        if self.board is None:
            raise EdgecollabError(f"node {self.name}: stand-in variants are for emulated boards only")
        for name, loaded in self.variants.items():
            same_task = [v for v in self.variants.values() if v.spec.task == loaded.spec.task]
            self.stand_ins[name] = min(same_task, key=lambda v: v.spec.macs).spec.id

    def stall(self) -> None:
        """Emulate inference that never returns (the event loop, and so heartbeats, go on)."""
        self._inference_free.clear()

    def toggle_stall(self) -> bool:
        """Stall, or end a stall (stuck inferences then finish); whether inference is now stalled."""
        if self._inference_free.is_set():
            self._inference_free.clear()
            return True
        self._inference_free.set()
        return False

    def close(self) -> None:
        """Let a stalled inference thread end, so the process can exit."""
        self._closing = True

    def fingerprint(self) -> str:
        """Changes whenever measurements of this node could: hardware, runtime, settings, or model files."""
        s = self.settings
        parts = [
            self.name,
            str(s.emulate),
            ",".join(self.providers),
            str(s.threads),
            str(s.fp16),
            platform.machine(),
            platform.processor(),
            f"{self.backend.name} {self.backend.version}",
            *sorted(f"{name}={v.spec.sha256}" for name, v in self.variants.items()),
            *sorted(f"{name} computed by {other}" for name, other in self.stand_ins.items()),
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def check(self, variant: str, inputs: np.ndarray) -> LoadedVariant:
        loaded = self.variants.get(variant)
        if loaded is None:
            raise ShardRejected(
                "unknown_variant", f"node {self.name} has no variant {variant!r}; it has {', '.join(self.variants)}"
            )
        spec = loaded.spec
        if inputs.dtype != np.dtype(spec.input_dtype) or tuple(inputs.shape[1:]) != spec.input_shape:
            expected = f"{spec.input_dtype} of shape (N, {', '.join(map(str, spec.input_shape))})"
            raise ShardRejected(
                "invalid_input",
                f"variant {variant!r} expects {expected}; got {inputs.dtype} of shape {tuple(inputs.shape)}",
            )
        return loaded

    def run(self, variant: str, inputs: np.ndarray, outputs: str = "predictions") -> ShardOutcome:
        """Run a shard; what comes back follows ``outputs`` (see OUTPUT_MODES). Runs in a worker thread."""
        loaded = self.check(variant, inputs)
        while not self._inference_free.wait(0.1):  # stalled: hangs here until the worker stops
            if self._closing:
                raise ShardRejected("internal", f"node {self.name} stopped while its inference was stuck")
        if outputs not in OUTPUT_MODES or (outputs == "top5" and not loaded.spec.top1):
            raise ShardRejected("invalid_input", f"outputs {outputs!r} cannot be given by variant {variant!r}")
        computing = self.variants[self.stand_ins[variant]] if variant in self.stand_ins else loaded
        started = time.perf_counter()
        values = computing.session.run(inputs)
        if loaded.spec.top1:
            predictions = values[0].argmax(axis=1).astype(np.int64)
        else:
            predictions = np.full(len(inputs), -1, np.int64)
        chosen: dict[str, np.ndarray] = {}
        if outputs == "all":
            chosen = dict(zip(computing.session.output_names, values))
        elif outputs == "top5":
            chosen = _top5(values[0])
        real = time.perf_counter() - started
        if self.garbled:
            predictions = predictions[:-1]
            chosen = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in chosen.items()}
        if self.board is None:
            return ShardOutcome(predictions, chosen, real)
        spec = loaded.spec
        emulated = self.board.seconds(len(inputs), spec.macs, spec.quantized)
        if real > emulated:
            log.debug(
                "node %s: host took %.1f ms, longer than the emulated %.1f ms", self.name, real * 1e3, emulated * 1e3
            )
        return ShardOutcome(predictions, chosen, max(real, emulated) / self.speed, real > emulated)


def _top5(scores: np.ndarray) -> dict[str, np.ndarray]:
    """The five likeliest classes per input, likeliest first, and their softmax probabilities."""
    k = min(5, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return {"top5": top.astype(np.int64), "top5_scores": np.take_along_axis(probabilities, top, 1).astype(np.float32)}

"""Runs shards on ONNX Runtime sessions, with board emulation. No sockets here."""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ..config import ClusterConfig, NodeConfig
from ..errors import EdgecollabError
from ..protocol import OUTPUT_MODES
from ..zoo import Manifest, Variant, load_manifest, open_session, select_providers
from .emulation import BOARD_PROFILES, BoardProfile

log = logging.getLogger(__name__)


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


@dataclass
class LoadedVariant:
    variant: Variant
    session: ort.InferenceSession
    input_name: str
    input_shape: tuple[int, ...]  # one input, without the batch dimension
    input_dtype: np.dtype
    top1: bool  # scored by the argmax of its first output


class ShardRunner:
    """The node's loaded variants and, when emulating, the board's cost model."""

    def __init__(self, config: ClusterConfig, node: NodeConfig) -> None:
        self.node = node
        self.manifest: Manifest = load_manifest(config.manifest_path)
        tasks = self.manifest.served(config.models.served)
        served = {t.name for t in tasks}
        names = node.variants or tuple(self.manifest.id_of(v) for t in tasks for v in self.manifest.for_task(t.name))
        foreign = [n for n in names if self.manifest.variant(n).task not in served]
        if foreign:
            raise EdgecollabError(
                f"node {node.name}: variant(s) {', '.join(foreign)} are of tasks the cluster does not serve"
                f" ({', '.join(served)}); add their task to [models] tasks"
            )
        self.providers, missing = select_providers(node.providers)
        if missing:
            log.warning("node %s: provider(s) %s not available; falling back to %s", node.name, missing, self.providers)
        self.board: BoardProfile | None = BOARD_PROFILES[node.emulate] if node.emulate else None
        self.speed = 1.0  # emulated speed factor; scheduled events change it
        # Cleared by the emulated ``stall``: inference waits (as on a stuck accelerator) while the loop runs.
        self._inference_free = threading.Event()
        self._inference_free.set()
        self.garbled = False  # emulated ``garble``: results come back malformed, as from failing memory
        self._closing = False
        self.variants: dict[str, LoadedVariant] = {}
        for name in names:
            variant = self.manifest.variant(name)
            task = self.manifest.task_of(variant)
            session = open_session(
                self.manifest.resolve(variant.file), task, providers=self.providers, threads=node.threads
            )
            spec = session.get_inputs()[0]
            self.variants[self.manifest.id_of(variant)] = LoadedVariant(
                variant, session, spec.name, task.input_shape, np.dtype(task.input_dtype), task.quality == "top1"
            )

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
        """Changes whenever measurements of this node could: hardware, settings, or model files."""
        parts = [
            self.node.name,
            str(self.node.emulate),
            ",".join(self.providers),
            str(self.node.threads),
            platform.machine(),
            platform.processor(),
            *sorted(f"{name}={v.variant.sha256}" for name, v in self.variants.items()),
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def check(self, variant: str, inputs: np.ndarray) -> LoadedVariant:
        loaded = self.variants.get(variant)
        if loaded is None:
            raise ShardRejected(
                "unknown_variant",
                f"node {self.node.name} has no variant {variant!r}; it has {', '.join(self.variants)}",
            )
        if (
            inputs.dtype != loaded.input_dtype
            or inputs.ndim != 1 + len(loaded.input_shape)
            or (tuple(inputs.shape[1:]) != loaded.input_shape)
        ):
            expected = f"{loaded.input_dtype} of shape (N, {', '.join(map(str, loaded.input_shape))})"
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
                raise ShardRejected("internal", f"node {self.node.name} stopped while its inference was stuck")
        if outputs not in OUTPUT_MODES or (outputs == "top5" and not loaded.top1):
            raise ShardRejected("invalid_input", f"outputs {outputs!r} cannot be given by variant {variant!r}")
        started = time.perf_counter()
        values = loaded.session.run(None, {loaded.input_name: inputs})
        if loaded.top1:
            predictions = np.asarray(values[0]).argmax(axis=1).astype(np.int64)
        else:
            predictions = np.full(len(inputs), -1, np.int64)
        chosen: dict[str, np.ndarray] = {}
        if outputs == "all":
            chosen = {o.name: np.asarray(v) for o, v in zip(loaded.session.get_outputs(), values, strict=True)}
        elif outputs == "top5":
            chosen = _top5(np.asarray(values[0]))
        real = time.perf_counter() - started
        if self.garbled:
            predictions = predictions[:-1]
            chosen = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in chosen.items()}
        if self.board is None:
            return ShardOutcome(predictions, chosen, real)
        emulated = self.board.seconds(len(inputs), loaded.variant.macs, loaded.variant.quantized)
        if real > emulated:
            log.debug(
                "node %s: host took %.1f ms, longer than the emulated %.1f ms",
                self.node.name,
                real * 1e3,
                emulated * 1e3,
            )
        return ShardOutcome(predictions, chosen, max(real, emulated) / self.speed)


def _top5(scores: np.ndarray) -> dict[str, np.ndarray]:
    """The five likeliest classes per input, likeliest first, and their softmax probabilities."""
    k = min(5, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return {"top5": top.astype(np.int64), "top5_scores": np.take_along_axis(probabilities, top, 1).astype(np.float32)}

"""Simulated cameras: K sources sending test-set frames at F fps each, as ``edgecollab stream`` runs them.

Each source opens its own stream, paces its frames on the clock (a late frame is sent at once,
never skipped), and reads its answers as they come. What it measured — frames, answers, drops,
latency percentiles, accuracy against the labels, variants — is kept per source and in total.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .client import Client, Stream
from .security import ClientCurve
from .zoo.scoring import DetectionSet, TestSet, mean_average_precision


@dataclass
class SourceTally:
    source: int
    frames: int = 0  # frames sent
    results: int = 0  # frames answered with a prediction
    dropped: int = 0  # frames answered as dropped
    correct: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    variants: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    admission: dict[str, Any] = field(default_factory=dict)
    # A detection stream's answers, for its mAP once it ends: (test-set index, the frame's outputs).
    detections: list[tuple[int, dict[str, np.ndarray]]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        elapsed = (self.finished or time.monotonic()) - self.started
        return {
            "source": self.source,
            "frames": self.frames,
            "results": self.results,
            "dropped": self.dropped,
            "fps": self.results / elapsed if elapsed > 0 else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            # A detection stream's quality is its mAP, over all sources together (see totals).
            "accuracy": self.correct / self.results if self.results and not self.detections else None,
            "variants": dict(self.variants),
            "degraded": bool(self.admission.get("degraded", False)),
        }


@dataclass(frozen=True)
class CameraSpec:
    sources: int
    fps: float
    duration_s: float
    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    degrade: bool = False
    backpressure: str = "block"
    task: str | None = None  # none: the cluster's default task
    outputs: str | None = None


def totals(tallies: list[SourceTally], test_set: TestSet | None = None) -> dict[str, Any]:
    """All sources together: frames, answers, drops, fps, pooled latency percentiles, accuracy
    (for a detection set: mAP@0.5 over every answered frame)."""
    latencies = np.array([x for t in tallies for x in t.latencies_ms]) if tallies else np.array([])
    results = sum(t.results for t in tallies)
    rows = [t.row() for t in tallies]
    return {
        "sources": len(tallies),
        "frames": sum(t.frames for t in tallies),
        "results": results,
        "dropped": sum(t.dropped for t in tallies),
        "fps": sum(r["fps"] for r in rows),
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
        "worst_source_p99_ms": max((r["p99_ms"] for r in rows), default=None),
        "max_ms": float(latencies.max()) if len(latencies) else None,
        "accuracy": _quality(tallies, test_set) if results else None,
        "variants": dict(sum((t.variants for t in tallies), Counter())),
    }


def _quality(tallies: list[SourceTally], test_set: TestSet | None) -> float:
    found = [d for t in tallies for d in t.detections]
    if isinstance(test_set, DetectionSet) and found:
        indices = np.array([index for index, _ in found])
        outputs = {name: np.stack([o[name] for _, o in found]) for name in found[0][1]}
        return mean_average_precision(outputs, test_set.subset(indices))
    return sum(t.correct for t in tallies) / sum(t.results for t in tallies)


async def run_cameras(
    endpoint: str,
    test_set: TestSet,
    spec: CameraSpec,
    curve: ClientCurve | None = None,
    on_tick: Callable[[list[SourceTally]], None] | None = None,
) -> list[SourceTally]:
    """Run ``spec.sources`` cameras over one client connection; their tallies once all streams closed."""
    tallies = [SourceTally(k) for k in range(spec.sources)]
    async with Client(endpoint, curve=curve) as client:
        cameras = [asyncio.create_task(_camera(client, test_set, spec, tally)) for tally in tallies]
        while not all(c.done() for c in cameras):
            await asyncio.wait(cameras, timeout=0.5)
            if on_tick is not None:
                on_tick(tallies)
        await asyncio.gather(*cameras)  # raises the first failure
    return tallies


async def _camera(client: Client, test_set: TestSet, spec: CameraSpec, tally: SourceTally) -> None:
    stream = client.stream(
        spec.fps, min_accuracy=spec.min_accuracy, max_latency_ms=spec.max_latency_ms, degrade=spec.degrade,
        backpressure=spec.backpressure, task=spec.task, outputs=spec.outputs,
    )  # fmt: skip
    count = max(int(spec.fps * spec.duration_s), 1)
    # Each camera walks the test set from its own offset, so sources see different frames.
    indices = (np.arange(count) * 7919 + tally.source * 1009) % len(test_set)
    async with stream:
        tally.admission = stream.admission
        tally.started = time.monotonic()
        sender = asyncio.create_task(_send_frames(stream, test_set, indices, spec.fps, tally))
        try:
            async for result in stream:
                if result.dropped:
                    tally.dropped += 1
                    continue
                tally.results += 1
                tally.latencies_ms.append(result.latency_ms)
                tally.variants[result.variant] += 1
                if isinstance(test_set, DetectionSet):
                    tally.detections.append((result.id, result.outputs))
                else:
                    tally.correct += int(result.prediction == test_set.labels[result.id])
        finally:
            await sender
    tally.finished = time.monotonic()


async def _send_frames(stream: Stream, test_set: TestSet, indices: np.ndarray, fps: float, tally: SourceTally) -> None:
    start = time.monotonic()
    for i, index in enumerate(indices):
        await asyncio.sleep(max(start + i / fps - time.monotonic(), 0.0))
        await stream.send(test_set.inputs[index], ids=[int(index)])
        tally.frames += 1
    await stream.close()

"""Workloads drawn from a task's labelled test set, and the summary ``submit`` and ``run`` print."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .client import Client, ProgressCallback
from .config import ClusterConfig
from .errors import EdgecollabError
from .security import ClientCurve
from .zoo import LabelledSet, load_manifest, load_test_set

# (inputs, target inferences/s) of the default ``edgecollab run``: varied sizes, from easy to demanding.
DEFAULT_WORKLOAD: tuple[tuple[int, float], ...] = ((2000, 1000.0), (6000, 3000.0), (9000, 6000.0), (12000, 9000.0))


@dataclass(frozen=True)
class RequestSpec:
    inputs: int
    target_ips: float | None
    min_accuracy: float | None
    policy: str | None
    strict: bool = False


# Given a request's number and spec, the callback that follows its progress (or None).
ProgressFactory = Callable[[int, RequestSpec], ProgressCallback | None]


def workload_source(config: ClusterConfig) -> LabelledSet:
    """The test set of the cluster's task: the inputs the workload sends, and their labels."""
    manifest = load_manifest(config.manifest_path, check_files=False)
    test_set = load_test_set(manifest, manifest.tasks[config.models.task])
    if not isinstance(test_set, LabelledSet):
        raise EdgecollabError(f"task {config.models.task!r} is not scored top1: the workload needs labelled inputs")
    return test_set


def draw_indices(rng: np.random.Generator, available: int, count: int) -> np.ndarray:
    """Distinct test-set indices while they last, then with replacement."""
    return rng.choice(available, size=count, replace=count > available)


async def serve_workload(
    endpoint: str,
    test_set: LabelledSet,
    requests: list[RequestSpec],
    seed: int,
    curve: ClientCurve | None = None,
    progress: ProgressFactory | None = None,
) -> list[dict[str, Any]]:
    """Send the requests one after another; return per-request rows with measured accuracy."""
    rng = np.random.default_rng(seed)
    rows = []
    async with Client(endpoint, curve=curve) as client:
        for number, spec in enumerate(requests, start=1):
            indices = draw_indices(rng, len(test_set), spec.inputs)
            result = await client.infer(
                test_set.inputs[indices],
                target_ips=spec.target_ips,
                min_accuracy=spec.min_accuracy,
                policy=spec.policy,
                strict=spec.strict,
                progress=progress(number, spec) if progress else None,
            )
            rows.append(request_row(number, spec, indices, result.predictions, result.report, test_set))
    return rows


def request_row(
    number: int,
    spec: RequestSpec,
    indices: np.ndarray,
    predictions: np.ndarray,
    report: dict[str, Any],
    test_set: LabelledSet,
) -> dict[str, Any]:
    accuracy = float((predictions == test_set.labels[indices]).mean())
    achieved = float(report["achieved_ips"])
    met = (spec.target_ips is None or achieved >= spec.target_ips) and (
        spec.min_accuracy is None or accuracy >= spec.min_accuracy
    )
    return {
        "id": number,
        "inputs": spec.inputs,
        "target_ips": spec.target_ips,
        "min_accuracy": spec.min_accuracy,
        "achieved_ips": achieved,
        "accuracy": accuracy,
        "met": met,
        "expected_ips": report["expected_ips"],
        "expected_accuracy": report["expected_accuracy"],
        "wall_s": report["wall_s"],
        "retries": report["retries"],
        "notes": report["notes"],
        "assignment": [
            {"node": a["node"], "variant": a["variant"], "inputs": a["inputs"]} for a in report["assignment"]
        ],
        # Kept out of the JSON output; used for --save-predictions, --plot and the benchmarks.
        "_report": report,
        "_indices": indices,
        "_predictions": predictions,
    }


def node_rates(timeline: dict[str, Any]) -> tuple[list[float], dict[str, list[float]]]:
    """From a report's ``timeline``: the bins' mid-times (seconds after arrival) and each node's inferences/s."""
    width = timeline["bin_s"]
    bins = max((len(s["inputs"]) for s in timeline["series"]), default=0)
    rates: dict[str, list[float]] = {}
    for series in timeline["series"]:
        row = rates.setdefault(series["node"], [0.0] * bins)
        for b, inputs in enumerate(series["inputs"]):
            row[b] += inputs / width
    return [(b + 0.5) * width for b in range(bins)], rates


def summary(policy: str, config: ClusterConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    inputs = sum(r["inputs"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    correct = sum(r["accuracy"] * r["inputs"] for r in rows)
    return {
        "policy": policy,
        "nodes": [{"name": n.name, "emulate": n.emulate, "providers": list(n.providers)} for n in config.nodes],
        "requests": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "summary": {
            "requests": len(rows),
            "inputs": inputs,
            "achieved_ips": inputs / wall if wall else 0.0,
            "accuracy": correct / inputs if inputs else 0.0,
            "targets_met": sum(1 for r in rows if r["met"]),
        },
    }


def save_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    np.savez(
        path,
        indices=np.concatenate([r["_indices"] for r in rows]),
        predictions=np.concatenate([r["_predictions"] for r in rows]),
    )


def run_sync(
    endpoint: str,
    test_set: LabelledSet,
    requests: list[RequestSpec],
    seed: int,
    curve: ClientCurve | None = None,
    progress: ProgressFactory | None = None,
) -> list[dict[str, Any]]:
    return asyncio.run(serve_workload(endpoint, test_set, requests, seed, curve, progress))

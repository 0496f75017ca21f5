"""Workloads drawn from a task's labelled test set, and the summary ``submit`` and ``run`` print."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .client import Client, InferenceResult, ProgressCallback
from .config import ClusterConfig
from .errors import EdgecollabError
from .security import ClientCurve
from .zoo import LabelledSet, load_manifest, load_test_set
from .zoo.scoring import DetectionSet, TestSet, mean_average_precision

# (inputs, target inferences/s) of the default ``edgecollab run``: varied sizes, from easy to demanding.
DEFAULT_WORKLOAD: tuple[tuple[int, float], ...] = ((2000, 1000.0), (6000, 3000.0), (9000, 6000.0), (12000, 9000.0))
# And for a detection task served beside it (scenes, target scenes/s), sent at the same time.
DETECTION_WORKLOAD: tuple[tuple[int, float], ...] = ((1000, 400.0), (3000, 1200.0))


@dataclass(frozen=True)
class RequestSpec:
    inputs: int
    target_ips: float | None
    min_accuracy: float | None
    policy: str | None
    strict: bool = False
    task: str | None = None  # none: the cluster's default task
    outputs: str | None = None  # none: predictions for a classifier, every output for a detector


# Given a request's number and spec, the callback that follows its progress (or None).
ProgressFactory = Callable[[int, RequestSpec], ProgressCallback | None]


def workload_source(config: ClusterConfig) -> LabelledSet:
    """The test set of the cluster's default task: the inputs the workload sends, and their labels."""
    manifest = load_manifest(config.manifest_path, check_files=False)
    test_set = load_test_set(manifest, manifest.tasks[config.models.task])  # not the other tasks' sets
    if not isinstance(test_set, LabelledSet):
        raise EdgecollabError(f"task {config.models.task!r} is not scored top1: the workload needs labelled inputs")
    return test_set


def workload_sources(config: ClusterConfig) -> dict[str, TestSet]:
    """The test set of every task the cluster serves, by task."""
    manifest = load_manifest(config.manifest_path, check_files=False)
    return {task.name: load_test_set(manifest, task) for task in manifest.served(config.models.served)}


def default_workload(config: ClusterConfig, policy: str | None, strict: bool) -> list[RequestSpec]:
    """The default ``edgecollab run``: DEFAULT_WORKLOAD on the default task, DETECTION_WORKLOAD on each other."""
    specs = [RequestSpec(n, t, None, policy, strict) for n, t in DEFAULT_WORKLOAD]
    for task in config.models.served[1:]:
        specs += [RequestSpec(n, t, None, policy, strict, task) for n, t in DETECTION_WORKLOAD]
    return specs


def draw_indices(rng: np.random.Generator, available: int, count: int) -> np.ndarray:
    """Distinct test-set indices while they last, then with replacement."""
    return rng.choice(available, size=count, replace=count > available)


async def serve_workload(
    endpoint: str,
    test_sets: TestSet | dict[str, TestSet],
    requests: list[RequestSpec],
    seed: int,
    curve: ClientCurve | None = None,
    progress: ProgressFactory | None = None,
) -> list[dict[str, Any]]:
    """Send each task's requests one after another, the tasks side by side; return per-request rows with
    measured quality (accuracy, or mAP@0.5 for a detection task). ``test_sets``: by task (one set: the default's)."""
    sources = test_sets if isinstance(test_sets, dict) else {"": test_sets}
    first = next(iter(sources.values()))  # the default task's
    rng = np.random.default_rng(seed)
    numbered = list(enumerate(requests, start=1))
    # Drawn up front, in request order, so a seed gives the same inputs however the tasks interleave.
    chosen = {}
    for number, spec in numbered:
        test_set = sources.get(spec.task) if spec.task else first
        if test_set is None:
            raise EdgecollabError(f"no test set for task {spec.task!r}; there are: {', '.join(sources)}")
        chosen[number] = (test_set, draw_indices(rng, len(test_set), spec.inputs))
    rows: dict[int, dict[str, Any]] = {}

    async def serve(task: str | None) -> None:
        for number, spec in numbered:
            if spec.task != task:
                continue
            test_set, indices = chosen[number]
            result = await client.infer(
                test_set.inputs[indices],
                target_ips=spec.target_ips,
                min_accuracy=spec.min_accuracy,
                policy=spec.policy,
                strict=spec.strict,
                progress=progress(number, spec) if progress else None,
                outputs=spec.outputs or ("all" if isinstance(test_set, DetectionSet) else None),
                task=spec.task,
            )
            rows[number] = request_row(number, spec, indices, result, test_set)

    async with Client(endpoint, curve=curve) as client:
        await asyncio.gather(*(serve(task) for task in dict.fromkeys(spec.task for spec in requests)))
    return [rows[number] for number, _ in numbered]


def request_row(
    number: int, spec: RequestSpec, indices: np.ndarray, result: InferenceResult, test_set: TestSet
) -> dict[str, Any]:
    predictions, report = result.predictions, result.report
    if isinstance(test_set, DetectionSet):
        accuracy = mean_average_precision(result.outputs, test_set.subset(indices))
    else:
        accuracy = float((predictions == test_set.labels[indices]).mean())
    achieved = float(report["achieved_ips"])
    met = (spec.target_ips is None or achieved >= spec.target_ips) and (
        spec.min_accuracy is None or accuracy >= spec.min_accuracy
    )
    return {
        "id": number,
        "task": report.get("task", spec.task),
        "inputs": spec.inputs,
        "target_ips": spec.target_ips,
        "min_accuracy": spec.min_accuracy,
        "achieved_ips": achieved,
        "accuracy": accuracy,
        "met": met,
        "expected_ips": report["expected_ips"],
        "expected_accuracy": report["expected_accuracy"],
        "feasible": report.get("feasible", True),  # the plan promised the target
        "margin": report.get("margin", 0.0),
        "promise_basis": report.get("promise_basis"),
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
        "_result": result,
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
    """The run's outcome; ``accuracy`` and throughput are the default task's, every task's are in ``tasks``."""
    tasks = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        count = sum(r["inputs"] for r in mine)
        tasks[task] = {
            "requests": len(mine),
            "inputs": count,
            "accuracy": sum(r["accuracy"] * r["inputs"] for r in mine) / count if count else 0.0,
            "targets_met": sum(1 for r in mine if r["met"]),
        }
    default = [r for r in rows if r["task"] in (None, config.models.task)] or rows
    inputs = sum(r["inputs"] for r in default)
    wall = sum(r["wall_s"] for r in default)
    correct = sum(r["accuracy"] * r["inputs"] for r in default)
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
        "tasks": tasks,
    }


def save_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    """Test-set indices, predictions, each input's variant and node, and any outputs (``output:<name>``)."""
    results: list[InferenceResult] = [r["_result"] for r in rows]
    outputs = {}
    for name in dict.fromkeys(n for result in results for n in result.outputs):
        if all(name in result.outputs for result in results):
            outputs[f"output:{name}"] = np.concatenate([result.outputs[name] for result in results])
    arrays = {
        "indices": np.concatenate([r["_indices"] for r in rows]),
        "predictions": np.concatenate([r["_predictions"] for r in rows]),
        "variants": np.array([v for result in results for v in result.variants]),
        "nodes": np.array([n for result in results for n in result.nodes]),
        **outputs,
    }
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types one keyword as allow_pickle


def run_sync(
    endpoint: str,
    test_set: TestSet | dict[str, TestSet],
    requests: list[RequestSpec],
    seed: int,
    curve: ClientCurve | None = None,
    progress: ProgressFactory | None = None,
) -> list[dict[str, Any]]:
    return asyncio.run(serve_workload(endpoint, test_set, requests, seed, curve, progress))

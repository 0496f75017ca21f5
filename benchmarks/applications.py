"""Two applications on the default emulated cluster: classification and detection share the boards.

    .venv/bin/python benchmarks/applications.py [--config cluster.toml]

A classification request (``--classify``, default 30,000 inputs at 5,000 inf/s) runs three times:
alone, then beside a detection request of a light load (``--light``, 2,000 scenes at 300 scenes/s),
then beside a heavy one (``--heavy``, 6,000 scenes at 1,500 scenes/s). For each phase and each
request: the target, the achieved rate, whether it was met, the expected quality of its variant mix
(top-1 accuracy; mAP@0.5 for detection) and the measured one, and the share of every board's time
inputs each board ran, by variant. The joint plan should
give detection more of the boards as its load grows, with classification moving to cheaper variants
to keep its target. Writes benchmarks/results/applications.json and applications.png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, run_info, write_results

from edgecollab.client import Client, InferenceResult
from edgecollab.config import load_config
from edgecollab.inspection import wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.plots import pyplot, save
from edgecollab.workload import workload_sources
from edgecollab.zoo import LabelledSet
from edgecollab.zoo.scoring import DetectionSet, mean_average_precision

DETECT = "fashion-detect"


def parse_load(text: str) -> tuple[int, float]:
    inputs, _, rate = text.partition("@")
    return int(inputs), float(rate)


def row(result: InferenceResult, target: float, quality: float) -> dict:
    return {
        "task": result.report["task"],
        "inputs": result.report["inputs"],
        "target_ips": target,
        "achieved_ips": result.achieved_ips,
        "met": result.achieved_ips >= target,
        "expected_quality": result.report["expected_accuracy"],
        "measured_quality": quality,
        "variants": {v: result.variants.count(v) for v in sorted(set(result.variants))},
        "boards": {n: result.nodes.count(n) for n in sorted(set(result.nodes))},  # inputs each board ran
    }


async def phase(
    endpoint: str,
    classify: tuple[int, float],
    detect: tuple[int, float] | None,
    images: LabelledSet,
    scenes: DetectionSet,
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    picked = rng.choice(len(images), classify[0])
    chosen = rng.choice(len(scenes), detect[0]) if detect else np.zeros(0, np.int64)
    async with Client(endpoint, timeout_s=600) as client:
        work = [client.infer(images.inputs[picked], target_ips=classify[1])]
        if detect:
            work.append(client.infer(scenes.inputs[chosen], target_ips=detect[1], task=DETECT))
        results = await asyncio.gather(*work)
    accuracy = float((results[0].predictions == images.labels[picked]).mean())
    rows = [row(results[0], classify[1], accuracy)]
    if detect:
        found = mean_average_precision(results[1].outputs, scenes.subset(chosen))
        rows.append(row(results[1], detect[1], found))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--classify", type=parse_load, default=(30_000, 5_000.0), help="INPUTS@RATE")
    parser.add_argument("--light", type=parse_load, default=(2_000, 300.0), help="SCENES@RATE")
    parser.add_argument("--heavy", type=parse_load, default=(6_000, 1_500.0), help="SCENES@RATE")
    parser.add_argument("--out", type=Path, default=RESULTS / "applications.json")
    args = parser.parse_args()

    config = load_config(args.config)
    sources = workload_sources(config)
    images, scenes = sources[config.models.task], sources[DETECT]
    assert isinstance(images, LabelledSet) and isinstance(scenes, DetectionSet)
    phases: dict[str, list[dict[str, Any]]] = {}
    with LocalCluster(args.config, log_dir=config.resolve(".edgecollab/logs")) as local:
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        for name, detect in (("alone", None), ("light detection", args.light), ("heavy detection", args.heavy)):
            phases[name] = asyncio.run(phase(local.clients_endpoint, args.classify, detect, images, scenes))
            for r in phases[name]:
                print(
                    f"{name:>16} {r['task']:>15}: {r['achieved_ips']:8,.0f} / {r['target_ips']:,.0f} inf/s"
                    f" ({'met' if r['met'] else 'missed'}), expected {r['expected_quality'] * 100:.2f} %,"
                    f" measured {r['measured_quality'] * 100:.2f} %, {r['variants']}",
                    file=sys.stderr,
                )
    out = {**run_info(), "config": str(args.config), "phases": phases}
    write_results(args.out, out, lambda path: _plot(phases, path))
    return 0


def _plot(phases: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(phases)
    for index, label in ((0, "classification (top-1)"), (1, "detection (mAP@0.5)")):
        shown = [(n, rows[index]) for n, rows in phases.items() if len(rows) > index]
        left.plot([n for n, _ in shown], [r["expected_quality"] * 100 for _, r in shown], marker="o", label=label)
        right.plot(
            [n for n, _ in shown], [r["achieved_ips"] / r["target_ips"] for _, r in shown], marker="o", label=label
        )
    left.set_title("expected quality of each plan (%)")
    right.axhline(1.0, color="gray", linewidth=0.8)
    right.set_title("achieved / target")
    for ax in (left, right):
        ax.set_xticks(range(len(names)), names)
        ax.legend()
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())

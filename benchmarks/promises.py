"""A plan is a promise: plans made on tables wrong by a known error per row, judged on the true table.

    .venv/bin/python benchmarks/promises.py     # → promises.json, promises.png (seconds; no cluster)

The true table is the paper's testbed as the boards' cost models give it, for both shipped tasks. Each
noisy table draws every row from a log-normal around its true value with a spread the row knows (as
profiling and run-time shards measure it). Every policy plans each request on the noisy table; the
plan is judged on the true one, cut into shards and handed out by the request's own book-keeping
(``RequestRun``) on a simulated clock, with the coordinator's tail work-stealing for the policies
that adapt at run time. Confidence 0.5 plans at the mean (no lower bounds, no margin): what choosing
per board does without them. tests/test_promises.py holds the default confidence to this.
"""

from __future__ import annotations

import heapq
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from common import MANIFEST, RESULTS, run_info, write_results

from edgecollab.coordinator.request_run import RequestRun
from edgecollab.planner import ADAPTS_AT_RUN_TIME, ExplorationTable, Measurement, Plan, PlanRequest, make_plan
from edgecollab.planner.confidence import DEFAULT_CONFIDENCE, MIN_TASK_SPREAD, Realisation
from edgecollab.plots import pyplot, save
from edgecollab.worker.emulation import BOARD_PROFILES
from edgecollab.zoo import load_manifest

BOARDS = {"odroid-xu4-a": "odroid-xu4", "odroid-xu4-b": "odroid-xu4", "rpi4": "rpi4", "jetson-nano": "jetson-nano"}
BASELINES = ("uniform", "proportional", "equal")
TABLES = 25  # noisy tables per task and error
# Targets per table, from easy to needing approximation (``targets``).
TARGETS = 6
INPUTS = 6000
SHARD = 128  # inputs per shard, as the coordinator cuts a fast board's


def true_table(task: str) -> ExplorationTable:
    manifest = load_manifest(MANIFEST, check_files=False)
    variants = manifest.for_task(task)
    table = ExplorationTable({v.name: v.accuracy for v in variants})
    table.tasks = {v.name: task for v in variants}
    for node, board in BOARDS.items():
        for v in variants:
            seconds = BOARD_PROFILES[board].seconds(128, v.macs, v.quantized)
            table.record(node, v.name, Measurement(128 / seconds, seconds * 1e3))
    return table


def noisy(truth: ExplorationTable, spread: float, rng: np.random.Generator) -> ExplorationTable:
    """Every row off by a log-normal error of ``spread``, which the row knows it has. The task's realisation
    is what a coordinator that had served requests in this world would have learned: every plan's work
    reaches what its true rows allow (efficiency 1, the least spread); the rows' error is what is tested."""
    table = truth.scaled(1.0)
    learned = Realisation(efficiency=1.0, variance=MIN_TASK_SPREAD**2, startup_s=0.0, requests=10)
    table.realisations = {task: learned for task in set(truth.tasks.values())}
    for node in truth.nodes():
        for variant in truth.variants_of(node):
            m = truth.get(node, variant)
            assert m is not None
            error = float(np.exp(rng.normal(0.0, spread)))
            table.record(node, variant, replace(m.scaled_by(error), spread=spread))
    return table


def achieved_on(truth: ExplorationTable, plan: Plan, believed: ExplorationTable | None = None) -> float:
    """The rate a plan reaches when each board runs at its true speed, cut into shards and handed out by the
    request's own book-keeping (``RequestRun``) on a simulated clock. The policies that adapt at run time get
    the coordinator's tail work-stealing, judged on what the coordinator ``believed`` (its table)."""
    run = RequestRun("judged", plan, SHARD, arrived=0.0)
    steals = plan.policy in ADAPTS_AT_RUN_TIME
    believed = believed or truth
    free = [(0.0, a.node) for a in plan.assignments]
    heapq.heapify(free)
    while free:
        now, node = heapq.heappop(free)
        shard = run.next_shard(node) or (run.steal(node, believed.seconds_per_input) if steals else None)
        if shard is None:
            continue  # nothing left for this board
        busy = shard.size / truth.ips(node, shard.variant)
        run.complete(shard.shard_id, shard.attempt, np.zeros(shard.size, np.int64), node, busy, now + busy)
        heapq.heappush(free, (now + busy, node))
    assert run.finished and run.finished_at is not None
    return run.total_inputs / run.finished_at


def targets(truth: ExplorationTable) -> list[float]:
    """From what the most accurate variant everywhere reaches to most of what the fastest plan does."""
    nodes = truth.nodes()
    accurate = achieved_on(truth, make_plan("proportional", truth, PlanRequest(INPUTS), nodes))
    fastest = achieved_on(truth, make_plan("adaptive", truth, PlanRequest(INPUTS, target_ips=1e12), nodes))
    return [float(t) for t in np.geomspace(0.6 * accurate, 0.75 * fastest, TARGETS)]


def outcomes(task: str, spread: float, confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Outcome]:
    """Per policy, each request's outcome: planned on a noisy table, judged on the true one."""
    truth = true_table(task)
    nodes = truth.nodes()
    rng = np.random.default_rng(7)
    found: dict[str, Outcome] = {p: Outcome() for p in ("adaptive", *BASELINES)}
    for _ in range(TABLES):
        table = noisy(truth, spread, rng)
        table.confidence = confidence
        for target in targets(truth):
            request = PlanRequest(INPUTS, target_ips=target)
            for policy, outcome in found.items():
                plan = make_plan(policy, table, request, nodes)
                met = achieved_on(truth, plan, table) >= target
                outcome.met.append(met)
                outcome.promised.append(plan.feasible)
                outcome.accuracy.append(plan.expected_accuracy)
    return found


@dataclass
class Outcome:
    met: list[bool] = field(default_factory=list)  # per request, in the same order for every policy
    promised: list[bool] = field(default_factory=list)  # the plan said the target would be met
    accuracy: list[float] = field(default_factory=list)  # the plan's expected accuracy

    def broken(self) -> int:
        return sum(p and not m for p, m in zip(self.promised, self.met, strict=True))

    def accuracy_where(self, chosen: list[bool]) -> float:
        picked = [a for a, c in zip(self.accuracy, chosen, strict=True) if c]
        return sum(picked) / len(picked) if picked else 0.0


SPREADS = (0.1, 0.25)
CONFIDENCES = (0.5, DEFAULT_CONFIDENCE)


def summarise(found: dict[str, Outcome]) -> dict[str, Any]:
    adaptive, uniform = found["adaptive"], found["uniform"]
    both = [a and u for a, u in zip(adaptive.met, uniform.met, strict=True)]
    policies = {
        p: {
            "met": sum(o.met),
            "promised": sum(o.promised),
            "broken": o.broken(),
            "mean_expected_accuracy": sum(o.accuracy) / len(o.accuracy),
        }
        for p, o in found.items()
    }
    where_both = {"adaptive": adaptive.accuracy_where(both), "uniform": uniform.accuracy_where(both)}
    return {
        "requests": len(adaptive.met),
        "policies": policies,
        "both_met": sum(both),
        "expected_accuracy_where_both_met": where_both,
    }


def main() -> int:
    info = run_info()  # the code as the run starts
    runs = [
        {"task": task, "spread": spread, "confidence": confidence, **summarise(outcomes(task, spread, confidence))}
        for task in ("fashion-mnist", "fashion-detect")
        for spread in SPREADS
        for confidence in CONFIDENCES
    ]
    for r in runs:
        met = ", ".join(f"{p} {v['met']}" for p, v in r["policies"].items())
        print(
            f"{r['task']:>15} error {r['spread']:.2f} confidence {r['confidence']}: met {met} of {r['requests']}",
            file=sys.stderr,
        )
    report = {**info, "tables": TABLES, "targets_per_table": TARGETS, "inputs": INPUTS, "runs": runs}
    write_results(RESULTS / "promises.json", report, lambda png: _plot(report, png))
    return 0


def _plot(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()  # without matplotlib, write_results says so and writes the JSON alone
    runs = report["runs"]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    labels = [f"{r['task'].split('-')[-1]} ±{r['spread']:.0%}\nconf {r['confidence']}" for r in runs]
    policies = list(runs[0]["policies"])
    width = 0.8 / len(policies)
    for k, policy in enumerate(policies):
        xs = [i + k * width for i in range(len(runs))]
        ax.bar(xs, [r["policies"][policy]["met"] for r in runs], width, label=policy)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(runs))], labels, fontsize=7)
    ax.set_ylabel(f"targets met of {runs[0]['requests']}")
    ax.legend(fontsize=7)
    save(fig, path)


if __name__ == "__main__":
    sys.exit(main())

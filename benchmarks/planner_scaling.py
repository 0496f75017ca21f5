"""Solve time of the adaptive policy as the cluster grows, against exhaustive enumeration.

    .venv/bin/python benchmarks/planner_scaling.py

For 4 to 64 nodes × 4 to 12 variants (random but realistic tables: more accurate variants
cost more, nodes differ in speed), times `adaptive` (MILP) and `mixed` (LP) plans of a
10,000-input request at a target needing approximation. The paper's design-space
exploration enumerates every variant choice per node, (variants + 1) ** nodes of them; we
time that enumeration where it finishes within a few seconds and extrapolate from the
measured cost per choice elsewhere. Writes benchmarks/results/planner_scaling.json (+ .png).
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecollab.errors import EdgecollabError
from edgecollab.planner import ExplorationTable, Measurement, PlanRequest, make_plan
from edgecollab.plots import pyplot, save

RESULTS = Path(__file__).resolve().parent / "results"
NODES = (4, 8, 16, 32, 64)
VARIANTS = (4, 8, 12)
REPEATS = 5
ENUMERATION_BUDGET = 200_000  # choices enumerated for real; beyond, extrapolated


def random_table(nodes: int, variants: int, seed: int) -> ExplorationTable:
    rng = np.random.default_rng(seed)
    accuracy = np.sort(rng.uniform(0.80, 0.93, variants))
    cost = np.sort(rng.uniform(1.0, 50.0, variants))
    table = ExplorationTable({f"v{i}": float(a) for i, a in enumerate(accuracy)})
    for n in range(nodes):
        speed = rng.uniform(0.5, 20.0)
        for v in range(variants):
            ips = 1000.0 * speed / cost[v]
            table.record(f"n{n}", f"v{v}", Measurement(ips, 32_000 / ips))
    return table


def time_plan(policy: str, table: ExplorationTable, request: PlanRequest) -> tuple[float, Any]:
    timings, plan = [], None
    for _ in range(REPEATS):
        started = time.perf_counter()
        plan = make_plan(policy, table, request, table.nodes())
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), plan


def enumerate_choices(table: ExplorationTable, request: PlanRequest, limit: int) -> tuple[int, float]:
    """Evaluate up to ``limit`` variant choices (None = node unused) with the paper-style greedy split."""
    assert request.target_ips is not None
    deadline = request.inputs / request.target_ips
    nodes = table.nodes()
    options = [[None, *sorted(table.variants_of(n))] for n in nodes]
    started = time.perf_counter()
    count = 0
    for combo in itertools.islice(itertools.product(*options), limit):
        left = float(request.inputs)
        for node, variant in sorted(
            ((n, v) for n, v in zip(nodes, combo, strict=True) if v is not None), key=lambda nv: -table.accuracy[nv[1]]
        ):
            left -= min(left, deadline * table.ips(node, variant))
        count += 1
    return count, time.perf_counter() - started


def main() -> int:
    rows = []
    for nodes, variants in itertools.product(NODES, VARIANTS):
        table = random_table(nodes, variants, seed=nodes * 100 + variants)
        capacity_accurate = make_plan("proportional", table, PlanRequest(10_000), table.nodes()).expected_ips
        request = PlanRequest(10_000, target_ips=2.0 * capacity_accurate)
        adaptive_s, adaptive = time_plan("adaptive", table, request)
        mixed_s, mixed = time_plan("mixed", table, request)
        choices = (variants + 1) ** nodes
        enumerated, seconds = enumerate_choices(table, request, min(choices, ENUMERATION_BUDGET))
        per_choice = seconds / enumerated
        rows.append(
            {
                "nodes": nodes,
                "variants": variants,
                "adaptive_ms": adaptive_s * 1e3,
                "mixed_ms": mixed_s * 1e3,
                "adaptive_accuracy": adaptive.expected_accuracy,
                # The mixed plan is the LP relaxation of the adaptive one: no one-variant plan beats it.
                "mixed_accuracy": mixed.expected_accuracy,
                "feasible": bool(adaptive.feasible),
                "enumeration_choices": float(choices),
                "enumeration_seconds": per_choice * choices,
                "enumeration_measured": enumerated == choices,
            }
        )
        r = rows[-1]
        how = "measured" if r["enumeration_measured"] else "extrapolated"
        print(
            f"{nodes:>3} nodes x {variants:>2} variants: adaptive {r['adaptive_ms']:8.1f} ms, "
            f"mixed {r['mixed_ms']:7.1f} ms, enumeration {r['enumeration_seconds']:.3g} s ({how}), "
            f"accuracy {r['adaptive_accuracy']:.5f} (LP bound {r['mixed_accuracy']:.5f})",
            file=sys.stderr,
        )
    out = RESULTS / "planner_scaling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"command": "python benchmarks/planner_scaling.py", "repeats": REPEATS, "rows": rows}, indent=2)
    )
    print(f"wrote {out}", file=sys.stderr)
    _plot(rows, out.with_suffix(".png"))
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        plt = pyplot()
    except EdgecollabError as exc:
        print(f"no plot: {exc}", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variants in VARIANTS:
        sub = [r for r in rows if r["variants"] == variants]
        ax.plot(
            [r["nodes"] for r in sub],
            [r["adaptive_ms"] / 1e3 for r in sub],
            "o-",
            label=f"adaptive, {variants} variants",
        )
        ax.plot(
            [r["nodes"] for r in sub],
            [r["enumeration_seconds"] for r in sub],
            "x:",
            label=f"enumeration, {variants} variants",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("nodes")
    ax.set_ylabel("seconds to plan")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save(fig, path)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""Solve time of the joint plan (``plan_jointly``, what the coordinator solves) as clusters and work grow.

    .venv/bin/python benchmarks/planner_scaling.py [--repeats 3]

The table is the one the coordinator gets: every variant of both shipped tasks (classification
and detection, models/zoo.toml), on N boards drawn in turn from the default cluster's four
(two Odroid XU4, a Raspberry Pi 4, a Jetson Nano), each row from the emulation cost model at the
profiling shard size, each board a few per cent off its kind (no two are identical). The work is
D demands: requests with targets on both tasks, a pool of camera streams (latency-bound) per
eight demands, and the pooled small requests, with targets summing to half of what the
cluster's fastest plan could give. Medians of ``--repeats`` solves, 4 to 128 nodes × 1 to 64
demands. Each cell runs in a process of its own, bounded to CELL_MEMORY_GIB of memory and
CELL_TIMEOUT_S: a cell past either is recorded as such, not left out. Writes
benchmarks/results/planner_scaling.json (+ .png).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, run_info, write_results

from edgecollab.config import load_config
from edgecollab.planner import ExplorationTable, Measurement
from edgecollab.planner.joint import Demand, plan_jointly
from edgecollab.plots import pyplot, save
from edgecollab.worker.emulation import BOARD_PROFILES
from edgecollab.zoo import load_manifest

NODES = (4, 8, 16, 32, 64, 128)
DEMANDS = (1, 4, 16, 32, 64)
SHARD = 32
LATENCY_BATCHES = (1, 4, 16)
CELL_MEMORY_GIB = 8
CELL_TIMEOUT_S = 60


def real_table(config_path: Path, nodes: int, seed: int) -> tuple[ExplorationTable, dict[str, frozenset[str]]]:
    """The coordinator's table for ``nodes`` boards like the config's, and each task's variants."""
    config = load_config(config_path)
    manifest = load_manifest(config.manifest_path, check_files=False)
    tasks = {
        t.name: frozenset(manifest.id_of(v) for v in manifest.for_task(t.name))
        for t in manifest.served(config.models.served)
    }
    variants = [v for t in tasks for v in manifest.for_task(t)]
    table = ExplorationTable({manifest.id_of(v): v.accuracy for v in variants})
    kinds = [n.emulate for n in config.nodes if n.emulate]
    rng = np.random.default_rng(seed)
    for k in range(nodes):
        board = BOARD_PROFILES[kinds[k % len(kinds)]]
        jitter = rng.uniform(0.95, 1.05)
        for v in variants:
            seconds = board.seconds(SHARD, v.macs, v.quantized) / jitter
            latencies = tuple((b, 1e3 * board.seconds(b, v.macs, v.quantized) / jitter) for b in LATENCY_BATCHES)
            table.record(f"n{k}", manifest.id_of(v), Measurement(SHARD / seconds, seconds * 1e3, latencies))
    return table, tasks


def workload(table: ExplorationTable, tasks: dict[str, frozenset[str]], count: int) -> list[Demand]:
    """``count`` demands whose targets sum to half the fastest plan's throughput, per task."""
    names = sorted(tasks)
    demands: list[Demand] = []
    for i in range(count):
        task = names[i % len(names)]
        fastest = sum(max(table.ips(n, v) for v in tasks[task] if table.get(n, v)) for n in table.nodes())
        share = 0.5 * fastest / count
        if i == count - 1 and count > 1:
            demands.append(Demand(f"small:requests {task}", share, variants=tasks[task]))
        elif i % 8 == 7:
            demands.append(Demand(f"streams {i}", share, None, True, 0.1, SHARD, tasks[task]))
        else:
            demands.append(Demand(f"@request/{i}", share, None, True, variants=tasks[task]))
    return demands


def cell(config: Path, nodes: int, count: int, repeats: int) -> dict[str, Any]:
    table, tasks = real_table(config, nodes, seed=nodes)
    demands = workload(table, tasks, count)
    timings, plan = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        plan = plan_jointly(table, demands, table.nodes())
        timings.append(time.perf_counter() - started)
    assert plan is not None
    return {
        "nodes": nodes,
        "variants": len(table.accuracy),
        "demands": count,
        "solve_ms": statistics.median(timings) * 1e3,
        "max_solve_ms": max(timings) * 1e3,
        "loss_to_bound_points": plan.loss_to_bound * 100,
        "feasible": all(d.feasible for d in plan.demands.values()),
    }


def bounded_cell(config: Path, nodes: int, count: int, repeats: int) -> dict[str, Any]:
    """One cell in a child process with bounded memory and time; what stopped it, if something did."""

    def limit() -> None:
        size = CELL_MEMORY_GIB * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    command = [
        sys.executable,
        __file__,
        "--config",
        str(config),
        "--repeats",
        str(repeats),
        "--cell",
        f"{nodes},{count}",
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=CELL_TIMEOUT_S, preexec_fn=limit, check=False
        )
    except subprocess.TimeoutExpired:
        return {"nodes": nodes, "demands": count, "stopped": f"not solved {repeats} times within {CELL_TIMEOUT_S} s"}
    if done.returncode != 0:
        why = "out of memory" if "MemoryError" in done.stderr or done.returncode < 0 else done.stderr.strip()[-200:]
        return {"nodes": nodes, "demands": count, "stopped": f"{why} (limit {CELL_MEMORY_GIB} GiB)"}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # NODES,DEMANDS: one cell, as JSON on stdout
    args = parser.parse_args()
    if args.cell:
        nodes, count = (int(x) for x in args.cell.split(","))
        print(json.dumps(cell(args.config, nodes, count, args.repeats)))
        return 0
    rows = []
    for nodes, count in itertools.product(NODES, DEMANDS):
        row = bounded_cell(args.config, nodes, count, args.repeats)
        rows.append(row)
        if "stopped" in row:
            print(f"{nodes:>4} nodes x {count:>3} demands: stopped: {row['stopped']}", file=sys.stderr)
            continue
        print(
            f"{nodes:>4} nodes x {count:>3} demands: {row['solve_ms']:8.1f} ms (max {row['max_solve_ms']:.1f}), "
            f"{row['loss_to_bound_points']:.3f} points from the LP bound, feasible {row['feasible']}",
            file=sys.stderr,
        )
    out = {**run_info(), "repeats": args.repeats, "shard": SHARD, "cell_memory_gib": CELL_MEMORY_GIB,
           "cell_timeout_s": CELL_TIMEOUT_S, "rows": rows}  # fmt: skip
    write_results(RESULTS / "planner_scaling.json", out, lambda png: _plot(rows, png))
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for count in DEMANDS:
        sub = [r for r in rows if r["demands"] == count and "stopped" not in r]
        ax.plot([r["nodes"] for r in sub], [r["solve_ms"] for r in sub], "o-", label=f"{count} demands")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("nodes")
    ax.set_ylabel("joint plan solve (ms, median)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save(fig, path)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

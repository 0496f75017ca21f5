"""How close the cluster comes to its physical limit, and where the rest goes.

    .venv/bin/python benchmarks/efficiency.py [--config cluster.toml] [--repeats 3]

For each request the limit is the *ideal* cluster throughput of the variants it actually ran:
the sum over its boards of each board's own throughput for its variant, measured on that very
request (inputs ÷ the time the board was busy with them, as its worker reports per shard).
Efficiency is achieved ÷ ideal: the share of the boards' time spent computing. The idle rest
is split into start-up (before the first shard leaves: planning), tail (boards done while
others still work) and transfer and overhead (gaps between a board's shards). Requests of
100, 1,000, 10,000 and 30,000 inputs, with no target (every board on the most accurate
variant) and with a demanding one (fast variants). Writes
benchmarks/results/efficiency.json and efficiency.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, run_info, write_results

from edgecollab.config import load_config
from edgecollab.inspection import wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.plots import pyplot, save
from edgecollab.workload import RequestSpec, run_sync, workload_source

SIZES = (100, 1_000, 10_000, 30_000)
# "accurate": no target, the most accurate variant everywhere; "fast": a target that needs the fast variants.
TARGETS: dict[str, float | None] = {"accurate": None, "fast": 8_000.0}


def ideal_ips(report: dict[str, Any]) -> dict[str, float]:
    """Each board's own throughput on this request: its inputs over the time it was busy with them."""
    busy: dict[str, float] = {}
    inputs: dict[str, int] = {}
    for a in report["assignment"]:
        if a["inputs"]:
            busy[a["node"]] = busy.get(a["node"], 0.0) + a["busy_s"]
            inputs[a["node"]] = inputs.get(a["node"], 0) + a["inputs"]
    return {node: inputs[node] / busy[node] for node in inputs}


def breakdown(report: dict[str, Any]) -> dict[str, float]:
    per_node = ideal_ips(report)
    ideal = sum(per_node.values())
    wall = report["wall_s"]
    capacity = ideal * wall  # inputs the boards could have predicted in the request's wall time
    last_result = {a["node"]: 0.0 for a in report["assignment"]}
    for a in report["assignment"]:
        last_result[a["node"]] = max(last_result[a["node"]], a["last_result_s"])
    efficiency = report["inputs"] / capacity
    startup = report["dispatch_started_s"] * ideal / capacity
    tail = sum(ips * (wall - last_result[node]) for node, ips in per_node.items()) / capacity
    return {
        "ideal_ips": ideal,
        "achieved_ips": report["achieved_ips"],
        "efficiency": efficiency,
        "startup": startup,
        "tail": tail,
        "transfer_and_overhead": 1.0 - efficiency - startup - tail,
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "efficiency.json")
    args = parser.parse_args()

    config = load_config(args.config)
    test_set = workload_source(config)
    runs: list[dict[str, Any]] = []
    with LocalCluster(args.config, log_dir=config.resolve(".edgecollab/logs")) as local:
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        for label, target in TARGETS.items():
            for size in SIZES:
                for repeat in range(args.repeats):
                    (row,) = run_sync(local.clients_endpoint, test_set, [RequestSpec(size, target, None, None)], repeat)
                    figures = breakdown(row["_report"])
                    runs.append({"workload": label, "inputs": size, "target_ips": target, "repeat": repeat, **figures})
                    achieved, ideal = figures["achieved_ips"], figures["ideal_ips"]
                    print(
                        f"{label:>8} {size:>6,} inputs: {achieved:>7,.0f} of {ideal:>7,.0f} inf/s"
                        f" = {figures['efficiency']:.3f} (start-up {figures['startup']:.3f},"
                        f" tail {figures['tail']:.3f}, rest {figures['transfer_and_overhead']:.3f})",
                        file=sys.stderr,
                    )
    summary = []
    for label in TARGETS:
        for size in SIZES:
            group = [r for r in runs if r["workload"] == label and r["inputs"] == size]
            summary.append(
                {"workload": label, "inputs": size}
                | {k: statistics.median(r[k] for r in group) for k in ("efficiency", "startup", "tail",
                                                                        "transfer_and_overhead", "ideal_ips",
                                                                        "achieved_ips", "wall_s")}
            )  # fmt: skip
    out = {
        **run_info(),
        "config": str(args.config),
        "repeats": args.repeats,
        "summary": summary,
        "runs": runs,
    }
    write_results(args.out, out, lambda path: _plot(summary, path))
    return 0


def _plot(summary: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(10, 4), sharey=True)
    parts = [("efficiency", "achieved", "tab:green"), ("startup", "start-up", "tab:blue"),
             ("tail", "tail", "tab:orange"), ("transfer_and_overhead", "transfer + overhead", "tab:grey")]  # fmt: skip
    for ax, label in zip(axes, TARGETS, strict=True):
        rows = [r for r in summary if r["workload"] == label]
        names = [f"{r['inputs']:,}" for r in rows]
        bottom = [0.0] * len(rows)
        for key, legend, colour in parts:
            values = [max(r[key], 0.0) for r in rows]
            ax.bar(names, values, bottom=bottom, color=colour, label=legend)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        for i, r in enumerate(rows):
            ax.text(i, r["efficiency"] / 2, f"{r['efficiency']:.2f}", ha="center", color="white", fontsize=9)
        ax.axhline(0.95, color="k", lw=0.8, ls="--")
        ax.set_title(f"{label} (ideal ≈ {rows[-1]['ideal_ips']:,.0f} inf/s)")
        ax.set_xlabel("inputs per request")
    axes[0].set_ylabel("share of the ideal cluster throughput")
    axes[-1].legend(fontsize=8, loc="lower right")
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())

"""Every policy on the same emulated cluster and the same requests, each on a fresh coordinator, both tasks.

    .venv/bin/python benchmarks/policies.py [--config cluster.toml] [--seeds 3] [--task TASK ...]

Profiles the config's cluster once, then, for every seed and every policy (in an order rotated by the
seed), starts a fresh coordinator and boards that all begin from that same table — no policy plans on
corrections another one's requests taught — and sends each task's requests one after another. A
seed draws the requests: their sizes (2,000 inputs and up), their targets (from what the most
accurate variant everywhere reaches to what needs approximation) and their inputs; the last request
of each task asks for more than any plan can give.

A request is *feasible* when some policy met it in this run, or when the exhaustive oracle (every
board on each of its variants, shares by speed) reaches it on the measured table. Per request the JSON
has the target, what the plan promised (``expected_ips``, its margin, and whether it called the
target ``feasible``), what it achieved, whether it met, and the quality *measured* on what was served
(top-1, or mAP@0.5 with pycocotools for detection) beside the plan's expected one. Per task, whether
``adaptive`` dominates: it meets at least every baseline's feasible targets and 95 % of them, and
over the requests both met its measured quality is ≥ ``uniform``'s (+5 points of mAP on detection).
The exhaustive oracle also checks the planner's choice on the measured table. Writes
benchmarks/results/policies.json and a plot beside it.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, run_info, write_results

from edgecollab.config import load_config
from edgecollab.inspection import ask, table_from_rows, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.planner import POLICIES, ExplorationTable, PlanRequest, make_plan
from edgecollab.plots import pyplot, save
from edgecollab.workload import RequestSpec, run_sync, workload_sources
from edgecollab.zoo import load_manifest

# Per task and seed: requests whose targets go from below what the most accurate variant everywhere
# reaches to this share of what the fastest plan reaches (on the table, and as served here: emulated
# boards share this machine's cores, so the fastest rows' sum is more than it can serve); then one past
# any plan.
REQUESTS = 5
TOP_SHARE = 0.5
INFEASIBLE_FACTOR = 1.5
SIZES = (2000, 4000, 6000, 8000, 10000)
BASELINES = ("uniform", "proportional", "equal")
# What adaptive must give over uniform, in points of measured quality, over the requests both met.
QUALITY_BAR = {"fashion-detect": 5.0}
MEETS_SHARE = 0.95


def workload(table: ExplorationTable, fastest_served: float, seed: int) -> list[tuple[int, float]]:
    """(inputs, target) of one task's requests for one seed, drawn from the cluster's own capacity: the
    table's, and what its fastest plan really served (``calibrate``)."""
    rng = np.random.default_rng(seed)
    nodes = table.nodes()
    accurate = make_plan("proportional", table, PlanRequest(10_000), nodes).expected_ips
    fastest = oracle_fastest(table)
    top = TOP_SHARE * min(fastest, fastest_served)
    targets = np.geomspace(0.6 * accurate, top, REQUESTS) * rng.uniform(0.9, 1.1, REQUESTS)
    sizes = rng.choice(SIZES, REQUESTS)
    order = rng.permutation(REQUESTS)  # tight and loose requests mixed, not in rising order
    requests = [(int(sizes[i]), float(round(targets[i]))) for i in order]
    return [*requests, (int(rng.choice(SIZES)), float(round(INFEASIBLE_FACTOR * fastest)))]


def oracle_fastest(table: ExplorationTable) -> float:
    """The exhaustive oracle's fastest plan on the measured rows: every board on its fastest variant."""
    return sum(max(table.ips(n, v) for v in table.variants_of(n)) for n in table.nodes())


def oracle_accuracy(table: ExplorationTable, inputs: int, target: float) -> float | None:
    """The exhaustive oracle's most accurate plan that reaches ``target`` on the measured rows (each board
    one of its variants or none; for a choice, the most accurate split within the deadline is greedy)."""
    deadline = inputs / target
    choices = [[None, *table.variants_of(n)] for n in table.nodes()]
    best = None
    for combo in itertools.product(*choices):
        chosen = sorted(
            ((n, v) for n, v in zip(table.nodes(), combo, strict=True) if v is not None),
            key=lambda nv: -table.accuracy[nv[1]],
        )
        left, score = float(inputs), 0.0
        for n, v in chosen:
            take = min(left, deadline * table.ips(n, v))
            score, left = score + take * table.accuracy[v], left - take
        if left <= 1e-9:
            best = score / inputs if best is None else max(best, score / inputs)
    return best


def planner_against_oracle(table: ExplorationTable, requests: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """The planner's choice on the measured rows at their mean (confidence 0.5, no margin) beside the oracle's."""
    at_mean = table.scaled(1.0)
    at_mean.confidence = 0.5
    rows = []
    for inputs, target in requests:
        plan = make_plan("adaptive", at_mean, PlanRequest(inputs, target_ips=target), at_mean.nodes())
        oracle = oracle_accuracy(table, inputs, target)
        rows.append({
            "inputs": inputs, "target_ips": target, "oracle_accuracy": oracle,
            "planner_accuracy": plan.expected_accuracy if plan.feasible else None,
        })  # fmt: skip
    return rows


def profile_once(config_path: Path, folder: Path, tasks: list[str]) -> tuple[Path, ExplorationTable, dict[str, float]]:
    """Profile the cluster from scratch in ``folder``: a copy of the profile cache every run starts from, its
    table, and per task what its fastest plan (``uniform`` past any target) really served, 10,000 inputs."""
    folder.mkdir(parents=True)
    local_config = folder / "cluster.toml"
    shutil.copy(config_path, local_config)
    config = load_config(local_config)
    snapshot = folder / "profile.json"
    with LocalCluster(local_config, log_dir=folder / "logs") as local:
        wait_until_ready(local.clients_endpoint, timeout_s=900)
        table = table_from_rows(ask(local.clients_endpoint, "table")["rows"])
        shutil.copy(config.resolve(config.coordinator.profile_cache), snapshot)  # before any request taught it
        sources = workload_sources(config)
        served = {}
        for task in tasks:
            spec = RequestSpec(10_000, 1e7, None, "uniform", task=task)  # the largest target a request may name
            (row,) = run_sync(local.clients_endpoint, {task: sources[task]}, [spec], 0)
            served[task] = float(row["achieved_ips"])
    return snapshot, table, served


def run_policy(
    config_path: Path, profile: Path, folder: Path, policy: str, tasks: dict[str, list[tuple[int, float]]], seed: int
) -> dict[str, list[dict[str, Any]]]:
    """One fresh coordinator that starts from ``profile``: every task's requests under ``policy``."""
    folder.mkdir(parents=True)
    local_config = folder / "cluster.toml"
    shutil.copy(config_path, local_config)
    config = load_config(local_config)
    cache = config.resolve(config.coordinator.profile_cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(profile, cache)
    sources = workload_sources(config)
    rows: dict[str, list[dict[str, Any]]] = {}
    with LocalCluster(local_config, log_dir=folder / "logs") as local:
        wait_until_ready(local.clients_endpoint, timeout_s=300)
        for task, requests in tasks.items():
            specs = [RequestSpec(n, target, None, policy, task=task) for n, target in requests]
            found = run_sync(local.clients_endpoint, {task: sources[task]}, specs, seed)
            rows[task] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in found]
    return rows


Runs = dict[int, dict[str, list[dict[str, Any]]]]  # seed -> policy -> its requests' rows


def judge(task: str, runs: Runs, tables: dict[int, ExplorationTable]) -> dict[str, Any]:
    """Per policy: targets met among the feasible requests, promises kept, and adaptive against each baseline."""
    feasible_count = 0
    met = dict.fromkeys(POLICIES, 0)
    promised = dict.fromkeys(POLICIES, 0)
    kept = dict.fromkeys(POLICIES, 0)
    both_quality: list[tuple[float, float]] = []  # (adaptive, uniform) measured quality where both met
    for seed, by_policy in runs.items():
        fastest = oracle_fastest(tables[seed])
        for i in range(len(by_policy["adaptive"])):
            some_met = any(by_policy[p][i]["met"] for p in by_policy)
            feasible = some_met or by_policy["adaptive"][i]["target_ips"] <= fastest
            for p, requests in by_policy.items():
                r = requests[i]
                r["feasible_in_run"] = feasible
                if r["feasible"]:
                    promised[p] += 1
                    kept[p] += r["met"]
                if feasible:
                    met[p] += r["met"]
            feasible_count += feasible
            a, u = by_policy["adaptive"][i], by_policy["uniform"][i]
            if a["met"] and u["met"]:
                both_quality.append((a["accuracy"], u["accuracy"]))
    gain = (
        sum(a - u for a, u in both_quality) / len(both_quality) * 100 if both_quality else 0.0
    )  # points of measured quality, adaptive over uniform, where both met
    checks = {
        "meets_every_baseline": all(met["adaptive"] >= met[b] for b in BASELINES),
        "meets_share_of_feasible": met["adaptive"] / max(feasible_count, 1),
        "quality_gain_over_uniform_points": gain,
        "quality_bar_points": QUALITY_BAR.get(task, 0.0),
    }
    checks["dominates"] = bool(
        checks["meets_every_baseline"]
        and checks["meets_share_of_feasible"] >= MEETS_SHARE
        and both_quality
        and gain >= checks["quality_bar_points"]
    )
    return {
        "feasible_requests": feasible_count,
        "targets_met": met,
        "promises": {p: {"made": promised[p], "kept": kept[p]} for p in POLICIES},
        "requests_both_met": len(both_quality),
        "adaptive": checks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--task", action="append", help="a task to compare (repeatable; default: every one served)")
    parser.add_argument("--out", type=Path, default=RESULTS / "policies.json")
    parser.add_argument("--policy", action="append", help="only these policies (repeatable; for a look, not a result)")
    args = parser.parse_args()

    info = run_info()  # the code as the run starts: a commit made meanwhile is not credited with it
    config = load_config(args.config)
    task_names = args.task or list(config.models.served)
    manifest = load_manifest(config.manifest_path, check_files=False)
    ladders = {t: frozenset(v.name for v in manifest.for_task(t)) for t in task_names}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgecollab-policies-") as scratch:
        root = Path(scratch)
        profile, measured, fastest_served = profile_once(args.config.resolve(), root / "profile", task_names)
        tables = {t: measured.only(ladder) for t, ladder in ladders.items()}
        workloads = {
            seed: {t: workload(tables[t], fastest_served[t], seed) for t in task_names} for seed in range(args.seeds)
        }
        runs: dict[str, Runs] = {t: {} for t in task_names}
        policies = args.policy or list(POLICIES)
        for seed in range(args.seeds):
            order = policies[seed % len(policies) :] + policies[: seed % len(policies)]  # rotated
            for policy in order:
                folder = root / f"seed{seed}-{policy}"
                rows = run_policy(args.config.resolve(), profile, folder, policy, workloads[seed], seed)
                for task, found in rows.items():
                    runs[task].setdefault(seed, {})[policy] = found
                    for r in found:
                        print(
                            f"seed {seed} {task:>14} {policy:>12}: {r['inputs']:>6} @ {r['target_ips']:>9,.0f} "
                            f"promised {r['expected_ips']:>9,.0f}{'' if r['feasible'] else ' (cannot)':9} achieved "
                            f"{r['achieved_ips']:>9,.0f} {'met' if r['met'] else 'MISSED':6} quality "
                            f"{r['accuracy'] * 100:.2f} % (expected {r['expected_accuracy'] * 100:.2f} %) margin "
                            f"{r['margin'] * 100:.1f} % {r.get('promise_basis') or ''}",
                            file=sys.stderr,
                        )
    if args.policy:
        return 0  # a look at some policies: judging needs them all
    report_tasks = {}
    for task in task_names:
        by_seed = {seed: {p: runs[task][seed][p] for p in POLICIES} for seed in runs[task]}
        judged = judge(task, by_seed, dict.fromkeys(by_seed, tables[task]))
        report_tasks[task] = {
            **judged,
            "oracle": planner_against_oracle(tables[task], workloads[0][task][:-1]),
            "seeds": {str(seed): policies_rows for seed, policies_rows in by_seed.items()},
        }
    report = {
        **info,
        "cluster": [{"name": n.name, "emulate": n.emulate} for n in config.nodes],
        "confidence": config.coordinator.confidence,
        "fastest_served_ips": fastest_served,  # per task, what the fastest plan served when the run began
        "seeds": args.seeds,
        "seconds": time.monotonic() - started,
        "tasks": report_tasks,
        "adaptive_dominates": all(t["adaptive"]["dominates"] for t in report_tasks.values()),
    }
    write_results(args.out, report, lambda png: _plot(report, png))
    return 0


def _plot(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()  # without matplotlib, write_results says so and writes the JSON alone
    tasks = list(report["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        t = report["tasks"][task]
        policies = list(t["targets_met"])
        ax.bar(policies, [t["targets_met"][p] for p in policies],
               color=["tab:green" if p == "adaptive" else "tab:gray" for p in policies])  # fmt: skip
        ax.axhline(t["feasible_requests"], color="black", linewidth=0.8, linestyle="--")
        ax.set_title(f"{task}: targets met of {t['feasible_requests']} feasible")
        ax.tick_params(axis="x", rotation=30)
    save(fig, path)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

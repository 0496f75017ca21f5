"""A board slows to a third of its speed, or vanishes, in the middle of a request.

    .venv/bin/python benchmarks/adaptation.py [--config cluster.toml] [--target-ips 6000] [--seconds 8]

On the config's emulated cluster, one request of `target × seconds` inputs runs while the
`rpi4` board slows to 1/3 (scenario `slow`), the same with run-time adaptation turned off
(`slow-stale`: no re-plan, no work-stealing — the plan the request started with), and while
the `rpi4` board vanishes (`vanish`: its process exits without a word). From the request's
timeline (cluster throughput in 1/50ths of its wall time) and the processes' JSON logs:
when the event happened, when the coordinator reacted (re-plan or node lost), how long the
cluster stayed under its target, and how many inputs were lost (must be 0: every input has
a prediction, and the predictions are as accurate as the plan promised). Writes
benchmarks/results/adaptation.json and adaptation.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, run_info, write_results

from edgecollab.client import Client
from edgecollab.config import load_config
from edgecollab.inspection import wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.plots import pyplot, save
from edgecollab.workload import node_rates, workload_source

BOARD = "rpi4"
EVENT_AT_S = 12.0  # after the worker starts: past registration; the request is started around it
LEAD_S = 2.5  # the request starts this long before the event
SCENARIOS = {
    "slow": ("slow=0.33", True),
    "slow-stale": ("slow=0.33", False),
    "vanish": ("vanish", True),
}
EVENT_LOGS = {"slow": "emulated speed now", "vanish": "emulating a board that vanishes"}


def write_config(base: Path, folder: Path, adapt: bool) -> Path:
    """The base config's nodes and models with adaptation on or off; the base's profile cache is reused."""
    config = load_config(base)
    text = base.read_text()
    coordinator = (
        f"[coordinator]\nheartbeat_s = 0.5\nwork_stealing = {str(adapt).lower()}\n"
        f"replan_on_drift = {str(adapt).lower()}\n"
        f'profile_cache = "{config.resolve(config.coordinator.profile_cache)}"\n'
    )
    body = text.split("[models]", 1)[1]
    manifest = f'manifest = "{config.manifest_path}"\n' if config.manifest_path else ""
    path = folder / f"adaptation-{'on' if adapt else 'off'}.toml"
    path.write_text(coordinator + "[models]\n" + manifest + body)
    return path


def log_times(path: Path, needle: str) -> list[float]:
    """Wall-clock times of the JSON log lines that contain ``needle``."""
    times = []
    for line in path.read_text().splitlines():
        if line.startswith("{") and needle in line:
            times.append(datetime.fromisoformat(json.loads(line)["ts"]).timestamp())
    return times


def time_below_target(times: list[float], rates: list[float], event_s: float, target: float, width: float) -> float:
    """Seconds after the event until the cluster's throughput (3-bin rolling mean) is back at the target."""
    smooth = [np.mean(rates[max(0, i - 1) : i + 2]) for i in range(len(rates))]
    # The last bins are the request's tail, where every request slows down: judge the steady part.
    steady = [i for i, t in enumerate(times) if t >= event_s and i < len(times) - 3]
    below = [i for i in steady if smooth[i] < target]
    return max(0.0, times[below[-1]] + width / 2 - event_s) if below else 0.0


async def one_request(endpoint: str, images: np.ndarray, target: float) -> tuple[float, Any]:
    async with Client(endpoint, timeout_s=600) as client:
        sent = time.time()
        result = await client.infer(images, target_ips=target)
    return sent, result


def run_scenario(name: str, base: Path, folder: Path, target: float, seconds: float) -> dict[str, Any]:
    change, adapt = SCENARIOS[name]
    config_path = write_config(base, folder, adapt)
    logs = folder / name
    test_set = workload_source(load_config(config_path))
    rng = np.random.default_rng(0)
    indices = rng.choice(len(test_set), int(target * seconds), replace=True)
    with LocalCluster(
        config_path, log_dir=logs, verbose=1, log_json=True, faults={BOARD: [f"{change}@{EVENT_AT_S}"]}
    ) as local:
        started = time.time()
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        time.sleep(max(0.0, started + EVENT_AT_S - LEAD_S - time.time()))
        sent, result = asyncio.run(one_request(local.clients_endpoint, test_set.inputs[indices], target))
    report = result.report
    kind = "vanish" if change == "vanish" else "slow"
    event = log_times(logs / f"{BOARD}.log", EVENT_LOGS[kind])
    event_s = event[0] - sent if event else float("nan")
    reaction_needle = f"node {BOARD} lost" if kind == "vanish" else f"({BOARD} drifted)"
    reactions = [t - sent for t in log_times(logs / "coordinator.log", reaction_needle) if t - sent >= event_s]
    times, per_node = node_rates(report["timeline"])
    rates = [sum(column) for column in zip(*per_node.values(), strict=True)]
    width = report["timeline"]["bin_s"]
    predictions = result.predictions
    return {
        "scenario": name,
        "change": change,
        "adaptation": adapt,
        "inputs": len(indices),
        "target_ips": target,
        "achieved_ips": report["achieved_ips"],
        "met": report["achieved_ips"] >= target,
        "wall_s": report["wall_s"],
        "event_s": event_s,
        "reaction_s": (reactions[0] - event_s) if reactions else None,
        "seconds_below_target_after_event": time_below_target(times, rates, event_s, target, width),
        "replans": report["replans"],
        "steals": report["steals"],
        "retries": report["retries"],
        "inputs_lost": int(len(indices) - np.count_nonzero(predictions >= 0)),
        "accuracy": float((predictions == test_set.labels[indices]).mean()),
        "expected_accuracy": report["expected_accuracy"],
        "timeline": {"t_s": times, "cluster_ips": rates},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--target-ips", type=float, default=6000.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="request length at the target")
    parser.add_argument("--out", type=Path, default=RESULTS / "adaptation.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecollab-adaptation-") as tmp:
        for name in SCENARIOS:
            row = run_scenario(name, args.config.resolve(), Path(tmp), args.target_ips, args.seconds)
            rows.append(row)
            reaction = f"{row['reaction_s']:.2f} s" if row["reaction_s"] is not None else "none"
            print(
                f"{name:>10}: {row['achieved_ips']:>6,.0f} inf/s for a target of {row['target_ips']:,.0f}"
                f" ({'met' if row['met'] else 'missed'}); event at {row['event_s']:.2f} s, reaction {reaction},"
                f" {row['seconds_below_target_after_event']:.2f} s below target, {row['inputs_lost']} inputs lost",
                file=sys.stderr,
            )
    out = {
        **run_info(),
        "config": str(args.config),
        "board": BOARD,
        "rows": rows,
    }
    write_results(args.out, out, lambda path: _plot(rows, path))
    return 0 if all(r["inputs_lost"] == 0 for r in rows) else 1


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for row, colour in zip(rows, ("tab:green", "tab:red", "tab:blue"), strict=False):
        ax.plot(row["timeline"]["t_s"], row["timeline"]["cluster_ips"], color=colour, label=row["scenario"])
        ax.axvline(row["event_s"], color=colour, ls=":", lw=1)
    ax.axhline(rows[0]["target_ips"], color="k", ls="--", lw=1, label="target")
    ax.set_xlabel("seconds since the request arrived (dotted: the event)")
    ax.set_ylabel("cluster inferences/s")
    ax.set_title(f"{BOARD} slows to 1/3 or vanishes mid-request")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())

"""One coordinator from 4 to 128 boards: its CPU per shard, per request and per frame, the plan's solve
time, efficiency against the limit, latency, and where it saturates.

    .venv/bin/python benchmarks/scale.py [--boards 4,16,64,128] [--cameras 32] [--duration 10]

For each count N: a coordinator (a process of its own) and N emulated boards, the default cluster's
three profiles in turn, run by ``edgecollab fleet --stand-ins`` in one process: each board has its own
connection, heartbeats and cost model, and computes with the cheapest variant of the task while its
cost model for the variant asked for sets the time (the host's two cores cannot compute for 128
boards; predictions are then the cheap variant's, which this benchmark does not score). On each,
first the coordinator's share of a core with no work for 5 s (heartbeats, ticks and liveness of N
boards: a fixed cost, which per frame is larger the fewer frames share it); then:

1. a large request (``--inputs``, the fastest plan): achieved throughput over the limit (each board's
   profiled speed at the variant the plan gave it, summed), and the coordinator's CPU per shard;
2. one-input requests, 32 in flight for ``--duration`` s: requests/s, p99, coordinator CPU per request;
3. ``--cameras`` cameras at 30 fps for ``--duration`` s from another process (``edgecollab stream``):
   worst-source p99 and the coordinator's CPU per frame, beside the camera process's, and the frames
   per micro-batch (the variant the plan runs them on sets it, and per-batch work is most of the cost);
4. the joint plan for 32 demands on the coordinator's own table: its solve time;
5. churn: the cameras again, while one board (a worker process of its own, the last of the N) is killed
   a third of the way in (no goodbye: its connection closes) and started again two thirds in (it
   registers, takes its cached profile and joins the plan): the others' frames, p99 and longest
   wait beside the steady run's.

The coordinator's share of a core in each phase, and the machine's, say what saturates.
Writes benchmarks/results/scale.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import MANIFEST, RESULTS, cpu_seconds, drive, machine_busy_s, run_info, write_results

from edgecollab.client import Client
from edgecollab.inspection import ask, table_from_rows, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.planner.joint import Demand, plan_jointly
from edgecollab.plots import pyplot, save

PROFILES = ("odroid-xu4", "rpi4", "jetson-nano")
VARIANTS = ("mlp-64", "cnn-8", "resnet-8")
PLAN_DEMANDS = 32
IDLE_S = 5.0  # seconds the coordinator's idle share is read over, before the phases
IN_FLIGHT = 32


def write_config(folder: Path, boards: int) -> Path:
    lines = ["[coordinator]", "startup_timeout_s = 300", "[models]", f'manifest = "{MANIFEST}"']
    for k in range(boards):
        lines += ["[[nodes]]", f'name = "b{k:03d}"', f'emulate = "{PROFILES[k % len(PROFILES)]}"',
                  f"variants = {list(VARIANTS)!r}".replace("'", '"')]  # fmt: skip
    path = folder / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def phase(pid: int, run: Any, per: str, count_of: Any) -> dict[str, Any]:
    """Run ``run()``; what it returned, with the coordinator's CPU per ``per`` (``count_of`` the result
    gives how many), its share of a core and the machine's busy cores meanwhile."""
    cpu, busy, started = cpu_seconds(pid), machine_busy_s(), time.monotonic()
    value = run()
    cpu, busy, wall = cpu_seconds(pid) - cpu, machine_busy_s() - busy, time.monotonic() - started
    return {
        **value,
        f"coordinator_cpu_ms_per_{per}": cpu / max(count_of(value), 1) * 1e3,
        "coordinator_core_share": cpu / wall,
        "machine_cores_busy": busy / wall,
    }


def idle_share(pid: int, seconds: float) -> float:
    """The coordinator's share of a core with boards and no work: its heartbeats, ticks and liveness checks."""
    cpu = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu) / seconds


def large_request(endpoint: str, inputs: int) -> dict[str, Any]:
    async def go() -> Any:
        async with Client(endpoint, timeout_s=600) as client:
            images = np.random.default_rng(0).integers(0, 256, (inputs, 1, 28, 28)).astype(np.uint8)
            return await client.infer(images, target_ips=1e7)

    result = asyncio.run(go())
    table = table_from_rows(ask(endpoint, "table")["rows"])
    # Each board's own speed for what it ran (its variants in the proportions it ran them), summed.
    seconds: dict[str, float] = {}
    inputs_of: dict[str, int] = {}
    for a in result.report["assignment"]:
        if a["inputs"]:
            seconds[a["node"]] = seconds.get(a["node"], 0.0) + a["inputs"] / table.ips(a["node"], a["variant"])
            inputs_of[a["node"]] = inputs_of.get(a["node"], 0) + a["inputs"]
    limit = sum(inputs_of[n] / seconds[n] for n in seconds)
    return {
        "inputs": inputs,
        "achieved_ips": result.achieved_ips,
        "limit_ips": limit,
        "efficiency": result.achieved_ips / limit if limit else None,
        "boards_used": len({a["node"] for a in result.report["assignment"] if a["inputs"]}),
        "shards": sum(int(a["shards"]) for a in result.report["assignment"]),
    }


def one_input_requests(endpoint: str, duration: float) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with Client(endpoint, timeout_s=120) as client:
            return await drive(client.infer, 1, IN_FLIGHT, duration)

    return asyncio.run(go())


def cameras(config: Path, endpoint: str, count: int, duration: float) -> dict[str, Any]:
    """``count`` 30 fps cameras from another process; their totals with that process's CPU seconds."""
    command = [sys.executable, "-m", "edgecollab", "stream", "--config", str(config), "--coordinator", endpoint,
               "--sources", str(count), "--fps", "30", "--duration", str(duration), "--json"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # children ended and waited for: this one, once done
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 300, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(done.stdout)["total"], "client_cpu_s": cpu}


def cameras_with_churn(
    config: Path, endpoint: str, count: int, duration: float, local: LocalCluster, board: str
) -> dict[str, Any]:
    """The cameras while ``board`` is killed at a third of the run and started again at two thirds."""
    command = [sys.executable, "-m", "edgecollab", "stream", "--config", str(config), "--coordinator", endpoint,
               "--sources", str(count), "--fps", "30", "--duration", str(duration), "--json"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stream = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(duration / 3)
    local.workers[board].kill()
    local.workers[board].wait()
    left_at = time.monotonic()
    time.sleep(duration / 3)
    local.start_worker(board)
    joined = _serving(endpoint, board, timeout_s=duration)
    out, _ = stream.communicate(timeout=duration + 300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(out)["total"], "client_cpu_s": cpu, "rejoined_s": joined - left_at if joined else None}


def _serving(endpoint: str, board: str, timeout_s: float) -> float | None:
    """When ``board`` serves again (monotonic time), or None if not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(n["name"] == board and n["status"] == "serving" for n in ask(endpoint, "status")["nodes"]):
            return time.monotonic()
        time.sleep(0.1)
    return None


def solve_time(endpoint: str) -> dict[str, Any]:
    """The joint plan for PLAN_DEMANDS demands on the coordinator's own table (median of 3)."""
    table = table_from_rows(ask(endpoint, "table")["rows"])
    nodes = table.nodes()
    fastest = sum(max(table.ips(n, v) for v in table.variants_of(n)) for n in nodes)
    demands = [Demand(f"d{k}", fastest / (2 * PLAN_DEMANDS)) for k in range(PLAN_DEMANDS)]
    times = []
    for _ in range(3):
        plan = plan_jointly(table, demands, nodes)
        times.append(plan.solve_s)
    return {"demands": PLAN_DEMANDS, "nodes": len(nodes), "solve_ms": float(np.median(times)) * 1e3,
            "loss_to_bound": plan.loss_to_bound}  # fmt: skip


def run_count(boards: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        config = write_config(Path(folder), boards)
        churned = f"b{boards - 1:03d}"  # the last board runs as a worker process of its own: it leaves and joins
        with LocalCluster(config, nodes=[churned], log_dir=Path(folder) / "logs") as local:
            fleet = subprocess.Popen(
                [sys.executable, "-m", "edgecollab", "fleet", "--config", str(config), "--coordinator",
                 local.workers_endpoint, "--stand-ins", "--boards", str(boards - 1)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                started = time.monotonic()
                wait_until_ready(local.clients_endpoint, timeout_s=900)
                ready_s = time.monotonic() - started
                assert local.coordinator is not None
                pid = local.coordinator.pid
                row: dict[str, Any] = {"boards": boards, "ready_s": ready_s}
                endpoint = local.clients_endpoint
                row["idle_coordinator_cores"] = idle_share(pid, IDLE_S)
                row["large"] = phase(pid, lambda: large_request(endpoint, args.inputs), "shard", lambda v: v["shards"])
                row["one_input"] = phase(
                    pid, lambda: one_input_requests(endpoint, args.duration), "request", lambda v: v["requests"]
                )
                batches = ask(endpoint, "status")["counters"].get("frame_batches", 0)
                row["streams"] = phase(
                    pid, lambda: cameras(config, endpoint, args.cameras, args.duration), "frame", lambda v: v["frames"]
                )
                batches = ask(endpoint, "status")["counters"].get("frame_batches", 0) - batches
                row["streams"]["frames_per_batch"] = row["streams"]["results"] / max(batches, 1)
                row["streams"]["client_cpu_ms_per_frame"] = (
                    row["streams"].pop("client_cpu_s") / max(row["streams"]["frames"], 1) * 1e3
                )
                row["plan"] = solve_time(local.clients_endpoint)
                row["churn"] = phase(
                    pid, lambda: cameras_with_churn(config, endpoint, args.cameras, args.duration, local, churned),
                    "frame", lambda v: v["frames"],
                )  # fmt: skip
                row["churn"]["client_cpu_ms_per_frame"] = (
                    row["churn"].pop("client_cpu_s") / max(row["churn"]["frames"], 1) * 1e3
                )
            finally:
                fleet.terminate()
                fleet.wait(timeout=60)
    print(json.dumps(row), file=sys.stderr)
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    boards = [r["boards"] for r in rows]
    axes[0].plot(boards, [r["large"]["coordinator_cpu_ms_per_shard"] for r in rows], marker="o", label="per shard")
    axes[0].plot(boards, [r["one_input"]["coordinator_cpu_ms_per_request"] for r in rows], marker="s",
                 label="per one-input request")  # fmt: skip
    axes[0].plot(boards, [r["streams"]["coordinator_cpu_ms_per_frame"] for r in rows], marker="^", label="per frame")
    axes[0].set_ylabel("coordinator CPU (ms)")
    axes[1].plot(boards, [r["large"]["efficiency"] for r in rows], marker="o")
    axes[1].set_ylabel("large request: throughput / limit")
    axes[2].plot(boards, [r["streams"]["worst_source_p99_ms"] for r in rows], marker="^", label="worst camera p99")
    axes[2].plot(boards, [r["one_input"]["p99_ms"] for r in rows], marker="s", label="one-input request p99")
    axes[2].plot(boards, [r["churn"]["worst_source_p99_ms"] for r in rows], marker="v", linestyle="--",
                 label="worst camera p99, a board leaving and joining")  # fmt: skip
    axes[2].set_ylabel("ms")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("boards")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", default="4,16,64,128")
    parser.add_argument("--cameras", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    rows = [run_count(int(n), args) for n in args.boards.split(",")]
    results = {
        **run_info(),
        "setup": {
            "profiles": PROFILES,
            "variants": VARIANTS,
            "cameras": args.cameras,
            "duration_s": args.duration,
            "inputs": args.inputs,
            "in_flight": IN_FLIGHT,
            "stand_ins": True,
        },
        "counts": rows,
    }
    write_results(args.out, results, lambda path: plot(rows, path))


if __name__ == "__main__":
    main()

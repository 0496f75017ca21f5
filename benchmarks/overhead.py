"""Per-request and per-shard cost of the coordinator, with a trivial model and no emulation.

    .venv/bin/python benchmarks/overhead.py [--requests 300]

Two un-emulated workers on this machine run `linear-7x7` (490 MACs per input: next to nothing),
so what is measured is edgecollab itself: framing, sockets, the coordinator's book-keeping.
For shard sizes 1, 32 and 256: shard round-trips per second through coordinator and workers,
and the coordinator's CPU time per shard (from /proc, user + system). Then sequential
one-input requests: request round-trips per second, their latency, the coordinator's CPU
time per request and joint-plan solves per request. Writes
benchmarks/results/overhead.json and overhead.png.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import MANIFEST, RESULTS, cpu_seconds, run_info, write_results

from edgecollab.client import Client
from edgecollab.inspection import wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.plots import pyplot, save

SHARD_SIZES = (1, 32, 256)
# Inputs per measured request: enough shards for a steady state, a few seconds each.
INPUTS = {1: 3_000, 32: 60_000, 256: 200_000}


def write_config(folder: Path, shard_size: int) -> Path:
    lines = [
        "[coordinator]",
        f"shard_size = {shard_size}",
        "shard_seconds = 0",  # every shard exactly shard_size: the per-shard cost is what is measured
        "profile_shards = 3",
        f'[models]\nmanifest = "{MANIFEST}"',
    ]
    for name in ("worker-a", "worker-b"):
        lines += ["[[nodes]]", f'name = "{name}"', 'variants = ["linear-7x7"]']
    path = folder / f"overhead-{shard_size}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def measure(endpoint: str, pid: int, inputs: int, shard_size: int, small_requests: int) -> dict[str, Any]:
    images = np.zeros((inputs, 1, 28, 28), np.uint8)
    async with Client(endpoint, timeout_s=600) as client:
        await client.infer(images[:1000])  # warm
        cpu, started = cpu_seconds(pid), time.perf_counter()
        result = await client.infer(images)
        wall, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
        shards = sum(a["shards"] for a in result.report["assignment"])
        row: dict[str, Any] = {
            "shard_size": shard_size,
            "inputs": inputs,
            "shards": shards,
            "wall_s": wall,
            "shards_per_s": shards / wall,
            "inputs_per_s": inputs / wall,
            "coordinator_cpu_s": cpu,
            "coordinator_cpu_us_per_shard": cpu / shards * 1e6,
            "coordinator_cpu_us_per_input": cpu / inputs * 1e6,
        }
        if small_requests:
            latencies = []
            solves = (await client.query("status"))["counters"].get("solves", 0)
            cpu = cpu_seconds(pid)
            for _ in range(small_requests):
                t = time.perf_counter()
                await client.infer(images[:1])
                latencies.append(time.perf_counter() - t)
            cpu = cpu_seconds(pid) - cpu
            solves = (await client.query("status"))["counters"].get("solves", 0) - solves
            row["one_input_requests"] = {
                "solves_per_request": solves / small_requests,
                "requests": small_requests,
                "requests_per_s": small_requests / sum(latencies),
                "latency_ms_p50": statistics.median(latencies) * 1e3,
                "latency_ms_p99": float(np.percentile(latencies, 99)) * 1e3,
                "coordinator_cpu_us_per_request": cpu / small_requests * 1e6,
            }
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="sequential one-input requests")
    parser.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecollab-overhead-") as tmp:
        for shard_size in SHARD_SIZES:
            config = write_config(Path(tmp), shard_size)
            with LocalCluster(config, log_dir=Path(tmp) / "logs") as local:
                wait_until_ready(local.clients_endpoint, timeout_s=300)
                assert local.coordinator is not None
                small = args.requests if shard_size == 32 else 0
                row = asyncio.run(
                    measure(local.clients_endpoint, local.coordinator.pid, INPUTS[shard_size], shard_size, small)
                )
            rows.append(row)
            print(
                f"shard size {shard_size:>3}: {row['shards_per_s']:>8,.0f} shards/s, {row['inputs_per_s']:>9,.0f}"
                f" inputs/s, coordinator {row['coordinator_cpu_us_per_shard']:,.0f} µs CPU per shard",
                file=sys.stderr,
            )
            if "one_input_requests" in row:
                r = row["one_input_requests"]
                print(
                    f"one-input requests: {r['requests_per_s']:,.0f}/s, p50 {r['latency_ms_p50']:.2f} ms,"
                    f" p99 {r['latency_ms_p99']:.2f} ms, {r['coordinator_cpu_us_per_request']:,.0f} µs CPU each,"
                    f" {r['solves_per_request']:.3f} joint-plan solves each",
                    file=sys.stderr,
                )
    out = {
        **run_info(),
        "model": "linear-7x7 (490 MACs), two un-emulated workers on this machine",
        "rows": rows,
    }
    write_results(args.out, out, lambda path: _plot(rows, path))
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    names = [str(r["shard_size"]) for r in rows]
    left.bar(names, [r["shards_per_s"] for r in rows], color="tab:blue")
    left.set_title("shard round-trips per second")
    left.set_xlabel("shard size (inputs)")
    right.bar(names, [r["coordinator_cpu_us_per_shard"] for r in rows], color="tab:orange")
    right.set_title("coordinator CPU per shard (µs)")
    right.set_xlabel("shard size (inputs)")
    for ax, key in ((left, "shards_per_s"), (right, "coordinator_cpu_us_per_shard")):
        for i, r in enumerate(rows):
            ax.text(i, r[key], f"{r[key]:,.0f}", ha="center", va="bottom", fontsize=9)
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())

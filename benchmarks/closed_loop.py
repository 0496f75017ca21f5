"""Closed loop through the real request path: client → coordinator → workers, at batch 1, 32 and 256.

    .venv/bin/python benchmarks/closed_loop.py [--in-flight 8] [--duration 10] [--variant cnn-8]

The load of the serving-system comparison (benchmarks/peers.py has Ray Serve and PyTriton on it):
one model variant, four un-emulated workers on this machine, ``--in-flight`` requests
outstanding at all times (a new one is sent as soon as one is answered), for ``--duration``
seconds per batch size. Reports requests/s, inputs/s, the round trip (p50, p99) and the
coordinator's and the client's CPU per request (from /proc and the process's own clock).
Planning, adaptation, exactly-once and (with ``[security]``) CURVE stay as they always are.

Writes benchmarks/results/closed_loop.json and closed_loop.png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import RESULTS, cpu_seconds, drive, run_info, unemulated_config, write_results

from edgecollab.client import Client
from edgecollab.inspection import ask, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.plots import pyplot, save

BATCHES = (1, 32, 256)


async def closed_loop(endpoint: str, batch: int, in_flight: int, duration: float) -> dict[str, Any]:
    async with Client(endpoint, timeout_s=120) as client:
        return await drive(client.infer, batch, in_flight, duration)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--variant", default="cnn-8")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "closed_loop.json")
    args = parser.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as folder,
        LocalCluster(unemulated_config(Path(folder), args.variant, args.workers)) as local,
    ):
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        assert local.coordinator is not None
        pid = local.coordinator.pid
        for batch in BATCHES:
            before, cpu = ask(local.clients_endpoint, "status")["counters"], cpu_seconds(pid)
            row = asyncio.run(closed_loop(local.clients_endpoint, batch, args.in_flight, args.duration))
            after, cpu = ask(local.clients_endpoint, "status")["counters"], cpu_seconds(pid) - cpu
            row["coordinator_cpu_ms_per_request"] = cpu / (row["requests"] + 1) * 1e3
            row["solves_per_request"] = (after.get("solves", 0) - before.get("solves", 0)) / (row["requests"] + 1)
            rows.append(row)
            print(
                f"batch {batch:3}: {row['requests_per_s']:,.0f} requests/s, {row['inputs_per_s']:,.0f} inputs/s, "
                f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, coordinator "
                f"{row['coordinator_cpu_ms_per_request']:.2f} ms and client {row['client_cpu_ms_per_request']:.2f} ms "
                f"CPU per request, {row['solves_per_request']:.3f} solves per request",
                file=sys.stderr,
            )
    out = {**run_info(), "variant": args.variant, "workers": args.workers, "in_flight": args.in_flight, "rows": rows}
    write_results(args.out, out, lambda path: _plot(rows, path))
    return 0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"batch {r['batch']}" for r in rows]
    left.bar(labels, [r["inputs_per_s"] for r in rows], color="tab:blue")
    left.set_ylabel("inputs/s")
    left.set_title("closed loop, 8 in flight")
    right.bar(labels, [r["coordinator_cpu_ms_per_request"] for r in rows], color="tab:orange", label="coordinator")
    right.bar(labels, [r["client_cpu_ms_per_request"] for r in rows], color="tab:gray", alpha=0.6, label="client")
    right.set_ylabel("CPU ms per request")
    right.legend()
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())

"""Many tenants on the default emulated cluster: small requests from many sources, and joint plans.

    .venv/bin/python benchmarks/tenants.py [--config cluster.toml] [--sources 8] [--rate 30] [--duration 10]

1. **Many small requests**: ``--sources`` sources each send one-input requests, open loop, at
   ``--rate`` per second for ``--duration`` seconds (every request sent on time, whether or not
   the previous one was answered). Reports requests served, refused ``busy`` or failed, the round
   trip (p50, p99), boards lost, joint-plan solves per request and the coordinator's CPU time per
   request (from /proc, user + system).
2. **Joint plans**: a tight request (``--tight``, default 30,000 inputs at 7,000 inf/s) alone, then
   together with a loose one (``--loose``, default 1,500 at 150): achieved throughput, targets met,
   and the tight one's expected accuracy (its variant mix) alone and together.

Writes benchmarks/results/tenants.json and tenants.png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, cpu_seconds, run_info, write_results

from edgecollab.client import Client, InferenceResult
from edgecollab.config import load_config
from edgecollab.errors import RequestFailed
from edgecollab.inspection import ask, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.plots import pyplot, save
from edgecollab.zoo import load_manifest, load_test_set


async def small_requests(
    endpoint: str, images: np.ndarray, sources: int, rate: float, duration: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one(client: Client, image: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            await client.infer(image[None])
            latencies.append(time.perf_counter() - started)
        except RequestFailed as exc:
            errors[exc.code] = errors.get(exc.code, 0) + 1

    async def source(k: int) -> None:
        async with Client(endpoint, timeout_s=60) as client:
            pending = []
            begin = time.perf_counter() + k / (sources * rate)  # sources spread over the interval
            for i in range(int(duration * rate)):
                await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
                pending.append(asyncio.create_task(one(client, images[(k * 1000 + i) % len(images)])))
            await asyncio.gather(*pending)

    await asyncio.gather(*(source(k) for k in range(sources)))
    sent = sources * int(duration * rate)
    return {
        "sources": sources,
        "rate_per_source": rate,
        "duration_s": duration,
        "sent": sent,
        "served": len(latencies),
        "errors": errors,
        "round_trip_ms_p50": float(np.percentile(latencies, 50) * 1e3) if latencies else None,
        "round_trip_ms_p99": float(np.percentile(latencies, 99) * 1e3) if latencies else None,
        "round_trip_ms_max": float(max(latencies) * 1e3) if latencies else None,
    }


async def joint(
    endpoint: str, images: np.ndarray, tight: tuple[int, float], loose: tuple[int, float]
) -> dict[str, Any]:
    def pick(n: int) -> np.ndarray:
        return images[np.arange(n) % len(images)]

    def row(result: InferenceResult, target: float) -> dict[str, Any]:
        r = result.report
        return {
            "inputs": r["inputs"],
            "target_ips": target,
            "achieved_ips": r["achieved_ips"],
            "met": r["achieved_ips"] >= target,
            "expected_accuracy": r["expected_accuracy"],
            "served_accuracy": r["served_accuracy"],
            "variants": result.per_node,
        }

    async with Client(endpoint, timeout_s=300) as client:
        alone = await client.infer(pick(tight[0]), target_ips=tight[1])
        together_tight, together_loose = await asyncio.gather(
            client.infer(pick(tight[0]), target_ips=tight[1]), client.infer(pick(loose[0]), target_ips=loose[1])
        )
    return {
        "tight_alone": row(alone, tight[1]),
        "tight_together": row(together_tight, tight[1]),
        "loose_together": row(together_loose, loose[1]),
        "accuracy_change_points": (together_tight.report["expected_accuracy"] - alone.report["expected_accuracy"])
        * 100,
    }


def parse_pair(text: str) -> tuple[int, float]:
    inputs, _, ips = text.partition("@")
    return int(inputs), float(ips)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--rate", type=float, default=30.0, help="one-input requests per second per source")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--tight", type=parse_pair, default=(30_000, 7_000.0), help="INPUTS@IPS")
    parser.add_argument("--loose", type=parse_pair, default=(1_500, 150.0), help="INPUTS@IPS")
    parser.add_argument("--out", type=Path, default=RESULTS / "tenants.json")
    args = parser.parse_args()

    config = load_config(args.config)
    manifest = load_manifest(config.manifest_path)
    images = load_test_set(manifest, manifest.tasks[config.models.task]).inputs
    with LocalCluster(args.config) as local:
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        assert local.coordinator is not None
        pid = local.coordinator.pid
        asyncio.run(joint(local.clients_endpoint, images, (3000, 1000.0), (300, 100.0)))  # warm the table
        before, cpu = ask(local.clients_endpoint, "status")["counters"], cpu_seconds(pid)
        small = asyncio.run(small_requests(local.clients_endpoint, images, args.sources, args.rate, args.duration))
        after, cpu = ask(local.clients_endpoint, "status")["counters"], cpu_seconds(pid) - cpu
        small["coordinator_cpu_ms_per_request"] = cpu / small["sent"] * 1e3
        small["solves"] = after.get("solves", 0) - before.get("solves", 0)
        small["solves_per_request"] = small["solves"] / small["sent"]
        small["nodes_lost"] = after.get("nodes_lost", 0) - before.get("nodes_lost", 0)
        small["busy"] = after.get("busy", 0) - before.get("busy", 0)
        plans = asyncio.run(joint(local.clients_endpoint, images, args.tight, args.loose))
    print(
        f"small requests: {small['served']}/{small['sent']} served, errors {small['errors'] or 'none'}, "
        f"p50 {small['round_trip_ms_p50']:.1f} ms, p99 {small['round_trip_ms_p99']:.1f} ms, "
        f"{small['coordinator_cpu_ms_per_request']:.2f} ms CPU and {small['solves_per_request']:.3f} solves "
        f"per request, boards lost {small['nodes_lost']}",
        file=sys.stderr,
    )
    for name in ("tight_alone", "tight_together", "loose_together"):
        r = plans[name]
        print(
            f"{name}: {r['achieved_ips']:,.0f} inf/s for {r['target_ips']:,.0f} ({'met' if r['met'] else 'missed'}),"
            f" expected accuracy {r['expected_accuracy'] * 100:.2f} %",
            file=sys.stderr,
        )
    out = {**run_info(), "config": str(args.config), "small_requests": small, "joint": plans}
    write_results(args.out, out, lambda path: _plot(small, plans, path))
    return 0


def _plot(small: dict[str, Any], plans: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = ["p50", "p99", "max"]
    values = [small[f"round_trip_ms_{n}"] for n in names]
    left.bar(names, values, color="tab:blue")
    left.axhline(100, color="tab:red", linestyle="--", label="100 ms")
    left.set_title(f"{small['sources']} sources × {small['rate_per_source']:g}/s one-input requests")
    left.set_ylabel("round trip (ms)")
    left.legend()
    rows = ["tight_alone", "tight_together", "loose_together"]
    achieved = [plans[r]["achieved_ips"] / plans[r]["target_ips"] for r in rows]
    right.bar(["tight alone", "tight + loose", "loose + tight"], achieved, color="tab:green")
    right.axhline(1.0, color="tab:red", linestyle="--", label="target")
    right.set_title("achieved ÷ target")
    for i, r in enumerate(rows):
        right.text(i, achieved[i], f"{plans[r]['expected_accuracy'] * 100:.2f} %", ha="center", va="bottom")
    right.legend()
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())

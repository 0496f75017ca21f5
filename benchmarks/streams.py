"""Camera streams on the default emulated cluster: the 32 × 30 fps run, and the sources-vs-accuracy curve.

    .venv/bin/python benchmarks/streams.py [--config cluster.toml] [--sources 32] [--fps 30] [--duration 30]
                                           [--large 256] [--sweep 8,16,32,48,64,96,128,192,256] [--sweep-duration 10]
                                           [--faster 45,60,90,120]

1. **The run**: ``--sources`` simulated cameras (``edgecollab.cameras``, as ``edgecollab stream``
   runs them) each send test-set frames at ``--fps`` for ``--duration`` seconds, with the default
   100 ms latency bound. Reports per source frames, answers, drops, p50/p99 latency (send to
   answer, at the client), accuracy against the labels, and CPU per frame from /proc: the
   coordinator's (a process of its own) and the cameras' (this process).
   Then the same for ``--large`` cameras (the load one coordinator should carry on this machine).
2. **The sweep**: for each count in ``--sweep``, that many 30 fps cameras admitted with
   ``degrade`` for ``--sweep-duration`` s: accuracy and p99 as the load grows — the plan should
   lower accuracy (cheaper variants) before latency grows — and the largest count served with
   every frame answered and p99 ≤ 100 ms.
3. **Past the streams' limit**: ``--large`` cameras (the default ``max_streams``) at each rate of
   ``--faster`` fps, ``--sweep-duration`` s each, ``degrade``: where one coordinator on this machine
   stops answering every frame within 100 ms, and the CPU of the coordinator, the camera process and
   the whole machine there — what saturates.

Writes benchmarks/results/streams.json and streams.png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, cpu_seconds, machine_busy_s, run_info, write_results

from edgecollab.cameras import CameraSpec, run_cameras, totals
from edgecollab.config import load_config
from edgecollab.inspection import ask, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.plots import pyplot, save
from edgecollab.zoo import LabelledSet, load_manifest, load_test_set

LATENCY_BOUND_MS = 100.0


def run_once(endpoint: str, pid: int, test_set: LabelledSet, spec: CameraSpec) -> dict[str, Any]:
    before, cpu, client_cpu = ask(endpoint, "status")["counters"], cpu_seconds(pid), time.process_time()
    tallies = asyncio.run(run_cameras(endpoint, test_set, spec))
    client_cpu = time.process_time() - client_cpu  # the cameras run in this process, the coordinator in its own
    after, cpu = ask(endpoint, "status")["counters"], cpu_seconds(pid) - cpu
    total = totals(tallies)
    total["coordinator_cpu_ms_per_frame"] = cpu / max(total["frames"], 1) * 1e3
    total["client_cpu_ms_per_frame"] = client_cpu / max(total["frames"], 1) * 1e3
    for name in ("solves", "frame_batches", "nodes_lost", "frames_resent"):
        total[name] = after.get(name, 0) - before.get(name, 0)
    total["frames_per_batch"] = total["results"] / max(total["frame_batches"], 1)
    total["all_answered"] = total["results"] == total["frames"] and total["dropped"] == 0
    total["within_bound"] = total["all_answered"] and (total["worst_source_p99_ms"] or 1e9) <= LATENCY_BOUND_MS
    return {"spec": vars(spec), "streams": [t.row() for t in tallies], "total": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--sources", type=int, default=32)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--large", type=int, default=256, help="cameras of the second run (0 for none)")
    parser.add_argument(
        "--sweep", default="8,16,32,48,64,96,128,192,256", help="camera counts for the curve ('' for none)"
    )
    parser.add_argument("--sweep-duration", type=float, default=10.0)
    parser.add_argument("--faster", default="45,60,90,120", help="fps of the --large cameras past 30 ('' for none)")
    parser.add_argument("--out", type=Path, default=RESULTS / "streams.json")
    args = parser.parse_args()

    config = load_config(args.config)
    manifest = load_manifest(config.manifest_path)
    test_set = load_test_set(manifest, manifest.tasks[config.models.task])
    sweep: list[dict[str, Any]] = []
    with LocalCluster(args.config) as local:
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        assert local.coordinator is not None
        pid = local.coordinator.pid
        endpoint = local.clients_endpoint
        run_once(endpoint, pid, test_set, CameraSpec(4, args.fps, 2.0))  # warm up sessions and the table
        main_run = run_once(endpoint, pid, test_set, CameraSpec(args.sources, args.fps, args.duration))
        _report(args.sources, args.fps, args.duration, main_run["total"])
        large_run = None
        if args.large:
            large_run = run_once(endpoint, pid, test_set, CameraSpec(args.large, args.fps, args.duration))
            _report(args.large, args.fps, args.duration, large_run["total"])
        for count in [int(c) for c in args.sweep.split(",") if c.strip()]:
            point = run_once(endpoint, pid, test_set, CameraSpec(count, 30.0, args.sweep_duration, degrade=True))
            sweep.append({"sources": count, **point["total"]})
            p = point["total"]
            print(
                f"sweep {count} x 30 fps: p99 {p['p99_ms']:.1f} ms, accuracy {p['accuracy'] * 100:.2f} %, "
                f"answered {p['results']}/{p['frames']}, dropped {p['dropped']}",
                file=sys.stderr,
            )
        faster: list[dict[str, Any]] = []
        for fps in [float(f) for f in args.faster.split(",") if f.strip()] if args.large else []:
            busy = machine_busy_s()
            started = time.monotonic()
            point = run_once(endpoint, pid, test_set, CameraSpec(args.large, fps, args.sweep_duration, degrade=True))
            cores = (machine_busy_s() - busy) / (time.monotonic() - started)
            faster.append({"fps_per_source": fps, **point["total"], "machine_cores_busy": cores})
            _report(args.large, fps, args.sweep_duration, point["total"])
    served = [p["sources"] for p in sweep if p["within_bound"]]
    out = {
        **run_info(),
        "config": str(args.config),
        "run": main_run,
        "large_run": large_run,
        "sweep": sweep,
        "largest_sources_within_100ms": max(served, default=None),
        "faster": faster,
        "largest_frames_per_s_within_100ms": max(
            (p["sources"] * p["fps_per_source"] for p in faster if p["within_bound"]), default=None
        ),
    }
    write_results(args.out, out, lambda path: _plot(main_run, large_run, sweep, path))
    return 0


def _report(sources: int, fps: float, duration: float, t: dict[str, Any]) -> None:
    print(
        f"{sources} x {fps:g} fps for {duration:g} s: {t['results']:,}/{t['frames']:,} answered, "
        f"{t['dropped']} dropped, p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms, worst source p99 "
        f"{t['worst_source_p99_ms']:.1f} ms, accuracy {t['accuracy'] * 100:.2f} %, CPU per frame "
        f"{t['coordinator_cpu_ms_per_frame']:.3f} ms coordinator / {t['client_cpu_ms_per_frame']:.3f} ms cameras, "
        f"{t['frames_per_batch']:.1f} frames per batch",
        file=sys.stderr,
    )


def _plot(main_run: dict[str, Any], large_run: dict[str, Any] | None, sweep: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    runs = [main_run, *([large_run] if large_run else [])]
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(5.5 * (len(runs) + 1), 3.8))
    for left, run in zip(axes, runs, strict=False):
        rows = run["streams"]
        left.bar([r["source"] for r in rows], [r["p99_ms"] for r in rows], color="tab:blue", label="p99")
        left.plot([r["source"] for r in rows], [r["p50_ms"] for r in rows], "k.", label="p50")
        left.axhline(LATENCY_BOUND_MS, color="tab:red", linestyle="--", label="100 ms")
        spec = run["spec"]
        left.set_title(f"{spec['sources']} cameras × {spec['fps']:g} fps, {spec['duration_s']:g} s")
        left.set_xlabel("source")
        left.set_ylabel("latency (ms)")
        left.legend()
    right = axes[-1]
    if sweep:
        counts = [p["sources"] for p in sweep]
        right.plot(counts, [p["p99_ms"] for p in sweep], "o-", color="tab:blue", label="p99 latency")
        right.axhline(LATENCY_BOUND_MS, color="tab:red", linestyle="--")
        right.set_xlabel("30 fps cameras")
        right.set_ylabel("p99 latency (ms)")
        accuracy = right.twinx()
        accuracy.plot(counts, [p["accuracy"] * 100 for p in sweep], "s-", color="tab:green", label="accuracy")
        accuracy.set_ylabel("accuracy (%)")
        right.set_yscale("log")
        right.set_title("more cameras (10 s each, degrade): p99 and accuracy")
        right.legend(loc="upper left")
        accuracy.legend(loc="upper right")
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())

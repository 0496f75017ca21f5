"""What every benchmark does with its results: record how it ran, write the JSON, draw the plot."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecollab.errors import EdgecollabError

RESULTS = Path(__file__).resolve().parent / "results"
MANIFEST = Path(__file__).resolve().parents[1] / "models" / "zoo.toml"
TICKS = os.sysconf("SC_CLK_TCK")


def run_info() -> dict[str, Any]:
    """How a result was produced: the commit it ran on (and whether the tree differed from it), the date,
    the command line, and the machine (CPU model, core count, Python)."""
    script = Path(sys.argv[0]).name
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    # Only the code counts: results and docs change after a run without changing what ran.
    code = ("edgecollab", "benchmarks/*.py", ":(exclude)benchmarks/render.py", "models", "cluster.toml")
    dirty = git("status", "--porcelain", "--", *code)
    return {
        "commit": git("rev-parse", "HEAD") or "unknown",
        "code_modified": bool(dirty),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def write_results(path: Path, results: dict[str, Any], plot: Callable[[Path], None]) -> None:
    """The JSON at ``path`` and, when matplotlib is there, the plot beside it as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    try:
        plot(path.with_suffix(".png"))
    except EdgecollabError as exc:
        print(f"no plot: {exc}", file=sys.stderr)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy so far (all processes)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS


def unemulated_config(folder: Path, variant: str, workers: int) -> Path:
    """A cluster of ``workers`` un-emulated workers w0, w1, ... on this machine, each with one variant."""
    lines = ["[models]", f'manifest = "{MANIFEST}"']
    for k in range(workers):
        lines += ["[[nodes]]", f'name = "w{k}"', f'variants = ["{variant}"]']
    path = folder / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def drive(
    infer: Callable[[np.ndarray], Awaitable[Any]], batch: int, in_flight: int, duration: float
) -> dict[str, Any]:
    """Closed loop: ``in_flight`` lanes, each sending its next request of ``batch`` inputs when its last is
    answered, for ``duration`` s after a warm-up. Throughput, round trip, and CPU per request of the whole
    machine and of this (the client's) process."""
    images = np.random.default_rng(batch).integers(0, 256, (batch, 1, 28, 28)).astype(np.uint8)
    await infer(images)  # warm-up
    latencies: list[float] = []
    deadline = time.monotonic() + duration

    async def lane() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await infer(images)
            latencies.append(time.perf_counter() - started)

    busy, client, started = machine_busy_s(), time.process_time(), time.monotonic()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    elapsed = time.monotonic() - started
    busy, client = machine_busy_s() - busy, time.process_time() - client
    lat = np.array(latencies) * 1e3
    return {
        "batch": batch,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "inputs_per_s": len(latencies) * batch / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "machine_cpu_ms_per_request": busy / len(latencies) * 1e3,
        "client_cpu_ms_per_request": client / len(latencies) * 1e3,
    }

"""A bounded chaos soak: random kills and hangs of emulated boards while requests run.

    .venv/bin/python benchmarks/chaos.py [--requests 12] [--inputs 5000] [--seed 0]

Four emulated boards on loopback, all on `cnn-16` so that every prediction can be checked
against the model run here. Before each request one fault is drawn: a board killed
(SIGKILL, restarted 1 s later), hung (SIGSTOP, resumed 2 s later), slowed (paused 0.1 s in
every 0.3 s for 2.4 s: a third slower, never silent long enough to be declared dead), or none. Reports
whether every input of every request came back exactly once and right, how long the
coordinator took to notice a dead board and to take a restarted one back, and its memory.
Writes benchmarks/results/chaos.json. Traffic stays on 127.0.0.1; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecollab.client import Client
from edgecollab.errors import RequestFailed
from edgecollab.inspection import ask, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.zoo import load_manifest, load_test_set, open_session, predict

RESULTS = Path(__file__).resolve().parent / "results"
BOARDS = [
    ("odroid-xu4-a", "odroid-xu4"),
    ("odroid-xu4-b", "odroid-xu4"),
    ("rpi4", "rpi4"),
    ("jetson-nano", "jetson-nano"),
]


def write_config(folder: Path) -> Path:
    manifest = load_manifest(check_files=False)
    lines = ["[coordinator]", "heartbeat_s = 0.5", "heartbeat_misses = 3", "[models]", f'manifest = "{manifest.path}"']
    for name, board in BOARDS:
        lines += ["[[nodes]]", f'name = "{name}"', f'emulate = "{board}"', 'variants = ["cnn-16"]']
    path = folder / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def seconds_until(condition: Any, timeout_s: float = 30.0) -> float | None:
    """Seconds until ``condition()`` holds (polled every 50 ms), or None after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--inputs", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    manifest = load_manifest()
    test_set = load_test_set(manifest, manifest.tasks["fashion-mnist"])
    variant = manifest.variant("cnn-16")
    reference = predict(open_session(manifest.resolve(variant.file), manifest.task_of(variant)), test_set.inputs)

    outcomes: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(write_config(Path(tmp)), log_dir=Path(tmp) / "logs") as local,
    ):
        endpoint = local.clients_endpoint
        wait_until_ready(endpoint, 300)
        assert local.coordinator is not None
        rss_start = rss_kib(local.coordinator.pid)

        def alive(name: str) -> bool:
            return any(n["name"] == name and n["profiled"] for n in ask(endpoint, "status")["nodes"])

        async def slow_down(board: str) -> None:
            for _ in range(8):
                local.signal_worker(board, signal.SIGSTOP)
                await asyncio.sleep(0.1)
                local.signal_worker(board, signal.SIGCONT)
                await asyncio.sleep(0.2)

        async def one_request(indices: np.ndarray, fault: str, board: str) -> dict[str, Any]:
            async with Client(endpoint, timeout_s=120) as client:
                task = asyncio.create_task(client.infer(test_set.inputs[indices], policy="adaptive"))
                await asyncio.sleep(0.3)
                fault_at = time.monotonic()
                if fault == "kill":
                    local.signal_worker(board, signal.SIGKILL)
                elif fault == "hang":
                    local.signal_worker(board, signal.SIGSTOP)
                slowing = asyncio.create_task(slow_down(board)) if fault == "slow" else None
                detected_s = None
                while fault in ("kill", "hang") and time.monotonic() - fault_at < 30:
                    # The same coordinator answers status while it serves the request.
                    if all(n["name"] != board for n in (await client.query("status"))["nodes"]):
                        detected_s = time.monotonic() - fault_at
                        break
                    await asyncio.sleep(0.05)
                try:
                    result = await task
                except RequestFailed as exc:
                    return {"fault": fault, "board": board, "error": str(exc), "fault_at": fault_at}
                finally:
                    if slowing is not None:
                        await slowing
            right = bool(np.array_equal(result.predictions, reference[indices]))
            return {
                "fault": fault,
                "board": board,
                "exactly_once_and_right": right,
                "retries": result.report["retries"],
                "wall_s": result.report["wall_s"],
                "detected_s": detected_s,
                "fault_at": fault_at,
            }

        for number in range(args.requests):
            fault = rng.choice(["kill", "hang", "slow", "none"])
            board = rng.choice([name for name, _ in BOARDS])
            indices = np.random.default_rng(args.seed + number).choice(len(test_set), args.inputs)
            outcome = asyncio.run(one_request(indices, fault, board))
            if fault in ("kill", "hang"):
                if fault == "kill":
                    time.sleep(1.0)
                    local.start_worker(board)
                else:
                    time.sleep(max(0.0, 2.0 - (time.monotonic() - outcome["fault_at"])))
                    local.signal_worker(board, signal.SIGCONT)
                outcome["back_s"] = seconds_until(lambda board=board: alive(board))
            outcome.pop("fault_at")
            outcome["coordinator_rss_kib"] = rss_kib(local.coordinator.pid)
            outcomes.append(outcome)
            print(f"request {number + 1}: {outcome}", file=sys.stderr)
        rss_end = rss_kib(local.coordinator.pid)

    detected = [o["detected_s"] for o in outcomes if o.get("detected_s") is not None]
    back = [o["back_s"] for o in outcomes if o.get("back_s") is not None]
    report = {
        "command": "python benchmarks/chaos.py " + " ".join(sys.argv[1:]),
        "requests": args.requests,
        "inputs_per_request": args.inputs,
        "faults": {k: sum(o["fault"] == k for o in outcomes) for k in ("kill", "hang", "slow", "none")},
        "all_exactly_once_and_right": all(o.get("exactly_once_and_right") for o in outcomes),
        "failed_requests": [o for o in outcomes if "error" in o],
        "inputs_lost": sum(args.inputs for o in outcomes if not o.get("exactly_once_and_right")),
        "detection_s": {"median": statistics.median(detected), "max": max(detected)} if detected else None,
        "back_in_service_s": {"median": statistics.median(back), "max": max(back)} if back else None,
        "coordinator_rss_kib": {
            "start": rss_start,
            "end": rss_end,
            # After each quarter of the run: levelling off, or growing with the work?
            "quarters": [outcomes[i * len(outcomes) // 4 - 1]["coordinator_rss_kib"] for i in range(1, 5)],
        },
        "outcomes": outcomes,
    }
    out = RESULTS / "chaos.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "faults",
                    "all_exactly_once_and_right",
                    "inputs_lost",
                    "detection_s",
                    "back_in_service_s",
                    "coordinator_rss_kib",
                )
            },
            indent=1,
        )
    )
    return 0 if report["all_exactly_once_and_right"] else 1


if __name__ == "__main__":
    sys.exit(main())

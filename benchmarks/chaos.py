"""A bounded chaos soak: faults of boards and of clients while requests and a stream run.

    .venv/bin/python benchmarks/chaos.py [--rounds 16] [--inputs 60000] [--seed 0] [--out PATH]

Four emulated boards on loopback, all on `cnn-16` so that every prediction can be checked
against the model run here. Each round runs one request (client A) beside a camera streaming
at 50 fps (client B); one fault is drawn for it:

- kill: a board SIGKILLed, restarted 1 s later;
- hang: a board SIGSTOPped, resumed 2 s later;
- slow: a board paused 0.1 s in every 0.3 s for 2.4 s (a third slower, never silent long enough);
- stall: a board's inference stuck while its loop heartbeats (SIGUSR1 on an emulated worker), unstuck 4 s later;
- garble: a board's results come back a prediction short with NaN outputs (SIGUSR2), until it is cut off
  and restarted;
- slow-client: a client C that sends two requests and 4,000 status queries and never reads an answer;
- cancel: a client C that submits 20,000 inputs and cancels 0.3 s later, then gives up a stream
  with frames queued (leaves its ``async with`` by an exception);
- disconnect: a client C that submits 20,000 inputs and closes its socket without a word;
- none.

Reports whether every input of every request and every frame of every stream came back exactly
once and right (frames dropped by the stream's own back-pressure are answered as dropped, and
counted), how long the coordinator took to notice each fault and to recover from it, and its
memory after each round. Writes benchmarks/results/chaos.json and a plot. Traffic stays on
127.0.0.1; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from common import RESULTS, run_info, write_results

from edgecollab.client import Client
from edgecollab.errors import EdgecollabError, RequestFailed
from edgecollab.inspection import ask, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.protocol import Query, Submit, encode
from edgecollab.zoo import load_manifest, load_test_set, open_session, predict

BOARDS = [
    ("odroid-xu4-a", "odroid-xu4"),
    ("odroid-xu4-b", "odroid-xu4"),
    ("rpi4", "rpi4"),
    ("jetson-nano", "jetson-nano"),
]
FAULTS = ["kill", "hang", "slow", "stall", "garble", "slow-client", "cancel", "disconnect", "none"]
BOARD_FAULTS = {"kill", "hang", "slow", "stall", "garble"}
CAMERA_FPS = 50.0
STALL_S = 4.0  # how long a stalled board stays stuck
CLIENT_QUEUE = 64  # [coordinator] client_queue_messages here: a slow client is cut off sooner


class GaveUp(Exception):
    """What the cancelling client raises inside its stream."""


def write_config(folder: Path) -> Path:
    manifest = load_manifest(check_files=False)
    lines = [
        "[coordinator]",
        "heartbeat_s = 0.5",
        "heartbeat_misses = 3",
        "stall_floor_s = 1.5",
        f"client_queue_messages = {CLIENT_QUEUE}",
        "[models]",
        f'manifest = "{manifest.path}"',
    ]
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


class Soak:
    def __init__(self, local: LocalCluster, inputs: np.ndarray, reference: np.ndarray) -> None:
        self.local = local
        self.endpoint = local.clients_endpoint
        self.inputs = inputs
        self.reference = reference
        self.cut_offs = 0  # clients cut off so far (the coordinator's counter)
        self.disconnects = 0  # clients that left with work open (the coordinator's counter)

    def node(self, name: str) -> dict[str, Any] | None:
        return next((n for n in ask(self.endpoint, "status")["nodes"] if n["name"] == name), None)

    def usable(self, name: str) -> bool:
        node = self.node(name)
        return node is not None and node["alive"] and node["profiled"] and not node["suspect"]

    async def camera(self, stop: asyncio.Event, rng: np.random.Generator) -> dict[str, Any]:
        """Client B: one frame every 20 ms until ``stop``; every frame answered once, and right unless dropped."""
        sent: list[int] = []
        answers: Counter[int] = Counter()
        wrong = dropped = 0
        try:
            async with (
                Client(self.endpoint, timeout_s=60) as client,
                client.stream(CAMERA_FPS, max_latency_ms=1000.0, degrade=True, backpressure="drop-oldest") as stream,
            ):

                async def feed() -> None:
                    while not stop.is_set():
                        index = int(rng.integers(len(self.inputs)))
                        await stream.send(self.inputs[index : index + 1])
                        sent.append(index)
                        await asyncio.sleep(1.0 / CAMERA_FPS)
                    await stream.close()

                feeder = asyncio.create_task(feed())
                async for frame in stream:
                    answers[frame.seq] += 1
                    if frame.dropped:
                        dropped += 1
                    elif frame.prediction != self.reference[sent[frame.seq]]:
                        wrong += 1
                await feeder
        except (RequestFailed, EdgecollabError) as exc:
            return {"frames": len(sent), "error": str(exc), "frames_lost": len(sent)}
        unanswered = sum(1 for seq in range(len(sent)) if answers[seq] == 0)
        twice = sum(1 for n in answers.values() if n > 1)
        return {
            "frames": len(sent),
            "dropped": dropped,
            "wrong": wrong,
            "answered_twice": twice,
            "frames_lost": unanswered + wrong + twice,
        }

    async def slow_client(self) -> dict[str, Any]:
        """Client C stops reading: two requests, then status queries until ZeroMQ takes no more."""
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 4096)
        sock.setsockopt(zmq.SNDHWM, 0)  # every query goes: more unread answers than the buffers on the way hold
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        started = time.monotonic()
        try:
            for i in range(2):
                sock.send_multipart(encode(Submit(f"slow{i}", self.inputs[:2000])))
            for i in range(4000):
                sock.send_multipart(encode(Query(f"q{i}", "status")))
            cut_off_s = None
            async with Client(self.endpoint, timeout_s=60) as watcher:
                while time.monotonic() - started < 30:
                    if (await watcher.query("status"))["counters"].get("clients_cut_off", 0) > self.cut_offs:
                        cut_off_s = time.monotonic() - started
                        self.cut_offs += 1
                        break
                    await asyncio.sleep(0.05)
            return {"detected_s": cut_off_s}
        finally:
            sock.close()
            context.term()

    async def cancelling_client(self) -> dict[str, Any]:
        """Client C gives up a large request after 0.3 s, then a stream with frames queued: both forgotten."""
        found: dict[str, Any] = {"detected_s": None, "stream_forgotten_s": None}
        async with Client(self.endpoint, timeout_s=60) as client:
            request = asyncio.create_task(client.infer(self.inputs[:20000]))
            await asyncio.sleep(0.3)
            request.cancel()
            cancelled_at = time.monotonic()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            found["detected_s"] = await self.forgotten(client, "requests", cancelled_at)
            with contextlib.suppress(GaveUp):
                async with client.stream(CAMERA_FPS, backpressure="drop-oldest") as stream:
                    await stream.send(self.inputs[:1000])
                    raise GaveUp
            found["stream_forgotten_s"] = await self.forgotten(client, "streams", time.monotonic())
        return found

    @staticmethod
    async def forgotten(client: Client, kind: str, since: float) -> float | None:
        """Seconds until the client's own ``status`` lists none of ``kind``, or None after 10 s."""
        while time.monotonic() - since < 10:
            if not (await client.query("status"))[kind]:
                return time.monotonic() - since
            await asyncio.sleep(0.01)
        return None

    async def leaving_client(self) -> dict[str, Any]:
        """Client C submits a large request and closes its socket without a cancel."""
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(self.endpoint)
        sock.send_multipart(encode(Submit("leaving", self.inputs[:20000])))
        await asyncio.sleep(0.3)
        sock.close()
        context.term()
        left = time.monotonic()
        async with Client(self.endpoint, timeout_s=60) as watcher:
            while time.monotonic() - left < 10:
                if (await watcher.query("status"))["counters"].get("clients_disconnected", 0) > self.disconnects:
                    self.disconnects += 1
                    return {"detected_s": time.monotonic() - left}
                await asyncio.sleep(0.01)
        return {"detected_s": None}

    async def slow_down(self, board: str) -> None:
        for _ in range(8):
            self.local.signal_worker(board, signal.SIGSTOP)
            await asyncio.sleep(0.1)
            self.local.signal_worker(board, signal.SIGCONT)
            await asyncio.sleep(0.2)

    async def watch_board(self, client: Client, fault: str, board: str, fault_at: float) -> float | None:
        """Seconds until the coordinator sees the fault: the board gone (kill, hang, garble) or suspect (stall)."""
        while time.monotonic() - fault_at < 30:
            node = next((n for n in (await client.query("status"))["nodes"] if n["name"] == board), None)
            gone = node is None or not node["alive"]
            if (fault == "stall" and node is not None and node["suspect"]) or (fault != "stall" and gone):
                return time.monotonic() - fault_at
            await asyncio.sleep(0.05)
        return None

    async def round(self, number: int, fault: str, board: str, indices: np.ndarray) -> dict[str, Any]:
        stop = asyncio.Event()
        camera = asyncio.create_task(self.camera(stop, np.random.default_rng(number)))
        outcome: dict[str, Any] = {"fault": fault, "board": board if fault in BOARD_FAULTS else None}
        async with Client(self.endpoint, timeout_s=120) as client:
            await asyncio.sleep(0.2)  # the camera is streaming
            task = asyncio.create_task(client.infer(self.inputs[indices], policy="adaptive"))
            await asyncio.sleep(0.5)  # mid-request: the request takes a few seconds
            fault_at = time.monotonic()
            side = None
            if fault == "kill":
                self.local.signal_worker(board, signal.SIGKILL)
            elif fault == "hang":
                self.local.signal_worker(board, signal.SIGSTOP)
            elif fault == "stall":
                self.local.signal_worker(board, signal.SIGUSR1)
            elif fault == "garble":
                self.local.signal_worker(board, signal.SIGUSR2)
            elif fault == "slow":
                side = asyncio.create_task(self.slow_down(board))
            elif fault == "slow-client":
                side = asyncio.create_task(self.slow_client())
            elif fault == "cancel":
                side = asyncio.create_task(self.cancelling_client())
            elif fault == "disconnect":
                side = asyncio.create_task(self.leaving_client())
            if fault in ("kill", "hang", "stall", "garble"):
                outcome["detected_s"] = await self.watch_board(client, fault, board, fault_at)
            try:
                result = await task
                outcome["request_right"] = bool(np.array_equal(result.predictions, self.reference[indices]))
                outcome["wall_s"] = result.report["wall_s"]
                outcome["retries"] = result.report["retries"]
            except RequestFailed as exc:
                outcome["request_right"] = False
                outcome["error"] = str(exc)
            if side is not None:
                found = await side
                if found:
                    outcome.update(found)
        stop.set()
        outcome["stream"] = await camera
        outcome["inputs_lost"] = 0 if outcome["request_right"] else len(indices)
        outcome["fault_at"] = fault_at
        return outcome

    def recover(self, fault: str, board: str, fault_at: float) -> float | None:
        """Undo a board's fault and time until it takes work again (None for faults that need no recovery)."""
        if fault == "garble" and seconds_until(lambda: self.local.workers[board].poll() is not None, 10) is None:
            self.local.signal_worker(board, signal.SIGUSR2)  # never cut off (too few results): sound again
            return None
        if fault in ("kill", "garble"):  # garble: cut off, it was told so and stopped
            time.sleep(max(0.0, 1.0 - (time.monotonic() - fault_at)))
            self.local.start_worker(board)
        elif fault == "hang":
            time.sleep(max(0.0, 2.0 - (time.monotonic() - fault_at)))
            self.local.signal_worker(board, signal.SIGCONT)
        elif fault == "stall":
            time.sleep(max(0.0, STALL_S - (time.monotonic() - fault_at)))
            self.local.signal_worker(board, signal.SIGUSR1)  # unstuck: its late answers make it usable again
        else:
            return None
        return seconds_until(lambda: self.usable(board))


def summary(values: list[float]) -> dict[str, float] | None:
    return {"median": statistics.median(values), "max": max(values)} if values else None


def plot(outcomes: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise EdgecollabError("matplotlib is not installed (pip install -e '.[plot]')") from exc
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for key, marker, label in (("detected_s", "o", "noticed"), ("back_s", "s", "back in service")):
        xs = [FAULTS.index(o["fault"]) for o in outcomes if o.get(key) is not None]
        ys = [o[key] for o in outcomes if o.get(key) is not None]
        offset = -0.12 if key == "detected_s" else 0.12
        left.scatter([x + offset for x in xs], ys, marker=marker, label=label, alpha=0.7)
    left.set_xticks(range(len(FAULTS)), FAULTS, rotation=30)
    left.set_ylabel("seconds after the fault (or, back: after its end)")
    left.set_title("time to notice and to recover, per fault")
    left.legend()
    right.plot(range(1, len(outcomes) + 1), [o["coordinator_rss_kib"] / 1024 for o in outcomes], marker=".")
    right.set_xlabel("round")
    right.set_ylabel("coordinator RSS (MiB)")
    right.set_ylim(bottom=0)
    right.set_title("coordinator memory after each round")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--inputs", type=int, default=60000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    manifest = load_manifest()
    test_set = load_test_set(manifest, manifest.tasks["fashion-mnist"])
    variant = manifest.variant("cnn-16")
    reference = predict(open_session(manifest.resolve(variant.file), manifest.task_of(variant)), test_set.inputs)
    # Every fault as often as the rounds allow, in a random order.
    faults = [FAULTS[i % len(FAULTS)] for i in range(args.rounds)]
    rng.shuffle(faults)

    outcomes: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(write_config(Path(tmp)), log_dir=Path(tmp) / "logs") as local,
    ):
        wait_until_ready(local.clients_endpoint, 300)
        assert local.coordinator is not None
        soak = Soak(local, test_set.inputs, reference)
        rss_start = rss_kib(local.coordinator.pid)
        for number, fault in enumerate(faults):
            board = rng.choice([name for name, _ in BOARDS])
            indices = np.random.default_rng(args.seed + number).choice(len(test_set), args.inputs)
            outcome = asyncio.run(soak.round(number, fault, board, indices))
            outcome["back_s"] = soak.recover(fault, board, outcome.pop("fault_at"))
            outcome["coordinator_rss_kib"] = rss_kib(local.coordinator.pid)
            outcomes.append(outcome)
            print(f"round {number + 1}: {outcome}", file=sys.stderr)
        counters = ask(local.clients_endpoint, "status")["counters"]

    def times(fault: str, key: str) -> dict[str, float] | None:
        return summary([o[key] for o in outcomes if o["fault"] == fault and o.get(key) is not None])

    inputs_lost = sum(o["inputs_lost"] for o in outcomes)
    frames_lost = sum(o["stream"]["frames_lost"] for o in outcomes)
    rss = [o["coordinator_rss_kib"] for o in outcomes]
    report = {
        **run_info(),
        "rounds": args.rounds,
        "inputs_per_request": args.inputs,
        "camera_fps": CAMERA_FPS,
        "faults": {k: faults.count(k) for k in FAULTS},
        "inputs_lost": inputs_lost,
        "frames": sum(o["stream"]["frames"] for o in outcomes),
        "frames_dropped_by_backpressure": sum(o["stream"].get("dropped", 0) for o in outcomes),
        "frames_lost": frames_lost,
        "noticed_s": {k: times(k, "detected_s") for k in FAULTS if times(k, "detected_s")},
        "back_in_service_s": {k: times(k, "back_s") for k in FAULTS if times(k, "back_s")},
        "request_wall_s": {k: times(k, "wall_s") for k in FAULTS},
        "stream_cancel_forgotten_s": times("cancel", "stream_forgotten_s"),
        "coordinator_rss_kib": {
            "start": rss_start,
            "peak": max(rss),
            "end": rss[-1],
            # After each quarter of the run: levelling off, or growing with the work?
            "quarters": [rss[i * len(rss) // 4 - 1] for i in range(1, 5)],
        },
        "counters": {
            k: counters.get(k, 0)
            for k in (
                "nodes_lost",
                "nodes_stalled",
                "nodes_cut_off",
                "bad_results",
                "clients_cut_off",
                "late_replies",
                "frames_resent",
                "handler_errors",
            )
        },
        "outcomes": outcomes,
    }
    write_results(args.out, report, lambda path: plot(outcomes, path))
    shown = ("faults", "inputs_lost", "frames", "frames_lost", "noticed_s", "back_in_service_s", "coordinator_rss_kib")
    print({k: report[k] for k in shown})
    return 0 if inputs_lost == 0 and frames_lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

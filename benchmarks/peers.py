"""edgecollab against what a user would reach for instead: Ray Serve and NVIDIA Triton (PyTriton).

    make bench-peers          # installs ray[serve] and nvidia-pytriton into .venv-peers, then runs both loads
    .venv-peers/bin/python benchmarks/peers.py [--config cluster.toml] [--only edgecollab,ray]
    .venv-peers/bin/python benchmarks/peers.py --closed-loop [--duration 10] [--in-flight 8]

**Closed loop** (``--closed-loop``): one variant (``cnn-8``), four un-emulated workers or
instances on this machine, ``--in-flight`` requests outstanding at all times, for each batch
size 1, 32 and 256: requests/s, inputs/s, round trip, and the whole machine's CPU per request
(every process: client, server, workers; from /proc/stat). edgecollab goes its real path
(client → coordinator → workers), Ray Serve through a deployment handle (one replica per
worker, at most 2 requests each), PyTriton over gRPC to one model with four instances and
Triton's dynamic batcher. Writes benchmarks/results/peers_closed_loop.json and .png.

**Cameras** (``--cameras 8,16,32,48``): on the config's emulated boards, that many 30 fps
cameras for ``--duration`` s each: edgecollab with streams (``edgecollab.cameras``), Ray Serve
and PyTriton with one request per frame, sent on the clock (open loop), on the variant
edgecollab's ``uniform`` policy picks for the cameras' total rate. Reports p50/p99 and frames
answered per count, and the largest count each serves with every frame answered and p99 ≤ 100
ms (a peer stops at its first count past the bound: more only take longer to drain). Writes
benchmarks/results/peers_cameras.json and .png.

**The emulated workload** (the default):

The same workload (the default `edgecollab run` requests: sizes and targets), the same ONNX
variants, the same inputs, and the same emulated boards: every peer replica runs edgecollab's
own `ShardRunner` for its board (ONNX Runtime plus the board's cost model, holding each reply
until the emulated board would have finished), exactly as an edgecollab worker does.

- **edgecollab**: the config's cluster, `adaptive` policy (a variant and share per board).
- **Ray Serve**: one deployment with one replica per emulated board, its default router
  (power of two choices on queue length), at most 2 requests in flight per replica
  (edgecollab's `window`); the client sends 32-input shards (edgecollab's `shard_size`).
- **PyTriton**: one Triton model per board with dynamic batching (up to 256); the client
  splits each request evenly across the boards and sends 32-input batches.

Neither peer chooses variants: each request runs on the variant edgecollab's `uniform`
policy picks for its target (the most accurate single variant the whole cluster can run fast
enough), which is what a user who knew the exploration table would configure. Per-request
overhead: the median round trip of a one-input request. Writes
benchmarks/results/peers.json and peers.png; a peer that cannot start here is reported as
skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, drive, run_info, unemulated_config, write_results

from edgecollab.client import Client
from edgecollab.config import ClusterConfig, load_config
from edgecollab.inspection import ask, cached_table, table_from_rows, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.planner import ExplorationTable, PlanRequest, make_plan
from edgecollab.plots import pyplot, save
from edgecollab.workload import DEFAULT_WORKLOAD, draw_indices, workload_source
from edgecollab.zoo import LabelledSet

SHARD = 32  # edgecollab's default shard_size
WINDOW = 2  # edgecollab's default window
SMALL_REQUESTS = 100  # one-input requests for the per-request overhead


class EmulatedBoard:
    """One board as an edgecollab worker runs it: ONNX Runtime plus the board's cost model."""

    def __init__(self, config_path: str, node: str) -> None:
        from edgecollab.coordinator.provisioning import local_runner

        self.runner = local_runner(load_config(config_path), node)

    def run(self, variant: str, inputs: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        outcome = self.runner.run(variant, inputs)
        time.sleep(max(0.0, started + outcome.board_seconds - time.perf_counter()))
        return outcome.predictions


def uniform_variant(table: ExplorationTable, inputs: int, target: float) -> str:
    plan = make_plan("uniform", table, PlanRequest(inputs, target), table.nodes())
    return plan.assignments[0].variant


def workload(test_set: LabelledSet) -> list[tuple[np.ndarray, float]]:
    rng = np.random.default_rng(0)
    return [(draw_indices(rng, len(test_set), n), t) for n, t in DEFAULT_WORKLOAD]


def score(name: str, results: list[tuple[Any, ...]], test_set: LabelledSet, latencies: list[float]) -> dict[str, Any]:
    rows = []
    for indices, target, wall, variant, predictions in results:
        rows.append({
            "inputs": len(indices), "target_ips": target, "achieved_ips": len(indices) / wall, "wall_s": wall,
            "met": len(indices) / wall >= target, "variant": variant,
            "accuracy": float((predictions == test_set.labels[indices]).mean()),
        })  # fmt: skip
    inputs = sum(r["inputs"] for r in rows)
    return {
        "system": name,
        "requests": rows,
        "targets_met": sum(r["met"] for r in rows),
        "achieved_ips": inputs / sum(r["wall_s"] for r in rows),
        "accuracy": sum(r["accuracy"] * r["inputs"] for r in rows) / inputs,
        "one_input_latency_ms_p50": statistics.median(latencies) * 1e3,
    }


# --- edgecollab ---------------------------------------------------------------------------------
def run_edgecollab(config_path: Path, test_set: LabelledSet) -> tuple[dict[str, Any], ExplorationTable]:
    async def go(endpoint: str) -> tuple[list[Any], list[float]]:
        results, latencies = [], []
        async with Client(endpoint, timeout_s=600) as client:
            for indices, target in workload(test_set):
                started = time.perf_counter()
                result = await client.infer(test_set.inputs[indices], target_ips=target)
                variants = sorted({a["variant"] for a in result.report["assignment"] if a["inputs"]})
                results.append((indices, target, time.perf_counter() - started, "+".join(variants),
                                result.predictions))  # fmt: skip
            for _ in range(SMALL_REQUESTS):
                started = time.perf_counter()
                await client.infer(test_set.inputs[:1])
                latencies.append(time.perf_counter() - started)
        return results, latencies

    config = load_config(config_path)
    with LocalCluster(config_path, log_dir=config.resolve(".edgecollab/logs")) as local:
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        table = table_from_rows(ask(local.clients_endpoint, "table")["rows"])
        results, latencies = asyncio.run(go(local.clients_endpoint))
    return score("edgecollab", results, test_set, latencies), table


# --- Ray Serve ----------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_boards(config_path: Path, nodes: list[str], app: str) -> Iterator[Any]:
    """A Ray Serve deployment with one replica per board, at most ``WINDOW`` requests each; yields its
    handle, called as ``handle.remote(variant, inputs)``."""
    import ray
    from ray import serve

    @ray.remote(num_cpus=0)
    class BoardNames:  # hands each replica a different board
        def __init__(self, names: list[str]) -> None:
            self.names = list(names)

        def take(self) -> str:
            return self.names.pop(0)

    @serve.deployment(num_replicas=len(nodes), max_ongoing_requests=WINDOW, ray_actor_options={"num_cpus": 0})
    class Board:
        def __init__(self, config_path: str, names: Any) -> None:
            self.board = EmulatedBoard(config_path, ray.get(names.take.remote()))

        def __call__(self, variant: str, inputs: np.ndarray) -> np.ndarray:
            return self.board.run(variant, inputs)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield serve.run(Board.bind(str(config_path), BoardNames.remote(nodes)), name=app, route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()


def run_ray(config_path: Path, config: ClusterConfig, test_set: LabelledSet, table: ExplorationTable) -> dict[str, Any]:
    with ray_boards(config_path, [n.name for n in config.nodes], "edgecollab-peer") as handle:

        async def infer(variant: str, inputs: np.ndarray) -> np.ndarray:
            parts = [handle.remote(variant, inputs[i : i + SHARD]) for i in range(0, len(inputs), SHARD)]
            return np.concatenate(await asyncio.gather(*parts))

        return asyncio.run(_serve_workload("ray-serve", infer, test_set, table))


# --- PyTriton -----------------------------------------------------------------------------------
def triton_environment() -> None:
    """Triton's Python stub links the system's libpython; make it load this interpreter's own,
    whose standard library is the one on its path."""
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))


def bind_boards(triton: Any, model: str, boards: list[EmulatedBoard], fixed_variant: str | None = None) -> None:
    """One Triton model with an instance per board (Triton hands each batch to a free one), dynamic
    batching up to 256. With ``fixed_variant`` every request runs it; without, each names its own in a
    ``variant`` input."""
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    def instance(board: EmulatedBoard) -> Any:
        if fixed_variant is not None:
            chosen = fixed_variant

            @batch
            def fixed(inputs: np.ndarray) -> dict[str, np.ndarray]:
                return {"predictions": board.run(chosen, inputs).reshape(-1, 1)}

            return fixed

        @batch
        def named(inputs: np.ndarray, variant: np.ndarray) -> dict[str, np.ndarray]:
            return {"predictions": board.run(bytes(variant[0][0]).decode(), inputs).reshape(-1, 1)}

        return named

    inputs = [Tensor(name="inputs", dtype=np.uint8, shape=(1, 28, 28))]
    if fixed_variant is None:
        inputs.append(Tensor(name="variant", dtype=bytes, shape=(1,)))
    triton.bind(
        model_name=model,
        infer_func=[instance(board) for board in boards],
        inputs=inputs,
        outputs=[Tensor(name="predictions", dtype=np.int64, shape=(1,))],
        config=ModelConfig(max_batch_size=256, batcher=DynamicBatcher(max_queue_delay_microseconds=500)),
    )


def run_pytriton(config_path: Path, config: ClusterConfig, test_set: LabelledSet,
                 table: ExplorationTable) -> dict[str, Any]:  # fmt: skip
    from pytriton.client import AsyncioModelClient
    from pytriton.triton import Triton, TritonConfig

    nodes = [n.name for n in config.nodes]
    triton_environment()
    ports = {"http_port": 18_000, "grpc_port": 18_001, "metrics_port": 18_002}
    with Triton(config=TritonConfig(**ports)) as triton:
        for node in nodes:  # a model per board: the client splits each request over them
            bind_boards(triton, node, [EmulatedBoard(str(config_path), node)])
        triton.run()

        async def infer(variant: str, inputs: np.ndarray) -> np.ndarray:
            shares = np.array_split(np.arange(len(inputs)), len(nodes))  # even split, in order

            async def one_board(node: str, idx: np.ndarray) -> np.ndarray:
                if len(idx) == 0:
                    return np.empty(0, np.int64)
                async with AsyncioModelClient(f"localhost:{ports['http_port']}", node) as client:
                    out = []
                    for i in range(0, len(idx), SHARD):
                        part = inputs[idx[i : i + SHARD]]
                        names = np.array([[variant.encode()]] * len(part), dtype=bytes)
                        out.append((await client.infer_batch(inputs=part, variant=names))["predictions"].ravel())
                    return np.concatenate(out)

            return np.concatenate(await asyncio.gather(*(one_board(n, s) for n, s in zip(nodes, shares, strict=True))))

        return asyncio.run(_serve_workload("pytriton", infer, test_set, table))


async def _serve_workload(name: str, infer: Any, test_set: LabelledSet, table: ExplorationTable) -> dict[str, Any]:
    results, latencies = [], []
    await infer(uniform_variant(table, 1000, 1.0), test_set.inputs[:64])  # warm every path
    for indices, target in workload(test_set):
        variant = uniform_variant(table, len(indices), target)
        started = time.perf_counter()
        predictions = await infer(variant, test_set.inputs[indices])
        results.append((indices, target, time.perf_counter() - started, variant, predictions))
    small = uniform_variant(table, 1, 1.0)
    for _ in range(SMALL_REQUESTS):
        started = time.perf_counter()
        await infer(small, test_set.inputs[:1])
        latencies.append(time.perf_counter() - started)
    return score(name, results, test_set, latencies)


PEERS = {"ray-serve": run_ray, "pytriton": run_pytriton}


# --- closed loop --------------------------------------------------------------------------------
CLOSED_LOOP_VARIANT = "cnn-8"
CLOSED_LOOP_WORKERS = 4
CLOSED_LOOP_BATCHES = (1, 32, 256)


def closed_loop_config(folder: Path) -> Path:
    return unemulated_config(folder, CLOSED_LOOP_VARIANT, CLOSED_LOOP_WORKERS)


def closed_edgecollab(config_path: Path, in_flight: int, duration: float) -> list[dict[str, Any]]:
    rows = []
    with LocalCluster(config_path) as local:
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        for batch in CLOSED_LOOP_BATCHES:

            async def go(batch: int = batch) -> dict[str, Any]:
                async with Client(local.clients_endpoint, timeout_s=120) as client:
                    return await drive(client.infer, batch, in_flight, duration)

            rows.append(asyncio.run(go()))
    return rows


def closed_ray(config_path: Path, in_flight: int, duration: float) -> list[dict[str, Any]]:
    with ray_boards(config_path, [f"w{k}" for k in range(CLOSED_LOOP_WORKERS)], "closed-loop") as handle:

        async def infer(inputs: np.ndarray) -> np.ndarray:
            return await handle.remote(CLOSED_LOOP_VARIANT, inputs)

        return [asyncio.run(drive(infer, batch, in_flight, duration)) for batch in CLOSED_LOOP_BATCHES]


def closed_pytriton(config_path: Path, in_flight: int, duration: float) -> list[dict[str, Any]]:
    from pytriton.client import AsyncioModelClient
    from pytriton.triton import Triton, TritonConfig

    triton_environment()
    ports = {"http_port": 18_010, "grpc_port": 18_011, "metrics_port": 18_012}
    with Triton(config=TritonConfig(**ports)) as triton:
        boards = [EmulatedBoard(str(config_path), f"w{k}") for k in range(CLOSED_LOOP_WORKERS)]
        bind_boards(triton, "cnn8", boards, CLOSED_LOOP_VARIANT)  # one model, an instance per worker
        triton.run()
        rows = []
        for batch in CLOSED_LOOP_BATCHES:

            async def go(batch: int = batch) -> dict[str, Any]:
                clients = [
                    AsyncioModelClient(f"grpc://localhost:{ports['grpc_port']}", "cnn8") for _ in range(in_flight)
                ]
                free = asyncio.Queue[Any]()
                for client in clients:
                    free.put_nowait(client)

                async def infer(inputs: np.ndarray) -> np.ndarray:
                    client = await free.get()  # one gRPC client per request in flight
                    try:
                        return (await client.infer_batch(inputs=inputs))["predictions"]
                    finally:
                        free.put_nowait(client)

                try:
                    return await drive(infer, batch, in_flight, duration)
                finally:
                    for client in clients:
                        await client.close()

            rows.append(asyncio.run(go()))
        return rows


# --- cameras ------------------------------------------------------------------------------------
CAMERA_FPS = 30.0
CAMERA_BOUND_MS = 100.0


async def open_loop_cameras(infer: Any, frames: np.ndarray, count: int, duration: float) -> dict[str, Any]:
    """``count`` cameras, each sending one request per frame at 30 fps on the clock, never waiting."""
    latencies: list[float] = []
    failures = 0
    per_camera = int(CAMERA_FPS * duration)

    async def one(frame: np.ndarray) -> None:
        nonlocal failures
        started = time.perf_counter()
        try:
            await infer(frame[None])
            latencies.append(time.perf_counter() - started)
        except Exception:
            failures += 1

    async def camera(k: int) -> None:
        start, sent = time.monotonic(), []
        for i in range(per_camera):
            await asyncio.sleep(max(start + i / CAMERA_FPS - time.monotonic(), 0.0))
            sent.append(asyncio.create_task(one(frames[(k * 1009 + i * 7919) % len(frames)])))
        await asyncio.gather(*sent)

    await asyncio.gather(*(camera(k) for k in range(count)))
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {
        "sources": count,
        "frames": count * per_camera,
        "results": len(latencies),
        "failed": failures,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def within_bound(row: dict[str, Any]) -> bool:
    return bool(row["results"] == row["frames"] and row["p99_ms"] <= CAMERA_BOUND_MS)


def cameras_edgecollab(
    config_path: Path, test_set: LabelledSet, counts: list[int], duration: float
) -> list[dict[str, Any]]:
    from edgecollab.cameras import CameraSpec, run_cameras, totals

    rows = []
    config = load_config(config_path)
    with LocalCluster(config_path, log_dir=config.resolve(".edgecollab/logs")) as local:
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        asyncio.run(run_cameras(local.clients_endpoint, test_set, CameraSpec(4, CAMERA_FPS, 2.0)))  # warm-up
        for count in counts:
            spec = CameraSpec(count, CAMERA_FPS, duration, degrade=True)
            t = totals(asyncio.run(run_cameras(local.clients_endpoint, test_set, spec)))
            rows.append({"sources": count, "frames": t["frames"], "results": t["results"], "failed": 0,
                         "p50_ms": t["p50_ms"], "p99_ms": t["p99_ms"], "accuracy": t["accuracy"]})  # fmt: skip
    return rows


def cameras_ray(config_path: Path, config: ClusterConfig, test_set: LabelledSet, table: ExplorationTable,
                counts: list[int], duration: float) -> list[dict[str, Any]]:  # fmt: skip
    with ray_boards(config_path, [n.name for n in config.nodes], "cameras") as handle:
        rows = []
        for count in counts:
            variant = uniform_variant(table, int(count * CAMERA_FPS * duration), count * CAMERA_FPS)

            async def infer(frame: np.ndarray, variant: str = variant) -> Any:
                return await handle.remote(variant, frame)

            rows.append({**asyncio.run(open_loop_cameras(infer, test_set.inputs, count, duration)), "variant": variant})
            if not within_bound(rows[-1]):
                break  # more cameras only take longer to drain; the largest count served is known
        return rows


def cameras_pytriton(config_path: Path, config: ClusterConfig, test_set: LabelledSet, table: ExplorationTable,
                     counts: list[int], duration: float) -> list[dict[str, Any]]:  # fmt: skip
    from pytriton.client import AsyncioModelClient
    from pytriton.triton import Triton, TritonConfig

    triton_environment()
    ports = {"http_port": 18_030, "grpc_port": 18_031, "metrics_port": 18_032}
    with Triton(config=TritonConfig(**ports)) as triton:
        bind_boards(triton, "cameras", [EmulatedBoard(str(config_path), n.name) for n in config.nodes])
        triton.run()
        rows = []
        for count in counts:
            variant = uniform_variant(table, int(count * CAMERA_FPS * duration), count * CAMERA_FPS)

            async def go(variant: str = variant, count: int = count) -> dict[str, Any]:
                async with AsyncioModelClient(f"grpc://localhost:{ports['grpc_port']}", "cameras") as client:

                    async def infer(frame: np.ndarray) -> Any:
                        names = np.array([[variant.encode()]], dtype=bytes)
                        return await client.infer_batch(inputs=frame, variant=names)

                    return await open_loop_cameras(infer, test_set.inputs, count, duration)

            rows.append({**asyncio.run(go()), "variant": variant})
            if not within_bound(rows[-1]):
                break  # more cameras only take longer to drain; the largest count served is known
        return rows


def run_cameras_load(args: argparse.Namespace) -> int:
    config_path = args.config.resolve()
    config = load_config(config_path)
    test_set = workload_source(config)
    counts = [int(c) for c in args.cameras.split(",")]
    results: dict[str, list[dict[str, Any]]] = {}
    skipped = {}
    if "edgecollab" in args.only.split(","):
        results["edgecollab"] = cameras_edgecollab(config_path, test_set, counts, args.duration)
    table = cached_table(config)  # what edgecollab measured for this config (its profile cache)
    for name, run in (("ray-serve", cameras_ray), ("pytriton", cameras_pytriton)):
        if name not in args.only.split(","):
            continue
        try:
            results[name] = run(config_path, config, test_set, table, counts, args.duration)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"skipped {name}: {skipped[name]}", file=sys.stderr)
    largest = {}
    for name, rows in results.items():
        ok = [r["sources"] for r in rows if within_bound(r)]
        largest[name] = max(ok, default=None)
        for r in rows:
            print(
                f"{name:>10} {r['sources']:3} cameras: {r['results']:,}/{r['frames']:,} answered, p50 "
                f"{r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms {r.get('variant', '')}",
                file=sys.stderr,
            )
        print(f"{name:>10}: largest within {CAMERA_BOUND_MS:g} ms p99: {largest[name]}", file=sys.stderr)
    out = {**run_info(), "fps": CAMERA_FPS, "duration_s": args.duration, "systems": results,
           "largest_within_100ms": largest, "skipped": skipped}  # fmt: skip
    write_results(args.out.with_name("peers_cameras.json"), out, lambda png: _plot_cameras(results, png))
    return 0


def _plot_cameras(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in results.items():
        ax.plot([r["sources"] for r in rows], [r["p99_ms"] for r in rows], "o-", label=name)
    ax.axhline(CAMERA_BOUND_MS, color="tab:red", linestyle="--", label="100 ms")
    ax.set_yscale("log")
    ax.set_xlabel("30 fps cameras")
    ax.set_ylabel("p99 latency (ms)")
    ax.legend()
    save(fig, path)


def run_closed_loop(args: argparse.Namespace) -> int:
    import tempfile

    config_path = closed_loop_config(Path(tempfile.mkdtemp(prefix="edgecollab-peers-")))
    systems = {"edgecollab": closed_edgecollab, "ray-serve": closed_ray, "pytriton": closed_pytriton}
    results: dict[str, list[dict[str, Any]]] = {}
    skipped = {}
    for name, run in systems.items():
        if name not in args.only.split(","):
            continue
        try:
            results[name] = run(config_path, args.in_flight, args.duration)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"skipped {name}: {skipped[name]}", file=sys.stderr)
            continue
        for row in results[name]:
            print(
                f"{name:>10} batch {row['batch']:3}: {row['requests_per_s']:7,.0f} requests/s, "
                f"{row['inputs_per_s']:8,.0f} inputs/s, p50 {row['p50_ms']:6.1f} ms, "
                f"{row['machine_cpu_ms_per_request']:.2f} ms machine CPU per request",
                file=sys.stderr,
            )
    out = {
        **run_info(),
        "load": {"variant": CLOSED_LOOP_VARIANT, "workers": CLOSED_LOOP_WORKERS, "in_flight": args.in_flight,
                 "duration_s": args.duration},
        "systems": results,
        "skipped": skipped,
    }  # fmt: skip
    path = args.out.with_name("peers_closed_loop.json")
    write_results(path, out, lambda png: _plot_closed_loop(results, png))
    return 0


def _plot_closed_loop(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    names = list(results)
    for ax, (batch, key, label) in zip(
        axes,
        ((1, "requests_per_s", "batch 1: requests/s"), (32, "inputs_per_s", "batch 32: inputs/s"),
         (256, "inputs_per_s", "batch 256: inputs/s")),
        strict=True,
    ):  # fmt: skip
        values = [next(r[key] for r in results[n] if r["batch"] == batch) for n in names]
        ax.bar(names, values, color=["tab:blue", "tab:orange", "tab:green"][: len(names)])
        ax.set_title(label)
    save(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--only", default="edgecollab,ray-serve,pytriton")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    parser.add_argument("--closed-loop", action="store_true", help="the closed-loop load instead of the workload")
    parser.add_argument("--duration", type=float, default=10.0, help="closed loop: seconds per batch size")
    parser.add_argument("--in-flight", type=int, default=8, help="closed loop: requests outstanding")
    parser.add_argument("--cameras", default="", help="camera counts, e.g. 8,16,32,48: the cameras load")
    args = parser.parse_args()
    if args.closed_loop:
        return run_closed_loop(args)
    if args.cameras:
        return run_cameras_load(args)
    wanted = args.only.split(",")

    config_path = args.config.resolve()
    config = load_config(config_path)
    test_set = workload_source(config)
    ours, table = run_edgecollab(config_path, test_set)
    systems = [ours]
    skipped = {}
    for name, run in PEERS.items():
        if name not in wanted:
            continue
        try:
            systems.append(run(config_path, config, test_set, table))
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"skipped {name}: {skipped[name]}", file=sys.stderr)
    for s in systems:
        s["ratio_to_edgecollab"] = {
            "throughput": s["achieved_ips"] / ours["achieved_ips"],
            "accuracy_points": (s["accuracy"] - ours["accuracy"]) * 100,
            "targets_met": f"{s['targets_met']}/{len(s['requests'])} vs {ours['targets_met']}/{len(ours['requests'])}",
            "one_input_latency": s["one_input_latency_ms_p50"] / ours["one_input_latency_ms_p50"],
        }
        print(
            f"{s['system']:>10}: {s['achieved_ips']:>7,.0f} inf/s, accuracy {s['accuracy'] * 100:.2f} %, targets met"
            f" {s['targets_met']}/{len(s['requests'])}, one-input round trip {s['one_input_latency_ms_p50']:.2f} ms",
            file=sys.stderr,
        )
    out = {
        **run_info(),
        "workload": [{"inputs": n, "target_ips": t} for n, t in DEFAULT_WORKLOAD],
        "systems": systems,
        "skipped": skipped,
    }
    write_results(args.out, out, lambda path: _plot(systems, path))
    return 0


def _plot(systems: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    count = len(systems[0]["requests"])
    width = 0.8 / len(systems)
    for k, s in enumerate(systems):
        xs = [i + k * width for i in range(count)]
        ax.bar(xs, [r["achieved_ips"] for r in s["requests"]], width, label=s["system"])
    targets = [r["target_ips"] for r in systems[0]["requests"]]
    ax.hlines(targets, [i - width / 2 for i in range(count)], [i + 0.8 - width / 2 for i in range(count)],
              colors="k", linestyles="dashed", label="target")  # fmt: skip
    ax.set_xticks([i + 0.4 - width / 2 for i in range(count)],
                  [f"{r['inputs']:,} @ {r['target_ips']:,.0f}" for r in systems[0]["requests"]])  # fmt: skip
    ax.set_ylabel("achieved inferences/s")
    ax.set_xlabel("request (inputs @ target inf/s)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())

"""edgecollab against what a user would reach for instead: Ray Serve and NVIDIA Triton (PyTriton).

    make bench-peers          # installs ray[serve] and nvidia-pytriton into .venv-peers, then runs this
    .venv-peers/bin/python benchmarks/peers.py [--config cluster.toml] [--only edgecollab,ray]

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
import os
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, run_info, write_results

from edgecollab.client import Client
from edgecollab.config import ClusterConfig, load_config
from edgecollab.inspection import ask, table_from_rows, wait_until_ready
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
        from edgecollab.worker import ShardRunner

        config = load_config(config_path)
        self.runner = ShardRunner(config, config.node(node))

    def run(self, variant: str, inputs: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        predictions, board_seconds = self.runner.run(variant, inputs)
        time.sleep(max(0.0, started + board_seconds - time.perf_counter()))
        return predictions


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
def run_ray(config_path: Path, config: ClusterConfig, test_set: LabelledSet, table: ExplorationTable) -> dict[str, Any]:
    import ray
    from ray import serve

    nodes = [n.name for n in config.nodes]

    @ray.remote(num_cpus=0)
    class BoardNames:  # hands each replica a different board
        def __init__(self, names: list[str]) -> None:
            self.names = list(names)

        def take(self) -> str:
            return self.names.pop(0)

    @serve.deployment(num_replicas=len(nodes), max_ongoing_requests=WINDOW, ray_actor_options={"num_cpus": 0})
    class Board:
        def __init__(self, config_path: str, names: Any) -> None:
            self.node = ray.get(names.take.remote())
            self.board = EmulatedBoard(config_path, self.node)

        def __call__(self, variant: str, inputs: np.ndarray) -> np.ndarray:
            return self.board.run(variant, inputs)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        names = BoardNames.remote(nodes)
        handle = serve.run(Board.bind(str(config_path), names), name="edgecollab-peer", route_prefix=None)

        async def infer(variant: str, inputs: np.ndarray) -> np.ndarray:
            parts = [handle.remote(variant, inputs[i : i + SHARD]) for i in range(0, len(inputs), SHARD)]
            return np.concatenate(await asyncio.gather(*parts))

        return asyncio.run(_serve_workload("ray-serve", infer, test_set, table))
    finally:
        serve.shutdown()
        ray.shutdown()


# --- PyTriton -----------------------------------------------------------------------------------
def run_pytriton(config_path: Path, config: ClusterConfig, test_set: LabelledSet,
                 table: ExplorationTable) -> dict[str, Any]:  # fmt: skip
    from pytriton.client import AsyncioModelClient
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    nodes = [n.name for n in config.nodes]
    # Triton's Python stub links the system's libpython; make it load this interpreter's own,
    # whose standard library is the one on its path.
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
    ports = {"http_port": 18_000, "grpc_port": 18_001, "metrics_port": 18_002}
    with Triton(config=TritonConfig(**ports)) as triton:
        for node in nodes:
            board = EmulatedBoard(str(config_path), node)

            def make(board: EmulatedBoard = board) -> Any:
                @batch
                def infer(inputs: np.ndarray, variant: np.ndarray) -> dict[str, np.ndarray]:
                    name = bytes(variant[0][0]).decode()
                    return {"predictions": board.run(name, inputs).reshape(-1, 1)}

                return infer

            triton.bind(
                model_name=node,
                infer_func=make(),
                inputs=[
                    Tensor(name="inputs", dtype=np.uint8, shape=(1, 28, 28)),
                    Tensor(name="variant", dtype=bytes, shape=(1,)),
                ],
                outputs=[Tensor(name="predictions", dtype=np.int64, shape=(1,))],
                config=ModelConfig(max_batch_size=256, batcher=DynamicBatcher(max_queue_delay_microseconds=500)),
            )
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("cluster.toml"))
    parser.add_argument("--only", default="edgecollab,ray-serve,pytriton")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    args = parser.parse_args()
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

"""Triton's perf_analyzer against edgecollab's v2 gateway and against PyTriton, side by side in one run.

    make bench-v2     # PyTriton in .venv-peers, perf_analyzer unpacked beside it, then this script

Both serve cnn-8 on this machine with four un-emulated workers: edgecollab's coordinator, four workers
and one gateway; PyTriton's Triton server with one model of four instances and its dynamic batcher.
perf_analyzer, the same binary with the same flags for both, drives each at batch 1, 32 and 256 and
concurrency 1, 8 and 32, over HTTP and over gRPC, to the model a Triton user names
(``-m fashion-mnist``). Each point reports throughput, p50 and p99 latency (perf_analyzer's), and CPU
per request: the server's processes (from /proc) and the whole machine, over requests the server
counted (its statistics extension). Writes benchmarks/results/v2_perf_analyzer.json and .png.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from common import MANIFEST, RESULTS, cpu_seconds, machine_busy_s, run_info, unemulated_config, write_results

from edgecollab.inspection import wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.plots import pyplot, save

MODEL = "fashion-mnist"
VARIANT = "cnn-8"
WORKERS = 4
BATCHES = (1, 32, 256)
CONCURRENCIES = (1, 8, 32)
PROTOCOLS = ("http", "grpc")
HTTP_PORT, GRPC_PORT = 18_100, 18_101


# Unpacked beside the environment by benchmarks/perf_analyzer_unpack.py (make bench-v2 does it).
PERF_ANALYZER = Path(sys.prefix) / "perf_analyzer"


def perf_analyzer_binary() -> list[str]:
    binary = PERF_ANALYZER / "bin" / "perf_analyzer"
    if not binary.exists():
        sys.exit(f"no {binary}: `make bench-v2` unpacks it (benchmarks/perf_analyzer_unpack.py)")
    return [str(binary)]


def perf_environment() -> dict[str, str]:
    """perf_analyzer finds the CUDA runtime it links (it runs without a GPU) beside itself."""
    libraries = [str(PERF_ANALYZER / "lib"), os.environ.get("LD_LIBRARY_PATH", "")]
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(filter(None, libraries))}


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds used so far by ``roots`` and every process below them (live ones, from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    members, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in members]
        members.update(children)
        frontier += children
    total = 0.0
    for pid in members:
        try:
            total += cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue
    return total


def success_count(http_port: int, headers: dict[str, str] | None = None) -> int:
    """Requests the server answered so far, from its statistics extension (every version of the model)."""
    import tritonclient.http as triton_http

    client = triton_http.InferenceServerClient(f"127.0.0.1:{http_port}")
    stats = client.get_inference_statistics(MODEL, headers=headers)["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


# perf_analyzer's stability criterion (windows within this % of each other); on a busy two-core host a
# point may not settle within its trials, and is then measured again with a looser one.
STABILITY_PERCENTAGES = (25, 50, 100)


def measure(name: str, protocol: str, batch: int, concurrency: int, roots: list[int], window_ms: int) -> dict[str, Any]:
    """One perf_analyzer run; its figures, and CPU per request over what the server counted meanwhile."""
    url = f"127.0.0.1:{HTTP_PORT if protocol == 'http' else GRPC_PORT}"
    failures = []
    for stability in STABILITY_PERCENTAGES:
        with tempfile.TemporaryDirectory() as folder:
            report = Path(folder) / "report.csv"
            command = [
                *perf_analyzer_binary(), "-m", MODEL, "-u", url, "-i", protocol, "-b", str(batch),
                "--concurrency-range", str(concurrency), "--measurement-interval", str(window_ms),
                "--max-trials", "6", "--stability-percentage", str(stability), "-f", str(report),
            ]  # fmt: skip
            served, server, busy = success_count(HTTP_PORT), tree_cpu_seconds(roots), machine_busy_s()
            done = subprocess.run(command, capture_output=True, text=True, env=perf_environment(), check=False)
            served = success_count(HTTP_PORT) - served
            server, busy = tree_cpu_seconds(roots) - server, machine_busy_s() - busy
            if done.returncode == 0 and report.exists():
                (row,) = list(csv.DictReader(report.open()))
                break
            failures.append(f"stability {stability} %: {done.stdout[-300:]} {done.stderr[-300:]}")
    else:
        raise RuntimeError(f"perf_analyzer failed on {name}: {' | '.join(failures)}")
    throughput = float(row["Inferences/Second"])
    print(f"{name:10} {protocol:4} b={batch:<3} c={concurrency:<2} {throughput:>10.0f} inf/s", file=sys.stderr)
    return {
        "server": name,
        "protocol": protocol,
        "batch": batch,
        "concurrency": concurrency,
        "inferences_per_s": throughput,
        "p50_ms": float(row["p50 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
        "stability_percentage": stability,
        "requests_counted": served,
        "server_cpu_ms_per_request": server / max(served, 1) * 1e3,
        "machine_cpu_ms_per_request": busy / max(served, 1) * 1e3,
    }


def sweep(name: str, roots: list[int], window_ms: int) -> list[dict[str, Any]]:
    return [
        measure(name, protocol, batch, concurrency, roots, window_ms)
        for protocol in PROTOCOLS
        for batch in BATCHES
        for concurrency in CONCURRENCIES
    ]


def wait_for(http_port: int, timeout_s: float) -> None:
    import tritonclient.http as triton_http

    client = triton_http.InferenceServerClient(f"127.0.0.1:{http_port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.is_model_ready(MODEL):
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no server ready on port {http_port} within {timeout_s:.0f} s")


# --- edgecollab ----------------------------------------------------------------------------------------
@contextmanager
def edgecollab_served(folder: Path) -> Iterator[list[int]]:
    """Coordinator, four un-emulated cnn-8 workers and a gateway; the roots of their processes."""
    config = unemulated_config(folder, VARIANT, WORKERS)
    with LocalCluster(config, log_dir=folder / "logs") as local:
        wait_until_ready(local.clients_endpoint, timeout_s=600)
        command = [
            sys.executable, "-m", "edgecollab", "gateway", "--config", str(config), "--coordinator",
            local.clients_endpoint, "--http", f"127.0.0.1:{HTTP_PORT}", "--grpc", f"127.0.0.1:{GRPC_PORT}",
        ]  # fmt: skip
        gateway = subprocess.Popen(command)
        try:
            wait_for(HTTP_PORT, 120)
            yield [gateway.pid, *(p.pid for p in [local.coordinator, *local.workers.values()] if p is not None)]
        finally:
            gateway.terminate()
            gateway.wait(timeout=15)


# --- PyTriton ------------------------------------------------------------------------------------------
def serve_pytriton() -> None:
    """Run in a process of its own: one model of four cnn-8 instances (ONNX Runtime, one thread each)
    behind Triton's dynamic batcher, until stopped."""
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    libdir = sysconfig.get_config_var("LIBDIR")  # Triton's Python stub loads this interpreter's libpython
    os.environ["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
    model = MANIFEST.parent / "fashion-mnist" / f"{VARIANT}.onnx"

    def instance() -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

        @batch
        def infer(images: np.ndarray) -> dict[str, np.ndarray]:
            (logits,) = session.run(None, {"images": images})
            return {"logits": logits}

        return infer

    ports = {"http_port": HTTP_PORT, "grpc_port": GRPC_PORT, "metrics_port": HTTP_PORT + 2}
    # Statistics are open to perf_analyzer as on a plain Triton server (PyTriton >= 0.7 guards them).
    with Triton(config=TritonConfig(**ports), security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=[instance() for _ in range(WORKERS)],
            inputs=[Tensor(name="images", dtype=np.uint8, shape=(1, 28, 28))],
            outputs=[Tensor(name="logits", dtype=np.float32, shape=(10,))],
            config=ModelConfig(max_batch_size=256, batcher=DynamicBatcher(max_queue_delay_microseconds=500)),
        )
        triton.serve()


@contextmanager
def pytriton_served() -> Iterator[list[int]]:
    server = subprocess.Popen([sys.executable, __file__, "--serve-pytriton"])
    try:
        wait_for(HTTP_PORT, 300)
        yield [server.pid]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- results -------------------------------------------------------------------------------------------
def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(BATCHES), figsize=(5 * len(BATCHES), 7), squeeze=False)
    for col, batch in enumerate(BATCHES):
        for row, protocol in enumerate(PROTOCOLS):
            ax = axes[row][col]
            for server, marker in (("edgecollab", "o"), ("pytriton", "s")):
                points = [r for r in rows if (r["server"], r["protocol"], r["batch"]) == (server, protocol, batch)]
                ax.plot([p["concurrency"] for p in points], [p["inferences_per_s"] for p in points],
                        marker=marker, label=server)  # fmt: skip
            ax.set_title(f"{protocol.upper()}, batch {batch}")
            ax.set_xlabel("concurrency (perf_analyzer)")
            ax.set_ylabel("inferences/s")
            ax.set_xscale("log", base=2)
            ax.legend()
    fig.suptitle(f"perf_analyzer, {VARIANT} on {WORKERS} un-emulated workers / instances")
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-ms", type=int, default=3000, help="perf_analyzer's measurement interval")
    parser.add_argument("--serve-pytriton", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_pytriton:
        serve_pytriton()
        return
    perf_analyzer_binary()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder, edgecollab_served(Path(folder)) as roots:
        rows += sweep("edgecollab", roots, args.window_ms)
    with pytriton_served() as roots:
        rows += sweep("pytriton", roots, args.window_ms)
    ratios = []
    for mine in (r for r in rows if r["server"] == "edgecollab"):
        key = (mine["protocol"], mine["batch"], mine["concurrency"])
        (theirs,) = [
            r for r in rows if r["server"] == "pytriton" and (r["protocol"], r["batch"], r["concurrency"]) == key
        ]
        ratios.append({"protocol": key[0], "batch": key[1], "concurrency": key[2],
                       "throughput_ratio": mine["inferences_per_s"] / theirs["inferences_per_s"]})  # fmt: skip
    results = {
        **run_info(),
        "setup": {
            "model": MODEL,
            "variant": VARIANT,
            "workers": WORKERS,
            "window_ms": args.window_ms,
            "client": "perf_analyzer (tritonclient 2.51.0 wheel)",
        },
        "points": rows,
        "edgecollab_over_pytriton": ratios,
    }
    write_results(RESULTS / "v2_perf_analyzer.json", results, lambda path: plot(rows, path))


if __name__ == "__main__":
    main()

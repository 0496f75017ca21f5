"""The ``edgecollab`` command line. Commands parse options and call the library; no logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .config import DEFAULT_CONFIG, ClusterConfig, load_config, on_loopback, with_endpoints, with_faults
from .errors import ConfigError, EdgecollabError, InvalidInputError, RequestFailed
from .security import client_curve, node_curve
from .worker import logs
from .zoo import load_manifest, load_test_set, pareto_front, sha256_of, verify_variant

if TYPE_CHECKING:
    from .client import ProgressCallback
    from .workload import ProgressFactory, RequestSpec

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(no_args_is_help=True, help="List, verify and inspect model variants.")
app.add_typer(models_app, name="models")
keys_app = typer.Typer(no_args_is_help=True, help="CURVE key pairs for a secured cluster.")
app.add_typer(keys_app, name="keys")

# Exit codes scripts can rely on (0: done).
EXIT_CHECK_FAILED = 1  # the command ran, and what it checked did not hold
EXIT_USAGE = 2  # bad input: config, manifest, arguments, an invalid request
EXIT_NOT_SERVED = 3  # the cluster could not serve it: busy, infeasible (strict), boards lost, coordinator gone
# A worker refused by the coordinator also exits 3; Ctrl-C exits 130.

P = ParamSpec("P")
R = TypeVar("R")

ManifestOption = Annotated[
    Path | None, typer.Option("--manifest", help="model manifest (default: ./models/zoo.toml or the bundled one)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
ConfigOption = Annotated[Path, typer.Option("--config", help="cluster config (TOML)")]
CoordinatorOption = Annotated[
    str | None, typer.Option("--coordinator", help="coordinator endpoint, e.g. tcp://HOST:PORT (default: from config)")
]
PolicyOption = Annotated[str | None, typer.Option("--policy", help="planning policy (default: from config)")]
TargetOption = Annotated[float | None, typer.Option("--target-ips", help="performance target, inferences/s")]
MinAccuracyOption = Annotated[float | None, typer.Option("--min-accuracy", help="minimum accuracy, a fraction")]
SeedOption = Annotated[int, typer.Option("--seed", help="seed for drawing inputs from the test set")]
SavePredictionsOption = Annotated[
    Path | None, typer.Option("--save-predictions", help="write test-set indices and predictions to this .npz")
]
TaskOption = Annotated[
    str | None, typer.Option("--task", help="the application the request is for (default: the config's default task)")
]
OutputsOption = Annotated[
    str | None,
    typer.Option("--outputs", help="what comes back: predictions, top5 or all (saved with --save-predictions)"),
]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="fail (exit 3) instead of serving the fastest plan if the target is infeasible")
]
ConfidenceOption = Annotated[
    float | None,
    typer.Option(
        "--confidence", min=0.5, max=0.999,
        help="probability a plan aims to meet its target with (default: [coordinator] confidence, 0.9)",
    ),
]  # fmt: skip


def _with_confidence(cluster: ClusterConfig, confidence: float | None) -> ClusterConfig:
    """The config with its coordinator's confidence replaced, when one was given."""
    if confidence is None:
        return cluster
    settings = cluster.coordinator.model_copy(update={"confidence": confidence})
    return cluster.model_copy(update={"coordinator": settings})


# The global logging options, handed on to the processes ``run`` starts.
_logging = {"verbose": 0, "json": False}


@app.callback()
def _options(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="more logging (-v info, -vv debug)")] = 0,
    log_json: Annotated[bool, typer.Option("--log-json", help="log one JSON object per line on stderr")] = False,
) -> None:
    """Collaborative, accuracy-aware DNN inference on heterogeneous edge boards."""
    _logging.update(verbose=verbose, json=log_json)
    logs.configure(verbose, log_json)


def _reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn edgecollab's own errors into one clear line on stderr and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except EdgecollabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            served = isinstance(exc, RequestFailed) and not isinstance(exc, InvalidInputError)
            raise typer.Exit(EXIT_NOT_SERVED if served else EXIT_USAGE) from None

    return wrapper


@models_app.command("list")
@_reports_errors
def models_list(manifest: ManifestOption = None, json_output: JsonOption = False) -> None:
    """The variants of the manifest: accuracy, MACs, parameters, quantization and file size."""
    zoo = load_manifest(manifest)
    front = {zoo.id_of(v) for task in zoo.tasks for v in pareto_front(zoo.for_task(task))}
    rows: list[dict[str, Any]] = [
        {
            "name": zoo.id_of(v),
            "task": v.task,
            "accuracy": v.accuracy,
            "macs": v.macs,
            "params": v.params,
            "quantized": v.quantized,
            "bytes": zoo.resolve(v.file).stat().st_size,
            "pareto": zoo.id_of(v) in front,
        }
        for v in sorted(zoo.variants.values(), key=lambda v: (v.task, v.macs))
    ]
    if json_output:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} variants in {zoo.path}")
    for column in ("name", "task", "accuracy", "MACs", "params", "quantized", "file size", "Pareto"):
        table.add_column(column, justify="left" if column in ("name", "task") else "right")
    for r in rows:
        table.add_row(
            r["name"],
            r["task"],
            f"{r['accuracy'] * 100:.2f} %",
            f"{r['macs']:,}",
            f"{r['params']:,}",
            "int8" if r["quantized"] else "float",
            f"{r['bytes'] / 1024:,.0f} KiB",
            "*" if r["pareto"] else "",
        )
    _console().print(table)


@models_app.command("verify")
@_reports_errors
def models_verify(
    manifest: ManifestOption = None,
    json_output: JsonOption = False,
    variant: Annotated[list[str] | None, typer.Option("--variant", help="verify only these (repeatable)")] = None,
) -> None:
    """Re-score every variant on its test set and time it single-threaded at batch 1 and 32.

    Exits 1 if a sha256 differs or a measured accuracy is more than 0.2 points off the manifest.
    """
    zoo = load_manifest(manifest, check_files=False)
    chosen = [zoo.variant(name) for name in variant] if variant else list(zoo.variants.values())
    test_sets = {
        task: load_test_set(zoo, zoo.tasks[task]) if zoo.tasks[task].has_test_set else None
        for task in {v.task for v in chosen}
    }
    checks = [verify_variant(zoo, v, test_sets[v.task]) for v in chosen]
    failed = [c.name for c in checks if not (c.sha256_ok and c.accuracy_ok)]
    if json_output:
        rows = [
            {
                "name": c.name,
                "accuracy_manifest": c.accuracy_manifest,
                "accuracy_measured": c.accuracy_measured,
                "sha256_ok": c.sha256_ok,
                "ips_b1": round(c.ips_b1, 1),
                "ips_b32": round(c.ips_b32, 1),
                "macs": zoo.variants[c.name].macs,
                "quantized": zoo.variants[c.name].quantized,
                "ok": c.name not in failed,
            }
            for c in checks
        ]
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"verified {len(checks)} variants of {zoo.path}")
        for column in ("name", "accuracy (manifest)", "accuracy (measured)", "sha256", "inf/s b=1", "inf/s b=32"):
            table.add_column(column, justify="left" if column == "name" else "right")
        for c in checks:
            table.add_row(
                c.name,
                f"{c.accuracy_manifest * 100:.2f} %",
                f"{c.accuracy_measured * 100:.2f} %"
                if c.accuracy_measured is not None
                else f"stated: {c.quality_source}",
                "ok" if c.sha256_ok else "MISMATCH",
                f"{c.ips_b1:,.0f}",
                f"{c.ips_b32:,.0f}",
            )
        _console().print(table)
    if failed:
        print(f"verification failed for: {', '.join(failed)}", file=sys.stderr)
        raise typer.Exit(EXIT_CHECK_FAILED)


@models_app.command("add")
@_reports_errors
def models_add(
    model: Annotated[Path, typer.Argument(help="the ONNX file to add")],
    task: Annotated[str, typer.Option("--task", help="the task it serves: an existing one, or a new one")],
    manifest: ManifestOption = None,
    name: Annotated[str | None, typer.Option("--name", help="the variant's name (default: the file's)")] = None,
    labelled: Annotated[
        Path | None,
        typer.Option("--labelled", help="a new task's labelled test set: .npz, IDX images (with --labels) or a folder"),
    ] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="the IDX labels of IDX --labelled images")] = None,
    quality: Annotated[
        str | None,
        typer.Option("--quality", help="a new task's scoring: top1, map50 or stated (default: from outputs)"),
    ] = None,
    figure: Annotated[
        float | None, typer.Option("--quality-figure", help="a stated quality (0..1) when there is no labelled set")
    ] = None,
    source: Annotated[str | None, typer.Option("--source", help="where the stated quality comes from")] = None,
    base: Annotated[str | None, typer.Option("--base", help="the float variant a quantized one was made from")] = None,
    fit: Annotated[
        str | None, typer.Option("--fit", help="a new task's video frames: letterbox (default) or stretch to the input")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Add an ONNX file to the manifest: inspect its graph, measure its quality, write its entry.

    The file is copied next to the manifest, as TASK/NAME.onnx. Its quality is measured on the task's
    labelled test set (a new task takes --labelled as its own), or stated with --quality-figure and --source.
    """
    from .zoo.manifest import default_manifest_path
    from .zoo.onboard import add_model

    if quality is not None and quality not in ("top1", "map50", "stated"):
        raise EdgecollabError(f"--quality must be top1, map50 or stated; got {quality!r}")
    if fit is not None and fit not in ("letterbox", "stretch"):
        raise EdgecollabError(f"--fit must be letterbox or stretch; got {fit!r}")
    path = manifest or default_manifest_path()
    added = add_model(
        path, model, task, name=name, labelled=labelled, labels=labels, quality=quality, stated=figure,
        source=source, base=base, fit=fit,
    )  # fmt: skip
    v = added.variant
    if json_output:
        row = {"manifest": str(path), "variant": v.model_dump(exclude_none=True), "new_task": added.new_task}
        print(json.dumps({**row, "task": added.task.model_dump(), "graph": added.graph.as_dict()}, indent=2))
        return
    how = f"measured ({added.task.quality})" if added.measured else f"stated ({v.quality_source})"
    new = " (new)" if added.new_task else ""
    print(
        f"added {v.name} to task {v.task}{new} in {path}: quality {v.accuracy * 100:.2f} % {how},"
        f" {v.macs:,} MACs, {v.params:,} params, sha256 {v.sha256[:12]}…"
    )


@models_app.command("inspect")
@_reports_errors
def models_inspect(file: Annotated[Path, typer.Argument(help="an ONNX model file")]) -> None:
    """Print the sha256, MACs and parameters of an ONNX file, for writing its manifest entry."""
    from .zoo.graph import graph_cost  # onnx: not needed (nor installed) on the boards

    if not file.is_file():
        raise EdgecollabError(f"no such model file: {file}")
    try:
        cost = graph_cost(file)
    except Exception as exc:  # onnx raises many types for unreadable files
        raise EdgecollabError(f"cannot read {file} as an ONNX model: {exc}") from exc
    print(json.dumps({"file": str(file), "sha256": sha256_of(file), "macs": cost.macs, "params": cost.params}))


@app.command()
@_reports_errors
def worker(
    node: Annotated[str, typer.Option("--node", help="this board's node name in the config")],
    config: ConfigOption = DEFAULT_CONFIG,
    coordinator: CoordinatorOption = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="emulated only: slow=FACTOR@S, hang@S, stall@S, garble@S or vanish@S after start (repeatable)",
        ),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="where model files are kept (default ~/.cache/edgecollab/models)")
    ] = None,
) -> None:
    """Run one board's worker: connect to the coordinator, take its settings and models, and serve shards.

    The same worker as ``edgecollab-worker`` (the board's own install); here the endpoint and keys
    may come from the config, and emulated boards may be given faults.
    """
    from .worker.main import run_worker
    from .worker.settings import EventSpec

    cluster = load_config(config)
    configured = cluster.node(node)
    node_config = with_faults(configured, fault or [])
    extra = tuple(EventSpec(e.at_s, e.speed, e.action) for e in node_config.events[len(configured.events) :])
    endpoint = coordinator or cluster.coordinator.workers
    code = run_worker(node, endpoint, curve=node_curve(cluster, node_config), cache=cache, events=extra)
    raise typer.Exit(code)


@app.command()
@_reports_errors
def fleet(
    config: ConfigOption = DEFAULT_CONFIG,
    boards: Annotated[
        int | None, typer.Option("--boards", min=1, help="run the config's first N [[nodes]] (default: all)")
    ] = None,
    coordinator: CoordinatorOption = None,
    stand_ins: Annotated[
        bool,
        typer.Option(
            "--stand-ins",
            help="emulated boards compute with their task's cheapest variant; the cost model alone sets the time",
        ),
    ] = False,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="where model files are kept (default ~/.cache/edgecollab/models)")
    ] = None,
) -> None:
    """Run many boards in one process, each a worker of its own to the coordinator (tests and benchmarks).

    Each board has its own connection, identity, heartbeats and cost model, as in `edgecollab worker`;
    they share one event loop, the model cache and one ONNX Runtime session per model file.
    """
    from .fleet import Board, run_fleet
    from .worker.agent import EXIT_REFUSED

    cluster = load_config(config)
    if boards is not None and boards > len(cluster.nodes):
        raise ConfigError(f"--boards {boards}: {config} has {len(cluster.nodes)} [[nodes]]")
    fleet_boards = [Board(n.name, node_curve(cluster, n)) for n in cluster.nodes[:boards]]
    codes = asyncio.run(
        run_fleet(fleet_boards, coordinator or cluster.coordinator.workers, cache=cache, stand_ins=stand_ins)
    )
    refused = sorted(name for name, code in codes.items() if code == EXIT_REFUSED)
    if refused:
        print(f"error: refused by the coordinator: {', '.join(refused)}", file=sys.stderr)
        raise typer.Exit(EXIT_NOT_SERVED)


@app.command("worker-wheel")
@_reports_errors
def worker_wheel(
    out: Annotated[Path, typer.Option("--out", help="folder to write the wheel to")] = Path("dist"),
) -> None:
    """Build the board's worker wheel (edgecollab-worker: numpy, pyzmq, msgpack, onnxruntime) to copy to boards."""
    from .boards import build_worker_wheel

    print(build_worker_wheel(out))


@app.command("coordinator")
@_reports_errors
def coordinator_command(
    config: ConfigOption = DEFAULT_CONFIG,
    workers: Annotated[str | None, typer.Option("--workers", help="bind workers' ROUTER here instead")] = None,
    clients: Annotated[str | None, typer.Option("--clients", help="bind clients' ROUTER here instead")] = None,
    confidence: ConfidenceOption = None,
) -> None:
    """Run the coordinator (global node) until SIGTERM or Ctrl-C; with [gateway] start = true, a v2 gateway
    process beside it."""
    from .coordinator import Coordinator

    cluster = _with_confidence(load_config(config), confidence)
    gateway = None
    if cluster.gateway.start:  # its own process: the coordinator's loop carries no HTTP
        endpoint = on_loopback(clients or cluster.coordinator.clients)
        command = [sys.executable, "-m", "edgecollab", "gateway", "--config", str(config), "--coordinator", endpoint]
        gateway = subprocess.Popen(command)
    try:
        asyncio.run(Coordinator(cluster, workers_endpoint=workers, clients_endpoint=clients).serve())
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=10)


@app.command("gateway")
@_reports_errors
def gateway_command(
    config: ConfigOption = DEFAULT_CONFIG,
    coordinator: CoordinatorOption = None,
    http: Annotated[
        str | None, typer.Option("--http", help="HOST:PORT of v2 HTTP/REST (default: [gateway] http)")
    ] = None,
    grpc: Annotated[str | None, typer.Option("--grpc", help="HOST:PORT of v2 gRPC (default: [gateway] grpc)")] = None,
) -> None:
    """Serve the Open Inference Protocol (KServe v2, Triton's extensions) for the coordinator until SIGTERM.

    Triton and KServe clients and perf_analyzer talk to it unchanged: a model is a task, a version
    one of its variants (pinned). Beyond loopback it needs TLS with a token or client certificates.
    """
    from .gateway import Gateway

    cluster = load_config(config)
    settings = with_endpoints(cluster.gateway, http, grpc)
    endpoint = coordinator or _client_endpoint(cluster)
    gateway = Gateway(settings, endpoint, curve=client_curve(cluster), base_dir=cluster.base_dir)
    asyncio.run(gateway.serve())


@app.command()
@_reports_errors
def submit(
    inputs: Annotated[int, typer.Option("--inputs", min=1, help="number of test-set images to send")],
    target_ips: TargetOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    coordinator: CoordinatorOption = None,
    min_accuracy: MinAccuracyOption = None,
    policy: PolicyOption = None,
    seed: SeedOption = 0,
    json_output: JsonOption = False,
    save_predictions: SavePredictionsOption = None,
    strict: StrictOption = False,
    task: TaskOption = None,
    outputs: OutputsOption = None,
) -> None:
    """Send one request of test-set images to a running coordinator and print what happened.

    Exits 3 if the cluster could not serve it (busy, infeasible with --strict, boards lost).
    """
    from .workload import RequestSpec, run_sync, workload_sources

    cluster = load_config(config)
    endpoint = coordinator or _client_endpoint(cluster)
    _check_task(cluster, task, config)
    spec = RequestSpec(inputs, target_ips, min_accuracy, policy, strict, task, outputs)
    with _progress_bars(not json_output) as progress:
        rows = run_sync(endpoint, workload_sources(cluster), [spec], seed, client_curve(cluster), progress)
    _print_outcome(policy or cluster.coordinator.policy, cluster, rows, json_output, save_predictions)


@app.command()
@_reports_errors
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    policy: PolicyOption = None,
    requests: Annotated[int | None, typer.Option("--requests", min=1, help="number of requests")] = None,
    inputs: Annotated[int | None, typer.Option("--inputs", min=1, help="inputs per request")] = None,
    target_ips: TargetOption = None,
    min_accuracy: MinAccuracyOption = None,
    seed: SeedOption = 0,
    json_output: JsonOption = False,
    save_predictions: SavePredictionsOption = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="NODE:slow=FACTOR@S, NODE:hang@S, NODE:stall@S, NODE:garble@S or NODE:vanish@S after start"
            " (repeatable)",
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="draw per-node throughput and variants over time to this PNG")
    ] = None,
    strict: StrictOption = False,
    task: TaskOption = None,
    confidence: ConfidenceOption = None,
) -> None:
    """Start a coordinator and a worker per node of the config here, run a workload, and stop them.

    With no flags it runs a default workload of several requests of varied sizes and targets, on every
    task the config serves at the same time (each task's requests one after another).
    """
    from .inspection import wait_until_ready
    from .local import LocalCluster
    from .workload import RequestSpec, default_workload, run_sync, workload_sources

    cluster = load_config(config)
    if plot is not None:
        from .plots import pyplot

        pyplot()  # refuse before starting anything if matplotlib is missing
    _check_task(cluster, task, config)
    if requests is None and inputs is None and target_ips is None and task is None:
        specs = default_workload(cluster, policy, strict)
        if min_accuracy is not None:
            specs = [dataclasses.replace(s, min_accuracy=min_accuracy) if s.task is None else s for s in specs]
    else:
        specs = [RequestSpec(inputs or 1000, target_ips, min_accuracy, policy, strict, task)] * (requests or 1)
    test_set = workload_sources(cluster)
    log_dir = cluster.resolve(".edgecollab/logs")
    faults: dict[str, list[str]] = {}
    for item in fault or []:
        name, _, change = item.partition(":")
        with_faults(cluster.node(name), [change])  # refuse a bad fault before starting anything
        faults.setdefault(name, []).append(change)
    verbosity, log_json = int(_logging["verbose"]), bool(_logging["json"])
    with LocalCluster(
        config, log_dir=log_dir, faults=faults, verbose=verbosity, log_json=log_json, confidence=confidence
    ) as local:
        if not json_output:
            print(f"started a coordinator and {len(local.workers)} workers; logs in {log_dir}", file=sys.stderr)
        try:
            # Requests would wait for the cluster anyway; waiting here keeps start-up out of their figures.
            curve = client_curve(cluster)
            wait_until_ready(local.clients_endpoint, cluster.coordinator.startup_timeout_s + 300, curve)
            with _progress_bars(not json_output) as progress:
                rows = run_sync(local.clients_endpoint, test_set, specs, seed, curve, progress)
        except EdgecollabError:
            print(f"the cluster's logs are in {log_dir}", file=sys.stderr)
            raise
    if plot is not None:
        from .plots import plot_run

        plot_run(rows, [n.name for n in cluster.nodes], plot)
    _print_outcome(policy or cluster.coordinator.policy, cluster, rows, json_output, save_predictions)


@app.command()
@_reports_errors
def stream(
    sources: Annotated[int, typer.Option("--sources", min=1, max=1000, help="number of simulated cameras")] = 4,
    fps: Annotated[
        float | None,
        typer.Option("--fps", min=0.1, max=10_000, help="frames per second of each camera (30), or of each --source"),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0.1, max=86_400, help="seconds each camera (10) or --source (to its end) sends"),
    ] = None,
    max_latency_ms: Annotated[
        float | None, typer.Option("--max-latency-ms", help="each frame's latency bound (default: from config)")
    ] = None,
    min_accuracy: MinAccuracyOption = None,
    degrade: Annotated[
        bool, typer.Option("--degrade", help="admit streams the cluster cannot fully serve, rather than refuse them")
    ] = False,
    backpressure: Annotated[
        str, typer.Option("--backpressure", help="when a stream's queue is full: block, drop-oldest or fail")
    ] = "block",
    config: ConfigOption = DEFAULT_CONFIG,
    coordinator: CoordinatorOption = None,
    json_output: JsonOption = False,
    task: TaskOption = None,
    outputs: OutputsOption = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source", help="a video file, rtsp://, http(s)://, /dev/videoN or a folder of images (repeatable)"
        ),
    ] = None,
    realtime: Annotated[
        bool, typer.Option("--realtime/--no-realtime", help="files play at their own rate, or as fast as answered")
    ] = True,
    save_results: Annotated[
        Path | None, typer.Option("--save-results", help="with --source: one JSON line per frame to this file")
    ] = None,
    annotate: Annotated[
        Path | None, typer.Option("--annotate", help="with --source: a video per source, detections drawn, in DIR")
    ] = None,
) -> None:
    """Stream video sources (--source) or simulated cameras (--sources K) to the embedded cluster (or a
    running one with --coordinator).

    Prints per source: frames, answers, drops, fps, p50/p99 latency, and accuracy against the labels
    (simulated cameras) or decode figures (video sources). Exits 3 if a stream is refused or fails.
    """
    if source:
        _stream_sources(source, config, coordinator, task, fps, realtime, duration, save_results, annotate, json_output)
        return
    fps, duration = fps or 30.0, duration or 10.0
    from .cameras import CameraSpec
    from .protocol import BACKPRESSURE_POLICIES
    from .workload import workload_sources

    if backpressure not in BACKPRESSURE_POLICIES:
        expected = ", ".join(BACKPRESSURE_POLICIES)
        raise InvalidInputError("invalid_input", f"--backpressure must be one of {expected}; got {backpressure!r}")
    cluster = load_config(config)
    _check_task(cluster, task, config)
    spec = CameraSpec(sources, fps, duration, max_latency_ms, min_accuracy, degrade, backpressure, task, outputs)
    test_set = workload_sources(cluster)[task or cluster.models.task]
    if coordinator is not None:
        tallies = _run_cameras(coordinator, cluster, test_set, spec, json_output)
    else:
        from .inspection import wait_until_ready
        from .local import LocalCluster

        log_dir = cluster.resolve(".edgecollab/logs")
        verbosity, log_json = int(_logging["verbose"]), bool(_logging["json"])
        with LocalCluster(config, log_dir=log_dir, verbose=verbosity, log_json=log_json) as local:
            if not json_output:
                print(f"started a coordinator and {len(local.workers)} workers; logs in {log_dir}", file=sys.stderr)
            wait_until_ready(local.clients_endpoint, cluster.coordinator.startup_timeout_s + 300, client_curve(cluster))
            tallies = _run_cameras(local.clients_endpoint, cluster, test_set, spec, json_output)
    from .cameras import totals

    rows = [t.row() for t in tallies]
    total = totals(tallies, test_set)
    if json_output:
        print(json.dumps({"streams": rows, "total": total}, indent=2))
        return
    _console().print(_stream_table(rows, f"{sources} camera(s) at {fps:g} fps for {duration:g} s"))
    t = total
    print(
        f"{t['results']:,} of {t['frames']:,} frames answered, {t['dropped']:,} dropped; {t['fps']:,.0f} fps; "
        f"p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms (worst source {t['worst_source_p99_ms']:.1f} ms); "
        f"accuracy {(t['accuracy'] or 0) * 100:.2f} %"
    )


def _stream_sources(
    uris: list[str], config: Path, coordinator: str | None, task: str | None, fps: float | None, realtime: bool,
    duration_s: float | None, save_results: Path | None, annotate: Path | None, json_output: bool,
) -> None:  # fmt: skip
    from .client import Client
    from .video import kind_of, result_line, run_sources

    for uri in uris:
        kind_of(uri)  # a missing file fails here, before any cluster starts
    cluster = load_config(config)
    _check_task(cluster, task, config)
    sink = open(save_results, "w") if save_results is not None else None  # noqa: SIM115 - closed below

    def on_result(result: Any) -> None:
        if sink is not None:
            sink.write(json.dumps(result_line(result)) + "\n")

    live, update = _live_table(_sources_table, json_output)

    async def go(endpoint: str) -> list[Any]:
        async with Client(endpoint, curve=client_curve(cluster)) as client:
            with live or contextlib.nullcontext():
                return await run_sources(client, uris, task=task, fps=fps, realtime=realtime, duration_s=duration_s,
                                         on_result=on_result, annotate=annotate, on_tick=update)  # fmt: skip

    try:
        if coordinator is not None:
            tallies = asyncio.run(go(coordinator))
        else:
            from .inspection import wait_until_ready
            from .local import LocalCluster

            log_dir = cluster.resolve(".edgecollab/logs")
            with LocalCluster(config, log_dir=log_dir) as local:
                wait_until_ready(
                    local.clients_endpoint, cluster.coordinator.startup_timeout_s + 300, client_curve(cluster)
                )
                tallies = asyncio.run(go(local.clients_endpoint))
    finally:
        if sink is not None:
            sink.close()
    rows = [t.row() for t in tallies]
    if json_output:
        print(json.dumps({"sources": rows}, indent=2))
        return
    _console().print(_sources_table(rows, f"{len(rows)} video source(s)"))


def _sources_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("source", "answered", "dropped", "decode fps", "decode ms/frame", "lost to source", "reconnects",
                   "p50 ms", "p99 ms", "variants"):  # fmt: skip
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["source"], f"{r['frames']:,}", f"{r['dropped'] + r['dropped_behind']:,}", f"{r['decode_fps']:.1f}",
            f"{r['decode_ms_per_frame']:.2f}", f"{r['lost_to_source']:,}", str(r["reconnects"]), f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}", ", ".join(f"{v} x {n}" for v, n in sorted(r["variants"].items())),
        )  # fmt: skip
    return table


def _live_table(
    table: Callable[[list[dict[str, Any]], str], Table], json_output: bool
) -> tuple[Any, Callable[[list[Any]], None]]:
    """On a terminal, a live per-source table (else None), and what redraws it from the sources' tallies."""
    if json_output or not sys.stdout.isatty():
        return None, lambda tallies: None
    from rich.live import Live

    live = Live(table([], "starting"), console=_console(), refresh_per_second=2)
    return live, lambda tallies: live.update(table([t.row() for t in tallies], "live"))


def _run_cameras(endpoint: str, cluster: ClusterConfig, test_set: Any, spec: Any, json_output: bool) -> list[Any]:
    from .cameras import run_cameras

    live, update = _live_table(_stream_table, json_output)

    with live or contextlib.nullcontext():
        return asyncio.run(run_cameras(endpoint, test_set, spec, client_curve(cluster), update))


def _stream_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("source", "frames", "answered", "dropped", "fps", "p50 ms", "p99 ms", "accuracy", "variants"):
        table.add_column(column, justify="left" if column == "variants" else "right")
    for r in rows:
        table.add_row(
            str(r["source"]), f"{r['frames']:,}", f"{r['results']:,}", f"{r['dropped']:,}", f"{r['fps']:.1f}",
            f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
            f"{r['accuracy'] * 100:.2f} %" if r["accuracy"] is not None else "-",
            ", ".join(f"{v} x {n}" for v, n in sorted(r["variants"].items())),
        )  # fmt: skip
    return table


@app.command()
@_reports_errors
def profile(
    config: ConfigOption = DEFAULT_CONFIG,
    coordinator: Annotated[str | None, typer.Option("--coordinator", help="ask this running coordinator")] = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="profile again, ignoring the cache")] = False,
    json_output: JsonOption = False,
) -> None:
    """The exploration table: measured throughput and latency of every (node, variant).

    From a running coordinator with --coordinator; otherwise from the profile cached beside the
    config, profiling the config's cluster on this machine first when there is none (or --refresh).
    """
    from .inspection import ask, cached_profile, profile_here

    cluster = load_config(config)
    missing: list[dict[str, Any]] = []
    if coordinator:
        answer = ask(coordinator, "table", curve=client_curve(cluster))
        rows, missing = answer["rows"], answer.get("missing", [])
    else:
        rows = []
        if not refresh:
            try:
                cached, missing = cached_profile(cluster)
                rows = cached.rows()
            except EdgecollabError:
                pass  # no profile of some node: profile here
        if not rows:  # --refresh also forgets what earlier runs learned: it is kept with the profiles
            rows = profile_here(config, refresh)
    for m in missing:  # a table that is not whole says so, whatever the output
        what = f"{m['variant']} ({m['task']})" if m.get("variant") else "every variant"
        print(f"missing: {m['node']} {what}: {m['why']}", file=sys.stderr)
    if json_output:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"exploration table: {len(rows)} (node, variant) pairs")
    for column in ("node", "variant", "inf/s", "± spread", "latency ms", "accuracy", "measured"):
        table.add_column(column, justify="left" if column in ("node", "variant", "measured") else "right")
    for r in rows:
        error = r.get("error") or {}
        table.add_row(
            r["node"], r["variant"], f"{r['ips']:,.0f}", f"{error.get('spread', 0.0) * 100:.0f} %",
            f"{r['latency_ms']:.1f}", f"{r['accuracy'] * 100:.2f} %",
            "the host (emulation)" if error.get("host_bound") else "the board",
        )  # fmt: skip
    _console().print(table)


@app.command()
@_reports_errors
def plan(
    inputs: Annotated[int, typer.Option("--inputs", min=1, help="number of inputs")],
    target_ips: TargetOption = None,
    min_accuracy: MinAccuracyOption = None,
    policy: PolicyOption = None,
    task: TaskOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    coordinator: Annotated[str | None, typer.Option("--coordinator", help="ask this running coordinator")] = None,
    json_output: JsonOption = False,
    confidence: ConfidenceOption = None,
) -> None:
    """The plan a request would get, without running it: from a running coordinator (next to the work it
    runs, at its confidence), or from the cached table (the request alone). ``--task`` picks the application."""
    from .inspection import ask, cached_table
    from .planner import PlanRequest, make_plan

    cluster = _with_confidence(load_config(config), confidence)
    _check_task(cluster, task, config)
    chosen = policy or cluster.coordinator.policy
    if coordinator:
        outcome = ask(
            coordinator, "plan", curve=client_curve(cluster),
            inputs=inputs, target_ips=target_ips, min_accuracy=min_accuracy, policy=chosen, task=task,
        )  # fmt: skip
    else:
        table = cached_table(cluster, task)
        request = PlanRequest(inputs, target_ips, min_accuracy)
        outcome = {**make_plan(chosen, table, request, table.nodes()).as_dict(), "task": task or cluster.models.task}
    if json_output:
        print(json.dumps(outcome, indent=2))
        return
    print(
        f"policy {outcome['policy']}: promises {outcome['expected_ips']:,.0f} inf/s at "
        f"{outcome['expected_accuracy'] * 100:.2f} % accuracy ({'feasible' if outcome['feasible'] else 'INFEASIBLE'}),"
        f" keeping a margin of {outcome.get('margin', 0.0) * 100:.1f} %"
    )
    for a in outcome["assignment"]:
        print(f"  {a['node']:<16} {a['variant']:<14} {a['inputs']:>8,} inputs")
    for note in outcome["notes"]:
        print(f"  note: {note}")


@app.command()
@_reports_errors
def pareto(
    config: ConfigOption = DEFAULT_CONFIG,
    coordinator: Annotated[str | None, typer.Option("--coordinator", help="ask this running coordinator")] = None,
    inputs: Annotated[int, typer.Option("--inputs", min=1, help="request size to plan for")] = 10_000,
    json_output: JsonOption = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="draw the curves to this PNG (needs matplotlib)")] = None,
) -> None:
    """The cluster's (throughput, accuracy) trade-off under each policy, and the Pareto front."""
    from .inspection import ask, cached_table, table_from_rows
    from .planner import front, sweep

    cluster = load_config(config)
    if coordinator:
        table = table_from_rows(ask(coordinator, "table", curve=client_curve(cluster))["rows"])
    else:
        table = cached_table(cluster)
    curves = sweep(table, table.nodes(), inputs)
    best = front([p for points in curves.values() for p in points])
    outcome = {
        "inputs": inputs,
        "policies": {name: [vars(p) for p in points] for name, points in curves.items()},
        "front": [vars(p) for p in best],
    }
    if plot is not None:
        from .plots import plot_pareto

        plot_pareto(curves, best, plot)
    if json_output:
        print(json.dumps(outcome, indent=2))
        return
    table_out = Table(title=f"Pareto front of {inputs:,}-input requests on {len(table.nodes())} nodes")
    for column in ("policy", "target inf/s", "expected inf/s", "expected accuracy"):
        table_out.add_column(column, justify="left" if column == "policy" else "right")
    for p in best:
        table_out.add_row(
            p.policy, f"{p.target_ips:,.0f}", f"{p.expected_ips:,.0f}", f"{p.expected_accuracy * 100:.2f} %"
        )
    _console().print(table_out)


@app.command()
@_reports_errors
def status(
    config: ConfigOption = DEFAULT_CONFIG,
    coordinator: CoordinatorOption = None,
    json_output: JsonOption = False,
) -> None:
    """A running coordinator's nodes, state, running requests and error counters."""
    from .inspection import ask

    cluster = load_config(config)
    outcome = ask(coordinator or _client_endpoint(cluster), "status", curve=client_curve(cluster))
    if json_output:
        print(json.dumps(outcome, indent=2))
        return
    print(f"state: {outcome['state']}; {len(outcome['nodes'])} of {len(outcome['expected_nodes'])} nodes registered")
    table = Table()
    for column in ("node", "alive", "ready", "warm-up s", "profiled", "runtime", "providers", "variants", "best inf/s",
                   "in flight"):  # fmt: skip
        table.add_column(column)
    for n in outcome["nodes"]:
        best = max(n["ips"].values(), default=0.0)
        runtime = n["runtime"]
        where = f"{runtime.get('arch', '?')}, {runtime.get('backend', '?')} {runtime.get('backend_version', '')}"
        warmup = "-" if n["warmup_s"] is None else f"{n['warmup_s']:.2f}"
        table.add_row(
            n["name"], str(n["alive"]), str(n["ready"]), warmup, str(n["profiled"]), where, ",".join(n["providers"]),
            str(len(n["variants"])), f"{best:,.0f}", str(n["in_flight"]),
        )  # fmt: skip
    _console().print(table)
    for n in outcome["nodes"]:  # what a board does not run, and what it fell back from, said in words
        for variant, reason in n["left_out"].items():
            print(f"{n['name']}: {variant} left out: {reason}")
        for warning in n["warnings"]:
            print(f"{n['name']}: warning: {warning}")
    for r in outcome["requests"]:
        owner = f" ({r['client']})" if "client" in r else ""
        print(f"request {r['id'][:8]}{owner}: {r['done']:,}/{r['inputs']:,} inputs, policy {r['policy']}")
    for st in outcome["streams"]:
        owner = f" ({st['client']})" if "client" in st else ""
        print(f"stream {st['id'][:8]}{owner}: {st['status']}, {st['results']:,}/{st['frames']:,} frames answered")
    others = outcome["others"]
    if others["requests"] or others["streams"]:
        print(f"other clients: {others['requests']} requests, {others['streams']} streams (an operator sees them)")
    if outcome["counters"]:
        print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(outcome["counters"].items())))


@keys_app.command("generate")
@_reports_errors
def keys_generate(
    folder: Annotated[Path, typer.Argument(help="where to write the certificates")],
    config: ConfigOption = DEFAULT_CONFIG,
    client: Annotated[list[str] | None, typer.Option("--client", help="client names (default: client)")] = None,
    operator: Annotated[
        list[str] | None, typer.Option("--operator", help="operator names: clients whose status shows everyone's work")
    ] = None,
) -> None:
    """Key pairs for the coordinator, every node of the config and the clients, plus their allow-list."""
    from .security import generate_keys

    cluster = load_config(config)
    clients = client or ["client"]
    operators = operator or []
    written = generate_keys(folder, [n.name for n in cluster.nodes], [*clients, *operators])
    for path in written:
        print(path)
    print(
        f"\n# add to {config} (secret certificates: copy each only to the machine that uses it)\n"
        f'[security]\ncurve = true\ncoordinator_key = "{folder}/coordinator.key_secret"\n'
        f'coordinator_public_key = "{folder}/coordinator.key"\nauthorized_keys = "{folder}/authorized"\n'
        f'client_key = "{folder}/{clients[0]}.key_secret"\n'
        + (f"operators = {json.dumps(operators)}\n" if operators else "")
        + f'# and in each [[nodes]]: key = "{folder}/NODE.key_secret"',
        file=sys.stderr,
    )


def _check_task(cluster: ClusterConfig, task: str | None, config: Path) -> None:
    """Refuse a --task the config does not serve, before anything starts."""
    if task is not None and task not in cluster.models.tasks:
        raise ConfigError(f"--task {task!r} is not served by {config}; its tasks: {', '.join(cluster.models.tasks)}")


def _client_endpoint(cluster: ClusterConfig) -> str:
    return on_loopback(cluster.coordinator.clients)


def _print_outcome(
    policy: str, cluster: ClusterConfig, rows: list[dict[str, Any]], json_output: bool, save_predictions: Path | None
) -> None:
    from .workload import save_predictions as write_predictions
    from .workload import summary

    outcome = summary(policy, cluster, rows)
    if save_predictions is not None:
        write_predictions(save_predictions, rows)
    if json_output:
        print(json.dumps(outcome, indent=2))
        return
    table = Table(title=f"policy {policy}: {len(rows)} request(s) on {len(cluster.nodes)} nodes")
    several = len(outcome["tasks"]) > 1
    columns = (
        "#", *(("task",) if several else ()), "inputs", "target inf/s", "promised inf/s", "margin", "achieved inf/s",
        "accuracy", "met",
    )  # fmt: skip
    for column in (*columns, "node: variant x inputs"):
        table.add_column(column, justify="left" if column.startswith("node") or column == "task" else "right")
    for r in outcome["requests"]:
        table.add_row(
            str(r["id"]),
            *((r["task"],) if several else ()),
            f"{r['inputs']:,}",
            f"{r['target_ips']:,.0f}" if r["target_ips"] else "-",
            f"{r['expected_ips']:,.0f}" + ("" if r["feasible"] else " (cannot)"),
            f"{r['margin'] * 100:.1f} %",
            f"{r['achieved_ips']:,.0f}",
            f"{r['accuracy'] * 100:.2f} %",
            "yes" if r["met"] else "no",
            "\n".join(f"{a['node']}: {a['variant']} x {a['inputs']}" for a in r["assignment"]),
        )
    _console().print(table)
    s = outcome["summary"]
    if several:  # each task in its own measure: top-1 accuracy, or mAP@0.5 for detection
        for name, t in outcome["tasks"].items():
            print(
                f"{name}: {t['inputs']:,} inputs in {t['requests']} requests, quality {t['accuracy'] * 100:.2f} %,"
                f" targets met {t['targets_met']}/{t['requests']}"
            )
        print(f"targets met {s['targets_met']}/{len(rows)}")
        return
    print(
        f"{s['inputs']:,} inputs in {s['requests']} requests: {s['achieved_ips']:,.0f} inf/s, "
        f"accuracy {s['accuracy'] * 100:.2f} %, targets met {s['targets_met']}/{s['requests']}"
    )


@contextlib.contextmanager
def _progress_bars(wanted: bool) -> Iterator[ProgressFactory | None]:
    """One bar per request on stderr, when it is a terminal and the output is not JSON."""
    if not (wanted and sys.stderr.isatty()):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bars:

        def for_request(number: int, spec: RequestSpec) -> ProgressCallback:
            target = f", target {spec.target_ips:,.0f} inf/s" if spec.target_ips else ""
            task = bars.add_task(f"request {number} ({spec.inputs:,} inputs{target})", total=spec.inputs)
            return lambda done, total: bars.update(task, completed=done, total=total)

        yield for_request


def _console() -> Console:
    # Rich wraps at 80 columns when not on a terminal; tables read better a little wider.
    return Console() if sys.stdout.isatty() else Console(width=140)


def main() -> None:
    app()

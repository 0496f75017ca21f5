"""The ``edgecollab`` command line. Commands parse options and call the library; no logic lives here."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .errors import EdgecollabError
from .zoo import load_manifest, load_test_set, pareto_front, sha256_of, verify_variant
from .zoo.graph import graph_cost

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(no_args_is_help=True, help="List, verify and inspect model variants.")
app.add_typer(models_app, name="models")

# Exit codes scripts can rely on.
EXIT_CHECK_FAILED = 1  # the command ran, and what it checked did not hold
EXIT_USAGE = 2  # bad input: config, manifest, arguments

P = ParamSpec("P")
R = TypeVar("R")

ManifestOption = Annotated[
    Path | None, typer.Option("--manifest", help="model manifest (default: ./models/zoo.toml or the bundled one)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


def _reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn edgecollab's own errors into one clear line on stderr and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except EdgecollabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


@models_app.command("list")
@_reports_errors
def models_list(manifest: ManifestOption = None, json_output: JsonOption = False) -> None:
    """The variants of the manifest: accuracy, MACs, parameters, quantization and file size."""
    zoo = load_manifest(manifest)
    front = {v.name for task in zoo.tasks for v in pareto_front(zoo.for_task(task))}
    rows: list[dict[str, Any]] = [
        {
            "name": v.name,
            "task": v.task,
            "accuracy": v.accuracy,
            "macs": v.macs,
            "params": v.params,
            "quantized": v.quantized,
            "bytes": zoo.resolve(v.file).stat().st_size,
            "pareto": v.name in front,
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
    Console().print(table)


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
    test_sets = {task: load_test_set(zoo, zoo.tasks[task]) for task in {v.task for v in chosen}}
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
                f"{c.accuracy_measured * 100:.2f} %",
                "ok" if c.sha256_ok else "MISMATCH",
                f"{c.ips_b1:,.0f}",
                f"{c.ips_b32:,.0f}",
            )
        Console().print(table)
    if failed:
        print(f"verification failed for: {', '.join(failed)}", file=sys.stderr)
        raise typer.Exit(EXIT_CHECK_FAILED)


@models_app.command("inspect")
@_reports_errors
def models_inspect(file: Annotated[Path, typer.Argument(help="an ONNX model file")]) -> None:
    """Print the sha256, MACs and parameters of an ONNX file, for writing its manifest entry."""
    if not file.is_file():
        raise EdgecollabError(f"no such model file: {file}")
    try:
        cost = graph_cost(file)
    except Exception as exc:  # onnx raises many types for unreadable files
        raise EdgecollabError(f"cannot read {file} as an ONNX model: {exc}") from exc
    print(json.dumps({"file": str(file), "sha256": sha256_of(file), "macs": cost.macs, "params": cost.params}))


def main() -> None:
    app()

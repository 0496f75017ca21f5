"""What every benchmark does with its results: record how it ran, write the JSON, draw the plot."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecollab.errors import EdgecollabError

RESULTS = Path(__file__).resolve().parent / "results"


def run_info() -> dict[str, Any]:
    """The command that produced a result, and the machine it ran on."""
    script = Path(sys.argv[0]).name
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def write_results(path: Path, results: dict[str, Any], plot: Callable[[Path], None]) -> None:
    """The JSON at ``path`` and, when matplotlib is there, the plot beside it as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    try:
        plot(path.with_suffix(".png"))
    except EdgecollabError as exc:
        print(f"no plot: {exc}", file=sys.stderr)

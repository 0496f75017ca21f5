"""Getting the worker onto boards: the board's own wheel, built from ``edgecollab/worker`` itself."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import EdgecollabError

WORKER_SOURCE = Path(__file__).resolve().parent / "worker"


def build_worker_wheel(out: Path) -> Path:
    """Build ``edgecollab_worker-*.whl`` (pure Python, any board) into ``out``; its path.

    Built from a copy, so the source folder gets no build litter; with setuptools here the build
    needs no network.
    """
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgecollab-worker-") as scratch:
        source = Path(scratch) / "edgecollab_worker"
        shutil.copytree(WORKER_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        local_build = all(importlib.util.find_spec(m) is not None for m in ("setuptools", "wheel"))
        isolation = ["--no-build-isolation"] if local_build else []
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation, str(source), "-w", scratch]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(scratch).glob("edgecollab_worker-*.whl"))
        if done.returncode != 0 or not wheels:
            raise EdgecollabError(f"building the worker wheel failed: {done.stderr.strip() or done.stdout.strip()}")
        target = out / wheels[-1].name
        shutil.copy(wheels[-1], target)
    return target

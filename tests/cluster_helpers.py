"""Helpers for tests that start real coordinator and worker processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq.asyncio

from edgecollab.client import Client, InferenceResult
from edgecollab.security import ClientCurve
from edgecollab.worker import transport
from edgecollab.zoo import load_manifest, open_session, predict

from .conftest import SHIPPED_MANIFEST

PAPER_TESTBED = [
    ("odroid-xu4-a", "odroid-xu4"),
    ("odroid-xu4-b", "odroid-xu4"),
    ("rpi4", "rpi4"),
    ("jetson-nano", "jetson-nano"),
]
# Cheap variants keep profiling short; cnn-16 is the most accurate of them.
TEST_VARIANTS = ["mlp-64", "cnn-8", "cnn-16"]


def write_cluster_config(folder: Path, *, variants: list[str] = TEST_VARIANTS, heartbeat_s: float = 0.5) -> Path:
    lines = [
        "[coordinator]",
        f"heartbeat_s = {heartbeat_s}",
        "startup_timeout_s = 60",
        "[models]",
        f'manifest = "{SHIPPED_MANIFEST}"',
    ]
    for name, board in PAPER_TESTBED:
        lines += ["[[nodes]]", f'name = "{name}"', f'emulate = "{board}"', f"variants = {variants!r}".replace("'", '"')]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def infer(endpoint: str, inputs: np.ndarray, **options: Any) -> InferenceResult:
    async def go() -> InferenceResult:
        async with Client(endpoint, timeout_s=120) as client:
            return await client.infer(inputs, **options)

    return asyncio.run(go())


def edgecollab(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecollab", *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def local_predictions(variant: str, inputs: np.ndarray) -> np.ndarray:
    """What the variant predicts when run here, for checking a cluster's answers exactly."""
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    v = manifest.variant(variant)
    return predict(open_session(manifest.resolve(v.file), manifest.task_of(v)), inputs)


@contextlib.asynccontextmanager
async def raw_peer(endpoint: str, curve: ClientCurve | None = None) -> AsyncIterator[zmq.asyncio.Socket]:
    """A bare DEALER (as the project configures them) for sending whatever a test wants."""
    context = zmq.asyncio.Context()
    sock = transport.dealer(context, endpoint, curve)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        context.term()

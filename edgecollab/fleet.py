"""Many boards in one process, for tests and benchmarks at scale: ``edgecollab fleet``.

Each board is a whole ``WorkerAgent``: its own DEALER connection, identity (its CURVE key when the
cluster uses CURVE), heartbeats, settings and cost model, so the coordinator cannot tell it from a
worker process. The boards share one event loop, one ZeroMQ context, the model cache, and one
ONNX Runtime session per model file (a session may run from several threads at once): that is
what lets a hundred boards fit a machine where a hundred worker processes of ~100 MB would not.

With ``stand_ins``, an emulated board computes every shard with the cheapest variant of its task
and its cost model for the variant asked for alone sets the time: for fleets whose real compute
would exceed the host's cores. Predictions are then the cheap variant's, and a report must say so.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

from .worker.agent import WorkerAgent
from .worker.backends import Backend, Session, pick_backend
from .worker.cache import ModelCache, default_cache_dir
from .worker.keys import ClientCurve

log = logging.getLogger(__name__)


class SharedSessions(Backend):
    """A backend whose sessions are opened once per (file, providers, threads, fp16) in this process and
    shared by every board that asks for the same."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.version = inner.version
        self._opened: dict[tuple[Any, ...], tuple[Session, list[str]]] = {}

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def available_providers(self) -> list[str]:
        return self.inner.available_providers()

    def max_opset(self) -> int | None:
        return self.inner.max_opset()

    def open(
        self, path: Path, providers: tuple[str, ...], threads: int, engine_dir: Path | None, fp16: bool
    ) -> tuple[Session, list[str]]:
        key = (path.resolve(), providers, threads, fp16)
        if key not in self._opened:
            self._opened[key] = self.inner.open(path, providers, threads, engine_dir, fp16)
        session, warnings = self._opened[key]
        return session, list(warnings)


@dataclass(frozen=True)
class Board:
    name: str
    curve: ClientCurve | None = None


async def run_fleet(
    boards: Sequence[Board],
    endpoint: str,
    *,
    cache: Path | None = None,
    runtime: str | None = None,
    stand_ins: bool = False,
    started: asyncio.Event | None = None,
) -> dict[str, int]:
    """Run every board until SIGTERM or SIGINT (or until each has stopped); each board's exit code."""
    context = zmq.asyncio.Context()
    backend = SharedSessions(pick_backend(runtime))
    shared_cache = ModelCache(cache or default_cache_dir())
    fetch_locks: dict[str, asyncio.Lock] = {}
    agents = [
        WorkerAgent(
            board.name, endpoint, backend, shared_cache, board.curve, context=context,
            whole_process=False, stand_ins=stand_ins, fetch_locks=fetch_locks,
        )
        for board in boards
    ]  # fmt: skip

    def stop_every_board() -> None:
        for agent in agents:
            agent.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_every_board)
    log.info("fleet: %d boards joining %s", len(agents), endpoint)
    if started is not None:
        started.set()
    try:
        codes = await asyncio.gather(*(agent.run() for agent in agents))
    finally:
        context.term()
    return {agent.name: code for agent, code in zip(agents, codes, strict=True)}

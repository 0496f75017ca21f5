"""Profiling: time real shards of every variant a new node loaded, to fill its rows of the table.

Profiling shards are work of their own kind in the core (``WorkKind.PROFILE``): the profiler asks
for one with ``ProfileShardWanted`` and the core sends it, books it on the node, and hands its
answer back as ``ProfileAnswer`` (an ``Error`` if the node is lost first). So every answer from a
worker goes through the core, and a lost node's profiling ends at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import CoordinatorConfig
from ..errors import EdgecollabError
from ..planner import Measurement, ProfileCache
from ..planner.confidence import HOST_BOUND_SPREAD
from ..planner.table import estimate_spread
from ..protocol import Message, ShardResult
from .events import Event, NodeProfiled, NodeRegistered, ProfileAnswer, ProfileShardWanted
from .peers import WorkerLink
from .requests import MAX_SHARD_FACTOR, shard_size_for

log = logging.getLogger(__name__)

# Profiling times one shard at a time at these batch sizes, this many times each (the median counts).
LATENCY_BATCHES = (1, 4, 16)
LATENCY_SAMPLES = 3


class NodeGone(EdgecollabError):
    """The node a profiling shard was sent to died or left before answering."""


class Profiler:
    def __init__(
        self,
        settings: CoordinatorConfig,
        feed: Callable[[Event], Awaitable[None]],
        spawn: Callable[[Any], None],
        cache: ProfileCache,
        inputs_of: dict[str, tuple[tuple[int, ...], np.dtype[Any]]],
        is_current: Callable[[WorkerLink], bool],
        outputs_of: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self._feed = feed
        self._spawn = spawn
        self.cache = cache  # profiles by node and worker fingerprint: a restarted board is not profiled again
        self.inputs_of = inputs_of  # variant -> the (shape, dtype) of its task's inputs
        self.outputs_of = outputs_of or {}  # variant -> what its task's requests get back by default
        self._is_current = is_current
        self._waiting: dict[int, asyncio.Future[Message]] = {}  # profiling shard number -> its answer
        self._numbers = 0
        self._samples: dict[str, np.ndarray] = {}  # variant -> random inputs of its task, made when first asked
        self._profiling_alone: set[str] = set()  # nodes whose own profile is being measured
        # Nodes measured alone, waiting to be measured together with the others profiled at the same time
        self._measured_alone: dict[str, tuple[WorkerLink, dict[str, Measurement]]] = {}

    async def registered(self, link: WorkerLink) -> None:
        """A worker registered: tell the core, then its profile from the cache, or profile it. A site
        reports its own front instead (``site_front``)."""
        if link.is_site:
            log.info("coordinator: site %s registered; its front comes from it", link.name)
            await self._feed(NodeRegistered(link.name, tuple(link.variants), time.monotonic()))
            return
        cached = self.cache.load(link.name, link.fingerprint)
        log.info("coordinator: node %s registered (%s)", link.name, "profile cached" if cached else "profiling")
        await self._feed(NodeRegistered(link.name, tuple(link.variants), time.monotonic()))
        if cached is None:
            self._spawn(self._profile_and_tell(link))
        else:
            await self._feed(NodeProfiled(link.name, cached, time.monotonic()))

    async def _profile_and_tell(self, link: WorkerLink) -> None:
        """Profile a node alone; once no node is still being profiled alone, time every variant on all the
        nodes profiled meanwhile at once (``_measure_together``), then tell the core about each."""
        variants = [v for v in link.variants if v in self.inputs_of]
        self._profiling_alone.add(link.name)
        try:
            measurements = await self.profile(link.name, variants)
        finally:
            self._profiling_alone.discard(link.name)
        if measurements is not None:
            self._measured_alone[link.name] = (link, measurements)
        if self._profiling_alone:
            return  # the last one to finish measures them together
        measured, self._measured_alone = self._measured_alone, {}
        if len(measured) > 1:
            await self._measure_together({name: m for name, (_, m) in measured.items()})
        for name, (node_link, node_measurements) in measured.items():
            if self._is_current(node_link):
                self.cache.store(name, node_link.fingerprint, node_measurements)
                log.info("coordinator: node %s profiled (%d variants)", name, len(node_measurements))
                await self._feed(NodeProfiled(name, node_measurements, time.monotonic()))

    async def _measure_together(self, measured: dict[str, dict[str, Measurement]]) -> None:
        """Time each variant on every node that has it at once, as a request runs them, and keep the slower
        of that and the node's own figure: boards that share something (a host, a link, the coordinator)
        are slower together than each alone, and a plan that uses them all must know it."""
        for variant in sorted({v for rows in measured.values() for v in rows}):
            holders = [(node, rows[variant]) for node, rows in measured.items() if variant in rows]
            if len(holders) < 2:
                continue
            runs = await asyncio.gather(
                *(self._pipelined(node, variant, shard_size_for(m.ips, self.settings)) for node, m in holders),
                return_exceptions=True,
            )
            for (node, alone), run in zip(holders, runs, strict=True):
                if isinstance(run, Pipelined) and run.ips < alone.ips:
                    together = alone.scaled_by(run.ips / alone.ips)
                    measured[node][variant] = dataclasses.replace(
                        together, host_bound=alone.host_bound or run.host_bound
                    )

    def answer(self, answer: ProfileAnswer) -> None:
        waiter = self._waiting.pop(answer.number, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(answer.message)

    async def _run(self, node: str, variant: str, inputs: np.ndarray) -> Trip | None:
        """One shard's round trip; None if the node could not run it; ``NodeGone`` if it left."""
        self._numbers += 1
        number = self._numbers
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[number] = waiter
        started = time.perf_counter()
        outputs = self.outputs_of.get(variant, "predictions")
        await self._feed(ProfileShardWanted(node, number, variant, inputs, time.monotonic(), outputs))
        reply = await waiter
        if isinstance(reply, ShardResult):
            finished = time.perf_counter()
            return Trip(finished - started, reply.host_bound, finished)
        if getattr(reply, "code", "") == "node_lost":
            raise NodeGone(str(getattr(reply, "message", "")))
        log.warning("coordinator: profiling %s on %s failed: %s", variant, node, reply)
        return None

    def _inputs(self, variant: str, batch: int) -> np.ndarray:
        """``batch`` random inputs of the variant's task (made once per variant, enough for any shard)."""
        if variant not in self._samples:
            shape, dtype = self.inputs_of[variant]
            rows = max(self.settings.shard_size * MAX_SHARD_FACTOR, *LATENCY_BATCHES)
            self._samples[variant] = np.random.default_rng(0).integers(0, 256, (rows, *shape)).astype(dtype)
        return self._samples[variant][:batch]

    async def _timed(self, node: str, variant: str, batch: int, window: asyncio.Semaphore) -> Trip | None:
        """One shard of ``batch`` inputs, once the node has a slot of ``window`` free."""
        async with window:
            return await self._run(node, variant, self._inputs(variant, batch))

    async def _pipelined(
        self, node: str, variant: str, batch: int, window: asyncio.Semaphore | None = None
    ) -> Pipelined | None:
        """``profile_shards`` shards of ``batch`` inputs, ``window`` at a time as dispatch sends them; None if
        one failed. ``NodeGone`` if the node left."""
        window = window or asyncio.Semaphore(self.settings.window)
        started = time.perf_counter()
        trips = await asyncio.gather(
            *(self._timed(node, variant, batch, window) for _ in range(self.settings.profile_shards))
        )
        elapsed = time.perf_counter() - started
        done = [t for t in trips if t is not None]
        if len(done) < len(trips):
            return None
        host_bound = any(t.host_bound for t in done)
        return Pipelined(batch * len(done) / elapsed, [t.seconds for t in done], host_bound, [t.finished for t in done])

    async def profile(self, node: str, variants: list[str]) -> dict[str, Measurement] | None:
        """Measure every variant as requests will run it; None if the node left first.

        Each variant's shards hold inputs of its own task (``inputs_of``) and bring back what that task's
        requests ask for by default (``outputs_of``: a detector's every output). Shards go out ``window``
        at a time, as dispatch sends them, so the throughput (inputs ÷ elapsed time) includes the
        coordinator's per-shard cost and the load of the other nodes profiling at the same time. A fast
        row is timed again at the larger shard size requests cut for it (``shard_size_for``): a row is a
        curve in the batch size. Its spread follows from the gaps between its answers (``estimate_spread``).
        """
        size = self.settings.shard_size
        window = asyncio.Semaphore(self.settings.window)
        measurements: dict[str, Measurement] = {}

        def timed(variant: str, batch: int = size) -> Awaitable[Trip | None]:
            return self._timed(node, variant, batch, window)

        def pipelined(variant: str, batch: int) -> Awaitable[Pipelined | None]:
            return self._pipelined(node, variant, batch, window)

        try:
            for variant in variants:
                if await timed(variant) is None:  # warm-up: first runs allocate
                    continue
                first = await pipelined(variant, size)
                if first is None:
                    continue
                runs = [first]
                real_size = shard_size_for(first.ips, self.settings)
                if real_size > size:
                    at_real_size = await pipelined(variant, real_size)
                    if at_real_size is not None:
                        runs.append(at_real_size)
                used = runs[-1]
                host_bound = any(r.host_bound for r in runs)
                spread = max(estimate_spread(used.spread), HOST_BOUND_SPREAD if host_bound else 0.0)
                measurements[variant] = Measurement(
                    ips=used.ips,
                    latency_ms=statistics.median(used.round_trips) * 1e3,
                    spread=spread,
                    host_bound=host_bound,
                    curve=tuple((batch, r.ips) for batch, r in zip((size, real_size), runs, strict=False)),
                )
            # Round trips of one shard at a time at a few batch sizes: what a frame waits (streams).
            for variant in list(measurements):
                latencies = []
                for batch in LATENCY_BATCHES:
                    trips = [await timed(variant, batch) for _ in range(LATENCY_SAMPLES)]
                    finished = [t.seconds for t in trips if t is not None]
                    if finished:
                        latencies.append((batch, statistics.median(finished) * 1e3))
                measurements[variant] = dataclasses.replace(measurements[variant], latencies=tuple(latencies))
        except NodeGone:
            return None
        return measurements


@dataclass(frozen=True)
class Trip:
    seconds: float  # send to answer
    host_bound: bool  # the worker said its host, not the emulated board, set the time
    finished: float  # perf_counter when the answer came


@dataclass(frozen=True)
class Pipelined:
    """Shards of one size sent ``window`` at a time: their throughput and round trips."""

    ips: float
    round_trips: list[float]
    host_bound: bool
    finished: list[float]  # when each answer came

    @property
    def spread(self) -> float:
        """Relative standard deviation of the node's pace: the gaps between consecutive answers. (Not of the
        round trips: with shards queued behind each other those differ by the queueing alone.)"""
        ends = sorted(self.finished)
        gaps = [b - a for a, b in itertools.pairwise(ends)]
        if len(gaps) < 2 or statistics.mean(gaps) <= 0:
            return 0.0
        return statistics.stdev(gaps) / statistics.mean(gaps)

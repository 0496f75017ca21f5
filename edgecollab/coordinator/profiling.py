"""Profiling: time real shards of every variant a new node loaded, to fill its rows of the table.

Profiling shards are work of their own kind in the core (``WorkKind.PROFILE``): the profiler asks
for one with ``ProfileShardWanted`` and the core sends it, books it on the node, and hands its
answer back as ``ProfileAnswer`` (an ``Error`` if the node is lost first). So every answer from a
worker goes through the core, and a lost node's profiling ends at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..config import CoordinatorConfig
from ..errors import EdgecollabError
from ..planner import Measurement, ProfileCache
from ..protocol import Message, ShardResult
from .events import Event, NodeProfiled, NodeRegistered, ProfileAnswer, ProfileShardWanted
from .peers import WorkerLink

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
    ) -> None:
        self.settings = settings
        self._feed = feed
        self._spawn = spawn
        self.cache = cache  # profiles by node and worker fingerprint: a restarted board is not profiled again
        self.inputs_of = inputs_of  # variant -> the (shape, dtype) of its task's inputs
        self._is_current = is_current
        self._waiting: dict[int, asyncio.Future[Message]] = {}  # profiling shard number -> its answer
        self._numbers = 0

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
        variants = [v for v in link.variants if v in self.inputs_of]
        measurements = await self.profile(link.name, variants)
        if measurements is not None and self._is_current(link):
            self.cache.store(link.name, link.fingerprint, measurements)
            log.info("coordinator: node %s profiled (%d variants)", link.name, len(measurements))
            await self._feed(NodeProfiled(link.name, measurements, time.monotonic()))

    def answer(self, answer: ProfileAnswer) -> None:
        waiter = self._waiting.pop(answer.number, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(answer.message)

    async def _run(self, node: str, variant: str, inputs: np.ndarray) -> float | None:
        """One shard's round trip in seconds; None if the node could not run it; ``NodeGone`` if it left."""
        self._numbers += 1
        number = self._numbers
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[number] = waiter
        started = time.perf_counter()
        await self._feed(ProfileShardWanted(node, number, variant, inputs, time.monotonic()))
        reply = await waiter
        if isinstance(reply, ShardResult):
            return time.perf_counter() - started
        if getattr(reply, "code", "") == "node_lost":
            raise NodeGone(str(getattr(reply, "message", "")))
        log.warning("coordinator: profiling %s on %s failed: %s", variant, node, reply)
        return None

    async def profile(self, node: str, variants: list[str]) -> dict[str, Measurement] | None:
        """Measure every variant; None if the node left first.

        Each variant's shards hold inputs of its own task (``inputs_of``). Shards go out ``window`` at a time,
        as dispatch sends them, so the throughput (inputs ÷ elapsed time) includes the coordinator's
        per-shard cost and the load of the other nodes profiling at the same time. Latency is the
        median round trip.
        """
        size = self.settings.shard_size
        rows = max(size, *LATENCY_BATCHES)
        rng = np.random.default_rng(0)
        samples = {
            v: rng.integers(0, 256, (rows, *shape)).astype(dtype) for v, (shape, dtype) in self.inputs_of.items()
        }
        window = asyncio.Semaphore(self.settings.window)
        measurements: dict[str, Measurement] = {}

        async def timed(variant: str, batch: int = size) -> float | None:
            async with window:
                return await self._run(node, variant, samples[variant][:batch])

        try:
            for variant in variants:
                if await timed(variant) is None:  # warm-up: first runs allocate
                    continue
                started = time.perf_counter()
                round_trips = await asyncio.gather(*(timed(variant) for _ in range(self.settings.profile_shards)))
                elapsed = time.perf_counter() - started
                done = [t for t in round_trips if t is not None]
                if len(done) == len(round_trips):
                    measurements[variant] = Measurement(
                        ips=size * len(done) / elapsed, latency_ms=statistics.median(done) * 1e3
                    )
            # Round trips of one shard at a time at a few batch sizes: what a frame waits (streams).
            for variant in list(measurements):
                latencies = []
                for batch in LATENCY_BATCHES:
                    trips = [await timed(variant, batch) for _ in range(LATENCY_SAMPLES)]
                    finished = [t for t in trips if t is not None]
                    if finished:
                        latencies.append((batch, statistics.median(finished) * 1e3))
                measurements[variant] = dataclasses.replace(measurements[variant], latencies=tuple(latencies))
        except NodeGone:
            return None
        return measurements

"""Book-keeping of one request while it runs: its shards, their attempts, and the gathered predictions.

Pure: no sockets, no asyncio. Exactly-once lives here: a result is accepted only for
the shard's current attempt and only once; everything else is a late duplicate.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgecollabError
from ..planner import Plan

MAX_ATTEMPTS = 3


class ShardFailed(EdgecollabError):
    """A shard was lost on too many nodes; the request fails instead of looping."""


@dataclass
class ShardTask:
    shard_id: int
    start: int  # first input index (in request order)
    stop: int  # one past the last input index
    variant: str
    planned_node: str
    attempt: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class NodeTally:
    variant: str
    planned_inputs: int
    inputs: int = 0  # inputs this node actually predicted
    shards: int = 0
    busy_s: float = 0.0  # time the node reported busy on this request's shards


@dataclass
class RequestRun:
    request_id: str
    plan: Plan
    total_inputs: int
    shards: list[ShardTask]
    arrived: float = field(default_factory=time.monotonic)
    predictions: np.ndarray = field(init=False)
    tallies: dict[str, NodeTally] = field(init=False)
    _queues: dict[str, deque[int]] = field(init=False)  # per planned node: shard ids not yet sent
    _orphans: deque[int] = field(init=False, default_factory=deque)  # shards whose node was lost
    _done: set[int] = field(init=False, default_factory=set)
    retries: int = 0
    finished_at: float | None = None

    def __post_init__(self) -> None:
        self.predictions = np.full(self.total_inputs, -1, dtype=np.int64)
        self.tallies = {a.node: NodeTally(a.variant, a.inputs) for a in self.plan.assignments}
        self._queues = {a.node: deque() for a in self.plan.assignments}
        for shard in self.shards:
            self._queues[shard.planned_node].append(shard.shard_id)

    @classmethod
    def cut(cls, request_id: str, plan: Plan, shard_size: int, arrived: float | None = None) -> RequestRun:
        """Cut the plan's shares into shards of at most ``shard_size`` contiguous inputs."""
        shards: list[ShardTask] = []
        start = 0
        for a in plan.assignments:
            end = start + a.inputs
            for s in range(start, end, shard_size):
                shards.append(ShardTask(len(shards), s, min(s + shard_size, end), a.variant, a.node))
            start = end
        total = sum(a.inputs for a in plan.assignments)
        run = cls(request_id, plan, total, shards)
        if arrived is not None:
            run.arrived = arrived
        return run

    @property
    def finished(self) -> bool:
        return len(self._done) == len(self.shards)

    def next_shard(self, node: str) -> ShardTask | None:
        """The next shard for ``node``: its own first, then any orphaned by a lost node."""
        queue = self._queues.get(node)
        if queue:
            return self.shards[queue.popleft()]
        if self._orphans:
            shard = self.shards[self._orphans.popleft()]
            if node in self.tallies:
                # A planned node runs the variant the plan chose for its speed.
                shard.variant = self.tallies[node].variant
            return shard
        return None

    def complete(self, shard_id: int, attempt: int, predictions: np.ndarray, node: str, busy_s: float) -> bool:
        """Accept a shard's predictions once, for its current attempt; False for a late or duplicate reply."""
        if not 0 <= shard_id < len(self.shards):
            return False
        shard = self.shards[shard_id]
        if shard_id in self._done or attempt != shard.attempt or len(predictions) != shard.size:
            return False
        self.predictions[shard.start : shard.stop] = predictions
        self._done.add(shard_id)
        tally = self.tallies.setdefault(node, NodeTally(shard.variant, 0))
        tally.inputs += shard.size
        tally.shards += 1
        tally.busy_s += busy_s
        if self.finished:
            self.finished_at = time.monotonic()
        return True

    def requeue(self, shard: ShardTask) -> None:
        """Give a lost shard a new attempt for any node; ``ShardFailed`` after ``MAX_ATTEMPTS``."""
        if shard.shard_id in self._done:
            return
        if shard.attempt + 1 >= MAX_ATTEMPTS:
            raise ShardFailed(
                f"request {self.request_id}: shard {shard.shard_id} (inputs {shard.start}..{shard.stop - 1}) "
                f"was lost on {MAX_ATTEMPTS} nodes; giving up"
            )
        shard.attempt += 1
        self.retries += 1
        self._orphans.append(shard.shard_id)

    def orphan_queue_of(self, node: str) -> None:
        """A node is gone: its unsent shards become orphans for the others."""
        queue = self._queues.get(node)
        while queue:
            self._orphans.append(queue.popleft())

    @property
    def has_unsent(self) -> bool:
        return bool(self._orphans) or any(self._queues.values())

    def wall_seconds(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return max(end - self.arrived, 1e-9)

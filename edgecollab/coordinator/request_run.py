"""Book-keeping of one request while it runs: its shards, their attempts, and the gathered predictions.

Pure: no sockets, no asyncio. Exactly-once lives here: a shard is handed out to one node
at a time, a result is accepted only for the shard's current attempt and only once, and
everything else is a late duplicate. Re-planning and work-stealing move only shards
that have not been sent, so neither can produce a second prediction for an input.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EdgecollabError
from ..planner import Plan

MAX_ATTEMPTS = 3  # distinct nodes a shard may be lost on before its request fails
MAX_TRIES = 10  # attempts in all (the same node may take a shard back): a bound for the unforeseen
# A request's timeline has at most this many bins, and this many numbers in all.
TIMELINE_BINS = 50
TIMELINE_CELLS = 2000


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
    lost_on: set[str] = field(default_factory=set)  # nodes an attempt of it was lost, refused or garbled on

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class NodeTally:
    """What one node did for the request with one variant."""

    node: str
    variant: str
    planned_inputs: int  # its share in the request's first plan
    inputs: int = 0  # inputs it actually predicted
    shards: int = 0
    busy_s: float = 0.0  # time it reported busy on this request's shards
    last_result_s: float = 0.0  # when its last result arrived, in seconds after the request arrived


class RequestRun:
    def __init__(
        self,
        request_id: str,
        plan: Plan,
        shard_size: int,
        arrived: float | None = None,
        sizes: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        self.request_id = request_id
        self.shard_size = shard_size
        self.sizes = dict(sizes or {})  # (node, variant) -> its shard size, where it differs from shard_size
        self.arrived = time.monotonic() if arrived is None else arrived
        self.plan = plan  # the latest plan
        self.total_inputs = sum(a.inputs for a in plan.assignments)
        self.predictions = np.full(self.total_inputs, -1, dtype=np.int64)
        self.outputs: dict[str, np.ndarray] = {}  # the asked-for outputs, made when the first shard brings them
        # Per input: which variant (index into variant_names) on which node (into node_names) answered it.
        self.provenance = np.full((self.total_inputs, 2), -1, dtype=np.int16)
        self.variant_names: list[str] = []
        self.node_names: list[str] = []
        self.shards: list[ShardTask] = []  # every shard ever cut, indexed by shard id
        self.tallies: dict[tuple[str, str], NodeTally] = {
            (a.node, a.variant): NodeTally(a.node, a.variant, a.inputs) for a in plan.assignments
        }
        self._queues: dict[str, deque[int]] = {}  # per node: ids of shards planned for it and not yet sent
        self._orphans: deque[int] = deque()  # ids of shards whose node was lost, for anyone
        self._owed: set[int] = set()  # ids of shards whose predictions are still owed (not done, not superseded)
        self.retries = 0  # shards re-sent after a node was lost
        self.steals = 0  # shards an idle node took from a slower one's queue
        self.replans = 0
        self.finished_at: float | None = None
        self.believed_costs: dict[tuple[str, str], float] = {}  # (node, variant) -> s/input its plans believed
        # One entry per accepted shard: (seconds after arrival its result came, node, variant, inputs, busy s).
        self._done: list[tuple[float, str, str, int, float]] = []
        self._cut(plan, [(0, self.total_inputs)])

    # --- handing out shards ----------------------------------------------------------------
    def next_shard(self, node: str, loaded: Collection[str] | None = None) -> ShardTask | None:
        """The next shard for ``node``: its own first, then one orphaned by a lost node."""
        queue = self._queues.get(node)
        if queue:
            return self.shards[queue.popleft()]
        self._drop_answered_orphans()
        if self._orphans:
            shard = self.shards[self._orphans[0]]
            variant = self._variant_for(node, shard, loaded)
            if variant is not None:
                self._orphans.popleft()
                shard.variant = variant
                return shard
        return None

    def has_work_for(self, node: str, loaded: Collection[str] | None = None) -> bool:
        """Whether ``next_shard(node, loaded)`` would give a shard."""
        if self._queues.get(node):
            return True
        self._drop_answered_orphans()
        return bool(self._orphans) and self._variant_for(node, self.shards[self._orphans[0]], loaded) is not None

    def _drop_answered_orphans(self) -> None:
        """An orphan answered meanwhile (a stalled node's late answer came first) is not sent again."""
        while self._orphans and self._orphans[0] not in self._owed:
            self._orphans.popleft()

    def steal(
        self, node: str, seconds_per_input: Callable[[str, str], float], loaded: Collection[str] | None = None
    ) -> ShardTask | None:
        """Take the last queued shard of the node that will finish last, if ``node`` would finish it sooner."""
        backlog = {
            victim: sum(self.shards[i].size * seconds_per_input(victim, self.shards[i].variant) for i in queue)
            for victim, queue in self._queues.items()
            if victim != node and queue
        }
        if not backlog:
            return None
        victim = max(backlog, key=lambda v: backlog[v])
        shard = self.shards[self._queues[victim][-1]]
        variant = self._variant_for(node, shard, loaded)
        if variant is None or shard.size * seconds_per_input(node, variant) >= backlog[victim]:
            return None
        self._queues[victim].pop()
        shard.variant = variant
        self.steals += 1
        return shard

    def _variant_for(self, node: str, shard: ShardTask, loaded: Collection[str] | None) -> str | None:
        # A planned node runs the variant the plan chose for its speed; others keep the shard's, if loaded.
        for a in self.plan.assignments:
            if a.node == node:
                return a.variant
        return shard.variant if loaded is None or shard.variant in loaded else None

    # --- results -----------------------------------------------------------------------------
    def complete(
        self,
        shard_id: int,
        attempt: int,
        predictions: np.ndarray,
        node: str,
        busy_s: float,
        now: float | None = None,
        outputs: Mapping[str, np.ndarray] | None = None,
        variant: str | None = None,
    ) -> bool:
        """Accept a shard's predictions (and outputs) once; False for a late or duplicate reply. The caller
        has checked their shapes (``nodes.result_problem``). An earlier attempt than the current one is taken
        only with the ``variant`` it ran (the dispatcher knows it for a stalled node's shards): whichever
        attempt answers first counts."""
        now = time.monotonic() if now is None else now
        if shard_id not in self._owed:
            return False
        shard = self.shards[shard_id]
        superseded = attempt < shard.attempt and variant is not None
        if (attempt != shard.attempt and not superseded) or len(predictions) != shard.size:
            return False
        variant = variant or shard.variant
        self.predictions[shard.start : shard.stop] = predictions
        for name, tensor in (outputs or {}).items():
            if name not in self.outputs:
                self.outputs[name] = np.zeros((self.total_inputs, *tensor.shape[1:]), tensor.dtype)
            self.outputs[name][shard.start : shard.stop] = tensor
        self.provenance[shard.start : shard.stop] = (
            _index(self.variant_names, variant),
            _index(self.node_names, node),
        )
        self._owed.discard(shard_id)
        tally = self.tallies.setdefault((node, variant), NodeTally(node, variant, 0))
        tally.inputs += shard.size
        tally.shards += 1
        tally.busy_s += busy_s
        tally.last_result_s = now - self.arrived
        self._done.append((tally.last_result_s, node, variant, shard.size, busy_s))
        if self.finished:
            self.finished_at = now
        return True

    def requeue(self, shard: ShardTask, node: str) -> None:
        """Give a shard lost on ``node`` a new attempt for any node; ``ShardFailed`` once it was lost on
        ``MAX_ATTEMPTS`` distinct nodes (a shard that kills every board), or tried ``MAX_TRIES`` times.
        The same node failing it again does not count: that is the node's fault, and the dispatcher
        strikes the node."""
        if shard.shard_id not in self._owed:
            return
        shard.lost_on.add(node)
        if len(shard.lost_on) >= MAX_ATTEMPTS or shard.attempt + 1 >= MAX_TRIES:
            raise ShardFailed(
                f"request {self.request_id}: shard {shard.shard_id} (inputs {shard.start}..{shard.stop - 1}) "
                f"was lost on {len(shard.lost_on)} nodes ({', '.join(sorted(shard.lost_on))}) in"
                f" {shard.attempt + 1} attempts; giving up"
            )
        shard.attempt += 1
        self.retries += 1
        self._orphans.append(shard.shard_id)

    def orphan_queue_of(self, node: str) -> None:
        """A node is gone: its unsent shards become orphans for the others."""
        queue = self._queues.get(node)
        while queue:
            self._orphans.append(queue.popleft())

    # --- re-planning -------------------------------------------------------------------------
    @property
    def queued_inputs(self) -> int:
        """Inputs in shards that no node has been sent yet (orphans excluded: they keep their attempts)."""
        return sum(self.shards[i].size for queue in self._queues.values() for i in queue)

    def replan(self, plan: Plan) -> None:
        """Replace the plan for every queued input; shards already sent, and orphans, stay as they are."""
        unsent = sorted((i for queue in self._queues.values() for i in queue), key=lambda i: self.shards[i].start)
        wanted = sum(a.inputs for a in plan.assignments)
        if wanted != sum(self.shards[i].size for i in unsent):
            raise ValueError(f"a re-plan must cover the {self.queued_inputs} queued inputs, not {wanted}")
        for i in unsent:
            self._owed.discard(i)  # superseded by the shards cut below
        for queue in self._queues.values():
            queue.clear()
        self.plan = plan
        self.replans += 1
        self._cut(plan, _merge((self.shards[i].start, self.shards[i].stop) for i in unsent))

    def _cut(self, plan: Plan, ranges: list[tuple[int, int]]) -> None:
        """Cut input ranges into shards of at most the node's size, following the plan's shares in order."""
        pool = deque(ranges)
        for a in plan.assignments:
            need = a.inputs
            queue = self._queues.setdefault(a.node, deque())
            while need > 0:
                start, stop = pool.popleft()
                take = min(need, stop - start, self.sizes.get((a.node, a.variant), self.shard_size))
                shard = ShardTask(len(self.shards), start, start + take, a.variant, a.node)
                self.shards.append(shard)
                self._owed.add(shard.shard_id)
                queue.append(shard.shard_id)
                if start + take < stop:
                    pool.appendleft((start + take, stop))
                need -= take

    # --- state -------------------------------------------------------------------------------
    @property
    def predicted_inputs(self) -> int:
        return sum(t.inputs for t in self.tallies.values())

    def served_accuracy(self, accuracy: dict[str, float]) -> float:
        """Expected accuracy of the variant mix that actually answered (test-set accuracy of each variant)."""
        done = [t for t in self.tallies.values() if t.inputs]
        total = sum(t.inputs for t in done)
        return sum(t.inputs * accuracy.get(t.variant, 0.0) for t in done) / total if total else 0.0

    @property
    def finished(self) -> bool:
        return not self._owed

    def timeline(self, max_cells: int = TIMELINE_CELLS) -> dict[str, Any]:
        """Inputs each (node, variant) predicted per time bin since arrival, in at most ``max_cells`` numbers
        and at most one bin per shard.

        Each shard's inputs are spread over the time its node worked on it. Bounded so that the
        report fits the protocol's header limit however long the request.
        """
        series = sorted({(node, variant) for _, node, variant, _, _ in self._done})
        # No more bins than shards: a one-shard request has a one-bin timeline (and costs nothing to draw).
        bins = max(1, min(TIMELINE_BINS, max_cells // max(len(series), 1), len(self._done)))
        width = self.wall_seconds() / bins
        counts = {key: [0.0] * bins for key in series}
        for end, node, variant, inputs, busy in self._done:
            start, row = max(end - busy, 0.0), counts[(node, variant)]
            if end <= start:  # no measured duration: count it where its result arrived
                row[min(int(end / width), bins - 1)] += inputs
                continue
            for b in range(min(int(start / width), bins - 1), min(int(end / width), bins - 1) + 1):
                overlap = min(end, (b + 1) * width) - max(start, b * width)
                row[b] += inputs * max(overlap, 0.0) / (end - start)
        return {
            "bin_s": width,
            "series": [
                {"node": node, "variant": variant, "inputs": [round(c) for c in counts[(node, variant)]]}
                for node, variant in series
            ],
        }

    def startup_seconds(self) -> float:
        """From arrival until its first shard began computing: waiting for a plan, the first trip out."""
        if not self._done:
            return 0.0
        first, _, _, _, busy = min(self._done)
        return max(first - busy, 0.0)

    def believe(self, plan: Plan, seconds_per_input: Callable[[str, str], float]) -> None:
        """What a plan adopted for this request believed each of its (node, variant) costs per input (the
        first belief about a pair is kept: a promise is judged against what was believed when it was made)."""
        for a in plan.assignments:
            self.believed_costs.setdefault((a.node, a.variant), seconds_per_input(a.node, a.variant))

    def reachable_ips(self, seconds_per_input: Callable[[str, str], float], node_share: Mapping[str, float]) -> float:
        """What the work, as it was really split over nodes and variants, could reach as its plans believed
        (``believe``; ``seconds_per_input`` for pairs no plan named): each node given ``node_share`` of its
        time (1 where absent) and all finishing together."""
        busy: dict[str, float] = {}
        for _, node, variant, inputs, _ in self._done:
            cost = self.believed_costs.get((node, variant)) or seconds_per_input(node, variant)
            busy[node] = busy.get(node, 0.0) + inputs * cost / node_share.get(node, 1.0)
        makespan = max(busy.values(), default=0.0)
        return self.total_inputs / makespan if makespan > 0 and np.isfinite(makespan) else 0.0

    def wall_seconds(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return max(end - self.arrived, 1e-9)


def _index(names: list[str], name: str) -> int:
    """The position of ``name`` in ``names``, appended if new."""
    if name not in names:
        names.append(name)
    return names.index(name)


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged

"""Small requests: served from the running plan without a solve, packed several to a message. Pure: no I/O.

Requests of at most a shard or so (see ``requests.MAX_SHARD_FACTOR``) with no conditions of their
own queue in one FIFO; the first node with a free slot takes as many as fit one of its shards,
at the variant the current plan runs there for their task, as one message. Their pooled rate
per task is a demand of the joint plan, re-planned when it moves by half.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import TYPE_CHECKING

import numpy as np

from ..planner import Assignment, Plan
from ..protocol import Error, ShardResult
from .events import Instruction, SendShard, WorkId, WorkKind
from .nodes import NodeState, SentPack, SentShard, result_problem
from .request_run import ShardTask
from .requests import MAX_SHARD_FACTOR, NON_RETRYABLE, OpenRequest

if TYPE_CHECKING:
    from .dispatch import DispatchCore

# The pooled rate of small requests is measured over this window; a change by this factor
# from what the plan assumed (at most once per interval) asks for a new plan.
SMALL_RATE_WINDOW_S = 2.0
SMALL_RATE_CHANGE = 0.5
SMALL_REPLAN_INTERVAL_S = 1.0


class SmallRequests:
    def __init__(self, core: DispatchCore) -> None:
        self.core = core
        # (key, inputs) of small requests not yet sent, in arrival order (closed ones dropped at the head).
        self.queue: deque[tuple[str, int]] = deque()
        self.queued_inputs = 0  # the inputs of every entry in ``queue``
        self._arrivals: deque[tuple[float, int, str]] = deque()  # (time, inputs, task) in SMALL_RATE_WINDOW_S
        self._inputs_in_window: Counter[str] = Counter()  # per task
        self.rate_planned: dict[str, float] = {}  # per task: the small-request rate the plan reserves for
        self._last_replan = float("-inf")

    def enqueue(self, r: OpenRequest, now: float) -> None:
        self.queue.append((r.key, r.request.inputs))
        self.queued_inputs += r.request.inputs
        self._count(r.request.inputs, r.task, now)

    def _count(self, inputs: int, task: str, now: float) -> None:
        """Track each task's pooled rate; ask for a plan when one moved materially."""
        self._arrivals.append((now, inputs, task))
        self._inputs_in_window[task] += inputs
        while self._arrivals and self._arrivals[0][0] < now - SMALL_RATE_WINDOW_S:
            _, old_inputs, old_task = self._arrivals.popleft()
            self._inputs_in_window[old_task] -= old_inputs
        rate = self.rate(task)
        planned = self.rate_planned.get(task, 0.0)
        moved = planned == 0 or abs(rate / planned - 1) > SMALL_RATE_CHANGE
        if moved and now - self._last_replan >= SMALL_REPLAN_INTERVAL_S:
            self._last_replan = now
            self.core.planning.want("the small-request rate changed")

    def rate(self, task: str) -> float:
        return self._inputs_in_window[task] / SMALL_RATE_WINDOW_S

    def queued_tasks(self) -> set[str]:
        return {self.core.requests[k].task for k, _ in self.queue if k in self.core.requests}

    def holds(self, key: str) -> bool:
        return any(k == key for k, _ in self.queue)

    def _pop(self) -> None:
        _, inputs = self.queue.popleft()
        self.queued_inputs -= inputs

    def head(self) -> OpenRequest | None:
        """The small request waiting longest (closed ones are dropped on the way)."""
        while self.queue and self.queue[0][0] not in self.core.requests:
            self._pop()
        return self.core.requests[self.queue[0][0]] if self.queue else None

    def variant_for(self, node: NodeState, r: OpenRequest) -> str | None:
        """The variant a small request runs on a node: its pinned one; else its task's pooled demand's
        there, else the plan's most accurate one of the task there, else (no plan uses the node) its most
        accurate profiled one. None when the node has none of them."""
        core, table, task = self.core, self.core.table, r.task
        allowed = r.variants
        profiled = [v for v in table.variants_of(node.name) if v in node.variants and (allowed is None or v in allowed)]
        if not profiled:
            return None
        if r.submit.variant is not None:
            return profiled[0]  # the pin, the only variant allowed
        plan = core.planning.plan
        if plan is not None:
            small = plan.demands.get(core.planning.small_key(task))
            chosen = small.variant_on(node.name) if small else None
            if chosen in profiled:
                return chosen
            planned = [
                s.variant
                for d in plan.demands.values()
                for s in d.shares
                if s.node == node.name and s.variant in profiled
            ]
            if planned:
                return max(planned, key=lambda v: table.accuracy[v])
        return max(profiled, key=lambda v: table.accuracy[v])

    def send(self, node: NodeState, variant: str, now: float) -> list[Instruction]:
        """Send the small requests at the head of the queue, as many as fit one shard of this node, as one
        message: under load they queue while every node is busy, and a freed node takes them together."""
        core = self.core
        # A free slot takes its share of what waits: requests that arrived together are spread over every
        # free slot, not packed onto the first node. Under load (few slots free) a slot takes one of this
        # node's shards, or its node's share of the queue when that is more, up to MAX_SHARD_FACTOR shards:
        # fewer, larger messages while requests queue (queueing, not the pack's size, sets their latency).
        waiting = self.queued_inputs
        per_slot = -(-waiting // max(core.nodes.free_slots(core.settings.window), 1))
        per_node = -(-waiting // max(len(core.nodes.usable()), 1))
        node_shard = core.request_dispatch.shard_size(node.name, variant)
        limit = max(1, min(per_slot, max(node_shard, per_node), core.settings.shard_size * MAX_SHARD_FACTOR))
        expected_ips = 1.0 / core.table.seconds_per_input(node.name, variant)
        pack: list[tuple[OpenRequest, ShardTask]] = []
        taken = 0
        out: list[Instruction] = []
        while (r := self.head()) is not None:
            first = pack[0][0] if pack else r
            if pack and (
                taken + min(r.request.inputs, limit) > limit
                or (r.outputs, r.task) != (first.outputs, first.task)
                or r.submit.variant not in (None, variant)
            ):
                break
            self._pop()
            assignment = Assignment(node.name, variant, r.request.inputs)
            out += core.request_dispatch.run(
                r, Plan(r.policy, (assignment,), expected_ips, core.table.accuracy[variant]), now
            )
            assert r.run is not None
            shard = r.run.next_shard(node.name, node.variants)
            assert shard is not None
            pack.append((r, shard))
            taken += shard.size
        if len(pack) == 1:
            return [*out, core.request_dispatch.send(node, *pack[0], now)]
        for r, shard in pack:
            core.request_dispatch.hand_out(node, r, shard, now)
        work_id = WorkId(WorkKind.PACK, core.next_number())
        members = [SentShard(r.key, shard, shard.attempt, variant, now) for r, shard in pack]
        node.in_flight[work_id] = SentPack(members, variant, now)
        inputs = np.concatenate([r.submit.inputs[shard.start : shard.stop] for r, shard in pack])
        core.counters["small_packs"] += 1
        return [*out, SendShard(node.name, work_id.shard(variant, inputs, pack[0][0].outputs))]

    def returned(
        self, node: NodeState, pack: SentPack, result: ShardResult, now: float
    ) -> tuple[list[Instruction], str | None]:
        """A pack came back: each request's slice is its own shard's answer. A malformed answer sends every
        request's shard again, and is one strike for the node however many requests it held."""
        core, out = self.core, list[Instruction]()
        first = core.requests.get(pack.members[0].request)
        problem = result_problem(
            result.predictions, result.outputs, pack.size, first.outputs if first else "predictions"
        )
        start = 0
        for work in pack.members:
            r, size = core.requests.get(work.request), work.size
            part = slice(start, start + size)
            start += size
            if r is None or r.run is None:
                core.counters["late_replies"] += 1
                continue
            outputs = {name: tensor[part] for name, tensor in result.outputs.items()}
            mine = problem or result_problem(result.predictions[part], outputs, size, r.outputs, r.run.outputs)
            if mine is not None:
                out += core.request_dispatch.requeue(r, work.task, node.name)
                problem = problem or mine
                continue
            out += core.request_dispatch.take(node, r, work, result.predictions[part], outputs, result.busy_s, now)
        return out, problem

    def refused(self, node: str, pack: SentPack, error: Error) -> tuple[list[Instruction], bool]:
        """A node could not run a pack: as if it refused each request's shard; one strike for the pack."""
        out: list[Instruction] = []
        for work in pack.members:
            more, _ = self.core.request_dispatch.refused(node, work, error)
            out += more
        return out, bool(pack.members) and error.code not in NON_RETRYABLE

    def take_back(self, pack: SentPack, node: str) -> list[Instruction]:
        out: list[Instruction] = []
        for work in pack.members:
            out += self.core.request_dispatch.take_back(work, node)
        return out

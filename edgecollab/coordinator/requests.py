"""Requests: admission, their runs (``RequestRun``), results, and which request a free node serves next.

A large request's shards are cut by its plan's shares into per-node queues but bound to a node
only when sent: a re-plan may re-cut them, a lost node's queue becomes anyone's, and an idle
node may steal the tail. When a slot frees, the requests with work for that node are served in
proportion to the node time the plan gives each (stride scheduling). Small requests (see
``packs.py``) share this book and these results. Pure: no I/O.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..config import CoordinatorConfig
from ..planner import ADAPTS_AT_RUN_TIME, ExplorationTable, Plan, PlanningError, PlanRequest, make_plan
from ..protocol import Error, Result, ShardResult, Submit
from .events import (
    AnswerRequest,
    FailRequest,
    Instruction,
    RequestOpened,
    SendShard,
    WorkId,
    WorkKind,
)
from .nodes import NodeState, SentShard, result_problem
from .ownership import principal, scoped_key
from .request_run import NodeTally, RequestRun, ShardFailed, ShardTask
from .validation import check_submit, check_variant, outputs_mode
from .views import report

if TYPE_CHECKING:
    from .dispatch import DispatchCore

log = logging.getLogger(__name__)

# Worker errors that sending the shard again would not fix.
NON_RETRYABLE = ("invalid_input", "unknown_variant")
# A jointly planned request that arrives alone is planned inline (milliseconds) up to this many boards.
INLINE_PLAN_NODES = 16
# A request's weight on a node its plan does not use (it runs there only orphans or steals).
STRAY_WEIGHT = 0.01
# A shard holds at most this many times ``shard_size`` inputs (see ``shard_size``); a request of at
# most that many inputs without a target is small.
MAX_SHARD_FACTOR = 8


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # for the cluster to form
    PLANNING = "planning"  # for the joint plan that covers it
    QUEUED = "queued"  # a small request, for a free node
    RUNNING = "running"  # its shards are being sent
    CLOSED = "closed"  # answered, failed or cancelled: late results are discarded


@dataclass
class OpenRequest:
    client: bytes
    submit: Submit
    request: PlanRequest
    policy: str
    arrived: float
    small: bool  # served from the current plan without a solve
    outputs: str = "predictions"  # what its shards bring back: one of OUTPUT_MODES
    task: str = ""  # the task it is for
    status: RequestStatus = RequestStatus.WAITING
    run: RequestRun | None = None  # set once it runs
    first_plan: Plan | None = None
    dispatch_started: float | None = None
    weights: dict[str, float] = field(default_factory=dict)  # node -> planned fraction of its time
    passes: dict[str, float] = field(default_factory=dict)  # node -> stride-scheduling pass
    owner: str = ""  # who may see it in status (see principal)
    # The variants that may serve it: its pinned one, else its task's (None: any in the table).
    variants: frozenset[str] | None = None
    # Other work ran beside it at some point: it had only its planned share of its nodes' time.
    shared: bool = False
    # What its task's realisation was when it was planned (efficiency, spread, start-up), and the confidence
    promise_basis: dict[str, float] = field(default_factory=dict)
    key: str = field(init=False)  # the core's name for it: requests, demands

    def __post_init__(self) -> None:
        self.key = scoped_key(self.client, self.submit.request_id)

    @property
    def request_id(self) -> str:
        """The id its client gave it, in every answer to that client."""
        return self.submit.request_id

    @property
    def done_inputs(self) -> int:
        return self.run.predicted_inputs if self.run else 0

    @property
    def joint(self) -> bool:
        """Planned in the joint plan (and so re-planned at run time)."""
        return not self.small and self.policy in ADAPTS_AT_RUN_TIME


class RequestDispatch:
    """Every admitted request not yet answered (``core.requests``), and what happens to them."""

    def __init__(self, core: DispatchCore) -> None:
        self.core = core

    # --- admission -----------------------------------------------------------------------------
    def open(self, event: RequestOpened) -> list[Instruction]:
        core, settings, submit = self.core, self.core.settings, event.submit
        rid = submit.request_id
        task, problem = core.task_named(submit.task)
        if task is not None:
            known = task.variants if task.variants is not None else core.table.accuracy.keys()
            problem = check_submit(submit, task.input_shape, task.input_dtype) or check_variant(
                submit.variant, task.name, known
            )
        outputs, wrong = outputs_mode(task, submit.outputs)
        problem = problem or wrong
        key = scoped_key(event.client, rid)
        if problem is None and (key in core.requests or key in core.streams):
            problem = f"request_id {rid!r} is already running; every request needs its own id"
        if problem is not None:
            return core.refuse(event.client, Error("invalid_input", problem, rid))
        if core.manager.state == "draining":
            why = "the coordinator is shutting down; submit again when it is back"
            return core.refuse(event.client, Error("shutting_down", why, rid))
        if len(core.requests) >= settings.max_requests:
            why = f"the coordinator is serving its limit of {settings.max_requests} requests; retry later"
            return core.refuse(event.client, Error("busy", why, rid))
        held = sum(r.submit.inputs.nbytes for r in core.requests.values())
        if held + submit.inputs.nbytes > settings.max_input_bytes:
            why = (
                f"the coordinator holds {held:,} bytes of inputs; this request's {submit.inputs.nbytes:,} would pass"
                f" its limit of {settings.max_input_bytes:,} (max_input_bytes); retry later or send fewer inputs"
            )
            return core.refuse(event.client, Error("busy", why, rid))
        assert task is not None
        policy = submit.policy or settings.policy
        request = PlanRequest(len(submit.inputs), submit.target_ips, submit.min_accuracy)
        # A few inputs with no conditions of their own fit whatever plan is running: no solve for them.
        # Up to one shard, a target is met by sending it at once; beyond, only a request without a
        # target is served that way (one with a target is planned, so the report says if it is met).
        small = (
            request.inputs <= settings.shard_size * (MAX_SHARD_FACTOR if submit.target_ips is None else 1)
            and policy in ADAPTS_AT_RUN_TIME
            and submit.min_accuracy is None
            and not submit.strict
        )
        r = OpenRequest(
            event.client, submit, request, policy, event.now, small, outputs=outputs, task=task.name,
            owner=principal(event.client, event.owner),
            variants=frozenset({submit.variant}) if submit.variant is not None else task.variants,
        )  # fmt: skip
        core.requests[r.key] = r
        return self.start(r, event.now) if core.manager.accepts_work() else []

    def start(self, r: OpenRequest, now: float) -> list[Instruction]:
        if r.small:  # served from the running plan
            r.status = RequestStatus.QUEUED
            self.core.small.enqueue(r, now)
            return []
        if r.joint and not self._alone(r):
            r.status = RequestStatus.PLANNING
            self.core.planning.want(f"request {r.request_id[:8]} arrived")
            return []
        # The baselines plan alone, on the whole cluster, and follow that plan (no solve: they are cheap);
        # so does a jointly planned request that arrives alone: it starts at once, without waiting for a solve.
        try:
            table = self.core.table.only(r.variants)
            plan = make_plan(r.policy, table, r.request, self.core.nodes.usable())
        except PlanningError as exc:
            return self.fail(r, Error("invalid_input", str(exc), r.request_id))
        if r.joint:
            self.core.table.assume_current(self.core.nodes.usable())  # its drift is judged from this plan
        return self.run(r, plan, now)

    def _alone(self, r: OpenRequest) -> bool:
        """Nothing else shares the boards (no other large request, no stream, no small requests' pool), and
        the cluster is small enough to plan inline: the joint plan would be this request's own plan."""
        core = self.core
        others = any(o is not r and not o.small for o in core.requests.values())
        return (
            not others
            and not core.streams
            and not core.small.queued_tasks()
            and (len(core.nodes.usable()) <= INLINE_PLAN_NODES)
        )

    def run(self, r: OpenRequest, plan: Plan, now: float) -> list[Instruction]:
        """Start a request on its plan (a strict request whose plan misses its conditions fails instead)."""
        if r.submit.strict and not plan.feasible:
            why = "; ".join(plan.notes) or "no plan meets it"
            message = (
                f"cannot meet target_ips={r.request.target_ips} min_accuracy={r.request.min_accuracy} on the "
                f"cluster as it is (the best plan gives {plan.expected_ips:,.0f} inf/s at "
                f"{plan.expected_accuracy * 100:.2f} %): {why}"
            )
            return self.fail(r, Error("infeasible", message, r.request_id))
        sizes = {(a.node, a.variant): self.shard_size(a.node, a.variant) for a in plan.assignments}
        r.run = RequestRun(r.request_id, plan, self.core.settings.shard_size, r.arrived, sizes)
        r.run.believe(plan, self.core.table.seconds_per_input)
        table = self.core.table
        realisation = table.realisation(r.variants or table.accuracy)
        r.promise_basis = {**realisation.as_dict(), "confidence": table.confidence, "z": table.z}
        r.first_plan = plan
        r.status = RequestStatus.RUNNING
        r.dispatch_started = now
        r.weights = plan_weights(plan, self.core.table)
        others = [o for o in self.core.requests.values() if o is not r and o.status is RequestStatus.RUNNING]
        for o in others:
            o.shared = True
        r.shared = bool(others) or bool(self.core.streams)
        return []

    def finish(self, r: OpenRequest) -> list[Instruction]:
        run, core = r.run, self.core
        assert run is not None and r.first_plan is not None
        self.close(r)
        if not r.small:
            self.learn(r, run)
        shown = report(r, core.table, core.manager.expected)
        core.counters["inputs_served"] += run.total_inputs
        if not r.small:
            core.last_request = {k: float(shown[k]) for k in ("expected_ips", "achieved_ips", "expected_accuracy")}
            if any(o.joint and o.status is RequestStatus.RUNNING for o in core.requests.values()):
                core.planning.want(f"request {r.request_id[:8]} finished")
        core.outcomes["completed"] += 1
        self.count_answered(r, run)
        result = Result(
            r.request_id, run.predictions, run.provenance, shown, run.outputs, run.variant_names, run.node_names
        )
        return [AnswerRequest(r.client, result)]

    def learn(self, r: OpenRequest, run: RequestRun) -> None:
        """Teach the table what every request really got (re-planned and short ones too): after its start-up,
        against what its work, as it was split, could reach as its plans believed (the rows when each plan
        was made: a row that is right alone but slow under a whole cluster's load shows here); a request
        that shared the cluster is measured against the share of node time it was planned to have."""
        startup = run.startup_seconds()
        steady = run.total_inputs / max(run.wall_seconds() - startup, 1e-6)
        table = self.core.table
        reachable = run.reachable_ips(table.seconds_per_input, r.weights if r.shared else {})
        table.learn_request(r.variants or table.accuracy, steady, reachable, startup)

    def count_answered(self, r: OpenRequest, run: RequestRun) -> None:
        """A request's figures in its task's statistics, and in those of each variant that ran some of it."""
        wall_ns = int(run.wall_seconds() * 1e9)
        queue_ns = int(max((r.dispatch_started or r.arrived) - r.arrived, 0.0) * 1e9)
        by_variant: dict[str, list[NodeTally]] = {}
        for tally in run.tallies.values():
            if tally.shards:
                by_variant.setdefault(tally.variant, []).append(tally)
        stats = self.core.task_stats[r.task]
        for counter, tallies in [(stats, list(run.tallies.values()))] + [
            (self.core.variant_stats[v], mine) for v, mine in by_variant.items()
        ]:
            counter["success"] += 1
            counter["success_ns"] += wall_ns
            counter["queue_ns"] += queue_ns
            counter["inputs"] += sum(t.inputs for t in tallies)
            counter["executions"] += sum(t.shards for t in tallies)
            counter["compute_ns"] += int(sum(t.busy_s for t in tallies) * 1e9)

    def fail(self, r: OpenRequest, error: Error) -> list[Instruction]:
        self.close(r)
        self.core.outcomes[error.code] += 1
        stats = self.core.task_stats[r.task]
        stats["fail"] += 1
        stats["fail_ns"] += int(r.run.wall_seconds() * 1e9) if r.run is not None else 0
        return [FailRequest(r.client, error)]

    def close(self, r: OpenRequest) -> None:
        """Forget a request: late results for it are discarded; nothing of it is sent again."""
        self.core.requests.pop(r.key, None)
        r.status = RequestStatus.CLOSED
        self.core.work_closed()

    def cancel(self, r: OpenRequest, outcome: str, why: str) -> None:
        """Drop a request its client gave up (or lost): its share of the boards is free."""
        planned = r.joint and r.status in (RequestStatus.PLANNING, RequestStatus.RUNNING)
        self.core.outcomes[outcome] += 1
        self.close(r)
        if planned and any(o.joint for o in self.core.requests.values()):
            self.core.planning.want(why)

    # --- results -------------------------------------------------------------------------------
    def returned(
        self, node: NodeState, work: SentShard, result: ShardResult, now: float
    ) -> tuple[list[Instruction], str | None]:
        """A shard's answer: the instructions, and the problem with it when it is malformed (a strike)."""
        r = self.core.requests.get(work.request)
        if r is None or r.run is None:
            self.core.counters["late_replies"] += 1
            return [], None
        problem = result_problem(result.predictions, result.outputs, work.size, r.outputs, r.run.outputs)
        if problem is not None:
            log.warning("dispatch: %s returned %s; sending the shard again", node.name, problem)
            return ([] if work.stalled else self.requeue(r, work.task, node.name)), problem  # a stalled one is out
        return self.take(node, r, work, result.predictions, result.outputs, result.busy_s, now), None

    def take(
        self, node: NodeState, r: OpenRequest, work: SentShard, predictions: np.ndarray,
        outputs: dict[str, np.ndarray], busy_s: float, now: float,
    ) -> list[Instruction]:  # fmt: skip
        """Accept a checked answer for a shard once; a late copy is discarded. A stalled node's answer that
        comes before its copy's counts, with the variant it ran there."""
        assert r.run is not None
        self.core.nodes.succeeded(node)
        shard = work.task
        if not r.run.complete(
            shard.shard_id, work.attempt, predictions, node.name, busy_s, now, outputs, variant=work.variant
        ):
            self.core.counters["late_replies"] += 1
            return []
        if work.stalled:
            self.core.counters["stalled_answers_used"] += 1
        else:
            self.core.observe(node, work.variant, work.size, work.sent_at, busy_s, now)
        return self.finish(r) if r.run.finished else []

    def refused(self, node: str, work: SentShard, error: Error) -> tuple[list[Instruction], bool]:
        """A node could not run a shard: the request fails if it is at fault, else the shard goes elsewhere
        and the refusal counts against the node (True)."""
        r = self.core.requests.get(work.request)
        if r is None or r.run is None or work.stalled:  # a stalled node's shard is out again elsewhere
            self.core.counters["late_replies"] += 1
            return [], False
        if error.code in NON_RETRYABLE:
            return self.fail(r, Error(error.code, f"node {node}: {error.message}", r.request_id)), False
        return self.requeue(r, work.task, node), True

    def requeue(self, r: OpenRequest, shard: ShardTask, lost_on: str) -> list[Instruction]:
        assert r.run is not None
        try:
            r.run.requeue(shard, lost_on)
        except ShardFailed as exc:
            return self.fail(r, Error("node_lost", str(exc), r.request_id))
        return []

    def take_back(self, work: SentShard, node: str) -> list[Instruction]:
        """A node holding this shard is lost or stalled: the shard goes to the others."""
        r = self.core.requests.get(work.request)
        return self.requeue(r, work.task, node) if r is not None and r.run is not None else []

    # --- sending -------------------------------------------------------------------------------
    def next_for(self, node: NodeState, now: float, steal: bool = True) -> SendShard | None:
        """The shard a free node runs next: of the request it owes the most service by its planned share
        of the node's time; else, idle (and ``steal``), the tail of the slowest node's queue if it would
        finish it sooner."""
        best: tuple[float, OpenRequest] | None = None
        for r in self.core.requests.values():
            if r.run is None or not r.run.has_work_for(node.name, node.variants):
                continue
            pass_ = r.passes.setdefault(node.name, node.clock)
            if best is None or pass_ < best[0]:
                best = (pass_, r)
        if best is not None:
            r = best[1]
            assert r.run is not None
            shard = r.run.next_shard(node.name, node.variants)
            if shard is not None:
                return self.send(node, r, shard, now)
        if steal and self.core.settings.work_stealing:
            for r in self.core.requests.values():
                if r.run is None or r.policy not in ADAPTS_AT_RUN_TIME:
                    continue
                shard = r.run.steal(node.name, self.core.table.seconds_per_input, node.variants)
                if shard is not None:
                    return self.send(node, r, shard, now)
        return None

    def send(self, node: NodeState, r: OpenRequest, shard: ShardTask, now: float) -> SendShard:
        work_id = self.hand_out(node, r, shard, now)
        node.in_flight[work_id] = SentShard(r.key, shard, shard.attempt, shard.variant, now)
        inputs = r.submit.inputs[shard.start : shard.stop]
        return SendShard(node.name, work_id.shard(shard.variant, inputs, r.outputs))

    def hand_out(self, node: NodeState, r: OpenRequest, shard: ShardTask, now: float) -> WorkId:
        """Name a shard's attempt on a node, and charge its request's stride pass there."""
        weight = r.weights.get(node.name, STRAY_WEIGHT)
        cost = shard.size * self.core.table.seconds_per_input(node.name, shard.variant)
        pass_ = r.passes.get(node.name, node.clock)
        node.clock = max(node.clock, pass_)
        r.passes[node.name] = pass_ + (cost if np.isfinite(cost) else 1.0) / weight
        return WorkId(WorkKind.SHARD, self.core.next_number(), shard.attempt)

    def shard_size(self, node: str, variant: str) -> int:
        return shard_size_for(self.core.table.ips(node, variant), self.core.settings)


def shard_size_for(ips: float, settings: CoordinatorConfig) -> int:
    """A node's shards last about ``shard_seconds`` there: a fast board gets larger ones (less per-shard
    cost), never smaller than ``shard_size`` nor over MAX_SHARD_FACTOR times it. Profiling times rows at it."""
    size = settings.shard_size
    return int(min(max(size, ips * settings.shard_seconds), size * MAX_SHARD_FACTOR))


def plan_weights(plan: Plan, table: ExplorationTable) -> dict[str, float]:
    """The fraction of each node's time a plan asks for — its work there over the plan's duration —
    as the request's stride weights: on a node shared with other requests it gets what the joint plan
    gave it, no more and no less. (Normalising by the busiest node instead gave every request weight 1
    on its main node, so a heavy task shared a board equally with a light one and fell short.)"""
    cost = table.lower_bound_seconds if plan.cautious else table.seconds_per_input  # as it was planned
    seconds: dict[str, float] = {}
    for a in plan.assignments:
        seconds[a.node] = seconds.get(a.node, 0.0) + a.inputs * cost(a.node, a.variant)
    total = sum(a.inputs for a in plan.assignments)
    # The rate planned on the nodes: what the plan promises, before its task's efficiency and margin.
    kept = table.efficiency_for(a.variant for a in plan.assignments) * (1 - plan.margin)
    planned_ips = plan.expected_ips / kept
    duration = total / planned_ips if planned_ips > 0 else max(seconds.values(), default=0.0)
    if duration <= 0 or not np.isfinite(duration) or not all(np.isfinite(s) for s in seconds.values()):
        return {n: 1.0 for n in seconds}
    return {n: min(max(s / duration, STRAY_WEIGHT), 1.0) for n, s in seconds.items()}

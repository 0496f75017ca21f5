"""Planning: what the joint plan must cover, when to solve it again, and adopting a solved one. Pure: no I/O.

**One joint plan** (``planner/joint.py``) covers every running request with the ``adaptive`` or
``mixed`` policy, every pool of streams and the pooled traffic of small requests. It is solved
off the event loop (``Replan``) when the running work or the table changed materially: a large
request arrives or finishes while others run, a node joins, is lost, drifts or answers again, or
the small-request rate moves by half. At most one solve is out at a time (the resource manager
is ``replanning`` meanwhile); changes meanwhile are folded into the next one. This is the only
place that builds a ``Demand``: for the core, and for the ``plan`` query.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..planner import ExplorationTable, Plan, PlanningError, PlanRequest
from ..planner.joint import Demand, DemandPlan, JointPlan
from ..protocol import Error
from .events import Instruction, PlanSolved, Replan
from .requests import OpenRequest, RequestStatus, plan_weights
from .streams import OpenStream, StreamStatus

if TYPE_CHECKING:
    from .dispatch import DispatchCore

log = logging.getLogger(__name__)

# Drift re-plans are at most this frequent.
DRIFT_REPLAN_INTERVAL_S = 0.5
# The plan reserves this much more than the measured small-request rate, and at least this rate.
SMALL_RATE_MARGIN = 1.5
SMALL_MIN_RATE = 5.0
SMALL_DEMAND = "small:requests"  # demand keys with ':' cannot be a client's id
# A running request with less than this share of its inputs still queued keeps its plan: moving a board to
# another variant that late makes a straggler (it warms up and runs alone), and stealing balances the tail.
LATE_SHARE = 0.25


class Planning:
    def __init__(self, core: DispatchCore) -> None:
        self.core = core
        self.plan: JointPlan | None = None  # the latest joint plan adopted
        self.generation = 0  # of the latest Replan issued; a PlanSolved of another is stale
        self.reason: str | None = None  # why the next solve is wanted; None when none is
        self._last_drift_replan = float("-inf")

    def small_key(self, task: str) -> str:
        """The pooled small requests' demand key of a task (the default task's is SMALL_DEMAND)."""
        return SMALL_DEMAND if task == self.core.default_task else f"{SMALL_DEMAND} {task}"

    def want(self, reason: str) -> None:
        self.reason = self.reason or reason

    def drifted(self, node: str, now: float) -> None:
        if self.core.settings.replan_on_drift and now - self._last_drift_replan >= DRIFT_REPLAN_INTERVAL_S:
            self._last_drift_replan = now
            self.want(f"{node} drifted")

    # --- demands -------------------------------------------------------------------------------
    def request_demand(
        self, key: str, target_ips: float | None, min_accuracy: float | None, policy: str,
        variants: frozenset[str] | None,
    ) -> Demand:  # fmt: skip
        return Demand(key, target_ips, min_accuracy, policy == "adaptive", variants=variants)

    def demands(self, now: float) -> tuple[Demand, ...]:
        """What the joint plan must cover now: every jointly planned request's rest, every pool of streams,
        and each task's small requests."""
        core = self.core
        demands = []
        for r in core.requests.values():
            if not r.joint or r.status not in (RequestStatus.PLANNING, RequestStatus.RUNNING):
                continue
            target = r.request.target_ips
            if r.status is RequestStatus.PLANNING and target is not None:
                # Its inputs have the time left once the task's start-up (the solve, the first trip) is spent.
                startup = core.table.realisation(r.variants).startup_s + max(now - r.arrived, 0.0)
                target = r.request.inputs / max(r.request.inputs / target - startup, 1e-3)
            elif r.status is RequestStatus.RUNNING:
                assert r.run is not None
                remaining = r.run.queued_inputs
                if remaining == 0:
                    continue
                if target is not None:
                    # What the rest must reach to finish by the request's own deadline — never less than its
                    # own target: time gained early is kept as slack for the tail, not spent on accuracy.
                    time_left = r.arrived + r.request.inputs / target - now
                    target = max(target, remaining / max(time_left, 1e-3))
            demands.append(self.request_demand(r.key, target, r.request.min_accuracy, r.policy, r.variants))
        # Streams with the same conditions are one demand at their summed rate: the plan's size does
        # not grow with the number of cameras, and each of them runs what the pool runs on a node.
        pools: dict[str, tuple[float, OpenStream]] = {}
        for stream in core.streams.values():
            if stream.status is not StreamStatus.WAITING:
                rate, _ = pools.get(stream.pool, (0.0, stream))
                pools[stream.pool] = (rate + stream.spec.target_fps, stream)
        for key, (rate, stream) in pools.items():
            variants = core.stream_dispatch.task_of(stream).variants
            latency, batch = stream.max_latency_s, core.settings.shard_size
            demands.append(Demand(key, rate, stream.spec.min_accuracy, True, latency, batch, variants))
        queued = core.small.queued_tasks()
        for task in core.tasks.values():
            rate = core.small.rate(task.name)
            if rate > 0 or task.name in queued:
                rate = max(rate * SMALL_RATE_MARGIN, SMALL_MIN_RATE)
                demands.append(Demand(self.small_key(task.name), rate, variants=task.variants))
        return tuple(demands)

    def query(
        self, key: str, request: PlanRequest, policy: str, task: str, now: float
    ) -> tuple[ExplorationTable, tuple[Demand, ...], list[str]]:
        """What to solve to tell a client how a request would be served now, next to the work running."""
        variants = self.core.tasks[task].variants
        asked = self.request_demand(key, request.target_ips, request.min_accuracy, policy, variants)
        demands = (*(d for d in self.demands(now) if d.key != key), asked)
        return self.core.table.scaled(1.0), demands, self.core.nodes.usable()

    # --- solving -------------------------------------------------------------------------------
    def maybe_replan(self, now: float) -> list[Instruction]:
        core = self.core
        if self.reason is None or not core.manager.may_solve():
            return []
        demands = self.demands(now)
        if not demands:
            self.reason = None
            return []
        core.manager.begin_replan()
        self.generation += 1
        core.counters["solves"] += 1
        table = core.table.scaled(1.0)  # a snapshot: observations go on while it is solved
        replan = Replan(self.generation, table, demands, tuple(core.nodes.usable()), self.reason)
        self.reason = None
        return [replan]

    def solved(self, event: PlanSolved) -> list[Instruction]:
        core = self.core
        if event.generation != self.generation:
            return []  # an answer to a solve this core no longer waits for
        core.manager.plan_settled()
        out: list[Instruction] = []
        if event.plan is None:
            core.counters["failed_solves"] += 1
            log.warning("dispatch: the joint plan could not be made: %s", event.problem)
            why = f"cannot plan: {event.problem}"
            for r in [r for r in core.requests.values() if r.status is RequestStatus.PLANNING]:
                out += core.request_dispatch.fail(r, Error("invalid_input", why, r.request_id))
            for stream in [s for s in core.streams.values() if s.status is StreamStatus.PLANNING]:
                out += core.stream_dispatch.fail(stream, Error("invalid_input", why, stream.stream_id))
            return out
        plan = self.plan = event.plan
        core.stream_dispatch.forget_variants()
        for stream in [s for s in core.streams.values() if s.status is StreamStatus.PLANNING]:
            demand = plan.demands.get(stream.pool)
            if demand is not None:
                out += core.stream_dispatch.admitted(stream, demand)
        for task in core.tasks:
            small = plan.demands.get(self.small_key(task))
            core.small.rate_planned[task] = small.expected_ips if small else 0.0
        core.table.assume_current(core.nodes.usable())
        for r in list(core.requests.values()):
            demand = plan.demands.get(r.key)
            if demand is None or not r.joint:
                continue
            try:
                if r.status is RequestStatus.PLANNING:
                    out += core.request_dispatch.run(r, demand.for_inputs(r.policy, r.request.inputs), event.now)
                elif r.status is RequestStatus.RUNNING:
                    self._follow(r, demand)
            except PlanningError as exc:  # this request cannot follow the plan; the others can
                out += core.request_dispatch.fail(r, Error("invalid_input", f"cannot plan: {exc}", r.request_id))
        return out

    def _follow(self, r: OpenRequest, demand: DemandPlan) -> None:
        """A running request takes its share of a new joint plan for the inputs not yet sent."""
        run, core = r.run, self.core
        assert run is not None
        remaining = run.queued_inputs
        late = remaining < LATE_SHARE * run.total_inputs  # the tail is work-stealing's: a new variant there straggles
        if remaining > 0 and not late and _differs(run.plan, demand):
            plan = demand.for_inputs(r.policy, remaining)
            sizes = {(a.node, a.variant): core.request_dispatch.shard_size(a.node, a.variant) for a in plan.assignments}
            run.sizes.update(sizes)
            run.replan(plan)
            run.believe(plan, core.table.seconds_per_input)
            core.counters["replans"] += 1
        r.weights = plan_weights(run.plan, core.table)


def _differs(plan: Plan, demand: DemandPlan) -> bool:
    """Whether a request's current plan and its new joint share differ in variants or by > 10 % in split."""
    assignments = plan.assignments
    old_total = sum(a.inputs for a in assignments) or 1
    new_total = sum(s.ips for s in demand.shares) or 1.0
    old = {(a.node, a.variant): a.inputs / old_total for a in assignments}
    new = {(s.node, s.variant): s.ips / new_total for s in demand.shares}
    if set(old) != set(new):
        return True
    return any(abs(old[k] - new[k]) > 0.1 for k in old)

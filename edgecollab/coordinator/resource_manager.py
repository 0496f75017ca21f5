"""The resource manager: a state machine over the cluster's life cycle that owns the exploration table.

States (``transitions`` machine, no I/O in any callback):

    waiting      fewer nodes registered than configured, before the cluster was first ready
                 or the start-up timeout
    profiling    a registered node has not been profiled yet
    ready        every registered node is profiled; no request running
    planning     a joint plan is being solved
    dispatching  at least one request is running

The cluster's facts (registered, profiled, running) change through the methods
below; each then fires ``settle``, whose guarded transitions pick the state those
facts imply, in priority order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from transitions import Machine, MachineError

from ..errors import EdgecollabError
from ..planner import ExplorationTable, Measurement, Plan

log = logging.getLogger(__name__)

STATES = ["waiting", "profiling", "ready", "planning", "dispatching"]
# Observed throughput is folded into the table with this weight (exponentially weighted average).
OBSERVATION_WEIGHT = 0.3
# A node whose estimate moves this far (relative) from what the running plans assumed triggers a re-plan,
# once that many shards of a (node, variant) in use have been observed since the last plan.
DRIFT_THRESHOLD = 0.3
DRIFT_MIN_OBSERVATIONS = 3
# Requests planned to take at least this long teach the table the cluster's efficiency; shorter
# ones are dominated by fixed costs and would skew it.
EFFICIENCY_MIN_MAKESPAN_S = 0.3


def shard_cost_s(sent: float, previous_result: float | None, now: float, busy_s: float) -> float:
    """What a shard cost its node, as profiling measures it: compute, or the link when that is slower.

    From the later of the shard's sending and the node's previous result until this result:
    while shards queue behind each other that is the node's pace, whichever of compute and
    transfer sets it; after an idle spell it is the shard's round trip. Never less than the
    compute time the worker reported.
    """
    start = sent if previous_result is None else max(sent, previous_result)
    return max(busy_s, now - start)


class NotReady(EdgecollabError):
    """No profiled node can take a request yet."""


class ResourceManager:
    # Set on the instance by the ``transitions`` machine.
    state: str
    settle: Callable[[], bool]
    begin_planning: Callable[[], bool]

    def __init__(self, expected_nodes: Iterable[str], table: ExplorationTable) -> None:
        self.expected = set(expected_nodes)  # node names from the config
        self.table = table
        self.registered: set[str] = set()  # alive nodes that said hello; superset of profiled
        self.profiled: set[str] = set()  # registered nodes whose table rows are complete
        self.suspect: set[str] = set()  # alive but not answering (a stuck inference): no work for them
        self.running: set[str] = set()  # ids of requests being dispatched
        # True after the start-up timeout or once the cluster was first ready: from then on a missing
        # node no longer holds requests back
        self.startup_expired = False
        # (node, variant) pairs the latest plans use -> the throughput they assumed
        self.planned_ips: dict[tuple[str, str], float] = {}
        self._observed_since_plan: dict[tuple[str, str], int] = {}
        self._listeners: list[Callable[[str], None]] = []
        self.machine = Machine(
            model=self,
            states=STATES,
            initial="waiting",
            auto_transitions=False,
            queued=True,
            after_state_change="_notify",
            on_exception="_on_exception",
        )
        add = self.machine.add_transition
        add("settle", "*", "dispatching", conditions="has_running")
        add("settle", "*", "profiling", conditions="has_unprofiled")
        add("settle", "*", "waiting", conditions="awaiting_nodes")
        add("settle", "*", "ready")
        add("begin_planning", ["ready", "dispatching", "waiting", "profiling"], "planning", conditions="can_plan")
        self.machine.on_enter_ready("_started")

    # --- conditions -----------------------------------------------------------------------
    def has_running(self) -> bool:
        return bool(self.running)

    def has_unprofiled(self) -> bool:
        return bool(self.registered - self.profiled)

    def awaiting_nodes(self) -> bool:
        return not self.registered or (not self.startup_expired and not self.expected <= self.registered)

    def can_plan(self) -> bool:
        return bool(self.usable_nodes())

    # --- facts in ---------------------------------------------------------------------------
    def on_state_change(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def node_joined(self, node: str) -> None:
        """Register a node; it is usable once ``node_profiled`` gives its measurements."""
        self.registered.add(node)
        self.profiled.discard(node)
        self.table.forget(node)
        self.settle()

    def node_profiled(self, node: str, measurements: dict[str, Measurement]) -> None:
        if node in self.registered:
            for variant, measurement in measurements.items():
                if variant in self.table.accuracy:
                    self.table.record(node, variant, measurement)
            self.profiled.add(node)
        self.settle()

    def node_left(self, node: str) -> None:
        self.registered.discard(node)
        self.profiled.discard(node)
        self.suspect.discard(node)
        self.table.forget(node)
        self.settle()

    def expire_startup(self) -> None:
        self.startup_expired = True
        self.settle()

    def usable_nodes(self) -> list[str]:
        """Registered, profiled and not suspect: the nodes plans and dispatch may use."""
        return sorted((self.profiled & self.registered) - self.suspect)

    def node_suspect(self, node: str) -> None:
        """A node stopped answering while alive: no work for it until it answers again."""
        self.suspect.add(node)

    def node_answered(self, node: str) -> bool:
        """A node answered: usable again if it was suspect (True then)."""
        if node in self.suspect:
            self.suspect.discard(node)
            return True
        return False

    def accepts_requests(self) -> bool:
        return self.state in ("ready", "planning", "dispatching")

    def observe(self, node: str, variant: str, ips: float, evidence: float = 1.0) -> bool:
        """Fold an observed throughput into the table; True when the node drifted from what plans assumed.

        ``evidence`` (0, 1] weighs the observation: a small micro-batch says less than a full shard.
        """
        self.table.observe(node, variant, ips, OBSERVATION_WEIGHT * evidence)
        estimate = self._delivered_ips(node, variant)
        key = (node, variant)
        assumed = self.planned_ips.get(key)
        if assumed is None:
            return False  # not something a running plan relies on
        seen = self._observed_since_plan[key] = self._observed_since_plan.get(key, 0) + 1
        if seen < DRIFT_MIN_OBSERVATIONS or abs(estimate / assumed - 1) <= DRIFT_THRESHOLD:
            return False
        log.info("resource manager: %s on %s drifted from %.0f to %.0f inf/s", node, variant, assumed, estimate)
        return True

    # --- requests ---------------------------------------------------------------------------
    def planning_started(self) -> None:
        """A plan is being made (state ``planning`` until the next fact settles it)."""
        if not self.can_plan():
            raise NotReady(f"no profiled node is available (cluster is {self.state})")
        try:
            self.begin_planning()
        except MachineError:
            raise NotReady(f"no plan can be made while the cluster is {self.state}") from None

    def plan_adopted(self) -> None:
        """The running work follows a new plan made from the table as it is now: drift is measured from here."""
        self.planned_ips = {
            (n, v): self._delivered_ips(n, v) for n in self.usable_nodes() for v in self.table.variants_of(n)
        }
        self._observed_since_plan.clear()
        self.settle()

    def request_started(self, request_id: str) -> None:
        first = not self.running
        self.running.add(request_id)
        if first or self.state != "dispatching":  # otherwise the facts imply the state it is in
            self.settle()

    def _delivered_ips(self, node: str, variant: str) -> float:
        """What the planner counts on from a node: its compute, capped by its link when the config gives one."""
        return 1.0 / self.table.seconds_per_input(node, variant)

    def request_outcome(self, plan: Plan, achieved_ips: float) -> None:
        """Learn from a finished request how much of its expected throughput the cluster delivered."""
        total = sum(a.inputs for a in plan.assignments)
        if plan.expected_ips > 0 and total / plan.expected_ips >= EFFICIENCY_MIN_MAKESPAN_S:
            self.table.observe_efficiency(achieved_ips / plan.expected_ips, OBSERVATION_WEIGHT)

    def finish_request(self, request_id: str) -> None:
        self.running.discard(request_id)
        if not self.running:
            self.planned_ips.clear()  # nothing relies on the old assumptions any more
            self._observed_since_plan.clear()
            self.settle()

    # --- internals --------------------------------------------------------------------------
    def _started(self) -> None:
        self.startup_expired = True

    def _notify(self) -> None:
        log.debug("resource manager: now %s", self.state)
        for listener in self._listeners:
            listener(self.state)

    def _on_exception(self, event: object) -> None:
        error = getattr(event, "error", None)
        log.error("resource manager: %s", error)
        if error is not None:
            raise error

"""The resource manager: a state machine over the cluster's life cycle that owns the exploration table.

States (``transitions`` machine, no I/O in any callback):

    waiting      fewer nodes registered than configured, start-up timeout not reached
    profiling    a registered node has not been profiled yet
    ready        every registered node is profiled; no request running
    planning     a plan is being made for a new request
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
from ..planner import ExplorationTable, Measurement, Plan, PlanRequest, make_plan

log = logging.getLogger(__name__)

STATES = ["waiting", "profiling", "ready", "planning", "dispatching"]


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
        self.running: set[str] = set()  # ids of requests being dispatched
        self.startup_expired = False  # once true, missing nodes no longer hold the cluster in "waiting"
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

    def node_joined(self, node: str, cached: dict[str, Measurement] | None = None) -> bool:
        """Register a node; returns True when it still needs profiling."""
        self.registered.add(node)
        self.profiled.discard(node)
        self.table.forget(node)
        if cached is not None:
            self._record(node, cached)
        self.settle()
        return cached is None

    def node_profiled(self, node: str, measurements: dict[str, Measurement]) -> None:
        if node in self.registered:
            self._record(node, measurements)
        self.settle()

    def node_left(self, node: str) -> None:
        self.registered.discard(node)
        self.profiled.discard(node)
        self.table.forget(node)
        self.settle()

    def expire_startup(self) -> None:
        self.startup_expired = True
        self.settle()

    def usable_nodes(self) -> list[str]:
        return sorted(self.profiled & self.registered)

    def accepts_requests(self) -> bool:
        return self.state in ("ready", "dispatching")

    # --- requests ---------------------------------------------------------------------------
    def plan_request(self, request_id: str, request: PlanRequest, policy: str) -> Plan:
        """Plan a request on the usable nodes and count it as running until ``finish_request``."""
        try:
            self.begin_planning()
        except MachineError:
            raise NotReady(f"no profiled node is available (cluster is {self.state})") from None
        if not self.can_plan():
            self.settle()
            raise NotReady(f"no profiled node is available (cluster is {self.state})")
        try:
            plan = make_plan(policy, self.table, request, self.usable_nodes())
            self.running.add(request_id)
        finally:
            self.settle()
        return plan

    def finish_request(self, request_id: str) -> None:
        self.running.discard(request_id)
        self.settle()

    # --- internals --------------------------------------------------------------------------
    def _record(self, node: str, measurements: dict[str, Measurement]) -> None:
        for variant, measurement in measurements.items():
            if variant in self.table.accuracy:
                self.table.record(node, variant, measurement)
        self.profiled.add(node)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self.state)

    def _on_exception(self, event: object) -> None:
        error = getattr(event, "error", None)
        log.error("resource manager: %s", error)
        if error is not None:
            raise error

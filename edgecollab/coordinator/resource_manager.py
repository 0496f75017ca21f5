"""The resource manager: the cluster's life cycle as a ``transitions`` state machine whose state gates
what the dispatch core may do. No I/O in any callback.

    profiling    the cluster is forming: a configured node has not registered or been profiled,
                 and the start-up timeout has not passed. Requests and streams wait.
    serving      every configured node serves; the joint plan is current. Work is admitted.
    replanning   a joint plan is being solved off the loop. Work is admitted (it waits for that
                 solve or the next); no second solve goes out.
    degraded     formed, but a configured node is missing, profiling again or suspect. Work is
                 admitted onto the nodes that serve; with none left, running work fails.
    draining     shutting down: nothing new is admitted and no new plan is made; running work
                 finishes on the plan it has.

The facts (which nodes serve) live in ``NodeHealth``; each fact that changes calls ``settle``,
whose guarded transitions pick the state those facts imply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from transitions import Machine

from .nodes import NodeHealth

log = logging.getLogger(__name__)

STATES = ["profiling", "serving", "replanning", "degraded", "draining"]


class ResourceManager:
    # Set on the instance by the ``transitions`` machine.
    state: str
    settle: Callable[[], bool]
    begin_replan: Callable[[], bool]
    plan_settled: Callable[[], bool]
    drain: Callable[[], bool]

    def __init__(self, expected_nodes: Iterable[str], nodes: NodeHealth) -> None:
        self.expected = set(expected_nodes)  # node names from the config
        self.nodes = nodes
        # True after the start-up timeout or once every configured node first served: from then on a
        # missing node no longer holds work back
        self.formed = False
        self.machine = Machine(
            model=self,
            states=STATES,
            initial="profiling",
            auto_transitions=False,
            queued=True,
            after_state_change="_log_state",
            on_exception="_on_exception",
        )
        add = self.machine.add_transition
        add("settle", ["profiling", "serving", "degraded"], "serving", conditions=["is_formed", "is_complete"])
        add("settle", ["profiling", "serving", "degraded"], "degraded", conditions="is_formed")
        add("settle", ["profiling", "replanning", "draining"], None)  # replanning and draining end otherwise
        add("begin_replan", ["serving", "degraded"], "replanning", conditions="has_usable")
        add("plan_settled", "replanning", "serving", conditions="is_complete")
        add("plan_settled", "replanning", "degraded")
        add("plan_settled", ["draining", "serving", "degraded"], None)  # a solve answered after draining began
        add("drain", "*", "draining")

    # --- conditions --------------------------------------------------------------------------
    def is_formed(self) -> bool:
        if not self.formed and self.expected <= set(self.nodes.usable()):
            self.formed = True
        return self.formed

    def is_complete(self) -> bool:
        return self.expected <= set(self.nodes.usable())

    def has_usable(self) -> bool:
        return bool(self.nodes.usable())

    # --- what the state allows ---------------------------------------------------------------
    def accepts_work(self) -> bool:
        """New requests and streams start now (else they wait for the cluster)."""
        return self.state in ("serving", "replanning", "degraded") and self.has_usable()

    def may_solve(self) -> bool:
        """A new joint plan may be solved now."""
        return self.state in ("serving", "degraded") and self.has_usable()

    def stranded(self) -> bool:
        """Formed, and no node serves: running work cannot finish."""
        return self.formed and not self.has_usable()

    # --- facts in ----------------------------------------------------------------------------
    def expire_startup(self) -> None:
        self.formed = True
        self.settle()

    def missing(self) -> list[str]:
        """Configured nodes that do not serve now."""
        return sorted(self.expected - set(self.nodes.usable()))

    # --- internals ---------------------------------------------------------------------------
    def _log_state(self) -> None:
        log.debug("resource manager: now %s", self.state)

    def _on_exception(self, event: object) -> None:
        error = getattr(event, "error", None)
        log.error("resource manager: %s", error)
        if error is not None:
            raise error

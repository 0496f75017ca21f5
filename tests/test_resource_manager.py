"""The resource manager's state machine follows the cluster's facts, and the table learns from
observations; no sockets involved."""

from __future__ import annotations

from collections import Counter

import pytest

from edgecollab.config import CoordinatorConfig
from edgecollab.coordinator import ResourceManager
from edgecollab.coordinator.nodes import NodeHealth
from edgecollab.planner import ExplorationTable, Measurement
from edgecollab.planner.table import shard_cost_s

PROFILE = {"small": Measurement(1000.0, 32.0), "large": Measurement(250.0, 128.0)}


@pytest.fixture
def rm() -> ResourceManager:
    return ResourceManager(["a", "b"], NodeHealth(CoordinatorConfig(), Counter()))


def join(rm: ResourceManager, node: str) -> None:
    rm.nodes.register(node, tuple(PROFILE))
    rm.settle()
    rm.nodes.profiled(node)
    rm.settle()


def test_the_cluster_forms_serves_replans_degrades_and_drains(rm: ResourceManager) -> None:
    assert rm.state == "profiling" and not rm.accepts_work()
    rm.nodes.register("a", tuple(PROFILE))
    rm.settle()
    rm.nodes.profiled("a")
    rm.settle()
    assert rm.state == "profiling" and not rm.accepts_work()  # b is configured but has not registered
    join(rm, "b")
    assert rm.state == "serving" and rm.accepts_work() and rm.may_solve()
    rm.begin_replan()
    assert rm.state == "replanning" and rm.accepts_work() and not rm.may_solve()  # one solve at a time
    rm.nodes.remove("b")
    rm.settle()
    assert rm.state == "replanning"  # the solve out still ends the replanning
    rm.plan_settled()
    assert rm.state == "degraded" and rm.missing() == ["b"] and rm.accepts_work()
    join(rm, "b")
    assert rm.state == "serving" and not rm.missing()
    rm.drain()
    assert rm.state == "draining" and not rm.accepts_work() and not rm.may_solve()
    rm.plan_settled()  # a solve answered after draining began leaves it draining
    rm.settle()
    assert rm.state == "draining"


def test_startup_timeout_lets_the_ready_nodes_serve(rm: ResourceManager) -> None:
    join(rm, "a")
    assert rm.state == "profiling" and not rm.accepts_work()
    rm.expire_startup()
    assert rm.state == "degraded" and rm.accepts_work() and rm.nodes.usable() == ["a"]


def test_a_node_joining_after_start_up_does_not_hold_work_back(rm: ResourceManager) -> None:
    join(rm, "a")
    rm.expire_startup()
    rm.nodes.register("b", tuple(PROFILE))
    rm.settle()
    assert rm.state == "degraded" and rm.accepts_work() and rm.nodes.usable() == ["a"]  # b is not profiled yet
    rm.nodes.profiled("b")
    rm.settle()
    assert rm.state == "serving"


def test_with_every_node_lost_work_is_stranded_and_new_work_waits(rm: ResourceManager) -> None:
    join(rm, "a")
    join(rm, "b")
    for node in ("a", "b"):
        rm.nodes.remove(node)
        rm.settle()
    assert rm.state == "degraded" and rm.stranded() and not rm.accepts_work() and not rm.may_solve()


def test_drift_is_reported_once_observations_move_the_estimate_far_enough() -> None:
    table = ExplorationTable({"small": 0.85, "large": 0.92})
    table.record("a", "large", PROFILE["large"])
    assert not table.observe_shard("a", "large", 80.0)  # no plan relies on it: never a drift
    table.assume_current(["a"])
    assert not table.observe_shard("a", "large", 240.0)  # within the noise
    drifted = [table.observe_shard("a", "large", 80.0) for _ in range(5)]  # the node slowed to a third
    assert drifted[-1] and not drifted[0]
    assert table.ips("a", "large") < 150
    table.drop_assumptions()
    assert not table.observe_shard("a", "large", 10.0)


def test_a_link_bound_node_drifts_only_for_a_planner_that_does_not_know_its_link() -> None:
    """The node computes 'large' at 1,000 inf/s but its link carries only 250: shards arrive 128 ms apart."""
    observed = 32 / shard_cost_s(sent=0.0, previous_result=1.0, now=1.128, busy_s=0.032)
    assert observed == pytest.approx(250.0)
    for knows_link in (True, False):
        table = ExplorationTable({"large": 0.92})
        if knows_link:
            table.link_seconds["a"] = 1 / 250
        table.record("a", "large", Measurement(1000.0, 32.0))
        table.assume_current(["a"])
        drifted = [table.observe_shard("a", "large", observed) for _ in range(5)]
        assert any(drifted) != knows_link


def test_a_shard_costs_its_round_trip_after_idling_and_its_pace_while_queued() -> None:
    # Sent after the previous result (or the first one): nothing overlapped, the round trip is the cost.
    assert shard_cost_s(sent=2.0, previous_result=1.0, now=2.3, busy_s=0.1) == pytest.approx(0.3)
    assert shard_cost_s(sent=2.0, previous_result=None, now=2.3, busy_s=0.1) == pytest.approx(0.3)
    # Queued behind the previous shard: the time between the two results.
    assert shard_cost_s(sent=0.5, previous_result=2.0, now=2.1, busy_s=0.05) == pytest.approx(0.1)
    # Never cheaper than the compute the worker reported.
    assert shard_cost_s(sent=0.5, previous_result=2.0, now=2.01, busy_s=0.05) == pytest.approx(0.05)

"""The resource manager's state machine follows the cluster's facts, with no sockets involved."""

from __future__ import annotations

import pytest

from edgecollab.coordinator import NotReady, ResourceManager
from edgecollab.coordinator.resource_manager import shard_cost_s
from edgecollab.planner import ExplorationTable, Measurement

PROFILE = {"small": Measurement(1000.0, 32.0), "large": Measurement(250.0, 128.0)}


@pytest.fixture
def rm() -> ResourceManager:
    return ResourceManager(["a", "b"], ExplorationTable({"small": 0.85, "large": 0.92}))


def test_life_cycle_from_waiting_to_dispatching_and_back(rm: ResourceManager) -> None:
    seen: list[str] = []
    rm.on_state_change(seen.append)
    assert rm.state == "waiting"
    rm.node_joined("a")
    assert rm.state == "profiling"
    rm.node_profiled("a", PROFILE)
    assert rm.state == "waiting"  # b is configured but has not registered
    rm.node_joined("b")
    rm.node_profiled("b", PROFILE)
    assert rm.state == "ready"
    rm.planning_started()
    assert rm.state == "planning" and rm.accepts_requests()
    rm.request_started("r1")
    assert rm.state == "dispatching"
    rm.finish_request("r1")
    assert rm.state == "ready"
    assert seen == ["profiling", "waiting", "profiling", "ready", "planning", "dispatching", "ready"]


def join(rm: ResourceManager, node: str) -> None:
    rm.node_joined(node)
    rm.node_profiled(node, PROFILE)


def test_profiled_nodes_make_the_cluster_ready(rm: ResourceManager) -> None:
    join(rm, "a")
    join(rm, "b")
    assert rm.state == "ready" and rm.table.ips("b", "large") == 250.0


def test_request_before_any_profile_is_not_ready(rm: ResourceManager) -> None:
    rm.node_joined("a")
    with pytest.raises(NotReady, match="no profiled node"):
        rm.planning_started()
    assert rm.state == "profiling" and not rm.running


def test_startup_timeout_lets_the_ready_nodes_serve(rm: ResourceManager) -> None:
    join(rm, "a")
    assert rm.state == "waiting" and not rm.accepts_requests()
    rm.expire_startup()
    assert rm.state == "ready" and rm.accepts_requests() and rm.usable_nodes() == ["a"]


def test_a_node_leaving_drops_its_measurements(rm: ResourceManager) -> None:
    join(rm, "a")
    join(rm, "b")
    rm.node_left("b")
    assert rm.usable_nodes() == ["a"] and rm.table.get("b", "small") is None
    assert rm.state == "ready"  # after start-up, a missing node no longer holds requests back


def test_a_node_joining_while_requests_run_keeps_dispatching(rm: ResourceManager) -> None:
    join(rm, "a")
    rm.expire_startup()
    rm.request_started("r1")
    rm.node_joined("b")
    assert rm.state == "dispatching" and rm.usable_nodes() == ["a"]  # b is not profiled yet
    rm.finish_request("r1")
    assert rm.state == "profiling"


def test_drift_is_reported_once_observations_move_the_estimate_far_enough(rm: ResourceManager) -> None:
    join(rm, "a")
    rm.expire_startup()
    rm.request_started("r1")
    rm.plan_adopted()
    assert not rm.observe("a", "large", 240.0)  # within the noise
    drifted = [rm.observe("a", "large", 80.0) for _ in range(5)]  # the node slowed to a third
    assert drifted[-1] and not drifted[0]
    assert rm.table.ips("a", "large") < 150


def test_a_link_bound_node_drifts_only_for_a_planner_that_does_not_know_its_link() -> None:
    """The node computes 'large' at 1,000 inf/s but its link carries only 250: shards arrive 128 ms apart."""
    observed = 32 / shard_cost_s(sent=0.0, previous_result=1.0, now=1.128, busy_s=0.032)
    assert observed == pytest.approx(250.0)
    for knows_link in (True, False):
        rm = ResourceManager(["a"], ExplorationTable({"large": 0.92}))
        if knows_link:
            rm.table.link_seconds["a"] = 1 / 250
        rm.node_joined("a")
        rm.node_profiled("a", {"large": Measurement(1000.0, 32.0)})
        rm.request_started("r1")
        rm.plan_adopted()
        drifted = [rm.observe("a", "large", observed) for _ in range(5)]
        assert any(drifted) != knows_link


def test_a_shard_costs_its_round_trip_after_idling_and_its_pace_while_queued() -> None:
    # Sent after the previous result (or the first one): nothing overlapped, the round trip is the cost.
    assert shard_cost_s(sent=2.0, previous_result=1.0, now=2.3, busy_s=0.1) == pytest.approx(0.3)
    assert shard_cost_s(sent=2.0, previous_result=None, now=2.3, busy_s=0.1) == pytest.approx(0.3)
    # Queued behind the previous shard: the time between the two results.
    assert shard_cost_s(sent=0.5, previous_result=2.0, now=2.1, busy_s=0.05) == pytest.approx(0.1)
    # Never cheaper than the compute the worker reported.
    assert shard_cost_s(sent=0.5, previous_result=2.0, now=2.01, busy_s=0.05) == pytest.approx(0.05)

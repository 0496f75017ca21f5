"""The equal and proportional policies produce the shares they promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecollab.planner import (
    ExplorationTable,
    Measurement,
    PlanningError,
    PlanRequest,
    ProfileCache,
    make_plan,
    split_by_weight,
)

ACCURACY = {"small": 0.85, "large": 0.92}
IPS = {("fast", "small"): 4000.0, ("fast", "large"): 1000.0, ("slow", "small"): 1000.0, ("slow", "large"): 250.0}


def table(ips: dict[tuple[str, str], float] = IPS) -> ExplorationTable:
    t = ExplorationTable(ACCURACY)
    for (node, variant), value in ips.items():
        t.record(node, variant, Measurement(ips=value, latency_ms=32_000 / value))
    return t


@pytest.mark.parametrize("total", [1, 7, 100, 1001])
@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [3.0, 1.0], [0.2, 0.5, 0.3, 9.0]])
def test_split_by_weight_sums_and_stays_within_one_of_exact(total: int, weights: list[float]) -> None:
    shares = split_by_weight(total, weights)
    assert sum(shares) == total
    for share, w in zip(shares, weights, strict=True):
        assert abs(share - total * w / sum(weights)) < 1


def test_split_by_weight_refuses_all_zero_weights() -> None:
    with pytest.raises(PlanningError, match="zero weight"):
        split_by_weight(10, [0.0, 0.0])


def test_equal_gives_every_node_the_same_share_on_the_most_accurate_variant() -> None:
    plan = make_plan("equal", table(), PlanRequest(inputs=1001), ["fast", "slow"])
    assert (plan.share_of("fast"), plan.share_of("slow")) == (501, 500)  # ties go to the earlier node
    assert {a.variant for a in plan.assignments} == {"large"}
    # The slow node (250/s) takes 2 s for its 500 inputs: the cluster gets 1001 / 2 inputs/s.
    assert plan.expected_ips == pytest.approx(1001 / 2, rel=1e-9)
    assert plan.expected_accuracy == pytest.approx(0.92)


def test_proportional_shares_follow_measured_throughput() -> None:
    plan = make_plan("proportional", table(), PlanRequest(inputs=1000), ["fast", "slow"])
    assert plan.share_of("fast") == 800 and plan.share_of("slow") == 200
    # Both nodes finish together, so the cluster runs at the sum of their rates.
    assert plan.expected_ips == pytest.approx(1250.0)


def test_target_feasibility_is_reported() -> None:
    assert make_plan("proportional", table(), PlanRequest(1000, target_ips=1200), ["fast", "slow"]).feasible
    assert not make_plan("proportional", table(), PlanRequest(1000, target_ips=5000), ["fast", "slow"]).feasible


def test_nodes_without_measurements_are_left_out() -> None:
    plan = make_plan("proportional", table(), PlanRequest(100), ["fast", "slow", "unprofiled"])
    assert {a.node for a in plan.assignments} == {"fast", "slow"}


def test_policy_errors_are_clear() -> None:
    with pytest.raises(
        PlanningError, match=r"unknown policy 'fastest'; expected one of adaptive, mixed, uniform, proportional, equal"
    ):
        make_plan("fastest", table(), PlanRequest(10), ["fast"])
    with pytest.raises(PlanningError, match="no profiled node"):
        make_plan("equal", table(), PlanRequest(10), ["unprofiled"])
    disjoint = table({("fast", "small"): 10.0, ("slow", "large"): 10.0})
    with pytest.raises(PlanningError, match="no variant is profiled on every node"):
        make_plan("equal", disjoint, PlanRequest(10), ["fast", "slow"])


def test_profile_cache_returns_only_matching_well_formed_entries(tmp_path: Path) -> None:
    cache = ProfileCache(tmp_path / "exploration.json")
    measured = Measurement(10.0, 3.0, ((1, 0.5), (16, 2.0)))
    cache.store("a", "fingerprint-1", {"v": measured})
    assert cache.load("a", "fingerprint-1") == {"v": measured}
    assert cache.load("a", "fingerprint-2") is None  # hardware, settings or models changed
    assert cache.load_any("a") == {"v": measured}
    cache.store("old", "f", {"v": Measurement(10.0, 3.0)})
    assert cache.load("old", "f") is None  # written before batch latencies were profiled: profile again
    (tmp_path / "exploration.json").write_text(
        json.dumps({"a": {"fingerprint": "f", "variants": {"v": {"ips": 1}}}, "b": {"fingerprint": "f", "variants": 3}})
    )
    assert cache.load("a", "f") is None and cache.load_any("b") is None and cache.load_any("c") is None

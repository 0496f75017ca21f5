"""The joint plan: targets met, capacity kept, tight demands protected, within 0.1 point of the LP bound."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgecollab.planner import ExplorationTable, Measurement, PlanRequest, make_plan
from edgecollab.planner.joint import (
    BEST_EFFORT_FLOOR,
    MAX_LOSS_TO_BOUND,
    Demand,
    JointPlan,
    group_alike,
    plan_jointly,
)
from edgecollab.worker.emulation import BOARD_PROFILES
from edgecollab.zoo import load_manifest

from .conftest import SHIPPED_MANIFEST


def random_table(seed: int) -> tuple[ExplorationTable, list[str]]:
    rng = np.random.default_rng(seed)
    n_nodes, n_variants = int(rng.integers(2, 5)), int(rng.integers(2, 6))
    accuracy = np.sort(rng.uniform(0.78, 0.93, n_variants))
    cost = np.sort(rng.uniform(0.2, 8.0, n_variants))  # more accurate variants cost more
    table = ExplorationTable({f"v{v}": float(accuracy[v]) for v in range(n_variants)})
    nodes = [f"n{n}" for n in range(n_nodes)]
    for node in nodes:
        speed = rng.uniform(0.3, 4.0)
        for v in range(n_variants):
            if v == 0 or rng.random() < 0.8:
                table.record(node, f"v{v}", Measurement(1000 * speed / cost[v], 10.0))
    return table, nodes


def capacity(table: ExplorationTable, nodes: list[str]) -> float:
    """The fastest the cluster can go: every node on its fastest variant."""
    return sum(max(table.ips(n, v) for v in table.variants_of(n)) for n in nodes)


def promisable(table: ExplorationTable, nodes: list[str]) -> float:
    """The most a plan can promise: every node's fastest lower bound, times the efficiency less the margin."""
    return capacity(table.lower_bounds(), nodes) * kept(table)


def kept(table: ExplorationTable) -> float:
    """Of a demand's planned rate, what it promises (one task: the table's default realisation)."""
    realisation = table.realisation(None)
    return realisation.efficiency * (1 - realisation.margin(table.z))


def check_consistent(plan: JointPlan, table: ExplorationTable) -> None:
    for node, load in plan.node_load.items():
        assert load <= 1 + 1e-6, f"{node} is planned for {load:.3f} of its time"
    for d in plan.demands.values():
        assert all(s.ips > 0 for s in d.shares)
        total = sum(s.ips for s in d.shares)
        assert d.expected_ips == pytest.approx(total * kept(table))


@pytest.mark.parametrize("seed", range(12))
def test_targets_are_met_and_a_loose_demand_never_costs_a_tight_one_accuracy(seed: int) -> None:
    table, nodes = random_table(seed)
    top = promisable(table, nodes)
    # The loose demand is small: even on its cheapest variant it needs a sliver of the cluster.
    tight, loose = Demand("tight", 0.8 * top), Demand("loose", 0.002 * top)
    alone = plan_jointly(table, [tight], nodes).demands["tight"]
    together = plan_jointly(table, [tight, loose], nodes)
    check_consistent(together, table)
    for d in (tight, loose):
        assert together.demands[d.key].feasible
        assert together.demands[d.key].expected_ips >= (d.target_ips or 0) - 1e-6
    assert together.demands["tight"].expected_accuracy >= alone.expected_accuracy - 1e-3


def emulated_testbed() -> tuple[ExplorationTable, list[str]]:
    """The default cluster's table as its cost models predict it at the 32-input shard size."""
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    variants = manifest.for_task("fashion-mnist")
    table = ExplorationTable({v.name: v.accuracy for v in variants})
    boards = {"odroid-xu4-a": "odroid-xu4", "odroid-xu4-b": "odroid-xu4", "rpi4": "rpi4", "jetson-nano": "jetson-nano"}
    for node, board in boards.items():
        for v in variants:
            seconds = BOARD_PROFILES[board].seconds(32, v.macs, v.quantized)
            table.record(node, v.name, Measurement(32 / seconds, seconds * 1e3))
    return table, list(boards)


@pytest.mark.parametrize(("tight_ips", "loose_ips"), [(7000.0, 150.0), (6000.0, 250.0), (4000.0, 400.0)])
def test_on_the_paper_testbed_a_small_request_costs_a_tight_one_under_a_tenth_of_a_point(
    tight_ips: float, loose_ips: float
) -> None:
    table, nodes = emulated_testbed()
    alone = plan_jointly(table, [Demand("tight", tight_ips)], nodes).demands["tight"]
    together = plan_jointly(table, [Demand("tight", tight_ips), Demand("loose", loose_ips)], nodes)
    assert together.demands["tight"].feasible and together.demands["loose"].feasible
    assert together.demands["tight"].expected_accuracy >= alone.expected_accuracy - 1e-3
    check_consistent(together, table)


@pytest.mark.parametrize("seed", range(8))
def test_one_demand_gets_at_least_what_the_per_request_optimiser_gives(seed: int) -> None:
    table, nodes = random_table(seed)
    target = 0.5 * promisable(table, nodes)
    joint = plan_jointly(table, [Demand("r", target)], nodes).demands["r"]
    alone = make_plan("adaptive", table, PlanRequest(100_000, target), nodes)
    assert joint.feasible and alone.feasible
    # At least as accurate (it time-shares variants where one per node would lose > 0.1 point).
    assert joint.expected_accuracy >= alone.expected_accuracy - MAX_LOSS_TO_BOUND


@pytest.mark.parametrize("seed", range(8))
def test_a_one_variant_plan_is_within_a_tenth_of_a_point_of_the_lp_bound(seed: int) -> None:
    table, nodes = random_table(seed)
    top = promisable(table, nodes)
    rates = np.random.default_rng(seed).dirichlet(np.ones(5)) * 0.7 * top
    one = [Demand(f"r{i}", float(r)) for i, r in enumerate(rates)]
    mixed = [Demand(d.key, d.target_ips, one_variant=False) for d in one]
    exact, bound = plan_jointly(table, one, nodes), plan_jointly(table, mixed, nodes)

    def overall(plan: JointPlan) -> float:
        rate = sum(d.expected_ips for d in plan.demands.values())
        return sum(d.expected_ips * d.expected_accuracy for d in plan.demands.values()) / rate

    assert exact.loss_to_bound <= MAX_LOSS_TO_BOUND
    assert overall(exact) >= overall(bound) - MAX_LOSS_TO_BOUND - 1e-6
    check_consistent(exact, table)


def test_targets_that_cannot_all_be_met_are_scaled_alike_and_say_so() -> None:
    table, nodes = random_table(3)
    top = promisable(table, nodes)
    plan = plan_jointly(table, [Demand("a", 0.9 * top), Demand("b", 0.6 * top)], nodes)
    assert 0 < plan.scale < 1
    a, b = plan.demands["a"], plan.demands["b"]
    assert not a.feasible and not b.feasible and "infeasible" in a.notes[0]
    assert a.expected_ips / b.expected_ips == pytest.approx(0.9 / 0.6, rel=1e-3)


def test_minimum_accuracy_holds_and_an_unreachable_one_is_noted() -> None:
    table, nodes = random_table(5)
    best = max(table.accuracy.values())
    mid = float(np.median(list(table.accuracy.values())))
    plan = plan_jointly(table, [Demand("a", 100.0, mid), Demand("b", 100.0, best + 0.01)], nodes)
    assert plan.demands["a"].expected_accuracy >= mid - 1e-9 and plan.demands["a"].feasible
    assert not plan.demands["b"].feasible and "unreachable" in plan.demands["b"].notes[0]


def test_best_effort_runs_behind_targets_at_the_best_accuracy() -> None:
    table, nodes = random_table(7)
    top = promisable(table, nodes)
    best = max(table.accuracy.values())
    plan = plan_jointly(table, [Demand("t", 0.2 * top), Demand("e1"), Demand("e2")], nodes)
    for key in ("e1", "e2"):
        d = plan.demands[key]
        assert d.expected_accuracy == pytest.approx(best) and d.expected_ips > 0
    assert plan.demands["e1"].expected_ips == pytest.approx(plan.demands["e2"].expected_ips, rel=1e-3)
    assert plan.demands["t"].feasible
    # Even a saturated cluster leaves best effort its floor of every node's time.
    full = plan_jointly(table, [Demand("t", 0.99 * top), Demand("e")], nodes)
    assert sum(full.demands["e"].node_time(table).values()) >= BEST_EFFORT_FLOOR * 0.99


def test_a_plan_of_rates_cuts_any_number_of_inputs() -> None:
    table, nodes = random_table(1)
    demand = plan_jointly(table, [Demand("r", 500.0)], nodes).demands["r"]
    for inputs in (1, 7, 1000, 123_457):
        plan = demand.for_inputs("adaptive", inputs)
        assert sum(a.inputs for a in plan.assignments) == inputs
        assert plan.expected_accuracy == demand.expected_accuracy


def two_task_table() -> tuple[ExplorationTable, list[str], frozenset[str], frozenset[str]]:
    """Two boards serving a classifier ladder and a detector ladder (accuracies in their own measures)."""
    classify = {"c-small": 0.88, "c-large": 0.92}
    detect = {"d-small": 0.55, "d-large": 0.82}  # a detector's mAP: lower than any classifier's accuracy
    table = ExplorationTable({**classify, **detect})
    for node, speed in (("fast", 3.0), ("slow", 1.0)):
        for variant, ips in (("c-small", 4000), ("c-large", 1000), ("d-small", 3000), ("d-large", 600)):
            table.record(node, variant, Measurement(ips * speed, 10.0))
    return table, ["fast", "slow"], frozenset(classify), frozenset(detect)


def test_each_task_is_served_only_by_its_own_variants() -> None:
    table, nodes, classify, detect = two_task_table()
    plan = plan_jointly(
        table, [Demand("c", 2000, variants=classify), Demand("d", None, variants=detect)], nodes
    )  # the detector's best effort
    check_consistent(plan, table)
    assert {s.variant for s in plan.demands["c"].shares} <= classify
    assert {s.variant for s in plan.demands["d"].shares} <= detect
    # A detection demand's accuracy is its own task's: the classifier's 0.92 does not make it infeasible.
    assert plan.demands["d"].feasible and plan.demands["d"].expected_accuracy == pytest.approx(0.82)


def test_capacity_moves_to_the_task_whose_load_grows() -> None:
    """The joint plan gives the boards to whichever application needs them: as detection's target grows,
    classification keeps its target on cheaper variants (less of the boards), and the reverse."""
    table, nodes, classify, detect = two_task_table()
    accuracy, detection_time = [], []
    for target in (300.0, 1500.0, 3000.0, 4500.0):
        demands = [Demand("c", 3000, variants=classify), Demand("d", target, variants=detect)]
        plan = plan_jointly(table, demands, nodes)
        check_consistent(plan, table)
        assert all(d.feasible for d in plan.demands.values())
        assert plan.demands["c"].expected_ips >= 3000 - 1e-6
        assert plan.demands["d"].expected_ips >= target - 1e-6
        accuracy.append(plan.demands["c"].expected_accuracy)
        if target == 300.0:
            first_detection_accuracy = plan.demands["d"].expected_accuracy
        detection_time.append(
            plan.demands["d"].node_time(table).get("fast", 0.0)
            + plan.demands["d"].node_time(table).get("slow", 0.0) / 3
        )
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(accuracy)) and accuracy[-1] < accuracy[0] - 0.01
    # Detection's share, in fast-board seconds per second, grows with its load (until the boards are full).
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(detection_time))
    assert detection_time[-1] > 3 * detection_time[0]
    # Across tasks the plan weighs each task's own quality: a light detection load is served at its
    # best variant even though classification has many more inputs per second.
    assert first_detection_accuracy == pytest.approx(0.82)


def test_past_sixteen_nodes_boards_alike_are_planned_as_one_and_their_shares_spread_by_speed() -> None:
    table = ExplorationTable({"small": 0.85, "large": 0.92})
    fast = [f"fast-{k}" for k in range(24)]
    slow = [f"slow-{k}" for k in range(24)]
    for k, node in enumerate(fast):
        table.record(node, "small", Measurement(4000 * (1 + 0.002 * k), 5.0))  # a few per cent apart
        table.record(node, "large", Measurement(1000 * (1 + 0.002 * k), 8.0))
    for node in slow:
        table.record(node, "small", Measurement(500, 20.0))
        table.record(node, "large", Measurement(100, 50.0))
    assert sorted(map(len, group_alike(table, fast + slow))) == [24, 24]
    target = 40_000.0
    plan = plan_jointly(table, [Demand("job", target)], fast + slow)
    job = plan.demands["job"]
    assert job.feasible and job.expected_ips >= target
    check_consistent(plan, table)
    by_node = {s.node: s.ips for s in job.shares}
    assert set(by_node) >= set(fast)  # every fast board takes part
    # A group's share is spread by each board's own speed: the same fraction of every fast board's time.
    for variant in {s.variant for s in job.shares if s.node in fast}:
        fractions = [
            s.ips / table.ips(s.node, s.variant) for s in job.shares if s.node in fast and s.variant == variant
        ]
        assert len(fractions) == len(fast) and max(fractions) == pytest.approx(min(fractions), rel=1e-6)
    assert all(load <= 1 + 1e-6 for load in plan.node_load.values())


def test_a_search_stopped_at_the_time_bound_gives_its_best_plan_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgecollab.planner.joint as joint

    monkeypatch.setattr(joint, "PLAN_TIME_BOUND_S", 0.0)  # the one-variant search gets MIN_SEARCH_S only
    monkeypatch.setattr(joint, "MIN_SEARCH_S", 1e-4)
    table = ExplorationTable({f"v{k}": 0.80 + 0.01 * k for k in range(12)})
    nodes = [f"n{n}" for n in range(6)]
    for n, node in enumerate(nodes):
        for k in range(12):
            table.record(node, f"v{k}", Measurement(1000 * (1 + 0.3 * n) / (1 + k), 10.0))
    top = promisable(table, nodes)
    demands = [Demand(f"d{k}", top / 40) for k in range(24)]
    plan = plan_jointly(table, demands, nodes)
    assert plan.timed_out  # 24 demands × 72 options do not solve in 0.1 ms
    assert plan.loss_to_bound <= MAX_LOSS_TO_BOUND  # the incumbent if that close to the LP bound, else the LP plan
    check_consistent(plan, table)
    for d in demands:  # every target is still met
        assert plan.demands[d.key].feasible and plan.demands[d.key].expected_ips >= d.target_ips * (1 - 1e-6)

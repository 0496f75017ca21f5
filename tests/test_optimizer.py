"""The exact optimiser equals an exhaustive search on small clusters and respects every budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgecollab.planner import ExplorationTable, Measurement, PlanRequest, make_plan
from edgecollab.planner.confidence import lower_bound
from edgecollab.planner.optimizer import Option, maximise_accuracy, minimise_makespan
from edgecollab.planner.table import PRIOR_ROW_SPREAD


def promised_share(table: ExplorationTable) -> float:
    """Of a mean rate, what a confident plan promises: rows at their lower bound (every row has the
    prior spread here), less the task's margin, times its efficiency."""
    realisation = table.realisation(None)
    row = lower_bound(1.0, PRIOR_ROW_SPREAD, table.z)
    return row * realisation.efficiency * (1 - realisation.margin(table.z))


def random_options(seed: int) -> list[Option]:
    rng = np.random.default_rng(seed)
    n_nodes, n_variants = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    accuracy = np.sort(rng.uniform(0.80, 0.93, n_variants))
    cost = np.sort(rng.uniform(0.2, 5.0, n_variants))  # more accurate variants cost more
    options = []
    for n in range(n_nodes):
        speed = rng.uniform(0.3, 4.0)
        for v in range(n_variants):
            if v == 0 or rng.random() < 0.8:  # not every node has every variant
                options.append(Option(f"n{n}", f"v{v}", cost[v] / speed / 1000, float(accuracy[v])))
    return options


def by_node(options: list[Option]) -> dict[str, list[Option]]:
    nodes: dict[str, list[Option]] = {}
    for o in options:
        nodes.setdefault(o.node, []).append(o)
    return nodes


def best_split(chosen: list[Option], total: int, deadline: float) -> float | None:
    """Greatest total accuracy when each node runs its chosen option within the deadline (greedy is exact)."""
    left, score = float(total), 0.0
    for o in sorted(chosen, key=lambda o: -o.accuracy):
        take = min(left, deadline / o.seconds_per_input)
        score += take * o.accuracy
        left -= take
    return score / total if left <= 1e-9 else None


def oracle_accuracy(options: list[Option], total: int, deadline: float, min_accuracy: float | None) -> float | None:
    """Exhaustive: every node picks one of its variants or sits out."""
    best = None
    for combo in itertools.product(*[[None, *opts] for opts in by_node(options).values()]):
        score = best_split([o for o in combo if o is not None], total, deadline)
        if score is not None and (min_accuracy is None or score >= min_accuracy - 1e-9):
            best = score if best is None else max(best, score)
    return best


def oracle_makespan(options: list[Option], total: int, min_accuracy: float) -> float | None:
    best = None
    for combo in itertools.product(*[[None, *opts] for opts in by_node(options).values()]):
        chosen = [o for o in combo if o is not None]
        if not chosen or max(o.accuracy for o in chosen) < min_accuracy - 1e-12:
            continue
        lo, hi = 0.0, total * max(o.seconds_per_input for o in chosen)
        for _ in range(100):  # feasibility is monotone in the makespan
            mid = (lo + hi) / 2
            score = best_split(chosen, total, mid)
            lo, hi = (lo, mid) if score is not None and score >= min_accuracy - 1e-12 else (mid, hi)
        best = hi if best is None else min(best, hi)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_accuracy_objective_equals_the_exhaustive_oracle(seed: int) -> None:
    options = random_options(seed)
    total = 1000
    fastest = oracle_makespan(options, total, 0.0)
    assert fastest is not None
    for slack in (0.9, 1.2, 2.0, 5.0):  # from infeasible to easy
        deadline = fastest * slack
        expected = oracle_accuracy(options, total, deadline, None)
        got = maximise_accuracy(options, total, deadline, None, mixed=False)
        if expected is None:
            assert got is None
            continue
        assert got is not None
        # Optimal up to the solver gap and the makespan tie-break (< 0.002 points), never better (no budget violated).
        assert expected - 2e-5 <= got.accuracy <= expected + 1e-9
        assert sum(got.inputs) == pytest.approx(total)
        assert got.makespan_s <= deadline * (1 + 1e-6)
        # At most one variant per node.
        used = [o.node for o, s in zip(options, got.inputs, strict=True) if s > 1e-6]
        assert len(used) == len(set(used))
        mixed = maximise_accuracy(options, total, deadline, None, mixed=True)
        assert mixed is not None and mixed.accuracy >= got.accuracy - 1e-7  # time-sharing can only help


@pytest.mark.parametrize("seed", range(20))
def test_performance_objective_equals_the_exhaustive_oracle(seed: int) -> None:
    options = random_options(seed)
    accuracies = sorted({o.accuracy for o in options})
    for wanted in (accuracies[0], float(np.mean(accuracies)), accuracies[-1]):
        expected = oracle_makespan(options, 500, wanted)
        got = minimise_makespan(options, 500, wanted, mixed=False)
        assert expected is not None and got is not None
        assert got.makespan_s == pytest.approx(expected, rel=1e-5)
        assert got.accuracy >= wanted - 1e-7
    assert minimise_makespan(options, 500, accuracies[-1] + 0.01, mixed=False) is None


def table_from(options: list[Option]) -> ExplorationTable:
    table = ExplorationTable({o.variant: o.accuracy for o in options})
    for o in options:
        table.record(o.node, o.variant, Measurement(1 / o.seconds_per_input, o.seconds_per_input * 32e3))
    return table


@pytest.mark.parametrize("policy", ["adaptive", "mixed"])
@pytest.mark.parametrize("seed", range(15))
def test_plans_give_out_exactly_the_requested_inputs_within_each_node_budget(policy: str, seed: int) -> None:
    options = random_options(seed)
    table = table_from(options)
    nodes = sorted({o.node for o in options})
    fastest = oracle_makespan(options, 777, 0.0)
    assert fastest is not None
    for target in (0.5 * 777 / fastest, 0.95 * 777 / fastest, 3 * 777 / fastest):
        plan = make_plan(policy, table, PlanRequest(777, target_ips=target), nodes)
        assert sum(a.inputs for a in plan.assignments) == 777
        assert all(a.inputs > 0 for a in plan.assignments)
        if policy == "adaptive":
            assert len({a.node for a in plan.assignments}) == len(plan.assignments)
        if plan.feasible:
            assert plan.expected_ips >= target
        else:
            assert "infeasible" in plan.notes[0]
            assert target > 0.95 * 777 / fastest * promised_share(table)


def test_adaptive_beats_the_baselines_where_approximation_is_needed() -> None:
    table = ExplorationTable({"small": 0.85, "mid": 0.90, "large": 0.92})
    for (node, variant), ips in {
        ("fast", "small"): 4000.0, ("fast", "mid"): 2000.0, ("fast", "large"): 1000.0,
        ("slow", "small"): 1000.0, ("slow", "mid"): 500.0, ("slow", "large"): 250.0,
    }.items():  # fmt: skip
        table.record(node, variant, Measurement(ips, 32e3 / ips))
    request = PlanRequest(1000, target_ips=1500)
    plans = {
        p: make_plan(p, table, request, ["fast", "slow"]) for p in ("adaptive", "mixed", "uniform", "proportional")
    }
    assert not plans["proportional"].feasible  # the accurate variant everywhere is too slow
    assert plans["uniform"].feasible and plans["uniform"].expected_accuracy == pytest.approx(0.90)
    assert plans["adaptive"].feasible and plans["adaptive"].expected_accuracy > 0.90
    assert plans["mixed"].expected_accuracy >= plans["adaptive"].expected_accuracy
    # Per node: the fast node gives up a little accuracy so the slow one can keep the best variant.
    assert {(a.node, a.variant) for a in plans["adaptive"].assignments} == {("fast", "mid"), ("slow", "large")}


def test_minimum_accuracy_without_target_maximises_throughput() -> None:
    table = ExplorationTable({"small": 0.85, "large": 0.92})
    for (node, variant), ips in {
        ("a", "small"): 3000.0,
        ("a", "large"): 1000.0,
        ("b", "small"): 3000.0,
        ("b", "large"): 1000.0,
    }.items():
        table.record(node, variant, Measurement(ips, 1.0))
    plan = make_plan("adaptive", table, PlanRequest(1000, min_accuracy=0.85), ["a", "b"])
    assert plan.expected_ips == pytest.approx(6000 * promised_share(table), rel=1e-3) and plan.feasible
    unreachable = make_plan("adaptive", table, PlanRequest(1000, min_accuracy=0.99), ["a", "b"])
    assert not unreachable.feasible and "unreachable" in unreachable.notes[0]
    assert unreachable.expected_accuracy == pytest.approx(0.92)


def test_a_slow_link_keeps_inputs_away_from_a_node_that_cannot_receive_them() -> None:
    table = ExplorationTable({"v": 0.9})
    table.record("wired", "v", Measurement(1000.0, 32.0))
    table.record("wifi", "v", Measurement(1000.0, 32.0))
    table.link_seconds["wifi"] = 1 / 100  # the link carries only 100 inputs/s
    plan = make_plan("adaptive", table, PlanRequest(1100, target_ips=800), ["wired", "wifi"])
    shares = {a.node: a.inputs for a in plan.assignments}
    assert shares["wifi"] <= 100 * 1100 / 800 and plan.feasible  # what the link carries in the time it has
    naive = make_plan("proportional", table, PlanRequest(1100), ["wired", "wifi"])
    assert naive.share_of("wifi") < 110  # proportional uses the same per-input cost

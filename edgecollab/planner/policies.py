"""Plans and the policies that make them. Pure functions of the exploration table and the request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import EdgecollabError
from .optimizer import Option, maximise_accuracy, minimise_makespan
from .table import ExplorationTable


@dataclass(frozen=True)
class PlanRequest:
    inputs: int
    target_ips: float | None = None
    min_accuracy: float | None = None


@dataclass(frozen=True)
class Assignment:
    node: str
    variant: str
    inputs: int


@dataclass(frozen=True)
class Plan:
    policy: str
    assignments: tuple[Assignment, ...]
    expected_ips: float  # inputs / makespan, from the table
    expected_accuracy: float  # input-weighted mean of the variants' accuracies
    feasible: bool = True  # False when the target cannot be met
    notes: tuple[str, ...] = field(default=())

    def share_of(self, node: str) -> int:
        return sum(a.inputs for a in self.assignments if a.node == node)

    def as_dict(self) -> dict[str, Any]:
        """The plan as ``edgecollab plan --json`` prints it."""
        return {
            "policy": self.policy,
            "feasible": self.feasible,
            "expected_ips": self.expected_ips,
            "expected_accuracy": self.expected_accuracy,
            "assignment": [{"node": a.node, "variant": a.variant, "inputs": a.inputs} for a in self.assignments],
            "notes": list(self.notes),
        }


class PlanningError(EdgecollabError):
    """No plan can be made (no nodes, no measured variants, unknown policy)."""


def evaluate(
    policy: str,
    table: ExplorationTable,
    assignments: Sequence[Assignment],
    request: PlanRequest,
    notes: Sequence[str] = (),
) -> Plan:
    """Expected throughput and accuracy of an assignment.

    Every node starts at once and the slowest finishes last; the table's learned efficiency
    accounts for what per-node measurements miss (start-up, tail, contention).
    """
    used = [a for a in assignments if a.inputs > 0]
    total = sum(a.inputs for a in used)
    busy: dict[str, float] = {}
    for a in used:  # a node with two variants (mixed plans) runs them one after the other
        busy[a.node] = busy.get(a.node, 0.0) + a.inputs * table.seconds_per_input(a.node, a.variant)
    makespan = max(busy.values(), default=0.0)
    expected_ips = total / makespan * table.efficiency if makespan > 0 else 0.0
    accuracy = sum(a.inputs * table.accuracy[a.variant] for a in used) / total if total else 0.0
    feasible = request.target_ips is None or expected_ips >= request.target_ips
    # Whole inputs: rounding a plan may move its mean accuracy by up to one input's worth.
    if request.min_accuracy is not None and accuracy < request.min_accuracy - 1.0 / max(total, 1):
        feasible = False
    return Plan(policy, tuple(used), expected_ips, accuracy, feasible, tuple(notes))


def split_by_weight(total: int, weights: Sequence[float]) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder), summing to ``total``."""
    weight_sum = sum(weights)
    if weight_sum <= 0:
        raise PlanningError("cannot split inputs: every node has zero weight")
    exact = [total * w / weight_sum for w in weights]
    shares = [int(x) for x in exact]
    # Leftover inputs go to the largest remainders; ties to the heavier, then the earlier node.
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), -weights[i], i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _most_accurate_common(table: ExplorationTable, nodes: Sequence[str]) -> str:
    common = set.intersection(*(set(table.variants_of(n)) for n in nodes))
    if not common:
        raise PlanningError(f"no variant is profiled on every node of {', '.join(nodes)}")
    return max(common, key=lambda v: (table.accuracy[v], v))


def plan_equal(table: ExplorationTable, request: PlanRequest, nodes: Sequence[str]) -> Plan:
    """Same number of inputs on every node, all on the most accurate variant (heterogeneity-unaware)."""
    variant = _most_accurate_common(table, nodes)
    shares = split_by_weight(request.inputs, [1.0] * len(nodes))
    return evaluate("equal", table, [Assignment(n, variant, s) for n, s in zip(nodes, shares, strict=True)], request)


def plan_proportional(table: ExplorationTable, request: PlanRequest, nodes: Sequence[str]) -> Plan:
    """Shares proportional to each node's measured throughput, all on the most accurate variant."""
    variant = _most_accurate_common(table, nodes)
    shares = split_by_weight(request.inputs, [1.0 / table.seconds_per_input(n, variant) for n in nodes])
    return evaluate(
        "proportional", table, [Assignment(n, variant, s) for n, s in zip(nodes, shares, strict=True)], request
    )


def plan_uniform(table: ExplorationTable, request: PlanRequest, nodes: Sequence[str]) -> Plan:
    """One variant for the whole cluster: the most accurate whose proportional split meets the request.

    Approximation without per-node choice. When no variant meets it, the fastest one.
    """
    common = set.intersection(*(set(table.variants_of(n)) for n in nodes))
    if not common:
        raise PlanningError(f"no variant is profiled on every node of {', '.join(nodes)}")
    candidates = []
    for variant in sorted(common, key=lambda v: (-table.accuracy[v], v)):
        shares = split_by_weight(request.inputs, [1.0 / table.seconds_per_input(n, variant) for n in nodes])
        plan = evaluate(
            "uniform", table, [Assignment(n, variant, k) for n, k in zip(nodes, shares, strict=True)], request
        )
        if plan.feasible:
            return plan
        candidates.append(plan)
    fastest = max(candidates, key=lambda p: p.expected_ips)
    return replace(fastest, notes=(_infeasible_note(request, fastest.expected_ips),))


# Plan for a little more than the target: the learned efficiency covers what past requests lost,
# this covers the noise around it.
TARGET_HEADROOM = 0.12


def _adaptive(table: ExplorationTable, request: PlanRequest, nodes: Sequence[str], mixed: bool) -> Plan:
    options = [
        Option(n, v, table.seconds_per_input(n, v), table.accuracy[v])
        for n in nodes
        for v in sorted(table.variants_of(n))
        if table.ips(n, v) > 0
    ]
    if not options:
        raise PlanningError("no profiled node is available to plan on")
    total = request.inputs
    best_accuracy = max(o.accuracy for o in options)
    notes: list[str] = []
    allocation = None
    if request.target_ips is not None:
        deadline = total * table.efficiency / (request.target_ips * (1 + TARGET_HEADROOM))
        allocation = maximise_accuracy(options, total, deadline, request.min_accuracy, mixed)
        if allocation is None:
            allocation = minimise_makespan(options, total, request.min_accuracy, mixed)
            if allocation is None:
                allocation = minimise_makespan(options, total, None, mixed)
                notes.append(_unreachable_accuracy_note(request, best_accuracy))
            best_ips = total / allocation.makespan_s * table.efficiency if allocation else 0.0
            notes.insert(0, _infeasible_note(request, best_ips))
    else:
        wanted = request.min_accuracy if request.min_accuracy is not None else best_accuracy
        allocation = minimise_makespan(options, total, min(wanted, best_accuracy), mixed)
        if request.min_accuracy is not None and request.min_accuracy > best_accuracy:
            notes.append(_unreachable_accuracy_note(request, best_accuracy))
    if allocation is None:
        raise PlanningError("the optimiser found no allocation (no node can take inputs)")
    shares = _round_shares(allocation.inputs, total)
    assignments = [Assignment(o.node, o.variant, k) for o, k in zip(options, shares, strict=True) if k > 0]
    return evaluate("mixed" if mixed else "adaptive", table, assignments, request, notes)


def plan_adaptive(table: ExplorationTable, request: PlanRequest, nodes: Sequence[str]) -> Plan:
    """Per node, its share and its variant, jointly: the most accurate plan that meets the target."""
    return _adaptive(table, request, nodes, mixed=False)


def plan_mixed(table: ExplorationTable, request: PlanRequest, nodes: Sequence[str]) -> Plan:
    """Like ``adaptive``, but a node may time-share several variants within one request."""
    return _adaptive(table, request, nodes, mixed=True)


def _round_shares(shares: Sequence[float], total: int) -> list[int]:
    """Whole inputs per option, summing to ``total``, each within one of its continuous share."""
    floors = [int(np.floor(s + 1e-9)) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return floors


def _infeasible_note(request: PlanRequest, best_ips: float) -> str:
    return f"target of {request.target_ips:g} inf/s is infeasible: the fastest plan reaches {best_ips:.0f} inf/s"


def _unreachable_accuracy_note(request: PlanRequest, best_accuracy: float) -> str:
    return f"minimum accuracy {request.min_accuracy:g} is unreachable: the best variant scores {best_accuracy:.4f}"


# A policy maps (table, request, usable nodes) to a plan. Register new ones here.
Policy = Callable[[ExplorationTable, PlanRequest, Sequence[str]], Plan]
POLICIES: dict[str, Policy] = {
    "adaptive": plan_adaptive,
    "mixed": plan_mixed,
    "uniform": plan_uniform,
    "proportional": plan_proportional,
    "equal": plan_equal,
}


# Policies whose plans the coordinator keeps right at run time (re-plans, tail work-stealing). The
# baselines follow their first plan, as the strategies they stand for do; every policy gets a lost
# node's shards re-sent.
ADAPTS_AT_RUN_TIME = frozenset({"adaptive", "mixed"})


def make_plan(policy: str, table: ExplorationTable, request: PlanRequest, nodes: Sequence[str]) -> Plan:
    if policy not in POLICIES:
        raise PlanningError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    usable = sorted(n for n in nodes if table.variants_of(n))
    if not usable:
        raise PlanningError("no profiled node is available to plan on")
    if request.inputs < 1:
        raise PlanningError(f"a request needs at least one input, got {request.inputs}")
    return POLICIES[policy](table, request, usable)

"""Plans and the policies that make them. Pure functions of the exploration table and the request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import EdgecollabError
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


class PlanningError(EdgecollabError):
    """No plan can be made (no nodes, no measured variants, unknown policy)."""


def evaluate(
    policy: str,
    table: ExplorationTable,
    assignments: Sequence[Assignment],
    request: PlanRequest,
    notes: Sequence[str] = (),
) -> Plan:
    """Expected throughput and accuracy of an assignment; every node starts at once, the slowest finishes last."""
    used = [a for a in assignments if a.inputs > 0]
    total = sum(a.inputs for a in used)
    makespan = max((a.inputs / table.ips(a.node, a.variant) for a in used), default=0.0)
    expected_ips = total / makespan if makespan > 0 else 0.0
    accuracy = sum(a.inputs * table.accuracy[a.variant] for a in used) / total if total else 0.0
    feasible = request.target_ips is None or expected_ips >= request.target_ips
    if request.min_accuracy is not None and accuracy < request.min_accuracy:
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
    shares = split_by_weight(request.inputs, [table.ips(n, variant) for n in nodes])
    return evaluate(
        "proportional", table, [Assignment(n, variant, s) for n, s in zip(nodes, shares, strict=True)], request
    )


# A policy maps (table, request, usable nodes) to a plan. Register new ones here.
Policy = Callable[[ExplorationTable, PlanRequest, Sequence[str]], Plan]
POLICIES: dict[str, Policy] = {"equal": plan_equal, "proportional": plan_proportional}


def make_plan(policy: str, table: ExplorationTable, request: PlanRequest, nodes: Sequence[str]) -> Plan:
    if policy not in POLICIES:
        raise PlanningError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    usable = sorted(n for n in nodes if table.variants_of(n))
    if not usable:
        raise PlanningError("no profiled node is available to plan on")
    if request.inputs < 1:
        raise PlanningError(f"a request needs at least one input, got {request.inputs}")
    return POLICIES[policy](table, request, usable)

"""Plans and the policies that make them. Pure functions of the exploration table and the request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import EdgecollabError
from .optimizer import Allocation, Option, maximise_accuracy, minimise_makespan
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
    # The rate the plan promises: inputs over its makespan on the table (its rows' lower bounds for the
    # policies that plan with confidence), times the task's efficiency, less the margin and the start-up
    expected_ips: float
    expected_accuracy: float  # input-weighted mean of the variants' accuracies
    feasible: bool = True  # False when the target cannot be promised
    notes: tuple[str, ...] = field(default=())
    margin: float = 0.0  # relative headroom kept below the mean rate for what the table does not know
    cautious: bool = False  # planned on the rows' lower bounds (the policies that promise with confidence)

    def share_of(self, node: str) -> int:
        return sum(a.inputs for a in self.assignments if a.node == node)

    def as_dict(self) -> dict[str, Any]:
        """The plan as ``edgecollab plan --json`` prints it."""
        return {
            "policy": self.policy,
            "feasible": self.feasible,
            "expected_ips": self.expected_ips,
            "expected_accuracy": self.expected_accuracy,
            "margin": self.margin,
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
    margin: float = 0.0,
    startup_s: float = 0.0,
    cautious: bool = False,
) -> Plan:
    """Expected throughput and accuracy of an assignment.

    Every node starts at once and the slowest finishes last; the task's learned efficiency accounts
    for what per-node measurements miss (tail, contention). ``margin`` lowers the steady rate by the
    relative error kept for, and ``startup_s`` is spent before the first answer.
    """
    used = [a for a in assignments if a.inputs > 0]
    total = sum(a.inputs for a in used)
    busy: dict[str, float] = {}
    for a in used:  # a node with two variants (mixed plans) runs them one after the other
        busy[a.node] = busy.get(a.node, 0.0) + a.inputs * table.seconds_per_input(a.node, a.variant)
    makespan = max(busy.values(), default=0.0)
    efficiency = table.efficiency_for(a.variant for a in used)
    steady_s = makespan / (efficiency * (1 - margin)) if makespan > 0 else 0.0
    expected_ips = total / (steady_s + startup_s) if steady_s > 0 else 0.0
    accuracy = sum(a.inputs * table.accuracy[a.variant] for a in used) / total if total else 0.0
    feasible = request.target_ips is None or expected_ips >= request.target_ips * (1 - 1e-9)
    # Whole inputs: rounding a plan may move its mean accuracy by up to one input's worth.
    if request.min_accuracy is not None and accuracy < request.min_accuracy - 1.0 / max(total, 1):
        feasible = False
    return Plan(policy, tuple(used), expected_ips, accuracy, feasible, tuple(notes), margin, cautious)


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


def _options(table: ExplorationTable, nodes: Sequence[str]) -> list[Option]:
    return [
        Option(n, v, table.seconds_per_input(n, v), table.accuracy[v])
        for n in nodes
        for v in sorted(table.variants_of(n))
        if table.ips(n, v) > 0
    ]


def _adaptive(mean_table: ExplorationTable, request: PlanRequest, nodes: Sequence[str], mixed: bool) -> Plan:
    # Planned on the rows' lower bounds, with the task's margin: what the plan says is what it promises.
    table = mean_table.lower_bounds()
    realisation = table.realisation(table.accuracy)  # the task's: the margin it keeps, its start-up
    margin, startup_s = realisation.margin(table.z), realisation.startup_s
    policy = "mixed" if mixed else "adaptive"
    options = _options(table, nodes)
    if not options:
        raise PlanningError("no profiled node is available to plan on")
    total = request.inputs
    best_accuracy = max(o.accuracy for o in options)

    def plan_of(chosen: Sequence[Option], allocation: Allocation, notes: Sequence[str] = ()) -> Plan:
        shares = _round_shares(allocation.inputs, total)
        assignments = [Assignment(o.node, o.variant, k) for o, k in zip(chosen, shares, strict=True) if k > 0]
        return evaluate(policy, table, assignments, request, notes, margin, startup_s, cautious=True)

    if request.target_ips is None:
        notes = (
            [_unreachable_accuracy_note(request, best_accuracy)] if (request.min_accuracy or 0) > best_accuracy else []
        )
        wanted = request.min_accuracy if request.min_accuracy is not None else best_accuracy
        allocation = minimise_makespan(options, total, min(wanted, best_accuracy), mixed)
        if allocation is None:
            raise PlanningError("the optimiser found no allocation (no node can take inputs)")
        return plan_of(options, allocation, notes)
    efficiency = table.efficiency_for(o.variant for o in options)
    steady_s = total / request.target_ips - startup_s  # the time the inputs really have
    # Any plan finishes within every input's time on the slowest option: a longer deadline changes nothing
    # (and a vanishing target's would not be finite).
    deadline = min(steady_s * efficiency * (1 - margin), total * max(o.seconds_per_input for o in options))
    for _ in range(3):  # tighter solves when rounding to whole inputs lost the target
        allocation = maximise_accuracy(options, total, deadline, request.min_accuracy, mixed) if deadline > 0 else None
        if allocation is None:
            break
        plan = plan_of(options, allocation)
        if plan.feasible:
            return plan
        # Rounding adds at most one input to each option used: leave that much of every board's time.
        rounding: dict[str, float] = {}
        for o, share in zip(options, allocation.inputs, strict=True):
            if share > 0:
                rounding[o.node] = rounding.get(o.node, 0.0) + o.seconds_per_input
        deadline -= max(rounding.values())
    # No plan can promise the target: the plan that promises the most (on the lower bounds too: a row
    # that is fast only by its estimate is the one most likely over-estimated), and what it promises.
    fastest = minimise_makespan(options, total, request.min_accuracy, mixed)
    notes = []
    if fastest is None:
        fastest = minimise_makespan(options, total, None, mixed)
        notes.append(_unreachable_accuracy_note(request, best_accuracy))
    if fastest is None:
        raise PlanningError("the optimiser found no allocation (no node can take inputs)")
    plan = plan_of(options, fastest)
    return replace(plan, notes=(_infeasible_note(request, plan.expected_ips), *notes), feasible=False)


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
    return (
        f"target of {request.target_ips:g} inf/s is infeasible (cannot be promised): "
        f"the fastest plan reaches {best_ips:.0f} inf/s"
    )


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

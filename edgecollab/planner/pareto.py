"""The cluster's (throughput, accuracy) trade-off under each policy. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .policies import POLICIES, PlanRequest, make_plan
from .table import ExplorationTable


@dataclass(frozen=True)
class TradeOff:
    policy: str
    target_ips: float
    expected_ips: float
    expected_accuracy: float
    feasible: bool


def sweep(
    table: ExplorationTable, nodes: Sequence[str], inputs: int = 10_000, points: int = 24
) -> dict[str, list[TradeOff]]:
    """Plan the same request under every policy for targets from easy to beyond the cluster's reach."""
    fastest = make_plan("adaptive", table, PlanRequest(inputs, target_ips=1e12), nodes).expected_ips
    slowest = make_plan("proportional", table, PlanRequest(inputs), nodes).expected_ips
    targets = np.geomspace(0.5 * slowest, 1.1 * fastest, points)
    curves: dict[str, list[TradeOff]] = {}
    for policy in POLICIES:
        seen: dict[tuple[float, float], TradeOff] = {}
        for target in targets:
            plan = make_plan(policy, table, PlanRequest(inputs, target_ips=float(target)), nodes)
            key = (round(plan.expected_ips, 3), round(plan.expected_accuracy, 6))
            seen.setdefault(
                key, TradeOff(policy, float(target), plan.expected_ips, plan.expected_accuracy, plan.feasible)
            )
        curves[policy] = sorted(seen.values(), key=lambda p: p.expected_ips)
    return curves


def front(points: Sequence[TradeOff]) -> list[TradeOff]:
    """Points no other point beats on both throughput and accuracy, slowest first; one per trade-off."""
    kept: dict[tuple[float, float], TradeOff] = {}
    for p in points:
        dominated = any(
            q.expected_ips >= p.expected_ips
            and q.expected_accuracy >= p.expected_accuracy
            and (q.expected_ips > p.expected_ips or q.expected_accuracy > p.expected_accuracy)
            for q in points
        )
        if not dominated:
            kept.setdefault((p.expected_ips, p.expected_accuracy), p)  # the first policy to reach it
    return sorted(kept.values(), key=lambda p: p.expected_ips)

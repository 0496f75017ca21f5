"""Planning: exploration table and policies. Pure: no sockets, no asyncio."""

from __future__ import annotations

from .pareto import TradeOff, front, sweep
from .policies import (
    ADAPTS_AT_RUN_TIME,
    POLICIES,
    Assignment,
    Plan,
    PlanningError,
    PlanRequest,
    evaluate,
    make_plan,
    split_by_weight,
)
from .table import ExplorationTable, Measurement, ProfileCache

__all__ = [
    "ADAPTS_AT_RUN_TIME",
    "POLICIES",
    "Assignment",
    "ExplorationTable",
    "Measurement",
    "Plan",
    "PlanRequest",
    "PlanningError",
    "ProfileCache",
    "TradeOff",
    "evaluate",
    "front",
    "make_plan",
    "split_by_weight",
    "sweep",
]

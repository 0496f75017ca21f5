"""How sure a plan can be of what it promises. Pure: no I/O.

A row of the exploration table is an estimate, and so is the cluster's efficiency. Choosing per
board picks exactly the rows that are most over-estimated (the optimiser's curse), so a plan that
aims at the mean misses about half its targets. Two corrections, each learned from real work:

* **Per row**: the relative spread of the row's throughput (profiling's repeated shards first, then
  every shard at run time against what the row expected at that shard's batch size). Plans use the
  row's lower bound, ``ips × (1 − z × spread)``.
* **Per task**: how much of what its plans could reach requests really got (``Realisation``: start-up,
  the tail, contention between boards sharing a host or a link), its spread, and the fixed cost
  before a request's first answer. A plan asks for ``target ÷ efficiency × (1 + z × spread)``.

``z`` is the standard normal quantile of the confidence a plan aims for (``[planner] confidence``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

DEFAULT_CONFIDENCE = 0.9
# A row's spread is never taken below this (a few samples can agree by chance), nor a task's.
MIN_ROW_SPREAD = 0.03
MIN_TASK_SPREAD = 0.03
# What a task's realisation is assumed to spread before any request of it has finished (a margin of
# 12.8 % at confidence 0.9; learned requests bring it down to what they show).
PRIOR_TASK_SPREAD = 0.1
# A row whose time was set by the host's compute rather than the board's (emulation only) varies with
# what else the host runs: its spread starts here, and real shards then say how much it varies. (What
# the boards lose to each other when all compute at once, profiling measures: ``_measure_together``.)
HOST_BOUND_SPREAD = 0.15
# Weight of one finished request in its task's realisation (exponentially weighted).
REALISATION_WEIGHT = 0.3
# A lower bound is never below this fraction of the estimate: the plan must still use the row.
LOWEST_BOUND = 0.4
# Learned efficiency stays within these bounds (a request that ran faster than reachable says the
# rows were pessimistic; the rows learn that themselves).
EFFICIENCY_RANGE = (0.3, 1.0)


def z_of(confidence: float) -> float:
    """The standard normal quantile for a one-sided ``confidence`` (0.5 → 0, 0.9 → 1.28)."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def lower_bound(estimate: float, spread: float, z: float) -> float:
    """``estimate`` lowered by ``z`` relative standard deviations (never below LOWEST_BOUND of it)."""
    return estimate * max(1.0 - z * spread, LOWEST_BOUND)


@dataclass
class Realisation:
    """What one task's requests got of what their plans could reach: learned from every finished request."""

    efficiency: float = 1.0  # achieved ÷ reachable, exponentially weighted mean
    variance: float = PRIOR_TASK_SPREAD**2  # of that ratio, relative
    startup_s: float = 0.0  # from a request's arrival to its first answer (solve, first round trip)
    requests: int = 0  # finished requests learned from

    @property
    def spread(self) -> float:
        return max(math.sqrt(self.variance), MIN_TASK_SPREAD)

    def margin(self, z: float) -> float:
        """The relative headroom a plan keeps above its target for this task."""
        return z * self.spread

    def observe(self, ratio: float, startup_s: float) -> None:
        """One finished request: ``ratio`` = its achieved rate after start-up ÷ the rate its work could reach."""
        w = REALISATION_WEIGHT if self.requests else 1.0
        low, high = EFFICIENCY_RANGE
        ratio = min(max(ratio, low), high)
        residual = ratio / self.efficiency - 1.0
        if self.requests:  # the first request sets the mean; its residual from the prior says nothing
            self.variance = (1 - w) * self.variance + w * residual**2
        self.efficiency = (1 - w) * self.efficiency + w * ratio
        self.startup_s = (1 - w) * self.startup_s + w * max(startup_s, 0.0)
        self.requests += 1

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread}

    @classmethod
    def from_dict(cls, data: Any) -> Realisation | None:
        """A realisation as ``as_dict`` wrote it, or None when it is not one."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                float(data["efficiency"]), float(data["variance"]), float(data["startup_s"]), int(data["requests"])
            )
        except (KeyError, TypeError, ValueError):
            return None

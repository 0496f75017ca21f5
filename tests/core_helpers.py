"""Helpers for tests that drive the dispatch core with events alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecollab.config import CoordinatorConfig
from edgecollab.coordinator.dispatch import DispatchCore
from edgecollab.coordinator.events import (
    Instruction,
    NodeProfiled,
    NodeRegistered,
    PlanSolved,
    Replan,
    SendShard,
    ServedTask,
    WorkId,
)
from edgecollab.coordinator.nodes import NodeStatus, Work
from edgecollab.planner import ExplorationTable, Measurement
from edgecollab.planner.joint import plan_jointly

ACCURACY = {"fast": 0.85, "slow": 0.92}


def core_with(
    rows: dict[str, dict[str, Measurement]], shape: tuple[int, ...], task: str = "", **settings: Any
) -> DispatchCore:
    """A core whose nodes (node -> variant -> measurement) have registered and been profiled at time 0."""
    config = CoordinatorConfig(startup_timeout_s=5.0, **settings)
    served = [ServedTask(task, shape, np.dtype(np.uint8))]
    core = DispatchCore(config, rows, ExplorationTable(ACCURACY), served)
    for node, measurements in rows.items():
        core.handle(NodeRegistered(node, tuple(measurements), 0.0))
        core.handle(NodeProfiled(node, measurements, 0.0))
    return core


def cpu_like(per_input_ms: float) -> Measurement:
    """A board on which each input adds its cost to a 1 ms round trip: batching barely pays."""
    points = tuple((b, 1.0 + b * per_input_ms) for b in (1, 4, 16))
    return Measurement(1000.0 / per_input_ms, 1.0 + 16 * per_input_ms, points)


def solve(core: DispatchCore, out: list[Instruction], now: float = 0.0) -> list[Instruction]:
    """Carry out the Replan in ``out`` (as the shell would, on its solver thread) and feed the result back.
    A request that arrived alone was planned inline: then ``out`` already holds what it started."""
    replans = [i for i in out if isinstance(i, Replan)]
    if not replans:
        return out
    (replan,) = replans
    plan = plan_jointly(replan.table, replan.demands, replan.nodes)
    return core.handle(PlanSolved(replan.generation, plan, "", now))


def sends(out: list[Instruction]) -> list[SendShard]:
    return [i for i in out if isinstance(i, SendShard)]


def booked(core: DispatchCore, send: SendShard) -> Work:
    """What the core booked a message it sent as (the node's in-flight entry for it)."""
    work_id = WorkId.of(send.shard)
    assert work_id is not None
    return core.nodes[send.node].in_flight[work_id]


def suspects(core: DispatchCore) -> set[str]:
    return {name for name, state in core.nodes.nodes.items() if state.status is NodeStatus.SUSPECT}

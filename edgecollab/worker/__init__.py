"""A board's worker: ONNX Runtime sessions, board emulation, and the DEALER agent."""

from __future__ import annotations

from .agent import EXIT_REFUSED, WorkerAgent
from .emulation import BOARD_PROFILES, BoardProfile
from .runner import ShardRejected, ShardRunner

__all__ = ["BOARD_PROFILES", "EXIT_REFUSED", "BoardProfile", "ShardRejected", "ShardRunner", "WorkerAgent"]

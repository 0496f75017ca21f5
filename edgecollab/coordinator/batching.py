"""Micro-batches of stream frames: how many frames a free node takes now, and which. Pure: no I/O."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..planner import ExplorationTable

if TYPE_CHECKING:
    from .streams import OpenStream, PendingFrame

# A free node holds frames for a fuller batch only if that batch costs at most this share per frame.
BATCHING_PAYS = 0.67
# ... and holds them at most this share of their latency bound: the rest is the answer's margin.
MAX_HOLD_SHARE = 0.2


@dataclass
class FrameBatch:
    """One micro-batch in flight: frames of one or more streams, one variant, one node."""

    batch_id: int
    node: str
    variant: str
    frames: list[tuple[OpenStream, PendingFrame]]
    sent_at: float
    expected_done: float  # when the table expects its answer
    alone: bool  # sent to an idle node: its round trip is comparable with the profiled latency


def plan_batch(
    table: ExplorationTable,
    node: str,
    variant: str,
    waiting: int,
    now: float,
    start: float,
    head: PendingFrame,
    max_latency_s: float,
    most: int,
) -> tuple[int, float]:
    """How many of ``waiting`` frames a free node should take now, and if none, until when to hold them.

    ``start`` is when the node can begin (after what it has in flight); ``head`` the frame due
    soonest. The batch is the largest that still answers by its deadline. Fewer frames than that
    are held for more to arrive only when the larger batch makes each frame much cheaper (a GPU
    board), and at most ``MAX_HOLD_SHARE`` of the latency bound, and never past the last moment
    the larger batch would still be in time. Frames already late go at the largest batch, which
    drains the queue fastest.
    """
    deadline = head.deadline
    fit = table.largest_batch(node, variant, deadline - start, most)
    if fit == 0:
        return min(waiting, most), now
    if waiting >= fit:
        return fit, now
    per_frame_now = table.latency_s(node, variant, waiting) / waiting
    per_frame_full = table.latency_s(node, variant, fit) / fit
    send_by = min(
        deadline - table.latency_s(node, variant, fit) - max(start - now, 0.0),
        head.arrived + MAX_HOLD_SHARE * max_latency_s,
    )
    if per_frame_full > BATCHING_PAYS * per_frame_now or send_by <= now:
        return waiting, now
    return 0, send_by


def coalesce(streams: Sequence[OpenStream], limit: int) -> list[tuple[OpenStream, PendingFrame]]:
    """Take up to ``limit`` queued frames from ``streams``, soonest deadline first (each stream in order).

    A merge of the streams' queues on their heads (each queue is in deadline order): the cost is
    the frames taken, not the frames queued, so a long backlog does not slow every batch.
    """
    heads = [(s.pending[0].deadline, s.pending[0].seq, i) for i, s in enumerate(streams) if s.pending]
    heapq.heapify(heads)
    chosen: list[tuple[OpenStream, PendingFrame]] = []
    while heads and len(chosen) < limit:
        stream = streams[heads[0][2]]
        chosen.append((stream, stream.pending.popleft()))
        stream.in_flight += 1
        if stream.pending:
            head = stream.pending[0]
            heapq.heapreplace(heads, (head.deadline, head.seq, heads[0][2]))
        else:
            heapq.heappop(heads)
    return chosen

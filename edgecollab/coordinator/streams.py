"""Book-keeping of open streams: queued frames, micro-batches in flight, back-pressure. Pure: no I/O.

A stream's frames arrive numbered in send order. Each frame is, at any time, in exactly one
place: the stream's queue (``pending``) or one micro-batch in flight on one node. A batch's
result is taken only while that batch is still in flight; when its node is lost its frames
go back to the front of their queues. So every frame ends exactly once: answered, dropped
by the back-pressure policy (and told so), or failed with its stream.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..planner import ExplorationTable
from ..protocol import StreamOpen
from .ownership import scoped_key

# A free node holds frames for a fuller batch only if that batch costs at most this share per frame.
BATCHING_PAYS = 0.67
# ... and holds them at most this share of their latency bound: the rest is the answer's margin.
MAX_HOLD_SHARE = 0.2
# Upper bounds (seconds) of the coordinator's latency histogram per stream: arrival to answer.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)


@dataclass
class PendingFrame:
    seq: int
    arrived: float
    deadline: float  # arrival + the stream's latency bound
    data: np.ndarray  # the frame (a view into the message that carried it)


@dataclass
class Accepted:
    """What became of frames that arrived: queued, or dropped (with why), or the stream must fail."""

    dropped: list[int] = field(default_factory=list)  # sequence numbers dropped, oldest first
    reason: str = ""
    failure: str | None = None  # with the ``fail`` policy: why the stream fails


@dataclass
class OpenStream:
    client: bytes
    spec: StreamOpen
    opened: float
    max_latency_s: float
    queue_frames: int  # most frames unanswered (queued + in flight) before back-pressure acts
    task: str = ""  # the task its frames are for, when it is not the cluster's default task
    outputs: str = "predictions"  # what its frames' answers carry: one of OUTPUT_MODES
    status: str = "waiting"  # waiting (for the cluster) | planning (admission) | open | closing
    degraded: bool = False  # admitted although the plan cannot meet its rate or accuracy
    notes: tuple[str, ...] = ()
    pending: deque[PendingFrame] = field(default_factory=deque)
    next_seq: int = 0  # the sequence number the next frame must carry
    in_flight: int = 0  # frames in batches sent and not answered
    frames: int = 0  # frames received
    results: int = 0  # frames answered with a prediction
    dropped: int = 0  # frames answered as dropped
    late: int = 0  # frames answered after their deadline
    variants: Counter[str] = field(default_factory=Counter)  # frames answered, by variant
    accuracy_sum: float = 0.0  # Σ the test-set accuracy of the variant each answered frame ran on
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))
    latency_sum_s: float = 0.0
    owner: str = ""  # who may see it in status (see ownership.principal)
    key: str = field(init=False)  # the core's name for it

    def __post_init__(self) -> None:
        self.key = scoped_key(self.client, self.spec.stream_id)

    @property
    def stream_id(self) -> str:
        """The id its client gave it, in every answer to that client."""
        return self.spec.stream_id

    @property
    def pool(self) -> str:
        """The joint plan's demand this stream is part of: every stream with the same conditions."""
        accuracy = f", min accuracy {self.spec.min_accuracy:g}" if self.spec.min_accuracy is not None else ""
        task = f", task {self.task}" if self.task else ""
        return f"streams: {self.max_latency_s * 1e3:g} ms{accuracy}{task}"

    @property
    def outstanding(self) -> int:
        return len(self.pending) + self.in_flight

    @property
    def done(self) -> bool:
        """Closed by its client and every frame it sent has been answered."""
        return self.status == "closing" and not self.pending and self.in_flight == 0

    def accept(self, first_seq: int, inputs: np.ndarray, now: float) -> Accepted:
        """Queue frames, applying the stream's back-pressure policy when they overflow its queue."""
        count = len(inputs)
        self.next_seq = first_seq + count
        self.frames += count
        new = [PendingFrame(first_seq + i, now, now + self.max_latency_s, inputs[i]) for i in range(count)]
        overflow = self.outstanding + count - self.queue_frames
        policy = self.spec.backpressure
        if overflow > 0 and policy == "fail":
            return Accepted(
                failure=f"the stream has {self.outstanding} frames unanswered and {count} more arrived; its queue "
                f"holds {self.queue_frames} (back-pressure policy 'fail')"
            )
        out = Accepted()
        if overflow > 0 and policy == "drop-oldest":
            while overflow > 0 and self.pending:
                out.dropped.append(self.pending.popleft().seq)
                overflow -= 1
            out.reason = (
                f"dropped as the oldest queued frame: the stream's queue of {self.queue_frames} was full "
                "(back-pressure policy 'drop-oldest')"
            )
        if overflow > 0:  # 'block' (the client should have waited) or still full: the newest are refused
            out.dropped.extend(f.seq for f in new[count - overflow :])
            new = new[: count - overflow]
            out.reason = out.reason or (
                f"refused: the stream already had {self.queue_frames} frames unanswered (back-pressure "
                "policy 'block': the sender must wait for answers)"
            )
        self.pending.extend(new)
        self.dropped += len(out.dropped)
        return out

    def requeue(self, frames: Iterable[PendingFrame]) -> None:
        """Frames of a batch that will not be answered go back to the front of the queue, in order."""
        back = list(frames)
        self.in_flight -= len(back)
        self.pending = deque(sorted([*back, *self.pending], key=lambda f: f.seq))

    def answered(self, frames: list[PendingFrame], variant: str, accuracy: float, now: float) -> None:
        self.in_flight -= len(frames)
        self.results += len(frames)
        self.variants[variant] += len(frames)
        self.accuracy_sum += accuracy * len(frames)
        for f in frames:
            waited = now - f.arrived
            self.latency_sum_s += waited
            self.late += now > f.deadline
            self.latency_counts[next(i for i, b in enumerate(LATENCY_BUCKETS_S) if waited <= b)] += 1

    def summary(self, now: float) -> dict[str, Any]:
        """The stream's figures as the coordinator sees them (``status`` and the close answer)."""
        return {
            "id": self.stream_id,
            "status": self.status,
            "target_fps": self.spec.target_fps,
            "min_accuracy": self.spec.min_accuracy,
            "max_latency_ms": self.max_latency_s * 1e3,
            "backpressure": self.spec.backpressure,
            "degraded": self.degraded,
            "notes": list(self.notes),
            "frames": self.frames,
            "results": self.results,
            "dropped": self.dropped,
            "late": self.late,
            "queued": len(self.pending),
            "in_flight": self.in_flight,
            "elapsed_s": now - self.opened,
            "variants": dict(self.variants),
            "expected_accuracy": self.accuracy_sum / self.results if self.results else None,
            "mean_latency_ms": 1e3 * self.latency_sum_s / self.results if self.results else None,
        }


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


def coalesce(streams: Iterable[OpenStream], limit: int) -> list[tuple[OpenStream, PendingFrame]]:
    """Take up to ``limit`` queued frames from ``streams``, soonest deadline first (each stream in order)."""
    heads = [(s, i) for s in streams for i in range(min(limit, len(s.pending)))]
    heads.sort(key=lambda h: (h[0].pending[h[1]].deadline, h[0].pending[h[1]].seq))
    taken: Counter[int] = Counter()
    for s, _ in heads[:limit]:
        taken[id(s)] += 1
    chosen: list[tuple[OpenStream, PendingFrame]] = []
    for s in {id(s): s for s, _ in heads[:limit]}.values():
        for _ in range(taken[id(s)]):
            chosen.append((s, s.pending.popleft()))
            s.in_flight += 1
    return chosen

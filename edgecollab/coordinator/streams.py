"""Streams: admission, queued frames, micro-batches bounded by deadlines, back-pressure. Pure: no I/O.

Streams are latency-bound demands of the joint plan, pooled by their conditions. Their frames go
first: a free node takes the frames due soonest that run the same variant there, as one
micro-batch no larger than the soonest deadline allows (``plan_batch``).

A stream's frames arrive numbered in send order. Each frame is, at any time, in exactly one
place: the stream's queue (``pending``) or one micro-batch in flight on one node. A batch's
result is taken only while that batch is still in flight; when its node is lost its frames
go back to the front of their queues. So every frame ends exactly once: answered, dropped
by the back-pressure policy (and told so), or failed with its stream.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..planner.joint import LATENCY_SHARE, DemandPlan
from ..protocol import Answer, Error, FrameResults, ShardResult, StreamOpen
from .batching import FrameBatch, coalesce, plan_batch
from .events import (
    FailRequest,
    FramesArrived,
    Instruction,
    SendShard,
    StreamClosed,
    StreamOpened,
    StreamReply,
    WorkId,
    WorkKind,
)
from .nodes import result_problem
from .ownership import principal, scoped_key
from .validation import check_frames, check_stream_open, outputs_mode

if TYPE_CHECKING:
    from .dispatch import DispatchCore
    from .events import ServedTask
    from .nodes import NodeState

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the coordinator's latency histogram per stream: arrival to answer.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)


class StreamStatus(enum.Enum):
    WAITING = "waiting"  # for the cluster to form
    PLANNING = "planning"  # for the joint plan that admits it
    OPEN = "open"  # admitted: frames are taken
    CLOSING = "closing"  # its client closed it; answered frames still come


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
    status: StreamStatus = StreamStatus.WAITING
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
        return self.status is StreamStatus.CLOSING and not self.pending and self.in_flight == 0

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
            "status": self.status.value,
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


class StreamDispatch:
    """Every stream opened and not yet closed or failed (``core.streams``), and its frames."""

    def __init__(self, core: DispatchCore) -> None:
        self.core = core
        self.queued: dict[str, OpenStream] = {}  # the open streams with frames waiting: what a free node scans
        self._variants: dict[tuple[str, str], str | None] = {}  # (pool, node) -> variant; valid for one plan

    def forget_variants(self) -> None:
        """The plan or the nodes changed: which variant each pool runs where is chosen again."""
        self._variants.clear()

    # --- admission -----------------------------------------------------------------------------
    def open(self, event: StreamOpened) -> list[Instruction]:
        core, settings, spec = self.core, self.core.settings, event.spec
        sid = spec.stream_id
        task, problem = core.task_named(spec.task)
        problem = problem or check_stream_open(spec)
        outputs, wrong = outputs_mode(task, spec.outputs)
        problem = problem or wrong
        key = scoped_key(event.client, sid)
        if problem is None and (key in core.streams or key in core.requests):
            problem = f"stream_id {sid!r} is already open; every stream needs its own id"
        if problem is not None:
            return core.refuse(event.client, Error("invalid_input", problem, sid))
        if core.manager.state == "draining":
            return core.refuse(event.client, Error("shutting_down", "the coordinator is shutting down", sid))
        if len(core.streams) >= settings.max_streams:
            why = f"the coordinator is serving its limit of {settings.max_streams} streams; retry later"
            return core.refuse(event.client, Error("busy", why, sid))
        latency_ms = spec.max_latency_ms if spec.max_latency_ms is not None else settings.stream_latency_ms
        assert task is not None
        label = "" if task.name == core.default_task else task.name
        owner = principal(event.client, event.owner)
        stream = OpenStream(
            event.client, spec, event.now, latency_ms / 1e3, settings.stream_queue_frames, label, outputs, owner=owner
        )
        core.streams[stream.key] = stream
        if core.manager.accepts_work():
            self.admit(stream)
        return []

    def admit(self, stream: OpenStream) -> None:
        """A stream is admitted by the next joint plan (see ``admitted``): its rate is a demand of it."""
        stream.status = StreamStatus.PLANNING
        self.core.planning.want(f"stream {stream.stream_id[:8]} opened")

    def admitted(self, stream: OpenStream, demand: DemandPlan) -> list[Instruction]:
        spec = stream.spec
        declared = sum(
            s.spec.target_fps
            for s in self.core.streams.values()
            if s.pool == stream.pool and s.status is not StreamStatus.WAITING
        )
        # The pool's plan, in this stream's proportion of the pool's declared rate.
        expected_fps = demand.expected_ips * spec.target_fps / declared if declared > 0 else 0.0
        if not demand.feasible and not spec.degrade:
            why = "; ".join(demand.notes) or "no plan meets it"
            message = (
                f"cannot serve {spec.target_fps:g} fps at min_accuracy={spec.min_accuracy} within "
                f"{stream.max_latency_s * 1e3:g} ms next to the work running now (the best plan gives it "
                f"{expected_fps:,.1f} fps at {demand.expected_accuracy * 100:.2f} %): {why}; open it with "
                "degrade=True (the CLI: --degrade) to be served anyway"
            )
            return self.fail(stream, Error("infeasible", message, stream.stream_id))
        stream.status = StreamStatus.OPEN
        stream.degraded = not demand.feasible
        stream.notes = demand.notes
        task = self.task_of(stream)
        answer = {
            "admitted": True,
            "degraded": stream.degraded,
            "notes": list(demand.notes),
            "expected_fps": expected_fps,
            "expected_accuracy": demand.expected_accuracy,
            "max_latency_ms": stream.max_latency_s * 1e3,
            "queue_frames": stream.queue_frames,
            "input_shape": list(task.input_shape),
            "input_dtype": task.input_dtype.name,
            "quality": task.quality,
            "preprocess": dict(task.preprocess),  # how a video frame becomes an input (edgecollab.video)
        }
        return [StreamReply(stream.client, Answer(stream.stream_id, answer))]

    def task_of(self, stream: OpenStream) -> ServedTask:
        return self.core.tasks[stream.task or self.core.default_task]

    # --- frames in -----------------------------------------------------------------------------
    def frames(self, event: FramesArrived) -> list[Instruction]:
        core, frames = self.core, event.frames
        stream = core.streams.get(scoped_key(event.client, frames.stream_id))
        problem = None
        if stream is None:
            problem = f"stream_id {frames.stream_id!r} is not an open stream of this client"
        elif stream.status is StreamStatus.CLOSING:
            problem = f"stream {frames.stream_id!r} is closing: no frames may follow its close"
        elif stream.status is not StreamStatus.OPEN:
            problem = f"stream {frames.stream_id!r} is not admitted yet: wait for the answer to its open"
        else:
            task = self.task_of(stream)
            problem = check_frames(frames, stream.next_seq, task.input_shape, task.input_dtype)
        if stream is None or problem is not None:
            core.counters["frames_refused"] += len(frames.inputs) if frames.inputs.ndim else 0
            return core.refuse(event.client, Error("invalid_input", problem or "", frames.stream_id))
        accepted = stream.accept(frames.first_seq, frames.inputs, event.now)
        if accepted.failure is not None:
            core.counters["frames_dropped"] += len(frames.inputs)
            return self.fail(stream, Error("busy", accepted.failure, stream.stream_id))
        if stream.pending:
            self.queued[stream.key] = stream
        else:
            self.queued.pop(stream.key, None)
        if not accepted.dropped:
            return []
        core.counters["frames_dropped"] += len(accepted.dropped)
        seqs = np.array(accepted.dropped, np.int64)
        dropped = FrameResults(stream.stream_id, seqs, np.full(len(seqs), -1, np.int64), "", "", True, accepted.reason)
        return [StreamReply(stream.client, dropped)]

    # --- closing -------------------------------------------------------------------------------
    def close(self, event: StreamClosed) -> list[Instruction]:
        sid = event.close.stream_id
        stream = self.core.streams.get(scoped_key(event.client, sid))
        if stream is None:
            return self.core.refuse(
                event.client, Error("invalid_input", f"stream_id {sid!r} is not an open stream", sid)
            )
        stream.status = StreamStatus.CLOSING  # closed before admission too: no frames, its answer is the summary
        return self.finish_if_done(stream, event.now)

    def finish_if_done(self, stream: OpenStream, now: float) -> list[Instruction]:
        if not stream.done:
            return []
        self.forget(stream)
        self.core.outcomes["stream_closed"] += 1
        return [StreamReply(stream.client, Answer(stream.stream_id, stream.summary(now)))]

    def fail(self, stream: OpenStream, error: Error) -> list[Instruction]:
        self.core.counters["frames_failed"] += stream.outstanding
        self.forget(stream)
        self.core.outcomes[error.code] += 1
        return [FailRequest(stream.client, error)]

    def forget(self, stream: OpenStream) -> None:
        """A closed or failed stream: late answers for its frames are discarded; its demand leaves the plan."""
        core = self.core
        if core.streams.pop(stream.key, None) is None:
            return
        self.queued.pop(stream.key, None)
        stream.pending.clear()
        core.work_closed()
        if any(o.joint for o in core.requests.values()) or core.streams:
            core.planning.want(f"stream {stream.stream_id[:8]} closed")

    # --- frames out ----------------------------------------------------------------------------
    def variant_on(self, stream: OpenStream, node: NodeState) -> str | None:
        """The variant a stream's frames run on a node: its share's in the plan; on a node the plan gives
        it no share, the most accurate variant planned there that answers fast enough; else none."""
        key = (stream.pool, node.name)
        if key in self._variants:
            return self._variants[key]
        table, plan = self.core.table, self.core.planning.plan
        allowed = self.task_of(stream).variants  # its task's
        fast_enough = [
            v
            for v in table.variants_of(node.name)
            if v in node.variants
            and (allowed is None or v in allowed)
            and table.latency_s(node.name, v, 1) <= LATENCY_SHARE * stream.max_latency_s
        ]
        chosen = None
        demand = plan.demands.get(stream.pool) if plan else None
        mine = demand.variant_on(node.name) if demand else None
        if mine in fast_enough:
            chosen = mine
        elif fast_enough:
            planned = {
                s.variant for d in (plan.demands.values() if plan else ()) for s in d.shares if s.node == node.name
            }
            usable = [v for v in fast_enough if v in planned] or fast_enough
            chosen = max(usable, key=lambda v: table.accuracy[v])
        self._variants[key] = chosen
        return chosen

    def send(self, node: NodeState, now: float) -> tuple[list[Instruction], bool]:
        """Send a node the micro-batch of frames due soonest that it can run in time, if any waits (True);
        frames worth holding for a fuller batch ask for a ``Tick`` when they must go instead."""
        due: tuple[float, tuple[str, str], OpenStream] | None = None
        # Frames of streams that run the same variant here and want the same outputs ride together.
        by_variant: dict[tuple[str, str], list[OpenStream]] = {}
        for stream in self.queued.values():
            variant = self.variant_on(stream, node)
            if variant is None:
                continue
            by_variant.setdefault((variant, stream.outputs), []).append(stream)
            head = stream.pending[0].deadline
            if due is None or head < due[0]:
                due = (head, (variant, stream.outputs), stream)
        if due is None:
            return [], False
        _, (variant, outputs), first = due
        # The batch waits behind what the node has in flight, then must answer by the soonest deadline.
        table = self.core.table
        start = now
        for work in node.dispatched():
            done = work.expected_done if isinstance(work, FrameBatch) else work.sent_at + node.expected_s(work, table)
            start = max(start, done)
        streams = by_variant[(variant, outputs)]
        waiting = sum(len(s.pending) for s in streams)
        most = self.core.settings.shard_size
        size, send_by = plan_batch(
            table, node.name, variant, waiting, now, start, first.pending[0], first.max_latency_s, most
        )
        if size == 0:
            return self.core.wake_at(send_by), False
        frames = coalesce(streams, size)
        for stream in streams:
            if not stream.pending:
                del self.queued[stream.key]
        work_id = WorkId(WorkKind.FRAMES, self.core.next_number())
        expected_done = start + table.latency_s(node.name, variant, len(frames))
        batch = FrameBatch(work_id.number, node.name, variant, frames, now, expected_done, node.busy == 0)
        node.in_flight[work_id] = batch
        self.core.counters["frame_batches"] += 1
        inputs = np.stack([f.data for _, f in frames])
        return [SendShard(node.name, work_id.shard(variant, inputs, outputs))], True

    def returned(
        self, node: NodeState, batch: FrameBatch, result: ShardResult, now: float
    ) -> tuple[list[Instruction], str | None]:
        """A micro-batch's answers, each to its stream; a malformed answer sends the frames again (a strike)."""
        core, count = self.core, len(batch.frames)
        wanted = batch.frames[0][0].outputs
        problem = result_problem(result.predictions, result.outputs, count, wanted)
        if problem is not None:
            log.warning("dispatch: %s returned %s for a batch of %d frames; sending them again", node.name, problem,
                        count)  # fmt: skip
            self.take_back(batch)
            return [], f"{problem} (a batch of {count} frames)"
        core.nodes.succeeded(node)
        if batch.alone:
            core.observe(node, batch.variant, count, batch.sent_at, result.busy_s, now, batch=True)
        else:
            node.last_result_at = now
        accuracy = core.table.accuracy.get(batch.variant, 0.0)
        by_stream: dict[str, tuple[OpenStream, list[PendingFrame], list[int]]] = {}
        for row, (stream, frame) in enumerate(batch.frames):
            _, frames, rows = by_stream.setdefault(stream.key, (stream, [], []))
            frames.append(frame)
            rows.append(row)
        out: list[Instruction] = []
        for key, (stream, frames, rows) in by_stream.items():
            if core.streams.get(key) is not stream:
                continue  # failed or gone meanwhile: nobody waits for these answers
            stream.answered(frames, batch.variant, accuracy, now)
            core.counters["frames_served"] += len(frames)
            seqs = np.fromiter((f.seq for f in frames), np.int64, len(frames))
            mine = {name: tensor[rows] for name, tensor in result.outputs.items()}
            message = FrameResults(
                stream.stream_id, seqs, result.predictions[rows], batch.variant, node.name, outputs=mine
            )
            out.append(StreamReply(stream.client, message))
            out += self.finish_if_done(stream, now)
        return out, None

    def take_back(self, batch: FrameBatch) -> None:
        """A batch that will not be answered: its frames go back to the front of their queues."""
        by_stream: dict[str, tuple[OpenStream, list[PendingFrame]]] = {}
        for stream, frame in batch.frames:
            by_stream.setdefault(stream.key, (stream, []))[1].append(frame)
        for key, (stream, frames) in by_stream.items():
            if self.core.streams.get(key) is stream:
                stream.requeue(frames)
                self.queued[key] = stream
                self.core.counters["frames_resent"] += len(frames)

"""What goes into the dispatch core and what comes out: typed events, typed instructions, work ids.

Every event carries the time (the core never reads a clock). Instructions say what the shell
must do; the shell does nothing the core did not say, except answer queries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..planner import ExplorationTable, Measurement
from ..planner.joint import Demand, JointPlan
from ..protocol import (
    Answer,
    Cancel,
    Error,
    FrameResults,
    Frames,
    Result,
    Shard,
    ShardResult,
    StreamClose,
    StreamOpen,
    Submit,
)


@dataclass(frozen=True)
class ServedTask:
    """A task the cluster serves: what its inputs are, how it is scored, and the variants that serve it."""

    name: str
    input_shape: tuple[int, ...]
    input_dtype: np.dtype[Any]
    quality: str = "top1"
    variants: frozenset[str] | None = None  # None: every variant in the table (a one-task cluster)
    preprocess: dict[str, Any] = field(
        default_factory=lambda: {"fit": "letterbox", "pad": 0, "layout": "chw"}
    )  # for video frames


# --- work in flight ----------------------------------------------------------------------------
class WorkKind(enum.Enum):
    """What a message to a worker carries; its value is the ``request_id`` of the shard on the wire."""

    SHARD = "shard"  # one shard of one request
    PACK = "pack"  # small requests, several in one message
    FRAMES = "frames"  # a micro-batch of stream frames
    PROFILE = "profile"  # a profiling shard (its answer goes to the profiler, not to a request)


@dataclass(frozen=True)
class WorkId:
    """Names one message to one worker; the worker echoes it in its answer."""

    kind: WorkKind
    number: int  # unique per kind in this core (profiling: the profiler's own numbering)
    attempt: int = 0  # a request shard's attempt (a shard sent again is a new attempt)

    def shard(self, variant: str, inputs: np.ndarray, outputs: str = "predictions") -> Shard:
        """The message that carries this work."""
        return Shard(self.kind.value, self.number, self.attempt, variant, inputs, outputs)

    @classmethod
    def of(cls, message: Shard | ShardResult | Error) -> WorkId | None:
        """The work a message or a worker's answer is for, or None when it names none we send."""
        try:
            return cls(WorkKind(message.request_id), message.shard_id, message.attempt)
        except ValueError:
            return None


# --- events ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestOpened:
    client: bytes  # routing id of the client that sent it
    submit: Submit
    now: float
    owner: str | None = None  # who sent it, when CURVE says (its key's name); None: the connection is all we know


@dataclass(frozen=True)
class RequestCancelled:
    client: bytes
    cancel: Cancel
    now: float


@dataclass(frozen=True)
class ClientGone:
    """A client is gone or cut off (it stopped reading): its requests and streams are dropped."""

    client: bytes
    reason: str
    now: float


@dataclass(frozen=True)
class ShardReturned:
    node: str
    result: ShardResult
    now: float


@dataclass(frozen=True)
class ShardRefused:
    node: str
    error: Error
    now: float


@dataclass(frozen=True)
class NodeRegistered:
    node: str
    variants: tuple[str, ...]
    now: float


@dataclass(frozen=True)
class ProfileShardWanted:
    """The profiler wants ``inputs`` run at ``variant`` on ``node``; its answer comes back as ``ProfileAnswer``."""

    node: str
    number: int  # the profiler's own name for it
    variant: str
    inputs: np.ndarray
    now: float
    outputs: str = "predictions"  # what the answer carries: as requests of the variant's task ask by default


@dataclass(frozen=True)
class NodeProfiled:
    """A node's measurements arrived: the table changed. A site (a coordinator under this one) sends them
    again when its front moves; they replace its rows, and ``slots`` is how much it takes in flight."""

    node: str
    measurements: dict[str, Measurement]
    now: float
    slots: int | None = None  # messages in flight at most (None: the coordinator's ``window``)
    link_s_per_input: float | None = None  # a site's measured link: seconds to ship it one input (None: unknown)


@dataclass(frozen=True)
class NodeLost:
    node: str
    reason: str
    now: float


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class StartupExpired:
    now: float


@dataclass(frozen=True)
class PlanSolved:
    generation: int
    plan: JointPlan | None  # None when the solve failed
    problem: str  # why it failed, when it did
    now: float


@dataclass(frozen=True)
class StreamOpened:
    client: bytes
    spec: StreamOpen
    now: float
    owner: str | None = None  # as in RequestOpened


@dataclass(frozen=True)
class FramesArrived:
    client: bytes
    frames: Frames
    now: float


@dataclass(frozen=True)
class StreamClosed:
    client: bytes
    close: StreamClose
    now: float


@dataclass(frozen=True)
class ShuttingDown:
    """Refuse new requests from now on; with ``fail_running``, also fail every request still open."""

    fail_running: bool
    now: float


Event = (
    RequestOpened | RequestCancelled | ClientGone | ShardReturned | ShardRefused | NodeRegistered
    | ProfileShardWanted | NodeProfiled | NodeLost | Tick | StartupExpired | PlanSolved | ShuttingDown
    | StreamOpened | FramesArrived | StreamClosed
)  # fmt: skip


# --- instructions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SendShard:
    node: str
    shard: Shard


@dataclass(frozen=True)
class AnswerRequest:
    client: bytes
    result: Result


@dataclass(frozen=True)
class FailRequest:
    client: bytes
    error: Error


@dataclass(frozen=True)
class StreamReply:
    """A message to a stream's client: its admission or close ``Answer``, or answers for frames."""

    client: bytes
    message: Answer | FrameResults


@dataclass(frozen=True)
class WakeAt:
    """Feed the core a ``Tick`` at monotonic time ``at``: frames held for a fuller batch are due then."""

    at: float


@dataclass(frozen=True)
class Replan:
    """Solve ``planner.joint.plan_jointly(table, demands, nodes)`` off the loop; feed back ``PlanSolved``."""

    generation: int
    table: ExplorationTable  # a snapshot: observations go on while it is solved
    demands: tuple[Demand, ...]
    nodes: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class CutOff:
    """Stop serving a worker that keeps returning bad results: drop its link and refuse its messages."""

    node: str
    reason: str


@dataclass(frozen=True)
class ProfileAnswer:
    """A profiling shard's answer (or an ``Error``: refused, or its node lost) for the profiler."""

    node: str
    number: int
    message: ShardResult | Error


Instruction = SendShard | AnswerRequest | FailRequest | StreamReply | WakeAt | Replan | CutOff | ProfileAnswer

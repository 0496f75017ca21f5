"""Typed messages between clients, the coordinator and workers.

Each message is a frozen dataclass; its ``kind`` names it on the wire. Fields typed
``np.ndarray`` travel as raw frames after the msgpack header (see ``codec.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np

PROTOCOL_VERSION = 2


@dataclass(frozen=True)
class Message:
    kind: ClassVar[str]


# --- worker <-> coordinator -------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    """A worker registers: its node name and what it runs on (see ``runtime.describe_runtime``)."""

    kind: ClassVar[str] = "hello"
    node: str
    runtime: dict[str, Any]  # arch, cores, python, os, backend, backend_version, providers, max_opset


@dataclass(frozen=True)
class Welcome(Message):
    """The coordinator accepts a worker: the heartbeat interval, and the node's settings from the
    coordinator's config (``settings.NodeSettings.to_wire``): providers, threads, emulation, variants."""

    kind: ClassVar[str] = "welcome"
    node: str
    heartbeat_s: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchModel(Message):
    """A worker asks for ``length`` bytes of a model file, from ``offset``; answered by a ``ModelChunk``."""

    kind: ClassVar[str] = "fetch_model"
    sha256: str
    offset: int
    length: int


@dataclass(frozen=True)
class ModelChunk(Message):
    """Bytes of a model file the worker was assigned, at ``offset`` of ``total``."""

    kind: ClassVar[str] = "model_chunk"
    sha256: str
    offset: int
    total: int
    data: np.ndarray  # uint8


@dataclass(frozen=True)
class Ready(Message):
    """A worker has its variants loaded and warmed up, and takes work from now on."""

    kind: ClassVar[str] = "ready"
    node: str
    variants: list[str]  # loaded and warmed up
    providers: list[str]  # the execution providers its sessions use, in order
    fingerprint: str  # changes when the node's hardware, settings or models change: keys the profile cache
    warmup_s: float  # session creation, first runs and engine builds, all variants
    warnings: list[str] = field(default_factory=list)  # e.g. a provider that is missing, and what it fell back to
    failed: dict[str, str] = field(default_factory=dict)  # variants that would not load or run, and why


@dataclass(frozen=True)
class SiteFront(Message):
    """A site (a coordinator under a parent, registered there as one node) reports what it can give:
    per variant its throughput and latency with every board on it, the variants dominated by another of
    their task (no faster, no more accurate) left out. Sent after ``ready`` and again when it changes."""

    kind: ClassVar[str] = "site_front"
    node: str
    front: dict[str, Any]  # variant -> {"ips", "latency_ms", "latencies": [[batch, ms], ...]}
    slots: int  # messages in flight that keep its boards busy (its boards' windows, summed)
    boards: int  # serving boards behind it
    link_mbps: float = 0.0  # its link from the parent as it measured it (``LinkProbe``); 0: not measured yet


@dataclass(frozen=True)
class LinkProbe(Message):
    """A site measures its link from the parent: it asks for ``size`` bytes and the parent answers with
    the same ``nonce`` and ``payload`` of that many bytes. The round trips of a small and a large probe
    give the bandwidth (``planner.site.link_mbps_from``)."""

    kind: ClassVar[str] = "link_probe"
    nonce: int
    size: int
    payload: np.ndarray  # uint8; empty in the ask


@dataclass(frozen=True)
class Heartbeat(Message):
    kind: ClassVar[str] = "heartbeat"
    node: str


@dataclass(frozen=True)
class Goodbye(Message):
    """A worker leaves on purpose, or the coordinator tells its workers it is shutting down."""

    kind: ClassVar[str] = "goodbye"
    node: str
    reason: str


@dataclass(frozen=True)
class Shard(Message):
    """A micro-batch of one request for one node, with the variant to run it on."""

    kind: ClassVar[str] = "shard"
    request_id: str
    shard_id: int
    attempt: int
    variant: str
    inputs: np.ndarray
    outputs: str = "predictions"  # what to send back: one of OUTPUT_MODES


@dataclass(frozen=True)
class ShardResult(Message):
    kind: ClassVar[str] = "shard_result"
    request_id: str
    shard_id: int
    attempt: int
    predictions: np.ndarray  # int64 class per input (-1 for a task not scored top1)
    busy_s: float  # time the node spent on the shard, emulated hold included
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # per the shard's ``outputs``, by name
    # Emulated boards only: the host's own compute took longer than the emulated board would have, so
    # this shard's time measures the host, not the board.
    host_bound: bool = False


# --- client <-> coordinator -------------------------------------------------------------


@dataclass(frozen=True)
class Submit(Message):
    """A client's inference request: N inputs and what it wants of them."""

    kind: ClassVar[str] = "submit"
    request_id: str
    inputs: np.ndarray
    target_ips: Optional[float] = None
    min_accuracy: Optional[float] = None
    policy: Optional[str] = None
    # Refuse with ``infeasible`` rather than serve the fastest plan when the target cannot be met.
    strict: bool = False
    outputs: Optional[str] = None  # one of OUTPUT_MODES; none: "predictions" for a top1 task, else "all"
    task: Optional[str] = None  # the application it is for; none: the cluster's default task
    variant: Optional[str] = None  # every input runs this variant of the task (pinned); none: the plan chooses


@dataclass(frozen=True)
class Result(Message):
    """Predictions in input order, the asked-for outputs, which variant on which node ran each input,
    and a report of how the request was served.

    ``provenance`` is (N, 2) int16: per input, an index into ``variants`` and one into ``nodes``.
    """

    kind: ClassVar[str] = "result"
    request_id: str
    predictions: np.ndarray
    provenance: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Cancel(Message):
    """A client gives up a request of its own: its unsent shards are dropped, its late results discarded.

    Answered by nothing (the client has stopped waiting); ``status`` counts it as ``cancelled``.
    """

    kind: ClassVar[str] = "cancel"
    request_id: str


@dataclass(frozen=True)
class Query(Message):
    """A client asks the coordinator about the cluster without running anything.

    Topics: ``status`` (nodes, state, running requests, counters), ``table`` (the exploration
    table), ``plan`` (params ``inputs``, ``target_ips``, ``min_accuracy``, ``policy``), ``models``
    (each task's inputs, outputs and variants, where they are loaded, and its counters).
    """

    kind: ClassVar[str] = "query"
    request_id: str
    topic: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer(Message):
    kind: ClassVar[str] = "answer"
    request_id: str
    data: dict[str, Any] = field(default_factory=dict)


QUERY_TOPICS = ("status", "table", "plan", "models")
# What a request gets back: class per input; the five likeliest classes and their probabilities
# (outputs ``top5`` and ``top5_scores``); or every output of the model, by the model's names.
OUTPUT_MODES = ("predictions", "top5", "all")


# --- streams ------------------------------------------------------------------------------
BACKPRESSURE_POLICIES = ("block", "drop-oldest", "fail")


@dataclass(frozen=True)
class StreamOpen(Message):
    """A client opens a stream of frames at a declared rate; answered by an ``Answer`` or an ``Error``.

    The answer's data: ``admitted``, ``degraded``, ``notes``, ``expected_fps``,
    ``expected_accuracy``, ``queue_frames`` (the most frames the stream may have unanswered),
    ``input_shape`` and ``input_dtype``.
    """

    kind: ClassVar[str] = "stream_open"
    stream_id: str
    target_fps: float
    min_accuracy: Optional[float] = None
    max_latency_ms: Optional[float] = None
    # When the cluster cannot meet the rate and accuracy: refuse (``infeasible``) or admit degraded.
    degrade: bool = False
    backpressure: str = "block"  # one of BACKPRESSURE_POLICIES
    task: Optional[str] = None  # the application it is for; none: the cluster's default task
    outputs: Optional[str] = None  # one of OUTPUT_MODES; none: "predictions" for a top1 task, else "all"

    @property
    def request_id(self) -> str:  # errors about a stream carry its id where a request's would go
        return self.stream_id


@dataclass(frozen=True)
class Frames(Message):
    """Frames of an open stream, numbered ``first_seq``, ``first_seq + 1``, ... in send order."""

    kind: ClassVar[str] = "frames"
    stream_id: str
    first_seq: int
    inputs: np.ndarray

    @property
    def request_id(self) -> str:
        return self.stream_id


@dataclass(frozen=True)
class FrameResults(Message):
    """Answers for some frames of a stream: from one micro-batch, or frames dropped by back-pressure.

    ``dropped`` frames were never run (their predictions are -1); ``reason`` says why.
    """

    kind: ClassVar[str] = "frame_results"
    stream_id: str
    seqs: np.ndarray  # int64 sequence numbers
    predictions: np.ndarray  # int64 class per frame
    variant: str
    node: str
    dropped: bool = False
    reason: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # the asked-for outputs, a row per frame


@dataclass(frozen=True)
class PackedFrames(Message):
    """Consecutive ``Frames`` of one bundle, as columns (see ``packing``): stream ``stream_ids[i]`` gets the
    next ``counts[i]`` rows of ``inputs``, numbered from ``first_seqs[i]``. Unpacked by the receiving codec."""

    kind: ClassVar[str] = "frames_packed"
    stream_ids: list[str]
    first_seqs: list[int]
    counts: list[int]
    inputs: np.ndarray


@dataclass(frozen=True)
class PackedFrameResults(Message):
    """Consecutive ``FrameResults`` of one bundle that share variant, node and outputs, as columns: stream
    ``stream_ids[i]`` gets the next ``counts[i]`` rows of ``seqs``, ``predictions`` and each output."""

    kind: ClassVar[str] = "frame_results_packed"
    stream_ids: list[str]
    counts: list[int]
    seqs: np.ndarray
    predictions: np.ndarray
    variant: str
    node: str
    dropped: bool = False
    reason: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamClose(Message):
    """The client sends no more frames; the coordinator answers the rest, then an ``Answer`` with the summary."""

    kind: ClassVar[str] = "stream_close"
    stream_id: str

    @property
    def request_id(self) -> str:
        return self.stream_id


# --- either direction --------------------------------------------------------------------


@dataclass(frozen=True)
class Error(Message):
    """Something a peer sent could not be served. ``code`` is one of ``ERROR_CODES``."""

    kind: ClassVar[str] = "error"
    code: str
    message: str
    request_id: str = ""
    shard_id: int = -1
    attempt: int = 0


ERROR_CODES = (
    "protocol",  # malformed or unknown message
    "invalid_input",  # inputs do not fit the model: not retryable
    "unknown_variant",  # the node has no such variant: not retryable on that node
    "unknown_model",  # a worker asked for a model file that is not one of its variants'
    "refused",  # registration refused (e.g. duplicate node name)
    "unregistered",  # the coordinator does not know this worker (it restarted): register again
    "infeasible",  # a strict request's target or minimum accuracy cannot be met by any plan
    "node_lost",  # a shard failed too often on dying nodes
    "shutting_down",  # the coordinator is stopping: the request was not (or not fully) served
    "busy",  # over capacity
    "internal",
)

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.kind: cls
    for cls in (
        Hello, Welcome, FetchModel, ModelChunk, Ready, SiteFront, LinkProbe, Heartbeat, Goodbye, Shard, ShardResult,
        Submit, Result, Cancel, Query, Answer, Error,
        StreamOpen, Frames, FrameResults, PackedFrames, PackedFrameResults, StreamClose,
    )
}  # fmt: skip

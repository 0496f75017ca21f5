"""The dispatch core: every scheduling decision of the coordinator, as a pure state machine.

``DispatchCore.handle(event)`` is the one entry point. It takes a typed event (a request
opened, a shard's result or refusal, a node registered, profiled or lost, a timer, a joint
plan solved, shutdown) and returns typed instructions (send a shard, answer a request,
fail it, solve a new joint plan). It does no I/O and never reads a clock: every event
carries the time. ``server.py`` reads the sockets, feeds events and carries out the
instructions; tests feed events and assert instructions.

Scheduling, in short:

* **One joint plan** (``planner/joint.py``) covers every running request with the
  ``adaptive`` or ``mixed`` policy, plus the pooled traffic of small requests. It is solved
  off the event loop (``Replan``) when the running work or the table changed materially:
  a large request arrives or finishes while others run, a node joins, is lost or drifts,
  or the small-request rate moves by half. At most one solve is out at a time; changes
  meanwhile are folded into the next one.
* **Small requests** (at most ``shard_size`` inputs) never wait for a solve: they queue in
  one FIFO, and the first node with a free slot takes the next one, at the variant the
  current plan runs there (see ``_small_variant``).
* **Per-node ready queues.** A large request's shards are cut by its plan's shares into
  per-node queues (``RequestRun``) but bound to a node only when sent: until then a
  re-plan may re-cut them, a lost node's queue becomes anyone's, and an idle node may
  steal the tail. A node has at most ``window`` shards in flight; when a slot frees, the
  requests with work for it are served in proportion to the node time the plan gives
  each (stride scheduling), so each gets its planned rate and unused time goes to the rest.
* **Streams** (``streams.py`` keeps their book) are latency-bound demands of the plan, pooled
  by their conditions. Their frames go first: a free node takes the frames due soonest that
  run the same variant there, as one micro-batch no larger than the soonest deadline allows
  (``plan_batch``); small requests that queued while every node was busy go out together too.
* **Exactly once** by (request, shard, attempt), as ``RequestRun`` keeps it; a frame is in
  one queue or one micro-batch at a time, and a batch's answer is taken only while it is out.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import CoordinatorConfig
from ..planner import (
    ADAPTS_AT_RUN_TIME,
    Assignment,
    ExplorationTable,
    Measurement,
    Plan,
    PlanningError,
    PlanRequest,
    make_plan,
)
from ..planner.joint import LATENCY_SHARE, Demand, DemandPlan, JointPlan
from ..protocol import (
    OUTPUT_MODES,
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
from .ownership import principal, scoped_key
from .request_run import RequestRun, ShardFailed, ShardTask
from .resource_manager import NotReady, ResourceManager, shard_cost_s
from .streams import FrameBatch, OpenStream, PendingFrame, coalesce, plan_batch
from .validation import check_frames, check_stream_open, check_submit

log = logging.getLogger(__name__)

# Worker errors that sending the shard again would not fix.
NON_RETRYABLE = ("invalid_input", "unknown_variant")
# Drift re-plans are at most this frequent.
DRIFT_REPLAN_INTERVAL_S = 0.5
# The pooled rate of small requests is measured over this window; a change by this factor
# from what the plan assumed (at most once per interval) asks for a new plan.
SMALL_RATE_WINDOW_S = 2.0
SMALL_RATE_CHANGE = 0.5
SMALL_REPLAN_INTERVAL_S = 1.0
# The plan reserves this much more than the measured small-request rate, and at least this rate.
SMALL_RATE_MARGIN = 1.5
SMALL_MIN_RATE = 5.0
SMALL_DEMAND = "small:requests"  # demand keys with ':' cannot be a client's id
# A worker that returns this many malformed results in a row is cut off (its work goes elsewhere).
MAX_BAD_RESULTS = 3


def small_demand(task: str, default: str) -> str:
    """The pooled small requests' demand key of a task (the default task's is SMALL_DEMAND)."""
    return SMALL_DEMAND if task == default else f"{SMALL_DEMAND} {task}"


@dataclass(frozen=True)
class ServedTask:
    """A task the cluster serves: what its inputs are, how it is scored, and the variants that serve it."""

    name: str
    input_shape: tuple[int, ...]
    input_dtype: np.dtype[Any]
    quality: str = "top1"
    variants: frozenset[str] | None = None  # None: every variant in the table (a one-task cluster)


# A request's weight on a node its plan does not use (it runs there only orphans or steals).
STRAY_WEIGHT = 0.01
# Micro-batches of stream frames travel as shards of this pseudo request (client ids may not hold ':').
FRAMES_REQUEST = "frames:"
# ... and micro-batches of small requests as shards of this one.
PACK_REQUEST = "pack:"
# Only shards at least this fraction of ``shard_size`` teach the table: the rows are measured at
# that size, and a one-input shard's time is mostly fixed cost.
OBSERVE_MIN_FILL = 0.5
# A shard holds at most this many times ``shard_size`` inputs (see _shard_size); a request of at
# most that many inputs is small.
MAX_SHARD_FACTOR = 8
# Micro-batches of frames teach it from this size on, against the round trip expected at their size.
OBSERVE_MIN_BATCH = 4


# --- events ------------------------------------------------------------------------------
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
class NodeProfiled:
    """A node's measurements arrived (first profile or a re-profile): the table changed."""

    node: str
    measurements: dict[str, Measurement]
    now: float


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
    RequestOpened | RequestCancelled | ClientGone | ShardReturned | ShardRefused | NodeRegistered | NodeProfiled
    | NodeLost | Tick | StartupExpired | PlanSolved | ShuttingDown | StreamOpened | FramesArrived | StreamClosed
)  # fmt: skip


# --- instructions --------------------------------------------------------------------------
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


Instruction = SendShard | AnswerRequest | FailRequest | StreamReply | WakeAt | Replan | CutOff


# --- state ---------------------------------------------------------------------------------
@dataclass
class NodeSlot:
    name: str
    variants: tuple[str, ...]  # variants the worker loaded
    # (request id, shard id, attempt) -> (when sent, its shard) for every shard sent and not answered
    in_flight: dict[tuple[str, int, int], tuple[float, ShardTask]] = field(default_factory=dict)
    batches: dict[int, FrameBatch] = field(default_factory=dict)  # micro-batches of frames in flight, by id
    # micro-batches of small requests in flight, by id: the in_flight keys of the shards they carry
    packs: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)
    last_result_at: float | None = None  # when its latest shard result arrived
    # Shards taken from it when it stalled, by the in_flight key: (the shard, the variant it ran here).
    # If it answers one before the shard's new attempt does, its answer is the one that counts.
    stalled: dict[tuple[str, int, int], tuple[ShardTask, str]] = field(default_factory=dict)
    bad_streak: int = 0  # malformed results (wrong shape, dtype or length, NaN outputs) or refusals in a row
    clock: float = 0.0  # stride scheduling: the pass of the latest request served here

    @property
    def busy(self) -> int:
        """Messages in flight: shards, and micro-batches of frames or of small requests (each counts once)."""
        packed = sum(len(keys) for keys in self.packs.values())
        return len(self.in_flight) - packed + len(self.packs) + len(self.batches)


@dataclass
class OpenRequest:
    client: bytes
    submit: Submit
    request: PlanRequest
    policy: str
    arrived: float
    small: bool  # served from the current plan without a solve
    outputs: str = "predictions"  # what its shards bring back: one of OUTPUT_MODES
    task: str = ""  # the task it is for
    status: str = "waiting"  # waiting (for the cluster) | planning | queued (small) | running
    run: RequestRun | None = None
    first_plan: Plan | None = None
    dispatch_started: float | None = None
    weights: dict[str, float] = field(default_factory=dict)  # node -> planned fraction of its time
    passes: dict[str, float] = field(default_factory=dict)  # node -> stride-scheduling pass
    owner: str = ""  # who may see it in status (see principal)
    key: str = field(init=False)  # the core's name for it: requests, shards, demands

    def __post_init__(self) -> None:
        self.key = scoped_key(self.client, self.submit.request_id)

    @property
    def request_id(self) -> str:
        """The id its client gave it, in every answer to that client."""
        return self.submit.request_id

    @property
    def done_inputs(self) -> int:
        return self.run.predicted_inputs if self.run else 0

    @property
    def joint(self) -> bool:
        """Planned in the joint plan (and so re-planned at run time)."""
        return not self.small and self.policy in ADAPTS_AT_RUN_TIME


class DispatchCore:
    """The coordinator's scheduling state; change it only through ``handle``."""

    def __init__(
        self,
        settings: CoordinatorConfig,
        rm: ResourceManager,
        tasks: Sequence[ServedTask],
    ) -> None:
        self.settings = settings
        self.tasks = {t.name: t for t in tasks}  # the tasks served; requests and streams name theirs
        self.default_task = tasks[0].name  # for requests and streams that name none
        self.rm = rm  # cluster life cycle and the exploration table
        self.nodes: dict[str, NodeSlot] = {}  # registered nodes; usable once rm has profiled them
        self.requests: dict[str, OpenRequest] = {}  # every admitted request not yet answered; ≤ max_requests
        self.small_queue: deque[str] = deque()  # ids of small requests not yet sent, in arrival order
        self.streams: dict[str, OpenStream] = {}  # every stream opened and not yet closed or failed
        self._batch_ids = 0  # of the latest micro-batch of frames or of small requests
        self._stream_variants: dict[tuple[str, str], str | None] = {}  # (pool, node) -> variant; per plan
        self._next_wake: float | None = None  # the earliest WakeAt asked for and not yet past
        self.plan: JointPlan | None = None  # the latest joint plan adopted
        self.generation = 0  # of the latest Replan issued
        self.solving = False  # a Replan is out and its PlanSolved not yet seen
        self.replan_reason: str | None = None  # why the next solve is wanted; None when none is
        self.draining = False  # shutting down: new requests are refused
        self.counters: Counter[str] = Counter()  # replans, solves, late replies, nodes lost, ...
        self.outcomes: Counter[str] = Counter()  # requests answered, by outcome ("completed" or an error code)
        self.last_request: dict[str, float] = {}  # expected and achieved figures of the last large request
        self._small_arrivals: deque[tuple[float, int, str]] = deque()  # (time, inputs, task) in SMALL_RATE_WINDOW_S
        self._small_inputs_in_window: Counter[str] = Counter()  # per task
        self._small_rate_planned: dict[str, float] = {}  # per task: the small-request rate the plan reserves for
        self._last_small_replan = float("-inf")
        self._last_drift_replan = float("-inf")
        self._out: list[Instruction] = []

    # --- the one entry point ---------------------------------------------------------------
    def handle(self, event: Event) -> list[Instruction]:
        self._out = []
        if isinstance(event, RequestOpened):
            self._opened(event)
        elif isinstance(event, RequestCancelled):
            self._cancelled(event)
        elif isinstance(event, ClientGone):
            self._client_gone(event)
        elif isinstance(event, ShardReturned):
            self._returned(event)
        elif isinstance(event, ShardRefused):
            self._refused(event)
        elif isinstance(event, NodeRegistered):
            self.nodes[event.node] = NodeSlot(event.node, tuple(event.variants))
            self.rm.node_joined(event.node)
        elif isinstance(event, NodeProfiled):
            self._profiled(event)
        elif isinstance(event, NodeLost):
            self._lost(event.node, event.reason, event.now)
        elif isinstance(event, Tick):
            if self._next_wake is not None and event.now >= self._next_wake:
                self._next_wake = None
            self._tick(event.now)
        elif isinstance(event, StartupExpired):
            self.rm.expire_startup()
            self._start_waiting(event.now)
        elif isinstance(event, PlanSolved):
            self._solved(event)
        elif isinstance(event, ShuttingDown):
            self._shutting_down(event)
        elif isinstance(event, StreamOpened):
            self._stream_opened(event)
        elif isinstance(event, FramesArrived):
            self._frames_arrived(event)
        elif isinstance(event, StreamClosed):
            self._stream_closed(event)
        self._maybe_replan(event.now)
        self._fill(event.now)
        out, self._out = self._out, []
        return out

    # --- requests ----------------------------------------------------------------------------
    def _opened(self, event: RequestOpened) -> None:
        submit = event.submit
        rid = submit.request_id
        task, problem = self._task_named(submit.task)
        if task is not None:
            problem = check_submit(submit, task.input_shape, task.input_dtype)
        outputs, wrong = _outputs_mode(task, submit.outputs)
        problem = problem or wrong
        key = scoped_key(event.client, rid)
        if problem is None and (key in self.requests or key in self.streams):
            problem = f"request_id {rid!r} is already running; every request needs its own id"
        if problem is not None:
            self._answer_error(event.client, Error("invalid_input", problem, rid))
            return
        if self.draining:
            why = "the coordinator is shutting down; submit again when it is back"
            self._answer_error(event.client, Error("shutting_down", why, rid))
            return
        if len(self.requests) >= self.settings.max_requests:
            self.counters["busy"] += 1
            why = f"the coordinator is serving its limit of {self.settings.max_requests} requests; retry later"
            self._answer_error(event.client, Error("busy", why, rid))
            return
        held = sum(r.submit.inputs.nbytes for r in self.requests.values())
        if held + submit.inputs.nbytes > self.settings.max_input_bytes:
            self.counters["busy"] += 1
            why = (
                f"the coordinator holds {held:,} bytes of inputs; this request's {submit.inputs.nbytes:,} would pass"
                f" its limit of {self.settings.max_input_bytes:,} (max_input_bytes); retry later or send fewer inputs"
            )
            self._answer_error(event.client, Error("busy", why, rid))
            return
        policy = submit.policy or self.settings.policy
        request = PlanRequest(len(submit.inputs), submit.target_ips, submit.min_accuracy)
        # A few inputs with no conditions of their own fit whatever plan is running: no solve for them.
        # Up to one shard, a target is met by sending it at once; beyond, only a request without a
        # target is served that way (one with a target is planned, so the report says if it is met).
        inputs = len(submit.inputs)
        small = (
            inputs <= self.settings.shard_size * (MAX_SHARD_FACTOR if submit.target_ips is None else 1)
            and policy in ADAPTS_AT_RUN_TIME
            and submit.min_accuracy is None
            and not submit.strict
        )
        assert task is not None
        r = OpenRequest(
            event.client, submit, request, policy, event.now, small, outputs=outputs, task=task.name,
            owner=principal(event.client, event.owner),
        )  # fmt: skip
        self.requests[r.key] = r
        if self.rm.accepts_requests():
            self._start(r, event.now)

    def _task_named(self, name: str | None) -> tuple[ServedTask | None, str | None]:
        """The task a request or stream names (none: the default), or why there is none."""
        task = self.tasks.get(name or self.default_task)
        if task is None:
            return (
                None,
                f"task must be one of {', '.join(self.tasks)} (the tasks this cluster serves), or none; got {name!r}",
            )
        return task, None

    def _start_waiting(self, now: float) -> None:
        if not self.rm.accepts_requests():
            return
        for open_request in [r for r in self.requests.values() if r.status == "waiting"]:
            self._start(open_request, now)
        for stream in [s for s in self.streams.values() if s.status == "waiting"]:
            self._admit(stream)

    def _start(self, r: OpenRequest, now: float) -> None:
        if r.small:  # served from the running plan: the resource manager's state is not about them
            r.status = "queued"
            self.small_queue.append(r.key)
            self._count_small(r.request.inputs, r.task, now)
            return
        self.rm.request_started(r.key)
        if r.joint:
            r.status = "planning"
            self._want_replan(f"request {r.request_id[:8]} arrived")
            return
        # The baselines plan alone, on the whole cluster, and follow that plan (no solve: they are cheap).
        try:
            table = self.rm.table.only(self.tasks[r.task].variants)
            plan = make_plan(r.policy, table, r.request, self.rm.usable_nodes())
        except PlanningError as exc:
            self._fail(r, Error("invalid_input", str(exc), r.request_id))
            return
        self._run(r, plan, now)

    def _run(self, r: OpenRequest, plan: Plan, now: float) -> None:
        if r.submit.strict and not plan.feasible:
            why = "; ".join(plan.notes) or "no plan meets it"
            self._fail(
                r,
                Error(
                    "infeasible",
                    f"cannot meet target_ips={r.request.target_ips} min_accuracy={r.request.min_accuracy} on the "
                    f"cluster as it is (the best plan gives {plan.expected_ips:,.0f} inf/s at "
                    f"{plan.expected_accuracy * 100:.2f} %): {why}",
                    r.request_id,
                ),
            )
            return
        sizes = {(a.node, a.variant): self._shard_size(a.node, a.variant) for a in plan.assignments}
        r.run = RequestRun(r.request_id, plan, self.settings.shard_size, r.arrived, sizes)
        r.first_plan = plan
        r.status = "running"
        r.dispatch_started = now
        r.weights = _weights(plan, self.rm.table)

    def _finish(self, r: OpenRequest, now: float) -> None:
        run = r.run
        assert run is not None and r.first_plan is not None
        self._close(r)
        if not r.small and run.replans == 0:  # a re-planned request's first plan no longer says what to expect
            self.rm.request_outcome(r.first_plan, run.total_inputs / run.wall_seconds())
        report = self._report(r)
        self.counters["inputs_served"] += run.total_inputs
        if not r.small:
            self.last_request = {k: float(report[k]) for k in ("expected_ips", "achieved_ips", "expected_accuracy")}
            if any(o.joint and o.status == "running" for o in self.requests.values()):
                self._want_replan(f"request {r.request_id[:8]} finished")
        self.outcomes["completed"] += 1
        result = Result(
            r.request_id, run.predictions, run.provenance, report, run.outputs, run.variant_names, run.node_names
        )
        self._out.append(AnswerRequest(r.client, result))

    def _cancelled(self, event: RequestCancelled) -> None:
        """A client gave up a request or stream: forget it (nothing more is sent, late results are
        discarded; a stream's queued frames are not answered). Another client's, or one already
        answered, is left alone."""
        key = scoped_key(event.client, event.cancel.request_id)
        r = self.requests.get(key)
        if r is None:
            stream = self.streams.get(key)
            if stream is None:
                self.counters["cancels_ignored"] += 1
                return
            self.outcomes["stream_cancelled"] += 1
            self.counters["frames_cancelled"] += stream.outstanding
            self._forget_stream(stream)
            return
        planned = r.joint and r.status in ("planning", "running")
        self.outcomes["cancelled"] += 1
        self._close(r)
        if planned and any(o.joint for o in self.requests.values()):
            self._want_replan(f"request {r.request_id[:8]} cancelled")  # its share of the boards is free

    def _client_gone(self, event: ClientGone) -> None:
        """Drop everything of a client that is gone: nothing more of it is dispatched; its boards are free."""
        mine = [r for r in self.requests.values() if r.client == event.client]
        for r in mine:
            self.outcomes["client_gone"] += 1
            self._close(r)
        for stream in [s for s in self.streams.values() if s.client == event.client]:
            self.counters["frames_failed"] += stream.outstanding
            self._forget_stream(stream)
        if mine and any(o.joint for o in self.requests.values()):
            self._want_replan(f"a client is gone ({event.reason})")

    def _fail(self, r: OpenRequest, error: Error) -> None:
        self._close(r)
        self._answer_error(r.client, error)

    def _close(self, r: OpenRequest) -> None:
        """Forget a request: late results for it are discarded; nothing of it is sent again."""
        self.requests.pop(r.key, None)
        if not r.small:
            self.rm.finish_request(r.key)
        r.status = "closed"

    def _answer_error(self, client: bytes, error: Error) -> None:
        self.outcomes[error.code] += 1
        self._out.append(FailRequest(client, error))

    # --- streams -------------------------------------------------------------------------------
    def _stream_opened(self, event: StreamOpened) -> None:
        spec = event.spec
        sid = spec.stream_id
        task, problem = self._task_named(spec.task)
        problem = problem or check_stream_open(spec)
        outputs, wrong = _outputs_mode(task, spec.outputs)
        problem = problem or wrong
        key = scoped_key(event.client, sid)
        if problem is None and (key in self.streams or key in self.requests):
            problem = f"stream_id {sid!r} is already open; every stream needs its own id"
        if problem is not None:
            self._answer_error(event.client, Error("invalid_input", problem, sid))
            return
        if self.draining:
            self._answer_error(event.client, Error("shutting_down", "the coordinator is shutting down", sid))
            return
        if len(self.streams) >= self.settings.max_streams:
            self.counters["busy"] += 1
            why = f"the coordinator is serving its limit of {self.settings.max_streams} streams; retry later"
            self._answer_error(event.client, Error("busy", why, sid))
            return
        latency_ms = spec.max_latency_ms if spec.max_latency_ms is not None else self.settings.stream_latency_ms
        assert task is not None
        label = "" if task.name == self.default_task else task.name
        queue = self.settings.stream_queue_frames
        owner = principal(event.client, event.owner)
        stream = OpenStream(event.client, spec, event.now, latency_ms / 1e3, queue, label, outputs, owner=owner)
        self.streams[stream.key] = stream
        if self.rm.accepts_requests():
            self._admit(stream)

    def _admit(self, stream: OpenStream) -> None:
        """A stream is admitted by the next joint plan (see ``_solved``): its rate is a demand of it."""
        stream.status = "planning"
        self.rm.request_started(stream.key)
        self._want_replan(f"stream {stream.stream_id[:8]} opened")

    def _stream_admitted(self, stream: OpenStream, demand: DemandPlan) -> None:
        spec = stream.spec
        declared = sum(
            s.spec.target_fps for s in self.streams.values() if s.pool == stream.pool and s.status != "waiting"
        )
        # The pool's plan, in this stream's proportion of the pool's declared rate.
        expected_fps = demand.expected_ips * spec.target_fps / declared if declared > 0 else 0.0
        if not demand.feasible and not spec.degrade:
            why = "; ".join(demand.notes) or "no plan meets it"
            self._fail_stream(
                stream,
                Error(
                    "infeasible",
                    f"cannot serve {spec.target_fps:g} fps at min_accuracy={spec.min_accuracy} within "
                    f"{stream.max_latency_s * 1e3:g} ms next to the work running now (the best plan gives it "
                    f"{expected_fps:,.1f} fps at {demand.expected_accuracy * 100:.2f} %): {why}; open it with "
                    "degrade=True (the CLI: --degrade) to be served anyway",
                    stream.stream_id,
                ),
            )
            return
        stream.status = "open"
        stream.degraded = not demand.feasible
        stream.notes = demand.notes
        answer = {
            "admitted": True,
            "degraded": stream.degraded,
            "notes": list(demand.notes),
            "expected_fps": expected_fps,
            "expected_accuracy": demand.expected_accuracy,
            "max_latency_ms": stream.max_latency_s * 1e3,
            "queue_frames": stream.queue_frames,
            "input_shape": list(self._stream_task(stream).input_shape),
            "input_dtype": self._stream_task(stream).input_dtype.name,
        }
        self._out.append(StreamReply(stream.client, Answer(stream.stream_id, answer)))

    def _frames_arrived(self, event: FramesArrived) -> None:
        frames = event.frames
        stream = self.streams.get(scoped_key(event.client, frames.stream_id))
        problem = None
        if stream is None:
            problem = f"stream_id {frames.stream_id!r} is not an open stream of this client"
        elif stream.status == "closing":
            problem = f"stream {frames.stream_id!r} is closing: no frames may follow its close"
        elif stream.status != "open":
            problem = f"stream {frames.stream_id!r} is not admitted yet: wait for the answer to its open"
        else:
            task = self._stream_task(stream)
            problem = check_frames(frames, stream.next_seq, task.input_shape, task.input_dtype)
        if stream is None or problem is not None:
            self.counters["frames_refused"] += len(frames.inputs) if frames.inputs.ndim else 0
            self._answer_error(event.client, Error("invalid_input", problem or "", frames.stream_id))
            return
        accepted = stream.accept(frames.first_seq, frames.inputs, event.now)
        if accepted.failure is not None:
            self.counters["frames_dropped"] += len(frames.inputs)
            self._fail_stream(stream, Error("busy", accepted.failure, stream.stream_id))
            return
        if accepted.dropped:
            self.counters["frames_dropped"] += len(accepted.dropped)
            seqs = np.array(accepted.dropped, np.int64)
            dropped = FrameResults(
                stream.stream_id, seqs, np.full(len(seqs), -1, np.int64), "", "", True, accepted.reason
            )
            self._out.append(StreamReply(stream.client, dropped))

    def _stream_task(self, stream: OpenStream) -> ServedTask:
        return self.tasks[stream.task or self.default_task]

    def _stream_closed(self, event: StreamClosed) -> None:
        sid = event.close.stream_id
        stream = self.streams.get(scoped_key(event.client, sid))
        if stream is None:
            self._answer_error(event.client, Error("invalid_input", f"stream_id {sid!r} is not an open stream", sid))
            return
        stream.status = "closing"  # closed before admission too: it has no frames, and its answer is the summary
        self._finish_stream_if_done(stream, event.now)

    def _finish_stream_if_done(self, stream: OpenStream, now: float) -> None:
        if not stream.done:
            return
        self._forget_stream(stream)
        self.outcomes["stream_closed"] += 1
        self._out.append(StreamReply(stream.client, Answer(stream.stream_id, stream.summary(now))))

    def _fail_stream(self, stream: OpenStream, error: Error) -> None:
        self.counters["frames_failed"] += stream.outstanding
        self._forget_stream(stream)
        self._answer_error(stream.client, error)

    def _forget_stream(self, stream: OpenStream) -> None:
        """A closed or failed stream: late answers for its frames are discarded; its demand leaves the plan."""
        if self.streams.pop(stream.key, None) is None:
            return
        self.rm.finish_request(stream.key)
        stream.pending.clear()
        if any(o.joint for o in self.requests.values()) or self.streams:
            self._want_replan(f"stream {stream.stream_id[:8]} closed")

    def _stream_variant(self, stream: OpenStream, slot: NodeSlot) -> str | None:
        """The variant a stream's frames run on a node: its share's in the plan; on a node the plan gives
        it no share, the most accurate variant planned there that answers fast enough; else none."""
        key = (stream.pool, slot.name)
        if key in self._stream_variants:
            return self._stream_variants[key]
        table = self.rm.table
        allowed = self._stream_task(stream).variants  # its task's
        fast_enough = [
            v
            for v in table.variants_of(slot.name)
            if v in slot.variants
            and (allowed is None or v in allowed)
            and table.latency_s(slot.name, v, 1) <= LATENCY_SHARE * stream.max_latency_s
        ]
        chosen = None
        demand = self.plan.demands.get(stream.pool) if self.plan else None
        mine = demand.variant_on(slot.name) if demand else None
        if mine in fast_enough:
            chosen = mine
        elif fast_enough:
            plans = self.plan.demands.values() if self.plan else ()
            planned = {share.variant for d in plans for share in d.shares if share.node == slot.name}
            usable = [v for v in fast_enough if v in planned] or fast_enough
            chosen = max(usable, key=lambda v: table.accuracy[v])
        self._stream_variants[key] = chosen
        return chosen

    def _send_frames(self, slot: NodeSlot, now: float) -> bool:
        """Send a node the micro-batch of frames due soonest that it can run in time, if any waits."""
        due: tuple[float, tuple[str, str], OpenStream] | None = None
        # Frames of streams that run the same variant here and want the same outputs ride together.
        by_variant: dict[tuple[str, str], list[OpenStream]] = {}
        for stream in self.streams.values():
            if not stream.pending:
                continue
            variant = self._stream_variant(stream, slot)
            if variant is None:
                continue
            by_variant.setdefault((variant, stream.outputs), []).append(stream)
            head = stream.pending[0].deadline
            if due is None or head < due[0]:
                due = (head, (variant, stream.outputs), stream)
        if due is None:
            return False
        _, (variant, outputs), first = due
        # The batch waits behind what the node has in flight, then must answer by the soonest deadline.
        table = self.rm.table
        start = max((b.expected_done for b in slot.batches.values()), default=now)
        for sent_at, shard in slot.in_flight.values():
            start = max(start, sent_at + shard.size * table.seconds_per_input(slot.name, shard.variant))
        start = max(start, now)
        streams = by_variant[(variant, outputs)]
        waiting = sum(len(s.pending) for s in streams)
        most = self.settings.shard_size
        size, send_by = plan_batch(
            table, slot.name, variant, waiting, now, start, first.pending[0], first.max_latency_s, most
        )
        if size == 0:
            self._wake_at(send_by)
            return False
        frames = coalesce(streams, size)
        self._batch_ids += 1
        expected_done = start + table.latency_s(slot.name, variant, len(frames))
        batch = FrameBatch(self._batch_ids, slot.name, variant, frames, now, expected_done, slot.busy == 0)
        slot.batches[batch.batch_id] = batch
        inputs = np.stack([f.data for _, f in frames])
        self.counters["frame_batches"] += 1
        message = Shard(FRAMES_REQUEST, batch.batch_id, 0, variant, inputs, outputs)
        self._out.append(SendShard(slot.name, message))
        return True

    def _wake_at(self, when: float) -> None:
        """Ask for a ``Tick`` at ``when`` (one is enough when an earlier one is already asked for)."""
        if self._next_wake is None or when < self._next_wake:
            self._next_wake = when
            self._out.append(WakeAt(when))

    def _batch_returned(self, slot: NodeSlot, result: ShardResult, now: float) -> None:
        batch = slot.batches.pop(result.shard_id, None)
        if batch is None or result.attempt != 0:
            self.counters["late_replies"] += 1
            return
        predictions, outputs, count = result.predictions, result.outputs, len(batch.frames)
        wanted = batch.frames[0][0].outputs
        if (
            _not_a_class_per_input(predictions, count)
            or (wanted == "predictions") != (not outputs)
            or _not_a_row_per_input(outputs, count)
            or _nan_in(outputs)
        ):
            log.warning("dispatch: %s returned predictions %s of shape %s and outputs %s for a batch of %d frames;"
                        " sending them again", slot.name, predictions.dtype, predictions.shape, sorted(outputs),
                        count)  # fmt: skip
            self._requeue_batch(batch)
            self._strike(slot, f"a malformed result for a batch of {count} frames")
            return
        slot.bad_streak = 0
        if batch.alone:
            self._observe(slot, batch.variant, len(batch.frames), batch.sent_at, result.busy_s, now, batch=True)
        else:
            slot.last_result_at = now
        accuracy = self.rm.table.accuracy.get(batch.variant, 0.0)
        by_stream: dict[str, tuple[OpenStream, list[PendingFrame], list[int]]] = {}
        for row, (stream, frame) in enumerate(batch.frames):
            _, frames, rows = by_stream.setdefault(stream.key, (stream, [], []))
            frames.append(frame)
            rows.append(row)
        for key, (stream, frames, rows) in by_stream.items():
            if self.streams.get(key) is not stream:
                continue  # failed or gone meanwhile: nobody waits for these answers
            stream.answered(frames, batch.variant, accuracy, now)
            self.counters["frames_served"] += len(frames)
            seqs = np.fromiter((f.seq for f in frames), np.int64, len(frames))
            mine = {name: tensor[rows] for name, tensor in outputs.items()}
            message = FrameResults(stream.stream_id, seqs, predictions[rows], batch.variant, slot.name, outputs=mine)
            self._out.append(StreamReply(stream.client, message))
            self._finish_stream_if_done(stream, now)

    def _requeue_batch(self, batch: FrameBatch) -> None:
        by_stream: dict[str, tuple[OpenStream, list[PendingFrame]]] = {}
        for stream, frame in batch.frames:
            by_stream.setdefault(stream.key, (stream, []))[1].append(frame)
        for key, (stream, frames) in by_stream.items():
            if self.streams.get(key) is stream:
                stream.requeue(frames)
                self.counters["frames_resent"] += len(frames)

    def streams_status(self, now: float) -> list[dict[str, Any]]:
        return [s.summary(now) for s in self.streams.values()]

    # --- results -------------------------------------------------------------------------------
    def _observe(
        self, slot: NodeSlot, variant: str, size: int, sent_at: float, busy_s: float, now: float, batch: bool = False
    ) -> None:
        """Teach the table what a shard cost its node; a drift asks for a new plan.

        A micro-batch of frames sent to an idle node is compared with the round trip the table
        expects at its size (profiled one shard at a time), and the row scaled by how much slower
        or faster it was; one that queued behind others says little, and is not used.
        """
        seconds = now - sent_at if batch else shard_cost_s(sent_at, slot.last_result_at, now, busy_s)
        slot.last_result_at = now
        if seconds <= 0:
            return
        evidence = 1.0
        if batch and size >= OBSERVE_MIN_BATCH:
            expected = self.rm.table.latency_s(slot.name, variant, size)
            ips = self.rm.table.ips(slot.name, variant) * min(expected / seconds, 1.5)
            evidence = size / self.settings.shard_size  # many small batches: each says little
        elif size >= OBSERVE_MIN_FILL * self.settings.shard_size:
            ips = size / seconds
        else:
            return
        drifted = self.rm.observe(slot.name, variant, ips, min(evidence, 1.0))
        if drifted and self.settings.replan_on_drift and now - self._last_drift_replan >= DRIFT_REPLAN_INTERVAL_S:
            self._last_drift_replan = now
            self._want_replan(f"{slot.name} drifted")

    def _answered(self, node: str) -> None:
        """Any answer from a node: a suspect one is usable again. (``last_result_at`` is left to the result
        paths: ``_observe`` measures a shard's cost from the node's previous result.)"""
        if self.rm.node_answered(node):
            log.warning("dispatch: node %s answers again; it gets work again", node)
            self._stream_variants.clear()
            self._want_replan(f"{node} answers again")

    def _returned(self, event: ShardReturned, from_pack: bool = False) -> None:
        result = event.result
        self._answered(event.node)
        slot = self.nodes.get(event.node)
        if slot is not None and result.request_id == FRAMES_REQUEST:
            self._batch_returned(slot, result, event.now)
            return
        if slot is not None and result.request_id == PACK_REQUEST:
            self._pack_returned(slot, result, event.now)
            return
        key = (result.request_id, result.shard_id, result.attempt)
        sent = slot.in_flight.pop(key, None) if slot else None
        # A stalled node answering after all: its shard was sent again, and the first answer wins.
        superseded = slot.stalled.pop(key, None) if slot is not None and sent is None else None
        r = self.requests.get(result.request_id)
        if slot is None or (sent is None and superseded is None) or r is None or r.run is None:
            self.counters["late_replies"] += 1
            return
        if superseded is not None:
            shard, variant = superseded
        else:
            assert sent is not None
            shard, variant = sent[1], sent[1].variant
        predictions = result.predictions
        problem = None
        if _not_a_class_per_input(predictions, shard.size):
            problem = f"predictions {predictions.dtype} of shape {predictions.shape}"
        elif (r.outputs == "predictions") != (not result.outputs):
            problem = f"outputs {sorted(result.outputs)} where {r.outputs} were asked for"
        elif result.outputs:
            problem = r.run.outputs_problem(result.outputs, shard.size) or _nan_in(result.outputs)
        if problem is not None:
            log.warning("dispatch: %s returned %s for a shard of %d inputs; sending it again",
                        event.node, problem, shard.size)  # fmt: skip
            if superseded is None:  # a superseded attempt is out again already
                self._requeue(r, shard, event.node)
            if not from_pack:
                self._strike(slot, problem)
            return
        slot.bad_streak = 0
        if not r.run.complete(
            shard.shard_id, result.attempt, predictions, event.node, result.busy_s, event.now, result.outputs,
            variant=variant,
        ):  # fmt: skip
            self.counters["late_replies"] += 1
            return
        if sent is not None:
            self._observe(slot, shard.variant, shard.size, sent[0], result.busy_s, event.now)
        else:
            self.counters["stalled_answers_used"] += 1
        if r.run.finished:
            self._finish(r, event.now)

    def _refused(self, event: ShardRefused, from_pack: bool = False) -> None:
        """A node could not run a shard. If the request is at fault (``NON_RETRYABLE``) it fails; else the
        shard goes to the next free node and the refusal counts against the node, as a bad result does:
        a board whose every inference errs is cut off rather than handed the same shards again and again."""
        error = event.error
        self._answered(event.node)
        slot = self.nodes.get(event.node)
        why = f"refused a shard: {error.code}: {error.message}"
        if slot is not None and error.request_id == FRAMES_REQUEST:
            batch = slot.batches.pop(error.shard_id, None)
            if batch is not None:  # the node could not run it; the frames go to the next free node
                self._requeue_batch(batch)
                self._strike(slot, why, refused=True)
            return
        if slot is not None and error.request_id == PACK_REQUEST:
            keys = slot.packs.pop(error.shard_id, [])
            for rid, shard_id, attempt in keys:  # as if each shard was refused
                self._refused(
                    ShardRefused(event.node, Error(error.code, error.message, rid, shard_id, attempt), event.now),
                    from_pack=True,
                )
            if keys and error.code not in NON_RETRYABLE:
                self._strike(slot, why, refused=True)  # one strike for the pack, however many requests it held
            return
        sent = slot.in_flight.pop((error.request_id, error.shard_id, error.attempt), None) if slot else None
        r = self.requests.get(error.request_id)
        if slot is None or sent is None or r is None or r.run is None:
            self.counters["late_replies"] += 1
            return
        if error.code in NON_RETRYABLE:
            self._fail(r, Error(error.code, f"node {event.node}: {error.message}", r.request_id))
            return
        self._requeue(r, sent[1], event.node)
        if not from_pack:
            self._strike(slot, why, refused=True)

    def _requeue(self, r: OpenRequest, shard: ShardTask, lost_on: str) -> None:
        assert r.run is not None
        try:
            r.run.requeue(shard, lost_on)
        except ShardFailed as exc:
            self._fail(r, Error("node_lost", str(exc), r.request_id))

    # --- nodes ---------------------------------------------------------------------------------
    def _profiled(self, event: NodeProfiled) -> None:
        if event.node not in self.nodes:
            return  # lost while it was being profiled
        self.rm.node_profiled(event.node, event.measurements)
        self._stream_variants.clear()
        self._start_waiting(event.now)
        self._want_replan(f"{event.node} joined")

    def _lost(self, node: str, reason: str, now: float) -> None:
        slot = self.nodes.pop(node, None)
        if slot is None:
            return
        self.counters["nodes_lost"] += 1
        log.warning("dispatch: node %s lost (%s)", node, reason)
        self.rm.node_left(node)
        self._take_work_from(slot)
        self._want_replan(f"{node} lost")
        self._fail_stranded()

    def _fail_stranded(self) -> None:
        """Fail requests no node is left to serve, rather than keep them forever."""
        if self.rm.usable_nodes() or not self.rm.startup_expired:
            return
        for r in [r for r in self.requests.values() if r.status != "waiting"]:
            self._fail(
                r,
                Error(
                    "node_lost",
                    f"every node that could run this request was lost ({r.done_inputs:,} of {r.request.inputs:,} "
                    "inputs done)",
                    r.request_id,
                ),
            )
        for stream in [s for s in self.streams.values() if s.status != "waiting"]:
            why = f"every node that could serve this stream was lost ({stream.results:,} frames answered)"
            self._fail_stream(stream, Error("node_lost", why, stream.stream_id))

    # --- time ----------------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        for r in [r for r in self.requests.values() if r.status == "waiting"]:
            if now - r.arrived >= self.settings.startup_timeout_s:
                waited = now - r.arrived
                why = f"no profiled node is available (cluster is {self.rm.state}) after waiting {waited:.0f} s"
                self.counters["busy"] += 1
                self._fail(r, Error("busy", why, r.request_id))
        for stream in [s for s in self.streams.values() if s.status == "waiting"]:
            if now - stream.opened >= self.settings.startup_timeout_s:
                self.counters["busy"] += 1
                waited = now - stream.opened
                why = f"no profiled node is available (cluster is {self.rm.state}) after waiting {waited:.0f} s"
                self._fail_stream(stream, Error("busy", why, stream.stream_id))
        for slot in list(self.nodes.values()):
            self._check_stalled(slot, now)
        self._fail_stranded()

    def _check_stalled(self, slot: NodeSlot, now: float) -> None:
        """A node whose work in flight is far overdue is suspect: its work goes to the others.

        Its process may be alive and heartbeating while its inference is stuck (a CUDA call that never
        returns): each shard has a deadline of ``stall_factor`` times what the table expects of everything
        the node has in flight, and at least ``stall_floor_s``, counted from its last result or from the
        oldest send. If it answers a shard later, before the shard's new attempt does, its answer wins.
        """
        if slot.name in self.rm.suspect or not (slot.in_flight or slot.batches):
            return
        table = self.rm.table
        sent = [at for at, _ in slot.in_flight.values()] + [b.sent_at for b in slot.batches.values()]
        since = max(min(sent), slot.last_result_at or 0.0)
        expected = sum(s.size * table.seconds_per_input(slot.name, s.variant) for _, s in slot.in_flight.values())
        expected += sum(table.latency_s(slot.name, b.variant, len(b.frames)) for b in slot.batches.values())
        allowed = max(self.settings.stall_floor_s, self.settings.stall_factor * expected)
        if not np.isfinite(allowed) or now - since <= allowed:
            return
        self.counters["nodes_stalled"] += 1
        log.warning("dispatch: node %s answered nothing for %.1f s (%.2f s expected): suspect; its work goes "
                    "to the others", slot.name, now - since, expected)  # fmt: skip
        self.rm.node_suspect(slot.name)
        # Its answers may still come: keep what each shard ran there, so the first answer can count.
        slot.stalled = {k: v for k, v in slot.stalled.items() if k[0] in self.requests}
        slot.stalled.update({k: (shard, shard.variant) for k, (_, shard) in slot.in_flight.items()})
        self._take_work_from(slot)
        self._want_replan(f"{slot.name} stalled")

    def _take_work_from(self, slot: NodeSlot) -> None:
        """Give everything a node holds — in flight or queued for it — to the other nodes."""
        for (rid, _, _), (_, shard) in slot.in_flight.items():
            r = self.requests.get(rid)
            if r is not None and r.run is not None:
                self._requeue(r, shard, slot.name)
        for batch in slot.batches.values():
            self._requeue_batch(batch)
        slot.in_flight.clear()
        slot.batches.clear()
        slot.packs.clear()
        self._stream_variants.clear()
        for r in self.requests.values():
            if r.run is not None:
                r.run.orphan_queue_of(slot.name)  # its unsent shards are now anyone's

    def _shutting_down(self, event: ShuttingDown) -> None:
        self.draining = True
        if not event.fail_running:
            return
        for stream in list(self.streams.values()):
            why = f"the coordinator shut down after {stream.results:,} answered frames of this stream"
            self._fail_stream(stream, Error("shutting_down", why, stream.stream_id))
        for r in list(self.requests.values()):
            self._fail(
                r,
                Error(
                    "shutting_down",
                    f"the coordinator shut down after {r.done_inputs:,} of {r.request.inputs:,} inputs; "
                    "submit the request again when it is back",
                    r.request_id,
                ),
            )

    # --- the joint plan ------------------------------------------------------------------------
    def _want_replan(self, reason: str) -> None:
        self.replan_reason = self.replan_reason or reason

    def _count_small(self, inputs: int, task: str, now: float) -> None:
        """Track each task's pooled small-request rate; ask for a plan when one moved materially."""
        self._small_arrivals.append((now, inputs, task))
        self._small_inputs_in_window[task] += inputs
        while self._small_arrivals and self._small_arrivals[0][0] < now - SMALL_RATE_WINDOW_S:
            _, old_inputs, old_task = self._small_arrivals.popleft()
            self._small_inputs_in_window[old_task] -= old_inputs
        rate = self._small_rate(task)
        planned = self._small_rate_planned.get(task, 0.0)
        moved = planned == 0 or abs(rate / planned - 1) > SMALL_RATE_CHANGE
        if moved and now - self._last_small_replan >= SMALL_REPLAN_INTERVAL_S:
            self._last_small_replan = now
            self._want_replan("the small-request rate changed")

    def _small_rate(self, task: str) -> float:
        return self._small_inputs_in_window[task] / SMALL_RATE_WINDOW_S

    def _maybe_replan(self, now: float) -> None:
        if self.replan_reason is None or self.solving or not self.rm.usable_nodes():
            return
        demands = self.running_demands(now)
        if not demands:
            self.replan_reason = None
            return
        try:
            self.rm.planning_started()
        except NotReady:
            return
        self.generation += 1
        self.solving = True
        self.counters["solves"] += 1
        table = self.rm.table.scaled(1.0)  # a snapshot: observations go on while it is solved
        self._out.append(Replan(self.generation, table, demands, tuple(self.rm.usable_nodes()), self.replan_reason))
        self.replan_reason = None

    def running_demands(self, now: float) -> tuple[Demand, ...]:
        """What the joint plan must cover now: every jointly planned request's rest, and small requests."""
        demands = []
        for r in self.requests.values():
            if not r.joint or r.status not in ("planning", "running"):
                continue
            target = r.request.target_ips
            if r.status == "running":
                assert r.run is not None
                remaining = r.run.queued_inputs
                if remaining == 0:
                    continue
                if target is not None:
                    # What the rest must reach to finish by the request's own deadline — never less than its
                    # own target: time gained early is kept as slack for the tail, not spent on accuracy.
                    time_left = r.arrived + r.request.inputs / target - now
                    target = max(target, remaining / max(time_left, 1e-3))
            variants = self.tasks[r.task].variants
            demands.append(Demand(r.key, target, r.request.min_accuracy, r.policy == "adaptive", variants=variants))
        # Streams with the same conditions are one demand at their summed rate: the plan's size does
        # not grow with the number of cameras, and each of them runs what the pool runs on a node.
        pools: dict[str, tuple[float, OpenStream]] = {}
        for stream in self.streams.values():
            if stream.status in ("planning", "open", "closing"):
                rate, _ = pools.get(stream.pool, (0.0, stream))
                pools[stream.pool] = (rate + stream.spec.target_fps, stream)
        for key, (rate, stream) in pools.items():
            latency, batch = stream.max_latency_s, self.settings.shard_size
            variants = self._stream_task(stream).variants
            demands.append(Demand(key, rate, stream.spec.min_accuracy, True, latency, batch, variants))
        queued = {self.requests[rid].task for rid in self.small_queue if rid in self.requests}
        for task in self.tasks.values():
            rate = self._small_rate(task.name)
            if rate > 0 or task.name in queued:
                key = small_demand(task.name, self.default_task)
                rate = max(rate * SMALL_RATE_MARGIN, SMALL_MIN_RATE)
                demands.append(Demand(key, rate, variants=task.variants))
        return tuple(demands)

    def _solved(self, event: PlanSolved) -> None:
        if event.generation != self.generation:
            return  # an answer to a solve this core no longer waits for
        self.solving = False
        if event.plan is None:
            self.counters["failed_solves"] += 1
            log.warning("dispatch: the joint plan could not be made: %s", event.problem)
            for r in [r for r in self.requests.values() if r.status == "planning"]:
                self._fail(r, Error("invalid_input", f"cannot plan: {event.problem}", r.request_id))
            for stream in [s for s in self.streams.values() if s.status == "planning"]:
                self._fail_stream(stream, Error("invalid_input", f"cannot plan: {event.problem}", stream.stream_id))
            self.rm.settle()
            return
        self.plan = event.plan
        self._stream_variants.clear()
        for stream in [s for s in self.streams.values() if s.status == "planning"]:
            demand = event.plan.demands.get(stream.pool)
            if demand is not None:
                self._stream_admitted(stream, demand)
        self._small_rate_planned = {}
        for task in self.tasks:
            small = event.plan.demands.get(small_demand(task, self.default_task))
            self._small_rate_planned[task] = small.expected_ips if small else 0.0
        self.rm.plan_adopted()
        for r in list(self.requests.values()):
            demand = event.plan.demands.get(r.key)
            if demand is None or not r.joint:
                continue
            try:
                if r.status == "planning":
                    self._run(r, demand.for_inputs(r.policy, r.request.inputs), event.now)
                elif r.status == "running":
                    self._follow(r, demand)
            except PlanningError as exc:  # this request cannot follow the plan; the others can
                self._fail(r, Error("invalid_input", f"cannot plan: {exc}", r.request_id))

    def _follow(self, r: OpenRequest, demand: DemandPlan) -> None:
        """A running request takes its share of a new joint plan for the inputs not yet sent."""
        run = r.run
        assert run is not None
        remaining = run.queued_inputs
        if remaining > 0 and _differs(run.plan, demand):
            plan = demand.for_inputs(r.policy, remaining)
            run.sizes.update({(a.node, a.variant): self._shard_size(a.node, a.variant) for a in plan.assignments})
            run.replan(plan)
            self.counters["replans"] += 1
        r.weights = _weights(run.plan, self.rm.table)

    # --- sending -------------------------------------------------------------------------------
    def _fill(self, now: float) -> None:
        """Give every usable node with a free slot its next shards."""
        usable = self.rm.usable_nodes()
        for name in usable:
            slot = self.nodes.get(name)
            while slot is not None and slot.busy < self.settings.window:
                if not self._send_next(slot, now):
                    break

    def _send_next(self, slot: NodeSlot, now: float) -> bool:
        # Frames and small requests first: they are latency-bound.
        if self._send_frames(slot, now):
            return True
        self._drop_closed_small()
        variant = self._small_variant(slot, self.requests[self.small_queue[0]].task) if self.small_queue else None
        if variant is not None:
            self._send_small(slot, variant, now)
            return True
        # Then the request this node owes the most service, by its planned share of the node's time.
        best: tuple[float, OpenRequest] | None = None
        for r in self.requests.values():
            if r.run is None or not r.run.has_work_for(slot.name, slot.variants):
                continue
            pass_ = r.passes.setdefault(slot.name, slot.clock)
            if best is None or pass_ < best[0]:
                best = (pass_, r)
        if best is not None:
            r = best[1]
            assert r.run is not None
            shard = r.run.next_shard(slot.name, slot.variants)
            if shard is not None:
                self._send(slot, r, shard, now)
                return True
        # Idle: take the tail of the slowest node's queue, if this node would finish it sooner.
        if self.settings.work_stealing:
            for r in self.requests.values():
                if r.run is None or r.policy not in ADAPTS_AT_RUN_TIME:
                    continue
                shard = r.run.steal(slot.name, self.rm.table.seconds_per_input, slot.variants)
                if shard is not None:
                    self._send(slot, r, shard, now)
                    return True
        return False

    def _send(self, slot: NodeSlot, r: OpenRequest, shard: ShardTask, now: float) -> None:
        self._hand_out(slot, r, shard, now)
        inputs = r.submit.inputs[shard.start : shard.stop]
        message = Shard(r.key, shard.shard_id, shard.attempt, shard.variant, inputs, r.outputs)
        self._out.append(SendShard(slot.name, message))

    def _hand_out(self, slot: NodeSlot, r: OpenRequest, shard: ShardTask, now: float) -> None:
        """Book a shard as in flight on a node, and charge its request's stride pass there."""
        slot.in_flight[(r.key, shard.shard_id, shard.attempt)] = (now, shard)
        weight = r.weights.get(slot.name, STRAY_WEIGHT)
        cost = shard.size * self.rm.table.seconds_per_input(slot.name, shard.variant)
        pass_ = r.passes.get(slot.name, slot.clock)
        slot.clock = max(slot.clock, pass_)
        r.passes[slot.name] = pass_ + (cost if np.isfinite(cost) else 1.0) / weight

    def _send_small(self, slot: NodeSlot, variant: str, now: float) -> None:
        """Send the small requests at the head of the queue, as many as fit one shard of this node, as one
        micro-batch: under load they queue while every node is busy, and a freed node takes them together."""
        limit = self._shard_size(slot.name, variant)
        expected_ips = 1.0 / self.rm.table.seconds_per_input(slot.name, variant)
        pack: list[tuple[OpenRequest, ShardTask]] = []
        taken = 0
        while self.small_queue:
            r = self.requests[self.small_queue[0]]
            if pack and (
                taken + min(r.request.inputs, limit) > limit
                or (r.outputs, r.task) != (pack[0][0].outputs, pack[0][0].task)
            ):
                break
            self.small_queue.popleft()
            assignment = Assignment(slot.name, variant, r.request.inputs)
            self._run(r, Plan(r.policy, (assignment,), expected_ips, self.rm.table.accuracy[variant]), now)
            assert r.run is not None
            shard = r.run.next_shard(slot.name, slot.variants)
            assert shard is not None
            pack.append((r, shard))
            taken += shard.size
            self._drop_closed_small()
        if len(pack) == 1:
            self._send(slot, *pack[0], now)
            return
        self._batch_ids += 1
        slot.packs[self._batch_ids] = []
        for r, shard in pack:
            self._hand_out(slot, r, shard, now)
            slot.packs[self._batch_ids].append((r.key, shard.shard_id, shard.attempt))
        inputs = np.concatenate([r.submit.inputs[shard.start : shard.stop] for r, shard in pack])
        self.counters["small_packs"] += 1
        message = Shard(PACK_REQUEST, self._batch_ids, 0, variant, inputs, pack[0][0].outputs)
        self._out.append(SendShard(slot.name, message))

    def _pack_returned(self, slot: NodeSlot, result: ShardResult, now: float) -> None:
        """A micro-batch of small requests came back: each request's slice is its own shard's result."""
        keys = slot.packs.pop(result.shard_id, None)
        if keys is None or result.attempt != 0:
            self.counters["late_replies"] += 1
            return
        sizes = [slot.in_flight[key][1].size for key in keys]
        predictions = result.predictions
        malformed = _not_a_class_per_input(predictions, sum(sizes))
        if malformed:
            predictions = np.zeros((0, 0), np.int64)  # each slice is then of the wrong shape: sent again
        outputs = result.outputs
        if _not_a_row_per_input(outputs, sum(sizes)):
            malformed = True
            outputs = {name: np.zeros(0, np.float32) for name in outputs}  # wrong length for each: sent again
        start = 0
        for (rid, shard_id, attempt), size in zip(keys, sizes, strict=True):
            part = predictions[start : start + size] if predictions.ndim == 1 else predictions
            their = {name: tensor[start : start + size] if len(tensor) else tensor for name, tensor in outputs.items()}
            start += size
            answer = ShardResult(rid, shard_id, attempt, part, result.busy_s, their)
            self._returned(ShardReturned(slot.name, answer, now), from_pack=True)
        if malformed or _nan_in(result.outputs):  # one strike for the pack, however many requests it held
            self._strike(slot, f"a malformed result for a pack of {len(keys)} requests")

    def _strike(self, slot: NodeSlot, problem: str, refused: bool = False) -> None:
        """Count a malformed result (or with ``refused``, a refusal); past MAX_BAD_RESULTS in a row (a good
        result resets the count) the worker is cut off and its work moves."""
        self.counters["shards_refused" if refused else "bad_results"] += 1
        slot.bad_streak += 1
        if slot.bad_streak < MAX_BAD_RESULTS or slot.name not in self.nodes:
            return
        reason = f"cut off after {slot.bad_streak} bad results or refusals in a row (the last: {problem})"
        self.counters["nodes_cut_off"] += 1
        self._lost(slot.name, reason, slot.last_result_at or 0.0)
        self._out.append(CutOff(slot.name, reason))

    def _shard_size(self, node: str, variant: str) -> int:
        """A node's shards last about ``shard_seconds`` there: a fast board gets larger ones (less
        per-shard cost), never smaller than the profiled ``shard_size`` nor over MAX_SHARD_FACTOR times it."""
        size = self.settings.shard_size
        ips = self.rm.table.ips(node, variant)
        return int(min(max(size, ips * self.settings.shard_seconds), size * MAX_SHARD_FACTOR))

    def _drop_closed_small(self) -> None:
        while self.small_queue and self.small_queue[0] not in self.requests:
            self.small_queue.popleft()

    def _small_variant(self, slot: NodeSlot, task: str) -> str | None:
        """The variant a task's small requests run on a node: the pooled demand's there, else the plan's
        most accurate one of the task there, else (no plan uses the node) its most accurate profiled one."""
        table = self.rm.table
        allowed = self.tasks[task].variants
        profiled = [v for v in table.variants_of(slot.name) if v in slot.variants and (allowed is None or v in allowed)]
        if not profiled:
            return None
        if self.plan is not None:
            small = self.plan.demands.get(small_demand(task, self.default_task))
            chosen = small.variant_on(slot.name) if small else None
            if chosen in profiled:
                return chosen
            planned = [
                s.variant
                for d in self.plan.demands.values()
                for s in d.shares
                if s.node == slot.name and s.variant in profiled
            ]
            if planned:
                return max(planned, key=lambda v: table.accuracy[v])
        return max(profiled, key=lambda v: table.accuracy[v])

    # --- reading the state ---------------------------------------------------------------------
    def _report(self, r: OpenRequest) -> dict[str, Any]:
        run, request, first = r.run, r.request, r.first_plan
        assert run is not None and first is not None
        wall = run.wall_seconds()
        notes = list(run.plan.notes)
        nodes = {t.node for t in run.tallies.values()}
        missing = sorted(self.rm.expected - nodes)
        if missing and not r.small:
            notes.append(f"ran without {', '.join(missing)} (not registered, not profiled in time, or not needed)")
        return {
            "request_id": run.request_id,
            "task": r.task,
            "policy": r.policy,
            "inputs": run.total_inputs,
            "target_ips": request.target_ips,
            "min_accuracy": request.min_accuracy,
            "wall_s": wall,
            "achieved_ips": run.total_inputs / wall,
            "expected_ips": first.expected_ips,
            "expected_accuracy": first.expected_accuracy,
            "served_accuracy": run.served_accuracy(self.rm.table.accuracy),
            "feasible": first.feasible,
            "retries": run.retries,
            "steals": run.steals,
            "replans": run.replans,
            "dispatch_started_s": (r.dispatch_started or run.arrived) - run.arrived,
            "notes": notes,
            "timeline": run.timeline(),
            "assignment": [
                {
                    "node": tally.node,
                    "variant": tally.variant,
                    "planned_inputs": tally.planned_inputs,
                    "inputs": tally.inputs,
                    "shards": tally.shards,
                    "busy_s": tally.busy_s,
                    "last_result_s": tally.last_result_s,
                }
                for tally in run.tallies.values()
                if tally.inputs or tally.planned_inputs
            ],
        }

    def has_work_of(self, client: bytes) -> bool:
        """Whether a client has a request or stream open."""
        return any(r.client == client for r in self.requests.values()) or any(
            s.client == client for s in self.streams.values()
        )

    def in_flight(self, node: str) -> int:
        slot = self.nodes.get(node)
        return slot.busy if slot else 0

    def work_seen_by(self, viewer: str | None, now: float) -> dict[str, Any]:
        """Requests, streams and the joint plan as ``status`` shows them to ``viewer`` (a principal).

        A client sees its own work, and of others' only how much there is; ``None`` (an operator)
        sees everyone's, each with its owner.
        """
        requests = [r for r in self.requests.values() if viewer is None or r.owner == viewer]
        streams = [s for s in self.streams.values() if viewer is None or s.owner == viewer]
        shown = [
            {
                "id": r.request_id,
                "policy": r.policy,
                "status": r.status,
                "inputs": r.request.inputs,
                "done": r.done_inputs,
                "target_ips": r.request.target_ips,
                "elapsed_s": now - r.arrived,
                **({"client": r.owner} if viewer is None else {}),
            }
            for r in requests
        ]
        return {
            "requests": [r for r in shown if r["status"] != "waiting"],
            "waiting": sorted(r["id"] for r in shown if r["status"] == "waiting"),
            "streams": [{**s.summary(now), **({"client": s.owner} if viewer is None else {})} for s in streams],
            "others": {"requests": len(self.requests) - len(requests), "streams": len(self.streams) - len(streams)},
            "plan": self._plan_seen_by(viewer),
        }

    def _plan_seen_by(self, viewer: str | None) -> dict[str, Any] | None:
        """The joint plan: per demand its rate, accuracy and shares; another client's request is not named."""
        if self.plan is None:
            return None
        names = {r.key: (r.request_id, r.owner) for r in self.requests.values()}

        def shown_key(key: str) -> str:
            if key not in names:  # pooled small requests or streams (no one's id), or a request since ended
                return "a request since ended" if key.startswith("@") else key
            request_id, owner = names[key]
            if viewer is None:
                return f"{owner}: {request_id}"
            return request_id if owner == viewer else "another client's request"

        return {
            "solve_s": self.plan.solve_s,
            "loss_to_bound": self.plan.loss_to_bound,
            "node_load": self.plan.node_load,
            "demands": [
                {
                    "key": shown_key(d.key),
                    "expected_ips": d.expected_ips,
                    "expected_accuracy": d.expected_accuracy,
                    "feasible": d.feasible,
                    "shares": [{"node": s.node, "variant": s.variant, "ips": s.ips} for s in d.shares],
                }
                for d in self.plan.demands.values()
            ],
        }


def _not_a_class_per_input(predictions: np.ndarray, size: int) -> bool:
    """Whether a worker's predictions for ``size`` inputs are not one integer class per input."""
    return predictions.ndim != 1 or len(predictions) != size or predictions.dtype.kind not in "iu"


def _not_a_row_per_input(outputs: dict[str, np.ndarray], size: int) -> bool:
    """Whether any output tensor lacks its one row per input."""
    return any(tensor.ndim == 0 or len(tensor) != size for tensor in outputs.values())


def _nan_in(outputs: dict[str, np.ndarray]) -> str | None:
    """Which float output holds NaN, if one does: a model never means that."""
    for name, tensor in outputs.items():
        if tensor.dtype.kind == "f" and np.isnan(tensor).any():
            return f"NaN in output {name!r}"
    return None


def _outputs_mode(task: ServedTask | None, asked: str | None) -> tuple[str, str | None]:
    """What a request's or stream's answers carry (none asked: predictions for a top1 task, else all
    outputs), or why it cannot have what it asked for."""
    top1 = task is None or task.quality == "top1"
    mode = asked or ("predictions" if top1 else "all")
    if task is not None and (mode not in OUTPUT_MODES or (mode != "all" and not top1)):
        modes = OUTPUT_MODES if top1 else ("all",)
        return mode, f"outputs must be one of {', '.join(modes)} for task {task.name!r}, or none; got {mode!r}"
    return mode, None


def _weights(plan: Plan, table: ExplorationTable) -> dict[str, float]:
    """The fraction of each node's time a plan asks for — its work there over the plan's duration —
    as the request's stride weights: on a node shared with other requests it gets what the joint plan
    gave it, no more and no less. (Normalising by the busiest node instead gave every request weight 1
    on its main node, so a heavy task shared a board equally with a light one and fell short.)"""
    seconds: dict[str, float] = {}
    for a in plan.assignments:
        seconds[a.node] = seconds.get(a.node, 0.0) + a.inputs * table.seconds_per_input(a.node, a.variant)
    total = sum(a.inputs for a in plan.assignments)
    duration = total / plan.expected_ips if plan.expected_ips > 0 else max(seconds.values(), default=0.0)
    if duration <= 0 or not np.isfinite(duration) or not all(np.isfinite(s) for s in seconds.values()):
        return {n: 1.0 for n in seconds}
    return {n: min(max(s / duration, STRAY_WEIGHT), 1.0) for n, s in seconds.items()}


def _differs(plan: Plan, demand: DemandPlan) -> bool:
    """Whether a request's current plan and its new joint share differ in variants or by > 10 % in split."""
    old_total = sum(a.inputs for a in plan.assignments) or 1
    new_total = sum(s.ips for s in demand.shares) or 1.0
    old = {(a.node, a.variant): a.inputs / old_total for a in plan.assignments}
    new = {(s.node, s.variant): s.ips / new_total for s in demand.shares}
    if set(old) != set(new):
        return True
    return any(abs(old[k] - new[k]) > 0.1 for k in old)

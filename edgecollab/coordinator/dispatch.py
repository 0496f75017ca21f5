"""The dispatch core: every scheduling decision of the coordinator, as a pure state machine.

``DispatchCore.handle(event)`` is the one entry point. It takes a typed event (``events.py``: a
request opened, a shard's result or refusal, a node registered, profiled or lost, a timer, a
joint plan solved, shutdown) and returns typed instructions (send a shard, answer a request,
fail it, solve a new joint plan). It does no I/O and never reads a clock: every event carries
the time. The shell (``server.py``) reads the sockets, feeds events and carries out the
instructions; tests feed events and assert instructions.

The core holds the books; each part of the work has a module of its own that reads and
changes them and returns instructions:

* ``requests.py`` — admission, a request's run, results, and which request a free node serves;
* ``packs.py`` — small requests, served from the running plan and packed several to a message;
* ``streams.py`` — streams and their frames' micro-batches;
* ``nodes.py`` — each node's state and its one map of work in flight, stalls, strikes and the
  one check of a worker's results;
* ``planning.py`` — the joint plan: its demands, when to solve, adopting a solved one;
* ``resource_manager.py`` — the cluster's life cycle, whose state gates admission and solves;
* ``views.py`` — reports and status.

After every event, each usable node with a free slot (``window`` messages in flight at most, a site more)
is given work in this order: stream frames (latency-bound), then small requests, then the
request the node owes the most service, then — idle — the tail of the slowest node's queue.

**Exactly once**: a shard's answer is taken only for the attempt the node was sent (by its
``WorkId``) and only once (``RequestRun``); a frame is in one queue or one micro-batch at a time.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..config import CoordinatorConfig
from ..errors import EdgecollabError
from ..planner import ExplorationTable
from ..planner.table import shard_cost_s
from ..protocol import Error
from .batching import FrameBatch
from .events import (
    ClientGone,
    CutOff,
    Event,
    FailRequest,
    FramesArrived,
    Instruction,
    NodeLost,
    NodeProfiled,
    NodeRegistered,
    PlanSolved,
    ProfileAnswer,
    ProfileShardWanted,
    RequestCancelled,
    RequestOpened,
    SendShard,
    ServedTask,
    ShardRefused,
    ShardReturned,
    ShuttingDown,
    StartupExpired,
    StreamClosed,
    StreamOpened,
    Tick,
    WakeAt,
    WorkId,
    WorkKind,
)
from .invariants import broken_invariants
from .nodes import NodeHealth, NodeState, NodeStatus, SentPack, SentProfile, SentShard, Work, take_dispatched
from .ownership import scoped_key
from .packs import SmallRequests
from .planning import Planning
from .requests import OpenRequest, RequestDispatch, RequestStatus
from .resource_manager import ResourceManager
from .streams import OpenStream, StreamDispatch, StreamStatus
from .views import work_seen_by

log = logging.getLogger(__name__)

# Only shards at least this fraction of ``shard_size`` teach the table: the rows are measured at
# that size, and a one-input shard's time is mostly fixed cost.
OBSERVE_MIN_FILL = 0.5
# Micro-batches of frames teach it from this size on, against the round trip expected at their size.
OBSERVE_MIN_BATCH = 4


class StateInvalid(EdgecollabError):
    """``validate_state`` found the core's books inconsistent: a bug, never a client's doing."""


class DispatchCore:
    """The coordinator's scheduling state; change it only through ``handle``."""

    def __init__(
        self,
        settings: CoordinatorConfig,
        expected_nodes: Iterable[str],
        table: ExplorationTable,
        tasks: Sequence[ServedTask],
    ) -> None:
        self.settings = settings
        self.tasks = {t.name: t for t in tasks}  # the tasks served; requests and streams name theirs
        self.default_task = tasks[0].name  # for requests and streams that name none
        self.table = table  # the exploration table: profiled, then observed at run time
        self.counters: Counter[str] = Counter()  # solves, late replies, nodes lost, ... (status shows them)
        self.outcomes: Counter[str] = Counter()  # requests answered, by outcome ("completed" or an error code)
        # Per task, and per variant that ran part of a request: requests answered (and, per task, failed),
        # inputs, shards run and their times (the ``models`` query).
        self.task_stats: dict[str, Counter[str]] = {t.name: Counter() for t in tasks}
        self.variant_stats: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.nodes = NodeHealth(settings, self.counters)  # every registered node, its state and work in flight
        self.manager = ResourceManager(expected_nodes, self.nodes)  # the cluster's life cycle
        self.requests: dict[str, OpenRequest] = {}  # every admitted request not yet answered; ≤ max_requests
        self.streams: dict[str, OpenStream] = {}  # every stream opened and not yet closed or failed
        self.last_request: dict[str, float] = {}  # expected and achieved figures of the last large request
        self.request_dispatch = RequestDispatch(self)
        self.small = SmallRequests(self)
        self.stream_dispatch = StreamDispatch(self)
        self.planning = Planning(self)
        self._numbers = 0  # of the latest WorkId handed out
        self._next_wake: float | None = None  # the earliest WakeAt asked for and not yet past
        self._handlers: dict[type, Callable[[Any], list[Instruction]]] = {
            RequestOpened: self.request_dispatch.open,
            RequestCancelled: self._cancelled,
            ClientGone: self._client_gone,
            ShardReturned: self._returned,
            ShardRefused: self._refused,
            NodeRegistered: self._registered,
            ProfileShardWanted: self._profile_wanted,
            NodeProfiled: self._profiled,
            NodeLost: lambda e: self.lose(e.node, e.reason),
            Tick: self._tick,
            StartupExpired: self._startup_expired,
            PlanSolved: self.planning.solved,
            ShuttingDown: self._shutting_down,
            StreamOpened: self.stream_dispatch.open,
            FramesArrived: self.stream_dispatch.frames,
            StreamClosed: self.stream_dispatch.close,
        }

    # --- the one entry point -------------------------------------------------------------------
    def handle(self, event: Event) -> list[Instruction]:
        out = self._handlers[type(event)](event)
        return out + self._settle(event.now)

    def handle_batch(self, events: Sequence[Event]) -> tuple[list[Instruction], list[tuple[Event, Exception]]]:
        """Every event that arrived together (one turn of the shell's loop), then one re-plan check and one
        fill: the bookkeeping is per batch, not per message. An event whose handler raises (a bug) is
        returned with its exception, and the others' instructions stand."""
        out: list[Instruction] = []
        failed: list[tuple[Event, Exception]] = []
        for event in events:
            try:
                out += self._handlers[type(event)](event)
            except Exception as exc:
                failed.append((event, exc))
        if events:
            out += self._settle(max(e.now for e in events))
        return out, failed

    def _settle(self, now: float) -> list[Instruction]:
        out = self.planning.maybe_replan(now) if self.planning.reason is not None else []
        return out + self._fill(now)

    # --- requests and streams ------------------------------------------------------------------
    def _cancelled(self, event: RequestCancelled) -> list[Instruction]:
        """A client gave up a request or stream: forget it (nothing more is sent, late results are
        discarded; a stream's queued frames are not answered). Another client's, or one already
        answered, is left alone."""
        key = scoped_key(event.client, event.cancel.request_id)
        r = self.requests.get(key)
        if r is not None:
            self.request_dispatch.cancel(r, "cancelled", f"request {r.request_id[:8]} cancelled")
            return []
        stream = self.streams.get(key)
        if stream is None:
            self.counters["cancels_ignored"] += 1
            return []
        self.outcomes["stream_cancelled"] += 1
        self.counters["frames_cancelled"] += stream.outstanding
        self.stream_dispatch.forget(stream)
        return []

    def _client_gone(self, event: ClientGone) -> list[Instruction]:
        """Drop everything of a client that is gone: nothing more of it is dispatched; its boards are free."""
        for r in [r for r in self.requests.values() if r.client == event.client]:
            self.request_dispatch.cancel(r, "client_gone", f"a client is gone ({event.reason})")
        for stream in [s for s in self.streams.values() if s.client == event.client]:
            self.counters["frames_failed"] += stream.outstanding
            self.stream_dispatch.forget(stream)
        return []

    def _start_waiting(self, now: float) -> list[Instruction]:
        if not self.manager.accepts_work():
            return []
        out: list[Instruction] = []
        for r in [r for r in self.requests.values() if r.status is RequestStatus.WAITING]:
            out += self.request_dispatch.start(r, now)
        for stream in [s for s in self.streams.values() if s.status is StreamStatus.WAITING]:
            self.stream_dispatch.admit(stream)
        return out

    def _shutting_down(self, event: ShuttingDown) -> list[Instruction]:
        self.manager.drain()
        if not event.fail_running:
            return []
        out: list[Instruction] = []
        for stream in list(self.streams.values()):
            why = f"the coordinator shut down after {stream.results:,} answered frames of this stream"
            out += self.stream_dispatch.fail(stream, Error("shutting_down", why, stream.stream_id))
        for r in list(self.requests.values()):
            why = (
                f"the coordinator shut down after {r.done_inputs:,} of {r.request.inputs:,} inputs; "
                "submit the request again when it is back"
            )
            out += self.request_dispatch.fail(r, Error("shutting_down", why, r.request_id))
        return out

    # --- results -------------------------------------------------------------------------------
    def _booked(self, node: str, work_id: WorkId | None) -> tuple[NodeState, Work] | None:
        """The work an answer is for, taken off its node's book; None for a late or unknown answer."""
        state = self.nodes.get(node)
        work = state.in_flight.pop(work_id, None) if state is not None and work_id is not None else None
        if state is None or work is None:
            self.counters["late_replies"] += 1
            return None
        return state, work

    def _returned(self, event: ShardReturned) -> list[Instruction]:
        out = self._answered(event.node, event.now)
        work_id = WorkId.of(event.result)
        booked = self._booked(event.node, work_id)
        if booked is None:
            return out
        state, work = booked
        problem: str | None = None
        if isinstance(work, SentShard):
            more, problem = self.request_dispatch.returned(state, work, event.result, event.now)
        elif isinstance(work, SentPack):
            more, problem = self.small.returned(state, work, event.result, event.now)
        elif isinstance(work, FrameBatch):
            more, problem = self.stream_dispatch.returned(state, work, event.result, event.now)
        else:
            assert work_id is not None
            more = [ProfileAnswer(event.node, work_id.number, event.result)]
        out += more
        return out + (self._strike(state, problem) if problem is not None else [])

    def _refused(self, event: ShardRefused) -> list[Instruction]:
        """A node could not run a piece of work. If the request is at fault it fails; else the work goes to
        the next free node and the refusal counts against the node, as a bad result does: a board whose
        every inference errs is cut off rather than handed the same shards again and again."""
        out = self._answered(event.node, event.now)
        work_id = WorkId.of(event.error)
        booked = self._booked(event.node, work_id)
        if booked is None:
            return out
        state, work = booked
        strike = False
        if isinstance(work, SentShard):
            more, strike = self.request_dispatch.refused(event.node, work, event.error)
        elif isinstance(work, SentPack):
            more, strike = self.small.refused(event.node, work, event.error)
        elif isinstance(work, FrameBatch):
            self.stream_dispatch.take_back(work)
            more, strike = [], True
        else:
            assert work_id is not None
            more = [ProfileAnswer(event.node, work_id.number, event.error)]
        out += more
        why = f"refused a shard: {event.error.code}: {event.error.message}"
        return out + (self._strike(state, why, refused=True) if strike else [])

    def _strike(self, state: NodeState, problem: str, refused: bool = False) -> list[Instruction]:
        reason = self.nodes.strike(state, problem, refused)
        if reason is None:
            return []
        return [*self.lose(state.name, reason), CutOff(state.name, reason)]

    def _answered(self, node: str, now: float) -> list[Instruction]:
        """Any answer from a node: a suspect one serves again, and work that waited for a node starts.
        (``last_result_at`` is left to the result paths: ``observe`` measures a shard's cost from the
        node's previous result.)"""
        if not self.nodes.answered(node):
            return []
        self.manager.settle()
        self.stream_dispatch.forget_variants()
        self.planning.want(f"{node} answers again")
        return self._start_waiting(now)

    def observe(
        self, node: NodeState, variant: str, size: int, sent_at: float, busy_s: float, now: float, batch: bool = False
    ) -> None:
        """Teach the table what a piece of work cost its node; a drift asks for a new plan.

        A micro-batch of frames sent to an idle node is compared with the round trip the table
        expects at its size (profiled one shard at a time), and the row scaled by how much slower
        or faster it was; one that queued behind others says little, and is not used.
        """
        seconds = now - sent_at if batch else shard_cost_s(sent_at, node.last_result_at, now, busy_s)
        node.last_result_at = now
        if seconds <= 0:
            return
        evidence = 1.0
        if batch and size >= OBSERVE_MIN_BATCH:
            expected = self.table.latency_s(node.name, variant, size)
            ips = self.table.ips(node.name, variant) * min(expected / seconds, 1.5)
            evidence = size / self.settings.shard_size  # many small batches: each says little
        elif size >= OBSERVE_MIN_FILL * self.settings.shard_size:
            ips = size / seconds
        else:
            return
        # A whole shard is judged against the row's speed at its own batch size (a row is a curve).
        if self.table.observe_shard(node.name, variant, ips, min(evidence, 1.0), None if batch else size):
            log.info("dispatch: %s on %s drifted", node.name, variant)
            self.planning.drifted(node.name, now)

    # --- nodes ---------------------------------------------------------------------------------
    def _registered(self, event: NodeRegistered) -> list[Instruction]:
        out = self.lose(event.node, "registered again") if self.nodes.get(event.node) else []
        self.nodes.register(event.node, tuple(event.variants))
        self.table.forget(event.node)
        self.manager.settle()
        return out

    def _profile_wanted(self, event: ProfileShardWanted) -> list[Instruction]:
        state = self.nodes.get(event.node)
        if state is None:
            return [ProfileAnswer(event.node, event.number, Error("node_lost", f"node {event.node} is not registered"))]
        work_id = WorkId(WorkKind.PROFILE, event.number)
        state.in_flight[work_id] = SentProfile(event.variant, len(event.inputs), event.now)
        return [SendShard(event.node, work_id.shard(event.variant, event.inputs, event.outputs))]

    def _profiled(self, event: NodeProfiled) -> list[Instruction]:
        state = self.nodes.get(event.node)
        if state is None:
            return []  # lost while it was being profiled
        joined = state.status is NodeStatus.PROFILING
        self.table.forget(event.node)  # a site's new front replaces its rows
        state.slots = event.slots
        if event.link_s_per_input is not None:  # its rows are capped by its link, as a configured one caps a board's
            self.table.link_seconds[event.node] = event.link_s_per_input
        for variant, measurement in event.measurements.items():
            if variant in self.table.accuracy:
                self.table.record(event.node, variant, measurement)
        self.nodes.profiled(event.node)
        self.manager.settle()
        self.stream_dispatch.forget_variants()
        out = self._start_waiting(event.now)
        self.planning.want(f"{event.node} joined" if joined else f"{event.node}'s front moved")
        return out

    def _startup_expired(self, event: StartupExpired) -> list[Instruction]:
        self.manager.expire_startup()
        return self._start_waiting(event.now)

    def lose(self, node: str, reason: str) -> list[Instruction]:
        """A node is gone: everything it held goes to the others, and its profiler hears why."""
        state = self.nodes.remove(node)
        if state is None:
            return []
        self.counters["nodes_lost"] += 1
        log.warning("dispatch: node %s lost (%s)", node, reason)
        self.table.forget(node)
        self.manager.settle()
        gone = Error("node_lost", f"node {node} lost ({reason})")
        out: list[Instruction] = [
            ProfileAnswer(node, work_id.number, gone)
            for work_id, work in state.in_flight.items()
            if isinstance(work, SentProfile)
        ]
        out += self._take_work_from(state, keep_shards=False)
        self.planning.want(f"{node} lost")
        return out + self._fail_stranded()

    def _take_work_from(self, state: NodeState, keep_shards: bool) -> list[Instruction]:
        """Give everything a node holds — in flight or queued for it — to the other nodes."""
        out: list[Instruction] = []
        for work in take_dispatched(state, keep_shards):
            if isinstance(work, SentShard):
                out += self.request_dispatch.take_back(work, state.name)
            elif isinstance(work, SentPack):
                out += self.small.take_back(work, state.name)
            elif isinstance(work, FrameBatch):
                self.stream_dispatch.take_back(work)
        self.stream_dispatch.forget_variants()
        for r in self.requests.values():
            if r.run is not None:
                r.run.orphan_queue_of(state.name)  # its unsent shards are now anyone's
        return out

    def _fail_stranded(self) -> list[Instruction]:
        """Fail work no node is left to serve, rather than keep it forever."""
        if not self.manager.stranded():
            return []
        out: list[Instruction] = []
        for r in [r for r in self.requests.values() if r.status is not RequestStatus.WAITING]:
            why = (
                f"every node that could run this request was lost ({r.done_inputs:,} of {r.request.inputs:,} "
                "inputs done)"
            )
            out += self.request_dispatch.fail(r, Error("node_lost", why, r.request_id))
        for stream in [s for s in self.streams.values() if s.status is not StreamStatus.WAITING]:
            why = f"every node that could serve this stream was lost ({stream.results:,} frames answered)"
            out += self.stream_dispatch.fail(stream, Error("node_lost", why, stream.stream_id))
        return out

    # --- time ----------------------------------------------------------------------------------
    def _tick(self, event: Tick) -> list[Instruction]:
        now, out = event.now, list[Instruction]()
        if self._next_wake is not None and now >= self._next_wake:
            self._next_wake = None
        limit = self.settings.startup_timeout_s
        cluster = f"no profiled node is available (cluster is {self.manager.state})"
        for r in [r for r in self.requests.values() if r.status is RequestStatus.WAITING]:
            if now - r.arrived >= limit:
                self.counters["busy"] += 1
                why = f"{cluster} after waiting {now - r.arrived:.0f} s"
                out += self.request_dispatch.fail(r, Error("busy", why, r.request_id))
        for stream in [s for s in self.streams.values() if s.status is StreamStatus.WAITING]:
            if now - stream.opened >= limit:
                self.counters["busy"] += 1
                why = f"{cluster} after waiting {now - stream.opened:.0f} s"
                out += self.stream_dispatch.fail(stream, Error("busy", why, stream.stream_id))
        for state in self.nodes.stalled(now, self.table):
            self.manager.settle()
            # Its answers may still come: it keeps its shards, booked as stalled, so the first answer can count.
            for work_id, work in list(state.in_flight.items()):
                if isinstance(work, SentShard) and work.stalled and work.request not in self.requests:
                    del state.in_flight[work_id]
            out += self._take_work_from(state, keep_shards=True)
            self.planning.want(f"{state.name} stalled")
        return out + self._fail_stranded()

    def wake_at(self, when: float) -> list[Instruction]:
        """Ask for a ``Tick`` at ``when`` (one is enough when an earlier one is already asked for)."""
        if self._next_wake is None or when < self._next_wake:
            self._next_wake = when
            return [WakeAt(when)]
        return []

    # --- sending -------------------------------------------------------------------------------
    def _fill(self, now: float) -> list[Instruction]:
        """Give every usable node with a free slot its next work. Every node takes its own first; only then
        may one left idle steal (else the first nodes filled would take the last ones' shards before those
        were offered them)."""
        out: list[Instruction] = []
        for steal in (False, True):
            for name in self.nodes.usable():
                state = self.nodes[name]
                window = state.window(self.settings.window)
                while state.busy < window:
                    sent = self._send_next(state, now, out, steal)
                    if not sent:
                        break
        return out

    def _send_next(self, state: NodeState, now: float, out: list[Instruction], steal: bool = True) -> bool:
        """Send a node its next work, in the fill order; False when there is none for it."""
        if self.stream_dispatch.queued:  # frames first: they are latency-bound
            frames, sent = self.stream_dispatch.send(state, now)
            out += frames
            if sent:
                return True
        head = self.small.head()
        variant = self.small.variant_for(state, head) if head is not None else None
        if variant is not None:
            out += self.small.send(state, variant, now)
            return True
        shard = self.request_dispatch.next_for(state, now, steal)
        if shard is not None:
            out.append(shard)
            return True
        return False

    # --- shared by the parts -------------------------------------------------------------------
    def task_named(self, name: str | None) -> tuple[ServedTask | None, str | None]:
        """The task a request or stream names (none: the default), or why there is none."""
        task = self.tasks.get(name or self.default_task)
        if task is None:
            served = ", ".join(self.tasks)
            return None, f"task must be one of {served} (the tasks this cluster serves), or none; got {name!r}"
        return task, None

    def refuse(self, client: bytes, error: Error) -> list[Instruction]:
        """Answer a client with an error (counted by its code)."""
        self.outcomes[error.code] += 1
        if error.code == "busy":
            self.counters["busy"] += 1
        return [FailRequest(client, error)]

    def next_number(self) -> int:
        self._numbers += 1
        return self._numbers

    def work_closed(self) -> None:
        """A request or stream closed: when nothing the plan covers runs, nothing relies on its assumptions."""
        if not self.streams and all(r.small for r in self.requests.values()):
            self.table.drop_assumptions()

    # --- reading the state ---------------------------------------------------------------------
    def has_work_of(self, client: bytes) -> bool:
        """Whether a client has a request or stream open."""
        return any(r.client == client for r in self.requests.values()) or any(
            s.client == client for s in self.streams.values()
        )

    def in_flight(self, node: str) -> int:
        state = self.nodes.get(node)
        return state.busy if state else 0

    def work_seen_by(self, viewer: str | None, now: float) -> dict[str, Any]:
        """Requests, streams and the joint plan as ``status`` shows them to ``viewer`` (None: an operator)."""
        return work_seen_by(viewer, self.requests, self.streams, self.planning.plan, now)

    def validate_state(self) -> None:
        """Check the books' invariants; ``StateInvalid`` names the first that does not hold."""
        problems = list(broken_invariants(self))
        if problems:
            raise StateInvalid("; ".join(problems))

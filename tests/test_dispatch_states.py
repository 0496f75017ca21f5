"""The dispatch core explored by random interleavings (Hypothesis state machine): requests, small
requests, streams, results in any order, duplicates, refusals, drift, boards lost and back, timers, and
two clients that use the same ids (each id names only its own client's work).

After every step nothing has been answered twice; at the end, once every shard still out is
answered, every request has ended exactly once and every frame of an open stream has been
answered exactly once. ``HYPOTHESIS_PROFILE=long`` explores longer (see docs/reliability.md).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edgecollab.coordinator.events import (
    AnswerRequest,
    CutOff,
    FailRequest,
    FramesArrived,
    Instruction,
    NodeLost,
    NodeProfiled,
    NodeRegistered,
    PlanSolved,
    Replan,
    RequestCancelled,
    RequestOpened,
    SendShard,
    ShardRefused,
    ShardReturned,
    StreamClosed,
    StreamOpened,
    StreamReply,
    Tick,
    WakeAt,
)
from edgecollab.coordinator.ownership import scoped_key
from edgecollab.coordinator.streams import StreamStatus
from edgecollab.planner.joint import plan_jointly
from edgecollab.protocol import (
    Answer,
    Cancel,
    Error,
    FrameResults,
    Frames,
    ShardResult,
    StreamClose,
    StreamOpen,
    Submit,
)

from .core_helpers import core_with, cpu_like, suspects

SHAPE = (1, 2, 2)


ROWS = {
    "a": {"fast": cpu_like(0.5), "slow": cpu_like(2.0)},
    "b": {"fast": cpu_like(0.25), "slow": cpu_like(1.0)},
    "c": {"fast": cpu_like(1.0), "slow": cpu_like(4.0)},
}
MAX_OPEN = 6
CLIENTS = [b"c", b"d"]
Owned = tuple[bytes, str]  # (client, the id it gave)
EXAMPLES = 300 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 25
STEPS = 200 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 40


class DispatchStates(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = core_with(ROWS, SHAPE, shard_size=4, window=2, stream_queue_frames=16)
        self.now = 0.0
        self.out: list[SendShard] = []  # shards sent and not answered yet (answers may repeat them)
        self.replans: list[Replan] = []
        self.requests: dict[Owned, int] = {}  # -> inputs
        self.ended: Counter[Owned] = Counter()  # request or stream -> answers and failures seen
        self.streams: dict[Owned, int] = {}  # open stream -> frames sent
        self.frames_answered: Counter[tuple[Owned, int]] = Counter()
        self.failed_streams: set[Owned] = set()
        self.down: set[str] = set()
        self.cancelled: set[Owned] = set()  # requests their client gave up
        self.wake_at: float | None = None  # the earliest Tick the core asked for (WakeAt), not yet fed

    # --- carrying out ----------------------------------------------------------------------
    def feed(self, event: Any) -> None:
        self.apply(self.core.handle(event))

    def apply(self, instructions: list[Instruction]) -> None:
        for i in instructions:
            if isinstance(i, SendShard):
                self.out.append(i)
            elif isinstance(i, Replan):
                self.replans.append(i)
            elif isinstance(i, WakeAt):
                self.wake_at = i.at if self.wake_at is None else min(self.wake_at, i.at)
            elif isinstance(i, CutOff):  # refused too often: gone until its worker registers again
                self.down.add(i.node)
            elif isinstance(i, AnswerRequest):
                assert len(i.result.predictions) == self.requests[(i.client, i.result.request_id)]
                self.ended[(i.client, i.result.request_id)] += 1
            elif isinstance(i, FailRequest):
                owned = (i.client, i.error.request_id)
                if owned in self.requests:
                    self.ended[owned] += 1
                elif owned in self.streams:
                    self.failed_streams.add(owned)
            elif isinstance(i, StreamReply) and isinstance(i.message, FrameResults):
                for seq in i.message.seqs.tolist():
                    self.frames_answered[((i.client, i.message.stream_id), seq)] += 1
            elif isinstance(i, StreamReply) and isinstance(i.message, Answer) and i.message.data.get("frames"):
                self.ended[(i.client, i.message.request_id)] += 1  # a closed stream's summary

    def step(self, dt: float = 0.001) -> float:
        self.now += dt
        return self.now

    # --- rules -----------------------------------------------------------------------------
    # Few open at once: joint plans then solve well within the MILP's time limit, so a replay is exact.
    @precondition(lambda self: len(self.core.requests) + len(self.core.streams) < MAX_OPEN)
    @rule(
        inputs=st.integers(1, 60),
        rate=st.one_of(st.none(), st.sampled_from([50.0, 2000.0, 1e6])),
        client=st.sampled_from(CLIENTS),
    )
    def submit(self, inputs: int, rate: float | None, client: bytes) -> None:
        # Each client counts its own ids (replayable): both clients use r0, r1, ...
        rid = f"r{sum(c == client for c, _ in self.requests)}"
        self.requests[(client, rid)] = inputs
        self.feed(RequestOpened(client, Submit(rid, np.zeros((inputs, *SHAPE), np.uint8), rate), self.step()))

    @precondition(lambda self: len(self.core.requests) + len(self.core.streams) < MAX_OPEN)
    @rule(
        fps=st.sampled_from([20.0, 200.0, 1e6]),
        policy=st.sampled_from(["block", "drop-oldest"]),
        client=st.sampled_from(CLIENTS),
    )
    def open_stream(self, fps: float, policy: str, client: bytes) -> None:
        sid = f"s{sum(c == client for c, _ in self.streams)}"
        self.streams[(client, sid)] = 0
        self.feed(StreamOpened(client, StreamOpen(sid, fps, degrade=True, backpressure=policy), self.step()))

    @precondition(lambda self: bool(self.replans))
    @rule()
    def solve(self) -> None:
        replan = self.replans.pop()
        self.replans.clear()  # only the latest generation is awaited
        plan = plan_jointly(replan.table, replan.demands, replan.nodes)
        self.feed(PlanSolved(replan.generation, plan, "", self.step()))

    @precondition(lambda self: bool(self.streams))
    @rule(pick=st.integers(0, 1000), count=st.integers(1, 6))
    def send_frames(self, pick: int, count: int) -> None:
        client, sid = owned = sorted(self.streams)[pick % len(self.streams)]
        stream = self.core.streams.get(scoped_key(client, sid))
        if stream is None or stream.status != "open":
            return
        first = self.streams[owned]
        self.streams[owned] += count
        self.feed(FramesArrived(client, Frames(sid, first, np.zeros((count, *SHAPE), np.uint8)), self.step()))

    @precondition(lambda self: bool(self.streams))
    @rule(pick=st.integers(0, 1000))
    def close_stream(self, pick: int) -> None:
        client, sid = sorted(self.streams)[pick % len(self.streams)]
        stream = self.core.streams.get(scoped_key(client, sid))
        if stream is not None and stream.status is StreamStatus.OPEN:
            self.feed(StreamClosed(client, StreamClose(sid), self.step()))

    @precondition(lambda self: bool(self.out))
    @rule(pick=st.integers(0, 1000), duplicate=st.booleans(), slow=st.booleans())
    def answer(self, pick: int, duplicate: bool, slow: bool = False) -> None:
        """A shard's result; ``slow``: it took 0.3 s of the board's time, far off the table (drift)."""
        send = self.out[pick % len(self.out)]
        if not duplicate:
            self.out.remove(send)
        shard = send.shard
        busy_s = 0.3 if slow else 0.001
        result = ShardResult(
            shard.request_id, shard.shard_id, shard.attempt, np.zeros(len(shard.inputs), np.int64), busy_s
        )
        self.feed(ShardReturned(send.node, result, self.step(busy_s)))

    @precondition(lambda self: bool(self.out))
    @rule(pick=st.integers(0, 1000))
    def refuse(self, pick: int) -> None:
        send = self.out.pop(pick % len(self.out))
        shard = send.shard
        error = Error("internal", "try elsewhere", shard.request_id, shard.shard_id, shard.attempt)
        self.feed(ShardRefused(send.node, error, self.step()))

    @precondition(lambda self: bool(self.core.requests))
    @rule(pick=st.integers(0, 1000), intruder=st.booleans())
    def cancel(self, pick: int, intruder: bool) -> None:
        """The client gives up a request (or another client tries to, with the same id: nothing changes)."""
        r = self.core.requests[sorted(self.core.requests)[pick % len(self.core.requests)]]
        self.feed(RequestCancelled(b"x" if intruder else r.client, Cancel(r.request_id), self.step()))
        if not intruder:
            self.cancelled.add((r.client, r.request_id))
        assert (r.key in self.core.requests) == intruder

    @precondition(lambda self: bool(self.core.streams))
    @rule(pick=st.integers(0, 1000))
    def cancel_stream(self, pick: int) -> None:
        """The client gives up a stream: it is forgotten, frames still out are never answered."""
        stream = self.core.streams[sorted(self.core.streams)[pick % len(self.core.streams)]]
        self.feed(RequestCancelled(stream.client, Cancel(stream.stream_id), self.step()))
        self.failed_streams.add((stream.client, stream.stream_id))  # its frames need no answer now
        assert stream.key not in self.core.streams

    @precondition(lambda self: len(self.down) < len(ROWS) - 1)
    @rule(node=st.sampled_from(sorted(ROWS)))
    def lose(self, node: str) -> None:
        if node not in self.down:
            self.down.add(node)
            self.feed(NodeLost(node, "test", self.step()))

    @precondition(lambda self: bool(self.down))
    @rule(node=st.sampled_from(sorted(ROWS)))
    def come_back(self, node: str) -> None:
        if node in self.down:
            self.down.discard(node)
            self.feed(NodeRegistered(node, tuple(ROWS[node]), self.step()))
            self.feed(NodeProfiled(node, ROWS[node], self.step()))

    @rule(dt=st.sampled_from([0.001, 0.05, 0.5, 5.0]))
    def tick(self, dt: float) -> None:
        """Time passes; 5 s with shards out and no answer is past the stall deadline: those nodes are suspect."""
        self.feed(Tick(self.step(dt)))

    # --- invariants ------------------------------------------------------------------------
    @invariant()
    def the_books_hold_their_invariants(self) -> None:
        self.core.validate_state()

    @invariant()
    def nothing_ends_twice(self) -> None:
        assert all(n == 1 for n in self.ended.values()), self.ended
        assert all(n == 1 for n in self.frames_answered.values())

    @invariant()
    def no_shard_is_booked_on_a_node_that_is_down(self) -> None:
        assert not (self.core.nodes.registered() & self.down)

    @invariant()
    def a_suspect_node_holds_no_work_and_gets_none(self) -> None:
        for node in suspects(self.core):
            assert not list(self.core.nodes[node].dispatched()) and node not in self.core.nodes.usable()

    @invariant()
    def a_cancelled_request_is_forgotten(self) -> None:
        assert not ({scoped_key(client, rid) for client, rid in self.cancelled} & set(self.core.requests))

    def drain(self) -> None:
        """Solve every plan asked for and answer every shard out, until nothing more is asked or sent."""
        for _ in range(5_000):
            if self.replans:
                self.solve()
            elif self.out:
                self.answer(0, False)
            elif self.wake_at is not None:  # frames held for a fuller batch: the shell's timer fires
                at, self.wake_at = self.wake_at, None
                self.feed(Tick(self.step(max(at - self.now, 0.0) + 0.001)))
            else:
                break

    def teardown(self) -> None:
        """Answer everything still out (and what that releases) until nothing moves; then all ended."""
        for node in sorted(self.down):
            self.come_back(node)
        self.drain()
        for stream in list(self.core.streams.values()):
            if stream.status is StreamStatus.OPEN:
                self.feed(StreamClosed(stream.client, StreamClose(stream.stream_id), self.step()))
        self.drain()
        for owned in self.requests:
            if owned in self.cancelled:  # it may have been answered before the cancel came: never twice
                assert self.ended[owned] <= 1, f"cancelled request {owned} ended {self.ended[owned]} times"
                continue
            assert self.ended[owned] == 1, f"request {owned} ended {self.ended[owned]} times"
        for owned, sent in self.streams.items():
            if owned in self.failed_streams:
                continue
            answered = [self.frames_answered[(owned, seq)] for seq in range(sent)]  # a drop is an answer too
            assert all(n == 1 for n in answered), (owned, answered)
        assert not self.core.requests and not self.core.streams


DispatchStates.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, suppress_health_check=list(HealthCheck)
)
test_dispatch_states = DispatchStates.TestCase

"""The dispatch core, driven by events alone: no sockets, no event loop, no clock."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import numpy as np
import pytest

from edgecollab.config import CoordinatorConfig
from edgecollab.coordinator.dispatch import DispatchCore
from edgecollab.coordinator.events import (
    AnswerRequest,
    ClientGone,
    CutOff,
    FailRequest,
    Instruction,
    NodeLost,
    Replan,
    RequestCancelled,
    RequestOpened,
    SendShard,
    ServedTask,
    ShardRefused,
    ShardReturned,
    ShuttingDown,
    Tick,
)
from edgecollab.coordinator.nodes import MAX_BAD_RESULTS, SentPack
from edgecollab.coordinator.ownership import scoped_key
from edgecollab.coordinator.planning import SMALL_DEMAND
from edgecollab.planner import ExplorationTable, Measurement
from edgecollab.planner.joint import plan_jointly
from edgecollab.protocol import Cancel, Error, ShardResult, Submit

from .core_helpers import ACCURACY, booked, core_with, sends, solve, suspects

SHAPE = (1, 4, 4)
# Node b is four times as fast as a; "slow" costs four times "fast".
SPEEDS = {"a": {"fast": 2000.0, "slow": 500.0}, "b": {"fast": 8000.0, "slow": 2000.0}}


def make_core(**settings: Any) -> DispatchCore:
    rows = {node: {v: Measurement(ips, 4.0) for v, ips in speeds.items()} for node, speeds in SPEEDS.items()}
    return core_with(rows, SHAPE, **{"shard_size": 8, "window": 2, **settings})


def submit(n: int, client: bytes = b"c", **fields: Any) -> Submit:
    inputs = np.arange(n * 16, dtype=np.uint64).astype(np.uint8).reshape(n, *SHAPE)
    return Submit(uuid.uuid4().hex, inputs, **fields)


def answer(send: SendShard, now: float, busy_s: float = 0.004) -> ShardReturned:
    shard = send.shard
    predictions = np.full(len(shard.inputs), shard.shard_id, np.int64)
    return ShardReturned(
        send.node, ShardResult(shard.request_id, shard.shard_id, shard.attempt, predictions, busy_s), now
    )


def run_to_end(core: DispatchCore, out: list[Instruction], now: float = 1.0) -> list[Instruction]:
    """Answer every shard sent (and every shard those answers release) until nothing is in flight."""
    final: list[Instruction] = []
    pending = sends(out)
    while pending:
        send = pending.pop(0)
        now += 0.001
        more = core.handle(answer(send, now))
        pending += sends(more)
        final += [i for i in more if not isinstance(i, SendShard)]
    return final


def test_a_lone_request_starts_at_once_and_the_next_one_waits_for_the_joint_plan() -> None:
    core = make_core()
    out = core.handle(RequestOpened(b"c", submit(200, target_ips=3000.0), 0.1))
    assert not [i for i in out if isinstance(i, Replan)]  # alone: planned inline, no solve to wait for
    assert {s.node for s in sends(out)} == {"a", "b"}
    assert all(len([s for s in sends(out) if s.node == n]) == 2 for n in "ab")  # window = 2 per node
    second = core.handle(RequestOpened(b"d", submit(200, target_ips=3000.0), 0.105))
    assert not sends(second) and [type(i) for i in second] == [Replan]  # now the boards are shared
    final = run_to_end(core, [*out, *solve(core, second, 0.11)])
    done = [i for i in final if isinstance(i, AnswerRequest)]
    assert sorted(i.client for i in done) == [b"c", b"d"]
    assert all(len(i.result.predictions) == 200 and (i.result.predictions >= 0).all() for i in done)
    assert not core.requests and core.outcomes["completed"] == 2


def test_small_requests_cost_no_solve_and_go_to_the_first_free_node() -> None:
    core = make_core()
    first = core.handle(RequestOpened(b"c", submit(1), 0.0))
    assert len(sends(first)) == 1  # sent at once, before any plan
    replans = [i for i in first if isinstance(i, Replan)]
    assert len(replans) == 1 and replans[0].demands[-1].key == SMALL_DEMAND  # the pooled rate is planned for
    solve(core, first, 0.01)
    solves = core.counters["solves"]
    for k in range(20):  # a steady trickle of one-input requests: no further solve
        out = core.handle(RequestOpened(b"c", submit(1), 0.02 + k * 0.01))
        assert len(sends(out)) == 1 and not any(isinstance(i, Replan) for i in out)
        final = core.handle(answer(sends(out)[0], 0.025 + k * 0.01))
        assert [type(i) for i in final] == [AnswerRequest]
    assert core.counters["solves"] == solves


def test_a_lost_node_gives_its_shards_to_the_others_and_every_input_ends_once() -> None:
    core = make_core()
    out = solve(core, core.handle(RequestOpened(b"c", submit(120, target_ips=2000.0), 0.0)))
    lost = [s for s in sends(out) if s.node == "a"]
    kept = [s for s in sends(out) if s.node == "b"]
    out = core.handle(NodeLost("a", "test", 0.5))
    assert not [s for s in sends(out) if s.node == "a"]
    # A late result from the lost node is discarded, not counted twice.
    late = core.handle(answer(lost[0], 0.6))
    assert not any(isinstance(i, AnswerRequest) for i in late) and core.counters["late_replies"] == 1
    replan = [i for i in out if isinstance(i, Replan)]
    more = solve(core, replan, 0.7) if replan else []
    final = run_to_end(core, [*kept, *sends(out), *sends(more)])
    (done,) = [i for i in final if isinstance(i, AnswerRequest)]
    assert sum(a["inputs"] for a in done.result.report["assignment"]) == 120
    assert (done.result.predictions >= 0).all()
    assert done.result.report["retries"] == len(lost)


def test_duplicate_and_stale_results_are_discarded() -> None:
    core = make_core()
    out = solve(core, core.handle(RequestOpened(b"c", submit(100, target_ips=1000.0), 0.0)))
    send = sends(out)[0]
    core.handle(answer(send, 0.1))
    assert core.counters["late_replies"] == 0
    core.handle(answer(send, 0.2))  # the same (shard, attempt) again
    assert core.counters["late_replies"] == 1


def test_a_refused_shard_is_sent_again_unless_the_error_is_final() -> None:
    core = make_core()
    out = solve(core, core.handle(RequestOpened(b"c", submit(100, target_ips=500.0), 0.0)))
    shard = sends(out)[0].shard
    again = core.handle(
        ShardRefused(sends(out)[0].node, Error("internal", "oops", shard.request_id, shard.shard_id, 0), 0.1)
    )
    # Sent again with a new attempt (beside, on the freed slot, the node's next shard of its own).
    (resent,) = [s for s in sends(again) if s.shard.attempt == 1]
    assert sorted(s.shard.attempt for s in sends(again)) in ([1], [0, 1])
    shard = resent.shard
    final = core.handle(
        ShardRefused(resent.node, Error("invalid_input", "bad", shard.request_id, shard.shard_id, 1), 0.2)
    )
    (failed,) = [i for i in final if isinstance(i, FailRequest)]
    assert failed.error.code == "invalid_input" and "bad" in failed.error.message


def test_a_result_of_the_wrong_shape_is_sent_again() -> None:
    core = make_core()
    out = solve(core, core.handle(RequestOpened(b"c", submit(100, target_ips=500.0), 0.0)))
    shard = sends(out)[0].shard
    bad = ShardResult(shard.request_id, shard.shard_id, 0, np.zeros((len(shard.inputs), 10), np.int64), 0.01)
    again = core.handle(ShardReturned(sends(out)[0].node, bad, 0.1))
    # Sent again with a new attempt (beside, on the freed slot, the node's next shard of its own).
    resent = sorted(s.shard.attempt for s in sends(again))
    assert core.counters["bad_results"] == 1 and resent in ([1], [0, 1])


def test_two_requests_share_the_boards_by_their_planned_rates() -> None:
    """A tight request and a loose one: the loose one gets only what the joint plan gives it."""
    core = make_core()
    tight = submit(4000, target_ips=7000.0)
    loose = submit(400, target_ips=200.0)
    out = core.handle(RequestOpened(b"t", tight, 0.0))  # alone: it starts at once on its own plan
    out += core.handle(RequestOpened(b"l", loose, 0.0))  # the boards are shared now: one joint plan for both
    out = [*sends(out), *solve(core, out)]
    tight_key, loose_key = scoped_key(b"t", tight.request_id), scoped_key(b"l", loose.request_id)
    assert {booked(core, s).request for s in sends(out)} <= {tight_key, loose_key}  # type: ignore[union-attr]
    plan = core.planning.plan
    assert plan is not None
    assert plan.demands[tight_key].feasible and plan.demands[loose_key].feasible
    # Alone, the tight request would get the same accuracy (the loose one takes only spare time).
    alone = plan_jointly(core.table, [d for d in core.planning.demands(0.0) if d.key == tight_key], ["a", "b"])
    assert plan.demands[tight_key].expected_accuracy >= alone.demands[tight_key].expected_accuracy - 1e-3
    # Each request's stride weight on a node is the fraction of that node's time the joint plan gave it:
    # together they are the node's planned load, and the loose one's is the smaller.
    tight_run, loose_run = core.requests[tight_key], core.requests[loose_key]
    for node, load in plan.node_load.items():
        together = tight_run.weights.get(node, 0.0) + loose_run.weights.get(node, 0.0)
        assert together == pytest.approx(load, rel=0.05, abs=0.02), (node, tight_run.weights, loose_run.weights)
        assert loose_run.weights.get(node, 0.0) < tight_run.weights.get(node, 1.0)
    final = run_to_end(core, out)
    assert sorted(i.client for i in final if isinstance(i, AnswerRequest)) == [b"l", b"t"]


def test_an_idle_node_steals_the_tail_of_a_slower_one() -> None:
    core = make_core()
    out = solve(core, core.handle(RequestOpened(b"c", submit(400, target_ips=1000.0), 0.0)))
    # Only node b answers: once its own queue is empty it takes a's queued shards.
    pending = [s for s in sends(out) if s.node == "b"]
    now = 0.1
    while pending:
        now += 0.001
        pending += [s for s in sends(core.handle(answer(pending.pop(0), now))) if s.node == "b"]
    run = next(iter(core.requests.values())).run
    assert run is not None and run.steals > 0


def test_drift_asks_for_a_new_plan_and_the_rest_is_cut_again() -> None:
    core = make_core()
    out = solve(core, core.handle(RequestOpened(b"c", submit(4000, target_ips=3000.0), 0.0)))
    replans = 0
    pending, now = sends(out), 0.0
    while pending and not replans:
        send = pending.pop(0)
        now += 0.05  # every shard takes far longer than the table says: the boards slowed down
        more = core.handle(answer(send, now, busy_s=0.05))
        replans += sum(isinstance(i, Replan) for i in more)
        pending += sends(more)
    assert replans == 1 and core.manager.state == "replanning"
    solve(core, [i for i in more if isinstance(i, Replan)], now)
    assert core.counters["replans"] >= 1


def test_bad_values_are_refused_with_the_field_named_and_nothing_changes() -> None:
    core = make_core()
    for fields, named in [
        ({"target_ips": 0.0}, "target_ips"),
        ({"target_ips": float("nan")}, "target_ips"),
        ({"target_ips": float("inf")}, "target_ips"),
        ({"target_ips": 1e300}, "target_ips"),
        ({"min_accuracy": -1.0}, "min_accuracy"),
        ({"min_accuracy": 2.0}, "min_accuracy"),
        ({"policy": "fastest"}, "policy"),
    ]:
        out = core.handle(RequestOpened(b"c", submit(4, **fields), 0.0))
        (failed,) = out
        assert isinstance(failed, FailRequest) and failed.error.code == "invalid_input"
        assert failed.error.message.startswith(named)
    assert not core.requests and core.counters["solves"] == 0  # nothing to plan for: no solve


def test_over_the_admission_cap_the_answer_is_busy() -> None:
    core = make_core(max_requests=2)
    for _ in range(2):
        core.handle(RequestOpened(b"c", submit(100, target_ips=100.0), 0.0))
    (busy,) = core.handle(RequestOpened(b"c", submit(100, target_ips=100.0), 0.0))
    assert isinstance(busy, FailRequest) and busy.error.code == "busy"


def test_requests_fail_when_every_node_is_lost_and_on_shutdown() -> None:
    core = make_core()
    core.manager.expire_startup()
    out = solve(core, core.handle(RequestOpened(b"c", submit(100, target_ips=100.0), 0.0)))
    assert sends(out)
    core.handle(NodeLost("a", "gone", 0.1))
    out = core.handle(NodeLost("b", "gone", 0.2))
    (failed,) = [i for i in out if isinstance(i, FailRequest)]
    assert failed.error.code == "node_lost" and not core.requests
    core = make_core()
    core.handle(RequestOpened(b"c", submit(100, target_ips=100.0), 0.0))
    (refused,) = [i for i in core.handle(ShuttingDown(False, 0.1)) if isinstance(i, FailRequest)] or [None]
    assert refused is None  # running requests get the grace period
    assert [i.error.code for i in core.handle(RequestOpened(b"c", submit(4), 0.2)) if isinstance(i, FailRequest)] == [
        "shutting_down"
    ]
    out = core.handle(ShuttingDown(True, 0.3))
    assert [i.error.code for i in out if isinstance(i, FailRequest)] == ["shutting_down"]


def test_a_request_waiting_for_the_cluster_times_out_busy() -> None:
    config = CoordinatorConfig(startup_timeout_s=1.0)
    core = DispatchCore(config, ["a"], ExplorationTable(ACCURACY), [ServedTask("", SHAPE, np.dtype(np.uint8))])
    assert core.handle(RequestOpened(b"c", submit(4), 0.0)) == []
    assert core.handle(Tick(0.5)) == []
    (busy,) = core.handle(Tick(1.1))
    assert isinstance(busy, FailRequest) and busy.error.code == "busy" and "no profiled node" in busy.error.message


@pytest.mark.parametrize("inputs", [1, 8])
def test_small_requests_after_a_node_loss_still_end_exactly_once(inputs: int) -> None:
    core = make_core()
    out = core.handle(RequestOpened(b"c", submit(inputs), 0.0))
    (send,) = sends(out)
    out = core.handle(NodeLost(send.node, "gone", 0.1))
    (again,) = sends(out)
    assert again.node != send.node and again.shard.attempt == 1
    final = core.handle(answer(again, 0.2))
    (done,) = [i for i in final if isinstance(i, AnswerRequest)]
    assert len(done.result.predictions) == inputs


@pytest.mark.parametrize("fields", [{"target_ips": 1e-300}, {"target_ips": 5e-324, "strict": True}])
def test_a_vanishingly_small_target_is_still_planned_and_served(fields: dict[str, Any]) -> None:
    core = make_core()
    first = core.handle(RequestOpened(b"c", submit(1, **fields), 0.0))
    final = run_to_end(core, [*sends(first), *solve(core, first)])
    (done,) = [i for i in final if isinstance(i, AnswerRequest)]
    assert len(done.result.predictions) == 1


def test_shards_are_cut_by_each_board_speed_and_a_few_hundred_inputs_wait_for_no_solve() -> None:
    core = make_core(shard_seconds=0.02)  # shard_size 8: shards of 8 to 8 x 8 inputs
    out = solve(core, core.handle(RequestOpened(b"c", submit(2000, target_ips=4000.0), 0.0)))
    table = core.table
    for send in sends(out):  # about 0.02 s of work on its board, within [8, 64] (the last of a share: less)
        ips = table.ips(send.node, send.shard.variant)
        assert len(send.shard.inputs) <= int(min(max(8, ips * 0.02), 64)), (send.node, send.shard.variant)
    largest = {n: max(len(s.shard.inputs) for s in sends(out) if s.node == n) for n in "ab"}
    assert largest["b"] > largest["a"]  # b is four times as fast: its shards are larger
    small = core.handle(RequestOpened(b"c", submit(64), 0.01))  # 8 x shard_size: served from the plan at once
    assert not sends(small) or booked(core, sends(small)[0]).request != booked(core, sends(out)[0]).request  # type: ignore[union-attr]
    assert any(r.small for r in core.requests.values())


def test_small_requests_that_queue_while_the_boards_are_busy_go_out_together_and_are_answered_apart() -> None:
    core = make_core()
    first = [sends(core.handle(RequestOpened(b"c", submit(1), 0.0 + k * 1e-4))) for k in range(4)]
    assert [len(s) for s in first] == [1, 1, 1, 1]  # 2 nodes x window 2: each goes alone at once
    queued = [submit(1) for _ in range(6)]  # node a's shards hold 10 inputs here (500/s x 0.02 s): all fit
    for k, request in enumerate(queued):
        assert not sends(core.handle(RequestOpened(b"c", request, 0.001 + k * 1e-4)))  # every board busy
    out = core.handle(answer(first[0][0], 0.01))
    (pack,) = sends(out)  # the freed slot takes every queued request at once
    assert isinstance(booked(core, pack), SentPack) and len(pack.shard.inputs) == sum(len(r.inputs) for r in queued)
    assert core.in_flight(pack.node) == 2  # one message, one slot of the window
    predictions = np.arange(len(pack.shard.inputs), dtype=np.int64)
    done = core.handle(
        ShardReturned(pack.node, ShardResult(pack.shard.request_id, pack.shard.shard_id, 0, predictions, 0.01), 0.02)
    )
    answers = {i.result.request_id: i.result.predictions.tolist() for i in done if isinstance(i, AnswerRequest)}
    start = 0
    for request in queued:  # each request gets its own slice, in order
        assert answers[request.request_id] == list(range(start, start + len(request.inputs)))
        start += len(request.inputs)


def test_a_pack_lost_with_its_board_is_sent_again_request_by_request() -> None:
    core = make_core()
    initial = [send for k in range(4) for send in sends(core.handle(RequestOpened(b"c", submit(1), k * 1e-4)))]
    queued = [submit(2) for _ in range(3)]
    for request in queued:
        core.handle(RequestOpened(b"c", request, 0.001))
    on_a = [send for send in initial if send.node == "a"]
    (pack,) = sends(core.handle(answer(on_a[0], 0.01)))  # a frees a slot and takes the three together
    assert pack.node == "a" and isinstance(booked(core, pack), SentPack) and len(pack.shard.inputs) == 6
    out = core.handle(NodeLost("a", "test", 0.02))
    late = core.handle(
        ShardReturned("a", ShardResult(pack.shard.request_id, pack.shard.shard_id, 0, np.zeros(6, np.int64), 0.0), 0.03)
    )
    assert not [i for i in late if isinstance(i, AnswerRequest)]  # the lost board's answer changes nothing
    final = run_to_end(core, [*[send for send in initial if send.node == "b"], *out, *late], 0.04)
    answered = [i.result.request_id for i in out + late + final if isinstance(i, AnswerRequest)]
    assert all(answered.count(r.request_id) == 1 for r in queued)  # each answered once, by b
    assert not core.requests


def test_a_node_whose_inference_is_stuck_is_suspect_and_its_shards_go_elsewhere_once() -> None:
    """Alive (its heartbeats go on) but answering nothing: past the deadline its shards are sent again
    to the other node, it gets no new work, its late answers are discarded, and every input ends once."""
    core = make_core(stall_floor_s=2.0, stall_factor=10.0)
    out = solve(core, core.handle(RequestOpened(b"c", submit(200, target_ips=3000.0), 0.1)), 0.11)
    stuck = [s for s in sends(out) if s.node == "a"]
    assert stuck
    pending = [s for s in sends(out) if s.node == "b"]
    now, final, late = 0.2, [], []
    # Node b answers everything; node a answers nothing. Ticks go on (the shell's clock).
    for _ in range(400):
        now += 0.01
        more = core.handle(answer(pending.pop(0), now)) if pending else core.handle(Tick(now))
        pending += [s for s in sends(more) if s.node == "b"]
        late += [s for s in sends(more) if s.node == "a"]
        final += [i for i in more if isinstance(i, AnswerRequest | FailRequest)]
        if final:
            break
    assert "a" in suspects(core) and core.counters["nodes_stalled"] == 1
    assert "a" not in core.nodes.usable()
    # Nothing new went to the stuck node after it became suspect, and the request finished.
    assert all(s.shard.attempt == 0 for s in late)
    (done,) = final
    assert isinstance(done, AnswerRequest) and (done.result.predictions >= 0).all()
    # Its late answers are discarded: the request is not answered twice.
    before = core.counters["late_replies"]
    assert not [i for s in stuck for i in core.handle(answer(s, now + 1)) if isinstance(i, AnswerRequest)]
    assert core.counters["late_replies"] == before + len(stuck)
    # Answering again makes it usable again.
    assert "a" not in suspects(core) and "a" in core.nodes.usable()


def test_a_stalled_nodes_answer_that_comes_before_the_resent_one_wins() -> None:
    core = make_core(stall_floor_s=2.0, stall_factor=10.0)
    out = solve(core, core.handle(RequestOpened(b"c", submit(200, target_ips=3000.0), 0.1)), 0.11)
    stuck = [s for s in sends(out) if s.node == "a"]
    pending, now = [s for s in sends(out) if s.node == "b"], 0.2
    while pending:  # b does all it can (its own shards, then a's queued ones); a answers nothing
        now += 0.001
        pending += [s for s in sends(core.handle(answer(pending.pop(0), now))) if s.node == "b"]
    assert stuck and not core.requests[next(iter(core.requests))].run.finished  # type: ignore[union-attr]
    more = core.handle(Tick(3.0))  # past the deadline: a is suspect, its shards go to b with a new attempt
    copies = sends(more)
    assert suspects(core) == {"a"} and copies and all(c.node == "b" and c.shard.attempt == 1 for c in copies)
    # a answers after all, before b has answered any copy: its answers count, the copies' are discarded.
    final = [i for s in stuck for i in core.handle(answer(s, 3.1)) if isinstance(i, AnswerRequest | FailRequest)]
    assert core.counters["stalled_answers_used"] == len(stuck) and "a" not in suspects(core)
    (done,) = final  # every input had an answer: the request is answered at once
    assert isinstance(done, AnswerRequest) and (done.result.predictions >= 0).all()
    by_node = [done.result.nodes[i] for i in done.result.provenance[:, 1]]
    assert by_node.count("a") == sum(len(s.shard.inputs) for s in stuck)  # a's answers are the ones kept
    later = [i for c in copies for i in core.handle(answer(c, 3.2))]
    assert not [i for i in later if isinstance(i, AnswerRequest | FailRequest)]  # b's copies: discarded


def test_a_slow_node_within_its_deadline_is_not_suspect() -> None:
    core = make_core(stall_floor_s=2.0)
    out = solve(core, core.handle(RequestOpened(b"c", submit(64), 0.1)), 0.11)
    for s in sends(out):
        core.handle(Tick(1.9))  # under the floor: waiting is normal
        core.handle(answer(s, 1.95))
    assert not suspects(core) and core.counters["nodes_stalled"] == 0


def bad_answer(send: SendShard, now: float) -> ShardReturned:
    """A result of the wrong shape: a 2-D array where one prediction per input belongs."""
    shard = send.shard
    predictions = np.zeros((len(shard.inputs), 2), np.int64)
    return ShardReturned(
        send.node, ShardResult(shard.request_id, shard.shard_id, shard.attempt, predictions, 0.001), now
    )


def with_a_faulty_node(core: DispatchCore, fault: Any) -> tuple[list[CutOff], list[Instruction]]:
    """Run a 200-input request to its end: node a answers every shard with ``fault(send, now)``, node b
    answers well. The cut-offs and the request's answers or failures."""
    out = solve(core, core.handle(RequestOpened(b"c", submit(200, target_ips=3000.0), 0.1)), 0.11)
    pending, now, final, cut = sends(out), 0.2, [], []
    while pending:
        send = pending.pop(0)
        now += 0.001
        more = core.handle(fault(send, now) if send.node == "a" else answer(send, now))
        pending += sends(more)
        cut += [i for i in more if isinstance(i, CutOff)]
        final += [i for i in more if isinstance(i, AnswerRequest | FailRequest)]
    return cut, final


def test_a_worker_that_keeps_returning_bad_results_is_cut_off_and_no_request_hangs() -> None:
    core = make_core()
    (cutoff,), (done,) = with_a_faulty_node(core, bad_answer)
    assert cutoff.node == "a" and "bad results" in cutoff.reason
    assert core.counters["bad_results"] >= MAX_BAD_RESULTS and "a" not in core.nodes
    assert isinstance(done, AnswerRequest) and (done.result.predictions >= 0).all()
    assert done.result.nodes == ["b"] or "a" not in [done.result.nodes[i] for i in done.result.provenance[:, 1]]


def test_a_worker_that_fails_every_shard_is_cut_off_and_fails_no_request() -> None:
    """A board whose inference always errs (say, ORT fails on a corrupted model file) answers each shard
    with an ``internal`` error. It is idle at once, so it would take the same shard back again and again:
    its refusals count against it (cut off after MAX_BAD_RESULTS), not against the shard's tries on distinct
    boards, so the request completes on the other board."""

    def refuse(send: SendShard, now: float) -> ShardRefused:
        shard = send.shard
        return ShardRefused("a", Error("internal", "ORT failed", shard.request_id, shard.shard_id, shard.attempt), now)

    core = make_core()
    (cutoff,), (done,) = with_a_faulty_node(core, refuse)
    assert cutoff.node == "a" and "internal: ORT failed" in cutoff.reason
    assert isinstance(done, AnswerRequest), done
    assert core.counters["shards_refused"] == MAX_BAD_RESULTS


def test_outputs_with_nan_are_a_bad_result_and_sent_again() -> None:
    core = make_core()
    out = solve(core, core.handle(RequestOpened(b"c", submit(200, target_ips=3000.0, outputs="all"), 0.1)), 0.11)
    first = sends(out)[0]
    shard, task = first.shard, booked(core, first).task  # type: ignore[union-attr]
    size = len(shard.inputs)
    scores = np.full((size, 3), np.nan, np.float32)
    nan = ShardResult(shard.request_id, shard.shard_id, shard.attempt, np.zeros(size, np.int64), 0.001, {"s": scores})
    more = core.handle(ShardReturned(first.node, nan, 0.2))
    assert core.counters["bad_results"] == 1
    pending, seen, final, now = [*sends(out)[1:], *sends(more)], [], [], 0.3
    while pending:
        send = pending.pop(0)
        seen.append((booked(core, send).task.shard_id, send.shard.attempt))  # type: ignore[union-attr]
        now += 0.001
        with_scores = answer(send, now)
        good = dataclasses.replace(with_scores.result, outputs={"s": np.zeros((len(send.shard.inputs), 3), np.float32)})
        more = core.handle(ShardReturned(send.node, good, now))
        pending += sends(more)
        final += [i for i in more if isinstance(i, AnswerRequest)]
    assert (task.shard_id, shard.attempt + 1) in seen  # sent again, with a new attempt
    (done,) = final
    assert done.result.outputs["s"].shape == (200, 3) and not np.isnan(done.result.outputs["s"]).any()


def test_past_the_memory_cap_a_request_is_busy_at_once_and_the_others_run() -> None:
    core = make_core(max_input_bytes=5_000)  # one 200-input request of 16-byte inputs holds 3,200 bytes
    first = core.handle(RequestOpened(b"c", submit(200, target_ips=3000.0), 0.1))
    second = core.handle(RequestOpened(b"d", submit(200, target_ips=3000.0), 0.1))
    (refused,) = [i for i in second if isinstance(i, FailRequest)]
    assert refused.error.code == "busy" and "max_input_bytes" in refused.error.message
    assert "3,200 bytes" in refused.error.message and len(core.requests) == 1
    final = run_to_end(core, solve(core, first, 0.11))
    assert [type(i) for i in final if isinstance(i, AnswerRequest | FailRequest)] == [AnswerRequest]
    # Once it is answered, there is room again.
    again = core.handle(RequestOpened(b"d", submit(200, target_ips=3000.0), 2.0))
    assert not [i for i in again if isinstance(i, FailRequest)]


def test_a_cancelled_request_sends_nothing_more_and_its_late_results_are_discarded() -> None:
    core = make_core()
    opened = submit(400, target_ips=3000.0)
    out = solve(core, core.handle(RequestOpened(b"c", opened, 0.1)), 0.11)
    in_flight = sends(out)
    # Another client cannot cancel it.
    assert not core.handle(RequestCancelled(b"intruder", Cancel(opened.request_id), 0.12))
    key = scoped_key(b"c", opened.request_id)
    assert key in core.requests and core.counters["cancels_ignored"] == 1
    assert not core.handle(RequestCancelled(b"c", Cancel(opened.request_id), 0.13))
    assert key not in core.requests and core.outcomes["cancelled"] == 1
    later = [i for s in in_flight for i in core.handle(answer(s, 0.2))]
    assert not [i for i in later if isinstance(i, AnswerRequest | FailRequest)]
    assert not [s for s in sends(later) if s.shard.request_id == key]  # its rest was dropped
    assert core.counters["late_replies"] == len(in_flight)


def test_an_id_names_only_its_own_clients_work_and_status_shows_a_client_only_its_own() -> None:
    core = make_core()
    inputs = submit(400).inputs
    mine, theirs = Submit("job-1", inputs, 3000.0), Submit("job-1", inputs[:200], 3000.0)  # the same id
    out = core.handle(RequestOpened(b"c", mine, 0.1, owner="alice"))
    out += core.handle(RequestOpened(b"d", theirs, 0.1, owner="bob"))
    assert not [i for i in out if isinstance(i, FailRequest)]  # no "already running": ids are per client
    while [i for i in out if isinstance(i, Replan)]:  # the second arrived during the first solve
        out = [i for i in out if not isinstance(i, Replan)] + solve(
            core, [i for i in out if isinstance(i, Replan)][-1:], 0.11
        )
    alice = core.work_seen_by("alice", 0.12)
    assert [r["id"] for r in alice["requests"]] == ["job-1"] and alice["requests"][0]["inputs"] == 400
    assert alice["others"] == {"requests": 1, "streams": 0} and "client" not in alice["requests"][0]
    keys = sorted(d["key"] for d in alice["plan"]["demands"])
    assert keys == ["another client's request", "job-1"]  # bob's id is not shown to alice
    operator = core.work_seen_by(None, 0.12)
    assert sorted((r["client"], r["inputs"]) for r in operator["requests"]) == [("alice", 400), ("bob", 200)]
    assert sorted(d["key"] for d in operator["plan"]["demands"]) == ["alice: job-1", "bob: job-1"]
    # Bob cancels "job-1": his own goes, alice's runs on and is answered with all its inputs.
    out += core.handle(RequestCancelled(b"d", Cancel("job-1"), 0.13))
    assert scoped_key(b"d", "job-1") not in core.requests and scoped_key(b"c", "job-1") in core.requests
    final = run_to_end(core, out, 0.2)
    (done,) = [i for i in final if isinstance(i, AnswerRequest | FailRequest)]
    assert isinstance(done, AnswerRequest) and done.client == b"c" and len(done.result.predictions) == 400


def test_a_client_that_is_gone_has_its_requests_dropped_and_the_others_go_on() -> None:
    core = make_core()
    gone, staying = submit(400, target_ips=3000.0), submit(400, b"d", target_ips=3000.0)
    out = solve(core, core.handle(RequestOpened(b"c", gone, 0.1)), 0.11)
    out += core.handle(RequestOpened(b"d", staying, 0.12))
    out += core.handle(ClientGone(b"c", "it stopped reading", 0.13))
    assert scoped_key(b"c", gone.request_id) not in core.requests and core.outcomes["client_gone"] == 1
    while [i for i in out if isinstance(i, Replan)]:  # the plans the arrival and the departure ask for
        out = [i for i in out if not isinstance(i, Replan)] + solve(
            core, [i for i in out if isinstance(i, Replan)][-1:], 0.14
        )
    final = run_to_end(core, out, 0.2)
    (done,) = [i for i in final if isinstance(i, AnswerRequest | FailRequest)]
    assert isinstance(done, AnswerRequest) and done.result.request_id == staying.request_id


def test_a_pinned_variant_runs_every_input_of_a_large_request_on_every_node() -> None:
    core = make_core()
    out = solve(core, core.handle(RequestOpened(b"c", submit(200, target_ips=3000.0, variant="slow"), 0.0)))
    assert {s.shard.variant for s in sends(out)} == {"slow"}  # the plan alone would run "fast" somewhere
    final = run_to_end(core, out)
    (done,) = [i for i in final if isinstance(i, AnswerRequest)]
    assert done.result.variants == ["slow"] and len(done.result.predictions) == 200


def test_pinned_small_requests_run_their_variant_and_share_no_pack_with_another_pin() -> None:
    core = make_core()
    busy = [send for k in range(4) for send in sends(core.handle(RequestOpened(b"c", submit(1), k * 1e-4)))]
    slow, fast = submit(1, variant="slow"), submit(1, variant="fast")
    for k, request in enumerate((slow, fast)):
        assert not sends(core.handle(RequestOpened(b"c", request, 0.001 + k * 1e-4)))  # every board busy
    (first,) = sends(core.handle(answer(busy[0], 0.01)))
    (second,) = sends(core.handle(answer(busy[1], 0.011)))
    assert [first.shard.variant, second.shard.variant] == ["slow", "fast"]  # each alone, at its own pin
    assert len(first.shard.inputs) == len(second.shard.inputs) == 1


def test_a_variant_the_task_does_not_have_is_refused_by_name() -> None:
    core = make_core()
    out = core.handle(RequestOpened(b"c", submit(10, variant="huge"), 0.0))
    (failed,) = [i for i in out if isinstance(i, FailRequest)]
    assert failed.error.code == "invalid_input"
    assert "variant must be one of fast, slow" in failed.error.message and "'huge'" in failed.error.message
    assert not core.requests


def test_a_long_small_queue_goes_out_in_packs_of_each_nodes_share() -> None:
    """Node a's shards hold 10 inputs; with 12 requests of 8 inputs queued (48 a node), a freed slot takes
    its share of the queue in one message, not one request per message."""
    core = make_core()
    busy = [send for k in range(4) for send in sends(core.handle(RequestOpened(b"c", submit(8), k * 1e-4)))]
    queued = [submit(8) for _ in range(12)]
    for k, request in enumerate(queued):
        core.handle(RequestOpened(b"c", request, 0.001 + k * 1e-4))
    assert core.small.queued_inputs == 96
    on_a = [send for send in busy if send.node == "a"]
    (pack,) = sends(core.handle(answer(on_a[0], 0.01)))
    assert isinstance(booked(core, pack), SentPack) and len(pack.shard.inputs) == 48  # 6 requests, a's half
    assert core.small.queued_inputs == 48
    core.validate_state()


def test_events_of_one_turn_are_handled_as_one_batch_with_one_fill() -> None:
    request = submit(800, target_ips=3000.0)  # enough shards that both boards still have their own after a turn
    one_by_one, batched = make_core(), make_core()
    firsts = [
        sends(solve(core, core.handle(RequestOpened(b"c", request, 0.1)), 0.11)) for core in (one_by_one, batched)
    ]
    assert len(firsts[0]) == len(firsts[1]) == 4  # both windows full
    # Both nodes answer in the same turn: as one batch, with one fill after it, the windows refill as they
    # do when each answer is handled alone.
    alone = [i for s in firsts[0] for i in one_by_one.handle(answer(s, 0.2))]
    together, failed = batched.handle_batch([answer(s, 0.2) for s in firsts[1]])
    assert not failed
    assert [(s.node, s.shard.shard_id) for s in sends(together)] == [(s.node, s.shard.shard_id) for s in sends(alone)]
    assert {n: batched.nodes[n].busy for n in "ab"} == {n: one_by_one.nodes[n].busy for n in "ab"}
    batched.validate_state()
    (done,) = [i for i in run_to_end(batched, together) if isinstance(i, AnswerRequest)]
    assert len(done.result.predictions) == 800


def test_an_event_the_core_fails_on_is_returned_and_the_rest_of_its_batch_stands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = make_core()
    broken = submit(1)
    original = core.request_dispatch.open

    def open_or_fail(event: RequestOpened) -> list[Instruction]:
        if event.submit is broken:
            raise RuntimeError("a bug")
        return original(event)

    monkeypatch.setitem(core._handlers, RequestOpened, open_or_fail)
    fine = submit(1)
    out, failed = core.handle_batch([RequestOpened(b"c", broken, 0.0), RequestOpened(b"c", fine, 0.0)])
    assert [type(e) for e, _ in failed] == [RequestOpened] and str(failed[0][1]) == "a bug"
    assert len(sends(out)) == 1 and [r.request_id for r in core.requests.values()] == [fine.request_id]


def test_small_requests_that_arrive_together_are_spread_over_every_free_slot() -> None:
    core = make_core()
    requests = [submit(1) for _ in range(8)]
    out, failed = core.handle_batch([RequestOpened(b"c", r, 0.0) for r in requests])
    assert not failed
    # Four free slots (two nodes, window 2): two requests each, not every request on the first node.
    assert sorted((s.node, len(s.shard.inputs)) for s in sends(out)) == [("a", 2), ("a", 2), ("b", 2), ("b", 2)]
    core.validate_state()

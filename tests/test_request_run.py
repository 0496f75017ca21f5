"""Shards cover every input once, in order; results are accepted exactly once per attempt."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgecollab.coordinator import MAX_ATTEMPTS, MAX_TRIES, RequestRun, ShardFailed
from edgecollab.planner import Assignment, Plan
from edgecollab.protocol import Result, decode, encode


def plan(*shares: tuple[str, str, int]) -> Plan:
    return Plan("test", tuple(Assignment(n, v, k) for n, v, k in shares), 1.0, 0.9)


def test_shards_are_contiguous_and_cover_every_input() -> None:
    run = RequestRun("r", plan(("a", "big", 70), ("b", "small", 33)), shard_size=32)
    assert [(s.start, s.stop, s.planned_node) for s in run.shards] == [
        (0, 32, "a"), (32, 64, "a"), (64, 70, "a"), (70, 102, "b"), (102, 103, "b"),
    ]  # fmt: skip
    assert run.total_inputs == 103 and run.queued_inputs == 103


def drain(run: RequestRun, node: str) -> None:
    while (shard := run.next_shard(node)) is not None:
        assert run.complete(shard.shard_id, shard.attempt, np.arange(shard.start, shard.stop), node, 0.01)


def test_predictions_land_in_input_order() -> None:
    run = RequestRun("r", plan(("a", "big", 50), ("b", "small", 50)), shard_size=16)
    drain(run, "b")
    drain(run, "a")
    assert run.finished
    assert np.array_equal(run.predictions, np.arange(100))
    assert run.tallies[("a", "big")].inputs == 50 and run.tallies[("b", "small")].shards == 4


def test_duplicates_and_stale_attempts_are_refused() -> None:
    run = RequestRun("r", plan(("a", "big", 10)), shard_size=10)
    shard = run.next_shard("a")
    assert shard is not None
    run.requeue(shard, "a")  # node lost: attempt 1 goes to someone else
    assert not run.complete(0, 0, np.zeros(10), "a", 0.1), "a reply for attempt 0 is late"
    again = run.next_shard("b")
    assert again is not None and again.attempt == 1
    assert run.complete(0, 1, np.ones(10), "b", 0.1)
    assert not run.complete(0, 1, np.full(10, 7), "b", 0.1), "a second reply is a duplicate"
    assert not run.complete(5, 0, np.ones(10), "b", 0.1), "no such shard"
    assert np.array_equal(run.predictions, np.ones(10)) and run.finished


def test_wrong_length_result_is_refused() -> None:
    run = RequestRun("r", plan(("a", "big", 10)), shard_size=10)
    run.next_shard("a")
    assert not run.complete(0, 0, np.zeros(3), "a", 0.1)


def test_orphans_go_to_other_nodes_on_their_own_variant() -> None:
    run = RequestRun("r", plan(("a", "big", 64), ("b", "small", 32)), shard_size=32)
    first = run.next_shard("a")
    assert first is not None
    run.requeue(first, "a")
    run.orphan_queue_of("a")  # a is gone: its unsent shard becomes an orphan too
    drain(run, "b")
    assert run.finished and run.tallies[("b", "small")].inputs == 96


def test_an_unplanned_node_takes_only_orphans_of_variants_it_has() -> None:
    run = RequestRun("r", plan(("a", "big", 32)), shard_size=32)
    shard = run.next_shard("a")
    assert shard is not None
    run.requeue(shard, "a")
    assert run.next_shard("c", loaded={"small"}) is None
    taken = run.next_shard("c", loaded={"big", "small"})
    assert taken is not None and taken.variant == "big"


def test_a_shard_lost_on_too_many_nodes_fails_the_request() -> None:
    """A shard that kills every board it lands on: lost on MAX_ATTEMPTS distinct nodes, its request fails."""
    run = RequestRun("r", plan(("a", "big", 4)), shard_size=4)
    nodes = ["a", "b", "c", "d"][:MAX_ATTEMPTS]
    shard = run.next_shard(nodes[0])
    assert shard is not None
    for lost_on, next_node in itertools.pairwise(nodes):
        run.requeue(shard, lost_on)
        shard = run.next_shard(next_node)
        assert shard is not None
    with pytest.raises(ShardFailed, match=f"lost on {MAX_ATTEMPTS} nodes"):
        run.requeue(shard, nodes[-1])


def test_the_same_node_failing_a_shard_again_does_not_use_up_its_tries_on_other_nodes() -> None:
    run = RequestRun("r", plan(("a", "big", 4)), shard_size=4)
    shard = run.next_shard("a")
    assert shard is not None
    for _ in range(MAX_ATTEMPTS + 1):  # more than the distinct-node limit, all on a
        run.requeue(shard, "a")
        shard = run.next_shard("a")
        assert shard is not None
    assert run.complete(shard.shard_id, shard.attempt, np.ones(4), "b", 0.1) and run.finished
    endless = RequestRun("r", plan(("a", "big", 4)), shard_size=4)
    shard = endless.next_shard("a")
    assert shard is not None
    with pytest.raises(ShardFailed, match=f"in {MAX_TRIES} attempts"):  # but not for ever
        for _ in range(MAX_TRIES):
            endless.requeue(shard, "a")
            shard = endless.next_shard("a")
            assert shard is not None


def cost(node: str, variant: str) -> float:
    return {"fast": 0.001, "slow": 0.01}[node]


def test_an_idle_node_steals_the_tail_of_the_slowest_queue() -> None:
    run = RequestRun("r", plan(("fast", "big", 32), ("slow", "small", 128)), shard_size=32)
    drain(run, "fast")
    stolen = run.steal("fast", cost)
    assert stolen is not None and (stolen.start, stolen.stop) == (128, 160)  # the last shard of slow's queue
    assert stolen.variant == "big"  # run on the thief's own variant
    assert run.complete(stolen.shard_id, stolen.attempt, np.zeros(32), "fast", 0.03)
    assert run.steals == 1
    drain(run, "slow")
    assert run.finished and run.tallies[("slow", "small")].inputs == 96


def test_no_steal_when_the_thief_would_be_slower() -> None:
    run = RequestRun("r", plan(("slow", "small", 32), ("fast", "big", 32)), shard_size=32)
    drain(run, "slow")
    assert run.steal("slow", cost) is None  # fast needs 32 ms for its shard, slow would need 320 ms


def test_replan_moves_only_unsent_inputs_and_never_duplicates() -> None:
    run = RequestRun("r", plan(("a", "big", 64), ("b", "small", 64)), shard_size=16)
    in_flight = run.next_shard("a")
    assert in_flight is not None and run.queued_inputs == 112
    run.replan(plan(("b", "small", 80), ("c", "tiny", 32)))
    assert run.queued_inputs == 112 and run.replans == 1
    assert run.complete(in_flight.shard_id, 0, np.arange(16), "a", 0.1)  # the sent shard still counts
    for node in ("a", "b", "c"):
        drain(run, node)
    assert run.finished and np.array_equal(run.predictions, np.arange(128))
    assert run.tallies[("a", "big")].inputs == 16 and run.tallies[("c", "tiny")].inputs == 32
    with pytest.raises(ValueError, match="must cover the 0 queued inputs"):
        run.replan(plan(("a", "big", 1)))


def test_the_timeline_of_a_long_request_stays_small_enough_for_the_report() -> None:
    nodes = [f"n{i}" for i in range(64)]
    run = RequestRun("r", plan(*((n, "v", 3200) for n in nodes)), shard_size=32)
    for n in nodes:
        drain(run, n)
    timeline = run.timeline()
    cells = [c for s in timeline["series"] for c in s["inputs"]]
    assert len(timeline["series"]) == 64 and len(cells) <= 2000
    assert sum(cells) == pytest.approx(run.total_inputs, rel=0.01)
    report = {"timeline": timeline}
    assert (
        decode(encode(Result("r", run.predictions, run.provenance, report))).report == report
    )  # under the header limit

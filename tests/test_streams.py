"""Streams in the dispatch core, driven by events alone: admission, micro-batches bounded by deadlines,
back-pressure, a board lost mid-stream, in-order delivery on a real cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecollab.client import Client, SyncClient
from edgecollab.coordinator.batching import FrameBatch
from edgecollab.coordinator.dispatch import DispatchCore
from edgecollab.coordinator.events import (
    FailRequest,
    FramesArrived,
    Instruction,
    NodeLost,
    RequestCancelled,
    SendShard,
    ShardReturned,
    StreamClosed,
    StreamOpened,
    StreamReply,
    Tick,
    WakeAt,
)
from edgecollab.coordinator.ownership import scoped_key
from edgecollab.coordinator.streams import StreamStatus
from edgecollab.errors import InfeasibleTargetError
from edgecollab.local import LocalCluster
from edgecollab.planner import ExplorationTable, Measurement
from edgecollab.planner.joint import Demand, plan_jointly
from edgecollab.protocol import Answer, Cancel, FrameResults, Frames, ShardResult, StreamClose, StreamOpen

from .cluster_helpers import edgecollab, local_predictions, write_cluster_config
from .core_helpers import ACCURACY, booked, core_with, cpu_like, sends, solve

SHAPE = (1, 4, 4)


def gpu_like(flat_ms: float, ips: float) -> Measurement:
    """Up to 16 inputs cost the same: batching pays."""
    return Measurement(ips, flat_ms, ((1, flat_ms), (4, flat_ms), (16, flat_ms)))


def make_core(rows: dict[str, dict[str, Measurement]], **settings: Any) -> DispatchCore:
    return core_with(rows, SHAPE, task="toy", **{"shard_size": 16, "window": 1, **settings})


def open_stream(core: DispatchCore, now: float = 0.0, **fields: Any) -> tuple[str, list[Instruction]]:
    sid = uuid.uuid4().hex
    out = core.handle(StreamOpened(b"c", StreamOpen(sid, **{"target_fps": 100.0, **fields}), now))
    return sid, solve(core, out, now)


def frames(sid: str, first: int, count: int) -> Frames:
    data = (np.arange(count * 16) % 251).astype(np.uint8).reshape(count, *SHAPE)
    return Frames(sid, first, data)


def replies(out: list[Instruction], kind: type) -> list[Any]:
    return [i.message for i in out if isinstance(i, StreamReply) and isinstance(i.message, kind)]


def answer(send: SendShard, now: float) -> ShardReturned:
    shard = send.shard
    predictions = np.full(len(shard.inputs), 7, np.int64)
    return ShardReturned(send.node, ShardResult(shard.request_id, shard.shard_id, 0, predictions, 0.001), now)


TWO_CPUS = {"a": {"fast": cpu_like(1.0), "slow": cpu_like(4.0)}, "b": {"fast": cpu_like(1.0), "slow": cpu_like(4.0)}}


def test_a_stream_is_admitted_by_the_joint_plan_served_in_batches_and_closed_with_its_summary() -> None:
    core = make_core(TWO_CPUS)
    sid, out = open_stream(core, target_fps=100.0, max_latency_ms=100.0)
    (admitted,) = replies(out, Answer)
    assert admitted.request_id == sid and admitted.data["admitted"] and not admitted.data["degraded"]
    assert admitted.data["input_shape"] == list(SHAPE) and admitted.data["expected_fps"] >= 100
    out = core.handle(FramesArrived(b"c", frames(sid, 0, 3), 0.01))
    (first,) = sends(out)  # window 1: one batch per node; the first free node takes all three frames
    assert isinstance(booked(core, first), FrameBatch) and len(first.shard.inputs) == 3
    out = core.handle(FramesArrived(b"c", frames(sid, 3, 2), 0.012))
    (second,) = sends(out)
    assert second.node != first.node and len(second.shard.inputs) == 2
    answered = replies(core.handle(answer(second, 0.02)), FrameResults) + replies(
        core.handle(answer(first, 0.021)), FrameResults
    )
    assert sorted(int(s) for r in answered for s in r.seqs) == [0, 1, 2, 3, 4]
    assert all(r.variant and r.node and (r.predictions == 7).all() for r in answered)
    out = core.handle(StreamClosed(b"c", StreamClose(sid), 0.03))
    (summary,) = replies(out, Answer)
    assert summary.data["frames"] == summary.data["results"] == 5 and summary.data["dropped"] == 0
    assert (
        scoped_key(b"c", sid) not in core.streams and not core.table.assumed_ips
    )  # nothing runs: no plan is relied on


def test_a_stream_the_cluster_cannot_serve_is_refused_with_the_reason_or_admitted_degraded() -> None:
    core = make_core(TWO_CPUS)
    # Two CPU nodes at ~1,000 fps each on "fast", planned at most 40 % busy: 5,000 fps cannot fit.
    sid = uuid.uuid4().hex
    out = solve(core, core.handle(StreamOpened(b"c", StreamOpen(sid, 5000.0), 0.0)), 0.0)
    (refused,) = [i for i in out if isinstance(i, FailRequest)]
    assert refused.error.code == "infeasible" and "5000 fps" in refused.error.message
    assert "degrade" in refused.error.message and scoped_key(b"c", sid) not in core.streams
    sid, out = open_stream(core, target_fps=5000.0, degrade=True)
    (admitted,) = replies(out, Answer)
    assert (
        admitted.data["degraded"]
        and admitted.data["notes"]
        and core.streams[scoped_key(b"c", sid)].status is StreamStatus.OPEN
    )


def test_no_batch_is_larger_than_its_soonest_deadline_allows() -> None:
    # Node a answers b frames in 1 + 4b ms on "slow" and is the only node: with 30 ms left, at most 7 frames.
    core = make_core({"a": {"slow": cpu_like(4.0)}})
    sid, _ = open_stream(core, target_fps=10.0, max_latency_ms=1000.0)
    core.handle(FramesArrived(b"c", frames(sid, 0, 1), 0.0))  # occupies the node (window 1)
    busy = sends(core.handle(FramesArrived(b"c", frames(sid, 1, 12), 0.0)))
    assert not busy
    core.streams[scoped_key(b"c", sid)].pending[
        0
    ].deadline = 0.035  # the next frame is due soon: 35 ms after it was sent
    (work_id,) = core.nodes["a"].in_flight
    result = ShardResult(work_id.kind.value, work_id.number, 0, np.array([1]), 0.005)
    (batch,) = sends(core.handle(ShardReturned("a", result, 0.005)))
    assert len(batch.shard.inputs) == 7  # 1 + 4 x 7 = 29 ms fits the 30 ms left; 8 would not
    sent = booked(core, batch)
    assert isinstance(sent, FrameBatch) and sent.expected_done <= 0.035


def test_a_board_where_batching_pays_holds_a_lone_frame_briefly_then_sends_it() -> None:
    core = make_core({"gpu": {"fast": gpu_like(10.0, 1600.0)}})
    sid, _ = open_stream(core, target_fps=50.0, max_latency_ms=100.0)
    out = core.handle(FramesArrived(b"c", frames(sid, 0, 1), 1.0))
    (wake,) = [i for i in out if isinstance(i, WakeAt)]
    assert not sends(out) and 1.0 < wake.at <= 1.0 + 0.2 * 0.1 + 1e-9  # held at most a fifth of its bound
    out = core.handle(FramesArrived(b"c", frames(sid, 1, 2), 1.005))
    assert not sends(out)  # still worth waiting for
    (batch,) = sends(core.handle(Tick(wake.at)))
    assert len(batch.shard.inputs) == 3


def test_back_pressure_drops_the_oldest_refuses_the_newest_or_fails_and_says_so() -> None:
    for policy in ("drop-oldest", "block", "fail"):
        core = make_core({"a": {"slow": cpu_like(4.0)}}, stream_queue_frames=4)
        sid, _ = open_stream(core, target_fps=10.0, max_latency_ms=1000.0, backpressure=policy)
        core.handle(FramesArrived(b"c", frames(sid, 0, 1), 0.0))  # in flight: the node is busy
        core.handle(FramesArrived(b"c", frames(sid, 1, 3), 0.0))  # the queue is full: 4 unanswered
        out = core.handle(FramesArrived(b"c", frames(sid, 4, 2), 0.001))
        stream = core.streams.get(scoped_key(b"c", sid))
        if policy == "fail":
            (failed,) = [i for i in out if isinstance(i, FailRequest)]
            assert failed.error.code == "busy" and "'fail'" in failed.error.message and stream is None
            continue
        (dropped,) = replies(out, FrameResults)
        assert dropped.dropped and (dropped.predictions == -1).all() and policy in dropped.reason
        expected = [1, 2] if policy == "drop-oldest" else [4, 5]
        assert dropped.seqs.tolist() == expected
        assert stream is not None and stream.outstanding == 4 and stream.dropped == 2
        assert core.counters["frames_dropped"] == 2


def test_frames_on_a_board_that_is_lost_are_sent_again_and_answered_once() -> None:
    core = make_core(TWO_CPUS)
    sid, _ = open_stream(core, target_fps=100.0, max_latency_ms=100.0)
    first = sends(core.handle(FramesArrived(b"c", frames(sid, 0, 2), 0.0)))
    second = sends(core.handle(FramesArrived(b"c", frames(sid, 2, 2), 0.001)))
    on_a = next(s for s in first + second if s.node == "a")
    on_b = next(s for s in first + second if s.node == "b")
    out = core.handle(NodeLost("a", "test", 0.002))
    assert not sends(out)  # b is busy (window 1): a's frames wait in the queue, in order
    assert len(core.streams[scoped_key(b"c", sid)].pending) == len(on_a.shard.inputs)
    answered: Counter[int] = Counter()
    out = core.handle(answer(on_b, 0.003))
    for message in replies(out, FrameResults):
        answered.update(message.seqs.tolist())
    (resent,) = sends(out)
    assert resent.node == "b"
    late = core.handle(answer(on_a, 0.004))  # the lost board answers after all: discarded
    assert not replies(late, FrameResults) and core.counters["late_replies"] == 1
    for message in replies(core.handle(answer(resent, 0.005)), FrameResults):
        answered.update(message.seqs.tolist())
    assert answered == Counter({0: 1, 1: 1, 2: 1, 3: 1})


def test_bad_stream_values_and_out_of_order_frames_are_refused_clearly() -> None:
    core = make_core(TWO_CPUS)
    for fields, field in (
        ({"target_fps": 0.0}, "target_fps"),
        ({"target_fps": float("nan")}, "target_fps"),
        ({"target_fps": 10.0, "max_latency_ms": -1.0}, "max_latency_ms"),
        ({"target_fps": 10.0, "backpressure": "later"}, "backpressure"),
        ({"target_fps": 10.0, "task": "other"}, "task"),
        ({"target_fps": 10.0, "min_accuracy": 2.0}, "min_accuracy"),
    ):
        out = core.handle(StreamOpened(b"c", StreamOpen(uuid.uuid4().hex, **fields), 0.0))
        (error,) = [i for i in out if isinstance(i, FailRequest)]
        assert error.error.code == "invalid_input" and error.error.message.startswith(field), error
    sid, _ = open_stream(core)
    for bad, words in (
        (frames(sid, 5, 1), "first_seq must be 0"),
        (Frames(sid, 0, np.zeros((1, 2, 2), np.uint8)), "inputs: expected uint8 frames of shape (N, 1, 4, 4)"),
        (frames("nope", 0, 1), "not an open stream"),
    ):
        (error,) = [i for i in core.handle(FramesArrived(b"c", bad, 0.0)) if isinstance(i, FailRequest)]
        assert words in error.error.message
    (error,) = [i for i in core.handle(FramesArrived(b"other", frames(sid, 0, 1), 0.0)) if isinstance(i, FailRequest)]
    assert "not an open stream of this client" in error.error.message  # nobody feeds another's stream


def test_the_joint_plan_gives_a_latency_bound_stream_no_share_of_a_board_too_slow_for_it() -> None:
    table = ExplorationTable(ACCURACY)
    table.record("quick", "fast", cpu_like(1.0))
    table.record("sluggish", "slow", Measurement(500.0, 80.0, ((1, 60.0), (16, 80.0))))  # 60 ms for one frame
    plan = plan_jointly(table, [Demand("s", 50.0, max_latency_s=0.1)], ["quick", "sluggish"])
    assert {share.node for share in plan.demands["s"].shares} == {"quick"}
    unbounded = plan_jointly(table, [Demand("r", 50.0)], ["quick", "sluggish"])
    assert "sluggish" in {share.node for share in unbounded.demands["r"].shares}  # the accurate board, if no bound


# --- on real processes ---------------------------------------------------------------------------
REAL_SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    from edgecollab.inspection import wait_until_ready

    folder = tmp_path_factory.mktemp("streams")
    with LocalCluster(write_cluster_config(folder), log_dir=folder / "logs") as local:
        wait_until_ready(local.clients_endpoint, timeout_s=120)
        yield local


def test_a_cancelled_stream_is_forgotten_at_once_and_its_queued_frames_are_not_sent() -> None:
    core = make_core({"a": {"slow": cpu_like(4.0)}})
    sid, _ = open_stream(core, target_fps=10.0, max_latency_ms=1000.0)
    (in_flight,) = sends(core.handle(FramesArrived(b"c", frames(sid, 0, 1), 0.0)))  # the node is busy (window 1)
    core.handle(FramesArrived(b"c", frames(sid, 1, 5), 0.0))  # queued behind it
    assert not core.handle(RequestCancelled(b"intruder", Cancel(sid), 0.001))  # another client's: ignored
    assert core.streams[scoped_key(b"c", sid)].outstanding == 6
    assert not core.handle(RequestCancelled(b"c", Cancel(sid), 0.002))  # no answer to a cancel
    assert scoped_key(b"c", sid) not in core.streams and core.counters["frames_cancelled"] == 6
    late = core.handle(answer(in_flight, 0.01))
    assert not replies(late, FrameResults) and not sends(late)  # its late answer is discarded; nothing more sent


def test_streams_on_a_real_cluster_answer_every_frame_once_in_send_order(cluster: LocalCluster) -> None:
    answers: dict[int, list[Any]] = {}

    async def camera(client: Client, k: int) -> tuple[list[int], list[Any], dict[str, Any]]:
        images = np.random.default_rng(k).integers(0, 256, (60, *REAL_SHAPE)).astype(np.uint8)
        async with client.stream(60.0, max_latency_ms=200.0) as stream:
            assert stream.admission["admitted"]

            async def send() -> None:
                for i in range(0, 60, 3):  # batches of three, with caller ids
                    await stream.send(images[i : i + 3], ids=[f"{k}-{j}" for j in range(i, i + 3)])
                    await asyncio.sleep(0.02)
                await stream.close()

            sender = asyncio.create_task(send())
            results = [r async for r in stream]
            await sender
        answers[k] = results
        return [r.seq for r in results], [r.id for r in results], stream.summary or {}

    async def cameras() -> list[tuple[list[int], list[Any], dict[str, Any]]]:
        async with Client(cluster.clients_endpoint, timeout_s=60) as client:
            return await asyncio.gather(*(camera(client, k) for k in range(4)))

    for k, (seqs, ids, summary) in enumerate(asyncio.run(cameras())):
        assert seqs == list(range(60))  # every frame, once, in send order
        assert ids == [f"{k}-{j}" for j in range(60)]
        assert summary["frames"] == summary["results"] == 60 and summary["dropped"] == 0
        # Each answer is what the variant its provenance names predicts for that frame, run here.
        images = np.random.default_rng(k).integers(0, 256, (60, *REAL_SHAPE)).astype(np.uint8)
        for variant in {r.variant for r in answers[k]}:
            rows = [r.seq for r in answers[k] if r.variant == variant]
            got = np.array([r.prediction for r in answers[k] if r.variant == variant])
            assert np.array_equal(got, local_predictions(variant, images[rows])), variant


def test_leaving_a_stream_by_an_exception_cancels_it(cluster: LocalCluster) -> None:
    """The application gives up with frames still queued: the coordinator drops them at once."""
    many = np.zeros((4096, 1, 28, 28), np.uint8)

    class GaveUp(Exception):
        pass

    async def go() -> dict[str, Any]:
        async with Client(cluster.clients_endpoint, timeout_s=60) as client:
            with contextlib.suppress(GaveUp):
                async with client.stream(20.0, backpressure="drop-oldest") as stream:
                    await stream.send(many)  # past the queue: the oldest are dropped, the rest queue
                    raise GaveUp
            await asyncio.sleep(0.3)
            return await client.query("status")

    status = asyncio.run(go())
    assert status["streams"] == [] and status["counters"]["frames_cancelled"] > 0


def test_a_cancelled_sync_stream_ends_at_once_and_the_coordinator_forgets_it(cluster: LocalCluster) -> None:
    with SyncClient(cluster.clients_endpoint, timeout_s=60) as client:
        before = client.query("status")["counters"]
        with client.stream(20.0, backpressure="drop-oldest") as stream:
            stream.send(np.zeros((4096, 1, 28, 28), np.uint8))
            stream.cancel()
            assert list(stream) == []  # iteration ends at once, whatever was still out
            with pytest.raises(RuntimeError, match="the stream is closed"):
                stream.send(np.zeros((1, 1, 28, 28), np.uint8))
        time.sleep(0.3)
        status = client.query("status")
    # The coordinator took the cancel for this open stream and forgot it. Each of the 4,096 frames ended once:
    # answered before the cancel came, dropped by drop-oldest past the queue's 256, or cancelled with it.
    counters = status["counters"]
    assert status["streams"] == [] and counters.get("cancels_ignored", 0) == before.get("cancels_ignored", 0)
    served, dropped, cancelled = (
        counters.get(k, 0) - before.get(k, 0) for k in ("frames_served", "frames_dropped", "frames_cancelled")
    )
    assert served + dropped + cancelled == 4096 and cancelled <= 256


def test_a_sync_stream_and_a_stream_refused_for_an_impossible_accuracy(cluster: LocalCluster) -> None:
    frame = np.zeros(REAL_SHAPE, np.uint8)
    with SyncClient(cluster.clients_endpoint, timeout_s=60) as client:
        with client.stream(20.0) as stream:
            stream.send(frame)
            stream.send(np.stack([frame, frame]))
            stream.close()
            results = list(stream)
        assert [r.seq for r in results] == [0, 1, 2] and all(r.prediction >= 0 and r.node for r in results)
        with (
            pytest.raises(InfeasibleTargetError, match=r"min_accuracy=0\.999"),
            client.stream(20.0, min_accuracy=0.999),
        ):
            pass


def test_the_stream_command_prints_each_source_and_the_total_as_json(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = write_cluster_config(tmp_path_factory.mktemp("stream-cli"))
    args = ["stream", "--sources", "3", "--fps", "20", "--duration", "1", "--json", "--config", str(config)]
    done = edgecollab(*args, "--coordinator", cluster.clients_endpoint)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [s["source"] for s in report["streams"]] == [0, 1, 2]
    for source in report["streams"]:
        assert {"source", "frames", "results", "dropped", "fps", "p50_ms", "p99_ms", "accuracy"} <= set(source)
        assert source["frames"] == source["results"] == 20 and source["dropped"] == 0
        assert 0.5 < source["accuracy"] <= 1 and 0 < source["p50_ms"] <= source["p99_ms"]
    assert report["total"]["frames"] == report["total"]["results"] == 60
    bad = edgecollab(*args, "--coordinator", cluster.clients_endpoint, "--backpressure", "sometimes")
    assert bad.returncode == 2 and "--backpressure must be one of block, drop-oldest, fail" in bad.stderr


def test_a_board_killed_mid_stream_loses_no_frame(tmp_path: Path) -> None:
    from edgecollab.inspection import ask, wait_until_ready

    with LocalCluster(write_cluster_config(tmp_path, heartbeat_s=0.3), log_dir=tmp_path / "logs") as local:
        wait_until_ready(local.clients_endpoint, timeout_s=120)

        async def camera(client: Client, k: int) -> list[int]:
            frame = np.full(REAL_SHAPE, k, np.uint8)
            async with client.stream(50.0, max_latency_ms=200.0) as stream:

                async def send() -> None:
                    for _ in range(150):  # 3 s at 50 fps
                        await stream.send(frame)
                        await asyncio.sleep(0.02)
                    await stream.close()

                sender = asyncio.create_task(send())
                seqs = [r.seq async for r in stream if not r.dropped and r.prediction >= 0]
                await sender
            return seqs

        async def cameras() -> list[list[int]]:
            async with Client(local.clients_endpoint, timeout_s=60) as client:
                running = asyncio.gather(*(camera(client, k) for k in range(4)))
                await asyncio.sleep(1.0)
                local.signal_worker("jetson-nano", signal.SIGKILL)
                return await running

        for seqs in asyncio.run(cameras()):
            assert seqs == list(range(150))  # every frame answered, once, in order, by the boards left
        counters = ask(local.clients_endpoint, "status")["counters"]
        assert counters["nodes_lost"] == 1 and counters.get("frames_dropped", 0) == 0


def test_coalesce_takes_the_soonest_deadlines_across_streams_each_stream_in_order() -> None:
    from edgecollab.coordinator.batching import coalesce
    from edgecollab.coordinator.streams import OpenStream

    def stream(name: bytes, latency_s: float, arrivals: list[float]) -> OpenStream:
        s = OpenStream(name, StreamOpen(name.decode(), 30.0), 0.0, latency_s, 1000)
        for seq, at in enumerate(arrivals):
            s.accept(seq, np.zeros((1, *SHAPE), np.uint8), at)
        return s

    slow = stream(b"a", 0.1, [0.0, 0.01, 0.02, 0.03])  # deadlines 0.10, 0.11, 0.12, 0.13
    fast = stream(b"b", 0.05, [0.0, 0.04, 0.08])  # deadlines 0.05, 0.09, 0.13
    taken = coalesce([slow, fast], 4)
    assert [(s.stream_id, f.seq) for s, f in taken] == [("b", 0), ("b", 1), ("a", 0), ("a", 1)]
    assert (slow.in_flight, fast.in_flight) == (2, 2)
    assert [f.seq for f in slow.pending] == [2, 3] and [f.seq for f in fast.pending] == [2]
    rest = coalesce([slow, fast], 10)  # more than are queued: every frame, none twice
    assert sorted((s.stream_id, f.seq) for s, f in rest) == [("a", 2), ("a", 3), ("b", 2)]
    assert not slow.pending and not fast.pending

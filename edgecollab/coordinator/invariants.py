"""The dispatch core's invariants, checked by ``DispatchCore.validate_state`` (after every step of the
state exploration in tests/test_dispatch_states.py). Pure: reads the books, changes nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .batching import FrameBatch
from .events import WorkKind
from .nodes import NodeStatus, SentShard
from .requests import RequestStatus

if TYPE_CHECKING:
    from .dispatch import DispatchCore


def broken_invariants(core: DispatchCore) -> Iterable[str]:
    """Every invariant of the core's books that does not hold, as a sentence."""
    frames_out: Counter[str] = Counter()  # stream key -> frames in batches on nodes
    shards_out: Counter[tuple[str, int]] = Counter()  # (request key, shard id) -> live copies in flight
    for state in core.nodes.nodes.values():
        window = state.window(core.settings.window)
        if state.busy > window:
            yield f"node {state.name} has {state.busy} messages in flight, over the window of {window}"
        if state.status is NodeStatus.SUSPECT and any(True for _ in state.dispatched()):
            yield f"suspect node {state.name} still has work in flight"
        for work_id, work in state.in_flight.items():
            if isinstance(work, FrameBatch):
                for stream, _ in work.frames:
                    frames_out[stream.key] += 1
            elif isinstance(work, SentShard) and not work.stalled:
                shards_out[(work.request, work.task.shard_id)] += 1
                r = core.requests.get(work.request)
                if r is not None and r.run is not None and work.attempt != work.task.attempt:
                    yield f"node {state.name} holds attempt {work.attempt} of a shard now at {work.task.attempt}"
            if work_id.kind is WorkKind.SHARD and not isinstance(work, SentShard):
                yield f"work {work_id} is booked as {type(work).__name__}"
    for (request, shard_id), copies in shards_out.items():
        if copies > 1:
            yield f"shard {shard_id} of request {request} is in flight {copies} times"
    for key, r in core.requests.items():
        if r.key != key or key in core.streams:
            yield f"request {key} is booked under another key or as a stream too"
        if r.status is RequestStatus.CLOSED:
            yield f"closed request {key} is still booked"
        if (r.status is RequestStatus.RUNNING) != (r.run is not None):
            yield f"request {key} is {r.status.value} with{'' if r.run else 'out'} a run"
        if r.status is RequestStatus.QUEUED and not core.small.holds(key):
            yield f"queued small request {key} is not in the small queue"
    if core.small.queued_inputs != sum(inputs for _, inputs in core.small.queue):
        yield f"the small queue counts {core.small.queued_inputs} inputs but holds another number"
    for key, stream in core.streams.items():
        if stream.in_flight != frames_out[key]:
            yield f"stream {key} counts {stream.in_flight} frames in flight, the nodes hold {frames_out[key]}"
        seqs = [f.seq for f in stream.pending]
        if seqs != sorted(set(seqs)):
            yield f"stream {key}'s queued frames are not in order, or repeat"
        if bool(stream.pending) != (key in core.stream_dispatch.queued):
            listed = "listed" if key in core.stream_dispatch.queued else "not listed"
            yield f"stream {key} has {len(stream.pending)} frames queued and is {listed} as having some"
        if stream.outstanding > stream.queue_frames:
            yield f"stream {key} holds {stream.outstanding} frames, over its queue of {stream.queue_frames}"
    if set(core.stream_dispatch.queued) - set(core.streams):
        yield "a closed stream is still listed as having frames queued"
    if core.manager.formed and core.manager.state == "profiling":
        yield "the cluster formed but the resource manager is still profiling"

"""Node health: each node's state in one place, its work in flight in one map, stalls, strikes, and the
one check of a worker's results. Pure: no I/O.

A node is ``PROFILING`` from its registration until its measurements arrive, then ``SERVING``;
a serving node whose work in flight is far overdue (alive, heartbeating, but stuck) is
``SUSPECT`` and gets no work until it answers again. A node that returns malformed results
or refuses work ``MAX_BAD_RESULTS`` times in a row is cut off. Lost nodes are forgotten.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..config import CoordinatorConfig
from ..planner import ExplorationTable
from .batching import FrameBatch
from .events import WorkId
from .request_run import ShardTask

log = logging.getLogger(__name__)

# A worker that returns this many malformed results (or refusals) in a row is cut off.
MAX_BAD_RESULTS = 3


class NodeStatus(enum.Enum):
    PROFILING = "profiling"  # registered; its rows are being measured
    SERVING = "serving"  # usable by plans and dispatch
    SUSPECT = "suspect"  # alive but its work in flight was far overdue: none until it answers


@dataclass
class SentShard:
    """One shard of one request, out on a node."""

    request: str  # the request's key
    task: ShardTask
    attempt: int  # the attempt sent (the task's own moves on when it is sent again)
    variant: str  # what it runs there (a shard sent again elsewhere may run another)
    sent_at: float
    stalled: bool = False  # taken back from a stalled node and sent again; this node's answer may still win

    @property
    def size(self) -> int:
        return self.task.size


@dataclass
class SentPack:
    """Small requests sent together as one message; each member's slice of the answer is its own."""

    members: list[SentShard]  # each request's shard, in the message's order
    variant: str
    sent_at: float

    @property
    def size(self) -> int:
        return sum(member.size for member in self.members)


@dataclass
class SentProfile:
    """A profiling shard: timed by the profiler, not by dispatch."""

    variant: str
    size: int
    sent_at: float


Work = SentShard | SentPack | FrameBatch | SentProfile


@dataclass
class NodeState:
    name: str
    variants: tuple[str, ...]  # variants the worker loaded
    status: NodeStatus = NodeStatus.PROFILING
    in_flight: dict[WorkId, Work] = field(default_factory=dict)  # every message sent and not answered
    last_result_at: float | None = None  # when its latest result arrived
    bad_streak: int = 0  # malformed results or refusals in a row
    clock: float = 0.0  # stride scheduling: the pass of the latest request served here
    slots: int | None = None  # messages in flight at most; None: the coordinator's window (a site has more)

    def window(self, default: int) -> int:
        return self.slots or default

    @property
    def busy(self) -> int:
        """Messages in flight that the node is working on (a stalled shard's copy runs elsewhere)."""
        return sum(1 for w in self.in_flight.values() if not (isinstance(w, SentShard) and w.stalled))

    def dispatched(self) -> Iterator[Work]:
        """Work in flight that dispatch sent and waits for (not profiling, not stalled copies)."""
        for work in self.in_flight.values():
            if not isinstance(work, SentProfile) and not (isinstance(work, SentShard) and work.stalled):
                yield work

    def expected_s(self, work: Work, table: ExplorationTable) -> float:
        """What the table expects a piece of work to take on this node."""
        if isinstance(work, FrameBatch):
            return table.latency_s(self.name, work.variant, len(work.frames))
        return work.size * table.seconds_per_input(self.name, work.variant)


class NodeHealth:
    """Every registered node's state."""

    def __init__(self, settings: CoordinatorConfig, counters: Counter[str]) -> None:
        self.settings = settings
        self.counters = counters
        self.nodes: dict[str, NodeState] = {}  # registered and not lost

    def __getitem__(self, name: str) -> NodeState:
        return self.nodes[name]

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def get(self, name: str) -> NodeState | None:
        return self.nodes.get(name)

    def usable(self) -> list[str]:
        """The nodes plans and dispatch may use, by name."""
        return sorted(n for n, s in self.nodes.items() if s.status is NodeStatus.SERVING)

    def free_slots(self, window: int) -> int:
        """Messages the usable nodes can take now, all together."""
        return sum(max(s.window(window) - s.busy, 0) for s in self.nodes.values() if s.status is NodeStatus.SERVING)

    def registered(self) -> set[str]:
        return set(self.nodes)

    def register(self, name: str, variants: tuple[str, ...]) -> NodeState:
        state = self.nodes[name] = NodeState(name, variants)
        return state

    def profiled(self, name: str) -> bool:
        """Its measurements arrived; False if it was lost meanwhile."""
        state = self.nodes.get(name)
        if state is None:
            return False
        state.status = NodeStatus.SERVING
        return True

    def remove(self, name: str) -> NodeState | None:
        """A node is lost: forget it and hand back what it held."""
        return self.nodes.pop(name, None)

    def answered(self, name: str) -> bool:
        """Any answer from a node: a suspect one serves again (True then)."""
        state = self.nodes.get(name)
        if state is None or state.status is not NodeStatus.SUSPECT:
            return False
        log.warning("dispatch: node %s answers again; it gets work again", name)
        state.status = NodeStatus.SERVING
        return True

    def succeeded(self, state: NodeState) -> None:
        state.bad_streak = 0

    def strike(self, state: NodeState, problem: str, refused: bool = False) -> str | None:
        """Count a malformed result (or with ``refused``, a refusal); past MAX_BAD_RESULTS in a row the
        worker must be cut off: the reason why, else None."""
        self.counters["shards_refused" if refused else "bad_results"] += 1
        state.bad_streak += 1
        if state.bad_streak < MAX_BAD_RESULTS or state.name not in self.nodes:
            return None
        self.counters["nodes_cut_off"] += 1
        return f"cut off after {state.bad_streak} bad results or refusals in a row (the last: {problem})"

    def stalled(self, now: float, table: ExplorationTable) -> list[NodeState]:
        """Serving nodes whose work in flight is far overdue; each becomes suspect.

        A process may be alive and heartbeating while its inference is stuck (a CUDA call that never
        returns): its work has a deadline of ``stall_factor`` times what the table expects of everything
        it has in flight, and at least ``stall_floor_s``, counted from its last result or the oldest send.
        """
        found = []
        for state in self.nodes.values():
            work = list(state.dispatched())
            if state.status is not NodeStatus.SERVING or not work:
                continue
            since = max(min(w.sent_at for w in work), state.last_result_at or 0.0)
            expected = sum(state.expected_s(w, table) for w in work)
            allowed = max(self.settings.stall_floor_s, self.settings.stall_factor * expected)
            if not np.isfinite(allowed) or now - since <= allowed:
                continue
            self.counters["nodes_stalled"] += 1
            log.warning("dispatch: node %s answered nothing for %.1f s (%.2f s expected): suspect; its work goes "
                        "to the others", state.name, now - since, expected)  # fmt: skip
            state.status = NodeStatus.SUSPECT
            found.append(state)
        return found


def take_dispatched(state: NodeState, keep_shards: bool) -> list[Work]:
    """Take a node's dispatched work from its book, to go elsewhere. With ``keep_shards`` (a stalled node)
    request shards stay booked as stalled: if the node answers one before its copy does, its answer wins."""
    taken = list(state.dispatched())
    for work_id, work in list(state.in_flight.items()):
        if isinstance(work, SentShard) and keep_shards:
            work.stalled = True
        elif not isinstance(work, SentProfile) and not (isinstance(work, SentShard) and work.stalled):
            del state.in_flight[work_id]
    return taken


def result_problem(
    predictions: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    size: int,
    wanted: str,
    earlier: Mapping[str, np.ndarray] | None = None,
) -> str | None:
    """Why a worker's answer for ``size`` inputs cannot be taken (None if it can): one integer class per
    input, the outputs asked for (``wanted``) with one row per input, no NaN, and — for a request whose
    earlier shards brought outputs — the same names, dtypes and shapes as those."""
    if predictions.ndim != 1 or len(predictions) != size or predictions.dtype.kind not in "iu":
        return f"predictions {predictions.dtype} of shape {predictions.shape} for {size} inputs"
    if (wanted == "predictions") != (not outputs):
        return f"outputs {sorted(outputs)} where {wanted} were asked for"
    if earlier and set(outputs) != set(earlier):
        return f"outputs {sorted(outputs)} where earlier shards gave {sorted(earlier)}"
    for name, tensor in outputs.items():
        if tensor.ndim == 0 or len(tensor) != size:
            return f"output {name!r} of shape {tensor.shape} for {size} inputs"
        if tensor.dtype.kind == "f" and np.isnan(tensor).any():
            return f"NaN in output {name!r}"
        known = (earlier or {}).get(name)
        if known is not None and (known.shape[1:] != tensor.shape[1:] or known.dtype != tensor.dtype):
            return f"output {name!r} is {tensor.dtype} {tensor.shape[1:]} where earlier shards gave " \
                f"{known.dtype} {known.shape[1:]}"  # fmt: skip
    return None

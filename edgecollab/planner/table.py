"""The exploration table: measured throughput of every (node, variant) pair, and each variant's accuracy."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

# Observed throughput is folded into the table with this weight (exponentially weighted average).
OBSERVATION_WEIGHT = 0.3
# A (node, variant) whose estimate moves this far (relative) from what the running plan assumed has
# drifted, once that many of its shards have been observed since the plan was adopted.
DRIFT_THRESHOLD = 0.3
DRIFT_MIN_OBSERVATIONS = 3
# Requests planned to take at least this long teach the table the cluster's efficiency; shorter
# ones are dominated by fixed costs and would skew it.
EFFICIENCY_MIN_MAKESPAN_S = 0.3


def shard_cost_s(sent: float, previous_result: float | None, now: float, busy_s: float) -> float:
    """What a shard cost its node, as profiling measures it: compute, or the link when that is slower.

    From the later of the shard's sending and the node's previous result until this result:
    while shards queue behind each other that is the node's pace, whichever of compute and
    transfer sets it; after an idle spell it is the shard's round trip. Never less than the
    compute time the worker reported.
    """
    start = sent if previous_result is None else max(sent, previous_result)
    return max(busy_s, now - start)


@dataclass(frozen=True)
class Measurement:
    ips: float  # inputs per second at the profiling shard size
    latency_ms: float  # time for one shard, send to reply
    # (batch size, round trip in ms) of shards sent one at a time: what a frame waits for its answer
    latencies: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:  # JSON gives lists; keep pairs sorted by batch, as tuples
        object.__setattr__(self, "latencies", tuple(sorted((int(b), float(ms)) for b, ms in self.latencies)))

    def latency_s(self, batch: int) -> float:
        """Round trip of a shard of ``batch`` inputs: interpolated between the profiled batch sizes,
        and beyond the largest one each further input adds what it costs at full throughput."""
        points = self.latencies
        if not points:
            return self.latency_ms / 1e3  # measured at the profiling shard size only: the safe side
        if batch <= points[0][0]:
            return points[0][1] / 1e3
        for (b0, ms0), (b1, ms1) in itertools.pairwise(points):
            if batch <= b1:
                return (ms0 + (ms1 - ms0) * (batch - b0) / (b1 - b0)) / 1e3
        last_batch, last_ms = points[-1]
        per_input = 1.0 / self.ips if self.ips > 0 else 0.0
        return last_ms / 1e3 + (batch - last_batch) * per_input


class ExplorationTable:
    """Node × variant → measurement, plus variant → accuracy. Pure data; no I/O but save/load."""

    def __init__(self, accuracy: dict[str, float]) -> None:
        self.accuracy = dict(accuracy)  # variant -> test-set accuracy from the manifest
        self._rows: dict[tuple[str, str], Measurement] = {}  # changed only by the methods: they reset _by_node
        self._by_node: dict[str, list[str]] | None = None  # node -> its variants, built when first asked
        # node -> seconds to ship one input over its link (bytes per input ÷ bandwidth); 0 when unknown
        self.link_seconds: dict[str, float] = {}
        # variant -> its inputs' size relative to the inputs link_seconds is for (another task's may differ)
        self.input_scale: dict[str, float] = {}
        # achieved ÷ expected throughput of recent requests, in (0, 1]: start-up, the tail and contention
        # between nodes that the per-node rows do not see
        self.efficiency = 1.0
        # (node, variant) pairs the adopted plan may use -> the throughput it assumed (drift is measured
        # from it), and how many observations each had since; empty while nothing runs
        self.assumed_ips: dict[tuple[str, str], float] = {}
        self._observed_since_plan: dict[tuple[str, str], int] = {}

    def record(self, node: str, variant: str, measurement: Measurement) -> None:
        self._rows[(node, variant)] = measurement
        self._by_node = None

    def observe(self, node: str, variant: str, ips: float, weight: float) -> float:
        """Fold an observed throughput into the row (exponentially weighted); returns the new estimate."""
        old = self._rows.get((node, variant))
        if old is None:
            self.record(node, variant, Measurement(ips, 0.0))
            return ips
        new_ips = weight * ips + (1 - weight) * old.ips
        slower = old.ips / new_ips  # a node that got slower answers every batch size that much later
        latencies = tuple((b, ms * slower) for b, ms in old.latencies)
        updated = Measurement(new_ips, old.latency_ms * slower, latencies)
        self._rows[(node, variant)] = updated
        return updated.ips

    def observe_shard(self, node: str, variant: str, ips: float, evidence: float = 1.0) -> bool:
        """Fold a throughput observed at run time into the row; True when the node drifted from what the
        adopted plan assumed. ``evidence`` (0, 1] weighs it: a small micro-batch says less than a full shard."""
        self.observe(node, variant, ips, OBSERVATION_WEIGHT * evidence)
        key = (node, variant)
        assumed = self.assumed_ips.get(key)
        if assumed is None:
            return False  # not something the running plan relies on
        seen = self._observed_since_plan[key] = self._observed_since_plan.get(key, 0) + 1
        estimate = 1.0 / self.seconds_per_input(node, variant)
        return seen >= DRIFT_MIN_OBSERVATIONS and abs(estimate / assumed - 1) > DRIFT_THRESHOLD

    def assume_current(self, nodes: list[str]) -> None:
        """A plan made from the table as it is now was adopted: drift is measured from here."""
        self.assumed_ips = {(n, v): 1.0 / self.seconds_per_input(n, v) for n in nodes for v in self.variants_of(n)}
        self._observed_since_plan.clear()

    def drop_assumptions(self) -> None:
        """Nothing runs: nothing relies on the old assumptions any more."""
        self.assumed_ips.clear()
        self._observed_since_plan.clear()

    def learn_efficiency(self, planned_inputs: int, expected_ips: float, achieved_ips: float) -> None:
        """Learn from a finished request how much of its expected throughput the cluster delivered."""
        if expected_ips > 0 and planned_inputs / expected_ips >= EFFICIENCY_MIN_MAKESPAN_S:
            self.observe_efficiency(achieved_ips / expected_ips, OBSERVATION_WEIGHT)

    def observe_efficiency(self, achieved_over_expected: float, weight: float) -> float:
        """Fold one request's achieved ÷ expected throughput into ``efficiency`` (kept within [0.5, 1])."""
        observed = self.efficiency * achieved_over_expected
        self.efficiency = min(1.0, max(0.5, weight * observed + (1 - weight) * self.efficiency))
        return self.efficiency

    def scaled(self, share: float) -> ExplorationTable:
        """A copy in which every node offers only ``share`` of its throughput (capacity left for one request)."""
        copy = ExplorationTable(self.accuracy)
        for (node, variant), m in self._rows.items():
            copy.record(node, variant, Measurement(m.ips * share, m.latency_ms, m.latencies))
        copy.link_seconds = {n: s / share for n, s in self.link_seconds.items()}
        copy.input_scale = dict(self.input_scale)
        copy.efficiency = self.efficiency
        return copy

    def only(self, variants: frozenset[str] | None) -> ExplorationTable:
        """A copy that knows only ``variants`` (one task's), for the planners that plan one request alone."""
        if variants is None:
            return self
        copy = self.scaled(1.0)
        copy.accuracy = {v: a for v, a in self.accuracy.items() if v in variants}
        for node, variant in [k for k in copy._rows if k[1] not in variants]:
            del copy._rows[(node, variant)]
        copy._by_node = None
        return copy

    def forget(self, node: str) -> None:
        for variant in self.variants_of(node):
            del self._rows[(node, variant)]
        self._by_node = None

    def get(self, node: str, variant: str) -> Measurement | None:
        return self._rows.get((node, variant))

    def ips(self, node: str, variant: str) -> float:
        m = self._rows.get((node, variant))
        return m.ips if m else 0.0

    def latency_s(self, node: str, variant: str, batch: int) -> float:
        """Round trip of a ``batch``-input shard on a node at a variant (inf when not profiled)."""
        m = self._rows.get((node, variant))
        return m.latency_s(batch) if m else float("inf")

    def largest_batch(self, node: str, variant: str, budget_s: float, most: int) -> int:
        """The largest batch, up to ``most``, whose round trip fits ``budget_s``; 0 when not even one does."""
        if self.latency_s(node, variant, 1) > budget_s:
            return 0
        low, high = 1, max(most, 1)
        while low < high:  # latency grows with the batch: binary search for the last that fits
            mid = (low + high + 1) // 2
            if self.latency_s(node, variant, mid) <= budget_s:
                low = mid
            else:
                high = mid - 1
        return low

    def seconds_per_input(self, node: str, variant: str) -> float:
        """What one input costs a node: compute, or shipping it when the link is the bottleneck.

        Shards are pipelined (the next one travels while the current one computes), so
        the slower of the two sets the pace.
        """
        ips = self.ips(node, variant)
        compute = 1.0 / ips if ips > 0 else float("inf")
        return max(compute, self.link_seconds.get(node, 0.0) * self.input_scale.get(variant, 1.0))

    def nodes(self) -> list[str]:
        return sorted({n for n, _ in self._rows})

    def variants_of(self, node: str) -> list[str]:
        if self._by_node is None:  # an index: a fleet's table has thousands of rows, and plans ask per node
            self._by_node = {}
            for n, v in self._rows:
                self._by_node.setdefault(n, []).append(v)
        return list(self._by_node.get(node, ()))

    def rows(self) -> list[dict[str, object]]:
        return [
            {
                "node": n,
                "variant": v,
                "ips": m.ips,
                "latency_ms": m.latency_ms,
                "latencies": [list(p) for p in m.latencies],
                "accuracy": self.accuracy.get(v),
            }
            for (n, v), m in sorted(self._rows.items())
        ]


class ProfileCache:
    """Per-node measurements on disk, keyed by the node's fingerprint, so a restart skips profiling."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load_all(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def load(self, node: str, fingerprint: str) -> dict[str, Measurement] | None:
        entry = self._load_all().get(node)
        if not isinstance(entry, dict) or entry.get("fingerprint") != fingerprint:
            return None
        return _measurements(entry)

    def load_any(self, node: str) -> dict[str, Measurement] | None:
        """The node's cached measurements whatever their fingerprint (for planning offline)."""
        entry = self._load_all().get(node)
        return _measurements(entry) if isinstance(entry, dict) else None

    def store(self, node: str, fingerprint: str, measurements: dict[str, Measurement]) -> None:
        data = self._load_all()
        data[node] = {"fingerprint": fingerprint, "variants": {v: asdict(m) for v, m in measurements.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)  # atomic: a crash never leaves half a cache


def _measurements(entry: dict[str, object]) -> dict[str, Measurement] | None:
    """A cache entry's measurements, or None when it is not what ``store`` writes."""
    rows = entry.get("variants")
    if not isinstance(rows, dict):
        return None
    try:
        measurements = {str(variant): Measurement(**m) for variant, m in rows.items()}
    except (TypeError, ValueError):
        return None
    # Profiles written before batch latencies were measured are profiled again.
    return measurements if all(m.latencies for m in measurements.values()) else None

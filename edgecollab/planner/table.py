"""The exploration table: measured throughput of every (node, variant) pair, and each variant's accuracy."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .confidence import DEFAULT_CONFIDENCE, MIN_ROW_SPREAD, Realisation, lower_bound, z_of

# Observed throughput is folded into the table with this weight (exponentially weighted average).
OBSERVATION_WEIGHT = 0.3
# A (node, variant) whose estimate moves this far (relative) from what the running plan assumed has
# drifted, once that many of its shards have been observed since the plan was adopted.
DRIFT_THRESHOLD = 0.3
DRIFT_MIN_OBSERVATIONS = 3
# A row's spread before anything measured it.
PRIOR_ROW_SPREAD = 0.1
# A row's estimate averages its shards (exponentially, weight w), so its error is a shard's scatter times
# sqrt(w / (2 - w)), the standard deviation of such an average: the jitter of one 20 ms shard on a busy
# host is not an error in what the board sustains over a request.
ESTIMATE_SHARE = OBSERVATION_WEIGHT / (2 - OBSERVATION_WEIGHT)


def estimate_spread(shard_spread: float) -> float:
    """The relative error of a row's estimate whose shards scatter by ``shard_spread``."""
    return max(shard_spread * math.sqrt(ESTIMATE_SHARE), MIN_ROW_SPREAD)


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
    ips: float  # inputs per second at the shard size requests use on this row (pipelined, as dispatch sends)
    latency_ms: float  # time for one shard, send to reply
    # (batch size, round trip in ms) of shards sent one at a time: what a frame waits for its answer
    latencies: tuple[tuple[int, float], ...] = ()
    spread: float = PRIOR_ROW_SPREAD  # relative error of ``ips`` as an estimate (``estimate_spread``), measured
    # The worker said its host's compute took longer than the emulated board would: the row measures the
    # host (emulation only; it then varies with what else the host runs).
    host_bound: bool = False
    # (batch size, inputs/s) measured with shards in flight back to back: a row's speed is a curve in the batch
    curve: tuple[tuple[int, float], ...] = ()
    observations: int = 0  # run-time shards folded in since profiling

    def __post_init__(self) -> None:  # JSON gives lists; keep pairs sorted by batch, as tuples
        object.__setattr__(self, "latencies", tuple(sorted((int(b), float(ms)) for b, ms in self.latencies)))
        object.__setattr__(self, "curve", tuple(sorted((int(b), float(ips)) for b, ips in self.curve)))

    def ips_at(self, batch: int) -> float:
        """Throughput with shards of ``batch`` inputs: from the curve (interpolated, flat beyond its ends);
        the row's own figure when it has no curve (a profile written before curves were measured)."""
        points = self.curve
        if not points:
            return self.ips
        if batch <= points[0][0]:
            return points[0][1]
        for (b0, r0), (b1, r1) in itertools.pairwise(points):
            if batch <= b1:
                return r0 + (r1 - r0) * (batch - b0) / (b1 - b0)
        return points[-1][1]

    def scaled_by(self, factor: float) -> Measurement:
        """The row as it is when the board runs ``factor`` times as fast (every batch size alike)."""
        return replace(
            self,
            ips=self.ips * factor,
            latency_ms=self.latency_ms / factor,
            latencies=tuple((b, ms / factor) for b, ms in self.latencies),
            curve=tuple((b, r * factor) for b, r in self.curve),
        )

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
        # variant -> its task; the realisation of each task is learned apart (a detector's scenes load the
        # host and the links differently from a classifier's images)
        self.tasks: dict[str, str] = {}
        # task -> achieved ÷ reachable of its requests, and its spread and start-up cost
        self.realisations: dict[str, Realisation] = {}
        self.confidence = DEFAULT_CONFIDENCE  # the probability a plan aims to meet its target with
        self.version = 0  # counts learned changes (rows observed, requests learned): what to save
        # (node, variant) pairs the adopted plan may use -> the throughput it assumed (drift is measured
        # from it), and how many observations each had since; empty while nothing runs
        self.assumed_ips: dict[tuple[str, str], float] = {}
        self._observed_since_plan: dict[tuple[str, str], int] = {}

    def record(self, node: str, variant: str, measurement: Measurement) -> None:
        self._rows[(node, variant)] = measurement
        self._by_node = None

    def observe(self, node: str, variant: str, ips: float, weight: float, batch: int | None = None) -> float:
        """Fold a throughput observed with shards of ``batch`` inputs into the row (exponentially weighted),
        and its error against what the row expected at that batch into the row's spread; the new estimate."""
        old = self._rows.get((node, variant))
        if old is None:
            self.record(node, variant, Measurement(ips, 0.0))
            return ips
        expected = old.ips_at(batch) if batch else old.ips
        ratio = ips / expected if expected > 0 else 1.0
        factor = 1.0 + weight * (ratio - 1.0)  # the whole curve moves: a slower board is slower at every batch
        shard_variance = (1 - weight) * old.spread**2 / ESTIMATE_SHARE + weight * (ratio - 1.0) ** 2
        spread = estimate_spread(math.sqrt(shard_variance))
        updated = replace(old.scaled_by(factor), spread=spread, observations=old.observations + 1)
        self._rows[(node, variant)] = updated
        self.version += 1
        return updated.ips

    def observe_shard(
        self, node: str, variant: str, ips: float, evidence: float = 1.0, batch: int | None = None
    ) -> bool:
        """Fold a throughput observed at run time into the row; True when the node drifted from what the
        adopted plan assumed. ``evidence`` (0, 1] weighs it: a small micro-batch says less than a full shard."""
        self.observe(node, variant, ips, OBSERVATION_WEIGHT * evidence, batch)
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

    # --- what plans can promise ------------------------------------------------------------------
    def _task_of(self, variants: Iterable[str] | None) -> str:
        """The task these variants serve ("" when the table does not know it)."""
        return next((self.tasks[v] for v in variants or () if v in self.tasks), "")

    def realisation(self, variants: Iterable[str] | None) -> Realisation:
        """The realisation of the task these variants serve (a fresh one when none was learned)."""
        return self.realisations.get(self._task_of(variants)) or Realisation()

    def efficiency_for(self, variants: Iterable[str] | None) -> float:
        return self.realisation(variants).efficiency

    @property
    def efficiency(self) -> float:
        """The lowest learned efficiency of any task (1 before any request finished): for display."""
        return min((r.efficiency for r in self.realisations.values()), default=1.0)

    @property
    def z(self) -> float:
        return z_of(self.confidence)

    def learn_request(
        self, variants: Iterable[str], achieved_ips: float, reachable_ips: float, startup_s: float
    ) -> None:
        """A finished request of the task of ``variants``: it got ``achieved_ips`` after ``startup_s`` of
        fixed costs, where its work, as it was really split, could reach ``reachable_ips`` on the rows."""
        if reachable_ips <= 0 or achieved_ips <= 0:
            return
        self.realisations.setdefault(self._task_of(variants), Realisation()).observe(
            achieved_ips / reachable_ips, startup_s
        )
        self.version += 1

    def lower_bounds(self) -> ExplorationTable:
        """A copy whose rows are their lower confidence bounds: what a plan can promise on."""
        copy = self.scaled(1.0)
        z = self.z
        for key, m in copy._rows.items():
            copy._rows[key] = m.scaled_by(lower_bound(1.0, m.spread, z))
        return copy

    def scaled(self, share: float) -> ExplorationTable:
        """A copy in which every node offers only ``share`` of its throughput (capacity left for one request)."""
        copy = ExplorationTable(self.accuracy)
        for (node, variant), m in self._rows.items():
            copy.record(node, variant, replace(m, ips=m.ips * share, curve=tuple((b, r * share) for b, r in m.curve)))
        copy.link_seconds = {n: s / share for n, s in self.link_seconds.items()}
        copy.input_scale = dict(self.input_scale)
        copy.tasks = self.tasks
        copy.realisations = {t: replace(r) for t, r in self.realisations.items()}
        copy.confidence = self.confidence
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
        return self._cost(node, variant, self.ips(node, variant))

    def lower_bound_seconds(self, node: str, variant: str) -> float:
        """``seconds_per_input`` at the row's lower confidence bound (what confident plans are made on)."""
        m = self._rows.get((node, variant))
        return self._cost(node, variant, lower_bound(m.ips, m.spread, self.z) if m else 0.0)

    def _cost(self, node: str, variant: str, ips: float) -> float:
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
        """One row per (node, variant); what is known of its error and its batch curve in nested fields."""
        z = self.z
        return [
            {
                "node": n,
                "variant": v,
                "task": self.tasks.get(v),
                "ips": m.ips,
                "latency_ms": m.latency_ms,
                "latencies": [list(p) for p in m.latencies],
                "accuracy": self.accuracy.get(v),
                "error": {
                    "spread": m.spread,
                    "lower_bound_ips": lower_bound(m.ips, m.spread, z),
                    "observations": m.observations,
                    "host_bound": m.host_bound,
                },
                "curve": [list(p) for p in m.curve],
            }
            for (n, v), m in sorted(self._rows.items())
        ]

    def realisations_as_dict(self) -> dict[str, dict[str, Any]]:
        return {task: r.as_dict() for task, r in sorted(self.realisations.items())}


# The cache's entry for what was learned per task (node names start with a letter or digit).
TASKS_KEY = "@tasks"


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

    def load_realisations(self) -> dict[str, Realisation]:
        """Each task's learned realisation, as ``store_learned`` saved it."""
        entry = self._load_all().get(TASKS_KEY)
        found = {t: Realisation.from_dict(r) for t, r in entry.items()} if isinstance(entry, dict) else {}
        return {t: r for t, r in found.items() if r is not None}

    def store_learned(self, table: ExplorationTable) -> None:
        """The rows run-time shards corrected (for nodes whose profile is cached) and each task's realisation."""
        data: dict[str, Any] = self._load_all()
        for node, entry in data.items():
            rows = entry.get("variants") if node != TASKS_KEY and isinstance(entry, dict) else None
            if not isinstance(rows, dict):
                continue
            for variant in list(rows):
                m = table.get(node, variant)
                if m is not None:
                    rows[variant] = asdict(m)
        data[TASKS_KEY] = table.realisations_as_dict()
        self._write(data)

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
        self._write(data)

    def _write(self, data: Mapping[str, object]) -> None:
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
    except (TypeError, ValueError, AttributeError):
        return None
    # Profiles written before batch latencies were measured are profiled again.
    return measurements if all(m.latencies for m in measurements.values()) else None

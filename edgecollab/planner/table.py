"""The exploration table: measured throughput of every (node, variant) pair, and each variant's accuracy."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measurement:
    ips: float  # inputs per second at the profiling shard size
    latency_ms: float  # time for one shard, send to reply


class ExplorationTable:
    """Node × variant → measurement, plus variant → accuracy. Pure data; no I/O but save/load."""

    def __init__(self, accuracy: dict[str, float]) -> None:
        self.accuracy = dict(accuracy)  # variant -> test-set accuracy from the manifest
        self._rows: dict[tuple[str, str], Measurement] = {}
        # node -> seconds to ship one input over its link (bytes per input ÷ bandwidth); 0 when unknown
        self.link_seconds: dict[str, float] = {}
        # achieved ÷ expected throughput of recent requests, in (0, 1]: start-up, the tail and contention
        # between nodes that the per-node rows do not see
        self.efficiency = 1.0

    def record(self, node: str, variant: str, measurement: Measurement) -> None:
        self._rows[(node, variant)] = measurement

    def observe(self, node: str, variant: str, ips: float, weight: float) -> float:
        """Fold an observed throughput into the row (exponentially weighted); returns the new estimate."""
        old = self._rows.get((node, variant))
        if old is None:
            self._rows[(node, variant)] = Measurement(ips, 0.0)
            return ips
        updated = Measurement(weight * ips + (1 - weight) * old.ips, old.latency_ms)
        self._rows[(node, variant)] = updated
        return updated.ips

    def observe_efficiency(self, achieved_over_expected: float, weight: float) -> float:
        """Fold one request's achieved ÷ expected throughput into ``efficiency`` (kept within [0.5, 1])."""
        observed = self.efficiency * achieved_over_expected
        self.efficiency = min(1.0, max(0.5, weight * observed + (1 - weight) * self.efficiency))
        return self.efficiency

    def scaled(self, share: float) -> ExplorationTable:
        """A copy in which every node offers only ``share`` of its throughput (capacity left for one request)."""
        copy = ExplorationTable(self.accuracy)
        copy._rows = {k: Measurement(m.ips * share, m.latency_ms) for k, m in self._rows.items()}
        copy.link_seconds = {n: s / share for n, s in self.link_seconds.items()}
        copy.efficiency = self.efficiency
        return copy

    def forget(self, node: str) -> None:
        for key in [k for k in self._rows if k[0] == node]:
            del self._rows[key]

    def get(self, node: str, variant: str) -> Measurement | None:
        return self._rows.get((node, variant))

    def ips(self, node: str, variant: str) -> float:
        m = self._rows.get((node, variant))
        return m.ips if m else 0.0

    def seconds_per_input(self, node: str, variant: str) -> float:
        """What one input costs a node: compute, or shipping it when the link is the bottleneck.

        Shards are pipelined (the next one travels while the current one computes), so
        the slower of the two sets the pace.
        """
        ips = self.ips(node, variant)
        compute = 1.0 / ips if ips > 0 else float("inf")
        return max(compute, self.link_seconds.get(node, 0.0))

    def nodes(self) -> list[str]:
        return sorted({n for n, _ in self._rows})

    def variants_of(self, node: str) -> list[str]:
        return [v for (n, v) in self._rows if n == node]

    def rows(self) -> list[dict[str, object]]:
        return [
            {"node": n, "variant": v, "ips": m.ips, "latency_ms": m.latency_ms, "accuracy": self.accuracy.get(v)}
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
        return {str(variant): Measurement(**m) for variant, m in rows.items()}
    except TypeError:
        return None

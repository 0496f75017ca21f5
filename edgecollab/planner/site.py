"""A site's profile as its parent sees it: the site's exploration table folded into one node.

A site (a coordinator under a parent coordinator) is one node of its parent. Per variant it can give
the throughput of every serving board that has the variant, all running it; a frame's wait is its
fastest such board's. Within a task a variant that another beats on both throughput and accuracy is
left out: what remains is the site's Pareto front, and the parent plans on it exactly as on a board's
rows. Pure: no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from .table import ExplorationTable, Measurement

# A front that moved less than this (relative throughput, every variant) is not reported again.
FRONT_CHANGE = 0.1
# A site measures its link from the parent with probes of these sizes (bytes the parent sends it),
# PROBE_ROUNDS times each, interleaved; a link estimate that moved less than LINK_CHANGE is not re-reported.
PROBE_SIZES = (4 * 1024, 1024 * 1024)
PROBE_ROUNDS = 3
LINK_CHANGE = 0.2


def site_front(
    table: ExplorationTable, boards: Iterable[str], variants_by_task: Mapping[str, Iterable[str]]
) -> dict[str, Measurement]:
    """Per variant on the front: the site's summed throughput, and its fastest board's latencies."""
    boards = list(boards)
    front: dict[str, Measurement] = {}
    for variants in variants_by_task.values():
        rows: dict[str, Measurement] = {}
        for variant in variants:
            measured = [m for m in (table.get(b, variant) for b in boards) if m is not None and m.ips > 0]
            if measured:
                fastest = max(measured, key=lambda m: m.ips)
                rows[variant] = Measurement(sum(m.ips for m in measured), fastest.latency_ms, fastest.latencies)
        for variant, row in rows.items():
            if not any(_beats(table.accuracy, other, rows[other], variant, row) for other in rows if other != variant):
                front[variant] = row
    return front


def _beats(accuracy: Mapping[str, float], a: str, row_a: Measurement, b: str, row_b: Measurement) -> bool:
    """Whether variant ``a`` dominates ``b``: no slower, no less accurate, and better at one of the two."""
    acc_a, acc_b = accuracy.get(a, 0.0), accuracy.get(b, 0.0)
    return row_a.ips >= row_b.ips and acc_a >= acc_b and (row_a.ips > row_b.ips or acc_a > acc_b)


def front_moved(old: Mapping[str, Measurement], new: Mapping[str, Measurement]) -> bool:
    """Whether a new front is worth reporting: other variants, or a throughput moved by ``FRONT_CHANGE``."""
    if set(old) != set(new):
        return True
    return any(abs(new[v].ips - old[v].ips) > FRONT_CHANGE * old[v].ips for v in new)


def link_mbps_from(samples: Iterable[tuple[int, float]]) -> float | None:
    """The link's bandwidth (Mbit/s) from probe round trips: (bytes the parent sent, seconds). The
    difference of the median round trips of the largest and the smallest probe is the time the extra
    bytes took (the fixed latency cancels); None without both sizes or when the difference is no time."""
    by_size: dict[int, list[float]] = {}
    for size, seconds in samples:
        by_size.setdefault(size, []).append(seconds)
    if len(by_size) < 2:
        return None
    small, large = min(by_size), max(by_size)
    extra_s = statistics.median(by_size[large]) - statistics.median(by_size[small])
    if extra_s <= 0:
        return None
    return (large - small) * 8 / extra_s / 1e6


def link_moved(old: float | None, new: float | None) -> bool:
    """Whether a new link estimate is worth reporting: the first, or one that moved by ``LINK_CHANGE``."""
    if new is None:
        return False
    return old is None or abs(new - old) > LINK_CHANGE * old


def front_to_wire(front: Mapping[str, Measurement]) -> dict[str, Any]:
    return {
        v: {"ips": m.ips, "latency_ms": m.latency_ms, "latencies": [list(p) for p in m.latencies]}
        for v, m in front.items()
    }


def front_from_wire(front: Mapping[str, Any], known: Iterable[str]) -> dict[str, Measurement]:
    """A reported front, checked: ``ValueError`` naming the first entry that is not a usable row."""
    known = set(known)
    rows: dict[str, Measurement] = {}
    for variant, row in front.items():
        if variant not in known:
            raise ValueError(f"site front: variant {variant!r} is not one the site registered with")
        try:
            ips, latency_ms = float(row["ips"]), float(row["latency_ms"])
            latencies = tuple((int(b), float(ms)) for b, ms in row.get("latencies", ()))
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(
                f"site front: {variant!r} must be {{ips, latency_ms, latencies: [[batch, ms], ...]}}; got {row!r}"
            ) from exc
        numbers = [ips, latency_ms, *(x for pair in latencies for x in pair)]
        if not all(math.isfinite(x) and x > 0 for x in numbers):
            raise ValueError(f"site front: {variant!r} needs positive finite figures; got {row!r}")
        rows[variant] = Measurement(ips, latency_ms, latencies)
    return rows

"""Exact joint choice of shares and variants: a small (mixed-integer) linear program.

For each usable (node, variant) option ``k`` let ``c_k`` be the seconds one input costs
there: ``max(1 / ips, link seconds per input)``, since shipping the next shard overlaps
computing the current one. With ``s_k`` the inputs given to option ``k`` and ``T`` the
makespan (every node finishes within it):

* **accuracy** (a deadline ``D``): maximise ``Σ acc_k s_k`` subject to ``Σ s_k = N`` and
  ``T ≤ D``; among equally accurate allocations, the smallest ``T``;
* **performance** (no deadline): minimise ``T`` subject to ``Σ s_k = N`` and the mean
  accuracy ``Σ acc_k s_k / N ≥ A``; among equally fast allocations, the most accurate.

Both are one program with a lexicographic objective: the secondary term is weighted so
that it can never outweigh 1e-5 of the primary. One variant per node (the paper's
setting) adds a binary ``x_k`` per option with ``Σ_k∈node x_k ≤ 1`` and
``s_k ≤ (D / c_k) · x_k``; the ``mixed`` form lets a node time-share its variants within
the request (its times add up), which is a pure LP and can only raise accuracy. Options a
node can always replace by a faster and at least as accurate one are dropped first: an
optimum never needs them. Solved with HiGHS through ``scipy.optimize.milp`` to a relative
gap of ``MIP_GAP`` (within ``TIME_LIMIT_S``); the LP relaxation — the mixed plan — bounds
how far from optimal a one-variant plan can be. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

# Weight of the tie-breaking objective relative to the primary one.
_TIE_BREAK = 1e-5
# The objective is scaled so the tie-break stays far above HiGHS's absolute MIP gap (1e-6).
_SCALE = 1e4
# HiGHS stops at this relative gap to its bound, or after this long with the best plan found.
# Proving the last digits costs seconds on large clusters and changes accuracy by < 1e-5.
MIP_GAP = 1e-6
TIME_LIMIT_S = 0.25


@dataclass(frozen=True)
class Option:
    node: str
    variant: str
    seconds_per_input: float
    accuracy: float
    group: str = ""  # options of different groups (e.g. tasks) never replace one another


@dataclass(frozen=True)
class Allocation:
    inputs: tuple[float, ...]  # continuous share per option, same order as the options given
    makespan_s: float
    accuracy: float  # input-weighted mean


class Constraints:
    """The rows of a linear program and their bounds, added one at a time, kept sparse: a joint plan's rows
    each touch a few of thousands of variables."""

    def __init__(self, width: int | None = None) -> None:
        self.width = width  # number of variables (else the length of the first dense row)
        self.columns: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def add(self, row: np.ndarray, lo: float, hi: float) -> None:
        """A dense row."""
        if self.width is None:
            self.width = len(row)
        columns = np.flatnonzero(row)
        self.add_sparse(columns, row[columns], lo, hi)

    def add_sparse(self, columns: np.ndarray, values: np.ndarray, lo: float, hi: float) -> None:
        """A row given by its non-zero entries."""
        self.columns.append(np.asarray(columns, dtype=np.int64))
        self.values.append(np.asarray(values, dtype=float))
        self.lower.append(lo)
        self.upper.append(hi)

    def linear(self) -> LinearConstraint:
        counts = [len(c) for c in self.columns]
        rows = np.repeat(np.arange(len(counts)), counts)
        values = np.concatenate(self.values) if self.values else np.zeros(0)
        columns = np.concatenate(self.columns) if self.columns else np.zeros(0, dtype=np.int64)
        matrix = csr_array((values, (rows, columns)), shape=(len(counts), self.width or 0))
        return LinearConstraint(matrix, np.array(self.lower), np.array(self.upper))


@dataclass(frozen=True)
class Solved:
    x: np.ndarray | None  # the best solution found; None if none was
    timed_out: bool  # the time limit stopped the search: x is its incumbent, not proven optimal


def run_milp(
    objective: np.ndarray,
    integrality: np.ndarray,
    upper_bounds: np.ndarray,
    constraints: Constraints,
    time_limit_s: float = TIME_LIMIT_S,
) -> Solved:
    """Minimise ``objective`` with HiGHS (variables from 0 to ``upper_bounds``) within ``time_limit_s``."""
    result = milp(
        objective,
        integrality=integrality,
        bounds=Bounds(np.zeros(len(objective)), upper_bounds),
        constraints=constraints.linear(),
        options={"presolve": True, "mip_rel_gap": MIP_GAP, "time_limit": time_limit_s},
    )
    # Status 1: the time limit was reached; x is then the best plan found, if any.
    timed_out = result.status == 1
    if result.status not in (0, 1) or result.x is None:
        return Solved(None, timed_out)
    return Solved(np.asarray(result.x), timed_out)


def maximise_accuracy(
    options: Sequence[Option], total: int, deadline_s: float, min_accuracy: float | None, mixed: bool
) -> Allocation | None:
    """Most accurate allocation finishing every node within ``deadline_s`` (then the fastest); None if none."""
    return _solve(options, total, deadline_s, min_accuracy, mixed, accuracy_first=True)


def minimise_makespan(
    options: Sequence[Option], total: int, min_accuracy: float | None, mixed: bool
) -> Allocation | None:
    """Fastest allocation whose mean accuracy is at least ``min_accuracy`` (then the most accurate); None if none."""
    fastest_eligible: dict[str, float] = {}
    for o in options:
        if min_accuracy is None or o.accuracy >= min_accuracy:
            fastest_eligible[o.node] = min(fastest_eligible.get(o.node, np.inf), o.seconds_per_input)
    if not fastest_eligible:
        return None
    # Every node on its fastest variant that meets the accuracy, split so all finish together,
    # is feasible: its makespan bounds T (and keeps the one-variant form's constraints tight).
    upper = total / sum(1.0 / c for c in fastest_eligible.values())
    return _solve(options, total, upper * (1 + 1e-9), min_accuracy, mixed, accuracy_first=False)


def dominated(options: Sequence[Option]) -> set[int]:
    """Indices of options their own node can replace by one that is no slower and no less accurate."""

    def beats(p: Option, o: Option, p_first: bool) -> bool:
        no_worse = (
            p.node == o.node
            and p.group == o.group
            and p.accuracy >= o.accuracy
            and p.seconds_per_input <= o.seconds_per_input
        )
        # Of two identical options keep the first.
        return no_worse and (p.accuracy > o.accuracy or p.seconds_per_input < o.seconds_per_input or p_first)

    return {i for i, o in enumerate(options) if any(j != i and beats(p, o, j < i) for j, p in enumerate(options))}


def _solve(
    all_options: Sequence[Option],
    total: int,
    deadline_s: float,
    min_accuracy: float | None,
    mixed: bool,
    accuracy_first: bool,
) -> Allocation | None:
    dropped = dominated(all_options)
    keep = [i for i in range(len(all_options)) if i not in dropped]
    options = [all_options[i] for i in keep]
    k = len(options)
    if k == 0 or deadline_s <= 0:
        return None
    cost = np.array([o.seconds_per_input for o in options])
    acc = np.array([o.accuracy for o in options])
    nodes = sorted({o.node for o in options})
    # Variables: s (k), x (k, one-variant form only), T.
    n_vars = k + 1 if mixed else 2 * k + 1
    t = n_vars - 1
    constraints = Constraints()
    add = constraints.add
    row = np.zeros(n_vars)
    row[:k] = 1.0
    add(row, total, total)  # every input is planned, once
    if min_accuracy is not None:
        row = np.zeros(n_vars)
        row[:k] = acc - min_accuracy
        add(row, 0.0, np.inf)
    for node in nodes:
        members = np.array([o.node == node for o in options])
        if mixed:  # a node's variants run one after the other
            row = np.zeros(n_vars)
            row[:k] = np.where(members, cost, 0.0)
            row[t] = -1.0
            add(row, -np.inf, 0.0)
        else:
            row = np.zeros(n_vars)
            row[k : 2 * k] = members
            add(row, -np.inf, 1.0)  # at most one variant per node
    if not mixed:
        for i in range(k):
            finish = np.zeros(n_vars)
            finish[i], finish[t] = cost[i], -1.0
            add(finish, -np.inf, 0.0)  # c_k s_k ≤ T
            chosen = np.zeros(n_vars)
            chosen[i], chosen[k + i] = 1.0, -deadline_s / cost[i]
            add(chosen, -np.inf, 0.0)  # s_k ≤ (D / c_k) x_k: inputs only on a chosen option
    objective = np.zeros(n_vars)
    if accuracy_first:
        objective[:k] = -_SCALE * acc / total
        objective[t] = _SCALE * _TIE_BREAK / deadline_s
    else:
        objective[t] = _SCALE / deadline_s
        objective[:k] = -_SCALE * _TIE_BREAK * acc / total
    integrality = np.zeros(n_vars)
    integrality[k:t] = 1
    bounds_upper = np.full(n_vars, float(total))
    bounds_upper[k:t] = 1.0
    bounds_upper[t] = deadline_s
    x = run_milp(objective, integrality, bounds_upper, constraints).x
    if x is None:
        return None
    shares = np.zeros(len(all_options))
    shares[keep] = np.clip(x[:k], 0.0, None)
    return _allocation(all_options, shares, total)


def _allocation(options: Sequence[Option], shares: np.ndarray, total: int) -> Allocation:
    times: dict[str, float] = {}
    for option, share in zip(options, shares, strict=True):
        times[option.node] = times.get(option.node, 0.0) + share * option.seconds_per_input
    accuracy = float(sum(o.accuracy * s for o, s in zip(options, shares, strict=True)) / total)
    return Allocation(tuple(float(s) for s in shares), max(times.values(), default=0.0), accuracy)

"""Exact joint choice of shares and variants: a small (mixed-integer) linear program.

For each usable (node, variant) option ``k`` let ``c_k`` be the seconds one input costs
there: ``max(1 / ips, link seconds per input)``, since shipping the next shard overlaps
computing the current one. With ``s_k`` the inputs given to option ``k``:

* **accuracy** (a deadline ``D = N / target``): maximise ``Σ acc_k s_k`` subject to
  ``Σ s_k = N`` and each node finishing within ``D``;
* **performance** (no target): minimise the makespan ``T`` subject to ``Σ s_k = N`` and
  the mean accuracy ``Σ acc_k s_k / N ≥ A``; then, at that makespan, maximise accuracy.

One variant per node (the paper's setting) adds a binary ``x_k`` per option with
``Σ_k∈node x_k ≤ 1``; the ``mixed`` form lets a node time-share its variants within the
request (its times add up), which is a pure LP and can only raise accuracy.
Solved with HiGHS through ``scipy.optimize.milp``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


@dataclass(frozen=True)
class Option:
    node: str
    variant: str
    seconds_per_input: float
    accuracy: float


@dataclass(frozen=True)
class Allocation:
    inputs: tuple[float, ...]  # continuous share per option, same order as the options
    makespan_s: float
    accuracy: float  # input-weighted mean


def maximise_accuracy(
    options: Sequence[Option], total: int, deadline_s: float, min_accuracy: float | None, mixed: bool
) -> Allocation | None:
    """Most accurate allocation finishing every node within ``deadline_s``; None if there is none.

    Among equally accurate allocations it returns the fastest, so spare nodes are used, not idled.
    """
    best = _most_accurate_within(options, total, deadline_s, min_accuracy, mixed)
    if best is None:
        return None
    fastest = _fastest(options, total, best.accuracy * (1 - 1e-9), mixed)
    return fastest if fastest is not None and fastest.makespan_s <= best.makespan_s else best


def _most_accurate_within(
    options: Sequence[Option], total: int, deadline_s: float, min_accuracy: float | None, mixed: bool
) -> Allocation | None:
    k = len(options)
    cost = np.array([o.seconds_per_input for o in options])
    acc = np.array([o.accuracy for o in options])
    nodes = sorted({o.node for o in options})
    n_vars = k if mixed else 2 * k
    rows: list[tuple[np.ndarray, float, float]] = [(_pad(np.ones(k), n_vars), total, total)]
    if min_accuracy is not None:
        rows.append((_pad(acc - min_accuracy, n_vars), 0.0, np.inf))
    for node in nodes:
        members = np.array([o.node == node for o in options])
        if mixed:
            rows.append((_pad(np.where(members, cost, 0.0), n_vars), -np.inf, deadline_s))
        else:
            rows.append((np.concatenate([np.zeros(k), members.astype(float)]), -np.inf, 1.0))
    if not mixed:
        # s_k ≤ (D / c_k) · x_k: an option takes inputs only if chosen, and only what fits in D.
        for i in range(k):
            row = np.zeros(n_vars)
            row[i], row[k + i] = 1.0, -deadline_s / cost[i]
            rows.append((row, -np.inf, 0.0))
    objective = _pad(-acc, n_vars)
    integrality = np.concatenate([np.zeros(k), np.ones(n_vars - k)])
    upper = np.concatenate([np.full(k, float(total)), np.ones(n_vars - k)])
    solution = _solve(objective, rows, integrality, upper)
    if solution is None:
        return None
    return _allocation(options, solution[:k], total)


def minimise_makespan(
    options: Sequence[Option], total: int, min_accuracy: float | None, mixed: bool
) -> Allocation | None:
    """Fastest allocation whose mean accuracy is at least ``min_accuracy``; None if there is none.

    Among equally fast allocations it returns the most accurate.
    """
    fastest = _fastest(options, total, min_accuracy, mixed)
    if fastest is None:
        return None
    deadline = fastest.makespan_s * (1 + 1e-6) + 1e-9
    return _most_accurate_within(options, total, deadline, min_accuracy, mixed) or fastest


def _fastest(options: Sequence[Option], total: int, min_accuracy: float | None, mixed: bool) -> Allocation | None:
    k = len(options)
    cost = np.array([o.seconds_per_input for o in options])
    acc = np.array([o.accuracy for o in options])
    nodes = sorted({o.node for o in options})
    # Variables: s (k), x (k, single-variant only), T.
    n_vars = k + 1 if mixed else 2 * k + 1
    t = n_vars - 1
    rows: list[tuple[np.ndarray, float, float]] = []
    row = np.zeros(n_vars)
    row[:k] = 1.0
    rows.append((row, total, total))
    if min_accuracy is not None:
        row = np.zeros(n_vars)
        row[:k] = acc - min_accuracy
        rows.append((row, 0.0, np.inf))
    if mixed:
        for node in nodes:
            row = np.zeros(n_vars)
            row[:k] = [c if o.node == node else 0.0 for o, c in zip(options, cost, strict=True)]
            row[t] = -1.0
            rows.append((row, -np.inf, 0.0))
    else:
        for i in range(k):
            finish = np.zeros(n_vars)
            finish[i], finish[t] = cost[i], -1.0  # c_k s_k ≤ T
            chosen = np.zeros(n_vars)
            chosen[i], chosen[k + i] = 1.0, -float(total)  # s_k ≤ N x_k
            rows += [(finish, -np.inf, 0.0), (chosen, -np.inf, 0.0)]
        for node in nodes:
            row = np.zeros(n_vars)
            row[k : 2 * k] = [1.0 if o.node == node else 0.0 for o in options]
            rows.append((row, -np.inf, 1.0))
    objective = np.zeros(n_vars)
    objective[t] = 1.0
    integrality = np.zeros(n_vars)
    integrality[k:t] = 1
    upper = np.full(n_vars, np.inf)
    upper[:k] = total
    upper[k:t] = 1.0
    solution = _solve(objective, rows, integrality, upper)
    return None if solution is None else _allocation(options, solution[:k], total)


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length)
    out[: len(values)] = values
    return out


def _solve(
    objective: np.ndarray, rows: list[tuple[np.ndarray, float, float]], integrality: np.ndarray, upper: np.ndarray
) -> np.ndarray | None:
    matrix = np.vstack([r for r, _, _ in rows])
    lower_bounds = np.array([lo for _, lo, _ in rows])
    upper_bounds = np.array([hi for _, _, hi in rows])
    result = milp(
        objective,
        integrality=integrality,
        bounds=Bounds(np.zeros(len(objective)), upper),
        constraints=LinearConstraint(matrix, lower_bounds, upper_bounds),
        options={"presolve": True, "mip_rel_gap": 1e-9},
    )
    if not result.success or result.x is None:
        return None
    return np.asarray(result.x)


def _allocation(options: Sequence[Option], shares: np.ndarray, total: int) -> Allocation:
    shares = np.clip(shares, 0.0, None)
    times: dict[str, float] = {}
    for option, share in zip(options, shares, strict=True):
        times[option.node] = times.get(option.node, 0.0) + share * option.seconds_per_input
    accuracy = float(sum(o.accuracy * s for o, s in zip(options, shares, strict=True)) / total)
    return Allocation(tuple(float(s) for s in shares), max(times.values(), default=0.0), accuracy)

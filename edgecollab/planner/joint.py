"""One joint plan for everything running: per demand, which share of which board at which variant.

A *demand* is a running request (or the pooled traffic of small requests) described by
rates, not by its number of inputs, so the plan can be reused as long as the work and the
table stay the same. For every demand ``d`` and usable (node, variant) option ``k`` the
variable ``x_dk`` is the inputs per second ``d`` gets from ``k``; ``c_k`` is the seconds
one input costs there (see ``ExplorationTable.seconds_per_input``). A node's time is its
capacity: ``Σ_d Σ_k∈node c_k x_dk ≤ 1``.

Two stages, each one HiGHS program (``scipy.optimize.milp``):

1. **Demands with a target** get exactly their rate ``R_d = target ÷ (efficiency × (1 − margin))``
   on the rows' lower confidence bounds (``planner/confidence.py``: the efficiency and the margin are
   the demand's task's, learned) and their minimum mean accuracy. The largest demands first get, in order of
   rate, the most accurate plan each can have while every target stays met (accuracy floors,
   ``_priority_floors``), so a loose demand never takes what a tight one needs; then the plan
   maximises ``Σ acc_k x_dk`` (expected correct answers per second) within those floors, then
   the least node time. When the targets cannot all be met, every targeted rate is scaled by
   the largest common factor ``λ < 1`` that can be, and the plan says so.
2. **Best-effort demands** (no target) share what is left of each node — never less than
   ``BEST_EFFORT_FLOOR`` of it, since dispatch is work-conserving and they run behind the
   targeted ones anyway — at the most accurate variants their minimum allows, at equal rates.

With ``one_variant`` a demand runs one variant per node (binary ``y_dk``, ``x_dk ≤ y_dk /
c_k``), as the paper's plans do; otherwise a node may time-share variants. Every stage first
solves the LP relaxation (time-sharing allowed, exact, milliseconds), which bounds what any
plan can reach; then the one-variant MILP within ``TIME_LIMIT_S``. The MILP's plan is kept
when its accuracy is within ``MAX_LOSS_TO_BOUND`` of the bound, otherwise the LP's is used,
so every joint plan is within 0.1 point of the LP bound. ``JointPlan.loss_to_bound`` records
how far it is. Pure: no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .optimizer import TIME_LIMIT_S, Constraints, Option, dominated, run_milp
from .policies import Assignment, Plan, PlanningError, split_by_weight
from .table import ExplorationTable

# Targets below this rate (inputs/s) are planned at it, so every demand has a share to cut.
MIN_RATE = 1e-3
# Best-effort demands are planned on at least this fraction of every node's time.
BEST_EFFORT_FLOOR = 0.05
# A one-variant plan is used only when its accuracy is this close to the LP bound (0.1 point).
MAX_LOSS_TO_BOUND = 1e-3
# The largest demands, in order, get accuracy floors before the rest is shared (see _priority_floors);
# a floor is what they reach first, less this slack, so the one-variant plan can still meet it.
PRIORITY_STAGES = 4
PRIORITY_RATIO = 2.0
FLOOR_SLACK = 1e-5
# A node-variant serves a latency-bound demand only if a one-frame shard's round trip is at most
# this fraction of the bound: frames also wait for a free slot and for the batch they ride in.
LATENCY_SHARE = 0.5
# A latency-bound demand is planned to keep the nodes it uses at most this busy with it: near full
# load, queues (and so latency) grow without bound. Past it the plan picks cheaper variants. 0.4
# keeps the emulated testbed within 100 ms at 32 x 30 fps (benchmarks/streams.py); at 0.7 its
# p99 was several hundred ms (the frames' micro-batches share the host's two cores).
LATENCY_BOUND_LOAD = 0.4
# Past this many nodes, boards alike are planned as one (see plan_jointly): the MILP's size then follows the
# kinds of board, not their number. Boards are alike when each variant's cost is within this of the lead's.
GROUP_ABOVE_NODES = 16
GROUP_TOLERANCE = 0.15
# The one-variant search of a joint plan stops this long after the plan began (LPs and set-up included):
# its best plan so far is then taken if within MAX_LOSS_TO_BOUND of the LP bound, else the LP's plan.
PLAN_TIME_BOUND_S = 0.06
MIN_SEARCH_S = 0.005  # a search that starts past the bound still gets this long
# Weight of the tie-breaking term (least node time) against accuracy, and the objective's scale.
_TIE_BREAK = 1e-5
_SCALE = 1e4


@dataclass(frozen=True)
class Demand:
    key: str
    target_ips: float | None = None  # None: best effort
    min_accuracy: float | None = None  # minimum mean accuracy of its inputs
    one_variant: bool = True  # one variant per node (``adaptive``) or time-shared (``mixed``)
    # A stream's bound on each frame's round trip: options whose one-frame round trip exceeds
    # LATENCY_SHARE of it get no share of this demand (the rest is for waiting and batching).
    max_latency_s: float | None = None
    max_batch: int = 32  # the largest micro-batch dispatch sends (a latency-bound demand's cost depends on it)
    # The variants that may serve it (its task's); None: any. Accuracies of different tasks are in
    # each task's own measure (top-1, mAP): the plan only compares them within a demand.
    variants: frozenset[str] | None = None


@dataclass(frozen=True)
class Share:
    node: str
    variant: str
    ips: float  # inputs per second the demand gets from this node at this variant


@dataclass(frozen=True)
class DemandPlan:
    key: str
    shares: tuple[Share, ...]
    expected_ips: float  # what it promises: Σ share rates (on lower bounds) × its task's efficiency, less the margin
    expected_accuracy: float  # rate-weighted mean accuracy
    feasible: bool
    notes: tuple[str, ...] = ()
    margin: float = 0.0  # the relative headroom kept for what the table does not know

    def node_time(self, table: ExplorationTable) -> dict[str, float]:
        """Fraction of each node's time this demand is planned to use (its dispatch weight)."""
        used: dict[str, float] = {}
        for s in self.shares:
            used[s.node] = used.get(s.node, 0.0) + s.ips * table.seconds_per_input(s.node, s.variant)
        return used

    def variant_on(self, node: str) -> str | None:
        """The variant with the largest share on ``node``, or None when the demand does not use it."""
        mine = [s for s in self.shares if s.node == node]
        return max(mine, key=lambda s: s.ips).variant if mine else None

    def for_inputs(self, policy: str, inputs: int) -> Plan:
        """This demand's shares as a plan for ``inputs`` inputs (what ``RequestRun`` cuts into shards)."""
        used = [s for s in self.shares if s.ips > 0]
        if not used:
            raise PlanningError(f"demand {self.key} has no share of any node")
        counts = split_by_weight(inputs, [s.ips for s in used])
        assignments = tuple(Assignment(s.node, s.variant, k) for s, k in zip(used, counts, strict=True) if k > 0)
        return Plan(
            policy, assignments, self.expected_ips, self.expected_accuracy, self.feasible, self.notes, self.margin,
            cautious=True,
        )  # fmt: skip


@dataclass(frozen=True)
class JointPlan:
    demands: dict[str, DemandPlan]
    node_load: dict[str, float]  # planned fraction of each node's time, all demands together
    solve_s: float  # wall time of the solves
    loss_to_bound: float  # accuracy below the LP bound (a fraction; ≤ MAX_LOSS_TO_BOUND)
    scale: float = 1.0  # λ: the factor every target was scaled by to fit (1 when all fit)
    notes: tuple[str, ...] = field(default=())
    # The one-variant search stopped at PLAN_TIME_BOUND_S: the plan is its best one found (within
    # MAX_LOSS_TO_BOUND of the LP bound, ``loss_to_bound`` says how far), or the LP's when none was that close.
    timed_out: bool = False


def plan_jointly(table: ExplorationTable, demands: Sequence[Demand], nodes: Sequence[str]) -> JointPlan:
    """The joint plan for ``demands`` on the usable ``nodes``; ``PlanningError`` if no node is profiled.

    Up to GROUP_ABOVE_NODES nodes, every board is planned on its own. Past it the plan is made in two
    steps: boards alike (``group_alike``) are one node of their summed capacity, on which a demand
    runs one variant, and each group's shares are then spread over its boards by their speed.
    Planned on the rows' lower confidence bounds: a demand's expected rate is what it is promised.
    """
    table = table.lower_bounds()
    if len(nodes) > GROUP_ABOVE_NODES:
        groups = group_alike(table, nodes)
        if len(groups) < len(nodes):
            return _spread(table, _plan(table, demands, {g[0]: len(g) for g in groups}), groups)
    return _plan(table, demands, dict.fromkeys(nodes, 1))


def group_alike(table: ExplorationTable, nodes: Sequence[str]) -> list[list[str]]:
    """Nodes with the same profiled variants, each variant's cost within GROUP_TOLERANCE of the first
    node of the group (its lead, which stands for the group in the plan)."""
    groups: list[tuple[dict[str, float], list[str]]] = []
    for node in sorted(nodes):
        costs = {v: table.seconds_per_input(node, v) for v in table.variants_of(node) if table.ips(node, v) > 0}
        for lead_costs, members in groups:
            if lead_costs.keys() == costs.keys() and all(
                abs(costs[v] / lead_costs[v] - 1) <= GROUP_TOLERANCE for v in costs
            ):
                members.append(node)
                break
        else:
            groups.append((costs, [node]))
    return [members for _, members in groups]


def _spread(table: ExplorationTable, plan: JointPlan, groups: list[list[str]]) -> JointPlan:
    """A plan made on groups' leads as one made on every board: each share split by the boards' speed."""
    members = {group[0]: group for group in groups}
    demands = {}
    for key, demand in plan.demands.items():
        shares = []
        for share in demand.shares:
            speeds = [table.ips(m, share.variant) for m in members[share.node]]
            total = sum(speeds)
            shares += [
                Share(m, share.variant, share.ips * ips / total)
                for m, ips in zip(members[share.node], speeds, strict=True)
            ]
        demands[key] = replace(demand, shares=tuple(shares))
    load = {m: plan.node_load.get(lead, 0.0) / len(group) for lead, group in members.items() for m in group}
    return JointPlan(demands, load, plan.solve_s, plan.loss_to_bound, plan.scale, plan.notes, plan.timed_out)


def _plan(table: ExplorationTable, demands: Sequence[Demand], boards: Mapping[str, int]) -> JointPlan:
    """The joint plan on the nodes of ``boards``, each standing for that many boards alike (its capacity)."""
    started = time.perf_counter()
    options = [
        Option(n, v, table.seconds_per_input(n, v), table.accuracy[v], _serves(demands, v))
        for n in sorted(boards)
        for v in sorted(table.variants_of(n))
        if table.ips(n, v) > 0 and v in table.accuracy
    ]
    if not options:
        raise PlanningError("no profiled node is available to plan on")
    keys = [d.key for d in demands]
    if len(set(keys)) != len(keys):
        raise PlanningError(f"demand keys must be unique, got {keys}")
    best_accuracy = max(o.accuracy for o in options)
    notes: dict[str, list[str]] = {d.key: [] for d in demands}
    costs = {d.key: _costs(table, options, d) for d in demands}
    for key, cost in costs.items():
        if not any(np.isfinite(cost)):
            notes[key].append(f"no board answers one frame within {LATENCY_SHARE:.0%} of the latency bound")
    for d in demands:
        best = max((o.accuracy for o in options if d.variants is None or o.variant in d.variants), default=0.0)
        if d.min_accuracy is not None and d.min_accuracy > best:
            notes[d.key].append(
                f"minimum accuracy {d.min_accuracy:g} is unreachable: the best variant scores {best:.4f}"
            )
    targeted = [d for d in demands if d.target_ips is not None]
    best_effort = [d for d in demands if d.target_ips is None]
    # Of each demand's planned rate, this fraction is promised: its task's efficiency, less its margin.
    margins = {d.key: table.realisation(d.variants).margin(table.z) for d in demands}
    kept = {d.key: table.efficiency_for(d.variants) * (1 - margins[d.key]) for d in demands}
    rates = {d.key: max(float(d.target_ips or 0.0) / kept[d.key], MIN_RATE) for d in targeted}
    capacity = {n: float(boards[n]) for n in {o.node for o in options}}
    shares: dict[str, dict[int, float]] = {}
    loss, scale = 0.0, 1.0
    deadline = started + PLAN_TIME_BOUND_S
    timed_out = False
    if targeted:
        relaxed = _Program(options, targeted, capacity, best_accuracy, relaxed=True, costs=costs)
        at_full_rate = relaxed.solve_targeted(rates, 1.0)
        if at_full_rate is None:
            scale = relaxed.largest_scale(rates)
            for d in targeted:
                reached = scale * rates[d.key] * kept[d.key]
                notes[d.key].insert(
                    0,
                    f"target of {d.target_ips:g} inf/s is infeasible with the work running now: "
                    f"the plan reaches {reached:.0f} inf/s",
                )
            scale *= 1 - 1e-6
        floors = _priority_floors(options, targeted, capacity, best_accuracy, rates, scale, costs)
        known = (relaxed, at_full_rate) if at_full_rate is not None and not floors else None  # the same LP
        solved = _solve_stage(
            options, targeted, capacity, best_accuracy, lambda p: p.solve_targeted(rates, scale), floors, costs,
            deadline, known,
        )  # fmt: skip
        if solved is not None:
            program, x, loss, timed_out = solved
            shares.update(program.shares_by_demand(x))
    used = _node_time(options, shares, costs)
    if best_effort:
        left = {n: max(cap - used.get(n, 0.0), BEST_EFFORT_FLOOR * cap) for n, cap in capacity.items()}
        solved = _solve_stage(
            options, best_effort, left, best_accuracy, lambda p: p.solve_best_effort(), None, costs, deadline
        )
        if solved is not None:
            program, x, be_loss, be_timed_out = solved
            loss, timed_out = max(loss, be_loss), timed_out or be_timed_out
            shares.update(program.shares_by_demand(x))
    plans = {}
    for d in demands:
        mine = shares.get(d.key, {})
        chosen = tuple(Share(options[k].node, options[k].variant, ips) for k, ips in sorted(mine.items()) if ips > 1e-9)
        total = sum(s.ips for s in chosen)
        accuracy = sum(s.ips * table.accuracy[s.variant] for s in chosen) / total if total > 0 else 0.0
        expected = total * kept[d.key]
        feasible = not notes[d.key] and total > 0
        plans[d.key] = DemandPlan(d.key, chosen, expected, accuracy, feasible, tuple(notes[d.key]), margins[d.key])
    return JointPlan(
        plans, _node_time(options, shares, costs), time.perf_counter() - started, loss, scale,
        tuple(n for d in demands for n in notes[d.key]), timed_out,
    )  # fmt: skip


def _costs(table: ExplorationTable, options: Sequence[Option], demand: Demand) -> list[float]:
    """Seconds of node time one input of ``demand`` costs at each option (inf: the option may not serve it).

    A latency-bound demand runs in micro-batches no larger than its bound allows, so it pays the
    per-input cost of that batch, not of the profiling shard, over ``LATENCY_BOUND_LOAD``; options
    that cannot answer one frame within ``LATENCY_SHARE`` of the bound are closed to it.
    """
    if demand.max_latency_s is None:
        return [o.seconds_per_input if _may_serve(demand, o) else np.inf for o in options]
    budget = LATENCY_SHARE * demand.max_latency_s
    costs = []
    for o in options:
        if not _may_serve(demand, o):
            costs.append(np.inf)
            continue
        batch = table.largest_batch(o.node, o.variant, budget, demand.max_batch)
        per_input = max(o.seconds_per_input, table.latency_s(o.node, o.variant, batch) / batch) if batch else np.inf
        costs.append(per_input / LATENCY_BOUND_LOAD)
    return costs


def _may_serve(demand: Demand, option: Option) -> bool:
    return demand.variants is None or option.variant in demand.variants


def _serves(demands: Sequence[Demand], variant: str) -> str:
    """Which demands a variant may serve, as a key: options are compared (``dominated``) only within one."""
    return "".join("1" if d.variants is None or variant in d.variants else "0" for d in demands)


def _node_time(
    options: Sequence[Option], shares: dict[str, dict[int, float]], costs: dict[str, list[float]]
) -> dict[str, float]:
    used: dict[str, float] = {}
    for key, mine in shares.items():
        for k, ips in mine.items():
            used[options[k].node] = used.get(options[k].node, 0.0) + ips * costs[key][k]
    return used


def _priority_floors(
    options: Sequence[Option],
    targeted: Sequence[Demand],
    capacity: dict[str, float],
    best_accuracy: float,
    rates: dict[str, float],
    scale: float,
    costs: dict[str, list[float]],
) -> dict[str, float]:
    """Accuracy floors that keep the largest demands at what they would get before the smaller ones.

    In order of rate, each of the ``PRIORITY_STAGES`` largest groups gets the most accurate plan
    it can while every target stays met and the larger ones keep their floors (LPs, milliseconds).
    The final plan must respect them, less ``FLOOR_SLACK``: a loose request takes only what is
    left once the tight ones are as accurate as they can be.
    """
    if len(targeted) < 2:
        return {}
    # Priority is within a task: rates of different tasks do not compare (a detector's scene costs
    # what many classifications do), and across tasks the objective weighs each task's own quality.
    floors: dict[str, float] = {}
    for task in dict.fromkeys(d.variants for d in targeted):
        mine = [d for d in targeted if d.variants == task]
        # Demands of similar size (within PRIORITY_RATIO of the group's largest) are one group: no
        # order among them, their accuracy is maximised together.
        groups: list[list[str]] = []
        for d in sorted(mine, key=lambda d: -rates[d.key]):
            if groups and rates[d.key] * PRIORITY_RATIO >= rates[groups[-1][0]]:
                groups[-1].append(d.key)
            else:
                groups.append([d.key])
        if len(groups) < 2:
            continue
        for group in groups[:PRIORITY_STAGES]:
            program = _Program(options, targeted, capacity, best_accuracy, relaxed=True, floors=floors, costs=costs)
            x = program.solve_targeted(rates, scale, only=set(group))
            if x is None:
                break
            floors.update({key: program.demand_accuracy(x, key) - FLOOR_SLACK for key in group})
    return floors


def _solve_stage(
    options: Sequence[Option],
    demands: Sequence[Demand],
    capacity: dict[str, float],
    best_accuracy: float,
    solve: Callable[[_Program], np.ndarray | None],
    floors: dict[str, float] | None = None,
    costs: dict[str, list[float]] | None = None,
    deadline: float | None = None,
    bound: tuple[_Program, np.ndarray] | None = None,
) -> tuple[_Program, np.ndarray, float, bool] | None:
    """The stage's LP optimum, or its one-variant optimum when that is within ``MAX_LOSS_TO_BOUND`` of it;
    and whether the one-variant search stopped at ``deadline`` (its best plan then, if close enough).
    ``bound``: the stage's LP, already solved."""
    if bound is None:
        relaxed = _Program(options, demands, capacity, best_accuracy, relaxed=True, floors=floors, costs=costs)
        solved = solve(relaxed)
        if solved is None:
            return None
        bound = relaxed, solved
    relaxed, x_bound = bound
    if not any(d.one_variant for d in demands):
        return relaxed, x_bound, 0.0, False
    exact = _Program(
        options, demands, capacity, best_accuracy, relaxed=False, floors=floors, costs=costs, deadline=deadline
    )
    x = solve(exact)
    if x is not None:
        loss = relaxed.mean_accuracy(x_bound) - exact.mean_accuracy(x)
        if loss <= MAX_LOSS_TO_BOUND and exact.total_rate(x) >= relaxed.total_rate(x_bound) * (1 - 1e-3):
            return exact, x, max(loss, 0.0), exact.timed_out
    return relaxed, x_bound, 0.0, exact.timed_out


class _Program:
    """The variables and constraints shared by both stages for one group of demands.

    Variables, demand-major: ``x`` (rate per demand and option), then ``y`` (binary, for
    one-variant demands only, same layout), then one auxiliary (λ or μ). ``relaxed`` drops the
    binaries: every demand may time-share variants on a node (the LP bound).
    """

    def __init__(
        self,
        options: Sequence[Option],
        demands: Sequence[Demand],
        capacity: dict[str, float],
        best_accuracy: float,
        relaxed: bool,
        floors: dict[str, float] | None = None,
        costs: dict[str, list[float]] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.relaxed = relaxed
        self.deadline = deadline  # perf_counter time by which a search must stop (None: TIME_LIMIT_S each)
        self.timed_out = False  # a search stopped at the deadline: its plan is the incumbent
        self.floors = floors or {}  # demand key -> minimum mean accuracy it must keep
        costs = costs or {}
        drop = dominated(options)
        self.options = options
        self.keep = [k for k in range(len(options)) if k not in drop]
        self.demands = demands
        self.capacity = capacity
        self.best_accuracy = best_accuracy
        self.k = len(self.keep)
        self.n_x = len(demands) * self.k
        self.n_vars = 2 * self.n_x + 1
        self.aux = self.n_vars - 1
        # seconds of node time per input, per demand and option (inf where the option may not serve it)
        self.cost = np.array(
            [[costs[d.key][k] if d.key in costs else options[k].seconds_per_input for k in self.keep] for d in demands]
        ).reshape(len(demands), self.k)
        self.acc = np.array([options[k].accuracy for k in self.keep])
        # Per demand, the best accuracy it can have: of the options that may serve it (its task's).
        self.best_for = [
            max((a for a, c in zip(self.acc, self.cost[d], strict=True) if np.isfinite(c)), default=best_accuracy)
            for d in range(len(demands))
        ]
        self.node_of = [options[k].node for k in self.keep]

    def x(self, d: int, i: int) -> int:
        return d * self.k + i

    def y(self, d: int, i: int) -> int:
        return self.n_x + d * self.k + i

    def rate_row(self, d: int, aux: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """``Σ_k x_dk + aux · (λ or μ)``: demand ``d``'s total rate, against the auxiliary (sparse)."""
        columns = np.append(np.arange(self.x(d, 0), self.x(d, 0) + self.k), self.aux)
        return columns, np.append(np.ones(self.k), aux)

    def _common(self, wanted_accuracy: dict[int, float]) -> Constraints:
        """Node capacity, minimum accuracy and one-variant constraints (rows built sparse)."""
        constraints = Constraints(self.n_vars)
        add = constraints.add_sparse
        finite_cost = np.where(np.isfinite(self.cost), self.cost, 0.0)  # demand × option
        on_node = {node: np.array([i for i in range(self.k) if self.node_of[i] == node]) for node in self.capacity}
        demands = np.arange(len(self.demands))
        for node, cap in self.capacity.items():
            mine = on_node[node]
            columns = (demands[:, None] * self.k + mine[None, :]).ravel()
            add(columns, finite_cost[:, mine].ravel(), -np.inf, cap)
        options = np.arange(self.k)
        capacity = np.array([self.capacity[self.node_of[i]] for i in range(self.k)])  # of each option's node
        for d, demand in enumerate(self.demands):
            if d in wanted_accuracy:
                add(self.x(d, 0) + options, self.acc - wanted_accuracy[d], 0.0, np.inf)
            if demand.one_variant and not self.relaxed:
                for node in self.capacity:
                    mine = on_node[node]
                    add(self.y(d, 0) + mine, np.ones(len(mine)), -np.inf, 1.0)
                for i in range(self.k):
                    # x ≤ (capacity / c) y: a rate only on the chosen variant
                    add(np.array([self.x(d, i), self.y(d, i)]), np.array([1.0, -capacity[i] / self.cost[d, i]]),
                        -np.inf, 0.0)  # fmt: skip
        return constraints

    def _run(self, objective: np.ndarray, constraints: Constraints, aux_max: float) -> np.ndarray | None:
        integrality = np.zeros(self.n_vars)
        bounds_upper = np.full(self.n_vars, np.inf)
        for d, demand in enumerate(self.demands):
            for i in range(self.k):
                if not np.isfinite(self.cost[d, i]):  # this option breaks the demand's latency bound
                    bounds_upper[self.x(d, i)] = 0.0
                if demand.one_variant and not self.relaxed:
                    integrality[self.y(d, i)] = 1
                    bounds_upper[self.y(d, i)] = 1.0
                else:
                    bounds_upper[self.y(d, i)] = 0.0
        bounds_upper[self.aux] = aux_max
        limit = TIME_LIMIT_S if self.deadline is None else max(MIN_SEARCH_S, self.deadline - time.perf_counter())
        solved = run_milp(objective, integrality, bounds_upper, constraints, limit)
        self.timed_out = self.timed_out or solved.timed_out
        return solved.x

    def _wanted(self, best_effort: bool) -> dict[int, float]:
        wanted = {}
        for d, demand in enumerate(self.demands):
            if demand.min_accuracy is not None:
                wanted[d] = min(demand.min_accuracy, self.best_for[d])
            elif best_effort:
                wanted[d] = self.best_for[d]  # best effort wants the most accurate answers
            if demand.key in self.floors:
                wanted[d] = max(wanted.get(d, 0.0), self.floors[demand.key])
        return wanted

    def solve_targeted(self, rates: dict[str, float], scale: float, only: set[str] | None = None) -> np.ndarray | None:
        """Every targeted rate × ``scale`` exactly, most accurate overall (or for the demands ``only``)."""
        constraints = self._common(self._wanted(best_effort=False))
        for d, demand in enumerate(self.demands):
            rate = rates[demand.key] * scale
            constraints.add_sparse(*self.rate_row(d), rate, rate)
        objective = np.zeros(self.n_vars)
        weights = self._quality_weights({d.key: rates[d.key] * scale for d in self.demands})
        for d, demand in enumerate(self.demands):
            if only is not None and demand.key not in only:
                continue
            for i in range(self.k):
                cost = self.cost[d, i] if np.isfinite(self.cost[d, i]) else 0.0
                objective[self.x(d, i)] = -_SCALE * (self.acc[i] * weights[d] - _TIE_BREAK * cost)
        return self._run(objective, constraints, 0.0)

    def _quality_weights(self, rates: dict[str, float]) -> list[float]:
        """Per demand, the weight of one input's accuracy in the objective.

        Within a task every input counts the same (expected correct answers per second). Each task's
        sum is then divided by its rate and its best accuracy, so every task weighs its own mean quality
        relative to the best it can reach: a point of a detector's mAP and a point of a classifier's
        top-1 are not the same, and the task with more inputs per second must not win every trade.
        With one task this is the expected correct answers per second, scaled.
        """
        totals: dict[frozenset[str] | None, float] = {}
        best: dict[frozenset[str] | None, float] = {}
        for d, demand in enumerate(self.demands):
            totals[demand.variants] = totals.get(demand.variants, 0.0) + rates[demand.key]
            best[demand.variants] = max(best.get(demand.variants, 0.0), self.best_for[d])
        return [1.0 / max(totals[demand.variants] * best[demand.variants], 1e-12) for demand in self.demands]

    def largest_scale(self, rates: dict[str, float]) -> float:
        """The largest λ ≤ 1 at which every targeted rate × λ fits (0 when none does)."""
        constraints = self._common(self._wanted(best_effort=False))
        for d, demand in enumerate(self.demands):
            constraints.add_sparse(*self.rate_row(d, -rates[demand.key]), 0.0, np.inf)  # Σ x ≥ λ R
        objective = np.zeros(self.n_vars)
        objective[self.aux] = -1.0
        solved = self._run(objective, constraints, 1.0)
        return float(solved[self.aux]) if solved is not None else 0.0

    def solve_best_effort(self) -> np.ndarray | None:
        """Equal rates as high as the capacity left allows (μ), then the most accurate."""
        constraints = self._common(self._wanted(best_effort=True))
        for d in range(len(self.demands)):
            constraints.add_sparse(*self.rate_row(d, -1.0), 0.0, np.inf)  # Σ x ≥ μ
        fastest = self.cost.min(axis=0) if len(self.demands) else np.full(self.k, np.inf)
        ceiling = sum(self.capacity[self.node_of[i]] / fastest[i] for i in range(self.k) if np.isfinite(fastest[i]))
        objective = np.zeros(self.n_vars)
        objective[self.aux] = -_SCALE / ceiling
        for d in range(len(self.demands)):
            for i in range(self.k):
                objective[self.x(d, i)] = -_SCALE * _TIE_BREAK * self.acc[i] / ceiling
        return self._run(objective, constraints, ceiling)

    def total_rate(self, x: np.ndarray) -> float:
        return float(x[: self.n_x].sum())

    def mean_accuracy(self, x: np.ndarray) -> float:
        rates = x[: self.n_x]
        total = rates.sum()
        return float(rates @ np.tile(self.acc, len(self.demands)) / total) if total > 0 else 0.0

    def demand_accuracy(self, x: np.ndarray, key: str) -> float:
        d = next(i for i, demand in enumerate(self.demands) if demand.key == key)
        rates = x[d * self.k : (d + 1) * self.k]
        total = rates.sum()
        return float(rates @ self.acc / total) if total > 0 else 0.0

    def shares_by_demand(self, x: np.ndarray) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for d, demand in enumerate(self.demands):
            out[demand.key] = {self.keep[i]: float(x[self.x(d, i)]) for i in range(self.k) if x[self.x(d, i)] > 1e-9}
        return out

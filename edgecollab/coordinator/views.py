"""What the core shows: a finished request's report, and the work and plan ``status`` shows a viewer.
Pure: no I/O, no state of its own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..planner import ExplorationTable
from ..planner.joint import JointPlan

if TYPE_CHECKING:
    from .requests import OpenRequest
    from .streams import OpenStream


def report(r: OpenRequest, table: ExplorationTable, expected_nodes: Iterable[str]) -> dict[str, Any]:
    """A finished request's report: what was planned, what it achieved, and who ran what."""
    run, request, first = r.run, r.request, r.first_plan
    assert run is not None and first is not None
    wall = run.wall_seconds()
    notes = list(run.plan.notes)
    nodes = {t.node for t in run.tallies.values()}
    missing = sorted(set(expected_nodes) - nodes)
    if missing and not r.small:
        notes.append(f"ran without {', '.join(missing)} (not registered, not profiled in time, or not needed)")
    return {
        "request_id": run.request_id,
        "task": r.task,
        "policy": r.policy,
        "inputs": run.total_inputs,
        "target_ips": request.target_ips,
        "min_accuracy": request.min_accuracy,
        "wall_s": wall,
        "achieved_ips": run.total_inputs / wall,
        "expected_ips": first.expected_ips,
        "expected_accuracy": first.expected_accuracy,
        "served_accuracy": run.served_accuracy(table.accuracy),
        "feasible": first.feasible,
        "margin": first.margin,  # relative headroom the plan kept below its mean rate (0: a baseline, at the mean)
        "confidence": table.confidence if first.cautious else None,  # what its promise aimed at
        # why that margin: its task's efficiency, spread and start-up as learned when it was planned
        "promise_basis": r.promise_basis if first.cautious else None,
        "retries": run.retries,
        "steals": run.steals,
        "replans": run.replans,
        "dispatch_started_s": (r.dispatch_started or run.arrived) - run.arrived,
        "notes": notes,
        "timeline": run.timeline(),
        "assignment": [
            {
                "node": tally.node,
                "variant": tally.variant,
                "planned_inputs": tally.planned_inputs,
                "inputs": tally.inputs,
                "shards": tally.shards,
                "busy_s": tally.busy_s,
                "last_result_s": tally.last_result_s,
            }
            for tally in run.tallies.values()
            if tally.inputs or tally.planned_inputs
        ],
    }


def work_seen_by(
    viewer: str | None,
    requests: Mapping[str, OpenRequest],
    streams: Mapping[str, OpenStream],
    plan: JointPlan | None,
    now: float,
) -> dict[str, Any]:
    """Requests, streams and the joint plan as ``status`` shows them to ``viewer`` (a principal).

    A client sees its own work, and of others' only how much there is; ``None`` (an operator)
    sees everyone's, each with its owner.
    """
    mine = [r for r in requests.values() if viewer is None or r.owner == viewer]
    mine_streams = [s for s in streams.values() if viewer is None or s.owner == viewer]
    shown = [
        {
            "id": r.request_id,
            "policy": r.policy,
            "status": r.status.value,
            "inputs": r.request.inputs,
            "done": r.done_inputs,
            "target_ips": r.request.target_ips,
            "elapsed_s": now - r.arrived,
            **({"client": r.owner} if viewer is None else {}),
        }
        for r in mine
    ]
    return {
        "requests": [r for r in shown if r["status"] != "waiting"],
        "waiting": sorted(r["id"] for r in shown if r["status"] == "waiting"),
        "streams": [{**s.summary(now), **({"client": s.owner} if viewer is None else {})} for s in mine_streams],
        "others": {"requests": len(requests) - len(mine), "streams": len(streams) - len(mine_streams)},
        "plan": plan_seen_by(viewer, requests, plan),
    }


def plan_seen_by(
    viewer: str | None, requests: Mapping[str, OpenRequest], plan: JointPlan | None
) -> dict[str, Any] | None:
    """The joint plan: per demand its rate, accuracy and shares; another client's request is not named."""
    if plan is None:
        return None
    names = {r.key: (r.request_id, r.owner) for r in requests.values()}

    def shown_key(key: str) -> str:
        if key not in names:  # pooled small requests or streams (no one's id), or a request since ended
            return "a request since ended" if key.startswith("@") else key
        request_id, owner = names[key]
        if viewer is None:
            return f"{owner}: {request_id}"
        return request_id if owner == viewer else "another client's request"

    return {
        "solve_s": plan.solve_s,
        "loss_to_bound": plan.loss_to_bound,
        "timed_out": plan.timed_out,
        "node_load": plan.node_load,
        "demands": [
            {
                "key": shown_key(d.key),
                "expected_ips": d.expected_ips,
                "expected_accuracy": d.expected_accuracy,
                "feasible": d.feasible,
                "shares": [{"node": s.node, "variant": s.variant, "ips": s.ips} for s in d.shares],
            }
            for d in plan.demands.values()
        ],
    }

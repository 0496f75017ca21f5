"""Queries: ``status``, ``table`` and ``plan``, answered from the coordinator's state; nothing is dispatched.

A ``plan`` query asks how a request would be served now, next to the work running: the demands
come from the core's planning (the one place that builds them), for the task the query names,
and the joint plan is solved on the solver thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from ..planner import ADAPTS_AT_RUN_TIME, ExplorationTable, PlanningError, PlanRequest, make_plan
from ..planner.joint import plan_jointly
from ..protocol import QUERY_TOPICS, Answer, Error, Query
from ..zoo.manifest import Manifest, TaskSpec
from ..zoo.onboard import inspect_graph
from .dispatch import DispatchCore
from .peers import Peers
from .validation import check_plan_params


def describe_tasks(manifest: Manifest, tasks: Sequence[TaskSpec]) -> list[dict[str, Any]]:
    """What a client needs to call each task: its input, the model's outputs, its variants (by name
    within the task, and by the id requests pin). Read once from the manifest and the first variant's
    graph (``models add`` made every variant of a task take the same input and give the same outputs);
    an open dimension is -1."""
    described = []
    for task in tasks:
        variants = manifest.for_task(task.name)
        graph = inspect_graph(manifest.resolve(variants[0].file))
        described.append(
            {
                "name": task.name,
                "quality": task.quality,
                "input": {"name": graph.inputs[0].name, "dtype": task.input_dtype, "shape": [-1, *task.input_shape]},
                "outputs": [
                    {"name": o.name, "dtype": o.dtype, "shape": [d if isinstance(d, int) else -1 for d in o.shape]}
                    for o in graph.outputs
                ],
                "variants": [{"name": v.name, "id": manifest.id_of(v), "accuracy": v.accuracy} for v in variants],
            }
        )
    return described


class Queries:
    def __init__(
        self,
        core: DispatchCore,
        peers: Peers,
        counters: Callable[[], dict[str, int]],
        solver: Executor,
        tasks: list[dict[str, Any]],
    ) -> None:
        self.core = core
        self.peers = peers
        self.counters = counters  # the core's and the shell's together
        self.solver = solver
        self.tasks = tasks  # describe_tasks: what does not change while the coordinator runs

    def models(self) -> list[dict[str, Any]]:
        """Each task as ``describe_tasks`` has it, with the ready boards each variant is loaded on and the
        task's counters; a task is ready when the cluster serves and a ready board has one of its variants."""
        serving = self.core.manager.accepts_work()
        usable = set(self.core.nodes.usable())
        ready_links = [link for link in self.peers.links.values() if link.ready and link.name in usable]
        answer = []
        for task in self.tasks:
            variants = [
                {
                    **v,
                    "nodes": sorted(link.name for link in ready_links if v["id"] in link.variants),
                    "stats": dict(self.core.variant_stats.get(v["id"], {})),
                }
                for v in task["variants"]
            ]
            ready = serving and any(v["nodes"] for v in variants)
            stats = dict(self.core.task_stats.get(task["name"], {}))
            answer.append({**task, "variants": variants, "ready": ready, "stats": stats})
        return answer

    async def answer(self, query: Query, viewer: str | None) -> Answer | Error:
        """Answer a query; ``viewer`` is who asks (None: an operator, who sees every client's work)."""
        if query.topic == "status":
            return Answer(query.request_id, self.status(viewer))
        if query.topic == "table":
            table = self.core.table
            answer = {
                "rows": table.rows(),
                "efficiency": table.efficiency,
                "confidence": table.confidence,
                "tasks": table.realisations_as_dict(),  # per task: efficiency, spread, start-up, requests
                "missing": self.missing_rows(),
            }
            return Answer(query.request_id, answer)
        if query.topic == "plan":
            return await self.plan(query)
        if query.topic == "models":
            return Answer(query.request_id, {"state": self.core.manager.state, "tasks": self.models()})
        topics = ", ".join(QUERY_TOPICS)
        return Error(
            "invalid_input", f"unknown query topic {query.topic!r}; expected one of {topics}", query.request_id
        )

    async def plan(self, query: Query) -> Answer | Error:
        """What a request would get now, next to the work running."""
        params, core = query.params, self.core
        problem = check_plan_params(params)
        task, unknown = core.task_named(params.get("task"))
        problem = problem or unknown
        if problem is not None or task is None:
            return Error("invalid_input", f"plan query: {problem}", query.request_id)
        request = PlanRequest(params["inputs"], params.get("target_ips"), params.get("min_accuracy"))
        policy = params.get("policy") or core.settings.policy
        loop = asyncio.get_running_loop()
        try:
            if policy in ADAPTS_AT_RUN_TIME:
                key = f"query:{query.request_id}"
                table, demands, nodes = core.planning.query(key, request, policy, task.name, time.monotonic())
                joint = await loop.run_in_executor(self.solver, plan_jointly, table, demands, nodes)
                plan = joint.demands[key].for_inputs(policy, request.inputs)
            else:
                plan = make_plan(policy, core.table.only(task.variants), request, core.nodes.usable())
        except PlanningError as exc:
            return Error("invalid_input", f"cannot plan {dict(params)}: {exc}", query.request_id)
        return Answer(query.request_id, {**plan.as_dict(), "task": task.name})

    def missing_rows(self) -> list[dict[str, str | None]]:
        """Rows the table lacks: per configured node, each variant it was given and has no row for, and why
        (a node not connected yet is one entry with no variant)."""
        table, rows = self.core.table, []
        for node in sorted(self.core.manager.expected):
            link = self.peers.links.get(node)
            if link is None:
                rows.append({"node": node, "variant": None, "task": None, "why": "node not connected"})
                continue
            have, left_out = set(table.variants_of(node)), link.left_out()
            for variant in sorted((set(link.variants) | set(left_out)) - have):
                why = f"left out by the board: {left_out[variant]}" if variant in left_out else "not profiled yet"
                rows.append({"node": node, "variant": variant, "task": table.tasks.get(variant), "why": why})
        return rows

    def status(self, viewer: str | None = None) -> dict[str, Any]:
        """Nodes, the resource manager's state, the joint plan, counters, and the requests and streams
        ``viewer`` may see: its own, or every client's for an operator (None)."""
        core, table = self.core, self.core.table
        now = time.monotonic()
        nodes = []
        for link in sorted(self.peers.links.values(), key=lambda c: c.name):
            state = core.nodes.get(link.name)
            nodes.append(
                {
                    "name": link.name,
                    "alive": True,  # a lost link is gone from the registry, so from this list
                    "status": state.status.value if state else "registering",
                    "profiled": state is not None and state.status.value != "profiling",
                    "suspect": state is not None and state.status.value == "suspect",  # alive, its work far overdue
                    "ready": link.ready,  # loaded and warmed up; before that it takes no work
                    "warmup_s": link.warmup_s,
                    "runtime": link.runtime,
                    "providers": link.providers,
                    "variants": link.variants,
                    "left_out": link.left_out(),  # variant -> why this board does not run it
                    "warnings": link.warnings,  # e.g. a provider missing, and what it fell back to
                    "in_flight": core.in_flight(link.name),
                    "ips": {v: table.ips(link.name, v) for v in table.variants_of(link.name)},
                    # rows whose time the host's compute set, not the emulated board's (emulation only)
                    "host_bound": sorted(v for v in table.variants_of(link.name) if _host_bound(table, link.name, v)),
                    "seconds_since_heard": now - link.last_seen,
                    "measured_link_mbps": link.link_mbps,  # a site's link from here, as the site measured it
                }
            )
        return {
            "state": core.manager.state,
            "expected_nodes": sorted(core.manager.expected),
            "missing_nodes": core.manager.missing(),
            "efficiency": table.efficiency,
            "confidence": table.confidence,
            "tasks": table.realisations_as_dict(),
            "nodes": nodes,
            **core.work_seen_by(viewer, now),
            "counters": self.counters(),
        }


def _host_bound(table: ExplorationTable, node: str, variant: str) -> bool:
    m = table.get(node, variant)
    return m is not None and m.host_bound

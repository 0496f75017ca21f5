"""Many tenants on one coordinator: joint plans, arbitrary client values, small requests, on real processes."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecollab.client import Client, InferenceResult
from edgecollab.coordinator.validation import check_plan_params
from edgecollab.inspection import ask, table_from_rows, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.planner.joint import Demand, plan_jointly
from edgecollab.protocol import PROTOCOL_VERSION, Answer, Error, Result, decode

from .cluster_helpers import raw_peer, write_cluster_config

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    folder = tmp_path_factory.mktemp("tenants")
    config = write_cluster_config(folder)
    with LocalCluster(config, log_dir=folder / "logs") as local:
        wait_until_ready(local.clients_endpoint, timeout_s=120)
        yield local


# --- bad values ------------------------------------------------------------------------------
# Anything msgpack can carry in a field: the codec refuses wrong types, the coordinator wrong values.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=6),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=2),
)
NUMBERS = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 0.0, -0.0, 1e-300, 1e300, 2**53 + 1, 0.5, 150.0, 1.0]),
)


def submit_frames(request_id: str, inputs: int, fields: dict[str, Any]) -> list[bytes]:
    header = {
        "v": PROTOCOL_VERSION,
        "k": "submit",
        "f": {"request_id": request_id, **fields},
        "a": [["inputs", "uint8", [inputs, *SHAPE]]],
    }
    return [msgpack.packb(header), bytes(inputs * math.prod(SHAPE))]


def query_frames(request_id: str, topic: Any, params: Any) -> list[bytes]:
    header = {"v": PROTOCOL_VERSION, "k": "query", "f": {"request_id": request_id, "topic": topic, "params": params}}
    return [msgpack.packb({**header, "a": []})]


async def exchange(endpoint: str, frames: list[bytes]) -> Any:
    """Send one message from a fresh peer and return the decoded reply (each peer sends only one)."""
    async with raw_peer(endpoint) as sock:
        await sock.send_multipart(frames)
        reply = await asyncio.wait_for(sock.recv_multipart(), 30)
    return decode(reply)


def assert_answered_clearly(reply: Any, request_id: str, fields: dict[str, Any]) -> None:
    assert isinstance(reply, Result | Answer | Error)
    if isinstance(reply, Error):
        # A strict request that no plan can serve is refused as such (its contract), naming what it asked.
        strict = fields.get("strict") is True
        assert reply.code in ("invalid_input", "protocol", "busy", *(("infeasible",) if strict else ())), reply
        assert reply.code != "internal"
        if reply.code == "infeasible":
            assert reply.request_id == request_id
            assert "target_ips=" in reply.message and "min_accuracy=" in reply.message, reply.message
        if reply.code == "invalid_input":
            assert reply.request_id == request_id
            assert any(name in reply.message for name in (*fields, "inputs")), reply.message
        if reply.code == "protocol":
            assert any(name in reply.message for name in fields), reply.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    target_ips=NUMBERS,
    min_accuracy=NUMBERS,
    policy=st.one_of(st.none(), st.sampled_from(["adaptive", "equal", "fastest", ""]), ANY_VALUE),
    strict=st.one_of(st.booleans(), ANY_VALUE),
    inputs=st.integers(min_value=0, max_value=40),
)
def test_any_values_in_a_submit_are_answered_and_never_stop_the_coordinator(
    cluster: LocalCluster, target_ips: Any, min_accuracy: Any, policy: Any, strict: Any, inputs: int
) -> None:
    request_id = uuid.uuid4().hex
    fields = {"target_ips": target_ips, "min_accuracy": min_accuracy, "policy": policy, "strict": strict}
    reply = asyncio.run(exchange(cluster.clients_endpoint, submit_frames(request_id, inputs, fields)))
    assert_answered_clearly(reply, request_id, fields)
    if isinstance(reply, Result):
        assert len(reply.predictions) == inputs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    topic=st.one_of(st.sampled_from(["plan", "status", "table", "nope"]), ANY_VALUE),
    params=st.one_of(
        st.fixed_dictionaries(
            {"inputs": NUMBERS},
            optional={"target_ips": NUMBERS, "min_accuracy": NUMBERS, "policy": ANY_VALUE, "extra": ANY_VALUE},
        ),
        ANY_VALUE,
    ),
)
def test_any_values_in_a_query_are_answered_and_never_stop_the_coordinator(
    cluster: LocalCluster, topic: Any, params: Any
) -> None:
    request_id = uuid.uuid4().hex
    reply = asyncio.run(exchange(cluster.clients_endpoint, query_frames(request_id, topic, params)))
    fields = {"topic": topic, "params": params}
    if isinstance(params, dict):
        fields.update(params)
    assert_answered_clearly(reply, request_id, fields)
    if topic == "plan" and isinstance(params, dict):
        valid = check_plan_params(params) is None
        assert isinstance(reply, Answer) == valid, reply


def test_after_every_bad_value_the_coordinator_serves_and_caught_nothing_unexpected(cluster: LocalCluster) -> None:
    """Runs after the property tests: no handler raised, and a plain request is still served."""
    reply = asyncio.run(exchange(cluster.clients_endpoint, query_frames("q", "plan", {"inputs": 100, "target_ips": 0})))
    assert isinstance(reply, Error) and reply.message.startswith("plan query: target_ips must be")
    result = infer_on(cluster, 64)
    assert len(result.predictions) == 64
    status = ask(cluster.clients_endpoint, "status")
    assert status["counters"].get("handler_errors", 0) == 0
    assert all(node["alive"] for node in status["nodes"]) and len(status["nodes"]) == 4


def infer_on(cluster: LocalCluster, n: int, **options: Any) -> InferenceResult:
    async def go() -> InferenceResult:
        async with Client(cluster.clients_endpoint, timeout_s=120) as client:
            return await client.infer(np.zeros((n, *SHAPE), np.uint8), **options)

    return asyncio.run(go())


# --- joint plans -------------------------------------------------------------------------------
NOISY_MACHINE_SHARE = 0.9


def fastest_ips(endpoint: str) -> float:
    """What the cluster can do at most: every board on its fastest variant."""
    rows = ask(endpoint, "table")["rows"]
    best: dict[str, float] = {}
    for row in rows:
        best[row["node"]] = max(best.get(row["node"], 0.0), float(row["ips"]))
    return sum(best.values())


def test_two_requests_together_meet_their_targets_and_the_tight_one_keeps_its_accuracy(
    cluster: LocalCluster,
) -> None:
    top = fastest_ips(cluster.clients_endpoint)
    # Tight, but a target the cluster can promise with confidence (rows at their lower bounds, a margin kept).
    tight_ips, loose_ips = round(0.15 * top), round(0.01 * top)
    tight_n, loose_n = int(tight_ips * 3), int(loose_ips * 3)
    alone = infer_on(cluster, tight_n, target_ips=tight_ips)

    async def both() -> tuple[InferenceResult, InferenceResult]:
        async with Client(cluster.clients_endpoint, timeout_s=120) as client:
            tight = client.infer(np.zeros((tight_n, *SHAPE), np.uint8), target_ips=tight_ips)
            loose = client.infer(np.zeros((loose_n, *SHAPE), np.uint8), target_ips=loose_ips)
            return await asyncio.gather(tight, loose)

    tight, loose = asyncio.run(both())
    for result, target in ((alone, tight_ips), (tight, tight_ips), (loose, loose_ips)):
        # The plan promises the target; the run keeps it up to this machine's noise (two cores shared
        # by the coordinator, four emulated boards and the client). benchmarks/tenants.py measures it.
        assert result.feasible and result.report["expected_ips"] >= target, result.report
        assert result.achieved_ips >= NOISY_MACHINE_SHARE * target, result.report
    # On the table the cluster measured, the tight one's plan next to the loose one is as accurate as
    # alone (within 0.1 point). Between the runs above the table keeps learning from this machine's
    # load, so their own plans are compared in benchmarks/tenants.py, not here.
    table = table_from_rows(ask(cluster.clients_endpoint, "table")["rows"])
    nodes = table.nodes()
    solo = plan_jointly(table, [Demand("tight", tight_ips)], nodes).demands["tight"]
    shared = plan_jointly(table, [Demand("tight", tight_ips), Demand("loose", loose_ips)], nodes)
    assert shared.demands["tight"].expected_accuracy >= solo.expected_accuracy - 1e-3
    assert shared.demands["loose"].feasible and shared.demands["tight"].feasible


def test_one_input_requests_from_many_sources_are_served_from_the_plan(cluster: LocalCluster) -> None:
    """32 sources × 5 one-input requests: all served, no busy, far fewer solves than requests, no board lost."""
    before = ask(cluster.clients_endpoint, "status")["counters"]

    async def source(client: Client) -> list[InferenceResult]:
        return [await client.infer(np.zeros((1, *SHAPE), np.uint8)) for _ in range(5)]

    async def many() -> list[InferenceResult]:
        async with Client(cluster.clients_endpoint, timeout_s=60) as client:
            runs = await asyncio.gather(*(source(client) for _ in range(32)))
        return [r for run in runs for r in run]

    results = asyncio.run(many())
    assert len(results) == 160 and all(len(r.predictions) == 1 for r in results)
    after = ask(cluster.clients_endpoint, "status")["counters"]
    assert after.get("solves", 0) - before.get("solves", 0) <= 16
    assert after.get("busy", 0) == before.get("busy", 0)
    assert after.get("nodes_lost", 0) == before.get("nodes_lost", 0)

"""The v2 protocol mapping and the gateway's admission, without sockets."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from edgecollab.config import GatewayConfig
from edgecollab.errors import ConfigError
from edgecollab.gateway import check_exposure, v2
from edgecollab.gateway.service import PriorityGate

ANSWER = {
    "state": "serving",
    "tasks": [
        {
            "name": "digits",
            "quality": "top1",
            "input": {"name": "images", "dtype": "uint8", "shape": [-1, 1, 4, 4]},
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 3]}],
            "variants": [
                {"name": "small", "id": "small", "accuracy": 0.8, "nodes": ["a"], "stats": {"inputs": 7}},
                {"name": "large", "id": "digits/large", "accuracy": 0.9, "nodes": [], "stats": {}},
            ],
            "ready": True,
            "stats": {"success": 2, "inputs": 9, "executions": 3, "compute_ns": 1000},
        }
    ],
}
MODEL = v2.catalogue(ANSWER)["digits"]


def request(x: np.ndarray, version: str = "", binary: bool = True, **parameters: object) -> v2.V2Request:
    header = {"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "UINT8"}], "parameters": parameters}
    if binary:
        header["inputs"][0]["parameters"] = {"binary_data_size": x.nbytes}
        body = json.dumps(header).encode()
        document, tail = v2.parse_http_body(body + x.tobytes(), len(body))
    else:
        header["inputs"][0]["data"] = x.ravel().tolist()
        document, tail = v2.parse_http_body(json.dumps(header).encode(), None)
    return v2.request_from_json("digits", version, document, tail)


def test_binary_and_json_inputs_decode_to_the_same_array() -> None:
    x = np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4)
    for binary in (True, False):
        call = v2.prepare(MODEL, request(x, binary=binary), 600.0)
        assert np.array_equal(call.inputs, x) and call.inputs.dtype == np.uint8
        assert call.variant is None and call.mode == "all" and [o.name for o in call.outputs] == ["logits"]


def test_a_version_is_a_variant_by_name_or_number_and_pins_its_id() -> None:
    x = np.zeros((1, 1, 4, 4), np.uint8)
    assert v2.prepare(MODEL, request(x, "large"), 600.0).variant == "digits/large"
    assert v2.prepare(MODEL, request(x, "1"), 600.0).variant == "small"
    with pytest.raises(v2.V2Error, match="unknown version 'huge'") as raised:
        v2.find_model({"digits": MODEL}, "digits", "huge")
    assert raised.value.http_status == 404
    assert MODEL.version_ready("small") and not MODEL.version_ready("large")  # no board has it


@pytest.mark.parametrize(
    ("x", "binary", "parameters", "message"),
    [
        (np.zeros((2, 1, 4, 5), np.uint8), True, {}, r"expected shape \[N, 1, 4, 4\] with N >= 1; got \[2, 1, 4, 5\]"),
        (np.zeros((0, 1, 4, 4), np.uint8), True, {}, r"expected shape"),
        (np.full((1, 1, 4, 4), 300, np.int64), False, {}, "values outside UINT8"),
        (np.zeros((1, 1, 4, 4), np.uint8), True, {"target_ips": "fast"}, "target_ips must be a number"),
        (np.zeros((1, 1, 4, 4), np.uint8), True, {"priority": -1}, "priority must be a whole number"),
        (np.zeros((1, 1, 4, 4), np.uint8), True, {"outputs": "boxes"}, "outputs must be one of all, predictions, top5"),
        (np.zeros((1, 1, 4, 4), np.uint8), True, {"strict": "yes"}, "strict must be true or false"),
    ],
)
def test_bad_requests_are_400_and_say_what_was_expected(
    x: np.ndarray, binary: bool, parameters: dict[str, object], message: str
) -> None:
    with pytest.raises(v2.V2Error, match=message) as raised:
        v2.prepare(MODEL, request(x, binary=binary, **parameters), 600.0)
    assert (raised.value.http_status, raised.value.grpc_code) == (400, "INVALID_ARGUMENT")


def test_malformed_bodies_are_400() -> None:
    with pytest.raises(v2.V2Error, match="not valid JSON"):
        v2.parse_http_body(b"{nope", None)
    with pytest.raises(v2.V2Error, match="Inference-Header-Content-Length must be from 1"):
        v2.parse_http_body(b"{}", 99)
    header = json.dumps({"inputs": [{"name": "images", "shape": [1, 1, 4, 4], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 16}}]}).encode()  # fmt: skip
    document, tail = v2.parse_http_body(header + bytes(10), len(header))
    with pytest.raises(v2.V2Error, match="binary_data_size 16 does not fit the 10 bytes left"):
        v2.request_from_json("digits", "", document, tail)


def test_a_latency_bound_becomes_a_rate_and_timeout_is_microseconds() -> None:
    x = np.zeros((50, 1, 4, 4), np.uint8)
    call = v2.prepare(MODEL, request(x, max_latency_ms=100, target_ips=20, timeout=2_500_000), 600.0)
    assert call.target_ips == pytest.approx(500.0)  # 50 inputs within 0.1 s
    assert call.timeout_s == pytest.approx(2.5)
    assert call.priority == v2.DEFAULT_PRIORITY


def test_responses_in_binary_and_json_carry_provenance() -> None:
    x = np.zeros((2, 1, 4, 4), np.uint8)
    call = v2.prepare(MODEL, request(x, binary_data_output=True), 600.0)
    logits = np.array([[0.1, 0.7, 0.2], [0.9, 0.05, 0.05]], np.float32)
    report = {"feasible": True, "achieved_ips": 10.0, "expected_accuracy": 0.8}
    response = v2.respond(call, {"logits": logits}, np.array([1, 0]), ["small", "large"], ["a", "b"], report)
    body, header_length = v2.http_body(response)
    assert header_length is not None
    document = json.loads(body[:header_length])
    assert document["parameters"]["variants"] == "small,large" and document["parameters"]["nodes"] == "a,b"
    assert np.array_equal(np.frombuffer(body[header_length:], np.float32).reshape(2, 3), logits)
    as_json = v2.respond(v2.prepare(MODEL, request(x), 600.0), {"logits": logits}, np.array([1, 0]), [], [], report)
    body, header_length = v2.http_body(as_json)
    assert header_length is None and json.loads(body)["outputs"][0]["data"] == pytest.approx(logits.ravel().tolist())


def test_classification_gives_the_top_scores_as_strings() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.9, 0.05, 0.06]], np.float32)
    classes = v2.classify(scores, 2)
    assert [[c.split(b":")[1] for c in row] for row in classes.tolist()] == [[b"1", b"2"], [b"0", b"2"]]
    assert v2.serialize_bytes(np.array([b"ab"], dtype=object)) == b"\x02\x00\x00\x00ab"


def test_config_and_statistics_documents() -> None:
    config = v2.model_config(MODEL)
    assert config["input"] == [{"name": "images", "data_type": "TYPE_UINT8", "dims": [1, 4, 4]}]
    assert config["max_batch_size"] == (256 * 1024 * 1024) // 16
    (whole,) = v2.model_statistics(MODEL, "", 0)
    assert whole["version"] == "0" and whole["inference_count"] == 9 and whole["execution_count"] == 3
    (small,) = v2.model_statistics(MODEL, "1", 0)
    assert small["version"] == "1" and small["inference_count"] == 7


def test_error_codes_map_to_the_protocols_statuses() -> None:
    assert (v2.error_for_code("busy", "x").http_status, v2.error_for_code("busy", "x").grpc_code) == (
        503,
        "UNAVAILABLE",
    )
    infeasible = v2.error_for_code("infeasible", "x")
    assert (infeasible.http_status, infeasible.grpc_code) == (422, "FAILED_PRECONDITION")
    assert v2.error_for_code("invalid_input", "x").http_status == 400
    assert v2.error_for_code("something_new", "x").grpc_code == "INTERNAL"


def test_the_priority_gate_lets_the_most_urgent_waiter_in_first() -> None:
    async def scenario() -> list[str]:
        gate, order = PriorityGate(1), []
        release = asyncio.Event()

        async def holder() -> None:
            async with gate.slot(5):
                await release.wait()

        async def waiter(name: str, priority: int) -> None:
            async with gate.slot(priority):
                order.append(name)

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(waiter(n, p)) for n, p in (("low", 9), ("urgent", 1), ("default", 5))]
        gone = asyncio.create_task(waiter("gave-up", 1))
        await asyncio.sleep(0)
        gone.cancel()  # a waiter that gives up takes no slot
        release.set()
        await asyncio.gather(first, *waiters)
        assert gate.running == 0 and gate.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["urgent", "default", "low"]


def test_serving_beyond_loopback_needs_protection_or_consent() -> None:
    check_exposure(GatewayConfig(http="127.0.0.1:8000", grpc="[::1]:8001"))
    with pytest.raises(ConfigError, match="not a loopback address"):
        check_exposure(GatewayConfig(http="0.0.0.0:8000"))
    check_exposure(GatewayConfig(http="0.0.0.0:8000", allow_insecure=True))
    check_exposure(GatewayConfig(http="0.0.0.0:8000", tls_cert="c.pem", tls_key="k.pem", token_file="t"))
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        GatewayConfig(tls_cert="c.pem")

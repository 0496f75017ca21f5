"""The v2 gateway, end to end: Triton's own clients (tritonclient HTTP and gRPC) against a real gateway,
coordinator and workers on loopback. Outputs are checked against a local ONNX Runtime run of the variant
each input's provenance names."""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from edgecollab.local import LocalCluster
from edgecollab.zoo import load_manifest, load_test_set, open_session

from .cluster_helpers import edgecollab, processes_mentioning
from .conftest import SHIPPED_MANIFEST
from .test_security import secured_config

# Both boards load both variants; mlp-64 (88.1 %) is the faster, cnn-8 (90.0 %) the more accurate.
VARIANTS = ["mlp-64", "cnn-8"]
# A request holding more than this many bytes of inputs is refused 'busy' (max_input_bytes): 150 images.
MAX_INPUT_BYTES = 150 * 784


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(config: Path, endpoint: str, *extra: str) -> tuple[subprocess.Popen[bytes], int, int]:
    http, grpc = free_port(), free_port()
    command = [sys.executable, "-m", "edgecollab", "gateway", "--config", str(config), "--coordinator", endpoint]
    command += ["--http", f"127.0.0.1:{http}", "--grpc", f"127.0.0.1:{grpc}", *extra]
    return subprocess.Popen(command), http, grpc


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_gateway(
    http: int | triton_http.InferenceServerClient,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    ready: bool = True,
) -> triton_http.InferenceServerClient:
    """A client of the gateway (on port ``http``, or the one given) once it is live (and, with ``ready``, ready)."""
    client = triton_http.InferenceServerClient(f"127.0.0.1:{http}") if isinstance(http, int) else http
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready() if ready else client.is_server_live():
                return client
        except (InferenceServerException, ConnectionError, OSError):
            pass
        assert process is None or process.poll() is None, "the gateway exited"
        time.sleep(0.3)
    raise AssertionError(f"the gateway ({http}) was not {'ready' if ready else 'live'} within {timeout_s:g} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, LocalCluster, int, int]]:
    folder = tmp_path_factory.mktemp("gateway")
    lines = [
        "[coordinator]", "startup_timeout_s = 60", f"max_input_bytes = {MAX_INPUT_BYTES}",
        "[models]", f'manifest = "{SHIPPED_MANIFEST}"',
    ]  # fmt: skip
    for node in ("board-a", "board-b"):
        lines += ["[[nodes]]", f'name = "{node}"', f"variants = {VARIANTS!r}".replace("'", '"')]
    config = folder / "cluster.toml"
    config.write_text("\n".join(lines) + "\n")
    with LocalCluster(config, log_dir=folder / "logs") as local:
        gateway, http, grpc = start_gateway(config, local.clients_endpoint)
        try:
            wait_for_gateway(http, 180, gateway)
            yield config, local, http, grpc
        finally:
            stop(gateway)


@pytest.fixture(scope="module")
def http_client(served: tuple[Path, LocalCluster, int, int]) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(f"127.0.0.1:{served[2]}", network_timeout=120)


@pytest.fixture(scope="module")
def grpc_client(served: tuple[Path, LocalCluster, int, int]) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{served[3]}")
    yield client
    client.close()


def images(count: int, start: int = 0) -> np.ndarray:
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    inputs: np.ndarray = load_test_set(manifest, manifest.tasks["fashion-mnist"]).inputs
    return np.ascontiguousarray(inputs[start : start + count])


def assert_matches_local_runs(inputs: np.ndarray, logits: np.ndarray, variants: list[str]) -> None:
    """Each input's logits are what a local ONNX Runtime run of the variant that answered it gives."""
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    assert len(variants) == len(inputs) and set(variants) <= set(VARIANTS)
    for variant in set(variants):
        v = manifest.variant(variant)
        rows = np.array([i for i, name in enumerate(variants) if name == variant])
        (expected,) = open_session(manifest.resolve(v.file), manifest.task_of(v)).run(None, {"images": inputs[rows]})
        np.testing.assert_allclose(logits[rows], expected, atol=1e-4, rtol=0)


def http_input(x: np.ndarray, binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("images", list(x.shape), "UINT8")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def grpc_input(x: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("images", list(x.shape), "UINT8")
    tensor.set_data_from_numpy(x)
    return tensor


def provenance(parameters: dict[str, Any]) -> tuple[list[str], list[str]]:
    return parameters["variants"].split(","), parameters["nodes"].split(",")


def grpc_parameters(response: Any) -> dict[str, Any]:
    return {key: getattr(p, p.WhichOneof("parameter_choice")) for key, p in response.parameters.items()}


# --- health and metadata ---------------------------------------------------------------------------
def test_health_and_server_metadata(
    http_client: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    metadata = http_client.get_server_metadata()
    assert metadata["name"] == "edgecollab"
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(metadata["extensions"])
    assert set(grpc_client.get_server_metadata(as_json=True)["extensions"]) == set(metadata["extensions"])


def test_model_metadata_config_and_readiness(
    http_client: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    metadata = http_client.get_model_metadata("fashion-mnist")
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert {"cnn-8", "mlp-64"} <= set(metadata["versions"])
    over_grpc = grpc_client.get_model_metadata("fashion-mnist", as_json=True)
    assert over_grpc["inputs"][0]["name"] == "images" and over_grpc["outputs"][0]["datatype"] == "FP32"
    config = http_client.get_model_config("fashion-mnist")
    assert config["input"] == [{"name": "images", "data_type": "TYPE_UINT8", "dims": [1, 28, 28]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["max_batch_size"] >= 256
    grpc_config = grpc_client.get_model_config("fashion-mnist", as_json=True)["config"]
    assert grpc_config["max_batch_size"] == config["max_batch_size"]
    assert http_client.is_model_ready("fashion-mnist") and grpc_client.is_model_ready("fashion-mnist")
    assert http_client.is_model_ready("fashion-mnist", "cnn-8")
    assert not http_client.is_model_ready("fashion-mnist", "resnet-20")  # no board loaded it
    with pytest.raises(InferenceServerException, match="unknown model 'no-such-task'") as raised:
        http_client.get_model_metadata("no-such-task")
    assert raised.value.status() == "404"
    with pytest.raises(InferenceServerException, match="unknown model") as raised:
        grpc_client.get_model_metadata("no-such-task")
    assert raised.value.status() == "StatusCode.NOT_FOUND"


# --- inference -----------------------------------------------------------------------------------
def test_binary_infer_over_http_matches_local_runs(http_client: triton_http.InferenceServerClient) -> None:
    x = images(100)
    result = http_client.infer("fashion-mnist", [http_input(x)])  # binary in and out, tritonclient's default
    logits = result.as_numpy("logits")
    assert logits.shape == (100, 10) and logits.dtype == np.float32
    variants, nodes = provenance(result.get_response()["parameters"])
    assert set(nodes) <= {"board-a", "board-b"}
    assert_matches_local_runs(x, logits, variants)
    compressed = http_client.infer(
        "fashion-mnist", [http_input(x)], request_compression_algorithm="gzip", response_compression_algorithm="gzip"
    )
    assert_matches_local_runs(x, compressed.as_numpy("logits"), provenance(compressed.get_response()["parameters"])[0])


def test_json_infer_over_http_matches_local_runs(http_client: triton_http.InferenceServerClient) -> None:
    x = images(20, start=300)
    wanted = triton_http.InferRequestedOutput("logits", binary_data=False)
    result = http_client.infer("fashion-mnist", [http_input(x, binary=False)], outputs=[wanted])
    response = result.get_response()
    assert "data" in response["outputs"][0]  # the JSON form, no binary part
    assert_matches_local_runs(x, result.as_numpy("logits"), provenance(response["parameters"])[0])


def test_infer_over_grpc_matches_local_runs(grpc_client: triton_grpc.InferenceServerClient) -> None:
    x = images(64, start=500)
    result = grpc_client.infer("fashion-mnist", [grpc_input(x)])
    variants, _ = provenance(grpc_parameters(result.get_response()))
    assert_matches_local_runs(x, result.as_numpy("logits"), variants)


def test_a_pinned_version_runs_that_variant_alone(
    http_client: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    x = images(80, start=1000)
    for version in ("cnn-8", "mlp-64"):
        result = http_client.infer("fashion-mnist", [http_input(x)], model_version=version)
        variants, _ = provenance(result.get_response()["parameters"])
        assert set(variants) == {version}
        assert_matches_local_runs(x, result.as_numpy("logits"), variants)
    number = http_client.get_model_metadata("fashion-mnist")["versions"].index("mlp-64") + 1
    by_number = grpc_client.infer("fashion-mnist", [grpc_input(x)], model_version=str(number))
    assert set(provenance(grpc_parameters(by_number.get_response()))[0]) == {"mlp-64"}


def test_parameters_reach_the_plan(
    http_client: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    x = images(120, start=2000)
    # The mean accuracy of the inputs must reach cnn-8's own (90.01 %): none may run mlp-64 (88.11 %).
    result = http_client.infer("fashion-mnist", [http_input(x)], parameters={"min_accuracy": 0.9001})
    assert set(provenance(result.get_response()["parameters"])[0]) == {"cnn-8"}
    over_grpc = grpc_client.infer("fashion-mnist", [grpc_input(x)], parameters={"min_accuracy": 0.9001})
    assert set(provenance(grpc_parameters(over_grpc.get_response()))[0]) == {"cnn-8"}
    # A target beyond the cluster without strict: served, and the answer says the plan missed it.
    missed = http_client.infer("fashion-mnist", [http_input(x)], parameters={"target_ips": 5e6})
    assert missed.get_response()["parameters"]["feasible"] is False
    # outputs=top5: the coordinator's top five classes and their probabilities come back.
    top = http_client.infer("fashion-mnist", [http_input(x[:8])], parameters={"outputs": "top5"})
    assert top.as_numpy("top5").shape == (8, 5) and top.as_numpy("top5_scores").dtype == np.float32


def test_classification_extension(http_client: triton_http.InferenceServerClient) -> None:
    x = images(6, start=40)
    wanted = triton_http.InferRequestedOutput("logits", class_count=3)
    result = http_client.infer("fashion-mnist", [http_input(x)], outputs=[wanted], model_version="cnn-8")
    classes = result.as_numpy("logits")
    assert classes.shape == (6, 3)
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    v = manifest.variant("cnn-8")
    (logits,) = open_session(manifest.resolve(v.file), manifest.task_of(v)).run(None, {"images": x})
    assert [int(c.split(b":")[1]) for c in classes[:, 0]] == logits.argmax(axis=1).tolist()


# --- errors ----------------------------------------------------------------------------------------
def test_errors_carry_the_protocols_codes_and_say_what_was_wrong(
    http_client: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    wrong_shape = np.zeros((4, 1, 27, 28), np.uint8)
    with pytest.raises(InferenceServerException, match=r"expected shape \[N, 1, 28, 28\]") as raised:
        http_client.infer("fashion-mnist", [http_input(wrong_shape)])
    assert raised.value.status() == "400"
    with pytest.raises(InferenceServerException, match=r"expected shape") as raised:
        grpc_client.infer("fashion-mnist", [grpc_input(wrong_shape)])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    floats = triton_http.InferInput("images", [2, 1, 28, 28], "FP32")
    floats.set_data_from_numpy(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(InferenceServerException, match="expected datatype UINT8; got FP32") as raised:
        http_client.infer("fashion-mnist", [floats])
    assert raised.value.status() == "400"
    x = images(10)
    strict = {"target_ips": 5e6, "strict": True}
    with pytest.raises(InferenceServerException, match="infeasible") as raised:
        http_client.infer("fashion-mnist", [http_input(x)], parameters=strict)
    assert raised.value.status() == "422"
    with pytest.raises(InferenceServerException, match="infeasible") as raised:
        grpc_client.infer("fashion-mnist", [grpc_input(x)], parameters=strict)
    assert raised.value.status() == "StatusCode.FAILED_PRECONDITION"
    too_many = images(200)  # past the coordinator's max_input_bytes: refused 'busy', retry later
    with pytest.raises(InferenceServerException, match="busy") as raised:
        http_client.infer("fashion-mnist", [http_input(too_many)])
    assert raised.value.status() == "503"
    with pytest.raises(InferenceServerException, match="busy") as raised:
        grpc_client.infer("fashion-mnist", [grpc_input(too_many)])
    assert raised.value.status() == "StatusCode.UNAVAILABLE"
    with pytest.raises(InferenceServerException, match="unknown version 'resnet-99'") as raised:
        http_client.infer("fashion-mnist", [http_input(x)], model_version="resnet-99")
    assert raised.value.status() == "404"
    with pytest.raises(InferenceServerException, match="min_accuracy must be a fraction") as raised:
        http_client.infer("fashion-mnist", [http_input(x)], parameters={"min_accuracy": 7})
    assert raised.value.status() == "400"
    # None of that disturbed the others: the next request is served.
    assert http_client.infer("fashion-mnist", [http_input(x)]).as_numpy("logits").shape == (10, 10)


def test_a_request_past_its_timeout_is_answered_deadline_exceeded(
    http_client: triton_http.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="timeout") as raised:
        http_client.infer("fashion-mnist", [http_input(images(100))], timeout=1)  # 1 µs
    assert raised.value.status() == "504"


# --- streaming -------------------------------------------------------------------------------------
def test_model_stream_infer_answers_every_request_and_reports_a_bad_one_without_ending(
    grpc_client: triton_grpc.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        sent = {f"req-{k}": images(8, start=100 * k) for k in range(6)}
        for request_id, x in sent.items():
            grpc_client.async_stream_infer("fashion-mnist", [grpc_input(x)], request_id=request_id)
        grpc_client.async_stream_infer("fashion-mnist", [grpc_input(np.zeros((1, 2, 2), np.uint8))], request_id="bad")
        grpc_client.async_stream_infer(
            "fashion-mnist", [grpc_input(images(3))], request_id="after", model_version="cnn-8"
        )
        got: dict[str, Any] = {}
        errors = []
        for _ in range(len(sent) + 2):
            result, error = answers.get(timeout=60)
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result
    finally:
        grpc_client.stop_stream()
    assert len(errors) == 1 and "expected shape" in str(errors[0])
    assert set(got) == {*sent, "after"}
    for request_id, x in sent.items():
        variants, _ = provenance(grpc_parameters(got[request_id].get_response()))
        assert_matches_local_runs(x, got[request_id].as_numpy("logits"), variants)
    assert set(provenance(grpc_parameters(got["after"].get_response()))[0]) == {"cnn-8"}


# --- statistics ------------------------------------------------------------------------------------
def test_statistics_come_from_the_coordinators_counters(
    http_client: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    before = http_client.get_inference_statistics("fashion-mnist")["model_stats"][0]
    http_client.infer("fashion-mnist", [http_input(images(50))], model_version="cnn-8")
    after = http_client.get_inference_statistics("fashion-mnist")["model_stats"][0]
    assert after["version"] == "0"  # the task as a whole
    assert after["inference_count"] - before["inference_count"] == 50
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 1
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    pinned = grpc_client.get_inference_statistics("fashion-mnist", "cnn-8", as_json=True)["model_stats"][0]
    assert pinned["version"] == "cnn-8" and int(pinned["inference_count"]) >= 50


# --- Triton's load generator ------------------------------------------------------------------------
# `make test` unpacks perf_analyzer beside the environment (benchmarks/perf_analyzer_unpack.py).
PERF_ANALYZER = Path(sys.prefix) / "perf_analyzer"


def test_perf_analyzer_runs_with_a_triton_users_flags(served: tuple[Path, LocalCluster, int, int]) -> None:
    binary = PERF_ANALYZER / "bin" / "perf_analyzer"
    if not binary.exists():
        pytest.skip(f"no {binary}: `make test` unpacks it")
    environment = {**os.environ, "LD_LIBRARY_PATH": str(PERF_ANALYZER / "lib")}
    command = [
        str(binary),
        "-m",
        "fashion-mnist",
        "-u",
        f"127.0.0.1:{served[3]}",
        "-i",
        "grpc",
        "--concurrency-range",
        "8",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    throughput = re.search(r"Throughput: ([0-9.]+) infer/sec", done.stdout)
    served_count = re.search(r"Successful request count: ([0-9]+)", done.stdout)  # from the statistics extension
    assert throughput is not None and float(throughput.group(1)) > 0
    assert served_count is not None and int(served_count.group(1)) > 0


# --- who may call --------------------------------------------------------------------------------
def test_a_token_is_required_when_set_and_health_stays_open(
    served: tuple[Path, LocalCluster, int, int], tmp_path: Path
) -> None:
    config, local, _, _ = served
    (tmp_path / "token").write_text("s3cret\n")
    guarded = tmp_path / "cluster.toml"
    guarded.write_text(config.read_text() + '[gateway]\ntoken_file = "token"\n')
    gateway, http, grpc = start_gateway(guarded, local.clients_endpoint)
    try:
        client = wait_for_gateway(http, 60, gateway, ready=False)
        with pytest.raises(InferenceServerException, match="unauthenticated") as raised:
            client.get_model_metadata("fashion-mnist")
        assert raised.value.status() == "401"
        headers = {"Authorization": "Bearer s3cret"}
        assert client.get_model_metadata("fashion-mnist", headers=headers)["name"] == "fashion-mnist"
        rpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc}")
        with pytest.raises(InferenceServerException, match="Bearer") as raised:
            rpc.get_model_metadata("fashion-mnist")
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
        assert rpc.get_model_metadata("fashion-mnist", headers={"authorization": "Bearer s3cret"}).name
        rpc.close()
    finally:
        stop(gateway)


def test_a_gateway_will_not_serve_beyond_loopback_unprotected(served: tuple[Path, LocalCluster, int, int]) -> None:
    config = served[0]
    done = edgecollab("gateway", "--config", str(config), "--http", f"0.0.0.0:{free_port()}", timeout=60)
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr and "tls_cert" in done.stderr


def test_the_coordinator_starts_its_gateway_from_the_config_and_stops_it(tmp_path: Path) -> None:
    http = free_port()
    config = tmp_path / "cluster.toml"
    config.write_text(
        "\n".join(
            [
                "[coordinator]", "startup_timeout_s = 60", "[models]", f'manifest = "{SHIPPED_MANIFEST}"',
                "[[nodes]]", 'name = "solo"', 'variants = ["mlp-64"]',
                "[gateway]", "start = true", f'http = "127.0.0.1:{http}"', 'grpc = "127.0.0.1:0"',
            ]
        )
        + "\n"
    )  # fmt: skip
    with LocalCluster(config, log_dir=tmp_path / "logs"):
        client = wait_for_gateway(http, 120)
        result = client.infer("fashion-mnist", [http_input(images(5))])
        assert provenance(result.get_response()["parameters"])[1] == ["solo"] * 5
        assert processes_mentioning(f"gateway --config {config}")
    deadline = time.monotonic() + 15
    while processes_mentioning(f"gateway --config {config}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(f"gateway --config {config}")  # gone with its coordinator


def test_a_gateway_over_curve_serves_its_clients_over_tls_with_a_token(tmp_path: Path) -> None:
    """CURVE between the gateway and the coordinator (the gateway holds the config's client key); TLS and a
    bearer token between the gateway and its own clients."""
    config = secured_config(tmp_path)
    done = edgecollab("keys", "generate", str(tmp_path / "keys"), "--config", str(config), "--client", "client")
    assert done.returncode == 0, done.stderr
    config.write_text(config.read_text().replace('operators = ["ops"]\n', ""))
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    (tmp_path / "token").write_text("s3cret\n")
    config.write_text(
        config.read_text() + '[gateway]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\ntoken_file = "token"\n'
    )
    with LocalCluster(config, log_dir=tmp_path / "logs") as local:
        gateway, http, grpc = start_gateway(config, local.clients_endpoint)
        try:
            trusting = {"ca_certs": str(tmp_path / "cert.pem")}  # the gateway's own certificate, self-signed
            secure = triton_http.InferenceServerClient(f"127.0.0.1:{http}", ssl=True, ssl_options=trusting)
            wait_for_gateway(secure, 120, gateway)  # ready: the cluster profiled, as seen through CURVE
            headers = {"Authorization": "Bearer s3cret"}
            x = images(12)
            result = secure.infer("fashion-mnist", [http_input(x)], headers=headers)
            assert_matches_local_runs(x, result.as_numpy("logits"), provenance(result.get_response()["parameters"])[0])
            with pytest.raises(InferenceServerException, match="unauthenticated"):
                secure.infer("fashion-mnist", [http_input(x)])
            rpc = triton_grpc.InferenceServerClient(
                f"127.0.0.1:{grpc}", ssl=True, root_certificates=str(tmp_path / "cert.pem")
            )
            answer = rpc.infer("fashion-mnist", [grpc_input(x)], headers={"authorization": "Bearer s3cret"})
            assert answer.as_numpy("logits").shape == (12, 10)
            rpc.close()
        finally:
            stop(gateway)

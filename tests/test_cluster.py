"""A real coordinator and four emulated boards on loopback serve requests end to end."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecollab.client import Client, InferenceResult
from edgecollab.errors import RequestFailed
from edgecollab.inspection import ask
from edgecollab.local import LocalCluster
from edgecollab.planner import split_by_weight
from edgecollab.zoo import LabelledSet, load_manifest, load_test_set

from .cluster_helpers import (
    PAPER_TESTBED,
    edgecollab,
    infer,
    local_predictions,
    processes_mentioning,
    write_cluster_config,
)
from .conftest import SHIPPED_MANIFEST

NODES = [name for name, _ in PAPER_TESTBED]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cluster_config(tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="module")
def cluster(config_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(config_path, log_dir=config_path.parent / "logs") as local:
        yield local


@pytest.fixture(scope="module")
def test_set() -> LabelledSet:
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    return load_test_set(manifest, manifest.tasks["fashion-mnist"])


def profiled_ips(config_path: Path) -> dict[str, dict[str, float]]:
    cache = json.loads((config_path.parent / ".edgecollab" / "exploration.json").read_text())
    nodes = {node: entry for node, entry in cache.items() if not node.startswith("@")}  # "@tasks": what was learned
    return {node: {v: m["ips"] for v, m in entry["variants"].items()} for node, entry in nodes.items()}


def test_a_request_is_split_over_all_boards_and_returns_every_prediction_in_order(
    cluster: LocalCluster, test_set: LabelledSet
) -> None:
    # Sent as soon as the processes start: the request waits for registration and profiling.
    indices = np.random.default_rng(1).choice(len(test_set), 1000, replace=False)
    result = infer(cluster.clients_endpoint, test_set.inputs[indices], policy="proportional")
    report = result.report
    assert sorted(a["node"] for a in report["assignment"]) == sorted(NODES)
    assert sum(a["inputs"] for a in report["assignment"]) == 1000
    assert {a["variant"] for a in report["assignment"]} == {"cnn-16"}  # the most accurate loaded variant
    # Exactly the predictions the model makes locally, in input order.
    assert np.array_equal(result.predictions, local_predictions("cnn-16", test_set.inputs[indices]))
    accuracy = float((result.predictions == test_set.labels[indices]).mean())
    assert abs(accuracy - load_manifest(SHIPPED_MANIFEST, check_files=False).variant("cnn-16").accuracy) < 0.03
    assert report["achieved_ips"] > 0 and report["retries"] == 0


def test_equal_policy_gives_every_board_the_same_share(cluster: LocalCluster, test_set: LabelledSet) -> None:
    result = infer(cluster.clients_endpoint, test_set.inputs[:1001], policy="equal")
    shares = {a["node"]: a["planned_inputs"] for a in result.report["assignment"] if a["planned_inputs"]}
    assert sorted(shares.values()) == [250, 250, 250, 251]
    assert sum(a["inputs"] for a in result.report["assignment"]) == 1001  # stealing may move some


def test_proportional_policy_follows_the_measured_throughput(cluster: LocalCluster, test_set: LabelledSet) -> None:
    infer(cluster.clients_endpoint, np.zeros((4, 1, 28, 28), np.uint8))  # all profiled
    # The coordinator's table: the profile, refined by what it has observed since.
    rows = ask(cluster.clients_endpoint, "table")["rows"]
    ips = {r["node"]: r["ips"] for r in rows if r["variant"] == "cnn-16"}
    nodes = sorted(ips)
    expected = dict(zip(nodes, split_by_weight(2000, [ips[n] for n in nodes]), strict=True))
    result = infer(cluster.clients_endpoint, test_set.inputs[:2000], policy="proportional")
    planned = {a["node"]: a["planned_inputs"] for a in result.report["assignment"] if a["planned_inputs"]}
    assert planned == expected


def test_an_adaptive_request_reports_its_promise_and_the_table_keeps_what_it_learned(
    cluster: LocalCluster, config_path: Path, test_set: LabelledSet
) -> None:
    infer(cluster.clients_endpoint, np.zeros((4, 1, 28, 28), np.uint8))  # all profiled
    report = infer(cluster.clients_endpoint, test_set.inputs[:2000], target_ips=300.0).report
    assert report["feasible"] is True and report["expected_ips"] >= 300.0 and report["achieved_ips"] >= 300.0
    assert 0.0 < report["margin"] < 0.5 and report["confidence"] == 0.9
    assert {"efficiency", "spread", "startup_s", "requests"} <= set(report["promise_basis"])
    # The table learned from it what the task's requests get, and says what it knows of each row.
    table = ask(cluster.clients_endpoint, "table")
    assert table["tasks"]["fashion-mnist"]["requests"] >= 1 and table["missing"] == []
    assert all(r["task"] == "fashion-mnist" and 0 < r["error"]["spread"] < 1 for r in table["rows"])
    # ... and keeps it beside the profiles, so a restarted coordinator plans from there.
    cache = config_path.parent / ".edgecollab" / "exploration.json"
    deadline = time.monotonic() + 15
    while "fashion-mnist" not in json.loads(cache.read_text()).get("@tasks", {}) and time.monotonic() < deadline:
        time.sleep(0.2)
    learned = json.loads(cache.read_text())["@tasks"]
    assert learned["fashion-mnist"]["requests"] >= 1


def test_emulated_odroid_is_slower_than_the_jetson_on_a_heavy_variant(cluster: LocalCluster, config_path: Path) -> None:
    infer(cluster.clients_endpoint, np.zeros((10, 1, 28, 28), np.uint8))  # make sure profiling is done
    ips = profiled_ips(config_path)
    for odroid in ("odroid-xu4-a", "odroid-xu4-b"):
        assert ips[odroid]["cnn-16"] * 1.5 < ips["jetson-nano"]["cnn-16"]
        assert ips[odroid]["cnn-16"] < ips["rpi4"]["cnn-16"]


def test_bad_requests_get_a_clear_error_and_others_are_still_served(
    cluster: LocalCluster, test_set: LabelledSet
) -> None:
    with pytest.raises(RequestFailed, match=r"invalid_input: inputs: expected uint8 inputs of shape \(N, 1, 28, 28\)"):
        infer(cluster.clients_endpoint, test_set.inputs[:10].astype(np.float32))
    with pytest.raises(
        RequestFailed,
        match=r"expected uint8 inputs of shape \(N, 1, 28, 28\) with N >= 1; got uint8 of shape \(5, 28, 28\)",
    ):
        infer(cluster.clients_endpoint, test_set.inputs[:5, 0])
    with pytest.raises(RequestFailed, match=r"policy must be one of adaptive, .*; got 'fastest'"):
        infer(cluster.clients_endpoint, test_set.inputs[:5], policy="fastest")
    with pytest.raises(RequestFailed, match=r"target_ips must be a positive finite number .*; got -3.0"):
        infer(cluster.clients_endpoint, test_set.inputs[:5], target_ips=-3.0)
    result = infer(cluster.clients_endpoint, test_set.inputs[:64])
    assert len(result.predictions) == 64


def test_submit_prints_json_and_saves_predictions(
    cluster: LocalCluster, config_path: Path, test_set: LabelledSet, tmp_path: Path
) -> None:
    saved = tmp_path / "predictions.npz"
    done = edgecollab(
        "submit", "--config", str(config_path), "--coordinator", cluster.clients_endpoint, "--inputs", "300",
        "--target-ips", "100", "--seed", "3", "--json", "--save-predictions", str(saved),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"policy", "nodes", "requests", "summary", "tasks"}
    assert [n["name"] for n in out["nodes"]] == NODES
    (request,) = out["requests"]
    assert {"id", "inputs", "target_ips", "achieved_ips", "accuracy", "met", "assignment"} <= set(request)
    assert request["inputs"] == 300 and request["target_ips"] == 100
    assert sum(a["inputs"] for a in request["assignment"]) == 300
    assert out["summary"]["requests"] == 1 and out["summary"]["inputs"] == 300
    with np.load(saved) as arrays:
        indices, predictions = arrays["indices"], arrays["predictions"]
    assert len(indices) == len(predictions) == 300 and len(set(indices.tolist())) == 300
    assert float((predictions == test_set.labels[indices]).mean()) == pytest.approx(request["accuracy"])


def test_a_second_worker_with_a_taken_name_is_refused(cluster: LocalCluster, config_path: Path) -> None:
    infer(cluster.clients_endpoint, np.zeros((4, 1, 28, 28), np.uint8))  # rpi4 is registered
    done = subprocess.run(
        [sys.executable, "-m", "edgecollab", "worker", "--config", str(config_path), "--node", "rpi4",
         "--coordinator", cluster.workers_endpoint],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    assert "node name 'rpi4' is already registered by another live worker" in done.stderr
    assert infer(cluster.clients_endpoint, np.zeros((4, 1, 28, 28), np.uint8)).report["inputs"] == 4


def test_run_command_serves_a_workload_and_leaves_no_process_behind(
    cluster: LocalCluster, config_path: Path, tmp_path: Path
) -> None:
    infer(cluster.clients_endpoint, np.zeros((4, 1, 28, 28), np.uint8))  # the module's cluster has profiled
    own_config = write_cluster_config(tmp_path)
    # Reuse the module cluster's profile so this run skips profiling (same nodes, same models).
    (tmp_path / ".edgecollab").mkdir()
    shutil.copy(config_path.parent / ".edgecollab" / "exploration.json", tmp_path / ".edgecollab")
    done = edgecollab("run", "--config", str(own_config), "--requests", "2", "--inputs", "200", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [r["inputs"] for r in out["requests"]] == [200, 200]
    assert all(sum(a["inputs"] for a in r["assignment"]) == 200 for r in out["requests"])
    assert out["summary"]["inputs"] == 400 and 0.5 < out["summary"]["accuracy"] <= 1.0
    assert processes_mentioning(str(own_config)) == []


def test_run_with_a_bad_config_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.toml"
    bad.write_text('[[nodes]]\nname = "x"\nemulate = "pi5"\n')
    done = edgecollab("run", "--config", str(bad))
    assert done.returncode == 2
    assert "unknown board profile 'pi5'" in done.stderr and "Traceback" not in done.stderr


def test_status_lists_every_node_and_the_state(cluster: LocalCluster, config_path: Path) -> None:
    infer(cluster.clients_endpoint, np.zeros((4, 1, 28, 28), np.uint8))
    done = edgecollab("status", "--config", str(config_path), "--coordinator", cluster.clients_endpoint, "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["state"] in ("serving", "replanning") and not status["missing_nodes"]
    assert sorted(n["name"] for n in status["nodes"]) == sorted(NODES)
    assert all(n["alive"] and n["profiled"] and len(n["variants"]) == 3 for n in status["nodes"])


def test_profile_and_plan_from_a_running_coordinator_and_from_the_cache(
    cluster: LocalCluster, config_path: Path
) -> None:
    infer(cluster.clients_endpoint, np.zeros((4, 1, 28, 28), np.uint8))
    done = edgecollab("profile", "--config", str(config_path), "--coordinator", cluster.clients_endpoint, "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 4 * 3
    assert all({"node", "variant", "ips", "latency_ms", "accuracy"} <= set(r) and r["ips"] > 0 for r in rows)
    live = edgecollab(
        "plan", "--config", str(config_path), "--coordinator", cluster.clients_endpoint,
        "--inputs", "1000", "--target-ips", "500", "--json",
    )  # fmt: skip
    cached = edgecollab("plan", "--config", str(config_path), "--inputs", "1000", "--target-ips", "500", "--json")
    for done in (live, cached):
        assert done.returncode == 0, done.stderr
        plan = json.loads(done.stdout)
        assert {"policy", "feasible", "expected_ips", "expected_accuracy", "assignment"} <= set(plan)
        assert plan["policy"] == "adaptive" and plan["feasible"] is True
        assert sum(a["inputs"] for a in plan["assignment"]) == 1000


def test_concurrent_requests_share_the_cluster_and_each_input_is_predicted_once(
    cluster: LocalCluster, test_set: LabelledSet
) -> None:
    # No target: adaptive puts every board on the most accurate variant, so each input's prediction is
    # exactly what cnn-16 predicts locally, whichever board (or thief) ran it.
    batches = [test_set.inputs[i * 1500 : (i + 1) * 1500] for i in range(3)]

    solves_before = ask(cluster.clients_endpoint, "status")["counters"]["solves"]

    async def together() -> list[InferenceResult]:
        async with Client(cluster.clients_endpoint, timeout_s=120) as client:
            # Requests sent in one turn of the loop reach the coordinator as one batch and are planned together
            # from the start; the later two are sent once the first has answers, so their arrival plans anew.
            first = asyncio.create_task(client.infer(batches[0], policy="adaptive"))
            while not first.done():
                running = (await client.query("status"))["requests"]
                if any(r["done"] > 0 for r in running):
                    break
                await asyncio.sleep(0.005)
            rest = await asyncio.gather(*(client.infer(b, policy="adaptive") for b in batches[1:]))
            return [await first, *rest]

    results = asyncio.run(together())
    for batch, result in zip(batches, results, strict=True):
        assert np.array_equal(result.predictions, local_predictions("cnn-16", batch))
        assert sum(a["inputs"] for a in result.report["assignment"]) == len(batch)
    # The first started alone on its own plan; the others' arrivals planned them all jointly (its queued rest
    # re-cut only where its share changed).
    assert ask(cluster.clients_endpoint, "status")["counters"]["solves"] > solves_before


def test_pareto_from_the_cached_table(cluster: LocalCluster, config_path: Path) -> None:
    infer(cluster.clients_endpoint, np.zeros((4, 1, 28, 28), np.uint8))
    done = edgecollab("pareto", "--config", str(config_path), "--inputs", "5000", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out["policies"]) == {"adaptive", "mixed", "uniform", "proportional", "equal"}
    front = out["front"]
    assert front and all(a["expected_ips"] < b["expected_ips"] for a, b in itertools.pairwise(front))
    assert all(a["expected_accuracy"] > b["expected_accuracy"] for a, b in itertools.pairwise(front))


def test_after_the_startup_timeout_a_request_runs_on_the_ready_nodes_and_says_so(tmp_path: Path) -> None:
    config = write_cluster_config(tmp_path)
    config.write_text(config.read_text().replace("startup_timeout_s = 60", "startup_timeout_s = 4"))
    started = time.monotonic()
    with LocalCluster(config, nodes=["rpi4", "jetson-nano"], log_dir=tmp_path / "logs") as local:
        result = infer(local.clients_endpoint, np.zeros((300, 1, 28, 28), np.uint8))
    assert time.monotonic() - started >= 4, "the request should have waited for the missing boards"
    assert {a["node"] for a in result.report["assignment"]} == {"rpi4", "jetson-nano"}
    assert any("ran without odroid-xu4-a, odroid-xu4-b" in note for note in result.report["notes"])
    assert len(result.predictions) == 300


def test_top5_gives_the_five_likeliest_classes_with_their_probabilities(
    cluster: LocalCluster, test_set: LabelledSet
) -> None:
    result = infer(cluster.clients_endpoint, test_set.inputs[:50], outputs="top5")
    top5, scores = result.outputs["top5"], result.outputs["top5_scores"]
    assert top5.shape == scores.shape == (50, 5) and top5.dtype == np.int64
    assert np.array_equal(top5[:, 0], result.predictions)
    assert np.all(np.diff(scores, axis=1) <= 0) and np.all(scores.sum(axis=1) <= 1 + 1e-5)


def test_outputs_a_task_cannot_give_are_refused_by_name(cluster: LocalCluster, test_set: LabelledSet) -> None:
    with pytest.raises(RequestFailed, match="outputs must be one of predictions, top5, all"):
        infer(cluster.clients_endpoint, test_set.inputs[:5], outputs="boxes")

"""Many boards in one process (``edgecollab fleet``), each a worker of its own to a real coordinator."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecollab.inspection import ask, wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.zoo import load_manifest, load_test_set

from .cluster_helpers import infer, local_predictions, processes_mentioning
from .conftest import SHIPPED_MANIFEST

BOARDS = [(f"{profile}-{k}", profile) for profile in ("odroid-xu4", "rpi4", "jetson-nano") for k in (1, 2)]
VANISHING = "rpi4-2"  # its schedule has it vanish once the fleet has served a request
VANISH_AT_S = 30


def write_config(folder: Path) -> Path:
    lines = [
        "[coordinator]",
        "startup_timeout_s = 90",
        "heartbeat_s = 0.5",
        "[models]",
        f'manifest = "{SHIPPED_MANIFEST}"',
    ]
    for name, profile in BOARDS:
        lines += ["[[nodes]]", f'name = "{name}"', f'emulate = "{profile}"', 'variants = ["mlp-64", "cnn-8"]']
        if name == VANISHING:
            lines += ["[[nodes.events]]", f"at_s = {VANISH_AT_S}", 'action = "vanish"']
    path = folder / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, subprocess.Popen[bytes], float]]:
    folder = tmp_path_factory.mktemp("fleet")
    config = write_config(folder)
    with LocalCluster(config, nodes=[], log_dir=folder / "logs") as local:  # the coordinator alone
        command = [sys.executable, "-m", "edgecollab", "fleet", "--config", str(config),
                   "--coordinator", local.workers_endpoint, "--cache", str(folder / "cache")]  # fmt: skip
        started = time.monotonic()
        with (folder / "fleet.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_until_ready(local.clients_endpoint, timeout_s=VANISH_AT_S - 5)
            yield local, process, started
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_every_board_of_the_fleet_is_a_worker_of_its_own(
    fleet: tuple[LocalCluster, subprocess.Popen[bytes], float],
) -> None:
    local, process, _ = fleet
    status = ask(local.clients_endpoint, "status")
    assert sorted(n["name"] for n in status["nodes"]) == sorted(name for name, _ in BOARDS)
    assert all(n["ready"] and n["profiled"] for n in status["nodes"])
    assert all(set(n["ips"]) == {"mlp-64", "cnn-8"} for n in status["nodes"])  # each profiled as a board
    assert process.poll() is None and len(processes_mentioning("edgecollab fleet --config")) == 1
    assert not processes_mentioning(f"worker --config {local.config_path}")  # no worker processes

    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    inputs = load_test_set(manifest, manifest.tasks["fashion-mnist"]).inputs[:4000]
    result = infer(local.clients_endpoint, inputs, target_ips=1e6)  # the fastest plan: every board
    assert set(result.nodes) == {name for name, _ in BOARDS}
    for variant in set(result.variants):  # real models ran: each input is what its variant predicts
        rows = [i for i, v in enumerate(result.variants) if v == variant]
        assert (result.predictions[rows] == local_predictions(variant, inputs[rows])).all()


def test_a_board_that_vanishes_leaves_the_fleet_and_the_others_serving(
    fleet: tuple[LocalCluster, subprocess.Popen[bytes], float],
) -> None:
    local, process, started = fleet
    time.sleep(max(0.0, started + VANISH_AT_S + 1 - time.monotonic()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = {n["name"] for n in ask(local.clients_endpoint, "status")["nodes"]}
        if VANISHING not in names:
            break
        time.sleep(0.5)
    assert names == {name for name, _ in BOARDS} - {VANISHING}
    assert process.poll() is None  # the fleet goes on
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    inputs = load_test_set(manifest, manifest.tasks["fashion-mnist"]).inputs[:1000]
    result = infer(local.clients_endpoint, inputs, target_ips=1e6)
    assert len(result.predictions) == 1000 and VANISHING not in result.nodes and len(set(result.nodes)) >= 3

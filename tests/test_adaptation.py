"""At run time: a board that slows down mid-request is re-planned around; a stale plan would miss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecollab.inspection import wait_until_ready
from edgecollab.local import LocalCluster
from edgecollab.zoo import LabelledSet, load_manifest, load_test_set

from .cluster_helpers import infer
from .conftest import SHIPPED_MANIFEST

NODES = [("jetson-nano", "jetson-nano"), ("rpi4", "rpi4"), ("odroid-xu4-a", "odroid-xu4")]
SLOWDOWN_AT_S = 1.5  # after the worker starts; the request runs ~4 s at full speed
# Slow enough that the rpi4's planned share, left on it, outlasts every other board's whatever this
# host's speed (at a third of its speed it finished before the jetson on a fast host).
SLOWED_SPEED = 0.1


def write_config(folder: Path, *, adapt: bool, slow_rpi4: bool) -> Path:
    lines = [
        "[coordinator]",
        "heartbeat_s = 0.5",
        # Shards of the profiled size: the boards then deliver what the profile says, so the target
        # below is exactly as tight as intended (larger shards would make every plan faster).
        "shard_seconds = 0",
        f"work_stealing = {str(adapt).lower()}",
        f"replan_on_drift = {str(adapt).lower()}",
        "[models]",
        f'manifest = "{SHIPPED_MANIFEST}"',
    ]
    for name, board in NODES:
        lines += ["[[nodes]]", f'name = "{name}"', f'emulate = "{board}"', 'variants = ["mlp-64", "cnn-8", "cnn-16"]']
        if name == "rpi4" and slow_rpi4:
            lines += ["[[nodes.events]]", f"at_s = {SLOWDOWN_AT_S}", f"speed = {SLOWED_SPEED}"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cluster.toml").write_text("\n".join(lines) + "\n")
    return folder / "cluster.toml"


@pytest.fixture(scope="module")
def profiled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Profile the three boards once at full speed; the runs below start from this cache."""
    folder = tmp_path_factory.mktemp("profile")
    with LocalCluster(write_config(folder, adapt=True, slow_rpi4=False), log_dir=folder / "logs") as local:
        infer(local.clients_endpoint, np.zeros((8, 1, 28, 28), np.uint8))
    return folder / ".edgecollab" / "exploration.json"


@pytest.fixture(scope="module")
def test_set() -> LabelledSet:
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    return load_test_set(manifest, manifest.tasks["fashion-mnist"])


def run_slowed_request(folder: Path, cache: Path, test_set: LabelledSet, adapt: bool) -> tuple[dict, float]:
    config = write_config(folder, adapt=adapt, slow_rpi4=True)
    (folder / ".edgecollab").mkdir(exist_ok=True)
    shutil.copy(cache, folder / ".edgecollab" / "exploration.json")
    profile = json.loads(cache.read_text())
    capacity = sum(entry["variants"]["cnn-16"]["ips"] for entry in profile.values())
    # Four seconds of work at full speed, so the slow-down lands mid-request; the target leaves room.
    inputs = int(capacity * 4)
    target = capacity * 0.6
    indices = np.random.default_rng(7).choice(len(test_set), inputs, replace=True)
    with LocalCluster(config, log_dir=folder / "logs") as local:
        # Sent once every board is ready: a board joining after it started would re-plan it (a request that
        # arrives alone starts at once on its own plan), and only the slow-down should here.
        wait_until_ready(local.clients_endpoint, timeout_s=120)
        result = infer(local.clients_endpoint, test_set.inputs[indices], target_ips=target, policy="adaptive")
    assert len(result.predictions) == inputs and (result.predictions >= 0).all()
    return result.report, target


def test_replanning_meets_the_target_a_stale_plan_misses(
    profiled_cache: Path, test_set: LabelledSet, tmp_path: Path
) -> None:
    stale, target = run_slowed_request(tmp_path / "stale", profiled_cache, test_set, adapt=False)
    adaptive, _ = run_slowed_request(tmp_path / "adaptive", profiled_cache, test_set, adapt=True)
    assert stale["replans"] == 0 and stale["steals"] == 0
    assert stale["achieved_ips"] < target, "without adaptation the slowed rpi4 should hold the request back"
    assert adaptive["replans"] >= 1
    assert adaptive["achieved_ips"] >= target
    rpi4_share = sum(a["inputs"] for a in adaptive["assignment"] if a["node"] == "rpi4")
    planned = sum(a["planned_inputs"] for a in adaptive["assignment"] if a["node"] == "rpi4")
    assert rpi4_share < planned, "inputs planned for the rpi4 should have moved to other boards"

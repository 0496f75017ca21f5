"""A worker checks every shard against its session's input spec before running it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecollab.config import load_config
from edgecollab.coordinator.provisioning import local_runner
from edgecollab.worker.runner import ShardRejected, ShardRunner

from .cluster_helpers import local_predictions
from .conftest import SHIPPED_MANIFEST


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ShardRunner:
    folder = tmp_path_factory.mktemp("runner")
    (folder / "cluster.toml").write_text(
        f'[models]\nmanifest = "{SHIPPED_MANIFEST}"\n'
        '[[nodes]]\nname = "pi"\nemulate = "rpi4"\nvariants = ["linear", "cnn-8"]\n'
        'providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n'
    )
    config = load_config(folder / "cluster.toml")
    return local_runner(config, "pi")


def test_missing_provider_falls_back_to_cpu_with_a_warning(runner: ShardRunner) -> None:
    assert runner.providers == ["CPUExecutionProvider"]
    assert set(runner.variants) == {"linear", "cnn-8"}
    assert any(w.startswith("CUDAExecutionProvider is not in this onnxruntime") for w in runner.warnings)
    assert runner.warmup_s > 0


def test_a_valid_shard_gives_what_the_variant_predicts_here(runner: ShardRunner) -> None:
    images = np.random.default_rng(8).integers(0, 256, (8, 1, 28, 28)).astype(np.uint8)
    outcome = runner.run("cnn-8", images)
    assert outcome.predictions.dtype == np.int64
    assert np.array_equal(outcome.predictions, local_predictions("cnn-8", images))


@pytest.mark.parametrize(
    ("variant", "inputs", "code", "message"),
    [
        ("cnn-8", np.zeros((2, 1, 28, 28), np.float32), "invalid_input", r"expects uint8 of shape \(N, 1, 28, 28\); got float32"),
        ("cnn-8", np.zeros((2, 28, 28), np.uint8), "invalid_input", r"got uint8 of shape \(2, 28, 28\)"),
        ("cnn-8", np.zeros((2, 3, 28, 28), np.uint8), "invalid_input", r"got uint8 of shape \(2, 3, 28, 28\)"),
        ("resnet-20", np.zeros((2, 1, 28, 28), np.uint8), "unknown_variant", r"node pi has no variant 'resnet-20'; it has linear, cnn-8"),
    ],
)  # fmt: skip
def test_bad_shards_are_rejected_with_what_was_expected(
    runner: ShardRunner, variant: str, inputs: np.ndarray, code: str, message: str
) -> None:
    with pytest.raises(ShardRejected, match=message) as caught:
        runner.run(variant, inputs)
    assert caught.value.code == code
    # The node stays healthy: the next good shard runs.
    assert runner.run("linear", np.zeros((1, 1, 28, 28), np.uint8)).predictions.shape == (1,)


def test_fingerprint_changes_with_the_models(runner: ShardRunner, tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(
        f'[models]\nmanifest = "{SHIPPED_MANIFEST}"\n[[nodes]]\nname = "pi"\nemulate = "rpi4"\nvariants = ["linear"]\n'
    )
    config = load_config(tmp_path / "cluster.toml")
    assert local_runner(config, "pi").fingerprint() != runner.fingerprint()


def test_a_scheduled_speed_change_stretches_the_emulated_time(runner: ShardRunner) -> None:
    images = np.zeros((32, 1, 28, 28), np.uint8)
    assert runner.board is not None
    normal = runner.board.seconds(32, runner.variants["cnn-8"].spec.macs, False)
    runner.speed = 0.25
    try:
        seconds = runner.run("cnn-8", images).board_seconds
    finally:
        runner.speed = 1.0
    assert seconds >= 4 * normal * 0.999

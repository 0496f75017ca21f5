"""What a board is sent at registration, and what a runner makes of a file its runtime cannot load:
pure functions and a real ONNX Runtime, no sockets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecollab.config import load_config
from edgecollab.coordinator.peers import WorkerLink
from edgecollab.coordinator.provisioning import local_runner, model_files, settings_for
from edgecollab.protocol import Ready
from edgecollab.worker.backends import OrtBackend
from edgecollab.worker.protocol import ProtocolError
from edgecollab.worker.runner import ShardRunner
from edgecollab.worker.settings import NodeSettings
from edgecollab.zoo import load_manifest

from .conftest import SHIPPED_MANIFEST


@pytest.fixture
def config(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "cluster.toml").write_text(
        f'[models]\nmanifest = "{SHIPPED_MANIFEST}"\n'
        '[[nodes]]\nname = "orin"\nthreads = 2\nfp16 = true\nvariants = ["cnn-8", "linear"]\n'
        'providers = ["TensorrtExecutionProvider", "CPUExecutionProvider"]\n'
    )
    return load_config(tmp_path / "cluster.toml")


def test_a_board_gets_its_config_settings_and_the_variants_its_runtime_runs(config) -> None:  # type: ignore[no-untyped-def]
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    settings = settings_for(config, manifest, config.node("orin"), {"max_opset": 21, "backend": "onnxruntime"})
    assert settings.providers == ("TensorrtExecutionProvider", "CPUExecutionProvider")
    assert settings.threads == 2 and settings.fp16 and settings.engine_cache and settings.excluded == {}
    assert [v.id for v in settings.variants] == ["cnn-8", "linear"]
    cnn = settings.variants[0]
    assert (cnn.sha256, cnn.opset, cnn.input_shape, cnn.top1) == (
        manifest.variant("cnn-8").sha256,
        17,
        (1, 28, 28),
        True,
    )
    assert set(model_files(manifest, settings)) == {v.sha256 for v in settings.variants}
    # What travels is what arrives.
    assert NodeSettings.from_wire(settings.to_wire()) == settings


@pytest.mark.parametrize(
    ("runtime", "left_out"),
    [
        ({"max_opset": 16, "backend": "onnxruntime", "backend_version": "1.11.0"}, {"cnn-8", "linear"}),
        ({"max_opset": 17}, set()),
        ({"max_opset": None, "backend": "opencv-dnn"}, set()),  # not declared: tried at warm-up instead
        ({"max_opset": "seventeen"}, set()),  # a value of the wrong type is no claim
    ],
)
def test_variants_above_the_runtimes_opset_are_left_out_with_the_reason(config, runtime, left_out) -> None:  # type: ignore[no-untyped-def]
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    settings = settings_for(config, manifest, config.node("orin"), runtime)
    assert set(settings.excluded) == left_out
    assert all("needs opset 17" in reason for reason in settings.excluded.values())
    assert {v.id for v in settings.variants} == {"cnn-8", "linear"} - left_out


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({"variants": [{"id": "x"}]}, "do not fit this worker"),
        ({"threads": 1, "surprise": True}, "do not fit this worker"),
        ({"chunk_bytes": 0}, "chunk_bytes 0 is outside"),
    ],
)
def test_settings_a_worker_cannot_use_are_refused_by_name(wire: dict[str, object], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        NodeSettings.from_wire(wire)


def test_a_file_the_runtime_cannot_load_is_left_out_and_the_rest_serve(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runner = local_runner(config, "orin")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx graph")
    files = {
        "cnn-8": broken,
        "linear": load_manifest(SHIPPED_MANIFEST).resolve(load_manifest(SHIPPED_MANIFEST).variant("linear").file),
    }
    again = ShardRunner("orin", runner.settings, files, OrtBackend(), tmp_path / "engines")
    assert set(again.variants) == {"linear"}
    assert set(again.failed) == {"cnn-8"} and again.failed["cnn-8"].startswith(
        ("InvalidProtobuf", "Fail", "RuntimeException")
    )
    assert again.run("linear", np.zeros((2, 1, 28, 28), np.uint8)).predictions.shape == (2,)
    # TensorRT is not in this ONNX Runtime: the warning names it, and CPU serves.
    assert any(w.startswith("TensorrtExecutionProvider is not in this onnxruntime") for w in again.warnings)


def test_a_ready_worker_serves_only_variants_it_was_sent(config) -> None:  # type: ignore[no-untyped-def]
    manifest = load_manifest(SHIPPED_MANIFEST, check_files=False)
    settings = settings_for(config, manifest, config.node("orin"), {"max_opset": 21})
    link = WorkerLink("orin", b"id", {"max_opset": 21}, settings, model_files(manifest, settings))
    link.ready_with(
        Ready("orin", ["cnn-8", "resnet-20", "cnn-8"], ["CPUExecutionProvider"], "f", 0.5, [], {"linear": "x"})
    )
    assert link.ready and link.variants == ["cnn-8"]
    assert link.left_out() == {
        "linear": "x",
        "resnet-20": "claimed by the worker, but not one of the variants it was sent",
    }

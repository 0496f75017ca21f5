"""The shipped variant ladder is real: it re-scores to its manifest and spans accuracy and cost."""

from __future__ import annotations

import itertools
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecollab.zoo import (
    ACCURACY_TOLERANCE,
    LabelledSet,
    Manifest,
    load_manifest,
    load_test_set,
    open_session,
    pareto_front,
    predict,
)
from edgecollab.zoo.graph import graph_cost
from edgecollab.zoo.scoring import DetectionSet, mean_average_precision, run_outputs

from .conftest import SHIPPED_MANIFEST

ZOO = load_manifest(SHIPPED_MANIFEST, check_files=False)


@pytest.fixture(scope="module")
def zoo() -> Manifest:
    return load_manifest(SHIPPED_MANIFEST)  # checks every file's sha256


@pytest.fixture(scope="module")
def test_set(zoo: Manifest) -> LabelledSet:
    return load_test_set(zoo, zoo.tasks["fashion-mnist"])


@pytest.fixture(scope="module")
def test_sets(zoo: Manifest) -> dict[str, LabelledSet]:
    """Each task's test set, loaded when first asked for (the 224×224 one is 500 MB)."""
    return {}


def test_ladder_has_enough_variants_and_quantized_twins(zoo: Manifest) -> None:
    variants = zoo.for_task("fashion-mnist")
    assert len(variants) >= 10
    quantized = [v for v in variants if v.quantized]
    assert len(quantized) >= 3
    for q in quantized:
        base = zoo.variant(q.base or "")
        assert not base.quantized and base.macs == q.macs, f"{q.name} should be an int8 twin of {base.name}"


def test_ladder_spans_accuracy_and_cost(zoo: Manifest) -> None:
    variants = zoo.for_task("fashion-mnist")
    accuracies = [v.accuracy for v in variants]
    macs = [v.macs for v in variants]
    assert max(accuracies) - min(accuracies) >= 0.10
    assert max(accuracies) >= 0.92
    assert max(macs) / min(macs) >= 100


def test_several_variants_are_on_the_pareto_front(zoo: Manifest) -> None:
    variants = zoo.for_task("fashion-mnist")
    front = pareto_front(variants)
    assert len(front) >= 4
    assert front[0].macs == min(v.macs for v in variants)
    assert front[-1].accuracy == max(v.accuracy for v in variants)
    # Along the front, paying more MACs always buys accuracy.
    assert all(a.accuracy < b.accuracy for a, b in itertools.pairwise(front))


@pytest.mark.parametrize("name", sorted(ZOO.variants))
def test_variant_rescores_to_its_manifest_accuracy(zoo: Manifest, test_sets: dict[str, LabelledSet], name: str) -> None:
    variant = zoo.variant(name)
    path = zoo.resolve(variant.file)
    task = zoo.task_of(variant)
    if task.name not in test_sets:
        test_sets[task.name] = load_test_set(zoo, task)
    test_set = test_sets[task.name]
    session = open_session(path, task, threads=2)  # also checks the input (N, *input_shape) and output (N, 10)
    cost = graph_cost(path)
    assert (cost.macs, cost.params) == (variant.macs, variant.params)
    if variant.quantized and int8_sums_saturate():
        pytest.skip("this x86 CPU has no VNNI: ONNX Runtime's u8s8 kernels sum in 16 bits here and can saturate")
    if task.quality == "map50":
        assert isinstance(test_set, DetectionSet) and len(test_set) == 1_000
        measured = mean_average_precision(run_outputs(session, test_set.inputs), test_set)
    else:
        assert isinstance(test_set, LabelledSet) and len(test_set) == 10_000
        measured = float((predict(session, test_set.inputs) == test_set.labels).mean())
    assert abs(measured - variant.accuracy) <= ACCURACY_TOLERANCE


def test_detection_ladder_spans_fifteen_points_of_map_with_an_int8_rung(zoo: Manifest) -> None:
    task = zoo.tasks["fashion-detect"]
    variants = zoo.for_task(task.name)
    assert task.quality == "map50" and len(variants) >= 4
    assert any(v.quantized for v in variants)
    assert max(v.accuracy for v in variants) - min(v.accuracy for v in variants) >= 0.15


def test_map50_counts_only_boxes_that_overlap_by_half(zoo: Manifest) -> None:
    """The scorer's ground: the truth itself scores 1, boxes shifted by most of their width score 0."""
    truth = load_test_set(zoo, zoo.tasks["fashion-detect"])
    assert isinstance(truth, DetectionSet)
    count = len(truth)
    per_image = max(np.bincount(truth.image_index, minlength=count))
    boxes = np.zeros((count, per_image, 4), np.float32)
    scores = np.zeros((count, per_image), np.float32)
    labels = np.zeros((count, per_image), np.int64)
    slot = np.zeros(count, np.int64)
    for box, label, image in zip(truth.boxes, truth.labels, truth.image_index, strict=True):
        boxes[image, slot[image]], scores[image, slot[image]], labels[image, slot[image]] = box, 1.0, label
        slot[image] += 1
    exact = {"boxes": boxes, "scores": scores, "labels": labels}
    assert mean_average_precision(exact, truth) == pytest.approx(1.0)
    shifted = boxes.copy()
    shifted[..., [0, 2]] += 0.8 * (boxes[..., 2:3] - boxes[..., 0:1])
    # (IoU 0.11 with its own box; a few land on another item of the same class.)
    assert mean_average_precision({**exact, "boxes": shifted}, truth) < 0.01


def int8_sums_saturate() -> bool:
    """Whether int8 variants score differently here than where the manifest was measured.

    Without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with pmaddubsw,
    whose 16-bit pair sums saturate: the int8 ladder loses 1-2 points on such CPUs.
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_vnni|avx_vnni)\b", flags) is None


def test_runtime_imports_no_torch() -> None:
    code = "import sys, edgecollab.cli, edgecollab.zoo; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_224_variants_resize_to_exactly_their_base(zoo: Manifest, test_set: LabelledSet) -> None:
    """A fashion-mnist-224 variant on an 8× enlarged image predicts what its base predicts on the image."""
    large = zoo.for_task("fashion-mnist-224")
    assert large, "models/upscale.py derives the 224×224 variants"
    task = zoo.tasks["fashion-mnist-224"]
    assert task.bytes_per_input == 64 * zoo.tasks["fashion-mnist"].bytes_per_input
    images = test_set.inputs[:300]
    enlarged = images.repeat(8, axis=-2).repeat(8, axis=-1)
    for variant in large:
        base = zoo.variant(variant.name.removesuffix("-224"))
        assert variant.macs == base.macs
        ours = predict(open_session(zoo.resolve(variant.file), task, threads=2), enlarged)
        theirs = predict(open_session(zoo.resolve(base.file), zoo.task_of(base), threads=2), images)
        assert (ours == theirs).all(), variant.name

"""The shipped variant ladder is real: it re-scores to its manifest and spans accuracy and cost."""

from __future__ import annotations

import itertools
import subprocess
import sys

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

from .conftest import SHIPPED_MANIFEST

ZOO = load_manifest(SHIPPED_MANIFEST, check_files=False)


@pytest.fixture(scope="module")
def zoo() -> Manifest:
    return load_manifest(SHIPPED_MANIFEST)  # checks every file's sha256


@pytest.fixture(scope="module")
def test_set(zoo: Manifest) -> LabelledSet:
    return load_test_set(zoo, zoo.tasks["fashion-mnist"])


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
def test_variant_rescores_to_its_manifest_accuracy(zoo: Manifest, test_set: LabelledSet, name: str) -> None:
    variant = zoo.variant(name)
    path = zoo.resolve(variant.file)
    session = open_session(path, zoo.task_of(variant), threads=2)  # also checks uint8 (N, 1, 28, 28) -> (N, 10)
    predictions = predict(session, test_set.inputs)
    assert len(test_set) == 10_000
    assert abs(float((predictions == test_set.labels).mean()) - variant.accuracy) <= ACCURACY_TOLERANCE
    cost = graph_cost(path)
    assert (cost.macs, cost.params) == (variant.macs, variant.params)


def test_runtime_imports_no_torch() -> None:
    code = "import sys, edgecollab.cli, edgecollab.zoo; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

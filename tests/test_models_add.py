"""`edgecollab models add`: an ONNX file the project never saw becomes a measured manifest entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgecollab.local import LocalCluster
from edgecollab.zoo import load_manifest, write_idx

from .cluster_helpers import edgecollab, infer

SIDE, CLASSES = 8, 4


def export_classifier(path: Path, seed: int, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """A fresh linear classifier of uint8 (N, 1, side, side) images; its weights and bias."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(side * side, CLASSES)).astype(np.float32)
    bias = rng.normal(size=CLASSES).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"fresh-{seed}",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 1, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weights, bias


def labelled_set(count: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (count, 1, SIDE, SIDE)).astype(np.uint8)
    labels = rng.integers(0, CLASSES, count).astype(np.int64)
    return images, labels


def accuracy(weights: np.ndarray, bias: np.ndarray, images: np.ndarray, labels: np.ndarray) -> float:
    logits = images.reshape(len(images), -1).astype(np.float32) @ weights + bias
    return float((logits.argmax(axis=1) == labels).mean())


def add(manifest: Path, *args: str) -> dict:
    done = edgecollab("models", "add", *args, "--manifest", str(manifest), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_fresh_model_is_inspected_scored_written_and_verified(tmp_path: Path) -> None:
    images, labels = labelled_set()
    np.savez(tmp_path / "toy.npz", images=images, labels=labels)
    weights, bias = export_classifier(tmp_path / "fresh.onnx", seed=3)
    manifest = tmp_path / "zoo" / "zoo.toml"
    out = add(
        manifest,
        str(tmp_path / "fresh.onnx"),
        "--task",
        "toy",
        "--labelled",
        str(tmp_path / "toy.npz"),
        "--fit",
        "stretch",
    )
    assert out["new_task"] and out["task"]["input_shape"] == [1, SIDE, SIDE] and out["task"]["classes"] == CLASSES
    assert out["task"]["preprocess"] == {"fit": "stretch", "pad": 0, "layout": "chw"}  # how its frames become inputs
    assert out["graph"]["macs"] == SIDE * SIDE * CLASSES and out["graph"]["outputs"][0]["name"] == "logits"
    assert out["variant"]["accuracy"] == pytest.approx(accuracy(weights, bias, images, labels), abs=1e-4)
    zoo = load_manifest(manifest)  # files and sha256s check out
    assert zoo.variant("fresh").file == "toy/fresh.onnx" and zoo.tasks["toy"].test_set == "data/toy/test.npz"
    assert zoo.tasks["toy"].preprocess is not None and zoo.tasks["toy"].preprocess.fit == "stretch"

    # A second variant joins the task and is scored on the task's own set.
    weights2, bias2 = export_classifier(tmp_path / "fresh-b.onnx", seed=4)
    out = add(manifest, str(tmp_path / "fresh-b.onnx"), "--task", "toy")
    assert not out["new_task"]
    assert out["variant"]["accuracy"] == pytest.approx(accuracy(weights2, bias2, images, labels), abs=1e-4)

    verified = edgecollab("models", "verify", "--manifest", str(manifest), "--json")
    assert verified.returncode == 0, verified.stderr
    assert {row["name"]: row["ok"] for row in json.loads(verified.stdout)} == {"fresh": True, "fresh-b": True}


def test_idx_files_and_a_folder_of_images_are_labelled_sets_too(tmp_path: Path) -> None:
    images, labels = labelled_set(40)
    write_idx(tmp_path / "images.idx.gz", images)
    write_idx(tmp_path / "labels.idx.gz", labels.astype(np.uint8))
    folder = tmp_path / "pictures"
    folder.mkdir()
    lines = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image[0]).save(folder / f"{i}.png")
        lines.append(f"{i}.png {label}")
    (folder / "labels.txt").write_text("\n".join(lines) + "\n")
    weights, bias = export_classifier(tmp_path / "m.onnx", seed=5)
    expected = accuracy(weights, bias, images, labels)
    idx = add(
        tmp_path / "a" / "zoo.toml", str(tmp_path / "m.onnx"), "--task", "idx-toy",
        "--labelled", str(tmp_path / "images.idx.gz"), "--labels", str(tmp_path / "labels.idx.gz"),
    )  # fmt: skip
    pictures = add(
        tmp_path / "b" / "zoo.toml", str(tmp_path / "m.onnx"), "--task", "png-toy", "--labelled", str(folder)
    )
    assert idx["variant"]["accuracy"] == pictures["variant"]["accuracy"] == pytest.approx(expected, abs=1e-4)


def test_a_stated_quality_needs_its_source_and_is_kept_as_stated(tmp_path: Path) -> None:
    export_classifier(tmp_path / "m.onnx", seed=6)
    manifest = tmp_path / "zoo.toml"
    refused = edgecollab("models", "add", str(tmp_path / "m.onnx"), "--task", "t", "--manifest", str(manifest))
    assert refused.returncode != 0 and "no labelled test set" in refused.stderr and not manifest.exists()
    out = add(manifest, str(tmp_path / "m.onnx"), "--task", "t", "--quality-figure", "0.71", "--source", "vendor sheet")
    assert out["variant"]["accuracy"] == 0.71 and out["variant"]["quality_source"] == "vendor sheet"
    verified = edgecollab("models", "verify", "--manifest", str(manifest), "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)[0]["accuracy_measured"] is None


def test_a_model_that_does_not_fit_the_task_is_refused_with_what_it_expects(tmp_path: Path) -> None:
    images, labels = labelled_set()
    np.savez(tmp_path / "toy.npz", images=images, labels=labels)
    export_classifier(tmp_path / "fresh.onnx", seed=3)
    export_classifier(tmp_path / "wide.onnx", seed=3, side=10)
    manifest = tmp_path / "zoo.toml"
    add(manifest, str(tmp_path / "fresh.onnx"), "--task", "toy", "--labelled", str(tmp_path / "toy.npz"))
    before = manifest.read_text()
    done = edgecollab("models", "add", str(tmp_path / "wide.onnx"), "--task", "toy", "--manifest", str(manifest))
    assert done.returncode != 0
    assert "task 'toy' takes one uint8 input of shape (N, 1, 8, 8)" in done.stderr
    again = edgecollab("models", "add", str(tmp_path / "fresh.onnx"), "--task", "toy", "--manifest", str(manifest))
    assert again.returncode != 0 and "already has a variant 'fresh'" in again.stderr
    assert manifest.read_text() == before  # nothing written


def test_two_tasks_may_each_have_a_variant_of_the_same_name_and_a_cluster_serves_both(tmp_path: Path) -> None:
    small, _ = labelled_set()
    np.savez(tmp_path / "small.npz", images=small, labels=np.zeros(len(small), np.int64))
    wide = np.random.default_rng(2).integers(0, 256, (50, 1, 10, 10)).astype(np.uint8)
    np.savez(tmp_path / "wide.npz", images=wide, labels=np.zeros(len(wide), np.int64))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    export_classifier(tmp_path / "a" / "net.onnx", seed=7)
    export_classifier(tmp_path / "b" / "net.onnx", seed=8, side=10)
    manifest = tmp_path / "zoo" / "zoo.toml"
    add(manifest, str(tmp_path / "a" / "net.onnx"), "--task", "small", "--labelled", str(tmp_path / "small.npz"))
    add(manifest, str(tmp_path / "b" / "net.onnx"), "--task", "wide", "--labelled", str(tmp_path / "wide.npz"))
    assert sorted(load_manifest(manifest).variants) == ["small/net", "wide/net"]

    config = tmp_path / "cluster.toml"
    config.write_text(f'[models]\nmanifest = "{manifest}"\ntasks = ["small", "wide"]\n[[nodes]]\nname = "board"\n')
    with LocalCluster(config, log_dir=tmp_path / "logs") as cluster:
        on_small = infer(cluster.clients_endpoint, small[:20])
        on_wide = infer(cluster.clients_endpoint, wide[:20], task="wide")
    assert set(on_small.variants) == {"small/net"} and set(on_wide.variants) == {"wide/net"}
    assert on_small.report["task"] == "small" and on_wide.report["task"] == "wide"

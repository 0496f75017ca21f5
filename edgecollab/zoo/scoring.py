"""Scoring a variant the way its task says: top-1 accuracy, or mAP at IoU 0.5 by pycocotools.

A detection task's test set is an ``.npz`` holding ``images`` (M, *input_shape), and for every
ground-truth box ``boxes`` (K, 4: x0, y0, x1, y1 in pixels), ``labels`` (K,) and ``image_index``
(K,: which image it is in). Its models output ``boxes`` (N, D, 4, same convention), ``scores``
(N, D) and ``labels`` (N, D) for D candidate detections per image.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import ModelError
from .dataset import LabelledSet
from .manifest import TaskSpec

DETECTION_OUTPUTS = ("boxes", "scores", "labels")
# Candidates below this score are left out of the mAP (they cannot change it measurably).
MIN_SCORE = 0.001


@dataclass(frozen=True)
class DetectionSet:
    """Images and their ground-truth boxes."""

    inputs: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: np.ndarray) -> DetectionSet:
        """The images at ``indices`` (repeats allowed), numbered 0.. in that order, with their boxes."""
        order = np.argsort(self.image_index, kind="stable")
        starts = np.searchsorted(self.image_index[order], np.arange(len(self.inputs) + 1))
        picked = [order[starts[i] : starts[i + 1]] for i in indices]
        rows = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        owners = np.repeat(np.arange(len(indices)), [len(p) for p in picked])
        return DetectionSet(self.inputs[indices], self.boxes[rows], self.labels[rows], owners.astype(np.int64))


TestSet = LabelledSet | DetectionSet


def load_npz_set(path: Path, task: TaskSpec) -> TestSet:
    """A test set from an ``.npz``: ``images`` and ``labels``, plus ``boxes`` and ``image_index`` for map50."""
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the test set {path}: {exc}") from exc
    needed = ("images", "labels", "boxes", "image_index") if task.quality == "map50" else ("images", "labels")
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise ModelError(f"{path}: test set lacks {', '.join(missing)}; a {task.quality} set holds {', '.join(needed)}")
    images = arrays["images"]
    if tuple(images.shape[1:]) != task.input_shape or images.dtype != np.dtype(task.input_dtype):
        raise ModelError(
            f"{path}: images are {images.dtype} {tuple(images.shape[1:])}; task {task.name!r} takes"
            f" {task.input_dtype} {task.input_shape}"
        )
    labels = arrays["labels"].astype(np.int64)
    if task.quality == "top1":
        if len(labels) != len(images):
            raise ModelError(f"{path}: {len(images)} images but {len(labels)} labels")
        return LabelledSet(inputs=np.ascontiguousarray(images), labels=labels)
    boxes, owners = arrays["boxes"].astype(np.float64), arrays["image_index"].astype(np.int64)
    if boxes.shape != (len(labels), 4) or owners.shape != labels.shape:
        raise ModelError(f"{path}: boxes must be (K, 4) and image_index (K,) for K = {len(labels)} labels")
    if len(owners) and (owners.min() < 0 or owners.max() >= len(images)):
        raise ModelError(f"{path}: image_index names images outside 0..{len(images) - 1}")
    return DetectionSet(np.ascontiguousarray(images), boxes, labels, owners)


def load_detection_set(path: Path, task: TaskSpec) -> DetectionSet:
    test_set = load_npz_set(path, task)
    assert isinstance(test_set, DetectionSet)
    return test_set


def run_outputs(session: ort.InferenceSession, inputs: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Every output of the model for every input, by output name, run in batches."""
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for i in range(0, len(inputs), batch):
        for part, value in zip(parts, session.run(None, {name: inputs[i : i + batch]}), strict=True):
            part.append(np.asarray(value))
    return {n: np.concatenate(p) for n, p in zip(names, parts, strict=True)} if len(inputs) else {}


def mean_average_precision(outputs: dict[str, np.ndarray], truth: DetectionSet) -> float:
    """mAP at IoU 0.5 over the classes present, from pycocotools' COCOeval (area ranges ignored)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box: np.ndarray) -> list[float]:
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    images = [{"id": i} for i in range(len(truth))]
    annotations = [
        {"id": k + 1, "image_id": int(owner), "category_id": int(label), "bbox": xywh(box), "iscrowd": 0,
         "area": float((box[2] - box[0]) * (box[3] - box[1]))}
        for k, (box, label, owner) in enumerate(zip(truth.boxes, truth.labels, truth.image_index, strict=True))
    ]  # fmt: skip
    categories = [{"id": int(c)} for c in sorted(set(truth.labels.tolist()))]
    detections = [
        {"image_id": i, "category_id": int(label), "bbox": xywh(box), "score": float(score)}
        for i in range(len(truth))
        for box, score, label in zip(outputs["boxes"][i], outputs["scores"][i], outputs["labels"][i], strict=True)
        if score >= MIN_SCORE
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations, "categories": categories}
        ground.createIndex()
        if not detections:
            return 0.0
        found = ground.loadRes(detections)
        evaluation = COCOeval(ground, found, iouType="bbox")
        evaluation.params.maxDets = [1, 10, 100]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return max(float(evaluation.stats[1]), 0.0)  # stats[1]: AP at IoU 0.50, all areas


def score_session(session: ort.InferenceSession, task: TaskSpec, test_set: TestSet) -> float:
    """The task's quality figure for one model on its test set."""
    if task.quality == "stated":
        raise ModelError(f"task {task.name!r} has no scorer: its variants state their quality and its source")
    outputs = run_outputs(session, test_set.inputs)
    if isinstance(test_set, DetectionSet):
        return mean_average_precision(outputs, test_set)
    first = next(iter(outputs.values()))
    return float((first.argmax(axis=1) == test_set.labels).mean())


def score_variant(path: Path, task: TaskSpec, test_set: TestSet, threads: int = 2) -> float:
    from .session import open_session

    return score_session(open_session(path, task, threads=threads), task, test_set)

"""Train, export, quantize and score the detection ladder (``fashion-detect``); add it to models/zoo.toml.

Run with ``make models`` (after ``models/train.py``). Needs the ``train`` extra and the training split
from Debian's ``dataset-fashion-mnist`` package. The runtime never imports this file or torch.

The task: scenes of 64×64 pixels holding one to three Fashion-MNIST items, each placed whole at a
random spot with little overlap, so every ground-truth box is exact: the tight box of the item's own
non-zero pixels where it was put. Training scenes are drawn from the training split as it trains;
the test scenes (``models/data/fashion-detect/test-scenes.npz``) from the test split, with a fixed seed.

Every model is a single-shot grid detector (one cell per 8×8 pixels predicts objectness, class
and box) whose graph ends in the decoding, so its outputs are detections: ``boxes`` (N, 64, 4,
x0 y0 x1 y1 in pixels), ``scores`` (N, 64) and ``labels`` (N, 64). Quality is mAP at IoU 0.5 on the
test scenes, scored by pycocotools (``edgecollab.zoo.scoring``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tomli_w
import torch
import torch.nn.functional as F
from torch import nn
from train import QUANTIZATION, SEED, manifest_entry, quantize

from edgecollab.zoo.dataset import load_labelled_set
from edgecollab.zoo.manifest import GENERATED_HEADER, TaskSpec
from edgecollab.zoo.scoring import load_detection_set, score_variant

MODELS_DIR = Path(__file__).resolve().parent
CANVAS = 64
CELL = 8  # the grid's stride: an 8×8 grid of cells
GRID = CANVAS // CELL
ITEM = 28
PRIOR = 20.0  # box sizes are predicted as a log-ratio to this
CLASSES = 10
TEST_SCENES = 1000
TASK = TaskSpec(
    name="fashion-detect",
    input_dtype="uint8",
    input_shape=(1, CANVAS, CANVAS),
    classes=CLASSES,
    quality="map50",
    test_set="data/fashion-detect/test-scenes.npz",
)
PIXEL_MEAN, PIXEL_STD = 0.10, 0.25


def compose(items: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``count`` scenes of 1–3 items each, with their exact boxes (x0, y0, x1, y1) and classes."""
    images = np.zeros((count, 1, CANVAS, CANVAS), np.uint8)
    boxes, classes, owners = [], [], []
    for scene in range(count):
        placed: list[tuple[float, float, float, float]] = []
        for _ in range(int(rng.integers(1, 4))):
            for _attempt in range(20):
                i = int(rng.integers(len(items)))
                x, y = (int(v) for v in rng.integers(0, CANVAS - ITEM + 1, 2))
                ys, xs = np.nonzero(items[i])
                box = (x + xs.min(), y + ys.min(), x + xs.max() + 1.0, y + ys.max() + 1.0)
                if all(_iou(box, other) < 0.15 for other in placed):
                    break
            else:
                continue
            placed.append(box)
            canvas = images[scene, 0, y : y + ITEM, x : x + ITEM]
            np.maximum(canvas, items[i], out=canvas)
            boxes.append(box)
            classes.append(int(labels[i]))
            owners.append(scene)
    return {
        "images": images,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(classes, np.int64),
        "image_index": np.asarray(owners, np.int64),
    }


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class GridDetector(nn.Module):
    """Three stride-2 convolutions to an 8×8 grid, ``extra`` 3×3 convolutions there, a 1×1 head, decoding."""

    def __init__(self, widths: tuple[int, int, int], extra: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        for _ in range(extra):
            layers += [nn.Conv2d(c_in, c_in, 3, 1, 1, bias=False), nn.BatchNorm2d(c_in), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, 5 + CLASSES, 1)
        ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        self.register_buffer("cell_x", xs.reshape(1, -1).float(), persistent=False)
        self.register_buffer("cell_y", ys.reshape(1, -1).float(), persistent=False)

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 64 cells, 15): objectness, x, y, log w, log h, 10 class logits."""
        x = (images.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
        return self.head(self.body(x)).flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.raw(images)
        probs = out[..., 5:].softmax(-1)
        best, labels = probs.max(-1)
        scores = torch.sigmoid(out[..., 0]) * best
        cx = (self.cell_x + torch.sigmoid(out[..., 1])) * CELL
        cy = (self.cell_y + torch.sigmoid(out[..., 2])) * CELL
        w = torch.exp(out[..., 3].clamp(-4, 4)) * PRIOR
        h = torch.exp(out[..., 4].clamp(-4, 4)) * PRIOR
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        return boxes, scores, labels


def targets(scenes: dict[str, np.ndarray], count: int) -> tuple[torch.Tensor, ...]:
    """Per cell: whether an item's centre lies in it, its class, and its box in the head's terms."""
    positive = np.zeros((count, GRID * GRID), np.float32)
    klass = np.zeros((count, GRID * GRID), np.int64)
    box = np.zeros((count, GRID * GRID, 4), np.float32)
    for (x0, y0, x1, y1), label, scene in zip(scenes["boxes"], scenes["labels"], scenes["image_index"], strict=True):
        cx, cy = (x0 + x1) / 2 / CELL, (y0 + y1) / 2 / CELL
        col, row = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
        cell = row * GRID + col
        positive[scene, cell] = 1.0
        klass[scene, cell] = label
        box[scene, cell] = (cx - col, cy - row, math.log((x1 - x0) / PRIOR), math.log((y1 - y0) / PRIOR))
    return torch.from_numpy(positive), torch.from_numpy(klass), torch.from_numpy(box)


def loss_of(model: GridDetector, scenes: dict[str, np.ndarray]) -> torch.Tensor:
    count = len(scenes["images"])
    positive, klass, box = targets(scenes, count)
    out = model.raw(torch.from_numpy(scenes["images"]))
    objectness = F.binary_cross_entropy_with_logits(out[..., 0], positive, pos_weight=torch.tensor(4.0))
    mask = positive > 0
    picked = out[mask]
    classification = F.cross_entropy(picked[:, 5:], klass[mask])
    centre = F.l1_loss(torch.sigmoid(picked[:, 1:3]), box[mask][:, :2])
    size = F.l1_loss(picked[:, 3:5], box[mask][:, 2:])
    return objectness + classification + 2 * centre + size


@dataclass(frozen=True)
class Recipe:
    name: str
    widths: tuple[int, int, int]
    extra: int
    steps: int
    lr: float
    quantize: bool = False


LADDER = [
    Recipe("det-tiny", (4, 8, 8), extra=0, steps=1200, lr=4e-3),
    Recipe("det-small", (8, 16, 24), extra=1, steps=1800, lr=4e-3, quantize=True),
    Recipe("det-medium", (16, 32, 48), extra=2, steps=2400, lr=3e-3, quantize=True),
]
BATCH = 64


def train(recipe: Recipe, items: np.ndarray, labels: np.ndarray, steps: int) -> tuple[GridDetector, float]:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = GridDetector(recipe.widths, recipe.extra)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=steps)
    model.train()
    recent: list[float] = []
    for step in range(steps):
        loss = loss_of(model, compose(items, labels, BATCH, rng))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = [*recent[-99:], loss.item()]
        if (step + 1) % 200 == 0:
            print(f"  {recipe.name} step {step + 1}/{steps}: loss {np.mean(recent):.4f}", flush=True)
    model.eval()
    return model, float(np.mean(recent))


def export(model: GridDetector, path: Path) -> None:
    example = torch.zeros((2, *TASK.input_shape), dtype=torch.uint8)
    torch.onnx.export(
        model, (example,), str(path), input_names=["images"], output_names=["boxes", "scores", "labels"],
        dynamic_axes={name: {0: "N"} for name in ("images", "boxes", "scores", "labels")},
        opset_version=17, dynamo=False,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--only", nargs="*", help="train only these variants, keeping the manifest's others")
    parser.add_argument("--steps", type=int, help="override every recipe's steps (for a quick smoke run)")
    args = parser.parse_args()

    train_set = load_labelled_set(
        args.data / "train-images-idx3-ubyte.gz", args.data / "train-labels-idx1-ubyte.gz", (ITEM, ITEM)
    )
    test_items = load_labelled_set(
        MODELS_DIR / "data/fashion-mnist/t10k-images-idx3-ubyte.gz",
        MODELS_DIR / "data/fashion-mnist/t10k-labels-idx1-ubyte.gz",
        (ITEM, ITEM),
    )
    test_path = MODELS_DIR / str(TASK.test_set)
    test_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        test_path, **compose(test_items.inputs, test_items.labels, TEST_SCENES, np.random.default_rng(SEED + 1))
    )
    test_scenes = load_detection_set(test_path, TASK)
    calibration = compose(train_set.inputs, train_set.labels, 512, np.random.default_rng(SEED + 2))["images"]
    model_dir = MODELS_DIR / TASK.name
    model_dir.mkdir(exist_ok=True)

    def describe(name: str, path: Path, quantized: bool, base: str | None, training: dict[str, object]) -> dict:
        quality = score_variant(path, TASK, test_scenes)
        return manifest_entry(TASK, name, path, MODELS_DIR, quality, quantized, base, training, "mAP@0.5")

    torch.set_num_threads(max(1, torch.get_num_threads()))
    variants = []
    for recipe in LADDER:
        if args.only and recipe.name not in args.only:
            continue
        steps = args.steps or recipe.steps
        started = time.time()
        model, loss = train(recipe, train_set.inputs, train_set.labels, steps)
        path = model_dir / f"{recipe.name}.onnx"
        export(model, path)
        training = {
            "epochs": 0, "steps": steps, "seed": SEED, "optimizer": "AdamW + one-cycle", "lr": recipe.lr,
            "batch": BATCH, "scenes": steps * BATCH, "final_train_loss": round(loss, 4),
            "seconds": round(time.time() - started, 1), "torch": torch.__version__,
        }  # fmt: skip
        variants.append(describe(recipe.name, path, False, None, training))
        if recipe.quantize:
            q_path = model_dir / f"{recipe.name}-int8.onnx"
            quantize(path, q_path, calibration)
            q_training = {
                "epochs": 0, "steps": steps, "seed": SEED, "quantization": QUANTIZATION,
                "calibration_images": len(calibration), "onnxruntime": ort.__version__,
            }  # fmt: skip
            variants.append(describe(f"{recipe.name}-int8", q_path, True, recipe.name, q_training))

    manifest_path = MODELS_DIR / "zoo.toml"
    manifest = tomllib.loads(manifest_path.read_text())
    kept = {v["name"]: v for v in manifest["variant"] if v["task"] == TASK.name}
    kept.update({v["name"]: v for v in variants})
    manifest["task"] = [t for t in manifest["task"] if t["name"] != TASK.name] + [TASK.model_dump(exclude_none=True)]
    manifest["variant"] = [v for v in manifest["variant"] if v["task"] != TASK.name] + list(kept.values())
    manifest_path.write_text(GENERATED_HEADER + tomli_w.dumps(manifest))
    print(f"wrote {manifest_path} with {len(kept)} {TASK.name} variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())

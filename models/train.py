"""Train, export, quantize and score the Fashion-MNIST variant ladder; write models/zoo.toml.

Run with ``make models``. Needs the ``train`` extra (PyTorch, CPU build) and the
training split from Debian's ``dataset-fashion-mnist`` package. The runtime never
imports this file or torch: it only reads the ONNX files and the manifest written here.

Every figure in the manifest is produced here: accuracy by ONNX Runtime on the full
shipped test split, MACs and parameters counted from the exported graph. Writes only
this task; ``models/upscale.py`` then adds the 224×224 variants derived from these.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tomli_w
import torch
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from edgecollab.zoo.dataset import load_labelled_set
from edgecollab.zoo.graph import graph_cost
from edgecollab.zoo.manifest import GENERATED_HEADER, TaskSpec, sha256_of
from edgecollab.zoo.session import open_session, predict

MODELS_DIR = Path(__file__).resolve().parent
TASK = TaskSpec(
    name="fashion-mnist",
    input_dtype="uint8",
    input_shape=(1, 28, 28),
    classes=10,
    test_images="data/fashion-mnist/t10k-images-idx3-ubyte.gz",
    test_labels="data/fashion-mnist/t10k-labels-idx1-ubyte.gz",
)
# Mean and standard deviation of Fashion-MNIST training pixels (on the 0..1 scale).
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


class RawImages(nn.Module):
    """Wraps a network so the exported graph takes raw uint8 images and does its own scaling."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
        return self.net(x)


def linear(pool: int = 1) -> nn.Module:
    """A linear classifier, optionally on an image average-pooled ``pool``×``pool`` (the cheapest rung)."""
    side = 28 // pool
    head: list[nn.Module] = [nn.AvgPool2d(pool)] if pool > 1 else []
    return nn.Sequential(*head, nn.Flatten(), nn.Linear(side * side, 10))


def mlp(*hidden: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(0.2)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def cnn(c1: int, c2: int, fc: int = 128) -> nn.Module:
    """Two conv blocks with max-pooling, then a small classifier head."""
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(c2 * 7 * 7, fc), nn.ReLU(), nn.Linear(fc, 10),
    )  # fmt: skip


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(depth: int, width: int = 16) -> nn.Module:
    """CIFAR-style ResNet (He et al. 2016): depth = 6n + 2, three stages of n blocks."""
    n = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    c_in = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for block in range(n):
            layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and block == 0 else 1))
            c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


@dataclass(frozen=True)
class Recipe:
    name: str
    build: Callable[[], nn.Module]
    epochs: int
    lr: float
    augment: bool  # random flips and shifts; helps the conv nets, not the linear ones
    quantize: bool = False


LADDER = [
    Recipe("linear-7x7", lambda: linear(pool=4), epochs=5, lr=3e-3, augment=False),
    Recipe("linear", linear, epochs=5, lr=3e-3, augment=False),
    Recipe("mlp-64", lambda: mlp(64), epochs=8, lr=3e-3, augment=False),
    Recipe("mlp-256", lambda: mlp(256, 128), epochs=10, lr=2e-3, augment=False, quantize=True),
    Recipe("cnn-8", lambda: cnn(8, 16), epochs=8, lr=3e-3, augment=True),
    Recipe("cnn-16", lambda: cnn(16, 32), epochs=8, lr=3e-3, augment=True, quantize=True),
    Recipe("cnn-32", lambda: cnn(32, 64), epochs=8, lr=2e-3, augment=True, quantize=True),
    Recipe("resnet-8", lambda: resnet(8), epochs=6, lr=4e-3, augment=True, quantize=True),
    Recipe("resnet-14", lambda: resnet(14), epochs=5, lr=4e-3, augment=True),
    Recipe("resnet-20", lambda: resnet(20), epochs=5, lr=4e-3, augment=True, quantize=True),
]
BATCH = 128
QUANTIZATION = "static QDQ, per-channel int8 weights, uint8 activations"
SEED = 20240122  # ASP-DAC 2024 opened on 22 January


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips per image and one random shift of up to 2 px per batch."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    padded = F.pad(x, (2, 2, 2, 2))
    return padded[:, :, 2 + dy : 30 + dy, 2 + dx : 30 + dx]


def train(recipe: Recipe, images: torch.Tensor, labels: torch.Tensor, epochs: int) -> tuple[nn.Module, float]:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = RawImages(recipe.build())
    steps_per_epoch = math.ceil(len(images) / BATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=epochs * steps_per_epoch)
    loss_value = float("nan")
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(images), BATCH):
            idx = order[i : i + BATCH]
            x, y = images[idx], labels[idx]
            if recipe.augment:
                x = augment(x, gen)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
            count += len(idx)
        loss_value = total / count
        print(f"  {recipe.name} epoch {epoch + 1}/{epochs}: train loss {loss_value:.4f}", flush=True)
    model.eval()
    return model, loss_value


def export(model: nn.Module, path: Path) -> None:
    example = torch.zeros((2, *TASK.input_shape), dtype=torch.uint8)
    torch.onnx.export(
        model, (example,), str(path), input_names=["images"], output_names=["logits"],
        dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False,
    )  # fmt: skip


class _Calibration(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch: int = 64) -> None:
        self._batches = iter([{"images": images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(float_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on training images."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))
        quantize_static(
            str(prepared), str(out_path), _Calibration(calibration), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip


def manifest_entry(
    task: TaskSpec,
    name: str,
    path: Path,
    root: Path,
    quality: float,
    quantized: bool,
    base: str | None,
    training: dict[str, object],
    measure: str = "accuracy",
) -> dict[str, object]:
    """A variant's manifest entry: its measured ``quality`` and the cost counted from its graph."""
    cost = graph_cost(path)
    entry: dict[str, object] = {
        "name": name,
        "task": task.name,
        "file": str(path.relative_to(root)),
        "sha256": sha256_of(path),
        "accuracy": round(quality, 4),
        "macs": cost.macs,
        "params": cost.params,
        "quantized": quantized,
    }
    if base:
        entry["base"] = base
    entry["training"] = training
    print(f"{name}: {measure} {quality:.4f}, {cost.macs:,} MACs, {cost.params:,} params", flush=True)
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="folder for zoo.toml and the ONNX files")
    parser.add_argument(
        "--only", nargs="*", help="train only these variants, keeping the manifest's entries for the others"
    )
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs (for a quick smoke run)")
    parser.add_argument("--limit", type=int, help="train on the first N training images only")
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_set = load_labelled_set(
        args.data / "train-images-idx3-ubyte.gz", args.data / "train-labels-idx1-ubyte.gz", TASK.input_shape
    )
    n = args.limit or len(train_set)
    images = torch.from_numpy(train_set.inputs[:n].copy())
    labels = torch.from_numpy(train_set.labels[:n].copy())
    calibration = train_set.inputs[-512:]

    out_dir = args.out
    model_dir = out_dir / TASK.name
    model_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != MODELS_DIR:
        data_dir = out_dir / "data" / TASK.name
        data_dir.mkdir(parents=True, exist_ok=True)
        for f in (MODELS_DIR / TASK.test_images, MODELS_DIR / TASK.test_labels):
            shutil.copy(f, data_dir / f.name)
    test_set = load_labelled_set(out_dir / TASK.test_images, out_dir / TASK.test_labels, TASK.input_shape)

    def describe(name: str, path: Path, quantized: bool, base: str | None, training: dict[str, object]) -> dict:
        session = open_session(path, TASK, threads=torch.get_num_threads())
        accuracy = float((predict(session, test_set.inputs) == test_set.labels).mean())
        return manifest_entry(TASK, name, path, out_dir, accuracy, quantized, base, training)

    variants = []
    for recipe in LADDER:
        if args.only and recipe.name not in args.only:
            continue
        epochs = args.epochs or recipe.epochs
        started = time.time()
        model, loss = train(recipe, images, labels, epochs)
        path = model_dir / f"{recipe.name}.onnx"
        export(model, path)
        training = {
            "epochs": epochs, "seed": SEED, "optimizer": "AdamW + one-cycle", "lr": recipe.lr, "batch": BATCH,
            "augment": recipe.augment, "train_images": n, "final_train_loss": round(loss, 4),
            "seconds": round(time.time() - started, 1), "torch": torch.__version__,
        }  # fmt: skip
        variants.append(describe(recipe.name, path, False, None, training))
        if recipe.quantize:
            q_path = model_dir / f"{recipe.name}-int8.onnx"
            quantize(path, q_path, calibration)
            q_training = {
                "epochs": epochs, "seed": SEED, "quantization": QUANTIZATION,
                "calibration_images": len(calibration), "onnxruntime": ort.__version__,
            }  # fmt: skip
            variants.append(describe(f"{recipe.name}-int8", q_path, True, recipe.name, q_training))

    if args.only and (out_dir / "zoo.toml").is_file():
        # Keep the other variants as they are, in ladder order.
        previous = tomllib.loads((out_dir / "zoo.toml").read_text())["variant"]
        kept = {v["name"]: v for v in previous if v["task"] == TASK.name}
        kept.update({v["name"]: v for v in variants})
        order = [name for r in LADDER for name in (r.name, f"{r.name}-int8")]
        variants = sorted(kept.values(), key=lambda v: order.index(v["name"]) if v["name"] in order else len(order))
    manifest = {"task": [TASK.model_dump()], "variant": variants}
    # models/upscale.py adds the derived fashion-mnist-224 task after this (make models runs both).
    (out_dir / "zoo.toml").write_text(GENERATED_HEADER + tomli_w.dumps(manifest))
    print(f"wrote {out_dir / 'zoo.toml'} with {len(variants)} variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())

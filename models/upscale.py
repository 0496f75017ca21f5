"""Derive the Fashion-MNIST-224 variants: the same networks behind a Resize, for large inputs.

Run with ``make models`` (after train.py) or on its own: ``python models/upscale.py``.
Each variant named here gets a twin for the task ``fashion-mnist-224`` whose graph takes
the test images enlarged 8× to 224×224 (pixels repeated) and resizes them back to 28×28
inside the graph (nearest neighbour, which picks one pixel of each 8×8 block, so the
original image comes back exactly). An input is 64× the bytes; the computation is the
same. Accuracy is measured again by ONNX Runtime on the enlarged test set, MACs counted
from the new graph. The network benchmark (benchmarks/network.py) uses these to show
what links cost and what link-aware planning gains. Rewrites the 224 task's entries in
models/zoo.toml and keeps every other entry.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import tomli_w
from onnx import helper, numpy_helper

from edgecollab.zoo.graph import graph_cost
from edgecollab.zoo.manifest import GENERATED_HEADER, TaskSpec, load_manifest, sha256_of
from edgecollab.zoo.session import load_test_set, open_session, predict

MODELS_DIR = Path(__file__).resolve().parent
FACTOR = 8
BASE_TASK = "fashion-mnist"
TASK_NAME = "fashion-mnist-224"
# A ladder from cheap to accurate; every one is link-bound on a 100 Mbit/s link with 224×224 inputs
# on the faster boards, and compute-bound on the slower ones for the heavier variants.
VARIANTS = ["linear", "mlp-256", "cnn-16", "cnn-32-int8", "resnet-8-int8", "resnet-20"]


def with_resize_front(base: onnx.ModelProto, factor: int) -> onnx.ModelProto:
    """``base`` taking inputs ``factor`` times larger in height and width, resized back first."""
    model = onnx.ModelProto()
    model.CopyFrom(base)
    graph = model.graph
    original = graph.input[0]
    resized = f"{original.name}_resized"
    for node in graph.node:
        node.input[:] = [resized if name == original.name else name for name in node.input]
    dims = original.type.tensor_type.shape.dim
    batch = dims[0].dim_param or dims[0].dim_value
    shape = [batch, *(d.dim_value for d in dims[1:-2]), dims[-2].dim_value * factor, dims[-1].dim_value * factor]
    large = helper.make_tensor_value_info(original.name, original.type.tensor_type.elem_type, shape)
    scales = numpy_helper.from_array(
        np.array([1.0] * (len(shape) - 2) + [1.0 / factor] * 2, dtype=np.float32), f"{resized}_scales"
    )
    # asymmetric + floor: output pixel i reads input pixel i × factor, the first of its block.
    resize = helper.make_node(
        "Resize", [original.name, "", scales.name], [resized], name="resize_to_trained_size",
        mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
    )  # fmt: skip
    graph.initializer.append(scales)
    graph.node.insert(0, resize)
    graph.input.remove(original)
    graph.input.insert(0, large)
    graph.name = f"{graph.name}-{factor}x"
    onnx.checker.check_model(model)
    return model


def enlarged(base: TaskSpec, factor: int) -> TaskSpec:
    """``base`` with inputs ``factor`` times larger in height and width, on the same (enlarged) test set."""
    *channels, height, width = base.input_shape
    return base.model_copy(
        update={"name": TASK_NAME, "input_shape": (*channels, height * factor, width * factor), "test_upscale": factor}
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="folder holding zoo.toml")
    args = parser.parse_args()
    manifest_path = args.models / "zoo.toml"
    manifest = load_manifest(manifest_path)
    task = enlarged(manifest.tasks[BASE_TASK], FACTOR)
    out_dir = args.models / task.name
    out_dir.mkdir(parents=True, exist_ok=True)
    test_set = load_test_set(manifest, task)

    entries = []
    for name in VARIANTS:
        base = manifest.variant(name)
        path = out_dir / f"{name}.onnx"
        onnx.save(with_resize_front(onnx.load(manifest.resolve(base.file)), FACTOR), path)
        session = open_session(path, task, threads=2)
        predictions = np.concatenate(
            [predict(session, test_set.inputs[i : i + 1000]) for i in range(0, len(test_set), 1000)]
        )
        accuracy = float((predictions == test_set.labels).mean())
        cost = graph_cost(path)
        entry: dict[str, object] = {
            "name": f"{name}-224", "task": task.name, "file": str(path.relative_to(args.models)),
            "sha256": sha256_of(path), "accuracy": round(accuracy, 4), "macs": cost.macs, "params": cost.params,
            "quantized": base.quantized,
        }  # fmt: skip
        if base.training is not None:
            entry["training"] = {**base.training.model_dump(), "derived": f"{name} behind an {FACTOR}x Resize"}
        entries.append(entry)
        print(f"{name}-224: accuracy {accuracy:.4f} ({name}: {base.accuracy:.4f}), {cost.macs:,} MACs", flush=True)

    data = tomllib.loads(manifest_path.read_text())
    tasks = [t for t in data["task"] if t["name"] != task.name] + [task.model_dump()]
    variants = [v for v in data["variant"] if v["task"] != task.name] + entries
    manifest_path.write_text(GENERATED_HEADER + tomli_w.dumps({"task": tasks, "variant": variants}))
    print(f"wrote {manifest_path}: {len(entries)} variants of {task.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``edgecollab models add``: a user's ONNX file into the manifest, with every figure measured or sourced.

The graph is inspected (inputs, outputs, MACs, parameters, sha256). The file joins a task of the
manifest — an existing one, whose inputs and outputs it must match, or a new one made from its graph.
Its quality is measured on the task's labelled test set (for a new task: the set given, copied next to
the manifest as an ``.npz``), or stated with its source when there is none. No TOML is written by hand.
"""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import ManifestError, ModelError
from .dataset import LabelledSet, load_labelled_set
from .graph import graph_cost
from .manifest import Preprocess, TaskSpec, Variant, load_manifest, sha256_of
from .scoring import DETECTION_OUTPUTS, TestSet, load_npz_set, score_session
from .session import ORT_DTYPES, load_test_set, open_session

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp")
LABEL_FILES = ("labels.txt", "labels.csv")
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int | str | None, ...]  # a str or None: a dynamic dimension


@dataclass(frozen=True)
class GraphSummary:
    """What ``models add`` reads off an ONNX file."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    macs: int
    params: int
    sha256: str
    quantized: bool  # holds quantized operators (QDQ pairs or integer kernels)

    def as_dict(self) -> dict[str, Any]:
        def rows(tensors: tuple[Tensor, ...]) -> list[dict[str, Any]]:
            return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in tensors]

        return {
            "inputs": rows(self.inputs),
            "outputs": rows(self.outputs),
            "macs": self.macs,
            "params": self.params,
            "sha256": self.sha256,
            "quantized": self.quantized,
        }


def inspect_graph(path: Path) -> GraphSummary:
    """Inputs, outputs (ONNX Runtime's view), MACs and parameters (counted from the graph), sha256."""
    if not path.is_file():
        raise ModelError(f"no such model file: {path}")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        cost = graph_cost(path)
        quantized = any(node.op_type in QUANTIZED_OPS for node in onnx.load(str(path)).graph.node)
    except Exception as exc:  # ORT and onnx raise many types for unreadable files
        raise ModelError(f"cannot read {path} as an ONNX model: {exc}") from exc

    def tensors(values: list[Any]) -> tuple[Tensor, ...]:
        return tuple(Tensor(v.name, ORT_DTYPES.get(v.type, v.type), tuple(v.shape)) for v in values)

    return GraphSummary(
        tensors(session.get_inputs()),
        tensors(session.get_outputs()),
        cost.macs,
        cost.params,
        sha256_of(path),
        quantized,
    )


def task_from_graph(name: str, graph: GraphSummary, quality: str | None, test_set: str | None) -> TaskSpec:
    """A new task whose inputs are the model's; scored top1 (one (N, C) output), map50 (outputs boxes,
    scores, labels) or, when neither fits or is wanted, by a stated figure."""
    if len(graph.inputs) != 1:
        raise ModelError(f"the model has {len(graph.inputs)} inputs; edgecollab serves models with one input")
    model_input = graph.inputs[0]
    dims = model_input.shape[1:]
    if not model_input.shape or isinstance(model_input.shape[0], int) or not all(isinstance(d, int) for d in dims):
        raise ModelError(
            f"input {model_input.name!r} has shape {model_input.shape}: expected a dynamic batch dimension"
            " and fixed dimensions after it"
        )
    names = sorted(o.name for o in graph.outputs)
    first = graph.outputs[0]
    if quality is None:
        if names == sorted(DETECTION_OUTPUTS):
            quality = "map50"
        elif len(first.shape) == 2 and isinstance(first.shape[1], int) and first.shape[1] > 1:
            quality = "top1"
        else:
            quality = "stated"
    classes = None
    if quality == "top1":
        if len(first.shape) != 2 or not isinstance(first.shape[1], int) or first.shape[1] < 2:
            raise ModelError(f"a top1 task needs a first output of shape (N, classes); {first.name} is {first.shape}")
        classes = first.shape[1]
    return TaskSpec(
        name=name,
        input_dtype=model_input.dtype,
        input_shape=tuple(d for d in dims if isinstance(d, int)),  # all ints, checked above
        classes=classes,
        quality=quality,
        test_set=test_set,
    )


def check_fits_task(graph: GraphSummary, task: TaskSpec, siblings: list[tuple[str, GraphSummary]]) -> None:
    """A model joining an existing task takes its inputs and gives the outputs its other variants give."""
    expected = f"one {task.input_dtype} input of shape (N, {', '.join(map(str, task.input_shape))})"
    if len(graph.inputs) != 1:
        raise ModelError(f"the model has {len(graph.inputs)} inputs; task {task.name!r} takes {expected}")
    model_input = graph.inputs[0]
    if model_input.dtype != task.input_dtype or tuple(model_input.shape[1:]) != task.input_shape:
        raise ModelError(
            f"input {model_input.name!r} is {model_input.dtype} {model_input.shape};"
            f" task {task.name!r} takes {expected}"
        )
    mine = {(o.name, o.dtype, o.shape[1:]) for o in graph.outputs}
    for name, other in siblings:
        theirs = {(o.name, o.dtype, o.shape[1:]) for o in other.outputs}
        if mine != theirs:  # mixed-variant answers are gathered into one array per output
            raise ModelError(
                f"outputs {sorted(map(str, mine))} differ from those of {name!r}, a variant of task {task.name!r}:"
                f" {sorted(map(str, theirs))}; every variant of a task gives the same outputs"
            )


def load_labelled(data: Path, task: TaskSpec, labels: Path | None = None) -> TestSet:
    """A labelled set: an ``.npz`` (see scoring.py), an IDX images file with ``labels``, or a folder of
    images with a ``labels.txt`` or ``labels.csv`` (lines ``file label``, or ``file,label``)."""
    if data.is_dir():
        return _image_folder(data, task)
    if data.suffix == ".npz":
        return load_npz_set(data, task)
    if labels is None:
        raise ModelError(f"{data}: an IDX images file needs its labels file too (--labels)")
    if task.quality != "top1":
        raise ModelError(f"{data}: IDX files hold class labels only; a {task.quality} task needs an .npz")
    return load_labelled_set(data, labels, task.input_shape)


def _image_folder(folder: Path, task: TaskSpec) -> LabelledSet:
    from PIL import Image

    label_file = next((folder / n for n in LABEL_FILES if (folder / n).is_file()), None)
    if label_file is None:
        raise ModelError(f"{folder}: a folder of images needs a {' or '.join(LABEL_FILES)} (lines: file label)")
    if task.quality != "top1" or len(task.input_shape) != 3 or task.input_shape[0] not in (1, 3):
        raise ModelError(f"{folder}: a folder of images serves a top1 task of (1 or 3, H, W) inputs")
    channels, height, width = task.input_shape
    images, classes = [], []
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ModelError(f"{label_file}:{number}: expected 'file label', got {line!r}")
        path = folder / parts[0]
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            raise ModelError(f"{label_file}:{number}: {path} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        with Image.open(path) as image:
            picture = image.convert("L" if channels == 1 else "RGB").resize((width, height))
            pixels = np.asarray(picture, np.uint8).reshape(height, width, channels).transpose(2, 0, 1)
        images.append(pixels)
        classes.append(int(parts[1]))
    if not images:
        raise ModelError(f"{label_file} lists no images")
    inputs = np.stack(images)
    if task.input_dtype != "uint8":  # a float model takes pixels on the 0..1 scale
        inputs = (inputs / 255.0).astype(task.input_dtype)
    return LabelledSet(inputs=np.ascontiguousarray(inputs), labels=np.asarray(classes, np.int64))


@dataclass(frozen=True)
class Added:
    variant: Variant
    task: TaskSpec
    new_task: bool
    graph: GraphSummary
    measured: bool  # quality measured here (else stated, with its source)


def add_model(
    manifest_path: Path,
    model: Path,
    task_name: str,
    *,
    name: str | None = None,
    labelled: Path | None = None,
    labels: Path | None = None,
    quality: str | None = None,
    stated: float | None = None,
    source: str | None = None,
    base: str | None = None,
    fit: str | None = None,
) -> Added:
    """Copy ``model`` next to the manifest (``<task>/<name>.onnx``) and write its entry (and its task's).
    ``fit``: how a new task's video frames become inputs (``letterbox`` or ``stretch``; see edgecollab.video)."""
    graph = inspect_graph(model)
    name = name or model.stem
    data: dict[str, Any] = tomllib.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    data.setdefault("task", [])
    data.setdefault("variant", [])
    folder = manifest_path.parent.resolve()
    manifest = load_manifest(manifest_path, check_files=False) if manifest_path.is_file() else None
    if any(v["name"] == name and v["task"] == task_name for v in data["variant"]):
        raise ManifestError(
            f"{manifest_path} already has a variant {name!r} in task {task_name!r}; give this one another --name"
        )
    if (stated is None) != (source is None):
        raise ManifestError("a stated quality (--quality-figure) needs its --source, and the other way round")
    existing = manifest.tasks.get(task_name) if manifest else None
    if manifest is not None and existing is not None:
        if labelled is not None:
            raise ManifestError(
                f"task {task_name!r} has its test set already; the model is scored on it (leave out --labelled)"
            )
        siblings = [(v.name, inspect_graph(manifest.resolve(v.file))) for v in manifest.for_task(task_name)]
        check_fits_task(graph, existing, siblings)
        current = existing.preprocess.fit if existing.preprocess else "letterbox"
        if fit is not None and fit != current:
            raise ManifestError(
                f"task {task_name!r} has its preprocessing already (fit {current!r}); --fit is for a new task:"
                " edit [task.preprocess] in the manifest to change it for every variant"
            )
        task, new_task = existing, False
    else:
        test_file = f"data/{task_name}/test.npz" if labelled is not None else None
        task, new_task = task_from_graph(task_name, graph, quality, test_file), True
        if fit is not None:
            task = task.model_copy(update={"preprocess": Preprocess(fit=fit)})
    if not task.has_test_set and stated is None:
        raise ManifestError(
            f"task {task_name!r} has no labelled test set: give one (--labelled) or a stated quality with its"
            " source (--quality-figure and --source)"
        )
    if task.quality == "stated" and stated is None:
        raise ManifestError(f"task {task_name!r} has no scorer for its outputs: give --quality-figure and --source")
    if task.quality == "map50" and graph.outputs and sorted(o.name for o in graph.outputs) != sorted(DETECTION_OUTPUTS):
        raise ModelError(f"a map50 task's models output {', '.join(DETECTION_OUTPUTS)}")

    destination = folder / task_name / f"{name}.onnx"
    destination.parent.mkdir(parents=True, exist_ok=True)
    if model.resolve() != destination:
        shutil.copyfile(model, destination)
    measured = stated is None
    if measured:
        test_set = load_labelled(labelled, task, labels) if labelled is not None else None
        if test_set is not None and new_task:
            _save_test_set(folder / str(task.test_set), test_set)
        if test_set is None:
            assert manifest is not None
            test_set = load_test_set(manifest, task)
        session = open_session(destination, task, threads=2)
        figure = score_session(session, task, test_set)
    else:
        assert stated is not None
        if not 0.0 <= stated <= 1.0:
            raise ManifestError(f"--quality-figure must be a fraction between 0 and 1, got {stated}")
        figure = stated
    entry: dict[str, Any] = {
        "name": name,
        "task": task_name,
        "file": str(destination.relative_to(folder)),
        "sha256": graph.sha256,
        "accuracy": round(figure, 4),
        "macs": graph.macs,
        "params": graph.params,
        "quantized": graph.quantized,
    }
    if source is not None:
        entry["quality_source"] = source
    if base is not None:
        entry["base"] = base
    if new_task:
        data["task"].append(task.model_dump(exclude_none=True, exclude_defaults=False))
    data["variant"].append(entry)
    _write(manifest_path, data)
    return Added(Variant.model_validate(entry), task, new_task, graph, measured)


def _save_test_set(path: Path, test_set: TestSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(test_set, LabelledSet):
        np.savez_compressed(path, images=test_set.inputs, labels=test_set.labels)
    else:
        np.savez_compressed(
            path, images=test_set.inputs, labels=test_set.labels, boxes=test_set.boxes, image_index=test_set.image_index
        )


def _write(path: Path, data: dict[str, Any]) -> None:
    import tomli_w

    header = ""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        header = "".join(line for line in lines[: next((i for i, x in enumerate(lines) if not x.startswith("#")), 0)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + ("\n" if header else "") + tomli_w.dumps(data))
    load_manifest(tmp)  # what was written loads, files and sha256s included, before it replaces the manifest
    tmp.replace(path)

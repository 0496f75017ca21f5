"""The model manifest (``models/zoo.toml``): tasks, their test sets, and model variants.

The manifest is written by ``models/train.py`` (or by hand for a user's own
models, with figures from ``edgecollab models inspect``). Loading it checks the
schema, that every variant names a known task and an existing file, and that
each file's sha256 matches, so nothing downstream runs a model it did not mean to.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .._toml import read_toml
from ..errors import ManifestError
from ..worker.cache import sha256_of as sha256_of  # one hasher for the manifest and the boards' model cache

DEFAULT_MANIFEST_ENV = "EDGECOLLAB_MANIFEST"
# The first line of the shipped manifest, written by models/train.py and models/upscale.py.
# top1: the first output's argmax is the class; map50: outputs boxes, scores, labels, scored by
# pycocotools; stated: no scorer here, each variant states its figure and where it comes from.
Quality = Literal["top1", "map50", "stated"]
GENERATED_HEADER = "# Written by models/train.py and models/upscale.py (make models). Every figure is measured.\n\n"


class Preprocess(BaseModel):
    """How a decoded video frame becomes the task's input (colour comes from the input's channels:
    1 grayscale, 3 RGB; the dtype is the task's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fit: Literal["letterbox", "stretch"] = Field(
        "letterbox", description="letterbox: keep the frame's aspect and pad; stretch: scale each axis to the input"
    )
    pad: int = Field(0, ge=0, le=255, description="the letterbox's fill value")
    layout: Literal["chw", "hwc"] = Field("chw", description="the input's axes: channels first, or last")


class TaskSpec(BaseModel):
    """One inference task: what its models take, how their quality is scored, and on which test set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    input_dtype: str = "uint8"
    input_shape: tuple[int, ...] = Field(description="shape of one input, without the batch dimension")
    classes: int | None = Field(None, gt=1, description="classes of a classifier or detector")
    quality: Quality = Field(
        "top1",
        description="how a variant is scored: top1 (the first output's argmax is the class), map50"
        " (outputs boxes, scores and labels; mAP at IoU 0.5 by pycocotools) or stated (a figure and its source)",
    )
    test_images: str | None = Field(None, description="IDX file of test inputs, relative to the manifest")
    test_labels: str | None = Field(None, description="IDX file of test labels, relative to the manifest")
    test_set: str | None = Field(None, description=".npz test set relative to the manifest (instead of IDX files)")
    test_upscale: int = Field(
        1, ge=1, le=64, description="the test images are stored this many times smaller and enlarged (nearest)"
    )
    preprocess: Preprocess | None = Field(None, description="how video frames become inputs (default: letterbox)")

    @model_validator(mode="after")
    def _one_test_set(self) -> TaskSpec:
        if (self.test_images is None) != (self.test_labels is None):
            raise ValueError("test_images and test_labels go together")
        if self.test_images is not None and self.test_set is not None:
            raise ValueError("give either test_images and test_labels (IDX) or test_set (.npz), not both")
        if self.quality == "map50" and self.test_images is not None:
            raise ValueError("a map50 task's test set is an .npz with boxes (test_set), not IDX files")
        return self

    @property
    def has_test_set(self) -> bool:
        return self.test_images is not None or self.test_set is not None

    @property
    def bytes_per_input(self) -> int:
        size = 1
        for dim in self.input_shape:
            size *= dim
        return size * np.dtype(self.input_dtype).itemsize


class TrainingInfo(BaseModel):
    """How a variant was trained; free-form beyond epochs and seed."""

    model_config = ConfigDict(extra="allow", frozen=True)

    epochs: int = Field(ge=0)
    seed: int


class Variant(BaseModel):
    """One model variant: a file, its measured accuracy and its counted cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    task: str
    file: str = Field(description="ONNX file, relative to the manifest")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    accuracy: float = Field(ge=0.0, le=1.0, description="quality on the task's test set, as the task scores it")
    quality_source: str | None = Field(
        None, description="where a stated quality comes from, when it was not measured on the task's test set"
    )
    macs: int = Field(gt=0, description="multiply-accumulates per input")
    params: int = Field(ge=0)
    quantized: bool = False
    base: str | None = Field(default=None, description="the float variant this one was quantized from")
    training: TrainingInfo | None = None


class _ManifestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: list[TaskSpec]
    variant: list[Variant]


class Manifest:
    """A loaded, validated manifest. Paths of files are resolved against its folder.

    Variant names are scoped by task: two tasks may each have a ``cnn-8``. Everywhere else (configs,
    the exploration table, shards, reports) a variant is known by its *id*: its name where no other
    task uses it, else ``task/name``.
    """

    def __init__(self, path: Path, tasks: list[TaskSpec], variants: list[Variant]) -> None:
        self.path = path
        self.tasks: dict[str, TaskSpec] = {t.name: t for t in tasks}
        names = Counter(v.name for v in variants)
        self._ids = {(v.task, v.name): v.name if names[v.name] == 1 else f"{v.task}/{v.name}" for v in variants}
        self.variants: dict[str, Variant] = {self._ids[(v.task, v.name)]: v for v in variants}

    def resolve(self, relative: str) -> Path:
        return (self.path.parent / relative).resolve()

    def id_of(self, variant: Variant) -> str:
        """The variant's id: its name, or ``task/name`` where another task has a variant of that name."""
        return self._ids[(variant.task, variant.name)]

    def variant(self, ref: str, task: str | None = None) -> Variant:
        """A variant by id (``name`` or ``task/name``), or by name within ``task``."""
        if task is not None and (task, ref) in self._ids:
            return self.variants[self._ids[(task, ref)]]
        if ref in self.variants:
            return self.variants[ref]
        owner, _, name = ref.partition("/")
        if (owner, name) in self._ids:
            return self.variants[self._ids[(owner, name)]]
        tasks = sorted(t for t, n in self._ids if n == ref)
        if tasks:
            raise ManifestError(
                f"variant name {ref!r} is used by tasks {', '.join(tasks)} in {self.path}: say which, as"
                f" {' or '.join(f'{t}/{ref}' for t in tasks)}"
            )
        raise ManifestError(f"unknown model variant {ref!r}; the manifest {self.path} has: {', '.join(self.variants)}")

    def task_of(self, variant: Variant) -> TaskSpec:
        return self.tasks[variant.task]

    def for_task(self, task: str) -> list[Variant]:
        return [v for v in self.variants.values() if v.task == task]

    def served(self, names: Sequence[str]) -> list[TaskSpec]:
        """The named tasks, in that order; ``ManifestError`` naming any the manifest lacks."""
        missing = [n for n in names if n not in self.tasks]
        if missing:
            known = ", ".join(self.tasks)
            raise ManifestError(
                f"task(s) {', '.join(map(repr, missing))} not in the manifest {self.path}; it has: {known}"
            )
        return [self.tasks[n] for n in names]


def _describe_validation_error(path: Path, data: dict[str, Any], exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(part) for part in loc)
        # Name the variant or task by its name rather than its list index.
        if len(loc) >= 2 and isinstance(loc[1], int):
            table = data.get(str(loc[0]), [])
            if loc[1] < len(table) and isinstance(table[loc[1]], dict) and "name" in table[loc[1]]:
                where = f"{loc[0]} {table[loc[1]]['name']!r}: " + ".".join(str(p) for p in loc[2:])
        lines.append(f"  {where}: {err['msg']}")
    return f"invalid manifest {path}:\n" + "\n".join(lines)


def load_manifest(path: Path | str | None = None, *, check_files: bool = True) -> Manifest:
    """Load and validate a manifest; with ``check_files`` also verify every file's sha256."""
    manifest_path = Path(path) if path is not None else default_manifest_path()
    data = read_toml(manifest_path, "model manifest", ManifestError)
    try:
        parsed = _ManifestFile.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_describe_validation_error(manifest_path, data, exc)) from None

    manifest = Manifest(manifest_path.resolve(), parsed.task, parsed.variant)
    _check_consistency(manifest, parsed)
    if check_files:
        for variant in manifest.variants.values():
            file = manifest.resolve(variant.file)
            if not file.is_file():
                raise ManifestError(f"variant {variant.name!r}: model file not found: {file}")
            actual = sha256_of(file)
            if actual != variant.sha256:
                raise ManifestError(
                    f"variant {variant.name!r}: sha256 mismatch for {file}: "
                    f"manifest says {variant.sha256}, file has {actual}"
                )
    return manifest


def _check_consistency(manifest: Manifest, parsed: _ManifestFile) -> None:
    tasks = [t.name for t in parsed.task]
    variants = [f"{v.task}/{v.name}" for v in parsed.variant]  # names are scoped by task
    for kind, names in (("task", tasks), ("variant", variants)):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ManifestError(f"manifest {manifest.path}: duplicate {kind} name(s): {', '.join(duplicates)}")
    for variant in manifest.variants.values():
        if variant.task not in manifest.tasks:
            raise ManifestError(
                f"variant {variant.name!r} names unknown task {variant.task!r}; "
                f"tasks in {manifest.path}: {', '.join(manifest.tasks) or '(none)'}"
            )
        if variant.base is not None and (variant.task, variant.base) not in manifest._ids:
            raise ManifestError(
                f"variant {variant.name!r}: base {variant.base!r} is not a variant of task {variant.task!r}"
            )


def default_manifest_path() -> Path:
    """``$EDGECOLLAB_MANIFEST``, else ``./models/zoo.toml``, else the source tree's zoo."""
    if env := os.environ.get(DEFAULT_MANIFEST_ENV):
        return Path(env)
    local = Path.cwd() / "models" / "zoo.toml"
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[2] / "models" / "zoo.toml"


def pareto_front(variants: list[Variant]) -> list[Variant]:
    """Variants no other variant beats on both accuracy and MACs, cheapest first."""
    front = [
        v
        for v in variants
        if not any(
            (o.accuracy >= v.accuracy and o.macs <= v.macs) and (o.accuracy > v.accuracy or o.macs < v.macs)
            for o in variants
        )
    ]
    return sorted(front, key=lambda v: v.macs)

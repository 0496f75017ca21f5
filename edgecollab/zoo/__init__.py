"""The model zoo: manifest of variants, their test sets, and ONNX Runtime sessions."""

from __future__ import annotations

from .dataset import LabelledSet, load_labelled_set, read_idx, write_idx
from .manifest import Manifest, TaskSpec, Variant, default_manifest_path, load_manifest, pareto_front, sha256_of
from .session import (
    ACCURACY_TOLERANCE,
    VariantCheck,
    load_test_set,
    measure_throughput,
    open_session,
    predict,
    select_providers,
    verify_variant,
)

__all__ = [
    "ACCURACY_TOLERANCE",
    "LabelledSet",
    "Manifest",
    "TaskSpec",
    "Variant",
    "VariantCheck",
    "default_manifest_path",
    "load_labelled_set",
    "load_manifest",
    "load_test_set",
    "measure_throughput",
    "open_session",
    "pareto_front",
    "predict",
    "read_idx",
    "select_providers",
    "sha256_of",
    "verify_variant",
    "write_idx",
]

"""Tiny hand-built ONNX graphs for tests that need a model file of a given shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_linear_model(
    path: Path, *, input_type: int = TensorProto.UINT8, input_shape: tuple[int | str, ...] = ("N", 1, 28, 28)
) -> Path:
    """A linear classifier (flatten -> MatMul -> 10 logits) with the given input signature."""
    features = int(np.prod([d for d in input_shape[1:] if isinstance(d, int)]))
    weights = np.random.default_rng(0).normal(size=(features, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("images", input_type, list(input_shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [input_shape[0], 10])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path

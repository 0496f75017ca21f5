"""Static facts about an ONNX graph: multiply-accumulates and parameters per input.

Used when writing a manifest entry, so the cost figures the planner and the
board emulation rely on are counted from the graph itself, never typed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

# Ops whose weights count as parameters and whose work counts as MACs.
_WEIGHTED_OPS = {"Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"}


@dataclass(frozen=True)
class GraphCost:
    macs: int  # multiply-accumulates for one input (batch dimension set to 1)
    params: int  # weight and bias elements of the weighted ops


def _shape_of(value_info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    dims = value_info.type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def _with_unit_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for graph_input in fixed.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    return shape_inference.infer_shapes(fixed)


def graph_cost(path: Path) -> GraphCost:
    """Count per-input MACs and parameters of the Conv/Gemm/MatMul ops of a model."""
    model = _with_unit_batch(onnx.load(str(path)))
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        shape = _shape_of(vi)
        if shape is not None:
            shapes[vi.name] = shape
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for name, array in initializers.items():
        shapes[name] = array.shape
    # A quantized weight reaches its op through DequantizeLinear: follow it back.
    produced_by_dequantize: dict[str, str] = {
        str(node.output[0]): str(node.input[0]) for node in graph.node if node.op_type == "DequantizeLinear"
    }

    def weight_source(name: str) -> str:
        return produced_by_dequantize.get(name, name)

    macs = 0
    counted: set[str] = set()
    params = 0
    for node in graph.node:
        if node.op_type not in _WEIGHTED_OPS:
            continue
        if node.op_type.startswith("QLinear"):
            operands = [node.input[0], node.input[3]]
            out = node.output[0]
            extra = [node.input[8]] if node.op_type == "QLinearConv" and len(node.input) > 8 else []
        else:
            operands = [node.input[0], node.input[1]]
            out = node.output[0]
            extra = [node.input[2]] if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 else []
        out_shape = shapes.get(out)
        w_shape = shapes.get(weight_source(operands[1])) or shapes.get(operands[1])
        if out_shape is None or w_shape is None:
            raise ValueError(f"{path}: cannot infer shapes around {node.op_type} node {node.name!r}")
        if "Conv" in node.op_type:
            # Every output element takes (C_in / groups) * kernel area MACs.
            macs += int(np.prod(out_shape)) * int(np.prod(w_shape[1:]))
        else:
            # (.., M, K) x (K, N): each output element takes K MACs.
            a_shape = shapes.get(operands[0])
            transposed_a = any(a.name == "transA" and a.i == 1 for a in node.attribute)
            k = (a_shape[-2] if transposed_a else a_shape[-1]) if a_shape else w_shape[0]
            macs += int(np.prod(out_shape)) * int(k)
        for name in [operands[1], *extra]:
            source = weight_source(name)
            if source in initializers and source not in counted:
                counted.add(source)
                params += int(initializers[source].size)
    return GraphCost(macs=macs, params=params)

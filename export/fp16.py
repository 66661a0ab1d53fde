"""fp16 ONNX: weights and activations in half precision; LayerNorm, softmax, the L2 norm, TopK and the
graph's inputs and outputs stay fp32 behind Cast nodes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP32_OPS = frozenset({"LayerNormalization", "Softmax", "ReduceL2", "TopK"})
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in fp16 except in ``FP32_OPS``; inputs and outputs keep their fp32 type."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    types = _element_types(model)
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    kept_fp32 = set()  # initializers read only by fp32 ops stay fp32
    for tensor in graph.initializer:
        if tensor.data_type != FLOAT:
            continue
        if consumers.get(tensor.name) and consumers[tensor.name] <= FP32_OPS:
            kept_fp32.add(tensor.name)
        else:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    outputs = {value.name for value in graph.output if value.type.tensor_type.elem_type == FLOAT}
    rename: dict[str, str] = {}
    fp32_copies: dict[str, str] = {}  # fp16 tensor -> its fp32 Cast, made once
    nodes = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == FLOAT:
            rename[value.name] = f"{value.name}.fp16"
            nodes.append(helper.make_node("Cast", [value.name], [rename[value.name]], to=HALF,
                                          name=f"{value.name}.to_fp16"))
    tail = []
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        if node.op_type in FP32_OPS:
            for position, name in enumerate(node.input):
                if types.get(name.removesuffix(".fp16")) == FLOAT and name not in kept_fp32:
                    if name not in fp32_copies:
                        fp32_copies[name] = f"{name}.fp32"
                        nodes.append(helper.make_node("Cast", [name], [fp32_copies[name]], to=FLOAT,
                                                      name=f"{name}.to_fp32"))
                    node.input[position] = fp32_copies[name]
            nodes.append(node)
            for position, name in enumerate(node.output):
                if types.get(name) != FLOAT:
                    continue
                if name in outputs:  # already fp32: other ops inside the graph read an fp16 copy
                    rename[name] = f"{name}.fp16"
                    fp32_copies[rename[name]] = name
                    nodes.append(helper.make_node("Cast", [name], [rename[name]], to=HALF, name=f"{name}.to_fp16"))
                else:
                    node.output[position] = fp32_copies[name] = f"{name}.fp32"
                    nodes.append(helper.make_node("Cast", [node.output[position]], [name], to=HALF,
                                                  name=f"{name}.to_fp16"))
            continue
        _retype_attributes(node)
        nodes.append(node)
        for position, name in enumerate(node.output):
            if name in outputs:
                rename[name] = node.output[position] = f"{name}.fp16"
                tail.append(helper.make_node("Cast", [rename[name]], [name], to=FLOAT, name=f"{name}.to_fp32"))
    del graph.node[:]
    graph.node.extend([*nodes, *tail])
    del graph.value_info[:]
    return converted


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, from ONNX type inference."""
    typed = onnx.shape_inference.infer_shapes(model)
    values = [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]
    types = {value.name: value.type.tensor_type.elem_type for value in values}
    types |= {tensor.name: tensor.data_type for tensor in model.graph.initializer}
    return types


def _retype_attributes(node: onnx.NodeProto) -> None:
    """fp32 constants and Casts to fp32 inside the converted region become fp16."""
    for attribute in node.attribute:
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT:
            attribute.i = HALF
        elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float16),
                                                         attribute.t.name))

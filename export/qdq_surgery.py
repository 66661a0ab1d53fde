"""Edits of ONNX Runtime's Q/DQ graphs: nodes that read the float activation instead of its quantized copy, and
GEMMs reverted to float (``revert_to_float``), with the Q/DQ nodes and int8 weights nothing reads any more removed.
"""

from __future__ import annotations

import copy
from typing import Callable

import onnx


def revert_to_float(quantized: onnx.ModelProto, float_model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """``quantized`` with the nodes ``names`` computing in float again: each reads the float graph's inputs (its
    float weight, the activation before its Q/DQ pair); the Q/DQ nodes and int8 weights nothing reads any more are
    removed."""
    chosen = set(names)
    originals = {node.name: node for node in float_model.graph.node if node.name in chosen}
    weights = {tensor.name: tensor for tensor in float_model.graph.initializer}
    model = copy.deepcopy(quantized)
    present = {tensor.name for tensor in model.graph.initializer}
    float_outputs = set()
    for node in model.graph.node:
        if node.name in originals:
            del node.input[:]
            node.input.extend(originals[node.name].input)
            float_outputs.update(node.output)
            for name in node.input:
                if name in weights and name not in present:
                    model.graph.initializer.append(weights[name])
                    present.add(name)
    read_unquantized(model, lambda node: True, float_outputs)  # the Q/DQ pair after a quantized GEMM's output
    return _without_unread(model)


def read_unquantized(model: onnx.ModelProto, readers: Callable[[onnx.NodeProto], bool],
                     sources: set[str] | None = None) -> None:
    """The nodes ``readers`` picks read ``x`` instead of ``DequantizeLinear(QuantizeLinear(x))``, for ``x`` in
    ``sources`` (None: any activation), in place."""
    quantized = {node.output[0]: node.input[0] for node in model.graph.node
                 if node.op_type == "QuantizeLinear" and (sources is None or node.input[0] in sources)}
    replaced = {node.output[0]: quantized[node.input[0]] for node in model.graph.node
                if node.op_type == "DequantizeLinear" and node.input[0] in quantized}
    for node in model.graph.node:
        if readers(node):
            for index, name in enumerate(node.input):
                if name in replaced:
                    node.input[index] = replaced[name]


def _without_unread(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` less the nodes whose outputs nothing reads (repeatedly), and the initializers nothing reads."""
    while True:
        read = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
        unread = [node for node in model.graph.node if not any(name in read for name in node.output)]
        if not unread:
            break
        for node in unread:
            model.graph.node.remove(node)
    read = {name for node in model.graph.node for name in node.input}
    for tensor in [tensor for tensor in model.graph.initializer if tensor.name not in read]:
        model.graph.initializer.remove(tensor)
    return model


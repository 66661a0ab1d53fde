"""Static checks for what TensorRT cannot build with static shapes, run on an ONNX graph without TensorRT.

Rules: every operator is in TensorRT's ONNX operator support (TensorRT 10, onnx-tensorrt's
docs/operators.md); no operator with a data-dependent output shape (NonZero, Unique, ...); TopK's K is a
build-time constant below TensorRT's limit; Q/DQ nodes (explicit quantization) are int8 with zero point 0 and
constant positive scales; every shape-like input (Reshape's shape, Slice's bounds,
Expand's shape, ...) is computed from constants and tensor shapes only, never from data; with the batch
symbolic, every tensor's shape is static apart from multiples of the batch; no int64 constant beyond
the int32 range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

TENSORRT_VERSION = "10"
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax
Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish
Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
Sqrt Squeeze STFT Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample
Where Xor
""".split())
DATA_DEPENDENT_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})
TOPK_LIMIT = 3840  # TensorRT's largest K
SHAPE_INPUTS = {  # op -> positions of inputs that set an output shape
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Resize": (1, 2, 3), "Upsample": (1,), "Squeeze": (1,),
    "Unsqueeze": (1,), "Split": (1,), "OneHot": (1,), "TopK": (1,), "CumSum": (1,),
    **{op: (1,) for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                           "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")},
}
SHAPE_SOURCES = frozenset({"Shape", "Size", "Constant"})


@dataclass(frozen=True)
class Finding:
    """One thing TensorRT could not build statically: the rule broken, where, and what was found."""

    rule: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.node}: {self.detail}"


def tensorrt_findings(model: onnx.ModelProto, batch: str = "batch") -> list[Finding]:
    """Everything in ``model`` that breaks the rules above (empty: ready for a static TensorRT build)."""
    return [*_operator_findings(model), *_quantization_findings(model), *_shape_input_findings(model),
            *_int64_findings(model), *_dimension_findings(model, batch)]


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _operator_findings(model: onnx.ModelProto) -> list[Finding]:
    constants = _constants(model)
    findings = []
    for node in model.graph.node:
        where = node.name or node.output[0]
        if node.domain not in ("", "ai.onnx"):
            findings.append(Finding("custom operator", where, f"{node.domain}::{node.op_type} needs a plugin"))
        elif node.op_type in DATA_DEPENDENT_OPS:
            findings.append(Finding("data-dependent shape", where, f"{node.op_type}'s output shape depends on values"))
        elif node.op_type not in TENSORRT_OPS:
            findings.append(Finding("unsupported operator", where, f"{node.op_type} is not in TensorRT "
                                                                   f"{TENSORRT_VERSION}'s ONNX operator support"))
        if node.op_type == "TopK":
            k = constants.get(node.input[1])
            sorted_output = next((a.i for a in node.attribute if a.name == "sorted"), 1)
            if k is None:
                findings.append(Finding("TopK K not constant", where, f"K comes from {node.input[1]!r}"))
            elif int(np.max(k)) >= TOPK_LIMIT:
                findings.append(Finding("TopK K too large", where, f"K = {int(np.max(k))} >= {TOPK_LIMIT}"))
            if sorted_output != 1:
                findings.append(Finding("TopK unsorted", where, "TensorRT needs sorted=1"))
    return findings


def _quantization_findings(model: onnx.ModelProto) -> list[Finding]:
    """TensorRT 10's explicit quantization: symmetric int8 (zero point 0), scales that are constant and positive."""
    constants = _constants(model)
    findings = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = node.name or node.output[0]
        scale = constants.get(node.input[1])
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or not np.all(scale > 0):
            findings.append(Finding("quantization scale", where, f"scale {node.input[1]!r} is not a positive "
                                                                 "constant"))
        if zero_point is None or zero_point.dtype != np.int8 or np.any(zero_point != 0):
            kind = "missing" if zero_point is None else f"{zero_point.dtype}, max {int(np.max(np.abs(zero_point)))}"
            findings.append(Finding("quantization zero point", where, f"zero point must be int8 zeros ({kind})"))
    return findings


def _shape_input_findings(model: onnx.ModelProto) -> list[Finding]:
    """Shape-like inputs must be computable from initializers, constants and Shape/Size outputs alone."""
    computable = {tensor.name for tensor in model.graph.initializer} | {""}
    findings = []
    for node in model.graph.node:
        where = node.name or node.output[0]
        for position in SHAPE_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] not in computable:
                findings.append(Finding("data-dependent shape", where,
                                        f"{node.op_type} input {position} ({node.input[position]!r}) is computed "
                                        "from tensor values, not from shapes and constants"))
        if node.op_type in SHAPE_SOURCES or all(name in computable for name in node.input):
            computable.update(node.output)
    return findings


def _int64_findings(model: onnx.ModelProto) -> list[Finding]:
    findings = []
    for name, values in _constants(model).items():
        if values.dtype == np.int64 and values.size and (values.min() < np.iinfo(np.int32).min
                                                         or values.max() > np.iinfo(np.int32).max):
            findings.append(Finding("int64 beyond int32", name, f"holds {int(values.max())}"
                                    if values.max() > np.iinfo(np.int32).max else f"holds {int(values.min())}"))
    return findings


def _dimension_findings(model: onnx.ModelProto, batch: str) -> list[Finding]:
    """Symbolic shape inference over the graph: each dimension must be a number or a multiple of ``batch``."""
    import sympy

    from .onnx_graph import infer_symbolic_shapes

    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        dynamic = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
        if dynamic != [0] or dims[0].dim_param != batch:
            return [Finding("dynamic dimension", value.name, f"input dimensions {dynamic} are dynamic; "
                            f"only dimension 0 ({batch!r}) may be")]
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.value_info[:]
    try:
        inferred = infer_symbolic_shapes(stripped)
    except Exception as error:  # the tool asserts on shapes it cannot follow
        return [Finding("dynamic dimension", "graph", f"symbolic shape inference failed ({type(error).__name__}: "
                                                      f"{error})")]
    shapes = {value.name: value for value in [*inferred.graph.value_info, *inferred.graph.output]}
    symbol = sympy.Symbol(batch)
    findings = []
    for node in inferred.graph.node:
        for name in node.output:
            value = shapes.get(name)
            if value is None or not value.type.tensor_type.HasField("shape"):
                findings.append(Finding("dynamic dimension", node.name or name, f"the shape of {name!r} is unknown"))
                continue
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value"):
                    continue
                try:
                    symbols = sympy.sympify(dim.dim_param).free_symbols if dim.dim_param else {None}
                except sympy.SympifyError:
                    symbols = {None}
                if not symbols <= {symbol}:
                    findings.append(Finding("dynamic dimension", node.name or name,
                                            f"{name!r} has dimension {dim.dim_param or '?'!r}"))
    return findings

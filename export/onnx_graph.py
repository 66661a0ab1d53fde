"""From a torch module to a clean, deterministic ONNX graph: trace, fold, tidy, annotate, save; and back: what a
saved graph is (``graph_facts``: its input, outputs, precision, normalisation and embedded description;
``graph_structure``: its size per transformer block and its fused operators).

The graph is traced with torch's TorchScript-based exporter (see ``trace`` for why not the torch.export one),
constant-folded with onnx-graphsurgeon (shape arithmetic on static dimensions becomes constants, so only the
batch dimension stays symbolic), then tidied for TensorRT: every input's and output's first dimension is named
``batch`` and Slice bounds are clamped to int32.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from prtk.core.errors import PrtkInputError
from prtk.core.files import write_bytes_atomic

BATCH = "batch"
INT32 = np.iinfo(np.int32)
PROTOBUF_LIMIT = 2 ** 31 - 1  # bytes: larger models keep their weights in an external data file


def trace(module: torch.nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
          opset: int, custom_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    """Export ``module(example)`` with a dynamic batch dimension and everything else static.

    Why the TorchScript-based exporter (deprecated since torch 2.9, still shipped) and not ``dynamo=True``:
    ``--optimize O2`` writes ONNX Runtime's fused operators through ``torch.autograd.Function.symbolic``, which
    only this exporter honours (the torch.export one needs onnxscript translation functions and onnxscript, not
    a prtk dependency); on the lean blocks it already gives 23 nodes per block (the torch.export exporter on
    open_clip's own ViT-B/16 blocks gives 52, unfused, with torch 2.13); and its graphs fold to static shapes
    that ONNX Runtime's symbolic shape inference follows end to end, which the readiness check relies on. So its
    deprecation warning is silenced here, and only here; so are the tracer's warnings about Python ints taken
    from tensor shapes, which are static in every prtk graph (only the batch varies, and no shape is read
    from it).
    """
    axes = {name: {0: BATCH} for name in [input_name, *output_names]}
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode(False), torch.no_grad():
        path = Path(folder) / "model.onnx"
        with contextlib.redirect_stdout(io.StringIO()), _without_attention_fastpath(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                    DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[input_name], output_names=output_names, dynamic_axes=axes,
                              do_constant_folding=True, custom_opsets=custom_opsets)
        return onnx.load(str(path))


@contextlib.contextmanager
def _without_attention_fastpath():
    """nn.MultiheadAttention's fused inference kernel has no ONNX form: trace the composite ops instead."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every constant subgraph, including shape arithmetic on static dimensions (onnx-graphsurgeon)."""
    import onnx_graphsurgeon as gs
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    graph = gs.import_onnx(model)
    graph.fold_constants(fold_shapes=True).cleanup().toposort()
    return gs.export_onnx(graph)


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give outputs their static shapes (the tracer leaves some symbolic), name the batch dimension of inputs
    and outputs, drop intermediate value_info, and clamp Slice bounds to int32."""
    _static_output_shapes(model)
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH
    del model.graph.value_info[:]
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Slice":
            continue
        for name in node.input[1:3]:  # starts, ends
            tensor = initializers.get(name)
            if tensor is None or tensor.data_type != onnx.TensorProto.INT64:
                continue
            values = numpy_helper.to_array(tensor)
            clamped = np.clip(values, INT32.min, INT32.max).astype(np.int64)
            if not np.array_equal(values, clamped):
                tensor.CopyFrom(numpy_helper.from_array(clamped, name))
    return model


def _static_output_shapes(model: onnx.ModelProto) -> None:
    """Copy the output dimensions that symbolic shape inference resolves to numbers into the graph outputs."""
    try:
        inferred = infer_symbolic_shapes(model)
    except Exception:  # the readiness check reports graphs the tool cannot follow
        return
    for output, known in zip(model.graph.output, inferred.graph.output, strict=True):
        for dim, known_dim in zip(output.type.tensor_type.shape.dim, known.type.tensor_type.shape.dim, strict=True):
            if known_dim.HasField("dim_value"):
                dim.dim_value = known_dim.dim_value


def infer_symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's symbolic shape inference (dimensions as expressions of ``batch``); raises when it cannot
    follow the graph. Reductions that take their axes as an input (opset 18) are inferred like ReduceSum: the
    tool does so for ReduceSum and ReduceMean only, and ONNX's single-node inference cannot see the axes. The
    body is the tool's ``infer_shapes`` with that one addition to its dispatch table (its internals, stable
    across the ONNX Runtime versions ``constraints.txt`` pins); unlike ``infer_shapes`` it writes no file."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(2 ** 31 - 1, False, False, 0)
    for op in AXES_INPUT_REDUCTIONS:
        inference.dispatcher_.setdefault(op, inference._infer_ReduceSum)
    inference._preprocess(model)
    complete = False
    while inference.run_:
        complete = inference._infer_impl()
    inference._update_output_from_vi()
    if not complete:
        raise ValueError("incomplete symbolic shape inference")
    return inference.out_mp_


AXES_INPUT_REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin",
                         "ReduceProd", "ReduceSumSquare")


def annotate(model: onnx.ModelProto, metadata: dict[str, str], version: str) -> onnx.ModelProto:
    """Set producer and ``metadata_props`` (replacing any earlier ones)."""
    model.producer_name = "prtk"
    model.producer_version = version
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, metadata[key]
    return model


def save_model(model: onnx.ModelProto, path: Path, external_threshold: int = PROTOBUF_LIMIT) -> list[Path]:
    """Write ``path`` atomically (and ``path.data`` with the weights when the model exceeds
    ``external_threshold`` bytes; ``model`` then refers to that file); returns the files written. Equal
    models give equal bytes."""
    data_path = path.with_name(path.name + ".data")
    if model.ByteSize() <= external_threshold:
        write_bytes_atomic(path, model.SerializeToString())
        data_path.unlink(missing_ok=True)
        return [path]
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        staged = Path(folder) / path.name
        onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_path.name, size_threshold=1024)
        os.replace(Path(folder) / data_path.name, data_path)
        os.replace(staged, path)
    return [path, data_path]


def annotate_saved(path: Path, metadata: dict[str, str], version: str) -> None:
    """Replace the ``metadata_props`` of the graph saved at ``path`` (its external weights file untouched:
    ``save_model`` has moved the weights out of the model it saved)."""
    model = load_graph(path)
    write_bytes_atomic(path, annotate(model, metadata, version).SerializeToString())


ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16"}


@dataclass(frozen=True)
class GraphFacts:
    """What an ONNX graph is, read from the graph alone."""

    input: tuple[str, list, str]  # name, shape (symbolic dims as names), dtype
    outputs: list[tuple[str, list, str]]
    precision: str  # of its large weights (>= 1024 elements): int8 when any is, else fp16 when most are, or fp32
    embedding_normalized: bool  # the embedding output is x / ||x|| (F.normalize)
    description: dict | None  # the JSON under metadata_props["prtk"]
    custom_domains: tuple[str, ...]  # operator domains beyond ONNX's own (com.microsoft: ONNX Runtime only)
    opset: int  # of ONNX's own domain
    structure: GraphStructure
    keep_counts: tuple[int, ...]  # K of each TopK that keeps patches, in graph order (-1: not a constant)
    quantization: str | None  # int8-static (Q/DQ), int8-dynamic (DynamicQuantizeLinear), None
    int8_nodes: int  # weight GEMMs in int8: MatMulInteger, or MatMul/Gemm of a dequantized int8 weight
    external_files: tuple[str, ...]  # files holding its weights beside it


def load_graph(path: Path) -> onnx.ModelProto:
    """The graph without its external weights; a corrupt or truncated file is refused in one line."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf decode errors have no common base class
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PrtkInputError(f"cannot read ONNX graph {path}: {reason} (corrupt or truncated?)") from None


WEIGHT_PRECISIONS = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.INT8: "int8",
                     onnx.TensorProto.UINT8: "int8"}


def graph_facts(model: onnx.ModelProto) -> GraphFacts:
    def value_facts(value) -> tuple[str, list, str]:
        tensor = value.type.tensor_type
        dims = [dim.dim_param if dim.dim_param else dim.dim_value for dim in tensor.shape.dim]
        return value.name, dims, ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type))

    if len(model.graph.input) != 1:
        raise PrtkInputError(f"graph has {len(model.graph.input)} inputs; a prtk export has one")
    elements = {name: 0 for name in ("fp32", "fp16", "int8")}
    for tensor in model.graph.initializer:
        kind = WEIGHT_PRECISIONS.get(tensor.data_type)
        if kind is not None and math.prod(tensor.dims) >= 1024:
            elements[kind] += math.prod(tensor.dims)
    precision = ("int8" if elements["int8"]
                 else "fp16" if elements["fp16"] > elements["fp32"] else "fp32")
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    try:
        description = json.loads(metadata["prtk"]) if "prtk" in metadata else None
    except json.JSONDecodeError:
        description = None
    ops = {node.op_type for node in model.graph.node}
    producers = {output: node for node in model.graph.node for output in node.output}
    return GraphFacts(input=value_facts(model.graph.input[0]),
                      outputs=[value_facts(output) for output in model.graph.output],
                      precision=precision, embedding_normalized=_normalizes(producers, "embedding"),
                      description=description, custom_domains=custom_domains(model),
                      opset=next((entry.version for entry in model.opset_import if entry.domain in ONNX_DOMAINS), 0),
                      structure=graph_structure(model), keep_counts=_topk_counts(model, producers),
                      quantization=("int8-static" if "QuantizeLinear" in ops else
                                    "int8-dynamic" if "DynamicQuantizeLinear" in ops else None),
                      int8_nodes=_int8_nodes(model, producers),
                      external_files=tuple(sorted({entry.value for tensor in model.graph.initializer
                                                   if tensor.data_location == onnx.TensorProto.EXTERNAL
                                                   for entry in tensor.external_data if entry.key == "location"})))


def _normalizes(producers: dict[str, onnx.NodeProto], output: str) -> bool:
    """Whether graph output ``output`` is ``x / f(ReduceL2(x))`` (F.normalize: Div by the clamped, expanded norm;
    the Casts of an fp16 graph looked through); ``producers`` maps each tensor to the node that writes it."""

    def uncast(name: str) -> str:
        while name in producers and producers[name].op_type == "Cast":
            name = producers[name].input[0]
        return name

    node = producers.get(uncast(output))
    if node is None or node.op_type != "Div":
        return False
    numerator, pending = uncast(node.input[0]), [node.input[1]]
    for _ in range(8):  # the norm passes Clip / Max, Expand and Casts on its way to the Div
        pending = [name for name in pending if name in producers]
        if any(producers[name].op_type == "ReduceL2" and uncast(producers[name].input[0]) == numerator
               for name in pending):
            return True
        pending = [source for name in pending for source in producers[name].input[:1]]
    return False


def _int8_nodes(model: onnx.ModelProto, producers: dict[str, onnx.NodeProto]) -> int:
    """Weight GEMMs computed in int8: ``MatMulInteger`` and ``QAttention`` (dynamic), or MatMul/Gemm whose input
    is an initializer dequantized by ``DequantizeLinear`` (Q/DQ)."""
    weights = {tensor.name for tensor in model.graph.initializer}
    return sum(node.op_type in ("MatMulInteger", "QAttention") or (node.op_type in ("MatMul", "Gemm") and any(
        name in producers and producers[name].op_type == "DequantizeLinear" and producers[name].input[0] in weights
        for name in node.input)) for node in model.graph.node)


def _topk_counts(model: onnx.ModelProto, producers: dict[str, onnx.NodeProto]) -> tuple[int, ...]:
    """K of every TopK node that keeps patches, in graph order (-1 where K is not a constant initializer): prtk's
    graphs choose patches by TopK on their scores, then sort the chosen indices ascending with a TopK on their
    negation (``prtk.pruning.tower.ascending``), which is not counted."""
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    counts = []
    for node in model.graph.node:
        sorting = node.input[0] in producers and producers[node.input[0]].op_type == "Neg"
        if node.op_type == "TopK" and not sorting:
            k = constants.get(node.input[1])
            counts.append(int(numpy_helper.to_array(k).reshape(-1)[0]) if k is not None else -1)
    return tuple(counts)


def custom_domains(model: onnx.ModelProto) -> tuple[str, ...]:
    """The operator domains of ``model``'s nodes beyond ONNX's own, sorted."""
    return tuple(sorted({node.domain for node in model.graph.node} - ONNX_DOMAINS))


ONNX_DOMAINS = {"", "ai.onnx"}
BLOCK_SCOPE = re.compile(r"/resblocks\.(\d+)/")  # TorchScript names nodes by module path: .../resblocks.3/...


@dataclass(frozen=True)
class GraphStructure:
    """How big a graph is and what it fused: ``nodes`` in all, the most in one transformer block (nodes are
    assigned to blocks by the module path the exporter names them with), and the count of each operator
    outside ONNX's own domain (``com.microsoft`` fused operators)."""

    nodes: int
    blocks: int
    nodes_per_block: int
    fused_operators: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)


def graph_structure(model: onnx.ModelProto) -> GraphStructure:
    per_block = Counter(match.group(1) for node in model.graph.node if (match := BLOCK_SCOPE.search(node.name)))
    fused = Counter(node.op_type for node in model.graph.node if node.domain not in ONNX_DOMAINS)
    return GraphStructure(nodes=len(model.graph.node), blocks=len(per_block),
                          nodes_per_block=max(per_block.values(), default=0),
                          fused_operators=dict(sorted(fused.items())))

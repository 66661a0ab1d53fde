"""Reading an export back: its sidecar checked for shape and types, and against the graph it describes.

A sidecar is an editable file; the graph is what runs. ``check_sidecar_schema`` refuses a sidecar that lacks
a key or has a wrong type; ``check_graph_matches`` one that differs from the description embedded in the
graph's ``metadata_props``, and a description that the graph itself contradicts (input name and shape,
output names and shapes — ``k`` of ``kept_indices`` — precision of the weights, L2 normalisation). What the
graph is decides the precision that validation's thresholds come from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import onnx

from prtk.errors import PrtkInputError

NUMBER = (int, float)
# dotted key -> accepted types (None allowed where listed); lists of dicts are checked element-wise below
SIDECAR_SCHEMA: dict[str, tuple] = {
    "format": (str,), "prtk_version": (str,), "model": (str,), "weights": (dict,), "weights.sha256": (str,),
    "weights.source": (str,), "architecture": (dict,), "architecture.image_size": (int,),
    "architecture.num_patches": (int,), "pruning": (dict, type(None)), "pack": (dict, type(None)),
    "gflops": NUMBER, "precision": (str,), "opset": (int,), "input": (dict,), "input.name": (str,),
    "input.shape": (list,), "input.mean": (list,), "input.std": (list,), "outputs": (list,), "export": (dict,),
    "export.normalize": (bool,), "export.kept_indices": (bool,), "export.tokens": (bool,),
}
PRUNING_SCHEMA = {"scorer": (str,), "layer": (int,), "keep": NUMBER, "keep_count": (int,),
                  "num_learnable_tokens": (int,), "seed": (int, type(None))}
OUTPUT_SCHEMA = {"name": (str,), "shape": (list,), "dtype": (str,)}
NOT_EMBEDDED = ("files", "checks", "tensorrt")  # added to the sidecar after the graph's description was embedded
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16"}


@dataclass(frozen=True)
class GraphFacts:
    """What an ONNX graph is, read from the graph alone."""

    input: tuple[str, list, str]  # name, shape (symbolic dims as names), dtype
    outputs: list[tuple[str, list, str]]
    precision: str  # fp16 when its large floating-point weights are float16, else fp32
    l2_normalizes: bool  # has a ReduceL2 (F.normalize)
    description: dict | None  # the JSON under metadata_props["prtk"]


def check_sidecar_schema(sidecar: object, where: str | Path) -> dict:
    """Refuse a sidecar with a missing key or a value of the wrong type, naming the key; returns it."""
    if not isinstance(sidecar, dict):
        raise PrtkInputError(f"sidecar {where} is not a JSON object")
    _check_keys(sidecar, SIDECAR_SCHEMA, where, "")
    if sidecar["pruning"] is not None:
        _check_keys(sidecar["pruning"], PRUNING_SCHEMA, where, "pruning.")
    for index, output in enumerate(sidecar["outputs"]):
        if not isinstance(output, dict):
            raise PrtkInputError(f"sidecar {where}: outputs[{index}] must be an object")
        _check_keys(output, OUTPUT_SCHEMA, where, f"outputs[{index}].")
    if "tensorrt" in sidecar:
        _check_keys(sidecar, {"tensorrt": (dict,), "tensorrt.precision": (str,)}, where, "")
    return sidecar


def _check_keys(document: dict, schema: dict[str, tuple], where, prefix: str) -> None:
    for dotted, types in schema.items():
        value = document
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                raise PrtkInputError(f"sidecar {where} lacks the key {prefix}{dotted}: re-export the artifact")
            value = value[part]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise PrtkInputError(f"sidecar {where}: {prefix}{dotted} must be {expected}, got {json.dumps(value)}")


def load_graph(path: Path) -> onnx.ModelProto:
    """The graph without its external weights; a corrupt or truncated file is refused in one line."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf decode errors have no common base class
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PrtkInputError(f"cannot read ONNX graph {path}: {reason} (corrupt or truncated?)") from None


def graph_facts(model: onnx.ModelProto) -> GraphFacts:
    def value_facts(value) -> tuple[str, list, str]:
        tensor = value.type.tensor_type
        dims = [dim.dim_param if dim.dim_param else dim.dim_value for dim in tensor.shape.dim]
        return value.name, dims, ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type))

    if len(model.graph.input) != 1:
        raise PrtkInputError(f"graph has {len(model.graph.input)} inputs; a prtk export has one")
    large_float = [tensor.data_type for tensor in model.graph.initializer
                   if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
                   and math.prod(tensor.dims) >= 1024]
    fp16 = large_float.count(onnx.TensorProto.FLOAT16) > large_float.count(onnx.TensorProto.FLOAT)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    try:
        description = json.loads(metadata["prtk"]) if "prtk" in metadata else None
    except json.JSONDecodeError:
        description = None
    return GraphFacts(input=value_facts(model.graph.input[0]),
                      outputs=[value_facts(output) for output in model.graph.output],
                      precision="fp16" if fp16 else "fp32",
                      l2_normalizes=any(node.op_type == "ReduceL2" for node in model.graph.node),
                      description=description)


def check_graph_matches(sidecar: dict, facts: GraphFacts, graph_path: Path, sidecar_path: Path) -> None:
    """Refuse a sidecar that is not the graph's own description, or a description the graph contradicts."""
    if facts.description is None:
        raise PrtkInputError(f"{graph_path.name} carries no prtk description in its metadata: it was not written "
                             "by `prtk export`, or was re-saved without it")
    described = {key: value for key, value in sidecar.items() if key not in NOT_EMBEDDED}
    if described != facts.description:
        key = first_difference(described, facts.description)
        raise PrtkInputError(f"sidecar {sidecar_path.name} differs from the description embedded in "
                             f"{graph_path.name} (at {key}): it was edited or belongs to another export; "
                             "restore it or export again")
    contradictions = []
    want_input = (sidecar["input"]["name"], sidecar["input"]["shape"], sidecar["input"].get("dtype", "float32"))
    if facts.input != want_input:
        contradictions.append(f"input is {_show(facts.input)}, described as {_show(want_input)}")
    want_outputs = [(o["name"], o["shape"], o["dtype"]) for o in sidecar["outputs"]]
    if facts.outputs != want_outputs:
        contradictions.append(f"outputs are {', '.join(map(_show, facts.outputs))}, described as "
                              f"{', '.join(map(_show, want_outputs))}")
    if facts.precision != sidecar["precision"]:
        contradictions.append(f"weights are {facts.precision}, described as {sidecar['precision']}")
    if sidecar["export"]["normalize"] and not facts.l2_normalizes:
        contradictions.append("the embedding is described as L2-normalised but the graph does not normalise")
    if contradictions:
        raise PrtkInputError(f"{graph_path.name} does not match its own description: {contradictions[0]}")


def _show(value: tuple[str, list, str]) -> str:
    name, shape, dtype = value
    return f"{name} {dtype}[{', '.join(map(str, shape))}]"


def first_difference(left: object, right: object, where: str = "") -> str:
    """The dotted key of the first place where two JSON values differ."""
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right)):
            if left.get(key, KeyError) != right.get(key, KeyError):
                return first_difference(left.get(key), right.get(key), f"{where}.{key}" if where else key)
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for index, (a, b) in enumerate(zip(left, right)):
            if a != b:
                return first_difference(a, b, f"{where}[{index}]")
    return where or "the top level"

"""The description's JSON (``prtk-onnx/2``) as a file holds it: its schema (``check_sidecar_schema``: a key missing or
of the wrong type) and its consistency with the graph it describes (``check_graph_matches``: the sidecar must be the
description embedded in the graph's ``metadata_props``, and the graph must not contradict it: input name and shape,
output names and shapes, precision of the weights, L2 normalisation, opset, size and fused operators, quantization
mode, each stage's ``k``, its files, runtimes whose check failed). Only ``prtk.export.artifact`` reads it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from prtk.core.errors import PrtkInputError

from ..onnx_graph import GraphFacts
from ..options import graph_runtimes

FORMAT = "prtk-onnx/2"  # /2: the checks, and runtimes that passed them, are in the embedded description
EARLIER_FORMATS = ("prtk-onnx/1",)

NUMBER = (int, float)
# dotted key -> accepted types (None allowed where listed); lists of dicts are checked element-wise below
SIDECAR_SCHEMA: dict[str, tuple] = {
    "format": (str,), "prtk_version": (str,), "model": (str,), "weights": (dict,), "weights.sha256": (str,),
    "weights.source": (str,), "architecture": (dict,), "architecture.image_size": (int,),
    "architecture.num_patches": (int,), "pruning": (dict, type(None)), "pack": (dict, type(None)),
    "gflops": NUMBER, "precision": (str,), "opset": (int,), "optimize": (str,), "runtimes": (list,),
    "graph": (dict,), "quantization": (dict, type(None)), "checks": (list,), "files": (list,), "input": (dict,),
    "input.name": (str,), "input.shape": (list,), "input.mean": (list,), "input.std": (list,),
    "input.resize": (dict,), "input.resize.size": (int,), "input.resize.mode": (str,),
    "input.resize.interpolation": (str,), "outputs": (list,), "export": (dict,), "export.normalize": (bool,),
    "graph.nodes": (int,), "graph.blocks": (int,), "graph.nodes_per_block": (int,), "graph.fused_operators": (dict,),
    "export.kept_indices": (bool,), "export.tokens": (bool,), "export.fp16": (bool,), "export.opset": (int,),
}
PRUNING_SCHEMA = {"scorer": (str,), "layer": (int,), "keep": NUMBER, "keep_count": (int,),
                  "num_learnable_tokens": (int,), "seed": (int, type(None)), "block_cost_ratio": NUMBER}
OPTIONAL_SCHEMA = {"lineage": (dict,)}
STAGE_SCHEMA = {"block": (int,), "keep": NUMBER, "keep_count": (int,), "scorer": (str,)}  # pruning.later_stages[i]
OUTPUT_SCHEMA = {"name": (str,), "shape": (list,), "dtype": (str,)}
CHECK_SCHEMA = {"name": (str,), "passed": (bool,), "detail": (str,)}  # checks[i]
CONTROL_SCHEMA = {"float_nodes": (list,), "float_weight_share": NUMBER, "agreement_all_int8": NUMBER,
                  "agreement": NUMBER, "control_images": (int,), "max_agreement_drop": NUMBER,
                  "kept_identical_all_int8": (int, float, type(None)), "kept_identical": (int, float, type(None))}
NOT_EMBEDDED = ("files", "tensorrt")  # added to the sidecar after the graph's description was embedded
CHECKED_RUNTIMES = {"onnxruntime": ("onnxruntime",), "tensorrt": ("tensorrt",),
                    "onnx.checker": ("onnxruntime", "openvino", "tensorrt")}  # the runtimes a failed check rules out


def check_sidecar_schema(sidecar: object, where: str | Path) -> dict:
    """Refuse a sidecar with a missing key or a value of the wrong type, naming the key; returns it."""
    if not isinstance(sidecar, dict):
        raise PrtkInputError(f"sidecar {where} is not a JSON object")
    _check_keys(sidecar, SIDECAR_SCHEMA, where, "")
    _check_keys(sidecar, {key: types for key, types in OPTIONAL_SCHEMA.items() if key in sidecar}, where, "")
    if sidecar["pruning"] is not None:
        _check_keys(sidecar["pruning"], PRUNING_SCHEMA, where, "pruning.")
        stages = sidecar["pruning"].get("later_stages", [])  # absent in one-stage exports
        if not isinstance(stages, list) or not all(isinstance(stage, dict) for stage in stages):
            raise PrtkInputError(f"sidecar {where}: pruning.later_stages must be a list of objects")
        for index, stage in enumerate(stages):
            _check_keys(stage, STAGE_SCHEMA, where, f"pruning.later_stages[{index}].")
    for key, schema in (("outputs", OUTPUT_SCHEMA), ("checks", CHECK_SCHEMA)):
        for index, entry in enumerate(sidecar[key]):
            if not isinstance(entry, dict):
                raise PrtkInputError(f"sidecar {where}: {key}[{index}] must be an object")
            _check_keys(entry, schema, where, f"{key}[{index}].")
    if not all(isinstance(name, str) for name in [*sidecar["runtimes"], *sidecar["files"]]):
        raise PrtkInputError(f"sidecar {where}: runtimes and files must be lists of names")
    shape = sidecar["input"]["shape"]
    if len(shape) != 4 or not all(isinstance(size, int) for size in shape[1:]):
        raise PrtkInputError(f"sidecar {where}: input.shape must be [batch, 3, H, W], got {json.dumps(shape)}")
    if sidecar["pack"] is not None:
        _check_keys(sidecar["pack"], {"sha256": (str,)}, where, "pack.")
    if "accuracy_control" in (sidecar["quantization"] or {}):
        _check_keys(sidecar["quantization"], {"accuracy_control": (dict,)}, where, "quantization.")
        _check_keys(sidecar["quantization"]["accuracy_control"], CONTROL_SCHEMA, where,
                    "quantization.accuracy_control.")
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
    contradictions = _contradictions(sidecar, facts, graph_path)
    if contradictions:
        raise PrtkInputError(f"{graph_path.name} does not match its own description: {contradictions[0]}")


def _contradictions(sidecar: dict, facts: GraphFacts, graph_path: Path) -> list[str]:
    """What the graph (``facts``) says otherwise than its description ``sidecar``, and where the description
    contradicts itself."""
    found = []
    want_input = (sidecar["input"]["name"], sidecar["input"]["shape"], sidecar["input"].get("dtype", "float32"))
    if facts.input != want_input:
        found.append(f"input is {_show(facts.input)}, described as {_show(want_input)}")
    want_outputs = [(o["name"], o["shape"], o["dtype"]) for o in sidecar["outputs"]]
    if facts.outputs != want_outputs:
        found.append(f"outputs are {', '.join(map(_show, facts.outputs))}, described as "
                     f"{', '.join(map(_show, want_outputs))}")
    if facts.precision != sidecar["precision"]:
        found.append(f"weights are {facts.precision}, described as {sidecar['precision']}")
    if sidecar["export"]["fp16"] != (sidecar["precision"] == "fp16"):
        found.append(f"export.fp16 is {json.dumps(sidecar['export']['fp16'])} for a {sidecar['precision']} graph")
    normalize = sidecar["export"]["normalize"]
    if facts.embedding_normalized != normalize:
        found.append("the embedding is described as " + ("L2-normalised but the graph does not normalise it"
                                                         if normalize else "raw but the graph L2-normalises it"))
    embedding = next((o for o in sidecar["outputs"] if o["name"] == "embedding"), {})
    if embedding.get("l2_normalized") != normalize:
        found.append(f"outputs' embedding l2_normalized is {json.dumps(embedding.get('l2_normalized'))} but "
                     f"export.normalize is {json.dumps(normalize)}")
    if facts.opset != sidecar["opset"] or sidecar["export"]["opset"] != sidecar["opset"]:
        found.append(f"the graph is opset {facts.opset}, described as {sidecar['opset']}")
    if facts.structure.as_dict() != sidecar["graph"]:
        found.append(f"the graph's size and fused operators are {facts.structure.as_dict()}, described as "
                     f"{sidecar['graph']} (at graph.{first_difference(facts.structure.as_dict(), sidecar['graph'])})")
    mode = (sidecar["quantization"] or {}).get("mode")
    if facts.quantization != mode:
        found.append(f"the graph is {facts.quantization or 'not quantized'}, described as {mode or 'float'}")
    elif mode and facts.int8_nodes != sidecar["quantization"].get("int8_nodes"):
        found.append(f"the graph has {facts.int8_nodes} int8 weight GEMMs, described as "
                     f"{json.dumps(sidecar['quantization'].get('int8_nodes'))}")
    if bool(facts.custom_domains) != (sidecar["optimize"] == "O2"):
        found.append(f"the graph {'holds' if facts.custom_domains else 'has no'} fused operators of ONNX Runtime, "
                     f"described as optimize {sidecar['optimize']}")
    kept = any(output["name"] == "kept_indices" for output in sidecar["outputs"])
    if sidecar["export"]["kept_indices"] != kept and sidecar["pruning"] is not None:
        found.append(f"export.kept_indices is {json.dumps(sidecar['export']['kept_indices'])}, but the outputs "
                     f"{'hold' if kept else 'lack'} kept_indices")
    counts = keep_counts(sidecar["pruning"])
    if facts.keep_counts != counts:
        found.append(f"the graph keeps {_counts(facts.keep_counts)} patches, described as {_counts(counts)}")
    logits = next((o for o in sidecar["outputs"] if o["name"] == "logits"), None)
    if logits is not None and len(logits.get("classes", [])) != logits["shape"][-1]:
        found.append(f"logits has {logits['shape'][-1]} classes, described with {len(logits.get('classes', []))} "
                     "class names")
    if sidecar["files"][1:] != list(facts.external_files) or not sidecar["files"]:  # the graph may be renamed
        found.append(f"its weights are in {', '.join(facts.external_files) or 'the graph'}, described as in "
                     f"{', '.join(sidecar['files'][1:]) or 'the graph'}")
    try:
        possible = graph_runtimes(sidecar["optimize"], mode)
    except PrtkInputError:
        possible = ()
        found.append(f"optimize is {json.dumps(sidecar['optimize'])}, not a level prtk writes")
    beyond = [runtime for runtime in sidecar["runtimes"] if runtime not in possible]
    if beyond:
        found.append(f"runtimes lists {', '.join(beyond)}, which cannot run a graph of level {sidecar['optimize']}"
                     + (f" and {mode}" if mode else ""))
    for check in sidecar["checks"]:
        ruled_out = [r for r in CHECKED_RUNTIMES.get(check["name"], ()) if r in sidecar["runtimes"]]
        if not check["passed"] and ruled_out:
            found.append(f"runtimes lists {', '.join(ruled_out)}, but its {check['name']} check failed")
    return found


def keep_counts(pruning: dict | None) -> tuple[int, ...]:
    """The patches kept at each stage, as a description's ``pruning`` states them (none for the unpruned tower)."""
    if pruning is None:
        return ()
    return (pruning["keep_count"], *(stage["keep_count"] for stage in pruning.get("later_stages", [])))


def _counts(counts: tuple[int, ...]) -> str:
    return " then ".join(map(str, counts)) or "all"


def with_checks(description: dict, checks: list) -> dict:
    """``description`` with the export's ``checks`` (``CheckResult``) and, as its runtimes, only those whose
    checks did not fail: what the graph embeds and the sidecar repeats."""
    failed = {runtime for check in checks if not check.passed for runtime in CHECKED_RUNTIMES.get(check.name, ())}
    return description | {"runtimes": [r for r in description["runtimes"] if r not in failed],
                          "checks": [check.as_dict() for check in checks]}


def _show(value: tuple[str, list, str]) -> str:
    name, shape, dtype = value
    return f"{name} {dtype}[{', '.join(map(str, shape))}]"


def first_difference(left: object, right: object, where: str = "", close: bool = False) -> str:
    """The dotted key of the first place where two JSON values differ (``close``: numbers equal within 1e-9,
    relative, for facts one side recomputes)."""
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right)):
            if not json_equal(left.get(key, KeyError), right.get(key, KeyError), close):
                return first_difference(left.get(key), right.get(key), f"{where}.{key}" if where else key, close)
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for index, (a, b) in enumerate(zip(left, right)):
            if not json_equal(a, b, close):
                return first_difference(a, b, f"{where}[{index}]", close)
    return where or "the top level"


def json_equal(left: object, right: object, close: bool = False) -> bool:
    """Equal JSON values (``close``: numbers within 1e-9, relative; booleans are not numbers)."""
    numbers = (int, float)
    if close and isinstance(left, numbers) and isinstance(right, numbers) and not isinstance(left, bool) \
            and not isinstance(right, bool):
        return math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k], close) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b, close) for a, b in zip(left, right))
    return type(left) is type(right) and left == right if close else left == right


def value_at(document: object, dotted: str) -> object:
    """The value at a dotted key such as ``pruning.later_stages[0].keep_count`` (None where there is none)."""
    for part in dotted.replace("[", ".[").split("."):
        if part.startswith("["):
            index = int(part[1:-1])
            document = document[index] if isinstance(document, list) and index < len(document) else None
        elif part:
            document = document.get(part) if isinstance(document, dict) else None
    return document

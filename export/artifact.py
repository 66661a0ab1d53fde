"""The export artifact format (``prtk-onnx/2``): a graph's description written (``describe``, embedded in the
graph's ``metadata_props`` and beside it as a ``.json`` sidecar, with the export's checks and the runtimes that
passed them, ``with_checks``) and read back (``ArtifactFile.read``), checked against the graph it describes and
against a reference model (``ArtifactFile.check_reference``, ``ArtifactFile.reference``).

A sidecar is an editable file; the graph is what runs, and nothing in a description is trusted unchecked.
``check_sidecar_schema`` refuses a sidecar that lacks a key or has a wrong type; ``check_graph_matches`` one that
differs from the description embedded in the graph's ``metadata_props``, and a description that the graph itself
contradicts (input name and shape, output names and shapes, precision of the weights, L2 normalisation, opset,
size and fused operators, quantization mode, each stage's ``k``, its files, runtimes whose check failed). Against
the reference model: the preprocessing (the model's own transform), architecture, lineage, logit scale, and the
pruning facts and GFLOPs by the cost model. What the graph is decides the precision that validation's
thresholds come from.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prtk import __version__
from prtk.core.errors import PrtkInputError
from prtk.core.files import commit_lock, file_sha256, finish_commits
from prtk.models import LoadedClip, check_made_for, load_clip
from prtk.models.preprocessing import Preprocessing
from prtk.predictor.pack import load_pack
from prtk.pruning.cost import block_cost_ratio, gflops, vision_macs
from prtk.pruning.spec import TowerSpec, build_tower
from prtk.pruning.tower import PrunedVisionTower

from .deployed import INPUT_NAME, DeployedTower
from .levels import graph_runtimes
from .onnx_graph import BATCH, GraphFacts, GraphStructure, graph_facts, load_graph

if TYPE_CHECKING:
    from .exporter import ExportConfig

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
    "export.kept_indices": (bool,), "export.tokens": (bool,), "export.fp16": (bool,), "export.opset": (int,),
}
PRUNING_SCHEMA = {"scorer": (str,), "layer": (int,), "keep": NUMBER, "keep_count": (int,),
                  "num_learnable_tokens": (int,), "seed": (int, type(None))}
OPTIONAL_SCHEMA = {"lineage": (dict,)}
STAGE_SCHEMA = {"block": (int,), "keep": NUMBER, "keep_count": (int,), "scorer": (str,)}  # pruning.later_stages[i]
OUTPUT_SCHEMA = {"name": (str,), "shape": (list,), "dtype": (str,)}
CHECK_SCHEMA = {"name": (str,), "passed": (bool,), "detail": (str,)}  # checks[i]
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


def _value_at(document: object, dotted: str) -> object:
    """The value at a dotted key such as ``pruning.later_stages[0].keep_count`` (None where there is none)."""
    for part in dotted.replace("[", ".[").split("."):
        if part.startswith("["):
            index = int(part[1:-1])
            document = document[index] if isinstance(document, list) and index < len(document) else None
        elif part:
            document = document.get(part) if isinstance(document, dict) else None
    return document


def describe(clip: LoadedClip, config: ExportConfig, module: DeployedTower, pack, keep: float | None,
             structure: GraphStructure, quantization: dict | None = None) -> dict:
    """What an application needs to feed the graph, what validation needs to match it to its reference (and, for a
    structurally pruned model, its ``lineage``: parent model and weights, what was removed), and which runtimes
    can run it (``optimize``, ``runtimes``, ``graph``: its size and fused operators;
    ``quantization``: how an int8 graph was made, from ``prtk.export.quantize.quantize_graph``)."""
    spec = clip.spec
    tower = module.tower
    pruned = isinstance(tower, PrunedVisionTower)
    outputs = [{"name": "embedding", "shape": [BATCH, spec.output_dim], "dtype": "float32",
                "l2_normalized": config.normalize}]
    if module.classifier is not None:
        outputs.append({"name": "logits", "shape": [BATCH, len(config.classes)], "dtype": "float32",
                        "classes": list(config.classes), "logit_scale": module.logit_scale})
    if module.kept_indices:
        outputs.append({"name": "kept_indices", "shape": [BATCH, tower.kept_count], "dtype": "int64",
                        "meaning": "kept patch indices, row-major over the patch grid, CLS excluded, ascending"})
    lineage = {} if clip.lineage is None else {"lineage": clip.lineage}  # a structurally pruned model's parent
    return lineage | {
        "format": FORMAT,
        "prtk_version": __version__,
        "model": clip.name,
        "weights": clip.weights | {"sha256": clip.weights_sha256},
        "architecture": spec.as_dict(),
        "pruning": pruning_facts(spec, tower, config.tower_scorer,
                                 config.seed if config.tower_scorer == "fixed-random" else None, keep)
        if pruned else None,
        "pack": None if pack is None else {"sha256": file_sha256(config.pack), "ranking": pack.meta.get("ranking"),
                                           "training_data": pack.meta.get("training_data")},
        "gflops": tower_gflops(spec, tower, pack is not None),
        "precision": config.precision,
        "opset": config.graph_opset,
        "optimize": config.optimize,
        "runtimes": list(config.runtimes),
        "graph": structure.as_dict(),
        "quantization": quantization,
        "input": input_description(clip),
        "outputs": outputs,
        "export": {key: value for key, value in asdict(config).items()
                   if key in ("normalize", "kept_indices", "tokens", "fp16")}
        | {"opset": config.graph_opset},
    }


def input_description(clip: LoadedClip) -> dict:
    """The description's ``input``: the graph's input tensor and the preprocessing of ``clip``'s own transform."""
    size = clip.spec.image_size
    return {"name": INPUT_NAME, "shape": [BATCH, 3, size, size], "dtype": "float32"} | clip.preprocessing.description()


def pruning_facts(spec, tower: PrunedVisionTower, scorer: str, seed: int | None, keep: float) -> dict:
    """The description's ``pruning``: ``scorer`` (and the ``seed`` of fixed-random), layer, ``keep`` and k of the
    first stage, learnable tokens, the cost model's block ratio; ``fuse_dropped`` and ``later_stages`` only where
    the tower has them (one-stage descriptions stay as they were)."""
    tokens = tower.num_learnable_tokens
    facts = {"scorer": scorer, "seed": seed, "layer": tower.layer, "keep": keep, "keep_count": tower.keep_count,
             "num_learnable_tokens": tokens,
             "block_cost_ratio": block_cost_ratio(spec, keep, tower.layer, tokens, tower.fuse_dropped,
                                                  tower.later_stages)}
    if tower.fuse_dropped:
        facts["fuse_dropped"] = True
    if tower.later_stages:
        facts["later_stages"] = [{"block": block, "keep": stage_keep, "keep_count": count,
                                  "scorer": tower.stage_scorer.name}
                                 for (block, stage_keep), count in zip(tower.later_stages, tower.stage_counts[1:])]
    return facts


def zero_shot_classifier(clip: LoadedClip, classes: tuple[str, ...]) -> torch.Tensor | None:
    """The zero-shot classifier [C,E] over ``classes`` with ``clip``'s text tower, as an export bakes it in (None
    without classes)."""
    from prtk.models.zeroshot import class_embeddings

    if not classes:
        return None
    with torch.no_grad():
        return class_embeddings(clip.model, clip.tokenizer, list(classes)).clone()


def tower_gflops(spec, tower, with_predictor: bool) -> float:
    """GFLOPs per image of ``tower`` (a ``PrunedVisionTower`` or the unpruned visual), by the cost model, with the
    pack's predictor where it scores the patches."""
    if not isinstance(tower, PrunedVisionTower):
        return gflops(vision_macs(spec))
    macs = vision_macs(spec, tower.keep, tower.layer, tower.num_learnable_tokens, tower.fuse_dropped,
                       tower.later_stages)
    if with_predictor:
        from prtk.predictor.model import predictor_macs

        macs += predictor_macs(spec, tower.scorer.predictor.config)
    return gflops(macs)


@dataclass(frozen=True)
class ArtifactFile:
    """A deployed file, its sidecar (checked against the file) and the precision it computes in.

    For an ONNX graph the precision is the graph's own (its weights' dtype); an engine's is its sidecar's,
    as TensorRT cannot be read here.
    """

    path: Path
    sidecar: dict
    precision: str

    @classmethod
    def read(cls, path: str | Path) -> ArtifactFile:
        """The artifact at ``path`` and its sidecar, read under the folder's commit lock (never a pair half moved
        into place) after completing any interrupted commit; refused in one line unless the sidecar is the graph's
        own description and the graph does not contradict it."""
        path = Path(path)
        with commit_lock(path.parent):
            finish_commits(path.parent)
            if not path.is_file():
                raise PrtkInputError(f"artifact not found: {path}")
            if path.suffix not in (".onnx", ".engine"):
                raise PrtkInputError(f"artifact must be an .onnx or .engine file, got {path.name}")
            sidecar_path = path.with_suffix(".json")
            try:
                sidecar = json.loads(sidecar_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                raise PrtkInputError(f"{path.name} has no readable sidecar {sidecar_path.name} "
                                     "(made by `prtk export`)") from None
            if isinstance(sidecar, dict) and sidecar.get("format") in EARLIER_FORMATS:
                raise PrtkInputError(f"{sidecar_path} is an earlier prtk's description ({sidecar['format']}), whose "
                                     "checks are not in the graph: export it again")
            if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
                raise PrtkInputError(f"{sidecar_path} is not a prtk export sidecar")
            check_sidecar_schema(sidecar, sidecar_path)
            if path.suffix == ".engine":
                return cls(path, sidecar, sidecar["tensorrt"]["precision"] if "tensorrt" in sidecar
                           else sidecar["precision"])
            facts = graph_facts(load_graph(path))
        check_graph_matches(sidecar, facts, path, sidecar_path)
        return cls(path, sidecar, facts.precision)

    @property
    def inputs(self) -> dict[str, Path]:
        """The files the artifact consists of (``{role: path}``), which no output may replace."""
        files = {"ARTIFACT": self.path, "sidecar": self.path.with_suffix(".json")}
        return files | {"weights file": self.path.with_name(name) for name in self.sidecar["files"][1:]}

    def output_names(self) -> list[str]:
        return [output["name"] for output in self.sidecar["outputs"]]

    def load_options(self) -> dict:
        """``load_clip`` keyword arguments for the weights the artifact was exported from."""
        weights = self.sidecar["weights"]
        source = weights["source"]
        if source == "hub":
            return {"pretrained": weights["pretrained"]}
        if source == "checkpoint":
            return {"checkpoint": weights["path"]}
        if source == "random":
            return {"random_weights": True, "seed": weights["seed"]}
        return {}

    def tower_spec(self) -> TowerSpec | None:
        """The pruned tower the graph holds, as its description records it (None: the unpruned tower)."""
        pruning = self.sidecar["pruning"]
        if pruning is None:
            return None
        stages = pruning.get("later_stages", [])
        later = tuple((stage["block"], stage["keep"]) for stage in stages)
        return TowerSpec(keep=pruning["keep"], scorer=pruning["scorer"], layer=pruning["layer"],
                         tokens=self.sidecar["export"]["tokens"], seed=pruning["seed"] or 0, later_stages=later,
                         stage_scorer=stages[0]["scorer"] if stages else "cls-attention",
                         fuse_dropped=pruning.get("fuse_dropped", False))

    def preprocessing(self) -> Preprocessing:
        """The preprocessing the description states (proven equal to the model's own by ``check_reference``)."""
        return Preprocessing.from_description(self.sidecar["input"])

    def reference(self, clip: LoadedClip, pack_path: str | None) -> DeployedTower:
        """The PyTorch module the graph was exported from, rebuilt over ``clip`` (and the pack at ``pack_path``)
        after ``check_reference``: same tower, normalisation and outputs (the zero-shot head of the described
        classes at ``clip``'s logit scale, kept indices); refused in one line when the description's pruning facts
        or GFLOPs are not that tower's."""
        self.check_reference(clip, pack_path)
        spec = self.tower_spec()
        pack = load_pack(pack_path) if pack_path is not None else None
        if pack is not None:
            recorded = {"ranking": pack.meta.get("ranking"), "training_data": pack.meta.get("training_data")}
            self._refuse_difference("pack", {key: self.sidecar["pack"].get(key) for key in recorded}, recorded,
                                    f"{pack_path} records")
        classifier = self.classifier(clip)
        language = classifier if spec is not None and spec.needs_language else None
        tower = clip.visual if spec is None else build_tower(clip, spec, pack, language)
        if spec is not None:
            pruning = self.sidecar["pruning"]
            self._refuse_difference("pruning", pruning, pruning_facts(clip.spec, tower, pruning["scorer"],
                                                                      pruning["seed"], pruning["keep"]),
                                    "its reference tower has")
        self._refuse_difference("gflops", self.sidecar["gflops"], tower_gflops(clip.spec, tower, pack is not None),
                                "the cost model gives")
        return DeployedTower(tower, self.sidecar["export"]["normalize"], classifier, clip.logit_scale,
                             "kept_indices" in self.output_names()).eval()

    def classifier(self, clip: LoadedClip) -> torch.Tensor | None:
        """The zero-shot classifier [C,E] baked into the graph (its ``logits`` output's classes), rebuilt over
        ``clip``'s text tower; None without one."""
        logits = next((output for output in self.sidecar["outputs"] if output["name"] == "logits"), None)
        return zero_shot_classifier(clip, tuple(logits["classes"]) if logits else ())

    def reference_model(self) -> LoadedClip:
        """The model and weights the artifact was exported from, as its sidecar names them."""
        return load_clip(self.sidecar["model"], **self.load_options())

    def check_reference(self, clip: LoadedClip, pack_path: str | None) -> None:
        """Refuse a reference that is not the one the artifact was made from (model, weights, input size, pack), and
        a description that is not true of it: the preprocessing (against ``clip``'s own transform, also on a probe
        image), the architecture, the lineage, the logit scale."""
        sidecar = self.sidecar
        check_made_for(self.path.name, sidecar["model"], sidecar["weights"]["sha256"], sidecar["weights"], clip)
        size = sidecar["input"]["shape"][2]
        if size != clip.spec.image_size:
            raise PrtkInputError(f"{self.path.name} takes {size}px images, {clip.name} {clip.spec.image_size}px")
        self._refuse_difference("input", sidecar["input"], input_description(clip), f"{clip.name}'s own transform has")
        difference = self.preprocessing().differs_from(clip.preprocess)
        if difference > 1e-6:
            raise PrtkInputError(f"{clip.name}'s own transform is not the preprocessing {self.path.name} describes "
                                 f"(a probe image differs by {difference:.3g}): the description cannot say how to "
                                 "feed this model")
        self._refuse_difference("architecture", sidecar["architecture"], clip.spec.as_dict(), f"{clip.name} has")
        self._refuse_difference("lineage", sidecar.get("lineage"), clip.lineage, f"{clip.name} has")
        logits = next((output for output in sidecar["outputs"] if output["name"] == "logits"), None)
        if logits is not None:
            self._refuse_difference("outputs.logits.logit_scale", logits.get("logit_scale"), clip.logit_scale,
                                    f"{clip.name} has")
        pack = sidecar.get("pack")
        if pack is None and pack_path is not None:
            raise PrtkInputError(f"{self.path.name} was exported without a pack; drop --pack")
        if pack is not None:
            if pack_path is None:
                raise PrtkInputError(f"{self.path.name} was exported from a pack: pass it with --pack FILE")
            if not Path(pack_path).is_file():
                raise PrtkInputError(f"pack not found: {pack_path}")
            if file_sha256(Path(pack_path)) != pack["sha256"]:
                raise PrtkInputError(f"{pack_path} is not the pack {self.path.name} was exported from "
                                     f"(sha256 {pack['sha256'][:12]})")

    def _refuse_difference(self, key: str, described: object, actual: object, source: str) -> None:
        """Refuse, naming the first differing key under ``key``, a described fact that the reference says otherwise
        (numbers compared within 1e-9, relative)."""
        if json_equal(described, actual, close=True):
            return
        where = first_difference(described, actual, close=True)
        if where != "the top level":
            key += where if where.startswith("[") else f".{where}"
            described, actual = _value_at(described, where), _value_at(actual, where)
        raise PrtkInputError(f"{self.path.name} describes {key} as {json.dumps(described)}, but {source} "
                             f"{json.dumps(actual)}: its description was edited, or belongs to another model; export "
                             "again")

"""The export artifact format (``prtk-onnx/1``): a graph's description written (``describe``, embedded in the
graph's ``metadata_props`` and beside it as a ``.json`` sidecar) and read back (``ArtifactFile.read``), checked
against the graph it describes and against a reference model (``ArtifactFile.check_reference``).

A sidecar is an editable file; the graph is what runs. ``check_sidecar_schema`` refuses a sidecar that lacks
a key or has a wrong type; ``check_graph_matches`` one that differs from the description embedded in the
graph's ``metadata_props``, and a description that the graph itself contradicts (input name and shape,
output names and shapes — ``k`` of ``kept_indices`` — precision of the weights, L2 normalisation). What the
graph is decides the precision that validation's thresholds come from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prtk import __version__
from prtk.core.errors import PrtkInputError
from prtk.core.files import file_sha256, finish_commits
from prtk.models import LoadedClip, check_made_for, load_clip
from prtk.predictor.pack import load_pack
from prtk.pruning.cost import block_cost_ratio, gflops, vision_macs
from prtk.pruning.spec import TowerSpec, build_tower
from prtk.pruning.tower import PrunedVisionTower

from .deployed import INPUT_NAME, DeployedTower
from .onnx_graph import BATCH, GraphFacts, GraphStructure, graph_facts, load_graph

if TYPE_CHECKING:
    from .exporter import ExportConfig

FORMAT = "prtk-onnx/1"

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
OPTIONAL_SCHEMA = {"optimize": (str,), "runtimes": (list,), "graph": (dict,), "quantization": (dict, type(None)),
                   "lineage": (dict,)}
STAGE_SCHEMA = {"block": (int,), "keep": NUMBER, "keep_count": (int,), "scorer": (str,)}  # pruning.later_stages[i]
OUTPUT_SCHEMA = {"name": (str,), "shape": (list,), "dtype": (str,)}
NOT_EMBEDDED = ("files", "checks", "tensorrt")  # added to the sidecar after the graph's description was embedded


def check_sidecar_schema(sidecar: object, where: str | Path) -> dict:
    """Refuse a sidecar with a missing key or a value of the wrong type, naming the key; returns it."""
    if not isinstance(sidecar, dict):
        raise PrtkInputError(f"sidecar {where} is not a JSON object")
    _check_keys(sidecar, SIDECAR_SCHEMA, where, "")
    if sidecar["pruning"] is not None:
        _check_keys(sidecar["pruning"], PRUNING_SCHEMA, where, "pruning.")
        stages = sidecar["pruning"].get("later_stages", [])  # absent in one-stage exports
        if not isinstance(stages, list) or not all(isinstance(stage, dict) for stage in stages):
            raise PrtkInputError(f"sidecar {where}: pruning.later_stages must be a list of objects")
        for index, stage in enumerate(stages):
            _check_keys(stage, STAGE_SCHEMA, where, f"pruning.later_stages[{index}].")
    for index, output in enumerate(sidecar["outputs"]):
        if not isinstance(output, dict):
            raise PrtkInputError(f"sidecar {where}: outputs[{index}] must be an object")
        _check_keys(output, OUTPUT_SCHEMA, where, f"outputs[{index}].")
    if "tensorrt" in sidecar:
        _check_keys(sidecar, {"tensorrt": (dict,), "tensorrt.precision": (str,)}, where, "")
    optional = {key: types for key, types in OPTIONAL_SCHEMA.items() if key in sidecar}  # absent in older exports
    _check_keys(sidecar, optional, where, "")
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
    if facts.custom_domains and "tensorrt" in sidecar.get("runtimes", ["tensorrt"]):
        contradictions.append(f"the graph holds {', '.join(facts.custom_domains)} operators, described as "
                              "portable to TensorRT")
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


def describe(clip: LoadedClip, config: ExportConfig, module: DeployedTower, pack, keep: float | None,
             structure: GraphStructure, quantization: dict | None = None) -> dict:
    """What an application needs to feed the graph, what validation needs to match it to its reference (and, for a
    structurally pruned model, its ``lineage``: parent model and weights, what was removed), and which runtimes
    can run it (``optimize``, ``runtimes``, ``graph``: its size and fused operators;
    ``quantization``: how an int8 graph was made, from ``prtk.export.quantize.quantize_graph``)."""
    spec = clip.spec
    tower = module.tower
    pruned = isinstance(tower, PrunedVisionTower)
    preprocess = clip.preprocess_config
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
        "pruning": _pruning_facts(spec, config, tower, pack, keep) if pruned else None,
        "pack": None if pack is None else {"sha256": file_sha256(config.pack), "ranking": pack.meta.get("ranking"),
                                           "training_data": pack.meta.get("training_data")},
        "gflops": tower_gflops(spec, tower, pack is not None),
        "precision": config.precision,
        "opset": config.graph_opset,
        "optimize": config.optimize,
        "runtimes": list(config.runtimes),
        "graph": structure.as_dict(),
        "quantization": quantization,
        "input": {"name": INPUT_NAME, "shape": [BATCH, 3, spec.image_size, spec.image_size], "dtype": "float32",
                  "layout": "NCHW", "color": "RGB", "scale": "pixel / 255, then (x - mean) / std per channel",
                  "mean": list(preprocess.get("mean", ())), "std": list(preprocess.get("std", ())),
                  "resize": {"size": spec.image_size, "mode": preprocess.get("resize_mode", "shortest"),
                             "interpolation": preprocess.get("interpolation", "bicubic"),
                             "crop": "center"}},
        "outputs": outputs,
        "export": {key: value for key, value in asdict(config).items()
                   if key in ("normalize", "kept_indices", "tokens", "fp16")}
        | {"opset": config.graph_opset},
    }


def _pruning_facts(spec, config: ExportConfig, tower: PrunedVisionTower, pack, keep: float) -> dict:
    """The sidecar's ``pruning``: scorer, layer, keep and k of the first stage, learnable tokens, the cost model's
    block ratio; ``fuse_dropped`` and ``later_stages`` only where the tower has them (one-stage sidecars stay as
    they were)."""
    tokens = tower.num_learnable_tokens
    facts = {"scorer": "predictor" if pack is not None else config.scorer,
             "seed": config.seed if config.scorer == "fixed-random" and pack is None else None,
             "layer": tower.layer, "keep": keep, "keep_count": tower.keep_count, "num_learnable_tokens": tokens,
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
        path = Path(path)
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
        return files | {"weights file": self.path.with_name(name) for name in self.sidecar.get("files", [])[1:]}

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

    def reference(self, clip: LoadedClip, pack_path: str | None) -> DeployedTower:
        """The PyTorch module the graph was exported from, rebuilt over ``clip`` (and the pack at ``pack_path``)
        after ``check_reference``: same tower, same normalisation, kept indices where the tower prunes."""
        self.check_reference(clip, pack_path)
        spec = self.tower_spec()
        pack = load_pack(pack_path) if pack_path is not None else None
        classifier = self.classifier(clip) if spec is not None and spec.needs_language else None
        tower = clip.visual if spec is None else build_tower(clip, spec, pack, classifier)
        return DeployedTower(tower, normalize=self.sidecar["export"]["normalize"]).eval()

    def classifier(self, clip: LoadedClip) -> torch.Tensor | None:
        """The zero-shot classifier [C,E] baked into the graph (its ``logits`` output's classes), rebuilt over
        ``clip``'s text tower; None without one."""
        logits = next((output for output in self.sidecar["outputs"] if output["name"] == "logits"), None)
        return zero_shot_classifier(clip, tuple(logits["classes"]) if logits else ())

    def reference_model(self) -> LoadedClip:
        """The model and weights the artifact was exported from, as its sidecar names them."""
        return load_clip(self.sidecar["model"], **self.load_options())

    def check_reference(self, clip: LoadedClip, pack_path: str | None) -> None:
        """Refuse a reference that is not the one the artifact was made from: model, weights, input, pack."""
        sidecar = self.sidecar
        check_made_for(self.path.name, sidecar["model"], sidecar["weights"]["sha256"], sidecar["weights"], clip)
        size = sidecar["input"]["shape"][2]
        if size != clip.spec.image_size:
            raise PrtkInputError(f"{self.path.name} takes {size}px images, {clip.name} {clip.spec.image_size}px")
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

"""The description an export writes (``describe``): the facts of a graph, from the model, the export's settings and
the module traced, as the JSON that ``prtk.export.artifact.schema`` defines."""

from __future__ import annotations

from dataclasses import asdict

import torch

from prtk import __version__
from prtk.core.files import file_sha256
from prtk.models import LoadedClip
from prtk.pruning.cost import gflops, vision_macs
from prtk.pruning.facts import PruningFacts, StageFacts, tower_macs
from prtk.pruning.tower import PrunedVisionTower

from ..config import ExportConfig
from ..deployed import INPUT_NAME, DeployedTower
from ..onnx_graph import BATCH, GraphStructure
from .schema import FORMAT


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
    seed = config.seed if config.tower_scorer == "fixed-random" else None
    return lineage | {
        "format": FORMAT,
        "prtk_version": __version__,
        "model": clip.name,
        "weights": clip.weights | {"sha256": clip.weights_sha256},
        "architecture": spec.as_dict(),
        "pruning": pruning_description(PruningFacts.of(tower, config.tower_scorer, seed)) if pruned else None,
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


def pruning_description(facts: PruningFacts) -> dict:
    """The description's ``pruning``: the first stage's scorer (and the ``seed`` of fixed-random), layer, keep and
    k, learnable tokens, the cost model's block ratio; ``fuse_dropped`` and ``later_stages`` only where the tower
    has them (one-stage descriptions stay as they were)."""
    described = {"scorer": facts.scorer, "seed": facts.seed, "layer": facts.layer, "keep": facts.keep,
                 "keep_count": facts.keep_count, "num_learnable_tokens": facts.learnable_tokens,
                 "block_cost_ratio": facts.block_cost_ratio}
    if facts.fuse_dropped:
        described["fuse_dropped"] = True
    if facts.later_stages:
        described["later_stages"] = [asdict(stage) for stage in facts.later_stages]
    return described


def pruning_facts(described: dict | None) -> PruningFacts | None:
    """``pruning_description`` read back (None: the unpruned tower)."""
    if described is None:
        return None
    return PruningFacts(layer=described["layer"], keep=described["keep"], keep_count=described["keep_count"],
                        scorer=described["scorer"], seed=described["seed"],
                        fuse_dropped=described.get("fuse_dropped", False),
                        learnable_tokens=described["num_learnable_tokens"],
                        block_cost_ratio=described["block_cost_ratio"],
                        later_stages=tuple(StageFacts(stage["block"], stage["keep"], stage["keep_count"],
                                                      stage["scorer"])
                                           for stage in described.get("later_stages", [])))


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
    macs = tower_macs(tower)
    if with_predictor:
        from prtk.predictor.model import predictor_macs

        macs += predictor_macs(spec, tower.scorer.predictor.config)
    return gflops(macs)

"""``Artifact``: a deployed file (an ONNX graph, or a TensorRT engine built from one) and its description, read
and checked once, as typed fields; the questions every other module asks of an artifact are answered here."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prtk.core.errors import PrtkInputError
from prtk.core.files import commit_lock, file_sha256, finish_commits
from prtk.models import LoadedClip, check_made_for, load_clip
from prtk.models.preprocessing import Preprocessing
from prtk.predictor.pack import load_pack
from prtk.pruning.facts import PruningFacts
from prtk.pruning.spec import TowerSpec, build_tower

from ..checks import CheckResult
from ..deployed import DeployedTower
from ..onnx_graph import GraphStructure, graph_facts, load_graph
from .describe import input_description, pruning_description, pruning_facts, tower_gflops, zero_shot_classifier
from .schema import (EARLIER_FORMATS, FORMAT, check_graph_matches, check_sidecar_schema, first_difference,
                     json_equal, value_at)

GRAPH_BACKENDS = ("onnxruntime", "openvino")  # runtimes that run an ONNX graph in Python
PROGRAM_BACKENDS = {"cpp-openvino": "openvino"}  # the compiled prtk-embed program -> the runtime it runs graphs on


@dataclass(frozen=True)
class EngineFacts:
    """What TensorRT built (an engine's sidecar adds it to its ONNX graph's description)."""

    precision: str
    onnx: str  # the graph it was built from
    version: str


@dataclass(frozen=True)
class Artifact:
    """A graph or engine at ``path`` and what its description says, typed: the model and weights it was exported
    from, the pruning (None: the unpruned tower), GFLOPs per image by the cost model, the graph's precision
    (``graph_precision``: fp32, fp16 or int8) and quantization mode, level, the runtimes whose export checks passed,
    size and fused operators, the checks, its input and outputs, and for an engine what TensorRT built."""

    path: Path
    model: str
    weights_sha256: str
    pack_sha256: str | None
    pruning: PruningFacts | None
    gflops: float
    graph_precision: str
    quantization_mode: str | None
    optimize: str
    runtimes: tuple[str, ...]
    graph: GraphStructure
    checks: tuple[CheckResult, ...]
    files: tuple[str, ...]
    input_name: str
    image_size: int
    output_names: tuple[str, ...]
    normalized: bool
    tokens: bool
    lineage: dict | None
    engine: EngineFacts | None
    _description: dict = field(repr=False, compare=False)

    @classmethod
    def from_description(cls, path: str | Path, description: dict) -> Artifact:
        """The artifact at ``path`` that ``description`` (a sidecar, schema-checked) describes."""
        engine, pack, graph = description.get("tensorrt"), description["pack"], description["graph"]
        return cls(path=Path(path), model=description["model"], weights_sha256=description["weights"]["sha256"],
                   pack_sha256=pack["sha256"] if pack else None, pruning=pruning_facts(description["pruning"]),
                   gflops=description["gflops"], graph_precision=description["precision"],
                   quantization_mode=(description["quantization"] or {}).get("mode"),
                   optimize=description["optimize"], runtimes=tuple(description["runtimes"]),
                   graph=GraphStructure(graph["nodes"], graph["blocks"], graph["nodes_per_block"],
                                        graph["fused_operators"]),
                   checks=tuple(CheckResult(check["name"], check["passed"], check["detail"])
                                for check in description["checks"]),
                   files=tuple(description["files"]), input_name=description["input"]["name"],
                   image_size=description["input"]["shape"][2],
                   output_names=tuple(output["name"] for output in description["outputs"]),
                   normalized=description["export"]["normalize"], tokens=description["export"]["tokens"],
                   lineage=description.get("lineage"),
                   engine=None if engine is None else EngineFacts(engine["precision"], engine.get("onnx", ""),
                                                                 engine.get("version", "")),
                   _description=description)

    @classmethod
    def read(cls, path: str | Path) -> Artifact:
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
                return cls.from_description(path, sidecar)
            facts = graph_facts(load_graph(path))
        check_graph_matches(sidecar, facts, path, sidecar_path)
        return cls.from_description(path, sidecar)

    @property
    def is_engine(self) -> bool:
        """A TensorRT engine (by its file; ``engine`` holds what its sidecar says TensorRT built)."""
        return self.path.suffix == ".engine"

    @property
    def precision(self) -> str:
        """What it computes in: the graph's weights' precision (proven by ``read``), an engine's TensorRT
        precision."""
        return self.engine.precision if self.engine is not None else self.graph_precision

    @property
    def variant(self) -> str:
        """``int8-dynamic`` / ``int8-static`` for a quantized graph (and an engine built from one), else the
        precision: what file names and benchmarks call it."""
        return self.quantization_mode or self.precision

    @property
    def keep(self) -> float | None:
        """The first stage's keep ratio (None: the unpruned tower)."""
        return None if self.pruning is None else self.pruning.keep

    @property
    def bound(self) -> float:
        """The cost model's speedup bound over the unpruned tower of the same model (1 for the unpruned tower)."""
        return 1.0 if self.pruning is None else self.pruning.bound

    @property
    def origin(self) -> tuple[str, str, str | None]:
        """Model, weights and pack: what artifacts share when one was exported beside the other."""
        return self.model, self.weights_sha256, self.pack_sha256

    @property
    def schedule(self) -> str:
        """The pruning as one label: ``full``, ``0.6``, or a staged schedule ``0.7@3 > 0.7@5``."""
        if self.pruning is None:
            return "full"
        if not self.pruning.later_stages:
            return f"{self.pruning.keep:g}"
        stages = [(self.pruning.layer, self.pruning.keep), *self.pruning.stages]
        return " > ".join(f"{keep:g}@{block}" for block, keep in stages)

    def runs_on(self, backend: str) -> bool:
        """Whether ``backend`` runs it: an engine only TensorRT; a graph the runtimes its description lists (those of
        its level and quantization whose export checks passed; the C++ program's runtime for ``PROGRAM_BACKENDS``),
        and torch the PyTorch module of an fp32 graph."""
        if self.is_engine or backend == "tensorrt":
            return self.is_engine and backend == "tensorrt"
        if backend == "torch":
            return self.precision == "fp32"
        return PROGRAM_BACKENDS.get(backend, backend) in self.runtimes

    def failed_check(self, name: str) -> CheckResult | None:
        return next((check for check in self.checks if check.name == name and not check.passed), None)

    @property
    def inputs(self) -> dict[str, Path]:
        """The files the artifact consists of (``{role: path}``), which no output may replace."""
        files = {"ARTIFACT": self.path, "sidecar": self.path.with_suffix(".json")}
        return files | {"weights file": self.path.with_name(name) for name in self.files[1:]}

    def description(self) -> dict:
        """The description as JSON (a copy), for ``--json`` documents."""
        return copy.deepcopy(self._description)

    def pruning_json(self) -> dict | None:
        """The description's ``pruning`` as JSON (a copy; None for the unpruned tower), for reports."""
        return copy.deepcopy(self._description["pruning"])

    def accuracy_control_summary(self) -> str | None:
        """One line on what ``--max-agreement-drop`` kept float and what that cost (None without it)."""
        control = (self._description["quantization"] or {}).get("accuracy_control")
        if control is None:
            return None
        kept = control["float_nodes"]
        patches = ("" if control["kept_identical"] is None else f", kept patches identical on "
                   f"{control['kept_identical_all_int8']:.2f}% -> {control['kept_identical']:.2f}%")
        return (f"accuracy control: {len(kept)} weight GEMMs kept float ({100 * control['float_weight_share']:.1f}% "
                f"of the quantized weights{': ' + ', '.join(kept) if kept else ''}); against the float graph on "
                f"{control['control_images']} control images, all int8 -> controlled: prediction agreement "
                f"{control['agreement_all_int8']:.2f}% -> {control['agreement']:.2f}%{patches} (bound: a drop of "
                f"{control['max_agreement_drop']:g} points)")

    def engine_description(self, engine_name: str, tensorrt: dict) -> dict:
        """The sidecar of the engine ``engine_name`` built from this graph: its description with TensorRT's facts
        (``tensorrt``: version, GPU, builder, precision, batch profile, ...)."""
        return self.description() | {"files": [engine_name], "tensorrt": tensorrt | {"onnx": self.path.name}}

    def load_options(self) -> dict:
        """``load_clip`` keyword arguments for the weights the artifact was exported from."""
        weights = self._description["weights"]
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
        pruning = self.pruning
        if pruning is None:
            return None
        stages = pruning.later_stages
        return TowerSpec(keep=pruning.keep, scorer=pruning.scorer, layer=pruning.layer, tokens=self.tokens,
                         seed=pruning.seed or 0, later_stages=pruning.stages,
                         stage_scorer=stages[0].scorer if stages else "cls-attention",
                         fuse_dropped=pruning.fuse_dropped)

    def preprocessing(self) -> Preprocessing:
        """The preprocessing the description states (proven equal to the model's own by ``check_reference``)."""
        return Preprocessing.from_description(self._description["input"])

    def load_reference_model(self) -> LoadedClip:
        """The model and weights the artifact was exported from, as its description names them."""
        return load_clip(self.model, **self.load_options())

    def reference_tower(self, clip: LoadedClip, pack_path: str | None) -> DeployedTower:
        """The PyTorch module the graph was exported from, rebuilt over ``clip`` (and the pack at ``pack_path``)
        after ``check_reference``: same tower, normalisation and outputs (the zero-shot head of the described
        classes at ``clip``'s logit scale, kept indices); refused in one line when the description's pruning facts
        or GFLOPs are not that tower's."""
        self.check_reference(clip, pack_path)
        spec = self.tower_spec()
        pack = load_pack(pack_path) if pack_path is not None else None
        if pack is not None:
            recorded = {"ranking": pack.meta.get("ranking"), "training_data": pack.meta.get("training_data")}
            self._refuse_difference("pack", {key: self._description["pack"].get(key) for key in recorded}, recorded,
                                    f"{pack_path} records")
        classifier = self.classifier(clip)
        language = classifier if spec is not None and spec.needs_language else None
        tower = clip.visual if spec is None else build_tower(clip, spec, pack, language)
        if spec is not None:
            rebuilt = PruningFacts.of(tower, self.pruning.scorer, self.pruning.seed)
            self._refuse_difference("pruning", self._description["pruning"], pruning_description(rebuilt),
                                    "its reference tower has")
        self._refuse_difference("gflops", self.gflops, tower_gflops(clip.spec, tower, pack is not None),
                                "the cost model gives")
        return DeployedTower(tower, self.normalized, classifier, clip.logit_scale,
                             "kept_indices" in self.output_names).eval()

    def classifier(self, clip: LoadedClip) -> torch.Tensor | None:
        """The zero-shot classifier [C,E] baked into the graph (its ``logits`` output's classes), rebuilt over
        ``clip``'s text tower; None without one."""
        logits = self._output("logits")
        return zero_shot_classifier(clip, tuple(logits["classes"]) if logits else ())

    def check_reference(self, clip: LoadedClip, pack_path: str | None) -> None:
        """Refuse a reference that is not the one the artifact was made from (model, weights, input size, pack), and
        a description that is not true of it: the preprocessing (against ``clip``'s own transform, also on a probe
        image), the architecture, the lineage, the logit scale."""
        described = self._description
        check_made_for(self.path.name, self.model, self.weights_sha256, described["weights"], clip)
        if self.image_size != clip.spec.image_size:
            raise PrtkInputError(f"{self.path.name} takes {self.image_size}px images, {clip.name} "
                                 f"{clip.spec.image_size}px")
        self._refuse_difference("input", described["input"], input_description(clip),
                                f"{clip.name}'s own transform has")
        difference = self.preprocessing().differs_from(clip.preprocess)
        if difference > 1e-6:
            raise PrtkInputError(f"{clip.name}'s own transform is not the preprocessing {self.path.name} describes "
                                 f"(a probe image differs by {difference:.3g}): the description cannot say how to "
                                 "feed this model")
        self._refuse_difference("architecture", described["architecture"], clip.spec.as_dict(), f"{clip.name} has")
        self._refuse_difference("lineage", self.lineage, clip.lineage, f"{clip.name} has")
        logits = self._output("logits")
        if logits is not None:
            self._refuse_difference("outputs.logits.logit_scale", logits.get("logit_scale"), clip.logit_scale,
                                    f"{clip.name} has")
        self._check_pack(pack_path)

    def _check_pack(self, pack_path: str | None) -> None:
        if self.pack_sha256 is None and pack_path is not None:
            raise PrtkInputError(f"{self.path.name} was exported without a pack; drop --pack")
        if self.pack_sha256 is not None:
            if pack_path is None:
                raise PrtkInputError(f"{self.path.name} was exported from a pack: pass it with --pack FILE")
            if not Path(pack_path).is_file():
                raise PrtkInputError(f"pack not found: {pack_path}")
            if file_sha256(Path(pack_path)) != self.pack_sha256:
                raise PrtkInputError(f"{pack_path} is not the pack {self.path.name} was exported from "
                                     f"(sha256 {self.pack_sha256[:12]})")

    def _output(self, name: str) -> dict | None:
        return next((output for output in self._description["outputs"] if output["name"] == name), None)

    def _refuse_difference(self, key: str, described: object, actual: object, source: str) -> None:
        """Refuse, naming the first differing key under ``key``, a described fact that the reference says otherwise
        (numbers compared within 1e-9, relative)."""
        if json_equal(described, actual, close=True):
            return
        where = first_difference(described, actual, close=True)
        if where != "the top level":
            key += where if where.startswith("[") else f".{where}"
            described, actual = value_at(described, where), value_at(actual, where)
        raise PrtkInputError(f"{self.path.name} describes {key} as {json.dumps(described)}, but {source} "
                             f"{json.dumps(actual)}: its description was edited, or belongs to another model; export "
                             "again")

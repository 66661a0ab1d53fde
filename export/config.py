"""``ExportConfig``: what ``prtk export`` writes (keep ratios, scorer, stages, precision, level), checked before any
work, and the file name of each graph it writes."""

from __future__ import annotations

from dataclasses import dataclass

from prtk.core.errors import PrtkInputError
from prtk.pruning.spec import EXPORTABLE_BASELINES, NO_LANGUAGE_SIDE, TowerSpec
from prtk.pruning.tower import check_keeps

from .onnx_graph import PROTOBUF_LIMIT
from .options import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, DEFAULT_CONTROL_IMAGES, DEFAULT_LEVEL,
                      OptimizeLevel, graph_runtimes, optimize_level)
from .quantize import QuantizationConfig

MIN_OPSET = 17  # LayerNormalization as one op


def max_opset() -> int:
    """The newest opset that the TorchScript-based exporter of the installed torch writes."""
    from torch.onnx import _constants

    return getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)


@dataclass
class ExportConfig:
    """What to export. ``pack`` selects the predictor scorer; without it ``scorer`` is a baseline (None:
    cls-attention); a baseline named beside a pack is refused, not ignored."""

    keeps: tuple[float, ...] = (0.6,)
    pack: str | None = None
    scorer: str | None = None  # baseline without a pack: cls-attention (None), fixed-random or elip
    layer: int | None = None  # baselines only; a pack has its own
    later_stages: tuple[tuple[int, float], ...] = ()  # (block, keep) stages after the first
    stage_scorer: str = "cls-attention"  # what ranks the patches at the later stages (or elip)
    fuse_dropped: bool = False  # one token averaging the dropped patches
    tokens: bool = True  # the pack's learnable tokens
    full: bool = False  # also export the unpruned tower
    normalize: bool = True
    kept_indices: bool = True
    classes: tuple[str, ...] = ()  # bake a zero-shot classifier over these class names into a "logits" output
    fp16: bool = False
    quantize: str | None = None  # int8-dynamic or int8-static (prtk.export.quantize)
    calib_data: str | None = None  # int8-static: the ImageFolder its activation scales are calibrated on
    calib_images: int = DEFAULT_CALIBRATION_IMAGES
    calib_method: str = DEFAULT_CALIBRATION_METHOD
    before_pruning: str | None = None  # int8 or float: the blocks before the pruning layer (None: the mode's)
    max_agreement_drop: float | None = None  # int8-static: keep GEMMs float until the agreement drop is within it
    control_images: int = DEFAULT_CONTROL_IMAGES  # the accuracy control's images, beyond the calibration ones
    optimize: str = DEFAULT_LEVEL  # O0, O1 or O2 (prtk.export.lean_blocks)
    opset: int | None = None  # None: the level's default
    seed: int = 0
    run_checks: bool = True  # onnx.checker, ONNX Runtime against PyTorch, TensorRT readiness
    external_threshold: int = PROTOBUF_LIMIT  # bytes above which weights go to a .data file

    def check(self) -> None:
        """Refuse settings that cannot be exported together, in one line."""
        check_keeps(self.keeps)
        optimize_level(self.optimize)
        if not MIN_OPSET <= self.graph_opset <= max_opset():
            raise PrtkInputError(f"opset must be in [{MIN_OPSET}, {max_opset()}] (LayerNormalization needs "
                                 f"{MIN_OPSET}; {max_opset()} is the newest this torch exports), "
                                 f"got {self.graph_opset}")
        if self.fp16 and not self.level.portable:
            raise PrtkInputError(f"--fp16 is not available at --optimize {self.optimize}: its fused operators are "
                                 "checked on ONNX Runtime's CPU kernels, which compute in fp32; use O1 for fp16")
        for option, value in (("--before-pruning", self.before_pruning),
                              ("--max-agreement-drop", self.max_agreement_drop)):
            if value is not None and self.quantize is None:
                raise PrtkInputError(f"{option} is for int8 graphs: add --quantize int8-dynamic or int8-static")
        if self.quantization is not None:
            if self.fp16:
                raise PrtkInputError(f"--fp16 and --quantize {self.quantize} exclude each other: an int8 graph keeps "
                                     "its float parts in fp32")
            self.quantization.check()
        if self.pack is not None and self.scorer not in (None, "predictor"):
            raise PrtkInputError(f"--scorer {self.scorer} is for exports without --pack: the pack's predictor "
                                 "scores the patches (drop --scorer, or --pack for a baseline graph)")
        if self.pack is None and self.tower_scorer not in EXPORTABLE_BASELINES:
            raise PrtkInputError(f"scorer must be one of {', '.join(EXPORTABLE_BASELINES)} without --pack, "
                                 f"got {self.scorer!r}")
        spec = self.tower_spec(self.keeps[0])
        spec.check()
        if spec.needs_language and not self.classes:
            raise PrtkInputError(NO_LANGUAGE_SIDE)

    def tower_spec(self, keep: float) -> TowerSpec:
        """The pruned tower exported at ``keep``."""
        return TowerSpec(keep=keep, scorer=self.tower_scorer, layer=self.layer,
                         later_stages=self.later_stages, stage_scorer=self.stage_scorer, fuse_dropped=self.fuse_dropped,
                         tokens=self.tokens, seed=self.seed)

    @property
    def tower_scorer(self) -> str:
        """What scores the patches: ``predictor`` with a pack, else the baseline (cls-attention by default)."""
        return "predictor" if self.pack is not None else self.scorer or "cls-attention"

    @property
    def quantization(self) -> QuantizationConfig | None:
        if self.quantize is None:
            return None
        return QuantizationConfig(self.quantize, self.calib_data, self.calib_images, self.calib_method, self.seed,
                                  self.before_pruning, self.max_agreement_drop, self.control_images)

    @property
    def precision(self) -> str:
        """What the graph's weights are: fp32, fp16 or int8."""
        return "int8" if self.quantize else "fp16" if self.fp16 else "fp32"

    @property
    def variant(self) -> str:
        """The precision variant, as file names and benchmarks say it: fp32, fp16, int8-dynamic or int8-static."""
        return self.quantize or self.precision

    @property
    def runtimes(self) -> tuple[str, ...]:
        """Who can run the graphs (before their checks): ``graph_runtimes`` of the level and quantization."""
        return graph_runtimes(self.optimize, self.quantize)

    @property
    def level(self) -> OptimizeLevel:
        return optimize_level(self.optimize)

    @property
    def graph_opset(self) -> int:
        """The opset the graphs are written at: ``opset``, or the level's default (20 at O1/O2, where Gelu is one
        op, but never above what the installed torch exports; 17 at O0)."""
        return self.opset if self.opset is not None else min(self.level.default_opset, max_opset())



def export_name(model: str, keep: float | None, variant: str, later_stages: tuple[tuple[int, float], ...] = ()) -> str:
    """``<model>_keep0.60`` (``<model>_full`` for the unpruned tower), ``_b<block>k<keep>`` per later stage
    (``_keep0.70_b4k0.70_b5k0.70``), ``_<variant>`` appended unless fp32 (``_fp16``, ``_int8-dynamic``,
    ``_int8-static``)."""
    stem = f"{model}_full" if keep is None else f"{model}_keep{keep:.2f}" + "".join(
        f"_b{block}k{stage_keep:.2f}" for block, stage_keep in later_stages)
    return stem + ("" if variant == "fp32" else f"_{variant}")

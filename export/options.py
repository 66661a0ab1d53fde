"""The choices an export offers, importing neither torch nor onnx, so that the CLI can offer them before any command
runs: the ``--optimize`` levels (``prtk.export.lean_blocks`` builds their blocks) and the quantization modes and
calibration defaults (``prtk.export.quantize`` makes the graphs)."""

from __future__ import annotations

from dataclasses import dataclass

from prtk.core.errors import PrtkInputError


@dataclass(frozen=True)
class OptimizeLevel:
    """One ``--optimize`` level: what its blocks are, the opset it exports at by default, who runs it."""

    name: str
    summary: str
    default_opset: int
    runtimes: tuple[str, ...]

    @property
    def portable(self) -> bool:
        """Standard ONNX that TensorRT builds (else ONNX Runtime's own operators)."""
        return "tensorrt" in self.runtimes


OPTIMIZE_LEVELS = {level.name: level for level in (
    OptimizeLevel("O0", "open_clip's blocks as traced (nn.MultiheadAttention spelled out)", 17,
                  ("onnxruntime", "openvino", "tensorrt")),
    OptimizeLevel("O1", "portable: attention as MatMul-Softmax-MatMul, constant reshapes, Gelu as one op", 20,
                  ("onnxruntime", "openvino", "tensorrt")),
    OptimizeLevel("O2", "O1 with ONNX Runtime's fused operators (Attention, SkipLayerNormalization, BiasGelu)", 20,
                  ("onnxruntime",)),
)}
DEFAULT_LEVEL = "O1"

QUANTIZE_MODES = ("int8-dynamic", "int8-static")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_CONTROL_IMAGES = 1000  # the accuracy control's (--max-agreement-drop) images beyond the calibration ones


def optimize_level(name: str) -> OptimizeLevel:
    if name not in OPTIMIZE_LEVELS:
        raise PrtkInputError(f"optimisation level must be one of {', '.join(OPTIMIZE_LEVELS)}, got {name!r}")
    return OPTIMIZE_LEVELS[name]


def graph_runtimes(optimize: str, quantize: str | None) -> tuple[str, ...]:
    """Who can run a graph of level ``optimize`` and quantization mode ``quantize`` (None: float): the level's
    runtimes, less TensorRT for int8-dynamic (it has no dynamic quantization)."""
    runtimes = optimize_level(optimize).runtimes
    return tuple(r for r in runtimes if r != "tensorrt") if quantize == "int8-dynamic" else runtimes

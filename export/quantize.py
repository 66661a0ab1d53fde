"""INT8 graphs, made with ONNX Runtime's quantization tools (``onnxruntime.quantization``).

Why that library: it is installed with prtk's runtime already, it writes standard ONNX that ONNX Runtime, OpenVINO
and TensorRT all read, and its QDQ output with symmetric int8 activations (zero point 0), symmetric per-channel
int8 weights and Q/DQ on the inputs of weight GEMMs only is the explicit-quantization form TensorRT builds.
NVIDIA's Model Optimizer places Q/DQ the same way for these operators but needs a CUDA stack that these machines
lack.

Two modes (``QUANTIZE_MODES``):

- ``int8-dynamic``: int8 weights, activations quantized at run time (DynamicQuantizeLinear + MatMulInteger); no
  calibration; ONNX Runtime's CPU kernels (and OpenVINO) run it, TensorRT cannot.
- ``int8-static``: a Q/DQ graph whose activation scales are calibrated on a seeded subset of the user's images
  (``--calib-data``, ``--calib-images``, ``--calib-method``). Weights are 7-bit ([-64, 64]): x86 CPUs without
  VNNI multiply u8 x s8 pairs into int16, which full-range int8 weights saturate (measured: 86% agreement with the
  float model instead of 99% on the test bed); TensorRT and VNNI CPUs read the same graph.

In both, only the MatMul/Gemm nodes that multiply by a weight are quantized (``int8_nodes``), and at O2 in
int8-dynamic the fused ``Attention`` too (``QAttention``); Q/DQ has no rule for ``Attention``, so at O2 int8-static
its QKV projection stays float and the other GEMMs get Q/DQ (the fused operators' outputs are typed by ONNX
Runtime's symbolic shape inference first, without which the quantizer sees untyped activations and quantizes the
weights alone). ``--max-agreement-drop`` reverts the most sensitive GEMMs to float (``prtk.export.accuracy_control``).

What decides which patches are kept stays float, so that the kept patches follow the float reference: the patch
embedding (a Conv, not quantized), the scorers (the predictor, or the attention cls-attention reads; each later
stage's), TopK and the gather; so do LayerNorm, softmax, the attention's activation-by-activation MatMuls and the L2
normalisation. ONNX Runtime's Q/DQ quantizer hands every reader of a quantized activation its dequantized copy, so
the scorers are rewired to the float tensor (``read_unquantized``): before that, a scorer reading a quantized
block's LayerNorm output moved the kept patches. The blocks before the pruning layer (``before_pruning``) are float
by default in int8-static and int8 in int8-dynamic, as measured on the CIFAR-10 test bed (keep 0.6, pruning at
block 1, all 10,000 test images, agreement with the float pruned model): int8-static 98.79% with block 0 float,
98.63% with it in int8, the kept patches identical on every image either way (accuracy-controlled with
``--max-agreement-drop 0.5``: 99.14% and 99.01%); int8-dynamic kept the same patches either way (99.20% / 99.27% on
3,000 images). Quantizing the patch embedding cost 1.5 points of agreement in either mode. In a staged graph the
later stages rank on the blocks between the stages, so every block before the last stage is float by default in
both modes: with them in int8 a three-stage int8-dynamic shapes graph (``1:0.7,3:0.7,5:0.7``, 500 held-out images)
kept its float twin's patch sets on 68.6% of images, with only block 0 in int8 on 75.8%, all float 100%. (The later
stages' scorer is one module traced once per stage: ``stage_scorer/``, ``stage_scorer_1/``, ...)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from prtk.core.errors import PrtkInputError

from .accuracy_control import ControlImages, control_accuracy
from .options import (CALIBRATION_METHODS, DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD,
                      DEFAULT_CONTROL_IMAGES, QUANTIZE_MODES)
from .qdq_surgery import read_unquantized

FLOAT_SCOPES = ("/tower/scorer/",)  # node-name prefixes (module paths) that stay float
STAGE_SCORER_SCOPE = re.compile(r"^/tower/stage_scorer(_\d+)?/")  # the later stages' scorer (one module, traced
# once per later stage: stage_scorer/, stage_scorer_1/, ...): float too, in staged graphs
QUANTIZED_OPS = ("MatMul", "Gemm")
FUSED_ATTENTION = "Attention"  # O2's fused attention: QAttention in int8-dynamic; float in Q/DQ, which has no rule
CALIBRATION_BATCH = 32
BEFORE_PRUNING = {"int8-dynamic": "int8", "int8-static": "float"}  # measured defaults (above)
BLOCK_SCOPE = re.compile(r"/resblocks\.(\d+)/")  # the exporter names nodes by module path


@dataclass(frozen=True)
class QuantizationConfig:
    """``mode`` (``QUANTIZE_MODES``); for ``int8-static`` the calibration: ``images`` drawn with ``seed`` from the
    ImageFolder ``data`` and ``method`` (min-max, the 99.999th percentile, or entropy); ``before_pruning`` int8 or
    float for the blocks before the pruning layer (None: the mode's default, ``BEFORE_PRUNING``); with
    ``max_agreement_drop`` (points) the accuracy control (``prtk.export.accuracy_control``) on up to
    ``control_images`` further images of ``data``."""

    mode: str
    data: str | None = None
    images: int = DEFAULT_CALIBRATION_IMAGES
    method: str = DEFAULT_CALIBRATION_METHOD
    seed: int = 0
    before_pruning: str | None = None
    max_agreement_drop: float | None = None
    control_images: int = DEFAULT_CONTROL_IMAGES

    def blocks_before_pruning(self, staged: bool) -> str:
        """``int8`` or ``float``: how the blocks before the (last) pruning layer are computed; float by default in a
        ``staged`` graph, whose later stages rank on the blocks between them (measured above)."""
        return self.before_pruning or ("float" if staged else BEFORE_PRUNING[self.mode])

    @property
    def calibrated(self) -> bool:
        return self.mode == "int8-static"

    def check(self) -> None:
        """Refuse an unknown mode or method, and calibration settings that are missing or of no use."""
        if self.mode not in QUANTIZE_MODES:
            raise PrtkInputError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {self.mode!r}")
        if self.method not in CALIBRATION_METHODS:
            raise PrtkInputError(f"--calib-method must be one of {', '.join(CALIBRATION_METHODS)}, "
                                 f"got {self.method!r}")
        if self.before_pruning not in (None, "int8", "float"):
            raise PrtkInputError(f"--before-pruning must be int8 or float, got {self.before_pruning!r}")
        if self.images < 1:
            raise PrtkInputError(f"--calib-images must be at least 1, got {self.images}")
        if self.max_agreement_drop is not None:
            self._check_control()
        if self.calibrated and self.data is None:
            raise PrtkInputError("--quantize int8-static calibrates its activation scales on real images: pass "
                                 "--calib-data DIR (an ImageFolder, e.g. your training images)")
        if not self.calibrated and self.data is not None:
            raise PrtkInputError(f"--calib-data is for --quantize int8-static; {self.mode} quantizes activations at "
                                 "run time and needs no calibration")
        if self.data is not None:
            from prtk.data.folder import ImageFolderDataset

            try:
                images = len(ImageFolderDataset(self.data, transform=None, image_size=0))  # decodes none
            except PrtkInputError as error:
                raise PrtkInputError(f"calibration data: {error}") from None
            if self.max_agreement_drop is not None and images <= self.images:
                raise PrtkInputError(f"--max-agreement-drop measures the agreement on images of --calib-data beyond "
                                     f"the {self.images} calibration images, but {self.data} holds {images}: lower "
                                     "--calib-images or add images")

    def _check_control(self) -> None:
        if self.mode != "int8-static":
            raise PrtkInputError(f"--max-agreement-drop is for --quantize int8-static; {self.mode} has no "
                                 "calibrated graph to control")
        if not 0.0 <= self.max_agreement_drop <= 100.0:  # also refuses NaN
            raise PrtkInputError(f"--max-agreement-drop must be in [0, 100] (points), "
                                 f"got {self.max_agreement_drop:g}")
        if self.control_images < 1:
            raise PrtkInputError(f"--control-images must be at least 1, got {self.control_images}")


@dataclass(frozen=True)
class CalibrationImages:
    """Preprocessed calibration images ``[n, 3, H, W]`` float32, and where they came from: the folder, how many,
    the seed, the method, and a SHA-256 over their relative paths and file hashes in the order drawn."""

    pixels: np.ndarray
    root: str
    seed: int
    method: str
    sha256: str

    def as_dict(self) -> dict:
        return {"data": self.root, "images": len(self.pixels), "seed": self.seed, "method": self.method,
                "sha256": self.sha256}


def load_calibration_images(config: QuantizationConfig, preprocess, image_size: int, classifier=None,
                            logit_scale: float = 100.0) -> tuple[CalibrationImages, ControlImages | None]:
    """``config.images`` images (all, where the folder holds fewer) drawn from ``config.data`` by a permutation
    seeded with ``config.seed``; with ``config.max_agreement_drop`` also the accuracy control's, the next
    ``config.control_images`` of the permutation (none of them a calibration image), with
    ``classifier(class_names)`` ``[C, E]`` over the folder's classes and ``logit_scale``. An undecodable image is
    bad input."""
    import torch

    from prtk.data.folder import ImageFolderDataset, class_display_name

    dataset = ImageFolderDataset(config.data, preprocess, image_size)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed)).tolist()
    pixels, digest = _load_images(dataset, order[:config.images], "calibration")
    calibration = CalibrationImages(pixels, str(config.data), config.seed, config.method, digest)
    if config.max_agreement_drop is None:
        return calibration, None
    pixels, digest = _load_images(dataset, order[config.images:config.images + config.control_images], "control")
    classes = np.asarray(classifier([class_display_name(name) for name in dataset.classes]), np.float32)
    return calibration, ControlImages(pixels, classes, logit_scale, digest)


def _load_images(dataset, indices: list[int], role: str) -> tuple[np.ndarray, str]:
    """The ``dataset`` images at ``indices``, in folder order: ``[n, 3, H, W]`` float32, and a SHA-256 over their
    relative paths and file hashes."""
    pixels, listing = [], []
    for index in sorted(indices):
        image, _, _, error = dataset[index]
        if error:
            raise PrtkInputError(f"cannot decode {role} image {dataset.records[index].path}: {error}")
        pixels.append(image.numpy())
        listing.append([dataset.relative_path(index), dataset.sha256(index)])
    return np.stack(pixels).astype(np.float32), hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def float_scopes(model: onnx.ModelProto) -> tuple[str, ...]:
    """The scopes kept float in ``model``: ``FLOAT_SCOPES``, and each later stage's scorer where it has stages."""
    stages = dict.fromkeys(match.group(0) for node in model.graph.node
                           if (match := STAGE_SCORER_SCOPE.match(node.name)))
    return FLOAT_SCOPES + tuple(stages)


def quantized_operators(model: onnx.ModelProto, mode: str) -> tuple[str, ...]:
    """The operator types ``mode`` quantizes in ``model``: ``QUANTIZED_OPS``, and O2's fused ``Attention`` (as
    ``QAttention``) in int8-dynamic where the graph has it."""
    fused = mode == "int8-dynamic" and any(node.op_type == FUSED_ATTENTION for node in model.graph.node)
    return QUANTIZED_OPS + ((FUSED_ATTENTION,) if fused else ())


def int8_nodes(model: onnx.ModelProto, float_blocks: int, operators: tuple[str, ...],
               scopes: tuple[str, ...]) -> list[str]:
    """The nodes to quantize: ``operators`` by a weight (an initializer), outside ``scopes`` (``float_scopes``: the
    scorers) and outside the first ``float_blocks`` transformer blocks (those before the pruning layer)."""
    weights = {tensor.name for tensor in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        block = BLOCK_SCOPE.search(node.name)
        if (node.op_type in operators and any(name in weights for name in node.input)
                and not node.name.startswith(scopes) and not (block and int(block.group(1)) < float_blocks)):
            chosen.append(node.name)
    return chosen


def quantize_graph(model: onnx.ModelProto, config: QuantizationConfig, calibration: CalibrationImages | None,
                   float_blocks: int = 0, control: ControlImages | None = None) -> tuple[onnx.ModelProto, dict]:
    """``model`` quantized as ``config`` says, the first ``float_blocks`` blocks left float (and, with ``control``,
    the GEMMs the accuracy control reverts), and its description for the sidecar's ``quantization``: mode,
    library, format, what is int8, what stayed float, the calibration and the accuracy control."""
    import onnxruntime

    operators, scopes = quantized_operators(model, config.mode), float_scopes(model)
    quantized_nodes = int8_nodes(model, float_blocks, operators, scopes)
    if config.calibrated and calibration is None:
        raise ValueError("int8-static needs calibration images")
    with tempfile.TemporaryDirectory(prefix="prtk-quantize-") as folder:  # in the staging folder
        quantized = _quantize(model, config, calibration, quantized_nodes, operators, Path(folder))
        # the quantizer hands every reader of a quantized activation its Q/DQ copy: the scorers read the float one
        read_unquantized(quantized, lambda node: node.name.startswith(scopes))
        controlled = None
        if config.max_agreement_drop is not None and control is not None:
            quantized, controlled = control_accuracy(model, quantized, quantized_nodes, control,
                                                     config.max_agreement_drop, Path(folder))
            reverted = set(controlled.float_nodes)
            quantized_nodes = [name for name in quantized_nodes if name not in reverted]
    chosen = set(quantized_nodes)
    float_nodes = [node.name for node in model.graph.node if node.op_type in operators and node.name not in chosen]
    integer_ops = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                   "QAttention"}
    kept_float = sorted({node.op_type for node in quantized.graph.node} - integer_ops)
    description = {
        "mode": config.mode,
        "library": f"onnxruntime.quantization {onnxruntime.__version__}",
        "format": "QDQ" if config.calibrated else "dynamic (DynamicQuantizeLinear + MatMulInteger"
                  + (" + QAttention)" if FUSED_ATTENTION in operators else ")"),
        "operators": list(operators),
        "int8_nodes": len(quantized_nodes),
        "weights": ("int8 in [-64, 64] (7 bits: no int16 saturation on x86 CPUs without VNNI), symmetric, per "
                    "output channel" if config.calibrated else "int8, symmetric, per tensor"),
        "activations": ("int8, symmetric, per tensor, calibrated" if config.calibrated
                        else "uint8, per tensor, ranges computed at run time"),
        "float": {"scopes": list(scopes), "first_blocks": float_blocks,
                  "matmuls": len(float_nodes), "operators": kept_float},
        "calibration": calibration.as_dict() if calibration is not None else None,
    }
    if controlled is not None:
        description["accuracy_control"] = controlled.as_dict()
    return quantized, description


def _typed(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the types of its fused operators' outputs (ONNX Runtime's symbolic shape inference), which
    the Q/DQ quantizer reads to decide what it can quantize; ONNX's own inference does not know those operators."""
    if not any(node.domain == "com.microsoft" for node in model.graph.node):
        return model
    from .onnx_graph import infer_symbolic_shapes

    return infer_symbolic_shapes(model)


def _quantize(model: onnx.ModelProto, config: QuantizationConfig, calibration: CalibrationImages | None,
              nodes: list[str], operators: tuple[str, ...], folder: Path) -> onnx.ModelProto:
    """ONNX Runtime's quantizer on ``nodes`` of ``model``: Q/DQ calibrated on ``calibration`` (int8-static), or
    dynamic."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    source, target = folder / "float.onnx", folder / "int8.onnx"
    onnx.save(_typed(model) if config.calibrated else model, source)
    with _quiet_quantizer():
        if config.calibrated:
            quantize_static(source, target, _CalibrationReader(calibration.pixels, model.graph.input[0].name),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=list(operators),
                            nodes_to_quantize=nodes, per_channel=True, reduce_range=True,
                            calibrate_method=_calibration_method(config.method),
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "CalibTensorRangeSymmetric": True})
        else:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=list(operators),
                             nodes_to_quantize=nodes, per_channel=False,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return onnx.load(target)


class _CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over ``pixels`` ``[n, 3, H, W]``, in batches of one size
    (``calibration_batch``: the percentile and entropy calibrators stack every batch's activations into one array)."""

    def __init__(self, pixels: np.ndarray, input_name: str):
        size = calibration_batch(len(pixels))
        self.batches = iter([{input_name: pixels[start:start + size]} for start in range(0, len(pixels), size)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def calibration_batch(count: int) -> int:
    """The largest batch of at most ``CALIBRATION_BATCH`` images that divides ``count`` images evenly."""
    return max(size for size in range(1, min(count, CALIBRATION_BATCH) + 1) if count % size == 0)


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


@contextmanager
def _quiet_quantizer():
    """The quantizer advises its pre-processing tool through the root logger on every call, and its histogram
    calibrators print their progress to stdout (where ``--json -`` writes); prtk's graphs are already folded and
    shape-inferred, and prtk reports its own progress, so both are noise here."""
    import contextlib
    import io

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)

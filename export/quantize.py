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

In both, only the MatMul/Gemm nodes that multiply by a weight are quantized (``int8_nodes``). What decides which
patches are kept stays float, so that the kept patches follow the float reference: the patch embedding (a Conv, not
quantized), the scorer (the predictor, or the attention cls-attention reads), TopK and the gather; so do LayerNorm,
softmax, the attention's activation-by-activation MatMuls and the L2 normalisation. The blocks before the pruning
layer (``before_pruning``) are float by default in int8-static and int8 in int8-dynamic, as measured on the CIFAR-10
test bed (keep 0.6, pruning at block 1, 3,000 test images, agreement with the float pruned model): int8-static with
block 0 in int8 kept other patches on some images (97.97% agreement, min cosine 0.953) and with it float 99.10%;
int8-dynamic, whose activation ranges are measured per batch, kept the same patches either way (99.20% / 99.27%).
Quantizing the patch embedding cost 1.5 points of agreement in either mode.
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

from .options import CALIBRATION_METHODS, DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, QUANTIZE_MODES

FLOAT_SCOPES = ("/tower/scorer/",)  # node-name prefixes (module paths) that stay float
STAGE_SCORER_SCOPE = "/tower/stage_scorer/"  # the later stages' scorer: float too, in staged graphs
QUANTIZED_OPS = ("MatMul", "Gemm")
CALIBRATION_BATCH = 32
BEFORE_PRUNING = {"int8-dynamic": "int8", "int8-static": "float"}  # measured defaults (above)
BLOCK_SCOPE = re.compile(r"/resblocks\.(\d+)/")  # the exporter names nodes by module path


@dataclass(frozen=True)
class QuantizationConfig:
    """``mode`` (``QUANTIZE_MODES``); for ``int8-static`` the calibration: ``images`` drawn with ``seed`` from the
    ImageFolder ``data`` and ``method`` (min-max, the 99.999th percentile, or entropy); ``before_pruning`` int8 or
    float for the blocks before the pruning layer (None: the mode's default, ``BEFORE_PRUNING``)."""

    mode: str
    data: str | None = None
    images: int = DEFAULT_CALIBRATION_IMAGES
    method: str = DEFAULT_CALIBRATION_METHOD
    seed: int = 0
    before_pruning: str | None = None

    @property
    def blocks_before_pruning(self) -> str:
        """``int8`` or ``float``: how the blocks before the pruning layer are computed."""
        return self.before_pruning or BEFORE_PRUNING[self.mode]

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
        if self.calibrated and self.data is None:
            raise PrtkInputError("--quantize int8-static calibrates its activation scales on real images: pass "
                                 "--calib-data DIR (an ImageFolder, e.g. your training images)")
        if not self.calibrated and self.data is not None:
            raise PrtkInputError(f"--calib-data is for --quantize int8-static; {self.mode} quantizes activations at "
                                 "run time and needs no calibration")
        if self.data is not None:
            from prtk.data.folder import ImageFolderDataset

            try:
                ImageFolderDataset(self.data, transform=None, image_size=0)  # lists the images, decodes none
            except PrtkInputError as error:
                raise PrtkInputError(f"calibration data: {error}") from None


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


def load_calibration_images(config: QuantizationConfig, preprocess, image_size: int) -> CalibrationImages:
    """``config.images`` images (all, where the folder holds fewer) drawn from ``config.data`` by a permutation
    seeded with ``config.seed``, sorted back into folder order; an undecodable one is bad input."""
    import torch

    from prtk.data.folder import ImageFolderDataset

    dataset = ImageFolderDataset(config.data, preprocess, image_size)
    generator = torch.Generator().manual_seed(config.seed)
    chosen = sorted(torch.randperm(len(dataset), generator=generator)[:config.images].tolist())
    pixels, listing = [], []
    for index in chosen:
        image, _, _, error = dataset[index]
        if error:
            raise PrtkInputError(f"cannot decode calibration image {dataset.records[index].path}: {error}")
        pixels.append(image.numpy())
        listing.append([dataset.relative_path(index), dataset.sha256(index)])
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return CalibrationImages(np.stack(pixels).astype(np.float32), str(config.data), config.seed, config.method, digest)


def float_scopes(model: onnx.ModelProto) -> tuple[str, ...]:
    """The scopes kept float in ``model``: ``FLOAT_SCOPES``, and the later stages' scorer where it has stages."""
    staged = any(node.name.startswith(STAGE_SCORER_SCOPE) for node in model.graph.node)
    return FLOAT_SCOPES + ((STAGE_SCORER_SCOPE,) if staged else ())


def int8_nodes(model: onnx.ModelProto, float_blocks: int) -> list[str]:
    """The nodes to quantize: MatMul/Gemm by a weight (an initializer), outside ``float_scopes`` (the scorers) and
    outside the first ``float_blocks`` transformer blocks (those before the pruning layer)."""
    weights = {tensor.name for tensor in model.graph.initializer}
    scopes = float_scopes(model)
    chosen = []
    for node in model.graph.node:
        block = BLOCK_SCOPE.search(node.name)
        if (node.op_type in QUANTIZED_OPS and any(name in weights for name in node.input)
                and not node.name.startswith(scopes) and not (block and int(block.group(1)) < float_blocks)):
            chosen.append(node.name)
    return chosen


def quantize_graph(model: onnx.ModelProto, config: QuantizationConfig, calibration: CalibrationImages | None,
                   float_blocks: int = 0) -> tuple[onnx.ModelProto, dict]:
    """``model`` quantized as ``config`` says, the first ``float_blocks`` blocks left float, and its description
    for the sidecar's ``quantization``: mode, library, format, what is int8, what stayed float, the calibration."""
    import onnxruntime
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    quantized_nodes = int8_nodes(model, float_blocks)
    chosen = set(quantized_nodes)
    float_nodes = [node.name for node in model.graph.node if node.op_type in QUANTIZED_OPS and node.name not in chosen]
    operators = list(QUANTIZED_OPS)
    if config.calibrated and calibration is None:
        raise ValueError("int8-static needs calibration images")
    with tempfile.TemporaryDirectory(prefix="prtk-quantize-") as folder, _quiet_quantizer():  # in the staging folder
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        onnx.save(model, source)
        if config.calibrated:
            quantize_static(source, target, _CalibrationReader(calibration.pixels, model.graph.input[0].name),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=operators,
                            nodes_to_quantize=quantized_nodes, per_channel=True, reduce_range=True,
                            calibrate_method=_calibration_method(config.method),
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "CalibTensorRangeSymmetric": True})
        else:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=operators,
                             nodes_to_quantize=quantized_nodes, per_channel=False,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        quantized = onnx.load(target)
    integer_ops = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}
    kept_float = sorted({node.op_type for node in quantized.graph.node} - integer_ops)
    description = {
        "mode": config.mode,
        "library": f"onnxruntime.quantization {onnxruntime.__version__}",
        "format": "QDQ" if config.calibrated else "dynamic (DynamicQuantizeLinear + MatMulInteger)",
        "operators": operators,
        "int8_nodes": len(quantized_nodes),
        "weights": ("int8 in [-64, 64] (7 bits: no int16 saturation on x86 CPUs without VNNI), symmetric, per "
                    "output channel" if config.calibrated else "int8, symmetric, per tensor"),
        "activations": ("int8, symmetric, per tensor, calibrated" if config.calibrated
                        else "uint8, per tensor, ranges computed at run time"),
        "float": {"scopes": list(float_scopes(model)), "first_blocks": float_blocks,
                  "matmuls": len(float_nodes), "operators": kept_float},
        "calibration": calibration.as_dict() if calibration is not None else None,
    }
    return quantized, description


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

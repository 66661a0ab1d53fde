"""ONNX Runtime sessions over exported graphs: the one place that opens them, for the export's runtime check and
for the engines' ``OnnxRuntimeRunner``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prtk.core.errors import PrtkInputError

GPU_HINT = 'pip install "prtk[gpu]" on a machine with an NVIDIA GPU'
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def onnxruntime_optimization(precision: str) -> str:
    """The ONNX Runtime optimisation level for a graph of ``precision``: ``all``, but ``extended`` for fp16
    (ONNX Runtime 1.32's CPU layout optimisations crash on fp16 graphs)."""
    return "extended" if precision == "fp16" else "all"


def open_session(path: str | Path, provider: str = "cpu", optimization: str = "all"):
    """An ``onnxruntime.InferenceSession`` on ``provider`` (cpu, cuda or tensorrt, as installed; CPU as the
    fallback for the others) at optimisation level ``optimization`` (``all`` or ``extended``)."""
    import onnxruntime

    if provider not in PROVIDERS:
        raise PrtkInputError(f"ONNX Runtime provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    wanted = PROVIDERS[provider]
    if wanted not in onnxruntime.get_available_providers():
        raise PrtkInputError(f"ONNX Runtime {onnxruntime.__version__} here has no {wanted} "
                             f"(available: {', '.join(onnxruntime.get_available_providers())}); {GPU_HINT}")
    options = onnxruntime.SessionOptions()
    if optimization == "extended":
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    providers = [wanted] + (["CPUExecutionProvider"] if provider != "cpu" else [])
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


def run_session(session, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of ``session`` by name for float32 images ``[B, 3, H, W]``."""
    names = [output.name for output in session.get_outputs()]
    outputs = session.run(names, {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)})
    return dict(zip(names, outputs, strict=True))

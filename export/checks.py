"""The checks run on every export: onnx.checker, ONNX Runtime against PyTorch on real images, TensorRT readiness."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from .deployed import INPUT_NAME, DeployedTower
from .tensorrt_readiness import tensorrt_findings


@dataclass(frozen=True)
class Tolerance:
    """Largest allowed |ONNX Runtime - PyTorch| on the embedding (logits: times the logit scale) and the
    smallest allowed share of kept indices that agree (1.0: identical)."""

    embedding_atol: float
    kept_agreement: float
    half_precision: bool = False

    @classmethod
    def for_precision(cls, precision: str) -> Tolerance:
        return cls(1e-4, 1.0) if precision == "fp32" else cls(1e-2, 0.95, half_precision=True)


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_onnx(path: Path) -> CheckResult:
    """``onnx.checker`` with full shape and type inference (by path, so external data works)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        return CheckResult("onnx.checker", False, str(error).strip().splitlines()[0])
    return CheckResult("onnx.checker", True, "full check")


def check_tensorrt_readiness(model: onnx.ModelProto) -> CheckResult:
    findings = tensorrt_findings(model)
    if findings:
        more = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
        return CheckResult("tensorrt", False, f"{findings[0]}{more}")
    ops = len({node.op_type for node in model.graph.node})
    return CheckResult("tensorrt", True, f"{ops} operator types, static shapes apart from batch")


def check_runtime(path: Path, reference: DeployedTower, images: torch.Tensor, tolerance: Tolerance) -> CheckResult:
    """Run the ONNX file in ONNX Runtime (CPU) on ``images`` [n,3,H,W] and on the first image alone (batch 1),
    and compare every output with the PyTorch module's."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if tolerance.half_precision:  # ONNX Runtime 1.32's CPU layout optimisations crash on fp16 graphs
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = [output.numpy() for output in reference(images)]
    batches = [session.run(reference.output_names, {INPUT_NAME: images.numpy()}),
               [output[:1] for output in session.run(reference.output_names, {INPUT_NAME: images[:1].numpy()})]]
    worst_diff, agreement = 0.0, 1.0
    for actual in batches:
        for name, got, want in zip(reference.output_names, actual, expected, strict=True):
            want = want[:len(got)]
            if name == "kept_indices":
                agreement = min(agreement, _index_agreement(got, want))
            else:
                scale = reference.logit_scale if name == "logits" else 1.0
                worst_diff = max(worst_diff, float(np.abs(got.astype(np.float64) - want).max()) / scale)
    passed = worst_diff <= tolerance.embedding_atol and agreement >= tolerance.kept_agreement
    detail = f"{len(images)} images, batch {len(images)} and 1: max abs diff {worst_diff:.2e}"
    if reference.kept_indices:
        detail += f", kept indices {'identical' if agreement == 1.0 else f'{100 * agreement:.2f}% agree'}"
    return CheckResult("onnxruntime", passed, detail)


def load_check_images(preprocess, image_size: int, data_root: str | Path | None,
                      count: int) -> tuple[torch.Tensor, str]:
    """``count`` preprocessed images ``[count,3,H,W]`` for the runtime check, evenly spaced over an ImageFolder,
    or generated shapes images without one; and a description of where they came from."""
    from prtk.errors import PrtkInputError

    if count < 1:
        raise PrtkInputError(f"check images must be at least 1, got {count}")
    if data_root is None:
        from prtk.synthetic import shape_images

        images = [preprocess(image) for image, _ in shape_images(count, seed=1, size=max(64, image_size))]
        return torch.stack(images), f"{count} generated shapes images"
    from prtk.data import ImageFolderDataset

    dataset = ImageFolderDataset(data_root, preprocess, image_size, limit=count)
    items = [dataset[i] for i in range(len(dataset))]
    unreadable = [dataset.records[index].path for _, _, index, error in items if error]
    if unreadable:
        raise PrtkInputError(f"cannot decode check image {unreadable[0]}")
    return torch.stack([pixels for pixels, *_ in items]), f"{len(items)} images from {data_root}"


def _index_agreement(got: np.ndarray, want: np.ndarray) -> float:
    """Mean share of each image's kept indices found in both [n, k] arrays."""
    shared = [len(np.intersect1d(a, b)) / want.shape[1] for a, b in zip(got, want, strict=True)]
    return float(np.mean(shared))

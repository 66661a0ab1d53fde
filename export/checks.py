"""The checks run on every export: onnx.checker, ONNX Runtime against PyTorch on real images (compared by Polygraphy),
TensorRT readiness."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from .criteria import Tolerance
from .deployed import DeployedTower
from .onnxruntime_session import onnxruntime_optimization, open_session, run_session
from .tensor_comparison import RunRecorder
from .tensorrt_readiness import tensorrt_findings


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
    """Run the ONNX file in ONNX Runtime (CPU) on ``images`` [n,3,H,W] and on the first image alone (batch 1);
    Polygraphy's comparator holds the float outputs to the PyTorch module's (logits at ``logit_scale`` times the
    embedding's atol), the kept indices are held to ``tolerance.kept_agreement``."""
    session = open_session(path, optimization=onnxruntime_optimization(tolerance.precision))
    with torch.inference_mode():
        expected = dict(zip(reference.output_names, (output.numpy() for output in reference(images)), strict=True))
    recorder, agreement = RunRecorder("onnxruntime"), 1.0
    for actual in (run_session(session, images.numpy()), run_session(session, images[:1].numpy())):
        want = {name: value[:len(actual[name])] for name, value in expected.items()}
        recorder.add(want, actual)
        if "kept_indices" in want:
            agreement = min(agreement, float(np.mean(kept_index_overlap(actual["kept_indices"],
                                                                        want["kept_indices"]))))
    atol = {"embedding": tolerance.embedding_atol, "logits": tolerance.embedding_atol * reference.logit_scale}
    comparison = recorder.compare(atol)
    worst = comparison.outputs["embedding"].max_abs_diff
    passed = comparison.passed and agreement >= tolerance.kept_agreement
    detail = f"{len(images)} images, batch {len(images)} and 1: max abs diff {worst:.2e}"
    if "logits" in comparison.outputs:
        detail += f", logits {comparison.outputs['logits'].max_abs_diff:.2e}"
    if reference.kept_indices:
        detail += f", kept indices {'identical' if agreement == 1.0 else f'{100 * agreement:.2f}% agree'}"
    return CheckResult("onnxruntime", passed, detail + f" ({comparison.tool})")


def load_check_images(preprocess, image_size: int, data_root: str | Path | None,
                      count: int) -> tuple[torch.Tensor, str]:
    """``count`` preprocessed images ``[count,3,H,W]`` for the runtime check, evenly spaced over an ImageFolder,
    or generated shapes images without one; and a description of where they came from."""
    from prtk.core.errors import PrtkInputError

    if count < 1:
        raise PrtkInputError(f"check images must be at least 1, got {count}")
    if data_root is None:
        from prtk.data.synthetic import shape_images

        images = [preprocess(image) for image, _ in shape_images(count, seed=1, size=max(64, image_size))]
        return torch.stack(images), f"{count} generated shapes images"
    from prtk.data.folder import ImageFolderDataset

    dataset = ImageFolderDataset(data_root, preprocess, image_size, limit=count)
    items = [dataset[i] for i in range(len(dataset))]
    unreadable = [dataset.records[index].path for _, _, index, error in items if error]
    if unreadable:
        raise PrtkInputError(f"cannot decode check image {unreadable[0]}")
    return torch.stack([pixels for pixels, *_ in items]), f"{len(items)} images from {data_root}"


def kept_index_overlap(got: np.ndarray, want: np.ndarray) -> list[float]:
    """Per image, the share of the expected kept indices ``want`` [n, k] also in ``got`` [n, k]."""
    return [len(np.intersect1d(a, b)) / want.shape[1] for a, b in zip(got, want, strict=True)]

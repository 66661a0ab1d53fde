"""Accuracy-controlled int8-static (``--max-agreement-drop P``): the fewest weight GEMMs kept float that bring the
int8 graph's zero-shot predictions, and its kept patch sets, within ``P`` points of the float graph's.

The algorithm is that of OpenVINO NNCF's ``quantize_with_accuracy_control``, on prtk's ONNX graphs: quantize every
eligible GEMM; measure on control images (drawn from the calibration folder, none of them a calibration image) the
agreement of the int8 graph's predictions with the float graph's and the share of images whose kept patch set is
the float graph's (``validate``'s two criteria); when either drops by more than ``P``, rank the quantized GEMMs by
how much reverting each one alone brings the class probabilities back (the mean KL divergence from the float
graph's zero-shot probabilities, which weighs the near-tied images that flip), then revert them in that order, one
at a time, until both drops are within ``P``; last, put back into int8 each reverted GEMM (the least sensitive
first) without which the graph stays within ``P``: the greedy order reverts some that the flips it chases did not
need. NNCF itself is not used: its accuracy control runs on OpenVINO's IR, not on the Q/DQ ONNX graphs prtk ships
to ONNX Runtime, OpenVINO and TensorRT. A GEMM is reverted by giving it back the float graph's inputs (its float
weight and the activation before Q/DQ), so no trial recalibrates: the activation ranges are the calibration's
throughout.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from .onnxruntime_session import open_session, run_session
from .qdq_surgery import revert_to_float

CONTROL_BATCH = 64


@dataclass(frozen=True)
class ControlImages:
    """Preprocessed control images ``[n, 3, H, W]`` float32, the zero-shot classifier ``[C, E]`` of the calibration
    folder's classes and the model's logit scale, which turn embeddings into class probabilities, and a SHA-256 over
    the images' paths and file hashes."""

    pixels: np.ndarray
    classifier: np.ndarray
    logit_scale: float
    sha256: str


@dataclass(frozen=True)
class Agreement:
    """A quantized graph against the float graph on the control images: prediction agreement (%), the share of
    images whose kept patch set is the same (%; None without ``kept_indices``), and the mean KL divergence of its
    zero-shot class probabilities from the float graph's (nats; large where a near-tied image may flip)."""

    predictions: float
    kept_identical: float | None
    divergence: float

    def within(self, max_drop: float) -> bool:
        """Both shares within ``max_drop`` points of 100%."""
        return all(100.0 - share <= max_drop for share in (self.predictions, self.kept_identical) if share is not None)


@dataclass(frozen=True)
class ControlledQuantization:
    """What the accuracy control did: the bound (points), the control images, the prediction agreement and kept
    patch identity (%) of every GEMM in int8 and of the graph kept, the GEMMs kept float (in the order reverted),
    the graphs it measured, and the share of the quantized GEMMs' weight elements left float (roughly, the speed
    it costs)."""

    max_agreement_drop: float
    control_images: int
    control_sha256: str
    agreement_all_int8: float
    agreement: float
    kept_identical_all_int8: float | None
    kept_identical: float | None
    float_nodes: tuple[str, ...]
    trials: int
    float_weight_share: float

    def as_dict(self) -> dict:
        return asdict(self) | {"float_nodes": list(self.float_nodes)}


class AgreementProbe:
    """The float graph's answers on the control images, and how far a quantized graph's are from them."""

    def __init__(self, float_model: onnx.ModelProto, control: ControlImages, folder: Path):
        self.control, self.folder = control, folder
        embeddings, self.kept = self._run(float_model)
        self.log_probabilities = self._log_probabilities(embeddings)
        self.predictions = np.argmax(self.log_probabilities, axis=1)

    def measure(self, model: onnx.ModelProto) -> Agreement:
        embeddings, kept = self._run(model)
        log_probabilities = self._log_probabilities(embeddings)
        identical = None if kept is None else 100.0 * float(np.mean(np.all(kept == self.kept, axis=1)))
        divergence = np.sum(np.exp(self.log_probabilities) * (self.log_probabilities - log_probabilities), axis=1)
        return Agreement(100.0 * float(np.mean(np.argmax(log_probabilities, axis=1) == self.predictions)), identical,
                         float(np.mean(divergence)))

    def _log_probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Zero-shot log class probabilities ``[n, C]`` of L2-normalised ``embeddings``."""
        logits = self.control.logit_scale * embeddings @ self.control.classifier.T
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))

    def _run(self, model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray | None]:
        """L2-normalised embeddings ``[n, E]`` of the control images by ``model``, and its kept patch indices
        ``[n, k]`` (sorted ascending, as prtk's graphs output them; None without that output)."""
        with tempfile.TemporaryDirectory(dir=self.folder) as folder:
            path = Path(folder) / "trial.onnx"
            onnx.save(model, path, save_as_external_data=model.ByteSize() > 2 ** 30)
            session = open_session(path)
            pixels = self.control.pixels
            batches = [run_session(session, pixels[start:start + CONTROL_BATCH])
                       for start in range(0, len(pixels), CONTROL_BATCH)]
            del session
        embeddings = np.concatenate([batch["embedding"] for batch in batches])
        kept = np.concatenate([batch["kept_indices"] for batch in batches]) if "kept_indices" in batches[0] else None
        return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), kept


def control_accuracy(float_model: onnx.ModelProto, quantized: onnx.ModelProto, quantized_nodes: list[str],
                     control: ControlImages, max_agreement_drop: float,
                     folder: Path) -> tuple[onnx.ModelProto, ControlledQuantization]:
    """Choose the GEMMs of ``quantized`` (a Q/DQ graph of ``float_model``) to keep float, as the module says: the
    graph with them reverted, and what was done."""
    probe = AgreementProbe(float_model, control, folder)
    all_int8 = probe.measure(quantized)
    reverted, final, graph, trials = [], all_int8, quantized, 1
    if not all_int8.within(max_agreement_drop):
        gains = {}
        for name in quantized_nodes:  # sensitivity: what reverting this one GEMM alone wins back
            alone = probe.measure(revert_to_float(quantized, float_model, [name]))
            gains[name] = all_int8.divergence - alone.divergence
            trials += 1
        for name in sorted(quantized_nodes, key=lambda node: -gains[node]):  # stable: graph order among equals
            reverted.append(name)
            graph = revert_to_float(quantized, float_model, reverted)
            final = probe.measure(graph)
            trials += 1
            if final.within(max_agreement_drop):
                break
        for name in reversed(reverted[:-1] if final.within(max_agreement_drop) else []):  # least sensitive first
            fewer = [node for node in reverted if node != name]
            candidate = revert_to_float(quantized, float_model, fewer)
            measured = probe.measure(candidate)
            trials += 1
            if measured.within(max_agreement_drop):
                reverted, final, graph = fewer, measured, candidate
    return graph, ControlledQuantization(max_agreement_drop, len(control.pixels), control.sha256, all_int8.predictions,
                                  final.predictions, all_int8.kept_identical, final.kept_identical, tuple(reverted),
                                  trials, _weight_share(float_model, reverted, quantized_nodes))


def _weight_share(float_model: onnx.ModelProto, reverted: list[str], quantized_nodes: list[str]) -> float:
    """The share of the quantized GEMMs' weight elements that ``reverted`` keeps float."""
    sizes = {tensor.name: int(np.prod(tensor.dims)) for tensor in float_model.graph.initializer}
    quantized = set(quantized_nodes)
    elements = {node.name: sum(sizes.get(name, 0) for name in node.input) for node in float_model.graph.node
                if node.name in quantized}
    total = sum(elements.values())
    return sum(elements[name] for name in reverted) / total if total else 0.0


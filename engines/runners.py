"""One runner interface for every backend: the PyTorch module, an ONNX Runtime session, an OpenVINO compiled model,
and a TensorRT engine (``prtk.engines.tensorrt_adapter.TensorRTRunner``, over Polygraphy's ``TrtRunner``).

A runner takes preprocessed images ``[B,3,H,W]`` (float32, CPU) through ``prepare`` (moved to where the
backend reads them, once, outside any timing), runs them with ``infer`` and hands back the outputs by
name as CPU numpy arrays with ``fetch``; ``synchronize`` waits for queued GPU work. ``runner_for`` is the one
place that decides which runner runs an artifact on a backend; validation and benchmarks use only it and this
interface.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from prtk.core.errors import PrtkInputError
from prtk.export.artifact import GRAPH_BACKENDS, PROGRAM_BACKENDS, Artifact
from prtk.export.onnxruntime_session import onnxruntime_optimization, open_session

from .runner_interface import Runner

if TYPE_CHECKING:
    from prtk.models import LoadedClip


class TorchRunner(Runner):
    """A torch module (``DeployedTower``) on CPU or CUDA, in fp32, fp16 or bf16."""

    name = "torch"
    DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    def __init__(self, module: torch.nn.Module, device: str = "cpu", precision: str = "fp32"):
        if precision not in self.DTYPES:
            raise PrtkInputError(f"precision must be one of {', '.join(self.DTYPES)}, got {precision!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise PrtkInputError(f"device {device} requested but CUDA is not available (torch {torch.__version__})")
        self.device, self.dtype = device, self.DTYPES[precision]
        if device != "cpu" or precision != "fp32":  # leave the caller's module (and its CLIP) as it was
            module = copy.deepcopy(module)
        self.module = module.eval().to(device=device, dtype=self.dtype)
        self.output_names = list(module.output_names)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def infer(self, prepared: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.module(prepared)

    def fetch(self, outputs) -> dict[str, np.ndarray]:
        return {name: (value.float() if value.is_floating_point() else value).cpu().numpy()
                for name, value in zip(self.output_names, outputs, strict=True)}


class OnnxRuntimeRunner(Runner):
    """An ONNX file in an ONNX Runtime session: ``provider`` cpu, cuda or tensorrt (as installed)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "cpu", optimization: str = "all"):
        self.session = open_session(path, provider, optimization)
        self.device = "cpu" if provider == "cpu" else "cuda"
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def synchronize(self) -> None:
        """``session.run`` returns host arrays: nothing is left queued."""

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(images.numpy(), dtype=np.float32)

    def infer(self, prepared: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: prepared})

    def fetch(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, outputs, strict=True))


class OpenVinoRunner(Runner):
    """An ONNX file compiled by OpenVINO for its CPU plugin: latency hint (one stream over every core, the way one
    request at a time runs fastest) and float parts in fp32 (no silent bf16 on CPUs that have it); the int8 parts
    of a quantized graph run in int8. OpenVINO's TBB thread pool makes a later ``fork()`` in the same process
    unsafe (a torch DataLoader with workers crashed): prtk's commands that run it load their images in-process."""

    name = "openvino"

    def __init__(self, path: str | Path):
        import openvino

        core = openvino.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                           {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.input_name = self.compiled.inputs[0].get_any_name()
        self.output_names = [output.get_any_name() for output in self.compiled.outputs]

    def synchronize(self) -> None:
        """``infer`` is synchronous: nothing is left queued."""

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(images.numpy(), dtype=np.float32)

    def infer(self, prepared: np.ndarray):
        return self.request.infer({self.input_name: prepared})

    def fetch(self, outputs) -> dict[str, np.ndarray]:
        return {name: np.array(outputs[output]) for name, output in zip(self.output_names, self.compiled.outputs,
                                                                        strict=True)}


BACKENDS = ("torch", *GRAPH_BACKENDS, "tensorrt")  # what ``runner_for`` runs an artifact on


def runner_for(artifact: Artifact, backend: str, device: str = "cpu", precision: str = "fp32",
               clip: LoadedClip | None = None, pack: str | None = None) -> Runner:
    """The runner of ``artifact`` on ``backend`` (``BACKENDS``): torch the PyTorch module an fp32 graph was exported
    from (rebuilt over ``clip`` and ``pack``, on ``device`` in ``precision``), ONNX Runtime at the graph's
    precision's optimisation level (its CUDA provider for a GPU ``device``), OpenVINO on the CPU, TensorRT an
    engine; refused in one line where the artifact's description rules the backend out."""
    if backend in PROGRAM_BACKENDS:
        raise PrtkInputError(f"backend {backend} runs image files through the compiled program, not tensors")
    if backend not in BACKENDS:
        raise PrtkInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    check_runs_on(artifact, backend)
    if backend == "torch":
        return TorchRunner(artifact.reference_tower(clip or artifact.load_reference_model(), pack), device, precision)
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(artifact.path, "cpu" if device == "cpu" else "cuda",
                                 onnxruntime_optimization(artifact.precision))
    if backend == "openvino":
        return OpenVinoRunner(artifact.path)
    from .tensorrt_adapter import TensorRTRunner

    return TensorRTRunner(artifact.path, device if device != "cpu" else "cuda")


def check_runs_on(artifact: Artifact, backend: str) -> None:
    """Refuse a backend that ``artifact`` does not run on (``Artifact.runs_on``), saying what it runs on."""
    if artifact.runs_on(backend):
        return
    if artifact.is_engine:
        raise PrtkInputError(f"{artifact.path.name} is a TensorRT engine; {backend} runs .onnx graphs")
    if backend == "tensorrt":
        raise PrtkInputError(f"{artifact.path.name} is an ONNX graph; TensorRT runs engines: build one with "
                             "`prtk build-engine`")
    if backend == "torch":
        raise PrtkInputError(f"{artifact.path.name} is {artifact.variant}: torch runs the PyTorch module of an fp32 "
                             "graph")
    raise PrtkInputError(f"{artifact.path.name} runs on {', '.join(artifact.runtimes) or 'no runtime'} only (its "
                         f"description's runtimes), not on {backend}")

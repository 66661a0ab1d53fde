"""One runner interface for every backend: the PyTorch module, an ONNX Runtime session, an OpenVINO compiled model,
and a TensorRT engine (``prtk.engines.tensorrt_adapter.TensorRTRunner``, over Polygraphy's ``TrtRunner``).

A runner takes preprocessed images ``[B,3,H,W]`` (float32, CPU) through ``prepare`` (moved to where the
backend reads them, once, outside any timing), runs them with ``infer`` and hands back the outputs by
name as CPU numpy arrays with ``fetch``; ``synchronize`` waits for queued GPU work. Validation and
benchmarks use only this interface.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prtk.core.errors import PrtkInputError
from prtk.export.onnxruntime_session import open_session


class Runner:
    """Base class. ``name`` says which backend, ``device`` where it runs, ``output_names`` what it returns."""

    name = "runner"
    device = "cpu"
    output_names: list[str] = []

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def prepare(self, images: torch.Tensor) -> Any:
        return images

    def infer(self, prepared: Any) -> Any:
        raise NotImplementedError

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def synchronize(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize(self.device)

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        return self.fetch(self.infer(self.prepare(images)))


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
        try:
            import openvino
        except ImportError:
            raise PrtkInputError("OpenVINO is not installed here: pip install openvino") from None
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

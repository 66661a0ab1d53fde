"""The one place prtk reaches TensorRT: engine builds and the engine runner, both through Polygraphy's TensorRT
backend (``polygraphy.backend.trt``), which imports ``tensorrt`` when first used.

Builds: ``NetworkFromOnnxPath`` -> ``PostprocessNetwork`` (LayerNorm, softmax and reductions pinned to fp32 under
fp16/bf16/int8) -> ``CreateConfig`` (precision flags, precision constraints obeyed, the batch profile, the workspace
pool, the timing cache read) -> ``EngineBytesFromNetwork`` (the timing cache written back). The runner is
Polygraphy's ``TrtRunner`` behind prtk's ``Runner`` interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prtk.core.errors import PrtkInputError
from prtk.export.onnxruntime_session import GPU_HINT

from .runner_interface import Runner


@dataclass(frozen=True)
class EngineBuild:
    """A serialized engine and the facts of its build: TensorRT's version, the GPU and its compute capability."""

    engine: bytes
    builder: str  # "polygraphy <version>"
    tensorrt_version: str
    gpu: str
    compute_capability: str


def require_tensorrt():
    """The ``tensorrt`` module, or one line saying what is missing and how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise PrtkInputError(f"TensorRT is not installed here: {GPU_HINT}") from None
    if not torch.cuda.is_available():
        raise PrtkInputError(f"no CUDA GPU is visible (torch {torch.__version__}): TensorRT engines are built and "
                             "run on an NVIDIA GPU")
    return tensorrt


def build_engine_bytes(onnx_path: Path, input_name: str, input_shape: tuple[int, ...], precision: str,
                       batch: tuple[int, int, int], workspace_gib: float, timing_cache: Path | None) -> EngineBuild:
    """Build ``onnx_path`` at ``precision`` (fp32, fp16, bf16, int8: explicit quantization, float layers fp16) with
    one profile over ``batch`` (min, opt, max) for ``input_name`` of per-image shape ``input_shape`` ([3,H,W])."""
    trt = require_tensorrt()
    import polygraphy
    from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessNetwork,
                                        Profile)

    network = NetworkFromOnnxPath(str(onnx_path))
    if precision != "fp32":
        network = PostprocessNetwork(network, _keep_sensitive_layers_fp32, name="prtk-fp32-sensitive-layers")
    profile = Profile().add(input_name, *((size, *input_shape) for size in batch))
    cache = str(timing_cache) if timing_cache is not None else None
    config = CreateConfig(fp16=precision in ("fp16", "int8"), bf16=precision == "bf16", int8=precision == "int8",
                          precision_constraints=None if precision == "fp32" else "obey", profiles=[profile],
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * 2 ** 30)},
                          load_timing_cache=cache if cache and Path(cache).is_file() else None)
    try:
        engine = EngineBytesFromNetwork(network, config, save_timing_cache=cache)()
    except Exception as error:  # Polygraphy reports a failed parse or build as PolygraphyException
        raise PrtkInputError(f"TensorRT could not build an engine from {onnx_path}: "
                             f"{str(error).strip().splitlines()[0]}") from None
    return EngineBuild(bytes(engine), f"polygraphy {polygraphy.__version__}", trt.__version__,
                       torch.cuda.get_device_name(), ".".join(map(str, torch.cuda.get_device_capability())))


def _keep_sensitive_layers_fp32(network) -> None:
    """LayerNorm, softmax and reductions compute in fp32 (a Polygraphy network postprocess)."""
    import tensorrt as trt

    sensitive = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    floating = {trt.float32, trt.float16, trt.bfloat16}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in sensitive and layer.get_output(0).dtype in floating:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)


class TensorRTRunner(Runner):
    """A serialized TensorRT engine run by Polygraphy's ``TrtRunner``; inputs are torch CUDA tensors, outputs
    stay on the GPU until ``fetch``. ``infer`` returns after the engine's stream finished (Polygraphy
    synchronizes it), so wall time around it is the latency."""

    name = "tensorrt"

    def __init__(self, path: str | Path, device: str = "cuda"):
        require_tensorrt()
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.device = device
        try:
            self.runner = TrtRunner(EngineFromBytes(Path(path).read_bytes()), name=f"prtk-{Path(path).stem}")
            self.runner.activate()
        except Exception as error:
            raise PrtkInputError(f"cannot load TensorRT engine {path} (built by another TensorRT version or GPU?): "
                                 f"{str(error).strip().splitlines()[0]}") from None
        self.input_name = next(iter(self.runner.get_input_metadata()))
        engine = self.runner.engine
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        self.output_names = [name for name in names if name != self.input_name]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, torch.float32).contiguous()

    def infer(self, prepared: torch.Tensor) -> dict[str, torch.Tensor]:
        torch.cuda.current_stream(self.device).synchronize()
        return self.runner.infer({self.input_name: prepared}, copy_outputs_to_host=False)

    def synchronize(self) -> None:
        """``infer`` returns after the engine's stream finished: nothing is left queued."""

    def fetch(self, outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {name: outputs[name].cpu().numpy() for name in self.output_names}

    def __del__(self):
        runner = getattr(self, "runner", None)
        if runner is not None and runner.is_active:
            runner.deactivate()

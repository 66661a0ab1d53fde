"""``Runner``: the interface every backend's runner has (``prtk.engines.runners``, and TensorRT's in
``prtk.engines.tensorrt_adapter``): preprocessed images ``[B,3,H,W]`` in, outputs by name out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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

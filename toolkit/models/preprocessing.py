"""How an image becomes the image tower's input, as a fact that can be written down, read back and checked.

``Preprocessing`` is what open_clip records on a model (``get_model_preprocess_cfg``: size, resize mode,
interpolation, mean, std) and what an artifact's description says under ``input``; ``transform()`` rebuilds the
eval transform from it with open_clip's own ``image_transform``, so that a reader of the description (validate's
saved data loader, a deployer) preprocesses as the model does. ``differs_from`` proves that on a probe image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from prtk.core.errors import PrtkInputError
from prtk.models.compat import import_open_clip

SCALE = "pixel / 255, then (x - mean) / std per channel"
CROPS = {"shortest": "center", "squash": "none", "longest": "center, padded"}  # what follows the resize


@dataclass(frozen=True)
class Preprocessing:
    """RGB image -> float ``[3, size, size]``: resized (``resize_mode`` shortest / longest side or squash, with
    ``interpolation``), cropped to ``size`` x ``size`` (``CROPS``), scaled to [0, 1], normalised by ``mean`` and
    ``std`` per channel."""

    size: int
    resize_mode: str
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of_model(cls, model) -> Preprocessing:
        """What open_clip records on ``model`` (the settings its eval transform was built from)."""
        config = import_open_clip().get_model_preprocess_cfg(model)
        size = config["size"]
        return cls(size=int(size if isinstance(size, int) else size[0]),
                   resize_mode=config.get("resize_mode", "shortest"),
                   interpolation=config.get("interpolation", "bicubic"),
                   mean=tuple(float(v) for v in config.get("mean", ())),
                   std=tuple(float(v) for v in config.get("std", ())))

    @classmethod
    def from_description(cls, described: dict) -> Preprocessing:
        """The preprocessing an artifact description's ``input`` states."""
        resize = described["resize"]
        return cls(size=resize["size"], resize_mode=resize["mode"], interpolation=resize["interpolation"],
                   mean=tuple(described["mean"]), std=tuple(described["std"]))

    def description(self) -> dict:
        """The preprocessing fields of an artifact description's ``input``."""
        return {"layout": "NCHW", "color": "RGB", "scale": SCALE, "mean": list(self.mean), "std": list(self.std),
                "resize": {"size": self.size, "mode": self.resize_mode, "interpolation": self.interpolation,
                           "crop": CROPS.get(self.resize_mode, self.resize_mode)}}

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The eval transform these settings give, built by open_clip as it builds a model's own."""
        if self.resize_mode not in CROPS:
            raise PrtkInputError(f"unknown resize mode {self.resize_mode!r} (open_clip knows {', '.join(CROPS)})")
        return import_open_clip().image_transform(self.size, is_train=False, mean=self.mean, std=self.std,
                                                  resize_mode=self.resize_mode, interpolation=self.interpolation)

    def differs_from(self, transform: Callable[[Image.Image], torch.Tensor]) -> float:
        """The largest difference between this preprocessing and ``transform`` (a model's own) on a probe image
        that needs resizing and cropping (0.0: the same tensors)."""
        width, height = 2 * self.size + 7, self.size + 5  # not square, not a multiple: every step acts
        rows, columns = np.mgrid[0:height, 0:width]
        noise = np.random.default_rng(0).integers(0, 64, size=(height, width, 3))
        pixels = np.stack([rows * 255 // height, columns * 255 // width, (rows + columns) % 192], axis=-1) + noise
        probe = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
        mine, theirs = self.transform()(probe), transform(probe)
        if mine.shape != theirs.shape:
            return float("inf")
        return float((mine - theirs).abs().max())

"""Whole labelled data sets held in memory as uint8 tensors, with a content hash, for training.

Small test-bed data (CIFAR-10: 50,000 x 3 x 32 x 32 bytes = 150 MB) fits in memory; decoding once and
augmenting batched tensors is far faster than a per-image PIL pipeline on two cores.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from prtk.data.folder import ImageFolderDataset, class_display_name, rgb_image
from prtk.core.errors import PrtkInputError
from prtk.data.synthetic import CLASSES, shape_image


@dataclass
class LabelledImages:
    """``images`` uint8 ``[N, 3, H, W]``, ``labels`` int64 ``[N]``, class names for prompts, content hash."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    sha256: str
    source: dict  # where the images came from, for cards: {"root": ...} or {"synthetic": ..., "seed": ...}

    def __len__(self) -> int:
        return len(self.labels)


def _square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """RGB image -> uint8 ``[size, size, 3]``: shorter side resized to ``size`` (bicubic), then centre crop."""
    image = rgb_image(image)
    if image.size != (size, size):
        scale = size / min(image.size)
        resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        image = image.resize(resized, Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def _decode(payload: bytes, path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(payload)) as image:
            return _square_pixels(image, size)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise PrtkInputError(f"cannot decode image {path}: {error}") from None


def load_listed_images(root: str | Path, relative_paths: list[str], size: int) -> tuple[torch.Tensor, list[str]]:
    """Decode the images ``root/<relative path>`` to uint8 ``[I, 3, size, size]``, with each file's sha256."""
    pixels = np.empty((len(relative_paths), size, size, 3), dtype=np.uint8)
    hashes = []
    for index, relative in enumerate(relative_paths):
        path = Path(root) / relative
        if not path.is_file():
            raise PrtkInputError(f"image {relative} is missing from {root}")
        payload = path.read_bytes()
        hashes.append(hashlib.sha256(payload).hexdigest())
        pixels[index] = _decode(payload, path, size)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), hashes


def load_image_folder(root: str | Path, size: int,
                      progress: Callable[[int, int], None] | None = None) -> LabelledImages:
    """Decode every image of ImageFolder ``root`` to ``size x size``; the hash covers relative paths and bytes."""
    dataset = ImageFolderDataset(root, transform=lambda image: image, image_size=size)
    digest = hashlib.sha256()
    pixels = np.empty((len(dataset), size, size, 3), dtype=np.uint8)
    for index, record in enumerate(dataset.records):
        payload = record.path.read_bytes()
        digest.update(f"{dataset.relative_path(index)}|{len(payload)}|".encode())
        digest.update(payload)
        pixels[index] = _decode(payload, record.path, size)
        if progress is not None and (index % 1000 == 999 or index == len(dataset) - 1):
            progress(index + 1, len(dataset))
    return LabelledImages(images=torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
                          labels=torch.tensor([r.label for r in dataset.records], dtype=torch.int64),
                          classes=[class_display_name(c) for c in dataset.classes], sha256=digest.hexdigest(),
                          source={"root": str(root), "images": len(dataset)})


def generate_shapes(count: int, seed: int, size: int,
                    progress: Callable[[int, int], None] | None = None) -> LabelledImages:
    """Images ``0..count-1`` of synthetic data set ``seed``; the hash covers the generated pixels."""
    if count < len(CLASSES):
        raise PrtkInputError(f"count must be at least {len(CLASSES)} (one image per class), got {count}")
    digest = hashlib.sha256()
    pixels = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for index in range(count):
        image, labels[index] = shape_image(index, seed, size)
        pixels[index] = np.asarray(image, dtype=np.uint8)
        digest.update(pixels[index].tobytes())
        if progress is not None and (index % 1000 == 999 or index == count - 1):
            progress(index + 1, count)
    return LabelledImages(images=torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
                          labels=torch.from_numpy(labels), classes=[class_display_name(c) for c in CLASSES],
                          sha256=digest.hexdigest(),
                          source={"synthetic": "shapes", "seed": seed, "images": count, "size": size})


class Normalizer:
    """Float images in [0, 1] ``[B, 3, H, W]`` -> the model's normalised input."""

    def __init__(self, clip):
        preprocess = clip.preprocess_config
        self.mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)

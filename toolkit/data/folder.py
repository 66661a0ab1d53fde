"""ImageFolder data (class = folder name), decoded with PIL (high-depth images scaled to 8 bits, ``rgb_image``) and
preprocessed with the model's own transform.

A file that cannot be decoded comes back flagged instead of raising inside a loader worker, so the
caller can name it (or count and skip it with ``--skip-bad``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from prtk.core.errors import PrtkInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class UnreadableImageError(PrtkInputError):
    """An image file that cannot be decoded (commands that can skip such files add how)."""


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int


def rgb_image(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. PIL's own conversion clips 16- and 32-bit grayscale at 255 (a 16-bit PNG becomes
    white), so those are scaled: 16-bit (``I;16*``, and ``I`` within [0, 65535]) by 255 / 65535, float (``F``)
    within [0, 1] by 255; other values of those modes are refused (ValueError: an unreadable image)."""
    if not (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        return image.convert("RGB")
    values = np.asarray(image)
    if image.mode == "F":
        if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ValueError(f"float image ({image.mode}) with values outside [0, 1]")
        gray = np.rint(values.astype(np.float64) * 255)
    else:
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"integer image ({image.mode}) with values outside the 16-bit range")
        gray = (values.astype(np.int64) * 255 + 32767) // 65535
    return Image.fromarray(gray.astype(np.uint8), "L").convert("RGB")


def class_display_name(folder: str) -> str:
    """Folder name -> class name used in prompts: ``pickup_truck`` -> ``pickup truck``."""
    return folder.replace("_", " ").replace("-", " ")


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/<class>/**/<image>``; items are ``(image [3,H,W], label, index, error)``, error '' when decoded."""

    def __init__(self, root: str | Path, transform: Callable, image_size: int, limit: int | None = None):
        self.root = Path(root)
        if limit is not None and limit < 1:
            raise PrtkInputError(f"limit must be at least 1, got {limit}")
        if not self.root.is_dir():
            raise PrtkInputError(f"data folder not found: {self.root}")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        records, classes, empty = [], [], []
        for folder in folders:
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and _image_file(p))
            if files:
                records.extend(ImageRecord(path, len(classes)) for path in files)
                classes.append(folder.name)
            else:
                empty.append(folder.name)
        if not records:
            raise PrtkInputError(f"no images in {self.root}: expected {self.root}/<class>/<image file>")
        if empty:
            raise PrtkInputError(f"class folder {self.root / empty[0]} holds no images"
                                 + (f" ({len(empty) - 1} more empty)" if len(empty) > 1 else "")
                                 + ": add its images or remove it (class labels follow the folders)")
        if len(classes) < 2:
            raise PrtkInputError(f"found 1 class ({classes[0]!r}) in {self.root}: point --data at the folder "
                                 "whose subfolders are the classes")
        if limit is not None and limit < len(records):
            stride = len(records) / limit
            records = [records[int(i * stride)] for i in range(limit)]
        self.records = records
        self.classes = classes
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        try:
            with Image.open(record.path) as image:
                pixels = self.transform(rgb_image(image))
            return pixels, record.label, index, ""
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return torch.zeros(3, self.image_size, self.image_size), record.label, index, str(error) or "unreadable"

    def relative_path(self, index: int) -> str:
        return self.records[index].path.relative_to(self.root).as_posix()

    def sha256(self, index: int) -> str:
        """SHA-256 of image ``index``'s file; an unreadable file (e.g. a dangling symlink) is bad input."""
        from prtk.core.files import file_sha256

        try:
            return file_sha256(self.records[index].path)
        except OSError as error:
            raise PrtkInputError(f"cannot read image {self.records[index].path}: {error.strerror or error}") from None


def _image_file(path: Path) -> bool:
    """A file, or a symlink that does not point to a folder (a dangling one counts, as an unreadable image)."""
    return path.is_file() or (path.is_symlink() and not path.is_dir())


def make_loader(dataset: ImageFolderDataset, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """In-order batches of ``(images [B,3,H,W], labels [B], indices [B], errors list[str])``."""
    if batch_size < 1:
        raise PrtkInputError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise PrtkInputError(f"workers must be at least 0, got {workers}")
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       persistent_workers=False)

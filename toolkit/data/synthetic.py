"""A deterministic synthetic labelled data set: coloured shapes on cluttered, textured backgrounds.

Class = colour x shape (10 classes). Image ``i`` of a seed is drawn from its own generator
``numpy.random.default_rng([seed, i])``, so any image can be regenerated alone. The object covers a
minority of the patches, so which patches a pruned model keeps matters.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from prtk.core.files import check_writable_folder
from prtk.core.errors import PrtkInputError

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 230)}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
CLASSES = tuple(f"{colour}_{shape}" for colour in COLOURS for shape in SHAPES)
TRAIN_SEED = 0  # the split prtk-testbed-shapes is trained on
HELD_OUT_SEED = 1  # held out from that training; `prtk make-shapes` writes it by default


def shape_image(index: int, seed: int = 0, size: int = 64) -> tuple[Image.Image, int]:
    """Image ``index`` of data set ``seed``: an RGB PIL image ``size x size`` and its class index."""
    rng = np.random.default_rng([seed, index])
    label = index % len(CLASSES)
    colour_name, shape = CLASSES[label].split("_")
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    radius = size * rng.uniform(0.12, 0.2)
    cx, cy = rng.uniform(radius, size - radius, 2)
    colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[colour_name])
    _draw_shape(draw, shape, cx, cy, radius, colour, rng.uniform(0, 2 * math.pi))
    return image, label


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Muted noise texture plus grey-brown clutter strokes and blobs."""
    base = rng.integers(60, 180, 3)
    noise = rng.normal(0, 18, (size // 4, size // 4, 3))
    texture = np.clip(base + np.kron(noise, np.ones((4, 4, 1))), 0, 255).astype(np.uint8)
    image = Image.fromarray(texture).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 9)):
        grey = int(rng.integers(40, 220))
        tint = tuple(int(np.clip(grey + d, 0, 255)) for d in rng.integers(-20, 21, 3))
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=tint, width=int(rng.integers(1, 4)))
        else:
            r = size * rng.uniform(0.03, 0.08)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tint)
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                colour: tuple, angle: float) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=max(2, int(r / 3)))
    elif shape in ("square", "triangle"):
        corners = 4 if shape == "square" else 3
        points = [(cx + r * math.cos(angle + 2 * math.pi * j / corners),
                   cy + r * math.sin(angle + 2 * math.pi * j / corners)) for j in range(corners)]
        draw.polygon(points, fill=colour)
    else:
        arm = max(2, int(r / 2.5))
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=arm)


def shape_images(count: int, seed: int = 0, size: int = 64) -> Iterator[tuple[Image.Image, int]]:
    for index in range(count):
        yield shape_image(index, seed, size)


def write_shapes_folder(out: str | Path, count: int, seed: int = 0, size: int = 64, force: bool = False) -> Path:
    """Write ``count`` images as an ImageFolder ``out/<colour_shape>/<index>.png``, atomically."""
    out = Path(out)
    if count < len(CLASSES):
        raise PrtkInputError(f"count must be at least {len(CLASSES)} (one image per class), got {count}")
    if size < 16:
        raise PrtkInputError(f"image size must be at least 16, got {size}")
    check_writable_folder(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise PrtkInputError(f"output folder exists and is not empty: {out} (pass --force to replace it)")
        stranger = _not_shapes(out)
        if stranger is not None:
            raise PrtkInputError(f"{out} holds {stranger}, which is not part of a shapes data set: "
                                 "--force replaces only an earlier shapes folder; choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    for name in CLASSES:
        (staging / name).mkdir()
    for index, (image, label) in enumerate(shape_images(count, seed, size)):
        image.save(staging / CLASSES[label] / f"{index:06d}.png")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


def _not_shapes(folder: Path) -> Path | None:
    """The first entry of ``folder`` that a shapes data set would not hold (class folders of ``NNNNNN.png``)."""
    for entry in sorted(folder.iterdir()):
        if entry.name not in CLASSES or not entry.is_dir() or entry.is_symlink():
            return entry
        for image in sorted(entry.iterdir()):
            if not (image.suffix == ".png" and image.stem.isdigit() and image.is_file() and not image.is_symlink()):
                return image
    return None

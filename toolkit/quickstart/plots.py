"""The quickstart's pictures (matplotlib, headless): accuracy and speedup vs keep ratio, kept patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(accuracy: dict[str, dict[float, float]], unpruned: float, path: Path) -> None:
    """Top-1 % vs keep ratio, one line per method, the unpruned top-1 as a dashed line."""
    plt, figure, axes = _keep_ratio_axes(accuracy)
    axes.axhline(unpruned, color="black", linestyle="--", linewidth=1, label=f"unpruned ({unpruned:.1f}%)")
    _save(plt, figure, axes, "Accuracy vs keep ratio", "zero-shot top-1 (%)", path)


def plot_speedup(speedup: dict[str, dict[float, float]], bound: dict[float, float], batch: int, path: Path) -> None:
    """Measured speedup over the unpruned tower vs keep ratio, one line per backend, beside the cost-model bound."""
    plt, figure, axes = _keep_ratio_axes(speedup)
    keeps = sorted(bound)
    axes.plot(keeps, [bound[k] for k in keeps], color="black", linestyle="--", linewidth=1, label="cost-model bound")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    _save(plt, figure, axes, "Speedup vs keep ratio", f"speedup over unpruned (batch {batch})", path)


def _keep_ratio_axes(series: dict[str, dict[float, float]]):
    """A figure with one line per entry of ``series`` ({name: {keep: value}})."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, points in series.items():
        keeps = sorted(points)
        axes.plot(keeps, [points[k] for k in keeps], marker="o", label=name)
    return plt, figure, axes


def _save(plt, figure, axes, title: str, ylabel: str, path: Path) -> None:
    axes.set_xlabel("keep ratio (fraction of patch tokens kept)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_kept_patches(images: torch.Tensor, kept: torch.Tensor, mean, std, patch: int, titles: list[str],
                      path: Path) -> None:
    """A grid of preprocessed images ``[n,3,H,W]`` with the dropped patches greyed out (kept ``[n,k]``)."""
    plt = _pyplot()
    count = len(images)
    columns = min(4, count)
    rows = (count + columns - 1) // columns
    figure, grid = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), dpi=120, squeeze=False)
    pixels = (images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)
    side = images.shape[-1] // patch
    for index, axes in enumerate(grid.flat):
        axes.axis("off")
        if index >= count:
            continue
        picture = pixels[index].permute(1, 2, 0).numpy().copy()
        mask = np.zeros(side * side, dtype=bool)
        mask[kept[index].numpy()] = True
        dropped = np.kron(~mask.reshape(side, side), np.ones((patch, patch), dtype=bool))
        picture[dropped] = 0.25 * picture[dropped] + 0.75 * 0.5
        axes.imshow(picture, interpolation="nearest")
        axes.set_title(titles[index], fontsize=8)
    figure.suptitle(f"Kept patches (dropped ones greyed), {kept.shape[1]} of {side * side}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)

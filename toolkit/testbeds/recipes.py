"""prtk's own small CLIPs, trained and shipped so every accuracy claim has a model whose patches matter.

``build_testbed`` trains a built-in architecture from seeded random weights, writes fp16 safetensors
and a JSON card (command, data hash, seed, epochs, wall time, measured zero-shot accuracy), and
measures that accuracy on the shipped file itself through the same path as ``prtk eval``.
"""

from __future__ import annotations

import platform
import shutil
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from prtk import __version__
from prtk.core.files import check_writable, write_bytes_atomic, write_json_atomic
from prtk.testbeds.clip_training import ClipTrainConfig, train_clip
from prtk.core.errors import PrtkInputError
from prtk.core.devices import resolve_device
from prtk.evaluation.accuracy import EvalConfig, evaluate
from prtk.data.tensors import LabelledImages, generate_shapes, load_image_folder
from prtk.models import builtin_config_path, load_clip, shipped_model_names
from prtk.data.synthetic import HELD_OUT_SEED, TRAIN_SEED, write_shapes_folder

SUBSET_IMAGES = 1000  # the fixed, evenly spaced subset whose accuracy tests reproduce


@dataclass(frozen=True)
class TestbedRecipe:
    """How a test bed is trained: its data source and default schedule."""

    name: str
    data: str  # "image-folder" (train and test ImageFolders) or "shapes" (generated)
    epochs: int
    batch_size: int = 256
    train_count: int = 0  # shapes only: generated training images
    test_count: int = 0  # shapes only: generated held-out images


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECIPES = {
    "prtk-testbed-cifar10": TestbedRecipe("prtk-testbed-cifar10", "image-folder", epochs=10),
    "prtk-testbed-shapes": TestbedRecipe("prtk-testbed-shapes", "shapes", epochs=10, batch_size=128,
                                         train_count=30000, test_count=2000),
}

ProgressFactory = Callable[[str, str], AbstractContextManager]  # (description, unit) -> update(completed, total)


def _no_progress(description: str, unit: str) -> AbstractContextManager:
    return nullcontext(None)


def recipe(name: str) -> TestbedRecipe:
    if name not in RECIPES:
        raise PrtkInputError(f"unknown test bed {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def fp16_safetensors(model: torch.nn.Module, name: str) -> bytes:
    """The model's state dict as safetensors bytes, floating-point tensors in float16."""
    from safetensors.torch import save

    state = {key: (value.half() if value.is_floating_point() else value).contiguous()
             for key, value in model.state_dict().items()}
    return save(state, metadata={"model": name, "prtk_version": __version__})


def build_testbed(name: str, out_dir: str | Path, *, train_dir: str | Path | None = None,
                  test_dir: str | Path | None = None, config: ClipTrainConfig | None = None,
                  train_count: int | None = None, test_count: int | None = None, work_dir: str | Path | None = None,
                  force: bool = False, command: str = "", device: str = "cpu", progress: ProgressFactory = _no_progress,
                  on_epoch: Callable[[dict], None] | None = None, model_name: str | None = None) -> dict:
    """Train test bed ``name``; writes ``out_dir/<model>.safetensors`` and ``<model>.card.json``, returns the card.

    ``model_name`` (default ``name``) names the result. It is required when a CIFAR-style test bed is trained on
    folders whose classes are not CIFAR-10's, so that the weights are never taken for the shipped test bed's;
    a result named otherwise also gets ``<model>.json``, the architecture as an open_clip config, and is loaded
    with ``--model-config out_dir/<model>.json --checkpoint out_dir/<model>.safetensors``.

    CIFAR-style test beds read ImageFolders ``train_dir`` and ``test_dir``; the shapes test bed generates
    ``train_count`` training images (seed 0) and ``test_count`` held-out images (seed 1). ``work_dir``
    keeps the per-epoch training state, so the same call after an interruption resumes. Training runs on
    ``device``; the accuracy of the shipped file is always measured on the CPU.
    """
    plan = recipe(name)
    torch_device = resolve_device(device)
    config = config or ClipTrainConfig(epochs=plan.epochs, batch_size=plan.batch_size)
    model_name = _result_name(plan, train_dir, model_name)
    out_dir = Path(out_dir)
    weights_path = check_writable(out_dir / f"{model_name}.safetensors", force)
    card_path = check_writable(out_dir / f"{model_name}.card.json", force)
    config_path = None if model_name == name else check_writable(out_dir / f"{model_name}.json", force)
    work_dir = Path(work_dir) if work_dir else out_dir / f".{model_name}.work"
    if force and work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    clip = load_clip(name, random_weights=True, seed=config.seed, device=torch_device)
    size = clip.spec.image_size
    train, held_out, held_out_dir = _testbed_data(plan, size, train_dir, test_dir, train_count, test_count,
                                                  work_dir, progress)
    with progress(f"train {name}", "step") as update:
        history = train_clip(clip, train, held_out, config, work_dir / "state.pt", progress=update,
                             on_epoch=on_epoch)
    write_bytes_atomic(weights_path, fp16_safetensors(clip.model, model_name))
    if config_path is not None:
        write_bytes_atomic(config_path, builtin_config_path(name).read_bytes())
        shipped = load_clip(model_name, config=config_path, checkpoint=weights_path)
    else:
        shipped = load_clip(name, checkpoint=weights_path)
    accuracy = _measure(shipped, held_out_dir, config.seed, progress)
    card = {
        "model": model_name,
        "architecture": name,
        "prtk_version": __version__,
        "command": command,
        "weights": {"file": weights_path.name, "dtype": "float16", "bytes": weights_path.stat().st_size,
                    "sha256": shipped.weights_sha256},
        "data": {"train": train.source | {"sha256": train.sha256, "classes": train.classes},
                 "held_out": held_out.source | {"sha256": held_out.sha256}},
        "seed": config.seed,
        "epochs": config.epochs,
        "training": asdict(config) | {"templates": list(config.templates)},
        "wall_time_s": round(sum(record["seconds"] for record in history), 1),  # training, across resumes
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "device": device},
        "history": history,
        "accuracy": accuracy,
    }
    write_json_atomic(card_path, card)
    shutil.rmtree(work_dir)
    return card


def _result_name(plan: TestbedRecipe, train_dir, model_name: str | None) -> str:
    """The trained model's name: ``model_name``, or the test bed's own when it is trained on its own data."""
    if model_name is not None:
        if not model_name or not all(c.isalnum() or c in "-_." for c in model_name):
            raise PrtkInputError(f"--model-name must be letters, digits, '-', '_' or '.', got {model_name!r}")
        if model_name != plan.name and model_name in shipped_model_names():
            raise PrtkInputError(f"--model-name {model_name} is the name of a known model that ships with prtk or "
                                 "open_clip (see `prtk models`): choose a name of your own")
        return model_name
    if plan.data == "image-folder" and train_dir is not None and Path(train_dir).is_dir():
        classes = tuple(sorted(p.name for p in Path(train_dir).iterdir() if p.is_dir() and not p.name.startswith(".")))
        if classes != CIFAR10_CLASSES:
            raise PrtkInputError(f"{train_dir} is not CIFAR-10 (its classes: {', '.join(classes[:4])}"
                                 f"{', ...' if len(classes) > 4 else ''}): pass --model-name NAME, so that the "
                                 f"weights are not taken for {plan.name}'s")
    return plan.name


def _testbed_data(plan: TestbedRecipe, size: int, train_dir, test_dir, train_count, test_count, work_dir: Path,
                  progress: ProgressFactory) -> tuple[LabelledImages, LabelledImages, Path]:
    """Training and held-out images in memory, and the held-out ImageFolder that ``prtk eval`` reads."""
    if plan.data == "shapes":
        if train_dir or test_dir:
            raise PrtkInputError(f"{plan.name} generates its own data: drop --train-data/--test-data")
        train_count = plan.train_count if train_count is None else train_count
        test_count = plan.test_count if test_count is None else test_count
        with progress("generate training shapes", "img") as update:
            train = generate_shapes(train_count, TRAIN_SEED, size, update)
        held_out_dir = write_shapes_folder(work_dir / "held-out", test_count, HELD_OUT_SEED, size, force=True)
    else:
        if not train_dir or not test_dir:
            raise PrtkInputError(f"{plan.name} needs --train-data DIR and --test-data DIR (ImageFolders)")
        if train_count is not None or test_count is not None:
            raise PrtkInputError("--train-count/--test-count apply to generated data only")
        with progress("read training images", "img") as update:
            train = load_image_folder(train_dir, size, update)
        held_out_dir = Path(test_dir)
    with progress("read held-out images", "img") as update:
        held_out = load_image_folder(held_out_dir, size, update)
    if sorted(train.classes) != sorted(held_out.classes):
        raise PrtkInputError(f"training classes {train.classes} and held-out classes {held_out.classes} differ")
    if plan.data == "shapes":
        held_out.source = {"synthetic": "shapes", "seed": HELD_OUT_SEED, "images": test_count, "size": size}
    return train, _relabel(held_out, train.classes), held_out_dir


def _relabel(data: LabelledImages, classes: list[str]) -> LabelledImages:
    """The same images with labels indexing ``classes`` (the training order) instead of the folder order."""
    mapping = torch.tensor([classes.index(name) for name in data.classes])
    return replace(data, labels=mapping[data.labels], classes=list(classes))


def _measure(clip, held_out_dir: Path, seed: int, progress: ProgressFactory) -> dict:
    """Zero-shot accuracy of the shipped weights on the held-out split and its fixed subset, pruned sanity checks."""
    results = {}
    for label, config in (("cls-attention@0.6", EvalConfig(keep=0.6, scorer="cls-attention", seed=seed)),
                          ("random@0.3", EvalConfig(keep=0.3, scorer="random", seed=seed)),
                          ("subset", EvalConfig(keep=0.6, seed=seed, limit=SUBSET_IMAGES))):
        with progress(f"evaluate {label}", "img") as update:
            results[label] = evaluate(clip, held_out_dir, config, progress=update)
    full = results["cls-attention@0.6"]
    return {
        "held_out_images": full.images,
        "top1": full.unpruned.top1,
        "top5": full.unpruned.top5,
        "subset": {"images": results["subset"].images, "limit": SUBSET_IMAGES,
                   "top1": results["subset"].unpruned.top1},
        "pruned": {label: {"layer": results[label].pruning.layer, "keep": results[label].pruning.keep,
                           "top1": results[label].pruned.top1}
                   for label in ("cls-attention@0.6", "random@0.3")},
    }

"""Checkpoints read safely (safetensors, or ``torch.load(weights_only=True)``), loaded strictly, and hashed."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from prtk.core.errors import PrtkInputError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary objects: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise PrtkInputError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # e.g. the pickle protocol notice; the one-line error says enough
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's message advises weights_only=False: never repeat it
        raise PrtkInputError(f"cannot read checkpoint {path}: not a plain state dict of tensors "
                             f"({_unpickler_detail(error)}); prtk never unpickles other objects: save the state "
                             "dict alone, or as .safetensors") from None
    except Exception as error:  # any decoding failure is a bad file, reported in one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PrtkInputError(f"cannot read checkpoint {path}: {first_line}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PrtkInputError(f"checkpoint {path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _unpickler_detail(error: Exception) -> str:
    """The weights-only unpickler's own reason (e.g. ``Unsupported global: GLOBAL builtins.print``)."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        tail = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if tail:
            return tail[0].split(" was not an allowed global")[0].split(". ")[0].rstrip(".")[:120]
    return "unreadable pickle"


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> None:
    """Load the checkpoint at ``path`` into ``model`` strictly; a mismatch is reported in one line."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
    if mismatched:
        key = mismatched[0]
        problems.append(f"{len(mismatched)} shape mismatches (first: {key} is {list(state[key].shape)} "
                        f"in the checkpoint, {list(expected[key].shape)} in the model)")
    if problems:
        raise PrtkInputError(f"checkpoint {path} does not fit {name}: {'; '.join(problems)}")
    broken = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise PrtkInputError(f"checkpoint {path} has NaN or infinite values in {len(broken)} tensors "
                             f"(first: {broken[0]})")
    model.load_state_dict(state, strict=True)


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

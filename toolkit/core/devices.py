"""Where torch work runs: ``cpu`` or ``cuda[:N]``, refused in one line when CUDA is absent."""

from __future__ import annotations

import torch

from prtk.core.errors import PrtkInputError


def resolve_device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise PrtkInputError(f"device must be cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PrtkInputError(f"device {name} requested but CUDA is not available (torch {torch.__version__})")
    return torch.device(name)

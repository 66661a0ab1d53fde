"""Safetensors files that carry prtk's JSON metadata (ranking files, ranker packs) under the key ``prtk``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prtk.core.files import write_bytes_atomic
from prtk.core.errors import PrtkInputError


def write_tagged(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write atomically; equal inputs give equal bytes (sorted JSON keys, tensors in name order)."""
    from safetensors.torch import save

    tensors = {name: tensors[name].detach().contiguous() for name in sorted(tensors)}
    write_bytes_atomic(path, save(tensors, metadata={"prtk": json.dumps(meta, sort_keys=True)}))


def read_tagged(path: str | Path, kind: str, format_name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a file whose metadata ``format`` is ``format_name``; anything else is refused
    in one line naming the ``kind`` of file expected."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PrtkInputError(f"{kind} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("prtk", "{}"))
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # any decoding failure is a bad file, reported in one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PrtkInputError(f"cannot read {kind} {path}: {reason}") from None
    if meta.get("format") != format_name:
        raise PrtkInputError(f"{path} is not a prtk {kind} (format {meta.get('format')!r})")
    return tensors, meta

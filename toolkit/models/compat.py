"""Make ``import torchvision`` (and so ``import open_clip``) work when its C extension cannot load.

The registry's torchvision is a CUDA build; on a CPU-only torch its ``_C`` extension fails to load
and ``torchvision._meta_registrations`` then dies registering fake kernels for ``torchvision::nms``
and ``torchvision::qnms``, operators that only the extension defines. prtk never calls those
operators, so where (and only where) that import fails we define their two schemas and import again.
Where the extension loads, the first import succeeds and nothing is changed.
"""

from __future__ import annotations

import sys

_MISSING_OPERATOR = "operator torchvision::"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_fallback_library = None  # keeps the fallback schema registrations alive


def import_torchvision():
    """Import torchvision, defining the nms/qnms schemas first if its extension cannot load."""
    global _fallback_library
    try:
        import torchvision
    except RuntimeError as error:
        if _MISSING_OPERATOR not in str(error) or _fallback_library is not None:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        import torch

        _fallback_library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _fallback_library.define(schema)
        import torchvision
    return torchvision


def import_open_clip():
    """Import open_clip after making sure torchvision imports cleanly."""
    import_torchvision()
    import open_clip

    return open_clip

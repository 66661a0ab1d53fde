"""How close an artifact's answers must be to its PyTorch reference, per precision: ``Thresholds``, the criteria of
``prtk validate`` over a data set, and ``Tolerance``, the export's own ONNX Runtime check on a few images, which
holds the embedding to the same largest element difference."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from prtk.core.errors import PrtkInputError


@dataclass(frozen=True)
class Thresholds:
    """Pass when agreement >= ``min_agreement`` %, min cosine >= ``min_cosine``, |top-1 delta against the
    pruned reference| <= ``max_accuracy_delta`` points, the largest element difference of the embeddings
    <= ``max_abs_diff``, the largest per-image ||artifact - reference|| / ||reference|| <=
    ``max_relative_error`` and, where the graph outputs its kept patches, their sets are the reference's on >=
    ``min_kept_identical`` % of the images. The two differences catch damaged weights that leave the cosine high;
    the last, an int8 or staged graph whose later stages drift to other patches."""

    min_agreement: float
    min_cosine: float
    max_abs_diff: float
    max_relative_error: float
    max_accuracy_delta: float = 0.1
    min_kept_identical: float = 99.0

    @classmethod
    def for_precision(cls, precision: str, **overrides) -> Thresholds:
        """The defaults for ``precision``, with the ``overrides`` that are not None (each checked against
        ``THRESHOLD_RANGES``)."""
        half = cls(99.5, 0.999, 1e-2, 1e-2, min_kept_identical=KEPT_IDENTICAL_HALF)
        base = {"fp32": cls(99.9, 0.9999, 1e-4, 1e-4), "fp16": half, "bf16": half, "int8": INT8_THRESHOLDS}[precision]
        given = {key: value for key, value in overrides.items() if value is not None}
        for key, value in given.items():
            low, high = THRESHOLD_RANGES[key]
            if not low <= value <= high:  # also refuses NaN
                raise PrtkInputError(f"--{key.replace('_', '-')} must be in [{low:g}, {high:g}], got {value:g}")
        return cls(**(asdict(base) | given))


THRESHOLD_RANGES = {"min_agreement": (0.0, 100.0), "min_cosine": (-1.0, 1.0), "max_abs_diff": (0.0, math.inf),
                    "max_relative_error": (0.0, math.inf), "max_accuracy_delta": (0.0, 100.0),
                    "min_kept_identical": (0.0, 100.0)}
KEPT_IDENTICAL_HALF = 90.0  # fp16 / bf16 graphs score the patches in half precision: near-ties may swap a patch


INT8_THRESHOLDS = Thresholds(99.0, 0.98, 0.1, 0.2, 0.5)  # worst-image criteria loose: int8 moves single images


KEPT_AGREEMENT = {"fp32": 1.0, "fp16": 0.95, "int8": 0.9}  # the export check's share of kept indices that agree


@dataclass(frozen=True)
class Tolerance:
    """Largest allowed |ONNX Runtime - PyTorch| on the embedding (logits: times the logit scale) and the
    smallest allowed share of kept indices that agree (1.0: identical)."""

    embedding_atol: float
    kept_agreement: float
    precision: str = "fp32"  # the graph's; picks the ONNX Runtime optimisation level

    @classmethod
    def for_precision(cls, precision: str) -> Tolerance:
        """``Thresholds``' largest element difference for ``precision``, and its kept-index agreement."""
        return cls(Thresholds.for_precision(precision).max_abs_diff, KEPT_AGREEMENT[precision], precision)

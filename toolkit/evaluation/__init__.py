"""Stage 5, evaluation: zero-shot accuracy of the unpruned and the pruned tower in one pass (``evaluate``),
returned as an ``EvalReport``."""

from prtk.evaluation.accuracy import EvalConfig, evaluate
from prtk.evaluation.report import EvalReport

__all__ = ["EvalConfig", "EvalReport", "evaluate"]

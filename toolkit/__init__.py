"""prtk: learn which CLIP patch tokens to drop and deploy static-shape pruned image towers.

Submodules are imported on use so that ``import prtk`` and ``prtk --help`` stay fast:
``prtk.models`` (loading), ``prtk.pruning`` (the pruned tower), ``prtk.scorers``, ``prtk.zeroshot``,
``prtk.data``, ``prtk.flops``, ``prtk.evaluation``.
"""

__version__ = "0.1.0"

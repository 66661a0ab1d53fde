"""prtk: learn which CLIP patch tokens to drop and deploy static-shape pruned image towers.

One subpackage per stage of the data flow, each importing only the stages before it (docs/design.md):
``prtk.core`` -> ``prtk.models`` -> ``prtk.data`` -> ``prtk.pruning`` -> ``prtk.ranking`` -> ``prtk.predictor``
-> ``prtk.evaluation`` -> ``prtk.export`` -> ``prtk.engines`` -> ``prtk.quickstart`` -> ``prtk.cli``;
``prtk.testbeds`` trains the shipped test beds and only the CLI imports it. ``import prtk`` loads nothing else.
"""

__version__ = "0.1.0"

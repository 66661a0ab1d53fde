"""Stage 6, ``prtk.export``: static-shape ONNX graphs of pruned towers, one per keep ratio, their checks, and the
artifact format (``prtk.export.artifact``: the description written beside and inside each graph, and read back).
Nothing here imports ``prtk.engines``."""

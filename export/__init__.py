"""prtk.export: static-shape ONNX export of pruned image towers (one graph per keep ratio)."""

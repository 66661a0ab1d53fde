"""Stage 7, ``prtk.engines``: TensorRT engines, backend-neutral runners (torch, ONNX Runtime, TensorRT),
benchmarks, and validation of a deployed artifact against its PyTorch reference."""

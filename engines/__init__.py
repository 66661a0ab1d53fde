"""prtk.engines: TensorRT engines and backend-neutral runners (torch, onnxruntime, tensorrt)."""

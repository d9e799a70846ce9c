"""Exporting the embedding model: ONNX (verified with onnxruntime); reduced precision and TensorRT come next."""

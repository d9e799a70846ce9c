"""Shipping the embedding model: ONNX in fp32/fp16/int8 verified against PyTorch, TensorRT engines, DeepStream
configs, one runtime interface over PyTorch / onnxruntime / TensorRT, and latency benchmarks.

Modules, lowest first: ``formats`` (the format table and its option rules), ``runtime`` (the embedder
interface, onnxruntime and PyTorch embedders), ``precision`` and ``trt_ops`` (fp16/int8 conversion,
TensorRT's operator rules), ``onnx``, ``tensorrt``, ``deepstream``, ``load`` (opens any model file), and on
top ``engine`` (the whole TensorRT export) and ``bench``.
"""

"""The TensorRT backend, one concern per module; tensorrt itself is imported lazily, only inside the engine.

- :mod:`~fairsample.engines.tensorrt.load`: the build-or-load flow behind ``load_engine(..., backend="tensorrt")``.
- :mod:`~fairsample.engines.tensorrt.fallback`: may a cached plan run here, and if not: rebuild, onnxruntime or raise.
- :mod:`~fairsample.engines.tensorrt.runtime`: :class:`~fairsample.engines.tensorrt.runtime.TensorRTEngine`.
- :mod:`~fairsample.engines.tensorrt.graphs`: the bounded per-shape CUDA-graph LRU.
- :mod:`~fairsample.engines.tensorrt.refit`: full-weight refit (mapping a torch state dict onto the engine weights).

The decisions (manifest check, fallback, graph LRU, refit mapping) are pure Python and unit-tested on CPU.
"""

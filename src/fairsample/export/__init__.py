"""Export pipeline: torch U-Net -> ONNX -> optimized / fp16 ONNX -> TensorRT plan, with validation and a cache.

Submodules are imported on demand (``from fairsample.export.trt_build import TrtBuildRecipe``); importing this
package pulls in nothing heavy (STYLE.md rule 13).
"""

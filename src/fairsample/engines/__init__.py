"""Runtime engines: the U-Net forward ``(sample, timestep, encoder_hidden_states) -> prediction`` on one backend.

Backends: ``torch`` (the oracle, default), ``onnxruntime`` (CPU EP reference; CUDA EP with ``[gpu]``) and
``tensorrt`` (``[tensorrt]``; falls back to onnxruntime with one warning line when no GPU/TensorRT is present).
:func:`load_engine` is the single entry point; backends are imported lazily so ``import fairsample.engines`` stays
light (STYLE.md rule 13).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from fairsample.core.config import BACKENDS, UNKNOWN_BACKEND, check_backend
from fairsample.core.engine_spec import (
    BOUNDARY_DTYPE,
    PREDICTION_TYPES,
    Backend,
    Engine,
    EngineSpec,
    MemoryReport,
    PredictionType,
    ShapeProfile,
    ValidationReport,
    check_inputs,
    check_out,
)
from fairsample.core.errors import ConfigError

if TYPE_CHECKING:
    from fairsample.engines.ort_engine import OrtEngine
    from fairsample.engines.torch_engine import TorchEngine

__all__ = [
    "BACKENDS",
    "BOUNDARY_DTYPE",
    "PREDICTION_TYPES",
    "Backend",
    "Engine",
    "EngineSpec",
    "MemoryReport",
    "OrtEngine",
    "PredictionType",
    "ShapeProfile",
    "TorchEngine",
    "ValidationReport",
    "check_inputs",
    "check_out",
    "load_engine",
]

_UNKNOWN_BACKEND = UNKNOWN_BACKEND
_OPENVINO_CPU = (
    "backend 'openvino' runs on the CPU with a float32 boundary (precision=... picks bf16 or f32 inside), got "
    "device={device!r}, dtype={dtype}; use device='cpu' and the default dtype."
)
_TORCH_ONLY_OPTIONS = "`{name}` only applies to the compiled backends; drop it for backend='torch'."


def load_engine(
    bundle: Any,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Engine:
    """Build an engine for a model bundle.

    The ``onnxruntime`` backend exports the U-Net to ONNX, optimizes it (and converts it to fp16 with fp32 islands
    when ``dtype=torch.float16``), validates every artifact against torch fp32 (ENGINES.md §6) and stores it in the
    content-addressed cache on first use; later calls load from the cache. A stale or corrupt cache entry is rebuilt
    with a one-line :class:`~fairsample.core.errors.FairsampleWarning`.

    Args:
        bundle: a model bundle with ``.unet`` (diffusers ``UNet2DConditionModel``) and ``.prediction_type``; the
            onnxruntime backend also needs S from ``.conditioner.seq_len`` (or ``seq_len=`` in ``options``).
        backend: one of :data:`BACKENDS`: ``"torch"`` (default), ``"onnxruntime"``, ``"tensorrt"`` (built and
            validated on first use; without a CUDA device or tensorrt it falls back to onnxruntime with one
            :class:`~fairsample.core.errors.FairsampleWarning` line, unless ``strict=True``) or ``"openvino"`` (the
            same validated ONNX compiled by OpenVINO in bf16 on a CPU with native bf16, after an image gate on the
            bundle: :func:`fairsample.engines.openvino_engine.load_openvino_engine`; extra ``[openvino]``).
        device: where to run, e.g. ``"cpu"``.
        dtype: compute dtype inside the engine (the boundary is float32 regardless).
        cache_dir: compiled backends only: the artifact store (default ``$FAIRSAMPLE_CACHE_DIR`` or
            ``~/.cache/fairsample/engines``).
        **options: backend options: torch ``batch_invariant``, ``check_finite``, ``seq_len``; onnxruntime also
            ``max_batch``, ``max_size``, ``exporters``, ``keep_attention_fp32``, ``intra_op_threads``; tensorrt
            ``max_batch`` (B of the N = B / 2B profiles), ``profiles``, ``strict``, ``rebuild``, ``refit``,
            ``workspace_bytes``, ``cuda_graphs``, ``progress`` (see ``fairsample.engines.tensorrt.load``); openvino
            ``precision`` (``"bf16"`` default, ``"f32"``), ``threads``, ``max_batch``, ``max_size``, ``seq_len``.

    Returns:
        An :class:`Engine`.

    Raises:
        ConfigError: unknown ``backend`` (the message lists the supported ones) or bad bundle settings.
        ImportError: ``backend="onnxruntime"`` without onnxruntime (names ``pip install 'fairsample[ort]'``).
        ValidationFailed: an artifact failed its validation gate.

    Example:
        >>> from types import SimpleNamespace
        >>> from diffusers import UNet2DConditionModel
        >>> unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
        ...     layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        ...     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
        ...     norm_num_groups=8)
        >>> engine = load_engine(SimpleNamespace(unet=unet, prediction_type="epsilon"))
        >>> engine.backend, engine.spec.in_channels
        ('torch', 3)
    """
    check_backend(backend)
    if backend == "onnxruntime":
        from fairsample.engines._ort_build import load_ort_engine

        return load_ort_engine(bundle, device=device, dtype=dtype, cache_dir=cache_dir, **options)
    if backend == "openvino":
        if torch.device(device).type != "cpu" or dtype != torch.float32:
            raise ConfigError(_OPENVINO_CPU.format(device=str(device), dtype=dtype))
        from fairsample.engines.openvino_engine import load_openvino_engine

        return load_openvino_engine(bundle, cache_dir=cache_dir, **options)
    if backend == "tensorrt":
        from fairsample.engines.tensorrt.load import load_trt_engine

        return load_trt_engine(bundle, device=device, dtype=dtype, cache_dir=cache_dir, **options)
    if cache_dir is not None:
        raise ConfigError(_TORCH_ONLY_OPTIONS.format(name="cache_dir"))
    from fairsample.engines.torch_engine import TorchEngine

    return TorchEngine.from_bundle(bundle, device=device, dtype=dtype, **options)


def __getattr__(name: str) -> Any:
    """Lazy access to backend classes (``TorchEngine``, ``OrtEngine``) without importing diffusers at import."""
    if name == "TorchEngine":
        from fairsample.engines.torch_engine import TorchEngine

        return TorchEngine
    if name == "OrtEngine":
        from fairsample.engines.ort_engine import OrtEngine

        return OrtEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Runtime engines: the U-Net forward ``(sample, timestep, encoder_hidden_states) -> prediction`` on one backend.

This release ships the ``torch`` backend (the oracle). :func:`load_engine` is the single entry point; backends are
imported lazily so ``import fairsample.engines`` stays light (STYLE.md rule 13).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fairsample.engines.base import (
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
from fairsample.errors import ConfigError

if TYPE_CHECKING:
    from fairsample.engines.torch_engine import TorchEngine

__all__ = [
    "BACKENDS",
    "BOUNDARY_DTYPE",
    "PREDICTION_TYPES",
    "Backend",
    "Engine",
    "EngineSpec",
    "MemoryReport",
    "PredictionType",
    "ShapeProfile",
    "TorchEngine",
    "ValidationReport",
    "check_inputs",
    "check_out",
    "load_engine",
]

BACKENDS: tuple[str, ...] = ("torch",)
"""Backends this release can load."""

_UNKNOWN_BACKEND = "`backend` must be one of {supported}, got {backend!r}; use backend='torch'."


def load_engine(
    bundle: Any,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Engine:
    """Build an engine for a model bundle.

    Args:
        bundle: a model bundle with ``.unet`` (diffusers ``UNet2DConditionModel``) and ``.prediction_type``.
        backend: one of :data:`BACKENDS` (only ``"torch"`` in this release).
        device: where to run, e.g. ``"cpu"``.
        dtype: compute dtype inside the engine (the boundary is float32 regardless).

    Returns:
        An :class:`Engine`.

    Raises:
        ConfigError: unknown ``backend`` (the message lists the supported ones) or bad bundle settings.

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
    if backend not in BACKENDS:
        raise ConfigError(_UNKNOWN_BACKEND.format(supported=list(BACKENDS), backend=backend))
    from fairsample.engines.torch_engine import TorchEngine

    return TorchEngine.from_bundle(bundle, device=device, dtype=dtype)


def __getattr__(name: str) -> Any:
    """Lazy access to backend classes (``TorchEngine``) without importing diffusers at package import."""
    if name == "TorchEngine":
        from fairsample.engines.torch_engine import TorchEngine

        return TorchEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

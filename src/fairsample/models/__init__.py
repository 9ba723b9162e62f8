"""Model bundles (U-Net + scheduler + conditioner [+ VAE]), conditioners, built-in U-Net configs and model sources.

Names are re-exported lazily, so :mod:`fairsample.models.source` (JSON-only path checks) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "UNET_CONFIGS": "fairsample.models.builtin",
    "build_unet": "fairsample.models.builtin",
    "default_scheduler": "fairsample.models.builtin",
    "ModelBundle": "fairsample.models.bundle",
    "default_model_path": "fairsample.models.bundle",
    "new_latent_bundle": "fairsample.models.bundle",
    "new_pixel_bundle": "fairsample.models.bundle",
    "ClipTextConditioner": "fairsample.models.conditioners",
    "Conditioner": "fairsample.models.conditioners",
    "TokenTableConditioner": "fairsample.models.conditioners",
    "load_conditioner": "fairsample.models.conditioners",
    "inspect_model": "fairsample.models.source",
    "open_model": "fairsample.models.sd_import",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fairsample.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

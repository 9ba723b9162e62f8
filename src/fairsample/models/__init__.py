"""Model bundles (U-Net + scheduler + conditioner [+ VAE]), conditioners and built-in U-Net configs."""

from fairsample.models.builtin import UNET_CONFIGS, build_unet, default_scheduler
from fairsample.models.bundle import ModelBundle, default_model_path, new_latent_bundle, new_pixel_bundle
from fairsample.models.conditioners import ClipTextConditioner, Conditioner, TokenTableConditioner, load_conditioner

__all__ = [
    "UNET_CONFIGS",
    "ClipTextConditioner",
    "Conditioner",
    "ModelBundle",
    "TokenTableConditioner",
    "build_unet",
    "default_model_path",
    "default_scheduler",
    "load_conditioner",
    "new_latent_bundle",
    "new_pixel_bundle",
]

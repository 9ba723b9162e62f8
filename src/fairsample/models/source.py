"""What a model path holds, read from JSON only (no torch import): the fast first check of every ``--model``.

A model path is one of:

- a **fairsample bundle** (``fairsample_config.json``, written by ``fairsample train`` / ``model import``);
- a **diffusers Stable Diffusion pipeline folder** (``model_index.json`` + ``unet/ vae/ text_encoder/ tokenizer/
  scheduler/``, what ``StableDiffusionPipeline.save_pretrained`` writes; SD 1.x and 2.x);
- a **single-file checkpoint** (``.safetensors``), read by diffusers' ``from_single_file`` where it can work offline.

:func:`inspect_model` answers in milliseconds, so a wrong path fails before torch or diffusers are imported, and
``train --dry-run`` can show the fine-tuning defaults that come from the base model (:func:`finetune_defaults`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairsample.core.errors import ConfigError

BUNDLE_CONFIG = "fairsample_config.json"
MODEL_INDEX = "model_index.json"
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")

_MISSING = "`{flag}` {path} does not exist; pass a fairsample bundle, a diffusers Stable Diffusion folder or a file."
_NOT_A_MODEL = (
    "`{flag}` {path} is neither a fairsample bundle (no fairsample_config.json) nor a diffusers Stable Diffusion "
    "folder (no model_index.json); pass a folder written by `fairsample train` or `save_pretrained`."
)
_SD_INCOMPLETE = (
    "`{flag}` {path} is a diffusers folder without {missing}/; a Stable Diffusion pipeline needs "
    "unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (what StableDiffusionPipeline.save_pretrained writes)."
)
_PICKLE = (
    "`{flag}` {path} is a pickle checkpoint, which fairsample never loads (it can run code); convert it to "
    "safetensors or a diffusers folder where it was made, then pass that."
)
_NOT_SD_PIPELINE = (
    "`{flag}` {path} is a diffusers {cls} folder; fairsample takes Stable Diffusion 1.x/2.x pipelines "
    "(StableDiffusionPipeline: U-Net + VAE + CLIP text encoder)."
)

#: diffusers' text-to-image fine-tuning recipe (examples/text_to_image: lr 1e-5, constant schedule, no warm-up), the
#: starting point of the papers' fine-tuning scripts, used for Stable-Diffusion-style bases unless given.
SD_FINETUNE = {"learning_rate": 1e-5, "lr_schedule": "constant", "lr_warmup_steps": 0}


@dataclass(frozen=True)
class ModelSource:
    """What a model path holds (read from JSON files only).

    Attributes:
        path: the path as given.
        kind: ``"bundle"``, ``"sd_pipeline"`` or ``"single_file"``.
        latent: the U-Net works on VAE latents (SD-style).
        prediction_type: ``"epsilon"`` / ``"v_prediction"`` (``None`` for a single file until it is read).
        image_size: pixel side of the model's images (``None`` when unknown).
        architecture: the built-in architecture name, or ``"sd"`` / ``"bundle"`` for other U-Nets.

    Example:
        >>> from fairsample.models.bundle import default_model_path  # doctest: +SKIP
        >>> inspect_model(default_model_path()).kind  # doctest: +SKIP
        'bundle'
    """

    path: Path
    kind: str
    latent: bool
    prediction_type: str | None
    image_size: int | None
    architecture: str

    def describe(self) -> dict[str, Any]:
        """JSON-safe record of the source (stored in bundles made from it)."""
        return {
            "path": str(Path(self.path).absolute()),
            "kind": self.kind,
            "prediction_type": self.prediction_type,
            "image_size": self.image_size,
        }


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} could not be read as JSON ({exc}); the model folder is damaged.") from None
    return data if isinstance(data, dict) else {}


def _image_size(root: Path) -> int | None:
    unet = root / "unet" / "config.json"
    if not unet.is_file():
        return None
    side = _json(unet).get("sample_size")
    if isinstance(side, list):
        side = side[0]
    if not isinstance(side, int):
        return None
    vae = root / "vae" / "config.json"
    if vae.is_file():
        side *= 2 ** (len(_json(vae).get("block_out_channels", [0])) - 1)
    return side


def inspect_model(path: str | os.PathLike[str], flag: str = "--model") -> ModelSource:
    """Classify a model path without loading weights; raise one line naming ``flag`` when it cannot be a model.

    Args:
        path: a bundle folder, a diffusers Stable Diffusion folder or a ``.safetensors`` file.
        flag: the option the path came from (named in errors), e.g. ``"--init-from"``.

    Raises:
        ConfigError: the path does not exist, is a pickle checkpoint, or is not a model of a known layout.
    """
    root = Path(path)
    if not root.exists():
        raise ConfigError(_MISSING.format(flag=flag, path=root))
    if root.is_file():
        if root.suffix.lower() in PICKLE_SUFFIXES:
            raise ConfigError(_PICKLE.format(flag=flag, path=root))
        if root.suffix.lower() != ".safetensors":
            raise ConfigError(_NOT_A_MODEL.format(flag=flag, path=root))
        return ModelSource(root, "single_file", True, None, None, "sd")
    if (root / BUNDLE_CONFIG).is_file():
        cfg = _json(root / BUNDLE_CONFIG)
        sched = root / "scheduler" / "scheduler_config.json"
        pred = _json(sched).get("prediction_type") if sched.is_file() else cfg.get("prediction_type")
        return ModelSource(
            root,
            "bundle",
            (root / "vae").is_dir(),
            str(pred or "epsilon"),
            _image_size(root),
            str(cfg.get("architecture") or "bundle"),
        )
    if (root / MODEL_INDEX).is_file():
        index = _json(root / MODEL_INDEX)
        cls = str(index.get("_class_name", "?"))
        if "unet" not in index or "text_encoder" not in index:
            raise ConfigError(_NOT_SD_PIPELINE.format(flag=flag, path=root, cls=cls))
        for part in SD_COMPONENTS:
            if not (root / part).is_dir():
                raise ConfigError(_SD_INCOMPLETE.format(flag=flag, path=root, missing=part))
        sched = _json(root / "scheduler" / "scheduler_config.json") if (root / "scheduler").is_dir() else {}
        pred = str(sched.get("prediction_type") or "epsilon")  # diffusers' default when the config omits it
        return ModelSource(root, "sd_pipeline", True, pred, _image_size(root), "sd")
    raise ConfigError(_NOT_A_MODEL.format(flag=flag, path=root))


def finetune_defaults(source: ModelSource) -> dict[str, Any]:
    """TrainConfig values that come from the base model (below the config file and flags, above the defaults).

    Every base gives its prediction type, resolution and architecture; a Stable-Diffusion-style (latent) base also
    gives diffusers' fine-tuning recipe (:data:`SD_FINETUNE`). The project's own pixel bundles keep the training
    defaults for the learning rate (their study profiles set it explicitly).

    Example:
        >>> src = ModelSource(Path("sd"), "sd_pipeline", True, "epsilon", 512, "sd")
        >>> finetune_defaults(src)["learning_rate"], finetune_defaults(src)["image_size"]
        (1e-05, 512)
    """
    out: dict[str, Any] = {"architecture": source.architecture}
    if source.prediction_type:
        out["prediction_type"] = source.prediction_type
    if source.image_size:
        out["image_size"] = source.image_size
    if source.latent:
        out.update(SD_FINETUNE)
    return out

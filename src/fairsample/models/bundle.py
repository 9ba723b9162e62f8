"""Model bundles: U-Net + scheduler config + conditioner (+ optional VAE) + ``fairsample_config.json`` (STYLE.md §6.4).

Layout (diffusers-compatible component subfolders, safetensors only)::

    my_model/
      unet/config.json + diffusion_pytorch_model.safetensors
      scheduler/scheduler_config.json           # carries prediction_type
      conditioner/token_table.safetensors + conditioner.json   | text_encoder/ + tokenizer/ + conditioner/
      vae/                                      # optional (latent models)
      fairsample_config.json                    # groups, cells, method, weights kind, prediction_type, versions

``UNet2DConditionModel.from_pretrained(my_model, subfolder="unet")`` and
``DDPMScheduler.from_pretrained(my_model, subfolder="scheduler")`` work with plain diffusers.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from torch import Tensor

from fairsample._version import __version__
from fairsample.core.atomic import write_atomic
from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey, parse_cell
from fairsample.models.conditioners import ClipTextConditioner, TokenTableConditioner, load_conditioner

CONFIG_FILE = "fairsample_config.json"
FORMAT_VERSION = 1
DEFAULT_MODEL_NAME = "tone-digits-32"

_NOT_A_BUNDLE = (
    "`model` {path} is not a fairsample model bundle (no {missing}); pass a folder written by `fairsample train`, "
    "or omit --model to use the embedded default."
)
_PRED_MISMATCH = (
    "bundle {path}: fairsample_config.json says prediction_type={cfg!r} but scheduler/scheduler_config.json says "
    "{sched!r}; the bundle is inconsistent, re-save it."
)
_NEWER_FORMAT = "bundle {path} has format_version {found}, newer than this fairsample ({ours}); upgrade fairsample."


def library_versions() -> dict[str, str]:
    """Versions recorded in every artifact (bundles, output folders)."""
    import diffusers

    return {
        "fairsample": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


@dataclass
class ModelBundle:
    """A trained (or freshly built) model: everything a sampler needs besides the engine backend.

    Attributes:
        unet: ``UNet2DConditionModel``: ``(N, C, h, w), (N,), (N, S, D) → (N, C, h, w)``.
        scheduler: the training noise scheduler; its config carries ``prediction_type``.
        conditioner: :class:`TokenTableConditioner` (pixel models) or :class:`ClipTextConditioner` (SD-style).
        vae: optional ``AutoencoderKL``; when present the U-Net works on latents ``z = scaling_factor · E(x)``.
        config: the ``fairsample_config.json`` content (groups, label, cells, method, weights kind, ...).

    Example:
        >>> bundle = ModelBundle.load_default()
        >>> bundle.prediction_type, bundle.image_shape
        ('v_prediction', (3, 32, 32))
    """

    unet: UNet2DConditionModel
    scheduler: SchedulerMixin
    conditioner: TokenTableConditioner | ClipTextConditioner
    vae: AutoencoderKL | None = None
    config: dict[str, Any] = field(default_factory=dict)

    # -- derived facts ---------------------------------------------------------------------------------------------
    @property
    def prediction_type(self) -> str:
        """``"epsilon"`` or ``"v_prediction"``, from the scheduler config."""
        return str(self.scheduler.config.prediction_type)

    @property
    def groups(self) -> list[str]:
        """Sensitive attributes, in cell order."""
        return list(self.config.get("groups", list(self.conditioner.attributes)))

    @property
    def label_name(self) -> str:
        """The label column name."""
        return str(self.config.get("label", self.conditioner.label_name))

    @property
    def attribute_values(self) -> dict[str, list[str]]:
        """``{attribute: values}`` the model was trained on."""
        return {k: list(v) for k, v in self.conditioner.attributes.items()}

    @property
    def label_values(self) -> list[str]:
        """Labels the model was trained on."""
        return list(self.conditioner.labels)

    def cells(self) -> list[CellKey]:
        """The cells of the training data (the default generation plan), in sorted order."""
        texts = self.config.get("cells")
        if texts:
            return sorted(parse_cell(t, self.groups, self.label_name) for t in texts)
        out = [CellKey((), lab) for lab in self.label_values]
        for attr, vals in self.attribute_values.items():
            out = [CellKey(c.groups + ((attr, v),), c.label) for c in out for v in vals]
        return sorted(out)

    def sampling_defaults(self) -> dict[str, Any]:
        """Recommended sampling settings stored with the bundle (``fairsample_config.json`` → ``sampling``), e.g.
        ``{"guidance_scale": 1.5, "steps": 25, "scheduler": "ddim"}``, chosen after training by measurement
        (:func:`fairsample.train.guard.conditioning_guard`, table in ``sampling_selection``); they sit between
        :class:`SampleConfig`'s defaults and the user's config file / flags."""
        return dict(self.config.get("sampling", {}))

    def parse_cell(self, text: str) -> CellKey:
        """``'tone=dark,label=3'`` → :class:`CellKey`, checked against the values the model knows."""
        cell = parse_cell(text, self.groups, self.label_name)
        self.conditioner.cached([cell])  # raises ConfigError naming an unknown value
        return cell

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of what the U-Net denoises."""
        s = int(self.unet.config.sample_size)
        return (int(self.unet.config.in_channels), s, s)

    @property
    def vae_scale(self) -> int:
        """Pixel side ÷ latent side (1 without a VAE)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, H, W)`` of generated images."""
        c, h, w = self.latent_shape
        if self.vae is None:
            return (c, h, w)
        return (int(self.vae.config.out_channels), h * self.vae_scale, w * self.vae_scale)

    # -- pixel <-> model space -------------------------------------------------------------------------------------
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images ``(N, 3, H, W)`` in [-1, 1] → model space (identity for pixel models; VAE posterior sample × s)."""
        if self.vae is None:
            return images
        dist = self.vae.encode(images).latent_dist
        return dist.sample(generator=generator) * float(self.vae.config.scaling_factor)

    def decode(self, latents: Tensor) -> Tensor:
        """Model space → images ``(N, 3, H, W)`` in [-1, 1] (not clamped)."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents / float(self.vae.config.scaling_factor)).sample

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> ModelBundle:
        """Move every module (in place) and return self."""
        for m in (self.unet, self.conditioner, self.vae):
            if m is not None:
                m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)
        return self

    def eval(self) -> ModelBundle:
        """Put every module in eval mode with gradients off (sampling)."""
        for m in (self.unet, self.conditioner, self.vae):
            if m is not None:
                m.eval().requires_grad_(False)
        return self

    # -- persistence -----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, unet_dtype: torch.dtype | None = None) -> Path:
        """Write the bundle's components into ``path`` (other files there, e.g. ``checkpoints/``, are kept).

        Components are written to a temporary sibling first and moved in one by one; ``fairsample_config.json`` is
        removed first and moved in last, so a folder without it is never mistaken for a complete bundle.

        Args:
            path: destination folder (replaced if it exists).
            unet_dtype: store the U-Net weights in this dtype (e.g. ``torch.float16`` to halve the file); loading
                always returns float32 unless asked otherwise.

        Returns:
            The bundle path.
        """
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            unet = self.unet
            if unet_dtype is not None:
                unet = UNet2DConditionModel.from_config(self.unet.config).to(unet_dtype)
                unet.load_state_dict({k: v.to(unet_dtype) for k, v in self.unet.state_dict().items()})
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.scheduler.save_pretrained(tmp / "scheduler")
            self.conditioner.save(tmp)
            if self.vae is not None:
                self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            cfg = dict(self.config)
            cfg.update(
                format_version=FORMAT_VERSION,
                prediction_type=self.prediction_type,
                kind="latent" if self.vae is not None else "pixel",
                groups=self.groups,
                label=self.label_name,
                conditioner=self.conditioner.kind,
                versions=library_versions(),
            )
            cfg.setdefault("cells", [c.to_text(self.label_name) for c in self.cells()])
            (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            if self.vae is not None and isinstance(self.conditioner, ClipTextConditioner):
                (tmp / MODEL_INDEX).write_text(json.dumps(sd_model_index(self), indent=2) + "\n", encoding="utf-8")
            _publish(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.config = json.loads((dest / CONFIG_FILE).read_text(encoding="utf-8"))
        return dest

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> ModelBundle:
        """Read a bundle folder (safetensors + JSON only; never unpickles, never downloads).

        Raises:
            ConfigError: not a bundle, or inconsistent prediction types.
        """
        root = Path(path)
        if not root.exists():
            raise ConfigError(f"`model` {root} does not exist; pass a folder written by `fairsample train`.")
        if not (root / CONFIG_FILE).exists() and (root / MODEL_INDEX).exists():
            raise ConfigError(
                f"`model` {root} is a diffusers Stable Diffusion folder, not a fairsample bundle; open it with "
                "fairsample.models.sd_import.open_model (the CLI's --model does) or `fairsample model import`."
            )
        for part in (CONFIG_FILE, "unet", "scheduler", "conditioner"):
            if not (root / part).exists():
                raise ConfigError(_NOT_A_BUNDLE.format(path=root, missing=part))
        cfg = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
        if int(cfg.get("format_version", 1)) > FORMAT_VERSION:
            raise ConfigError(_NEWER_FORMAT.format(path=root, found=cfg["format_version"], ours=FORMAT_VERSION))
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", use_safetensors=True, torch_dtype=dtype)
        scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
        if cfg.get("prediction_type", scheduler.config.prediction_type) != scheduler.config.prediction_type:
            raise ConfigError(
                _PRED_MISMATCH.format(path=root, cfg=cfg["prediction_type"], sched=scheduler.config.prediction_type)
            )
        conditioner = load_conditioner(root)
        vae = None
        if (root / "vae").exists():
            vae = AutoencoderKL.from_pretrained(root, subfolder="vae", use_safetensors=True, torch_dtype=dtype)
        bundle = cls(unet=unet, scheduler=scheduler, conditioner=conditioner, vae=vae, config=cfg)
        bundle.config["path"] = str(root)
        bundle.conditioner.to(dtype=dtype)
        return bundle.to(device).eval()

    @classmethod
    def load_default(cls, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ModelBundle:
        """The embedded default model (tone-digits, 32×32, shipped inside the wheel)."""
        return cls.load(default_model_path(), device=device, dtype=dtype)

    @property
    def bundle_id(self) -> str:
        """A short identifier recorded in output folders: the bundle path or the embedded model name."""
        return str(self.config.get("name") or self.config.get("path") or "in-memory")


_COMPONENTS = ("unet", "scheduler", "conditioner", "text_encoder", "tokenizer", "vae", "model_index.json")
MODEL_INDEX = "model_index.json"


def sd_model_index(bundle: ModelBundle) -> dict[str, Any]:
    """The ``model_index.json`` that lets ``StableDiffusionPipeline.from_pretrained(bundle_dir)`` open a latent
    bundle (U-Net + VAE + CLIP text encoder + tokenizer + scheduler; no safety checker or feature extractor).

    Example:
        >>> sd_model_index(bundle)["_class_name"]  # doctest: +SKIP
        'StableDiffusionPipeline'
    """
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", type(bundle.unet).__name__],
        "vae": ["diffusers", type(bundle.vae).__name__],
        "text_encoder": ["transformers", type(bundle.conditioner.text_encoder).__name__],  # type: ignore[union-attr]
        "tokenizer": ["transformers", type(bundle.conditioner.tokenizer).__name__],  # type: ignore[union-attr]
        "scheduler": ["diffusers", type(bundle.scheduler).__name__],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
    }


def update_bundle_config(path: str | os.PathLike[str], updates: Mapping[str, Any]) -> dict[str, Any]:
    """Set top-level entries of a saved bundle's ``fairsample_config.json`` (atomic rewrite; other keys kept).

    Args:
        path: the bundle folder.
        updates: JSON-safe ``{key: value}``; a ``None`` value removes the key.

    Returns:
        The new config.

    Raises:
        ConfigError: ``path`` is not a bundle.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); _ = (d / CONFIG_FILE).write_text('{"a": 1, "b": 2}')
        >>> update_bundle_config(d, {"b": None, "c": [3]})
        {'a': 1, 'c': [3]}
    """
    root = Path(path)
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise ConfigError(_NOT_A_BUNDLE.format(path=root, missing=CONFIG_FILE))
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for key, value in updates.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    write_atomic(cfg_path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg


def _publish(tmp: Path, dest: Path) -> None:
    """Move bundle components from ``tmp`` into ``dest``; the config file goes last (the completeness marker)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / CONFIG_FILE).unlink(missing_ok=True)
    for name in _COMPONENTS:
        if (dest / name).is_dir():
            shutil.rmtree(dest / name)
        elif (dest / name).exists():
            (dest / name).unlink()
        if (tmp / name).exists():
            os.replace(tmp / name, dest / name)
    os.replace(tmp / CONFIG_FILE, dest / CONFIG_FILE)


def default_model_path() -> Path:
    """Folder of the embedded default model inside the installed package."""
    return Path(str(importlib.resources.files("fairsample") / "assets" / DEFAULT_MODEL_NAME))


def new_pixel_bundle(
    attributes: Mapping[str, list[str]],
    labels: list[str],
    *,
    architecture: str = "tiny-32",
    image_size: int = 32,
    channels: int = 3,
    cross_attention_dim: int = 64,
    prediction_type: str = "epsilon",
    label_name: str = "label",
    config: Mapping[str, Any] | None = None,
) -> ModelBundle:
    """A freshly initialised built-in pixel-space bundle (token-table conditioner).

    Example:
        >>> b = new_pixel_bundle({"tone": ["dark", "light"]}, ["0", "1"], architecture="test", image_size=8,
        ...                      cross_attention_dim=8)
        >>> b.latent_shape, b.conditioner.seq_len
        ((3, 8, 8), 2)
    """
    from fairsample.models.builtin import build_unet, default_scheduler

    unet = build_unet(
        architecture, sample_size=image_size, in_channels=channels, cross_attention_dim=cross_attention_dim
    )
    cond = TokenTableConditioner(attributes, labels, dim=cross_attention_dim, label_name=label_name)
    sched = default_scheduler(prediction_type)  # type: ignore[arg-type]
    cfg = {"architecture": architecture, "groups": list(attributes), "label": label_name}
    cfg.update(config or {})
    return ModelBundle(unet=unet, scheduler=sched, conditioner=cond, vae=None, config=cfg)


def new_latent_bundle(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    conditioner: ClipTextConditioner,
    *,
    prediction_type: str = "epsilon",
    scheduler: SchedulerMixin | None = None,
    config: Mapping[str, Any] | None = None,
) -> ModelBundle:
    """A Stable-Diffusion-style bundle from local components (U-Net over VAE latents, CLIP text conditioner).

    The scheduler defaults to the SD-1.x training schedule (scaled-linear β 0.00085 → 0.012, T = 1000).
    """
    if scheduler is None:
        scheduler = DDPMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            prediction_type=prediction_type,
        )
    if int(unet.config.cross_attention_dim) != conditioner.dim:
        raise ConfigError(
            f"`unet` cross_attention_dim={unet.config.cross_attention_dim} does not match the text encoder width "
            f"{conditioner.dim}; build the U-Net with cross_attention_dim={conditioner.dim}."
        )
    cfg = {"groups": list(conditioner.attributes), "label": conditioner.label_name}
    cfg.update(config or {})
    return ModelBundle(unet=unet, scheduler=scheduler, conditioner=conditioner, vae=vae, config=cfg)

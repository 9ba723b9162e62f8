"""Typed configs with one source of truth (STYLE.md rule 5): frozen dataclasses, a comment per field.

The CLI's options mirror these fields; precedence is defaults < ``--config FILE`` (TOML or JSON) < explicit flags, and
the resolved config is written as ``config.json`` next to every output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fairsample.core.errors import ConfigError

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt", "openvino")
"""Engine backends this release can load (defined here, without torch, so the CLI can check them before importing
the heavy modules)."""

UNKNOWN_BACKEND = "`backend` must be one of {supported}, got {backend!r}; use backend='torch'."

BACKEND_ENV = "FAIRSAMPLE_BACKEND"
"""Sets the sampling commands' default backend (``auto`` when unset); the test suite sets ``torch``."""


def check_backend(backend: str, *, allow_auto: bool = False) -> str:
    """``backend`` itself if it is one of :data:`BACKENDS` (or ``"auto"`` with ``allow_auto``).

    Raises:
        ConfigError: any other value (the message lists the backends).

    Example:
        >>> check_backend("onnxruntime"), check_backend("auto", allow_auto=True)
        ('onnxruntime', 'auto')
    """
    allowed = ("auto", *BACKENDS) if allow_auto else BACKENDS
    if backend not in allowed:
        raise ConfigError(UNKNOWN_BACKEND.format(supported=list(allowed), backend=backend))
    return backend


def default_backend() -> str:
    """The sampling commands' default backend: ``$FAIRSAMPLE_BACKEND`` if set, else ``"auto"`` (the fastest
    validated engine on this machine, :func:`fairsample.engines.choice.choose_backend`).

    Example:
        >>> default_backend() in ("auto", *BACKENDS)  # "auto" unless $FAIRSAMPLE_BACKEND says otherwise
        True
    """
    value = os.environ.get(BACKEND_ENV, "").strip() or "auto"
    if value != "auto" and value not in BACKENDS:
        raise ConfigError(
            f"${BACKEND_ENV}={value!r} is not a backend; set it to one of {['auto', *BACKENDS]} or unset it."
        )
    return value


T = TypeVar("T")

GUARD_ENV = "FAIRSAMPLE_GUARD"
"""Set to ``0`` to turn the post-training conditioning guard off by default (test suites, CI smoke runs)."""


def guard_default() -> bool:
    """``TrainConfig.guard``'s default: True unless ``$FAIRSAMPLE_GUARD`` is ``0``/``false``/``no``/``off``.

    Example:
        >>> import os
        >>> guard_default() == (os.environ.get("FAIRSAMPLE_GUARD", "1").lower() not in ("0", "false", "no", "off"))
        True
    """
    return os.environ.get(GUARD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


_UNKNOWN_KEYS = "{where} has unknown setting(s) {extra}; known settings are {known}."
_BAD_FILE = "`config` {path} could not be read ({why}); give a TOML (.toml) or JSON (.json) file."


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`fairsample.train.train` (vanilla loop; methods add their own sections later).

    Example:
        >>> TrainConfig(max_steps=10).replace(batch_size=4).batch_size
        4
    """

    method: str = "vanilla"  # training method preset (fairsample.train.presets; `fairsample train --method`)
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the preset's knobs (TOML table)
    max_steps: int = 2000  # optimizer steps
    batch_size: int = 32  # images per optimizer step per process (before gradient accumulation)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-3  # peak AdamW learning rate (from-scratch tiny models like 1e-3; fine-tuning 1e-5)
    lr_schedule: str = "cosine"  # "constant" or "cosine" (after warmup)
    lr_warmup_steps: int = 100  # linear warmup steps
    weight_decay: float = 1e-2  # AdamW weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    grad_norm_every: int = 25  # log each loss term's gradient norm every N optimizer steps (0: off)
    mixed_precision: str = "no"  # "no", "fp16" (CUDA only) or "bf16"
    use_ema: bool = True  # keep an EMA of the weights; the bundle stores the EMA weights
    ema_decay: float = 0.999  # EMA decay cap (diffusers EMAModel warms up as (1+n)/(10+n))
    prediction_type: str = (
        "v_prediction"  # new built-in models (see docs/decisions.md); fine-tuning keeps the bundle's
    )
    p_uncond: float = 0.1  # CFG dropout: probability that every conditioning slot is nulled
    p_slot: float = 0.0  # per-slot dropout (attribute-only guidance); off by default
    architecture: str = "tiny-32"  # built-in U-Net config for new models (fairsample.models.builtin.UNET_CONFIGS)
    image_size: int = 32  # training resolution (images are resized to it)
    cross_attention_dim: int = 64  # token width D for new token-table models
    init_from: str | None = None  # fine-tune this bundle / Stable Diffusion folder instead of building a new model
    template: str | None = None  # prompt template of an SD --init-from (default: every cell field by column name)
    gradient_checkpointing: bool = (
        False  # recompute U-Net activations in the backward pass (less memory, ~25 % slower)
    )
    split: str = "train"  # train on this split of the dataset ("train", "all")
    split_seed: int = 0  # seed of the deterministic train/val/test split
    hflip: bool = False  # random horizontal flips (off: digits and many lesions are not mirror-symmetric)
    checkpoint_every: int = 100  # save a resumable checkpoint every N optimizer steps (0: only at the end)
    checkpoints_total_limit: int = 2  # keep at most this many checkpoints
    snapshot_every: int = 0  # also write a loadable bundle to snapshots/step-N every N steps (0: none)
    seed: int = 0  # the only seed: initialisation, batch order, noise and timesteps
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    # after training (rank 0): conditioning guard + recommended sampling settings (fairsample.train.guard)
    guard: bool = dataclasses.field(default_factory=guard_default)  # on unless FAIRSAMPLE_GUARD=0
    guard_images_per_cell: int = 8  # samples per cell (validation seeds 900000+, disjoint from evaluation seeds)
    guard_guidance: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)  # candidate CFG scales w
    guard_rescale: tuple[float, ...] = ()  # guidance-rescale φ also tried at the largest w (v-prediction), e.g. (0.7,)
    guard_steps: int = 25  # DDIM steps of the guard's samples (recorded as the recommended steps)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return to_dict(self)


@dataclass(frozen=True)
class SampleConfig:
    """Settings of :meth:`fairsample.generation.pipeline.FairSamplePipeline.generate` and ``fairsample generate``.

    Example:
        >>> SampleConfig().scheduler
        'ddim'
    """

    # defaults below are the fallbacks; a bundle's fairsample_config.json "sampling" table overrides them
    sampler: str = "conditional"  # sampler name (fairsample.samplers.SAMPLERS)
    sampler_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # attribute, to, tau, perturbation
    scheduler: str = "ddim"  # samplers.SCHEDULER_NAMES: ddim | ... | deis, optionally -trailing / -karras
    steps: int = 50  # inference steps
    guidance_scale: float = 3.0  # CFG scale w (diffusers convention: 1 = no guidance)
    guidance_rescale: float = 0.0  # guidance rescale φ in [0, 1] (Lin et al. 2024; 0 = off), for over-guided v-models
    batch_size: int = 32  # images per engine batch (the engine sees 2x with CFG)
    backend: str = "torch"  # engine backend
    device: str = "cpu"  # torch device for the engine and the sampler
    output_type: str = "pil"  # pil | np | pt

    def replace(self, **changes: Any) -> SampleConfig:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return to_dict(self)


def to_dict(obj: Any) -> dict[str, Any]:
    """A frozen config dataclass → JSON-safe dict (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
    """Build a config dataclass from a mapping; unknown keys raise :class:`ConfigError` naming them."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    extra = sorted(set(data) - names)
    if extra:
        raise ConfigError(_UNKNOWN_KEYS.format(where=where, extra=extra, known=sorted(names)))
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kw)


def read_config_file(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """Read a TOML or JSON config file; with ``section``, return that table (or the whole file if it has none)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(_BAD_FILE.format(path=p, why=exc)) from exc
    if not isinstance(data, dict):
        raise ConfigError(_BAD_FILE.format(path=p, why="the top level is not a table/object"))
    if section is not None and isinstance(data.get(section), dict):
        return dict(data[section])
    return data


def resolve(
    cls: type[T],
    *,
    file: str | Path | None = None,
    section: str | None = None,
    base: Mapping[str, Any] | None = None,
    **flags: Any,
) -> T:
    """defaults < ``base`` (e.g. a bundle's recommended sampling settings) < config file < flags (``None`` flags are
    ignored): the CLI's one resolution rule.

    Example:
        >>> resolve(TrainConfig, base={"max_steps": 7, "seed": 3}, max_steps=5).max_steps
        5
    """
    data: dict[str, Any] = dict(base or {})
    if file is not None:
        data.update(read_config_file(file, section))
    data.update({k: v for k, v in flags.items() if v is not None})
    return from_dict(cls, data, where=str(file) if file else "options")

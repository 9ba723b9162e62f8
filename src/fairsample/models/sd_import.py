"""Open any model path as a :class:`ModelBundle`: fairsample bundles, diffusers Stable Diffusion folders, single files.

A Stable Diffusion pipeline folder (SD 1.x / 2.x, what ``StableDiffusionPipeline.save_pretrained`` writes) becomes a
latent bundle: its U-Net, VAE and scheduler config as they are (ε or v prediction read from the scheduler config), and
a :class:`ClipTextConditioner` = its text encoder over a prompt template per cell. Where it came from is recorded in
``config["source"]``. Only safetensors/JSON are read; nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey
from fairsample.models.bundle import ModelBundle, new_latent_bundle
from fairsample.models.conditioners import ClipTextConditioner, default_template
from fairsample.models.source import ModelSource, inspect_model

_NO_SAFETENSORS = (
    "`{flag}` {path}: {part}/ has no safetensors weights ({why}); fairsample never unpickles .bin files: re-save "
    "the pipeline with safe_serialization=True where it was made, then pass that folder."
)
_SINGLE_FILE = (
    "`{flag}` {path}: diffusers could not read this single-file checkpoint offline ({why}); convert it once where its "
    'config is available: python -c "from diffusers import StableDiffusionPipeline as P; '
    "P.from_single_file('{path}').save_pretrained('sd-folder')\", then pass sd-folder."
)
_NO_CELLS = (
    "`{flag}` {path} is a Stable Diffusion folder, which has no cells of its own; pass the cells (e.g. --cells "
    "tone=dark,label=1, repeat) or import it for a dataset: fairsample model import {path} --data DATASET -o BUNDLE."
)


def vocabulary_from_cells(
    cells: Sequence[str], label_name: str = "label"
) -> tuple[dict[str, list[str]], list[str], str]:
    """``["tone=dark,label=1", ...]`` → ``({attribute: values}, labels, label key)`` in first-seen order (the label
    is the ``label_name`` key, else each text's last key).

    Example:
        >>> vocabulary_from_cells(["tone=dark,label=1", "tone=light,label=1", "tone=dark,label=0"])
        ({'tone': ['dark', 'light']}, ['1', '0'], 'label')
    """
    attrs: dict[str, list[str]] = {}
    labels: list[str] = []
    lab_key = label_name
    for text in cells:
        pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ConfigError(f"`--cells` {text!r} is not like tone=dark,label=1; write attribute=value pairs.")
        keys = [k.strip() for k, _ in pairs]
        lab_key = label_name if label_name in keys else keys[-1]
        for k, v in pairs:
            k, v = k.strip(), v.strip()
            target = labels if k == lab_key else attrs.setdefault(k, [])
            if v not in target:
                target.append(v)
    return attrs, labels, lab_key


def _load_sd_components(root: Path, flag: str, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("Stable Diffusion folders need transformers: pip install 'fairsample[sd]'") from None
    out: dict[str, Any] = {}
    loaders = {
        "unet": lambda: UNet2DConditionModel.from_pretrained(
            root, subfolder="unet", use_safetensors=True, torch_dtype=dtype, local_files_only=True
        ),
        "vae": lambda: AutoencoderKL.from_pretrained(
            root, subfolder="vae", use_safetensors=True, torch_dtype=dtype, local_files_only=True
        ),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(
            root / "text_encoder", use_safetensors=True, local_files_only=True, torch_dtype=dtype
        ),
    }
    for part, load in loaders.items():
        try:
            out[part] = load()
        except (OSError, ValueError) as exc:
            why = str(exc).splitlines()[0][:160]
            raise ConfigError(_NO_SAFETENSORS.format(flag=flag, path=root, part=part, why=why)) from None
    out["tokenizer"] = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    # the training schedule (betas, T, prediction type) from the pipeline's scheduler config, whatever its class
    sched_cfg = dict(DDPMScheduler.load_config(root, subfolder="scheduler", local_files_only=True))
    sched_cfg.setdefault("prediction_type", "epsilon")
    sched_cfg.setdefault("clip_sample", False)  # SD configs omit it; DDPM's default (True) would clip latents
    out["scheduler"] = DDPMScheduler.from_config(sched_cfg)
    out["scheduler_class"] = str(sched_cfg.get("_class_name", "DDPMScheduler"))
    return out


def _load_single_file(path: Path, flag: str, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=True, torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds here; all mean "cannot read it offline"
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(_SINGLE_FILE.format(flag=flag, path=path, why=why)) from None
    sched_cfg = dict(pipe.scheduler.config)
    sched_cfg.setdefault("clip_sample", False)
    return {
        "unet": pipe.unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "scheduler": DDPMScheduler.from_config(sched_cfg),
        "scheduler_class": str(sched_cfg.get("_class_name", "?")),
    }


def import_sd(
    path: str | os.PathLike[str],
    *,
    attributes: Mapping[str, Sequence[str]],
    labels: Sequence[str],
    label_name: str = "label",
    template: str | None = None,
    value_text: Mapping[str, Mapping[str, str]] | None = None,
    flag: str = "--model",
    dtype: torch.dtype = torch.float32,
    source: ModelSource | None = None,
) -> ModelBundle:
    """A Stable Diffusion pipeline folder (or single ``.safetensors`` file) → an in-memory latent bundle.

    Args:
        path: the SD folder / file.
        attributes: ``{attribute: values}`` of the cells the conditioner must know.
        labels: label values.
        label_name: the label field's name (a template field).
        template: prompt template naming every attribute and the label, e.g. ``"{tone} skin, {label}"``; default
            :func:`~fairsample.models.conditioners.default_template`. Checked against the tokenizer (no truncation,
            no two cells with the same tokens).
        value_text: display text per value, e.g. ``{"tone": {"dark": "dark-skinned"}}``.
        flag: the option the path came from (named in errors).
        dtype: weight dtype of the loaded modules.
        source: a :func:`~fairsample.models.source.inspect_model` result (inspected here when omitted).

    Returns:
        A :class:`ModelBundle` with ``config["source"]`` and ``config["template"]``; images are
        ``(3, H, W)`` = ``bundle.image_shape``.

    Example:
        >>> b = import_sd("sd-folder", attributes={"tone": ["dark", "light"]}, labels=["0", "1"])  # doctest: +SKIP
        >>> b.conditioner.prompt(b.cells()[0])  # doctest: +SKIP
        'tone dark, label 0'
    """
    src = source or inspect_model(path, flag)
    root = Path(path)
    parts = (
        _load_single_file(root, flag, dtype) if src.kind == "single_file" else _load_sd_components(root, flag, dtype)
    )
    template = template or default_template(list(attributes), label_name)
    cond = ClipTextConditioner(
        parts["text_encoder"],
        parts["tokenizer"],
        template=template,
        attributes=attributes,
        labels=labels,
        label_name=label_name,
        value_text=value_text,
    )
    record = src.describe()
    record.update(scheduler_class=parts["scheduler_class"], prediction_type=parts["scheduler"].config.prediction_type)
    return new_latent_bundle(
        parts["unet"],
        parts["vae"],
        cond,
        scheduler=parts["scheduler"],
        config={"source": record, "template": template, "architecture": "sd"},
    )


def open_model(
    path: str | os.PathLike[str] | None,
    *,
    flag: str = "--model",
    cells: Sequence[str] | None = None,
    attributes: Mapping[str, Sequence[str]] | None = None,
    labels: Sequence[str] | None = None,
    label_name: str = "label",
    template: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    need_cells: bool = True,
) -> ModelBundle:
    """The one way every command opens ``--model`` / ``--init-from``: a bundle, an SD folder or a single file.

    Args:
        path: the model path; ``None`` = the embedded default model.
        flag: the option name used in errors.
        cells: cell texts (``tone=dark,label=1``) that give an SD model its vocabulary (e.g. ``generate --cells``).
        attributes, labels, label_name: the vocabulary from a dataset (``train --init-from``, ``augment``); wins over
            ``cells``.
        template: prompt template for an SD model (ignored for bundles, which carry theirs).
        device, dtype: where and how to load.
        need_cells: an SD model without any vocabulary is an error (``False``: allow one with no cells, e.g. for
            an export that needs only the U-Net).

    Raises:
        ConfigError: a missing path, an unknown layout, or an SD model without cells when ``need_cells``.
    """
    if path is None:
        return ModelBundle.load_default(device=device, dtype=dtype)
    src = inspect_model(path, flag)
    if src.kind == "bundle":
        return ModelBundle.load(path, device=device, dtype=dtype)
    if attributes is None or labels is None:
        if cells:
            attributes, labels, label_name = vocabulary_from_cells(cells, label_name)
        elif need_cells:
            raise ConfigError(_NO_CELLS.format(flag=flag, path=path))
        else:
            attributes, labels = {}, []
    bundle = import_sd(
        path,
        attributes=attributes,
        labels=labels,
        label_name=label_name,
        template=template,
        flag=flag,
        dtype=dtype,
        source=src,
    )
    bundle.config["path"] = str(path)
    return bundle.to(device).eval()


def cell_prompts(bundle: ModelBundle, cells: Sequence[CellKey]) -> dict[str, str]:
    """``{cell text: prompt}`` of an SD-style bundle (empty for token-table bundles); shown by ``--dry-run``."""
    if not isinstance(bundle.conditioner, ClipTextConditioner):
        return {}
    return {c.to_text(bundle.label_name): bundle.conditioner.prompt(c) for c in cells}

"""Preference tuning on (winner, loser) image pairs: ``diffusion_dpo`` (the ``dpo`` preset's default) and
``fairgen_ref_free`` (the ``fairgen`` preset's default).

``diffusion_dpo`` (Wallace et al., Diffusion-DPO; SalesforceAIResearch/DiffusionDPO ``train.py``; METHODS.md §3.5):
for each pair (c, x_w, x_l) draw **one** t and **one** ε for both images; with per-pair mean-squared errors
L = mean((target − pred)²) (target ε or v, per the scheduler's ``prediction_type``) under the trained model θ and a
frozen reference (the model when tuning starts),

    Δ_θ = L^θ_w − L^θ_l,   Δ_ref = L^ref_w − L^ref_l,   loss = mean_pairs −log σ(−½·β·(Δ_θ − Δ_ref)),  β = 5000.

Equal models give exactly log 2; the loss drops below log 2 once the model prefers the winner more than the reference
does. Implicit accuracy = P(−½β(Δ_θ − Δ_ref) > 0) (ties count ½, as in the reference code).

``fairgen_ref_free`` (FairGen ``train_text_to_image_FairGen.py --enable_dpo``; METHODS.md §3.6): no reference,
t shared within a pair, ε independent (``share_noise=True`` shares it),

    L_pref = mean_pairs −log σ(β·(L_l − L_w)) + mean_pairs L_w,  β = 0.5.

Either term is multiplied by ``weight`` (γ_dpo) and added to the training loss through
:meth:`~fairsample.train.methods.TrainMethod.extra_loss`; ``sft_weight`` adds ``sft_weight · mean L^θ_w`` (a project
option: Diffusion-DPO's ``--sft`` *replaces* the DPO loss). Pairs are read from ``preferences.csv``
(:mod:`fairsample.data.preferences`) and validated in :meth:`PreferenceTuning.setup`, before the first step; their
images are loaded once and cached. Each micro-step draws ``pairs_per_step`` pairs (with replacement) from the step's
generator, so runs and ``--resume`` are deterministic; pairs are always conditioned on their cell (no CFG dropout).

Without ``preferences`` the pairs are built at setup (as the study does): :func:`fairsample.train.prefs_build.
build_preferences` generates candidates with the ``--init-from`` model and ranks them by a classifier trained on the
run's **training rows only**, into ``OUTPUT/preferences/`` (reused by ``--resume``); the bundle records how under
``preferences_built``. These pairs are a classifier-confidence proxy, not physician judgements.

**Status.** Each combination is labelled in ``method_status`` with its reasons in ``status_reasons``:
``dpo`` + ``diffusion_dpo`` and ``fairgen`` + ``fairgen_ref_free`` (independent ε, no SFT term) are ``reference``;
``fairgen`` + ``diffusion_dpo`` (FairGen's code has no reference model), ``dpo`` + ``fairgen_ref_free`` (FairGen's loss
without SQRS and the class-diversity term), ``share_noise=True`` with ``fairgen_ref_free``, ``sft_weight`` > 0 and
``pref_scale`` ≠ 1 are ``project-extension``.

**Balance.** The loop logs each term's gradient norm (``grad_norm_terms``). At β = 5000 on per-element mean losses the
Diffusion-DPO term's gradient is hundreds of times the diffusion loss's on the demo, so after clipping the other terms
do nothing; ``pref_scale="auto"`` rescales the preference term so its gradient norm is ``pref_scale_target`` × the
diffusion loss's (measured over the first :data:`AUTO_SCALE_STEPS` steps, then fixed and recorded). FairGen's
reference-free loss at β = 0.5 is of the same order as the other terms and needs no scaling (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.data.preferences import PreferencePair, read_preferences
from fairsample.data.schema import CellKey
from fairsample.train.methods import SetupContext, StepContext, TrainMethod

PREF_LOSSES: tuple[str, str] = ("diffusion_dpo", "fairgen_ref_free")
#: default β per loss (paper parametrisation −½β for diffusion_dpo; FairGen's β_dpo for fairgen_ref_free)
DEFAULT_BETA: dict[str, float] = {"diffusion_dpo": 5000.0, "fairgen_ref_free": 0.5}
#: ``source`` recorded when the preference file has no companion JSON saying where the pairs came from
UNSPECIFIED_SOURCE = "unspecified (user-supplied file)"

#: keys of the ``prefs_build`` option (passed to :func:`fairsample.train.prefs_build.build_preferences`)
PREFS_BUILD_KEYS: tuple[str, ...] = (
    "backend",
    "batch_size",
    "candidates",
    "classifier_epochs",
    "guidance_scale",
    "per_cell",
    "scorer",
    "steps",
)
PRESETS: tuple[str, str] = ("dpo", "fairgen")
#: optimizer steps over which ``pref_scale="auto"`` measures the gradient-norm ratio before fixing the scale
AUTO_SCALE_STEPS = 10

_NO_PREFERENCES = (
    "method {preset!r} without `preferences` builds proxy pairs from the --init-from model, but this run trains from "
    "scratch; pass --init-from BUNDLE, or --method-option preferences=PATH (build one with `fairsample prefs build`)."
)
_NO_OUTPUT_DIR = (
    "method {preset!r} without `preferences` builds proxy pairs into the run's output folder, but none was given; "
    "run it through fairsample.train.train, or pass --method-option preferences=PATH."
)
_BAD_PREFS_BUILD = (
    '`prefs_build` must be a table with keys from {allowed}, got {value!r}; e.g. prefs_build={{"candidates": 16}}.'
)
_BAD_PREF_SCALE = (
    "`pref_scale` must be a number > 0 or 'auto', got {value!r}; use 'auto' to scale the preference term so its "
    "gradient norm is pref_scale_target x the diffusion loss's."
)
_BAD_PRESET = "`preset` must be one of ['dpo', 'fairgen'], got {value!r}."
_BAD_PREF_LOSS = "`pref_loss` must be one of {allowed}, got {value!r}."
_BAD_NUMBER = "`{name}` must be a number {rule}, got {value!r}."
_BAD_PAIRS = "`pairs_per_step` must be an integer >= 1 (or null for the batch size), got {value!r}."
_DPO_SHARES_NOISE = (
    "`share_noise` cannot be false with pref_loss='diffusion_dpo' (Diffusion-DPO uses one t and one ε per pair); "
    "use pref_loss='fairgen_ref_free' for independent noise."
)
_BAD_SHARE = "`share_noise` must be true, false or null, got {value!r}."
_NOT_FOUND = (
    "preference file {path!r} not found (looked in the working directory and in the dataset root {root}); "
    "pass an existing preferences.csv."
)
_REFERENCE_IS_INIT = (
    "pref_loss='diffusion_dpo' without --init-from: the frozen reference is the untrained initial model; fine-tune a "
    "trained bundle (--init-from) or use pref_loss='fairgen_ref_free'"
)
_BAD_PREDICTION = (
    "preference tuning supports prediction_type 'epsilon' or 'v_prediction'; the model's scheduler uses {value!r}."
)


def diffusion_dpo_loss(
    model_w: Tensor, model_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """Diffusion-DPO loss over pairs (Wallace et al., Eq. 14, −½β parametrisation).

    Args:
        model_w, model_l: ``(P,)`` per-pair MSE of the trained model on the winner / loser.
        ref_w, ref_l: ``(P,)`` the same for the frozen reference.
        beta: β > 0 (5000 in the paper's parametrisation).

    Returns:
        ``(loss, implicit_accuracy)``, two scalars; the loss is ``mean −log σ(−½β(Δ_θ − Δ_ref))``.

    Example:
        >>> l = torch.tensor([0.2, 0.3])
        >>> loss, acc = diffusion_dpo_loss(l, l, l, l, beta=5000.0)
        >>> round(float(loss), 6), float(acc)
        (0.693147, 0.5)
    """
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    loss = -F.logsigmoid(inside).mean()
    acc = ((inside > 0).float() + 0.5 * (inside == 0).float()).mean()
    return loss, acc.detach()


def fairgen_ref_free_loss(loss_w: Tensor, loss_l: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """FairGen's reference-free preference loss: ``mean −log σ(β(L_l − L_w)) + mean L_w``.

    Args:
        loss_w, loss_l: ``(P,)`` per-pair MSE on the winner / loser.
        beta: β > 0 (FairGen's β_dpo = 0.5).

    Returns:
        ``(loss, accuracy)``; accuracy = P(L_w < L_l), ties ½.

    Example:
        >>> loss, acc = fairgen_ref_free_loss(torch.tensor([0.0]), torch.tensor([0.0]), beta=0.5)
        >>> round(float(loss), 6), float(acc)
        (0.693147, 0.5)
    """
    margin = beta * (loss_l - loss_w)
    loss = -F.logsigmoid(margin).mean() + loss_w.mean()
    acc = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
    return loss, acc.detach()


def _is_positive(value: Any) -> bool:
    """A finite real number > 0 (not a bool)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and math.isfinite(value) and value > 0


def _number(name: str, value: Any, *, positive: bool) -> float:
    """A float option checked for finiteness and sign (ConfigError naming the option otherwise)."""
    rule = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(_BAD_NUMBER.format(name=name, rule=rule, value=value))
    if value < 0 or (positive and value == 0):
        raise ConfigError(_BAD_NUMBER.format(name=name, rule=rule, value=value))
    return float(value)


class PreferenceTuning(TrainMethod):
    """Preference tuning on ``preferences.csv`` pairs, added to the training loss (module docstring for the math).

    Args:
        preferences: path of ``preferences.csv`` (or ``.jsonl``); a relative path is looked up in the working
            directory, then in the dataset root. ``None``: build proxy pairs at setup from the ``--init-from`` model
            on the run's training rows, into ``OUTPUT/preferences/`` (a run without ``--init-from`` is refused).
        pref_loss: ``"diffusion_dpo"`` (frozen reference, shared t and ε) or ``"fairgen_ref_free"``.
        beta: β; default 5000 for ``diffusion_dpo`` (−½β parametrisation), 0.5 for ``fairgen_ref_free``.
        weight: γ_dpo, the factor of the preference term in the training loss.
        pairs_per_step: pairs per micro-step (default: the batch size).
        sft_weight: weight of an extra plain MSE on winners; 0 disables (> 0 is a project extension).
        share_noise: ``fairgen_ref_free`` only: one ε for both images of a pair (default false, as FairGen);
            ``diffusion_dpo`` always shares t and ε.
        prefs_build: options of :func:`~fairsample.train.prefs_build.build_preferences` when ``preferences`` is
            ``None``
            (keys :data:`PREFS_BUILD_KEYS`; its defaults otherwise; the seed is the run's ``seed``).
        preset: the preset this term belongs to (``"dpo"`` or ``"fairgen"``); it decides which loss is the
            published one for ``method_status``.
        pref_scale: an extra factor of the preference term (1 = none), or ``"auto"``: over the first
            :data:`AUTO_SCALE_STEPS` optimizer steps the loop measures ‖∇ preference term‖ and ‖∇ diffusion loss‖
            and the factor becomes ``pref_scale_target`` × the median ratio, then stays fixed (recorded as
            ``pref_scale_value``; pass that number back as ``pref_scale`` to reproduce a run). Any value other than
            1 is a project extension.
        pref_scale_target: the gradient-norm ratio preference / diffusion that ``pref_scale="auto"`` aims for.

    Raises:
        ConfigError: an invalid option.

    Example:
        >>> m = PreferenceTuning(preferences="prefs/preferences.csv", pref_loss="fairgen_ref_free", preset="fairgen")
        >>> m.beta, m.share_noise, m.config()["pref_loss"], m.method_status
        (0.5, False, 'fairgen_ref_free', 'reference')
    """

    name = "dpo"
    method_status = "reference"

    def __init__(
        self,
        *,
        preferences: str | Path | None = None,
        pref_loss: Literal["diffusion_dpo", "fairgen_ref_free"] = "diffusion_dpo",
        beta: float | None = None,
        weight: float = 1.0,
        pairs_per_step: int | None = None,
        sft_weight: float = 0.0,
        share_noise: bool | None = None,
        prefs_build: Mapping[str, Any] | None = None,
        preset: Literal["dpo", "fairgen"] = "dpo",
        pref_scale: float | Literal["auto"] = 1.0,
        pref_scale_target: float = 1.0,
    ) -> None:
        if pref_loss not in PREF_LOSSES:
            raise ConfigError(_BAD_PREF_LOSS.format(allowed=list(PREF_LOSSES), value=pref_loss))
        if preset not in PRESETS:
            raise ConfigError(_BAD_PRESET.format(value=preset))
        if share_noise is not None and not isinstance(share_noise, bool):
            raise ConfigError(_BAD_SHARE.format(value=share_noise))
        if pref_loss == "diffusion_dpo" and share_noise is False:
            raise ConfigError(_DPO_SHARES_NOISE)
        if pairs_per_step is not None and (
            isinstance(pairs_per_step, bool) or not isinstance(pairs_per_step, int) or pairs_per_step < 1
        ):
            raise ConfigError(_BAD_PAIRS.format(value=pairs_per_step))
        if prefs_build is not None and (
            not isinstance(prefs_build, Mapping) or set(prefs_build) - set(PREFS_BUILD_KEYS)
        ):
            raise ConfigError(_BAD_PREFS_BUILD.format(allowed=list(PREFS_BUILD_KEYS), value=prefs_build))
        auto = preferences is None or str(preferences).strip() == ""
        self.preferences: str | None = None if auto else str(preferences)
        self.prefs_build: dict[str, Any] = dict(prefs_build or {})
        self.preset = preset
        self.pref_loss = pref_loss
        self.beta = _number("beta", DEFAULT_BETA[pref_loss] if beta is None else beta, positive=True)
        self.weight = _number("weight", weight, positive=False)
        self.sft_weight = _number("sft_weight", sft_weight, positive=False)
        self.share_noise = pref_loss == "diffusion_dpo" or bool(share_noise)
        self.pairs_per_step = pairs_per_step
        self.pref_scale_auto = pref_scale == "auto"
        if not self.pref_scale_auto and (isinstance(pref_scale, str) or not _is_positive(pref_scale)):
            raise ConfigError(_BAD_PREF_SCALE.format(value=pref_scale))
        self.pref_scale: float | str = "auto" if self.pref_scale_auto else float(pref_scale)
        self.pref_scale_target = _number("pref_scale_target", pref_scale_target, positive=True)
        self._scale = 1.0 if self.pref_scale_auto else float(pref_scale)  # the factor in use now
        self._ratios: list[float] = []  # auto: target · ‖∇ diffusion‖ / ‖∇ preference‖ (factor 1) per step
        self._fixed = not self.pref_scale_auto
        self.status_reasons = self._status_reasons()
        self.method_status = (
            "project-extension" if any(r.startswith("project-extension") for r in self.status_reasons) else "reference"
        )
        self.pairs: list[PreferencePair] = []
        self._path: Path | None = None
        self._sha256: str | None = None
        self._source: str = UNSPECIFIED_SOURCE
        self._built: dict[str, Any] | None = None  # how the pairs were built (preferences=None)
        self._images: Tensor | None = None  # (U, C, h, w) unique pair images, model input space, CPU float32
        self._w = torch.zeros(0, dtype=torch.long)  # (N,) winner row of every pair in _images
        self._l = torch.zeros(0, dtype=torch.long)
        self._reference: Callable[[Tensor, Tensor, Sequence[CellKey | None]], Tensor] | None = None
        self._scheduler: Any = None
        self._num_t = 0
        self._last: dict[str, float] = {}

    def _status_reasons(self) -> list[str]:
        """Why this combination is ``reference`` or ``project-extension`` (one line each; METHODS.md §3.5–3.6)."""
        ext, ref = "project-extension: ", "reference: "
        out = []
        if self.pref_loss == "diffusion_dpo":
            if self.preset == "fairgen":
                out.append(
                    ext + "Diffusion-DPO inside FairGen; FairGen's code uses its reference-free loss and "
                    "has no reference model"
                )
            else:
                out.append(
                    ref + "Diffusion-DPO (Wallace et al.; DiffusionDPO train.py): frozen reference, shared t "
                    "and noise; the loop also keeps the plain diffusion loss on the training "
                    "images"
                )
        else:
            if self.preset == "fairgen":
                out.append(ref + "FairGen's reference-free loss (train_text_to_image_FairGen.py --enable_dpo)")
            else:
                out.append(ext + "FairGen's reference-free loss without SQRS and the class-diversity term")
            if self.share_noise:
                out.append(ext + "share_noise=True; FairGen draws independent noise for winner and loser")
        if self.sft_weight > 0:
            out.append(ext + "sft_weight > 0 adds an SFT term; Diffusion-DPO's --sft replaces the DPO loss instead")
        if self.pref_scale != 1.0:
            how = (
                f"'auto' (gradient norm {self.pref_scale_target:g} x the diffusion loss's over the first "
                f"{AUTO_SCALE_STEPS} steps)"
                if self.pref_scale_auto
                else f"{self.pref_scale:g}"
            )
            out.append(ext + f"pref_scale={how} rescales the preference term to balance the loss terms")
        return out

    def check_config(self, config: Any) -> None:
        """Without ``preferences``, refuse a run without ``--init-from`` (one line naming the fix)."""
        if self.preferences is None and not getattr(config, "init_from", None):
            raise ConfigError(_NO_PREFERENCES.format(preset=self.preset))

    # -- setup ------------------------------------------------------------------------------------------------------
    def _resolve(self, dataset_root: Path | None) -> Path:
        assert self.preferences is not None
        p = Path(self.preferences).expanduser()
        if p.is_absolute() or p.exists() or dataset_root is None:
            found = p
        else:
            found = Path(dataset_root) / p
        if not found.is_file():
            raise DataError(_NOT_FOUND.format(path=self.preferences, root=dataset_root))
        return found.absolute()

    def _build(self, ctx: SetupContext) -> Path:
        """Proxy pairs from the --init-from model on the run's training rows, in ``OUTPUT/preferences/`` (the study's
        recipe); reused when ``build.json`` there records the same inputs (``--resume``)."""
        from fairsample.data.splits import split_indices
        from fairsample.train.prefs_build import PROXY_SOURCE, build_preferences

        cfg = ctx.config
        self.check_config(cfg)
        if ctx.output_dir is None:
            raise ConfigError(_NO_OUTPUT_DIR.format(preset=self.preset))
        # 1. the rows the run trains on: the scorer never sees the validation / test images
        ds, split = ctx.dataset, str(getattr(cfg, "split", "train"))
        rows = np.arange(len(ds)) if split == "all" else np.asarray(split_indices(ds, seed=cfg.split_seed)[split])
        out = Path(ctx.output_dir) / "preferences"
        key = {
            "init_from": str(cfg.init_from),
            "data": str(Path(ds.root).absolute()),
            "split": split,
            "split_seed": int(getattr(cfg, "split_seed", 0)),
            "n_rows": int(len(rows)),
            "rows_sha256": hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest(),
            "seed": int(cfg.seed),
            "options": dict(sorted(self.prefs_build.items())),
        }
        record = out / "build.json"
        # 2. build on rank 0 unless the same build is already there, then everyone reads it
        reused = _read_json(record).get("key") == key and (out / "preferences.csv").is_file()
        if ctx.rank == 0 and not reused:
            res = build_preferences(
                cfg.init_from,
                ds.subset(rows),
                out,
                seed=int(cfg.seed),
                device=str(ctx.device),
                overwrite=True,
                **self.prefs_build,
            )
            doc = {
                "key": key,
                "n_pairs": res.n_pairs,
                "n_candidates": res.n_candidates,
                "seconds": round(res.seconds, 2),
            }
            record.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        if ctx.wait_for_everyone is not None:
            ctx.wait_for_everyone()
        doc = _read_json(record)
        self._built = {
            "source": PROXY_SOURCE,
            "model": str(cfg.init_from),
            "data": key["data"],
            "rows": f"{split} split ({len(rows)} images, split_seed {key['split_seed']})",
            "output": str(out / "preferences.csv"),
            "n_pairs": doc.get("n_pairs"),
            "n_candidates": doc.get("n_candidates"),
            "options": key["options"],
            "reused": reused,
        }
        if ctx.log is not None:
            verb = "reusing" if reused else "built"
            ctx.log(
                f"{self.preset}: {verb} {doc.get('n_pairs')} proxy preference pairs in {out / 'preferences.csv'} "
                f"from --init-from {cfg.init_from} on the {split} split ({len(rows)} images): {PROXY_SOURCE} "
                "(not physician judgements)"
            )
        return out / "preferences.csv"

    def setup(self, ctx: SetupContext) -> None:
        """Read (or build, without ``preferences``) and validate the pairs (one-line DataError before any step), cache
        their images, freeze a reference."""
        from fairsample.models.conditioners import TokenTableConditioner

        bundle = ctx.bundle
        # 1. the pair file, validated against the model's cells
        root = getattr(ctx.dataset, "root", None)
        self._path = self._build(ctx) if self.preferences is None else self._resolve(root)
        prompts = None
        if not isinstance(bundle.conditioner, TokenTableConditioner):
            cells = sorted(set(bundle.cells()) | set(ctx.cell_set))
            prompts = {bundle.conditioner.prompt(c): c for c in cells}
        self.pairs = read_preferences(
            self._path,
            groups=list(ctx.attribute_values),
            label_col=ctx.label_name,
            attribute_values=bundle.attribute_values,
            label_values=bundle.label_values,
            prompts=prompts,
        )
        self._sha256 = hashlib.sha256(self._path.read_bytes()).hexdigest()
        self._source = _companion_source(self._path)
        # 2. the images, loaded once into the model's input space
        files = list(dict.fromkeys(p for pair in self.pairs for p in (pair.path_w, pair.path_l)))
        row = {f: k for k, f in enumerate(files)}
        chunks = [ctx.load_images(files[i : i + 64]).detach().float().cpu() for i in range(0, len(files), 64)]
        self._images = torch.cat(chunks)
        self._w = torch.tensor([row[p.path_w] for p in self.pairs], dtype=torch.long)
        self._l = torch.tensor([row[p.path_l] for p in self.pairs], dtype=torch.long)
        # 3. scheduler, pairs per step and (diffusion_dpo) the frozen reference = the model now
        self._scheduler = bundle.scheduler
        prediction = str(self._scheduler.config.prediction_type)
        if prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(_BAD_PREDICTION.format(value=prediction))
        self._num_t = int(self._scheduler.config.num_train_timesteps)
        if self.pairs_per_step is None:
            self.pairs_per_step = int(getattr(ctx.config, "batch_size", 8))
        if self.pref_loss == "diffusion_dpo":
            if not getattr(ctx.config, "init_from", None):
                warnings.warn(_REFERENCE_IS_INIT, FairsampleWarning, stacklevel=2)
            self._reference = ctx.make_reference()

    # -- the loss ---------------------------------------------------------------------------------------------------
    def _target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self._scheduler.config.prediction_type == "v_prediction":
            return self._scheduler.get_velocity(x0, noise, t)
        return noise

    def extra_loss(self, ctx: StepContext) -> Tensor | None:
        """``weight · (preference loss + sft_weight · mean L_w)`` on ``pairs_per_step`` pairs drawn with
        ``ctx.generator``."""
        if self._images is None or (self.weight == 0.0):
            return None
        g, dev = ctx.generator, ctx.latents.device
        n = int(self.pairs_per_step or 1)
        # 1. draw pairs, one t per pair, ε per image (shared within the pair unless fairgen_ref_free without sharing)
        pick = torch.randint(len(self.pairs), (n,), generator=g)
        x_w = self._images[self._w[pick]].to(dev)
        x_l = self._images[self._l[pick]].to(dev)
        cells = [self.pairs[i].cell for i in pick.tolist()]
        t = torch.randint(0, self._num_t, (n,), generator=g)
        eps_w = torch.randn(x_w.shape, generator=g)
        eps_l = eps_w if self.share_noise else torch.randn(x_l.shape, generator=g)
        t, eps_w, eps_l = t.to(dev), eps_w.to(dev), eps_l.to(dev)
        # 2. one batched forward over [winners; losers], conditioned on the pairs' cells
        noisy = torch.cat([self._scheduler.add_noise(x_w, eps_w, t), self._scheduler.add_noise(x_l, eps_l, t)])
        tt = torch.cat([t, t])
        target = torch.cat([self._target(x_w, eps_w, t), self._target(x_l, eps_l, t)])
        both = cells + cells
        pred = ctx.denoise(noisy, tt.float(), both).float()
        per = (pred - target).pow(2).mean(dim=(1, 2, 3))
        loss_w, loss_l = per[:n], per[n:]
        # 3. the preference loss
        stats: dict[str, float] = {}
        if self.pref_loss == "diffusion_dpo":
            assert self._reference is not None
            with torch.no_grad():
                ref = self._reference(noisy, tt.float(), both).float()
                ref_per = (ref - target).pow(2).mean(dim=(1, 2, 3))
            ref_w, ref_l = ref_per[:n], ref_per[n:]
            loss, acc = diffusion_dpo_loss(loss_w, loss_l, ref_w, ref_l, self.beta)
            stats["pref_delta_theta"] = float((loss_w - loss_l).detach().mean())
            stats["pref_delta_ref"] = float((ref_w - ref_l).mean())
        else:
            loss, acc = fairgen_ref_free_loss(loss_w, loss_l, self.beta)
        stats.update(
            pref_loss=float(loss.detach()),
            pref_implicit_acc=float(acc),
            pref_loss_w=float(loss_w.detach().mean()),
            pref_loss_l=float(loss_l.detach().mean()),
        )
        self._last = stats
        total = loss + self.sft_weight * loss_w.mean() if self.sft_weight else loss
        return (self.weight * self._scale) * total if self._scale != 1.0 else self.weight * total

    def wants_grad_norms(self, step: int) -> bool:
        """``pref_scale="auto"``: every step until the scale is fixed."""
        return not self._fixed and step < AUTO_SCALE_STEPS

    def observe_grad_norms(self, step: int, norms: Mapping[str, float]) -> Mapping[str, float] | None:
        """``pref_scale="auto"``: add this step's ratio, rescale this step's term to the running median, and fix the
        scale after :data:`AUTO_SCALE_STEPS` steps."""
        if self._fixed:
            return None
        g_pref, g_diff = norms.get(self.name, 0.0), norms.get("diffusion", 0.0)
        if not (g_pref > 0 and g_diff > 0):
            return None
        self._ratios.append(self.pref_scale_target * g_diff * self._scale / g_pref)
        new = float(np.median(self._ratios))
        factor, self._scale = new / self._scale, new
        if len(self._ratios) >= AUTO_SCALE_STEPS or step >= AUTO_SCALE_STEPS - 1:
            self._fixed = True
        return {self.name: factor}

    def state_dict(self) -> dict[str, Any]:
        """``pref_scale="auto"``: the ratios measured so far, the factor and whether it is fixed."""
        return {"scale": self._scale, "ratios": list(self._ratios), "fixed": self._fixed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on ``--resume``."""
        if state and self.pref_scale_auto:
            self._scale = float(state.get("scale", 1.0))
            self._ratios = [float(r) for r in state.get("ratios", [])]
            self._fixed = bool(state.get("fixed", False))

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """The last micro-step's preference loss (unweighted), implicit accuracy and mean L_w / L_l (and the factor
        in use when ``pref_scale`` is not 1)."""
        if self.pref_scale != 1.0 and self._last:
            return dict(self._last, pref_scale=round(self._scale, 8))
        return dict(self._last)

    def config(self) -> dict[str, Any]:
        """Resolved settings, ``status_reasons``, the pair file's path, sha256, pair count and source (e.g. a
        classifier proxy), and without ``preferences`` how the pairs were built (``preferences_built``)."""
        out = {
            "name": self.name,
            "method_status": self.method_status,
            "status_reasons": list(self.status_reasons),
            "pref_loss": self.pref_loss,
            "beta": self.beta,
            "weight": self.weight,
            "pairs_per_step": self.pairs_per_step,
            "sft_weight": self.sft_weight,
            "share_noise": self.share_noise,
            "pref_scale": self.pref_scale,
            "pref_scale_target": self.pref_scale_target,
            "pref_scale_value": self._scale,  # the factor in use at the end (auto: fixed after the calibration)
            "pref_scale_ratios": [round(r, 8) for r in self._ratios] if self.pref_scale_auto else None,
            "preferences": str(self._path or self.preferences or "build from --init-from"),
            "preferences_sha256": self._sha256,
            "n_pairs": len(self.pairs) if self._images is not None else None,
            "preference_source": self._source,
        }
        if self.preferences is None:
            out["prefs_build"] = dict(self.prefs_build)
            out["preferences_built"] = self._built
        return out


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or ``{}`` when it is missing or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _companion_source(path: Path) -> str:
    """The ``source`` field of ``<file>.json`` next to the pair file (written by ``fairsample prefs build``)."""
    doc_path = path.with_suffix(".json")
    if not doc_path.is_file():
        return UNSPECIFIED_SOURCE
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return UNSPECIFIED_SOURCE
    source = doc.get("source") if isinstance(doc, dict) else None
    return str(source) if source else UNSPECIFIED_SOURCE

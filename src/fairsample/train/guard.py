"""Conditioning guard and recommended sampling settings, measured after training (issue #12, items 1a and 1g).

A fine-tuning method can erase what the model is conditioned on (the CBDM class-diversity term at τ = 1 pulled every
skin tone of the demo towards the average: METHODS.md §3.3), and a fixed guidance scale can turn a model's samples to
noise (a from-scratch v-prediction model drew its minority attribute in 100 % of samples at w = 1.5 and 0 % at w = 3).
Both are caught by one measurement (:mod:`fairsample.evaluation.conditioning`): how often judges trained on the real
data
recover the requested label and attribute values from the model's samples.

:func:`conditioning_guard`:

1. **Select** (``select=True``): sample ``images_per_cell`` images per cell at validation seeds (900000+) for every
   candidate setting — guidance w in ``guidance`` and, for v-prediction models, guidance rescale φ in ``rescale`` (off
   by default) at the largest w — and score each by its worst attribute value's ½(label accuracy + attribute
   accuracy). Among the candidates within one binomial standard error of the best (√(s(1 − s)/n), n = images of the
   smallest attribute value, at least 1/n), take the cheapest: the lowest w, plain CFG before rescale.
2. **Compare** the selected setting's scores with the *starting point*: the ``init_from`` bundle sampled the same way
   (same setting, cells and seeds; cached), or, for a model trained from scratch, the judges' accuracy on real val
   images (their ceiling).
3. **Flag**: ``collapsed`` when a target's accuracy is below chance + 0.15, or some attribute value's samples are
   judged right less often than chance; else ``degraded`` when an accuracy (overall or of one attribute value)
   dropped by more than 0.15 from the starting point; else ``ok``. A drop warns (one :class:`FairsampleWarning` line).
4. **Record** in the bundle's ``fairsample_config.json``: ``sampling`` (the selected setting, used by default by
   :class:`~fairsample.generation.pipeline.FairSamplePipeline` and ``fairsample generate``), ``sampling_selection``
   (the table)
   and ``conditioning_guard`` (flag, reasons, scores, reference, thresholds, wall time).

:func:`guard_after_training` runs it at the end of :func:`fairsample.train.loop.train` (``TrainConfig.guard``).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fairsample.core.errors import ConfigError, FairsampleError, FairsampleWarning
from fairsample.core.json_safe import json_safe
from fairsample.data.folder import FolderDataset
from fairsample.evaluation.conditioning import (
    VALIDATION_SEED,
    ConditioningScores,
    Judges,
    SamplingSetting,
    conditioning_cache_dir,
    guard_cells,
    sample_and_score,
    sampling_pipeline,
    train_judges,
)
from fairsample.models.bundle import ModelBundle, update_bundle_config

DROP = 0.15
"""A drop in accuracy (absolute) from the starting point that makes the model ``degraded``."""
COLLAPSE_MARGIN = 0.15
"""A target whose accuracy is below chance + this margin makes the model ``collapsed``."""
FLAGS: tuple[str, ...] = ("ok", "degraded", "collapsed")
"""Guard flags, best first; ``"unchecked"`` is recorded when the guard did not run."""

FLAG_RULE = (
    "collapsed: a target's accuracy < chance + collapse_margin, or an attribute value's samples judged right less "
    "often than chance (checked where the judge recovers the target on real val images); degraded: an accuracy "
    "(overall or per attribute value) dropped by > drop from the reference"
)
SELECTION_RULE = (
    "score = worst attribute value's (label accuracy + attribute accuracy) / 2 over {n} samples per cell at seeds "
    "{seed}+; among settings within one binomial standard error of the best, the lowest w (plain CFG before rescale)"
)
_WARN = "conditioning guard: {bundle} is {flag} at {setting}: {reason}{more}; see conditioning_guard in {where}."
_UNCHECKED = "conditioning guard did not run for {bundle}: {why}; its samples were not checked."
_GUARD_OFF = "guard off (TrainConfig.guard=False, --no-guard or FAIRSAMPLE_GUARD=0)"
_BAD_GRID = "`guidance` must be a non-empty list of finite floats >= 1, got {value!r}; use [1.0, 1.5, 2.0, 3.0]."
_BAD_RESCALE = "`rescale` must be a list of floats in (0, 1], got {value!r}; use [0.7] or []."


@dataclass
class GuardReport:
    """What :func:`conditioning_guard` measured and decided.

    Attributes:
        flag: ``"ok"``, ``"degraded"`` or ``"collapsed"``.
        reasons: one line per failed check (empty when ``ok``).
        setting: the setting the flag refers to (the selected one).
        scores: the model's scores at ``setting``.
        reference: ``{"kind": "start" | "ceiling", "bundle": path | None, "overall", "by_group"}``.
        candidates: the selection table, one scores object per candidate (just ``scores`` without selection).
        tolerance: the selection's noise tolerance.
        judges: ``{"key", "size", "ceiling"}``.
        seconds: wall time of the whole guard.
    """

    flag: str
    reasons: list[str]
    setting: SamplingSetting
    scores: ConditioningScores
    reference: dict[str, Any]
    candidates: list[ConditioningScores] = field(default_factory=list)
    tolerance: float = 0.0
    selected: bool = False
    judges: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line, e.g. ``'ok at w=1.5, 25 ddim steps: label 0.95, tone 1.00 (start: label 0.93, tone 1.00)'``."""
        now = ", ".join(f"{t} {v:.2f}" for t, v in self.scores.overall.items())
        ref = ", ".join(f"{t} {v:.2f}" for t, v in self.reference["overall"].items() if v is not None)
        return f"{self.flag} at {self.setting.describe()}: {now} ({self.reference['kind']}: {ref})"

    def sampling(self) -> dict[str, Any]:
        """The bundle's recommended ``sampling`` entries (``guidance_rescale`` only when > 0)."""
        out: dict[str, Any] = {
            "guidance_scale": self.setting.guidance_scale,
            "steps": self.setting.steps,
            "scheduler": self.setting.scheduler,
        }
        if self.setting.guidance_rescale:
            out["guidance_rescale"] = self.setting.guidance_rescale
        return out

    def selection_table(self) -> dict[str, Any]:
        """The ``sampling_selection`` record: rule, candidates (setting, score, accuracy, BER), selected, tolerance."""
        n = self.scores.n_per_cell
        rows = []
        for c in self.candidates:
            rows.append(
                {
                    **c.setting.to_dict(),
                    "score": round(c.score, 4),
                    "mean_score": round(c.mean_score, 4),
                    "overall": {t: round(v, 4) for t, v in c.overall.items()},
                    "by_group": {g: {t: round(v, 4) for t, v in d.items()} for g, d in c.by_group.items()},
                    "worst_group": min(c.group_scores(), key=c.group_scores().__getitem__),
                    "ber": {a: (None if v is None else round(v, 4)) for a, v in c.ber.items()},
                    "seconds": round(c.seconds, 1),
                }
            )
        return json_safe(
            {
                "rule": SELECTION_RULE.format(n=n, seed=VALIDATION_SEED),
                "images_per_cell": n,
                "seeds": self.scores.seeds,
                "tolerance": round(self.tolerance, 4),
                "candidates": rows,
                "selected": self.setting.to_dict(),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``conditioning_guard`` record (JSON-safe)."""
        return json_safe(
            {
                "flag": self.flag,
                "reasons": self.reasons,
                "setting": self.setting.to_dict(),
                "selected": self.selected,
                "scores": self.scores.to_dict(),
                "reference": self.reference,
                "thresholds": {"drop": DROP, "collapse_margin": COLLAPSE_MARGIN, "rule": FLAG_RULE},
                "judges": self.judges,
                "seconds": round(self.seconds, 1),
            }
        )


def guard_flag(
    scores: ConditioningScores,
    reference: Mapping[str, Any],
    chance: Mapping[str, float],
    *,
    ceiling: Mapping[str, Any] | None = None,
    drop: float = DROP,
    margin: float = COLLAPSE_MARGIN,
) -> tuple[str, list[str]]:
    """The guard's verdict on one set of scores.

    Args:
        scores: the model's :class:`~fairsample.evaluation.conditioning.ConditioningScores`.
        reference: ``{"overall": {target: acc}, "by_group": {"attr=value": {target: acc}}}`` (start or ceiling;
            ``None`` accuracies are skipped).
        chance: ``{target: 1 / number of values}``.
        ceiling: the judges' accuracy on real val images, same layout; a chance check is skipped where the judge
            itself cannot recover the target on real images (ceiling below chance + ``margin``, or unknown).
        drop: accuracy drop (absolute) from the reference that makes ``degraded``.
        margin: accuracy below chance + ``margin`` makes ``collapsed``.

    Returns:
        ``(flag, reasons)``: ``"collapsed"``, ``"degraded"`` or ``"ok"``, and one line per failed check.

    Example:
        >>> from fairsample.evaluation.conditioning import SamplingSetting
        >>> s = ConditioningScores(SamplingSetting(1.5), 8, [], {}, {"tone=dark": {"label": 0.9, "tone": 0.1, "n": 40},
        ...     "tone=light": {"label": 0.9, "tone": 1.0, "n": 40}}, {"label": 0.9, "tone": 0.55}, {}, {}, "label")
        >>> flag, reasons = guard_flag(s, {"overall": {"label": 0.9, "tone": 1.0}}, {"label": 0.2, "tone": 0.5})
        >>> flag, reasons[1:]
        ('collapsed', ['tone=dark: tone accuracy 0.10 < chance 0.50', 'tone accuracy 1.00 -> 0.55 (drop > 0.15)'])
    """

    def judge_can(t: str, g: str | None = None) -> bool:
        if ceiling is None:
            return True
        top = (
            (ceiling.get("overall") or {}).get(t)
            if g is None
            else ((ceiling.get("by_group") or {}).get(g) or {}).get(t)
        )
        return top is not None and top >= chance[t] + margin

    collapsed, degraded = [], []
    for t, acc in scores.overall.items():
        if acc < chance[t] + margin and judge_can(t):
            collapsed.append(f"{t} accuracy {acc:.2f} < chance {chance[t]:.2f} + {margin:.2f}")
    for g, vals in scores.by_group.items():
        for t in chance:
            if vals[t] < chance[t] and judge_can(t, g):
                collapsed.append(f"{g}: {t} accuracy {vals[t]:.2f} < chance {chance[t]:.2f}")
    ref_overall = reference.get("overall") or {}
    for t, acc in scores.overall.items():
        ref = ref_overall.get(t)
        if ref is not None and ref - acc > drop:
            degraded.append(f"{t} accuracy {ref:.2f} -> {acc:.2f} (drop > {drop:.2f})")
    ref_groups = reference.get("by_group") or {}
    for g, vals in scores.by_group.items():
        for t in chance:
            ref = (ref_groups.get(g) or {}).get(t)
            if ref is not None and ref - vals[t] > drop:
                degraded.append(f"{g}: {t} accuracy {ref:.2f} -> {vals[t]:.2f} (drop > {drop:.2f})")
    flag = "collapsed" if collapsed else "degraded" if degraded else "ok"
    return flag, collapsed + degraded


def select_setting(candidates: Sequence[ConditioningScores]) -> tuple[int, float]:
    """Index of the selected candidate and the tolerance (candidates in cost order, cheapest first).

    Example:
        >>> from fairsample.evaluation.conditioning import SamplingSetting
        >>> def sc(w, dark):
        ...     return ConditioningScores(SamplingSetting(w), 8, [], {}, {"t=a": {"label": 1.0, "t": 1.0, "n": 40},
        ...                               "t=b": {"label": dark, "t": 1.0, "n": 40}}, {}, {}, {}, "label")
        >>> select_setting([sc(1.0, 0.92), sc(1.5, 0.95), sc(3.0, 0.5)])  # 0.96 is within 0.025 of 0.975
        (0, 0.025)
    """
    best = max(candidates, key=lambda c: (c.score, c.mean_score))
    n = best.min_group_n
    s = best.score
    tol = max(1.0 / n, math.sqrt(max(s * (1.0 - s), 0.0) / n))
    for k, c in enumerate(candidates):
        if c.score >= best.score - tol - 1e-12:
            return k, round(tol, 4)
    raise AssertionError("unreachable: the best candidate is within tolerance of itself")


def _candidates(
    guidance: Sequence[float], rescale: Sequence[float], prediction_type: str, steps: int, scheduler: str
) -> list[SamplingSetting]:
    """Candidate settings in cost order: plain CFG by w, then rescale at the largest w (v-prediction only)."""
    ws = sorted({float(w) for w in guidance})
    out = [SamplingSetting(w, 0.0, steps, scheduler) for w in ws]
    if prediction_type == "v_prediction" and ws[-1] > 1.0:
        out += [SamplingSetting(ws[-1], float(phi), steps, scheduler) for phi in sorted(set(rescale)) if phi > 0]
    return out


def _check_grid(guidance: Sequence[float], rescale: Sequence[float]) -> None:
    ok = (
        isinstance(guidance, Sequence)
        and len(guidance) > 0
        and all(
            isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 1 for w in guidance
        )
    )
    if not ok:
        raise ConfigError(_BAD_GRID.format(value=guidance))
    if not isinstance(rescale, Sequence) or not all(
        isinstance(p, int | float) and not isinstance(p, bool) and 0 < p <= 1 for p in rescale
    ):
        raise ConfigError(_BAD_RESCALE.format(value=rescale))


def _weights_digest(bundle: ModelBundle) -> str:
    from fairsample.export.cache import weights_sha256

    state = {f"unet.{k}": v for k, v in bundle.unet.state_dict().items()}
    state.update({f"conditioner.{k}": v for k, v in bundle.conditioner.state_dict().items()})
    return weights_sha256(state)


def _start_scores(
    start: ModelBundle,
    judges: Judges,
    cells: list,
    setting: SamplingSetting,
    *,
    images_per_cell: int,
    device: str,
    cache_dir: str | os.PathLike[str] | None,
) -> ConditioningScores:
    """The starting model's scores at ``setting`` (same cells and seeds), cached by its weights."""
    import torch

    from fairsample.export.cache import ArtifactCache

    label = start.label_name
    parts = {
        "kind": "conditioning-scores",
        "version": 1,
        "weights": _weights_digest(start),
        "scheduler_config": {k: v for k, v in dict(start.scheduler.config).items() if not k.startswith("_")},
        "judges": judges.key,
        "setting": setting.to_dict(),
        "cells": [c.to_text(label) for c in cells],
        "images_per_cell": images_per_cell,
        "seed": VALIDATION_SEED,
        "device": torch.device(device).type,
        "torch": torch.__version__.split("+")[0],
    }

    def build(tmp: Path) -> dict[str, Any]:
        pipe = sampling_pipeline(start, device)
        scores = sample_and_score(pipe, judges, cells, setting, images_per_cell=images_per_cell)
        return {"scores": scores.to_dict(), "report": {"passed": True}}

    _, manifest = ArtifactCache(cache_dir or conditioning_cache_dir()).get_or_build(parts, build)
    return ConditioningScores.from_dict(manifest["scores"], judges.label)


def _load(bundle: ModelBundle | str | os.PathLike[str], device: str) -> ModelBundle:
    return bundle if isinstance(bundle, ModelBundle) else ModelBundle.load(bundle, device=device)


def _load_start(start: ModelBundle | str | os.PathLike[str], model: ModelBundle, device: str) -> ModelBundle:
    """The starting model; a Stable Diffusion folder gets the fine-tuned model's cells and prompt template, so both
    are sampled with the same prompts."""
    if isinstance(start, ModelBundle):
        return start
    from fairsample.models.sd_import import open_model

    template = model.config.get("template") or getattr(model.conditioner, "template", None)
    return open_model(
        start,
        flag="--init-from",
        attributes=model.attribute_values,
        labels=model.label_values,
        label_name=model.label_name,
        template=template,
        device=device,
    )


def conditioning_guard(
    bundle: ModelBundle | str | os.PathLike[str],
    dataset: FolderDataset,
    *,
    start: ModelBundle | str | os.PathLike[str] | Literal["auto"] | None = "auto",
    select: bool = True,
    guidance: Sequence[float] = (1.0, 1.5, 2.0, 3.0),
    rescale: Sequence[float] = (),
    steps: int = 25,
    scheduler: str = "ddim",
    images_per_cell: int = 8,
    split_seed: int = 0,
    judge_epochs: int = 8,
    write: bool | None = None,
    warn: bool = True,
    device: str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
) -> GuardReport:
    """Measure whether a model's samples still show their label and sensitive attributes; pick its sampling settings.

    Args:
        bundle: the model (a bundle folder, or a loaded :class:`~fairsample.models.bundle.ModelBundle`).
        dataset: the real dataset it was trained on (judges train on its train split, the ceiling is its val split).
        start: the starting point to compare with: a bundle (folder or loaded), ``"auto"`` (the bundle's
            ``init_from`` parent when its folder exists, else the ceiling) or ``None`` (the judges' ceiling).
        select: choose the recommended setting among the candidates; ``False`` measures at the bundle's current
            recommended settings only (``SampleConfig`` defaults overridden by its ``sampling`` table).
        guidance: candidate CFG scales w (each >= 1).
        rescale: guidance-rescale φ values also tried at the largest w for v-prediction models (e.g. ``(0.7,)``;
            on the embedded model it lifted w = 3 from 0.70 to 0.75 and w = 5 from 0.10 to 0.55, never above w <= 2,
            so it is off by default: each value costs one more candidate).
        steps: inference steps of every candidate (``select=True``).
        scheduler: scheduler of every candidate (``select=True``).
        images_per_cell: samples per cell (seeds 900000, 900001, ... cell after cell).
        split_seed: the dataset split seed the model was trained with.
        judge_epochs: judge training epochs.
        write: record ``sampling`` (when ``select``), ``sampling_selection`` and ``conditioning_guard`` in the bundle
            folder's ``fairsample_config.json`` (default: when the bundle has a folder).
        warn: a one-line :class:`~fairsample.core.errors.FairsampleWarning` when the flag is not ``ok``.
        device: torch device for sampling.
        cache_dir: artifact store for the judges and the start's scores (default:
            :func:`~fairsample.evaluation.conditioning.conditioning_cache_dir`, next to the engine cache).

    Returns:
        :class:`GuardReport`.

    Raises:
        ConfigError: a bad grid or bundle. DataError: the dataset cannot train judges or shares no cell with the
            model.

    Example:
        >>> report = conditioning_guard("runs/cbdm", load_folder("demo"))  # doctest: +SKIP
        >>> report.flag, report.setting.guidance_scale  # doctest: +SKIP
        ('collapsed', 1.0)
    """
    t0 = time.time()
    _check_grid(guidance, rescale)
    model = _load(bundle, device)
    folder = model.config.get("path")
    judges = train_judges(
        dataset, size=model.image_shape[-1], epochs=judge_epochs, split_seed=split_seed, cache_dir=cache_dir
    )
    cells = guard_cells(model, dataset)
    pipe = sampling_pipeline(model, device)
    # 1. candidates (or the bundle's current setting), scored
    if select:
        settings = _candidates(guidance, rescale, model.prediction_type, steps, scheduler)
    else:
        cfg = pipe.default_config()
        settings = [SamplingSetting(cfg.guidance_scale, cfg.guidance_rescale, cfg.steps, cfg.scheduler)]
    candidates = [sample_and_score(pipe, judges, cells, s, images_per_cell=images_per_cell) for s in settings]
    k, tol = select_setting(candidates) if select else (0, 0.0)
    chosen = candidates[k]
    # 2. reference: the starting model at the same setting and seeds, or the judges' ceiling
    if isinstance(start, str) and start == "auto":
        parent = (model.config.get("init_from") or {}).get("path")
        start = parent if parent and Path(parent).is_dir() else None
    if start is not None:
        start_model = _load_start(start, model, device)
        ref_scores = _start_scores(
            start_model,
            judges,
            cells,
            chosen.setting,
            images_per_cell=images_per_cell,
            device=device,
            cache_dir=cache_dir,
        )
        reference = {
            "kind": "start",
            "bundle": start_model.bundle_id,
            "overall": ref_scores.overall,
            "by_group": {g: {t: v[t] for t in judges.targets} for g, v in ref_scores.by_group.items()},
            "ber": ref_scores.ber,
            "score": round(ref_scores.score, 4),
        }
    else:
        reference = {
            "kind": "ceiling",
            "bundle": None,
            "overall": judges.ceiling["overall"],
            "by_group": judges.ceiling["by_group"],
        }
    # 3. flag
    flag, reasons = guard_flag(chosen, reference, judges.chance(), ceiling=judges.ceiling)
    judged = {"key": judges.key[:16], "size": judges.size, "ceiling": judges.ceiling}
    report = GuardReport(
        flag, reasons, chosen.setting, chosen, json_safe(reference), candidates, tol, select, judged, time.time() - t0
    )
    # 4. record and warn
    if write is None:
        write = folder is not None
    if write:
        if folder is None:
            raise ConfigError("`write=True` needs a bundle folder; pass the bundle's path or write=False.")
        updates: dict[str, Any] = {"conditioning_guard": report.to_dict()}
        if select:
            sampling = {**model.sampling_defaults(), **report.sampling()}
            if not report.setting.guidance_rescale:
                sampling.pop("guidance_rescale", None)
            updates.update(sampling=sampling, sampling_selection=report.selection_table())
        new_cfg = update_bundle_config(folder, updates)
        model.config.update({k: new_cfg[k] for k in updates})
    if warn and flag != "ok":
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        where = f"{folder}/fairsample_config.json" if folder else "the report"
        msg = _WARN.format(
            bundle=model.bundle_id,
            flag=flag,
            setting=report.setting.describe(),
            reason=reasons[0],
            more=more,
            where=where,
        )
        warnings.warn(msg, FairsampleWarning, stacklevel=2)
    return report


def guard_after_training(
    bundle_dir: str | os.PathLike[str],
    dataset: FolderDataset,
    config: Any,
    *,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> GuardReport | None:
    """The end of :func:`fairsample.train.loop.train`: run :func:`conditioning_guard` with the ``TrainConfig.guard*``
    settings, or record ``{"flag": "unchecked"}`` when the guard is off or could not run (the trained bundle is kept
    either way).

    Args:
        bundle_dir: the bundle just written.
        dataset: the training dataset.
        config: the run's :class:`~fairsample.core.config.TrainConfig`.
        device: torch device for sampling.
        log: one-line messages (the loop's ``say``).

    Returns:
        The :class:`GuardReport`, or ``None`` when the guard did not run.
    """
    say = log or (lambda msg: None)
    if not config.guard:
        update_bundle_config(bundle_dir, {"conditioning_guard": {"flag": "unchecked", "reason": _GUARD_OFF}})
        return None
    say(
        f"conditioning guard: sampling {config.guard_images_per_cell} images per cell at each of "
        f"{len(config.guard_guidance)}+ guidance settings ({config.guard_steps} DDIM steps) to check conditioning "
        "and pick the recommended guidance (--no-guard skips it)"
    )
    try:
        report = conditioning_guard(
            bundle_dir,
            dataset,
            start=config.init_from,
            guidance=config.guard_guidance,
            rescale=config.guard_rescale,
            steps=config.guard_steps,
            images_per_cell=config.guard_images_per_cell,
            split_seed=config.split_seed,
            device=device,
        )
    except FairsampleError as exc:
        update_bundle_config(bundle_dir, {"conditioning_guard": {"flag": "unchecked", "reason": str(exc)}})
        warnings.warn(_UNCHECKED.format(bundle=bundle_dir, why=exc), FairsampleWarning, stacklevel=2)
        return None
    say(f"conditioning guard ({report.seconds:.0f} s): {report.summary()}; recommended sampling {report.sampling()}")
    return report

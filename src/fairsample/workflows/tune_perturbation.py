"""Search the per-group offsets of ``fairdiffusion_perturbed`` with GP-UCB (METHODS.md §4.3; project-extension).

θ = (δw per group, δκ per group) for one attribute, mapped affinely to [0, 1]^d (d = 2·|groups|). Evaluation order:
θ = 0 (the baseline), max(4, d) Sobol points, then ``iterations`` GP-UCB proposals with the GP of the FBP trainer
(:func:`fairsample.train.fbp.propose_sigma`: Matérn-5/2 ARD, Gamma priors, ``Standardize(m=1)`` outcome; β = 0.1).

**Objective** ``kid_gap`` (:func:`kid_gap`): r(θ) = −(mean_g KID_g + λ·(max_g KID_g − min_g KID_g)), where KID_g
compares the n_eval images generated for group g with **group g's own real images only** — never a pooled real set:
the generated set is group-balanced and the real data is not, so a pooled KID is mostly composition mismatch, which an
offset can only lower by making minority images look like the majority. Every group gets the same n_eval, and every
evaluation uses **the same seeds** (common random numbers). The real reference is the validation split; a group with
fewer than ``min_reference`` validation images is topped up with train images of that group that are then **left out
of the feature network's training set**, so every reference image is unseen by the features (the test split is never
read). The feature network (:class:`~fairsample.evaluation.features.DomainFeatures`, cell classes) is trained on the
rest
of the train split.

**Choice and guard.** θ* is the evaluated point with the best GP posterior mean. If that is θ = 0, the search found
no offset better than zero and zero offsets are stored. Otherwise θ* and θ = 0 are re-evaluated on K
(``held_out_sets``) sets of fresh seeds never used in the search; with the paired differences
d_k = r_k(θ*) − r_k(0), θ* is kept only if mean(d) > 0 and mean(d) > z·SE, SE = sd(d)/√K (:func:`paired_guard`).
Everything (held-out rewards, d_k, mean, SE, decision and a one-line reason) is stored in ``perturbation.json``'s meta.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fairsample.core.errors import ConfigError, FairsampleWarning, require
from fairsample.samplers.perturbed import Perturbation

#: generated images per group and evaluation. Measured on demo v2 (embedded model, 10 DDIM steps): at 32 the sd of
#: the paired difference r(θ*) − r(0) over seed sets is 0.09 (SE 0.04 over 5 sets) against a held-out gain of 0.32;
#: at 16 it is 0.33 (SE 0.15) and the same gain no longer passes the guard (see docs/decisions.md).
DEFAULT_N_EVAL = 32
#: held-out seed sets of the guard (K); each costs two evaluations (θ* and θ = 0).
DEFAULT_HELD_OUT_SETS = 5
#: the guard keeps θ* only if the mean paired held-out gain exceeds z standard errors; with K = 5 a θ* no better
#: than zero passes with probability P(t_4 > 2) ≈ 6 %.
DEFAULT_Z = 2.0
#: real reference images per group below which train images (unseen by the features) top the reference up.
MIN_REFERENCE = 20

_BAD_ATTRIBUTE = "`attribute` {value!r} is not a sensitive attribute of the model; its attributes are {known}."
_MISSING_GROUP = (
    "the validation and train splits have {n} image(s) of {attribute}={value!r}, KID needs at least 2; "
    "use a larger dataset or another attribute."
)
_SMALL_REFERENCE = (
    "the real reference of {attribute}={value!r} has only {n} images (< min_reference={need}: {val} validation + "
    "{train} train images left out of the feature network); its KID is noisy, use a larger dataset."
)
_BAD_HELD_OUT = "`held_out_sets` must be an integer >= 2 (the guard needs a standard error), got {value!r}."
_BAD_N_EVAL = "`n_eval` must be an integer >= 2 (KID needs two images per group), got {value!r}."
_BAD_GUARD_INPUT = (
    "`zero` and `theta_star` must be equally long sequences of >= 2 finite held-out rewards, got {n0} and {n1}{extra}."
)
_BAD_REWARD_GROUPS = "`generated` must have the groups of `reference` ({known}), got {value}; generate every group."


@dataclass
class TuneResult:
    """What :func:`tune_perturbation` found: the stored perturbation, the search trace and the guard's verdict.

    Attributes:
        perturbation: the stored offsets (zero unless θ* passed the guard) with the meta of ``perturbation.json``.
        kept: ``"theta_star"`` or ``"zero"``.
        trace: one dict per search evaluation (θ, reward, KID per group).
        held_out: the guard's record (:meth:`GuardResult.to_dict` plus the per-set KIDs), or the reason it did not run.
        reason: one human line: why θ* or zero offsets were kept.
    """

    perturbation: Perturbation
    kept: str
    trace: list[dict[str, Any]]
    held_out: dict[str, Any]
    reason: str = ""


@dataclass(frozen=True)
class GuardResult:
    """The verdict of :func:`paired_guard`.

    Attributes:
        keep: True when θ* beats θ = 0 on the held-out seed sets.
        differences: d_k = r_k(θ*) − r_k(0), one per held-out seed set.
        mean: mean(d).
        se: sd(d, ddof=1) / √K.
        z: the threshold in standard errors.
        reason: one line, e.g. ``"kept θ*: held-out gain 0.0310 ± 0.0080 (SE over 5 paired seed sets)"``.
    """

    keep: bool
    differences: list[float]
    mean: float
    se: float
    z: float
    reason: str
    zero: list[float] = field(default_factory=list)
    theta_star: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "decision": "theta_star" if self.keep else "zero",
            "reason": self.reason,
            "sets": len(self.differences),
            "zero": self.zero,
            "theta_star": self.theta_star,
            "differences": self.differences,
            "mean": self.mean,
            "se": self.se,
            "z": self.z,
        }


def paired_guard(zero: Sequence[float], theta_star: Sequence[float], *, z: float = DEFAULT_Z) -> GuardResult:
    """Keep θ* only if its paired held-out gain over θ = 0 is positive and larger than z standard errors.

    With d_k = theta_star[k] − zero[k] (rewards, higher is better, both on held-out seed set k),
    SE = sd(d, ddof=1)/√K; keep iff mean(d) > 0 and mean(d) > z·SE. Pairing removes what the seed set does to both
    rewards alike (most of the reward's spread across seed sets), so a small but consistent gain passes, while a sum of
    the two rewards' spreads would reject every realistic gain.

    Args:
        zero: ``(K,)`` held-out rewards of θ = 0, K ≥ 2, finite.
        theta_star: ``(K,)`` held-out rewards of θ* on the same seed sets.
        z: threshold in standard errors (2: one-sided level ≈ 6 % for K = 5 under a t distribution with 4 df).

    Returns:
        :class:`GuardResult`.

    Raises:
        ConfigError: unequal lengths, K < 2 or non-finite rewards.

    Example:
        >>> g = paired_guard([-0.50, -0.62, -0.45, -0.58, -0.55], [-0.47, -0.595, -0.415, -0.555, -0.52])
        >>> g.keep, g.reason
        (True, 'kept θ*: held-out gain 0.0290 ± 0.0019 (SE over 5 paired seed sets)')
    """
    r0, r1 = np.asarray(zero, dtype=np.float64), np.asarray(theta_star, dtype=np.float64)
    if r0.ndim != 1 or r0.shape != r1.shape or len(r0) < 2 or not (np.isfinite(r0).all() and np.isfinite(r1).all()):
        extra = "" if r0.shape != r1.shape or len(r0) < 2 else " (non-finite values)"
        raise ConfigError(_BAD_GUARD_INPUT.format(n0=r0.size, n1=r1.size, extra=extra))
    d = r1 - r0
    k = len(d)
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(k))
    gain = f"held-out gain {mean:.4f} ± {se:.4f}"
    keep = mean > 0 and mean > z * se
    if keep:
        reason = f"kept θ*: {gain} (SE over {k} paired seed sets)"
    elif mean <= 0:
        reason = f"kept zero offsets: {gain} (SE over {k} paired seed sets) is not positive"
    else:
        reason = f"kept zero offsets: {gain} is within {z:g} SE (SE over {k} paired seed sets)"
    return GuardResult(
        keep=keep,
        differences=d.tolist(),
        mean=mean,
        se=se,
        z=float(z),
        reason=reason,
        zero=r0.tolist(),
        theta_star=r1.tolist(),
    )


def kid_gap(
    reference: Mapping[str, Any],
    generated: Mapping[str, Any],
    *,
    features: nn.Module,
    lam: float = 1.0,
    subsets: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``kid_gap`` reward: r = −(mean_g KID_g + λ·(max_g KID_g − min_g KID_g)), each group against its own images.

    KID_g = KID(reference[g], generated[g]) (:func:`fairsample.evaluation.generative.kid`, unbiased, subsets of
    ``min(len(reference[g]), len(generated[g]))`` images). No pooled KID enters: the composition of the real data
    (how imbalanced the groups are) does not change r, only how well each group's images match that group.

    Args:
        reference: ``{group: (N_g, H, W, 3) uint8}`` real images, N_g ≥ 2.
        generated: ``{group: (n, H, W, 3) uint8}`` generated images, the same groups, n ≥ 2 (equal n per group).
        features: the feature module (e.g. :class:`~fairsample.evaluation.features.DomainFeatures`).
        lam: λ, the weight of the between-group KID range.
        subsets: KID subsets per group.
        seed: seed of the KID subset draws (the same seed at every evaluation: common random numbers).

    Returns:
        ``{"reward", "kid_mean", "kid_range", "kid_by_group", "kid_sd_by_group"}`` (floats; the last two by group).

    Raises:
        ConfigError: the groups differ, or a group has fewer than 2 images.

    Example:
        >>> from fairsample.evaluation.classifiers import SmallCNN
        >>> from fairsample.evaluation.features import DomainFeatures
        >>> m = DomainFeatures(SmallCNN(2, width=2), ["a", "b"])
        >>> rng = np.random.default_rng(0)
        >>> real = {"a": rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8),
        ...         "b": rng.integers(0, 64, (10, 8, 8, 3), dtype=np.uint8)}
        >>> r = kid_gap(real, real, features=m)  # every group against itself
        >>> sorted(r["kid_by_group"]), abs(r["reward"]) < 1e-2
        (['a', 'b'], True)
    """
    from fairsample.evaluation.generative import kid

    if set(generated) != set(reference):
        raise ConfigError(_BAD_REWARD_GROUPS.format(known=sorted(reference), value=sorted(generated)))
    kids, sds = {}, {}
    for g in reference:
        size = min(len(reference[g]), len(generated[g]))
        kids[g], sds[g] = kid(
            reference[g], generated[g], features=features, subset_size=size, subsets=subsets, seed=seed
        )
    values = np.array(list(kids.values()))
    k_mean, k_range = float(values.mean()), float(values.max() - values.min())
    return {
        "reward": -(k_mean + lam * k_range),
        "kid_mean": k_mean,
        "kid_range": k_range,
        "kid_by_group": kids,
        "kid_sd_by_group": sds,
    }


def _decode(u: np.ndarray, groups: list[str], w0: float, w_frac: float, k_max: float) -> tuple[dict, dict]:
    """[0, 1]^d → (δw by group, δκ by group)."""
    g = len(groups)
    dw = {v: float((2 * u[i] - 1) * w_frac * w0) for i, v in enumerate(groups)}
    dk = {v: float((2 * u[g + i] - 1) * k_max) for i, v in enumerate(groups)}
    return dw, dk


def _reference_rows(
    real: Any, attribute: str, groups: list[str], *, min_reference: int, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, dict[str, int]]]:
    """Per-group reference rows (validation, topped up from train to ``min_reference``) and the feature-training rows.

    A group below ``min_reference`` validation images borrows train images of that group, at most half of them (the
    features must still see the group), and those rows leave the feature network's training set.
    """
    from fairsample.data.splits import split_indices

    split = split_indices(real, seed=0)
    val_rows, train_rows = np.asarray(split["val"], np.int64), np.asarray(split["train"], np.int64)
    col = real.frame[attribute].astype(str).to_numpy()
    rng = np.random.default_rng([seed, 20_250])
    rows, sizes, borrowed = {}, {}, []
    for g in groups:
        v = val_rows[col[val_rows] == g]
        t = train_rows[col[train_rows] == g]
        take = min(max(0, min_reference - len(v)), len(t) // 2)
        extra = np.sort(rng.choice(t, size=take, replace=False)) if take else np.zeros(0, np.int64)
        rows[g] = np.concatenate([v, extra])
        borrowed.append(extra)
        sizes[g] = {"val": len(v), "train_held_out": int(take)}
        if len(rows[g]) < 2:
            raise ConfigError(_MISSING_GROUP.format(n=len(v) + len(t), attribute=attribute, value=g))
        if len(rows[g]) < min_reference:
            text = _SMALL_REFERENCE.format(
                attribute=attribute, value=g, n=len(rows[g]), need=min_reference, val=len(v), train=take
            )
            warnings.warn(text, FairsampleWarning, stacklevel=3)
    feature_rows = np.setdiff1d(train_rows, np.concatenate(borrowed))
    return rows, feature_rows, sizes


def tune_perturbation(
    bundle: Any,
    engine: Any,
    real: Any,
    *,
    attribute: str,
    n_eval: int = DEFAULT_N_EVAL,
    iterations: int = 20,
    steps: int | None = None,
    guidance_scale: float | None = None,
    lam: float = 1.0,
    guidance_fraction: float = 0.5,
    temperature_bound: float = 0.15,
    size: int | None = None,
    held_out_sets: int = DEFAULT_HELD_OUT_SETS,
    z: float = DEFAULT_Z,
    min_reference: int = MIN_REFERENCE,
    batch_size: int = 64,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """GP-UCB search of per-group guidance / noise-temperature offsets against the ``kid_gap`` objective.

    Args:
        bundle: the model bundle; engine: its engine (any backend).
        real: the real :class:`~fairsample.data.folder.FolderDataset`; its validation split is the per-group KID
            reference and its train split trains the feature network; the test split is never read.
        attribute: the targeted attribute A′ (one attribute).
        n_eval: generated images per group and evaluation (labels cycled), the same for every group.
        iterations: GP-UCB proposals after the initial design.
        steps, guidance_scale: sampling settings (default: the bundle's); guidance_scale is w_0.
        lam: λ, the weight of the between-group KID range.
        guidance_fraction: δw bounds ±fraction·w_0; temperature_bound: δκ bounds ±value.
        size: image side for the features (default: the model's).
        held_out_sets: K, the fresh seed sets on which θ* and θ = 0 are compared (≥ 2).
        z: the guard's threshold in standard errors of the paired difference.
        min_reference: real images per group below which the validation reference is topped up with train images
            that the feature network then does not see (a warning if even that stays short).
        batch_size: images per engine call.
        seed: seeds of the evaluation images, the Sobol design, the BO and the KID subsets.
        progress: one line per evaluation.

    Returns:
        :class:`TuneResult`; ``result.reason`` says why θ* or zero offsets were kept.

    Raises:
        ConfigError: unknown attribute, a group with fewer than 2 real images, ``n_eval`` < 2 or
            ``held_out_sets`` < 2.

    Example:
        >>> tune_perturbation(bundle, engine, load_folder("demo"), attribute="tone")  # doctest: +SKIP
    """
    from fairsample.evaluation.features import DomainFeatures
    from fairsample.evaluation.generative import folder_images

    values = bundle.attribute_values
    if attribute not in values:
        raise ConfigError(_BAD_ATTRIBUTE.format(value=attribute, known=sorted(values)))
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 2:
        raise ConfigError(_BAD_N_EVAL.format(value=n_eval))
    if isinstance(held_out_sets, bool) or not isinstance(held_out_sets, int) or held_out_sets < 2:
        raise ConfigError(_BAD_HELD_OUT.format(value=held_out_sets))
    require("botorch", feature="perturbation tuning (GP-UCB)")  # before any image is generated
    groups = list(values[attribute])
    say = progress or (lambda line: None)
    defaults = bundle.sampling_defaults()
    steps = int(steps or defaults.get("steps", 50))
    w0 = float(guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 3.0))
    side = int(size or bundle.image_shape[-1])
    # 1. the per-group real reference (validation, topped up from train) and the feature network on the rest
    ref_rows, feature_rows, ref_sizes = _reference_rows(
        real, attribute, groups, min_reference=min_reference, seed=seed
    )
    ref = {g: folder_images(real, rows, size=side) for g, rows in ref_rows.items()}
    features = DomainFeatures.fit_folder(real, rows=feature_rows, size=side, seed=seed)
    block = len(groups) * n_eval  # seeds per evaluation set
    evaluation = _Evaluation(
        bundle=bundle,
        engine=engine,
        attribute=attribute,
        groups=groups,
        labels=sorted({c.label for c in bundle.cells()}, key=lambda v: (len(v), v)),
        proto=bundle.cells()[0],
        scheduler_name=str(defaults.get("scheduler", "ddim")),
        uncond=bundle.conditioner.cached([None]).to(engine.device),
        steps=steps,
        w0=w0,
        guidance_fraction=guidance_fraction,
        temperature_bound=temperature_bound,
        n_eval=n_eval,
        batch_size=batch_size,
        block=block,
        base=seed * (held_out_sets + 1) * block,  # set j uses seeds base + j·block ... (0: search, 1..K: held out)
        ref=ref,
        features=features,
        lam=lam,
        seed=seed,
    )
    # 2. search: θ = 0, the Sobol design, then GP-UCB proposals
    trace = _search(evaluation, iterations=iterations, say=say)
    # 3. θ*: best GP posterior mean over the evaluated points
    best, mean = _posterior_best(trace, seed)
    # 4. guard: θ* and θ = 0 on K held-out seed sets
    keep, reason, held = _held_out_guard(evaluation, trace, best, mean, held_out_sets=held_out_sets, z=z, say=say)
    # 5. store: the kept offsets with the whole record in the meta
    kept = "theta_star" if keep else "zero"
    meta = _meta(
        evaluation,
        min_reference=min_reference,
        ref_sizes=ref_sizes,
        feature_train_images=len(feature_rows),
        kept=kept,
        reason=reason,
        best=best,
        mean=mean,
        held=held,
        trace=trace,
    )
    star = trace[best]
    chosen = evaluation.perturbation(star["guidance"], star["temperature"]) if keep else Perturbation()
    final = Perturbation(guidance=chosen.guidance, temperature=chosen.temperature, guidance_min=1.0, meta=meta)
    return TuneResult(perturbation=final, kept=kept, trace=trace, held_out=held, reason=reason)


@dataclass(frozen=True)
class _Evaluation:
    """How a θ is scored: the sampling settings, the box θ lives in, the seed layout of the evaluation sets and the
    per-group real reference of :func:`kid_gap`."""

    bundle: Any  # the model bundle
    engine: Any  # its engine
    attribute: str  # the targeted attribute A′
    groups: list[str]  # its values
    labels: list[str]  # the model's labels, cycled over the images of a group
    proto: Any  # a cell of the model, the template of every generated cell
    scheduler_name: str  # the sampling scheduler
    uncond: torch.Tensor  # the null conditioning
    steps: int  # sampling steps
    w0: float  # base guidance scale
    guidance_fraction: float  # δw bounds ±fraction·w_0
    temperature_bound: float  # δκ bounds ±value
    n_eval: int  # generated images per group and set
    batch_size: int  # images per engine call
    block: int  # seeds per evaluation set
    base: int  # first seed of set 0 (the search); set j starts at base + j·block
    ref: dict[str, np.ndarray]  # per-group real reference images
    features: nn.Module  # the feature network of KID
    lam: float  # λ, the weight of the between-group KID range
    seed: int  # the run's seed (KID subsets, Sobol design, BO)

    def decode(self, u: np.ndarray) -> tuple[dict, dict]:
        """[0, 1]^d → (δw by group, δκ by group)."""
        return _decode(u, self.groups, self.w0, self.guidance_fraction, self.temperature_bound)

    def perturbation(self, dw: dict, dk: dict) -> Perturbation:
        """Per-group offsets of the targeted attribute as a :class:`Perturbation`."""
        return Perturbation(guidance={self.attribute: dw}, temperature={self.attribute: dk})

    def seed_range(self, j: int) -> list[int]:
        """First and last seed of evaluation set ``j``."""
        return [self.base + j * self.block, self.base + (j + 1) * self.block - 1]

    def generate(self, cells: list[Any], seeds: list[int], pert: Perturbation) -> np.ndarray:
        """One batch of ``fairdiffusion_perturbed`` images, ``(B, H, W, 3)`` uint8, image k from seed k."""
        from fairsample.generation.pipeline import to_uint8
        from fairsample.samplers import (
            ConditioningPlan,
            initial_latents,
            make_generators,
            make_scheduler,
            sample_fairdiffusion_perturbed,
        )
        from fairsample.samplers.schedulers import init_noise_sigma

        bundle, engine = self.bundle, self.engine
        scheduler = make_scheduler(self.scheduler_name, bundle.scheduler.config)
        gens = make_generators(seeds)
        lat = initial_latents(gens, bundle.latent_shape, init_noise_sigma=init_noise_sigma(scheduler, self.steps))
        plan = ConditioningPlan(
            cond=bundle.conditioner.cached(cells).to(engine.device), uncond=self.uncond, cells=tuple(cells)
        )
        with torch.no_grad():
            x = sample_fairdiffusion_perturbed(
                engine,
                scheduler,
                lat.to(engine.device),
                plan,
                perturbation=pert,
                num_inference_steps=self.steps,
                guidance_scale=self.w0,
                generator=gens,
            )
            return to_uint8(bundle.decode(x))

    def evaluate(self, pert: Perturbation, sets: list[int]) -> list[dict[str, Any]]:
        """:func:`kid_gap` of ``pert`` on each evaluation set in ``sets`` (common random numbers across θ)."""
        groups, n_eval, batch_size = self.groups, self.n_eval, self.batch_size
        # 1. every (set, group, k) image in batches: n_eval per group, labels cycled, seeds fixed by (set, group, k)
        cells = [
            self.proto.replace(**{self.attribute: g}, label=self.labels[k % len(self.labels)])
            for _ in sets
            for g in groups
            for k in range(n_eval)
        ]
        seeds = [
            self.base + j * self.block + gi * n_eval + k
            for j in sets
            for gi in range(len(groups))
            for k in range(n_eval)
        ]
        imgs = np.concatenate(
            [
                self.generate(cells[i : i + batch_size], seeds[i : i + batch_size], pert)
                for i in range(0, len(cells), batch_size)
            ]
        )
        # 2. kid_gap per set, every group against its own real images
        out = []
        for s in range(len(sets)):
            gen = {
                g: imgs[(s * len(groups) + gi) * n_eval : (s * len(groups) + gi + 1) * n_eval]
                for gi, g in enumerate(groups)
            }
            out.append(kid_gap(self.ref, gen, features=self.features, lam=self.lam, seed=self.seed))
        return out


def _search(evaluation: _Evaluation, *, iterations: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The search on seed set 0: θ = 0, max(4, d) Sobol points, then ``iterations`` GP-UCB proposals (FBP's GP,
    β = 0.1); returns the trace, one dict per evaluation."""
    from fairsample.train.fbp import propose_sigma

    seed = evaluation.seed
    d = 2 * len(evaluation.groups)
    n_init = max(4, d)
    sobol = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(n_init).double().numpy()
    xs: list[np.ndarray] = [np.full(d, 0.5)]  # θ = 0 is the centre of the box
    xs += list(sobol)
    trace: list[dict[str, Any]] = []
    for i, u in enumerate(xs):
        _search_point(evaluation, u, "zero" if i == 0 else "sobol", trace, say)
    for it in range(iterations):
        x_t = torch.tensor(np.stack([t["u"] for t in trace]), dtype=torch.float64)
        y_t = torch.tensor([[t["reward"]] for t in trace], dtype=torch.float64)
        u, _, _ = propose_sigma(
            x_t, y_t, standardize=True, beta=0.1, num_restarts=5, raw_samples=20, seed=seed * 1000 + it
        )
        _search_point(evaluation, u.numpy(), "ucb", trace, say)
    return trace


def _search_point(
    evaluation: _Evaluation, u: np.ndarray, kind: str, trace: list[dict[str, Any]], say: Callable[[str], None]
) -> None:
    """Evaluate the point ``u`` of the box on the search seeds; append it to ``trace`` and report one line."""
    dw, dk = evaluation.decode(u)
    res = evaluation.evaluate(evaluation.perturbation(dw, dk), [0])[0]
    trace.append({"kind": kind, "u": [float(v) for v in u], "guidance": dw, "temperature": dk, **res})
    by = " ".join(f"{g} {v:.4f}" for g, v in res["kid_by_group"].items())
    say(f"{len(trace):3d} {kind:7s} reward {res['reward']:+.4f}  KID {by}")


def _held_out_guard(
    evaluation: _Evaluation,
    trace: list[dict[str, Any]],
    best: int,
    mean: np.ndarray,
    *,
    held_out_sets: int,
    z: float,
    say: Callable[[str], None],
) -> tuple[bool, str, dict[str, Any]]:
    """Keep θ* only if it beats θ = 0 on K fresh seed sets (:func:`paired_guard`); θ* = 0 skips the re-evaluation.
    Returns (keep, reason, the guard's record)."""
    star = trace[best]
    sets = list(range(1, held_out_sets + 1))
    held: dict[str, Any] = {"seed_sets": [evaluation.seed_range(j) for j in sets]}
    if best == 0 or mean[best] <= mean[0]:
        reason = "kept zero offsets: the search found no offset better than zero (θ* = 0 has the best GP mean)"
        held |= {"decision": "zero", "reason": reason, "evaluated": False}
        return False, reason, held
    say(f"held-out check: θ* (evaluation {best + 1}) and θ = 0 on {held_out_sets} fresh seed sets")
    h0 = evaluation.evaluate(Perturbation(), sets)
    hs = evaluation.evaluate(evaluation.perturbation(star["guidance"], star["temperature"]), sets)
    verdict = paired_guard([r["reward"] for r in h0], [r["reward"] for r in hs], z=z)
    per_set = {"zero": [r["kid_by_group"] for r in h0], "theta_star": [r["kid_by_group"] for r in hs]}
    held |= verdict.to_dict() | {"evaluated": True, "kid_by_group": per_set}
    return verdict.keep, verdict.reason, held


def _meta(
    evaluation: _Evaluation,
    *,
    min_reference: int,
    ref_sizes: dict[str, dict[str, int]],
    feature_train_images: int,
    kept: str,
    reason: str,
    best: int,
    mean: np.ndarray,
    held: dict[str, Any],
    trace: list[dict[str, Any]],
) -> dict[str, Any]:
    """The meta of ``perturbation.json``: objective, box, sampling settings, seeds, reference, decision and trace."""
    w0, guidance_fraction, temperature_bound = (
        evaluation.w0,
        evaluation.guidance_fraction,
        evaluation.temperature_bound,
    )
    ref_all = np.concatenate(list(evaluation.ref.values()))
    return {
        "method_status": "project-extension",
        "objective": "kid_gap",
        "lambda": evaluation.lam,
        "attribute": evaluation.attribute,
        "objective_definition": "-(mean_g KID_g + lambda * (max_g KID_g - min_g KID_g)), KID_g against group g's "
        "own real images",
        "bounds": {
            "guidance": [-guidance_fraction * w0, guidance_fraction * w0],
            "temperature": [-temperature_bound, temperature_bound],
        },
        "base_guidance": w0,
        "steps": evaluation.steps,
        "n_eval_per_group": evaluation.n_eval,
        "seed": evaluation.seed,
        "search_seeds": evaluation.seed_range(0),
        "reference": "per group: validation split",
        "min_reference": min_reference,
        "reference_sizes": ref_sizes,
        "features": getattr(evaluation.features, "hash", None),
        "feature_train_images": feature_train_images,
        "eval_set_sha256": hashlib.sha256(ref_all.tobytes()).hexdigest(),
        "kept": kept,
        "reason": reason,
        "best_index": best,
        "posterior_mean": {"theta_star": float(mean[best]), "zero": float(mean[0])},
        "held_out": held,
        "trace": trace,
    }


def _posterior_best(trace: list[dict[str, Any]], seed: int) -> tuple[int, np.ndarray]:
    """Index of the evaluated point with the best GP posterior mean (FBP's GP, fitted on every evaluation)."""
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from fairsample.train.fbp import build_gp

    x_t = torch.tensor(np.stack([t["u"] for t in trace]), dtype=torch.float64)
    y_t = torch.tensor([[t["reward"]] for t in trace], dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gp = build_gp(x_t, y_t, standardize=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        with torch.no_grad():
            mean = gp.posterior(x_t).mean.squeeze(-1).numpy()
    return int(np.argmax(mean)), mean


def default_output(model: str | os.PathLike[str] | None) -> Path | None:
    """``<model>/perturbation.json`` for a bundle folder; None for the embedded model (pass ``--output``)."""
    return None if model is None else Path(model) / "perturbation.json"

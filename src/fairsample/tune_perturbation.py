"""Search the per-group offsets of ``fairdiffusion_perturbed`` with GP-UCB (METHODS.md §4.3; project-extension).

θ = (δw per group, δκ per group) for one attribute, mapped affinely to [0, 1]^d (d = 2·|groups|). Evaluation order:
θ = 0 (the baseline), max(4, d) Sobol points, then ``iterations`` GP-UCB proposals with the GP of the FBP trainer
(:func:`fairsample.train.fbp.propose_sigma`: Matérn-5/2 ARD, Gamma priors, ``Standardize(m=1)`` outcome; β = 0.1).
The objective is ``kid_gap``: r(θ) = −(KID_overall + λ·(max_g KID_g − min_g KID_g)), on n_eval generated images per
group with the **same seeds at every evaluation** (common random numbers), against real images of the **validation
split** only, in the space of a feature network trained on the train split. θ* is the evaluated point with the best
GP posterior mean. Guard against noise (project decision): θ* and θ = 0 are re-evaluated on fresh seeds, and θ* is
kept only if its held-out reward beats θ = 0 by more than the sum of both rewards' KID subset standard deviations;
otherwise zero offsets are stored and the report says so.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairsample.errors import ConfigError
from fairsample.samplers.perturbed import Perturbation

_BAD_ATTRIBUTE = "`attribute` {value!r} is not a sensitive attribute of the model; its attributes are {known}."
_MISSING_GROUP = "the validation split has no images of {attribute}={value!r}; use a larger dataset or another split."


@dataclass
class TuneResult:
    """What :func:`tune_perturbation` found: the stored perturbation and the search trace."""

    perturbation: Perturbation
    kept: str  # "theta_star" or "zero"
    trace: list[dict[str, Any]]
    held_out: dict[str, Any]


def _decode(u: np.ndarray, groups: list[str], w0: float, w_frac: float, k_max: float) -> tuple[dict, dict]:
    """[0, 1]^d → (δw by group, δκ by group)."""
    g = len(groups)
    dw = {v: float((2 * u[i] - 1) * w_frac * w0) for i, v in enumerate(groups)}
    dk = {v: float((2 * u[g + i] - 1) * k_max) for i, v in enumerate(groups)}
    return dw, dk


def tune_perturbation(
    bundle: Any,
    engine: Any,
    real: Any,
    *,
    attribute: str,
    n_eval: int = 16,
    iterations: int = 20,
    steps: int | None = None,
    guidance_scale: float | None = None,
    lam: float = 1.0,
    guidance_fraction: float = 0.5,
    temperature_bound: float = 0.15,
    size: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """GP-UCB search of per-group guidance / noise-temperature offsets against the ``kid_gap`` objective.

    Args:
        bundle: the model bundle; engine: its engine (any backend).
        real: the real :class:`~fairsample.data.folder.FolderDataset`; its validation split is the KID reference and
            its train split trains the feature network; the test split is never read.
        attribute: the targeted attribute A′ (one attribute).
        n_eval: generated images per group and evaluation (labels cycled).
        iterations: GP-UCB proposals after the initial design.
        steps, guidance_scale: sampling settings (default: the bundle's); guidance_scale is w_0.
        lam: λ, the weight of the between-group KID range.
        guidance_fraction: δw bounds ±fraction·w_0; temperature_bound: δκ bounds ±value.
        size: image side for the features (default: the model's).
        seed: seeds of the evaluation images, the Sobol design and the BO.
        progress: one line per evaluation.

    Returns:
        :class:`TuneResult`.

    Raises:
        ConfigError: unknown attribute, or a group without validation images.

    Example:
        >>> tune_perturbation(bundle, engine, load_folder("demo"), attribute="tone")  # doctest: +SKIP
    """
    from fairsample.data.splits import split_indices
    from fairsample.eval.features import DomainFeatures
    from fairsample.eval.generative import folder_images, kid
    from fairsample.pipeline import to_uint8
    from fairsample.samplers import (
        ConditioningPlan,
        initial_latents,
        make_generators,
        make_scheduler,
        sample_fairdiffusion_perturbed,
    )
    from fairsample.samplers.schedulers import init_noise_sigma
    from fairsample.train.fbp import propose_sigma

    values = bundle.attribute_values
    if attribute not in values:
        raise ConfigError(_BAD_ATTRIBUTE.format(value=attribute, known=sorted(values)))
    groups = list(values[attribute])
    say = progress or (lambda line: None)
    defaults = bundle.sampling_defaults()
    steps = int(steps or defaults.get("steps", 50))
    w0 = float(guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 3.0))
    side = int(size or bundle.image_shape[-1])
    split = split_indices(real, seed=0)
    val_rows = np.asarray(split["val"])
    col = real.frame[attribute].astype(str).to_numpy()
    ref = {g: folder_images(real, val_rows[col[val_rows] == g], size=side) for g in groups}
    for g, imgs in ref.items():
        if len(imgs) < 2:
            raise ConfigError(_MISSING_GROUP.format(attribute=attribute, value=g))
    ref_all = np.concatenate(list(ref.values()))
    features = DomainFeatures.fit_folder(real, rows=split["train"], size=side, seed=seed)
    labels = sorted({c.label for c in bundle.cells()}, key=lambda v: (len(v), v))
    base_cells = {c.groups: c for c in bundle.cells()}
    scheduler_name = str(defaults.get("scheduler", "ddim"))
    uncond = bundle.conditioner.cached([None]).to(engine.device)

    def generate(cells: list[Any], seeds: list[int], pert: Perturbation) -> np.ndarray:
        scheduler = make_scheduler(scheduler_name, bundle.scheduler.config)
        gens = make_generators(seeds)
        lat = initial_latents(gens, bundle.latent_shape, init_noise_sigma=init_noise_sigma(scheduler, steps))
        plan = ConditioningPlan(cond=bundle.conditioner.cached(cells).to(engine.device), uncond=uncond,
                                cells=tuple(cells))  # fmt: skip
        with torch.no_grad():
            x = sample_fairdiffusion_perturbed(engine, scheduler, lat.to(engine.device), plan, perturbation=pert,
                                               num_inference_steps=steps, guidance_scale=w0,
                                               generator=gens)  # fmt: skip
            return to_uint8(bundle.decode(x))

    def evaluate(pert: Perturbation, seed0: int) -> dict[str, Any]:
        kids, per = {}, {}
        gen_all = []
        for gi, g in enumerate(groups):
            cells = []
            for k in range(n_eval):
                proto = next(iter(base_cells.values()))
                cells.append(proto.replace(**{attribute: g}, label=labels[k % len(labels)]))
            seeds = [seed0 + gi * n_eval + k for k in range(n_eval)]
            imgs = generate(cells, seeds, pert)
            gen_all.append(imgs)
            kids[g], per[g] = kid(ref[g], imgs, features=features, subset_size=min(len(ref[g]), n_eval), seed=seed)
        k_all, s_all = kid(ref_all, np.concatenate(gen_all), features=features,
                           subset_size=min(len(ref_all), n_eval * len(groups)), seed=seed)  # fmt: skip
        spread = max(kids.values()) - min(kids.values())
        hi, lo = max(kids, key=kids.__getitem__), min(kids, key=kids.__getitem__)
        reward = -(k_all + lam * spread)
        sd = s_all + lam * (per[hi] + per[lo])
        return {"reward": reward, "sd": sd, "kid_overall": k_all, "kid_by_group": kids}

    d = 2 * len(groups)
    n_init = max(4, d)
    sobol = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(n_init).double().numpy()
    xs: list[np.ndarray] = [np.full(d, 0.5)]  # θ = 0 is the centre of the box
    xs += list(sobol)
    trace: list[dict[str, Any]] = []

    def run(u: np.ndarray, kind: str) -> None:
        dw, dk = _decode(u, groups, w0, guidance_fraction, temperature_bound)
        pert = Perturbation(guidance={attribute: dw}, temperature={attribute: dk})
        res = evaluate(pert, seed0=seed * 100_000)
        trace.append({"kind": kind, "u": [float(v) for v in u], "guidance": dw, "temperature": dk, **res})
        say(f"{len(trace):3d} {kind:7s} reward {res['reward']:+.4f}  KID overall {res['kid_overall']:.4f}")

    for i, u in enumerate(xs):
        run(u, "zero" if i == 0 else "sobol")
    for it in range(iterations):
        x_t = torch.tensor(np.stack([t["u"] for t in trace]), dtype=torch.float64)
        y_t = torch.tensor([[t["reward"]] for t in trace], dtype=torch.float64)
        u, _, _ = propose_sigma(x_t, y_t, standardize=True, beta=0.1, num_restarts=5, raw_samples=20,
                                seed=seed * 1000 + it)  # fmt: skip
        run(u.numpy(), "ucb")
    # θ*: best GP posterior mean over the evaluated points
    from fairsample.train.fbp import build_gp

    x_t = torch.tensor(np.stack([t["u"] for t in trace]), dtype=torch.float64)
    y_t = torch.tensor([[t["reward"]] for t in trace], dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        from botorch.fit import fit_gpytorch_mll
        from gpytorch.mlls import ExactMarginalLogLikelihood

        gp = build_gp(x_t, y_t, standardize=True)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        with torch.no_grad():
            mean = gp.posterior(x_t).mean.squeeze(-1)
    best = int(torch.argmax(mean))
    star = trace[best]
    zero = Perturbation()
    star_p = Perturbation(guidance={attribute: star["guidance"]}, temperature={attribute: star["temperature"]})
    held_seed = seed * 100_000 + 50_000
    h0, hs = evaluate(zero, held_seed), evaluate(star_p, held_seed)
    keep = best != 0 and hs["reward"] - h0["reward"] > h0["sd"] + hs["sd"]
    meta = {
        "method_status": "project-extension", "objective": "kid_gap", "lambda": lam, "attribute": attribute,
        "bounds": {"guidance": [-guidance_fraction * w0, guidance_fraction * w0],
                   "temperature": [-temperature_bound, temperature_bound]},
        "base_guidance": w0, "steps": steps, "n_eval_per_group": n_eval, "seed": seed,
        "reference": "validation split", "features": getattr(features, "hash", None),
        "eval_set_sha256": hashlib.sha256(ref_all.tobytes()).hexdigest(),
        "kept": "theta_star" if keep else "zero", "best_index": best,
        "held_out": {"zero": h0, "theta_star": hs}, "trace": trace,
    }  # fmt: skip
    chosen = star_p if keep else zero
    final = Perturbation(guidance=chosen.guidance, temperature=chosen.temperature, guidance_min=1.0, meta=meta)
    return TuneResult(perturbation=final, kept=meta["kept"], trace=trace, held_out=meta["held_out"])


def default_output(model: str | os.PathLike[str] | None) -> Path | None:
    """``<model>/perturbation.json`` for a bundle folder; None for the embedded model (pass ``--output``)."""
    return None if model is None else Path(model) / "perturbation.json"

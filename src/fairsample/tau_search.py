"""τ search on a model bundle: build the s0/s1 plans, run :func:`~fairsample.samplers.tau.search_tau`, cache, plot.

``find_tau(bundle, engine, attribute="tone", source="light", target="dark")`` pairs every label's s0 cell with its
s1 cell (same label), draws ``n_per_label`` initial latents per label from fixed seeds, and returns the J(τ) curve.
Results are cached as JSON under ``<cache root>/tau/`` keyed by (engine manifest hash, bundle weights, attribute
pair, labels, scheduler config, steps, guidance, grid, norm, weighting, seeds) — METHODS.md §4.2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fairsample.errors import ConfigError
from fairsample.samplers import ConditioningPlan, initial_latents, make_generators
from fairsample.samplers.tau import TauResult, search_tau

_BAD_VALUE = "`{name}` {value!r} is not a value of attribute {attribute!r}; its values are {known}."
_SAME = "`source` and `target` are both {value!r}; τ search needs two different values of {attribute!r}."
_BAD_ATTRIBUTE = "`attribute` {value!r} is not a sensitive attribute of the model; its attributes are {known}."


def tau_cache_dir() -> Path:
    """``<engine cache root>/../tau`` (``$FAIRSAMPLE_CACHE_DIR`` respected)."""
    from fairsample.export.cache import default_cache_dir

    return default_cache_dir().parent / "tau"


def find_tau(
    bundle: Any,
    engine: Any,
    *,
    attribute: str,
    source: str,
    target: str,
    labels: list[str] | None = None,
    n_per_label: int = 4,
    steps: int | None = None,
    guidance_scale: float | None = None,
    grid: int = 10,
    norm: str = "official",
    weighting: str = "riemann",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> tuple[TauResult, bool]:
    """τ* for switching ``attribute`` from ``source`` to ``target`` on ``bundle`` (cached).

    Args:
        bundle: a :class:`~fairsample.models.bundle.ModelBundle`.
        engine: the engine to run (its manifest hash keys the cache).
        attribute, source, target: the attribute and the s0 → s1 values.
        labels: labels to average over (default: every label of the model).
        n_per_label: trajectories per label (B = n_per_label · labels).
        steps, guidance_scale: DDIM steps and CFG scale (default: the bundle's sampling defaults).
        grid, norm, weighting: see :func:`~fairsample.samplers.tau.search_tau`.
        seed: first seed of the initial latents.
        cache_dir: where results are cached (default :func:`tau_cache_dir`).
        use_cache: read an earlier result when one exists.

    Returns:
        ``(result, from_cache)``.

    Raises:
        ConfigError: unknown attribute or value, or equal source and target.

    Example:
        >>> from fairsample.models.bundle import ModelBundle  # doctest: +SKIP
        >>> bundle = ModelBundle.load_default()  # doctest: +SKIP
        >>> find_tau(bundle, engine, attribute="tone", source="light", target="dark")  # doctest: +SKIP
    """
    from fairsample.export.cache import cache_key, canonical_json, weights_sha256
    from fairsample.samplers.schedulers import make_scheduler

    values = bundle.attribute_values
    if attribute not in values:
        raise ConfigError(_BAD_ATTRIBUTE.format(value=attribute, known=sorted(values)))
    for name, value in (("source", source), ("target", target)):
        if value not in values[attribute]:
            raise ConfigError(_BAD_VALUE.format(name=name, value=value, attribute=attribute, known=values[attribute]))
    if source == target:
        raise ConfigError(_SAME.format(value=source, attribute=attribute))
    defaults = bundle.sampling_defaults()
    steps = int(steps or defaults.get("steps", 50))
    guidance = float(guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 3.0))
    all_cells = bundle.cells()
    labels = labels or sorted({c.label for c in all_cells}, key=lambda v: (len(v), v))
    s0 = [c for c in all_cells if c.value(attribute) == source and c.label in labels]
    s0 = [c for c in s0 for _ in range(n_per_label)]
    s1 = [c.replace(**{attribute: target}) for c in s0]
    seeds = list(range(seed, seed + len(s0)))
    manifest = dict(getattr(engine, "manifest", {}) or {})
    parts = {
        "kind": "tau", "engine": engine.backend, "engine_key": manifest.get("key"),
        "weights": weights_sha256(bundle.unet.state_dict()), "attribute": attribute, "source": source,
        "target": target, "cells": [c.to_text(bundle.label_name) for c in s0], "seeds": seeds,
        "scheduler": json.loads(canonical_json(dict(bundle.scheduler.config))), "steps": steps,
        "guidance": guidance, "grid": grid, "norm": norm, "weighting": weighting,
    }  # fmt: skip
    root = Path(cache_dir) if cache_dir is not None else tau_cache_dir()
    path = root / f"{cache_key(parts)}.json"
    if use_cache and path.is_file():
        doc = json.loads(path.read_text(encoding="utf-8"))
        return TauResult(**doc["result"]), True
    latents = initial_latents(make_generators(seeds), bundle.latent_shape).to(engine.device)
    uncond = bundle.conditioner.cached([None]).to(engine.device)
    p0 = ConditioningPlan(cond=bundle.conditioner.cached(s0).to(engine.device), uncond=uncond, cells=tuple(s0))
    p1 = ConditioningPlan(cond=bundle.conditioner.cached(s1).to(engine.device), uncond=uncond, cells=tuple(s1))
    sched = make_scheduler("ddim", bundle.scheduler.config)
    with torch.no_grad():
        result = search_tau(engine, sched, latents, p0, p1, num_inference_steps=steps, guidance_scale=guidance,
                            grid=grid, norm=norm, weighting=weighting)  # type: ignore[arg-type]  # fmt: skip
    result.settings.update({"attribute": attribute, "source": source, "target": target, "labels": labels,
                            "n_per_label": n_per_label, "seed": seed})  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key_parts": parts, "result": result.to_dict()}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return result, False


def plot_tau(result: TauResult, path: str | os.PathLike[str]) -> Path:
    """A PNG of J(τ) with τ* marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.settings
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(result.taus, result.objective, marker="o", markersize=3, lw=1.5)
    ax.axvline(result.tau_star, color="C3", ls="--", lw=1.2, label=f"τ* = {result.tau_star}")
    ax.set_xlabel("τ (training timesteps; switch when t < τ)")
    ax.set_ylabel("J(τ) = ‖After − Before‖")
    ax.set_title(f"τ search: {s.get('attribute')} {s.get('source')} → {s.get('target')} "
                 f"(DDIM {s['steps']} steps, w = {s['guidance_scale']:g})", fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out

"""τ search on a model bundle: build the s0/s1 plans, run :func:`~fairsample.samplers.tau.search_tau`, cache, pool,
plot.

``find_tau(bundle, engine, attribute="tone", source="light", target="dark")`` pairs every label's s0 cell with its
s1 cell (same label), draws ``n_per_label`` initial latents per label from fixed seeds, and returns the J(τ) curve on
a search schedule of ``search_steps`` DDIM steps (default 100, independent of the sampling steps). J is symmetric in
(s0, s1) — the same x_T with the roles swapped negates every drift d_i — so a pair and its reverse share one search
and one cache entry. Results are cached as JSON under ``<cache root>/tau/`` keyed by (engine, manifest hash, bundle
weights, unordered attribute pair, cells, seeds, scheduler config, search steps, guidance, grid, norm, weighting) —
METHODS.md §4.2.

:func:`resolve_tau` is the one place that turns a set of ordered pairs into a τ: the argmin of the mean J(τ) over
the pairs (one pair: its own τ*). ``fairsample tau``, the study's τ cell and ``attribute_switch`` without ``tau``
(:class:`~fairsample.generation.pipeline.FairSamplePipeline`) all call it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fairsample.core.atomic import write_atomic
from fairsample.core.errors import ConfigError
from fairsample.samplers import ConditioningPlan, initial_latents, make_generators
from fairsample.samplers.switch import switch_index
from fairsample.samplers.tau import MIN_SEARCH_STEPS, TauResult, check_search, search_tau

_SETTINGS = ("guidance_scale", "grid", "norm", "weighting", "n_per_label", "batch_size", "seed")
#: trajectory pairs per label of the default search (B = 4 · labels)
DEFAULT_N_PER_LABEL = 4
_BAD_VALUE = "`{name}` {value!r} is not a value of attribute {attribute!r}; its values are {known}."
_SAME = "`source` and `target` are both {value!r}; τ search needs two different values of {attribute!r}."
_BAD_ATTRIBUTE = "`attribute` {value!r} is not a sensitive attribute of the model; its attributes are {known}."
_NO_PAIRS = "`pairs` is empty; give at least one (source, target) pair of {attribute!r} values, e.g. [('a', 'b')]."
_RULE = "argmin of the mean J(tau) over the ordered pairs (s0, s1); J is symmetric: one search per unordered pair"


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
    n_per_label: int = DEFAULT_N_PER_LABEL,
    search_steps: int = MIN_SEARCH_STEPS,
    guidance_scale: float | None = None,
    grid: int | None = None,
    norm: str = "official",
    weighting: str = "riemann",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    allow_coarse: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[TauResult, bool]:
    """τ* for switching ``attribute`` from ``source`` to ``target`` on ``bundle`` (cached).

    Args:
        bundle: a :class:`~fairsample.models.bundle.ModelBundle`.
        engine: the engine to run (its backend and manifest hash key the cache).
        attribute, source, target: the attribute and the s0 → s1 values.
        labels: labels to average over (default: every label of the model).
        n_per_label: trajectory pairs per label (B = n_per_label · labels).
        search_steps: DDIM steps of the search schedule (≥ 100 unless ``allow_coarse``; not the sampling steps).
        guidance_scale: CFG scale of both trajectories (default: the bundle's sampling default).
        grid, norm, weighting, allow_coarse: see :func:`~fairsample.samplers.tau.search_tau` (``grid=None``: the
            search schedule's spacing).
        seed: first seed of the initial latents.
        cache_dir: where results are cached (default :func:`tau_cache_dir`).
        use_cache: read an earlier result when one exists.
        progress: called with one line just before a search runs (not for a cached result).

    Returns:
        ``(result, from_cache)``; ``result.settings`` names the requested source and target.

    Raises:
        ConfigError: unknown attribute or value, equal source and target, or bad search settings.

    Example:
        >>> from fairsample.engines import load_engine  # doctest: +SKIP
        >>> from fairsample.models.bundle import ModelBundle  # doctest: +SKIP
        >>> bundle = ModelBundle.load_default()  # doctest: +SKIP
        >>> result, cached = find_tau(bundle, load_engine(bundle), attribute="tone", source="light",
        ...                           target="dark")  # doctest: +SKIP
        >>> result.tau_star, result.step_index, result.search_steps  # doctest: +SKIP
        (480, 52, 100)
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
    num_t = int(bundle.scheduler.config["num_train_timesteps"])
    grid = check_search(num_t, search_steps, grid, norm, weighting, allow_coarse)
    defaults = bundle.sampling_defaults()
    guidance = float(guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 3.0))
    # J(s0 -> s1) = J(s1 -> s0): search the pair in the attribute's value order, whatever the direction asked
    a, b = sorted((source, target), key=values[attribute].index)
    all_cells = bundle.cells()
    labels = labels or sorted({c.label for c in all_cells}, key=lambda v: (len(v), v))
    s0 = [c for c in all_cells if c.value(attribute) == a and c.label in labels]
    s0 = [c for c in s0 for _ in range(n_per_label)]
    s1 = [c.replace(**{attribute: b}) for c in s0]
    seeds = list(range(seed, seed + len(s0)))
    manifest = dict(getattr(engine, "manifest", {}) or {})
    parts = {
        "kind": "tau",
        "version": 2,
        "engine": engine.backend,
        "engine_key": manifest.get("key"),
        "weights": weights_sha256(bundle.unet.state_dict()),
        "attribute": attribute,
        "pair": [a, b],
        "cells": [c.to_text(bundle.label_name) for c in s0],
        "seeds": seeds,
        "scheduler": json.loads(canonical_json(dict(bundle.scheduler.config))),
        "search_steps": search_steps,
        "guidance": guidance,
        "grid": grid,
        "norm": norm,
        "weighting": weighting,
    }
    root = Path(cache_dir) if cache_dir is not None else tau_cache_dir()
    path = root / f"{cache_key(parts)}.json"
    asked = {
        "attribute": attribute,
        "source": source,
        "target": target,
        "searched_as": f"{a}->{b}",
        "labels": labels,
        "n_per_label": n_per_label,
        "seed": seed,
    }
    if use_cache and path.is_file():
        doc = json.loads(path.read_text(encoding="utf-8"))
        result = TauResult(**doc["result"])
        return dataclasses.replace(result, settings={**result.settings, **asked}), True
    if progress is not None:
        progress(
            f"searching tau* for {attribute} {a}<->{b}: {len(s0)} trajectory pairs x {search_steps} DDIM steps "
            f"(cached afterwards)"
        )
    latents = initial_latents(make_generators(seeds), bundle.latent_shape).to(engine.device)
    uncond = bundle.conditioner.cached([None]).to(engine.device)
    p0 = ConditioningPlan(cond=bundle.conditioner.cached(s0).to(engine.device), uncond=uncond, cells=tuple(s0))
    p1 = ConditioningPlan(cond=bundle.conditioner.cached(s1).to(engine.device), uncond=uncond, cells=tuple(s1))
    sched = make_scheduler("ddim", bundle.scheduler.config)
    with torch.no_grad():
        result = search_tau(
            engine,
            sched,
            latents,
            p0,
            p1,
            search_steps=search_steps,
            guidance_scale=guidance,
            grid=grid,
            norm=norm,
            weighting=weighting,
            allow_coarse=allow_coarse,
        )  # type: ignore[arg-type]
    result.settings.update(asked)
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"key_parts": parts, "result": result.to_dict()}, indent=2) + "\n")
    return result, False


def resolve_tau(
    bundle: Any,
    engine: Any,
    *,
    attribute: str,
    pairs: Sequence[tuple[str, str]],
    progress: Callable[[str], None] | None = None,
    **search: Any,
) -> tuple[TauResult, dict[str, Any]]:
    """τ for switching ``attribute`` along every ordered pair in ``pairs``: the argmin of the mean J(τ).

    The one implementation behind ``fairsample tau``, the study's τ cell and ``attribute_switch`` without ``tau``.
    Each unordered pair is searched once with :func:`find_tau` (J is symmetric) and its result cached; a single pair
    gives that pair's own τ*. Ties go to the smallest τ.

    Args:
        bundle: a :class:`~fairsample.models.bundle.ModelBundle`.
        engine: the engine to run.
        attribute: the sensitive attribute switched.
        pairs: ordered ``(s0, s1)`` value pairs, e.g. from :func:`~fairsample.samplers.switch.switch_pairs`.
        progress: called with one line before every search that runs (not for cached pairs), e.g. a stderr printer.
        **search: :func:`find_tau` options (``n_per_label``, ``search_steps``, ``guidance_scale``, ``grid``,
            ``norm``, ``weighting``, ``seed``, ``cache_dir``, ``use_cache``, ``allow_coarse``, ``labels``).

    Returns:
        ``(result, info)``: the pooled :class:`TauResult` (the pair's own for one pair) and a JSON-safe ``info``
        with ``tau_star``, ``step_index``, ``search_steps``, ``source`` (``"cached"`` when every pair came from the
        cache, else ``"searched"``), ``seconds``, ``rule`` and per pair ``{"tau_star", "step_index", "cached"}``.

    Raises:
        ConfigError: no pairs, or anything :func:`find_tau` rejects.

    Example:
        >>> result, info = resolve_tau(bundle, engine, attribute="tone",
        ...                            pairs=[("light", "dark"), ("dark", "light")])  # doctest: +SKIP
        >>> info["source"], result.tau_star == info["tau_star"]  # doctest: +SKIP
        ('searched', True)
    """
    if not pairs:
        raise ConfigError(_NO_PAIRS.format(attribute=attribute))
    t0 = time.perf_counter()
    ordered = [(str(s0), str(s1)) for s0, s1 in dict.fromkeys((p[0], p[1]) for p in pairs)]
    found: dict[frozenset[str], tuple[TauResult, bool]] = {}
    per_pair: dict[str, dict[str, Any]] = {}
    curves = []
    for s0, s1 in ordered:
        key = frozenset((s0, s1))
        if key not in found:
            found[key] = find_tau(
                bundle, engine, attribute=attribute, source=s0, target=s1, progress=progress, **search
            )
        res, cached = found[key]
        per_pair[f"{s0}->{s1}"] = {"tau_star": res.tau_star, "step_index": res.step_index, "cached": cached}
        curves.append(res)
    first = curves[0]
    if len(found) == 1:
        pooled = dataclasses.replace(
            first, settings={**first.settings, "source": ordered[0][0], "target": ordered[0][1]}
        )
    else:
        objective = [float(sum(c.objective[i] for c in curves) / len(curves)) for i in range(len(first.taus))]
        best = min(range(len(first.taus)), key=lambda k: (objective[k], first.taus[k]))
        tau_star = first.taus[best]
        settings = {k: v for k, v in first.settings.items() if k not in ("source", "target", "searched_as")}
        settings |= {
            "source": "all",
            "target": "all (mean J over ordered pairs)",
            "pairs": list(per_pair),
            "method_status": "project-extension",
        }
        pooled = TauResult(
            tau_star=tau_star,
            step_index=switch_index(tau_star, first.timesteps),
            search_steps=first.search_steps,
            taus=list(first.taus),
            objective=objective,
            timesteps=list(first.timesteps),
            settings=settings,
        )
    info = {
        "tau_star": pooled.tau_star,
        "step_index": pooled.step_index,
        "search_steps": pooled.search_steps,
        "source": "cached" if all(c for _, c in found.values()) else "searched",
        "seconds": round(time.perf_counter() - t0, 2),
        "rule": _RULE if len(ordered) > 1 else "argmin of J(tau) for the pair",
        "attribute": attribute,
        "pairs": per_pair,
        "settings": {k: first.settings.get(k) for k in _SETTINGS},
    }
    return pooled, info


def describe_tau(info: dict[str, Any]) -> str:
    """One line for :func:`resolve_tau`'s ``info``: where τ* came from, its step on the search schedule, the pairs.

    Example:
        >>> describe_tau({"tau_star": 480, "step_index": 52, "search_steps": 100, "source": "searched",
        ...               "seconds": 12.34, "attribute": "tone", "pairs": {"light->dark": {}}})
        'searched tau* = 480 (step 52 of 100 search steps) for tone light->dark in 12.3 s'
    """
    pairs = ", ".join(info["pairs"])
    what = f"tau* = {info['tau_star']} (step {info['step_index']} of {info['search_steps']} search steps)"
    pooled = f" (argmin of the mean J over {len(info['pairs'])} pairs)" if len(info["pairs"]) > 1 else ""
    if info["source"] == "cached":
        return f"using cached {what} for {info['attribute']} {pairs}{pooled}"
    return f"searched {what} for {info['attribute']} {pairs}{pooled} in {info['seconds']:.1f} s"


def plot_tau(result: TauResult, path: str | os.PathLike[str]) -> Path:
    """A PNG of J(τ) with τ* marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.settings
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(result.taus, result.objective, marker="o", markersize=2, lw=1.2)
    ax.axvline(
        result.tau_star,
        color="C3",
        ls="--",
        lw=1.2,
        label=f"τ* = {result.tau_star} (step {result.step_index} of {result.search_steps})",
    )
    ax.set_xlabel("τ (training timesteps; switch when t < τ)")
    ax.set_ylabel("J(τ) = ‖After − Before‖")
    ax.set_title(
        f"τ search: {s.get('attribute')} {s.get('source')} → {s.get('target')} "
        f"(DDIM {result.search_steps} search steps, w = {s['guidance_scale']:g})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out

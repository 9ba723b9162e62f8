"""`fairsample tau`: find the attribute-switching time τ* of a model (J(τ) curve as JSON + PNG)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fairsample.cli import CacheDirOpt, Format, FormatOpt, _emit, app, handle_errors


@app.command("tau")
@handle_errors
def tau_cmd(
    attribute: Annotated[str, typer.Option(help="Sensitive attribute to switch, e.g. tone.")],
    source: Annotated[str, typer.Option("--from", help="Initial value s0, e.g. light.")],
    target: Annotated[str, typer.Option("--to", help="Switched value s1, e.g. dark.")],
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: the embedded model).")] = None,
    n_per_label: Annotated[int, typer.Option(min=1, help="Trajectory pairs per label.")] = 4,
    steps: Annotated[int | None, typer.Option(min=2, help="DDIM steps (default: the bundle's).")] = None,
    guidance_scale: Annotated[float | None, typer.Option(min=0.0, help="CFG w (default: the bundle's).")] = None,
    grid: Annotated[int, typer.Option(min=1, help="τ grid spacing in training timesteps.")] = 10,
    norm: Annotated[str, typer.Option(help="official (over the batch) or per_sample.")] = "official",
    weighting: Annotated[str, typer.Option(help="riemann (β·Δt per step) or official (β per step).")] = "riemann",
    seed: Annotated[int, typer.Option(min=0, help="First seed of the initial latents.")] = 0,
    backend: Annotated[str, typer.Option(help="Engine backend: torch, onnxruntime, tensorrt.")] = "torch",
    output_dir: Annotated[Path | None, typer.Option(help="Write tau.json and tau.png here.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute even if a cached result exists.")] = False,
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = Format.human,
) -> None:
    """Find τ* for attribute switching: two trajectories from the same noise, conditioned on s0 and s1.

    Example: fairsample tau --attribute tone --from light --to dark --output-dir out/tau --format json
    """
    from fairsample.engines import load_engine
    from fairsample.models.bundle import ModelBundle
    from fairsample.tau_search import find_tau, plot_tau

    bundle = ModelBundle.load(model) if model else ModelBundle.load_default()
    engine = load_engine(bundle, backend, **({"cache_dir": cache_dir} if backend != "torch" else {}))
    if fmt is Format.human:
        print(f"τ search on {bundle.bundle_id} ({backend}): {attribute} {source} → {target}", file=sys.stderr)
    result, cached = find_tau(bundle, engine, attribute=attribute, source=source, target=target,
                              n_per_label=n_per_label, steps=steps, guidance_scale=guidance_scale, grid=grid,
                              norm=norm, weighting=weighting, seed=seed, use_cache=not no_cache,
                              cache_dir=cache_dir.parent / "tau" if cache_dir else None)  # fmt: skip
    doc = {"tau_star": result.tau_star, "cached": cached, "model": bundle.bundle_id, **result.to_dict()}
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "tau.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        doc["plot"] = str(plot_tau(result, output_dir / "tau.png"))
    curve = ", ".join(f"{t}:{j:.3g}" for t, j in zip(result.taus, result.objective, strict=True))
    _emit(fmt, doc, lambda: f"tau* = {result.tau_star} ({'cached' if cached else 'computed'}); J(tau) = {curve}")

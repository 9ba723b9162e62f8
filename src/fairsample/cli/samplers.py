"""`fairsample tau` (attribute-switching time τ*, J(τ) as JSON + PNG) and `fairsample tune-perturbation` (per-group
offsets of the fairdiffusion_perturbed sampler, GP-UCB against a per-group KID-gap objective on the validation split,
kept only if they beat zero offsets on held-out seed sets)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fairsample.cli.common import (
    BackendOpt,
    CacheDirOpt,
    DatasetOptions,
    DropUnknownOpt,
    Format,
    FormatOpt,
    GroupColOpt,
    LabelColOpt,
    PatientColOpt,
    PresetOpt,
    _emit,
    app,
    check_folder,
    checked_backend,
    handle_errors,
)


@app.command("tau")
@handle_errors
def tau_cmd(
    attribute: Annotated[str, typer.Option(help="Sensitive attribute to switch, e.g. tone.")],
    source: Annotated[str, typer.Option("--from", help="Initial value s0, e.g. light.")],
    target: Annotated[str, typer.Option("--to", help="Switched value s1, e.g. dark.")],
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: the embedded model).")] = None,
    n_per_label: Annotated[int, typer.Option(min=1, help="Trajectory pairs per label.")] = 4,
    search_steps: Annotated[
        int, typer.Option(min=2, help="DDIM steps of the search schedule (>= 100; the notebook used 1000).")
    ] = 100,
    allow_coarse: Annotated[
        bool, typer.Option("--allow-coarse", help="Allow --search-steps below 100 (smoke tests: J is then coarse).")
    ] = False,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Sampling steps to map tau* onto (default: the bundle's).")
    ] = None,
    guidance_scale: Annotated[float | None, typer.Option(min=0.0, help="CFG w (default: the bundle's).")] = None,
    grid: Annotated[
        int | None, typer.Option(min=1, help="τ grid spacing in training timesteps (default: the search spacing).")
    ] = None,
    norm: Annotated[str, typer.Option(help="official (over the batch) or per_sample.")] = "official",
    weighting: Annotated[str, typer.Option(help="riemann (β·Δt per step) or official (β per step).")] = "riemann",
    seed: Annotated[int, typer.Option(min=0, help="First seed of the initial latents.")] = 0,
    backend: BackendOpt = None,
    output_dir: Annotated[Path | None, typer.Option(help="Write tau.json and tau.png here.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute even if a cached result exists.")] = False,
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = Format.human,
) -> None:
    """Find τ* for attribute switching: two trajectories from the same noise, conditioned on s0 and s1, on a fine
    search schedule; prints τ*, its step on the search schedule and the step it maps to on the sampling schedule.

    Example: fairsample tau --attribute tone --from light --to dark --output-dir out/tau --format json
    """
    from fairsample.cli.common import check_model_path, open_model_option

    backend = checked_backend(backend)
    check_model_path(model)
    from fairsample.engines import load_engine
    from fairsample.samplers.schedulers import make_scheduler
    from fairsample.samplers.switch import switch_step
    from fairsample.samplers.tau import check_search
    from fairsample.samplers.tau_search import plot_tau, resolve_tau

    bundle = open_model_option(model)
    num_t = int(bundle.scheduler.config["num_train_timesteps"])
    check_search(num_t, search_steps, grid, norm, weighting, allow_coarse)  # before the engine loads
    engine = load_engine(bundle, backend, **({"cache_dir": cache_dir} if backend != "torch" else {}))
    if fmt is Format.human:
        print(f"τ search on {bundle.bundle_id} ({backend}): {attribute} {source} → {target}", file=sys.stderr)
    say = None if fmt is Format.json else (lambda line: print(line, file=sys.stderr, flush=True))
    result, info = resolve_tau(
        bundle,
        engine,
        attribute=attribute,
        pairs=[(source, target)],
        progress=say,
        n_per_label=n_per_label,
        search_steps=search_steps,
        allow_coarse=allow_coarse,
        guidance_scale=guidance_scale,
        grid=grid,
        norm=norm,
        weighting=weighting,
        seed=seed,
        use_cache=not no_cache,
        cache_dir=cache_dir.parent / "tau" if cache_dir else None,
    )
    defaults = bundle.sampling_defaults()
    scheduler, n = str(defaults.get("scheduler", "ddim")), int(steps or defaults.get("steps", 50))
    k = switch_step(result.tau_star, make_scheduler(scheduler, bundle.scheduler.config), n)
    cached = info["source"] == "cached"
    doc = {
        "tau_star": result.tau_star,
        "step_index": result.step_index,
        "search_steps": result.search_steps,
        "cached": cached,
        "model": bundle.bundle_id,
        "sampling": {"scheduler": scheduler, "steps": n, "switch_step": k},
        **result.to_dict(),
    }
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "tau.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        doc["plot"] = str(plot_tau(result, output_dir / "tau.png"))
    curve = ", ".join(f"{t}:{j:.3g}" for t, j in zip(result.taus, result.objective, strict=True))
    _emit(
        fmt,
        doc,
        lambda: (
            f"tau* = {result.tau_star}: step {result.step_index} of {result.search_steps} search "
            f"steps ({'cached' if cached else 'computed'}); {scheduler} {n} sampling steps switch "
            f"at step {k}; J(tau) = {curve}"
        ),
    )


@app.command("tune-perturbation")
@handle_errors
def tune_perturbation_cmd(
    data: Annotated[Path, typer.Option(help="Real dataset folder (its validation split is the reference).")],
    attribute: Annotated[str, typer.Option(help="Attribute whose groups get offsets, e.g. tone.")],
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: the embedded model).")] = None,
    output: Annotated[
        Path | None, typer.Option(help="perturbation.json to write (default: MODEL/perturbation.json).")
    ] = None,
    n_eval: Annotated[int, typer.Option(min=2, help="Generated images per group and evaluation.")] = 32,
    iterations: Annotated[int, typer.Option(min=0, help="GP-UCB proposals after the initial design.")] = 20,
    steps: Annotated[int | None, typer.Option(min=1, help="Sampling steps (default: the bundle's).")] = None,
    guidance_scale: Annotated[float | None, typer.Option(min=1.0, help="Base CFG w0 (default: the bundle's).")] = None,
    lam: Annotated[float, typer.Option("--lambda", min=0.0, help="Weight of the between-group KID range.")] = 1.0,
    held_out_sets: Annotated[
        int, typer.Option(min=2, help="Fresh seed sets on which the tuned offsets must beat zero offsets.")
    ] = 5,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the evaluation images, design and BO.")] = 0,
    backend: Annotated[str, typer.Option(help="Engine backend: torch, onnxruntime.")] = "torch",
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Tune fairdiffusion_perturbed's per-group guidance and noise-temperature offsets (project-extension).

    Example: fairsample tune-perturbation --model runs/fbp --data demo --attribute tone --iterations 20
    """
    dataset = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown)
    check_folder(data, "--data")  # a bad path fails before the heavy imports
    from fairsample.cli.common import check_model_path, open_model_option

    check_model_path(model)
    from fairsample.engines import load_engine
    from fairsample.workflows.tune_perturbation import default_output, tune_perturbation

    target = output or default_output(model)
    if target is None:
        raise typer.BadParameter("the embedded model is read-only: pass --output PATH", param_hint="--output")
    real = dataset.load(data, flag="--data")
    bundle = open_model_option(model, dataset=real)
    engine = load_engine(bundle, backend)
    say = None if fmt is Format.json else (lambda line: print(line, file=sys.stderr, flush=True))
    result = tune_perturbation(
        bundle,
        engine,
        real,
        attribute=attribute,
        n_eval=n_eval,
        iterations=iterations,
        steps=steps,
        guidance_scale=guidance_scale,
        lam=lam,
        held_out_sets=held_out_sets,
        seed=seed,
        progress=say,
    )
    path = result.perturbation.save(target)
    doc = {
        "output": str(path),
        "kept": result.kept,
        "reason": result.reason,
        "held_out": result.held_out,
        "perturbation": result.perturbation.to_dict() | {"meta": {"kept": result.kept}},
    }
    _emit(fmt, doc, lambda: f"wrote {path}: {result.reason}")

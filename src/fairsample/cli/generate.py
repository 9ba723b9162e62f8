"""``fairsample generate``: a dataset folder of images per cell from any model path."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fairsample.cli.common import (
    BackendOpt,
    Format,
    FormatOpt,
    SamplerOpt,
    SamplerOptionOpt,
    SchedulerName,
    TemplateOpt,
    _emit,
    _print_json,
    app,
    check_model_path,
    checked_backend,
    handle_errors,
    open_model_option,
    parse_int_list,
    sample_config,
    say_backend,
)


# -- generate ------------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def generate(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder to write images + metadata.csv.")],
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model bundle, diffusers Stable Diffusion folder or .safetensors file (default: the embedded "
            "tone-digits model); an SD model needs --cells."
        ),
    ] = None,
    template: TemplateOpt = None,
    cells: Annotated[
        list[str] | None, typer.Option("--cells", help="Cell like tone=dark,label=3; repeat. Default: every cell.")
    ] = None,
    per_cell: Annotated[int | None, typer.Option(min=1, help="Images per cell (default 8).")] = None,
    balanced: Annotated[int | None, typer.Option(min=1, help="Total images, split evenly over the cells.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seed list like 0-99,200 (default 0, 1, 2, ...).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON config ([generate] table or top level).")] = None,
    sampler: SamplerOpt = None,
    sampler_option: SamplerOptionOpt = None,
    scheduler: Annotated[SchedulerName | None, typer.Option(help="Inference scheduler.")] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Inference steps (default: the model's recommended value, else 50).")
    ] = None,
    guidance_scale: Annotated[
        float | None, typer.Option(min=0.0, help="CFG scale w (1 = none; default: the model's recommended value).")
    ] = None,
    guidance_rescale: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Guidance rescale phi for over-guided v-prediction models (0 = off)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per engine batch (default 32).")] = None,
    backend: BackendOpt = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (tensorrt default: cuda if present).")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="tensorrt: fail instead of rebuilding or falling back to onnxruntime.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a folder holding something else.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and plan, then exit.")] = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Generate a set of images (a dataset folder) with a model bundle.

    Re-running the same command after an interruption generates only the missing images.

    Example: fairsample generate --cells tone=dark,label=3 --per-cell 16 --seeds 0-15 --output-dir out --format json
    """
    # arguments that need no model are checked before the heavy imports (diffusers alone takes seconds to import)
    if per_cell is not None and balanced is not None:
        raise typer.BadParameter("give either --per-cell or --balanced, not both", param_hint="--per-cell/--balanced")
    seed_list = parse_int_list(seeds) if seeds else None
    if backend is not None:
        checked_backend(backend, allow_auto=True)
        if strict and backend != "tensorrt":
            raise typer.BadParameter("--strict only applies to --backend tensorrt", param_hint="--strict")
    check_model_path(model)

    from fairsample.generation.pipeline import FairSamplePipeline, GenerationPlan

    bundle = open_model_option(model, device=device or "cpu", cells=cells, template=template)
    cfg = sample_config(
        bundle,
        config,
        sampler=sampler,
        sampler_option=sampler_option,
        scheduler=scheduler,
        steps=steps,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        batch_size=batch_size,
        backend=backend,
        device=device,
    )
    cell_list = [bundle.parse_cell(c) for c in cells] if cells else bundle.cells()
    if balanced is not None:
        plan = GenerationPlan.balanced(cell_list, balanced, seed_list)
    elif per_cell is None and seed_list is not None:
        plan = GenerationPlan.balanced(cell_list, len(seed_list), seed_list)
    else:
        plan = GenerationPlan.per_cell(cell_list, per_cell or 8, seed_list)
    label = bundle.label_name
    summary_plan = {c.to_text(label): n for c, n in plan.counts().items()}
    if dry_run:
        from fairsample.models.sd_import import cell_prompts

        prompts = cell_prompts(bundle, list(plan.counts()))
        _print_json(
            {
                "config": cfg.to_dict(),
                "model": bundle.bundle_id,
                "n_images": len(plan),
                "plan": summary_plan,
                **({"template": bundle.conditioner.template, "prompts": prompts} if prompts else {}),
            }
        )
        return
    if cfg.backend == "tensorrt" and device is None and cfg.device == "cpu":
        import dataclasses

        import torch

        if torch.cuda.is_available():  # TensorRT runs on a GPU; without one the engine falls back (one line)
            cfg = dataclasses.replace(cfg, device="cuda")
    engine_options: dict[str, Any] = {"strict": True} if strict else {}
    if strict and cfg.backend != "tensorrt":
        raise typer.BadParameter("--strict only applies to --backend tensorrt", param_hint="--strict")
    t_engine = time.perf_counter()
    # auto: no --device lets it pick a GPU; the resolved backend goes into cfg, so a resumed run checks against it
    pipe_device = device if cfg.backend == "auto" else cfg.device
    pipe = FairSamplePipeline(bundle, backend=cfg.backend, device=pipe_device, engine_options=engine_options)
    say_backend(pipe, time.perf_counter() - t_engine)
    cfg = cfg.replace(backend=pipe.backend_choice.backend, device=str(pipe.device))
    if fmt is Format.human:
        print(f"generating {len(plan)} images over {len(summary_plan)} cells into {output_dir}", file=sys.stderr)
    result = pipe.generate_to_folder(output_dir, plan, cfg, overwrite=overwrite, progress=fmt is Format.human)
    doc = {
        "output_dir": str(result.output_dir),
        "n_images": result.n_images,
        "n_generated": result.n_generated,
        "seconds": round(result.seconds, 2),
        "model": bundle.bundle_id,
        "config": cfg.to_dict(),
        "plan": summary_plan,
        "files": result.files,
    }
    _emit(
        fmt,
        doc,
        lambda: (
            f"wrote {result.n_images} images to {result.output_dir} ({result.n_generated} generated now, "
            f"{result.seconds:.1f} s); metadata: {result.output_dir}/metadata.csv"
        ),
    )

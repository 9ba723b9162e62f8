"""`fairsample augment`: plan and generate the synthetic images that balance a real dataset (METHODS.md §3.7).

The plan (cells × real / synthetic / merged) is printed to stderr before generating (``--format human``) or included
in the JSON document; ``--dry-run`` prints only the plan. Generation is :meth:`FairSamplePipeline.generate_to_folder`:
resumable (re-run the same command), and sharded automatically under ``accelerate launch`` / ``torchrun``.
"""

from __future__ import annotations

import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from fairsample.cli.common import (
    BackendOpt,
    DatasetOptions,
    DropUnknownOpt,
    Format,
    FormatOpt,
    GroupColOpt,
    LabelColOpt,
    PatientColOpt,
    PresetOpt,
    SamplerOpt,
    SamplerOptionOpt,
    SchedulerName,
    _emit,
    app,
    check_folder,
    checked_backend,
    handle_errors,
    parse_int_list,
    sample_config,
    say_backend,
)


class Within(StrEnum):
    fill = "fill"
    equal = "equal"


class SplitName(StrEnum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


@app.command("augment")
@handle_errors
def augment_cmd(
    data: Annotated[Path, typer.Argument(help="Real dataset folder (metadata.csv + images) to balance.")],
    total: Annotated[int, typer.Option(min=1, help="Synthetic images to generate (exactly this many).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the synthetic images.")],
    target: Annotated[
        str,
        typer.Option(
            help="balanced (equal merged cells, water-filling) or proportions:light=0.3,medium=0.2,dark=0.5 "
            "(merged shares of --attribute)."
        ),
    ] = "balanced",
    attribute: Annotated[
        str | None, typer.Option(help="Attribute of the proportions (default: the first group column).")
    ] = None,
    within: Annotated[
        Within, typer.Option(help="Proportions: fill (equal merged labels within a value) or equal (equal m).")
    ] = Within.fill,
    cells: Annotated[
        list[str] | None, typer.Option("--cells", help="Plan over these cells only, e.g. tone=dark,label=3; repeat.")
    ] = None,
    split: Annotated[
        SplitName, typer.Option(help="Real rows counted: the train split (as `train`/`evaluate` use it) or all.")
    ] = SplitName.train,
    split_seed: Annotated[int, typer.Option(min=0, help="Seed of the deterministic split (no split column).")] = 0,
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: the embedded tone-digits model).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seed list like 0-99,200 (default 0, 1, 2, ...).")] = None,
    sampler: SamplerOpt = None,
    sampler_option: SamplerOptionOpt = None,
    scheduler: Annotated[SchedulerName | None, typer.Option(help="Inference scheduler.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Inference steps (default: the model's).")] = None,
    guidance_scale: Annotated[float | None, typer.Option(min=0.0, help="CFG scale w (1 = none).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per engine batch.")] = None,
    backend: BackendOpt = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a folder holding something else.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and exit (nothing is generated).")
    ] = False,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Generate the synthetic images that make real + synthetic balanced (imbalance-aware augmentation).

    Example: fairsample augment demo/ --total 3000 --target proportions:light=0.3,medium=0.2,dark=0.5 -o aug/
    """
    dataset = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown)
    check_folder(data)  # a bad path fails before the heavy imports
    checked_backend(backend, default=None, allow_auto=True)
    from fairsample.cli.common import check_model_path

    check_model_path(model)
    from fairsample.data.splits import split_indices
    from fairsample.generation.augment import augment, augmentation_plan, generation_plan, parse_target
    from fairsample.generation.pipeline import FairSamplePipeline

    goal = parse_target(target)
    ds = dataset.load(data)
    if split is not SplitName.all:
        ds = ds.subset(split_indices(ds, seed=split_seed)[split.value])
    from fairsample.cli.common import open_model_option

    bundle = open_model_option(model, device=device or "cpu", dataset=ds)
    cell_list = None
    if cells:
        from fairsample.data.schema import parse_cell

        cell_list = [parse_cell(c, ds.spec.groups, ds.spec.label) for c in cells]
    plan = augmentation_plan(ds, target=goal, total=total, attribute=attribute, cells=cell_list, within=within.value)
    seed_list = parse_int_list(seeds) if seeds else None
    generation_plan(plan, bundle, seed_list)  # every cell that needs images must be one the model knows
    goal_text = (
        "balanced"
        if isinstance(plan.target, str)
        else f"{plan.attribute} " + ":".join(f"{v}={p:g}" for v, p in plan.target.items())
    )
    header = f"{data} ({split.value} split: {plan.n_real} real images) + {plan.total} synthetic, target {goal_text}"
    plan_doc = {"data": str(data), "split": split.value, "model": bundle.bundle_id, **plan.to_dict()}
    if dry_run:
        _emit(fmt, plan_doc, lambda: f"{header}\n{plan.format_table()}")
        return

    cfg = sample_config(
        bundle,
        None,
        sampler=sampler,
        sampler_option=sampler_option,
        scheduler=scheduler,
        steps=steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
        backend=backend,
        device=device,
    )
    main = _is_main_process()
    if fmt is Format.human and main:
        print(f"{header}\n{plan.format_table()}", file=sys.stderr)
        print(f"generating {plan.total} images into {output_dir}", file=sys.stderr)
    t_engine = time.perf_counter()
    pipe = FairSamplePipeline(bundle, backend=cfg.backend, device=device if cfg.backend == "auto" else cfg.device)
    if main:
        say_backend(pipe, time.perf_counter() - t_engine)
    cfg = cfg.replace(backend=pipe.backend_choice.backend, device=str(pipe.device))
    result = augment(
        pipe,
        plan,
        output_dir,
        cfg,
        seeds=seed_list,
        overwrite=overwrite,
        progress=fmt is Format.human,
        provenance={"data": str(data), "split": split.value},
    )
    if not main:
        return  # one result document per launch, from the main process
    doc: dict[str, Any] = {
        "output_dir": str(result.output_dir),
        "n_images": result.n_images,
        "n_generated": result.n_generated,
        "seconds": round(result.seconds, 2),
        "config": cfg.to_dict(),
        "plan": plan_doc,
        "files": result.files,
    }
    _emit(
        fmt,
        doc,
        lambda: (
            f"wrote {result.n_images} synthetic images to {result.output_dir} ({result.n_generated} generated now, "
            f"{result.seconds:.1f} s); merged with {plan.n_real} real images: {plan.n_merged}"
        ),
    )

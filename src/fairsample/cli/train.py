"""``fairsample train``: train or fine-tune a U-Net on a dataset folder (a bundle, an SD folder or nothing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fairsample.cli.common import (
    DatasetOptions,
    DropUnknownOpt,
    Format,
    FormatOpt,
    GroupColOpt,
    LabelColOpt,
    MixedPrecision,
    PatientColOpt,
    PredictionType,
    PresetOpt,
    TemplateOpt,
    _emit,
    _merged_options,
    _print_json,
    app,
    check_folder,
    handle_errors,
)


# -- train ---------------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def train(
    data: Annotated[Path, typer.Argument(help="Dataset folder.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Model bundle folder to write.")],
    config: Annotated[Path | None, typer.Option(help="TOML/JSON config ([train] table or top level).")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Method preset: vanilla, cbrs, sqrs, cbdm, fairskin-c, fairskin-s, fairgen, fairdiffusion, "
            "fairdiffusion-improved, fbp-random, dpo."
        ),
    ] = None,
    method_option: Annotated[
        list[str] | None,
        typer.Option("--method-option", help="A preset option key=value (JSON value or text); repeat."),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps.", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step per process.", min=1)] = None,
    gradient_accumulation_steps: Annotated[int | None, typer.Option(min=1, help="Micro-batches per step.")] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0, help="Peak AdamW learning rate.")] = None,
    mixed_precision: Annotated[MixedPrecision | None, typer.Option(help="no, fp16 (CUDA) or bf16.")] = None,
    prediction_type: Annotated[PredictionType | None, typer.Option(help="epsilon or v_prediction.")] = None,
    ema: Annotated[bool | None, typer.Option("--ema/--no-ema", help="Keep and export EMA weights.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(min=0, help="Checkpoint every N steps (0: never).")] = None,
    architecture: Annotated[str | None, typer.Option(help="Built-in U-Net: tiny-32, small-32, test.")] = None,
    image_size: Annotated[int | None, typer.Option(min=8, help="Training resolution.")] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Fine-tune this bundle, diffusers Stable Diffusion folder or .safetensors file instead of a "
            "new model; resolution, prediction type (and for SD its lr recipe) default to the base's."
        ),
    ] = None,
    template: TemplateOpt = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Recompute U-Net activations (less GPU memory, slower).")
    ] = False,
    split: Annotated[str | None, typer.Option(help="Train on this split: train, val, test or all.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="The one seed of the run.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --output-dir.")] = False,
    guard: Annotated[
        bool | None,
        typer.Option(
            "--guard/--no-guard",
            help="After training, check that samples still show their label and attributes (vs --init-from or the "
            "real data) and pick the recommended guidance on validation seeds (default: on; FAIRSAMPLE_GUARD=0 "
            "turns the default off).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")] = False,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Train a diffusion U-Net on a dataset folder and write a model bundle.

    Example: fairsample train demo/ --output-dir runs/m --max-steps 200 --seed 0
    """
    dataset = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown)
    check_folder(data)  # a bad path fails before the heavy imports
    from fairsample.models.source import finetune_defaults, inspect_model

    source = inspect_model(init_from, "--init-from") if init_from else None  # JSON only: fast, before torch
    from fairsample.core.config import TrainConfig, resolve
    from fairsample.data.folder import format_count_table
    from fairsample.train.loop import train as run_train
    from fairsample.train.presets import get_method

    options = _merged_options(config, "train", "method_options", method_option, "--method-option")
    cfg = resolve(
        TrainConfig,
        file=config,
        section="train",
        base=finetune_defaults(source) if source else None,
        template=template,
        gradient_checkpointing=gradient_checkpointing or None,
        method=method,
        method_options=options,
        max_steps=max_steps,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        mixed_precision=mixed_precision.value if mixed_precision else None,
        prediction_type=prediction_type.value if prediction_type else None,
        use_ema=ema,
        checkpoint_every=checkpoint_every,
        architecture=architecture,
        image_size=image_size,
        init_from=str(init_from) if init_from else None,
        split=split,
        seed=seed,
        device=device,
        guard=guard,
    )
    train_method = get_method(cfg.method, cfg.method_options)  # bad names/options fail here, before any data loads
    train_method.check_config(cfg)
    ds = None
    if source is not None and source.kind != "bundle":  # SD base: the prompt template is part of the config
        from fairsample.models.conditioners import default_template

        ds = dataset.load(data)
        cfg = cfg.replace(template=cfg.template or default_template(list(ds.spec.groups), ds.spec.label))
    if dry_run:
        doc = {**cfg.to_dict(), "method_config": train_method.config()}
        if source is not None:
            doc["base_model"] = {**source.describe(), "defaults_from_base": finetune_defaults(source)}
        if ds is not None and cfg.template:
            doc["prompts"] = {
                c.to_text(ds.spec.label): cfg.template.format(**c.as_dict(ds.spec.label))
                for c in sorted(set(ds.cell_ids()))
            }
        _print_json(doc)
        return
    ds = ds if ds is not None else dataset.load(data)
    if fmt is Format.human:
        print(format_count_table(ds), file=sys.stderr)
    result = run_train(ds, output_dir, cfg, method=train_method, resume=resume, progress=fmt is Format.human)
    bundle_cfg = json.loads((result.bundle_path / "fairsample_config.json").read_text(encoding="utf-8"))
    guard_doc = bundle_cfg.get("conditioning_guard") or {}
    doc = {
        "bundle": str(result.bundle_path),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_loss": result.final_loss,
        "log": str(result.log_path),
        "seconds": round(result.seconds, 2),
        "conditioning_guard": guard_doc.get("flag"),
        "sampling": bundle_cfg.get("sampling"),
    }
    _emit(
        fmt,
        doc,
        lambda: (
            f"wrote model bundle {result.bundle_path} ({result.steps} steps, loss {result.final_loss:.4f}; "
            f"conditioning guard: {guard_doc.get('flag')}, recommended sampling: {bundle_cfg.get('sampling')})"
        ),
    )

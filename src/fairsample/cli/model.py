"""``fairsample model import``: a Stable Diffusion folder (or single file) → a fairsample bundle, explicitly.

Every ``--model`` / ``--init-from`` already accepts an SD folder and does this in memory; ``model import`` writes the
bundle once (with ``model_index.json``, so diffusers can still open it) and records its source, template and cells.
Registered on :data:`fairsample.cli.app` by the import at the end of ``fairsample/cli.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fairsample.cli.common import Format, FormatOpt, TemplateOpt, _emit, app, check_model_path, handle_errors
from fairsample.cli.dataset import (
    DatasetOptions,
    DropUnknownOpt,
    GroupColOpt,
    LabelColOpt,
    PatientColOpt,
    PresetOpt,
    check_folder,
)

model_app = typer.Typer(no_args_is_help=True, help="Bring your own model: import a Stable Diffusion folder.")
app.add_typer(model_app, name="model")


@model_app.command("import")
@handle_errors
def model_import(
    source: Annotated[
        Path, typer.Argument(help="Diffusers Stable Diffusion folder (model_index.json) or .safetensors.")
    ],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Bundle folder to write.")],
    data: Annotated[
        Path | None, typer.Option(help="Dataset folder whose cells (attribute values x labels) the bundle knows.")
    ] = None,
    cells: Annotated[
        list[str] | None, typer.Option("--cells", help="Cells instead of --data, like tone=dark,label=1; repeat.")
    ] = None,
    template: TemplateOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle in --output-dir.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the template and each cell's prompt, then exit.")
    ] = False,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Import a Stable Diffusion model as a fairsample bundle (its text encoder over a prompt template per cell).

    The template must name every cell field; every cell's prompt must fit the tokenizer without truncation and map
    to distinct tokens, or the import fails naming the cells.

    Example: fairsample model import sd15/ --data derm/ --template "dermoscopy, {tone} skin, {label}" -o runs/sd
    """
    dataset = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown)
    check_model_path(source, "SOURCE")
    if (data is None) == (not cells):
        raise typer.BadParameter("give the cells with exactly one of --data DATASET or --cells", param_hint="--data")
    if data is not None:
        check_folder(data, "--data")
    if (output_dir / "fairsample_config.json").exists() and not overwrite:
        raise typer.BadParameter(f"{output_dir} already holds a bundle; pass --overwrite", param_hint="--output-dir")
    from fairsample.models.sd_import import cell_prompts, open_model

    vocab = {}
    if data is not None:
        ds = dataset.load(data, flag="--data")
        vocab = {"attributes": ds.attribute_values(), "labels": ds.label_values(), "label_name": ds.spec.label}
    bundle = open_model(source, flag="SOURCE", cells=cells, template=template, **vocab)  # type: ignore[arg-type]
    if bundle.config.get("source", {}).get("kind") not in ("sd_pipeline", "single_file"):
        raise typer.BadParameter(
            f"{source} is already a fairsample bundle; use it as --model directly", param_hint="SOURCE"
        )
    prompts = cell_prompts(bundle, bundle.cells())
    doc = {
        "source": bundle.config["source"],
        "template": bundle.config["template"],
        "prompts": prompts,
        "prediction_type": bundle.prediction_type,
        "image_shape": list(bundle.image_shape),
    }
    if dry_run:
        _emit(fmt, doc, lambda: "\n".join(f"{k}: {v}" for k, v in prompts.items()))
        return
    bundle.config.pop("path", None)
    bundle.save(output_dir)
    doc["bundle"] = str(output_dir)
    _emit(
        fmt,
        doc,
        lambda: (
            f"wrote bundle {output_dir} from {source} ({len(prompts)} cells, "
            f"{bundle.prediction_type}, images {bundle.image_shape[1]}x{bundle.image_shape[2]}); "
            f"template {bundle.config['template']!r}"
        ),
    )

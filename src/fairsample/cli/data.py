"""``fairsample data check|demo``: validate (and decode) a dataset folder; write the demo dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fairsample.cli.common import (
    DatasetOptions,
    DemoSource,
    DropUnknownOpt,
    Format,
    FormatOpt,
    GroupColOpt,
    LabelColOpt,
    PatientColOpt,
    PresetOpt,
    _emit,
    data_app,
    handle_errors,
)


# -- data ----------------------------------------------------------------------------------------------------------
@data_app.command("check")
@handle_errors
def data_check(
    root: Annotated[Path, typer.Argument(help="Dataset folder with metadata.csv/.jsonl (+ fairsample.toml).")],
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="Read image headers only (no full decode): fast, misses truncated files.")
    ] = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Validate a dataset folder, decode every image, and print the per-group × label count table.

    Example: fairsample data check my_study --group-col sex --group-col race --format json
    """
    from fairsample.data.decode_check import check_decodable
    from fairsample.data.folder import check_report, format_count_table

    ds = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown).load(root)
    decoded = check_decodable(ds, quick=quick, progress=fmt is Format.human)
    header = (
        f"{root}: {len(ds)} images, label={ds.spec.label!r}, groups={list(ds.spec.groups)}, "
        f"all {decoded.n_checked} readable ({decoded.mode} decode check)"
    )
    _emit(fmt, {**check_report(ds), "decode": decoded.to_dict()}, lambda: f"{header}\n{format_count_table(ds)}")


@data_app.command("demo")
@handle_errors
def data_demo(
    out: Annotated[Path, typer.Argument(help="Folder to create.")],
    seed: Annotated[int, typer.Option(help="Seed of the whole dataset.", min=0)] = 0,
    source: Annotated[
        DemoSource, typer.Option(help="Digit source: auto (MNIST-5k if installed), mnist5k, digits.")
    ] = DemoSource.auto,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty folder.")] = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Write the tone-digits demo dataset (synthetic grouping; dark tone 5 %, harder) with its counterfactual test set
    (OUT/counterfactual: held-out digits in every tone) and the oracle's holdout pool (OUT/holdout).

    Example: fairsample data demo demo/ && fairsample data check demo/
    """
    from fairsample.data.demo import make_demo_dataset

    info_ = make_demo_dataset(out, seed=seed, source=source.value, overwrite=overwrite)
    n_holdout = sum(sum(v.values()) for v in (info_.holdout_counts or {}).values())
    doc = {
        "root": str(info_.root),
        "source": info_.source,
        "n_images": info_.n_images,
        "counts": info_.counts,
        "counterfactual": str(info_.counterfactual),
        "n_counterfactual": info_.n_counterfactual,
        "holdout": str(info_.holdout),
        "holdout_counts": info_.holdout_counts,
    }
    _emit(
        fmt,
        doc,
        lambda: (
            f"wrote {info_.n_images} images ({info_.source}) to {info_.root}, "
            f"{info_.n_counterfactual} to {info_.counterfactual} and {n_holdout} to {info_.holdout}"
        ),
    )

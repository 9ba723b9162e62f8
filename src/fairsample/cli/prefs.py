"""`fairsample prefs build`: automatic preference pairs — a proxy for physician preference (classifier confidence)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

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
    _emit,
    app,
    check_folder,
    checked_backend,
    handle_errors,
)

prefs_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Preference pairs for --method dpo|fairgen; `build` makes PROXY pairs (proxy: classifier confidence).",
)
app.add_typer(prefs_app, name="prefs")


class Scorer(StrEnum):
    cell = "cell"
    per_target = "per-target"


@prefs_app.command("build")
@handle_errors
def prefs_build(
    model: Annotated[Path, typer.Option(help="Model bundle that generates the candidates.")],
    data: Annotated[Path, typer.Option(help="Real dataset folder the scoring classifier is trained on.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Writes preferences.csv/.json, candidates/.")],
    per_cell: Annotated[int, typer.Option(min=1, help="Pairs per cell (K).")] = 4,
    candidates: Annotated[int, typer.Option(min=2, help="Candidate images per cell (N >= 2K).")] = 16,
    steps: Annotated[int, typer.Option(min=1, help="Sampling steps per candidate.")] = 20,
    cells: Annotated[
        list[str] | None, typer.Option("--cells", help="Cell like tone=dark,label=3; repeat. Default: every cell.")
    ] = None,
    scorer: Annotated[
        Scorer, typer.Option(help="cell: one classifier over cells; per-target: label x each attribute.")
    ] = Scorer.cell,
    classifier_epochs: Annotated[int, typer.Option(min=1, help="Epochs of each scoring classifier.")] = 8,
    guidance_scale: Annotated[float | None, typer.Option(min=0.0, help="CFG scale (default: bundle's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per engine batch.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Classifier seed and first candidate seed.")] = 0,
    backend: BackendOpt = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace OUT/candidates when it holds another generation.")] = False,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Build preference pairs automatically. PROXY for physician preference (proxy: classifier confidence).

    For each cell, generate N candidates, score them by a classifier trained on the real --data (its confidence in
    the requested cell), and pair the most confident (winner) with the least confident (loser). Writes
    OUT/preferences.csv (file_w,file_l + cell columns + conf_w,conf_l) and OUT/preferences.json with
    "source": "proxy: classifier confidence". These pairs are not clinical judgements.

    Example: fairsample prefs build --model runs/m --data demo/ -o prefs --per-cell 4 --candidates 16 --steps 20
    """
    dataset = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown)
    check_folder(data, "--data")  # a bad path fails before the heavy imports
    backend = checked_backend(backend)
    from fairsample.cli.common import check_model_path, open_model_option

    check_model_path(model)
    from fairsample.train.prefs_build import PROXY_SOURCE, build_preferences

    if candidates < 2 * per_cell:
        raise typer.BadParameter(
            f"--candidates {candidates} must be >= 2 x --per-cell ({2 * per_cell}) for disjoint winners and losers",
            param_hint="--candidates",
        )
    ds = dataset.load(data, flag="--data")
    bundle = open_model_option(model, device=device, dataset=ds)
    cell_list = [bundle.parse_cell(c) for c in cells] if cells else None
    say = None if fmt is not Format.human else (lambda line: print(line, file=sys.stderr, flush=True))
    result = build_preferences(
        bundle,
        ds,
        output_dir,
        per_cell=per_cell,
        candidates=candidates,
        steps=steps,
        cells=cell_list,
        scorer=scorer.value,
        classifier_epochs=classifier_epochs,
        guidance_scale=guidance_scale,  # type: ignore[arg-type]
        batch_size=batch_size,
        seed=seed,
        backend=backend,
        device=device,
        overwrite=overwrite,
        progress=fmt is Format.human,
        log=say,
    )
    doc = {
        "preferences": str(result.preferences),
        "summary": str(result.summary),
        "source": PROXY_SOURCE,
        "n_pairs": result.n_pairs,
        "n_candidates": result.n_candidates,
        "n_tied_dropped": result.doc["n_tied_dropped"],
        "scorer": result.doc["scorer"],
        "cells": result.doc["cells"],
        "seconds": round(result.seconds, 2),
    }
    _emit(
        fmt,
        doc,
        lambda: (
            f"wrote {result.n_pairs} preference pairs to {result.preferences} ({PROXY_SOURCE}; not physician "
            f"judgements); train with --method dpo --method-option preferences={result.preferences}"
        ),
    )

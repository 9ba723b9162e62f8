"""``fairsample study``: the fairness-method comparison grid (train → export → generate → evaluate), resumable.

A thin shell over :func:`fairsample.workflows.study.run_study`; registered on :data:`fairsample.cli.app` by the import
at the end
of ``fairsample/cli.py``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from fairsample.cli.common import (
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
    _print_json,
    app,
    check_folder,
    handle_errors,
)


class ProfileName(StrEnum):
    small = "small"
    full = "full"
    tiny = "tiny"


class StudyBackend(StrEnum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    torch = "torch"


def _human(doc: dict[str, Any]) -> str:
    """The rows' minority gap and gap closure on the primary view, and the written files."""
    from fairsample.workflows.study.report import fmt, primary_view

    res = doc["results"]
    view = primary_view(res)
    rows = [["row", "guard", "minority gap", "gap closure [95 % CI]"]]
    for r in res["rows"]:
        v = r["views"].get(view, {})
        gap = v.get("minority_gap") or {}
        clo = v.get("closure") or {}
        ci = clo.get("ci") or [None, None]
        closure = "n/a" if clo.get("value") is None else f"{fmt(clo['value'], 2)} [{fmt(ci[0], 2)}, {fmt(ci[1], 2)}]"
        rows.append([r["label"], r.get("guard") or "", fmt(gap.get("mean")), closure])
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = [
        f"{res['attribute']}: minority {res['minority']!r}, view {view!r} (means over generator and classifier seeds)"
    ]
    lines += [
        "  " + "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)])
        for r in rows
    ]
    lines.append(f"{len(doc['ran'])} cells computed, {len(doc['skipped'])} already complete, {doc['seconds']:.0f} s")
    lines.append(f"wrote {doc['markdown']}")
    lines.append(f"      {doc['results_json']}")
    return "\n".join(lines)


@app.command("study")
@handle_errors
def study_cmd(
    data: Annotated[Path, typer.Option("--data", help="Real dataset folder (metadata.csv + images).")],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Study folder S: cells/, results.json, RESULTS.md, plots/.")
    ],
    profile: Annotated[
        ProfileName,
        typer.Option(help="small (2-core CPU, about 2 h), full (GPU) or tiny (tests; meaningless numbers)."),
    ] = ProfileName.small,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--methods",
            help="Training methods (repeat or comma-separate): vanilla, cbrs, sqrs, cbdm, cbdm-keep, fairskin-s, "
            "fairdiffusion, fairgen. Default: all (tiny: vanilla, fairdiffusion).",
        ),
    ] = None,
    samplers: Annotated[
        list[str] | None,
        typer.Option(
            "--samplers",
            help="Samplers (repeat or comma-separate): conditional (every model), attribute_switch and "
            "fairdiffusion_perturbed (on the vanilla and fairdiffusion models). Default: all three.",
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Downstream classifier seeds 0..N-1 (default: the profile's).")
    ] = None,
    attribute: Annotated[
        str | None,
        typer.Option(help="Sensitive attribute compared (default: the first group column; alone, it is the group)."),
    ] = None,
    minority: Annotated[
        str | None,
        typer.Option(help="Minority value of the attribute (default: the value with the fewest training images)."),
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option(
            help="Base bundle every method is fine-tuned from (default: trained from scratch on the train "
            "split without the minority group)."
        ),
    ] = None,
    counterfactual: Annotated[
        Path | None,
        typer.Option(help="Attribute-balanced test set folder (default: DATA/counterfactual when present)."),
    ] = None,
    holdout: Annotated[
        Path | None,
        typer.Option(help="Real held-out images for the oracle row (default: DATA/holdout when present)."),
    ] = None,
    backend: Annotated[
        StudyBackend,
        typer.Option(help="Sampling engine: auto = onnxruntime on a CPU (exported once per model), torch on a GPU."),
    ] = StudyBackend.auto,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch and ONNX Runtime intra-op threads (default: the profile's torch threads, 1 on small and tiny; "
            "ONNX Runtime's default).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes running model chains in parallel (default: the profile's; 2 on small)."),
    ] = None,
    cache_dir: CacheDirOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the grid (cells in order) and exit.")] = False,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Does a fair method close the minority gap better than plain fine-tuning? Base → every method → sets → gap
    closure; resumable.

    A shared base (trained without the minority) is fine-tuned by every method with the same budget and several
    generator seeds; each model adds a synthetic set to the real training data; downstream classifiers are compared
    with real-only (Base) and real held-out data (oracle) on a counterfactual test set and the real test split.
    Every grid cell has its own folder under OUTPUT_DIR/cells with a completion marker written last: re-running the
    same command after a kill skips the completed cells and resumes the others. Writes OUTPUT_DIR/results.json and
    OUTPUT_DIR/RESULTS.md.

    Example: fairsample data demo demo && fairsample study --data demo --output-dir study --profile small
    """
    dataset = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown)
    if not dry_run:
        check_folder(data, "--data")  # a bad path fails before the heavy imports
    from fairsample.workflows.study import plan_study, run_study

    if dry_run:
        plan = plan_study(
            profile=profile.value,
            methods=methods,
            samplers=samplers,
            seeds=seeds,
            attribute=attribute or "(first group column)",
            base=None if base is None else str(base),
        )
        _print_json(plan.to_dict() | {"profile_settings": plan.profile.to_dict()})
        return
    t0 = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {line}", file=sys.stderr, flush=True)

    result = run_study(
        data,
        output_dir,
        **dataset.load_kwargs(),
        profile=profile.value,
        methods=methods,
        samplers=samplers,
        seeds=seeds,
        attribute=attribute,
        minority=minority,
        base=base,
        counterfactual=counterfactual,
        holdout=holdout,
        backend=backend.value,
        cache_dir=cache_dir,
        threads=threads,
        workers=workers,
        command=shlex.join(["fairsample", *sys.argv[1:]]),
        progress=None if fmt is Format.json else progress,
    )
    doc = {
        "output_dir": str(result.output_dir),
        "results_json": str(result.results_path),
        "markdown": str(result.markdown_path),
        "ran": result.ran,
        "skipped": result.skipped,
        "seconds": round(result.seconds, 2),
        "results": result.results,
    }
    if fmt is Format.json:
        print(
            json.dumps(
                {k: v for k, v in doc.items() if k != "results"} | {"rows": result.results["rows"]},
                indent=2,
                default=str,
            )
        )
        return
    _emit(fmt, doc, lambda: _human(doc))

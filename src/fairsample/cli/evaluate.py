"""``fairsample evaluate``: generative quality, attribute BER and downstream fairness of synthetic sets vs real data.

A thin shell over :func:`fairsample.evaluation.evaluate.evaluate`; registered on :data:`fairsample.cli.app` by the
import at
the end of ``fairsample/cli.py``.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from fairsample.cli.common import (
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
    handle_errors,
    parse_int_list,
)
from fairsample.core.errors import ConfigError
from fairsample.evaluation.evaluate import EvaluationSettings
from fairsample.evaluation.metric_info import legend
from fairsample.evaluation.metric_info import name as metric_name

_NAME_PATH_RE = re.compile(r"^([A-Za-z0-9._-]{1,40})=(.+)$")
_DUPLICATE_NAME = (
    "two --synthetic sets are named {name!r} ({first} and {second}); name them with NAME=PATH, "
    "e.g. --synthetic vanilla=out/v --synthetic fair=out/f (repeat one NAME for generator replicates)"
)
_DUPLICATE_PATH = "--synthetic {name}={path} is given twice; each replicate of {name!r} must be a different folder"
_BAD_MINORITY = (
    "--minority {value!r} must be VALUE (of the first attribute) or ATTRIBUTE=VALUE, e.g. --minority dark or "
    "--minority tone=dark; give at most one bare VALUE"
)
_BAD_REFERENCE = "--reference {value!r} is not a --synthetic name (names: {names}); pass one of them"
_NOT_A_FOLDER = "--{flag} {path} is not a folder; pass a dataset folder with metadata.csv"
_OUTPUT_NOT_EMPTY = "--output-dir {path} is not empty; pass --overwrite to replace it or choose a new folder"


class ProtocolName(StrEnum):
    real_only = "real_only"
    real_plus_synthetic = "real_plus_synthetic"
    synthetic_only = "synthetic_only"


def parse_synthetic(values: list[str]) -> dict[str, list[Path]]:
    """``--synthetic`` values → ``{name: [replicate folders]}``; a repeated NAME=PATH name adds a generator replicate.

    A value without ``NAME=`` is named after its folder; two such folders with the same name are an error (name them
    explicitly), and so is one folder given twice.

    Example:
        >>> parse_synthetic(["runs/vanilla", "fair=runs/x0", "fair=runs/x1"])
        {'vanilla': [PosixPath('runs/vanilla')], 'fair': [PosixPath('runs/x0'), PosixPath('runs/x1')]}
    """
    out: dict[str, list[Path]] = {}
    explicit: dict[str, bool] = {}
    for text in values:
        m = _NAME_PATH_RE.match(text)
        named = m is not None and not Path(text).exists()
        if named:
            assert m is not None
            name, path = m.group(1), Path(m.group(2))
        else:
            path = Path(text)
            name = path.resolve().name if path.name in ("", ".", "..") else path.name
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:40] or "synthetic"
        if name in out and not (named and explicit[name]):
            raise typer.BadParameter(
                _DUPLICATE_NAME.format(name=name, first=out[name][0], second=path), param_hint="--synthetic"
            )
        if any(p.resolve() == path.resolve() for p in out.get(name, [])):
            raise typer.BadParameter(_DUPLICATE_PATH.format(name=name, path=path), param_hint="--synthetic")
        out.setdefault(name, []).append(path)
        explicit[name] = named
    return out


def parse_minority(values: list[str] | None) -> str | dict[str, str] | None:
    """``--minority`` values → None, a bare value (first attribute) or ``{attribute: value}``.

    Example:
        >>> parse_minority(["dark"]), parse_minority(["tone=dark", "site=B"])
        ('dark', {'tone': 'dark', 'site': 'B'})
    """
    if not values:
        return None
    bare = [v for v in values if "=" not in v]
    pairs = [v.split("=", 1) for v in values if "=" in v]
    if len(bare) > 1 or (bare and pairs) or any(not a or not v for a, v in pairs) or any(not v for v in bare):
        raise typer.BadParameter(_BAD_MINORITY.format(value=" ".join(values)), param_hint="--minority")
    return bare[0] if bare else {a: v for a, v in pairs}


def _human(doc: dict[str, Any]) -> str:
    """A short summary table per section, then the written paths."""
    head = doc["headline"]
    attr = head["attribute"]
    gen_keys = ("fid", "kid", "fid_variance", "es_fid", "ber")
    lines = [f"generative ({attr}; DomainFeatures space; {legend(gen_keys)}):"]
    rows = [["set", *(metric_name(k) for k in gen_keys)]]
    for name, g in head["generative"].items():
        rows.append([name] + [_num(g[k]) for k in gen_keys])
    lines += _table(rows)
    view = "counterfactual set" if head["view"] == "counterfactual" else "real test split"
    lines.append(
        f"downstream fairness ({attr}; accuracy and gaps on the real test split, minority gap ({attr}="
        f"{head['minority']}) and gap closure on the {view}; mean over runs):"
    )
    fair_keys = ("accuracy", "dp_gap", "eopp_gap", "eodds_gap", "essp", "minority_gap")
    rows = [["row", *(metric_name(k) for k in fair_keys), f"{metric_name('gap_closure')} [CI]"]]
    for row_id, f in head["fairness"].items():
        ci = f.get("gap_closure_ci")
        closure = _num(f.get("gap_closure")) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")
        rows.append(
            [row_id] + [_num(f[k]) for k in fair_keys] + [closure if f.get("gap_closure") is not None or ci else "-"]
        )
    lines += _table(rows)
    files = doc["files"]
    lines.append(f"wrote {files['output_dir']} in {doc['seconds']:.0f} s:")
    lines += [f"  {files['markdown']}", f"  {files['html']}", f"  {files['json']}"]
    lines += [f"  {p}" for p in files["plots"].values()]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return [
        "  " + "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)])
        for r in rows
    ]


@app.command("evaluate")
@handle_errors
def evaluate(
    real: Annotated[Path, typer.Option("--real", help="Real dataset folder (metadata.csv + images).")],
    synthetic: Annotated[
        list[str],
        typer.Option(
            "--synthetic",
            help="Generated folder; repeat to compare sets side by side. NAME=PATH names a set (default: its "
            "folder); repeating a NAME adds generator replicates (e.g. vanilla=gen_s0 --synthetic vanilla=gen_s1).",
        ),
    ],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Report folder (report.json/.md/.html, plots/).")
    ],
    attribute: Annotated[
        list[str] | None,
        typer.Option("--attribute", help="Sensitive attribute column; repeat for several (default: every group)."),
    ] = None,
    counterfactual: Annotated[
        Path | None,
        typer.Option(
            help="Counterfactual test set folder (a content_id column pairs renderings of one content in every "
            "attribute value); every classifier also predicts it. Never used for training or selection."
        ),
    ] = None,
    oracle: Annotated[
        Path | None,
        typer.Option(help="Real held-out images folder: adds the oracle row (real train split + all of them)."),
    ] = None,
    minority: Annotated[
        list[str] | None,
        typer.Option(
            help="Minority group: VALUE of the first attribute or ATTRIBUTE=VALUE (default: the value with the fewest "
            "real training images)."
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="A --synthetic NAME every other row's gap closure is compared with (e.g. vanilla)."),
    ] = None,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    protocol: Annotated[
        list[ProtocolName] | None,
        typer.Option(
            "--protocol",
            help="Downstream protocol; repeat (default: real_only and real_plus_synthetic).",
            case_sensitive=False,
        ),
    ] = None,
    seeds: Annotated[
        str, typer.Option(help="Downstream training seeds, like 0-2 or 0,5,9 (at least 3 for mean ± sd).")
    ] = "0-2",
    epochs: Annotated[
        int, typer.Option(min=1, help="Downstream classifier epochs per seed.")
    ] = EvaluationSettings.epochs,
    size: Annotated[int, typer.Option(min=8, help="Square side every image is loaded at.")] = EvaluationSettings.size,
    k: Annotated[int, typer.Option(min=1, help="Size-matched FID draws per group.")] = EvaluationSettings.k,
    n_resamples: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples per fairness report (0 = no CIs).")
    ] = EvaluationSettings.n_resamples,
    feature_epochs: Annotated[
        int | None, typer.Option(min=1, help="Feature-module epochs (default: at least 8 epochs and 300 steps).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of features, FID draws, split, bootstrap, BER.")] = 0,
    allow_few_seeds: Annotated[bool, typer.Option(help="Accept 1 or 2 seeds (sd is then n/a).")] = False,
    closure_resamples: Annotated[
        int, typer.Option(min=1, help="Bootstrap resamples of each gap-closure CI.")
    ] = EvaluationSettings.closure_resamples,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --output-dir.")] = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Evaluate synthetic sets against real data: FID/KID per group, BER, downstream fairness; writes a report.

    The dataset options (--label-col, --group-col, --patient-col, --preset, --drop-unknown) describe --real; every
    --synthetic set is read with the real set's label and group columns.

    Example: fairsample evaluate --real demo --synthetic vanilla=gen_v0 --synthetic vanilla=gen_v1 --synthetic
    fair=gen_f --counterfactual demo/counterfactual --oracle oracle --reference vanilla --output-dir report
    """
    from fairsample.evaluation.evaluate import check_output_dir
    from fairsample.evaluation.evaluate import evaluate as run_evaluate

    t0 = time.perf_counter()
    sets = parse_synthetic(synthetic)
    minority_value = parse_minority(minority)
    seed_list = parse_int_list(seeds)
    if reference is not None and reference not in sets:
        raise typer.BadParameter(_BAD_REFERENCE.format(value=reference, names=list(sets)), param_hint="--reference")
    folders = [("real", real), *(("synthetic", p) for paths in sets.values() for p in paths)]
    folders += [(flag, p) for flag, p in (("counterfactual", counterfactual), ("oracle", oracle)) if p is not None]
    for flag, path in folders:
        if not path.is_dir():
            raise ConfigError(_NOT_A_FOLDER.format(flag=flag, path=path))
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConfigError(_OUTPUT_NOT_EMPTY.format(path=output_dir))
    check_output_dir(output_dir, overwrite=overwrite)

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {line}", file=sys.stderr, flush=True)

    # the dataset options describe --real; every synthetic set is read with the real set's label and group columns
    dataset = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown)
    real_data: Any = dataset.load(real, flag="--real")
    result = run_evaluate(
        real_data,
        {name: paths[0] if len(paths) == 1 else paths for name, paths in sets.items()},
        attribute=attribute or None,
        counterfactual=counterfactual,
        oracle=oracle,
        minority=minority_value,
        reference=reference,
        protocols=[p.value for p in protocol] if protocol else EvaluationSettings.protocols,
        seeds=seed_list,
        epochs=epochs,
        size=size,
        k=k,
        n_resamples=n_resamples,
        seed=seed,
        feature_epochs=feature_epochs,
        allow_few_seeds=allow_few_seeds,
        closure_resamples=closure_resamples,
        progress=progress if fmt is Format.human else None,
    )
    result.command = shlex.join(["fairsample", *sys.argv[1:]])
    if fmt is Format.human:
        progress(f"writing the report to {output_dir}")
    files = result.save(output_dir, overwrite=overwrite)
    doc = {
        "output_dir": files["output_dir"],
        "files": files,
        "headline": result.headline(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _emit(fmt, doc, lambda: _human(doc))

"""``fairsample evaluate``: generative quality, attribute BER and downstream fairness of synthetic sets vs real data.

A thin shell over :func:`fairsample.eval.evaluate.evaluate`; registered on :data:`fairsample.cli.app` by the import at
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

from fairsample.cli import Format, FormatOpt, _emit, app, handle_errors, parse_int_list
from fairsample.errors import ConfigError
from fairsample.eval.evaluate import EvaluationSettings

_NAME_PATH_RE = re.compile(r"^([A-Za-z0-9._-]{1,40})=(.+)$")
_DUPLICATE_NAME = (
    "two --synthetic sets are named {name!r} ({first} and {second}); name them with NAME=PATH, "
    "e.g. --synthetic vanilla=out/v --synthetic fair=out/f"
)
_NOT_A_FOLDER = "--{flag} {path} is not a folder; pass a dataset folder with metadata.csv"
_OUTPUT_NOT_EMPTY = "--output-dir {path} is not empty; pass --overwrite to replace it or choose a new folder"


class ProtocolName(StrEnum):
    real_only = "real_only"
    real_plus_synthetic = "real_plus_synthetic"
    synthetic_only = "synthetic_only"


def parse_synthetic(values: list[str]) -> dict[str, Path]:
    """``["out/v", "fair=out/f"]`` → ``{"v": Path("out/v"), "fair": Path("out/f")}`` (name = folder name by default).

    Example:
        >>> parse_synthetic(["runs/vanilla", "fair=runs/x"])
        {'vanilla': PosixPath('runs/vanilla'), 'fair': PosixPath('runs/x')}
    """
    out: dict[str, Path] = {}
    for text in values:
        m = _NAME_PATH_RE.match(text)
        if m is not None and not Path(text).exists():
            name, path = m.group(1), Path(m.group(2))
        else:
            path = Path(text)
            name = path.resolve().name if path.name in ("", ".", "..") else path.name
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:40] or "synthetic"
        if name in out:
            raise typer.BadParameter(
                _DUPLICATE_NAME.format(name=name, first=out[name], second=path), param_hint="--synthetic"
            )
        out[name] = path
    return out


def _human(doc: dict[str, Any]) -> str:
    """A short summary table per section, then the written paths."""
    head = doc["headline"]
    attr = head["attribute"]
    lines = [f"generative ({attr}; DomainFeatures space, lower FID / KID / ES-FID is better):"]
    rows = [["set", "FID", "KID", "FID var", "ES-FID", "BER"]]
    for name, g in head["generative"].items():
        rows.append([name] + [_num(g[k]) for k in ("fid", "kid", "fid_variance", "es_fid", "ber")])
    lines += _table(rows)
    lines.append(f"downstream fairness ({attr}; real test split, mean over seeds):")
    rows = [["row", "accuracy", "DP gap", "EOpp gap", "EOdds gap", "ESSP"]]
    for row_id, f in head["fairness"].items():
        rows.append([row_id] + [_num(f[k]) for k in ("accuracy", "dp_gap", "eopp_gap", "eodds_gap", "essp")])
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
            help="Generated folder; repeat to compare sets side by side. NAME=PATH names a set (default: its folder).",
        ),
    ],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Report folder (report.json/.md/.html, plots/).")
    ],
    attribute: Annotated[
        list[str] | None,
        typer.Option("--attribute", help="Sensitive attribute column; repeat for several (default: every group)."),
    ] = None,
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
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --output-dir.")] = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Evaluate synthetic sets against real data: FID/KID per group, BER, downstream fairness; writes a report.

    Example: fairsample evaluate --real demo --synthetic vanilla=gen_v --synthetic fair=gen_f --output-dir report
    """
    from fairsample.eval.evaluate import check_output_dir
    from fairsample.eval.evaluate import evaluate as run_evaluate

    t0 = time.perf_counter()
    sets = parse_synthetic(synthetic)
    seed_list = parse_int_list(seeds)
    for flag, path in [("real", real), *(("synthetic", p) for p in sets.values())]:
        if not path.is_dir():
            raise ConfigError(_NOT_A_FOLDER.format(flag=flag, path=path))
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConfigError(_OUTPUT_NOT_EMPTY.format(path=output_dir))
    check_output_dir(output_dir, overwrite=overwrite)

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {line}", file=sys.stderr, flush=True)

    result = run_evaluate(
        real,
        sets,
        attribute=attribute or None,
        protocols=[p.value for p in protocol] if protocol else EvaluationSettings.protocols,
        seeds=seed_list,
        epochs=epochs,
        size=size,
        k=k,
        n_resamples=n_resamples,
        seed=seed,
        feature_epochs=feature_epochs,
        allow_few_seeds=allow_few_seeds,
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

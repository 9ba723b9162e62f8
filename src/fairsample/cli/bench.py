"""`fairsample bench`: sampling speed per engine backend, CFG packing and GFLOP/s (JSON for pipelines)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fairsample.cli.common import CacheDirOpt, Format, FormatOpt, _emit, app, handle_errors, parse_int_list


@app.command("bench")
@handle_errors
def bench_cmd(
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: the embedded model).")] = None,
    backend: Annotated[
        list[str] | None, typer.Option(help="Backend to include (repeat): torch-eager, torch, onnxruntime, tensorrt.")
    ] = None,
    batches: Annotated[str, typer.Option(help="Images per sampling call, like 1,8,32.")] = "1,8,32",
    steps: Annotated[int, typer.Option(min=1, help="Scheduler steps per image.")] = 10,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repetitions per configuration (best kept).")] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads (default: physical cores).")] = None,
    matmul_size: Annotated[
        int, typer.Option(min=64, help="Side of the float32 reference matmul (size x size) @ (size x size).")
    ] = 2048,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON result to this file.")] = None,
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = Format.human,
) -> None:
    """Measure sampling images/s on every available backend in one process, plus U-Net GFLOP/s vs a matmul.

    Example: fairsample bench --batches 1,8,32 --steps 10 --output bench.json --format json
    """
    from fairsample.cli.common import check_model_path, open_model_option

    check_model_path(model)
    from fairsample.workflows.bench import format_table, run_bench

    bundle = open_model_option(model, need_cells=False)
    progress = None if fmt is Format.json else (lambda line: print(line, file=sys.stderr, flush=True))
    doc = run_bench(
        bundle,
        backends=backend,
        batches=parse_int_list(batches),
        steps=steps,
        repeats=repeats,
        threads=threads,
        cache_dir=cache_dir,
        progress=progress,
        matmul_size=matmul_size,
    )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(doc, indent=2) + "\n")
    _emit(fmt, doc, lambda: format_table(doc))

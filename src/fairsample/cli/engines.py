"""``fairsample cache ls|verify|prune`` and ``fairsample export onnx|tensorrt``: engine artifacts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fairsample.cli.common import (
    CacheDirOpt,
    Dtype,
    Format,
    FormatOpt,
    _emit,
    _fail,
    cache_app,
    check_model_path,
    export_app,
    handle_errors,
    open_model_option,
)


def _cache_rows(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    if not rows:
        return "(empty)"
    return "\n".join("  ".join(str(r.get(c)) for c in columns) for r in rows)


@cache_app.command("ls")
@handle_errors
def cache_ls(cache_dir: CacheDirOpt = None, fmt: FormatOpt = Format.human) -> None:
    """List cached artifacts (key, kind, bytes, valid).

    Example: fairsample cache ls --format json
    """
    from fairsample.export.cache import ls

    rows = ls(cache_dir)
    _emit(fmt, rows, lambda: _cache_rows(rows, ("key", "kind", "bytes", "valid", "reason")))


@cache_app.command("verify")
@handle_errors
def cache_verify(cache_dir: CacheDirOpt = None, fmt: FormatOpt = Format.human) -> None:
    """Check every cached artifact's files against the sha256 in its manifest; exit 1 if any is invalid.

    Example: fairsample cache verify
    """
    from fairsample.export.cache import verify

    rows = verify(cache_dir)
    _emit(fmt, rows, lambda: _cache_rows(rows, ("key", "valid", "reason")))
    bad = [r for r in rows if not r["valid"]]
    if bad:
        raise _fail(
            f"{len(bad)} of {len(rows)} cache entries are invalid (first: {bad[0]['key']}: "
            f"{bad[0]['reason']}); run `fairsample cache prune` to remove them"
        )


@cache_app.command("prune")
@handle_errors
def cache_prune(
    cache_dir: CacheDirOpt = None,
    max_bytes: Annotated[int | None, typer.Option(min=0, help="Then drop least-recently-used entries to fit.")] = None,
    deep: Annotated[
        bool, typer.Option("--deep/--fast", help="Find damaged files by sha256 (default) or size.")
    ] = True,
    fmt: FormatOpt = Format.human,
) -> None:
    """Remove invalid entries, then least-recently-used ones until the store fits --max-bytes.

    Example: fairsample cache prune --max-bytes 5000000000
    """
    from fairsample.export.cache import prune

    rows = prune(cache_dir, max_bytes=max_bytes, deep=deep)
    _emit(fmt, rows, lambda: f"removed {len(rows)} entries ({sum(r['bytes'] for r in rows)} bytes)")


@export_app.command("onnx")
@handle_errors
def export_onnx_cmd(
    model: Annotated[
        Path | None, typer.Option(help="Model bundle or Stable Diffusion folder (default: the embedded model).")
    ] = None,
    dtype: Annotated[Dtype, typer.Option(help="float32, or float16 with fp32 islands.")] = Dtype.float32,
    exporter: Annotated[
        list[str] | None, typer.Option(help="Exporter chain to try, in order: dynamo, dynamo-noopt, legacy.")
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Also write the validated ONNX (+ external data + manifest) here."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace files already in --output-dir.")] = False,
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = Format.human,
) -> None:
    """Export, optimize (and fp16-convert) the U-Net to ONNX, validate it against torch, and cache it; prints the
    ONNX file's path (in the cache, or in --output-dir as a standalone copy).

    Example: fairsample export onnx --model runs/m --dtype float16 --output-dir onnx/ --format json
    """
    check_model_path(model)
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise typer.BadParameter(f"{output_dir} is a file; pass a folder", param_hint="--output-dir")
    import torch

    from fairsample.engines import load_engine
    from fairsample.export.standalone import copy_engine_files

    bundle = open_model_option(model, need_cells=False)
    options: dict[str, Any] = {"exporters": tuple(exporter)} if exporter else {}
    torch_dtype = torch.float16 if dtype is Dtype.float16 else torch.float32
    engine = load_engine(bundle, backend="onnxruntime", dtype=torch_dtype, cache_dir=cache_dir, **options)
    man = dict(engine.manifest)
    onnx_path = Path(engine.path)  # type: ignore[attr-defined]
    engine.close()
    files = copy_engine_files(onnx_path, output_dir, overwrite=overwrite) if output_dir is not None else None
    if files is not None:
        onnx_path = files[0]
    doc = {
        "model": bundle.bundle_id,
        "dtype": dtype.value,
        "onnx": str(onnx_path),
        "files": [str(f) for f in files] if files else None,
        "manifest": man,
    }
    _emit(
        fmt,
        doc,
        lambda: f"ONNX for {bundle.bundle_id} ({dtype.value}, validated): {onnx_path} (cache key {man.get('key')})",
    )


@export_app.command("tensorrt")
@handle_errors
def export_tensorrt_cmd(
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: the embedded model).")] = None,
    dtype: Annotated[Dtype, typer.Option(help="float16 (strongly typed, fp32 islands) or float32.")] = Dtype.float16,
    max_batch: Annotated[int, typer.Option(min=1, help="B: profiles N = B and N = 2B (CFG) at the model size.")] = 32,
    refit: Annotated[bool, typer.Option(help="Build a refittable plan (slower; weights can be swapped).")] = False,
    device: Annotated[str, typer.Option(help="CUDA device to build for.")] = "cuda:0",
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = Format.human,
) -> None:
    """Build, validate and cache a TensorRT plan for this GPU (needs 'fairsample[tensorrt]' and a CUDA device).

    Unlike `generate --backend tensorrt`, an export never falls back to onnxruntime: without a usable GPU or
    TensorRT it fails with one line.

    Example: fairsample export tensorrt --model runs/m --max-batch 16 --format json
    """
    check_model_path(model)
    import torch

    from fairsample.engines import load_engine

    bundle = open_model_option(model, need_cells=False)
    torch_dtype = torch.float16 if dtype is Dtype.float16 else torch.float32
    progress = None if fmt is Format.json else (lambda line: print(line, file=sys.stderr))
    engine = load_engine(
        bundle,
        backend="tensorrt",
        device=device,
        dtype=torch_dtype,
        cache_dir=cache_dir,
        max_batch=max_batch,
        refit=refit,
        strict=True,
        progress=progress,
    )
    man = dict(engine.manifest)
    engine.close()
    from fairsample.export.cache import ArtifactCache

    plan = ArtifactCache(cache_dir).entry_dir(str(man["key"])) / "engine.plan" if man.get("key") else None
    doc = {"model": bundle.bundle_id, "dtype": dtype.value, "plan": str(plan) if plan else None, "manifest": man}
    _emit(fmt, doc, lambda: f"TensorRT engine for {bundle.bundle_id} ({dtype.value}, validated): {plan}")

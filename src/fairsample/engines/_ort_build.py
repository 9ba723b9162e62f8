"""Build-or-load flow of the onnxruntime backend (ENGINES.md §7.3): export -> optimize -> (fp16) -> validate ->
cache -> :class:`~fairsample.engines.ort_engine.OrtEngine`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fairsample.core.engine_spec import EngineSpec, dtype_precision, sample_size_hw
from fairsample.core.errors import ConfigError, EngineLoadError

_NO_SEQ_LEN = (
    "`seq_len` is needed for the onnxruntime backend (S is static in the graph); pass seq_len=... or a bundle with "
    "a conditioner."
)
_BAD_DTYPE = "the onnxruntime backend runs torch.float32 or torch.float16 engines, got {dtype}; use one of those."


def prepare_onnx(
    bundle: Any,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
    seq_len: int | None = None,
    max_batch: int = 256,
    max_size: int = 512,
    exporters: tuple[str, ...] | None = None,
    keep_attention_fp32: bool = False,
) -> tuple[Any, Path, dict[str, Any], EngineSpec]:
    """Export, optimize (and fp16-convert) and validate the bundle's U-Net into the cache; nothing is loaded.

    Returns:
        ``(cache, entry_dir, manifest, spec)``; the model file is ``entry_dir / manifest["model_file"]`` and its
        validation report has passed.

    Raises:
        ConfigError: no ``seq_len`` or an unsupported ``dtype``.
        ValidationFailed: an artifact failed its gate (ENGINES.md §6).
    """
    from fairsample.export.cache import ArtifactCache, onnx_key_parts
    from fairsample.export.onnx_export import EXPORTERS, _cpu_fp32_copy, _cross_attention_dim
    from fairsample.export.validate import require_passed

    precision = dtype_precision(dtype)
    if precision not in ("fp32", "fp16"):
        raise ConfigError(_BAD_DTYPE.format(dtype=dtype))
    unet = bundle.unet
    if seq_len is None:
        seq_len = getattr(getattr(bundle, "conditioner", None), "seq_len", None)
    if seq_len is None:
        raise ConfigError(_NO_SEQ_LEN)
    chain = tuple(exporters or EXPORTERS)
    cache = ArtifactCache(cache_dir)
    reference = _cpu_fp32_copy(unet)
    parts = onnx_key_parts(
        unet,
        prediction_type=bundle.prediction_type,
        seq_len=seq_len,
        exporters=chain,
        max_batch=max_batch,
        max_size=max_size,
    )
    spec = EngineSpec(
        in_channels=int(unet.config.in_channels),
        out_channels=int(unet.config.out_channels),
        sample_size=sample_size_hw(unet.config.sample_size),
        seq_len=seq_len,
        hidden_dim=_cross_attention_dim(unet),
        prediction_type=bundle.prediction_type,
        precision=precision,
    )
    stages = _stages(
        reference,
        parts,
        spec,
        precision=precision,
        chain=chain,
        max_batch=max_batch,
        max_size=max_size,
        keep_attention_fp32=keep_attention_fp32,
    )
    entry, manifest, model_file = _build_all(cache, stages)
    require_passed(manifest.get("report"), name=model_file)
    return cache, entry, manifest, spec


def load_ort_engine(
    bundle: Any,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
    seq_len: int | None = None,
    max_batch: int = 256,
    max_size: int = 512,
    exporters: tuple[str, ...] | None = None,
    keep_attention_fp32: bool = False,
    intra_op_threads: int | None = None,
    batch_invariant: bool = False,
    check_finite: bool = False,
    batch_parallel: bool | None = None,
) -> Any:
    """Export, validate and cache the bundle's U-Net on first use, then load an OrtEngine from the cache.

    Returns:
        An :class:`~fairsample.engines.ort_engine.OrtEngine` over the optimized fp32 (or fp16) ONNX.
    """
    from fairsample.engines.ort_engine import OrtEngine, import_onnxruntime
    from fairsample.export.onnx_export import spatial_multiple

    import_onnxruntime()
    options = dict(
        dtype=dtype,
        cache_dir=cache_dir,
        seq_len=seq_len,
        max_batch=max_batch,
        max_size=max_size,
        exporters=exporters,
        keep_attention_fp32=keep_attention_fp32,
    )
    for attempt in range(2):
        cache, entry, manifest, spec = prepare_onnx(bundle, **options)  # type: ignore[arg-type]
        try:
            return OrtEngine(
                entry / manifest["model_file"],
                spec=spec,
                device=device,
                manifest=manifest,
                spatial_multiple=spatial_multiple(bundle.unet),
                intra_op_threads=intra_op_threads,
                batch_invariant=batch_invariant,
                check_finite=check_finite,
                batch_parallel=batch_parallel,
            )
        except EngineLoadError as err:
            if attempt or "could not load" not in str(err):
                raise
            cache.mark_stale(manifest["key"], str(err).split(": ", 1)[-1][:200])
    raise AssertionError("unreachable")


def _stages(
    reference: Any,
    parts: dict[str, Any],
    spec: EngineSpec,
    *,
    precision: str,
    chain: tuple[str, ...],
    max_batch: int,
    max_size: int,
    keep_attention_fp32: bool,
) -> list[tuple[str, Any, Any]]:
    """(kind, parts-or-parent-fn, build-fn) per artifact stage, in order."""
    import onnxscript

    from fairsample.export.onnx_export import UNetForward, export_onnx, onnx_parity_report, parity_shapes
    from fairsample.export.onnx_optimize import optimize_onnx
    from fairsample.export.precision import convert_fp16, precision_policy

    shapes = parity_shapes(reference)
    wrapper = UNetForward(reference)
    dims = dict(channels=spec.in_channels, seq_len=spec.seq_len, hidden_dim=spec.hidden_dim)

    def build_onnx(tmp: Path, parent: Path | None) -> dict[str, Any]:
        art = export_onnx(
            reference,
            tmp,
            prediction_type=spec.prediction_type,
            seq_len=spec.seq_len,
            max_batch=max_batch,
            max_size=max_size,
            exporters=chain,
        )  # type: ignore[arg-type]
        return {
            "model_file": art.path.name,
            "artifact": art.to_dict(),
            "report": art.report,
            "prediction_type": spec.prediction_type,
        }

    def build_opt(tmp: Path, parent: Path | None) -> dict[str, Any]:
        assert parent is not None
        opt = optimize_onnx(parent / "model.onnx", tmp)
        report = onnx_parity_report(opt.path, wrapper, shapes, precision="fp32", **dims)  # type: ignore[arg-type]
        return {
            "model_file": opt.path.name,
            "optimizer": opt.optimizer,
            "nodes": [opt.nodes_before, opt.nodes_after],
            "seconds": opt.seconds,
            "report": report,
            "prediction_type": spec.prediction_type,
        }

    def build_fp16(tmp: Path, parent: Path | None) -> dict[str, Any]:
        assert parent is not None
        art = convert_fp16(parent / "model.opt.onnx", tmp, keep_attention_fp32=keep_attention_fp32)
        report = onnx_parity_report(art.path, wrapper, shapes, precision="fp16", **dims)  # type: ignore[arg-type]
        return {
            "model_file": art.path.name,
            "converter": art.converter,
            "fp32_nodes": art.fp32_nodes,
            "report": report,
            "prediction_type": spec.prediction_type,
        }

    stages: list[tuple[str, Any, Any]] = [
        ("onnx", parts, build_onnx),
        ("onnx.opt", {"optimizer": f"onnxscript {onnxscript.__version__}"}, build_opt),
    ]
    if precision == "fp16":
        from importlib.metadata import version

        extra = {
            "converter": f"onnxconverter-common {version('onnxconverter-common')}",
            "policy": precision_policy(keep_attention_fp32=keep_attention_fp32),
        }
        stages.append(("onnx.fp16", extra, build_fp16))
    return stages


def _build_all(cache: Any, stages: list[tuple[str, Any, Any]]) -> tuple[Path, dict[str, Any], str]:
    """Get or build each stage in order; a child stage's key parts include its parent's key (ENGINES.md §7.1)."""
    parent_dir: Path | None = None
    parent_key: str | None = None
    entry: Path | None = None
    manifest: dict[str, Any] = {}
    for kind, parts, build in stages:
        full = {**parts, "kind": kind} if parent_key is None else {**parts, "kind": kind, "parent": parent_key}
        entry, manifest = cache.get_or_build(full, lambda tmp, b=build, p=parent_dir: b(tmp, p))
        parent_dir, parent_key = entry, manifest["key"]
    assert entry is not None
    return entry, manifest, manifest["model_file"]

"""Build-or-load flow of the TensorRT backend (ENGINES.md §7.3), with the fallback rules of §0.

Steps: (1) no CUDA device or no tensorrt → fall back to onnxruntime with one warning line (``strict`` raises);
(2) get the strongly typed fp16 (or fp32) ONNX from the onnxruntime flow's cache (export → optimize → fp16 →
validate); (3) key the plan by :meth:`TrtBuildRecipe.cache_key_parts` for this GPU and build it in a child process
on a miss; the build is validated against torch fp32 (ENGINES.md §6) and the refit name map is stored with it;
(4) before deserialising, :func:`check_manifest` compares the manifest with this machine; an incompatible or
unvalidated entry is rebuilt once, a failing gate or a second failure falls back to onnxruntime — always one line,
never a raw deserialisation error.

The GPU half (steps 2-4 with real TensorRT) has never run on the project's CPU-only machines; the orchestration is
tested on CPU with the GPU-facing calls replaced (tests/engines/tensorrt/test_trt_load_flow.py).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from fairsample.core.engine_spec import EngineSpec, ShapeProfile, dtype_precision
from fairsample.core.errors import ConfigError, EngineLoadError, FairsampleWarning

PLAN_FILE = "engine.plan"
_BAD_DTYPE = "the tensorrt backend builds torch.float16 or torch.float32 engines, got {dtype}; use one of those."
_DEVICE_CPU_REASON = "device {device!r} is not a CUDA device"
_CANNOT_RUN_HERE = (
    "{reason}: the tensorrt backend needs a CUDA GPU and `pip install 'fairsample[tensorrt]'`; use the onnxruntime "
    "backend on this machine (or drop strict to fall back automatically)."
)


def _environment() -> tuple[bool, bool]:
    """(CUDA device present, tensorrt importable); replaced in CPU tests of the flow."""
    return torch.cuda.is_available(), importlib.util.find_spec("tensorrt") is not None


def _ort_providers() -> list[str] | None:
    from fairsample.engines.tensorrt.fallback import _ort_providers as providers

    return providers()


def _target(device: torch.device) -> Any:
    from fairsample.core.gpu_info import current_target

    return current_target(device)


def _build_plan(recipe: Any, progress: Callable[[str], None] | None) -> bytes:
    from fairsample.export.trt_build import build_plan

    return build_plan(recipe, progress=progress)


def _open_engine(path: Path | bytes, **kwargs: Any) -> Any:
    from fairsample.engines.tensorrt.runtime import TensorRTEngine

    return TensorRTEngine(path, **kwargs)


def load_trt_engine(
    bundle: Any,
    *,
    device: str | torch.device = "cuda:0",
    dtype: torch.dtype = torch.float16,
    cache_dir: str | Path | None = None,
    seq_len: int | None = None,
    max_batch: int = 32,
    profiles: Sequence[ShapeProfile] = (),
    strict: bool = False,
    rebuild: Literal["auto", "never"] = "auto",
    unsafe: bool = False,
    refit: bool = False,
    workspace_bytes: int | None = None,
    builder_optimization_level: int = 3,
    cuda_graphs: bool = True,
    check_finite: bool = False,
    progress: Callable[[str], None] | None = None,
    exporters: tuple[str, ...] | None = None,
    intra_op_threads: int | None = None,
) -> Any:
    """A validated TensorRT engine for ``bundle`` from the cache (building it on a miss), or the onnxruntime fallback.

    Args:
        bundle: a model bundle (``.unet``, ``.prediction_type``, ``.conditioner.seq_len``).
        device: the CUDA device, e.g. ``"cuda:0"``.
        dtype: ``torch.float16`` (default; strongly typed fp16 ONNX with fp32 islands) or ``torch.float32``.
        cache_dir: the artifact store (default ``$FAIRSAMPLE_CACHE_DIR`` or ``~/.cache/fairsample/engines``).
        seq_len: S when the bundle has no conditioner.
        max_batch: B of the default profiles (N = B and N = 2B for CFG at the model's resolution).
        profiles: extra user profiles, appended to the defaults.
        strict: raise :class:`~fairsample.core.errors.EngineLoadError` instead of rebuilding or falling back.
        rebuild: ``"auto"`` rebuilds an incompatible cached plan; ``"never"`` falls back instead.
        unsafe: load a plan whose validation report is missing or failed.
        refit: build a refittable plan (``BuilderFlag.REFIT``; slower engine, ENGINES.md §8).
        workspace_bytes: builder workspace cap (default 4 GiB, halved once on OOM).
        builder_optimization_level: 0-5 (3 is TensorRT's default).
        cuda_graphs: replay repeated shapes from CUDA graphs.
        check_finite: raise on NaN/Inf outputs.
        progress: receives build progress lines.
        exporters: ONNX exporter chain (default dynamo → dynamo-noopt → legacy).
        intra_op_threads: only used by the onnxruntime fallback.

    Returns:
        A :class:`~fairsample.engines.tensorrt.runtime.TensorRTEngine`, or an
        :class:`~fairsample.engines.ort_engine.OrtEngine` after a one-line :class:`FairsampleWarning`.

    Raises:
        EngineLoadError: ``strict`` and the plan cannot be used, or no fallback is possible.
        ConfigError: an unsupported ``dtype``.
    """
    from fairsample.engines._ort_build import load_ort_engine, prepare_onnx
    from fairsample.engines.tensorrt.fallback import (
        NO_CUDA_REASON,
        NO_TENSORRT_REASON,
        FallbackDecision,
        check_manifest,
        decide_fallback,
    )

    precision = dtype_precision(dtype)
    if precision not in ("fp16", "fp32"):
        raise ConfigError(_BAD_DTYPE.format(dtype=dtype))
    dev = torch.device(device)
    cuda, has_trt = _environment()
    ort_opts: dict[str, Any] = {
        "cache_dir": cache_dir,
        "seq_len": seq_len,
        "exporters": exporters,
        "intra_op_threads": intra_op_threads,
        "check_finite": check_finite,
    }

    def fall_back(reason: str, *, allow_rebuild: bool, onnx_cached: bool) -> Any:
        """Raise, return the rebuild decision, or warn once and return the onnxruntime engine."""
        decision = decide_fallback(
            reason,
            strict=strict,
            rebuild=rebuild if allow_rebuild else "never",
            can_build=cuda and has_trt,
            onnx_cached=onnx_cached,
            ort_providers=_ort_providers(),
            cuda=cuda,
        )
        if decision.action == "raise":
            raise EngineLoadError(decision.message)
        if decision.action == "rebuild":
            return decision
        warnings.warn(decision.message, FairsampleWarning, stacklevel=3)
        on_gpu = decision.provider == "CUDAExecutionProvider"
        # The CPU EP runs fp32: fp16 graphs are slower and less accurate there.
        return load_ort_engine(
            bundle, device=dev if on_gpu else "cpu", dtype=dtype if on_gpu else torch.float32, **ort_opts
        )

    if dev.type != "cuda" or not cuda or not has_trt:
        reason = (
            NO_CUDA_REASON
            if not cuda
            else _DEVICE_CPU_REASON.format(device=str(device))
            if dev.type != "cuda"
            else NO_TENSORRT_REASON
        )
        if strict:
            raise EngineLoadError(_CANNOT_RUN_HERE.format(reason=reason))
        return fall_back(reason, allow_rebuild=False, onnx_cached=False)

    cache, onnx_entry, onnx_manifest, spec0 = prepare_onnx(
        bundle, dtype=dtype, cache_dir=cache_dir, seq_len=seq_len, exporters=exporters
    )
    onnx_path = onnx_entry / onnx_manifest["model_file"]
    from fairsample.export.cache import weights_sha256
    from fairsample.export.trt_build import GIB, TrtBuildRecipe
    from fairsample.export.trt_profiles import default_profiles

    plan_profiles = default_profiles(spec0.sample_size, max_batch, extra=profiles)
    spec = EngineSpec(
        in_channels=spec0.in_channels,
        out_channels=spec0.out_channels,
        sample_size=spec0.sample_size,
        seq_len=spec0.seq_len,
        hidden_dim=spec0.hidden_dim,
        prediction_type=spec0.prediction_type,
        precision=precision,
        profiles=plan_profiles,
    )
    recipe = TrtBuildRecipe(
        onnx_path=str(onnx_path),
        profiles=plan_profiles,
        precision=precision,  # type: ignore[arg-type]
        workspace_bytes=workspace_bytes or 4 * GIB,
        refit=refit,
        builder_optimization_level=builder_optimization_level,
        onnx_key=onnx_manifest["key"],
        weights_sha256=weights_sha256(bundle.unet.state_dict()),
    )
    target = _target(dev)
    parts = {**recipe.cache_key_parts(target), "kind": "trt.plan"}
    engine_kwargs = {"spec": spec, "device": dev, "cuda_graphs": cuda_graphs, "check_finite": check_finite}

    def build(tmp: Path) -> dict[str, Any]:
        return _build_and_validate(tmp, bundle, recipe, parts, spec, dev, progress)

    for attempt in range(2):
        entry, manifest = cache.get_or_build(parts, build)
        reason = check_manifest(manifest, target, unsafe=unsafe)
        if reason is None:
            try:
                return _open_engine(entry / PLAN_FILE, manifest=manifest, unsafe=unsafe, **engine_kwargs)
            except EngineLoadError as err:
                reason = str(err).split("; load it through", 1)[0].rstrip(".")
        gate_failed = reason.startswith("cached TensorRT engine has no passing validation report (failed")
        decision = fall_back(reason, allow_rebuild=attempt == 0 and not gate_failed, onnx_cached=True)
        if not isinstance(decision, FallbackDecision):
            return decision  # the onnxruntime engine
        cache.mark_stale(manifest["key"], reason[:200])  # one warning line, then get_or_build rebuilds
    raise AssertionError("unreachable: the second attempt never rebuilds")


def _build_and_validate(
    tmp: Path,
    bundle: Any,
    recipe: Any,
    parts: dict[str, Any],
    spec: EngineSpec,
    device: torch.device,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Build the plan into ``tmp``, validate it against torch fp32 at shapes inside its profiles, map refit names."""
    from fairsample.export.onnx_export import UNetForward, _cpu_fp32_copy
    from fairsample.export.refit_map import build_refit_map
    from fairsample.export.validate import parity_report

    plan = _build_plan(recipe, progress)
    (tmp / PLAN_FILE).write_bytes(bytes(plan))
    built = getattr(plan, "recipe", recipe)
    provisional = {"key_parts": parts, "validation": {"passed": True}}
    engine = _open_engine(bytes(plan), spec=spec, manifest=provisional, device=device, cuda_graphs=False, unsafe=True)
    reference = UNetForward(_cpu_fp32_copy(bundle.unet))
    (h, w), big = spec.sample_size, spec.profiles[-1].opt[0]
    shapes = sorted({(1, h, w), (2, h, w), (big, h, w)})

    def candidate(x: torch.Tensor, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        dev = engine.device
        return engine(x.to(dev), t.to(dev), e.to(dev)).float().cpu()

    try:
        report = parity_report(
            candidate,
            reference,
            shapes,
            precision=spec.precision,
            channels=spec.in_channels,
            seq_len=spec.seq_len or 1,
            hidden_dim=spec.hidden_dim,
            name=PLAN_FILE,
        )
    finally:
        engine.close()
    return {
        "model_file": PLAN_FILE,
        "prediction_type": spec.prediction_type,
        "recipe": built.to_dict(),
        "build": {
            "seconds": round(float(getattr(plan, "seconds", 0.0)), 2),
            "retried": bool(getattr(plan, "retried", False)),
            "log_tail": list(getattr(plan, "log", []))[-20:],
        },
        "report": report,
        "validation": report,
        "refit": build_refit_map(recipe.onnx_path, bundle.unet.state_dict()),
    }

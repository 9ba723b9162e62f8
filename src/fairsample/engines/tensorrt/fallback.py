"""The load policy of the TensorRT backend (ENGINES.md §7.3): may a cached plan be deserialised on this machine, and if
not, rebuild, fall back to onnxruntime, or raise — always with one line naming the reason and the action (STYLE.md §8).

:func:`check_manifest` compares a plan's manifest with this machine (SM / TensorRT / CUDA / OS, then the validation
report) *before* deserialising; :func:`decide_fallback` turns a reason into the action; :func:`plan_load` runs both on
this machine. Pure Python, unit-tested on CPU.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fairsample.core.gpu_info import TrtTarget, current_target

INCOMPATIBLE = "cached TensorRT engine was built for {built}; this GPU is {here}"
NOT_VALIDATED = "cached TensorRT engine has no passing validation report ({state})"
MANIFEST_INCOMPLETE = "cached TensorRT engine manifest lacks {missing}"
DESERIALIZE_FAILED = (
    "the TensorRT runtime on {here} rejected the cached engine (deserialize_cuda_engine returned None)"
)
NO_TENSORRT_REASON = "tensorrt is not installed"
NO_CUDA_REASON = "no CUDA device"
ACTION_REBUILD = "{reason} — rebuilding (use --strict to fail instead)"
ACTION_ONNXRUNTIME = "{reason} — falling back to onnxruntime ({provider}) (use --strict to fail instead)"
ACTION_STRICT = "{reason} — strict=True, so not rebuilding or falling back; rebuild with `fairsample export tensorrt`"
ACTION_NOTHING = (
    "{reason} — cannot rebuild (needs tensorrt, a GPU and the cached ONNX) and onnxruntime is not installed; "
    "pip install 'fairsample[ort]'"
)

Action = Literal["load", "rebuild", "onnxruntime", "raise"]


@dataclass(frozen=True)
class FallbackDecision:
    """What the load flow does with a TensorRT engine that cannot be used (ENGINES.md §7.3).

    Attributes:
        action: ``"rebuild"``, ``"onnxruntime"`` or ``"raise"``.
        provider: the onnxruntime execution provider for ``"onnxruntime"``, else None.
        message: the one line to log (or raise), naming the reason and the action.
    """

    action: Literal["rebuild", "onnxruntime", "raise"]  # what to do
    provider: str | None  # ORT execution provider for the fallback
    message: str  # one line: cause + action


def check_manifest(manifest: Mapping[str, Any], target: TrtTarget, *, unsafe: bool = False) -> str | None:
    """The one-line reason a cached plan must not be deserialised on ``target``, or None when it may be.

    Compared (ENGINES.md §7.3 step 2): OS/platform, GPU (exact ``smXY``; ``ampere_plus`` plans need SM >= 8.0),
    TensorRT (exact full version; ``version_compatible`` plans need the same major and a runtime not older than the
    builder [unverified rule]) and CUDA runtime ``major.minor``. Then (step 4) the validation report must have
    passed, unless ``unsafe``.

    The manifest is read in the layout of :meth:`fairsample.export.trt_build.TrtBuildRecipe.cache_key_parts`, under
    ``manifest["key_parts"]`` (or at the top level), plus ``manifest["validation"]["passed"]``.

    Args:
        manifest: the cache entry's manifest.
        target: this machine (:func:`~fairsample.core.gpu_info.current_target`).
        unsafe: accept a missing or failed validation report.

    Returns:
        None when loading may proceed, else the reason, e.g. ``"cached TensorRT engine was built for
        sm_80/TensorRT 10.9.0/CUDA 12.4; this GPU is sm_90/TensorRT 11.4.0/CUDA 12.8"``.

    Example:
        >>> t = TrtTarget(sm="sm_90", tensorrt_version="11.4.0", cuda_runtime="12.8", driver_major=575,
        ...               platform="linux-x86_64")
        >>> m = {"key_parts": {"gpu": "sm_80", "tensorrt_version": "10.9.0", "cuda_runtime": "12.4",
        ...      "platform": "linux-x86_64", "builder": {}}, "validation": {"passed": True}}
        >>> print(check_manifest(m, t))  # doctest: +NORMALIZE_WHITESPACE
        cached TensorRT engine was built for sm_80/TensorRT 10.9.0/CUDA 12.4;
        this GPU is sm_90/TensorRT 11.4.0/CUDA 12.8
    """
    parts = manifest.get("key_parts", manifest)
    needed = ("gpu", "tensorrt_version", "cuda_runtime", "platform")
    missing = [k for k in needed if k not in parts]
    if missing:
        return MANIFEST_INCOMPLETE.format(missing=", ".join(missing))
    builder = parts.get("builder") or {}
    gpu, trt_v, cuda, plat = (str(parts[k]) for k in needed)
    if gpu == "ampere_plus":
        gpu_ok = _sm_major(target.sm) >= 8
    else:
        gpu_ok = gpu == target.sm
    if builder.get("version_compatible"):
        built, here = _version_tuple(trt_v), _version_tuple(target.tensorrt_version)
        trt_ok = built[:1] == here[:1] and here >= built
    else:
        trt_ok = trt_v == target.tensorrt_version
    cuda_ok = _major_minor(cuda) == _major_minor(target.cuda_runtime)
    if not (gpu_ok and trt_ok and cuda_ok and plat == target.platform):
        built_s, here_s = f"{gpu}/TensorRT {trt_v}/CUDA {cuda}", target.short()
        if plat != target.platform:
            built_s, here_s = f"{built_s} on {plat}", f"{here_s} on {target.platform}"
        return INCOMPATIBLE.format(built=built_s, here=here_s)
    if not unsafe:
        report = manifest.get("validation")
        if not isinstance(report, Mapping):
            return NOT_VALIDATED.format(state="missing")
        if report.get("passed") is not True:
            return NOT_VALIDATED.format(state="failed")
    return None


def decide_fallback(
    reason: str,
    *,
    strict: bool = False,
    rebuild: Literal["auto", "never"] = "auto",
    can_build: bool,
    onnx_cached: bool,
    ort_providers: Sequence[str] | None,
    cuda: bool,
) -> FallbackDecision:
    """Rebuild, fall back to onnxruntime, or raise, for an engine that cannot be used (ENGINES.md §7.3).

    Order: ``strict`` raises; else rebuild when ``rebuild="auto"``, tensorrt + a GPU are usable and the optimized ONNX
    is cached; else fall back to onnxruntime (CUDA EP when a GPU is present and the provider is available, else the
    CPU EP); else raise.

    Args:
        reason: the one-line cause (from :func:`check_manifest`, a None deserialisation, a missing package, ...).
        strict: raise instead of rebuilding or falling back.
        rebuild: ``"auto"`` (default) or ``"never"``.
        can_build: tensorrt is importable and a CUDA device is present.
        onnx_cached: the optimized/fp16 ONNX the plan was built from is still in the cache.
        ort_providers: ``onnxruntime.get_available_providers()``, or None when onnxruntime is not installed.
        cuda: a CUDA device is present.

    Returns:
        The decision; its ``message`` is the line to log (or the error text for ``"raise"``).

    Example:
        >>> d = decide_fallback("cached TensorRT engine was built for sm_80/TensorRT 10.9; this GPU is "
        ...                     "sm_90/TensorRT 11.4", can_build=True, onnx_cached=True, ort_providers=None, cuda=True)
        >>> d.action
        'rebuild'
        >>> print(d.message)  # doctest: +NORMALIZE_WHITESPACE
        cached TensorRT engine was built for sm_80/TensorRT 10.9; this GPU is sm_90/TensorRT 11.4
        — rebuilding (use --strict to fail instead)
    """
    if strict:
        return FallbackDecision("raise", None, ACTION_STRICT.format(reason=reason))
    if rebuild == "auto" and can_build and onnx_cached:
        return FallbackDecision("rebuild", None, ACTION_REBUILD.format(reason=reason))
    if ort_providers is not None:
        provider = (
            "CUDAExecutionProvider" if cuda and "CUDAExecutionProvider" in ort_providers else "CPUExecutionProvider"
        )
        return FallbackDecision("onnxruntime", provider, ACTION_ONNXRUNTIME.format(reason=reason, provider=provider))
    return FallbackDecision("raise", None, ACTION_NOTHING.format(reason=reason))


def plan_load(
    manifest: Mapping[str, Any],
    *,
    strict: bool = False,
    rebuild: Literal["auto", "never"] = "auto",
    onnx_cached: bool = True,
    unsafe: bool = False,
) -> FallbackDecision | None:
    """The pre-deserialisation half of the load flow on this machine: None = go ahead and load, else a decision.

    Detects tensorrt, the GPU (:func:`~fairsample.core.gpu_info.current_target`) and onnxruntime's providers, runs
    :func:`check_manifest`, and on a problem returns :func:`decide_fallback`'s decision. A None from
    ``deserialize_cuda_engine`` afterwards goes through :func:`decide_fallback` with :data:`DESERIALIZE_FAILED`.

    Example:
        >>> decision = plan_load({"key_parts": {}}, onnx_cached=False)
        >>> decision.action in ("onnxruntime", "raise")
        True
    """
    cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    if not cuda:
        reason: str | None = NO_CUDA_REASON
    elif not has_trt:
        reason = NO_TENSORRT_REASON
    else:
        reason = check_manifest(manifest, current_target(), unsafe=unsafe)
    if reason is None:
        return None
    return decide_fallback(
        reason,
        strict=strict,
        rebuild=rebuild,
        can_build=cuda and has_trt,
        onnx_cached=onnx_cached,
        ort_providers=_ort_providers(),
        cuda=cuda,
    )


def _ort_providers() -> list[str] | None:
    """onnxruntime's available providers, or None when it is not importable."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    try:
        import onnxruntime
    except ImportError:
        return None
    return [str(p) for p in onnxruntime.get_available_providers()]


def _sm_major(sm: str) -> int:
    """``"sm_86" -> 8`` (0 when unparsable); the last digit is the minor version."""
    digits = sm.removeprefix("sm_").removeprefix("sm")
    return int(digits[:-1]) if len(digits) >= 2 and digits.isdigit() else 0


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"10.9.0.34" -> (10, 9, 0, 34)`` (non-numeric parts become 0)."""
    return tuple(int(p) if p.isdigit() else 0 for p in str(version).split("."))


def _major_minor(version: str) -> str:
    """``"12.8.1" -> "12.8"``."""
    return ".".join(str(version).split(".")[:2])

"""What this machine offers the engines: GPU, compute capability, CUDA, TensorRT, ONNX Runtime and extras.

:func:`gpu_report` feeds ``fairsample doctor`` (ENGINES.md §10, complaint 9); :func:`current_target` gives the
(SM, TensorRT, CUDA, driver, OS) tuple a TensorRT plan is keyed by and checked against (ENGINES.md §7.1, §7.3).
Everything optional (tensorrt, onnxruntime, pynvml) is imported lazily inside the functions, and every failure to
query a value leaves it ``None`` instead of raising.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import torch

from fairsample.core.errors import EngineLoadError

TENSORRT_MISSING = "The TensorRT engine needs tensorrt: pip install 'fairsample[tensorrt]'"
NO_CUDA_DEVICE = (
    "no CUDA device: torch.cuda.is_available() is False; run on a GPU machine or use backend='onnxruntime'."
)
BOTH_ORT_INSTALLED = (
    "both onnxruntime {cpu} and onnxruntime-gpu {gpu} are installed and share the `onnxruntime` module; keep one: "
    "pip uninstall onnxruntime (for [gpu]) or pip uninstall onnxruntime-gpu (for [ort])."
)

EXTRAS: dict[str, tuple[str, ...]] = {
    "ort": ("onnxruntime",),
    "gpu": ("onnxruntime",),
    "tensorrt": ("tensorrt", "onnx_graphsurgeon", "polygraphy", "onnxconverter_common"),
    "train": ("accelerate", "botorch"),
    "sd": ("transformers",),
}
"""Modules each optional extra provides (pyproject ``[project.optional-dependencies]``)."""
_EXTRA_DISTRIBUTIONS: dict[str, str] = {"ort": "onnxruntime", "gpu": "onnxruntime-gpu"}


@dataclass(frozen=True)
class TrtTarget:
    """The machine facts a TensorRT plan depends on (ENGINES.md §7.1): the plan key and the load-time check.

    Attributes:
        sm: GPU compute capability, e.g. ``"sm_86"``.
        tensorrt_version: full TensorRT version, e.g. ``"10.9.0.34"``.
        cuda_runtime: CUDA runtime ``major.minor`` of this process (torch's build), e.g. ``"12.8"``.
        driver_major: NVIDIA driver major version (e.g. 570), or None when it cannot be read.
        platform: ``"<os>-<machine>"``, e.g. ``"linux-x86_64"``.
        device_name: the GPU's name; recorded for bookkeeping, never a key part.

    Example:
        >>> t = TrtTarget(sm="sm_86", tensorrt_version="10.9.0.34", cuda_runtime="12.8", driver_major=570,
        ...               platform="linux-x86_64", device_name="NVIDIA RTX A6000")
        >>> t.short()
        'sm_86/TensorRT 10.9.0.34/CUDA 12.8'
    """

    sm: str  # "sm_86"
    tensorrt_version: str  # full version string
    cuda_runtime: str  # "major.minor"
    driver_major: int | None  # NVIDIA driver major, None if unknown
    platform: str  # "linux-x86_64"
    device_name: str = ""  # bookkeeping only

    def short(self) -> str:
        """``"sm_86/TensorRT 10.9.0.34/CUDA 12.8"``: the form used in one-line load messages."""
        return f"{self.sm}/TensorRT {self.tensorrt_version}/CUDA {self.cuda_runtime}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe field dict."""
        return asdict(self)


def current_target(device: int | str | torch.device = 0) -> TrtTarget:
    """The :class:`TrtTarget` of this machine's GPU ``device`` and installed TensorRT.

    Args:
        device: a CUDA device index or name (``0``, ``"cuda:1"``).

    Returns:
        The target facts.

    Raises:
        EngineLoadError: there is no CUDA device (:data:`NO_CUDA_DEVICE`).
        ImportError: tensorrt is not installed (:data:`TENSORRT_MISSING`).

    Example:
        >>> current_target().sm  # doctest: +SKIP
        'sm_86'
    """
    if not torch.cuda.is_available():
        raise EngineLoadError(NO_CUDA_DEVICE)
    trt_version = tensorrt_version()
    if trt_version is None:
        raise ImportError(TENSORRT_MISSING)
    major, minor = torch.cuda.get_device_capability(device)
    driver = driver_version()
    return TrtTarget(
        sm=sm_name(major, minor),
        tensorrt_version=trt_version,
        cuda_runtime=_major_minor(torch.version.cuda or "unknown"),
        driver_major=int(driver.split(".")[0]) if driver and driver.split(".")[0].isdigit() else None,
        platform=platform_tag(),
        device_name=torch.cuda.get_device_name(device),
    )


def sm_name(major: int, minor: int) -> str:
    """``sm_name(8, 6) == "sm_86"``: the compute-capability label used in keys and messages."""
    return f"sm_{major}{minor}"


def platform_tag() -> str:
    """``"<os>-<machine>"`` in lower case, e.g. ``"linux-x86_64"``: the OS/platform key part."""
    return f"{sys.platform}-{platform.machine().lower()}"


def tensorrt_version() -> str | None:
    """The importable tensorrt's ``__version__``, or None when it is missing or fails to import."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # a broken install (missing libnvinfer) counts as "not installed"
        return None
    return str(getattr(trt, "__version__", "unknown"))


def driver_version() -> str | None:
    """The NVIDIA driver version (e.g. ``"570.124.06"``) via pynvml when installed, else None."""
    if importlib.util.find_spec("pynvml") is None:
        return None
    try:
        pynvml = importlib.import_module("pynvml")
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML missing or no driver: report unknown, never fail doctor
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``importlib.metadata``), or None when absent."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def ort_conflict_warning() -> str | None:
    """The :data:`BOTH_ORT_INSTALLED` warning when both onnxruntime and onnxruntime-gpu are installed, else None.

    Example:
        >>> ort_conflict_warning() is None or "onnxruntime-gpu" in ort_conflict_warning()
        True
    """
    cpu, gpu = distribution_version("onnxruntime"), distribution_version("onnxruntime-gpu")
    if cpu is not None and gpu is not None:
        return BOTH_ORT_INSTALLED.format(cpu=cpu, gpu=gpu)
    return None


def gpu_report() -> dict[str, Any]:
    """Everything ``fairsample doctor`` prints, as a JSON-safe dict.

    Returns:
        A dict with keys ``python``, ``platform``, ``torch``, ``cuda_available``, ``cuda_runtime`` (torch's CUDA
        build, None on CPU builds), ``device_count``, ``device`` (None, or ``{"index", "name", "sm",
        "total_memory_bytes"}`` for the current device), ``driver_version`` (None unless pynvml can tell),
        ``cudnn``, ``tensorrt`` (version or None), ``onnxruntime`` (None, or ``{"version", "providers",
        "distributions"}``), ``extras`` (``{extra: bool}`` for ort, gpu, tensorrt, train, sd: every module the extra
        provides is importable), ``extras_missing`` (``{extra: [missing modules]}``) and ``warnings`` (list of
        one-line strings, e.g. both onnxruntime packages installed).

    Example:
        >>> import json
        >>> report = gpu_report()
        >>> sorted(report["extras"]) == ["gpu", "ort", "sd", "tensorrt", "train"] and bool(json.dumps(report))
        True
    """
    cuda = torch.cuda.is_available()
    device: dict[str, Any] | None = None
    if cuda:
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        device = {
            "index": int(index),
            "name": str(props.name),
            "sm": sm_name(int(props.major), int(props.minor)),
            "total_memory_bytes": int(props.total_memory),
        }
    cudnn = torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None
    warnings: list[str] = []
    conflict = ort_conflict_warning()
    if conflict is not None:
        warnings.append(conflict)
    extras_missing = {extra: [m for m in modules if not _module_available(m)] for extra, modules in EXTRAS.items()}
    for extra, dist in _EXTRA_DISTRIBUTIONS.items():
        if distribution_version(dist) is None:
            extras_missing[extra].append(f"distribution {dist}")
    return {
        "python": platform.python_version(),
        "platform": platform_tag(),
        "torch": str(torch.__version__),
        "cuda_available": bool(cuda),
        "cuda_runtime": torch.version.cuda,
        "device_count": int(torch.cuda.device_count()) if cuda else 0,
        "device": device,
        "driver_version": driver_version() if cuda else None,
        "cudnn": int(cudnn) if cudnn is not None else None,
        "tensorrt": tensorrt_version(),
        "onnxruntime": _onnxruntime_info(),
        "extras": {extra: not missing for extra, missing in extras_missing.items()},
        "extras_missing": extras_missing,
        "warnings": warnings,
    }


def _onnxruntime_info() -> dict[str, Any] | None:
    """onnxruntime's version, providers and installed distributions, or None when it is not importable."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    try:
        ort = importlib.import_module("onnxruntime")
        providers = [str(p) for p in ort.get_available_providers()]
    except Exception:  # a broken install is reported as absent
        return None
    dists = {d: v for d in ("onnxruntime", "onnxruntime-gpu") if (v := distribution_version(d)) is not None}
    return {"version": str(getattr(ort, "__version__", "unknown")), "providers": providers, "distributions": dists}


def _module_available(name: str) -> bool:
    """True when ``name`` is on the import path (found by ``find_spec``, not imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _major_minor(version: str) -> str:
    """``"12.8.1" -> "12.8"``."""
    return ".".join(version.split(".")[:2])

"""``backend="auto"``: the fastest validated engine this machine can run, and why (issue #15 §3).

Order: TensorRT where a CUDA GPU and the ``tensorrt`` package are present; torch on CUDA where only a GPU is;
on a CPU with native bf16 (``avx512_bf16`` / ``amx_bf16``) and the ``[openvino]`` extra, the OpenVINO bf16 engine —
which must pass its image gate on the bundle first; the caller falls back to onnxruntime, saying why, when it does not
(:func:`gate_fallback`); onnxruntime on the CPU where it is installed (1.3–2.1× torch eager on the project's 2-core
CPU, `fairsample bench`); torch otherwise. Every choice comes with a one-line reason; callers print it on stderr
and record it with their output (``config.json`` → ``engine.choice``). Determinism is per backend: the same seed and
backend give the same bytes whatever the batch size (OpenVINO bf16 included: measured bitwise batch-invariant on the
project's CPU, pinned by a test), so a run records which backend it used.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any

from fairsample.core.errors import ConfigError

__all__ = ["AUTO", "BackendChoice", "choose_backend", "gate_fallback"]

AUTO = "auto"
_NO_CUDA = "`device` {device!r} is not available on this machine (no CUDA); leave --device out or use cpu."


@dataclass(frozen=True)
class BackendChoice:
    """The engine a run uses: ``backend`` on ``device``, asked for as ``requested``, with the ``reason``."""

    requested: str
    backend: str
    device: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)

    def line(self) -> str:
        """The stderr line, e.g. ``backend: onnxruntime on cpu (auto: no CUDA GPU; ...)``."""
        how = f"{self.requested}: {self.reason}" if self.requested == AUTO else self.reason
        return f"backend: {self.backend} on {self.device} ({how})"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_backend(requested: str = AUTO, device: str | None = None) -> BackendChoice:
    """Resolve ``requested`` (``"auto"`` or a backend name) to a backend and device.

    Args:
        requested: ``"auto"``, or a backend name (``"torch"`` / ``"onnxruntime"`` / ``"tensorrt"`` / ``"openvino"``;
            returned as asked).
        device: ``None`` (auto may pick a GPU), ``"cpu"`` (auto stays on the CPU) or a CUDA device (auto picks a
            GPU backend for it).

    Returns:
        :class:`BackendChoice`.

    Raises:
        ConfigError: ``device`` names a CUDA device on a machine without CUDA.

    Example:
        >>> c = choose_backend("auto", device="cpu")
        >>> c.backend in ("openvino", "onnxruntime", "torch"), c.device
        (True, 'cpu')
        >>> choose_backend("torch", "cpu").reason
        'asked for with --backend / backend='
    """
    if requested != AUTO:
        return BackendChoice(requested, requested, device or "cpu", "asked for with --backend / backend=")
    wants_gpu = device is None or str(device).startswith("cuda")
    if wants_gpu:
        import torch

        if torch.cuda.is_available():
            gpu = device if device is not None and str(device).startswith("cuda") else "cuda"
            if _installed("tensorrt"):
                return BackendChoice(AUTO, "tensorrt", gpu, "a CUDA GPU and TensorRT are present")
            return BackendChoice(AUTO, "torch", gpu, "a CUDA GPU is present; TensorRT is not installed")
        if device is not None:
            raise ConfigError(_NO_CUDA.format(device=device))
    if _installed("openvino"):
        from fairsample.engines.openvino_engine import bf16_supported

        bf16, why = bf16_supported()
        if bf16:
            return BackendChoice(
                AUTO,
                "openvino",
                "cpu",
                f"no CUDA GPU; {why} and OpenVINO is installed: its bf16 engine, used after it passes the image gate "
                "on this model (samples within 0.5 uint8 levels of float32 on average; else onnxruntime)",
            )
    if _installed("onnxruntime"):
        return BackendChoice(
            AUTO,
            "onnxruntime",
            "cpu",
            "no CUDA GPU; onnxruntime is the fastest validated CPU engine (the U-Net is exported and validated once, "
            "then loaded from the cache)",
        )
    return BackendChoice(
        AUTO, "torch", "cpu", "no CUDA GPU and onnxruntime is not installed (pip install 'fairsample[ort]')"
    )


def gate_fallback(choice: BackendChoice, error: Exception) -> BackendChoice:
    """The choice after ``auto``'s OpenVINO bf16 engine failed its image gate (or could not load): onnxruntime where
    installed, else torch, with the failure in the reason (callers print the line and record it).

    Args:
        choice: the ``auto`` choice that named ``"openvino"``.
        error: the :class:`~fairsample.core.errors.ValidationFailed` / load error (its first line is kept).

    Example:
        >>> c = BackendChoice(AUTO, "openvino", "cpu", "no CUDA GPU; ...")
        >>> gate_fallback(c, ValueError("gate failed: mean 0.9 levels")).reason.startswith("no CUDA GPU; the bf16")
        True
    """
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:240]
    backend = "onnxruntime" if _installed("onnxruntime") else "torch"
    return BackendChoice(
        choice.requested,
        backend,
        "cpu",
        f"no CUDA GPU; the bf16 OpenVINO engine was not used ({first}), so the float32 {backend} engine",
    )

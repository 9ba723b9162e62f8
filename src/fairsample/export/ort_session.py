"""ONNX Runtime sessions with the project's speed options, shared by export validation and the onnxruntime engine.

It sits in the export layer (below engines) so that validating an exported file does not import the engine layer.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from fairsample.core.errors import ConfigError, EngineLoadError

ORT_EXTRA_HINT = "The onnxruntime engine needs onnxruntime: pip install 'fairsample[ort]' (or 'fairsample[gpu]')."
_NO_CUDA_EP = (
    "`device` {device!r} needs onnxruntime's CUDAExecutionProvider and a GPU, but the providers are {providers}; "
    "install 'fairsample[gpu]' (not together with [ort]) or use device='cpu'."
)
_BAD_DEVICE = "`device` must be 'cpu' or 'cuda[:k]', got {device!r}."
_BAD_THREADS = "`intra_op_threads` must be a positive int or None, got {value!r}."
_LOAD_FAILED = "onnxruntime could not load {path}: {reason}."


def import_onnxruntime() -> Any:
    """Import onnxruntime or raise an ImportError naming the extra (STYLE.md §8)."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(ORT_EXTRA_HINT) from err
    return onnxruntime


def physical_cores() -> int:
    """Physical CPU cores available to this process (distinct (package, core) ids on Linux; else logical count)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        return max(1, os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        cpu = phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in [*f, ""]:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and cpu is not None:
                    if cpu in allowed:
                        cores.add((phys or "0", core or str(cpu)))
                    cpu = phys = core = None
    except OSError:
        cores = set()
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def create_session(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    intra_op_threads: int | None = None,
    stop_spinning: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """An ``InferenceSession`` for ``path`` with speed-oriented options, plus those options as a JSON-safe dict.

    Args:
        path: the ``.onnx`` file (external data next to it is resolved by onnxruntime).
        device: ``"cpu"`` (CPU EP) or ``"cuda[:k]"`` (CUDA EP with the CPU EP as fallback for unsupported ops).
        intra_op_threads: intra-op thread count; None = physical cores.
        stop_spinning: set ``session.force_spinning_stop``: the intra-op threads spin during ``run`` but stop when
            it returns, so they do not steal cores from other sessions running next (module docstring).

    Returns:
        ``(session, options)``; ``options`` records providers, thread count and optimisation level.

    Raises:
        ImportError: onnxruntime is not installed (names the extra).
        EngineLoadError: the CUDA EP is unavailable for a CUDA device, or onnxruntime rejects the file.
    """
    ort = import_onnxruntime()
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(_BAD_DEVICE.format(device=str(device)))
    if intra_op_threads is not None and not (
        isinstance(intra_op_threads, int) and not isinstance(intra_op_threads, bool) and intra_op_threads > 0
    ):
        raise ConfigError(_BAD_THREADS.format(value=intra_op_threads))
    threads = intra_op_threads or physical_cores()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = True
    opts.log_severity_level = 3
    if stop_spinning:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if dev.type == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available or not torch.cuda.is_available():
            raise EngineLoadError(_NO_CUDA_EP.format(device=str(device), providers=available))
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise EngineLoadError(_LOAD_FAILED.format(path=path, reason=f"{type(err).__name__}: {first}")) from err
    record = {
        "providers": session.get_providers(),
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "execution_mode": "ORT_SEQUENTIAL",
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "enable_mem_pattern": True,
        "force_spinning_stop": stop_spinning,
        "onnxruntime_version": ort.__version__,
    }
    return session, record

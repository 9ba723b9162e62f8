"""The OpenVINO CPU backend: the exported, validated fp32 ONNX compiled with ``INFERENCE_PRECISION_HINT`` bf16 or f32.

Why OpenVINO. onnxruntime 1.32.0's CPU EP has no bf16 path on x86: a bf16 graph does not load (no bf16 kernels for
Conv, MatMul, Add, ReduceMax; "Could not find an implementation"), and its only bf16 fast-math switch is for ARM64.
OpenVINO's CPU plugin runs the fp32 graph in bf16 where the CPU has native bf16 (``avx512_bf16`` / AMX) and keeps the
float32 boundary (ENGINES.md §2.1), so the ONNX artifact, its cache entry and its validation report are reused as-is.

bf16 changes the images, so a bf16 engine is used only where :func:`bf16_supported` says the CPU has native bf16 and
only after :func:`image_gate` passed on the actual bundle: a small fixed plan (:data:`GATE_IMAGES_PER_CELL` images per
cell, seeds from :data:`GATE_SEED`, the bundle's recommended steps and guidance, DDIM) is generated with the float32
onnxruntime engine and with this engine, and the uint8 images must agree within :data:`GATE_MEAN_ABS_MAX` levels on
average with at most :data:`GATE_FRAC_OFF_MAX` of the pixel values off by more than :data:`GATE_OFF_LEVELS` levels.
The gate's report is cached (kind ``openvino.gate``, keyed by the ONNX entry, the OpenVINO version, the CPU model and
flags, the plan and the thresholds) and recorded in :attr:`OpenVinoEngine.manifest` (``"gate"``). Whether bf16 stays
within seed noise for fidelity is measured separately (``fairsample bench --quality``); the backend is opt-in and
``auto`` never picks it.

Measured on the embedded model (tone-digits-32, v-prediction, DDIM 25 steps, w = 1; 2-core AMD EPYC with
avx512_bf16, shared with another job; onnxruntime 1.32.0, OpenVINO 2026.4.1):

- one U-Net call at N = 8 against onnxruntime fp32: bf16 max abs diff 1.7e-2 (|ref| max 3.0), f32 2.1e-6;
- gate plan (15 cells x 2 images, 30 images of 32x32x3, ~25 s on first use, cached after): bf16 mean abs diff
  0.154 uint8 levels (worst image 0.22), max 11 levels, 0.0022 % of pixel values off by > 8 levels; f32 bitwise
  equal images (0, 0, 0). The thresholds (mean <= 0.5 levels, <= 0.1 % off by > 8) sit 3.2x and 45x above bf16's
  numbers. Gaussian noise added to every bf16 call: sigma 0.03 passes (mean 0.26), sigma 0.1 fails (mean 0.73,
  0.099 % off), sigma 0.3 fails (mean 4.75, 13 % off). An untrained epsilon tiny U-Net fails the gate in bf16
  (mean 14 levels over 4 DDIM steps: x0 amplifies its noise), so the gate is not a formality;
- images/s at B = 8 (64 images, DDIM 25 steps, w = 1, best of 2; two runs): onnxruntime fp32 (batch-parallel
  OrtEngine) 3.3 / 3.6, OpenVINO bf16 3.9 / 4.2 (1.17-1.19x), OpenVINO f32 2.4 / 2.4. Batch parallelism matters
  as for onnxruntime: with one LATENCY stream bf16 ran 3.2 images/s and f32 1.8; a bf16 call at N = 8 took 110 ms
  with one stream and 78 ms with two streams of one thread (the batch split 4 + 4).

Batch parallelism. With T threads the model is compiled with the ``THROUGHPUT`` hint (T streams, one thread each)
and N >= 2 rows are split into T contiguous parts run as concurrent infer requests; N = 1 runs on one stream.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fairsample.core.engine_spec import EngineSpec
from fairsample.core.errors import ConfigError, EngineLoadError, ValidationFailed
from fairsample.engines.onnx_graph import OnnxGraphEngine, file_bytes, graph_feeds
from fairsample.export.ort_session import physical_cores

GATE_MEAN_ABS_MAX = 0.5
"""Gate: largest mean absolute difference between the bf16 and fp32 images, in uint8 levels (bf16 measured 0.154)."""

GATE_OFF_LEVELS = 8
"""Gate: a pixel value is "off" when it differs from the fp32 image by more than this many uint8 levels."""

GATE_FRAC_OFF_MAX = 0.001
"""Gate: largest fraction of pixel values (over N x H x W x 3) that may be off (bf16 measured 0.0022 %)."""

GATE_IMAGES_PER_CELL = 2
"""Gate plan: images per cell (one seed each)."""

GATE_SEED = 900_000
"""Gate plan: image k uses a CPU generator seeded ``GATE_SEED + k``."""

OPENVINO_EXTRA_HINT = "the openvino engine needs openvino: pip install 'fairsample[openvino]'"
Precision = Literal["bf16", "f32"]
PRECISIONS: tuple[str, ...] = ("bf16", "f32")

_BAD_PRECISION = "`precision` must be 'bf16' or 'f32', got {value!r}."
_CLOSED = "this OpenVinoEngine was closed; load a new engine with load_openvino_engine(bundle, ...)."
_NO_REFIT = "OpenVINO engines cannot refit weights; load the new checkpoint with load_openvino_engine(bundle, ...)."
_NONFINITE_OUTPUT = "the OpenVINO engine produced NaN/Inf at timestep(s) {timesteps}; check the artifact."
_LOAD_FAILED = "OpenVINO could not load {path}: {reason}."
_GATE_FAILED = (
    "the {precision} OpenVINO engine failed its image gate on {bundle}: mean abs diff {mean_abs:.3f} uint8 levels "
    "(max {mean_max}), {frac_off:.3%} of pixel values off by > {levels} levels (max {frac_max:.1%}), max diff "
    "{max_abs} levels, {nonfinite} non-finite images; use backend='onnxruntime' or precision='f32'."
)
_NO_BF16 = "bf16 needs native CPU support: {reason}; use precision='f32' or backend='onnxruntime'."
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def import_openvino() -> Any:
    """Import openvino or raise an ImportError naming the ``[openvino]`` extra (STYLE.md §8)."""
    try:
        import openvino
    except ImportError as err:
        raise ImportError(OPENVINO_EXTRA_HINT, name="openvino") from err
    return openvino


def bf16_supported(cpuinfo: str | None = None, *, system: str | None = None) -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively (``avx512_bf16`` or ``amx_bf16`` in the Linux ``/proc/cpuinfo`` flags).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read from the file when None).
        system: ``platform.system()`` (for tests); only Linux is read, other systems answer "unknown" -> False.

    Returns:
        ``(supported, reason)``; the reason names the flag found or why bf16 is not used.

    Example:
        >>> bf16_supported("processor : 0\\nflags : fpu sse2 avx512f avx512_bf16\\n", system="Linux")
        (True, 'the CPU reports avx512_bf16')
        >>> bf16_supported("flags : fpu sse2 avx2\\n", system="Linux")[0]
        False
    """
    system = platform.system() if system is None else system
    if cpuinfo is None:
        if system != "Linux":
            return False, f"bf16 support is unknown on {system} (only Linux /proc/cpuinfo is read)"
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError as err:
            return False, f"bf16 support is unknown: /proc/cpuinfo is unreadable ({err.strerror})"
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    found = [f for f in _BF16_FLAGS if f in flags]
    if found:
        return True, f"the CPU reports {' and '.join(found)}"
    if not flags:
        return False, "bf16 support is unknown: no 'flags' line in /proc/cpuinfo"
    return False, "the CPU reports neither avx512_bf16 nor amx_bf16"


def _cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()


class OpenVinoEngine(OnnxGraphEngine):
    """An ONNX model compiled by OpenVINO for the CPU, behind the :class:`~fairsample.engines.Engine` API.

    Usually built by :func:`load_openvino_engine` / :func:`load_bf16_engine` (export + validation + cache + image
    gate). The boundary rules are the other engines' (:func:`~fairsample.core.engine_spec.check_inputs`): torch or
    numpy inputs on the CPU, cast to float32 once, scalar timesteps broadcast; outputs are fresh float32 tensors.

    Args:
        path: the fp32 ``.onnx`` file with I/O ``sample (N, C, H, W)``, ``timestep (N,)``, ``encoder_hidden_states
            (N, S, D)`` -> ``out_sample (N, C_out, H, W)``.
        spec: what the graph computes; its ``precision`` is set from ``precision``.
        precision: ``"bf16"`` (``INFERENCE_PRECISION_HINT`` bf16) or ``"f32"``.
        manifest: cache manifest of the artifact (key parts, versions, validation and gate reports); copied read-only.
        spatial_multiple: H and W must be multiples of this (the U-Net's downsampling factor).
        threads: CPU threads (``INFERENCE_NUM_THREADS``); None = physical cores.
        check_finite: raise :class:`~fairsample.core.errors.ValidationFailed` on NaN/Inf outputs.
        batch_parallel: split N >= 2 rows into one contiguous part per stream, run concurrently (``THROUGHPUT``
            hint, one stream and one thread per core; module docstring); None/True = on when there is more than one
            thread, False = one ``LATENCY`` stream.

    Raises:
        ImportError: openvino is missing (names the ``[openvino]`` extra).
        ConfigError: unknown ``precision``.
        EngineLoadError: the file cannot be read or compiled.
    """

    backend: Literal["openvino"] = "openvino"
    _closed_msg = _CLOSED
    _no_refit_msg = _NO_REFIT
    _nonfinite_msg = _NONFINITE_OUTPUT

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        spec: EngineSpec,
        precision: Precision = "bf16",
        manifest: Mapping[str, Any] | None = None,
        spatial_multiple: int = 1,
        threads: int | None = None,
        check_finite: bool = False,
        batch_parallel: bool | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(_BAD_PRECISION.format(value=precision))
        ov = import_openvino()
        self.path = Path(path)
        self.device = torch.device("cpu")
        self.spec = replace(spec, precision="bf16" if precision == "bf16" else "fp32")
        self.precision = precision
        self.spatial_multiple = int(spatial_multiple)
        self.check_finite = check_finite
        self.capabilities: frozenset[str] = frozenset({"dynamic_shapes"})
        self._weights_bytes = file_bytes(self.path)
        cores = int(threads) if threads is not None else physical_cores()
        streams = cores if batch_parallel is None or batch_parallel else 1
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
        if streams > 1:
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": cores})
        else:
            config["PERFORMANCE_HINT"] = "LATENCY"
            if threads is not None:
                config["INFERENCE_NUM_THREADS"] = cores
        try:
            core = ov.Core()
            self._compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        except Exception as err:  # openvino raises RuntimeError subclasses with multi-line text
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EngineLoadError(_LOAD_FAILED.format(path=self.path, reason=reason)) from err
        self._requests: list[Any] = [self._compiled.create_infer_request() for _ in range(streams)]
        self._request: Any = self._requests[0]
        compiled_precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.manifest: Mapping[str, Any] = MappingProxyType(
            {
                **dict(manifest or {}),
                "backend": self.backend,
                "device": "cpu",
                "precision": self.spec.precision,
                "prediction_type": spec.prediction_type,
                "openvino": {"version": ov.get_version(), "config": config, "inference_precision": compiled_precision},
                "batch_parallel": {"streams": streams, "threads": cores} if streams > 1 else None,
                "model_file": self.path.name,
            }
        )

    def _is_open(self) -> bool:
        return self._request is not None

    def _run(self, x: Tensor, t: Tensor, e: Tensor) -> Tensor:
        """The checked batch: contiguous parts on the streams' infer requests concurrently, or one request."""
        n = x.shape[0]
        feeds = graph_feeds(x, t, e)
        if len(self._requests) > 1 and n > 1:
            k = min(len(self._requests), n)
            bounds = [round(i * n / k) for i in range(k + 1)]
            jobs = list(zip(self._requests[:k], bounds[:-1], bounds[1:], strict=True))
            for request, a, b in jobs:
                request.start_async({name: v[a:b] for name, v in feeds.items()})
            for request, _, _ in jobs:
                request.wait()
            return torch.from_numpy(np.concatenate([request.get_output_tensor(0).data for request, _, _ in jobs]))
        result = self._request.infer(feeds)
        return torch.from_numpy(np.array(result[0], dtype=np.float32, copy=True))

    def close(self) -> None:
        """Release the compiled model and its infer request; idempotent."""
        self._request = None
        self._requests = []
        self._compiled = None


EngineFn = Callable[..., Tensor]


def gate_plan(bundle: Any, *, images_per_cell: int = GATE_IMAGES_PER_CELL) -> tuple[Tensor, Tensor | None, int]:
    """The gate's conditioning: ``(cond rows (M, S, D), uncond row (1, S, D) or None, cells)``.

    A bundle with cells and a conditioner (``bundle.cells()``, ``conditioner.cached``) gives every cell
    ``images_per_cell`` times and its null row; a bare bundle (tests) gets two seeded random cells and zeros as null.
    """
    conditioner: Any = getattr(bundle, "conditioner", None)
    if hasattr(bundle, "cells") and hasattr(conditioner, "cached"):
        cells = list(bundle.cells())
        with torch.no_grad():
            cond = conditioner.cached(cells).detach().float().cpu()
            uncond = conditioner.cached([None]).detach().float().cpu()
    else:
        seq_len = int(conditioner.seq_len)
        dim = int(bundle.unet.config.cross_attention_dim)
        cond = torch.randn(2, seq_len, dim, generator=torch.Generator().manual_seed(GATE_SEED))
        uncond = torch.zeros(1, seq_len, dim)
    return cond.repeat_interleave(images_per_cell, dim=0), uncond, cond.shape[0]


@torch.no_grad()
def gate_images(
    engine: EngineFn,
    bundle: Any,
    cond: Tensor,
    uncond: Tensor | None,
    *,
    scheduler: Any,
    steps: int,
    guidance_scale: float,
) -> Tensor:
    """The gate plan's uint8 images ``(M, C, H, W)``: one batched DDIM-style diffusers loop, packed CFG when w != 1.

    Image k starts from ``randn`` of a CPU generator seeded :data:`GATE_SEED` + k (STYLE.md rule 3).
    """
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(steps)
    m = cond.shape[0]
    c = int(bundle.unet.config.in_channels)
    size = bundle.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.cat([torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(GATE_SEED + k)) for k in range(m)])
    x = x * float(sched.init_noise_sigma)
    guided = guidance_scale != 1.0 and uncond is not None
    rows = torch.cat([uncond.expand(m, -1, -1), cond]) if guided else cond  # type: ignore[union-attr]
    for t in sched.timesteps:
        # 1. scale input
        model_input = sched.scale_model_input(x, t)
        # 2. engine call
        ts = torch.full((rows.shape[0],), float(t))
        pred = engine(torch.cat([model_input, model_input]) if guided else model_input, ts, rows)
        # 3. guidance
        if guided:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        # 4. scheduler step
        x = sched.step(pred, t, x).prev_sample
    decode = getattr(bundle, "decode", None)
    images = decode(x) if callable(decode) and getattr(bundle, "vae", None) is not None else x
    return ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def compare_images(candidate: Tensor, reference: Tensor) -> dict[str, Any]:
    """Per-pixel agreement of two uint8 image batches and the gate verdict (module constants)."""
    diff = (candidate.to(torch.int16) - reference.to(torch.int16)).abs().float()
    per_image = diff.flatten(1).mean(1)
    mean_abs = float(diff.mean())
    frac_off = float((diff > GATE_OFF_LEVELS).float().mean())
    return {
        "passed": mean_abs <= GATE_MEAN_ABS_MAX and frac_off <= GATE_FRAC_OFF_MAX,
        "mean_abs": round(mean_abs, 4),
        "max_abs": int(diff.max()),
        "frac_off": round(frac_off, 6),
        "worst_image_mean_abs": round(float(per_image.max()), 4),
        "thresholds": {
            "mean_abs_max": GATE_MEAN_ABS_MAX,
            "off_levels": GATE_OFF_LEVELS,
            "frac_off_max": GATE_FRAC_OFF_MAX,
        },
    }


def image_gate(
    bundle: Any,
    candidate: EngineFn,
    reference: EngineFn,
    *,
    scheduler: Any = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    images_per_cell: int = GATE_IMAGES_PER_CELL,
) -> dict[str, Any]:
    """Generate the gate plan with ``reference`` (float32) and ``candidate``; compare the uint8 images.

    Args:
        bundle: the model bundle (``.unet``, ``.scheduler``; cells/conditioner/decode when present).
        candidate: the engine under test (any callable with the engine signature).
        reference: the float32 engine (onnxruntime or torch).
        scheduler: a diffusers scheduler; None = DDIM over the bundle's schedule config.
        steps: inference steps; None = the bundle's recommended ``sampling.steps`` (else 25).
        guidance_scale: CFG scale; None = the bundle's recommended ``sampling.guidance_scale`` (else 1.0).
        images_per_cell: images per cell (fixed seeds from :data:`GATE_SEED`).

    Returns:
        A JSON-safe report: ``passed``, ``mean_abs``/``max_abs`` (uint8 levels), ``frac_off``, the thresholds, the
        plan (scheduler, steps, guidance, cells, images, seed) and ``nonfinite`` (candidate outputs with NaN/Inf).
    """
    from diffusers import DDIMScheduler

    defaults = bundle.sampling_defaults() if hasattr(bundle, "sampling_defaults") else {}
    steps = int(steps if steps is not None else defaults.get("steps", 25))
    guidance_scale = float(guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 1.0))
    if scheduler is None:
        scheduler = DDIMScheduler.from_config(bundle.scheduler.config) if hasattr(bundle, "scheduler") else None
        if scheduler is None:
            scheduler = DDIMScheduler(prediction_type=bundle.prediction_type)
    cond, uncond, cells = gate_plan(bundle, images_per_cell=images_per_cell)
    nonfinite = 0

    def checked(*args: Any) -> Tensor:
        nonlocal nonfinite
        pred = candidate(*args)
        nonfinite += int((~torch.isfinite(pred).flatten(1).all(1)).sum())
        return torch.nan_to_num(pred)

    kw = dict(scheduler=scheduler, steps=steps, guidance_scale=guidance_scale)
    ref = gate_images(reference, bundle, cond, uncond, **kw)  # type: ignore[arg-type]
    got = gate_images(checked, bundle, cond, uncond, **kw)  # type: ignore[arg-type]
    report = compare_images(got, ref)
    report["passed"] = bool(report["passed"] and nonfinite == 0)
    report["nonfinite"] = nonfinite
    report["plan"] = {
        "scheduler": type(scheduler).__name__,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "cells": cells,
        "images": int(cond.shape[0]),
        "seed": GATE_SEED,
        "conditioning_sha256": hashlib.sha256(cond.numpy().tobytes()).hexdigest()[:16],
    }
    return report


def load_openvino_engine(
    bundle: Any,
    *,
    precision: Precision = "bf16",
    cache_dir: str | os.PathLike[str] | None = None,
    seq_len: int | None = None,
    max_batch: int = 256,
    max_size: int = 512,
    exporters: tuple[str, ...] | None = None,
    threads: int | None = None,
    check_finite: bool = False,
    scheduler: Any = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
) -> OpenVinoEngine:
    """Export/validate/cache the fp32 ONNX (as the onnxruntime backend does), compile it with OpenVINO and gate it.

    The image gate (:func:`image_gate` against the float32 onnxruntime engine, torch when onnxruntime is missing)
    runs on first use and its passing report is cached (kind ``openvino.gate``); it is in ``manifest["gate"]``.

    Args:
        bundle: a model bundle (``.unet``, ``.prediction_type``, ``.conditioner.seq_len`` or ``seq_len=``).
        precision: ``"bf16"`` (needs :func:`bf16_supported`) or ``"f32"``.
        cache_dir: the artifact store (default ``$FAIRSAMPLE_CACHE_DIR`` or ``~/.cache/fairsample/engines``).
        seq_len, max_batch, max_size, exporters: as for the onnxruntime backend (ONNX export and its cache key).
        threads: OpenVINO ``INFERENCE_NUM_THREADS``; None = all cores.
        check_finite: raise on NaN/Inf outputs at every call.
        scheduler, steps, guidance_scale: the gate plan's sampling (None = the bundle's recommendation, DDIM).

    Returns:
        A gated :class:`OpenVinoEngine`.

    Raises:
        ImportError: openvino is missing (names ``pip install 'fairsample[openvino]'``).
        ConfigError: unknown ``precision``, or bf16 on a CPU without native bf16 (the message gives the reason).
        ValidationFailed: the ONNX validation or the image gate failed (the message gives the measured numbers).
    """
    from fairsample.engines._ort_build import prepare_onnx
    from fairsample.export.onnx_export import spatial_multiple

    if precision not in PRECISIONS:
        raise ConfigError(_BAD_PRECISION.format(value=precision))
    ov = import_openvino()
    if precision == "bf16":
        ok, reason = bf16_supported()
        if not ok:
            raise ConfigError(_NO_BF16.format(reason=reason))
    cache, entry, manifest, spec = prepare_onnx(
        bundle,
        cache_dir=None if cache_dir is None else Path(cache_dir),
        seq_len=seq_len,
        max_batch=max_batch,
        max_size=max_size,
        exporters=exporters,
    )
    path = entry / manifest["model_file"]
    multiple = spatial_multiple(bundle.unet)
    engine = OpenVinoEngine(
        path, spec=spec, precision=precision, manifest=manifest, spatial_multiple=multiple, threads=threads
    )
    _, cpu_flags = bf16_supported()
    parts = {
        "kind": "openvino.gate",
        "parent": manifest["key"],
        "openvino": ov.get_version(),
        "precision": precision,
        "cpu": _cpu_name(),
        "cpu_bf16": cpu_flags,
        "plan": {"scheduler": _scheduler_desc(bundle, scheduler), "steps": steps, "guidance_scale": guidance_scale},
        "images_per_cell": GATE_IMAGES_PER_CELL,
        "seed": GATE_SEED,
        "thresholds": [GATE_MEAN_ABS_MAX, GATE_OFF_LEVELS, GATE_FRAC_OFF_MAX],
        "conditioning": _conditioning_hash(bundle),
    }

    def build(tmp: Path) -> dict[str, Any]:
        reference = _reference_engine(bundle, path, spec, multiple)
        try:
            report = image_gate(
                bundle, engine, reference, scheduler=scheduler, steps=steps, guidance_scale=guidance_scale
            )
        finally:
            close = getattr(reference, "close", None)
            if callable(close):
                close()
        report["reference"] = getattr(reference, "backend", "torch")
        if not report["passed"]:
            raise ValidationFailed(
                _GATE_FAILED.format(
                    precision=precision,
                    bundle=getattr(bundle, "bundle_id", "the bundle"),
                    mean_abs=report["mean_abs"],
                    mean_max=GATE_MEAN_ABS_MAX,
                    frac_off=report["frac_off"],
                    levels=GATE_OFF_LEVELS,
                    frac_max=GATE_FRAC_OFF_MAX,
                    max_abs=report["max_abs"],
                    nonfinite=report["nonfinite"],
                )
            )
        return {"report": report}

    try:
        _, gate_manifest = cache.get_or_build(parts, build)
    except BaseException:
        engine.close()
        raise
    engine.manifest = MappingProxyType({**engine.manifest, "gate": gate_manifest["report"]})
    if check_finite:
        engine.check_finite = True
    return engine


def load_bf16_engine(bundle: Any, **options: Any) -> OpenVinoEngine:
    """:func:`load_openvino_engine` with ``precision="bf16"``: refused (ConfigError with the reason) where the CPU
    lacks native bf16, :class:`~fairsample.core.errors.ValidationFailed` (with the measured numbers) when the image
    gate fails."""
    return load_openvino_engine(bundle, precision="bf16", **options)


def _conditioning_hash(bundle: Any) -> str:
    """sha256 (16 hex) of the gate plan's conditioning rows: the gate key follows the bundle's conditioner."""
    cond, uncond, _ = gate_plan(bundle, images_per_cell=1)
    h = hashlib.sha256(cond.numpy().tobytes())
    if uncond is not None:
        h.update(uncond.numpy().tobytes())
    return h.hexdigest()[:16]


def _scheduler_desc(bundle: Any, scheduler: Any) -> dict[str, Any]:
    """The gate scheduler's class and config for the cache key (the bundle's schedule when ``scheduler`` is None)."""
    source = scheduler if scheduler is not None else getattr(bundle, "scheduler", None)
    config = {k: repr(v) for k, v in dict(getattr(source, "config", None) or {}).items()}
    return {"class": type(scheduler).__name__ if scheduler is not None else "DDIMScheduler", "config": config}


def _reference_engine(bundle: Any, path: Path, spec: EngineSpec, multiple: int) -> Any:
    """The gate's float32 reference: onnxruntime over the same ONNX file, else the torch engine."""
    try:
        from fairsample.engines.ort_engine import OrtEngine

        return OrtEngine(path, spec=spec, spatial_multiple=multiple)
    except ImportError:
        from fairsample.engines.torch_engine import TorchEngine

        return TorchEngine.from_bundle(bundle)

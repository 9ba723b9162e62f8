"""GPU check (issue #15 item 5): torch on CUDA at fp32 / fp16 / bf16 — image gate against CPU float32, and images/s.

One prepared script for a lent GPU machine (sized for <= 10 minutes on one H200; torch with CUDA, no internet, no
TensorRT — the TensorRT backend is deliberately left out):

    python benchmarks/gpu_check.py --output out/bench/gpu_check.json            # the full check
    python benchmarks/gpu_check.py --quick                                      # smoke run: 8 images, B = 1 and 8
    python benchmarks/gpu_check.py --allow-cpu --quick                          # no GPU: the CPU path (tests)

What it does, in order:

1. Machine facts (GPU name and capability, torch / CUDA / cuDNN versions, TF32 flags), and one probe
   (``probes.torch_engine_device_cuda``): does a torch engine built with ``device="cuda"`` — the string
   ``--backend auto`` passes — accept tensors on ``cuda:0``? (``torch.device("cuda:0") != torch.device("cuda")``;
   the engines' boundary now compares with ``core.engine_spec.same_device``, untested on a GPU until this runs.) The
   script itself runs on ``cuda:<current index>`` either way.
2. The reference: the embedded model (:meth:`ModelBundle.load_default`) sampled by ``FairSamplePipeline`` with the
   torch engine on the CPU in float32 — one plan of ``--images`` (cell, seed) items (cells round-robin over the
   model's cells, seeds 0..N-1), the bundle's sampling defaults (its scheduler, steps and guidance scale) unless
   ``--steps`` / ``--guidance-scale`` say otherwise.
3. Per precision (float32, float16, bfloat16 on CUDA): a fresh bundle, ``load_engine(bundle, "torch",
   device="cuda:<i>", dtype=...)``, the same plan, and the gate below against the reference; then the same plan
   through the CUDA-graph engine, gated too and compared with eager (``max_abs_vs_eager``; 0 expected: same
   kernels). The sampler loop runs on the GPU too; "float32" there means torch's defaults, under which cuDNN
   convolutions may use TF32 (``machine.tf32`` records the flags).
4. Per precision, mode (``eager``, ``cuda_graph``) and batch size (1, 8, 32, 128): images/s of sampling one batch of
   B images (the pipeline's whole per-batch work: noise, sampler loop, decode to uint8), one warm-up run (it also
   captures the graphs), then the best of ``--repeats`` runs, each between two ``torch.cuda.synchronize()``.

CUDA graphs. The torch engine has no CUDA-graph option (``engines/torch_engine.py``: eager diffusers forward only;
``cuda_graphs`` is a TensorRT option), so this script wraps it: :class:`GraphedEngine` captures the engine's own
forward with ``torch.cuda.CUDAGraph`` once per input shape (N, H, W, S) — the sampler calls it with N = B, or 2B
with CFG — into static float32 buffers, and replays it. Chosen over ``torch.compile(mode="reduce-overhead")``
because (a) it captures exactly the engine being gated (the batch-invariant row-wise mode included, a
``TorchFunctionMode`` that dynamo would have to trace through or break on), with no Inductor kernels that would
change the numbers; (b) capture costs one forward per shape, where compiling the U-Net would cost minutes of the
10-minute budget per (dtype, shape); (c) nothing is downloaded or built (no Triton cache needed).

The gate (constants below), per precision, against the CPU float32 images of the same plan in uint8:
``mean_abs <= 2.0`` and at most 1 % of pixels off by more than 8 (a pixel is off when any channel is). Why: the
project's engine parity gate is 2/255 per value (docs/decisions.md); end to end over 25 sampler steps the U-Net's
rounding error is amplified, so 2 levels are allowed on the *mean* — a systematic error (a wrong cast, a
low-precision norm) moves the mean well past it even when each pixel moves a little. Diffusion trajectories are
chaotic at a few pixels on stroke edges, where one pixel can flip by 100+ levels while the image is the same; so
``max_abs`` is reported, not gated, and up to 1 % of pixels may be off by more than 8 levels (about 3 % of the
range, the point where a difference is visible side by side). More than 1 % means digits or tones that changed,
which the project's judges would score differently. NaN/Inf outputs decode to garbage and fail on the mean.

``--allow-cpu``: without CUDA, run every part that can run without it instead of exiting with code 2: device cpu,
float32 and bfloat16, eager only (no CUDA graphs), tiny sizes (2 images, 2 steps, B = 1 and 2, unless given).
``--device cpu`` does the same on a machine that has CUDA.

Output: ONE JSON document on stdout — ``benchmark``, ``machine`` (``gpu``: name, capability, memory_gib; torch,
cuda, cudnn, tf32, versions), ``settings``, ``gate`` (the constants), ``reference`` (images, seconds), ``probes``,
``precisions`` (per dtype: ``passed``, ``gate`` and ``cuda_graph_gate`` = {max_abs, mean_abs, frac_off, passed
[, max_abs_vs_eager]}, ``images_per_s`` = {mode: {"B": images/s}}, ``errors``), ``skipped``, ``passed`` (every
precision's gates), ``seconds`` (and in ``--output``); progress lines on stderr. Exit code 0 even when a gate
fails (``"passed": false`` in the JSON); 2 when CUDA is absent and neither ``--allow-cpu`` nor ``--device cpu`` is
given. A failure inside one entry (e.g. a capture error) is recorded in that entry's ``errors`` and the run goes on;
``--budget-s`` (default 540) skips the remaining timings once it is spent (listed in ``skipped``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fairsample.core.engine_spec import check_inputs, check_out
from fairsample.engines import Engine, load_engine
from fairsample.generation.pipeline import FairSamplePipeline
from fairsample.models.bundle import ModelBundle, library_versions

GATE_MEAN_ABS_MAX = 2.0  # uint8 levels: mean |image - reference| over every value (H x W x 3) of the plan
GATE_OFF_LEVELS = 8  # uint8 levels: a pixel is "off" when any channel differs by more than this
GATE_FRAC_OFF_MAX = 0.01  # at most 1 % of pixels may be off
GATE_REFERENCE = "torch engine, cpu, float32"

GPU_PRECISIONS = ("float32", "float16", "bfloat16")
CPU_PRECISIONS = ("float32", "bfloat16")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("eager", "cuda_graph")
BATCH_SIZES = (1, 8, 32, 128)
QUICK_BATCH_SIZES = (1, 8)
CPU_BATCH_SIZES = (1, 2)
IMAGES, QUICK_IMAGES, CPU_IMAGES = 64, 8, 2
CPU_STEPS = 2
EXIT_NO_CUDA = 2
_NO_CUDA = "CUDA is not available here; pass --allow-cpu (or --device cpu) to run the CPU path of this check."


def _log(line: str) -> None:
    print(f"[gpu_check] {line}", file=sys.stderr, flush=True)


def gate_images(reference: np.ndarray, images: np.ndarray) -> dict[str, Any]:
    """Compare two ``(N, H, W, 3)`` uint8 image sets of the same plan against the gate constants.

    Args:
        reference: the CPU float32 images.
        images: the images under test, same shape.

    Returns:
        ``{"max_abs": int, "mean_abs": float, "frac_off": float, "passed": bool}``: max and mean absolute
        difference over every value in uint8 levels, and the fraction of pixels whose largest channel difference
        exceeds :data:`GATE_OFF_LEVELS`.

    Raises:
        ValueError: the shapes differ or the arrays are not uint8.

    Example:
        >>> a = np.zeros((1, 2, 2, 3), np.uint8)
        >>> gate_images(a, a)
        {'max_abs': 0, 'mean_abs': 0.0, 'frac_off': 0.0, 'passed': True}
    """
    if reference.shape != images.shape or reference.dtype != np.uint8 or images.dtype != np.uint8:
        raise ValueError(
            f"gate needs two uint8 arrays of one shape, got {reference.dtype} {reference.shape} and "
            f"{images.dtype} {images.shape}"
        )
    diff = np.abs(reference.astype(np.int16) - images.astype(np.int16))
    mean_abs = float(diff.mean()) if diff.size else 0.0
    frac_off = float((diff.max(axis=-1) > GATE_OFF_LEVELS).mean()) if diff.size else 0.0
    return {
        "max_abs": int(diff.max()) if diff.size else 0,
        "mean_abs": round(mean_abs, 4),
        "frac_off": round(frac_off, 6),
        "passed": bool(mean_abs <= GATE_MEAN_ABS_MAX and frac_off <= GATE_FRAC_OFF_MAX),
    }


class GraphedEngine:
    """A CUDA engine whose forward is captured once per input shape with ``torch.cuda.CUDAGraph`` and replayed.

    Wraps an engine (here the torch engine) and keeps its API: float32 boundary, ``out=``, ``spec``, ``supports``.
    Each shape gets static float32 input buffers and its own graph (and memory pool, so graphs of different shapes
    never overwrite each other's output); a call copies the inputs in, replays, and returns a copy of the output.
    """

    backend = "torch"

    def __init__(self, engine: Engine) -> None:
        if engine.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA engine, got device {engine.device}")
        self.engine = engine
        self.device = engine.device
        self.spec = engine.spec
        self.capabilities = frozenset(engine.capabilities) | {"cuda_graphs"}
        self.manifest = {**dict(engine.manifest), "cuda_graphs": "torch.cuda.CUDAGraph per shape (gpu_check.py)"}
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, Tensor]] = {}

    def supports(self, n: int, height: int, width: int) -> bool:
        """The wrapped engine's answer."""
        return self.engine.supports(n, height, width)

    @property
    def captured(self) -> int:
        """Number of shapes captured so far."""
        return len(self._graphs)

    def _capture(self, x: Tensor, t: Tensor, e: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, Tensor]:
        """Warm up on a side stream, then capture one forward into static buffers (PyTorch CUDA-graph recipe)."""
        sx, st, se = x.clone(), t.clone(), e.clone()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.engine(sx, st, se)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sout = self.engine(sx, st, se)
        return graph, sx, st, se, sout

    @torch.no_grad()
    def __call__(
        self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, *, out: Tensor | None = None
    ) -> Tensor:
        """Copy the inputs into the shape's static buffers (capturing it on first use), replay, return a copy."""
        x, t, e = check_inputs(sample, timestep, encoder_hidden_states, spec=self.spec, device=self.device)
        n, _, h, w = x.shape
        check_out(out, (n, self.spec.out_channels, h, w), self.device)
        key = (n, h, w, int(e.shape[1]))
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, t, e)
        graph, sx, st, se, sout = self._graphs[key]
        sx.copy_(x)
        st.copy_(t)
        se.copy_(e)
        graph.replay()
        return sout.clone() if out is None else out.copy_(sout)

    def close(self) -> None:
        """Drop every graph and its buffers; idempotent (the wrapped engine stays open)."""
        self._graphs.clear()


def machine_info(device: str) -> dict[str, Any]:
    """GPU name, capability and memory, torch / CUDA / cuDNN versions, TF32 flags, CPU threads."""
    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "versions": library_versions(),
        "gpu": None,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": torch.cuda.get_device_name(0),
            "capability": "sm_{}{}".format(*torch.cuda.get_device_capability(0)),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
        }
        info["tf32"] = {
            "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn": bool(torch.backends.cudnn.allow_tf32),
        }
    return info


def probe_device_cuda() -> str:
    """``"ok"``, or the error, when a torch engine built with ``device="cuda"`` (no index, as ``--backend auto``
    passes it) is called with tensors on ``cuda:0``: ``torch.device("cuda:0") != torch.device("cuda")``, and the
    engine boundary (``check_inputs``) compares devices with ``!=``. The rest of this script uses ``cuda:<index>``."""
    bundle, engine = ModelBundle.load_default(), None
    try:
        engine = load_engine(bundle, "torch", device="cuda")
        c, h, w = bundle.latent_shape
        e = bundle.conditioner.cached([bundle.cells()[0]]).to("cuda")
        engine(torch.zeros(1, c, h, w, device="cuda"), torch.tensor([10.0], device="cuda"), e)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the probe reports what happened
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        if engine is not None:
            engine.close()


def _plan(bundle: ModelBundle, n: int) -> tuple[list[Any], list[int]]:
    """``n`` (cell, seed) items: cells round-robin over the model's cells, seeds 0..n-1."""
    cells = bundle.cells()
    return [cells[i % len(cells)] for i in range(n)], list(range(n))


def _generate(pipe: FairSamplePipeline, cells: list[Any], seeds: list[int], cfg: dict[str, Any], batch: int):
    """The plan's images ``(N, H, W, 3)`` uint8."""
    out = pipe(cells, seeds, batch_size=batch, output_type="np", **cfg)
    return np.rint(np.asarray(out.images) * 255.0).astype(np.uint8)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _images_per_s(
    pipe: FairSamplePipeline, bundle: ModelBundle, batch: int, cfg: dict[str, Any], repeats: int, device: str
) -> float:
    """Images/s of one batch of ``batch`` images: one warm-up run, then the best of ``repeats`` synchronized runs."""
    cells, seeds = _plan(bundle, batch)
    _generate(pipe, cells, seeds, cfg, batch)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        pipe(cells, seeds, batch_size=batch, output_type="np", **cfg)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return round(batch / best, 3)


def _guarded(errors: list[str], what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; on an exception record ``what: error`` (one line) and return None, so one failure ends nothing."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a one-shot device run records every failure and goes on
        line = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        _log(f"error: {line}")
        errors.append(line)
        return None


def _parse_sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_IMAGES} images, batch sizes 1 and 8")
    p.add_argument("--allow-cpu", action="store_true", help="without CUDA, run the CPU path instead of exiting 2")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the CPU path even with CUDA")
    p.add_argument("--images", type=int, default=None, help=f"gate plan size (default {IMAGES}; quick {QUICK_IMAGES})")
    p.add_argument("--batch-sizes", type=_parse_sizes, default=None, help="default 1,8,32,128 (quick: 1,8)")
    p.add_argument("--gate-batch-size", type=int, default=32, help="batch size the gate plan is generated in")
    p.add_argument("--steps", type=int, default=None, help="default: the bundle's (25)")
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the bundle's")
    p.add_argument("--precisions", default=None, help="comma list of float32,float16,bfloat16 (default: all)")
    p.add_argument("--modes", default=None, help="comma list of eager,cuda_graph (default: both on CUDA)")
    p.add_argument("--no-batch-invariant", action="store_true", help="plain batched forward (engine option off)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per entry; the best is kept")
    p.add_argument("--budget-s", type=float, default=540.0, help="skip the remaining timings after this many s")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the check; print the JSON document on stdout and return it (exit 2 without CUDA, see the docstring)."""
    t_start = time.perf_counter()
    args = _parser().parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        if not args.allow_cpu:
            _log(_NO_CUDA)
            raise SystemExit(EXIT_NO_CUDA)
        _log("CUDA is not available: --allow-cpu, running the CPU path (tiny sizes, no CUDA graphs)")
        device = "cpu"
    on_cpu = device == "cpu"
    if not on_cpu:
        device = f"cuda:{torch.cuda.current_device()}"  # an explicit index: see probe_device_cuda
    precisions = (args.precisions or ",".join(CPU_PRECISIONS if on_cpu else GPU_PRECISIONS)).split(",")
    modes = (args.modes or ("eager" if on_cpu else ",".join(MODES))).split(",")
    for name in precisions:
        if name not in DTYPES:
            raise SystemExit(f"--precisions: unknown {name!r}; use {','.join(DTYPES)}")
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"--modes: unknown {mode!r}; use {','.join(MODES)}")
    if on_cpu and "cuda_graph" in modes:
        _log("cuda_graph needs CUDA: dropped on the CPU path")
        modes = [m for m in modes if m != "cuda_graph"]
    if args.batch_sizes is not None:
        batch_sizes = args.batch_sizes
    else:
        batch_sizes = list(CPU_BATCH_SIZES if on_cpu else QUICK_BATCH_SIZES if args.quick else BATCH_SIZES)
    n_images = args.images or (CPU_IMAGES if on_cpu else QUICK_IMAGES if args.quick else IMAGES)
    batch_invariant = not args.no_batch_invariant

    ref_bundle = ModelBundle.load_default()
    cfg: dict[str, Any] = {}
    if args.steps is not None or on_cpu:
        cfg["steps"] = args.steps or CPU_STEPS
    if args.guidance_scale is not None:
        cfg["guidance_scale"] = args.guidance_scale
    ref_pipe = FairSamplePipeline(ref_bundle, engine=load_engine(ref_bundle, "torch", device="cpu"), device="cpu")
    resolved = ref_pipe.default_config().replace(**cfg)
    gate_batch = min(args.gate_batch_size, n_images)
    doc: dict[str, Any] = {
        "benchmark": "gpu_check",
        "machine": machine_info(device),
        "settings": {
            "device": device,
            "cpu_fallback": on_cpu,
            "quick": args.quick,
            "model": ref_bundle.bundle_id,
            "images": n_images,
            "steps": resolved.steps,
            "guidance_scale": resolved.guidance_scale,
            "scheduler": resolved.scheduler,
            "sampler": resolved.sampler,
            "precisions": precisions,
            "modes": modes,
            "batch_sizes": batch_sizes,
            "gate_batch_size": gate_batch,
            "repeats": args.repeats,
            "batch_invariant": batch_invariant,
        },
        "gate": {
            "reference": GATE_REFERENCE,
            "mean_abs_max": GATE_MEAN_ABS_MAX,
            "off_levels": GATE_OFF_LEVELS,
            "frac_off_max": GATE_FRAC_OFF_MAX,
            "rule": "passed = mean_abs <= mean_abs_max and frac_off <= frac_off_max (uint8 levels; max_abs reported)",
        },
        "reference": {},
        "probes": {} if on_cpu else {"torch_engine_device_cuda": probe_device_cuda()},
        "precisions": {},
        "skipped": [],
    }
    cells, seeds = _plan(ref_bundle, n_images)
    _log(f"reference: {n_images} images on cpu float32, {resolved.steps} steps, batch {gate_batch}")
    t0 = time.perf_counter()
    reference = _generate(ref_pipe, cells, seeds, cfg, gate_batch)
    doc["reference"] = {"images": n_images, "seconds": round(time.perf_counter() - t0, 3)}

    for name in precisions:
        entry: dict[str, Any] = {"dtype": name, "device": device, "passed": False, "gate": None, "errors": []}
        if "cuda_graph" in modes:
            entry["cuda_graph_gate"] = None
        entry["images_per_s"] = {m: {} for m in modes}
        doc["precisions"][name] = entry
        errors = entry["errors"]
        _log(f"{name}: building the torch engine on {device}")
        bundle = ModelBundle.load_default()  # a fresh bundle: the engine moves its U-Net to device/dtype in place
        engine = _guarded(
            errors,
            "engine",
            lambda bundle=bundle, name=name: load_engine(
                bundle, "torch", device=device, dtype=DTYPES[name], batch_invariant=batch_invariant
            ),
        )
        if engine is None:
            continue
        pipes = {"eager": FairSamplePipeline(bundle, engine=engine, device=device)}
        if "cuda_graph" in modes:
            pipes["cuda_graph"] = FairSamplePipeline(bundle, engine=GraphedEngine(engine), device=device)
        _log(f"{name}: gate plan ({n_images} images) eager")
        images = _guarded(errors, "gate eager", lambda p=pipes["eager"]: _generate(p, cells, seeds, cfg, gate_batch))
        if images is not None:
            entry["gate"] = gate_images(reference, images)
            _log(f"{name}: gate {entry['gate']}")
        if "cuda_graph" in modes:
            _log(f"{name}: gate plan ({n_images} images) cuda_graph")
            graphed = _guarded(
                errors, "gate cuda_graph", lambda p=pipes["cuda_graph"]: _generate(p, cells, seeds, cfg, gate_batch)
            )
            if graphed is not None:
                entry["cuda_graph_gate"] = gate_images(reference, graphed)
                if images is not None:
                    entry["cuda_graph_gate"]["max_abs_vs_eager"] = gate_images(images, graphed)["max_abs"]
                _log(f"{name}: cuda_graph gate {entry['cuda_graph_gate']}")
        gates = [entry["gate"]] + ([entry["cuda_graph_gate"]] if "cuda_graph" in modes else [])
        entry["passed"] = all(g is not None and g["passed"] for g in gates)
        for mode in modes:
            for b in batch_sizes:
                if time.perf_counter() - t_start > args.budget_s:
                    entry["images_per_s"][mode][str(b)] = None
                    doc["skipped"].append(f"{name} {mode} B={b}: time budget ({args.budget_s:g} s) spent")
                    continue
                ips = _guarded(
                    errors,
                    f"{mode} B={b}",
                    lambda p=pipes[mode], b=b: _images_per_s(p, ref_bundle, b, cfg, args.repeats, device),
                )
                entry["images_per_s"][mode][str(b)] = ips
                _log(f"{name} {mode} B={b}: {ips} images/s")
        for pipe in pipes.values():
            pipe.engine.close()
        del pipes, engine, bundle
        if not on_cpu:
            torch.cuda.empty_cache()

    doc["passed"] = bool(doc["precisions"]) and all(e["passed"] for e in doc["precisions"].values())
    doc["seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(doc, indent=2)
    print(text, flush=True)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
        _log(f"wrote {args.output}")
    return doc


if __name__ == "__main__":
    main()

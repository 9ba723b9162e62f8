"""The TensorRT runtime: :class:`TensorRTEngine` (plan loading with the manifest checked first, per-call profile
choice, CUDA-graph replay, refit) and the checks of a deserialised engine (:func:`check_engine_io`,
:func:`engine_capabilities`). tensorrt is imported lazily, inside the engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor

from fairsample.core.engine_spec import (
    EngineLifetime,
    EngineSpec,
    MemoryReport,
    ValidationReport,
    check_inputs,
    check_out,
    is_finite,
)
from fairsample.core.errors import ConfigError, EngineLoadError, ValidationFailed
from fairsample.core.gpu_info import NO_CUDA_DEVICE, TENSORRT_MISSING, TrtTarget, current_target
from fairsample.engines.tensorrt.fallback import DESERIALIZE_FAILED, check_manifest
from fairsample.engines.tensorrt.graphs import DEFAULT_MAX_GRAPHS, CudaGraphLRU, _GraphEntry
from fairsample.engines.tensorrt.refit import (
    _TRT_DTYPE_NAMES,
    REFIT_UNSUPPORTED,
    _refit_prototypes,
    _set_refit_weights,
    resolve_refit_weights,
)
from fairsample.export.trt_profiles import INPUT_NAMES, OUTPUT_NAME, select_profile

BAD_ENGINE_IO = "the TensorRT engine has I/O {got}; expected float32 inputs {inputs} and output {output}"
PROFILE_COUNT_MISMATCH = "the TensorRT engine has {engine} optimisation profile(s) but its spec lists {spec}"
LOAD_REFUSED = "{reason}; load it through fairsample.engines.load_engine to rebuild or fall back."
NOT_CUDA = "`device` must be a CUDA device for the TensorRT engine, got {device!r}; use device='cuda:0'."
NO_PROFILES = "`spec.profiles` is empty; a TensorRT engine needs the profiles it was built with (manifest 'profiles')."
CLOSED = "this TensorRTEngine was closed; load a new engine with fairsample.engines.load_engine(...)."
BROKEN = "this TensorRTEngine is unusable after a failed refit ({reason}); reload it from the cache."
EXECUTE_FAILED = "TensorRT execute_async_v3 failed for shape (N={n}, H={h}, W={w}); see the TensorRT log above."
NONFINITE_OUTPUT = "the TensorRT engine produced NaN/Inf at shape (N={n}, H={h}, W={w}); check precision islands."


def check_engine_io(io: Mapping[str, tuple[str, str]]) -> str | None:
    """The reason an engine's I/O breaks the float32 boundary of ENGINES.md §2.1, or None.

    Args:
        io: ``{tensor name: ("input" | "output", dtype name)}`` read from the deserialised engine.

    Example:
        >>> io = {"sample": ("input", "float32"), "timestep": ("input", "float32"),
        ...       "encoder_hidden_states": ("input", "float32"), "out_sample": ("output", "float32")}
        >>> check_engine_io(io) is None, check_engine_io({**io, "out_sample": ("output", "float16")}) is None
        (True, False)
    """
    expected = {**{n: ("input", "float32") for n in INPUT_NAMES}, OUTPUT_NAME: ("output", "float32")}
    if dict(io) != expected:
        got = {k: f"{m} {d}" for k, (m, d) in sorted(io.items())}
        return BAD_ENGINE_IO.format(got=got, inputs=list(INPUT_NAMES), output=OUTPUT_NAME)
    return None


def engine_capabilities(manifest: Mapping[str, Any], spec: EngineSpec, *, cuda_graphs: bool) -> frozenset[str]:
    """Capabilities of a TensorRT engine: ``refit`` only when built with REFIT, ``dynamic_shapes`` when a profile spans
    more than one shape, ``cuda_graphs`` when enabled, and always ``io_binding``.

    Example:
        >>> from fairsample.core.engine_spec import ShapeProfile
        >>> spec = EngineSpec(in_channels=4, out_channels=4, sample_size=8, seq_len=4, hidden_dim=8,
        ...                   prediction_type="epsilon", profiles=(ShapeProfile((1, 8, 8), (2, 8, 8), (2, 8, 8)),))
        >>> sorted(engine_capabilities({"key_parts": {"builder": {"refit": True}}}, spec, cuda_graphs=False))
        ['dynamic_shapes', 'io_binding', 'refit']
    """
    builder = (manifest.get("key_parts", manifest).get("builder")) or {}
    caps = {"io_binding"}
    if builder.get("refit"):
        caps.add("refit")
    if any(p.min != p.max for p in spec.profiles):
        caps.add("dynamic_shapes")
    if cuda_graphs:
        caps.add("cuda_graphs")
    return frozenset(caps)


class TensorRTEngine(EngineLifetime):
    """The TensorRT backend behind the :class:`~fairsample.engines.Engine` API (ENGINES.md §2, §5, §8, §9).

    Loading checks the manifest against this machine *before* deserialising (:func:`check_manifest`) and turns a
    None engine into a one-line :class:`~fairsample.core.errors.EngineLoadError`. Each call picks the profile with the
    nearest ``opt`` (:func:`~fairsample.export.trt_profiles.select_profile`), binds the caller's contiguous float32
    CUDA tensors with ``set_tensor_address`` and runs ``execute_async_v3`` on the engine's torch stream. The result
    is an engine-owned buffer valid until the next call, unless ``out=`` is given (rule 2.3-2). Repeated shapes are
    replayed from a bounded LRU of CUDA graphs that is cleared on every refit.

    Args:
        plan: serialized plan bytes, or a path to the ``.plan`` file.
        spec: channels, S, D, prediction type, precision and the profiles in TensorRT index order.
        manifest: the cache manifest (``key_parts`` of :class:`~fairsample.export.trt_build.TrtBuildRecipe`,
            ``validation``, optional ``refit`` = ``{"name_map": ..., "ignored": [...]}``).
        device: a CUDA device, e.g. ``"cuda:0"``.
        cuda_graphs: capture/replay CUDA graphs for repeated exact shapes.
        max_graphs: LRU capacity of the graph cache.
        check_finite: debug/validation mode: raise :class:`~fairsample.core.errors.ValidationFailed` on NaN/Inf.
        unsafe: load even when the validation report is missing or failed.

    Raises:
        ImportError: tensorrt is not installed (names the ``[tensorrt]`` extra).
        EngineLoadError: no CUDA device, an incompatible manifest, a plan TensorRT rejects, or unexpected I/O.
        ConfigError: a non-CUDA ``device`` or a spec without profiles.

    Example:
        >>> engine = TensorRTEngine("cache/ab/ab12.../engine.plan", spec=spec, manifest=manifest)  # doctest: +SKIP
        >>> engine(sample, timestep, encoder_hidden_states).shape  # doctest: +SKIP
        torch.Size([2, 4, 64, 64])
    """

    backend: Literal["tensorrt"] = "tensorrt"

    def __init__(
        self,
        plan: bytes | str | os.PathLike[str],
        *,
        spec: EngineSpec,
        manifest: Mapping[str, Any],
        device: str | torch.device = "cuda:0",
        cuda_graphs: bool = True,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
        check_finite: bool = False,
        unsafe: bool = False,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ConfigError(NOT_CUDA.format(device=str(device)))
        if not spec.profiles:
            raise ConfigError(NO_PROFILES)
        if not torch.cuda.is_available():
            raise EngineLoadError(NO_CUDA_DEVICE)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        trt = _import_tensorrt()
        target = current_target(self.device)
        reason = check_manifest(manifest, target, unsafe=unsafe)
        if reason is not None:
            raise EngineLoadError(LOAD_REFUSED.format(reason=reason))
        data = plan if isinstance(plan, bytes | bytearray | memoryview) else open(plan, "rb").read()
        self.spec = spec
        self.manifest: Mapping[str, Any] = MappingProxyType(dict(manifest))
        self.capabilities = engine_capabilities(manifest, spec, cuda_graphs=cuda_graphs)
        self.check_finite = check_finite
        self._plan_bytes = len(data)
        self._graphs: CudaGraphLRU[tuple[int, int, int, int], _GraphEntry] = CudaGraphLRU(
            max_graphs if cuda_graphs else 0
        )
        self._broken: str | None = None
        self._profile: int | None = None
        self._output: Tensor | None = None
        refit_info = manifest.get("refit") or {}
        self._name_map = dict(refit_info.get("name_map") or {})
        self._ignored = tuple(refit_info.get("ignored") or ())
        self._constants = tuple(refit_info.get("constants") or ())
        self._shared = dict(refit_info.get("shared") or {})
        self._trt = trt
        self._load(trt, bytes(data), target)

    def _load(self, trt: Any, data: bytes, target: TrtTarget) -> None:
        """Deserialise, check I/O and profiles, reserve one activation block, create the context and stream."""
        with torch.cuda.device(self.device):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise EngineLoadError(LOAD_REFUSED.format(reason=DESERIALIZE_FAILED.format(here=target.short())))
            io = {}
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
                io[name] = (mode, _TRT_DTYPE_NAMES.get(str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1], "?"))
            problem = check_engine_io(io)
            if problem is None and engine.num_optimization_profiles != len(self.spec.profiles):
                problem = PROFILE_COUNT_MISMATCH.format(
                    engine=engine.num_optimization_profiles, spec=len(self.spec.profiles)
                )
            if problem is not None:
                raise EngineLoadError(LOAD_REFUSED.format(reason=problem))
            self._engine = engine
            size = int(engine.device_memory_size_v2)
            self._activations = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
            self._context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            self._context.set_device_memory(self._activations.data_ptr(), size)
            self._stream = torch.cuda.Stream(self.device)

    def supports(self, n: int, height: int, width: int) -> bool:
        """True when some build profile contains ``(n, height, width)``."""
        return self.spec.supports(n, height, width)

    @torch.no_grad()
    def __call__(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        *,
        out: Tensor | None = None,
    ) -> Tensor:
        """Run the U-Net: (N, C, H, W), (N,), (N, S, D) float32 CUDA tensors -> (N, C_out, H, W) float32.

        Returns an engine-owned buffer valid until the next call, or ``out`` when given (``out`` may alias
        ``sample``: the engine then computes into its own buffer and copies).

        Raises:
            ConfigError: wrong type/device/shape, or a shape outside every profile (lists the supported ranges).
            ValidationFailed: ``check_finite`` is on and the output has NaN/Inf.
            EngineLoadError: the engine was closed or broken by a failed refit, or TensorRT failed to execute.
        """
        self._check_usable()
        x, t, e = check_inputs(sample, timestep, encoder_hidden_states, spec=self.spec, device=self.device)
        x, t, e = x.contiguous(), t.contiguous(), e.contiguous()
        n, _, h, w = x.shape
        k = select_profile(self.spec.profiles, n, h, w)
        shape = (n, self.spec.out_channels, h, w)
        check_out(out, shape, self.device)
        key = (k, n, h, w)
        action = self._graphs.decide(key)
        caller = torch.cuda.current_stream(self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            self._stream.wait_stream(caller)
            if action == "replay":
                entry = self._graphs.get(key)
                for static, value in zip(entry.inputs, (x, t, e), strict=True):
                    static.copy_(value)
                entry.graph.replay()
                result = entry.output
            elif action == "capture":
                result = self._capture(key, x, t, e)
            else:
                direct = out is not None and not _overlaps(out, (x, t, e))
                result = out if direct else self._output_buffer(shape)  # type: ignore[assignment]
                self._bind(k, x, t, e, result)
                self._execute(n, h, w)
            for value in (x, t, e):
                value.record_stream(self._stream)
            caller.wait_stream(self._stream)
        if self.check_finite and not is_finite(result):
            raise ValidationFailed(NONFINITE_OUTPUT.format(n=n, h=h, w=w))
        if out is not None and result is not out:
            return out.copy_(result)
        return result

    def _bind(self, k: int, x: Tensor, t: Tensor, e: Tensor, result: Tensor) -> None:
        """Select profile ``k`` (when it changes), set the input shapes and every tensor address."""
        ctx = self._context
        if self._profile != k:
            ctx.set_optimization_profile_async(k, self._stream.cuda_stream)
            self._profile = k
        for name, value in zip(INPUT_NAMES, (x, t, e), strict=True):
            ctx.set_input_shape(name, tuple(value.shape))
            ctx.set_tensor_address(name, value.data_ptr())
        ctx.set_tensor_address(OUTPUT_NAME, result.data_ptr())

    def _execute(self, n: int, h: int, w: int) -> None:
        """``execute_async_v3`` on the engine stream; False becomes a one-line error."""
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise EngineLoadError(EXECUTE_FAILED.format(n=n, h=h, w=w))

    def _capture(self, key: tuple[int, int, int, int], x: Tensor, t: Tensor, e: Tensor) -> Tensor:
        """Copy into static buffers, run once (TensorRT's pre-capture enqueue), capture, store; returns the output."""
        k, n, h, w = key
        inputs = (x.clone(), t.clone(), e.clone())
        output = torch.empty((n, self.spec.out_channels, h, w), dtype=torch.float32, device=self.device)
        self._bind(k, *inputs, output)
        self._execute(n, h, w)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            self._execute(n, h, w)
        self._graphs.store(key, _GraphEntry(graph=graph, inputs=inputs, output=output))
        return output

    def _output_buffer(self, shape: tuple[int, int, int, int]) -> Tensor:
        """The engine-owned output (grown on demand, returned as a view of the right shape)."""
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        if self._output is None or self._output.numel() < numel:
            self._output = torch.empty(numel, dtype=torch.float32, device=self.device)
        return self._output[:numel].view(shape)

    @torch.no_grad()
    def refit(self, state_dict: Mapping[str, Tensor]) -> ValidationReport:
        """Refit every engine weight from a full torch state dict, drop all CUDA graphs, and probe the result.

        The whole state dict is mapped and checked first (:func:`resolve_refit_weights`); only then is TensorRT
        touched. Parity against torch (A -> B -> A == A, ENGINES.md §6) is the caller's gate via
        ``fairsample.export.validate``; this report covers the refit itself and a finite probe at profile 0's opt.

        Args:
            state_dict: every U-Net parameter/buffer, torch names, any float dtype/device.

        Returns:
            ``{"backend", "passed", "weights", "elements", "graphs_dropped", "probe_finite"}``.

        Raises:
            ConfigError: the engine is not refittable, or the state dict does not cover every weight / has extras.
            ValidationFailed: NaN/Inf in the state dict (nothing is changed).
            EngineLoadError: TensorRT's refit failed; the engine is then unusable (reload it).

        Example:
            >>> engine.refit(unet_b.state_dict())["passed"]  # doctest: +SKIP
            True
        """
        self._check_usable()
        if "refit" not in self.capabilities:
            raise ConfigError(REFIT_UNSUPPORTED)
        trt = self._trt
        refitter = trt.Refitter(self._engine, self._logger)
        weights = resolve_refit_weights(
            state_dict,
            _refit_prototypes(refitter),
            name_map=self._name_map,
            ignored=self._ignored,
            constants=self._constants,
            shared=self._shared,
        )
        failure = _set_refit_weights(trt, refitter, weights)
        if failure is not None:
            self._broken = failure
            raise EngineLoadError(BROKEN.format(reason=self._broken))
        dropped = len(self._graphs.clear())  # addresses may be unchanged, values are not: re-capture (SF#143)
        n, h, w = self.spec.profiles[0].opt
        probe = self(
            torch.zeros(n, self.spec.in_channels, h, w, device=self.device),
            torch.full((n,), 500.0, device=self.device),
            torch.zeros(n, self.spec.seq_len or 1, self.spec.hidden_dim, device=self.device),
        )
        finite = is_finite(probe)
        self._graphs.clear()
        return {
            "backend": self.backend,
            "passed": bool(finite),
            "weights": len(weights),
            "elements": int(sum(v.numel() for v in weights.values())),
            "graphs_dropped": dropped,
            "probe_finite": bool(finite),
        }

    def memory(self) -> MemoryReport:
        """Plan bytes (weights + kernels) and the reserved activation block, output buffer and graph buffers."""
        self._check_open()
        extra = self._output.numel() * 4 if self._output is not None else 0
        for entry in self._graphs.values():
            extra += sum(v.numel() * v.element_size() for v in (*entry.inputs, entry.output))
        activations = int(self._activations.numel()) + extra
        return MemoryReport(weights_bytes=self._plan_bytes, activations_bytes=activations, device=str(self.device))

    def close(self) -> None:
        """Free graphs, context, engine and buffers; idempotent."""
        if getattr(self, "_engine", None) is None:
            return
        self._graphs.clear()
        self._context = None
        self._engine = None
        self._output = None
        self._activations = None  # type: ignore[assignment]
        torch.cuda.empty_cache()

    def _check_open(self) -> None:
        if getattr(self, "_engine", None) is None:
            raise EngineLoadError(CLOSED)

    def _check_usable(self) -> None:
        self._check_open()
        if self._broken is not None:
            raise EngineLoadError(BROKEN.format(reason=self._broken))

    def __repr__(self) -> str:
        state = "closed" if getattr(self, "_engine", None) is None else f"{self.spec.precision} on {self.device}"
        return f"TensorRTEngine({self.spec.prediction_type}, {state})"


def _import_tensorrt() -> Any:
    """``import tensorrt`` with the extra-naming ImportError."""
    try:
        import tensorrt
    except ImportError:
        raise ImportError(TENSORRT_MISSING) from None
    return tensorrt


def _overlaps(out: Tensor, inputs: Sequence[Tensor]) -> bool:
    """True when ``out`` shares storage with any input (then TensorRT must not write into it directly)."""
    ptr = out.untyped_storage().data_ptr()
    return any(v.untyped_storage().data_ptr() == ptr for v in inputs)

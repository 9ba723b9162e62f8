"""The TensorRT backend: plan loading with a manifest check first, per-call profile choice, refit, CUDA graphs.

Decisions are pure Python and unit-tested on CPU: :func:`check_manifest` (SM / TensorRT / CUDA / OS compatibility and
the validation report, checked *before* deserialising, ENGINES.md §7.3), :func:`decide_fallback` (rebuild, fall back
to onnxruntime, or raise under ``strict``, with the one-line reason of STYLE.md §8), :class:`CudaGraphLRU` (bounded
per-shape graph bookkeeping, ENGINES.md §9) and :func:`resolve_refit_weights` (full-weight refit mapping, §8).
:class:`TensorRTEngine` holds the thin tensorrt/CUDA layer around them; tensorrt is imported lazily inside it.
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

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
from fairsample.export.trt_profiles import INPUT_NAMES, OUTPUT_NAME, select_profile

DEFAULT_MAX_GRAPHS = 8
"""CUDA graphs kept per engine (one per exact (profile, N, H, W)); least recently used ones are dropped."""

INCOMPATIBLE = "cached TensorRT engine was built for {built}; this GPU is {here}"
NOT_VALIDATED = "cached TensorRT engine has no passing validation report ({state})"
MANIFEST_INCOMPLETE = "cached TensorRT engine manifest lacks {missing}"
DESERIALIZE_FAILED = (
    "the TensorRT runtime on {here} rejected the cached engine (deserialize_cuda_engine returned None)"
)
BAD_ENGINE_IO = "the TensorRT engine has I/O {got}; expected float32 inputs {inputs} and output {output}"
PROFILE_COUNT_MISMATCH = "the TensorRT engine has {engine} optimisation profile(s) but its spec lists {spec}"
NO_TENSORRT_REASON = "tensorrt is not installed"
NO_CUDA_REASON = "no CUDA device"
ACTION_REBUILD = "{reason} — rebuilding (use --strict to fail instead)"
ACTION_ONNXRUNTIME = "{reason} — falling back to onnxruntime ({provider}) (use --strict to fail instead)"
ACTION_STRICT = "{reason} — strict=True, so not rebuilding or falling back; rebuild with `fairsample export tensorrt`"
ACTION_NOTHING = (
    "{reason} — cannot rebuild (needs tensorrt, a GPU and the cached ONNX) and onnxruntime is not installed; "
    "pip install 'fairsample[ort]'"
)
LOAD_REFUSED = "{reason}; load it through fairsample.engines.load_engine to rebuild or fall back."
NOT_CUDA = "`device` must be a CUDA device for the TensorRT engine, got {device!r}; use device='cuda:0'."
NO_PROFILES = "`spec.profiles` is empty; a TensorRT engine needs the profiles it was built with (manifest 'profiles')."
CLOSED = "this TensorRTEngine was closed; load a new engine with fairsample.engines.load_engine(...)."
BROKEN = "this TensorRTEngine is unusable after a failed refit ({reason}); reload it from the cache."
EXECUTE_FAILED = "TensorRT execute_async_v3 failed for shape (N={n}, H={h}, W={w}); see the TensorRT log above."
NONFINITE_OUTPUT = "the TensorRT engine produced NaN/Inf at shape (N={n}, H={h}, W={w}); check precision islands."
REFIT_UNSUPPORTED = (
    "this TensorRT engine was built without REFIT, so `refit` is unavailable; rebuild with refit=True "
    "(TrtBuildRecipe) or load a new engine for the new weights."
)
REFIT_MISSING = (
    "`state_dict` lacks {count} weight(s) the engine needs for a full refit (first: {first!r}); pass the complete "
    "state dict of the same architecture."
)
REFIT_UNUSED = (
    "`state_dict` has {count} tensor(s) no engine weight is mapped from (first: {first!r}); refitting would leave "
    "stale weights; fix the manifest's refit name map or list them under refit 'ignored'."
)
REFIT_SIZE = (
    "`state_dict[{source!r}]` has {got} elements but engine weight {name!r} needs {want}; pass weights of the same "
    "architecture."
)
REFIT_SHARED = (
    "`state_dict` gives different values to {sources}, which share one engine weight ({name}: the exporter merged "
    "them because they were equal at export); rebuild the engine for these weights instead of refitting."
)
REFIT_NOT_TENSOR = "`state_dict[{key!r}]` is a {type_name}, not a torch.Tensor; pass a full tensor state dict."
REFIT_NONFINITE = "`state_dict` has NaN/Inf in {count} tensor(s) (first: {first}); the engine keeps its old weights."
REFIT_BAD_DTYPE = (
    "engine weight {name!r} has TensorRT dtype {dtype!r}, which fairsample cannot refit; rebuild instead."
)
BAD_GRAPH_LRU = "`capacity` must be an int >= 0 and `warmup_calls` an int >= 1, got {capacity!r} and {warmup!r}."
REFIT_FAILED = "TensorRT refit_cuda_engine failed ({detail})"

Action = Literal["load", "rebuild", "onnxruntime", "raise"]
_REFIT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "int32": torch.int32,
    "int64": torch.int64,
}
_TRT_DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
}
K = TypeVar("K", bound=Hashable)
G = TypeVar("G")


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


class CudaGraphLRU(Generic[K, G]):
    """Bounded per-shape CUDA-graph bookkeeping (ENGINES.md §9): eager warm-up, capture, replay, LRU eviction.

    :meth:`decide` returns ``"eager"`` for the first ``warmup_calls`` calls at a key (the warm-up TensorRT needs
    before capture, and no capture for one-off shapes), then ``"capture"`` once, then ``"replay"``. At most
    ``capacity`` graphs are kept; storing one more evicts the least recently used. ``capacity=0`` disables graphs.
    :meth:`clear` (after every refit) drops every graph and the warm-up counts.

    Example:
        >>> lru = CudaGraphLRU(capacity=1)
        >>> [lru.decide("a"), lru.decide("a")]
        ['eager', 'capture']
        >>> lru.store("a", "graph-a")
        []
        >>> lru.decide("a"), lru.decide("b"), lru.decide("b")
        ('replay', 'eager', 'capture')
        >>> lru.store("b", "graph-b"), len(lru)
        (['graph-a'], 1)
    """

    def __init__(self, capacity: int = DEFAULT_MAX_GRAPHS, *, warmup_calls: int = 1) -> None:
        if not (isinstance(capacity, int) and capacity >= 0 and isinstance(warmup_calls, int) and warmup_calls >= 1):
            raise ConfigError(BAD_GRAPH_LRU.format(capacity=capacity, warmup=warmup_calls))
        self.capacity = capacity
        self.warmup_calls = warmup_calls
        self._graphs: OrderedDict[K, G] = OrderedDict()
        self._seen: OrderedDict[K, int] = OrderedDict()
        self.hits = 0
        self.captures = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: object) -> bool:
        return key in self._graphs

    def decide(self, key: K) -> Literal["eager", "capture", "replay"]:
        """Record a call at ``key`` and say how to run it."""
        if key in self._graphs:
            self._graphs.move_to_end(key)
            self.hits += 1
            return "replay"
        if self.capacity == 0:
            return "eager"
        count = self._seen.pop(key, 0) + 1
        self._seen[key] = count
        while len(self._seen) > 4 * self.capacity:  # bound the warm-up table too
            self._seen.popitem(last=False)
        return "capture" if count > self.warmup_calls else "eager"

    def store(self, key: K, graph: G) -> list[G]:
        """Keep ``graph`` for ``key``; returns the evicted graphs (free them)."""
        self._seen.pop(key, None)
        self._graphs[key] = graph
        self._graphs.move_to_end(key)
        self.captures += 1
        evicted: list[G] = []
        while len(self._graphs) > self.capacity:
            evicted.append(self._graphs.popitem(last=False)[1])
        return evicted

    def values(self) -> list[G]:
        """The stored graphs, least recently used first."""
        return list(self._graphs.values())

    def get(self, key: K) -> G:
        """The stored graph for ``key`` (KeyError when absent)."""
        return self._graphs[key]

    def clear(self) -> list[G]:
        """Drop every graph and warm-up count; returns the dropped graphs."""
        dropped = list(self._graphs.values())
        self._graphs.clear()
        self._seen.clear()
        return dropped


def resolve_refit_weights(
    state_dict: Mapping[str, Tensor],
    prototypes: Mapping[str, tuple[int, str]],
    *,
    name_map: Mapping[str, str | Mapping[str, Any]] | None = None,
    ignored: Sequence[str] = (),
    constants: Sequence[str] = (),
    shared: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Tensor]:
    """Map a full torch state dict onto every refittable engine weight, checked before TensorRT is touched (§8).

    Args:
        state_dict: every U-Net parameter/buffer (torch names), any float dtype and device.
        prototypes: ``{engine weight name: (element count, dtype name)}`` from the refitter (dtype names as in
            ``"float32"``, ``"float16"``, ``"bfloat16"``).
        name_map: ``{engine weight name: torch name}`` or ``{name: {"source": torch name, "transpose": bool}}`` from
            export; names absent from the map are taken to be identical, untransposed.
        ignored: torch names that legitimately feed no engine weight (e.g. constant-folded buffers).
        constants: engine weights fed by no parameter (shape constants, folded scalars): not refitted, they keep
            their build values (:func:`fairsample.export.refit_map.build_refit_map` lists them).
        shared: ``{engine weight name: [torch names]}`` for weights the exporter deduplicated; those torch tensors
            must still be equal.

    Returns:
        ``{engine weight name: contiguous CPU tensor in the engine's dtype}``, one per non-constant prototype.

    Raises:
        ConfigError: a weight is missing, has the wrong size, a tensor is unused (stale-weight risk), a value is not
            a tensor, or a dtype cannot be refitted.
        ValidationFailed: a tensor holds NaN/Inf.

    Example:
        >>> import torch
        >>> w = resolve_refit_weights({"proj.weight": torch.ones(2, 3)}, {"proj.weight": (6, "float16")})
        >>> w["proj.weight"].dtype, w["proj.weight"].shape
        (torch.float16, torch.Size([2, 3]))
    """
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise ConfigError(REFIT_NOT_TENSOR.format(key=key, type_name=type(value).__name__))
    mapping = dict(name_map or {})
    skip = set(constants)
    prototypes = {k: v for k, v in prototypes.items() if k not in skip}
    plan: dict[str, tuple[str, bool]] = {}
    for name in prototypes:
        entry = mapping.get(name, name)
        if isinstance(entry, Mapping):
            plan[name] = (str(entry["source"]), bool(entry.get("transpose", False)))
        else:
            plan[name] = (str(entry), False)
    missing = [src for src, _ in plan.values() if src not in state_dict]
    if missing:
        raise ConfigError(REFIT_MISSING.format(count=len(missing), first=missing[0]))
    for name, sources in (shared or {}).items():
        present = [state_dict[k] for k in sources if k in state_dict]
        if any(v.shape != present[0].shape or not torch.equal(v, present[0]) for v in present[1:]):
            raise ConfigError(REFIT_SHARED.format(sources=", ".join(sources), name=name))
    used = {src for src, _ in plan.values()} | set(ignored) | {k for v in (shared or {}).values() for k in v}
    unused = [k for k in state_dict if k not in used]
    if unused:
        raise ConfigError(REFIT_UNUSED.format(count=len(unused), first=unused[0]))
    bad = [
        k for k in sorted(used & set(state_dict)) if state_dict[k].is_floating_point() and not is_finite(state_dict[k])
    ]
    if bad:
        raise ValidationFailed(REFIT_NONFINITE.format(count=len(bad), first=bad[0]))
    out: dict[str, Tensor] = {}
    for name, (count, dtype_name) in prototypes.items():
        source, transpose = plan[name]
        tensor = state_dict[source].detach()
        if transpose:
            tensor = tensor.t()
        if tensor.numel() != count:
            raise ConfigError(REFIT_SIZE.format(source=source, got=tensor.numel(), name=name, want=count))
        dtype = _REFIT_DTYPES.get(dtype_name)
        if dtype is None:
            raise ConfigError(REFIT_BAD_DTYPE.format(name=name, dtype=dtype_name))
        out[name] = tensor.to(device="cpu", dtype=dtype).contiguous()
    return out


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
        prototypes = {}
        for name in refitter.get_all_weights():
            proto = refitter.get_weights_prototype(name)
            dtype = _TRT_DTYPE_NAMES.get(str(proto.dtype).rsplit(".", 1)[-1], str(proto.dtype))
            prototypes[name] = (int(proto.size), dtype)
        weights = resolve_refit_weights(
            state_dict,
            prototypes,
            name_map=self._name_map,
            ignored=self._ignored,
            constants=self._constants,
            shared=self._shared,
        )
        trt_types = {
            torch.float32: trt.DataType.FLOAT,
            torch.float16: trt.DataType.HALF,
            torch.bfloat16: trt.DataType.BF16,
            torch.int8: trt.DataType.INT8,
            torch.int32: trt.DataType.INT32,
            torch.int64: trt.DataType.INT64,
        }
        for name, tensor in weights.items():
            ok = refitter.set_named_weights(
                name, trt.Weights(trt_types[tensor.dtype], tensor.data_ptr(), tensor.numel())
            )
            if not ok:
                self._broken = REFIT_FAILED.format(detail=f"set_named_weights rejected {name!r}")
                raise EngineLoadError(BROKEN.format(reason=self._broken))
        missing = list(refitter.get_missing_weights())
        if missing or not refitter.refit_cuda_engine():
            detail = f"{len(missing)} weight(s) still missing, first {missing[0]!r}" if missing else "returned False"
            self._broken = REFIT_FAILED.format(detail=detail)
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


@dataclass
class _GraphEntry:
    """One captured CUDA graph with its static input and output buffers."""

    graph: Any  # torch.cuda.CUDAGraph
    inputs: tuple[Tensor, Tensor, Tensor]
    output: Tensor


def _import_tensorrt() -> Any:
    """``import tensorrt`` with the extra-naming ImportError."""
    try:
        import tensorrt
    except ImportError:
        raise ImportError(TENSORRT_MISSING) from None
    return tensorrt


def _ort_providers() -> list[str] | None:
    """onnxruntime's available providers, or None when it is not importable."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    try:
        import onnxruntime
    except ImportError:
        return None
    return [str(p) for p in onnxruntime.get_available_providers()]


def _overlaps(out: Tensor, inputs: Sequence[Tensor]) -> bool:
    """True when ``out`` shares storage with any input (then TensorRT must not write into it directly)."""
    ptr = out.untyped_storage().data_ptr()
    return any(v.untyped_storage().data_ptr() == ptr for v in inputs)


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

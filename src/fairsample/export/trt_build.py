"""ONNX -> TensorRT plan with the tensorrt Python API, in a child process (ENGINES.md §4.7, §5, §7.1).

:class:`TrtBuildRecipe` is a pure-Python description of one build: its :meth:`~TrtBuildRecipe.cache_key_parts` are
everything the ``plan/`` cache key covers, and it is unit-tested on CPU. :func:`build_plan` runs the build in a
``spawn`` child process, so a CUDA out-of-memory leaves the parent's context intact; the child runs with
``CUDA_MODULE_LOADING=LAZY``, streams its progress lines to the parent and writes the plan to a temporary file. An
out-of-memory build is retried once with half the workspace and each profile's ``max`` clamped to its ``opt``
(:func:`oom_retry_recipe`); the returned :class:`BuiltPlan` carries the recipe that was actually built, which is the
one the cache must key by. Every failure raises :class:`~fairsample.core.errors.EngineLoadError` with a one-line
reason.

tensorrt is imported only inside the child (and only there); the parent needs just torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import multiprocessing
import os
import queue as queue_module
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from fairsample.core.atomic import write_atomic
from fairsample.core.engine_spec import PRECISIONS, Precision, ShapeProfile
from fairsample.core.errors import ConfigError, EngineLoadError
from fairsample.core.gpu_info import NO_CUDA_DEVICE, TENSORRT_MISSING, TrtTarget, current_target
from fairsample.export.trt_profiles import INPUT_NAMES, input_shapes, profile_to_dict, validate_profiles

logger = logging.getLogger(__name__)

HardwareCompat = Literal["none", "ampere_plus", "same_compute_capability"]
HARDWARE_COMPAT_LEVELS: tuple[str, ...] = get_args(HardwareCompat)
PLAN_KEY_SCHEMA = 1
"""Version of the ``plan/`` key layout; bump it when :meth:`TrtBuildRecipe.cache_key_parts` changes shape."""
GIB = 1 << 30
MIN_WORKSPACE_BYTES = 256 << 20
"""The OOM retry never goes below this workspace cap."""
_PROGRESS_POLL_S = 0.5

BAD_PRECISION = "`precision` must be one of {allowed}, got {value!r}; use 'fp16' with the strongly typed fp16 ONNX."
BAD_WORKSPACE = "`workspace_bytes` must be a positive int, got {value!r}; e.g. 4 << 30 for 4 GiB."
BAD_OPT_LEVEL = "`builder_optimization_level` must be an int in 0-5, got {value!r}; 3 is the default (5 takes hours)."
BAD_HARDWARE_COMPAT = "`hardware_compat` must be one of {allowed}, got {value!r}."
BAD_TACTIC_SOURCES = "`tactic_sources` must be TensorRT TacticSource names (e.g. 'CUBLAS'), got {value!r}."
STRIP_WITHOUT_REFIT = (
    "`strip_plan=True` needs `refit=True` or `refit_identical=True`, got neither; a stripped plan has no weights "
    "until it is refitted."
)
WEIGHTS_KEY_REQUIRED = (
    "`weights_sha256` is required when `onnx_key` is given and strip_plan=False, got None; the plan embeds the "
    "weights, so pass the safetensors hash (or omit onnx_key to hash the ONNX files)."
)
BAD_RECIPE_DICT = "`recipe` dict has unknown or missing fields ({error}); write it with TrtBuildRecipe.to_dict()."
ONNX_MISSING = "`onnx_path` {path!r} does not exist; export the model first (fairsample export onnx)."
TRT_TOO_OLD = (
    "TensorRT {version} is not supported: fairsample needs tensorrt>=10; pip install -U 'fairsample[tensorrt]'."
)
WEAK_TYPING_REMOVED = (
    "`strongly_typed=False` is not possible on TensorRT {version}: 11.x is strongly typed only; pass "
    "strongly_typed=True with the fp16 ONNX from fairsample.export.precision."
)
PARSE_FAILED = "TensorRT could not parse {path}: {count} parser error(s), first: {first}; re-export the ONNX."
BAD_NETWORK_INPUTS = (
    "the ONNX graph has inputs {got}, expected {expected}; re-export with fairsample.export (ENGINES.md §2.1)."
)
BUILD_RETURNED_NONE = "TensorRT build failed (build_serialized_network returned None); last error: {last}."
BUILD_OOM = "TensorRT build ran out of GPU memory with workspace {workspace} MiB{retry}; {last}."
BUILD_CRASHED = "the TensorRT build process exited with code {code} before finishing; rerun with a smaller profile."
BUILD_ERROR = "TensorRT build failed: {reason}"
OOM_RETRY = "TensorRT build ran out of memory; retrying once with workspace {workspace} MiB and profiles {profiles}."

_OOM_MARKERS = (
    "out of memory",
    "outofmemory",
    "cudaerrormemoryallocation",
    "insufficient memory",
    "requested amount of gpu memory",
    "cuda_error_out_of_memory",
    "failed to allocate",
)
_HARDWARE_COMPAT_ENUM = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}

ProgressFn = Callable[[str], None]
WorkerFn = Callable[..., None]


@dataclass(frozen=True)
class TrtBuildRecipe:
    """Everything one TensorRT build depends on except the machine (:class:`~fairsample.core.gpu_info.TrtTarget`).

    Paths are inputs, never key parts: the ONNX enters the key by content (``onnx_key`` + ``weights_sha256``, or the
    sha256 of the ONNX files), and the timing cache is keyed separately (:meth:`timing_cache_key_parts`).

    Attributes:
        onnx_path: the ONNX to build from (normally the strongly typed ``model.fp16.onnx``; external data next to it).
        profiles: optimisation profiles over (N, H, W), in TensorRT profile-index order.
        precision: compute precision the ONNX encodes (strongly typed) or the builder enables (10.x weakly typed).
        strongly_typed: build a strongly typed network (required on TensorRT 11.x).
        workspace_bytes: builder workspace memory-pool cap.
        builder_optimization_level: 0-5; 3 is TensorRT's default (5 can take hours).
        refit: ``BuilderFlag.REFIT``: weights can be replaced after the build (slower engine).
        refit_identical: ``BuilderFlag.REFIT_IDENTICAL``: refittable only with the build weights.
        strip_plan: ``BuilderFlag.STRIP_PLAN``: leave refittable weights out of the plan (needs a refit flag).
        version_compatible: ``BuilderFlag.VERSION_COMPATIBLE``.
        hardware_compat: ``"none"`` (default), ``"ampere_plus"`` or ``"same_compute_capability"``.
        editable_timing_cache: ``BuilderFlag.EDITABLE_TIMING_CACHE``, for reproducible rebuilds.
        tactic_sources: ``TacticSource`` names to enable; empty keeps TensorRT's default set.
        timing_cache_path: timing-cache file read before and written after the build; None = no timing cache.
        onnx_key: the parent ONNX artifact's cache key; None = sha256 of the ONNX file and its external data.
        weights_sha256: hash of the weights baked into the plan; required with ``onnx_key`` unless ``strip_plan``.

    Example:
        >>> from fairsample.core.gpu_info import TrtTarget
        >>> from fairsample.export.trt_profiles import default_profiles
        >>> r = TrtBuildRecipe(onnx_path="m/model.fp16.onnx", profiles=default_profiles(32, 2), onnx_key="ab12",
        ...                    weights_sha256="cd34")
        >>> t = TrtTarget(sm="sm_86", tensorrt_version="10.9.0.34", cuda_runtime="12.8", driver_major=570,
        ...               platform="linux-x86_64")
        >>> parts = r.cache_key_parts(t)
        >>> parts["gpu"], parts["builder"]["optimization_level"], len(r.cache_key(t))
        ('sm_86', 3, 64)
    """

    onnx_path: str  # ONNX file to build from (Path accepted, stored as str)
    profiles: tuple[ShapeProfile, ...]  # (N, H, W) profiles in TensorRT index order
    precision: Precision = "fp16"  # precision encoded by the ONNX / enabled by the builder
    strongly_typed: bool = True  # STRONGLY_TYPED network (mandatory on 11.x)
    workspace_bytes: int = 4 * GIB  # WORKSPACE memory-pool cap
    builder_optimization_level: int = 3  # 0-5; 3 = TensorRT default
    refit: bool = False  # BuilderFlag.REFIT
    refit_identical: bool = False  # BuilderFlag.REFIT_IDENTICAL
    strip_plan: bool = False  # BuilderFlag.STRIP_PLAN
    version_compatible: bool = False  # BuilderFlag.VERSION_COMPATIBLE
    hardware_compat: HardwareCompat = "none"  # HardwareCompatibilityLevel
    editable_timing_cache: bool = False  # BuilderFlag.EDITABLE_TIMING_CACHE
    tactic_sources: tuple[str, ...] = field(default=())  # TacticSource names; () = default
    timing_cache_path: str | None = None  # timing cache file (not a key part)
    onnx_key: str | None = None  # parent ONNX cache key; None = hash the files
    weights_sha256: str | None = None  # weights baked into the plan

    def __post_init__(self) -> None:
        object.__setattr__(self, "onnx_path", os.fspath(self.onnx_path))
        if self.timing_cache_path is not None:
            object.__setattr__(self, "timing_cache_path", os.fspath(self.timing_cache_path))
        object.__setattr__(self, "profiles", validate_profiles(self.profiles))
        if self.precision not in PRECISIONS:
            raise ConfigError(BAD_PRECISION.format(allowed=list(PRECISIONS), value=self.precision))
        if not (isinstance(self.workspace_bytes, int) and not isinstance(self.workspace_bytes, bool)) or (
            self.workspace_bytes <= 0
        ):
            raise ConfigError(BAD_WORKSPACE.format(value=self.workspace_bytes))
        level = self.builder_optimization_level
        if not (isinstance(level, int) and not isinstance(level, bool) and 0 <= level <= 5):
            raise ConfigError(BAD_OPT_LEVEL.format(value=level))
        if self.hardware_compat not in HARDWARE_COMPAT_LEVELS:
            raise ConfigError(
                BAD_HARDWARE_COMPAT.format(allowed=list(HARDWARE_COMPAT_LEVELS), value=self.hardware_compat)
            )
        sources = self.tactic_sources
        if isinstance(sources, str) or not all(isinstance(s, str) and s.isidentifier() for s in sources):
            raise ConfigError(BAD_TACTIC_SOURCES.format(value=sources))
        object.__setattr__(self, "tactic_sources", tuple(sources))
        if self.strip_plan and not (self.refit or self.refit_identical):
            raise ConfigError(STRIP_WITHOUT_REFIT)
        if self.onnx_key is not None and self.weights_sha256 is None and not self.strip_plan:
            raise ConfigError(WEIGHTS_KEY_REQUIRED)

    def builder_flags_dict(self) -> dict[str, Any]:
        """The builder options as a JSON-safe dict (a part of both the plan and the timing-cache keys)."""
        return {
            "optimization_level": self.builder_optimization_level,
            "refit": self.refit,
            "refit_identical": self.refit_identical,
            "strip_plan": self.strip_plan,
            "version_compatible": self.version_compatible,
            "hardware_compat": self.hardware_compat,
            "editable_timing_cache": self.editable_timing_cache,
            "tactic_sources": sorted(self.tactic_sources) if self.tactic_sources else "default",
            "workspace_bytes": self.workspace_bytes,
        }

    def cache_key_parts(self, target: TrtTarget | None = None) -> dict[str, Any]:
        """Every input of the ``plan/`` key (ENGINES.md §7.1), JSON-safe.

        Args:
            target: the machine facts; None = :func:`~fairsample.core.gpu_info.current_target` (needs a GPU).

        Returns:
            ``{"artifact", "schema", "onnx", "weights", "precision", "strongly_typed", "profiles", "builder",
            "tensorrt_version", "cuda_runtime", "driver_major", "gpu", "platform"}``; ``gpu`` is the ``smXY`` label,
            or the hardware-compatibility level when one is set.
        """
        t = current_target() if target is None else target
        return {
            "artifact": "plan",
            "schema": PLAN_KEY_SCHEMA,
            "onnx": self.onnx_key if self.onnx_key is not None else {"sha256": onnx_files_sha256(self.onnx_path)},
            "weights": "stripped" if self.strip_plan else (self.weights_sha256 or "in-onnx"),
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
            "profiles": [profile_to_dict(p) for p in self.profiles],
            "builder": self.builder_flags_dict(),
            "tensorrt_version": t.tensorrt_version,
            "cuda_runtime": t.cuda_runtime,
            "driver_major": t.driver_major,
            "gpu": t.sm if self.hardware_compat in ("none", "same_compute_capability") else self.hardware_compat,
            "platform": t.platform,
        }

    def cache_key(self, target: TrtTarget | None = None) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`cache_key_parts`."""
        return key_digest(self.cache_key_parts(target))

    def timing_cache_key_parts(self, target: TrtTarget | None = None) -> dict[str, Any]:
        """The ``timing_cache/`` key parts (ENGINES.md §7.1): SM, TensorRT version, builder flags; shared by models."""
        t = current_target() if target is None else target
        flags = self.builder_flags_dict()
        del flags["workspace_bytes"]
        return {
            "artifact": "timing_cache",
            "schema": PLAN_KEY_SCHEMA,
            "gpu": t.sm,
            "tensorrt_version": t.tensorrt_version,
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
            "builder": flags,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (profiles in the ``{"min", "opt", "max"}`` form), for the manifest."""
        return {
            "onnx_path": self.onnx_path,
            "profiles": [profile_to_dict(p) for p in self.profiles],
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
            "workspace_bytes": self.workspace_bytes,
            "builder_optimization_level": self.builder_optimization_level,
            "refit": self.refit,
            "refit_identical": self.refit_identical,
            "strip_plan": self.strip_plan,
            "version_compatible": self.version_compatible,
            "hardware_compat": self.hardware_compat,
            "editable_timing_cache": self.editable_timing_cache,
            "tactic_sources": list(self.tactic_sources),
            "timing_cache_path": self.timing_cache_path,
            "onnx_key": self.onnx_key,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrtBuildRecipe:
        """Inverse of :meth:`to_dict` (unknown keys raise :class:`~fairsample.core.errors.ConfigError` via the
        init)."""
        fields = dict(data)
        fields["profiles"] = validate_profiles(fields.get("profiles", ()))
        fields["tactic_sources"] = tuple(fields.get("tactic_sources", ()))
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ConfigError(BAD_RECIPE_DICT.format(error=exc)) from None


@dataclass(frozen=True)
class BuilderSettings:
    """The tensorrt enum names a recipe maps to on one TensorRT version (pure; applied inside the child)."""

    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]  # BuilderFlag names
    hardware_compat: str | None  # HardwareCompatibilityLevel name, None = default


class BuiltPlan(bytes):
    """The serialized plan (``bytes``) plus the recipe it was actually built with and the build log tail.

    ``recipe`` differs from the requested one after an out-of-memory retry; key the cache by ``recipe``.
    """

    recipe: TrtBuildRecipe
    retried: bool
    seconds: float
    log: tuple[str, ...]

    def __new__(
        cls, data: bytes, *, recipe: TrtBuildRecipe, retried: bool, seconds: float, log: Sequence[str]
    ) -> BuiltPlan:
        obj = super().__new__(cls, data)
        obj.recipe, obj.retried, obj.seconds, obj.log = recipe, retried, seconds, tuple(log)
        return obj


class _BuildFailure(Exception):
    """A classified build failure inside the child: ``kind`` in {"oom", "parse", "build", "import", "config"}."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def builder_settings(recipe: TrtBuildRecipe, tensorrt_version: str) -> BuilderSettings:
    """Map a recipe to network/builder flag names for ``tensorrt_version`` (ENGINES.md §5).

    10.x: a strongly typed recipe sets ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; a weakly typed one enables
    ``BuilderFlag.FP16``/``BF16`` for its precision. 11.x is strongly typed only and takes the default network flags.

    Args:
        recipe: the build recipe.
        tensorrt_version: e.g. ``"10.9.0.34"``.

    Returns:
        The flag names to set.

    Raises:
        EngineLoadError: TensorRT older than 10, or a weakly typed recipe on 11.x.

    Example:
        >>> from fairsample.export.trt_profiles import default_profiles
        >>> r = TrtBuildRecipe(onnx_path="m.onnx", profiles=default_profiles(8, 1), refit=True)
        >>> builder_settings(r, "10.9.0").network_flags, builder_settings(r, "11.4.0").builder_flags
        (('STRONGLY_TYPED',), ('REFIT',))
    """
    major = _major(tensorrt_version)
    if major < 10:
        raise EngineLoadError(TRT_TOO_OLD.format(version=tensorrt_version))
    network: tuple[str, ...] = ()
    flags: list[str] = []
    if major == 10:
        if recipe.strongly_typed:
            network = ("STRONGLY_TYPED",)
        elif recipe.precision != "fp32":
            flags.append(recipe.precision.upper())  # FP16 / BF16, weakly typed
    elif not recipe.strongly_typed:
        raise EngineLoadError(WEAK_TYPING_REMOVED.format(version=tensorrt_version))
    for on, name in (
        (recipe.refit, "REFIT"),
        (recipe.refit_identical, "REFIT_IDENTICAL"),
        (recipe.strip_plan, "STRIP_PLAN"),
        (recipe.version_compatible, "VERSION_COMPATIBLE"),
        (recipe.editable_timing_cache, "EDITABLE_TIMING_CACHE"),
    ):
        if on:
            flags.append(name)
    return BuilderSettings(
        network_flags=network,
        builder_flags=tuple(flags),
        hardware_compat=_HARDWARE_COMPAT_ENUM.get(recipe.hardware_compat),
    )


def is_oom(lines: Iterable[str]) -> bool:
    """True when any log/error line reports an out-of-memory condition (CUDA or TensorRT wording).

    Example:
        >>> is_oom(["[TRT] Error Code 2: OutOfMemory (Requested size was 8589934592 bytes.)"]), is_oom(["ok"])
        (True, False)
    """
    for line in lines:
        low = line.lower()
        if any(marker in low or marker in low.replace(" ", "") for marker in _OOM_MARKERS):
            return True
    return False


def oom_retry_recipe(recipe: TrtBuildRecipe) -> TrtBuildRecipe | None:
    """The smaller recipe for the one out-of-memory retry: half the workspace, every profile's max clamped to opt.

    Args:
        recipe: the recipe that ran out of memory.

    Returns:
        The retry recipe, or None when nothing can shrink (workspace at :data:`MIN_WORKSPACE_BYTES` and
        ``max == opt`` everywhere).

    Example:
        >>> p = ShapeProfile(min=(1, 8, 8), opt=(2, 8, 8), max=(8, 8, 8))
        >>> r = oom_retry_recipe(TrtBuildRecipe(onnx_path="m.onnx", profiles=(p,), workspace_bytes=1 << 30))
        >>> r.workspace_bytes >> 20, r.profiles[0].max
        (512, (2, 8, 8))
    """
    workspace = min(recipe.workspace_bytes, max(MIN_WORKSPACE_BYTES, recipe.workspace_bytes // 2))
    profiles = tuple(ShapeProfile(min=p.min, opt=p.opt, max=p.opt) for p in recipe.profiles)
    profiles = validate_profiles(profiles, drop_duplicates=True)
    if workspace == recipe.workspace_bytes and profiles == recipe.profiles:
        return None
    return replace(recipe, workspace_bytes=workspace, profiles=profiles)


def format_parse_errors(path: str, errors: Sequence[str]) -> str:
    """The one-line :data:`PARSE_FAILED` reason for a list of ONNX parser errors (each is also logged).

    Example:
        >>> print(format_parse_errors("m.onnx", ["node 3 (Resize): unsupported mode", "node 9: bad input"]))
        ... # doctest: +NORMALIZE_WHITESPACE
        TensorRT could not parse m.onnx: 2 parser error(s), first: node 3 (Resize): unsupported mode;
        re-export the ONNX.
    """
    first = " ".join(errors[0].split()) if errors else "no error text"
    return PARSE_FAILED.format(path=path, count=len(errors), first=first)


def key_digest(parts: Mapping[str, Any]) -> str:
    """sha256 hex digest of ``parts`` as canonical JSON (sorted keys, no whitespace)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def onnx_files_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 over an ONNX file and every external-data file it references (sorted by location).

    Raises:
        ConfigError: the ONNX file does not exist (:data:`ONNX_MISSING`).
    """
    import onnx

    model_path = Path(path)
    if not model_path.is_file():
        raise ConfigError(ONNX_MISSING.format(path=str(path)))
    model = onnx.load(str(model_path), load_external_data=False)
    locations: set[str] = set()
    for tensor in _all_initializers(model.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    digest = hashlib.sha256()
    for file in [model_path, *(model_path.parent / loc for loc in sorted(locations))]:
        digest.update(file.name.encode() if file != model_path else b"model")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def build_plan(recipe: TrtBuildRecipe, *, progress: ProgressFn | None = None) -> BuiltPlan:
    """Build a TensorRT plan from ``recipe`` in a child process (spawn, ``CUDA_MODULE_LOADING=LAZY``).

    The child parses the ONNX (reporting every parser error), sets the workspace cap, optimisation level, flags and
    one optimisation profile per :class:`~fairsample.core.engine_spec.ShapeProfile` (``set_shape`` for every input),
    loads/saves the timing cache, and checks ``build_serialized_network`` for None. On an out-of-memory failure the
    build is retried once with :func:`oom_retry_recipe`.

    Args:
        recipe: what to build.
        progress: called with each progress/log line from the child (``"[12.3 s] ..."``); None logs them at INFO.

    Returns:
        The plan bytes as a :class:`BuiltPlan` (``.recipe`` is the recipe actually built).

    Raises:
        ImportError: tensorrt is not installed (names the ``[tensorrt]`` extra).
        EngineLoadError: no CUDA device, or the build failed (one-line reason).
        ConfigError: the ONNX file does not exist.

    Example:
        >>> from fairsample.export.trt_profiles import default_profiles
        >>> recipe = TrtBuildRecipe(onnx_path="unet/model.fp16.onnx", profiles=default_profiles(64, 2))
        >>> plan = build_plan(recipe)  # doctest: +SKIP
        >>> plan.recipe.workspace_bytes  # doctest: +SKIP
        4294967296
    """
    if importlib.util.find_spec("tensorrt") is None:
        raise ImportError(TENSORRT_MISSING)
    if not torch.cuda.is_available():
        raise EngineLoadError(NO_CUDA_DEVICE)
    if not Path(recipe.onnx_path).is_file():
        raise ConfigError(ONNX_MISSING.format(path=recipe.onnx_path))
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # give the child the memory torch is caching
    return build_with_retry(recipe, progress=progress, worker=_build_worker)


def build_with_retry(recipe: TrtBuildRecipe, *, progress: ProgressFn | None, worker: WorkerFn) -> BuiltPlan:
    """Run ``worker`` in a spawn child (one OOM retry); the process/streaming half of :func:`build_plan`.

    ``worker(recipe, plan_path, queue)`` must be a module-level function; it puts ``("log", line)`` messages, then
    ``("done",)`` after writing the plan to ``plan_path``, or ``("error", kind, reason)``.
    """
    emit = progress if progress is not None else logger.info
    start = time.monotonic()
    log: list[str] = []
    current, retried = recipe, False
    while True:
        kind, payload = _run_child(current, worker, emit, log, start)
        if kind == "done":
            return BuiltPlan(payload, recipe=current, retried=retried, seconds=time.monotonic() - start, log=log[-50:])
        if kind == "oom" and not retried:
            smaller = oom_retry_recipe(current)
            if smaller is not None:
                desc = "; ".join(p.describe() for p in smaller.profiles)
                line = OOM_RETRY.format(workspace=smaller.workspace_bytes >> 20, profiles=f"[{desc}]")
                logger.warning(line)
                emit(line)
                current, retried = smaller, True
                continue
        if kind == "oom":
            retry = " (after one retry with a smaller workspace/profile)" if retried else ""
            raise EngineLoadError(BUILD_OOM.format(workspace=current.workspace_bytes >> 20, retry=retry, last=payload))
        if kind == "import":
            raise ImportError(TENSORRT_MISSING)
        if kind == "config":
            raise ConfigError(str(payload))
        raise EngineLoadError(payload.decode() if isinstance(payload, bytes) else str(payload))


def _run_child(
    recipe: TrtBuildRecipe, worker: WorkerFn, emit: ProgressFn, log: list[str], start: float
) -> tuple[str, Any]:
    """Start one build child, stream its lines, and return ``("done", plan_bytes)`` or ``(error_kind, reason)``."""
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="fairsample-trt-") as tmp:
        plan_path = os.path.join(tmp, "engine.plan")
        proc = ctx.Process(target=worker, args=(recipe, plan_path, messages), daemon=True)
        proc.start()
        result: tuple[str, Any] | None = None
        try:
            while result is None:
                try:
                    msg = messages.get(timeout=_PROGRESS_POLL_S)
                except queue_module.Empty:
                    if proc.is_alive():
                        continue
                    try:
                        msg = messages.get(timeout=_PROGRESS_POLL_S)  # last words after exit
                    except queue_module.Empty:
                        result = ("build", BUILD_CRASHED.format(code=proc.exitcode))
                        break
                if msg[0] == "log":
                    line = f"[{time.monotonic() - start:.1f} s] {msg[1]}"
                    log.append(line)
                    emit(line)
                elif msg[0] == "done":
                    result = ("done", Path(plan_path).read_bytes())
                else:
                    result = (msg[1], msg[2])
        finally:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()
            messages.close()
    return result


def _build_worker(recipe: TrtBuildRecipe, plan_path: str, messages: Any) -> None:
    """Child entry point: build with tensorrt and report through ``messages`` (never raises)."""
    os.environ["CUDA_MODULE_LOADING"] = "LAZY"
    errors: list[str] = []

    def emit(line: str) -> None:
        messages.put(("log", line))

    try:
        plan = _trt_build(recipe, emit, errors)
        Path(plan_path).write_bytes(plan)
        messages.put(("done",))
    except _BuildFailure as exc:
        messages.put(("error", exc.kind, exc.reason))
    except ConfigError as exc:
        messages.put(("error", "config", str(exc)))
    except MemoryError:
        messages.put(("error", "oom", "host memory exhausted"))
    except Exception as exc:  # anything tensorrt raises becomes one line in the parent
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        kind = "oom" if is_oom([text, *errors[-3:]]) else "build"
        messages.put(("error", kind, BUILD_ERROR.format(reason=text)))


def _trt_build(recipe: TrtBuildRecipe, emit: ProgressFn, errors: list[str]) -> bytes:
    """The tensorrt calls of ENGINES.md §5 (runs in the child)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise _BuildFailure("import", TENSORRT_MISSING) from None
    settings = builder_settings(recipe, trt.__version__)
    trt_logger = _make_logger(trt, emit, errors)
    builder = trt.Builder(trt_logger)
    flags = 0
    for name in settings.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    emit(f"parsing {recipe.onnx_path}")
    if not parser.parse_from_file(recipe.onnx_path):
        parse_errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
        for text in parse_errors:
            emit(f"ONNX parser error: {text}")
        raise _BuildFailure("parse", format_parse_errors(recipe.onnx_path, parse_errors))
    graph_shapes = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    if set(graph_shapes) != set(INPUT_NAMES):
        raise _BuildFailure("build", BAD_NETWORK_INPUTS.format(got=sorted(graph_shapes), expected=list(INPUT_NAMES)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, recipe.workspace_bytes)
    config.builder_optimization_level = recipe.builder_optimization_level
    for name in settings.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if settings.hardware_compat is not None:
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, settings.hardware_compat)
    if recipe.tactic_sources:
        config.set_tactic_sources(sum(1 << int(getattr(trt.TacticSource, s)) for s in recipe.tactic_sources))
    for profile in recipe.profiles:
        trt_profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:
            trt_profile.set_shape(name, *input_shapes(profile, name, graph_shapes[name]))
        config.add_optimization_profile(trt_profile)
    cache_path = Path(recipe.timing_cache_path) if recipe.timing_cache_path else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        timing_cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
            emit(f"timing cache {cache_path} does not match this GPU/TensorRT; starting an empty one")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    monitor = _make_progress_monitor(trt, emit)
    if monitor is not None:
        config.progress_monitor = monitor
    emit(f"building {len(recipe.profiles)} profile(s), workspace {recipe.workspace_bytes >> 20} MiB")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        last = errors[-1] if errors else "no error logged"
        raise _BuildFailure("oom" if is_oom(errors) else "build", BUILD_RETURNED_NONE.format(last=last))
    if cache_path is not None:
        _atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    emit("build finished")
    return bytes(plan)


def _make_logger(trt: Any, emit: ProgressFn, errors: list[str]) -> Any:
    """A ``trt.ILogger`` that streams warnings/errors to the parent and keeps errors for OOM detection."""
    severity = trt.ILogger.Severity
    error_levels = {severity.INTERNAL_ERROR, severity.ERROR}
    shown = error_levels | {severity.WARNING}

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, msg: str) -> None:
            text = " ".join(str(msg).split())
            if level in error_levels:
                errors.append(text)
            if level in shown:
                emit(f"TensorRT {str(level).rsplit('.', 1)[-1]}: {text}")

    return _Logger()


def _make_progress_monitor(trt: Any, emit: ProgressFn) -> Any:
    """A ``trt.IProgressMonitor`` reporting top-level phase starts/ends and steps (None when unavailable)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._top: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self._top[phase_name] = num_steps
                emit(f"{phase_name}: started ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self._top:
                emit(f"{phase_name}: step {step + 1}/{self._top[phase_name]}")
            return True

        def phase_finish(self, phase_name: str) -> None:
            if self._top.pop(phase_name, None) is not None:
                emit(f"{phase_name}: finished")

    return _Monitor()


def _parser_error_text(error: Any) -> str:
    """One ``IParserError`` as ``"node 12 (Resize, /up/Resize): <desc>"`` (falls back to ``str(error)``)."""
    try:
        node, desc = error.node(), error.desc()
    except AttributeError:
        return " ".join(str(error).split())
    extra = [str(f()) for f in (getattr(error, "node_operator", None), getattr(error, "node_name", None)) if f]
    where = f"node {node}" + (f" ({', '.join(e for e in extra if e)})" if any(extra) else "")
    return " ".join(f"{where}: {desc}".split())


def _all_initializers(graph: Any) -> Iterable[Any]:
    """Initializers of ``graph`` and of every subgraph (If/Loop bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_initializers(attr.g)
            for sub in attr.graphs:
                yield from _all_initializers(sub)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def _major(version: str) -> int:
    """``"10.9.0.34" -> 10`` (0 when unparsable)."""
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else 0

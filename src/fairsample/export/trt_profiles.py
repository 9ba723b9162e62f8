"""TensorRT optimisation-profile planning: default profiles, validation, nearest-opt selection (ENGINES.md §2.3, §5).

A fairsample profile is a :class:`~fairsample.core.engine_spec.ShapeProfile` over the engine's dynamic dims (N, H, W);
every other dim (C, S, D) is static and comes from the ONNX graph. This module is pure Python: it never imports
tensorrt, so the build recipe and the runtime's profile choice are unit-tested on CPU.

Selection rule (ENGINES.md §2.3 rule 4): among the profiles that contain the requested shape, take the one whose
``opt`` is nearest, by L1 distance in (H, W) first (``|H - H_opt| + |W - W_opt|``), then by ``|N - N_opt|``, then
the earliest profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fairsample.core.engine_spec import ShapeProfile
from fairsample.core.errors import ConfigError

INPUT_NAMES: tuple[str, str, str] = ("sample", "timestep", "encoder_hidden_states")
"""Engine inputs, in binding order (ENGINES.md §2.1)."""
OUTPUT_NAME = "out_sample"
"""The engine's single output (ENGINES.md §2.1)."""

UNSUPPORTED_SHAPE = (
    "shape (N={n}, H={h}, W={w}) is outside every TensorRT profile; supported (N, H, W) ranges: {ranges}; "
    "rebuild the engine with a profile that covers it (profiles=...) or use backend='onnxruntime'."
)
NO_PROFILES = "`profiles` must hold at least one ShapeProfile, got none; pass default_profiles(...) or your own."
BAD_PROFILE_ITEM = (
    "`profiles[{index}]` must be a ShapeProfile or a mapping with 'min', 'opt' and 'max' (N, H, W) triples, "
    "got {value!r}; build it with ShapeProfile(min=..., opt=..., max=...)."
)
DUPLICATE_PROFILE = "`profiles[{index}]` duplicates profiles[{first}] ({profile}); drop one of them."
BAD_BATCH = "`max_batch` must be a positive int (B, images per call before CFG doubling), got {value!r}."
BAD_RESOLUTION = "`{name}` must be a positive int or an (H, W) pair of positive ints, got {value!r}."
BAD_STATIC_DIM = (
    "input `{name}` has static dim {axis} = {static} in the ONNX graph, but the profile asks for {wanted}; "
    "re-export with that dim dynamic or use a profile with {static} there."
)
UNEXPECTED_DYNAMIC_DIM = (
    "input `{name}` dim {axis} is dynamic ({dim!r}) in the ONNX graph, but only N, H and W may be; "
    "re-export with C, S and D static (ENGINES.md §2.1)."
)
BAD_INPUT_RANK = (
    "input `{name}` has rank {rank} in the ONNX graph; expected sample [N, C, H, W], timestep [N] and "
    "encoder_hidden_states [N, S, D]; re-export with fairsample.export."
)


def as_resolution(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """An int or (H, W) pair as a validated ``(H, W)`` tuple (``name`` is used in the error)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ConfigError(BAD_RESOLUTION.format(name=name, value=value))
    return (int(value[0]), int(value[1]))


def default_profiles(
    sample_size: int | Sequence[int],
    max_batch: int,
    *,
    resolutions: Iterable[int | Sequence[int]] = (),
    extra: Iterable[ShapeProfile | Mapping[str, Any]] = (),
) -> tuple[ShapeProfile, ...]:
    """The default profile set: opt N = B and opt N = 2B (CFG) at the native resolution, plus extra points.

    For each resolution (the native ``sample_size`` first, then ``resolutions``) two profiles with static H, W are
    made: ``N in [1, B]`` tuned for N = B (unguided sampling) and ``N in [1, 2B]`` tuned for N = 2B (one batched CFG
    call, ENGINES.md §3). User-given ``extra`` profiles are appended; duplicates are dropped.

    Args:
        sample_size: the model's native (latent or pixel) resolution, an int or ``(H, W)``.
        max_batch: B, the largest number of images per call before CFG doubling (>= 1).
        resolutions: further ``(H, W)`` opt points (SD models that sample at several sizes).
        extra: user profiles (``ShapeProfile`` or ``{"min", "opt", "max"}`` mappings), appended as given.

    Returns:
        A validated, duplicate-free tuple of profiles.

    Raises:
        ConfigError: a bad ``sample_size``, ``max_batch``, resolution or profile.

    Example:
        >>> [p.opt for p in default_profiles(32, 4)]
        [(4, 32, 32), (8, 32, 32)]
        >>> default_profiles((32, 48), 1)[1].describe()
        'N 1-2, H 32-32, W 48-48'
    """
    if not (isinstance(max_batch, int) and not isinstance(max_batch, bool) and max_batch >= 1):
        raise ConfigError(BAD_BATCH.format(value=max_batch))
    sizes = [as_resolution("sample_size", sample_size)]
    sizes += [as_resolution("resolutions", r) for r in resolutions]
    profiles: list[ShapeProfile | Mapping[str, Any]] = []
    for h, w in sizes:
        profiles.append(ShapeProfile(min=(1, h, w), opt=(max_batch, h, w), max=(max_batch, h, w)))
        profiles.append(ShapeProfile(min=(1, h, w), opt=(2 * max_batch, h, w), max=(2 * max_batch, h, w)))
    profiles.extend(extra)
    return validate_profiles(profiles, drop_duplicates=True)


def validate_profiles(
    profiles: Iterable[ShapeProfile | Mapping[str, Any]], *, drop_duplicates: bool = False
) -> tuple[ShapeProfile, ...]:
    """Check a profile list: non-empty, each ``1 <= min <= opt <= max`` per (N, H, W), no duplicates.

    Args:
        profiles: ``ShapeProfile`` objects or mappings ``{"min": (N, H, W), "opt": ..., "max": ...}`` (the manifest
            form written by :func:`profile_to_dict`).
        drop_duplicates: silently drop repeated profiles instead of raising.

    Returns:
        The profiles as a tuple of ``ShapeProfile``, in the given order.

    Raises:
        ConfigError: an empty list, a malformed item, bounds out of order, or a duplicate.

    Example:
        >>> validate_profiles([{"min": [1, 8, 8], "opt": [2, 8, 8], "max": [4, 8, 8]}])[0].opt
        (2, 8, 8)
    """
    out: list[ShapeProfile] = []
    for i, item in enumerate(profiles):
        p = _as_profile(i, item)
        if p in out:
            if drop_duplicates:
                continue
            raise ConfigError(DUPLICATE_PROFILE.format(index=i, first=out.index(p), profile=p.describe()))
        out.append(p)
    if not out:
        raise ConfigError(NO_PROFILES)
    return tuple(out)


def profile_to_dict(profile: ShapeProfile) -> dict[str, list[int]]:
    """The JSON-safe manifest form ``{"min": [N, H, W], "opt": [...], "max": [...]}`` of a profile."""
    return {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)}


def describe_profiles(profiles: Sequence[ShapeProfile]) -> str:
    """All supported ranges in one line, e.g. ``"[N 1-4, H 32-32, W 32-32]; [N 1-8, ...]"``."""
    return "; ".join(f"[{p.describe()}]" for p in profiles)


def select_profile(profiles: Sequence[ShapeProfile], n: int, height: int, width: int) -> int:
    """Index of the profile to run ``(n, height, width)`` with: the containing profile with the nearest ``opt``.

    Distance is the L1 distance in (H, W), then ``|N - N_opt|``; ties go to the earliest profile (ENGINES.md §2.3
    rule 4).

    Args:
        profiles: the engine's profiles, in build order (the index is TensorRT's profile index).
        n: rows in the call (2B with CFG).
        height: H of ``sample``.
        width: W of ``sample``.

    Returns:
        The profile index.

    Raises:
        ConfigError: no profile contains the shape; the message lists every supported range
            (:data:`UNSUPPORTED_SHAPE`).

    Example:
        >>> ps = default_profiles(32, 4)
        >>> select_profile(ps, 3, 32, 32), select_profile(ps, 7, 32, 32)
        (0, 1)
    """
    best: tuple[int, int, int] | None = None
    for i, p in enumerate(profiles):
        if not p.contains(n, height, width):
            continue
        key = (abs(height - p.opt[1]) + abs(width - p.opt[2]), abs(n - p.opt[0]), i)
        if best is None or key < best:
            best = key
    if best is None:
        raise ConfigError(UNSUPPORTED_SHAPE.format(n=n, h=height, w=width, ranges=describe_profiles(profiles)))
    return best[2]


def input_shapes(
    profile: ShapeProfile, name: str, graph_shape: Sequence[int | str | None]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The ``(min, opt, max)`` shapes of one engine input for ``IOptimizationProfile.set_shape``.

    Dynamic dims of the graph shape (negative, None or a symbolic name) are filled from the profile: N is dim 0 of
    every input, H and W are dims 2 and 3 of ``sample``. Static dims are kept; a static N/H/W that disagrees with the
    profile is an error (the dynamo exporter can silently specialise a dim, ENGINES.md §4.3).

    Args:
        profile: the (N, H, W) profile.
        name: one of :data:`INPUT_NAMES`.
        graph_shape: the input's shape in the parsed network / ONNX graph, e.g. ``(-1, 4, -1, -1)``.

    Returns:
        Three full shapes (min, opt, max).

    Raises:
        ConfigError: an unexpected rank or a static dim that contradicts the profile.

    Example:
        >>> p = ShapeProfile(min=(1, 8, 8), opt=(2, 8, 8), max=(4, 16, 16))
        >>> input_shapes(p, "sample", (-1, 4, -1, -1))
        ((1, 4, 8, 8), (2, 4, 8, 8), (4, 4, 16, 16))
        >>> input_shapes(p, "encoder_hidden_states", ("N", 77, 768))[2]
        (4, 77, 768)
    """
    rank = {"sample": 4, "timestep": 1, "encoder_hidden_states": 3}.get(name)
    if rank is None or len(graph_shape) != rank:
        raise ConfigError(BAD_INPUT_RANK.format(name=name, rank=len(graph_shape)))
    dyn_axes = {0: 0, 2: 1, 3: 2} if name == "sample" else {0: 0}  # graph axis -> profile (N, H, W) index
    shapes: list[tuple[int, ...]] = []
    for bound in (profile.min, profile.opt, profile.max):
        shape: list[int] = []
        for axis, dim in enumerate(graph_shape):
            static = isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0
            if axis in dyn_axes:
                wanted = bound[dyn_axes[axis]]
                if static and dim != wanted:
                    raise ConfigError(BAD_STATIC_DIM.format(name=name, axis=axis, static=dim, wanted=wanted))
                shape.append(wanted)
            elif static:
                shape.append(int(dim))  # type: ignore[arg-type]
            else:
                raise ConfigError(UNEXPECTED_DYNAMIC_DIM.format(name=name, axis=axis, dim=dim))
        shapes.append(tuple(shape))
    return shapes[0], shapes[1], shapes[2]


def _as_profile(index: int, item: ShapeProfile | Mapping[str, Any]) -> ShapeProfile:
    """One profile item (object or manifest mapping) as a validated ShapeProfile."""
    if isinstance(item, ShapeProfile):
        return item
    if isinstance(item, Mapping) and {"min", "opt", "max"} <= set(item):
        try:
            bounds = {k: tuple(item[k]) for k in ("min", "opt", "max")}
        except TypeError:
            raise ConfigError(BAD_PROFILE_ITEM.format(index=index, value=item)) from None
        return ShapeProfile(**bounds)  # validates 1 <= min <= opt <= max
    raise ConfigError(BAD_PROFILE_ITEM.format(index=index, value=item))

"""Full-weight refit of a TensorRT engine (ENGINES.md §8): :func:`resolve_refit_weights` maps and checks a whole torch
state dict onto every engine weight before TensorRT is touched (pure Python, unit-tested on CPU);
:func:`_refit_prototypes` and :func:`_set_refit_weights` are the thin TensorRT calls around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fairsample.core.engine_spec import is_finite
from fairsample.core.errors import ConfigError, ValidationFailed

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
REFIT_FAILED = "TensorRT refit_cuda_engine failed ({detail})"

_REFIT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "int32": torch.int32,
    "int64": torch.int64,
}
#: TensorRT dtype names → ours (refit prototypes here; engine I/O in the runtime)
_TRT_DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
}


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


def _refit_prototypes(refitter: Any) -> dict[str, tuple[int, str]]:
    """``{engine weight name: (element count, dtype name)}`` of every refittable weight, read from the refitter."""
    prototypes = {}
    for name in refitter.get_all_weights():
        proto = refitter.get_weights_prototype(name)
        dtype = _TRT_DTYPE_NAMES.get(str(proto.dtype).rsplit(".", 1)[-1], str(proto.dtype))
        prototypes[name] = (int(proto.size), dtype)
    return prototypes


def _set_refit_weights(trt: Any, refitter: Any, weights: Mapping[str, Tensor]) -> str | None:
    """Hand every resolved weight to the refitter and refit the engine; the failure reason (the engine is then
    unusable), or None on success."""
    trt_types = {
        torch.float32: trt.DataType.FLOAT,
        torch.float16: trt.DataType.HALF,
        torch.bfloat16: trt.DataType.BF16,
        torch.int8: trt.DataType.INT8,
        torch.int32: trt.DataType.INT32,
        torch.int64: trt.DataType.INT64,
    }
    for name, tensor in weights.items():
        ok = refitter.set_named_weights(name, trt.Weights(trt_types[tensor.dtype], tensor.data_ptr(), tensor.numel()))
        if not ok:
            return REFIT_FAILED.format(detail=f"set_named_weights rejected {name!r}")
    missing = list(refitter.get_missing_weights())
    if missing or not refitter.refit_cuda_engine():
        detail = f"{len(missing)} weight(s) still missing, first {missing[0]!r}" if missing else "returned False"
        return REFIT_FAILED.format(detail=detail)
    return None

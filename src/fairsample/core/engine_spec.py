"""Shared engine contract: the :class:`Engine` protocol, :class:`EngineSpec`, :class:`ShapeProfile`,
:class:`MemoryReport` and the boundary checks every backend runs (ENGINES.md §2).

An engine runs the U-Net forward only, ``(sample, timestep, encoder_hidden_states) -> out_sample``, with a float32
boundary whatever the precision inside (ENGINES.md §2.1). This module imports only torch and numpy, so backends and
samplers can depend on it without pulling in onnxruntime or tensorrt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, Self, get_args, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from fairsample.core.errors import ConfigError

Backend = Literal["torch", "onnxruntime", "tensorrt", "openvino"]
PredictionType = Literal["epsilon", "v_prediction", "sample"]
Precision = Literal["fp32", "fp16", "bf16"]
Capability = Literal["dynamic_shapes", "cuda_graphs", "refit", "io_binding"]
ValidationReport = dict[str, Any]
"""JSON-safe report returned by :meth:`Engine.refit` (``"passed"`` plus backend-specific fields)."""

PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
PRECISIONS: tuple[str, ...] = get_args(Precision)
BOUNDARY_DTYPE = torch.float32
"""Every engine takes and returns float32 tensors (ENGINES.md §2.1)."""

_BAD_PREDICTION_TYPE = "`prediction_type` must be one of {allowed}, got {value!r}; use the bundle's prediction_type."
_BAD_PRECISION = "`precision` must be one of {allowed}, got {value!r}."
_BAD_DTYPE = "`dtype` must be one of {allowed}, got {value!r}; use torch.float32 on CPU."
_BAD_SPEC_INT = "`{name}` must be a positive int, got {value!r}."
_BAD_SAMPLE_SIZE = "`sample_size` must be a positive int or a (height, width) pair of positive ints, got {value!r}."
_BAD_PROFILE = (
    "`ShapeProfile` needs 1 <= min <= opt <= max for each of (N, H, W), got min={min}, opt={opt}, max={max}; "
    "fix the profile bounds."
)
_BAD_INPUT_TYPE = "`{name}` must be a torch.Tensor{numpy}, got {type_name}."
_NUMPY_ON_DEVICE = "`{name}` is a numpy array but the engine runs on {device}; pass a torch tensor on {device}."
_WRONG_DEVICE = "`{name}` is on {got} but the engine runs on {device}; move it with .to({device_str!r})."
_BAD_INPUT_DTYPE = "`{name}` has dtype {dtype}; pass a real-valued (float or int) tensor, e.g. float32."
_BAD_SHAPE = (
    "`{name}` has shape {got}; expected sample {sample}, timestep [N] or [] and encoder_hidden_states {ehs} "
    "(float32), with the same N everywhere."
)
_UNSUPPORTED_SHAPE = (
    "shape (N={n}, H={h}, W={w}) is outside every engine profile; supported (N, H, W) ranges: {ranges}."
)
_BAD_OUT = (
    "`out` must be a float32 torch.Tensor of shape {expected} on {device}, got {got}; allocate it with torch.empty."
)


@dataclass(frozen=True)
class ShapeProfile:
    """One optimisation profile: inclusive (N, H, W) bounds and the shape the backend tunes for.

    Attributes:
        min: smallest supported ``(N, H, W)``; N counts engine rows (2B with CFG), H and W are latent/pixel sizes.
        opt: the shape the backend optimises for; TensorRT picks the profile with the nearest ``opt``.
        max: largest supported ``(N, H, W)``.

    Example:
        >>> p = ShapeProfile(min=(1, 8, 8), opt=(2, 16, 16), max=(8, 32, 32))
        >>> p.contains(4, 16, 32), p.contains(16, 16, 16)
        (True, False)
    """

    min: tuple[int, int, int]  # (N, H, W) lower bounds, inclusive
    opt: tuple[int, int, int]  # (N, H, W) the backend tunes for
    max: tuple[int, int, int]  # (N, H, W) upper bounds, inclusive

    def __post_init__(self) -> None:
        dims = (self.min, self.opt, self.max)
        ok = all(len(d) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in d) for d in dims)
        ok = ok and all(1 <= lo <= mid <= hi for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True))
        if not ok:
            raise ConfigError(_BAD_PROFILE.format(min=self.min, opt=self.opt, max=self.max))

    def contains(self, n: int, height: int, width: int) -> bool:
        """True when ``min <= (n, height, width) <= max`` element-wise."""
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, (n, height, width), self.max, strict=True))

    def describe(self) -> str:
        """``"N 1-8, H 8-32, W 8-32"``: the ranges, for error messages."""
        names = ("N", "H", "W")
        return ", ".join(f"{k} {lo}-{hi}" for k, lo, hi in zip(names, self.min, self.max, strict=True))


@dataclass(frozen=True)
class EngineSpec:
    """What an engine computes: channels, conditioning shape, prediction target, precision and shape profiles.

    Attributes:
        in_channels: C of ``sample`` (4 for SD latents, image channels for pixel models).
        out_channels: C_out of ``out_sample``.
        sample_size: the training resolution ``(H, W)``; an int is stored as ``(n, n)``.
        seq_len: S of ``encoder_hidden_states``, or None when the engine accepts any S (torch).
        hidden_dim: D of ``encoder_hidden_states`` (the U-Net's ``cross_attention_dim``).
        prediction_type: what ``out_sample`` is: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        precision: compute precision inside the engine; the boundary is float32 regardless.
        profiles: supported ``(N, H, W)`` ranges; empty means every positive shape (dynamic shapes).

    Example:
        >>> spec = EngineSpec(in_channels=3, out_channels=3, sample_size=16, seq_len=4, hidden_dim=16,
        ...                   prediction_type="epsilon")
        >>> spec.sample_size, spec.supports(2, 16, 16)
        ((16, 16), True)
    """

    in_channels: int  # C of the input sample
    out_channels: int  # C of the prediction
    sample_size: tuple[int, int]  # training (H, W); an int n becomes (n, n)
    seq_len: int | None  # S of encoder_hidden_states; None = any
    hidden_dim: int  # D of encoder_hidden_states (cross_attention_dim)
    prediction_type: PredictionType  # target the U-Net was trained on
    precision: Precision = "fp32"  # compute precision inside the engine
    profiles: tuple[ShapeProfile, ...] = field(default=())  # empty = dynamic shapes

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "hidden_dim"):
            _check_positive_int(name, getattr(self, name))
        if self.seq_len is not None:
            _check_positive_int("seq_len", self.seq_len)
        size = self.sample_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if not (
            isinstance(size, tuple | list)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise ConfigError(_BAD_SAMPLE_SIZE.format(value=self.sample_size))
        object.__setattr__(self, "sample_size", (int(size[0]), int(size[1])))
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(_BAD_PREDICTION_TYPE.format(allowed=list(PREDICTION_TYPES), value=self.prediction_type))
        if self.precision not in PRECISIONS:
            raise ConfigError(_BAD_PRECISION.format(allowed=list(PRECISIONS), value=self.precision))
        object.__setattr__(self, "profiles", tuple(self.profiles))

    def supports(self, n: int, height: int, width: int) -> bool:
        """True when some profile contains ``(n, height, width)``; any positive shape if there are no profiles."""
        if n < 1 or height < 1 or width < 1:
            return False
        return not self.profiles or any(p.contains(n, height, width) for p in self.profiles)

    def describe_ranges(self) -> str:
        """The supported ranges as one string, for error messages."""
        if not self.profiles:
            return "any N, H, W >= 1"
        return "; ".join(f"[{p.describe()}]" for p in self.profiles)


@dataclass(frozen=True)
class MemoryReport:
    """Bytes an engine holds (ENGINES.md §9): weights plus reserved activation/workspace memory.

    Attributes:
        weights_bytes: parameters and buffers (or the serialized plan) resident on the engine's device.
        activations_bytes: activation/workspace memory reserved between calls; 0 when allocated per call.
        device: the device the bytes live on, e.g. ``"cpu"`` or ``"cuda:0"``.

    Example:
        >>> MemoryReport(weights_bytes=1024, activations_bytes=0, device="cpu").total_bytes
        1024
    """

    weights_bytes: int  # parameters + buffers on the device
    activations_bytes: int  # reserved activations/workspace between calls
    device: str = "cpu"  # where the bytes live

    @property
    def total_bytes(self) -> int:
        """``weights_bytes + activations_bytes``."""
        return self.weights_bytes + self.activations_bytes


@runtime_checkable
class Engine(Protocol):
    """A U-Net forward on one backend: ``(sample, timestep, encoder_hidden_states) -> out_sample`` (ENGINES.md §2.2).

    Contract (ENGINES.md §2.3): inputs are torch tensors on :attr:`device` (CPU backends also take numpy) and are
    cast to float32 once at the boundary; a scalar or ``[1]`` timestep is broadcast to ``[N]``; the returned tensor may
    alias engine-owned buffers until the next call unless ``out=`` is given; the same inputs give the same outputs;
    engines are not thread-safe and are context managers whose ``close()`` frees device memory.

    Example:
        >>> from fairsample.engines import Engine
        >>> isinstance(object(), Engine)
        False
    """

    @property
    def backend(self) -> Backend:
        """``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``."""
        ...

    @property
    def device(self) -> torch.device:
        """Where inputs must live and outputs are returned."""
        ...

    @property
    def spec(self) -> EngineSpec:
        """Channels, S, D, prediction type, precision and shape profiles."""
        ...

    @property
    def manifest(self) -> Mapping[str, Any]:
        """Cache-key parts, versions and the validation report (ENGINES.md §7)."""
        ...

    @property
    def capabilities(self) -> frozenset[str]:
        """A subset of ``{"dynamic_shapes", "cuda_graphs", "refit", "io_binding"}``."""
        ...

    def supports(self, n: int, height: int, width: int) -> bool:
        """True when the engine can run a batch of ``n`` rows at ``height`` x ``width``."""
        ...

    def __call__(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        *,
        out: Tensor | None = None,
    ) -> Tensor:
        """Run the U-Net: (N, C, H, W), (N,), (N, S, D) float32 -> (N, C_out, H, W) float32."""
        ...

    def refit(self, state_dict: Mapping[str, Tensor]) -> ValidationReport:
        """Replace every weight with ``state_dict`` (full set) and validate; ``"refit"`` capability only."""
        ...

    def memory(self) -> MemoryReport:
        """Weights and reserved activation bytes."""
        ...

    def close(self) -> None:
        """Free the engine's device memory; the engine is unusable afterwards."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def check_inputs(
    sample: Tensor | np.ndarray,
    timestep: Tensor | np.ndarray | float,
    encoder_hidden_states: Tensor | np.ndarray,
    *,
    spec: EngineSpec,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """Apply the ENGINES.md §2.3 boundary rules and return float32 tensors on ``device``.

    Numpy arrays are accepted when ``device`` is the CPU. Each input is cast to float32 once (no copy when it already
    is). A scalar, 0-d or ``[1]`` timestep is broadcast to a contiguous ``[N]`` float32 tensor. Shapes are checked
    against ``spec`` (channels, S, D) and its profiles.

    Args:
        sample: (N, C, H, W) with C = ``spec.in_channels``; any real dtype.
        timestep: scalar, (), (1,) or (N,); any real dtype (Euler's fractional timesteps pass unchanged).
        encoder_hidden_states: (N, S, D) with D = ``spec.hidden_dim`` and S = ``spec.seq_len`` when set.
        spec: the engine's :class:`EngineSpec`.
        device: the engine's device; tensors elsewhere are rejected, never moved silently.

    Returns:
        ``(sample, timestep, encoder_hidden_states)`` as float32 tensors on ``device`` of shapes (N, C, H, W), (N,),
        (N, S, D).

    Raises:
        ConfigError: wrong type, device, dtype or shape, or a shape outside every profile; the message lists the
            expected shapes.

    Example:
        >>> import numpy as np, torch
        >>> spec = EngineSpec(in_channels=3, out_channels=3, sample_size=8, seq_len=4, hidden_dim=16,
        ...                   prediction_type="epsilon")
        >>> x, t, e = check_inputs(np.zeros((2, 3, 8, 8)), 10, torch.zeros(2, 4, 16), spec=spec,
        ...                        device=torch.device("cpu"))
        >>> x.dtype, t.tolist(), e.shape
        (torch.float32, [10.0, 10.0], torch.Size([2, 4, 16]))
    """
    x = _to_tensor("sample", sample, device)
    e = _to_tensor("encoder_hidden_states", encoder_hidden_states, device)
    if isinstance(timestep, int | float) and not isinstance(timestep, bool):
        t = torch.tensor(float(timestep), dtype=BOUNDARY_DTYPE, device=device)
    elif isinstance(timestep, np.generic):
        t = torch.tensor(float(timestep), dtype=BOUNDARY_DTYPE, device=device)
    else:
        t = _to_tensor("timestep", timestep, device)

    def bad(name: str, got: tuple[int, ...]) -> ConfigError:
        s = "S" if spec.seq_len is None else spec.seq_len
        return ConfigError(
            _BAD_SHAPE.format(
                name=name,
                got=list(got),
                sample=f"[N, {spec.in_channels}, H, W]",
                ehs=f"[N, {s}, {spec.hidden_dim}]",
            )
        )

    if x.dim() != 4 or x.shape[1] != spec.in_channels or x.shape[0] < 1:
        raise bad("sample", tuple(x.shape))
    n, _, h, w = x.shape
    if (
        e.dim() != 3
        or e.shape[0] != n
        or e.shape[2] != spec.hidden_dim
        or (spec.seq_len is not None and e.shape[1] != spec.seq_len)
    ):
        raise bad("encoder_hidden_states", tuple(e.shape))
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
        t = t.reshape(()).expand(n).contiguous()
    elif not (t.dim() == 1 and t.shape[0] == n):
        raise bad("timestep", tuple(t.shape))
    if not spec.supports(n, h, w):
        raise ConfigError(_UNSUPPORTED_SHAPE.format(n=n, h=h, w=w, ranges=spec.describe_ranges()))
    return x, t, e


def check_out(out: Tensor | None, shape: tuple[int, ...], device: torch.device) -> None:
    """Reject an ``out=`` buffer that is not a float32 tensor of ``shape`` on ``device`` (ENGINES.md §2.3 rule 2)."""
    if out is None:
        return
    if not (
        isinstance(out, Tensor)
        and out.dtype == BOUNDARY_DTYPE
        and tuple(out.shape) == tuple(shape)
        and out.device == device
    ):
        got = f"{out.dtype} {list(out.shape)} on {out.device}" if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(_BAD_OUT.format(expected=list(shape), device=device, got=got))


def _check_positive_int(name: str, value: Any) -> None:
    """Positive-int field check for :class:`EngineSpec`."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ConfigError(_BAD_SPEC_INT.format(name=name, value=value))


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same place: ``cuda`` without an index is the current CUDA device, so a tensor on
    ``cuda:0`` is on an engine's ``cuda`` (``torch.device("cuda:0") != torch.device("cuda")`` in torch).

    Example:
        >>> cpu, cuda0, cuda1 = torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:1")
        >>> same_device(cpu, cpu), same_device(cuda1, cuda0), same_device(cpu, cuda0)
        (True, False, False)
    """
    if a.type != b.type:
        return False
    if a.index == b.index or a.type == "cpu":
        return True
    if a.index is not None and b.index is not None:
        return False
    current = torch.cuda.current_device() if a.type == "cuda" else 0
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def _to_tensor(name: str, value: Any, device: torch.device) -> Tensor:
    """One boundary input to a float32 tensor on ``device`` (numpy only on CPU; never a silent device move)."""
    if isinstance(value, np.ndarray):
        if device.type != "cpu":
            raise ConfigError(_NUMPY_ON_DEVICE.format(name=name, device=device))
        if value.dtype.kind not in "fiu":
            raise ConfigError(_BAD_INPUT_DTYPE.format(name=name, dtype=value.dtype))
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, Tensor):
        numpy = " (or numpy array)" if device.type == "cpu" else ""
        raise ConfigError(_BAD_INPUT_TYPE.format(name=name, numpy=numpy, type_name=type(value).__name__))
    if not same_device(value.device, device):
        raise ConfigError(_WRONG_DEVICE.format(name=name, got=value.device, device=device, device_str=str(device)))
    if value.dtype == torch.bool or value.is_complex():
        raise ConfigError(_BAD_INPUT_DTYPE.format(name=name, dtype=value.dtype))
    return value.to(BOUNDARY_DTYPE)


def dtype_precision(dtype: torch.dtype) -> Precision:
    """The :data:`Precision` label of a torch floating dtype (float32 -> ``"fp32"``)."""
    labels: dict[torch.dtype, Precision] = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    if dtype not in labels:
        raise ConfigError(_BAD_DTYPE.format(allowed=[str(d) for d in labels], value=dtype))
    return labels[dtype]


def is_finite(x: Tensor) -> bool:
    """True when ``x`` has no NaN or Inf (debug/validation mode, ENGINES.md §2.3 rule 5)."""
    return bool(torch.isfinite(x).all())


class EngineLifetime:
    """Context-manager support shared by the engine backends: ``with engine: ...`` closes it on exit."""

    def close(self) -> None:  # overridden by every backend
        """Free the backend's resources; idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def sample_size_hw(value: Any) -> tuple[int, int]:
    """A U-Net config's ``sample_size`` (int or [H, W]) as an (H, W) tuple.

    Example:
        >>> sample_size_hw(32), sample_size_hw([16, 24])
        ((32, 32), (16, 24))
    """
    if isinstance(value, list | tuple):
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))

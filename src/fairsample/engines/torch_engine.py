"""The torch backend: eager ``UNet2DConditionModel`` forward, the oracle every other backend is validated against.

Batch invariance. fairsample promises that seed k gives the same image whatever the batch it is generated in. On CPU
a plain batched forward breaks that by 1-2e-6 per call: oneDNN convolutions and the GEMMs with few rows (the
timestep-embedding ``Linear`` layers, M = N) choose their blocking, and hence their summation order, from the batch
size; a guided DDIM run amplifies this into visibly different uint8 pixels. With ``batch_invariant=True`` (the
default) the engine runs exactly those ops one sample at a time (``conv2d`` on 4-D and ``linear`` on 2-D inputs,
through a thread-local torch function mode); every other op (group norm, attention, token-major ``linear`` with
M = N*L rows, element-wise ops) was measured row-independent. Sample i of a batch is then bitwise equal to the same
sample run alone. Cost on CPU (1 thread): +7-12 % per call on a 16 M-parameter U-Net at 32x32, +28-51 % on the
0.25 M-parameter test U-Net (about 2 ms of it is the function-mode dispatch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import diffusers
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import Tensor
from torch.overrides import TorchFunctionMode

from fairsample.core.engine_spec import (
    PREDICTION_TYPES,
    EngineLifetime,
    EngineSpec,
    MemoryReport,
    ValidationReport,
    check_inputs,
    check_out,
    dtype_precision,
    is_finite,
    sample_size_hw,
)
from fairsample.core.errors import ConfigError, EngineLoadError, ValidationFailed

_NOT_A_UNET = "`unet` must be a diffusers UNet2DConditionModel, got {type_name}; load the bundle's U-Net first."
_BAD_PREDICTION_TYPE = "`prediction_type` must be one of {allowed}, got {value!r}; use the bundle's prediction_type."
_BAD_CROSS_DIM = "`unet.config.cross_attention_dim` must be one int, got {value!r}; per-block dims are not supported."
_NO_DEVICE = "`device` {device!r} is not available on this machine; use device='cpu'."
_CLOSED = "this TorchEngine was closed; load a new engine with fairsample.engines.load_engine(bundle)."
_NONFINITE_OUTPUT = "the torch engine produced NaN/Inf at timestep(s) {timesteps}; check the weights and inputs."
_REFIT_MISMATCH = (
    "`state_dict` does not match the engine's U-Net: {missing} missing (first: {first_missing}), {unexpected} "
    "unexpected (first: {first_unexpected}), {shape} with a wrong shape (first: {first_shape}); pass the full state "
    "dict of the same architecture."
)
_REFIT_NOT_TENSOR = "`state_dict[{key!r}]` is a {type_name}, not a torch.Tensor; pass a full tensor state dict."
_REFIT_NONFINITE = "`state_dict` has NaN/Inf in {count} tensor(s) (first: {first}); the engine keeps its old weights."

_ROW_WISE_OPS = (F.conv2d, F.linear)


class _RowWiseGemm(TorchFunctionMode):
    """Run ``conv2d`` and 2-D ``linear`` one sample at a time so their summation order is batch-size independent."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _ROW_WISE_OPS and args and isinstance(args[0], Tensor):
            x = args[0]
            if x.shape[0] > 1 and x.dim() == (4 if func is F.conv2d else 2):
                rows = [func(_aligned(x[i : i + 1]), *args[1:], **kwargs) for i in range(x.shape[0])]
                return torch.cat(rows)
        return func(*args, **kwargs)


def _aligned(x: Tensor) -> Tensor:
    """A contiguous, 64-byte aligned view or copy, so a row hits the same kernel path as a lone sample would."""
    x = x.contiguous()
    return x if x.data_ptr() % 64 == 0 else x.clone()


class TorchEngine(EngineLifetime):
    """The torch (oracle) backend: eager diffusers U-Net forward behind the :class:`~fairsample.engines.Engine` API.

    The engine takes over ``unet``: it is moved to ``device``/``dtype`` and put in eval mode. Inputs and outputs are
    float32 at the boundary; fp16/bf16 engines cast inside. Outputs are fresh tensors (never engine-owned buffers),
    and ``out=`` receives a copy.

    Args:
        unet: the U-Net to run; ``cross_attention_dim`` must be a single int.
        prediction_type: what the U-Net predicts, from the model bundle: ``"epsilon"``, ``"v_prediction"`` or
            ``"sample"``.
        device: where to run, e.g. ``"cpu"`` (default) or ``"cuda:0"``.
        dtype: compute dtype: torch.float32 (default), torch.float16 or torch.bfloat16.
        seq_len: S of ``encoder_hidden_states`` to enforce, or None to accept any S.
        batch_invariant: run ``conv2d`` and 2-D ``linear`` per sample so sample i is bitwise identical whatever the
            batch (module docstring); False runs the plain batched forward, ~1e-6 off across batch sizes.
        check_finite: debug/validation mode: raise :class:`~fairsample.core.errors.ValidationFailed` on NaN/Inf
            outputs.

    Raises:
        ConfigError: ``unet`` is not a ``UNet2DConditionModel``, or a bad ``prediction_type`` or ``dtype``.
        EngineLoadError: ``device`` is not available.

    Example:
        >>> import torch
        >>> from diffusers import UNet2DConditionModel
        >>> unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
        ...     layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        ...     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
        ...     norm_num_groups=8)
        >>> engine = TorchEngine(unet, prediction_type="epsilon")
        >>> engine(torch.zeros(2, 3, 8, 8), torch.tensor(10.0), torch.zeros(2, 4, 16)).shape
        torch.Size([2, 3, 8, 8])
    """

    backend: Literal["torch"] = "torch"
    capabilities: frozenset[str] = frozenset({"dynamic_shapes", "refit"})

    def __init__(
        self,
        unet: UNet2DConditionModel,
        *,
        prediction_type: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seq_len: int | None = None,
        batch_invariant: bool = True,
        check_finite: bool = False,
    ) -> None:
        if not isinstance(unet, UNet2DConditionModel):
            raise ConfigError(_NOT_A_UNET.format(type_name=type(unet).__name__))
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(_BAD_PREDICTION_TYPE.format(allowed=list(PREDICTION_TYPES), value=prediction_type))
        precision = dtype_precision(dtype)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineLoadError(_NO_DEVICE.format(device=str(device)))
        cross = unet.config.cross_attention_dim
        if isinstance(cross, list | tuple):
            if len(set(cross)) != 1:
                raise ConfigError(_BAD_CROSS_DIM.format(value=cross))
            cross = cross[0]
        self.dtype = dtype
        self.batch_invariant = batch_invariant
        self.check_finite = check_finite
        unet = unet.to(self.device)
        if unet.dtype != dtype:
            unet = unet.to(dtype=dtype)
        self._unet: UNet2DConditionModel | None = unet.eval()
        self.spec = EngineSpec(
            in_channels=int(unet.config.in_channels),
            out_channels=int(unet.config.out_channels),
            sample_size=sample_size_hw(unet.config.sample_size),
            seq_len=seq_len,
            hidden_dim=int(cross),
            prediction_type=prediction_type,  # type: ignore[arg-type]
            precision=precision,
        )
        self.manifest: Mapping[str, Any] = MappingProxyType(
            {
                "backend": self.backend,
                "device": str(self.device),
                "dtype": str(dtype).removeprefix("torch."),
                "precision": precision,
                "prediction_type": prediction_type,
                "batch_invariant": batch_invariant,
                "torch_version": torch.__version__,
                "diffusers_version": diffusers.__version__,
            }
        )

    @classmethod
    def from_bundle(
        cls,
        bundle: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> TorchEngine:
        """Build the engine from a model bundle's ``unet`` and ``prediction_type`` attributes.

        Args:
            bundle: any object with ``.unet`` (UNet2DConditionModel) and ``.prediction_type`` (str).
            device: where to run.
            dtype: compute dtype.
            **kwargs: forwarded to :class:`TorchEngine` (``seq_len``, ``batch_invariant``, ``check_finite``).

        Returns:
            A ready :class:`TorchEngine`.

        Example:
            >>> from types import SimpleNamespace
            >>> from diffusers import UNet2DConditionModel
            >>> unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
            ...     layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            ...     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
            ...     attention_head_dim=4, norm_num_groups=8)
            >>> TorchEngine.from_bundle(SimpleNamespace(unet=unet, prediction_type="epsilon")).spec.hidden_dim
            16
        """
        return cls(bundle.unet, prediction_type=bundle.prediction_type, device=device, dtype=dtype, **kwargs)

    @property
    def unet(self) -> UNet2DConditionModel:
        """The wrapped U-Net (raises :class:`~fairsample.core.errors.EngineLoadError` after :meth:`close`)."""
        if self._unet is None:
            raise EngineLoadError(_CLOSED)
        return self._unet

    def supports(self, n: int, height: int, width: int) -> bool:
        """True for every positive ``(n, height, width)``: the torch backend has dynamic shapes."""
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
        """Run the U-Net forward.

        Args:
            sample: (N, C, H, W) noisy input; torch or numpy, any real dtype (cast to float32 once).
            timestep: (N,), (1,), () or a Python number; float timesteps (Euler) pass unchanged.
            encoder_hidden_states: (N, S, D) conditioning rows.
            out: optional float32 (N, C_out, H, W) tensor on the engine's device to write into; it may alias
                ``sample`` (the result is computed before the copy).

        Returns:
            (N, C_out, H, W) float32 prediction (ε, v or x_0 per ``spec.prediction_type``); ``out`` itself when given.

        Raises:
            ConfigError: an input or ``out`` has the wrong type, device or shape.
            ValidationFailed: ``check_finite`` is on and the output has NaN/Inf.
            EngineLoadError: the engine was closed.
        """
        unet = self.unet
        x, t, e = check_inputs(sample, timestep, encoder_hidden_states, spec=self.spec, device=self.device)
        n, _, h, w = x.shape
        check_out(out, (n, self.spec.out_channels, h, w), self.device)
        x, e = x.to(self.dtype), e.to(self.dtype)
        if self.batch_invariant and n > 1:
            with _RowWiseGemm():
                pred = unet(x, t, e, return_dict=False)[0]
        else:
            pred = unet(x, t, e, return_dict=False)[0]
        pred = pred.to(torch.float32)
        if self.check_finite and not is_finite(pred):
            bad = sorted({float(v) for v in t[~torch.isfinite(pred).flatten(1).all(dim=1)].tolist()})
            raise ValidationFailed(_NONFINITE_OUTPUT.format(timesteps=bad))
        if out is None:
            return pred
        return out.copy_(pred)

    @torch.no_grad()
    def refit(self, state_dict: Mapping[str, Tensor]) -> ValidationReport:
        """Load a full U-Net state dict (strict: same keys and shapes) after validating it; atomic on failure.

        Args:
            state_dict: every parameter and persistent buffer of the U-Net, any float dtype/device (copied in).

        Returns:
            ``{"backend": "torch", "passed": True, "tensors": int, "elements": int, "changed_tensors": int}``;
            ``changed_tensors`` counts tensors whose values differ from the previous weights.

        Raises:
            ConfigError: missing, unexpected or wrongly shaped keys (nothing is loaded).
            ValidationFailed: a tensor holds NaN/Inf (nothing is loaded).

        Example:
            >>> from diffusers import UNet2DConditionModel
            >>> unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
            ...     layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            ...     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
            ...     attention_head_dim=4, norm_num_groups=8)
            >>> engine = TorchEngine(unet, prediction_type="epsilon")
            >>> engine.refit(unet.state_dict())["changed_tensors"]
            0
        """
        unet = self.unet
        current = unet.state_dict()
        for key, value in state_dict.items():
            if not isinstance(value, Tensor):
                raise ConfigError(_REFIT_NOT_TENSOR.format(key=key, type_name=type(value).__name__))
        missing = [k for k in current if k not in state_dict]
        unexpected = [k for k in state_dict if k not in current]
        wrong = [k for k in current if k in state_dict and tuple(state_dict[k].shape) != tuple(current[k].shape)]
        if missing or unexpected or wrong:
            raise ConfigError(
                _REFIT_MISMATCH.format(
                    missing=len(missing),
                    first_missing=missing[0] if missing else None,
                    unexpected=len(unexpected),
                    first_unexpected=unexpected[0] if unexpected else None,
                    shape=len(wrong),
                    first_shape=wrong[0] if wrong else None,
                )
            )
        nonfinite = [k for k, v in state_dict.items() if v.is_floating_point() and not is_finite(v)]
        if nonfinite:
            raise ValidationFailed(_REFIT_NONFINITE.format(count=len(nonfinite), first=nonfinite[0]))
        changed = sum(
            1 for k, v in current.items() if not torch.equal(v, state_dict[k].to(device=v.device, dtype=v.dtype))
        )
        unet.load_state_dict(dict(state_dict), strict=True)
        return {
            "backend": self.backend,
            "passed": True,
            "tensors": len(current),
            "elements": int(sum(v.numel() for v in current.values())),
            "changed_tensors": int(changed),
        }

    def memory(self) -> MemoryReport:
        """Parameter + buffer bytes on the engine's device; activations are allocated per call, so 0."""
        unet = self.unet
        tensors = [*unet.parameters(), *unet.buffers()]
        weights = sum(p.numel() * p.element_size() for p in tensors)
        return MemoryReport(weights_bytes=int(weights), activations_bytes=0, device=str(self.device))

    def close(self) -> None:
        """Drop the engine's reference to the U-Net (and the CUDA cache on GPU); idempotent."""
        was_open, self._unet = self._unet is not None, None
        if was_open and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        state = "closed" if self._unet is None else f"{self.spec.precision} on {self.device}"
        return f"TorchEngine({self.spec.prediction_type}, {state})"

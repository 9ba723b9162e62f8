"""The boundary shared by the engines that run the exported U-Net graph (onnxruntime, OpenVINO).

Both take the same validated ``.onnx`` file (I/O ``sample (N, C, H, W)``, ``timestep (N,)``, ``encoder_hidden_states
(N, S, D)`` -> ``out_sample (N, C_out, H, W)``), so the Engine-protocol side is one class: input checks
(:func:`~fairsample.core.engine_spec.check_inputs`, H and W multiples of the U-Net's downsampling factor), ``out=``,
the NaN/Inf check, no refit, file-size memory report, the closed-engine error. A backend implements ``_run`` (the
checked float32 CPU/CUDA tensors in, the prediction out), ``_is_open`` and ``close``, and names itself in the messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import numpy as np
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

_SPATIAL = "`sample` has H={h}, W={w}; this ONNX engine needs H and W to be multiples of {m}; pad or resize the input."


def graph_feeds(x: Tensor, t: Tensor, e: Tensor) -> dict[str, np.ndarray]:
    """The graph's input dict as contiguous numpy views of CPU tensors (no copy for contiguous float32)."""
    return {
        "sample": np.ascontiguousarray(x.numpy()),
        "timestep": np.ascontiguousarray(t.numpy()),
        "encoder_hidden_states": np.ascontiguousarray(e.numpy()),
    }


def file_bytes(path: Path) -> int:
    """Bytes of ``path`` plus its ``.data`` external-data file when present (the weights an engine holds)."""
    files = [path, path.with_name(path.name + ".data")]
    return sum(f.stat().st_size for f in files if f.exists())


class OnnxGraphEngine(EngineLifetime, ABC):
    """Engine-protocol boundary over an exported U-Net graph; subclasses run it (module docstring).

    Subclass attributes: ``path``, ``spec``, ``device``, ``spatial_multiple``, ``check_finite``, ``_weights_bytes``
    and the messages ``_closed_msg``, ``_no_refit_msg``, ``_nonfinite_msg`` (with ``{timesteps}``).
    """

    path: Path
    spec: EngineSpec
    device: torch.device
    spatial_multiple: int
    check_finite: bool
    _weights_bytes: int
    _closed_msg = "this engine was closed; load a new one with fairsample.engines.load_engine(bundle, backend=...)."
    _no_refit_msg = "this engine cannot refit weights; load the new checkpoint with load_engine(bundle, backend=...)."
    _nonfinite_msg = "the engine produced NaN/Inf at timestep(s) {timesteps}; check the artifact."

    @abstractmethod
    def _is_open(self) -> bool:
        """False once :meth:`close` ran."""

    @abstractmethod
    def _run(self, x: Tensor, t: Tensor, e: Tensor) -> Tensor:
        """The checked float32 batch on the engine's device -> the (N, C_out, H, W) float32 prediction."""

    def _require_open(self) -> None:
        if not self._is_open():
            raise EngineLoadError(self._closed_msg)

    def supports(self, n: int, height: int, width: int) -> bool:
        """True when ``(n, height, width)`` is inside the spec's profiles and H, W are multiples of the U-Net's
        downsampling factor."""
        m = self.spatial_multiple
        return self.spec.supports(n, height, width) and height % m == 0 and width % m == 0

    def __call__(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        *,
        out: Tensor | None = None,
    ) -> Tensor:
        """Run the U-Net graph, as :meth:`fairsample.engines.Engine.__call__` specifies; H and W must also be
        multiples of the U-Net's downsampling factor (ConfigError), a closed engine raises EngineLoadError and
        ``check_finite`` turns NaN/Inf outputs into ValidationFailed."""
        self._require_open()
        x, t, e = check_inputs(sample, timestep, encoder_hidden_states, spec=self.spec, device=self.device)
        n, _, h, w = x.shape
        if h % self.spatial_multiple or w % self.spatial_multiple:
            raise ConfigError(_SPATIAL.format(h=h, w=w, m=self.spatial_multiple))
        check_out(out, (n, self.spec.out_channels, h, w), self.device)
        pred = self._run(x, t, e)
        if self.check_finite and not is_finite(pred):
            bad = sorted({float(v) for v in t[~torch.isfinite(pred).flatten(1).all(dim=1)].tolist()})
            raise ValidationFailed(self._nonfinite_msg.format(timesteps=bad))
        if out is None:
            return pred
        return out.copy_(pred)

    def refit(self, state_dict: Mapping[str, Tensor]) -> ValidationReport:
        """Not supported (no ``"refit"`` capability): always raises.

        Raises:
            EngineLoadError: compiled graphs have immutable weights; reload the bundle's engine.
        """
        raise EngineLoadError(self._no_refit_msg)

    def memory(self) -> MemoryReport:
        """The ONNX file + external-data bytes as weights; the runtimes allocate activations per call (0 reported)."""
        self._require_open()
        return MemoryReport(weights_bytes=int(self._weights_bytes), activations_bytes=0, device=str(self.device))

    def _describe(self) -> str:
        state = "closed" if not self._is_open() else f"{self.spec.precision} on {self.device}"
        return f"{type(self).__name__}({self.path.name}, {self.spec.prediction_type}, {state})"

    def __repr__(self) -> str:
        return self._describe()

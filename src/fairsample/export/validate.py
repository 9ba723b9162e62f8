"""Parity harness (ENGINES.md §6): a candidate backend against the torch fp32 reference on seeded inputs.

Metrics per output are ``max_abs``, ``mean_abs``, ``rel_l2 = ||a - b|| / ||b||``, ``cosine``, ``nan_count``,
``inf_count`` and ``ref_max_abs`` (``|ref|max``, for context). Each precision has a gate; the JSON report goes into
the cache manifest, and an artifact whose report failed is never used (:func:`require_passed`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fairsample.core.errors import ConfigError, ValidationFailed
from fairsample.core.json_safe import json_safe

Forward = Callable[[Tensor, Tensor, Tensor], Tensor | np.ndarray]
"""``(sample (N, C, H, W), timestep (N,), encoder_hidden_states (N, S, D)) -> (N, C_out, H, W)`` float32."""

REPORT_SCHEMA = 1

_UNKNOWN_PRECISION = "`precision` must be one of {allowed}, got {value!r}; use the artifact's precision."
_NO_SHAPES = "`shapes` must hold at least one (N, H, W) triple of positive ints, got {value!r}."
_REPORT_FAILED = "{name} failed its {precision} validation gate: {reason}; the artifact is not used."
_REPORT_MISSING = "{name} has no validation report; rebuild it (or pass unsafe=True to load it anyway)."
_SHAPE_MISMATCH = "candidate output has shape {got} but the reference has {expected}"


@dataclass(frozen=True)
class Gate:
    """Pass thresholds for one precision (ENGINES.md §6); a None bound is not checked.

    Attributes:
        max_abs: absolute bound on ``max_abs``.
        max_abs_rel: bound on ``max_abs / max(1, |ref|max)`` (the fp16 gate's ``5e-2 * max(1, |ref|max)``).
        rel_l2: bound on ``||a - b|| / ||b||``.
        cosine: lower bound on the cosine similarity of the flattened outputs.

    Example:
        >>> GATES["fp32"].failure({"max_abs": 2e-4, "rel_l2": 1e-6, "cosine": 1.0, "nan_count": 0,
        ...                        "inf_count": 0, "ref_max_abs": 3.0})
        'max_abs 0.0002 > 0.0001'
    """

    max_abs: float | None = None  # absolute max error bound
    max_abs_rel: float | None = None  # max error bound relative to max(1, |ref|max)
    rel_l2: float | None = None  # relative L2 error bound
    cosine: float | None = None  # cosine similarity lower bound

    def failure(self, metrics: Mapping[str, float]) -> str | None:
        """The first violated bound as ``"metric value > bound"``, or None when every bound holds (NaN/Inf fail)."""
        if metrics["nan_count"] or metrics["inf_count"]:
            return f"{int(metrics['nan_count'])} NaN and {int(metrics['inf_count'])} Inf values"
        if self.max_abs is not None and not metrics["max_abs"] <= self.max_abs:
            return f"max_abs {metrics['max_abs']:.3g} > {self.max_abs:g}"
        scale = max(1.0, metrics["ref_max_abs"])
        if self.max_abs_rel is not None and not metrics["max_abs"] <= self.max_abs_rel * scale:
            return f"max_abs {metrics['max_abs']:.3g} > {self.max_abs_rel:g}*max(1, |ref|max={scale:.3g})"
        if self.rel_l2 is not None and not metrics["rel_l2"] <= self.rel_l2:
            return f"rel_l2 {metrics['rel_l2']:.3g} > {self.rel_l2:g}"
        if self.cosine is not None and not metrics["cosine"] >= self.cosine:
            return f"cosine {metrics['cosine']:.6f} < {self.cosine:g}"
        return None


GATES: dict[str, Gate] = {
    "fp32": Gate(max_abs=1e-4, rel_l2=1e-5),
    "fp16": Gate(max_abs_rel=5e-2, rel_l2=1e-2, cosine=0.9995),
    "bf16": Gate(rel_l2=3e-2, cosine=0.999),
}
"""Starting gates per precision (ENGINES.md §6), against torch fp32 on the same inputs."""


def compare(candidate: Tensor | np.ndarray, reference: Tensor | np.ndarray) -> dict[str, float]:
    """Error metrics of ``candidate`` against ``reference`` (computed in float64).

    Args:
        candidate: any-shape float array (backend output).
        reference: same-shape float array (torch fp32 output).

    Returns:
        ``{"max_abs", "mean_abs", "rel_l2", "cosine", "nan_count", "inf_count", "ref_max_abs"}`` as JSON-safe floats;
        the NaN/Inf counts are over ``candidate``. Errors are computed over finite positions only.

    Raises:
        ValidationFailed: the shapes differ.

    Example:
        >>> m = compare(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
        >>> m["max_abs"], round(m["rel_l2"], 4)
        (0.5, 0.1857)
    """
    a = torch.as_tensor(np.asarray(candidate) if not isinstance(candidate, Tensor) else candidate).double().flatten()
    b = torch.as_tensor(np.asarray(reference) if not isinstance(reference, Tensor) else reference).double().flatten()
    if a.shape != b.shape:
        raise ValidationFailed(_SHAPE_MISMATCH.format(got=list(a.shape), expected=list(b.shape)))
    nan = int(torch.isnan(a).sum())
    inf = int(torch.isinf(a).sum())
    finite = torch.isfinite(a) & torch.isfinite(b)
    diff = (a - b)[finite]
    a_f, b_f = a[finite], b[finite]
    ref_norm = float(b_f.norm())
    denom = float(a_f.norm()) * ref_norm
    return {
        "max_abs": float(diff.abs().max()) if diff.numel() else 0.0,
        "mean_abs": float(diff.abs().mean()) if diff.numel() else 0.0,
        "rel_l2": float(diff.norm()) / ref_norm if ref_norm > 0 else float(diff.norm()),
        "cosine": float(a_f @ b_f) / denom if denom > 0 else 1.0,
        "nan_count": float(nan),
        "inf_count": float(inf),
        "ref_max_abs": float(b_f.abs().max()) if b_f.numel() else 0.0,
    }


def seeded_inputs(
    n: int, height: int, width: int, *, channels: int, seq_len: int, hidden_dim: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Deterministic validation inputs: ``randn`` sample/embeddings and timesteps spread over [1, 999].

    Returns:
        ``(sample (n, channels, height, width), timestep (n,), encoder_hidden_states (n, seq_len, hidden_dim))``,
        float32 on the CPU; the same arguments always give the same tensors.

    Example:
        >>> x, t, e = seeded_inputs(2, 6, 10, channels=3, seq_len=4, hidden_dim=8)
        >>> tuple(x.shape), t.tolist(), tuple(e.shape)
        ((2, 3, 6, 10), [1.0, 999.0], (2, 4, 8))
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + n * 10_007 + height * 101 + width)
    sample = torch.randn(n, channels, height, width, generator=g)
    timestep = torch.linspace(1.0, 999.0, n) if n > 1 else torch.tensor([500.0])
    ehs = torch.randn(n, seq_len, hidden_dim, generator=g)
    return sample, timestep, ehs


def parity_report(
    candidate: Forward,
    reference: Forward,
    shapes: Sequence[tuple[int, int, int]],
    *,
    precision: str,
    channels: int,
    seq_len: int,
    hidden_dim: int,
    name: str = "artifact",
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``candidate`` and ``reference`` on seeded inputs at each shape and gate the metrics.

    Args:
        candidate: the backend under test (e.g. an ORT CPU session wrapper).
        reference: the torch fp32 U-Net forward.
        shapes: (N, H, W) triples; ENGINES.md §4 asks for the export shape, another N and a non-square H != W.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``; picks the :data:`GATES` entry.
        channels: C of ``sample``.
        seq_len: S of ``encoder_hidden_states``.
        hidden_dim: D of ``encoder_hidden_states``.
        name: what is validated, for the report and error messages (e.g. ``"model.onnx"``).
        seed: input seed.

    Returns:
        A JSON-safe report ``{"schema", "name", "precision", "gate", "passed", "reason", "cases": [{"shape",
        "metrics", "passed", "reason"}]}``; ``reason`` is None when passed, else the first failing case in one line.

    Raises:
        ConfigError: unknown ``precision`` or no shapes.

    Example:
        >>> f = lambda x, t, e: x * 2.0
        >>> parity_report(f, f, [(2, 4, 6)], precision="fp32", channels=3, seq_len=2, hidden_dim=4)["passed"]
        True
    """
    if precision not in GATES:
        raise ConfigError(_UNKNOWN_PRECISION.format(allowed=sorted(GATES), value=precision))
    if not shapes or not all(len(s) == 3 and all(isinstance(v, int) and v > 0 for v in s) for s in shapes):
        raise ConfigError(_NO_SHAPES.format(value=shapes))
    gate = GATES[precision]
    cases = []
    for n, h, w in shapes:
        x, t, e = seeded_inputs(n, h, w, channels=channels, seq_len=seq_len, hidden_dim=hidden_dim, seed=seed)
        with torch.no_grad():
            ref = reference(x, t, e)
            got = candidate(x, t, e)
        try:
            metrics = compare(got, ref)
            reason = gate.failure(metrics)
        except ValidationFailed as err:
            metrics, reason = {}, str(err)
        cases.append({"shape": [n, h, w], "metrics": metrics, "passed": reason is None, "reason": reason})
    failed = [c for c in cases if not c["passed"]]
    reason = f"at (N, H, W)={tuple(failed[0]['shape'])}: {failed[0]['reason']}" if failed else None
    return {
        "schema": REPORT_SCHEMA,
        "name": name,
        "precision": precision,
        "gate": {k: v for k, v in asdict(gate).items() if v is not None},
        "passed": not failed,
        "reason": reason,
        "cases": cases,
    }


def require_passed(report: Mapping[str, Any] | None, *, name: str = "artifact") -> None:
    """Refuse an artifact whose report is missing or failed (ENGINES.md §6).

    Raises:
        ValidationFailed: one line naming the artifact, the precision and the first failing metric.

    Example:
        >>> require_passed({"passed": True, "precision": "fp32"})
    """
    if not report:
        raise ValidationFailed(_REPORT_MISSING.format(name=name))
    if not report.get("passed"):
        raise ValidationFailed(
            _REPORT_FAILED.format(
                name=report.get("name", name),
                precision=report.get("precision", "?"),
                reason=report.get("reason") or "unknown",
            )
        )


def write_report(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as indented, key-sorted JSON (non-finite floats become null) and return the path.

    Example:
        >>> import tempfile
        >>> p = write_report({"passed": True, "x": float("nan")}, Path(tempfile.mkdtemp()) / "r.json")
        >>> json.loads(p.read_text())
        {'passed': True, 'x': None}
    """
    path = Path(path)
    path.write_text(json.dumps(json_safe(report), indent=2, sort_keys=True) + "\n")
    return path

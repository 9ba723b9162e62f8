"""Parity metrics, gates and the failed-report refusal (ENGINES.md §6)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fairsample.core.errors import ValidationFailed
from fairsample.export.validate import _REPORT_FAILED, GATES, compare, parity_report, require_passed, write_report


def test_metrics_against_hand_values() -> None:
    m = compare(np.array([1.0, 2.0, 2.0]), np.array([1.0, 2.0, 1.0]))
    assert m["max_abs"] == 1.0 and m["mean_abs"] == pytest.approx(1 / 3)
    assert m["rel_l2"] == pytest.approx(1 / np.sqrt(6))
    assert m["cosine"] == pytest.approx(7 / (3 * np.sqrt(6)))
    assert m["ref_max_abs"] == 2.0 and m["nan_count"] == m["inf_count"] == 0


def test_nan_fails_every_gate() -> None:
    m = compare(torch.tensor([float("nan"), 1.0, float("inf")]), torch.tensor([0.0, 1.0, 2.0]))
    assert (m["nan_count"], m["inf_count"]) == (1, 1)
    assert all(g.failure(m) == "1 NaN and 1 Inf values" for g in GATES.values())


def test_fp16_gate_scales_max_abs_with_the_reference() -> None:
    m = {"max_abs": 0.2, "rel_l2": 1e-3, "cosine": 0.9999, "nan_count": 0, "inf_count": 0, "ref_max_abs": 8.0}
    assert GATES["fp16"].failure(m) is None
    assert GATES["fp16"].failure({**m, "ref_max_abs": 1.0}) == "max_abs 0.2 > 0.05*max(1, |ref|max=1)"


def test_failed_report_is_refused_with_one_line() -> None:
    ref = lambda x, t, e: x  # noqa: E731
    bad = lambda x, t, e: x + 1e-3  # noqa: E731
    report = parity_report(
        bad, ref, [(2, 4, 4), (1, 4, 6)], precision="fp32", channels=3, seq_len=2, hidden_dim=4, name="model.onnx"
    )
    assert not report["passed"]
    assert report["reason"].startswith("at (N, H, W)=(2, 4, 4): max_abs 0.001 > 0.0001")
    msg = _REPORT_FAILED.format(name="model.onnx", precision="fp32", reason=report["reason"])
    with pytest.raises(ValidationFailed, match=re.escape(msg)) as info:
        require_passed(report)
    assert "\n" not in str(info.value)
    with pytest.raises(ValidationFailed, match="has no validation report"):
        require_passed(None, name="x")


def test_report_is_strict_json(tmp_path) -> None:
    f = lambda x, t, e: x * float("nan")  # noqa: E731
    report = parity_report(f, lambda x, t, e: x, [(1, 2, 2)], precision="fp16", channels=1, seq_len=1, hidden_dim=1)
    loaded = json.loads(write_report(report, tmp_path / "r.json").read_text())
    assert loaded["passed"] is False and loaded["cases"][0]["metrics"]["nan_count"] == 4

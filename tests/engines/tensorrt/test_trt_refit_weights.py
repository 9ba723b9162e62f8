"""Full-weight refit mapping, checked before TensorRT is touched (ENGINES.md §8)."""

from __future__ import annotations

import re

import pytest
import torch

from fairsample.core.errors import ConfigError, ValidationFailed
from fairsample.engines.tensorrt.refit import (
    REFIT_BAD_DTYPE,
    REFIT_MISSING,
    REFIT_NONFINITE,
    REFIT_SIZE,
    REFIT_UNUSED,
    resolve_refit_weights,
)
from tests.tiny import build_tiny_unet


def _prefix(template: str) -> str:
    return re.escape(template.split("{")[0])


def test_identity_map_covers_a_real_unet_state_dict() -> None:
    sd = build_tiny_unet().state_dict()
    protos = {k: (v.numel(), "float16") for k, v in sd.items()}
    out = resolve_refit_weights(sd, protos)
    assert set(out) == set(sd)
    assert all(t.dtype == torch.float16 and t.is_contiguous() and t.device.type == "cpu" for t in out.values())
    k = next(iter(sd))
    assert torch.equal(out[k], sd[k].to(torch.float16))


def test_name_map_and_transpose() -> None:
    w = torch.arange(6.0).reshape(2, 3)
    out = resolve_refit_weights(
        {"lin.weight": w, "lin.bias": torch.zeros(3)},
        {"onnx::MatMul_7": (6, "float32"), "lin.bias": (3, "bfloat16")},
        name_map={"onnx::MatMul_7": {"source": "lin.weight", "transpose": True}},
    )
    assert torch.equal(out["onnx::MatMul_7"], w.t().contiguous()) and out["lin.bias"].dtype == torch.bfloat16


def test_full_set_is_enforced_both_ways() -> None:
    with pytest.raises(ConfigError, match=_prefix(REFIT_MISSING)):
        resolve_refit_weights({"a": torch.ones(2)}, {"a": (2, "float32"), "b": (2, "float32")})
    with pytest.raises(ConfigError, match=_prefix(REFIT_UNUSED)):
        resolve_refit_weights({"a": torch.ones(2), "stale": torch.ones(2)}, {"a": (2, "float32")})
    out = resolve_refit_weights({"a": torch.ones(2), "pos": torch.ones(2)}, {"a": (2, "float32")}, ignored=["pos"])
    assert set(out) == {"a"}


def test_size_dtype_and_nonfinite_checks() -> None:
    with pytest.raises(ConfigError, match=_prefix(REFIT_SIZE)):
        resolve_refit_weights({"a": torch.ones(3)}, {"a": (2, "float32")})
    with pytest.raises(ConfigError, match=_prefix(REFIT_BAD_DTYPE)):
        resolve_refit_weights({"a": torch.ones(2)}, {"a": (2, "fp8")})
    with pytest.raises(ValidationFailed, match=_prefix(REFIT_NONFINITE)):
        resolve_refit_weights({"a": torch.tensor([1.0, float("nan")])}, {"a": (2, "float32")})
    with pytest.raises(ConfigError, match="not a torch.Tensor"):
        resolve_refit_weights({"a": [1.0, 2.0]}, {"a": (2, "float32")})  # type: ignore[dict-item]

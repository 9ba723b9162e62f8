"""The refit name map built at export covers every weight, and resolving it reproduces the ONNX initializers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from fairsample.core.errors import ConfigError
from fairsample.engines.trt_engine import resolve_refit_weights
from fairsample.export.onnx_export import export_onnx
from fairsample.export.refit_map import build_refit_map
from tests.export.shared import SEQ_LEN, entry_of, ort_store, tiny_bundle


def _prototypes(path: Path) -> dict[str, tuple[int, str]]:
    """What a TensorRT refitter would list for a network parsed from ``path``: float initializers."""
    model = onnx.load(str(path))
    out = {}
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if np.issubdtype(a.dtype, np.floating):
            out[init.name] = (a.size, str(a.dtype))
    return out


def _check_roundtrip(path: Path, state: dict[str, torch.Tensor], rtol: float) -> dict:
    refit = build_refit_map(path, state)
    protos = _prototypes(path)
    weights = resolve_refit_weights(
        state,
        protos,
        name_map=refit["name_map"],
        ignored=refit["ignored"],
        constants=refit["constants"],
        shared=refit["shared"],
    )
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    assert set(weights) == set(protos) - set(refit["constants"])
    for name, tensor in weights.items():
        np.testing.assert_allclose(
            tensor.float().numpy().reshape(inits[name].shape), inits[name].astype(np.float32), rtol=rtol, atol=1e-7
        )
    return refit


def _trained_like(seed: int = 3) -> torch.nn.Module:
    """The tiny U-Net with every parameter random (no two equal, as after training; fresh norms are all ones)."""
    unet = tiny_bundle().unet
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    return unet


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_export_maps_every_parameter(tmp_path: Path, exporter: str) -> None:
    unet = _trained_like()
    art = export_onnx(unet, tmp_path, prediction_type="epsilon", seq_len=SEQ_LEN, exporters=(exporter,))
    state = unet.state_dict()
    refit = _check_roundtrip(art.path, state, rtol=0)
    assert refit["shared"] == {}
    mapped = {v if isinstance(v, str) else v["source"] for v in refit["name_map"].values()}
    assert mapped | set(refit["ignored"]) == set(state)
    assert len(refit["ignored"]) <= 2  # at most a folded buffer or two, never a trained weight matrix
    transposed = [v for v in refit["name_map"].values() if isinstance(v, dict) and v["transpose"]]
    if exporter == "legacy":  # nn.Linear weights become transposed, renamed MatMul constants (40 here)
        assert len(transposed) >= 10


@pytest.mark.parametrize("kind", ["onnx", "onnx.fp16"])
def test_deduplicated_initializers_are_listed_and_guarded(kind: str) -> None:
    """Fresh GroupNorm weights are all ones; the exporter merges them, and a refit that separates them is refused."""
    path = next(entry_of(ort_store(), kind).glob("model*.onnx"))
    state = tiny_bundle().unet.state_dict()
    refit = _check_roundtrip(path, state, rtol=1e-3 if kind == "onnx.fp16" else 0)
    assert refit["shared"], "expected merged all-ones norm weights"
    name, sources = next(iter(refit["shared"].items()))
    changed = {k: v.clone() for k, v in state.items()}
    changed[sources[-1]] += 0.5
    with pytest.raises(ConfigError, match=r"share one engine weight .*rebuild the engine"):
        resolve_refit_weights(
            changed,
            _prototypes(path),
            name_map=refit["name_map"],
            ignored=refit["ignored"],
            constants=refit["constants"],
            shared=refit["shared"],
        )


def test_refit_with_other_weights_feeds_their_values(tmp_path: Path) -> None:
    """A map built from checkpoint A resolves checkpoint B's tensors (full-weight refit, never a diff)."""
    unet = _trained_like()
    path = export_onnx(unet, tmp_path, prediction_type="epsilon", seq_len=SEQ_LEN, exporters=("legacy",)).path
    refit = build_refit_map(path, unet.state_dict())
    other = _trained_like(seed=4).state_dict()
    weights = resolve_refit_weights(
        other, _prototypes(path), name_map=refit["name_map"], ignored=refit["ignored"], constants=refit["constants"]
    )
    name, source = next((k, v) for k, v in refit["name_map"].items() if isinstance(v, str) and v.endswith("weight"))
    assert torch.equal(weights[name], other[source].float().contiguous())

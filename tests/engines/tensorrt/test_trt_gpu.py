"""TensorRT on a real GPU: build a tiny engine from ONNX, parity vs torch, ownership, CUDA graphs, refit A->B->A.

Skipped on machines without CUDA or tensorrt (the reason says which). Never run on the project's CPU machines, so
these tests are written against the documented API (ENGINES.md §5) and unverified until run on a GPU.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from fairsample.core.engine_spec import EngineSpec
from fairsample.export.trt_profiles import default_profiles
from tests.tiny import build_tiny_unet

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="tensorrt not installed"),
]

SIZE, SEQ, DIM, BATCH = 16, 4, 16, 2


class _Wrapped(torch.nn.Module):
    """Positional tensor I/O with ``return_dict=False`` (ENGINES.md §4.1)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, ehs: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, ehs, return_dict=False)[0]


def _export(unet: torch.nn.Module, path: Path) -> Path:
    """Legacy fp32 export with dynamic N, H, W and torch parameter names kept (no constant folding)."""
    args = (torch.randn(2, 3, 18, 18), torch.tensor([10.0, 20.0]), torch.randn(2, SEQ, DIM))
    torch.onnx.export(
        _Wrapped(unet.eval()),
        args,
        str(path),
        dynamo=False,
        opset_version=17,
        do_constant_folding=False,
        input_names=["sample", "timestep", "encoder_hidden_states"],
        output_names=["out_sample"],
        dynamic_axes={"sample": {0: "N", 2: "H", 3: "W"}, "timestep": {0: "N"}, "encoder_hidden_states": {0: "N"}},
    )
    return path


def _inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g)
    t = torch.linspace(10, 900, n)
    e = torch.randn(n, SEQ, DIM, generator=g)
    return x.cuda(), t.cuda(), e.cuda()


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _engine(tmp_path: Path, unet: torch.nn.Module, *, refit: bool) -> Any:
    from fairsample.core.gpu_info import current_target
    from fairsample.engines.tensorrt.runtime import TensorRTEngine
    from fairsample.export.trt_build import TrtBuildRecipe, build_plan

    onnx_path = _export(unet, tmp_path / "model.onnx")
    profiles = default_profiles(SIZE, BATCH)
    recipe = TrtBuildRecipe(
        onnx_path=onnx_path,
        profiles=profiles,
        precision="fp32",
        workspace_bytes=1 << 30,
        refit=refit,
        timing_cache_path=tmp_path / "timing.cache",
    )
    lines: list[str] = []
    plan = build_plan(recipe, progress=lines.append)
    assert lines and (tmp_path / "timing.cache").is_file()
    spec = EngineSpec(
        in_channels=3,
        out_channels=3,
        sample_size=SIZE,
        seq_len=SEQ,
        hidden_dim=DIM,
        prediction_type="epsilon",
        profiles=plan.recipe.profiles,
    )
    manifest = {"key_parts": plan.recipe.cache_key_parts(current_target()), "validation": {"passed": True}}
    return TensorRTEngine(bytes(plan), spec=spec, manifest=manifest, device="cuda:0")


@torch.no_grad()
def test_build_load_parity_ownership_and_graphs(tmp_path: Path) -> None:
    unet = build_tiny_unet(SIZE, seed=0, cross_attention_dim=DIM)
    ref_unet = _Wrapped(build_tiny_unet(SIZE, seed=0, cross_attention_dim=DIM)).cuda().eval()
    with _engine(tmp_path, unet, refit=False) as engine:
        assert engine.capabilities >= {"io_binding", "cuda_graphs", "dynamic_shapes"}
        eager: dict[int, torch.Tensor] = {}
        for n in (1, BATCH, 3, 2 * BATCH):  # both opt shapes, an off-opt N, and max N; first call = eager
            x, t, e = _inputs(n)
            eager[n] = engine(x, t, e).clone()
            assert _rel_l2(eager[n], ref_unet(x, t, e)) <= 1e-2 and torch.isfinite(eager[n]).all()
        x3, t3, e3 = _inputs(3)
        captured = engine(x3, t3, e3).clone()  # second call at this exact shape: capture
        replayed = engine(x3, t3, e3).clone()  # third: replay
        assert torch.allclose(eager[3], captured, atol=1e-5) and torch.allclose(eager[3], replayed, atol=1e-5)
        x, t, e = _inputs(BATCH, seed=1)
        first = engine(x, t, e)  # an engine-owned buffer (the graph's static output at this shape)
        kept = first.clone()
        engine(*_inputs(BATCH, seed=2))
        assert not torch.equal(first, kept)  # engine-owned buffer was reused (rule 2.3-2)
        out = torch.empty_like(kept)
        assert engine(x, t, e, out=out) is out and torch.allclose(out, kept, atol=1e-5)
        assert engine.memory().activations_bytes > 0 and engine.memory().weights_bytes > 0
        with pytest.raises(Exception, match="outside every TensorRT profile"):
            engine(*_inputs(2 * BATCH + 1))


@torch.no_grad()
def test_refit_a_b_a_matches_fresh_a(tmp_path: Path) -> None:
    unet_a = build_tiny_unet(SIZE, seed=0, cross_attention_dim=DIM)
    unet_b = build_tiny_unet(SIZE, seed=1, cross_attention_dim=DIM)
    sd_a = {k: v.clone() for k, v in unet_a.state_dict().items()}
    with _engine(tmp_path, unet_a, refit=True) as engine:
        assert "refit" in engine.capabilities
        x, t, e = _inputs(BATCH)
        for _ in range(3):  # leave a captured graph behind: refit must drop it
            fresh_a = engine(x, t, e).clone()
        report_b = engine.refit(unet_b.state_dict())
        assert report_b["passed"] and report_b["graphs_dropped"] >= 1
        out_b = engine(x, t, e).clone()
        ref_b = _Wrapped(unet_b).cuda().eval()(x, t, e)
        assert _rel_l2(out_b, ref_b) <= 1e-2
        assert engine.refit(sd_a)["passed"]
        assert torch.allclose(engine(x, t, e), fresh_a, atol=1e-5)  # A -> B -> A == A (NVIDIA/TensorRT#3628)

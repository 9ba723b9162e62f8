"""Guidance rescale (Lin et al., 2024; diffusers ``rescale_noise_cfg``): formula, sampler, pipeline, ORT parity."""

from __future__ import annotations

import math

import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.engines import load_engine
from fairsample.generation.pipeline import FairSamplePipeline
from fairsample.models.bundle import new_pixel_bundle
from fairsample.samplers import ConditioningPlan, guided_prediction, initial_latents, make_generators, make_scheduler
from fairsample.samplers.conditional import sample_conditional
from fairsample.samplers.guidance import rescale_guidance

B = 3


def _diffusers_rescale(noise_cfg, noise_pred_text, guidance_rescale):
    """diffusers 0.42 ``pipeline_stable_diffusion.rescale_noise_cfg``, copied (importing it pulls transformers)."""
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    noise_pred_rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg


def test_rescale_matches_diffusers_and_zero_is_identity():
    g = torch.Generator().manual_seed(0)
    guided, cond = torch.randn(B, 3, 8, 8, generator=g) * 3, torch.randn(B, 3, 8, 8, generator=g)
    for phi in (0.3, 0.7, 1.0):
        torch.testing.assert_close(rescale_guidance(guided, cond, phi), _diffusers_rescale(guided, cond, phi))
    assert rescale_guidance(guided, cond, 0.0) is guided


def test_guided_prediction_applies_rescale_to_the_cfg_output(engine, make_plan):
    sample = torch.randn(B, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    plan = make_plan([0, 1, 2])
    t = torch.tensor(500)
    plain = guided_prediction(engine, sample, t, plan, 4.0)
    cond = engine(sample, t.expand(B).float(), plan.cond)
    rescaled = guided_prediction(engine, sample, t, plan, 4.0, 0.7)
    torch.testing.assert_close(rescaled, rescale_guidance(plain, cond, 0.7))
    assert torch.equal(guided_prediction(engine, sample, t, plan, 4.0, 0.0), plain)
    for bad in (-0.1, 1.5, float("nan"), True, "0.7"):
        with pytest.raises(ConfigError, match=r"`guidance_rescale` must be a finite float in \[0, 1\], got "):
            guided_prediction(engine, sample, t, plan, 4.0, bad)


def _x0(engine, phi):
    g = torch.Generator().manual_seed(7)
    cond, uncond = torch.randn(2, 4, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    plan = ConditioningPlan(cond=cond, uncond=uncond, cells=("a", "b"))
    scheduler = make_scheduler("ddpm", {"num_train_timesteps": 1000, "prediction_type": "epsilon"})
    gens = make_generators([0, 1])
    return sample_conditional(
        engine,
        scheduler,
        initial_latents(gens, (3, 8, 8)),
        plan,
        num_inference_steps=5,
        guidance_scale=5.0,
        generator=gens,
        guidance_rescale=phi,
    )


def test_rescale_on_onnxruntime_matches_torch():
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from tests.export.shared import load_ort, tiny_bundle

    ref = _x0(load_engine(tiny_bundle()), 0.7)
    got = _x0(load_ort(), 0.7)
    assert not torch.allclose(ref, _x0(load_engine(tiny_bundle()), 0.0))  # the option changes the samples
    mse = float(((got - ref) ** 2).mean())
    psnr = 10 * math.log10((float(ref.abs().max()) * 2) ** 2 / mse) if mse > 0 else math.inf
    assert psnr >= 40.0


def test_pipeline_takes_rescale_from_call_and_bundle_and_refuses_other_samplers():
    sampling = {"steps": 3, "guidance_scale": 4.0, "guidance_rescale": 0.7}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bundle = new_pixel_bundle(
            {"tone": ["dark", "light"]},
            ["0", "1"],
            architecture="test",
            image_size=8,
            cross_attention_dim=8,
            prediction_type="v_prediction",
            config={"sampling": sampling},
        )
    pipe = FairSamplePipeline(bundle)
    cells = bundle.cells()[:2]
    default = pipe(cells, [0, 1], output_type="pt")
    assert default.manifest["sample_config"]["guidance_rescale"] == 0.7
    off = pipe(cells, [0, 1], output_type="pt", guidance_rescale=0.0)
    assert off.manifest["sample_config"]["guidance_rescale"] == 0.0 and not torch.equal(default.images, off.images)
    with pytest.raises(ConfigError, match="applied by the 'conditional' sampler only, not 'mixing'"):
        pipe(cells, [0, 1], sampler="mixing")

"""``sample_conditional`` conformance over every scheduler in SCHEDULERS (STYLE.md §9)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.engines import TorchEngine
from fairsample.samplers import (
    SCHEDULER_NAMES,
    SCHEDULERS,
    init_noise_sigma,
    initial_latents,
    make_generators,
    make_scheduler,
    sample_conditional,
)
from fairsample.samplers.conditional import _BAD_GENERATORS, _BAD_LATENTS, _BAD_STEPS, _PREDICTION_MISMATCH

from .conftest import CountingEngine, build_tiny_unet

NAMES = sorted(SCHEDULERS)
STEPS = 4
SEEDS = [11, 12]


def _run(engine, scheduler, make_plan, seeds=SEEDS, **kwargs: Any) -> torch.Tensor:
    kwargs.setdefault("num_inference_steps", STEPS)
    steps = kwargs["num_inference_steps"]
    sigma = (
        init_noise_sigma(scheduler, steps) if isinstance(steps, int) and not isinstance(steps, bool) and steps else 1.0
    )
    gens = make_generators(seeds)
    x_t = initial_latents(gens, (3, 8, 8), init_noise_sigma=sigma)
    return sample_conditional(engine, scheduler, x_t, make_plan(range(len(seeds))), generator=gens, **kwargs)


def _snapshot(obj: object) -> dict[str, Any]:
    """A comparable deep view of an object's state (tensors and arrays by value)."""

    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return ("tensor", str(v.dtype), tuple(v.shape), v.tolist())
        if isinstance(v, np.ndarray):
            return ("array", v.dtype.str, v.shape, v.tolist())
        if isinstance(v, list | tuple):
            return tuple(conv(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((str(k), conv(x)) for k, x in v.items()))
        return repr(v)

    return {k: conv(v) for k, v in vars(obj).items()}


@pytest.mark.parametrize("name", [*NAMES, *(n for n in SCHEDULER_NAMES if n not in SCHEDULERS)])
def test_shape_dtype_finite(engine: TorchEngine, scheduler_config, make_plan, name: str) -> None:
    out = _run(engine, make_scheduler(name, scheduler_config), make_plan)
    assert out.shape == (2, 3, 8, 8)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seeds(engine: TorchEngine, scheduler_config, make_plan, name: str) -> None:
    scheduler = make_scheduler(name, scheduler_config)
    first = _run(engine, scheduler, make_plan)
    assert torch.equal(_run(engine, scheduler, make_plan), first)
    assert not torch.equal(_run(engine, scheduler, make_plan, seeds=[13, 14]), first)


@pytest.mark.parametrize("name", NAMES)
def test_caller_scheduler_is_not_mutated(engine: TorchEngine, scheduler_config, make_plan, name: str) -> None:
    scheduler = make_scheduler(name, scheduler_config)
    scheduler.set_timesteps(7)
    before = _snapshot(scheduler)
    _run(engine, scheduler, make_plan)
    assert _snapshot(scheduler) == before
    assert len(scheduler.timesteps) >= 7


@pytest.mark.parametrize("name", NAMES)
def test_engine_sees_float32_timesteps_never_rounded(engine: TorchEngine, scheduler_config, make_plan, name) -> None:
    scheduler = make_scheduler(name, scheduler_config)
    counting = CountingEngine(engine)
    _run(counting, scheduler, make_plan, num_inference_steps=5)
    fresh = make_scheduler(name, scheduler_config)
    fresh.set_timesteps(5)
    assert counting.calls == [4] * len(fresh.timesteps)
    for t_seen, t_expected in zip(counting.timesteps, fresh.timesteps, strict=True):
        assert t_seen.dtype == torch.float32 and t_seen.shape == (4,)
        assert torch.equal(t_seen, t_expected.to(torch.float32).expand(4))
    if name == "euler":
        assert any(float(t) != round(float(t)) for t in fresh.timesteps)


def test_unguided_makes_one_call_at_b_per_step(engine: TorchEngine, scheduler_config, make_plan) -> None:
    counting = CountingEngine(engine)
    _run(counting, make_scheduler("ddim", scheduler_config), make_plan, guidance_scale=1.0)
    assert counting.calls == [2] * STEPS


def test_per_sample_guidance_vector_matches_per_sample_runs(engine: TorchEngine, scheduler_config, make_plan) -> None:
    scheduler = make_scheduler("ddpm", scheduler_config)
    batch = _run(engine, scheduler, make_plan, guidance_scale=torch.tensor([2.0, 7.5]))
    for k, w in enumerate((2.0, 7.5)):
        gens = make_generators([SEEDS[k]])
        x_t = initial_latents(gens, (3, 8, 8))
        plan = make_plan([k])
        alone = sample_conditional(
            engine, scheduler, x_t, plan, num_inference_steps=STEPS, guidance_scale=w, generator=gens
        )
        assert torch.equal(batch[k : k + 1], alone)


def test_caller_latents_are_not_modified(engine: TorchEngine, scheduler_config, make_plan) -> None:
    x_t = initial_latents(SEEDS, (3, 8, 8))
    copy = x_t.clone()
    sample_conditional(
        engine, make_scheduler("pndm", scheduler_config), x_t, make_plan([0, 1]), num_inference_steps=STEPS
    )
    assert torch.equal(x_t, copy)


def test_prediction_type_mismatch(scheduler_config, make_plan) -> None:
    v_engine = TorchEngine(build_tiny_unet(), prediction_type="v_prediction")
    msg = _PREDICTION_MISMATCH.format(engine="v_prediction", scheduler="epsilon")
    with pytest.raises(ConfigError, match=re.escape(msg)):
        _run(v_engine, make_scheduler("ddim", scheduler_config), make_plan)


def test_v_prediction_runs_with_a_v_scheduler(make_plan) -> None:
    v_engine = TorchEngine(build_tiny_unet(), prediction_type="v_prediction")
    out = _run(v_engine, make_scheduler("ddim", {"prediction_type": "v_prediction"}), make_plan)
    assert torch.isfinite(out).all()


def test_callback_gets_every_step(engine: TorchEngine, scheduler_config, make_plan) -> None:
    seen: list[dict[str, Any]] = []
    out = _run(engine, make_scheduler("ddim", scheduler_config), make_plan, callback=seen.append)
    assert [info["step"] for info in seen] == list(range(STEPS))
    assert all(isinstance(info["timestep"], float) for info in seen)
    assert seen[-1]["model_output"].shape == (2, 3, 8, 8)
    assert torch.equal(seen[-1]["latents"], out)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_goes_to_stderr(engine, scheduler_config, make_plan, capsys, progress: bool) -> None:
    _run(engine, make_scheduler("ddim", scheduler_config), make_plan, progress=progress)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert ("sampling" in captured.err) is progress


def test_generator_list_must_match_the_batch(engine: TorchEngine, scheduler_config, make_plan) -> None:
    with pytest.raises(ConfigError, match=re.escape(_BAD_GENERATORS.format(got=1, b=2))):
        sample_conditional(
            engine,
            make_scheduler("ddpm", scheduler_config),
            initial_latents(SEEDS, (3, 8, 8)),
            make_plan([0, 1]),
            generator=make_generators([0]),
        )


def test_latents_must_match_the_plan(engine: TorchEngine, scheduler_config, make_plan) -> None:
    with pytest.raises(ConfigError, match=re.escape(_BAD_LATENTS.format(c=3, b=2, got=[3, 3, 8, 8]))):
        sample_conditional(
            engine, make_scheduler("ddim", scheduler_config), torch.zeros(3, 3, 8, 8), make_plan([0, 1])
        )


@pytest.mark.parametrize("steps", [0, 2.0, True])
def test_step_count_is_validated(engine: TorchEngine, scheduler_config, make_plan, steps: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(_BAD_STEPS.format(value=steps))):
        _run(engine, make_scheduler("ddim", scheduler_config), make_plan, num_inference_steps=steps)

"""``conditional``: classifier-free guided sampling over any diffusers scheduler (METHODS.md §4.1).

Ho & Salimans (2022), with the diffusers ``pipeline_ddpm.py`` loop: ``scale_model_input`` -> engine (one packed CFG
call, :mod:`fairsample.samplers.guidance`) -> ``scheduler.step(...).prev_sample``.
"""

from __future__ import annotations

import inspect
import sys

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor
from tqdm import tqdm

from fairsample.core.engine_spec import Engine
from fairsample.core.errors import ConfigError
from fairsample.samplers.base import ConditioningPlan, StepCallback, StepInfo
from fairsample.samplers.guidance import (
    GuidanceScale,
    check_guidance_rescale,
    check_guidance_scale,
    guided_prediction,
    is_unguided,
)
from fairsample.samplers.schedulers import fresh_scheduler, set_timesteps_checked

_PREDICTION_MISMATCH = (
    "engine predicts {engine!r} but the scheduler is configured for prediction_type={scheduler!r}; build the "
    "scheduler from the bundle's config (make_scheduler(name, bundle.scheduler_config))."
)
_BAD_LATENTS = "`latents` must be a (B, {c}, H, W) tensor with B={b} (the plan's batch size), got {got}."
_BAD_STEPS = "`num_inference_steps` must be a positive int, got {value!r}."
_BAD_GENERATORS = "`generator` has {got} generators but the batch has B={b}; pass one generator per sample."
_SWITCH_BATCH = "the switched plan has B={got} rows but the plan has B={b}; give one switched row per sample."
_UNSUPPORTED = "the engine does not support N={n} at {h}x{w}; supported (N, H, W): {ranges}; use a smaller batch."


@torch.no_grad()
def sample_conditional(
    engine: Engine,
    scheduler: SchedulerMixin,
    latents: Tensor,
    plan: ConditioningPlan,
    *,
    num_inference_steps: int = 50,
    guidance_scale: GuidanceScale = 7.5,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    guidance_rescale: float = 0.0,
) -> Tensor:
    """Classifier-free guided sampling (Ho & Salimans, 2022); one batched engine call per step.

    The caller's scheduler is never mutated: the loop runs on a fresh, unused copy of it
    (:func:`~fairsample.samplers.schedulers.fresh_scheduler`).
    Timesteps reach the engine as float32 (Euler's are fractional); they are never cast to int.

    Batch invariance: with a list of B per-sample generators (:func:`~fairsample.samplers.base.make_generators`),
    stochastic schedulers (DDPM, Euler with churn) draw each sample's step noise from its own generator, so a sample
    does not depend on the rest of the batch. With the torch engine's default ``batch_invariant=True`` the final
    latents of sample k are then bitwise identical whatever the batch size. A single generator is shared by the batch,
    so results then depend on batch composition.

    Args:
        engine: the U-Net engine; ``engine.spec.prediction_type`` must equal the scheduler's ``prediction_type``.
        scheduler: any diffusers scheduler (see :func:`~fairsample.samplers.schedulers.make_scheduler`); read only.
        latents: (B, C, H, W) x_T, **already scaled** by the caller with the scheduler's ``init_noise_sigma`` after
            ``set_timesteps(num_inference_steps)`` (see :func:`~fairsample.samplers.schedulers.init_noise_sigma`;
            1.0 except for Euler). Moved to the engine's device as float32; the caller's tensor is not modified.
        plan: B conditional rows, the null rows and the B cell labels.
        num_inference_steps: number of scheduler steps (>= 1).
        guidance_scale: CFG weight w, a float or a (B,) tensor of per-sample weights; a float 1.0 skips the
            unconditional branch (one N = B call per step instead of N = 2B).
        generator: a CPU generator, or B of them (one per sample), for stochastic schedulers; None for fresh noise.
        callback: called after every step with ``{"step", "timestep", "latents", "model_output"}``.
        progress: show a tqdm progress bar on stderr.
        guidance_rescale: φ in [0, 1] of :func:`~fairsample.samplers.guidance.rescale_guidance` (0: plain CFG), an
            option against over-guided v-prediction models.

    Returns:
        (B, C, H, W) float32 final latents x_0 (decode with the VAE, or map ``x / 2 + 0.5`` for pixel models).

    Raises:
        ConfigError: prediction-type mismatch, ``latents`` not matching the plan or engine, a bad step count,
            generator list, guidance scale or rescale, or a batch the engine does not support.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from diffusers import UNet2DConditionModel
        >>> from fairsample.engines import load_engine
        >>> from fairsample.samplers import ConditioningPlan, initial_latents, make_generators, make_scheduler
        >>> unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
        ...     layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        ...     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
        ...     norm_num_groups=8)
        >>> engine = load_engine(SimpleNamespace(unet=unet, prediction_type="epsilon"))
        >>> scheduler = make_scheduler("ddpm", {"num_train_timesteps": 1000})
        >>> plan = ConditioningPlan(cond=torch.randn(2, 4, 16), uncond=torch.zeros(1, 4, 16), cells=("a", "b"))
        >>> gens = make_generators([0, 1])
        >>> x_T = initial_latents(gens, (3, 8, 8))
        >>> x_0 = sample_conditional(engine, scheduler, x_T, plan, num_inference_steps=3, generator=gens)
        >>> x_0.shape, x_0.dtype
        (torch.Size([2, 3, 8, 8]), torch.float32)
    """
    return run_guided_loop(
        engine,
        scheduler,
        latents,
        plan,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        callback=callback,
        progress=progress,
        guidance_rescale=guidance_rescale,
    )


def run_guided_loop(
    engine: Engine,
    scheduler: SchedulerMixin,
    latents: Tensor,
    plan: ConditioningPlan,
    *,
    num_inference_steps: int,
    guidance_scale: GuidanceScale,
    generator: torch.Generator | list[torch.Generator] | None,
    callback: StepCallback | None,
    progress: bool,
    switch: tuple[ConditioningPlan, float] | None = None,
    guidance_rescale: float = 0.0,
) -> Tensor:
    """The checked CFG loop shared by the samplers; ``switch=(plan_s1, tau)`` conditions on ``plan_s1`` at every
    scheduler timestep ``t < tau`` (attribute switching, METHODS.md §4.2) and on ``plan`` before; ``guidance_rescale``
    is φ of :func:`~fairsample.samplers.guidance.rescale_guidance`."""
    b = plan.batch_size
    c = engine.spec.in_channels
    if not (isinstance(latents, Tensor) and latents.dim() == 4 and latents.shape[0] == b and latents.shape[1] == c):
        got = list(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise ConfigError(_BAD_LATENTS.format(c=c, b=b, got=got))
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ConfigError(_BAD_STEPS.format(value=num_inference_steps))
    if isinstance(generator, list) and len(generator) != b:
        raise ConfigError(_BAD_GENERATORS.format(got=len(generator), b=b))
    scheduler_prediction = scheduler.config.get("prediction_type", "epsilon")
    if engine.spec.prediction_type != scheduler_prediction:
        raise ConfigError(
            _PREDICTION_MISMATCH.format(engine=engine.spec.prediction_type, scheduler=scheduler_prediction)
        )
    w = check_guidance_scale(guidance_scale, b)
    phi = check_guidance_rescale(guidance_rescale)
    h, wd = latents.shape[2:]
    n = b if is_unguided(w) else 2 * b
    if not engine.supports(n, h, wd):
        raise ConfigError(_UNSUPPORTED.format(n=n, h=h, w=wd, ranges=engine.spec.describe_ranges()))

    sched = fresh_scheduler(scheduler)
    set_timesteps_checked(sched, num_inference_steps, device=engine.device)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
    x = latents.to(device=engine.device, dtype=torch.float32, copy=True)
    cond_plan = _on_device(plan, engine.device)
    switched = None
    if switch is not None:
        switched, tau = _on_device(switch[0], engine.device), float(switch[1])
        if switched.batch_size != b:
            raise ConfigError(_SWITCH_BATCH.format(got=switched.batch_size, b=b))
    for i, t in enumerate(tqdm(sched.timesteps, disable=not progress, file=sys.stderr, desc="sampling")):
        # 1. scale input
        model_input = sched.scale_model_input(x, t)
        # 2. engine call + 3. guidance (attribute switching swaps only the conditional rows; ∅ stays)
        active = switched if switched is not None and float(t) < tau else cond_plan
        model_output = guided_prediction(engine, model_input, t, active, w, phi)
        # 4. scheduler step
        x = sched.step(model_output, t, x, **step_kwargs).prev_sample
        if callback is not None:
            info: StepInfo = {"step": i, "timestep": float(t), "latents": x, "model_output": model_output}
            callback(info)
    return x.to(torch.float32)


def _on_device(plan: ConditioningPlan, device: torch.device) -> ConditioningPlan:
    if plan.cond.device == device:
        return plan
    return ConditioningPlan(cond=plan.cond.to(device), uncond=plan.uncond.to(device), cells=plan.cells)

"""Shared sampler contracts: :class:`ConditioningPlan`, :class:`StepCallback`, :data:`SamplerFn` and seeded noise.

Randomness is an argument (STYLE.md rule 3): one CPU ``torch.Generator`` per sample, seeded from that sample's seed,
so image k depends on seed k only, whatever the batch it is generated in. The SDK never calls the global
``torch.manual_seed``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, cast

import torch
from torch import Tensor

from fairsample.core.errors import ConfigError

SamplerFn = Callable[..., Tensor]
"""A sampler: ``fn(engine, scheduler, latents, plan, *, num_inference_steps, guidance_scale, generator, callback,
progress, ...) -> latents`` (STYLE.md rule 1)."""

_MAX_SEED = 2**64 - 1

_BAD_PLAN_TENSOR = "`{name}` must be a floating torch.Tensor of shape [B, S, D], got {got}."
_BAD_UNCOND_SHAPE = (
    "`uncond` has shape {got}; expected [{b}, {s}, {d}] or [1, {s}, {d}] to match `cond` {cond}; "
    "pass the null embedding once or once per sample."
)
_BAD_UNCOND_DEVICE = "`uncond` is {got} but `cond` is {expected}; build both on the same device with the same dtype."
_BAD_CELLS = "`cells` has {got} entries but `cond` has B={b} rows; give one cell label per sample."
_BAD_SEEDS = "`seeds` must be a non-empty sequence of ints in [0, 2**64), got {value!r}."
_BAD_GENERATORS = "`seeds` generators must be CPU generators, got devices {devices}; use make_generators(seeds)."
_BAD_LATENT_SHAPE = "`shape` must be (C, H, W) with positive ints, got {value!r}."
_BAD_SIGMA = "`init_noise_sigma` must be a finite positive number, got {value!r}; use scheduler.init_noise_sigma."


@dataclass(frozen=True)
class ConditioningPlan:
    """What each sample is conditioned on: cached cell embeddings, the null embedding and the cell labels.

    Attributes:
        cond: (B, S, D) float conditional rows of ``encoder_hidden_states``, one per sample.
        uncond: (B, S, D) or (1, S, D) float null rows (empty prompt / null tokens); (1, S, D) is shared by all.
        cells: B opaque labels, one per sample (e.g. :class:`~fairsample.data.schema.CellKey`); never inspected.

    Raises:
        ConfigError: a tensor is not 3-D floating, shapes or devices disagree, or ``len(cells) != B``.

    Example:
        >>> import torch
        >>> plan = ConditioningPlan(cond=torch.zeros(2, 4, 16), uncond=torch.zeros(1, 4, 16), cells=("a", "b"))
        >>> plan.batch_size, plan.uncond_rows().shape
        (2, torch.Size([2, 4, 16]))
    """

    cond: Tensor  # (B, S, D) conditional embeddings
    uncond: Tensor  # (B, S, D) or (1, S, D) null embeddings
    cells: tuple[Any, ...]  # B opaque cell labels

    def __post_init__(self) -> None:
        for name in ("cond", "uncond"):
            value = getattr(self, name)
            if not (isinstance(value, Tensor) and value.dim() == 3 and value.is_floating_point()):
                got = f"{value.dtype} {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
                raise ConfigError(_BAD_PLAN_TENSOR.format(name=name, got=got))
        b, s, d = self.cond.shape
        if self.uncond.shape[0] not in (1, b) or tuple(self.uncond.shape[1:]) != (s, d) or b < 1:
            raise ConfigError(
                _BAD_UNCOND_SHAPE.format(got=list(self.uncond.shape), b=b, s=s, d=d, cond=list(self.cond.shape))
            )
        if self.uncond.device != self.cond.device or self.uncond.dtype != self.cond.dtype:
            raise ConfigError(
                _BAD_UNCOND_DEVICE.format(
                    got=f"{self.uncond.dtype} on {self.uncond.device}",
                    expected=f"{self.cond.dtype} on {self.cond.device}",
                )
            )
        cells = tuple(self.cells)
        if len(cells) != b:
            raise ConfigError(_BAD_CELLS.format(got=len(cells), b=b))
        object.__setattr__(self, "cells", cells)

    @property
    def batch_size(self) -> int:
        """B, the number of samples."""
        return int(self.cond.shape[0])

    def uncond_rows(self) -> Tensor:
        """(B, S, D) null rows: ``uncond`` expanded (a view) when it was given once."""
        return self.uncond.expand(self.batch_size, -1, -1)


class StepInfo(TypedDict):
    """What a :class:`StepCallback` receives after every scheduler step."""

    step: int  # 0-based step index
    timestep: float  # the scheduler timestep of this step (fractional for Euler)
    latents: Tensor  # (B, C, H, W) float32 latents after the step
    model_output: Tensor  # (B, C, H, W) float32 guided prediction used by the step


class StepCallback(Protocol):
    """Called once per step with a :class:`StepInfo` dict (k-diffusion's ``callback`` convention)."""

    def __call__(self, info: StepInfo) -> None:
        """Observe one step; must not modify the tensors."""
        ...


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per seed, seeded with it (STYLE.md rule 3).

    Args:
        seeds: B ints in [0, 2**64).

    Returns:
        B CPU generators; generator k depends only on ``seeds[k]``.

    Raises:
        ConfigError: empty ``seeds`` or a non-int / out-of-range seed.

    Example:
        >>> g = make_generators([0, 1])
        >>> torch.randn(1, generator=g[0]).item() == torch.randn(1, generator=torch.Generator().manual_seed(0)).item()
        True
    """
    _check_seeds(seeds)
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def initial_latents(
    seeds: Sequence[int] | Sequence[torch.Generator],
    shape: tuple[int, int, int],
    *,
    init_noise_sigma: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """x_T for a batch: one CPU draw of N(0, I) per sample, scaled by ``init_noise_sigma``.

    Row k is ``init_noise_sigma * randn((1, C, H, W), generator=Generator().manual_seed(seeds[k]))``, drawn in float32
    on the CPU, so it depends only on seed k (the same draw as diffusers' ``randn_tensor`` with a generator list).

    For stochastic schedulers (DDPM, Euler ancestral) pass the generators of :func:`make_generators` here *and* to the
    sampler: the step noise then continues each sample's stream instead of restarting it (a fresh generator with the
    same seed would replay x_T as the first step's noise).

    Args:
        seeds: B ints in [0, 2**64), or B CPU generators (advanced by the draw).
        shape: (C, H, W) of one sample.
        init_noise_sigma: the scheduler's ``init_noise_sigma`` after ``set_timesteps`` (1.0 for DDIM/DDPM/PNDM/
            DPM-Solver++; larger for Euler, see :func:`fairsample.samplers.schedulers.init_noise_sigma`).
        dtype: dtype of the result (the draw itself is always float32).

    Returns:
        (B, C, H, W) tensor on the CPU.

    Raises:
        ConfigError: bad seeds, shape or ``init_noise_sigma``.

    Example:
        >>> x = initial_latents([7, 8], (3, 8, 8))
        >>> x.shape, torch.equal(x[1:], initial_latents([8], (3, 8, 8)))
        (torch.Size([2, 3, 8, 8]), True)
    """
    if not (
        isinstance(shape, tuple | list)
        and len(shape) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    ):
        raise ConfigError(_BAD_LATENT_SHAPE.format(value=shape))
    sigma_ok = isinstance(init_noise_sigma, int | float) and not isinstance(init_noise_sigma, bool)
    if not (sigma_ok and math.isfinite(init_noise_sigma) and init_noise_sigma > 0):
        raise ConfigError(_BAD_SIGMA.format(value=init_noise_sigma))
    items: list[Any] = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str | bytes) else []
    generators: list[torch.Generator]
    if items and all(isinstance(g, torch.Generator) for g in items):
        if any(g.device.type != "cpu" for g in items):
            raise ConfigError(_BAD_GENERATORS.format(devices=sorted({str(g.device) for g in items})))
        generators = items
    else:
        generators = make_generators(cast(Sequence[int], seeds))
    rows = [torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators]
    return (torch.cat(rows) * float(init_noise_sigma)).to(dtype)


def _check_seeds(seeds: Any) -> None:
    """Seeds are a non-empty sequence of ints in [0, 2**64) (torch.Generator.manual_seed's range)."""
    ok = isinstance(seeds, Sequence) and not isinstance(seeds, str | bytes) and len(seeds) > 0
    ok = ok and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and 0 <= int(s) <= _MAX_SEED for s in seeds
    )
    if not ok:
        raise ConfigError(_BAD_SEEDS.format(value=seeds))

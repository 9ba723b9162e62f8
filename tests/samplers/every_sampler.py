"""Every registered sampler on the same seeded inputs, in chunks of any batch size (shared by the conformance and
batch-invariance suites of this folder)."""

from __future__ import annotations

import torch

from fairsample.data.schema import CellKey
from fairsample.samplers import (
    SAMPLERS,
    ConditioningPlan,
    Perturbation,
    initial_latents,
    make_generators,
    make_scheduler,
)
from tests.export.shared import HIDDEN_DIM, SEQ_LEN

SEEDS = list(range(6))
TONES = ["light", "medium", "dark"]


def _cell(seed: int) -> CellKey:
    return CellKey((("tone", TONES[seed % 3]),), str(seed % 2))


def _rows(seeds, offset: int) -> torch.Tensor:
    """One seeded conditioning row per sample (depends on the sample only)."""
    return torch.stack(
        [torch.randn(SEQ_LEN, HIDDEN_DIM, generator=torch.Generator().manual_seed(s + offset)) for s in seeds]
    )


def _extra(name: str, seeds) -> dict:
    if name in ("attribute_switch", "mixing"):
        s1 = ConditioningPlan(
            cond=_rows(seeds, 1000), uncond=torch.zeros(1, SEQ_LEN, HIDDEN_DIM), cells=tuple(_cell(s) for s in seeds)
        )
        return {"switch_plan": s1, "tau": 500.0} if name == "attribute_switch" else {"switch_plan": s1}
    if name == "fairdiffusion_perturbed":
        return {"perturbation": Perturbation(guidance={"tone": {"dark": 1.0}}, temperature={"tone": {"light": 0.1}})}
    return {}


def generate(engine, name: str, batch_size: int) -> torch.Tensor:
    """Sampler ``name`` (DDIM, 3 steps, guidance 2) over SEEDS in chunks of ``batch_size``: [6, 3, 8, 8] float32."""
    sched = make_scheduler("ddim", {"num_train_timesteps": 1000, "prediction_type": "epsilon"})
    out = []
    for start in range(0, len(SEEDS), batch_size):
        seeds = SEEDS[start : start + batch_size]
        gens = make_generators(seeds)
        x = initial_latents(gens, (3, 8, 8))
        plan = ConditioningPlan(
            cond=_rows(seeds, 0), uncond=torch.zeros(1, SEQ_LEN, HIDDEN_DIM), cells=tuple(_cell(s) for s in seeds)
        )
        out.append(
            SAMPLERS[name](
                engine,
                sched,
                x,
                plan,
                num_inference_steps=3,
                guidance_scale=2.0,
                generator=gens,
                **_extra(name, seeds),
            )
        )
    return torch.cat(out)

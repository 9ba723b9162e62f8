"""``fairdiffusion_perturbed``: per-group guidance-scale and initial-noise-temperature offsets (METHODS.md §4.3).

**project-extension** — fairsample's own sampler; no upstream method exists. For a sample in a cell with group
g_a in each targeted attribute a: w_i = max(w_min, w_0 + Σ_a δw[a, g_a]) and κ_i = 1 + Σ_a δκ[a, g_a], with
x_T,i = κ_i · x_T,i (x_T already scaled by ``init_noise_sigma``). The guided prediction uses the per-sample scale
vector in the same packed 2B engine call. With every offset 0 it *is* ``conditional`` (bit-identical latents).

The offsets live in a :class:`Perturbation` (stored as ``perturbation.json`` next to a bundle by
``fairsample tune-perturbation``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from fairsample.core.engine_spec import Engine
from fairsample.core.errors import ConfigError, DataError
from fairsample.data.schema import CellKey
from fairsample.samplers.base import ConditioningPlan, StepCallback
from fairsample.samplers.conditional import run_guided_loop

METHOD_STATUS = "project-extension"
FILE_NAME = "perturbation.json"
_BAD_FILE = "`perturbation` {path} is not a readable perturbation JSON ({why}); write it with Perturbation.save()."
_BAD_OFFSET = "perturbation offset {where} must be a finite number, got {value!r}."
_UNKNOWN_GROUP = "perturbation names {attribute}={value!r}, which the model does not have; its values are {known}."


@dataclass(frozen=True)
class Perturbation:
    """Per-(attribute, group) offsets of the perturbed sampler.

    Attributes:
        guidance: ``{attribute: {group: δw}}``; groups not listed get 0.
        temperature: ``{attribute: {group: δκ}}``; groups not listed get 0.
        guidance_min: w_min, the floor of every per-sample scale.
        meta: provenance (objective, bounds, BO trace digest, seeds), stored as given.

    Example:
        >>> p = Perturbation(guidance={"tone": {"dark": 0.5}}, temperature={"tone": {"dark": -0.1}})
        >>> c = CellKey((("tone", "dark"),), "3")
        >>> w, k = p.per_sample([c, c.replace(tone="light")], base_guidance=1.5)
        >>> w.tolist(), [round(v, 3) for v in k.tolist()]
        ([2.0, 1.5], [0.9, 1.0])
    """

    guidance: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    temperature: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    guidance_min: float = 1.0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def is_zero(self) -> bool:
        """True when every offset is 0 (the sampler then equals ``conditional``)."""
        return all(v == 0 for table in (self.guidance, self.temperature) for g in table.values() for v in g.values())

    def check(self, attribute_values: Mapping[str, Sequence[str]]) -> None:
        """Raise :class:`ConfigError` for offsets on attributes/groups the model does not have or non-finite ones."""
        for table in (self.guidance, self.temperature):
            for attribute, groups in table.items():
                known = [str(v) for v in attribute_values.get(attribute, [])]
                for value, offset in groups.items():
                    if value not in known:
                        raise ConfigError(_UNKNOWN_GROUP.format(attribute=attribute, value=value, known=known))
                    if not isinstance(offset, int | float) or offset != offset or abs(offset) == float("inf"):
                        raise ConfigError(_BAD_OFFSET.format(where=f"{attribute}={value}", value=offset))

    def per_sample(self, cells: Sequence[CellKey], *, base_guidance: float) -> tuple[Tensor, Tensor]:
        """``(w, κ)``: (B,) float32 guidance scales and initial-noise temperatures for ``cells``."""
        w, k = [], []
        for cell in cells:
            groups = dict(cell.groups)
            dw = sum(float(t.get(groups.get(a, ""), 0.0)) for a, t in self.guidance.items())
            dk = sum(float(t.get(groups.get(a, ""), 0.0)) for a, t in self.temperature.items())
            w.append(max(self.guidance_min, base_guidance + dw))
            k.append(1.0 + dk)
        return torch.tensor(w, dtype=torch.float32), torch.tensor(k, dtype=torch.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the ``perturbation.json`` document)."""
        return {
            "method_status": METHOD_STATUS,
            "guidance": {a: dict(g) for a, g in self.guidance.items()},
            "temperature": {a: dict(g) for a, g in self.temperature.items()},
            "guidance_min": self.guidance_min,
            "meta": dict(self.meta),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON document (a folder gets ``perturbation.json``)."""
        p = Path(path)
        if p.is_dir():
            p = p / FILE_NAME
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Perturbation:
        """Read a perturbation JSON (a folder means its ``perturbation.json``); JSON only, never pickle."""
        p = Path(path)
        if p.is_dir():
            p = p / FILE_NAME
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            return cls(
                guidance=doc.get("guidance", {}),
                temperature=doc.get("temperature", {}),
                guidance_min=float(doc.get("guidance_min", 1.0)),
                meta=doc.get("meta", {}),
            )
        except (OSError, ValueError, AttributeError, TypeError) as err:
            raise DataError(_BAD_FILE.format(path=p, why=f"{type(err).__name__}: {err}")) from err


@torch.no_grad()
def sample_fairdiffusion_perturbed(
    engine: Engine,
    scheduler: SchedulerMixin,
    latents: Tensor,
    plan: ConditioningPlan,
    *,
    perturbation: Perturbation,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> Tensor:
    """Conditional sampling with per-group guidance and noise-temperature offsets (``plan.cells`` are CellKeys).

    Args:
        engine, scheduler, latents, plan, num_inference_steps, generator, callback, progress: as
            :func:`~fairsample.samplers.conditional.sample_conditional`.
        perturbation: the offsets.
        guidance_scale: the base scale w_0 (a float).

    Returns:
        (B, C, H, W) float32 final latents.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from fairsample.engines import load_engine
        >>> from fairsample.models.builtin import build_unet
        >>> from fairsample.samplers import initial_latents, make_generators, make_scheduler, sample_conditional
        >>> engine = load_engine(SimpleNamespace(unet=build_unet("test", sample_size=8, cross_attention_dim=8),
        ...                                      prediction_type="epsilon"))
        >>> cell = CellKey((("tone", "dark"),), "1")
        >>> plan = ConditioningPlan(cond=torch.randn(1, 2, 8), uncond=torch.zeros(1, 2, 8), cells=(cell,))
        >>> x = initial_latents(make_generators([0]), (3, 8, 8))
        >>> kw = dict(num_inference_steps=2, guidance_scale=2.0)
        >>> a = sample_fairdiffusion_perturbed(engine, make_scheduler("ddim", {}), x, plan,
        ...                                    perturbation=Perturbation(), **kw)
        >>> torch.equal(a, sample_conditional(engine, make_scheduler("ddim", {}), x, plan, **kw))
        True
    """
    if perturbation.is_zero():
        w: float | Tensor = float(guidance_scale)
        x_t = latents
    else:
        w, kappa = perturbation.per_sample(list(plan.cells), base_guidance=float(guidance_scale))
        x_t = latents * kappa.to(latents.device)[:, None, None, None]
    return run_guided_loop(
        engine,
        scheduler,
        x_t,
        plan,
        num_inference_steps=num_inference_steps,
        guidance_scale=w,
        generator=generator,
        callback=callback,
        progress=progress,
    )

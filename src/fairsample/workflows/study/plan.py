"""The study grid: which cells a run computes, in which order, and which cells each depends on.

A *model* is one (method, generator seed) pair, ``"vanilla@0"``; a *set* is one (method, sampler) row of the tables,
``"vanilla"`` or ``"vanilla.attribute_switch"``, made by every generator seed of its method (its *replicates*). Cells
(``S/cells/<kind>/<name>/``):

- ``base/base`` — the shared base, trained from scratch without the minority group (skipped with ``base=PATH``);
- ``prefs/fairgen`` — FairGen's proxy preference pairs, built once from the base;
- per model, one *chain* run by one worker process: ``train/<model>`` → ``export/<model>`` → (``tau/<model>``,
  ``perturbation/<model>`` on the sampler models) → ``generate/<set>@<seed>``; the first vanilla model adds
  ``curve/<model>`` (minority fidelity of its snapshots);
- ``oracle/oracle`` — real holdout images in the augmentation plan's numbers;
- ``evaluate/all`` — one evaluation of every set, the oracle and the Base row on both views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fairsample.core.errors import ConfigError
from fairsample.workflows.study.profiles import METHODS, PROFILES, SAMPLERS, StudyProfile

_BAD_PROFILE = "`profile` must be one of {allowed}, got {value!r}."
_BAD_METHOD = "`methods` names unknown method(s) {bad}; the study's methods are {allowed}."
_BAD_SAMPLER = "`samplers` names unknown sampler(s) {bad}; the study's samplers are {allowed}."
_EMPTY = "`{name}` is empty; give at least one of {allowed}."
_NO_CONDITIONAL = (
    "`samplers` must include 'conditional': every method row is a conditional set, and the other samplers are "
    "compared against it."
)
_NO_VANILLA = "`methods` must include 'vanilla': it is the reference every method is compared with."
_BAD_SEEDS = "`seeds` must be an integer >= 1 (classifier seeds 0..N-1), got {value!r}."


@dataclass(frozen=True)
class GridCell:
    """One planned cell: ``S/cells/<kind>/<name>/``."""

    kind: str  # base | prefs | train | curve | export | tau | perturbation | generate | oracle | evaluate
    name: str  # "base", a model "<method>@<seed>", "<set>@<seed>", "oracle" or "all"
    needs: tuple[str, ...] = ()  # ids of the cells it depends on
    model: str | None = None  # the model whose chain runs it (None: the main process)

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class StudyPlan:
    """The resolved grid: what a run computes, in order."""

    profile: StudyProfile
    methods: tuple[str, ...]
    samplers: tuple[str, ...]
    seeds: tuple[int, ...]  # downstream classifier seeds
    generator_seeds: tuple[int, ...]
    attribute: str
    sets: tuple[tuple[str, str, str], ...]  # (set name, method, sampler), table order
    cells: tuple[GridCell, ...]
    base: str | None = None  # a user-named base bundle (no base cell), or None

    @property
    def models(self) -> tuple[str, ...]:
        """Every (method, generator seed) as ``"<method>@<seed>"``, methods in table order."""
        return tuple(model_name(m, s) for m in self.methods for s in self.generator_seeds)

    def chain(self, model: str) -> list[GridCell]:
        """The cells one worker runs for ``model``, in order."""
        return [c for c in self.cells if c.model == model]

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "methods": list(self.methods),
            "samplers": list(self.samplers),
            "seeds": list(self.seeds),
            "generator_seeds": list(self.generator_seeds),
            "attribute": self.attribute,
            "base": self.base,
            "sets": [{"name": n, "method": m, "sampler": s} for n, m, s in self.sets],
            "cells": [c.id for c in self.cells],
        }


def model_name(method: str, seed: int) -> str:
    """``"vanilla@0"``: the model trained with ``method`` and generator seed ``seed``."""
    return f"{method}@{seed}"


def set_name(method: str, sampler: str) -> str:
    """The table name of a generated set: the method for ``conditional``, else ``<method>.<sampler>``."""
    return method if sampler == "conditional" else f"{method}.{sampler}"


def _split_names(values: Sequence[str] | str | None) -> list[str] | None:
    """``["vanilla,cbrs", "cbdm"]`` → ``["vanilla", "cbrs", "cbdm"]`` (None stays None)."""
    if values is None:
        return None
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        out += [v.strip() for v in str(item).split(",") if v.strip()]
    return out


def plan_study(
    *,
    profile: str = "small",
    methods: Sequence[str] | str | None = None,
    samplers: Sequence[str] | str | None = None,
    seeds: int | None = None,
    attribute: str = "tone",
    base: str | None = None,
    with_oracle: bool = True,
) -> StudyPlan:
    """The grid of a study, without touching any data (``--dry-run``).

    Args:
        profile: a key of :data:`~fairsample.workflows.study.profiles.PROFILES`.
        methods: subset of :data:`~fairsample.workflows.study.profiles.METHODS` (names or comma lists; must include
            vanilla).
        samplers: subset of :data:`~fairsample.workflows.study.profiles.SAMPLERS`, must include ``conditional``.
        seeds: downstream classifier seeds 0..N-1 (default: the profile's).
        attribute: the sensitive attribute (recorded only).
        base: a base bundle named by the user (no base cell is planned).
        with_oracle: plan the oracle cell (needs a holdout pool).

    Returns:
        :class:`StudyPlan`.

    Raises:
        ConfigError: unknown profile, method or sampler; no ``conditional`` or ``vanilla``; ``seeds`` < 1.

    Example:
        >>> p = plan_study(profile="tiny", methods="vanilla", samplers=["conditional", "attribute_switch"])
        >>> [name for name, _, _ in p.sets], p.models
        (['vanilla', 'vanilla.attribute_switch'], ('vanilla@0', 'vanilla@1'))
    """
    if profile not in PROFILES:
        raise ConfigError(_BAD_PROFILE.format(allowed=sorted(PROFILES), value=profile))
    prof = PROFILES[profile]
    wanted_m = _split_names(methods)
    wanted_s = _split_names(samplers)
    wanted_m = list(prof.default_methods) if wanted_m is None else wanted_m
    wanted_s = list(prof.default_samplers) if wanted_s is None else wanted_s
    bad = [m for m in wanted_m if m not in METHODS]
    if bad:
        raise ConfigError(_BAD_METHOD.format(bad=bad, allowed=list(METHODS)))
    bad = [s for s in wanted_s if s not in SAMPLERS]
    if bad:
        raise ConfigError(_BAD_SAMPLER.format(bad=bad, allowed=list(SAMPLERS)))
    if not wanted_m:
        raise ConfigError(_EMPTY.format(name="methods", allowed=list(METHODS)))
    if not wanted_s:
        raise ConfigError(_EMPTY.format(name="samplers", allowed=list(SAMPLERS)))
    if "vanilla" not in wanted_m:
        raise ConfigError(_NO_VANILLA)
    if "conditional" not in wanted_s:
        raise ConfigError(_NO_CONDITIONAL)
    n_seeds = prof.classifier_seeds if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ConfigError(_BAD_SEEDS.format(value=seeds))
    ms = tuple(m for m in METHODS if m in wanted_m)
    ss = tuple(s for s in SAMPLERS if s in wanted_s)
    gseeds = tuple(prof.generator_seeds)

    sets = [(m, m, "conditional") for m in ms]
    for s in ss[1:]:
        sets += [(set_name(m, s), m, s) for m in prof.sampler_models if m in ms]
    cells: list[GridCell] = []
    base_needs: tuple[str, ...] = ()
    if base is None:
        cells.append(GridCell("base", "base"))
        base_needs = ("base/base",)
    if "fairgen" in ms:
        cells.append(GridCell("prefs", "fairgen", base_needs))
    if with_oracle:
        cells.append(GridCell("oracle", "oracle"))
    for m in ms:
        for seed in gseeds:
            model = model_name(m, seed)
            needs = base_needs + (("prefs/fairgen",) if m == "fairgen" else ())
            cells.append(GridCell("train", model, needs, model))
            if m == "vanilla" and seed == gseeds[0]:
                cells.append(GridCell("curve", model, (f"train/{model}",), model))
            cells.append(GridCell("export", model, (f"train/{model}",), model))
            gen_needs = {"conditional": (f"export/{model}",)}
            if m in prof.sampler_models and "attribute_switch" in ss:
                cells.append(GridCell("tau", model, (f"export/{model}",), model))
                gen_needs["attribute_switch"] = (f"tau/{model}",)
            if m in prof.sampler_models and "fairdiffusion_perturbed" in ss:
                cells.append(GridCell("perturbation", model, (f"export/{model}",), model))
                gen_needs["fairdiffusion_perturbed"] = (f"perturbation/{model}",)
            for name, method, sampler in sets:
                if method == m:
                    cells.append(GridCell("generate", f"{name}@{seed}", gen_needs[sampler], model))
    generated = tuple(c.id for c in cells if c.kind == "generate")
    cells.append(GridCell("evaluate", "all", generated + (("oracle/oracle",) if with_oracle else ())))
    return StudyPlan(prof, ms, ss, tuple(range(n_seeds)), gseeds, attribute, tuple(sets), tuple(cells), base)

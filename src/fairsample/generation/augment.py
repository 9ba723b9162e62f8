"""Imbalance-aware augmentation plans (METHODS.md §3.7): how many synthetic images m_c to add to every cell c.

Given the real (training) rows and a budget of ``total`` synthetic images, :func:`augmentation_plan` chooses
m_c >= 0 with Σ m_c = ``total`` exactly, so that *real + synthetic* has the requested balance:

``target="balanced"`` — water-filling over the cells
    Raise the smallest merged cells first: with the largest integer level L such that Σ_c max(0, L - n_c) <= total,
    every cell below L is filled to L (m_c = max(0, L - n_c)); the r = total - Σ m_c images left over (always fewer
    than the cells now at level L) go one each to the first r cells at level L, in cell order (attribute values, then
    label, numeric-aware, as ``fairsample data check`` prints them). Cells already above L get nothing. With
    total >= Σ_c (max n - n_c) every merged cell is within one image of equal.

``target={"light": 0.3, "medium": 0.2, "dark": 0.5}`` — merged shares over one attribute (FairSkin's race proportion)
    1. Per attribute value v the merged count should be p_v · N with N = R + total (R: real images in the plan's
       cells), so m_v = p_v · N - R_v, computed in exact fractions. The m_v are rounded with the *largest remainder*
       method (floor, then one extra image to the largest fractional parts; ties go to the earlier value in natural
       order), so Σ m_v = total exactly. FairGen's ``sample_by_race_proportion`` uses floor division and can fall
       short of the budget; fairsample does not copy that.
    2. Within a value, m_v is split over its cells (its labels, and the other attributes' values when there are
       several): ``within="fill"`` (default) water-fills the merged counts, so labels within a value end as equal as
       m_v allows; ``within="equal"`` gives every cell the same number of synthetic images (FairSkin's literal "equal
       counts per disease within a race"; the remainder goes to the first cells). Both coincide when the real counts
       within the value are equal (e.g. no real data).
    3. If the real data alone already exceeds a share (R_v > p_v · N), the target is unreachable with this total:
       :class:`~fairsample.core.errors.ConfigError` names the share and the smallest total that reaches it.

Shares must be positive, name every value of the attribute exactly once and sum to 1 (within 1e-6; they are then
normalised exactly, so ⅓-style decimals work).

Example:
    >>> from fairsample.data.schema import CellKey
    >>> real = {CellKey((("tone", "light"),), "0"): 5, CellKey((("tone", "dark"),), "0"): 1}
    >>> plan = augmentation_plan(real, total=6)
    >>> [(str(r.cell), r.real, r.synthetic, r.merged) for r in plan.rows]
    [('tone=dark,label=0', 1, 5, 6), ('tone=light,label=0', 5, 1, 6)]
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey
from fairsample.data.tables import natural_key

if TYPE_CHECKING:
    from fairsample.data.folder import FolderDataset
    from fairsample.generation.pipeline import GenerationPlan

__all__ = ["AugmentPlan", "AugmentRow", "augmentation_plan", "parse_target"]

_BAD_TOTAL = "`total` must be an integer >= 1, got {value!r}."
_BAD_TARGET = "`target` must be 'balanced' or shares per {attribute} value like {example}, got {value!r}."
_TARGET_KEYS = (
    "`target` shares must name every {attribute} value once: missing {missing}, unknown {unknown} "
    "(the plan's values: {known})."
)
_BAD_SHARE = "`target` share {attribute}={value} must be a number in (0, 1], got {share!r}."
_SHARE_SUM = "`target` shares must sum to 1, got {total:g} ({shares})."
_UNREACHABLE = (
    "target share {attribute}={value} of {share:g} is unreachable with total={total}: the real data already has "
    "{real} {attribute}={value} images of {merged} after augmentation ({have:.1%}); pass --total >= {need}."
)
_BAD_ATTRIBUTE = "`attribute` {value!r} is not a group column of the dataset; its group columns are {known}."
_NO_GROUPS = "the dataset has no group column; proportion targets need one (pass --group-col, e.g. --group-col tone)."
_BAD_WITHIN = "`within` must be one of ['equal', 'fill'], got {value!r}."
_NO_CELLS = "`cells` is empty; give at least one cell (e.g. tone=dark,label=3) or omit it to use every cell."
_CELL_GROUPS = "`cells` entry {cell} has attributes {have}, but the dataset's group columns are {want}."
_DUP_CELL = "`cells` lists {cell} twice."
_BAD_TARGET_TEXT = (
    "`--target` must be 'balanced' or 'proportions:VALUE=SHARE,...' (e.g. proportions:light=0.3,medium=0.2,dark=0.5), "
    "got {text!r}."
)


def _cell_order(cell: CellKey) -> tuple:
    return (tuple(natural_key(v) for _, v in cell.groups), natural_key(cell.label))


def water_fill(real: Sequence[int], total: int) -> list[int]:
    """Synthetic counts m_i >= 0, Σ m_i = ``total``, that make ``real[i] + m_i`` as equal as possible.

    The smallest entries are raised first to the largest common level L that the budget allows; the leftover images
    (fewer than the entries at level L) go to the first entries at level L, in the given order.

    Example:
        >>> water_fill([10, 0, 4, 4], 9)
        [0, 6, 2, 1]
        >>> water_fill([3, 3, 3], 4)
        [2, 1, 1]
    """
    if not real:
        return []

    def need(level: int) -> int:
        return sum(max(0, level - n) for n in real)

    lo, hi = min(real), min(real) + total  # need(lo) = 0 <= total; find the largest level with need <= total
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid) <= total:
            lo = mid
        else:
            hi = mid - 1
    m = [max(0, lo - n) for n in real]
    rest = total - sum(m)
    for i, n in enumerate(real):
        if rest == 0:
            break
        if n + m[i] == lo:
            m[i] += 1
            rest -= 1
    if rest:  # unreachable: need(lo + 1) > total means fewer leftovers than cells at level lo
        raise AssertionError("water_fill left images unassigned")
    return m


def _equal_split(n_cells: int, total: int) -> list[int]:
    base, rest = divmod(total, n_cells)
    return [base + (1 if i < rest else 0) for i in range(n_cells)]


def _largest_remainder(exact: Sequence[Fraction], total: int) -> list[int]:
    """Integers summing to ``total`` (= Σ exact), each floor or ceil of its exact value; ties to the earlier one."""
    floors = [math.floor(x) for x in exact]
    rest = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:rest]:
        floors[i] += 1
    return floors


def parse_target(text: str) -> str | dict[str, float]:
    """The CLI's ``--target``: ``"balanced"`` or ``"proportions:light=0.3,medium=0.2,dark=0.5"`` → a dict.

    Example:
        >>> parse_target("proportions:light=0.3,medium=0.2,dark=0.5")
        {'light': 0.3, 'medium': 0.2, 'dark': 0.5}
    """
    text = text.strip()
    if text == "balanced":
        return "balanced"
    kind, sep, body = text.partition(":")
    if kind.strip() not in ("proportions", "proportion") or not sep:
        raise ConfigError(_BAD_TARGET_TEXT.format(text=text))
    out: dict[str, float] = {}
    for part in body.split(","):
        key, eq, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = None
        if not eq or not key.strip() or share is None or key.strip() in out:
            raise ConfigError(_BAD_TARGET_TEXT.format(text=text))
        out[key.strip()] = share
    return out


@dataclass(frozen=True)
class AugmentRow:
    """One cell of an :class:`AugmentPlan`."""

    cell: CellKey
    real: int  # real images in the cell
    synthetic: int  # m: synthetic images to generate
    merged: int  # real + synthetic
    share: float  # merged / all merged images of the plan


@dataclass(frozen=True)
class AugmentPlan:
    """How many synthetic images to generate per cell, and the resulting real + synthetic counts.

    Attributes:
        rows: one :class:`AugmentRow` per cell, in cell order (attribute values, then label, numeric-aware).
        target: ``"balanced"`` or the normalised shares ``{value: share}`` of ``attribute``.
        total: Σ synthetic (exactly the requested budget).
        attribute: the attribute the shares are over (also reported for ``balanced``).
        within: how a value's images were split over its cells (``"fill"`` or ``"equal"``; proportions only).
        label_col: the label column name (for cell texts).
    """

    rows: tuple[AugmentRow, ...]
    target: str | dict[str, float]
    total: int
    attribute: str | None
    within: str
    label_col: str = "label"

    def counts(self) -> dict[CellKey, int]:
        """Synthetic images per cell (cells with m = 0 included)."""
        return {r.cell: r.synthetic for r in self.rows}

    @property
    def n_real(self) -> int:
        return sum(r.real for r in self.rows)

    @property
    def n_merged(self) -> int:
        return sum(r.merged for r in self.rows)

    def by_value(self) -> list[dict[str, Any]]:
        """Per value of :attr:`attribute`: real, synthetic, merged, merged share and the target share (or None)."""
        if self.attribute is None:
            return []
        acc: dict[str, list[int]] = {}
        for r in self.rows:
            acc.setdefault(r.cell.value(self.attribute), [0, 0, 0])
            acc[r.cell.value(self.attribute)][0] += r.real
            acc[r.cell.value(self.attribute)][1] += r.synthetic
            acc[r.cell.value(self.attribute)][2] += r.merged
        n = self.n_merged
        targets = self.target if isinstance(self.target, dict) else {}
        return [
            {
                "value": v,
                "real": a,
                "synthetic": b,
                "merged": c,
                "share": c / n if n else 0.0,
                "target": targets.get(v),
            }
            for v, (a, b, c) in sorted(acc.items(), key=lambda kv: natural_key(kv[0]))
        ]

    def to_generation_plan(self, seeds: Sequence[int] | None = None) -> GenerationPlan:
        """The :class:`~fairsample.generation.pipeline.GenerationPlan`: m_c images per cell in cell order, cells
        with m = 0 skipped, seeds assigned in that order (default 0, 1, 2, ...; a ``seeds`` list gives them
        explicitly)."""
        from fairsample.generation.pipeline import GenerationPlan

        return GenerationPlan.from_counts([(r.cell, r.synthetic) for r in self.rows], seeds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the ``--format json`` plan and ``augment.json``)."""
        return {
            "target": self.target,
            "attribute": self.attribute,
            "within": self.within if isinstance(self.target, dict) else None,
            "total": self.total,
            "n_real": self.n_real,
            "n_merged": self.n_merged,
            "cells": [
                {
                    "cell": r.cell.to_text(self.label_col),
                    "real": r.real,
                    "synthetic": r.synthetic,
                    "merged": r.merged,
                    "share": round(r.share, 6),
                }
                for r in self.rows
            ],
            "by_value": [dict(d, share=round(d["share"], 6)) for d in self.by_value()],
        }

    def format_table(self) -> str:
        """The plan as aligned text: one line per cell, a rule, then one line per attribute value and the total."""
        head = ["cell", "real", "synthetic", "merged", "share"]
        body = [
            [r.cell.to_text(self.label_col), str(r.real), str(r.synthetic), str(r.merged), f"{r.share:.3f}"]
            for r in self.rows
        ]
        summary = []
        for d in self.by_value():
            share = f"{d['share']:.3f}" + (f" (target {d['target']:.3f})" if d["target"] is not None else "")
            summary.append(
                [f"{self.attribute}={d['value']}", str(d["real"]), str(d["synthetic"]), str(d["merged"]), share]
            )
        summary.append(["total", str(self.n_real), str(self.total), str(self.n_merged), "1.000"])
        rows = [head, *body, *summary]
        widths = [max(len(r[k]) for r in rows) for k in range(4)]

        def line(cells: list[str]) -> str:
            numbers = [c.rjust(w) for c, w in zip(cells[1:4], widths[1:], strict=True)]
            return "  ".join([cells[0].ljust(widths[0]), *numbers, cells[4]])

        rule = "-" * len(line(head))
        return "\n".join([line(head), *(line(r) for r in body), rule, *(line(r) for r in summary)])


def _real_counts(
    real: FolderDataset | Mapping[CellKey, int], cells: Sequence[CellKey] | None
) -> tuple[list[CellKey], list[int], tuple[str, ...], str]:
    """(cells in order, real counts, group columns, label column)."""
    if isinstance(real, Mapping):
        counts = Counter({c: int(n) for c, n in real.items()})
        present = [c for c, n in counts.items()]
        groups = present[0].groups if present else ()
        group_names = tuple(g for g, _ in groups)
        label_col = "label"
        grid = sorted(present, key=_cell_order)
    else:
        counts = Counter(real.cell_ids())
        group_names = tuple(real.spec.groups)
        label_col = real.spec.label
        values = real.attribute_values()
        grid = [
            CellKey(tuple(zip(group_names, combo, strict=True)), label)
            for combo in itertools.product(*(values[g] for g in group_names))
            for label in real.label_values()
        ]
        grid.sort(key=_cell_order)
    if cells is None:
        chosen = grid
    else:
        chosen = list(cells)
        if not chosen:
            raise ConfigError(_NO_CELLS)
        seen: set[CellKey] = set()
        for c in chosen:
            have = [g for g, _ in c.groups]
            if tuple(have) != group_names:
                raise ConfigError(_CELL_GROUPS.format(cell=c.to_text(label_col), have=have, want=list(group_names)))
            if c in seen:
                raise ConfigError(_DUP_CELL.format(cell=c.to_text(label_col)))
            seen.add(c)
        chosen.sort(key=_cell_order)
    if not chosen:
        raise ConfigError(_NO_CELLS)
    return chosen, [counts.get(c, 0) for c in chosen], group_names, label_col


def augmentation_plan(
    real: FolderDataset | Mapping[CellKey, int],
    *,
    target: str | Mapping[str, float] = "balanced",
    total: int,
    attribute: str | None = None,
    cells: Sequence[CellKey] | None = None,
    within: str = "fill",
) -> AugmentPlan:
    """How many synthetic images per cell make real + synthetic balanced as requested (see the module docstring).

    Args:
        real: the real rows to augment (usually the training split), or a ``{cell: count}`` mapping.
        target: ``"balanced"`` (equal merged cells) or merged shares per value of ``attribute``, e.g.
            ``{"light": 0.3, "medium": 0.2, "dark": 0.5}``.
        total: synthetic images to generate (Σ m_c, exact).
        attribute: the attribute the shares are over (default: the dataset's first group column).
        cells: the cells to plan over (default: every combination of the dataset's attribute values and labels,
            including combinations with no real image, which count as 0).
        within: proportions only — ``"fill"`` equalises merged counts within a value, ``"equal"`` gives its cells
            equal synthetic counts.

    Returns:
        :class:`AugmentPlan`.

    Raises:
        ConfigError: a bad total, target, attribute or cell, or a share the real data already exceeds.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ConfigError(_BAD_TOTAL.format(value=total))
    if within not in ("fill", "equal"):
        raise ConfigError(_BAD_WITHIN.format(value=within))
    chosen, counts, group_names, label_col = _real_counts(real, cells)
    if attribute is None:
        attribute = group_names[0] if group_names else None
    elif attribute not in group_names:
        raise ConfigError(_BAD_ATTRIBUTE.format(value=attribute, known=list(group_names)))

    if isinstance(target, str) and target == "balanced":
        synth = water_fill(counts, total)
        shares: str | dict[str, float] = "balanced"
    elif isinstance(target, Mapping):
        if attribute is None:
            raise ConfigError(_NO_GROUPS)
        synth, shares = _proportional(chosen, counts, dict(target), total, attribute, within)
    else:
        example = "{'light': 0.3, 'medium': 0.2, 'dark': 0.5}"
        raise ConfigError(_BAD_TARGET.format(attribute=attribute, example=example, value=target))

    n = sum(counts) + total
    rows = tuple(
        AugmentRow(cell=c, real=r, synthetic=m, merged=r + m, share=(r + m) / n)
        for c, r, m in zip(chosen, counts, synth, strict=True)
    )
    return AugmentPlan(rows=rows, target=shares, total=total, attribute=attribute, within=within, label_col=label_col)


def _proportional(
    cells: Sequence[CellKey], counts: Sequence[int], target: dict[str, Any], total: int, attribute: str, within: str
) -> tuple[list[int], dict[str, float]]:
    values = sorted({c.value(attribute) for c in cells}, key=natural_key)
    keys = [str(k) for k in target]
    missing = [v for v in values if v not in keys]
    unknown = [k for k in keys if k not in values]
    if missing or unknown:
        raise ConfigError(_TARGET_KEYS.format(attribute=attribute, missing=missing, unknown=unknown, known=values))
    raw: dict[str, Fraction] = {}
    for k, share in target.items():
        ok = isinstance(share, int | float) and not isinstance(share, bool) and math.isfinite(share)
        if not ok or not 0 < share <= 1:
            raise ConfigError(_BAD_SHARE.format(attribute=attribute, value=k, share=share))
        raw[str(k)] = Fraction(str(float(share)))
    s = sum(raw.values())
    if abs(float(s) - 1) > 1e-6:
        shown = ", ".join(f"{k}={float(v):g}" for k, v in raw.items())
        raise ConfigError(_SHARE_SUM.format(total=float(s), shares=shown))
    p = {v: raw[v] / s for v in values}

    real_v = {v: 0 for v in values}
    for c, n in zip(cells, counts, strict=True):
        real_v[c.value(attribute)] += n
    merged = sum(counts) + total
    # reachable iff R_v <= p_v · N for every value; the smallest such N is max_v ceil(R_v / p_v)
    need_n = max(math.ceil(real_v[v] / p[v]) for v in values)
    if need_n > merged:
        worst = max(values, key=lambda v: (Fraction(real_v[v]) / p[v], -values.index(v)))
        raise ConfigError(
            _UNREACHABLE.format(
                attribute=attribute,
                value=worst,
                share=float(p[worst]),
                total=total,
                real=real_v[worst],
                merged=merged,
                have=real_v[worst] / merged,
                need=need_n - sum(counts),
            )
        )
    per_value = _largest_remainder([p[v] * merged - real_v[v] for v in values], total)

    synth = [0] * len(cells)
    for v, m_v in zip(values, per_value, strict=True):
        idx = [i for i, c in enumerate(cells) if c.value(attribute) == v]
        split = water_fill([counts[i] for i in idx], m_v) if within == "fill" else _equal_split(len(idx), m_v)
        for i, m in zip(idx, split, strict=True):
            synth[i] = m
    return synth, {v: float(p[v]) for v in values}


_CELL_NOT_IN_MODEL = (
    "the plan needs cell {cell} ({m} images), which model {model} cannot generate (its cells: {known}); "
    "pass --cells to restrict the plan."
)


def generation_plan(plan: AugmentPlan, bundle: Any, seeds: Sequence[int] | None = None) -> Any:
    """The :class:`~fairsample.generation.pipeline.GenerationPlan` that generates an augmentation plan's synthetic
    images with ``bundle``: the dataset's cells are matched to the model's by their text (attribute values and label).

    Raises:
        ConfigError: a cell that needs images is unknown to the model (names the cell and the model's cells).

    Example:
        >>> gen = generation_plan(augmentation_plan(ds, total=300), pipe.bundle)  # doctest: +SKIP
    """
    known = {c.to_text() for c in bundle.cells()}
    for row in plan.rows:
        if row.synthetic > 0 and row.cell.to_text() not in known:
            raise ConfigError(
                _CELL_NOT_IN_MODEL.format(
                    cell=row.cell.to_text(), m=row.synthetic, model=bundle.bundle_id, known=sorted(known)
                )
            )
    return plan.to_generation_plan(seeds)


def augment(
    pipe: Any,
    plan: AugmentPlan,
    output_dir: str | Path,
    config: Any = None,
    *,
    seeds: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> Any:
    """Generate an augmentation plan's synthetic images into a dataset folder (resumable), then write
    ``augment.json`` (the plan, plus ``provenance``) next to them — only after the folder is complete.

    Args:
        pipe: a :class:`~fairsample.generation.pipeline.FairSamplePipeline`.
        plan: :func:`augmentation_plan` output for the real dataset.
        output_dir: the synthetic dataset folder.
        config: :class:`~fairsample.core.config.SampleConfig` (default: the pipeline's).
        seeds: one seed per image (default 0, 1, 2, ...).
        overwrite, progress: as :meth:`FairSamplePipeline.generate_to_folder`.
        provenance: extra JSON-safe entries for ``augment.json`` (e.g. the data path, split, model id).

    Returns:
        The :class:`~fairsample.generation.pipeline.FolderResult` of the generation.

    Example:
        >>> plan = augmentation_plan(load_folder("demo"), total=300)  # doctest: +SKIP
        >>> augment(FairSamplePipeline(), plan, "aug/")  # doctest: +SKIP
    """
    import json
    import os

    from fairsample.core.atomic import write_atomic

    gen = generation_plan(plan, pipe.bundle, seeds)
    result = pipe.generate_to_folder(output_dir, gen, config, overwrite=overwrite, progress=progress)
    if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun only the main process writes the plan
        doc = {**dict(provenance or {}), "model": pipe.bundle.bundle_id, **plan.to_dict()}
        write_atomic(Path(output_dir) / "augment.json", json.dumps(doc, indent=2) + "\n")
    return result

"""Vanilla's minority-fidelity curve: does fine-tuning run long enough for the minority to stop improving?

The first vanilla model of a study writes a snapshot bundle every ``curve_every`` steps
(``TrainConfig.snapshot_every``). Each snapshot, the base (step 0) and the final model sample ``n`` images per cell at
one fixed setting (guidance 1.5, the profile's DDIM steps, the conditioning guard's validation seeds) and the guard's
judges (:mod:`fairsample.evaluation.conditioning`) score them: per attribute value, the fraction of samples whose
requested label and attribute value are recovered. The *plateau* is the first step from which every later point's
minority label accuracy lies within two binomial standard errors of the last point's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

#: the one sampling setting of every curve point
CURVE_GUIDANCE = 1.5


def _plateau(points: list[dict[str, Any]], key: str, n: int) -> int | None:
    """First step from which every later value is within 2 binomial SE (n samples) of the last value."""
    vals = [(p["step"], p[key]) for p in points if p.get(key) is not None]
    if len(vals) < 2:
        return None
    last = vals[-1][1]
    se = math.sqrt(max(last * (1 - last), 1.0 / n) / n)
    for i, (step, _) in enumerate(vals):
        if all(abs(v - last) <= 2 * se for _, v in vals[i:]):
            return step
    return vals[-1][0]  # pragma: no cover - the last point always qualifies


def fidelity_curve(
    model_dir: str | os.PathLike[str],
    data: Any,
    *,
    attribute: str,
    minority: str,
    base: str | os.PathLike[str] | None,
    images_per_cell: int = 16,
    steps: int = 20,
    out_png: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Minority fidelity of a model's snapshots (``model_dir/snapshots/step-*``), the base and the final model.

    Args:
        model_dir: the fine-tuned bundle folder (with ``snapshots/``).
        data: the real :class:`~fairsample.data.folder.FolderDataset` (the judges' training data and the cells).
        attribute, minority: the sensitive attribute and its minority value.
        base: the bundle the model was fine-tuned from (step 0), or None.
        images_per_cell: samples per cell and point.
        steps: DDIM steps of every sample.
        out_png: where to draw the curve (None: no plot).

    Returns:
        ``{"points": [{"step", "minority_label", "minority_attribute", "others_label", "by_group"}], "plateau",
        "setting", "images_per_cell", "judges_ceiling"}`` (accuracies in [0, 1]).

    Example:
        >>> fidelity_curve("S/cells/train/vanilla@0/model", ds, attribute="tone", minority="dark",
        ...                base="S/cells/base/base/model")  # doctest: +SKIP
    """
    from fairsample.evaluation.conditioning import (
        SamplingSetting,
        guard_cells,
        sample_and_score,
        sampling_pipeline,
        train_judges,
    )
    from fairsample.models.bundle import ModelBundle

    model_dir = Path(model_dir)
    snaps = sorted((model_dir / "snapshots").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    final = ModelBundle.load(model_dir)
    total = int(final.config.get("steps") or 0)
    sources: list[tuple[int, Path]] = []
    if base is not None:
        sources.append((0, Path(base)))
    sources += [(int(p.name.split("-")[1]), p) for p in snaps]
    sources.append((total, model_dir))
    judges = train_judges(data, size=final.image_shape[-1])
    setting = SamplingSetting(CURVE_GUIDANCE, steps=steps)
    cells = guard_cells(final, data)
    points: list[dict[str, Any]] = []
    for step, path in sources:
        bundle = final if path == model_dir else ModelBundle.load(path)
        scores = sample_and_score(sampling_pipeline(bundle), judges, cells, setting, images_per_cell=images_per_cell)
        groups = {g: v for g, v in scores.by_group.items() if g.startswith(f"{attribute}=")}
        label = scores.label
        mine = groups.get(f"{attribute}={minority}", {})
        others = [v for g, v in groups.items() if g != f"{attribute}={minority}"]
        points.append(
            {
                "step": step,
                "minority_label": mine.get(label),
                "minority_attribute": mine.get(attribute),
                "others_label": sum(v[label] for v in others) / len(others) if others else None,
                "others_attribute": sum(v[attribute] for v in others) / len(others) if others else None,
                "by_group": groups,
                "seconds": round(scores.seconds, 2),
            }
        )
    n_minority = images_per_cell * sum(1 for c in cells if c.value(attribute) == minority)
    doc = {
        "points": points,
        "plateau": _plateau(points, "minority_label", max(1, n_minority)),
        "plateau_rule": "first step from which every later minority label accuracy is within 2 binomial SE of the "
        "last point's",
        "setting": setting.to_dict(),
        "images_per_cell": images_per_cell,
        "n_minority_samples": n_minority,
        "judges_ceiling": judges.ceiling,
    }
    if out_png is not None:
        _plot(doc, Path(out_png), minority)
    return doc


def _plot(doc: dict[str, Any], path: Path, minority: str) -> None:
    from matplotlib.figure import Figure

    pts = doc["points"]
    fig = Figure(figsize=(6, 3.6), dpi=120, layout="constrained")
    ax = fig.subplots()
    steps = [p["step"] for p in pts]
    for key, text, style in (
        ("minority_label", f"label accuracy, {minority}", "-o"),
        ("others_label", "label accuracy, other groups", "--o"),
        ("minority_attribute", f"attribute accuracy, {minority}", ":s"),
    ):
        ax.plot(steps, [p[key] if p[key] is not None else float("nan") for p in pts], style, ms=3, label=text)
    if doc.get("plateau") is not None:
        ax.axvline(doc["plateau"], color="0.4", lw=0.8, ls="--", label=f"plateau at step {doc['plateau']}")
    ax.set_xlabel("fine-tuning step (0 = the shared base)")
    ax.set_ylabel("fraction recovered by the judges")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(
        f"vanilla: minority fidelity over fine-tuning ({doc['n_minority_samples']} {minority} samples/point)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)

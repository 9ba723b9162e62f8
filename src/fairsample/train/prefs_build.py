"""Automatic preference pairs — a **proxy** for physician preference (``fairsample prefs build``).

FairGen tunes on physicians' pairwise judgements (METHODS.md §3.6). Without annotators, this module builds
stand-in pairs: for every cell (attribute values × label),

1. generate N candidate images with the model
   (:meth:`~fairsample.generation.pipeline.FairSamplePipeline.generate_to_folder`
   into ``OUT/candidates``, resumable);
2. score each candidate by a classifier's confidence that it depicts the requested cell; the classifier is trained
   on the real dataset with :mod:`fairsample.evaluation.classifiers`, either one classifier over cells
   (``scorer="cell"``: p(cell | x)) or one per target (``scorer="per-target"``: p(label | x) · Π_a p(a | x));
3. pair the k-th most confident candidate (winner) with the k-th least confident one (loser), k = 1..K, dropping
   ties;
4. write ``OUT/preferences.csv`` (``file_w, file_l``, cell columns, ``conf_w, conf_l, seed_w, seed_l``) and its
   companion ``OUT/preferences.json`` with ``"source": "proxy: classifier confidence"`` — preference tuning records
   that source in the bundle it trains.

These pairs reward recognisability by a small classifier, not clinical plausibility; they are labelled as a proxy
everywhere they go.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.data.folder import FolderDataset, load_folder
from fairsample.data.preferences import PreferencePair, read_preferences, write_preferences
from fairsample.data.schema import CellKey
from fairsample.models.bundle import ModelBundle, library_versions

#: the ``source`` written to the companion JSON (and recorded by preference tuning)
PROXY_SOURCE = "proxy: classifier confidence"
PROXY_NOTE = (
    "Automatic pairs: winners and losers are the most and least confident candidates of a classifier trained on the "
    "real data. They stand in for physician preference and are not clinical judgements."
)
SCORERS: tuple[str, str] = ("cell", "per-target")

_BAD_SCORER = "`scorer` must be one of {allowed}, got {value!r}."
_BAD_INT = "`{name}` must be an integer >= {low}, got {value!r}."
_TOO_FEW_CANDIDATES = (
    "`candidates` = {n} cannot give {k} disjoint winner/loser pairs per cell (needs >= 2 x per_cell = {need}); "
    "raise --candidates or lower --per-cell."
)
_GROUPS_DIFFER = (
    "the model's groups {model} differ from the dataset's {data}; pass --group-col so the dataset's cells match the "
    "model's."
)
_CELL_NOT_IN_DATA = (
    "cell {cell} has no real images in {root}, so no classifier can score it; choose cells present in the dataset "
    "(--cells)."
)
_NO_COMMON_CELLS = "no cell of the model appears in {root}; train the model on this dataset or pass another --data."
_SKIPPED_CELLS = "{n} cell(s) of the model have no real images in {root} and get no pairs (first: {first})"
_ONE_CELL = (
    "scorer 'cell' needs at least two cells with real images in {root} (found {found}); use scorer 'per-target' "
    "or a dataset with more cells."
)


@dataclass(frozen=True)
class PrefsBuildResult:
    """What :func:`build_preferences` wrote."""

    output_dir: Path
    preferences: Path  # OUT/preferences.csv
    summary: Path  # OUT/preferences.json (companion: source, scorer, per-cell statistics)
    n_pairs: int
    n_candidates: int
    seconds: float
    doc: dict[str, Any]  # the summary document


def _key(cell: CellKey) -> tuple[tuple[tuple[str, str], ...], str]:
    """Order-independent cell identity (the model's and the dataset's groups may be listed in another order)."""
    return (tuple(sorted(cell.groups)), cell.label)


def _read_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels of an image file (closed after reading)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(_BAD_INT.format(name=name, low=low, value=value))
    return value


class _Scorer:
    """Classifier confidence that an image depicts a cell (trained on real images of the dataset)."""

    def __init__(self, kind: str, ds: FolderDataset, size: int, *, epochs: int, seed: int) -> None:
        from fairsample.evaluation.classifiers import train_classifier

        self.kind = kind
        images = np.stack([np.asarray(ds.load_image(i, size=size), dtype=np.uint8) for i in range(len(ds))])
        cells = ds.cell_ids()
        self.targets: dict[str, list[str]] = {}
        if kind == "cell":
            self.targets["cell"] = [c.to_text(ds.spec.label) for c in cells]
        else:
            self.targets[ds.spec.label] = [c.label for c in cells]
            for g in ds.spec.groups:
                self.targets[g] = [c.value(g) for c in cells]
        self.label_col = ds.spec.label
        self.models = {}
        self.accuracy: dict[str, float] = {}
        for name, ys in self.targets.items():
            if len(set(ys)) < 2:
                continue  # a target with one value carries no preference information (factor 1)
            clf = train_classifier(images, ys, epochs=epochs, seed=seed)
            self.models[name] = clf
            pred = clf.predict(images)
            self.accuracy[name] = float(np.mean([p == y for p, y in zip(pred, ys, strict=True)]))
        self.n_train = len(images)

    def confidence(self, images: np.ndarray, cells: Sequence[CellKey]) -> np.ndarray:
        """``(N,)`` confidence in [0, 1] that image k depicts ``cells[k]``."""
        out = np.ones(len(images), dtype=np.float64)
        for name, clf in self.models.items():
            proba = clf.predict_proba(images)
            index = {c: k for k, c in enumerate(clf.classes)}
            for k, cell in enumerate(cells):
                if name == "cell":
                    want = cell.to_text(self.label_col)
                elif name == self.label_col:
                    want = cell.label
                else:
                    want = cell.value(name)
                out[k] *= float(proba[k, index[want]]) if want in index else 0.0
        return out

    def describe(self, epochs: int) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "targets": list(self.models),
            "epochs": epochs,
            "train_images": self.n_train,
            "train_accuracy": {k: round(v, 4) for k, v in self.accuracy.items()},
            "model": "SmallCNN (fairsample.evaluation.classifiers) trained from scratch on the real data",
        }


def build_preferences(
    model: ModelBundle | str | os.PathLike[str],
    data: FolderDataset | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    per_cell: int = 4,
    candidates: int = 16,
    steps: int = 20,
    cells: Sequence[CellKey] | None = None,
    scorer: Literal["cell", "per-target"] = "cell",
    classifier_epochs: int = 8,
    guidance_scale: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    backend: str = "torch",
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> PrefsBuildResult:
    """Build proxy preference pairs (classifier confidence) for every cell and write ``OUT/preferences.csv``.

    Args:
        model: a :class:`~fairsample.models.bundle.ModelBundle` or a bundle folder.
        data: the real dataset (a :class:`~fairsample.data.folder.FolderDataset` or a folder) the classifier learns.
        output_dir: ``OUT``; candidates go to ``OUT/candidates`` (a generation folder, resumable).
        per_cell: K pairs per cell (fewer if confidences tie).
        candidates: N candidate images per cell; needs N >= 2K (winners and losers are disjoint).
        steps: sampling steps per candidate.
        cells: the cells to build pairs for (default: the model's cells that have real images).
        scorer: ``"cell"`` (one classifier over cells) or ``"per-target"`` (label classifier × one per attribute).
        classifier_epochs: training epochs of each classifier.
        guidance_scale, batch_size: sampling overrides (default: the bundle's sampling defaults).
        seed: classifier seed and first candidate seed (candidates use seeds ``seed, seed+1, ...``).
        backend, device: the generation engine.
        overwrite: replace ``OUT/candidates`` when it holds another generation.
        progress: progress bars on stderr.
        log: receives one-line progress messages.

    Returns:
        :class:`PrefsBuildResult`.

    Raises:
        ConfigError: invalid counts or scorer, or groups that differ between model and dataset.
        DataError: a requested cell without real images.

    Example:
        >>> build_preferences("runs/m", "demo", "prefs", per_cell=2, candidates=8)  # doctest: +SKIP
    """
    t0 = time.time()
    say = log or (lambda msg: None)
    if scorer not in SCORERS:
        raise ConfigError(_BAD_SCORER.format(allowed=list(SCORERS), value=scorer))
    per_cell = _check_int("per_cell", per_cell, 1)
    candidates = _check_int("candidates", candidates, 2)
    steps = _check_int("steps", steps, 1)
    classifier_epochs = _check_int("classifier_epochs", classifier_epochs, 1)
    if candidates < 2 * per_cell:
        raise ConfigError(_TOO_FEW_CANDIDATES.format(n=candidates, k=per_cell, need=2 * per_cell))
    bundle = model if isinstance(model, ModelBundle) else ModelBundle.load(model, device=device)
    ds = data if isinstance(data, FolderDataset) else load_folder(data)
    out = Path(output_dir)
    if sorted(bundle.groups) != sorted(ds.spec.groups):
        raise ConfigError(_GROUPS_DIFFER.format(model=bundle.groups, data=list(ds.spec.groups)))

    # 1. cells: the model's cells with real images (or the requested ones, which must have real images)
    real = {_key(c): c for c in ds.cells()}
    if cells is not None:
        chosen = list(cells)
        for c in chosen:
            if _key(c) not in real:
                raise DataError(_CELL_NOT_IN_DATA.format(cell=c.to_text(bundle.label_name), root=ds.root))
    else:
        model_cells = bundle.cells()
        chosen = [c for c in model_cells if _key(c) in real]
        skipped = [c for c in model_cells if _key(c) not in real]
        if not chosen:
            raise DataError(_NO_COMMON_CELLS.format(root=ds.root))
        if skipped:
            warnings.warn(
                _SKIPPED_CELLS.format(n=len(skipped), root=ds.root, first=skipped[0].to_text(bundle.label_name)),
                FairsampleWarning,
                stacklevel=2,
            )
    if scorer == "cell" and len(real) < 2:
        raise ConfigError(_ONE_CELL.format(root=ds.root, found=len(real)))

    # 2. the scorer, trained on the real images at the model's resolution
    size = int(bundle.image_shape[-1])
    say(f"training the {scorer} classifier on {len(ds)} real images ({size}x{size}, {classifier_epochs} epochs)")
    scoring = _Scorer(scorer, ds, size, epochs=classifier_epochs, seed=seed)

    # 3. candidates
    from fairsample.generation.pipeline import FairSamplePipeline, GenerationPlan

    pipe = FairSamplePipeline(bundle, backend=backend, device=device)
    plan = GenerationPlan.per_cell(chosen, candidates, seeds=range(seed, seed + candidates * len(chosen)))
    cfg = pipe.default_config().replace(
        steps=steps, guidance_scale=guidance_scale, batch_size=batch_size, backend=backend, device=device
    )
    say(f"generating {len(plan)} candidates ({candidates} per cell x {len(chosen)} cells) into {out / 'candidates'}")
    gen = pipe.generate_to_folder(out / "candidates", plan, cfg, overwrite=overwrite, progress=progress)
    files = [gen.output_dir / f for f in gen.files]
    pixels = np.stack([_read_rgb(f) for f in files])
    item_cells = [real[_key(it.cell)] for it in plan.items]  # the dataset's CellKey of every candidate
    conf = scoring.confidence(pixels, item_cells)

    # 4. pairs: k-th most confident (winner) with k-th least confident (loser), ties dropped
    label_col = ds.spec.label
    groups = list(ds.spec.groups)
    pairs: list[PreferencePair] = []
    extra: dict[str, list[Any]] = {"conf_w": [], "conf_l": [], "seed_w": [], "seed_l": []}
    per_cell_doc: dict[str, Any] = {}
    n_tied = 0
    for cell in chosen:
        data_cell = real[_key(cell)]
        rows = [k for k, c in enumerate(item_cells) if c == data_cell]
        order = sorted(rows, key=lambda k: (-conf[k], plan.items[k].seed))
        made = []
        for i in range(per_cell):
            w, lo = order[i], order[len(order) - 1 - i]
            if not conf[w] > conf[lo]:
                n_tied += 1
                continue
            pairs.append(PreferencePair(data_cell, files[w], files[lo]))
            extra["conf_w"].append(float(conf[w]))
            extra["conf_l"].append(float(conf[lo]))
            extra["seed_w"].append(plan.items[w].seed)
            extra["seed_l"].append(plan.items[lo].seed)
            made.append((conf[w], conf[lo]))
        per_cell_doc[data_cell.to_text(label_col)] = {
            "n_pairs": len(made),
            "mean_conf_candidates": round(float(np.mean(conf[rows])), 6),
            "mean_conf_w": round(float(np.mean([m[0] for m in made])), 6) if made else None,
            "mean_conf_l": round(float(np.mean([m[1] for m in made])), 6) if made else None,
        }

    # 5. the pair file, its companion summary, and a read-back check
    csv_path = write_preferences(out / "preferences.csv", pairs, groups=groups, label_col=label_col, extra=extra)
    read_preferences(
        csv_path,
        groups=groups,
        label_col=label_col,
        attribute_values=bundle.attribute_values,
        label_values=bundle.label_values,
    )
    doc: dict[str, Any] = {
        "source": PROXY_SOURCE,
        "note": PROXY_NOTE,
        "preferences": csv_path.name,
        "model": bundle.bundle_id,
        "data": str(ds.root),
        "scorer": scoring.describe(classifier_epochs),
        "generation": {
            "candidates_dir": "candidates",
            "candidates_per_cell": candidates,
            "seeds": [seed, seed + len(plan) - 1],
            "sample_config": cfg.to_dict(),
        },
        "per_cell": per_cell,
        "n_cells": len(chosen),
        "n_candidates": len(plan),
        "n_pairs": len(pairs),
        "n_tied_dropped": n_tied,
        "cells": per_cell_doc,
        "versions": library_versions(),
    }
    summary = out / "preferences.json"
    summary.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    say(f"wrote {len(pairs)} pairs to {csv_path} ({PROXY_SOURCE})")
    return PrefsBuildResult(out, csv_path, summary, len(pairs), len(plan), time.time() - t0, doc)

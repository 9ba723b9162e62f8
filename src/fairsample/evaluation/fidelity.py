"""Conditional fidelity: does a generated image show the cell it was asked for?

Classifiers trained on *real* images (one per target: the label and each sensitive attribute) predict the targets of
generated images; the accuracy per target is the fraction of generated images whose requested value is recovered.
The same classifiers' accuracy on held-out real images is reported as the ceiling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fairsample.core.errors import DataError
from fairsample.data.folder import FolderDataset
from fairsample.data.splits import split_indices
from fairsample.evaluation.classifiers import train_classifier

_NO_OVERLAP = "generated target {target!r} has value(s) {values} never seen in the real data; cannot score them."


def _pixels(ds: FolderDataset, rows: np.ndarray, size: int) -> np.ndarray:
    return np.stack([np.asarray(ds.load_image(int(r), size=size), np.uint8) for r in rows])


def conditional_accuracy(
    real: FolderDataset, generated: FolderDataset, *, size: int = 32, seed: int = 0, epochs: int = 8
) -> dict[str, Any]:
    """Label and attribute accuracy of generated images under classifiers trained on real images.

    Args:
        real: the real dataset (classifiers train on its train+val split; its test split gives the ceiling).
        generated: a generated folder with the same label and group columns.
        size: image side used by the classifiers.
        seed: classifier seed (and the real split seed).
        epochs: classifier epochs.

    Returns:
        ``{"targets": {name: {"generated_accuracy", "real_test_accuracy", "by_cell": {cell: acc}}},
        "n_generated", "n_real_train", "n_real_test"}`` — accuracies are fractions in [0, 1].

    Example:
        >>> conditional_accuracy(load_folder("demo"), load_folder("out"))["targets"]["label"]  # doctest: +SKIP
    """
    splits = split_indices(real, seed=seed)
    train_rows = np.concatenate([splits["train"], splits["val"]])
    test_rows = splits["test"]
    x_train, x_test = _pixels(real, train_rows, size), _pixels(real, test_rows, size)
    gen_rows = np.arange(len(generated))
    x_gen = _pixels(generated, gen_rows, size)
    gen_cells = [c.to_text(generated.spec.label) for c in generated.cell_ids()]
    out: dict[str, Any] = {
        "targets": {},
        "n_generated": len(generated),
        "n_real_train": len(train_rows),
        "n_real_test": len(test_rows),
    }
    for target in [real.spec.label, *real.spec.groups]:
        y_real = real.frame[target].to_numpy()
        clf = train_classifier(x_train, list(y_real[train_rows]), seed=seed, epochs=epochs)
        y_gen = generated.frame[target].to_numpy()
        unseen = sorted(set(y_gen) - set(clf.classes))
        if unseen:
            raise DataError(_NO_OVERLAP.format(target=target, values=unseen))
        hit = np.asarray(clf.predict(x_gen)) == y_gen
        by_cell: dict[str, list[bool]] = {}
        for c, h in zip(gen_cells, hit, strict=False):
            by_cell.setdefault(c, []).append(bool(h))
        out["targets"][target] = {
            "generated_accuracy": float(hit.mean()),
            "real_test_accuracy": float((np.asarray(clf.predict(x_test)) == y_real[test_rows]).mean()),
            "by_cell": {c: float(np.mean(v)) for c, v in sorted(by_cell.items())},
        }
    return out

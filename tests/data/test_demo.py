"""The demo dataset v2 (issue #12): the counterfactual test set pairs identical content across tones, and the main
dataset, the counterfactual set and the holdout pool never share a source digit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fairsample.data import load_folder
from fairsample.data.demo import COUNTERFACTUAL_PER_LABEL, DEMO_COUNTS, HOLDOUT_COUNTS, TONES, make_demo_dataset


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_v2") / "demo"
    make_demo_dataset(root, source="digits", seed=3)
    return root


def test_counterfactual_renders_every_content_in_every_tone(demo: Path) -> None:
    cf = load_folder(demo / "counterfactual")
    frame = cf.frame
    per_content = frame.groupby("content_id")
    assert set(per_content.size()) == {len(TONES)}
    assert all(sorted(g["tone"]) == sorted(TONES) for _, g in per_content)
    assert all(g["label"].nunique() == 1 and g["source_index"].nunique() == 1 for _, g in per_content)
    counts = frame.groupby("tone").size().to_dict()
    assert len(set(counts.values())) == 1 and set(counts) == set(TONES)


def test_parts_use_disjoint_source_digits(demo: Path) -> None:
    main = pd.read_csv(demo / "metadata.csv")
    cf = pd.read_csv(demo / "counterfactual" / "metadata.csv")
    hold = pd.read_csv(demo / "holdout" / "metadata.csv")
    a, b, c = set(main["source_index"]), set(cf["source_index"]), set(hold["source_index"])
    assert not (a & b) and not (a & c) and not (b & c)
    assert set(hold["tone"]) == set(HOLDOUT_COUNTS)
    # every folder loads as a dataset with the main data's columns
    for part in (demo, demo / "counterfactual", demo / "holdout"):
        ds = load_folder(part)
        assert ds.spec.label == "label" and ds.spec.groups == ("tone",)


def test_full_size_counts_pose_a_rare_minority() -> None:
    total = sum(sum(v.values()) for v in DEMO_COUNTS.values())
    dark = sum(DEMO_COUNTS["dark"].values())
    assert total == 1550 and dark == 80 and 0.05 < dark / total < 0.06
    assert COUNTERFACTUAL_PER_LABEL * len(DEMO_COUNTS["dark"]) == 300
    # MNIST-5k has 500 digits per label: the three parts fit in every label
    for lab in DEMO_COUNTS["dark"]:
        need = sum(DEMO_COUNTS[t][lab] for t in TONES) + COUNTERFACTUAL_PER_LABEL
        need += sum(HOLDOUT_COUNTS[t][lab] for t in HOLDOUT_COUNTS)
        assert need <= 500, lab

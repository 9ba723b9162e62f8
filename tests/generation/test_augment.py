"""Augmentation plans (METHODS.md §3.7): water-filling, proportions with largest remainder, exact totals, errors,
and `fairsample augment` end to end on a tiny real folder with the embedded model."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from fairsample.cli import app
from fairsample.core.errors import ConfigError
from fairsample.data import DatasetSpec, FolderDataset
from fairsample.data.schema import CellKey
from fairsample.generation.augment import (
    _BAD_TOTAL,
    _SHARE_SUM,
    _TARGET_KEYS,
    _UNREACHABLE,
    augmentation_plan,
    parse_target,
    water_fill,
)


def cell(tone: str, label: str) -> CellKey:
    return CellKey((("tone", tone),), label)


def table(plan) -> dict[str, tuple[int, int, int]]:
    return {str(r.cell): (r.real, r.synthetic, r.merged) for r in plan.rows}


def frame_dataset(counts: dict[tuple[str, str], int]) -> FolderDataset:
    rows = [(f"{t}{lab}_{i}.png", lab, t) for (t, lab), n in counts.items() for i in range(n)]
    frame = pd.DataFrame(rows, columns=["file_name", "label", "tone"])
    return FolderDataset(".", DatasetSpec(groups=("tone",)), frame)


# -- balanced: water-filling ---------------------------------------------------------------------------------------
def test_water_fill_raises_the_smallest_cells_first():
    # level 5 costs 5 + 1 + 1 = 7 <= 9, level 6 would cost 10; the 2 leftovers go to the first cells at level 5
    assert water_fill([10, 0, 4, 4], 9) == [0, 6, 2, 1]
    assert water_fill([3, 3, 3], 4) == [2, 1, 1]
    assert water_fill([0, 0], 5) == [3, 2]
    assert water_fill([7, 1], 2) == [0, 2]


def test_balanced_plan_on_a_count_table_includes_empty_cells():
    ds = frame_dataset({("light", "0"): 6, ("light", "1"): 3, ("dark", "0"): 1})  # dark,1 has no real image
    plan = augmentation_plan(ds, total=8)
    # level 4: dark0 +3, dark1 +4, light1 +1 = 8 exactly; light0 (6) is above the level and gets nothing
    assert table(plan) == {
        "tone=dark,label=0": (1, 3, 4),
        "tone=dark,label=1": (0, 4, 4),
        "tone=light,label=0": (6, 0, 6),
        "tone=light,label=1": (3, 1, 4),
    }
    assert plan.total == 8 and plan.n_real == 10 and plan.n_merged == 18
    assert plan.rows[0].share == pytest.approx(4 / 18)
    assert plan.attribute == "tone" and plan.target == "balanced"
    by_value = {d["value"]: (d["real"], d["synthetic"], d["merged"]) for d in plan.by_value()}
    assert by_value == {"dark": (1, 7, 8), "light": (9, 1, 10)}


def test_balanced_ties_go_to_the_first_cells_in_cell_order():
    real = {cell("light", "0"): 2, cell("dark", "1"): 2, cell("dark", "0"): 2}
    plan = augmentation_plan(real, total=4)
    # all three reach level 3 (cost 3); the one leftover goes to the first cell in natural order: dark,0
    assert [(str(r.cell), r.synthetic) for r in plan.rows] == [
        ("tone=dark,label=0", 2),
        ("tone=dark,label=1", 1),
        ("tone=light,label=0", 1),
    ]


# -- proportions: largest remainder --------------------------------------------------------------------------------
def test_fairskin_proportions_without_real_data():
    real = {cell(t, lab): 0 for t in ("light", "medium", "dark") for lab in "01234"}
    plan = augmentation_plan(real, target={"light": 0.3, "medium": 0.2, "dark": 0.5}, total=7500)
    # FairSkin: 7,500 = 2,250 : 1,500 : 3,750, equal counts per disease within a race
    per_value = {d["value"]: d["synthetic"] for d in plan.by_value()}
    assert per_value == {"dark": 3750, "light": 2250, "medium": 1500}
    assert {r.synthetic for r in plan.rows if r.cell.value("tone") == "dark"} == {750}
    assert {r.synthetic for r in plan.rows if r.cell.value("tone") == "medium"} == {300}


def test_largest_remainder_keeps_the_total_exact():
    real = {cell(t, lab): 0 for t in ("light", "medium", "dark") for lab in "01"}
    plan = augmentation_plan(real, target={"light": 0.3, "medium": 0.2, "dark": 0.5}, total=7)
    # exact 2.1 : 1.4 : 3.5 → floors 2 : 1 : 3 (FairGen's floor division stops at 6); the 7th goes to dark (.5)
    assert {d["value"]: d["synthetic"] for d in plan.by_value()} == {"dark": 4, "light": 2, "medium": 1}
    assert sum(r.synthetic for r in plan.rows) == 7
    # within a value, the remainder goes to the first label
    assert table(plan)["tone=medium,label=0"] == (0, 1, 1) and table(plan)["tone=medium,label=1"] == (0, 0, 0)


def test_proportions_with_real_data_and_remainder_ties():
    real = {cell("light", "0"): 4, cell("medium", "0"): 1, cell("dark", "0"): 0}
    third = {"light": 1 / 3, "medium": 1 / 3, "dark": 1 / 3}  # 0.333…3 each; normalised to exactly 1/3
    plan = augmentation_plan(real, target=third, total=8)
    # N = 13: exact m = 13/3 - (0, 4, 1) = 4.33, 0.33, 3.33 → floors 4, 0, 3 (= 7); three equal remainders → the
    # first value in natural order (dark) gets the 8th image
    assert table(plan) == {
        "tone=dark,label=0": (0, 5, 5),
        "tone=light,label=0": (4, 0, 4),
        "tone=medium,label=0": (1, 3, 4),
    }


def test_within_fill_equalises_merged_labels_and_equal_splits_synthetic():
    ds = frame_dataset({("dark", "0"): 3, ("light", "0"): 5, ("light", "1"): 5})
    target = {"dark": 0.5, "light": 0.5}
    fill = augmentation_plan(ds, target=target, total=7)  # N = 20: dark needs 10 - 3 = 7, light 0
    assert table(fill)["tone=dark,label=0"] == (3, 2, 5) and table(fill)["tone=dark,label=1"] == (0, 5, 5)
    equal = augmentation_plan(ds, target=target, total=7, within="equal")
    assert table(equal)["tone=dark,label=0"] == (3, 4, 7) and table(equal)["tone=dark,label=1"] == (0, 3, 3)
    for plan in (fill, equal):
        assert {d["value"]: d["share"] for d in plan.by_value()} == {"dark": 0.5, "light": 0.5}


def test_totals_are_always_exact():
    rng = np.random.default_rng(0)
    for _ in range(60):
        counts = rng.integers(0, 40, size=6).tolist()
        keys = [(t, lab) for t in ("a", "b", "c") for lab in "01"]
        real = {cell(t, lab): n for (t, lab), n in zip(keys, counts, strict=True)}
        total = int(rng.integers(1, 200))
        plan = augmentation_plan(real, total=total)
        m = [r.synthetic for r in plan.rows]
        assert sum(m) == total and min(m) >= 0
        filled = [r.merged for r in plan.rows if r.synthetic > 0]
        assert max(filled) - min(filled) <= 1 and max(filled) - 1 <= min(r.merged for r in plan.rows)
        shares = rng.dirichlet(np.ones(3)).round(3)
        shares[-1] = round(1 - shares[:-1].sum(), 3)
        if shares.min() <= 0:
            continue
        target = dict(zip("abc", shares.tolist(), strict=True))
        try:
            prop = augmentation_plan(real, target=target, total=total)
        except ConfigError as err:
            assert "unreachable" in str(err)
            continue
        assert sum(r.synthetic for r in prop.rows) == total
        n = prop.n_merged
        for d in prop.by_value():  # within one image of the exact merged count
            assert abs(d["merged"] - target[d["value"]] * n) < 1 + 1e-9


def test_generation_plan_has_the_planned_counts_and_deterministic_seeds():
    ds = frame_dataset({("light", "0"): 6, ("light", "1"): 3, ("dark", "0"): 1})
    plan = augmentation_plan(ds, total=8)
    gen = plan.to_generation_plan()
    assert {str(c): n for c, n in gen.counts().items()} == {
        "tone=dark,label=0": 3,
        "tone=dark,label=1": 4,
        "tone=light,label=1": 1,
    }
    assert [it.seed for it in gen.items] == list(range(8))
    assert gen.digest() == plan.to_generation_plan().digest()
    assert [it.seed for it in plan.to_generation_plan(seeds=range(100, 108)).items] == list(range(100, 108))


# -- errors --------------------------------------------------------------------------------------------------------
def test_unreachable_share_names_the_share_and_the_minimum_total():
    real = {cell("light", "0"): 4, cell("medium", "0"): 1, cell("dark", "0"): 0}
    third = {"light": 1 / 3, "medium": 1 / 3, "dark": 1 / 3}
    # light needs N >= 3 · 4 = 12, i.e. total >= 7; with total 5, N = 10
    msg = _UNREACHABLE.format(
        attribute="tone", value="light", share=1 / 3, total=5, real=4, merged=10, have=0.4, need=7
    )
    with pytest.raises(ConfigError, match=re.escape(msg)):
        augmentation_plan(real, target=third, total=5)
    assert "\n" not in msg and "--total >= 7" in msg
    assert augmentation_plan(real, target=third, total=7).total == 7  # the minimum works


def test_bad_arguments():
    real = {cell("light", "0"): 1, cell("dark", "0"): 1}
    with pytest.raises(ConfigError, match=re.escape(_BAD_TOTAL.format(value=0))):
        augmentation_plan(real, total=0)
    msg = _TARGET_KEYS.format(attribute="tone", missing=["dark"], unknown=["pink"], known=["dark", "light"])
    with pytest.raises(ConfigError, match=re.escape(msg)):
        augmentation_plan(real, target={"light": 0.5, "pink": 0.5}, total=3)
    with pytest.raises(ConfigError, match=re.escape(_SHARE_SUM.format(total=0.9, shares="light=0.5, dark=0.4"))):
        augmentation_plan(real, target={"light": 0.5, "dark": 0.4}, total=3)
    with pytest.raises(ConfigError, match="share tone=dark must be a number in"):
        augmentation_plan(real, target={"light": 1.0, "dark": 0.0}, total=3)
    with pytest.raises(ConfigError, match="is not a group column"):
        augmentation_plan(real, target="balanced", total=3, attribute="sex")
    with pytest.raises(ConfigError, match="must be 'balanced' or shares"):
        augmentation_plan(real, target="uniform", total=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`cells` is empty"):
        augmentation_plan({}, total=3)
    assert parse_target("proportions:light=0.3,dark=0.7") == {"light": 0.3, "dark": 0.7}
    with pytest.raises(ConfigError, match="proportions:VALUE=SHARE"):
        parse_target("light=0.3")


# -- CLI -----------------------------------------------------------------------------------------------------------
#: every tone has two labels (no single-class warnings); dark,2 and medium,2 have no real image
REAL = {
    ("light", "0"): 3,
    ("light", "1"): 2,
    ("light", "2"): 1,
    ("medium", "0"): 1,
    ("medium", "1"): 1,
    ("dark", "0"): 1,
    ("dark", "1"): 1,
}


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    """A tiny real folder in the demo's layout (tone × label, 32×32 PNGs)."""
    root = tmp_path_factory.mktemp("aug") / "real"
    (root / "images").mkdir(parents=True)
    rows = []
    for (tone, label), n in REAL.items():
        for i in range(n):
            name = f"images/{tone}{label}_{i}.png"
            Image.new("RGB", (32, 32), (40 * i, 90, 150)).save(root / name)
            rows.append({"file_name": name, "tone": tone, "label": label})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    (root / "fairsample.toml").write_text('label = "label"\ngroups = ["tone"]\nmin_group_size = 1\n')
    return root


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_dry_run_prints_only_the_plan(real_dir, tmp_path):
    out = tmp_path / "aug"
    res = _invoke("augment", real_dir, "--total", "6", "--split", "all", "-o", out, "--dry-run")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].endswith("(all split: 10 real images) + 6 synthetic, target balanced")
    assert lines[1].split() == ["cell", "real", "synthetic", "merged", "share"]
    # level 1 costs 2 (dark,2 and medium,2), level 2 would cost 9; the 4 leftovers go to the first cells at level 1
    assert [ln.split()[:4] for ln in lines[2:11]] == [
        ["tone=dark,label=0", "1", "1", "2"],
        ["tone=dark,label=1", "1", "1", "2"],
        ["tone=dark,label=2", "0", "2", "2"],
        ["tone=light,label=0", "3", "0", "3"],
        ["tone=light,label=1", "2", "0", "2"],
        ["tone=light,label=2", "1", "1", "2"],
        ["tone=medium,label=0", "1", "0", "1"],
        ["tone=medium,label=1", "1", "0", "1"],
        ["tone=medium,label=2", "0", "1", "1"],
    ]
    assert lines[-1].split() == ["total", "10", "6", "16", "1.000"]
    assert res.stderr == "" and not out.exists()

    res = _invoke(
        "augment",
        real_dir,
        "--total",
        "9",
        "--split",
        "all",
        "-o",
        out,
        "--dry-run",
        "--format",
        "json",
        "--target",
        "proportions:light=0.4,medium=0.3,dark=0.3",
    )
    doc = json.loads(res.stdout)
    assert doc["total"] == 9 and doc["n_merged"] == 19 and not out.exists()
    # N = 19: exact m = 5.7 - 2, 7.6 - 6, 5.7 - 2 = 3.7, 1.6, 3.7 → floors 3, 1, 3; the remainders .7 beat .6
    assert {d["value"]: d["synthetic"] for d in doc["by_value"]} == {"dark": 4, "light": 1, "medium": 4}


def test_unreachable_target_is_one_line_exit_1(real_dir, tmp_path):
    res = _invoke(
        "augment",
        real_dir,
        "--total",
        "1",
        "--split",
        "all",
        "-o",
        tmp_path / "x",
        "--dry-run",
        "--target",
        "proportions:light=0.2,medium=0.4,dark=0.4",
    )
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "tone=light of 0.2 is unreachable" in res.stderr
    assert "--total >= 20" in res.stderr  # light has 6 real images: N >= 30, minus 10 real


def test_augment_generates_the_planned_counts(real_dir, tmp_path):
    out = tmp_path / "aug"
    args = [
        "augment",
        real_dir,
        "--total",
        "6",
        "--split",
        "all",
        "-o",
        out,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--format",
        "json",
    ]
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    planned = {c["cell"]: c["synthetic"] for c in doc["plan"]["cells"] if c["synthetic"]}
    assert planned == {
        "tone=dark,label=0": 1,
        "tone=dark,label=1": 1,
        "tone=dark,label=2": 2,
        "tone=light,label=2": 1,
        "tone=medium,label=2": 1,
    }
    with (out / "metadata.csv").open() as fh:
        synth = Counter(f"tone={r['tone']},label={r['label']}" for r in csv.DictReader(fh))
    assert dict(synth) == planned and len(list((out / "images").glob("*.png"))) == 6
    real = Counter(f"tone={t},label={lab}" for (t, lab), n in REAL.items() for _ in range(n))
    merged = {c["cell"]: c["merged"] for c in doc["plan"]["cells"]}
    assert {k: real[k] + synth[k] for k in merged} == merged
    assert json.loads((out / "augment.json").read_text())["cells"] == doc["plan"]["cells"]
    # re-running the same command generates nothing and leaves the folder complete
    again = json.loads(_invoke(*args).stdout)
    assert again["n_generated"] == 0 and json.loads((out / "config.json").read_text())["complete"] is True


def test_sdk_augment_writes_the_plan_after_the_images(demo_dir, tmp_path):
    from fairsample.data.folder import load_folder
    from fairsample.generation.augment import augment, generation_plan
    from fairsample.generation.pipeline import FairSamplePipeline

    ds = load_folder(demo_dir)
    pipe = FairSamplePipeline()
    plan = augmentation_plan(ds, total=6)
    cfg = pipe.default_config().replace(steps=2)
    result = augment(pipe, plan, tmp_path / "aug", cfg, progress=False, provenance={"data": "demo"})
    assert result.n_images == 6 and len(list((tmp_path / "aug" / "images").glob("*.png"))) == 6
    doc = json.loads((tmp_path / "aug" / "augment.json").read_text())
    assert doc["data"] == "demo" and doc["total"] == 6 and doc["model"] == pipe.bundle.bundle_id
    counts = {str(c): n for c, n in generation_plan(plan, pipe.bundle).counts().items()}
    assert counts == {r.cell.to_text(): r.synthetic for r in plan.rows if r.synthetic}
    unknown = augmentation_plan(frame_dataset({("violet", "0"): 1, ("light", "0"): 5}), total=4)
    with pytest.raises(ConfigError, match=r"the plan needs cell tone=violet,label=0 \(\d images\), which model"):
        generation_plan(unknown, pipe.bundle)

"""`fairsample tune-perturbation`: θ = 0 first, Sobol design, GP-UCB proposals, per-group KID reward, paired held-out
guard, perturbation.json."""

from __future__ import annotations

import json

import pytest

from fairsample.data.folder import load_folder
from fairsample.data.splits import split_indices
from fairsample.samplers.perturbed import Perturbation

from .conftest import invoke, run_cli


def test_tune_perturbation_writes_a_loadable_file(runner, demo_dir, tmp_path):
    out = tmp_path / "perturbation.json"
    res = invoke(
        runner,
        "tune-perturbation",
        "--data",
        demo_dir,
        "--attribute",
        "tone",
        "--n-eval",
        "3",
        "--iterations",
        "1",
        "--steps",
        "2",
        "--held-out-sets",
        "2",
        "--output",
        out,
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["output"] == str(out) and doc["kept"] in ("zero", "theta_star") and doc["reason"]
    pert = Perturbation.load(out)
    meta = pert.meta
    assert meta["method_status"] == "project-extension" and meta["objective"] == "kid_gap"
    assert meta["reference"] == "per group: validation split" and meta["reason"] == doc["reason"]
    trace = meta["trace"]
    assert [t["kind"] for t in trace] == ["zero"] + ["sobol"] * 6 + ["ucb"]  # d = 2 x 3 tones
    assert set(trace[0]["guidance"].values()) == {0.0} and set(trace[0]["temperature"].values()) == {0.0}
    lo, hi = meta["bounds"]["temperature"]
    assert all(lo <= v <= hi for t in trace for v in t["temperature"].values())
    # the reward is per-group only: -(mean_g KID_g + λ·range_g KID_g), no pooled (overall) KID
    for t in trace:
        kids = list(t["kid_by_group"].values())
        assert sorted(t["kid_by_group"]) == ["dark", "light", "medium"] and "kid_overall" not in t
        assert t["reward"] == pytest.approx(-(sum(kids) / 3 + (max(kids) - min(kids))))
    # a group with < 20 validation images (dark) is topped up with train images the features never see
    split = split_indices(load_folder(demo_dir), seed=0)
    tone = load_folder(demo_dir).frame["tone"].to_numpy()
    sizes = meta["reference_sizes"]
    for g in ("dark", "light", "medium"):
        n_val, n_train = int((tone[split["val"]] == g).sum()), int((tone[split["train"]] == g).sum())
        assert sizes[g] == {"val": n_val, "train_held_out": min(max(0, 20 - n_val), n_train // 2)}
    assert sizes["dark"]["train_held_out"] > 0
    assert meta["feature_train_images"] == len(split["train"]) - sum(v["train_held_out"] for v in sizes.values())
    held = meta["held_out"]
    assert held["decision"] == doc["kept"] and held["reason"] == doc["reason"]
    if doc["kept"] == "zero":
        assert pert.is_zero()
    if held["evaluated"]:  # θ* ≠ 0: two paired held-out seed sets, disjoint from the search seeds
        assert held["sets"] == 2 and len(held["zero"]) == len(held["theta_star"]) == len(held["differences"]) == 2
        assert held["differences"] == pytest.approx(
            [s - z for s, z in zip(held["theta_star"], held["zero"], strict=True)]
        )
        assert meta["search_seeds"][1] < held["seed_sets"][0][0]
    else:
        assert "search found no offset better than zero" in doc["reason"] and doc["kept"] == "zero"


def test_embedded_model_needs_output(demo_dir):
    # the tau / tune-perturbation family's one real subprocess run: console entry point, usage error, exit code 2
    proc = run_cli("tune-perturbation", "--data", demo_dir, "--attribute", "tone")
    text = " ".join(proc.stderr.replace("│", " ").split())
    assert proc.returncode == 2 and "the embedded model is read-only: pass --output PATH" in text

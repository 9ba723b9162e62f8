"""`fairsample prefs build`: proxy preference pairs (classifier confidence) from a tiny model."""

from __future__ import annotations

import csv
import json

from fairsample.train.prefs_build import PROXY_SOURCE

from .conftest import invoke, run_cli


def test_prefs_build_writes_ranked_pairs(tiny_model, demo_dir, tmp_path):
    out = tmp_path / "prefs"
    # the prefs family's one real subprocess run: console entry point, stdout holds exactly one JSON document
    res = run_cli(
        "prefs",
        "build",
        "--model",
        tiny_model,
        "--data",
        demo_dir,
        "--output-dir",
        out,
        "--per-cell",
        "2",
        "--candidates",
        "4",
        "--steps",
        "2",
        "--classifier-epochs",
        "1",
        "--format",
        "json",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["source"] == PROXY_SOURCE and doc["n_candidates"] == 15 * 4
    with (out / "preferences.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:4] == ["file_w", "file_l", "tone", "label"]
    assert {"conf_w", "conf_l", "seed_w", "seed_l"} <= set(rows[0])
    assert len(rows) == doc["n_pairs"] and 15 <= len(rows) <= 30
    for r in rows:
        assert (out / r["file_w"]).is_file() and (out / r["file_l"]).is_file() and r["file_w"] != r["file_l"]
        assert float(r["conf_w"]) > float(r["conf_l"])
    # winners and losers come from the candidates of their own cell
    with (out / "candidates" / "metadata.csv").open(newline="") as fh:
        meta = {r["file_name"]: (r["tone"], r["label"]) for r in csv.DictReader(fh)}
    assert all(meta[r["file_w"].removeprefix("candidates/")] == (r["tone"], r["label"]) for r in rows)
    summary = json.loads((out / "preferences.json").read_text())
    assert summary["source"] == PROXY_SOURCE and "physician" in summary["note"]
    assert summary["scorer"]["kind"] == "cell" and summary["n_pairs"] == len(rows)


def test_prefs_build_help_and_usage_errors(runner, tiny_model, demo_dir, tmp_path):
    help_text = invoke(runner, "prefs", "build", "--help").stdout
    assert "proxy: classifier confidence" in " ".join(help_text.split())
    bad = invoke(
        runner,
        "prefs",
        "build",
        "--model",
        tiny_model,
        "--data",
        demo_dir,
        "--output-dir",
        tmp_path,
        "--per-cell",
        "3",
        "--candidates",
        "4",
    )
    assert bad.exit_code == 2 and "--candidates" in bad.stderr


def test_train_fairgen_without_pairs_or_init_from_fails_in_one_line(runner, demo_dir, tmp_path):
    res = invoke(runner, "train", demo_dir, "--method", "fairgen", "--output-dir", tmp_path / "m", "--dry-run")
    assert res.exit_code == 1 and res.stdout == ""
    line = res.stderr.strip()
    assert "\n" not in line and "`preferences`" in line and "--init-from BUNDLE" in line and "prefs build" in line
    assert not (tmp_path / "m").exists()

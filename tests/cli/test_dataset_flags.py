"""One way to describe a dataset (issue 13, item 6): a folder with its own column names and no fairsample.toml goes
through `data check → train → generate → evaluate` with the shared flags alone; `--patient-col` gives a
patient-grouped split; every dataset-reading command lists the same five options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairsample.cli.dataset import DATASET_FLAGS, DatasetOptions
from fairsample.data.splits import split_indices

from .conftest import TINY_TRAIN, invoke

#: `--label-col finding --group-col sex --patient-col pid`: the folder's own names
FLAGS = ["--label-col", "finding", "--group-col", "sex", "--patient-col", "pid"]
#: every command that reads a dataset folder
DATASET_COMMANDS = [
    ["data", "check"],
    ["train"],
    ["evaluate"],
    ["augment"],
    ["prefs", "build"],
    ["study"],
    ["tune-perturbation"],
]


@pytest.fixture(scope="module")
def own_dir(demo_dir, tmp_path_factory) -> Path:
    """40 demo digits relabelled: finding normal/effusion, sex F/M, 2-3 images per patient (pid), across findings."""
    meta = pd.read_csv(demo_dir / "metadata.csv", dtype=str)
    rows = meta[meta["label"].isin(["0", "1"]) & meta["tone"].isin(["light", "medium"])]
    rows = rows.groupby(["tone", "label"]).head(10).sort_values(["tone", "file_name"]).reset_index(drop=True)
    root = tmp_path_factory.mktemp("own") / "study"
    (root / "pictures").mkdir(parents=True)
    out = []
    for k, r in rows.iterrows():
        name = f"pictures/{k:03d}.png"
        shutil.copy(demo_dir / r["file_name"], root / name)
        sex = "F" if r["tone"] == "light" else "M"
        out.append(
            {
                "file_name": name,
                "finding": "effusion" if r["label"] == "1" else "normal",
                "sex": sex,
                "pid": f"{sex}{k % 8}",
            }
        )
    pd.DataFrame(out).to_csv(root / "metadata.csv", index=False)
    assert not (root / "fairsample.toml").exists()
    return root


def test_own_columns_check_train_generate_evaluate(runner, own_dir, tmp_path):
    res = invoke(runner, "data", "check", own_dir, *FLAGS, "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["n_images"] == 40

    model = tmp_path / "m"
    res = invoke(
        runner,
        "train",
        own_dir,
        "--output-dir",
        model,
        "--method",
        "cbrs",
        "--max-steps",
        "2",
        *TINY_TRAIN,
        "--no-guard",
        *FLAGS,
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    bundle_cfg = json.loads((model / "fairsample_config.json").read_text())
    assert bundle_cfg["label"] == "finding" and bundle_cfg["groups"] == ["sex"]
    assert bundle_cfg["dataset"]["spec"]["patient_col"] == "pid"  # trained on the patient-grouped train split
    grouped = DatasetOptions("finding", ("sex",), "pid").load(own_dir)
    assert bundle_cfg["dataset"]["n_train"] == len(split_indices(grouped, seed=0)["train"])

    gen = tmp_path / "g"
    res = invoke(
        runner,
        "generate",
        "--model",
        model,
        "--output-dir",
        gen,
        "--per-cell",
        "3",
        "--steps",
        "2",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    assert (gen / "metadata.csv").read_text().splitlines()[0].startswith("file_name,sex,finding")

    report = tmp_path / "report"
    fast = [
        "--size",
        "16",
        "--epochs",
        "1",
        "--seeds",
        "0-1",
        "--allow-few-seeds",
        "--k",
        "2",
        "--n-resamples",
        "5",
        "--feature-epochs",
        "2",
        "--closure-resamples",
        "300",
    ]
    res = invoke(
        runner,
        "evaluate",
        "--real",
        own_dir,
        "--synthetic",
        f"fair={gen}",
        "--output-dir",
        report,
        *FLAGS,
        *fast,
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["headline"]["attribute"] == "sex"
    # the report names the method that made the set; reference / project-extension is its own column
    full = json.loads(Path(doc["files"]["json"]).read_text())
    assert full["data"]["sets"]["fair"]["generator"]["method"] == ["cbrs"]
    markdown = Path(doc["files"]["markdown"]).read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| Set "))
    assert header.rstrip(" |").endswith("| Method | Sampler | Status")
    row = next(line for line in markdown.splitlines() if line.startswith("| fair "))
    assert row.rstrip(" |").endswith("| cbrs | conditional | reference")


def test_without_flags_the_folder_is_not_understood(runner, own_dir):
    res = invoke(runner, "evaluate", "--real", own_dir, "--synthetic", own_dir, "--output-dir", own_dir / "x")
    assert res.exit_code == 1 and "--group-col" in res.stderr  # a flag evaluate has
    help_text = invoke(runner, "evaluate", "--help").stdout
    assert "--group-col" in help_text


def test_patient_col_gives_a_patient_grouped_split(own_dir):
    grouped = DatasetOptions("finding", ("sex",), "pid").load(own_dir)
    parts = split_indices(grouped, seed=0)
    pids = grouped.frame["pid"].to_numpy()
    seen = [set(pids[parts[k]]) for k in ("train", "val", "test")]
    assert all(len(s) for s in seen)
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    # without --patient-col the same folder splits patients across splits (so the check above means something)
    plain = DatasetOptions("finding", ("sex",)).load(own_dir)
    parts = split_indices(plain, seed=0)
    seen = [set(pids[parts[k]]) for k in ("train", "val", "test")]
    assert seen[0] & (seen[1] | seen[2])
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(40))


def test_missing_patient_column_names_the_flag(runner, own_dir):
    res = invoke(
        runner, "data", "check", own_dir, "--label-col", "finding", "--group-col", "sex", "--patient-col", "nope"
    )
    assert res.exit_code == 1 and "'nope'" in res.stderr and "--patient-col" in res.stderr


@pytest.mark.parametrize("command", DATASET_COMMANDS, ids=" ".join)
def test_every_dataset_command_lists_the_five_options(runner, command):
    res = runner.invoke(__import__("fairsample.cli", fromlist=["app"]).app, [*command, "--help"], terminal_width=80)
    assert res.exit_code == 0
    for flag in DATASET_FLAGS:
        assert flag in res.stdout, (command, flag)


@pytest.mark.parametrize(
    "command",
    [["train", "DATA", "-o", "x"], ["data", "check", "DATA"], ["augment", "DATA", "--total", "3", "-o", "x"]],
)
def test_missing_folder_says_does_not_exist(runner, tmp_path, command):
    args = [str(tmp_path / "nope") if a == "DATA" else a for a in command]
    res = invoke(runner, *args)
    assert res.exit_code == 1 and "does not exist" in res.stderr and "Traceback" not in res.stderr

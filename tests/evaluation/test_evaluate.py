"""The one-call evaluation (issues #4, #12): result structure and aggregation, generator replicates, the
counterfactual view, the oracle row, minority gaps and gap closure, the saved report (every Markdown number is in
report.json, self-contained HTML, valid PNGs), and the one-line input errors raised before any training."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fairsample.evaluation.evaluate as ev
import fairsample.evaluation.heldout as ho
import fairsample.evaluation.inputs as inp
from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.data import DatasetSpec, FolderDataset, load_folder, split_indices
from fairsample.evaluation.aggregate import _BAD_SEEDS, _FEW_SEEDS
from fairsample.evaluation.closure import gap_closure, gap_difference
from fairsample.evaluation.evaluate import FAIRNESS_METRICS, evaluate
from fairsample.evaluation.fairness_report import FairnessReport, fairness_report
from fairsample.evaluation.report_render import fmt_fraction, fmt_number
from fairsample.evaluation.rows import ORACLE_LABEL

#: tiny settings: 16-px images, 2 epochs, 2 seeds x 2 generator replicates, few draws and resamples
FAST = {
    "size": 16,
    "epochs": 2,
    "seeds": (0, 1),
    "allow_few_seeds": True,
    "k": 2,
    "n_resamples": 5,
    "feature_epochs": 2,
    "ber_epochs": 2,
    "grid_per_cell": 3,
    "closure_resamples": 400,
}


def _pattern(template: str) -> str:
    """A message template as a regex: literal text escaped, every ``{placeholder}`` matching anything."""
    return ".*".join(
        re.escape(part) for part in re.split(r"\{[^}]*\}", template.replace("{{", "{").replace("}}", "}"))
    )


def _per_cell(ds: FolderDataset, n: int, *, last: bool = False) -> np.ndarray:
    """Up to ``n`` rows of every cell (first or last ones), in row order."""
    keys = pd.Series([str(c) for c in ds.cell_ids()])
    picked = keys.groupby(keys).tail(n) if last else keys.groupby(keys).head(n)
    return np.sort(picked.index.to_numpy())


# ---------------------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> FolderDataset:
    """The digits tone demo (547 images, 15 cells; with counterfactual/ and holdout/) with a second attribute `site`
    that is not a spec group."""
    from fairsample.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("evaluate") / "demo"
    make_demo_dataset(root, source="digits", seed=0)
    ds = load_folder(root)
    frame = ds.frame.copy()
    frame["site"] = np.where(np.arange(len(frame)) % 2 == 0, "A", "B")
    return FolderDataset(ds.root, ds.spec, frame)


@pytest.fixture(scope="module")
def sets(demo) -> dict[str, list[FolderDataset]]:
    """One 'synthetic' name with two generator replicates cut from the real data: 4 and 3 images per cell."""
    return {"vanilla": [demo.subset(_per_cell(demo, 4)), demo.subset(_per_cell(demo, 3, last=True))]}


@pytest.fixture(scope="module")
def oracle(demo) -> FolderDataset:
    """The demo's holdout/ pool (real held-out dark and medium images) with the `site` column."""
    hold = load_folder(demo.root / "holdout")
    frame = hold.frame.assign(site=np.where(np.arange(len(hold)) % 2 == 0, "A", "B"))
    return FolderDataset(hold.root, hold.spec, frame)


@pytest.fixture(scope="module")
def evaluation(demo, sets, oracle):
    """The evaluation and every run_protocol output it used (base, oracle, vanilla#1, vanilla#2), recorded."""
    import fairsample.evaluation.downstream as downstream

    runs: list[dict] = []
    original = downstream.run_protocol

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        runs.append(out)
        return out

    lines: list[str] = []
    patch = pytest.MonkeyPatch()
    patch.setattr(downstream, "run_protocol", recording)
    try:
        with pytest.warns(FairsampleWarning) as record:
            res = evaluate(
                demo,
                sets,
                attribute=("tone", "site"),
                counterfactual=demo.root / "counterfactual",
                oracle=oracle,
                progress=lines.append,
                **FAST,
            )
    finally:
        patch.undo()
    assert any("below 2 x the feature dimension" in str(w.message) for w in record)
    assert len(record) == len(res.report["warnings"])  # each collected warning is re-issued once
    assert lines and all(isinstance(line, str) for line in lines)
    return res, runs


@pytest.fixture(scope="module")
def result(evaluation):
    return evaluation[0]


@pytest.fixture(scope="module")
def saved(result, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("evaluate") / "report"
    files = result.save(out)
    assert files["output_dir"] == str(out.absolute())
    return out, files


# ---------------------------------------------------------------------------------------------------- structure


def test_document_sections_and_settings(result, demo, sets, oracle):
    doc = result.to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["schema"] == ev.SCHEMA
    st = doc["settings"]
    assert st["attributes"] == ["tone", "site"] and st["seeds"] == [0, 1] and st["epochs"] == 2
    assert st["protocols"] == ["real_only", "real_plus_synthetic"] and st["size"] == 16
    assert st["counterfactual"] == str(demo.root / "counterfactual") and st["oracle"] == str(demo.root / "holdout")
    assert st["closure_resamples"] == 400 and st["minority"] is None and st["reference"] is None
    assert {"fairsample", "torch", "torchmetrics", "fairlearn", "scikit-learn", "matplotlib"} <= set(doc["versions"])
    assert doc["data"]["real"]["n"] == len(demo)
    data = doc["data"]
    assert data["replicates"] == {"vanilla": ["vanilla#1", "vanilla#2"]}
    assert {i: (d["name"], d["replicate"], d["n"]) for i, d in data["sets"].items()} == {
        "vanilla#1": ("vanilla", 1, len(sets["vanilla"][0])),
        "vanilla#2": ("vanilla", 2, len(sets["vanilla"][1])),
    }
    cf = data["counterfactual"]
    assert cf["n"] == 315 and cf["n_content"] == 105 and cf["attributes"] == ["tone"]
    assert cf["by_attribute"] == {"tone": {"tone=dark": 105, "tone=light": 105, "tone=medium": 105}}
    assert cf["pairing"]["tone"]["paired"] and cf["overlap"] == {"bytes": 0, "first": None, "content_id": None}
    assert data["oracle"]["n"] == len(oracle) and data["oracle"]["overlap"]["real"]["bytes"] == 0
    assert data["oracle"]["overlap"]["counterfactual"]["bytes"] == 0
    assert "oracle" not in doc["generative"] and "oracle" not in doc["ber"]["sets"]  # never a generated set
    assert set(doc["samples"]) == {"real", "vanilla#1"}  # the grid shows each name's first replicate
    assert len(doc["features"]["hash"]) == 64 and doc["features"]["target"] == "cell"
    assert doc["warnings"] and all(set(w) == {"where", "message"} for w in doc["warnings"])
    assert "\n" not in "".join(w["message"] for w in doc["warnings"])


def test_generative_section(result, demo):
    doc = result.to_dict()
    feature_hash = doc["features"]["hash"]
    n_cells = len(demo.cells())
    assert set(doc["generative"]) == {"vanilla#1", "vanilla#2"}  # one report per replicate
    for name, rep in doc["generative"].items():
        assert rep["features"]["hash"] == feature_hash  # one feature space for every set
        assert rep["features"]["trained_on_reference"] is True
        assert rep["overall"]["fid"] >= 0 and rep["overall"]["is_domain_mean"] >= 1
        assert set(rep["by"]) == {"tone", "site"}
        tone = rep["by"]["tone"]
        assert set(tone["groups"]) == {"tone=dark", "tone=light", "tone=medium"}
        for entry in tone["groups"].values():
            assert entry["n"] == tone["n_star"] and entry["fid_sd"] >= 0
        fids = [e["fid_mean"] for e in tone["groups"].values()]
        assert tone["fid_variance"]["variance"] == pytest.approx(np.var(fids))
        assert tone["es_fid"]["definition"] == "fairsample"
        assert len(rep["cells"]["groups"]) == n_cells
        assert rep["cells"]["n_star"] == {"vanilla#1": 4, "vanilla#2": 3}[name]
    for name in ("vanilla#1", "vanilla#2"):
        b = doc["ber"]["sets"][name]["tone"]
        assert 0 <= b["ber"] <= b["ber_max"] == pytest.approx(2 / 3)
        assert 0 <= b["real_trained"]["ber"] <= 1 and len(b["classifier_hash"]) == 64
    assert 0 <= doc["ber"]["real"]["site"]["ber"] <= 0.5
    # mean ± sd over the replicates
    summary, reps = doc["generative_summary"]["vanilla"], [doc["generative"][i] for i in ("vanilla#1", "vanilla#2")]
    assert summary["n_replicates"] == 2 and summary["sets"] == ["vanilla#1", "vanilla#2"]
    fids = [r["overall"]["fid"] for r in reps]
    assert summary["fid"]["values"] == pytest.approx(fids) and summary["fid"]["sd"] == pytest.approx(
        np.std(fids, ddof=1)
    )
    es = [r["by"]["tone"]["es_fid"]["value"] for r in reps]
    assert summary["by"]["tone"]["es_fid"]["mean"] == pytest.approx(np.mean(es))
    bers = [doc["ber"]["sets"][i]["site"]["ber"] for i in ("vanilla#1", "vanilla#2")]
    assert doc["ber"]["summary"]["vanilla"]["site"]["ber"]["mean"] == pytest.approx(np.mean(bers))


def test_downstream_rows_and_seed_aggregation(result):
    doc = result.to_dict()
    rows = doc["downstream"]["rows"]
    assert [r["id"] for r in rows] == ["base", "oracle", "real+vanilla"]
    assert [r["label"] for r in rows] == ["Base (real only)", ORACLE_LABEL, "Real + vanilla"]
    assert [r["kind"] for r in rows] == ["base", "oracle", "synthetic"]
    assert [r["n_replicates"] for r in rows] == [1, 1, 2]
    assert rows[0]["n_train_synthetic"] == 0 and rows[2]["n_train_synthetic"] == doc["data"]["sets"]["vanilla#1"]["n"]
    assert [rep["n_train_synthetic"] for rep in rows[2]["replicates"]] == [
        doc["data"]["sets"][i]["n"] for i in ("vanilla#1", "vanilla#2")
    ]
    test_n = doc["downstream"]["split"]["sizes"]["test"]
    for r in rows:
        n_runs = 2 * r["n_replicates"]
        assert len(r["selected_epochs"]) == n_runs and r["seeds"] == [0, 1]
        for attr in ("tone", "site"):
            reports = result.fairness_reports[r["id"]][attr]
            assert len(reports) == n_runs and all(isinstance(rep, FairnessReport) for rep in reports)
            assert sum(reports[0].group_sizes.values()) == test_n
            summary = r["fairness"][attr]["summary"]
            assert set(FAIRNESS_METRICS) <= set(summary)
            for metric in FAIRNESS_METRICS:
                values = [rep.overall[metric] for rep in reports]
                finite = [v for v in values if math.isfinite(v)]
                entry = summary[metric]
                assert entry["n"] == len(finite) and len(entry["values"]) == n_runs
                if finite:
                    assert entry["mean"] == pytest.approx(np.mean(finite))
                if len(finite) > 1:
                    assert entry["sd"] == pytest.approx(np.std(finite, ddof=1))
            for metric in ("accuracy", "dp_gap", "eopp_gap", "eodds_gap", "essp", "es_acc"):
                assert 0.0 <= summary[metric]["mean"] <= 1.0  # fractions, never x100
            acc = [rep.overall["accuracy"] for rep in reports]
            assert summary["accuracy"]["values"] == pytest.approx(acc)
            assert reports[0].difference().index.tolist() == reports[0].by_group.columns.drop("n").tolist()
            assert len(r["fairness"][attr]["runs"]) == n_runs
            assert [(d["replicate"], d["seed"]) for d in r["fairness"][attr]["runs"]] == [
                (k, s) for k in range(r["n_replicates"]) for s in (0, 1)
            ]
        assert r["test_accuracy"]["values"] == pytest.approx(r["fairness"]["tone"]["summary"]["accuracy"]["values"])
        assert sum(c["n"] for c in r["by_cell"].values()) == test_n


def test_headline(result):
    head = result.headline()
    assert head["attribute"] == "tone" and head["view"] == "counterfactual" and head["minority"] == "dark"
    assert set(head["generative"]) == {"vanilla"} and set(head["fairness"]) == {"base", "oracle", "real+vanilla"}
    doc = result.to_dict()
    assert head["generative"]["vanilla"]["fid"] == doc["generative_summary"]["vanilla"]["fid"]["mean"]
    assert head["generative"]["vanilla"]["n_replicates"] == 2
    row = doc["downstream"]["rows"][2]
    cf = row["counterfactual"]["fairness"]["tone"]["summary"]["minority_gap"]["mean"]
    assert head["fairness"]["real+vanilla"]["minority_gap"] == cf
    assert head["fairness"]["real+vanilla"]["gap_closure"] == row["gap_closure"]["counterfactual"]["tone"]["value"]
    assert head["fairness"]["base"]["gap_closure"] is None


# ------------------------------------------------------------------------------ views, minority, oracle, closure


def _runs_by_row(runs: list[dict]) -> dict[str, list[dict]]:
    """The recorded run_protocol outputs per row id (plan order: base, oracle, vanilla#1, vanilla#2)."""
    assert len(runs) == 4
    return {"base": runs[0:1], "oracle": runs[1:2], "real+vanilla": runs[2:4]}


def test_counterfactual_view_equals_a_hand_computation(evaluation, demo):
    res, runs = evaluation
    doc = res.to_dict()
    cf = load_folder(demo.root / "counterfactual")
    tones, labels = cf.frame["tone"].to_numpy(), cf.frame["label"].to_numpy()
    for row in doc["downstream"]["rows"]:
        block = row["counterfactual"]["fairness"]["tone"]
        assert set(row["counterfactual"]["fairness"]) == {"tone"}  # the counterfactual set has no `site`
        preds = [r["extra"]["counterfactual"] for run in _runs_by_row(runs)[row["id"]] for r in run["runs"]]
        gaps, spreads, accs, by_tone = [], [], [], {t: [] for t in ("dark", "light", "medium")}
        for k, p in enumerate(preds):
            assert p["y_true"] == labels.tolist()
            correct = np.asarray(p["y_pred"]) == labels
            acc = {t: correct[tones == t].mean() for t in by_tone}
            for t in by_tone:
                by_tone[t].append(acc[t])
            # same content in every tone: pooled others = mean of the other two tones (a paired difference)
            gaps.append(correct[tones != "dark"].mean() - correct[tones == "dark"].mean())
            assert gaps[-1] == pytest.approx((acc["light"] + acc["medium"]) / 2 - acc["dark"])
            spreads.append(max(acc.values()) - min(acc.values()))
            accs.append(correct.mean())
            if k == 0:  # the view's FairnessReport is built on these predictions and the counterfactual tones
                ref = fairness_report(labels, p["y_pred"], sensitive_features=tones, n_resamples=0).overall
                mine = res.counterfactual_reports[row["id"]]["tone"][k].overall
                for metric in ("dp_gap", "eopp_gap", "essp", "nar"):
                    assert mine[metric] == pytest.approx(ref[metric], nan_ok=True)
        summary = block["summary"]
        assert summary["minority_gap"]["values"] == pytest.approx(gaps)
        assert summary["minority_gap"]["mean"] == pytest.approx(np.mean(gaps))
        assert summary["worst_best_gap"]["values"] == pytest.approx(spreads)
        assert summary["accuracy"]["values"] == pytest.approx(accs)
        assert row["counterfactual"]["accuracy"]["values"] == pytest.approx(accs)
        for t, values in by_tone.items():
            assert block["by_group"][f"tone={t}"]["accuracy"]["values"] == pytest.approx(values)
            assert block["by_group"][f"tone={t}"]["n"] == 105
        n_runs = len(preds) // row["n_replicates"]
        assert block["minority_gap_by_replicate"] == [
            pytest.approx(gaps[k * n_runs : (k + 1) * n_runs]) for k in range(row["n_replicates"])
        ]
        assert block["minority"] == "dark" and [d["minority_gap"] for d in block["runs"]] == pytest.approx(gaps)
        assert sum(c["n"] for c in row["counterfactual"]["by_cell"].values()) == 315


def test_test_view_gaps_and_minority(evaluation, demo):
    res, runs = evaluation
    doc = res.to_dict()
    down = doc["downstream"]
    assert down["views"] == ["counterfactual", "test"]
    assert down["view_attributes"] == {"counterfactual": ["tone"], "test": ["tone", "site"]}
    train = split_indices(demo, seed=0)["train"]
    for a in ("tone", "site"):
        counts = demo.frame[a].to_numpy()[train]
        n_train = {v: int((counts == v).sum()) for v in sorted(set(demo.frame[a]))}
        m = down["minority"][a]
        assert m["n_train"] == n_train and m["rule"] == "fewest real training images"
        assert m["value"] == min(n_train, key=n_train.get) and m["group"] == f"{a}={m['value']}"
    assert down["minority"]["tone"]["value"] == "dark"
    test = split_indices(demo, seed=0)["test"]
    tones = demo.frame["tone"].to_numpy()[test]
    for row in down["rows"]:
        gaps = []
        for run in _runs_by_row(runs)[row["id"]]:
            for r in run["runs"]:
                correct = np.asarray(r["y_pred"]) == np.asarray(r["y_true"])
                gaps.append(correct[tones != "dark"].mean() - correct[tones == "dark"].mean())
        assert row["fairness"]["tone"]["summary"]["minority_gap"]["values"] == pytest.approx(gaps)


def test_oracle_row_trains_on_real_plus_every_oracle_image(result, demo, oracle):
    doc = result.to_dict()
    row = next(r for r in doc["downstream"]["rows"] if r["id"] == "oracle")
    n_train = len(split_indices(demo, seed=0)["train"])
    assert row["label"] == ORACLE_LABEL and row["kind"] == "oracle" and row["set"] is None
    assert row["protocol"] == "real_plus_oracle"
    assert row["n_train_real"] == n_train and row["n_train_synthetic"] == len(oracle)
    assert row["n_train"] == n_train + len(oracle) and row["replicates"][0]["root"] == str(oracle.root)
    assert row["gap_closure"] is None and row["counterfactual"] is not None
    assert row["selected_epochs"] == [d["selected_epoch"] for d in row["fairness"]["tone"]["runs"]]


def test_gap_closure_blocks_equal_the_pure_functions(result):
    doc = result.to_dict()
    down = doc["downstream"]
    rows = {r["id"]: r for r in down["rows"]}
    options = {"n_resamples": 400, "confidence": 0.95, "seed": 0}
    for view, attrs in down["view_attributes"].items():
        for a in attrs:

            def gaps(row_id: str, view: str = view, a: str = a) -> list:
                r = rows[row_id]
                block = r["fairness"] if view == "test" else r["counterfactual"]["fairness"]
                return block[a]["minority_gap_by_replicate"]

            base, orc = gaps("base")[0], gaps("oracle")[0]
            expected = ev.json_safe(gap_closure(base, orc, gaps("real+vanilla"), **options))
            block = rows["real+vanilla"]["gap_closure"][view][a]
            assert block == expected
            assert block["row_gap"]["n_replicates"] == 2 and len(block["row_gap"]["by_replicate"]) == 2
            assert (block["value"] is None) == (block["reason"] is not None)
            problem = down["problem"][view][a]
            diff = ev.json_safe(gap_difference(base, orc, **options))
            assert {k: problem[k] for k in diff} == diff
            assert problem["minority"] == down["minority"][a]["value"]
            base_block = rows["base"]["fairness"] if view == "test" else rows["base"]["counterfactual"]["fairness"]
            assert problem["base_by_group"] == base_block[a]["by_group"]
            assert problem["base_worst_best_gap"] == base_block[a]["summary"]["worst_best_gap"]


def test_closure_against_a_reference_row():
    """`reference`: every other synthetic row of the same protocol gets its closure minus the reference's."""
    from fairsample.evaluation.rows import _closures

    def row(row_id: str, kind: str, name: str | None, reps: list[list[float]]) -> dict:
        block = {
            "minority_gap_by_replicate": reps,
            "by_group": {},
            "summary": {"worst_best_gap": None, "accuracy": None},
        }
        return {
            "id": row_id,
            "kind": kind,
            "protocol": "real_plus_synthetic",
            "set": name,
            "fairness": {"tone": block},
            "counterfactual": None,
            "gap_closure": None,
        }

    rows = [
        row("base", "base", None, [[0.30, 0.31, 0.29]]),
        row("oracle", "oracle", None, [[0.10, 0.11, 0.09]]),
        row("real+vanilla", "synthetic", "vanilla", [[0.20, 0.21], [0.20, 0.19]]),
        row("real+fair", "synthetic", "fair", [[0.10, 0.11], [0.10, 0.09]]),
    ]
    cfg = ev.EvaluationSettings(closure_resamples=300)
    problem = _closures(rows, {"test": ["tone"]}, {"tone": "dark"}, "vanilla", cfg)
    assert problem["test"]["tone"]["closable"] and problem["test"]["tone"]["minority"] == "dark"
    fair, vanilla = rows[3]["gap_closure"]["test"]["tone"], rows[2]["gap_closure"]["test"]["tone"]
    assert vanilla["value"] == pytest.approx(0.5) and fair["value"] == pytest.approx(1.0)
    assert "vs_reference" not in vanilla
    vs = fair["vs_reference"]
    assert vs["reference"] == "real+vanilla" and vs["value"] == pytest.approx(0.5) and vs["excludes_zero"]


def test_minority_override(demo):
    train = split_indices(demo, seed=0)["train"]
    out = inp._resolve_minority(demo, train, ("tone", "site"), {"tone": "medium"})
    assert out["tone"]["value"] == "medium" and out["tone"]["rule"] == "given"
    assert out["site"]["rule"] == "fewest real training images"
    assert inp._resolve_minority(demo, train, ("tone",), "light")["tone"]["value"] == "light"  # a str: first attribute


# ----------------------------------------------------------------------------------------------------- the files


def _json_numbers(obj, out: list[float]) -> list[float]:
    if isinstance(obj, dict):
        for v in obj.values():
            _json_numbers(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _json_numbers(v, out)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        out.append(float(obj))
    return out


def _json_strings(obj, out: list[str]) -> list[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(str(k))
            _json_strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _json_strings(v, out)
    elif isinstance(obj, str):
        out.append(obj)
    return out


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]\d+)?(?!\w)")


class _Formatted:
    """Every JSON number rendered at 0-6 decimals and in exponent form: a Markdown token must be one of them."""

    def __init__(self, numbers: list[float]) -> None:
        self.fixed = {d: {f"{v:.{d}f}" for v in numbers} for d in range(7)}
        self.fixed[0] |= {str(int(v)) for v in numbers if v == int(v)}
        self.exp = {f"{v:.3e}" for v in numbers}

    def __contains__(self, token: str) -> bool:
        if "e" in token:
            return token in self.exp
        decimals = len(token.split(".")[1]) if "." in token else 0
        return token in self.fixed.get(decimals, set()) or token.lstrip("-") in self.fixed.get(decimals, set())


def test_every_markdown_number_is_in_the_json(saved):
    out, _ = saved
    doc = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    numbers = _Formatted(_json_numbers(doc, []))
    strings = "\n".join(_json_strings(doc, []))
    n_table_numbers = 0
    for line in md.splitlines():
        if line.startswith("|") and not line.startswith("|:"):
            # table cells: every number outside code spans must be a formatted JSON number
            for token in _NUMBER.findall(re.sub(r"`[^`]*`", "", line)):
                assert token in numbers, f"table number {token!r} not in report.json: {line[:120]}"
                n_table_numbers += 1
        else:
            for token in _NUMBER.findall(line):
                assert token in numbers or token in strings, f"number {token!r} not in report.json: {line[:120]}"
    assert n_table_numbers > 200
    for expected in (
        "## Generative quality",
        "## Downstream fairness",
        "Base (real only)",
        "Real + vanilla",
        ORACLE_LABEL,
        "## Problem: the minority gap",
        "## Gap closure",
        "Counterfactual set, by tone (minority tone=dark)",
        "Real test split, by site",
        "Gap closure [CI]",
        "Across generator replicates",
        "vanilla#2",
        "ES-FID",
        "DP gap",
        "EOpp gap",
        "EOdds gap",
        "ESSP",
        "NAR",
        "ES-AUC",
        "BER tone (fresh)",
        "## Definitions",
        "## Warnings",
        "Versions:",
    ):
        assert expected in md
    assert fmt_number(doc["generative"]["vanilla#1"]["overall"]["fid"]) in md
    base = doc["downstream"]["rows"][0]["fairness"]["tone"]["summary"]["dp_gap"]
    assert f"{fmt_fraction(base['mean'])} ± {fmt_fraction(base['sd'])}" in md
    gap = doc["downstream"]["problem"]["counterfactual"]["tone"]["base_gap"]
    assert f"{fmt_fraction(gap['mean'])} ± {fmt_fraction(gap['sd'])} [{fmt_fraction(gap['ci'][0])}," in md


def test_json_file_matches_result_and_lists_plots(saved, result):
    out, files = saved
    doc = json.loads((out / "report.json").read_text())
    expected = result.to_dict()
    assert doc["generative"] == expected["generative"] and doc["downstream"] == expected["downstream"]
    assert set(doc["plots"]) == {
        "fid_by_group_tone",
        "fid_by_group_site",
        "heatmap_cells",
        "fairness_gaps_tone",
        "fairness_gaps_site",
        "accuracy_by_group_tone",
        "accuracy_by_group_site",
        "gap_closure_counterfactual",
        "gap_closure_test",
        "samples",
    }
    for rel in doc["plots"].values():
        assert (out / rel).is_file() and rel.startswith("plots/")
    assert sorted(p.name for p in out.iterdir()) == ["plots", "report.html", "report.json", "report.md"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_pngs_are_valid_and_readable(saved):
    out, _ = saved
    for path in sorted((out / "plots").glob("*.png")):
        with Image.open(path) as im:
            assert im.format == "PNG"
            w, h = im.size
            assert 500 <= w <= 4000 and 300 <= h <= 4000, (path.name, im.size)
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # not blank: dark text / bars exist


def test_html_is_self_contained(saved):
    out, _ = saved
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == len(json.loads((out / "report.json").read_text())["plots"])
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<table>" in text and "Base (real only)" in text


def test_save_refuses_a_non_empty_folder(saved, result):
    out, _ = saved
    with pytest.raises(ConfigError, match=_pattern(ev._OUTPUT_NOT_EMPTY)):
        result.save(out)
    assert (out / "report.json").is_file()


# ------------------------------------------------------------------------------------------------------- errors


@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if anything is trained: input errors must come first."""

    def boom(*args, **kwargs):
        raise AssertionError("training started before the inputs were checked")

    monkeypatch.setattr("fairsample.evaluation.features.DomainFeatures.fit_folder", boom)
    monkeypatch.setattr("fairsample.evaluation.downstream.run_protocol", boom)


def _one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


def test_no_cell_overlap(demo, no_training):
    dark = (demo.frame["tone"] == "dark").to_numpy()
    with pytest.raises(DataError, match=_pattern(inp._NO_CELL_OVERLAP)) as info:
        evaluate(demo.subset(~dark), {"gen": demo.subset(dark)}, **FAST)
    assert "'gen'" in _one_line_error(info) and "fairsample generate --cells" in str(info.value)


def test_missing_label_column(demo, tmp_path, no_training):
    root = tmp_path / "gen"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    Image.new("RGB", (8, 8)).save(root / "images" / "b.png")
    (root / "metadata.csv").write_text("file_name,tone\nimages/a.png,dark\nimages/b.png,dark\n")
    with pytest.raises(DataError, match=_pattern(inp._SET_MISSING_COLUMN)) as info:
        evaluate(demo, {"gen": root}, **FAST)
    assert "no label column 'label'" in _one_line_error(info)


def test_group_with_fewer_than_two_images(demo, sets, no_training):
    syn = sets["vanilla"][0]
    dark = np.flatnonzero((syn.frame["tone"] == "dark").to_numpy())
    keep = np.setdiff1d(np.arange(len(syn)), dark[1:])  # one dark image left
    with pytest.raises(DataError, match=_pattern(inp._FEW_IN_GROUP)) as info:
        evaluate(demo, {"gen": syn.subset(keep)}, **FAST)
    assert "tone=dark has" in _one_line_error(info) and "1 synthetic" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "template"),
    [
        ({"seeds": (0,), "allow_few_seeds": False}, _FEW_SEEDS),
        ({"seeds": (0, 0, 1)}, _BAD_SEEDS),
        ({"protocols": ("bogus",)}, ev._BAD_PROTOCOLS),
        ({"attribute": "nope"}, inp._UNKNOWN_ATTRIBUTE),
        ({"attribute": "label"}, inp._LABEL_ATTRIBUTE),
        ({"epochs": 0}, ev._BAD_INT),
        ({"fractions": (0.9, 0.1, 0.0)}, ev._BAD_FRACTIONS),
    ],
)
def test_bad_options(demo, sets, no_training, kwargs, template):
    options = FAST | kwargs
    with pytest.raises(ConfigError, match=_pattern(template)) as info:
        evaluate(demo, {"gen": sets["vanilla"][1]}, **options)
    _one_line_error(info)


def test_bad_synthetic_arguments(demo, sets, no_training, tmp_path):
    with pytest.raises(ConfigError, match=_pattern(inp._NO_SYNTHETIC)):
        evaluate(demo, {}, **FAST)
    with pytest.raises(ConfigError, match=_pattern(inp._BAD_SET_NAME)):
        evaluate(demo, {"a b": sets["vanilla"][1]}, **FAST)
    with pytest.raises(ConfigError, match=_pattern(inp._BAD_SYNTHETIC)):
        evaluate(demo, [sets["vanilla"][1]], **FAST)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=_pattern(inp._NO_REPLICATES)):
        evaluate(demo, {"gen": []}, **FAST)
    with pytest.raises(ConfigError, match=_pattern(inp._DUPLICATE_REPLICATE)):
        evaluate(demo, {"gen": [tmp_path, tmp_path / "."]}, **FAST)
    with pytest.raises(ConfigError, match=_pattern(inp._BAD_REFERENCE)):
        evaluate(demo, {"gen": sets["vanilla"][1]}, reference="vanilla", **FAST)


@pytest.mark.parametrize(
    ("minority", "error", "template"),
    [
        ("purple", ConfigError, inp._BAD_MINORITY),
        ({"nope": "x"}, ConfigError, inp._BAD_MINORITY_ATTRIBUTE),
        (3, ConfigError, inp._BAD_MINORITY_KIND),
    ],
)
def test_bad_minority(demo, sets, no_training, minority, error, template):
    with pytest.raises(error, match=_pattern(template)) as info:
        evaluate(demo, {"gen": sets["vanilla"][1]}, minority=minority, **FAST)
    _one_line_error(info)


def _copy_folder(root: Path, src: FolderDataset, frame: pd.DataFrame) -> Path:
    """A dataset folder (metadata.csv + images) holding copies of some of ``src``'s images."""
    import shutil

    (root / "images").mkdir(parents=True)
    for name in frame["file_name"]:
        shutil.copy(src.root / name, root / name)
    frame.to_csv(root / "metadata.csv", index=False)
    return root


def test_counterfactual_errors_name_the_argument(demo, sets, no_training, tmp_path):
    cf = load_folder(demo.root / "counterfactual")
    syn = {"gen": sets["vanilla"][1]}
    no_content = _copy_folder(tmp_path / "a", cf, cf.frame.head(6).drop(columns=["content_id"]))
    with pytest.raises(DataError, match=_pattern(ho._MISSING)) as info:
        evaluate(demo, syn, counterfactual=no_content, **FAST)
    assert "`counterfactual` set" in _one_line_error(info) and "'content_id'" in str(info.value)
    unseen = cf.frame.copy()
    unseen.loc[0, "label"] = "9"
    with pytest.raises(DataError, match=_pattern(ho._UNSEEN)) as info:
        evaluate(demo, syn, counterfactual=FolderDataset(cf.root, cf.spec, unseen), **FAST)
    assert "['9']" in _one_line_error(info)
    no_dark = cf.subset((cf.frame["tone"] != "dark").to_numpy())
    with pytest.raises(DataError, match=_pattern(ev._CF_NO_MINORITY)) as info:
        evaluate(demo, syn, counterfactual=no_dark, **FAST)
    assert "tone='dark'" in _one_line_error(info)
    one_tone = cf.subset((cf.frame["tone"] == "dark").to_numpy())
    with pytest.raises(DataError, match=_pattern(ho._ONE_VALUE)):
        evaluate(demo, syn, counterfactual=one_tone, **FAST)
    with pytest.raises(ConfigError, match=_pattern(ho._BAD_KIND)):
        evaluate(demo, syn, counterfactual=3, **FAST)


def test_oracle_needs_every_attribute_column(demo, sets, no_training):
    with pytest.raises(DataError, match=_pattern(ho._MISSING)) as info:
        evaluate(demo, {"gen": sets["vanilla"][1]}, attribute=("tone", "site"), oracle=demo.root / "holdout", **FAST)
    assert "`oracle` set" in _one_line_error(info) and "attribute column 'site'" in str(info.value)


def test_held_out_images_that_are_real_images_warn(demo):
    picked = demo.subset(_per_cell(demo, 1))
    frame = picked.frame.assign(content_id=[str(k // 3) for k in range(len(picked))])
    cf = FolderDataset(demo.root, DatasetSpec(groups=("tone",)), frame)
    with pytest.warns(FairsampleWarning, match="byte-identical to real images") as record:
        out = ho.overlap("counterfactual", cf, "real", ho.file_hashes(demo), real=demo)
    assert out["bytes"] == len(picked) and out["first"][0] == out["first"][1] and len(record) == 1
    with pytest.warns(FairsampleWarning, match="content_id value"):
        ho.overlap("counterfactual", cf, "real", {}, real=FolderDataset(demo.root, demo.spec, frame))
    with pytest.warns(FairsampleWarning, match="not paired on identical content"):
        assert not ho.pairing(cf, "tone")["paired"]


def test_unseen_synthetic_values(demo, sets, no_training):
    syn = sets["vanilla"][1]
    frame = syn.frame.copy()
    frame.loc[0, "tone"] = "Dark"
    bad = FolderDataset(syn.root, DatasetSpec(groups=("tone",)), frame)
    with pytest.raises(DataError, match=_pattern(inp._SET_UNSEEN)) as info:
        evaluate(demo, {"gen": bad}, **FAST)
    assert "['Dark']" in _one_line_error(info)


def test_protocol_names_match_downstream():
    from fairsample.evaluation.downstream import PROTOCOLS

    assert ev.PROTOCOLS == PROTOCOLS

"""The one-call evaluation (issue #4): result structure and aggregation, the saved report (every Markdown number is
in report.json, self-contained HTML, valid PNGs), and the one-line input errors raised before any training."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import fairsample.eval.evaluate as ev
from fairsample.data import DatasetSpec, FolderDataset, load_folder
from fairsample.errors import ConfigError, DataError, FairsampleWarning
from fairsample.eval.evaluate import FAIRNESS_METRICS, evaluate
from fairsample.eval.fairness_report import FairnessReport
from fairsample.eval.report_render import fmt_fraction, fmt_number

#: tiny settings: 16-px images, 2 epochs, 3 seeds (the mean ± sd policy), few draws and resamples
FAST = {
    "size": 16,
    "epochs": 2,
    "seeds": (0, 1, 2),
    "k": 2,
    "n_resamples": 5,
    "feature_epochs": 2,
    "ber_epochs": 2,
    "grid_per_cell": 3,
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
    """The digits tone demo (744 images, 15 cells) with a second attribute `site` that is not a spec group."""
    from fairsample.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("evaluate") / "demo"
    make_demo_dataset(root, source="digits", seed=0)
    ds = load_folder(root)
    frame = ds.frame.copy()
    frame["site"] = np.where(np.arange(len(frame)) % 2 == 0, "A", "B")
    return FolderDataset(ds.root, ds.spec, frame)


@pytest.fixture(scope="module")
def sets(demo) -> dict[str, FolderDataset]:
    """Two 'synthetic' sets cut from the real data: 4 and 3 images per cell."""
    return {"vanilla": demo.subset(_per_cell(demo, 4)), "fair": demo.subset(_per_cell(demo, 3, last=True))}


@pytest.fixture(scope="module")
def result(demo, sets):
    lines: list[str] = []
    with pytest.warns(FairsampleWarning) as record:
        res = evaluate(demo, sets, attribute=("tone", "site"), progress=lines.append, **FAST)
    assert any("below 2 x the feature dimension" in str(w.message) for w in record)
    assert len(record) == len(res.report["warnings"])  # each collected warning is re-issued once
    assert lines and all(isinstance(line, str) for line in lines)
    return res


@pytest.fixture(scope="module")
def saved(result, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("evaluate") / "report"
    files = result.save(out)
    assert files["output_dir"] == str(out.absolute())
    return out, files


# ---------------------------------------------------------------------------------------------------- structure


def test_document_sections_and_settings(result, demo, sets):
    doc = result.to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["schema"] == ev.SCHEMA
    st = doc["settings"]
    assert st["attributes"] == ["tone", "site"] and st["seeds"] == [0, 1, 2] and st["epochs"] == 2
    assert st["protocols"] == ["real_only", "real_plus_synthetic"] and st["size"] == 16
    assert {"fairsample", "torch", "torchmetrics", "fairlearn", "scikit-learn", "matplotlib"} <= set(doc["versions"])
    assert doc["data"]["real"]["n"] == len(demo)
    assert {n: d["n"] for n, d in doc["data"]["sets"].items()} == {n: len(d) for n, d in sets.items()}
    assert len(doc["features"]["hash"]) == 64 and doc["features"]["target"] == "cell"
    assert doc["warnings"] and all(set(w) == {"where", "message"} for w in doc["warnings"])
    assert "\n" not in "".join(w["message"] for w in doc["warnings"])


def test_generative_section(result, demo):
    doc = result.to_dict()
    feature_hash = doc["features"]["hash"]
    n_cells = len(demo.cells())
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
        assert rep["cells"]["n_star"] == {"vanilla": 4, "fair": 3}[name]
    for name in ("vanilla", "fair"):
        b = doc["ber"]["sets"][name]["tone"]
        assert 0 <= b["ber"] <= b["ber_max"] == pytest.approx(2 / 3)
        assert 0 <= b["real_trained"]["ber"] <= 1 and len(b["classifier_hash"]) == 64
    assert 0 <= doc["ber"]["real"]["site"]["ber"] <= 0.5


def test_downstream_rows_and_seed_aggregation(result):
    doc = result.to_dict()
    rows = doc["downstream"]["rows"]
    assert [r["id"] for r in rows] == ["base", "real+vanilla", "real+fair"]
    assert [r["label"] for r in rows] == ["Base (real only)", "Real + vanilla", "Real + fair"]
    assert rows[0]["n_train_synthetic"] == 0 and rows[1]["n_train_synthetic"] == doc["data"]["sets"]["vanilla"]["n"]
    test_n = doc["downstream"]["split"]["sizes"]["test"]
    for r in rows:
        for attr in ("tone", "site"):
            reports = result.fairness_reports[r["id"]][attr]
            assert len(reports) == 3 and all(isinstance(rep, FairnessReport) for rep in reports)
            assert sum(reports[0].group_sizes.values()) == test_n
            summary = r["fairness"][attr]["summary"]
            assert set(FAIRNESS_METRICS) <= set(summary)
            for metric in FAIRNESS_METRICS:
                values = [rep.overall[metric] for rep in reports]
                finite = [v for v in values if math.isfinite(v)]
                entry = summary[metric]
                assert entry["n"] == len(finite) and len(entry["values"]) == 3
                if finite:
                    assert entry["mean"] == pytest.approx(np.mean(finite))
                if len(finite) > 1:
                    assert entry["sd"] == pytest.approx(np.std(finite, ddof=1))
            for metric in ("accuracy", "dp_gap", "eopp_gap", "eodds_gap", "essp", "es_acc"):
                assert 0.0 <= summary[metric]["mean"] <= 1.0  # fractions, never x100
            acc = [rep.overall["accuracy"] for rep in reports]
            assert summary["accuracy"]["values"] == pytest.approx(acc)
            assert reports[0].difference().index.tolist() == reports[0].by_group.columns.drop("n").tolist()
            assert len(r["fairness"][attr]["runs"]) == 3
        assert r["test_accuracy"]["values"] == pytest.approx(r["fairness"]["tone"]["summary"]["accuracy"]["values"])
        assert sum(c["n"] for c in r["by_cell"].values()) == test_n


def test_headline(result):
    head = result.headline()
    assert head["attribute"] == "tone"
    assert set(head["generative"]) == {"vanilla", "fair"} and set(head["fairness"]) == {
        "base",
        "real+vanilla",
        "real+fair",
    }
    doc = result.to_dict()
    assert head["generative"]["fair"]["fid"] == doc["generative"]["fair"]["overall"]["fid"]


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
        "Real + fair",
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
    assert fmt_number(doc["generative"]["vanilla"]["overall"]["fid"]) in md
    base = doc["downstream"]["rows"][0]["fairness"]["tone"]["summary"]["dp_gap"]
    assert f"{fmt_fraction(base['mean'])} ± {fmt_fraction(base['sd'])}" in md


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

    monkeypatch.setattr("fairsample.eval.features.DomainFeatures.fit_folder", boom)
    monkeypatch.setattr("fairsample.eval.downstream.run_protocol", boom)


def _one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


def test_no_cell_overlap(demo, no_training):
    dark = (demo.frame["tone"] == "dark").to_numpy()
    with pytest.raises(DataError, match=_pattern(ev._NO_CELL_OVERLAP)) as info:
        evaluate(demo.subset(~dark), {"gen": demo.subset(dark)}, **FAST)
    assert "'gen'" in _one_line_error(info) and "fairsample generate --cells" in str(info.value)


def test_missing_label_column(demo, tmp_path, no_training):
    root = tmp_path / "gen"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    Image.new("RGB", (8, 8)).save(root / "images" / "b.png")
    (root / "metadata.csv").write_text("file_name,tone\nimages/a.png,dark\nimages/b.png,dark\n")
    with pytest.raises(DataError, match=_pattern(ev._SET_MISSING_COLUMN)) as info:
        evaluate(demo, {"gen": root}, **FAST)
    assert "no label column 'label'" in _one_line_error(info)


def test_group_with_fewer_than_two_images(demo, sets, no_training):
    syn = sets["vanilla"]
    dark = np.flatnonzero((syn.frame["tone"] == "dark").to_numpy())
    keep = np.setdiff1d(np.arange(len(syn)), dark[1:])  # one dark image left
    with pytest.raises(DataError, match=_pattern(ev._FEW_IN_GROUP)) as info:
        evaluate(demo, {"gen": syn.subset(keep)}, **FAST)
    assert "tone=dark has" in _one_line_error(info) and "1 synthetic" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "template"),
    [
        ({"seeds": (0,)}, ev._FEW_SEEDS),
        ({"seeds": (0, 0, 1)}, ev._BAD_SEEDS),
        ({"protocols": ("bogus",)}, ev._BAD_PROTOCOLS),
        ({"attribute": "nope"}, ev._UNKNOWN_ATTRIBUTE),
        ({"attribute": "label"}, ev._LABEL_ATTRIBUTE),
        ({"epochs": 0}, ev._BAD_INT),
        ({"fractions": (0.9, 0.1, 0.0)}, ev._BAD_FRACTIONS),
    ],
)
def test_bad_options(demo, sets, no_training, kwargs, template):
    options = FAST | kwargs
    with pytest.raises(ConfigError, match=_pattern(template)) as info:
        evaluate(demo, {"gen": sets["fair"]}, **options)
    _one_line_error(info)


def test_bad_synthetic_arguments(demo, sets, no_training):
    with pytest.raises(ConfigError, match=_pattern(ev._NO_SYNTHETIC)):
        evaluate(demo, {}, **FAST)
    with pytest.raises(ConfigError, match=_pattern(ev._BAD_SET_NAME)):
        evaluate(demo, {"a b": sets["fair"]}, **FAST)
    with pytest.raises(ConfigError, match=_pattern(ev._BAD_SYNTHETIC)):
        evaluate(demo, [sets["fair"]], **FAST)  # type: ignore[arg-type]


def test_unseen_synthetic_values(demo, sets, no_training):
    syn = sets["fair"]
    frame = syn.frame.copy()
    frame.loc[0, "tone"] = "Dark"
    bad = FolderDataset(syn.root, DatasetSpec(groups=("tone",)), frame)
    with pytest.raises(DataError, match=_pattern(ev._SET_UNSEEN)) as info:
        evaluate(demo, {"gen": bad}, **FAST)
    assert "['Dark']" in _one_line_error(info)


def test_protocol_names_match_downstream():
    from fairsample.eval.downstream import PROTOCOLS

    assert ev.PROTOCOLS == PROTOCOLS

"""Metric metadata is declared once (fairsample.evaluation.metric_info) and every renderer takes it from there."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from fairsample.evaluation.aggregate import FAIRNESS_METRICS
from fairsample.evaluation.metric_info import METRICS, better, legend, name

SRC = Path(__file__).resolve().parents[2] / "src" / "fairsample"
#: every module that renders metrics for people: report Markdown / HTML, plots, study RESULTS.md, CLI summaries
RENDERERS = (
    "evaluation/report_render.py",
    "evaluation/report_plots.py",
    "workflows/study/report.py",
    "cli/evaluate.py",
    "workflows/quality_bench.py",
)


@pytest.mark.parametrize("key", sorted(METRICS))
def test_each_metric_names_the_function_that_computes_it(key):
    module, func = METRICS[key].computed_by.split(":")
    mod = importlib.import_module(f"fairsample.evaluation.{module}")
    assert callable(getattr(mod, func)), METRICS[key].computed_by


def test_every_aggregated_fairness_metric_is_declared():
    assert set(FAIRNESS_METRICS) <= set(METRICS)


def _literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module, f-string parts included, with its line; docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


@pytest.mark.parametrize("rel", RENDERERS)
def test_renderers_do_not_spell_metric_headings_or_directions(rel):
    """A heading typed again in a renderer ("DP gap", "FID", "lower is better") would drift from the catalogue."""
    headings = {m.name for m in METRICS.values()}
    found = []
    for line, text in _literals(SRC / rel):
        words = text.strip().rstrip(":").strip()
        if words in headings:
            found.append((line, text))
        for phrase in ("lower is better", "higher is better", "lower is fairer", "higher is fairer"):
            if phrase in text.lower():
                found.append((line, text))
    assert not found, f"{rel} spells metric headings / directions itself (use metric_info): {found}"


def test_the_check_above_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('HEADER = ["Set", "DP gap"]\nNOTE = f"FID ({x}), lower is better"\n', encoding="utf-8")
    texts = [t for _, t in _literals(bad)]
    assert "DP gap" in texts and any("lower is better" in t for t in texts)


def test_directions_and_phrases():
    assert (METRICS["dp_gap"].higher_is_better, METRICS["accuracy"].higher_is_better) == (False, True)
    assert METRICS["ber"].higher_is_better is None and METRICS["ber"].better == "" and METRICS["ber"].arrow == ""
    assert (METRICS["fid"].arrow, METRICS["auc"].arrow) == ("↓", "↑")
    assert better(["dp_gap", "eopp_gap", "nar"]) == "lower is fairer"
    with pytest.raises(ValueError, match="do not share one direction"):
        better(["dp_gap", "accuracy"])
    assert legend(FAIRNESS_METRICS) == (
        "lower is fairer: DP gap, EOpp gap, EOdds gap, NAR; higher is better: Accuracy, AUC, ESSP, ES-ACC, ES-AUC"
    )
    assert legend(["ber"]) == ""
    with pytest.raises(KeyError):
        name("no_such_metric")


def test_es_fid_and_es_is_take_their_direction_from_the_catalogue():
    from fairsample.evaluation.generative import es_fid, es_is

    assert es_fid(10.0, [8.0, 12.0])["higher_is_better"] is METRICS["fid"].higher_is_better is False
    assert es_is(3.0, [2.5, 3.5])["higher_is_better"] is METRICS["is_domain"].higher_is_better is True
    # the direction decides the scaling: FID (lower is better) is scaled up, IS (higher is better) down
    assert es_fid(10.0, [8.0, 12.0])["value"] == pytest.approx(10.0 * (1 + 4.0))
    assert es_is(3.0, [2.5, 3.5])["value"] == pytest.approx(3.0 / (1 + 1.0))


def test_rendered_report_sentences_come_from_the_catalogue():
    from fairsample.evaluation import report_render

    src = (SRC / "evaluation" / "report_render.py").read_text(encoding="utf-8")
    assert "legend(FAIRNESS_METRICS)" in src and "legend(_GENERATIVE_METRICS)" in src
    assert report_render._sentence(legend(["fid", "kid"])) == "Lower is better: FID, KID"

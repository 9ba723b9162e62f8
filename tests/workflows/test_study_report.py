"""`RESULTS.md` of a study, rendered from a small hand-made ``results.json`` document: the gap-closure tables list
every row per view with the right closure / Δ-vs-vanilla cells, the reproduce command is shown, and every decimal
number of every table is a value of the document (at the shown precision).

The end-to-end `fairsample study` run (tests/cli/test_study.py) checks that the command writes these files with this
schema; the Markdown text is checked here, on known inputs.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from fairsample.workflows.study.report import fmt, primary_view, render_markdown, table_numbers

VIEWS = ["counterfactual", "test"]
LABELS = [
    "Base (real only)",
    "oracle (real held-out images)",
    "vanilla",
    "fairdiffusion",
    "vanilla + attribute_switch",
]
NO_ORACLE = "no oracle row in this study"


def _pm(mean: float, sd: float) -> dict[str, float]:
    return {"mean": mean, "sd": sd}


def _metrics(k: int) -> dict[str, Any]:
    return {
        "accuracy": _pm(0.875 - k / 100, 0.125),
        "essp": _pm(0.625, 0.0625),
        "dp_gap": _pm(0.0325 + k / 1000, 0.015625),
        "eopp_gap": _pm(0.046875, 0.01),
        "nar": _pm(0.1875, 0.02),
    }


def _block(k: int, closure: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "metrics": _metrics(k),
        "minority_gap": _pm(0.25 - k / 20, 0.05),
        "accuracy_by_group": {"tone=dark": _pm(0.5 + k / 20, 0.1), "tone=light": _pm(0.9375, 0.03125)},
        "closure": closure,
    }


def _row(k: int, kind: str, method: str | None, sampler: str | None, closure: dict[str, Any] | None = None) -> dict:
    return {
        "id": f"row{k}",
        "label": LABELS[k],
        "kind": kind,
        "method": method,
        "sampler": sampler,
        "guard": "ok" if kind == "synthetic" else None,
        "views": {view: _block(k, closure) for view in VIEWS},
        "sources": {"train": [f"cells/train/r{k}@0"], "generate": [f"cells/generate/r{k}@0"], "evaluation": "all"},
    }


@pytest.fixture
def results() -> dict[str, Any]:
    fair = {
        "value": 0.5,
        "ci": [0.25, 0.75],
        "reason": None,
        "vs_vanilla": {"value": 0.25, "ci": [0.1, 0.4], "excludes_zero": True, "reason": None},
    }
    vanilla = {"value": 0.25, "ci": [-0.125, 0.625], "reason": None, "vs_vanilla": None}
    undefined = {"value": None, "ci": None, "reason": NO_ORACLE, "vs_vanilla": None}
    guard = {
        "flag": "ok",
        "setting": {"guidance_scale": 1.5},
        "overall": {"label": 0.8125, "tone": 0.9375},
        "by_group": {"tone=dark": {"label": 0.6875, "tone": 0.8125}, "tone=light": {"label": 0.9375, "tone": 1.0}},
    }
    problem = {
        "base_gap": {"mean": 0.25, "ci": [0.125, 0.375]},
        "oracle_gap": {"mean": 0.0625, "ci": [0.0, 0.125]},
        "difference": {"mean": 0.1875, "ci": [0.0625, 0.3125]},
        "closable": True,
        "base_by_group": {"tone=dark": {"accuracy": _pm(0.5, 0.1)}, "tone=light": {"accuracy": _pm(0.9375, 0.03125)}},
        "oracle_by_group": {"tone=dark": {"accuracy": _pm(0.8125, 0.05)}},
    }
    return {
        "attribute": "tone",
        "minority": "dark",
        "command": "fairsample study --data demo --profile tiny",
        "views": VIEWS,
        "identity": {"data": "demo", "counterfactual": "demo/cf", "holdout": "demo/holdout", "backend": "torch"},
        "profile": {
            "name": "tiny",
            "description": "made up",
            "architecture": "test",
            "base_steps": 4,
            "base_learning_rate": 0.001,
            "train_steps": 2,
            "batch_size": 8,
            "learning_rate": 0.0005,
            "lr_warmup_steps": 1,
            "generator_seeds": [0, 1],
            "augment_total": 30,
            "sample_steps": 3,
            "eval_epochs": 1,
        },
        "problem": {view: problem for view in VIEWS},
        "base": {"minority_images": 0, "minority_in_train_split": 12, "guard": guard},
        "models": {"vanilla@0": {"guard": guard}},
        "curve": {
            "model": "vanilla@0",
            "plateau": 1,
            "points": [
                {"step": 0, "minority_label": 0.25, "others_label": 0.75, "minority_attribute": 0.5},
                {"step": 1, "minority_label": 0.375, "others_label": 0.8125, "minority_attribute": 0.625},
            ],
        },
        "rows": [
            _row(0, "base", None, None),
            _row(1, "oracle", None, None),
            _row(2, "synthetic", "vanilla", "conditional", vanilla),
            _row(3, "synthetic", "fairdiffusion", "conditional", fair),
            _row(4, "synthetic", "vanilla", "attribute_switch", undefined),
        ],
        "plots": {"closure_counterfactual": "plots/closure_counterfactual.png"},
        "generative": [
            {
                "id": "vanilla",
                "fid": _pm(12.5, 1.25),
                "kid": _pm(0.015625, 0.001),
                "fid_by_group": {"tone=dark": _pm(20.25, 2.5)},
                "ber": _pm(0.375, 0.03),
                "ber_real_trained": _pm(0.4375, 0.04),
            }
        ],
        "samplers": [
            {"kind": "tau", "model": "vanilla@0", "tau_star": 600.0, "search_steps": 100},
            {"kind": "perturbation", "model": "vanilla@0", "kept": "zero", "reason": "no better offset"},
        ],
        "grid": {"seeds": [0, 1]},
        "timings": {
            "stages": {"base": {"cells": 1, "seconds": 12.25, "minutes": 0.2}},
            "total_seconds": 12.25,
            "total_minutes": 0.2,
            "this_run": {
                "workers": 1,
                "torch_threads": 1,
                "eval_threads": 1,
                "wall_seconds": 13.5,
                "ran": ["base/base"],
                "skipped": [],
                "load_average": [1.0],
            },
            "invocations": [{"event": "end", "time": "t0", "wall_seconds": 13.5, "ran": 1, "skipped": 0}],
        },
        "versions": {"fairsample": "0.0", "torch": "2.x"},
        "warnings": [{"message": "a made-up warning (detail 1)", "cell": "base/base"}],
    }


def _section(markdown: str, heading: str) -> dict[str, list[str]]:
    """The first table after ``heading``: first-column label -> the row's cells (header and separator dropped)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return {r[0]: r for r in rows[2:]}


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float) and math.isfinite(obj):
        return [float(obj)]
    return []


@pytest.mark.parametrize(("view", "heading"), [("counterfactual", "counterfactual"), ("test", "real test split")])
def test_gap_closure_table_per_view(results, view, heading):
    table = _section(render_markdown(results), f"## Gap closure — {heading}")
    assert list(table) == LABELS  # every row, in the document's order
    # columns: Row, guard, minority gap, gap closure, Δ vs vanilla, then the Table-1 metrics
    assert table["Base (real only)"][1:5] == ["—", "0.250 ± 0.050", "0 (by definition)", "—"]
    assert table["oracle (real held-out images)"][3:5] == ["1 (by definition)", "—"]
    assert table["vanilla"][1:5] == ["ok", "0.150 ± 0.050", "0.25 [-0.12, 0.62]", "(reference)"]
    assert table["fairdiffusion"][3:5] == ["0.50 [0.25, 0.75]", "**+0.25 [+0.10, +0.40]**"]  # CI excludes 0: bold
    assert table["vanilla + attribute_switch"][3:5] == ["n/a", "—"]
    assert table["vanilla"][5:] == [
        "0.855 ± 0.125",
        "0.625 ± 0.062",
        "0.035 ± 0.016",
        "0.047 ± 0.010",
        "0.188 ± 0.020",
    ]


def test_undefined_closures_command_and_sections(results):
    md = render_markdown(results)
    assert f"Undefined closures: vanilla + attribute_switch: {NO_ORACLE}" in md
    assert "```\nfairsample study --data demo --profile tiny\n```" in md
    assert "![gap closure, counterfactual](plots/closure_counterfactual.png)" in md
    assert "τ* = 600.0" in md and "kept zero offsets — no better offset" in md
    assert "- a made-up warning (…) — `base/base`" in md
    problem = _section(md, "## The problem this benchmark poses")
    assert problem["counterfactual test set (paired content)"][1:] == [
        "0.250 [0.125, 0.375]",
        "0.062 [0.000, 0.125]",
        "0.188 [0.062, 0.312]",
        "yes",
    ]


def test_every_table_number_is_a_value_of_the_document(results):
    md = render_markdown(results)
    values = _numbers(results)
    shown = table_numbers(md)
    assert len(shown) > 100
    for token in shown:
        x, decimals = float(token), len(token.split(".")[1])
        tol = 0.5 * 10**-decimals + 1e-12
        assert any(abs(v - x) <= tol for v in values), f"{token} in RESULTS.md is not in results"


def test_table_numbers_fmt_and_primary_view():
    md = "text 2.5 outside a table\n| a | 0.125 | -1.50 | 3 | +0.2 |\n"
    assert table_numbers(md) == ["0.125", "-1.50", "+0.2"]
    assert fmt(None) == fmt(float("nan")) == "n/a"
    assert fmt(0.12345) == "0.123" and fmt(0.1, 2, signed=True) == "+0.10"
    assert primary_view({"views": ["counterfactual", "test"]}) == "counterfactual" and primary_view({}) == "test"

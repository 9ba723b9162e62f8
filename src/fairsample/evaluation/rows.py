"""The downstream rows of an evaluation (issue #4, #12): Base, oracle and synthetic rows, their fairness per test view,
minority gaps and gap closure.

Every row trains one classifier per (generator replicate, classifier seed) with
:func:`~fairsample.evaluation.downstream.run_protocol` on the same real split; each classifier predicts the real test
split
(view ``"test"``) and, when given, the counterfactual set (view ``"counterfactual"``). Per view and attribute the row
keeps one :class:`~fairsample.evaluation.fairness_report.FairnessReport` per run, mean ± sd over every (replicate,
seed) of
each metric, the minority gap and worst–best gap per run (:mod:`fairsample.evaluation.closure`), and, for synthetic
rows,
the gap closure against the Base and oracle rows with its hierarchical bootstrap CI. The document layout is described
in :mod:`fairsample.evaluation.evaluate`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fairsample.evaluation.closure import closure_difference, gap_closure, gap_difference, minority_gap, worst_best_gap

if TYPE_CHECKING:
    from fairsample.data.folder import FolderDataset
    from fairsample.evaluation.evaluate import EvaluationSettings, Progress, _Warnings

__all__ = ["ORACLE_LABEL", "RowPlan", "downstream_stage", "plan_rows"]

#: the oracle row's label in every table
ORACLE_LABEL = "oracle (real held-out images)"
_DOWNSTREAM_CLASSIFIER = {"kind": "SmallCNN", "width": 16, "select": "val", "reweight": None}


@dataclass(frozen=True)
class RowPlan:
    """One downstream row: what it trains on."""

    id: str  # "base", "oracle", "real+<name>", "<name>-only"
    label: str  # table label
    kind: str  # "base" | "oracle" | "synthetic"
    protocol: str  # run_protocol protocol ("real_plus_synthetic" for the oracle row)
    name: str | None  # synthetic set name (None for base and oracle)
    sets: tuple[str | None, ...]  # set id per generator replicate ((None,) for base and oracle)


def plan_rows(protocols: Sequence[str], replicates: Mapping[str, Sequence[str]], oracle: bool) -> list[RowPlan]:
    """Base (if ``real_only``), oracle (if given), then per synthetic name its ``real+`` and ``-only`` rows.

    Example:
        >>> [r.id for r in plan_rows(["real_only", "real_plus_synthetic"], {"v": ["v#1", "v#2"]}, True)]
        ['base', 'oracle', 'real+v']
    """
    plan = []
    if "real_only" in protocols:
        plan.append(RowPlan("base", "Base (real only)", "base", "real_only", None, (None,)))
    if oracle:
        plan.append(RowPlan("oracle", ORACLE_LABEL, "oracle", "real_plus_synthetic", None, (None,)))
    for name, ids in replicates.items():
        if "real_plus_synthetic" in protocols:
            plan.append(
                RowPlan(f"real+{name}", f"Real + {name}", "synthetic", "real_plus_synthetic", name, tuple(ids))
            )
        if "synthetic_only" in protocols:
            plan.append(RowPlan(f"{name}-only", f"{name} only", "synthetic", "synthetic_only", name, tuple(ids)))
    return plan


# ------------------------------------------------------------------------------------------------------ views


def _view(
    preds: Sequence[Mapping[str, Any]],
    sensitive: Mapping[str, np.ndarray],
    classes: Sequence[str],
    minority: Mapping[str, str],
    n_replicates: int,
    cfg: EvaluationSettings,
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Per attribute of ``sensitive``: FairnessReports, gaps and their mean ± sd over every (replicate, seed)."""
    from fairsample.evaluation.aggregate import FAIRNESS_METRICS, _mean_sd
    from fairsample.evaluation.fairness_report import fairness_report

    out: dict[str, Any] = {}
    reports: dict[str, list[Any]] = {}
    for a, groups in sensitive.items():
        per_run, docs, gaps, spreads = [], [], [], []
        by_rep: list[list[float | None]] = [[] for _ in range(n_replicates)]
        for p in preds:
            present = sorted(set(p["y_true"]) | set(p["y_pred"]))  # fairness_report's class order
            prob = np.asarray(p["y_prob"], dtype=np.float64)[:, [list(classes).index(c) for c in present]]
            if len(present) < len(classes):
                prob = prob / prob.sum(axis=1, keepdims=True)
            rep = fairness_report(
                p["y_true"],
                p["y_pred"],
                sensitive_features=groups.tolist(),
                scores=prob,
                attribute=a,
                min_per_class=cfg.min_per_class,
                n_resamples=cfg.n_resamples,
                seed=cfg.seed,
            )
            gap = minority_gap(p["y_true"], p["y_pred"], groups, minority[a])
            spread = worst_best_gap(p["y_true"], p["y_pred"], groups)
            per_run.append(rep)
            gaps.append(gap)
            spreads.append(spread)
            by_rep[p["replicate"]].append(gap)
            docs.append(
                {
                    "replicate": p["replicate"],
                    "seed": p["seed"],
                    "selected_epoch": p["selected_epoch"],
                    "minority_gap": gap,
                    "worst_best_gap": spread,
                    "report": rep.to_dict(),
                }
            )
        reports[a] = per_run
        names = [m for m in FAIRNESS_METRICS if m in per_run[0].overall]
        names += [m for m in per_run[0].overall if m not in names]
        summary = {m: _mean_sd([rep.overall.get(m) for rep in per_run]) for m in names}
        summary["minority_gap"] = _mean_sd(gaps)
        summary["worst_best_gap"] = _mean_sd(spreads)
        by_group = {}
        for g in (str(v) for v in per_run[0].by_group.index):
            entry: dict[str, Any] = {"n": int(per_run[0].by_group.loc[g, "n"])}
            for col in ("accuracy", "auc"):
                if col in per_run[0].by_group.columns:
                    entry[col] = _mean_sd([float(rep.by_group.loc[g, col]) for rep in per_run])
            by_group[f"{a}={g}"] = entry
        out[a] = {
            "summary": summary,
            "by_group": by_group,
            "minority": minority[a],
            "minority_gap_by_replicate": by_rep,
            "runs": docs,
        }
    return out, reports


def _by_cell(preds: Sequence[Mapping[str, Any]], cells: np.ndarray) -> dict[str, Any]:
    """Per cell: accuracy mean ± sd over every (replicate, seed)."""
    from fairsample.evaluation.aggregate import _counts, _mean_sd

    out = {}
    for cell, n in _counts(cells).items():
        mask = cells == cell
        accs = [float(np.mean(np.asarray(p["y_pred"])[mask] == np.asarray(p["y_true"])[mask])) for p in preds]
        out[cell] = {"n": n, "accuracy": _mean_sd(accs)}
    return out


# -------------------------------------------------------------------------------------------------------- stage


def _row(
    plan: RowPlan,
    runs: Sequence[Mapping[str, Any]],
    roots: Sequence[str],
    views: Mapping[str, Mapping[str, Any]],
    minority: Mapping[str, str],
    cfg: EvaluationSettings,
) -> tuple[dict[str, Any], dict[str, dict[str, list[Any]]]]:
    """One row's document and its FairnessReports per view (``runs``: one run_protocol output per replicate)."""
    from fairsample.evaluation.aggregate import _mean_sd

    classes = [str(c) for c in runs[0]["classes"]]
    preds: dict[str, list[dict[str, Any]]] = {view: [] for view in views}
    for k, run in enumerate(runs):
        for r in run["runs"]:
            common = {"replicate": k, "seed": r["seed"], "selected_epoch": r["selected_epoch"]}
            preds["test"].append(common | {key: r[key] for key in ("y_true", "y_pred", "y_prob")})
            for view in views:
                if view != "test":
                    preds[view].append(common | r["extra"][view])
    first = runs[0]
    attribute = first["attribute"]
    test_sensitive = views["test"]["sensitive"][attribute].tolist()
    assert all(r["sensitive_features"] == test_sensitive for run in runs for r in run["runs"]), "test split mismatch"
    reports: dict[str, dict[str, list[Any]]] = {}
    blocks: dict[str, Any] = {}
    for view, info in views.items():
        blocks[view], reports[view] = _view(preds[view], info["sensitive"], classes, minority, len(runs), cfg)
    row: dict[str, Any] = {
        "id": plan.id,
        "label": plan.label,
        "kind": plan.kind,
        "protocol": "real_plus_oracle" if plan.kind == "oracle" else plan.protocol,
        "set": plan.name,
        "n_replicates": len(runs),
        "replicates": [
            {
                "set": set_id,
                "root": root,
                "n_train": run["n_train"],
                "n_train_real": run["n_train_real"],
                "n_train_synthetic": run["n_train_synthetic"],
                "selected_epochs": [r["selected_epoch"] for r in run["runs"]],
            }
            for set_id, root, run in zip(plan.sets, roots, runs, strict=True)
        ],
        "n_train": first["n_train"],
        "n_train_real": first["n_train_real"],
        "n_train_synthetic": first["n_train_synthetic"],
        "seeds": [r["seed"] for r in first["runs"]],
        "selected_epochs": [p["selected_epoch"] for p in preds["test"]],
        "test_accuracy": _mean_sd([r["test_accuracy"] for run in runs for r in run["runs"]]),
        "fairness": blocks["test"],
        "by_cell": _by_cell(preds["test"], views["test"]["cells"]),
        "counterfactual": None,
        "gap_closure": None,
    }
    if "counterfactual" in views:
        row["counterfactual"] = {
            "accuracy": _mean_sd([p["accuracy"] for p in preds["counterfactual"]]),
            "fairness": blocks["counterfactual"],
            "by_cell": _by_cell(preds["counterfactual"], views["counterfactual"]["cells"]),
        }
    return row, reports


def _view_block(row: Mapping[str, Any], view: str) -> Mapping[str, Any]:
    return row["fairness"] if view == "test" else row["counterfactual"]["fairness"]


def _closures(
    rows: list[dict[str, Any]],
    view_attrs: Mapping[str, Sequence[str]],
    minority: Mapping[str, str],
    reference: str | None,
    cfg: EvaluationSettings,
) -> dict[str, Any]:
    """Fill ``row["gap_closure"]`` of every synthetic row; return the "problem" block (Base vs oracle per view)."""
    by_id = {r["id"]: r for r in rows}
    base, oracle = by_id.get("base"), by_id.get("oracle")
    options = {"n_resamples": cfg.closure_resamples, "confidence": 0.95, "seed": cfg.seed}
    problem: dict[str, Any] = {}

    def flat(row: Mapping[str, Any] | None, view: str, a: str) -> list[float | None] | None:
        if row is None:
            return None
        return [g for rep in _view_block(row, view)[a]["minority_gap_by_replicate"] for g in rep]

    for view, attrs in view_attrs.items():
        problem[view] = {}
        for a in attrs:
            b, o = flat(base, view, a), flat(oracle, view, a)
            entry = gap_difference(b, o, **options)
            entry["minority"] = minority[a]
            for key, row in (("base", base), ("oracle", oracle)):
                block = _view_block(row, view)[a] if row is not None else None
                entry[f"{key}_by_group"] = block["by_group"] if block else None
                entry[f"{key}_worst_best_gap"] = block["summary"]["worst_best_gap"] if block else None
                entry[f"{key}_accuracy"] = block["summary"]["accuracy"] if block else None
            problem[view][a] = entry
            for row in rows:
                if row["kind"] != "synthetic":
                    continue
                reps = _view_block(row, view)[a]["minority_gap_by_replicate"]
                block = gap_closure(b, o, reps, **options)
                ref = by_id.get(
                    f"real+{reference}" if row["protocol"] == "real_plus_synthetic" else f"{reference}-only"
                )
                if reference is not None and ref is not None and ref["id"] != row["id"]:
                    ref_reps = _view_block(ref, view)[a]["minority_gap_by_replicate"]
                    block["vs_reference"] = {"reference": ref["id"]} | closure_difference(
                        b, o, reps, ref_reps, **options
                    )
                row["gap_closure"] = row["gap_closure"] or {}
                row["gap_closure"].setdefault(view, {})[a] = block
    return problem


def downstream_stage(
    real: FolderDataset,
    sets: Mapping[str, FolderDataset],
    replicates: Mapping[str, Sequence[str]],
    oracle: FolderDataset | None,
    counterfactual: FolderDataset | None,
    cf_attrs: Sequence[str],
    attrs: Sequence[str],
    parts: Mapping[str, np.ndarray],
    minority: Mapping[str, str],
    reference: str | None,
    cfg: EvaluationSettings,
    log: _Warnings,
    say: Progress,
    images: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, list[Any]]], dict[str, dict[str, list[Any]]]]:
    """Every downstream row, each view's fairness, gaps and closures (``images``: ``"real"`` / set id → every row
    already loaded at ``cfg.size``, so each image is decoded once).

    Returns:
        ``(downstream document, test-view reports, counterfactual-view reports)``; reports are row id → attribute →
        one FairnessReport per (replicate, seed), replicate-major.
    """
    from fairsample.evaluation.aggregate import _cell_columns, _counts, _keys
    from fairsample.evaluation.downstream import run_protocol
    from fairsample.evaluation.generative import folder_images

    test_rows = parts["test"]
    cell_cols = _cell_columns(real, attrs)
    views: dict[str, dict[str, Any]] = {
        "test": {
            "sensitive": {a: real.frame[a].astype(str).to_numpy()[test_rows] for a in attrs},
            "cells": _keys(real, cell_cols)[test_rows],
        }
    }
    extra = None
    if counterfactual is not None:
        x_cf = folder_images(counterfactual, size=cfg.size)
        extra = {"counterfactual": (x_cf, counterfactual.frame[real.spec.label].astype(str).tolist())}
        cf_cols = [c for c in cell_cols if c in counterfactual.frame.columns]
        views = {
            "counterfactual": {
                "sensitive": {a: counterfactual.frame[a].astype(str).to_numpy() for a in cf_attrs},
                "cells": _keys(counterfactual, cf_cols),
            },
            **views,
        }
    classifier = dict(
        _DOWNSTREAM_CLASSIFIER,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        size=cfg.size,
    )
    rows: list[dict[str, Any]] = []
    reports: dict[str, dict[str, dict[str, list[Any]]]] = {view: {} for view in views}
    run_cfg: dict[str, Any] = {}
    for plan in plan_rows(cfg.protocols, replicates, oracle is not None):
        runs, roots = [], []
        for k, set_id in enumerate(plan.sets):
            syn = oracle if plan.kind == "oracle" else sets[set_id] if set_id is not None else None
            what = f" (replicate {k + 1}/{len(plan.sets)}: {set_id})" if len(plan.sets) > 1 else ""
            say(f"downstream {plan.label}{what}: {len(cfg.seeds)} seeds x {cfg.epochs} epochs")
            with log.stage(f"downstream ({plan.label})"):
                run = run_protocol(
                    real,
                    syn,
                    protocol=plan.protocol,  # type: ignore[arg-type]
                    seeds=cfg.seeds,
                    size=cfg.size,
                    epochs=cfg.epochs,
                    attribute=attrs[0],
                    split_seed=cfg.seed,
                    fractions=cfg.fractions,
                    batch_size=cfg.batch_size,
                    learning_rate=cfg.learning_rate,
                    allow_few_seeds=cfg.allow_few_seeds,
                    extra_tests=extra,
                    real_images=(images or {}).get("real"),
                    synthetic_images=(images or {}).get(set_id) if set_id is not None else None,
                )
            run_cfg = run["config"]
            runs.append(run)
            roots.append(str(syn.root) if syn is not None else None)
        with log.stage(f"downstream ({plan.label})"):
            row, row_reports = _row(plan, runs, roots, views, minority, cfg)
        rows.append(row)
        for view in views:
            reports[view][plan.id] = row_reports[view]
    view_attrs = {view: list(info["sensitive"]) for view, info in views.items()}
    with log.stage("gap closure"):
        problem = _closures(rows, view_attrs, minority, reference, cfg)
    blob = json.dumps(run_cfg | {"classifier": classifier}, sort_keys=True).encode()
    classifier["config_hash"] = hashlib.sha256(blob).hexdigest()
    classifier["weights"] = "not kept; training is deterministic in (data, config, seed), see config_hash"
    n_by_group = {a: {s: _counts(_keys(real.subset(parts[s]), [a])) for s in ("train", "val", "test")} for a in attrs}
    doc = {
        "split": {
            "seed": cfg.seed,
            "fractions": list(cfg.fractions),
            "sizes": {s: int(len(parts[s])) for s in ("train", "val", "test")},
            "n_by_group": n_by_group,
        },
        "classifier": classifier,
        "protocol_config": run_cfg,
        "views": list(views),
        "view_attributes": view_attrs,
        "reference": reference,
        "problem": problem,
        "rows": rows,
    }
    return doc, reports["test"], reports.get("counterfactual", {})

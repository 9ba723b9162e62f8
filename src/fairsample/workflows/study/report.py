"""``results.json``, ``RESULTS.md`` and plots of a study.

:func:`build_results` assembles every number from the cell markers and the one evaluation report (schema
``fairsample.evaluation/2``); :func:`render_markdown` and :func:`write_plots` read **only** that document, so each
value of ``RESULTS.md`` (and of the plots) is in ``results.json``, next to the cell folder it came from.

Rows: ``base`` (real only), ``oracle`` (real + real held-out images in the augmentation plan's numbers), then one row
per set (method × sampler), each over its generator replicates. Per view (``counterfactual`` first, then ``test``):
the minority gap, gap closure with its CI, the closure difference to vanilla with its CI, and Table-1 metrics.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairsample.core.markdown import pipe_table
from fairsample.evaluation.metric_info import name as metric_name

__all__ = ["build_results", "fmt", "primary_view", "render_markdown", "table_numbers", "write_plots"]

SCHEMA = "fairsample.workflows.study/2"
#: Table-1 columns: keys in the evaluation summary (heading and direction: :mod:`fairsample.evaluation.metric_info`).
TABLE1_METRICS: tuple[str, ...] = ("accuracy", "essp", "dp_gap", "eopp_gap", "nar")
_STAGES = ("base", "prefs", "oracle", "train", "curve", "export", "tau", "perturbation", "generate", "evaluate")
_STAGE_TEXT = {
    "base": "shared base (from scratch, without the minority)",
    "prefs": "FairGen proxy preference pairs (from the base)",
    "oracle": "oracle set (real holdout images)",
    "train": "fine-tuning + conditioning guard (every model)",
    "curve": "vanilla's minority-fidelity curve",
    "export": "engine export (cached per model)",
    "tau": "τ search (attribute_switch)",
    "perturbation": "perturbation search (fairdiffusion_perturbed)",
    "generate": "generation (augmentation sets)",
    "evaluate": "evaluation (one call: every set, oracle, both views)",
}
_VIEW_TEXT = {"counterfactual": "counterfactual test set (paired content)", "test": "real test split"}


def fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    """A number as shown in RESULTS.md (``n/a`` for None / NaN)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def primary_view(results: Mapping[str, Any]) -> str:
    """The first test view of the study (``counterfactual`` when the study had one)."""
    return (results.get("views") or ["test"])[0]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------- results


def _stat(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not entry:
        return None
    return {k: entry.get(k) for k in ("mean", "sd", "n", "values", "ci") if k in entry}


def _view_block(row: Mapping[str, Any], view: str, attr: str) -> dict[str, Any] | None:
    """One row's numbers on one view: metrics, minority gap, per-group accuracy, closure."""
    if view == "test":
        fair = (row.get("fairness") or {}).get(attr)
    else:
        fair = ((row.get("counterfactual") or {}).get("fairness") or {}).get(attr)
    if not fair:
        return None
    summary = fair.get("summary") or {}
    closure = ((row.get("gap_closure") or {}).get(view) or {}).get(attr)
    block: dict[str, Any] = {
        "metrics": {k: _stat(summary.get(k)) for k in TABLE1_METRICS},
        "minority_gap": _stat(summary.get("minority_gap")),
        "worst_best_gap": _stat(summary.get("worst_best_gap")),
        "minority_gap_by_replicate": fair.get("minority_gap_by_replicate"),
        "accuracy_by_group": {g: v.get("accuracy") for g, v in (fair.get("by_group") or {}).items()},
        "closure": None,
    }
    if closure:
        vs = closure.get("vs_reference") or {}
        block["closure"] = {
            "value": closure.get("value"),
            "ci": closure.get("ci"),
            "defined": closure.get("defined"),
            "reason": closure.get("reason"),
            "row_gap": closure.get("row_gap"),
            "vs_vanilla": None
            if not vs or vs.get("value") is None and vs.get("reason") is None
            else {
                "value": vs.get("value"),
                "ci": vs.get("ci"),
                "excludes_zero": vs.get("excludes_zero"),
                "reason": vs.get("reason"),
            },
        }
    return block


def _guard_of(marker: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The conditioning guard recorded by a train cell, reduced to what the tables show."""
    if not marker:
        return None
    g = (marker.get("outputs") or {}).get("conditioning_guard")
    if not g:
        return {"flag": "unchecked", "reasons": ["no conditioning_guard in the bundle"]}
    scores = g.get("scores") or {}
    return {
        "flag": g.get("flag"),
        "reasons": g.get("reasons") or [],
        "setting": g.get("setting"),
        "overall": scores.get("overall"),
        "by_group": scores.get("by_group"),
        "ber": scores.get("ber"),
        "reference": {k: (g.get("reference") or {}).get(k) for k in ("kind", "overall", "by_group")},
        "seconds": g.get("seconds"),
    }


def _worst_flag(flags: Sequence[str | None]) -> str:
    order = ["collapsed", "degraded", "unchecked", "ok"]
    present = [f for f in flags if f]
    return min(present, key=lambda f: order.index(f) if f in order else 0) if present else "n/a"


def build_results(
    *,
    ctx: Any,
    markers: Mapping[str, Mapping[str, Any]],
    identity: Mapping[str, Any],
    command: str | None,
    versions: Mapping[str, str],
    run: Mapping[str, Any],
    invocations: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The ``results.json`` document (see the module docstring)."""
    plan, root, attr = ctx.plan, ctx.root, ctx.plan.attribute
    eval_marker = markers["evaluate/all"]
    report_path = root / eval_marker["outputs"]["report"]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report_rel = _rel(report_path, root)
    down = report["downstream"]
    views = list(down.get("views") or ["test"])
    rows_by_id = {r["id"]: r for r in down["rows"]}

    def folder(cell_id: str) -> str | None:
        return f"cells/{cell_id}" if cell_id in markers else None

    # 1. models: guard, selected sampling, method status
    models: dict[str, Any] = {}
    for model in plan.models:
        m = markers.get(f"train/{model}") or {}
        out = m.get("outputs") or {}
        method = out.get("method") or {}
        models[model] = {
            "method": model.split("@")[0],
            "seed": int(model.split("@")[1]),
            "method_status": out.get("method_status"),
            "method_config": method,
            "guard": _guard_of(m),
            "sampling": out.get("sampling"),
            "train": folder(f"train/{model}"),
            "final_loss": out.get("final_loss"),
        }
    base_marker = markers.get("base/base")
    base = None
    if base_marker is not None:
        base = {
            "cell": "cells/base/base",
            **{
                k: base_marker["outputs"].get(k)
                for k in ("n_images", "minority", "minority_images", "minority_in_train_split", "steps", "final_loss")
            },
            "guard": _guard_of(base_marker),
        }
    # 2. rows: base, oracle, then every set over its replicates
    rows: list[dict[str, Any]] = []
    for rid, label, kind in (
        ("base", "Base (real only)", "base"),
        ("oracle", "oracle (real held-out images)", "oracle"),
    ):
        r = rows_by_id.get(rid)
        if r is None:
            continue
        rows.append(
            {
                "id": rid,
                "label": label,
                "kind": kind,
                "method": None,
                "sampler": None,
                "guard": None,
                "replicates": [],
                "n_train_synthetic": r.get("n_train_synthetic"),
                "views": {v: _view_block(r, v, attr) for v in views},
                "sources": {"evaluation": f"{report_rel}#downstream.rows[id={rid}]"},
            }
        )
    for name, method, sampler in plan.sets:
        r = rows_by_id.get(f"real+{name}")
        if r is None:
            continue
        reps = [f"{method}@{s}" for s in plan.generator_seeds]
        flags = [(models.get(m) or {}).get("guard", {}) or {} for m in reps]
        label = method if sampler == "conditional" else f"{method} + {sampler}"
        status = {models[m]["method_status"] for m in reps if m in models} - {None}
        if sampler == "fairdiffusion_perturbed":
            status = {"project-extension"}
        rows.append(
            {
                "id": name,
                "label": label,
                "kind": "synthetic",
                "method": method,
                "sampler": sampler,
                "method_status": sorted(status)[0] if len(status) == 1 else sorted(status),
                "guard": _worst_flag([f.get("flag") for f in flags]),
                "guard_by_replicate": {m: (f.get("flag") or "n/a") for m, f in zip(reps, flags, strict=True)},
                "replicates": reps,
                "n_train_synthetic": r.get("n_train_synthetic"),
                "views": {v: _view_block(r, v, attr) for v in views},
                "sources": {
                    "train": [folder(f"train/{m}") for m in reps],
                    "generate": [folder(f"generate/{name}@{s}") for s in plan.generator_seeds],
                    "evaluation": f"{report_rel}#downstream.rows[id=real+{name}]",
                },
            }
        )
    # 3. the problem: Base vs oracle per view, vanilla's fidelity by group, the curve
    problem = {v: (down.get("problem") or {}).get(v, {}).get(attr) for v in views}
    curve = None
    for cell_id, marker in markers.items():
        if cell_id.startswith("curve/"):
            curve = {"model": cell_id.split("/", 1)[1], **(marker.get("outputs") or {})}
    # 4. generative summary per set name (mean ± sd over replicates)
    generative = []
    for name, _, _ in plan.sets:
        g = (report.get("generative_summary") or {}).get(name)
        b = ((report.get("ber") or {}).get("summary") or {}).get(name, {}).get(attr) or {}
        if g is None:
            continue
        by = (g.get("by") or {}).get(attr) or {}
        generative.append(
            {
                "id": name,
                "fid": _stat(g.get("fid")),
                "kid": _stat(g.get("kid")),
                "fid_by_group": {k: _stat(v) for k, v in (by.get("fid_by_group") or {}).items()},
                "ber": _stat(b.get("ber")),
                "ber_real_trained": _stat(b.get("real_trained_ber")),
            }
        )
    # 5. samplers: τ* and the perturbation decision per model
    samplers: list[dict[str, Any]] = []
    for cell_id, marker in sorted(markers.items()):
        kind, model = cell_id.split("/", 1)
        if kind == "tau":
            o = marker["outputs"]
            samplers.append(
                {
                    "model": model,
                    "kind": "tau",
                    "tau_star": o.get("tau_star"),
                    "search_steps": o.get("search_steps"),
                    "pairs": o.get("pairs"),
                    "plot": o.get("plot"),
                }
            )
        elif kind == "perturbation":
            o = marker["outputs"]
            held = o.get("held_out") or {}
            samplers.append(
                {
                    "model": model,
                    "kind": "perturbation",
                    "kept": o.get("kept"),
                    "searched": o.get("searched"),
                    "reason": o.get("reason"),
                    "gain": held.get("mean_gain", held.get("mean")),
                    "se": held.get("se"),
                }
            )
    # 6. timings, cells, warnings
    stages: dict[str, dict[str, Any]] = {}
    for cell_id, marker in markers.items():
        kind = cell_id.split("/", 1)[0]
        s = stages.setdefault(kind, {"cells": 0, "seconds": 0.0})
        s["cells"] += 1
        s["seconds"] = round(s["seconds"] + float(marker.get("seconds", 0.0)), 3)
        s["minutes"] = round(s["seconds"] / 60.0, 3)
    total_seconds = round(sum(s["seconds"] for s in stages.values()), 3)
    warns = [{"cell": cid, "message": msg} for cid, m in markers.items() for msg in m.get("warnings", [])]
    warns += [
        {"cell": "evaluate/all", "message": f"{w.get('where')}: {w.get('message')}"}
        for w in report.get("warnings", [])
    ]
    prof = plan.profile
    return {
        "schema": SCHEMA,
        "command": command,
        "identity": dict(identity),
        "attribute": attr,
        "minority": ctx.minority,
        "views": views,
        "profile": prof.to_dict(),
        "grid": plan.to_dict(),
        "base": base,
        "models": models,
        "problem": problem,
        "curve": curve,
        "rows": rows,
        "generative": generative,
        "samplers": samplers,
        "augmentation": (markers.get("oracle/oracle") or {}).get("outputs", {}).get("counts")
        or (eval_marker.get("settings") or {}),
        "evaluation": {
            "report": report_rel,
            "cell": "cells/evaluate/all",
            "seconds_by_stage": eval_marker["outputs"].get("seconds_by_stage"),
            "closure_bootstrap": (report.get("definitions") or {}).get("closure"),
        },
        "cells": {
            cid: {
                "seconds": m.get("seconds"),
                "attempt": m.get("attempt"),
                "started": m.get("started"),
                "finished": m.get("finished"),
                "warnings": m.get("warnings", []),
            }
            for cid, m in markers.items()
        },
        "timings": {
            "stages": stages,
            "total_seconds": total_seconds,
            "total_minutes": round(total_seconds / 60, 3),
            "this_run": dict(run),
            "invocations": list(invocations),
        },
        "versions": dict(versions),
        "warnings": warns,
    }


# ------------------------------------------------------------------------------------------------------ plots


def write_plots(results: Mapping[str, Any], root: Path) -> dict[str, str]:
    """Copy the evaluation plots and the curve to ``S/plots/`` and draw ``closure_<view>.png`` per view."""
    out_dir = root / "plots"
    out_dir.mkdir(exist_ok=True)
    plots: dict[str, str] = {}
    report_dir = (root / results["evaluation"]["report"]).parent
    for png in sorted((report_dir / "plots").glob("*.png")):
        shutil.copyfile(png, out_dir / png.name)
        plots[png.stem] = f"plots/{png.name}"
    curve = results.get("curve") or {}
    if curve.get("plot") and (root / curve["plot"]).is_file():
        shutil.copyfile(root / curve["plot"], out_dir / "curve.png")
        plots["curve"] = "plots/curve.png"
    for view in results["views"]:
        plots[f"closure_{view}"] = _plot_closure(results, view, out_dir / f"closure_{view}.png")
    return plots


def _plot_closure(results: Mapping[str, Any], view: str, path: Path) -> str:
    from matplotlib.figure import Figure

    rows = [r for r in results["rows"] if r["kind"] == "synthetic"]
    fig = Figure(figsize=(6.4, 0.34 * len(rows) + 1.4), dpi=110, layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows, strict=True):
        c = ((r["views"].get(view) or {}).get("closure")) or {}
        if c.get("value") is None:
            ax.text(0, y, "undefined", fontsize=7, va="center", color="0.4")
            continue
        lo, hi = c.get("ci") or [c["value"], c["value"]]
        color = (
            "#d62728"
            if r.get("guard") in ("collapsed", "degraded")
            else ("#1f77b4" if r["sampler"] == "conditional" else "#ff7f0e")
        )
        ax.errorbar(c["value"], y, xerr=[[c["value"] - lo], [hi - c["value"]]], fmt="o", color=color, capsize=3, ms=4)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.axvline(1, color="#2ca02c", lw=0.8, ls="--")
    ax.set_yticks(ys)
    ax.set_yticklabels(
        [f"{r['label']}{' [' + r['guard'] + ']' if r.get('guard') not in ('ok', None) else ''}" for r in rows],
        fontsize=8,
    )
    ax.set_xlabel("gap closure (0 = Base, 1 = oracle); 95 % CI over generator and classifier seeds", fontsize=8)
    ax.set_title(f"Minority-gap closure — {_VIEW_TEXT.get(view, view)}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)
    return f"plots/{path.name}"


# --------------------------------------------------------------------------------------------------- markdown


def _pm(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    if entry.get("sd") is None:
        return fmt(entry["mean"], digits)
    return f"{fmt(entry['mean'], digits)} ± {fmt(entry['sd'], digits)}"


def _ci(value: Any, ci: Sequence[Any] | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if not ci or ci[0] is None:
        return fmt(value, digits, signed)
    return f"{fmt(value, digits, signed)} [{fmt(ci[0], digits, signed)}, {fmt(ci[1], digits, signed)}]"


def _gap_ci(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    return _ci(entry["mean"], entry.get("ci"), 3)


def _group_name(key: str) -> str:
    return key.split("=", 1)[1] if "=" in key else key


def _problem(results: Mapping[str, Any]) -> list[str]:
    lines = ["## The problem this benchmark poses", ""]
    attr, minority = results["attribute"], results["minority"]
    lines += [
        f"Minority: `{attr}={minority}` (the value with the fewest real training images). Minority gap = "
        "accuracy of the other groups pooled − accuracy of the minority, of a classifier trained on the real "
        "train split (Base) or on it plus real held-out images in the augmentation plan's numbers (oracle); "
        "mean [95 % CI] over classifier seeds.",
        "",
    ]
    rows = []
    for view in results["views"]:
        p = results["problem"].get(view) or {}
        if not p:
            continue
        diff = p.get("difference") or {}
        rows.append(
            [
                _VIEW_TEXT.get(view, view),
                _gap_ci(p.get("base_gap")),
                _gap_ci(p.get("oracle_gap")),
                _ci(diff.get("mean"), diff.get("ci"), 3),
                "yes" if p.get("closable") else f"no: {p.get('reason')}",
            ]
        )
    lines += pipe_table(["view", "Base gap", "oracle gap", "Base − oracle", "closable"], rows, "lrrrl")
    for view in results["views"]:
        p = results["problem"].get(view) or {}
        if not p:
            continue
        groups = sorted(set(p.get("base_by_group") or {}) | set(p.get("oracle_by_group") or {}))
        if not groups:
            continue
        lines += ["", f"Accuracy per group, {_VIEW_TEXT.get(view, view)} (mean ± sd over seeds):", ""]
        grows = []
        for name, key in (("Base (real only)", "base_by_group"), ("oracle", "oracle_by_group")):
            by = p.get(key) or {}
            grows.append([name] + [_pm((by.get(g) or {}).get("accuracy")) for g in groups])
        lines += pipe_table(["row", *[_group_name(g) for g in groups]], grows)
    return lines


def _fidelity(results: Mapping[str, Any]) -> list[str]:
    attr, minority = results["attribute"], results["minority"]
    lines = [
        "",
        "## Fidelity: what each generator draws (conditioning guard)",
        "",
        "Fraction of each model's validation samples (seeds 900000+, the guard's selected setting) whose "
        f"requested label / {attr} the judges (classifiers trained on real images) recover, per {attr} value; "
        "flag = the guard's verdict against the model's starting point (the shared base).",
        "",
    ]
    groups: list[str] = []
    for m in results["models"].values():
        for g in (m.get("guard") or {}).get("by_group") or {}:
            if g.startswith(f"{attr}=") and g not in groups:
                groups.append(g)
    groups.sort(key=lambda g: (g != f"{attr}={minority}", g))
    header = [
        "model",
        "flag",
        "setting",
        *[f"label {_group_name(g)}" for g in groups],
        *[f"{attr} {_group_name(g)}" for g in groups],
    ]
    rows = []
    entries = []
    if results.get("base"):
        entries.append(("base", results["base"].get("guard")))
    entries += [(name, m.get("guard")) for name, m in results["models"].items()]
    for name, g in entries:
        g = g or {}
        by = g.get("by_group") or {}
        s = g.get("setting") or {}
        setting = (
            "n/a"
            if not s
            else f"w={s.get('guidance_scale'):g}"
            + (f", φ={s['guidance_rescale']:g}" if s.get("guidance_rescale") else "")
        )
        label = next(iter((g.get("overall") or {}).keys()), None)
        rows.append(
            [
                name,
                g.get("flag") or "n/a",
                setting,
                *[fmt((by.get(x) or {}).get(label)) if label else "n/a" for x in groups],
                *[fmt((by.get(x) or {}).get(attr)) for x in groups],
            ]
        )
    lines += pipe_table(header, rows)
    curve = results.get("curve")
    if curve and curve.get("points"):
        lines += [
            "",
            f"### Vanilla's minority fidelity over fine-tuning ({curve['model']})",
            "",
            f"Plateau (first step from which the minority label accuracy stays within 2 binomial SE of the "
            f"last point): step {curve.get('plateau')}. Step 0 is the shared base.",
            "",
        ]
        lines += pipe_table(
            ["step", f"label {minority}", "label others", f"{attr} {minority}", f"{attr} others"],
            [
                [
                    str(p["step"]),
                    fmt(p.get("minority_label")),
                    fmt(p.get("others_label")),
                    fmt(p.get("minority_attribute")),
                    fmt(p.get("others_attribute")),
                ]
                for p in curve["points"]
            ],
        )
        lines += ["", "![vanilla's minority fidelity curve](plots/curve.png)"]
    return lines


def _rows_table(results: Mapping[str, Any], view: str) -> list[str]:
    lines = [
        "",
        f"## Gap closure — {_VIEW_TEXT.get(view, view)}",
        "",
        "Each row adds its generator's synthetic set (or, for the oracle, real held-out images) to the real "
        "train split. Gap closure = (Base gap − row gap) / (Base gap − oracle gap): 0 = no better than real "
        "data alone, 1 = as good as real minority images; [95 % CI] from a hierarchical bootstrap over "
        "generator seeds and classifier seeds. Δ vs vanilla = closure − vanilla's closure, same bootstrap; "
        "**bold** when its CI excludes 0. Other columns: mean ± sd over every (generator, classifier) seed.",
        "",
    ]
    header = ["Row", "guard", metric_name("minority_gap"), metric_name("gap_closure"), "Δ vs vanilla"]
    header += [metric_name(k) for k in TABLE1_METRICS]
    rows = []
    for r in results["rows"]:
        v = r["views"].get(view) or {}
        c = v.get("closure") or {}
        vs = c.get("vs_vanilla") or {}
        closure = _ci(c.get("value"), c.get("ci")) if c else ("—" if r["kind"] != "synthetic" else "n/a")
        if r["kind"] == "base":
            closure = "0 (by definition)"
        elif r["kind"] == "oracle":
            closure = "1 (by definition)"
        delta = "—"
        if r["kind"] == "synthetic" and r["method"] == "vanilla" and r["sampler"] == "conditional":
            delta = "(reference)"
        elif vs:
            delta = _ci(vs.get("value"), vs.get("ci"), signed=True)
            if vs.get("excludes_zero"):
                delta = f"**{delta}**"
        metrics = v.get("metrics") or {}
        rows.append(
            [
                r["label"],
                r.get("guard") or "—",
                _pm(v.get("minority_gap")),
                closure,
                delta,
                *[_pm(metrics.get(k)) for k in TABLE1_METRICS],
            ]
        )
    lines += pipe_table(header, rows, "ll" + "r" * (len(header) - 2))
    undefined = [
        r
        for r in results["rows"]
        if r["kind"] == "synthetic" and ((r["views"].get(view) or {}).get("closure") or {}).get("reason")
    ]
    if undefined:
        lines += [
            "",
            "Undefined closures: "
            + "; ".join(f"{r['label']}: {r['views'][view]['closure']['reason']}" for r in undefined[:3]),
        ]
    groups = sorted(
        {g for r in results["rows"] for g in ((r["views"].get(view) or {}).get("accuracy_by_group") or {})}
    )
    if groups:
        lines += ["", f"Accuracy per group ({_VIEW_TEXT.get(view, view)}), mean ± sd:", ""]
        grows = []
        for r in results["rows"]:
            by = (r["views"].get(view) or {}).get("accuracy_by_group") or {}
            grows.append(
                [r["label"], *[_pm(by.get(g)) if isinstance(by.get(g), dict) else fmt(by.get(g)) for g in groups]]
            )
        lines += pipe_table(["Row", *[_group_name(g) for g in groups]], grows)
    return lines


def _generative(results: Mapping[str, Any]) -> list[str]:
    gen = results.get("generative") or []
    if not gen:
        return []
    groups = sorted({g for row in gen for g in row["fid_by_group"]})
    lines = [
        "",
        "## Generative table",
        "",
        "FID / KID in the evaluation's domain feature space (not Inception), mean ± sd over generator seeds; "
        "per-group FID is size-matched and only defined for groups the augmentation set contains; BER = 1 − "
        "balanced accuracy of a fresh attribute classifier on the set (higher = attribute harder to recover).",
        "",
    ]
    rows = [
        [
            g["id"],
            _pm(g["fid"]),
            _pm(g["kid"]),
            *[_pm(g["fid_by_group"].get(x)) for x in groups],
            _pm(g["ber"]),
            _pm(g["ber_real_trained"]),
        ]
        for g in gen
    ]
    fid, kid, ber = (metric_name(k) for k in ("fid", "kid", "ber"))
    lines += pipe_table(
        ["Set", fid, kid, *[f"{fid} {_group_name(x)}" for x in groups], ber, f"{ber} (real clf)"], rows
    )
    return lines


def _samplers(results: Mapping[str, Any]) -> list[str]:
    items = results.get("samplers") or []
    if not items:
        return []
    lines = ["", "## Sampler notes", ""]
    for s in items:
        if s["kind"] == "tau":
            lines.append(
                f"- attribute_switch on {s['model']}: τ* = {s['tau_star']} (argmin of the mean J(τ) over "
                f"ordered {results['attribute']} pairs, {s.get('search_steps')}-step DDIM search "
                "schedule)."
            )
        else:
            reason = s.get("reason") or ""
            lines.append(
                f"- fairdiffusion_perturbed on {s['model']}: kept {s.get('kept')} offsets"
                f"{' — ' + reason if reason else ''} (project-extension)."
            )
    return lines


def _settings(results: Mapping[str, Any]) -> list[str]:
    p = results["profile"]
    base = results.get("base") or {}
    rows = [
        [
            "shared base",
            f"{p['architecture']} from scratch, {p['base_steps']} steps, lr {p['base_learning_rate']:g}, "
            f"minority images kept: {base.get('minority_images', 'n/a')} "
            f"of {base.get('minority_in_train_split', 'n/a')}"
            if base
            else f"user-named: {results['identity'].get('base')}",
        ],
        [
            "fine-tuning (every method)",
            f"{p['train_steps']} steps, batch {p['batch_size']}, lr {p['learning_rate']:g} "
            f"(warmup {p['lr_warmup_steps']}, cosine), generator seeds {p['generator_seeds']}, EMA weights",
        ],
        [
            "augmentation",
            f"water-filling of the real train split to {p['augment_total']} synthetic images "
            "(the same cells and seeds for every set); oracle = the same numbers of real holdout images",
        ],
        [
            "generation",
            f"DDIM {p['sample_steps']} steps, each model's guard-selected guidance, backend "
            f"{results['identity'].get('backend')}",
        ],
        [
            "downstream",
            f"SmallCNN, {p['eval_epochs']} epochs, val-selected, classifier seeds {results['grid']['seeds']}",
        ],
        [
            "workers",
            f"{results['timings']['this_run'].get('workers')} process(es), torch threads "
            f"{results['timings']['this_run'].get('torch_threads') or 'default'} each; evaluation: "
            f"{results['timings']['this_run'].get('eval_threads', 'n/a')} threads",
        ],
    ]
    return ["", "## Settings", "", *pipe_table(["What", "Setting"], rows, "ll")]


def _timings(results: Mapping[str, Any]) -> list[str]:
    stages = results["timings"]["stages"]
    rows = [
        [_STAGE_TEXT.get(k, k), str(stages[k]["cells"]), fmt(stages[k]["seconds"], 1), fmt(stages[k]["minutes"], 1)]
        for k in _STAGES
        if k in stages
    ]
    t = results["timings"]
    rows.append(["**sum of cells**", "", fmt(t["total_seconds"], 1), fmt(t["total_minutes"], 1)])
    run = results["timings"]["this_run"]
    lines = [
        "",
        "## Wall time per stage",
        "",
        "Seconds inside each cell, summed; with several workers the cells overlap, so the sum exceeds the wall time.",
        "",
        *pipe_table(["Stage", "Cells", "Seconds", "Minutes"], rows),
        "",
        f"This invocation: {fmt(run['wall_seconds'], 1)} s wall, {len(run['ran'])} cells computed, "
        f"{len(run['skipped'])} found complete; load average {run['load_average']}.",
        "",
        "Every invocation on this study folder:",
        "",
    ]
    for inv in results["timings"]["invocations"]:
        if inv.get("event") == "end":
            lines.append(
                f"- {inv.get('time')}: {fmt(inv.get('wall_seconds'), 1)} s wall, {inv.get('ran')} cells "
                f"computed, {inv.get('skipped')} found complete"
            )
    return lines


def _trace(results: Mapping[str, Any]) -> list[str]:
    rows = []
    for r in results["rows"]:
        src = r.get("sources") or {}
        folders = ", ".join(f"`{f}`" for f in [*src.get("train", []), *src.get("generate", [])] if f) or "—"
        rows.append([r["label"], folders, f"`{src.get('evaluation')}`"])
    return [
        "",
        "## Where every number comes from",
        "",
        *pipe_table(["Row", "Run folders", "Evaluation entry"], rows, "lll"),
    ]


def _grouped_warnings(items: Sequence[Mapping[str, Any]]) -> list[str]:
    groups: dict[str, list[str]] = {}
    for w in items:
        text = re.sub(r"\([^()]*\)", "(…)", str(w["message"]))[:300]
        groups.setdefault(text, [])
        if w["cell"] not in groups[text]:
            groups[text].append(w["cell"])
    out = []
    for text, cells in groups.items():
        more = f" and {len(cells) - 3} more" if len(cells) > 3 else ""
        out.append(f"- {text} — {', '.join(f'`{c}`' for c in cells[:3])}{more}")
    return out


def render_markdown(results: Mapping[str, Any]) -> str:
    """``RESULTS.md``: problem, fidelity, gap closure per view, generative table, settings, timings (every number
    from ``results``)."""
    p = results["profile"]
    ident = results["identity"]
    lines = [
        f"# fairsample study: does fair generation close the minority gap? ({results['attribute']})",
        "",
        f"Profile **{p['name']}** — {p['description']}. Data: `{ident['data']}` (attribute "
        f"`{results['attribute']}`, minority `{results['minority']}`); counterfactual test set: "
        f"`{ident.get('counterfactual')}`; oracle pool: `{ident.get('holdout')}`. Every number below is in "
        "`results.json` next to the run folder it came from.",
        "",
        "Reproduce with:",
        "",
        "```",
        results.get("command") or "fairsample study ...",
        "```",
        "",
    ]
    lines += _problem(results)
    lines += _fidelity(results)
    for view in results["views"]:
        lines += _rows_table(results, view)
    plots = results.get("plots") or {}
    for view in results["views"]:
        if f"closure_{view}" in plots:
            lines += ["", f"![gap closure, {view}]({plots[f'closure_{view}']})"]
    lines += _generative(results)
    lines += _samplers(results)
    lines += _settings(results)
    lines += _timings(results)
    lines += _trace(results)
    v = results["versions"]
    lines += ["", "## Versions", "", ", ".join(f"{k} {val}" for k, val in v.items())]
    if results.get("warnings"):
        lines += ["", "## Warnings raised during the run", "", *_grouped_warnings(results["warnings"])]
    return "\n".join(lines) + "\n"


def table_numbers(markdown: str) -> list[str]:
    """Every decimal number in the Markdown tables (for the "every number is in results.json" test)."""
    out = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            out += re.findall(r"[-+]?\d+\.\d+", line)
    return out

"""``results.json``, ``RESULTS.md`` and plots of a study (:mod:`fairsample.study`).

:func:`build_results` assembles every number from the cell markers and the one evaluation report;
:func:`render_markdown` and :func:`write_plots` read **only** that document, so each value of ``RESULTS.md`` (and of
the plots) is in ``results.json``, next to the cell folder it came from.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairsample.study import SCHEMA, TABLE1_METRICS, StudyPlan, pooled_sd

__all__ = ["build_results", "fmt", "render_markdown", "write_plots"]

_STAGES = ("base", "prefs", "train", "export", "tau", "perturbation", "generate", "evaluate")
_STAGE_TEXT = {
    "base": "base model (trained from scratch)",
    "prefs": "FairGen proxy preference pairs",
    "train": "fine-tuning (every method)",
    "export": "engine export (cached per model)",
    "tau": "τ search (attribute_switch)",
    "perturbation": "perturbation search (fairdiffusion_perturbed)",
    "generate": "generation (balanced sets)",
    "evaluate": "evaluation (one call, every set)",
}
_SAMPLER_TEXT = {"attribute_switch": "attribute_switch", "fairdiffusion_perturbed": "fairdiffusion_perturbed"}


def fmt(x: Any, digits: int = 3, signed: bool = False) -> str:
    """A number as shown in RESULTS.md (``n/a`` for None / NaN)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------- results


def _summary(row: Mapping[str, Any], attr: str) -> dict[str, Any]:
    summary = row["fairness"][attr]["summary"]
    out = {}
    for key, _, _ in TABLE1_METRICS:
        s = summary.get(key) or {}
        out[key] = {"mean": s.get("mean"), "sd": s.get("sd"), "n": s.get("n"), "values": s.get("values")}
    for key in ("auc", "eodds_gap", "es_acc", "pqd"):
        if key in summary:
            s = summary[key]
            out[key] = {"mean": s.get("mean"), "sd": s.get("sd"), "n": s.get("n"), "values": s.get("values")}
    return out


def _deltas(rows: list[dict[str, Any]]) -> None:
    """Δ vs the vanilla row per Table-1 metric, with the pooled sd and the within-noise flag."""
    ref = next((r for r in rows if r["id"] == "vanilla"), None)
    for row in rows:
        row["delta_vs_vanilla"] = {}
        if ref is None:
            continue
        for key, _, better in TABLE1_METRICS:
            a, b = row["metrics"][key], ref["metrics"][key]
            if a["mean"] is None or b["mean"] is None:
                row["delta_vs_vanilla"][key] = {"delta": None, "pooled_sd": None, "within_noise": None}
                continue
            delta = a["mean"] - b["mean"]
            psd = pooled_sd(a["sd"], b["sd"])
            within = None if psd is None else (abs(delta) < psd or delta == 0)
            direction = None
            if delta != 0:
                direction = "better" if (delta > 0) == (better == "higher") else "worse"
            row["delta_vs_vanilla"][key] = {"delta": delta, "pooled_sd": psd, "within_noise": within,
                                            "direction": direction}  # fmt: skip


def build_results(
    *,
    plan: StudyPlan,
    root: Path,
    markers: Mapping[str, Mapping[str, Any]],
    data: Any,
    identity: Mapping[str, Any],
    command: str | None,
    versions: Mapping[str, str],
    run: Mapping[str, Any],
    invocations: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The ``results.json`` document (see the module docstring of :mod:`fairsample.study`)."""
    attr = plan.attribute
    eval_marker = markers["evaluate/all"]
    report_path = root / eval_marker["outputs"]["report"]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report_rel = _rel(report_path, root)
    rows_by_id = {r["id"]: r for r in report["downstream"]["rows"]}

    def folder(cell_id: str) -> str | None:
        return f"cells/{cell_id}" if cell_id in markers else None

    # 1. Table 1: Base, the methods (conditional), then the sampler rows
    table1: list[dict[str, Any]] = []
    base = rows_by_id["base"]
    table1.append({"id": "base", "label": "Base (real only)", "method": None, "sampler": None, "set": None,
                   "metrics": _summary(base, attr), "seeds": base["seeds"], "n_train": base["n_train"],
                   "sources": {"evaluation": f"{report_rel}#downstream.rows[id=base]"}})  # fmt: skip
    for name, method, sampler in plan.sets:
        row = rows_by_id[f"real+{name}"]
        label = method if sampler == "conditional" else f"{method} + {_SAMPLER_TEXT[sampler]}"
        sources = {"train": folder(f"train/{method}"), "generate": folder(f"generate/{name}"),
                   "evaluation": f"{report_rel}#downstream.rows[id=real+{name}]"}  # fmt: skip
        if sampler == "attribute_switch":
            sources["tau"] = folder(f"tau/{method}")
        if sampler == "fairdiffusion_perturbed":
            sources["perturbation"] = folder(f"perturbation/{method}")
        table1.append({"id": name, "label": label, "method": method, "sampler": sampler, "set": name,
                       "metrics": _summary(row, attr), "seeds": row["seeds"], "n_train": row["n_train"],
                       "n_train_synthetic": row["n_train_synthetic"], "sources": sources})  # fmt: skip
    _deltas(table1)
    floor = _dp_floor(data, attr, report["settings"])
    group_acc = {}
    for r in table1:
        eval_id = "base" if r["id"] == "base" else f"real+{r['id']}"
        group_acc[r["id"]] = {g: v["accuracy"] for g, v in rows_by_id[eval_id]["fairness"][attr]["by_group"].items()}

    # 2. the generative table
    ber_real = (report["ber"]["real"].get(attr) or {}).get("ber")
    generative: list[dict[str, Any]] = []
    for name, method, sampler in plan.sets:
        g = report["generative"][name]
        by = g["by"][attr]
        ber = report["ber"]["sets"][name].get(attr) or {}
        info = report["data"]["sets"][name].get("generator", {})
        generative.append({
            "id": name,
            "label": method if sampler == "conditional" else f"{method} + {_SAMPLER_TEXT[sampler]}",
            "method": method,
            "sampler": sampler,
            "method_status": info.get("method_status"),
            "n_images": report["data"]["sets"][name]["n"],
            "fid": g["overall"]["fid"],
            "kid": g["overall"]["kid_mean"],
            "n_star": by["n_star"],
            "fid_at_n_star": {"mean": by["overall_at_n_star"]["fid_mean"], "sd": by["overall_at_n_star"]["fid_sd"]},
            "fid_by_group": {k: {"mean": v.get("fid_mean"), "sd": v.get("fid_sd"), "n": v.get("n")}
                             for k, v in by["groups"].items()},  # fmt: skip
            "fid_variance": by["fid_variance"]["variance"],
            "fid_sd_over_groups": by["fid_variance"]["sd"],
            "fid_range": by["fid_variance"]["range"],
            "ber": ber.get("ber"),
            "ber_max": ber.get("ber_max"),
            "ber_n_test": ber.get("n_test"),
            "ber_real_trained": (ber.get("real_trained") or {}).get("ber"),
            "sources": {"generate": folder(f"generate/{name}"),
                        "evaluation": f"{report_rel}#generative.{name}"},  # fmt: skip
        })  # fmt: skip
    groups = list(generative[0]["fid_by_group"]) if generative else []

    # 3. cells and timings
    cells = {}
    stages: dict[str, dict[str, Any]] = {}
    for cell in plan.cells:
        m = markers.get(cell.id)
        if m is None:
            continue
        cells[cell.id] = {"folder": f"cells/{cell.id}", "seconds": m["seconds"], "attempt": m["attempt"],
                          "started": m["started"], "finished": m["finished"], "load_average": m.get("load_average"),
                          "warnings": m.get("warnings", []), "outputs": m["outputs"]}  # fmt: skip
        st = stages.setdefault(cell.kind, {"seconds": 0.0, "cells": 0})
        st["seconds"] = round(st["seconds"] + float(m["seconds"]), 3)
        st["minutes"] = round(st["seconds"] / 60.0, 3)
        st["cells"] += 1
    timings = {
        "stages": {k: stages[k] for k in _STAGES if k in stages},
        "cells_total_seconds": round(sum(s["seconds"] for s in stages.values()), 3),
        "cells_total_minutes": round(sum(s["seconds"] for s in stages.values()) / 60.0, 3),
        "evaluation_stages": eval_marker["outputs"].get("seconds_by_stage"),
        "this_run": dict(run),
        "invocations": [dict(i) for i in invocations],
    }
    warnings_list = [{"cell": cid, "message": w} for cid, c in cells.items() for w in c["warnings"]]
    warnings_list += [{"cell": "evaluate/all", "message": f"{w['where']}: {w['message']}"}
                      for w in report.get("warnings", [])]  # fmt: skip

    tau = {m: markers[f"tau/{m}"]["outputs"] for m in plan.methods if f"tau/{m}" in markers}
    pert = {m: markers[f"perturbation/{m}"]["outputs"] for m in plan.methods if f"perturbation/{m}" in markers}
    prefs = markers["prefs/fairgen"]["outputs"] if "prefs/fairgen" in markers else None
    return {
        "schema": SCHEMA,
        "command": command,
        "study": dict(identity),
        "profile": plan.profile.to_dict(),
        "grid": plan.to_dict(),
        "data": {
            "root": str(Path(data.root).absolute()),
            "n_images": len(data),
            "attribute": attr,
            "label": data.spec.label,
            "by_group": report["data"]["real"]["by_attribute"][attr],
            "split_sizes": report["downstream"]["split"]["sizes"],
            "test_by_group": report["downstream"]["split"]["n_by_group"][attr]["test"],
        },
        "base_model": markers.get("base/vanilla", {}).get("outputs") or {"embedded": True},
        "versions": dict(versions),
        "evaluation": {
            "report": report_rel,
            "markdown": eval_marker["outputs"].get("markdown"),
            "settings": report["settings"],
            "features": report["features"],
            "classifier": report["downstream"]["classifier"],
            "definitions": report["definitions"]["fairness"].get(attr),
        },
        "table1": {
            "attribute": attr,
            "metrics": [list(m) for m in TABLE1_METRICS],
            "rows": table1,
            "accuracy_by_group": group_acc,
            "dp_gap_perfect_classifier": floor,
        },
        "generative": {"attribute": attr, "groups": groups, "ber_real": ber_real, "rows": generative},
        "samplers": {"tau": tau, "perturbation": pert},
        "preferences": prefs,
        "cells": cells,
        "timings": timings,
        "warnings": warnings_list,
        "plots": {},
    }


def _dp_floor(data: Any, attr: str, settings: Mapping[str, Any]) -> float | None:
    """DP gap of a perfect classifier (ŷ = y) on the evaluation's test split: the part of the gap that is the label
    mix per group, which no classifier can remove without being wrong."""
    from fairsample.data.splits import split_indices
    from fairsample.eval.fairness import dp_gap

    test = split_indices(data, fractions=tuple(settings["fractions"]), seed=int(settings["seed"]))["test"]
    y = data.frame[data.spec.label].astype(str).to_numpy()[test]
    groups = data.frame[attr].astype(str).to_numpy()[test]
    value = dp_gap(y, y, sensitive_features=groups)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


# ------------------------------------------------------------------------------------------------------- plots


def write_plots(results: Mapping[str, Any], root: Path) -> dict[str, str]:
    """Copy the evaluation plots to ``S/plots/`` and draw ``table1.png`` (mean ± sd per row and metric)."""
    out_dir = root / "plots"
    out_dir.mkdir(exist_ok=True)
    plots: dict[str, str] = {}
    report_dir = (root / results["evaluation"]["report"]).parent
    for png in sorted((report_dir / "plots").glob("*.png")):
        shutil.copyfile(png, out_dir / png.name)
        plots[png.stem] = f"plots/{png.name}"
    plots["table1"] = _plot_table1(results, out_dir / "table1.png")
    return plots


def _plot_table1(results: Mapping[str, Any], path: Path) -> str:
    from matplotlib.figure import Figure

    rows = results["table1"]["rows"]
    metrics = TABLE1_METRICS
    fig = Figure(figsize=(3.0 * len(metrics), 0.36 * len(rows) + 1.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(metrics), sharey=True)
    ys = list(range(len(rows)))[::-1]
    for ax, (key, title, better) in zip(axes, metrics, strict=True):
        means = [r["metrics"][key]["mean"] for r in rows]
        sds = [r["metrics"][key]["sd"] or 0.0 for r in rows]
        colors = ["#8c8c8c" if r["id"] == "base" else "#1f77b4" if r["sampler"] in (None, "conditional")
                  else "#ff7f0e" for r in rows]  # fmt: skip
        for y, m, s, c in zip(ys, means, sds, colors, strict=True):
            if m is not None:
                ax.errorbar(m, y, xerr=s, fmt="o", color=c, capsize=3, ms=4)
        van = next((r for r in rows if r["id"] == "vanilla"), None)
        if van is not None and van["metrics"][key]["mean"] is not None:
            vm, vs = van["metrics"][key]["mean"], van["metrics"][key]["sd"] or 0.0
            ax.axvspan(vm - vs, vm + vs, color="#1f77b4", alpha=0.12, lw=0)
            ax.axvline(vm, color="#1f77b4", lw=0.8, ls="--")
        ax.set_title(f"{title} ({'↑' if better == 'higher' else '↓'} better)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(ys)
    axes[0].set_yticklabels([r["label"] for r in rows], fontsize=8)
    fig.suptitle(f"Downstream fairness ({results['table1']['attribute']}), mean ± sd over "
                 f"{len(results['grid']['seeds'])} classifier seeds; band = vanilla ± sd", fontsize=9)  # fmt: skip
    fig.savefig(path)
    return f"plots/{path.name}"


# ---------------------------------------------------------------------------------------------------- markdown


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _pm(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    if entry.get("sd") is None:
        return fmt(entry["mean"], digits)
    return f"{fmt(entry['mean'], digits)} ± {fmt(entry['sd'], digits)}"


def _delta_cell(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("delta") is None:
        return "n/a"
    text = fmt(d["delta"], 3, signed=True)
    if d.get("within_noise"):
        return f"{text} ≈"
    return text


def _group_name(key: str) -> str:
    return key.split("=", 1)[1] if "=" in key else key


def render_markdown(results: Mapping[str, Any]) -> str:
    """``RESULTS.md`` from the ``results.json`` document only."""
    t1 = results["table1"]
    gen = results["generative"]
    prof = results["profile"]
    attr = t1["attribute"]
    seeds = results["grid"]["seeds"]
    lines: list[str] = []
    lines.append("# fairsample study: fairness methods compared (FairGen Table 1 layout)")
    lines.append("")
    lines.append(f"Profile **{prof['name']}** — {prof['description']}. Data: `{results['data']['root']}` "
                 f"({results['data']['n_images']} images, sensitive attribute `{attr}`, label "
                 f"`{results['data']['label']}`). Every number below is in `results.json` next to the run folder it "
                 "came from.")  # fmt: skip
    lines.append("")
    lines.append("Reproduce with:")
    lines.append("")
    lines.append("```")
    lines.append(results.get("command") or "fairsample study (SDK call; no command line recorded)")
    lines.append("```")
    lines.append("")

    # -- Table 1
    lines.append(f"## Table 1 — downstream fairness ({attr}), mean ± sd over {len(seeds)} classifier seeds")
    lines.append("")
    lines.append("Base = the classifier trained on the real train split only; every other row = real train split + "
                 "that synthetic set (`real_plus_synthetic`). All rows are tested on the same real test split "
                 f"({_test_text(results)}).")  # fmt: skip
    lines.append("")
    header = ["Row"] + [f"{title} {'↑' if better == 'higher' else '↓'}" for _, title, better in TABLE1_METRICS]
    rows = [[r["label"]] + [_pm(r["metrics"][k]) for k, _, _ in TABLE1_METRICS] for r in t1["rows"]]
    lines += _table(header, rows)
    lines.append("")
    if t1.get("dp_gap_perfect_classifier") is not None:
        lines.append(f"For scale: a perfect classifier (ŷ = y) has DP gap {fmt(t1['dp_gap_perfect_classifier'])} on "
                     f"this test split, because the label mix differs between {attr} groups; EOpp gap and NAR would "
                     "be 0.")  # fmt: skip
        lines.append("")
    has_vanilla = any(r["id"] == "vanilla" for r in t1["rows"])
    if has_vanilla:
        lines.append("### Δ vs vanilla (row mean − vanilla mean)")
        lines.append("")
        lines.append("`≈` marks |Δ| < pooled sd = √((sd_row² + sd_vanilla²)/2): the difference is inside the "
                     "seed-to-seed noise. With 3 seeds even an unmarked Δ is weak evidence, not a significance "
                     "test.")  # fmt: skip
        lines.append("")
        header = ["Row"] + [f"Δ {title}" for _, title, _ in TABLE1_METRICS]
        rows = [[r["label"]] + [_delta_cell(r["delta_vs_vanilla"].get(k)) for k, _, _ in TABLE1_METRICS]
                for r in t1["rows"] if r["id"] != "vanilla"]  # fmt: skip
        lines += _table(header, rows)
        lines.append("")
        lines += _beyond_noise(t1)
    # per-group accuracy
    groups = sorted({g for acc in t1["accuracy_by_group"].values() for g in acc}, key=str)
    lines.append(f"### Accuracy per {attr} group (real test split), mean ± sd over seeds")
    lines.append("")
    header = ["Row"] + [_group_name(g) for g in groups]
    rows = [[r["label"]] + [_pm(t1["accuracy_by_group"][r["id"]].get(g)) for g in groups] for r in t1["rows"]]
    lines += _table(header, rows)
    lines.append("")

    # -- generative table
    lines.append(f"## Generative table ({attr})")
    lines.append("")
    feat = results["evaluation"]["features"]
    lines.append(f"FID / KID in the `{feat['kind']}` feature space (a {feat['num_features']}-d CNN trained on the "
                 "real images to predict the cell; not Inception, so values are not comparable with the papers'). "
                 "Per-group FID is size-matched (n* images per group, mean ± sd over the draws); FID variance is "
                 "the variance (ddof 0) of the per-group FIDs. BER = 1 − balanced accuracy of a fresh "
                 f"{attr} classifier trained on 80 % of the set and tested on the other 20 % (higher = the "
                 "attribute is harder to recover; maximum (K−1)/K); BER (real clf) applies the classifier trained on "
                 "real images to every image, labelled with its *requested* value.")  # fmt: skip
    lines.append("")
    gnames = gen["groups"]
    header = ["Set", "n", "FID", "KID", "n*"] + [f"FID {_group_name(g)}" for g in gnames]
    header += ["FID variance", "BER", "BER (real clf)"]
    rows = []
    for r in gen["rows"]:
        rows.append([r["label"], str(r["n_images"]), fmt(r["fid"]), fmt(r["kid"]), str(r["n_star"])]
                    + [_pm(r["fid_by_group"].get(g)) for g in gnames]
                    + [fmt(r["fid_variance"]), fmt(r["ber"]), fmt(r["ber_real_trained"])])  # fmt: skip
    lines += _table(header, rows)
    lines.append("")
    if gen.get("ber_real") is not None:
        ber_max = gen["rows"][0].get("ber_max") if gen["rows"] else None
        lines.append(f"Reference: BER of a fresh {attr} classifier on the real images = {fmt(gen['ber_real'])} "
                     f"(maximum {fmt(ber_max)}).")  # fmt: skip
        lines.append("")
    lines += _sampler_notes(results)

    # -- plots
    lines.append("## Plots")
    lines.append("")
    titles = {"table1": "Table 1 as a chart (mean ± sd; band = vanilla ± sd)",
              f"fid_by_group_{attr}": "size-matched FID per group and set",
              f"fairness_gaps_{attr}": "fairness gaps and scores per row",
              f"accuracy_by_group_{attr}": "accuracy / AUC per group and row",
              "heatmap_cells": "per-cell FID / KID / accuracy",
              "samples": "sample images per cell and set"}  # fmt: skip
    for key, rel in results["plots"].items():
        lines.append(f"- [{titles.get(key, key)}]({rel})")
    lines.append("")
    if "table1" in results["plots"]:
        lines.append(f"![Table 1]({results['plots']['table1']})")
        lines.append("")

    # -- settings, timings, traceability, versions
    lines += _settings(results)
    lines += _timings(results)
    lines += _trace(results)
    lines.append("## Versions")
    lines.append("")
    lines.append(", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    lines.append("")
    if results["warnings"]:
        lines.append("## Warnings raised during the run")
        lines.append("")
        lines.append("Grouped by text (the set or row named in parentheses replaced by `…`); every instance is in "
                     "`results.json` under `warnings`.")  # fmt: skip
        lines.append("")
        lines += _grouped_warnings(results["warnings"])
        lines.append("")
    return "\n".join(lines)


_WHERE_RE = re.compile(r"^(\w+) \(((?:[^()]|\([^()]*\))*)\): ")


def _grouped_warnings(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per distinct warning text, with how many cells / sets raised it."""
    groups: dict[str, list[str]] = {}
    for w in items:
        msg = str(w["message"])
        m = _WHERE_RE.match(msg)
        where = w["cell"]
        if m is not None:
            where, msg = m.group(2), f"{m.group(1)} (…): {msg[m.end() :]}"
        groups.setdefault(msg, [])
        if where not in groups[msg]:
            groups[msg].append(where)
    out = []
    for msg, wheres in groups.items():
        shown = ", ".join(f"`{x}`" for x in wheres[:3]) + (f" and {len(wheres) - 3} more" if len(wheres) > 3 else "")
        out.append(f"- {msg} — {shown}")
    return out


def _test_text(results: Mapping[str, Any]) -> str:
    tb = results["data"]["test_by_group"]
    parts = ", ".join(f"{_group_name(g)} {n}" for g, n in tb.items())
    return f"{results['data']['split_sizes']['test']} images: {parts}"


def _beyond_noise(t1: Mapping[str, Any]) -> list[str]:
    """One line per (row, metric) whose Δ is outside the pooled sd."""
    titles = {k: t for k, t, _ in TABLE1_METRICS}
    out = []
    for r in t1["rows"]:
        if r["id"] == "vanilla":
            continue
        for key, d in r["delta_vs_vanilla"].items():
            if d.get("within_noise") is False:
                out.append(f"- {r['label']}: {titles[key]} {fmt(d['delta'], 3, signed=True)} ({d['direction']}; "
                           f"pooled sd {fmt(d['pooled_sd'])})")  # fmt: skip
    head = ["Differences outside the pooled sd (everything else in Table 1 is inside the seed noise):", ""]
    return head + (out or ["- none"]) + [""]


def _sampler_notes(results: Mapping[str, Any]) -> list[str]:
    out = []
    for m, t in results["samplers"]["tau"].items():
        pairs = ", ".join(f"{k}: {v}" for k, v in t["pairs"].items())
        out.append(f"- attribute_switch on {m}: τ* = {t['tau_star']} (argmin of the mean J(τ) over ordered pairs; "
                   f"per pair {pairs}); s1 drawn uniformly from the other values per seed; "
                   f"[J(τ) plot]({t['plot']}).")  # fmt: skip
    for m, p in results["samplers"]["perturbation"].items():
        if p.get("searched"):
            out.append(f"- fairdiffusion_perturbed on {m}: GP-UCB search with {p['evaluations']} evaluations; "
                       f"kept **{p['kept']}** offsets (θ* is kept only if its held-out reward beats θ = 0 by more "
                       "than the KID noise). Project extension.")  # fmt: skip
        else:
            out.append(f"- fairdiffusion_perturbed on {m}: no search in this profile; zero offsets, i.e. identical "
                       "to conditional sampling. Project extension.")  # fmt: skip
    if results.get("preferences"):
        pr = results["preferences"]
        out.append(f"- fairgen preferences: {pr['n_pairs']} pairs from {pr['n_candidates']} candidates of the base "
                   f"model, {pr['source']} (scorer trained on the {pr['scorer_data']}); "
                   "not physician judgements.")  # fmt: skip
    return (["Sampler and preference notes:", ""] + out + [""]) if out else []


def _settings(results: Mapping[str, Any]) -> list[str]:
    p = results["profile"]
    ev = results["evaluation"]["settings"]
    rows = [
        ["base model", "embedded tone-digits-32 (vanilla, 2,500 steps)" if p["base"] == "embedded"
         else f"'{p['architecture']}' U-Net, {p['image_size']} px, {p['base_steps']} steps from scratch"],
        ["fine-tuning (every method)", f"{p['train_steps']} steps, batch {p['batch_size']}, lr {p['learning_rate']:g} "
         f"(warmup {p['lr_warmup_steps']}, cosine), seed {p['train_seed']}, train split only, EMA weights"],
        ["method options", "preset defaults; fairgen: proxy preference pairs (see notes)"],
        ["generation", f"{p['images_per_set']} images per set, balanced over cells, "
         f"seeds 0..{p['images_per_set'] - 1} in every set, DDIM {p['sample_steps']} steps, bundle CFG scale, "
         f"backend {results['study']['backend']}"],
        ["τ search", f"{p['tau_n_per_label']} trajectory pairs per label, grid {p['tau_grid']}"],
        ["perturbation search", "none (zero offsets)" if p["perturb_iterations"] is None
         else f"{p['perturb_iterations']} GP-UCB iterations, {p['perturb_n_eval']} images per group"],
        ["evaluation", f"seeds {ev['seeds']}, {ev['epochs']} epochs, image size {ev['size']}, k = {ev['k']}, "
         f"{ev['n_resamples']} bootstrap resamples, split {ev['fractions']} (seed {ev['seed']})"],
        ["threads", f"torch {results['timings']['this_run']['torch_threads']} (profile torch_threads "
         f"{p.get('torch_threads')}), ONNX Runtime intra-op: "
         f"{results['timings']['this_run']['threads_option'] or 'default (physical cores)'}"],
    ]  # fmt: skip
    return ["## Settings", ""] + _table(["What", "Setting"], rows, "ll") + [""]


def _timings(results: Mapping[str, Any]) -> list[str]:
    t = results["timings"]
    rows = []
    for kind, st in t["stages"].items():
        rows.append([_STAGE_TEXT.get(kind, kind), str(st["cells"]), fmt(st["seconds"], 1), fmt(st["minutes"], 1)])
    rows.append(["**sum of cells**", "", fmt(t["cells_total_seconds"], 1), fmt(t["cells_total_minutes"], 1)])
    out = ["## Wall time per stage", ""]
    out += _table(["Stage", "Cells", "Seconds", "Minutes"], rows)
    run = t["this_run"]
    la = run.get("load_average") or {}
    out.append("")
    out.append(f"This invocation: {fmt(run['wall_seconds'], 1)} s wall, {len(run['ran'])} cells computed, "
               f"{len(run['skipped'])} found complete; torch threads {run['torch_threads']}; load average "
               f"(1/5/15 min) {la.get('start')} at start, {la.get('end')} at the end.")  # fmt: skip
    runs = _paired(t.get("invocations") or [])
    if len(runs) > 1:
        out.append("")
        out.append("Every invocation on this study folder (an interrupted one has no end):")
        out.append("")
        for start, end in runs:
            head = f"- {start.get('time')} (load average {start.get('load_average')}): "
            if end is None:
                out.append(head + "interrupted")
            else:
                out.append(head + f"{fmt(end.get('wall_seconds'), 1)} s wall, {end.get('ran')} cells computed, "
                                  f"{end.get('skipped')} found complete")  # fmt: skip
        out.append("")
    ev = t.get("evaluation_stages") or {}
    if ev:
        out.append("Evaluation stages (s): " + ", ".join(f"{k} {fmt(v, 1)}" for k, v in ev.items()) + ".")
    out.append("")
    return out


def _paired(events: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """invocations.jsonl events → (start, end or None) per invocation."""
    out: list[tuple[Mapping[str, Any], Mapping[str, Any] | None]] = []
    for e in events:
        if e.get("event") == "start":
            out.append((e, None))
        elif e.get("event") == "end" and out and out[-1][1] is None:
            out[-1] = (out[-1][0], e)
    return out


def _trace(results: Mapping[str, Any]) -> list[str]:
    rows = []
    for r in results["table1"]["rows"]:
        src = r["sources"]
        parts = [f"`{v}`" for k, v in src.items() if v and k != "evaluation"]
        rows.append([r["label"], ", ".join(parts) or "—", f"`{src['evaluation']}`"])
    out = ["## Where every number comes from", ""]
    out += _table(["Row", "Run folders", "Evaluation entry"], rows, "lll")
    out.append("")
    return out


_NUM_RE = re.compile(r"[-+]?\d+\.\d+")


def table_numbers(markdown: str) -> list[str]:
    """Decimal numbers in the Markdown table rows (for tests: each must be in results.json)."""
    out = []
    for line in markdown.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            out += _NUM_RE.findall(line)
    return out

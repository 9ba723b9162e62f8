"""Render an evaluation document (``report.json``, see :mod:`fairsample.evaluation.evaluate`) as Markdown and as one
self-contained HTML file.

Both renderings are built from the same list of blocks, and every number they show is read from the document
(formatted, never recomputed), so the Markdown and the HTML can always be checked against ``report.json``. Values are
fractions, never ×100. The HTML inlines its PNGs as base64 data URIs and its CSS; it references no external asset.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairsample.core.markdown import pipe_table
from fairsample.evaluation.aggregate import FAIRNESS_METRICS
from fairsample.evaluation.metric_info import legend
from fairsample.evaluation.metric_info import name as metric_name

__all__ = ["fmt_fraction", "fmt_number", "render_html", "render_markdown"]

_NA = "n/a"
_DASH = "—"
#: the generative table's columns, as metric keys (headings from :mod:`fairsample.evaluation.metric_info`).
_GENERATIVE_METRICS = ("fid", "kid", "is_domain", "fid_variance", "es_fid", "es_is")
_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;border-bottom:2px solid #ddd;padding-bottom:.2em}h2{font-size:1.35em;margin-top:1.8em;
border-bottom:1px solid #e5e5e5;padding-bottom:.15em}h3{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em;display:block;overflow-x:auto}
th,td{border:1px solid #d0d0d0;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}tr:nth-child(even) td{background:#fafafa}
code{background:#f3f4f6;padding:0 .25em;border-radius:3px;font-size:.9em;word-break:break-all}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}ul{padding-left:1.4em}li{margin:.15em 0}
p.note{color:#555;font-size:.9em}
"""


# ------------------------------------------------------------------------------------------------ formatting


def _sentence(text: str) -> str:
    """``text`` with its first letter upper-cased (the rest kept: metric names are case-sensitive)."""
    return text[:1].upper() + text[1:]


def fmt_fraction(x: float | None) -> str:
    """A fraction with 3 decimals (``0.952``); None → ``n/a``.

    Example:
        >>> fmt_fraction(0.95238), fmt_fraction(None)
        ('0.952', 'n/a')
    """
    if x is None or not math.isfinite(x):
        return _NA
    return f"{x:.3f}"


def fmt_number(x: float | None) -> str:
    """A metric value with 4 significant digits, no exponent above 0.001 (``13.51``, ``1.145``, ``0.01230``).

    Example:
        >>> fmt_number(13.5130), fmt_number(1.14544), fmt_number(2.5e-5), fmt_number(1234.56)
        ('13.51', '1.145', '2.500e-05', '1235')
    """
    if x is None or not math.isfinite(x):
        return _NA
    a = abs(x)
    if a == 0:
        return "0"
    if a < 1e-3:
        return f"{x:.3e}"
    decimals = max(0, 3 - math.floor(math.log10(a)))
    return f"{x:.{decimals}f}"


def _pm(entry: Mapping[str, Any] | None, fmt: Any = fmt_fraction) -> str:
    """``mean ± sd`` of a ``{"mean", "sd"}`` dict (sd omitted when None)."""
    if not entry or entry.get("mean") is None:
        return _NA
    if entry.get("sd") is None:
        return fmt(entry["mean"])
    return f"{fmt(entry['mean'])} ± {fmt(entry['sd'])}"


def _pm_pair(mean: float | None, sd: float | None, fmt: Any = fmt_number) -> str:
    if mean is None:
        return _NA
    return fmt(mean) if sd is None else f"{fmt(mean)} ± {fmt(sd)}"


def _ci(ci: Sequence[float | None] | None) -> str:
    """``[low, high]`` of a CI pair (``n/a`` when missing)."""
    if not ci or ci[0] is None or ci[1] is None:
        return _NA
    return f"[{fmt_fraction(ci[0])}, {fmt_fraction(ci[1])}]"


def _gap(entry: Mapping[str, Any] | None) -> str:
    """``mean ± sd [low, high]`` of a ``{"mean", "sd", "ci"}`` gap entry."""
    if not entry or entry.get("mean") is None:
        return _NA
    text = _pm(entry)
    return f"{text} {_ci(entry['ci'])}" if entry.get("ci") else text


def _closure(block: Mapping[str, Any] | None) -> str:
    """``value [low, high]``, or ``undefined``."""
    if not block:
        return _DASH
    if block.get("value") is None:
        return "undefined"
    return f"{fmt_fraction(block['value'])} {_ci(block.get('ci'))}"


def _view_name(view: str) -> str:
    return {"counterfactual": "counterfactual set", "test": "real test split"}.get(view, view)


def _view_fairness(row: Mapping[str, Any], view: str) -> Mapping[str, Any]:
    return row["fairness"] if view == "test" else (row.get("counterfactual") or {}).get("fairness") or {}


def _value(key: str) -> str:
    """``"tone=dark"`` → ``"dark"``; ``"tone=dark,label=3"`` stays."""
    return key.split("=", 1)[1] if key.count("=") == 1 else key


def _options(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) if options else "default options"


# ---------------------------------------------------------------------------------------------------- blocks


@dataclass
class _Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "note" | "table" | "img" | "ul"
    text: str = ""
    header: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    items: Sequence[str] = ()
    path: str = ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> _Block:
    return _Block("table", header=list(header), rows=[list(r) for r in rows])


def _row_label(row: Mapping[str, Any]) -> str:
    return str(row["label"])


def _data_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    data, attrs = doc["data"], doc["settings"]["attributes"]
    groups = {a: list(data["real"]["by_attribute"][a]) for a in attrs}
    # Method: the training method of the bundle that made the set; Status: reference or project-extension
    header = ["Set", "Images"] + [_value(g) + f" ({a})" for a in attrs for g in groups[a]]
    header += ["Method", "Sampler", "Status"]
    rows = [
        ["Real", str(data["real"]["n"])]
        + [str(data["real"]["by_attribute"][a].get(g, 0)) for a in attrs for g in groups[a]]
        + [_DASH, _DASH, _DASH]
    ]
    for name, info in data["sets"].items():
        gen = info.get("generator", {})
        rows.append(
            [name, str(info["n"])]
            + [str(info["by_attribute"][a].get(g, 0)) for a in attrs for g in groups[a]]
            + [", ".join(gen.get(k, [])) or _DASH for k in ("method", "sampler", "method_status")]
        )
    for key, label in (
        ("oracle", "oracle (real held-out, training only)"),
        ("counterfactual", "counterfactual (test)"),
    ):
        info = data.get(key)
        if info:
            by = info["by_attribute"]
            rows.append(
                [label, str(info["n"])]
                + [str(by[a].get(g, 0)) if a in by else _DASH for a in attrs for g in groups[a]]
                + [_DASH, _DASH, _DASH]
            )
    sets = ", ".join(f"**{n}** (`{i['root']}`)" for n, i in data["sets"].items())
    reps = {n: ids for n, ids in data.get("replicates", {}).items() if len(ids) > 1}
    text = f"Real: `{data['real']['root']}`. Synthetic sets: {sets}. Cells are {' × '.join(data['cell_columns'])}."
    if reps:
        text += (
            " Generator replicates (same method, different generator training seeds): "
            + "; ".join(f"**{n}** = {', '.join(ids)}" for n, ids in reps.items())
            + "."
        )
    out = [_Block("h2", "Data"), _Block("p", text), _table(header, rows)]
    cf = data.get("counterfactual")
    if cf:
        pairs = ", ".join(
            f"{a}: " + ("paired" if p["paired"] else f"{p['n_unpaired']} contents unpaired")
            for a, p in cf["pairing"].items()
        )
        out.append(
            _Block(
                "note",
                f"Counterfactual set `{cf['root']}`: {cf['n']} images of {cf['n_content']} contents, each rendered in "
                f"every value of {', '.join(cf['attributes'])} ({pairs}); test only, never used for training or "
                f"selection. Byte-identical to real images: {cf['overlap']['bytes']}.",
            )
        )
    if data.get("oracle"):
        o = data["oracle"]
        out.append(
            _Block(
                "note",
                f"Oracle set `{o['root']}`: {o['n']} real held-out images added to the real train split in the oracle "
                f"row. Byte-identical to real images: {o['overlap']['real']['bytes']}.",
            )
        )
    return out


def _generative_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    attrs, gen, ber, plots = doc["settings"]["attributes"], doc["generative"], doc["ber"], doc.get("plots", {})
    feat = doc["features"]
    training = feat.get("training") or {}
    out = [
        _Block("h2", "Generative quality"),
        _Block(
            "p",
            f"Feature space: {feat['kind']} `{feat['hash'][:16]}` ({feat['num_features']} features, target = "
            f"{feat['target']}, trained once on {training.get('n_images', _NA)} real images for "
            f"{training.get('epochs', _NA)} epochs); every set is embedded with it. FID / KID are in this space, not "
            "Inception's. Per-group FID is size-matched (n* images per group, mean ± sd over k draws). "
            f"{_sentence(legend(_GENERATIVE_METRICS))}; BER near its maximum means the attribute is not "
            "recoverable.",
        ),
    ]
    for a in attrs:
        groups: list[str] = []
        for rep in gen.values():
            groups += [g for g in rep["by"][a]["groups"] if g not in groups]
        header = [
            "Set",
            "Images",
            metric_name("fid"),
            metric_name("kid"),
            metric_name("is_domain"),
            f"{metric_name('fid')} @ n* (all groups)",
            metric_name("fid_variance"),
            f"{metric_name('fid')} sd",
            f"{metric_name('fid')} range",
            metric_name("es_fid"),
            metric_name("es_is"),
            f"{metric_name('ber')} {a} (fresh)",
            f"{metric_name('ber')} {a} (real-trained)",
        ]
        ref = ber["real"].get(a) or {}
        rows = [
            ["Real (reference)", str(doc["data"]["real"]["n"])]
            + [_DASH] * (len(header) - 4)
            + [fmt_fraction(ref.get("ber")), _DASH]
        ]
        g_header = ["Set"] + [f"{metric_name('fid')} {_value(g)}" for g in groups]
        g_header += [f"{metric_name('kid')} {_value(g)}" for g in groups]
        g_rows, notes = [], []
        for name, rep in gen.items():
            by, ov = rep["by"][a], rep["overall"]
            b = ber["sets"][name].get(a) or {}
            rt = b.get("real_trained") or {}
            es_is = by.get("es_is") or {}
            rows.append(
                [
                    name,
                    str(rep["n_generated"]),
                    fmt_number(ov["fid"]),
                    _pm_pair(ov["kid_mean"], ov["kid_sd"]),
                    _pm_pair(ov["is_domain_mean"], ov["is_domain_sd"]),
                    _pm_pair(by["overall_at_n_star"]["fid_mean"], by["overall_at_n_star"]["fid_sd"]),
                    fmt_number(by["fid_variance"]["variance"]),
                    fmt_number(by["fid_variance"]["sd"]),
                    fmt_number(by["fid_variance"]["range"]),
                    fmt_number(by["es_fid"]["value"]),
                    fmt_number(es_is.get("value")),
                    fmt_fraction(b.get("ber")),
                    fmt_fraction(rt.get("ber")),
                ]
            )
            cells = [by["groups"].get(g) for g in groups]
            g_rows.append(
                [name]
                + [_pm_pair(e["fid_mean"], e["fid_sd"]) if e else _NA for e in cells]
                + [_pm_pair(e["kid_mean"], e["kid_sd"]) if e else _NA for e in cells]
            )
            skipped = by["skipped"]["real_only"]
            notes.append(
                f"{name}: n* = {by['n_star']}, k = {by['k']}"
                + (f"; real-only groups skipped: {', '.join(skipped)}" if skipped else "")
            )
        maxima = {
            round(v["ber_max"], 6) for v in [ref, *(ber["sets"][n].get(a) or {} for n in gen)] if v.get("ber_max")
        }
        ber_note = f" BER maximum (K-1)/K = {', '.join(fmt_fraction(m) for m in sorted(maxima))}." if maxima else ""
        out += [
            _Block("h3", f"By {a}"),
            _table(header, rows),
            _Block("p", f"Per {a} group (size-matched FID, mean ± sd over k draws; KID ± sd over subsets):"),
            _table(g_header, g_rows),
            _Block("note", "; ".join(notes) + "." + ber_note),
        ]
        key = f"fid_by_group_{a}"
        if key in plots:
            out.append(_Block("img", f"Size-matched FID by {a}", path=plots[key]))
    out += _replicate_blocks(doc)
    out += _cell_blocks(doc)
    return out


def _replicate_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    """Mean ± sd over generator replicates, when some name has more than one."""
    summary = doc.get("generative_summary") or {}
    if not any(g["n_replicates"] > 1 for g in summary.values()):
        return []
    attr = doc["settings"]["attributes"][0]
    header = ["Set", "Replicates"] + [metric_name(m) for m in ("fid", "kid", "is_domain")]
    header += [f"{metric_name('fid_variance')} ({attr})", f"{metric_name('es_fid')} ({attr})"]
    header += [f"{metric_name('ber')} {attr} (fresh)", f"{metric_name('ber')} {attr} (real-trained)"]
    body = []
    for name, g in summary.items():
        b = doc["ber"]["summary"][name].get(attr) or {}
        body.append(
            [name, str(g["n_replicates"])]
            + [_pm(g[m], fmt_number) for m in ("fid", "kid", "is_domain")]
            + [_pm(g["by"][attr]["fid_variance"], fmt_number), _pm(g["by"][attr]["es_fid"], fmt_number)]
            + [_pm(b.get("ber")), _pm(b.get("real_trained_ber"))]
        )
    return [
        _Block("h3", "Across generator replicates"),
        _Block("p", "Mean ± sd (ddof=1) over each set's replicates (one generator per training seed)."),
        _table(header, body),
    ]


def _problem_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    """Base vs oracle per view: how large the minority gap is, and whether real minority data closes it."""
    ds = doc["downstream"]
    problem = ds.get("problem") or {}
    if not problem:
        return []
    out = [
        _Block("h2", "Problem: the minority gap"),
        _Block(
            "p",
            "Minority gap = accuracy of the other groups pooled − accuracy of the minority group (positive: the "
            "minority is behind), mean ± sd over classifier seeds [bootstrap CI over seeds]. Base trains on the real "
            "train split only; the oracle adds real held-out images. Gap closure is defined only when Base gap − "
            "oracle gap is clearly positive (its CI excludes 0).",
        ),
    ]
    for a in doc["settings"]["attributes"]:
        views = [v for v in ds["views"] if a in problem.get(v, {})]
        if not views:
            continue
        header = ["View", "Minority", "Base gap", "Oracle gap", "Base − oracle", "Closable", "Base accuracy"]
        header += ["Oracle accuracy"]
        body, notes = [], []
        for v in views:
            e = problem[v][a]
            diff = e.get("difference")
            body.append(
                [
                    _view_name(v),
                    f"{a}={e['minority']}",
                    _gap(e.get("base_gap")),
                    _gap(e.get("oracle_gap")),
                    f"{fmt_fraction(diff['mean'])} {_ci(diff['ci'])}" if diff else _NA,
                    "yes" if e["closable"] else "no",
                    _pm(e.get("base_accuracy")),
                    _pm(e.get("oracle_accuracy")),
                ]
            )
            if e.get("reason"):
                notes.append(f"{_view_name(v)}: {e['reason']}.")
        groups: list[str] = []
        for v in views:
            for key in ("base_by_group", "oracle_by_group"):
                groups += [g for g in (problem[v][a].get(key) or {}) if g not in groups]
        g_body = []
        for v in views:
            for key, label in (("base_by_group", "Base"), ("oracle_by_group", "oracle")):
                by = problem[v][a].get(key)
                if by:
                    g_body.append(
                        [f"{label} ({_view_name(v)})"]
                        + [_pm((by.get(g) or {}).get("accuracy")) if g in by else _NA for g in groups]
                        + [str(by[g]["n"]) if g in by else _NA for g in groups]
                    )
        out += [_Block("h3", f"By {a}"), _table(header, body)]
        if notes:
            out.append(_Block("note", " ".join(notes)))
        if g_body:
            g_header = (
                ["Row (view)"]
                + [f"{metric_name('accuracy')} {_value(g)}" for g in groups]
                + [f"n {_value(g)}" for g in groups]
            )
            out += [_Block("p", f"Per-group accuracy by {a} (mean ± sd over seeds):"), _table(g_header, g_body)]
    return out


_VIEW_METRICS = ("accuracy", "dp_gap", "eopp_gap", "essp", "nar")


def _closure_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    """Per view and attribute: minority gap, worst–best gap, main metrics and gap closure of every row."""
    ds, plots = doc["downstream"], doc.get("plots", {})
    if not ds["rows"]:
        return []
    reference = ds.get("reference")
    out = [
        _Block("h2", metric_name("gap_closure")),
        _Block(
            "p",
            "Gap closure = (Base gap − row gap) / (Base gap − oracle gap) on the means (1 = as much as real held-out "
            "minority images close, 0 = no change). [CI]: hierarchical percentile bootstrap over generator "
            "replicates, classifier seeds within each, and Base's and the oracle's seeds. Metrics are mean ± sd over "
            "every (replicate, seed) run. Gap sd: between generators (sd of the replicate means) / within "
            "(pooled over classifier seeds)."
            + (f" vs {reference}: closure of the row minus closure of {reference} [CI]." if reference else ""),
        ),
    ]
    for view in ds["views"]:
        for a in ds["view_attributes"][view]:
            header = ["Row", "Runs (replicates × seeds)", metric_name("minority_gap"), metric_name("worst_best_gap")]
            header += [metric_name(m) for m in _VIEW_METRICS] + [
                f"{metric_name('gap_closure')} [CI]",
                "Gap sd between / within",
            ]
            if reference:
                header.append(f"vs {reference} [CI]")
            body, notes = [], []
            for r in ds["rows"]:
                block = _view_fairness(r, view).get(a)
                if not block:
                    continue
                summary = block["summary"]
                closure = ((r.get("gap_closure") or {}).get(view) or {}).get(a)
                gap = (closure or {}).get("row_gap") or {}
                spread = _DASH
                if closure and gap:
                    spread = (
                        f"{fmt_fraction(gap.get('between_generator_sd'))} / {fmt_fraction(gap.get('within_seed_sd'))}"
                    )
                line = [
                    _row_label(r),
                    f"{r['n_replicates']} × {len(r['seeds'])}",
                    _pm(summary["minority_gap"]),
                    _pm(summary["worst_best_gap"]),
                ]
                line += [_pm(summary.get(m)) for m in _VIEW_METRICS]
                line += [_closure(closure), spread]
                if reference:
                    vs = (closure or {}).get("vs_reference")
                    line.append(_closure(vs))
                body.append(line)
                if closure and closure.get("reason") and closure["reason"] not in notes:
                    notes.append(closure["reason"])
            minority = ds["minority"][a]["value"]
            out += [_Block("h3", f"{_view_name(view).capitalize()}, by {a} (minority {a}={minority})")]
            out.append(_table(header, body))
            if notes:
                out.append(_Block("note", "Closure undefined: " + "; ".join(notes) + "."))
        key = f"gap_closure_{view}"
        if key in plots:
            out.append(_Block("img", f"Minority gap and gap closure ({_view_name(view)})", path=plots[key]))
    return out


def _cell_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    gen, rows, plots = doc["generative"], doc["downstream"]["rows"], doc.get("plots", {})
    cells = list(doc["data"]["real"]["cells"])
    header = ["Cell", "Real"] + [f"n {n}" for n in gen]
    header += [f"{metric_name(m)} {n}" for n in gen for m in ("fid", "kid")]
    header += [f"{metric_name('accuracy')} {_row_label(r)}" for r in rows]
    body = []
    for c in cells:
        line = [c, str(doc["data"]["real"]["cells"][c])]
        line += [str(doc["data"]["sets"][n]["cells"].get(c, 0)) for n in gen]
        for rep in gen.values():
            e = ((rep.get("cells") or {}).get("groups") or {}).get(c)
            line += [_pm_pair(e["fid_mean"], e["fid_sd"]), _pm_pair(e["kid_mean"], e["kid_sd"])] if e else [_NA, _NA]
        for r in rows:
            e = r["by_cell"].get(c)
            line.append(_pm(e["accuracy"]) if e else _NA)
        body.append(line)
    n_star = [f"{n}: n* = {rep['cells']['n_star']}" for n, rep in gen.items() if rep.get("cells")]
    test_n = {c: r["n"] for c, r in rows[0]["by_cell"].items()} if rows else {}
    out = [
        _Block("h3", "Per cell"),
        _Block(
            "p",
            "Size-matched FID and KID per cell (mean ± sd over k draws; KID ± sd over subsets) and downstream "
            "test accuracy per cell (mean ± sd over seeds). Cell FIDs use few images and are only comparable "
            "with each other.",
        ),
        _table(header, body),
        _Block(
            "note",
            "Per-cell n*: "
            + ("; ".join(n_star) or _NA)
            + ". Real test images per cell: "
            + (", ".join(f"{c} {n}" for c, n in test_n.items()) or _NA)
            + ".",
        ),
    ]
    if "heatmap_cells" in plots:
        out.append(_Block("img", "Cell × metric heatmap", path=plots["heatmap_cells"]))
    return out


def _fairness_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    ds, attrs, plots = doc["downstream"], doc["settings"]["attributes"], doc.get("plots", {})
    st, clf = doc["settings"], ds["classifier"]
    sizes = ds["split"]["sizes"]
    out = [
        _Block("h2", "Downstream fairness"),
        _Block(
            "p",
            f"A {clf['kind']} classifier per row, generator replicate and seed ({clf['epochs']} epochs, checkpoint "
            f"selected on the real validation split), tested on the same real test split ({sizes['test']} images; "
            f"train {sizes['train']}, val {sizes['val']})"
            + (" and on the counterfactual set" if "counterfactual" in ds.get("views", []) else "")
            + f". Mean ± sd over seeds {', '.join(str(s) for s in st['seeds'])} (and replicates). "
            f"{_sentence(legend(FAIRNESS_METRICS))}.",
        ),
    ]
    for view in ds.get("views", ["test"]):
        for a in ds.get("view_attributes", {}).get(view, attrs):
            out += _fairness_tables(ds, view, a)
            if view != "test":
                continue
            for key, alt in (
                (f"fairness_gaps_{a}", f"Fairness metrics by {a}"),
                (f"accuracy_by_group_{a}", f"Accuracy and AUC by {a}"),
            ):
                if key in plots:
                    out.append(_Block("img", alt, path=plots[key]))
    return out


def _fairness_tables(ds: Mapping[str, Any], view: str, a: str) -> list[_Block]:
    """Every metric and the per-group accuracy / AUC of every row, on one view."""
    rows = [r for r in ds["rows"] if a in _view_fairness(r, view)]
    header = ["Row", "Protocol", "Train images (real + added)"] + [metric_name(m) for m in FAIRNESS_METRICS]
    body = []
    for r in rows:
        summary = _view_fairness(r, view)[a]["summary"]
        body.append(
            [_row_label(r), r["protocol"], f"{r['n_train_real']} + {r['n_train_synthetic']}"]
            + [_pm(summary.get(m)) for m in FAIRNESS_METRICS]
        )
    first = _view_fairness(rows[0], view)[a]["by_group"] if rows else {}
    groups = list(first)
    g_header = ["Row"] + [f"{metric_name('accuracy')} {_value(g)} (n={first[g]['n']})" for g in groups]
    g_header += [f"{metric_name('auc')} {_value(g)}" for g in groups]
    g_body = []
    for r in rows:
        by = _view_fairness(r, view)[a]["by_group"]
        g_body.append(
            [_row_label(r)]
            + [_pm((by.get(g) or {}).get("accuracy")) for g in groups]
            + [_pm((by.get(g) or {}).get("auc")) for g in groups]
        )
    where = "real test images" if view == "test" else "counterfactual images"
    return [
        _Block("h3", f"{_view_name(view).capitalize()}, by {a}"),
        _table(header, body),
        _Block("p", f"Per {a} group ({where}):"),
        _table(g_header, g_body),
    ]


def _definition_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    defs = doc["definitions"]
    items = [f"`{k}`: {v}" for k, v in defs["evaluation"].items()]
    items += [f"`{k}`: {v}" for k, v in defs.get("closure", {}).items()]
    items += [f"`{k}`: {v}" for k, v in defs["generative"].items()]
    for a, metrics in defs["fairness"].items():
        items += [f"`{k}` ({a}): {_options(v)}" for k, v in metrics.items() if isinstance(v, Mapping)]
    items += [f"`{k}`: {v}" for k, v in defs["method_status"].items()]
    return [_Block("h2", "Definitions"), _Block("ul", items=items)]


def _warning_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    items = [f"{w['where']}: {w['message']}" for w in doc["warnings"]]
    return [_Block("h2", "Warnings"), _Block("ul", items=items) if items else _Block("p", "None.")]


def _provenance_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    run, st, ver = doc["run"], doc["settings"], doc["versions"]
    command = (
        f"`{run['command']}`"
        if run.get("command")
        else "Python SDK call `fairsample.evaluation.evaluate.evaluate(...)`"
    )
    settings_rows = [[k, f"`{v}`"] for k, v in st.items()]
    hashes = [
        ["Feature module", doc["features"]["kind"], f"`{doc['features']['hash']}`"],
        [
            "Downstream classifier config",
            doc["downstream"]["classifier"]["kind"],
            f"`{doc['downstream']['classifier']['config_hash']}`",
        ],
    ]
    for source, by in [("real", doc["ber"]["real"]), *doc["ber"]["sets"].items()]:
        for a, b in by.items():
            if b and b.get("classifier_hash"):
                hashes.append([f"BER classifier ({source}, {a})", "SmallCNN", f"`{b['classifier_hash']}`"])
    gens = []
    for name, info in doc["data"]["sets"].items():
        cfg = info.get("generator", {}).get("config", {})
        if cfg:
            gens.append(f"{name}: " + ", ".join(f"{k}=`{v}`" for k, v in cfg.items() if not isinstance(v, dict)))
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in run["seconds"].items())
    return [
        _Block("h2", "Settings and provenance"),
        _Block("p", f"Command: {command}. Created {run['created']}; time: {timing}."),
        _table(["Setting", "Value"], settings_rows),
        _table(["Artifact", "Kind", "sha256"], hashes),
        *([_Block("ul", items=gens)] if gens else []),
        _Block("p", "Versions: " + ", ".join(f"{k} `{v}`" for k, v in ver.items()) + "."),
    ]


def _blocks(doc: Mapping[str, Any]) -> list[_Block]:
    names = ", ".join(doc["data"]["sets"])
    plots = doc.get("plots", {})
    out = [
        _Block("h1", "fairsample evaluation report"),
        _Block(
            "p",
            f"Real data vs synthetic sets {names}; sensitive attribute(s): "
            f"{', '.join(doc['settings']['attributes'])}. All rates are fractions (never ×100).",
        ),
    ]
    out += _data_blocks(doc) + _problem_blocks(doc) + _closure_blocks(doc) + _generative_blocks(doc)
    out += _fairness_blocks(doc)
    if "samples" in plots:
        out += [
            _Block("h2", "Samples"),
            _Block("p", "Images per cell (rows) for the real data and each synthetic set (seeded draw)."),
            _Block("img", "Samples per cell", path=plots["samples"]),
        ]
    out += _warning_blocks(doc) + _definition_blocks(doc) + _provenance_blocks(doc)
    return out


# --------------------------------------------------------------------------------------------------- renderers


def render_markdown(doc: Mapping[str, Any]) -> str:
    """``report.md``: headings, pipe tables, image links (``plots/*.png``), lists."""
    lines: list[str] = []
    for b in _blocks(doc):
        if b.kind in ("h1", "h2", "h3"):
            lines += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind in ("p", "note"):
            lines += [b.text if b.kind == "p" else f"*{b.text}*", ""]
        elif b.kind == "table":
            lines += [*pipe_table(b.header, b.rows), ""]
        elif b.kind == "img":
            lines += [f"![{b.text}]({b.path})", ""]
        elif b.kind == "ul":
            lines += [f"- {item}" for item in b.items] + [""]
    return "\n".join(lines).rstrip() + "\n"


_CODE_RE = re.compile(r"`([^`]+)`")
_BOLD_RE = re.compile(r"\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = _CODE_RE.sub(r"<code>\1</code>", out)
    return _BOLD_RE.sub(r"<strong>\1</strong>", out)


def render_html(doc: Mapping[str, Any], root: str | Path) -> str:
    """``report.html``: one file with inline CSS and every plot as a ``data:image/png;base64`` URI.

    Args:
        doc: the evaluation document.
        root: folder the plot paths of ``doc["plots"]`` are relative to.
    """
    root = Path(root)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>fairsample evaluation report</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    for b in _blocks(doc):
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "note":
            parts.append(f'<p class="note">{_inline(b.text)}</p>')
        elif b.kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode((root / b.path).read_bytes()).decode("ascii")
            alt = html.escape(b.text)
            parts.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>')
        elif b.kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

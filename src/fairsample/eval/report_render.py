"""Render an evaluation document (``report.json``, see :mod:`fairsample.eval.evaluate`) as Markdown and as one
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

__all__ = ["fmt_fraction", "fmt_number", "render_html", "render_markdown"]

_NA = "n/a"
_DASH = "—"
_GAP_METRICS = (
    ("accuracy", "Accuracy"),
    ("auc", "AUC"),
    ("dp_gap", "DP gap"),
    ("eopp_gap", "EOpp gap"),
    ("eodds_gap", "EOdds gap"),
    ("essp", "ESSP"),
    ("nar", "NAR"),
    ("es_acc", "ES-ACC"),
    ("es_auc", "ES-AUC"),
)
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
    header = ["Set", "Images"] + [_value(g) + f" ({a})" for a in attrs for g in groups[a]] + ["Sampler", "Method"]
    rows = [
        ["Real", str(data["real"]["n"])]
        + [str(data["real"]["by_attribute"][a].get(g, 0)) for a in attrs for g in groups[a]]
        + [_DASH, _DASH]
    ]
    for name, info in data["sets"].items():
        gen = info.get("generator", {})
        rows.append(
            [name, str(info["n"])]
            + [str(info["by_attribute"][a].get(g, 0)) for a in attrs for g in groups[a]]
            + [", ".join(gen.get("sampler", [])) or _DASH, ", ".join(gen.get("method_status", [])) or _DASH]
        )
    sets = ", ".join(f"**{n}** (`{i['root']}`)" for n, i in data["sets"].items())
    return [
        _Block("h2", "Data"),
        _Block(
            "p",
            f"Real: `{data['real']['root']}`. Synthetic sets: {sets}. Cells are {' × '.join(data['cell_columns'])}.",
        ),
        _table(header, rows),
    ]


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
            "Inception's. Per-group FID is size-matched (n* images per group, mean ± sd over k draws). Lower FID, "
            "KID, FID variance and ES-FID are better; BER near its maximum means the attribute is not recoverable.",
        ),
    ]
    for a in attrs:
        groups: list[str] = []
        for rep in gen.values():
            groups += [g for g in rep["by"][a]["groups"] if g not in groups]
        header = [
            "Set",
            "Images",
            "FID",
            "KID",
            "IS-domain",
            "FID @ n* (all groups)",
            "FID variance",
            "FID sd",
            "FID range",
            "ES-FID",
            "ES-IS",
            f"BER {a} (fresh)",
            f"BER {a} (real-trained)",
        ]
        ref = ber["real"].get(a) or {}
        rows = [
            ["Real (reference)", str(doc["data"]["real"]["n"])]
            + [_DASH] * (len(header) - 4)
            + [fmt_fraction(ref.get("ber")), _DASH]
        ]
        g_header = ["Set"] + [f"FID {_value(g)}" for g in groups] + [f"KID {_value(g)}" for g in groups]
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
    out += _cell_blocks(doc)
    return out


def _cell_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    gen, rows, plots = doc["generative"], doc["downstream"]["rows"], doc.get("plots", {})
    cells = list(doc["data"]["real"]["cells"])
    header = ["Cell", "Real"] + [f"n {n}" for n in gen]
    header += [f"{m} {n}" for n in gen for m in ("FID", "KID")]
    header += [f"Acc {_row_label(r)}" for r in rows]
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
            f"A {clf['kind']} classifier per row and seed ({clf['epochs']} epochs, checkpoint selected on the real "
            f"validation split), tested on the same real test split ({sizes['test']} images; train {sizes['train']}, "
            f"val {sizes['val']}). Mean ± sd over seeds {', '.join(str(s) for s in st['seeds'])}. Gaps and NAR: lower "
            "is fairer; accuracy, AUC, ESSP, ES-ACC, ES-AUC: higher is better.",
        ),
    ]
    for a in attrs:
        header = ["Row", "Protocol", "Train images (real + synthetic)"] + [t for _, t in _GAP_METRICS]
        body = []
        for r in ds["rows"]:
            summary = r["fairness"][a]["summary"]
            body.append(
                [_row_label(r), r["protocol"], f"{r['n_train_real']} + {r['n_train_synthetic']}"]
                + [_pm(summary.get(m)) for m, _ in _GAP_METRICS]
            )
        groups = list(ds["rows"][0]["fairness"][a]["by_group"]) if ds["rows"] else []
        first = ds["rows"][0]["fairness"][a]["by_group"] if ds["rows"] else {}
        g_header = ["Row"] + [f"Acc {_value(g)} (n={first[g]['n']})" for g in groups]
        g_header += [f"AUC {_value(g)}" for g in groups]
        g_body = []
        for r in ds["rows"]:
            by = r["fairness"][a]["by_group"]
            g_body.append(
                [_row_label(r)]
                + [_pm(by[g].get("accuracy")) for g in groups]
                + [_pm(by[g].get("auc")) for g in groups]
            )
        out += [
            _Block("h3", f"By {a}"),
            _table(header, body),
            _Block("p", f"Per {a} group (real test images):"),
            _table(g_header, g_body),
        ]
        for key, alt in (
            (f"fairness_gaps_{a}", f"Fairness metrics by {a}"),
            (f"accuracy_by_group_{a}", f"Accuracy and AUC by {a}"),
        ):
            if key in plots:
                out.append(_Block("img", alt, path=plots[key]))
    return out


def _definition_blocks(doc: Mapping[str, Any]) -> list[_Block]:
    defs = doc["definitions"]
    items = [f"`{k}`: {v}" for k, v in defs["evaluation"].items()]
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
        f"`{run['command']}`" if run.get("command") else "Python SDK call `fairsample.eval.evaluate.evaluate(...)`"
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
    out += _data_blocks(doc) + _generative_blocks(doc) + _fairness_blocks(doc)
    if "samples" in plots:
        out += [
            _Block("h2", "Samples"),
            _Block("p", "Images per cell (rows) for the real data and each synthetic set (seeded draw)."),
            _Block("img", "Samples per cell", path=plots["samples"]),
        ]
    out += _warning_blocks(doc) + _definition_blocks(doc) + _provenance_blocks(doc)
    return out


# --------------------------------------------------------------------------------------------------- renderers


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Mapping[str, Any]) -> str:
    """``report.md``: headings, pipe tables, image links (``plots/*.png``), lists."""
    lines: list[str] = []
    for b in _blocks(doc):
        if b.kind in ("h1", "h2", "h3"):
            lines += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind in ("p", "note"):
            lines += [b.text if b.kind == "p" else f"*{b.text}*", ""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join([":---"] + ["---:"] * (len(b.header) - 1)) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            lines.append("")
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

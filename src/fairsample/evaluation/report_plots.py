"""PNG plots of an evaluation document (``report.json``, see :mod:`fairsample.evaluation.evaluate`).

Every plot reads its numbers from the document, so a figure never shows a value the JSON lacks:

- ``fid_by_group_<attribute>.png``: size-matched FID per group, one bar per synthetic set, ± sd over the k draws;
- ``heatmap_cells.png``: cells × metrics (per-cell FID and KID of each set, downstream accuracy of each row), coloured
  from better (green) to worse (red) on one scale per metric (all FID columns share one), values printed;
- ``fairness_gaps_<attribute>.png``: DP / EOpp / EOdds gaps and NAR, and accuracy / AUC / ESSP / ES-AUC, per
  downstream row, ± sd over seeds;
- ``accuracy_by_group_<attribute>.png``: per-group accuracy and AUC per downstream row, ± sd over seeds;
- ``gap_closure_<view>.png``: per attribute of the view, the minority gap of every row (± sd over runs) and the gap
  closure of every synthetic row with its bootstrap CI (0 = Base, 1 = oracle);
- ``samples.png``: a few images per cell (rows) for the real data and each synthetic set's first replicate.

matplotlib is imported lazily and only through ``matplotlib.figure.Figure`` (the Agg canvas; no pyplot, no global
state), so plotting works headless and never changes the caller's backend.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fairsample.evaluation.metric_info import METRICS, better
from fairsample.evaluation.metric_info import name as metric_name

__all__ = [
    "plot_cell_heatmap",
    "plot_fairness_by_group",
    "plot_fairness_gaps",
    "plot_fid_by_group",
    "plot_gap_closure",
    "plot_samples",
    "write_plots",
]

DPI = 110
_BASE_COLOR = "#8c8c8c"
_ORACLE_COLOR = "#3a3a3a"
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
#: the two panels of ``fairness_gaps_<attribute>.png`` (metric keys; names and directions from ``metric_info``).
_GAPS = ("dp_gap", "eopp_gap", "eodds_gap", "nar")
_SCORES = ("accuracy", "auc", "essp", "es_auc")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    engine: Any = fig.get_layout_engine()
    engine.set(w_pad=0.08, h_pad=0.08)
    return fig


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _value(key: str) -> str:
    return key.split("=", 1)[1] if key.count("=") == 1 else key


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def _short(x: float, fraction: bool = False) -> str:
    """Compact value label: 3 decimals for fractions, else 3 significant digits."""
    if fraction:
        return f"{x:.3f}"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{x:.0f}"
    if a < 1e-3:
        return f"{x:.1e}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(a)))}f}"


def _set_colors(doc: Mapping[str, Any]) -> dict[str, str]:
    """A colour per synthetic name; every replicate (set id) of a name gets the name's colour."""
    names = list(doc["data"].get("replicates") or doc["data"]["sets"])
    colors = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}
    for set_id, info in doc["data"]["sets"].items():
        colors.setdefault(set_id, colors.get(info.get("name", set_id), _PALETTE[0]))
    return colors


def _row_style(row: Mapping[str, Any], colors: Mapping[str, str]) -> dict[str, Any]:
    if row.get("kind") == "oracle":
        return {"color": _ORACLE_COLOR, "hatch": "..", "edgecolor": "white"}
    if row["set"] is None:
        return {"color": _BASE_COLOR}
    style: dict[str, Any] = {"color": colors[row["set"]]}
    if row["protocol"] == "synthetic_only":
        style |= {"hatch": "//", "edgecolor": "white", "alpha": 0.85}
    return style


def _bars(
    ax: Any,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], Sequence[float | None], dict[str, Any]]],
    *,
    labels: bool = True,
    fraction: bool = False,
) -> None:
    """Grouped bars: ``series`` = (legend label, means, sds, style); None means → an "n/a" mark at the baseline.

    Error bars never go below 0 (the quantities are non-negative); value labels turn vertical above 16 bars.
    """
    n = max(1, len(series))
    vertical = n * len(categories) > 16
    width = min(0.8 / n, 0.3)
    x = np.arange(len(categories), dtype=float)
    for j, (name, means, sds, style) in enumerate(series):
        pos = x + (j - (n - 1) / 2) * width
        m = np.array([float(v) if v is not None and _finite(v) else np.nan for v in means])
        s = np.array([float(v) if v is not None and _finite(v) else 0.0 for v in sds])
        s = np.where(np.isnan(m), 0.0, s)
        yerr = np.vstack([np.minimum(s, np.clip(np.nan_to_num(m), 0, None)), s])
        ax.bar(
            pos,
            np.nan_to_num(m),
            width * 0.92,
            yerr=yerr,
            capsize=3,
            label=name,
            error_kw={"elinewidth": 1, "ecolor": "#333333"},
            **style,
        )
        for p, v, e in zip(pos, m, s, strict=True):
            if np.isnan(v):
                ax.text(p, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#555555")
            elif labels:
                ax.annotate(
                    _short(v, fraction),
                    (p, v + e),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="#333333",
                    rotation=90 if vertical else 0,
                )
    ax.set_xticks(x, categories)
    ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _clip_ticks(ax: Any) -> None:
    """No y ticks above 1 on a fraction axis whose limit leaves room for bar labels."""
    ax.set_yticks([t for t in ax.get_yticks() if ax.get_ylim()[0] - 1e-9 <= t <= 1.0 + 1e-9])


def _row_legend(fig: Any, ax: Any) -> None:
    """One legend for the downstream rows, below the axes (never over a bar)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8, frameon=False)


def _headroom(ax: Any, top: float | None = None, factor: float = 1.15) -> None:
    low, high = ax.get_ylim()
    ax.set_ylim(low, top if top is not None else high * factor)


# ---------------------------------------------------------------------------------------------------- plots


def plot_fid_by_group(doc: Mapping[str, Any], attribute: str, path: str | Path) -> Path:
    """Size-matched FID per group of ``attribute`` (plus all groups at n*), one bar per set, ± sd over k draws."""
    gen, colors = doc["generative"], _set_colors(doc)
    groups: list[str] = list(doc["data"]["real"]["by_attribute"][attribute])
    groups = [f"{attribute}={g}" if "=" not in g else g for g in groups]
    present = [g for g in groups if any(g in rep["by"][attribute]["groups"] for rep in gen.values())]
    categories = [_value(g) for g in present] + ["all groups\n(stratified)"]
    series = []
    for name, rep in gen.items():
        by = rep["by"][attribute]
        means = [by["groups"][g]["fid_mean"] if g in by["groups"] else None for g in present]
        sds = [by["groups"][g]["fid_sd"] if g in by["groups"] else None for g in present]
        means.append(by["overall_at_n_star"]["fid_mean"])
        sds.append(by["overall_at_n_star"]["fid_sd"])
        series.append((f"{name} (n* = {by['n_star']})", means, sds, {"color": colors[name]}))
    k = next(iter(gen.values()))["by"][attribute]["k"]
    fig = _figure(max(6.4, 1.3 + 1.1 * len(categories) * max(1, len(series)) ** 0.5), 4.4)
    ax = fig.subplots()
    _bars(ax, categories, series)
    _headroom(ax)
    ax.set_xlabel(attribute)
    ax.set_ylabel(f"{metric_name('fid')} ({better(['fid'])})")
    fig.suptitle(f"Size-matched FID by {attribute}: n* images per group, mean ± sd over k = {k} draws", fontsize=11)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(4, len(labels)),
        fontsize=8,
        frameon=False,
        title="synthetic set",
        title_fontsize=8,
    )
    feat = doc["features"]
    ax.set_title(f"feature space: {feat['kind']} {feat['hash'][:12]}", loc="right", fontsize=7, color="#777777")
    return _save(fig, path)


def plot_fairness_gaps(doc: Mapping[str, Any], attribute: str, path: str | Path) -> Path:
    """Gaps (lower is fairer) and scores (higher is better) per downstream row, ± sd over seeds; panel titles and
    directions from :mod:`fairsample.evaluation.metric_info`."""
    rows, colors = doc["downstream"]["rows"], _set_colors(doc)
    fig = _figure(11.0, 4.4)
    axes = fig.subplots(1, 2)
    n_seeds = len(doc["settings"]["seeds"])
    for ax, metrics, title in (
        (axes[0], _GAPS, f"Gaps ({better(_GAPS)})"),
        (axes[1], _SCORES, f"Overall and equity-scaled scores ({better(_SCORES)})"),
    ):
        series = []
        for r in rows:
            summary = r["fairness"][attribute]["summary"]
            means = [(summary.get(m) or {}).get("mean") for m in metrics]
            sds = [(summary.get(m) or {}).get("sd") for m in metrics]
            series.append((r["label"], means, sds, _row_style(r, colors)))
        _bars(ax, [metric_name(m) for m in metrics], series, fraction=True)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("fraction")
    _headroom(axes[0], factor=1.2)
    axes[1].set_ylim(0, 1.15)
    _clip_ticks(axes[1])
    _row_legend(fig, axes[0])
    fig.suptitle(f"Downstream fairness by {attribute} (real test split; mean ± sd over {n_seeds} seeds)", fontsize=11)
    return _save(fig, path)


def plot_fairness_by_group(doc: Mapping[str, Any], attribute: str, path: str | Path) -> Path:
    """Per-group accuracy and AUC of every downstream row, ± sd over seeds (n/a where undefined)."""
    rows, colors = doc["downstream"]["rows"], _set_colors(doc)
    groups = list(rows[0]["fairness"][attribute]["by_group"])
    sizes = rows[0]["fairness"][attribute]["by_group"]
    categories = [f"{_value(g)}\n(n={sizes[g]['n']})" for g in groups]
    fig = _figure(max(9.0, 2.0 + 1.6 * len(groups) * max(1, len(rows)) ** 0.5), 4.4)
    axes = fig.subplots(1, 2)
    for ax, metric, title in (
        (axes[0], "accuracy", metric_name("accuracy")),
        (axes[1], "auc", f"{metric_name('auc')} (macro one-vs-rest)"),
    ):
        series = []
        lows = []
        for r in rows:
            by = r["fairness"][attribute]["by_group"]
            means = [(by[g].get(metric) or {}).get("mean") for g in groups]
            sds = [(by[g].get(metric) or {}).get("sd") for g in groups]
            lows += [m - (s or 0) for m, s in zip(means, sds, strict=True) if m is not None and _finite(m)]
            series.append((r["label"], means, sds, _row_style(r, colors)))
        _bars(ax, categories, series, fraction=True)
        bottom = max(0.0, math.floor((min(lows) - 0.05) * 10) / 10) if lows else 0.0
        ax.set_ylim(bottom, 1.06)
        _clip_ticks(ax)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"{attribute} (real test images)")
        ax.set_ylabel(metric + (f"  (axis starts at {bottom:.1f})" if bottom > 0 else ""))
        if bottom > 0:  # the "n/a" marks sit at the baseline
            for text in ax.texts:
                if text.get_text() == "n/a":
                    text.set_y(bottom)
    _row_legend(fig, axes[0])
    fig.suptitle(
        f"Per-group accuracy and AUC by {attribute} (mean ± sd over {len(doc['settings']['seeds'])} seeds; "
        f"n/a = AUC undefined: < {doc['settings']['min_per_class']} positives or negatives of a class)",
        fontsize=10,
    )
    return _save(fig, path)


def _heatmap_columns(doc: Mapping[str, Any]) -> list[tuple[str, str, dict[str, float | None], bool]]:
    """(metric, column title, {cell: value}, higher_is_better) for every heatmap column."""
    cols: list[tuple[str, str, dict[str, float | None], bool]] = []
    for metric in ("fid", "kid"):
        info = METRICS[metric]
        for name, rep in doc["generative"].items():
            groups = (rep.get("cells") or {}).get("groups") or {}
            values = {c: e[f"{metric}_mean"] for c, e in groups.items()}
            cols.append((metric, f"{info.name}\n{name}", values, bool(info.higher_is_better)))
    info = METRICS["accuracy"]
    for r in doc["downstream"]["rows"]:
        values = {c: e["accuracy"]["mean"] for c, e in r["by_cell"].items()}
        cols.append(("accuracy", f"{info.name}\n{r['label']}", values, bool(info.higher_is_better)))
    return cols


def plot_cell_heatmap(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Cells (rows) × metrics (columns), coloured from better (green) to worse (red) on one
    scale per metric (FID, KID, accuracy), so the sets and rows are comparable; values printed."""
    from matplotlib import colormaps

    cells = list(doc["data"]["real"]["cells"])
    cols = _heatmap_columns(doc)
    values = np.array([[v.get(c) if _finite(v.get(c)) else np.nan for _, _, v, _ in cols] for c in cells], dtype=float)
    badness = np.full_like(values, np.nan)
    for metric in dict.fromkeys(m for m, _, _, _ in cols):  # one colour scale per metric, shared by its columns
        idx = [j for j, col in enumerate(cols) if col[0] == metric]
        block = values[:, idx]
        if np.isfinite(block).any():
            lo, hi = np.nanmin(block), np.nanmax(block)
            scaled = (block - lo) / (hi - lo) if hi > lo else np.full_like(block, 0.5)
            badness[:, idx] = 1 - scaled if cols[idx[0]][3] else scaled
    cmap = colormaps["RdYlGn_r"].with_extremes(bad="#e0e0e0")
    fig = _figure(2.4 + 1.05 * len(cols), 1.5 + 0.3 * len(cells))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(badness), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(len(cells)):
        for j in range(len(cols)):
            v, b = values[i, j], badness[i, j]
            text = "n/a" if np.isnan(v) else _short(v, cols[j][0] == "accuracy")
            dark = not np.isnan(b) and (b < 0.15 or b > 0.85)
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(np.arange(len(cols)), [t for _, t, _, _ in cols], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(np.arange(len(cells)), cells, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(cells) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, ticks=[0, 1])
    bar.ax.set_yticklabels(["better", "worse"], fontsize=8)
    bar.set_label("within each metric (FID, KID, accuracy)", fontsize=8)
    ax.set_title(
        "Per cell: size-matched FID / KID of each set,\ndownstream test accuracy (mean over seeds)", fontsize=10, pad=8
    )
    return _save(fig, path)


def _view_block(row: Mapping[str, Any], view: str) -> Mapping[str, Any]:
    return row["fairness"] if view == "test" else (row.get("counterfactual") or {}).get("fairness") or {}


def plot_gap_closure(doc: Mapping[str, Any], view: str, path: str | Path) -> Path:
    """Per attribute of ``view``: the minority gap of every row (± sd over runs) and the gap closure of every
    synthetic row with its bootstrap CI; undefined closures are marked, with the reason in the title."""
    ds, colors = doc["downstream"], _set_colors(doc)
    attrs = ds["view_attributes"][view]
    rows = ds["rows"]
    synthetic = [r for r in rows if r.get("kind") == "synthetic"]
    fig = _figure(11.0, 1.2 + (1.0 + 0.42 * max(len(rows), 2)) * len(attrs))
    axes = np.atleast_2d(fig.subplots(len(attrs), 2, squeeze=False))
    where = "counterfactual set" if view == "counterfactual" else "real test split"
    for i, a in enumerate(attrs):
        ax_gap, ax_cl = axes[i]
        # 1. minority gap per row, ± sd over (replicate, seed) runs
        y = np.arange(len(rows))[::-1]
        for yy, r in zip(y, rows, strict=True):
            entry = (_view_block(r, view).get(a) or {}).get("summary", {}).get("minority_gap") or {}
            m, sd = entry.get("mean"), entry.get("sd") or 0.0
            style = _row_style(r, colors)
            if m is None:
                ax_gap.text(0, yy, "n/a", va="center", fontsize=8, color="#555555")
                continue
            ax_gap.barh(yy, m, 0.7, xerr=sd, capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333333"}, **style)
            ax_gap.annotate(
                f"{m:.3f}",
                (max(m, 0) + sd, yy),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color="#333333",
            )
        ax_gap.set_yticks(y, [r["label"] for r in rows], fontsize=8)
        ax_gap.axvline(0, color="#999999", linewidth=0.8)
        minority = ds["minority"][a]["value"]
        ax_gap.set_title(f"minority gap by {a} (others − {minority}), ± sd over runs", fontsize=9)
        ax_gap.set_xlabel("accuracy difference")
        # 2. gap closure with its CI
        ys = np.arange(len(synthetic))[::-1]
        reasons = []
        for yy, r in zip(ys, synthetic, strict=True):
            block = ((r.get("gap_closure") or {}).get(view) or {}).get(a) or {}
            value, ci = block.get("value"), block.get("ci")
            color = colors.get(r["set"], _PALETTE[0])
            if value is None:
                ax_cl.text(0.5, yy, "undefined", ha="center", va="center", fontsize=8, color="#555555")
                if block.get("reason") and block["reason"] not in reasons:
                    reasons.append(block["reason"])
                continue
            err = None if not ci else [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]
            ax_cl.errorbar(value, yy, xerr=err, fmt="o", color=color, capsize=4, markersize=6)
            ax_cl.annotate(
                f"{value:.2f}",
                (value, yy),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                color="#333333",
            )
        ax_cl.axvline(0, color=_BASE_COLOR, linewidth=1, linestyle="--")
        ax_cl.axvline(1, color=_ORACLE_COLOR, linewidth=1, linestyle="--")
        ax_cl.set_yticks(ys, [r["label"] for r in synthetic], fontsize=8)
        ax_cl.set_ylim(-0.8, max(len(synthetic), 1) - 0.2)
        low, high = ax_cl.get_xlim()
        ax_cl.set_xlim(min(low, -0.25), max(high, 1.25))
        title = "gap closure [CI] (0 = Base, 1 = oracle)"
        if reasons:
            title += "\nundefined: " + reasons[0].split(":")[0][:70]
        ax_cl.set_title(title, fontsize=9)
        ax_cl.set_xlabel("(Base gap − row gap) / (Base gap − oracle gap)")
        for ax in (ax_gap, ax_cl):
            ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
            ax.set_axisbelow(True)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
    fig.suptitle(f"Minority gap and gap closure on the {where}", fontsize=11)
    return _save(fig, path)


def plot_samples(doc: Mapping[str, Any], samples: Mapping[str, Mapping[str, np.ndarray]], path: str | Path) -> Path:
    """One row per cell; column blocks = real data then each synthetic name's first replicate; empty tiles where a
    cell has no image."""
    cells = list(doc["data"]["real"]["cells"])
    sources = ["real", *(s for s in doc.get("samples", {}) if s != "real")]
    per = int(doc["settings"]["grid_per_cell"])
    size = int(doc["settings"]["size"])
    gap, block_gap = max(1, size // 16), max(4, size // 3)
    block_w = per * size + (per - 1) * gap
    width = len(sources) * block_w + (len(sources) - 1) * block_gap
    height = len(cells) * size + (len(cells) - 1) * gap
    mosaic = np.full((height, width, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        y = i * (size + gap)
        for b, source in enumerate(sources):
            x0 = b * (block_w + block_gap)
            images = samples.get(source, {}).get(cell)
            for t in range(per):
                x = x0 + t * (size + gap)
                if images is not None and t < len(images):
                    mosaic[y : y + size, x : x + size] = images[t]
                else:
                    mosaic[y : y + size, x : x + size] = 236
    scale = max(1.0, 40 / size)
    fig = _figure(width * scale / DPI + 2.2, height * scale / DPI + 0.9)
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([i * (size + gap) + size / 2 for i in range(len(cells))], cells, fontsize=8)
    centers = [b * (block_w + block_gap) + block_w / 2 for b in range(len(sources))]
    titles = [
        f"{s}\n({doc['data']['real']['n'] if s == 'real' else doc['data']['sets'][s]['n']} images)" for s in sources
    ]
    ax.set_xticks(centers, titles, fontsize=9)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return path


def write_plots(
    doc: Mapping[str, Any], samples: Mapping[str, Mapping[str, np.ndarray]], root: str | Path
) -> dict[str, str]:
    """Write every plot under ``root/plots/``; returns ``{key: "plots/<file>.png"}`` (paths relative to ``root``)."""
    root = Path(root)
    out: dict[str, str] = {}

    def put(key: str, fn: Any, *args: Any) -> None:
        rel = f"plots/{_safe(key)}.png"
        fn(doc, *args, root / rel)
        out[key] = rel

    for a in doc["settings"]["attributes"]:
        put(f"fid_by_group_{a}", plot_fid_by_group, a)
    put("heatmap_cells", plot_cell_heatmap)
    if doc["downstream"]["rows"]:
        for a in doc["settings"]["attributes"]:
            put(f"fairness_gaps_{a}", plot_fairness_gaps, a)
            put(f"accuracy_by_group_{a}", plot_fairness_by_group, a)
        for view in doc["downstream"].get("views", []):
            if doc["downstream"]["view_attributes"].get(view):
                put(f"gap_closure_{view}", plot_gap_closure, view)
    put("samples", plot_samples, samples)
    return out

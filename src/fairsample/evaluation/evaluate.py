"""One call from a real dataset and several generated sets to a full evaluation report (issues #4, #12; METHODS.md
§5.14).

:func:`evaluate` checks every input first (one-line :class:`~fairsample.core.errors.DataError` /
:class:`~fairsample.core.errors.ConfigError` before any training), then

1. trains one :class:`~fairsample.evaluation.features.DomainFeatures` module on the real images, so every synthetic
   set is
   compared in the same feature space;
2. computes :func:`~fairsample.evaluation.generative.generative_report` per synthetic set *replicate* (each attribute
   separately) and a size-matched FID / KID per cell (:func:`~fairsample.evaluation.generative.group_fid`), plus mean
   ± sd
   over each name's replicates;
3. measures the balanced error rate of attribute classifiers
   (:func:`~fairsample.evaluation.attribute_ber.attribute_classifier_ber`) on the real data and on each replicate, plus
   the BER
   of the real-trained classifier on each replicate;
4. runs the downstream rows (:mod:`fairsample.evaluation.rows`): ``real_only`` once (Base), the oracle (real train
   split +
   every real held-out image of ``oracle``) once, ``real_plus_synthetic`` / ``synthetic_only`` once per synthetic name
   and replicate; every classifier predicts the real test split (view ``test``) and the ``counterfactual`` set;
5. aggregates every metric as mean ± sd (ddof=1) over every (replicate, seed), and derives the minority gap and the
   gap closure with hierarchical bootstrap CIs (:mod:`fairsample.evaluation.closure`).

Synthetic sets and replicates: ``synthetic={"vanilla": [dir_seed0, dir_seed1], "fair": dir}`` (a path, a dataset or a
list of them per name; a list = one generator per generator training seed). Each replicate has a **set id**: the name
itself for a single replicate, else ``<name>#1``, ``<name>#2``, ... The generative, BER, data and sample sections are
keyed by set id; downstream rows by name. The sample grid shows the first replicate of each name.

``report.json`` (schema ``fairsample.evaluation/2``; fractions are never ×100, NaN is stored as null):

- ``schema``, ``run`` (``created``, ``command``, ``seconds`` per stage), ``settings`` (every option, plus ``real``,
  ``synthetic`` {set id: root}, ``counterfactual`` / ``oracle`` roots or null, ``minority`` as requested,
  ``reference``), ``versions``, ``features``, ``warnings`` [{where, message}], ``plots`` {key: relative PNG path},
  ``samples`` {"real" or set id: {cell: [file names]}}.
- ``data``: ``real`` {root, n, label, groups, by_attribute, cells}; ``sets`` {set id: {name, replicate (1-based),
  root, n, by_attribute, cells, generator}}; ``replicates`` {name: [set ids]}; ``counterfactual`` null or {root, n,
  attributes (the ones it is reported by), by_attribute, cells, n_content, pairing {attribute: {paired, n_content,
  n_unpaired, values}}, overlap {bytes, first, content_id}}; ``oracle`` null or {root, n, by_attribute, cells, overlap
  {real: ..., counterfactual: ...}}; ``cell_columns``.
- ``generative`` {set id: generative_report + ``cells``, ``cells_missing``}; ``generative_summary`` {name:
  {n_replicates, sets, fid, kid, is_domain, by {attribute: {fid_variance, es_fid, fid_by_group {group: …}}}}}, each
  leaf {mean, sd, n, values} over the replicates (sd null for one replicate).
- ``ber``: ``real`` {attribute: …}, ``sets`` {set id: {attribute: {…, real_trained}}}, ``summary`` {name: {attribute:
  {ber, real_trained_ber}}} (mean ± sd over replicates).
- ``downstream``: ``split``, ``classifier``, ``protocol_config``;
  ``views``: the test views, primary first (``["counterfactual", "test"]`` or ``["test"]``);
  ``view_attributes`` {view: [attributes]}; ``minority`` {attribute: {value, group, rule, n_train {value: images}}};
  ``reference`` (name or null); ``problem`` {view: {attribute: {minority, base_gap, oracle_gap ({mean, sd, ci, n} or
  null), difference (Base − oracle: {mean, ci} or null), closable, reason, base_by_group, oracle_by_group,
  base_worst_best_gap, oracle_worst_best_gap, base_accuracy, oracle_accuracy}}};
  ``rows``: one per row, each {id (``base``, ``oracle``, ``real+<name>``, ``<name>-only``), label, kind (``base`` |
  ``oracle`` | ``synthetic``), protocol (``real_only``, ``real_plus_oracle``, ``real_plus_synthetic``,
  ``synthetic_only``), set (name or null), n_replicates, replicates [{set, root, n_train,
  n_train_real, n_train_synthetic, selected_epochs}], n_train / n_train_real / n_train_synthetic (first replicate;
  for the oracle row n_train_synthetic counts its real held-out images), seeds, selected_epochs (every run,
  replicate-major), test_accuracy, ``fairness`` (test view), ``by_cell`` (test view), ``counterfactual`` (null or
  {accuracy, fairness, by_cell}), ``gap_closure`` (synthetic rows: {view: {attribute: closure block}}; else null)}.
  A fairness block (one per view and attribute) is {summary {metric: {mean, sd, n, values}} with every
  :data:`FAIRNESS_METRICS` metric plus ``minority_gap`` and ``worst_best_gap``, by_group {"attr=value": {n, accuracy,
  auc}}, minority, minority_gap_by_replicate [[per-seed gaps] per replicate], runs [{replicate (0-based), seed,
  selected_epoch, minority_gap, worst_best_gap, report (FairnessReport.to_dict())}]}; ``values`` lists are in run
  order (replicate-major). A closure block is :func:`~fairsample.evaluation.closure.gap_closure`'s dict (value, ci,
  defined,
  reason, base_gap, oracle_gap, row_gap {mean, ci, between_generator_sd, within_seed_sd, n_replicates, n_values,
  by_replicate}, reduction, denominator, bootstrap), plus ``vs_reference`` ({reference: row id} |
  :func:`~fairsample.evaluation.closure.closure_difference`) when ``reference`` is set.
- ``definitions`` {evaluation, closure, generative, fairness, method_status}.

The result's :meth:`EvaluationResult.save` writes ``report.json``, ``report.md``, a self-contained ``report.html`` and
PNG plots under ``plots/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fairsample._version import __version__
from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.core.json_safe import json_safe
from fairsample.core.provenance import package_versions
from fairsample.evaluation.aggregate import (
    FAIRNESS_METRICS,
    _cell_columns,
    _counts,
    _keys,
    _mean_sd,  # noqa: F401  (re-exported)
    _natural_key,
    check_seeds,  # noqa: F401  (FAIRNESS_METRICS and _mean_sd are re-exported)
)
from fairsample.evaluation.inputs import Inputs, _check_splits, _load_inputs, _resolve_minority
from fairsample.evaluation.set_metrics import _ber_stage, _generative_stage, _replicate_summary

if TYPE_CHECKING:
    from typing import TypeAlias

    from fairsample.data.folder import FolderDataset

    SetInput: TypeAlias = FolderDataset | str | os.PathLike[str]

# Heavy modules (pandas, torch, torchmetrics, fairlearn, matplotlib) are imported inside the functions, so the CLI
# starts fast and input errors are reported before torch is even imported.

__all__ = [
    "DEFINITIONS",
    "FAIRNESS_METRICS",
    "PROTOCOLS",
    "SCHEMA",
    "EvaluationResult",
    "EvaluationSettings",
    "check_output_dir",
    "evaluate",
]

#: ``report.json`` schema tag; bump when a key changes meaning.
SCHEMA = "fairsample.evaluation/2"
#: downstream protocols, in report order (equal to :data:`fairsample.evaluation.downstream.PROTOCOLS`; tested).
PROTOCOLS: tuple[str, str, str] = ("real_only", "real_plus_synthetic", "synthetic_only")
#: what the evaluation-level quantities mean (the metric modules add their own definitions).
DEFINITIONS: dict[str, str] = {
    "mean_sd_over_seeds": "downstream numbers are mean and sd (ddof=1) over every (generator replicate, training "
    "seed) run of the per-run FairnessReport values; metrics undefined (NaN) for a run are left out of that mean and "
    "counted in `n`",
    "base_row": "Base = protocol real_only: a SmallCNN trained on the real train split only",
    "oracle_row": "oracle = a SmallCNN trained on the real train split plus every image of the oracle set (real "
    "held-out images, e.g. as many per cell as a balanced augmentation adds); same seeds, epochs and selection as "
    "every row; never a generated set, never in the generative metrics",
    "replicates": "a synthetic name may hold several sets made by the same method with different generator training "
    "seeds (replicates); generative metrics and BER are computed per replicate (set id <name>#k) and summarised as "
    "mean and sd over the replicates; downstream rows train every classifier seed on every replicate and report mean "
    "and sd over all (replicate, seed) runs",
    "real_plus_synthetic": "a SmallCNN trained on the real train split plus every image of the synthetic set",
    "synthetic_only": "a SmallCNN trained on the synthetic set only",
    "test_split": "every downstream row is tested on the same real test split (split_indices with `seed` and "
    "`fractions`, stratified by cell); checkpoints are selected on the real validation split",
    "views": "each classifier predicts the real test split (view `test`) and, when given, the counterfactual set "
    "(view `counterfactual`: held-out content rendered in every value of an attribute, rows paired by content_id; "
    "never used for training or selection); every per-row metric is reported for each view",
    "ber_fresh": "BER = 1 - balanced accuracy of a fresh attribute classifier trained on 80 % of the set (stratified, "
    "seed) and scored on the held-out 20 %; 0 = attribute fully recoverable, (K-1)/K = unpredictable",
    "ber_real_trained": "BER of the attribute classifier trained on the real data (80 % part), applied to every image "
    "of the synthetic set labelled with its requested attribute value (attribute fidelity of the generator)",
    "cell_fid": "per cell (attribute values x label): size-matched FID / KID as group_fid(groups='cell') over the "
    "cells with >= 2 real and >= 2 synthetic images",
    "cell_accuracy": "per cell: accuracy of the downstream classifier on the test images of that cell (per view), "
    "mean and sd (ddof=1) over every (replicate, seed)",
    "features": "one DomainFeatures module trained once on all real images (target = cell) embeds every set; it is "
    "the FID / KID / IS-domain feature space of every number in the generative tables",
}

# ------------------------------------------------------------------------------------------- error templates
_CF_NO_MINORITY = (
    "`counterfactual` set {root} has no image of the minority {attribute}={value!r} (values: {values}); render its "
    "content in that value too, or pass minority= another value."
)
_BAD_PROTOCOLS = "`protocols` must be a non-empty list of distinct values from {allowed}, got {value!r}."
_BAD_INT = "`{name}` must be an integer >= {low}, got {value!r}."
_BAD_FRACTIONS = (
    "`fractions` must be three numbers >= 0 summing to 1 (train, val, test) with val, test > 0, got {value!r}."
)
_OUTPUT_NOT_EMPTY = "`output_dir` {path} is not empty; pass overwrite=True to replace it or choose a new folder."
_OUTPUT_NOT_DIR = "`output_dir` {path} exists and is not a folder; choose a folder path."

_SKLEARN_CLASS_NOTE = r"y_pred contains classes not in y_true"

Progress = Callable[[str], None]


# -------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class EvaluationSettings:
    """Every option of :func:`evaluate` (the defaults evaluate the demo in a few CPU minutes); stored in the JSON."""

    attributes: tuple[str, ...] = ()  # sensitive attributes reported (resolved; default every group column)
    protocols: tuple[str, ...] = ("real_only", "real_plus_synthetic")  # downstream protocols run
    seeds: tuple[int, ...] = (0, 1, 2)  # downstream training seeds; tables show mean ± sd over them
    epochs: int = 10  # downstream classifier epochs per seed (val-selected checkpoint)
    size: int = 32  # square side every image is loaded at (bicubic), for every metric
    k: int = 10  # size-matched FID draws per group / cell
    n_resamples: int = 100  # bootstrap resamples per FairnessReport (0 = no CIs)
    seed: int = 0  # feature module, FID draws, real split, bootstrap, BER and sample-grid seed
    feature_epochs: int | None = None  # DomainFeatures epochs (None: >= 8 epochs and 300 steps)
    ber_epochs: int = 8  # attribute-classifier epochs (BER)
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # real train / val / test shares
    batch_size: int = 64  # classifier batch size (downstream, features, BER)
    learning_rate: float = 3e-3  # classifier AdamW learning rate (downstream, BER)
    min_per_class: int = 5  # a group AUC needs this many positives and negatives per class
    grid_per_cell: int = 6  # images per cell and set in the sample grid
    allow_few_seeds: bool = False  # accept fewer than 3 seeds (sd is then None)
    closure_resamples: int = 2000  # hierarchical bootstrap resamples of the gap closure CIs

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples → lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------------------------------- result


@dataclass
class EvaluationResult:
    """The outcome of :func:`evaluate`.

    Attributes:
        report: the JSON document (every number of the Markdown / HTML; fractions, NaN stored as None).
        fairness_reports: row id (``"base"``, ``"oracle"``, ``"real+<name>"``, ``"<name>-only"``) → attribute → one
            :class:`~fairsample.evaluation.fairness_report.FairnessReport` per (replicate, seed), replicate-major, on
            the
            real test split (``.overall``, ``.by_group``, ``.difference()``, ``.to_dict()``).
        samples: ``"real"`` or a set id → cell text → ``(n, size, size, 3)`` uint8 images for the sample grid.
        command: the command line that produced the result (set by the CLI), recorded in the report.
        counterfactual_reports: the same as ``fairness_reports`` on the counterfactual set (empty without one; only
            the attributes the counterfactual set is reported by).
    """

    report: dict[str, Any]
    fairness_reports: dict[str, dict[str, list[Any]]] = field(repr=False)
    samples: dict[str, dict[str, np.ndarray]] = field(repr=False)
    command: str | None = None
    counterfactual_reports: dict[str, dict[str, list[Any]]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (a deep copy), with ``run.command``."""
        doc: dict[str, Any] = json.loads(json.dumps(self.report, allow_nan=False))
        doc["run"]["command"] = self.command
        return doc

    def headline(self) -> dict[str, Any]:
        """A few numbers for a terminal summary, for the first attribute: per synthetic name the mean over its
        replicates of FID, KID, FID variance, ES-FID and BER; per downstream row the test-split accuracy and gaps,
        and, on the primary view (the counterfactual set when given), the minority gap and the gap closure."""
        r = self.report
        attr = r["settings"]["attributes"][0]
        down = r["downstream"]
        view = next((v for v in down["views"] if attr in down["view_attributes"][v]), "test")
        gen: dict[str, Any] = {}
        for name, g in r["generative_summary"].items():
            by = g["by"][attr]
            ber = r["ber"]["summary"][name].get(attr) or {}
            gen[name] = {
                "fid": g["fid"]["mean"],
                "kid": g["kid"]["mean"],
                "fid_variance": by["fid_variance"]["mean"],
                "es_fid": by["es_fid"]["mean"],
                "ber": (ber.get("ber") or {}).get("mean"),
                "n_replicates": g["n_replicates"],
            }
        rows: dict[str, Any] = {}
        for row in down["rows"]:
            summary = row["fairness"][attr]["summary"]
            entry = {m: summary[m]["mean"] for m in ("accuracy", "dp_gap", "eopp_gap", "eodds_gap", "essp")}
            block = row["fairness"] if view == "test" else row["counterfactual"]["fairness"]
            entry["minority_gap"] = block[attr]["summary"]["minority_gap"]["mean"]
            closure = ((row.get("gap_closure") or {}).get(view) or {}).get(attr)
            entry["gap_closure"] = closure["value"] if closure else None
            entry["gap_closure_ci"] = closure["ci"] if closure else None
            rows[row["id"]] = entry
        minority = down["minority"][attr]["value"]
        return {"attribute": attr, "view": view, "minority": minority, "generative": gen, "fairness": rows}

    def markdown(self) -> str:
        """``report.md`` text (plot links appear once :meth:`save` has written the plots)."""
        from fairsample.evaluation.report_render import render_markdown

        return render_markdown(self.to_dict())

    def save(self, output_dir: str | os.PathLike[str], *, overwrite: bool = False) -> dict[str, Any]:
        """Write ``report.json``, ``report.md``, ``report.html`` and ``plots/*.png`` into ``output_dir``.

        Everything is written into a hidden sibling folder that is renamed to ``output_dir`` at the end, so an
        interrupted save never leaves a folder that looks complete.

        Args:
            output_dir: folder to create (missing or empty, or any folder with ``overwrite=True``).
            overwrite: replace an existing non-empty folder.

        Returns:
            ``{"output_dir", "json", "markdown", "html", "plots": {key: path}}`` (absolute paths as str).

        Raises:
            ConfigError: ``output_dir`` is a file, or a non-empty folder without ``overwrite``.
        """
        from fairsample.evaluation.report_plots import write_plots
        from fairsample.evaluation.report_render import render_html, render_markdown

        out = check_output_dir(output_dir, overwrite=overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            doc = self.to_dict()
            doc["plots"] = write_plots(doc, self.samples, tmp)
            (tmp / "report.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
            (tmp / "report.md").write_text(render_markdown(doc), encoding="utf-8")
            (tmp / "report.html").write_text(render_html(doc, tmp), encoding="utf-8")
            _replace_dir(tmp, out)
            self.report["plots"] = dict(doc["plots"])
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return {
            "output_dir": str(out),
            "json": str(out / "report.json"),
            "markdown": str(out / "report.md"),
            "html": str(out / "report.html"),
            "plots": {key: str(out / rel) for key, rel in doc["plots"].items()},
        }


def check_output_dir(output_dir: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """``output_dir`` as a resolved Path; ConfigError if it is a file or a non-empty folder without ``overwrite``."""
    out = Path(output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ConfigError(_OUTPUT_NOT_DIR.format(path=out))
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(_OUTPUT_NOT_EMPTY.format(path=out))
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- helpers


class _Warnings:
    """Collects warnings stage by stage: FairsampleWarnings go to the report (and are re-issued once at the end)."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []
        self.others: list[warnings.WarningMessage] = []

    @contextlib.contextmanager
    def stage(self, where: str) -> Iterator[None]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FairsampleWarning)  # others keep the caller's filters
            warnings.filterwarnings("ignore", message=_SKLEARN_CLASS_NOTE)
            yield
        for w in caught:
            if issubclass(w.category, FairsampleWarning):
                item = {"where": where, "message": str(w.message)}
                if item not in self.items:
                    self.items.append(item)
            else:
                self.others.append(w)

    def reissue(self) -> None:
        for w in self.others:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        for item in self.items:
            warnings.warn(f"{item['where']}: {item['message']}", FairsampleWarning, stacklevel=3)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(_BAD_INT.format(name=name, value=value, low=low))
    return int(value)


def _check_protocols(protocols: Any) -> tuple[str, ...]:
    values = [protocols] if isinstance(protocols, str) else list(protocols) if isinstance(protocols, Sequence) else []
    if not values or any(p not in PROTOCOLS for p in values) or len(set(values)) != len(values):
        raise ConfigError(_BAD_PROTOCOLS.format(allowed=list(PROTOCOLS), value=protocols))
    return tuple(p for p in PROTOCOLS if p in values)


def _check_fractions(fractions: Any) -> tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ConfigError(_BAD_FRACTIONS.format(value=fractions)) from None
    if len(fr) != 3 or min(fr) < 0 or fr[1] <= 0 or fr[2] <= 0 or abs(sum(fr) - 1) > 1e-9:
        raise ConfigError(_BAD_FRACTIONS.format(value=fractions))
    return fr  # type: ignore[return-value]


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python, the platform and every library whose numbers enter the report, plus the ``extra``
    distributions (``"not installed"`` when missing)."""
    out = {"fairsample": __version__, "python": platform.python_version(), "platform": platform.platform()}
    reported = ("torch", "torchmetrics", "fairlearn", "scikit-learn", "numpy", "pandas", "scipy", "matplotlib")
    out.update(package_versions((*reported, *extra), missing="not installed"))  # type: ignore[arg-type]
    import torch

    out["torch_threads"] = str(torch.get_num_threads())
    return out


def _generator_info(ds: FolderDataset) -> dict[str, Any]:
    """Sampler / method_status columns, the training method of the bundle that made the set (``method``) and the
    generator's config.json summary (STYLE.md §6.2), when present."""
    info: dict[str, Any] = {}
    for column in ("sampler", "method_status"):
        if column in ds.frame.columns:
            info[column] = sorted(set(ds.frame[column].astype(str)), key=_natural_key)
    path = Path(ds.root) / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = None
        if isinstance(cfg, dict):
            keep = ("bundle", "sampler", "method_status", "sample_config", "bundle_method", "plan_digest")
            info["config"] = {k: cfg[k] for k in keep if k in cfg}
            bundle_method = cfg.get("bundle_method")
            if isinstance(bundle_method, dict) and bundle_method.get("name"):
                info["method"] = [str(bundle_method["name"])]
                status = bundle_method.get("method_status")
                if status and status not in info.get("method_status", []):  # the training method's own status
                    info["method_status"] = sorted([*info.get("method_status", []), str(status)], key=_natural_key)
    return info


def _pick_samples(
    ds: FolderDataset, keys: np.ndarray, cells: Sequence[str], n: int, seed: int, size: int, tag: str
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Up to ``n`` images per cell (seeded draw, row order kept) for the sample grid, and their file names."""
    from fairsample.evaluation.generative import folder_images

    images, names = {}, {}
    digest = int.from_bytes(hashlib.blake2b(tag.encode(), digest_size=4).digest(), "little")
    rng = np.random.default_rng([seed, digest])
    files = ds.frame[ds.spec.file_col].astype(str).to_numpy()
    for cell in cells:
        rows = np.flatnonzero(keys == cell)
        if len(rows) == 0:
            continue
        rows = np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))
        images[cell] = folder_images(ds, rows, size=size)
        names[cell] = [str(f) for f in files[rows]]
    return images, names


# ------------------------------------------------------------------------------------------------------ steps


def _settings(
    *,
    protocols: Sequence[str],
    seeds: Sequence[int],
    epochs: int,
    size: int,
    k: int,
    n_resamples: int,
    seed: int,
    feature_epochs: int | None,
    ber_epochs: int,
    fractions: Sequence[float],
    batch_size: int,
    learning_rate: float,
    min_per_class: int,
    grid_per_cell: int,
    allow_few_seeds: bool,
    closure_resamples: int,
) -> EvaluationSettings:
    """Every option of :func:`evaluate` checked (``seed`` first, then in settings order) as EvaluationSettings."""
    seed = _check_int("seed", seed, 0)
    return EvaluationSettings(
        protocols=_check_protocols(protocols),
        seeds=tuple(check_seeds(seeds, bool(allow_few_seeds))),
        epochs=_check_int("epochs", epochs, 1),
        size=_check_int("size", size, 8),
        k=_check_int("k", k, 1),
        n_resamples=_check_int("n_resamples", n_resamples, 0),
        seed=seed,
        feature_epochs=None if feature_epochs is None else _check_int("feature_epochs", feature_epochs, 1),
        ber_epochs=_check_int("ber_epochs", ber_epochs, 1),
        fractions=_check_fractions(fractions),
        batch_size=_check_int("batch_size", batch_size, 1),
        learning_rate=float(learning_rate),
        min_per_class=_check_int("min_per_class", min_per_class, 1),
        grid_per_cell=_check_int("grid_per_cell", grid_per_cell, 1),
        allow_few_seeds=bool(allow_few_seeds),
        closure_resamples=_check_int("closure_resamples", closure_resamples, 1),
    )


def _heldout_docs(
    inputs: Inputs, minorities: Mapping[str, Mapping[str, Any]], log: _Warnings
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The counterfactual and oracle data sections (None if not given); DataError if a cf minority value is missing."""
    from fairsample.evaluation.heldout import file_hashes, overlap, pairing

    real_ds, cf_ds, oracle_ds = inputs.real, inputs.counterfactual, inputs.oracle
    attrs, cf_attrs = inputs.attrs, inputs.cf_attrs
    cf_doc: dict[str, Any] | None = None
    oracle_doc: dict[str, Any] | None = None
    cols = _cell_columns(real_ds, attrs)
    if cf_ds is not None or oracle_ds is not None:
        real_hashes = file_hashes(real_ds)
    if cf_ds is not None:
        for a in cf_attrs:
            present = sorted(set(cf_ds.frame[a].astype(str)), key=_natural_key)
            if minorities[a]["value"] not in present:
                raise DataError(
                    _CF_NO_MINORITY.format(root=cf_ds.root, attribute=a, value=minorities[a]["value"], values=present)
                )
        with log.stage("counterfactual data"):
            cf_doc = {
                "root": str(cf_ds.root),
                "n": len(cf_ds),
                "attributes": list(cf_attrs),
                "by_attribute": {a: _counts(_keys(cf_ds, [a])) for a in cf_attrs},
                "cells": _counts(_keys(cf_ds, [c for c in cols if c in cf_ds.frame.columns])),
                "n_content": int(cf_ds.frame["content_id"].astype(str).nunique()),
                "pairing": {a: pairing(cf_ds, a) for a in cf_attrs},
                "overlap": overlap("counterfactual", cf_ds, "real", real_hashes, real=real_ds),
            }
    if oracle_ds is not None:
        with log.stage("oracle data"):
            oracle_doc = {
                "root": str(oracle_ds.root),
                "n": len(oracle_ds),
                "by_attribute": {a: _counts(_keys(oracle_ds, [a])) for a in attrs},
                "cells": _counts(_keys(oracle_ds, cols)),
                "overlap": {
                    "real": overlap("oracle", oracle_ds, "real", real_hashes),
                    "counterfactual": None
                    if cf_ds is None
                    else overlap("oracle", oracle_ds, "counterfactual", file_hashes(cf_ds)),
                },
            }
    return cf_doc, oracle_doc


def _images(inputs: Inputs, cfg: EvaluationSettings) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every real image and, per set id, every synthetic image, each ``(N, size, size, 3)`` uint8 in row order."""
    from fairsample.evaluation.generative import folder_images

    x_real = folder_images(inputs.real, size=cfg.size)
    x_sets = {name: folder_images(ds, size=cfg.size) for name, ds in inputs.sets.items()}
    return x_real, x_sets


def _downstream(
    inputs: Inputs,
    parts: Mapping[str, np.ndarray],
    minorities: dict[str, dict[str, Any]],
    reference: str | None,
    cfg: EvaluationSettings,
    log: _Warnings,
    say: Progress,
    x_real: np.ndarray,
    x_sets: Mapping[str, np.ndarray],
) -> tuple[dict[str, Any], dict[str, dict[str, list[Any]]], dict[str, dict[str, list[Any]]]]:
    """The ``downstream`` section (rows, views, gaps, closures, minority) and both views' FairnessReports."""
    from fairsample.evaluation.rows import downstream_stage

    minority_values = {a: m["value"] for a, m in minorities.items()}
    downstream, reports, cf_reports = downstream_stage(
        inputs.real,
        inputs.sets,
        inputs.replicates,
        inputs.oracle,
        inputs.counterfactual,
        inputs.cf_attrs,
        inputs.attrs,
        parts,
        minority_values,
        reference,
        cfg,
        log,
        say,
        images={"real": x_real, **x_sets},
    )
    downstream["minority"] = minorities
    return downstream, reports, cf_reports


def _sample_grid(
    inputs: Inputs, cfg: EvaluationSettings
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, list[str]]]]:
    """Sample grid: ``"real"`` / each name's first set id → cell → ``(n, size, size, 3)`` uint8, and file names."""
    cols = _cell_columns(inputs.real, inputs.attrs)
    real_keys = _keys(inputs.real, cols)
    cells = list(_counts(real_keys))
    samples: dict[str, dict[str, np.ndarray]] = {}
    sample_files: dict[str, dict[str, list[str]]] = {}
    samples["real"], sample_files["real"] = _pick_samples(
        inputs.real, real_keys, cells, cfg.grid_per_cell, cfg.seed, cfg.size, "\0real"
    )
    for ids in inputs.replicates.values():
        ds = inputs.sets[ids[0]]
        samples[ids[0]], sample_files[ids[0]] = _pick_samples(
            ds, _keys(ds, cols), cells, cfg.grid_per_cell, cfg.seed, cfg.size, ids[0]
        )
    return samples, sample_files


def _data_doc(inputs: Inputs, cf_doc: dict[str, Any] | None, oracle_doc: dict[str, Any] | None) -> dict[str, Any]:
    """The ``data`` section: counts of the real data, of every set and of the held-out sets, and the cell columns."""
    real_ds, attrs, replicates = inputs.real, inputs.attrs, inputs.replicates
    cols = _cell_columns(real_ds, attrs)
    name_of = {i: (name, k) for name, ids in replicates.items() for k, i in enumerate(ids, start=1)}
    return {
        "real": {
            "root": str(real_ds.root),
            "n": len(real_ds),
            "label": real_ds.spec.label,
            "groups": list(real_ds.spec.groups),
            "by_attribute": {a: _counts(_keys(real_ds, [a])) for a in attrs},
            "cells": _counts(_keys(real_ds, cols)),
        },
        "sets": {
            set_id: {
                "name": name_of[set_id][0],
                "replicate": name_of[set_id][1],
                "root": str(ds.root),
                "n": len(ds),
                "by_attribute": {a: _counts(_keys(ds, [a])) for a in attrs},
                "cells": _counts(_keys(ds, cols)),
                "generator": _generator_info(ds),
            }
            for set_id, ds in inputs.sets.items()
        },
        "replicates": replicates,
        "counterfactual": cf_doc,
        "oracle": oracle_doc,
        "cell_columns": list(cols),
    }


def _report_doc(
    cfg: EvaluationSettings,
    inputs: Inputs,
    minority: Any,
    reference: str | None,
    timing: dict[str, float],
    log: _Warnings,
    sections: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``report.json`` document: run, settings, versions, ``sections`` in order, definitions, warnings, plots."""
    from fairsample.evaluation.closure import DEFINITIONS as CLOSURE_DEFINITIONS
    from fairsample.evaluation.generative import DEFINITIONS as GENERATIVE_DEFINITIONS

    fairness_definitions = {}
    for row in sections["downstream"]["rows"]:
        for a in inputs.attrs:
            fairness_definitions[a] = row["fairness"][a]["runs"][0]["report"]["definitions"]
        break
    return {
        "schema": SCHEMA,
        "run": {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": None,
            "seconds": timing,
        },
        "settings": cfg.to_dict()
        | {
            "real": str(inputs.real.root),
            "synthetic": {n: str(d.root) for n, d in inputs.sets.items()},
            "counterfactual": None if inputs.counterfactual is None else str(inputs.counterfactual.root),
            "oracle": None if inputs.oracle is None else str(inputs.oracle.root),
            "minority": None if minority is None else dict(minority) if isinstance(minority, Mapping) else minority,
            "reference": reference,
        },
        "versions": versions(),
        **sections,
        "definitions": {
            "evaluation": dict(DEFINITIONS),
            "closure": dict(CLOSURE_DEFINITIONS),
            "generative": dict(GENERATIVE_DEFINITIONS),
            "fairness": fairness_definitions,
            "method_status": {
                "es_fid": "project-extension (fairsample definition)",
                "es_is": "project-extension (fairsample definition)",
                "eopp_gap/eodds_gap multiclass": "project-extension (macro over one-vs-rest classes)",
            },
        },
        "warnings": list(log.items),
        "plots": {},
    }


# ---------------------------------------------------------------------------------------------------- evaluate


def evaluate(
    real: FolderDataset | str | os.PathLike[str],
    synthetic: Mapping[str, SetInput | Sequence[SetInput]],
    *,
    attribute: str | Sequence[str] | None = None,
    counterfactual: SetInput | None = None,
    oracle: SetInput | None = None,
    minority: str | Mapping[str, str] | None = None,
    reference: str | None = None,
    protocols: Sequence[str] = EvaluationSettings.protocols,
    seeds: Sequence[int] = EvaluationSettings.seeds,
    epochs: int = EvaluationSettings.epochs,
    size: int = EvaluationSettings.size,
    k: int = EvaluationSettings.k,
    n_resamples: int = EvaluationSettings.n_resamples,
    seed: int = EvaluationSettings.seed,
    feature_epochs: int | None = EvaluationSettings.feature_epochs,
    ber_epochs: int = EvaluationSettings.ber_epochs,
    fractions: Sequence[float] = EvaluationSettings.fractions,
    batch_size: int = EvaluationSettings.batch_size,
    learning_rate: float = EvaluationSettings.learning_rate,
    min_per_class: int = EvaluationSettings.min_per_class,
    grid_per_cell: int = EvaluationSettings.grid_per_cell,
    allow_few_seeds: bool = EvaluationSettings.allow_few_seeds,
    closure_resamples: int = EvaluationSettings.closure_resamples,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Generative quality, attribute BER, downstream fairness, minority gaps and gap closure of synthetic sets.

    Args:
        real: the real dataset (a :class:`FolderDataset` or its folder); its split (``fractions``, ``seed``) gives
            the downstream train / val / test images.
        synthetic: ``{name: set or [replicate sets]}``, a set being a :class:`FolderDataset` or a folder, e.g.
            ``{"vanilla": ["out/v_seed0", "out/v_seed1"], "fair": "out/f"}``; a list holds the same method's sets
            from different generator training seeds. Names use letters, digits, ``.``, ``_``, ``-``. Each set
            needs the real label column and every attribute column.
        attribute: sensitive attribute(s) reported, each separately (default: every group column of ``real``).
        counterfactual: a test-only dataset whose rows with the same ``content_id`` are one content rendered in
            different attribute values (:mod:`fairsample.evaluation.heldout`); every classifier also predicts it (view
            ``"counterfactual"``, the primary view). None: only the real test split.
        oracle: real held-out images (dataset or folder); adds the ``oracle`` row = real train split + all of them.
        minority: the minority value of the first attribute, or ``{attribute: value}``; default per attribute: the
            value with the fewest real training images.
        reference: a synthetic name (e.g. ``"vanilla"``) every other row's closure is compared with
            (``vs_reference``: closure difference with its CI).
        protocols: downstream protocols among ``real_only`` (the Base row, run once), ``real_plus_synthetic`` and
            ``synthetic_only`` (once per name and replicate).
        seeds: downstream training seeds (≥ 3 unless ``allow_few_seeds``); tables show mean ± sd (ddof=1).
        epochs: downstream epochs per seed.
        size: square side every image is loaded at.
        k: size-matched FID draws per group / cell.
        n_resamples: bootstrap resamples of each FairnessReport (its CIs, kept in the per-seed reports).
        seed: seed of the feature module, FID draws, real split, bootstraps, BER and sample grid.
        feature_epochs: DomainFeatures epochs (None: its default).
        ber_epochs: attribute-classifier epochs.
        fractions: real train / val / test shares.
        batch_size, learning_rate: classifier settings.
        min_per_class: positives and negatives per class a group AUC needs (else NaN, excluded from ES-AUC).
        grid_per_cell: images per cell and set in the sample grid.
        allow_few_seeds: accept 1 or 2 seeds.
        closure_resamples: hierarchical bootstrap resamples of every gap-closure CI.
        progress: called with one line per stage (the CLI prints it to stderr).

    Returns:
        :class:`EvaluationResult`; ``.to_dict()`` is the JSON document (module docstring), ``.save(dir)`` writes the
        report.

    Raises:
        ConfigError: a bad option (named, with the allowed values).
        DataError: unusable data, checked before any training: a missing label / attribute column, no cell shared by
            the real data and a set, set values absent from the real data, an attribute group with < 2 real or < 2
            synthetic images, an empty real val / test split, an attribute with a single value, a counterfactual
            set without ``content_id`` or without the minority value.

    Warns:
        FairsampleWarning: each warning of the metric modules once (small groups, undefined AUCs, ...), and
            counterfactual / oracle images that are byte-identical to real images; all are also listed in
            ``report["warnings"]``.

    Example:
        >>> res = evaluate("demo", {"vanilla": ["gen0", "gen1"]}, counterfactual="demo/counterfactual",
        ...                oracle="oracle")  # doctest: +SKIP
        >>> res.report["downstream"]["rows"][2]["gap_closure"]["counterfactual"]["tone"]["value"]  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    say: Progress = progress or (lambda _line: None)
    log = _Warnings()
    timing: dict[str, float] = {}

    # 1. validate options and data; nothing is trained before this block ends
    cfg = _settings(
        protocols=protocols,
        seeds=seeds,
        epochs=epochs,
        size=size,
        k=k,
        n_resamples=n_resamples,
        seed=seed,
        feature_epochs=feature_epochs,
        ber_epochs=ber_epochs,
        fractions=fractions,
        batch_size=batch_size,
        learning_rate=learning_rate,
        min_per_class=min_per_class,
        grid_per_cell=grid_per_cell,
        allow_few_seeds=allow_few_seeds,
        closure_resamples=closure_resamples,
    )
    inputs = _load_inputs(real, synthetic, attribute, counterfactual, oracle, reference, log, say)
    cfg = dataclasses.replace(cfg, attributes=inputs.attrs)
    parts = _check_splits(inputs, cfg)
    minorities = _resolve_minority(inputs.real, parts["train"], inputs.attrs, minority)
    cf_doc, oracle_doc = _heldout_docs(inputs, minorities, log)
    timing["checks"] = time.perf_counter() - t_start

    # 2. feature module (once) + generative metrics per replicate
    t = time.perf_counter()
    generative, feat_doc = _generative_stage(inputs.real, inputs.sets, inputs.attrs, cfg, log, say)
    timing["generative"] = time.perf_counter() - t

    # 3. attribute classifiers (BER)
    t = time.perf_counter()
    x_real, x_sets = _images(inputs, cfg)
    ber = _ber_stage(inputs.real, x_real, inputs.sets, x_sets, inputs.attrs, cfg, log, say)
    timing["ber"] = time.perf_counter() - t
    generative_summary, ber["summary"] = _replicate_summary(inputs.replicates, generative, ber, inputs.attrs)

    # 4. downstream rows, views, gaps and closures
    t = time.perf_counter()
    downstream, reports, cf_reports = _downstream(inputs, parts, minorities, reference, cfg, log, say, x_real, x_sets)
    del x_real, x_sets
    timing["downstream"] = time.perf_counter() - t

    # 5. sample grid (first replicate of each name) and the document
    samples, sample_files = _sample_grid(inputs, cfg)
    sections = {
        "data": _data_doc(inputs, cf_doc, oracle_doc),
        "features": feat_doc,
        "generative": generative,
        "generative_summary": generative_summary,
        "ber": ber,
        "downstream": downstream,
        "samples": sample_files,
    }
    timing["total"] = time.perf_counter() - t_start
    report = _report_doc(cfg, inputs, minority, reference, timing, log, sections)
    result = EvaluationResult(json_safe(report), reports, samples, counterfactual_reports=cf_reports)
    log.reissue()
    return result

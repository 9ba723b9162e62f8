"""Every reported metric's name and better direction, declared once; every renderer reads them from here.

One :class:`MetricInfo` per key of the evaluation document (``report.json``), grouped by the module that computes it
(``computed_by`` names the function; ``tests/evaluation/test_metric_info.py`` checks that it exists and that no
renderer spells a metric's heading or direction itself). Renderers — the evaluation report (Markdown / HTML / plots),
the study's ``RESULTS.md`` and the CLI summaries — take headings from :func:`name`, arrows and legends from
:func:`legend` and colour scales from :attr:`MetricInfo.higher_is_better`; the metric modules take their direction
from here too (e.g. ES-FID scales FID up because FID is lower-is-better).

Why one light module and not a constant in each metric module: renderers read JSON and must not import torch,
torchmetrics or fairlearn (which the metric modules need); see ``docs/decisions.md``.

Example:
    >>> name("dp_gap"), METRICS["dp_gap"].higher_is_better, METRICS["fid"].direction
    ('DP gap', False, 'lower')
    >>> legend(["dp_gap", "nar", "accuracy", "essp"])
    'lower is fairer: DP gap, NAR; higher is better: Accuracy, ESSP'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["METRICS", "MetricInfo", "better", "legend", "name"]


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is shown.

    Attributes:
        key: its key in the evaluation document (``"dp_gap"``).
        name: the heading in every table and plot (``"DP gap"``).
        higher_is_better: True / False; None where no direction is better (BER: read with the conditioning check).
        fairness: True for a disparity between groups ("lower is fairer"), False for a quality score.
        computed_by: ``"module:function"`` that computes it, relative to :mod:`fairsample.evaluation`.
    """

    key: str
    name: str
    higher_is_better: bool | None
    fairness: bool
    computed_by: str

    @property
    def direction(self) -> str:
        """``"higher"``, ``"lower"`` or ``"none"``."""
        return {True: "higher", False: "lower", None: "none"}[self.higher_is_better]

    @property
    def better(self) -> str:
        """``"lower is fairer"`` / ``"higher is fairer"`` (fairness metrics), ``"lower is better"`` /
        ``"higher is better"`` (scores), ``""`` without a direction."""
        if self.higher_is_better is None:
            return ""
        return f"{self.direction} is {'fairer' if self.fairness else 'better'}"

    @property
    def arrow(self) -> str:
        """``"↑"`` (higher is better), ``"↓"`` or ``""``."""
        return {True: "↑", False: "↓", None: ""}[self.higher_is_better]


def _m(key: str, name: str, higher: bool | None, computed_by: str, fairness: bool = False) -> MetricInfo:
    return MetricInfo(key, name, higher, fairness, computed_by)


_ALL: tuple[MetricInfo, ...] = (
    # fairness.py — group disparities of a classifier's predictions
    _m("dp_gap", "DP gap", False, "fairness:dp_gap", fairness=True),
    _m("eopp_gap", "EOpp gap", False, "fairness:eopp_gap", fairness=True),
    _m("eodds_gap", "EOdds gap", False, "fairness:eodds_gap", fairness=True),
    _m("eom", "EOM", True, "fairness:eom", fairness=True),
    # fairness_equity.py — equity-scaled scores and accuracy ratios
    _m("accuracy", "Accuracy", True, "fairness_report:fairness_report"),
    _m("es_acc", "ES-ACC", True, "fairness_equity:es_acc"),
    _m("essp", "ESSP", True, "fairness_equity:essp"),
    _m("nar", "NAR", False, "fairness_equity:nar", fairness=True),
    _m("pqd", "PQD", True, "fairness_equity:pqd", fairness=True),
    # fairness_auc.py
    _m("auc", "AUC", True, "fairness_auc:group_auc"),
    _m("es_auc", "ES-AUC", True, "fairness_auc:es_auc"),
    # fairness_ber.py — attribute recoverability: no better direction on its own
    _m("ber", "BER", None, "fairness_ber:ber"),
    # generative.py — in the DomainFeatures space
    _m("fid", "FID", False, "generative:fid"),
    _m("kid", "KID", False, "generative:kid"),
    _m("is_domain", "IS-domain", True, "generative:inception_score"),
    _m("fid_variance", "FID variance", False, "generative:fid_variance", fairness=True),
    _m("es_fid", "ES-FID", False, "generative:es_fid"),
    _m("es_is", "ES-IS", True, "generative:es_is"),
    # closure.py — the minority gap and how much of it a synthetic set closes
    _m("minority_gap", "Minority gap", False, "closure:minority_gap", fairness=True),
    _m("worst_best_gap", "Worst–best gap", False, "closure:worst_best_gap", fairness=True),
    _m("gap_closure", "Gap closure", True, "closure:gap_closure"),
)

#: ``{key: MetricInfo}`` of every metric the evaluation document reports.
METRICS: dict[str, MetricInfo] = {m.key: m for m in _ALL}


def name(key: str) -> str:
    """The heading of metric ``key`` (``"dp_gap"`` → ``"DP gap"``); KeyError for an unknown key."""
    return METRICS[key].name


def better(keys: Iterable[str]) -> str:
    """The direction phrase all of ``keys`` share (a plot panel's title); ValueError when they differ.

    Example:
        >>> better(["dp_gap", "nar"])
        'lower is fairer'
    """
    phrases = {METRICS[k].better for k in keys}
    if len(phrases) != 1:
        raise ValueError(f"metrics {list(keys)} do not share one direction: {sorted(phrases)}")
    return phrases.pop()


def legend(keys: Iterable[str]) -> str:
    """One sentence on which way is better for ``keys``, grouped: fairness gaps first ("lower is fairer"), then
    lower-is-better and higher-is-better scores; metrics without a direction are left out.

    Example:
        >>> legend(["fid", "kid", "is_domain"])
        'lower is better: FID, KID; higher is better: IS-domain'
    """
    infos = [METRICS[k] for k in keys]
    order = ("lower is fairer", "higher is fairer", "lower is better", "higher is better")
    parts = [(text, [m.name for m in infos if m.better == text]) for text in order]
    return "; ".join(f"{text}: {', '.join(names)}" for text, names in parts if names)

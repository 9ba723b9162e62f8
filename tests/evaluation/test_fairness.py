"""fairsample.evaluation fairness metrics against fairlearn / scikit-learn, hand-computed tables and real CXR group
sizes."""

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    true_positive_rate,
)
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.evaluation.fairness import (
    _EMPTY,
    _FEW_GROUPS,
    _LEN_MISMATCH,
    _MIXED_KINDS,
    _SF_NOT_1D,
    _prepare,
    _rates_from_counts,
    _rates_from_fairlearn,
    dp_gap,
    eodds_gap,
    eom,
    eopp_gap,
)
from fairsample.evaluation.fairness_auc import auc_disparity, es_auc, group_auc
from fairsample.evaluation.fairness_ber import ber
from fairsample.evaluation.fairness_bootstrap import bootstrap_ci
from fairsample.evaluation.fairness_equity import equity_scale, es_acc, essp, nar, pqd
from fairsample.evaluation.fairness_report import fairness_report

# Hand table T (binary, positive class 1):
#   a: y 1 1 0 0 / ŷ 1 1 0 0 -> acc 1,    P(ŷ=1) .5,  TPR1 1,  TPR0 1, FPR1 0
#   b: y 1 1 0 0 / ŷ 1 0 0 0 -> acc .75,  P(ŷ=1) .25, TPR1 .5, TPR0 1, FPR1 0
#   c: y 1 0     / ŷ 1 1     -> acc .5,   P(ŷ=1) 1,   TPR1 1,  TPR0 0, FPR1 1
#   all: acc .8, P(ŷ=1) .5
T_Y = [1, 1, 0, 0, 1, 1, 0, 0, 1, 0]
T_P = [1, 1, 0, 0, 1, 0, 0, 0, 1, 1]
T_G = ["a"] * 4 + ["b"] * 4 + ["c"] * 2


def binary_case(seed: int, n: int = 600, n_groups: int = 3):
    """0/1 labels, predictions 75 % correct with a group-dependent flip rate, skewed group sizes."""
    rng = np.random.default_rng(seed)
    groups = np.array(list("abcd"[:n_groups]))
    g = rng.choice(groups, n, p=np.linspace(2, 1, n_groups) / np.linspace(2, 1, n_groups).sum())
    y = rng.integers(0, 2, n)
    flip = rng.random(n) < np.where(g == "a", 0.15, 0.35)
    return y, np.where(flip, 1 - y, y), g


def multiclass_case(seed: int, n: int = 900, k: int = 4):
    """Labels 0..k-1, predictions 60 % correct, three groups, (n, k) Dirichlet probabilities tilted to the label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    g = rng.choice(["x", "y", "z"], n, p=[0.5, 0.3, 0.2])
    scores = rng.dirichlet(np.ones(k), n) + 0.5 * np.eye(k)[y]
    return y, pred, g, scores / scores.sum(axis=1, keepdims=True)


# --- binary: equal to fairlearn


@pytest.mark.parametrize("seed,n_groups", [(0, 2), (1, 3), (2, 4)])
def test_binary_gaps_equal_fairlearn(seed, n_groups):
    y, p, g = binary_case(seed, n_groups=n_groups)
    assert dp_gap(y, p, sensitive_features=g) == pytest.approx(
        demographic_parity_difference(y, p, sensitive_features=g), abs=1e-12
    )
    assert eodds_gap(y, p, sensitive_features=g) == pytest.approx(
        equalized_odds_difference(y, p, sensitive_features=g), abs=1e-12
    )
    tpr = MetricFrame(metrics=true_positive_rate, y_true=y, y_pred=p, sensitive_features=g)
    assert eopp_gap(y, p, sensitive_features=g) == pytest.approx(tpr.difference(), abs=1e-12)
    assert eopp_gap(y, p, sensitive_features=g) > 0.01  # a non-trivial case


def test_string_labels_use_the_larger_label_or_pos_label():
    y, p, g = binary_case(3)
    names = np.array(["benign", "malignant"])
    assert dp_gap(names[y], names[p], sensitive_features=g) == pytest.approx(dp_gap(y, p, sensitive_features=g))
    assert eodds_gap(names[y], names[p], sensitive_features=g) == pytest.approx(eodds_gap(y, p, sensitive_features=g))
    flipped = eopp_gap(names[y], names[p], sensitive_features=g, pos_label="benign")
    assert flipped == pytest.approx(eopp_gap(1 - y, 1 - p, sensitive_features=g))
    assert flipped != pytest.approx(eopp_gap(y, p, sensitive_features=g))


def test_dp_gap_uses_predictions_not_labels():
    # labels have the same positive rate (0.5) in both groups; predictions do not (0.75 vs 0.25)
    y = [1, 0, 1, 0, 1, 0, 1, 0]
    p = [1, 1, 1, 0, 0, 0, 1, 0]
    g = ["a"] * 4 + ["b"] * 4
    assert dp_gap(y, p, sensitive_features=g) == pytest.approx(0.5)
    assert dp_gap(p, y, sensitive_features=g) == pytest.approx(0.0)
    y3, p3, g3, _ = multiclass_case(4)
    p3 = np.where(g3 == "x", 0, p3)  # a prediction distribution that differs from the labels'
    assert dp_gap(y3, p3, sensitive_features=g3) != pytest.approx(dp_gap(p3, y3, sensitive_features=g3), abs=1e-3)


# --- multiclass: macro over one-vs-rest fairlearn calls


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_gaps_equal_one_vs_rest_fairlearn_loop(seed):
    y, p, g, _ = multiclass_case(seed)
    dp, eopp, eodds = [], [], []
    for c in range(4):
        yc, pc = (y == c).astype(int), (p == c).astype(int)
        dp.append(demographic_parity_difference(yc, pc, sensitive_features=g))
        eopp.append(MetricFrame(metrics=true_positive_rate, y_true=yc, y_pred=pc, sensitive_features=g).difference())
        eodds.append(equalized_odds_difference(yc, pc, sensitive_features=g))
    assert dp_gap(y, p, sensitive_features=g) == pytest.approx(np.mean(dp), abs=1e-12)
    assert eopp_gap(y, p, sensitive_features=g) == pytest.approx(np.mean(eopp), abs=1e-12)
    assert eodds_gap(y, p, sensitive_features=g) == pytest.approx(np.mean(eodds), abs=1e-12)
    per_class = dp_gap(y, p, sensitive_features=g, average=None)
    assert list(per_class) == [0, 1, 2, 3] and per_class[2] == pytest.approx(dp[2], abs=1e-12)
    assert dp_gap(y, p, sensitive_features=g, pos_label=2) == pytest.approx(dp[2], abs=1e-12)


# --- hand-computed tables


def test_hand_table_gaps():
    assert dp_gap(T_Y, T_P, sensitive_features=T_G) == pytest.approx(0.75)
    assert dp_gap(T_Y, T_P, sensitive_features=T_G, mode="sum") == pytest.approx(0.0 + 0.25 + 0.5)
    assert eopp_gap(T_Y, T_P, sensitive_features=T_G) == pytest.approx(0.5)
    assert eodds_gap(T_Y, T_P, sensitive_features=T_G) == pytest.approx(1.0)


def test_dp_gap_sum_multiclass_by_hand():
    # ŷ=0 rates: a 1/2, b 0 ; overall 1/4 -> |.25-.5|+|.25-0| = .5 ; ŷ=1: a .5, b 0, all .25 -> .5 ; ŷ=2: a 0, b 1,
    # all .5 -> 1.0 ; macro = 2/3
    y = [0, 1, 2, 2]
    p = [0, 1, 2, 2]
    g = ["a", "a", "b", "b"]
    assert dp_gap(y, p, sensitive_features=g, mode="sum", average=None) == pytest.approx({0: 0.5, 1: 0.5, 2: 1.0})
    assert dp_gap(y, p, sensitive_features=g, mode="sum") == pytest.approx(2 / 3)


def test_essp_nar_pqd_eom_by_hand():
    assert essp(T_Y, T_P, sensitive_features=T_G) == pytest.approx(0.8 / (1 + 0.2 + 0.05 + 0.3))
    assert es_acc(T_Y, T_P, sensitive_features=T_G) == pytest.approx(0.8 / 1.55)
    assert es_acc(T_Y, T_P, sensitive_features=T_G, alpha=2.0) == pytest.approx(0.8 / 2.1)
    with pytest.warns(FairsampleWarning, match=r"essp\(delta='dp'\) is FairSkin's"):
        assert essp(T_Y, T_P, sensitive_features=T_G, delta="dp") == pytest.approx(0.8 / (1 + 0.0 + 0.25 + 0.5))
    assert nar(T_Y, T_P, sensitive_features=T_G) == pytest.approx((1.0 - 0.5) / 0.75)
    assert pqd(T_Y, T_P, sensitive_features=T_G) == pytest.approx(0.5)
    assert eom(T_Y, T_P, sensitive_features=T_G) == pytest.approx((0.0 / 1.0 + 0.5 / 1.0) / 2)


def test_ber_by_hand_and_sklearn():
    s_true = [0, 0, 0, 0, 1, 1]
    s_pred = [0, 1, 0, 0, 1, 0]
    expected = 0.5 * (1 / 4 + 1 / 2)  # ½[P(h=1|S=0) + P(h=0|S=1)]
    assert ber(s_true, s_pred) == pytest.approx(expected)
    rng = np.random.default_rng(5)
    st, sp = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert ber(st, sp) == pytest.approx(1 - balanced_accuracy_score(st, sp), abs=1e-12)
    assert ber(["F", "M", "M"], ["F", "M", "M"]) == 0.0
    assert ber([0, 1, 2] * 4, [0] * 12) == pytest.approx(2 / 3)  # constant classifier: (K-1)/K
    with pytest.warns(FairsampleWarning, match=r"value\(s\) \[2\] absent from `s_true`"):
        assert ber([0, 0, 1, 1], [0, 2, 1, 1]) == pytest.approx(0.25)


def test_equity_scale_both_directions():
    assert equity_scale(0.8, {"a": 0.9, "b": 0.7}, higher_is_better=True) == pytest.approx(0.8 / 1.2)
    assert equity_scale(0.8, [0.9, 0.7], higher_is_better=True, alpha=2.0) == pytest.approx(0.8 / 1.4)
    assert equity_scale(0.8, [0.9, 0.7], higher_is_better=True, relative=True) == pytest.approx(0.8 / 1.25)
    assert equity_scale(20.0, pd.Series([25.0, 15.0]), higher_is_better=False) == pytest.approx(20.0 * 11)
    assert equity_scale(20.0, [25.0, 15.0], higher_is_better=False, relative=True) == pytest.approx(30.0)
    assert equity_scale(20.0, [20.0, 20.0], higher_is_better=False) == 20.0
    with pytest.warns(FairsampleWarning, match=r"group\(s\) 'b' have an undefined \(NaN\) metric"):
        assert equity_scale(0.8, {"a": 0.9, "b": float("nan")}, higher_is_better=True) == pytest.approx(0.8 / 1.1)
    with pytest.raises(ConfigError, match="`alpha` must be a finite number >= 0, got -1"):
        equity_scale(0.8, [0.9], higher_is_better=True, alpha=-1)


# --- AUC by group


def test_group_auc_equals_sklearn_binary_and_multiclass():
    y, _, g = binary_case(6, n=800)
    s = np.clip(0.3 * y + np.random.default_rng(6).random(800), 0, None)
    result = group_auc(y, s, sensitive_features=g)
    for name in ("a", "b", "c"):
        assert result[name] == pytest.approx(roc_auc_score(y[g == name], s[g == name]), abs=1e-12)
    two_col = np.column_stack([1 - s, s])
    pd.testing.assert_series_equal(group_auc(y, two_col, sensitive_features=g), result)

    y3, _, g3, p3 = multiclass_case(7)
    result3 = group_auc(y3, p3, sensitive_features=g3)
    for name in ("x", "y", "z"):
        m = g3 == name
        assert result3[name] == pytest.approx(roc_auc_score(y3[m], p3[m], multi_class="ovr", average="macro"))
    overall = roc_auc_score(y3, p3, multi_class="ovr", average="macro")
    expected = overall / (1 + np.abs(overall - result3.to_numpy()).sum())
    assert es_auc(y3, p3, sensitive_features=g3) == pytest.approx(expected, abs=1e-12)
    assert auc_disparity(y3, p3, sensitive_features=g3) == pytest.approx(result3.std(ddof=0) / overall)
    spread = result3.max() - result3.min()
    assert auc_disparity(y3, p3, sensitive_features=g3, method="range") == pytest.approx(spread / overall)
    assert auc_disparity(y3, p3, sensitive_features=g3, method="range", half=True) == pytest.approx(
        spread / abs(overall - 0.5)
    )


def test_single_class_group_is_nan_with_warning_and_report_builds():
    y, p, g = binary_case(8, n=400)
    s = np.random.default_rng(8).random(400)
    only_negatives = g == "c"
    y = np.where(only_negatives, 0, y)  # group c has label 0 only
    with pytest.warns(
        FairsampleWarning, match=r"group 'c' has class counts \{0: \d+, 1: 0\}.*AUC is undefined"
    ) as rec:
        result = group_auc(y, s, sensitive_features=g)
    assert len(rec) == 1
    assert math.isnan(result["c"]) and np.isfinite(result[["a", "b"]]).all()
    with pytest.warns(FairsampleWarning, match="group 'c'"):
        value = es_auc(y, s, sensitive_features=g)
    overall = roc_auc_score(y, s)
    assert value == pytest.approx(overall / (1 + abs(overall - result["a"]) + abs(overall - result["b"])))
    with pytest.warns(FairsampleWarning) as rec:
        report = fairness_report(y, p, sensitive_features=g, scores=s, n_resamples=10)
    messages = [str(w.message) for w in rec]
    assert any("group 'c' has class counts" in m for m in messages)
    assert any("TPR is undefined (no sample of the class) for class 1 in group(s) 'c'" in m for m in messages)
    assert math.isnan(report.by_group.loc["c", "auc"]) and math.isnan(report.by_group.loc["c", "tpr"])
    assert report.overall["es_auc"] == pytest.approx(value)
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["by_group"]["c"]["auc"] is None


def test_min_per_class_threshold():
    y = np.array([0, 1] * 20 + [0] * 7 + [1] * 3)
    s = np.linspace(0, 1, len(y))
    g = np.array(["a"] * 40 + ["b"] * 10)
    with pytest.warns(FairsampleWarning, match=r"group 'b' has class counts \{0: 7, 1: 3\}.*needs >= 5 positives"):
        assert math.isnan(group_auc(y, s, sensitive_features=g)["b"])
    assert group_auc(y, s, sensitive_features=g, min_per_class=3)["b"] == pytest.approx(1.0)
    y3, _, g3, s3 = multiclass_case(20, n=600)
    rare = np.flatnonzero((g3 == "z") & (y3 == 3))[2:]
    y3[rare] = 0  # group z keeps 2 samples of class 3 (and hundreds of negatives for it)
    with pytest.warns(FairsampleWarning, match=r"group 'z' has class counts \{0: \d+, 1: \d+, 2: \d+, 3: 2\}"):
        assert math.isnan(group_auc(y3, s3, sensitive_features=g3)["z"])
    assert np.isfinite(group_auc(y3, s3, sensitive_features=g3, min_per_class=2)["z"])


def test_undefined_tpr_group_is_left_out_of_eopp_gap():
    y, p, g = binary_case(9)
    y = np.where(g == "c", 0, y)
    with pytest.warns(FairsampleWarning, match=r"eopp_gap: TPR is undefined .* for class 1 in group\(s\) 'c'"):
        value = eopp_gap(y, p, sensitive_features=g)
    keep = g != "c"
    tpr = MetricFrame(metrics=true_positive_rate, y_true=y[keep], y_pred=p[keep], sensitive_features=g[keep])
    assert value == pytest.approx(tpr.difference(), abs=1e-12)


# --- real group proportions (NIH ChestX-ray14 metadata inside torchxrayvision)


@pytest.fixture(scope="module")
def nih() -> pd.DataFrame:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "torchxrayvision is not installed (pip install --no-deps torchxrayvision) - real CXR metadata absent"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "Data_Entry_2017_v2020.csv.gz"
    if not path.is_file():
        pytest.skip(f"torchxrayvision is installed but has no {path.name}")
    return pd.read_csv(path, usecols=["Patient Gender", "Patient Age"])


@pytest.fixture(scope="module")
def nih_case(nih):
    rows = nih.sample(n=4000, random_state=0)
    sex = rows["Patient Gender"].to_numpy()
    age = pd.cut(rows["Patient Age"], [-1, 39, 59, 200], labels=["<40", "40-59", ">=60"]).astype(str).to_numpy()
    rng = np.random.default_rng(11)
    y = (rng.random(4000) < np.where(sex == "M", 0.35, 0.25)).astype(int)
    logit = 1.2 * y - 0.6 + np.where(age == ">=60", -0.3, 0.2) + rng.normal(0, 1, 4000)
    scores = 1 / (1 + np.exp(-logit))
    return y, (scores > 0.5).astype(int), scores, sex, age


@pytest.mark.parametrize("attribute", ["sex", "age"])
def test_real_groups_match_fairlearn_and_sklearn(nih_case, attribute):
    y, p, s, sex, age = nih_case
    g = sex if attribute == "sex" else age
    assert dp_gap(y, p, sensitive_features=g) == pytest.approx(
        demographic_parity_difference(y, p, sensitive_features=g), abs=1e-12
    )
    assert eodds_gap(y, p, sensitive_features=g) == pytest.approx(
        equalized_odds_difference(y, p, sensitive_features=g), abs=1e-12
    )
    aucs = group_auc(y, s, sensitive_features=g)
    for name in np.unique(g):
        assert aucs[name] == pytest.approx(roc_auc_score(y[g == name], s[g == name]), abs=1e-12)
    report = fairness_report(y, p, sensitive_features=g, scores=s, attribute=attribute, n_resamples=0)
    assert report.group_sizes == pd.Series(g).value_counts().to_dict()
    assert report.by_group.index.name == attribute and report.by_group["n"].sum() == 4000


# --- bootstrap


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    y, p, g = binary_case(13, n=1000)
    a = bootstrap_ci(dp_gap, y, p, g, n_resamples=20, seed=3)
    b = bootstrap_ci(dp_gap, y, p, g, n_resamples=20, seed=3)
    c = bootstrap_ci(dp_gap, y, p, g, n_resamples=20, seed=4)
    assert a == b and a != c
    assert a[0] < dp_gap(y, p, sensitive_features=g) < a[1]
    assert 0 < a[1] - a[0] < 0.2


def test_bootstrap_skips_undefined_resamples():
    y, p, g = binary_case(14, n=60)
    with pytest.warns(FairsampleWarning, match="undefined in 5 of 5 resamples"):
        low, high = bootstrap_ci(lambda *a, **k: float("nan"), y, p, g, n_resamples=5)
    assert math.isnan(low) and math.isnan(high)

    def sometimes(y_true, y_pred, *, sensitive_features):
        if y_true[0] == 1:
            raise ConfigError("undefined here")
        return 0.5

    with pytest.warns(FairsampleWarning, match="sometimes was undefined in"):
        assert bootstrap_ci(sometimes, y, p, g, n_resamples=20, seed=0) == (0.5, 0.5)


def test_report_ci_equals_bootstrap_ci_with_the_same_seed():
    y, p, g, _ = multiclass_case(15, n=500)
    report = fairness_report(y, p, sensitive_features=g, n_resamples=10, seed=2)
    for name, fn in (("dp_gap", dp_gap), ("eodds_gap", eodds_gap), ("nar", nar)):
        assert report.ci[name] == pytest.approx(bootstrap_ci(fn, y, p, g, n_resamples=10, seed=2), abs=1e-12)
    assert report.ci == fairness_report(y, p, sensitive_features=g, n_resamples=10, seed=2).ci


def test_count_path_equals_fairlearn_path():
    y, p, g, _ = multiclass_case(16, n=300)
    y = np.where(g == "z", 0, y)  # undefined TPR / FPR cells
    d = _prepare(y, p, g)
    ref = _rates_from_fairlearn(d)
    fast = _rates_from_counts(d.true_codes, d.pred_codes, d.group_codes, len(d.classes), len(d.groups))
    for name in ("n", "sel", "sel_all", "tpr", "tpr_all", "fpr", "fpr_all", "acc", "acc_all"):
        np.testing.assert_allclose(getattr(fast, name), getattr(ref, name), atol=1e-12, err_msg=name)


def test_rank_auc_equals_sklearn_auc():
    """The bootstrap's Mann-Whitney AUC equals roc_auc_score (binary and ovr-macro), ties and NaN rules included."""
    from fairsample.evaluation.fairness_auc import _auc, _rank_auc

    rng = np.random.default_rng(0)
    for trial in range(40):
        k = 2 + trial % 4
        codes = rng.integers(0, k, 120)
        scores = np.round(rng.random(120), 1) if k == 2 else rng.dirichlet(np.ones(k), 120).round(2)
        if k > 2:
            scores = scores / scores.sum(axis=1, keepdims=True)
        for m in (1, 30):
            ref, fast = _auc(codes, scores, k, m), _rank_auc(codes, scores, k, m)
            assert (math.isnan(ref) and math.isnan(fast)) or ref == pytest.approx(fast, abs=1e-12)


# --- the report


def test_report_overall_equals_the_functions():
    y, p, g, s = multiclass_case(17, n=600)
    report = fairness_report(y, p, sensitive_features=g, scores=s, attribute="race", n_resamples=0)
    kw = {"sensitive_features": g}
    expected = {
        "accuracy": np.mean(y == p),
        "auc": roc_auc_score(y, s, multi_class="ovr", average="macro"),
        "dp_gap": dp_gap(y, p, **kw),
        "eopp_gap": eopp_gap(y, p, **kw),
        "eodds_gap": eodds_gap(y, p, **kw),
        "essp": essp(y, p, **kw),
        "nar": nar(y, p, **kw),
        "pqd": pqd(y, p, **kw),
        "eom": eom(y, p, **kw),
        "es_acc": es_acc(y, p, **kw),
        "es_auc": es_auc(y, s, **kw),
        "auc_disparity_std": auc_disparity(y, s, **kw),
        "auc_disparity_range": auc_disparity(y, s, **kw, method="range"),
    }
    assert report.overall == pytest.approx(expected, abs=1e-12)
    assert report.ci == {}
    assert report.definitions["dp_gap"] == {"mode": "maxmin", "average": "macro", "pos_label": None}
    assert report.definitions["auc"] == {"multi_class": "ovr", "average": "macro"}
    assert report.by_group.index.name == "race" and list(report.by_group.index) == ["x", "y", "z"]
    diff = report.difference()
    sel = report.by_group[[f"selection_rate[{c}]" for c in range(4)]]
    np.testing.assert_allclose(np.mean(diff[sel.columns]), report.overall["dp_gap"], atol=1e-12)
    assert (diff == report.by_group.drop(columns="n").max() - report.by_group.drop(columns="n").min()).all()


def test_report_binary_difference_and_json():
    y, p, g = binary_case(18, n=500)
    report = fairness_report(y, p, sensitive_features=g, n_resamples=20, seed=1)
    for name, fn in (("eom", eom), ("essp", essp), ("pqd", pqd), ("eodds_gap", eodds_gap)):
        assert report.overall[name] == pytest.approx(fn(y, p, sensitive_features=g), abs=1e-12), name
    assert report.difference()["selection_rate"] == pytest.approx(report.overall["dp_gap"])
    assert report.difference()["tpr"] == pytest.approx(report.overall["eopp_gap"])
    sel = report.by_group["selection_rate"]
    assert report.difference("to_overall")["selection_rate"] == pytest.approx(np.abs(sel - p.mean()).max())
    assert report.ratio()["selection_rate"] == pytest.approx(sel.min() / sel.max())
    assert report.group_sizes == {k: int(v) for k, v in pd.Series(g).value_counts().items()}
    assert set(report.ci) == set(report.overall)
    for name, (low, high) in report.ci.items():
        assert low <= high, name
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["definitions"]["essp"] == {"delta": "acc"}
    assert payload["definitions"]["dp_gap"] == {"mode": "maxmin", "average": "macro", "pos_label": 1}
    assert payload["attribute"] == "tone" and payload["ci"]["dp_gap"] == list(report.ci["dp_gap"])


# --- errors


@pytest.mark.parametrize(
    "args,message",
    [
        (([0, 1, 1], [0, 1], ["a", "b", "b"]), _LEN_MISMATCH.format(name="y_pred", m=2, n=3)),
        (([0, 1, 1], [0, 1, 1], ["a", "b"]), _LEN_MISMATCH.format(name="sensitive_features", m=2, n=3)),
        (([], [], []), _EMPTY),
        (([0, 1, 1], [0, 1, 1], ["a", "a", "a"]), _FEW_GROUPS.format(k=1, groups=["a"])),
        (([0, 1], [0, 1], [["a", "x"], ["b", "y"]]), _SF_NOT_1D.format(shape=(2, 2))),
        (([0, 1], ["0", "1"], ["a", "b"]), _MIXED_KINDS.format(a="numbers", b="strings")),
    ],
)
def test_config_errors_name_the_argument(args, message):
    y, p, g = args
    for fn in (dp_gap, eodds_gap, nar):
        with pytest.raises(ConfigError, match=re.escape(message)):
            fn(y, p, sensitive_features=g)
    with pytest.raises(ConfigError, match=re.escape(message)):
        fairness_report(y, p, sensitive_features=g, n_resamples=0)


def test_option_and_score_errors():
    with pytest.raises(ConfigError, match=r"`mode` must be one of \['maxmin', 'sum'\], got 'max'"):
        dp_gap(T_Y, T_P, sensitive_features=T_G, mode="max")
    with pytest.raises(ConfigError, match=r"`pos_label`=2 is not one of the classes \[0, 1\]"):
        eopp_gap(T_Y, T_P, sensitive_features=T_G, pos_label=2)
    with pytest.raises(ConfigError, match=r"`scores` has 3 rows but `y_true` has 10"):
        group_auc(T_Y, [0.1, 0.2, 0.3], sensitive_features=T_G)
    y, _, g, s = multiclass_case(19, n=60)
    with pytest.raises(ConfigError, match="rows must sum to 1 for multiclass AUC"):
        group_auc(y, s * 2, sensitive_features=g)
    with pytest.raises(ConfigError, match=r"must be \(N,\) or \(N, 2\) for 2 classes and \(N, K\) with K = 4"):
        group_auc(y, s[:, :3], sensitive_features=g)
    with pytest.raises(ConfigError, match="`n_resamples` must be an integer >= 1, got 0"):
        bootstrap_ci(dp_gap, T_Y, T_P, T_G, n_resamples=0)

"""Generative metrics: FID / KID / IS-domain against independent formulas, size-matched group FID, FID variance,
ES-FID, ES-IS, the report, the error messages, and the DomainFeatures module (save / load / hash)."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

import fairsample.evaluation.features as features_mod
import fairsample.evaluation.generative as gen_mod
from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.data import FolderDataset
from fairsample.data.schema import DatasetSpec
from fairsample.evaluation.classifiers import SmallCNN
from fairsample.evaluation.features import (
    _HASH_MISMATCH,
    _NEEDS_TORCH_FIDELITY,
    _NO_WEIGHTS,
    CONFIG_FILE,
    DomainFeatures,
    inception_features,
)
from fairsample.evaluation.generative import (
    _BAD_IMAGES,
    _FID_INF_SMALL,
    _MISSING_COLUMN,
    _NO_OVERLAP,
    _SMALL_N_STAR,
    _TOO_FEW_IN_GROUP,
    embed,
    es_fid,
    es_is,
    fid,
    fid_variance,
    generative_report,
    group_fid,
    inception_score,
    kid,
)


def _pattern(template: str) -> str:
    """A message template as a regex: literal text escaped, every ``{placeholder}`` matching anything."""
    return ".*".join(re.escape(part) for part in re.split(r"\{[^}]*\}", template))


def _images(n: int, seed: int, low: int = 0, high: int = 256, side: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, side, side, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def feat8() -> DomainFeatures:
    """A fixed random-init SmallCNN (width 2 → 8 features) over cells of two labels.

    BatchNorm shifts of +0.5 keep every ReLU unit alive, so the 8 features have a full-rank covariance.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SmallCNN(4, width=2)
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, nn.BatchNorm2d):
                layer.bias.fill_(0.5)
    classes = ["t=a,label=0", "t=b,label=0", "t=a,label=1", "t=b,label=1"]
    return DomainFeatures(model, classes, class_labels=["0", "0", "1", "1"], image_size=8, target="cell")


class ChannelMean(nn.Module):
    """Features = per-channel mean in [0, 1]: a brightness shift c moves every feature by exactly c / 255."""

    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0).mean(dim=(2, 3))


def _frechet(fr: np.ndarray, fg: np.ndarray) -> float:
    """Independent reference: ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½) with scipy's sqrtm."""
    mu_r, mu_g = fr.mean(0), fg.mean(0)
    s_r, s_g = np.cov(fr, rowvar=False), np.cov(fg, rowvar=False)
    root = scipy.linalg.sqrtm(s_r @ s_g).real
    return float(((mu_r - mu_g) ** 2).sum() + np.trace(s_r + s_g - 2.0 * root))


# ------------------------------------------------------------------------------------------------- FID / KID / IS


def test_fid_matches_scipy_frechet(feat8):
    real, gen = _images(80, 1), _images(70, 2, low=40)
    expected = _frechet(embed(real, features=feat8), embed(gen, features=feat8))
    assert expected > 1e-4
    assert fid(real, gen, features=feat8) == pytest.approx(expected, rel=1e-6)


def test_fid_matches_torchmetrics_called_with_the_module_and_leaves_it_untouched(feat8):
    real, gen = _images(40, 3), _images(40, 4, low=60)
    before = feat8.hash
    ours = fid(real, gen, features=feat8)
    metric = FrechetInceptionDistance(feature=copy.deepcopy(feat8))  # torchmetrics calls the module on uint8 NCHW
    metric.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    metric.update(torch.from_numpy(gen).permute(0, 3, 1, 2), real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-4)
    assert feat8.hash == before and next(feat8.parameters()).dtype == torch.float32


def test_fid_of_a_set_with_itself_is_zero(feat8):
    x = _images(50, 5)
    assert abs(fid(x, x, features=feat8)) < 1e-9


def test_fid_grows_with_a_mean_shift_exactly_as_the_formula():
    x = _images(60, 6, low=50, high=150)
    values = [fid(x, x + np.uint8(c), features=ChannelMean()) for c in (10, 40, 100)]
    assert values == pytest.approx([3 * (c / 255) ** 2 for c in (10, 40, 100)], rel=1e-6)
    assert values[0] < values[1] < values[2]


def test_fid_accepts_nchw_tensors_and_rejects_other_layouts(feat8):
    x = _images(10, 7)
    assert fid(torch.from_numpy(x).permute(0, 3, 1, 2), x, features=feat8) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ConfigError, match=_pattern(_BAD_IMAGES)):
        fid(x.astype(np.float32), x, features=feat8)


def _unbiased_mmd2(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: unbiased MMD² with the cubic kernel (x·y / d + 1)³ (KID's kernel)."""
    k = lambda x, y: (x @ y.T / a.shape[1] + 1.0) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m, n = len(a), len(b)
    return float(
        (kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1)) - 2 * kab.mean()
    )


def test_kid_with_the_full_sets_matches_the_unbiased_mmd_formula(feat8):
    real, gen = _images(40, 13), _images(40, 14, low=50)
    expected = _unbiased_mmd2(embed(real, features=feat8), embed(gen, features=feat8))
    mean, sd = kid(real, gen, features=feat8, subset_size=40, subsets=3)  # every subset is the whole set
    assert mean == pytest.approx(expected, rel=1e-9) and sd == pytest.approx(0.0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_after_a_shift(feat8):
    a, b, shifted = _images(200, 8), _images(200, 9), _images(200, 10, low=80)
    same_mean, same_sd = kid(a, b, features=feat8, subset_size=100, subsets=50)
    shift_mean, _ = kid(a, shifted, features=feat8, subset_size=100, subsets=50)
    assert shift_mean > 0
    assert abs(same_mean) < 0.05 * shift_mean
    assert abs(same_mean) < 3 * same_sd + 1e-12
    assert kid(a, b, features=feat8, subset_size=100, subsets=50) == (same_mean, same_sd)  # seeded


def test_inception_score_matches_the_formula_and_uses_label_probabilities(feat8):
    x = _images(64, 11)
    logits = feat8.logits(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
    p = np.exp(logits)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)  # label log-probabilities: cells summed per label
    assert logits.shape == (64, 2)
    marginal = p.mean(0)
    expected = float(np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean()))
    mean, sd = inception_score(x, classifier_logits_module=feat8.classifier, splits=1)
    assert mean == pytest.approx(expected, rel=1e-6) and np.isnan(sd)
    mean4, sd4 = inception_score(x, classifier_logits_module=feat8.classifier, splits=4)
    assert 1.0 <= mean4 <= 2.0 and sd4 >= 0


# ----------------------------------------------------------------------------------------------------- group FID


def _grouped(sizes: dict[str, int], seed: int, shift: dict[str, int] | None = None):
    images, labels = [], []
    for k, (g, n) in enumerate(sizes.items()):
        low = (shift or {}).get(g, 0)
        images.append(_images(n, seed * 100 + k, low=low))
        labels += [g] * n
    return np.concatenate(images), labels


def test_group_fid_uses_n_star_for_every_group_and_the_overall(feat8, monkeypatch):
    real = _grouped({"A": 60, "B": 20}, 1)
    gen = _grouped({"A": 50, "B": 24}, 2, shift={"B": 30})
    calls = []
    original = gen_mod._fid_features
    monkeypatch.setattr(gen_mod, "_fid_features", lambda r, g: calls.append((len(r), len(g))) or original(r, g))
    res = group_fid(real, gen, features=feat8, k=4)
    assert res["n_star"] == 20 and res["kid_subset_size"] == 20
    assert calls == [(20, 20)] * (4 * 2 + 4)  # k draws per group + k overall draws
    assert {g: (e["n_real"], e["n_generated"], e["n"]) for g, e in res["groups"].items()} == {
        "A": (60, 50, 20),
        "B": (20, 24, 20),
    }
    assert res["warnings"] == [] and res["skipped"] == {"real_only": [], "generated_only": []}


def test_group_fid_is_deterministic_in_seed_and_draws_vary(feat8):
    real = _grouped({"A": 60, "B": 20}, 1)
    gen = _grouped({"A": 50, "B": 20}, 2)
    first = group_fid(real, gen, features=feat8, k=5, seed=3)
    assert group_fid(real, gen, features=feat8, k=5, seed=3) == first
    other = group_fid(real, gen, features=feat8, k=5, seed=4)
    a, b = first["groups"]["A"], first["groups"]["B"]
    assert a["fid_sd"] > 0 and len(set(a["fid_draws"])) == 5
    assert b["fid_sd"] == 0.0  # n_real = n_generated = n*: every draw is the whole group
    assert other["groups"]["A"]["fid_mean"] != a["fid_mean"]
    assert a["fid_mean"] == pytest.approx(np.mean(a["fid_draws"])) and a["fid_sd"] == pytest.approx(
        np.std(a["fid_draws"])
    )
    assert np.isfinite(a["kid_mean"]) and a["kid_sd"] >= 0


def test_group_fid_warns_when_n_star_is_small_for_the_feature_dimension(feat8):
    real, gen = _grouped({"A": 30, "B": 5}, 1), _grouped({"A": 30, "B": 6}, 2)
    message = _SMALL_N_STAR.format(groups=None, n_star=5, dim=8)
    with pytest.warns(FairsampleWarning, match=re.escape(message)):
        res = group_fid(real, gen, features=feat8, k=2)
    assert res["warnings"] == [message]


def test_fid_inf_adds_a_fit_without_changing_the_main_draws(feat8):
    real, gen = _grouped({"A": 40, "B": 16}, 1), _grouped({"A": 40, "B": 16}, 2, shift={"A": 20})
    plain = group_fid(real, gen, features=feat8, k=3)
    fitted = group_fid(real, gen, features=feat8, k=3, fid_inf=True)
    a = fitted["groups"]["A"]
    assert a["fid_mean"] == plain["groups"]["A"]["fid_mean"]
    assert a["fid_inf_fit"]["n"] == [4, 8, 16]
    slope, intercept = np.polyfit(1 / np.array([4, 8, 16]), a["fid_inf_fit"]["fid_mean"], 1)
    assert a["fid_inf"] == pytest.approx(intercept) and a["fid_inf_fit"]["slope"] == pytest.approx(slope)
    small = _grouped({"A": 7}, 3), _grouped({"A": 7}, 4)
    with pytest.raises(DataError, match=re.escape(_FID_INF_SMALL.format(n_star=7))):
        group_fid(*small, features=feat8, fid_inf=True)


# -------------------------------------------------------------------------------------------------- aggregates


def test_fid_variance_hand_computed():
    out = fid_variance({"a": 10.0, "b": 14.0, "c": 18.0})
    assert out["variance"] == pytest.approx(32 / 3) and out["sd"] == pytest.approx(np.sqrt(32 / 3))
    assert out["range"] == 8.0 and out["n_groups"] == 3 and out["ddof"] == 0


def test_es_fid_and_es_is_hand_computed_and_labelled():
    per_group = {"a": 10.0, "b": 14.0, "c": 18.0}
    absolute = es_fid(12.0, per_group)  # Δ = 2 + 2 + 6 = 10
    assert absolute["value"] == pytest.approx(12 * 11) and absolute["delta"] == 10.0
    relative = es_fid(12.0, per_group, relative=True)
    assert relative["value"] == pytest.approx(12 * (1 + 10 / 12)) and relative["delta"] == pytest.approx(10 / 12)
    score = es_is(3.0, [2.5, 3.5, 3.0])
    assert score["value"] == pytest.approx(1.5) and score["higher_is_better"] is True
    for r in (absolute, relative, score):
        assert r["definition"] == "fairsample" and r["method_status"] == "project-extension"
    assert es_fid(12.0, {"a": 12.0})["value"] == 12.0  # no disparity: ES-FID = FID
    with pytest.raises(ConfigError):
        es_fid(12.0, {})


# ------------------------------------------------------------------------------------------------------- errors


def _frame_ds(rows: dict[str, list[str]], groups=("tone",)) -> FolderDataset:
    n = len(next(iter(rows.values())))
    frame = pd.DataFrame({"file_name": [f"images/{i:05d}.png" for i in range(n)], **rows})
    return FolderDataset("/nonexistent", DatasetSpec(groups=groups), frame)


REAL = {"label": ["0", "1"] * 4, "tone": ["light"] * 4 + ["dark"] * 4}


def test_no_overlapping_group_is_a_data_error(feat8):
    gen = _frame_ds({"label": ["0", "1"] * 2, "tone": ["x"] * 4})
    with pytest.raises(DataError, match=_pattern(_NO_OVERLAP)):
        generative_report(_frame_ds(REAL), gen, features=feat8)
    with pytest.raises(DataError, match=_pattern(_NO_OVERLAP)):
        group_fid(_grouped({"A": 3}, 1), _grouped({"Z": 3}, 2), features=feat8)


def test_a_group_with_fewer_than_two_images_is_a_data_error(feat8):
    gen = _frame_ds({"label": ["0", "1", "0"], "tone": ["light", "light", "dark"]})
    message = _TOO_FEW_IN_GROUP.format(groups="tone", group="tone=dark", n_real=4, n_generated=1)
    with pytest.raises(DataError, match=re.escape(message)):
        generative_report(_frame_ds(REAL), gen, features=feat8)


def test_a_missing_group_or_label_column_in_the_generated_data_is_a_data_error(feat8):
    no_tone = _frame_ds({"label": ["0", "1"] * 2}, groups=())
    with pytest.raises(DataError, match=_pattern(_MISSING_COLUMN)) as err:
        generative_report(_frame_ds(REAL), no_tone, features=feat8)
    assert "generated dataset has no column 'tone'" in str(err.value)
    no_label = _frame_ds({"tone": ["light", "dark"] * 2})
    with pytest.raises(DataError, match="generated dataset has no column 'label'"):
        group_fid(_frame_ds(REAL), no_label, groups="cell", features=feat8)


def test_inception_features_never_downloads_and_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(features_mod, "_has_torch_fidelity", lambda: False)
    with pytest.raises(ConfigError, match=re.escape(_NEEDS_TORCH_FIDELITY)):
        inception_features(tmp_path / "inception.pth")
    monkeypatch.setattr(features_mod, "_has_torch_fidelity", lambda: True)
    missing = tmp_path / "inception.pth"
    with pytest.raises(ConfigError, match=re.escape(_NO_WEIGHTS.format(path=missing))):
        inception_features(missing)


# --------------------------------------------------------------------------------------------- DomainFeatures


def test_domain_features_save_load_round_trip(tmp_path):
    x = _images(24, 12)
    targets = [f"t={t},label={y}" for t, y in zip("ab" * 12, "001122" * 4, strict=True)]
    labels = [t[-1] for t in targets]
    m = DomainFeatures.fit(x, targets, labels=labels, target="cell", epochs=1, batch_size=8)
    assert m.num_features == 64 and m.labels == ["0", "1", "2"] and m.image_size == 8
    m.train()
    assert not m.training  # never leaves eval mode (BatchNorm statistics are hashed state)
    loaded = DomainFeatures.load(m.save(tmp_path / "feat"))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    assert torch.equal(loaded(xt), m(xt)) and torch.equal(loaded.logits(xt), m.logits(xt))
    assert loaded.hash == m.hash and loaded.config() == m.config()
    config = json.loads((tmp_path / "feat" / CONFIG_FILE).read_text())
    assert config["hash"] == m.hash and len(m.hash) == 64
    config["hash"] = "0" * 64
    (tmp_path / "feat" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(DataError, match=_pattern(_HASH_MISMATCH)):
        DomainFeatures.load(tmp_path / "feat")


def test_domain_features_hash_tracks_the_weights(feat8):
    other = copy.deepcopy(feat8)
    assert other.hash == feat8.hash
    with torch.no_grad():
        other.model.head.bias[0] += 1.0
    assert other.hash != feat8.hash


# ------------------------------------------------------------------------------------------------------ report


@pytest.fixture(scope="module")
def demo_halves(tmp_path_factory) -> tuple[FolderDataset, FolderDataset]:
    """The tone-digits demo (scikit-learn digits, 744 images) split per cell into halves: 'real' and 'generated'."""
    from fairsample.data.demo import make_demo_dataset
    from fairsample.data.folder import load_folder

    root = tmp_path_factory.mktemp("gen") / "demo"
    make_demo_dataset(root, source="digits")
    ds = load_folder(root)
    cells = np.asarray([str(c) for c in ds.cell_ids()])
    real_rows, gen_rows = [], []
    for c in np.unique(cells):
        rows = np.flatnonzero(cells == c)
        real_rows += rows[0::2].tolist()
        gen_rows += rows[1::2].tolist()
    return ds.subset(sorted(real_rows)), ds.subset(sorted(gen_rows))


def test_generative_report_on_the_demo(demo_halves):
    real, gen = demo_halves
    with pytest.warns(FairsampleWarning, match="below 2 x the feature dimension"):
        report = generative_report(real, gen, group_by=["tone", "cell"], k=3, size=16, epochs=1, kid_subsets=20)
    json.dumps(report, allow_nan=False)
    assert report["features"]["kind"] == "DomainFeatures" and len(report["features"]["hash"]) == 64
    assert report["features"]["trained_on_reference"] is True and report["features"]["num_features"] == 64
    overall = report["overall"]
    assert overall["fid"] > 0 and 1.0 <= overall["is_domain_mean"] <= 5.0
    tone = report["by"]["tone"]
    assert list(tone["groups"]) == ["tone=dark", "tone=light", "tone=medium"]
    assert tone["n_star"] == min(min(e["n_real"], e["n_generated"]) for e in tone["groups"].values())
    assert all(e["n"] == tone["n_star"] for e in tone["groups"].values())
    fids = {g: e["fid_mean"] for g, e in tone["groups"].items()}
    assert tone["fid_variance"]["variance"] == pytest.approx(np.var(list(fids.values())))
    assert tone["es_fid"]["value"] == pytest.approx(es_fid(tone["overall_at_n_star"]["fid_mean"], fids)["value"])
    assert tone["es_fid"]["definition"] == tone["es_is"]["definition"] == "fairsample"
    is_g = {g: e["is_domain_mean"] for g, e in tone["groups"].items()}
    assert tone["es_is"]["value"] == pytest.approx(es_is(tone["overall_at_n_star"]["is_domain_mean"], is_g)["value"])
    strata = tone["overall_at_n_star"]["strata"]
    assert sum(strata.values()) == tone["n_star"] and strata["tone=light"] > strata["tone=dark"]
    assert report["features"]["training"]["epochs"] == 1
    assert report["by"]["cell"]["n_star"] == 2 and "tone=dark,label=4" in report["by"]["cell"]["groups"]
    assert "es_fid" in report["definitions"]

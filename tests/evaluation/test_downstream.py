"""Downstream protocols: Reweighter maths, epoch selection, train_downstream, run_protocol and attribute BER."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

from fairsample.core.errors import ConfigError, DataError
from fairsample.data import FolderDataset, split_indices
from fairsample.evaluation.downstream import (
    _FEW_SEEDS,
    _MISSING_COLUMN,
    _NEED_SYNTHETIC,
    Reweighter,
    attribute_classifier_ber,
    inverse_accuracy_coefficients,
    run_protocol,
    select_epoch,
    train_downstream,
)
from fairsample.evaluation.downstream_train import _BAD_SELECT, _VAL_MISSING_GROUP
from fairsample.evaluation.downstream_weights import _MISSING_ACCURACY

SIZE = 16  # image side used throughout: 4x fewer pixels than the demo's 32, still 2x2 after SmallCNN's pools
FAST = {"size": SIZE, "epochs": 2, "batch_size": 32}


# ---------------------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> FolderDataset:
    """The tone-digits demo (scikit-learn digits source, 744 images), loaded."""
    from fairsample.data.demo import make_demo_dataset
    from fairsample.data.folder import load_folder

    root = tmp_path_factory.mktemp("downstream") / "demo"
    make_demo_dataset(root, source="digits", seed=0)
    return load_folder(root)


@pytest.fixture(scope="module")
def real(demo) -> FolderDataset:
    """300 demo rows used as the real dataset (the demo's row order is already shuffled)."""
    return demo.subset(np.arange(300))


@pytest.fixture(scope="module")
def synthetic(demo) -> FolderDataset:
    """100 other demo rows standing in for a generated set."""
    return demo.subset(np.arange(300, 400))


def pixels(ds: FolderDataset, rows) -> np.ndarray:
    return np.stack([np.asarray(ds.load_image(int(r), size=SIZE), np.uint8) for r in rows])


@pytest.fixture(scope="module")
def train_val(real):
    """(x, labels, tones) for the real train and val splits."""
    parts = split_indices(real, seed=0)
    out = []
    for name in ("train", "val"):
        rows = parts[name]
        out.append(
            (
                pixels(real, rows),
                real.frame["label"].to_numpy()[rows].tolist(),
                real.frame["tone"].to_numpy()[rows].tolist(),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------- Reweighter


def test_coefficients_hand_computed():
    c = inverse_accuracy_coefficients({"a": 0.8, "b": 0.4}, eps=1e-12)
    assert c == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    assert sum(c.values()) == pytest.approx(1.0)


def test_cap_hand_computed():
    # 1/A = 1, 2, 20; floor = 20 / 5 = 4 -> (4, 4, 20) / 28
    c = inverse_accuracy_coefficients({"a": 1.0, "b": 0.5, "c": 0.05}, eps=1e-12, max_ratio=5.0)
    assert c == pytest.approx({"a": 4 / 28, "b": 4 / 28, "c": 20 / 28})
    uncapped = inverse_accuracy_coefficients({"a": 1.0, "b": 0.5, "c": 0.05}, eps=1e-12, max_ratio=math.inf)
    assert uncapped == pytest.approx({"a": 1 / 23, "b": 2 / 23, "c": 20 / 23})
    zero = inverse_accuracy_coefficients({"a": 0.9, "b": 0.0})  # 0 % accuracy stays finite and capped
    assert zero["b"] / zero["a"] == pytest.approx(5.0)


def test_epoch0_is_uniform():
    groups = ["a"] * 6 + ["b"] * 2
    per_sample = Reweighter(groups, mode="per_sample")
    assert np.allclose(per_sample.weights(), 0.5) and per_sample.group_mass() == pytest.approx({"a": 0.75, "b": 0.25})
    share = Reweighter(groups, mode="per_group_share")
    assert share.weights().tolist() == pytest.approx([0.5 / 6] * 6 + [0.5 / 2] * 2)
    assert share.group_mass() == pytest.approx({"a": 0.5, "b": 0.5})


@pytest.mark.parametrize(
    ("mode", "weight_a", "weight_b", "mass_a"),
    [
        # c = (1/3, 2/3); per_sample: w = c, mass_a = 6/3 / (6/3 + 2*2/3) = 0.6
        ("per_sample", 1 / 3, 2 / 3, 0.6),
        # per_group_share: w = c / n = (1/18, 1/3), mass = c
        ("per_group_share", 1 / 18, 1 / 3, 1 / 3),
    ],
)
def test_modes_hand_computed(mode, weight_a, weight_b, mass_a):
    rw = Reweighter(["a"] * 6 + ["b"] * 2, mode=mode, smoothing=0.0, eps=1e-12)
    rw.observe({"a": 0.8, "b": 0.4, "not-a-train-group": 0.1})
    assert rw.group_weights() == pytest.approx({"a": weight_a, "b": weight_b})
    assert rw.weights().tolist() == pytest.approx([weight_a] * 6 + [weight_b] * 2)
    assert rw.group_mass()["a"] == pytest.approx(mass_a)


def test_ema_hand_computed():
    rw = Reweighter(["a", "b"], mode="per_sample", smoothing=0.5, eps=1e-12)
    rw.observe({"a": 0.8, "b": 0.4})  # raw (1/3, 2/3); 0.5*(1/2) + 0.5*raw
    assert rw.coefficients == pytest.approx({"a": 5 / 12, "b": 7 / 12})
    rw.observe({"a": 0.5, "b": 0.5})  # raw (1/2, 1/2)
    assert rw.coefficients == pytest.approx({"a": 0.5 * 5 / 12 + 0.25, "b": 0.5 * 7 / 12 + 0.25})
    assert rw.n_observed == 2
    no_ema = Reweighter(["a", "b"], mode="per_sample", smoothing=0.0, eps=1e-12)
    no_ema.observe({"a": 0.8, "b": 0.4})
    assert no_ema.coefficients == pytest.approx({"a": 1 / 3, "b": 2 / 3})


def test_cap_holds_after_smoothing():
    rng = np.random.default_rng(0)
    for mode in ("per_sample", "per_group_share"):
        rw = Reweighter(["a"] * 50 + ["b"] * 7 + ["c"] * 3, mode=mode, smoothing=0.5, max_ratio=5.0)
        for _ in range(20):
            rw.observe(dict(zip("abc", rng.choice([0.0, 0.02, 0.5, 1.0], 3).tolist(), strict=True)))
            c = np.array(list(rw.coefficients.values()))
            assert c.max() / c.min() <= 5.0 + 1e-9 and c.sum() == pytest.approx(1.0)
        mass = np.array(list(rw.group_mass().values()))
        if mode == "per_group_share":  # group sampling masses obey the cap
            assert mass.max() / mass.min() <= 5.0 + 1e-9
        else:  # per-sample weights obey it
            w = rw.weights()
            assert w.max() / w.min() <= 5.0 + 1e-9


@pytest.mark.parametrize("mode", ["per_group_share", "per_sample"])
def test_draw_counts_match_mass(mode):
    groups = ["a"] * 900 + ["b"] * 90 + ["c"] * 10
    rw = Reweighter(groups, mode=mode, smoothing=0.0, max_ratio=math.inf, eps=1e-12)
    rw.observe({"a": 0.9, "b": 0.6, "c": 0.3})  # c = (2, 3, 6) / 11
    expected = {"a": 2 / 11, "b": 3 / 11, "c": 6 / 11}
    assert rw.coefficients == pytest.approx(expected)
    if mode == "per_sample":
        mass = {g: n * expected[g] for g, n in (("a", 900), ("b", 90), ("c", 10))}
        expected = {g: m / sum(mass.values()) for g, m in mass.items()}
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([rw.draw(g) for _ in range(40)]).numpy()  # 40 epochs of N = 1000 draws
    labels = np.asarray(groups)[draws]
    for name, share in expected.items():
        assert np.mean(labels == name) == pytest.approx(share, abs=0.01)


def test_sampler_is_seeded_with_replacement():
    rw = Reweighter(["a"] * 5 + ["b"] * 5)
    one = rw.draw(torch.Generator().manual_seed(7))
    two = rw.draw(torch.Generator().manual_seed(7))
    assert torch.equal(one, two) and len(one) == 10
    sampler = rw.sampler(torch.Generator().manual_seed(7))
    assert sampler.replacement and sampler.num_samples == 10


def test_reweighter_errors():
    rw = Reweighter(["a", "b"])
    with pytest.raises(ConfigError, match=re.escape(_MISSING_ACCURACY.format(missing=["b"], groups=["a", "b"]))):
        rw.observe({"a": 0.5})
    with pytest.raises(ConfigError, match="fraction in \\[0, 1\\]"):
        rw.observe({"a": 50.0, "b": 0.5})
    with pytest.raises(ConfigError, match="`mode`"):
        Reweighter(["a"], mode="loss")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`smoothing`"):
        Reweighter(["a"], smoothing=1.0)
    with pytest.raises(ConfigError, match="`max_ratio`"):
        Reweighter(["a"], max_ratio=0.5)


# -------------------------------------------------------------------------------------------------- select_epoch


def test_select_epoch_on_constructed_history():
    acc = [0.50, 0.80, 0.80, 0.70, 0.79]
    assert select_epoch(acc) == 1  # best val, tie -> earlier
    assert select_epoch(acc, "last") == 4
    assert select_epoch(acc, 3) == 3
    assert select_epoch([0.9, 0.1]) == 0
    with pytest.raises(ConfigError, match=re.escape(_BAD_SELECT.format(last=4, value=5))):
        select_epoch(acc, 5)
    with pytest.raises(ConfigError, match="`select`"):
        select_epoch(acc, True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`select`"):
        select_epoch(acc, "test")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- train_downstream


def test_train_downstream_deterministic_and_checkpoint_matches_history(train_val):
    (xt, yt, gt), (xv, yv, gv) = train_val
    kw = {"epochs": 3, "batch_size": 32, "reweight": "per_group_share"}
    a = train_downstream(xt, yt, gt, xv, yv, gv, seed=0, **kw)
    b = train_downstream(xt, yt, gt, xv, yv, gv, seed=0, **kw)
    c = train_downstream(xt, yt, gt, xv, yv, gv, seed=1, **kw)
    assert [r.to_dict() for r in a.history] == [r.to_dict() for r in b.history]
    assert np.array_equal(a.classifier.predict_proba(xv), b.classifier.predict_proba(xv))
    assert not np.array_equal(a.classifier.predict_proba(xv), c.classifier.predict_proba(xv))
    assert a.selected_epoch == select_epoch([r.val_accuracy for r in a.history])
    # the returned weights are those of the selected epoch: they reproduce its recorded val accuracy
    for select in ("val", "last", 0):
        res = train_downstream(xt, yt, gt, xv, yv, gv, seed=0, select=select, **kw)
        acc = np.mean(np.asarray(res.classifier.predict(xv)) == np.asarray(yv))
        assert acc == pytest.approx(res.history[res.selected_epoch].val_accuracy)
    json.dumps(a.to_dict(), allow_nan=False)


def test_train_downstream_reweight_history(train_val):
    (xt, yt, gt), (xv, yv, gv) = train_val
    res = train_downstream(xt, yt, gt, xv, yv, gv, epochs=3, batch_size=32, reweight="per_group_share", seed=0)
    groups = sorted(set(gt))
    first = res.history[0]
    assert first.sampling_coefficients == pytest.approx({g: 1 / 3 for g in groups})  # epoch 0 uniform
    # epoch 1 coefficients = EMA(0.5) of uniform and the capped inverse of epoch 0's per-group val accuracy
    raw = inverse_accuracy_coefficients(first.val_accuracy_by_group)
    expected = {g: 0.5 / 3 + 0.5 * raw[g] for g in groups}
    assert res.history[1].sampling_coefficients == pytest.approx(expected)
    assert res.history[1].sampling_mass == pytest.approx(expected)  # per_group_share: mass = coefficient
    plain = train_downstream(xt, yt, gt, xv, yv, gv, epochs=1, batch_size=32, seed=0)
    assert plain.history[0].sampling_coefficients is None
    assert plain.history[0].sampling_mass == pytest.approx({g: gt.count(g) / len(gt) for g in groups})


def test_train_downstream_needs_every_train_group_in_val(train_val):
    (xt, yt, gt), (xv, yv, gv) = train_val
    keep = [i for i, g in enumerate(gv) if g != "dark"]
    with pytest.raises(DataError, match=re.escape(_VAL_MISSING_GROUP.format(missing=["dark"]))):
        train_downstream(xt, yt, gt, xv[keep], [yv[i] for i in keep], [gv[i] for i in keep], reweight="per_sample")
    with pytest.raises(DataError, match="disagree in length"):
        train_downstream(xt, yt[:-1], gt, xv, yv, gv)


# -------------------------------------------------------------------------------------------------- run_protocol


def test_run_protocol_outputs_and_train_sizes(real, synthetic):
    parts = split_indices(real, seed=0)
    outs = {
        p: run_protocol(real, synthetic, protocol=p, seeds=(0, 1, 2), **FAST)
        for p in ("real_only", "real_plus_synthetic", "synthetic_only")
    }
    assert outs["real_only"]["n_train"] == len(parts["train"])
    mixed = outs["real_plus_synthetic"]
    assert (
        mixed["n_train"] == len(parts["train"]) + len(synthetic) == mixed["n_train_real"] + mixed["n_train_synthetic"]
    )
    assert outs["synthetic_only"]["n_train"] == len(synthetic) and outs["synthetic_only"]["n_train_real"] == 0
    test_truth = real.frame["label"].to_numpy()[parts["test"]].tolist()
    for out in outs.values():
        json.dumps(out, allow_nan=False)
        assert out["split_sizes"] == {k: len(parts[k]) for k in ("train", "val", "test")}
        assert [r["seed"] for r in out["runs"]] == [0, 1, 2]
        for run in out["runs"]:
            assert run["y_true"] == test_truth  # same real test split for every protocol and seed
            prob = np.asarray(run["y_prob"])
            assert prob.shape == (len(parts["test"]), len(out["classes"]))
            assert np.allclose(prob.sum(1), 1.0, atol=1e-5)
            assert run["y_pred"] == [out["classes"][k] for k in prob.argmax(1)]
            assert len(run["sensitive_features"]) == len(test_truth) and 0 <= run["selected_epoch"] < 2
        accs = [r["test_accuracy"] for r in out["runs"]]
        assert out["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert out["summary"]["accuracy"]["sd"] == pytest.approx(np.std(accs, ddof=1))
        assert set(out["summary"]["accuracy_by_group"]) == {"light", "medium", "dark"}
    # deterministic; preloaded images give the same run, and an extra test set is predicted by the same classifiers
    x_test = pixels(real, parts["test"])
    again = run_protocol(
        real,
        synthetic,
        protocol="real_plus_synthetic",
        seeds=(0, 1, 2),
        real_images=pixels(real, range(len(real))),
        synthetic_images=pixels(synthetic, range(len(synthetic))),
        extra_tests={"copy": (x_test[::-1], test_truth[::-1])},
        **FAST,
    )
    for run, ref in zip(again["runs"], mixed["runs"], strict=True):
        extra = run.pop("extra")["copy"]
        assert extra["y_pred"] == ref["y_pred"][::-1] and extra["y_true"] == test_truth[::-1]
        assert np.allclose(extra["y_prob"], np.asarray(ref["y_prob"])[::-1], atol=1e-6)
        assert extra["accuracy"] == pytest.approx(ref["test_accuracy"])
    for run in mixed["runs"]:
        assert run.pop("extra") == {}
    assert again == mixed
    with pytest.raises(ConfigError, match="`real_images` has 3 images"):
        run_protocol(real, real_images=x_test[:3], **FAST)


def test_test_split_never_used_for_selection(real):
    parts = split_indices(real, seed=0)
    names = np.empty(len(real), dtype=object)
    for name, rows in parts.items():
        names[rows] = name
    pinned = real.frame.assign(split=names)
    spec = dataclasses.replace(real.spec, split="split")
    shuffled = pinned.copy()
    test = parts["test"]
    shuffled.loc[test, "label"] = np.random.default_rng(0).permutation(shuffled.loc[test, "label"].to_numpy())
    shuffled.loc[test, "tone"] = shuffled.loc[test[::-1], "tone"].to_numpy()
    a = run_protocol(FolderDataset(real.root, spec, pinned), reweight="per_group_share", select="val", **FAST)
    b = run_protocol(FolderDataset(real.root, spec, shuffled), reweight="per_group_share", select="val", **FAST)
    assert a["runs"][0]["y_true"] != b["runs"][0]["y_true"]
    for ra, rb in zip(a["runs"], b["runs"], strict=True):
        assert ra["selected_epoch"] == rb["selected_epoch"] and ra["history"] == rb["history"]
        assert ra["y_prob"] == rb["y_prob"]  # same test images, same model: predictions unchanged


def test_seed_count_policy(real):
    with pytest.raises(ConfigError, match=re.escape(_FEW_SEEDS.format(n=2, value=[0, 1], k=3))):
        run_protocol(real, seeds=(0, 1), **FAST)
    with pytest.raises(ConfigError, match="distinct"):
        run_protocol(real, seeds=(0, 0, 1), **FAST)
    one = run_protocol(real, seeds=(5,), allow_few_seeds=True, **{**FAST, "epochs": 1})
    assert one["summary"]["n_seeds"] == 1 and one["summary"]["accuracy"]["sd"] is None
    json.dumps(one, allow_nan=False)


def test_synthetic_checks(real, synthetic):
    with pytest.raises(ConfigError, match=re.escape(_NEED_SYNTHETIC.format(protocol="synthetic_only"))):
        run_protocol(real, None, protocol="synthetic_only", **FAST)
    bad_label = FolderDataset(synthetic.root, synthetic.spec, synthetic.frame.assign(label="7"))
    with pytest.raises(DataError, match=r"synthetic label value\(s\) \['7'\] are not in the real data") as exc:
        run_protocol(real, bad_label, protocol="real_plus_synthetic", **FAST)
    assert "\n" not in str(exc.value)
    bad_tone = FolderDataset(synthetic.root, synthetic.spec, synthetic.frame.assign(tone="purple"))
    with pytest.raises(DataError, match=r"synthetic tone value\(s\) \['purple'\]"):
        run_protocol(real, bad_tone, protocol="synthetic_only", **FAST)
    no_label = FolderDataset(synthetic.root, synthetic.spec, synthetic.frame.drop(columns="label"))
    message = _MISSING_COLUMN.format(
        which="synthetic", what="label", column="label", present=list(no_label.frame.columns)
    )
    with pytest.raises(DataError, match=re.escape(message)):
        run_protocol(real, no_label, protocol="real_plus_synthetic", **FAST)
    real_no_label = FolderDataset(real.root, real.spec, real.frame.drop(columns="label"))
    with pytest.raises(DataError, match="real dataset has no label column 'label'"):
        run_protocol(real_no_label, **FAST)


# ----------------------------------------------------------------------------------------------------------- BER


@pytest.fixture(scope="module")
def ber_images(demo):
    rows = np.arange(500)
    return pixels(demo, rows), demo.frame["tone"].to_numpy()[rows].tolist()


def test_ber_obvious_attribute_is_near_zero(ber_images):
    x, tone = ber_images
    res = attribute_classifier_ber(x, tone, seed=0, epochs=3, batch_size=32)
    assert res.ber < 0.05 and res.ber == pytest.approx(1 - res.balanced_accuracy)
    assert res.n_test == 100 and res.n_train == 400 and res.classes == ["dark", "light", "medium"]
    json.dumps(res.to_dict(), allow_nan=False)


def test_ber_unrelated_attribute_is_near_half(ber_images):
    x, _ = ber_images
    coin = np.random.default_rng(1).choice(["heads", "tails"], len(x)).tolist()
    res = attribute_classifier_ber(x, coin, seed=0, epochs=3, batch_size=32)
    assert 0.35 < res.ber < 0.65
    assert attribute_classifier_ber(x, coin, seed=0, epochs=3, batch_size=32).ber == res.ber


def test_ber_errors():
    x = np.zeros((6, 8, 8, 3), np.uint8)
    with pytest.raises(DataError, match=r"value\(s\) \['b'\] have fewer than 2 images"):
        attribute_classifier_ber(x, ["a"] * 5 + ["b"])
    with pytest.raises(DataError, match="single value"):
        attribute_classifier_ber(x, ["a"] * 6)
    with pytest.raises(ConfigError, match="`test_fraction`"):
        attribute_classifier_ber(x, ["a", "b"] * 3, test_fraction=1.0)

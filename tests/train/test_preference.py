"""Preference tuning: Diffusion-DPO and FairGen's reference-free loss (METHODS.md §3.5, §3.6), pair files, presets."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fairsample.core.config import TrainConfig
from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.data import preferences as P
from fairsample.models.bundle import ModelBundle, new_pixel_bundle
from fairsample.train import preference as T
from fairsample.train.loop import _load_paths, train
from fairsample.train.methods import SetupContext, StepContext
from fairsample.train.preference import PreferenceTuning, diffusion_dpo_loss, fairgen_ref_free_loss
from fairsample.train.presets import get_method

_TINY = dict(
    architecture="test",
    image_size=8,
    cross_attention_dim=8,
    batch_size=8,
    max_steps=3,
    checkpoint_every=0,
    device="cpu",
    use_ema=False,
    lr_warmup_steps=0,
    learning_rate=1e-3,
)
LOG2 = torch.tensor(math.log(2.0), dtype=torch.float32).item()  # log 2 as the float32 the loss computes
TONES = ["dark", "light", "medium"]
LABELS = ["0", "1", "2", "3", "4"]


def _pattern(template: str) -> str:
    """A regex matching a message template with any field values (the wording is the module constant's)."""
    return ".*".join(re.escape(part) for part in re.split(r"\{[^}]*\}", template))


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pref_dir(tmp_path_factory, demo_ds) -> Path:
    """preferences.csv with 6 pairs over 3 cells; images copied next to it and named by relative paths."""
    root = tmp_path_factory.mktemp("prefs")
    (root / "img").mkdir()
    by_cell: dict = {}
    for i, cell in enumerate(demo_ds.cell_ids()):
        by_cell.setdefault(cell, []).append(i)
    rows = []
    for cell in sorted(by_cell)[:3]:
        for k in range(2):
            w, lo = by_cell[cell][2 * k], by_cell[cell][2 * k + 1]
            for i in (w, lo):
                shutil.copy(demo_ds.image_path(i), root / "img" / f"{i}.png")
            rows.append(f"img/{w}.png,img/{lo}.png,{cell.value('tone')},{cell.label}")
    _write_csv(root / "preferences.csv", "file_w,file_l,tone,label", rows)
    # the same image under two names, so that x_w = x_l is known exactly (hand computations)
    src = demo_ds.image_path(0)
    cell = demo_ds.cell_of(0)
    for name in ("same_w.png", "same_l.png"):
        shutil.copy(src, root / "img" / name)
    _write_csv(
        root / "same.csv",
        "file_w,file_l,tone,label",
        [f"img/same_w.png,img/same_l.png,{cell.value('tone')},{cell.label}"],
    )
    return root


class Recorder:
    """A denoise that records its inputs and delegates to ``fn``."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, noisy, t, cells):
        self.calls.append((noisy.detach().clone(), t.detach().clone(), list(cells)))
        return self.fn(noisy, t, cells)


def _net(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Conv2d(3, 3, 1)


def _setup(method: PreferenceTuning, csv: Path, reference=None, prediction: str = "epsilon") -> ModelBundle:
    bundle = new_pixel_bundle(
        {"tone": TONES}, LABELS, architecture="test", image_size=8, cross_attention_dim=8, prediction_type=prediction
    )
    method.setup(
        SetupContext(
            train_cells=[],
            cell_set=[],
            attribute_values={"tone": TONES},
            label_name="label",
            bundle=bundle,
            device=torch.device("cpu"),
            config=SimpleNamespace(batch_size=4, init_from="m"),
            dataset=SimpleNamespace(root=csv.parent),
            load_images=lambda paths: _load_paths(Path("/"), paths, 8),
            make_reference=lambda: reference,
        )
    )
    return bundle


def _step(denoise, seed: int = 0) -> StepContext:
    z = torch.zeros(2, 3, 8, 8)
    g = torch.Generator().manual_seed(seed)
    return StepContext(
        step=0,
        cells=[],
        latents=z,
        noise=z,
        timesteps=torch.zeros(2, dtype=torch.long),
        noisy=z,
        cond=torch.zeros(2, 2, 8),
        dropped=torch.zeros(2, dtype=torch.bool),
        pred=z,
        target=z,
        losses=torch.zeros(2),
        denoise=denoise,
        generator=g,
    )


def _pair_images(method: PreferenceTuning) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 8, 8) winner and loser images of every pair, loaded independently of the method's cache."""
    w = _load_paths(Path("/"), [p.path_w for p in method.pairs], 8)
    lo = _load_paths(Path("/"), [p.path_l for p in method.pairs], 8)
    return w, lo


def _shares_noise(bundle, noisy, t, diffs) -> torch.Tensor:
    """Per pair: does noisy_w − noisy_l equal √ᾱ_t (x_w − x_l) for one of the pairs (i.e. the same ε and t)?"""
    n = len(t) // 2
    a = bundle.scheduler.alphas_cumprod[t[:n].long()].sqrt().view(-1, 1, 1, 1)
    gap = noisy[:n] - noisy[n:]
    err = (gap[:, None] - a[:, None] * diffs[None]).abs().amax(dim=(2, 3, 4))  # (n, N)
    return err.min(dim=1).values < 1e-4


# -- the losses ------------------------------------------------------------------------------------------------------
def test_dpo_loss_sign_and_equal_models():
    lw, ll = torch.tensor([0.30, 0.10]), torch.tensor([0.20, 0.25])
    loss, acc = diffusion_dpo_loss(lw, ll, lw, ll, beta=5000.0)  # model == reference
    assert loss.item() == LOG2 and acc.item() == 0.5
    # the model prefers the winner more than the reference does (Δθ < Δref): below log 2, accuracy 1
    better, acc = diffusion_dpo_loss(lw - 1e-4, ll, lw, ll, beta=5000.0)
    assert better.item() < LOG2 and acc.item() == 1.0
    worse, acc = diffusion_dpo_loss(lw + 1e-4, ll, lw, ll, beta=5000.0)
    assert worse.item() > LOG2 and acc.item() == 0.0
    # −log σ(−½β(Δθ − Δref)) by hand for one pair
    d = (0.30 - 1e-4 - 0.20) - (0.30 - 0.20)
    assert better.item() == pytest.approx(math.log1p(math.exp(0.5 * 5000.0 * d)), rel=1e-4)


def test_fairgen_ref_free_formula_by_hand():
    lw, ll = torch.tensor([0.1, 0.4, 0.25]), torch.tensor([0.3, 0.2, 0.25])
    loss, acc = fairgen_ref_free_loss(lw, ll, beta=0.5)
    pairs = zip([0.1, 0.4, 0.25], [0.3, 0.2, 0.25], strict=True)
    want = sum(math.log1p(math.exp(-0.5 * (b - a))) for a, b in pairs) / 3 + 0.25
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert acc.item() == pytest.approx((1 + 0 + 0.5) / 3)


# -- the method on a hand-made setup ----------------------------------------------------------------------------------
def test_equal_models_give_log2_and_reference_gets_the_same_inputs(pref_dir):
    net = _net()
    model = Recorder(lambda x, t, c: net(x))
    ref_calls = Recorder(lambda x, t, c: net(x).detach())
    m = PreferenceTuning(preferences=str(pref_dir / "preferences.csv"), pairs_per_step=5)
    bundle = _setup(m, pref_dir / "preferences.csv", reference=ref_calls)
    loss = m.extra_loss(_step(model))
    assert loss.item() == LOG2 and loss.requires_grad
    logged = m.after_step(_step(model))
    assert logged["pref_loss"] == LOG2 and logged["pref_implicit_acc"] == 0.5
    (noisy, t, cells), (r_noisy, r_t, r_cells) = model.calls[0], ref_calls.calls[0]
    assert torch.equal(noisy, r_noisy) and torch.equal(t, r_t) and cells == r_cells
    assert len(t) == 10 and cells[:5] == cells[5:]
    # 1 t and 1 ε per pair: noisy_w − noisy_l = √ᾱ_t (x_w − x_l)
    assert torch.equal(t[:5], t[5:])
    w, lo = _pair_images(m)
    assert _shares_noise(bundle, noisy, t, w - lo).all()
    # pairs are conditioned on their own cell
    assert {str(c) for c in cells} <= {str(p.cell) for p in m.pairs}
    # the same generator seed draws the same pairs, t and ε
    again = Recorder(lambda x, t, c: net(x))
    m.extra_loss(_step(again))
    assert torch.equal(again.calls[0][0], noisy) and torch.equal(again.calls[0][1], t)


@pytest.mark.parametrize("share", [False, True])
def test_fairgen_ref_free_noise_independent_unless_shared(pref_dir, share):
    net = _net()
    model = Recorder(lambda x, t, c: net(x))
    m = PreferenceTuning(
        preferences=str(pref_dir / "preferences.csv"),
        pref_loss="fairgen_ref_free",
        share_noise=share,
        pairs_per_step=6,
    )
    bundle = _setup(m, pref_dir / "preferences.csv")
    assert m.extra_loss(_step(model)) is not None
    noisy, t, _ = model.calls[0]
    assert torch.equal(t[:6], t[6:])  # t is always shared within a pair
    w, lo = _pair_images(m)
    shared = _shares_noise(bundle, noisy, t, w - lo)
    assert shared.all() if share else not shared.any()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("pref_loss", ["fairgen_ref_free", "diffusion_dpo"])
def test_loss_matches_hand_computation(pref_dir, prediction, pref_loss):
    """Zero predictions, x_w = x_l = x known: L = mean(target²) with target ε or v = √ᾱ ε − √(1−ᾱ) x."""
    model = Recorder(lambda x, t, c: torch.zeros_like(x))
    ref = Recorder(lambda x, t, c: torch.full_like(x, 0.1))
    m = PreferenceTuning(
        preferences=str(pref_dir / "same.csv"), pref_loss=pref_loss, weight=2.0, sft_weight=0.5, pairs_per_step=3
    )
    bundle = _setup(m, pref_dir / "same.csv", reference=ref, prediction=prediction)
    loss = m.extra_loss(_step(model, seed=3))
    noisy, t, _ = model.calls[0]
    x = _pair_images(m)[0][:1]
    a = bundle.scheduler.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
    eps = (noisy - a.sqrt() * x) / (1 - a).sqrt()
    target = eps if prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x
    per = target.pow(2).mean(dim=(1, 2, 3)).double()
    lw, ll = per[:3], per[3:]
    if pref_loss == "fairgen_ref_free":
        pref = torch.log1p(torch.exp(-0.5 * (ll - lw))).mean() + lw.mean()
    else:
        ref_per = (0.1 - target.double()).pow(2).mean(dim=(1, 2, 3))
        inside = -0.5 * 5000.0 * ((lw - ll) - (ref_per[:3] - ref_per[3:]))
        pref = torch.nn.functional.softplus(-inside).mean()
    want = 2.0 * (pref + 0.5 * lw.mean())
    assert loss.item() == pytest.approx(want.item(), rel=2e-3, abs=1e-4)


def test_options_are_validated():
    with pytest.raises(ConfigError, match=_pattern(T._NO_PREFERENCES)) as info:
        get_method("dpo").check_config(TrainConfig())  # no pairs and nothing to build them from
    assert "`preferences`" in str(info.value) and "--init-from" in str(info.value)
    get_method("dpo").check_config(TrainConfig(init_from="m"))  # builds proxy pairs from the --init-from model
    with pytest.raises(ConfigError, match=_pattern(T._BAD_PREFS_BUILD)):
        PreferenceTuning(prefs_build={"candidate": 4})
    with pytest.raises(ConfigError, match=_pattern(T._DPO_SHARES_NOISE)):
        PreferenceTuning(preferences="p.csv", share_noise=False)
    with pytest.raises(ConfigError, match=_pattern(T._BAD_PREF_LOSS)):
        PreferenceTuning(preferences="p.csv", pref_loss="ipo")
    with pytest.raises(ConfigError, match=r"`beta` must be a number > 0"):
        PreferenceTuning(preferences="p.csv", beta=0)
    m = get_method("dpo", {"preferences": "p.csv"})
    assert (m.beta, m.weight, m.share_noise, m.sft_weight) == (5000.0, 1.0, True, 0.0)
    assert PreferenceTuning(preferences="p.csv", pref_loss="fairgen_ref_free").beta == 0.5


def test_presets_default_to_the_published_loss_and_label_every_combination():
    """fairgen = FairGen's code (reference-free loss, β 0.5); Diffusion-DPO inside fairgen is a project extension."""
    fairgen = get_method("fairgen", {"preferences": "p.csv"})
    part = fairgen.parts[-1]
    assert (part.pref_loss, part.beta, part.weight, part.share_noise) == ("fairgen_ref_free", 0.5, 1.0, False)
    cases = [
        ("fairgen", {}, "reference", "FairGen's reference-free loss"),
        ("fairgen", {"pref_loss": "diffusion_dpo"}, "project-extension", "has no reference model"),
        ("fairgen", {"share_noise": True}, "project-extension", "independent noise"),
        ("fairgen", {"sft_weight": 0.5}, "project-extension", "--sft replaces the DPO loss"),
        ("fairgen", {"alpha": 0.5}, "project-extension", "reconstructs FairGen Eq. 1-2"),
        ("dpo", {}, "reference", "Diffusion-DPO (Wallace et al."),
        ("dpo", {"pref_loss": "fairgen_ref_free"}, "project-extension", "without SQRS and the class-diversity"),
    ]
    for name, opts, status, reason in cases:
        cfg = get_method(name, {"preferences": "p.csv", **opts}).config()
        assert cfg["method_status"] == status, (name, opts)
        assert any(reason in r and f"{status}: " in r for r in cfg["status_reasons"]), cfg["status_reasons"]


# -- pair-file errors -------------------------------------------------------------------------------------------------
def test_reader_errors_are_one_line(tmp_path, pref_dir):
    def read(p, **kw):
        return P.read_preferences(p, groups=["tone"], attribute_values={"tone": TONES}, label_values=LABELS, **kw)

    cases = [
        (_write_csv(tmp_path / "empty.csv", "file_w,file_l,tone,label", []), P._EMPTY),
        (_write_csv(tmp_path / "nol.csv", "file_w,tone,label", ["a.png,dark,0"]), P._MISSING_IMAGE_COLUMN),
        (_write_csv(tmp_path / "nocell.csv", "file_w,file_l,label", ["a.png,b.png,0"]), P._MISSING_CELL_COLUMNS),
        (_write_csv(tmp_path / "text.csv", "file_w,file_l,text", ["a.png,b.png,a photo"]), P._TEXT_NEEDS_PROMPTS),
        (_write_csv(tmp_path / "blank.csv", "file_w,file_l,tone,label", ["a.png,b.png,,0"]), P._BLANK),
        (_write_csv(tmp_path / "same.csv", "file_w,file_l,tone,label", ["a.png,a.png,dark,0"]), P._SAME_IMAGE),
        (_write_csv(tmp_path / "cell.csv", "file_w,file_l,tone,label", ["a.png,b.png,blue,0"]), P._UNKNOWN_VALUE),
        (_write_csv(tmp_path / "lab.csv", "file_w,file_l,tone,label", ["a.png,b.png,dark,9"]), P._UNKNOWN_VALUE),
        (tmp_path / "absent.csv", P._NO_FILE),
    ]
    for path, template in cases:
        with pytest.raises(DataError, match=_pattern(template)) as info:
            read(path, check_files=False)
        assert "\n" not in str(info.value) and path.name in str(info.value)
    # every missing file is counted before raising; the first few are shown
    rows = [f"m{k}.png,img/same_w.png,dark,0" for k in range(5)]
    with pytest.raises(DataError, match=_pattern(P._MISSING_IMAGES)) as info:
        read(_write_csv(pref_dir / "missing.csv", "file_w,file_l,tone,label", rows))
    msg = str(info.value)
    assert msg.startswith("5 image file(s)") and "row 1 file_w 'm0.png'" in msg and "m4.png" not in msg
    # prompts resolve a `text` column; FairGen's image_w/image_l keys are aliases
    cell = P.CellKey((("tone", "dark"),), "0")
    text = _write_csv(tmp_path / "t.csv", "image_w,image_l,text", ["a.png,b.png,dark zero"])
    assert read(text, prompts={"dark zero": cell}, check_files=False)[0].cell == cell


@pytest.mark.parametrize(
    ("row", "header", "template"),
    [
        ("img/same_w.png,img/same_l.png,dark", "file_w,file_l,tone", P._MISSING_CELL_COLUMNS),
        ("img/nope.png,img/same_l.png,dark,0", "file_w,file_l,tone,label", P._MISSING_IMAGES),
        ("img/same_w.png,img/same_l.png,purple,0", "file_w,file_l,tone,label", P._UNKNOWN_VALUE),
    ],
)
def test_bad_pair_file_fails_in_setup_before_any_step(demo_ds, pref_dir, tmp_path, row, header, template):
    csv = _write_csv(pref_dir / f"bad_{abs(hash(row))}.csv", header, [row])
    cfg = TrainConfig(**_TINY, method="dpo", method_options={"preferences": str(csv)})
    with pytest.raises(DataError, match=_pattern(template)) as info:
        train(demo_ds, tmp_path / "run", cfg, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "logs").exists()  # the loop never started


# -- training runs through the loop -----------------------------------------------------------------------------------


class Probe(PreferenceTuning):
    """Keeps the frozen reference module and its weights at setup."""

    def setup(self, ctx):
        super().setup(ctx)
        cells = [c.cell_contents for c in self._reference.__closure__]
        self.frozen = next(c for c in cells if isinstance(c, nn.Module))
        self.at_setup = {k: v.detach().clone() for k, v in self.frozen.state_dict().items()}


def test_dpo_reference_is_frozen_while_the_model_trains(demo_ds, pref_dir, tmp_path):
    m = Probe(preferences=str(pref_dir / "preferences.csv"))
    with pytest.warns(FairsampleWarning, match=re.escape(T._REFERENCE_IS_INIT)):
        res = train(demo_ds, tmp_path / "d", TrainConfig(**_TINY), method=m, progress=False)
    assert not any(p.requires_grad for p in m.frozen.parameters())
    after = m.frozen.state_dict()
    assert all(torch.equal(after[k], v) for k, v in m.at_setup.items())
    trained = ModelBundle.load(tmp_path / "d").unet.state_dict()
    assert any(not torch.equal(trained[k], m.at_setup["unet." + k]) for k in trained)  # the model did move
    logs = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    assert logs[0]["pref_loss"] == LOG2  # step 1: model == reference
    assert all(0.0 <= r["pref_implicit_acc"] <= 1.0 for r in logs)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, demo_ds) -> Path:
    out = tmp_path_factory.mktemp("init") / "m"
    train(demo_ds, out, TrainConfig(**{**_TINY, "max_steps": 2}), progress=False)
    return out


def test_dpo_fine_tunes_a_bundle(demo_ds, pref_dir, tiny_bundle, tmp_path):
    parent = ModelBundle.load(tiny_bundle)  # a named parent, like the embedded model
    parent.config.update(name="parent-32", description="the parent", train_command="fairsample train ...")
    parent.save(tmp_path / "parent")
    cfg = TrainConfig(
        **_TINY,
        method="dpo",
        init_from=str(tmp_path / "parent"),
        method_options={"preferences": str(pref_dir / "preferences.csv")},
    )
    res = train(demo_ds, tmp_path / "dpo", cfg, progress=False)
    child = ModelBundle.load(tmp_path / "dpo")
    assert child.bundle_id == str(tmp_path / "dpo")  # not the parent's name
    assert "description" not in child.config and "train_command" not in child.config
    assert child.config["init_from"]["name"] == "parent-32"
    assert child.config["init_from"]["path"] == str(tmp_path / "parent")
    logs = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    assert logs[0]["pref_loss"] == LOG2 and logs[0]["pref_delta_theta"] == logs[0]["pref_delta_ref"]
    assert len(logs) == 3 and all(math.isfinite(r["loss"]) for r in logs)
    method = ModelBundle.load(tmp_path / "dpo").config["method"]
    assert method["name"] == "dpo" and method["n_pairs"] == 6 and method["pairs_per_step"] == 8
    assert method["preference_source"] == T.UNSPECIFIED_SOURCE and len(method["preferences_sha256"]) == 64


def test_fairgen_preset_trains(demo_ds, pref_dir, tmp_path):
    opts = {"preferences": str(pref_dir / "preferences.csv"), "pref_loss": "fairgen_ref_free", "pairs_per_step": 4}
    res = train(demo_ds, tmp_path / "fg", TrainConfig(**_TINY, method="fairgen", method_options=opts), progress=False)
    logs = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    assert all("pref_loss" in r and "cbdm_loss" in r and math.isfinite(r["loss"]) for r in logs)
    method = ModelBundle.load(tmp_path / "fg").config["method"]
    assert method["name"] == "fairgen" and method["components"] == ["sqrs", "cbdm", "dpo"]
    assert method["power"] == 0.5 and method["pref_loss"] == "fairgen_ref_free" and method["beta"] == 0.5


def test_pref_scale_auto_balances_the_preference_gradient(demo_ds, pref_dir, tiny_bundle, tmp_path):
    """β = 5000 Diffusion-DPO dwarfs the diffusion loss; pref_scale='auto' makes ‖∇dpo‖ = target·‖∇diffusion‖."""
    opts = {"preferences": str(pref_dir / "preferences.csv"), "pref_scale": "auto", "pref_scale_target": 0.5}
    cfg = TrainConfig(
        **{**_TINY, "max_steps": 2}, method="dpo", init_from=str(tiny_bundle), method_options=opts, grad_norm_every=1
    )
    res = train(demo_ds, tmp_path / "s", cfg, progress=False)
    logs = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    first = logs[0]["grad_norm_terms"]
    assert first["dpo"] == pytest.approx(0.5 * first["diffusion"], rel=1e-4)  # step 1: scaled by its own ratio
    assert logs[0]["pref_scale"] < 1.0 and all(r["pref_scale"] > 0 for r in logs)
    method = ModelBundle.load(tmp_path / "s").config["method"]
    assert method["pref_scale"] == "auto" and method["method_status"] == "project-extension"
    assert method["pref_scale_value"] == pytest.approx(logs[-1]["pref_scale"])
    assert len(method["pref_scale_ratios"]) == 2
    assert any("pref_scale='auto'" in r for r in method["status_reasons"])
    with pytest.raises(ConfigError, match=_pattern(T._BAD_PREF_SCALE)):
        get_method("fairgen", {"pref_scale": "big"})


# -- fairgen without a pair file builds proxy pairs from --init-from (issue #12 1h) -----------------------------------
_BUILD = {"per_cell": 1, "candidates": 2, "steps": 1, "classifier_epochs": 1}


def test_fairgen_without_preferences_builds_proxy_pairs_on_the_train_split(demo_ds, tiny_bundle, tmp_path):
    from fairsample.data.splits import split_indices
    from fairsample.train.prefs_build import PROXY_SOURCE

    lines: list[str] = []
    opts = {"prefs_build": _BUILD, "pairs_per_step": 2}
    cfg = TrainConfig(
        **{**_TINY, "max_steps": 2, "checkpoint_every": 1},
        method="fairgen",
        init_from=str(tiny_bundle),
        method_options=opts,
    )
    train(demo_ds, tmp_path / "fg", cfg, progress=False, log=lines.append)
    said = [x for x in lines if "proxy preference pairs" in x]
    assert len(said) == 1 and said[0].startswith("fairgen: built ") and "\n" not in said[0]
    assert str(tiny_bundle) in said[0] and PROXY_SOURCE in said[0] and "not physician" in said[0]
    csv = tmp_path / "fg" / "preferences" / "preferences.csv"
    n_train = len(split_indices(demo_ds, seed=0)["train"])
    doc = json.loads((csv.parent / "preferences.json").read_text())
    assert doc["scorer"]["train_images"] == n_train < len(demo_ds)  # the scorer never saw val / test images
    method = ModelBundle.load(tmp_path / "fg").config["method"]
    built = method["preferences_built"]
    assert built["model"] == str(tiny_bundle) and built["source"] == PROXY_SOURCE and not built["reused"]
    assert built["n_pairs"] == method["n_pairs"] == doc["n_pairs"] > 0
    assert f"train split ({n_train} images" in built["rows"]
    assert method["preferences"] == str(csv) and method["preference_source"] == PROXY_SOURCE
    # --resume reuses the built pairs (same file, not rebuilt)
    stamp = csv.stat().st_mtime_ns
    lines.clear()
    res = train(demo_ds, tmp_path / "fg", cfg.replace(max_steps=3), resume=True, progress=False, log=lines.append)
    assert res.resumed_from == 1 and csv.stat().st_mtime_ns == stamp
    assert any(x.startswith("fairgen: reusing ") for x in lines)
    assert ModelBundle.load(tmp_path / "fg").config["method"]["preferences_built"]["reused"] is True


def test_fairgen_without_preferences_or_init_from_fails_before_any_work(demo_ds, tmp_path):
    with pytest.raises(ConfigError, match=_pattern(T._NO_PREFERENCES)) as info:
        train(demo_ds, tmp_path / "x", TrainConfig(**_TINY, method="fairgen"), progress=False)
    msg = str(info.value)  # names `preferences` and both fixes: --init-from (pairs built) or a pair file
    assert "\n" not in msg and "'fairgen'" in msg and "`preferences`" in msg and "--init-from BUNDLE" in msg
    assert not (tmp_path / "x").exists()

"""A method changes sampling, per-sample weights and extra terms through hooks, without copying the loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.models.bundle import ModelBundle
from fairsample.train.loop import train
from fairsample.train.methods import TrainMethod


class OnlyDarkZeroWeight(TrainMethod):
    name = "test-only-dark"

    def __init__(self):
        self.seen = []

    def sample_weights(self, cells):
        return np.array([1.0 if c.value("tone") == "dark" else 0.0 for c in cells])

    def loss_weights(self, ctx):
        return torch.zeros(len(ctx.cells))

    def after_step(self, ctx):
        self.seen.extend(ctx.cells)
        assert ctx.losses.shape == (len(ctx.cells),) and not ctx.losses.requires_grad
        return {"mean_unweighted": float(ctx.losses.mean())}


class ExtraTerm(TrainMethod):
    """Only the extra term trains: the main loss is weighted 0, the extra term pulls the unconditional prediction
    toward zero through ``ctx.denoise`` (with gradients) times ``scale``."""

    name = "test-extra"

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def loss_weights(self, ctx):
        return torch.zeros(len(ctx.cells))

    def extra_loss(self, ctx):
        other = ctx.denoise(ctx.noisy, ctx.timesteps.float(), [None] * len(ctx.cells))
        return self.scale * other.pow(2).mean()


def test_sampling_weights_and_zero_loss_weights(demo_ds, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(max_steps=3, weight_decay=0.0, use_ema=False, checkpoint_every=0)
    m = OnlyDarkZeroWeight()
    res = train(demo_ds, tmp_path / "m", cfg, method=m, progress=False)
    assert len(m.seen) == 3 * cfg.batch_size
    assert {c.value("tone") for c in m.seen} == {"dark"}
    # all loss weights 0 -> zero gradients -> AdamW (no decay) leaves the initial weights unchanged
    init = tmp_path / "init"
    train(demo_ds, init, cfg.replace(max_steps=1, learning_rate=0.0, lr_warmup_steps=0), progress=False)
    a, b = ModelBundle.load(tmp_path / "m").unet.state_dict(), ModelBundle.load(init).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    assert all("mean_unweighted" in r and r["loss"] == 0.0 for r in logs)
    assert ModelBundle.load(tmp_path / "m").config["method"]["name"] == "test-only-dark"


def test_extra_loss_hook_trains_the_model(demo_ds, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(max_steps=2, checkpoint_every=0, weight_decay=0.0, use_ema=False)
    for scale in (0.0, 1.0):
        res = train(demo_ds, tmp_path / f"e{scale}", cfg, method=ExtraTerm(scale), progress=False)
        assert np.isfinite(res.final_loss)
    init = tmp_path / "init"
    train(demo_ds, init, cfg.replace(max_steps=1, learning_rate=0.0, lr_warmup_steps=0), progress=False)
    start = ModelBundle.load(init).unet.state_dict()
    frozen, moved = (ModelBundle.load(tmp_path / f"e{s}").unet.state_dict() for s in (0.0, 1.0))
    assert all(torch.equal(frozen[k], start[k]) for k in start)  # no main loss and a zero extra term: no update
    assert any(not torch.equal(moved[k], start[k]) for k in start)  # the extra term alone moves the weights


class Capture(TrainMethod):
    name = "test-capture"

    def __init__(self):
        self.ctx = None

    def after_step(self, ctx):
        self.ctx = ctx
        return {}


def test_targets_match_hand_formulas(demo_ds, tiny_cfg, tmp_path):
    """ε-prediction regresses ε; v-prediction regresses v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (METHODS.md §2.1)."""
    from fairsample.models.builtin import default_scheduler

    abar = default_scheduler().alphas_cumprod
    for pred in ("epsilon", "v_prediction"):
        m = Capture()
        cfg = tiny_cfg.replace(max_steps=1, checkpoint_every=0, prediction_type=pred)
        train(demo_ds, tmp_path / pred, cfg, method=m, progress=False)
        c = m.ctx
        a = abar[c.timesteps].view(-1, 1, 1, 1)
        torch.testing.assert_close(c.noisy, a.sqrt() * c.latents + (1 - a).sqrt() * c.noise)
        want = c.noise if pred == "epsilon" else a.sqrt() * c.noise - (1 - a).sqrt() * c.latents
        torch.testing.assert_close(c.target, want)
        torch.testing.assert_close(c.losses, (c.pred - c.target).pow(2).mean(dim=(1, 2, 3)).detach())
        assert c.latents.min() >= -1 and c.latents.max() <= 1 and c.latents.shape[1:] == (3, 8, 8)


# -- per-term gradient norms (issue #12 1b) ---------------------------------------------------------------------------


class TwoTerms(TrainMethod):
    """Two named extra terms: 3 × the (unweighted) diffusion loss, and a pull of another cell's prediction."""

    name = "test-two-terms"

    def extra_losses(self, ctx):
        other = ctx.denoise(ctx.noisy, ctx.timesteps.float(), [None] * len(ctx.cells))
        return {"triple": 3.0 * (ctx.pred - ctx.target).pow(2).mean(), "pull": 0.1 * other.pow(2).mean()}


def test_grad_norm_terms_logged_without_changing_the_update(demo_ds, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(max_steps=3, checkpoint_every=0)
    on = train(demo_ds, tmp_path / "on", cfg.replace(grad_norm_every=2), method=TwoTerms(), progress=False)
    off = train(demo_ds, tmp_path / "off", cfg.replace(grad_norm_every=0), method=TwoTerms(), progress=False)
    a, b = ModelBundle.load(tmp_path / "on").unet.state_dict(), ModelBundle.load(tmp_path / "off").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the measurement leaves the total gradient unchanged
    logs = [json.loads(x) for x in on.log_path.read_text().splitlines()]
    assert [r["step"] for r in logs if "grad_norm_terms" in r] == [1, 3]  # every 2nd optimizer step
    for r in logs[::2]:
        norms = r["grad_norm_terms"]
        assert list(norms) == ["diffusion", "triple", "pull"] and norms["pull"] > 0
        assert norms["triple"] == pytest.approx(3.0 * norms["diffusion"], rel=1e-4)  # ‖∇(3L)‖ = 3‖∇L‖
    assert not any("grad_norm_terms" in json.loads(x) for x in off.log_path.read_text().splitlines())


def test_composite_names_each_part_term(demo_ds, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(max_steps=1, checkpoint_every=0, method="fairskin-s", grad_norm_every=1)
    res = train(demo_ds, tmp_path / "c", cfg, progress=False)
    norms = json.loads(res.log_path.read_text().splitlines()[0])["grad_norm_terms"]
    assert list(norms) == ["diffusion", "cbdm"] and all(v > 0 for v in norms.values())
    with pytest.raises(ConfigError, match=r"`grad_norm_every` must be an integer >= 0"):
        train(demo_ds, tmp_path / "bad", cfg.replace(grad_norm_every=-1), progress=False)

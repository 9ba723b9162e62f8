"""CBRS / SQRS / gradient-aware resampling, the CBDM class-diversity term, composition and their presets."""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.data.schema import CellKey
from fairsample.models.bundle import ModelBundle
from fairsample.train.cbdm import ClassDiversity, class_diversity_loss, diversity_weight
from fairsample.train.compose import Composite
from fairsample.train.loop import _IndexStream, train
from fairsample.train.methods import SetupContext, StepContext, TrainMethod
from fairsample.train.presets import get_method
from fairsample.train.resampling import CellResampling


def _cell(tone: str, label: str = "0", **more: str) -> CellKey:
    return CellKey((("tone", tone), *more.items()), label)


A, B, C = _cell("a"), _cell("b"), _cell("c")


def _setup_ctx(train_cells, cell_set=None, *, bundle=None, label="label") -> SetupContext:
    return SetupContext(
        train_cells=list(train_cells),
        cell_set=sorted(set(cell_set if cell_set is not None else train_cells)),
        attribute_values={},
        label_name=label,
        bundle=bundle,
        device=torch.device("cpu"),
        config=SimpleNamespace(mixed_precision="no"),
        dataset=None,
        load_images=lambda paths: torch.zeros(0),
        make_reference=lambda: None,
    )


def _step_ctx(
    cells,
    *,
    step=0,
    losses=None,
    pred=None,
    noisy=None,
    timesteps=None,
    dropped=None,
    denoise=None,
    generator=None,
    latents=None,
) -> StepContext:
    b = len(cells)
    z = torch.zeros(b, 1, 1, 2)
    return StepContext(
        step=step,
        cells=list(cells),
        latents=latents if latents is not None else z,
        noise=z,
        timesteps=timesteps if timesteps is not None else torch.zeros(b, dtype=torch.long),
        noisy=noisy if noisy is not None else z,
        cond=torch.zeros(b, 1, 1),
        dropped=dropped if dropped is not None else torch.zeros(b, dtype=torch.bool),
        pred=pred if pred is not None else z,
        target=z,
        losses=losses if losses is not None else torch.zeros(b),
        denoise=denoise or (lambda n, t, c: torch.zeros_like(n)),
        generator=generator or torch.Generator().manual_seed(0),
    )


# -- CBRS / SQRS ------------------------------------------------------------------------------------------------------


def test_cbrs_and_sqrs_weights_by_hand():
    cells = [A] + [B] * 3 + [C] * 4  # N = 1, 3, 4
    w = CellResampling(power=1.0).sample_weights(cells)
    np.testing.assert_allclose(w, [1, 1 / 3, 1 / 3, 1 / 3, 1 / 4, 1 / 4, 1 / 4, 1 / 4])
    w = CellResampling(power=0.5).sample_weights(cells)
    np.testing.assert_allclose(w, [1] + [1 / math.sqrt(3)] * 3 + [0.5] * 4)
    # expected shares N_c·w_c / Σ N·w, as logged at step 0: uniform (CBRS), ∝ √N (SQRS)
    for power, want in ((1.0, [1 / 3] * 3), (0.5, np.sqrt([1, 3, 4]) / np.sqrt([1, 3, 4]).sum())):
        m = CellResampling(power=power)
        m.setup(_setup_ctx(cells))
        share = m.after_step(_step_ctx([A]))["cell_share"]
        np.testing.assert_allclose([share[str(c)] for c in (A, B, C)], want, atol=1e-6)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_index_stream_draws_match_expected_shares(power):
    counts = {A: 10, B: 40, C: 250}
    cells = [c for c, n in counts.items() for _ in range(n)]
    stream = _IndexStream(len(cells), 0, CellResampling(power=power).sample_weights(cells))
    rows, _ = stream.take(0, 40 * len(cells))
    drawn = Counter(cells[i] for i in rows)
    want = np.array([n ** (1 - power) for n in counts.values()])  # N·N^-p
    got = np.array([drawn[c] for c in counts]) / len(rows)
    np.testing.assert_allclose(got, want / want.sum(), atol=0.02)  # plain shuffling would give 0.03 / 0.13 / 0.83


def test_loss_mode_weights_have_mean_one_over_training_set():
    cells = [A] + [B] * 3 + [C] * 4
    m = CellResampling(power=1.0, apply="loss")
    m.setup(_setup_ctx(cells))
    assert m.sample_weights(cells) is None  # plain shuffling
    w = m.loss_weights(_step_ctx(cells))
    torch.testing.assert_close(w, torch.tensor([8 / 3] + [8 / 9] * 3 + [2 / 3] * 4))  # N / (G·N_c)
    assert float(w.mean()) == pytest.approx(1.0)
    sq = CellResampling(power=0.5, apply="loss")
    sq.setup(_setup_ctx(cells))
    assert float(sq.loss_weights(_step_ctx(cells)).mean()) == pytest.approx(1.0)


# -- gradient-aware ---------------------------------------------------------------------------------------------------


def _feed(m: CellResampling, step: int, pairs, contrast=None) -> dict:
    """One micro-step of (cell, loss) pairs; ``contrast``: per-sample var(x0) (latents ±√v over 2 pixels)."""
    cells = [c for c, _ in pairs]
    latents = None
    if contrast is not None:
        amp = torch.tensor(contrast, dtype=torch.float32).sqrt().view(-1, 1, 1, 1) / math.sqrt(2.0)
        latents = amp * torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)  # unbiased variance of (a, −a) is 2a² = v
    return m.after_step(_step_ctx(cells, step=step, losses=torch.tensor([v for _, v in pairs]), latents=latents))


def test_gradient_aware_weights_formula_refresh_and_state_round_trip():
    cells = [A] + [B] * 3 + [C] * 2
    m = CellResampling(power=1.0, alpha=2.0, refresh_every=2, ema=0.75, proxy="loss")
    m.setup(_setup_ctx(cells))
    w0 = m.sample_weights(cells)
    np.testing.assert_allclose(w0, [1, 1 / 3, 1 / 3, 1 / 3, 0.5, 0.5])  # no Ḡ yet: plain CBRS
    assert m.sample_weights_at(0) is None
    _feed(m, 0, [(A, 2.0), (B, 1.0), (B, 3.0)])  # first observation: Ḡ_A = 2, Ḡ_B = 2
    assert m.sample_weights_at(1) is None  # not a refresh step
    _feed(m, 1, [(A, 4.0), (B, 0.5)])  # Ḡ_A = .75·2 + .25·4 = 2.5, Ḡ_B = .75·2 + .25·.5 = 1.625; C unseen
    w2 = m.sample_weights_at(2)
    mean = (2.5 + 1.625) / 2
    want_a, want_b, want_c = (2.5 / mean) ** 2, (1 / 3) * (1.625 / mean) ** 2, 1 / 2  # unseen C keeps factor 1
    np.testing.assert_allclose(w2, [want_a] + [want_b] * 3 + [want_c] * 2)
    log = _feed(m, 2, [(C, 1.0)])  # refresh step: shares and Ḡ are logged
    share = np.array([want_a, 3 * want_b, 2 * want_c])
    np.testing.assert_allclose([log["cell_share"][str(c)] for c in (A, B, C)], share / share.sum(), atol=1e-6)
    assert log["cell_grad_proxy"][str(A)] == 2.5 and "cell_share" not in _feed(m, 3, [(A, 1.0)])
    # state round trip (through JSON, as in checkpoints): identical weights now and at the next refresh
    m2 = CellResampling(power=1.0, alpha=2.0, refresh_every=2, ema=0.75, proxy="loss")
    m2.setup(_setup_ctx(cells))
    m2.load_state_dict(json.loads(json.dumps(m.state_dict())))
    assert np.array_equal(m2.sample_weights(cells), w2)
    for mm in (m, m2):
        _feed(mm, 3, [(B, 7.0)])
    w4, w4b = m.sample_weights_at(4), m2.sample_weights_at(4)
    assert np.array_equal(w4, w4b) and not np.allclose(w4, w2)


def _dark_cell_shares(**opts) -> tuple[float, float, dict]:
    """Cell A: 2 images, low contrast (var .01), loss .02-.03; cell B: 8 images, contrast ~1, loss ~.11. Returns A's
    expected share at step 0 (plain SQRS), after one refresh with α = 1, and the logged proxies."""
    cells = [A] * 2 + [B] * 8
    m = CellResampling(power=0.5, alpha=1.0, refresh_every=2, ema=0.5, **opts)
    m.setup(_setup_ctx(cells))
    before = _feed(m, 0, [(A, 0.02), (B, 0.10), (B, 0.12)], contrast=[0.01, 1.0, 1.2])["cell_share"][str(A)]
    _feed(m, 1, [(A, 0.03), (B, 0.11)], contrast=[0.012, 1.1])
    m.sample_weights_at(2)
    log = _feed(m, 2, [(B, 0.1)], contrast=[1.0])
    return before, log["cell_share"][str(A)], log["cell_grad_proxy"]


def test_contrast_proxy_raises_the_share_of_an_underfit_low_contrast_cell():
    """Cell A (dark, low contrast) has the lower loss but the higher loss per unit contrast: α > 0 must sample it
    more than α = 0 does (the raw-loss proxy sampled it less — issue #12 1c)."""
    before, after, proxies = _dark_cell_shares()  # the default proxy
    assert after > before  # the under-fit dark cell is sampled more
    assert proxies[str(A)] == pytest.approx(0.025 / 0.011, rel=1e-4) and proxies[str(B)] < 0.15  # EMA loss / EMA var
    before, after, _ = _dark_cell_shares(proxy="loss")  # the raw-loss proxy, kept as an option, moves away from it
    assert after < before
    assert CellResampling(alpha=0.5).config()["proxy"] == "contrast"
    with pytest.raises(ConfigError, match=r"`proxy` must be one of \['contrast', 'loss'\], got 'grad'"):
        get_method("sqrs", {"proxy": "grad"})


def test_gradient_aware_off_is_plain_cbrs():
    cells = [A] + [B] * 3
    m = CellResampling(power=1.0, alpha=0.0, refresh_every=1)
    m.setup(_setup_ctx(cells))
    _feed(m, 0, [(A, 5.0), (B, 1.0)])
    assert m.sample_weights_at(1) is None and m.method_status == "reference"
    assert CellResampling(alpha=0.5).method_status == "project-extension"


def test_gradient_aware_resume_continues_exactly(demo_ds, tiny_cfg, tmp_path):
    opts = {"alpha": 1.0, "refresh_every": 2}
    cfg = tiny_cfg.replace(max_steps=5, checkpoint_every=3, method="cbrs", method_options=opts)

    class Crash(CellResampling):
        def after_step(self, ctx):
            if ctx.step == 4:
                raise KeyboardInterrupt
            return super().after_step(ctx)

    full = train(demo_ds, tmp_path / "full", cfg, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(demo_ds, tmp_path / "k", cfg, method=Crash(power=1.0, name="cbrs", **opts), progress=False)
    res = train(demo_ds, tmp_path / "k", cfg, resume=True, progress=False, log=lambda s: None)
    assert res.resumed_from == 3
    a, b = ModelBundle.load(tmp_path / "full").unet.state_dict(), ModelBundle.load(tmp_path / "k").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = {json.loads(x)["step"]: json.loads(x) for x in full.log_path.read_text().splitlines()}
    resumed = {json.loads(x)["step"]: json.loads(x) for x in res.log_path.read_text().splitlines()}
    assert logs[5]["cell_share"] == resumed[5]["cell_share"]  # refreshed at step index 4 from the restored Ḡ
    assert logs[1]["cell_share"] != logs[5]["cell_share"]


# -- CBDM -------------------------------------------------------------------------------------------------------------


def _cbdm(tau=1.0, gamma=0.25, t_max=1000, cells=(A, B)) -> ClassDiversity:
    from diffusers import DDPMScheduler

    m = ClassDiversity(tau=tau, gamma=gamma)
    m.setup(_setup_ctx(cells, bundle=SimpleNamespace(scheduler=DDPMScheduler(num_train_timesteps=t_max))))
    return m


def _toy_grads(m, t, dropped=None):
    """pred = a·x, h′ = b·x with x = 1: returns (loss, ∂/∂a, ∂/∂b, rows seen by denoise)."""
    a, b = torch.nn.Parameter(torch.tensor(2.0)), torch.nn.Parameter(torch.tensor(1.0))
    x = torch.ones(len(t), 1, 1, 2)
    seen = []

    def denoise(noisy, timesteps, cells):
        seen.append((noisy.shape[0], timesteps.tolist(), len(cells)))
        return b * noisy

    ctx = _step_ctx([A] * len(t), pred=a * x, noisy=x, timesteps=torch.tensor(t), dropped=dropped, denoise=denoise)
    loss = m.extra_loss(ctx)
    if loss is None:
        return None, None, None, seen
    loss.backward()
    ga, gb = (0.0 if p.grad is None else float(p.grad) for p in (a, b))
    return float(loss.detach()), ga, gb, seen


def test_cbdm_stop_gradients_weights_and_lambda():
    # λ = t/T = .25, .75 (mean .5); (pred − h′)² = 1 everywhere
    loss, ga, gb, seen = _toy_grads(_cbdm(), [250, 750])
    assert loss == pytest.approx(0.5 + 0.25 * 0.5)  # weights 1 and ¼
    assert ga == pytest.approx(2 * 0.5)  # first term only: mean 2λ(a − b)
    assert gb == pytest.approx(0.25 * 2 * 0.5 * -1)  # second term only: γ·mean 2λ(b − a)
    assert seen == [(2, [250.0, 750.0], 2)]
    _, ga0, gb0, _ = _toy_grads(_cbdm(gamma=0.0), [250, 750])
    assert ga0 == pytest.approx(1.0) and gb0 == 0.0  # no path from the first term into h′
    loss2, _, _, _ = _toy_grads(_cbdm(tau=2.0, t_max=500), [250, 250])  # λ = τ·t/T = 1
    assert loss2 == pytest.approx(1.25)
    assert _toy_grads(_cbdm(), [0, 0])[0] is None  # λ_0 = 0: the term is 0 and not added


def test_cbdm_excludes_dropped_rows():
    loss, _, _, seen = _toy_grads(_cbdm(), [750, 250], dropped=torch.tensor([True, False]))
    assert loss == pytest.approx(0.25 + 0.25 * 0.25)  # mean over the kept row only (λ = .25)
    assert seen == [(1, [250.0], 1)]
    assert _toy_grads(_cbdm(), [750, 250], dropped=torch.tensor([True, True]))[0] is None


def test_class_diversity_loss_function_matches_hand_value():
    p, h = torch.tensor([[[[1.0, 3.0]]]]), torch.tensor([[[[0.0, 1.0]]]])
    got = class_diversity_loss(p, h, torch.tensor([100]), num_train_timesteps=200, tau=1.0, gamma=0.25)
    assert float(got) == pytest.approx(0.5 * (1 + 4) / 2 * 1.25)


# -- the attribute-keeping project variants (issue #12 1a) ----------------------------------------------------------


def test_cbdm_window_weight_is_zero_from_t_max():
    t = torch.tensor([0, 250, 499, 500, 999])
    assert diversity_weight(t, num_train_timesteps=1000, t_max=500).tolist() == pytest.approx([0, 0.25, 0.499, 0, 0])
    assert diversity_weight(t, num_train_timesteps=1000).tolist() == pytest.approx([0, 0.25, 0.499, 0.5, 0.999])
    p, h = torch.ones(2, 1, 1, 2), torch.zeros(2, 1, 1, 2)
    late = class_diversity_loss(p, h, torch.tensor([600, 900]), num_train_timesteps=1000, t_max=500)
    assert float(late) == 0.0
    both = class_diversity_loss(p, h, torch.tensor([250, 900]), num_train_timesteps=1000, t_max=500)
    assert float(both) == pytest.approx(0.25 / 2 * 1.25)  # the spared row counts in the mean with λ = 0


def test_cbdm_window_skips_the_extra_forward_above_t_max_and_keeps_the_mean():
    from diffusers import DDPMScheduler

    m = ClassDiversity(t_max=500)
    m.setup(_setup_ctx([A, B], bundle=SimpleNamespace(scheduler=DDPMScheduler(num_train_timesteps=1000))))
    assert m.method_status == "project-extension" and m.config()["t_max"] == 500
    loss, _, _, seen = _toy_grads(m, [250, 750])
    assert seen == [(1, [250.0], 1)]  # no h′ forward for t = 750
    assert loss == pytest.approx(0.25 / 2 * 1.25)  # λ = (.25, 0), mean over both rows
    assert _toy_grads(m, [600, 900])[0] is None
    with pytest.raises(ConfigError, match="`t_max` must be an int in"):
        ClassDiversity(t_max=0)
    big = ClassDiversity(t_max=2000)
    with pytest.raises(ConfigError, match=r"`t_max` must be an int in \[1, 1000\] or None .*got 2000"):
        big.setup(_setup_ctx([A, B], bundle=SimpleNamespace(scheduler=DDPMScheduler(num_train_timesteps=1000))))


def test_y_prime_same_attribute_keeps_attribute_values():
    cells = _grid_cells()
    m = ClassDiversity(y_prime="same_attribute")
    m.setup(_setup_ctx(cells))
    assert m.method_status == "project-extension"
    src = [cells[k % len(cells)] for k in range(200)]
    out = m.draw_y_prime(src, torch.Generator().manual_seed(1))
    assert all(o.groups == c.groups and o.label != c.label for c, o in zip(src, out, strict=True))


def test_cbdm_keep_preset_is_a_labelled_project_extension():
    m = get_method("cbdm-keep", {})
    assert m.name == "cbdm-keep" and m.method_status == "project-extension"
    s = get_method("fairskin-s-keep", {})
    assert s.method_status == "project-extension" and s.config()["components"] == ["sqrs", "cbdm-keep"]


def _grid_cells():
    return [
        CellKey((("tone", t), ("sex", s)), lab) for t in ("light", "dark") for s in ("F", "M") for lab in ("0", "1")
    ]


def test_y_prime_same_label_other_attribute():
    cells = _grid_cells()
    m = ClassDiversity(y_prime="same_label_other_attribute")
    m.setup(_setup_ctx(cells))
    assert m.method_status == "project-extension"
    src = [cells[i % len(cells)] for i in range(4000)]
    out = m.draw_y_prime(src, torch.Generator().manual_seed(1))
    assert all(y.label == c.label and y.groups != c.groups for c, y in zip(src, out, strict=True))
    partners = {y for c, y in zip(src, out, strict=True) if c == cells[0]}
    assert len(partners) == 3  # differs in tone, in sex, or in both
    assert out == m.draw_y_prime(src, torch.Generator().manual_seed(1))  # deterministic under the generator


def test_y_prime_prior_matches_frequencies_and_uniform_covers_all():
    cells = _grid_cells()
    train_cells = [c for k, c in enumerate(cells) for _ in range(k + 1)]  # counts 1..8
    m = ClassDiversity(y_prime="prior")
    m.setup(_setup_ctx(train_cells, cells))
    out = Counter(m.draw_y_prime([cells[0]] * 40000, torch.Generator().manual_seed(0)))
    got = np.array([out[c] for c in sorted(cells)]) / 40000
    want = np.array([train_cells.count(c) for c in sorted(cells)]) / len(train_cells)
    np.testing.assert_allclose(got, want, atol=0.01)
    u = ClassDiversity(y_prime="uniform")
    u.setup(_setup_ctx(train_cells, cells))
    out = Counter(u.draw_y_prime([cells[0]] * 8000, torch.Generator().manual_seed(0)))
    np.testing.assert_allclose([out[c] / 8000 for c in cells], [1 / 8] * 8, atol=0.02)  # y′ = y included


def test_y_prime_lonely_cell_warns_and_is_skipped():
    lonely = CellKey((("tone", "light"),), "9")
    m = ClassDiversity(y_prime="same_label_other_attribute")
    with pytest.warns(FairsampleWarning, match="no cell with the same label"):
        m.setup(_setup_ctx([A, B, lonely]))
    assert m.draw_y_prime([lonely], torch.Generator()) == [None]


# -- composition ------------------------------------------------------------------------------------------------------


class _Part(TrainMethod):
    def __init__(self, name, w, lw, extra, refresh=None):
        self.name, self.w, self.lw, self.extra, self.refresh = name, w, lw, extra, refresh
        self.calls, self.state = [], {}

    def setup(self, ctx):
        self.calls.append("setup")

    def sample_weights(self, cells):
        return None if self.w is None else np.full(len(cells), self.w)

    def sample_weights_at(self, step):
        return None if self.refresh is None or step != 1 else np.full(3, self.refresh)

    def loss_weights(self, ctx):
        return None if self.lw is None else torch.full((len(ctx.cells),), self.lw)

    def extra_loss(self, ctx):
        return None if self.extra is None else torch.tensor(self.extra)

    def after_step(self, ctx):
        return {f"{self.name}_x": 1.0}

    def state_dict(self):
        return {"v": self.name}

    def load_state_dict(self, state):
        self.state = state

    def artifacts(self):
        return {f"{self.name}.json": {}}

    def config(self):
        return {"name": self.name, "method_status": "reference", f"{self.name}_opt": 1}


def test_composite_forwards_every_hook():
    p, q, r = _Part("p", 2.0, 3.0, 0.5), _Part("q", 5.0, None, 0.25, refresh=7.0), _Part("r", None, 0.5, None)
    m = Composite([p, q, r], name="combo")
    m.setup(_setup_ctx([A, B, C]))
    assert p.calls == q.calls == r.calls == ["setup"]
    np.testing.assert_allclose(m.sample_weights([A, B, C]), [10, 10, 10])  # weights multiply
    assert m.sample_weights_at(0) is None
    np.testing.assert_allclose(m.sample_weights_at(1), [14, 14, 14])  # q refreshed; p's current weights kept
    ctx = _step_ctx([A, B])
    torch.testing.assert_close(m.loss_weights(ctx), torch.tensor([1.5, 1.5]))
    assert float(m.extra_loss(ctx)) == pytest.approx(0.75)  # extra losses add
    assert m.after_step(ctx) == {"p_x": 1.0, "q_x": 1.0, "r_x": 1.0}
    assert m.state_dict() == {"p": {"v": "p"}, "q": {"v": "q"}, "r": {"v": "r"}}  # states nest
    m.load_state_dict({"p": {"v": 1}})
    assert p.state == {"v": 1} and q.state == {}
    assert set(m.artifacts()) == {"p.json", "q.json", "r.json"}
    assert m.config() == {
        "name": "combo",
        "method_status": "reference",
        "components": ["p", "q", "r"],
        "status_reasons": [],
        "p_opt": 1,
        "q_opt": 1,
        "r_opt": 1,
    }
    assert Composite([_Part("p", None, None, None)]).sample_weights([A]) is None
    with pytest.raises(ValueError, match="distinct names"):
        Composite([_Part("p", 1, 1, 1), _Part("p", 1, 1, 1)])


# -- presets ----------------------------------------------------------------------------------------------------------

_RUNS = [
    ("cbrs", {"alpha": 0.5, "refresh_every": 2}, ["cbrs"], "project-extension"),
    ("sqrs", {"apply": "loss"}, ["sqrs"], "reference"),
    ("cbdm", {"tau": 2.0}, ["cbdm"], "reference"),
    ("fairskin-c", {}, ["cbrs", "cbdm"], "reference"),
    ("fairskin-s", {"y_prime": "same_label_other_attribute"}, ["sqrs", "cbdm"], "project-extension"),
]


@pytest.mark.parametrize(("name", "opts", "parts", "status"), _RUNS, ids=[r[0] for r in _RUNS])
def test_preset_trains_and_records_method(demo_ds, tiny_cfg, tmp_path, name, opts, parts, status):
    cfg = tiny_cfg.replace(max_steps=3, checkpoint_every=0, method=name, method_options=opts)
    res = train(demo_ds, tmp_path / name, cfg, progress=False)
    assert np.isfinite(res.final_loss)
    doc = json.loads((tmp_path / name / "fairsample_config.json").read_text())
    method = doc["method"]
    assert method["name"] == name and method["method_status"] == status and doc["method_status"] == status
    assert all(method[k] == v for k, v in opts.items())
    assert doc["train"]["method"] == name and doc["train"]["method_options"] == opts
    if len(parts) > 1:
        assert method["components"] == parts
    logs = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    if "cbdm" in parts:
        assert all("cbdm_loss" in r for r in logs) and any(r["cbdm_loss"] > 0 for r in logs)
    if parts[0] in ("cbrs", "sqrs"):
        share = logs[0]["cell_share"]
        assert len(share) == 15 and sum(share.values()) == pytest.approx(1.0, abs=1e-4)
        if parts[0] == "cbrs" and method["apply"] == "sampler":
            assert max(share.values()) == pytest.approx(1 / 15, abs=1e-4)


def test_preset_options_validated_before_training(demo_ds, tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"\['powr'\] are not options of method 'cbrs'") as err:
        get_method("cbrs", {"powr": 1})
    assert "\n" not in str(err.value)
    bad = [
        ("sqrs", {"apply": "both"}, "`apply` must be one of .*'both'"),
        ("cbrs", {"alpha": -1}, "`alpha` must be a number >= 0.0, got -1"),
        ("cbrs", {"refresh_every": 0}, "`refresh_every` must be an integer >= 1, got 0"),
        ("fairskin-c", {"ema": 1.0}, r"`ema` must be a number in \[0.0, 1.0\), got 1.0"),
        ("cbdm", {"tau": "big"}, "`tau` must be a number >= 0, got 'big'"),
        ("fairskin-s", {"gamma": True}, "`gamma` must be a number >= 0, got True"),
        ("cbdm", {"y_prime": "random"}, "`y_prime` must be one of .*got 'random'; use 'uniform'"),
    ]
    for name, opts, msg in bad:
        with pytest.raises(ConfigError, match=msg) as err:
            get_method(name, opts)
        assert "\n" not in str(err.value)
    cfg = tiny_cfg.replace(method="cbdm", method_options={"gamma": -0.5})
    with pytest.raises(ConfigError, match="`gamma`"):
        train(demo_ds, tmp_path / "never", cfg, progress=False)
    assert not (tmp_path / "never").exists()

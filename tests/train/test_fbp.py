"""FairDiffusion's Fair Bayesian Perturbation (METHODS.md §3.1): weights, blocks, reward, BO timing, state, GP."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import fairsample.train.fbp as fbp
from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.data.schema import CellKey
from fairsample.train.fbp import (
    FairBayesianPerturbation,
    FBPConfig,
    build_gp,
    fbp_weights,
    group_offsets,
    loss_gaps,
)
from fairsample.train.loop import train
from fairsample.train.methods import SetupContext, StepContext
from fairsample.train.presets import get_method

RACE = ["Asian", "Black", "White"]
SEX = ["F", "M"]


def cell(race: str, sex: str, label: str = "0") -> CellKey:
    return CellKey((("race", race), ("sex", sex)), label)


def setup_method(m: FairBayesianPerturbation, *, seed: int = 0, accum: int = 1, rank: int = 0, world: int = 1):
    from fairsample.core.config import TrainConfig

    cfg = TrainConfig(seed=seed, gradient_accumulation_steps=accum)
    m.setup(
        SetupContext(
            train_cells=[],
            cell_set=[],
            attribute_values={"race": RACE, "sex": SEX},
            label_name="label",
            bundle=None,
            device="cpu",
            config=cfg,
            dataset=None,
            load_images=None,
            make_reference=None,
            rank=rank,
            world=world,
        )
    )
    return m


def make_ctx(step: int, cells, losses, seed: int = 123) -> StepContext:
    b = len(cells)
    z = torch.zeros(b, 1, 2, 2)
    return StepContext(
        step=step,
        cells=list(cells),
        latents=z,
        noise=z,
        timesteps=torch.zeros(b, dtype=torch.long),
        noisy=z,
        cond=torch.zeros(b, 1, 1),
        dropped=torch.zeros(b, dtype=torch.bool),
        pred=z,
        target=z,
        losses=torch.as_tensor(losses, dtype=torch.float32),
        denoise=None,
        generator=torch.Generator().manual_seed(seed),
        global_cells=list(cells),
    )


BATCH = [cell("Asian", "F"), cell("Black", "M"), cell("White", "F"), cell("White", "M"), cell("Asian", "M")]


def run_steps(m: FairBayesianPerturbation, steps, *, data_seed: int = 0) -> None:
    """Feed steps with losses that depend only on (data_seed, step), as the loop would."""
    for k in steps:
        rng = np.random.default_rng([data_seed, k])
        losses = rng.uniform(0.2, 1.0, len(BATCH))
        ctx = make_ctx(k, BATCH, losses, seed=k)
        m.loss_weights(ctx)
        m.after_step(ctx)


def fake_bo(calls):
    """Stand-in for propose_sigma: records its inputs, returns a fixed σ."""

    def propose(train_x, train_y, **kw):
        calls.append({"n": train_x.shape[0], "x": train_x.clone(), "y": train_y.clone(), **kw})
        return torch.full((train_x.shape[1],), 0.25, dtype=torch.float64), 1.5, []

    return propose


# -- weights -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["normal", "lognormal"])
def test_weights_have_mean_one(form):
    g = torch.Generator().manual_seed(0)
    sigma_rows = torch.tensor([[1.0, 0.3, 0.7]]).expand(200_000, 3)
    xi = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    w = fbp_weights(sigma_rows.double(), xi, form)
    se = float(w.std()) / np.sqrt(len(w))
    assert abs(float(w.mean()) - 1.0) < 4 * se
    if form == "normal":  # Var(w) = Σ_a σ² (METHODS.md §3.1)
        assert float(w.var()) == pytest.approx(1.0 + 0.09 + 0.49, rel=0.02)
    else:
        assert float(w.min()) > 0


def test_weight_clamp_warns_and_clamps():
    with pytest.warns(FairsampleWarning, match="weight_clamp=0.0"):
        m = FairBayesianPerturbation(FBPConfig(weight_clamp=0))
    assert m.method_status == "project-extension"
    w = fbp_weights(torch.ones(4, 1), torch.tensor([[-3.0], [-1.0], [0.0], [2.0]]), clamp=0.0)
    assert w.tolist() == [0.0, 0.0, 1.0, 3.0]


def test_offsets_and_blocks_for_two_attributes():
    assert group_offsets({"race": RACE, "sex": SEX}, ["race", "sex"]) == {"race": 0, "sex": 3}
    m = setup_method(FairBayesianPerturbation())
    assert m.offsets == {"race": 0, "sex": 3} and m.num_groups == 5
    assert m.group_index(BATCH).tolist() == [[0, 0], [1, 1], [2, 0], [2, 1], [0, 1]]
    m.sigma = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    ctx = make_ctx(0, BATCH, [0.0] * 5, seed=7)
    w = m.loss_weights(ctx)
    xi = torch.randn(5, 2, generator=torch.Generator().manual_seed(7))
    race_sigma = torch.tensor([0.1, 0.2, 0.3, 0.3, 0.1])  # σ[0 + g_race]
    sex_sigma = torch.tensor([0.4, 0.5, 0.4, 0.5, 0.5])  # σ[3 + g_sex]
    torch.testing.assert_close(w, 1 + race_sigma * xi[:, 0] + sex_sigma * xi[:, 1])
    # a subset of attributes: only the sex block
    m2 = setup_method(FairBayesianPerturbation(FBPConfig(attributes="sex")))
    assert m2.offsets == {"sex": 0} and m2.num_groups == 2
    with pytest.raises(ConfigError, match="'age'"):
        setup_method(FairBayesianPerturbation(FBPConfig(attributes=("age",))))


# -- reward --------------------------------------------------------------------------------------------------------
def test_reward_gap_absent_group_zero_in_reference_present_range_in_improved():
    # race: Asian absent; Black mean 2, White mean 5. sex: F mean 3, M mean 6 -> gap 3 in every mode
    cells = [cell("Black", "F"), cell("White", "M"), cell("White", "F")]
    losses = torch.tensor([2.0, 6.0, 4.0])
    m = setup_method(FairBayesianPerturbation(FBPConfig(window=100)))
    idx = m.group_index(cells)
    # reference: torch.max over the group means is NaN with Asian absent -> the race gap is set to 0
    assert loss_gaps(losses, idx, m.sizes).tolist() == [0.0, 3.0]
    assert loss_gaps(losses, idx, m.sizes, absent="zero").tolist() == [0.0, 3.0]
    # improved (project extension): the range over the groups present
    assert loss_gaps(losses, idx, m.sizes, absent="ignore").tolist() == [3.0, 3.0]
    with pytest.raises(ConfigError, match="`absent` must be one of"):
        loss_gaps(losses, idx, m.sizes, absent="drop")
    out = m.after_step(make_ctx(0, cells, losses))
    assert out["fbp_reward"] == -3.0
    assert m.trajectory[0]["gaps"] == [0.0, 3.0] and m.Y == [-3.0]
    assert m.X == [[1.0] * 5]  # the σ that produced the reward (σ starts at ones)
    rnd = setup_method(get_method("fbp-random"))
    assert rnd.after_step(make_ctx(0, cells, losses))["fbp_reward"] == -3.0
    improved = setup_method(get_method("fairdiffusion-improved", {"window": 100}))
    assert improved.after_step(make_ctx(0, cells, losses))["fbp_reward"] == -6.0
    assert improved.trajectory[0]["gaps"] == [3.0, 3.0] and improved.trajectory[0]["ema_gap"] == 6.0
    # the whole batch present: both rules agree
    full = [cell("Asian", "F"), *cells]
    x = torch.tensor([1.0, *losses])
    both = [loss_gaps(x, m.group_index(full), m.sizes, absent=a) for a in ("zero", "ignore")]
    assert both[0].tolist() == both[1].tolist() and both[0][0] == 4.0


# -- σ updates -----------------------------------------------------------------------------------------------------
def test_exploration_step_formula():
    m = setup_method(FairBayesianPerturbation(FBPConfig(window=1000, exploitation_rate=0.8, seed=5)))
    run_steps(m, range(3))
    for k in range(2):
        u = torch.rand(
            5, generator=torch.Generator().manual_seed(fbp.mix_seed(5, k, fbp._EXPLORE)), dtype=torch.float64
        )
        expected = 0.8 * torch.tensor(m.trajectory[k]["sigma"], dtype=torch.float64) + 0.2 * u
        torch.testing.assert_close(torch.tensor(m.trajectory[k + 1]["sigma"], dtype=torch.float64), expected)


def test_bo_fires_exactly_at_window_multiples(monkeypatch):
    calls = []
    monkeypatch.setattr(fbp, "propose_sigma", fake_bo(calls))
    m = setup_method(FairBayesianPerturbation(FBPConfig(window=3, exploitation_rate=0.9, seed=1)))
    run_steps(m, range(10))
    assert [r["step"] for r in m.trajectory if r["acquisition"] is not None] == [3, 6, 9]
    assert [c["n"] for c in calls] == [4, 3, 3]  # steps 0..3, then 4..6, 7..9; buffers cleared after each fit
    assert all(c["standardize"] is False and c["beta"] == 0.1 for c in calls)
    assert m.bo_updates == 3 and m.X == [] and m.Y == []
    # right after a BO update the exploration step still applies: σ = ρ·argmax + (1 − ρ)·u
    u = torch.rand(5, generator=torch.Generator().manual_seed(fbp.mix_seed(1, 3, fbp._EXPLORE)), dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(m.trajectory[4]["sigma"], dtype=torch.float64), 0.9 * 0.25 + 0.1 * u)
    # the GP inputs are the σ used at each step, the outcomes the rewards
    torch.testing.assert_close(
        calls[0]["x"], torch.tensor([r["sigma"] for r in m.trajectory[:4]], dtype=torch.float64)
    )
    torch.testing.assert_close(calls[0]["y"][:, 0], torch.tensor([r["reward"] for r in m.trajectory[:4]]).double())


def test_bo_counts_optimizer_steps_not_micro_batches(monkeypatch):
    calls = []
    monkeypatch.setattr(fbp, "propose_sigma", fake_bo(calls))
    m = setup_method(FairBayesianPerturbation(FBPConfig(window=2)), accum=2)
    for k in range(5):
        for micro, group in enumerate(([cell("Asian", "F")], [cell("Black", "M")])):
            out = m.after_step(make_ctx(k, group, [1.0 + micro]))
            assert (out == {}) == (micro == 0)
    assert [r["step"] for r in m.trajectory] == [0, 1, 2, 3, 4]
    assert [c["n"] for c in calls] == [3, 2]
    # the reward pools both micro-batches: sex F 1 vs M 2 (gap 1); race has White absent (reference: gap 0)
    assert m.trajectory[0]["reward"] == -1.0 and m.trajectory[0]["gaps"] == [0.0, 1.0]


def test_sigma_stays_in_unit_cube_with_real_bo():
    m = setup_method(FairBayesianPerturbation(FBPConfig(window=3, seed=2, num_restarts=2, raw_samples=8)))
    run_steps(m, range(8))
    assert m.bo_updates == 2
    for r in m.trajectory:
        assert all(0.0 <= s <= 1.0 for s in r["sigma"])
        if r["acquisition"] is not None:
            assert np.isfinite(r["acquisition"]) and all(0.0 <= s <= 1.0 for s in r["sigma_bo"])


def test_same_seed_same_trajectory_and_resume_continues_identically():
    cfg = FBPConfig(window=3, seed=11, num_restarts=2, raw_samples=8)
    a = setup_method(FairBayesianPerturbation(cfg))
    run_steps(a, range(9))
    b = setup_method(FairBayesianPerturbation(cfg))
    run_steps(b, range(9))
    assert a.trajectory == b.trajectory and a.bo_updates == 2
    c = setup_method(FairBayesianPerturbation(FBPConfig(window=3, seed=12, num_restarts=2, raw_samples=8)))
    run_steps(c, range(9))
    assert c.trajectory[1]["sigma"] != a.trajectory[1]["sigma"]
    # resume from a JSON round trip after step 4 (mid-window, non-empty buffers); the next BO is at step 6
    d = setup_method(FairBayesianPerturbation(cfg))
    run_steps(d, range(5))
    state = json.loads(json.dumps(d.state_dict()))
    e = setup_method(FairBayesianPerturbation(cfg))
    e.load_state_dict(state)
    assert e.X == d.X and len(e.X) == 1
    run_steps(e, range(5, 9))
    assert e.trajectory == a.trajectory
    assert torch.equal(e.sigma, a.sigma)
    with pytest.raises(ConfigError, match="seed"):
        setup_method(FairBayesianPerturbation(FBPConfig(window=3, seed=99))).load_state_dict(state)


def test_rank_nonzero_takes_sigma_from_broadcast(monkeypatch):
    """Only rank 0 runs the BO and the exploration draw; other ranks adopt the broadcast σ."""
    calls = []
    monkeypatch.setattr(fbp, "propose_sigma", fake_bo(calls))
    m = setup_method(FairBayesianPerturbation(FBPConfig(window=1)), rank=1, world=2)
    ctx = make_ctx(1, BATCH, [0.5] * 5)
    rank0 = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 7.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.0], dtype=torch.float64)
    ctx.broadcast = lambda t: rank0.to(t.dtype)
    m.after_step(ctx)
    assert calls == []
    assert m.sigma.tolist() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert m.trajectory[0]["acquisition"] == 7.0 and m.trajectory[0]["sigma_bo"] == [0.9] * 5


# -- modes ---------------------------------------------------------------------------------------------------------
def test_random_mode_keeps_sigma_one_and_never_fits(monkeypatch):
    calls = []
    monkeypatch.setattr(fbp, "propose_sigma", fake_bo(calls))
    m = get_method("fbp-random", {"window": 2})
    setup_method(m)
    run_steps(m, range(6))
    assert calls == [] and torch.equal(m.sigma, torch.ones(5, dtype=torch.float64))
    assert all(r["sigma"] == [1.0] * 5 and r["acquisition"] is None for r in m.trajectory)
    ctx = make_ctx(0, BATCH, [0.0] * 5, seed=3)
    xi = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(m.loss_weights(ctx), 1 + xi.sum(dim=1))
    assert m.method_status == "reference" and m.config()["mode"] == "random"


def test_improved_mode_window_reward_ema_and_standardize(monkeypatch):
    calls = []
    monkeypatch.setattr(fbp, "propose_sigma", fake_bo(calls))
    m = get_method("fairdiffusion-improved", {"window": 2, "ema_decay": 0.5})
    assert m.method_status == "project-extension"
    setup_method(m)
    race_only = [cell("Asian", "F"), cell("Black", "F")]  # sex has one group -> gap 0
    for k, (la, lb) in enumerate([(1.0, 2.0), (1.0, 4.0), (1.0, 6.0), (1.0, 2.0), (1.0, 2.0)]):
        m.after_step(make_ctx(k, race_only, [la, lb]))
    # window 1 = steps 0..2: EMA(Black) 2 -> 3 -> 4.5, EMA gaps 1, 2, 3.5 -> window reward -(6.5/3)
    assert [r["ema_gap"] for r in m.trajectory[:3]] == [1.0, 2.0, 3.5]
    assert m.trajectory[2]["window_reward"] == pytest.approx(-6.5 / 3)
    assert m.trajectory[2]["acquisition"] is None  # a single window observation: no GP yet
    # window 2 = steps 3..4, EMA restarted: gaps 1, 1 -> reward -1; now two observations -> BO with Standardize
    assert m.trajectory[3]["ema_gap"] == 1.0 and m.trajectory[4]["window_reward"] == -1.0
    assert [c["n"] for c in calls] == [2] and calls[0]["standardize"] is True
    mean_sigma = torch.tensor([r["sigma"] for r in m.trajectory[:3]], dtype=torch.float64).mean(0)
    torch.testing.assert_close(calls[0]["x"][0], mean_sigma)
    assert len(m.X) == 2  # window observations are kept across updates (up to `history`)


# -- the GP --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("standardize", [False, True])
def test_gp_is_built_with_explicit_kernel_and_transforms(standardize):
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.kernels import MaternKernel, ScaleKernel
    from gpytorch.priors import GammaPrior

    x = torch.rand(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = build_gp(x, -x.sum(dim=1, keepdim=True), standardize=standardize)
    k = model.covar_module
    assert isinstance(k, ScaleKernel) and isinstance(k.base_kernel, MaternKernel)
    assert k.base_kernel.nu == 2.5 and k.base_kernel.ard_num_dims == 4
    ls, os_, noise = k.base_kernel.lengthscale_prior, k.outputscale_prior, model.likelihood.noise_covar.noise_prior
    for prior, expected in ((ls, (3.0, 6.0)), (os_, (2.0, 0.15)), (noise, (1.1, 0.05))):
        assert isinstance(prior, GammaPrior)
        assert (float(prior.concentration), float(prior.rate)) == pytest.approx(expected)
    assert not hasattr(model, "input_transform")
    if standardize:
        assert isinstance(model.outcome_transform, Standardize)
    else:
        assert not hasattr(model, "outcome_transform")


# -- options -------------------------------------------------------------------------------------------------------
def test_presets_and_option_errors():
    assert get_method("fairdiffusion").cfg == FBPConfig(mode="reference")
    assert get_method("fairdiffusion", {"window": 7}).cfg.window == 7
    with pytest.raises(ConfigError, match="'windw'") as err:
        get_method("fairdiffusion", {"windw": 7})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="`window` must be an integer >= 1"):
        FBPConfig(window=0)
    with pytest.raises(ConfigError, match="`mode` must be one of"):
        FBPConfig(mode="fast")
    with pytest.raises(ConfigError, match="`exploitation_rate`"):
        FBPConfig(exploitation_rate=1.5)
    cfg = get_method("fairdiffusion-improved").config()
    assert cfg["mode"] == "improved" and cfg["gp"]["outcome_transform"] == "Standardize(m=1)"
    assert {
        "window",
        "exploitation_rate",
        "ucb_beta",
        "num_restarts",
        "raw_samples",
        "weight_clamp",
        "weights",
        "attributes",
        "seed",
    } <= set(cfg)


# -- the real loop -------------------------------------------------------------------------------------------------
def test_training_run_writes_sigma_trajectory_and_resumes(demo_ds, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(max_steps=6, checkpoint_every=3, method="fairdiffusion", method_options={"window": 2})
    res = train(demo_ds, tmp_path / "a", cfg, progress=False)
    doc = json.loads((tmp_path / "a" / "fbp_sigma.json").read_text())
    assert doc["groups"] == ["tone=dark", "tone=light", "tone=medium"] and doc["bo_updates"] == 2
    traj = doc["trajectory"]
    assert [r["step"] for r in traj] == list(range(6))
    assert [r["step"] for r in traj if r["acquisition"] is not None] == [2, 4]
    assert all(0.0 <= s <= 1.0 for r in traj for s in r["sigma"])
    logs = [json.loads(line) for line in res.log_path.read_text().splitlines()]
    assert all("fbp_reward" in r for r in logs)
    bundle_cfg = json.loads((tmp_path / "a" / "fairsample_config.json").read_text())
    assert bundle_cfg["method"]["name"] == "fairdiffusion" and bundle_cfg["method_status"] == "reference"
    # resume from checkpoint-3 (mid-window: step 3's observation is buffered) -> the same σ trajectory
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    train(demo_ds, tmp_path / "b", cfg, resume=True, progress=False, log=lambda _m: None)
    resumed = json.loads((tmp_path / "b" / "fbp_sigma.json").read_text())
    assert resumed["trajectory"] == traj

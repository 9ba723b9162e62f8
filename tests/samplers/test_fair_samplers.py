"""attribute_switch, mixing, fairdiffusion_perturbed and τ search on a tiny engine (METHODS.md §4.2-4.3)."""

from __future__ import annotations

import pytest
import torch

from fairsample.core.errors import ConfigError, DataError
from fairsample.data.schema import CellKey
from fairsample.samplers import (
    SAMPLERS,
    ConditioningPlan,
    Perturbation,
    initial_latents,
    make_generators,
    make_scheduler,
    sample_attribute_switch,
    sample_conditional,
    sample_fairdiffusion_perturbed,
    sample_mixing,
    search_tau,
    switched_cells,
)
from fairsample.samplers.switch import mixed_plan
from tests.samplers.conftest import SAMPLE_SIZE, CountingEngine

LIGHT3 = CellKey((("tone", "light"),), "3")
TONES = ["light", "medium", "dark"]
KW = {"num_inference_steps": 4, "guidance_scale": 2.0}


def _x(seeds):
    return initial_latents(make_generators(seeds), (3, SAMPLE_SIZE, SAMPLE_SIZE))


def test_registered():
    assert {"attribute_switch", "mixing", "fairdiffusion_perturbed"} <= set(SAMPLERS)


def test_switched_cells_rules():
    binary = switched_cells([LIGHT3], "tone", ["light", "dark"], None, [0])
    assert binary == [LIGHT3.replace(tone="dark")]
    mapped = switched_cells([LIGHT3, LIGHT3.replace(tone="dark")], "tone", TONES, "light:dark,dark:medium", [0, 1])
    assert [c.value("tone") for c in mapped] == ["dark", "medium"] and all(c.label == "3" for c in mapped)
    uni = switched_cells([LIGHT3] * 50, "tone", TONES, "uniform", list(range(50)))
    assert {c.value("tone") for c in uni} == {"medium", "dark"}  # never s0, both others used
    assert uni == switched_cells([LIGHT3] * 50, "tone", TONES, "uniform", list(range(50)))  # per-seed deterministic
    assert switched_cells([LIGHT3], "tone", TONES, "uniform", [7]) == [uni[7]]  # batch-independent
    with pytest.raises(ConfigError, match="has 3 values"):
        switched_cells([LIGHT3], "tone", TONES, None, [0])
    with pytest.raises(ConfigError, match="`to` value 'olive' is not a value of 'tone'"):
        switched_cells([LIGHT3], "tone", TONES, "olive", [0])
    with pytest.raises(ConfigError, match="maps 'light' to itself"):
        switched_cells([LIGHT3], "tone", TONES, {"light": "light"}, [0])
    with pytest.raises(ConfigError, match="not a sensitive attribute"):
        switched_cells([LIGHT3], "sex", TONES, "dark", [0])


def test_tau_extremes_equal_conditional(engine, scheduler_config, make_plan):
    p0, p1 = make_plan([0, 1]), make_plan([2, 3])
    x = _x([0, 1])
    sched = make_scheduler("ddim", scheduler_config)
    never = sample_attribute_switch(engine, sched, x, p0, switch_plan=p1, tau=0, **KW)
    always = sample_attribute_switch(engine, sched, x, p0, switch_plan=p1, tau=1000, **KW)
    assert torch.equal(never, sample_conditional(engine, sched, x, p0, **KW))
    assert torch.equal(always, sample_conditional(engine, sched, x, p1, **KW))
    middle = sample_attribute_switch(engine, sched, x, p0, switch_plan=p1, tau=500, **KW)
    assert not torch.equal(middle, never) and not torch.equal(middle, always)


def test_only_conditional_rows_switch(engine, scheduler_config, make_plan):
    seen = []

    class Recorder(CountingEngine):
        def __call__(self, sample, timestep, encoder_hidden_states, *, out=None):
            seen.append((float(torch.as_tensor(timestep).flatten()[0]), encoder_hidden_states.clone()))
            return super().__call__(sample, timestep, encoder_hidden_states, out=out)

    rec = Recorder(engine)
    p0, p1 = make_plan([0]), make_plan([5])
    sample_attribute_switch(rec, make_scheduler("ddim", scheduler_config), _x([3]), p0, switch_plan=p1, tau=500, **KW)
    assert rec.calls == [2] * 4  # same packed 2B calls as conditional: no graph or call-count change
    for t, ehs in seen:
        assert torch.equal(ehs[0], p0.uncond[0])  # the ∅ row never switches
        assert torch.equal(ehs[1], (p1 if t < 500 else p0).cond[0])


def test_mixing_is_conditional_on_mean_embedding(engine, scheduler_config, make_plan):
    p0, p1 = make_plan([0, 1]), make_plan([2, 3])
    sched = make_scheduler("ddim", scheduler_config)
    x = _x([4, 5])
    got = sample_mixing(engine, sched, x, p0, switch_plan=p1, **KW)
    assert torch.equal(got, sample_conditional(engine, sched, x, mixed_plan(p0, p1), **KW))


def test_bad_tau_is_one_line(engine, scheduler_config, make_plan):
    with pytest.raises(ConfigError, match=r"^`tau` must be a number in \[0, 1000\]"):
        sample_attribute_switch(
            engine,
            make_scheduler("ddim", scheduler_config),
            _x([0]),
            make_plan([0]),
            switch_plan=make_plan([1]),
            tau=-1,
            **KW,
        )


def _cell_plan(make_plan, cells):
    p = make_plan(list(range(len(cells))))
    return ConditioningPlan(cond=p.cond, uncond=p.uncond, cells=tuple(cells))


def test_perturbed_zero_equals_conditional_and_offsets_act(engine, scheduler_config, make_plan):
    cells = [LIGHT3, LIGHT3.replace(tone="dark")]
    plan = _cell_plan(make_plan, cells)
    sched = make_scheduler("ddim", scheduler_config)
    x = _x([0, 1])
    base = sample_conditional(engine, sched, x, plan, **KW)
    assert torch.equal(sample_fairdiffusion_perturbed(engine, sched, x, plan, perturbation=Perturbation(), **KW), base)
    pert = Perturbation(guidance={"tone": {"dark": 1.0}}, temperature={"tone": {"dark": -0.1}})
    out = sample_fairdiffusion_perturbed(engine, sched, x, plan, perturbation=pert, **KW)
    assert torch.equal(out[0], base[0]) and not torch.equal(out[1], base[1])  # only the dark sample moves
    # the dark sample equals conditional at w = 3 from 0.9·x_T
    solo = ConditioningPlan(cond=plan.cond[1:], uncond=plan.uncond, cells=plan.cells[1:])
    want = sample_conditional(
        engine, sched, 0.9 * x[1:], solo, num_inference_steps=4, guidance_scale=torch.tensor([3.0])
    )
    torch.testing.assert_close(out[1:], want, rtol=0, atol=1e-6)


def test_perturbation_file_round_trip_and_errors(tmp_path):
    pert = Perturbation(guidance={"tone": {"dark": 0.25}}, guidance_min=1.0, meta={"objective": "kid_gap"})
    path = pert.save(tmp_path)
    assert path.name == "perturbation.json"
    back = Perturbation.load(tmp_path)
    assert back.to_dict() == pert.to_dict() and back.to_dict()["method_status"] == "project-extension"
    w, k = back.per_sample([LIGHT3.replace(tone="dark")], base_guidance=0.5)
    assert w.tolist() == [1.0] and k.tolist() == [1.0]  # w floored at w_min
    with pytest.raises(ConfigError, match="tone='olive', which the model does not have"):
        Perturbation(guidance={"tone": {"olive": 1.0}}).check({"tone": TONES})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="is not a readable perturbation JSON"):
        Perturbation.load(tmp_path / "bad.json")


def test_tau_search_properties(engine, scheduler_config, make_plan):
    sched = make_scheduler("ddpm", scheduler_config)
    x = _x(range(4))
    p0, p1 = make_plan([0, 0, 1, 1]), make_plan([2, 2, 3, 3])
    # a coarse 5-step search is enough for these properties (explicitly allowed: smoke-test speed)
    kw = {"search_steps": 5, "allow_coarse": True, "guidance_scale": 1.5, "grid": 100}
    r = search_tau(engine, sched, x, p0, p1, **kw)
    assert r.taus == list(range(0, 1000, 100)) and len(r.objective) == 10
    assert r.objective[r.taus.index(r.tau_star)] == min(r.objective)
    assert r.settings["method_status"] == "project-extension" and r.settings["weighting"] == "riemann"
    assert r.search_steps == 5 and r.timesteps == [800, 600, 400, 200, 0] and r.settings["coarse"] is True
    swapped = search_tau(engine, sched, x, p1, p0, **kw)
    assert swapped.tau_star == r.tau_star  # J is symmetric in (s0, s1)
    same = search_tau(engine, sched, x, p0, p0, **kw)
    assert max(same.objective) == 0.0 and same.tau_star == 0 and same.step_index == 5  # τ* = 0: never switch
    per_sample = search_tau(engine, sched, x, p0, p1, **kw | {"norm": "per_sample", "weighting": "official"})
    assert per_sample.objective != r.objective
    with pytest.raises(ConfigError, match="`norm` must be"):
        search_tau(engine, sched, x, p0, p1, norm="l1")


def test_tau_search_runs_on_a_fine_schedule(engine, scheduler_config, make_plan):
    from fairsample.samplers.switch import switch_index

    sched = make_scheduler("ddpm", scheduler_config)
    x = _x(range(2))
    p0, p1 = make_plan([0, 1]), make_plan([2, 3])
    fine = search_tau(engine, sched, x, p0, p1, guidance_scale=1.0)  # defaults: 100 search steps, grid = spacing
    assert fine.search_steps == 100 and fine.timesteps == list(range(990, -1, -10))
    assert fine.taus == list(range(0, 1000, 10)) and fine.settings["grid"] == 10
    # every grid point is its own step boundary, so J takes a distinct value at every τ; at 10 search steps J is
    # constant over 100-timestep bins (at most 10 values on the same grid)
    coarse = search_tau(engine, sched, x, p0, p1, guidance_scale=1.0, search_steps=10, grid=10, allow_coarse=True)
    assert len(set(coarse.objective)) <= 10 < 90 <= len(set(fine.objective))
    # the step index: the first search step with t < τ*
    k = fine.step_index
    assert k == switch_index(fine.tau_star, fine.timesteps) == fine.switch_step(fine.timesteps)
    assert (k == 100 and fine.tau_star == 0) or fine.timesteps[k] < fine.tau_star <= fine.timesteps[k - 1] + 10
    assert fine.settings["method_status"] == "project-extension"


def test_tau_search_refuses_a_coarse_schedule_and_labels_the_notebook_setting(engine, make_plan):
    from fairsample.samplers.tau import _COARSE

    x = _x([0])
    p0, p1 = make_plan([0]), make_plan([1])
    with pytest.raises(ConfigError, match="^" + _COARSE.split("{")[0].replace("`", ".")):
        search_tau(engine, make_scheduler("ddpm", {"num_train_timesteps": 1000}), x, p0, p1, search_steps=10)
    # the notebook's setting (official weighting and norm, search_steps = T, grid 10) is the reference; a model with
    # T < 100 can at best search every timestep (T = 20 keeps this test small)
    sched = make_scheduler("ddpm", {"num_train_timesteps": 20, "beta_schedule": "linear"})
    r = search_tau(engine, sched, x, p0, p1, search_steps=20, grid=10, weighting="official", guidance_scale=1.0)
    assert r.settings["method_status"] == "reference" and r.timesteps == list(range(19, -1, -1))
    assert r.settings["coarse"] is False and r.taus == [0, 10]
    assert search_tau(engine, sched, x, p0, p1, search_steps=20, guidance_scale=1.0).settings["method_status"] == (
        "project-extension"  # Riemann weighting (the default)
    )


@pytest.mark.parametrize(("tau", "steps"), [(480, 10), (480, 25), (930, 10), (0, 4), (1000, 4), (505, 7)])
def test_switch_index_is_where_the_sampler_switches(engine, scheduler_config, make_plan, tau, steps):
    from fairsample.samplers.switch import switch_step

    seen = []

    class Recorder(CountingEngine):
        def __call__(self, sample, timestep, encoder_hidden_states, *, out=None):
            seen.append(encoder_hidden_states[1].clone())
            return super().__call__(sample, timestep, encoder_hidden_states, out=out)

    p0, p1 = make_plan([0]), make_plan([5])
    sched = make_scheduler("ddim", scheduler_config)
    sample_attribute_switch(
        Recorder(engine), sched, _x([3]), p0, switch_plan=p1, tau=tau, num_inference_steps=steps, guidance_scale=2.0
    )
    on_s1 = [torch.equal(e, p1.cond[0]) for e in seen]
    k = switch_step(tau, sched, steps)
    assert on_s1 == [i >= k for i in range(steps)]
    assert sched.num_inference_steps is None  # switch_step leaves the caller's scheduler alone


def test_switch_pairs_are_the_pairs_switched_cells_uses():
    from fairsample.samplers.switch import switch_pairs

    seeds = list(range(60))
    for to in ("uniform", "dark", "light:dark", "light:dark,dark:medium,medium:light"):
        cells = [LIGHT3, LIGHT3.replace(tone="dark")] * 30
        s1 = switched_cells(cells, "tone", TONES, to, seeds)
        used = {(a.value("tone"), b.value("tone")) for a, b in zip(cells, s1, strict=True)}
        assert used == set(switch_pairs(["light", "dark"], "tone", TONES, to)), to
    assert switch_pairs(["light"], "tone", ["light", "dark"], None) == [("light", "dark")]
    with pytest.raises(ConfigError, match="has 3 values"):
        switch_pairs(["light"], "tone", TONES, None)

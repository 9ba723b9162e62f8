"""attribute_switch, mixing, fairdiffusion_perturbed and τ search on a tiny engine (METHODS.md §4.2-4.3)."""

from __future__ import annotations

import pytest
import torch

from fairsample.data.schema import CellKey
from fairsample.errors import ConfigError, DataError
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
        sample_attribute_switch(engine, make_scheduler("ddim", scheduler_config), _x([0]), make_plan([0]),
                                switch_plan=make_plan([1]), tau=-1, **KW)  # fmt: skip


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
    want = sample_conditional(engine, sched, 0.9 * x[1:], solo, num_inference_steps=4,
                              guidance_scale=torch.tensor([3.0]))  # fmt: skip
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
    r = search_tau(engine, sched, x, p0, p1, num_inference_steps=5, guidance_scale=1.5, grid=100)
    assert r.taus == list(range(0, 1000, 100)) and len(r.objective) == 10
    assert r.objective[r.taus.index(r.tau_star)] == min(r.objective)
    assert r.settings["method_status"] == "project-extension" and r.settings["weighting"] == "riemann"
    swapped = search_tau(engine, sched, x, p1, p0, num_inference_steps=5, guidance_scale=1.5, grid=100)
    assert swapped.tau_star == r.tau_star  # J is symmetric in (s0, s1)
    same = search_tau(engine, sched, x, p0, p0, num_inference_steps=5, guidance_scale=1.5, grid=100)
    assert max(same.objective) == 0.0 and same.tau_star == 0
    per_sample = search_tau(engine, sched, x, p0, p1, num_inference_steps=5, guidance_scale=1.5, grid=100,
                            norm="per_sample", weighting="official")  # fmt: skip
    assert per_sample.objective != r.objective
    with pytest.raises(ConfigError, match="`norm` must be"):
        search_tau(engine, sched, x, p0, p1, norm="l1")

"""`fairsample tau` (τ*, its step on the search schedule and on the sampling schedule, J(τ) as JSON + PNG, the cache,
one-line errors) and `fairsample generate --sampler attribute_switch` without `tau` (the cached τ*, said on stderr)."""

from __future__ import annotations

import json

from .conftest import invoke


def test_tau_json_plot_cache_and_generate_without_tau(runner, tiny_model, tmp_path, monkeypatch):
    from fairsample.models.bundle import ModelBundle
    from fairsample.samplers import make_scheduler
    from fairsample.samplers.switch import switch_index, switch_step

    monkeypatch.setenv("FAIRSAMPLE_CACHE_DIR", str(tmp_path / "engines"))  # τ cache: tmp_path / "tau"
    args = ["tau", "--model", tiny_model, "--attribute", "tone", "--from", "light", "--to", "dark", "--steps", "10"]
    res = invoke(runner, *args, "--output-dir", tmp_path / "t", "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    # the default search schedule: 100 DDIM steps, grid = its spacing, independent of the sampling steps
    assert doc["cached"] is False and doc["search_steps"] == 100 and doc["taus"] == list(range(0, 1000, 10))
    assert doc["timesteps"] == list(range(990, -1, -10))
    assert doc["objective"][doc["taus"].index(doc["tau_star"])] == min(doc["objective"])
    assert doc["step_index"] == switch_index(doc["tau_star"], doc["timesteps"])
    assert doc["settings"]["attribute"] == "tone" and doc["settings"]["batch_size"] == 20  # 5 labels x 4
    bundle = ModelBundle.load(tiny_model)
    k = switch_step(doc["tau_star"], make_scheduler("ddim", bundle.scheduler.config), 10)
    assert doc["sampling"] == {"scheduler": "ddim", "steps": 10, "switch_step": k}
    assert json.loads((tmp_path / "t" / "tau.json").read_text())["tau_star"] == doc["tau_star"]
    assert (tmp_path / "t" / "tau.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the reverse pair shares the search (J is symmetric) and the cache entry
    back = invoke(runner, *[{"light": "dark", "dark": "light"}.get(str(a), a) for a in args])
    assert back.exit_code == 0, back.stderr
    assert back.stdout.startswith(
        f"tau* = {doc['tau_star']}: step {doc['step_index']} of 100 search steps (cached); ddim 10 sampling steps "
        f"switch at step {k}; J(tau) = 0:"
    )
    assert len(list((tmp_path / "tau").glob("*.json"))) == 1
    # generate without tau= finds the same cached τ* (same model, attribute, pair and guidance) and says so
    gen = invoke(
        runner,
        "generate",
        "--model",
        tiny_model,
        "--sampler",
        "attribute_switch",
        "--sampler-option",
        "attribute=tone",
        "--sampler-option",
        "to=dark",
        "--cells",
        "tone=light,label=1",
        "--seeds",
        "0-1",
        "--steps",
        "10",
        "--output-dir",
        tmp_path / "g",
    )
    assert gen.exit_code == 0, gen.stderr
    assert [ln for ln in gen.stderr.splitlines() if ln.startswith("attribute_switch:")] == [
        f"attribute_switch: tau not given; using cached tau* = {doc['tau_star']} (step {doc['step_index']} of 100 "
        f"search steps) for tone light->dark; sampling switches at step {k} of 10"
    ]
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["sample_config"]["sampler_options"]["tau"] == doc["tau_star"]
    assert {key: cfg["tau"][key] for key in ("tau", "origin", "switch_step", "steps")} == {
        "tau": doc["tau_star"],
        "origin": "cached",
        "switch_step": k,
        "steps": 10,
    }


def test_tau_bad_value_and_coarse_search_are_one_line(runner):
    res = invoke(runner, "tau", "--attribute", "tone", "--from", "light", "--to", "olive")  # in-process: fast
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: `target` 'olive' is not a value of attribute 'tone'; its values are ['dark', 'light', 'medium']."
    )
    res = invoke(runner, "tau", "--attribute", "tone", "--from", "light", "--to", "dark", "--search-steps", "10")
    assert res.exit_code == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: `search_steps` must be >= 100 for a meaningful τ*, got 10: J(τ) is constant")

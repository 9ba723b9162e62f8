"""Fair samplers through FairSamplePipeline on the embedded model: options, metadata, equality rules."""

from __future__ import annotations

import csv
import json
import re
import warnings

import numpy as np
import pytest

from fairsample.core.config import SampleConfig
from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.generation.pipeline import FairSamplePipeline, GenerationPlan
from fairsample.models.bundle import new_pixel_bundle
from fairsample.samplers import make_scheduler


@pytest.fixture(scope="module")
def pipe() -> FairSamplePipeline:
    return FairSamplePipeline()


def _cfg(pipe, **kw):
    return pipe.default_config().replace(steps=3, batch_size=4, **kw)


def test_switch_folder_keeps_s0_and_records_s1(pipe, tmp_path):
    cells = [pipe.bundle.parse_cell("tone=light,label=2"), pipe.bundle.parse_cell("tone=dark,label=2")]
    plan = GenerationPlan.per_cell(cells, 2, [0, 1, 2, 3])
    cfg = _cfg(pipe, sampler="attribute_switch", sampler_options={"tau": 700, "to": "light:dark,dark:medium"})
    pipe.generate_to_folder(tmp_path / "s", plan, cfg, progress=False)
    with (tmp_path / "s" / "metadata.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["tone"], r["tone_switched_to"]) for r in rows] == [("light", "dark")] * 2 + [("dark", "medium")] * 2
    assert {r["sampler"] for r in rows} == {"attribute_switch"}


def test_perturbed_without_file_equals_conditional(pipe):
    cells = [pipe.bundle.parse_cell("tone=dark,label=4")] * 2
    base = pipe(cells, [5, 6], steps=3, output_type="np").images
    # record (not pytest.warns, which re-emits every other warning from this frame: the default DEIS scheduler's
    # set_timesteps makes numpy raise a DeprecationWarning inside diffusers, filtered only where it is raised)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pipe(cells, [5, 6], steps=3, output_type="np", sampler="fairdiffusion_perturbed")
    messages = " | ".join(str(w.message) for w in caught if issubclass(w.category, FairsampleWarning))
    assert "zero offsets (identical to conditional)" in messages and "not FairDiffusion" in messages
    assert np.array_equal(out.images, base)
    assert out.manifest["method_status"] == "project-extension"


@pytest.mark.parametrize(
    ("sampler", "options", "message"),
    [
        ("attribute_switch", {"tau": 1001}, "`tau` must be a number in [0, 1000]"),
        ("attribute_switch", {"tau": 10, "attribute": "sex"}, "`attribute` 'sex' is not a sensitive attribute"),
        ("mixing", {"to": "olive"}, "option `to` names tone='olive'"),
        ("conditional", {"tau": 5}, "sampler 'conditional' does not take option(s) ['tau']"),
    ],
)
def test_bad_options_fail_before_generating(pipe, tmp_path, sampler, options, message):
    plan = GenerationPlan.per_cell([pipe.bundle.parse_cell("tone=dark,label=1")], 1, [0])
    cfg = SampleConfig(sampler=sampler, sampler_options=options, steps=2)
    with pytest.raises(ConfigError, match=re.escape(message)):
        pipe.generate_to_folder(tmp_path / "x", plan, cfg, progress=False)
    assert not (tmp_path / "x").exists()


# -- attribute_switch without `tau`: the cached τ* or a search (issue #12 h) ----------------------------------------
def _tiny_pipe(tones: list[str], labels: list[str]) -> FairSamplePipeline:
    """A seeded 8×8 'test' U-Net bundle: a τ search of 100 steps takes about a second."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bundle = new_pixel_bundle(
            {"tone": tones},
            labels,
            architecture="test",
            image_size=8,
            cross_attention_dim=8,
            config={"sampling": {"steps": 3, "guidance_scale": 2.0}},
        )
    return FairSamplePipeline(bundle)


def test_switch_without_tau_searches_then_uses_the_cache(tmp_path, monkeypatch, capsys):
    from fairsample.samplers.switch import switch_step
    from fairsample.samplers.tau_search import find_tau

    monkeypatch.setenv("FAIRSAMPLE_CACHE_DIR", str(tmp_path / "engines"))  # τ cache: tmp_path / "tau"
    pipe = _tiny_pipe(["light", "dark"], ["0"])
    cells = [pipe.bundle.parse_cell("tone=light,label=0"), pipe.bundle.parse_cell("tone=dark,label=0")]
    plan = GenerationPlan.per_cell(cells, 1, [0, 1])
    cfg = pipe.default_config().replace(sampler="attribute_switch", batch_size=2)
    pipe.generate_to_folder(tmp_path / "a", plan, cfg, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (
        "attribute_switch: tau not given; searching tau* for tone light<->dark: 4 trajectory pairs x 100 DDIM steps "
        "(cached afterwards)"
    )
    want, cached = find_tau(
        pipe.bundle, pipe.engine, attribute="tone", source="light", target="dark", guidance_scale=2.0
    )
    assert cached  # the pipeline's search is the one implementation, cached under the same key
    k = switch_step(want.tau_star, make_scheduler("ddim", pipe.bundle.scheduler.config), 3)
    seconds = err[-1].split(" in ")[1].split(" s;")[0]
    assert err[-1] == (
        f"attribute_switch: tau not given; searched tau* = {want.tau_star} (step {want.step_index} of 100 search "
        f"steps) for tone light->dark, dark->light (argmin of the mean J over 2 pairs) in {seconds} s; sampling "
        f"switches at step {k} of 3"
    )
    doc = json.loads((tmp_path / "a" / "config.json").read_text())
    assert doc["sample_config"]["sampler_options"]["tau"] == want.tau_star
    assert doc["tau"]["origin"] == "searched" and doc["tau"]["switch_step"] == k and doc["tau"]["steps"] == 3
    assert doc["tau"]["search"]["pairs"]["light->dark"]["tau_star"] == want.tau_star
    # a second run reads the cache and gives the same images as an explicit tau
    pipe.generate_to_folder(tmp_path / "b", plan, cfg, progress=False)
    assert capsys.readouterr().err.strip().splitlines() == [
        f"attribute_switch: tau not given; using cached tau* = {want.tau_star} (step {want.step_index} of 100 search "
        f"steps) for tone light->dark, dark->light (argmin of the mean J over 2 pairs); sampling switches at step "
        f"{k} of 3"
    ]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["tau"]["origin"] == "cached"
    given = cfg.replace(sampler_options={"tau": want.tau_star})
    pipe.generate_to_folder(tmp_path / "c", plan, given, progress=False)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["tau"]["origin"] == "given"
    for f in ("000000.png", "000001.png"):
        assert (tmp_path / "a" / "images" / f).read_bytes() == (tmp_path / "c" / "images" / f).read_bytes()
    out = pipe(cells, [0, 1], sampler="attribute_switch", output_type="np")  # the in-memory call resolves too
    assert out.manifest["tau"]["tau"] == want.tau_star and out.manifest["tau"]["origin"] == "cached"


def test_switch_without_tau_passes_the_pairs_switched(tmp_path, monkeypatch, capsys):
    import fairsample.samplers.tau_search as tau_search

    calls = []

    def fake(bundle, engine, *, attribute, pairs, progress=None, **search):
        calls.append((attribute, list(pairs), search))
        info = {
            "tau_star": 640,
            "step_index": 36,
            "search_steps": 100,
            "source": "cached",
            "seconds": 0.0,
            "attribute": attribute,
            "pairs": {f"{a}->{b}": {} for a, b in pairs},
        }
        return None, info

    monkeypatch.setattr(tau_search, "resolve_tau", fake)
    tones = ["light", "medium", "dark"]
    pipe = _tiny_pipe(tones, ["0"])
    cells = {t: pipe.bundle.parse_cell(f"tone={t},label=0") for t in tones}
    base = pipe.default_config().replace(sampler="attribute_switch", batch_size=3)
    for name, plan_cells, to in (
        ("one", [cells["light"]], "dark"),
        ("all", list(cells.values()), "uniform"),
        ("map", [cells["light"], cells["dark"]], "light:dark"),
    ):
        pipe.generate_to_folder(
            tmp_path / name,
            GenerationPlan.per_cell(plan_cells, 1),
            base.replace(sampler_options={"to": to}),
            progress=False,
        )
        assert json.loads((tmp_path / name / "config.json").read_text())["sample_config"]["sampler_options"] == {
            "to": to,
            "tau": 640,
        }
    assert [c[1] for c in calls] == [
        [("light", "dark")],  # a fixed target: the single pair this plan switches along
        [(a, b) for a in tones for b in tones if a != b],  # uniform: every ordered pair (the study's rule)
        [("light", "dark"), ("dark", "light"), ("dark", "medium")],  # the map, dark drawn uniformly from the others
    ]
    assert {c[0] for c in calls} == {"tone"} and all(c[2] == {"guidance_scale": 2.0} for c in calls)
    assert "(argmin of the mean J over 6 pairs)" in capsys.readouterr().err


def test_resolve_tau_is_the_argmin_of_the_mean_j_over_the_pairs(tmp_path):
    from fairsample.samplers.tau_search import find_tau, resolve_tau

    tones = ["light", "medium", "dark"]
    pipe = _tiny_pipe(tones, ["0"])
    # a coarse 10-step search keeps this test small (the pooling rule does not depend on the schedule)
    kw = {"search_steps": 10, "allow_coarse": True, "grid": 25, "guidance_scale": 2.0, "cache_dir": tmp_path}
    ordered = [(a, b) for a in tones for b in tones if a != b]
    lines = []
    pooled, info = resolve_tau(pipe.bundle, pipe.engine, attribute="tone", pairs=ordered, progress=lines.append, **kw)
    assert len(lines) == 3 and info["source"] == "searched"  # J is symmetric: one search per unordered pair
    curves = [find_tau(pipe.bundle, pipe.engine, attribute="tone", source=a, target=b, **kw)[0] for a, b in ordered]
    mean = [sum(c.objective[i] for c in curves) / 6 for i in range(len(curves[0].taus))]
    assert pooled.objective == pytest.approx(mean) and pooled.taus == list(range(0, 1000, 25))
    assert pooled.tau_star == curves[0].taus[min(range(len(mean)), key=lambda i: (mean[i], i))]
    assert info["tau_star"] == pooled.tau_star and list(info["pairs"]) == [f"{a}->{b}" for a, b in ordered]
    assert pooled.settings["method_status"] == "project-extension" and pooled.step_index == sum(
        t >= pooled.tau_star for t in pooled.timesteps
    )
    again, info2 = resolve_tau(pipe.bundle, pipe.engine, attribute="tone", pairs=ordered[:1], **kw)
    assert (
        info2["source"] == "cached" and again.tau_star == curves[0].tau_star and again.objective == curves[0].objective
    )
    with pytest.raises(ConfigError, match="`pairs` is empty"):
        resolve_tau(pipe.bundle, pipe.engine, attribute="tone", pairs=[], **kw)

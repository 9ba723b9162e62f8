"""Fair samplers through FairSamplePipeline on the embedded model: options, metadata, equality rules."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from fairsample.config import SampleConfig
from fairsample.errors import ConfigError, FairsampleWarning
from fairsample.pipeline import FairSamplePipeline, GenerationPlan


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
    with pytest.warns(FairsampleWarning) as caught:
        out = pipe(cells, [5, 6], steps=3, output_type="np", sampler="fairdiffusion_perturbed")
    messages = " | ".join(str(w.message) for w in caught)
    assert "zero offsets (identical to conditional)" in messages and "not FairDiffusion" in messages
    assert np.array_equal(out.images, base)
    assert out.manifest["method_status"] == "project-extension"


@pytest.mark.parametrize(
    ("sampler", "options", "message"),
    [
        ("attribute_switch", {}, "needs option `tau`"),
        ("attribute_switch", {"tau": 10, "attribute": "sex"}, "`attribute` 'sex' is not a sensitive attribute"),
        ("mixing", {"to": "olive"}, "option `to` names tone='olive'"),
        ("conditional", {"tau": 5}, "sampler 'conditional' does not take option(s) ['tau']"),
    ],
)
def test_bad_options_fail_before_generating(pipe, tmp_path, sampler, options, message):
    plan = GenerationPlan.per_cell([pipe.bundle.parse_cell("tone=dark,label=1")], 1, [0])
    cfg = SampleConfig(sampler=sampler, sampler_options=options, steps=2)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        pipe.generate_to_folder(tmp_path / "x", plan, cfg, progress=False)
    assert not (tmp_path / "x").exists()

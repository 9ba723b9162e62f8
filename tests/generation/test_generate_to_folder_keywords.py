"""`FairSamplePipeline.generate_to_folder` takes the sampling keywords of `pipe(...)` (issue 13, item 7): same names,
same validation, applied on top of its config argument."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fairsample.core.config import SampleConfig
from fairsample.core.errors import ConfigError
from fairsample.generation.pipeline import FairSamplePipeline, GenerationPlan

KEYWORDS = {
    "steps": 2,
    "guidance_scale": 1.5,
    "scheduler": "ddpm",
    "batch_size": 3,
    "sampler": "conditional",
    "guidance_rescale": 0.0,
}


@pytest.fixture(scope="module")
def pipe() -> FairSamplePipeline:
    return FairSamplePipeline()


def test_keywords_override_the_config(pipe, tmp_path):
    plan = GenerationPlan.per_cell([pipe.bundle.cells()[0]], 2, [5, 6])
    result = pipe.generate_to_folder(
        tmp_path / "a", plan, SampleConfig(steps=7, guidance_scale=3.0), progress=False, **KEYWORDS
    )
    assert result.n_images == 2
    written = json.loads((tmp_path / "a" / "config.json").read_text())["sample_config"]
    assert {k: written[k] for k in KEYWORDS} == KEYWORDS
    # without a config: the pipeline's defaults, then the keywords (as in pipe(...))
    pipe.generate_to_folder(tmp_path / "b", plan, steps=2, progress=False)
    written = json.loads((tmp_path / "b" / "config.json").read_text())["sample_config"]
    assert written["steps"] == 2 and written["scheduler"] == pipe.default_config().scheduler
    # the same pixels as the in-memory call with the same keywords
    item = plan.items[0]
    in_memory = np.asarray(pipe([item.cell], [item.seed], steps=2, output_type="pil").images[0].convert("RGB"))
    on_disk = np.asarray(Image.open(tmp_path / "b" / "images" / f"{item.seed:06d}.png").convert("RGB"))
    assert np.array_equal(in_memory, on_disk)


@pytest.mark.parametrize("bad", [{"steps": 0}, {"batch_size": 0}, {"sampler": "nope"}])
def test_same_validation_as_call(pipe, tmp_path, bad):
    plan = GenerationPlan.per_cell([pipe.bundle.cells()[0]], 1, [0])
    with pytest.raises(ConfigError) as in_memory:
        pipe([plan.items[0].cell], [0], **bad)
    with pytest.raises(ConfigError) as to_folder:
        pipe.generate_to_folder(tmp_path / "x", plan, progress=False, **bad)
    assert str(to_folder.value) == str(in_memory.value)
    assert not (tmp_path / "x").exists()

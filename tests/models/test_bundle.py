"""ModelBundle: layout of STYLE.md §6.4, round trip, plain-diffusers loading, errors."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey
from fairsample.models.bundle import CONFIG_FILE, ModelBundle, new_pixel_bundle


def _bundle(pred: str = "epsilon") -> ModelBundle:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return new_pixel_bundle(
            {"tone": ["dark", "light"]},
            ["0", "1"],
            architecture="test",
            image_size=8,
            cross_attention_dim=8,
            prediction_type=pred,
        )


def test_layout_and_round_trip(tmp_path):
    b = _bundle("v_prediction")
    b.save(tmp_path / "m")
    for part in (
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "conditioner/token_table.safetensors",
        "conditioner/conditioner.json",
        CONFIG_FILE,
    ):
        assert (tmp_path / "m" / part).is_file(), part
    assert not list((tmp_path / "m").rglob("*.bin")) and not list((tmp_path / "m").rglob("*.pt"))
    cfg = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert cfg["prediction_type"] == "v_prediction" and cfg["kind"] == "pixel" and cfg["groups"] == ["tone"]
    assert sorted(cfg["cells"]) == [
        "tone=dark,label=0",
        "tone=dark,label=1",
        "tone=light,label=0",
        "tone=light,label=1",
    ]
    assert {"torch", "diffusers", "fairsample"} <= set(cfg["versions"])

    loaded = ModelBundle.load(tmp_path / "m")
    assert loaded.prediction_type == "v_prediction"
    assert loaded.latent_shape == (3, 8, 8) and loaded.image_shape == (3, 8, 8)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0])
    cells = [CellKey((("tone", "dark"),), "1"), None]
    with torch.no_grad():
        ref = b.eval().unet(x, t, b.conditioner.cached(cells)).sample
        got = loaded.unet(x, t, loaded.conditioner.cached(cells)).sample
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_plain_diffusers_loads_unet_and_scheduler(tmp_path):
    _bundle().save(tmp_path / "m")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "m", subfolder="unet")
    sched = DDPMScheduler.from_pretrained(tmp_path / "m", subfolder="scheduler")
    assert unet.config.cross_attention_dim == 8
    assert sched.config.prediction_type == "epsilon"
    assert DDIMScheduler.from_config(sched.config).config.beta_schedule == "squaredcos_cap_v2"


def test_save_keeps_other_files_and_fp16_storage_halves_size(tmp_path):
    dest = tmp_path / "m"
    (dest / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (dest / "checkpoints" / "checkpoint-5" / "state.json").write_text("{}")
    b = _bundle()
    b.save(dest)
    full = (dest / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    b.save(dest, unet_dtype=torch.float16)
    half = (dest / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert (dest / "checkpoints" / "checkpoint-5" / "state.json").is_file()
    assert half < 0.6 * full
    assert ModelBundle.load(dest).unet.dtype == torch.float32


def test_parse_cell_checks_known_values(tmp_path):
    b = _bundle()
    assert b.parse_cell("tone=light,label=1") == CellKey((("tone", "light"),), "1")
    with pytest.raises(ConfigError, match="tone='medium'"):
        b.parse_cell("tone=medium,label=1")


def test_not_a_bundle(tmp_path):
    with pytest.raises(ConfigError, match=r"is not a fairsample model bundle \(no fairsample_config.json\)"):
        ModelBundle.load(tmp_path)


def test_prediction_type_mismatch_is_refused(tmp_path):
    _bundle().save(tmp_path / "m")
    cfg_path = tmp_path / "m" / CONFIG_FILE
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="prediction_type='v_prediction'.*'epsilon'"):
        ModelBundle.load(tmp_path / "m")

"""Stable-Diffusion-style bundle hooks: local VAE + CLIP text conditioner over prompt templates (tiny, in-test)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey
from fairsample.models.bundle import ModelBundle, new_latent_bundle
from fairsample.models.conditioners import ClipTextConditioner
from tests.tiny import build_tiny_unet


def _latent_unet() -> UNet2DConditionModel:
    return build_tiny_unet(8, in_channels=4, cross_attention_dim=32)


def _conditioner(tiny_clip) -> ClipTextConditioner:
    enc, tok = tiny_clip
    return ClipTextConditioner(
        enc,
        tok,
        template="{tone} skin {label}",
        attributes={"tone": ["dark", "light"]},
        labels=["0", "1"],
        value_text={"tone": {"dark": "dark", "light": "fair"}},
    )


def test_prompts_from_template(tiny_clip):
    c = _conditioner(tiny_clip)
    assert c.prompt(CellKey((("tone", "light"),), "1")) == "fair skin 1"
    assert c.prompt(None) == ""
    with pytest.raises(ConfigError, match="tone='olive'"):
        c.prompt(CellKey((("tone", "olive"),), "1"))


def test_bad_template_field(tiny_clip):
    enc, tok = tiny_clip
    with pytest.raises(ConfigError, match=r"`template` '\{race\} \{label\}' uses unknown field\(s\) \['race'\]"):
        ClipTextConditioner(enc, tok, template="{race} {label}", attributes={"tone": ["dark"]}, labels=["0"])
    with pytest.raises(ConfigError, match=r"does not name the cell field\(s\) \['tone'\]"):
        ClipTextConditioner(enc, tok, template="{label}", attributes={"tone": ["dark"]}, labels=["0"])


def test_template_must_fit_and_separate_cells(tiny_clip):
    enc, tok = tiny_clip  # character-level tokenizer, model_max_length 16
    kw = {"attributes": {"tone": ["dark", "light"]}, "labels": ["0", "1"]}
    with pytest.raises(
        ConfigError, match=r"gives cell tone=light,label=0 17 tokens, over the tokenizer's limit of 16"
    ):
        ClipTextConditioner(enc, tok, template="skin {tone} label {label}", **kw)
    # the CLIP tokenizer lower-cases, so these two display texts give one prompt
    with pytest.raises(ConfigError, match="maps cells tone=dark,label=0 and tone=light,label=0 to the same"):
        ClipTextConditioner(
            enc, tok, template="{tone} {label}", value_text={"tone": {"dark": "x", "light": "X"}}, **kw
        )
    ok = ClipTextConditioner(enc, tok, template="{tone} {label}", **kw)
    prompts = {ok.prompt(CellKey((("tone", t),), lab)) for t in ("dark", "light") for lab in ("0", "1")}
    assert len(prompts) == 4


def test_token_table_refuses_repeated_values():
    from fairsample.models.conditioners import TokenTableConditioner

    with pytest.raises(ConfigError, match=r"slot 'tone' has repeated values \['dark'\]"):
        TokenTableConditioner({"tone": ["dark", "dark"]}, ["0"], dim=4)


def test_embeddings_cached_once_per_cell(tiny_clip):
    c = _conditioner(tiny_clip)
    calls = []
    c.text_encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    a = CellKey((("tone", "dark"),), "0")
    e = c.cached([a, a, None])
    assert e.shape == (3, 16, 32)
    c.cached([a, None])
    assert len(calls) == 1  # one encoder pass for the two distinct prompts
    torch.testing.assert_close(e[0], c.embed([a])[0])


def test_latent_bundle_round_trip_and_vae(tmp_path, tiny_clip, tiny_vae):
    b = new_latent_bundle(_latent_unet(), tiny_vae, _conditioner(tiny_clip), prediction_type="v_prediction")
    assert b.latent_shape == (4, 8, 8) and b.image_shape == (3, 16, 16) and b.vae_scale == 2
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = b.encode(x, generator=torch.Generator().manual_seed(0))
        assert z.shape == (2, 4, 8, 8)
        assert b.decode(z).shape == (2, 3, 16, 16)
    b.save(tmp_path / "sd")
    for part in (
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "vae/config.json",
        "conditioner/conditioner.json",
    ):
        assert (tmp_path / "sd" / part).is_file(), part
    loaded = ModelBundle.load(tmp_path / "sd")
    assert isinstance(loaded.conditioner, ClipTextConditioner)
    assert loaded.config["kind"] == "latent" and loaded.prediction_type == "v_prediction"
    cell = CellKey((("tone", "light"),), "1")
    torch.testing.assert_close(loaded.conditioner.cached([cell]), b.conditioner.cached([cell]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), b.eval().decode(z), rtol=1e-5, atol=1e-5)


def test_cross_attention_width_must_match(tiny_clip, tiny_vae):
    unet = _latent_unet()
    unet.register_to_config(cross_attention_dim=16)
    with pytest.raises(ConfigError, match="cross_attention_dim=16 does not match the text encoder width 32"):
        new_latent_bundle(unet, tiny_vae, _conditioner(tiny_clip))

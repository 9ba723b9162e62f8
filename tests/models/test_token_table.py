"""TokenTableConditioner: token layout, null tokens, CFG dropout, per-cell cache, persistence."""

from __future__ import annotations

import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey
from fairsample.models.conditioners import TokenTableConditioner, load_conditioner


def _cond() -> TokenTableConditioner:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TokenTableConditioner({"tone": ["dark", "light"], "sex": ["F", "M"]}, ["0", "1", "2"], dim=8)


def cell(tone: str, sex: str, label: str) -> CellKey:
    return CellKey((("tone", tone), ("sex", sex)), label)


def test_indices_layout_and_null_tokens():
    c = _cond()
    # slots: tone [dark, light, null] -> 0..2, sex [F, M, null] -> 3..5, label [0, 1, 2, null] -> 6..9
    assert c.seq_len == 3
    assert c.tokens.num_embeddings == 10
    idx = c.indices([cell("light", "F", "2"), None])
    assert idx.tolist() == [[1, 3, 8], [2, 5, 9]]
    assert c.null_indices(1).tolist() == [[2, 5, 9]]


def test_embed_shape_and_grad():
    c = _cond()
    e = c.embed([cell("dark", "M", "1")] * 4)
    assert e.shape == (4, 3, 8) and e.dtype == torch.float32
    e.sum().backward()
    assert c.tokens.weight.grad is not None
    # only the three used tokens receive gradient
    assert int((c.tokens.weight.grad.abs().sum(1) > 0).sum()) == 3


def test_unknown_value_names_slot_and_known_values():
    c = _cond()
    with pytest.raises(ConfigError, match=r"tone='purple'.*known tone values: \['dark', 'light'\]"):
        c.indices([cell("purple", "F", "0")])


def test_missing_slot():
    c = _cond()
    with pytest.raises(ConfigError, match="no value for 'sex'"):
        c.indices([CellKey((("tone", "dark"),), "0")])


def test_cfg_dropout_rate_and_rows_all_null():
    c = _cond()
    idx = c.indices([cell("dark", "F", "0")] * 4000)
    g = torch.Generator().manual_seed(1)
    out = c.drop(idx, p_uncond=0.1, generator=g)
    null = c.null_indices(4000)
    rows_null = (out == null).all(1)
    partial = ((out == null).any(1) & ~rows_null).sum()
    assert partial == 0  # p_slot = 0: a row is either intact or fully null
    assert 0.08 < rows_null.float().mean() < 0.12
    assert torch.equal(c.drop(idx, p_uncond=0.0), idx)
    with pytest.raises(ConfigError, match=r"`p_uncond` must be in \[0, 1\], got 1.5"):
        c.drop(idx, p_uncond=1.5)


def test_slot_dropout_nulls_single_slots():
    c = _cond()
    idx = c.indices([cell("dark", "F", "0")] * 2000)
    out = c.drop(idx, p_uncond=0.0, p_slot=0.5, generator=torch.Generator().manual_seed(0))
    frac = (out == c.null_indices(2000)).float().mean(0)
    assert torch.all((frac > 0.45) & (frac < 0.55))


def test_cache_embeds_each_cell_once_and_matches_embed():
    c = _cond().eval()
    calls = []
    c.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    a, b = cell("dark", "F", "0"), cell("light", "M", "2")
    out = c.cached([a, b, a, a, None])
    assert out.shape == (5, 3, 8)
    assert len(calls) == 3  # a, b, None
    c.cached([a, b])
    assert len(calls) == 3  # all hits
    torch.testing.assert_close(out[0], c.embed([a])[0].detach())
    assert not out.requires_grad


def test_cache_invalidated_when_weights_change():
    c = _cond().eval()
    a = cell("dark", "F", "0")
    before = c.cached([a]).clone()
    with torch.no_grad():
        c.tokens.weight.add_(1.0)
    c.load_state_dict(c.state_dict())
    after = c.cached([a])
    assert not torch.allclose(before, after)
    c.train()
    assert len(c._cache) == 0


def test_save_load_round_trip(tmp_path):
    c = _cond()
    c.save(tmp_path)
    assert (tmp_path / "conditioner" / "token_table.safetensors").is_file()
    loaded = load_conditioner(tmp_path)
    assert isinstance(loaded, TokenTableConditioner)
    assert loaded.attributes == c.attributes and loaded.labels == c.labels
    a = cell("light", "M", "1")
    torch.testing.assert_close(loaded.embed([a]), c.embed([a]), rtol=0, atol=0)

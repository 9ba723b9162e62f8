"""Tiny, seeded, in-test model components (nothing is downloaded)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch


@pytest.fixture
def tiny_clip(tmp_path: Path):
    """A 2-layer CLIP text encoder and a character-level CLIP tokenizer built from an in-test vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + "=,-_":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = CLIPTextModel(cfg)
    return enc, tok


@pytest.fixture
def tiny_vae():
    """A seeded 2-level AutoencoderKL (pixel side / latent side = 2)."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            latent_channels=4,
            norm_num_groups=4,
            layers_per_block=1,
            sample_size=16,
        )

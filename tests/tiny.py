"""Tiny seeded U-Nets shared by the test folders (built in-test; nothing is downloaded)."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def build_tiny_unet(
    sample_size: int = 8, seed: int = 0, *, in_channels: int = 3, cross_attention_dim: int = 16
) -> UNet2DConditionModel:
    """A 2-block conditional U-Net (~0.25 M params) with seeded weights; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=4,
            norm_num_groups=8,
        )


def save_tiny_sd_pipeline(path, *, max_length: int = 32, prediction_type: str = "epsilon", seed: int = 0):
    """Write a tiny randomly initialised Stable Diffusion pipeline in the standard diffusers layout
    (``model_index.json`` + ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``, safetensors): what a user's SD folder
    looks like, at 16 px.

    The tokenizer is character-level, built from a small local vocabulary; the scheduler is SD's PNDM config.
    """
    import json
    import string
    import tempfile
    from pathlib import Path

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + "=,-_:.":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=max_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=max_length,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=4,
            layers_per_block=1,
            sample_size=16,
        )
    unet = build_tiny_unet(8, seed, in_channels=4, cross_attention_dim=32)
    sched = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=enc,
        tokenizer=tok,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)

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

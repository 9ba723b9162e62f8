"""Seed derivation: one integer seed per (run seed, step, rank, stream ...) from numpy's SeedSequence."""

from __future__ import annotations

import numpy as np


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy ``SeedSequence``), e.g. for per-(seed, step, rank) generators.

    Each part is taken modulo 2**32; the result is non-negative and fits ``torch.Generator.manual_seed``.

    Example:
        >>> mix_seed(0, 1) == mix_seed(0, 1) != mix_seed(1, 0)
        True
    """
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)

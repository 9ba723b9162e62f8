"""Training-method hooks: how a fair method plugs into the one training loop without copying it.

A method can change three things, each a hook of :class:`TrainMethod`:

1. **which images are drawn** — :meth:`TrainMethod.sample_weights` (per-image sampling weights over cells; CBRS/SQRS);
2. **how each sample's loss counts** — :meth:`TrainMethod.loss_weights` (per-sample weights; FBP, loss-mode CBRS);
3. **what is added to the loss** — :meth:`TrainMethod.extra_loss` (CBDM / class-diversity, preference terms).

:meth:`TrainMethod.after_step` sees the unweighted per-sample losses (FBP's reward) and returns numbers to log;
:meth:`TrainMethod.state_dict` / :meth:`TrainMethod.load_state_dict` make a method resumable. ``vanilla`` implements
every hook as the identity and is the "Stable Diffusion" baseline row of the papers' tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fairsample.data.schema import CellKey
from fairsample.errors import ConfigError

_BAD_METHOD = "`method` must be one of {names}, got {name!r}."


@dataclass
class StepContext:
    """What a method sees at one micro-step (tensors on the training device).

    Attributes:
        step: optimizer step index (0-based) the micro-batch belongs to.
        cells: the cell of every sample in the micro-batch (length B).
        latents: clean inputs ``(B, C, h, w)`` (pixels in [-1, 1], or VAE latents).
        noise: ``(B, C, h, w)`` ε.
        timesteps: ``(B,)`` long, in [0, T).
        noisy: ``(B, C, h, w)`` x_t.
        cond: ``(B, S, D)`` conditioning actually fed (after CFG dropout).
        dropped: ``(B,)`` bool, True where the sample was made unconditional.
        pred: ``(B, C, h, w)`` model output.
        target: ``(B, C, h, w)`` ε or v.
        losses: ``(B,)`` unweighted per-sample MSE (mean over c, h, w).
        denoise: ``denoise(noisy, timesteps, cells) -> pred`` for extra forwards under other cells.
        generator: the micro-step's CPU generator (for any extra randomness).
    """

    step: int
    cells: Sequence[CellKey]
    latents: Tensor
    noise: Tensor
    timesteps: Tensor
    noisy: Tensor
    cond: Tensor
    dropped: Tensor
    pred: Tensor
    target: Tensor
    losses: Tensor
    denoise: Callable[[Tensor, Tensor, Sequence[CellKey | None]], Tensor]
    generator: torch.Generator


class TrainMethod:
    """The vanilla method; fair methods subclass it and override hooks (see the module docstring).

    Example:
        >>> m = get_method("vanilla")
        >>> m.sample_weights([CellKey((), "0")]) is None
        True
    """

    name = "vanilla"
    method_status = "reference"  # "reference" (as published) or "project-extension"

    def sample_weights(self, cells: Sequence[CellKey]) -> np.ndarray | None:
        """Per-image sampling weights ``(N,)`` ≥ 0 over the training images, or ``None`` for uniform shuffling."""
        return None

    def loss_weights(self, ctx: StepContext) -> Tensor | None:
        """Per-sample loss weights ``(B,)``, or ``None`` for all ones."""
        return None

    def extra_loss(self, ctx: StepContext) -> Tensor | None:
        """A scalar added to the loss, or ``None``."""
        return None

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """Called after every micro-step with the unweighted losses; returns extra numbers for the JSONL log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output on ``--resume``."""

    def config(self) -> dict[str, Any]:
        """The method's resolved settings, recorded in the bundle."""
        return {"name": self.name, "method_status": self.method_status}


#: method name -> factory; the fair methods (issue #5) register here.
METHODS: dict[str, Callable[[], TrainMethod]] = {"vanilla": TrainMethod}


def get_method(name: str) -> TrainMethod:
    """Instantiate a registered method; an unknown name raises :class:`ConfigError` listing the names."""
    if name not in METHODS:
        raise ConfigError(_BAD_METHOD.format(names=sorted(METHODS), name=name))
    return METHODS[name]()

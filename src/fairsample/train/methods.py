"""Training-method hooks: how a fair method plugs into the one training loop without copying it.

A method is set up once with :class:`SetupContext` (:meth:`TrainMethod.setup`: the training cells, attribute values,
the bundle, an image loader, a frozen-reference factory) and can then change four things, each a hook of
:class:`TrainMethod`:

1. **which images are drawn** — :meth:`TrainMethod.sample_weights` (per-image sampling weights over cells; CBRS/SQRS),
   refreshed by :meth:`TrainMethod.sample_weights_at` at any optimizer step (gradient-aware resampling);
2. **how each sample's loss counts** — :meth:`TrainMethod.loss_weights` (per-sample weights; FBP, loss-mode CBRS);
3. **what is added to the loss** — :meth:`TrainMethod.extra_loss` (CBDM / class-diversity, preference terms),
   reported by name through :meth:`TrainMethod.extra_losses` (the loop logs each named term's gradient norm every
   ``grad_norm_every`` steps, ``grad_norm_terms`` in the JSONL log).

:meth:`TrainMethod.after_step` sees the unweighted per-sample losses (FBP's reward; ``ctx.gather`` / ``ctx.broadcast``
span every process) and returns numbers to log; :meth:`TrainMethod.state_dict` / :meth:`TrainMethod.load_state_dict`
make a method resumable; :meth:`TrainMethod.artifacts` adds JSON files to the bundle (e.g. FBP's σ trajectory).
``vanilla`` implements every hook as the identity and is the "Stable Diffusion" baseline row of the papers' tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fairsample.data.schema import CellKey


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class SetupContext:
    """What a method sees once, before the first step (after the model is built, before ``--resume`` state loads).

    Attributes:
        train_cells: the cell of every training image, in training-row order (length N).
        cell_set: every cell of the dataset, sorted (the y′ candidates of class-diversity losses).
        attribute_values: ``{attribute: [values]}`` of the dataset (FBP's groups and offsets).
        label_name: the label column's name.
        bundle: the model bundle being trained (unprepared modules).
        device: the training device.
        config: the resolved :class:`~fairsample.core.config.TrainConfig`.
        dataset: the :class:`~fairsample.data.folder.FolderDataset` (its root resolves preference files).
        load_images: ``load_images(paths) -> (B, C, h, w)`` model inputs for image files (pixels in [-1, 1], or
            VAE latents), as the loop prepares training images.
        make_reference: ``make_reference() -> denoise`` — a frozen copy of the model *now* (DPO's reference), with
            the same signature as :attr:`StepContext.denoise`.
        rank, world: this process and the number of processes.
        output_dir: the run's output folder (methods may write inputs they build there, e.g. preference pairs).
        log: one-line human messages (the loop's ``log``; stderr by default), or ``None``.
        wait_for_everyone: a barrier over processes (``None`` on one process).
    """

    train_cells: Sequence[CellKey]
    cell_set: Sequence[CellKey]
    attribute_values: Mapping[str, Sequence[str]]
    label_name: str
    bundle: Any
    device: Any
    config: Any
    dataset: Any
    load_images: Callable[[Sequence[Any]], Tensor]
    make_reference: Callable[[], Callable[[Tensor, Tensor, Sequence[CellKey | None]], Tensor]]
    rank: int = 0
    world: int = 1
    output_dir: Path | None = None
    log: Callable[[str], None] | None = None
    wait_for_everyone: Callable[[], None] | None = None


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
        global_cells: the cells of the whole micro-batch over all processes, in rank order (equals ``cells`` on
            one process); ``gather(losses)`` lines up with it.
        gather: concatenates a per-sample tensor over processes in rank order (identity on one process).
        broadcast: returns rank 0's value of a tensor on every process (identity on one process).
        rank, world: this process and the number of processes.
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
    global_cells: Sequence[CellKey] = field(default_factory=list)
    gather: Callable[[Tensor], Tensor] = _identity
    broadcast: Callable[[Tensor], Tensor] = _identity
    rank: int = 0
    world: int = 1


class TrainMethod:
    """The vanilla method; fair methods subclass it and override hooks (see the module docstring).

    Example:
        >>> from fairsample.train.presets import get_method
        >>> m = get_method("vanilla")
        >>> m.sample_weights([CellKey((), "0")]) is None
        True
    """

    name = "vanilla"
    method_status = "reference"  # "reference" (as published) or "project-extension"

    def check_config(self, config: Any) -> None:
        """Called by :func:`~fairsample.train.loop.train` before any data or model loads; raises
        :class:`~fairsample.core.errors.ConfigError` for a :class:`~fairsample.core.config.TrainConfig` the method
        cannot run
        with (e.g. preference tuning that must build its pairs from ``--init-from`` but has none)."""

    def setup(self, ctx: SetupContext) -> None:
        """Called once before training (and before :meth:`load_state_dict` on resume)."""

    def sample_weights_at(self, step: int) -> np.ndarray | None:
        """Updated per-image sampling weights from optimizer step ``step`` on, or ``None`` to keep the current ones.

        Called at the start of every optimizer step. The loop re-derives its sampling stream from the weights'
        content, so returning the same weights after ``--resume`` continues the run exactly.
        """
        return None

    def sample_weights(self, cells: Sequence[CellKey]) -> np.ndarray | None:
        """Per-image sampling weights ``(N,)`` ≥ 0 over the training images, or ``None`` for uniform shuffling."""
        return None

    def loss_weights(self, ctx: StepContext) -> Tensor | None:
        """Per-sample loss weights ``(B,)``, or ``None`` for all ones."""
        return None

    def extra_loss(self, ctx: StepContext) -> Tensor | None:
        """A scalar added to the loss, or ``None``."""
        return None

    def extra_losses(self, ctx: StepContext) -> dict[str, Tensor]:
        """The extra loss as named scalar terms (their sum is what is added to the loss); ``{}`` for none.

        The default wraps :meth:`extra_loss` as ``{self.name: term}``; :class:`~fairsample.train.compose.Composite`
        returns one entry per part. The loop calls this hook (not :meth:`extra_loss`) and logs each term's gradient
        norm. Call it once per micro-step: methods draw their randomness from ``ctx.generator``.

        Example:
            >>> from fairsample.train.presets import get_method
            >>> get_method("vanilla").extra_losses(None)
            {}
        """
        term = self.extra_loss(ctx)
        return {} if term is None else {self.name: term}

    def wants_grad_norms(self, step: int) -> bool:
        """Whether the loop should measure the terms' gradient norms at optimizer step ``step`` even when
        ``grad_norm_every`` does not ask for it (e.g. while a method calibrates a term's scale)."""
        return False

    def observe_grad_norms(self, step: int, norms: Mapping[str, float]) -> Mapping[str, float] | None:
        """Called with ``{term: ‖∇θ term‖}`` (``"diffusion"`` = the weighted diffusion loss; first micro-batch) at
        every optimizer step whose norms the loop measured, before the backward pass.

        Returns:
            ``{term: factor}`` multipliers for this micro-batch's terms (a balancing method rescales its own term;
            later micro-batches use whatever :meth:`extra_losses` returns), or ``None``.
        """
        return None

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """Called after every micro-step with the unweighted losses; returns extra numbers for the JSONL log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output on ``--resume``."""

    def artifacts(self) -> dict[str, Any]:
        """``{file name: JSON-safe document}`` written into the bundle folder at the end (e.g. FBP's σ trajectory)."""
        return {}

    def config(self) -> dict[str, Any]:
        """The method's resolved settings, recorded in the bundle."""
        return {"name": self.name, "method_status": self.method_status}

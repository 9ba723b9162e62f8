"""Cell-balanced resampling: CBRS, SQRS and the gradient-aware refinement (FairSkin §3.2; FairGen; METHODS.md §3.2).

Every training image i belongs to a cell c(i) (sensitive-attribute values × label, from metadata — never a prompt
string). With N_c images in cell c and power p:

- **CBRS** (p = 1): w_i = 1/N_{c(i)}; **SQRS** (p = ½): w_i = 1/√N_{c(i)} (FairGen ``compute_class_weights``);
- ``apply="sampler"`` (default, the FairGen code): w are the weights of a with-replacement sampler of N draws per epoch
  (``WeightedRandomSampler``), so cell c's expected share of the draws is N_c·w_c / Σ_g N_g·w_g — uniform for CBRS,
  ∝ √N_c for SQRS;
- ``apply="loss"`` (the FairSkin prose): the same w become per-sample loss weights, rescaled so that their mean over
  the training set is 1 (the loss scale of vanilla training is kept);
- **gradient-aware** (FairGen Eq. 1–2, reconstructed [unverified]; ``alpha`` > 0): every ``refresh_every`` = K
  optimizer steps the cell weights become w_g ∝ N_g^{−p}·(Ḡ_g / mean_{g′} Ḡ_{g′})^α, where Ḡ_g is an under-fitting
  proxy of cell g built from EMAs (decay ``ema``) of per-micro-batch cell means, gathered over processes (so every
  rank computes the same weights):

  - ``proxy="contrast"`` (default): Ḡ_g = EMA(mean ℓ_i) / EMA(mean var(x0_i)) — the cell's unweighted loss per unit
    of its images' own contrast (the variance of the clean input over channels and pixels). Raw losses are not
    comparable across cells: a low-contrast cell (e.g. dark skin tones on a dark background) has a small loss
    because its whole signal is small, not because it is learnt. On the demo this proxy ranks the cells a vanilla
    model renders worst among the highest (docs/decisions.md);
  - ``proxy="loss"``: Ḡ_g = EMA(mean ℓ_i), METHODS.md's cheap option, kept for comparison (on the demo it moves
    sampling *away* from the dark cells).

  The mean is over cells seen so far; cells not seen yet keep factor 1. ``alpha=0`` is exactly CBRS/SQRS.

The current weights and Ḡ are in :meth:`CellResampling.state_dict`, so a ``--resume`` continues the same sampling
stream (the loop keys the stream by the weights' content).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey
from fairsample.train.methods import SetupContext, StepContext, TrainMethod

_BAD_OPTION = "`{name}` must be {what}, got {value!r}; {fix}."
_BAD_APPLY = "`apply` must be one of ['loss', 'sampler'], got {value!r}; use 'sampler' (FairGen code) or 'loss'."
_BAD_PROXY = (
    "`proxy` must be one of ['contrast', 'loss'], got {value!r}; use 'contrast' (loss per unit image contrast) or "
    "'loss' (the raw cell loss, for comparison)."
)
#: gradient-aware proxies (module docstring)
PROXIES: tuple[str, str] = ("contrast", "loss")
_MIN_CONTRAST = 1e-6  # floor of a cell's mean var(x0), so constant images do not divide by zero


def _number(name: str, value: Any, *, low: float, high: float = math.inf, high_open: bool = False, fix: str) -> float:
    """A finite real option in [low, high] (or [low, high)); bools and strings are refused."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        rng = (
            f"a number in [{low}, {high})"
            if high_open
            else (f"a number >= {low}" if high == math.inf else f"a number in [{low}, {high}]")
        )
        raise ConfigError(_BAD_OPTION.format(name=name, what=rng, value=value, fix=fix))
    return float(value)


def _cell_counts(cells: Sequence[CellKey]) -> tuple[list[CellKey], np.ndarray, np.ndarray]:
    """Sorted distinct cells, their counts N_g (float64) and each image's cell index."""
    order = sorted(set(cells))
    pos = {c: k for k, c in enumerate(order)}
    idx = np.fromiter((pos[c] for c in cells), dtype=np.int64, count=len(cells))
    counts = np.bincount(idx, minlength=len(order)).astype(np.float64)
    return order, counts, idx


class CellResampling(TrainMethod):
    """Cell-balanced resampling (CBRS / SQRS), optionally gradient-aware (METHODS.md §3.2).

    Args:
        power: p in w = N_c^{−p}; 1.0 = CBRS, 0.5 = SQRS, 0 = no rebalancing.
        apply: ``"sampler"`` (with-replacement sampling weights) or ``"loss"`` (per-sample loss weights, mean 1 over
            the training set; uniform shuffling).
        alpha: α ≥ 0 of the gradient-aware factor (Ḡ_g / mean Ḡ)^α; 0 = plain CBRS/SQRS.
        refresh_every: K ≥ 1, optimizer steps between weight refreshes (only with ``alpha`` > 0).
        ema: EMA decay in [0, 1) of the per-cell proxy Ḡ_g.
        proxy: ``"contrast"`` (loss per unit image contrast, default) or ``"loss"`` (mean loss); see the module
            docstring.
        name: the name recorded in the bundle (the preset name).

    Raises:
        ConfigError: an out-of-range or mistyped option (the message names it).

    Example:
        >>> a, b = CellKey((("tone", "dark"),), "0"), CellKey((("tone", "light"),), "0")
        >>> CellResampling(power=1.0).sample_weights([a, b, b, b]).tolist()
        [1.0, 0.3333333333333333, 0.3333333333333333, 0.3333333333333333]
    """

    def __init__(
        self,
        *,
        power: float = 1.0,
        apply: Literal["sampler", "loss"] = "sampler",
        alpha: float = 0.0,
        refresh_every: int = 100,
        ema: float = 0.9,
        proxy: Literal["contrast", "loss"] = "contrast",
        name: str | None = None,
    ) -> None:
        self.power = _number("power", power, low=0.0, fix="use 1.0 for CBRS (1/N) or 0.5 for SQRS (1/sqrt(N))")
        if apply not in ("sampler", "loss"):
            raise ConfigError(_BAD_APPLY.format(value=apply))
        self.apply = apply
        self.alpha = _number("alpha", alpha, low=0.0, fix="use 0 for plain CBRS/SQRS or a small value such as 0.5")
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise ConfigError(
                _BAD_OPTION.format(
                    name="refresh_every",
                    what="an integer >= 1",
                    value=refresh_every,
                    fix="give the optimizer steps between refreshes, e.g. 100",
                )
            )
        self.refresh_every = refresh_every
        self.ema = _number("ema", ema, low=0.0, high=1.0, high_open=True, fix="use a decay such as 0.9")
        if proxy not in PROXIES:
            raise ConfigError(_BAD_PROXY.format(value=proxy))
        self.proxy = proxy
        self.name = name or {1.0: "cbrs", 0.5: "sqrs"}.get(self.power, "resample")
        self.method_status = "project-extension" if self.alpha > 0 else "reference"
        source = "FairSkin prose (loss weights)" if apply == "loss" else "FairGen code (sampling weights)"
        self.status_reasons = [
            f"project-extension: gradient-aware refresh (alpha={self.alpha:g}, proxy {proxy!r}) reconstructs FairGen "
            "Eq. 1-2, which have no published code"
            if self.alpha > 0
            else f"reference: N^-{self.power:g} cell weights as in the {source}"
        ]
        self._label = "label"
        self._cells: list[CellKey] = []  # distinct training cells, sorted
        self._counts = np.zeros(0)  # N_g
        self._image_cell = np.zeros(0, dtype=np.int64)  # c(i) as an index into _cells
        self._train: list[CellKey] | None = None
        self._pos: dict[CellKey, int] = {}
        self._grad: list[float | None] = []  # EMA of the cell's mean loss (None: not seen yet)
        self._scale: list[float | None] = []  # EMA of the cell's mean var(x0) (proxy "contrast")
        self._cell_w = np.zeros(0)  # current per-cell weight (sampler: unnormalised; loss: mean 1 over images)
        self._refreshed_at = 0

    # -- weights ---------------------------------------------------------------------------------------------------
    def _init_cells(self, cells: Sequence[CellKey]) -> None:
        self._train = list(cells)
        self._cells, self._counts, self._image_cell = _cell_counts(self._train)
        self._pos = {c: k for k, c in enumerate(self._cells)}
        self._grad = [None] * len(self._cells)
        self._scale = [None] * len(self._cells)
        self._cell_w = self._compute_cell_weights()
        self._refreshed_at = 0

    def _proxies(self) -> list[float | None]:
        """Ḡ_g per cell (``None``: not seen yet): the loss EMA, divided by the contrast EMA for ``"contrast"``."""
        if self.proxy == "loss":
            return list(self._grad)
        return [
            None if g is None or v is None else g / max(v, _MIN_CONTRAST)
            for g, v in zip(self._grad, self._scale, strict=True)
        ]

    def _compute_cell_weights(self) -> np.ndarray:
        """w_g = N_g^{−p}·(Ḡ_g / mean Ḡ)^α; loss mode rescales to mean 1 over the training images."""
        w = self._counts ** (-self.power)
        if self.alpha > 0:
            proxies = self._proxies()
            seen = np.array([g for g in proxies if g is not None], dtype=np.float64)
            mean = float(seen.mean()) if len(seen) else 0.0
            if mean > 0:
                factor = np.array([1.0 if g is None else g / mean for g in proxies], dtype=np.float64)
                w = w * factor**self.alpha
        if self.apply == "loss":
            w = w * (self._counts.sum() / float((self._counts * w).sum()))
        return w

    def _expected_shares(self) -> dict[str, float]:
        """Cell → expected share of the draws (sampler) or of the loss mass (loss mode): N_g·w_g / Σ N·w."""
        mass = self._counts * self._cell_w
        share = mass / mass.sum()
        return {c.to_text(self._label): round(float(s), 6) for c, s in zip(self._cells, share, strict=True)}

    def setup(self, ctx: SetupContext) -> None:
        """Count the training images per cell and set the initial weights."""
        self._label = ctx.label_name
        self._init_cells(ctx.train_cells)

    def sample_weights(self, cells: Sequence[CellKey]) -> np.ndarray | None:
        """Per-image sampling weights ``(N,)`` float64: N_{c(i)}^{−p} (× the gradient-aware factor), or ``None`` in
        loss mode. Before :meth:`setup`, ``cells`` are taken as the training cells."""
        if self.apply == "loss":
            return None
        if self._train is None:
            self._init_cells(cells)
        elif len(cells) != len(self._train) or list(cells) != self._train:
            _, counts, idx = _cell_counts(cells)
            return (counts ** (-self.power))[idx]
        return self._cell_w[self._image_cell].copy()

    def sample_weights_at(self, step: int) -> np.ndarray | None:
        """Every K steps (``alpha`` > 0): recompute w_g from Ḡ; returns the new per-image weights (sampler mode)."""
        if self.alpha == 0 or step == 0 or step % self.refresh_every or self._train is None:
            return None
        self._cell_w = self._compute_cell_weights()
        self._refreshed_at = step
        return self._cell_w[self._image_cell].copy() if self.apply == "sampler" else None

    def loss_weights(self, ctx: StepContext) -> Tensor | None:
        """Loss mode: ``(B,)`` float32 per-sample weights w_{c(i)} (mean 1 over the training set)."""
        if self.apply != "loss":
            return None
        if self._train is None:
            raise RuntimeError("CellResampling.loss_weights called before setup()")
        return torch.tensor([self._cell_w[self._pos[c]] for c in ctx.cells], dtype=torch.float32)

    def after_step(self, ctx: StepContext) -> dict[str, Any]:
        """Update Ḡ (gradient-aware) and log the expected cell shares at step 0 and at every refresh."""
        out: dict[str, Any] = {}
        if self.alpha > 0 and self._train is not None:
            # 1. per-sample unweighted loss and contrast var(x0) of this micro-batch, over all processes
            losses = ctx.gather(ctx.losses.detach().float()).cpu().double().numpy()
            contrast = ctx.gather(ctx.latents.detach().float().flatten(1).var(dim=1)).cpu().double().numpy()
            cells = ctx.global_cells if len(ctx.global_cells) == len(losses) else ctx.cells
            rows: dict[int, list[int]] = {}
            for i, c in enumerate(cells):
                rows.setdefault(self._pos[c], []).append(i)
            # 2. EMA per cell of the mean loss and the mean contrast (the first observation initialises them)
            for k, idx in rows.items():
                self._grad[k] = self._ema_update(self._grad[k], float(np.mean(losses[idx])))
                self._scale[k] = self._ema_update(self._scale[k], float(np.mean(contrast[idx])))
        if self._train is not None and ctx.step == self._refreshed_at:
            out["cell_share"] = self._expected_shares()
            if self.alpha > 0:
                out["cell_grad_proxy"] = {
                    c.to_text(self._label): (None if g is None else round(g, 6))
                    for c, g in zip(self._cells, self._proxies(), strict=True)
                }
        return out

    def _ema_update(self, prev: float | None, value: float) -> float:
        return value if prev is None else self.ema * prev + (1.0 - self.ema) * value

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"cells", "grad" (loss EMA or None), "scale" (contrast EMA or None), "weights" (current per-cell),
        "refreshed_at"}``; JSON-safe, exact floats."""
        return {
            "cells": [c.to_text(self._label) for c in self._cells],
            "grad": list(self._grad),
            "scale": list(self._scale),
            "weights": [float(w) for w in self._cell_w],
            "refreshed_at": self._refreshed_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore Ḡ and the current weights (after :meth:`setup`); cells are matched by their text."""
        if not state:
            return
        pos = {c.to_text(self._label): k for k, c in enumerate(self._cells)}
        saved = list(state.get("cells", []))
        if sorted(saved) != sorted(pos):
            raise ConfigError(
                f"--resume: the checkpoint's resampling cells {saved} differ from the training cells {sorted(pos)}; "
                "resume with the original dataset and split."
            )
        grad: list[float | None] = [None] * len(self._cells)
        scale: list[float | None] = [None] * len(self._cells)
        w = np.zeros(len(self._cells))
        scales = state.get("scale") or [None] * len(saved)  # checkpoints before the contrast proxy have none
        for text, g, v, wv in zip(saved, state["grad"], scales, state["weights"], strict=True):
            grad[pos[text]] = None if g is None else float(g)
            scale[pos[text]] = None if v is None else float(v)
            w[pos[text]] = float(wv)
        self._grad, self._scale, self._cell_w = grad, scale, w
        self._refreshed_at = int(state.get("refreshed_at", 0))

    def config(self) -> dict[str, Any]:
        """Name, status and the resolved options."""
        return {
            "name": self.name,
            "method_status": self.method_status,
            "status_reasons": list(self.status_reasons),
            "power": self.power,
            "apply": self.apply,
            "alpha": self.alpha,
            "refresh_every": self.refresh_every,
            "ema": self.ema,
            "proxy": self.proxy,
        }

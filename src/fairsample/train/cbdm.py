"""Class-diversity regulariser: CBDM (Qin et al.) on cells, as FairSkin / FairGen use it (METHODS.md §3.3–3.4).

For each sample with a condition (``ctx.dropped`` False) a second cell y′ is drawn, the model is run again at the same
noisy input under y′, and the prediction is pulled toward that other-cell prediction (the code's direction, not
FairGen's prose):

    h′ = ε_θ(x_t, t, y′),   λ_t = τ·t/T,
    L_reg = mean[λ_t (pred − sg(h′))²] + γ·mean[λ_t (sg(pred) − h′)²],   γ = ¼,

added to the loss only if it is > 0. The means run over all n×C×H×W elements of the n rows that kept their condition;
rows made unconditional by CFG dropout take no part (no y′, no extra forward, not counted in the mean), as in the
CBDM code where the term is skipped when y = ∅. T is the bundle scheduler's ``num_train_timesteps`` (1000).

y′ policies (``y_prime``), drawn per sample with the micro-step generator (deterministic):

- ``uniform``: any cell of the dataset, possibly y itself (FairGen; CBDM fine-tuning) — the default;
- ``prior``: cells in proportion to their training-set counts (CBDM from scratch);
- ``same_label_other_attribute`` [project]: a cell with the same label and at least one different sensitive-attribute
  value, uniformly among those (rows whose cell has no such partner are left out of the term);
- ``same_attribute`` [project]: a cell with the same sensitive-attribute values and another label (the pull never
  crosses an attribute value, so a global attribute such as a skin tone is not averaged away).

Timestep window ``t_max`` [project]: λ_t = τ·t/T for t < t_max and 0 above, so the high-noise steps — where a global
attribute (the tone's background colour) is decided — are spared. At τ = 1 over every t the reference term erased the
demo's tone (METHODS.md §3.3, "measured on the demo"). The ``cbdm-keep`` preset is the variant chosen by the
conditioning guard (docs/decisions.md). Any [project] option labels the run ``method_status="project-extension"``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.data.schema import CellKey
from fairsample.train.methods import SetupContext, StepContext, TrainMethod

Y_PRIME_POLICIES: tuple[str, ...] = ("prior", "same_attribute", "same_label_other_attribute", "uniform")
_PROJECT_POLICIES = ("same_attribute", "same_label_other_attribute")

_BAD_OPTION = "`{name}` must be {what}, got {value!r}; {fix}."
_BAD_Y_PRIME = (
    "`y_prime` must be one of ['prior', 'same_attribute', 'same_label_other_attribute', 'uniform'], got {value!r}; "
    "use 'uniform' for FairGen/CBDM parity."
)
_BAD_T_MAX = "`t_max` must be an int in [1, {t}] or None (every timestep), got {value!r}; use 500 or None."
_NO_PARTNER = (
    "y_prime={policy!r}: {n} cell(s) have no cell with {what} (first: {first}); their samples get no class-diversity "
    "term."
)


def _nonneg(name: str, value: Any, fix: str) -> float:
    """A finite real option ≥ 0; bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(_BAD_OPTION.format(name=name, what="a number >= 0", value=value, fix=fix))
    return float(value)


def diversity_weight(
    timesteps: Tensor, *, num_train_timesteps: int, tau: float = 1.0, t_max: int | None = None
) -> Tensor:
    """λ_t = τ·t/T (Qin et al.), set to 0 for t ≥ ``t_max`` when given (the [project] window sparing high t).

    Args:
        timesteps: ``(n,)`` integer timesteps in [0, T).
        num_train_timesteps: T.
        tau: τ ≥ 0.
        t_max: ``None`` (every timestep, the reference) or the first timestep that gets weight 0.

    Returns:
        ``(n,)`` float32 weights.

    Example:
        >>> diversity_weight(torch.tensor([0, 250, 499, 500, 999]), num_train_timesteps=1000, t_max=500).tolist()
        [0.0, 0.25, 0.49900001287460327, 0.0, 0.0]
    """
    lam = tau * timesteps.to(torch.float32) / num_train_timesteps
    if t_max is not None:
        lam = torch.where(timesteps < t_max, lam, torch.zeros_like(lam))
    return lam


def class_diversity_loss(
    pred: Tensor,
    h_prime: Tensor,
    timesteps: Tensor,
    *,
    num_train_timesteps: int,
    tau: float = 1.0,
    gamma: float = 0.25,
    t_max: int | None = None,
) -> Tensor:
    """CBDM's regulariser mean[λ_t(pred − sg(h′))²] + γ·mean[λ_t(sg(pred) − h′)²], λ_t = τ·t/T (Qin et al.).

    Args:
        pred: ``(n, C, H, W)`` prediction under the sample's own cell (gets gradient from the first term only).
        h_prime: ``(n, C, H, W)`` prediction under y′ (gets gradient from the second term only).
        timesteps: ``(n,)`` integer timesteps in [0, T).
        num_train_timesteps: T.
        tau: τ ≥ 0.
        gamma: γ ≥ 0 (¼ in the code).
        t_max: [project] λ_t = 0 for t ≥ t_max (:func:`diversity_weight`); ``None``: the reference (every t).

    Returns:
        A scalar; both means run over all n×C×H×W elements.

    Example:
        >>> p, h = torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
        >>> float(class_diversity_loss(p, h, torch.tensor([500]), num_train_timesteps=1000))
        0.625
    """
    lam = diversity_weight(timesteps, num_train_timesteps=num_train_timesteps, tau=tau, t_max=t_max)
    lam = lam.to(pred.dtype).view(-1, *([1] * (pred.dim() - 1)))
    pull = (lam * (pred - h_prime.detach()).pow(2)).mean()
    push = (lam * (pred.detach() - h_prime).pow(2)).mean()
    return pull + gamma * push


class ClassDiversity(TrainMethod):
    """The CBDM / FairSkin class-diversity term on cells (METHODS.md §3.3–3.4), with uniform shuffling.

    Args:
        tau: τ ≥ 0 in λ_t = τ·t/T.
        gamma: γ ≥ 0, weight of the term that moves h′ (¼ in the code).
        y_prime: ``"uniform"``, ``"prior"``, ``"same_label_other_attribute"`` or ``"same_attribute"`` (the last two
            are project extensions).
        t_max: [project] λ_t = 0 for t ≥ t_max (spares the high-noise steps); ``None``: every timestep (reference).
        name: the name recorded in the bundle (the preset name).

    Raises:
        ConfigError: an out-of-range or mistyped option (the message names it).

    Example:
        >>> ClassDiversity(y_prime="prior").config()["y_prime"]
        'prior'
    """

    def __init__(
        self,
        *,
        tau: float = 1.0,
        gamma: float = 0.25,
        y_prime: Literal["uniform", "prior", "same_label_other_attribute", "same_attribute"] = "uniform",
        t_max: int | None = None,
        name: str | None = None,
    ) -> None:
        self.tau = _nonneg("tau", tau, "use 1.0 (CBDM's --tau default)")
        self.gamma = _nonneg("gamma", gamma, "use 0.25 (hard-coded in the CBDM code)")
        if y_prime not in Y_PRIME_POLICIES:
            raise ConfigError(_BAD_Y_PRIME.format(value=y_prime))
        if t_max is not None and (isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1):
            raise ConfigError(_BAD_T_MAX.format(t="T", value=t_max))
        self.y_prime = y_prime
        self.t_max = t_max
        self.name = name or "cbdm"
        project = y_prime in _PROJECT_POLICIES or t_max is not None
        self.method_status = "project-extension" if project else "reference"
        self.num_train_timesteps = 1000
        self._cells: list[CellKey] = []
        self._prior: Tensor | None = None
        self._partners: dict[CellKey, list[CellKey]] = {}
        self._autocast: tuple[str, torch.dtype] | None = None
        self._last: float | None = None

    def setup(self, ctx: SetupContext) -> None:
        """Take the y′ candidates (every dataset cell), their training frequencies and T from the bundle scheduler."""
        counts = {c: 0 for c in ctx.cell_set}
        for c in ctx.train_cells:
            counts[c] = counts.get(c, 0) + 1
        self._cells = sorted(counts)
        self._prior = torch.tensor([counts[c] for c in self._cells], dtype=torch.float64)
        if self.y_prime == "same_attribute":
            self._partners = {
                c: [o for o in self._cells if o.groups == c.groups and o.label != c.label] for c in self._cells
            }
            what = "the same attribute values and another label"
        else:
            self._partners = {
                c: [o for o in self._cells if o.label == c.label and o.groups != c.groups] for c in self._cells
            }
            what = "the same label and another attribute value"
        lonely = [c for c in self._cells if not self._partners[c]]
        if self.y_prime in _PROJECT_POLICIES and lonely:
            warnings.warn(
                _NO_PARTNER.format(policy=self.y_prime, n=len(lonely), what=what, first=lonely[0]),
                FairsampleWarning,
                stacklevel=2,
            )
        sched_cfg = getattr(getattr(ctx.bundle, "scheduler", None), "config", None)
        num_t = sched_cfg.get("num_train_timesteps") if isinstance(sched_cfg, dict) else None
        self.num_train_timesteps = int(num_t) if num_t else 1000
        if self.t_max is not None and self.t_max > self.num_train_timesteps:
            raise ConfigError(_BAD_T_MAX.format(t=self.num_train_timesteps, value=self.t_max))
        mp = getattr(ctx.config, "mixed_precision", "no")
        if mp in ("bf16", "fp16"):
            dev = str(ctx.device) if ctx.device is not None else "cpu"
            self._autocast = (
                "cuda" if dev.startswith("cuda") else "cpu",
                torch.bfloat16 if mp == "bf16" else torch.float16,
            )

    def draw_y_prime(self, cells: Sequence[CellKey], generator: torch.Generator) -> list[CellKey | None]:
        """One y′ per sample under the ``y_prime`` policy (``None`` where the cell has no partner cell).

        Args:
            cells: the samples' cells (length B).
            generator: a CPU generator (the micro-step's).

        Returns:
            ``B`` cells of the dataset's cell set.
        """
        if not self._cells:
            raise RuntimeError("ClassDiversity.draw_y_prime called before setup()")
        b = len(cells)
        if self.y_prime == "uniform":
            idx = torch.randint(len(self._cells), (b,), generator=generator).tolist()
            return [self._cells[i] for i in idx]
        if self.y_prime == "prior":
            assert self._prior is not None
            idx = torch.multinomial(self._prior, b, replacement=True, generator=generator).tolist()
            return [self._cells[i] for i in idx]
        u = torch.rand(b, generator=generator).tolist()
        out: list[CellKey | None] = []
        for c, r in zip(cells, u, strict=True):
            cand = self._partners.get(c, [])
            out.append(cand[min(int(r * len(cand)), len(cand) - 1)] if cand else None)
        return out

    def extra_loss(self, ctx: StepContext) -> Tensor | None:
        """L_reg over the rows that kept their condition, or ``None`` when no such row exists or L_reg is 0."""
        self._last = None
        # 1. y′ for every row (the draw does not depend on the dropout pattern), then keep conditioned rows
        y_prime = self.draw_y_prime(ctx.cells, ctx.generator)
        dropped = ctx.dropped.detach().cpu().tolist()
        keep = [i for i, (d, y) in enumerate(zip(dropped, y_prime, strict=True)) if not d and y is not None]
        n_cond = len(keep)
        if self.t_max is not None:  # λ_t = 0 there: no extra forward for those rows (they still count in the mean)
            ts = ctx.timesteps.detach().cpu().tolist()
            keep = [i for i in keep if ts[i] < self.t_max]
        if not keep:
            return None
        rows = torch.tensor(keep, dtype=torch.long, device=ctx.pred.device)
        cells_prime = [y_prime[i] for i in keep]
        # 2. h′ = ε_θ(x_t, t, y′): one extra forward, same precision as the main forward
        noisy, t = ctx.noisy.index_select(0, rows), ctx.timesteps.index_select(0, rows)
        if self._autocast is not None:
            with torch.autocast(device_type=self._autocast[0], dtype=self._autocast[1]):
                h_prime = ctx.denoise(noisy, t.float(), cells_prime)
        else:
            h_prime = ctx.denoise(noisy, t.float(), cells_prime)
        # 3. λ_t-weighted pull toward sg(h′) plus γ × the symmetric term moving h′
        loss = class_diversity_loss(
            ctx.pred.index_select(0, rows).float(),
            h_prime.float(),
            t,
            num_train_timesteps=self.num_train_timesteps,
            tau=self.tau,
            gamma=self.gamma,
            t_max=self.t_max,
        ) * (len(keep) / n_cond)
        value = float(loss.detach())
        if not value > 0:
            return None
        self._last = value
        return loss

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """Logs ``cbdm_loss`` (the last added L_reg; 0.0 when nothing was added)."""
        return {"cbdm_loss": 0.0 if self._last is None else round(self._last, 8)}

    def _status_reasons(self) -> list[str]:
        """Why the run is ``reference`` or ``project-extension`` (one line per project option)."""
        reasons = []
        if self.y_prime in _PROJECT_POLICIES:
            reasons.append(f"project-extension: y_prime={self.y_prime!r} is this project's y' policy")
        if self.t_max is not None:
            reasons.append(f"project-extension: t_max={self.t_max} (lambda_t = 0 for t >= t_max) is a project window")
        return reasons or [
            f"reference: CBDM class-diversity term (Qin et al.; FairSkin/FairGen), y_prime={self.y_prime!r}"
        ]

    def config(self) -> dict[str, Any]:
        """Name, status and the resolved options (T included)."""
        return {
            "name": self.name,
            "method_status": self.method_status,
            "status_reasons": self._status_reasons(),
            "tau": self.tau,
            "gamma": self.gamma,
            "y_prime": self.y_prime,
            "t_max": self.t_max,
            "num_train_timesteps": self.num_train_timesteps,
        }

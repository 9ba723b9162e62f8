"""FairDiffusion's Fair Bayesian Perturbation (FBP) as a training method (METHODS.md §3.1).

State: σ ∈ [0, 1]^G over concatenated per-attribute blocks (offsets ``off_a`` from the dataset's attribute values;
one-attribute demo: G = 3), starting at all ones. Per optimizer step:

1. ``loss_weights``: w_i = 1 + Σ_a σ[off_a + g_a(i)]·ξ_{i,a}, ξ_{i,a} ~ N(0, 1) drawn from the micro-step generator
   (``weights="lognormal"``: w_i = Π_a exp(s ξ − s²/2), s = σ[off_a + g_a(i)]; both have E[w] = 1). The loop then
   minimises mean_i(w_i ℓ_i).
2. ``after_step``: on the gathered (all-process) *unweighted* losses, gap_a = max_g mean ℓ − min_g mean ℓ, and
   r = −Σ_a gap_a. ``reference`` (and ``random``) mode: a group absent from the batch has mean NaN, the reference
   code's ``torch.max`` over the group means is then NaN and gap_a is set to 0 — so one absent group zeroes the
   whole attribute's gap. ``improved`` mode (project extension) takes the gap over the groups present (fewer than
   two present → 0). ``reference`` mode appends (σ, r) to the buffers (X, Y).
3. If step > 0 and step % W == 0 (``step`` = 0-based optimizer step): fit a ``SingleTaskGP`` on (X, Y), maximise
   UCB(x) = μ(x) + √β·s(x) over [0, 1]^G (q = 1), σ ← argmax, clear the buffers.
4. Every step (also right after a BO update): σ ← ρσ + (1 − ρ)u, u ~ U(0, 1)^G.

σ is computed on rank 0 and broadcast after every step, so all processes agree; on one process this is exactly the
reference algorithm. Randomness: ξ comes from the loop's per-(seed, micro-step, rank) generator; u and the BO's
random draws come from generators seeded with ``(seed, step)``, so the method is a pure function of the seed and a
resumed run continues identically (no generator state to save).

Modes:

- ``reference``: the published code (with rank-0 broadcast and optimizer-step counting, METHODS.md §3.1 decisions).
- ``improved`` (project extension): one GP observation per *window* — x = the mean σ applied over the window's steps,
  y = −mean_t gap_t over those steps, where gap_t is computed from a per-(attribute, group) EMA of the gathered
  per-group mean losses (decay ``ema_decay``; an absent group keeps its EMA; the EMA restarts at every window so a
  window's reward only sees losses trained under that window's σ), and every gap is taken over the groups present
  (a group not yet seen does not zero its attribute's gap, unlike the reference). Window observations are kept
  across BO updates (the latest ``history`` of them) instead of being cleared, the GP outcome is
  ``Standardize(m=1)``, and the GP is fitted only once ≥ 2 window observations exist. The timestep-stratified /
  common-random-number evaluation batches that METHODS.md also lists are **not** implemented: the loop owns t and ε.
- ``random`` (the ``fbp-random`` ablation, ``train_text_to_image_random.py``): σ ≡ 1, no BO, no exploration; the
  reward is still computed (as in ``reference``) and logged.

GP [project, METHODS.md §3.1 "botorch defaults moved"]: every model component is explicit, never botorch's default —
``covar_module`` = Scale(Matérn-5/2 ARD) with Gamma(3, 6) lengthscale and Gamma(2, 0.15) outputscale priors,
``likelihood`` = Gaussian with a Gamma(1.1, 0.05) noise prior and noise ≥ 1e-4 (the legacy ``SingleTaskGP`` defaults,
still shipped in botorch 0.18 as ``botorch.models.utils.gpytorch_modules.get_matern_kernel_with_gamma_prior`` /
``get_gaussian_likelihood_with_gamma_prior``), ``input_transform=None`` (σ already lives in the unit cube that is also
the acquisition's bounds, so ``Normalize`` would be the identity), ``outcome_transform`` = ``None`` (reference) or
``Standardize(m=1)`` (improved). Data in float64. Warnings botorch raises while fitting or optimising (numerical
jitter, optimiser restarts) are counted in the σ trajectory and their text kept in ``fbp_sigma.json``
(``bo_warnings``) instead of being re-emitted.

With gradient accumulation, ``after_step`` runs once per micro-batch; the reward of an optimizer step pools the
gathered losses of all its micro-batches, and σ changes only between optimizer steps. ``fbp_sigma.json`` numbers steps
from 0 (the optimizer step whose losses gave the reward); the JSONL training log numbers them from 1.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.core.rng import mix_seed
from fairsample.data.schema import CellKey
from fairsample.train.methods import SetupContext, StepContext, TrainMethod

_MODES = ("improved", "random", "reference")
Absent = Literal["zero", "ignore"]
_ABSENT = ("zero", "ignore")
_WEIGHT_FORMS = ("lognormal", "normal")
_BAD_CHOICE = "`{name}` must be one of {allowed}, got {value!r}."
_BAD_RANGE = "`{name}` must be {rule}, got {value!r}."
_BAD_ATTRIBUTES = "`attributes` {extra} are not sensitive attributes of the dataset; its attributes are {known}."
_NO_ATTRIBUTES = (
    "FBP needs at least one sensitive attribute, but the dataset has none; add `groups` to fairsample.toml."
)
_UNKNOWN_VALUE = "cell {cell} has value {value!r} for attribute {attribute!r}, which is not among its values {values}."
_BAD_OPTION = "`method_options` {extra} are not options of method {name!r}; its options are {known}."
_DEVIATION = (
    "FBP option {what} deviates from the published FairDiffusion weights (w = 1 + Σσξ); results are not comparable "
    "with the paper and the bundle is labelled method_status='project-extension'."
)
_BAD_STATE = "FBP state does not match this run: {why}; resume with the original dataset and method options."
_NO_BOTORCH = "FairDiffusion's Bayesian optimisation needs botorch: pip install 'fairsample[train]'"


@dataclass(frozen=True)
class FBPConfig:
    """Settings of :class:`FairBayesianPerturbation` (METHODS.md §3.1; defaults from the code and README).

    Example:
        >>> FBPConfig(window=2).window
        2
    """

    mode: str = "reference"  # "reference" (published code) | "improved" (project extension) | "random" (σ ≡ 1, no BO)
    window: int = 30  # W: BO update when step > 0 and step % W == 0 (optimizer steps; README 30, argparse 50)
    exploitation_rate: float = 0.95  # ρ: σ ← ρσ + (1 − ρ)·U(0,1)^G after every step
    ucb_beta: float = 0.1  # β of UCB(x) = μ(x) + √β·s(x)
    num_restarts: int = 5  # optimize_acqf restarts
    raw_samples: int = 20  # optimize_acqf raw (Sobol) samples for the initial conditions
    weight_clamp: float | None = None  # w ← max(w, clamp), e.g. 0 to forbid negative weights (deviation; off)
    weights: str = "normal"  # "normal": w = 1 + Σσξ (paper) | "lognormal": w = Π exp(σξ − σ²/2) (deviation)
    attributes: tuple[str, ...] | None = None  # sensitive attributes perturbed (None: every attribute of the dataset)
    seed: int | None = None  # seed of the exploration draws and the BO (None: the training seed)
    ema_decay: float = 0.9  # improved mode: decay of the per-group loss EMA
    history: int = 25  # improved mode: latest window observations the GP is fitted on

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ConfigError(_BAD_CHOICE.format(name="mode", allowed=list(_MODES), value=self.mode))
        if self.weights not in _WEIGHT_FORMS:
            raise ConfigError(_BAD_CHOICE.format(name="weights", allowed=list(_WEIGHT_FORMS), value=self.weights))
        for name in ("window", "num_restarts", "raw_samples", "history"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(_BAD_RANGE.format(name=name, rule="an integer >= 1", value=value))
        for name, lo, hi in (("exploitation_rate", 0.0, 1.0), ("ema_decay", 0.0, 1.0), ("ucb_beta", 0.0, math.inf)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
                rule = f"a number in [{lo}, {hi}]" if hi < math.inf else f"a number >= {lo}"
                raise ConfigError(_BAD_RANGE.format(name=name, rule=rule, value=value))
        if self.weight_clamp is not None:
            c = self.weight_clamp
            if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c):
                raise ConfigError(_BAD_RANGE.format(name="weight_clamp", rule="None or a finite number", value=c))
            object.__setattr__(self, "weight_clamp", float(c))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(_BAD_RANGE.format(name="seed", rule="None or an integer", value=self.seed))
        if self.attributes is not None:
            attrs = (self.attributes,) if isinstance(self.attributes, str) else tuple(self.attributes)
            if not attrs or len(set(attrs)) != len(attrs) or not all(isinstance(a, str) for a in attrs):
                raise ConfigError(
                    _BAD_RANGE.format(
                        name="attributes", rule="None or distinct attribute names", value=self.attributes
                    )
                )
            object.__setattr__(self, "attributes", attrs)

    @property
    def deviations(self) -> list[str]:
        """Options that change the published weight distribution (they make the run a project extension)."""
        out = []
        if self.weight_clamp is not None:
            out.append(f"weight_clamp={self.weight_clamp}")
        if self.weights != "normal":
            out.append(f"weights={self.weights!r}")
        return out


_EXPLORE, _BO = 1, 2  # stream tags of the seed-derived generators


def group_offsets(attribute_values: Mapping[str, Sequence[str]], attributes: Sequence[str]) -> dict[str, int]:
    """Offset of every attribute's block in σ (blocks concatenated in ``attributes`` order).

    Example:
        >>> group_offsets({"race": ["A", "B", "W"], "sex": ["F", "M"]}, ["race", "sex"])
        {'race': 0, 'sex': 3}
    """
    out, off = {}, 0
    for a in attributes:
        out[a] = off
        off += len(attribute_values[a])
    return out


def loss_gaps(losses: Tensor, groups: Tensor, sizes: Sequence[int], *, absent: Absent = "zero") -> Tensor:
    """Per-attribute loss gap max_g mean ℓ − min_g mean ℓ on one (gathered) batch.

    Args:
        losses: ``(N,)`` unweighted per-sample losses.
        groups: ``(N, A)`` long, the group index of every sample for every attribute (within its block).
        sizes: the number of groups of every attribute.
        absent: what a group missing from the batch does to its attribute's gap. ``"zero"`` (reference and random
            modes): the reference code's ``torch.max`` over the group means is NaN, and the NaN gap is set to 0, so
            the attribute's gap is 0. ``"ignore"`` (improved mode, project extension): the gap over the groups
            present; fewer than two present → 0.

    Returns:
        ``(A,)`` float64 gaps, each ≥ 0.

    Raises:
        ConfigError: ``absent`` is neither ``"zero"`` nor ``"ignore"``.

    Example:
        >>> loss_gaps(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([[0], [1], [1]]), [2])
        tensor([1.5000], dtype=torch.float64)
        >>> loss_gaps(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([[0], [1], [1]]), [3])  # group 2 absent
        tensor([0.], dtype=torch.float64)
        >>> loss_gaps(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([[0], [1], [1]]), [3], absent="ignore")
        tensor([1.5000], dtype=torch.float64)
    """
    if absent not in _ABSENT:
        raise ConfigError(_BAD_CHOICE.format(name="absent", allowed=list(_ABSENT), value=absent))
    means = group_means(losses, groups, sizes)
    return torch.stack([_gap(m, absent) for m in means]) if means else torch.zeros(0, dtype=torch.float64)


def group_means(losses: Tensor, groups: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """Per attribute, ``(|G_a|,)`` float64 mean loss of every group (NaN where the group is absent)."""
    x = losses.detach().to("cpu", torch.float64)
    out = []
    for a, size in enumerate(sizes):
        idx = groups[:, a].to("cpu")
        total = torch.zeros(size, dtype=torch.float64).index_add_(0, idx, x)
        count = torch.zeros(size, dtype=torch.float64).index_add_(0, idx, torch.ones_like(x))
        out.append(torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan)))
    return out


def _gap(means: Tensor, absent: Absent = "zero") -> Tensor:
    """max − min of the group means: NaN (an absent group) → 0 (reference), or over the present groups (improved)."""
    if absent == "zero":
        gap = means.max() - means.min()  # torch.max propagates NaN, as in the reference code
        return torch.zeros((), dtype=torch.float64) if torch.isnan(gap) else gap
    present = means[~torch.isnan(means)]
    if present.numel() < 2:
        return torch.zeros((), dtype=torch.float64)
    return present.max() - present.min()


def fbp_weights(sigma_rows: Tensor, xi: Tensor, form: str = "normal", clamp: float | None = None) -> Tensor:
    """Per-sample weights from the σ entries of each sample's groups and the standard-normal draws.

    Args:
        sigma_rows: ``(B, A)`` σ[off_a + g_a(i)].
        xi: ``(B, A)`` ξ ~ N(0, 1).
        form: ``"normal"`` → 1 + Σ_a σξ; ``"lognormal"`` → Π_a exp(σξ − σ²/2). Both have E[w] = 1.
        clamp: ``w ← max(w, clamp)`` when not ``None``.

    Example:
        >>> fbp_weights(torch.tensor([[0.5, 1.0]]), torch.tensor([[2.0, -1.0]]))
        tensor([1.])
    """
    if form == "lognormal":
        w = torch.exp((sigma_rows * xi - 0.5 * sigma_rows**2).sum(dim=1))
    else:
        w = 1.0 + (sigma_rows * xi).sum(dim=1)
    if clamp is not None:
        w = w.clamp_min(clamp)
    return w


def build_gp(train_x: Tensor, train_y: Tensor, *, standardize: bool) -> Any:
    """The FBP surrogate: ``SingleTaskGP`` with every component explicit (see the module docstring).

    Args:
        train_x: ``(n, G)`` float64 in [0, 1].
        train_y: ``(n, 1)`` float64 rewards.
        standardize: ``Standardize(m=1)`` outcome transform (improved mode) instead of none (reference).
    """
    try:
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from botorch.models.utils.gpytorch_modules import (
            get_gaussian_likelihood_with_gamma_prior,
            get_matern_kernel_with_gamma_prior,
        )
    except ImportError as exc:  # pragma: no cover - botorch is part of [train]
        raise ImportError(_NO_BOTORCH) from exc

    return SingleTaskGP(
        train_x,
        train_y,
        likelihood=get_gaussian_likelihood_with_gamma_prior(),
        covar_module=get_matern_kernel_with_gamma_prior(ard_num_dims=train_x.shape[-1]),
        outcome_transform=Standardize(m=1) if standardize else None,
        input_transform=None,
    )


def propose_sigma(
    train_x: Tensor,
    train_y: Tensor,
    *,
    standardize: bool,
    beta: float,
    num_restarts: int,
    raw_samples: int,
    seed: int,
) -> tuple[Tensor, float, list[str]]:
    """Fit the GP and maximise UCB over [0, 1]^G (q = 1), deterministically given ``seed``.

    botorch draws its Sobol seeds, initial-condition selection and any GP-fit restarts from torch's global RNG, so the
    global RNG is forked, seeded here and restored afterwards (the caller's stream is untouched).

    Returns:
        (argmax ``(G,)`` float64, its acquisition value, warnings botorch raised while fitting or optimising).
    """
    try:
        from botorch.acquisition import UpperConfidenceBound
        from botorch.fit import fit_gpytorch_mll
        from botorch.optim import optimize_acqf
        from gpytorch.mlls import ExactMarginalLogLikelihood
    except ImportError as exc:  # pragma: no cover - botorch is part of [train]
        raise ImportError(_NO_BOTORCH) from exc

    dim = train_x.shape[-1]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(seed)
        model = build_gp(train_x, train_y, standardize=standardize)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        acq = UpperConfidenceBound(model, beta=beta)
        bounds = torch.stack([torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)])
        cand, value = optimize_acqf(
            acq, bounds=bounds, q=1, num_restarts=num_restarts, raw_samples=raw_samples, options={"seed": seed}
        )
    msgs = [f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}" for w in caught]
    acq_value = float("nan") if value is None else float(value)
    return cand.detach().reshape(dim).clamp(0.0, 1.0), acq_value, msgs


def _floats(t: Tensor) -> list[float]:
    return [float(v) for v in t.reshape(-1).tolist()]


class FairBayesianPerturbation(TrainMethod):
    """FairDiffusion's FBP: group-wise multiplicative loss noise whose scales σ are tuned by Bayesian optimisation.

    Args:
        config: :class:`FBPConfig` (defaults: the published settings).
        name: the preset name recorded in the bundle.

    Example:
        >>> m = FairBayesianPerturbation(FBPConfig(window=2))
        >>> m.config()["window"], m.method_status
        (2, 'reference')
    """

    def __init__(self, config: FBPConfig | None = None, *, name: str = "fairdiffusion") -> None:
        self.cfg = config or FBPConfig()
        self.name = name
        deviations = self.cfg.deviations
        if deviations:
            warnings.warn(_DEVIATION.format(what=", ".join(deviations)), FairsampleWarning, stacklevel=2)
        self.method_status = "project-extension" if self.cfg.mode == "improved" or deviations else "reference"
        # a group absent from the batch zeroes its attribute's gap (reference code); improved: gap of present groups
        self._absent: Absent = "ignore" if self.cfg.mode == "improved" else "zero"
        self.attributes: tuple[str, ...] = ()
        self.values: dict[str, list[str]] = {}
        self.offsets: dict[str, int] = {}
        self.sizes: list[int] = []
        self.seed = 0
        self.rank, self.world, self.accum = 0, 1, 1
        self._index: dict[CellKey, tuple[int, ...]] = {}
        self.sigma = torch.ones(0, dtype=torch.float64)
        self._reset_state()

    # -- state -----------------------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        g = len(self.sigma)
        self.sigma = torch.ones(g, dtype=torch.float64)
        self.X: list[list[float]] = []  # GP inputs (σ per step; improved: mean σ per window)
        self.Y: list[float] = []  # GP outcomes (reward per step; improved: window reward)
        self.trajectory: list[dict[str, Any]] = []
        self.bo_messages: list[dict[str, Any]] = []  # rank 0: botorch warnings per BO update (not re-emitted)
        self.bo_updates = 0
        self.steps_done = 0  # optimizer steps whose after_step completed
        self._micro = 0
        self._pending: list[tuple[Tensor, Tensor]] = []
        # improved mode: per-group EMA (NaN = not seen in this window) and window accumulators
        self.ema = torch.full((g,), math.nan, dtype=torch.float64)
        self.win_gap_sum, self.win_steps = 0.0, 0
        self.win_sigma_sum = torch.zeros(g, dtype=torch.float64)

    @property
    def num_groups(self) -> int:
        """G, the length of σ."""
        return int(sum(self.sizes))

    def setup(self, ctx: SetupContext) -> None:
        """Resolve the attributes, their blocks and offsets, the seed, the rank and the accumulation steps."""
        known = list(ctx.attribute_values)
        attrs = self.cfg.attributes if self.cfg.attributes is not None else tuple(known)
        if not attrs:
            raise ConfigError(_NO_ATTRIBUTES)
        extra = [a for a in attrs if a not in ctx.attribute_values]
        if extra:
            raise ConfigError(_BAD_ATTRIBUTES.format(extra=extra, known=known))
        self.attributes = tuple(attrs)
        self.values = {a: [str(v) for v in ctx.attribute_values[a]] for a in self.attributes}
        self.offsets = group_offsets(self.values, self.attributes)
        self.sizes = [len(self.values[a]) for a in self.attributes]
        cfg = ctx.config
        self.seed = self.cfg.seed if self.cfg.seed is not None else int(getattr(cfg, "seed", 0) or 0)
        self.accum = int(getattr(cfg, "gradient_accumulation_steps", 1) or 1)
        self.rank, self.world = ctx.rank, ctx.world
        self._index = {}
        self.sigma = torch.ones(self.num_groups, dtype=torch.float64)
        self._reset_state()

    def group_index(self, cells: Sequence[CellKey]) -> Tensor:
        """``(B, A)`` long: every sample's group index within each attribute's block."""
        rows = []
        for cell in cells:
            key = self._index.get(cell)
            if key is None:
                found: list[int] = []
                for a in self.attributes:
                    v = cell.value(a)
                    if v not in self.values[a]:
                        raise ConfigError(
                            _UNKNOWN_VALUE.format(cell=cell, value=v, attribute=a, values=self.values[a])
                        )
                    found.append(self.values[a].index(v))
                key = self._index[cell] = tuple(found)
            rows.append(key)
        return torch.tensor(rows, dtype=torch.long).reshape(len(cells), len(self.attributes))

    def sigma_rows(self, groups: Tensor) -> Tensor:
        """``(B, A)`` σ[off_a + g_a(i)] (float64)."""
        offs = torch.tensor([self.offsets[a] for a in self.attributes], dtype=torch.long)
        return self.sigma[groups + offs]

    # -- hooks -----------------------------------------------------------------------------------------------------
    def loss_weights(self, ctx: StepContext) -> Tensor:
        """w_i for this rank's rows; ξ is drawn from ``ctx.generator`` after the loop's own draws."""
        groups = self.group_index(ctx.cells)
        xi = torch.randn((len(ctx.cells), len(self.attributes)), generator=ctx.generator, dtype=torch.float32)
        rows = self.sigma_rows(groups).float()
        return fbp_weights(rows, xi, self.cfg.weights, self.cfg.weight_clamp).to(ctx.losses.device)

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """Reward of the gathered batch; at the optimizer step's last micro-batch: buffers, BO, exploration."""
        losses = ctx.gather(ctx.losses.detach().float()).to("cpu", torch.float64)
        cells = ctx.global_cells if len(ctx.global_cells) else ctx.cells
        self._pending.append((losses, self.group_index(cells)))
        self._micro += 1
        if self._micro < self.accum:
            return {}
        losses = torch.cat([p[0] for p in self._pending])
        groups = torch.cat([p[1] for p in self._pending])
        self._pending, self._micro = [], 0
        return self._finish_step(ctx, ctx.step, losses, groups)

    def _finish_step(self, ctx: StepContext, step: int, losses: Tensor, groups: Tensor) -> dict[str, float]:
        means = group_means(losses, groups, self.sizes)
        gaps = torch.stack([_gap(m, self._absent) for m in means])
        reward = -float(gaps.sum())
        used = self.sigma.clone()
        rec: dict[str, Any] = {
            "step": step,
            "sigma": _floats(used),
            "reward": reward,
            "gaps": _floats(gaps),
            "counts": [int(c) for a, n in enumerate(self.sizes) for c in torch.bincount(groups[:, a], minlength=n)],
            "loss": float(losses.mean()),
            "acquisition": None,
        }
        out: dict[str, Any] = {"fbp_reward": reward}
        mode = self.cfg.mode
        if mode == "reference":
            self.X.append(_floats(used))
            self.Y.append(reward)
        elif mode == "improved":
            ema_gap = self._update_ema(means)
            self.win_gap_sum += ema_gap
            self.win_steps += 1
            self.win_sigma_sum += used
            rec["ema_gap"] = ema_gap
        if mode != "random":
            bo_time = step > 0 and step % self.cfg.window == 0
            if bo_time and mode == "improved":
                window_reward = -self.win_gap_sum / self.win_steps
                self.X.append(_floats(self.win_sigma_sum / self.win_steps))
                self.Y.append(window_reward)
                self.X, self.Y = self.X[-self.cfg.history :], self.Y[-self.cfg.history :]
                rec["window_reward"] = window_reward
                self.win_gap_sum, self.win_steps = 0.0, 0
                self.win_sigma_sum = torch.zeros(self.num_groups, dtype=torch.float64)
                self.ema = torch.full((self.num_groups,), math.nan, dtype=torch.float64)
            fit = bo_time and (mode == "reference" or len(self.Y) >= 2)
            # rank 0 decides; packed = [σ_next (G), acquisition value, BO argmax (G), number of botorch warnings]
            g = self.num_groups
            packed = torch.full((2 * g + 2,), math.nan, dtype=torch.float64)
            if self.rank == 0:
                sigma = self.sigma
                if fit:
                    sigma, acq, msgs = propose_sigma(
                        torch.tensor(self.X, dtype=torch.float64),
                        torch.tensor(self.Y, dtype=torch.float64).unsqueeze(-1),
                        standardize=mode == "improved",
                        beta=self.cfg.ucb_beta,
                        num_restarts=self.cfg.num_restarts,
                        raw_samples=self.cfg.raw_samples,
                        seed=mix_seed(self.seed, step, _BO),
                    )
                    packed[g] = acq
                    packed[g + 1 : 2 * g + 1] = sigma
                    packed[-1] = len(msgs)
                    if msgs:
                        self.bo_messages.append({"step": step, "warnings": msgs})
                u = torch.rand(g, generator=self._generator(step, _EXPLORE), dtype=torch.float64)
                rho = self.cfg.exploitation_rate
                packed[:g] = rho * sigma + (1.0 - rho) * u
            packed = ctx.broadcast(packed.to(ctx.losses.device)).to("cpu", torch.float64)
            self.sigma = packed[:g].clamp(0.0, 1.0).clone()
            if fit:
                self.bo_updates += 1
                rec["acquisition"] = float(packed[g])
                rec["sigma_bo"] = _floats(packed[g + 1 : 2 * g + 1])
                rec["bo_warnings"] = int(packed[-1])
                out["fbp_acquisition"] = rec["acquisition"]
                if mode == "reference":
                    self.X, self.Y = [], []
        self.trajectory.append(rec)
        self.steps_done = step + 1
        out["fbp_gap"] = float(gaps.sum())
        return out

    def _update_ema(self, means: list[Tensor]) -> float:
        """Improved mode: fold this step's per-group means into the EMA; returns Σ_a gap of the EMA."""
        d = self.cfg.ema_decay
        flat = torch.cat(means)
        seen = ~torch.isnan(flat)
        fresh = seen & torch.isnan(self.ema)
        both = seen & ~torch.isnan(self.ema)
        self.ema = torch.where(fresh, flat, self.ema)
        self.ema = torch.where(both, d * self.ema + (1.0 - d) * flat, self.ema)
        total = 0.0
        for a in self.attributes:
            off = self.offsets[a]
            total += float(_gap(self.ema[off : off + len(self.values[a])], "ignore"))
        return total

    def _generator(self, step: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(self.seed, step, stream))

    # -- persistence -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """σ, the GP buffers, the improved-mode EMA/window sums, counters and the trajectory (JSON-safe).

        The random draws are seed-derived per step, so no generator state is needed: the seed is stored to check it.
        """
        return {
            "version": 1,
            "mode": self.cfg.mode,
            "seed": self.seed,
            "groups": {a: list(self.values[a]) for a in self.attributes},
            "sigma": _floats(self.sigma),
            "X": [list(x) for x in self.X],
            "Y": list(self.Y),
            "bo_updates": self.bo_updates,
            "steps_done": self.steps_done,
            "ema": [None if math.isnan(v) else v for v in _floats(self.ema)],
            "window_gap_sum": self.win_gap_sum,
            "window_steps": self.win_steps,
            "window_sigma_sum": _floats(self.win_sigma_sum),
            "trajectory": [dict(r) for r in self.trajectory],
            "bo_messages": [dict(m) for m in self.bo_messages],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (after :meth:`setup`); an empty dict keeps the fresh state."""
        if not state:
            return
        groups = {a: list(self.values[a]) for a in self.attributes}
        for key, now in (("mode", self.cfg.mode), ("seed", self.seed), ("groups", groups)):
            if state.get(key) != now:
                raise ConfigError(_BAD_STATE.format(why=f"{key} was {state.get(key)!r}, now {now!r}"))
        self.sigma = torch.tensor(state["sigma"], dtype=torch.float64)
        self.X = [list(map(float, x)) for x in state["X"]]
        self.Y = [float(y) for y in state["Y"]]
        self.bo_updates = int(state["bo_updates"])
        self.steps_done = int(state["steps_done"])
        self.ema = torch.tensor([math.nan if v is None else v for v in state["ema"]], dtype=torch.float64)
        self.win_gap_sum = float(state["window_gap_sum"])
        self.win_steps = int(state["window_steps"])
        self.win_sigma_sum = torch.tensor(state["window_sigma_sum"], dtype=torch.float64)
        self.trajectory = [dict(r) for r in state["trajectory"]]
        self.bo_messages = [dict(m) for m in state.get("bo_messages", [])]
        self._pending, self._micro = [], 0

    def artifacts(self) -> dict[str, Any]:
        """``fbp_sigma.json``: the σ layout and, per optimizer step, the σ used, reward, per-attribute gaps, samples
        per group in the gathered batch, mean unweighted loss, and at BO steps the acquisition value and argmax."""
        return {
            "fbp_sigma.json": {
                "mode": self.cfg.mode,
                "groups": [f"{a}={v}" for a in self.attributes for v in self.values[a]],
                "offsets": dict(self.offsets),
                "window": self.cfg.window,
                "bo_updates": self.bo_updates,
                "final_sigma": _floats(self.sigma),
                "trajectory": self.trajectory,
                "bo_warnings": self.bo_messages,
            }
        }

    def config(self) -> dict[str, Any]:
        """Every option (resolved seed and attributes), the σ layout and the botorch/gpytorch versions."""
        out: dict[str, Any] = {"name": self.name, "method_status": self.method_status}
        out.update(dataclasses.asdict(self.cfg))
        out["attributes"] = list(self.attributes) if self.attributes else self.cfg.attributes
        out["seed"] = self.seed if self.attributes else self.cfg.seed
        out["offsets"] = dict(self.offsets)
        out["gp"] = {
            "model": "SingleTaskGP",
            "covar_module": "Scale(Matern(nu=2.5, ARD), lengthscale Gamma(3, 6), outputscale Gamma(2, 0.15))",
            "likelihood": "Gaussian, noise Gamma(1.1, 0.05), noise >= 1e-4",
            "input_transform": None,
            "outcome_transform": "Standardize(m=1)" if self.cfg.mode == "improved" else None,
            "acquisition": f"UpperConfidenceBound(beta={self.cfg.ucb_beta})",
        }
        out["versions"] = _versions()
        return out


def _versions() -> dict[str, str | None]:
    from fairsample.core.provenance import package_versions

    return package_versions(["botorch", "gpytorch"])


def fbp_preset(mode: str, name: str) -> Callable[..., FairBayesianPerturbation]:
    """A method factory for ``METHODS``: keyword options are the :class:`FBPConfig` fields except ``mode``.

    The factory's signature lists the options, so :func:`~fairsample.train.presets.get_method` rejects unknown ones
    with a one-line :class:`~fairsample.core.errors.ConfigError`; direct calls check them too.

    Example:
        >>> fbp_preset("reference", "fairdiffusion")(window=5).cfg.window
        5
    """
    fields = [f for f in dataclasses.fields(FBPConfig) if f.name != "mode"]
    names = [f.name for f in fields]

    def factory(**options: Any) -> FairBayesianPerturbation:
        extra = sorted(set(options) - set(names))
        if extra:
            raise ConfigError(_BAD_OPTION.format(extra=extra, name=name, known=sorted(names)))
        return FairBayesianPerturbation(FBPConfig(mode=mode, **options), name=name)

    factory.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in fields]
    )
    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = f"FBP preset {name!r} (mode={mode!r}); options: {', '.join(names)}."
    return factory

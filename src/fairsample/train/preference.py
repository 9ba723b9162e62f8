"""Preference tuning on (winner, loser) image pairs: ``diffusion_dpo`` (default) and ``fairgen_ref_free``.

``diffusion_dpo`` (Wallace et al., Diffusion-DPO; SalesforceAIResearch/DiffusionDPO ``train.py``; METHODS.md §3.5):
for each pair (c, x_w, x_l) draw **one** t and **one** ε for both images; with per-pair mean-squared errors
L = mean((target − pred)²) (target ε or v, per the scheduler's ``prediction_type``) under the trained model θ and a
frozen reference (the model when tuning starts),

    Δ_θ = L^θ_w − L^θ_l,   Δ_ref = L^ref_w − L^ref_l,   loss = mean_pairs −log σ(−½·β·(Δ_θ − Δ_ref)),  β = 5000.

Equal models give exactly log 2; the loss drops below log 2 once the model prefers the winner more than the reference
does. Implicit accuracy = P(−½β(Δ_θ − Δ_ref) > 0) (ties count ½, as in the reference code).

``fairgen_ref_free`` (FairGen ``train_text_to_image_FairGen.py --enable_dpo``; METHODS.md §3.6): no reference,
t shared within a pair, ε independent (``share_noise=True`` shares it),

    L_pref = mean_pairs −log σ(β·(L_l − L_w)) + mean_pairs L_w,  β = 0.5.

Either term is multiplied by ``weight`` (γ_dpo) and added to the training loss through
:meth:`~fairsample.train.methods.TrainMethod.extra_loss`; ``sft_weight`` adds ``sft_weight · mean L^θ_w``
(Diffusion-DPO's ``--sft``). Pairs are read from ``preferences.csv`` (:mod:`fairsample.data.preferences`) and
validated in :meth:`PreferenceTuning.setup`, before the first step; their images are loaded once and cached. Each
micro-step draws ``pairs_per_step`` pairs (with replacement) from the step's generator, so runs and ``--resume`` are
deterministic; pairs are always conditioned on their cell (no CFG dropout).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fairsample.data.preferences import PreferencePair, read_preferences
from fairsample.data.schema import CellKey
from fairsample.errors import ConfigError, DataError, FairsampleWarning
from fairsample.train.methods import SetupContext, StepContext, TrainMethod

PREF_LOSSES: tuple[str, str] = ("diffusion_dpo", "fairgen_ref_free")
#: default β per loss (paper parametrisation −½β for diffusion_dpo; FairGen's β_dpo for fairgen_ref_free)
DEFAULT_BETA: dict[str, float] = {"diffusion_dpo": 5000.0, "fairgen_ref_free": 0.5}
#: ``source`` recorded when the preference file has no companion JSON saying where the pairs came from
UNSPECIFIED_SOURCE = "unspecified (user-supplied file)"

_NO_PREFERENCES = (
    "preference tuning (methods 'dpo', 'fairgen') needs `preferences`, the path of a preferences.csv "
    "(file_w,file_l + cell columns); pass --method-option preferences=PATH (build one with `fairsample prefs build`)."
)
_BAD_PREF_LOSS = "`pref_loss` must be one of {allowed}, got {value!r}."
_BAD_NUMBER = "`{name}` must be a number {rule}, got {value!r}."
_BAD_PAIRS = "`pairs_per_step` must be an integer >= 1 (or null for the batch size), got {value!r}."
_DPO_SHARES_NOISE = (
    "`share_noise` cannot be false with pref_loss='diffusion_dpo' (Diffusion-DPO uses one t and one ε per pair); "
    "use pref_loss='fairgen_ref_free' for independent noise."
)
_BAD_SHARE = "`share_noise` must be true, false or null, got {value!r}."
_NOT_FOUND = (
    "preference file {path!r} not found (looked in the working directory and in the dataset root {root}); "
    "pass an existing preferences.csv."
)
_REFERENCE_IS_INIT = (
    "pref_loss='diffusion_dpo' without --init-from: the frozen reference is the untrained initial model; fine-tune a "
    "trained bundle (--init-from) or use pref_loss='fairgen_ref_free'"
)
_BAD_PREDICTION = (
    "preference tuning supports prediction_type 'epsilon' or 'v_prediction'; the model's scheduler uses {value!r}."
)


def diffusion_dpo_loss(
    model_w: Tensor, model_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """Diffusion-DPO loss over pairs (Wallace et al., Eq. 14, −½β parametrisation).

    Args:
        model_w, model_l: ``(P,)`` per-pair MSE of the trained model on the winner / loser.
        ref_w, ref_l: ``(P,)`` the same for the frozen reference.
        beta: β > 0 (5000 in the paper's parametrisation).

    Returns:
        ``(loss, implicit_accuracy)``, two scalars; the loss is ``mean −log σ(−½β(Δ_θ − Δ_ref))``.

    Example:
        >>> l = torch.tensor([0.2, 0.3])
        >>> loss, acc = diffusion_dpo_loss(l, l, l, l, beta=5000.0)
        >>> round(float(loss), 6), float(acc)
        (0.693147, 0.5)
    """
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    loss = -F.logsigmoid(inside).mean()
    acc = ((inside > 0).float() + 0.5 * (inside == 0).float()).mean()
    return loss, acc.detach()


def fairgen_ref_free_loss(loss_w: Tensor, loss_l: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """FairGen's reference-free preference loss: ``mean −log σ(β(L_l − L_w)) + mean L_w``.

    Args:
        loss_w, loss_l: ``(P,)`` per-pair MSE on the winner / loser.
        beta: β > 0 (FairGen's β_dpo = 0.5).

    Returns:
        ``(loss, accuracy)``; accuracy = P(L_w < L_l), ties ½.

    Example:
        >>> loss, acc = fairgen_ref_free_loss(torch.tensor([0.0]), torch.tensor([0.0]), beta=0.5)
        >>> round(float(loss), 6), float(acc)
        (0.693147, 0.5)
    """
    margin = beta * (loss_l - loss_w)
    loss = -F.logsigmoid(margin).mean() + loss_w.mean()
    acc = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
    return loss, acc.detach()


def _number(name: str, value: Any, *, positive: bool) -> float:
    """A float option checked for finiteness and sign (ConfigError naming the option otherwise)."""
    rule = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(_BAD_NUMBER.format(name=name, rule=rule, value=value))
    if value < 0 or (positive and value == 0):
        raise ConfigError(_BAD_NUMBER.format(name=name, rule=rule, value=value))
    return float(value)


class PreferenceTuning(TrainMethod):
    """Preference tuning on ``preferences.csv`` pairs, added to the training loss (module docstring for the math).

    Args:
        preferences: path of ``preferences.csv`` (or ``.jsonl``); a relative path is looked up in the working
            directory, then in the dataset root. Required.
        pref_loss: ``"diffusion_dpo"`` (frozen reference, shared t and ε) or ``"fairgen_ref_free"``.
        beta: β; default 5000 for ``diffusion_dpo`` (−½β parametrisation), 0.5 for ``fairgen_ref_free``.
        weight: γ_dpo, the factor of the preference term in the training loss.
        pairs_per_step: pairs per micro-step (default: the batch size).
        sft_weight: weight of an extra plain MSE on winners (Diffusion-DPO ``--sft``); 0 disables.
        share_noise: ``fairgen_ref_free`` only: one ε for both images of a pair (default false, as FairGen);
            ``diffusion_dpo`` always shares t and ε.

    Raises:
        ConfigError: a missing ``preferences`` or an invalid option.

    Example:
        >>> m = PreferenceTuning(preferences="prefs/preferences.csv", pref_loss="fairgen_ref_free")
        >>> m.beta, m.share_noise, m.config()["pref_loss"]
        (0.5, False, 'fairgen_ref_free')
    """

    name = "dpo"
    method_status = "reference"

    def __init__(
        self,
        *,
        preferences: str | Path | None = None,
        pref_loss: Literal["diffusion_dpo", "fairgen_ref_free"] = "diffusion_dpo",
        beta: float | None = None,
        weight: float = 1.0,
        pairs_per_step: int | None = None,
        sft_weight: float = 0.0,
        share_noise: bool | None = None,
    ) -> None:
        if preferences is None or str(preferences).strip() == "":
            raise ConfigError(_NO_PREFERENCES)
        if pref_loss not in PREF_LOSSES:
            raise ConfigError(_BAD_PREF_LOSS.format(allowed=list(PREF_LOSSES), value=pref_loss))
        if share_noise is not None and not isinstance(share_noise, bool):
            raise ConfigError(_BAD_SHARE.format(value=share_noise))
        if pref_loss == "diffusion_dpo" and share_noise is False:
            raise ConfigError(_DPO_SHARES_NOISE)
        if pairs_per_step is not None and (
            isinstance(pairs_per_step, bool) or not isinstance(pairs_per_step, int) or pairs_per_step < 1
        ):
            raise ConfigError(_BAD_PAIRS.format(value=pairs_per_step))
        self.preferences = str(preferences)
        self.pref_loss = pref_loss
        self.beta = _number("beta", DEFAULT_BETA[pref_loss] if beta is None else beta, positive=True)
        self.weight = _number("weight", weight, positive=False)
        self.sft_weight = _number("sft_weight", sft_weight, positive=False)
        self.share_noise = pref_loss == "diffusion_dpo" or bool(share_noise)
        self.pairs_per_step = pairs_per_step
        self.pairs: list[PreferencePair] = []
        self._path: Path | None = None
        self._sha256: str | None = None
        self._source: str = UNSPECIFIED_SOURCE
        self._images: Tensor | None = None  # (U, C, h, w) unique pair images, model input space, CPU float32
        self._w = torch.zeros(0, dtype=torch.long)  # (N,) winner row of every pair in _images
        self._l = torch.zeros(0, dtype=torch.long)
        self._reference: Callable[[Tensor, Tensor, Sequence[CellKey | None]], Tensor] | None = None
        self._scheduler: Any = None
        self._num_t = 0
        self._last: dict[str, float] = {}

    # -- setup ------------------------------------------------------------------------------------------------------
    def _resolve(self, dataset_root: Path | None) -> Path:
        p = Path(self.preferences).expanduser()
        if p.is_absolute() or p.exists() or dataset_root is None:
            found = p
        else:
            found = Path(dataset_root) / p
        if not found.is_file():
            raise DataError(_NOT_FOUND.format(path=self.preferences, root=dataset_root))
        return found.absolute()

    def setup(self, ctx: SetupContext) -> None:
        """Read and validate the pairs (one-line DataError before any step), cache their images, freeze a reference."""
        from fairsample.models.conditioners import TokenTableConditioner

        bundle = ctx.bundle
        # 1. the pair file, validated against the model's cells
        root = getattr(ctx.dataset, "root", None)
        self._path = self._resolve(root)
        prompts = None
        if not isinstance(bundle.conditioner, TokenTableConditioner):
            cells = sorted(set(bundle.cells()) | set(ctx.cell_set))
            prompts = {bundle.conditioner.prompt(c): c for c in cells}
        self.pairs = read_preferences(
            self._path,
            groups=list(ctx.attribute_values),
            label_col=ctx.label_name,
            attribute_values=bundle.attribute_values,
            label_values=bundle.label_values,
            prompts=prompts,
        )
        self._sha256 = hashlib.sha256(self._path.read_bytes()).hexdigest()
        self._source = _companion_source(self._path)
        # 2. the images, loaded once into the model's input space
        files = list(dict.fromkeys(p for pair in self.pairs for p in (pair.path_w, pair.path_l)))
        row = {f: k for k, f in enumerate(files)}
        chunks = [ctx.load_images(files[i : i + 64]).detach().float().cpu() for i in range(0, len(files), 64)]
        self._images = torch.cat(chunks)
        self._w = torch.tensor([row[p.path_w] for p in self.pairs], dtype=torch.long)
        self._l = torch.tensor([row[p.path_l] for p in self.pairs], dtype=torch.long)
        # 3. scheduler, pairs per step and (diffusion_dpo) the frozen reference = the model now
        self._scheduler = bundle.scheduler
        prediction = str(self._scheduler.config.prediction_type)
        if prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(_BAD_PREDICTION.format(value=prediction))
        self._num_t = int(self._scheduler.config.num_train_timesteps)
        if self.pairs_per_step is None:
            self.pairs_per_step = int(getattr(ctx.config, "batch_size", 8))
        if self.pref_loss == "diffusion_dpo":
            if not getattr(ctx.config, "init_from", None):
                warnings.warn(_REFERENCE_IS_INIT, FairsampleWarning, stacklevel=2)
            self._reference = ctx.make_reference()

    # -- the loss ---------------------------------------------------------------------------------------------------
    def _target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self._scheduler.config.prediction_type == "v_prediction":
            return self._scheduler.get_velocity(x0, noise, t)
        return noise

    def extra_loss(self, ctx: StepContext) -> Tensor | None:
        """``weight · (preference loss + sft_weight · mean L_w)`` on ``pairs_per_step`` pairs drawn with
        ``ctx.generator``."""
        if self._images is None or (self.weight == 0.0):
            return None
        g, dev = ctx.generator, ctx.latents.device
        n = int(self.pairs_per_step or 1)
        # 1. draw pairs, one t per pair, ε per image (shared within the pair unless fairgen_ref_free without sharing)
        pick = torch.randint(len(self.pairs), (n,), generator=g)
        x_w = self._images[self._w[pick]].to(dev)
        x_l = self._images[self._l[pick]].to(dev)
        cells = [self.pairs[i].cell for i in pick.tolist()]
        t = torch.randint(0, self._num_t, (n,), generator=g)
        eps_w = torch.randn(x_w.shape, generator=g)
        eps_l = eps_w if self.share_noise else torch.randn(x_l.shape, generator=g)
        t, eps_w, eps_l = t.to(dev), eps_w.to(dev), eps_l.to(dev)
        # 2. one batched forward over [winners; losers], conditioned on the pairs' cells
        noisy = torch.cat([self._scheduler.add_noise(x_w, eps_w, t), self._scheduler.add_noise(x_l, eps_l, t)])
        tt = torch.cat([t, t])
        target = torch.cat([self._target(x_w, eps_w, t), self._target(x_l, eps_l, t)])
        both = cells + cells
        pred = ctx.denoise(noisy, tt.float(), both).float()
        per = (pred - target).pow(2).mean(dim=(1, 2, 3))
        loss_w, loss_l = per[:n], per[n:]
        # 3. the preference loss
        stats: dict[str, float] = {}
        if self.pref_loss == "diffusion_dpo":
            assert self._reference is not None
            with torch.no_grad():
                ref = self._reference(noisy, tt.float(), both).float()
                ref_per = (ref - target).pow(2).mean(dim=(1, 2, 3))
            ref_w, ref_l = ref_per[:n], ref_per[n:]
            loss, acc = diffusion_dpo_loss(loss_w, loss_l, ref_w, ref_l, self.beta)
            stats["pref_delta_theta"] = float((loss_w - loss_l).detach().mean())
            stats["pref_delta_ref"] = float((ref_w - ref_l).mean())
        else:
            loss, acc = fairgen_ref_free_loss(loss_w, loss_l, self.beta)
        stats.update(pref_loss=float(loss.detach()), pref_implicit_acc=float(acc),
                     pref_loss_w=float(loss_w.detach().mean()), pref_loss_l=float(loss_l.detach().mean()))  # fmt: skip
        self._last = stats
        total = loss + self.sft_weight * loss_w.mean() if self.sft_weight else loss
        return self.weight * total

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """The last micro-step's preference loss (unweighted), implicit accuracy and mean L_w / L_l."""
        return dict(self._last)

    def config(self) -> dict[str, Any]:
        """Resolved settings plus the pair file's path, sha256, pair count and source (e.g. a classifier proxy)."""
        return {
            "name": self.name,
            "method_status": self.method_status,
            "pref_loss": self.pref_loss,
            "beta": self.beta,
            "weight": self.weight,
            "pairs_per_step": self.pairs_per_step,
            "sft_weight": self.sft_weight,
            "share_noise": self.share_noise,
            "preferences": str(self._path or self.preferences),
            "preferences_sha256": self._sha256,
            "n_pairs": len(self.pairs) if self._images is not None else None,
            "preference_source": self._source,
        }


def _companion_source(path: Path) -> str:
    """The ``source`` field of ``<file>.json`` next to the pair file (written by ``fairsample prefs build``)."""
    doc_path = path.with_suffix(".json")
    if not doc_path.is_file():
        return UNSPECIFIED_SOURCE
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return UNSPECIFIED_SOURCE
    source = doc.get("source") if isinstance(doc, dict) else None
    return str(source) if source else UNSPECIFIED_SOURCE

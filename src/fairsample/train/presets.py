"""Method presets selectable with ``fairsample train --method NAME`` (METHODS.md §3; issue #5).

This module is the method registry: :data:`METHODS` maps each name to a factory whose keyword options are the
``[train.method_options]`` table of a TOML config (or ``--method-option key=value`` flags), and :func:`get_method`
instantiates one. The method modules below it (resampling, cbdm, fbp, preference, compose) never import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fairsample.core.errors import ConfigError
from fairsample.train.methods import TrainMethod

_BAD_METHOD = "`method` must be one of {names}, got {name!r}."
_BAD_OPTIONS = "`method_options` {extra} are not options of method {name!r}; its options are {known}."

#: method name -> factory(**options)
METHODS: dict[str, Callable[..., TrainMethod]] = {"vanilla": TrainMethod}

# -- resampling and class diversity: CBRS, SQRS, CBDM, FairSkin-C/-S (METHODS.md §3.2–3.4) ---------------------------
from fairsample.train.cbdm import ClassDiversity  # noqa: E402
from fairsample.train.compose import Composite  # noqa: E402
from fairsample.train.resampling import CellResampling  # noqa: E402


def cbrs(
    *,
    apply: str = "sampler",
    alpha: float = 0.0,
    refresh_every: int = 100,
    ema: float = 0.9,
    proxy: str = "contrast",
) -> TrainMethod:
    """CBRS: cell-balanced sampling weights 1/N_c (FairGen ``train_text_to_imagecbrs.py``); ``alpha`` > 0 adds the
    gradient-aware refresh (project reconstruction) driven by ``proxy`` (default: loss per unit image contrast)."""
    return CellResampling(
        power=1.0,
        apply=apply,
        alpha=alpha,
        refresh_every=refresh_every,
        ema=ema,  # type: ignore[arg-type]
        proxy=proxy,
        name="cbrs",
    )  # type: ignore[arg-type]


def sqrs(
    *,
    apply: str = "sampler",
    alpha: float = 0.0,
    refresh_every: int = 100,
    ema: float = 0.9,
    proxy: str = "contrast",
) -> TrainMethod:
    """SQRS: square-root sampling weights 1/√N_c (FairGen ``train_text_to_imagesqrs.py``); ``alpha`` as in
    :func:`cbrs`."""
    return CellResampling(
        power=0.5,
        apply=apply,
        alpha=alpha,
        refresh_every=refresh_every,
        ema=ema,  # type: ignore[arg-type]
        proxy=proxy,
        name="sqrs",
    )  # type: ignore[arg-type]


def cbdm(*, tau: float = 1.0, gamma: float = 0.25, y_prime: str = "uniform", t_max: int | None = None) -> TrainMethod:
    """The "CBDM baseline" of FairGen: uniform shuffling + the class-diversity term on cells (``t_max``: the [project]
    window λ_t = 0 for t ≥ t_max)."""
    return ClassDiversity(tau=tau, gamma=gamma, y_prime=y_prime, t_max=t_max, name="cbdm")  # type: ignore[arg-type]


def fairskin_c(
    *,
    apply: str = "sampler",
    alpha: float = 0.0,
    refresh_every: int = 100,
    ema: float = 0.9,
    proxy: str = "contrast",
    tau: float = 1.0,
    gamma: float = 0.25,
    y_prime: str = "uniform",
) -> TrainMethod:
    """FairSkin-C (= FairGen's CBCB): CBRS sampler + class-diversity term."""
    return Composite(
        [
            cbrs(apply=apply, alpha=alpha, refresh_every=refresh_every, ema=ema, proxy=proxy),
            cbdm(tau=tau, gamma=gamma, y_prime=y_prime),
        ],
        name="fairskin-c",
    )


def fairskin_s(
    *,
    apply: str = "sampler",
    alpha: float = 0.0,
    refresh_every: int = 100,
    ema: float = 0.9,
    proxy: str = "contrast",
    tau: float = 1.0,
    gamma: float = 0.25,
    y_prime: str = "uniform",
) -> TrainMethod:
    """FairSkin-S: SQRS sampler + class-diversity term (FairGen without its preference loss)."""
    return Composite(
        [
            sqrs(apply=apply, alpha=alpha, refresh_every=refresh_every, ema=ema, proxy=proxy),
            cbdm(tau=tau, gamma=gamma, y_prime=y_prime),
        ],
        name="fairskin-s",
    )


METHODS.update({"cbrs": cbrs, "sqrs": sqrs, "cbdm": cbdm, "fairskin-c": fairskin_c, "fairskin-s": fairskin_s})

# -- the class-diversity term that keeps a global attribute (project extension; issue #12 1a, docs/decisions.md) -----
CBDM_KEEP: dict[str, Any] = {"t_max": 500, "y_prime": "same_label_other_attribute"}
"""``cbdm-keep``'s defaults: y′ = the same label with another attribute value, λ_t = 0 for t ≥ 500. Of the variants
in ``benchmarks/cbdm_variants.py`` its samples kept label and tone recoverability closest to vanilla's under the
conditioning guard (the reference term at τ = 1 erased the demo's tone); docs/decisions.md has the table."""


def cbdm_keep(
    *,
    tau: float = 1.0,
    gamma: float = 0.25,
    y_prime: str = CBDM_KEEP["y_prime"],
    t_max: int | None = CBDM_KEEP["t_max"],
) -> TrainMethod:
    """[project-extension] CBDM's class-diversity term restricted so that it cannot average a global attribute away
    (:data:`CBDM_KEEP`); the reference term is ``cbdm``."""
    return ClassDiversity(tau=tau, gamma=gamma, y_prime=y_prime, t_max=t_max, name="cbdm-keep")  # type: ignore[arg-type]


def fairskin_s_keep(
    *,
    apply: str = "sampler",
    alpha: float = 0.0,
    refresh_every: int = 100,
    ema: float = 0.9,
    proxy: str = "contrast",
    tau: float = 1.0,
    gamma: float = 0.25,
    y_prime: str = CBDM_KEEP["y_prime"],
    t_max: int | None = CBDM_KEEP["t_max"],
) -> TrainMethod:
    """[project-extension] FairSkin-S with the attribute-keeping term: SQRS sampler + ``cbdm-keep``."""
    return Composite(
        [
            sqrs(apply=apply, alpha=alpha, refresh_every=refresh_every, ema=ema, proxy=proxy),
            cbdm_keep(tau=tau, gamma=gamma, y_prime=y_prime, t_max=t_max),
        ],
        name="fairskin-s-keep",
    )


METHODS.update({"cbdm-keep": cbdm_keep, "fairskin-s-keep": fairskin_s_keep})

# -- FairDiffusion: Fair Bayesian Perturbation (METHODS.md §3.1) ------------------------------------------------------
from fairsample.train.fbp import fbp_preset  # noqa: E402

METHODS.update(
    {
        "fairdiffusion": fbp_preset("reference", "fairdiffusion"),  # the published code (rank-0 σ broadcast)
        "fairdiffusion-improved": fbp_preset("improved", "fairdiffusion-improved"),  # window reward, EMA, Standardize
        "fbp-random": fbp_preset("random", "fbp-random"),  # ablation: σ ≡ 1, no BO (train_text_to_image_random.py)
    }
)

# -- preference tuning: DPO alone, and FairGen = SQRS + class diversity + preferences (METHODS.md §3.4-3.6) -----------
from fairsample.train.preference import PreferenceTuning  # noqa: E402


def dpo(
    *,
    preferences: str | None = None,
    pref_loss: str = "diffusion_dpo",
    beta: float | None = None,
    weight: float = 1.0,
    pairs_per_step: int | None = None,
    sft_weight: float = 0.0,
    share_noise: bool | None = None,
    prefs_build: dict[str, Any] | None = None,
    pref_scale: float | str = 1.0,
    pref_scale_target: float = 1.0,
) -> TrainMethod:
    """Preference tuning alone (default Diffusion-DPO with a frozen reference, ``reference``); fine-tune a bundle
    with --init-from. Without ``preferences``, proxy pairs are built from the --init-from model (``prefs_build``)."""
    return PreferenceTuning(
        preferences=preferences,
        pref_loss=pref_loss,
        beta=beta,
        weight=weight,  # type: ignore[arg-type]
        pairs_per_step=pairs_per_step,
        sft_weight=sft_weight,
        share_noise=share_noise,
        prefs_build=prefs_build,
        preset="dpo",
        pref_scale=pref_scale,  # type: ignore[arg-type]
        pref_scale_target=pref_scale_target,
    )


def fairgen(
    *,
    preferences: str | None = None,
    pref_loss: str = "fairgen_ref_free",
    beta: float | None = None,
    weight: float = 1.0,
    pairs_per_step: int | None = None,
    sft_weight: float = 0.0,
    share_noise: bool | None = None,
    prefs_build: dict[str, Any] | None = None,
    pref_scale: float | str = 1.0,
    pref_scale_target: float = 1.0,
    apply: str = "sampler",
    alpha: float = 0.0,
    refresh_every: int = 100,
    ema: float = 0.9,
    proxy: str = "contrast",
    tau: float = 1.0,
    gamma: float = 0.25,
    y_prime: str = "uniform",
) -> TrainMethod:
    """FairGen as its code runs (``train_text_to_image_FairGen.py``): SQRS sampler + class-diversity term + the
    reference-free preference loss (β = 0.5, γ_dpo = 1, independent noise; ``reference``). ``pref_loss=
    'diffusion_dpo'`` swaps in Diffusion-DPO with a frozen reference (``project-extension``: FairGen's code has no
    reference model). Without ``preferences``, proxy pairs are built from the --init-from model on the training rows
    (``prefs_build`` options; see :class:`~fairsample.train.preference.PreferenceTuning`)."""
    return Composite(
        [
            sqrs(apply=apply, alpha=alpha, refresh_every=refresh_every, ema=ema, proxy=proxy),
            cbdm(tau=tau, gamma=gamma, y_prime=y_prime),
            PreferenceTuning(
                preferences=preferences,
                pref_loss=pref_loss,
                beta=beta,  # type: ignore[arg-type]
                weight=weight,
                pairs_per_step=pairs_per_step,
                sft_weight=sft_weight,
                share_noise=share_noise,
                prefs_build=prefs_build,
                preset="fairgen",
                pref_scale=pref_scale,
                pref_scale_target=pref_scale_target,
            ),
        ],  # type: ignore[arg-type]
        name="fairgen",
    )


METHODS.update({"dpo": dpo, "fairgen": fairgen})


def get_method(name: str, options: Mapping[str, Any] | None = None) -> TrainMethod:
    """Instantiate a registered method with its options.

    Raises:
        ConfigError: an unknown name (the message lists the names) or options the method does not take.

    Example:
        >>> get_method("vanilla").name
        'vanilla'
    """
    if name not in METHODS:
        raise ConfigError(_BAD_METHOD.format(names=sorted(METHODS), name=name))
    factory = METHODS[name]
    opts = dict(options or {})
    if not opts:
        return factory()
    import inspect

    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        extra = sorted(set(opts) - set(params))
        if extra:
            known = sorted(k for k, p in params.items() if p.kind is p.KEYWORD_ONLY or p.default is not p.empty)
            raise ConfigError(_BAD_OPTIONS.format(extra=extra, name=name, known=known))
    return factory(**opts)

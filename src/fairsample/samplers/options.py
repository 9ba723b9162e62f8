"""``SampleConfig.sampler_options`` per sampler: validated once, before any image is generated.

| sampler | options |
|---|---|
| ``conditional`` | none |
| ``attribute_switch`` | ``attribute`` (default: the model's only sensitive attribute), ``to`` (a value, a map ``"light:dark,dark:light"``, ``"uniform"``; default: the other value of a binary attribute), ``tau`` (training timesteps in [0, T]; default None: the pipeline uses the cached τ* of this model, attribute and the value pairs switched, or searches it — :func:`fairsample.samplers.tau_search.resolve_tau`) |
| ``mixing`` | ``attribute``, ``to`` |
| ``fairdiffusion_perturbed`` | ``perturbation`` (a ``perturbation.json`` path; default: the bundle's own file, else zero offsets with a warning) |
"""  # noqa: E501

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.samplers.perturbed import FILE_NAME, Perturbation
from fairsample.samplers.switch import check_tau, parse_target

ALLOWED: dict[str, tuple[str, ...]] = {
    "conditional": (),
    "attribute_switch": ("attribute", "to", "tau"),
    "mixing": ("attribute", "to"),
    "fairdiffusion_perturbed": ("perturbation",),
}
_UNKNOWN = "sampler {sampler!r} does not take option(s) {extra}; its options are {known}."
_NEED_ATTRIBUTE = "sampler {sampler!r} needs option `attribute`: the model has attributes {known}; e.g. {first}."
_BAD_ATTRIBUTE = "option `attribute` {value!r} is not a sensitive attribute of the model; its attributes are {known}."
_NO_PERTURBATION = (
    "no perturbation.json for {bundle}: fairdiffusion_perturbed runs with zero offsets (identical to conditional); "
    "run `fairsample tune-perturbation` or pass perturbation=PATH."
)
_NOT_FBP = (
    "model {bundle} was trained with method {method!r}, not FairDiffusion; fairdiffusion_perturbed runs on it but is "
    "meant for FBP-trained models."
)


def resolve_sampler_options(bundle: Any, cfg: Any) -> dict[str, Any]:
    """The checked options of ``cfg.sampler`` for ``bundle`` (see the module table).

    Raises:
        ConfigError: an option the sampler does not take, an unknown attribute or value, τ outside [0, T].

    Example:
        >>> from types import SimpleNamespace
        >>> b = SimpleNamespace(attribute_values={"tone": ["light", "dark"]},
        ...                     scheduler=SimpleNamespace(config={"num_train_timesteps": 1000}), config={})
        >>> resolve_sampler_options(b, SimpleNamespace(sampler="attribute_switch", sampler_options={"tau": 600}))
        {'attribute': 'tone', 'to': None, 'tau': 600.0}
        >>> resolve_sampler_options(b, SimpleNamespace(sampler="attribute_switch", sampler_options={}))["tau"] is None
        True
    """
    sampler, opts = cfg.sampler, dict(cfg.sampler_options or {})
    known = ALLOWED.get(sampler, ())
    extra = sorted(set(opts) - set(known))
    if extra:
        raise ConfigError(_UNKNOWN.format(sampler=sampler, extra=extra, known=list(known)))
    out: dict[str, Any] = {}
    if sampler in ("attribute_switch", "mixing"):
        values = bundle.attribute_values
        attribute = opts.get("attribute")
        if attribute is None:
            if len(values) != 1:
                first = f"attribute={min(values)}"
                raise ConfigError(_NEED_ATTRIBUTE.format(sampler=sampler, known=sorted(values), first=first))
            attribute = next(iter(values))
        if attribute not in values:
            raise ConfigError(_BAD_ATTRIBUTE.format(value=attribute, known=sorted(values)))
        out["attribute"] = attribute
        target = parse_target(opts.get("to"))
        if target not in (None, "uniform"):
            wanted = set(target.values()) | set(target) if isinstance(target, dict) else {target}
            bad = sorted(v for v in wanted if v not in values[attribute])
            if bad:
                raise ConfigError(
                    f"option `to` names {attribute}={bad[0]!r}, which the model does not have; "
                    f"its values are {values[attribute]}."
                )
        out["to"] = target
        if sampler == "attribute_switch":
            num_t = int(bundle.scheduler.config["num_train_timesteps"])
            # None: resolved from the τ cache or a search once the cells are known (FairSamplePipeline)
            out["tau"] = None if opts.get("tau") is None else check_tau(opts["tau"], num_t)
    elif sampler == "fairdiffusion_perturbed":
        path = opts.get("perturbation")
        where = bundle.config.get("path")
        if path is None and where and (Path(where) / FILE_NAME).is_file():
            path = Path(where) / FILE_NAME
        if path is None:
            warnings.warn(
                _NO_PERTURBATION.format(bundle=bundle.config.get("name") or where), FairsampleWarning, stacklevel=3
            )
            perturbation = Perturbation()
        else:
            perturbation = Perturbation.load(path)
        perturbation.check(bundle.attribute_values)
        method = (bundle.config.get("method") or {}).get("name", "vanilla")
        if not str(method).startswith("fairdiffusion"):
            warnings.warn(
                _NOT_FBP.format(bundle=bundle.config.get("name") or where, method=method),
                FairsampleWarning,
                stacklevel=3,
            )
        out["perturbation"] = perturbation
    return out

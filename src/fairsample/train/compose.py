"""Composition of training methods: one :class:`Composite` runs several methods' hooks together.

FairSkin's and FairGen's variants are sums of parts (METHODS.md §3.4: CBCB = CBRS sampler + class-diversity term,
FairGen = SQRS + class-diversity + preference loss), so a preset is built by composing, not by copying a method:

- sampling weights and loss weights **multiply** (``None`` = all ones);
- extra losses **add** (:meth:`Composite.extra_losses` keeps them apart by name, for per-term gradient norms);
- log fields, artifacts and configs **merge** (a clash is an error, not a silent overwrite);
- state dicts **nest** under each part's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from fairsample.data.schema import CellKey
from fairsample.train.methods import SetupContext, StepContext, TrainMethod

_DUPLICATE_PART = "Composite parts need distinct names; got {names}."
_CLASH = "Composite parts {a!r} and {b!r} both define {what} {key!r}."


class Composite(TrainMethod):
    """Several methods as one: every hook is forwarded to each part, in order.

    Args:
        parts: the methods (distinct ``name`` attributes).
        name: the composite's name (the preset name).

    Example:
        >>> from fairsample.train.resampling import CellResampling
        >>> from fairsample.train.cbdm import ClassDiversity
        >>> m = Composite([CellResampling(power=1.0), ClassDiversity()], name="fairskin-c")
        >>> m.config()["components"], m.method_status
        (['cbrs', 'cbdm'], 'reference')
    """

    def __init__(self, parts: Sequence[TrainMethod], *, name: str = "composite") -> None:
        names = [p.name for p in parts]
        if len(set(names)) != len(names) or not names:
            raise ValueError(_DUPLICATE_PART.format(names=names))
        self.parts = list(parts)
        self.name = name
        self.method_status = (
            "project-extension" if any(p.method_status == "project-extension" for p in parts) else "reference"
        )
        self._weights: list[np.ndarray | None] = [None] * len(self.parts)  # each part's current sampling weights
        self.config()  # fail at construction on clashing option names

    def check_config(self, config: Any) -> None:
        """Every part checks the config."""
        for p in self.parts:
            p.check_config(config)

    def setup(self, ctx: SetupContext) -> None:
        """Set up every part."""
        for p in self.parts:
            p.setup(ctx)

    def _product(self) -> np.ndarray | None:
        ws = [w for w in self._weights if w is not None]
        if not ws:
            return None
        out = np.asarray(ws[0], dtype=np.float64).copy()
        for w in ws[1:]:
            out = out * np.asarray(w, dtype=np.float64)
        return out

    def sample_weights(self, cells: Sequence[CellKey]) -> np.ndarray | None:
        """The product of the parts' sampling weights (``None`` if no part weights)."""
        self._weights = [p.sample_weights(cells) for p in self.parts]
        return self._product()

    def sample_weights_at(self, step: int) -> np.ndarray | None:
        """Every part is asked; if any refreshes, the product with the others' current weights."""
        changed = False
        for k, p in enumerate(self.parts):
            w = p.sample_weights_at(step)
            if w is not None:
                self._weights[k], changed = w, True
        return self._product() if changed else None

    def loss_weights(self, ctx: StepContext) -> Tensor | None:
        """The product of the parts' per-sample loss weights (``None`` if no part weights)."""
        out = None
        for p in self.parts:
            w = p.loss_weights(ctx)
            if w is not None:
                out = w if out is None else out * w.to(out.device)
        return out

    def extra_loss(self, ctx: StepContext) -> Tensor | None:
        """The sum of the parts' extra losses (``None`` if none adds one)."""
        out = None
        for e in self.extra_losses(ctx).values():
            out = e if out is None else out + e
        return out

    def extra_losses(self, ctx: StepContext) -> dict[str, Tensor]:
        """Every part's named extra terms, in part order (a clashing term name is an error)."""
        out: dict[str, Tensor] = {}
        owner: dict[str, str] = {}
        for p in self.parts:
            for k, e in p.extra_losses(ctx).items():
                if k in out:
                    raise ValueError(_CLASH.format(a=owner[k], b=p.name, what="loss term", key=k))
                out[k], owner[k] = e, p.name
        return out

    def wants_grad_norms(self, step: int) -> bool:
        """True when any part wants them."""
        return any(p.wants_grad_norms(step) for p in self.parts)

    def observe_grad_norms(self, step: int, norms: Mapping[str, float]) -> Mapping[str, float] | None:
        """Forwarded to every part; their term multipliers merged (a clash is an error)."""
        out = self._merge([(p.name, dict(p.observe_grad_norms(step, norms) or {})) for p in self.parts], "term scale")
        return out or None

    def after_step(self, ctx: StepContext) -> dict[str, Any]:
        """Merged log fields of every part."""
        return self._merge([(p.name, p.after_step(ctx)) for p in self.parts], "log field")

    def state_dict(self) -> dict[str, Any]:
        """``{part name: part state}``."""
        return {p.name: p.state_dict() for p in self.parts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Give each part its nested state (missing parts get ``{}``)."""
        for p in self.parts:
            p.load_state_dict(dict(state.get(p.name, {})))

    def artifacts(self) -> dict[str, Any]:
        """Merged bundle files of every part."""
        return self._merge([(p.name, p.artifacts()) for p in self.parts], "artifact")

    def config(self) -> dict[str, Any]:
        """Name, status, ``components`` (part names, in order), ``status_reasons`` (every part's, prefixed with its
        name) and every part's resolved options, flattened."""
        own = ("name", "method_status", "status_reasons")
        configs = [(p.name, p.config()) for p in self.parts]
        parts = [(name, {k: v for k, v in c.items() if k not in own}) for name, c in configs]
        opts = self._merge(parts, "option")
        reasons = [f"{name}: {r}" for name, c in configs for r in c.get("status_reasons", [])]
        return {
            "name": self.name,
            "method_status": self.method_status,
            "components": [p.name for p in self.parts],
            "status_reasons": reasons,
            **opts,
        }

    @staticmethod
    def _merge(items: Sequence[tuple[str, dict[str, Any]]], what: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for name, d in items:
            for k, v in d.items():
                if k in out:
                    raise ValueError(_CLASH.format(a=owner[k], b=name, what=what, key=k))
                out[k], owner[k] = v, name
        return out

"""Training: the one accelerate loop, the method hooks fair methods plug into, and the method registry.

``fairsample.train`` is both this subpackage and the SDK's training function: the module is callable, so
``fs.train(dataset, "runs/m", TrainConfig(...))`` works whether or not a submodule was imported first (importing
``fairsample.train.loop`` rebinds the attribute ``fairsample.train`` to this module).
"""

import sys
import types
from typing import Any

from fairsample.train.loop import TrainResult, train
from fairsample.train.methods import StepContext, TrainMethod
from fairsample.train.presets import METHODS, get_method

__all__ = ["METHODS", "StepContext", "TrainMethod", "TrainResult", "get_method", "train"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        """:func:`fairsample.train.loop.train`."""
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

"""fairsample: fair synthetic medical images, fast.

The public API is re-exported lazily, so ``import fairsample`` stays light (STYLE.md rule 13)::

    import fairsample as fs

    pipe = fs.FairSamplePipeline()                       # the embedded tone-digits model, torch engine, CPU
    out = pipe([pipe.bundle.parse_cell("tone=dark,label=3")] * 4, seeds=[0, 1, 2, 3])
    out.images[0].save("dark-3.png")
"""

from __future__ import annotations

import importlib
from typing import Any

from fairsample._version import __version__

_EXPORTS = {
    "CellKey": "fairsample.data.schema",
    "DatasetSpec": "fairsample.data.schema",
    "FolderDataset": "fairsample.data.folder",
    "load_folder": "fairsample.data.folder",
    "make_demo_dataset": "fairsample.data.demo",
    "ModelBundle": "fairsample.models.bundle",
    "TrainConfig": "fairsample.core.config",
    "SampleConfig": "fairsample.core.config",
    "train": "fairsample.train",  # the callable subpackage (see fairsample/train/__init__.py)
    "evaluate": "fairsample.evaluation.evaluate",
    "EvaluationSettings": "fairsample.evaluation.evaluate",
    "augmentation_plan": "fairsample.generation.augment",
    "augment": "fairsample.generation.augment",
    "inspect_model": "fairsample.models.source",
    "open_model": "fairsample.models.sd_import",
    "FairSamplePipeline": "fairsample.generation.pipeline",
    "GenerationPlan": "fairsample.generation.pipeline",
    "SampleOutput": "fairsample.generation.pipeline",
    "load_engine": "fairsample.engines",
    "SAMPLERS": "fairsample.samplers",
    "FairsampleError": "fairsample.core.errors",
    "DataError": "fairsample.core.errors",
    "ConfigError": "fairsample.core.errors",
    "FairsampleWarning": "fairsample.core.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name == "train":  # the subpackage is the function (callable module), whatever was imported first
        value = importlib.import_module("fairsample.train")
        globals()[name] = value
        return value
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fairsample' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

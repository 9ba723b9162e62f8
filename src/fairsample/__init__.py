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
    "TrainConfig": "fairsample.config",
    "SampleConfig": "fairsample.config",
    "train": "fairsample.train.loop",
    "FairSamplePipeline": "fairsample.pipeline",
    "GenerationPlan": "fairsample.pipeline",
    "SampleOutput": "fairsample.pipeline",
    "load_engine": "fairsample.engines",
    "SAMPLERS": "fairsample.samplers",
    "FairsampleError": "fairsample.errors",
    "DataError": "fairsample.errors",
    "ConfigError": "fairsample.errors",
    "FairsampleWarning": "fairsample.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fairsample' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

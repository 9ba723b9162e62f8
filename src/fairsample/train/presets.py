"""Method presets selectable with ``fairsample train --method NAME`` (METHODS.md §3; issue #5).

Each preset is a factory registered in :data:`fairsample.train.methods.METHODS`; its keyword options are the
``[train.method_options]`` table of a TOML config (or ``--method-option key=value`` flags). Importing this module
registers every preset; :func:`fairsample.train.methods.get_method` does it on first use.
"""

from __future__ import annotations

from fairsample.train.methods import METHODS, TrainMethod

METHODS.setdefault("vanilla", TrainMethod)

"""fairsample: fair synthetic medical images, fast.

The public API is re-exported lazily so ``import fairsample`` stays light (STYLE.md rule 13).
"""

from fairsample._version import __version__

__all__ = ["__version__"]

"""Exception and warning types shared by every fairsample module (STYLE.md §8).

Every error a user can cause derives from :class:`FairsampleError`; the CLI maps them to exit code 1 with one line on
stderr and no traceback.
"""

from __future__ import annotations


class FairsampleError(Exception):
    """Base class of every error fairsample raises on purpose."""


class DataError(FairsampleError, ValueError):
    """A dataset folder, metadata file, column or value is unusable; the message says which and how to fix it."""


class ConfigError(FairsampleError, ValueError):
    """An option, config file or model bundle setting is invalid; the message names the argument and the fix."""


class EngineLoadError(FairsampleError, RuntimeError):
    """An engine could not be built or loaded (missing backend, incompatible artifact)."""


class ValidationFailed(FairsampleError, RuntimeError):
    """An engine or export failed its numerical validation gate."""


class FairsampleWarning(UserWarning):
    """Recoverable misuse or data that weakens results (small groups, single-class groups, ...)."""

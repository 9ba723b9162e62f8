"""Exception and warning types shared by every fairsample module (STYLE.md §8).

Every error a user can cause derives from :class:`FairsampleError`; the CLI maps them to exit code 1 with one line on
stderr and no traceback.
"""

from __future__ import annotations

from typing import Any


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


#: optional module (top-level import name) → the extra that installs it (pyproject.toml optional-dependencies)
EXTRAS: dict[str, str] = {
    "accelerate": "train",
    "botorch": "train",
    "gpytorch": "train",
    "linear_operator": "train",
    "transformers": "sd",
    "onnxruntime": "ort",
    "onnxconverter_common": "ort",
    "tensorrt": "tensorrt",
    "polygraphy": "tensorrt",
    "onnx_graphsurgeon": "tensorrt",
    "torch_fidelity": "inception",
}

_MISSING_EXTRA = "{feature} needs {module}: pip install 'fairsample[{extra}]'"


def missing_extra_message(exc: ImportError) -> str:
    """The one-line message for an ImportError: it names ``pip install 'fairsample[EXTRA]'`` when the missing module
    belongs to an extra (messages that already name a ``pip install`` are kept)."""
    text = str(exc)
    module = (getattr(exc, "name", None) or "").split(".")[0]
    if "pip install" in text or module not in EXTRAS:
        return text
    return _MISSING_EXTRA.format(feature="this command", module=f"{module} (not installed)", extra=EXTRAS[module])


def require(module: str, *, feature: str) -> Any:
    """``import module`` (an optional dependency), or an ImportError naming the extra that installs it (STYLE.md §8).

    Example:
        >>> require("json", feature="JSON")  # doctest: +ELLIPSIS
        <module 'json' ...>
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top)
        if extra is None:
            raise
        raise ImportError(_MISSING_EXTRA.format(feature=feature, module=top, extra=extra), name=top) from exc

"""``fairsample info`` and ``fairsample doctor``: versions, extras, GPU facts."""

from __future__ import annotations

import sys
from pathlib import Path

from fairsample.cli.common import (
    Format,
    FormatOpt,
    _emit,
    app,
    handle_errors,
)


# -- info ----------------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def info(fmt: FormatOpt = Format.human) -> None:
    """Version, embedded model and installed extras.

    Example: fairsample info --format json
    """
    import importlib.resources
    import importlib.util
    import platform

    from fairsample._version import __version__
    from fairsample.core.provenance import package_versions

    found = package_versions(["torch", "diffusers"])  # installed metadata: importing torch takes seconds
    # the same keys and folder as models.bundle.library_versions() / default_model_path(), without importing torch
    embedded = Path(str(importlib.resources.files("fairsample") / "assets" / "tone-digits-32"))
    doc = {
        "versions": {
            "fairsample": __version__,
            "torch": found["torch"],
            "diffusers": found["diffusers"],
            "python": platform.python_version(),
        },
        "embedded_model": str(embedded),
        "embedded_model_present": (embedded / "fairsample_config.json").is_file(),
        "extras": {
            name: importlib.util.find_spec(mod) is not None
            for name, mod in [
                ("ort", "onnxruntime"),
                ("train", "accelerate"),
                ("train:botorch", "botorch"),
                ("sd", "transformers"),
                ("tensorrt", "tensorrt"),
            ]
        },
    }
    _emit(fmt, doc, lambda: "\n".join(f"{k}: {v}" for k, v in doc.items()))


# -- doctor, cache, export -----------------------------------------------------------------------------------------
@app.command()
@handle_errors
def doctor(fmt: FormatOpt = Format.human) -> None:
    """GPU, compute capability, driver, CUDA, TensorRT, ONNX Runtime providers and which extras are importable.

    Example: fairsample doctor --format json
    """
    from fairsample.core.gpu_info import gpu_report

    report = gpu_report()
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    _emit(fmt, report, lambda: "\n".join(f"{k}: {v}" for k, v in report.items() if k != "warnings"))

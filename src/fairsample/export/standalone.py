"""Standalone copies of cached engine artifacts: ``fairsample export onnx --output-dir DIR``.

The cache (:mod:`fairsample.export.cache`) keeps artifacts under content keys; users who ship an ONNX file to another
runtime want it in a folder of their choice. The copy holds the model file, its external-data file and the entry's
``manifest.json`` (key parts, versions, validation report), so the copy says what it is and that it passed the gates.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fairsample.core.atomic import atomic_path
from fairsample.core.errors import ConfigError


def copy_engine_files(
    model_file: str | os.PathLike[str], output_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> list[Path]:
    """Copy a cache entry's model file (+ ``<name>.data`` external weights + ``manifest.json``) into ``output_dir``.

    The external-data reference inside the ONNX file is a relative file name, so the copy loads on its own as long
    as the two files stay side by side.

    Args:
        model_file: the model file inside its cache entry (e.g. ``.../<key>/unet.onnx``).
        output_dir: destination folder (created).
        overwrite: replace files of the same names already there.

    Returns:
        The written paths, the model file first.

    Raises:
        ConfigError: a destination file exists and ``overwrite`` is false.

    Example:
        >>> copy_engine_files(engine.path, "onnx/")  # doctest: +SKIP
        [PosixPath('onnx/unet.onnx'), PosixPath('onnx/unet.onnx.data'), PosixPath('onnx/manifest.json')]
    """
    src = Path(model_file)
    dest = Path(output_dir)
    names = [src.name, src.name + ".data", "manifest.json"]
    present = [n for n in names if (src.parent / n).is_file()]
    if not overwrite:
        clash = [n for n in present if (dest / n).exists()]
        if clash:
            raise ConfigError(
                f"`--output-dir` {dest} already holds {clash[0]}; pass --overwrite or choose another folder."
            )
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in present:
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(src.parent / name, tmp)
        out.append(dest / name)
    return out

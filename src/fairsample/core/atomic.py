"""Atomic file writes: write a temporary sibling, then ``os.replace`` it, so a reader never sees half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; the parent folder must exist. The file is
    world-readable (0644): results and metadata are meant to be shared.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.json"
        >>> write_atomic(p, "{}").read_text()
        '{}'
    """
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode(encoding) if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest

"""Atomic file writes: write a temporary sibling, then ``os.replace`` it, so a reader never sees half a file.

:func:`atomic_path` is the one mechanism (for writers that want a path: pandas, PIL, csv, ``shutil.copyfile``);
:func:`write_atomic` is its short form for text or bytes already in memory. Files end up world-readable (0644):
results and metadata are meant to be shared.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a unique temporary sibling of ``path`` to write; on leaving the block without an error it replaces
    ``path`` (atomically, same folder), on an error it is removed and ``path`` is untouched. The parent folder must
    exist.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.csv"
        >>> with atomic_path(p) as tmp:
        ...     _ = tmp.write_text("a,b\\n")
        >>> p.read_text(), sorted(q.name for q in p.parent.iterdir())
        ('a,b\\n', ['x.csv'])
    """
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically (:func:`atomic_path`); the parent folder must exist.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.json"
        >>> write_atomic(p, "{}").read_text()
        '{}'
    """
    dest = Path(path)
    with atomic_path(dest) as tmp, open(tmp, "xb") as fh:
        fh.write(data.encode(encoding) if isinstance(data, str) else data)
    return dest

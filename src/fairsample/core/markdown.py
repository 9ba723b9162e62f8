"""Markdown pipe tables: the one writer behind the evaluation report, the study's RESULTS.md and benchmark notes."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pipe_table"]


def _cell(text: str) -> str:
    """A cell's text with ``|`` escaped and line breaks flattened (either would break the table)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def pipe_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    """The lines of a Markdown pipe table.

    Args:
        header: column headings.
        rows: one sequence of cell texts per row, each as long as ``header``.
        align: one letter per column, ``"l"`` (left) or ``"r"`` (right); default: the first column left, the rest
            right (a label then numbers).

    Returns:
        header line, separator line, one line per row (no trailing blank line).

    Raises:
        ValueError: ``align`` or a row does not have one entry per column.

    Example:
        >>> print("\\n".join(pipe_table(["Set", "FID"], [["a|b", "1.0"]])))
        | Set | FID |
        | :--- | ---: |
        | a\\|b | 1.0 |
    """
    align = align or ("l" + "r" * (len(header) - 1))
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} needs one of 'l' / 'r' per column ({len(header)} columns)")
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"row {list(r)!r} has {len(r)} cells for {len(header)} columns")
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines

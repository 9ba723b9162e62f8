"""The ``fairsample`` command line: a thin typer shell over the SDK (STYLE.md §5), the top layer.

:mod:`fairsample.cli.common` defines the app, its sub-apps and the shared options; each command family lives in its
own module and is registered here, explicitly, by importing it (typer registers at decoration). Nothing below imports
this package, so there is no cycle.
"""

from __future__ import annotations

import typer

from fairsample.cli import (  # noqa: F401  (each import registers its commands on `app`)
    augment,
    bench,
    data,
    engines,
    evaluate,
    generate,
    info,
    model,
    prefs,
    samplers,
    study,
    train,
)
from fairsample.cli.common import app

__all__ = ["app", "main"]


def _plain_help(typer_app: typer.Typer) -> None:
    """Plain click help on an app and every sub-app registered on it: rich markup would eat "[train]" and rich's
    table cuts long option names at 80 columns (``--gradient-accu…``)."""
    typer_app.rich_markup_mode = None
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _plain_help(group.typer_instance)


_plain_help(app)


def main() -> None:  # pragma: no cover - console entry point
    """Console entry point."""
    app()
